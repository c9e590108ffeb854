//! `GET /healthz` and `GET /metrics` (Prometheus text).

use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;

use crate::reply::rfc3339;
use crate::runtime::Engine;

pub fn routes() -> Router<Arc<Engine>> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
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
    let fault = engine.log_fault();
    let status = if healthy && fault.is_none() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = json!({
        "status": if !healthy { if engine.worker_failed() { "worker_failed" } else { "log_failed" } }
            else if fault.is_some() { "degraded" } else { "ok" },
        "as_of": r.seq,
        "logged_seq": engine.logged_seq(),
        "clock": rfc3339(r.clock),
        "workers": engine.config.workers,
    });
    // Log writes failing and retried: reads work, ingest is refused meanwhile.
    if let Some(reason) = fault {
        body["reason"] = json!(reason);
    }
    (status, Json(body)).into_response()
}
