//! State shared by the workers, the sequencer and readers: progress, read pins,
//! health flags, and the thread handles used to wake workers.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::Thread;

use shopstream_dataflows::types::Time;
use tokio::sync::watch;

use super::Readable;
use crate::catalog::Catalog;
use crate::identity::IdentityGraph;

/// Progress and read pins, shared by workers and readers under one lock so that a
/// worker never compacts past an epoch a reader has just pinned.
pub(crate) struct ReadState {
    pub(super) per_worker: Vec<Readable>,
    pub(super) pins: BTreeMap<Time, usize>,
    /// The most recent readable points, oldest first (at most `as_of_history`):
    /// reads may ask for any of them with `as_of`, so traces are not compacted
    /// past the oldest.
    pub(super) history: VecDeque<Readable>,
    pub(super) as_of_history: usize,
}

pub(crate) struct Shared {
    pub(super) state: Mutex<ReadState>,
    pub(super) readable: watch::Sender<Readable>,
    pub(super) threads: Mutex<Vec<Option<Thread>>>,
    /// Last sequence number written to the log.
    pub(crate) logged_seq: AtomicU64,
    pub(crate) shutdown: AtomicBool,
    /// False once the log failed for good: no more events are accepted.
    pub(crate) healthy: AtomicBool,
    /// Why log writes fail while the sequencer retries them (`None`: they work).
    pub(crate) log_fault: Mutex<Option<String>>,
    /// Set when a worker thread panicked: the views stop advancing, so no more
    /// events are accepted, reads answer "unavailable", and shutdown does not wait
    /// for epochs that can no longer complete.
    pub(crate) worker_failed: AtomicBool,
    /// Definitions of every kind, as logged.
    pub(crate) catalog: Arc<Catalog>,
    /// Identity links, as logged (see [`crate::identity`]).
    pub(crate) identity: Arc<Mutex<IdentityGraph>>,
}

impl Shared {
    pub(super) fn new(
        workers: usize,
        as_of_history: usize,
        catalog: Arc<Catalog>,
        identity: Arc<Mutex<IdentityGraph>>,
    ) -> Self {
        let (readable, _) = watch::channel(Readable {
            clock: shopstream_dataflows::types::Millis::MIN,
            ..Readable::default()
        });
        Shared {
            catalog,
            identity,
            state: Mutex::new(ReadState {
                per_worker: vec![Readable::default(); workers],
                pins: BTreeMap::new(),
                history: VecDeque::new(),
                as_of_history,
            }),
            readable,
            threads: Mutex::new(vec![None; workers]),
            logged_seq: AtomicU64::new(0),
            shutdown: AtomicBool::new(false),
            healthy: AtomicBool::new(true),
            log_fault: Mutex::new(None),
            worker_failed: AtomicBool::new(false),
        }
    }

    pub(super) fn unpark(&self, worker: usize) {
        if let Some(Some(t)) = self.threads.lock().expect("poisoned").get(worker) {
            t.unpark();
        }
    }

    pub(super) fn unpark_all(&self) {
        for t in self.threads.lock().expect("poisoned").iter().flatten() {
            t.unpark();
        }
    }

    /// Worker `w` reports what it has completed; publishes the minimum over workers.
    pub(crate) fn complete(&self, w: usize, r: Readable) -> Time {
        let mut s = self.state.lock().expect("poisoned");
        s.per_worker[w] = r;
        let min = *s.per_worker.iter().min_by_key(|r| r.done).expect("workers");
        if min.done > self.readable.borrow().done {
            self.readable.send_replace(min);
            if s.as_of_history > 0 {
                s.history.push_back(min);
                while s.history.len() > s.as_of_history {
                    s.history.pop_front();
                }
            }
            let lag = self
                .logged_seq
                .load(Ordering::Relaxed)
                .saturating_sub(min.seq);
            metrics::gauge!("shopstream_readable_seq").set(min.seq as f64);
            metrics::gauge!("shopstream_frontier_lag_events").set(lag as f64);
        }
        Self::compaction_frontier(&s, min)
    }

    /// The epoch up to which traces may be compacted: every read is at or beyond it.
    fn compaction_frontier(s: &ReadState, readable: Readable) -> Time {
        let top = readable.done.saturating_sub(1);
        let held = s.history.front().map_or(top, |r| r.done.saturating_sub(1));
        s.pins
            .keys()
            .next()
            .map_or(top, |p| (*p).min(top))
            .min(held)
    }

    /// Pins epoch `at` for a read: no worker compacts past it until the pin drops.
    pub(super) fn pin_locked(self: &Arc<Self>, s: &mut ReadState, at: Time) -> Pin {
        *s.pins.entry(at).or_insert(0) += 1;
        Pin {
            shared: self.clone(),
            at,
        }
    }
}

/// Unpins an epoch when the read that pinned it ends, however it ends.
pub(crate) struct Pin {
    shared: Arc<Shared>,
    pub(super) at: Time,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut s = self.shared.state.lock().expect("poisoned");
        if let Some(n) = s.pins.get_mut(&self.at) {
            *n -= 1;
            if *n == 0 {
                s.pins.remove(&self.at);
            }
        }
    }
}
