//! The views' host halves: one file per view with its endpoints, the services
//! its dataflow needs and its definitions at start; plus the change feed and
//! health. [`views`] is the one registration list.
//!
//! Every answer is read from the view's arrangements at one complete epoch and
//! says which (`as_of`: the last sequence number it includes): the newest (after
//! `min_seq`), or a recent one named by `as_of` (see [`crate::reply::read_at`]).
//!
//! To add a view: its dataflow file in `dataflows/src/views/` (one line in
//! `views::build`), its file here implementing [`ServeView`] (one line in
//! [`views`]), its oracle test, its README section.

pub mod feed;
pub mod health;
pub mod profile;
pub mod segments;

use std::sync::Arc;

use axum::Router;

use crate::runtime::{Engine, ViewHost};

/// A view's host half: what the engine needs ([`ViewHost`]) and its endpoints.
pub trait ServeView: ViewHost {
    /// The view's HTTP endpoints, merged into the one router (`crate::http`).
    fn routes(&self) -> Router<Arc<Engine>>;
}

/// Every view, in the order their dataflows are built.
pub fn views() -> Vec<Arc<dyn ServeView>> {
    vec![Arc::new(profile::Profiles), Arc::new(segments::Segments)]
}

/// The engine's side of every view in [`views`] (what `Engine::start` takes).
pub fn all_hosts() -> Vec<Arc<dyn ViewHost>> {
    hosts(&views())
}

/// The engine's side of [`views`].
pub fn hosts(views: &[Arc<dyn ServeView>]) -> Vec<Arc<dyn ViewHost>> {
    views
        .iter()
        .map(|v| v.clone() as Arc<dyn ViewHost>)
        .collect()
}
