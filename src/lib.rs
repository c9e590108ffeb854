//! shopstream: a real-time stream processing engine for online shops.
//!
//! Shops stream behaviour events (Segment Spec or GA4) over TCP or HTTP; a durable
//! log orders them; timely/differential dataflows (the `shopstream-dataflows` crate)
//! keep views up to date; queries read the views' arrangements by cursor at one
//! consistent epoch.
//!
//! # Layout
//! * [`config`]: raw TOML/CLI settings → validated [`config::Config`].
//! * [`event`]: the event model and its validation (Segment names, GA4 aliases).
//! * [`ingest`]: TCP (NDJSON and bincode frames) and HTTP listeners, limits, acks.
//! * [`log`]: the durable event log: checksummed records in log files, group
//!   commit, recovery that truncates a torn tail.
//! * [`runtime`]: the sequencer (the log's single writer) and the timely workers
//!   that feed, step and read the views, knowing them only through the view
//!   interface (`shopstream_dataflows::view`) and [`runtime::ViewHost`].
//! * [`catalog`]: definitions of every kind as log records, and their compilers
//!   (segment rules, built-in and file segments in [`catalog::segments`]).
//! * [`serve`]: each view's host half, one file per view (its endpoints, its
//!   services, its definitions at start), the change feed, health and metrics;
//!   [`serve::views`] is the registration list.
//! * [`reply`]: JSON errors, the status of each engine error, read positions.
//! * [`http`]: the one router (ingest, views, health), with the scope each
//!   route needs.
//! * [`auth`]: API tokens with scopes (digests in the config, constant-time checks).
//! * [`tls`]: rustls for both listeners, with a handshake timeout.
//! * [`server`]: start and stop everything with one signal.
//! * [`symbols`]: the reverse map of interned ids, for answers.
//!
//! The `shopstream` binary and the client tools (`gen`, `send`, `query`, `load`, the
//! demo workload) are the `shopstream-tools` crate in `tools/`.

pub mod auth;
pub mod catalog;
pub mod config;
pub mod event;
pub mod http;
pub mod identity;
pub mod ingest;
pub mod log;
pub mod reply;
pub mod runtime;
pub mod serve;
pub mod server;
pub mod snapshot;
pub mod symbols;
pub mod tls;
