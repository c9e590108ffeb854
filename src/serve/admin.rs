//! Operator endpoints: `POST /v1/admin/snapshot` writes a snapshot now (what
//! `shopstream snapshot` calls) and answers once it is durable.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;

use crate::reply::engine_error;
use crate::runtime::Engine;

pub fn routes() -> Router<Arc<Engine>> {
    Router::new().route("/v1/admin/snapshot", post(snapshot))
}

/// `{"epoch", "as_of", "path", "bytes", "millis", "removed_log_files"}` (201);
/// 409 while another snapshot is being written or before anything is logged.
async fn snapshot(State(engine): State<Arc<Engine>>) -> Response {
    match engine.snapshot().await {
        Ok(info) => (
            StatusCode::CREATED,
            Json(json!({
                "epoch": info.epoch,
                "as_of": info.seq,
                "path": info.path.display().to_string(),
                "bytes": info.bytes,
                "millis": info.millis,
                "removed_log_files": info.removed_log_files,
            })),
        )
            .into_response(),
        Err(e) => engine_error(e),
    }
}
