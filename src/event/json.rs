//! One pass over the JSON of a message, without building a `serde_json::Value`.
//!
//! The shapes below keep the fields we read as borrowed scalars (strings
//! without escapes are not copied), remember the JSON type of anything
//! unexpected (for the error message), and skip the rest with `IgnoredAny`,
//! without recursion, so nesting deeper than serde_json's recursion limit is
//! skipped rather than rejected. Only identify traits are built as values,
//! because they are kept as JSON text.
//!
//! Invariant: the product keys come first in [`PROP_KEYS`], in the order of
//! [`PRODUCT_KEYS`], so the first `PRODUCT_KEYS.len()` slots of [`PropFields`]
//! and the slots of one list element are read by the same code.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::model::Str;

/// A JSON value reduced to what validation needs: scalars with their value,
/// arrays and objects only as their type.
#[derive(Debug)]
pub(super) enum Scalar<'de> {
    Str(Cow<'de, str>),
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
    Null,
    Array,
    Object,
}

impl Scalar<'_> {
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Scalar::Str(_) => "string",
            Scalar::U64(_) | Scalar::I64(_) | Scalar::F64(_) => "number",
            Scalar::Bool(_) => "boolean",
            Scalar::Null => "null",
            Scalar::Array => "array",
            Scalar::Object => "object",
        }
    }
}

/// How a value of some expected shape is built from what the JSON holds;
/// the defaults skip a container and keep only its type.
pub(super) trait Shape<'de>: Sized {
    fn from_scalar(s: Scalar<'de>) -> Self;

    fn from_map<A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Self::from_scalar(Scalar::Object))
    }

    fn from_seq<A: SeqAccess<'de>>(mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Self::from_scalar(Scalar::Array))
    }
}

/// Deserializes any [`Shape`].
pub(super) struct Shaped<T>(pub(super) T);

impl<'de, T: Shape<'de>> Deserialize<'de> for Shaped<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ShapeVisitor(PhantomData)).map(Shaped)
    }
}

struct ShapeVisitor<T>(PhantomData<T>);

impl<'de, T: Shape<'de>> Visitor<'de> for ShapeVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<T, E> {
        Ok(T::from_scalar(Scalar::Bool(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        Ok(T::from_scalar(Scalar::I64(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        Ok(T::from_scalar(Scalar::U64(v)))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        Ok(T::from_scalar(Scalar::F64(v)))
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<T, E> {
        Ok(T::from_scalar(Scalar::Str(Cow::Borrowed(v))))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        Ok(T::from_scalar(Scalar::Str(Cow::Owned(v.to_owned()))))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<T, E> {
        Ok(T::from_scalar(Scalar::Str(Cow::Owned(v))))
    }

    fn visit_unit<E: de::Error>(self) -> Result<T, E> {
        Ok(T::from_scalar(Scalar::Null))
    }

    fn visit_none<E: de::Error>(self) -> Result<T, E> {
        Ok(T::from_scalar(Scalar::Null))
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::from_map(map)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<T, A::Error> {
        T::from_seq(seq)
    }
}

impl<'de> Shape<'de> for Scalar<'de> {
    fn from_scalar(s: Scalar<'de>) -> Self {
        s
    }
}

/// An object with known keys, each read into a slot; other keys are skipped.
pub(super) trait Fields<'de>: Default {
    const KEYS: &'static [&'static str];
    fn set<A: MapAccess<'de>>(&mut self, key: usize, map: &mut A) -> Result<(), A::Error>;
}

/// An object of known fields, or whatever else was found there.
pub(super) enum Section<'de, T> {
    Object(T),
    Other(Scalar<'de>),
}

impl<'de, T: Fields<'de>> Shape<'de> for Section<'de, T> {
    fn from_scalar(s: Scalar<'de>) -> Self {
        Section::Other(s)
    }

    fn from_map<A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        let mut fields = T::default();
        while let Some(key) = map.next_key_seed(KeySeed(T::KEYS))? {
            match key {
                Some(key) => fields.set(key, &mut map)?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Section::Object(fields))
    }
}

/// Reads an object key as its index in a key list, without allocating.
#[derive(Clone, Copy)]
struct KeySeed(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<usize>, E> {
        Ok(self.0.iter().position(|k| *k == v))
    }
}

/// Store the next value in `slots[key]` (keys beyond the slots are skipped).
fn set_slot<'de, A: MapAccess<'de>>(
    slots: &mut [Option<Scalar<'de>>],
    key: usize,
    map: &mut A,
) -> Result<(), A::Error> {
    match slots.get_mut(key) {
        Some(slot) => *slot = Some(map.next_value::<Shaped<Scalar<'de>>>()?.0),
        None => {
            map.next_value::<IgnoredAny>()?;
        }
    }
    Ok(())
}

pub(super) const T_TYPE: usize = 0;
pub(super) const T_EVENT: usize = 1;
pub(super) const T_USER_ID: usize = 2;
pub(super) const T_ANONYMOUS_ID: usize = 3;
pub(super) const T_MESSAGE_ID: usize = 4;
pub(super) const T_TIMESTAMP: usize = 5;
pub(super) const T_PREVIOUS_ID: usize = 6;
pub(super) const T_PROPERTIES: usize = 7;
pub(super) const T_TRAITS: usize = 8;
pub(super) const T_CONTEXT: usize = 9;
pub(super) const TOP_KEYS: [&str; 10] = [
    "type",
    "event",
    "userId",
    "anonymousId",
    "messageId",
    "timestamp",
    "previousId",
    "properties",
    "traits",
    "context",
];

/// The top-level fields of a message.
#[derive(Default)]
pub(super) struct TopFields<'de> {
    pub(super) s: [Option<Scalar<'de>>; T_PROPERTIES],
    pub(super) properties: Option<Section<'de, PropFields<'de>>>,
    pub(super) traits: Option<Traits<'de>>,
    pub(super) context: Option<Section<'de, ContextFields<'de>>>,
    /// The first known key given more than once: such a message is refused
    /// (which `userId` or `type` did the sender mean?).
    pub(super) duplicate: Option<&'static str>,
}

impl<'de> Fields<'de> for TopFields<'de> {
    const KEYS: &'static [&'static str] = &TOP_KEYS;

    fn set<A: MapAccess<'de>>(&mut self, key: usize, map: &mut A) -> Result<(), A::Error> {
        // Every slot is set when its key is read (`null` too), so a set slot
        // means the key came before.
        let seen = match key {
            T_PROPERTIES => self.properties.is_some(),
            T_TRAITS => self.traits.is_some(),
            T_CONTEXT => self.context.is_some(),
            _ => self.s[key].is_some(),
        };
        if seen && self.duplicate.is_none() {
            self.duplicate = Some(TOP_KEYS[key]);
        }
        match key {
            T_PROPERTIES => self.properties = Some(map.next_value::<Shaped<_>>()?.0),
            T_TRAITS => self.traits = Some(map.next_value::<Shaped<_>>()?.0),
            T_CONTEXT => self.context = Some(map.next_value::<Shaped<_>>()?.0),
            _ => set_slot(&mut self.s, key, map)?,
        }
        Ok(())
    }
}

/// `context.traits`, where the RudderStack SDKs put an identify's traits (Segment
/// puts them at the top). Kept as raw text, so a track message's context costs a
/// skip and nothing is built unless an identify without top-level traits reads it.
#[derive(Default)]
pub(super) struct ContextFields<'de> {
    pub(super) traits: Option<&'de serde_json::value::RawValue>,
}

impl<'de> Fields<'de> for ContextFields<'de> {
    const KEYS: &'static [&'static str] = &["traits"];

    fn set<A: MapAccess<'de>>(&mut self, _key: usize, map: &mut A) -> Result<(), A::Error> {
        self.traits = Some(map.next_value()?);
        Ok(())
    }
}

// Product keys come first in `PROP_KEYS`, in the same order as `PRODUCT_KEYS`,
// so one function reads a product from properties or from a list element.
pub(super) const P_PRODUCT_ID: usize = 0;
pub(super) const P_SKU: usize = 1;
pub(super) const P_ITEM_ID: usize = 2;
pub(super) const P_CATEGORY: usize = 3;
pub(super) const P_ITEM_CATEGORY: usize = 4;
pub(super) const P_BRAND: usize = 5;
pub(super) const P_ITEM_BRAND: usize = 6;
pub(super) const P_PRICE: usize = 7;
pub(super) const P_QUANTITY: usize = 8;
pub(super) const P_ORDER_ID: usize = 9;
pub(super) const P_TRANSACTION_ID: usize = 10;
pub(super) const P_REVENUE: usize = 11;
pub(super) const P_TOTAL: usize = 12;
pub(super) const P_VALUE: usize = 13;
pub(super) const P_CURRENCY: usize = 14;
pub(super) const P_PROMOTION_ID: usize = 15;
pub(super) const P_CREATIVE: usize = 16;
pub(super) const P_CREATIVE_NAME: usize = 17;
pub(super) const P_EXPERIMENT_ID: usize = 18;
pub(super) const P_VARIATION_ID: usize = 19;
pub(super) const P_QUERY: usize = 20;
pub(super) const P_SEARCH_TERM: usize = 21;
pub(super) const P_PRODUCTS: usize = 22;
pub(super) const P_ITEMS: usize = 23;
pub(super) const PROP_KEYS: [&str; 24] = [
    "product_id",
    "sku",
    "item_id",
    "category",
    "item_category",
    "brand",
    "item_brand",
    "price",
    "quantity",
    "order_id",
    "transaction_id",
    "revenue",
    "total",
    "value",
    "currency",
    "promotion_id",
    "creative",
    "creative_name",
    "experiment_id",
    "variation_id",
    "query",
    "search_term",
    "products",
    "items",
];
pub(super) const PRODUCT_KEYS: [&str; 9] = [
    "product_id",
    "sku",
    "item_id",
    "category",
    "item_category",
    "brand",
    "item_brand",
    "price",
    "quantity",
];

/// The properties of a track message that may carry meaning.
#[derive(Default)]
pub(super) struct PropFields<'de> {
    pub(super) s: [Option<Scalar<'de>>; P_PRODUCTS],
    pub(super) products: Option<List<'de>>,
    pub(super) items: Option<List<'de>>,
}

impl<'de> Fields<'de> for PropFields<'de> {
    const KEYS: &'static [&'static str] = &PROP_KEYS;

    fn set<A: MapAccess<'de>>(&mut self, key: usize, map: &mut A) -> Result<(), A::Error> {
        match key {
            P_PRODUCTS => self.products = Some(map.next_value::<Shaped<_>>()?.0),
            P_ITEMS => self.items = Some(map.next_value::<Shaped<_>>()?.0),
            _ => set_slot(&mut self.s, key, map)?,
        }
        Ok(())
    }
}

/// The product fields of one element of `products[]` / `items[]`.
#[derive(Default)]
pub(super) struct ItemFields<'de> {
    pub(super) s: [Option<Scalar<'de>>; PRODUCT_KEYS.len()],
}

impl<'de> Fields<'de> for ItemFields<'de> {
    const KEYS: &'static [&'static str] = &PRODUCT_KEYS;

    fn set<A: MapAccess<'de>>(&mut self, key: usize, map: &mut A) -> Result<(), A::Error> {
        set_slot(&mut self.s, key, map)
    }
}

/// `products[]` or `items[]`.
pub(super) enum List<'de> {
    Items(Vec<Section<'de, ItemFields<'de>>>),
    Other(Scalar<'de>),
}

impl<'de> Shape<'de> for List<'de> {
    fn from_scalar(s: Scalar<'de>) -> Self {
        List::Other(s)
    }

    fn from_seq<A: SeqAccess<'de>>(mut seq: A) -> Result<Self, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(Shaped(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(List::Items(items))
    }
}

/// Identify `traits`: every value kept, as it will be stored as JSON text.
pub(super) enum Traits<'de> {
    Object(Vec<(Str, serde_json::Value)>),
    Other(Scalar<'de>),
}

impl<'de> Shape<'de> for Traits<'de> {
    fn from_scalar(s: Scalar<'de>) -> Self {
        Traits::Other(s)
    }

    fn from_map<A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        let mut pairs = Vec::new();
        while let Some(pair) = map.next_entry::<Str, serde_json::Value>()? {
            pairs.push(pair);
        }
        Ok(Traits::Object(pairs))
    }
}

/// `null` counts as absent.
pub(super) fn present<'a, 'de>(slot: &'a Option<Scalar<'de>>) -> Option<&'a Scalar<'de>> {
    match slot {
        None | Some(Scalar::Null) => None,
        Some(s) => Some(s),
    }
}

#[cfg(test)]
mod tests {
    use crate::event::test_util::*;

    #[test]
    fn rejects_not_json() {
        let e = parse(r#"{"type":"track","#).unwrap_err();
        assert_eq!(e.code(), "not_json");
        assert!(
            e.to_string().starts_with("not JSON: EOF while parsing"),
            "{e}"
        );
        let e = parse(r#"{"a":1} x"#).unwrap_err();
        assert_eq!(e.code(), "not_json");
        assert!(e.to_string().contains("trailing characters"), "{e}");
        assert_eq!(parse("").unwrap_err().code(), "not_json");
        assert_eq!(parse("[1,").unwrap_err().code(), "not_json");
    }

    #[test]
    fn rejects_non_objects() {
        rejects("[1,2]", "not_object", "expected a JSON object, got array");
        rejects(
            r#" "track" "#,
            "not_object",
            "expected a JSON object, got string",
        );
        rejects("12", "not_object", "expected a JSON object, got number");
        rejects("null", "not_object", "expected a JSON object, got null");
        rejects("true", "not_object", "expected a JSON object, got boolean");
    }

    #[test]
    fn duplicate_top_level_keys_are_refused() {
        rejects(
            r#"{"type":"track","event":"a","event":"b","userId":"u"}"#,
            "duplicate_key",
            "event: given more than once",
        );
        rejects(
            r#"{"type":"track","userId":"a","event":"x","userId":"b"}"#,
            "duplicate_key",
            "userId: given more than once",
        );
        // Inside properties the last one counts, as JSON parsers usually do.
        let ev = ok(
            r#"{"type":"track","event":"Product Viewed","userId":"u","properties":{"product_id":"p","product_id":"q"}}"#,
        );
        assert_eq!(ev.products[0].id, "q");
    }

    #[test]
    fn escaped_strings_and_unknown_fields() {
        let ev = ok(
            r#"{"context":{"ip":"1.2.3.4","deep":[[[{"a":null}]]]},"type":"track","userId":"u\"1","event":"Product Viewed",
                "properties":{"product_id":"p\u00e9","extra":{"price":"not read"}},"integrations":{"All":true},"sentAt":"x"}"#,
        );
        assert_eq!(ev.user, "u\"1");
        assert_eq!(ev.products, vec![product("pé", 0, 1)]);
    }

    #[test]
    fn deep_nesting_never_overflows_the_stack() {
        let open = "[".repeat(10_000);
        let close = "]".repeat(10_000);
        // Skipped fields are skipped without recursion: accepted.
        let skipped =
            format!(r#"{{"type":"track","userId":"u","event":"x","context":{open}{close}}}"#);
        assert_eq!(ok(&skipped).name, "x");
        let in_products = format!(
            r#"{{"type":"track","userId":"u","event":"purchase","properties":{{"products":[{{"price":{open}{close}}}]}}}}"#
        );
        assert_eq!(parse(&in_products).unwrap_err().code(), "bad_number");
        // Traits are built as values: serde_json's recursion limit applies.
        let traits =
            format!(r#"{{"type":"identify","userId":"u","traits":{{"a":{open}{close}}}}}"#);
        let e = parse(&traits).unwrap_err();
        assert_eq!(e.code(), "not_json");
        assert!(e.to_string().contains("recursion limit"), "{e}");
    }
}
