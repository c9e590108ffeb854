//! HTTP replies every handler shares, ingest and views alike: JSON errors, the
//! one mapping of engine errors to status codes, read positions (`min_seq`,
//! `as_of`), and the rendering of times and money.
//!
//! Unknown ids are 404, bad parameters 400, a `min_seq` the views do not reach in
//! time 504, a past point no longer kept 410, overload 503 with `Retry-After`;
//! every error is a JSON object `{"error": "...", "code": "...", "message": "..."}`
//! (`code` and `message` are what the Segment and RudderStack SDKs read from a
//! failed request: without them they report a `KeyError` instead of the reason).

use std::collections::HashMap;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use shopstream_dataflows::types::Millis;

use crate::runtime::{EngineError, ReadAt, Unavailable};
use crate::snapshot::SnapshotError;

/// A JSON error answer.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(error_body(status, message.into()))).into_response()
}

/// The 404 of an endpoint whose view is switched off by `switch` (a config key),
/// saying so; `None` when it is on.
pub fn switched_off(on: bool, what: &str, switch: &str) -> Option<Response> {
    (!on).then(|| {
        error(
            StatusCode::NOT_FOUND,
            format!("{what} are switched off ({switch} = false)"),
        )
    })
}

/// A 404 for a key unknown at a read's epoch, saying which epoch
/// (`x-shopstream-as-of`), so that a client can wait for a later one.
pub fn not_found_at(message: impl Into<String>, as_of: u64) -> Response {
    let mut r = error(StatusCode::NOT_FOUND, message);
    r.headers_mut()
        .insert("x-shopstream-as-of", HeaderValue::from(as_of));
    r
}

/// `{"error": message, "code": "bad_request", "message": message}`: the code is
/// the status's reason in snake case.
fn error_body(status: StatusCode, message: String) -> Value {
    let code = status
        .canonical_reason()
        .unwrap_or("error")
        .to_ascii_lowercase()
        .replace([' ', '-'], "_");
    json!({"error": message, "code": code, "message": message})
}

/// The HTTP status of an engine error: the one place this is decided.
pub fn status_of(e: &EngineError) -> StatusCode {
    match e {
        EngineError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        EngineError::AsOfGone { .. } => StatusCode::GONE,
        EngineError::AsOfBeforeDefinition { .. } => StatusCode::NOT_FOUND,
        EngineError::Definition(_) => StatusCode::BAD_REQUEST,
        EngineError::Snapshot(SnapshotError::Busy | SnapshotError::Empty) => StatusCode::CONFLICT,
        EngineError::Snapshot(SnapshotError::LogFailed | SnapshotError::WorkerGone) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        EngineError::Snapshot(_) => StatusCode::INTERNAL_SERVER_ERROR,
        EngineError::Overloaded(_)
        | EngineError::Unavailable(_)
        | EngineError::ShuttingDown
        | EngineError::Log(_)
        | EngineError::NoSuchView(_)
        | EngineError::Timely(_)
        | EngineError::Replay(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// An engine error as an HTTP answer (a timeout says how far the views got;
/// overload asks the client to retry).
pub fn engine_error(e: EngineError) -> Response {
    let status = status_of(&e);
    let mut body = error_body(status, e.to_string());
    if let EngineError::Timeout { reached, .. } = e {
        body["as_of"] = json!(reached);
    }
    let mut r = (status, Json(body)).into_response();
    // Both pass: the queue drains, the log is retried (a full disk, say).
    if matches!(
        e,
        EngineError::Overloaded(_) | EngineError::Unavailable(Unavailable::LogWrite(_))
    ) {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
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

/// Minor units as a JSON number in major units, exact: the shortest decimal that
/// round-trips an `f64` of `minor / 10^digits` is that decimal itself.
pub fn money(minor: i64, digits: u32) -> Value {
    let scale = 10f64.powi(digits as i32);
    json!((minor as f64) / scale)
}

/// RFC 3339 text of a millisecond timestamp; `null` for "never".
pub fn rfc3339(ms: Millis) -> Value {
    if ms == Millis::MIN || ms == Millis::MAX {
        return Value::Null;
    }
    let nanos = i128::from(ms) * 1_000_000;
    match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) => t
            .format(&time::format_description::well_known::Rfc3339)
            .map_or(Value::Null, Value::String),
        Err(_) => Value::Null,
    }
}

/// Names, in an answer read for the id `requested`, the user it is for: the
/// identity's canonical id as `user_id`, its merged ids as `ids`, and, when the
/// id asked for is one of those merged ids, the user as `belongs_to`.
pub fn identify(body: &mut Value, requested: &str, identity: Option<&crate::identity::Identity>) {
    let user = identity.map_or(requested, |i| i.canonical.as_str());
    body["user_id"] = json!(user);
    let ids: Vec<&str> = identity
        .map(|i| i.ids.iter().map(|(id, _)| id.as_str()).collect())
        .unwrap_or_default();
    body["ids"] = json!(ids);
    if user != requested {
        body["belongs_to"] = json!(user);
    }
}
