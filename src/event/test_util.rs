//! Shorthands shared by the tests of the event submodules: a fixed parse
//! context (USD reporting, EUR and JPY rates, a fixed clock) and helpers that
//! accept a message or assert the exact text and code of its rejection.

use super::{parse_message, Event, ParseContext, Product, Reject, Str};

pub(super) const NOW: i64 = 1_700_000_000_000;

pub(super) fn ctx() -> ParseContext {
    let mut ctx = ParseContext::new("USD");
    ctx.now_ms = NOW;
    ctx.currency_rates.insert(Str::new("EUR"), 1.1);
    ctx.currency_rates.insert(Str::new("JPY"), 0.0067);
    ctx
}

pub(super) fn parse(json: &str) -> Result<Event, Reject> {
    parse_message(json.as_bytes(), &ctx(), None)
}

pub(super) fn ok(json: &str) -> Event {
    match parse(json) {
        Ok(ev) => ev,
        Err(e) => panic!("rejected {json}: {e}"),
    }
}

/// Asserts the reason text and code of a rejection.
pub(super) fn rejects(json: &str, code: &str, reason: &str) {
    rejects_bytes(json.as_bytes(), &ctx(), code, reason);
}

pub(super) fn rejects_bytes(bytes: &[u8], ctx: &ParseContext, code: &str, reason: &str) {
    match parse_message(bytes, ctx, None) {
        Ok(ev) => panic!("accepted {:?}: {ev:?}", String::from_utf8_lossy(bytes)),
        Err(e) => {
            assert_eq!(e.to_string(), reason);
            assert_eq!(e.code(), code);
            assert!(Reject::CODES.contains(&e.code()));
        }
    }
}

pub(super) fn track(event: &str, props: &str) -> String {
    format!(r#"{{"type":"track","userId":"u1","event":"{event}","properties":{props}}}"#)
}

pub(super) fn product(id: &str, price: i64, quantity: i64) -> Product {
    Product {
        id: Str::new(id),
        category: None,
        brand: None,
        price,
        quantity,
    }
}
