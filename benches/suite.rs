//! The benchmark suite: `cargo bench --bench suite` runs every measurement, prints a
//! table per measurement, rewrites the suite's section of `BENCHMARKS.md` (between
//! `<!-- suite:begin -->` and `<!-- suite:end -->`, nothing else) and draws
//! `docs/bench/throughput_vs_workers.svg` and `docs/bench/latency_vs_load.svg`.
//!
//! Every measurement starts a fresh in-process server (`Server::start` with
//! `Config::defaults()`, listeners on `127.0.0.1:0`, the log in a temporary
//! directory, fsync `always`) and stops it afterwards. The input is made in process
//! by `shopstream_tools::gen` (seed 7) into a temporary NDJSON file, synced to disk before
//! the first measurement so its writeback does not compete with the log's fsyncs.
//!
//! 1. **Ingest throughput vs workers.** For each worker count, the whole file goes
//!    over one TCP connection as fast as the server takes it (1 MiB chunks cut at
//!    line ends, as `benches/ingest.rs` does). Events/s until the final ack (all
//!    durable) and until visible (`GET /v1/users/_/profile?min_seq=SEQ`: 200 or 404
//!    mean visible, 504 means ask again). `max` is the best visible rate.
//! 2. **Freshness and query latency vs load** (2 workers). `shopstream_tools::load::run`
//!    drives the server open loop at 25, 50 and 75% of `max` with profile queries
//!    at `SUITE_QPS` over `SUITE_QUERY_CONNECTIONS` HTTP connections, and reports ack latency,
//!    freshness (intended send to readable) and query latency. One more run holds
//!    the issue's fixed workload: 200,000 events/s with 20,000 q/s over 64 connections.
//! 3. **Replay.** The log of the memory run of step 1 (2 workers) is replayed by a
//!    new `Server::start` on the same data directory; it returns once replayed.
//! 4. **Memory per user.** `VmRSS` growth of this process across that same run,
//!    divided by the distinct users in the input. That run is the first one, so
//!    no earlier server has left freed memory in the allocator.
//!
//! Before each measurement the suite waits (at most `SUITE_QUIET_WAIT` seconds)
//! until the machine has been at least 90% idle for 2 s, and says when it never was.
//!
//! Environment: `SUITE_EVENTS` (1000000), `SUITE_WORKERS` (`1,2`), `SUITE_LOADS`
//! (`25,50,75`), `SUITE_LOAD_SECS` (8), `SUITE_QPS` (1000), `SUITE_QUERY_CONNECTIONS`
//! (32), `SUITE_TARGET_RATE` (200000), `SUITE_TARGET_QPS` (20000),
//! `SUITE_TARGET_CONNECTIONS` (64; 0 skips that run), `SUITE_QUIET_WAIT` (60; 0 skips
//! the wait), `SUITE_DIR` (parent of the temporary files; a real disk, or fsync
//! means nothing), `SUITE_WRITE` (1; 0 leaves `BENCHMARKS.md` alone and draws the
//! charts and the section in `$TMPDIR/shopstream-suite/` instead).
//!
//! Output: progress on stderr; the tables (Markdown) on stdout, then one
//! `SUITE_JSON {...}` line.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::{BufWriter, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use shopstream::config::Config;
use shopstream::log::FsyncPolicy;
use shopstream::server::Server;
use shopstream_tools::gen::{write_json, GenOptions, Workload};
use shopstream_tools::load::{self, Latency, LoadOptions, LoadReport};

mod common;
use common::*;

const BIG_CHUNK: usize = 1 << 20;
/// Timely workers for the latency runs, the replay and the memory figure.
const MAIN_WORKERS: usize = 2;
const MARK_BEGIN: &str = "<!-- suite:begin -->";
const MARK_END: &str = "<!-- suite:end -->";
const THROUGHPUT_SVG: &str = "throughput_vs_workers.svg";
const LATENCY_SVG: &str = "latency_vs_load.svg";

/// The issue's targets.
const TARGET_INGEST: f64 = 1_000_000.0;
const TARGET_FRESH_LOAD: u32 = 50;
const TARGET_FRESH_P99_US: u64 = 10_000;
const TARGET_QUERY_P99_US: u64 = 1_000;
const TARGET_BYTES_PER_USER: f64 = 150.0;
const TARGET_REPLAY: f64 = 1_000_000.0;

fn main() {
    let s = Settings::from_env();
    let started = Instant::now();
    eprintln!(
        "suite: {} events, workers {:?}, loads {:?}% for {} s at {} q/s ({} threads), fixed run {} ev/s + {} q/s ({} threads)",
        s.events,
        s.workers,
        s.loads,
        s.load_secs,
        s.qps,
        s.query_connections,
        s.target_rate,
        s.target_qps,
        s.target_connections
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut quiet = Quiet::default();

    let t = Instant::now();
    let input = Input::generate(&s);
    eprintln!(
        "suite: generated {} events ({:.1} MiB, {} distinct users, {} chunks) in {:.1?}",
        input.events,
        mib(input.bytes),
        input.users,
        input.chunks.len(),
        t.elapsed()
    );

    // Step 1, with steps 3 and 4 on the run with MAIN_WORKERS (or the most workers),
    // which goes first.
    let mem_workers = if s.workers.contains(&MAIN_WORKERS) {
        MAIN_WORKERS
    } else {
        *s.workers.iter().max().expect("at least one worker count")
    };
    let mut order = s.workers.clone();
    order.sort_by_key(|w| (*w != mem_workers, *w));
    let mut ingest = Vec::new();
    let mut memory = None;
    let mut replay = None;
    for workers in order {
        quiet.wait(&s, &format!("ingest, {workers} workers"));
        eprintln!("suite: 1. ingest throughput, {workers} workers");
        let dir = s.tempdir();
        let rss_before = rss_bytes();
        let server = rt
            .block_on(Server::start(config(dir.path(), workers), |_, _| {}))
            .expect("start the server");
        let tput = throughput(&server, &input, workers);
        let rss_after = rss_bytes();
        eprintln!(
            "suite:    {:.0} events/s to ack, {:.0} to visible",
            tput.ack_rate(),
            tput.visible_rate()
        );
        let t = Instant::now();
        rt.block_on(server.shutdown());
        let shutdown = t.elapsed();
        if workers == mem_workers {
            memory = Some(Memory {
                workers,
                rss_before,
                rss_after,
                users: input.users,
            });
            let log_bytes = dir_bytes(dir.path());
            quiet.wait(&s, "replay");
            eprintln!("suite: 3. replay of that log, {workers} workers");
            let t = Instant::now();
            let server = rt
                .block_on(Server::start(config(dir.path(), workers), |_, _| {}))
                .expect("restart the server on the same data dir");
            let time = t.elapsed();
            let events = server.engine.recovery().events;
            rt.block_on(server.shutdown());
            eprintln!("suite:    {events} events in {time:.2?}");
            replay = Some(Replay {
                workers,
                events,
                log_bytes,
                shutdown,
                time,
            });
        }
        drop(dir);
        ingest.push(tput);
    }
    ingest.sort_by_key(|t| t.workers);
    let max = ingest.iter().map(Tput::visible_rate).fold(0.0, f64::max);

    // Step 2.
    let mut loads = Vec::new();
    for &p in &s.loads {
        let rate = ((max * f64::from(p) / 100.0).round() as u64).max(1);
        quiet.wait(&s, &format!("{p}% load"));
        eprintln!(
            "suite: 2. {p}% of {max:.0} = {rate} events/s, {} q/s, {} s",
            s.qps, s.load_secs
        );
        let report = load_run(&rt, &s, rate, s.qps, s.query_connections);
        eprintln!(
            "suite:    freshness p99 {} ms, query p99 {} ms",
            ms(report.freshness.freshness_us.p99),
            ms(report.queries.latency_us.p99)
        );
        loads.push(LoadPoint {
            label: format!("{p}%"),
            percent: Some(p),
            rate,
            qps: s.qps,
            connections: s.query_connections,
            report,
        });
    }
    let fixed = (s.target_connections > 0).then(|| {
        quiet.wait(&s, "fixed workload");
        eprintln!(
            "suite: 2. fixed workload: {} events/s, {} q/s over {} connections",
            s.target_rate, s.target_qps, s.target_connections
        );
        let report = load_run(&rt, &s, s.target_rate, s.target_qps, s.target_connections);
        eprintln!(
            "suite:    query p99 {} ms (service p99 {} ms), {:.0} q/s achieved",
            ms(report.queries.latency_us.p99),
            ms(report.queries.service_us.p99),
            report.queries.achieved_qps
        );
        LoadPoint {
            label: format!(
                "{} ev/s + {} q/s",
                thousands(s.target_rate),
                thousands(s.target_qps)
            ),
            percent: None,
            rate: s.target_rate,
            qps: s.target_qps,
            connections: s.target_connections,
            report,
        }
    });

    let results = Results {
        settings: &s,
        run: RunInfo::collect(),
        input: &input,
        ingest,
        max,
        loads,
        fixed,
        replay: replay.expect("the memory run ran"),
        memory: memory.expect("the memory run ran"),
        not_quiet: quiet.not_quiet,
        elapsed: started.elapsed(),
    };
    results.publish();
    eprintln!("suite: done in {:.1?}", started.elapsed());
}

// ---------------------------------------------------------------------------
// Settings

struct Settings {
    events: u64,
    workers: Vec<usize>,
    loads: Vec<u32>,
    load_secs: f64,
    qps: u64,
    query_connections: usize,
    target_rate: u64,
    target_qps: u64,
    target_connections: usize,
    quiet_wait: Duration,
    dir: Option<PathBuf>,
    write: bool,
}

fn env_list<T: std::str::FromStr + Copy>(key: &str, default: &[T]) -> Vec<T> {
    match std::env::var(key) {
        Ok(v) => {
            let list: Vec<T> = v
                .split(',')
                .map(|x| x.trim().parse().unwrap_or_else(|_| bad_env(key, &v)))
                .collect();
            if list.is_empty() {
                bad_env(key, &v)
            }
            list
        }
        Err(_) => default.to_vec(),
    }
}

fn bad_env(key: &str, v: &str) -> ! {
    eprintln!("suite: {key}={v:?} is not valid");
    std::process::exit(2)
}

impl Settings {
    fn from_env() -> Self {
        let mut workers: Vec<usize> = env_list("SUITE_WORKERS", &[1, 2]);
        workers.sort_unstable();
        workers.dedup();
        let mut loads: Vec<u32> = env_list("SUITE_LOADS", &[25, 50, 75]);
        loads.sort_unstable();
        loads.dedup();
        let s = Settings {
            events: env_num("SUITE_EVENTS", 1_000_000u64),
            workers,
            loads,
            load_secs: env_num("SUITE_LOAD_SECS", 8.0f64),
            qps: env_num("SUITE_QPS", 1000u64),
            query_connections: env_num("SUITE_QUERY_CONNECTIONS", 32usize),
            target_rate: env_num("SUITE_TARGET_RATE", 200_000u64),
            target_qps: env_num("SUITE_TARGET_QPS", 20_000u64),
            target_connections: env_num("SUITE_TARGET_CONNECTIONS", 64usize),
            quiet_wait: Duration::from_secs_f64(env_num("SUITE_QUIET_WAIT", 60.0f64).max(0.0)),
            dir: std::env::var_os("SUITE_DIR").map(PathBuf::from),
            write: env_num("SUITE_WRITE", 1u8) != 0,
        };
        if s.events == 0 || s.workers.contains(&0) || s.loads.contains(&0) {
            bad_env("SUITE_EVENTS/SUITE_WORKERS/SUITE_LOADS", "0");
        }
        if !(s.load_secs.is_finite() && s.load_secs > 0.0) {
            bad_env("SUITE_LOAD_SECS", &s.load_secs.to_string());
        }
        if s.query_connections == 0 {
            bad_env("SUITE_QUERY_CONNECTIONS", "0");
        }
        s
    }

    fn tempdir(&self) -> tempfile::TempDir {
        match &self.dir {
            Some(d) => tempfile::tempdir_in(d),
            None => tempfile::tempdir(),
        }
        .expect("create a temporary data directory")
    }
}

fn config(data_dir: &Path, workers: usize) -> Config {
    let mut cfg = Config::defaults();
    cfg.tcp_addr = "127.0.0.1:0".parse().expect("addr");
    cfg.http_addr = "127.0.0.1:0".parse().expect("addr");
    cfg.data_dir = data_dir.to_path_buf();
    cfg.workers = workers;
    cfg.fsync = FsyncPolicy::Always;
    // Every view with its defaults (the built-in segments included), but not the
    // repository's example segment file.
    cfg.segments_file = None;
    cfg
}

/// Waits for a quiet machine before each measurement, and remembers when it was not.
#[derive(Default)]
struct Quiet {
    not_quiet: Vec<String>,
}

impl Quiet {
    fn wait(&mut self, s: &Settings, what: &str) {
        if s.quiet_wait.is_zero() {
            return;
        }
        let give_up = Instant::now() + s.quiet_wait;
        let mut quiet_for = 0;
        let mut told = false;
        while quiet_for < 2 {
            if Instant::now() >= give_up {
                eprintln!("suite: the machine is still busy; measuring {what} anyway");
                self.not_quiet.push(what.to_owned());
                return;
            }
            let idle = idle_fraction(Duration::from_secs(1));
            if idle >= 0.9 {
                quiet_for += 1;
            } else {
                quiet_for = 0;
                if !told {
                    eprintln!(
                        "suite: waiting for a quiet machine before {what} ({:.0}% idle)",
                        idle * 100.0
                    );
                    told = true;
                }
            }
        }
    }
}

/// Idle share of all CPUs over `window`, from `/proc/stat` (1.0 where unknown).
fn idle_fraction(window: Duration) -> f64 {
    fn sample() -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
        let v: Vec<u64> = cpu
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
        Some((idle, v.iter().take(8).sum()))
    }
    let a = sample();
    std::thread::sleep(window);
    match (a, sample()) {
        (Some((i0, t0)), Some((i1, t1))) if t1 > t0 => (i1 - i0) as f64 / (t1 - t0) as f64,
        _ => 1.0,
    }
}

// ---------------------------------------------------------------------------
// Input

/// A run of whole lines of the input file.
#[derive(Clone, Copy, Debug)]
struct Chunk {
    len: usize,
    /// Lines in this chunk and every chunk before it.
    lines_through: u64,
}

struct Input {
    file: tempfile::NamedTempFile,
    events: u64,
    bytes: u64,
    users: usize,
    chunks: Vec<Chunk>,
}

impl Input {
    /// Writes the workload as NDJSON and cuts it into chunks of about 1 MiB on the way.
    fn generate(s: &Settings) -> Self {
        let o = GenOptions {
            events: s.events,
            ..GenOptions::default()
        };
        let file = match &s.dir {
            Some(d) => tempfile::NamedTempFile::new_in(d),
            None => tempfile::NamedTempFile::new(),
        }
        .expect("create the input file");
        let mut out = BufWriter::with_capacity(4 << 20, file.as_file());
        let mut buf = Vec::with_capacity(BIG_CHUNK + (64 << 10));
        let (mut events, mut bytes) = (0u64, 0u64);
        let mut users = HashSet::new();
        let mut chunks = Vec::new();
        for m in Workload::new(o) {
            let before = buf.len();
            write_json(&mut buf, &m);
            if buf.len() > BIG_CHUNK && before > 0 {
                out.write_all(&buf[..before]).expect("write the input");
                chunks.push(Chunk {
                    len: before,
                    lines_through: events,
                });
                bytes += before as u64;
                buf.drain(..before);
            }
            events += 1;
            users.insert(m.user);
        }
        if !buf.is_empty() {
            out.write_all(&buf).expect("write the input");
            bytes += buf.len() as u64;
            chunks.push(Chunk {
                len: buf.len(),
                lines_through: events,
            });
        }
        out.flush().expect("write the input");
        drop(out);
        file.as_file().sync_all().expect("sync the input");
        Input {
            file,
            events,
            bytes,
            users: users.len(),
            chunks,
        }
    }
}

// ---------------------------------------------------------------------------
// Step 1: throughput over one connection (the approach of benches/ingest.rs)

/// Writes the chunks of the file, then shuts the writing half. Answers `(lines
/// through, when the chunk's last byte was handed to the kernel)` per chunk.
fn send_chunks(mut stream: TcpStream, path: &Path, chunks: &[Chunk]) -> Vec<(u64, Instant)> {
    let mut file = std::fs::File::open(path).expect("open the input");
    let mut buf = vec![0u8; chunks.iter().map(|c| c.len).max().unwrap_or(0)];
    let mut sent = Vec::with_capacity(chunks.len());
    for c in chunks {
        file.read_exact(&mut buf[..c.len]).expect("read the input");
        stream.write_all(&buf[..c.len]).expect("send to the server");
        sent.push((c.lines_through, Instant::now()));
    }
    stream
        .shutdown(Shutdown::Write)
        .expect("shut the writing half");
    sent
}

struct Tput {
    workers: usize,
    events: u64,
    last: Ack,
    ack: Duration,
    visible: Duration,
    ack_latency: Histogram<u64>,
    error_lines: u64,
}

impl Tput {
    fn ack_rate(&self) -> f64 {
        per_sec(self.events, self.ack)
    }
    fn visible_rate(&self) -> f64 {
        per_sec(self.events, self.visible)
    }
}

fn throughput(server: &Server, input: &Input, workers: usize) -> Tput {
    let stream = TcpStream::connect(server.tcp_addr).expect("connect to the TCP ingest");
    stream.set_nodelay(true).ok();
    let reader = stream.try_clone().expect("clone the socket");
    let path = input.file.path();
    let start = Instant::now();
    let (sent, acks) = std::thread::scope(|s| {
        let acks = s.spawn(move || read_acks(reader));
        let sent = s.spawn(move || send_chunks(stream, path, &input.chunks));
        (
            sent.join().expect("sender thread"),
            acks.join().expect("ack reader thread"),
        )
    });
    if let Some(f) = &acks.fatal {
        panic!("the server reported a fatal error: {f}");
    }
    let last_ack_at = acks.acks.last().map(|a| a.1).expect("no ack at all");
    wait_visible(&agent(), server.http_addr, acks.last.seq);
    let visible = start.elapsed();
    let ack_latency = ack_latencies(&sent, &acks.acks);
    Tput {
        workers,
        events: input.events,
        last: acks.last,
        ack: last_ack_at - start,
        visible,
        ack_latency,
        error_lines: acks.error_lines,
    }
}

// ---------------------------------------------------------------------------
// Step 2: load runs; steps 3 and 4

struct LoadPoint {
    label: String,
    /// Percent of `max`; `None` for the fixed workload.
    percent: Option<u32>,
    rate: u64,
    qps: u64,
    connections: usize,
    report: LoadReport,
}

fn load_run(
    rt: &tokio::runtime::Runtime,
    s: &Settings,
    rate: u64,
    qps: u64,
    connections: usize,
) -> LoadReport {
    let dir = s.tempdir();
    let server = rt
        .block_on(Server::start(config(dir.path(), MAIN_WORKERS), |_, _| {}))
        .expect("start the server");
    let mut o = LoadOptions::new(server.tcp_addr, server.http_addr);
    o.rate = rate;
    o.qps = qps;
    o.query_connections = connections;
    o.duration = Duration::from_secs_f64(s.load_secs);
    let report = load::run(&o).unwrap_or_else(|e| panic!("load run at {rate} events/s: {e}"));
    rt.block_on(server.shutdown());
    report
}

struct Replay {
    workers: usize,
    events: u64,
    log_bytes: u64,
    shutdown: Duration,
    time: Duration,
}

impl Replay {
    fn rate(&self) -> f64 {
        per_sec(self.events, self.time)
    }
}

struct Memory {
    workers: usize,
    rss_before: u64,
    rss_after: u64,
    users: usize,
}

impl Memory {
    fn growth(&self) -> u64 {
        self.rss_after.saturating_sub(self.rss_before)
    }
    fn per_user(&self) -> f64 {
        self.growth() as f64 / self.users.max(1) as f64
    }
}

// ---------------------------------------------------------------------------
// Formatting

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Microseconds as milliseconds with about three significant digits.
fn ms(us: u64) -> String {
    let v = us as f64 / 1000.0;
    if v < 1.0 {
        format!("{v:.2}")
    } else if v < 10.0 {
        format!("{v:.1}")
    } else {
        thousands(v.round() as u64)
    }
}

/// A rate, short: `705k`, `1.35M`.
fn short(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e4 {
        format!("{:.0}k", x / 1e3)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn quantiles4(l: &Latency) -> String {
    format!(
        "{} / {} / {} / {} ms",
        ms(l.p50),
        ms(l.p90),
        ms(l.p99),
        ms(l.p999)
    )
}

fn verdict(met: bool) -> &'static str {
    if met {
        "**met**"
    } else {
        "**missed**"
    }
}

fn latency_json(l: &Latency) -> Value {
    json!({"p50": l.p50, "p90": l.p90, "p99": l.p99, "p999": l.p999, "max": l.max, "samples": l.samples})
}

// ---------------------------------------------------------------------------
// Where and when

struct RunInfo {
    date: String,
    cpus: usize,
    cpu_model: String,
    mem_gib: f64,
    kernel: String,
    commit: String,
}

impl RunInfo {
    fn collect() -> Self {
        let now = time::OffsetDateTime::now_utc();
        let date = format!(
            "{}-{:02}-{:02} {:02}:{:02} UTC",
            now.year(),
            u8::from(now.month()),
            now.day(),
            now.hour(),
            now.minute()
        );
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown CPU".to_owned(), |(_, m)| m.trim().to_owned());
        let mem_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map_or(0.0, |kb| kb as f64 / (1024.0 * 1024.0));
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".to_owned(), |k| k.trim().to_owned());
        RunInfo {
            date,
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            mem_gib,
            kernel,
            commit: git_commit(),
        }
    }
}

/// `git rev-parse --short HEAD`, with `-dirty` when the tree has changes other than
/// this suite's own outputs (the `BENCHMARKS.md` section and the charts).
fn git_commit() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown".to_owned();
    };
    let dirty = git(&["status", "--porcelain"]).is_some_and(|s| {
        s.lines().any(|l| {
            let path = l.get(3..).unwrap_or("");
            path != "BENCHMARKS.md" && !path.starts_with("docs/bench/") && path != "docs/"
        })
    });
    format!("{}{}", head.trim(), if dirty { "-dirty" } else { "" })
}

// ---------------------------------------------------------------------------
// The report

struct Results<'a> {
    settings: &'a Settings,
    run: RunInfo,
    input: &'a Input,
    ingest: Vec<Tput>,
    max: f64,
    loads: Vec<LoadPoint>,
    fixed: Option<LoadPoint>,
    replay: Replay,
    memory: Memory,
    not_quiet: Vec<String>,
    elapsed: Duration,
}

impl Results<'_> {
    fn publish(&self) {
        let tables = self.tables();
        println!();
        for (title, table, _) in &tables {
            println!("## {title}\n\n{table}");
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let chart_dir = if self.settings.write {
            root.join("docs/bench")
        } else {
            std::env::temp_dir().join("shopstream-suite")
        };
        std::fs::create_dir_all(&chart_dir).expect("create the chart directory");
        let charts = [
            (THROUGHPUT_SVG, self.throughput_svg()),
            (LATENCY_SVG, self.latency_svg()),
        ];
        for (name, svg) in charts {
            let path = chart_dir.join(name);
            std::fs::write(&path, svg).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            eprintln!("suite: wrote {}", path.display());
        }
        if self.settings.write {
            let path = root.join("BENCHMARKS.md");
            write_section(&path, &self.section(&tables));
            eprintln!("suite: rewrote the suite section of {}", path.display());
        } else {
            let path = chart_dir.join("section.md");
            std::fs::write(&path, self.section(&tables))
                .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            eprintln!(
                "suite: SUITE_WRITE=0: BENCHMARKS.md left alone; the section is in {}",
                path.display()
            );
        }
        println!("SUITE_JSON {}", self.json());
    }

    fn ingest_met(&self) -> bool {
        self.max >= TARGET_INGEST
    }

    fn fresh_point(&self) -> Option<&LoadPoint> {
        self.loads
            .iter()
            .find(|l| l.percent == Some(TARGET_FRESH_LOAD))
    }

    /// `(title, Markdown table, note under it)` per measurement.
    fn tables(&self) -> Vec<(String, String, String)> {
        let s = self.settings;
        let i = self.input;
        let mut out = Vec::new();

        // 1. Throughput
        let mut t = String::from(
            "| timely workers | to final ack | to visible | ack latency per 1 MiB chunk, p50 / p99 | target |\n|---|---|---|---|---|\n",
        );
        for r in &self.ingest {
            let best = r.visible_rate() >= self.max;
            let _ = writeln!(
                t,
                "| {} | {} events/s ({:.2} s) | {}{} events/s ({:.2} s){} | {} / {} ms | ≥ 1,000,000 events/s: {} |",
                r.workers,
                thousands(r.ack_rate().round() as u64),
                r.ack.as_secs_f64(),
                if best { "**" } else { "" },
                thousands(r.visible_rate().round() as u64),
                r.visible.as_secs_f64(),
                if best { "**" } else { "" },
                ms(r.ack_latency.value_at_quantile(0.5)),
                ms(r.ack_latency.value_at_quantile(0.99)),
                verdict(r.visible_rate() >= TARGET_INGEST),
            );
        }
        let mut note = format!(
            "{} events ({:.0} MiB of NDJSON) over one TCP connection, fsync `always`. \
             `max` = the best rate to visible = **{} events/s**; step 2 runs at fractions of it.",
            thousands(i.events),
            mib(i.bytes),
            thousands(self.max.round() as u64)
        );
        for r in &self.ingest {
            let answered = r.last.accepted + r.last.rejected;
            if answered != r.events || r.error_lines > 0 || r.last.rejected > 0 {
                let _ = write!(
                    note,
                    " NOTE ({} workers): {} of {} lines answered, {} rejected, {} error lines.",
                    r.workers, answered, r.events, r.last.rejected, r.error_lines
                );
            }
        }
        out.push(("1. Ingest throughput vs timely workers".to_owned(), t, note));

        // 2. Latency vs load
        let mut t = String::from(
            "| load (2 workers) | ingest target → achieved to ack | queries target → achieved (threads) | ack latency p50 / p99 | freshness p50 / p90 / p99 / p99.9 | query latency p50 / p90 / p99 / p99.9 | query service time p50 / p99 | target |\n|---|---|---|---|---|---|---|---|\n",
        );
        let mut notes = String::new();
        let mut late = Vec::new();
        for p in self.loads.iter().chain(self.fixed.iter()) {
            let r = &p.report;
            let target = match p.percent {
                Some(TARGET_FRESH_LOAD) => format!(
                    "freshness p99 ≤ 10 ms: {}",
                    verdict(r.freshness.freshness_us.p99 <= TARGET_FRESH_P99_US)
                ),
                Some(_) => "—".to_owned(),
                None => format!(
                    "query p99 ≤ 1 ms: {}",
                    verdict(r.queries.latency_us.p99 <= TARGET_QUERY_P99_US)
                ),
            };
            let _ = writeln!(
                t,
                "| {} | {} → {} events/s | {} → {} q/s ({}) | {} / {} ms | {} | {} | {} / {} ms | {} |",
                p.label,
                thousands(p.rate),
                thousands(r.ingest.achieved_rate.round() as u64),
                thousands(p.qps),
                thousands(r.queries.achieved_qps.round() as u64),
                p.connections,
                ms(r.ingest.ack_latency_us.p50),
                ms(r.ingest.ack_latency_us.p99),
                quantiles4(&r.freshness.freshness_us),
                quantiles4(&r.queries.latency_us),
                ms(r.queries.service_us.p50),
                ms(r.queries.service_us.p99),
                target
            );
            let (ing, fr, q) = (&r.ingest, &r.freshness, &r.queries);
            if let Some(f) = r.failure() {
                let _ = write!(notes, " NOTE ({}): {f}.", p.label);
            }
            if ing.rejected > 0 || ing.error_lines > 0 || fr.errors > 0 || q.errors > 0 {
                let _ = write!(
                    notes,
                    " NOTE ({}): {} rejected, {} error lines, {} freshness errors, {} query errors{}.",
                    p.label,
                    ing.rejected,
                    ing.error_lines,
                    fr.errors,
                    q.errors,
                    q.first_errors
                        .first()
                        .map(|e| format!(" (first: `{}`)", e.chars().take(120).collect::<String>()))
                        .unwrap_or_default()
                );
            }
            if q.done > 0 && q.late * 10 > q.done {
                late.push(format!(
                    "{}: {} of {}",
                    p.label,
                    thousands(q.late),
                    thousands(q.done)
                ));
            }
        }
        if !late.is_empty() {
            let _ = write!(
                notes,
                " Queries sent more than 1 ms after their intended time ({}): with one query in \
                 flight per connection, the connections (or the client's one thread) could not keep \
                 the schedule, and that wait counts in the latency; the service time (from the \
                 actual send) is the server's share.",
                late.join("; ")
            );
        }
        let note = format!(
            "`shopstream_tools::load::run` for {} s per row on a fresh server: events from \
             `shopstream_tools::gen` over 2 connections, open loop (latency counts from each \
             event's and query's intended send time). Freshness: intended send → a \
             `?min_seq` read sees the event (durable ack included).{} The driver generates its events in this process, on \
             the same cores as the server, so at high rates it takes CPU from the server \
             (step 1 streams a file made beforehand).{notes}",
            s.load_secs,
            if self.fixed.is_some() {
                " The last row is the issue's fixed workload."
            } else {
                ""
            }
        );
        out.push(("2. Freshness and query latency vs load".to_owned(), t, note));

        // 3. Replay
        let rp = &self.replay;
        let t = format!(
            "| log replayed on restart | log on disk | graceful shutdown before | replay (`Server::start`) | rate | target |\n|---|---|---|---|---|---|\n\
             | {} events, {} workers | {:.0} MiB | {:.2} s | {:.2} s | **{} events/s** ({:.0} MiB/s) | ≥ 1,000,000 events/s: {} |\n",
            thousands(rp.events),
            rp.workers,
            mib(rp.log_bytes),
            rp.shutdown.as_secs_f64(),
            rp.time.as_secs_f64(),
            thousands(rp.rate().round() as u64),
            mib(rp.log_bytes) / rp.time.as_secs_f64().max(1e-9),
            verdict(rp.rate() >= TARGET_REPLAY)
        );
        let mut note = "The log of step 1's run with that worker count; `Server::start` returns once every record is replayed through the dataflows.".to_owned();
        if rp.events + self.ingest_dups(rp.workers) != i.events {
            let _ = write!(
                note,
                " NOTE: replayed {} events; step 1 logged {} lines less {} duplicates.",
                rp.events,
                i.events,
                self.ingest_dups(rp.workers)
            );
        }
        out.push(("3. Replay".to_owned(), t, note));

        // 4. Memory
        let m = &self.memory;
        let t = format!(
            "| run | RSS before → once all visible | growth | distinct users | per user | per 100k users | target |\n|---|---|---|---|---|---|---|\n\
             | step 1, {} workers, {} events | {:.0} → {:.0} MiB | {:.0} MiB | {} | **{} B** | {:.0} MiB | ≤ 150 B per user at 1M users: {} (at {} users) |\n",
            m.workers,
            thousands(i.events),
            mib(m.rss_before),
            mib(m.rss_after),
            mib(m.growth()),
            thousands(m.users as u64),
            thousands(m.per_user().round() as u64),
            m.per_user() * 100_000.0 / (1024.0 * 1024.0),
            verdict(m.per_user() <= TARGET_BYTES_PER_USER),
            thousands(m.users as u64)
        );
        let note = format!(
            "`VmRSS` of the whole bench process (views, interned ids, the deduplication horizon, log buffers, allocator slack), so this is an upper bound for the views. It grows with events as well as users: per event it is {:.0} B.",
            m.growth() as f64 / i.events.max(1) as f64
        );
        out.push(("4. Memory per user".to_owned(), t, note));
        out
    }

    fn ingest_dups(&self, workers: usize) -> u64 {
        self.ingest
            .iter()
            .find(|t| t.workers == workers)
            .map_or(0, |t| t.last.duplicates)
    }

    /// The summary of the issue's targets.
    fn targets(&self) -> String {
        let mut t = String::from("| target | measured | |\n|---|---|---|\n");
        let _ = writeln!(
            t,
            "| durable ingest ≥ 1,000,000 events/s | {} events/s to visible (best of {} workers) | {} |",
            thousands(self.max.round() as u64),
            self.settings
                .workers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" and "),
            verdict(self.ingest_met())
        );
        match self.fresh_point() {
            Some(p) => {
                let v = p.report.freshness.freshness_us.p99;
                let _ = writeln!(
                    t,
                    "| freshness p99 ≤ 10 ms at 50% of max | {} ms at {} events/s | {} |",
                    ms(v),
                    thousands(p.rate),
                    verdict(v <= TARGET_FRESH_P99_US)
                );
            }
            None => {
                let _ = writeln!(
                    t,
                    "| freshness p99 ≤ 10 ms at 50% of max | not measured (`SUITE_LOADS` has no 50) | — |"
                );
            }
        }
        match &self.fixed {
            Some(p) => {
                let q = &p.report.queries;
                let _ = writeln!(
                    t,
                    "| profile query p99 ≤ 1 ms at 20,000 q/s while ingesting 200,000 events/s | {} ms (service time {} ms) at {} q/s achieved of {}, ingest {} events/s, {} connections | {} |",
                    ms(q.latency_us.p99),
                    ms(q.service_us.p99),
                    thousands(q.achieved_qps.round() as u64),
                    thousands(p.qps),
                    thousands(p.report.ingest.achieved_rate.round() as u64),
                    p.connections,
                    verdict(q.latency_us.p99 <= TARGET_QUERY_P99_US && q.achieved_qps >= 0.95 * p.qps as f64)
                );
            }
            None => {
                let _ = writeln!(
                    t,
                    "| profile query p99 ≤ 1 ms at 20,000 q/s while ingesting 200,000 events/s | not measured (`SUITE_TARGET_CONNECTIONS=0`) | — |"
                );
            }
        }
        let m = &self.memory;
        let _ = writeln!(
            t,
            "| ≤ 150 bytes per user at 1M users | {} B per user at {} users | {} |",
            thousands(m.per_user().round() as u64),
            thousands(m.users as u64),
            verdict(m.per_user() <= TARGET_BYTES_PER_USER)
        );
        let _ = writeln!(
            t,
            "| replay ≥ 1,000,000 events/s | {} events/s | {} |",
            thousands(self.replay.rate().round() as u64),
            verdict(self.replay.rate() >= TARGET_REPLAY)
        );
        t
    }

    fn section(&self, tables: &[(String, String, String)]) -> String {
        let (s, r, i) = (self.settings, &self.run, self.input);
        let mut o = String::new();
        let _ = writeln!(o, "## The suite: `cargo bench --bench suite`\n");
        let _ = writeln!(
            o,
            "*Written by the last run of `cargo bench --bench suite` (`benches/suite.rs`); the next run rewrites everything between the `suite` markers.*\n"
        );
        let _ = writeln!(
            o,
            "**Run.** {} · machine: `nproc` = {}, {}, {:.1} GiB of memory, Linux {} · commit `{}` · \
             {} events from `shopstream_tools::gen` (seed 7; {} distinct users of the generator's 200,000; {:.0} MiB of NDJSON) · \
             every measurement on a fresh in-process server (`Config::defaults()`, fsync `always`, log in a temporary directory) · \
             the whole run took {:.0} s.",
            r.date,
            r.cpus,
            r.cpu_model,
            r.mem_gib,
            r.kernel,
            r.commit,
            thousands(i.events),
            thousands(i.users as u64),
            mib(i.bytes),
            self.elapsed.as_secs_f64()
        );
        if self.not_quiet.is_empty() {
            if s.quiet_wait.is_zero() {
                let _ = writeln!(o, "The quiet-machine wait was off (`SUITE_QUIET_WAIT=0`).");
            } else {
                let _ = writeln!(
                    o,
                    "Before each measurement the machine was at least 90% idle for 2 s."
                );
            }
        } else {
            let _ = writeln!(
                o,
                "**The machine was busy** (under 90% idle) before: {}; those figures may be low.",
                self.not_quiet.join(", ")
            );
        }
        let _ = writeln!(
            o,
            "\nKnobs: `SUITE_EVENTS` ({}), `SUITE_WORKERS` ({}), `SUITE_LOADS` ({}), `SUITE_LOAD_SECS` ({}), \
             `SUITE_QPS` ({}), `SUITE_QUERY_CONNECTIONS` ({}), `SUITE_TARGET_RATE` ({}), `SUITE_TARGET_QPS` ({}), \
             `SUITE_TARGET_CONNECTIONS` ({}), `SUITE_QUIET_WAIT`, `SUITE_DIR`, `SUITE_WRITE=0` (leave this file alone). \
             This is one run: expect ±10% on throughput and more on tail latency from run to run.\n",
            s.events,
            join(&s.workers),
            join(&s.loads),
            s.load_secs,
            s.qps,
            s.query_connections,
            s.target_rate,
            s.target_qps,
            s.target_connections
        );
        let _ = writeln!(o, "### Targets\n\n{}", self.targets());
        for (k, (title, table, note)) in tables.iter().enumerate() {
            let _ = writeln!(o, "### {title}\n\n{table}\n{note}\n");
            if k == 0 {
                let _ = writeln!(
                    o,
                    "![Ingest throughput vs workers](docs/bench/{THROUGHPUT_SVG})\n"
                );
            }
            if k == 1 {
                let _ = writeln!(
                    o,
                    "![Freshness and query latency vs load](docs/bench/{LATENCY_SVG})\n"
                );
            }
        }
        o
    }

    fn json(&self) -> Value {
        let i = self.input;
        let load = |p: &LoadPoint| {
            let r = &p.report;
            json!({
                "label": p.label,
                "percent_of_max": p.percent,
                "target_rate": p.rate,
                "achieved_rate": r.ingest.achieved_rate,
                "target_qps": p.qps,
                "achieved_qps": r.queries.achieved_qps,
                "query_connections": p.connections,
                "duration_s": r.settings.duration_s,
                "acked": r.ingest.acked,
                "rejected": r.ingest.rejected,
                "unacked": r.ingest.unacked,
                "query_errors": r.queries.errors,
                "late_queries": r.queries.late,
                "ack_latency_us": latency_json(&r.ingest.ack_latency_us),
                "freshness_us": latency_json(&r.freshness.freshness_us),
                "visible_after_ack_us": latency_json(&r.freshness.visible_after_ack_us),
                "query_latency_us": latency_json(&r.queries.latency_us),
                "query_service_us": latency_json(&r.queries.service_us),
            })
        };
        let m = &self.memory;
        json!({
            "date": self.run.date,
            "commit": self.run.commit,
            "nproc": self.run.cpus,
            "mem_gib": self.run.mem_gib,
            "events": i.events,
            "bytes": i.bytes,
            "users": i.users,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "not_quiet": self.not_quiet,
            "throughput": self.ingest.iter().map(|t| json!({
                "workers": t.workers,
                "ack_s": t.ack.as_secs_f64(),
                "ack_events_per_s": t.ack_rate(),
                "visible_s": t.visible.as_secs_f64(),
                "visible_events_per_s": t.visible_rate(),
                "accepted": t.last.accepted,
                "rejected": t.last.rejected,
                "duplicates": t.last.duplicates,
                "ack_latency_us": {
                    "p50": t.ack_latency.value_at_quantile(0.5),
                    "p99": t.ack_latency.value_at_quantile(0.99),
                    "max": t.ack_latency.max(),
                },
            })).collect::<Vec<_>>(),
            "max_events_per_s": self.max,
            "loads": self.loads.iter().map(load).collect::<Vec<_>>(),
            "fixed": self.fixed.as_ref().map(load),
            "replay": {
                "workers": self.replay.workers,
                "events": self.replay.events,
                "log_bytes": self.replay.log_bytes,
                "shutdown_s": self.replay.shutdown.as_secs_f64(),
                "replay_s": self.replay.time.as_secs_f64(),
                "events_per_s": self.replay.rate(),
            },
            "memory": {
                "workers": m.workers,
                "rss_before_bytes": m.rss_before,
                "rss_after_bytes": m.rss_after,
                "rss_growth_bytes": m.growth(),
                "users": m.users,
                "bytes_per_user": m.per_user(),
                "bytes_per_100k_users": m.per_user() * 100_000.0,
            },
            "targets": {
                "ingest_1m_per_s": self.ingest_met(),
                "freshness_p99_10ms_at_50pct": self.fresh_point()
                    .map(|p| p.report.freshness.freshness_us.p99 <= TARGET_FRESH_P99_US),
                "query_p99_1ms_at_20k_qps": self.fixed.as_ref()
                    .map(|p| p.report.queries.latency_us.p99 <= TARGET_QUERY_P99_US),
                "bytes_per_user_150": m.per_user() <= TARGET_BYTES_PER_USER,
                "replay_1m_per_s": self.replay.rate() >= TARGET_REPLAY,
            },
        })
    }
}

fn join<T: std::fmt::Display>(v: &[T]) -> String {
    v.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Replaces the text between the markers (appending them when absent), reading the
/// file right before writing it so concurrent edits elsewhere in it survive.
fn write_section(path: &Path, body: &str) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let block = format!("{MARK_BEGIN}\n{}\n{MARK_END}", body.trim_end());
    let new = match (text.find(MARK_BEGIN), text.find(MARK_END)) {
        (Some(b), Some(e)) if e > b => {
            format!("{}{block}{}", &text[..b], &text[e + MARK_END.len()..])
        }
        _ => {
            let sep = if text.is_empty() || text.ends_with("\n\n") {
                ""
            } else if text.ends_with('\n') {
                "\n"
            } else {
                "\n\n"
            };
            format!("{text}{sep}{block}\n")
        }
    };
    std::fs::write(path, new).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

// ---------------------------------------------------------------------------
// Charts: plain SVG, drawn by hand

const FONT: &str = "DejaVu Sans, Helvetica, Arial, sans-serif";
const BLUE: &str = "#4C78A8";
const ORANGE: &str = "#F58518";
const RED: &str = "#E45756";
const GREEN: &str = "#54A24B";
const GRID: &str = "#e6e6e6";
const INK: &str = "#333333";
const MUTED: &str = "#777777";

struct Svg {
    w: f64,
    h: f64,
    body: String,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl Svg {
    fn new(w: f64, h: f64) -> Self {
        let mut s = Svg {
            w,
            h,
            body: String::new(),
        };
        s.rect(0.0, 0.0, w, h, "#ffffff");
        s
    }

    fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, fill: &str) {
        let _ = writeln!(
            self.body,
            r#"<rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" fill="{fill}"/>"#
        );
    }

    /// The x and y axes of a plot area.
    fn axes(&mut self, left: f64, right: f64, top: f64, bottom: f64) {
        self.line((left, bottom), (right, bottom), INK, 1.2, "");
        self.line((left, top), (left, bottom), INK, 1.2, "");
    }

    fn line(
        &mut self,
        (x1, y1): (f64, f64),
        (x2, y2): (f64, f64),
        stroke: &str,
        width: f64,
        dash: &str,
    ) {
        let dash = if dash.is_empty() {
            String::new()
        } else {
            format!(r#" stroke-dasharray="{dash}""#)
        };
        let _ = writeln!(
            self.body,
            r#"<line x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" stroke="{stroke}" stroke-width="{width}"{dash}/>"#
        );
    }

    fn polyline(&mut self, pts: &[(f64, f64)], stroke: &str, width: f64, dash: &str) {
        let points: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
        let dash = if dash.is_empty() {
            String::new()
        } else {
            format!(r#" stroke-dasharray="{dash}""#)
        };
        let _ = writeln!(
            self.body,
            r#"<polyline points="{}" fill="none" stroke="{stroke}" stroke-width="{width}" stroke-linejoin="round"{dash}/>"#,
            points.join(" ")
        );
    }

    fn circle(&mut self, (cx, cy): (f64, f64), r: f64, fill: &str) {
        let _ = writeln!(
            self.body,
            r##"<circle cx="{cx:.1}" cy="{cy:.1}" r="{r}" fill="{fill}" stroke="#ffffff" stroke-width="1.5"/>"##
        );
    }

    /// `anchor`: start, middle or end.
    #[allow(clippy::too_many_arguments)]
    fn text(&mut self, x: f64, y: f64, s: &str, size: f64, anchor: &str, fill: &str, bold: bool) {
        let weight = if bold { r#" font-weight="bold""# } else { "" };
        let _ = writeln!(
            self.body,
            r#"<text x="{x:.1}" y="{y:.1}" font-size="{size}" text-anchor="{anchor}" fill="{fill}"{weight}>{}</text>"#,
            esc(s)
        );
    }

    /// Bold text with a white halo, readable over lines.
    fn label(&mut self, x: f64, y: f64, s: &str, size: f64, fill: &str) {
        let _ = writeln!(
            self.body,
            r##"<text x="{x:.1}" y="{y:.1}" font-size="{size}" font-weight="bold" fill="{fill}" stroke="#ffffff" stroke-width="3" stroke-linejoin="round" paint-order="stroke">{}</text>"##,
            esc(s)
        );
    }

    fn vtext(&mut self, x: f64, y: f64, s: &str, size: f64) {
        let _ = writeln!(
            self.body,
            r#"<text x="{x:.1}" y="{y:.1}" font-size="{size}" text-anchor="middle" fill="{INK}" transform="rotate(-90 {x:.1} {y:.1})">{}</text>"#,
            esc(s)
        );
    }

    fn finish(self) -> String {
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"{FONT}\">\n{}</svg>\n",
            self.body,
            w = self.w,
            h = self.h
        )
    }
}

/// A round step that cuts `range` into about `n` parts.
fn nice_step(range: f64, n: f64) -> f64 {
    let raw = (range / n).max(1e-12);
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let m = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 2.5 {
        2.5
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

/// A latency tick label in ms.
fn tick_ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{} s", v / 1000.0)
    } else if v >= 1.0 {
        format!("{v:.0} ms")
    } else {
        let s = format!("{v:.3}");
        format!("{} ms", s.trim_end_matches('0').trim_end_matches('.'))
    }
}

impl Results<'_> {
    fn subtitle(&self) -> String {
        format!(
            "commit {} · {} · nproc {} · {:.0} GiB",
            self.run.commit, self.run.date, self.run.cpus, self.run.mem_gib
        )
    }

    fn throughput_svg(&self) -> String {
        let (w, h) = (760.0, 450.0);
        let (left, right, top, bottom) = (90.0, w - 30.0, 96.0, h - 62.0);
        let mut g = Svg::new(w, h);
        g.text(
            w / 2.0,
            30.0,
            "Durable ingest throughput vs timely workers",
            19.0,
            "middle",
            INK,
            true,
        );
        g.text(
            w / 2.0,
            50.0,
            &format!(
                "{} events over one TCP connection, fsync always · {}",
                thousands(self.input.events),
                self.subtitle()
            ),
            11.5,
            "middle",
            MUTED,
            false,
        );
        // Legend.
        let legend = [
            (BLUE, "to final ack (durable)"),
            (ORANGE, "to visible in the views"),
        ];
        let mut lx = left + 10.0;
        for (color, name) in legend {
            g.rect(lx, 66.0, 14.0, 14.0, color);
            g.text(lx + 20.0, 78.0, name, 13.0, "start", INK, false);
            lx += 200.0;
        }
        g.line((lx, 73.0), (lx + 28.0, 73.0), RED, 2.0, "6 4");
        g.text(lx + 34.0, 78.0, "target", 13.0, "start", INK, false);

        let top_value = self
            .ingest
            .iter()
            .map(Tput::ack_rate)
            .fold(TARGET_INGEST, f64::max);
        let step = nice_step(top_value * 1.1, 5.0);
        let ymax = (top_value * 1.1 / step).ceil() * step;
        let y = |v: f64| bottom - (v / ymax) * (bottom - top);
        let mut v = 0.0;
        while v <= ymax + step * 0.01 {
            g.line((left, y(v)), (right, y(v)), GRID, 1.0, "");
            g.text(left - 8.0, y(v) + 4.0, &short(v), 12.0, "end", INK, false);
            v += step;
        }
        g.vtext(24.0, (top + bottom) / 2.0, "events per second", 13.0);

        let n = self.ingest.len().max(1) as f64;
        let group = (right - left) / n;
        let bar = (group * 0.28).min(96.0);
        for (k, t) in self.ingest.iter().enumerate() {
            let cx = left + group * (k as f64 + 0.5);
            let bars = [
                (cx - bar - 4.0, t.ack_rate(), BLUE),
                (cx + 4.0, t.visible_rate(), ORANGE),
            ];
            for (x, val, color) in bars {
                g.rect(x, y(val), bar, bottom - y(val), color);
                g.text(
                    x + bar / 2.0,
                    y(val) - 7.0,
                    &short(val),
                    13.0,
                    "middle",
                    INK,
                    true,
                );
            }
            let label = if t.workers == 1 {
                "1 worker".to_owned()
            } else {
                format!("{} workers", t.workers)
            };
            g.text(cx, bottom + 24.0, &label, 14.0, "middle", INK, false);
            g.text(
                cx,
                bottom + 42.0,
                &format!(
                    "ack {:.2} s · visible {:.2} s",
                    t.ack.as_secs_f64(),
                    t.visible.as_secs_f64()
                ),
                11.0,
                "middle",
                MUTED,
                false,
            );
        }
        g.axes(left, right, top, bottom);
        let ty = y(TARGET_INGEST);
        g.line((left, ty), (right, ty), RED, 2.0, "6 4");
        g.text(
            right - 4.0,
            ty - 6.0,
            "target: 1M events/s",
            12.0,
            "end",
            RED,
            false,
        );
        g.finish()
    }

    fn latency_svg(&self) -> String {
        let (w, h) = (900.0, 480.0);
        let (left, right, top, bottom) = (80.0, w - 250.0, 76.0, h - 78.0);
        let mut g = Svg::new(w, h);
        g.text(
            (left + right) / 2.0 + 40.0,
            30.0,
            "Freshness and profile-query latency vs ingest load (2 workers)",
            18.0,
            "middle",
            INK,
            true,
        );
        g.text(
            (left + right) / 2.0 + 40.0,
            50.0,
            &format!(
                "open loop, {} q/s over {} connections, {} s per point · {}",
                thousands(self.settings.qps),
                self.settings.query_connections,
                self.settings.load_secs,
                self.subtitle()
            ),
            11.5,
            "middle",
            MUTED,
            false,
        );
        type Pick = fn(&LoadReport) -> u64;
        let series: [(&str, &str, &str, Pick); 4] = [
            ("freshness p99", BLUE, "", |r| r.freshness.freshness_us.p99),
            ("freshness p50", BLUE, "6 4", |r| {
                r.freshness.freshness_us.p50
            }),
            ("query latency p99", RED, "", |r| r.queries.latency_us.p99),
            ("query latency p50", RED, "6 4", |r| {
                r.queries.latency_us.p50
            }),
        ];
        let pts = &self.loads;
        let values: Vec<f64> = series
            .iter()
            .flat_map(|(_, _, _, f)| pts.iter().map(move |p| f(&p.report) as f64 / 1000.0))
            .chain(std::iter::once(TARGET_FRESH_P99_US as f64 / 1000.0))
            .filter(|v| *v > 0.0)
            .collect();
        let vmin = values.iter().copied().fold(f64::INFINITY, f64::min);
        let vmax = values.iter().copied().fold(0.0, f64::max);
        let log = vmin.is_finite() && vmax / vmin >= 20.0;
        let (lo, hi) = if log {
            (
                10f64.powf(vmin.log10().floor()),
                10f64.powf(vmax.log10().ceil()),
            )
        } else {
            let step = nice_step(vmax * 1.1, 5.0);
            (0.0, (vmax * 1.1 / step).ceil() * step)
        };
        let y = move |v: f64| {
            if log {
                bottom
                    - (v.max(lo).log10() - lo.log10()) / (hi.log10() - lo.log10()) * (bottom - top)
            } else {
                bottom - (v - lo) / (hi - lo) * (bottom - top)
            }
        };
        if log {
            let decades = (hi.log10() - lo.log10()).round() as i32;
            let mut d = lo;
            while d <= hi * 1.0001 {
                g.line((left, y(d)), (right, y(d)), "#d9d9d9", 1.0, "");
                g.text(left - 8.0, y(d) + 4.0, &tick_ms(d), 12.0, "end", INK, false);
                if d < hi * 0.999 {
                    for m in [2.0, 5.0] {
                        let v = d * m;
                        g.line((left, y(v)), (right, y(v)), "#f0f0f0", 1.0, "");
                        if decades <= 2 {
                            g.text(
                                left - 8.0,
                                y(v) + 4.0,
                                &tick_ms(v),
                                11.0,
                                "end",
                                MUTED,
                                false,
                            );
                        }
                    }
                }
                d *= 10.0;
            }
        } else {
            let step = nice_step(hi, 5.0);
            let mut v = 0.0;
            while v <= hi + step * 0.01 {
                g.line((left, y(v)), (right, y(v)), GRID, 1.0, "");
                g.text(left - 8.0, y(v) + 4.0, &tick_ms(v), 12.0, "end", INK, false);
                v += step;
            }
        }
        g.vtext(
            22.0,
            (top + bottom) / 2.0,
            if log {
                "latency (log scale)"
            } else {
                "latency"
            },
            13.0,
        );

        let pmin = pts.iter().filter_map(|p| p.percent).min().unwrap_or(0) as f64;
        let pmax = pts.iter().filter_map(|p| p.percent).max().unwrap_or(100) as f64;
        let pad = ((pmax - pmin) * 0.12).max(8.0);
        let (xlo, xhi) = (pmin - pad, pmax + pad);
        let x = |p: f64| left + (p - xlo) / (xhi - xlo) * (right - left);
        for p in pts {
            let px = x(f64::from(p.percent.unwrap_or(0)));
            g.line((px, bottom), (px, bottom + 5.0), INK, 1.2, "");
            g.text(px, bottom + 21.0, &p.label, 13.0, "middle", INK, false);
            g.text(
                px,
                bottom + 37.0,
                &format!("{} ev/s", short(p.rate as f64)),
                11.0,
                "middle",
                MUTED,
                false,
            );
        }
        g.text(
            (left + right) / 2.0,
            bottom + 62.0,
            &format!(
                "ingest load, % of max ({} events/s to visible)",
                thousands(self.max.round() as u64)
            ),
            13.0,
            "middle",
            INK,
            false,
        );
        g.axes(left, right, top, bottom);

        // The freshness target.
        let ty = y(TARGET_FRESH_P99_US as f64 / 1000.0);
        g.line((left, ty), (right, ty), GREEN, 1.8, "2 4");
        let mut labels: Vec<(f64, f64, String, &str)> = Vec::new();
        for (name, color, dash, f) in series {
            let line: Vec<(f64, f64)> = pts
                .iter()
                .map(|p| {
                    (
                        x(f64::from(p.percent.unwrap_or(0))),
                        y(f(&p.report) as f64 / 1000.0),
                    )
                })
                .collect();
            g.polyline(&line, color, 2.4, dash);
            for (k, pt) in line.iter().enumerate() {
                g.circle(*pt, 4.2, color);
                // Values beside the p99 points (the p50s are in the table).
                if name.ends_with("p99") {
                    let text = format!("{} ms", ms(f(&pts[k].report)));
                    labels.push((pt.0 + 9.0, pt.1 - 6.0, text, color));
                }
            }
        }
        // Labels at the same load that would overlap are pushed apart.
        labels.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
        for k in 1..labels.len() {
            let (prev_x, prev_y) = (labels[k - 1].0, labels[k - 1].1);
            if (labels[k].0 - prev_x).abs() < 1.0 && labels[k].1 - prev_y < 14.0 {
                let mid = (labels[k].1 + prev_y) / 2.0;
                labels[k - 1].1 = mid - 7.0;
                labels[k].1 = mid + 7.0;
            }
        }
        for (lx, ly, text, color) in &labels {
            g.label(*lx, *ly, text, 11.0, color);
        }

        // Legend on the right.
        let lx = right + 24.0;
        let mut ly = top + 10.0;
        for (name, color, dash, _) in series {
            g.line((lx, ly), (lx + 34.0, ly), color, 2.4, dash);
            g.circle((lx + 17.0, ly), 4.2, color);
            g.text(lx + 44.0, ly + 4.5, name, 13.0, "start", INK, false);
            ly += 26.0;
        }
        g.line((lx, ly), (lx + 34.0, ly), GREEN, 1.8, "2 4");
        g.text(
            lx + 44.0,
            ly + 16.5,
            "≤ 10 ms at 50% load",
            11.0,
            "start",
            MUTED,
            false,
        );
        ly += 12.0;
        g.text(
            lx + 44.0,
            ly - 7.5,
            "freshness p99 target",
            13.0,
            "start",
            INK,
            false,
        );
        ly += 34.0;
        for line in [
            "freshness: intended send →",
            "readable by ?min_seq",
            "query: intended send →",
            "answer (open loop)",
        ] {
            g.text(lx, ly, line, 11.0, "start", MUTED, false);
            ly += 16.0;
        }
        g.finish()
    }
}
