//! `GET /v1/users/{id}/identity[?min_seq=N][?as_of=N]`: the identity an id
//! belongs to (see [`crate::identity`]), at the same `as_of` as the views.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::identity::{LinkedAt, Outcome};
use crate::reply::{engine_error, error, read_at, rfc3339};
use crate::runtime::Engine;

pub fn routes() -> Router<Arc<Engine>> {
    Router::new().route("/v1/users/{id}/identity", get(identity))
}

fn linked_at(at: LinkedAt) -> Value {
    json!({"as_of": at.seq, "time": rfc3339(at.ts)})
}

/// `{"user_id": CANONICAL, "belongs_to"?: CANONICAL, "ids": [{"id", "linked_at"}],
/// "unmerged": [{"id", "user", "linked_at", "outcome", "reason"}], "as_of"}`; 404
/// when no link names the id.
async fn identity(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let at = match read_at(&params) {
        Ok(at) => at,
        Err(r) => return r,
    };
    let readable = match at.min_seq.max(at.as_of) {
        Some(seq) => match engine
            .wait_for_seq(seq, engine.config.min_seq_timeout)
            .await
        {
            Ok(r) => r,
            Err(e) => return engine_error(e),
        },
        None => engine.readable(),
    };
    let as_of = at.as_of.unwrap_or(readable.seq).min(readable.seq);
    let Some(found) = engine.identity(&id, as_of) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no identity link names {id:?} (as of {as_of})"),
        );
    };
    let ids: Vec<Value> = found
        .ids
        .iter()
        .map(|(i, at)| json!({"id": i, "linked_at": linked_at(*at)}))
        .collect();
    let unmerged: Vec<Value> = found
        .unmerged
        .iter()
        .map(|l| {
            let reason = match &l.outcome {
                Outcome::Conflict { to } => format!(
                    "{} already belongs to {to}: the first link wins, a conflicting one is not merged",
                    l.id
                ),
                Outcome::Refused => format!(
                    "{} has {} ids merged already (identity.max_ids_per_user)",
                    l.user, engine.config.max_ids_per_user
                ),
                Outcome::Linked => String::new(),
            };
            json!({"id": l.id, "user": l.user, "linked_at": linked_at(l.at),
                   "outcome": l.outcome.name(), "reason": reason})
        })
        .collect();
    let mut body = json!({
        "user_id": found.canonical,
        "ids": ids,
        "unmerged": unmerged,
        "as_of": as_of,
    });
    if found.canonical != id.as_str() {
        body["belongs_to"] = json!(found.canonical);
    }
    (StatusCode::OK, Json(body)).into_response()
}
