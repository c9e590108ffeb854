//! A timely worker: builds every view, feeds each epoch's events of the users it
//! owns to all of them, steps the dataflow, reports completed epochs, compacts
//! the views behind the readers, and serves reads between steps.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use shopstream_dataflows::types::{intern, owner, Aliases, IdSet, Line, ShopEvent, Time, UserId};
use shopstream_dataflows::view::{Env, EpochBatch, Place, ReadCtx, Views};
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::worker::Worker;

use super::epoch::{Feed, SnapshotTake};
use super::shared::Shared;
use super::{Epoch, Readable};
use crate::event::Event;
use crate::symbols::Symbols;

/// A read on one worker: called with the worker's views (it finds its own by
/// type) and where it runs.
pub(crate) type ReadFn = Box<dyn FnOnce(&mut Views, ReadCtx) + Send>;

/// A read a worker serves between steps, at epoch `at`.
pub(crate) struct Request {
    pub at: Time,
    pub read: ReadFn,
}

pub(super) struct Context {
    pub shared: Arc<Shared>,
    pub symbols: Arc<Symbols>,
    pub env: Env,
    pub epochs: flume::Receiver<Feed>,
    pub requests: flume::Receiver<Request>,
}

/// Epochs fed in one turn before the worker steps and serves reads again, so that
/// reads are not starved during a replay or a burst.
const FEED_PER_TURN: usize = 8;

/// Marks the engine failed if the worker thread unwinds, so that nothing waits on
/// it forever.
struct FailGuard(Arc<Shared>);

impl Drop for FailGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!("a dataflow worker panicked; the engine stops accepting events");
            self.0
                .worker_failed
                .store(true, std::sync::atomic::Ordering::SeqCst);
            self.0.unpark_all();
        }
    }
}

/// One worker's state between turns of its loop.
struct Host {
    index: usize,
    peers: usize,
    views: Views,
    probe: ProbeHandle<Time>,
    symbols: Arc<Symbols>,
    /// Ids whose strings this worker has already handed to the shared symbol table.
    known: IdSet,
    /// Epochs fed and not yet complete, oldest first.
    in_flight: VecDeque<Readable>,
    /// The backlog places of the epochs of `in_flight`, held until they complete,
    /// so that `engine.max_queued_events` bounds what is fed and not yet through
    /// the dataflow too.
    holding: VecDeque<Arc<super::epoch::BacklogPermit>>,
    done: Readable,
    compacted: Option<Time>,
    /// Each view's gauges by name, registered at start.
    gauges: Vec<(&'static str, metrics::Gauge)>,
    /// The epoch's events of this worker's users, interned. Kept across epochs
    /// and overwritten in place (their line and trait vectors keep their
    /// capacity): building a whole epoch of fresh events before the views read
    /// them, and freeing them all after, cost about 10% of the CPU per event in
    /// the allocator (measured with `perf`, 1M events, 16 built-in segments).
    events: Vec<ShopEvent>,
    /// A snapshot asked for: nothing more is fed until every epoch fed before
    /// it is complete and the views are saved.
    snapshot: Option<SnapshotTake>,
    /// Every identity merge so far (each worker keeps them all: it resolves the
    /// user of every event to decide whether it is its own).
    aliases: Aliases,
    /// The merges of the epoch being fed, interned.
    links: Vec<(UserId, UserId)>,
}

pub(super) fn run(worker: &mut Worker, ctx: Context) {
    let _guard = FailGuard(ctx.shared.clone());
    let probe = ProbeHandle::new();
    let views = worker.dataflow::<Time, _, _>(|scope| {
        shopstream_dataflows::views::build(scope, &ctx.env, &probe)
    });
    ctx.shared.threads.lock().expect("poisoned")[worker.index()] = Some(std::thread::current());
    let mut host = Host {
        index: worker.index(),
        peers: worker.peers(),
        views,
        probe,
        symbols: ctx.symbols.clone(),
        known: IdSet::default(),
        in_flight: VecDeque::new(),
        holding: VecDeque::new(),
        done: Readable {
            clock: i64::MIN,
            ..Readable::default()
        },
        compacted: None,
        gauges: Vec::new(),
        events: Vec::new(),
        snapshot: None,
        aliases: Aliases::default(),
        links: Vec::new(),
    };
    host.export_gauges();
    loop {
        let failed = ctx
            .shared
            .worker_failed
            .load(std::sync::atomic::Ordering::Relaxed);
        if failed {
            // Another worker failed: the epochs a snapshot waits for may never
            // complete, so it is given up (the collector sees the parts missing).
            host.snapshot = None;
        }
        let (fed, closed) = if host.snapshot.is_some() {
            (0, false)
        } else {
            host.feed_turn(&ctx)
        };
        let idle = fed == 0 && ctx.requests.is_empty();
        if closed && (host.in_flight.is_empty() || failed) {
            break;
        }
        worker.step_or_park(Some(if idle {
            Duration::from_millis(50)
        } else {
            Duration::ZERO
        }));
        host.advance(&ctx.shared);
        for view in host.views.iter_mut() {
            view.poll();
        }
        host.serve_pending(&ctx.requests);
        host.snapshot_when_complete();
    }
    // Drain reads that raced with shutdown so no reader hangs.
    host.serve_pending(&ctx.requests);
}

impl Host {
    /// Feeds up to [`FEED_PER_TURN`] epochs, answering reads between them (reads
    /// are at epochs already complete, so they can be answered at any point).
    /// Returns how many were fed and whether the sequencer has gone.
    fn feed_turn(&mut self, ctx: &Context) -> (usize, bool) {
        let mut fed = 0;
        while fed < FEED_PER_TURN {
            self.serve_pending(&ctx.requests);
            match ctx.epochs.try_recv() {
                Ok(Feed::Epoch(epoch, permit)) => {
                    self.feed(&epoch);
                    self.holding.push_back(permit);
                    fed += 1;
                }
                Ok(Feed::Snapshot(take)) => {
                    self.snapshot = Some(take);
                    return (fed, false);
                }
                Err(flume::TryRecvError::Empty) => return (fed, false),
                Err(flume::TryRecvError::Disconnected) => return (fed, true),
            }
        }
        (fed, false)
    }

    /// Applies the epoch's identity merges, interns the events this worker is to
    /// process (keyed by their user's canonical id) and feeds the epoch to every
    /// view.
    fn feed(&mut self, epoch: &Epoch) {
        if let Some(snapshot) = &epoch.restore {
            self.restore(snapshot, epoch.epoch);
        }
        self.links.clear();
        for (id, user) in &epoch.links {
            let (i, u) = (intern(id), intern(user));
            if self.aliases.merge(i, u) {
                self.links.push((i, u));
            }
            // The user may have no event of its own yet: answers name it.
            self.symbols.remember(u, user, &mut self.known);
        }
        let mut n = 0;
        for (seq, ev) in epoch.events() {
            let raw = intern(&ev.user);
            let user = self.aliases.resolve(raw);
            // The order book is kept by order id (it need not move when
            // identities merge), so the owner of the order id processes the
            // order's events; everything else, the owner of the user.
            let order = match (&ev.order_id, ev.kind.is_order()) {
                (Some(o), true) => intern(o),
                _ => 0,
            };
            let place = if order != 0 { order } else { user };
            if owner(place, self.peers) != self.index {
                continue;
            }
            if user == raw {
                // Members and the change feed answer with the user's id text.
                self.symbols.remember(user, &ev.user, &mut self.known);
            }
            if n == self.events.len() {
                self.events.push(ShopEvent::default());
            }
            shop_event(
                ev,
                user,
                seq,
                &self.symbols,
                &mut self.known,
                &mut self.events[n],
            );
            n += 1;
        }
        let batch = EpochBatch {
            epoch: epoch.epoch,
            seq: epoch.last_seq(),
            clock: epoch.clock,
            events: &self.events[..n],
            definitions: &epoch.definitions,
            links: &self.links,
            aliases: &self.aliases,
        };
        for view in self.views.iter_mut() {
            view.feed(&batch);
        }
        self.in_flight.push_back(Readable {
            done: epoch.epoch + 1,
            seq: batch.seq,
            clock: epoch.clock,
        });
        self.export_gauges();
    }

    /// Restores every view from the snapshot's parts, at epoch `at` (before the
    /// epoch is fed). A part that does not decode passed the file's checksums, so
    /// it is of another version: the worker stops, and the start fails.
    fn restore(&mut self, snapshot: &crate::snapshot::Snapshot, at: Time) {
        let place = Place {
            worker: self.index,
            peers: self.peers,
        };
        if let Some(saved) = snapshot.host(super::sequencer::IDENTITY_PART) {
            let mut graph = crate::identity::IdentityGraph::default();
            if let Err(e) = graph.restore(saved) {
                panic!("cannot restore the identity graph of epoch {at}: {e}");
            }
            for (id, user) in graph.merges() {
                self.aliases.merge(intern(id), intern(user));
            }
        }
        for view in self.views.iter_mut() {
            if let Err(e) = view.restore(snapshot.parts(view.name()), at, place) {
                tracing::error!(error = %e, epoch = at, "snapshot: cannot restore");
                panic!("cannot restore from the snapshot of epoch {at}: {e}");
            }
        }
    }

    /// Once a snapshot was asked for and every epoch fed before it is complete,
    /// saves every view at the last of them, hands the parts over and waits
    /// until the snapshot's other parts are taken.
    fn snapshot_when_complete(&mut self) {
        if self.snapshot.is_none() || !self.in_flight.is_empty() {
            return;
        }
        let SnapshotTake { parts, resume } = self.snapshot.take().expect("checked");
        let at = self.done.done.saturating_sub(1);
        let saved = self
            .views
            .iter_mut()
            .map(|v| (v.name().to_owned(), v.snapshot(at)))
            .collect();
        let sent = parts.send((self.index, at, saved)).is_ok();
        // Before waiting: if another worker fails instead of sending its part, the
        // collector sees every sender gone and gives up (and lets this one go).
        drop(parts);
        if sent {
            // Returns when the collector is done with the host halves (or gone).
            let _ = resume.recv();
        }
    }

    /// Sets every view's gauges (registering a name the first time it is seen).
    fn export_gauges(&mut self) {
        for view in self.views.iter_mut() {
            for (name, value) in view.gauges() {
                let at = match self.gauges.iter().position(|(n, _)| *n == name) {
                    Some(i) => i,
                    None => {
                        let g = metrics::gauge!(name, "worker" => self.index.to_string());
                        self.gauges.push((name, g));
                        self.gauges.len() - 1
                    }
                };
                self.gauges[at].1.set(value);
            }
        }
    }

    /// Moves past the epochs the probe has passed: tells the views, reports them,
    /// and compacts behind the readers.
    fn advance(&mut self, shared: &Shared) {
        let mut advanced = false;
        while let Some(front) = self.in_flight.front() {
            if self.probe.less_equal(&(front.done - 1)) {
                break;
            }
            self.done = *front;
            self.in_flight.pop_front();
            self.holding.pop_front();
            advanced = true;
        }
        if !advanced {
            return;
        }
        for view in self.views.iter_mut() {
            view.completed(self.done.done);
        }
        let frontier = shared.complete(self.index, self.done);
        if self.compacted.is_none_or(|c| frontier > c) {
            for view in self.views.iter_mut() {
                view.compact(frontier);
            }
            self.compacted = Some(frontier);
        }
    }

    /// Answers every queued read. Reads are always at an epoch every worker has
    /// completed (the reader pinned it).
    fn serve_pending(&mut self, requests: &flume::Receiver<Request>) {
        while let Ok(request) = requests.try_recv() {
            let cx = ReadCtx {
                at: request.at,
                worker: self.index,
            };
            (request.read)(&mut self.views, cx);
        }
    }
}

/// Interns an event's strings (remembering their text for answers) into what the
/// views consume, overwriting `out` (whose vectors keep their capacity).
pub(crate) fn shop_event(
    ev: &Event,
    user: u64,
    seq: u64,
    symbols: &Symbols,
    known: &mut IdSet,
    out: &mut ShopEvent,
) {
    let mut sym = |s: &str| symbols.intern_local(s, known);
    out.lines.clear();
    out.lines.extend(ev.products.iter().map(|p| Line {
        item: sym(&p.id),
        category: p.category.as_deref().map_or(0, &mut sym),
        brand: p.brand.as_deref().map_or(0, &mut sym),
        price: p.price,
        quantity: p.quantity,
    }));
    out.traits.clear();
    out.traits
        .extend(ev.traits.iter().map(|(k, v)| (sym(k), sym(v))));
    out.seq = seq;
    out.user = user;
    out.ts = ev.ts;
    out.kind = ev.kind;
    out.name = sym(&ev.name);
    out.revenue = ev.revenue;
    out.order = ev.order_id.as_deref().map_or(0, intern);
}
