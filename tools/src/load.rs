//! `shopstream load`: an open-loop load driver against a running server.
//!
//! It streams the deterministic workload of [`crate::gen`] into the TCP ingest at a
//! target rate while it reads profiles over HTTP at a target rate, and reports what
//! a shop's clients would see: how fast events become durable (ack latency), how
//! fast they become readable (freshness), and how fast reads answer (query latency),
//! each as an HdrHistogram in microseconds.
//!
//! # Why open loop
//! A closed-loop driver (send, wait for the answer, send the next) slows down
//! exactly when the server does, so a stall delays the requests that would have
//! measured it and they are never sent: the stall hides itself (*coordinated
//! omission*; Gil Tene, "How NOT to Measure Latency"). Here every event and every
//! query has an **intended send time** on a fixed schedule, computed from the start
//! and the target rate, never from the answers; latency counts from that time. If
//! the server (or TCP backpressure, or this client) holds a send back, the wait is
//! part of the latency of everything it delayed. Sends never wait for acks: a
//! reader thread per connection consumes the answers.
//!
//! # What runs
//! * **Pacer** (one thread). Every 1 ms tick `k` (intended time `start + k ms`) it
//!   takes from the generator the events due by then (`rate · k ms`), writes them as
//!   NDJSON into one buffer per connection, routed by user id (`user mod
//!   connections`, so one user's events stay in order on one connection; each
//!   messageId shifted by `message_id_offset`, per run by default, because the
//!   generator numbers them `m1, m2, …` in every run and a server still holding
//!   them in its dedup horizon would count a rerun as duplicates), records
//!   a *mark* (lines through, intended time) per connection that got lines, and
//!   hands the buffers to the writers. A writer that is behind (backpressure) gets
//!   the next ticks' lines appended to its pending buffer; past
//!   [`MAX_PENDING_BYTES`] the pacer waits for it, and that wait is counted too. A
//!   late pacer catches up tick by tick, each tick keeping its own intended time.
//! * **Writers** (one per connection) write the buffers to the socket.
//! * **Readers** (one per connection) read the answer lines. The server acks per
//!   batch it read, with cumulative counts (see [`shopstream::ingest::connection`]); an ack
//!   covers a mark once its `accepted + rejected` reaches the mark's lines.
//! * **Queries**: a query pacer thread puts `GET /v1/users/u{N}/profile` on a queue
//!   at its intended time, `qps` per second on an even schedule (`N = users · r²`
//!   with `r` uniform in `[0, 1)`, the generator's user skew); `query_connections`
//!   keep-alive HTTP/1.1 connections (hyper), all on one current-thread tokio
//!   runtime, take queries off the queue as they come free. One client thread for
//!   all of them keeps the driver's CPU (and its context switches, which are dear
//!   on a small VM) off the server's cores: an earlier thread-per-connection
//!   driver could not offer 20,000 q/s on 2 cores.
//! * **Freshness prober** (one thread), about every 10 ms, see below.
//!
//! The run ends at `duration`, or earlier when the generator's `events` are all
//! sent. Then the writers send what is still pending and shut their writing half;
//! the server acks the rest and closes; the readers drain the answers, for at most
//! `drain_timeout`. Every loop is bounded by these deadlines, and all traffic goes
//! to the two given addresses.
//!
//! # What is measured
//! * **Ack latency**, per mark (a tick's lines on one connection): from the tick's
//!   intended send time to the arrival of the first ack that covers its last line.
//!   That is: wait in the client, network, parsing, the log's group commit and
//!   fsync, and the way back.
//! * **Freshness**: how long after an event was due to be sent a client holding its
//!   ack can read it. About every 10 ms the prober waits for the next ack that
//!   raises the highest sequence number acked on any connection (seq `S`; the tick
//!   holding that ack's last line was due at intended time `T`; the ack arrived at
//!   `A`) and at once asks `GET /v1/users/_/profile?min_seq=S`. The server answers
//!   once its views include `S` (200 or 404 both mean visible; 504 means it waited
//!   its `min_seq` timeout, and the prober asks again). It records `now − T` as
//!   `freshness` and `now − A` as `visible_after_ack`. So freshness is durable ack
//!   *plus* visibility as one client sees it: the send, the group commit, the ack's
//!   way back, then one HTTP round trip in which the server waits for its views to
//!   reach `S`. It is an upper bound on "send to visible" by about one round trip:
//!   the views may have included `S` before the ack arrived (then
//!   `visible_after_ack` is just the round trip). `T` is exact to the tick when
//!   the batch ends in an accepted new event; when it ends in rejected or
//!   duplicate lines, event `S` was due up to a few ticks earlier.
//! * **Query latency** from the intended send time (`latency_us`), and service
//!   time from the actual send (`service_us`); a connection has one query in
//!   flight, so when every connection is busy, queries wait in the client, and that
//!   wait counts in `latency_us` (and in `late`).
//! * **Send lag**: per buffer written, from the intended time of its first tick to
//!   the end of the write. Large values mean the client or TCP backpressure held the
//!   events back; ack latency includes it.
//!
//! # The report ([`LoadReport`], `--json`)
//! One JSON object, in microseconds unless the name says otherwise. Each latency
//! (`*_us`) is `{"samples", "p50", "p90", "p99", "p999", "max", "mean"}`.
//! * `settings`: `ingest`, `http`, `target_rate`, `connections`, `target_qps`,
//!   `query_connections`, `duration_s`, `max_events`, `seed`, `users`,
//!   `message_id_offset`.
//! * `elapsed_s`: the whole run, drain included.
//! * `ingest`: `generated` (events the generator produced and the pacer routed),
//!   `sent` (lines written to the sockets), `acked` (= the server's `accepted`,
//!   durable; duplicates included), `rejected`, `duplicates`, `unacked` (`sent −
//!   acked − rejected` at the end: 0 unless the drain timed out or a connection
//!   failed), `max_ack_seq`, `send_s` (start to the last write), `ack_s` (start to
//!   the last ack), `achieved_rate` (`(acked + rejected) / ack_s`), `marks_unacked`,
//!   `error_lines`, `first_errors` (the first error lines, as the server wrote them),
//!   `failures` (fatal lines, I/O errors, a drain that timed out), `ack_latency_us`,
//!   `send_lag_us`.
//! * `freshness`: `samples`, `timeouts` (504s, asked again), `errors`,
//!   `first_errors`, `freshness_us`, `visible_after_ack_us`.
//! * `queries`: `done`, `ok_200`, `ok_404`, `errors`, `first_errors` (status and
//!   body), `late` (sent more than 1 ms after the intended time), `window_s`,
//!   `achieved_qps`, `latency_us`, `service_us`.

use std::collections::VecDeque;
use std::fmt;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::gen::{write_json, GenOptions, Rng, Workload};

/// The pacer's tick: lines due within one tick go out together.
pub const TICK: Duration = Duration::from_millis(1);
/// How often the freshness prober samples the newest ack.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(10);
/// Buffers waiting for one connection's writer before the pacer appends to a
/// pending buffer instead.
const WRITER_QUEUE: usize = 16;
/// A connection's pending buffer beyond which the pacer waits for its writer.
pub const MAX_PENDING_BYTES: usize = 16 << 20;
/// How many error lines or bodies a report keeps, per kind.
const KEEP_ERRORS: usize = 5;
/// Socket timeouts: how often blocked I/O wakes up to check the deadlines.
const POLL: Duration = Duration::from_millis(100);

/// Errors that stop a load run before it measures anything.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("invalid setting: {0}")]
    Invalid(String),
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("the {0} thread panicked")]
    Panicked(&'static str),
}

/// The command line of `shopstream load`.
#[derive(Clone, Debug, clap::Args)]
#[command(mut_arg("events", |a| a
    .default_value("1000000000")
    .help("Most events to send; the run also ends at --duration")))]
pub struct LoadArgs {
    /// TCP ingest address of the server (NDJSON).
    #[arg(long, default_value = "127.0.0.1:7400")]
    pub ingest: SocketAddr,
    /// HTTP address of the server (queries).
    #[arg(long, default_value = "127.0.0.1:7401")]
    pub http: SocketAddr,
    /// Target events per second, over all connections.
    #[arg(long, default_value_t = 100_000)]
    pub rate: u64,
    /// TCP ingest connections; a user's events all go over one of them.
    #[arg(long, default_value_t = 2)]
    pub connections: usize,
    /// Target queries per second, over all query connections (0: none).
    #[arg(long, default_value_t = 1000)]
    pub qps: u64,
    /// Keep-alive HTTP connections for the queries (all on one client thread); a
    /// query waits for a free one, and the wait counts in its latency.
    #[arg(long, default_value_t = 32, alias = "query-threads")]
    pub query_connections: usize,
    /// What the queries read: a user's profile (`GET /v1/users/u{N}/profile`, users
    /// skewed as the generator's), an item's similar items (`GET
    /// /v1/items/i{N}/similar`, items skewed towards the popular ones), a user's
    /// recommendations (`GET /v1/users/u{N}/recommendations`) or the popular items
    /// of the week (`GET /v1/items/popular`).
    #[arg(long, value_enum, default_value_t = QueryKind::Profile)]
    pub query: QueryKind,
    /// Seconds to send for.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds to wait for the last acks after sending stops.
    #[arg(long, default_value_t = 30.0)]
    pub drain_timeout: f64,
    /// Added to every generated messageId number (`m{id}`). By default a per-run
    /// value from the clock, so a second run against the same server is not
    /// answered as duplicates of the first; 0 sends the generator's ids as they are.
    #[arg(long)]
    pub message_id_offset: Option<u64>,
    /// API token (when the server has access control on): sent as the first line
    /// of each ingest connection and as `Authorization: Bearer` of each query.
    #[arg(long, env = "SHOPSTREAM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(flatten)]
    pub gen: GenOptions,
}

impl LoadArgs {
    /// The validated options; `progress` draws a live line on stderr.
    pub fn options(&self, progress: bool) -> Result<LoadOptions, LoadError> {
        let secs = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 && v <= 7.0 * 86_400.0 {
                Ok(Duration::from_secs_f64(v))
            } else {
                Err(LoadError::Invalid(format!(
                    "--{name}: expected seconds in (0, 604800], got {v}"
                )))
            }
        };
        let o = LoadOptions {
            ingest: self.ingest,
            http: self.http,
            rate: self.rate,
            connections: self.connections,
            qps: self.qps,
            query_connections: self.query_connections,
            query: self.query,
            duration: secs("duration", self.duration)?,
            drain_timeout: secs("drain-timeout", self.drain_timeout)?,
            gen: self.gen.clone(),
            message_id_offset: self.message_id_offset.unwrap_or_else(run_id_offset),
            token: self.token.clone(),
            progress,
        };
        o.check()?;
        Ok(o)
    }
}

/// What the query side reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueryKind {
    Profile,
    Similar,
    Recommend,
    Popular,
}

/// What [`run`] does.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub ingest: SocketAddr,
    pub http: SocketAddr,
    /// Target events per second over all connections (0: send nothing).
    pub rate: u64,
    pub connections: usize,
    /// Target queries per second over all query connections (0: no queries).
    pub qps: u64,
    pub query_connections: usize,
    pub query: QueryKind,
    /// How long to send.
    pub duration: Duration,
    /// How long to wait for the last acks once sending stops.
    pub drain_timeout: Duration,
    /// The workload; `events` is the most to send.
    pub gen: GenOptions,
    /// Added to every messageId number, to tell runs apart (see [`run_id_offset`]).
    pub message_id_offset: u64,
    /// API token for both sides, when the server has access control on.
    pub token: Option<String>,
    /// Draw a live progress line on stderr.
    pub progress: bool,
}

impl LoadOptions {
    /// The defaults of the CLI against these addresses.
    pub fn new(ingest: SocketAddr, http: SocketAddr) -> Self {
        LoadOptions {
            ingest,
            http,
            rate: 100_000,
            connections: 2,
            qps: 1000,
            query_connections: 32,
            query: QueryKind::Profile,
            duration: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
            gen: GenOptions {
                events: 1_000_000_000,
                ..GenOptions::default()
            },
            message_id_offset: run_id_offset(),
            token: None,
            progress: false,
        }
    }

    fn check(&self) -> Result<(), LoadError> {
        let bad = |m: String| Err(LoadError::Invalid(m));
        if !(1..=1024).contains(&self.connections) {
            return bad(format!(
                "connections: expected 1 to 1024, got {}",
                self.connections
            ));
        }
        if self.qps > 0 && !(1..=1024).contains(&self.query_connections) {
            return bad(format!(
                "query connections: expected 1 to 1024, got {}",
                self.query_connections
            ));
        }
        if self.rate > 100_000_000 {
            return bad(format!(
                "rate: at most 100000000 events/s, got {}",
                self.rate
            ));
        }
        if self.qps > 10_000_000 {
            return bad(format!("qps: at most 10000000, got {}", self.qps));
        }
        if self.duration.is_zero() || self.drain_timeout.is_zero() {
            return bad("duration and drain timeout must be positive".into());
        }
        if self.gen.users == 0 {
            return bad("users: must be at least 1".into());
        }
        Ok(())
    }
}

/// A messageId offset for one run: 20 random bits (from the clock's nanoseconds
/// and the process id) times 2^40, so two runs share ids with a chance of about one
/// in a million, while a run's own deliberate duplicates (the same message twice)
/// stay duplicates. Ids stay below 2^60, which the generator writes as an `i64`.
pub fn run_id_offset() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut rng = Rng::new(nanos ^ u64::from(std::process::id()).rotate_left(32));
    (rng.next_u64() >> 44) << 40
}

/// Quantiles of one latency histogram, in microseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    pub samples: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            samples: h.len(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

fn profile_queries() -> QueryKind {
    QueryKind::Profile
}

/// The settings a report was measured with.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Settings {
    pub ingest: String,
    pub http: String,
    pub target_rate: u64,
    pub connections: usize,
    pub target_qps: u64,
    pub query_connections: usize,
    /// What the queries read.
    #[serde(default = "profile_queries")]
    pub query: QueryKind,
    pub duration_s: f64,
    pub max_events: u64,
    pub seed: u64,
    pub users: u64,
    pub message_id_offset: u64,
}

/// The ingest side of a report.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct IngestReport {
    pub generated: u64,
    pub sent: u64,
    pub acked: u64,
    pub rejected: u64,
    pub duplicates: u64,
    pub unacked: u64,
    pub max_ack_seq: u64,
    pub send_s: f64,
    pub ack_s: f64,
    pub achieved_rate: f64,
    pub marks_unacked: u64,
    pub error_lines: u64,
    pub first_errors: Vec<String>,
    pub failures: Vec<String>,
    pub ack_latency_us: Latency,
    pub send_lag_us: Latency,
}

/// The freshness prober's part of a report.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FreshnessReport {
    pub samples: u64,
    pub timeouts: u64,
    pub errors: u64,
    pub first_errors: Vec<String>,
    pub freshness_us: Latency,
    pub visible_after_ack_us: Latency,
}

/// The query side of a report.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct QueryReport {
    pub done: u64,
    pub ok_200: u64,
    pub ok_404: u64,
    pub errors: u64,
    pub first_errors: Vec<String>,
    pub late: u64,
    pub window_s: f64,
    pub achieved_qps: f64,
    pub latency_us: Latency,
    pub service_us: Latency,
}

/// What a load run measured (field meanings: the module doc).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoadReport {
    pub settings: Settings,
    pub elapsed_s: f64,
    pub ingest: IngestReport,
    pub freshness: FreshnessReport,
    pub queries: QueryReport,
}

// ---------------------------------------------------------------------------
// Shared state

fn micros_histogram() -> Histogram<u64> {
    // 1 µs to 1 h, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds")
}

fn micros(d: Duration) -> u64 {
    d.as_micros().clamp(1, 3_600_000_000) as u64
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking thread is reported by its join; its data is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn keep(list: &mut Vec<String>, s: impl FnOnce() -> String) {
    if list.len() < KEEP_ERRORS {
        list.push(s());
    }
}

/// Counts a GET that did not answer as expected, keeping the first few descriptions.
fn record_failure(
    errors: &mut u64,
    first_errors: &mut Vec<String>,
    url: &str,
    outcome: Result<(u16, Vec<u8>), String>,
) {
    *errors += 1;
    keep(first_errors, || match outcome {
        Ok((status, body)) => format!("GET {url}: {status} {}", String::from_utf8_lossy(&body)),
        Err(e) => e,
    });
}

/// A tick's lines on one connection: acked once the connection's count reaches
/// `through`.
#[derive(Clone, Copy, Debug)]
struct Mark {
    through: u64,
    intended: Instant,
}

/// The newest ack seen on any connection, for the freshness prober.
#[derive(Clone, Copy, Debug)]
struct AckPoint {
    seq: u64,
    intended: Instant,
    received: Instant,
}

#[derive(Default)]
struct IngestStats {
    acked: u64,
    rejected: u64,
    duplicates: u64,
    max_seq: u64,
    last_ack: Option<Instant>,
    last_write: Option<Instant>,
    sent: u64,
    error_lines: u64,
    first_errors: Vec<String>,
    failures: Vec<String>,
    marks_unacked: u64,
}

struct Stats {
    ingest: Mutex<IngestStats>,
    ack_latency: Mutex<Histogram<u64>>,
    send_lag: Mutex<Histogram<u64>>,
    freshness: Mutex<(FreshnessReport, Histogram<u64>, Histogram<u64>)>,
    queries: Mutex<(QueryReport, Histogram<u64>, Histogram<u64>)>,
}

/// What the threads of one run share.
struct Shared {
    start: Instant,
    /// The end of sending: `start + duration`.
    deadline: Instant,
    /// Set when sending has stopped (deadline, or the workload is exhausted).
    stop: AtomicBool,
    /// Set when every reader has finished.
    ingest_done: AtomicBool,
    /// When the drain gives up: set once sending stops.
    drain_deadline: Mutex<Option<Instant>>,
    /// The pacer's own hard limit (it cannot see `drain_deadline`).
    hard_deadline: Instant,
    generated: AtomicU64,
    /// Lines answered (accepted + rejected), all connections.
    answered: AtomicU64,
    latest: Mutex<Option<AckPoint>>,
    /// Signalled when `latest` moves.
    new_ack: Condvar,
    stats: Stats,
    /// `Authorization` of every HTTP request, when a token was given.
    authorization: Option<String>,
}

impl Shared {
    fn drain_expired(&self) -> bool {
        lock(&self.drain_deadline).is_some_and(|d| Instant::now() >= d)
    }
}

/// Sleeps until `t`, in slices, returning false early when `stop` is set.
fn sleep_until(t: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= t {
            return true;
        }
        std::thread::sleep((t - now).min(Duration::from_millis(50)));
    }
}

// ---------------------------------------------------------------------------
// Ingest: pacer, writers, readers

/// Bytes for one writer, and which lines and intended times they carry.
struct Chunk {
    bytes: Vec<u8>,
    lines: u64,
    first_intended: Instant,
}

/// A connection's lines not yet handed to its writer.
struct Outbox {
    tx: flume::Sender<Chunk>,
    pending: Option<Chunk>,
    lines: u64,
    marks: std::sync::Arc<Mutex<VecDeque<Mark>>>,
}

impl Outbox {
    /// Hands the pending buffer over; waits only past [`MAX_PENDING_BYTES`] (or
    /// with `force`), bounded by `until`.
    fn flush(&mut self, force: bool, until: Instant) {
        let Some(chunk) = self.pending.take() else {
            return;
        };
        match self.tx.try_send(chunk) {
            Ok(()) => {}
            Err(flume::TrySendError::Disconnected(_)) => {}
            Err(flume::TrySendError::Full(mut chunk)) => {
                if !force && chunk.bytes.len() < MAX_PENDING_BYTES {
                    self.pending = Some(chunk);
                    return;
                }
                loop {
                    match self.tx.send_timeout(chunk, POLL) {
                        Ok(()) | Err(flume::SendTimeoutError::Disconnected(_)) => return,
                        Err(flume::SendTimeoutError::Timeout(c)) => {
                            if Instant::now() >= until {
                                // Dropped: these lines are generated but never sent.
                                return;
                            }
                            chunk = c;
                        }
                    }
                }
            }
        }
    }
}

/// Generates and routes the events due at each tick until the deadline or the end
/// of the workload.
fn pace(shared: &Shared, opts: &LoadOptions, mut outboxes: Vec<Outbox>) {
    let mut work = Workload::new(opts.gen.clone());
    let n = outboxes.len() as u64;
    let tick_ns = TICK.as_nanos();
    let total = shared.deadline - shared.start;
    let last_tick = total.as_nanos().div_ceil(tick_ns) as u64;
    let mut generated = 0u64;
    let mut k = 0u64;
    let mut touched = vec![false; outboxes.len()];
    if opts.rate == 0 {
        // Queries only: keep the run going for its duration.
        while Instant::now() < shared.deadline {
            std::thread::sleep((shared.deadline - Instant::now()).min(Duration::from_millis(50)));
        }
        return;
    }
    let mut exhausted = false;
    while !exhausted && k < last_tick {
        let due_tick = ((Instant::now() - shared.start).as_nanos() / tick_ns) as u64;
        let due_tick = due_tick.min(last_tick);
        if due_tick <= k {
            std::thread::sleep(
                (shared.start + TICK * (k + 1) as u32).saturating_duration_since(Instant::now()),
            );
            continue;
        }
        // Catch up tick by tick (each keeps its own intended time), a bounded
        // number per round so the buffers go out regularly.
        let round_end = due_tick.min(k + 100);
        while k < round_end && !exhausted {
            k += 1;
            let intended = shared.start + Duration::from_nanos((k as u128 * tick_ns) as u64);
            let due_events = (opts.rate as u128 * k as u128 * tick_ns / 1_000_000_000) as u64;
            while generated < due_events {
                let Some(mut m) = work.next() else {
                    exhausted = true;
                    break;
                };
                m.id += opts.message_id_offset;
                generated += 1;
                let c = (m.user % n) as usize;
                let o = &mut outboxes[c];
                let chunk = o.pending.get_or_insert_with(|| Chunk {
                    bytes: Vec::with_capacity(64 << 10),
                    lines: 0,
                    first_intended: intended,
                });
                write_json(&mut chunk.bytes, &m);
                chunk.lines += 1;
                o.lines += 1;
                touched[c] = true;
            }
            for (c, t) in touched.iter_mut().enumerate() {
                if std::mem::take(t) {
                    let o = &outboxes[c];
                    lock(&o.marks).push_back(Mark {
                        through: o.lines,
                        intended,
                    });
                }
            }
        }
        shared.generated.store(generated, Ordering::Relaxed);
        for o in &mut outboxes {
            o.flush(false, shared.hard_deadline);
        }
    }
    for o in &mut outboxes {
        o.flush(true, shared.hard_deadline);
    }
    shared.generated.store(generated, Ordering::Relaxed);
}

/// Writes the chunks to the socket, then shuts its writing half.
fn write_chunks(shared: &Shared, mut stream: TcpStream, rx: flume::Receiver<Chunk>) {
    let mut failed = false;
    let mut lag = micros_histogram();
    let mut sent = 0u64;
    let mut last_write = None;
    'chunks: while let Ok(chunk) = rx.recv() {
        if failed {
            continue; // keep the pacer from waiting on a dead connection
        }
        let mut off = 0;
        while off < chunk.bytes.len() {
            match stream.write(&chunk.bytes[off..]) {
                Ok(0) => {
                    failed = true;
                    fail(
                        shared,
                        "ingest write: the server closed the connection".into(),
                    );
                    continue 'chunks;
                }
                Ok(n) => off += n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if shared.drain_expired() {
                        failed = true;
                        fail(shared, "ingest write: gave up at the drain timeout".into());
                        continue 'chunks;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    failed = true;
                    fail(shared, format!("ingest write: {e}"));
                    continue 'chunks;
                }
            }
        }
        let now = Instant::now();
        lag.saturating_record(micros(now.saturating_duration_since(chunk.first_intended)));
        sent += chunk.lines;
        last_write = Some(now);
        if lag.len().is_multiple_of(64) {
            flush_writer_stats(shared, &mut lag, &mut sent, last_write);
        }
    }
    flush_writer_stats(shared, &mut lag, &mut sent, last_write);
    let _ = stream.shutdown(Shutdown::Write);
}

fn flush_writer_stats(
    shared: &Shared,
    lag: &mut Histogram<u64>,
    sent: &mut u64,
    last_write: Option<Instant>,
) {
    lock(&shared.stats.send_lag)
        .add(&*lag)
        .expect("same bounds");
    lag.reset();
    let mut s = lock(&shared.stats.ingest);
    s.sent += std::mem::take(sent);
    s.last_write = s.last_write.max(last_write);
}

fn fail(shared: &Shared, what: String) {
    let mut s = lock(&shared.stats.ingest);
    keep(&mut s.failures, || what);
}

/// One answer line of the TCP ingest.
#[derive(Deserialize)]
struct Answer {
    ack: Option<u64>,
    #[serde(default)]
    accepted: u64,
    #[serde(default)]
    rejected: u64,
    #[serde(default)]
    duplicates: u64,
    #[serde(default)]
    fatal: bool,
}

/// Reads a connection's answers until the server closes it (or the drain gives
/// up), matching acks to marks.
fn read_answers(shared: &Shared, stream: TcpStream, marks: &Mutex<VecDeque<Mark>>) {
    let mut reader = BufReader::with_capacity(64 << 10, stream);
    let mut line = Vec::with_capacity(256);
    let (mut seq, mut answered) = (0u64, 0u64);
    let mut last: Option<Mark> = None;
    let mut latencies = Vec::new();
    let mut totals = (0u64, 0u64, 0u64);
    let mut last_ack = None;
    loop {
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) if line.last() != Some(&b'\n') => break, // closed mid-line
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                // `line` keeps a partial line across timeouts.
                if shared.drain_expired() {
                    fail(
                        shared,
                        "ingest: the drain timed out before the last ack".into(),
                    );
                    break;
                }
                continue;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                fail(shared, format!("ingest read: {e}"));
                break;
            }
        }
        let received = Instant::now();
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let answer: Option<Answer> = serde_json::from_slice(text).ok();
        match answer {
            Some(a) if a.ack.is_some() => {
                let now_answered = a.accepted + a.rejected;
                // Marks this ack covers; `point` is the tick holding its last line.
                let mut point = None;
                {
                    let mut q = lock(marks);
                    while let Some(m) = q.front().copied() {
                        if m.through > now_answered {
                            if last.is_none_or(|l| l.through < now_answered) {
                                point = Some(m.intended);
                            }
                            break;
                        }
                        q.pop_front();
                        latencies.push(micros(received.saturating_duration_since(m.intended)));
                        last = Some(m);
                    }
                }
                let point = point.or(last.map(|l| l.intended));
                {
                    let mut h = lock(&shared.stats.ack_latency);
                    for l in latencies.drain(..) {
                        h.saturating_record(l);
                    }
                }
                let new_seq = a.ack.unwrap_or(0);
                shared
                    .answered
                    .fetch_add(now_answered.saturating_sub(answered), Ordering::Relaxed);
                if now_answered > answered {
                    last_ack = Some(received);
                }
                answered = answered.max(now_answered);
                totals = (a.accepted, a.rejected, a.duplicates);
                if new_seq > seq {
                    seq = new_seq;
                    if let Some(intended) = point {
                        let mut l = lock(&shared.latest);
                        if l.is_none_or(|p| p.seq < seq) {
                            *l = Some(AckPoint {
                                seq,
                                intended,
                                received,
                            });
                            shared.new_ack.notify_all();
                        }
                    }
                }
            }
            Some(a) if a.fatal => {
                fail(shared, format!("ingest: {}", String::from_utf8_lossy(text)));
            }
            _ => {
                let mut s = lock(&shared.stats.ingest);
                s.error_lines += 1;
                keep(&mut s.first_errors, || {
                    String::from_utf8_lossy(text).into_owned()
                });
            }
        }
        line.clear();
    }
    let left = lock(marks).len() as u64;
    let mut s = lock(&shared.stats.ingest);
    s.marks_unacked += left;
    s.acked += totals.0;
    s.rejected += totals.1;
    s.duplicates += totals.2;
    s.max_seq = s.max_seq.max(seq);
    s.last_ack = s.last_ack.max(last_ack);
}

// ---------------------------------------------------------------------------
// Queries and freshness

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

/// GETs `url`: (status, body), or the transport error.
fn get(agent: &ureq::Agent, url: &str, auth: Option<&str>) -> Result<(u16, Vec<u8>), String> {
    let mut request = agent.get(url);
    if let Some(auth) = auth {
        request = request.header("authorization", auth);
    }
    match request.call() {
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            resp.body_mut()
                .read_to_vec()
                .map(|body| (status, body))
                .map_err(|e| format!("GET {url}: reading the body: {e}"))
        }
        Err(e) => Err(format!("GET {url}: {e}")),
    }
}

/// A query due at `intended`, for user `u{key}` (or item `i{key}`).
#[derive(Clone, Copy, Debug)]
struct Due {
    intended: Instant,
    key: u64,
}

/// The query side: a pacer thread puts each query on a queue at its intended time;
/// `query_connections` keep-alive HTTP/1.1 connections, all driven by one
/// current-thread tokio runtime (so a thousand connections cost one thread), take
/// them as they come free. A query nobody is free for waits on the queue, and the
/// wait counts in its latency.
fn query_side(shared: &Shared, opts: &LoadOptions, start: Instant) {
    let (tx, rx) = flume::unbounded::<Due>();
    std::thread::scope(|s| {
        s.spawn(move || pace_queries(shared, opts, start, tx));
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let mut q = lock(&shared.stats.queries);
                let r = &mut q.0;
                record_failure(
                    &mut r.errors,
                    &mut r.first_errors,
                    "the query runtime",
                    Err(e.to_string()),
                );
                return;
            }
        };
        let connections: Vec<_> = (0..opts.query_connections)
            .map(|_| query_connection(shared, opts.http, opts.query, rx.clone()))
            .collect();
        // Once every connection has failed, the pacer's sends fail and it stops.
        drop(rx);
        rt.block_on(futures_util::future::join_all(connections));
    });
}

/// Puts each query on the queue at its intended time (`start + n / qps`), until
/// sending stops. Sleeps until the next one is due, and sends all that are due
/// when it wakes, each with its own intended time.
fn pace_queries(shared: &Shared, opts: &LoadOptions, start: Instant, tx: flume::Sender<Due>) {
    let mut rng = Rng::new(opts.gen.seed ^ 0x5eed_0000_0000_0000);
    let interval = Duration::from_secs_f64(1.0 / opts.qps as f64);
    let mut n = 0u32;
    loop {
        let intended = start + interval * n;
        if intended >= shared.deadline || !sleep_until(intended, &shared.stop) {
            return;
        }
        n = n.saturating_add(1);
        let key = match opts.query {
            QueryKind::Profile | QueryKind::Recommend => rng.skewed(opts.gen.users, 2.0),
            QueryKind::Popular => 0,
            QueryKind::Similar => rng.skewed(opts.gen.items, 3.0),
        };
        if tx.send(Due { intended, key }).is_err() {
            return;
        }
    }
}

/// One keep-alive connection: takes due queries off the queue until the pacer ends.
async fn query_connection(
    shared: &Shared,
    http: SocketAddr,
    query: QueryKind,
    rx: flume::Receiver<Due>,
) {
    let fail = |what: String| {
        let mut q = lock(&shared.stats.queries);
        let r = &mut q.0;
        record_failure(
            &mut r.errors,
            &mut r.first_errors,
            "a query connection",
            Err(what),
        );
    };
    let stream = match tokio::net::TcpStream::connect(http).await {
        Ok(s) => s,
        Err(e) => return fail(format!("connecting to {http}: {e}")),
    };
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) =
        match hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await {
            Ok(pair) => pair,
            Err(e) => return fail(format!("HTTP handshake with {http}: {e}")),
        };
    let requests = async move {
        let host = http.to_string();
        while let Ok(due) = rx.recv_async().await {
            let path = match query {
                QueryKind::Profile => format!("/v1/users/u{}/profile", due.key),
                QueryKind::Similar => format!("/v1/items/i{}/similar", due.key),
                QueryKind::Recommend => format!("/v1/users/u{}/recommendations", due.key),
                QueryKind::Popular => "/v1/items/popular".to_owned(),
            };
            let sent = Instant::now();
            let outcome = ask(&mut sender, &host, &path, shared.authorization.as_deref()).await;
            let end = Instant::now();
            let mut q = lock(&shared.stats.queries);
            let (r, latency, service) = &mut *q;
            r.done += 1;
            if sent.duration_since(due.intended) > Duration::from_millis(1) {
                r.late += 1;
            }
            latency.saturating_record(micros(end.saturating_duration_since(due.intended)));
            service.saturating_record(micros(end - sent));
            match outcome {
                Ok((200, _)) => r.ok_200 += 1,
                Ok((404, _)) => r.ok_404 += 1,
                Ok(answer) => record_failure(&mut r.errors, &mut r.first_errors, &path, Ok(answer)),
                Err(e) => {
                    record_failure(&mut r.errors, &mut r.first_errors, &path, Err(e));
                    // The connection is gone; the other connections take the rest.
                    return;
                }
            }
        }
    };
    // The connection future drives the socket; it ends once `sender` is dropped.
    let _ = futures_util::future::join(requests, conn).await;
}

/// One GET on a keep-alive connection: (status, body).
async fn ask(
    sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    host: &str,
    path: &str,
    auth: Option<&str>,
) -> Result<(u16, Vec<u8>), String> {
    use http_body_util::BodyExt;
    sender
        .ready()
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    let mut request = hyper::Request::get(path).header(hyper::header::HOST, host);
    if let Some(auth) = auth {
        request = request.header(hyper::header::AUTHORIZATION, auth);
    }
    let request = request
        .body(http_body_util::Empty::new())
        .map_err(|e| format!("GET {path}: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("GET {path}: reading the body: {e}"))?;
    Ok((status, body.to_bytes().to_vec()))
}

/// About every [`PROBE_INTERVAL`], waits for the next ack, then asks with
/// `min_seq` until it is visible; after the ingest is done, probes the final ack
/// once more and ends.
fn probe(shared: &Shared, opts: &LoadOptions) {
    // Longer than the server's min_seq timeout (5 s by default): a 504 is an answer.
    let agent = agent(Duration::from_secs(30));
    let mut probed = 0u64;
    let mut next = shared.start + PROBE_INTERVAL;
    let finished = || shared.ingest_done.load(Ordering::Acquire) || shared.drain_expired();
    loop {
        while !finished() && Instant::now() < next {
            std::thread::sleep((next - Instant::now()).min(Duration::from_millis(50)));
        }
        // Wait for an ack newer than the newest now, so the sample starts the
        // moment an ack arrives (no sampling delay in `visible_after_ack`).
        let point = {
            let mut l = lock(&shared.latest);
            let seen = l.map_or(0, |p| p.seq);
            loop {
                if finished() {
                    break l.filter(|p| p.seq > probed);
                }
                if let Some(p) = l.filter(|p| p.seq > seen) {
                    break Some(p);
                }
                l = shared
                    .new_ack
                    .wait_timeout(l, Duration::from_millis(50))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        };
        if let Some(p) = point {
            probed = p.seq;
            probe_one(shared, &agent, opts.http, p);
        }
        if finished() {
            return;
        }
        // A slow probe skips the samples it overlapped.
        next = (next + PROBE_INTERVAL).max(Instant::now());
    }
}

/// Asks until `p` is visible (a 504 asks again) and records the sample.
fn probe_one(shared: &Shared, agent: &ureq::Agent, http: SocketAddr, p: AckPoint) {
    let url = format!("http://{http}/v1/users/_/profile?min_seq={}", p.seq);
    loop {
        let outcome = get(agent, &url, shared.authorization.as_deref());
        let now = Instant::now();
        let mut f = lock(&shared.stats.freshness);
        let (r, fresh, after_ack) = &mut *f;
        match outcome {
            Ok((200 | 404, _)) => {
                r.samples += 1;
                fresh.saturating_record(micros(now.saturating_duration_since(p.intended)));
                after_ack.saturating_record(micros(now.saturating_duration_since(p.received)));
            }
            Ok((504, _)) => {
                r.timeouts += 1;
                if !shared.drain_expired() {
                    continue;
                }
            }
            failed => record_failure(&mut r.errors, &mut r.first_errors, &url, failed),
        }
        return;
    }
}

// ---------------------------------------------------------------------------
// The run

fn connect(addr: SocketAddr) -> Result<TcpStream, LoadError> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|source| LoadError::Connect { addr, source })?;
    let io = |what| move |source| LoadError::Io { what, source };
    stream.set_nodelay(true).map_err(io("set_nodelay"))?;
    stream
        .set_read_timeout(Some(POLL))
        .map_err(io("set_read_timeout"))?;
    stream
        .set_write_timeout(Some(POLL))
        .map_err(io("set_write_timeout"))?;
    Ok(stream)
}

/// Runs the load described by `opts` against a running server and reports what it
/// measured. Blocks for about `duration` (plus the drain of the last acks).
pub fn run(opts: &LoadOptions) -> Result<LoadReport, LoadError> {
    opts.check()?;
    let mut sockets = Vec::with_capacity(opts.connections);
    for _ in 0..opts.connections {
        let mut s = connect(opts.ingest)?;
        if let Some(token) = &opts.token {
            s.write_all(&crate::client::auth_preamble(token, false))
                .map_err(|source| LoadError::Io {
                    what: "send the auth line",
                    source,
                })?;
        }
        let r = s.try_clone().map_err(|source| LoadError::Io {
            what: "clone socket",
            source,
        })?;
        sockets.push((s, r));
    }
    // The HTTP side is checked up front, so a wrong address fails fast.
    TcpStream::connect_timeout(&opts.http, Duration::from_secs(5)).map_err(|source| {
        LoadError::Connect {
            addr: opts.http,
            source,
        }
    })?;

    let start = Instant::now();
    let shared = Shared {
        start,
        deadline: start + opts.duration,
        stop: AtomicBool::new(false),
        ingest_done: AtomicBool::new(false),
        drain_deadline: Mutex::new(None),
        hard_deadline: start + opts.duration + opts.drain_timeout,
        generated: AtomicU64::new(0),
        answered: AtomicU64::new(0),
        latest: Mutex::new(None),
        new_ack: Condvar::new(),
        stats: Stats {
            ingest: Mutex::new(IngestStats::default()),
            ack_latency: Mutex::new(micros_histogram()),
            send_lag: Mutex::new(micros_histogram()),
            freshness: Mutex::new((
                FreshnessReport::default(),
                micros_histogram(),
                micros_histogram(),
            )),
            queries: Mutex::new((
                QueryReport::default(),
                micros_histogram(),
                micros_histogram(),
            )),
        },
        authorization: opts.token.as_ref().map(|t| format!("Bearer {t}")),
    };
    let bar = progress_bar(opts.progress);
    let shared = &shared;
    let query_window = std::thread::scope(|s| -> Result<Duration, LoadError> {
        let mut outboxes = Vec::new();
        let mut readers = Vec::new();
        let mut writers = Vec::new();
        for (w, r) in sockets {
            let (tx, rx) = flume::bounded(WRITER_QUEUE);
            let marks = std::sync::Arc::new(Mutex::new(VecDeque::new()));
            let m = marks.clone();
            readers.push(s.spawn(move || read_answers(shared, r, &m)));
            writers.push(s.spawn(move || write_chunks(shared, w, rx)));
            outboxes.push(Outbox {
                tx,
                pending: None,
                lines: 0,
                marks,
            });
        }
        let pacer = s.spawn(move || pace(shared, opts, outboxes));
        let queries = (opts.qps > 0).then(|| s.spawn(move || query_side(shared, opts, start)));
        let prober = s.spawn(move || probe(shared, opts));

        // Watch: progress once a second; when sending stops, start the drain.
        let mut next_draw = start + Duration::from_secs(1);
        let mut prev = (start, 0u64);
        let mut sending_ended = None;
        loop {
            if sending_ended.is_none() && pacer.is_finished() {
                let now = Instant::now();
                sending_ended = Some(now);
                shared.stop.store(true, Ordering::Release);
                *lock(&shared.drain_deadline) = Some(now + opts.drain_timeout);
            }
            if readers.iter().all(|r| r.is_finished()) && writers.iter().all(|w| w.is_finished()) {
                break;
            }
            let now = Instant::now();
            if now >= next_draw {
                prev = draw(&bar, shared, prev, sending_ended.is_some());
                next_draw += Duration::from_secs(1);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bar.finish_and_clear();
        let join = |h: std::thread::ScopedJoinHandle<'_, ()>, what| {
            h.join().map_err(|_| LoadError::Panicked(what))
        };
        join(pacer, "pacer")?;
        for w in writers {
            join(w, "writer")?;
        }
        for r in readers {
            join(r, "reader")?;
        }
        shared.ingest_done.store(true, Ordering::Release);
        let window = sending_ended
            .map_or(start.elapsed(), |e| e - start)
            .min(opts.duration);
        if let Some(q) = queries {
            join(q, "query")?;
        }
        join(prober, "freshness prober")?;
        Ok(window)
    })?;
    Ok(report(opts, shared, query_window))
}

fn progress_bar(show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}").expect("template"));
    bar
}

/// One progress line: rates over the last second, totals, latencies so far.
fn draw(
    bar: &ProgressBar,
    shared: &Shared,
    prev: (Instant, u64),
    draining: bool,
) -> (Instant, u64) {
    let now = Instant::now();
    let answered = shared.answered.load(Ordering::Relaxed);
    let rate = (answered - prev.1) as f64 / (now - prev.0).as_secs_f64().max(1e-9);
    let ack_p99 = lock(&shared.stats.ack_latency).value_at_quantile(0.99);
    let (done, q_p99) = {
        let q = lock(&shared.stats.queries);
        (q.0.done, q.1.value_at_quantile(0.99))
    };
    let fresh_p50 = lock(&shared.stats.freshness).1.value_at_quantile(0.5);
    let ms = |us: u64| us as f64 / 1000.0;
    bar.set_message(format!(
        "{}sent {} acked {} ({rate:.0}/s) ack p99 {:.1} ms | {done} queries p99 {:.1} ms | fresh p50 {:.1} ms",
        if draining { "draining: " } else { "" },
        shared.generated.load(Ordering::Relaxed),
        answered,
        ms(ack_p99),
        ms(q_p99),
        ms(fresh_p50),
    ));
    bar.tick();
    (now, answered)
}

fn report(opts: &LoadOptions, shared: &Shared, query_window: Duration) -> LoadReport {
    let since = |t: Option<Instant>| t.map_or(0.0, |t| (t - shared.start).as_secs_f64());
    let s = lock(&shared.stats.ingest);
    let ack_s = since(s.last_ack);
    let ingest = IngestReport {
        generated: shared.generated.load(Ordering::Relaxed),
        sent: s.sent,
        acked: s.acked,
        rejected: s.rejected,
        duplicates: s.duplicates,
        unacked: s.sent.saturating_sub(s.acked + s.rejected),
        max_ack_seq: s.max_seq,
        send_s: since(s.last_write),
        ack_s,
        achieved_rate: if ack_s > 0.0 {
            (s.acked + s.rejected) as f64 / ack_s
        } else {
            0.0
        },
        marks_unacked: s.marks_unacked,
        error_lines: s.error_lines,
        first_errors: s.first_errors.clone(),
        failures: s.failures.clone(),
        ack_latency_us: Latency::of(&lock(&shared.stats.ack_latency)),
        send_lag_us: Latency::of(&lock(&shared.stats.send_lag)),
    };
    let freshness = {
        let f = lock(&shared.stats.freshness);
        FreshnessReport {
            freshness_us: Latency::of(&f.1),
            visible_after_ack_us: Latency::of(&f.2),
            ..f.0.clone()
        }
    };
    let queries = {
        let q = lock(&shared.stats.queries);
        let window_s = query_window.as_secs_f64();
        QueryReport {
            window_s,
            achieved_qps: q.0.done as f64 / window_s.max(1e-9),
            latency_us: Latency::of(&q.1),
            service_us: Latency::of(&q.2),
            ..q.0.clone()
        }
    };
    LoadReport {
        settings: Settings {
            ingest: opts.ingest.to_string(),
            http: opts.http.to_string(),
            target_rate: opts.rate,
            connections: opts.connections,
            target_qps: opts.qps,
            query_connections: opts.query_connections,
            query: opts.query,
            duration_s: opts.duration.as_secs_f64(),
            max_events: opts.gen.events,
            seed: opts.gen.seed,
            users: opts.gen.users,
            message_id_offset: opts.message_id_offset,
        },
        elapsed_s: shared.start.elapsed().as_secs_f64(),
        ingest,
        freshness,
        queries,
    }
}

impl LoadReport {
    /// Why the run failed as a run (for an exit status): a connection failed, or
    /// events sent were never answered. Slow answers or query errors are results,
    /// not failures.
    pub fn failure(&self) -> Option<String> {
        let i = &self.ingest;
        if !i.failures.is_empty() || i.unacked > 0 || i.marks_unacked > 0 {
            Some(format!(
                "{} of {} events sent were never answered; {}",
                i.unacked,
                i.sent,
                if i.failures.is_empty() {
                    "no connection failed".to_owned()
                } else {
                    i.failures.join("; ")
                }
            ))
        } else {
            None
        }
    }
}

// ---------------------------------------------------------------------------
// The human table

fn row(f: &mut fmt::Formatter<'_>, name: &str, l: &Latency) -> fmt::Result {
    writeln!(
        f,
        "  {name:<24}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}",
        l.p50, l.p90, l.p99, l.p999, l.max, l.samples
    )
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (s, i, fr, q) = (&self.settings, &self.ingest, &self.freshness, &self.queries);
        writeln!(
            f,
            "shopstream load: ingest {} ({} connections), http {} ({} query connections), sending {:.1} s, {:.1} s with the drain",
            s.ingest, s.connections, s.http, s.query_connections, s.duration_s, self.elapsed_s
        )?;
        writeln!(
            f,
            "  ingest   target {} ev/s, achieved {:.0} ev/s to ack; sent {} (of {} generated) in {:.2} s, acked {} (duplicates {}), rejected {}, unacked {}, last ack at {:.2} s, max seq {}",
            s.target_rate, i.achieved_rate, i.sent, i.generated, i.send_s, i.acked, i.duplicates,
            i.rejected, i.unacked, i.ack_s, i.max_ack_seq
        )?;
        writeln!(
            f,
            "  queries  {:?}, target {} q/s, achieved {:.0} q/s; {} done: 200 {}, 404 {}, errors {}, sent >1 ms late {}",
            s.query, s.target_qps, q.achieved_qps, q.done, q.ok_200, q.ok_404, q.errors, q.late
        )?;
        writeln!(
            f,
            "  freshness probes {}, 504 timeouts {}, errors {}",
            fr.samples, fr.timeouts, fr.errors
        )?;
        writeln!(
            f,
            "\n  {:<24}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}",
            "latency (µs)", "p50", "p90", "p99", "p99.9", "max", "samples"
        )?;
        row(f, "ack (from intended)", &i.ack_latency_us)?;
        row(f, "send lag", &i.send_lag_us)?;
        row(f, "freshness", &fr.freshness_us)?;
        row(f, "visible after ack", &fr.visible_after_ack_us)?;
        row(f, "query (from intended)", &q.latency_us)?;
        row(f, "query service time", &q.service_us)?;
        let lists = [
            ("ingest failure", &i.failures),
            ("ingest error line", &i.first_errors),
            ("freshness error", &fr.first_errors),
            ("query error", &q.first_errors),
        ];
        for (what, list) in lists {
            for e in list.iter() {
                writeln!(f, "  {what}: {e}")?;
            }
        }
        if q.done > 0 && q.late * 10 > q.done {
            writeln!(
                f,
                "  NOTE: {} of {} queries left more than 1 ms late: with one query in flight per connection, \
                 the schedule needs service times under {:.0} µs ({} connections at {} q/s), or the client \
                 is short of CPU; latency from intended counts the wait",
                q.late,
                q.done,
                s.query_connections as f64 * 1e6 / s.target_qps as f64,
                s.query_connections,
                s.target_qps
            )?;
        }
        if i.marks_unacked > 0 {
            writeln!(
                f,
                "  WARNING: {} batches were never acknowledged",
                i.marks_unacked
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shopstream::config::Config;
    use shopstream::server::Server;

    /// A short run against a real in-process server: everything sent is answered,
    /// and every measurement has samples. No timing assertions.
    #[test]
    fn a_short_run_against_a_real_server_acks_everything_and_measures_all() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cfg = Config::defaults();
        // The repository's example segments, as when this test ran from the root
        // (tests run in their package's directory, tools/).
        cfg.segments_file = Some(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(shopstream::config::DEFAULT_SEGMENTS_FILE),
        );
        cfg.keep_file_segments = false;
        cfg.tcp_addr = "127.0.0.1:0".parse().expect("addr");
        cfg.http_addr = "127.0.0.1:0".parse().expect("addr");
        cfg.data_dir = dir.path().to_path_buf();
        cfg.workers = 2;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let server = rt
            .block_on(Server::start(cfg, |_, _| {}))
            .expect("server starts");
        let mut opts = LoadOptions::new(server.tcp_addr, server.http_addr);
        opts.rate = 5_000;
        opts.qps = 100;
        opts.duration = Duration::from_secs(2);
        opts.gen.users = 2_000;
        opts.gen.items = 2_000;
        opts.gen.categories = 50;
        let report = run(&opts).expect("load run");
        // A second run against the same server: its messageIds are its own.
        let again = run(&LoadOptions {
            duration: Duration::from_millis(300),
            qps: 0,
            message_id_offset: run_id_offset(),
            ..opts.clone()
        })
        .expect("second load run");
        // Queries only: the run lasts its duration and offers every query.
        let queries_only = run(&LoadOptions {
            rate: 0,
            qps: 400,
            query_connections: 4,
            duration: Duration::from_millis(500),
            ..opts.clone()
        })
        .expect("queries-only run");
        rt.block_on(server.shutdown());
        eprintln!("{report}");

        let i = &report.ingest;
        assert!(i.failures.is_empty(), "{:?}", i.failures);
        assert!(i.sent > 5_000, "{i:?}");
        assert_eq!(i.sent, i.generated, "{i:?}");
        assert_eq!(i.acked, i.sent - i.rejected, "{i:?}");
        assert_eq!(i.unacked, 0, "{i:?}");
        assert_eq!(i.marks_unacked, 0, "{i:?}");
        assert_eq!(report.failure(), None);
        assert!(
            i.duplicates > 0,
            "the workload repeats some messageIds: {i:?}"
        );
        assert!(i.max_ack_seq > 0, "{i:?}");
        assert!(i.ack_latency_us.samples > 0, "{i:?}");
        assert!(i.send_lag_us.samples > 0, "{i:?}");
        let q = &report.queries;
        assert_eq!(q.errors, 0, "{:?}", q.first_errors);
        assert!(q.done > 0 && q.done == q.ok_200 + q.ok_404, "{q:?}");
        // Open loop: every scheduled query is sent (100 q/s for 2 s), however slow.
        assert!(q.done >= 190, "{q:?}");
        assert!(q.ok_200 > 0, "hot users exist after a while: {q:?}");
        assert!(
            q.latency_us.samples > 0 && q.service_us.samples > 0,
            "{q:?}"
        );
        let f = &report.freshness;
        assert_eq!(f.errors, 0, "{:?}", f.first_errors);
        assert!(f.samples > 0 && f.freshness_us.samples > 0, "{f:?}");
        assert!(f.visible_after_ack_us.samples > 0, "{f:?}");
        // The report serializes with its documented field names.
        let json = serde_json::to_value(&report).expect("json");
        for key in ["settings", "elapsed_s", "ingest", "freshness", "queries"] {
            assert!(json.get(key).is_some(), "{key} missing: {json}");
        }
        assert!(json["ingest"]["ack_latency_us"]["p999"].is_u64(), "{json}");
        assert!(report.to_string().contains("freshness"));
        let qo = &queries_only;
        assert_eq!(qo.ingest.sent, 0, "{:?}", qo.ingest);
        assert!(
            qo.elapsed_s >= 0.5,
            "ran for its duration: {}",
            qo.elapsed_s
        );
        assert!(qo.queries.done >= 190, "{:?}", qo.queries);
        assert_eq!(qo.queries.errors, 0, "{:?}", qo.queries.first_errors);
        let a = &again.ingest;
        assert!(a.sent > 0 && a.unacked == 0, "{a:?}");
        assert!(
            a.duplicates * 10 < a.sent,
            "a rerun is not all duplicates: {a:?}"
        );
    }

    #[test]
    fn bad_settings_are_refused_with_their_name() {
        let a: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let mut o = LoadOptions::new(a, a);
        o.connections = 0;
        let e = run(&o).expect_err("refused").to_string();
        assert!(e.contains("connections"), "{e}");
    }
}
