//! Validation: one message's bytes in, one [`Event`] or one [`Reject`] out.
//!
//! Invariant: checks run cheapest first (line size, UTF-8, JSON syntax, then
//! the object's fields, in the order of the message's meaning: type, user,
//! message id, timestamp, then the kind's properties), the first failing one
//! answers, and nothing here panics on any input (property-tested below).
//! `null` counts as absent everywhere, and so does an empty id.

use compact_str::ToCompactString;

use super::context::ParseContext;
use super::json::*;
use super::model::{message_id_hash, Event, Kind, MessageType, Product, Str};
use super::money::{quantity, Money, MAX_AMOUNT_MINOR};
use super::reject::{describe, quoted, wrong_type, Loc, Reject};

/// Validate one message: one NDJSON line without its newline, or one element
/// of an HTTP batch. `default_type` applies when the message has no `type`.
pub fn parse_message(
    bytes: &[u8],
    ctx: &ParseContext,
    default_type: Option<MessageType>,
) -> Result<Event, Reject> {
    let top = read_object(bytes, ctx)?;
    let ty = message_type(&top, default_type)?;
    let (user, anonymous) = message_user(&top, ctx.max_id_bytes)?;
    let message_id = message_id(&top)?;
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
        link: None,
    };
    event.link = message_link(&top, ty, &event, ctx.max_id_bytes)?;
    match ty {
        MessageType::Identify => event.traits = identify_traits(top)?,
        MessageType::Track => read_track(&mut event, &top, ctx)?,
        MessageType::Alias => {
            // Counted as a custom event "alias"; its link is the point.
            event.kind = Kind::Custom;
            event.name = Str::const_new("alias");
        }
    }
    Ok(event)
}

/// The identity link of a message: an alias's `previousId` (required, as is its
/// `userId`), else the `anonymousId` of a message keyed by its `userId`.
fn message_link(
    top: &TopFields<'_>,
    ty: MessageType,
    event: &Event,
    max: usize,
) -> Result<Option<Str>, Reject> {
    let (slot, field) = match ty {
        MessageType::Alias => (T_PREVIOUS_ID, "previousId"),
        _ => (T_ANONYMOUS_ID, "anonymousId"),
    };
    let link = opt_id(&top.s[slot], field)?;
    if ty == MessageType::Alias {
        if event.anonymous {
            return Err(Reject::AliasNeeds { field: "userId" });
        }
        if link.is_none() {
            return Err(Reject::AliasNeeds {
                field: "previousId",
            });
        }
    }
    let link = link.filter(|l| !event.anonymous && *l != event.user);
    if let Some(l) = &link {
        if l.len() > max {
            return Err(Reject::IdTooLong {
                field,
                len: l.len(),
                max,
            });
        }
    }
    Ok(link)
}

/// The checks before any field is read, cheapest first: size, UTF-8 (with
/// the offset of the first bad byte), JSON syntax, and that it is an object. A
/// UTF-8 byte order mark in front (files saved by some editors) is skipped.
fn read_object<'de>(bytes: &'de [u8], ctx: &ParseContext) -> Result<TopFields<'de>, Reject> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if bytes.len() > ctx.max_line_bytes {
        return Err(Reject::LineTooLong {
            len: bytes.len(),
            max: ctx.max_line_bytes,
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| Reject::InvalidUtf8 {
        offset: e.valid_up_to(),
    })?;
    match serde_json::from_str::<Shaped<Section<'de, TopFields<'de>>>>(text) {
        Ok(Shaped(Section::Object(top))) => match top.duplicate {
            Some(key) => Err(Reject::DuplicateKey { key }),
            None => Ok(top),
        },
        Ok(Shaped(Section::Other(s))) => Err(Reject::NotObject { got: s.kind() }),
        Err(e) => Err(Reject::NotJson(e.to_string())),
    }
}

/// `type`, else the endpoint's default; names match exactly.
fn message_type(
    top: &TopFields<'_>,
    default_type: Option<MessageType>,
) -> Result<MessageType, Reject> {
    match present(&top.s[T_TYPE]) {
        None => default_type.ok_or(Reject::MissingType),
        Some(Scalar::Str(t)) if t == "track" => Ok(MessageType::Track),
        Some(Scalar::Str(t)) if t == "identify" => Ok(MessageType::Identify),
        Some(Scalar::Str(t)) if t == "alias" => Ok(MessageType::Alias),
        Some(Scalar::Str(t)) => Err(Reject::BadType { got: quoted(t) }),
        Some(s) => Err(Reject::BadType { got: describe(s) }),
    }
}

/// `userId` if present and non-empty, else `anonymousId`; the flag is true
/// when the user came from `anonymousId`. Either is at most `max` bytes: every
/// user id is kept in memory for answers, so one sender cannot make it huge.
fn message_user(top: &TopFields<'_>, max: usize) -> Result<(Str, bool), Reject> {
    let (user, anonymous, field) = match opt_id(&top.s[T_USER_ID], "userId")? {
        Some(user) => (user, false, "userId"),
        None => match opt_id(&top.s[T_ANONYMOUS_ID], "anonymousId")? {
            Some(user) => (user, true, "anonymousId"),
            None => return Err(Reject::MissingUser),
        },
    };
    if user.len() > max {
        return Err(Reject::IdTooLong {
            field,
            len: user.len(),
            max,
        });
    }
    Ok((user, anonymous))
}

/// The deduplication key: [`message_id_hash`] of `messageId`, a number
/// stringified first; empty or absent means the event is never deduplicated.
fn message_id(top: &TopFields<'_>) -> Result<Option<u64>, Reject> {
    match present(&top.s[T_MESSAGE_ID]) {
        None => Ok(None),
        Some(Scalar::Str(id)) if id.is_empty() => Ok(None),
        Some(Scalar::Str(id)) => Ok(Some(message_id_hash(id))),
        Some(s) => match number_text(s) {
            Some(id) => Ok(Some(message_id_hash(&id))),
            None => Err(wrong_type("messageId", "a string or number", s)),
        },
    }
}

/// A track message's name (which fixes its kind) and properties.
fn read_track(event: &mut Event, top: &TopFields<'_>, ctx: &ParseContext) -> Result<(), Reject> {
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
        read_properties(event, props, ctx)?;
    }
    Ok(())
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

const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;

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

/// An identify's traits: top-level `traits` (Segment's SDKs), else
/// `context.traits` (RudderStack's SDKs send them only there); never both merged.
fn identify_traits(top: TopFields<'_>) -> Result<Vec<(Str, String)>, Reject> {
    let top_level = !matches!(top.traits, None | Some(Traits::Other(Scalar::Null)));
    let in_context = match top.context {
        Some(Section::Object(ContextFields { traits: Some(raw) })) if !top_level => raw,
        _ => return traits("traits", top.traits),
    };
    // Already checked as JSON by the first pass; this builds the values.
    let t = serde_json::from_str::<Shaped<Traits<'_>>>(in_context.get())
        .map_err(|e| Reject::NotJson(e.to_string()))?;
    traits("context.traits", Some(t.0))
}

/// Identify traits as (key, compact JSON), sorted by key; the last of
/// duplicated keys wins, as in a JSON object read into a map.
fn traits(field: &str, t: Option<Traits<'_>>) -> Result<Vec<(Str, String)>, Reject> {
    let mut pairs = match t {
        None | Some(Traits::Other(Scalar::Null)) => return Ok(Vec::new()),
        Some(Traits::Other(s)) => return Err(wrong_type(field, "an object", &s)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::test_util::*;
    use proptest::prelude::*;

    // --- rejections of the message and its fields ---------------------------

    /// Identity links (docs/identity.md): an alias's previousId, or the
    /// anonymousId of a message keyed by its userId; nothing for anonymous ones.
    #[test]
    fn links_are_kept_from_alias_and_from_messages_with_both_ids() {
        let a = ok(r#"{"type":"alias","previousId":"a-17","userId":"u-42"}"#);
        assert_eq!((a.user.as_str(), a.link.as_deref()), ("u-42", Some("a-17")));
        assert_eq!((a.kind, a.name.as_str()), (Kind::Custom, "alias"));
        let i = ok(r#"{"type":"identify","userId":"u-42","anonymousId":"a-17"}"#);
        assert_eq!(i.link.as_deref(), Some("a-17"));
        let t = ok(r#"{"type":"track","event":"x","userId":"u-42","anonymousId":"a-18"}"#);
        assert_eq!(t.link.as_deref(), Some("a-18"));
        let anon = ok(r#"{"type":"track","event":"x","anonymousId":"a-19"}"#);
        assert_eq!((anon.user.as_str(), anon.link), ("a-19", None));
        let same = ok(r#"{"type":"identify","userId":"u","anonymousId":"u"}"#);
        assert_eq!(same.link, None);
        let reason = "alias: previousId is required (alias ties previousId to userId)";
        rejects(r#"{"type":"alias","userId":"u-42"}"#, "bad_alias", reason);
        let reason = "alias: userId is required (alias ties previousId to userId)";
        rejects(
            r#"{"type":"alias","anonymousId":"a","previousId":"b"}"#,
            "bad_alias",
            reason,
        );
        let long = "x".repeat(300);
        rejects(
            &format!(r#"{{"type":"alias","previousId":"{long}","userId":"u"}}"#),
            "id_too_long",
            "previousId: 300 bytes, over the 256-byte limit for ids (ingest.max_id_bytes)",
        );
    }

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
            "type: expected \"track\", \"identify\" or \"alias\", got number 1",
        );
        rejects_bytes(
            b"{\"type\": 1}",
            &small,
            "line_too_long",
            "line is 11 bytes, over the 10-byte limit",
        );
    }

    #[test]
    fn a_leading_byte_order_mark_is_skipped() {
        let line = "\u{feff}{\"type\":\"track\",\"event\":\"x\",\"userId\":\"u\"}";
        let ev = parse_message(line.as_bytes(), &ctx(), None).expect("a BOM is not an error");
        assert_eq!(ev.user, "u");
    }

    #[test]
    fn user_ids_over_the_limit_are_rejected_with_the_field() {
        let mut small = ctx();
        small.max_id_bytes = 8;
        let ok = r#"{"type":"track","event":"x","userId":"12345678"}"#;
        assert!(parse_message(ok.as_bytes(), &small, None).is_ok());
        rejects_bytes(
            br#"{"type":"track","event":"x","userId":"123456789"}"#,
            &small,
            "id_too_long",
            "userId: 9 bytes, over the 8-byte limit for ids (ingest.max_id_bytes)",
        );
        rejects_bytes(
            br#"{"type":"track","event":"x","anonymousId":"123456789"}"#,
            &small,
            "id_too_long",
            "anonymousId: 9 bytes, over the 8-byte limit for ids (ingest.max_id_bytes)",
        );
        let big = format!(
            r#"{{"type":"track","event":"x","userId":"{}"}}"#,
            "u".repeat(30_000)
        );
        rejects(
            &big,
            "id_too_long",
            "userId: 30000 bytes, over the 256-byte limit for ids (ingest.max_id_bytes)",
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
            r#"type: expected "track", "identify" or "alias", got "page""#,
        );
        rejects(
            r#"{"type":"Track","userId":"u","event":"x"}"#,
            "bad_type",
            r#"type: expected "track", "identify" or "alias", got "Track""#,
        );
        rejects(
            r#"{"type":["track"],"userId":"u"}"#,
            "bad_type",
            r#"type: expected "track", "identify" or "alias", got array"#,
        );
    }

    #[test]
    fn missing_type_uses_the_endpoint_default() {
        rejects(
            r#"{"userId":"u","event":"x"}"#,
            "missing_type",
            r#"type: required ("track", "identify" or "alias")"#,
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
    fn identify_traits_from_the_context_when_none_at_the_top() {
        // As the RudderStack SDKs send an identify.
        let ev = ok(
            r#"{"type":"identify","userId":"u","context":{"library":{"name":"x"},"traits":{"plan":"pro","n":1}},"traits":null}"#,
        );
        let traits: Vec<(&str, &str)> = ev
            .traits
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(traits, vec![("n", "1"), ("plan", r#""pro""#)]);
        rejects(
            r#"{"type":"identify","userId":"u","context":{"traits":[1]}}"#,
            "wrong_type",
            "context.traits: expected an object, got array",
        );
        // A context that is not an object carries no traits.
        assert!(ok(r#"{"type":"identify","userId":"u","context":"x"}"#)
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
