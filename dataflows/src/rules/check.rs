//! The type checker: what each name in a rule means, and which tests apply
//! to it.
//!
//! Invariant: a test becomes an [`Expr`] only when it fits its operand:
//! numbers compare with numbers (exactly, as [`Decimal`]s), traits as text,
//! lists only by `contains`, times only through `days_since`; so evaluation
//! never meets a type error. Each refusal names the offset of the part at
//! fault and what was expected there. Resolving a name records in [`Needs`]
//! what of the profile the rule reads.

use super::lex::show_decimal;
use super::{
    err, CmpOp, Decimal, Expr, LifetimeField, List, Needs, Num, RfmField, RuleError, TimeField,
    WindowField, WindowSpan,
};
use crate::types::{intern, Sym};

/// A literal as written, before the test it stands in gives it a type.
pub(super) enum Lit {
    Num(Decimal),
    Str(String),
    Bool(bool),
}

/// What a path names, before the test on it is known.
#[derive(Clone, Copy)]
pub(super) enum Operand {
    Num(Num),
    Trait(Sym),
    List(List),
    Time(TimeField),
}

const FIELDS: &str = "events_total, orders, items_purchased, revenue, refunds, refunded, \
cancellations, avg_order_value, order_gap_days, first_seen, last_seen, last_order_at, \
windows.7d.{views,cart_adds,orders,revenue}, windows.30d.{...}, events.\"Name\", \
traits.key, categories, top_categories, brands, top_brands, cart, \
rfm.{recency_days,frequency,monetary,r_score,f_score,m_score}, days_since(time field)";

/// The operand a path names; `name` is how errors spell the path, `at` where
/// it starts.
pub(super) fn field(
    path: &[String],
    name: &str,
    at: usize,
    needs: &mut Needs,
) -> Result<Operand, RuleError> {
    let parts: Vec<&str> = path.iter().map(String::as_str).collect();
    let operand = match parts.as_slice() {
        [field] => top_level(field, needs),
        ["windows", span, field] => Some(window(span, field, at)?),
        ["events", event] => Some(event_count(event, needs)),
        ["traits", key] => Some(trait_key(key, needs)),
        ["rfm", field] => Some(rfm(field, at, needs)?),
        _ => None,
    };
    match operand {
        Some(operand) => Ok(operand),
        None => err(
            at,
            format!("unknown field `{name}`; expected one of {FIELDS}"),
        ),
    }
}

/// A one-name field: a lifetime count or sum, a time, or a list.
fn top_level(field: &str, needs: &mut Needs) -> Option<Operand> {
    let operand = match field {
        "events_total" => Operand::Num(Num::Lifetime(LifetimeField::EventsTotal)),
        "orders" => Operand::Num(Num::Lifetime(LifetimeField::Orders)),
        "items_purchased" => Operand::Num(Num::Lifetime(LifetimeField::ItemsPurchased)),
        "revenue" => Operand::Num(Num::Lifetime(LifetimeField::Revenue)),
        "refunds" => Operand::Num(Num::Lifetime(LifetimeField::Refunds)),
        "refunded" => Operand::Num(Num::Lifetime(LifetimeField::Refunded)),
        "cancellations" => Operand::Num(Num::Lifetime(LifetimeField::Cancellations)),
        "avg_order_value" => Operand::Num(Num::AvgOrderValue),
        "order_gap_days" => Operand::Num(Num::OrderGapDays),
        "first_seen" => Operand::Time(TimeField::FirstSeen),
        "last_seen" => Operand::Time(TimeField::LastSeen),
        "last_order_at" => Operand::Time(TimeField::LastOrderAt),
        "categories" => list(List::Categories, needs),
        "top_categories" => list(List::TopCategories, needs),
        "brands" => list(List::Brands, needs),
        "top_brands" => list(List::TopBrands, needs),
        "cart" => list(List::Cart, needs),
        _ => return None,
    };
    Some(operand)
}

/// `windows.<span>.<field>`.
fn window(span: &str, field: &str, at: usize) -> Result<Operand, RuleError> {
    let span = match span {
        "7d" => WindowSpan::D7,
        "30d" => WindowSpan::D30,
        _ => {
            return err(
                at,
                format!("unknown window `{span}`; expected `7d` or `30d`"),
            )
        }
    };
    let field = match field {
        "views" => WindowField::Views,
        "cart_adds" => WindowField::CartAdds,
        "orders" => WindowField::Orders,
        "revenue" => WindowField::Revenue,
        _ => {
            return err(
                at,
                format!(
                    "unknown window field `{field}`; expected views, cart_adds, orders or revenue"
                ),
            )
        }
    };
    Ok(Operand::Num(Num::Window(span, field)))
}

/// `events."Name"`: a count kept among the facets.
fn event_count(event: &str, needs: &mut Needs) -> Operand {
    needs.facets = true;
    Operand::Num(Num::EventCount(intern(event)))
}

/// `traits.key`.
fn trait_key(key: &str, needs: &mut Needs) -> Operand {
    needs.traits = true;
    Operand::Trait(intern(key))
}

/// `rfm.<field>`: `recency_days` moves with the clock; the scores need the
/// user's RFM scores.
fn rfm(field: &str, at: usize, needs: &mut Needs) -> Result<Operand, RuleError> {
    let f = match field {
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
        RfmField::RecencyDays => needs.clock = true,
        RfmField::RScore | RfmField::FScore | RfmField::MScore => needs.rfm = true,
        _ => {}
    }
    Ok(Operand::Num(Num::Rfm(f)))
}

/// A list, read from the facets.
fn list(l: List, needs: &mut Needs) -> Operand {
    needs.facets = true;
    Operand::List(l)
}

/// `days_since(inner)`: only a time has days since it, and the count then
/// moves with the clock; returns the operand with its name.
pub(super) fn days_since(
    inner: Operand,
    name: &str,
    inner_at: usize,
    needs: &mut Needs,
) -> Result<(Operand, String), RuleError> {
    match inner {
        Operand::Time(f) => {
            needs.clock = true;
            Ok((Operand::Num(Num::DaysSince(f)), format!("days_since({name})")))
        }
        _ => err(
            inner_at,
            format!("days_since takes a time (first_seen, last_seen, last_order_at); `{name}` is not one"),
        ),
    }
}

/// An operand with what the errors of the test on it point at.
pub(super) struct Tested {
    pub(super) operand: Operand,
    /// How errors spell the operand.
    pub(super) name: String,
    /// Where the operand starts.
    pub(super) at: usize,
    /// Where the test after it starts (`exists`, `in`, an operator, ...).
    pub(super) op_at: usize,
}

impl Tested {
    /// `operand exists`.
    pub(super) fn exists(&self) -> Result<Expr, RuleError> {
        match self.operand {
            Operand::Num(n) => Ok(Expr::Exists(n)),
            Operand::Trait(k) => Ok(Expr::TraitExists(k)),
            Operand::Time(f) => Ok(Expr::Exists(Num::DaysSince(f))),
            Operand::List(_) => err(
                self.op_at,
                format!(
                    "`{}` is a list, which always exists; use `contains`",
                    self.name
                ),
            ),
        }
    }

    /// `list contains "name"`.
    pub(super) fn contains(&self, lit: Lit, lit_at: usize) -> Result<Expr, RuleError> {
        let name = &self.name;
        match (self.operand, lit) {
            (Operand::List(l), Lit::Str(s)) => Ok(Expr::Contains(l, intern(&s))),
            (Operand::List(_), _) => {
                err(lit_at, format!("`{name}` holds names; expected a string"))
            }
            _ => err(
                self.op_at,
                format!("`contains` applies to lists (categories, top_categories, brands, top_brands, cart); `{name}` is not one"),
            ),
        }
    }

    /// `operand in [literal, ...]`, each literal with its offset.
    pub(super) fn in_list(&self, lits: Vec<(usize, Lit)>) -> Result<Expr, RuleError> {
        match self.operand {
            Operand::Num(n) => {
                let mut v = Vec::new();
                for (lit_at, l) in lits {
                    v.push(number_literal(l, lit_at, &self.name)?);
                }
                Ok(Expr::NumIn(n, v))
            }
            Operand::Trait(k) => Ok(Expr::TraitIn(
                k,
                lits.into_iter().map(|(_, l)| trait_text(&l)).collect(),
            )),
            Operand::Time(_) | Operand::List(_) => self.not_a_value(),
        }
    }

    /// `operand op literal`.
    pub(super) fn compare(&self, op: CmpOp, lit: Lit, lit_at: usize) -> Result<Expr, RuleError> {
        let name = &self.name;
        match self.operand {
            Operand::Num(n) => Ok(Expr::Compare(n, op, number_literal(lit, lit_at, name)?)),
            Operand::Trait(k) => match op {
                CmpOp::Eq | CmpOp::Ne => Ok(Expr::TraitEq(k, trait_text(&lit), op == CmpOp::Eq)),
                _ => err(
                    self.op_at,
                    format!("traits compare as text: only `=`, `!=`, `in` and `exists` apply to `{name}`"),
                ),
            },
            Operand::Time(_) | Operand::List(_) => self.not_a_value(),
        }
    }

    /// A time or a list where a comparison or `in` needs a value: say what
    /// applies to it instead.
    fn not_a_value<T>(&self) -> Result<T, RuleError> {
        match self.operand {
            Operand::Time(_) => err(self.at, time_hint(&self.name)),
            _ => err(
                self.op_at,
                format!("`{}` is a list; use `contains`", self.name),
            ),
        }
    }
}

/// A literal where the number operand `name` needs a number.
fn number_literal(lit: Lit, at: usize, name: &str) -> Result<Decimal, RuleError> {
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
