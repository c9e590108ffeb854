//! The random shop streams of the similarity and recommendation oracles (views,
//! clicks, cart adds and removes, wishlist adds, orders, refunds, cancellations,
//! busy days, identity links), their small settings, and the brute-force
//! co-occurrence both compare against.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};

use proptest::prelude::*;
use shopstream::config::Config;
use shopstream::event::{Event, Kind, Product, Str};
use shopstream_dataflows::types::{intern, DAY_MS};
use shopstream_dataflows::views::similarity::Measure;

pub const T0: i64 = 1_700_000_000_000;
pub const KNOWN: usize = 3;
pub const IDS: usize = 6;
pub const ITEMS: u64 = 7;
/// Small settings, so that truncation, expiry, busy days and big orders happen.
pub const HISTORY_ITEMS: usize = 3;
pub const HISTORY_DAYS: i64 = 10;
pub const PER_DAY: u64 = 5;
pub const ORDER_ITEMS: usize = 3;
pub const MAX_IDS: usize = 2;

pub fn id_name(i: usize) -> String {
    super::model::id_name(i, KNOWN)
}

#[derive(Clone, Debug)]
pub enum Step {
    /// `kind`: 0 view, 1 click, 2 cart add, 3 cart remove, 4 wishlist, 5 order,
    /// 6 refund (lines: `items`, none: whole), 7 cancel, 8 order without id.
    Event {
        id: usize,
        kind: u8,
        items: Vec<u64>,
        order: u64,
        hours: i64,
    },
    Link {
        from: usize,
        to: usize,
    },
    /// A busy user: one more view than `PER_DAY` within the same hour; or
    /// (`order`) `PER_DAY - 1` views and an order of two items, which is one
    /// interaction event short of busy (its two items count once).
    Burst {
        id: usize,
        hours: i64,
        order: bool,
    },
}

pub fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        10 => (0..IDS, 0u8..9, prop::collection::vec(0..ITEMS, 0..5), 0u64..4, -400i64..30)
            .prop_map(|(id, kind, items, order, hours)| Step::Event { id, kind, items, order, hours }),
        1 => (KNOWN..IDS, 0..KNOWN).prop_map(|(from, to)| Step::Link { from, to }),
        1 => (0..IDS, -400i64..30, any::<bool>())
            .prop_map(|(id, hours, order)| Step::Burst { id, hours, order }),
    ]
}

/// Epochs: how far the base time moves (hours), and the messages.
pub fn plan() -> impl Strategy<Value = Vec<(i64, Vec<Step>)>> {
    prop::collection::vec((0i64..120, prop::collection::vec(step(), 0..14)), 1..8)
}

/// Product `item` in message `n`: most lines name a category and some a brand,
/// which vary between messages (an item's first one counts).
pub fn product(item: u64, n: usize) -> Product {
    let n = n as u64;
    Product {
        id: Str::from(format!("i{item}")),
        category: (!n.is_multiple_of(3)).then(|| Str::from(format!("c{}", (item + n / 3) % 3))),
        brand: n
            .is_multiple_of(2)
            .then(|| Str::from(format!("b{}", item % 2))),
        price: 100,
        quantity: 1 + (n % 2) as i64,
    }
}

/// The messages of a step, the first numbered `n`.
pub fn messages(step: &Step, n: &mut usize, ts: i64) -> Vec<Event> {
    match step {
        Step::Burst { id, hours, order } => {
            let views = if *order { PER_DAY - 1 } else { PER_DAY + 1 };
            let mut steps: Vec<Step> = (0..views)
                .map(|k| Step::Event {
                    id: *id,
                    kind: 0,
                    items: vec![k % ITEMS],
                    order: 0,
                    hours: *hours,
                })
                .collect();
            if *order {
                steps.push(Step::Event {
                    id: *id,
                    kind: 8,
                    items: vec![1, 2],
                    order: 0,
                    hours: *hours,
                });
            }
            steps
                .iter()
                .enumerate()
                .map(|(k, step)| {
                    *n += 1;
                    message(step, *n, ts + k as i64)
                })
                .collect()
        }
        _ => {
            *n += 1;
            vec![message(step, *n, ts)]
        }
    }
}

pub fn message(step: &Step, n: usize, ts: i64) -> Event {
    let mut e = Event {
        message_id: Some(shopstream::event::message_id_hash(&format!("m{n}"))),
        user: Str::from("nobody"),
        anonymous: false,
        ts,
        kind: Kind::Custom,
        name: Str::from("x"),
        products: Vec::new(),
        revenue: 0,
        order_id: None,
        promotion_id: None,
        creative: None,
        experiment_id: None,
        variation_id: None,
        query: None,
        traits: Vec::new(),
        link: None,
    };
    match step {
        Step::Event {
            id,
            kind,
            items,
            order,
            ..
        } => {
            e.user = Str::from(id_name(*id));
            e.anonymous = *id >= KNOWN;
            let (k, name) = match kind {
                0 => (Kind::ProductViewed, "Product Viewed"),
                1 => (Kind::ProductClicked, "Product Clicked"),
                2 => (Kind::ProductAdded, "Product Added"),
                3 => (Kind::ProductRemoved, "Product Removed"),
                4 => (Kind::ProductAddedToWishlist, "Product Added to Wishlist"),
                5 | 8 => (Kind::OrderCompleted, "Order Completed"),
                6 => (Kind::OrderRefunded, "Order Refunded"),
                _ => (Kind::OrderCancelled, "Order Cancelled"),
            };
            e.kind = k;
            e.name = Str::from(name);
            e.products = match kind {
                // One product for the product events (the first of `items`).
                0..=4 => vec![product(items.first().copied().unwrap_or(0), n)],
                5 | 6 | 8 => items.iter().map(|i| product(*i, n)).collect(),
                _ => Vec::new(),
            };
            if matches!(kind, 5..=7) {
                e.order_id = Some(Str::from(format!("o{order}")));
            }
            e.revenue = e.products.iter().map(|p| p.price).sum();
        }
        Step::Burst { .. } => unreachable!("a burst is several messages"),
        Step::Link { from, to } => {
            e.kind = Kind::Identify;
            e.name = Str::from("identify");
            e.user = Str::from(id_name(*to));
            e.link = Some(Str::from(id_name(*from)));
        }
    }
    e
}

/// The events that put their items into a recent history.
pub fn is_interaction(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::ProductViewed
            | Kind::ProductClicked
            | Kind::ProductAdded
            | Kind::ProductAddedToWishlist
            | Kind::OrderCompleted
    )
}

/// Runs `plan` on an engine with `workers` workers and the configuration
/// `config` gives, snapshotting halfway; after every epoch `compare` checks the
/// engine against the events logged so far and the clock; then again after the
/// restarts of [`check_restarts`](super::model::check_restarts).
pub fn run_plan(
    plan: &[(i64, Vec<Step>)],
    workers: usize,
    config: impl Fn(&std::path::Path, usize) -> Config,
    mut compare: impl FnMut(
        &tokio::runtime::Runtime,
        &shopstream::runtime::Engine,
        &[(u64, Event)],
        i64,
        &'static str,
    ) -> Result<(), TestCaseError>,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = super::model::runtime();
    let engine = super::model::start_engine(config(dir.path(), workers));
    let mut logged: Vec<(u64, Event)> = Vec::new();
    let mut clock = i64::MIN;
    let mut base = T0;
    let mut n = 0;
    let mut live = || -> Result<(), TestCaseError> {
        for (i, (advance, steps)) in plan.iter().enumerate() {
            if i == plan.len() / 2 && engine.readable().done > 0 {
                rt.block_on(engine.snapshot()).expect("snapshot");
            }
            base += advance * 3_600_000;
            let batch: Vec<Event> = steps
                .iter()
                .flat_map(|s| {
                    let hours = match s {
                        Step::Event { hours, .. } | Step::Burst { hours, .. } => *hours,
                        Step::Link { .. } => 0,
                    };
                    messages(s, &mut n, base + hours * 3_600_000)
                })
                .collect();
            if batch.is_empty() {
                continue;
            }
            rt.block_on(engine.submit(batch.clone())).expect("submit");
            for e in batch {
                clock = clock.max(e.ts);
                logged.push((logged.len() as u64 + 1, e));
            }
            compare(&rt, &engine, &logged, clock, "live")?;
        }
        Ok(())
    };
    let result = live();
    engine.shutdown();
    result?;
    super::model::check_restarts(&rt, dir.path(), workers, config, |rt, engine, what| {
        compare(rt, engine, &logged, clock, what)
    })
}

/// Units of one kind: each a set of item names.
pub type Units = Vec<BTreeSet<String>>;

/// The `viewed` units: each canonical user's history at `clock`.
pub fn histories(logged: &[(u64, Event)], clock: i64) -> Units {
    user_histories(logged, clock).into_values().collect()
}

/// Each canonical user's non-empty history at `clock`.
pub fn user_histories(logged: &[(u64, Event)], clock: i64) -> BTreeMap<String, BTreeSet<String>> {
    let owner = super::model::identity_graph(logged, MAX_IDS);
    // Recency `(ts, seq)`; the items of one event by their interned id.
    type Record = ((i64, u64, u64), String);
    let mut records: BTreeMap<String, Vec<Record>> = BTreeMap::new();
    for (seq, e) in logged {
        if !is_interaction(e.kind) || e.ts + HISTORY_DAYS * DAY_MS <= clock {
            continue;
        }
        let user = owner
            .get(e.user.as_str())
            .cloned()
            .unwrap_or_else(|| e.user.to_string());
        let items: BTreeSet<String> = e.products.iter().map(|p| p.id.to_string()).collect();
        for item in items {
            records
                .entry(user.clone())
                .or_default()
                .push(((e.ts, *seq, intern(&item)), item));
        }
    }
    let mut units = BTreeMap::new();
    for (user, mut recs) in records {
        // Interaction events per day: the items of one event count once.
        let mut per_day: HashMap<i64, BTreeSet<u64>> = HashMap::new();
        for ((ts, seq, _), _) in &recs {
            per_day
                .entry(ts.div_euclid(DAY_MS))
                .or_default()
                .insert(*seq);
        }
        if per_day.values().any(|events| events.len() as u64 > PER_DAY) {
            continue;
        }
        recs.sort();
        let mut history = BTreeSet::new();
        for (_, item) in recs.iter().rev() {
            if history.len() == HISTORY_ITEMS {
                break;
            }
            history.insert(item.clone());
        }
        units.insert(user, history);
    }
    units
}

/// The `bought` units: each order's live items.
pub fn orders(logged: &[(u64, Event)]) -> Units {
    #[derive(Default)]
    struct Order {
        items: Option<BTreeSet<String>>,
        refunded: BTreeSet<String>,
        removed: bool,
    }
    let mut book: BTreeMap<String, Order> = BTreeMap::new();
    let mut units = Vec::new();
    for (_, e) in logged {
        let items: BTreeSet<String> = e.products.iter().map(|p| p.id.to_string()).collect();
        match (e.kind, &e.order_id) {
            (Kind::OrderCompleted, None) if items.len() <= ORDER_ITEMS => units.push(items),
            (Kind::OrderCompleted, Some(o)) if !items.is_empty() => {
                let order = book.entry(o.to_string()).or_default();
                if order.items.is_none() {
                    order.items = Some(items);
                }
            }
            (Kind::OrderRefunded, Some(o)) => {
                let order = book.entry(o.to_string()).or_default();
                if items.is_empty() {
                    order.removed = true;
                } else {
                    order.refunded.extend(items);
                }
            }
            (Kind::OrderCancelled, Some(o)) => {
                book.entry(o.to_string()).or_default().removed = true
            }
            _ => {}
        }
    }
    for order in book.into_values() {
        if let Some(items) = order.items {
            if !order.removed && items.len() <= ORDER_ITEMS {
                units.push(items.difference(&order.refunded).cloned().collect());
            }
        }
    }
    units.retain(|u| !u.is_empty());
    units
}

/// Item → (n, [(partner, score, count)] ranked), and N.
pub fn expected(
    units: &Units,
    item: &str,
    measure: Measure,
) -> (i64, i64, Vec<(String, f64, i64)>) {
    let n_of = |a: &str| units.iter().filter(|u| u.contains(a)).count() as i64;
    let na = n_of(item);
    let total = units.len() as i64;
    let mut partners: BTreeMap<String, i64> = BTreeMap::new();
    for u in units.iter().filter(|u| u.contains(item)) {
        for b in u.iter().filter(|b| b.as_str() != item) {
            *partners.entry(b.clone()).or_default() += 1;
        }
    }
    let mut ranked: Vec<(String, f64, i64)> = partners
        .into_iter()
        .map(|(b, c)| {
            let nb = n_of(&b);
            (b, measure.score(c, na, nb, total), c)
        })
        .collect();
    ranked.sort_by(|x, y| {
        y.1.total_cmp(&x.1)
            .then(y.2.cmp(&x.2))
            .then(x.0.as_bytes().cmp(y.0.as_bytes()))
    });
    (na, total, ranked)
}

pub fn config(dir: &std::path::Path, workers: usize) -> Config {
    let mut c = Config::defaults();
    c.data_dir = dir.to_path_buf();
    c.workers = workers;
    c.fsync = shopstream::log::FsyncPolicy::Never;
    c.max_ids_per_user = MAX_IDS;
    c.builtin_segments = false;
    c.similarity.history_items = HISTORY_ITEMS;
    c.similarity.history_days = HISTORY_DAYS as u32;
    c.similarity.max_user_events_per_day = PER_DAY;
    c.similarity.max_order_items = ORDER_ITEMS;
    c
}
