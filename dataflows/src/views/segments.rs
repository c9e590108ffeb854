//! # Segments
//!
//! Specification, at every epoch `E` with engine clock `c(E)`: user `u` is a member
//! of segment `s` iff `s` is defined at `E` and its rule ([`crate::rules`]) holds
//! for `u`'s profile at `E`, evaluated at clock `c(E)`. A membership carries
//! `since`: the `(seq, clock)` of the epoch at which the user last entered (a user
//! who stays in while a rule is redefined keeps their `since`).
//!
//! ## How it is maintained
//!
//! A rule is a predicate over the *accumulated* profile: sums, mins and maxes
//! that ride in monoid differences, and facets and traits keyed per user. Turning
//! those back into data for a `filter` would take a `reduce` per source (a second
//! copy of every profile) and a join to put the pieces together. Instead one
//! operator per worker, `Segments: evaluate`, is handed the keys that changed in
//! the profile arrangements at each epoch (their batches, so it runs only once the
//! traces hold that epoch) and reads just those users' profiles by cursor, the way
//! a query does, then evaluates every compiled rule and emits the difference
//! against the memberships it holds. So its cost is per *changed user*, and
//! memory is one small entry per member.
//!
//! Three things change memberships without a change of the user's profile, and
//! each is an explicit input of the operator, so live runs and replays agree:
//!
//! * **Time.** `days_since(last_order_at) > 60` turns true when the clock passes
//!   `last_order_at + 61 days`, with no event. For every rule that reads the clock,
//!   evaluation also says when the answer could next change
//!   ([`Rule::next_change`]); the operator keeps one wake-up per user in a heap and
//!   re-evaluates the user at the first epoch whose clock reaches it. The clock of
//!   each epoch is an input (it is in the log), so this is exact to the epoch.
//!   Window exits need nothing extra: the profile's windows already retract at
//!   their epoch, and that is a change of the user.
//! * **Definitions.** Defining a segment at epoch `E` evaluates its rule for every
//!   user of the worker at `E` (all history, compacted); dropping it emits an exit
//!   for every member. Definitions come through the log like events.
//! * **RFM scores** are ranks over all users: one user's order can move the score
//!   of everyone in some bucket. While a rule reads them, the operator keeps its
//!   buyers indexed by `(dimension, bucket)` and a table of every bucket's score;
//!   when the histogram changes at `E`, it recomputes the table from its copy of
//!   the histogram (a few hundred buckets) and re-evaluates the buyers of the
//!   buckets whose score moved. A user's scores are then a lookup, not a scan.
//!
//! Identity merges need nothing of their own: a link at `E` changes both
//! profiles at `E` (the merged id gets the [`MERGED`](crate::views::profiles::MERGED)
//! mark, its user the id's totals), so both are touched; a merged id is a member
//! of nothing, so the feed reports its exits and the user's enters at `E`.
//!
//! The output, `(segment, user, since)` with `±1`, is arranged three ways, all on
//! the worker that owns the user (no exchange): by segment (members, paged in
//! user-id order), by user (a user's segments and `since`), and as per-segment
//! counts (sizes). Its updates are also what the change feed publishes.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

use differential_dataflow::operators::arrange::Arranged;
use differential_dataflow::trace::cursor::Cursor;
use differential_dataflow::trace::TraceReader;
use differential_dataflow::{AsCollection, VecCollection};
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::operators::vec::input::Handle as InputHandle;
use timely::dataflow::operators::vec::{Input, Map};
use timely::dataflow::operators::{Capability, Concatenate, Inspect, Probe};
use timely::dataflow::{Scope, StreamVec};

use crate::read::{
    arrange_local_by_key, arrange_local_by_self, compact, for_each_key, for_each_val, read_key,
    read_vals, Pipe,
};
use crate::rules::{Needs, Rule, Subject};
use crate::types::{Diff, IdMap, IdSet, Millis, Sym, Time, UserId, UserKeyTrace, UserValTrace};
use crate::view::{decode_part, encode_part, Env, EpochBatch, Names, Place, RestoreError, View};
use crate::views::profiles::{
    rfm_buckets, ProfileArrangements, ProfileTraces, Rank, UserProfile, RFM_FREQUENCY,
    RFM_MONETARY, RFM_RECENCY,
};

/// The catalog's name for segment definitions: their compiled value is a [`Rule`].
pub const KIND: &str = "segment";

/// A segment: the 64-bit hash of its name (stable across restarts and workers).
pub type SegId = u64;

/// When a user entered a segment: the last sequence number and the clock of the
/// epoch at which they entered.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Since {
    pub seq: u64,
    pub clock: Millis,
}

/// One membership.
pub type Membership = (SegId, UserId, Since);

/// A membership change at an epoch: `+1` enter, `-1` exit.
pub type Change = (Membership, Time, Diff);

/// What the operator learns at an epoch.
#[derive(Clone)]
enum Msg {
    /// The user's profile changed.
    Touch(UserId),
    /// The RFM histogram changed.
    Rescore,
    /// The epoch's last sequence number and clock (one per epoch).
    Epoch {
        seq: u64,
        clock: Millis,
    },
    Define(SegId, Arc<Rule>),
    Drop(SegId),
    /// A membership saved by a snapshot, restored at the snapshot's epoch.
    Restore(Membership),
}

/// The segment view's input: one per worker, fed the same definitions and epochs
/// on every worker.
pub struct SegmentInputs {
    handle: InputHandle<Time, (Msg, Time)>,
}

impl SegmentInputs {
    fn send(&mut self, msg: Msg) {
        let t = *self.handle.time();
        self.handle.send((msg, t));
    }

    /// Defines (or redefines) segment `id` with `rule` from the current epoch on.
    pub fn define(&mut self, id: SegId, rule: Arc<Rule>) {
        self.send(Msg::Define(id, rule));
    }

    /// Drops segment `id` at the current epoch: every member exits.
    pub fn drop_segment(&mut self, id: SegId) {
        self.send(Msg::Drop(id));
    }

    /// Restores a membership from a snapshot at the current epoch.
    pub fn restore(&mut self, m: Membership) {
        self.send(Msg::Restore(m));
    }

    /// Moves to epoch `time` (no earlier than the current one).
    pub fn advance_to(&mut self, time: Time) {
        if time > *self.handle.time() {
            self.handle.advance_to(time);
        }
    }

    /// Closes the current epoch: its last sequence number and its clock, then
    /// moves to `next`.
    pub fn close_epoch(&mut self, seq: u64, clock: Millis, next: Time) {
        self.send(Msg::Epoch { seq, clock });
        self.handle.advance_to(next);
        self.handle.flush();
    }
}

/// The segment view's traces, read by cursor between steps.
pub struct SegmentTraces {
    /// segment → member users.
    pub by_segment: UserValTrace<UserId, Diff>,
    /// user → (segment, since).
    pub by_user: UserValTrace<(SegId, Since), Diff>,
    /// segment → number of members (on this worker).
    pub sizes: UserKeyTrace<Diff>,
}

/// Membership changes as the operator emits them, for the host to publish once
/// their epoch is complete.
pub type ChangeBuffer = Rc<RefCell<Vec<Change>>>;

/// An epoch as the change feed needs it, whether or not it has changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StagedEpoch {
    pub epoch: Time,
    pub seq: u64,
    pub clock: Millis,
    /// Segments dropped at this epoch (and not defined again in it): their
    /// members all exit at it, and the feed forgets their sizes then. Decided
    /// by the epoch, not by the catalog when the feed publishes (during a replay
    /// the catalog is ahead), so that a replay keeps what a live run kept.
    pub dropped: Vec<SegId>,
}

/// Where a worker hands the membership changes of its complete epochs: the
/// host's change feed. `epochs` are the epochs below `through` not handed over
/// before.
pub trait ChangeSink: Send + Sync {
    fn stage(&self, worker: usize, through: Time, changes: Vec<Change>, epochs: Vec<StagedEpoch>);
}

/// The segment view on one worker.
pub struct SegmentView {
    inputs: SegmentInputs,
    pub traces: SegmentTraces,
    changes: ChangeBuffer,
    sink: Arc<dyn ChangeSink>,
    /// Epochs fed whose changes are not staged yet: (epoch, seq, clock).
    unstaged: VecDeque<StagedEpoch>,
    worker: usize,
    /// The epoch a snapshot was restored at: its updates put back memberships
    /// the change feed has already published (the host restored the feed), so
    /// they are not staged again.
    restored_at: Option<Time>,
}

/// Builds the segment view over the profile view's arrangements, in the same
/// dataflow. Reads [`Names`] and the [`ChangeSink`] from `env` (the host must
/// provide both: without a sink the change feed would silently stall).
pub fn build<'scope>(
    scope: Scope<'scope, Time>,
    env: &Env,
    probe: &ProbeHandle<Time>,
    profiles: &ProfileArrangements<'scope>,
) -> (SegmentView, ()) {
    let names = env.expect::<Names>();
    let (handle, control) = scope.new_input::<(Msg, Time)>();
    let touches = [
        touched(profiles.own.lifetime.clone()),
        touched(profiles.own.windows.clone()),
        touched(profiles.own.facets.clone()),
        touched(profiles.own.traits.clone()),
        // What merges moved into users, and the marks of the merged ids.
        touched(profiles.moved.lifetime.clone()),
        touched(profiles.moved.windows.clone()),
        touched(profiles.moved.facets.clone()),
        touched(profiles.moved.traits.clone()),
        profiles
            .rfm
            .clone()
            .flat_map_ref(|_, _| Some(()))
            .inner
            .map(|((), t, _)| (Msg::Rescore, t)),
        control,
    ];
    let members = scope
        .concatenate(touches)
        .pipe(|msgs| evaluate(msgs, profiles.traces(), names, scope.index()));
    let changes: ChangeBuffer = Rc::default();
    let sink = changes.clone();
    let members = members
        .inner
        .inspect(move |c: &Change| sink.borrow_mut().push(*c))
        .as_collection();
    let by_segment = arrange_local_by_key(
        members.clone().map(|(s, u, _)| (s, u)),
        "Segments: by segment",
    );
    let by_user = arrange_local_by_key(
        members.clone().map(|(s, u, since)| (u, (s, since))),
        "Segments: by user",
    );
    let sizes = arrange_local_by_self(members.map(|(s, _, _)| s), "Segments: sizes");
    by_segment.stream.clone().probe_with(probe);
    by_user.stream.clone().probe_with(probe);
    sizes.stream.clone().probe_with(probe);
    let view = SegmentView {
        inputs: SegmentInputs { handle },
        traces: SegmentTraces {
            by_segment: by_segment.trace,
            by_user: by_user.trace,
            sizes: sizes.trace,
        },
        changes,
        sink: env.expect::<Arc<dyn ChangeSink>>(),
        unstaged: VecDeque::new(),
        worker: scope.index(),
        restored_at: None,
    };
    (view, ())
}

impl View for SegmentView {
    fn name(&self) -> &'static str {
        "segments"
    }

    /// Applies the epoch's segment definitions, then closes the epoch with its
    /// sequence number and clock (the operator evaluates once it is complete).
    fn feed(&mut self, epoch: &EpochBatch<'_>) {
        // A log that starts past epoch 0 (older files removed) still stamps each
        // epoch's updates with its own number.
        self.inputs.advance_to(epoch.epoch);
        let mut dropped = Vec::new();
        for change in epoch.definitions.iter().filter(|c| c.kind == KIND) {
            dropped.retain(|d| *d != change.id);
            match change.compiled_as::<Rule>() {
                Some(rule) => self.inputs.define(change.id, rule),
                None => {
                    self.inputs.drop_segment(change.id);
                    dropped.push(change.id);
                }
            }
        }
        self.inputs
            .close_epoch(epoch.seq, epoch.clock, epoch.epoch + 1);
        self.unstaged.push_back(StagedEpoch {
            epoch: epoch.epoch,
            seq: epoch.seq,
            clock: epoch.clock,
            dropped,
        });
    }

    /// Hands the membership changes of the epochs below `through` to the sink.
    fn completed(&mut self, through: Time) {
        let mut buffer = self.changes.borrow_mut();
        let (mut ready, later): (Vec<_>, Vec<_>) =
            buffer.drain(..).partition(|(_, t, _)| *t < through);
        *buffer = later;
        drop(buffer);
        if let Some(at) = self.restored_at {
            ready.retain(|(_, t, _)| *t != at);
        }
        let mut epochs = Vec::new();
        while self.unstaged.front().is_some_and(|e| e.epoch < through) {
            epochs.extend(self.unstaged.pop_front());
        }
        self.sink.stage(self.worker, through, ready, epochs);
    }

    fn compact(&mut self, frontier: Time) {
        self.traces.compact_to(frontier);
    }

    /// Every membership with its `since`. The operator's other state (wake-ups,
    /// the RFM index) is derived again: the restored epoch carries every
    /// definition, so every user is evaluated at it, and members who still
    /// match keep their `since`.
    fn snapshot(&mut self, at: Time) -> Vec<u8> {
        let mut members: Vec<Membership> = Vec::new();
        for_each_val(&mut self.traces.by_user, at, |u, (s, since), d| {
            if d > 0 {
                members.push((*s, *u, *since));
            }
        });
        encode_part(&members)
    }

    fn restore(&mut self, parts: &[Vec<u8>], at: Time, place: Place) -> Result<(), RestoreError> {
        self.inputs.advance_to(at);
        for part in parts {
            let members: Vec<Membership> = decode_part("segments", part)?;
            for m in members.into_iter().filter(|m| place.owns(m.1)) {
                self.inputs.restore(m);
            }
        }
        self.restored_at = Some(at);
        Ok(())
    }
}

/// The users whose entries in `arranged` changed, at the times they changed.
fn touched<'scope, Tr>(arranged: Arranged<'scope, Tr>) -> StreamVec<'scope, Time, (Msg, Time)>
where
    Tr: TraceReader<Time = Time> + Clone + 'static,
    Tr::Batch: differential_dataflow::trace::Navigable,
    differential_dataflow::trace::BatchCursor<Tr>:
        for<'a> Cursor<Time = Time, Key<'a> = &'a UserId>,
{
    arranged
        .flat_map_ref(|user, _| Some(*user))
        .inner
        .map(|(user, t, _)| (Msg::Touch(user), t))
}

/// The evaluating operator: stashes what each epoch brings and, once the epoch is
/// complete at its input (so the profile traces hold it), evaluates the users it
/// touched.
fn evaluate<'scope>(
    msgs: StreamVec<'scope, Time, (Msg, Time)>,
    traces: ProfileTraces,
    names: Names,
    worker: usize,
) -> VecCollection<'scope, Time, Membership, Diff> {
    msgs.unary_frontier(Pipeline, "Segments: evaluate", move |_cap, _info| {
        let mut state = Evaluator::new(traces, names, worker);
        let mut stash: BTreeMap<Time, (Capability<Time>, Vec<Msg>)> = BTreeMap::new();
        move |(input, frontier), output| {
            input.for_each(|cap, data| {
                for (msg, t) in data.drain(..) {
                    stash
                        .entry(t)
                        .or_insert_with(|| (cap.delayed(&t, 0), Vec::new()))
                        .1
                        .push(msg);
                }
            });
            while let Some(entry) = stash.first_entry() {
                let t = *entry.key();
                if frontier.less_equal(&t) {
                    break;
                }
                let (cap, msgs) = entry.remove();
                let mut session = output.session(&cap);
                state.step(t, msgs, &mut |m, d| session.give((m, t, d)));
            }
        }
    })
    .container::<Vec<_>>()
    .as_collection()
}

/// A user's memberships on this worker (sorted by segment) and pending wake-up.
#[derive(Default)]
struct UserState {
    segments: Vec<(SegId, Since)>,
    /// The clock at which a clock-driven rule may change its answer.
    wake: Option<Millis>,
}

struct Evaluator {
    traces: ProfileTraces,
    names: Names,
    /// Texts of category and brand ids compared for `top_*` ties (few, reused).
    name_cache: RefCell<IdMap<Arc<str>>>,
    worker: usize,
    rules: BTreeMap<SegId, Arc<Rule>>,
    needs: Needs,
    users: IdMap<UserState>,
    /// Pending wake-ups, one per user at most (`UserState::wake`): a set rather
    /// than a heap, so a moved wake-up replaces the old one instead of piling up.
    wakes: BTreeSet<(Millis, UserId)>,
    /// The latest epoch's `(seq, clock)`.
    last: Since,
    /// While a rule reads RFM scores: each `(bucket, score)` per dimension at the
    /// current epoch, in bucket order.
    scores: Option<[Vec<(i64, u8)>; 3]>,
    /// While a rule reads RFM scores: each buyer's RFM buckets, and the buyers in
    /// each `(dimension, bucket)`, so that a change of the histogram re-evaluates
    /// only the users whose score it moved.
    buckets: IdMap<[i64; 3]>,
    by_bucket: HashMap<(u8, i64), IdSet>,
}

impl Evaluator {
    fn new(traces: ProfileTraces, names: Names, worker: usize) -> Self {
        Evaluator {
            traces,
            names,
            name_cache: RefCell::default(),
            worker,
            rules: BTreeMap::new(),
            needs: Needs::default(),
            users: IdMap::default(),
            wakes: BTreeSet::new(),
            last: Since {
                seq: 0,
                clock: Millis::MIN,
            },
            scores: None,
            buckets: IdMap::default(),
            by_bucket: HashMap::new(),
        }
    }

    fn step(&mut self, t: Time, msgs: Vec<Msg>, emit: &mut impl FnMut(Membership, Diff)) {
        let mut touched = Vec::new();
        let mut everyone = false;
        let mut rescore = false;
        let mut dropped = Vec::new();
        let mut restored = Vec::new();
        for m in msgs {
            match m {
                Msg::Restore(m) => restored.push(m),
                Msg::Touch(u) => touched.push(u),
                Msg::Rescore => rescore = true,
                Msg::Epoch { seq, clock } => self.last = Since { seq, clock },
                Msg::Define(id, rule) => {
                    self.rules.insert(id, rule);
                    dropped.retain(|d| *d != id);
                    everyone = true;
                }
                Msg::Drop(id) => {
                    self.rules.remove(&id);
                    dropped.push(id);
                }
            }
        }
        for (seg, user, since) in restored {
            let st = self.users.entry(user).or_default();
            if let Err(at) = st.segments.binary_search_by_key(&seg, |(s, _)| *s) {
                st.segments.insert(at, (seg, since));
                emit((seg, user, since), 1);
            }
        }
        self.needs = self
            .rules
            .values()
            .fold(Needs::default(), |n, r| n.union(r.needs));
        if !dropped.is_empty() {
            self.users.retain(|user, st| {
                st.segments.retain(|(s, since)| {
                    let keep = !dropped.contains(s);
                    if !keep {
                        emit((*s, *user, *since), -1);
                    }
                    keep
                });
                !st.segments.is_empty() || st.wake.is_some()
            });
        }
        if self.rules.is_empty() && self.users.is_empty() {
            self.wakes.clear();
            // This operator reads nothing before `t` any more.
            self.traces.compact_to(t);
            return;
        }
        let clock = self.last.clock;
        while let Some(&(w, u)) = self.wakes.first() {
            if w > clock {
                break;
            }
            self.wakes.pop_first();
            if let Some(st) = self.users.get_mut(&u) {
                st.wake = None;
            }
            touched.push(u);
        }
        if !self.needs.rfm {
            self.buckets.clear();
            self.by_bucket.clear();
        }
        let rescored = if self.needs.rfm && (rescore || everyone || self.scores.is_none()) {
            self.refresh_scores(t)
        } else {
            Vec::new()
        };
        if !self.needs.rfm {
            self.scores = None;
        }
        if everyone {
            touched = self.traces.users(t);
            // Members whose profile is gone (cannot happen today: profiles only
            // grow) would be missed by the scan; keep them in.
            touched.extend(self.users.keys().copied());
        } else {
            for key in rescored {
                if let Some(users) = self.by_bucket.get(&key) {
                    touched.extend(users.iter().copied());
                }
            }
        }
        touched.sort_unstable();
        touched.dedup();
        let needs = self.needs;
        let mut profiles = Vec::with_capacity(touched.len());
        self.traces
            .read_users(&touched, t, needs.facets, needs.traits, |u, p| {
                profiles.push((u, p))
            });
        for (user, profile) in profiles {
            self.evaluate(user, &profile, emit);
        }
        self.traces.compact_to(t);
    }

    fn evaluate(
        &mut self,
        user: UserId,
        profile: &UserProfile,
        emit: &mut impl FnMut(Membership, Diff),
    ) {
        let mut scores = None;
        if self.needs.rfm {
            let buckets = profile.lifetime.as_ref().and_then(rfm_buckets);
            self.index_buckets(user, buckets);
            scores = buckets.and_then(|b| self.score_of(b));
        }
        let names = &self.names;
        let cache = &self.name_cache;
        let name_order = |a: Sym, b: Sym| {
            let mut cache = cache.borrow_mut();
            let mut text = |id: Sym| -> Arc<str> {
                cache
                    .entry(id)
                    .or_insert_with(|| names(id).unwrap_or_default().into())
                    .clone()
            };
            text(a).cmp(&text(b))
        };
        let subject = Subject {
            profile,
            scores,
            clock: self.last.clock,
            name_order: &name_order,
        };
        let mut wake: Option<Millis> = None;
        let mut now: Vec<SegId> = Vec::new();
        // An id merged into a user is no member of anything: the user is.
        let merged = profile.lifetime.is_some_and(|l| l.merged);
        for (id, rule) in self.rules.iter().filter(|_| !merged) {
            if rule.eval(&subject) {
                now.push(*id);
            }
            if let Some(w) = rule.next_change(&subject) {
                wake = Some(wake.map_or(w, |x| x.min(w)));
            }
        }
        let st = self.users.entry(user).or_default();
        // Merge the old (sorted) memberships with the new (sorted) ids.
        let mut next = Vec::with_capacity(now.len());
        let (mut i, mut j) = (0, 0);
        while i < st.segments.len() || j < now.len() {
            let old = st.segments.get(i);
            let new = now.get(j);
            match (old, new) {
                (Some(&(s, since)), Some(&n)) if s == n => {
                    next.push((s, since));
                    i += 1;
                    j += 1;
                }
                (Some(&(s, since)), Some(&n)) if s < n => {
                    emit((s, user, since), -1);
                    i += 1;
                }
                (Some(&(s, since)), None) => {
                    emit((s, user, since), -1);
                    i += 1;
                }
                (_, Some(&n)) => {
                    emit((n, user, self.last), 1);
                    next.push((n, self.last));
                    j += 1;
                }
                (None, None) => break,
            }
        }
        st.segments = next;
        // Keep the earlier of the pending and the new wake-up: waking a user early
        // only re-evaluates them (and schedules the right one), while moving the
        // entry on every event (most events push `last_seen`-based wake-ups
        // later) was a set removal and insertion per event.
        let earlier = match (wake, st.wake) {
            (Some(w), Some(old)) => w < old,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if earlier {
            if let Some(old) = st.wake {
                self.wakes.remove(&(old, user));
            }
            st.wake = wake;
            if let Some(w) = wake {
                self.wakes.insert((w, user));
            }
        }
        if st.segments.is_empty() && st.wake.is_none() {
            self.users.remove(&user);
        }
    }

    /// Moves `user` to its current RFM buckets in the index.
    fn index_buckets(&mut self, user: UserId, now: Option<[i64; 3]>) {
        let before = match now {
            Some(b) => self.buckets.insert(user, b),
            None => self.buckets.remove(&user),
        };
        if before == now {
            return;
        }
        for (dim, b) in before.iter().flat_map(|b| b.iter().enumerate()) {
            let key = (dim as u8, *b);
            if let Some(set) = self.by_bucket.get_mut(&key) {
                set.remove(&user);
                if set.is_empty() {
                    self.by_bucket.remove(&key);
                }
            }
        }
        for (dim, b) in now.iter().flat_map(|b| b.iter().enumerate()) {
            self.by_bucket
                .entry((dim as u8, *b))
                .or_default()
                .insert(user);
        }
    }

    /// Recomputes every bucket's score at `t` from this worker's copy of the RFM
    /// histogram, and returns the `(dimension, bucket)`s whose score moved. A
    /// bucket that was empty before or is empty now holds only users whose own
    /// buckets moved, who are evaluated anyway.
    fn refresh_scores(&mut self, t: Time) -> Vec<(u8, i64)> {
        let mut table: [Vec<(i64, u8)>; 3] = Default::default();
        for dim in [RFM_RECENCY, RFM_FREQUENCY, RFM_MONETARY] {
            let mut counts: Vec<(i64, i64)> = Vec::new();
            self.traces
                .for_each_rfm_bucket(self.worker, dim, t, |b, n| counts.push((b, n)));
            let total: i64 = counts.iter().map(|c| c.1).sum();
            let mut below = 0;
            for (bucket, n) in counts {
                let score = Rank {
                    below,
                    equal: n,
                    total,
                }
                .score();
                table[dim as usize].push((bucket, score));
                below += n;
            }
        }
        let mut moved = Vec::new();
        if let Some(old) = &self.scores {
            for dim in 0..3 {
                let (mut i, mut j) = (0, 0);
                let (a, b) = (&old[dim], &table[dim]);
                while i < a.len() && j < b.len() {
                    match a[i].0.cmp(&b[j].0) {
                        std::cmp::Ordering::Less => i += 1,
                        std::cmp::Ordering::Greater => j += 1,
                        std::cmp::Ordering::Equal => {
                            if a[i].1 != b[j].1 {
                                moved.push((dim as u8, a[i].0));
                            }
                            i += 1;
                            j += 1;
                        }
                    }
                }
            }
        }
        self.scores = Some(table);
        moved
    }

    /// The scores of a user in `buckets`, from the table of the current epoch.
    fn score_of(&self, buckets: [i64; 3]) -> Option<[u8; 3]> {
        let table = self.scores.as_ref()?;
        let mut out = [0u8; 3];
        for dim in 0..3 {
            let t = &table[dim];
            let i = t.binary_search_by_key(&buckets[dim], |(b, _)| *b).ok()?;
            out[dim] = t[i].1;
        }
        Some(out)
    }
}

impl SegmentTraces {
    /// Lets the traces forget distinctions between times before `frontier`.
    pub fn compact_to(&mut self, frontier: Time) {
        compact(&mut self.by_segment, frontier);
        compact(&mut self.by_user, frontier);
        compact(&mut self.sizes, frontier);
    }

    /// The segments `user` is in at `as_of`, with `since`, in segment-id order.
    pub fn user_segments(&mut self, user: UserId, as_of: Time) -> Vec<(SegId, Since)> {
        let mut out = Vec::new();
        read_vals(&mut self.by_user, &user, as_of, |v, d| {
            if d > 0 {
                out.push(*v)
            }
        });
        out
    }

    /// Members of `segment` on this worker at `as_of`.
    pub fn size(&mut self, segment: SegId, as_of: Time) -> i64 {
        read_key(&mut self.sizes, &segment, as_of).unwrap_or(0)
    }

    /// Every segment with members on this worker at `as_of`, with its count.
    pub fn sizes(&mut self, as_of: Time) -> Vec<(SegId, i64)> {
        let mut out = Vec::new();
        for_each_key(&mut self.sizes, as_of, |seg, n| out.push((*seg, n)));
        out
    }

    /// Up to `limit` members of `segment` at `as_of` with ids greater than `after`,
    /// in id order.
    ///
    /// A merge over the trace's batches, each positioned with `seek_val` on its
    /// own: `CursorList::seek_val` (differential 0.26) also seeks the batches that
    /// do not hold the key, and panics on them.
    pub fn members(
        &mut self,
        segment: SegId,
        after: Option<UserId>,
        limit: usize,
        as_of: Time,
    ) -> Vec<UserId> {
        let mut upper = timely::progress::Antichain::new();
        self.by_segment.read_upper(&mut upper);
        let batches = self
            .by_segment
            .batches_through(upper.borrow())
            .expect("the trace's own upper is a clean cut");
        let mut cursors = Vec::new();
        for batch in &batches {
            let mut c = differential_dataflow::trace::Navigable::cursor(batch);
            c.seek_key(batch, &segment);
            if c.get_key(batch) == Some(&segment) {
                if let Some(a) = after {
                    c.seek_val(batch, &a);
                }
                cursors.push((c, batch));
            }
        }
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(user) = cursors
                .iter()
                .filter_map(|(c, b)| c.get_val(b).copied())
                .min()
            else {
                break;
            };
            let mut n = 0;
            for (c, b) in cursors.iter_mut() {
                if c.get_val(b) == Some(&user) {
                    c.map_times(b, |t, d| {
                        if *t <= as_of {
                            n += *d;
                        }
                    });
                    c.step_val(b);
                }
            }
            if n > 0 && after.is_none_or(|a| user > a) {
                out.push(user);
            }
        }
        out
    }
}
