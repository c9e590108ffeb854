//! # Interaction signals: popularity, trends and the inputs of recommendations
//!
//! Specification, at every epoch `E` with engine clock `c(E)`, for each window
//! `W` of [`WINDOWS`] (1, 7 and 30 days, and all time):
//!
//! * A *signal* is one line of an interaction, classed: `Product Viewed` (view),
//!   `Product Clicked` (click), `Product Added to Wishlist` (wishlist), `Product
//!   Added` (cart), `Product Removed` (removed), the distinct items of an `Order
//!   Completed` (purchase) and refunded items (refunded), of the event's user.
//!   Orders with an order id go through the order book, as in the similarity
//!   view: the first `Order Completed` of an id counts, its items less those
//!   refunded before it came (none if it was cancelled or refunded whole
//!   before); an `Order Refunded` naming products refunds those still live in the
//!   order, one without products or an `Order Cancelled` every item still live;
//!   a refund is a signal of the *order's* user, at the refund's time. The book
//!   remembers the last `engine.order_horizon` orders per worker. A refund or
//!   cancellation without an order id changes nothing. A signal is in `W` while
//!   `ts + W > c(E)`.
//! * For a user `u` (canonical, as everywhere) and an item `i`, the *live classes*
//!   in `W` are view, click and wishlist when `u` has such a signal of `i` in `W`;
//!   cart when `u`'s cart signals of `i` in `W` outnumber the removed ones;
//!   purchase when the purchases outnumber the refunds. The *strength* of `(u, i)`
//!   in `W` is the greatest weight (`[recommend] weights`) of a live class.
//! * `popularity(W, i)` = Σ over users of their strength with `i` in `W`: distinct
//!   users, each weighted by what they did (a user who viewed an item fifty times
//!   counts once; one who bought it counts as a purchase).
//! * An item's category is that of the first line (in log order) that named the
//!   item with a category; its brand likewise.
//!
//! ## How it is maintained
//!
//! The [`RecommendFeeder`] turns signals into records `((user, item), (window,
//! class))`, one per window the signal is still in, and retracts them from each
//! finite window when the clock reaches `ts + W` (a scheduled exit, as the
//! profile windows leave). View, click and wishlist count by presence, so the
//! feeder keeps one record per `(user, item, class)` and window, moved on by
//! later signals (a repeated view costs no update); cart, removal, purchase and
//! refund records count one per signal (see `feeder.rs`). On the user's owner,
//! one operator (`live_classes`: time is an epoch number, totally ordered, so
//! it needs no general reduction) turns each `(user, item)`'s counts into the live
//! classes of each window (a bit mask) and says when they change; the changes of
//! strength, as the difference of `(window, item)`, sum into the popularity
//! arrangement on the item's owner (a monoid: no reduction over an item's
//! users). Categories and brands are claimed by each worker on
//! first sight, replicated to every worker, and read as the earliest claim.
//!
//! Reads of popularity scan the window's items on every worker (each its own)
//! and keep the ranked first [`POPULAR_CACHE`] per `(window, category, brand)`
//! for the epoch read, so a page of popular items is a lookup after the first.
//! A read by category alone (what a recommendation for a new user asks, by the
//! user's top category) or by brand alone ranks every category (brand) of the
//! window in the one scan, so that an epoch costs one scan per window and
//! attribute, not one per category asked.

use std::collections::HashMap;
use std::rc::Rc;

use differential_dataflow::input::InputSession;
use differential_dataflow::operators::arrange::Arranged;
use differential_dataflow::trace::cursor::Cursor;
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::operators::Probe;

use crate::operators::after_trace;
use crate::read::{
    arrange_by_key_at, arrange_by_self_at, arrange_local_by_key, compact, cursor_at, for_each_val,
};
use crate::read_key_at;
use crate::types::*;
use crate::view::{
    decode_part, encode_part, Env, EpochBatch, Names, Place, ReadCtx, RestoreError, View,
};
use crate::views::similarity::{rank, Scored};

mod feeder;

use feeder::FeederState;
pub use feeder::RecommendFeeder;

/// A window: an index into [`WINDOWS`], or [`ALL_TIME`].
pub type Window = u8;
/// The finite windows, in days: 1, 7, 30.
pub const WINDOWS: [Millis; 3] = [DAY_MS, 7 * DAY_MS, 30 * DAY_MS];
/// The window without end.
pub const ALL_TIME: Window = 3;
/// The 1-day window.
pub const DAY: Window = 0;
/// The 7-day window.
pub const WEEK: Window = 1;
/// The 30-day window.
pub const MONTH: Window = 2;

/// What a signal is: an index into the weights for the first five.
pub type Class = u8;
pub const VIEW: Class = 0;
pub const CLICK: Class = 1;
pub const WISHLIST: Class = 2;
pub const CART: Class = 3;
pub const PURCHASE: Class = 4;
pub const REMOVED: Class = 5;
pub const REFUNDED: Class = 6;

/// The live classes of a `(user, item)` in a window, one bit per class below
/// [`REMOVED`].
pub type Mask = u8;

/// The masks of one `(user, item)`, per window (`0`: nothing live).
pub type Masks = [Mask; 4];

/// What the view is configured with (`[recommend]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecommendSettings {
    /// Off: nothing is fed.
    pub enabled: bool,
    /// Weights of view, click, wishlist, cart, purchase.
    pub weights: [i64; 5],
    /// Orders remembered per worker for whole refunds and cancellations.
    pub order_horizon: usize,
}

impl Default for RecommendSettings {
    fn default() -> Self {
        RecommendSettings {
            enabled: true,
            weights: [1, 2, 2, 3, 5],
            order_horizon: 1_000_000,
        }
    }
}

impl RecommendSettings {
    /// The greatest weight of the classes in `mask` (0 for none).
    pub fn strength(&self, mask: Mask) -> i64 {
        (0..5)
            .filter(|c| mask & (1 << c) != 0)
            .map(|c| self.weights[c])
            .max()
            .unwrap_or(0)
    }
}

/// The live classes from one window's signal counts per class.
pub fn live(counts: &[i64; 7]) -> Mask {
    let mut mask = 0;
    for c in [VIEW, CLICK, WISHLIST] {
        if counts[c as usize] > 0 {
            mask |= 1 << c;
        }
    }
    if counts[CART as usize] > counts[REMOVED as usize] {
        mask |= 1 << CART;
    }
    if counts[PURCHASE as usize] > counts[REFUNDED as usize] {
        mask |= 1 << PURCHASE;
    }
    mask
}

/// A signal record: `((user, item), (window, class))`.
pub type Signal = ((UserId, ItemId), (Window, Class));

/// A change of live classes: `((user, item), (window, before, after))`.
pub type MaskChange = ((UserId, ItemId), (Window, Mask, Mask));

/// A replicated attribute claim: `(worker, item, attribute)` → `(seq, value)`;
/// attribute [`CATEGORY`] or [`BRAND`].
type AttrKey = (u32, ItemId, u8);
type AttrVal = (u64, Sym);
/// The attributes of an item.
pub const CATEGORY: u8 = 0;
pub const BRAND: u8 = 1;

/// The inputs, fed by the [`RecommendFeeder`].
pub struct RecommendInputs {
    /// `((user, item), (window, class))`, exchanged to the user's owner.
    pub signals: InputSession<Time, Signal, Diff>,
    /// Category and brand claims, one per worker of the view.
    pub attrs: InputSession<Time, (AttrKey, AttrVal), Diff>,
}

impl RecommendInputs {
    fn advance_to(&mut self, t: Time) {
        self.signals.advance_to(t);
        self.attrs.advance_to(t);
    }
    fn flush(&mut self) {
        self.signals.flush();
        self.attrs.flush();
    }
}

/// The arrangements of the view.
pub struct RecommendArrangements<'scope> {
    /// `((user, item), (window, mask))`, on the user's owner.
    pub masks: Arranged<'scope, ValTrace<(UserId, ItemId), (Window, Mask)>>,
    /// `(window, item)` with its popularity, on the item's owner.
    pub popularity: Arranged<'scope, KeyTrace<(Window, ItemId)>>,
    /// `((worker, item), (seq, category, brand))`, on every worker.
    pub attrs: Arranged<'scope, ValTrace<AttrKey, AttrVal>>,
}

/// The changes of the live classes of each `(user, item)` from its signal
/// counts, as `((user, item), (window, mask before, mask after))`: for totally
/// ordered time (an
/// epoch), the counts before a batch come from the signals' trace and the
/// batch's updates are applied in time order, each time's mask changes given as
/// they happen (as differential's `count_total` does). Cheaper than a general
/// reduction, which keeps its own output trace and replays a key's history.
fn live_classes<'scope>(
    signals: Arranged<'scope, ValTrace<(UserId, ItemId), (Window, Class)>>,
) -> VecCollection<'scope, Time, MaskChange, Diff> {
    use differential_dataflow::trace::cursor::{cursor_list, Cursor};

    let mut updates: Vec<(Time, Window, Class, Diff)> = Vec::new();
    after_trace(
        signals,
        "Recommend: live classes",
        move |bc, bs, before, out| {
            let (mut tc, ts) = cursor_list(before);
            while let Some(key) = bc.get_key(bs) {
                let mut counts = [[0i64; 7]; 4];
                tc.seek_key(&ts, key);
                if tc.get_key(&ts) == Some(key) {
                    while let Some(&(w, c)) = tc.get_val(&ts) {
                        tc.map_times(&ts, |_, d| counts[w as usize][c as usize] += *d);
                        tc.step_val(&ts);
                    }
                }
                updates.clear();
                while let Some(&(w, c)) = bc.get_val(bs) {
                    bc.map_times(bs, |t, d| updates.push((*t, w, c, *d)));
                    bc.step_val(bs);
                }
                updates.sort_unstable_by_key(|u| u.0);
                let mut i = 0;
                while i < updates.len() {
                    let t = updates[i].0;
                    let before = window_masks(&counts);
                    while i < updates.len() && updates[i].0 == t {
                        let (_, w, c, d) = updates[i];
                        counts[w as usize][c as usize] += d;
                        i += 1;
                    }
                    let after = window_masks(&counts);
                    for w in 0..4u8 {
                        let (b, a) = (before[w as usize], after[w as usize]);
                        if b != a {
                            out.push(((*key, (w, b, a)), t, 1));
                        }
                    }
                }
                bc.step_key(bs);
            }
        },
    )
}

/// The live classes of each window from a `(user, item)`'s signal counts.
fn window_masks(counts: &[[i64; 7]; 4]) -> Masks {
    [
        live(&counts[0]),
        live(&counts[1]),
        live(&counts[2]),
        live(&counts[3]),
    ]
}

/// The dataflow: masks, popularity, attributes.
pub fn recommend<'scope>(
    scope: timely::dataflow::Scope<'scope, Time>,
    inputs: &mut RecommendInputs,
    settings: RecommendSettings,
) -> RecommendArrangements<'scope> {
    let peers = scope.peers();
    let signals = arrange_by_key_at(
        inputs.signals.to_collection(scope),
        move |k: &(UserId, ItemId)| owner(k.0, peers) as u64,
        "Recommend: signals",
    );
    let changes = live_classes(signals);
    let masks = arrange_local_by_key(
        changes.clone().explode(|(k, (w, before, after))| {
            let out = [((k, (w, before)), -1), ((k, (w, after)), 1)];
            out.into_iter().filter(|((_, (_, m)), _)| *m != 0)
        }),
        "Recommend: live classes",
    );
    // A user's strength with an item changes less often than the classes: only
    // the changes of strength travel to the item's owner.
    let strengths = changes.explode(move |((_u, i), (w, before, after))| {
        let d = settings.strength(after) - settings.strength(before);
        (d != 0).then_some(((w, i), d))
    });
    let popularity = arrange_by_self_at(
        strengths,
        move |k: &(Window, ItemId)| owner(k.1, peers) as u64,
        "Recommend: popularity",
    );
    let attrs = arrange_by_key_at(
        inputs.attrs.to_collection(scope),
        |k: &AttrKey| u64::from(k.0),
        "Recommend: item attributes",
    );
    RecommendArrangements {
        masks,
        popularity,
        attrs,
    }
}

/// Handles on the view's traces.
pub struct RecommendTraces {
    pub masks: ValTrace<(UserId, ItemId), (Window, Mask)>,
    pub popularity: KeyTrace<(Window, ItemId)>,
    pub attrs: ValTrace<AttrKey, AttrVal>,
}

/// Builds the view in `scope`, probed by `probe`.
pub fn build<'scope>(
    scope: timely::dataflow::Scope<'scope, Time>,
    env: &Env,
    probe: &ProbeHandle<Time>,
) -> (RecommendView, ()) {
    let settings = env.get::<RecommendSettings>().unwrap_or_default();
    let names = env.expect::<Names>();
    let place = Place {
        worker: scope.index(),
        peers: scope.peers(),
    };
    let mut inputs = RecommendInputs {
        signals: InputSession::new(),
        attrs: InputSession::new(),
    };
    let a = recommend(scope, &mut inputs, settings);
    a.masks.stream.clone().probe_with(probe);
    a.popularity.stream.clone().probe_with(probe);
    a.attrs.stream.clone().probe_with(probe);
    let view = RecommendView {
        inputs,
        traces: RecommendTraces {
            masks: a.masks.trace,
            popularity: a.popularity.trace,
            attrs: a.attrs.trace,
        },
        feeder: RecommendFeeder::new(settings),
        settings,
        place,
        names,
        cache: HashMap::new(),
        by_attribute: HashMap::new(),
        cache_at: None,
        trends: None,
    };
    (view, ())
}

/// A popular item as ranked: its popularity is both its score and its count.
fn scored((item, popularity): (ItemId, i64)) -> Scored {
    (item, popularity as f64, popularity)
}

/// Ranked popular items of each category (or brand).
type Ranked = HashMap<Sym, Rc<Vec<Scored>>>;

/// Ranked popular items kept per `(window, category, brand)` for the epoch read.
pub const POPULAR_CACHE: usize = 200;

/// What a popularity read filters by: `0` for any.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ItemFilter {
    pub category: Sym,
    pub brand: Sym,
}

impl ItemFilter {
    /// Whether an item of `category` and `brand` passes.
    pub fn admits(&self, category: Sym, brand: Sym) -> bool {
        (self.category == 0 || self.category == category)
            && (self.brand == 0 || self.brand == brand)
    }
}

/// One item's entry in a trending answer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Trend {
    pub item: ItemId,
    /// Popularity in the last day against the daily average of the last week
    /// (`7 · day / week`).
    pub growth: f64,
    pub day: i64,
    pub week: i64,
}

/// The view on one worker.
pub struct RecommendView {
    pub inputs: RecommendInputs,
    pub traces: RecommendTraces,
    feeder: RecommendFeeder,
    pub settings: RecommendSettings,
    place: Place,
    names: Names,
    cache: HashMap<(Window, ItemFilter), Rc<Vec<Scored>>>,
    /// The ranked lists of every category (brand: attribute [`BRAND`]) of a
    /// window, at `cache_at`.
    by_attribute: HashMap<(Window, u8), Ranked>,
    cache_at: Option<Time>,
    /// Trending items (all of this worker's, ranked) at `cache_at`.
    trends: Option<Rc<Vec<Trend>>>,
}

impl RecommendView {
    /// The masks of every item of `user` (on the user's owner), in item order.
    pub fn user_items(&mut self, user: UserId, at: Time) -> Vec<(ItemId, Masks)> {
        let (mut c, s) = cursor_at(&mut self.traces.masks);
        c.seek_key(&s, &(user, 0));
        let mut out = Vec::new();
        while let Some(&(u, item)) = c.get_key(&s) {
            if u != user {
                break;
            }
            let mut masks = [0; 4];
            let key = &(u, item);
            let mut each = |v: &(Window, Mask), _d: Diff| masks[v.0 as usize] = v.1;
            read_key_at!(c, s, key, at, each, val => val);
            if masks.iter().any(|m| *m != 0) {
                out.push((item, masks));
            }
            c.step_key(&s);
        }
        out
    }

    /// The category and brand of each of `items` (`0` when never named), from
    /// this worker's copy, in one forward pass (`items` sorted).
    pub fn attributes(&mut self, items: &[ItemId], at: Time) -> Vec<(Sym, Sym)> {
        let (mut c, s) = cursor_at(&mut self.traces.attrs);
        let me = self.place.worker as u32;
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let mut found = [0; 2];
            for attr in [CATEGORY, BRAND] {
                let mut first: Option<AttrVal> = None;
                let key = &(me, *item, attr);
                let mut each = |v: &AttrVal, d: Diff| {
                    if d > 0 && first.is_none_or(|f| v.0 < f.0) {
                        first = Some(*v);
                    }
                };
                read_key_at!(c, s, key, at, each, val => val);
                found[attr as usize] = first.map_or(0, |f| f.1);
            }
            out.push((found[0], found[1]));
        }
        out
    }

    /// Those of `items` that pass `filter` (all of them for no filter).
    pub fn passing(&mut self, items: &[ItemId], filter: ItemFilter, at: Time) -> IdSet {
        if filter == ItemFilter::default() {
            return items.iter().copied().collect();
        }
        let mut sorted = items.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let attrs = self.attributes(&sorted, at);
        sorted
            .into_iter()
            .zip(attrs)
            .filter(|(_, (category, brand))| filter.admits(*category, *brand))
            .map(|(i, _)| i)
            .collect()
    }

    /// The popularity of every item this worker owns in `window` with a score
    /// above 0, in item order.
    pub fn popularity(&mut self, window: Window, at: Time) -> Vec<(ItemId, i64)> {
        let (mut c, s) = cursor_at(&mut self.traces.popularity);
        c.seek_key(&s, &(window, 0));
        let mut out = Vec::new();
        while let Some(&(w, item)) = c.get_key(&s) {
            if w != window {
                break;
            }
            let mut score = 0;
            c.map_times(&s, |t, d| {
                if *t <= at {
                    score += *d;
                }
            });
            if score > 0 {
                out.push((item, score));
            }
            c.step_key(&s);
        }
        out
    }

    /// The first `k` of this worker's items by popularity in `window` among those
    /// passing `filter` and not in `exclude` (ranked as similar items are: score,
    /// then name). Score and count are both the popularity.
    pub fn popular(
        &mut self,
        window: Window,
        filter: ItemFilter,
        k: usize,
        exclude: &IdSet,
        cx: ReadCtx,
    ) -> Vec<Scored> {
        self.cache_for(cx.at);
        let one = match (filter.category, filter.brand) {
            (0, 0) => None,
            (c, 0) => Some((CATEGORY, c)),
            (0, b) => Some((BRAND, b)),
            _ => None,
        };
        let cached = match (self.cache.get(&(window, filter)), one) {
            (Some(list), _) => list.clone(),
            (None, Some((attr, value))) => {
                let all = self.rank_by_attribute(window, attr, cx.at);
                all.get(&value).cloned().unwrap_or_default()
            }
            (None, None) => {
                let list = Rc::new(self.rank_popular(
                    window,
                    filter,
                    POPULAR_CACHE,
                    &IdSet::default(),
                    cx.at,
                ));
                self.cache.insert((window, filter), list.clone());
                list
            }
        };
        let kept: Vec<Scored> = cached
            .iter()
            .filter(|s| !exclude.contains(&s.0))
            .take(k)
            .copied()
            .collect();
        if kept.len() < k && cached.len() == POPULAR_CACHE {
            // The exclusions ate into the cached list: rank everything.
            return self.rank_popular(window, filter, k, exclude, cx.at);
        }
        kept
    }

    /// Empties the read caches unless they are of `at` (or too full: a client
    /// asking for ever other filters gets scans, not memory).
    fn cache_for(&mut self, at: Time) {
        if self.cache_at != Some(at) || self.cache.len() > 1024 {
            self.cache.clear();
            self.by_attribute.clear();
            self.trends = None;
            self.cache_at = Some(at);
        }
    }

    /// The first [`POPULAR_CACHE`] items of each value of `attr` in `window`
    /// (kept for the epoch), from one scan.
    fn rank_by_attribute(&mut self, window: Window, attr: u8, at: Time) -> &Ranked {
        if !self.by_attribute.contains_key(&(window, attr)) {
            let all = self.popularity(window, at);
            let mut groups: HashMap<Sym, Vec<Scored>> = HashMap::new();
            for (popular, (category, brand)) in self.with_attributes(all, at) {
                let value = if attr == BRAND { brand } else { category };
                if value != 0 {
                    groups.entry(value).or_default().push(scored(popular));
                }
            }
            let ranked = groups
                .into_iter()
                .map(|(v, scored)| (v, Rc::new(rank(scored, POPULAR_CACHE, &self.names))))
                .collect();
            self.by_attribute.insert((window, attr), ranked);
        }
        &self.by_attribute[&(window, attr)]
    }

    fn rank_popular(
        &mut self,
        window: Window,
        filter: ItemFilter,
        k: usize,
        exclude: &IdSet,
        at: Time,
    ) -> Vec<Scored> {
        let all: Vec<(ItemId, i64)> = self
            .popularity(window, at)
            .into_iter()
            .filter(|(i, _)| !exclude.contains(i))
            .collect();
        let list: Vec<Scored> = if filter == ItemFilter::default() {
            all.into_iter().map(scored).collect()
        } else {
            self.with_attributes(all, at)
                .filter(|(_, (category, brand))| filter.admits(*category, *brand))
                .map(|(popular, _)| scored(popular))
                .collect()
        };
        rank(list, k, &self.names)
    }

    /// Each of `popular` (in item order) with its category and brand, from one
    /// forward pass over the attributes.
    fn with_attributes(
        &mut self,
        popular: Vec<(ItemId, i64)>,
        at: Time,
    ) -> impl Iterator<Item = ((ItemId, i64), (Sym, Sym))> {
        let items: Vec<ItemId> = popular.iter().map(|(i, _)| *i).collect();
        let attrs = self.attributes(&items, at);
        popular.into_iter().zip(attrs)
    }

    /// This worker's first `k` items by growth (see [`Trend`]) among those with a
    /// popularity of at least `min_day` in the last day; ties by the day's
    /// popularity, then name.
    pub fn trending(&mut self, k: usize, min_day: i64, cx: ReadCtx) -> Vec<Trend> {
        self.cache_for(cx.at);
        if let Some(t) = &self.trends {
            return t.iter().take(k).copied().collect();
        }
        let day = self.popularity(DAY, cx.at);
        let week: HashMap<ItemId, i64> = self.popularity(WEEK, cx.at).into_iter().collect();
        let mut trends: HashMap<ItemId, Trend> = HashMap::new();
        let mut scored = Vec::new();
        for (item, d) in day.into_iter().filter(|(_, d)| *d >= min_day) {
            let w = week.get(&item).copied().unwrap_or(d).max(d);
            let growth = 7.0 * d as f64 / w as f64;
            trends.insert(
                item,
                Trend {
                    item,
                    growth,
                    day: d,
                    week: w,
                },
            );
            scored.push((item, growth, d));
        }
        let ranked: Vec<Trend> = rank(scored, MAX_TRENDS, &self.names)
            .into_iter()
            .map(|(item, _, _)| trends[&item])
            .collect();
        let ranked = Rc::new(ranked);
        self.trends = Some(ranked.clone());
        ranked.iter().take(k).copied().collect()
    }
}

/// The most trending items one answer lists (the most `k`).
const MAX_TRENDS: usize = 100;

impl View for RecommendView {
    fn name(&self) -> &'static str {
        "recommend"
    }

    fn feed(&mut self, epoch: &EpochBatch<'_>) {
        self.inputs.advance_to(epoch.epoch);
        if self.settings.enabled {
            let f = &mut self.feeder;
            for (id, user) in epoch.links {
                f.merge(*id, *user, &mut self.inputs);
            }
            f.expire(epoch.clock, epoch.aliases, &mut self.inputs);
            for ev in epoch.events {
                f.event(
                    ev,
                    epoch.clock,
                    epoch.aliases,
                    self.place.peers,
                    &mut self.inputs,
                );
            }
        }
        self.inputs.advance_to(epoch.epoch + 1);
        self.inputs.flush();
    }

    fn compact(&mut self, frontier: Time) {
        compact(&mut self.traces.masks, frontier);
        compact(&mut self.traces.popularity, frontier);
        compact(&mut self.traces.attrs, frontier);
    }

    fn gauges(&self) -> Vec<(&'static str, f64)> {
        vec![(
            // Signals waiting for their scheduled exit from a window.
            "shopstream_recommend_scheduled_signals",
            self.feeder.schedule.len() as f64,
        )]
    }

    /// The feeder's state (presence states, counted records and their exits,
    /// the order book) and the attribute claims of the items this worker owns.
    /// Masks and popularity are derived again.
    fn snapshot(&mut self, at: Time) -> Vec<u8> {
        let place = self.place;
        let me = place.worker as u32;
        let mut last: Option<((ItemId, u8), AttrVal)> = None;
        let mut claims = Vec::new();
        for_each_val(&mut self.traces.attrs, at, |(w, item, attr), v, d| {
            if *w != me || d <= 0 || !place.owns(*item) {
                return;
            }
            match &mut last {
                Some((i, first)) if *i == (*item, *attr) => {
                    if v.0 < first.0 {
                        *first = *v;
                    }
                }
                _ => {
                    claims.extend(last.take());
                    last = Some(((*item, *attr), *v));
                }
            }
        });
        claims.extend(last);
        encode_part(&RecommendState {
            enabled: self.settings.enabled,
            feeder: self.feeder.save(),
            attrs: claims,
        })
    }

    fn restore(&mut self, parts: &[Vec<u8>], at: Time, place: Place) -> Result<(), RestoreError> {
        self.inputs.advance_to(at);
        if !self.settings.enabled {
            return Ok(());
        }
        if parts.is_empty() {
            return Err(RestoreError {
                view: "recommend",
                reason: "the snapshot holds no recommend state (a build without the view \
                         took it); remove the data directory's snapshots/ to rebuild it from \
                         the log"
                    .into(),
            });
        }
        let f = &mut self.feeder;
        let mut claims: HashMap<(ItemId, u8), AttrVal> = HashMap::new();
        let mut orders = Vec::new();
        for part in parts {
            let mut state: RecommendState = decode_part("recommend", part)?;
            if !state.enabled {
                return Err(RestoreError {
                    view: "recommend",
                    reason: "the snapshot was taken with recommend.enabled = false; remove the \
                             data directory's snapshots/ to rebuild it from the log"
                        .into(),
                });
            }
            orders.append(&mut state.feeder.orders);
            f.restore(state.feeder, |k| place.owns(k), at, &mut self.inputs);
            for (item, v) in state.attrs {
                let e = claims.entry(item).or_insert(v);
                if v.0 < e.0 {
                    *e = v;
                }
            }
        }
        f.restore_orders(orders, |k| place.owns(k));
        for ((item, attr), v) in claims {
            f.claimed[attr as usize].insert(item);
            if place.owns(item) {
                for w in 0..place.peers as u32 {
                    self.inputs.attrs.update_at(((w, item, attr), v), at, 1);
                }
            }
        }
        Ok(())
    }
}

/// A snapshot part.
#[derive(Serialize, Deserialize)]
struct RecommendState {
    enabled: bool,
    feeder: FeederState,
    /// The earliest claim of each attribute of each item this worker owns.
    attrs: Vec<((ItemId, u8), AttrVal)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cart_counts_while_adds_outnumber_removals() {
        let mut c = [0i64; 7];
        c[CART as usize] = 2;
        c[REMOVED as usize] = 1;
        assert_eq!(live(&c), 1 << CART);
        c[REMOVED as usize] = 2;
        assert_eq!(live(&c), 0);
        c[PURCHASE as usize] = 1;
        c[VIEW as usize] = 3;
        assert_eq!(live(&c), (1 << PURCHASE) | (1 << VIEW));
        c[REFUNDED as usize] = 1;
        assert_eq!(live(&c), 1 << VIEW);
    }

    #[test]
    fn strength_is_the_strongest_live_class() {
        let s = RecommendSettings::default();
        assert_eq!(s.strength(0), 0);
        assert_eq!(s.strength(1 << VIEW), 1);
        assert_eq!(s.strength((1 << VIEW) | (1 << CART)), 3);
        assert_eq!(s.strength((1 << PURCHASE) | (1 << CLICK)), 5);
    }
}
