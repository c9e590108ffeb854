//! The epoch model: what a log record is to the workers, and what the views
//! include once they have completed a run of them.

use std::sync::Arc;

use shopstream_dataflows::types::{Millis, Time};
use shopstream_dataflows::view::DefinitionChange;

use crate::event::Event;
use crate::snapshot::Snapshot;

/// One log record as the workers see it: a run of consecutive sequence numbers and
/// the engine clock after them. The events stay in the chunks they were submitted
/// in; in order, they have sequence numbers `first_seq..`.
#[derive(Debug)]
pub struct Epoch {
    pub epoch: Time,
    pub first_seq: u64,
    pub clock: Millis,
    pub chunks: Vec<Vec<Event>>,
    /// Definitions (of every kind) that take effect at this epoch, compiled.
    pub definitions: Vec<DefinitionChange>,
    /// Identities merged at this epoch, `(merged id, user)`, in log order: the
    /// links of its events that the identity graph accepted and had not before.
    pub links: Vec<(crate::event::Str, crate::event::Str)>,
    /// The snapshot this epoch restores (the first epoch of a start from a
    /// snapshot: no events, every definition, and the views' saved parts).
    pub restore: Option<Arc<Snapshot>>,
}

/// Events handed to the workers and not yet through every worker's dataflow
/// (queued, or fed and not complete), bounded by `engine.max_queued_events`: the
/// sequencer waits before handing over more (and so, through the submission
/// queue, the senders wait). Under overload
/// each group commit carries up to `log.max_record_events` events, so a bound in
/// epochs alone (the workers' queues hold 64) let tens of millions of bytes per
/// epoch pile up: measured, 1.2 GiB at 2x the sustainable rate against 0.5 GiB at 1x.
pub(crate) struct Backlog {
    queued: std::sync::Mutex<usize>,
    freed: std::sync::Condvar,
    cap: usize,
}

/// `n` events' place in the [`Backlog`].
pub(crate) struct BacklogPermit {
    backlog: Arc<Backlog>,
    n: usize,
}

impl Backlog {
    pub(crate) fn new(cap: usize) -> Arc<Self> {
        Arc::new(Backlog {
            queued: std::sync::Mutex::new(0),
            freed: std::sync::Condvar::new(),
            cap,
        })
    }

    /// Waits until `n` more events fit (an epoch larger than the cap goes alone),
    /// or `give_up()` says nothing will be freed (a worker failed).
    pub(crate) fn admit(self: &Arc<Self>, n: usize, give_up: impl Fn() -> bool) -> BacklogPermit {
        let mut queued = self.queued.lock().expect("poisoned");
        while *queued > 0 && *queued + n > self.cap && !give_up() {
            queued = self
                .freed
                .wait_timeout(queued, std::time::Duration::from_millis(100))
                .expect("poisoned")
                .0;
        }
        *queued += n;
        metrics::gauge!("shopstream_worker_backlog_events").set(*queued as f64);
        BacklogPermit {
            backlog: self.clone(),
            n,
        }
    }
}

impl Drop for BacklogPermit {
    fn drop(&mut self) {
        let mut queued = self.backlog.queued.lock().expect("poisoned");
        *queued -= self.n;
        self.backlog.freed.notify_all();
    }
}

impl std::fmt::Debug for BacklogPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BacklogPermit({})", self.n)
    }
}

/// What the sequencer sends a worker, in log order.
pub(crate) enum Feed {
    /// An epoch, and its place in the [`Backlog`], which each worker holds (not
    /// the epoch: holding the events themselves until completion cost 30% of the
    /// CPU per event, in the allocator) until the epoch is complete there.
    Epoch(Arc<Epoch>, Arc<BacklogPermit>),
    /// Save the views once every epoch sent before is complete.
    Snapshot(SnapshotTake),
}

/// One worker's snapshot: `(worker, epoch, [(view name, part)])`.
pub(crate) type WorkerParts = (usize, Time, Vec<(String, Vec<u8>)>);

/// A worker's share of taking a snapshot.
pub(crate) struct SnapshotTake {
    /// Where the worker sends `(worker, epoch, [(view, part)])`.
    pub parts: flume::Sender<WorkerParts>,
    /// Disconnects when every part is in and the host halves are saved: until
    /// then the worker feeds nothing more, so that their state is of the same
    /// epoch.
    pub resume: flume::Receiver<()>,
}

impl Epoch {
    /// Number of events.
    pub fn len(&self) -> usize {
        self.chunks.iter().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.iter().all(Vec::is_empty)
    }

    /// The last sequence number the epoch includes (`first_seq - 1` when empty).
    pub fn last_seq(&self) -> u64 {
        self.first_seq + self.len() as u64 - 1
    }

    /// The events with their sequence numbers, in order.
    pub fn events(&self) -> impl Iterator<Item = (u64, &Event)> {
        self.chunks
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, e)| (self.first_seq + i as u64, e))
    }
}

/// What the views include: epochs `0..done`, events `1..=seq`, at clock `clock`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Readable {
    /// Number of complete epochs; `0` means nothing is readable yet.
    pub done: u64,
    /// Last sequence number included (`0`: none).
    pub seq: u64,
    /// Engine clock at that epoch (`Millis::MIN` before any event).
    pub clock: Millis,
}
