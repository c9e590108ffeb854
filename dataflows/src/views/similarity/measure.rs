//! The measures of similarity, computed at read time from the integer counts the
//! view maintains (so no float enters an arrangement), and the ranking of an
//! answer.

use crate::types::ItemId;
use crate::view::Names;

/// A similarity measure, computed at read time from `c`, `n(a)`, `n(b)`, `N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Measure {
    Count,
    Jaccard,
    Cosine,
    Lift,
    /// Dunning's log-likelihood ratio G² (Mahout's `LogLikelihood.logLikelihoodRatio`).
    Llr,
}

impl Measure {
    pub const ALL: [Measure; 5] = [
        Measure::Count,
        Measure::Jaccard,
        Measure::Cosine,
        Measure::Lift,
        Measure::Llr,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Measure::Count => "count",
            Measure::Jaccard => "jaccard",
            Measure::Cosine => "cosine",
            Measure::Lift => "lift",
            Measure::Llr => "llr",
        }
    }

    pub fn parse(s: &str) -> Option<Measure> {
        Measure::ALL.into_iter().find(|m| m.name() == s)
    }

    /// The score of a pair with `c` units together, `na` and `nb` units of each
    /// and `n` units in all. The same arithmetic, in the same order, is what an
    /// oracle must use to compare scores exactly.
    pub fn score(self, c: i64, na: i64, nb: i64, n: i64) -> f64 {
        let (c, na, nb, n) = (c as f64, na as f64, nb as f64, n as f64);
        match self {
            Measure::Count => c,
            Measure::Jaccard => c / (na + nb - c),
            Measure::Cosine => c / (na * nb).sqrt(),
            Measure::Lift => c * n / (na * nb),
            Measure::Llr => llr(c, na - c, nb - c, n - na - nb + c),
        }
    }

    /// Whether the count bounds this measure's scores ([`bound`](Self::bound)).
    pub fn bounded(self) -> bool {
        self.bound(0, 1).is_some()
    }

    /// The greatest score any partner of an item in `na` units can have with at
    /// most `c` units together, or `None` where `c` bounds nothing. The bounds
    /// use only `n(b) ≥ c`: `jaccard` = c/(na + nb − c) ≤ c/na and `cosine` =
    /// c/√(na·nb) ≤ √(c/na), both growing with `c`, so a read in count order can
    /// stop once the bound falls below its `k`-th score. `lift` is greatest for
    /// the rarest partners (c = nb gives N/na whatever `c`), and `llr`, unsigned,
    /// is great for partners that avoid the item as well as for those that go
    /// with it: neither is bounded by the count.
    pub fn bound(self, c: i64, na: i64) -> Option<f64> {
        let (c, na) = (c as f64, na as f64);
        match self {
            Measure::Count => Some(c),
            Measure::Jaccard if na > 0.0 => Some(c / na),
            Measure::Cosine if na > 0.0 => Some((c / na).sqrt()),
            _ => None,
        }
    }
}

fn x_log_x(x: f64) -> f64 {
    if x == 0.0 {
        0.0
    } else {
        x * x.ln()
    }
}

/// Mahout's unnormalised entropy: `x log x` of the sum less that of each.
fn entropy(xs: &[f64]) -> f64 {
    let sum: f64 = xs.iter().sum();
    x_log_x(sum) - xs.iter().map(|x| x_log_x(*x)).sum::<f64>()
}

/// G² of the 2×2 table (k11 k12 / k21 k22), as Mahout computes it (0 where round-off
/// would make it negative).
pub fn llr(k11: f64, k12: f64, k21: f64, k22: f64) -> f64 {
    let row = entropy(&[k11 + k12, k21 + k22]);
    let column = entropy(&[k11 + k21, k12 + k22]);
    let matrix = entropy(&[k11, k12, k21, k22]);
    if row + column < matrix {
        0.0
    } else {
        2.0 * (row + column - matrix)
    }
}

/// A ranked partner: `(item, score, count)`.
pub type Scored = (ItemId, f64, i64);

/// Orders `(score desc, count desc)`; ties are broken by the item's name by the
/// caller ([`rank`]).
pub(crate) fn by_score(a: &Scored, b: &Scored) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(b.2.cmp(&a.2))
}

/// The first `k` of `scored` by score descending, then count descending, then
/// the item's name ascending (byte order; `names` resolves an id). Only the
/// groups of equal `(score, count)` that reach into the first `k` are sorted by
/// name, so a long tail of ties costs no name lookups.
pub fn rank(mut scored: Vec<Scored>, k: usize, names: &Names) -> Vec<Scored> {
    // Many candidates (the popular items of a shop): keep the first `k` and what
    // ties with the `k`-th before sorting, in linear time.
    if k > 0 && scored.len() > 2 * k {
        scored.select_nth_unstable_by(k - 1, by_score);
        let pivot = scored[k - 1];
        let mut tail = scored.split_off(k);
        tail.retain(|s| by_score(s, &pivot).is_eq());
        scored.extend(tail);
    }
    scored.sort_unstable_by(by_score);
    let mut out = Vec::with_capacity(k.min(scored.len()));
    let mut i = 0;
    while i < scored.len() && out.len() < k {
        let mut j = i + 1;
        while j < scored.len() && by_score(&scored[i], &scored[j]).is_eq() {
            j += 1;
        }
        let group = &mut scored[i..j];
        if group.len() > 1 {
            let mut named: Vec<(String, Scored)> = group
                .iter()
                .map(|s| (names(s.0).unwrap_or_default(), *s))
                .collect();
            named.sort_by(|a, b| a.0.cmp(&b.0).then(a.1 .0.cmp(&b.1 .0)));
            for (g, (_, s)) in group.iter_mut().zip(named) {
                *g = s;
            }
        }
        out.extend(group.iter().take(k - out.len()).copied());
        i = j;
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::types::Sym;

    /// Mahout's own test values and tolerances (`LogLikelihoodTest.testLogLikelihood`).
    #[test]
    fn llr_matches_mahout() {
        let cases = [
            ((1.0, 0.0, 0.0, 1.0), 2.772589, 1e-6),
            ((10.0, 0.0, 0.0, 10.0), 27.72589, 1e-5),
            ((5.0, 1995.0, 0.0, 100000.0), 39.33052, 1e-5),
            ((1000.0, 1995.0, 1000.0, 100000.0), 4730.737, 1e-3),
            ((1000.0, 1000.0, 1000.0, 100000.0), 5734.343, 1e-3),
            ((1000.0, 1000.0, 1000.0, 99000.0), 5714.932, 1e-3),
        ];
        for ((a, b, c, d), want, eps) in cases {
            let got = llr(a, b, c, d);
            assert!(
                (got - want).abs() <= eps,
                "llr({a}, {b}, {c}, {d}) = {got}, want {want}"
            );
        }
    }

    #[test]
    fn measures() {
        assert_eq!(Measure::Count.score(2, 4, 3, 10), 2.0);
        assert_eq!(Measure::Jaccard.score(2, 4, 3, 10), 2.0 / 5.0);
        assert_eq!(Measure::Cosine.score(2, 4, 4, 10), 0.5);
        assert_eq!(Measure::Lift.score(2, 4, 5, 10), 1.0);
        for m in Measure::ALL {
            assert_eq!(Measure::parse(m.name()), Some(m));
        }
    }

    #[test]
    fn ranking_breaks_ties_by_name() {
        let names: Names = Arc::new(|i: Sym| Some(format!("item-{}", 100 - i)));
        let scored = vec![(1, 1.0, 1), (2, 1.0, 1), (3, 2.0, 1), (4, 1.0, 2)];
        let top = rank(scored, 3, &names);
        // 3 (score 2), 4 (score 1, count 2), then of 1 and 2 the smaller name: 2 ("item-98").
        assert_eq!(top.iter().map(|s| s.0).collect::<Vec<_>>(), vec![3, 4, 2]);
    }
}
