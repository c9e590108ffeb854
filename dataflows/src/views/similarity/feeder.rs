//! The similarity view's feeder: turns each epoch's events into updates of the
//! view's inputs (interaction records with their scheduled retractions, order
//! baskets from the order book, items seen), and moves records at identity merges.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

use serde::{Deserialize, Serialize};

use super::{Recency, SimilarityInputs, SimilaritySettings, UNIT};
use crate::types::*;

/// What the feeder knows of one order id.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(super) struct Basket {
    /// The distinct items of its `Order Completed`, sorted (`None`: not arrived).
    pub(super) items: Option<Vec<ItemId>>,
    /// Items refunded one by one, sorted.
    pub(super) refunded: Vec<ItemId>,
    /// Refunded whole or cancelled.
    pub(super) removed: bool,
}

impl Basket {
    /// The items the order counts with; an order over `max_items` counts none.
    pub(super) fn live(&self, max_items: usize) -> Vec<ItemId> {
        match &self.items {
            Some(items) if !self.removed && items.len() <= max_items => {
                let mut live: Vec<ItemId> = items
                    .iter()
                    .copied()
                    .filter(|i| self.refunded.binary_search(i).is_err())
                    .collect();
                if !live.is_empty() {
                    live.push(UNIT);
                }
                live
            }
            _ => Vec::new(),
        }
    }
}

/// The unit key of an order without an order id: its own sequence number.
fn loose_order(seq: u64) -> Sym {
    intern(&format!("\u{0}order@{seq}"))
}

/// Turns events into updates of the similarity inputs.
///
/// Keeps, per worker: the interaction records it admitted that are still inside
/// the window (by canonical user, to move them at a merge) and the schedule of
/// their retractions; the order book (the last `order_horizon` order ids, first in
/// first out; a refund of an order older than that changes nothing); the items it
/// has reported seen.
pub struct SimilarityFeeder {
    pub(super) settings: SimilaritySettings,
    pub(super) tracked: IdMap<BTreeSet<(Millis, Recency, ItemId)>>,
    pub(super) schedule: BinaryHeap<Reverse<(Millis, UserId, Recency, ItemId)>>,
    pub(super) orders: FastMap<Sym, Basket>,
    pub(super) fifo: std::collections::VecDeque<Sym>,
    pub(super) seen: IdSet,
    /// Orders not counted for their size.
    pub(super) oversized: u64,
}

impl SimilarityFeeder {
    pub fn new(settings: SimilaritySettings) -> Self {
        SimilarityFeeder {
            settings,
            tracked: IdMap::default(),
            schedule: BinaryHeap::new(),
            orders: FastMap::default(),
            fifo: Default::default(),
            seen: IdSet::default(),
            oversized: 0,
        }
    }

    /// Admits one record under `user`, to be retracted when the clock reaches
    /// `expires`.
    pub(super) fn admit(
        &mut self,
        user: UserId,
        rec: Recency,
        item: ItemId,
        expires: Millis,
        inputs: &mut SimilarityInputs,
    ) {
        if self
            .tracked
            .entry(user)
            .or_default()
            .insert((expires, rec, item))
        {
            inputs.touches.update((user, (rec, item)), 1);
            self.schedule.push(Reverse((expires, user, rec, item)));
        }
    }

    /// Moves the records admitted under `id` to `user`.
    pub(super) fn merge(&mut self, id: UserId, user: UserId, inputs: &mut SimilarityInputs) {
        let Some(set) = self.tracked.remove(&id) else {
            return;
        };
        for (_, rec, item) in &set {
            inputs.touches.update((id, (*rec, *item)), -1);
            inputs.touches.update((user, (*rec, *item)), 1);
        }
        self.tracked.entry(user).or_default().extend(set);
    }

    /// Retracts the records whose window the clock has left.
    pub(super) fn expire(
        &mut self,
        clock: Millis,
        aliases: &Aliases,
        inputs: &mut SimilarityInputs,
    ) {
        while let Some(Reverse((at, user, rec, item))) = self.schedule.peek().copied() {
            if at > clock {
                break;
            }
            self.schedule.pop();
            let user = aliases.resolve(user);
            if let Some(set) = self.tracked.get_mut(&user) {
                if set.remove(&(at, rec, item)) {
                    inputs.touches.update((user, (rec, item)), -1);
                }
                if set.is_empty() {
                    self.tracked.remove(&user);
                }
            }
        }
    }

    /// Feeds one event of an epoch whose clock is `clock`.
    pub fn event(&mut self, ev: &ShopEvent, clock: Millis, inputs: &mut SimilarityInputs) {
        for line in &ev.lines {
            if line.item != 0 && self.seen.insert(line.item) {
                inputs.seen.update(line.item, 1);
            }
        }
        let interaction = matches!(
            ev.kind,
            EventKind::ProductViewed
                | EventKind::ProductClicked
                | EventKind::ProductAdded
                | EventKind::ProductAddedToWishlist
                | EventKind::OrderCompleted
        );
        if !interaction && !ev.kind.is_order() {
            return;
        }
        // Read once: the history's records and the order book both want them.
        let items = ev.distinct_items();
        let expires = ev.ts.saturating_add(self.settings.history_ms);
        if interaction && expires > clock {
            for item in &items {
                self.admit(ev.user, (ev.ts, ev.seq), *item, expires, inputs);
            }
        }
        match ev.kind {
            EventKind::OrderCompleted => {
                if items.is_empty() {
                    return;
                }
                if ev.order == 0 {
                    let basket = Basket {
                        items: Some(items),
                        ..Basket::default()
                    };
                    self.update(loose_order(ev.seq), &Basket::default(), &basket, inputs);
                } else {
                    self.change(ev.order, inputs, |b| {
                        if b.items.is_none() {
                            b.items = Some(items);
                        }
                    });
                }
            }
            EventKind::OrderRefunded if ev.order != 0 => {
                self.change(ev.order, inputs, |b| {
                    if items.is_empty() {
                        b.removed = true;
                    } else {
                        b.refunded.extend(items);
                        b.refunded.sort_unstable();
                        b.refunded.dedup();
                    }
                });
            }
            EventKind::OrderCancelled if ev.order != 0 => {
                self.change(ev.order, inputs, |b| b.removed = true);
            }
            _ => {}
        }
    }

    /// Applies `f` to the book's entry of `order` and updates the basket input by
    /// the difference of its live items.
    fn change(&mut self, order: Sym, inputs: &mut SimilarityInputs, f: impl FnOnce(&mut Basket)) {
        let old = self.orders.get(&order).cloned().unwrap_or_default();
        let mut new = old.clone();
        f(&mut new);
        self.update(order, &old, &new, inputs);
        self.remember(order, new);
    }

    fn update(&mut self, order: Sym, old: &Basket, new: &Basket, inputs: &mut SimilarityInputs) {
        let max = self.settings.max_order_items;
        if old.items.is_none() && new.items.as_ref().is_some_and(|i| i.len() > max) {
            self.oversized += 1;
        }
        let (was, now) = (old.live(max), new.live(max));
        for i in was.iter().filter(|i| !now.contains(i)) {
            inputs.baskets.update((order, *i), -1);
        }
        for i in now.iter().filter(|i| !was.contains(i)) {
            inputs.baskets.update((order, *i), 1);
        }
    }

    /// Keeps `basket` in the book, forgetting the oldest order beyond the horizon.
    pub(super) fn remember(&mut self, order: Sym, basket: Basket) {
        if self.settings.order_horizon == 0 {
            return;
        }
        if self.orders.insert(order, basket).is_none() {
            self.fifo.push_back(order);
            if self.fifo.len() > self.settings.order_horizon {
                if let Some(old) = self.fifo.pop_front() {
                    self.orders.remove(&old);
                }
            }
        }
    }
}
