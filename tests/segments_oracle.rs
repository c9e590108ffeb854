//! Oracle test of the segment view: random event streams (refunds, cancellations,
//! cart removals, identify traits, late and duplicate events, a clock that moves)
//! and random rules defined, redefined and dropped between epochs. After every
//! step, every segment's members (paged), every user's segments with `since`, and
//! the sizes must equal a brute-force evaluation of each rule over the
//! from-scratch profile of every user at that point; the change feed must carry
//! exactly the enters and exits between consecutive steps. Then the engine is
//! restarted on its log with another worker count and must answer the same.
//!
//! The brute-force side uses the rule's own evaluation (its semantics have unit
//! tests of their own in `dataflows/src/rules/`) on profiles from the
//! independent oracle of `tests/util/oracle.rs`; what is under test is everything
//! incremental: which users get re-evaluated when, time-driven exits, definitions
//! over all history, drops, `since`, paging, the feed, and replay.

#[path = "util/oracle.rs"]
mod model;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use model::{event, op, oracle, Op, T0, USERS};
use proptest::prelude::*;
use shopstream::catalog::segments::{segment_id, KIND};
use shopstream::catalog::{Control, Source};
use shopstream::config::Config;
use shopstream::event::Event;
use shopstream::runtime::Engine;
use shopstream::serve::feed::SizeTrack;
use shopstream::serve::segments::{self as seg, hub};
use shopstream_dataflows::rules::{Rule, Subject};
use shopstream_dataflows::types::{intern, Sym};
use shopstream_dataflows::views::segments::Since;

/// Rules over every kind of field, with random thresholds.
fn rule() -> impl Strategy<Value = String> {
    prop_oneof![
        (0i64..4).prop_map(|n| format!("orders >= {n}")),
        (0i64..200).prop_map(|n| format!("revenue >= {n}.5")),
        (1i64..3).prop_map(|n| format!("windows.7d.views >= {n}")),
        Just("windows.30d.orders >= 1 and not refunds = 0".to_owned()),
        (0i64..12).prop_map(|n| format!("days_since(last_order_at) > {n}")),
        (0i64..12)
            .prop_map(|n| format!("days_since(first_seen) <= {n} or days_since(last_seen) = {n}")),
        (1i64..4).prop_map(|n| format!("events.\"Product Viewed\" >= {n}")),
        (0u64..3).prop_map(|n| format!("traits.plan = \"p{n}\"")),
        Just("traits.plan in [\"p0\", \"p2\"] or not traits.age exists".to_owned()),
        (0u64..3).prop_map(|n| format!("top_categories contains \"c{n}\"")),
        (0u64..5).prop_map(|n| format!("cart contains \"i{n}\" or brands contains \"b{}\"", n % 4)),
        (1u8..6).prop_map(|n| format!("rfm.r_score >= {n}")),
        (1u8..6).prop_map(|n| format!("rfm.f_score = {n} or rfm.m_score >= {n}")),
        (0i64..60).prop_map(|n| format!("avg_order_value >= {n}")),
        Just("rfm.recency_days < 5 and windows.30d.revenue > 0".to_owned()),
    ]
}

/// A definition change before an epoch's events: define or redefine segment
/// `s{k}`, or drop it.
#[derive(Clone, Debug)]
enum Act {
    Define(u8, String),
    Drop(u8),
}

fn act() -> impl Strategy<Value = Act> {
    prop_oneof![
        4 => (0u8..4, rule()).prop_map(|(k, r)| Act::Define(k, r)),
        1 => (0u8..4).prop_map(Act::Drop),
    ]
}

/// Epochs: definition changes, then how far the base time moves (hours), then events.
type Plan = Vec<(Vec<Act>, i64, Vec<Op>)>;

fn plan() -> impl Strategy<Value = Plan> {
    (
        prop::collection::vec(act(), 1..4),
        prop::collection::vec(
            (
                prop::collection::vec(act(), 0..2),
                0i64..100,
                prop::collection::vec(op(), 0..12),
            ),
            1..8,
        ),
    )
        .prop_map(|(first, mut rest)| {
            rest[0].0.splice(0..0, first);
            rest
        })
}

/// Memberships by segment name: user → since.
type State = BTreeMap<String, BTreeMap<String, Since>>;

/// The brute-force answer after the events `logged` at `clock`: every defined rule
/// over every user's from-scratch profile, `since` carried over from the previous
/// state (a new member's is this step: the last sequence number and the clock).
fn expected(
    rules: &BTreeMap<String, Rule>,
    logged: &[(u64, Event)],
    clock: i64,
    previous: &State,
    names: &HashMap<Sym, String>,
) -> State {
    let profiles = oracle(logged, clock);
    let now = Since {
        seq: logged.len() as u64,
        clock,
    };
    let resolve = |a: Sym, b: Sym| names.get(&a).cmp(&names.get(&b));
    let mut state = State::new();
    for (name, rule) in rules {
        let members = state.entry(name.clone()).or_default();
        for (user, p) in &profiles {
            let subject = Subject {
                profile: &p.profile,
                scores: p.rfm_ranks.map(|r| r.map(|x| x.score())),
                clock,
                name_order: &resolve,
            };
            if rule.eval(&subject) {
                let since = previous
                    .get(name)
                    .and_then(|m| m.get(user))
                    .copied()
                    .unwrap_or(now);
                members.insert(user.clone(), since);
            }
        }
    }
    state
}

/// The feed's view of a step: (segment, user, change) in the hub's order.
fn transitions(before: &State, after: &State) -> Vec<(String, String, &'static str)> {
    let mut out = Vec::new();
    let names: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for name in names {
        let empty = BTreeMap::new();
        let b = before.get(name).unwrap_or(&empty);
        let a = after.get(name).unwrap_or(&empty);
        for user in b.keys().filter(|u| !a.contains_key(*u)) {
            out.push((name.clone(), user.clone(), "exit"));
        }
        for user in a.keys().filter(|u| !b.contains_key(*u)) {
            out.push((name.clone(), user.clone(), "enter"));
        }
    }
    out.sort_by_key(|(s, u, _)| (segment_id(s), intern(u)));
    out
}

/// Reads the engine's whole segment state: members (paged two at a time), each
/// user's segments with `since`, and sizes, which must agree with each other.
async fn observe(
    engine: &Engine,
    rules: &BTreeMap<String, Rule>,
    seq: u64,
) -> Result<State, TestCaseError> {
    let defined: BTreeSet<&String> = rules.keys().collect();
    let mut by_members = State::new();
    for name in &defined {
        let def = seg::definition(engine, name).expect("defined");
        let mut after = None;
        let mut members = BTreeMap::new();
        loop {
            let (as_of, page, next) = seg::segment_members(
                engine,
                segment_id(name),
                after,
                2,
                Some(seq),
                Some(def.epoch),
            )
            .await
            .expect("members");
            prop_assert_eq!(as_of.seq, seq);
            prop_assert!(page.len() <= 2);
            for u in &page {
                let user = (0..USERS)
                    .map(|k| format!("u{k}"))
                    .find(|s| intern(s) == *u)
                    .expect("a known user");
                prop_assert!(
                    members.insert(user, Since::default()).is_none(),
                    "paged twice"
                );
            }
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        let (_, size) = seg::segment_size(engine, segment_id(name), Some(seq), Some(def.epoch))
            .await
            .expect("size");
        prop_assert_eq!(size as usize, members.len(), "size of {}", name);
        by_members.insert((*name).clone(), members);
    }
    let mut by_user = State::new();
    for name in &defined {
        by_user.insert((*name).clone(), BTreeMap::new());
    }
    for k in 0..USERS {
        let user = format!("u{k}");
        let (as_of, segments, _) = seg::user_segments(engine, &user, Some(seq), None)
            .await
            .expect("user segments");
        prop_assert_eq!(as_of.seq, seq);
        for (id, since) in segments {
            let name = engine.catalog().name(KIND, id).expect("a defined segment");
            by_user
                .get_mut(&name)
                .expect("defined")
                .insert(user.clone(), since);
        }
    }
    for (name, members) in &by_members {
        let users: Vec<&String> = members.keys().collect();
        let from_users: Vec<&String> = by_user[name].keys().collect();
        prop_assert_eq!(users, from_users, "members and user segments of {}", name);
    }
    Ok(by_user)
}

fn check(plan: &Plan, workers: usize) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = |workers| {
        let mut c = Config::defaults();
        c.data_dir = dir.path().to_path_buf();
        c.workers = workers;
        c.fsync = shopstream::log::FsyncPolicy::Never;
        c
    };
    let rt = model::runtime();
    let engine = model::start_engine(config(workers));
    let mut feed = hub(&engine).subscribe(None).expect("subscribe").live;
    let total: usize = plan.iter().map(|(_, _, ops)| ops.len()).sum();
    let ids: Vec<u64> = (0..total.max(1))
        .map(|i| shopstream::event::message_id_hash(&format!("m{i}")))
        .collect();
    let mut names: HashMap<Sym, String> = HashMap::new();
    for s in ["c0", "c1", "c2", "b0", "b1", "b2", "b3"] {
        names.insert(intern(s), s.to_owned());
    }
    let mut logged: Vec<(u64, Event)> = Vec::new();
    let mut seen_ids = HashSet::new();
    let mut clock = i64::MIN;
    let mut base = T0;
    let mut n = 0;
    let mut rules: BTreeMap<String, Rule> = BTreeMap::new();
    let mut state = State::new();
    let mut want_feed = Vec::new();
    let result = rt.block_on(async {
        for (step, (acts, advance, ops)) in plan.iter().enumerate() {
            if step == plan.len() / 2 && engine.readable().done > 0 {
                engine.snapshot().await.expect("snapshot");
            }
            // Definitions first, each in its own record.
            for a in acts {
                let control = match a {
                    Act::Define(k, rule) => {
                        rules.insert(format!("s{k}"), Rule::compile(rule, 2).expect("valid rule"));
                        Control::put(KIND, format!("s{k}"), rule.clone(), Source::Api)
                    }
                    Act::Drop(k) => {
                        rules.remove(&format!("s{k}"));
                        Control::remove(KIND, format!("s{k}"))
                    }
                };
                let readable = engine.define(vec![control]).await.expect("define");
                prop_assert_eq!(readable.seq, logged.len() as u64);
                let next = expected(&rules, &logged, clock, &state, &names);
                want_feed.extend(transitions(&state, &next));
                state = next;
                let got = observe(&engine, &rules, logged.len() as u64).await?;
                prop_assert_eq!(&got, &state, "after {:?}", a);
            }
            base += advance * 3_600_000;
            let mut batch = Vec::new();
            for op in ops {
                batch.push(event(op, n, base + op.hours * 3_600_000, &ids));
                n += 1;
            }
            if batch.is_empty() {
                continue;
            }
            engine.submit(batch.clone()).await.expect("submit");
            for e in batch {
                if seen_ids.insert(e.message_id.expect("set")) {
                    clock = clock.max(e.ts);
                    logged.push((logged.len() as u64 + 1, e));
                }
            }
            let next = expected(&rules, &logged, clock, &state, &names);
            want_feed.extend(transitions(&state, &next));
            state = next;
            let got = observe(&engine, &rules, logged.len() as u64).await?;
            prop_assert_eq!(&got, &state, "at seq {} clock {}", logged.len(), clock);
        }
        // The feed published each step's enters and exits, exactly once.
        let last = engine.readable();
        while hub(&engine).published_through() < last.done {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let mut got_feed = Vec::new();
        while let Ok(epoch) = feed.try_recv() {
            for e in epoch.iter() {
                let (segment, user) = hub(&engine).describe(e);
                got_feed.push((segment, user, if e.enter { "enter" } else { "exit" }));
            }
        }
        prop_assert_eq!(got_feed, want_feed);
        Ok(())
    });
    let feed_before = retained_feed(&engine);
    engine.shutdown();
    result?;

    // A restart from the snapshot and the log after it, then one from the whole
    // log: the same members, the same `since`, the same feed and sizes.
    for from_snapshot in [true, false] {
        if !from_snapshot {
            let _ = std::fs::remove_dir_all(dir.path().join(shopstream::snapshot::DIR));
        }
        let engine: Arc<Engine> = Engine::start(
            config(1 + workers % 3),
            &shopstream::serve::all_hosts(),
            |_, _| {},
        )
        .expect("engine restarts");
        prop_assert_eq!(
            engine.recovery().snapshot_epoch.is_some(),
            from_snapshot && dir.path().join(shopstream::snapshot::DIR).exists(),
            "starts from the snapshot when there is one"
        );
        let replayed = rt.block_on(async {
            let got = observe(&engine, &rules, logged.len() as u64).await?;
            prop_assert_eq!(
                &got,
                &state,
                "after the restart (from a snapshot: {})",
                from_snapshot
            );
            Ok(())
        });
        let feed_after = retained_feed(&engine);
        engine.shutdown();
        replayed?;
        prop_assert_eq!(
            &feed_after,
            &feed_before,
            "the retained feed and sizes after the restart"
        );
    }
    Ok(())
}

/// What the change feed holds, for resumption, and every segment's size history.
/// Segments the plans define: `s0`..`s3`.
const SEGMENTS: u8 = 4;

/// The feed as `(segment, user, enter, as_of)`, and the size histories.
type Retained = (Vec<(String, String, bool, u64)>, Vec<SizeTrack>);

fn retained_feed(engine: &Arc<Engine>) -> Retained {
    let hub = hub(engine);
    let backlog = hub
        .subscribe(Some((0, u32::MAX)))
        .map(|s| s.backlog)
        .unwrap_or_default();
    let events = backlog
        .iter()
        .map(|e| {
            let (s, u) = hub.describe(e);
            (s, u, e.enter, e.as_of)
        })
        .collect();
    let sizes = (0..SEGMENTS)
        .map(|k| hub.size_history(segment_id(&format!("s{k}"))))
        .collect();
    (events, sizes)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn segments_match_oracle_one_worker(p in plan()) {
        check(&p, 1)?;
    }

    #[test]
    fn segments_match_oracle_three_workers(p in plan()) {
        check(&p, 3)?;
    }
}
