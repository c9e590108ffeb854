//! Restart time against log size, from a snapshot and from the whole log.
//!
//! `cargo bench --bench restart` builds, per size `N` in `RESTART_BENCH_EVENTS`
//! (a comma list, default `1000000`), a data directory on an in-process server
//! (embedded defaults: every built-in segment on; fsync `never`, automatic
//! snapshots off): `N - tail` events of the deterministic shop workload
//! (`shopstream gen`, 200,000 users), a snapshot (`Engine::snapshot`, timed), then
//! the `tail` (`RESTART_BENCH_TAIL_PERCENT`, default 10%: what a restart replays
//! after the snapshot). Then, `RESTART_BENCH_ROUNDS` times (default 3), it times
//! `Server::start` to ready (every view includes the whole log) from the snapshot,
//! and from the whole log (the snapshot moved aside). Output: a table, then one
//! `BENCH_JSON` line. `SHOPSTREAM_BENCH_WORKERS` (2).

use std::time::{Duration, Instant};

use serde_json::json;
use shopstream::config::Config;
use shopstream::server::Server;
use shopstream_tools::gen::{to_event, GenOptions, Workload};

#[allow(dead_code)]
mod common;
use common::*;

const SUBMISSION: usize = 5_000;

fn bad_env(key: &str, v: &str) -> ! {
    eprintln!("bench: {key}={v:?} is not a valid number");
    std::process::exit(2)
}

fn config(dir: &std::path::Path, workers: usize) -> Config {
    let mut config = Config::defaults();
    config.data_dir = dir.to_path_buf();
    config.workers = workers;
    config.fsync = shopstream::log::FsyncPolicy::Never;
    config.tcp_addr = "127.0.0.1:0".parse().expect("addr");
    config.http_addr = "127.0.0.1:0".parse().expect("addr");
    config.snapshot.every_events = 0;
    config
}

/// Streams `n` events of `workload` into `server`, waits until they are visible.
fn feed(rt: &tokio::runtime::Runtime, server: &Server, workload: &mut Workload, n: usize) {
    rt.block_on(async {
        let mut last = 0;
        let mut pending = std::collections::VecDeque::new();
        let mut left = n;
        while left > 0 {
            let chunk: Vec<_> = workload
                .by_ref()
                .take(SUBMISSION.min(left))
                .map(|m| to_event(&m))
                .collect();
            left -= chunk.len();
            pending.push_back(server.engine.enqueue(chunk).await.expect("enqueue"));
            while pending.len() > 64 {
                let ack = pending.pop_front().expect("some").await;
                last = last.max(ack.expect("acked").expect("durable").last_seq);
            }
        }
        for rx in pending {
            last = last.max(rx.await.expect("acked").expect("durable").last_seq);
        }
        server
            .engine
            .wait_for_seq(last, Duration::from_secs(3_600))
            .await
            .expect("visible");
    });
}

struct Size {
    events: usize,
    tail: usize,
    log_bytes: u64,
    snapshot_bytes: u64,
    snapshot_ms: u64,
    rss_after_build: u64,
    from_snapshot: hdrhistogram::Histogram<u64>,
    full_replay: hdrhistogram::Histogram<u64>,
}

fn timed_start(rt: &tokio::runtime::Runtime, dir: &std::path::Path, workers: usize) -> u64 {
    let started = Instant::now();
    let server = rt
        .block_on(Server::start(config(dir, workers), |_, _| {}))
        .expect("server starts");
    let ms = started.elapsed().as_millis() as u64;
    rt.block_on(server.shutdown());
    ms
}

fn size(
    rt: &tokio::runtime::Runtime,
    events: usize,
    tail_pct: usize,
    rounds: usize,
    workers: usize,
) -> Size {
    let dir = tempfile::tempdir_in(std::env::temp_dir()).expect("tempdir");
    let tail = events * tail_pct / 100;
    let mut workload = Workload::new(GenOptions {
        events: events as u64,
        ..GenOptions::default()
    });
    let server = rt
        .block_on(Server::start(config(dir.path(), workers), |_, _| {}))
        .expect("server starts");
    feed(rt, &server, &mut workload, events - tail);
    let info = rt.block_on(server.engine.snapshot()).expect("snapshot");
    feed(rt, &server, &mut workload, tail);
    let rss_after_build = rss_bytes();
    rt.block_on(server.shutdown());
    let log_bytes = shopstream::log::size_on_disk(dir.path()).expect("log size");
    let snaps = shopstream::snapshot::dir(dir.path());
    let aside = dir.path().join("snapshots.aside");
    let mut from_snapshot = hdrhistogram::Histogram::new(3).expect("histogram");
    let mut full_replay = hdrhistogram::Histogram::new(3).expect("histogram");
    for _ in 0..rounds {
        let _ = from_snapshot.record(timed_start(rt, dir.path(), workers));
        std::fs::rename(&snaps, &aside).expect("move the snapshot aside");
        let _ = full_replay.record(timed_start(rt, dir.path(), workers));
        // The full replay wrote no snapshot; put the one back.
        std::fs::rename(&aside, &snaps).expect("move the snapshot back");
    }
    Size {
        events,
        tail,
        log_bytes,
        snapshot_bytes: info.bytes,
        snapshot_ms: info.millis,
        rss_after_build,
        from_snapshot,
        full_replay,
    }
}

fn main() {
    let sizes: Vec<usize> = std::env::var("RESTART_BENCH_EVENTS")
        .unwrap_or_else(|_| "1000000".into())
        .split(',')
        .map(|s| {
            s.trim().parse().unwrap_or_else(|_| {
                eprintln!("bench: RESTART_BENCH_EVENTS={s:?} is not a list of numbers");
                std::process::exit(2)
            })
        })
        .collect();
    let tail_pct: usize = env_num("RESTART_BENCH_TAIL_PERCENT", 10);
    let rounds: usize = env_num("RESTART_BENCH_ROUNDS", 3);
    let workers: usize = env_num("SHOPSTREAM_BENCH_WORKERS", 2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    println!("| logged events | log | snapshot (written in) | tail replayed | restart from snapshot p50 / max | from the whole log p50 / max |");
    println!("|---|---|---|---|---|---|");
    let mut all = Vec::new();
    for n in sizes {
        let s = size(&rt, n, tail_pct, rounds, workers);
        println!(
            "| {} | {:.0} MiB | {:.0} MiB ({:.1} s) | {} events | {:.1} / {:.1} s | {:.1} / {:.1} s |",
            s.events,
            mib(s.log_bytes),
            mib(s.snapshot_bytes),
            s.snapshot_ms as f64 / 1e3,
            s.tail,
            s.from_snapshot.value_at_quantile(0.5) as f64 / 1e3,
            s.from_snapshot.max() as f64 / 1e3,
            s.full_replay.value_at_quantile(0.5) as f64 / 1e3,
            s.full_replay.max() as f64 / 1e3,
        );
        all.push(s);
    }
    println!(
        "BENCH_JSON {}",
        json!({
            "workers": workers,
            "rounds": rounds,
            "sizes": all.iter().map(|s| json!({
                "events": s.events,
                "tail": s.tail,
                "log_bytes": s.log_bytes,
                "snapshot_bytes": s.snapshot_bytes,
                "snapshot_ms": s.snapshot_ms,
                "rss_after_build_bytes": s.rss_after_build,
                "restart_from_snapshot_ms": {"p50": s.from_snapshot.value_at_quantile(0.5), "max": s.from_snapshot.max()},
                "restart_full_replay_ms": {"p50": s.full_replay.value_at_quantile(0.5), "max": s.full_replay.max()},
            })).collect::<Vec<_>>(),
        })
    );
}
