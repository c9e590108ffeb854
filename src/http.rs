//! The HTTP API in one router: ingest, every view's endpoints, health and
//! metrics, with the limits every request shares; and the accept loop that
//! serves it, with a header read timeout (`http.header_timeout_ms`) so that a
//! connection that never finishes its request head is closed.

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
    let mut reads = crate::serve::admin::routes();
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

/// Serves `app` on `listener` until `stop` resolves, then lets open connections
/// finish (the caller bounds how long). Each connection must send its request
/// head within `header_timeout`, or it is closed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    header_timeout: std::time::Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower_service::Service as _;

    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "http accept failed");
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(
            move |req: axum::extract::Request<hyper::body::Incoming>| {
                let mut app = app.clone();
                async move { app.call(req.map(axum::body::Body::new)).await }
            },
        );
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "http connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
}
