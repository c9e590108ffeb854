//! Oracle test of identity resolution across the views: random streams of
//! anonymous and known visitors' events (orders, refunds, cancellations, cart
//! changes, traits, late and duplicate events), with identity links (identify
//! and alias) arriving before the anonymous events, after them, conflicting,
//! and beyond `identity.max_ids_per_user`. After every step, the profile read by
//! **every** id, the segments of every id and every segment's size must equal a
//! from-scratch computation over the logged events re-keyed by the identity graph
//! of the links logged so far (first link wins, a user is never merged into
//! another, the cap refuses). The change feed, summed, must give the memberships.
//! Then the engine is restarted (from a snapshot taken halfway, and from the
//! whole log) with another number of workers and must answer the same.
//!
//! The model side re-keys the events and hands them to the profile oracle of
//! `tests/util/oracle.rs`, which knows nothing of identities; the graph's rules
//! are written here again, from the README, not taken from `src/identity.rs`.
//!
//! One rule is the engine's and not a re-keying: a refund or cancellation finds
//! an order placed under the id it names (or by an id merged into that id's user
//! by then). The generator's refunds name their own id's orders (order ids are
//! unique to the id that placed them, as a shop's are unique), so both sides
//! agree; `tests/server.rs` drives the story where the signed-in user refunds
//! what the anonymous visitor bought.

#[path = "util/oracle.rs"]
mod model;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use model::{check_restarts, event, identity_graph, op, oracle, runtime, start_engine, Op, T0};
use proptest::prelude::*;
use shopstream::catalog::segments::{segment_id, KIND};
use shopstream::catalog::{Control, Source};
use shopstream::config::Config;
use shopstream::event::{Event, Kind, Str};
use shopstream::runtime::Engine;
use shopstream::serve::profile::ProfileRead;
use shopstream::serve::segments::{self as seg, hub};
use shopstream_dataflows::rules::{Rule, Subject};
use shopstream_dataflows::types::{intern, Sym};

/// Known users `u0..u3`, then anonymous visitors `a0..a5`.
const KNOWN: usize = 4;
const IDS: usize = 10;
/// Small, so that refusals happen.
const MAX_IDS: usize = 2;

fn id_name(i: usize) -> String {
    model::id_name(i, KNOWN)
}

/// One message: an event of id `id`, or a link of `from` to user `to`.
#[derive(Clone, Debug)]
enum Step {
    Event(usize, Op),
    /// An identify (`alias` false) or an alias call linking `from` to `to`.
    Link {
        from: usize,
        to: usize,
        alias: bool,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0..IDS, op()).prop_map(|(id, op)| Step::Event(id, op)),
        // Mostly anonymous ids linked to users; sometimes a user's own id
        // (Segment's alias of an old user id), which may conflict.
        2 => (KNOWN..IDS, 0..KNOWN, any::<bool>())
            .prop_map(|(from, to, alias)| Step::Link { from, to, alias }),
        1 => (0..KNOWN, 0..KNOWN, any::<bool>())
            .prop_filter("a link of two ids", |(f, t, _)| f != t)
            .prop_map(|(from, to, alias)| Step::Link { from, to, alias }),
    ]
}

/// Epochs: how far the base time moves (hours), and the messages.
fn plan() -> impl Strategy<Value = Vec<(i64, Vec<Step>)>> {
    prop::collection::vec((0i64..150, prop::collection::vec(step(), 0..12)), 1..8)
}

const RULES: [&str; 5] = [
    "orders >= 1",
    "windows.7d.views >= 1",
    "cart contains \"i1\"",
    "traits.plan = \"p1\"",
    "rfm.m_score >= 3",
];

/// The message a step sends, numbered `n` (its message id is `ids[n]`).
fn message(step: &Step, n: usize, ts: i64, ids: &[u64]) -> Event {
    match step {
        Step::Event(id, op) => {
            let mut e = event(op, n, ts, ids);
            e.user = Str::from(id_name(*id));
            e.anonymous = *id >= KNOWN;
            // Order ids are unique to the id that placed them.
            if let Some(o) = &e.order_id {
                e.order_id = Some(Str::from(format!("{}-{}", id_name(*id), o)));
            }
            e
        }
        Step::Link { from, to, alias } => {
            let identify = Op {
                user: 0,
                kind: 7,
                item: *from as u64,
                price: *to as i64,
                quantity: 1,
                hours: 0,
                order: 0,
                amount: 0,
                duplicate_of: None,
            };
            let mut e = event(&identify, n, ts, ids);
            if *alias {
                e.kind = Kind::Custom;
                e.name = Str::from("alias");
                e.traits.clear();
            }
            e.user = Str::from(id_name(*to));
            e.link = Some(Str::from(id_name(*from)));
            e
        }
    }
}

/// Every id's expected profile: the canonical user's, from scratch over the
/// re-keyed events.
fn expected(
    logged: &[(u64, Event)],
    clock: i64,
) -> (HashMap<String, String>, BTreeMap<String, ProfileRead>) {
    let owner = identity_graph(logged, MAX_IDS);
    let rekeyed: Vec<(u64, Event)> = logged
        .iter()
        .map(|(seq, e)| {
            let mut e = e.clone();
            if let Some(user) = owner.get(e.user.as_str()) {
                e.user = Str::from(user.as_str());
            }
            (*seq, e)
        })
        .collect();
    (owner, oracle(&rekeyed, clock))
}

fn canonical<'a>(owner: &'a HashMap<String, String>, id: &'a str) -> &'a str {
    owner.get(id).map_or(id, String::as_str)
}

/// Segment → members (canonical user ids), by brute force over the profiles.
fn members(
    rules: &[(String, Rule)],
    profiles: &BTreeMap<String, ProfileRead>,
    clock: i64,
    names: &HashMap<Sym, String>,
) -> BTreeMap<String, BTreeSet<String>> {
    let resolve = |a: Sym, b: Sym| names.get(&a).cmp(&names.get(&b));
    let mut out = BTreeMap::new();
    for (name, rule) in rules {
        let set: &mut BTreeSet<String> = out.entry(name.clone()).or_default();
        for (user, p) in profiles {
            let subject = Subject {
                profile: &p.profile,
                scores: p.rfm_ranks.map(|r| r.map(|x| x.score())),
                clock,
                name_order: &resolve,
            };
            if rule.eval(&subject) {
                set.insert(user.clone());
            }
        }
    }
    out
}

/// Compares what the engine answers for every id at `seq` with the model.
async fn compare(
    engine: &Engine,
    logged: &[(u64, Event)],
    clock: i64,
    rules: &[(String, Rule)],
    names: &HashMap<Sym, String>,
    what: &str,
) -> Result<(), TestCaseError> {
    let seq = logged.len() as u64;
    let (owner, want) = expected(logged, clock);
    let want_members = members(rules, &want, clock, names);
    for i in 0..IDS {
        let id = id_name(i);
        let user = canonical(&owner, &id);
        let got = shopstream::serve::profile::read(engine, &id, Some(seq))
            .await
            .expect("read");
        prop_assert_eq!(got.as_of.seq, seq);
        let got_user = got
            .identity
            .as_ref()
            .map_or(id.as_str(), |x| x.canonical.as_str());
        prop_assert_eq!(got_user, user, "{}: canonical of {} at {}", what, id, seq);
        match want.get(user) {
            None => prop_assert!(
                got.profile.lifetime.is_none(),
                "{}: {} ({}) should be unknown at {}: {:?}",
                what,
                id,
                user,
                seq,
                got.profile
            ),
            Some(w) => {
                prop_assert_eq!(
                    &got.profile,
                    &w.profile,
                    "{}: {} ({}) at {}",
                    what,
                    id,
                    user,
                    seq
                );
                prop_assert_eq!(
                    got.rfm_ranks,
                    w.rfm_ranks,
                    "{}: rfm of {} at {}",
                    what,
                    id,
                    seq
                );
            }
        }
        let (_, segments, _) = seg::user_segments(engine, &id, Some(seq), None)
            .await
            .expect("user segments");
        let got_in: BTreeSet<String> = segments
            .iter()
            .map(|(s, _)| engine.catalog().name(KIND, *s).expect("defined"))
            .collect();
        let want_in: BTreeSet<String> = want_members
            .iter()
            .filter(|(_, m)| m.contains(user))
            .map(|(s, _)| s.clone())
            .collect();
        prop_assert_eq!(
            got_in,
            want_in,
            "{}: segments of {} ({}) at {}",
            what,
            id,
            user,
            seq
        );
    }
    for (name, m) in &want_members {
        let (_, size) = seg::segment_size(engine, segment_id(name), Some(seq), None)
            .await
            .expect("size");
        prop_assert_eq!(
            size as usize,
            m.len(),
            "{}: size of {} at {}",
            what,
            name,
            seq
        );
    }
    Ok(())
}

fn config(dir: &std::path::Path, workers: usize) -> Config {
    let mut c = Config::defaults();
    c.data_dir = dir.to_path_buf();
    c.workers = workers;
    c.fsync = shopstream::log::FsyncPolicy::Never;
    c.max_ids_per_user = MAX_IDS;
    c
}

fn check(plan: &[(i64, Vec<Step>)], workers: usize) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let engine = start_engine(config(dir.path(), workers));
    let mut feed = hub(&engine).subscribe(None).expect("subscribe").live;
    let mut names: HashMap<Sym, String> = HashMap::new();
    for s in [
        "c0", "c1", "c2", "b0", "b1", "b2", "b3", "i0", "i1", "i2", "i3", "i4",
    ] {
        names.insert(intern(s), s.to_owned());
    }
    let rules: Vec<(String, Rule)> = RULES
        .iter()
        .enumerate()
        .map(|(k, r)| (format!("s{k}"), Rule::compile(r, 2).expect("valid rule")))
        .collect();
    let total: usize = plan.iter().map(|(_, s)| s.len()).sum();
    let ids: Vec<u64> = (0..total.max(1))
        .map(|i| shopstream::event::message_id_hash(&format!("m{i}")))
        .collect();
    let mut logged: Vec<(u64, Event)> = Vec::new();
    let mut seen = HashSet::new();
    let mut clock = i64::MIN;
    let mut base = T0;
    let mut n = 0;
    let result = rt.block_on(async {
        for (k, rule) in RULES.iter().enumerate() {
            let c = Control::put(KIND, format!("s{k}"), (*rule).to_owned(), Source::Api);
            engine.define(vec![c]).await.expect("define");
        }
        for (i, (advance, steps)) in plan.iter().enumerate() {
            if i == plan.len() / 2 && engine.readable().done > 0 {
                engine.snapshot().await.expect("snapshot");
            }
            base += advance * 3_600_000;
            let mut batch = Vec::new();
            for s in steps {
                let hours = match s {
                    Step::Event(_, op) => op.hours,
                    Step::Link { .. } => 0,
                };
                batch.push(message(s, n, base + hours * 3_600_000, &ids));
                n += 1;
            }
            if batch.is_empty() {
                continue;
            }
            engine.submit(batch.clone()).await.expect("submit");
            for e in batch {
                if seen.insert(e.message_id.expect("set")) {
                    clock = clock.max(e.ts);
                    logged.push((logged.len() as u64 + 1, e));
                }
            }
            compare(&engine, &logged, clock, &rules, &names, "live").await?;
        }
        // The feed, summed per (segment, user), is the final membership: every
        // merged id's exits were published with its user's enters.
        let last = engine.readable();
        while hub(&engine).published_through() < last.done {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let mut net: BTreeMap<(String, String), i64> = BTreeMap::new();
        while let Ok(epoch) = feed.try_recv() {
            for e in epoch.iter() {
                let key = hub(&engine).describe(e);
                *net.entry(key).or_default() += if e.enter { 1 } else { -1 };
            }
        }
        net.retain(|_, n| *n != 0);
        let (_, want) = expected(&logged, clock);
        let mut want_net = BTreeMap::new();
        for (s, m) in members(&rules, &want, clock, &names) {
            for u in m {
                want_net.insert((s.clone(), u), 1);
            }
        }
        prop_assert_eq!(net, want_net, "the feed, summed");
        Ok(())
    });
    engine.shutdown();
    result?;

    check_restarts(&rt, dir.path(), workers, config, |rt, engine, what| {
        rt.block_on(compare(engine, &logged, clock, &rules, &names, what))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn identities_match_oracle_one_worker(p in plan()) {
        check(&p, 1)?;
    }

    #[test]
    fn identities_match_oracle_three_workers(p in plan()) {
        check(&p, 3)?;
    }
}
