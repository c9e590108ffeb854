//! Helpers the benches share: reading
//! settings from the environment, the TCP ingest's acks, waiting until the views
//! include a sequence number, and measuring (histograms, memory, disk, rates).
//!
//! Each bench includes this file with `mod common;`. [`env_num`] reports a value
//! that does not parse through the bench's own `bad_env(key, value) -> !`, so each
//! bench keeps its own wording and prefix.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::Value;

// ---------------------------------------------------------------------------
// Settings

/// The number in the environment variable `key`, or `default` when it is unset;
/// a value that does not parse goes to the bench's `bad_env`, which exits.
pub fn env_num<T: std::str::FromStr>(key: &str, default: T) -> T {
    match std::env::var(key) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| crate::bad_env(key, &v)),
        Err(_) => default,
    }
}

// ---------------------------------------------------------------------------
// Acknowledgements and visibility

/// One answer line `{"ack": SEQ, "accepted": N, "rejected": M, "duplicates": D}`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ack {
    pub seq: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub duplicates: u64,
}

#[derive(Debug, Default)]
pub struct AckLog {
    /// `(accepted + rejected, when it arrived)` per ack line, in order.
    pub acks: Vec<(u64, Instant)>,
    pub last: Ack,
    pub error_lines: u64,
    /// The first five error lines.
    pub first_errors: Vec<String>,
    pub fatal: Option<String>,
}

/// Reads the server's answers until it closes the connection.
pub fn read_acks(stream: TcpStream) -> AckLog {
    let mut log = AckLog::default();
    for line in BufReader::with_capacity(1 << 16, stream).lines() {
        let Ok(line) = line else { break };
        let now = Instant::now();
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            log.error_lines += 1;
            continue;
        };
        if let Some(seq) = v.get("ack").and_then(Value::as_u64) {
            let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
            log.last = Ack {
                seq,
                accepted: n("accepted"),
                rejected: n("rejected"),
                duplicates: n("duplicates"),
            };
            log.acks.push((log.last.accepted + log.last.rejected, now));
        } else if v.get("fatal").is_some() {
            log.fatal = Some(line);
        } else {
            log.error_lines += 1;
            if log.first_errors.len() < 5 {
                log.first_errors.push(line);
            }
        }
    }
    log
}

/// An HTTP client that hands back every status as a response, 60 s per request.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// Waits until the views include `seq`: 200 or 404 both mean the read saw it.
pub fn wait_visible(agent: &ureq::Agent, http: SocketAddr, seq: u64) {
    let url = format!("http://{http}/v1/users/_/profile?min_seq={seq}");
    loop {
        let mut resp = agent.get(&url).call().expect("GET ?min_seq");
        let status = resp.status().as_u16();
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        match status {
            200 | 404 => return,
            504 => continue,
            _ => panic!("GET {url}: {status} {body}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Measuring helpers

pub fn micros_histogram() -> Histogram<u64> {
    // 1 µs to 1 h, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds")
}

pub fn micros(d: Duration) -> u64 {
    d.as_micros().clamp(1, u128::from(u64::MAX)) as u64
}

/// Resident set size of this process, from `/proc/self/status` (0 where unknown).
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Bytes in the files under `dir`, recursively (0 where unreadable).
pub fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

pub fn per_sec(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

pub fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// Ack latency per chunk: from `sent` (`(lines through, when sent)`, in order) to the
/// first ack covering those lines (`acks`: `(accepted + rejected, when)`, in order).
/// Both lists are in order, so they are walked together. Warns when a chunk was never
/// acknowledged.
pub fn ack_latencies(sent: &[(u64, Instant)], acks: &[(u64, Instant)]) -> Histogram<u64> {
    let mut h = micros_histogram();
    let mut j = 0;
    for (lines, at) in sent {
        while j < acks.len() && acks[j].0 < *lines {
            j += 1;
        }
        let Some((_, acked)) = acks.get(j) else {
            eprintln!("bench: warning: a chunk's lines were never acknowledged");
            break;
        };
        h.saturating_record(micros(acked.saturating_duration_since(*at)));
    }
    h
}

/// CPU seconds this process has used (user + system).
#[allow(dead_code)] // the engine and segment benches use it, not every bench
pub fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line (11 and 12 here).
    (ticks(11) + ticks(12)) / 100.0
}
