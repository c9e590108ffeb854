//! What shopstream maintains: pure timely/differential views, one per module, no I/O.
//!
//! # Layout
//! * [`types`]: `Time`, `Diff`, id types, the event as views see it, trace aliases.
//! * [`view`]: the interface every view implements and the host drives
//!   (feed per epoch, completion, compaction, reads at a pinned time).
//! * [`views`]: the views ([`views::profiles`], [`views::segments`],
//!   [`views::similarity`], [`views::recommend`]) and the one
//!   list that builds them ([`views::build`]).
//! * [`read`]: trace helpers the views share (local arrangements, cursor reads at
//!   a time, compaction).
//! * [`operators`]: operators the views share beyond differential's own.
//! * [`rules`]: the segment rule language (compiled once, evaluated per user).
//!
//! The host (`shopstream`'s `runtime`) hands each view its epochs, steps the
//! dataflow, tells the views what is complete and how far to compact, and runs
//! reads against them at pinned times, knowing them only through [`view::View`];
//! each view feeds its own inputs and reads its own traces.

pub mod operators;
pub mod read;
pub mod rules;
pub mod types;
pub mod view;
pub mod views;
