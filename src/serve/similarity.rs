//! The similarity view's host half: `GET /v1/items/{id}/similar`, an item's most
//! similar items by one co-occurrence kind and measure, read on the worker that
//! owns the item at one epoch.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use shopstream_dataflows::types::{intern, ItemId, Millis, DAY_MS};
use shopstream_dataflows::view::Env;
use shopstream_dataflows::views::similarity::{
    rank, ItemPartners, Kind, Measure, Similar, SimilaritySettings, SimilarityView, BOUGHT, MAX_K,
    VIEWED,
};

use super::view::ServeView;
use crate::reply::{engine_error, error, not_found_at, read_at};
use crate::runtime::{Engine, EngineError, HostContext, ReadAt, Readable, Route, ViewHost};

/// The similarity view's registration.
#[derive(Debug)]
pub struct Similarity;

impl ViewHost for Similarity {
    fn name(&self) -> &'static str {
        "similarity"
    }

    fn provide(&self, env: &mut Env, cx: HostContext<'_>) {
        let s = &cx.config.similarity;
        env.insert(SimilaritySettings {
            enabled: s.enabled,
            history_items: s.history_items,
            history_ms: Millis::from(s.history_days) * DAY_MS,
            max_user_events_per_day: i64::try_from(s.max_user_events_per_day).unwrap_or(i64::MAX),
            max_order_items: s.max_order_items,
            order_horizon: cx.config.order_horizon,
        });
    }
}

impl ServeView for Similarity {
    fn routes(&self) -> Router<Arc<Engine>> {
        Router::new()
            .route("/v1/items/{id}/similar", get(get_similar))
            .route("/v1/items/bundles", get(get_bundles))
    }
}

/// The name of a co-occurrence kind in the API.
pub fn kind_name(kind: Kind) -> &'static str {
    if kind == BOUGHT {
        "bought"
    } else {
        "viewed"
    }
}

pub(crate) fn parse_kind(s: &str) -> Option<Kind> {
    match s {
        "viewed" => Some(VIEWED),
        "bought" => Some(BOUGHT),
        _ => None,
    }
}

/// What `similar` answers, as read.
#[derive(Clone, Debug)]
pub struct SimilarRead {
    pub as_of: Readable,
    pub similar: Similar,
}

/// Reads the `k` items most similar to `item` at one complete epoch.
pub async fn read(
    engine: &Engine,
    item: &str,
    kind: Kind,
    measure: Measure,
    k: usize,
    at: impl Into<ReadAt>,
) -> Result<SimilarRead, EngineError> {
    let id = intern(item);
    let (as_of, answers) = engine
        .read(
            at,
            None,
            Route::Owner(id),
            move |v: &mut SimilarityView, cx| v.similar(id, kind, measure, k, cx),
        )
        .await?;
    Ok(SimilarRead {
        as_of,
        similar: answers.into_iter().next().unwrap_or_default(),
    })
}

/// The query of `similar`: `k`, `kind`, `measure`, and where it is read.
struct SimilarQuery {
    k: usize,
    kind: Kind,
    measure: Measure,
    at: ReadAt,
}

/// `k`: 10 by default, 1 to [`MAX_K`].
pub(crate) fn parse_k(params: &HashMap<String, String>) -> Result<usize, Response> {
    match params.get("k") {
        None => Ok(10),
        Some(v) => match v.parse::<usize>() {
            Ok(k) if (1..=MAX_K).contains(&k) => Ok(k),
            _ => Err(error(
                StatusCode::BAD_REQUEST,
                format!("k: expected 1 to {MAX_K}, got {v:?}"),
            )),
        },
    }
}

/// A ranked list as JSON: `[{"item_id", "score", "count"}]`, with item names.
fn render_ranked(engine: &Engine, list: &[(ItemId, f64, i64)]) -> Vec<serde_json::Value> {
    list.iter()
        .map(|(item, score, count)| {
            json!({
                "item_id": engine.symbols.resolve(*item).unwrap_or_else(|| format!("#{item:016x}")),
                "score": score,
                "count": count,
            })
        })
        .collect()
}

/// A 400 naming the first parameter not in `known`: a typo is told, not ignored.
pub(crate) fn only(params: &HashMap<String, String>, known: &[&str]) -> Result<(), Response> {
    match params.keys().find(|k| !known.contains(&k.as_str())) {
        None => Ok(()),
        Some(key) => Err(error(
            StatusCode::BAD_REQUEST,
            format!("unknown parameter {key:?} (expected {})", known.join(", ")),
        )),
    }
}

/// The 404 of every endpoint of this view when it is switched off.
fn switched_off(engine: &Engine, what: &str) -> Option<Response> {
    crate::reply::switched_off(engine.config.similarity.enabled, what, "similarity.enabled")
}

fn parse_query(params: &HashMap<String, String>) -> Result<SimilarQuery, Response> {
    let bad = |m: String| error(StatusCode::BAD_REQUEST, m);
    only(params, &["k", "kind", "measure", "min_seq", "as_of"])?;
    let k = parse_k(params)?;
    let kind = match params.get("kind") {
        None => VIEWED,
        Some(v) => parse_kind(v)
            .ok_or_else(|| bad(format!("kind: expected viewed or bought, got {v:?}")))?,
    };
    let measure = match params.get("measure") {
        None => Measure::Cosine,
        Some(v) => Measure::parse(v).ok_or_else(|| {
            bad(format!(
                "measure: expected count, jaccard, cosine, lift or llr, got {v:?}"
            ))
        })?,
    };
    Ok(SimilarQuery {
        k,
        kind,
        measure,
        at: read_at(params)?,
    })
}

async fn get_similar(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let started = Instant::now();
    if let Some(off) = switched_off(&engine, "similar items") {
        return off;
    }
    let q = match parse_query(&params) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let read = match read(&engine, &id, q.kind, q.measure, q.k, q.at).await {
        Ok(r) => r,
        Err(e) => return engine_error(e),
    };
    // How far reads go down the partner lists (see the view's `index`).
    metrics::counter!("shopstream_similar_partners_read_total")
        .increment(read.similar.examined as u64);
    let response = if !read.similar.seen {
        not_found_at(format!("unknown item {id:?}"), read.as_of.seq)
    } else {
        let similar = render_ranked(&engine, &read.similar.similar);
        Json(json!({
            "item_id": id,
            "kind": kind_name(q.kind),
            "measure": q.measure.name(),
            "as_of": read.as_of.seq,
            "n": read.similar.n,
            "units": read.similar.units,
            "similar": similar,
        }))
        .into_response()
    };
    metrics::histogram!("shopstream_query_seconds", "kind" => "similar")
        .record(started.elapsed().as_secs_f64());
    response
}

/// Items one bundle question may name at most.
pub const MAX_BUNDLE_ITEMS: usize = 20;

/// What `bundles` answers: the items bought with every one of `items`, each with
/// the sum of its `bought` counts with them (`score`) and the least of those
/// counts (`count`), ranked as `similar` ranks; `Err(id)` names an item no event
/// ever named.
#[derive(Clone, Debug)]
pub struct BundlesRead {
    pub as_of: Readable,
    pub bundles: Result<Vec<(ItemId, f64, i64)>, String>,
}

/// The `k` items most often bought with all of `items` (distinct, as
/// [`parse_items`] makes them), read at one epoch on every worker (each reads the
/// given items it owns).
pub async fn bundles(
    engine: &Engine,
    items: &[String],
    k: usize,
    at: impl Into<ReadAt>,
) -> Result<BundlesRead, EngineError> {
    let ids: Vec<ItemId> = items.iter().map(|i| intern(i)).collect();
    let asked = ids.clone();
    let (as_of, parts) = engine
        .read(at, None, Route::All, move |v: &mut SimilarityView, cx| {
            v.partners_owned(&asked, BOUGHT, cx)
        })
        .await?;
    let by_item: HashMap<ItemId, ItemPartners> =
        parts.into_iter().flatten().map(|p| (p.item, p)).collect();
    let mut totals: HashMap<ItemId, (i64, i64, usize)> = HashMap::new();
    for (name, id) in items.iter().zip(&ids) {
        match by_item.get(id) {
            Some(p) if p.seen => {
                for (b, c) in &p.partners {
                    let t = totals.entry(*b).or_insert((0, i64::MAX, 0));
                    *t = (t.0 + c, t.1.min(*c), t.2 + 1);
                }
            }
            _ => {
                return Ok(BundlesRead {
                    as_of,
                    bundles: Err(name.clone()),
                })
            }
        }
    }
    let scored = totals
        .into_iter()
        .filter(|(b, t)| t.2 == ids.len() && !ids.contains(b))
        .map(|(b, (sum, least, _))| (b, sum as f64, least))
        .collect();
    Ok(BundlesRead {
        as_of,
        bundles: Ok(rank(scored, k, &engine.names())),
    })
}

/// The given items of a bundle question: `items=a,b` split at commas, trimmed,
/// each once, in their order.
pub fn parse_items(raw: &str) -> Vec<String> {
    let mut once = std::collections::HashSet::new();
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty() && once.insert(*s))
        .map(str::to_owned)
        .collect()
}

fn parse_bundles_query(
    params: &HashMap<String, String>,
) -> Result<(Vec<String>, usize, ReadAt), Response> {
    only(params, &["items", "k", "min_seq", "as_of"])?;
    let items = params
        .get("items")
        .map_or_else(Vec::new, |v| parse_items(v));
    if items.is_empty() || items.len() > MAX_BUNDLE_ITEMS {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("items: expected 1 to {MAX_BUNDLE_ITEMS} product ids, comma-separated"),
        ));
    }
    Ok((items, parse_k(params)?, read_at(params)?))
}

async fn get_bundles(
    State(engine): State<Arc<Engine>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let started = Instant::now();
    if let Some(off) = switched_off(&engine, "bundles") {
        return off;
    }
    let (items, k, at) = match parse_bundles_query(&params) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let read = match bundles(&engine, &items, k, at).await {
        Ok(r) => r,
        Err(e) => return engine_error(e),
    };
    let response = match read.bundles {
        Err(unknown) => not_found_at(format!("unknown item {unknown:?}"), read.as_of.seq),
        Ok(list) => {
            let bundles = render_ranked(&engine, &list);
            Json(json!({"items": items, "kind": "bought", "as_of": read.as_of.seq, "bundles": bundles}))
                .into_response()
        }
    };
    metrics::histogram!("shopstream_query_seconds", "kind" => "bundles")
        .record(started.elapsed().as_secs_f64());
    response
}
