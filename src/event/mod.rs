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
//! [Segment Spec]: https://segment.com/docs/connections/spec/ecommerce/v2/

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::time::{SystemTime, UNIX_EPOCH};

use compact_str::{CompactString, ToCompactString};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

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
}

/// `type` of a message, for endpoints that imply it (`/v1/track`, `/v1/identify`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageType {
    Track,
    Identify,
}

/// What validation needs to know besides the message.
#[derive(Clone, Debug)]
pub struct ParseContext {
    /// Event time for messages without `timestamp` (receive time). Set it per
    /// batch; it is not read from the clock on every message.
    pub now_ms: i64,
    /// Longest accepted message, in bytes.
    pub max_line_bytes: usize,
    /// ISO 4217 code, upper case.
    pub reporting_currency: Str,
    /// Units of reporting currency per unit of the keyed currency (upper-case
    /// ISO 4217 codes). Rates should be finite and positive (config checks).
    pub currency_rates: HashMap<Str, f64>,
}

impl ParseContext {
    /// `now_ms` from the system clock, 32 KiB lines, no conversion rates.
    pub fn new(reporting_currency: &str) -> Self {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let mut reporting_currency = Str::new(reporting_currency);
        reporting_currency.make_ascii_uppercase();
        ParseContext {
            now_ms,
            max_line_bytes: 32 * 1024,
            reporting_currency,
            currency_rates: HashMap::new(),
        }
    }
}

/// Why a message was rejected. `Display` is the message sent back to the
/// client; [`Reject::code`] is the label for metrics.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("line is {len} bytes, over the {max}-byte limit")]
    LineTooLong { len: usize, max: usize },
    #[error("not valid UTF-8 at byte {offset}")]
    InvalidUtf8 { offset: usize },
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("expected a JSON object, got {got}")]
    NotObject { got: &'static str },
    #[error("type: expected \"track\" or \"identify\", got {got}")]
    BadType { got: String },
    #[error("type: required (\"track\" or \"identify\")")]
    MissingType,
    #[error("missing userId or anonymousId")]
    MissingUser,
    #[error("event: required for track")]
    MissingEvent,
    #[error("timestamp: cannot parse {got} as RFC 3339 or epoch milliseconds")]
    BadTimestamp { got: String },
    /// A field of the wrong JSON type (not an amount: see `BadNumber`).
    #[error("{path}: expected {expected}, got {got}")]
    WrongType {
        path: String,
        expected: &'static str,
        got: String,
    },
    /// A price, quantity or amount that is not a non-negative number, or does
    /// not fit in 64-bit minor units.
    #[error("{path}: expected {expected}, got {got}")]
    BadNumber {
        path: String,
        expected: &'static str,
        got: String,
    },
    /// Every price and quantity fits, but the order total computed from the
    /// lines (the sum of price × quantity) does not.
    #[error("{path}: the order total (sum of price × quantity) is over 10^15 minor units")]
    TotalOverflow { path: String },
    #[error("currency {currency} has no rate to the reporting currency {reporting}")]
    UnknownCurrency { currency: String, reporting: String },
}

impl Reject {
    /// Every value [`Reject::code`] can return, to pre-register metrics.
    pub const CODES: [&'static str; 12] = [
        "line_too_long",
        "invalid_utf8",
        "not_json",
        "not_object",
        "bad_type",
        "missing_type",
        "missing_user",
        "missing_event",
        "bad_timestamp",
        "wrong_type",
        "bad_number",
        "unknown_currency",
    ];

    /// Short stable snake_case label for metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Reject::LineTooLong { .. } => "line_too_long",
            Reject::InvalidUtf8 { .. } => "invalid_utf8",
            Reject::NotJson(_) => "not_json",
            Reject::NotObject { .. } => "not_object",
            Reject::BadType { .. } => "bad_type",
            Reject::MissingType => "missing_type",
            Reject::MissingUser => "missing_user",
            Reject::MissingEvent => "missing_event",
            Reject::BadTimestamp { .. } => "bad_timestamp",
            Reject::WrongType { .. } => "wrong_type",
            Reject::BadNumber { .. } | Reject::TotalOverflow { .. } => "bad_number",
            Reject::UnknownCurrency { .. } => "unknown_currency",
        }
    }
}

/// FNV-1a, 64 bits, over the UTF-8 bytes of `id`. Fixed by its definition, so
/// the same across processes, machines and versions (the log stores it).
pub fn message_id_hash(id: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    id.bytes()
        .fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// Digits after the decimal point in the minor unit of an ISO 4217 currency
/// (case-insensitive): 0 for JPY, KRW, ...; 3 for BHD, KWD, ...; else 2.
pub fn minor_unit_decimals(currency: &str) -> u32 {
    let b = currency.as_bytes();
    if b.len() != 3 {
        return 2;
    }
    let code = [
        b[0].to_ascii_uppercase(),
        b[1].to_ascii_uppercase(),
        b[2].to_ascii_uppercase(),
    ];
    match &code {
        b"BIF" | b"CLP" | b"DJF" | b"GNF" | b"ISK" | b"JPY" | b"KMF" | b"KRW" | b"PYG" | b"RWF"
        | b"UGX" | b"UYI" | b"VND" | b"VUV" | b"XAF" | b"XOF" | b"XPF" => 0,
        b"BHD" | b"IQD" | b"JOD" | b"KWD" | b"LYD" | b"OMR" | b"TND" => 3,
        b"CLF" | b"UYW" => 4,
        _ => 2,
    }
}

/// Validate one message: one NDJSON line without its newline, or one element
/// of an HTTP batch. `default_type` applies when the message has no `type`.
pub fn parse_message(
    bytes: &[u8],
    ctx: &ParseContext,
    default_type: Option<MessageType>,
) -> Result<Event, Reject> {
    if bytes.len() > ctx.max_line_bytes {
        return Err(Reject::LineTooLong {
            len: bytes.len(),
            max: ctx.max_line_bytes,
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| Reject::InvalidUtf8 {
        offset: e.valid_up_to(),
    })?;
    let top = match serde_json::from_str::<Shaped<Section<'_, TopFields<'_>>>>(text) {
        Ok(Shaped(Section::Object(top))) => top,
        Ok(Shaped(Section::Other(s))) => return Err(Reject::NotObject { got: s.kind() }),
        Err(e) => return Err(Reject::NotJson(e.to_string())),
    };

    let ty = match present(&top.s[T_TYPE]) {
        None => default_type.ok_or(Reject::MissingType)?,
        Some(Scalar::Str(t)) if t == "track" => MessageType::Track,
        Some(Scalar::Str(t)) if t == "identify" => MessageType::Identify,
        Some(Scalar::Str(t)) => return Err(Reject::BadType { got: quoted(t) }),
        Some(s) => return Err(Reject::BadType { got: describe(s) }),
    };
    let (user, anonymous) = match opt_id(&top.s[T_USER_ID], "userId")? {
        Some(user) => (user, false),
        None => match opt_id(&top.s[T_ANONYMOUS_ID], "anonymousId")? {
            Some(user) => (user, true),
            None => return Err(Reject::MissingUser),
        },
    };
    let message_id = match present(&top.s[T_MESSAGE_ID]) {
        None => None,
        Some(Scalar::Str(id)) if id.is_empty() => None,
        Some(Scalar::Str(id)) => Some(message_id_hash(id)),
        Some(s) => match number_text(s) {
            Some(id) => Some(message_id_hash(&id)),
            None => return Err(wrong_type("messageId", "a string or number", s)),
        },
    };
    let ts = timestamp(present(&top.s[T_TIMESTAMP]), ctx.now_ms)?;

    let mut event = Event {
        message_id,
        user,
        anonymous,
        ts,
        kind: Kind::Identify,
        name: Str::const_new("identify"),
        products: Vec::new(),
        revenue: 0,
        order_id: None,
        promotion_id: None,
        creative: None,
        experiment_id: None,
        variation_id: None,
        query: None,
        traits: Vec::new(),
    };
    match ty {
        MessageType::Identify => event.traits = traits(top.traits)?,
        MessageType::Track => {
            let name = match present(&top.s[T_EVENT]) {
                None => return Err(Reject::MissingEvent),
                Some(Scalar::Str(name)) if name.is_empty() => return Err(Reject::MissingEvent),
                Some(Scalar::Str(name)) => name,
                Some(s) => return Err(wrong_type("event", "a non-empty string", s)),
            };
            event.kind = Kind::from_event_name(name);
            event.name = match event.kind {
                Kind::Custom => Str::new(name),
                kind => Str::const_new(kind.name()),
            };
            let props = match &top.properties {
                None | Some(Section::Other(Scalar::Null)) => None,
                Some(Section::Object(props)) => Some(props),
                Some(Section::Other(s)) => return Err(wrong_type("properties", "an object", s)),
            };
            if let Some(props) = props {
                read_properties(&mut event, props, ctx)?;
            }
        }
    }
    Ok(event)
}

// ---------------------------------------------------------------------------
// Interpretation of a parsed message.

/// Fill the kind-specific fields of a track event from its properties.
fn read_properties(ev: &mut Event, p: &PropFields<'_>, ctx: &ParseContext) -> Result<(), Reject> {
    let kind = ev.kind;
    match kind {
        Kind::ProductsSearched => {
            ev.query = first_id(p, P_QUERY, P_SEARCH_TERM)?;
        }
        Kind::PromotionViewed | Kind::PromotionClicked => {
            ev.promotion_id = opt_id(&p.s[P_PROMOTION_ID], "properties.promotion_id")?;
            ev.creative = match opt_text(&p.s[P_CREATIVE], "properties.creative")? {
                Some(c) => Some(c),
                None => opt_text(&p.s[P_CREATIVE_NAME], "properties.creative_name")?,
            };
        }
        Kind::ExperimentViewed => {
            ev.experiment_id = opt_id(&p.s[P_EXPERIMENT_ID], "properties.experiment_id")?;
            ev.variation_id = opt_id(&p.s[P_VARIATION_ID], "properties.variation_id")?;
        }
        _ if kind.carries_money() => {
            let money = Money::resolve(p, ctx)?;
            if kind.is_product_event() {
                let (line, _) = product_line(&p.s[..PRODUCT_KEYS.len()], &Loc::Props, &money)?;
                if let Some(line) = line {
                    ev.products.push(line);
                    return Ok(());
                }
            }
            let lines = product_lines(p, &money, &mut ev.products)?;
            if kind.is_order() {
                ev.order_id = first_id(p, P_ORDER_ID, P_TRANSACTION_ID)?;
                let stated = [P_REVENUE, P_TOTAL, P_VALUE]
                    .into_iter()
                    .find_map(|i| present(&p.s[i]).map(|s| (i, s)));
                ev.revenue = match (stated, lines) {
                    (Some((i, s)), _) => money.amount(s, &Loc::Props, PROP_KEYS[i])?,
                    (None, Some(lines)) => lines.sum.ok_or_else(|| Reject::TotalOverflow {
                        path: format!("properties.{}", lines.list),
                    })?,
                    (None, None) => 0,
                };
            }
        }
        _ => {}
    }
    Ok(())
}

/// What the product list of an event added up to.
struct Lines {
    list: &'static str,
    /// Sum of price × quantity over every line (with or without an id);
    /// `None` when it overflows.
    sum: Option<i64>,
}

/// Lines from `products[]`, else GA4 `items[]`; `None` when neither is there
/// or the list is empty.
fn product_lines(
    p: &PropFields<'_>,
    money: &Money,
    out: &mut Vec<Product>,
) -> Result<Option<Lines>, Reject> {
    let is_absent = |l: &Option<List<'_>>| matches!(l, None | Some(List::Other(Scalar::Null)));
    let (list, items) = match (&p.products, &p.items) {
        (Some(l), _) if !is_absent(&p.products) => ("products", l),
        (_, Some(l)) if !is_absent(&p.items) => ("items", l),
        _ => return Ok(None),
    };
    let items = match items {
        List::Items(items) => items,
        List::Other(s) => {
            return Err(wrong_type(&format!("properties.{list}"), "an array", s));
        }
    };
    if items.is_empty() {
        return Ok(None);
    }
    out.reserve(items.len());
    let mut sum = Some(0i64);
    for (index, item) in items.iter().enumerate() {
        let loc = Loc::Item { list, index };
        match item {
            // Sparse arrays from JavaScript clients: nothing to read.
            Section::Other(Scalar::Null) => {}
            Section::Other(s) => return Err(wrong_type(&loc.path(None), "an object", s)),
            Section::Object(f) => {
                let (line, total) = product_line(&f.s, &loc, money)?;
                sum = match (sum, total) {
                    (Some(a), Some(b)) => a.checked_add(b).filter(|t| *t <= MAX_AMOUNT_MINOR),
                    _ => None,
                };
                out.extend(line);
            }
        }
    }
    Ok(Some(Lines { list, sum }))
}

/// One product line from the product keys (the first `PRODUCT_KEYS.len()`
/// slots of properties, or an element of `products[]`/`items[]`). Returns the
/// product if it has an id, and price × quantity (`None` if it overflows).
fn product_line(
    f: &[Option<Scalar<'_>>],
    loc: &Loc,
    money: &Money,
) -> Result<(Option<Product>, Option<i64>), Reject> {
    let mut id = None;
    for key in [P_PRODUCT_ID, P_SKU, P_ITEM_ID] {
        let value = opt_id(&f[key], || loc.path(Some(PROP_KEYS[key])))?;
        if id.is_none() {
            id = value;
        }
    }
    let text = |a: usize, b: usize| -> Result<Option<Str>, Reject> {
        match opt_text(&f[a], || loc.path(Some(PROP_KEYS[a])))? {
            Some(t) => Ok(Some(t)),
            None => opt_text(&f[b], || loc.path(Some(PROP_KEYS[b]))),
        }
    };
    let category = text(P_CATEGORY, P_ITEM_CATEGORY)?;
    let brand = text(P_BRAND, P_ITEM_BRAND)?;
    let price = match present(&f[P_PRICE]) {
        Some(s) => money.amount(s, loc, "price")?,
        None => 0,
    };
    let quantity = match present(&f[P_QUANTITY]) {
        Some(s) => quantity(s, loc)?,
        None => 1,
    };
    let total = price.checked_mul(quantity);
    let product = id.map(|id| Product {
        id,
        category,
        brand,
        price,
        quantity,
    });
    Ok((product, total))
}

/// Where a product field sits, for error paths; built only on error.
enum Loc {
    Props,
    Item { list: &'static str, index: usize },
}

impl Loc {
    fn path(&self, key: Option<&str>) -> String {
        match (self, key) {
            (Loc::Props, Some(key)) => format!("properties.{key}"),
            (Loc::Props, None) => "properties".to_owned(),
            (Loc::Item { list, index }, Some(key)) => format!("properties.{list}[{index}].{key}"),
            (Loc::Item { list, index }, None) => format!("properties.{list}[{index}]"),
        }
    }
}

/// How amounts of this event become minor units of the reporting currency.
struct Money {
    /// Reporting units per unit of the event's currency.
    rate: f64,
    /// No conversion: round on the decimal text, exactly.
    exact: bool,
    decimals: u32,
}

const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;

/// Largest amount one message may carry, in minor units (10^15: ten trillion
/// dollars). Views sum amounts per user; the cap keeps those sums far from the
/// ends of `i64` (and the views wrap rather than panic if a user still gets there).
pub const MAX_AMOUNT_MINOR: i64 = 1_000_000_000_000_000;
/// Largest quantity of one product line.
pub const MAX_QUANTITY: i64 = 1_000_000;

impl Money {
    fn resolve(p: &PropFields<'_>, ctx: &ParseContext) -> Result<Money, Reject> {
        let decimals = minor_unit_decimals(&ctx.reporting_currency);
        let same = Money {
            rate: 1.0,
            exact: true,
            decimals,
        };
        let mut code = match present(&p.s[P_CURRENCY]) {
            None => return Ok(same),
            Some(Scalar::Str(c)) if c.is_empty() => return Ok(same),
            Some(Scalar::Str(c)) => Str::new(c),
            Some(s) => {
                return Err(wrong_type(
                    "properties.currency",
                    "an ISO 4217 currency code string",
                    s,
                ));
            }
        };
        code.make_ascii_uppercase();
        if code == ctx.reporting_currency {
            return Ok(same);
        }
        match ctx.currency_rates.get(code.as_str()) {
            Some(&rate) => Ok(Money {
                rate,
                exact: rate == 1.0,
                decimals,
            }),
            None => Err(Reject::UnknownCurrency {
                currency: truncated(&code, 32).into_owned(),
                reporting: ctx.reporting_currency.to_string(),
            }),
        }
    }

    /// A non-negative amount in major units of the event's currency, as
    /// minor units of the reporting currency.
    fn amount(&self, s: &Scalar<'_>, loc: &Loc, key: &str) -> Result<i64, Reject> {
        const EXPECTED: &str = "a non-negative number";
        const TOO_BIG: &str = "an amount of at most 10^15 minor units";
        let bad = |expected| Reject::BadNumber {
            path: loc.path(Some(key)),
            expected,
            got: describe(s),
        };
        let scale = 10i64.pow(self.decimals);
        let major = match *s {
            Scalar::U64(v) if self.exact => {
                return i64::try_from(v)
                    .ok()
                    .and_then(|v| v.checked_mul(scale))
                    .filter(|v| *v <= MAX_AMOUNT_MINOR)
                    .ok_or_else(|| bad(TOO_BIG));
            }
            Scalar::U64(v) => v as f64,
            Scalar::I64(v) if v >= 0 => v as f64,
            Scalar::F64(v) if v >= 0.0 => v,
            _ => return Err(bad(EXPECTED)),
        };
        let minor = major * self.rate * scale as f64;
        if !(minor.is_finite() && minor.round() <= MAX_AMOUNT_MINOR as f64) {
            return Err(bad(TOO_BIG));
        }
        if self.exact && ((minor - minor.floor()) - 0.5).abs() < 1e-6 {
            // Near a tie: the binary value may sit just below or above what
            // was written, so round the shortest decimal form instead.
            if let Some(v) = round_decimal_text(major, self.decimals) {
                return Ok(v);
            }
        }
        // f64::round rounds half away from zero; minor < 2^63 so this fits.
        Ok(minor.round() as i64)
    }
}

/// Round a non-negative `x` to `decimals` places, half away from zero, on its
/// shortest round-trip decimal form (what the sender most likely wrote), and
/// return it scaled to an integer. `None` if that does not work out.
fn round_decimal_text(x: f64, decimals: u32) -> Option<i64> {
    use std::fmt::Write as _;
    let mut buf = StackText::<64>::new();
    write!(buf, "{x}").ok()?;
    let text = buf.as_str();
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    let digit = |b: u8| b.is_ascii_digit().then(|| i64::from(b - b'0'));
    let mut v: i64 = 0;
    for b in int.bytes() {
        v = v.checked_mul(10)?.checked_add(digit(b)?)?;
    }
    let frac = frac.as_bytes();
    for i in 0..decimals as usize {
        let d = match frac.get(i) {
            Some(&b) => digit(b)?,
            None => 0,
        };
        v = v.checked_mul(10)?.checked_add(d)?;
    }
    match frac.get(decimals as usize) {
        Some(&b) if b >= b'5' => v.checked_add(1),
        _ => Some(v),
    }
}

/// A fixed buffer for formatting without a heap allocation.
struct StackText<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> StackText<N> {
    fn new() -> Self {
        StackText {
            buf: [0; N],
            len: 0,
        }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl<const N: usize> fmt::Write for StackText<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len.checked_add(s.len()).ok_or(fmt::Error)?;
        self.buf
            .get_mut(self.len..end)
            .ok_or(fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

fn quantity(s: &Scalar<'_>, loc: &Loc) -> Result<i64, Reject> {
    let bad = |expected| Reject::BadNumber {
        path: loc.path(Some("quantity")),
        expected,
        got: describe(s),
    };
    const EXPECTED: &str = "a non-negative integer";
    const TOO_BIG: &str = "a non-negative integer of at most 1000000";
    match *s {
        Scalar::U64(v) => i64::try_from(v)
            .ok()
            .filter(|v| *v <= MAX_QUANTITY)
            .ok_or_else(|| bad(TOO_BIG)),
        Scalar::F64(v) if v >= 0.0 && v.fract() == 0.0 => {
            if v <= MAX_QUANTITY as f64 {
                Ok(v as i64)
            } else {
                Err(bad(TOO_BIG))
            }
        }
        _ => Err(bad(EXPECTED)),
    }
}

/// `timestamp`: RFC 3339 text, or epoch milliseconds as a number or as a
/// string of digits; absent means `now_ms`.
fn timestamp(s: Option<&Scalar<'_>>, now_ms: i64) -> Result<i64, Reject> {
    let bad = |s: &Scalar<'_>| Reject::BadTimestamp {
        got: match s {
            Scalar::Str(t) => quoted(t),
            other => describe(other),
        },
    };
    let Some(s) = s else { return Ok(now_ms) };
    match s {
        Scalar::Str(t) => {
            let digits = t.strip_prefix('-').unwrap_or(t);
            if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                return t.parse::<i64>().map_err(|_| bad(s));
            }
            let at = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                .map_err(|_| bad(s))?;
            i64::try_from(at.unix_timestamp_nanos().div_euclid(1_000_000)).map_err(|_| bad(s))
        }
        Scalar::U64(v) => i64::try_from(*v).map_err(|_| bad(s)),
        Scalar::I64(v) => Ok(*v),
        Scalar::F64(v) if v.is_finite() && v.abs() < TWO_POW_63 => Ok(v.floor() as i64),
        Scalar::F64(_) => Err(bad(s)),
        Scalar::Bool(_) | Scalar::Null | Scalar::Array | Scalar::Object => Err(wrong_type(
            "timestamp",
            "an RFC 3339 string or epoch milliseconds",
            s,
        )),
    }
}

/// Identify traits as (key, compact JSON), sorted by key; the last of
/// duplicated keys wins, as in a JSON object read into a map.
fn traits(t: Option<Traits<'_>>) -> Result<Vec<(Str, String)>, Reject> {
    let mut pairs = match t {
        None | Some(Traits::Other(Scalar::Null)) => return Ok(Vec::new()),
        Some(Traits::Other(s)) => return Err(wrong_type("traits", "an object", &s)),
        Some(Traits::Object(pairs)) => pairs,
    };
    pairs.sort_by(|a, b| a.0.cmp(&b.0)); // stable: duplicates keep input order
    let mut out: Vec<(Str, String)> = Vec::with_capacity(pairs.len());
    for (key, value) in pairs {
        let text = value.to_string();
        match out.last_mut() {
            Some(last) if last.0 == key => last.1 = text,
            _ => out.push((key, text)),
        }
    }
    Ok(out)
}

/// The first present of two id properties.
fn first_id(p: &PropFields<'_>, a: usize, b: usize) -> Result<Option<Str>, Reject> {
    let path = |i: usize| move || format!("properties.{}", PROP_KEYS[i]);
    match opt_id(&p.s[a], path(a))? {
        Some(id) => Ok(Some(id)),
        None => opt_id(&p.s[b], path(b)),
    }
}

/// Something that names a field path, built only when there is an error.
trait PathName {
    fn name(self) -> String;
}

impl PathName for &str {
    fn name(self) -> String {
        self.to_owned()
    }
}

impl<F: FnOnce() -> String> PathName for F {
    fn name(self) -> String {
        self()
    }
}

/// An id: a string or a number (stringified); empty or null is absent.
fn opt_id(slot: &Option<Scalar<'_>>, path: impl PathName) -> Result<Option<Str>, Reject> {
    match present(slot) {
        None => Ok(None),
        Some(Scalar::Str(t)) if t.is_empty() => Ok(None),
        Some(Scalar::Str(t)) => Ok(Some(Str::new(t))),
        Some(s) => match number_text(s) {
            Some(t) => Ok(Some(t)),
            None => Err(wrong_type(&path.name(), "a string or number", s)),
        },
    }
}

/// A string property; empty or null is absent.
fn opt_text(slot: &Option<Scalar<'_>>, path: impl PathName) -> Result<Option<Str>, Reject> {
    match present(slot) {
        None => Ok(None),
        Some(Scalar::Str(t)) if t.is_empty() => Ok(None),
        Some(Scalar::Str(t)) => Ok(Some(Str::new(t))),
        Some(s) => Err(wrong_type(&path.name(), "a string", s)),
    }
}

/// A number as id text, like JavaScript's `String(n)` for everyday values.
fn number_text(s: &Scalar<'_>) -> Option<Str> {
    match *s {
        Scalar::U64(v) => Some(v.to_compact_string()),
        Scalar::I64(v) => Some(v.to_compact_string()),
        Scalar::F64(v) => Some(v.to_compact_string()),
        _ => None,
    }
}

fn wrong_type(path: &str, expected: &'static str, got: &Scalar<'_>) -> Reject {
    Reject::WrongType {
        path: path.to_owned(),
        expected,
        got: describe(got),
    }
}

/// `null` counts as absent.
fn present<'a, 'de>(slot: &'a Option<Scalar<'de>>) -> Option<&'a Scalar<'de>> {
    match slot {
        None | Some(Scalar::Null) => None,
        Some(s) => Some(s),
    }
}

/// A value for an error message: its JSON type and, for scalars, the value.
fn describe(s: &Scalar<'_>) -> String {
    match s {
        Scalar::Str(t) => format!("string {}", quoted(t)),
        Scalar::U64(v) => format!("number {v}"),
        Scalar::I64(v) => format!("number {v}"),
        Scalar::F64(v) => format!("number {v:?}"),
        Scalar::Bool(v) => format!("boolean {v}"),
        Scalar::Null => "null".to_owned(),
        Scalar::Array => "array".to_owned(),
        Scalar::Object => "object".to_owned(),
    }
}

/// Quoted and escaped, cut at 64 bytes so errors stay short.
fn quoted(t: &str) -> String {
    format!("{:?}", truncated(t, 64))
}

fn truncated(t: &str, max: usize) -> Cow<'_, str> {
    if t.len() <= max {
        return Cow::Borrowed(t);
    }
    let mut cut = max;
    while !t.is_char_boundary(cut) {
        cut -= 1;
    }
    Cow::Owned(format!("{}…", &t[..cut]))
}

// ---------------------------------------------------------------------------
// One pass over the JSON. The shapes below keep the fields we read as
// borrowed scalars, remember the JSON type of anything unexpected (for the
// error message), and skip the rest without building it.

/// A JSON value reduced to what validation needs: scalars with their value,
/// arrays and objects only as their type.
#[derive(Debug)]
enum Scalar<'de> {
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
    fn kind(&self) -> &'static str {
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
trait Shape<'de>: Sized {
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
struct Shaped<T>(T);

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
trait Fields<'de>: Default {
    const KEYS: &'static [&'static str];
    fn set<A: MapAccess<'de>>(&mut self, key: usize, map: &mut A) -> Result<(), A::Error>;
}

/// An object of known fields, or whatever else was found there.
enum Section<'de, T> {
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

const T_TYPE: usize = 0;
const T_EVENT: usize = 1;
const T_USER_ID: usize = 2;
const T_ANONYMOUS_ID: usize = 3;
const T_MESSAGE_ID: usize = 4;
const T_TIMESTAMP: usize = 5;
const T_PROPERTIES: usize = 6;
const T_TRAITS: usize = 7;
const TOP_KEYS: [&str; 8] = [
    "type",
    "event",
    "userId",
    "anonymousId",
    "messageId",
    "timestamp",
    "properties",
    "traits",
];

/// The top-level fields of a message.
#[derive(Default)]
struct TopFields<'de> {
    s: [Option<Scalar<'de>>; T_PROPERTIES],
    properties: Option<Section<'de, PropFields<'de>>>,
    traits: Option<Traits<'de>>,
}

impl<'de> Fields<'de> for TopFields<'de> {
    const KEYS: &'static [&'static str] = &TOP_KEYS;

    fn set<A: MapAccess<'de>>(&mut self, key: usize, map: &mut A) -> Result<(), A::Error> {
        match key {
            T_PROPERTIES => self.properties = Some(map.next_value::<Shaped<_>>()?.0),
            T_TRAITS => self.traits = Some(map.next_value::<Shaped<_>>()?.0),
            _ => set_slot(&mut self.s, key, map)?,
        }
        Ok(())
    }
}

// Product keys come first in `PROP_KEYS`, in the same order as `PRODUCT_KEYS`,
// so one function reads a product from properties or from a list element.
const P_PRODUCT_ID: usize = 0;
const P_SKU: usize = 1;
const P_ITEM_ID: usize = 2;
const P_CATEGORY: usize = 3;
const P_ITEM_CATEGORY: usize = 4;
const P_BRAND: usize = 5;
const P_ITEM_BRAND: usize = 6;
const P_PRICE: usize = 7;
const P_QUANTITY: usize = 8;
const P_ORDER_ID: usize = 9;
const P_TRANSACTION_ID: usize = 10;
const P_REVENUE: usize = 11;
const P_TOTAL: usize = 12;
const P_VALUE: usize = 13;
const P_CURRENCY: usize = 14;
const P_PROMOTION_ID: usize = 15;
const P_CREATIVE: usize = 16;
const P_CREATIVE_NAME: usize = 17;
const P_EXPERIMENT_ID: usize = 18;
const P_VARIATION_ID: usize = 19;
const P_QUERY: usize = 20;
const P_SEARCH_TERM: usize = 21;
const P_PRODUCTS: usize = 22;
const P_ITEMS: usize = 23;
const PROP_KEYS: [&str; 24] = [
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
const PRODUCT_KEYS: [&str; 9] = [
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
struct PropFields<'de> {
    s: [Option<Scalar<'de>>; P_PRODUCTS],
    products: Option<List<'de>>,
    items: Option<List<'de>>,
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
struct ItemFields<'de> {
    s: [Option<Scalar<'de>>; PRODUCT_KEYS.len()],
}

impl<'de> Fields<'de> for ItemFields<'de> {
    const KEYS: &'static [&'static str] = &PRODUCT_KEYS;

    fn set<A: MapAccess<'de>>(&mut self, key: usize, map: &mut A) -> Result<(), A::Error> {
        set_slot(&mut self.s, key, map)
    }
}

/// `products[]` or `items[]`.
enum List<'de> {
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
enum Traits<'de> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: i64 = 1_700_000_000_000;

    fn ctx() -> ParseContext {
        let mut ctx = ParseContext::new("USD");
        ctx.now_ms = NOW;
        ctx.currency_rates.insert(Str::new("EUR"), 1.1);
        ctx.currency_rates.insert(Str::new("JPY"), 0.0067);
        ctx
    }

    fn parse(json: &str) -> Result<Event, Reject> {
        parse_message(json.as_bytes(), &ctx(), None)
    }

    fn ok(json: &str) -> Event {
        match parse(json) {
            Ok(ev) => ev,
            Err(e) => panic!("rejected {json}: {e}"),
        }
    }

    /// Asserts the reason text and code of a rejection.
    fn rejects(json: &str, code: &str, reason: &str) {
        rejects_bytes(json.as_bytes(), &ctx(), code, reason);
    }

    fn rejects_bytes(bytes: &[u8], ctx: &ParseContext, code: &str, reason: &str) {
        match parse_message(bytes, ctx, None) {
            Ok(ev) => panic!("accepted {:?}: {ev:?}", String::from_utf8_lossy(bytes)),
            Err(e) => {
                assert_eq!(e.to_string(), reason);
                assert_eq!(e.code(), code);
                assert!(Reject::CODES.contains(&e.code()));
            }
        }
    }

    fn track(event: &str, props: &str) -> String {
        format!(r#"{{"type":"track","userId":"u1","event":"{event}","properties":{props}}}"#)
    }

    fn product(id: &str, price: i64, quantity: i64) -> Product {
        Product {
            id: Str::new(id),
            category: None,
            brand: None,
            price,
            quantity,
        }
    }

    // --- rejections, one per class -----------------------------------------

    #[test]
    fn rejects_long_line() {
        let line = format!(r#"{{"pad":"{}"}}"#, "x".repeat(40_000));
        let reason = format!("line is {} bytes, over the 32768-byte limit", line.len());
        rejects(&line, "line_too_long", &reason);
        let mut small = ctx();
        small.max_line_bytes = 10;
        rejects_bytes(
            b"{\"type\":1}",
            &small,
            "bad_type",
            "type: expected \"track\" or \"identify\", got number 1",
        );
        rejects_bytes(
            b"{\"type\": 1}",
            &small,
            "line_too_long",
            "line is 11 bytes, over the 10-byte limit",
        );
    }

    #[test]
    fn rejects_invalid_utf8_with_offset() {
        let mut bytes = br#"{"userId":"ab"#.to_vec();
        bytes.extend_from_slice(&[0xff, 0xfe]);
        bytes.extend_from_slice(br#""}"#);
        rejects_bytes(&bytes, &ctx(), "invalid_utf8", "not valid UTF-8 at byte 13");
    }

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
    fn rejects_missing_user() {
        let reason = "missing userId or anonymousId";
        rejects(r#"{"type":"track","event":"x"}"#, "missing_user", reason);
        rejects(
            r#"{"type":"track","event":"x","userId":"","anonymousId":null}"#,
            "missing_user",
            reason,
        );
    }

    #[test]
    fn rejects_user_of_wrong_type() {
        rejects(
            r#"{"type":"track","event":"x","userId":true,"anonymousId":"a"}"#,
            "wrong_type",
            "userId: expected a string or number, got boolean true",
        );
        rejects(
            r#"{"type":"track","event":"x","anonymousId":{"id":1}}"#,
            "wrong_type",
            "anonymousId: expected a string or number, got object",
        );
    }

    #[test]
    fn rejects_bad_timestamp() {
        rejects(
            r#"{"type":"track","event":"x","userId":"u","timestamp":"yesterday"}"#,
            "bad_timestamp",
            r#"timestamp: cannot parse "yesterday" as RFC 3339 or epoch milliseconds"#,
        );
        rejects(
            r#"{"type":"track","event":"x","userId":"u","timestamp":18446744073709551615}"#,
            "bad_timestamp",
            "timestamp: cannot parse number 18446744073709551615 as RFC 3339 or epoch milliseconds",
        );
        rejects(
            r#"{"type":"track","event":"x","userId":"u","timestamp":[1]}"#,
            "wrong_type",
            "timestamp: expected an RFC 3339 string or epoch milliseconds, got array",
        );
    }

    #[test]
    fn rejects_bad_type() {
        rejects(
            r#"{"type":"page","userId":"u"}"#,
            "bad_type",
            r#"type: expected "track" or "identify", got "page""#,
        );
        rejects(
            r#"{"type":"Track","userId":"u","event":"x"}"#,
            "bad_type",
            r#"type: expected "track" or "identify", got "Track""#,
        );
        rejects(
            r#"{"type":["track"],"userId":"u"}"#,
            "bad_type",
            r#"type: expected "track" or "identify", got array"#,
        );
    }

    #[test]
    fn missing_type_uses_the_endpoint_default() {
        rejects(
            r#"{"userId":"u","event":"x"}"#,
            "missing_type",
            r#"type: required ("track" or "identify")"#,
        );
        let c = ctx();
        let ev = parse_message(
            br#"{"userId":"u","event":"x"}"#,
            &c,
            Some(MessageType::Track),
        )
        .unwrap();
        assert_eq!(ev.kind, Kind::Custom);
        let ev = parse_message(br#"{"userId":"u"}"#, &c, Some(MessageType::Identify)).unwrap();
        assert_eq!(ev.kind, Kind::Identify);
        // An explicit type wins over the endpoint's.
        let ev = parse_message(
            br#"{"type":"identify","userId":"u"}"#,
            &c,
            Some(MessageType::Track),
        )
        .unwrap();
        assert_eq!(ev.kind, Kind::Identify);
    }

    #[test]
    fn rejects_missing_event() {
        let reason = "event: required for track";
        rejects(r#"{"type":"track","userId":"u"}"#, "missing_event", reason);
        rejects(
            r#"{"type":"track","userId":"u","event":""}"#,
            "missing_event",
            reason,
        );
        rejects(
            r#"{"type":"track","userId":"u","event":null}"#,
            "missing_event",
            reason,
        );
        rejects(
            r#"{"type":"track","userId":"u","event":7}"#,
            "wrong_type",
            "event: expected a non-empty string, got number 7",
        );
    }

    #[test]
    fn rejects_properties_and_lists_of_wrong_type() {
        rejects(
            &track("Product Viewed", "[]"),
            "wrong_type",
            "properties: expected an object, got array",
        );
        rejects(
            &track("Order Completed", r#"{"products":{"product_id":"a"}}"#),
            "wrong_type",
            "properties.products: expected an array, got object",
        );
        rejects(
            &track("purchase", r#"{"items":[{"item_id":"a"},"b"]}"#),
            "wrong_type",
            r#"properties.items[1]: expected an object, got string "b""#,
        );
        rejects(
            &track("Product Viewed", r#"{"product_id":"p","category":5}"#),
            "wrong_type",
            "properties.category: expected a string, got number 5",
        );
        rejects(
            &track("Product Added", r#"{"product_id":false}"#),
            "wrong_type",
            "properties.product_id: expected a string or number, got boolean false",
        );
        rejects(
            &track("Order Completed", r#"{"currency":1}"#),
            "wrong_type",
            "properties.currency: expected an ISO 4217 currency code string, got number 1",
        );
        rejects(
            r#"{"type":"identify","userId":"u","traits":"vip"}"#,
            "wrong_type",
            r#"traits: expected an object, got string "vip""#,
        );
    }

    #[test]
    fn rejects_bad_numbers_naming_the_path() {
        rejects(
            &track("Product Viewed", r#"{"product_id":"p","price":"12.5"}"#),
            "bad_number",
            r#"properties.price: expected a non-negative number, got string "12.5""#,
        );
        rejects(
            &track(
                "Order Completed",
                r#"{"products":[{},{},{"product_id":"c","price":-1}]}"#,
            ),
            "bad_number",
            "properties.products[2].price: expected a non-negative number, got number -1",
        );
        rejects(
            &track("Product Added", r#"{"product_id":"p","quantity":1.5}"#),
            "bad_number",
            "properties.quantity: expected a non-negative integer, got number 1.5",
        );
        rejects(
            &track(
                "add_to_cart",
                r#"{"items":[{"item_id":"p","quantity":-2}]}"#,
            ),
            "bad_number",
            "properties.items[0].quantity: expected a non-negative integer, got number -2",
        );
        rejects(
            &track("Order Completed", r#"{"revenue":-0.5}"#),
            "bad_number",
            "properties.revenue: expected a non-negative number, got number -0.5",
        );
        rejects(
            &track("purchase", r#"{"value":"10"}"#),
            "bad_number",
            r#"properties.value: expected a non-negative number, got string "10""#,
        );
    }

    #[test]
    fn rejects_numbers_too_large_for_minor_units() {
        rejects(
            &track("Product Viewed", r#"{"product_id":"p","price":1e300}"#),
            "bad_number",
            "properties.price: expected an amount of at most 10^15 minor units, got number 1e300",
        );
        rejects(
            &track("Order Completed", r#"{"total":92233720368547759}"#),
            "bad_number",
            "properties.total: expected an amount of at most 10^15 minor units, got number 92233720368547759",
        );
        rejects(
            &track("Product Viewed", r#"{"product_id":"p","quantity":18446744073709551615}"#),
            "bad_number",
            "properties.quantity: expected a non-negative integer of at most 1000000, got number 18446744073709551615",
        );
        rejects(
            &track(
                "Order Completed",
                r#"{"products":[{"product_id":"a","price":9000000000000,"quantity":1000},{"product_id":"b","price":9000000000000}]}"#,
            ),
            "bad_number",
            "properties.products: the order total (sum of price × quantity) is over 10^15 minor units",
        );
        // The same lines are fine when the order states its revenue.
        let ev = ok(&track(
            "Order Completed",
            r#"{"revenue":1,"products":[{"product_id":"a","price":9000000000000,"quantity":1000},{"product_id":"b","price":9000000000000}]}"#,
        ));
        assert_eq!(ev.revenue, 100);
    }

    #[test]
    fn rejects_unknown_currency() {
        rejects(
            &track("Order Completed", r#"{"revenue":10,"currency":"GBP"}"#),
            "unknown_currency",
            "currency GBP has no rate to the reporting currency USD",
        );
        // Codes are case-insensitive.
        assert_eq!(
            ok(&track(
                "Order Completed",
                r#"{"revenue":1,"currency":"usd"}"#
            ))
            .revenue,
            100
        );
        assert_eq!(
            ok(&track(
                "Order Completed",
                r#"{"revenue":1,"currency":"eur"}"#
            ))
            .revenue,
            110
        );
    }

    #[test]
    fn rejection_codes_are_distinct_per_reason() {
        let mut codes = Reject::CODES.to_vec();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), Reject::CODES.len());
    }

    // --- names ------------------------------------------------------------

    #[test]
    fn ga4_aliases_map_to_segment_names() {
        let pairs = [
            ("view_item", Kind::ProductViewed, "Product Viewed"),
            ("add_to_cart", Kind::ProductAdded, "Product Added"),
            ("remove_from_cart", Kind::ProductRemoved, "Product Removed"),
            (
                "add_to_wishlist",
                Kind::ProductAddedToWishlist,
                "Product Added to Wishlist",
            ),
            ("begin_checkout", Kind::CheckoutStarted, "Checkout Started"),
            ("purchase", Kind::OrderCompleted, "Order Completed"),
            ("refund", Kind::OrderRefunded, "Order Refunded"),
            ("view_promotion", Kind::PromotionViewed, "Promotion Viewed"),
            (
                "select_promotion",
                Kind::PromotionClicked,
                "Promotion Clicked",
            ),
            ("search", Kind::ProductsSearched, "Products Searched"),
            (
                "view_item_list",
                Kind::ProductListViewed,
                "Product List Viewed",
            ),
            ("select_item", Kind::ProductClicked, "Product Clicked"),
            ("view_cart", Kind::CartViewed, "Cart Viewed"),
        ];
        for (alias, kind, name) in pairs {
            let ev = ok(&track(alias, "{}"));
            assert_eq!((ev.kind, ev.name.as_str()), (kind, name), "{alias}");
            let ev = ok(&track(name, "{}"));
            assert_eq!((ev.kind, ev.name.as_str()), (kind, name), "{name}");
        }
        for kind in Kind::ALL {
            if !matches!(kind, Kind::Identify | Kind::Custom) {
                assert_eq!(Kind::from_event_name(kind.name()), kind);
            }
        }
    }

    #[test]
    fn other_names_are_custom_events_with_their_raw_name() {
        let ev = ok(&track(
            "Newsletter Signed Up",
            r#"{"price":"free","currency":"XXX"}"#,
        ));
        assert_eq!(ev.kind, Kind::Custom);
        assert_eq!(ev.name, "Newsletter Signed Up");
        assert!(ev.products.is_empty());
        // Case matters, as in the Segment Spec.
        assert_eq!(ok(&track("order completed", "{}")).kind, Kind::Custom);
        // Escaped names are unescaped.
        assert_eq!(ok(&track(r"Caf\u00e9 Visited", "{}")).name, "Café Visited");
    }

    // --- products ----------------------------------------------------------

    #[test]
    fn single_product_events_read_the_properties() {
        let ev = ok(&track(
            "Product Added",
            r#"{"product_id":"p-1","sku":"S1","category":"Shoes","brand":"Acme","price":19.99,"quantity":2,"name":"x"}"#,
        ));
        assert_eq!(
            ev.products,
            vec![Product {
                id: Str::new("p-1"),
                category: Some(Str::new("Shoes")),
                brand: Some(Str::new("Acme")),
                price: 1999,
                quantity: 2,
            }]
        );
        assert_eq!(ev.revenue, 0);
        // sku when there is no product_id; quantity defaults to 1, price to 0.
        assert_eq!(
            ok(&track("Product Viewed", r#"{"sku":"S1"}"#)).products,
            vec![product("S1", 0, 1)]
        );
    }

    #[test]
    fn product_event_without_id_has_no_lines() {
        let ev = ok(&track("Product Viewed", r#"{"price":3,"product_id":""}"#));
        assert_eq!(ev.kind, Kind::ProductViewed);
        assert!(ev.products.is_empty());
        assert!(ok(&track("Product Clicked", "{}")).products.is_empty());
        assert!(ok(r#"{"type":"track","userId":"u","event":"view_item"}"#)
            .products
            .is_empty());
    }

    #[test]
    fn ga4_items_with_item_fields() {
        let ev = ok(&track(
            "view_item",
            r#"{"currency":"USD","value":5,"items":[{"item_id":"SKU_1","item_category":"Apparel","item_brand":"Google","price":5,"quantity":1}]}"#,
        ));
        assert_eq!(ev.kind, Kind::ProductViewed);
        assert_eq!(
            ev.products,
            vec![Product {
                id: Str::new("SKU_1"),
                category: Some(Str::new("Apparel")),
                brand: Some(Str::new("Google")),
                price: 500,
                quantity: 1,
            }]
        );
    }

    #[test]
    fn orders_from_segment_products() {
        let ev = ok(&track(
            "Order Completed",
            r#"{"order_id":"o-9","total":27.5,"revenue":25,"currency":"USD","coupon":"X",
                "products":[{"product_id":"a","price":10,"quantity":2},{"sku":"b","price":5.5},{"name":"no id","price":1},null]}"#,
        ));
        assert_eq!(ev.order_id.as_deref(), Some("o-9"));
        assert_eq!(ev.revenue, 2500, "revenue wins over total");
        assert_eq!(
            ev.products,
            vec![product("a", 1000, 2), product("b", 550, 1)]
        );
    }

    #[test]
    fn orders_from_ga4_items() {
        let ev = ok(&track(
            "purchase",
            r#"{"transaction_id":"T_1","value":30.03,"items":[{"item_id":"x","price":10.01,"quantity":3}]}"#,
        ));
        assert_eq!(ev.kind, Kind::OrderCompleted);
        assert_eq!(ev.order_id.as_deref(), Some("T_1"));
        assert_eq!(ev.revenue, 3003);
        assert_eq!(ev.products, vec![product("x", 1001, 3)]);
        // products[] is preferred over items[] when both are present.
        let ev = ok(&track(
            "purchase",
            r#"{"items":[{"item_id":"i"}],"products":[{"product_id":"p"}]}"#,
        ));
        assert_eq!(ev.products, vec![product("p", 0, 1)]);
    }

    #[test]
    fn order_revenue_falls_back_to_total_value_then_lines() {
        assert_eq!(
            ok(&track("Order Completed", r#"{"total":12}"#)).revenue,
            1200
        );
        assert_eq!(
            ok(&track("Order Completed", r#"{"value":12}"#)).revenue,
            1200
        );
        let lines = r#"{"products":[{"product_id":"a","price":0.1},{"price":0.2,"quantity":2}]}"#;
        assert_eq!(ok(&track("Order Completed", lines)).revenue, 50);
        let refund = ok(&track("Order Refunded", r#"{"order_id":"o-1"}"#));
        assert_eq!((refund.kind, refund.revenue), (Kind::OrderRefunded, 0));
        assert_eq!(refund.order_id.as_deref(), Some("o-1"));
        assert_eq!(
            ok(&track("Order Cancelled", r#"{"order_id":7,"revenue":3}"#)).revenue,
            300
        );
        // Non-order events carry no revenue even when they state one.
        assert_eq!(
            ok(&track("Checkout Started", r#"{"revenue":3}"#)).revenue,
            0
        );
    }

    #[test]
    fn list_cart_and_checkout_read_their_lines() {
        for name in ["Product List Viewed", "Cart Viewed", "Checkout Started"] {
            let ev = ok(&track(
                name,
                r#"{"products":[{"product_id":"a","price":1}]}"#,
            ));
            assert_eq!(ev.products, vec![product("a", 100, 1)], "{name}");
        }
    }

    // --- money -------------------------------------------------------------

    fn price_in(reporting: &str, rates: &[(&str, f64)], props: &str) -> Result<i64, Reject> {
        let mut c = ParseContext::new(reporting);
        for (code, rate) in rates {
            c.currency_rates.insert(Str::new(code), *rate);
        }
        let json = track("Order Completed", props);
        parse_message(json.as_bytes(), &c, None).map(|ev| ev.revenue)
    }

    #[test]
    fn minor_units_round_on_the_written_decimal() {
        let usd =
            |amount: &str| price_in("USD", &[], &format!(r#"{{"revenue":{amount}}}"#)).unwrap();
        assert_eq!(usd("19.99"), 1999);
        assert_eq!(usd("0.3"), 30);
        assert_eq!(usd("0.30000000000000004"), 30); // 0.1 + 0.2 in f64
        assert_eq!(usd("1.005"), 101); // 100.49999999999999 in f64
        assert_eq!(usd("2.675"), 268);
        assert_eq!(usd("0.125"), 13);
        assert_eq!(usd("0.124"), 12);
        assert_eq!(usd("1e2"), 10_000);
        assert_eq!(usd("0"), 0);
        assert_eq!(usd("-0.0"), 0);
        assert_eq!(usd("10000000000000"), MAX_AMOUNT_MINOR);
        assert!(price_in("USD", &[], r#"{"revenue":10000000000000.01}"#).is_err());
    }

    #[test]
    fn minor_units_follow_the_reporting_currency() {
        assert_eq!(price_in("JPY", &[], r#"{"revenue":1234.5}"#).unwrap(), 1235);
        assert_eq!(price_in("jpy", &[], r#"{"revenue":1234.4}"#).unwrap(), 1234);
        assert_eq!(price_in("KWD", &[], r#"{"revenue":1.2345}"#).unwrap(), 1235);
        assert_eq!(price_in("EUR", &[], r#"{"revenue":1.2345}"#).unwrap(), 123);
        assert_eq!(minor_unit_decimals("krw"), 0);
        assert_eq!(minor_unit_decimals("BHD"), 3);
        assert_eq!(minor_unit_decimals("GBP"), 2);
        assert_eq!(minor_unit_decimals(""), 2);
    }

    #[test]
    fn amounts_convert_by_the_rate() {
        // 10 EUR at 1.1 USD/EUR is 11.00 USD.
        assert_eq!(
            price_in("USD", &[("EUR", 1.1)], r#"{"revenue":10,"currency":"EUR"}"#).unwrap(),
            1100
        );
        // 1000 JPY at 0.0067 USD/JPY is 6.70 USD.
        assert_eq!(
            price_in(
                "USD",
                &[("JPY", 0.0067)],
                r#"{"revenue":1000,"currency":"JPY"}"#
            )
            .unwrap(),
            670
        );
        // 19.99 USD at 150.123 JPY/USD is 3000.96 JPY, 3001 in yen.
        assert_eq!(
            price_in(
                "JPY",
                &[("USD", 150.123)],
                r#"{"revenue":19.99,"currency":"USD"}"#
            )
            .unwrap(),
            3001
        );
        // Product prices convert too.
        let ev = ok(&track(
            "Product Viewed",
            r#"{"product_id":"p","price":2,"currency":"EUR"}"#,
        ));
        assert_eq!(ev.products[0].price, 220);
    }

    // --- identify, ids, timestamps -------------------------------------------

    #[test]
    fn identify_traits_sorted_compact_json() {
        let ev = ok(
            r#"{"type":"identify","userId":"u9","traits":{"plan":"pro","age":42, "address":{ "city" : "Paris" },"tags":["a", "b"],"vip":true,"gone":null,"age":43},
                "properties":"ignored","event":"ignored","context":{"traits":{"x":1}}}"#,
        );
        assert_eq!((ev.kind, ev.name.as_str()), (Kind::Identify, "identify"));
        let traits: Vec<(&str, &str)> = ev
            .traits
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            traits,
            vec![
                ("address", r#"{"city":"Paris"}"#),
                ("age", "43"),
                ("gone", "null"),
                ("plan", r#""pro""#),
                ("tags", r#"["a","b"]"#),
                ("vip", "true"),
            ]
        );
        assert!(ok(r#"{"type":"identify","anonymousId":"a"}"#)
            .traits
            .is_empty());
    }

    #[test]
    fn track_ignores_traits() {
        let ev = ok(
            r#"{"type":"track","userId":"u","event":"x","traits":"not an object","context":{"traits":{"a":1}}}"#,
        );
        assert!(ev.traits.is_empty());
    }

    #[test]
    fn user_prefers_user_id_over_anonymous_id() {
        let ev = ok(r#"{"type":"track","event":"x","userId":"u","anonymousId":"a"}"#);
        assert_eq!((ev.user.as_str(), ev.anonymous), ("u", false));
        let ev = ok(r#"{"type":"track","event":"x","userId":"","anonymousId":"a"}"#);
        assert_eq!((ev.user.as_str(), ev.anonymous), ("a", true));
        let ev = ok(r#"{"type":"track","event":"x","userId":null,"anonymousId":"a"}"#);
        assert_eq!((ev.user.as_str(), ev.anonymous), ("a", true));
    }

    #[test]
    fn numbers_as_ids_are_stringified() {
        let ev = ok(
            r#"{"type":"track","event":"Order Completed","userId":42,"messageId":5,
                "properties":{"order_id":1001,"products":[{"product_id":7},{"sku":-3},{"item_id":2.5}]}}"#,
        );
        assert_eq!(ev.user, "42");
        assert_eq!(ev.message_id, Some(message_id_hash("5")));
        assert_eq!(ev.order_id.as_deref(), Some("1001"));
        let ids: Vec<&str> = ev.products.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["7", "-3", "2.5"]);
        let ev = ok(&track(
            "Experiment Viewed",
            r#"{"experiment_id":12,"variation_id":"B"}"#,
        ));
        assert_eq!(
            (ev.experiment_id.as_deref(), ev.variation_id.as_deref()),
            (Some("12"), Some("B"))
        );
        let ev = ok(r#"{"type":"track","event":"x","anonymousId":1.5}"#);
        assert_eq!((ev.user.as_str(), ev.anonymous), ("1.5", true));
    }

    #[test]
    fn promotions_and_searches() {
        let ev = ok(&track(
            "Promotion Clicked",
            r#"{"promotion_id":"summer","creative":"banner_1"}"#,
        ));
        assert_eq!(ev.promotion_id.as_deref(), Some("summer"));
        assert_eq!(ev.creative.as_deref(), Some("banner_1"));
        let ev = ok(&track(
            "view_promotion",
            r#"{"promotion_id":"P_1","creative_name":"summer_banner"}"#,
        ));
        assert_eq!(ev.kind, Kind::PromotionViewed);
        assert_eq!(ev.creative.as_deref(), Some("summer_banner"));
        assert_eq!(
            ok(&track("Products Searched", r#"{"query":"blue shoes"}"#))
                .query
                .as_deref(),
            Some("blue shoes")
        );
        assert_eq!(
            ok(&track("search", r#"{"search_term":"t-shirts"}"#))
                .query
                .as_deref(),
            Some("t-shirts")
        );
    }

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
    fn timestamps_rfc3339_and_epoch_ms() {
        let at = |ts: &str| {
            ok(&format!(
                r#"{{"type":"track","event":"x","userId":"u","timestamp":{ts}}}"#
            ))
            .ts
        };
        assert_eq!(at(r#""2023-11-14T22:13:20Z""#), NOW);
        assert_eq!(at(r#""2023-11-14T22:13:20.123Z""#), NOW + 123);
        assert_eq!(at(r#""2023-11-15T00:13:20.5+02:00""#), NOW + 500);
        assert_eq!(at(r#""2023-11-14T17:13:20-05:00""#), NOW);
        assert_eq!(at("1700000000123"), NOW + 123);
        assert_eq!(at(r#""1700000000123""#), NOW + 123);
        assert_eq!(at("1700000000123.9"), NOW + 123);
        assert_eq!(at("null"), NOW);
        assert_eq!(ok(r#"{"type":"track","event":"x","userId":"u"}"#).ts, NOW);
        assert_eq!(at(r#""1969-12-31T23:59:59.999Z""#), -1);
        // originalTimestamp is not read.
        assert_eq!(
            ok(r#"{"type":"track","event":"x","userId":"u","originalTimestamp":"2020-01-01T00:00:00Z"}"#).ts,
            NOW
        );
    }

    #[test]
    fn duplicate_keys_keep_the_last() {
        let ev = ok(
            r#"{"type":"track","event":"a","event":"b","userId":"u","properties":[],"properties":{}}"#,
        );
        assert_eq!(ev.name, "b");
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

    // --- never panics ----------------------------------------------------------

    /// JSON built from the keys the parser looks at, with values of every type.
    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let key = prop::sample::select(
            TOP_KEYS
                .iter()
                .chain(PROP_KEYS.iter())
                .copied()
                .chain(["track", "identify", "Order Completed", "x", ""])
                .collect::<Vec<_>>(),
        );
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            prop::sample::select(vec![
                "track",
                "identify",
                "Order Completed",
                "purchase",
                "Product Viewed",
                "view_item",
                "USD",
                "EUR",
                "JPY",
                "XXX",
                "",
                "2024-01-01T00:00:00Z",
                "1700000000000",
                "12.5",
            ])
            .prop_map(Value::from),
            ".{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(5, 64, 8, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((key.clone(), inner), 0..8).prop_map(|kv| Value::Object(
                    kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
                )),
            ]
        })
    }

    fn check_never_panics(bytes: &[u8]) {
        let mut c = ctx();
        c.currency_rates.insert(Str::new("XXX"), f64::NAN);
        for default in [None, Some(MessageType::Track), Some(MessageType::Identify)] {
            for reporting in ["USD", "JPY", "KWD"] {
                c.reporting_currency = Str::new(reporting);
                if let Err(e) = parse_message(bytes, &c, default) {
                    assert!(Reject::CODES.contains(&e.code()));
                    assert!(!e.to_string().is_empty());
                }
            }
        }
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            check_never_panics(&bytes);
        }

        #[test]
        fn never_panics_on_json_ish_text(text in r#"[{}\[\]":,0-9a-zA-Z .eE+\-\\_]{0,200}"#) {
            check_never_panics(text.as_bytes());
        }

        #[test]
        fn never_panics_on_messages(
            ty in prop::sample::select(vec!["track", "identify", "page"]),
            event in prop::sample::select(vec!["Order Completed", "purchase", "Product Viewed", "add_to_cart", "Cart Viewed", "search", "Promotion Viewed", "Experiment Viewed", "custom"]),
            props in json_value(),
            extra in json_value(),
        ) {
            let mut message = serde_json::json!({"type": ty, "event": event, "userId": "u", "properties": props, "traits": extra.clone()});
            if let serde_json::Value::Object(fields) = extra {
                if let Some(m) = message.as_object_mut() {
                    m.extend(fields);
                }
            }
            check_never_panics(message.to_string().as_bytes());
        }
    }
}
