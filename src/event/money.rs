//! Money: amounts as integer minor units of the reporting currency, and
//! product quantities.
//!
//! Invariant: an amount that leaves this module is exact integer minor units
//! in `0..=MAX_AMOUNT_MINOR` and a quantity is in `0..=MAX_QUANTITY`, never an
//! `f64`, so the sums the views keep are exact and associative. Without a
//! conversion, rounding is on the decimal the sender wrote, not on its binary
//! approximation (see "Money" in the module essay of [`crate::event`]).

use std::fmt;

use super::context::ParseContext;
use super::json::{present, PropFields, Scalar, P_CURRENCY};
use super::model::Str;
use super::reject::{describe, truncated, wrong_type, Loc, Reject};

/// Largest amount one message may carry, in minor units (10^15: ten trillion
/// dollars). Views sum amounts per user; the cap keeps those sums far from the
/// ends of `i64` (and the views wrap rather than panic if a user still gets there).
pub const MAX_AMOUNT_MINOR: i64 = 1_000_000_000_000_000;
/// Largest quantity of one product line.
pub const MAX_QUANTITY: i64 = 1_000_000;

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

/// How amounts of this event become minor units of the reporting currency.
pub(super) struct Money {
    /// Reporting units per unit of the event's currency.
    rate: f64,
    /// No conversion: round on the decimal text, exactly.
    exact: bool,
    decimals: u32,
}

impl Money {
    pub(super) fn resolve(p: &PropFields<'_>, ctx: &ParseContext) -> Result<Money, Reject> {
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
    pub(super) fn amount(&self, s: &Scalar<'_>, loc: &Loc, key: &str) -> Result<i64, Reject> {
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

pub(super) fn quantity(s: &Scalar<'_>, loc: &Loc) -> Result<i64, Reject> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::parse_message;
    use crate::event::test_util::*;

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
}
