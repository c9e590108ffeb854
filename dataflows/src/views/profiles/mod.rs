//! # User profiles
//!
//! Specification, per user, at every epoch `E` with engine clock `c(E)`:
//!
//! * `events`: count of messages per canonical event name (custom names too);
//!   `first_seen` / `last_seen`: min / max event time over all messages.
//! * `orders`, `items_purchased`, `revenue`: `Order Completed` adds one order, its
//!   quantities and its amount. `Order Refunded` subtracts its amount from revenue
//!   (when the message has no amount, the part of the known order not yet refunded)
//!   and counts in `refunds` / `refunded`. `Order Cancelled` of a known, completed,
//!   not yet cancelled order takes the order back (one order, its items, its
//!   unrefunded amount; nothing is left to refund after it); of an unknown order
//!   it subtracts the amount it names.
//!   `last_order_at`: max time of `Order Completed`; `prev_order_at`: the greatest
//!   `Order Completed` time below it (for the gap between the last two orders).
//! * `windows.{7d,30d}`: the same view/cart-add/order/revenue contributions, of the
//!   events with `ts + W > c(E)`; a cancellation of a known order counts at the
//!   order's time (it takes the order out of the windows the order is in), a
//!   refund at its own time (net revenue of the period).
//! * facets: cart quantity per item (adds − removes − purchased), and weighted
//!   interactions per category and brand ([`weight`]).
//! * traits: per trait key, the value of the identify with the greatest
//!   `(timestamp, seq)`.
//! * RFM: for users with `orders > 0`, a histogram of recency / frequency /
//!   monetary buckets over all users ([`rfm_buckets`]), from which 1–5 quintile
//!   scores are read.
//!
//! ## How it is maintained
//!
//! Almost everything here is a sum, so almost everything rides in the difference
//! of an arrangement and accumulates there, with no `reduce`: [`Lifetime`] is a
//! semigroup (sums, mins and maxes) over an insert-only input, [`Windowed`] is an
//! abelian group so that windows can be left by retraction, facets and counts are
//! plain `i64`, traits use the [`Latest`] semigroup. Only the RFM histogram needs
//! a reduction (a user's bucket moves, so the old one must be retracted), and it is
//! fed only by order events, a small fraction of the stream.
//!
//! Windows are left by *scheduled retraction*: the [`ProfileFeeder`] admits an
//! event into a window at the epoch it arrives (if it is still inside) and keeps a
//! heap of `(ts + W, contribution)`; when an epoch's clock reaches that instant
//! the contribution is retracted at exactly that epoch. The clock is a property of
//! the epoch (it is written in the log), so every worker and every replay retract
//! at the same logical time. Nothing is recomputed by polling.
//!
//! ## Identities
//!
//! Events arrive keyed by their user's canonical id (the host resolves merged
//! anonymous ids, [`EpochBatch::aliases`]). When an id `a` is merged into a user
//! `u` at epoch `E`, what `a` accumulated before `E` is added to `u` at `E` in a
//! second set of arrangements, `moved` (and `a` is marked [`MERGED`] there): a
//! profile is what its own events accumulate plus what merges moved into it, so a
//! profile of `u` is that of every event of its identity, whether the link came
//! before or after them (`ProfileView::move_merged`). The order book is kept by
//! the owner of the order id, so orders, refunds and cancellations with an order id
//! are processed there and their updates exchanged to the user's owner.

use std::cmp::Reverse;

use differential_dataflow::difference::{IsZero, Semigroup};
use differential_dataflow::input::InputSession;
use differential_dataflow::operators::arrange::Arranged;
use differential_dataflow::trace::cursor::Cursor;
use differential_dataflow::trace::implementations::{ValBuilder, ValSpine};
use differential_dataflow::{AsCollection, VecCollection};
use serde::{Deserialize, Serialize};
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::operators::Exchange as _;
use timely::dataflow::operators::Probe;

use crate::read::{
    arrange_by_self_at, arrange_local_by_key, arrange_local_by_self, compact, cursor_at,
    for_each_key, for_each_val, Pipe,
};
use crate::read_key_at;
use crate::types::*;
use crate::view::{decode_part, encode_part, Env, EpochBatch, Place, ReadCtx, RestoreError, View};

mod feeder;
mod values;

use feeder::{Expiry, OrderState};
pub use feeder::{ProfileFeeder, DEFAULT_ORDER_HORIZON};
pub use values::*;

/// One of each of the profile's difference types, keyed by user: lifetime
/// totals, the totals of order events alone (what the RFM buckets read: they
/// change on orders only, so the bucket reduction runs on orders only), windows,
/// facets and traits.
#[derive(Clone)]
pub struct Parts<L, W, F, T> {
    pub lifetime: L,
    pub orders: L,
    pub windows: W,
    pub facets: F,
    pub traits: T,
}

/// The profile's inputs as collections.
pub type PartCollections<'scope> = Parts<
    VecCollection<'scope, Time, UserId, Lifetime>,
    VecCollection<'scope, Time, UserId, Windowed>,
    VecCollection<'scope, Time, (UserId, Facet), Diff>,
    VecCollection<'scope, Time, (UserId, Sym), Latest>,
>;

/// The profile's inputs, arranged by user.
pub type PartArrangements<'scope> = Parts<
    Arranged<'scope, UserKeyTrace<Lifetime>>,
    Arranged<'scope, UserKeyTrace<Windowed>>,
    Arranged<'scope, UserValTrace<Facet, Diff>>,
    Arranged<'scope, UserValTrace<Sym, Latest>>,
>;

/// Handles on [`PartArrangements`]' traces.
pub type PartTraces = Parts<
    UserKeyTrace<Lifetime>,
    UserKeyTrace<Windowed>,
    UserValTrace<Facet, Diff>,
    UserValTrace<Sym, Latest>,
>;

/// The inputs of the profile view: what the users' own events accumulate
/// (`own`), and what identity merges moved into users (`moved`, see
/// `ProfileView::move_merged`). A profile is the sum of the two.
pub struct ProfileCollections<'scope> {
    pub own: PartCollections<'scope>,
    pub moved: PartCollections<'scope>,
}

/// The arrangements the profile view maintains.
pub struct ProfileArrangements<'scope> {
    pub own: PartArrangements<'scope>,
    /// Small: one entry per merged id (its mark) and per user it merged into.
    pub moved: PartArrangements<'scope>,
    pub rfm: Arranged<'scope, KeyTrace<RfmKey>>,
}

/// The profile view: arrange each input where its differences accumulate, and
/// derive the RFM histogram from order totals.
///
/// Every input is keyed by user and arranged on the worker that owns the user
/// ([`owner`]): the feeder's updates of its own users go in
/// directly, the others (an order processed by the owner of its order id) are
/// exchanged there first. So a user's whole profile lives on one worker: a read
/// asks that worker only. The RFM histogram is the one piece that spans users; its
/// (small, order-driven) changes are replicated to every worker, so that the owner
/// can rank a user without asking the others.
pub fn profiles<'scope>(c: ProfileCollections<'scope>) -> ProfileArrangements<'scope> {
    let with_moves = c.own.orders.clone().concat(c.moved.orders.clone());
    let rfm = rfm_histogram(arrange_local_by_self(
        with_moves,
        "Profiles: order totals with merges",
    ));
    ProfileArrangements {
        own: arrange_parts(c.own, "Profiles"),
        moved: arrange_parts(c.moved, "Profiles: merged in"),
        rfm,
    }
}

fn arrange_parts<'scope>(c: PartCollections<'scope>, what: &str) -> PartArrangements<'scope> {
    Parts {
        lifetime: arrange_local_by_self(c.lifetime, &format!("{what}: lifetime")),
        orders: arrange_local_by_self(c.orders, &format!("{what}: order totals")),
        windows: arrange_local_by_self(c.windows, &format!("{what}: windows")),
        facets: arrange_local_by_key(c.facets, &format!("{what}: facets")),
        traits: arrange_local_by_key(c.traits, &format!("{what}: traits")),
    }
}

impl<'scope> PartArrangements<'scope> {
    /// New handles on the traces.
    pub fn traces(&self) -> PartTraces {
        Parts {
            lifetime: self.lifetime.trace.clone(),
            orders: self.orders.trace.clone(),
            windows: self.windows.trace.clone(),
            facets: self.facets.trace.clone(),
            traits: self.traits.trace.clone(),
        }
    }

    fn probe_with(&self, probe: &ProbeHandle<Time>) {
        self.lifetime.stream.clone().probe_with(probe);
        self.orders.stream.clone().probe_with(probe);
        self.windows.stream.clone().probe_with(probe);
        self.facets.stream.clone().probe_with(probe);
        self.traits.stream.clone().probe_with(probe);
    }
}

impl PartTraces {
    fn compact_to(&mut self, frontier: Time) {
        compact(&mut self.lifetime, frontier);
        compact(&mut self.orders, frontier);
        compact(&mut self.windows, frontier);
        compact(&mut self.facets, frontier);
        compact(&mut self.traits, frontier);
    }
}

/// Counts users per `(dimension, bucket)`, replicated on every worker as keys
/// `(worker, dimension, bucket)`: a user's buckets move when they order, so the old
/// ones are retracted by a per-user reduction, and each change goes to every worker.
fn rfm_histogram<'scope>(
    orders: Arranged<'scope, UserKeyTrace<Lifetime>>,
) -> Arranged<'scope, KeyTrace<RfmKey>> {
    let peers = orders.stream.scope().peers() as u32;
    orders
        .reduce_abelian::<_, ValBuilder<UserId, [i64; 3], Time, Diff>, ValSpine<UserId, [i64; 3], Time, Diff>, _, _>(
            "Profiles: RFM buckets",
            |_user, input, output| {
                if let Some(b) = rfm_buckets(&input[0].1) {
                    output.push((b, 1));
                }
            },
            |vec, key, upds| {
                vec.clear();
                vec.extend(upds.drain(..).map(|(v, t, r)| ((*key, v), t, r)));
            },
        )
        .as_collection(|_user, b| *b)
        .flat_map(move |[r, f, m]| {
            (0..peers).flat_map(move |w| {
                [(w, RFM_RECENCY, r), (w, RFM_FREQUENCY, f), (w, RFM_MONETARY, m)]
            })
        })
        .pipe(|c| arrange_by_self_at(c, |k: &RfmKey| u64::from(k.0), "Profiles: RFM histogram"))
}

/// One input session per difference type.
pub struct ProfileSessions {
    pub lifetime: InputSession<Time, UserId, Lifetime>,
    pub orders: InputSession<Time, UserId, Lifetime>,
    pub windows: InputSession<Time, UserId, Windowed>,
    pub facets: InputSession<Time, (UserId, Facet), Diff>,
    pub traits: InputSession<Time, (UserId, Sym), Latest>,
}

/// Input handles of the profile view, fed by [`ProfileFeeder`]: updates of the
/// users this worker owns go straight into its arrangements (`local`); the rest
/// (an order's updates, processed by the owner of the order id; a window exit of
/// an event whose user has since been merged into another's) go through
/// `remote`, exchanged to the owner of the user. Almost everything is local, so
/// the exchange costs little.
pub struct ProfileInputs {
    pub local: ProfileSessions,
    pub remote: ProfileSessions,
    /// What identity merges move (exchanged by user, like `remote`).
    pub moved: ProfileSessions,
    place: Place,
    /// The epoch being fed.
    now: Time,
    /// The oldest epoch whose moves are not emitted yet: `moved` stays at it, so
    /// that the epoch cannot complete anywhere before they are in.
    hold: Option<Time>,
}

/// Trace handles of the profile view, read by cursor between steps. A clone is
/// another handle on the same traces (it holds back their compaction on its own).
#[derive(Clone)]
pub struct ProfileTraces {
    pub own: PartTraces,
    pub moved: PartTraces,
    pub rfm: KeyTrace<RfmKey>,
}

/// Settings of the profile view, provided by the host in the [`Env`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProfileSettings {
    /// Orders remembered per worker to resolve refunds and cancellations.
    pub order_horizon: usize,
}

impl Default for ProfileSettings {
    fn default() -> Self {
        ProfileSettings {
            order_horizon: DEFAULT_ORDER_HORIZON,
        }
    }
}

/// Builds the profile view in `scope`: its inputs and its arrangements, each
/// probed by `probe`. Views built after it read the arrangements it exports
/// (see [`ProfileArrangements::traces`]).
pub fn build<'scope>(
    scope: timely::dataflow::Scope<'scope, Time>,
    env: &Env,
    probe: &ProbeHandle<Time>,
) -> (ProfileView, ProfileArrangements<'scope>) {
    let settings = env.expect::<ProfileSettings>();
    let place = Place {
        worker: scope.index(),
        peers: scope.peers(),
    };
    let mut inputs = ProfileInputs {
        local: ProfileSessions::new(),
        remote: ProfileSessions::new(),
        moved: ProfileSessions::new(),
        place,
        now: 0,
        hold: None,
    };
    let (l, r, m) = (&mut inputs.local, &mut inputs.remote, &mut inputs.moved);
    let own = Parts {
        lifetime: joined(scope, Some(&mut l.lifetime), &mut r.lifetime, |u| *u),
        orders: joined(scope, Some(&mut l.orders), &mut r.orders, |u| *u),
        windows: joined(scope, Some(&mut l.windows), &mut r.windows, |u| *u),
        facets: joined(scope, Some(&mut l.facets), &mut r.facets, |k| k.0),
        traits: joined(scope, Some(&mut l.traits), &mut r.traits, |k| k.0),
    };
    let moved = Parts {
        lifetime: joined(scope, None, &mut m.lifetime, |u| *u),
        orders: joined(scope, None, &mut m.orders, |u| *u),
        windows: joined(scope, None, &mut m.windows, |u| *u),
        facets: joined(scope, None, &mut m.facets, |k| k.0),
        traits: joined(scope, None, &mut m.traits, |k| k.0),
    };
    let arranged = profiles(ProfileCollections { own, moved });
    arranged.own.probe_with(probe);
    arranged.moved.probe_with(probe);
    arranged.rfm.stream.clone().probe_with(probe);
    // The moves of epoch `E` wait for `E - 1` in the users' own state only.
    let own_probe = ProbeHandle::new();
    arranged.own.probe_with(&own_probe);
    let view = ProfileView {
        inputs,
        traces: arranged.traces(),
        feeder: ProfileFeeder::new(settings.order_horizon),
        moves: std::collections::VecDeque::new(),
        own_probe,
    };
    (view, arranged)
}

/// A worker's own updates of a user-keyed input (if it has any), and the updates
/// other workers send it (exchanged to the owner of the user `user_of` names), as
/// one collection.
fn joined<'scope, K, R>(
    scope: timely::dataflow::Scope<'scope, Time>,
    local: Option<&mut InputSession<Time, K, R>>,
    remote: &mut InputSession<Time, K, R>,
    user_of: fn(&K) -> UserId,
) -> VecCollection<'scope, Time, K, R>
where
    K: differential_dataflow::ExchangeData,
    R: differential_dataflow::ExchangeData + Semigroup,
{
    let peers = scope.peers();
    let remote = remote
        .to_collection(scope)
        .inner
        .exchange(move |(k, _, _): &(K, Time, R)| owner(user_of(k), peers) as u64)
        .as_collection();
    match local {
        Some(local) => local.to_collection(scope).concat(remote),
        None => remote,
    }
}

/// The profile view on one worker: its inputs, fed by the [`ProfileFeeder`], and
/// its traces, read by [`ProfileView::read`].
pub struct ProfileView {
    pub inputs: ProfileInputs,
    pub traces: ProfileTraces,
    feeder: ProfileFeeder,
    /// Links whose merged id this worker owns, by epoch, oldest first, waiting
    /// for the epoch before theirs to complete (see [`ProfileView::move_merged`]).
    moves: std::collections::VecDeque<(Time, Vec<(UserId, UserId)>)>,
    /// The frontier of the users' own state (not of what merges moved).
    own_probe: ProbeHandle<Time>,
}

/// A user's profile as one read answers it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProfileAnswer {
    pub profile: UserProfile,
    /// Per RFM dimension (recency, frequency, monetary): this user's standing
    /// among all users with orders (`None` without orders).
    pub rfm_ranks: Option<[Rank; 3]>,
}

impl ProfileView {
    /// The profile of `user` (a user this worker owns) at the read's time, with
    /// the user's RFM ranks from this worker's copy of the histogram.
    pub fn read(&mut self, user: UserId, cx: ReadCtx) -> ProfileAnswer {
        let profile = self.traces.read_user(user, cx.at);
        let rfm_ranks = profile
            .lifetime
            .as_ref()
            .and_then(rfm_buckets)
            .map(|buckets| self.traces.read_rfm_ranks(cx.worker, buckets, cx.at));
        ProfileAnswer { profile, rfm_ranks }
    }
}

impl ProfileView {
    /// The facets of `user` (a user this worker owns) at `at`, with what merges
    /// moved in: a read for views that need the cart or the affinities and
    /// nothing else of the profile (no traits, no RFM ranks).
    pub fn facets(&mut self, user: UserId, at: Time) -> Vec<(Facet, Diff)> {
        let mut out = Vec::new();
        self.traces
            .read_users(&[user], at, true, false, |_, p| out = p.facets);
        out
    }
}

impl ProfileView {
    /// Moves what each id merged at epoch `E` had accumulated (here, on the
    /// worker owning it) to its user, at `E`, once the users' own state is
    /// complete through `E - 1` here (so that the traces hold all of the id's:
    /// events of the id from `E` on are the user's already). The move goes into
    /// the `moved` arrangements, not back into the users' own (that would be a
    /// cycle in the dataflow), so the own state flows on unhindered; only `moved`
    /// is held at `E` until the move is in, so no read sees `E` without it. The
    /// user gets the id's totals, windows, facets and traits (all semigroups: the
    /// sum is the union's value); the id gets the [`MERGED`] mark, which hides
    /// it (its own entries stay as they were: mins and maxes cannot be taken
    /// back). The feeder's state needs no move: the order book is found through
    /// the user's merged ids, and window exits resolve their user when they fire.
    fn move_merged(&mut self) {
        let mut moved = false;
        while let Some(&(epoch, _)) = self.moves.front() {
            if epoch > 0 && self.own_probe.less_equal(&(epoch - 1)) {
                break;
            }
            let (epoch, links) = self.moves.pop_front().expect("checked");
            self.move_all(links, epoch);
            moved = true;
        }
        if moved {
            self.inputs.hold = self.moves.front().map(|(epoch, _)| *epoch);
            let now = self.inputs.now;
            self.inputs.advance_to(now);
            self.inputs.flush();
        }
    }

    /// The moves of one epoch's links. The ids' state is read in one forward
    /// pass of one cursor per trace (a cursor per id cost more than the move).
    fn move_all(&mut self, mut links: Vec<(UserId, UserId)>, at: Time) {
        links.sort_unstable();
        let ids: Vec<UserId> = links.iter().map(|(id, _)| *id).collect();
        // All times: nothing is keyed by an id from its link on, and the traces
        // may be compacted up to `at` already (times before it then read as `at`).
        let mut own = Vec::with_capacity(ids.len());
        read_parts(&mut self.traces.own, &ids, Time::MAX, true, true, |_, p| {
            own.push(p)
        });
        let mut orders = Vec::with_capacity(ids.len());
        {
            let (mut c, st) = cursor_at(&mut self.traces.own.orders);
            let max = Time::MAX;
            for key in &ids {
                let mut out = None;
                let mut each = |_: (), r: Lifetime| out = Some(r);
                read_key_at!(c, st, key, max, each, _val => ());
                orders.push(out);
            }
        }
        let m = &mut self.inputs.moved;
        for (((id, user), p), orders) in links.into_iter().zip(own).zip(orders) {
            if let Some(l) = p.lifetime {
                m.lifetime.update_at(user, at, l);
                m.lifetime.update_at(id, at, MERGED);
            }
            if let Some(o) = orders {
                m.orders.update_at(user, at, o);
                m.orders.update_at(id, at, MERGED);
            }
            if !p.windows.is_zero() {
                m.windows.update_at(user, at, p.windows);
            }
            for (f, d) in p.facets {
                m.facets.update_at((user, f), at, d);
            }
            for (k, l) in p.traits {
                m.traits.update_at((user, k), at, l);
            }
        }
    }
}

impl View for ProfileView {
    fn name(&self) -> &'static str {
        "profiles"
    }

    /// Feeds the epoch's events, then the window retractions its clock triggers,
    /// and closes the epoch.
    fn feed(&mut self, epoch: &EpochBatch<'_>) {
        let place = self.inputs.place;
        let mine: Vec<(UserId, UserId)> = epoch
            .links
            .iter()
            .copied()
            .filter(|(id, _)| place.owns(*id))
            .collect();
        if !mine.is_empty() {
            self.moves.push_back((epoch.epoch, mine));
            self.inputs.hold = self.inputs.hold.or(Some(epoch.epoch));
        }
        self.inputs.advance_to(epoch.epoch);
        for ev in epoch.events {
            self.feeder
                .event(ev, epoch.clock, epoch.aliases, &mut self.inputs);
        }
        self.feeder
            .expire(epoch.clock, epoch.aliases, &mut self.inputs);
        self.inputs.advance_to(epoch.epoch + 1);
        self.inputs.flush();
        self.move_merged();
    }

    fn poll(&mut self) {
        if !self.moves.is_empty() {
            self.move_merged();
        }
    }

    fn compact(&mut self, frontier: Time) {
        self.traces.compact_to(frontier);
    }

    fn gauges(&self) -> Vec<(&'static str, f64)> {
        vec![
            // Window contributions waiting for their scheduled retraction.
            (
                "shopstream_window_schedule_entries",
                self.feeder.scheduled() as f64,
            ),
            // Epochs with identity merges whose moves wait for the epoch before.
            ("shopstream_identity_moves_pending", self.moves.len() as f64),
        ]
    }

    /// The accumulated inputs at `at` (one entry per user and facet, not per
    /// event) and the feeder's order book and window schedule. The RFM histogram
    /// is derived from the order totals, so it is not saved.
    fn snapshot(&mut self, at: Time) -> Vec<u8> {
        let mut state = ProfileState {
            own: PartState::save(&mut self.traces.own, at),
            moved: PartState::save(&mut self.traces.moved, at),
            ..ProfileState::default()
        };
        self.feeder.save(&mut state);
        encode_part(&state)
    }

    /// Each accumulated value goes in as one update at `at`: the arrangements
    /// accumulate it to what they held when the snapshot was taken.
    fn restore(&mut self, parts: &[Vec<u8>], at: Time, place: Place) -> Result<(), RestoreError> {
        self.inputs.advance_to(at);
        let mut book = Vec::new();
        for part in parts {
            let state: ProfileState = decode_part("profiles", part)?;
            let mine = |u: &UserId| place.owns(*u);
            state.own.restore(&mut self.inputs.local, mine);
            state.moved.restore(&mut self.inputs.moved, mine);
            // The order book is kept by the owner of the order id.
            book.extend(state.order_book.into_iter().filter(|x| mine(&x.0 .1)));
            self.feeder.schedule.extend(
                state
                    .schedule
                    .into_iter()
                    .filter(|e| mine(&e.user))
                    .map(Reverse),
            );
        }
        self.feeder.restore_orders(book);
        Ok(())
    }
}

/// What a profile snapshot part holds: the inputs as accumulated at the
/// snapshot's epoch, and the feeder's state.
#[derive(Default, Serialize, Deserialize)]
struct ProfileState {
    own: PartState,
    moved: PartState,
    /// The order book, oldest first (the order of its FIFO).
    order_book: Vec<((UserId, Sym), OrderState)>,
    schedule: Vec<Expiry>,
}

/// One set of [`Parts`], accumulated: one entry per user and facet, not per event.
#[derive(Default, Serialize, Deserialize)]
struct PartState {
    lifetime: Vec<(UserId, Lifetime)>,
    orders: Vec<(UserId, Lifetime)>,
    windows: Vec<(UserId, Windowed)>,
    facets: Vec<(UserId, Facet, Diff)>,
    traits: Vec<(UserId, Sym, Latest)>,
}

impl PartState {
    fn save(t: &mut PartTraces, at: Time) -> Self {
        let mut s = PartState::default();
        for_each_key(&mut t.lifetime, at, |u, l| s.lifetime.push((*u, l)));
        for_each_key(&mut t.orders, at, |u, l| s.orders.push((*u, l)));
        for_each_key(&mut t.windows, at, |u, w| s.windows.push((*u, w)));
        for_each_val(&mut t.facets, at, |u, f, d| s.facets.push((*u, *f, d)));
        for_each_val(&mut t.traits, at, |u, k, l| s.traits.push((*u, *k, l)));
        s
    }

    /// Puts the entries of the users `mine` accepts into `into`, at its time.
    fn restore(self, into: &mut ProfileSessions, mine: impl Fn(&UserId) -> bool) {
        for (u, l) in self.lifetime.into_iter().filter(|x| mine(&x.0)) {
            into.lifetime.update(u, l);
        }
        for (u, l) in self.orders.into_iter().filter(|x| mine(&x.0)) {
            into.orders.update(u, l);
        }
        for (u, w) in self.windows.into_iter().filter(|x| mine(&x.0)) {
            into.windows.update(u, w);
        }
        for (u, f, d) in self.facets.into_iter().filter(|x| mine(&x.0)) {
            into.facets.update((u, f), d);
        }
        for (u, k, l) in self.traits.into_iter().filter(|x| mine(&x.0)) {
            into.traits.update((u, k), l);
        }
    }
}

impl ProfileArrangements<'_> {
    /// New handles on the traces (each holds back compaction until told otherwise).
    pub fn traces(&self) -> ProfileTraces {
        ProfileTraces {
            own: self.own.traces(),
            moved: self.moved.traces(),
            rfm: self.rfm.trace.clone(),
        }
    }
}

impl ProfileSessions {
    fn new() -> Self {
        ProfileSessions {
            lifetime: InputSession::new(),
            orders: InputSession::new(),
            windows: InputSession::new(),
            facets: InputSession::new(),
            traits: InputSession::new(),
        }
    }
    fn advance_to(&mut self, time: Time) {
        self.lifetime.advance_to(time);
        self.orders.advance_to(time);
        self.windows.advance_to(time);
        self.facets.advance_to(time);
        self.traits.advance_to(time);
    }
    fn flush(&mut self) {
        self.lifetime.flush();
        self.orders.flush();
        self.windows.flush();
        self.facets.flush();
        self.traits.flush();
    }
}

impl ProfileInputs {
    /// Moves every input to `time`; updates after this are stamped with it
    /// (`moved` stays at the held epoch).
    pub fn advance_to(&mut self, time: Time) {
        self.now = time;
        self.local.advance_to(time);
        self.remote.advance_to(time);
        let moved = self.hold.map_or(time, |h| h.min(time));
        if *self.moved.lifetime.time() < moved {
            self.moved.advance_to(moved);
        }
    }
    /// Hands buffered updates to the dataflow.
    pub fn flush(&mut self) {
        self.local.flush();
        self.remote.flush();
        self.moved.flush();
    }
}

/// Where the feeder sends the updates of one event.
pub trait ProfileSink {
    fn lifetime(&mut self, user: UserId, d: Lifetime, order_event: bool);
    fn window(&mut self, user: UserId, d: Windowed);
    fn facet(&mut self, user: UserId, facet: Facet, d: Diff);
    fn set_trait(&mut self, user: UserId, key: Sym, d: Latest);
}

/// Sends each update to the local input when this worker owns its user, else to
/// the remote one, stamped with the epoch being fed.
impl ProfileSink for ProfileInputs {
    fn lifetime(&mut self, user: UserId, d: Lifetime, order_event: bool) {
        let (t, local) = (self.now, self.place.owns(user));
        let s = if local {
            &mut self.local
        } else {
            &mut self.remote
        };
        if order_event {
            s.orders.update_at(user, t, d);
        }
        s.lifetime.update_at(user, t, d);
    }
    fn window(&mut self, user: UserId, d: Windowed) {
        let (t, local) = (self.now, self.place.owns(user));
        let s = if local {
            &mut self.local
        } else {
            &mut self.remote
        };
        s.windows.update_at(user, t, d);
    }
    fn facet(&mut self, user: UserId, facet: Facet, d: Diff) {
        let (t, local) = (self.now, self.place.owns(user));
        let s = if local {
            &mut self.local
        } else {
            &mut self.remote
        };
        s.facets.update_at((user, facet), t, d);
    }
    fn set_trait(&mut self, user: UserId, key: Sym, d: Latest) {
        let (t, local) = (self.now, self.place.owns(user));
        let s = if local {
            &mut self.local
        } else {
            &mut self.remote
        };
        s.traits.update_at((user, key), t, d);
    }
}

/// Everything the profile view holds for one user, accumulated at one time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserProfile {
    pub lifetime: Option<Lifetime>,
    pub windows: Windowed,
    /// Facets with a non-zero count, in `(kind, id)` order.
    pub facets: Vec<(Facet, Diff)>,
    /// Traits in key order.
    pub traits: Vec<(Sym, Latest)>,
}

impl UserProfile {
    /// Adds `other` (what a merge moved in) to this profile: each part by its
    /// semigroup; facets and traits merged by key, in order, zeros left out.
    fn add(&mut self, other: UserProfile) {
        self.lifetime = match (self.lifetime, other.lifetime) {
            (Some(mut a), Some(b)) => {
                a.plus_equals(&b);
                Some(a)
            }
            (a, b) => a.or(b),
        };
        self.windows.plus_equals(&other.windows);
        if !other.facets.is_empty() {
            self.facets = merge_sorted(std::mem::take(&mut self.facets), other.facets);
        }
        if !other.traits.is_empty() {
            self.traits = merge_sorted(std::mem::take(&mut self.traits), other.traits);
        }
    }
}

/// Two lists sorted by key, as one: equal keys summed, zero sums left out.
fn merge_sorted<K: Ord, R: Semigroup>(a: Vec<(K, R)>, b: Vec<(K, R)>) -> Vec<(K, R)> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    loop {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x.0 == y.0 => {
                let (k, mut r) = a.next().expect("peeked");
                r.plus_equals(&b.next().expect("peeked").1);
                (k, r)
            }
            (Some(x), Some(y)) if x.0 < y.0 => a.next().expect("peeked"),
            (Some(_), Some(_)) | (None, Some(_)) => b.next().expect("peeked"),
            (Some(_), None) => a.next().expect("peeked"),
            (None, None) => break,
        };
        if !next.1.is_zero() {
            out.push(next);
        }
    }
    out
}

/// Reads one set of [`Parts`] for `users` (in increasing id order), one cursor
/// per trace walking forward through them all.
fn read_parts(
    t: &mut PartTraces,
    users: &[UserId],
    as_of: Time,
    facets: bool,
    traits: bool,
    mut each: impl FnMut(UserId, UserProfile),
) {
    let (mut lc, ls) = cursor_at(&mut t.lifetime);
    let (mut wc, ws) = cursor_at(&mut t.windows);
    let mut fc = facets.then(|| cursor_at(&mut t.facets));
    let mut tc = traits.then(|| cursor_at(&mut t.traits));
    for user in users {
        let key = user;
        let mut p = UserProfile::default();
        {
            let mut out = None;
            let mut each = |_: (), r: Lifetime| out = Some(r);
            read_key_at!(lc, ls, key, as_of, each, _val => ());
            p.lifetime = out;
        }
        {
            let mut out = None;
            let mut each = |_: (), r: Windowed| out = Some(r);
            read_key_at!(wc, ws, key, as_of, each, _val => ());
            p.windows = out.unwrap_or_default();
        }
        if let Some((c, st)) = fc.as_mut() {
            let mut each = |f: &Facet, d: Diff| p.facets.push((*f, d));
            read_key_at!(c, st, key, as_of, each, val => val);
        }
        if let Some((c, st)) = tc.as_mut() {
            let mut each = |k: &Sym, d: Latest| p.traits.push((*k, d));
            read_key_at!(c, st, key, as_of, each, val => val);
        }
        each(*user, p);
    }
}

impl ProfileTraces {
    /// Lets the traces forget distinctions between times before `frontier`: every
    /// later read is at a time at or beyond it.
    pub fn compact_to(&mut self, frontier: Time) {
        self.own.compact_to(frontier);
        self.moved.compact_to(frontier);
        compact(&mut self.rfm, frontier);
    }

    /// Reads what this worker holds for `user` at `as_of`, by seeking cursors.
    /// The caller ensures every trace is complete through `as_of`.
    pub fn read_user(&mut self, user: UserId, as_of: Time) -> UserProfile {
        let mut out = UserProfile::default();
        self.read_users(&[user], as_of, true, true, |_, p| out = p);
        out
    }

    /// What [`Self::read_user`] reads, for many users at once (`users` in increasing id
    /// order; facets and traits only when asked): one cursor per trace walks
    /// forward through them all, instead of a cursor over every batch per user.
    /// A profile is the user's own state plus what merges moved into it.
    pub fn read_users(
        &mut self,
        users: &[UserId],
        as_of: Time,
        facets: bool,
        traits: bool,
        mut each: impl FnMut(UserId, UserProfile),
    ) {
        let mut moved = Vec::with_capacity(users.len());
        read_parts(&mut self.moved, users, as_of, facets, traits, |_, p| {
            moved.push(p)
        });
        let mut moved = moved.into_iter();
        read_parts(&mut self.own, users, as_of, facets, traits, |u, mut p| {
            if let Some(m) = moved.next() {
                p.add(m);
            }
            each(u, p)
        });
    }

    /// Every user this worker holds a profile for at `as_of`, in id order
    /// (not the ids merged into users).
    pub fn users(&mut self, as_of: Time) -> Vec<UserId> {
        let mut merged = IdSet::default();
        for_each_key(&mut self.moved.lifetime, as_of, |user, l| {
            if l.merged {
                merged.insert(*user);
            }
        });
        let mut out = Vec::new();
        for_each_key(&mut self.own.lifetime, as_of, |user, _| {
            if !merged.contains(user) {
                out.push(*user)
            }
        });
        out
    }

    /// For each dimension `d` and bucket `b` in `buckets`, how all users with orders
    /// stand against `b` in dimension `d`, from this worker's copy of the histogram.
    pub fn read_rfm_ranks(&mut self, worker: usize, buckets: [i64; 3], as_of: Time) -> [Rank; 3] {
        let mut out = [Rank::default(); 3];
        for (dim, bucket) in buckets.iter().enumerate() {
            let rank = &mut out[dim];
            self.for_each_rfm_bucket(worker, dim as u8, as_of, |b, n| {
                rank.total += n;
                match b.cmp(bucket) {
                    std::cmp::Ordering::Less => rank.below += n,
                    std::cmp::Ordering::Equal => rank.equal += n,
                    std::cmp::Ordering::Greater => {}
                }
            });
        }
        out
    }

    /// Calls `each(bucket, users)` for every bucket of RFM dimension `dim` with
    /// users at `as_of`, in bucket order, from worker `worker`'s copy of the
    /// histogram.
    pub fn for_each_rfm_bucket(
        &mut self,
        worker: usize,
        dim: u8,
        as_of: Time,
        mut each: impl FnMut(i64, i64),
    ) {
        let me = worker as u32;
        let (mut cursor, storage) = cursor_at(&mut self.rfm);
        cursor.seek_key(&storage, &(me, dim, i64::MIN));
        while let Some(key) = cursor.get_key(&storage) {
            if key.0 != me || key.1 != dim {
                break;
            }
            let mut n = 0;
            cursor.map_times(&storage, |t, d| {
                if *t <= as_of {
                    n += *d;
                }
            });
            if n != 0 {
                each(key.2, n);
            }
            cursor.step_key(&storage);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rank(below: i64, equal: i64, total: i64) -> u8 {
        Rank {
            below,
            equal,
            total,
        }
        .score()
    }

    #[test]
    fn previous_order_time_is_the_second_greatest_distinct() {
        let order = |ts| Lifetime {
            orders: 1,
            last_order_at: ts,
            ..Lifetime::default()
        };
        let times = [5, 9, 2, 9, 7, 1];
        // Any grouping and order of the sums gives the same answer.
        let mut left = Lifetime::default();
        for t in times {
            left.plus_equals(&order(t));
        }
        let mut a = order(times[5]);
        a.plus_equals(&order(times[4]));
        let mut b = order(times[1]);
        b.plus_equals(&order(times[0]));
        b.plus_equals(&order(times[3]));
        let mut right = order(times[2]);
        right.plus_equals(&a);
        right.plus_equals(&b);
        assert_eq!((left.last_order_at, left.prev_order_at), (9, 7));
        assert_eq!(left, right);
        assert_eq!(order(3).prev_order_at, Millis::MIN);
    }

    #[test]
    fn quintiles_use_the_mid_rank_of_ties() {
        // Five users in five buckets: one per quintile.
        let scores: Vec<u8> = (0..5).map(|i| rank(i, 1, 5)).collect();
        assert_eq!(scores, [1, 2, 3, 4, 5]);
        // Everyone tied: the middle, not the bottom.
        assert_eq!(rank(0, 100, 100), 3);
        assert_eq!(rank(0, 0, 0), 0);
    }

    #[test]
    fn rfm_buckets_are_monotone_in_money() {
        let bucket = |revenue| {
            rfm_buckets(&Lifetime {
                orders: 1,
                revenue,
                last_order_at: 0,
                ..Lifetime::default()
            })
            .expect("has orders")[2]
        };
        let mut last = bucket(1);
        for revenue in [2, 3, 15, 16, 17, 100, 1_000, 99_999, 100_000, i64::MAX / 2] {
            let b = bucket(revenue);
            assert!(b >= last, "{revenue}: {b} < {last}");
            last = b;
        }
        assert!(bucket(100) < bucket(107), "steps are finer than 7%");
        assert_eq!(rfm_buckets(&Lifetime::default()), None);
    }
}

#[cfg(test)]
mod overflow {
    use differential_dataflow::difference::Abelian;

    use super::*;

    /// Regression: sums of client amounts panicked a worker in debug builds.
    #[test]
    fn sums_wrap_instead_of_panicking() {
        let big = Lifetime {
            revenue: i64::MAX,
            items: i64::MAX,
            ..Lifetime::default()
        };
        let mut sum = big;
        sum.plus_equals(&big);
        assert_eq!(sum.revenue, -2);
        let mut w = Windowed {
            d7: WindowCounts {
                revenue: i64::MAX,
                ..WindowCounts::default()
            },
            ..Windowed::default()
        };
        let copy = w;
        w.plus_equals(&copy);
        w.negate();
        w.plus_equals(&copy);
        w.plus_equals(&copy);
        assert_eq!(w, Windowed::default(), "a group: retraction stays exact");
    }
}
