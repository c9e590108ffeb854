//! What a view registers on the serving side: the engine's part ([`ViewHost`])
//! and its endpoints.

use std::sync::Arc;

use axum::Router;

use crate::runtime::{Engine, ViewHost};

/// A view's host half: what the engine needs ([`ViewHost`]) and its endpoints.
pub trait ServeView: ViewHost {
    /// The view's HTTP endpoints, merged into the one router (`crate::http`).
    fn routes(&self) -> Router<Arc<Engine>>;
}
