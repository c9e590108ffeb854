//! The HTTP API in one router: ingest, every view's endpoints, health and
//! metrics, with the limits every request shares and the scope each route needs;
//! and the accept loop that serves it (over TLS when configured), with a header
//! read timeout (`http.header_timeout_ms`) so that a connection that never
//! finishes its request head is closed.
//!
//! Scopes, when access control is on ([`crate::auth`]): ingest routes need
//! `ingest`; every `GET` (or `HEAD`) of a view needs `query`; any other method on
//! a view's routes (defining, changing, dropping, erasing) needs `admin`;
//! `/healthz` and `/metrics` are open or need `query` (`auth.public_health`,
//! `auth.public_metrics`). The check runs before the concurrency limits, so
//! unauthenticated requests take no permit.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::Router;

use crate::auth::{token_from_authorization, Auth, Denied, Scope};
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

/// Which scope a request needs (`None`: open), by the group of routes it is in.
type ScopeOf = fn(&Auth, &axum::extract::Request) -> Option<Scope>;

#[derive(Clone)]
struct Guard {
    auth: Arc<Auth>,
    scope_of: ScopeOf,
}

/// Lets a request through if its `Authorization` carries a token with the scope
/// its route needs; otherwise 401 (no known token, with `WWW-Authenticate`) or 403.
async fn require_scope(
    State(guard): State<Guard>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(scope) = (guard.scope_of)(&guard.auth, &request) else {
        return next.run(request).await;
    };
    let presented = match request.headers().get(header::AUTHORIZATION) {
        None => None,
        Some(v) => match token_from_authorization(v.as_bytes()) {
            Ok(token) => Some(token),
            Err(denied) => return refuse(&denied),
        },
    };
    match guard.auth.check(presented.as_deref(), scope) {
        Ok(_) => next.run(request).await,
        Err(denied) => refuse(&denied),
    }
}

fn refuse(denied: &Denied) -> Response {
    metrics::counter!("shopstream_auth_refused_total", "transport" => "http").increment(1);
    if denied.is_forbidden() {
        return error(StatusCode::FORBIDDEN, denied.to_string());
    }
    let mut r = error(StatusCode::UNAUTHORIZED, denied.to_string());
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(r#"Bearer realm="shopstream""#),
    );
    r
}

fn ingest_scope(_: &Auth, _: &axum::extract::Request) -> Option<Scope> {
    Some(Scope::Ingest)
}

fn view_scope(_: &Auth, request: &axum::extract::Request) -> Option<Scope> {
    Some(match *request.method() {
        Method::GET | Method::HEAD => Scope::Query,
        _ => Scope::Admin,
    })
}

fn health_scope(auth: &Auth, request: &axum::extract::Request) -> Option<Scope> {
    let public = if request.uri().path() == "/metrics" {
        auth.public_metrics
    } else {
        auth.public_health
    };
    (!public).then_some(Scope::Query)
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
    let auth = Arc::new(engine.config.auth.clone());
    // Outermost, so that it runs first; not there at all when access control is off.
    let guard = |routes: Router<Arc<Engine>>, scope_of: ScopeOf| {
        if !auth.enabled() {
            return routes;
        }
        let guard = Guard {
            auth: auth.clone(),
            scope_of,
        };
        routes.layer(axum::middleware::from_fn_with_state(guard, require_scope))
    };
    let ingest = crate::ingest::http::routes()
        // Bodies are limited by the ingest handlers themselves, with a JSON 413.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(limit(engine.config.max_concurrent_ingest));
    let mut reads = crate::serve::admin::routes().merge(crate::serve::identity::routes());
    for view in views {
        reads = reads.merge(view.routes());
    }
    let reads = reads.layer(limit(engine.config.max_concurrent_requests));
    Router::new()
        .merge(guard(ingest, ingest_scope))
        .merge(guard(reads, view_scope))
        .merge(guard(crate::serve::health::routes(), health_scope))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(engine)
}

/// Serves `app` on `listener` until `stop` resolves, then lets open connections
/// finish (the caller bounds how long). Each connection must send its request
/// head within `header_timeout`, or it is closed. With `tls`, each connection
/// first completes a TLS handshake within the given time, or is dropped. At most
/// `max_connections` are open at once: one more is closed at once, so that
/// keep-alive or handshaking connections cannot use up the process's files.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    header_timeout: std::time::Duration,
    tls: Option<(tokio_rustls::TlsAcceptor, std::time::Duration)>,
    max_connections: usize,
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
    let open = Arc::new(tokio::sync::Semaphore::new(max_connections));
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "http accept failed");
                    // Out of file descriptors, say: do not spin on it.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let Ok(slot) = open.clone().try_acquire_owned() else {
            metrics::counter!("shopstream_http_connections_refused_total").increment(1);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(
            move |req: axum::extract::Request<hyper::body::Incoming>| {
                let mut app = app.clone();
                async move { app.call(req.map(axum::body::Body::new)).await }
            },
        );
        let (builder, watcher, tls) = (builder.clone(), graceful.watcher(), tls.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let served = match tls {
                None => {
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    watcher.watch(conn.into_owned()).await
                }
                Some((acceptor, timeout)) => {
                    let Some(stream) =
                        crate::tls::handshake(&acceptor, stream, timeout, peer).await
                    else {
                        return;
                    };
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    watcher.watch(conn.into_owned()).await
                }
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "http connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
}
