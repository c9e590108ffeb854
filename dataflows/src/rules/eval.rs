//! Evaluation: a compiled rule over one user's profile at one clock.
//!
//! Invariant: evaluation is total and pure. It never fails and never panics
//! (money compares exactly, in `i128` where a ratio or a scaled literal needs
//! it), a field with no value makes every test on it false, and the answer
//! depends only on the [`Subject`]; so the segment view can re-evaluate a user
//! whenever it likes and [`Rule::next_change`] can say when the clock alone
//! would change the answer.

use crate::types::{Millis, Sym, DAY_MS};
use crate::views::profiles::{
    rfm_buckets, Lifetime, UserProfile, WindowCounts, FACET_BRAND, FACET_CART, FACET_CATEGORY,
    FACET_EVENT,
};

use super::{
    CmpOp, Decimal, Expr, LifetimeField, List, Num, RfmField, Rule, TimeField, WindowField,
    WindowSpan, TOP_K,
};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::intern;
    use crate::views::profiles::{Latest, Windowed};

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
                merged: false,
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
}
