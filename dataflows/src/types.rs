//! The types every view agrees on, pinned in one place.
//!
//! Views are written against these aliases so that a change of representation
//! (a wider time, a different spine) is a change here and nowhere else. Hot-path
//! data is compact: ids are 64-bit hashes interned at the edge, money is integer
//! minor units, and no float ever enters an arrangement.

use differential_dataflow::operators::arrange::TraceAgent;
use differential_dataflow::trace::implementations::{KeySpine, ValSpine};
use serde::{Deserialize, Serialize};

/// Logical time of the dataflows: the number of a log record (an *epoch*).
///
/// Each epoch is one group commit of the durable log: a run of consecutive
/// sequence numbers plus the engine clock at that point. When the frontier
/// passes an epoch, every view is complete through its last sequence number.
pub type Time = u64;

/// Multiplicity of an update in collections that carry plain counts.
pub type Diff = i64;

/// A user: the 64-bit hash of `userId` (or `anonymousId`).
pub type UserId = u64;
/// A product: the 64-bit hash of `product_id`.
pub type ItemId = u64;
/// Any other interned string (event names, categories, brands, trait keys and values).
/// `0` means "absent".
pub type Sym = u64;

/// Milliseconds since the Unix epoch (event time and engine clock).
pub type Millis = i64;
/// Money in integer minor units of the reporting currency.
pub type Minor = i64;

/// One day in milliseconds; windows and recency are measured against it.
pub const DAY_MS: Millis = 86_400_000;

/// What an event means to the views, with every string already interned.
///
/// The edge (`src/`) turns a validated Segment/GA4 message into this; views never
/// see strings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShopEvent {
    /// Position in the durable log; breaks ties between equal timestamps.
    pub seq: u64,
    pub user: UserId,
    pub ts: Millis,
    pub kind: EventKind,
    /// The canonical event name (custom names included), for per-name counts.
    pub name: Sym,
    pub lines: Vec<Line>,
    /// Order amount for orders, refunds and cancellations; 0 when the message had none.
    pub revenue: Minor,
    /// Order id, `0` when absent.
    pub order: Sym,
    /// Identify traits: (key, value) where the value is the interned JSON text.
    pub traits: Vec<(Sym, Sym)>,
}

impl ShopEvent {
    /// The distinct items of the event's lines, sorted (a line without a product
    /// id left out).
    pub fn distinct_items(&self) -> Vec<ItemId> {
        let mut items: Vec<ItemId> = self
            .lines
            .iter()
            .map(|l| l.item)
            .filter(|i| *i != 0)
            .collect();
        items.sort_unstable();
        items.dedup();
        items
    }
}

/// A product line of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub item: ItemId,
    /// `0` when absent.
    pub category: Sym,
    /// `0` when absent.
    pub brand: Sym,
    pub price: Minor,
    pub quantity: i64,
}

/// The event kinds that carry meaning for the views (Segment Spec names, GA4
/// aliases); every other name is `Custom`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum EventKind {
    ProductsSearched,
    ProductListViewed,
    ProductClicked,
    ProductViewed,
    ProductAdded,
    ProductRemoved,
    ProductAddedToWishlist,
    CartViewed,
    CheckoutStarted,
    OrderCompleted,
    OrderRefunded,
    OrderCancelled,
    PromotionViewed,
    PromotionClicked,
    ExperimentViewed,
    Identify,
    #[default]
    Custom,
}

impl EventKind {
    /// Every kind, in declaration order.
    pub const ALL: [EventKind; 17] = [
        EventKind::ProductsSearched,
        EventKind::ProductListViewed,
        EventKind::ProductClicked,
        EventKind::ProductViewed,
        EventKind::ProductAdded,
        EventKind::ProductRemoved,
        EventKind::ProductAddedToWishlist,
        EventKind::CartViewed,
        EventKind::CheckoutStarted,
        EventKind::OrderCompleted,
        EventKind::OrderRefunded,
        EventKind::OrderCancelled,
        EventKind::PromotionViewed,
        EventKind::PromotionClicked,
        EventKind::ExperimentViewed,
        EventKind::Identify,
        EventKind::Custom,
    ];

    /// The Segment Spec name; `"identify"` for [`EventKind::Identify`] and
    /// `"custom"` for [`EventKind::Custom`] (whose events keep their own name).
    pub const fn name(self) -> &'static str {
        match self {
            EventKind::ProductsSearched => "Products Searched",
            EventKind::ProductListViewed => "Product List Viewed",
            EventKind::ProductClicked => "Product Clicked",
            EventKind::ProductViewed => "Product Viewed",
            EventKind::ProductAdded => "Product Added",
            EventKind::ProductRemoved => "Product Removed",
            EventKind::ProductAddedToWishlist => "Product Added to Wishlist",
            EventKind::CartViewed => "Cart Viewed",
            EventKind::CheckoutStarted => "Checkout Started",
            EventKind::OrderCompleted => "Order Completed",
            EventKind::OrderRefunded => "Order Refunded",
            EventKind::OrderCancelled => "Order Cancelled",
            EventKind::PromotionViewed => "Promotion Viewed",
            EventKind::PromotionClicked => "Promotion Clicked",
            EventKind::ExperimentViewed => "Experiment Viewed",
            EventKind::Identify => "identify",
            EventKind::Custom => "custom",
        }
    }

    /// The kind of a track event name: a Segment Spec name or a GA4 alias
    /// (exact, case-sensitive match), else [`EventKind::Custom`].
    pub fn from_event_name(name: &str) -> EventKind {
        match name {
            "Products Searched" | "search" => EventKind::ProductsSearched,
            "Product List Viewed" | "view_item_list" => EventKind::ProductListViewed,
            "Product Clicked" | "select_item" => EventKind::ProductClicked,
            "Product Viewed" | "view_item" => EventKind::ProductViewed,
            "Product Added" | "add_to_cart" => EventKind::ProductAdded,
            "Product Removed" | "remove_from_cart" => EventKind::ProductRemoved,
            "Product Added to Wishlist" | "add_to_wishlist" => EventKind::ProductAddedToWishlist,
            "Cart Viewed" | "view_cart" => EventKind::CartViewed,
            "Checkout Started" | "begin_checkout" => EventKind::CheckoutStarted,
            "Order Completed" | "purchase" => EventKind::OrderCompleted,
            "Order Refunded" | "refund" => EventKind::OrderRefunded,
            "Order Cancelled" => EventKind::OrderCancelled,
            "Promotion Viewed" | "view_promotion" => EventKind::PromotionViewed,
            "Promotion Clicked" | "select_promotion" => EventKind::PromotionClicked,
            "Experiment Viewed" => EventKind::ExperimentViewed,
            _ => EventKind::Custom,
        }
    }

    /// Events about one product (a single line built from the properties).
    pub const fn is_product_event(self) -> bool {
        matches!(
            self,
            EventKind::ProductViewed
                | EventKind::ProductClicked
                | EventKind::ProductAdded
                | EventKind::ProductRemoved
                | EventKind::ProductAddedToWishlist
        )
    }

    /// Order Completed, Refunded or Cancelled: the events with revenue.
    pub const fn is_order(self) -> bool {
        matches!(
            self,
            EventKind::OrderCompleted | EventKind::OrderRefunded | EventKind::OrderCancelled
        )
    }

    /// Kinds whose properties carry prices (and so a currency).
    pub const fn carries_money(self) -> bool {
        self.is_product_event()
            || self.is_order()
            || matches!(
                self,
                EventKind::ProductListViewed | EventKind::CartViewed | EventKind::CheckoutStarted
            )
    }
}

/// A trace keyed by user with no value, whose difference carries the data.
pub type UserKeyTrace<R> = TraceAgent<KeySpine<UserId, Time, R>>;
/// A trace keyed by user with values, e.g. facets or traits.
pub type UserValTrace<V, R> = TraceAgent<ValSpine<UserId, V, Time, R>>;
/// A trace keyed by an arbitrary key with no value, counted.
pub type KeyTrace<K> = TraceAgent<KeySpine<K, Time, Diff>>;
/// A trace of `(key, value)` with no more than a count in its difference.
pub type ValTrace<K, V> = TraceAgent<ValSpine<K, V, Time, Diff>>;

/// The worker that owns key `key` (a user, an item) out of `peers`: the host feeds
/// a user's events to that worker, user-keyed arrangements hold the user there,
/// and a read of one key asks that worker only.
pub fn owner(key: u64, peers: usize) -> usize {
    (key % peers as u64) as usize
}

/// Stable 64-bit FNV-1a hash used to intern strings; the same in every process
/// and version, so ids in the log, the dataflows and the serving layer agree.
pub fn intern(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Mix the high bits down so that `id % workers` and hash tables see entropy.
    h ^= h >> 32;
    h = h.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^= h >> 29;
    // 0 is reserved for "absent".
    if h == 0 {
        1
    } else {
        h
    }
}

/// The hasher of every map keyed by ids: foldhash, seeded per process. Fast on
/// integer keys (several times SipHash), and seeded because the keys come from
/// client text (user ids, message ids): with a fixed hash anyone could send ids
/// that all fall into one bucket and stall ingest. Nothing iterates these maps in
/// an order that reaches an answer.
pub type IdHasher = foldhash::fast::RandomState;

/// A hash map keyed by interned ids.
pub type IdMap<V> = std::collections::HashMap<u64, V, IdHasher>;
/// A hash set of interned ids.
pub type IdSet = std::collections::HashSet<u64, IdHasher>;
/// A hash map with any key made of integers, hashed by [`IdHasher`].
pub type FastMap<K, V> = std::collections::HashMap<K, V, IdHasher>;

/// The merges of the identity graph as the workers see them: each merged id
/// (an anonymous visitor) to the user it belongs to, and each user to its merged
/// ids in link order. Every worker keeps the whole map (every worker sees every
/// epoch's links), so any worker can resolve any id without asking another.
/// Merges are never undone: the graph is a star (an id is merged into at most one
/// user, a user is never merged), so one lookup resolves an id.
#[derive(Clone, Debug, Default)]
pub struct Aliases {
    to: IdMap<UserId>,
    from: IdMap<Vec<UserId>>,
}

impl Aliases {
    /// The canonical id of `id`: its user if it is merged, else itself.
    #[inline]
    pub fn resolve(&self, id: UserId) -> UserId {
        if self.to.is_empty() {
            return id;
        }
        self.to.get(&id).copied().unwrap_or(id)
    }

    /// The ids merged into `user`, in link order.
    pub fn merged_into(&self, user: UserId) -> &[UserId] {
        self.from.get(&user).map_or(&[], Vec::as_slice)
    }

    /// Records that `id` now belongs to `user`. Returns `false` (and changes
    /// nothing) when `id` was merged already: the first link wins.
    pub fn merge(&mut self, id: UserId, user: UserId) -> bool {
        if id == user || self.to.contains_key(&id) {
            return false;
        }
        self.to.insert(id, user);
        self.from.entry(user).or_default().push(id);
        true
    }

    /// Merged ids recorded.
    pub fn len(&self) -> usize {
        self.to.len()
    }

    pub fn is_empty(&self) -> bool {
        self.to.is_empty()
    }
}
