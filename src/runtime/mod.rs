//! The engine: one sequencer thread in front of the durable log, `N` timely worker
//! threads hosting the views, and the bridge that lets async handlers read them.
//!
//! ```text
//!  connections ──Submit──▶ sequencer ──append+fsync──▶ log
//!        ▲                    │ ack (durable)            
//!        └────────────────────┤
//!                             └──Arc<Epoch>──▶ worker 0..N ──▶ arrangements
//!  queries ──Request──▶ the worker owning the user (cursor reads at a pinned epoch) ──▶ answer
//! ```
//!
//! ## Invariants
//! * An epoch is one log record. Its events are acknowledged only after the record
//!   is durable (per the fsync policy) and reach the workers only after that, so a
//!   view never shows an event that a crash could take back.
//! * Every worker receives every epoch, in log order, and feeds the events of the
//!   users it owns (`user % workers`); the epoch's clock comes with it, so window
//!   retractions happen at the same logical time everywhere, live or in replay.
//! * A read picks one epoch `E` that is complete on every worker, pins it, and asks
//!   the worker owning the user to read at `E`: the answer reflects exactly the events with
//!   `seq ≤ as_of(E)`. Traces are compacted only up to the oldest pinned or readable
//!   epoch, so a pinned read is never disturbed.
//! * Bounded queues everywhere: submissions (`ingest.queue_depth`), epochs to
//!   workers, and pending reads (`http.max_pending_reads`).

mod sequencer;
mod worker;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::Thread;
use std::time::Duration;

use shopstream_dataflows::profiles::{Rank, UserProfile};
use shopstream_dataflows::rules::Rule;
use shopstream_dataflows::segments::{SegId, Since};
use shopstream_dataflows::types::{intern, Millis, Time, UserId};
use tokio::sync::watch;

use crate::config::Config;
use crate::event::Event;
use crate::log::{LogError, Recovery};
use crate::segments::{Control, Definition, Hub, Registry};
use crate::symbols::Symbols;

pub use sequencer::SubmitAck;

/// One log record as the workers see it: a run of consecutive sequence numbers and
/// the engine clock after them. The events stay in the chunks they were submitted
/// in; in order, they have sequence numbers `first_seq..`.
#[derive(Debug)]
pub struct Epoch {
    pub epoch: Time,
    pub first_seq: u64,
    pub clock: Millis,
    pub chunks: Vec<Vec<Event>>,
    /// Segment definitions that take effect at this epoch, compiled.
    pub segments: Vec<SegmentChange>,
}

/// A segment defined (with its compiled rule) or dropped (`None`) at an epoch.
#[derive(Clone, Debug)]
pub struct SegmentChange {
    pub id: SegId,
    pub rule: Option<Arc<Rule>>,
}

impl Epoch {
    /// Number of events.
    pub fn len(&self) -> usize {
        self.chunks.iter().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.iter().all(Vec::is_empty)
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

/// Errors the engine reports to handlers.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the durable log failed: {0}")]
    Log(#[from] LogError),
    #[error("unavailable: {0}")]
    Unavailable(String),
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
    #[error("as_of={asked} is before this segment was defined")]
    AsOfBeforeDefinition { asked: u64 },
    #[error("cannot start timely workers: {0}")]
    Timely(String),
    #[error("the log could not be replayed: {0}")]
    Replay(String),
}

/// A read a worker serves between steps, at epoch `at`.
pub(crate) struct Request {
    pub at: Time,
    pub query: Query,
    pub reply: flume::Sender<Answer>,
}

/// What a worker is asked. Per-user reads go to the worker that owns the user;
/// per-segment reads go to every worker (each holds its own users' memberships).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Query {
    /// The user's whole profile, with the user's RFM ranks from that worker's copy
    /// of the histogram.
    Profile(UserId),
    /// The segments the user is in, with `since`.
    UserSegments(UserId),
    /// Members of a segment on this worker.
    Size(SegId),
    /// Every segment's members on this worker.
    Sizes,
    /// Up to `limit` members after `after`, in id order.
    Members {
        segment: SegId,
        after: Option<UserId>,
        limit: usize,
    },
}

/// A worker's answer to a [`Query`] of the same name.
#[derive(Debug)]
pub(crate) enum Answer {
    Profile(Box<(UserProfile, Option<[Rank; 3]>)>),
    UserSegments(Vec<(SegId, Since)>),
    Size(i64),
    Sizes(Vec<(SegId, i64)>),
    Members(Vec<UserId>),
}

/// Progress and read pins, shared by workers and readers under one lock so that a
/// worker never compacts past an epoch a reader has just pinned.
pub(crate) struct ReadState {
    per_worker: Vec<Readable>,
    pins: BTreeMap<Time, usize>,
    /// The most recent readable points, oldest first (at most `as_of_history`):
    /// reads may ask for any of them with `as_of`, so traces are not compacted
    /// past the oldest.
    history: std::collections::VecDeque<Readable>,
    as_of_history: usize,
}

pub(crate) struct Shared {
    state: Mutex<ReadState>,
    readable: watch::Sender<Readable>,
    threads: Mutex<Vec<Option<Thread>>>,
    /// Last sequence number written to the log.
    pub(crate) logged_seq: AtomicU64,
    pub(crate) shutdown: AtomicBool,
    /// False once the log failed: no more events are accepted.
    pub(crate) healthy: AtomicBool,
    /// Set when a worker thread panicked: the views stop advancing, so no more
    /// events are accepted, reads answer "unavailable", and shutdown does not wait
    /// for epochs that can no longer complete.
    pub(crate) worker_failed: AtomicBool,
    /// Segment definitions, as logged.
    pub(crate) registry: Arc<Mutex<Registry>>,
    /// Membership changes of complete epochs, for the change feed.
    pub(crate) hub: Hub,
}

impl Shared {
    fn unpark(&self, worker: usize) {
        if let Some(Some(t)) = self.threads.lock().expect("poisoned").get(worker) {
            t.unpark();
        }
    }

    fn unpark_all(&self) {
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
}

/// Unpins an epoch when the read that pinned it ends, however it ends.
struct Pin<'a> {
    shared: &'a Shared,
    at: Time,
}

impl Drop for Pin<'_> {
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

/// A user's profile, read from the worker that owns the user, at one epoch.
#[derive(Clone, Debug)]
pub struct ProfileRead {
    pub as_of: Readable,
    pub profile: UserProfile,
    /// Per RFM dimension (recency, frequency, monetary): this user's standing.
    pub rfm_ranks: Option<[Rank; 3]>,
}

/// Which epoch a read is at: the newest complete one (at or after `min_seq`), or,
/// with `as_of`, the newest kept one whose last sequence number is at most
/// `as_of` (after waiting until `as_of` is readable).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadAt {
    pub min_seq: Option<u64>,
    pub as_of: Option<u64>,
}

impl From<Option<u64>> for ReadAt {
    /// A `min_seq`.
    fn from(min_seq: Option<u64>) -> Self {
        ReadAt {
            min_seq,
            as_of: None,
        }
    }
}

/// Which workers a read asks.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Target {
    /// The worker that owns this user.
    Owner(UserId),
    /// Every worker.
    All,
}

/// The running engine. Cheap to share behind an `Arc`.
pub struct Engine {
    shared: Arc<Shared>,
    submit: flume::Sender<sequencer::Submit>,
    requests: Vec<flume::Sender<Request>>,
    pub symbols: Arc<Symbols>,
    read_permits: Arc<tokio::sync::Semaphore>,
    pub config: Config,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    guards: Mutex<Option<timely::communication::WorkerGuards<()>>>,
    recovery: Recovery,
    /// Held by whoever checks and then logs a definition change, so that two
    /// concurrent requests cannot both pass a check the other invalidates.
    pub definitions: tokio::sync::Mutex<()>,
}

impl Engine {
    /// Opens the log, replays it through the dataflows and returns once every view
    /// includes the whole log. `progress` is told (bytes read, bytes total).
    pub fn start(
        config: Config,
        progress: impl FnMut(u64, u64) + Send + 'static,
    ) -> Result<Arc<Engine>, EngineError> {
        let workers = config.workers;
        let (readable_tx, _) = watch::channel(Readable {
            clock: Millis::MIN,
            ..Readable::default()
        });
        let symbols = Arc::new(Symbols::default());
        let registry = Arc::new(Mutex::new(Registry::default()));
        let shared = Arc::new(Shared {
            registry: registry.clone(),
            hub: Hub::new(workers, config.feed_retention, registry, symbols.clone()),
            state: Mutex::new(ReadState {
                per_worker: vec![Readable::default(); workers],
                pins: BTreeMap::new(),
                history: std::collections::VecDeque::new(),
                as_of_history: config.as_of_history,
            }),
            readable: readable_tx,
            threads: Mutex::new(vec![None; workers]),
            logged_seq: AtomicU64::new(0),
            shutdown: AtomicBool::new(false),
            healthy: AtomicBool::new(true),
            worker_failed: AtomicBool::new(false),
        });

        let mut epoch_txs = Vec::new();
        let mut epoch_rxs = Vec::new();
        let mut request_txs = Vec::new();
        let mut request_rxs = Vec::new();
        for _ in 0..workers {
            let (tx, rx) = flume::bounded::<Arc<Epoch>>(64);
            epoch_txs.push(tx);
            epoch_rxs.push(rx);
            let (tx, rx) = flume::unbounded::<Request>();
            request_txs.push(tx);
            request_rxs.push(rx);
        }
        let inbox = Arc::new(Mutex::new(
            epoch_rxs
                .into_iter()
                .zip(request_rxs)
                .map(Some)
                .collect::<Vec<_>>(),
        ));
        let guards = {
            let shared = shared.clone();
            let symbols = symbols.clone();
            let order_horizon = config.order_horizon;
            timely::execute(timely::Config::process(workers), move |w| {
                let (epochs, requests) = inbox.lock().expect("poisoned")[w.index()]
                    .take()
                    .expect("each worker starts once");
                worker::run(
                    w,
                    worker::Context {
                        shared: shared.clone(),
                        symbols: symbols.clone(),
                        epochs,
                        requests,
                        order_horizon,
                    },
                )
            })
            .map_err(EngineError::Timely)?
        };

        let (submit_tx, submit_rx) = flume::bounded(config.queue_depth);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let seq_thread = {
            let shared = shared.clone();
            let config = config.clone();
            std::thread::Builder::new()
                .name("shopstream-sequencer".into())
                .spawn(move || {
                    sequencer::run(config, shared, submit_rx, epoch_txs, ready_tx, progress)
                })
                .expect("spawn sequencer")
        };
        let recovery = match ready_rx.recv() {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(EngineError::Replay("the sequencer stopped".into())),
        };
        let engine = Arc::new(Engine {
            shared,
            submit: submit_tx,
            requests: request_txs,
            symbols,
            read_permits: Arc::new(tokio::sync::Semaphore::new(config.max_pending_reads)),
            config,
            threads: Mutex::new(vec![seq_thread]),
            guards: Mutex::new(Some(guards)),
            recovery,
            definitions: tokio::sync::Mutex::new(()),
        });
        // Serve nothing until the views include the whole log.
        let target = engine.recovery.last_epoch.map_or(0, |e| e + 1);
        let mut rx = engine.shared.readable.subscribe();
        while rx.borrow_and_update().done < target {
            if rx.has_changed().is_err() {
                return Err(EngineError::ShuttingDown);
            }
            if engine.shared.worker_failed.load(Ordering::SeqCst) {
                engine.shutdown();
                return Err(EngineError::Replay(
                    "a dataflow worker failed while replaying the log; see the server log".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(engine)
    }

    /// What the log held at start.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// What the views include now.
    pub fn readable(&self) -> Readable {
        *self.shared.readable.borrow()
    }

    /// Last sequence number in the log.
    pub fn logged_seq(&self) -> u64 {
        self.shared.logged_seq.load(Ordering::Relaxed)
    }

    /// Whether events are still accepted: the log is writable and every worker runs.
    pub fn healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Relaxed) && !self.worker_failed()
    }

    /// Whether a dataflow worker has failed.
    pub fn worker_failed(&self) -> bool {
        self.shared.worker_failed.load(Ordering::Relaxed)
    }

    /// Queues validated events for the log, waiting for room in the queue (the
    /// caller is slowed down; memory stays bounded). The receiver resolves once they
    /// are durable (or recognised as duplicates).
    pub async fn enqueue(
        &self,
        events: Vec<Event>,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<SubmitAck, EngineError>>, EngineError> {
        if !self.healthy() {
            return Err(EngineError::Unavailable(
                "the log failed; see the server log".into(),
            ));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit
            .send_async(sequencer::Submit {
                events,
                controls: Vec::new(),
                reply: tx,
            })
            .await
            .map_err(|_| EngineError::ShuttingDown)?;
        Ok(rx)
    }

    /// Submits validated events; resolves once they are durable.
    pub async fn submit(&self, events: Vec<Event>) -> Result<SubmitAck, EngineError> {
        let rx = self.enqueue(events).await?;
        rx.await.map_err(|_| EngineError::ShuttingDown)?
    }

    /// As [`submit`](Self::submit), but answers `Overloaded` at once when the queue is full.
    pub async fn try_submit(&self, events: Vec<Event>) -> Result<SubmitAck, EngineError> {
        if !self.healthy() {
            return Err(EngineError::Unavailable(
                "the engine stopped accepting events after a failure; see the server log".into(),
            ));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit
            .try_send(sequencer::Submit {
                events,
                controls: Vec::new(),
                reply: tx,
            })
            .map_err(|e| match e {
                flume::TrySendError::Full(_) => EngineError::Overloaded(self.submit.len()),
                flume::TrySendError::Disconnected(_) => EngineError::ShuttingDown,
            })?;
        rx.await.map_err(|_| EngineError::ShuttingDown)?
    }

    /// Waits until the views include `seq` (read-your-writes), up to `timeout`.
    pub async fn wait_for_seq(&self, seq: u64, timeout: Duration) -> Result<Readable, EngineError> {
        let mut rx = self.shared.readable.subscribe();
        let started = std::time::Instant::now();
        let waited = tokio::time::timeout(timeout, async {
            rx.wait_for(|r| r.seq >= seq).await.map(|r| *r)
        })
        .await;
        match waited {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(EngineError::ShuttingDown),
            Err(_) => Err(EngineError::Timeout {
                wanted: seq,
                reached: self.readable().seq,
                waited_ms: started.elapsed().as_millis() as u64,
            }),
        }
    }

    /// Reads a user's profile from its owning worker at one complete epoch.
    pub async fn read_profile(
        &self,
        user: &str,
        at: impl Into<ReadAt>,
    ) -> Result<ProfileRead, EngineError> {
        let user = intern(user);
        let (as_of, answers) = self
            .read(at, None, Target::Owner(user), Query::Profile(user))
            .await?;
        let (profile, rfm_ranks) = match answers.into_iter().next() {
            Some(Answer::Profile(read)) => *read,
            _ => (UserProfile::default(), None),
        };
        Ok(ProfileRead {
            as_of,
            profile,
            rfm_ranks,
        })
    }

    /// Asks `target` for `query` at one complete epoch: the newest (after
    /// `at.min_seq`), or the one `at.as_of` names; at or after `min_epoch`. The
    /// answers of the workers asked, in worker order, and the epoch they are as
    /// of. No answers before anything is readable.
    pub(crate) async fn read(
        &self,
        at: impl Into<ReadAt>,
        min_epoch: Option<Time>,
        target: Target,
        query: Query,
    ) -> Result<(Readable, Vec<Answer>), EngineError> {
        let at = at.into();
        // Reads waiting on `min_seq` count against the limit too.
        let _permit = self
            .read_permits
            .try_acquire()
            .map_err(|_| EngineError::Overloaded(self.config.max_pending_reads))?;
        if let Some(seq) = at.min_seq.max(at.as_of) {
            self.wait_for_seq(seq, self.config.min_seq_timeout).await?;
        }
        let (as_of, pin) = match at.as_of {
            Some(seq) => self.pin_as_of(seq, min_epoch)?,
            None => {
                if let Some(epoch) = min_epoch {
                    self.wait_for_epoch(epoch, self.config.min_seq_timeout)
                        .await?;
                }
                self.pin()
            }
        };
        let Some(pin) = pin else {
            return Ok((as_of, Vec::new()));
        };
        let gone = || {
            if self.worker_failed() {
                EngineError::Unavailable("a dataflow worker failed; see the server log".into())
            } else {
                EngineError::ShuttingDown
            }
        };
        let workers: Vec<usize> = match target {
            Target::Owner(user) => {
                vec![shopstream_dataflows::profiles::owner(
                    user,
                    self.requests.len(),
                )]
            }
            Target::All => (0..self.requests.len()).collect(),
        };
        let mut replies = Vec::with_capacity(workers.len());
        for w in workers {
            let (tx, rx) = flume::bounded(1);
            self.requests[w]
                .send(Request {
                    at: pin.at,
                    query,
                    reply: tx,
                })
                .map_err(|_| gone())?;
            self.shared.unpark(w);
            replies.push(rx);
        }
        let mut answers = Vec::with_capacity(replies.len());
        for rx in replies {
            answers.push(rx.recv_async().await.map_err(|_| gone())?);
        }
        drop(pin);
        Ok((as_of, answers))
    }

    /// Waits until the views include epoch `epoch`, up to `timeout`.
    pub async fn wait_for_epoch(
        &self,
        epoch: Time,
        timeout: Duration,
    ) -> Result<Readable, EngineError> {
        let mut rx = self.shared.readable.subscribe();
        let started = std::time::Instant::now();
        let waited = tokio::time::timeout(timeout, async {
            rx.wait_for(|r| r.done > epoch).await.map(|r| *r)
        })
        .await;
        match waited {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(EngineError::ShuttingDown),
            Err(_) => Err(EngineError::Timeout {
                wanted: self.logged_seq(),
                reached: self.readable().seq,
                waited_ms: started.elapsed().as_millis() as u64,
            }),
        }
    }

    /// Logs segment definitions and waits until the views answer with them: the
    /// readable state returned is the first that includes them.
    pub async fn define(&self, controls: Vec<Control>) -> Result<Readable, EngineError> {
        if !self.healthy() {
            return Err(EngineError::Unavailable(
                "the engine stopped accepting changes after a failure; see the server log".into(),
            ));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit
            .send_async(sequencer::Submit {
                events: Vec::new(),
                controls,
                reply: tx,
            })
            .await
            .map_err(|_| EngineError::ShuttingDown)?;
        let ack = rx.await.map_err(|_| EngineError::ShuttingDown)??;
        let Some(epoch) = ack.epoch else {
            return Ok(self.readable());
        };
        // Evaluating a definition over all history can take a while; wait as long
        // as the workers are alive.
        loop {
            match self.wait_for_epoch(epoch, Duration::from_secs(1)).await {
                Err(EngineError::Timeout { .. }) if !self.worker_failed() => continue,
                Err(EngineError::Timeout { .. }) => {
                    return Err(EngineError::Unavailable(
                        "a dataflow worker failed; see the server log".into(),
                    ))
                }
                other => return other,
            }
        }
    }

    /// The segment definitions (a snapshot).
    pub fn definitions(&self) -> Vec<Definition> {
        self.shared
            .registry
            .lock()
            .expect("poisoned")
            .all()
            .cloned()
            .collect()
    }

    /// One segment's definition.
    pub fn definition(&self, name: &str) -> Option<Definition> {
        self.shared
            .registry
            .lock()
            .expect("poisoned")
            .get(name)
            .cloned()
    }

    /// A segment's name from its id.
    pub fn segment_name(&self, id: SegId) -> Option<String> {
        self.shared
            .registry
            .lock()
            .expect("poisoned")
            .name(id)
            .map(str::to_owned)
    }

    /// The change feed.
    pub fn hub(&self) -> &Hub {
        &self.shared.hub
    }

    /// The segments a user is in, by id, with `since`, in id order.
    pub async fn user_segments(
        &self,
        user: &str,
        at: impl Into<ReadAt>,
        min_epoch: Option<Time>,
    ) -> Result<(Readable, Vec<(SegId, Since)>), EngineError> {
        let user = intern(user);
        let (as_of, answers) = self
            .read(
                at,
                min_epoch,
                Target::Owner(user),
                Query::UserSegments(user),
            )
            .await?;
        let segments = match answers.into_iter().next() {
            Some(Answer::UserSegments(v)) => v,
            _ => Vec::new(),
        };
        Ok((as_of, segments))
    }

    /// Members of every segment with members, summed over the workers.
    pub async fn segment_sizes(
        &self,
        at: impl Into<ReadAt>,
        min_epoch: Option<Time>,
    ) -> Result<(Readable, std::collections::HashMap<SegId, i64>), EngineError> {
        let (as_of, answers) = self.read(at, min_epoch, Target::All, Query::Sizes).await?;
        let mut sizes = std::collections::HashMap::new();
        for a in answers {
            if let Answer::Sizes(v) = a {
                for (seg, n) in v {
                    *sizes.entry(seg).or_insert(0) += n;
                }
            }
        }
        Ok((as_of, sizes))
    }

    /// The number of members of segment `id`, at an epoch at or after `min_epoch`.
    pub async fn segment_size(
        &self,
        id: SegId,
        at: impl Into<ReadAt>,
        min_epoch: Option<Time>,
    ) -> Result<(Readable, i64), EngineError> {
        let (as_of, answers) = self
            .read(at, min_epoch, Target::All, Query::Size(id))
            .await?;
        let size = answers
            .into_iter()
            .map(|a| match a {
                Answer::Size(n) => n,
                _ => 0,
            })
            .sum();
        Ok((as_of, size))
    }

    /// Up to `limit` members of segment `id` with ids after `after`, in id order,
    /// and the cursor of the next page (`None`: this was the last).
    pub async fn segment_members(
        &self,
        id: SegId,
        after: Option<UserId>,
        limit: usize,
        at: impl Into<ReadAt>,
        min_epoch: Option<Time>,
    ) -> Result<(Readable, Vec<UserId>, Option<UserId>), EngineError> {
        let query = Query::Members {
            segment: id,
            after,
            limit: limit.saturating_add(1),
        };
        let (as_of, answers) = self.read(at, min_epoch, Target::All, query).await?;
        let mut members: Vec<UserId> = answers
            .into_iter()
            .flat_map(|a| match a {
                Answer::Members(v) => v,
                _ => Vec::new(),
            })
            .collect();
        members.sort_unstable();
        let next = if members.len() > limit {
            members.truncate(limit);
            members.last().copied()
        } else {
            None
        };
        Ok((as_of, members, next))
    }

    /// Pins the newest kept epoch whose last sequence number is at most `seq`.
    fn pin_as_of(
        &self,
        seq: u64,
        min_epoch: Option<Time>,
    ) -> Result<(Readable, Option<Pin<'_>>), EngineError> {
        let mut s = self.shared.state.lock().expect("poisoned");
        // The newest point is always readable; older ones while history keeps them.
        let newest = *self.shared.readable.borrow();
        let found = std::iter::once(newest)
            .filter(|r| r.done > 0)
            .chain(s.history.iter().rev().copied())
            .find(|r| r.seq <= seq);
        let oldest = s.history.front().map_or(newest.seq, |r| r.seq);
        let Some(r) = found else {
            return Err(EngineError::AsOfGone {
                asked: seq,
                oldest,
                kept: s.as_of_history,
            });
        };
        if min_epoch.is_some_and(|e| r.done <= e) {
            return Err(EngineError::AsOfBeforeDefinition { asked: seq });
        }
        let at = r.done - 1;
        *s.pins.entry(at).or_insert(0) += 1;
        drop(s);
        Ok((
            r,
            Some(Pin {
                shared: &self.shared,
                at,
            }),
        ))
    }

    /// Pins the newest epoch that every worker has completed.
    fn pin(&self) -> (Readable, Option<Pin<'_>>) {
        let mut s = self.shared.state.lock().expect("poisoned");
        let r = *self.shared.readable.borrow();
        if r.done == 0 {
            return (r, None);
        }
        let at = r.done - 1;
        *s.pins.entry(at).or_insert(0) += 1;
        drop(s);
        (
            r,
            Some(Pin {
                shared: &self.shared,
                at,
            }),
        )
    }

    /// Stops accepting submissions, lets the sequencer drain, and joins every thread.
    pub fn shutdown(&self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.unpark_all();
        let threads = std::mem::take(&mut *self.threads.lock().expect("poisoned"));
        // The sequencer exits when every submitter is gone or on the shutdown flag.
        for t in threads {
            let _ = t.join();
        }
        self.shared.unpark_all();
        if let Some(g) = self.guards.lock().expect("poisoned").take() {
            for (i, r) in g.join().into_iter().enumerate() {
                if let Err(e) = r {
                    tracing::error!(worker = i, error = %e, "worker had failed");
                }
            }
        }
    }
}
