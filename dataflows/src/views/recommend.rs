//! # Interaction signals: popularity, trends and the inputs of recommendations
//!
//! Specification, at every epoch `E` with engine clock `c(E)`, for each window
//! `W` of [`WINDOWS`] (1, 7 and 30 days, and all time):
//!
//! * A *signal* is one line of an interaction, classed: `Product Viewed` (view),
//!   `Product Clicked` (click), `Product Added to Wishlist` (wishlist), `Product
//!   Added` (cart), the distinct items of an `Order Completed` (purchase; only the
//!   first `Order Completed` of an order id), `Product Removed` (removed), and the
//!   refunded items (refunded): those an `Order Refunded` names in its lines, or,
//!   for a refund without lines or an `Order Cancelled`, the items of the order
//!   the engine remembers (the last `engine.order_horizon` orders per worker; of
//!   an order it does not know, nothing). A signal is in `W` while
//!   `ts + W > c(E)`.
//! * For a user `u` (canonical, as everywhere) and an item `i`, the *live classes*
//!   in `W` are view, click and wishlist when `u` has such a signal of `i` in `W`;
//!   cart when `u`'s cart signals of `i` in `W` outnumber the removed ones;
//!   purchase when the purchases outnumber the refunds. The *strength* of `(u, i)`
//!   in `W` is the greatest weight (`[recommend] weights`) of a live class.
//! * `popularity(W, i)` = Σ over users of their strength with `i` in `W`: distinct
//!   users, each weighted by what they did (a user who viewed an item fifty times
//!   counts once; one who bought it counts as a purchase).
//! * An item's category and brand are those of the first line (in log order) that
//!   named the item with a category or a brand.
//!
//! ## How it is maintained
//!
//! The [`RecommendFeeder`] turns each line into one signal record per window it
//! is still in, `((user, item), (window, class))`, and schedules its retraction
//! from each finite window when the clock reaches `ts + W` (one heap entry per
//! signal, which moves on to the next window when it fires). Records of one
//! class consolidate in the arrangement, so its size is that of the distinct
//! `(user, item, window, class)`, not of the events. One reduction per `(user,
//! item)` turns the counts into the live classes of each window (a bit mask), on
//! the user's owner; the strengths, as the difference of `(window, item)`, sum
//! into the popularity arrangement on the item's owner (a monoid: no reduction
//! over an item's users). Categories and brands are claimed by each worker on
//! first sight, replicated to every worker, and read as the earliest claim.
//!
//! Reads of popularity scan the window's items on every worker (each its own)
//! and keep the ranked first [`POPULAR_CACHE`] per `(window, category, brand)`
//! for the epoch read, so a page of popular items is a lookup after the first.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::rc::Rc;

use differential_dataflow::input::InputSession;
use differential_dataflow::operators::arrange::Arranged;
use differential_dataflow::trace::cursor::Cursor;
use differential_dataflow::trace::implementations::{ValBuilder, ValSpine};
use serde::{Deserialize, Serialize};
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::operators::Probe;

use crate::read::{arrange_by_key_at, arrange_by_self_at, compact, cursor_at, for_each_val};
use crate::read_key_at;
use crate::types::*;
use crate::view::{
    decode_part, encode_part, Env, EpochBatch, Names, Place, ReadCtx, RestoreError, View,
};
use crate::views::similarity::{rank, Scored};

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
const REMOVED: Class = 5;
const REFUNDED: Class = 6;

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

/// The masks of one `(user, item)` from its signal records (sorted by
/// `(window, class)`, with their counts): `(window, mask)` for each window with
/// a live class.
pub fn masks(records: &[(&(Window, Class), Diff)]) -> Vec<(Window, Mask)> {
    let mut counts = [[0i64; 7]; 4];
    for ((w, c), d) in records {
        counts[*w as usize][*c as usize] += d;
    }
    (0..4u8)
        .filter_map(|w| {
            let m = live(&counts[w as usize]);
            (m != 0).then_some((w, m))
        })
        .collect()
}

/// A signal record: `((user, item), (window, class))`.
pub type Signal = ((UserId, ItemId), (Window, Class));

/// A scheduled exit: `(leaves at, user, item, class, window)`, the user it was
/// admitted under (resolved when it fires).
type Exit = (Millis, UserId, ItemId, Class, Window);

/// A replicated attribute claim: `(worker, item)` → `(seq, category, brand)`.
type AttrKey = (u32, ItemId);
type AttrVal = (u64, Sym, Sym);

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

/// A trace of `(key, value)` counted by `i64`.
type ValTrace<K, V> =
    differential_dataflow::operators::arrange::TraceAgent<ValSpine<K, V, Time, Diff>>;

/// The arrangements of the view.
pub struct RecommendArrangements<'scope> {
    /// `((user, item), (window, mask))`, on the user's owner.
    pub masks: Arranged<'scope, ValTrace<(UserId, ItemId), (Window, Mask)>>,
    /// `(window, item)` with its popularity, on the item's owner.
    pub popularity: Arranged<'scope, KeyTrace<(Window, ItemId)>>,
    /// `((worker, item), (seq, category, brand))`, on every worker.
    pub attrs: Arranged<'scope, ValTrace<AttrKey, AttrVal>>,
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
    type Key = (UserId, ItemId);
    let masks = signals
        .clone()
        .reduce_abelian::<_, ValBuilder<Key, (Window, Mask), Time, Diff>, ValSpine<Key, (Window, Mask), Time, Diff>, _, _>(
            "Recommend: live classes",
            |_key, input, output| {
                output.extend(masks(input).into_iter().map(|m| (m, 1)));
            },
            |vec, key, upds| {
                vec.clear();
                vec.extend(upds.drain(..).map(|(v, t, r)| ((*key, v), t, r)));
            },
        );
    let strengths = masks
        .clone()
        .as_collection(|(_u, i), (w, m)| (*w, *i, *m))
        .explode(move |(w, i, m)| Some(((w, i), settings.strength(m))));
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

/// Turns events into signal records and their scheduled retractions.
///
/// Keeps, per worker: the counts of the records it admitted, by canonical user
/// (to move them at a merge, and for the snapshot); the schedule of their
/// retractions, one entry per signal for the next finite window it leaves; the
/// items of the last `order_horizon` orders (for whole refunds); the items whose
/// attributes it claimed.
pub struct RecommendFeeder {
    settings: RecommendSettings,
    tracked: IdMap<FastMap<(ItemId, Window, Class), i64>>,
    /// `(leaves at, user, item, class, window)`.
    schedule: BinaryHeap<Reverse<Exit>>,
    /// Order id → its items (`None`: refunded whole or cancelled already).
    book: FastMap<Sym, Option<Vec<ItemId>>>,
    fifo: VecDeque<Sym>,
    claimed: IdSet,
}

impl RecommendFeeder {
    pub fn new(settings: RecommendSettings) -> Self {
        RecommendFeeder {
            settings,
            tracked: IdMap::default(),
            schedule: BinaryHeap::new(),
            book: FastMap::default(),
            fifo: VecDeque::new(),
            claimed: IdSet::default(),
        }
    }

    /// Counts one record update and sends it. A count may go below zero here:
    /// after a restart the retraction of a record moved at a merge fires on the
    /// owner of the merged id, not where the record was restored; the input
    /// exchanges by user, so the dataflow sees both, and the next snapshot's
    /// parts add up again on the user's owner.
    fn record(
        &mut self,
        user: UserId,
        item: ItemId,
        w: Window,
        c: Class,
        d: Diff,
        inputs: &mut RecommendInputs,
    ) {
        let counts = self.tracked.entry(user).or_default();
        let n = counts.entry((item, w, c)).or_insert(0);
        *n += d;
        if *n == 0 {
            counts.remove(&(item, w, c));
            if counts.is_empty() {
                self.tracked.remove(&user);
            }
        }
        inputs.signals.update(((user, item), (w, c)), d);
    }

    /// Admits one signal of time `ts` into every window it is still in at
    /// `clock`, and schedules its first exit.
    fn signal(
        &mut self,
        user: UserId,
        item: ItemId,
        c: Class,
        ts: Millis,
        clock: Millis,
        inputs: &mut RecommendInputs,
    ) {
        let first = WINDOWS.iter().position(|w| ts.saturating_add(*w) > clock);
        let from = first.unwrap_or(WINDOWS.len()) as Window;
        for w in from..=ALL_TIME {
            self.record(user, item, w, c, 1, inputs);
        }
        if let Some(w) = first {
            self.schedule.push(Reverse((
                ts.saturating_add(WINDOWS[w]),
                user,
                item,
                c,
                w as Window,
            )));
        }
    }

    /// Moves the records admitted under `id` to `user`.
    fn merge(&mut self, id: UserId, user: UserId, inputs: &mut RecommendInputs) {
        let Some(counts) = self.tracked.remove(&id) else {
            return;
        };
        for ((item, w, c), n) in counts {
            inputs.signals.update(((id, item), (w, c)), -n);
            self.record(user, item, w, c, n, inputs);
        }
    }

    /// Retracts the signals whose windows the clock has left.
    fn expire(&mut self, clock: Millis, aliases: &Aliases, inputs: &mut RecommendInputs) {
        while let Some(Reverse((at, user, item, c, w))) = self.schedule.peek().copied() {
            if at > clock {
                break;
            }
            self.schedule.pop();
            let user = aliases.resolve(user);
            self.record(user, item, w, c, -1, inputs);
            let next = w as usize + 1;
            if next < WINDOWS.len() {
                let ts = at - WINDOWS[w as usize];
                self.schedule.push(Reverse((
                    ts.saturating_add(WINDOWS[next]),
                    user,
                    item,
                    c,
                    next as Window,
                )));
            }
        }
    }

    /// Feeds one event of an epoch whose clock is `clock`.
    fn event(&mut self, ev: &ShopEvent, clock: Millis, peers: usize, inputs: &mut RecommendInputs) {
        for line in &ev.lines {
            if line.item != 0
                && (line.category != 0 || line.brand != 0)
                && self.claimed.insert(line.item)
            {
                for w in 0..peers as u32 {
                    inputs
                        .attrs
                        .update(((w, line.item), (ev.seq, line.category, line.brand)), 1);
                }
            }
        }
        let class = match ev.kind {
            EventKind::ProductViewed => VIEW,
            EventKind::ProductClicked => CLICK,
            EventKind::ProductAddedToWishlist => WISHLIST,
            EventKind::ProductAdded => CART,
            EventKind::ProductRemoved => REMOVED,
            EventKind::OrderCompleted => PURCHASE,
            EventKind::OrderRefunded | EventKind::OrderCancelled => REFUNDED,
            _ => return,
        };
        let mut items = ev.distinct_items();
        match ev.kind {
            EventKind::OrderCompleted if ev.order != 0 => {
                if self.book.contains_key(&ev.order) || items.is_empty() {
                    // A duplicate of an order already counted, or one without lines.
                    return;
                }
                self.remember(ev.order, Some(items.clone()));
            }
            EventKind::OrderRefunded | EventKind::OrderCancelled
                if items.is_empty() || ev.kind == EventKind::OrderCancelled =>
            {
                // The whole order: its items, once.
                items = match self.book.get_mut(&ev.order) {
                    Some(known) if ev.order != 0 => known.take().unwrap_or_default(),
                    _ => Vec::new(),
                };
            }
            _ => {}
        }
        for item in items {
            self.signal(ev.user, item, class, ev.ts, clock, inputs);
        }
    }

    fn remember(&mut self, order: Sym, items: Option<Vec<ItemId>>) {
        if self.settings.order_horizon == 0 {
            return;
        }
        if self.book.insert(order, items).is_none() {
            self.fifo.push_back(order);
            if self.fifo.len() > self.settings.order_horizon {
                if let Some(old) = self.fifo.pop_front() {
                    self.book.remove(&old);
                }
            }
        }
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
        cache_at: None,
    };
    (view, ())
}

/// Ranked popular items kept per `(window, category, brand)` for the epoch read.
pub const POPULAR_CACHE: usize = 200;

/// What a popularity read filters by: `0` for any.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ItemFilter {
    pub category: Sym,
    pub brand: Sym,
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
    cache_at: Option<Time>,
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

    /// The category and brand of `item` (`(0, 0)` when never named), from this
    /// worker's copy.
    pub fn attributes(&mut self, item: ItemId, at: Time) -> (Sym, Sym) {
        let mut first: Option<AttrVal> = None;
        let key = &(self.place.worker as u32, item);
        let (mut c, s) = cursor_at(&mut self.traces.attrs);
        let mut each = |v: &AttrVal, d: Diff| {
            if d > 0 && first.is_none_or(|f| v.0 < f.0) {
                first = Some(*v);
            }
        };
        read_key_at!(c, s, key, at, each, val => val);
        first.map_or((0, 0), |f| (f.1, f.2))
    }

    /// Whether `item` passes `filter`.
    pub fn passes(&mut self, item: ItemId, filter: ItemFilter, at: Time) -> bool {
        if filter == ItemFilter::default() {
            return true;
        }
        let (category, brand) = self.attributes(item, at);
        (filter.category == 0 || filter.category == category)
            && (filter.brand == 0 || filter.brand == brand)
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
        exclude: &[ItemId],
        cx: ReadCtx,
    ) -> Vec<Scored> {
        if self.cache_at != Some(cx.at) || self.cache.len() > 1024 {
            self.cache.clear();
            self.cache_at = Some(cx.at);
        }
        let cached = match self.cache.get(&(window, filter)) {
            Some(list) => list.clone(),
            None => {
                let list = Rc::new(self.rank_popular(window, filter, POPULAR_CACHE, &[], cx.at));
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

    fn rank_popular(
        &mut self,
        window: Window,
        filter: ItemFilter,
        k: usize,
        exclude: &[ItemId],
        at: Time,
    ) -> Vec<Scored> {
        let all = self.popularity(window, at);
        let mut scored = Vec::with_capacity(all.len());
        for (item, score) in all {
            if !exclude.contains(&item) && self.passes(item, filter, at) {
                scored.push((item, score as f64, score));
            }
        }
        rank(scored, k, &self.names)
    }

    /// This worker's first `k` items by growth (see [`Trend`]) among those with a
    /// popularity of at least `min_day` in the last day; ties by the day's
    /// popularity, then name.
    pub fn trending(&mut self, k: usize, min_day: i64, cx: ReadCtx) -> Vec<Trend> {
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
        rank(scored, k, &self.names)
            .into_iter()
            .map(|(item, _, _)| trends[&item])
            .collect()
    }
}

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
                f.event(ev, epoch.clock, self.place.peers, &mut self.inputs);
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

    /// The feeder's state: its record counts by user, its schedule, its order book, and the attribute claims of the items
    /// this worker owns. Masks and popularity are derived again.
    fn snapshot(&mut self, at: Time) -> Vec<u8> {
        let f = &self.feeder;
        let mut state = RecommendState {
            enabled: self.settings.enabled,
            records: Vec::new(),
            schedule: f.schedule.iter().map(|Reverse(entry)| *entry).collect(),
            orders: f
                .fifo
                .iter()
                .filter_map(|o| f.book.get(o).map(|b| (*o, b.clone())))
                .collect(),
            attrs: Vec::new(),
        };
        for (user, counts) in &f.tracked {
            state
                .records
                .extend(counts.iter().map(|((i, w, c), n)| (*user, *i, *w, *c, *n)));
        }
        state.records.sort_unstable();
        state.schedule.sort_unstable();
        let place = self.place;
        let me = place.worker as u32;
        let mut last: Option<(ItemId, AttrVal)> = None;
        let mut claims = Vec::new();
        for_each_val(&mut self.traces.attrs, at, |(w, item), v, d| {
            if *w != me || d <= 0 || !place.owns(*item) {
                return;
            }
            match &mut last {
                Some((i, first)) if i == item => {
                    if v.0 < first.0 {
                        *first = *v;
                    }
                }
                _ => {
                    claims.extend(last.take());
                    last = Some((*item, *v));
                }
            }
        });
        claims.extend(last);
        state.attrs = claims;
        encode_part(&state)
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
        let mut claims: HashMap<ItemId, AttrVal> = HashMap::new();
        for part in parts {
            let state: RecommendState = decode_part("recommend", part)?;
            if !state.enabled {
                return Err(RestoreError {
                    view: "recommend",
                    reason: "the snapshot was taken with recommend.enabled = false; remove the \
                             data directory's snapshots/ to rebuild it from the log"
                        .into(),
                });
            }
            for (user, item, w, c, n) in state.records {
                if place.owns(user) {
                    let counts = f.tracked.entry(user).or_default();
                    *counts.entry((item, w, c)).or_insert(0) += n;
                    self.inputs.signals.update_at(((user, item), (w, c)), at, n);
                }
            }
            for (t, u, i, c, w) in state.schedule {
                if place.owns(u) {
                    f.schedule.push(Reverse((t, u, i, c, w)));
                }
            }
            for (order, items) in state.orders {
                if place.owns(order) {
                    f.remember(order, items);
                }
            }
            for (item, v) in state.attrs {
                let e = claims.entry(item).or_insert(v);
                if v.0 < e.0 {
                    *e = v;
                }
            }
        }
        for (item, v) in claims {
            f.claimed.insert(item);
            if place.owns(item) {
                for w in 0..place.peers as u32 {
                    self.inputs.attrs.update_at(((w, item), v), at, 1);
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
    /// `(canonical user, item, window, class, count)`.
    records: Vec<(UserId, ItemId, Window, Class, i64)>,
    schedule: Vec<Exit>,
    orders: Vec<(Sym, Option<Vec<ItemId>>)>,
    /// The earliest claim of each item this worker owns.
    attrs: Vec<(ItemId, AttrVal)>,
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
