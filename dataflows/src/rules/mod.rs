//! The segment rule language: parse, type-check and compile a rule, then evaluate
//! it over one user's profile at one clock.
//!
//! A rule is a predicate over the profile document, naming fields by the JSON paths
//! the profile answers with:
//!
//! ```text
//! orders >= 2 and revenue >= 100
//! windows.30d.orders >= 1 and not rfm.f_score = 1
//! days_since(last_order_at) > 60 or traits.plan in ["pro", "team"]
//! events."Product Viewed" >= 3 and top_categories contains "shoes"
//! ```
//!
//! Grammar (keywords are case-insensitive):
//!
//! ```text
//! rule    := or
//! or      := and ("or" and)*
//! and     := unary ("and" unary)*
//! unary   := "not" unary | "(" or ")" | "true" | "false" | test
//! test    := operand ( ("=" | "!=" | "<" | "<=" | ">" | ">=") literal
//!                    | "in" "[" literal ("," literal)* "]"
//!                    | "contains" literal
//!                    | "exists" )
//! operand := path | "days_since" "(" time-path ")"
//! path    := name ("." (name | "quoted"))*
//! literal := number | "string" | true | false
//! ```
//!
//! # Semantics
//! * Money fields (`revenue`, `refunded`, `avg_order_value`, `windows.*.revenue`,
//!   `rfm.monetary`) compare in major units of the reporting currency, exactly: a
//!   literal `99.99` is compared as a decimal, never as a float.
//! * `days_since(f)` is whole days from `f` to the engine clock, rounded down; it
//!   moves with the clock alone, so a rule using it changes its answer when the
//!   clock passes a threshold, without any new event (see [`Rule::next_change`]).
//! * `order_gap_days` is whole days between the user's last two orders (with
//!   different times): a returning customer's absence.
//! * A field with no value (a trait never set, `avg_order_value` without orders,
//!   `order_gap_days` with fewer than two orders,
//!   `days_since(last_order_at)` before any order, RFM scores without orders) makes
//!   every test on it false except `exists`, which is false too; `not` inverts that.
//! * Traits compare as the text the client sent (`traits.plan = "pro"`,
//!   `traits.vip = true` matches the JSON value `true`); they have no order.
//! * `categories`, `brands` (any positive affinity), `top_categories`,
//!   `top_brands` (the profile's top 5 by affinity, ties by name) and `cart`
//!   (product ids with a positive quantity) are lists: only `contains` applies.
//!
//! Errors name the byte offset in the rule and what was expected there. A rule is
//! compiled once, when it is defined; evaluation is a walk of the typed tree with
//! every string already interned, run by the segment view for the users whose
//! profile changed, never per query.
//!
//! # Layout
//!
//! A rule goes through three phases when it is defined and one when it is
//! used:
//! * `lex`: the text into tokens, each with its byte offset.
//! * `parse`: the tokens into the typed tree ([`Expr`]) by the grammar above.
//! * `check`: what each name means ([`Num`], a trait, a list, a time) and
//!   which tests apply to it; the parser asks it as it goes.
//! * `eval`: the tree over a [`Subject`], and when the clock alone would
//!   change the answer.

use std::fmt;

use crate::types::Sym;

mod check;
mod eval;
mod lex;
mod parse;

pub use eval::{days_between, Subject};

/// The longest rule text accepted, in bytes.
pub const MAX_RULE_BYTES: usize = 4096;
/// The deepest nesting of `not` and parentheses accepted.
pub const MAX_DEPTH: usize = 64;
/// How many categories and brands `top_categories` and `top_brands` hold.
pub const TOP_K: usize = 5;

/// Why a rule was refused: where, and what was expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleError {
    /// Byte offset in the rule text.
    pub at: usize,
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at {}: {}", self.at, self.message)
    }
}

impl std::error::Error for RuleError {}

fn err<T>(at: usize, message: impl Into<String>) -> Result<T, RuleError> {
    Err(RuleError {
        at,
        message: message.into(),
    })
}

// ---------------------------------------------------------------------------
// The typed tree

/// A rule, type-checked, with its strings interned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    Const(bool),
    Not(Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
    /// `number-operand op literal`; the literal is exact.
    Compare(Num, CmpOp, Decimal),
    /// `number-operand in [..]`.
    NumIn(Num, Vec<Decimal>),
    /// `traits.key = "text"` (or `!=`).
    TraitEq(Sym, Sym, bool),
    /// `traits.key in [..]`.
    TraitIn(Sym, Vec<Sym>),
    /// `operand exists`.
    Exists(Num),
    TraitExists(Sym),
    /// `list contains "text"`.
    Contains(List, Sym),
}

/// A numeric operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Num {
    Lifetime(LifetimeField),
    AvgOrderValue,
    Window(WindowSpan, WindowField),
    /// `events."Name"`: the user's count of that event name.
    EventCount(Sym),
    DaysSince(TimeField),
    /// Whole days between the user's last two orders (distinct times).
    OrderGapDays,
    Rfm(RfmField),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LifetimeField {
    EventsTotal,
    Orders,
    ItemsPurchased,
    Revenue,
    Refunds,
    Refunded,
    Cancellations,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowSpan {
    D7,
    D30,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowField {
    Views,
    CartAdds,
    Orders,
    Revenue,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeField {
    FirstSeen,
    LastSeen,
    LastOrderAt,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RfmField {
    RecencyDays,
    Frequency,
    Monetary,
    RScore,
    FScore,
    MScore,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum List {
    Categories,
    TopCategories,
    Brands,
    TopBrands,
    Cart,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    fn test(self, o: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::*;
        match self {
            CmpOp::Eq => o == Equal,
            CmpOp::Ne => o != Equal,
            CmpOp::Lt => o == Less,
            CmpOp::Le => o != Greater,
            CmpOp::Gt => o == Greater,
            CmpOp::Ge => o != Less,
        }
    }
}

/// An exact decimal: `mantissa / 10^scale`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decimal {
    pub mantissa: i128,
    pub scale: u32,
}

/// The most decimals a literal may have.
const MAX_SCALE: u32 = 12;

impl Decimal {
    /// Compares `value / 10^value_scale` with `self`, exactly.
    fn cmp_scaled(&self, value: i64, value_scale: u32) -> std::cmp::Ordering {
        let scale = self.scale.max(value_scale);
        let v = i128::from(value) * 10i128.pow(scale - value_scale);
        let l = self.mantissa * 10i128.pow(scale - self.scale);
        v.cmp(&l)
    }
}

// ---------------------------------------------------------------------------
// A compiled rule

/// What a rule reads, so the view reads no more of a profile than it needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    pub facets: bool,
    pub traits: bool,
    pub rfm: bool,
    /// The rule moves with the clock alone (`days_since`, `rfm.recency_days`).
    pub clock: bool,
}

impl Needs {
    pub fn union(self, o: Needs) -> Needs {
        Needs {
            facets: self.facets || o.facets,
            traits: self.traits || o.traits,
            rfm: self.rfm || o.rfm,
            clock: self.clock || o.clock,
        }
    }
}

/// A compiled rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub expr: Expr,
    pub needs: Needs,
    /// Decimals of the reporting currency's minor unit (money fields' scale).
    pub money_scale: u32,
}

impl Rule {
    /// Parses, type-checks and compiles `text`; `money_scale` is the number of
    /// decimals of the reporting currency (2 for USD, 0 for JPY).
    pub fn compile(text: &str, money_scale: u32) -> Result<Rule, RuleError> {
        if text.len() > MAX_RULE_BYTES {
            // The position is a character boundary, like every other error's
            // (tests/fuzz.rs found this one inside a multi-byte character).
            let mut at = MAX_RULE_BYTES;
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            return err(
                at,
                format!(
                    "a rule is at most {MAX_RULE_BYTES} bytes; this one is {}",
                    text.len()
                ),
            );
        }
        let (expr, needs) = parse::parse(text)?;
        Ok(Rule {
            expr,
            needs,
            money_scale,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(rule: &str) -> RuleError {
        Rule::compile(rule, 2).expect_err(rule)
    }

    #[test]
    fn errors_name_the_position_and_what_was_expected() {
        let e = error("orders >= ");
        assert_eq!(e.at, 10);
        assert!(e.message.contains("expected a value"), "{e}");
        let e = error("ordrs >= 1");
        assert_eq!(e.at, 0);
        assert!(e.message.contains("unknown field `ordrs`"), "{e}");
        let e = error("orders >= \"many\"");
        assert_eq!(e.at, 10);
        assert!(e.message.contains("is a number"), "{e}");
        let e = error("orders >= 1 and");
        assert_eq!(e.at, 15);
        let e = error("(orders >= 1");
        assert!(e.message.contains("expected `)`"), "{e}");
        let e = error("orders >= 1 revenue");
        assert_eq!(e.at, 12);
        assert!(e.message.contains("expected `and`, `or`"), "{e}");
        let e = error("last_order_at > 3");
        assert!(e.message.contains("days_since(last_order_at)"), "{e}");
        let e = error("days_since(orders) > 3");
        assert_eq!(e.at, 11);
        let e = error("traits.plan > \"a\"");
        assert!(e.message.contains("compare as text"), "{e}");
        let e = error("orders contains \"x\"");
        assert!(e.message.contains("applies to lists"), "{e}");
        let e = error("windows.14d.views > 1");
        assert!(e.message.contains("unknown window `14d`"), "{e}");
        let e = error("orders >= 1 & revenue > 2");
        assert_eq!(e.at, 12);
        let e = error("traits.plan = \"pro");
        assert_eq!(e.at, 14);
        assert!(e.message.contains("unterminated"), "{e}");
        let deep = format!("{}orders > 1{}", "(".repeat(100), ")".repeat(100));
        assert!(error(&deep).message.contains("nested deeper"));
        assert!(error(&"x".repeat(MAX_RULE_BYTES + 1))
            .message
            .contains("at most"));
        let long = format!("{}é", "x".repeat(MAX_RULE_BYTES - 1));
        assert_eq!(error(&long).at, MAX_RULE_BYTES - 1);
        assert!(error("").message.contains("expected a field name"));
    }
}
