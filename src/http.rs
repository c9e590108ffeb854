//! The HTTP API in one router: ingest, every view's endpoints, health and
//! metrics, with the limits every request shares.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Router;

use crate::reply::error;
use crate::runtime::Engine;
use crate::serve::ServeView;

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such endpoint")
}

async fn method_not_allowed() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this endpoint",
    )
}

/// Caps requests in flight (per group of routes); beyond it, 503 at once, so a
/// flood of slow requests cannot hold unbounded bodies in memory.
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
                "overloaded: too many HTTP requests of this kind in flight (http.max_concurrent_ingest for ingest, http.max_concurrent_requests for the rest)",
            );
            r.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
            r
        }
    }
}

/// The HTTP API: ingest, the endpoints of every view in `views`, health and metrics.
///
/// Ingest and everything else have limits of their own
/// (`http.max_concurrent_ingest`, `http.max_concurrent_requests`), so that slow
/// or stalled ingest bodies cannot starve reads; `/healthz` and `/metrics` are
/// under neither, so a full server still says how it is.
pub fn router(engine: Arc<Engine>, views: &[Arc<dyn ServeView>]) -> Router {
    let limit = |n: usize| {
        axum::middleware::from_fn_with_state(
            Arc::new(tokio::sync::Semaphore::new(n)),
            limit_concurrency,
        )
    };
    let ingest = crate::ingest::http::routes()
        // Bodies are limited by the ingest handlers themselves, with a JSON 413.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(limit(engine.config.max_concurrent_ingest));
    let mut reads = Router::new();
    for view in views {
        reads = reads.merge(view.routes());
    }
    let reads = reads.layer(limit(engine.config.max_concurrent_requests));
    Router::new()
        .merge(ingest)
        .merge(reads)
        .merge(crate::serve::health::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(engine)
}
