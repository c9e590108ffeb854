//! The validated event: the form the log stores and every view reads.
//!
//! Invariant: an [`Event`] is stored with bincode 1.3, every field in
//! declaration order, so changing a field's type or order changes the log
//! format; and [`message_id_hash`] is fixed by its definition, because the
//! log keeps its values across processes and versions.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

/// Short strings (ids, names) without a heap allocation up to 24 bytes.
pub type Str = CompactString;

/// What an event means to the engine: shared with the views, which match on it.
pub use shopstream_dataflows::types::EventKind as Kind;

/// One product line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub id: Str,
    pub category: Option<Str>,
    pub brand: Option<Str>,
    /// Unit price in minor units of the reporting currency; 0 if absent.
    pub price: i64,
    /// Default 1.
    pub quantity: i64,
}

/// A validated message. Stored in the log with bincode 1.3, so every field is
/// always serialized (no skipping, no untagged or flattened parts).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// [`message_id_hash`] of `messageId`; `None` when the message had none
    /// (such an event is never deduplicated).
    pub message_id: Option<u64>,
    /// `userId` if present and non-empty, else `anonymousId`.
    pub user: Str,
    /// True when `user` came from `anonymousId`.
    pub anonymous: bool,
    /// Event time, milliseconds since the Unix epoch.
    pub ts: i64,
    pub kind: Kind,
    /// Canonical name: the Segment name for known events (GA4 aliases mapped),
    /// the raw name for custom events, `"identify"` for identify.
    pub name: Str,
    /// Product lines: one from the properties for single-product events,
    /// `products[]` / GA4 `items[]` otherwise.
    pub products: Vec<Product>,
    /// Minor units of the reporting currency: the order total for orders
    /// (Completed, Refunded, Cancelled), else 0.
    pub revenue: i64,
    pub order_id: Option<Str>,
    pub promotion_id: Option<Str>,
    pub creative: Option<Str>,
    pub experiment_id: Option<Str>,
    pub variation_id: Option<Str>,
    /// Products Searched: `query`, or GA4 `search_term`.
    pub query: Option<Str>,
    /// Identify traits: (key, compact JSON text of the value), sorted by key.
    pub traits: Vec<(Str, String)>,
    /// The other id this message ties to `user` (an identity link, for identity
    /// resolution, docs/identity.md): the `anonymousId` of a message that also
    /// has a `userId`, or an `alias`'s `previousId`.
    ///
    /// Not in the event's own bincode layout (`skip`), which the log and binary
    /// frames have used since the start: links travel in a section after the
    /// events ([`links_of`], [`set_links`]), which earlier versions ignore, so a
    /// log written now still replays on them and every old log reads here.
    #[serde(skip)]
    pub link: Option<Str>,
}

/// Decodes the next value of a bincode stream (`bincode::serialize`'s encoding)
/// from `reader`, never allocating more than the bytes left: a length prefix in
/// hostile or damaged bytes is refused instead of allocated. (Reading from a
/// `Read` rather than a slice, bincode trusts a string's length prefix: the
/// fuzzer's binary frames asked for 400 PB.)
pub fn decode_next<T: serde::de::DeserializeOwned>(reader: &mut &[u8]) -> bincode::Result<T> {
    use bincode::Options as _;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(reader.len() as u64)
        .deserialize_from(reader)
}

/// The links of `events`, as `(index, id)`: the section written after them.
pub fn links_of<'a>(events: impl IntoIterator<Item = &'a Event>) -> Vec<(u32, Str)> {
    events
        .into_iter()
        .enumerate()
        .filter_map(|(i, e)| e.link.clone().map(|l| (i as u32, l)))
        .collect()
}

/// Puts links read from their section back on `events` (an index out of range
/// is ignored: the section was checked by the record's or frame's checksum or
/// framing, and a link is never worth refusing the events for).
pub fn set_links(events: &mut [Event], links: Vec<(u32, Str)>) {
    for (i, link) in links {
        if let Some(e) = events.get_mut(i as usize) {
            e.link = Some(link);
        }
    }
}

/// `type` of a message, for endpoints that imply it (`/v1/track`, `/v1/identify`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageType {
    Track,
    Identify,
    /// Segment's `alias`: `previousId` is the same person as `userId`.
    Alias,
}

/// FNV-1a, 64 bits, over the UTF-8 bytes of `id`. Fixed by its definition, so
/// the same across processes, machines and versions (the log stores it).
pub fn message_id_hash(id: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    id.bytes()
        .fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::test_util::*;

    #[test]
    fn message_ids_hash_with_fnv1a() {
        // Reference values of FNV-1a 64.
        assert_eq!(message_id_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(message_id_hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(message_id_hash("foobar"), 0x8594_4171_f739_67e8);
        let ev = ok(r#"{"type":"track","event":"x","userId":"u","messageId":"m-1"}"#);
        assert_eq!(ev.message_id, Some(message_id_hash("m-1")));
        assert_eq!(
            ok(r#"{"type":"track","event":"x","userId":"u"}"#).message_id,
            None
        );
        assert_eq!(
            ok(r#"{"type":"track","event":"x","userId":"u","messageId":""}"#).message_id,
            None
        );
        rejects(
            r#"{"type":"track","event":"x","userId":"u","messageId":[]}"#,
            "wrong_type",
            "messageId: expected a string or number, got array",
        );
    }

    #[test]
    fn events_round_trip_through_bincode() {
        let ev = ok(&track(
            "Order Completed",
            r#"{"order_id":"o","revenue":1,"products":[{"product_id":"a-very-long-product-identifier-0001","category":"c","price":1}]}"#,
        ));
        let bytes = bincode::serialize(&ev).unwrap();
        let back: Event = bincode::deserialize(&bytes).unwrap();
        assert_eq!(back, ev);
        let id = ok(r#"{"type":"identify","userId":"u","traits":{"a":[1]}}"#);
        let back: Event = bincode::deserialize(&bincode::serialize(&id).unwrap()).unwrap();
        assert_eq!(back, id);
    }
}
