//! The running engine: start-up (catalog, services, workers, sequencer, replay),
//! submissions, definitions, and reads of any view at one pinned epoch.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shopstream_dataflows::types::{intern, owner, Time};
use shopstream_dataflows::view::{Env, Names, ReadCtx, View};

use super::epoch::Feed;
use super::host::{HostContext, ViewHost};
use super::sequencer::IDENTITY_PART;
use super::sequencer::{SnapshotContext, SnapshotInfo, Work};
use super::shared::{Pin, Shared};
use super::worker::{self, Request};
use super::{sequencer, EngineError, Readable, ReplayError, SubmitAck, Unavailable};
use crate::catalog::{Catalog, Control};
use crate::config::Config;
use crate::event::Event;
use crate::identity::IdentityGraph;
use crate::log::{self, Recovery};
use crate::snapshot::{self, SnapshotError};
use crate::symbols::Symbols;

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

/// The definition a read is of (a segment, say): the read is at or after the
/// epoch it took effect at, and one of a past point before it is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Defined {
    /// The kind of definition, for the refusal ("before this segment was defined").
    pub kind: &'static str,
    pub epoch: Time,
}

/// Which workers a read asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// The worker that owns this key (a user, an item).
    Owner(u64),
    /// Every worker (each answers for the keys it owns).
    All,
}

/// One epoch pinned for several reads ([`Engine::pinned`]).
pub struct PinnedRead<'e> {
    engine: &'e Engine,
    /// What the reads are as of.
    pub as_of: Readable,
    pin: Option<Pin>,
    _permit: tokio::sync::SemaphorePermit<'e>,
}

impl PinnedRead<'_> {
    /// Whether anything is readable (else every read answers nothing).
    pub fn readable(&self) -> bool {
        self.pin.is_some()
    }

    /// The interned canonical id of the user `id` names at this epoch, with its
    /// identity (`None`: no link names it).
    pub fn user(&self, id: &str) -> (u64, Option<crate::identity::Identity>) {
        let identity = self.engine.identity(id, self.as_of.seq);
        let key = intern(identity.as_ref().map_or(id, |i| i.canonical.as_str()));
        (key, identity)
    }

    /// Runs `read` against the views of the workers `route` names, at the pinned
    /// epoch; no answers before anything is readable.
    pub async fn ask<A, F>(&self, route: Route, read: F) -> Result<Vec<A>, EngineError>
    where
        A: Send + 'static,
        F: Fn(&mut shopstream_dataflows::view::Views, ReadCtx) -> A + Send + Sync + 'static,
    {
        let Some(pin) = &self.pin else {
            return Ok(Vec::new());
        };
        let peers = self.engine.requests.len();
        let workers: Vec<usize> = match route {
            Route::Owner(key) => vec![owner(key, peers)],
            Route::All => (0..peers).collect(),
        };
        self.engine.ask_views(pin.at, workers, read).await
    }

    /// Runs `read` against view `V` of the workers `route` names, at the pinned
    /// epoch (`NoSuchView` when `V` is not registered).
    pub async fn ask_view<V, A, F>(&self, route: Route, read: F) -> Result<Vec<A>, EngineError>
    where
        V: View,
        A: Send + 'static,
        F: Fn(&mut V, ReadCtx) -> A + Send + Sync + 'static,
    {
        let answers = self
            .ask(route, move |views, cx| {
                views.get::<V>().map(|v| read(v, cx))
            })
            .await?;
        answers
            .into_iter()
            .map(|a| a.ok_or(EngineError::NoSuchView(std::any::type_name::<V>())))
            .collect()
    }
}

/// The running engine. Cheap to share behind an `Arc`.
pub struct Engine {
    shared: Arc<Shared>,
    submit: flume::Sender<sequencer::Work>,
    requests: Vec<flume::Sender<Request>>,
    pub symbols: Arc<Symbols>,
    read_permits: Arc<tokio::sync::Semaphore>,
    pub config: Config,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    guards: Mutex<Option<timely::communication::WorkerGuards<()>>>,
    recovery: Recovery,
    hosts: Vec<Arc<dyn ViewHost>>,
    env: Env,
    /// Held by whoever checks and then logs a definition change, so that two
    /// concurrent requests cannot both pass a check the other invalidates.
    pub definitions: tokio::sync::Mutex<()>,
}

/// What a worker receives: epochs from the sequencer, reads from handlers.
type Inbox = (flume::Receiver<Feed>, flume::Receiver<Request>);

/// The channels between the engine and its workers, before the workers start.
struct Wiring {
    epoch_txs: Vec<flume::Sender<Feed>>,
    request_txs: Vec<flume::Sender<Request>>,
    inboxes: Vec<Option<Inbox>>,
}

impl Wiring {
    fn new(workers: usize) -> Self {
        let mut w = Wiring {
            epoch_txs: Vec::new(),
            request_txs: Vec::new(),
            inboxes: Vec::new(),
        };
        for _ in 0..workers {
            let (etx, erx) = flume::bounded(64);
            let (rtx, rrx) = flume::unbounded();
            w.epoch_txs.push(etx);
            w.request_txs.push(rtx);
            w.inboxes.push(Some((erx, rrx)));
        }
        w
    }
}

impl Engine {
    /// Opens the log, replays it through the views `hosts` registers (see
    /// `crate::serve::views`) and returns once every view includes the whole log.
    /// `progress` is told (bytes read, bytes total).
    pub fn start(
        config: Config,
        hosts: &[Arc<dyn ViewHost>],
        progress: impl FnMut(u64, u64) + Send + 'static,
    ) -> Result<Arc<Engine>, EngineError> {
        let symbols = Arc::new(Symbols::default());
        let catalog = Arc::new(Catalog::new(
            hosts.iter().flat_map(|h| h.compilers(&config)).collect(),
        ));
        let env = Self::provide(&config, hosts, &symbols, &catalog);
        let identity = Arc::new(Mutex::new(IdentityGraph::new(config.max_ids_per_user)));
        let snapshots = Self::restore(&config, hosts, &env, &symbols, &catalog, &identity)?;
        let shared = Arc::new(Shared::new(
            config.workers,
            config.as_of_history,
            catalog,
            identity,
        ));
        let mut wiring = Wiring::new(config.workers);
        let guards = Self::start_workers(&config, &shared, &symbols, &env, &mut wiring)?;
        let (submit_tx, submit_rx) = flume::bounded(config.queue_depth);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let seq_thread = {
            let shared = shared.clone();
            let config = config.clone();
            let epoch_txs = std::mem::take(&mut wiring.epoch_txs);
            std::thread::Builder::new()
                .name("shopstream-sequencer".into())
                .spawn(move || {
                    sequencer::run(
                        config, shared, submit_rx, epoch_txs, snapshots, ready_tx, progress,
                    )
                })
                .expect("spawn sequencer")
        };
        let recovery = match ready_rx.recv() {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(ReplayError::SequencerStopped.into()),
        };
        let engine = Arc::new(Engine {
            shared,
            submit: submit_tx,
            requests: wiring.request_txs,
            symbols,
            read_permits: Arc::new(tokio::sync::Semaphore::new(config.max_pending_reads)),
            config,
            threads: Mutex::new(vec![seq_thread]),
            guards: Mutex::new(Some(guards)),
            recovery,
            hosts: hosts.to_vec(),
            env,
            definitions: tokio::sync::Mutex::new(()),
        });
        engine.wait_for_replay()?;
        Ok(engine)
    }

    /// The services every view's dataflow and handlers share: the symbol table's
    /// names, then what each view provides.
    fn provide(
        config: &Config,
        hosts: &[Arc<dyn ViewHost>],
        symbols: &Arc<Symbols>,
        catalog: &Arc<Catalog>,
    ) -> Env {
        let mut env = Env::default();
        let names: Names = {
            let symbols = symbols.clone();
            Arc::new(move |id| symbols.resolve(id))
        };
        env.insert(names);
        let cx = HostContext {
            config,
            symbols,
            catalog,
        };
        for h in hosts {
            h.provide(&mut env, cx);
        }
        env
    }

    /// Chooses the snapshot to start from ([`snapshot::choose`]) and restores
    /// what lives outside the workers: the symbol table, the catalog (compiled
    /// for the workers) and the host halves. The sequencer hands the rest to the
    /// workers as the first epoch.
    fn restore(
        config: &Config,
        hosts: &[Arc<dyn ViewHost>],
        env: &Env,
        symbols: &Arc<Symbols>,
        catalog: &Arc<Catalog>,
        identity: &Mutex<IdentityGraph>,
    ) -> Result<SnapshotContext, EngineError> {
        let save_hosts = {
            let hosts = hosts.to_vec();
            let env = env.clone();
            Arc::new(move || {
                hosts
                    .iter()
                    .filter_map(|h| h.snapshot(&env).map(|b| (h.name().to_owned(), b)))
                    .collect()
            })
        };
        let log_starts = log::first_epoch(&config.data_dir)?;
        let chosen = snapshot::choose(&snapshot::dir(&config.data_dir), log_starts)?;
        let restore = match chosen {
            None => None,
            Some(mut s) => {
                symbols.restore(std::mem::take(&mut s.symbols));
                let definitions = catalog.restore(std::mem::take(&mut s.catalog));
                if let Some(saved) = s.host(IDENTITY_PART) {
                    identity
                        .lock()
                        .expect("poisoned")
                        .restore(saved)
                        .map_err(|reason| SnapshotError::Damaged {
                            path: snapshot::dir(&config.data_dir),
                            reason: format!("identity graph: {reason}"),
                        })?;
                }
                for h in hosts {
                    if let Some(saved) = s.host(h.name()) {
                        h.restore(env, saved)
                            .map_err(|reason| SnapshotError::Damaged {
                                path: snapshot::dir(&config.data_dir),
                                reason: format!("view {}: {reason}", h.name()),
                            })?;
                    }
                }
                tracing::info!(
                    epoch = s.epoch,
                    seq = s.next_seq - 1,
                    workers = s.workers,
                    "snapshot: starting from it"
                );
                Some((Arc::new(s), definitions))
            }
        };
        Ok(SnapshotContext {
            symbols: symbols.clone(),
            save_hosts,
            restore,
        })
    }

    /// Writes a snapshot after the last epoch logged, and answers once it is
    /// durable (see [`crate::snapshot`]).
    pub async fn snapshot(&self) -> Result<SnapshotInfo, EngineError> {
        self.refuse_when_unhealthy()?;
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.submit
            .send_async(Work::Snapshot(reply))
            .await
            .map_err(|_| EngineError::ShuttingDown)?;
        Ok(rx.await.map_err(|_| EngineError::ShuttingDown)??)
    }

    /// Starts the timely workers, each building every view.
    fn start_workers(
        config: &Config,
        shared: &Arc<Shared>,
        symbols: &Arc<Symbols>,
        env: &Env,
        wiring: &mut Wiring,
    ) -> Result<timely::communication::WorkerGuards<()>, EngineError> {
        let inbox = Arc::new(Mutex::new(std::mem::take(&mut wiring.inboxes)));
        let shared = shared.clone();
        let symbols = symbols.clone();
        let env = env.clone();
        timely::execute(timely::Config::process(config.workers), move |w| {
            let (epochs, requests) = inbox.lock().expect("poisoned")[w.index()]
                .take()
                .expect("each worker starts once");
            worker::run(
                w,
                worker::Context {
                    shared: shared.clone(),
                    symbols: symbols.clone(),
                    env: env.clone(),
                    epochs,
                    requests,
                },
            )
        })
        .map_err(EngineError::Timely)
    }

    /// Serves nothing until the views include the whole log.
    fn wait_for_replay(&self) -> Result<(), EngineError> {
        let target = self.recovery.last_epoch.map_or(0, |e| e + 1);
        let mut rx = self.shared.readable.subscribe();
        while rx.borrow_and_update().done < target {
            if rx.has_changed().is_err() {
                return Err(EngineError::ShuttingDown);
            }
            if self.shared.worker_failed.load(Ordering::SeqCst) {
                self.shutdown();
                return Err(ReplayError::WorkerFailed.into());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    /// What the log held at start.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// What the views include now.
    pub fn readable(&self) -> Readable {
        *self.shared.readable.borrow()
    }

    /// The symbol table as a view sees it (ids to names, e.g. to break ties by
    /// name): the one the views were given.
    pub fn names(&self) -> Names {
        self.env.expect::<Names>()
    }

    /// Last sequence number in the log.
    pub fn logged_seq(&self) -> u64 {
        self.shared.logged_seq.load(Ordering::Relaxed)
    }

    /// Whether events are still accepted: the log is writable and every worker runs.
    pub fn healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Relaxed) && !self.worker_failed()
    }

    /// Why log writes are failing while they are retried (a full disk, say);
    /// `None` when they work.
    pub fn log_fault(&self) -> Option<String> {
        self.shared.log_fault.lock().expect("poisoned").clone()
    }

    /// Whether a dataflow worker has failed.
    pub fn worker_failed(&self) -> bool {
        self.shared.worker_failed.load(Ordering::Relaxed)
    }

    /// Why nothing more is accepted, when it is not.
    fn refuse_when_unhealthy(&self) -> Result<(), EngineError> {
        if self.worker_failed() {
            return Err(Unavailable::WorkerFailed.into());
        }
        if !self.shared.healthy.load(Ordering::Relaxed) {
            return Err(Unavailable::LogFailed.into());
        }
        Ok(())
    }

    /// The identity of `id` as of sequence number `as_of` (see [`crate::identity`]).
    pub fn identity(&self, id: &str, as_of: u64) -> Option<crate::identity::Identity> {
        self.shared
            .identity
            .lock()
            .expect("poisoned")
            .read(id, as_of)
    }

    /// The definitions of every kind.
    pub fn catalog(&self) -> &Catalog {
        &self.shared.catalog
    }

    /// A service a view provided (see [`ViewHost::provide`]).
    pub fn service<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        self.env.get()
    }

    fn submission(
        events: Vec<Event>,
        controls: Vec<Control>,
    ) -> (
        Work,
        tokio::sync::oneshot::Receiver<Result<SubmitAck, EngineError>>,
    ) {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let submit = Work::Submit(sequencer::Submit {
            events,
            controls,
            reply,
        });
        (submit, rx)
    }

    /// Queues validated events for the log, waiting for room in the queue (the
    /// caller is slowed down; memory stays bounded). The receiver resolves once they
    /// are durable (or recognised as duplicates).
    pub async fn enqueue(
        &self,
        events: Vec<Event>,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<SubmitAck, EngineError>>, EngineError> {
        self.refuse_when_unhealthy()?;
        let (submit, rx) = Self::submission(events, Vec::new());
        self.submit
            .send_async(submit)
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
        self.refuse_when_unhealthy()?;
        let (submit, rx) = Self::submission(events, Vec::new());
        self.submit.try_send(submit).map_err(|e| match e {
            flume::TrySendError::Full(_) => EngineError::Overloaded(self.submit.len()),
            flume::TrySendError::Disconnected(_) => EngineError::ShuttingDown,
        })?;
        rx.await.map_err(|_| EngineError::ShuttingDown)?
    }

    /// Waits until the readable point satisfies `reached`, up to `timeout`;
    /// `wanted` is the sequence number a timeout reports waiting for.
    async fn wait_until(
        &self,
        reached: impl FnMut(&Readable) -> bool,
        wanted: u64,
        timeout: Duration,
    ) -> Result<Readable, EngineError> {
        let mut rx = self.shared.readable.subscribe();
        let started = std::time::Instant::now();
        let waited =
            tokio::time::timeout(timeout, async { rx.wait_for(reached).await.map(|r| *r) }).await;
        match waited {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(EngineError::ShuttingDown),
            Err(_) => Err(EngineError::Timeout {
                wanted,
                reached: self.readable().seq,
                waited_ms: started.elapsed().as_millis() as u64,
            }),
        }
    }

    /// Waits until the views include `seq` (read-your-writes), up to `timeout`.
    pub async fn wait_for_seq(&self, seq: u64, timeout: Duration) -> Result<Readable, EngineError> {
        self.wait_until(|r| r.seq >= seq, seq, timeout).await
    }

    /// Waits until the views include epoch `epoch`, up to `timeout`.
    pub async fn wait_for_epoch(
        &self,
        epoch: Time,
        timeout: Duration,
    ) -> Result<Readable, EngineError> {
        self.wait_until(|r| r.done > epoch, self.logged_seq(), timeout)
            .await
    }

    /// Reads view `V` at one complete epoch: the newest (after `at.min_seq`), or
    /// the one `at.as_of` names; at or after `defined`'s epoch. `read` runs on each
    /// worker `route` names, against that worker's `V`, between steps; the answers
    /// come in worker order, with the epoch they are as of. No answers before
    /// anything is readable.
    pub async fn read<V, A, F>(
        &self,
        at: impl Into<ReadAt>,
        defined: Option<Defined>,
        route: Route,
        read: F,
    ) -> Result<(Readable, Vec<A>), EngineError>
    where
        V: View,
        A: Send + 'static,
        F: Fn(&mut V, ReadCtx) -> A + Send + Sync + 'static,
    {
        let pinned = self.pinned_for(at.into(), defined).await?;
        let answers = pinned.ask_view(route, read).await?;
        Ok((pinned.as_of, answers))
    }

    /// Reads view `V` for the user `id` names, at one complete epoch (as
    /// [`read`](Self::read)): `id` is resolved to its canonical id by the
    /// identity graph as of that epoch, and `read` runs, with the canonical id
    /// interned, on the worker that owns it. Returns the identity too (`None`: no
    /// link names `id`), and no answer before anything is readable.
    pub async fn read_user<V, A, F>(
        &self,
        at: impl Into<ReadAt>,
        defined: Option<Defined>,
        id: &str,
        read: F,
    ) -> Result<(Readable, Option<crate::identity::Identity>, Option<A>), EngineError>
    where
        V: View,
        A: Send + 'static,
        F: Fn(&mut V, u64, ReadCtx) -> A + Send + Sync + 'static,
    {
        let pinned = self.pinned_for(at.into(), defined).await?;
        if !pinned.readable() {
            return Ok((pinned.as_of, None, None));
        }
        let (key, identity) = pinned.user(id);
        let answers = pinned
            .ask_view(Route::Owner(key), move |v: &mut V, cx| read(v, key, cx))
            .await?;
        Ok((pinned.as_of, identity, answers.into_iter().next()))
    }

    /// Runs `read` against every view of each of `workers` at the pinned epoch
    /// `at` (a read that combines views, e.g. a user's history with the profile's
    /// cart); the answers in worker order.
    async fn ask_views<A, F>(
        &self,
        at: Time,
        workers: Vec<usize>,
        read: F,
    ) -> Result<Vec<A>, EngineError>
    where
        A: Send + 'static,
        F: Fn(&mut shopstream_dataflows::view::Views, ReadCtx) -> A + Send + Sync + 'static,
    {
        let read = Arc::new(read);
        let mut replies = Vec::with_capacity(workers.len());
        for w in workers {
            let (tx, rx) = flume::bounded(1);
            let read = read.clone();
            let request = Request {
                at,
                read: Box::new(move |views, cx| {
                    let _ = tx.send(read(views, cx));
                }),
            };
            self.requests[w].send(request).map_err(|_| self.gone())?;
            self.shared.unpark(w);
            replies.push(rx);
        }
        let mut answers = Vec::with_capacity(replies.len());
        for rx in replies {
            answers.push(rx.recv_async().await.map_err(|_| self.gone())?);
        }
        Ok(answers)
    }

    /// Pins one complete epoch (as [`read`](Self::read) does) for a question that
    /// takes several reads: every read of the [`PinnedRead`] is at that epoch, so
    /// the answer is as of one time. Its reads answer nothing before anything is
    /// readable.
    pub async fn pinned(&self, at: impl Into<ReadAt>) -> Result<PinnedRead<'_>, EngineError> {
        self.pinned_for(at.into(), None).await
    }

    /// [`pinned`](Self::pinned), at or after `defined`'s epoch. Reads waiting on
    /// `min_seq` count against the limit of pending reads too.
    async fn pinned_for(
        &self,
        at: ReadAt,
        defined: Option<Defined>,
    ) -> Result<PinnedRead<'_>, EngineError> {
        let permit = self
            .read_permits
            .try_acquire()
            .map_err(|_| EngineError::Overloaded(self.config.max_pending_reads))?;
        let (as_of, pin) = self.pin_for(at, defined).await?;
        Ok(PinnedRead {
            engine: self,
            as_of,
            pin,
            _permit: permit,
        })
    }

    /// What a read reports when its worker went away.
    fn gone(&self) -> EngineError {
        if self.worker_failed() {
            Unavailable::WorkerFailed.into()
        } else {
            EngineError::ShuttingDown
        }
    }

    /// Waits for and pins the epoch a read is at (`None` before anything is readable).
    async fn pin_for(
        &self,
        at: ReadAt,
        defined: Option<Defined>,
    ) -> Result<(Readable, Option<Pin>), EngineError> {
        if let Some(seq) = at.min_seq.max(at.as_of) {
            self.wait_for_seq(seq, self.config.min_seq_timeout).await?;
        }
        match at.as_of {
            Some(seq) => self.pin_as_of(seq, defined),
            None => {
                if let Some(d) = defined {
                    self.wait_for_epoch(d.epoch, self.config.min_seq_timeout)
                        .await?;
                }
                Ok(self.pin())
            }
        }
    }

    /// Logs definition changes and waits until the views answer with them: the
    /// readable state returned is the first that includes them. Each is checked by
    /// its kind's compiler first, so a bad one is refused before anything is logged.
    pub async fn define(&self, controls: Vec<Control>) -> Result<Readable, EngineError> {
        self.refuse_when_unhealthy()?;
        for c in &controls {
            self.catalog().check(c)?;
        }
        let (submit, rx) = Self::submission(Vec::new(), controls);
        self.submit
            .send_async(submit)
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
                Err(EngineError::Timeout { .. }) => return Err(Unavailable::WorkerFailed.into()),
                other => return other,
            }
        }
    }

    /// Definition changes every view's configuration asks for at start, given
    /// what the log defines.
    pub fn startup_controls(&self) -> Result<Vec<Control>, crate::catalog::StartupError> {
        let mut out = Vec::new();
        for h in &self.hosts {
            out.extend(h.startup(&self.config, self.catalog())?);
        }
        Ok(out)
    }

    /// Pins the newest kept epoch whose last sequence number is at most `seq`.
    fn pin_as_of(
        &self,
        seq: u64,
        defined: Option<Defined>,
    ) -> Result<(Readable, Option<Pin>), EngineError> {
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
        if let Some(d) = defined.filter(|d| r.done <= d.epoch) {
            return Err(EngineError::AsOfBeforeDefinition {
                asked: seq,
                kind: d.kind,
            });
        }
        let pin = self.shared.pin_locked(&mut s, r.done - 1);
        Ok((r, Some(pin)))
    }

    /// Pins the newest epoch that every worker has completed.
    fn pin(&self) -> (Readable, Option<Pin>) {
        let mut s = self.shared.state.lock().expect("poisoned");
        let r = *self.shared.readable.borrow();
        if r.done == 0 {
            return (r, None);
        }
        let pin = self.shared.pin_locked(&mut s, r.done - 1);
        (r, Some(pin))
    }

    /// Ends what outlives requests (open feeds), before the listeners stop.
    pub fn close_feeds(&self) {
        for h in &self.hosts {
            h.close(&self.env);
        }
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
