//! Trace helpers every view shares: local arrangements, cursor reads at a time,
//! and compaction.
//!
//! A read runs on the worker that holds the trace, between steps, at a time the
//! host has checked is complete on every worker (it pinned it); so these helpers
//! read every batch up to the trace's own upper frontier and accumulate only the
//! updates at or before `as_of`. Nothing here checks completeness: that is the
//! host's job (`runtime::engine`), done once per read rather than per trace.
//!
//! Views keep their data on the worker that owns the key (see
//! [`crate::types::owner`]), so their arrangements are built with `Pipeline`
//! (no exchange): [`arrange_local_by_self`] and [`arrange_local_by_key`].

use differential_dataflow::difference::Semigroup;
use differential_dataflow::operators::arrange::arrangement::arrange_core;
use differential_dataflow::operators::arrange::{Arranged, TraceAgent};
use differential_dataflow::trace::cursor::{cursor_list, Cursor};
use differential_dataflow::trace::implementations::{KeyBatcher, ValBatcher};
use differential_dataflow::trace::implementations::{KeySpine, ValSpine};
use differential_dataflow::trace::TraceReader;
use differential_dataflow::{ExchangeData, VecCollection};
use timely::dataflow::channels::pact::{Exchange, ParallelizationContract, Pipeline};
use timely::progress::frontier::{Antichain, AntichainRef};

use crate::types::Time;

/// Arranges a keyed collection with no value on the worker it is on: the
/// difference carries the data.
pub fn arrange_local_by_self<'scope, K, R>(
    c: VecCollection<'scope, Time, K, R>,
    name: &str,
) -> Arranged<'scope, TraceAgent<KeySpine<K, Time, R>>>
where
    K: ExchangeData,
    R: ExchangeData + Semigroup,
{
    arrange_keys(c, Pipeline, name)
}

/// Arranges a `(key, value)` collection by key on the worker it is on.
pub fn arrange_local_by_key<'scope, K, V, R>(
    c: VecCollection<'scope, Time, (K, V), R>,
    name: &str,
) -> Arranged<'scope, TraceAgent<ValSpine<K, V, Time, R>>>
where
    K: ExchangeData,
    V: ExchangeData,
    R: ExchangeData + Semigroup,
{
    arrange_vals(c, Pipeline, name)
}

/// Arranges a keyed collection with no value on the worker `worker_of(key)` names
/// (updates produced elsewhere are exchanged there first): for views whose
/// updates are made away from their key's owner.
pub fn arrange_by_self_at<'scope, K, R>(
    c: VecCollection<'scope, Time, K, R>,
    worker_of: impl Fn(&K) -> u64 + 'static,
    name: &str,
) -> Arranged<'scope, TraceAgent<KeySpine<K, Time, R>>>
where
    K: ExchangeData,
    R: ExchangeData + Semigroup,
{
    let pact = Exchange::new(move |u: &((K, ()), Time, R)| worker_of(&(u.0).0));
    arrange_keys(c, pact, name)
}

/// Arranges a `(key, value)` collection by key on the worker `worker_of(key)`
/// names (see [`arrange_by_self_at`]).
pub fn arrange_by_key_at<'scope, K, V, R>(
    c: VecCollection<'scope, Time, (K, V), R>,
    worker_of: impl Fn(&K) -> u64 + 'static,
    name: &str,
) -> Arranged<'scope, TraceAgent<ValSpine<K, V, Time, R>>>
where
    K: ExchangeData,
    V: ExchangeData,
    R: ExchangeData + Semigroup,
{
    let pact = Exchange::new(move |u: &((K, V), Time, R)| worker_of(&(u.0).0));
    arrange_vals(c, pact, name)
}

/// A key-only arrangement of `c` where `pact` sends its updates.
fn arrange_keys<'scope, K, R, P>(
    c: VecCollection<'scope, Time, K, R>,
    pact: P,
    name: &str,
) -> Arranged<'scope, TraceAgent<KeySpine<K, Time, R>>>
where
    K: ExchangeData,
    R: ExchangeData + Semigroup,
    P: ParallelizationContract<Time, Vec<((K, ()), Time, R)>>,
{
    arrange_core::<_, _, KeyBatcher<K, Time, R>, KeySpine<K, Time, R>>(
        c.map(|k| (k, ())).inner,
        pact,
        name,
        KeyBatcher::new,
    )
}

/// A `(key, value)` arrangement of `c` where `pact` sends its updates.
fn arrange_vals<'scope, K, V, R, P>(
    c: VecCollection<'scope, Time, (K, V), R>,
    pact: P,
    name: &str,
) -> Arranged<'scope, TraceAgent<ValSpine<K, V, Time, R>>>
where
    K: ExchangeData,
    V: ExchangeData,
    R: ExchangeData + Semigroup,
    P: ParallelizationContract<Time, Vec<((K, V), Time, R)>>,
{
    arrange_core::<_, _, ValBatcher<K, V, Time, R>, ValSpine<K, V, Time, R>>(
        c.inner,
        pact,
        name,
        ValBatcher::new,
    )
}

/// Lets `trace` forget distinctions between times before `frontier` (logically
/// and physically: no read of this handle goes back before it).
pub fn compact<Tr: TraceReader<Time = Time>>(trace: &mut Tr, frontier: Time) {
    let f = [frontier];
    let f = AntichainRef::new(&f);
    trace.set_logical_compaction(f);
    trace.set_physical_compaction(f);
}

/// A cursor over a list of a trace's batches.
pub type SpineCursor<Tr> =
    differential_dataflow::trace::cursor::CursorList<differential_dataflow::trace::BatchCursor<Tr>>;

/// A cursor over every batch of `trace` up to its current upper frontier, with
/// the batches it reads (its storage).
pub fn cursor_at<Tr>(trace: &mut Tr) -> (SpineCursor<Tr>, Vec<Tr::Batch>)
where
    Tr: TraceReader<Time = Time>,
    Tr::Batch: differential_dataflow::trace::Navigable,
{
    let mut upper = Antichain::new();
    trace.read_upper(&mut upper);
    let batches = trace
        .batches_through(upper.borrow())
        .expect("the trace's own upper is a clean cut");
    cursor_list(batches)
}

/// Accumulates, at `as_of`, each value of the key the cursor is positioned on
/// with `seek_key` (the caller seeks; a cursor walking keys in order reads many
/// keys in one forward pass), calling `each(value, accumulated)` for the non-zero
/// ones, in value order. Used through [`read_vals`], [`read_key`] and the views'
/// batch reads.
#[macro_export]
macro_rules! read_key_at {
    ($cursor:ident, $storage:ident, $key:ident, $as_of:ident, $each:ident, $val:ident => $arg:expr) => {{
        #[allow(unused_imports)]
        use differential_dataflow::difference::{IsZero as _, Semigroup as _};
        #[allow(unused_imports)]
        use differential_dataflow::trace::cursor::Cursor as _;
        $cursor.seek_key(&$storage, $key);
        if $cursor.get_key(&$storage) == Some($key) {
            while let Some($val) = $cursor.get_val(&$storage) {
                let mut acc = None;
                $cursor.map_times(&$storage, |t, d| {
                    if *t <= $as_of {
                        match &mut acc {
                            None => acc = Some(d.clone()),
                            Some(a) => a.plus_equals(d),
                        }
                    }
                });
                if let Some(a) = acc {
                    if !a.is_zero() {
                        $each($arg, a);
                    }
                }
                $cursor.step_val(&$storage);
            }
        }
    }};
}

/// Accumulates, at `as_of`, the values of `key` in a `(key, val)` trace.
pub fn read_vals<K, V, R>(
    trace: &mut TraceAgent<ValSpine<K, V, Time, R>>,
    key: &K,
    as_of: Time,
    mut each: impl FnMut(&V, R),
) where
    K: ExchangeData,
    V: ExchangeData,
    R: ExchangeData + Semigroup,
{
    let (mut cursor, storage) = cursor_at(trace);
    read_key_at!(cursor, storage, key, as_of, each, val => val);
}

/// Accumulates, at `as_of`, the difference of `key` in a key-only trace.
pub fn read_key<K, R>(
    trace: &mut TraceAgent<KeySpine<K, Time, R>>,
    key: &K,
    as_of: Time,
) -> Option<R>
where
    K: ExchangeData,
    R: ExchangeData + Semigroup,
{
    let (mut cursor, storage) = cursor_at(trace);
    let mut out = None;
    let mut each = |_: (), r: R| out = Some(r);
    read_key_at!(cursor, storage, key, as_of, each, _val => ());
    out
}

/// Calls `each(key, accumulated)` for every key of a key-only trace whose
/// difference at `as_of` is not zero, in key order.
pub fn for_each_key<K, R>(
    trace: &mut TraceAgent<KeySpine<K, Time, R>>,
    as_of: Time,
    mut each: impl FnMut(&K, R),
) where
    K: ExchangeData,
    R: ExchangeData + Semigroup,
{
    let (mut cursor, storage) = cursor_at(trace);
    while let Some(key) = cursor.get_key(&storage) {
        let mut acc: Option<R> = None;
        cursor.map_times(&storage, |t, d| {
            if *t <= as_of {
                match &mut acc {
                    None => acc = Some(d.clone()),
                    Some(a) => a.plus_equals(d),
                }
            }
        });
        if let Some(a) = acc.filter(|a| !a.is_zero()) {
            each(key, a);
        }
        cursor.step_key(&storage);
    }
}

/// Calls `each(key, val, accumulated)` for every `(key, val)` of a trace whose
/// difference at `as_of` is not zero, in key and value order (a snapshot's walk).
pub fn for_each_val<K, V, R>(
    trace: &mut TraceAgent<ValSpine<K, V, Time, R>>,
    as_of: Time,
    mut each: impl FnMut(&K, &V, R),
) where
    K: ExchangeData,
    V: ExchangeData,
    R: ExchangeData + Semigroup,
{
    let (mut cursor, storage) = cursor_at(trace);
    while let Some(key) = cursor.get_key(&storage) {
        let mut each = |v: &V, r: R| each(key, v, r);
        read_key_at!(cursor, storage, key, as_of, each, val => val);
        cursor.step_key(&storage);
    }
}

/// Method-call syntax for a function of a value (keeps an operator chain readable).
pub trait Pipe: Sized {
    fn pipe<T>(self, f: impl FnOnce(Self) -> T) -> T {
        f(self)
    }
}
impl<S> Pipe for S {}
