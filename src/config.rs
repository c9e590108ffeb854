//! Configuration: raw serde structs read from TOML, turned into a validated
//! [`Config`] in one step (ripgrep's low-args → high-args habit).
//!
//! Every key has a default (the embedded `config/default.toml` documents them), so
//! an empty file, or none, is a working configuration. Command-line flags override
//! the file; validation happens after both are applied, and names the offending key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::log::FsyncPolicy;

/// Where segment definitions are read from at start unless `segments.file` says
/// otherwise. Relative to the working directory; when absent there, no segments
/// come from a file (a file named explicitly must exist).
pub const DEFAULT_SEGMENTS_FILE: &str = "config/segments.toml";

/// The documented defaults, embedded so that `shopstream demo` needs no files.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Which clock drives windows and lifecycle rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ClockMode {
    /// The largest event timestamp seen: replays and backfills give the same answers as live.
    Event,
    /// Real time, recorded in the log at each epoch so that a replay still agrees.
    Wall,
}

/// A configuration error, naming the key and what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("config key {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawIngest {
    pub tcp_addr: String,
    pub max_line_bytes: usize,
    pub max_id_bytes: usize,
    pub max_batch_bytes: usize,
    pub max_connections: usize,
    pub max_connections_per_addr: usize,
    pub queue_depth: usize,
    pub max_future_skew_s: u64,
    pub idle_timeout_s: u64,
    pub auth_timeout_ms: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHttp {
    pub addr: String,
    pub min_seq_timeout_ms: u64,
    pub max_pending_reads: usize,
    pub max_concurrent_requests: usize,
    pub max_concurrent_ingest: usize,
    pub body_timeout_ms: u64,
    pub header_timeout_ms: u64,
    pub max_connections: usize,
    pub as_of_history: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    pub data_dir: PathBuf,
    pub fsync: FsyncPolicy,
    pub fsync_interval_ms: u64,
    /// Size after which a new log file is started, in MiB. Read from
    /// `segment_mb` too, the key's name before "segment" came to mean an
    /// audience only, so older config files still load.
    #[serde(alias = "segment_mb")]
    pub file_mb: u64,
    pub max_record_events: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawEngine {
    pub workers: usize,
    pub clock: ClockMode,
    pub clock_tick_ms: u64,
    pub dedup_horizon: usize,
    pub order_horizon: usize,
    pub max_queued_events: usize,
    pub reporting_currency: String,
    pub currency_rates: HashMap<String, f64>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSegments {
    /// `None`: the default file, optional; `""`: none; a path: required.
    pub file: Option<PathBuf>,
    pub feed_retention: usize,
    pub builtins: bool,
    pub lifecycle: RawLifecycle,
    pub tiers: RawTiers,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLifecycle {
    pub new_days: u32,
    pub active_days: u32,
    pub churned_days: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTiers {
    pub metric: String,
    pub levels: Vec<TierLevel>,
}

/// A member tier: users whose tier metric is at least `min` (and below the next tier).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierLevel {
    pub name: String,
    pub min: String,
}

/// `[auth]`: API tokens and which endpoints are open (see [`crate::auth`]).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    pub tokens: Vec<crate::auth::RawToken>,
    pub public_health: bool,
    pub public_metrics: bool,
    /// Allow listening on a non-loopback address with no tokens (`--insecure`).
    pub insecure: bool,
}

impl Default for RawAuth {
    fn default() -> Self {
        RawAuth {
            tokens: Vec::new(),
            public_health: true,
            public_metrics: false,
            insecure: false,
        }
    }
}

/// `[tls]`: one certificate for both listeners (see [`crate::tls`]).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTls {
    /// PEM certificate chain; `""` (the default) and `key_file` `""`: no TLS.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ingest: bool,
    pub http: bool,
    pub handshake_timeout_ms: u64,
}

impl Default for RawTls {
    fn default() -> Self {
        RawTls {
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            ingest: true,
            http: true,
            handshake_timeout_ms: 10_000,
        }
    }
}

/// The file as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub ingest: RawIngest,
    pub http: RawHttp,
    pub log: RawLog,
    pub engine: RawEngine,
    pub segments: RawSegments,
    pub snapshot: SnapshotConfig,
    pub identity: RawIdentity,
    pub similarity: RawSimilarity,
    pub recommend: RawRecommend,
    pub auth: RawAuth,
    pub tls: RawTls,
}

/// `[identity]`: how identity links are applied (see `crate::identity`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawIdentity {
    /// Ids merged into one user at most; a link beyond is refused.
    pub max_ids_per_user: usize,
}

impl Default for RawIdentity {
    fn default() -> Self {
        RawIdentity {
            max_ids_per_user: 100,
        }
    }
}

/// `[similarity]`: item co-occurrence (see
/// `shopstream_dataflows::views::similarity`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSimilarity {
    /// Whether the view is maintained (off: it costs nothing, and its endpoints
    /// answer 404 saying so).
    pub enabled: bool,
    /// Distinct items in a user's recent history.
    pub history_items: usize,
    /// How far back a history reaches, in days of engine clock.
    pub history_days: u32,
    /// Interactions of one user on one day beyond which the user is left out.
    pub max_user_events_per_day: u64,
    /// Distinct items of an order beyond which it is left out.
    pub max_order_items: usize,
}

impl Default for RawSimilarity {
    fn default() -> Self {
        RawSimilarity {
            enabled: true,
            history_items: 50,
            history_days: 30,
            max_user_events_per_day: 1_000,
            max_order_items: 100,
        }
    }
}

/// `[recommend]`: popular and trending items and personal recommendations (see
/// `shopstream_dataflows::views::recommend` and `crate::serve::recommend`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRecommend {
    /// Whether the view is maintained (off: its endpoints answer 404 saying so).
    pub enabled: bool,
    /// Items a user's recent history needs for personal recommendations; below
    /// it (or unknown) a user gets popular items.
    pub min_history: usize,
    /// Half-life of an interaction's weight in personal scores, in days.
    pub half_life_days: f64,
    /// Similar items read per history item.
    pub neighbours: usize,
    /// Co-occurrence kind and measure personal scores use.
    pub kind: String,
    pub measure: String,
    /// Window of the popular items a recommendation falls back on.
    pub popular_window: String,
    /// Least 1-day popularity of a trending item.
    pub trending_min: i64,
    pub weights: RawWeights,
    /// Items whose scores are multiplied by a factor, e.g. `{ "sku-1" = 1.5 }`.
    pub boost: std::collections::BTreeMap<String, f64>,
    /// Items never recommended.
    pub block: Vec<String>,
}

/// `[recommend.weights]`: what each interaction weighs.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawWeights {
    pub view: i64,
    pub click: i64,
    pub wishlist: i64,
    pub cart_add: i64,
    pub purchase: i64,
}

impl Default for RawWeights {
    fn default() -> Self {
        RawWeights {
            view: 1,
            click: 2,
            wishlist: 2,
            cart_add: 3,
            purchase: 5,
        }
    }
}

impl RawWeights {
    /// View, click, wishlist, cart add, purchase.
    pub fn as_array(&self) -> [i64; 5] {
        [
            self.view,
            self.click,
            self.wishlist,
            self.cart_add,
            self.purchase,
        ]
    }
}

impl Default for RawRecommend {
    fn default() -> Self {
        RawRecommend {
            enabled: true,
            min_history: 3,
            half_life_days: 30.0,
            neighbours: 20,
            kind: "viewed".into(),
            measure: "cosine".into(),
            popular_window: "7d".into(),
            trending_min: 5,
            weights: RawWeights::default(),
            boost: Default::default(),
            block: Vec::new(),
        }
    }
}

/// `[snapshot]`: checkpoints of every view's state, so that a restart reads a
/// snapshot and the log after it instead of all history.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotConfig {
    /// Write a snapshot once this many events were logged since the last one
    /// (0: only when asked, by `shopstream snapshot`).
    pub every_events: u64,
    /// ... but not more often than this.
    pub min_interval_s: u64,
    /// Snapshots kept (the newest; at least 1). An older one is a fallback when
    /// the newest is damaged.
    pub keep: usize,
    /// Remove log files whose records all are in the oldest kept snapshot.
    pub prune_log: bool,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            every_events: 2_000_000,
            min_interval_s: 60,
            keep: 2,
            prune_log: false,
        }
    }
}

impl Default for RawSegments {
    fn default() -> Self {
        RawSegments {
            file: None,
            feed_retention: 1_000_000,
            builtins: true,
            lifecycle: RawLifecycle::default(),
            tiers: RawTiers::default(),
        }
    }
}
impl Default for RawLifecycle {
    fn default() -> Self {
        RawLifecycle {
            new_days: 30,
            active_days: 90,
            churned_days: 180,
        }
    }
}
impl Default for RawTiers {
    fn default() -> Self {
        let level = |name: &str, min: &str| TierLevel {
            name: name.into(),
            min: min.into(),
        };
        RawTiers {
            metric: "windows.30d.revenue".into(),
            levels: vec![
                level("bronze", "50"),
                level("silver", "200"),
                level("gold", "1000"),
            ],
        }
    }
}

impl Default for RawIngest {
    fn default() -> Self {
        RawIngest {
            tcp_addr: "127.0.0.1:7400".into(),
            max_line_bytes: 32 * 1024,
            max_id_bytes: crate::event::DEFAULT_MAX_ID_BYTES,
            max_batch_bytes: 500 * 1024,
            max_connections: 1024,
            max_connections_per_addr: 64,
            queue_depth: 256,
            max_future_skew_s: 86_400,
            idle_timeout_s: 60,
            auth_timeout_ms: 10_000,
        }
    }
}
impl Default for RawHttp {
    fn default() -> Self {
        RawHttp {
            addr: "127.0.0.1:7401".into(),
            min_seq_timeout_ms: 5_000,
            max_pending_reads: 4_096,
            max_concurrent_requests: 1_024,
            max_concurrent_ingest: 512,
            body_timeout_ms: 10_000,
            header_timeout_ms: 10_000,
            max_connections: 4_096,
            as_of_history: 0,
        }
    }
}
impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            data_dir: "shopstream-data".into(),
            fsync: FsyncPolicy::Always,
            fsync_interval_ms: 10,
            file_mb: 128,
            max_record_events: 65_536,
        }
    }
}
impl Default for RawEngine {
    fn default() -> Self {
        RawEngine {
            workers: 2,
            clock: ClockMode::Event,
            clock_tick_ms: 1_000,
            dedup_horizon: 1_000_000,
            order_horizon: 1_000_000,
            max_queued_events: 262_144,
            reporting_currency: "USD".into(),
            currency_rates: HashMap::new(),
        }
    }
}

/// Validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub tcp_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub max_line_bytes: usize,
    /// Longest `userId` / `anonymousId` accepted, in bytes.
    pub max_id_bytes: usize,
    pub max_batch_bytes: usize,
    pub max_connections: usize,
    /// Open ingest connections from one remote IP address.
    pub max_connections_per_addr: usize,
    pub queue_depth: usize,
    pub max_future_skew: Duration,
    pub idle_timeout: Duration,
    /// With access control on, how long a TCP connection has to send its framing
    /// and its auth line, altogether.
    pub auth_timeout: Duration,
    pub min_seq_timeout: Duration,
    pub max_pending_reads: usize,
    /// HTTP requests other than ingest being handled at once (`/healthz` and
    /// `/metrics` are not counted).
    pub max_concurrent_requests: usize,
    /// HTTP ingest requests being handled at once: a separate limit, so that
    /// slow ingest bodies cannot starve reads.
    pub max_concurrent_ingest: usize,
    /// How long an HTTP ingest body may take to arrive (then 408).
    pub body_timeout: Duration,
    /// How long an HTTP connection may take to send a request head (then it is
    /// closed).
    pub header_timeout: Duration,
    /// HTTP connections open at once, at most.
    pub max_http_connections: usize,
    /// Readable points kept for `as_of` reads (0: only the newest).
    pub as_of_history: usize,
    pub data_dir: PathBuf,
    pub fsync: FsyncPolicy,
    pub fsync_interval: Duration,
    /// Size after which a new log file is started (`log.file_mb`).
    pub file_bytes: u64,
    pub max_record_events: usize,
    pub workers: usize,
    pub clock: ClockMode,
    pub clock_tick: Duration,
    pub dedup_horizon: usize,
    pub order_horizon: usize,
    /// Events handed to the workers and not yet fed by all of them, at most.
    pub max_queued_events: usize,
    pub reporting_currency: String,
    pub currency_rates: HashMap<String, f64>,
    /// A TOML file of segment definitions to apply at start: `segments.file`,
    /// `None` when it is empty, or when it is the default and absent.
    pub segments_file: Option<PathBuf>,
    /// The default segment file was not found: segments defined from a file
    /// earlier are kept as they are (the server may just have been started from
    /// another directory), not dropped.
    pub keep_file_segments: bool,
    pub feed_retention: usize,
    /// Define the lifecycle, tier and RFM segments.
    pub builtin_segments: bool,
    pub lifecycle: RawLifecycle,
    pub tiers: RawTiers,
    pub snapshot: SnapshotConfig,
    /// Ids merged into one user at most (`identity.max_ids_per_user`).
    pub max_ids_per_user: usize,
    pub similarity: RawSimilarity,
    pub recommend: RawRecommend,
    /// API tokens; access control is on when there is at least one.
    pub auth: crate::auth::Auth,
    /// Listening on a non-loopback address without tokens is allowed.
    pub insecure: bool,
    /// The certificate, when TLS is configured.
    pub tls: Option<crate::tls::TlsFiles>,
    /// TCP ingest uses TLS (when `tls` is set).
    pub tls_ingest: bool,
    /// HTTP uses TLS (when `tls` is set).
    pub tls_http: bool,
    pub tls_handshake_timeout: Duration,
    /// Not a setting: the tests of disk faults arm it to make log writes or fsyncs
    /// fail (see [`crate::log::Faults`]); inert otherwise.
    pub log_faults: std::sync::Arc<crate::log::Faults>,
}

/// The `[recommend]` values that can be wrong.
fn check_recommend(r: &RawRecommend, s: &RawSimilarity) -> Result<(), ConfigError> {
    let bad = |key: &'static str, reason: String| Err(ConfigError::Invalid { key, reason });
    if r.enabled && !s.enabled {
        return bad(
            "recommend.enabled",
            "recommendations read similar items: set similarity.enabled = true too, or \
             recommend.enabled = false"
                .into(),
        );
    }
    if r.min_history == 0 {
        return bad(
            "recommend.min_history",
            "must be at least 1 (a user with no history gets popular items)".into(),
        );
    }
    if !(r.half_life_days > 0.0 && r.half_life_days.is_finite()) {
        return bad(
            "recommend.half_life_days",
            format!(
                "must be a positive number of days, got {}",
                r.half_life_days
            ),
        );
    }
    if r.neighbours == 0 || r.neighbours > 100 {
        return bad(
            "recommend.neighbours",
            format!("must be 1 to 100, got {}", r.neighbours),
        );
    }
    if !matches!(r.kind.as_str(), "viewed" | "bought") {
        return bad(
            "recommend.kind",
            format!("expected viewed or bought, got {:?}", r.kind),
        );
    }
    if !matches!(
        r.measure.as_str(),
        "count" | "jaccard" | "cosine" | "lift" | "llr"
    ) {
        return bad(
            "recommend.measure",
            format!(
                "expected count, jaccard, cosine, lift or llr, got {:?}",
                r.measure
            ),
        );
    }
    if !matches!(r.popular_window.as_str(), "1d" | "7d" | "30d" | "all") {
        return bad(
            "recommend.popular_window",
            format!("expected 1d, 7d, 30d or all, got {:?}", r.popular_window),
        );
    }
    if r.weights.as_array().iter().any(|w| *w <= 0) {
        return bad(
            "recommend.weights",
            "every weight must be greater than 0".into(),
        );
    }
    if let Some((item, f)) = r.boost.iter().find(|(_, f)| !(**f > 0.0 && f.is_finite())) {
        return bad(
            "recommend.boost",
            format!("{item:?}: the factor must be a positive number, got {f}"),
        );
    }
    Ok(())
}

impl RawConfig {
    /// The embedded defaults.
    pub fn embedded() -> Self {
        toml::from_str(DEFAULT_TOML).expect("config/default.toml is valid")
    }

    /// Reads a TOML file; absent keys keep their defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            source: Box::new(e),
        })
    }

    /// Checks every value and produces the configuration the engine runs with.
    pub fn validate(self) -> Result<Config, ConfigError> {
        fn addr(key: &'static str, s: &str) -> Result<SocketAddr, ConfigError> {
            s.parse().map_err(|e| ConfigError::Invalid {
                key,
                reason: format!("{s:?} is not a socket address ({e})"),
            })
        }
        fn positive(key: &'static str, v: u64) -> Result<(), ConfigError> {
            if v == 0 {
                return Err(ConfigError::Invalid {
                    key,
                    reason: "must be greater than 0".into(),
                });
            }
            Ok(())
        }
        let (i, h, l, e, g) = (self.ingest, self.http, self.log, self.engine, self.segments);
        let snapshot = self.snapshot;
        let max_ids_per_user = self.identity.max_ids_per_user;
        let similarity = self.similarity;
        let recommend = self.recommend;
        check_recommend(&recommend, &similarity)?;
        for (key, v) in [
            ("similarity.history_items", similarity.history_items as u64),
            (
                "similarity.history_days",
                u64::from(similarity.history_days),
            ),
            (
                "similarity.max_user_events_per_day",
                similarity.max_user_events_per_day,
            ),
            (
                "similarity.max_order_items",
                similarity.max_order_items as u64,
            ),
        ] {
            if v == 0 {
                return Err(ConfigError::Invalid {
                    key,
                    reason: "must be greater than 0".into(),
                });
            }
        }
        let auth = crate::auth::Auth::new(
            &self.auth.tokens,
            self.auth.public_health,
            self.auth.public_metrics,
        )
        .map_err(|reason| ConfigError::Invalid {
            key: "auth.tokens",
            reason,
        })?;
        let t = self.tls;
        let tls = match (
            t.cert_file.as_os_str().is_empty(),
            t.key_file.as_os_str().is_empty(),
        ) {
            (true, true) => None,
            (false, false) => Some(crate::tls::TlsFiles {
                cert: t.cert_file,
                key: t.key_file,
            }),
            (cert_missing, _) => {
                return Err(ConfigError::Invalid {
                    key: if cert_missing {
                        "tls.cert_file"
                    } else {
                        "tls.key_file"
                    },
                    reason: "tls.cert_file and tls.key_file go together: set both, or neither"
                        .into(),
                })
            }
        };
        positive("tls.handshake_timeout_ms", t.handshake_timeout_ms)?;
        positive("segments.feed_retention", g.feed_retention as u64)?;
        let lc = &g.lifecycle;
        if !(lc.new_days > 0 && lc.active_days > 0 && lc.active_days < lc.churned_days) {
            return Err(ConfigError::Invalid {
                key: "segments.lifecycle",
                reason: format!(
                    "expected new_days > 0 and 0 < active_days < churned_days, got {}, {}, {}",
                    lc.new_days, lc.active_days, lc.churned_days
                ),
            });
        }
        positive("ingest.max_line_bytes", i.max_line_bytes as u64)?;
        positive("ingest.max_id_bytes", i.max_id_bytes as u64)?;
        positive("ingest.max_batch_bytes", i.max_batch_bytes as u64)?;
        positive("ingest.max_connections", i.max_connections as u64)?;
        positive("ingest.queue_depth", i.queue_depth as u64)?;
        positive("http.max_pending_reads", h.max_pending_reads as u64)?;
        positive(
            "http.max_concurrent_requests",
            h.max_concurrent_requests as u64,
        )?;
        positive("http.max_concurrent_ingest", h.max_concurrent_ingest as u64)?;
        positive("http.body_timeout_ms", h.body_timeout_ms)?;
        positive("http.header_timeout_ms", h.header_timeout_ms)?;
        positive("http.max_connections", h.max_connections as u64)?;
        positive("ingest.idle_timeout_s", i.idle_timeout_s)?;
        positive("ingest.auth_timeout_ms", i.auth_timeout_ms)?;
        positive(
            "ingest.max_connections_per_addr",
            i.max_connections_per_addr as u64,
        )?;
        positive("log.file_mb", l.file_mb)?;
        positive("log.max_record_events", l.max_record_events as u64)?;
        positive("engine.clock_tick_ms", e.clock_tick_ms)?;
        positive("engine.max_queued_events", e.max_queued_events as u64)?;
        positive("snapshot.keep", snapshot.keep as u64)?;
        if e.workers == 0 || e.workers > 256 {
            return Err(ConfigError::Invalid {
                key: "engine.workers",
                reason: format!("{} is not between 1 and 256", e.workers),
            });
        }
        if e.reporting_currency.len() != 3
            || !e.reporting_currency.chars().all(|c| c.is_ascii_uppercase())
        {
            return Err(ConfigError::Invalid {
                key: "engine.reporting_currency",
                reason: format!("{:?} is not an ISO 4217 code", e.reporting_currency),
            });
        }
        for (code, rate) in &e.currency_rates {
            if !(rate.is_finite() && *rate > 0.0) {
                return Err(ConfigError::Invalid {
                    key: "engine.currency_rates",
                    reason: format!("rate of {code} must be a positive number, got {rate}"),
                });
            }
        }
        Ok(Config {
            tcp_addr: addr("ingest.tcp_addr", &i.tcp_addr)?,
            http_addr: addr("http.addr", &h.addr)?,
            max_line_bytes: i.max_line_bytes,
            max_id_bytes: i.max_id_bytes,
            max_batch_bytes: i.max_batch_bytes,
            max_connections: i.max_connections,
            max_connections_per_addr: i.max_connections_per_addr,
            queue_depth: i.queue_depth,
            max_future_skew: Duration::from_secs(i.max_future_skew_s),
            idle_timeout: Duration::from_secs(i.idle_timeout_s),
            auth_timeout: Duration::from_millis(i.auth_timeout_ms),
            min_seq_timeout: Duration::from_millis(h.min_seq_timeout_ms),
            max_pending_reads: h.max_pending_reads,
            max_concurrent_requests: h.max_concurrent_requests,
            max_concurrent_ingest: h.max_concurrent_ingest,
            body_timeout: Duration::from_millis(h.body_timeout_ms),
            header_timeout: Duration::from_millis(h.header_timeout_ms),
            max_http_connections: h.max_connections,
            as_of_history: h.as_of_history,
            data_dir: l.data_dir,
            fsync: l.fsync,
            fsync_interval: Duration::from_millis(l.fsync_interval_ms),
            file_bytes: l.file_mb * 1024 * 1024,
            max_record_events: l.max_record_events,
            workers: e.workers,
            clock: e.clock,
            clock_tick: Duration::from_millis(e.clock_tick_ms),
            dedup_horizon: e.dedup_horizon,
            order_horizon: e.order_horizon,
            max_queued_events: e.max_queued_events,
            reporting_currency: e.reporting_currency,
            currency_rates: e.currency_rates,
            segments_file: match &g.file {
                None => Some(PathBuf::from(DEFAULT_SEGMENTS_FILE)).filter(|p| p.exists()),
                Some(p) if p.as_os_str().is_empty() => None,
                Some(p) => Some(p.clone()),
            },
            keep_file_segments: g.file.is_none() && !Path::new(DEFAULT_SEGMENTS_FILE).exists(),
            feed_retention: g.feed_retention,
            builtin_segments: g.builtins,
            lifecycle: g.lifecycle,
            tiers: g.tiers,
            snapshot,
            max_ids_per_user,
            similarity,
            recommend,
            auth,
            insecure: self.auth.insecure,
            tls,
            tls_ingest: t.ingest,
            tls_http: t.http,
            tls_handshake_timeout: Duration::from_millis(t.handshake_timeout_ms),
            log_faults: Default::default(),
        })
    }
}

impl Config {
    /// The embedded defaults, validated; tests start from this and change fields.
    pub fn defaults() -> Self {
        RawConfig::embedded()
            .validate()
            .expect("embedded defaults are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_match_code_defaults() {
        let embedded = RawConfig::embedded().validate().unwrap();
        let code = RawConfig::default().validate().unwrap();
        assert_eq!(format!("{embedded:?}"), format!("{code:?}"));
    }

    #[test]
    fn invalid_values_name_their_key() {
        let mut raw = RawConfig::default();
        raw.engine.workers = 0;
        let err = raw.validate().unwrap_err().to_string();
        assert!(err.contains("engine.workers"), "{err}");
        let err = toml::from_str::<RawConfig>("[ingest]\nmax_lines = 3\n").unwrap_err();
        assert!(err.to_string().contains("max_lines"), "{err}");
    }

    #[test]
    fn auth_and_tls_mistakes_name_their_key() {
        let err = |text: &str| {
            toml::from_str::<RawConfig>(text)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string()
        };
        let e = err("[[auth.tokens]]\nname = \"ci\"\nsha256 = \"zz\"\nscopes = [\"ingest\"]\n");
        assert!(
            e.contains("auth.tokens") && e.contains("\"ci\"") && e.contains("hex"),
            "{e}"
        );
        let e = err("[tls]\ncert_file = \"c.pem\"\n");
        assert!(e.contains("tls.key_file"), "{e}");
        let ok: RawConfig = toml::from_str(&format!(
            "[[auth.tokens]]\nname = \"ci\"\nsha256 = \"{}\"\nscopes = [\"ingest\", \"query\"]\n",
            crate::auth::digest_hex(b"t")
        ))
        .unwrap();
        assert!(ok.validate().unwrap().auth.enabled());
    }

    #[test]
    fn log_segment_mb_still_loads_as_file_mb() {
        let old: RawConfig = toml::from_str("[log]\nsegment_mb = 3\n").unwrap();
        let new: RawConfig = toml::from_str("[log]\nfile_mb = 3\n").unwrap();
        assert_eq!((old.log.file_mb, new.log.file_mb), (3, 3));
        assert_eq!(old.validate().unwrap().file_bytes, 3 << 20);
    }
}
