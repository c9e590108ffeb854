//! Ingest: TCP (newline-delimited JSON, or length-prefixed bincode frames) and
//! HTTP (`/v1/batch`, `/v1/track`, `/v1/identify`).
//!
//! Every path validates each message on its own: a bad message is answered with
//! its reason and its neighbours carry on. Valid events go to the sequencer, which
//! acknowledges them once they are durable.

pub mod binary;
pub mod connection;
pub mod http;
pub mod listener;
pub mod ndjson;

use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::Config;
use crate::event::{
    parse_message, Event, MessageType, ParseContext, Reject, MAX_AMOUNT_MINOR, MAX_QUANTITY,
};

/// Validation settings shared by every ingest path.
#[derive(Clone)]
pub struct Validator {
    ctx: ParseContext,
    max_future_ms: i64,
}

/// Why one message was refused: the text for the client, a label for metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: String,
    pub code: &'static str,
}

impl From<Reject> for Refusal {
    fn from(r: Reject) -> Self {
        Refusal {
            reason: r.to_string(),
            code: r.code(),
        }
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Validator {
    pub fn new(config: &Config) -> Self {
        let mut ctx = ParseContext::new(&config.reporting_currency);
        ctx.max_line_bytes = config.max_line_bytes;
        ctx.currency_rates = config
            .currency_rates
            .iter()
            .map(|(k, v)| (k.as_str().into(), *v))
            .collect();
        Validator {
            ctx,
            max_future_ms: config.max_future_skew.as_millis() as i64,
        }
    }

    /// Refreshes the receive time used for messages without a timestamp.
    pub fn tick(&mut self) {
        self.ctx.now_ms = now_ms();
    }

    /// Validates one message.
    pub fn parse(&self, bytes: &[u8], default: Option<MessageType>) -> Result<Event, Refusal> {
        let ev = parse_message(bytes, &self.ctx, default)?;
        // The parser already enforced the rest of `check`.
        self.check_time(&ev)?;
        Ok(ev)
    }

    /// The time rules, which the parser does not know: not before 1970, and not
    /// further ahead of the server clock than `ingest.max_future_skew_s`.
    fn check_time(&self, ev: &Event) -> Result<(), Refusal> {
        let refuse = |code, reason: String| Err(Refusal { reason, code });
        if ev.ts < 0 {
            return refuse(
                "bad_timestamp",
                format!("timestamp: {} ms is before 1970-01-01", ev.ts),
            );
        }
        if ev.ts > self.ctx.now_ms.saturating_add(self.max_future_ms) {
            return refuse(
                "future_timestamp",
                format!(
                    "timestamp: {} ms is more than {} s ahead of the server clock",
                    ev.ts,
                    self.max_future_ms / 1000
                ),
            );
        }
        Ok(())
    }

    /// Checks an already decoded event (binary frames) against the same rules the
    /// JSON parser enforces, plus the time rules.
    pub fn check(&self, ev: &Event) -> Result<(), Refusal> {
        let refuse = |code, reason: String| Err(Refusal { reason, code });
        self.check_time(ev)?;
        if ev.user.is_empty() {
            return refuse("missing_user", "missing userId or anonymousId".into());
        }
        if ev.name.is_empty() {
            return refuse("missing_event", "event: required for track".into());
        }
        if !(0..=MAX_AMOUNT_MINOR).contains(&ev.revenue) {
            return refuse(
                "bad_number",
                format!(
                    "revenue: {} is not between 0 and {MAX_AMOUNT_MINOR}",
                    ev.revenue
                ),
            );
        }
        for (i, p) in ev.products.iter().enumerate() {
            if !(0..=MAX_AMOUNT_MINOR).contains(&p.price)
                || !(0..=MAX_QUANTITY).contains(&p.quantity)
            {
                return refuse(
                    "bad_number",
                    format!(
                        "products[{i}]: price must be between 0 and {MAX_AMOUNT_MINOR}, \
                         quantity between 0 and {MAX_QUANTITY}"
                    ),
                );
            }
        }
        Ok(())
    }

    pub fn max_line_bytes(&self) -> usize {
        self.ctx.max_line_bytes
    }
}

/// Counts a refusal in the metrics.
pub(crate) fn count_refusal(r: &Refusal) {
    metrics::counter!("shopstream_events_rejected_total", "reason" => r.code).increment(1);
}
