//! End-to-end benchmark of the server, in process, over real sockets.
//!
//! `cargo bench --bench ingest` runs three phases, each on a fresh server
//! (`Server::start` with the embedded defaults: fsync `always`, listeners on
//! `127.0.0.1:0`, the log in a temporary directory):
//!
//! 1. **Durable throughput.** The whole input file goes over one TCP connection as
//!    fast as the server takes it (1 MiB chunks cut at line ends). Times: until the
//!    final ack (every event durable) and until the views include the last event
//!    (a `GET ...?min_seq=SEQ`). Ack latency per chunk: from the moment the chunk's
//!    last byte was handed to the kernel to the first ack whose
//!    `accepted + rejected` covers the chunk's lines. Resident memory of the whole
//!    process before the server starts and once the last event is visible.
//! 2. **Query latency while ingesting.** A fresh server; a paced sender streams the
//!    file at `SHOPSTREAM_BENCH_RATE` events/s (64 KiB chunks) while two threads
//!    (`SHOPSTREAM_BENCH_QUERY_THREADS`), one keep-alive HTTP connection each, ask for
//!    user profiles at `SHOPSTREAM_BENCH_QPS` in total, open loop: each query has an intended send time on a fixed schedule and its
//!    latency counts from that time, so a stall of the server shows up as latency
//!    of the queries it delayed (no coordinated omission). Service time (from the
//!    actual send) is recorded too. Users are drawn with `gen.py`'s skew. A thread
//!    has one query in flight: when the service time nears its share of the
//!    schedule, queries wait in the client, and that wait is counted.
//! 3. **Durable replay.** The server of phase 1 is shut down gracefully and a new
//!    one is started on the same data directory; `Server::start` replays the whole
//!    log before it returns. It runs right after phase 1, on its log.
//!
//! Environment: `SHOPSTREAM_BENCH_INPUT` (default `/tmp/w1m.ndjson`, made by
//! `../shared/peers/gen.py 1000000 /tmp/w1m` when missing and the script exists),
//! `SHOPSTREAM_BENCH_WORKERS` (2), `SHOPSTREAM_BENCH_RATE` (200000),
//! `SHOPSTREAM_BENCH_QPS` (2000), `SHOPSTREAM_BENCH_DIR` (parent of the temporary
//! data directories; the system temp dir by default: it must be a real disk for
//! fsync to mean anything).
//!
//! Output: progress on stderr; a table on stdout, then one `BENCH_JSON {...}` line.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use shopstream::config::Config;
use shopstream::server::Server;

mod common;
use common::*;

/// Users in `gen.py`'s workload; the query threads draw from the same range.
const GEN_USERS: u64 = 200_000;
const BIG_CHUNK: usize = 1 << 20;
const SMALL_CHUNK: usize = 64 << 10;

fn main() {
    let settings = Settings::from_env();
    eprintln!(
        "bench: input {} workers {} rate {} ev/s qps {}",
        settings.input.display(),
        settings.workers,
        settings.rate,
        settings.qps
    );
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    eprintln!("bench: scanning the input (line ends, chunks, distinct users)...");
    let input = Prepared::scan(&settings.input);
    eprintln!(
        "bench: {} events, {} bytes, {} distinct users, {} chunks of 1 MiB",
        input.lines,
        input.bytes,
        input.users,
        input.big.len()
    );

    let data_dir = settings.tempdir();
    let rss_before = rss_bytes();
    eprintln!("bench: phase 1: durable throughput over one TCP connection");
    let server = rt
        .block_on(Server::start(settings.config(data_dir.path()), |_, _| {}))
        .expect("start the server");
    let tput = throughput(&server, &settings.input, &input);
    let rss_after = rss_bytes();
    let log_bytes = dir_bytes(data_dir.path());
    eprintln!(
        "bench: acked in {:.2} s, visible in {:.2} s",
        tput.ack.as_secs_f64(),
        tput.visible.as_secs_f64()
    );

    eprintln!("bench: phase 3: graceful shutdown, then replay of the same log");
    let t = Instant::now();
    rt.block_on(server.shutdown());
    let shutdown_time = t.elapsed();
    let t = Instant::now();
    let server = rt
        .block_on(Server::start(settings.config(data_dir.path()), |_, _| {}))
        .expect("restart the server on the same data dir");
    let replay_time = t.elapsed();
    let replayed = server.engine.recovery().events;
    let readable_after_replay = server.engine.readable().seq;
    rt.block_on(server.shutdown());
    drop(data_dir);
    eprintln!("bench: replayed {replayed} events in {replay_time:.2?}");

    eprintln!(
        "bench: phase 2: profile queries at {} q/s while ingesting at {} ev/s",
        settings.qps, settings.rate
    );
    let data_dir = settings.tempdir();
    let server = rt
        .block_on(Server::start(settings.config(data_dir.path()), |_, _| {}))
        .expect("start the server");
    let q = queries_while_ingesting(&server, &settings, &input);
    rt.block_on(server.shutdown());
    drop(data_dir);

    let report = Report {
        settings: &settings,
        input: &input,
        tput: &tput,
        rss_before,
        rss_after,
        log_bytes,
        shutdown_time,
        replay_time,
        replayed,
        readable_after_replay,
        q: &q,
    };
    report.print();
    eprintln!("bench: done in {:.1?}", started.elapsed());
}

// ---------------------------------------------------------------------------
// Settings and input

struct Settings {
    input: PathBuf,
    workers: usize,
    rate: u64,
    qps: u64,
    query_threads: u64,
    dir: Option<PathBuf>,
}

/// How `common::env_num` reports a value that does not parse.
fn bad_env(key: &str, v: &str) -> ! {
    eprintln!("bench: {key}={v:?} is not a valid number");
    std::process::exit(2)
}

impl Settings {
    fn from_env() -> Self {
        let input: PathBuf = std::env::var_os("SHOPSTREAM_BENCH_INPUT")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/tmp/w1m.ndjson".into());
        let settings = Settings {
            input,
            workers: env_num("SHOPSTREAM_BENCH_WORKERS", 2usize),
            rate: env_num("SHOPSTREAM_BENCH_RATE", 200_000u64).max(1),
            qps: env_num("SHOPSTREAM_BENCH_QPS", 2_000u64),
            query_threads: env_num("SHOPSTREAM_BENCH_QUERY_THREADS", 2u64).max(1),
            dir: std::env::var_os("SHOPSTREAM_BENCH_DIR").map(PathBuf::from),
        };
        settings.ensure_input();
        settings
    }

    /// Makes the default workload with `gen.py` when the input is missing.
    fn ensure_input(&self) {
        if self.input.exists() {
            return;
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/peers/gen.py");
        let prefix = self
            .input
            .to_str()
            .and_then(|s| s.strip_suffix(".ndjson"))
            .map(str::to_owned);
        let (true, Some(prefix)) = (script.exists(), prefix) else {
            eprintln!(
                "bench: the input {} does not exist. Make it with\n  python3 ../shared/peers/gen.py 1000000 /tmp/w1m\nor point SHOPSTREAM_BENCH_INPUT at an NDJSON file of Segment messages.",
                self.input.display()
            );
            std::process::exit(2);
        };
        eprintln!(
            "bench: {} is missing; running {} 1000000 {prefix} (a minute or so)",
            self.input.display(),
            script.display()
        );
        let status = std::process::Command::new("python3")
            .arg(&script)
            .arg("1000000")
            .arg(&prefix)
            .status();
        if !matches!(status, Ok(s) if s.success()) || !self.input.exists() {
            eprintln!("bench: gen.py failed ({status:?}); cannot make the input");
            std::process::exit(2);
        }
    }

    fn tempdir(&self) -> tempfile::TempDir {
        match &self.dir {
            Some(d) => tempfile::tempdir_in(d),
            None => tempfile::tempdir(),
        }
        .expect("create a temporary data directory")
    }

    fn config(&self, data_dir: &Path) -> Config {
        let mut cfg = Config::defaults();
        cfg.tcp_addr = "127.0.0.1:0".parse().expect("addr");
        cfg.http_addr = "127.0.0.1:0".parse().expect("addr");
        cfg.data_dir = data_dir.to_path_buf();
        cfg.workers = self.workers;
        // The built-in segments stay (defaults); the example segment file does not.
        cfg.segments_file = None;
        cfg
    }
}

/// A run of whole lines of the input file.
#[derive(Clone, Copy, Debug)]
struct Chunk {
    len: usize,
    /// Non-blank lines in this chunk and every chunk before it.
    lines_through: u64,
}

/// What one pass over the input tells: where to cut chunks, how many events and users.
struct Prepared {
    lines: u64,
    bytes: u64,
    users: usize,
    big: Vec<Chunk>,
    small: Vec<Chunk>,
}

/// Cuts consecutive lines into chunks of at most `limit` bytes (a longer line is a
/// chunk of its own).
struct Chunker {
    limit: usize,
    len: usize,
    chunks: Vec<Chunk>,
}

impl Chunker {
    fn new(limit: usize) -> Self {
        Chunker {
            limit,
            len: 0,
            chunks: Vec::new(),
        }
    }

    /// Adds a line of `n` bytes; `lines_before` counts the non-blank lines before it.
    fn push(&mut self, n: usize, lines_before: u64) {
        if self.len > 0 && self.len + n > self.limit {
            self.chunks.push(Chunk {
                len: self.len,
                lines_through: lines_before,
            });
            self.len = 0;
        }
        self.len += n;
    }

    fn finish(mut self, lines: u64) -> Vec<Chunk> {
        if self.len > 0 {
            self.chunks.push(Chunk {
                len: self.len,
                lines_through: lines,
            });
        }
        self.chunks
    }
}

#[derive(serde::Deserialize)]
struct Ids<'a> {
    #[serde(rename = "userId", borrow, default)]
    user_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "anonymousId", borrow, default)]
    anonymous_id: Option<std::borrow::Cow<'a, str>>,
}

impl Prepared {
    fn scan(path: &Path) -> Self {
        let file = std::fs::File::open(path)
            .unwrap_or_else(|e| panic!("open the input {}: {e}", path.display()));
        let mut rd = BufReader::with_capacity(4 << 20, file);
        let (mut big, mut small) = (Chunker::new(BIG_CHUNK), Chunker::new(SMALL_CHUNK));
        let mut users = HashSet::new();
        let (mut lines, mut bytes) = (0u64, 0u64);
        let mut line = Vec::with_capacity(4096);
        loop {
            line.clear();
            let n = rd.read_until(b'\n', &mut line).expect("read the input");
            if n == 0 {
                break;
            }
            big.push(n, lines);
            small.push(n, lines);
            bytes += n as u64;
            // The server skips blank lines without counting them in its acks.
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            lines += 1;
            if let Ok(ids) = serde_json::from_slice::<Ids>(&line) {
                let id = ids.user_id.or(ids.anonymous_id);
                if let Some(id) = id {
                    // A 64-bit hash is enough to count a few million ids.
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    id.hash(&mut h);
                    users.insert(h.finish());
                }
            }
        }
        if lines == 0 {
            eprintln!("bench: the input {} has no events", path.display());
            std::process::exit(2);
        }
        Prepared {
            lines,
            bytes,
            users: users.len(),
            big: big.finish(lines),
            small: small.finish(lines),
        }
    }
}

// ---------------------------------------------------------------------------
// Sending and acknowledgements

/// Writes `chunks` of the file to `stream`, optionally paced to `rate` events/s from
/// `start`, then shuts the writing half. Answers `(lines through, when the chunk's
/// last byte was handed to the kernel)` per chunk.
fn send_chunks(
    mut stream: TcpStream,
    path: &Path,
    chunks: &[Chunk],
    pace: Option<(Instant, u64)>,
) -> Vec<(u64, Instant)> {
    let mut file = std::fs::File::open(path).expect("open the input");
    let mut buf = vec![0u8; chunks.iter().map(|c| c.len).max().unwrap_or(0)];
    let mut sent = Vec::with_capacity(chunks.len());
    let mut lines_before = 0;
    for c in chunks {
        file.read_exact(&mut buf[..c.len]).expect("read the input");
        if let Some((start, rate)) = pace {
            let due = start + Duration::from_secs_f64(lines_before as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        stream.write_all(&buf[..c.len]).expect("send to the server");
        sent.push((c.lines_through, Instant::now()));
        lines_before = c.lines_through;
    }
    stream
        .shutdown(Shutdown::Write)
        .expect("shut the writing half");
    sent
}

/// Streams the chunks over one connection; answers what was sent and acked.
fn stream_file(
    addr: SocketAddr,
    path: &Path,
    chunks: &[Chunk],
    pace: Option<u64>,
) -> (Instant, Vec<(u64, Instant)>, AckLog) {
    let stream = TcpStream::connect(addr).expect("connect to the TCP ingest");
    stream.set_nodelay(true).ok();
    let reader = stream.try_clone().expect("clone the socket");
    let start = Instant::now();
    std::thread::scope(|s| {
        let acks = s.spawn(move || read_acks(reader));
        let sent = s.spawn(move || send_chunks(stream, path, chunks, pace.map(|r| (start, r))));
        let sent = sent.join().expect("sender thread");
        let acks = acks.join().expect("ack reader thread");
        (start, sent, acks)
    })
}

// ---------------------------------------------------------------------------
// Phase 1: durable throughput and ack latency

struct Throughput {
    last: Ack,
    ack: Duration,
    visible: Duration,
    ack_latency: Histogram<u64>,
    error_lines: u64,
    first_errors: Vec<String>,
}

fn throughput(server: &Server, path: &Path, input: &Prepared) -> Throughput {
    let (start, sent, acks) = stream_file(server.tcp_addr, path, &input.big, None);
    if let Some(f) = &acks.fatal {
        panic!("the server reported a fatal error: {f}");
    }
    let last_ack_at = acks.acks.last().map(|a| a.1).expect("no ack at all");
    wait_visible(&agent(), server.http_addr, acks.last.seq);
    let visible = start.elapsed();
    let ack_latency = ack_latencies(&sent, &acks.acks);
    Throughput {
        last: acks.last,
        ack: last_ack_at - start,
        visible,
        ack_latency,
        error_lines: acks.error_lines,
        first_errors: acks.first_errors,
    }
}

// ---------------------------------------------------------------------------
// Phase 2: queries while ingesting

struct Queries {
    ingest_last: Ack,
    ingest_time: Duration,
    visible_time: Duration,
    done: u64,
    ok_200: u64,
    ok_404: u64,
    errors: u64,
    first_error: Option<String>,
    /// From the intended send time.
    latency: Histogram<u64>,
    /// From the actual send time.
    service: Histogram<u64>,
    /// Queries sent more than 1 ms after their intended time.
    late: u64,
    query_window: Duration,
}

struct QueryThread {
    done: u64,
    ok_200: u64,
    ok_404: u64,
    errors: u64,
    late: u64,
    first_error: Option<String>,
    latency: Histogram<u64>,
    service: Histogram<u64>,
}

/// xorshift64*: the same draws on every run.
struct XorShift(u64);

impl XorShift {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `gen.py`'s user skew: `int(200000 * random() ** 2)`.
    fn user(&mut self) -> u64 {
        let r = self.next_f64();
        (GEN_USERS as f64 * r * r) as u64
    }
}

fn query_loop(
    http: SocketAddr,
    seed: u64,
    interval: Duration,
    start: Instant,
    stop: &AtomicBool,
) -> QueryThread {
    let agent = agent();
    let mut rng = XorShift(seed);
    let mut t = QueryThread {
        done: 0,
        ok_200: 0,
        ok_404: 0,
        errors: 0,
        late: 0,
        first_error: None,
        latency: micros_histogram(),
        service: micros_histogram(),
    };
    for i in 0u32.. {
        let intended = start + interval * i;
        if let Some(wait) = intended.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let url = format!("http://{http}/v1/users/u{}/profile", rng.user());
        let sent = Instant::now();
        if sent.duration_since(intended) > Duration::from_millis(1) {
            t.late += 1;
        }
        let outcome = match agent.get(&url).call() {
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                match resp.body_mut().read_to_vec() {
                    Ok(body) => Ok((status, body)),
                    Err(e) => Err(format!("GET {url}: reading the body: {e}")),
                }
            }
            Err(e) => Err(format!("GET {url}: {e}")),
        };
        let end = Instant::now();
        t.done += 1;
        t.latency
            .saturating_record(micros(end.saturating_duration_since(intended)));
        t.service.saturating_record(micros(end - sent));
        match outcome {
            Ok((200, _)) => t.ok_200 += 1,
            Ok((404, _)) => t.ok_404 += 1,
            Ok((status, body)) => {
                t.errors += 1;
                t.first_error.get_or_insert_with(|| {
                    format!("GET {url}: {status} {}", String::from_utf8_lossy(&body))
                });
            }
            Err(e) => {
                t.errors += 1;
                t.first_error.get_or_insert(e);
            }
        }
    }
    t
}

fn queries_while_ingesting(server: &Server, settings: &Settings, input: &Prepared) -> Queries {
    let threads = settings.query_threads;
    let stop = Arc::new(AtomicBool::new(false));
    let http = server.http_addr;
    let per_thread = (settings.qps as f64 / threads as f64).max(1e-3);
    let interval = Duration::from_secs_f64(1.0 / per_thread);
    let start = Instant::now();
    let query_threads: Vec<_> = (0..threads)
        .filter(|_| settings.qps > 0)
        .map(|k| {
            let stop = stop.clone();
            // Offset the threads' schedules: an even schedule overall.
            let start = start + interval * (k as u32) / threads as u32;
            std::thread::spawn(move || query_loop(http, 0x9e37_79b9 + k, interval, start, &stop))
        })
        .collect();
    let (ingest_start, _, acks) = stream_file(
        server.tcp_addr,
        &settings.input,
        &input.small,
        Some(settings.rate),
    );
    let ingest_time = acks
        .acks
        .last()
        .map(|a| a.1 - ingest_start)
        .expect("no ack at all");
    stop.store(true, Ordering::Relaxed);
    let query_window = start.elapsed();
    let mut q = Queries {
        ingest_last: acks.last,
        ingest_time,
        visible_time: Duration::ZERO,
        done: 0,
        ok_200: 0,
        ok_404: 0,
        errors: 0,
        first_error: None,
        latency: micros_histogram(),
        service: micros_histogram(),
        late: 0,
        query_window,
    };
    for h in query_threads {
        let t = h.join().expect("query thread");
        q.done += t.done;
        q.ok_200 += t.ok_200;
        q.ok_404 += t.ok_404;
        q.errors += t.errors;
        q.late += t.late;
        if q.first_error.is_none() {
            q.first_error = t.first_error;
        }
        q.latency.add(&t.latency).expect("same bounds");
        q.service.add(&t.service).expect("same bounds");
    }
    wait_visible(&agent(), http, acks.last.seq);
    q.visible_time = ingest_start.elapsed();
    q
}

// ---------------------------------------------------------------------------
// Measuring helpers

fn quantiles(h: &Histogram<u64>, qs: &[(&str, f64)]) -> Value {
    let mut m = serde_json::Map::new();
    for (name, q) in qs {
        m.insert((*name).to_owned(), json!(h.value_at_quantile(*q)));
    }
    m.insert("max".into(), json!(h.max()));
    m.insert("samples".into(), json!(h.len()));
    Value::Object(m)
}

const Q_ACK: &[(&str, f64)] = &[("p50", 0.5), ("p90", 0.9), ("p99", 0.99)];
const Q_QUERY: &[(&str, f64)] = &[("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)];

fn hist_row(h: &Histogram<u64>, qs: &[(&str, f64)]) -> String {
    let mut s = String::new();
    for (name, q) in qs {
        s += &format!("{name} {:>8}  ", h.value_at_quantile(*q));
    }
    s + &format!("max {:>8}  (n={})", h.max(), h.len())
}

// ---------------------------------------------------------------------------
// Report

struct Report<'a> {
    settings: &'a Settings,
    input: &'a Prepared,
    tput: &'a Throughput,
    rss_before: u64,
    rss_after: u64,
    log_bytes: u64,
    shutdown_time: Duration,
    replay_time: Duration,
    replayed: u64,
    readable_after_replay: u64,
    q: &'a Queries,
}

impl Report<'_> {
    fn print(&self) {
        let (s, i, t, q) = (self.settings, self.input, self.tput, self.q);
        let n = i.lines;
        let rss_delta = self.rss_after.saturating_sub(self.rss_before);
        let per_user = rss_delta as f64 / i.users.max(1) as f64;
        let ingest_events = q.ingest_last.accepted + q.ingest_last.rejected;
        println!();
        println!(
            "shopstream ingest bench: {} ({n} events, {:.1} MiB, {} users), workers {}, fsync always",
            s.input.display(),
            mib(i.bytes),
            i.users,
            s.workers
        );
        println!();
        println!("1. durable throughput, one TCP connection, 1 MiB chunks");
        println!(
            "   accepted {}  rejected {}  duplicates {}  last ack seq {}",
            t.last.accepted, t.last.rejected, t.last.duplicates, t.last.seq
        );
        println!(
            "   to final ack          {:>8.3} s  {:>10.0} events/s  {:>6.1} MiB/s",
            t.ack.as_secs_f64(),
            per_sec(n, t.ack),
            mib(i.bytes) / t.ack.as_secs_f64().max(1e-9)
        );
        println!(
            "   to visible in views   {:>8.3} s  {:>10.0} events/s",
            t.visible.as_secs_f64(),
            per_sec(n, t.visible)
        );
        println!(
            "   ack latency (µs)      {}",
            hist_row(&t.ack_latency, Q_ACK)
        );
        println!(
            "   resident memory       {:.1} MiB before the server, {:.1} MiB once all is visible: +{:.1} MiB",
            mib(self.rss_before),
            mib(self.rss_after),
            mib(rss_delta)
        );
        println!(
            "                         = {:.0} B per user = {:.1} MiB per 100k users ({} users)",
            per_user,
            per_user * 100_000.0 / (1024.0 * 1024.0),
            i.users
        );
        println!(
            "                         (the whole process: views, interned ids, the dedup horizon,"
        );
        println!(
            "                          log write buffers, allocator slack; not the views alone)"
        );
        println!("   log on disk           {:.1} MiB", mib(self.log_bytes));
        println!();
        println!(
            "2. profile queries while ingesting (open loop, {} threads, keep-alive HTTP)",
            s.query_threads
        );
        println!(
            "   ingest: target {} ev/s, achieved {:.0} ev/s to ack ({} events in {:.3} s; visible at {:.3} s)",
            s.rate,
            per_sec(ingest_events, q.ingest_time),
            ingest_events,
            q.ingest_time.as_secs_f64(),
            q.visible_time.as_secs_f64()
        );
        println!(
            "   queries: target {} q/s, {} done in {:.2} s = {:.0} q/s; 200: {}, 404: {}, errors: {}; sent >1 ms late: {}",
            s.qps,
            q.done,
            q.query_window.as_secs_f64(),
            per_sec(q.done, q.query_window),
            q.ok_200,
            q.ok_404,
            q.errors,
            q.late
        );
        println!(
            "   latency from intended send (µs)  {}",
            hist_row(&q.latency, Q_QUERY)
        );
        println!(
            "   service time (µs)                {}",
            hist_row(&q.service, Q_QUERY)
        );
        println!();
        println!("3. replay of the phase-1 log on restart (Server::start on the same data dir)");
        println!(
            "   graceful shutdown     {:>8.3} s",
            self.shutdown_time.as_secs_f64()
        );
        println!(
            "   replay                {:>8.3} s  {:>10.0} events/s  {:>6.1} MiB/s of log  ({} events, readable seq {})",
            self.replay_time.as_secs_f64(),
            per_sec(self.replayed, self.replay_time),
            mib(self.log_bytes) / self.replay_time.as_secs_f64().max(1e-9),
            self.replayed,
            self.readable_after_replay
        );
        println!();
        if t.error_lines > 0 {
            println!(
                "   phase 1: the server rejected {} lines; first: {:?}",
                t.error_lines, t.first_errors
            );
        }
        if t.last.accepted + t.last.rejected != n {
            println!(
                "   WARNING: phase 1 acked {} lines of {n}",
                t.last.accepted + t.last.rejected
            );
        }
        if self.replayed != t.last.accepted - t.last.duplicates {
            println!(
                "   WARNING: replayed {} events, but phase 1 logged {}",
                self.replayed,
                t.last.accepted - t.last.duplicates
            );
        }
        if let Some(e) = &q.first_error {
            println!("   phase 3: first query error: {e}");
        }
        let bench = json!({
            "input": s.input.display().to_string(),
            "events": n,
            "bytes": i.bytes,
            "users": i.users,
            "workers": s.workers,
            "fsync": "always",
            "throughput": {
                "accepted": t.last.accepted,
                "rejected": t.last.rejected,
                "duplicates": t.last.duplicates,
                "ack_seq": t.last.seq,
                "ack_s": t.ack.as_secs_f64(),
                "ack_events_per_s": per_sec(n, t.ack),
                "visible_s": t.visible.as_secs_f64(),
                "visible_events_per_s": per_sec(n, t.visible),
                "ack_latency_us": quantiles(&t.ack_latency, Q_ACK),
            },
            "memory": {
                "rss_before_bytes": self.rss_before,
                "rss_after_bytes": self.rss_after,
                "rss_growth_bytes": rss_delta,
                "bytes_per_user": per_user,
                "bytes_per_100k_users": per_user * 100_000.0,
                "log_bytes": self.log_bytes,
            },
            "replay": {
                "shutdown_s": self.shutdown_time.as_secs_f64(),
                "events": self.replayed,
                "replay_s": self.replay_time.as_secs_f64(),
                "events_per_s": per_sec(self.replayed, self.replay_time),
            },
            "query": {
                "target_ingest_events_per_s": s.rate,
                "achieved_ingest_events_per_s": per_sec(ingest_events, q.ingest_time),
                "ingest_events": ingest_events,
                "ingest_s": q.ingest_time.as_secs_f64(),
                "target_qps": s.qps,
                "query_threads": s.query_threads,
                "achieved_qps": per_sec(q.done, q.query_window),
                "queries": q.done,
                "ok_200": q.ok_200,
                "ok_404": q.ok_404,
                "errors": q.errors,
                "late_sends": q.late,
                "latency_us": quantiles(&q.latency, Q_QUERY),
                "service_us": quantiles(&q.service, Q_QUERY),
            },
        });
        println!("BENCH_JSON {bench}");
    }
}
