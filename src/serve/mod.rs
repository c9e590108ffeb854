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

pub mod admin;
pub mod feed;
pub mod health;
pub mod identity;
pub mod profile;
pub mod recommend;
pub mod segments;
pub mod similarity;
mod view;

use std::sync::Arc;

use crate::runtime::ViewHost;

pub use view::ServeView;

/// Every view's host half. The order does not matter (the dataflows are built in
/// the order of `shopstream_dataflows::views::build`), but a view registered
/// there and missing here has no endpoints, and one here that is missing there
/// answers every read with `NoSuchView` (503): `tests/views.rs` and each view's
/// tests read through both.
pub fn views() -> Vec<Arc<dyn ServeView>> {
    vec![
        Arc::new(profile::Profiles),
        Arc::new(segments::Segments),
        Arc::new(similarity::Similarity),
        Arc::new(recommend::Recommend),
    ]
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
