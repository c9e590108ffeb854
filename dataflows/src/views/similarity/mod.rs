//! # Item similarities
//!
//! Specification, at every epoch `E` with engine clock `c(E)`, for two kinds of
//! co-occurrence, each over its own *units*:
//!
//! * `bought`: a unit is an order (`Order Completed` with product lines). Its
//!   items are the distinct items of its lines, less the items a later `Order
//!   Refunded` names in its own lines; a refund without lines, or an `Order
//!   Cancelled`, takes the whole order out. A refund or cancellation that arrives
//!   before its order is remembered and applied when the order comes. The first
//!   `Order Completed` of an order id counts (another one with the same id is a
//!   duplicate). The order book remembers the last `engine.order_horizon` orders
//!   per worker: a refund or cancellation of an order it has forgotten changes
//!   nothing, and a forgotten order completed again still counts once. Orders with more than `max_order_items` distinct items are not
//!   counted (bulk and test orders; [`gauges`](SimilarityView::gauges) counts them).
//! * `viewed`: a unit is a user's recent history: the `history_items` distinct
//!   items of the user's interactions (`Product Viewed`, `Product Clicked`,
//!   `Product Added`, `Product Added to Wishlist`, and the lines of `Order
//!   Completed`) with the greatest *recency* `(ts, seq)` among the interactions
//!   with `ts + history_ms > c(E)` (an item's recency is that of its latest one;
//!   the items of one event, an order's, rank by their interned id, greatest first).
//!   A user with more than `max_user_events_per_day` of those interactions (events:
//!   an order is one) on one UTC day has no history (bots, order brushing) while that day is inside the
//!   window. A `Product Removed` is no interaction and takes nothing away: the user
//!   did look at the item.
//!
//! For each kind, `n(a)` = units containing item `a`, `c(a, b)` = units
//! containing both (`a ≠ b`), `N` = units with at least one item. The measures of
//! [`Measure`] are computed from these integers at read time.
//!
//! ## How it is maintained
//!
//! Every count is a plain `i64` difference accumulating in an arrangement; floats
//! appear only in a read.
//!
//! * `viewed`: the feeder admits each interaction still inside the window as one
//!   record `(user, (recency, item))` and schedules its retraction at the epoch
//!   whose clock reaches `ts + history_ms` (as the profile windows do). The
//!   records, arranged by user, go through one reduction per user (the bot check
//!   and the top `history_items`, [`history`]), whose output, the history, is
//!   joined with itself by user: each item entering or leaving a history adds or
//!   retracts its pairs with the others (at most `2 (history_items - 1)` pair
//!   updates), never the whole history's.
//! * `bought`: the feeder keeps each order's live items (the order book) and
//!   updates `(order, item)` in a basket input; baskets are joined with themselves
//!   by order.
//! * Pair counts are arranged by `(kind, a)` on the owner of `a`, so that one read
//!   of one item asks one worker, and its partners lie together, in item order.
//!   `n` and `N` (and the ignored users) are small and change rarely compared
//!   with pairs, so they are replicated to every worker: the owner of `a` scores
//!   every partner `b` without asking the owner of `b`.
//! * Reads of a popular item: each pair is also kept as data in count order
//!   (`by_count`, see [`index`]), so a top-`k` read by `count`, `jaccard` or
//!   `cosine` walks an item's partners from the strongest down and stops once no
//!   partner left can reach the `k`-th score: the items seen once together, the
//!   bulk of a popular item's partners, are not read (nor indexed: a read whose
//!   answer reaches down to them takes them from the pairs). `lift` and `llr` are not
//!   bounded by the count; their reads take one forward pass over the pair trace
//!   and, in step, the `n` trace (both in item order). A ranked list that took
//!   many partners to rank ([`RANK_CACHE_MIN_PARTNERS`]), and every list a
//!   recommendation reads ([`SimilarityView::similar_kept`]), is kept for the epoch
//!   it was read at, so the next reads of that item at that epoch cost a lookup;
//!   so are the `n(b)` looked up at that epoch (a popular item's partners are
//!   mostly the same popular items).
//!
//! ## Identities
//!
//! Events arrive keyed by the canonical user. When an id `a` is merged into `u` at
//! epoch `E`, each worker moves the records of `a` it admitted to `u` at `E`
//! (retracts them under `a`, adds them under `u`); their scheduled retractions
//! resolve the user when they fall due. So a history is that of every event of
//! the identity, whichever came first, the link or the events. Orders are units
//! of their own and do not move.

use std::rc::Rc;

use differential_dataflow::input::InputSession;
use differential_dataflow::operators::arrange::Arranged;
use differential_dataflow::trace::implementations::{ValBuilder, ValSpine};
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::operators::Probe;

use crate::read::{
    arrange_by_key_at, arrange_by_self_at, arrange_local_by_key, compact, cursor_at, for_each_key,
    for_each_val, read_key,
};
use crate::read_key_at;
use crate::types::*;
use crate::view::{
    decode_part, encode_part, Env, EpochBatch, Names, Place, ReadCtx, RestoreError, View,
};

mod cache;
mod feeder;
mod index;
mod measure;

pub use cache::TwoGenerations;
use feeder::Basket;
pub use feeder::SimilarityFeeder;
use index::{can_stop, CountOrder};
pub use measure::{llr, rank, Measure, Scored};

/// Which co-occurrence.
pub type Kind = u8;
/// Co-occurrence in users' recent histories.
pub const VIEWED: Kind = 0;
/// Co-occurrence in orders.
pub const BOUGHT: Kind = 1;
/// Not a kind of co-occurrence: the key of the ignored users' count in the stats.
const IGNORED: Kind = 2;

/// An interaction's place in time: `(ts, seq)`, the later the greater.
pub type Recency = (Millis, u64);

/// Item `0` stands for "the unit itself" in baskets and in the stats: `n(0)` of a
/// kind is `N`. (Interned ids are never 0.)
const UNIT: ItemId = 0;

/// A history entry: an item of the user's history, or a mark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Entry {
    Item(ItemId),
    /// The user has a non-empty history (counts in `N`).
    Unit,
    /// The user is over `max_user_events_per_day` on a day inside the window.
    Ignored,
}

/// Replicated counts: `(worker, kind, item)`; `item` [`UNIT`] is `N`.
type StatKey = (u32, Kind, ItemId);

/// What the view is configured with (`[similarity]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimilaritySettings {
    /// Off: nothing is fed (the dataflow idles), so the view costs nothing.
    pub enabled: bool,
    pub history_items: usize,
    pub history_ms: Millis,
    pub max_user_events_per_day: i64,
    pub max_order_items: usize,
    /// Orders remembered per worker for refunds and cancellations.
    pub order_horizon: usize,
}

impl Default for SimilaritySettings {
    fn default() -> Self {
        SimilaritySettings {
            enabled: true,
            history_items: 50,
            history_ms: 30 * DAY_MS,
            max_user_events_per_day: 1_000,
            max_order_items: 100,
            order_horizon: 1_000_000,
        }
    }
}

/// A history from a user's interaction records (sorted by `(recency, item)`, with
/// their multiplicities): [`Entry::Ignored`] if a UTC day holds more than
/// `limit` interaction events (the records of one event, an order's items, share
/// its recency and count once), else the `cap` distinct items with the greatest
/// recency and [`Entry::Unit`].
pub fn history(records: &[(&(Recency, ItemId), Diff)], cap: usize, limit: i64) -> Vec<Entry> {
    let mut day = None;
    let mut on_day = 0i64;
    let mut last: Option<&Recency> = None;
    for ((recency, _), _) in records {
        if last == Some(recency) {
            continue;
        }
        last = Some(recency);
        let this = recency.0.div_euclid(DAY_MS);
        if day != Some(this) {
            day = Some(this);
            on_day = 0;
        }
        on_day += 1;
        if on_day > limit {
            return vec![Entry::Ignored];
        }
    }
    let mut picked: Vec<ItemId> = Vec::with_capacity(cap.min(records.len()));
    let mut seen = IdSet::default();
    for ((_, item), _) in records.iter().rev() {
        if picked.len() == cap {
            break;
        }
        if seen.insert(*item) {
            picked.push(*item);
        }
    }
    let mut out: Vec<Entry> = picked.into_iter().map(Entry::Item).collect();
    if !out.is_empty() {
        out.push(Entry::Unit);
    }
    out
}

/// The arrangements of the view.
pub struct SimilarityArrangements<'scope> {
    /// `(user, (recency, item))`: the admitted interaction records, on the user's owner.
    pub touches: Arranged<'scope, UserValTrace<(Recency, ItemId), Diff>>,
    /// `(user, entry)`: each user's history and marks, on the user's owner.
    pub history: Arranged<'scope, UserValTrace<Entry, Diff>>,
    /// `((kind, a), b)` with `c(a, b)`, on the owner of `a`.
    pub pairs: Arranged<'scope, ValTrace<(Kind, ItemId), ItemId>>,
    /// `((kind, a), (order, b))`: the pairs again, partners in count order ([`index`]).
    pub by_count: Arranged<'scope, index::ByCount>,
    /// `(worker, kind, item)` with `n(item)` (`item` 0: `N`), on every worker.
    pub stats: Arranged<'scope, KeyTrace<StatKey>>,
    /// `(order, item)` live in the order (item 0: the order has items).
    pub baskets: Arranged<'scope, ValTrace<Sym, ItemId>>,
    /// Items seen in any event, on their owner.
    pub seen: Arranged<'scope, KeyTrace<ItemId>>,
}

/// The inputs, fed by the [`SimilarityFeeder`].
pub struct SimilarityInputs {
    /// `(user, (recency, item))`, exchanged to the user's owner.
    pub touches: InputSession<Time, (UserId, (Recency, ItemId)), Diff>,
    /// `(order, item)`, kept where the order is (the owner of its order id).
    pub baskets: InputSession<Time, (Sym, ItemId), Diff>,
    /// Items, exchanged to their owner.
    pub seen: InputSession<Time, ItemId, Diff>,
}

impl SimilarityInputs {
    fn advance_to(&mut self, t: Time) {
        self.touches.advance_to(t);
        self.baskets.advance_to(t);
        self.seen.advance_to(t);
    }
    fn flush(&mut self) {
        self.touches.flush();
        self.baskets.flush();
        self.seen.flush();
    }
}

/// The dataflow: histories, pairs, counts.
pub fn similarity<'scope>(
    scope: timely::dataflow::Scope<'scope, Time>,
    inputs: &mut SimilarityInputs,
    settings: SimilaritySettings,
) -> SimilarityArrangements<'scope> {
    let peers = scope.peers();
    let me = scope.index() as u32;
    let touches = arrange_by_key_at(
        inputs.touches.to_collection(scope),
        move |u: &UserId| owner(*u, peers) as u64,
        "Similarity: interactions",
    );
    let (cap, limit) = (settings.history_items, settings.max_user_events_per_day);
    let history = touches
        .clone()
        .reduce_abelian::<_, ValBuilder<UserId, Entry, Time, Diff>, ValSpine<UserId, Entry, Time, Diff>, _, _>(
            "Similarity: histories",
            move |_user, input, output| {
                output.extend(history(input, cap, limit).into_iter().map(|e| (e, 1)));
            },
            |vec, key, upds| {
                vec.clear();
                vec.extend(upds.drain(..).map(|(v, t, r)| ((*key, v), t, r)));
            },
        );
    let entries = history.clone().as_collection(|u, e| (*u, *e));
    let items: VecCollection<'scope, Time, (UserId, ItemId), Diff> =
        entries.clone().flat_map(|(u, e)| match e {
            Entry::Item(i) => Some((u, i)),
            _ => None,
        });
    let by_user = arrange_local_by_key(items.clone(), "Similarity: history items");
    let viewed = by_user
        .clone()
        .join_core(by_user, |_u, a, b| (a != b).then_some(((VIEWED, *a), *b)));
    let baskets = arrange_local_by_key(inputs.baskets.to_collection(scope), "Similarity: baskets");
    // Each item of an order once, whatever its multiplicity: an order the book has
    // forgotten and that is completed again adds its items a second time, which
    // must not square its pairs.
    let live = baskets
        .clone()
        .reduce_abelian::<_, ValBuilder<Sym, ItemId, Time, Diff>, ValSpine<Sym, ItemId, Time, Diff>, _, _>(
            "Similarity: live baskets",
            |_order, input, output| {
                output.extend(input.iter().filter(|(_, d)| *d > 0).map(|(i, _)| (**i, 1)));
            },
            |vec, key, upds| {
                vec.clear();
                vec.extend(upds.drain(..).map(|(v, t, r)| ((*key, v), t, r)));
            },
        );
    let bought = live.clone().join_core(live.clone(), |_o, a, b| {
        (a != b && *a != UNIT && *b != UNIT).then_some(((BOUGHT, *a), *b))
    });
    let pairs = arrange_by_key_at(
        viewed.concat(bought),
        move |k: &(Kind, ItemId)| owner(k.1, peers) as u64,
        "Similarity: pairs",
    );
    let by_count = index::by_count(pairs.clone());
    // n(a) and N per kind, to every worker; the ignored users to this worker only.
    let counts = entries
        .flat_map(|(_, e)| match e {
            Entry::Item(i) => Some((VIEWED, i)),
            Entry::Unit => Some((VIEWED, UNIT)),
            Entry::Ignored => Some((IGNORED, UNIT)),
        })
        .concat(live.as_collection(|_o, i| (BOUGHT, *i)))
        .flat_map(move |(kind, item)| {
            let to = if kind == IGNORED {
                me..me + 1
            } else {
                0..peers as u32
            };
            to.map(move |w| (w, kind, item))
        });
    let stats = arrange_by_self_at(
        counts,
        |k: &StatKey| u64::from(k.0),
        "Similarity: item counts",
    );
    let seen = arrange_by_self_at(
        inputs.seen.to_collection(scope),
        move |i: &ItemId| owner(*i, peers) as u64,
        "Similarity: items seen",
    );
    SimilarityArrangements {
        touches,
        history,
        pairs,
        by_count,
        stats,
        baskets,
        seen,
    }
}

/// Handles on the view's traces.
pub struct SimilarityTraces {
    pub touches: UserValTrace<(Recency, ItemId), Diff>,
    pub history: UserValTrace<Entry, Diff>,
    pub pairs: ValTrace<(Kind, ItemId), ItemId>,
    pub by_count: index::ByCount,
    pub stats: KeyTrace<StatKey>,
    pub baskets: ValTrace<Sym, ItemId>,
    pub seen: KeyTrace<ItemId>,
}

impl SimilarityTraces {
    fn compact_to(&mut self, frontier: Time) {
        compact(&mut self.touches, frontier);
        compact(&mut self.history, frontier);
        compact(&mut self.pairs, frontier);
        compact(&mut self.by_count, frontier);
        compact(&mut self.stats, frontier);
        compact(&mut self.baskets, frontier);
        compact(&mut self.seen, frontier);
    }
}

/// Builds the similarity view in `scope`, probed by `probe`.
pub fn build<'scope>(
    scope: timely::dataflow::Scope<'scope, Time>,
    env: &Env,
    probe: &ProbeHandle<Time>,
) -> (SimilarityView, ()) {
    let settings = env.get::<SimilaritySettings>().unwrap_or_default();
    let names = env.expect::<Names>();
    let place = Place {
        worker: scope.index(),
        peers: scope.peers(),
    };
    let mut inputs = SimilarityInputs {
        touches: InputSession::new(),
        baskets: InputSession::new(),
        seen: InputSession::new(),
    };
    let a = similarity(scope, &mut inputs, settings);
    a.touches.stream.clone().probe_with(probe);
    a.history.stream.clone().probe_with(probe);
    a.pairs.stream.clone().probe_with(probe);
    a.by_count.stream.clone().probe_with(probe);
    a.stats.stream.clone().probe_with(probe);
    a.baskets.stream.clone().probe_with(probe);
    a.seen.stream.clone().probe_with(probe);
    let traces = SimilarityTraces {
        touches: a.touches.trace,
        history: a.history.trace,
        pairs: a.pairs.trace,
        by_count: a.by_count.trace,
        stats: a.stats.trace,
        baskets: a.baskets.trace,
        seen: a.seen.trace,
    };
    let view = SimilarityView {
        inputs,
        traces,
        feeder: SimilarityFeeder::new(settings),
        place,
        names,
        ranked: TwoGenerations::new(RANK_CACHE_SCORED),
        n_of: FastMap::default(),
        ranked_at: None,
        ignored_users: 0,
    };
    (view, ())
}

/// Partners examined from which a ranked list is kept for the epoch it was read
/// at (a read in count order rarely examines as many; a scan of a popular item
/// does).
pub const RANK_CACHE_MIN_PARTNERS: usize = 512;
/// Scored entries the cache of ranked lists holds at most (in two generations):
/// about 24 MiB per worker.
const RANK_CACHE_SCORED: usize = 1_000_000;

/// Counts `n(b)` kept per epoch at most (then forgotten all at once).
const N_OF_MAX: usize = 1 << 20;

/// The most partners one answer lists.
pub const MAX_K: usize = 100;

/// The similarity view on one worker.
pub struct SimilarityView {
    pub inputs: SimilarityInputs,
    pub traces: SimilarityTraces,
    feeder: SimilarityFeeder,
    place: Place,
    names: Names,
    /// Answers that examined many partners or were asked to be kept, at
    /// `ranked_at`, each with the `k` it was read for.
    ranked: TwoGenerations<(Kind, ItemId, Measure), (Rc<Similar>, usize)>,
    /// `n(b)` of the items looked up at `ranked_at`.
    n_of: FastMap<(Kind, ItemId), i64>,
    ranked_at: Option<Time>,
    /// Users of this worker over the daily limit, at the last completed epoch.
    ignored_users: i64,
}

/// What scores an item's partners: the measure, `n(item)` and `N`.
#[derive(Clone, Copy)]
struct Scoring {
    measure: Measure,
    n: i64,
    units: i64,
}

impl Scoring {
    fn score(&self, c: i64, nb: i64) -> f64 {
        self.measure.score(c, self.n, nb, self.units)
    }
}

/// One item's partners and their counts (no scores), as a read sees them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ItemPartners {
    pub item: ItemId,
    /// The item appeared in some event.
    pub seen: bool,
    /// `(b, c(item, b))` for every partner, in item order.
    pub partners: Vec<(ItemId, i64)>,
}

/// One item's counts at a time, as a read sees them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Similar {
    /// The item appeared in some event.
    pub seen: bool,
    /// `n(item)` and `N` of the kind read.
    pub n: i64,
    pub units: i64,
    /// Partners, ranked, at most the `k` asked for.
    pub similar: Vec<Scored>,
    /// Partners this read looked at (0 for an answer kept from an earlier read
    /// at the same epoch; a read in count order that goes on to the pairs seen
    /// once counts the indexed partners twice, walked and scanned).
    pub examined: usize,
}

impl SimilarityView {
    /// Whether this worker owns `item` (answers for it).
    pub fn owns(&self, item: ItemId) -> bool {
        self.place.owns(item)
    }

    /// The `k` items most similar to `item` by `measure` in co-occurrence `kind`,
    /// at `cx.at`, on the owner of `item`.
    pub fn similar(
        &mut self,
        item: ItemId,
        kind: Kind,
        measure: Measure,
        k: usize,
        cx: ReadCtx,
    ) -> Similar {
        self.similar_kept(item, kind, measure, k, cx, false)
    }

    /// Forgets what was kept for another epoch than `at`.
    fn at_epoch(&mut self, at: Time) {
        if self.ranked_at != Some(at) {
            self.ranked.clear();
            self.n_of.clear();
            self.ranked_at = Some(at);
        }
    }

    /// As [`similar`](Self::similar); `keep`: the answer is kept for the epoch
    /// whatever it took (recommendations read the same history items' lists
    /// again and again).
    pub fn similar_kept(
        &mut self,
        item: ItemId,
        kind: Kind,
        measure: Measure,
        k: usize,
        cx: ReadCtx,
        keep: bool,
    ) -> Similar {
        let at = cx.at;
        self.at_epoch(at);
        if let Some((hit, read)) = self.ranked.get(&(kind, item, measure)) {
            // A list of the first `read` answers any `k` up to it, and any `k`
            // at all when it holds fewer (every partner there is).
            if k <= read || hit.similar.len() < read {
                return Similar {
                    similar: hit.similar.iter().take(k).copied().collect(),
                    examined: 0,
                    ..*hit.as_ref()
                };
            }
        }
        let seen = read_key(&mut self.traces.seen, &item, at).is_some_and(|n| n > 0);
        let me = self.place.worker as u32;
        let n = read_key(&mut self.traces.stats, &(me, kind, item), at).unwrap_or(0);
        let units = read_key(&mut self.traces.stats, &(me, kind, UNIT), at).unwrap_or(0);
        let scoring = Scoring { measure, n, units };
        let (similar, examined, read) = if measure.bounded() {
            let (similar, examined) = self.top_by_count(kind, item, k, at, scoring);
            (similar, examined, k)
        } else {
            // Every partner is scored: the list is worth keeping whole (the first
            // MAX_K) when it was long.
            let pairs = self.pair_counts(kind, item, at);
            let examined = pairs.len();
            let read = if examined >= RANK_CACHE_MIN_PARTNERS {
                MAX_K
            } else {
                k
            };
            let scored = self.score_pairs(kind, pairs, at, scoring);
            (rank(scored, read, &self.names), examined, read)
        };
        let answer = Similar {
            seen,
            n,
            units,
            similar,
            examined,
        };
        // Kept: the lists that took many partners to rank, and those asked to be.
        if keep || examined >= RANK_CACHE_MIN_PARTNERS {
            let answer = Rc::new(answer);
            let size = answer.similar.len() + 1;
            self.ranked
                .insert((kind, item, measure), (answer.clone(), read), size);
            return Similar {
                similar: answer.similar.iter().take(k).copied().collect(),
                ..*answer.as_ref()
            };
        }
        answer
    }

    /// The first `k` partners of `item` by a measure the count bounds, read in
    /// count order in chunks (the first `k`, then twice as many each time) until
    /// no partner left can reach the `k`-th score ([`index`]); with the number of
    /// partners read.
    fn top_by_count(
        &mut self,
        kind: Kind,
        item: ItemId,
        k: usize,
        at: Time,
        scoring: Scoring,
    ) -> (Vec<Scored>, usize) {
        if k == 0 {
            return (Vec::new(), 0);
        }
        let Scoring { measure, n, .. } = scoring;
        let mut scored = Vec::new();
        let mut examined = 0;
        if let Some(mut walk) = CountOrder::new(&mut self.traces.by_count, (kind, item), at) {
            let mut want = k;
            loop {
                let mut chunk = Vec::with_capacity(want);
                walk.take(want, &mut chunk);
                chunk.sort_unstable_by_key(|p| p.0);
                scored.extend(self.score_pairs(kind, chunk, at, scoring));
                if walk.ended() {
                    break;
                }
                if let Some(last) = walk.last {
                    if can_stop(&scored, k, measure, last, n) {
                        return (rank(scored, k, &self.names), walk.taken);
                    }
                }
                want *= 2;
            }
            examined = walk.taken;
        }
        // Every indexed partner is scored; those seen together fewer times are
        // read from the pairs unless none of them can reach the k-th score.
        if !can_stop(&scored, k, measure, index::INDEXED_FROM - 1, n) {
            let all = self.pair_counts(kind, item, at);
            examined += all.len();
            let rest = all
                .into_iter()
                .filter(|(_, c)| *c < index::INDEXED_FROM)
                .collect();
            scored.extend(self.score_pairs(kind, rest, at, scoring));
        }
        (rank(scored, k, &self.names), examined)
    }

    /// Each `(b, c)` of `pairs` (in `b` order) scored, at the epoch of
    /// [`at_epoch`](Self::at_epoch): the `n(b)` not yet looked up at it in one
    /// forward pass over the counts. (The partners of popular items are mostly
    /// the same popular items: looked up once per epoch, not once per list.)
    fn score_pairs(
        &mut self,
        kind: Kind,
        pairs: Vec<(ItemId, i64)>,
        at: Time,
        scoring: Scoring,
    ) -> Vec<Scored> {
        let me = self.place.worker as u32;
        let n_of = &mut self.n_of;
        if n_of.len() > N_OF_MAX {
            n_of.clear();
        }
        let missing: Vec<ItemId> = pairs
            .iter()
            .map(|(b, _)| *b)
            .filter(|b| !n_of.contains_key(&(kind, *b)))
            .collect();
        if !missing.is_empty() {
            let (mut c, s) = cursor_at(&mut self.traces.stats);
            for b in missing {
                let key = &(me, kind, b);
                let mut nb = 0;
                let mut each = |_: (), r: Diff| nb = r;
                read_key_at!(c, s, key, at, each, _v => ());
                n_of.insert((kind, b), nb);
            }
        }
        pairs
            .into_iter()
            .map(|(b, c)| (b, scoring.score(c, n_of[&(kind, b)]), c))
            .collect()
    }

    /// `(b, c(item, b))` for every partner with `c > 0`, in `b` order.
    fn pair_counts(&mut self, kind: Kind, item: ItemId, at: Time) -> Vec<(ItemId, i64)> {
        let mut pairs = Vec::new();
        let (mut c, s) = cursor_at(&mut self.traces.pairs);
        let key = &(kind, item);
        let mut each = |b: &ItemId, d: Diff| {
            if d > 0 {
                pairs.push((*b, d))
            }
        };
        read_key_at!(c, s, key, at, each, val => val);
        pairs
    }

    /// For each of `items` this worker owns: whether it was seen, and its partners
    /// in `kind` with their counts (a part of a read asking every worker, so that
    /// the items of one question are read at one time).
    pub fn partners_owned(
        &mut self,
        items: &[ItemId],
        kind: Kind,
        cx: ReadCtx,
    ) -> Vec<ItemPartners> {
        let mut out = Vec::new();
        let place = self.place;
        for item in items.iter().filter(|i| place.owns(**i)) {
            let seen = read_key(&mut self.traces.seen, item, cx.at).is_some_and(|n| n > 0);
            let partners = self.pair_counts(kind, *item, cx.at);
            out.push(ItemPartners {
                item: *item,
                seen,
                partners,
            });
        }
        out
    }

    /// The latest interaction time of each item of `user`'s records inside the
    /// history window at `at` (on the user's owner), in item order.
    pub fn latest(&mut self, user: UserId, at: Time) -> Vec<(ItemId, Millis)> {
        let mut latest: Vec<(ItemId, Millis)> = Vec::new();
        let (mut c, s) = cursor_at(&mut self.traces.touches);
        let key = &user;
        let mut each = |(rec, item): &(Recency, ItemId), d: Diff| {
            if d > 0 {
                latest.push((*item, rec.0));
            }
        };
        read_key_at!(c, s, key, at, each, val => val);
        latest.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        latest.dedup_by_key(|l| l.0);
        latest
    }

    /// The history of `user` at `at` (its items, unordered), and whether the user
    /// is ignored; on the user's owner.
    pub fn history_of(&mut self, user: UserId, at: Time) -> (Vec<ItemId>, bool) {
        let mut items = Vec::new();
        let mut ignored = false;
        let (mut c, s) = cursor_at(&mut self.traces.history);
        let key = &user;
        let mut each = |e: &Entry, _d: Diff| match e {
            Entry::Item(i) => items.push(*i),
            Entry::Ignored => ignored = true,
            Entry::Unit => {}
        };
        read_key_at!(c, s, key, at, each, val => val);
        (items, ignored)
    }
}

impl View for SimilarityView {
    fn name(&self) -> &'static str {
        "similarity"
    }

    /// Moves the records of the ids merged at this epoch, retracts what leaves the
    /// window at its clock, then feeds the epoch's events.
    fn feed(&mut self, epoch: &EpochBatch<'_>) {
        self.inputs.advance_to(epoch.epoch);
        let f = &mut self.feeder;
        if !f.settings.enabled {
            self.inputs.advance_to(epoch.epoch + 1);
            self.inputs.flush();
            return;
        }
        for (id, user) in epoch.links {
            f.merge(*id, *user, &mut self.inputs);
        }
        f.expire(epoch.clock, epoch.aliases, &mut self.inputs);
        for ev in epoch.events {
            f.event(ev, epoch.clock, &mut self.inputs);
        }
        self.inputs.advance_to(epoch.epoch + 1);
        self.inputs.flush();
    }

    fn completed(&mut self, through: Time) {
        let key = (self.place.worker as u32, IGNORED, UNIT);
        self.ignored_users =
            read_key(&mut self.traces.stats, &key, through.saturating_sub(1)).unwrap_or(0);
    }

    fn compact(&mut self, frontier: Time) {
        self.traces.compact_to(frontier);
    }

    fn gauges(&self) -> Vec<(&'static str, f64)> {
        vec![
            // Users left out of co-occurrence for too many interactions on a day.
            (
                "shopstream_similarity_ignored_users",
                self.ignored_users as f64,
            ),
            // Orders left out of co-occurrence for too many distinct items.
            (
                "shopstream_similarity_oversized_orders",
                self.feeder.oversized as f64,
            ),
            // Interaction records waiting for their scheduled retraction.
            (
                "shopstream_similarity_history_records",
                self.feeder.schedule.len() as f64,
            ),
        ]
    }

    /// The feeder's state: its admitted records by user, its order book, the
    /// baskets of orders without an id (from the trace), the items it has seen.
    /// Histories, pairs and counts are derived from these again.
    fn snapshot(&mut self, at: Time) -> Vec<u8> {
        let mut state = SimilarityState {
            enabled: self.feeder.settings.enabled,
            records: Vec::new(),
            orders: Vec::new(),
            loose: Vec::new(),
            seen: Vec::new(),
            oversized: self.feeder.oversized,
        };
        for (user, set) in &self.feeder.tracked {
            state.records.extend(
                set.iter()
                    .map(|(exp, rec, item)| (*user, *exp, *rec, *item)),
            );
        }
        state.records.sort_unstable();
        state.orders = self
            .feeder
            .fifo
            .iter()
            .filter_map(|o| self.feeder.orders.get(o).map(|b| (*o, b.clone())))
            .collect();
        // What the baskets hold beyond what the book's orders account for (orders
        // without an id, and orders the book has forgotten), with multiplicity, so
        // that a restore holds exactly what the trace does.
        let (book, max) = (&self.feeder.orders, self.feeder.settings.max_order_items);
        let mut live: Option<(Sym, Vec<ItemId>)> = None;
        for_each_val(&mut self.traces.baskets, at, |order, item, d| {
            if live.as_ref().is_none_or(|(o, _)| o != order) {
                let items = book.get(order).map(|b| b.live(max)).unwrap_or_default();
                live = Some((*order, items));
            }
            let booked = live.as_ref().is_some_and(|(_, l)| l.contains(item));
            let extra = d - Diff::from(booked);
            if extra > 0 {
                state.loose.push((*order, *item, extra));
            }
        });
        for_each_key(&mut self.traces.seen, at, |item, d| {
            if d > 0 {
                state.seen.push(*item);
            }
        });
        encode_part(&state)
    }

    fn restore(&mut self, parts: &[Vec<u8>], at: Time, place: Place) -> Result<(), RestoreError> {
        self.inputs.advance_to(at);
        let f = &mut self.feeder;
        if parts.is_empty() && f.settings.enabled {
            return Err(RestoreError {
                view: "similarity",
                reason: "the snapshot holds no similarity state (a build without the view \
                         took it); remove the data directory's snapshots/ to rebuild it from \
                         the log"
                    .into(),
            });
        }
        for part in parts {
            let state: SimilarityState = decode_part("similarity", part)?;
            if !f.settings.enabled {
                return Ok(());
            }
            if !state.enabled {
                return Err(RestoreError {
                    view: "similarity",
                    reason: "the snapshot was taken with similarity.enabled = false, so it \
                             holds no similarity state; remove the data directory's snapshots/ \
                             to rebuild it from the log"
                        .into(),
                });
            }
            for (user, exp, rec, item) in state.records {
                if place.owns(user) {
                    f.admit(user, rec, item, exp, &mut self.inputs);
                }
            }
            for (order, basket) in state.orders {
                if place.owns(order) {
                    for item in basket.live(f.settings.max_order_items) {
                        self.inputs.baskets.update_at((order, item), at, 1);
                    }
                    f.remember(order, basket);
                }
            }
            for (order, item, d) in state.loose {
                if place.owns(order) {
                    self.inputs.baskets.update_at((order, item), at, d);
                }
            }
            for item in state.seen {
                if place.owns(item) && f.seen.insert(item) {
                    self.inputs.seen.update_at(item, at, 1);
                }
            }
            if place.worker == 0 {
                f.oversized += state.oversized;
            }
        }
        Ok(())
    }
}

/// A similarity snapshot part.
#[derive(Serialize, Deserialize)]
struct SimilarityState {
    /// Whether the view was maintained: a part of a switched-off view holds nothing.
    enabled: bool,
    /// `(canonical user, expires at, recency, item)`.
    records: Vec<(UserId, Millis, Recency, ItemId)>,
    /// The order book, oldest first.
    orders: Vec<(Sym, Basket)>,
    /// `(order, item, multiplicity)` the baskets hold beyond the book's orders (orders
    /// without an id, orders the book forgot).
    loose: Vec<(Sym, ItemId, Diff)>,
    seen: Vec<ItemId>,
    oversized: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recs(v: &[(Millis, u64, ItemId)]) -> Vec<((Recency, ItemId), Diff)> {
        let mut out: Vec<_> = v.iter().map(|(t, s, i)| (((*t, *s), *i), 1)).collect();
        out.sort();
        out
    }

    #[test]
    fn a_history_is_the_latest_distinct_items() {
        let r = recs(&[(1, 1, 10), (2, 2, 11), (3, 3, 10), (4, 4, 12), (5, 5, 13)]);
        let view: Vec<_> = r.iter().map(|(k, d)| (k, *d)).collect();
        let h = history(&view, 3, 100);
        assert_eq!(
            h,
            vec![
                Entry::Item(13),
                Entry::Item(12),
                Entry::Item(10),
                Entry::Unit
            ]
        );
        assert!(history(&[], 3, 100).is_empty());
    }

    #[test]
    fn a_busy_day_ignores_the_user() {
        let r = recs(&[
            (DAY_MS, 1, 1),
            (DAY_MS + 1, 2, 2),
            (DAY_MS + 2, 3, 3),
            (3 * DAY_MS, 4, 4),
        ]);
        let view: Vec<_> = r.iter().map(|(k, d)| (k, *d)).collect();
        assert_eq!(history(&view, 50, 2), vec![Entry::Ignored]);
        assert_eq!(history(&view, 50, 3).len(), 5);
        // One order of three items is one interaction.
        let r = recs(&[(DAY_MS, 1, 1), (DAY_MS, 1, 2), (DAY_MS, 1, 3)]);
        let view: Vec<_> = r.iter().map(|(k, d)| (k, *d)).collect();
        assert_eq!(history(&view, 50, 1).len(), 4);
    }
}
