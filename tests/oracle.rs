//! Oracle test of the profile view: for random event streams with refunds,
//! cancellations, cart removals, late and duplicate events, the profile the engine
//! serves (sequencer, durable log, timely workers, arrangements read by cursor) at
//! every epoch equals a from-scratch computation over the same logged events.
//!
//! Halfway through, the engine writes a snapshot. After the last epoch it is
//! restarted (with another number of workers) from that snapshot and the log
//! after it, then once more from the whole log (the snapshot removed), and must
//! answer the same both times.
//!
//! The from-scratch side (`tests/util/oracle.rs`) shares nothing with the engine
//! but the spec's constants (weights, window widths, RFM buckets): it walks every
//! event ever logged, per user, in sequence order, at every epoch.

#[path = "util/oracle.rs"]
mod model;

use std::collections::HashSet;
use std::sync::Arc;

use model::{event, op, oracle, workload, Op, T0, USERS};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use shopstream::config::Config;
use shopstream::event::Event;
use shopstream::runtime::{Engine, ReadAt};

/// Runs one workload through a real engine with `workers` workers and compares every
/// user's profile with the oracle after every epoch.
fn check(workload: &[(i64, Vec<Op>)], workers: usize) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config::defaults();
    config.data_dir = dir.path().to_path_buf();
    config.workers = workers;
    config.fsync = shopstream::log::FsyncPolicy::Never;
    // Every step is reread in the past at the end.
    config.as_of_history = 1_024;
    let rt = model::runtime();
    let engine = model::start_engine(config);
    let total: usize = workload.iter().map(|(_, ops)| ops.len()).sum();
    let ids: Vec<u64> = (0..total.max(1))
        .map(|i| shopstream::event::message_id_hash(&format!("m{i}")))
        .collect();
    let mut logged: Vec<(u64, Event)> = Vec::new();
    let mut seen_ids = HashSet::new();
    let mut clock = i64::MIN;
    let mut base = T0;
    let mut n = 0;
    let mut steps = Vec::new();
    let result = rt.block_on(async {
        for (step, (advance, ops)) in workload.iter().enumerate() {
            if step == workload.len() / 2 && !logged.is_empty() {
                engine.snapshot().await.expect("snapshot");
            }
            base += advance * 3_600_000;
            let mut batch = Vec::new();
            for op in ops {
                batch.push(event(op, n, base + op.hours * 3_600_000, &ids));
                n += 1;
            }
            let ack = engine.submit(batch.clone()).await.expect("submit");
            let mut expected_dups = Vec::new();
            for (i, e) in batch.into_iter().enumerate() {
                if seen_ids.insert(e.message_id.expect("set")) {
                    clock = clock.max(e.ts);
                    logged.push((logged.len() as u64 + 1, e));
                } else {
                    expected_dups.push(i);
                }
            }
            prop_assert_eq!(&ack.duplicates, &expected_dups);
            let want = oracle(&logged, clock);
            for u in 0..USERS {
                let user = format!("u{u}");
                let got =
                    shopstream::serve::profile::read(&engine, &user, Some(logged.len() as u64))
                        .await
                        .expect("read");
                prop_assert_eq!(got.as_of.seq, logged.len() as u64);
                prop_assert_eq!(got.as_of.clock, clock);
                match want.get(&user) {
                    None => {
                        prop_assert!(got.profile.lifetime.is_none(), "{} should be unknown", user)
                    }
                    Some(w) => {
                        prop_assert_eq!(
                            &got.profile,
                            &w.profile,
                            "user {} at seq {}",
                            user,
                            logged.len()
                        );
                        prop_assert_eq!(got.rfm_ranks, w.rfm_ranks, "rfm of {}", user);
                    }
                }
            }
            steps.push((logged.len(), clock));
        }
        // Every step again, now in the past: `as_of` reads see exactly that step
        // (the views keep the last `http.as_of_history` points uncompacted).
        for &(n, step_clock) in steps.iter().filter(|(n, _)| *n > 0) {
            let want = oracle(&logged[..n], step_clock);
            for u in 0..USERS {
                let user = format!("u{u}");
                let at = ReadAt {
                    min_seq: None,
                    as_of: Some(n as u64),
                };
                let got = shopstream::serve::profile::read(&engine, &user, at)
                    .await
                    .expect("read as_of");
                prop_assert_eq!(got.as_of.seq, n as u64);
                prop_assert_eq!(
                    got.profile.lifetime.is_some(),
                    want.contains_key(&user),
                    "{} at as_of {}",
                    user,
                    n
                );
                if let Some(w) = want.get(&user) {
                    prop_assert_eq!(&got.profile, &w.profile, "{} at as_of {}", user, n);
                    prop_assert_eq!(got.rfm_ranks, w.rfm_ranks, "rfm of {} at as_of {}", user, n);
                }
            }
        }
        Ok(())
    });
    engine.shutdown();
    result?;

    // A restart from the snapshot and the log after it, then one from the whole
    // log: the same answers, with a different number of workers too.
    let want = oracle(&logged, clock);
    for from_snapshot in [true, false] {
        if !from_snapshot {
            let _ = std::fs::remove_dir_all(dir.path().join(shopstream::snapshot::DIR));
        }
        restarted(dir.path(), 1 + workers % 3, &rt, &logged, &want)?;
    }
    Ok(())
}

/// Restarts on `data_dir` and compares every profile with `want`.
fn restarted(
    data_dir: &std::path::Path,
    workers: usize,
    rt: &tokio::runtime::Runtime,
    logged: &[(u64, Event)],
    want: &std::collections::BTreeMap<String, shopstream::serve::profile::ProfileRead>,
) -> Result<(), TestCaseError> {
    let mut config = Config::defaults();
    config.data_dir = data_dir.to_path_buf();
    config.workers = workers;
    config.fsync = shopstream::log::FsyncPolicy::Never;
    let engine: Arc<Engine> =
        Engine::start(config, &shopstream::serve::all_hosts(), |_, _| {}).expect("engine restarts");
    let snapshots = shopstream::snapshot::list(&shopstream::snapshot::dir(data_dir)).expect("list");
    prop_assert_eq!(
        engine.recovery().snapshot_epoch,
        snapshots.first().map(|s| s.0),
        "starts from the snapshot when there is one"
    );
    let replayed = rt.block_on(async {
        for u in 0..USERS {
            let user = format!("u{u}");
            let got = shopstream::serve::profile::read(&engine, &user, None)
                .await
                .expect("read");
            prop_assert_eq!(got.as_of.seq, logged.len() as u64);
            match want.get(&user) {
                None => prop_assert!(got.profile.lifetime.is_none()),
                Some(w) => {
                    prop_assert_eq!(&got.profile, &w.profile, "replayed {}", user);
                    prop_assert_eq!(got.rfm_ranks, w.rfm_ranks, "replayed rfm of {}", user);
                }
            }
        }
        Ok(())
    });
    engine.shutdown();
    replayed
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn profiles_match_oracle_one_worker(w in workload()) {
        check(&w, 1)?;
    }

    #[test]
    fn profiles_match_oracle_three_workers(w in workload()) {
        check(&w, 3)?;
    }
}

/// A longer fixed workload: windows open and close across many epochs, with every
/// worker count the engine is commonly run with.
#[test]
fn long_stream_with_window_exits_matches_oracle() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let long = prop::collection::vec((0i64..100, prop::collection::vec(op(), 5..30)), 20..25);
    let w = long.new_tree(&mut runner).expect("tree").current();
    for workers in [1, 2, 3] {
        check(&w, workers).expect("matches");
    }
}
