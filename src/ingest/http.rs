//! HTTP ingest: `POST /v1/batch` (Segment's `{"batch": [...]}`), `POST /v1/track`,
//! `POST /v1/identify`.
//!
//! Answers `{"accepted": N, "rejected": [{"index": i, "reason": "..."}], "seq": SEQ,
//! "duplicates": D}` once the accepted events are durable. A body over
//! `ingest.max_batch_bytes` is 413, a body that is not a batch is 400, a full queue is
//! 503 "overloaded" (retry later); none of these log anything.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use super::{count_refusal, Refusal, Validator};
use crate::event::{Event, MessageType};
use crate::reply::{engine_error, error};
use crate::runtime::Engine;

/// `POST /v1/batch`, `/v1/track`, `/v1/identify`, `/v1/alias`.
pub fn routes() -> axum::Router<Arc<Engine>> {
    use axum::routing::post;
    axum::Router::new()
        .route("/v1/batch", post(batch))
        .route("/v1/track", post(track))
        .route("/v1/identify", post(identify))
        .route("/v1/alias", post(alias))
}

pub async fn batch(State(engine): State<Arc<Engine>>, headers: HeaderMap, body: Body) -> Response {
    let bytes = match read_body(&engine, &headers, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    match batch_messages(&bytes) {
        Ok(messages) => ingest(&engine, &messages, None).await,
        Err(e) => error(
            StatusCode::BAD_REQUEST,
            format!("body must be {{\"batch\": [message, ...]}}: {e}"),
        ),
    }
}

/// The messages of a `/v1/batch` body, each as its raw JSON text (validated one by
/// one afterwards, so one bad message does not refuse the batch); an error when the
/// body is not an object with one `batch` array.
pub fn batch_messages(body: &[u8]) -> Result<Vec<&[u8]>, serde_json::Error> {
    #[derive(Deserialize)]
    struct Batch<'a> {
        #[serde(borrow)]
        batch: Vec<&'a RawValue>,
    }
    // serde's derived `Deserialize` also reads a struct from a JSON array of its
    // fields, so `[[m1, m2]]` would pass for a batch (found by tests/fuzz.rs):
    // only an object is one.
    let first = body
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first == Some(&b'[') {
        return Err(serde::de::Error::custom("got a JSON array, not an object"));
    }
    let parsed: Batch<'_> = serde_json::from_slice(body)?;
    Ok(parsed.batch.iter().map(|m| m.get().as_bytes()).collect())
}

/// Validates each message: the valid events, and the index and reason of each
/// refused one. Every message is one or the other.
pub fn validate(
    validator: &Validator,
    messages: &[&[u8]],
    default: Option<MessageType>,
) -> (Vec<Event>, Vec<(usize, Refusal)>) {
    let mut events = Vec::with_capacity(messages.len());
    let mut rejected = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        match validator.parse(m, default) {
            Ok(ev) => events.push(ev),
            Err(r) => rejected.push((i, r)),
        }
    }
    (events, rejected)
}

pub async fn track(State(engine): State<Arc<Engine>>, headers: HeaderMap, body: Body) -> Response {
    single(engine, headers, body, MessageType::Track).await
}

pub async fn identify(
    State(engine): State<Arc<Engine>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    single(engine, headers, body, MessageType::Identify).await
}

/// Segment's alias call: `previousId` is the same person as `userId`.
pub async fn alias(State(engine): State<Arc<Engine>>, headers: HeaderMap, body: Body) -> Response {
    single(engine, headers, body, MessageType::Alias).await
}

async fn single(engine: Arc<Engine>, headers: HeaderMap, body: Body, t: MessageType) -> Response {
    match read_body(&engine, &headers, body).await {
        Ok(bytes) => ingest(&engine, &[&bytes[..]], Some(t)).await,
        Err(r) => r,
    }
}

/// Reads the body up to the limit, within `http.body_timeout_ms`: over the limit,
/// 413; a body that stops arriving, 408 (and the connection closes); a malformed
/// one (a bad chunk size), 400. Each with its reason.
async fn read_body(engine: &Engine, headers: &HeaderMap, body: Body) -> Result<Bytes, Response> {
    let max = engine.config.max_batch_bytes;
    let too_large = |n: Option<usize>| {
        let size = n.map_or("larger".to_string(), |n| format!("{n} bytes"));
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is {size}, over the {max}-byte limit (ingest.max_batch_bytes)"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(n) = declared.filter(|n| *n > max) {
        return Err(too_large(Some(n)));
    }
    let encoding = content_encoding(headers)?;
    let timeout = engine.config.body_timeout;
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, max)).await {
        Ok(Ok(bytes)) if encoding == Encoding::Gzip => gunzip(&bytes, max),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            let e = e.into_inner();
            if e.is::<http_body_util::LengthLimitError>() {
                Err(too_large(None))
            } else {
                Err(error(
                    StatusCode::BAD_REQUEST,
                    format!("malformed request body: {e}"),
                ))
            }
        }
        Err(_) => {
            metrics::counter!("shopstream_http_body_timeouts_total").increment(1);
            let mut r = error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} ms (http.body_timeout_ms)",
                    timeout.as_millis()
                ),
            );
            r.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            Err(r)
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Identity,
    Gzip,
}

/// The body's `Content-Encoding`: none (or `identity`) or `gzip`; anything else
/// is refused with 415 and the encodings accepted.
fn content_encoding(headers: &HeaderMap) -> Result<Encoding, Response> {
    let Some(v) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(Encoding::Identity);
    };
    match v.to_str().map(|s| s.trim().to_ascii_lowercase()) {
        Ok(s) if s.is_empty() || s == "identity" => Ok(Encoding::Identity),
        Ok(s) if s == "gzip" || s == "x-gzip" => Ok(Encoding::Gzip),
        _ => Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Encoding {v:?} is not supported; send gzip or no encoding"),
        )),
    }
}

/// Decompresses a gzip body, refusing one that inflates past `max` bytes (413)
/// or is not gzip (400).
fn gunzip(bytes: &[u8], max: usize) -> Result<Bytes, Response> {
    use std::io::Read;
    let mut out = Vec::with_capacity(bytes.len().saturating_mul(4).min(max));
    let mut decoder = flate2::read::GzDecoder::new(bytes).take(max as u64 + 1);
    if let Err(e) = decoder.read_to_end(&mut out) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("Content-Encoding gzip, but the body does not decompress: {e}"),
        ));
    }
    if out.len() > max {
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the decompressed request body is over the {max}-byte limit (ingest.max_batch_bytes)"),
        ));
    }
    Ok(out.into())
}

async fn ingest(engine: &Engine, messages: &[&[u8]], default: Option<MessageType>) -> Response {
    let (events, refused) = validate(&Validator::new(&engine.config), messages, default);
    let rejected: Vec<_> = refused
        .iter()
        .map(|(i, r)| {
            count_refusal(r);
            json!({"index": i, "reason": r.to_string()})
        })
        .collect();
    let accepted = events.len();
    let ack = if events.is_empty() {
        None
    } else {
        match engine.try_submit(events).await {
            Ok(a) => Some(a),
            // 503; with Retry-After when only overloaded.
            Err(e) => return engine_error(e),
        }
    };
    let (seq, duplicates) = ack.map_or((engine.logged_seq(), 0), |a| {
        (a.last_seq, a.duplicates.len())
    });
    let status = if accepted == 0 && !rejected.is_empty() && default.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    (
        status,
        // `success` is what Segment's own API answers, and its clients read.
        Json(json!({"success": status == StatusCode::OK, "accepted": accepted, "rejected": rejected, "seq": seq, "duplicates": duplicates})),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::batch_messages;

    #[test]
    fn a_batch_is_an_object_not_an_array_of_its_fields() {
        let e = batch_messages(b" [[{}]]").expect_err("an array body");
        assert!(e.to_string().contains("not an object"), "{e}");
        assert_eq!(
            batch_messages(b"{\"batch\": [{}, 1]}")
                .expect("a batch")
                .len(),
            2
        );
        let e = batch_messages(b"{\"batch\": [], \"batch\": []}").expect_err("two batches");
        assert!(e.to_string().contains("duplicate field"), "{e}");
    }
}
