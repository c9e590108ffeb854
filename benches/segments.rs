//! What segments cost and how fresh their changes are: `cargo bench --bench segments`.
//!
//! 1. **Ingest cost.** The same `SEG_EVENTS` events (from `shopstream_tools::gen`, made
//!    in memory beforehand) over one TCP connection into a fresh in-process
//!    server (fsync `always`) with no segments, with the 16 built-ins, and with
//!    `SEG_COUNT` (100) API segments defined before the first event: events/s
//!    until every view includes the last event, and process CPU per event.
//! 2. **Memory per membership.** A fresh server ingests the events with no
//!    segments; then the 100 segments are defined (each evaluated over all
//!    history). RSS growth across the definitions divided by the memberships
//!    they made (the sum of the sizes): the operator's per-user state, the three
//!    membership arrangements and the change feed's retained events.
//! 3. **Feed latency.** With the 100 segments defined, a paced sender streams
//!    each of `SEG_FEED_RATES` events/s (25k, 50k, 100k) for `SEG_FEED_SECS` (8)
//!    while an SSE client follows
//!    `GET /v1/stream/segments`; for each change, from the arrival of the first
//!    ack covering its `as_of` to its arrival at the client (hdrhistogram).
//!
//! Output: Markdown tables on stdout, then one `SEGMENTS_JSON {...}` line.

#[allow(dead_code)]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use shopstream::catalog::{Control, Source};
use shopstream::config::Config;
use shopstream::server::Server;
use shopstream_tools::gen::{write_json, GenOptions, Workload};

fn bad_env(key: &str, v: &str) -> ! {
    eprintln!("bench: {key}={v:?} is not a valid number");
    std::process::exit(2)
}

struct Settings {
    events: u64,
    segments: usize,
    feed_rates: Vec<u64>,
    feed_secs: f64,
}

/// The 100 rules: counts, money, windows, facets, clock-driven and RFM rules at
/// spread thresholds, so that memberships change all along a stream.
fn rules(n: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for k in 1..=20 {
        out.push(format!("events.\"Product Viewed\" >= {k}"));
        out.push(format!("windows.7d.views >= {k}"));
    }
    for k in 1..=10 {
        out.push(format!("orders >= {k}"));
        out.push(format!("revenue >= {}", k * 25));
        out.push(format!("windows.30d.cart_adds >= {k}"));
        out.push(format!("days_since(last_seen) >= {k}"));
        out.push(format!("top_categories contains \"c{}\"", k - 1));
    }
    for k in 1..=5 {
        out.push(format!("rfm.r_score >= {k}"));
        out.push(format!("rfm.f_score = {k}"));
    }
    out.into_iter()
        .cycle()
        .take(n)
        .enumerate()
        .map(|(i, r)| (format!("bench-{i}"), r))
        .collect()
}

fn config(dir: &Path, builtins: bool) -> Config {
    let mut c = Config::defaults();
    c.tcp_addr = "127.0.0.1:0".parse().expect("addr");
    c.http_addr = "127.0.0.1:0".parse().expect("addr");
    c.data_dir = dir.to_path_buf();
    c.builtin_segments = builtins;
    // Only the segments each row defines (not the repository's example file).
    c.segments_file = None;
    c
}

/// The workload as NDJSON bytes.
fn input(events: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(events as usize * 200);
    let work = Workload::new(GenOptions {
        events,
        ..GenOptions::default()
    });
    for m in work {
        write_json(&mut out, &m);
    }
    out
}

/// Streams `bytes` over one connection and waits for the final ack and until
/// the views include it; (seconds, last seq).
fn stream(server: &Server, bytes: &[u8]) -> (f64, u64) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(server.tcp_addr).expect("connect");
    let reader = stream.try_clone().expect("clone");
    let acks = std::thread::spawn(move || read_acks(reader));
    for chunk in bytes.chunks(1 << 20) {
        stream.write_all(chunk).expect("write");
    }
    stream.shutdown(Shutdown::Write).expect("shutdown");
    let log = acks.join().expect("acks");
    assert!(log.fatal.is_none(), "{:?}", log.fatal);
    wait_visible(&agent(), server.http_addr, log.last.seq);
    (started.elapsed().as_secs_f64(), log.last.seq)
}

fn define_all(rt: &tokio::runtime::Runtime, server: &Server, rules: &[(String, String)]) {
    let controls = rules
        .iter()
        .map(|(name, rule)| Control::put("segment", name, rule, Source::Api))
        .collect();
    rt.block_on(server.engine.define(controls)).expect("define");
}

fn memberships(rt: &tokio::runtime::Runtime, server: &Server) -> i64 {
    let (_, sizes) = rt
        .block_on(shopstream::serve::segments::segment_sizes(
            &server.engine,
            None,
            None,
        ))
        .expect("sizes");
    sizes.values().sum()
}

struct Cost {
    label: &'static str,
    segments: usize,
    rate: f64,
    cpu_us: f64,
    memberships: i64,
}

fn ingest_cost(
    rt: &tokio::runtime::Runtime,
    bytes: &[u8],
    events: u64,
    label: &'static str,
    builtins: bool,
    rules: &[(String, String)],
) -> Cost {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = rt
        .block_on(Server::start(config(dir.path(), builtins), |_, _| {}))
        .expect("start");
    if !rules.is_empty() {
        define_all(rt, &server, rules);
    }
    let cpu = cpu_seconds();
    let (secs, _) = stream(&server, bytes);
    let cpu = cpu_seconds() - cpu;
    let memberships = memberships(rt, &server);
    let segments = server.engine.catalog().definitions("segment").len();
    rt.block_on(server.shutdown());
    eprintln!("segments: {label}: {:.0} events/s", events as f64 / secs);
    Cost {
        label,
        segments,
        rate: events as f64 / secs,
        cpu_us: cpu * 1e6 / events as f64,
        memberships,
    }
}

/// An SSE reader: `(as_of, arrival)` per change.
fn follow(http: SocketAddr, out: Arc<Mutex<Vec<(u64, Instant)>>>) -> std::thread::JoinHandle<()> {
    let resp = agent()
        .get(&format!("http://{http}/v1/stream/segments"))
        .call()
        .expect("subscribe");
    std::thread::spawn(move || {
        let reader = BufReader::new(resp.into_body().into_reader());
        for line in reader.lines() {
            let Ok(line) = line else { return };
            // `data:{"segment":…,"as_of":N}`: the number after the last `"as_of":`
            // (no JSON parse, to keep this client's CPU off the server's cores).
            if let Some(data) = line.strip_prefix("data:") {
                let now = Instant::now();
                if let Some(i) = data.rfind("\"as_of\":") {
                    let digits: String = data[i + 8..]
                        .chars()
                        .take_while(char::is_ascii_digit)
                        .collect();
                    if let Ok(seq) = digits.parse::<u64>() {
                        out.lock().expect("poisoned").push((seq, now));
                    }
                }
            }
        }
    })
}

struct Feed {
    rate: u64,
    changes: u64,
    sent: u64,
    latency: Histogram<u64>,
}

fn feed_latency(
    rt: &tokio::runtime::Runtime,
    s: &Settings,
    rate: u64,
    rules: &[(String, String)],
) -> Feed {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = rt
        .block_on(Server::start(config(dir.path(), false), |_, _| {}))
        .expect("start");
    define_all(rt, &server, rules);
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let _reader = follow(server.http_addr, arrivals.clone());

    let mut stream = TcpStream::connect(server.tcp_addr).expect("connect");
    let reader = stream.try_clone().expect("clone");
    let acks = std::thread::spawn(move || {
        let mut out = Vec::new();
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if let Some(seq) = v["ack"].as_u64() {
                    out.push((seq, Instant::now()));
                }
            }
        }
        out
    });
    let mut work = Workload::new(GenOptions {
        events: u64::MAX / 2,
        seed: 11,
        ..GenOptions::default()
    });
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(s.feed_secs);
    let mut sent = 0u64;
    let mut buf = Vec::new();
    while Instant::now() < end {
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        buf.clear();
        while sent < due {
            let m = work.next().expect("endless");
            write_json(&mut buf, &m);
            sent += 1;
        }
        stream.write_all(&buf).expect("write");
        std::thread::sleep(Duration::from_millis(1));
    }
    stream.shutdown(Shutdown::Write).expect("shutdown");
    let acks = acks.join().expect("acks");
    let last = acks.last().map_or(0, |a| a.0);
    wait_visible(&agent(), server.http_addr, last);
    std::thread::sleep(Duration::from_millis(500));
    let arrivals = std::mem::take(&mut *arrivals.lock().expect("poisoned"));
    let mut latency = micros_histogram();
    for (seq, at) in &arrivals {
        let i = acks.partition_point(|(s, _)| s < seq);
        if let Some((_, acked)) = acks.get(i) {
            latency.saturating_record(micros(at.saturating_duration_since(*acked)));
        }
    }
    rt.block_on(server.shutdown());
    Feed {
        rate,
        changes: arrivals.len() as u64,
        sent,
        latency,
    }
}

fn ms(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.0}", us as f64 / 1000.0)
    } else {
        format!("{:.1}", us as f64 / 1000.0)
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let s = Settings {
        events: env_num("SEG_EVENTS", 1_000_000u64),
        segments: env_num("SEG_COUNT", 100usize),
        feed_rates: std::env::var("SEG_FEED_RATES")
            .unwrap_or_else(|_| "25000,50000,100000".into())
            .split(',')
            .map(|v| {
                v.trim()
                    .parse()
                    .unwrap_or_else(|_| bad_env("SEG_FEED_RATES", v))
            })
            .collect(),
        feed_secs: env_num("SEG_FEED_SECS", 8.0f64),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    eprintln!("segments: generating {} events", s.events);
    let bytes = input(s.events);
    let rules = rules(s.segments);

    let costs = [
        ingest_cost(&rt, &bytes, s.events, "no segments", false, &[]),
        ingest_cost(&rt, &bytes, s.events, "built-ins", true, &[]),
        ingest_cost(&rt, &bytes, s.events, "100 API segments", false, &rules),
    ];

    // Memory: the definitions over a loaded server.
    let dir = tempfile::tempdir().expect("tempdir");
    let server = rt
        .block_on(Server::start(config(dir.path(), false), |_, _| {}))
        .expect("start");
    stream(&server, &bytes);
    std::thread::sleep(Duration::from_secs(1));
    let before = rss_bytes();
    let defined = Instant::now();
    define_all(&rt, &server, &rules);
    let define_s = defined.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(1));
    let after = rss_bytes();
    let members = memberships(&rt, &server).max(1);
    rt.block_on(server.shutdown());
    let per_membership = after.saturating_sub(before) as f64 / members as f64;

    let feeds: Vec<Feed> = s
        .feed_rates
        .iter()
        .map(|rate| feed_latency(&rt, &s, *rate, &rules))
        .collect();

    let base = costs[0].rate;
    println!("| segments defined | events/s to visible | vs none | CPU per event | memberships at the end |");
    println!("|---|---|---|---|---|");
    for c in &costs {
        println!(
            "| {} ({}) | {:.0} | {:.2}x | {:.2} µs | {} |",
            c.label,
            c.segments,
            c.rate,
            c.rate / base,
            c.cpu_us,
            c.memberships
        );
    }
    println!();
    println!(
        "Memory: defining {} segments over {} events took {:.2} s and grew RSS by {:.1} MiB for {} memberships: **{:.0} B per membership**.",
        rules.len(),
        s.events,
        define_s,
        mib(after.saturating_sub(before)),
        members,
        per_membership
    );
    println!();
    println!(
        "Feed latency, ack → SSE delivery, {} s per row with {} segments (all changes, one subscriber):",
        s.feed_secs,
        rules.len()
    );
    println!();
    println!("| events/s | changes delivered | p50 | p90 | p99 | p99.9 | max |");
    println!("|---|---|---|---|---|---|---|");
    for f in &feeds {
        let l = &f.latency;
        println!(
            "| {} | {} | {} ms | {} ms | {} ms | {} ms | {} ms |",
            f.rate,
            f.changes,
            ms(l.value_at_quantile(0.5)),
            ms(l.value_at_quantile(0.9)),
            ms(l.value_at_quantile(0.99)),
            ms(l.value_at_quantile(0.999)),
            ms(l.max())
        );
    }
    let json = json!({
        "events": s.events,
        "ingest": costs.iter().map(|c| json!({"label": c.label, "segments": c.segments, "events_per_s": c.rate, "cpu_us_per_event": c.cpu_us, "memberships": c.memberships})).collect::<Vec<_>>(),
        "memory": {"rss_growth_bytes": after.saturating_sub(before), "memberships": members, "bytes_per_membership": per_membership, "define_s": define_s},
        "feed": feeds.iter().map(|f| { let l = &f.latency; json!({"rate": f.rate, "secs": s.feed_secs, "sent": f.sent, "changes": f.changes,
                 "p50_us": l.value_at_quantile(0.5), "p90_us": l.value_at_quantile(0.9), "p99_us": l.value_at_quantile(0.99),
                 "p999_us": l.value_at_quantile(0.999), "max_us": l.max()}) }).collect::<Vec<_>>(),
    });
    println!("\nSEGMENTS_JSON {json}");
}
