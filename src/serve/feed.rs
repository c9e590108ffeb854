//! The segment change feed: each worker's enter/exit updates, published per
//! complete epoch, retained for resumption, and sizes over time.
//!
//! Each worker's segment operator emits enter/exit updates as it evaluates an
//! epoch. A worker stages them once its probe has passed the epoch (the view's
//! `completed`, through [`ChangeSink`]); the [`Hub`] publishes an epoch's changes
//! once every worker has staged it, merged in `(segment, user)` order, with
//! consecutive positions, before the epoch becomes readable: a read at epoch `E`
//! never sees a change the feed has not published. A subscriber resumes after the
//! position it last saw (SSE `Last-Event-ID`), or after a whole epoch
//! (`Last-Event-ID: E`, with `E` the `epoch` a segment read answered at), so it
//! misses nothing and sees nothing twice, as long as that position is still
//! retained (`segments.feed_retention` changes, evicted whole epochs at a time and
//! never the newest; older ones answer 410).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use shopstream_dataflows::types::{Millis, Time, UserId};
use shopstream_dataflows::views::segments::{Change, ChangeSink, SegId, StagedEpoch, KIND};
use tokio::sync::broadcast;

use crate::catalog::Catalog;
use crate::symbols::Symbols;

/// One published membership change: compact (ids, no strings); names are
/// looked up when it is sent ([`Hub::describe`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedEvent {
    /// Position in the feed: `{epoch}.{index}` (the SSE id).
    pub position: (Time, u32),
    pub segment: SegId,
    pub user: UserId,
    pub enter: bool,
    /// The sequence number the change is as of.
    pub as_of: u64,
}

/// A point in the feed to resume after: `EPOCH.INDEX` (an event's id), or a bare
/// `EPOCH` meaning after every change of that epoch (the `epoch` a read answered
/// at: read the members, then follow the feed from there with nothing missed).
pub fn parse_position(s: &str) -> Option<(Time, u32)> {
    let s = s.trim();
    match s.split_once('.') {
        Some((e, i)) => Some((e.parse().ok()?, i.parse().ok()?)),
        None => Some((s.parse().ok()?, u32::MAX)),
    }
}

pub fn format_position(p: (Time, u32)) -> String {
    if p.1 == u32::MAX {
        p.0.to_string()
    } else {
        format!("{}.{}", p.0, p.1)
    }
}

/// A segment's size after an epoch that changed it: `(epoch, as_of, clock, size)`.
pub type SizePoint = (Time, u64, Millis, i64);

/// Size history kept per segment (the most recent changes of size).
pub const SIZE_HISTORY: usize = 512;
/// Per-minute sizes kept per segment (a day), and per-hour sizes (30 days).
pub const SIZE_MINUTES: usize = 1_440;
pub const SIZE_HOURS: usize = 720;

/// A segment's size, and its size over time at three grains: each of the last
/// [`SIZE_HISTORY`] changes, and the size at the end of each minute and hour of
/// engine clock in which it changed (for a chart over a day or a month).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SizeTrack {
    pub size: i64,
    pub recent: VecDeque<SizePoint>,
    /// `(start of the minute, size at its end)`, oldest first.
    pub minutes: VecDeque<(Millis, i64)>,
    /// `(start of the hour, size at its end)`, oldest first.
    pub hours: VecDeque<(Millis, i64)>,
}

impl SizeTrack {
    fn record(&mut self, epoch: Time, seq: u64, clock: Millis, delta: i64) {
        self.size += delta;
        push_bounded(
            &mut self.recent,
            (epoch, seq, clock, self.size),
            SIZE_HISTORY,
        );
        if clock != Millis::MIN {
            bucket(&mut self.minutes, clock, 60_000, self.size, SIZE_MINUTES);
            bucket(&mut self.hours, clock, 3_600_000, self.size, SIZE_HOURS);
        }
    }
}

fn push_bounded<T>(q: &mut VecDeque<T>, item: T, cap: usize) {
    q.push_back(item);
    while q.len() > cap {
        q.pop_front();
    }
}

/// Sets the size of the `width` bucket holding `clock` (the clock never goes back).
fn bucket(q: &mut VecDeque<(Millis, i64)>, clock: Millis, width: Millis, size: i64, cap: usize) {
    let start = clock - clock.rem_euclid(width);
    match q.back_mut() {
        Some(last) if last.0 == start => last.1 = size,
        _ => push_bounded(q, (start, size), cap),
    }
}

struct HubState {
    /// Per worker, the epochs it has staged (all epochs below are staged).
    staged_through: Vec<Time>,
    /// Staged changes not yet published, by epoch.
    pending: BTreeMap<Time, Vec<Change>>,
    /// Published changes, oldest first, bounded by `retention`.
    retained: VecDeque<FeedEvent>,
    retention: usize,
    /// The first epoch not yet published.
    published_through: Time,
    /// The newest position dropped from `retained`.
    dropped_through: Option<(Time, u32)>,
    /// Per segment: (epoch, as_of seq, clock, size) after each epoch that changed it.
    sizes: HashMap<SegId, SizeTrack>,
    /// Epoch → (seq, clock), for epochs with changes not yet published.
    epoch_info: BTreeMap<Time, StagedEpoch>,
}

/// The feed as a snapshot keeps it ([`Hub::save`]).
#[derive(Serialize, Deserialize)]
struct SavedFeed {
    published_through: Time,
    dropped_through: Option<(Time, u32)>,
    retained: Vec<FeedEvent>,
    sizes: Vec<(SegId, SizeTrack)>,
}

impl HubState {
    /// Evicts whole epochs beyond the retention, and never `newest`: a resume
    /// point inside an epoch stays valid as long as anything of it is kept.
    fn evict(&mut self, newest: Time) {
        while self.retained.len() > self.retention {
            let Some(front) = self.retained.front().map(|e| e.position.0) else {
                break;
            };
            if front == newest {
                break;
            }
            while self.retained.front().is_some_and(|e| e.position.0 == front) {
                if let Some(e) = self.retained.pop_front() {
                    self.dropped_through = Some(e.position);
                }
            }
        }
    }
}

/// Collects the workers' staged changes and publishes complete epochs.
pub struct Hub {
    state: Mutex<HubState>,
    /// One message per published epoch (its changes), so that the live buffer's
    /// capacity counts epochs, not changes.
    tx: broadcast::Sender<Arc<[FeedEvent]>>,
    /// Set at shutdown: subscriptions end, so that open streams do not hold the
    /// HTTP server's graceful shutdown.
    closed: tokio::sync::watch::Sender<bool>,
    names: Arc<Catalog>,
    user_names: Arc<Symbols>,
}

/// A new subscription to the change feed.
pub struct Subscription {
    /// Retained changes after the resume point.
    pub backlog: Vec<FeedEvent>,
    /// Each later epoch's changes.
    pub live: broadcast::Receiver<Arc<[FeedEvent]>>,
    /// The position after everything published so far (`None`: nothing yet).
    pub edge: Option<(Time, u32)>,
}

/// Why a subscription cannot resume where it asked.
#[derive(Debug, thiserror::Error)]
pub enum Unresumable {
    /// Changes after the position were evicted (410).
    #[error("the feed no longer holds position {asked}: the oldest retained is {oldest}; re-read the members and follow the feed from the `epoch` that read answers with (Last-Event-ID: EPOCH)")]
    TooOld { asked: String, oldest: String },
    /// The position is past everything published (400).
    #[error("position {asked} is ahead of the feed (published through {edge}): an event id or the `epoch` of a read is expected, not a sequence number")]
    Ahead { asked: String, edge: String },
}

impl ChangeSink for Hub {
    /// Worker `w` has completed every epoch below `through`; `changes` are its
    /// updates at those epochs (`info` gives each epoch's seq, clock and drops).
    fn stage(&self, w: usize, through: Time, changes: Vec<Change>, info: Vec<StagedEpoch>) {
        let mut s = self.state.lock().expect("poisoned");
        for (m, t, d) in changes {
            s.pending.entry(t).or_default().push((m, t, d));
        }
        for e in info {
            s.epoch_info.insert(e.epoch, e);
        }
        s.staged_through[w] = s.staged_through[w].max(through);
        let ready = *s.staged_through.iter().min().expect("workers");
        if ready <= s.published_through {
            return;
        }
        let mut epochs: Vec<Time> = s.pending.range(..ready).map(|(t, _)| *t).collect();
        epochs.extend(
            s.epoch_info
                .range(..ready)
                .filter(|(_, e)| !e.dropped.is_empty())
                .map(|(t, _)| *t),
        );
        epochs.sort_unstable();
        epochs.dedup();
        for t in epochs {
            let mut changes = s.pending.remove(&t).unwrap_or_default();
            changes.sort_unstable_by_key(|((seg, user, _), _, d)| (*seg, *user, *d));
            let info = s.epoch_info.get(&t);
            let (seq, clock) = info.map_or((0, Millis::MIN), |e| (e.seq, e.clock));
            let dropped = info.map(|e| e.dropped.clone()).unwrap_or_default();
            let mut deltas: BTreeMap<SegId, i64> = BTreeMap::new();
            let events: Arc<[FeedEvent]> = changes
                .iter()
                .enumerate()
                .map(|(i, ((seg, user, _since), _, d))| {
                    *deltas.entry(*seg).or_default() += d;
                    FeedEvent {
                        position: (t, i as u32),
                        segment: *seg,
                        user: *user,
                        enter: *d > 0,
                        as_of: seq,
                    }
                })
                .collect();
            s.retained.extend(events.iter().copied());
            if !events.is_empty() {
                let _ = self.tx.send(events);
            }
            metrics::counter!("shopstream_segment_changes_total").increment(changes.len() as u64);
            s.evict(t);
            for (seg, delta) in deltas {
                s.sizes.entry(seg).or_default().record(t, seq, clock, delta);
            }
            // A dropped segment's members all left at its drop: it keeps no history.
            for seg in dropped {
                if s.sizes.get(&seg).is_some_and(|t| t.size == 0) {
                    s.sizes.remove(&seg);
                }
            }
        }
        s.published_through = ready;
        metrics::gauge!("shopstream_segment_feed_retained").set(s.retained.len() as f64);
        let keep = s.epoch_info.split_off(&ready);
        s.epoch_info = keep;
    }
}

impl Hub {
    pub fn new(
        workers: usize,
        retention: usize,
        names: Arc<Catalog>,
        user_names: Arc<Symbols>,
    ) -> Self {
        let (tx, _) = broadcast::channel(1024);
        Hub {
            state: Mutex::new(HubState {
                staged_through: vec![0; workers],
                pending: BTreeMap::new(),
                retained: VecDeque::new(),
                retention: retention.max(1),
                published_through: 0,
                dropped_through: None,
                sizes: HashMap::new(),
                epoch_info: BTreeMap::new(),
            }),
            tx,
            closed: tokio::sync::watch::channel(false).0,
            names,
            user_names,
        }
    }

    /// Ends every subscription (at shutdown).
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Resolves when the hub is closed.
    pub fn closed(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closed.subscribe()
    }

    /// A segment's name (also after it was dropped), or its id in hex.
    pub fn segment_name(&self, id: SegId) -> String {
        self.names
            .name(KIND, id)
            .unwrap_or_else(|| format!("#{id:016x}"))
    }

    /// The segment's name and the user's id text of an event.
    pub fn describe(&self, e: &FeedEvent) -> (String, String) {
        let segment = self.segment_name(e.segment);
        let user = self
            .user_names
            .resolve(e.user)
            .unwrap_or_else(|| format!("#{:016x}", e.user));
        (segment, user)
    }

    /// A segment's size over time (empty for one that never had a member).
    pub fn size_history(&self, seg: SegId) -> SizeTrack {
        let s = self.state.lock().expect("poisoned");
        s.sizes.get(&seg).cloned().unwrap_or_default()
    }

    /// Subscribes: the retained events after `after` (none for `None`: a new
    /// subscriber starts at the live edge), then live ones, and the position of the
    /// live edge (to resume from if nothing arrives before a reconnect). The
    /// backlog and the live receiver are taken under one lock, so nothing falls
    /// between them.
    pub fn subscribe(&self, after: Option<(Time, u32)>) -> Result<Subscription, Unresumable> {
        let s = self.state.lock().expect("poisoned");
        let live = self.tx.subscribe();
        let edge = (s.published_through > 0).then(|| (s.published_through - 1, u32::MAX));
        let Some(after) = after else {
            return Ok(Subscription {
                backlog: Vec::new(),
                live,
                edge,
            });
        };
        // A position the feed has not reached (a reset data directory, or a
        // sequence number sent as an epoch) would silently skip what comes.
        if after.0 >= s.published_through {
            return Err(Unresumable::Ahead {
                asked: format_position(after),
                edge: edge.map_or_else(|| "none yet".to_owned(), format_position),
            });
        }
        // Resuming is exact only if nothing after `after` was dropped.
        if let Some(dropped) = s.dropped_through {
            if after < dropped {
                let oldest = s.retained.front().map_or(dropped, |e| e.position);
                return Err(Unresumable::TooOld {
                    asked: format_position(after),
                    oldest: format_position(oldest),
                });
            }
        }
        let from = s.retained.partition_point(|e| e.position <= after);
        let backlog = s.retained.range(from..).copied().collect();
        Ok(Subscription {
            backlog,
            live,
            edge,
        })
    }

    /// What a snapshot keeps of the feed: the retained changes (so that
    /// subscribers resume across a restart as they would after a full replay)
    /// and every segment's size over time. Taken while the workers wait at the
    /// snapshot's epoch, so everything through it is published and nothing after.
    pub fn save(&self) -> Vec<u8> {
        let s = self.state.lock().expect("poisoned");
        let saved = SavedFeed {
            published_through: s.published_through,
            dropped_through: s.dropped_through,
            retained: s.retained.iter().copied().collect(),
            sizes: s.sizes.iter().map(|(k, v)| (*k, v.clone())).collect(),
        };
        bincode::serialize(&saved).expect("the feed serializes")
    }

    /// Restores what [`save`](Self::save) wrote, before any worker stages. The
    /// changes of the restored epoch itself were published before the snapshot,
    /// so the workers do not stage them again (`SegmentView::restore`).
    pub fn restore(&self, saved: &[u8]) -> Result<(), String> {
        let saved: SavedFeed = bincode::deserialize(saved).map_err(|e| e.to_string())?;
        let mut s = self.state.lock().expect("poisoned");
        s.published_through = saved.published_through;
        s.staged_through.fill(saved.published_through);
        s.dropped_through = saved.dropped_through;
        s.retained = saved.retained.into();
        if let Some(newest) = s.retained.back().map(|e| e.position.0) {
            s.evict(newest);
        }
        s.sizes = saved.sizes.into_iter().collect();
        Ok(())
    }

    /// The first epoch not yet published.
    pub fn published_through(&self) -> Time {
        self.state.lock().expect("poisoned").published_through
    }

    /// Changes retained for subscribers that resume.
    pub fn retained_len(&self) -> usize {
        self.state.lock().expect("poisoned").retained.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shopstream_dataflows::views::segments::Since;

    #[test]
    fn the_feed_evicts_whole_epochs_and_resumes_exactly() {
        let catalog = Arc::new(Catalog::new(Vec::new()));
        let hub = Hub::new(1, 3, catalog, Arc::new(Symbols::default()));
        let change = |seg: u64, user: u64, t: Time| ((seg, user, Since::default()), t, 1);
        let staged = |epoch: Time, seq: u64| StagedEpoch {
            epoch,
            seq,
            clock: 0,
            dropped: Vec::new(),
        };
        hub.stage(
            0,
            1,
            vec![change(1, 1, 0), change(1, 2, 0)],
            vec![staged(0, 2)],
        );
        hub.stage(
            0,
            2,
            vec![change(2, 1, 1), change(2, 2, 1)],
            vec![staged(1, 4)],
        );
        let five = (0..5).map(|u| change(3, u, 2)).collect();
        hub.stage(0, 3, five, vec![staged(2, 9)]);
        // Over the retention of 3, epochs 0 and 1 went; epoch 2 (the newest) stays whole.
        assert_eq!(hub.retained_len(), 5);
        let sub = hub.subscribe(Some((1, u32::MAX))).expect("after epoch 1");
        assert_eq!(sub.backlog.len(), 5);
        assert_eq!(sub.edge, Some((2, u32::MAX)));
        assert!(sub
            .backlog
            .iter()
            .all(|e| e.as_of == 9 && e.position.0 == 2));
        let sub = hub.subscribe(Some((2, 1))).expect("inside epoch 2");
        let positions: Vec<u32> = sub.backlog.iter().map(|e| e.position.1).collect();
        assert_eq!(positions, [2, 3, 4]);
        assert!(hub.subscribe(Some((0, 0))).is_err(), "epoch 1 was dropped");
        assert!(
            matches!(hub.subscribe(Some((3, 0))), Err(Unresumable::Ahead { .. })),
            "nothing was published at epoch 3"
        );
        assert!(hub.subscribe(None).expect("live").backlog.is_empty());
        assert_eq!(parse_position("7"), Some((7, u32::MAX)));
        assert_eq!(parse_position("7.3"), Some((7, 3)));
        assert_eq!(parse_position("x"), None);
        assert_eq!(format_position((7, u32::MAX)), "7");
    }

    #[test]
    fn sizes_over_time_keep_the_last_size_of_each_minute_and_hour() {
        let mut t = SizeTrack::default();
        let minute = 60_000;
        t.record(0, 1, 10 * minute + 5, 3);
        t.record(1, 2, 10 * minute + 50_000, 2);
        t.record(2, 3, 11 * minute, -1);
        t.record(3, 4, 75 * minute, 1);
        assert_eq!(t.size, 5);
        assert_eq!(t.recent.len(), 4);
        assert_eq!(
            Vec::from(t.minutes.clone()),
            [(10 * minute, 5), (11 * minute, 4), (75 * minute, 5)]
        );
        assert_eq!(Vec::from(t.hours.clone()), [(0, 4), (60 * minute, 5)]);
        for i in 0..2_000 {
            t.record(4 + i, 5 + i, (76 + i as i64) * minute, 0);
        }
        assert_eq!(t.minutes.len(), SIZE_MINUTES);
        assert_eq!(t.recent.len(), SIZE_HISTORY);
    }
}
