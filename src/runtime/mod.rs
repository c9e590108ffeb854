//! The engine: one sequencer thread in front of the durable log, `N` timely worker
//! threads hosting the views, and the bridge that lets async handlers read them.
//!
//! ```text
//!  connections ──Submit──▶ sequencer ──append+fsync──▶ log
//!        ▲                    │ ack (durable)
//!        └────────────────────┤
//!                             └──Arc<Epoch>──▶ worker 0..N ──▶ every view (View::feed)
//!  reads ──Request──▶ the worker owning the key (the view's read fn at a pinned epoch) ──▶ answer
//! ```
//!
//! The runtime never names a view: workers build them all with
//! `shopstream_dataflows::views::build` and drive them through
//! `shopstream_dataflows::view::View`; the engine knows of each view only its
//! [`ViewHost`] (compilers, services, start-up definitions), and a read is a
//! function of the view's own type, routed by key ([`Engine::read`]).
//!
//! ## Invariants
//! * An epoch is one log record. Its events are acknowledged only after the record
//!   is durable (per the fsync policy) and reach the workers only after that, so a
//!   view never shows an event that a crash could take back.
//! * Every worker receives every epoch, in log order, and feeds the events of the
//!   users it owns (`owner(user, workers)`) to every view; the epoch's clock and
//!   definitions come with it, so window retractions and definitions happen at the
//!   same logical time everywhere, live or in replay.
//! * A read picks one epoch `E` that is complete on every worker, pins it, and asks
//!   the workers owning its keys to read at `E`: the answer reflects exactly the
//!   events with `seq ≤ as_of(E)`. Traces are compacted only up to the oldest
//!   pinned or readable epoch, so a pinned read is never disturbed.
//! * Bounded queues everywhere: submissions (`ingest.queue_depth`), epochs to
//!   workers, and pending reads (`http.max_pending_reads`).
//!
//! ## Files
//! [`epoch`] (what a record is to the workers), [`error`], `shared` (progress and
//! pins), [`engine`] (start, submit, define, read), [`host`] (what a view
//! registers), `sequencer` (the log's writer), `worker` (a timely worker's loop).

mod engine;
mod epoch;
mod error;
mod host;
mod sequencer;
mod shared;
mod worker;

pub use engine::{Defined, Engine, PinnedRead, ReadAt, Route};
pub use epoch::{Epoch, Readable};
pub use error::{EngineError, ReplayError, Unavailable};
pub use host::{HostContext, ViewHost};
pub use sequencer::{decode_payload, SubmitAck};
