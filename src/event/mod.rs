//! The event model and its validation: one JSON message in, one [`Event`] or
//! one precise [`Reject`] out.
//!
//! # The model
//!
//! shopstream speaks the [Segment Spec] natively (the format of Segment and
//! RudderStack) and accepts GA4 event names as aliases. A message is a JSON
//! object with a `type` (`"track"` or `"identify"`), a user (`userId`, else
//! `anonymousId`), an optional `messageId` (the deduplication key), an optional
//! `timestamp` and either `properties` (track) or `traits` (identify). Every
//! other top-level field (`context`, `integrations`, `sentAt`, ...) is ignored,
//! and so are a track's `context.traits`.
//!
//! An [`Event`] is the validated, flattened form the rest of the engine
//! consumes: the user as a string, the event time in epoch milliseconds, a
//! [`Kind`], and the handful of properties that carry meaning for that kind.
//! Everything else in `properties` is dropped at the edge, so the log and the
//! dataflows never see it.
//!
//! # Names that carry meaning
//!
//! | Segment name                | GA4 alias          | what is read from `properties`                          |
//! |-----------------------------|--------------------|---------------------------------------------------------|
//! | `Products Searched`         | `search`           | `query` (GA4 `search_term`)                              |
//! | `Product List Viewed`       | `view_item_list`   | `products[]` / `items[]`, `currency`                     |
//! | `Product Clicked`           | `select_item`      | one product from the properties, else `products[]`/`items[]` |
//! | `Product Viewed`            | `view_item`        | as above                                                 |
//! | `Product Added`             | `add_to_cart`      | as above                                                 |
//! | `Product Removed`           | `remove_from_cart` | as above                                                 |
//! | `Product Added to Wishlist` | `add_to_wishlist`  | as above                                                 |
//! | `Cart Viewed`               | `view_cart`        | `products[]` / `items[]`, `currency`                     |
//! | `Checkout Started`          | `begin_checkout`   | `products[]` / `items[]`, `currency`                     |
//! | `Order Completed`           | `purchase`         | `order_id` (GA4 `transaction_id`), `revenue` / `total` (GA4 `value`), `currency`, `products[]` / `items[]` |
//! | `Order Refunded`            | `refund`           | as for orders                                            |
//! | `Order Cancelled`           |                    | as for orders                                            |
//! | `Promotion Viewed`          | `view_promotion`   | `promotion_id`, `creative` (GA4 `creative_name`)         |
//! | `Promotion Clicked`         | `select_promotion` | as above                                                 |
//! | `Experiment Viewed`         |                    | `experiment_id`, `variation_id`                          |
//!
//! Names match exactly (case-sensitive), as in the Segment Spec. Any other
//! name is a [`Kind::Custom`] event: accepted and counted under its raw name,
//! its properties are not interpreted (so a custom event never fails on a
//! property whose shape we do not know). `identify` copies its `traits` into
//! [`Event::traits`], each value as compact JSON text, sorted by key.
//!
//! A product line takes its id from `product_id`, else `sku`, else GA4
//! `item_id`; `category` (GA4 `item_category`), `brand` (GA4 `item_brand`),
//! `price` (default 0) and `quantity` (default 1). A line without an id is not
//! kept in [`Event::products`] (there is nothing to key it by), but its money
//! still counts towards an order total computed from the lines. A product event
//! without any product id is accepted with no lines.
//!
//! # Money
//!
//! Money is integer minor units of the configured reporting currency (cents
//! for USD, yen for JPY, fils for KWD), never `f64`: sums and differences in
//! the dataflows must be exact and associative. A message's `currency` (absent
//! means the reporting currency) is converted with the configured rate, then
//! scaled to the reporting currency's minor units and rounded half away from
//! zero. When no conversion is needed, amounts are rounded on the decimal the
//! sender wrote, not on its binary approximation: `1.005` USD is 101 cents, as
//! a person reads it, although `1.005 * 100` is `100.49999999999999` in `f64`.
//! An order's revenue comes from `revenue`, else `total`, else GA4 `value`,
//! else the sum of `price × quantity` over its lines, else 0 (a refund without
//! an amount is resolved from its order downstream; parsing does not look it up).
//!
//! # Validation
//!
//! Input comes from the network, so every rule answers with a [`Reject`] that
//! names the field path and what was wrong with it (`properties.products[2].price:
//! expected a non-negative number, got string "12.5"`): the sender sees it on
//! its connection and can fix its tracking code. Nothing here panics on any
//! input, including nesting deeper than serde_json's recursion limit, numbers
//! that do not fit, and strings with escapes; there is a property test for it.
//!
//! Checks run cheapest first: line size, UTF-8 (with the byte offset of the
//! first bad byte), JSON syntax, then the object's fields. `null` counts as
//! absent everywhere; an empty `userId`, `anonymousId`, `messageId` or id
//! property also counts as absent. Ids (`userId`, `messageId`, `product_id`,
//! `order_id`, ...) may be strings or numbers, as Segment allows; numbers are
//! stringified. Amounts must be non-negative JSON numbers (a string `"12.5"` is
//! rejected, not guessed at), quantities non-negative integers.
//!
//! # Speed
//!
//! The message is not built into a `serde_json::Value`. A set of small serde
//! visitors walk the JSON once, keep only the fields listed above as borrowed
//! scalars (strings without escapes are not copied), and skip everything else
//! with `IgnoredAny`. The scalars keep their JSON type, so the validation that
//! follows can still say "got string", "got array". Ids of up to 24 bytes live
//! inline in [`Str`] without a heap allocation. Only identify traits go
//! through `serde_json::Value`, because their values are kept as JSON text.
//!
//! # Layout
//!
//! * `model`: [`Event`], [`Product`], [`Kind`], [`Str`], [`MessageType`] and
//!   [`message_id_hash`]: the validated form, as the log stores it.
//! * `parse`: [`parse_message`]: the order of the checks, names, product
//!   lines, ids, timestamps and traits.
//! * `context`: [`ParseContext`], what validation knows besides the message
//!   (receive time, line limit, currencies).
//! * `money`: [`minor_unit_decimals`], conversion and rounding to minor
//!   units, the caps [`MAX_AMOUNT_MINOR`] and [`MAX_QUANTITY`].
//! * `reject`: [`Reject`] and how an offending value is worded in it.
//! * `json`: the serde visitors that read a message in one pass.
//!
//! [Segment Spec]: https://segment.com/docs/connections/spec/ecommerce/v2/

mod context;
mod json;
mod model;
mod money;
mod parse;
mod reject;
#[cfg(test)]
mod test_util;

pub use context::{ParseContext, DEFAULT_MAX_ID_BYTES};
pub use model::{
    decode_next, links_of, message_id_hash, set_links, Event, Kind, MessageType, Product, Str,
};
pub use money::{minor_unit_decimals, MAX_AMOUNT_MINOR, MAX_QUANTITY};
pub use parse::parse_message;
pub use reject::Reject;
