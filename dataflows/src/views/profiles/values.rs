//! The values a profile accumulates (the difference types of its arrangements:
//! sums, mins and maxes as semigroups, windows as an abelian group, latest
//! traits), the facet and RFM constants, and the ranking of RFM scores.

use differential_dataflow::difference::{Abelian, IsZero, Monoid, Semigroup};
use serde::{Deserialize, Serialize};

use crate::types::*;

/// Width of the short window.
pub const WINDOW_7D: Millis = 7 * DAY_MS;
/// Width of the long window.
pub const WINDOW_30D: Millis = 30 * DAY_MS;

/// Lifetime totals of a user; a semigroup of sums, a min and maxes.
///
/// Its input is insert-only (refunds and cancellations are events of their own
/// that add negative amounts), so min and max are exact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Lifetime {
    pub events: i64,
    pub orders: i64,
    pub items: i64,
    pub revenue: Minor,
    pub refunds: i64,
    pub refunded: Minor,
    pub cancellations: i64,
    pub first_seen: Millis,
    pub last_seen: Millis,
    pub last_order_at: Millis,
    /// The greatest order time strictly below `last_order_at` (`Millis::MIN`: none).
    pub prev_order_at: Millis,
    /// This id was merged into a user (its totals were added to the user's at
    /// the link): it is no profile of its own, and reads resolve it to the user.
    /// An or, so still a semigroup; set once, by [`MERGED`].
    pub merged: bool,
}

/// What a merged id's lifetime entry receives at its link: nothing but the mark
/// (its sums cannot be taken back: mins and maxes do not retract).
pub const MERGED: Lifetime = Lifetime {
    merged: true,
    ..Lifetime::ZERO
};

impl Lifetime {
    /// The totals of no event (the semigroup's zero).
    pub const ZERO: Lifetime = Lifetime {
        events: 0,
        orders: 0,
        items: 0,
        revenue: 0,
        refunds: 0,
        refunded: 0,
        cancellations: 0,
        first_seen: Millis::MAX,
        last_seen: Millis::MIN,
        last_order_at: Millis::MIN,
        prev_order_at: Millis::MIN,
        merged: false,
    };
}

impl Default for Lifetime {
    fn default() -> Self {
        Lifetime::ZERO
    }
}

impl IsZero for Lifetime {
    fn is_zero(&self) -> bool {
        *self == Lifetime::default()
    }
}

impl Semigroup for Lifetime {
    fn plus_equals(&mut self, rhs: &Self) {
        self.events = self.events.wrapping_add(rhs.events);
        self.orders = self.orders.wrapping_add(rhs.orders);
        self.items = self.items.wrapping_add(rhs.items);
        self.revenue = self.revenue.wrapping_add(rhs.revenue);
        self.refunds = self.refunds.wrapping_add(rhs.refunds);
        self.refunded = self.refunded.wrapping_add(rhs.refunded);
        self.cancellations = self.cancellations.wrapping_add(rhs.cancellations);
        self.merged |= rhs.merged;
        self.first_seen = self.first_seen.min(rhs.first_seen);
        self.last_seen = self.last_seen.max(rhs.last_seen);
        // The two greatest distinct order times of both sides (still a semigroup:
        // the top two of a union is the top two of the sides' top twos).
        let (a, b) = (self.last_order_at, self.prev_order_at);
        let (c, d) = (rhs.last_order_at, rhs.prev_order_at);
        let last = a.max(c);
        let below = |x: Millis| if x < last { x } else { Millis::MIN };
        self.prev_order_at = below(a).max(below(b)).max(below(c)).max(below(d));
        self.last_order_at = last;
    }
}

impl Monoid for Lifetime {
    fn zero() -> Self {
        Lifetime::default()
    }
}

/// Counts of one window.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct WindowCounts {
    pub views: i64,
    pub cart_adds: i64,
    pub orders: i64,
    pub revenue: Minor,
}

impl WindowCounts {
    // Wrapping: sums of client-supplied amounts must never panic a worker, and
    // wrapping addition is still a group, so retractions stay exact. Ingest caps
    // amounts so far below `i64` that real totals never wrap.
    pub(super) fn add(&mut self, o: &Self) {
        self.views = self.views.wrapping_add(o.views);
        self.cart_adds = self.cart_adds.wrapping_add(o.cart_adds);
        self.orders = self.orders.wrapping_add(o.orders);
        self.revenue = self.revenue.wrapping_add(o.revenue);
    }
    pub(super) fn negated(mut self) -> Self {
        self.views = self.views.wrapping_neg();
        self.cart_adds = self.cart_adds.wrapping_neg();
        self.orders = self.orders.wrapping_neg();
        self.revenue = self.revenue.wrapping_neg();
        self
    }
    pub(super) fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The 7- and 30-day windows of a user; an abelian group, so events leave by retraction.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Windowed {
    pub d7: WindowCounts,
    pub d30: WindowCounts,
}

impl IsZero for Windowed {
    fn is_zero(&self) -> bool {
        self.d7.is_empty() && self.d30.is_empty()
    }
}
impl Semigroup for Windowed {
    fn plus_equals(&mut self, rhs: &Self) {
        self.d7.add(&rhs.d7);
        self.d30.add(&rhs.d30);
    }
}
impl Monoid for Windowed {
    fn zero() -> Self {
        Self::default()
    }
}
impl Abelian for Windowed {
    fn negate(&mut self) {
        self.d7 = self.d7.negated();
        self.d30 = self.d30.negated();
    }
}

/// The latest value by `(ts, seq)`; a semigroup that keeps the greater.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Latest {
    pub ts: Millis,
    pub seq: u64,
    pub value: Sym,
}
impl IsZero for Latest {
    fn is_zero(&self) -> bool {
        false
    }
}
impl Semigroup for Latest {
    fn plus_equals(&mut self, rhs: &Self) {
        if (rhs.ts, rhs.seq) > (self.ts, self.seq) {
            *self = *rhs;
        }
    }
}

/// A facet of a user: `(kind, id)`, counted in a plain `i64` difference.
pub type Facet = (u8, u64);
/// Count of messages with event name `id`.
pub const FACET_EVENT: u8 = 0;
/// Weighted interactions with category `id`.
pub const FACET_CATEGORY: u8 = 1;
/// Weighted interactions with brand `id`.
pub const FACET_BRAND: u8 = 2;
/// Net quantity of item `id` in the cart.
pub const FACET_CART: u8 = 3;

/// Interaction weight of an event kind for category and brand affinities.
pub fn weight(kind: EventKind) -> i64 {
    match kind {
        EventKind::ProductViewed | EventKind::ProductClicked => 1,
        EventKind::ProductAddedToWishlist => 2,
        EventKind::ProductAdded => 3,
        EventKind::OrderCompleted => 5,
        _ => 0,
    }
}

/// RFM dimensions in the histogram key.
pub const RFM_RECENCY: u8 = 0;
pub const RFM_FREQUENCY: u8 = 1;
pub const RFM_MONETARY: u8 = 2;

/// A key of the RFM histogram: `(worker holding this copy, dimension, bucket)`.
pub type RfmKey = (u32, u8, i64);

/// The RFM buckets of a user with orders, `None` without.
///
/// Recency: the day of the last order (a later day ranks higher); frequency: the
/// number of orders (capped at 1000); monetary: net revenue on a log scale with 16
/// linear steps per doubling (≈6% wide). Users in one bucket share a score.
pub fn rfm_buckets(l: &Lifetime) -> Option<[i64; 3]> {
    if l.orders <= 0 || l.merged {
        return None;
    }
    let recency = l.last_order_at.div_euclid(DAY_MS);
    let frequency = l.orders.min(1000);
    let monetary = if l.revenue <= 0 {
        0
    } else {
        let v = l.revenue as u64;
        let b = 63 - u64::from(v.leading_zeros());
        let frac = if b >= 4 {
            (v >> (b - 4)) & 0xF
        } else {
            (v << (4 - b)) & 0xF
        };
        (b * 16 + frac + 1) as i64
    };
    Some([recency, frequency, monetary])
}

/// Where a user's bucket stands in one RFM dimension: users below it, in it, and
/// in all (summed over workers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rank {
    pub below: i64,
    pub equal: i64,
    pub total: i64,
}

impl Rank {
    pub fn add(&mut self, other: &Rank) {
        self.below += other.below;
        self.equal += other.equal;
        self.total += other.total;
    }

    /// Quintile score 1–5 at the user's mid-rank percentile: users tied in one
    /// bucket share the score of the middle of the tie (so when every user is in one
    /// bucket, every score is 3, not 1). 0 when nobody is ranked.
    pub fn score(&self) -> u8 {
        if self.total <= 0 {
            return 0;
        }
        let twice_rank = 2 * self.below + self.equal;
        (1 + (5 * twice_rank) / (2 * self.total)).clamp(1, 5) as u8
    }
}
