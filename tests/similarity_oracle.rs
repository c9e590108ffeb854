//! Oracle test of the similarity view: random streams of views, clicks, cart
//! adds and removes, wishlist adds, orders (some over the size limit, some
//! without an order id), partial and whole refunds and cancellations (some
//! before their order), late events, busy days, and identity links. After every
//! step, for every item, both kinds and every measure, the engine's ranked
//! answer (items, scores, counts), `n(item)` and `N` must equal a brute-force
//! computation over the logged events re-keyed by the identity graph so far;
//! then again after a restart from a snapshot and from the whole log, with
//! another number of workers.
//!
//! The model is written from the README's definitions; it shares with the
//! engine only `Measure::score` (the arithmetic of a measure from four integers,
//! tested against Mahout's values in the view's unit tests), so that scores can
//! be compared exactly.

use std::collections::{BTreeMap, HashSet};

#[path = "util/oracle.rs"]
mod model;
#[path = "util/shop.rs"]
mod shop;

use proptest::prelude::*;
use shop::*;
use shopstream::event::Event;
use shopstream::runtime::{Engine, Route};
use shopstream::serve::similarity::SimilarRead;
use shopstream_dataflows::types::intern;
use shopstream_dataflows::views::similarity::{Measure, SimilarityView, BOUGHT, MAX_K, VIEWED};

/// The expected bundles of `given`: the items (not given) in a unit with every
/// given item, by the sum of their counts with them, then the least count, then
/// name; `Err` naming the first given item never seen.
fn expected_bundles(
    units: &Units,
    given: &[String],
    seen: &HashSet<String>,
) -> Result<Vec<(String, f64, i64)>, String> {
    if let Some(unseen) = given.iter().find(|g| !seen.contains(*g)) {
        return Err(unseen.clone());
    }
    let mut totals: BTreeMap<String, (i64, i64, usize)> = BTreeMap::new();
    for g in given {
        let mut with: BTreeMap<String, i64> = BTreeMap::new();
        for u in units.iter().filter(|u| u.contains(g)) {
            for b in u.iter().filter(|b| *b != g) {
                *with.entry(b.clone()).or_default() += 1;
            }
        }
        for (b, c) in with {
            let t = totals.entry(b).or_insert((0, i64::MAX, 0));
            *t = (t.0 + c, t.1.min(c), t.2 + 1);
        }
    }
    let mut out: Vec<(String, f64, i64)> = totals
        .into_iter()
        .filter(|(b, t)| t.2 == given.len() && !given.contains(b))
        .map(|(b, (sum, least, _))| (b, sum as f64, least))
        .collect();
    out.sort_by(|x, y| {
        y.1.total_cmp(&x.1)
            .then(y.2.cmp(&x.2))
            .then(x.0.as_bytes().cmp(y.0.as_bytes()))
    });
    out.truncate(10);
    Ok(out)
}

/// One similar read at `seq` on the item's owner, kept for the epoch or not.
async fn read(
    engine: &Engine,
    item: &str,
    kind: u8,
    measure: Measure,
    k: usize,
    keep: bool,
    seq: u64,
) -> SimilarRead {
    let id = intern(item);
    let (as_of, answers) = engine
        .read(
            Some(seq),
            None,
            Route::Owner(id),
            move |v: &mut SimilarityView, cx| v.similar_kept(id, kind, measure, k, cx, keep),
        )
        .await
        .expect("read");
    SimilarRead {
        as_of,
        // Nothing answers before the first epoch is readable (as the server's read).
        similar: answers.into_iter().next().unwrap_or_default(),
    }
}

async fn compare(
    engine: &Engine,
    logged: &[(u64, Event)],
    clock: i64,
    what: &str,
) -> Result<(), TestCaseError> {
    let seq = logged.len() as u64;
    let seen: HashSet<String> = logged
        .iter()
        .flat_map(|(_, e)| e.products.iter().map(|p| p.id.to_string()))
        .collect();
    let bought = orders(logged);
    for i in 0..ITEMS {
        for given in [
            vec![format!("i{i}")],
            vec![format!("i{i}"), format!("i{}", (i + 1) % ITEMS)],
        ] {
            let got = shopstream::serve::similarity::bundles(engine, &given, 10, Some(seq))
                .await
                .expect("bundles");
            prop_assert_eq!(got.as_of.seq, seq);
            let got = got.bundles.map(|list| {
                list.iter()
                    .map(|(b, s, c)| (engine.symbols.resolve(*b).expect("named"), *s, *c))
                    .collect::<Vec<_>>()
            });
            let want = expected_bundles(&bought, &given, &seen);
            prop_assert_eq!(got, want, "{}: bundles of {:?} at {}", what, given, seq);
        }
    }
    for (kind, units) in [(VIEWED, histories(logged, clock)), (BOUGHT, bought)] {
        for i in 0..ITEMS {
            let item = format!("i{i}");
            for (m, measure) in Measure::ALL.into_iter().enumerate() {
                let (n, total, want) = expected(&units, &item, measure);
                // A few k, so that reads in count order stop early; then kept for
                // the epoch (as recommendations keep theirs), every partner (a
                // kept list of a few answers it only when it holds them all), and
                // the few again (from what was kept).
                let few = [1, 2, 3, 10][(i as usize + m + seq as usize) % 4];
                for (k, keep) in [(few, false), (few, true), (MAX_K, true), (few, false)] {
                    let got = read(engine, &item, kind, measure, k, keep, seq).await;
                    prop_assert_eq!(got.as_of.seq, seq);
                    prop_assert_eq!(
                        got.similar.seen,
                        seen.contains(&item),
                        "{}: seen {}",
                        what,
                        item
                    );
                    let got_list: Vec<(String, f64, i64)> = got
                        .similar
                        .similar
                        .iter()
                        .map(|(b, s, c)| (engine.symbols.resolve(*b).expect("named"), *s, *c))
                        .collect();
                    let want = &want[..k.min(want.len())];
                    prop_assert_eq!(
                        (got.similar.n, got.similar.units, &got_list[..]),
                        (n, total, want),
                        "{}: kind {} item {} by {:?} top {} at {}; units {:?}",
                        what,
                        kind,
                        item,
                        measure,
                        k,
                        seq,
                        units
                    );
                }
            }
        }
    }
    Ok(())
}

fn check(plan: &[(i64, Vec<Step>)], workers: usize) -> Result<(), TestCaseError> {
    run_plan(plan, workers, config, |rt, engine, logged, clock, what| {
        rt.block_on(compare(engine, logged, clock, what))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn similarity_matches_oracle_one_worker(p in plan()) {
        check(&p, 1)?;
    }

    #[test]
    fn similarity_matches_oracle_three_workers(p in plan()) {
        check(&p, 3)?;
    }
}
