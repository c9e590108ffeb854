//! Every view, and the one list that builds them.
//!
//! To add a view: write its file here (a `build` function from the scope, the
//! [`Env`] and the exports of the views it reads, to a
//! [`View`](crate::view::View) and its own
//! exports), then add one line to [`build`]. Views are built in this order, so a
//! view can read the arrangements of any view above it.

pub mod profiles;
pub mod recommend;
pub mod segments;
pub mod similarity;

use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::Scope;

use crate::types::Time;
use crate::view::{Env, Views};

/// Builds every view into the worker's dataflow, each probed by `probe`.
pub fn build<'scope>(scope: Scope<'scope, Time>, env: &Env, probe: &ProbeHandle<Time>) -> Views {
    let mut views = Views::default();
    let profiles = views.add(profiles::build(scope, env, probe));
    views.add(segments::build(scope, env, probe, &profiles));
    views.add(similarity::build(scope, env, probe));
    views.add(recommend::build(scope, env, probe));
    views
}
