//! The recommend view's feeder: turns each epoch's events into signal records
//! with their scheduled exits from the windows, keeps the order book for
//! refunds, claims item attributes, and moves records at identity merges.
//!
//! Two kinds of classes, kept two ways:
//!
//! * *Presence* classes (view, click, wishlist) count only as "some signal in the
//!   window". The feeder keeps, per `(user, item, class)`, the time of the latest
//!   signal it admitted and one pending exit: a record is in window `W` while
//!   `latest + W > clock`. A repeated view moves `latest` and costs no update at
//!   all; when the pending exit fires it is re-armed at `latest + W` if a later
//!   signal came. So records and heap entries number the distinct `(user, item,
//!   class)`, not the events. (Another worker may hold the same key, after a
//!   merge moved a visitor's records here: the reduction counts presence as
//!   "more than zero", so the duplicate changes nothing.)
//! * *Counted* classes (cart, removed, purchase, refunded) compare counts, so each
//!   signal is a record of its own with its own exits.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use serde::{Deserialize, Serialize};

use super::{
    Class, RecommendInputs, RecommendSettings, Window, ALL_TIME, BRAND, CART, CATEGORY, CLICK,
    PURCHASE, REFUNDED, REMOVED, VIEW, WINDOWS, WISHLIST,
};
use crate::types::*;

/// A scheduled exit: `(leaves at, user, item, class, window)`, the user it was
/// admitted under (resolved when it fires).
pub(super) type Exit = (Millis, UserId, ItemId, Class, Window);

/// A presence class's state for one `(user, item, class)` on this worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Presence {
    /// The latest signal's time.
    pub(super) latest: Millis,
    /// The first finite window still holding the record (`ALL_TIME`: only the
    /// window without end does).
    pub(super) from: Window,
    /// When the one live heap entry of this key fires (at most `latest + W` of
    /// `from`: a later signal moves the exit on, and the entry re-arms when it
    /// fires). Entries that do not match `(armed, from)` are stale and dropped.
    pub(super) armed: Millis,
}

impl Presence {
    fn exit(&self) -> Option<Millis> {
        WINDOWS
            .get(self.from as usize)
            .map(|w| self.latest.saturating_add(*w))
    }
}

/// What the feeder knows of one order id.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(super) struct Order {
    /// The user of its `Order Completed` (`0`: not arrived).
    pub(super) user: UserId,
    /// Sequence number of the first event naming the order (keeps the book's
    /// order across a restore with another number of workers).
    pub(super) seq: u64,
    /// Its distinct items, sorted (`None`: not arrived).
    pub(super) items: Option<Vec<ItemId>>,
    /// Items refunded so far, sorted.
    pub(super) refunded: Vec<ItemId>,
    /// Refunded whole or cancelled.
    pub(super) removed: bool,
}

impl Order {
    /// Items bought and not refunded.
    fn live(&self) -> Vec<ItemId> {
        match &self.items {
            Some(items) if !self.removed => items
                .iter()
                .copied()
                .filter(|i| self.refunded.binary_search(i).is_err())
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// Turns events into signal records and their scheduled exits.
pub struct RecommendFeeder {
    pub(super) settings: RecommendSettings,
    /// Presence states by user (canonical, moved at merges).
    pub(super) present: IdMap<FastMap<(ItemId, Class), Presence>>,
    /// Counts of the counted classes' records, by user.
    pub(super) counted: IdMap<FastMap<(ItemId, Window, Class), i64>>,
    pub(super) schedule: BinaryHeap<Reverse<Exit>>,
    pub(super) book: FastMap<Sym, Order>,
    pub(super) fifo: VecDeque<Sym>,
    /// Items whose category, resp. brand, this worker claimed.
    pub(super) claimed: [IdSet; 2],
}

/// Whether a class counts by presence.
fn presence(c: Class) -> bool {
    c < CART
}

impl RecommendFeeder {
    pub fn new(settings: RecommendSettings) -> Self {
        RecommendFeeder {
            settings,
            present: IdMap::default(),
            counted: IdMap::default(),
            schedule: BinaryHeap::new(),
            book: FastMap::default(),
            fifo: VecDeque::new(),
            claimed: Default::default(),
        }
    }

    fn send(key: (UserId, ItemId), w: Window, c: Class, d: Diff, inputs: &mut RecommendInputs) {
        inputs.signals.update((key, (w, c)), d);
    }

    /// Counts one counted-class record update and sends it. A count may go below
    /// zero here: after a restart the exit of a record moved at a merge fires on
    /// the owner of the merged id, not where the record was restored; the input
    /// exchanges by user, so the dataflow sees both, and the next snapshot's
    /// parts add up again on the user's owner.
    fn count(
        &mut self,
        user: UserId,
        item: ItemId,
        w: Window,
        c: Class,
        d: Diff,
        inputs: &mut RecommendInputs,
    ) {
        let counts = self.counted.entry(user).or_default();
        let n = counts.entry((item, w, c)).or_insert(0);
        *n += d;
        if *n == 0 {
            counts.remove(&(item, w, c));
            if counts.is_empty() {
                self.counted.remove(&user);
            }
        }
        Self::send((user, item), w, c, d, inputs);
    }

    /// The first finite window a signal of time `ts` is still in at `clock`
    /// (`ALL_TIME`: none).
    fn first_window(ts: Millis, clock: Millis) -> Window {
        WINDOWS
            .iter()
            .position(|w| ts.saturating_add(*w) > clock)
            .unwrap_or(WINDOWS.len()) as Window
    }

    /// Admits one signal of time `ts` at `clock`.
    pub(super) fn signal(
        &mut self,
        user: UserId,
        item: ItemId,
        c: Class,
        ts: Millis,
        clock: Millis,
        inputs: &mut RecommendInputs,
    ) {
        let from = Self::first_window(ts, clock);
        if !presence(c) {
            for w in from..=ALL_TIME {
                self.count(user, item, w, c, 1, inputs);
            }
            if let Some(w) = WINDOWS.get(from as usize) {
                self.schedule
                    .push(Reverse((ts.saturating_add(*w), user, item, c, from)));
            }
            return;
        }
        self.present_at(user, item, c, ts, from, inputs);
    }

    /// Makes `(user, item, c)` present from window `from` with latest time `ts`
    /// (or keeps what it has, where that is more).
    fn present_at(
        &mut self,
        user: UserId,
        item: ItemId,
        c: Class,
        ts: Millis,
        from: Window,
        inputs: &mut RecommendInputs,
    ) {
        let states = self.present.entry(user).or_default();
        match states.get_mut(&(item, c)) {
            None => {
                let mut p = Presence {
                    latest: ts,
                    from,
                    armed: 0,
                };
                for w in from..=ALL_TIME {
                    Self::send((user, item), w, c, 1, inputs);
                }
                if let Some(at) = p.exit() {
                    p.armed = at;
                    self.schedule.push(Reverse((at, user, item, c, from)));
                }
                states.insert((item, c), p);
            }
            Some(p) => {
                p.latest = p.latest.max(ts);
                if from < p.from {
                    // Back into windows it had left: a new first window, armed
                    // anew (the old entry no longer matches).
                    for w in from..p.from {
                        Self::send((user, item), w, c, 1, inputs);
                    }
                    p.from = from;
                    if let Some(at) = p.exit() {
                        p.armed = at;
                        self.schedule.push(Reverse((at, user, item, c, from)));
                    }
                }
            }
        }
    }

    /// Moves the records admitted under `id` to `user`.
    pub(super) fn merge(&mut self, id: UserId, user: UserId, inputs: &mut RecommendInputs) {
        if let Some(counts) = self.counted.remove(&id) {
            for ((item, w, c), n) in counts {
                Self::send((id, item), w, c, -n, inputs);
                self.count(user, item, w, c, n, inputs);
            }
        }
        if let Some(states) = self.present.remove(&id) {
            for ((item, c), p) in states {
                for w in p.from..=ALL_TIME {
                    Self::send((id, item), w, c, -1, inputs);
                }
                self.present_at(user, item, c, p.latest, p.from, inputs);
            }
        }
    }

    /// Retracts the records whose windows the clock has left.
    pub(super) fn expire(
        &mut self,
        clock: Millis,
        aliases: &Aliases,
        inputs: &mut RecommendInputs,
    ) {
        while let Some(Reverse((at, user, item, c, w))) = self.schedule.peek().copied() {
            if at > clock {
                break;
            }
            self.schedule.pop();
            let user = aliases.resolve(user);
            if !presence(c) {
                self.count(user, item, w, c, -1, inputs);
                let next = w as usize + 1;
                if let Some(width) = WINDOWS.get(next) {
                    let ts = at - WINDOWS[w as usize];
                    self.schedule.push(Reverse((
                        ts.saturating_add(*width),
                        user,
                        item,
                        c,
                        next as Window,
                    )));
                }
                continue;
            }
            let Some(p) = self
                .present
                .get_mut(&user)
                .and_then(|s| s.get_mut(&(item, c)))
            else {
                continue;
            };
            if p.from != w || p.armed != at {
                continue; // stale: another entry is armed for this key
            }
            // Leave every window the latest signal is out of, then arm the next.
            let from = Self::first_window(p.latest, clock).max(p.from);
            for left in p.from..from {
                Self::send((user, item), left, c, -1, inputs);
            }
            p.from = from;
            if let Some(at) = p.exit() {
                p.armed = at;
                self.schedule.push(Reverse((at, user, item, c, from)));
            }
        }
    }

    /// Feeds one event of an epoch whose clock is `clock`.
    pub(super) fn event(
        &mut self,
        ev: &ShopEvent,
        clock: Millis,
        aliases: &Aliases,
        peers: usize,
        inputs: &mut RecommendInputs,
    ) {
        for line in ev.lines.iter().filter(|l| l.item != 0) {
            for (attr, value) in [(CATEGORY, line.category), (BRAND, line.brand)] {
                if value != 0 && self.claimed[attr as usize].insert(line.item) {
                    for w in 0..peers as u32 {
                        inputs
                            .attrs
                            .update(((w, line.item, attr), (ev.seq, value)), 1);
                    }
                }
            }
        }
        let class = match ev.kind {
            EventKind::ProductViewed => VIEW,
            EventKind::ProductClicked => CLICK,
            EventKind::ProductAddedToWishlist => WISHLIST,
            EventKind::ProductAdded => CART,
            EventKind::ProductRemoved => REMOVED,
            EventKind::OrderCompleted if ev.order == 0 => PURCHASE,
            EventKind::OrderCompleted | EventKind::OrderRefunded | EventKind::OrderCancelled => {
                if ev.order != 0 {
                    self.order_event(ev, clock, aliases, inputs);
                }
                return;
            }
            _ => return,
        };
        for item in ev.distinct_items() {
            self.signal(ev.user, item, class, ev.ts, clock, inputs);
        }
    }

    /// An order, refund or cancellation with an order id: purchases of the
    /// order's items (the first `Order Completed`; less what was refunded before
    /// it came), refunds of the items still live in it, for the order's user.
    fn order_event(
        &mut self,
        ev: &ShopEvent,
        clock: Millis,
        aliases: &Aliases,
        inputs: &mut RecommendInputs,
    ) {
        let mut order = self.book.get(&ev.order).cloned().unwrap_or(Order {
            seq: ev.seq,
            ..Order::default()
        });
        let items = ev.distinct_items();
        let (class, signals) = match ev.kind {
            EventKind::OrderCompleted => {
                if order.items.is_some() || items.is_empty() {
                    return; // a duplicate, or no lines
                }
                order.items = Some(items);
                order.user = ev.user;
                (PURCHASE, order.live())
            }
            EventKind::OrderRefunded if !items.is_empty() => {
                let live = order.live();
                let refunded: Vec<ItemId> =
                    items.into_iter().filter(|i| live.contains(i)).collect();
                if order.items.is_none() {
                    // Before its order: remembered, applied when it comes.
                    order.refunded.extend(ev.distinct_items());
                }
                order.refunded.extend(refunded.iter().copied());
                order.refunded.sort_unstable();
                order.refunded.dedup();
                (REFUNDED, refunded)
            }
            _ => {
                let live = order.live();
                order.removed = true;
                (REFUNDED, live)
            }
        };
        let user = if order.user != 0 {
            aliases.resolve(order.user)
        } else {
            ev.user
        };
        for item in signals {
            self.signal(user, item, class, ev.ts, clock, inputs);
        }
        self.remember(ev.order, order);
    }

    pub(super) fn remember(&mut self, id: Sym, order: Order) {
        if self.settings.order_horizon == 0 {
            return;
        }
        if self.book.insert(id, order).is_none() {
            self.fifo.push_back(id);
            if self.fifo.len() > self.settings.order_horizon {
                if let Some(old) = self.fifo.pop_front() {
                    self.book.remove(&old);
                }
            }
        }
    }

    /// This worker's state as a snapshot part holds it.
    pub(super) fn save(&self) -> FeederState {
        let mut state = FeederState::default();
        for (user, states) in &self.present {
            state
                .present
                .extend(states.iter().map(|((i, c), p)| (*user, *i, *c, *p)));
        }
        for (user, counts) in &self.counted {
            state.counted.extend(
                counts
                    .iter()
                    .filter(|(_, n)| **n != 0)
                    .map(|((i, w, c), n)| (*user, *i, *w, *c, *n)),
            );
        }
        state.present.sort_unstable_by_key(|p| (p.0, p.1, p.2));
        state.counted.sort_unstable();
        state.exits = self
            .schedule
            .iter()
            .map(|Reverse(e)| *e)
            .filter(|e| !presence(e.3))
            .collect();
        state.exits.sort_unstable();
        state.orders = self
            .fifo
            .iter()
            .filter_map(|o| self.book.get(o).map(|b| (*o, b.clone())))
            .collect();
        state
    }

    /// Restores, at the restore's epoch, what `state` holds for the users and
    /// orders this worker owns.
    pub(super) fn restore(
        &mut self,
        state: FeederState,
        owns: impl Fn(u64) -> bool,
        at: Time,
        inputs: &mut RecommendInputs,
    ) {
        // The inputs are at `at` already; `update_at` says so.
        for (user, item, c, p) in state.present {
            if owns(user) {
                // Two parts may hold one key (a visitor's records moved on one
                // worker, the user's own on another): combined, as a merge does.
                self.present_at(user, item, c, p.latest, p.from, inputs);
            }
        }
        for (user, item, w, c, n) in state.counted {
            if owns(user) {
                *self
                    .counted
                    .entry(user)
                    .or_default()
                    .entry((item, w, c))
                    .or_insert(0) += n;
                inputs.signals.update_at(((user, item), (w, c)), at, n);
            }
        }
        for e in state.exits {
            if owns(e.1) {
                self.schedule.push(Reverse(e));
            }
        }
    }

    /// Restores the order books of every part, oldest first across them (as a
    /// replay would have kept them), the orders this worker owns.
    pub(super) fn restore_orders(
        &mut self,
        mut orders: Vec<(Sym, Order)>,
        owns: impl Fn(u64) -> bool,
    ) {
        orders.sort_by_key(|(_, o)| o.seq);
        for (id, order) in orders {
            if owns(id) {
                self.remember(id, order);
            }
        }
    }
}

/// The feeder's part of a snapshot.
#[derive(Default, Serialize, Deserialize)]
pub(super) struct FeederState {
    /// `(canonical user, item, class, state)`.
    present: Vec<(UserId, ItemId, Class, Presence)>,
    /// `(canonical user, item, window, class, count)`.
    counted: Vec<(UserId, ItemId, Window, Class, i64)>,
    /// The counted classes' pending exits (the presence ones are armed again).
    exits: Vec<Exit>,
    pub(super) orders: Vec<(Sym, Order)>,
}
