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
//! * [`log`]: the durable event log: checksummed records in segment files, group
//!   commit, recovery that truncates a torn tail.
//! * [`runtime`]: the sequencer (the log's single writer) and the timely workers
//!   that feed, step and read the dataflows.
//! * [`segments`]: hosting the segment view: definitions as log records, the
//!   registry, built-in and file definitions at start, the change feed.
//! * [`serve`]: HTTP query handlers, one query kind per file; health and metrics.
//! * [`server`]: start and stop everything with one signal.
//! * [`symbols`]: the reverse map of interned ids, for answers.
//!
//! The `shopstream` binary and the client tools (`gen`, `send`, `query`, `load`, the
//! demo workload) are the `shopstream-tools` crate in `tools/`.

pub mod config;
pub mod event;
pub mod ingest;
pub mod log;
pub mod runtime;
pub mod segments;
pub mod serve;
pub mod server;
pub mod symbols;
