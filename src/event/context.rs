//! What validation needs to know besides the message: the receive time, the
//! line limit and the currencies. Shared by the parser and the money rules.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use super::model::Str;

/// Longest user id accepted unless configured (`ingest.max_id_bytes`).
pub const DEFAULT_MAX_ID_BYTES: usize = 256;

/// What validation needs to know besides the message.
#[derive(Clone, Debug)]
pub struct ParseContext {
    /// Event time for messages without `timestamp` (receive time). Set it per
    /// batch; it is not read from the clock on every message.
    pub now_ms: i64,
    /// Longest accepted message, in bytes.
    pub max_line_bytes: usize,
    /// Longest accepted `userId` / `anonymousId`, in bytes.
    pub max_id_bytes: usize,
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
            max_id_bytes: DEFAULT_MAX_ID_BYTES,
            reporting_currency,
            currency_rates: HashMap::new(),
        }
    }
}
