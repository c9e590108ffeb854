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

/// Why one message (or frame) was refused. `Display` is the text for the client;
/// [`Refusal::code`] is the label for metrics.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The message itself: what the parser found.
    #[error(transparent)]
    Message(#[from] Reject),
    #[error("timestamp: {ts} ms is before 1970-01-01")]
    BeforeEpoch { ts: i64 },
    #[error("timestamp: {ts} ms is more than {skew_s} s ahead of the server clock")]
    InFuture { ts: i64, skew_s: i64 },
    #[error("revenue: {revenue} is not between 0 and {MAX_AMOUNT_MINOR}")]
    BadRevenue { revenue: i64 },
    #[error("products[{index}]: price must be between 0 and {MAX_AMOUNT_MINOR}, quantity between 0 and {MAX_QUANTITY}")]
    BadLine { index: usize },
    /// An NDJSON line with no newline within `ingest.max_line_bytes`.
    #[error("line is over the {max}-byte limit")]
    LineOverLimit { max: usize },
    #[error("frame {frame} is {len} bytes, over the {max}-byte limit")]
    FrameTooLarge { frame: u64, len: usize, max: usize },
    /// Bincode's own description of what is wrong with the frame.
    #[error("frame {frame} is not a bincode Vec<Event>: {reason}")]
    BadFrame { frame: u64, reason: String },
    #[error("connection closed inside frame {frame}")]
    TruncatedFrame { frame: u64 },
}

impl Refusal {
    /// The metrics label (`reason` of `shopstream_events_rejected_total`).
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Message(r) => r.code(),
            Refusal::BeforeEpoch { .. } => "bad_timestamp",
            Refusal::InFuture { .. } => "future_timestamp",
            Refusal::BadRevenue { .. } | Refusal::BadLine { .. } => "bad_number",
            Refusal::LineOverLimit { .. } => "line_too_long",
            Refusal::FrameTooLarge { .. } => "frame_too_large",
            Refusal::BadFrame { .. } => "bad_frame",
            Refusal::TruncatedFrame { .. } => "truncated_frame",
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
        ctx.max_id_bytes = config.max_id_bytes;
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
        if ev.ts < 0 {
            return Err(Refusal::BeforeEpoch { ts: ev.ts });
        }
        if ev.ts > self.ctx.now_ms.saturating_add(self.max_future_ms) {
            return Err(Refusal::InFuture {
                ts: ev.ts,
                skew_s: self.max_future_ms / 1000,
            });
        }
        Ok(())
    }

    /// Checks an already decoded event (binary frames) against the same rules the
    /// JSON parser enforces, plus the time rules.
    pub fn check(&self, ev: &Event) -> Result<(), Refusal> {
        self.check_time(ev)?;
        if ev.user.is_empty() {
            return Err(Reject::MissingUser.into());
        }
        if ev.user.len() > self.ctx.max_id_bytes {
            return Err(Reject::IdTooLong {
                field: if ev.anonymous {
                    "anonymousId"
                } else {
                    "userId"
                },
                len: ev.user.len(),
                max: self.ctx.max_id_bytes,
            }
            .into());
        }
        if let Some(link) = ev.link.as_ref().filter(|l| l.len() > self.ctx.max_id_bytes) {
            return Err(Reject::IdTooLong {
                field: "link",
                len: link.len(),
                max: self.ctx.max_id_bytes,
            }
            .into());
        }
        if ev.name.is_empty() {
            return Err(Reject::MissingEvent.into());
        }
        if !(0..=MAX_AMOUNT_MINOR).contains(&ev.revenue) {
            return Err(Refusal::BadRevenue {
                revenue: ev.revenue,
            });
        }
        for (index, p) in ev.products.iter().enumerate() {
            if !(0..=MAX_AMOUNT_MINOR).contains(&p.price)
                || !(0..=MAX_QUANTITY).contains(&p.quantity)
            {
                return Err(Refusal::BadLine { index });
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
    metrics::counter!("shopstream_events_rejected_total", "reason" => r.code()).increment(1);
}
