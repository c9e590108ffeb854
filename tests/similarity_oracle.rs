//! Oracle test of the similarity view: random streams of views, clicks, cart
//! adds and removes, wishlist adds, orders (some over the size limit, some
//! without an order id), partial and whole refunds and cancellations (some
//! before their order), late events, busy days, and identity links. After every
//! step, for every item, both kinds and every measure, the engine's ranked
//! answer (items, scores, counts), `n(item)` and `N` must equal a brute-force
//! computation over the logged events re-keyed by the identity graph so far;
//! then again after a restart from a snapshot and from the whole log, with
//! another number of workers.
//!
//! The model is written from the README's definitions; it shares with the
//! engine only `Measure::score` (the arithmetic of a measure from four integers,
//! tested against Mahout's values in the view's unit tests), so that scores can
//! be compared exactly.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

#[path = "util/oracle.rs"]
mod model;

use model::{check_restarts, identity_graph, runtime, start_engine};
use proptest::prelude::*;
use shopstream::config::Config;
use shopstream::event::{Event, Kind, Product, Str};
use shopstream::runtime::Engine;
use shopstream_dataflows::types::{intern, DAY_MS};
use shopstream_dataflows::views::similarity::{Measure, BOUGHT, VIEWED};

const T0: i64 = 1_700_000_000_000;
const KNOWN: usize = 3;
const IDS: usize = 6;
const ITEMS: u64 = 7;
/// Small settings, so that truncation, expiry, busy days and big orders happen.
const HISTORY_ITEMS: usize = 3;
const HISTORY_DAYS: i64 = 10;
const PER_DAY: u64 = 5;
const ORDER_ITEMS: usize = 3;
const MAX_IDS: usize = 2;

fn id_name(i: usize) -> String {
    model::id_name(i, KNOWN)
}

#[derive(Clone, Debug)]
enum Step {
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

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        10 => (0..IDS, 0u8..9, prop::collection::vec(0..ITEMS, 0..5), 0u64..4, -400i64..30)
            .prop_map(|(id, kind, items, order, hours)| Step::Event { id, kind, items, order, hours }),
        1 => (KNOWN..IDS, 0..KNOWN).prop_map(|(from, to)| Step::Link { from, to }),
        1 => (0..IDS, -400i64..30, any::<bool>())
            .prop_map(|(id, hours, order)| Step::Burst { id, hours, order }),
    ]
}

/// Epochs: how far the base time moves (hours), and the messages.
fn plan() -> impl Strategy<Value = Vec<(i64, Vec<Step>)>> {
    prop::collection::vec((0i64..120, prop::collection::vec(step(), 0..14)), 1..8)
}

fn product(item: u64) -> Product {
    Product {
        id: Str::from(format!("i{item}")),
        category: None,
        brand: None,
        price: 100,
        quantity: 1,
    }
}

/// The messages of a step, the first numbered `n`.
fn messages(step: &Step, n: &mut usize, ts: i64) -> Vec<Event> {
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

fn message(step: &Step, n: usize, ts: i64) -> Event {
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
                0..=4 => vec![product(items.first().copied().unwrap_or(0))],
                5 | 6 | 8 => items.iter().map(|i| product(*i)).collect(),
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

/// Units of one kind: each a set of item names.
type Units = Vec<BTreeSet<String>>;

/// The `viewed` units: each canonical user's history at `clock`.
fn histories(logged: &[(u64, Event)], clock: i64) -> Units {
    let owner = identity_graph(logged, MAX_IDS);
    // Recency `(ts, seq)`; the items of one event by their interned id.
    type Record = ((i64, u64, u64), String);
    let mut records: BTreeMap<String, Vec<Record>> = BTreeMap::new();
    for (seq, e) in logged {
        let interaction = matches!(
            e.kind,
            Kind::ProductViewed
                | Kind::ProductClicked
                | Kind::ProductAdded
                | Kind::ProductAddedToWishlist
                | Kind::OrderCompleted
        );
        if !interaction || e.ts + HISTORY_DAYS * DAY_MS <= clock {
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
    let mut units = Vec::new();
    for (_, mut recs) in records {
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
        units.push(history);
    }
    units
}

/// The `bought` units: each order's live items.
fn orders(logged: &[(u64, Event)]) -> Units {
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
fn expected(units: &Units, item: &str, measure: Measure) -> (i64, i64, Vec<(String, f64, i64)>) {
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

/// The expected bundles of `given`: the items (not given) in a unit with every
/// given item, by the sum of their counts with them, then the least count, then
/// name; `Err` naming the first given item never seen.
fn expected_bundles(
    units: &Units,
    given: &[String],
    seen: &HashSet<String>,
) -> Result<Vec<(String, f64, i64)>, String> {
    if let Some(unseen) = given.iter().find(|g| !seen.contains(*g)) {
        return Err(unseen.clone());
    }
    let mut totals: BTreeMap<String, (i64, i64, usize)> = BTreeMap::new();
    for g in given {
        let mut with: BTreeMap<String, i64> = BTreeMap::new();
        for u in units.iter().filter(|u| u.contains(g)) {
            for b in u.iter().filter(|b| *b != g) {
                *with.entry(b.clone()).or_default() += 1;
            }
        }
        for (b, c) in with {
            let t = totals.entry(b).or_insert((0, i64::MAX, 0));
            *t = (t.0 + c, t.1.min(c), t.2 + 1);
        }
    }
    let mut out: Vec<(String, f64, i64)> = totals
        .into_iter()
        .filter(|(b, t)| t.2 == given.len() && !given.contains(b))
        .map(|(b, (sum, least, _))| (b, sum as f64, least))
        .collect();
    out.sort_by(|x, y| {
        y.1.total_cmp(&x.1)
            .then(y.2.cmp(&x.2))
            .then(x.0.as_bytes().cmp(y.0.as_bytes()))
    });
    out.truncate(10);
    Ok(out)
}

async fn compare(
    engine: &Engine,
    logged: &[(u64, Event)],
    clock: i64,
    what: &str,
) -> Result<(), TestCaseError> {
    let seq = logged.len() as u64;
    let seen: HashSet<String> = logged
        .iter()
        .flat_map(|(_, e)| e.products.iter().map(|p| p.id.to_string()))
        .collect();
    let bought = orders(logged);
    for i in 0..ITEMS {
        for given in [
            vec![format!("i{i}")],
            vec![format!("i{i}"), format!("i{}", (i + 1) % ITEMS)],
        ] {
            let got = shopstream::serve::similarity::bundles(engine, &given, 10, Some(seq))
                .await
                .expect("bundles");
            prop_assert_eq!(got.as_of.seq, seq);
            let got = got.bundles.map(|list| {
                list.iter()
                    .map(|(b, s, c)| (engine.symbols.resolve(*b).expect("named"), *s, *c))
                    .collect::<Vec<_>>()
            });
            let want = expected_bundles(&bought, &given, &seen);
            prop_assert_eq!(got, want, "{}: bundles of {:?} at {}", what, given, seq);
        }
    }
    for (kind, units) in [(VIEWED, histories(logged, clock)), (BOUGHT, bought)] {
        for i in 0..ITEMS {
            let item = format!("i{i}");
            for measure in Measure::ALL {
                let got = shopstream::serve::similarity::read(
                    engine,
                    &item,
                    kind,
                    measure,
                    10,
                    Some(seq),
                )
                .await
                .expect("read");
                prop_assert_eq!(got.as_of.seq, seq);
                prop_assert_eq!(
                    got.similar.seen,
                    seen.contains(&item),
                    "{}: seen {}",
                    what,
                    item
                );
                let (n, total, want) = expected(&units, &item, measure);
                let got_list: Vec<(String, f64, i64)> = got
                    .similar
                    .similar
                    .iter()
                    .map(|(b, s, c)| (engine.symbols.resolve(*b).expect("named"), *s, *c))
                    .collect();
                prop_assert_eq!(
                    (got.similar.n, got.similar.units, &got_list),
                    (n, total, &want),
                    "{}: kind {} item {} by {:?} at {}; units {:?}",
                    what,
                    kind,
                    item,
                    measure,
                    seq,
                    units
                );
            }
        }
    }
    Ok(())
}

fn config(dir: &std::path::Path, workers: usize) -> Config {
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

fn check(plan: &[(i64, Vec<Step>)], workers: usize) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let engine = start_engine(config(dir.path(), workers));
    let mut logged: Vec<(u64, Event)> = Vec::new();
    let mut clock = i64::MIN;
    let mut base = T0;
    let mut n = 0;
    let result: Result<(), TestCaseError> = rt.block_on(async {
        for (i, (advance, steps)) in plan.iter().enumerate() {
            if i == plan.len() / 2 && engine.readable().done > 0 {
                engine.snapshot().await.expect("snapshot");
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
            engine.submit(batch.clone()).await.expect("submit");
            for e in batch {
                clock = clock.max(e.ts);
                logged.push((logged.len() as u64 + 1, e));
            }
            compare(&engine, &logged, clock, "live").await?;
        }
        Ok(())
    });
    engine.shutdown();
    result?;
    check_restarts(&rt, dir.path(), workers, config, |rt, engine, what| {
        rt.block_on(compare(engine, &logged, clock, what))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn similarity_matches_oracle_one_worker(p in plan()) {
        check(&p, 1)?;
    }

    #[test]
    fn similarity_matches_oracle_three_workers(p in plan()) {
        check(&p, 3)?;
    }
}
