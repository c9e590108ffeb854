//! Operators views share beyond differential's own.

use differential_dataflow::operators::arrange::Arranged;
use differential_dataflow::trace::cursor::{cursor_list, Cursor, Navigable};
use differential_dataflow::trace::TraceReader;
use differential_dataflow::{AsCollection, ExchangeData, VecCollection};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::{CapabilitySet, Operator};
use timely::progress::frontier::Antichain;

use crate::read::SpineCursor;
use crate::types::{Diff, Time, ValTrace};

/// A batch of a `(key, value)` trace.
pub type Batch<K, V> = <ValTrace<K, V> as TraceReader>::Batch;

/// The skeleton of an operator for totally ordered time that turns the changes
/// an arrangement receives into other changes, knowing what the arrangement held
/// before them (as differential's `count_total` does): `logic` gets a cursor
/// over the new batches (their storage beside it), the trace's batches up to
/// them, and a buffer for its output `(data, time, diff)`. No output trace is
/// kept and no key's history is replayed.
pub fn after_trace<'scope, K, V, D>(
    arranged: Arranged<'scope, ValTrace<K, V>>,
    name: &str,
    mut logic: impl FnMut(
            &mut SpineCursor<ValTrace<K, V>>,
            &Vec<Batch<K, V>>,
            Vec<Batch<K, V>>,
            &mut Vec<(D, Time, Diff)>,
        ) + 'static,
) -> VecCollection<'scope, Time, D, Diff>
where
    K: ExchangeData,
    V: ExchangeData,
    D: ExchangeData,
{
    let mut trace = arranged.trace.clone();
    arranged
        .stream
        .unary_frontier(Pipeline, name, move |_, _| {
            let mut lower = Antichain::from_elem(0 as Time);
            let mut upper = Antichain::from_elem(0 as Time);
            let mut out = Vec::new();
            move |(input, _frontier), output| {
                let mut spans = Vec::new();
                lower.clone_from(&upper);
                let mut caps = CapabilitySet::new();
                input.for_each(|cap, data| {
                    for c in cap.retain_stamp(0).iter() {
                        caps.insert(c.clone());
                    }
                    for span in data.drain(..) {
                        // Spans arrive in order.
                        upper.clone_from(span.upper());
                        spans.push(span);
                    }
                });
                if !caps.is_empty() {
                    let (mut bc, bs) =
                        cursor_list(spans.into_iter().filter_map(|s| s.inner).collect());
                    let before = trace
                        .batches_through(lower.borrow())
                        .expect("the trace is not compacted past what was read");
                    logic(&mut bc, &bs, before, &mut out);
                    output.session(&caps).give_iterator(out.drain(..));
                }
                trace.advance_upper(&mut upper);
                trace.set_logical_compaction(upper.borrow());
                trace.set_physical_compaction(upper.borrow());
            }
        })
        .as_collection()
}

/// `((key, value), (count before, count after))`.
pub type CountChange<K, V> = ((K, V), (Diff, Diff));

/// The changes of each `(key, value)`'s count in `arranged`, as
/// `((key, value), (before, after))` at the time of each change (one record per
/// change; a count that does not change at a time gives nothing).
///
/// Turns a count kept in the difference into data, so that it can be arranged
/// by (for example, partners in count order); [`after_trace`] gives the counts
/// before a batch, whose updates are then applied in time order.
pub fn count_changes<'scope, K, V>(
    arranged: Arranged<'scope, ValTrace<K, V>>,
    name: &str,
) -> VecCollection<'scope, Time, CountChange<K, V>, Diff>
where
    K: ExchangeData,
    V: ExchangeData,
{
    let mut updates: Vec<(Time, Diff)> = Vec::new();
    after_trace(arranged, name, move |bc, bs, batches, out| {
        // One cursor per batch of the trace, rather than a cursor list: a list's
        // `seek_val` moves every cursor, also those that have run out of keys,
        // which panics (differential 0.26).
        let mut tcs: Vec<_> = batches.iter().map(|b| b.cursor()).collect();
        let mut at_key: Vec<usize> = Vec::new();
        while let Some(key) = bc.get_key(bs) {
            at_key.clear();
            for (i, (c, s)) in tcs.iter_mut().zip(&batches).enumerate() {
                c.seek_key(s, key);
                if c.get_key(s) == Some(key) {
                    at_key.push(i);
                }
            }
            while let Some(val) = bc.get_val(bs) {
                let mut count: Diff = 0;
                for &i in &at_key {
                    let (c, s) = (&mut tcs[i], &batches[i]);
                    c.seek_val(s, val);
                    if c.get_val(s) == Some(val) {
                        c.map_times(s, |_, d| count += *d);
                    }
                }
                updates.clear();
                bc.map_times(bs, |t, d| updates.push((*t, *d)));
                updates.sort_unstable_by_key(|u| u.0);
                let mut i = 0;
                while i < updates.len() {
                    let (t, before) = (updates[i].0, count);
                    while i < updates.len() && updates[i].0 == t {
                        count += updates[i].1;
                        i += 1;
                    }
                    if count != before {
                        out.push((((key.clone(), val.clone()), (before, count)), t, 1));
                    }
                }
                bc.step_val(bs);
            }
            bc.step_key(bs);
        }
    })
}
