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
use shopstream_dataflows::types::{intern, Millis, DAY_MS};
use shopstream_dataflows::view::Env;
use shopstream_dataflows::views::similarity::{
    Kind, Measure, Similar, SimilaritySettings, SimilarityView, BOUGHT, MAX_K, VIEWED,
};

use super::view::ServeView;
use crate::reply::{engine_error, error, read_at};
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
            max_user_events_per_day: s.max_user_events_per_day as i64,
            max_order_items: s.max_order_items,
            order_horizon: cx.config.order_horizon,
        });
    }
}

impl ServeView for Similarity {
    fn routes(&self) -> Router<Arc<Engine>> {
        Router::new().route("/v1/items/{id}/similar", get(get_similar))
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

fn parse_kind(s: &str) -> Option<Kind> {
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

fn parse_query(params: &HashMap<String, String>) -> Result<SimilarQuery, Response> {
    let bad = |m: String| error(StatusCode::BAD_REQUEST, m);
    if let Some(key) = params
        .keys()
        .find(|k| !matches!(k.as_str(), "k" | "kind" | "measure" | "min_seq" | "as_of"))
    {
        return Err(bad(format!(
            "unknown parameter {key:?} (expected k, kind, measure, min_seq, as_of)"
        )));
    }
    let k = match params.get("k") {
        None => 10,
        Some(v) => match v.parse::<usize>() {
            Ok(k) if (1..=MAX_K).contains(&k) => k,
            _ => return Err(bad(format!("k: expected 1 to {MAX_K}, got {v:?}"))),
        },
    };
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
    if !engine.config.similarity.enabled {
        return error(
            StatusCode::NOT_FOUND,
            "similar items are switched off (similarity.enabled = false)",
        );
    }
    let q = match parse_query(&params) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let read = match read(&engine, &id, q.kind, q.measure, q.k, q.at).await {
        Ok(r) => r,
        Err(e) => return engine_error(e),
    };
    let response = if !read.similar.seen {
        let mut r = error(StatusCode::NOT_FOUND, format!("unknown item {id:?}"));
        if let Ok(v) = read.as_of.seq.to_string().parse() {
            r.headers_mut().insert("x-shopstream-as-of", v);
        }
        r
    } else {
        let similar: Vec<_> = read
            .similar
            .similar
            .iter()
            .map(|(item, score, count)| {
                json!({
                    "item_id": engine.symbols.resolve(*item).unwrap_or_else(|| format!("#{item:016x}")),
                    "score": score,
                    "count": count,
                })
            })
            .collect();
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
