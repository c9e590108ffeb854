//! Oracle test of the profile view: for random event streams with refunds,
//! cancellations, cart removals, late and duplicate events, the profile the engine
//! serves (sequencer, durable log, timely workers, arrangements read by cursor) at
//! every epoch equals a from-scratch computation over the same logged events.
//!
//! After the last epoch the engine is restarted on its log (with another number of
//! workers) and must answer the same.
//!
//! The from-scratch side below shares nothing with the engine but the spec's
//! constants (weights, window widths, RFM buckets): it walks every event ever
//! logged, per user, in sequence order, at every epoch.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use shopstream::config::Config;
use shopstream::event::{Event, Kind, Product, Str};
use shopstream::runtime::{Engine, ProfileRead};
use shopstream_dataflows::profiles::{
    rfm_buckets, weight, Latest, Lifetime, Rank, WindowCounts, Windowed, FACET_BRAND, FACET_CART,
    FACET_CATEGORY, FACET_EVENT, WINDOW_30D, WINDOW_7D,
};
use shopstream_dataflows::types::intern;

const T0: i64 = 1_700_000_000_000;
const USERS: u64 = 6;

/// One generated message, before it becomes an `Event`.
#[derive(Clone, Debug)]
struct Op {
    user: u64,
    kind: u8,
    item: u64,
    price: i64,
    quantity: i64,
    /// Offset from the epoch's base time, in hours (negative: late).
    hours: i64,
    order: u64,
    amount: i64,
    /// Reuse the messageId of an earlier message (a duplicate delivery).
    duplicate_of: Option<usize>,
}

fn op() -> impl Strategy<Value = Op> {
    (
        0..USERS,
        0u8..10,
        0u64..5,
        0i64..5000,
        1i64..4,
        -900i64..30,
        0u64..3,
        0i64..3000,
        prop::option::weighted(0.1, 0usize..1000),
    )
        .prop_map(
            |(user, kind, item, price, quantity, hours, order, amount, duplicate_of)| Op {
                user,
                kind,
                item,
                price,
                quantity,
                hours,
                order,
                amount,
                duplicate_of,
            },
        )
}

/// Epochs: how far the base time moves (hours), and the messages.
fn workload() -> impl Strategy<Value = Vec<(i64, Vec<Op>)>> {
    prop::collection::vec((0i64..200, prop::collection::vec(op(), 0..14)), 1..9)
}

fn kind_of(k: u8) -> (Kind, &'static str) {
    match k {
        0 | 1 => (Kind::ProductViewed, "Product Viewed"),
        2 => (Kind::ProductAdded, "Product Added"),
        3 => (Kind::ProductRemoved, "Product Removed"),
        4 => (Kind::OrderCompleted, "Order Completed"),
        5 => (Kind::OrderRefunded, "Order Refunded"),
        6 => (Kind::OrderCancelled, "Order Cancelled"),
        7 => (Kind::Identify, "identify"),
        8 => (Kind::ProductAddedToWishlist, "Product Added to Wishlist"),
        _ => (Kind::Custom, "Spin The Wheel"),
    }
}

fn event(op: &Op, n: usize, ts: i64, ids: &[u64]) -> Event {
    let (kind, name) = kind_of(op.kind);
    let line = Product {
        id: Str::from(format!("i{}", op.item)),
        category: Some(Str::from(format!("c{}", op.item % 3))),
        brand: op
            .item
            .is_multiple_of(2)
            .then(|| Str::from(format!("b{}", op.item % 4))),
        price: op.price,
        quantity: op.quantity,
    };
    let products = match kind {
        Kind::ProductViewed
        | Kind::ProductAdded
        | Kind::ProductRemoved
        | Kind::ProductAddedToWishlist => vec![line],
        Kind::OrderCompleted => vec![
            line.clone(),
            Product {
                id: Str::from(format!("i{}", (op.item + 1) % 5)),
                ..line
            },
        ],
        _ => vec![],
    };
    let revenue = match kind {
        Kind::OrderCompleted => products.iter().map(|p| p.price * p.quantity).sum(),
        Kind::OrderRefunded | Kind::OrderCancelled => op.amount * (op.amount % 2),
        _ => 0,
    };
    let traits = if kind == Kind::Identify {
        vec![
            (Str::from("plan"), format!("\"p{}\"", op.item % 3)),
            (Str::from("age"), format!("{}", op.price % 90)),
        ]
    } else {
        vec![]
    };
    Event {
        message_id: Some(op.duplicate_of.map_or(ids[n], |d| ids[d % (n + 1)])),
        user: Str::from(format!("u{}", op.user)),
        anonymous: false,
        ts,
        kind,
        name: Str::from(name),
        products,
        revenue,
        order_id: matches!(
            kind,
            Kind::OrderCompleted | Kind::OrderRefunded | Kind::OrderCancelled
        )
        .then(|| Str::from(format!("o{}", op.order))),
        promotion_id: None,
        creative: None,
        experiment_id: None,
        variation_id: None,
        query: None,
        traits,
    }
}

/// The profile of every user, computed from scratch over the logged events at a
/// clock, in the shape the engine's read returns.
fn oracle(logged: &[(u64, Event)], clock: i64) -> BTreeMap<String, ProfileRead> {
    #[derive(Default)]
    struct Order {
        ts: i64,
        amount: i64,
        items: i64,
        refunded: i64,
        cancelled: bool,
    }
    let mut out = BTreeMap::new();
    let users: HashSet<&str> = logged.iter().map(|(_, e)| e.user.as_str()).collect();
    for user in users {
        let mut life = Lifetime::default();
        let mut windows = Windowed::default();
        let mut facets: BTreeMap<(u8, u64), i64> = BTreeMap::new();
        let mut traits: BTreeMap<u64, Latest> = BTreeMap::new();
        let mut orders: HashMap<&str, Order> = HashMap::new();
        for (seq, e) in logged.iter().filter(|(_, e)| e.user == user) {
            life.events += 1;
            life.first_seen = life.first_seen.min(e.ts);
            life.last_seen = life.last_seen.max(e.ts);
            *facets.entry((FACET_EVENT, intern(&e.name))).or_default() += 1;
            let kind = e.kind;
            for p in &e.products {
                let w = weight(kind);
                if w != 0 {
                    if let Some(c) = &p.category {
                        *facets.entry((FACET_CATEGORY, intern(c))).or_default() += w;
                    }
                    if let Some(b) = &p.brand {
                        *facets.entry((FACET_BRAND, intern(b))).or_default() += w;
                    }
                }
            }
            let mut w = WindowCounts::default();
            let mut window_ts = e.ts;
            match e.kind {
                Kind::ProductViewed => w.views = 1,
                Kind::ProductAdded => {
                    w.cart_adds = 1;
                    for p in &e.products {
                        *facets.entry((FACET_CART, intern(&p.id))).or_default() += p.quantity;
                    }
                }
                Kind::ProductRemoved => {
                    for p in &e.products {
                        *facets.entry((FACET_CART, intern(&p.id))).or_default() -= p.quantity;
                    }
                }
                Kind::OrderCompleted => {
                    let items: i64 = e.products.iter().map(|p| p.quantity).sum();
                    for p in &e.products {
                        *facets.entry((FACET_CART, intern(&p.id))).or_default() -= p.quantity;
                    }
                    life.orders += 1;
                    life.items += items;
                    life.revenue += e.revenue;
                    life.last_order_at = life.last_order_at.max(e.ts);
                    w.orders = 1;
                    w.revenue = e.revenue;
                    let id = e.order_id.as_deref().expect("orders have ids");
                    orders.insert(
                        id,
                        Order {
                            ts: e.ts,
                            amount: e.revenue,
                            items,
                            ..Order::default()
                        },
                    );
                }
                Kind::OrderRefunded => {
                    let id = e.order_id.as_deref().expect("refunds have ids");
                    let amount = match orders.get_mut(id) {
                        Some(o) => {
                            let a = if e.revenue > 0 {
                                e.revenue
                            } else {
                                (o.amount - o.refunded).max(0)
                            };
                            o.refunded += a;
                            a
                        }
                        None => e.revenue,
                    };
                    life.refunds += 1;
                    life.refunded += amount;
                    life.revenue -= amount;
                    w.revenue = -amount;
                }
                Kind::OrderCancelled => {
                    life.cancellations += 1;
                    let id = e.order_id.as_deref().expect("cancellations have ids");
                    match orders.get_mut(id) {
                        Some(o) if !o.cancelled => {
                            o.cancelled = true;
                            let remaining = (o.amount - o.refunded).max(0);
                            o.refunded = o.amount;
                            window_ts = o.ts;
                            life.orders -= 1;
                            life.items -= o.items;
                            life.revenue -= remaining;
                            w.orders = -1;
                            w.revenue = -remaining;
                        }
                        Some(_) => {}
                        None => {
                            life.revenue -= e.revenue;
                            w.revenue = -e.revenue;
                        }
                    }
                }
                Kind::Identify => {
                    for (k, v) in &e.traits {
                        let candidate = Latest {
                            ts: e.ts,
                            seq: *seq,
                            value: intern(v),
                        };
                        let slot = traits.entry(intern(k)).or_insert(candidate);
                        if (candidate.ts, candidate.seq) > (slot.ts, slot.seq) {
                            *slot = candidate;
                        }
                    }
                }
                _ => {}
            }
            if window_ts + WINDOW_7D > clock {
                add(&mut windows.d7, &w);
            }
            if window_ts + WINDOW_30D > clock {
                add(&mut windows.d30, &w);
            }
        }
        let mut profile = shopstream_dataflows::profiles::UserProfile {
            lifetime: Some(life),
            windows,
            facets: facets.into_iter().filter(|(_, n)| *n != 0).collect(),
            traits: traits.into_iter().collect(),
        };
        profile.facets.sort_unstable();
        out.insert(
            user.to_string(),
            ProfileRead {
                as_of: Default::default(),
                profile,
                rfm_ranks: None,
            },
        );
    }
    // RFM ranks over every user with orders.
    let buckets: Vec<[i64; 3]> = out
        .values()
        .filter_map(|r| rfm_buckets(r.profile.lifetime.as_ref()?))
        .collect();
    for read in out.values_mut() {
        if let Some(mine) = rfm_buckets(read.profile.lifetime.as_ref().expect("set")) {
            let mut ranks = [Rank::default(); 3];
            for (d, rank) in ranks.iter_mut().enumerate() {
                rank.below = buckets.iter().filter(|b| b[d] < mine[d]).count() as i64;
                rank.equal = buckets.iter().filter(|b| b[d] == mine[d]).count() as i64;
                rank.total = buckets.len() as i64;
            }
            read.rfm_ranks = Some(ranks);
        }
    }
    out
}

fn add(a: &mut WindowCounts, b: &WindowCounts) {
    a.views += b.views;
    a.cart_adds += b.cart_adds;
    a.orders += b.orders;
    a.revenue += b.revenue;
}

/// Runs one workload through a real engine with `workers` workers and compares every
/// user's profile with the oracle after every epoch.
fn check(workload: &[(i64, Vec<Op>)], workers: usize) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config::defaults();
    config.data_dir = dir.path().to_path_buf();
    config.workers = workers;
    config.fsync = shopstream::log::FsyncPolicy::Never;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let engine: Arc<Engine> = Engine::start(config, |_, _| {}).expect("engine starts");
    let total: usize = workload.iter().map(|(_, ops)| ops.len()).sum();
    let ids: Vec<u64> = (0..total.max(1))
        .map(|i| shopstream::event::message_id_hash(&format!("m{i}")))
        .collect();
    let mut logged: Vec<(u64, Event)> = Vec::new();
    let mut seen_ids = HashSet::new();
    let mut clock = i64::MIN;
    let mut base = T0;
    let mut n = 0;
    let result = rt.block_on(async {
        for (advance, ops) in workload {
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
                let got = engine
                    .read_profile(&user, Some(logged.len() as u64))
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
        }
        Ok(())
    });
    engine.shutdown();
    result?;

    // A restart replays the log through the same path: the same answers, with a
    // different number of workers too.
    let mut config = Config::defaults();
    config.data_dir = dir.path().to_path_buf();
    config.workers = 1 + workers % 3;
    config.fsync = shopstream::log::FsyncPolicy::Never;
    let engine: Arc<Engine> = Engine::start(config, |_, _| {}).expect("engine restarts");
    let want = oracle(&logged, clock);
    let replayed = rt.block_on(async {
        for u in 0..USERS {
            let user = format!("u{u}");
            let got = engine.read_profile(&user, None).await.expect("read");
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
