//! The sequencer's side of snapshots (see [`crate::snapshot`]): taking one after
//! the last epoch logged, collecting the workers' parts on a thread of its own,
//! and restoring one at start.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shopstream_dataflows::view::DefinitionChange;

use super::{now_ms, Sequencer};
use crate::config::Config;
use crate::log;
use crate::runtime::epoch::{Epoch, Feed, SnapshotTake, WorkerParts};
use crate::snapshot::{self, Snapshot, SnapshotError};
use crate::symbols::Symbols;

/// Where the outcome of a requested snapshot goes.
pub type SnapshotReply = tokio::sync::oneshot::Sender<Result<SnapshotInfo, SnapshotError>>;

/// A snapshot written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub epoch: u64,
    /// The last sequence number it holds.
    pub seq: u64,
    pub path: std::path::PathBuf,
    pub bytes: u64,
    /// From the request to the file being durable.
    pub millis: u64,
    /// Log files removed after it (`snapshot.prune_log`).
    pub removed_log_files: usize,
}

/// The name of the identity graph's part in a snapshot (among the hosts' parts).
pub(crate) const IDENTITY_PART: &str = "identity";

/// What the sequencer needs, besides its own state, to take and restore
/// snapshots: the host halves' state and the symbol table.
#[derive(Clone)]
pub struct SnapshotContext {
    pub symbols: Arc<Symbols>,
    /// Each view host's own state, by name, at the moment it is called.
    pub save_hosts: Arc<dyn Fn() -> Vec<(String, Vec<u8>)> + Send + Sync>,
    /// The snapshot to start from (chosen and partly restored by the engine),
    /// with its definitions compiled.
    pub restore: Option<(Arc<Snapshot>, Vec<DefinitionChange>)>,
}

impl Sequencer {
    /// Takes up the sequencer's part of the snapshot to start from and sends the
    /// workers its epoch: no events, every definition, the views' parts. Returns
    /// the epoch it covers.
    pub(super) fn restore_snapshot(&mut self) -> Option<u64> {
        let (snapshot, definitions) = self.snapshots.restore.take()?;
        self.dedup.restore(&snapshot.dedup);
        self.clock = snapshot.clock;
        self.next_epoch = snapshot.epoch + 1;
        self.next_seq = snapshot.next_seq;
        let epoch = snapshot.epoch;
        self.forward(Epoch {
            epoch,
            first_seq: snapshot.next_seq,
            clock: snapshot.clock,
            chunks: Vec::new(),
            definitions,
            links: Vec::new(),
            restore: Some(snapshot),
        });
        Some(epoch)
    }

    /// Starts a snapshot after the last epoch logged: syncs the log (a snapshot
    /// holds only durable epochs, so the log always goes on from it), takes the
    /// sequencer's own state, and asks every worker for its views' parts, in
    /// order with the epochs. A thread collects the parts, adds the host halves'
    /// state and writes the file; `reply` (if any) hears when it is durable.
    pub(super) fn snapshot(&mut self, reply: Option<SnapshotReply>) {
        let refuse = |reply: Option<SnapshotReply>, e: SnapshotError| {
            if let Some(r) = reply {
                let _ = r.send(Err(e));
            }
        };
        if self.next_epoch == 0 {
            return refuse(reply, SnapshotError::Empty);
        }
        // A failing log (or one being retried) may not hold what was acknowledged
        // as durable, and a failed worker cannot save its part: no snapshot then.
        if self.writer.is_none() || self.fault.is_some() {
            return refuse(reply, SnapshotError::LogFailed);
        }
        if self.shared.worker_failed.load(Ordering::SeqCst) {
            return refuse(reply, SnapshotError::WorkerGone);
        }
        if self.snapshot_busy.swap(true, Ordering::SeqCst) {
            return refuse(reply, SnapshotError::Busy);
        }
        if let Some(w) = self.writer.as_mut() {
            if w.durable_next_epoch() < w.next_epoch() {
                if let Err(e) = w.sync() {
                    self.failed(Arc::new(e));
                }
            }
        }
        // The sync before it failed.
        if self.writer.is_none() || self.fault.is_some() {
            self.snapshot_busy.store(false, Ordering::SeqCst);
            return refuse(reply, SnapshotError::LogFailed);
        }
        let base = Snapshot {
            epoch: self.next_epoch - 1,
            next_seq: self.next_seq,
            clock: self.clock,
            workers: self.workers.len() as u32,
            created_ms: now_ms(),
            dedup: self.dedup.save(),
            catalog: self.shared.catalog.save(),
            hosts: vec![(
                IDENTITY_PART.to_owned(),
                self.shared.identity.lock().expect("poisoned").save(),
            )],
            ..Snapshot::default()
        };
        let (parts_tx, parts_rx) = flume::unbounded();
        let (resume_tx, resume_rx) = flume::bounded(0);
        self.send_all(|| {
            Feed::Snapshot(SnapshotTake {
                parts: parts_tx.clone(),
                resume: resume_rx.clone(),
            })
        });
        drop(parts_tx);
        self.last_snapshot = (self.next_seq, Instant::now());
        let job = Collect {
            base,
            parts: parts_rx,
            resume: resume_tx,
            workers: self.workers.len(),
            cx: self.snapshots.clone(),
            config: self.config.clone(),
            busy: self.snapshot_busy.clone(),
            started: Instant::now(),
        };
        let spawned = std::thread::Builder::new()
            .name("shopstream-snapshot".into())
            .spawn(move || job.run(reply));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "snapshot: cannot start its thread");
            self.snapshot_busy.store(false, Ordering::SeqCst);
        }
    }

    /// After a commit: a snapshot when `snapshot.every_events` events were logged
    /// since the last one, and not sooner than `snapshot.min_interval_s`.
    pub(super) fn snapshot_when_due(&mut self) {
        let s = &self.config.snapshot;
        let (seq, at) = self.last_snapshot;
        if s.every_events > 0
            && self.next_seq.saturating_sub(seq) >= s.every_events
            && at.elapsed() >= Duration::from_secs(s.min_interval_s)
            && !self.snapshot_busy.load(Ordering::SeqCst)
        {
            self.snapshot(None);
        }
    }
}

/// Collects a snapshot's parts and writes it (on a thread of its own, so that
/// the sequencer goes on logging meanwhile).
struct Collect {
    base: Snapshot,
    parts: flume::Receiver<WorkerParts>,
    resume: flume::Sender<()>,
    workers: usize,
    cx: SnapshotContext,
    config: Config,
    busy: Arc<std::sync::atomic::AtomicBool>,
    started: Instant,
}

impl Collect {
    fn run(self, reply: Option<SnapshotReply>) {
        let busy = self.busy.clone();
        let outcome = self.write();
        busy.store(false, Ordering::SeqCst);
        match &outcome {
            Ok(info) => {
                metrics::counter!("shopstream_snapshots_total").increment(1);
                metrics::gauge!("shopstream_snapshot_bytes").set(info.bytes as f64);
                metrics::gauge!("shopstream_snapshot_epoch").set(info.epoch as f64);
                tracing::info!(epoch = info.epoch, seq = info.seq, bytes = info.bytes,
                    millis = info.millis, removed_log_files = info.removed_log_files,
                    path = %info.path.display(), "snapshot: written");
            }
            Err(e) => tracing::error!(error = %e, "snapshot: failed"),
        }
        if let Some(r) = reply {
            let _ = r.send(outcome);
        }
    }

    fn write(self) -> Result<SnapshotInfo, SnapshotError> {
        let mut snap = self.base;
        let mut views: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
        for _ in 0..self.workers {
            let (w, at, parts) = self.parts.recv().map_err(|_| SnapshotError::WorkerGone)?;
            if at != snap.epoch {
                return Err(SnapshotError::WorkerGone);
            }
            for (name, part) in parts {
                let i = match views.iter().position(|(n, _)| *n == name) {
                    Some(i) => i,
                    None => {
                        views.push((name, vec![Vec::new(); self.workers]));
                        views.len() - 1
                    }
                };
                views[i].1[w] = part;
            }
        }
        // Every worker has staged the epoch and waits: the host halves are at it.
        snap.hosts.extend((self.cx.save_hosts)());
        drop(self.resume);
        snap.views = views;
        snap.symbols = self.cx.symbols.save();
        let dir = snapshot::dir(&self.config.data_dir);
        let (path, bytes) = snapshot::write(&dir, &snap)?;
        let oldest = snapshot::retain(&dir, self.config.snapshot.keep)?;
        let mut removed_log_files = 0;
        if let (true, Some(oldest)) = (self.config.snapshot.prune_log, oldest) {
            match log::remove_covered(&self.config.data_dir, oldest) {
                Ok(removed) => removed_log_files = removed.len(),
                Err(e) => tracing::error!(error = %e, "snapshot: cannot remove covered log files"),
            }
        }
        Ok(SnapshotInfo {
            epoch: snap.epoch,
            seq: snap.next_seq - 1,
            path,
            bytes,
            millis: self.started.elapsed().as_millis() as u64,
            removed_log_files,
        })
    }
}
