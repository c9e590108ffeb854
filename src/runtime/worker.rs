//! A timely worker: feeds the epochs of the users it owns into the views, steps
//! the dataflow, reports completed epochs, compacts its traces behind the readers,
//! and serves cursor reads between steps.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use shopstream_dataflows::profiles::{self, ProfileFeeder, ProfileInputs, ProfileTraces};
use shopstream_dataflows::segments::{self, ChangeBuffer, Names, SegmentTraces};
use shopstream_dataflows::types::{intern, IdSet, Line, ShopEvent, Time};
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::worker::Worker;

use super::{Answer, Epoch, Query, Readable, Request, Shared};
use crate::event::Event;
use crate::symbols::Symbols;

pub(super) struct Context {
    pub shared: Arc<Shared>,
    pub symbols: Arc<Symbols>,
    pub epochs: flume::Receiver<Arc<Epoch>>,
    pub requests: flume::Receiver<Request>,
    pub order_horizon: usize,
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

pub(super) fn run(worker: &mut Worker, ctx: Context) {
    let _guard = FailGuard(ctx.shared.clone());
    let index = worker.index();
    let peers = worker.peers();
    let probe = ProbeHandle::new();
    let names: Names = {
        let symbols = ctx.symbols.clone();
        Arc::new(move |id| symbols.resolve(id))
    };
    let (mut inputs, mut traces, mut seg_inputs, mut seg_traces, changes) = worker
        .dataflow::<Time, _, _>(|scope| {
            let (inputs, arranged) = profiles::build(scope, &probe);
            let (seg_inputs, seg_traces, changes) =
                segments::build(scope, &arranged, names, &probe);
            (inputs, arranged.traces(), seg_inputs, seg_traces, changes)
        });
    // Epochs fed whose membership changes are not staged yet: (epoch, seq, clock).
    let mut unstaged: VecDeque<(Time, u64, i64)> = VecDeque::new();
    ctx.shared.threads.lock().expect("poisoned")[index] = Some(std::thread::current());

    let mut feeder = ProfileFeeder::new(ctx.order_horizon);
    // Ids whose strings this worker has already handed to the shared symbol table.
    let mut known = IdSet::default();
    let mut in_flight: VecDeque<Readable> = VecDeque::new();
    let mut done = Readable {
        clock: i64::MIN,
        ..Readable::default()
    };
    let mut compacted: Option<Time> = None;
    // Window contributions waiting for their scheduled retraction, on this worker.
    let schedule_gauge =
        metrics::gauge!("shopstream_window_schedule_entries", "worker" => index.to_string());
    let mut closed = false;

    loop {
        let mut fed = 0;
        while fed < FEED_PER_TURN {
            // Reads are at epochs already complete, so they can be answered at any
            // point of the loop: answer them between epochs rather than after a burst.
            while let Ok(request) = ctx.requests.try_recv() {
                serve(request, index, &mut traces, &mut seg_traces);
            }
            match ctx.epochs.try_recv() {
                Ok(epoch) => {
                    // A log that starts past epoch 0 (older segments removed)
                    // still stamps each epoch's updates with its own number.
                    inputs.advance_to(epoch.epoch);
                    seg_inputs.advance_to(epoch.epoch);
                    feed(
                        &epoch,
                        index,
                        peers,
                        &ctx.symbols,
                        &mut known,
                        &mut feeder,
                        &mut inputs,
                    );
                    let seq = epoch.first_seq + epoch.len() as u64 - 1;
                    for change in &epoch.segments {
                        match &change.rule {
                            Some(rule) => seg_inputs.define(change.id, rule.clone()),
                            None => seg_inputs.drop_segment(change.id),
                        }
                    }
                    seg_inputs.close_epoch(seq, epoch.clock, epoch.epoch + 1);
                    unstaged.push_back((epoch.epoch, seq, epoch.clock));
                    in_flight.push_back(Readable {
                        done: epoch.epoch + 1,
                        seq,
                        clock: epoch.clock,
                    });
                    fed += 1;
                    schedule_gauge.set(feeder.scheduled() as f64);
                }
                Err(flume::TryRecvError::Empty) => break,
                Err(flume::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }

        let idle = fed == 0 && ctx.requests.is_empty();
        let failed = ctx
            .shared
            .worker_failed
            .load(std::sync::atomic::Ordering::Relaxed);
        if closed && (in_flight.is_empty() || failed) {
            break;
        }
        worker.step_or_park(if idle {
            Some(Duration::from_millis(50))
        } else {
            Some(Duration::ZERO)
        });

        let mut advanced = false;
        while let Some(front) = in_flight.front() {
            if probe.less_equal(&(front.done - 1)) {
                break;
            }
            done = *front;
            in_flight.pop_front();
            advanced = true;
        }
        if advanced {
            stage_changes(&ctx.shared, index, done.done, &changes, &mut unstaged);
            let frontier = ctx.shared.complete(index, done);
            if compacted.is_none_or(|c| frontier > c) {
                traces.compact_to(frontier);
                seg_traces.compact_to(frontier);
                compacted = Some(frontier);
            }
        }

        while let Ok(request) = ctx.requests.try_recv() {
            serve(request, index, &mut traces, &mut seg_traces);
        }
    }
    // Drain reads that raced with shutdown so no reader hangs.
    while let Ok(request) = ctx.requests.try_recv() {
        serve(request, index, &mut traces, &mut seg_traces);
    }
}

/// Hands the membership changes of the epochs below `through` (complete on this
/// worker) to the change feed.
fn stage_changes(
    shared: &Shared,
    index: usize,
    through: Time,
    changes: &ChangeBuffer,
    unstaged: &mut VecDeque<(Time, u64, i64)>,
) {
    let mut buffer = changes.borrow_mut();
    let (ready, later): (Vec<_>, Vec<_>) = buffer.drain(..).partition(|(_, t, _)| *t < through);
    *buffer = later;
    drop(buffer);
    let mut info = Vec::new();
    while unstaged.front().is_some_and(|(e, _, _)| *e < through) {
        info.extend(unstaged.pop_front());
    }
    shared.hub.stage(index, through, ready, info);
}

/// Feeds the events of the users this worker owns, then the window retractions the
/// epoch's clock triggers, and closes the epoch.
fn feed(
    epoch: &Epoch,
    index: usize,
    peers: usize,
    symbols: &Symbols,
    known: &mut IdSet,
    feeder: &mut ProfileFeeder,
    inputs: &mut ProfileInputs,
) {
    for (seq, ev) in epoch.events() {
        let user = intern(&ev.user);
        if profiles::owner(user, peers) != index {
            continue;
        }
        // Members and the change feed answer with the user's id text.
        symbols.remember(user, &ev.user, known);
        let shop = shop_event(ev, user, seq, symbols, known);
        feeder.event(&shop, epoch.clock, inputs);
    }
    feeder.expire(epoch.clock, inputs);
    inputs.advance_to(epoch.epoch + 1);
    inputs.flush();
}

/// Reads are always at an epoch every worker has completed (the reader pinned it).
fn serve(
    request: Request,
    worker: usize,
    traces: &mut ProfileTraces,
    segments: &mut SegmentTraces,
) {
    let at = request.at;
    let answer = match request.query {
        Query::Profile(user) => {
            let profile = traces.read_user(user, at);
            let ranks = profile
                .lifetime
                .as_ref()
                .and_then(profiles::rfm_buckets)
                .map(|buckets| traces.read_rfm_ranks(worker, buckets, at));
            Answer::Profile(Box::new((profile, ranks)))
        }
        Query::UserSegments(user) => Answer::UserSegments(segments.user_segments(user, at)),
        Query::Size(segment) => Answer::Size(segments.size(segment, at)),
        Query::Sizes => Answer::Sizes(segments.sizes(at)),
        Query::Members {
            segment,
            after,
            limit,
        } => Answer::Members(segments.members(segment, after, limit, at)),
    };
    let _ = request.reply.send(answer);
}

/// Interns an event's strings (remembering their text for answers) into what the
/// views consume.
pub(crate) fn shop_event(
    ev: &Event,
    user: u64,
    seq: u64,
    symbols: &Symbols,
    known: &mut IdSet,
) -> ShopEvent {
    let mut sym = |s: &str| symbols.intern_local(s, known);
    let lines = ev
        .products
        .iter()
        .map(|p| Line {
            item: sym(&p.id),
            category: p.category.as_deref().map_or(0, &mut sym),
            brand: p.brand.as_deref().map_or(0, &mut sym),
            price: p.price,
            quantity: p.quantity,
        })
        .collect();
    ShopEvent {
        seq,
        user,
        ts: ev.ts,
        kind: ev.kind,
        name: sym(&ev.name),
        lines,
        revenue: ev.revenue,
        order: ev.order_id.as_deref().map_or(0, intern),
        traits: ev.traits.iter().map(|(k, v)| (sym(k), sym(v))).collect(),
    }
}
