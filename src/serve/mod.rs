//! Queries over HTTP: one module per query kind, plus health and metrics.
//!
//! Every answer is read from the arrangements at one complete epoch and says which
//! (`as_of`: the last sequence number it includes): the newest (after `min_seq`), or a
//! recent one named by `as_of` (see [`read_at`]). Unknown ids are 404, bad
//! parameters 400, a `min_seq` the views do not reach in time 504, overload 503;
//! every error is a JSON object `{"error": "..."}`.

pub mod profile;
pub mod segments;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;

use crate::ingest;
use crate::runtime::{Engine, EngineError, ReadAt};

/// A JSON error answer.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

/// Maps engine errors to HTTP answers.
pub fn engine_error(e: EngineError) -> Response {
    let status = match &e {
        EngineError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        EngineError::AsOfGone { .. } => StatusCode::GONE,
        EngineError::AsOfBeforeDefinition { .. } => StatusCode::NOT_FOUND,
        EngineError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    let mut body = json!({"error": e.to_string()});
    if let EngineError::Timeout { reached, .. } = e {
        body["as_of"] = json!(reached);
    }
    (status, Json(body)).into_response()
}

/// Parses where a read is at from its query string: `min_seq=N` (the newest
/// point, once it includes event `N`) and/or `as_of=N` (the newest kept point
/// whose `as_of` is at most `N`: a recent past, while `http.as_of_history` keeps
/// it), with a clear 400 when either is not a number.
pub fn read_at(params: &HashMap<String, String>) -> Result<ReadAt, Response> {
    let number = |key: &str| -> Result<Option<u64>, Response> {
        match params.get(key) {
            None => Ok(None),
            Some(v) => v.parse::<u64>().map(Some).map_err(|_| {
                error(
                    StatusCode::BAD_REQUEST,
                    format!("{key}: expected a non-negative integer, got {v:?}"),
                )
            }),
        }
    };
    Ok(ReadAt {
        min_seq: number("min_seq")?,
        as_of: number("as_of")?,
    })
}

/// The process-wide Prometheus recorder (installed once; tests start many servers).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05,
                    0.1, 0.25, 1.0,
                ])
                .expect("buckets")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may exist when embedded; then ours just stays empty.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

async fn metrics_text(State(_engine): State<Arc<Engine>>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        metrics_handle().render(),
    )
        .into_response()
}

async fn healthz(State(engine): State<Arc<Engine>>) -> Response {
    let r = engine.readable();
    let healthy = engine.healthy();
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "status": if healthy { "ok" } else if engine.worker_failed() { "worker_failed" } else { "log_failed" },
            "as_of": r.seq,
            "logged_seq": engine.logged_seq(),
            "clock": profile::rfc3339(r.clock),
            "workers": engine.config.workers,
        })),
    )
        .into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such endpoint")
}

/// Caps requests in flight (`http.max_concurrent_requests`); beyond it, 503 at
/// once, so a flood of slow requests cannot hold unbounded bodies in memory.
async fn limit_concurrency(
    State(permits): State<Arc<tokio::sync::Semaphore>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match permits.try_acquire() {
        Ok(_permit) => next.run(request).await,
        Err(_) => {
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded: too many HTTP requests in flight (http.max_concurrent_requests)",
            );
            r.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
            r
        }
    }
}

async fn method_not_allowed() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this endpoint",
    )
}

/// The HTTP API: ingest, queries, health and metrics.
pub fn router(engine: Arc<Engine>) -> Router {
    let permits = Arc::new(tokio::sync::Semaphore::new(
        engine.config.max_concurrent_requests,
    ));
    Router::new()
        .route("/v1/batch", post(ingest::http::batch))
        .route("/v1/track", post(ingest::http::track))
        .route("/v1/identify", post(ingest::http::identify))
        .route("/v1/users/{id}/profile", get(profile::get_profile))
        .route("/v1/users/{id}/segments", get(segments::of_user))
        .route("/v1/segments", get(segments::list).post(segments::create))
        .route(
            "/v1/segments/{name}",
            get(segments::show)
                .put(segments::replace)
                .delete(segments::delete),
        )
        .route("/v1/segments/{name}/members", get(segments::members))
        .route(
            "/v1/segments/{name}/contains/{user}",
            get(segments::contains),
        )
        .route("/v1/stream/segments", get(segments::stream))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Bodies are limited by the ingest handlers themselves, with a JSON 413.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(
            permits,
            limit_concurrency,
        ))
        .with_state(engine)
}
