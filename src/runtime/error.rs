//! What the engine reports to its callers, typed, with causes kept. The HTTP
//! status of each is decided in one place (`crate::reply`).

use std::sync::Arc;

use crate::catalog::CatalogError;
use crate::log::LogError;
use crate::snapshot::SnapshotError;

/// Errors the engine reports to handlers.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the durable log failed: {0}")]
    Log(#[from] LogError),
    #[error("unavailable: {0}")]
    Unavailable(#[from] Unavailable),
    #[error("the engine is shutting down")]
    ShuttingDown,
    #[error("overloaded: {0} requests are already waiting")]
    Overloaded(usize),
    #[error(
        "timed out after {waited_ms} ms waiting for seq {wanted}; the views include seq {reached}"
    )]
    Timeout {
        wanted: u64,
        reached: u64,
        waited_ms: u64,
    },
    #[error(
        "as_of={asked} is not kept: reads can go back over the last {kept} readable points (http.as_of_history), the oldest now at as_of={oldest}"
    )]
    AsOfGone {
        asked: u64,
        oldest: u64,
        kept: usize,
    },
    #[error("as_of={asked} is before this {kind} was defined")]
    AsOfBeforeDefinition { asked: u64, kind: &'static str },
    #[error("no view {0} is registered on the workers")]
    NoSuchView(&'static str),
    #[error("definition refused: {0}")]
    Definition(#[from] CatalogError),
    #[error("cannot start timely workers: {0}")]
    Timely(String),
    #[error("the log could not be replayed: {0}")]
    Replay(#[from] ReplayError),
    #[error("{0}")]
    Snapshot(#[from] SnapshotError),
}

/// Why the engine no longer takes events or answers reads.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("the log failed; see the server log")]
    LogFailed,
    #[error("the log is not writable after an earlier failure")]
    LogNotWritable,
    /// A write or fsync failed; nothing of the batch was acknowledged, and the
    /// sequencer retries (the client should too).
    #[error("log write failed, nothing of this batch was logged (retry later): {0}")]
    LogWrite(#[source] Arc<LogError>),
    #[error("a dataflow worker failed; see the server log")]
    WorkerFailed,
}

/// Why the log could not be replayed at start.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("a dataflow worker failed while replaying the log; see the server log")]
    WorkerFailed,
    #[error("the sequencer stopped before the log was open")]
    SequencerStopped,
    #[error("the start-up task failed: {0}")]
    Task(String),
}
