//! The from-scratch profile oracle and the random workloads shared by the oracle
//! tests (profiles, segments).
//!
//! The from-scratch side shares nothing with the engine but the spec's
//! constants (weights, window widths, RFM buckets): it walks every event ever
//! logged, per user, in sequence order.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};

use proptest::prelude::*;
use shopstream::event::{Event, Kind, Product, Str};
use shopstream::serve::profile::ProfileRead;
use shopstream_dataflows::types::intern;
use shopstream_dataflows::views::profiles::{
    rfm_buckets, weight, Latest, Lifetime, Rank, WindowCounts, Windowed, FACET_BRAND, FACET_CART,
    FACET_CATEGORY, FACET_EVENT, WINDOW_30D, WINDOW_7D,
};

pub const T0: i64 = 1_700_000_000_000;
pub const USERS: u64 = 6;

/// One generated message, before it becomes an `Event`.
#[derive(Clone, Debug)]
pub struct Op {
    pub user: u64,
    pub kind: u8,
    pub item: u64,
    pub price: i64,
    pub quantity: i64,
    /// Offset from the epoch's base time, in hours (negative: late).
    pub hours: i64,
    pub order: u64,
    pub amount: i64,
    /// Reuse the messageId of an earlier message (a duplicate delivery).
    pub duplicate_of: Option<usize>,
}

pub fn op() -> impl Strategy<Value = Op> {
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
pub fn workload() -> impl Strategy<Value = Vec<(i64, Vec<Op>)>> {
    prop::collection::vec((0i64..200, prop::collection::vec(op(), 0..14)), 1..9)
}

pub fn kind_of(k: u8) -> (Kind, &'static str) {
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

pub fn event(op: &Op, n: usize, ts: i64, ids: &[u64]) -> Event {
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
        link: None,
    }
}

/// The profile of every user, computed from scratch over the logged events at a
/// clock, in the shape the engine's read returns.
pub fn oracle(logged: &[(u64, Event)], clock: i64) -> BTreeMap<String, ProfileRead> {
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
                    if e.ts > life.last_order_at {
                        life.prev_order_at = life.last_order_at;
                        life.last_order_at = e.ts;
                    } else if e.ts < life.last_order_at && e.ts > life.prev_order_at {
                        life.prev_order_at = e.ts;
                    }
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
        let mut profile = shopstream_dataflows::views::profiles::UserProfile {
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
                identity: None,
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

pub fn add(a: &mut WindowCounts, b: &WindowCounts) {
    a.views += b.views;
    a.cart_adds += b.cart_adds;
    a.orders += b.orders;
    a.revenue += b.revenue;
}

/// The tokio runtime an oracle test reads through (two threads, as small as the
/// engine's reads need).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// An engine with every view, on `config`.
pub fn start_engine(
    config: shopstream::config::Config,
) -> std::sync::Arc<shopstream::runtime::Engine> {
    shopstream::runtime::Engine::start(config, &shopstream::serve::all_hosts(), |_, _| {})
        .expect("engine starts")
}

/// Id `i` of a stream of `known` users `u0..` followed by anonymous visitors `a0..`.
pub fn id_name(i: usize, known: usize) -> String {
    if i < known {
        format!("u{i}")
    } else {
        format!("a{}", i - known)
    }
}

/// The identity graph of the links in `logged`, by the README's rules, written
/// here again rather than taken from `src/identity.rs`: each merged id → its
/// user. The first link of an id wins; an id that is a user (the target of a
/// link) is never merged; a user takes at most `max_ids` ids.
pub fn identity_graph(logged: &[(u64, Event)], max_ids: usize) -> HashMap<String, String> {
    let mut owner: HashMap<String, String> = HashMap::new();
    let mut users: HashSet<String> = HashSet::new();
    let mut count: HashMap<String, usize> = HashMap::new();
    for (_, e) in logged {
        let Some(from) = &e.link else { continue };
        let (from, to) = (from.to_string(), e.user.to_string());
        users.insert(to.clone());
        if owner.contains_key(&from) || users.contains(&from) || owner.contains_key(&to) {
            continue; // the same link again, or a conflict
        }
        let n = count.entry(to.clone()).or_default();
        if *n >= max_ids {
            continue; // refused
        }
        *n += 1;
        owner.insert(from, to);
    }
    owner
}

/// Restarts an engine on the data of one that was stopped, twice, each with the
/// configuration `config` gives for its number of workers (another one than
/// `workers`): from its newest snapshot, then from the whole log (the snapshots
/// removed). `compare` checks each, told which it is.
pub fn check_restarts(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    workers: usize,
    config: impl Fn(&std::path::Path, usize) -> shopstream::config::Config,
    mut compare: impl FnMut(
        &tokio::runtime::Runtime,
        &shopstream::runtime::Engine,
        &'static str,
    ) -> Result<(), TestCaseError>,
) -> Result<(), TestCaseError> {
    for from_snapshot in [true, false] {
        if !from_snapshot {
            let _ = std::fs::remove_dir_all(dir.join(shopstream::snapshot::DIR));
        }
        let engine = start_engine(config(dir, 1 + workers % 3));
        let what = if from_snapshot {
            "from the snapshot"
        } else {
            "replayed"
        };
        let again = compare(rt, &engine, what);
        engine.shutdown();
        again?;
    }
    Ok(())
}
