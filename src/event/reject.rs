//! Why a message was rejected, and the few helpers that word it.
//!
//! Invariant: every rejection names the field path and what was wrong with
//! it, with the offending value quoted and cut short ([`quoted`] keeps at
//! most 64 bytes), so the sender can fix its tracking code from the message
//! alone; [`Reject::code`] maps each reason to one stable metrics label.

use std::borrow::Cow;

use super::json::Scalar;

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
    #[error("type: expected \"track\", \"identify\" or \"alias\", got {got}")]
    BadType { got: String },
    #[error("type: required (\"track\", \"identify\" or \"alias\")")]
    MissingType,
    #[error("alias: {field} is required (alias ties previousId to userId)")]
    AliasNeeds { field: &'static str },
    #[error("missing userId or anonymousId")]
    MissingUser,
    #[error("{key}: given more than once")]
    DuplicateKey { key: &'static str },
    #[error("{field}: {len} bytes, over the {max}-byte limit for ids (ingest.max_id_bytes)")]
    IdTooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
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
    pub const CODES: [&'static str; 15] = [
        "line_too_long",
        "invalid_utf8",
        "not_json",
        "not_object",
        "bad_type",
        "missing_type",
        "missing_user",
        "bad_alias",
        "id_too_long",
        "duplicate_key",
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
            Reject::AliasNeeds { .. } => "bad_alias",
            Reject::IdTooLong { .. } => "id_too_long",
            Reject::DuplicateKey { .. } => "duplicate_key",
            Reject::MissingEvent => "missing_event",
            Reject::BadTimestamp { .. } => "bad_timestamp",
            Reject::WrongType { .. } => "wrong_type",
            Reject::BadNumber { .. } | Reject::TotalOverflow { .. } => "bad_number",
            Reject::UnknownCurrency { .. } => "unknown_currency",
        }
    }
}

/// Where a product field sits, for error paths; built only on error.
pub(super) enum Loc {
    Props,
    Item { list: &'static str, index: usize },
}

impl Loc {
    pub(super) fn path(&self, key: Option<&str>) -> String {
        match (self, key) {
            (Loc::Props, Some(key)) => format!("properties.{key}"),
            (Loc::Props, None) => "properties".to_owned(),
            (Loc::Item { list, index }, Some(key)) => format!("properties.{list}[{index}].{key}"),
            (Loc::Item { list, index }, None) => format!("properties.{list}[{index}]"),
        }
    }
}

pub(super) fn wrong_type(path: &str, expected: &'static str, got: &Scalar<'_>) -> Reject {
    Reject::WrongType {
        path: path.to_owned(),
        expected,
        got: describe(got),
    }
}

/// A value for an error message: its JSON type and, for scalars, the value.
pub(super) fn describe(s: &Scalar<'_>) -> String {
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
pub(super) fn quoted(t: &str) -> String {
    format!("{:?}", truncated(t, 64))
}

pub(super) fn truncated(t: &str, max: usize) -> Cow<'_, str> {
    if t.len() <= max {
        return Cow::Borrowed(t);
    }
    let mut cut = max;
    while !t.is_char_boundary(cut) {
        cut -= 1;
    }
    Cow::Owned(format!("{}…", &t[..cut]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejection_codes_are_distinct_per_reason() {
        let mut codes = Reject::CODES.to_vec();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), Reject::CODES.len());
    }
}
