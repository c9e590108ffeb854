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

use std::fmt;

use crate::profiles::{
    rfm_buckets, Lifetime, UserProfile, WindowCounts, FACET_BRAND, FACET_CART, FACET_CATEGORY,
    FACET_EVENT,
};
use crate::types::{intern, Millis, Sym, DAY_MS};

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

/// What a rule is evaluated on: one user's profile at one engine clock.
#[derive(Clone, Copy)]
pub struct Subject<'a> {
    pub profile: &'a UserProfile,
    /// The user's RFM scores (recency, frequency, monetary; 1–5), when the rule
    /// needs them and the user has orders.
    pub scores: Option<[u8; 3]>,
    pub clock: Millis,
    /// Orders two interned ids by their text, to break ties in `top_*` by name as
    /// the profile document does.
    pub name_order: &'a dyn Fn(Sym, Sym) -> std::cmp::Ordering,
}

impl Rule {
    /// Parses, type-checks and compiles `text`; `money_scale` is the number of
    /// decimals of the reporting currency (2 for USD, 0 for JPY).
    pub fn compile(text: &str, money_scale: u32) -> Result<Rule, RuleError> {
        if text.len() > MAX_RULE_BYTES {
            return err(
                MAX_RULE_BYTES,
                format!(
                    "a rule is at most {MAX_RULE_BYTES} bytes; this one is {}",
                    text.len()
                ),
            );
        }
        let tokens = lex(text)?;
        let mut p = Parser {
            tokens,
            pos: 0,
            end: text.len(),
            needs: Needs::default(),
            depth: 0,
        };
        let expr = p.or()?;
        if let Some(t) = p.peek() {
            return err(
                t.at,
                format!(
                    "expected `and`, `or` or the end of the rule, found {}",
                    t.kind
                ),
            );
        }
        Ok(Rule {
            expr,
            needs: p.needs,
            money_scale,
        })
    }

    /// Whether the user is in the segment.
    pub fn eval(&self, s: &Subject<'_>) -> bool {
        eval(&self.expr, s, self.money_scale)
    }

    /// The earliest clock after `s.clock` at which the answer could change with no
    /// new event for the user (a `days_since` threshold, say); `None` if the clock
    /// alone never changes it.
    pub fn next_change(&self, s: &Subject<'_>) -> Option<Millis> {
        if !self.needs.clock {
            return None;
        }
        next_change(&self.expr, s)
    }
}

fn lifetime_value(l: &Lifetime, f: LifetimeField) -> i64 {
    match f {
        LifetimeField::EventsTotal => l.events,
        LifetimeField::Orders => l.orders,
        LifetimeField::ItemsPurchased => l.items,
        LifetimeField::Revenue => l.revenue,
        LifetimeField::Refunds => l.refunds,
        LifetimeField::Refunded => l.refunded,
        LifetimeField::Cancellations => l.cancellations,
    }
}

fn time_value(l: &Lifetime, f: TimeField) -> Option<Millis> {
    let t = match f {
        TimeField::FirstSeen => l.first_seen,
        TimeField::LastSeen => l.last_seen,
        TimeField::LastOrderAt => l.last_order_at,
    };
    (t != Millis::MIN && t != Millis::MAX).then_some(t)
}

fn window_value(w: &WindowCounts, f: WindowField) -> i64 {
    match f {
        WindowField::Views => w.views,
        WindowField::CartAdds => w.cart_adds,
        WindowField::Orders => w.orders,
        WindowField::Revenue => w.revenue,
    }
}

/// Whole days from `t` to `clock`, rounded down.
pub fn days_between(t: Millis, clock: Millis) -> i64 {
    clock.saturating_sub(t).div_euclid(DAY_MS)
}

/// A numeric operand's value and its decimal scale; `None` when it has none.
fn num_value(n: Num, s: &Subject<'_>, money: u32) -> Option<(i64, u32)> {
    let l = s.profile.lifetime.as_ref()?;
    Some(match n {
        Num::Lifetime(f) => (
            lifetime_value(l, f),
            match f {
                LifetimeField::Revenue | LifetimeField::Refunded => money,
                _ => 0,
            },
        ),
        Num::AvgOrderValue => return None, // compared as a ratio, see `compare`
        Num::Window(span, f) => {
            let w = match span {
                WindowSpan::D7 => &s.profile.windows.d7,
                WindowSpan::D30 => &s.profile.windows.d30,
            };
            (
                window_value(w, f),
                if f == WindowField::Revenue { money } else { 0 },
            )
        }
        Num::EventCount(sym) => (facet(s.profile, FACET_EVENT, sym), 0),
        Num::DaysSince(f) => (days_between(time_value(l, f)?, s.clock), 0),
        Num::OrderGapDays => {
            if l.prev_order_at == Millis::MIN || l.last_order_at == Millis::MIN {
                return None;
            }
            (days_between(l.prev_order_at, l.last_order_at), 0)
        }
        Num::Rfm(f) => {
            // RFM exists once the user has orders, as in the profile document.
            rfm_buckets(l)?;
            match f {
                RfmField::RecencyDays => (days_between(l.last_order_at, s.clock).max(0), 0),
                RfmField::Frequency => (l.orders, 0),
                RfmField::Monetary => (l.revenue, money),
                RfmField::RScore | RfmField::FScore | RfmField::MScore => {
                    let scores = s.scores?;
                    let i = match f {
                        RfmField::RScore => 0,
                        RfmField::FScore => 1,
                        _ => 2,
                    };
                    (i64::from(scores[i]), 0)
                }
            }
        }
    })
}

fn facet(p: &UserProfile, kind: u8, id: Sym) -> i64 {
    p.facets
        .binary_search_by(|((k, i), _)| (*k, *i).cmp(&(kind, id)))
        .map_or(0, |i| p.facets[i].1)
}

fn compare(n: Num, op: CmpOp, lit: &Decimal, s: &Subject<'_>, money: u32) -> bool {
    if n == Num::AvgOrderValue {
        // revenue / orders against the literal, as a ratio: no rounding anywhere.
        let Some(l) = s.profile.lifetime.as_ref().filter(|l| l.orders > 0) else {
            return false;
        };
        let scale = lit.scale.max(money);
        let lhs = i128::from(l.revenue) * 10i128.pow(scale - money);
        let rhs = lit
            .mantissa
            .checked_mul(10i128.pow(scale - lit.scale))
            .and_then(|r| r.checked_mul(i128::from(l.orders)));
        return op.test(match rhs {
            Some(rhs) => lhs.cmp(&rhs),
            // Beyond i128: far beyond any revenue, on the literal's side of zero.
            None if lit.mantissa > 0 => std::cmp::Ordering::Less,
            None => std::cmp::Ordering::Greater,
        });
    }
    match num_value(n, s, money) {
        Some((v, scale)) => op.test(lit.cmp_scaled(v, scale)),
        None => false,
    }
}

fn trait_value(p: &UserProfile, key: Sym) -> Option<Sym> {
    p.traits
        .binary_search_by(|(k, _)| k.cmp(&key))
        .ok()
        .map(|i| p.traits[i].1.value)
}

fn contains(list: List, item: Sym, s: &Subject<'_>) -> bool {
    let p = s.profile;
    let (kind, top) = match list {
        List::Categories => (FACET_CATEGORY, false),
        List::TopCategories => (FACET_CATEGORY, true),
        List::Brands => (FACET_BRAND, false),
        List::TopBrands => (FACET_BRAND, true),
        List::Cart => (FACET_CART, false),
    };
    let score = facet(p, kind, item);
    if score <= 0 {
        return false;
    }
    if !top {
        return true;
    }
    // In the top K: fewer than K others rank before it (higher score, or the same
    // score and a smaller name, as the profile document orders them).
    let mut before = 0;
    for ((k, id), n) in &p.facets {
        if *k != kind || *id == item || *n <= 0 {
            continue;
        }
        if *n > score || (*n == score && (s.name_order)(*id, item) == std::cmp::Ordering::Less) {
            before += 1;
        }
        if before >= TOP_K {
            return false;
        }
    }
    true
}

fn eval(e: &Expr, s: &Subject<'_>, money: u32) -> bool {
    match e {
        Expr::Const(b) => *b,
        Expr::Not(e) => !eval(e, s, money),
        Expr::And(v) => v.iter().all(|e| eval(e, s, money)),
        Expr::Or(v) => v.iter().any(|e| eval(e, s, money)),
        Expr::Compare(n, op, lit) => compare(*n, *op, lit, s, money),
        Expr::NumIn(n, lits) => lits.iter().any(|l| compare(*n, CmpOp::Eq, l, s, money)),
        Expr::TraitEq(key, value, equal) => {
            trait_value(s.profile, *key).is_some_and(|v| (v == *value) == *equal)
        }
        Expr::TraitIn(key, values) => {
            trait_value(s.profile, *key).is_some_and(|v| values.contains(&v))
        }
        Expr::Exists(n) => match n {
            Num::AvgOrderValue => s.profile.lifetime.is_some_and(|l| l.orders > 0),
            n => num_value(*n, s, money).is_some(),
        },
        Expr::TraitExists(key) => trait_value(s.profile, *key).is_some(),
        Expr::Contains(list, item) => contains(*list, *item, s),
    }
}

/// The next clock at which a clock-driven test in `e` may flip (see [`Rule::next_change`]).
fn next_change(e: &Expr, s: &Subject<'_>) -> Option<Millis> {
    let min = |a: Option<Millis>, b: Option<Millis>| match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    match e {
        Expr::Not(e) => next_change(e, s),
        Expr::And(v) | Expr::Or(v) => v.iter().fold(None, |m, e| min(m, next_change(e, s))),
        Expr::Compare(n, op, lit) => clock_flip(*n, s, std::slice::from_ref(lit), |d| {
            op.test(lit.cmp_scaled(d, 0))
        }),
        Expr::NumIn(n, lits) => clock_flip(*n, s, lits, |d| {
            lits.iter()
                .any(|l| l.cmp_scaled(d, 0) == std::cmp::Ordering::Equal)
        }),
        _ => None,
    }
}

/// For a test on a clock-driven day count (`days_since(f)`, `rfm.recency_days`):
/// the clock at which the test's answer next changes, if it ever does with no new
/// event. The day count steps up by one at every whole day after `f`; a test
/// against literals can only change its answer on days next to a literal, so
/// those are the only candidates (the user is not woken every day).
fn clock_flip(
    n: Num,
    s: &Subject<'_>,
    literals: &[Decimal],
    test: impl Fn(i64) -> bool,
) -> Option<Millis> {
    let (field, at_least_zero) = match n {
        Num::DaysSince(f) => (f, false),
        Num::Rfm(RfmField::RecencyDays) => (TimeField::LastOrderAt, true),
        _ => return None,
    };
    let t = time_value(s.profile.lifetime.as_ref()?, field)?;
    let days = |clock: Millis| {
        let d = days_between(t, clock);
        if at_least_zero {
            d.max(0)
        } else {
            d
        }
    };
    let now = days(s.clock);
    let answer = test(now);
    // The first flip is the least candidate after `now` with the other answer
    // (between candidates the answer cannot change).
    let flip = literals
        .iter()
        .flat_map(|l| {
            let floor = l.mantissa.div_euclid(10i128.pow(l.scale));
            let floor = i64::try_from(floor).unwrap_or(if floor < 0 {
                i64::MIN / 4
            } else {
                i64::MAX / 4
            });
            (-1..=2).map(move |k| floor.saturating_add(k))
        })
        .filter(|d| *d > now && test(*d) != answer)
        .min()?;
    // The clock at which the count reaches `flip`.
    Some(t.saturating_add(flip.saturating_mul(DAY_MS)))
}

// ---------------------------------------------------------------------------
// Lexer

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(Decimal),
    Op(CmpOp),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Dot,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Ident(s) => write!(f, "`{s}`"),
            Tok::Str(s) => write!(f, "the string {s:?}"),
            Tok::Num(d) => write!(f, "the number {}", show_decimal(d)),
            Tok::Op(op) => write!(f, "`{}`", op_text(*op)),
            Tok::LParen => f.write_str("`(`"),
            Tok::RParen => f.write_str("`)`"),
            Tok::LBracket => f.write_str("`[`"),
            Tok::RBracket => f.write_str("`]`"),
            Tok::Comma => f.write_str("`,`"),
            Tok::Dot => f.write_str("`.`"),
        }
    }
}

fn op_text(op: CmpOp) -> &'static str {
    match op {
        CmpOp::Eq => "=",
        CmpOp::Ne => "!=",
        CmpOp::Lt => "<",
        CmpOp::Le => "<=",
        CmpOp::Gt => ">",
        CmpOp::Ge => ">=",
    }
}

fn show_decimal(d: &Decimal) -> String {
    if d.scale == 0 {
        return d.mantissa.to_string();
    }
    let p = 10i128.pow(d.scale);
    let sign = if d.mantissa < 0 { "-" } else { "" };
    let m = d.mantissa.abs();
    format!(
        "{sign}{}.{:0width$}",
        m / p,
        m % p,
        width = d.scale as usize
    )
}

#[derive(Clone, Debug)]
struct Token {
    kind: Tok,
    at: usize,
}

fn lex(text: &str) -> Result<Vec<Token>, RuleError> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let at = i;
        let after_path = matches!(
            out.last(),
            Some(Token {
                kind: Tok::Ident(_) | Tok::Str(_),
                ..
            })
        );
        let after_dot = matches!(out.last(), Some(Token { kind: Tok::Dot, .. }));
        // A name; after a dot it may start with a digit (`windows.7d`).
        if c.is_ascii_alphabetic() || c == b'_' || (after_dot && c.is_ascii_digit()) {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            out.push(Token {
                kind: Tok::Ident(text[start..i].to_owned()),
                at,
            });
            continue;
        }
        let single = match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'(' => Some(Tok::LParen),
            b')' => Some(Tok::RParen),
            b'[' => Some(Tok::LBracket),
            b']' => Some(Tok::RBracket),
            b',' => Some(Tok::Comma),
            b'.' if after_path || !bytes.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                Some(Tok::Dot)
            }
            _ => None,
        };
        if let Some(kind) = single {
            out.push(Token { kind, at });
            i += 1;
            continue;
        }
        let two = bytes.get(i + 1) == Some(&b'=');
        let op = match c {
            b'=' => Some((CmpOp::Eq, if two { 2 } else { 1 })),
            b'!' if two => Some((CmpOp::Ne, 2)),
            b'<' if two => Some((CmpOp::Le, 2)),
            b'<' => Some((CmpOp::Lt, 1)),
            b'>' if two => Some((CmpOp::Ge, 2)),
            b'>' => Some((CmpOp::Gt, 1)),
            _ => None,
        };
        if let Some((op, len)) = op {
            out.push(Token {
                kind: Tok::Op(op),
                at,
            });
            i += len;
            continue;
        }
        if c == b'"' {
            let (s, next) = lex_string(text, i)?;
            out.push(Token {
                kind: Tok::Str(s),
                at,
            });
            i = next;
            continue;
        }
        if c.is_ascii_digit() || c == b'-' || c == b'.' {
            let (d, next) = lex_number(text, i)?;
            out.push(Token {
                kind: Tok::Num(d),
                at,
            });
            i = next;
            continue;
        }
        let ch = text[i..].chars().next().unwrap_or('?');
        return err(at, format!("unexpected character {ch:?}"));
    }
    Ok(out)
}

fn lex_string(text: &str, start: usize) -> Result<(String, usize), RuleError> {
    let mut s = String::new();
    let mut chars = text[start + 1..].char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((s, start + 1 + i + 1)),
            '\\' => match chars.next() {
                Some((_, '"')) => s.push('"'),
                Some((_, '\\')) => s.push('\\'),
                Some((j, other)) => {
                    return err(
                        start + 1 + j,
                        format!("unknown escape \\{other}; only \\\" and \\\\ are allowed"),
                    )
                }
                None => break,
            },
            c => s.push(c),
        }
    }
    err(start, "unterminated string: expected a closing `\"`")
}

fn lex_number(text: &str, start: usize) -> Result<(Decimal, usize), RuleError> {
    let bytes = text.as_bytes();
    let mut i = start;
    let negative = bytes[i] == b'-';
    if negative {
        i += 1;
    }
    let mut mantissa: i128 = 0;
    let mut scale = 0u32;
    let mut digits = 0;
    let mut dot = false;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_digit() {
            if dot {
                scale += 1;
                if scale > MAX_SCALE {
                    return err(start, format!("a number has at most {MAX_SCALE} decimals"));
                }
            }
            mantissa = mantissa
                .checked_mul(10)
                .and_then(|m| m.checked_add(i128::from(c - b'0')))
                .filter(|m| *m < 10i128.pow(30))
                .ok_or(RuleError {
                    at: start,
                    message: "number too large".into(),
                })?;
            digits += 1;
        } else if c == b'.' && !dot {
            dot = true;
        } else {
            break;
        }
        i += 1;
    }
    if digits == 0 {
        return err(start, "expected a number");
    }
    if i < bytes.len() && (bytes[i].is_ascii_alphabetic() || bytes[i] == b'_') {
        return err(i, "expected a space or an operator after a number");
    }
    Ok((
        Decimal {
            mantissa: if negative { -mantissa } else { mantissa },
            scale,
        },
        i,
    ))
}

// ---------------------------------------------------------------------------
// Parser and type checker

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    end: usize,
    needs: Needs,
    depth: usize,
}

/// What a path names, before the test on it is known.
enum Operand {
    Num(Num),
    Trait(Sym),
    List(List),
    Time(TimeField),
}

enum Lit {
    Num(Decimal),
    Str(String),
    Bool(bool),
}

const FIELDS: &str = "events_total, orders, items_purchased, revenue, refunds, refunded, \
cancellations, avg_order_value, order_gap_days, first_seen, last_seen, last_order_at, \
windows.7d.{views,cart_adds,orders,revenue}, windows.30d.{...}, events.\"Name\", \
traits.key, categories, top_categories, brands, top_brands, cart, \
rfm.{recency_days,frequency,monetary,r_score,f_score,m_score}, days_since(time field)";

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn at(&self) -> usize {
        self.peek().map_or(self.end, |t| t.at)
    }

    fn found(&self) -> String {
        self.peek()
            .map_or_else(|| "the end of the rule".to_owned(), |t| t.kind.to_string())
    }

    fn keyword(&self, k: &str) -> bool {
        matches!(self.peek(), Some(Token { kind: Tok::Ident(s), .. }) if s.eq_ignore_ascii_case(k))
    }

    fn eat(&mut self, kind: &Tok) -> bool {
        if self.peek().is_some_and(|t| &t.kind == kind) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, kind: Tok, what: &str) -> Result<(), RuleError> {
        if self.eat(&kind) {
            Ok(())
        } else {
            err(
                self.at(),
                format!("expected {what}, found {}", self.found()),
            )
        }
    }

    fn or(&mut self) -> Result<Expr, RuleError> {
        self.chain("or", Self::and, Expr::Or)
    }

    fn and(&mut self) -> Result<Expr, RuleError> {
        self.chain("and", Self::unary, Expr::And)
    }

    /// `operand (keyword operand)*`: one operand as it is, several joined by `join`.
    fn chain(
        &mut self,
        keyword: &str,
        mut operand: impl FnMut(&mut Self) -> Result<Expr, RuleError>,
        join: fn(Vec<Expr>) -> Expr,
    ) -> Result<Expr, RuleError> {
        let mut v = vec![operand(self)?];
        while self.keyword(keyword) {
            self.pos += 1;
            v.push(operand(self)?);
        }
        Ok(if v.len() == 1 {
            v.pop().expect("one")
        } else {
            join(v)
        })
    }

    fn unary(&mut self) -> Result<Expr, RuleError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return err(self.at(), format!("nested deeper than {MAX_DEPTH} levels"));
        }
        let e = if self.keyword("not") {
            self.pos += 1;
            Expr::Not(Box::new(self.unary()?))
        } else if self.eat(&Tok::LParen) {
            let e = self.or()?;
            self.expect(Tok::RParen, "`)`")?;
            e
        } else if self.keyword("true") {
            self.pos += 1;
            Expr::Const(true)
        } else if self.keyword("false") {
            self.pos += 1;
            Expr::Const(false)
        } else {
            self.test()?
        };
        self.depth -= 1;
        Ok(e)
    }

    fn test(&mut self) -> Result<Expr, RuleError> {
        let at = self.at();
        let (operand, name) = self.operand()?;
        let op_at = self.at();
        if self.keyword("exists") {
            self.pos += 1;
            return match operand {
                Operand::Num(n) => Ok(Expr::Exists(n)),
                Operand::Trait(k) => Ok(Expr::TraitExists(k)),
                Operand::Time(f) => Ok(Expr::Exists(Num::DaysSince(f))),
                Operand::List(_) => err(
                    op_at,
                    format!("`{name}` is a list, which always exists; use `contains`"),
                ),
            };
        }
        if self.keyword("contains") {
            self.pos += 1;
            let lit_at = self.at();
            let lit = self.literal()?;
            return match (operand, lit) {
                (Operand::List(l), Lit::Str(s)) => Ok(Expr::Contains(l, intern(&s))),
                (Operand::List(_), _) => {
                    err(lit_at, format!("`{name}` holds names; expected a string"))
                }
                _ => err(
                    op_at,
                    format!("`contains` applies to lists (categories, top_categories, brands, top_brands, cart); `{name}` is not one"),
                ),
            };
        }
        if self.keyword("in") {
            self.pos += 1;
            self.expect(Tok::LBracket, "`[` to start the list after `in`")?;
            let mut lits = Vec::new();
            loop {
                let lit_at = self.at();
                lits.push((lit_at, self.literal()?));
                if self.eat(&Tok::RBracket) {
                    break;
                }
                self.expect(Tok::Comma, "`,` or `]`")?;
            }
            return match operand {
                Operand::Num(n) => {
                    let mut v = Vec::new();
                    for (lit_at, l) in lits {
                        v.push(self.number_literal(l, lit_at, &name)?);
                    }
                    Ok(Expr::NumIn(n, v))
                }
                Operand::Trait(k) => Ok(Expr::TraitIn(
                    k,
                    lits.into_iter().map(|(_, l)| trait_text(&l)).collect(),
                )),
                Operand::Time(_) => err(at, time_hint(&name)),
                Operand::List(_) => err(op_at, format!("`{name}` is a list; use `contains`")),
            };
        }
        let op = match self.peek() {
            Some(Token {
                kind: Tok::Op(op), ..
            }) => *op,
            _ => {
                return err(
                    op_at,
                    format!(
                        "expected a comparison (= != < <= > >=), `in`, `contains` or `exists` after `{name}`, found {}",
                        self.found()
                    ),
                )
            }
        };
        self.pos += 1;
        let lit_at = self.at();
        let lit = self.literal()?;
        match operand {
            Operand::Num(n) => Ok(Expr::Compare(
                n,
                op,
                self.number_literal(lit, lit_at, &name)?,
            )),
            Operand::Trait(k) => match op {
                CmpOp::Eq | CmpOp::Ne => Ok(Expr::TraitEq(k, trait_text(&lit), op == CmpOp::Eq)),
                _ => err(
                    op_at,
                    format!("traits compare as text: only `=`, `!=`, `in` and `exists` apply to `{name}`"),
                ),
            },
            Operand::Time(_) => err(at, time_hint(&name)),
            Operand::List(_) => err(op_at, format!("`{name}` is a list; use `contains`")),
        }
    }

    fn number_literal(&self, lit: Lit, at: usize, name: &str) -> Result<Decimal, RuleError> {
        match lit {
            Lit::Num(d) => Ok(d),
            Lit::Str(s) => err(
                at,
                format!("`{name}` is a number; expected a number, found the string {s:?}"),
            ),
            Lit::Bool(b) => err(
                at,
                format!("`{name}` is a number; expected a number, found `{b}`"),
            ),
        }
    }

    fn literal(&mut self) -> Result<Lit, RuleError> {
        let lit = match self.peek().map(|t| &t.kind) {
            Some(Tok::Num(d)) => Lit::Num(*d),
            Some(Tok::Str(s)) => Lit::Str(s.clone()),
            Some(Tok::Ident(s)) if s.eq_ignore_ascii_case("true") => Lit::Bool(true),
            Some(Tok::Ident(s)) if s.eq_ignore_ascii_case("false") => Lit::Bool(false),
            _ => {
                return err(
                    self.at(),
                    format!(
                        "expected a value (a number, a \"string\", true or false), found {}",
                        self.found()
                    ),
                )
            }
        };
        self.pos += 1;
        Ok(lit)
    }

    /// A path segment: a name, or a quoted string (`events."Product Viewed"`).
    fn segment(&mut self) -> Result<String, RuleError> {
        let s = match self.peek().map(|t| &t.kind) {
            Some(Tok::Ident(s)) | Some(Tok::Str(s)) => s.clone(),
            _ => {
                return err(
                    self.at(),
                    format!("expected a field name, found {}", self.found()),
                )
            }
        };
        self.pos += 1;
        Ok(s)
    }

    fn operand(&mut self) -> Result<(Operand, String), RuleError> {
        let at = self.at();
        if self.keyword("days_since") {
            self.pos += 1;
            self.expect(Tok::LParen, "`(` after `days_since`")?;
            let inner_at = self.at();
            let (inner, name) = self.operand()?;
            self.expect(Tok::RParen, "`)`")?;
            return match inner {
                Operand::Time(f) => {
                    self.needs.clock = true;
                    Ok((Operand::Num(Num::DaysSince(f)), format!("days_since({name})")))
                }
                _ => err(
                    inner_at,
                    format!("days_since takes a time (first_seen, last_seen, last_order_at); `{name}` is not one"),
                ),
            };
        }
        let mut path = vec![self.segment()?];
        while self.eat(&Tok::Dot) {
            path.push(self.segment()?);
        }
        let name = path
            .iter()
            .map(|p| {
                if p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    p.clone()
                } else {
                    format!("{p:?}")
                }
            })
            .collect::<Vec<_>>()
            .join(".");
        let parts: Vec<&str> = path.iter().map(String::as_str).collect();
        let operand = match parts.as_slice() {
            ["events_total"] => Operand::Num(Num::Lifetime(LifetimeField::EventsTotal)),
            ["orders"] => Operand::Num(Num::Lifetime(LifetimeField::Orders)),
            ["items_purchased"] => Operand::Num(Num::Lifetime(LifetimeField::ItemsPurchased)),
            ["revenue"] => Operand::Num(Num::Lifetime(LifetimeField::Revenue)),
            ["refunds"] => Operand::Num(Num::Lifetime(LifetimeField::Refunds)),
            ["refunded"] => Operand::Num(Num::Lifetime(LifetimeField::Refunded)),
            ["cancellations"] => Operand::Num(Num::Lifetime(LifetimeField::Cancellations)),
            ["avg_order_value"] => Operand::Num(Num::AvgOrderValue),
            ["order_gap_days"] => Operand::Num(Num::OrderGapDays),
            ["first_seen"] => Operand::Time(TimeField::FirstSeen),
            ["last_seen"] => Operand::Time(TimeField::LastSeen),
            ["last_order_at"] => Operand::Time(TimeField::LastOrderAt),
            ["windows", span, field] => {
                let span = match *span {
                    "7d" => WindowSpan::D7,
                    "30d" => WindowSpan::D30,
                    _ => {
                        return err(
                            at,
                            format!("unknown window `{span}`; expected `7d` or `30d`"),
                        )
                    }
                };
                let field = match *field {
                    "views" => WindowField::Views,
                    "cart_adds" => WindowField::CartAdds,
                    "orders" => WindowField::Orders,
                    "revenue" => WindowField::Revenue,
                    _ => {
                        return err(
                            at,
                            format!("unknown window field `{field}`; expected views, cart_adds, orders or revenue"),
                        )
                    }
                };
                Operand::Num(Num::Window(span, field))
            }
            ["events", event] => {
                self.needs.facets = true;
                Operand::Num(Num::EventCount(intern(event)))
            }
            ["traits", key] => {
                self.needs.traits = true;
                Operand::Trait(intern(key))
            }
            ["categories"] => self.list(List::Categories),
            ["top_categories"] => self.list(List::TopCategories),
            ["brands"] => self.list(List::Brands),
            ["top_brands"] => self.list(List::TopBrands),
            ["cart"] => self.list(List::Cart),
            ["rfm", field] => {
                let f = match *field {
                    "recency_days" => RfmField::RecencyDays,
                    "frequency" => RfmField::Frequency,
                    "monetary" => RfmField::Monetary,
                    "r_score" => RfmField::RScore,
                    "f_score" => RfmField::FScore,
                    "m_score" => RfmField::MScore,
                    _ => {
                        return err(
                            at,
                            format!("unknown field `rfm.{field}`; expected recency_days, frequency, monetary, r_score, f_score or m_score"),
                        )
                    }
                };
                match f {
                    RfmField::RecencyDays => self.needs.clock = true,
                    RfmField::RScore | RfmField::FScore | RfmField::MScore => self.needs.rfm = true,
                    _ => {}
                }
                Operand::Num(Num::Rfm(f))
            }
            _ => {
                return err(
                    at,
                    format!("unknown field `{name}`; expected one of {FIELDS}"),
                )
            }
        };
        Ok((operand, name))
    }

    fn list(&mut self, l: List) -> Operand {
        self.needs.facets = true;
        Operand::List(l)
    }
}

fn time_hint(name: &str) -> String {
    format!("`{name}` is a time; compare `days_since({name})` with a number of days")
}

/// A trait value as the profile keeps it: the text of the JSON value (a string's
/// contents, or `true`, `42`).
fn trait_text(l: &Lit) -> Sym {
    match l {
        Lit::Str(s) => intern(s),
        Lit::Bool(b) => intern(if *b { "true" } else { "false" }),
        Lit::Num(d) => intern(&show_decimal(d)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profiles::{Latest, Windowed};

    fn no_names(a: Sym, b: Sym) -> std::cmp::Ordering {
        a.cmp(&b)
    }

    fn profile() -> UserProfile {
        UserProfile {
            lifetime: Some(Lifetime {
                events: 10,
                orders: 3,
                items: 4,
                revenue: 12_345,
                refunds: 1,
                refunded: 500,
                cancellations: 0,
                first_seen: 0,
                last_seen: 50 * DAY_MS,
                last_order_at: 40 * DAY_MS,
                prev_order_at: 10 * DAY_MS,
            }),
            windows: Windowed {
                d7: WindowCounts {
                    views: 2,
                    ..WindowCounts::default()
                },
                d30: WindowCounts {
                    orders: 1,
                    revenue: 2_000,
                    ..WindowCounts::default()
                },
            },
            facets: {
                let mut f = vec![
                    ((FACET_EVENT, intern("Product Viewed")), 5),
                    ((FACET_CATEGORY, intern("shoes")), 3),
                    ((FACET_CART, intern("p1")), 1),
                ];
                f.sort();
                f
            },
            traits: vec![(
                intern("plan"),
                Latest {
                    ts: 0,
                    seq: 1,
                    value: intern("pro"),
                },
            )],
        }
    }

    fn check(rule: &str, clock_days: i64) -> bool {
        let p = profile();
        let r = Rule::compile(rule, 2).unwrap_or_else(|e| panic!("{rule}: {e}"));
        r.eval(&Subject {
            profile: &p,
            scores: None,
            clock: clock_days * DAY_MS,
            name_order: &no_names,
        })
    }

    #[test]
    fn fields_and_operators() {
        assert!(check("orders >= 2", 60));
        assert!(!check("orders >= 4", 60));
        assert!(check("revenue >= 100 and revenue < 123.46", 60));
        assert!(!check("revenue > 123.45", 60));
        assert!(check("revenue = 123.45", 60));
        assert!(check("avg_order_value >= 41.15", 60));
        assert!(!check("avg_order_value > 41.15", 60));
        assert!(check(
            "windows.30d.orders >= 1 and windows.7d.views = 2",
            60
        ));
        assert!(check("windows.30d.revenue = 20", 60));
        assert!(check("events.\"Product Viewed\" >= 5", 60));
        assert!(check("events.\"Order Completed\" = 0", 60));
        assert!(check(
            "traits.plan = \"pro\" and traits.plan in [\"a\", \"pro\"]",
            60
        ));
        assert!(!check("traits.plan != \"pro\"", 60));
        assert!(!check(
            "traits.missing = \"x\" or traits.missing != \"x\"",
            60
        ));
        assert!(check(
            "not traits.missing exists and traits.plan exists",
            60
        ));
        assert!(check(
            "categories contains \"shoes\" and top_categories contains \"shoes\"",
            60
        ));
        assert!(!check("brands contains \"shoes\"", 60));
        assert!(check("cart contains \"p1\"", 60));
        assert!(check("orders in [1, 2, 3]", 60));
        assert!(check(
            "(orders = 1 or orders = 3) and not (refunds = 0)",
            60
        ));
        assert!(check("TRUE and not false", 60));
        assert!(!check("rfm.r_score exists", 60));
        assert!(check("rfm.frequency = 3 and rfm.monetary >= 123", 60));
        assert!(check("order_gap_days = 30", 60));
        // Literals far beyond i128 once scaled by the order count stay exact.
        assert!(check("avg_order_value < 99999999999999999999999999999", 60));
        assert!(!check(
            "avg_order_value < -99999999999999999999999999999",
            60
        ));
    }

    #[test]
    fn huge_literals_against_many_orders_do_not_overflow() {
        let mut p = profile();
        let l = p.lifetime.as_mut().expect("lifetime");
        l.orders = 100_000_000;
        l.revenue = 10_000_000_000;
        let r = Rule::compile("avg_order_value > 99999999999999999999999999999", 2).expect("rule");
        let s = Subject {
            profile: &p,
            scores: None,
            clock: 0,
            name_order: &no_names,
        };
        assert!(!r.eval(&s));
        let r = Rule::compile("avg_order_value > -99999999999999999999999999999", 2).expect("rule");
        assert!(r.eval(&s));
    }

    #[test]
    fn days_since_moves_with_the_clock() {
        // last_order_at is day 40.
        assert!(!check("days_since(last_order_at) > 60", 100));
        assert!(check("days_since(last_order_at) > 60", 101));
        assert!(check("days_since(last_order_at) = 60", 100));
        let p = profile();
        let r = Rule::compile("days_since(last_order_at) > 60", 2).expect("rule");
        let at = |days: i64| Subject {
            profile: &p,
            scores: None,
            clock: days * DAY_MS + 5,
            name_order: &no_names,
        };
        // Not every day: only where the answer flips (last order day 40 + 61).
        assert_eq!(r.next_change(&at(70)), Some(101 * DAY_MS));
        assert_eq!(r.next_change(&at(102)), None, "true from then on");
        let window = Rule::compile("days_since(last_order_at) = 50", 2).expect("rule");
        assert_eq!(window.next_change(&at(70)), Some(90 * DAY_MS));
        assert_eq!(window.next_change(&at(90)), Some(91 * DAY_MS));
        assert!(r.needs.clock);
        let plain = Rule::compile("orders > 1", 2).expect("rule");
        assert_eq!(plain.next_change(&at(70)), None);
    }

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
        assert!(error("").message.contains("expected a field name"));
    }
}
