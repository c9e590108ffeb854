//! shopstream-tools: the client side of shopstream, and the `shopstream` binary.
//!
//! The server library (`shopstream`) hosts, feeds and serves the views; everything
//! that drives a server from outside lives here, so that the library does not build
//! an HTTP client, ureq or hdrhistogram. The binary (`src/main.rs`) is here too:
//! its `gen`, `send`, `query` and `load` subcommands need this crate, and a package
//! cannot depend on one that depends on it.
//!
//! # Layout
//! * [`client`]: the `send` and `query` commands, and the demo workload.
//! * [`gen`]: the deterministic workload generator (`shopstream gen`).
//! * [`load`]: the open-loop load driver (`shopstream load`): ack latency, freshness,
//!   query latency against a running server.

pub mod client;
pub mod gen;
pub mod load;
