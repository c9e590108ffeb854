//! Hosting the segment view: definitions as log records, the registry of what is
//! defined, and the change feed.
//!
//! # Definitions go through the log
//! A definition (create, change, drop) is a [`Control`] record in the durable log,
//! ordered with the events: it takes effect at the epoch of its record, on every
//! worker, and a replay applies it at the same epoch again. So definitions
//! survive restarts, and the memberships a restart rebuilds are the ones the live
//! engine had, `since` included. The rule text is compiled by the sequencer (once
//! per definition, for all workers); the HTTP layer compiles it first to refuse a
//! bad rule with its position before anything is logged.
//!
//! # The change feed
//! Each worker's segment operator emits enter/exit updates as it evaluates an
//! epoch. A worker stages them once its probe has passed the epoch; the [`Hub`]
//! publishes an epoch's changes once every worker has staged it, merged in
//! `(segment, user)` order, with consecutive positions, before the epoch becomes
//! readable: a read at epoch `E` never sees a change the feed has not published.
//! A subscriber resumes after the position it last saw (SSE `Last-Event-ID`), or
//! after a whole epoch (`Last-Event-ID: E`, with `E` the `epoch` a segment read
//! answered at), so it misses nothing and sees nothing twice, as long as that
//! position is still retained (`segments.feed_retention` changes, evicted whole
//! epochs at a time and never the newest; older ones answer 410).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use shopstream_dataflows::rules::{Rule, RuleError};
use shopstream_dataflows::segments::{Change, SegId};
use shopstream_dataflows::types::{intern, Millis, Time, UserId};
use tokio::sync::broadcast;

use crate::config::Config;

/// Where a definition came from: API definitions are changed through the API,
/// the others through their configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Api,
    /// `config/segments.toml` (or the file `segments.file` names).
    Config,
    /// Lifecycle stages, tiers and RFM segments, from `[segments.*]` settings.
    Builtin,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Api => "api",
            Source::Config => "config",
            Source::Builtin => "builtin",
        }
    }
}

/// A definition change, as logged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    Define {
        name: String,
        rule: String,
        source: Source,
    },
    Drop {
        name: String,
    },
}

/// The longest segment name accepted.
pub const MAX_NAME_BYTES: usize = 128;

/// Checks a segment name: 1 to 128 bytes of letters, digits and `_-.:`.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "a segment name is 1 to {MAX_NAME_BYTES} bytes, got {}",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')))
    {
        return Err(format!(
            "a segment name holds letters, digits and _ - . : only; found {c:?}"
        ));
    }
    Ok(())
}

/// A segment's id: the hash of its name.
pub fn segment_id(name: &str) -> SegId {
    intern(name)
}

/// Compiles a rule for the engine's reporting currency.
pub fn compile(rule: &str, money_scale: u32) -> Result<Rule, RuleError> {
    Rule::compile(rule, money_scale)
}

/// A definition the configuration asks for at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub name: String,
    pub rule: String,
    pub source: Source,
}

/// The built-in segments: lifecycle stages, member tiers and RFM segments.
///
/// * `lifecycle:new`: first seen less than `new_days` ago.
/// * `lifecycle:reactivated`: not new; ordered less than `active_days` ago after a
///   gap of `churned_days` or more between the last two orders.
/// * `lifecycle:active`: not new; ordered less than `active_days` ago (and not
///   reactivated).
/// * `lifecycle:at_risk`: not new; last order `active_days` to `churned_days` ago.
/// * `lifecycle:churned`: not new; last order `churned_days` ago or more, or no
///   order and no event for `churned_days`.
/// * `tier:{name}`: the tier metric is at least the tier's `min` and below the
///   next tier's.
/// * `rfm:*`: the classic grid over recency and frequency scores (1–5):
///   champions (R ≥ 4, F ≥ 4), loyal (R ≥ 3, F ≥ 3, not champions), potential
///   (R ≥ 3, F ≤ 2), at_risk (R ≤ 2, F ≥ 3), hibernating (R = 2, F ≤ 2), lost
///   (R = 1, F ≤ 2): every user with orders is in exactly one.
pub fn builtin_definitions(config: &Config) -> Vec<Wanted> {
    let lc = &config.lifecycle;
    let (n, a, c) = (lc.new_days, lc.active_days, lc.churned_days);
    let new = format!("days_since(first_seen) < {n}");
    let recent = format!("days_since(last_order_at) < {a}");
    let gap = format!("order_gap_days >= {c}");
    let mut out = vec![
        ("lifecycle:new", new.clone()),
        ("lifecycle:reactivated", format!("not {new} and {recent} and {gap}")),
        ("lifecycle:active", format!("not {new} and {recent} and not {gap}")),
        (
            "lifecycle:at_risk",
            format!("not {new} and days_since(last_order_at) >= {a} and days_since(last_order_at) < {c}"),
        ),
        (
            "lifecycle:churned",
            format!("not {new} and (days_since(last_order_at) >= {c} or (not last_order_at exists and days_since(last_seen) >= {c}))"),
        ),
        ("rfm:champions", "rfm.r_score >= 4 and rfm.f_score >= 4".into()),
        (
            "rfm:loyal",
            "rfm.r_score >= 3 and rfm.f_score >= 3 and not (rfm.r_score >= 4 and rfm.f_score >= 4)".into(),
        ),
        ("rfm:potential", "rfm.r_score >= 3 and rfm.f_score <= 2".into()),
        ("rfm:at_risk", "rfm.r_score <= 2 and rfm.f_score >= 3".into()),
        ("rfm:hibernating", "rfm.r_score = 2 and rfm.f_score <= 2".into()),
        ("rfm:lost", "rfm.r_score = 1 and rfm.f_score <= 2".into()),
    ]
    .into_iter()
    .map(|(name, rule)| (name.to_owned(), rule))
    .collect::<Vec<_>>();
    let metric = &config.tiers.metric;
    let levels = &config.tiers.levels;
    for (i, level) in levels.iter().enumerate() {
        let mut rule = format!("{metric} >= {}", level.min);
        if let Some(next) = levels.get(i + 1) {
            rule.push_str(&format!(" and {metric} < {}", next.min));
        }
        out.push((format!("tier:{}", level.name), rule));
    }
    out.into_iter()
        .map(|(name, rule)| Wanted {
            name,
            rule,
            source: Source::Builtin,
        })
        .collect()
}

/// The segment file: `[[segment]]` tables with `name` and `rule`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SegmentFile {
    #[serde(default)]
    segment: Vec<FileSegment>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSegment {
    name: String,
    rule: String,
}

/// Why the configured segments cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("segment file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{origin}: segment {name:?}: {reason}")]
    Invalid {
        origin: String,
        name: String,
        reason: String,
    },
}

/// Reads the segment file.
pub fn file_definitions(path: &Path) -> Result<Vec<Wanted>, StartupError> {
    let text = std::fs::read_to_string(path).map_err(|e| StartupError::File {
        path: path.into(),
        reason: e.to_string(),
    })?;
    let file: SegmentFile = toml::from_str(&text).map_err(|e| StartupError::File {
        path: path.into(),
        reason: e.to_string(),
    })?;
    Ok(file
        .segment
        .into_iter()
        .map(|s| Wanted {
            name: s.name,
            rule: s.rule,
            source: Source::Config,
        })
        .collect())
}

/// What the configuration wants defined, checked: names valid and unique, rules
/// compiling (errors name the origin, the segment and the rule position).
pub fn wanted(config: &Config) -> Result<Vec<Wanted>, StartupError> {
    let mut all = Vec::new();
    if config.builtin_segments {
        all.extend(builtin_definitions(config));
    }
    if let Some(path) = &config.segments_file {
        all.extend(file_definitions(path)?);
    }
    let scale = crate::event::minor_unit_decimals(&config.reporting_currency);
    let mut seen = std::collections::HashSet::new();
    for w in &all {
        let origin = match w.source {
            Source::Builtin => "config key segments (built-in segments)".to_owned(),
            _ => format!(
                "segment file {}",
                config
                    .segments_file
                    .as_deref()
                    .unwrap_or(Path::new(""))
                    .display()
            ),
        };
        let invalid = |reason: String| StartupError::Invalid {
            origin: origin.clone(),
            name: w.name.clone(),
            reason,
        };
        check_name(&w.name).map_err(invalid)?;
        compile(&w.rule, scale).map_err(|e| invalid(format!("rule {:?}: {e}", w.rule)))?;
        if !seen.insert(w.name.clone()) {
            return Err(invalid("defined twice".into()));
        }
    }
    Ok(all)
}

/// The definition changes that bring `current` to `wanted`: new and changed
/// configured segments, and configured segments no longer wanted dropped.
/// Segments defined through the API stay, unless the configuration now names them.
///
/// With `keep_file_segments` (the default file was not found), segments from a
/// file are neither changed nor dropped.
pub fn startup_controls(
    current: &[Definition],
    wanted: &[Wanted],
    keep_file_segments: bool,
) -> Vec<Control> {
    let mut out = Vec::new();
    for w in wanted {
        let same = current
            .iter()
            .any(|d| d.name == w.name && d.rule == w.rule && d.source == w.source);
        if !same {
            out.push(Control::Define {
                name: w.name.clone(),
                rule: w.rule.clone(),
                source: w.source,
            });
        }
    }
    for d in current {
        let kept = keep_file_segments && d.source == Source::Config;
        if d.source != Source::Api && !kept && !wanted.iter().any(|w| w.name == d.name) {
            out.push(Control::Drop {
                name: d.name.clone(),
            });
        }
    }
    out
}

/// A segment as defined now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Definition {
    pub name: String,
    pub rule: String,
    pub source: Source,
    /// The epoch of the record that set this rule (the segment answers from then on).
    pub epoch: Time,
    /// The last sequence number before that record's events, and its clock.
    pub seq: u64,
    pub clock: Millis,
    /// The epoch at which the segment was first created (unchanged by a redefinition).
    pub created_epoch: Time,
}

/// What is defined, by name and id. Updated by the sequencer as records are logged
/// (or replayed).
#[derive(Debug, Default)]
pub struct Registry {
    by_name: BTreeMap<String, Definition>,
    /// Every name ever defined, by id (ids are hashes of names, so this is stable).
    names: HashMap<SegId, String>,
}

impl Registry {
    pub fn apply(&mut self, c: &Control, epoch: Time, seq: u64, clock: Millis) {
        match c {
            Control::Define { name, rule, source } => {
                let created_epoch = self.by_name.get(name).map_or(epoch, |d| d.created_epoch);
                self.names.insert(segment_id(name), name.clone());
                self.by_name.insert(
                    name.clone(),
                    Definition {
                        name: name.clone(),
                        rule: rule.clone(),
                        source: *source,
                        epoch,
                        seq,
                        clock,
                        created_epoch,
                    },
                );
            }
            Control::Drop { name } => {
                // The id keeps its name: exits of a dropped segment are published
                // after the drop is logged, and still name it.
                self.by_name.remove(name);
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<&Definition> {
        self.by_name.get(name)
    }

    pub fn name(&self, id: SegId) -> Option<&str> {
        self.names.get(&id).map(String::as_str)
    }

    pub fn all(&self) -> impl Iterator<Item = &Definition> {
        self.by_name.values()
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// One published membership change: compact (ids, no strings); names are
/// looked up when it is sent ([`Hub::describe`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
#[derive(Clone, Debug, Default, PartialEq, Eq)]
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
    epoch_info: BTreeMap<Time, (u64, Millis)>,
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
    names: Arc<Mutex<Registry>>,
    user_names: Arc<crate::symbols::Symbols>,
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

impl Hub {
    pub fn new(
        workers: usize,
        retention: usize,
        names: Arc<Mutex<Registry>>,
        user_names: Arc<crate::symbols::Symbols>,
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

    /// Worker `w` has completed every epoch below `through`; `changes` are its
    /// updates at those epochs (`info` gives each epoch's seq and clock).
    pub fn stage(
        &self,
        w: usize,
        through: Time,
        changes: Vec<Change>,
        info: impl IntoIterator<Item = (Time, u64, Millis)>,
    ) {
        let mut s = self.state.lock().expect("poisoned");
        for (m, t, d) in changes {
            s.pending.entry(t).or_default().push((m, t, d));
        }
        for (e, seq, clock) in info {
            s.epoch_info.insert(e, (seq, clock));
        }
        s.staged_through[w] = s.staged_through[w].max(through);
        let ready = *s.staged_through.iter().min().expect("workers");
        if ready <= s.published_through {
            return;
        }
        let epochs: Vec<Time> = s.pending.range(..ready).map(|(t, _)| *t).collect();
        for t in epochs {
            let mut changes = s.pending.remove(&t).unwrap_or_default();
            changes.sort_unstable_by_key(|((seg, user, _), _, d)| (*seg, *user, *d));
            let (seq, clock) = s.epoch_info.get(&t).copied().unwrap_or((0, Millis::MIN));
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
            // Evict whole epochs, and never the newest: a resume point inside an
            // epoch stays valid as long as anything of it is kept.
            while s.retained.len() > s.retention {
                let Some(front) = s.retained.front().map(|e| e.position.0) else {
                    break;
                };
                if front == t {
                    break;
                }
                while s.retained.front().is_some_and(|e| e.position.0 == front) {
                    if let Some(e) = s.retained.pop_front() {
                        s.dropped_through = Some(e.position);
                    }
                }
            }
            let registry = self.names.lock().expect("poisoned");
            for (seg, delta) in deltas {
                s.sizes.entry(seg).or_default().record(t, seq, clock, delta);
            }
            // Dropped segments whose last member has left keep no history.
            s.sizes.retain(|seg, track| {
                track.size != 0
                    || registry
                        .name(*seg)
                        .is_some_and(|n| registry.get(n).is_some())
            });
            drop(registry);
        }
        s.published_through = ready;
        metrics::gauge!("shopstream_segment_feed_retained").set(s.retained.len() as f64);
        let keep = s.epoch_info.split_off(&ready);
        s.epoch_info = keep;
    }

    /// A segment's name (also after it was dropped), or its id in hex.
    pub fn segment_name(&self, id: SegId) -> String {
        self.names
            .lock()
            .expect("poisoned")
            .name(id)
            .map_or_else(|| format!("#{id:016x}"), str::to_owned)
    }

    /// The segment's name and the user's id text of an event.
    pub fn describe(&self, e: &FeedEvent) -> (String, String) {
        let segment = self
            .names
            .lock()
            .expect("poisoned")
            .name(e.segment)
            .map_or_else(|| format!("#{:016x}", e.segment), str::to_owned);
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
    use shopstream_dataflows::profiles::{Lifetime, UserProfile};
    use shopstream_dataflows::rules::Subject;
    use shopstream_dataflows::segments::Since;
    use shopstream_dataflows::types::DAY_MS;

    fn compiled(config: &Config) -> Vec<(String, Rule)> {
        wanted(config)
            .expect("valid")
            .into_iter()
            .map(|w| (w.name, compile(&w.rule, 2).expect("compiles")))
            .collect()
    }

    #[test]
    fn the_example_segment_file_is_valid() {
        let mut config = Config::defaults();
        config.segments_file =
            Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/segments.toml"));
        let all = wanted(&config).expect("the example file is valid");
        assert!(all
            .iter()
            .any(|w| w.name == "repeat_buyers" && w.source == Source::Config));
        config.segments_file = Some("/nonexistent/segments.toml".into());
        let e = wanted(&config).expect_err("missing file").to_string();
        assert!(e.contains("/nonexistent/segments.toml"), "{e}");
    }

    #[test]
    fn a_bad_configured_rule_names_its_origin_and_position() {
        let mut config = Config::defaults();
        config.tiers.metric = "windows.30d.revnue".into();
        let e = wanted(&config).expect_err("bad metric").to_string();
        assert!(
            e.contains("tier:bronze") && e.contains("unknown window field"),
            "{e}"
        );
    }

    #[test]
    fn every_buyer_is_in_exactly_one_rfm_segment_and_at_most_one_stage() {
        let rules = compiled(&Config::defaults());
        let no_names = |a: u64, b: u64| a.cmp(&b);
        let day = DAY_MS;
        for r in 1..=5u8 {
            for f in 1..=5u8 {
                let p = UserProfile {
                    lifetime: Some(Lifetime {
                        orders: 1,
                        events: 1,
                        first_seen: 0,
                        last_seen: 0,
                        last_order_at: 0,
                        ..Lifetime::default()
                    }),
                    ..UserProfile::default()
                };
                let s = Subject {
                    profile: &p,
                    scores: Some([r, f, 3]),
                    clock: 0,
                    name_order: &no_names,
                };
                let rfm: Vec<&String> = rules
                    .iter()
                    .filter(|(n, rule)| n.starts_with("rfm:") && rule.eval(&s))
                    .map(|(n, _)| n)
                    .collect();
                assert_eq!(rfm.len(), 1, "R{r} F{f}: {rfm:?}");
            }
        }
        // Lifecycle over first-seen, last and previous order, and clock.
        for first in [0, 100] {
            for last in [None, Some(120), Some(300), Some(390)] {
                for prev in [None, Some(110)] {
                    for clock in [10, 200, 320, 400, 700] {
                        let at = |d: i64| d * day;
                        let l = Lifetime {
                            events: 1,
                            first_seen: at(first),
                            last_seen: at(last.unwrap_or(first)),
                            orders: i64::from(last.is_some()),
                            last_order_at: last.map_or(i64::MIN, at),
                            prev_order_at: prev.filter(|_| last.is_some()).map_or(i64::MIN, at),
                            ..Lifetime::default()
                        };
                        let p = UserProfile {
                            lifetime: Some(l),
                            ..UserProfile::default()
                        };
                        let s = Subject {
                            profile: &p,
                            scores: None,
                            clock: at(clock).max(l.last_seen),
                            name_order: &no_names,
                        };
                        let stages: Vec<&String> = rules
                            .iter()
                            .filter(|(n, rule)| n.starts_with("lifecycle:") && rule.eval(&s))
                            .map(|(n, _)| n)
                            .collect();
                        assert!(stages.len() <= 1, "{l:?} at {clock}: {stages:?}");
                        if last.is_some() && clock >= first + 30 {
                            assert_eq!(stages.len(), 1, "a buyer has a stage: {l:?} at {clock}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_feed_evicts_whole_epochs_and_resumes_exactly() {
        let registry = Arc::new(Mutex::new(Registry::default()));
        let hub = Hub::new(1, 3, registry, Arc::new(crate::symbols::Symbols::default()));
        let change = |seg: u64, user: u64, t: Time| ((seg, user, Since::default()), t, 1);
        hub.stage(0, 1, vec![change(1, 1, 0), change(1, 2, 0)], [(0, 2, 0)]);
        hub.stage(0, 2, vec![change(2, 1, 1), change(2, 2, 1)], [(1, 4, 0)]);
        let five = (0..5).map(|u| change(3, u, 2)).collect();
        hub.stage(0, 3, five, [(2, 9, 0)]);
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

    #[test]
    fn start_up_changes_only_what_the_configuration_changed() {
        let def = |name: &str, rule: &str, source| Definition {
            name: name.into(),
            rule: rule.into(),
            source,
            epoch: 0,
            seq: 0,
            clock: 0,
            created_epoch: 0,
        };
        let want = |name: &str, rule: &str, source| Wanted {
            name: name.into(),
            rule: rule.into(),
            source,
        };
        let current = [
            def("same", "orders > 1", Source::Config),
            def("changed", "orders > 1", Source::Config),
            def("gone", "orders > 1", Source::Config),
            def("mine", "orders > 1", Source::Api),
        ];
        let wanted = [
            want("same", "orders > 1", Source::Config),
            want("changed", "orders > 2", Source::Config),
            want("new", "orders > 3", Source::Builtin),
        ];
        let controls = startup_controls(&current, &wanted, false);
        assert_eq!(
            startup_controls(&current, &wanted, true).len(),
            2,
            "without the default file, file segments stay"
        );
        assert_eq!(
            controls,
            [
                Control::Define {
                    name: "changed".into(),
                    rule: "orders > 2".into(),
                    source: Source::Config
                },
                Control::Define {
                    name: "new".into(),
                    rule: "orders > 3".into(),
                    source: Source::Builtin
                },
                Control::Drop {
                    name: "gone".into()
                },
            ]
        );
    }
}
