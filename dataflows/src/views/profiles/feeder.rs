//! The profile view's feeder: turns each epoch's events into updates of the
//! profile inputs (lifetime totals, windows, facets, traits), keeping the order
//! book (refunds and cancellations by order id) and the schedule of window
//! retractions.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use serde::{Deserialize, Serialize};

use super::*;

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub(super) struct OrderState {
    /// When it was completed: a cancellation takes it back out of the windows it
    /// counted in, which are the windows of this time.
    ts: Millis,
    amount: Minor,
    items: i64,
    refunded: Minor,
    cancelled: bool,
}

/// What one event adds to a user's lifetime totals and windows.
struct EventDelta {
    life: Lifetime,
    win: WindowCounts,
    /// The time whose windows the window counts move (a cancellation moves the
    /// order's).
    window_ts: Millis,
}

/// A scheduled retraction: at clock `at`, the contribution leaves window `window`
/// (7 or 30) of `user`. An event in both windows has one entry at a time: the 7-day
/// exit re-schedules the 30-day one. Packed to 32 bytes: the schedule holds one
/// entry per windowed event, so it is the largest per-event state of the view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(super) struct Expiry {
    at: Millis,
    pub(super) user: UserId,
    revenue: Minor,
    views: i8,
    cart_adds: i8,
    orders: i8,
    window: u8,
}

impl Expiry {
    fn counts(&self) -> WindowCounts {
        WindowCounts {
            views: self.views.into(),
            cart_adds: self.cart_adds.into(),
            orders: self.orders.into(),
            revenue: self.revenue,
        }
    }
}

/// Turns events into updates of the profile inputs, for the users one worker owns.
///
/// Keeps the two pieces of state that are not a function of one event: the order
/// book (to resolve refunds and cancellations that name only an order id) and the
/// schedule of window retractions (bounded by what the windows hold).
///
/// The order book remembers the last `order_horizon` orders of this worker's users
/// (first in, first out), so its memory is bounded. A refund or cancellation of an
/// order older than that is treated as one of an unknown order: it counts the
/// amount the message itself names. Eviction follows log order, so a replay evicts
/// exactly as live did.
pub struct ProfileFeeder {
    orders: FastMap<(UserId, Sym), OrderState>,
    order_fifo: std::collections::VecDeque<(UserId, Sym)>,
    order_horizon: usize,
    pub(super) schedule: BinaryHeap<Reverse<Expiry>>,
}

impl Default for ProfileFeeder {
    fn default() -> Self {
        ProfileFeeder::new(DEFAULT_ORDER_HORIZON)
    }
}

/// Orders remembered per worker by default.
pub const DEFAULT_ORDER_HORIZON: usize = 1_000_000;

impl ProfileFeeder {
    /// A feeder that remembers the last `order_horizon` orders.
    pub fn new(order_horizon: usize) -> Self {
        ProfileFeeder {
            orders: FastMap::default(),
            order_fifo: Default::default(),
            order_horizon,
            schedule: BinaryHeap::new(),
        }
    }

    /// Remembers a completed order, forgetting the oldest beyond the horizon.
    fn remember_order(&mut self, key: (UserId, Sym), state: OrderState) {
        if self.order_horizon == 0 {
            return;
        }
        if self.orders.insert(key, state).is_none() {
            self.order_fifo.push_back(key);
            if self.order_fifo.len() > self.order_horizon {
                if let Some(old) = self.order_fifo.pop_front() {
                    self.orders.remove(&old);
                }
            }
        }
    }

    /// Saves the order book (oldest first) and the schedule into a snapshot.
    pub(super) fn save(&self, state: &mut ProfileState) {
        state.order_book = self
            .order_fifo
            .iter()
            .filter_map(|k| self.orders.get(k).map(|o| (*k, *o)))
            .collect();
        state.schedule = self.schedule.iter().map(|e| e.0).collect();
    }

    /// Restores an order book saved oldest first. From several parts (a restart
    /// with another number of workers) their orders are kept part after part, and
    /// the newest `order_horizon` of them: eviction order then differs from a
    /// replay with the new number of workers, which has its own per-worker horizon.
    pub(super) fn restore_orders(&mut self, book: Vec<((UserId, Sym), OrderState)>) {
        for (key, state) in book {
            self.remember_order(key, state);
        }
    }

    /// Entries waiting in the retraction schedule (for metrics).
    pub fn scheduled(&self) -> usize {
        self.schedule.len()
    }

    /// Feeds one event of an epoch whose clock is `clock`.
    pub fn event(
        &mut self,
        ev: &ShopEvent,
        clock: Millis,
        aliases: &Aliases,
        sink: &mut impl ProfileSink,
    ) {
        let user = ev.user;
        let mut d = EventDelta {
            life: Lifetime {
                events: 1,
                first_seen: ev.ts,
                last_seen: ev.ts,
                ..Lifetime::default()
            },
            win: WindowCounts::default(),
            // The time whose windows this event's window counts move.
            window_ts: ev.ts,
        };
        Self::interactions(ev, sink);
        match ev.kind {
            EventKind::ProductViewed => d.win.views = 1,
            EventKind::ProductAdded => {
                d.win.cart_adds = 1;
                Self::cart(ev, 1, sink);
            }
            EventKind::ProductRemoved => Self::cart(ev, -1, sink),
            EventKind::OrderCompleted => self.order_completed(ev, &mut d, sink),
            EventKind::OrderRefunded => self.order_refunded(ev, aliases, &mut d),
            EventKind::OrderCancelled => self.order_cancelled(ev, aliases, &mut d),
            EventKind::Identify => Self::identify(ev, sink),
            _ => {}
        }
        sink.lifetime(user, d.life, ev.kind.is_order());
        if !d.win.is_empty() {
            self.admit(user, d.window_ts, d.win, clock, sink);
        }
    }

    /// Counts the event by name, and its weighted interest in each line's
    /// category and brand.
    fn interactions(ev: &ShopEvent, sink: &mut impl ProfileSink) {
        sink.facet(ev.user, (FACET_EVENT, ev.name), 1);
        let w = weight(ev.kind);
        if w == 0 {
            return;
        }
        for line in &ev.lines {
            if line.category != 0 {
                sink.facet(ev.user, (FACET_CATEGORY, line.category), w);
            }
            if line.brand != 0 {
                sink.facet(ev.user, (FACET_BRAND, line.brand), w);
            }
        }
    }

    /// Moves each line's quantity into (`sign` 1) or out of (-1) the cart.
    fn cart(ev: &ShopEvent, sign: i64, sink: &mut impl ProfileSink) {
        for line in &ev.lines {
            sink.facet(ev.user, (FACET_CART, line.item), sign * line.quantity);
        }
    }

    /// An order: one order, its items and amount, out of the cart, remembered for
    /// later refunds and cancellations.
    fn order_completed(&mut self, ev: &ShopEvent, d: &mut EventDelta, sink: &mut impl ProfileSink) {
        let items = ev
            .lines
            .iter()
            .fold(0i64, |a, l| a.wrapping_add(l.quantity));
        Self::cart(ev, -1, sink);
        d.life.orders = 1;
        d.life.items = items;
        d.life.revenue = ev.revenue;
        d.life.last_order_at = ev.ts;
        d.win.orders = 1;
        d.win.revenue = ev.revenue;
        if ev.order != 0 {
            self.remember_order(
                (ev.user, ev.order),
                OrderState {
                    ts: ev.ts,
                    amount: ev.revenue,
                    items,
                    ..OrderState::default()
                },
            );
        }
    }

    /// The order named, if this worker (the owner of the order id) remembers
    /// it: placed by the user, or by an id merged into the user since (its entry
    /// is under the id it had then; the user's own is looked at first).
    fn known_order(&mut self, ev: &ShopEvent, aliases: &Aliases) -> Option<&mut OrderState> {
        if ev.order == 0 {
            return None;
        }
        let key = std::iter::once(ev.user)
            .chain(aliases.merged_into(ev.user).iter().copied())
            .map(|u| (u, ev.order))
            .find(|k| self.orders.contains_key(k))?;
        self.orders.get_mut(&key)
    }

    /// A refund: the amount it names, or (with none) what is left of the known
    /// order, out of revenue at the refund's own time.
    fn order_refunded(&mut self, ev: &ShopEvent, aliases: &Aliases, d: &mut EventDelta) {
        let amount = match self.known_order(ev, aliases) {
            Some(o) => {
                let a = if ev.revenue > 0 {
                    ev.revenue
                } else {
                    (o.amount - o.refunded).max(0)
                };
                o.refunded = o.refunded.saturating_add(a);
                a
            }
            None => ev.revenue,
        };
        d.life.refunds = 1;
        d.life.refunded = amount;
        d.life.revenue = -amount;
        d.win.revenue = -amount;
    }

    /// A cancellation: a known, not yet cancelled order is taken back (in the
    /// windows of the order's time); an unknown one subtracts the amount it names.
    fn order_cancelled(&mut self, ev: &ShopEvent, aliases: &Aliases, d: &mut EventDelta) {
        d.life.cancellations = 1;
        match self.known_order(ev, aliases) {
            Some(o) if !o.cancelled => {
                o.cancelled = true;
                let remaining = (o.amount - o.refunded).max(0);
                // Nothing is left to refund after a cancellation.
                o.refunded = o.amount;
                d.life.orders = -1;
                d.life.items = o.items.wrapping_neg();
                d.life.revenue = -remaining;
                d.win.orders = -1;
                d.win.revenue = -remaining;
                d.window_ts = o.ts;
            }
            Some(_) => {}
            None => {
                d.life.revenue = -ev.revenue;
                d.win.revenue = -ev.revenue;
            }
        }
    }

    /// Each trait, as the latest value by `(timestamp, seq)`.
    fn identify(ev: &ShopEvent, sink: &mut impl ProfileSink) {
        for (key, value) in &ev.traits {
            let latest = Latest {
                ts: ev.ts,
                seq: ev.seq,
                value: *value,
            };
            sink.set_trait(ev.user, *key, latest);
        }
    }

    /// Enters `win` into each window the event still falls into, and schedules its exit.
    fn admit(
        &mut self,
        user: UserId,
        ts: Millis,
        win: WindowCounts,
        clock: Millis,
        sink: &mut impl ProfileSink,
    ) {
        let in_7d = ts.saturating_add(WINDOW_7D) > clock;
        let in_30d = ts.saturating_add(WINDOW_30D) > clock;
        if !in_30d {
            return;
        }
        let window = if in_7d { 7 } else { 30 };
        let d = Windowed {
            d7: if in_7d { win } else { WindowCounts::default() },
            d30: win,
        };
        // One event moves each count by at most one (an order, a cancellation).
        let small = |n: i64| n.clamp(-1, 1) as i8;
        self.schedule.push(Reverse(Expiry {
            at: ts.saturating_add(if in_7d { WINDOW_7D } else { WINDOW_30D }),
            user,
            revenue: win.revenue,
            views: small(win.views),
            cart_adds: small(win.cart_adds),
            orders: small(win.orders),
            window,
        }));
        sink.window(user, d);
    }

    /// Retracts every window contribution whose exit time the clock has reached,
    /// from its user's canonical id (the user may have been merged since).
    pub fn expire(&mut self, clock: Millis, aliases: &Aliases, sink: &mut impl ProfileSink) {
        while let Some(Reverse(next)) = self.schedule.peek() {
            if next.at > clock {
                break;
            }
            let Reverse(e) = self.schedule.pop().expect("peeked");
            let counts = e.counts();
            let mut d = Windowed::default();
            if e.window == 7 {
                d.d7 = counts.negated();
                // Still inside the 30-day window: schedule that exit too.
                let at_30d = e.at - WINDOW_7D + WINDOW_30D;
                if at_30d > clock {
                    self.schedule.push(Reverse(Expiry {
                        at: at_30d,
                        window: 30,
                        ..e
                    }));
                } else {
                    d.d30 = counts.negated();
                }
            } else {
                d.d30 = counts.negated();
            }
            sink.window(aliases.resolve(e.user), d);
        }
    }
}

#[cfg(test)]
mod order_book {
    use super::*;

    #[derive(Default)]
    struct Sums {
        revenue: i64,
    }
    impl ProfileSink for Sums {
        fn lifetime(&mut self, _: UserId, d: Lifetime, _: bool) {
            self.revenue += d.revenue;
        }
        fn window(&mut self, _: UserId, _: Windowed) {}
        fn facet(&mut self, _: UserId, _: Facet, _: Diff) {}
        fn set_trait(&mut self, _: UserId, _: Sym, _: Latest) {}
    }

    fn ev(seq: u64, kind: EventKind, order: Sym, revenue: i64) -> ShopEvent {
        ShopEvent {
            seq,
            user: 7,
            ts: 1_000 + seq as i64,
            kind,
            name: 1,
            lines: vec![],
            revenue,
            order,
            traits: vec![],
        }
    }

    /// The order book is bounded: an order beyond the horizon is forgotten, and a
    /// refund of it without an amount refunds nothing (as for an unknown order).
    #[test]
    fn orders_beyond_the_horizon_are_forgotten() {
        let mut feeder = ProfileFeeder::new(2);
        let mut sums = Sums::default();
        for (seq, order) in [(1, 11), (2, 12), (3, 13)] {
            feeder.event(
                &ev(seq, EventKind::OrderCompleted, order, 100),
                0,
                &Aliases::default(),
                &mut sums,
            );
        }
        assert_eq!(feeder.orders.len(), 2);
        feeder.event(
            &ev(4, EventKind::OrderRefunded, 11, 0),
            0,
            &Aliases::default(),
            &mut sums,
        );
        assert_eq!(
            sums.revenue, 300,
            "order 11 was forgotten: nothing to refund"
        );
        feeder.event(
            &ev(5, EventKind::OrderRefunded, 13, 0),
            0,
            &Aliases::default(),
            &mut sums,
        );
        assert_eq!(
            sums.revenue, 200,
            "order 13 is remembered: refunded in full"
        );
    }
}
