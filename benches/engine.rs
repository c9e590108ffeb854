//! The engine alone: what the sequencer, the log and every view cost per event,
//! with no sockets and no JSON on the clock.
//!
//! `cargo bench --bench engine` parses the input once (not timed), then, on a
//! fresh in-process server per round (`Server::start` with the embedded defaults,
//! so every built-in segment is on, fsync `never` so the disk stays out of it),
//! queues the events in submissions of 5,000 (as a connection's batches) through
//! `Engine::enqueue`, and waits until the views include the last one. It reports,
//! per round: events per second to visible, CPU-seconds of the whole process per
//! million events, the number of epochs (records) the log cut them into, and the
//! latency from a submission's enqueue to its durable ack (hdrhistogram, p50 /
//! p99 / max). Epochs are cut by `engine.max_record_events`, so with the same
//! input every round and every version does the same dataflow work: this is the
//! bench that shows what a change of the host or of a view costs.
//!
//! Environment: `SHOPSTREAM_BENCH_INPUT` (default `/tmp/w1m.ndjson`, made by
//! `python3 ../shared/peers/gen.py 1000000 /tmp/w1m`), `ENGINE_BENCH_ROUNDS` (5),
//! `SHOPSTREAM_BENCH_WORKERS` (2), `ENGINE_BENCH_RECORD_EVENTS` (the configured
//! `engine.max_record_events`, 65,536), `ENGINE_BENCH_OFF` (views to switch off,
//! comma-separated: `recommend`, `similarity`; what a view costs is the difference).
//! Output: a table, then one `BENCH_JSON` line.

use std::io::BufRead;
use std::time::{Duration, Instant};

use serde_json::json;
use shopstream::config::Config;
use shopstream::event::{parse_message, Event, ParseContext};
use shopstream::server::Server;

#[allow(dead_code)]
mod common;
use common::*;

const SUBMISSION: usize = 5_000;

fn bad_env(key: &str, v: &str) -> ! {
    eprintln!("bench: {key}={v:?} is not a valid number");
    std::process::exit(2)
}

fn load(path: &str) -> Vec<Event> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| {
        eprintln!(
            "bench: cannot open {path}: {e}\nmake it with: python3 ../shared/peers/gen.py 1000000 /tmp/w1m"
        );
        std::process::exit(2)
    });
    let ctx = ParseContext::new("USD");
    std::io::BufReader::new(file)
        .split(b'\n')
        .map_while(Result::ok)
        .filter(|l| !l.is_empty())
        .filter_map(|l| parse_message(&l, &ctx, None).ok())
        .collect()
}

struct Round {
    rate: f64,
    cpu_per_million: f64,
    epochs: u64,
    ack: hdrhistogram::Histogram<u64>,
}

fn round(rt: &tokio::runtime::Runtime, events: &[Event], workers: usize) -> Round {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config::defaults();
    config.data_dir = dir.path().to_path_buf();
    config.workers = workers;
    // Smaller records: more epochs for the same events (the identity bench uses
    // it to put a few merges in every epoch).
    if let Ok(v) = std::env::var("ENGINE_BENCH_RECORD_EVENTS") {
        config.max_record_events = v
            .parse()
            .unwrap_or_else(|_| bad_env("ENGINE_BENCH_RECORD_EVENTS", &v));
    }
    if let Ok(off) = std::env::var("ENGINE_BENCH_OFF") {
        for view in off.split(',').filter(|v| !v.is_empty()) {
            match view {
                "recommend" => config.recommend.enabled = false,
                "similarity" => {
                    config.similarity.enabled = false;
                    config.recommend.enabled = false;
                }
                other => {
                    eprintln!("bench: ENGINE_BENCH_OFF: no view {other:?} (recommend, similarity)");
                    std::process::exit(2)
                }
            }
        }
    }
    config.fsync = shopstream::log::FsyncPolicy::Never;
    config.tcp_addr = "127.0.0.1:0".parse().expect("addr");
    config.http_addr = "127.0.0.1:0".parse().expect("addr");
    let server = rt
        .block_on(Server::start(config, |_, _| {}))
        .expect("server starts");
    let submissions: Vec<Vec<Event>> = events.chunks(SUBMISSION).map(<[_]>::to_vec).collect();
    let cpu = cpu_seconds();
    let started = Instant::now();
    let mut ack = micros_histogram();
    rt.block_on(async {
        let mut pending = Vec::with_capacity(submissions.len());
        for s in submissions {
            let sent = Instant::now();
            pending.push((sent, server.engine.enqueue(s).await.expect("enqueue")));
        }
        let mut last = 0;
        for (sent, rx) in pending {
            let a = rx.await.expect("acked").expect("durable");
            let _ = ack.record(micros(sent.elapsed()));
            last = last.max(a.last_seq);
        }
        server
            .engine
            .wait_for_seq(last, Duration::from_secs(600))
            .await
            .expect("visible");
    });
    let elapsed = started.elapsed();
    let cpu = cpu_seconds() - cpu;
    let epochs = server.engine.readable().done;
    rt.block_on(server.shutdown());
    Round {
        rate: events.len() as f64 / elapsed.as_secs_f64(),
        cpu_per_million: cpu * 1e6 / events.len() as f64,
        epochs,
        ack,
    }
}

fn main() {
    let input = std::env::var("SHOPSTREAM_BENCH_INPUT").unwrap_or("/tmp/w1m.ndjson".into());
    let rounds: usize = env_num("ENGINE_BENCH_ROUNDS", 5);
    let workers: usize = env_num("SHOPSTREAM_BENCH_WORKERS", 2);
    let events = load(&input);
    eprintln!(
        "bench: {} events from {input}, {workers} workers",
        events.len()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "| round | to visible | CPU-s per 1M events | epochs | enqueue → ack p50 / p99 / max |"
    );
    println!("|---|---|---|---|---|");
    let mut all = Vec::new();
    for i in 0..rounds {
        let r = round(&rt, &events, workers);
        println!(
            "| {i} | {:.0} events/s | {:.2} | {} | {:.1} / {:.1} / {:.1} ms |",
            r.rate,
            r.cpu_per_million,
            r.epochs,
            r.ack.value_at_quantile(0.5) as f64 / 1e3,
            r.ack.value_at_quantile(0.99) as f64 / 1e3,
            r.ack.max() as f64 / 1e3,
        );
        all.push(r);
    }
    let mut rates: Vec<f64> = all.iter().map(|r| r.rate).collect();
    let mut cpu: Vec<f64> = all.iter().map(|r| r.cpu_per_million).collect();
    rates.sort_by(f64::total_cmp);
    cpu.sort_by(f64::total_cmp);
    let median = |v: &[f64]| v.get(v.len() / 2).copied().unwrap_or(0.0);
    println!(
        "median: {:.0} events/s to visible, {:.2} CPU-s per 1M events",
        median(&rates),
        median(&cpu)
    );
    println!(
        "BENCH_JSON {}",
        json!({
            "events": events.len(),
            "workers": workers,
            "rounds": all.iter().map(|r| json!({
                "events_per_s": r.rate,
                "cpu_s_per_million": r.cpu_per_million,
                "epochs": r.epochs,
                "ack_us": {"p50": r.ack.value_at_quantile(0.5), "p99": r.ack.value_at_quantile(0.99), "max": r.ack.max()},
            })).collect::<Vec<_>>(),
        })
    );
}
