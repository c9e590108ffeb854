//! The sequencer: the single writer of the log.
//!
//! It takes submissions from every connection in arrival order, drops duplicates
//! (by `messageId`, over a bounded FIFO horizon), assigns sequence numbers, writes
//! one log record per group of submissions (one epoch), makes it durable with a
//! single sync (group commit: submissions that arrive during a sync form the next
//! group), acknowledges, and only then hands the epoch to the workers.
//!
//! On start it replays the log through the same hand-off, rebuilding the
//! deduplication horizon, so a restart reaches the same answers.
//!
//! A failed log write or fsync (a full disk, an I/O error) is never acknowledged:
//! every submission of that group is answered with the error, its message ids
//! leave the deduplication horizon (a retry is logged, not dropped as a
//! duplicate), and the log is cut back to the last commit. The sequencer then
//! retries with a backoff (100 ms doubling to 5 s; submissions in between are
//! refused at once with the same reason), so ingest resumes by itself once the
//! disk has room again. `/healthz` says "degraded" with the reason meanwhile.
//! When cutting back is not safe (an fsync failure under `fsync = "interval"` or
//! `"never"`: see [`LogWriter`]) the log stays failed until a restart.
//!
//! Files: this one (the loop, group commit, faults, replay), `dedup` (the
//! horizon), `payload` (a record's bytes), `snapshot` (taking and restoring
//! snapshots).

mod dedup;
mod payload;
mod snapshot;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use shopstream_dataflows::types::Millis;

use shopstream_dataflows::view::DefinitionChange;

use super::epoch::{Backlog, Feed};
use super::shared::Shared;
use super::{EngineError, Epoch, Unavailable};
use crate::catalog::Control;
use crate::config::{ClockMode, Config};
use crate::event::{Event, Str};
use crate::log::{self, LogConfig, LogError, LogWriter, RecordHeader, Recovery};
use crate::snapshot::SnapshotError;
use dedup::Dedup;
pub use payload::decode_payload;
use payload::encode_payload;
pub(crate) use snapshot::IDENTITY_PART;
pub use snapshot::{SnapshotContext, SnapshotInfo, SnapshotReply};

/// Events from one connection (or request), or definition changes, and where to
/// acknowledge them.
pub struct Submit {
    pub events: Vec<Event>,
    pub controls: Vec<Control>,
    pub reply: tokio::sync::oneshot::Sender<Result<SubmitAck, EngineError>>,
}

/// What the sequencer is asked to do, in arrival order.
pub enum Work {
    Submit(Submit),
    /// Take a snapshot after the last epoch logged (see [`crate::snapshot`]).
    Snapshot(SnapshotReply),
}

/// The outcome of one submission.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubmitAck {
    /// Highest sequence number of an event of this submission: given now, or, for a
    /// duplicate, given to its first copy (`0` if none).
    pub last_seq: u64,
    /// Events newly logged.
    pub logged: usize,
    /// Indexes (in the submission) of events dropped as duplicates of a logged `messageId`.
    pub duplicates: Vec<usize>,
    /// The epoch of the record that holds this submission (`None`: nothing was logged).
    pub epoch: Option<u64>,
}

/// A log failure the sequencer is retrying after.
struct Fault {
    error: Arc<LogError>,
    backoff: Duration,
    retry_at: Instant,
}

/// The first wait after a log failure before writing again; it doubles up to
/// [`MAX_BACKOFF`] while the log keeps failing.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

struct Sequencer {
    config: Config,
    shared: Arc<Shared>,
    writer: Option<LogWriter>,
    /// Set while writes fail and are being retried.
    fault: Option<Fault>,
    workers: Vec<flume::Sender<Feed>>,
    dedup: Dedup,
    next_epoch: u64,
    next_seq: u64,
    clock: Millis,
    last_record: Instant,
    /// The payload of the record being written, reused.
    payload: Vec<u8>,
    snapshots: SnapshotContext,
    /// Set while a snapshot is being collected and written.
    snapshot_busy: Arc<std::sync::atomic::AtomicBool>,
    /// Events handed to the workers and not yet fed by all.
    backlog: Arc<Backlog>,
    /// `next_seq` and time of the last snapshot (or of the start).
    last_snapshot: (u64, Instant),
}

impl Sequencer {
    /// Hands an epoch to every worker (blocking when a worker is behind: backpressure).
    fn forward(&self, epoch: Epoch) {
        let failed = || self.shared.worker_failed.load(Ordering::Relaxed);
        let permit = Arc::new(self.backlog.admit(epoch.len(), failed));
        let epoch = Arc::new(epoch);
        self.send_all(|| Feed::Epoch(epoch.clone(), permit.clone()));
    }

    /// Sends `feed()` to every worker, in order with what was sent before.
    fn send_all(&self, feed: impl Fn() -> Feed) {
        for w in &self.workers {
            let mut next = feed();
            loop {
                match w.send_timeout(next, Duration::from_millis(100)) {
                    Ok(()) | Err(flume::SendTimeoutError::Disconnected(_)) => break,
                    Err(flume::SendTimeoutError::Timeout(e)) => {
                        // A failed worker may stall the others: do not wait forever.
                        // (A live worker always drains its queue, even at shutdown,
                        // so it never misses an epoch.)
                        if self.shared.worker_failed.load(Ordering::Relaxed) {
                            break;
                        }
                        next = e;
                    }
                }
            }
        }
        self.shared.unpark_all();
    }

    /// Moves the clock for a record whose newest event time is `newest` (`None`: a
    /// tick with no events).
    fn advance_clock(&mut self, newest: Option<Millis>) {
        match self.config.clock {
            ClockMode::Event => {
                if let Some(max) = newest {
                    self.clock = self.clock.max(max);
                }
            }
            ClockMode::Wall => self.clock = self.clock.max(now_ms()),
        }
    }

    /// Logs, syncs, acknowledges and forwards one group of submissions.
    ///
    /// Submissions stay the chunks they arrived as (events are never moved one by
    /// one); only a submission holding duplicates is filtered, in place.
    fn commit(&mut self, group: Vec<Submit>) {
        if let Err(e) = self.writable() {
            for s in group {
                let _ = s.reply.send(Err(e.clone().into()));
            }
            return;
        }
        let mut inserted = Vec::new();
        self.dedup.begin_group();
        let mut chunks = Vec::with_capacity(group.len());
        let mut acks = Vec::with_capacity(group.len());
        let mut controls = Vec::new();
        let mut n = 0u64;
        for mut submit in group {
            controls.append(&mut submit.controls);
            let mut ack = SubmitAck::default();
            let mut events = submit.events;
            let mut keep = Vec::new();
            for (i, ev) in events.iter().enumerate() {
                if let Some(id) = ev.message_id {
                    let seq = self.next_seq + n;
                    if let Err(first) = self.dedup.insert(id, seq) {
                        ack.duplicates.push(i);
                        ack.last_seq = ack.last_seq.max(first);
                        if keep.is_empty() {
                            keep = vec![true; events.len()];
                        }
                        keep[i] = false;
                        continue;
                    }
                    inserted.push(id);
                }
                n += 1;
                ack.logged += 1;
                ack.last_seq = self.next_seq + n - 1;
            }
            if !keep.is_empty() {
                let mut k = keep.into_iter();
                events.retain(|_| k.next().unwrap_or(true));
            }
            if !events.is_empty() {
                chunks.push(events);
            }
            acks.push((submit.reply, ack));
        }
        let events = chunks;
        match self.write(events, controls) {
            Ok(epoch) => {
                if self.fault.take().is_some() {
                    tracing::info!("log writes succeed again; ingest resumed");
                    *self.shared.log_fault.lock().expect("poisoned") = None;
                }
                let dups: usize = acks.iter().map(|(_, a)| a.duplicates.len()).sum();
                metrics::counter!("shopstream_events_duplicate_total").increment(dups as u64);
                for (reply, mut ack) in acks {
                    ack.epoch = epoch.as_ref().map(|e| e.epoch);
                    let _ = reply.send(Ok(ack));
                }
                if let Some(epoch) = epoch {
                    self.forward(epoch);
                }
            }
            Err(e) => {
                self.dedup.forget_newest(&inserted);
                let e = Arc::new(e);
                self.failed(e.clone());
                for (reply, _) in acks {
                    let _ = reply.send(Err(Unavailable::LogWrite(e.clone()).into()));
                }
            }
        }
    }

    /// Records a log failure: retried after a backoff when the writer can be cut
    /// back to its last commit, else the log is failed for good.
    fn failed(&mut self, e: Arc<LogError>) {
        if !self.writer.as_ref().is_some_and(LogWriter::recoverable) {
            self.shared.healthy.store(false, Ordering::SeqCst);
            tracing::error!(error = %e, "log failed and cannot be cut back safely; refusing further events until a restart");
            self.writer = None;
            self.fault = None;
            *self.shared.log_fault.lock().expect("poisoned") = None;
            return;
        }
        let backoff = self
            .fault
            .as_ref()
            .map_or(FIRST_BACKOFF, |f| (f.backoff * 2).min(MAX_BACKOFF));
        tracing::error!(error = %e, retry_in_ms = backoff.as_millis() as u64, "log write failed; nothing of it acknowledged, retrying");
        *self.shared.log_fault.lock().expect("poisoned") = Some(e.to_string());
        self.fault = Some(Fault {
            error: e,
            backoff,
            retry_at: Instant::now() + backoff,
        });
    }

    /// Whether a record may be written now: the log is there, and after a failure
    /// the backoff is over and the log was cut back to its last commit.
    fn writable(&mut self) -> Result<(), Unavailable> {
        if self.writer.is_none() {
            return Err(Unavailable::LogNotWritable);
        }
        let Some(fault) = &self.fault else {
            return Ok(());
        };
        if Instant::now() < fault.retry_at {
            return Err(Unavailable::LogWrite(fault.error.clone()));
        }
        let recovered = self
            .writer
            .as_mut()
            .map_or(Err(LogError::Poisoned), LogWriter::recover);
        match recovered {
            // The views never saw the failed records: the sequencer's own
            // numbering did not move, and now matches the log's again.
            Ok(()) => Ok(()),
            Err(e) => {
                let e = Arc::new(e);
                self.failed(e.clone());
                Err(Unavailable::LogWrite(e))
            }
        }
    }

    /// With `fsync = "interval"`, syncs what was written and not yet synced once the
    /// interval has passed, even when no new record comes to trigger it.
    fn sync_idle(&mut self) {
        // While a fault is being retried the writer is poisoned: a sync would only
        // fail again and push the retry (and its reason) further out.
        if self.config.fsync != log::FsyncPolicy::Interval || self.fault.is_some() {
            return;
        }
        if let Some(w) = self.writer.as_mut() {
            if w.durable_next_seq() < w.next_seq() || w.durable_next_epoch() < w.next_epoch() {
                match w.sync() {
                    Ok(d) => {
                        metrics::histogram!("shopstream_log_fsync_seconds").record(d.as_secs_f64())
                    }
                    // Under this policy a failed fsync is never cut back (see
                    // `LogWriter`): the log fails until a restart.
                    Err(e) => self.failed(Arc::new(e)),
                }
            }
        }
    }

    /// Writes one record (an epoch) unless there is nothing new: no events, no
    /// definitions and no clock move.
    fn write(
        &mut self,
        chunks: Vec<Vec<Event>>,
        controls: Vec<Control>,
    ) -> Result<Option<Epoch>, LogError> {
        let before = self.clock;
        self.advance_clock(chunks.iter().flatten().map(|e| e.ts).max());
        let count: usize = chunks.iter().map(Vec::len).sum();
        if count == 0 && self.clock == before && controls.is_empty() {
            return Ok(None);
        }
        let header = RecordHeader {
            epoch: self.next_epoch,
            first_seq: self.next_seq,
            count: count as u32,
            clock_ms: self.clock,
        };
        encode_payload(&chunks, count, &controls, &mut self.payload);
        let writer = self.writer.as_mut().ok_or(LogError::Poisoned)?;
        let committed = writer
            .append(&header, &self.payload)
            .and_then(|()| writer.commit());
        let synced = match committed {
            Ok(synced) => synced,
            Err(e) => {
                // Not logged: the clock did not move either.
                self.clock = before;
                return Err(e);
            }
        };
        if !synced.is_zero() {
            metrics::histogram!("shopstream_log_fsync_seconds").record(synced.as_secs_f64());
        }
        metrics::counter!("shopstream_events_accepted_total").increment(count as u64);
        metrics::counter!("shopstream_log_bytes_total").increment(self.payload.len() as u64);
        self.next_epoch += 1;
        self.next_seq += count as u64;
        self.shared
            .logged_seq
            .store(self.next_seq - 1, Ordering::Relaxed);
        self.last_record = Instant::now();
        let definitions = self.apply_controls(&header, &controls);
        let links = self.apply_links(header.first_seq, chunks.iter().flatten());
        Ok(Some(Epoch {
            epoch: header.epoch,
            first_seq: header.first_seq,
            clock: self.clock,
            chunks,
            definitions,
            links,
            restore: None,
        }))
    }

    /// Records the identity links of a logged (or replayed) record's events, the
    /// first numbered `first_seq`, in the identity graph; returns the merges they
    /// made (new links accepted), for the workers to move state at.
    fn apply_links<'a>(
        &self,
        first_seq: u64,
        events: impl Iterator<Item = &'a Event>,
    ) -> Vec<(Str, Str)> {
        let mut graph = None;
        let mut merged = Vec::new();
        for (i, ev) in events.enumerate() {
            if let Some(link) = &ev.link {
                let graph =
                    graph.get_or_insert_with(|| self.shared.identity.lock().expect("poisoned"));
                let at = crate::identity::LinkedAt {
                    seq: first_seq + i as u64,
                    ts: ev.ts,
                };
                let before = graph.len();
                let outcome = graph.link(link, &ev.user, at);
                metrics::counter!("shopstream_identity_links_total", "outcome" => outcome.name())
                    .increment(1);
                // The same link again is not recorded twice.
                if *outcome == crate::identity::Outcome::Linked && graph.len() > before {
                    merged.push((link.clone(), ev.user.clone()));
                }
            }
        }
        merged
    }

    /// Records a record's definitions in the catalog, compiled for the workers.
    fn apply_controls(&self, header: &RecordHeader, controls: &[Control]) -> Vec<DefinitionChange> {
        if controls.is_empty() {
            return Vec::new();
        }
        for c in controls {
            // One counter per kind: `shopstream_segment_definitions_total`, ...
            metrics::counter!(format!("shopstream_{}_definitions_total", c.kind)).increment(1);
        }
        let seq = header.first_seq + u64::from(header.count) - 1;
        self.shared
            .catalog
            .apply(controls, header.epoch, seq, header.clock_ms)
    }
}

/// The sequencer thread: replay, report readiness, then serve submissions.
pub(super) fn run(
    config: Config,
    shared: Arc<Shared>,
    submissions: flume::Receiver<Work>,
    workers: Vec<flume::Sender<Feed>>,
    snapshots: SnapshotContext,
    ready: std::sync::mpsc::Sender<Result<Recovery, EngineError>>,
    progress: impl FnMut(u64, u64),
) {
    let backlog = Backlog::new(config.max_queued_events);
    let mut seq = Sequencer {
        dedup: Dedup::new(config.dedup_horizon),
        config,
        shared,
        writer: None,
        fault: None,
        workers,
        next_epoch: 0,
        next_seq: 1,
        clock: Millis::MIN,
        last_record: Instant::now(),
        payload: Vec::new(),
        snapshots,
        snapshot_busy: Arc::default(),
        backlog,
        last_snapshot: (1, Instant::now()),
    };
    let opened = seq.replay(progress);
    let started = opened.is_ok();
    if ready.send(opened).is_err() || !started {
        return;
    }
    seq.serve(&submissions);
}

impl Sequencer {
    /// Restores the snapshot to start from (if any), then opens the log and hands
    /// every record after it to the workers as it is read, rebuilding the
    /// catalog, the deduplication horizon and the clock.
    fn replay(&mut self, mut progress: impl FnMut(u64, u64)) -> Result<Recovery, EngineError> {
        let log_config = LogConfig {
            dir: self.config.data_dir.clone(),
            file_bytes: self.config.file_bytes,
            fsync: self.config.fsync,
            fsync_interval: self.config.fsync_interval,
        };
        let covered = self.restore_snapshot();
        let total = log::size_on_disk(&log_config.dir).unwrap_or(0);
        let after = covered.map(|epoch| (epoch, self.next_seq));
        let (writer, mut recovery) =
            log::open_after(&log_config, after, |header, payload, read| {
                if covered.is_none_or(|c| header.epoch > c) {
                    self.replay_record(header, payload)?;
                }
                progress(read, total);
                Ok(())
            })?;
        if let Some(epoch) = covered {
            // The log must go on from the snapshot: epochs after it numbered anew
            // would contradict what it holds.
            if writer.next_epoch() < epoch + 1 {
                return Err(SnapshotError::LogBehind {
                    log_ends: recovery.last_epoch,
                    snapshot: epoch,
                }
                .into());
            }
            recovery.snapshot_epoch = Some(epoch);
            recovery.last_epoch = recovery.last_epoch.max(Some(epoch));
        }
        self.shared
            .logged_seq
            .store(recovery.next_seq.saturating_sub(1), Ordering::Relaxed);
        let mut writer = writer;
        writer.set_faults(self.config.log_faults.clone());
        self.writer = Some(writer);
        self.last_snapshot = (self.next_seq, Instant::now());
        Ok(recovery)
    }

    /// One replayed record: what it defines, its message ids, then the epoch.
    fn replay_record(&mut self, header: &RecordHeader, payload: &[u8]) -> Result<(), LogError> {
        let (events, controls) = decode_payload(payload).map_err(|e| {
            LogError::Callback(format!("epoch {}: undecodable payload: {e}", header.epoch))
        })?;
        let definitions = self.apply_controls(header, &controls);
        let links = self.apply_links(header.first_seq, events.iter());
        for (i, ev) in events.iter().enumerate() {
            if let Some(id) = ev.message_id {
                let _ = self.dedup.insert(id, header.first_seq + i as u64);
            }
        }
        self.clock = header.clock_ms;
        self.next_epoch = header.epoch + 1;
        self.next_seq = header.first_seq + u64::from(header.count);
        self.forward(Epoch {
            epoch: header.epoch,
            first_seq: header.first_seq,
            clock: header.clock_ms,
            chunks: vec![events],
            definitions,
            links,
            restore: None,
        });
        Ok(())
    }

    /// How long to wait for a submission before an idle duty: a wall-clock tick
    /// record, or an interval sync.
    fn tick(&self) -> Duration {
        let mut tick = match self.config.clock {
            ClockMode::Wall => self.config.clock_tick,
            ClockMode::Event => Duration::from_millis(100),
        };
        if self.config.fsync == log::FsyncPolicy::Interval {
            tick = tick.min(self.config.fsync_interval.max(Duration::from_millis(1)));
        }
        tick
    }

    /// Serves submissions until shutdown (once the queue is drained) or until
    /// every submitter is gone.
    fn serve(&mut self, submissions: &flume::Receiver<Work>) {
        let tick = self.tick();
        loop {
            if self.shared.shutdown.load(Ordering::SeqCst) && submissions.is_empty() {
                break;
            }
            let first = match submissions.recv_timeout(tick) {
                Ok(Work::Submit(s)) => s,
                Ok(Work::Snapshot(reply)) => {
                    self.snapshot(Some(reply));
                    continue;
                }
                Err(flume::RecvTimeoutError::Timeout) => {
                    self.idle(tick);
                    continue;
                }
                Err(flume::RecvTimeoutError::Disconnected) => break,
            };
            let (group, snapshot) = self.gather(first, submissions);
            self.commit(group);
            // A snapshot asked for during the group follows it.
            if let Some(reply) = snapshot {
                self.snapshot(Some(reply));
            }
            self.snapshot_when_due();
        }
    }

    /// Nothing arrived for a tick: sync what an interval policy owes, and with a
    /// wall clock, write a record that moves the clock.
    fn idle(&mut self, tick: Duration) {
        self.sync_idle();
        if self.config.clock == ClockMode::Wall
            && self.writer.is_some()
            && self.last_record.elapsed() >= tick
        {
            self.commit(Vec::new());
        }
    }

    /// One group commit: `first` and whatever else is queued, up to
    /// `engine.max_record_events` events; and a snapshot request met on the way
    /// (which ends the group: it is taken after it).
    fn gather(
        &self,
        first: Submit,
        submissions: &flume::Receiver<Work>,
    ) -> (Vec<Submit>, Option<SnapshotReply>) {
        let max_events = self.config.max_record_events;
        let mut n = first.events.len();
        let mut group = vec![first];
        while n < max_events {
            match submissions.try_recv() {
                Ok(Work::Submit(s)) => {
                    n += s.events.len();
                    group.push(s);
                }
                Ok(Work::Snapshot(reply)) => return (group, Some(reply)),
                Err(_) => break,
            }
        }
        (group, None)
    }
}
