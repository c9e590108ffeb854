//! Each item's partners in count order, and the reads that stop early.
//!
//! The pairs trace holds `c(a, b)` in its difference, partners in item order: the
//! order a read of a few given partners (bundles) or of all of them (`lift`,
//! `llr`) wants. A top-`k` read by `count`, `jaccard` or `cosine` wants the
//! partners with the most units together first, because for those measures the
//! count bounds the score ([`Measure::bound`]). So each pair is also kept as data,
//! `((kind, a), (order, b))` with `order` = `u32::MAX − c(a, b)`: the cursor walks
//! an item's partners from the greatest count down. A read takes them in chunks
//! (the first `k`, then doubling), scores each chunk with the partners' `n(b)`,
//! and stops when no partner left unread can reach the `k`-th score (ties
//! included). An item with 100,000 partners, most of them seen once together,
//! is answered from its few hundred strongest.
//!
//! The index is derived from the pair counts by [`count_changes`] (each change of
//! a count retracts the pair at its old order and adds it at its new one), on the
//! worker that owns `a`, as the pairs are. It holds the pairs seen together at
//! least [`INDEXED_FROM`] times: when the indexed partners are all read and the
//! `k`-th score is still within reach of a pair seen once, the read takes those
//! from the pairs trace (one pass over the item's partners, as `lift` does).

use differential_dataflow::operators::arrange::Arranged;
use differential_dataflow::trace::cursor::Cursor;

use super::measure::{by_score, Measure, Scored};
use super::Kind;
use crate::operators::count_changes;
use crate::read::{arrange_local_by_key, SpineCursor};
use crate::types::{Diff, ItemId, Time, ValTrace};

/// The least count a pair is indexed with. The pairs seen together once are
/// most of a popular item's partners and most of the pairs' churn (each comes
/// and goes with one history); they are left out of the index, and a read that
/// reaches down to them (an item without `k` stronger partners) takes them from
/// the pairs trace.
pub const INDEXED_FROM: Diff = 2;

/// A pair's place in its item's list: the greater the count, the smaller.
pub type Order = u32;

/// The order of a pair with `c` units together.
pub fn order_of(c: Diff) -> Order {
    u32::MAX - c.clamp(0, Diff::from(u32::MAX)) as u32
}

/// The count of a pair at `order`.
pub fn count_of(order: Order) -> Diff {
    Diff::from(u32::MAX - order)
}

/// `((kind, a), (order, b))` for each pair with `c(a, b) ≥ INDEXED_FROM`.
pub type ByCount = ValTrace<(Kind, ItemId), (Order, ItemId)>;

/// The pairs by count, from the pairs by partner, on the same worker.
pub fn by_count<'scope>(
    pairs: Arranged<'scope, ValTrace<(Kind, ItemId), ItemId>>,
) -> Arranged<'scope, ByCount> {
    let changes = count_changes(pairs, "Similarity: pair count changes");
    arrange_local_by_key(
        changes.explode(|((key, b), (before, after))| {
            let out = [
                ((key, (order_of(before), b)), -1),
                ((key, (order_of(after), b)), 1),
            ];
            let live = [before >= INDEXED_FROM, after >= INDEXED_FROM];
            out.into_iter()
                .zip(live)
                .filter(|(_, l)| *l)
                .map(|(o, _)| o)
        }),
        "Similarity: partners by count",
    )
}

/// A walk down one item's partners in count order, at a time.
pub struct CountOrder {
    cursor: SpineCursor<ByCount>,
    storage: Vec<<ByCount as differential_dataflow::trace::TraceReader>::Batch>,
    at: Time,
    /// The count of the last partner taken.
    pub last: Option<Diff>,
    /// Partners taken.
    pub taken: usize,
}

impl CountOrder {
    /// Positions a walk on `key`'s partners (none if it has none).
    pub fn new(trace: &mut ByCount, key: (Kind, ItemId), at: Time) -> Option<CountOrder> {
        let (mut cursor, storage) = crate::read::cursor_at(trace);
        cursor.seek_key(&storage, &key);
        (cursor.get_key(&storage) == Some(&key)).then_some(CountOrder {
            cursor,
            storage,
            at,
            last: None,
            taken: 0,
        })
    }

    /// The next at most `n` partners live at the walk's time, as `(b, c)`;
    /// fewer only when the list ends.
    pub fn take(&mut self, n: usize, into: &mut Vec<(ItemId, Diff)>) {
        let (c, s, at) = (&mut self.cursor, &self.storage, self.at);
        let mut got = 0;
        while got < n {
            let Some(&(order, b)) = c.get_val(s) else {
                break;
            };
            let mut live = 0;
            c.map_times(s, |t, d| {
                if *t <= at {
                    live += *d;
                }
            });
            if live > 0 {
                let count = count_of(order);
                into.push((b, count));
                self.last = Some(count);
                got += 1;
            }
            c.step_val(s);
        }
        self.taken += got;
    }

    /// Whether every partner has been taken.
    pub fn ended(&self) -> bool {
        self.cursor.get_val(&self.storage).is_none()
    }
}

/// Whether a read by `measure` of the first `k` of `scored` can stop: no partner
/// with at most `last` units together with an item in `na` units can score as
/// much as the `k`-th (a margin covers the round-off between a bound and a score
/// computed another way).
pub fn can_stop(scored: &[Scored], k: usize, measure: Measure, last: Diff, na: Diff) -> bool {
    let Some(bound) = measure.bound(last, na) else {
        return false;
    };
    if k == 0 || scored.len() < k {
        return false;
    }
    let mut kth: Vec<Scored> = scored.to_vec();
    kth.select_nth_unstable_by(k - 1, by_score);
    bound * (1.0 + 1e-9) < kth[k - 1].1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_put_greater_counts_first() {
        assert!(order_of(5) < order_of(4));
        assert_eq!(count_of(order_of(7)), 7);
        assert_eq!(count_of(order_of(0)), 0);
    }

    #[test]
    fn a_read_stops_only_below_the_kth_score() {
        // na = 100; cosine bound at c = 4 is 0.2.
        let scored = vec![(1, 0.5, 25), (2, 0.3, 9), (3, 0.2, 4)];
        assert!(can_stop(&scored, 2, Measure::Cosine, 4, 100));
        // The third ties with the bound: a partner with c = 4 and n = 4 would tie.
        assert!(!can_stop(&scored, 3, Measure::Cosine, 4, 100));
        assert!(!can_stop(&scored, 4, Measure::Cosine, 1, 100));
        assert!(!can_stop(&scored, 1, Measure::Lift, 1, 100));
        let counts = vec![(1, 25.0, 25), (2, 9.0, 9)];
        assert!(can_stop(&counts, 1, Measure::Count, 24, 100));
        assert!(!can_stop(&counts, 1, Measure::Count, 25, 100));
    }
}
