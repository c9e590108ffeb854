//! The segment view's host half: its compiler and its definitions at start (see
//! [`crate::catalog::segments`]), the change feed it publishes to
//! ([`super::feed::Hub`]), and its endpoints: definitions (create, change, drop),
//! sizes, members, a user's segments, membership tests, and the Server-Sent
//! Events change feed.
//!
//! Every read answers at one complete epoch (`as_of`) and honours `min_seq` and `as_of`. A
//! segment answers from the epoch its rule was defined at on: a read of a segment
//! just defined waits for that epoch (as a write of a definition does before it
//! answers), so no answer mixes an old rule with a new one.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};
use shopstream_dataflows::types::{Time, UserId};
use shopstream_dataflows::view::Env;
use shopstream_dataflows::views::segments::{ChangeSink, SegId, SegmentView, Since};
use tokio::sync::broadcast;

use super::feed::{format_position, parse_position, FeedEvent, Hub, Unresumable};
use super::view::ServeView;
use crate::catalog::segments::{
    check_name, compile, segment_id, startup_controls, wanted, SegmentCompiler, KIND,
};
use crate::catalog::{Catalog, Compiler, Control, Definition, Source, StartupError};
use crate::config::Config;
use crate::identity::Identity;
use crate::reply::{engine_error, error, identify, read_at, rfc3339};
use crate::runtime::{
    Defined, Engine, EngineError, HostContext, ReadAt, Readable, Route, ViewHost,
};

/// The segment view's registration.
#[derive(Debug)]
pub struct Segments;

impl ViewHost for Segments {
    fn name(&self) -> &'static str {
        "segments"
    }

    fn compilers(&self, config: &Config) -> Vec<Arc<dyn Compiler>> {
        vec![Arc::new(SegmentCompiler::new(config))]
    }

    /// The change feed, as the workers' sink and for the handlers.
    fn provide(&self, env: &mut Env, cx: HostContext<'_>) {
        let hub = Arc::new(Hub::new(
            cx.config.workers,
            cx.config.feed_retention,
            cx.catalog.clone(),
            cx.symbols.clone(),
        ));
        env.insert::<Arc<dyn ChangeSink>>(hub.clone());
        env.insert(hub);
    }

    fn check(&self, config: &Config) -> Result<(), StartupError> {
        wanted(config).map(drop)
    }

    /// The change feed and the sizes over time: derived from changes, so a
    /// start from a snapshot would otherwise lose what came before it.
    fn snapshot(&self, env: &Env) -> Option<Vec<u8>> {
        env.get::<Arc<Hub>>().map(|hub| hub.save())
    }

    fn restore(&self, env: &Env, saved: &[u8]) -> Result<(), String> {
        match env.get::<Arc<Hub>>() {
            Some(hub) => hub.restore(saved),
            None => Ok(()),
        }
    }

    /// The built-in segments and the segment file, against what the log defines.
    fn startup(&self, config: &Config, catalog: &Catalog) -> Result<Vec<Control>, StartupError> {
        let wanted = wanted(config)?;
        let keep = config.keep_file_segments;
        let current = catalog.definitions(KIND);
        if keep && current.iter().any(|d| d.source == Source::Config) {
            tracing::warn!(
                file = crate::config::DEFAULT_SEGMENTS_FILE,
                "the default segment file is not in the working directory; segments defined from a file earlier are kept as they are"
            );
        }
        Ok(startup_controls(&current, &wanted, keep))
    }

    fn close(&self, env: &Env) {
        if let Some(hub) = env.get::<Arc<Hub>>() {
            hub.close();
        }
    }
}

impl ServeView for Segments {
    fn routes(&self) -> Router<Arc<Engine>> {
        Router::new()
            .route("/v1/users/{id}/segments", get(of_user))
            .route("/v1/segments", get(list).post(create))
            .route("/v1/segments/{name}", get(show).put(replace).delete(delete))
            .route("/v1/segments/{name}/members", get(members))
            .route("/v1/segments/{name}/contains/{user}", get(contains))
            .route("/v1/stream/segments", get(stream))
    }
}

/// The change feed of `engine`'s segment view.
pub fn hub(engine: &Engine) -> Arc<Hub> {
    engine
        .service::<Arc<Hub>>()
        .expect("the segment view provides its hub")
}

/// A segment's definition.
pub fn definition(engine: &Engine, name: &str) -> Option<Definition> {
    engine.catalog().get(KIND, name)
}

/// A segment read is of the segment defined at `epoch`.
fn defined(epoch: Option<Time>) -> Option<Defined> {
    epoch.map(|epoch| Defined { kind: KIND, epoch })
}

/// The segments a user is in, by id, with `since`, in id order: those of the
/// user the id belongs to (any id of an identity answers for its user), with the
/// identity (`None`: no link names the id).
pub async fn user_segments(
    engine: &Engine,
    user: &str,
    at: impl Into<ReadAt>,
    min_epoch: Option<Time>,
) -> Result<(Readable, Vec<(SegId, Since)>, Option<Identity>), EngineError> {
    let (as_of, identity, answer) = engine
        .read_user(
            at,
            defined(min_epoch),
            user,
            move |v: &mut SegmentView, user, cx| v.traces.user_segments(user, cx.at),
        )
        .await?;
    Ok((as_of, answer.unwrap_or_default(), identity))
}

/// Members of every segment with members, summed over the workers.
pub async fn segment_sizes(
    engine: &Engine,
    at: impl Into<ReadAt>,
    min_epoch: Option<Time>,
) -> Result<(Readable, HashMap<SegId, i64>), EngineError> {
    let (as_of, answers) = engine
        .read(
            at,
            defined(min_epoch),
            Route::All,
            |v: &mut SegmentView, cx| v.traces.sizes(cx.at),
        )
        .await?;
    let mut sizes = HashMap::new();
    for (seg, n) in answers.into_iter().flatten() {
        *sizes.entry(seg).or_insert(0) += n;
    }
    Ok((as_of, sizes))
}

/// The number of members of segment `id`, at an epoch at or after `min_epoch`.
pub async fn segment_size(
    engine: &Engine,
    id: SegId,
    at: impl Into<ReadAt>,
    min_epoch: Option<Time>,
) -> Result<(Readable, i64), EngineError> {
    let (as_of, answers) = engine
        .read(
            at,
            defined(min_epoch),
            Route::All,
            move |v: &mut SegmentView, cx| v.traces.size(id, cx.at),
        )
        .await?;
    Ok((as_of, answers.into_iter().sum()))
}

/// Up to `limit` members of segment `id` with ids after `after`, in id order,
/// and the cursor of the next page (`None`: this was the last).
pub async fn segment_members(
    engine: &Engine,
    id: SegId,
    after: Option<UserId>,
    limit: usize,
    at: impl Into<ReadAt>,
    min_epoch: Option<Time>,
) -> Result<(Readable, Vec<UserId>, Option<UserId>), EngineError> {
    let ask = limit.saturating_add(1);
    let (as_of, answers) = engine
        .read(
            at,
            defined(min_epoch),
            Route::All,
            move |v: &mut SegmentView, cx| v.traces.members(id, after, ask, cx.at),
        )
        .await?;
    let mut members: Vec<UserId> = answers.into_iter().flatten().collect();
    members.sort_unstable();
    let next = if members.len() > limit {
        members.truncate(limit);
        members.last().copied()
    } else {
        None
    };
    Ok((as_of, members, next))
}

/// Members per page unless `limit` says otherwise, and the most a page may hold.
pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 10_000;

/// The epoch a read answered at (`null` before anything is readable): follow the
/// change feed from it with `Last-Event-ID: EPOCH` to miss nothing after the read.
fn epoch(r: &Readable) -> Value {
    r.done.checked_sub(1).map_or(Value::Null, |e| json!(e))
}

fn since_json(s: Since) -> Value {
    json!({"as_of": s.seq, "time": rfc3339(s.clock)})
}

fn definition_json(d: &Definition) -> Value {
    json!({
        "name": d.name,
        "rule": d.body,
        "source": d.source.name(),
        "defined_at": {"as_of": d.seq, "time": rfc3339(d.clock), "epoch": d.epoch},
    })
}

/// Where a per-segment read is at (`min_seq`, `as_of`) and the segment's definition (400 or 404
/// otherwise).
fn lookup(
    engine: &Engine,
    name: &str,
    params: &HashMap<String, String>,
) -> Result<(ReadAt, Definition), Response> {
    let at = read_at(params)?;
    let d = definition(engine, name).ok_or_else(|| not_defined(name))?;
    Ok((at, d))
}

fn not_defined(name: &str) -> Response {
    error(StatusCode::NOT_FOUND, format!("no segment named {name:?}"))
}

fn user_name(engine: &Engine, user: UserId) -> String {
    engine
        .symbols
        .resolve(user)
        .unwrap_or_else(|| format!("#{user:016x}"))
}

#[derive(Deserialize)]
pub struct NewSegment {
    name: Option<String>,
    rule: Option<String>,
}

/// Validates a name and a rule before anything is logged: 400 with the rule's
/// error position, 409 for a segment that configuration owns.
fn check_definition(
    engine: &Engine,
    name: &str,
    rule: &str,
    replacing: bool,
) -> Result<(), Response> {
    check_name(name).map_err(|e| error(StatusCode::BAD_REQUEST, format!("name: {e}")))?;
    let scale = crate::event::minor_unit_decimals(&engine.config.reporting_currency);
    if let Err(e) = compile(rule, scale) {
        return Err((
            StatusCode::BAD_REQUEST,
            Json(json!({
                "error": format!("rule: {e}"),
                "rule_error": {"at": e.at, "message": e.message},
            })),
        )
            .into_response());
    }
    owned_by_api(engine, name, replacing)
}

fn owned_by_api(engine: &Engine, name: &str, replacing: bool) -> Result<(), Response> {
    match definition(engine, name) {
        Some(d) if d.source != Source::Api => Err(error(
            StatusCode::CONFLICT,
            format!(
                "segment {name:?} is defined by {}; change it there",
                match d.source {
                    Source::Builtin => "the [segments] settings (builtins)",
                    _ => "the segment file (segments.file)",
                }
            ),
        )),
        Some(_) if !replacing => Err(error(
            StatusCode::CONFLICT,
            format!("segment {name:?} exists; PUT /v1/segments/{name} changes it"),
        )),
        _ => Ok(()),
    }
}

async fn apply(engine: &Engine, control: Control, name: &str, status: StatusCode) -> Response {
    match engine.define(vec![control]).await {
        Ok(readable) => {
            let mut body = json!({"name": name, "as_of": readable.seq, "epoch": readable.done - 1});
            if let Some(d) = definition(engine, name) {
                body = definition_json(&d);
                body["as_of"] = json!(readable.seq);
                body["epoch"] = json!(readable.done - 1);
                if let Ok((_, size)) =
                    segment_size(engine, segment_id(name), None, Some(d.epoch)).await
                {
                    body["size"] = json!(size);
                }
            }
            (status, Json(body)).into_response()
        }
        Err(e) => engine_error(e),
    }
}

/// `POST /v1/segments {"name", "rule"}`.
async fn create(
    State(engine): State<Arc<Engine>>,
    body: Result<Json<NewSegment>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(body)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected a JSON object {\"name\": ..., \"rule\": ...}",
        );
    };
    let (Some(name), Some(rule)) = (body.name, body.rule) else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected both \"name\" and \"rule\" (strings)",
        );
    };
    define_api(&engine, name, rule, false).await
}

/// `PUT /v1/segments/{name} {"rule"}`: creates or changes.
async fn replace(
    State(engine): State<Arc<Engine>>,
    Path(name): Path<String>,
    body: Result<Json<NewSegment>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(body)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected a JSON object {\"rule\": ...}",
        );
    };
    let Some(rule) = body.rule else {
        return error(StatusCode::BAD_REQUEST, "expected \"rule\" (a string)");
    };
    if body.name.as_ref().is_some_and(|n| *n != name) {
        return error(
            StatusCode::BAD_REQUEST,
            "the body's \"name\" differs from the path's",
        );
    }
    define_api(&engine, name, rule, true).await
}

/// Checks and logs an API definition, one at a time: 201 for a new segment, 200
/// for a changed one (`replacing` allows the latter).
async fn define_api(engine: &Engine, name: String, rule: String, replacing: bool) -> Response {
    let _one_at_a_time = engine.definitions.lock().await;
    if let Err(r) = check_definition(engine, &name, &rule, replacing) {
        return r;
    }
    let status = if definition(engine, &name).is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let control = Control::put(KIND, &name, rule, Source::Api);
    apply(engine, control, &name, status).await
}

/// `DELETE /v1/segments/{name}`: every member exits.
async fn delete(State(engine): State<Arc<Engine>>, Path(name): Path<String>) -> Response {
    let _one_at_a_time = engine.definitions.lock().await;
    if definition(&engine, &name).is_none() {
        return not_defined(&name);
    }
    if let Err(r) = owned_by_api(&engine, &name, true) {
        return r;
    }
    let control = Control::remove(KIND, &name);
    match engine.define(vec![control]).await {
        Ok(readable) => {
            Json(json!({"name": name, "deleted": true, "as_of": readable.seq})).into_response()
        }
        Err(e) => engine_error(e),
    }
}

/// `GET /v1/segments`: definitions with sizes.
async fn list(
    State(engine): State<Arc<Engine>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let at = match read_at(&params) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let definitions = engine.catalog().definitions(KIND);
    // The newest definition is answered for, unless the read is of a past point
    // (then a segment defined later has no members there).
    let newest = definitions
        .iter()
        .map(|d| d.epoch)
        .max()
        .filter(|_| at.as_of.is_none());
    let (as_of, sizes) = match segment_sizes(&engine, at, newest).await {
        Ok(x) => x,
        Err(e) => return engine_error(e),
    };
    let segments: Vec<Value> = definitions
        .iter()
        .map(|d| {
            let mut v = definition_json(d);
            v["size"] = json!(sizes.get(&segment_id(&d.name)).copied().unwrap_or(0));
            v
        })
        .collect();
    Json(json!({"as_of": as_of.seq, "epoch": epoch(&as_of), "segments": segments})).into_response()
}

/// `GET /v1/segments/{name}`: the definition, its size, and its size over time.
async fn show(
    State(engine): State<Arc<Engine>>,
    Path(name): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let (at, d) = match lookup(&engine, &name, &params) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let id = segment_id(&name);
    let (as_of, size) = match segment_size(&engine, id, at, Some(d.epoch)).await {
        Ok(x) => x,
        Err(e) => return engine_error(e),
    };
    let track = hub(&engine).size_history(id);
    let history: Vec<Value> = track
        .recent
        .iter()
        .filter(|(epoch, ..)| *epoch >= d.created_epoch && *epoch < as_of.done)
        .map(|(_, seq, clock, size)| json!({"as_of": seq, "time": rfc3339(*clock), "size": size}))
        .collect();
    let series = |q: &std::collections::VecDeque<(i64, i64)>| -> Vec<Value> {
        q.iter()
            .filter(|(start, _)| *start <= as_of.clock)
            .map(|(start, size)| json!({"time": rfc3339(*start), "size": size}))
            .collect()
    };
    let mut body = definition_json(&d);
    body["size"] = json!(size);
    body["as_of"] = json!(as_of.seq);
    body["epoch"] = json!(epoch(&as_of));
    body["history"] = json!(history);
    body["per_minute"] = json!(series(&track.minutes));
    body["per_hour"] = json!(series(&track.hours));
    Json(body).into_response()
}

/// `GET /v1/segments/{name}/members?limit=&after=`: a page of members in a stable
/// order (by the hash of the user id), and the cursor of the next page.
async fn members(
    State(engine): State<Arc<Engine>>,
    Path(name): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let at = match read_at(&params) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let limit = match params.get("limit").map(|v| v.parse::<usize>()) {
        None => DEFAULT_PAGE,
        Some(Ok(n)) if (1..=MAX_PAGE).contains(&n) => n,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("limit: expected an integer from 1 to {MAX_PAGE}"),
            )
        }
    };
    let after = match params.get("after") {
        None => None,
        Some(c) => match u64::from_str_radix(c, 16) {
            Ok(v) if c.len() == 16 => Some(v),
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("after: expected the \"next\" cursor of a previous page (16 hex digits), got {c:?}"),
                )
            }
        },
    };
    let Some(d) = definition(&engine, &name) else {
        return not_defined(&name);
    };
    match segment_members(&engine, segment_id(&name), after, limit, at, Some(d.epoch)).await {
        Ok((as_of, users, next)) => Json(json!({
            "segment": name,
            "as_of": as_of.seq,
            "epoch": epoch(&as_of),
            "members": users.iter().map(|u| user_name(&engine, *u)).collect::<Vec<_>>(),
            "next": next.map(|n| format!("{n:016x}")),
        }))
        .into_response(),
        Err(e) => engine_error(e),
    }
}

/// `GET /v1/segments/{name}/contains/{user}`.
async fn contains(
    State(engine): State<Arc<Engine>>,
    Path((name, user)): Path<(String, String)>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let (at, d) = match lookup(&engine, &name, &params) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let id = segment_id(&name);
    match user_segments(&engine, &user, at, Some(d.epoch)).await {
        Ok((as_of, segments, identity)) => {
            let since = segments.iter().find(|(s, _)| *s == id).map(|(_, s)| *s);
            let mut body = json!({
                "segment": name,
                "member": since.is_some(),
                "since": since.map(since_json),
                "as_of": as_of.seq,
                "epoch": epoch(&as_of),
            });
            identify(&mut body, &user, identity.as_ref());
            Json(body).into_response()
        }
        Err(e) => engine_error(e),
    }
}

/// `GET /v1/users/{id}/segments`: the user's segments, each with `since`.
async fn of_user(
    State(engine): State<Arc<Engine>>,
    Path(user): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let at = match read_at(&params) {
        Ok(m) => m,
        Err(r) => return r,
    };
    match user_segments(&engine, &user, at, None).await {
        Ok((as_of, segments, identity)) => {
            let mut list: Vec<Value> = segments
                .into_iter()
                .filter_map(|(id, since)| {
                    let name = engine.catalog().name(KIND, id)?;
                    Some(json!({"name": name, "since": since_json(since)}))
                })
                .collect();
            list.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
            let mut body = json!({"as_of": as_of.seq, "epoch": epoch(&as_of), "segments": list});
            identify(&mut body, &user, identity.as_ref());
            Json(body).into_response()
        }
        Err(e) => engine_error(e),
    }
}

/// The SSE change feed's state: the backlog to replay, then live events.
struct Feed {
    engine: Arc<Engine>,
    hub: Arc<Hub>,
    backlog: VecDeque<FeedEvent>,
    live: broadcast::Receiver<Arc<[FeedEvent]>>,
    /// The live edge at subscription, sent first as a `ready` event (`None` once sent).
    ready: Option<Option<(u64, u32)>>,
    closed: tokio::sync::watch::Receiver<bool>,
    /// Segment ids to send (`None`: all).
    only: Option<HashSet<u64>>,
    last: Option<(u64, u32)>,
    /// The epoch whose changes were all passed over since the last event sent.
    skipped: Option<u64>,
    ended: bool,
    /// Segment names seen so far (a segment's name never changes).
    names: HashMap<u64, Arc<str>>,
    /// The data of the event being written, reused.
    buf: Vec<u8>,
    _subscribed: Subscribed,
}

/// One change as an SSE event. The data is written by hand (two escaped
/// strings and two fixed fields): the feed can carry hundreds of thousands of
/// changes a second, and a `serde_json::Value` per change was most of its cost.
fn sse_event(e: &FeedEvent, segment: &str, user: &str, buf: &mut Vec<u8>) -> SseEvent {
    buf.clear();
    buf.extend_from_slice(b"{\"segment\":");
    let _ = serde_json::to_writer(&mut *buf, segment);
    buf.extend_from_slice(b",\"user_id\":");
    let _ = serde_json::to_writer(&mut *buf, user);
    buf.extend_from_slice(if e.enter {
        b",\"change\":\"enter\",\"as_of\":"
    } else {
        b",\"change\":\"exit\",\"as_of\":"
    });
    buf.extend_from_slice(itoa::Buffer::new().format(e.as_of).as_bytes());
    buf.push(b'}');
    SseEvent::default()
        .id(format_position(e.position))
        .event("segment")
        .data(std::str::from_utf8(buf).unwrap_or_default())
}

/// Counts open change-feed subscriptions (`shopstream_segment_feed_subscribers`).
struct Subscribed;

impl Subscribed {
    fn new() -> Self {
        metrics::gauge!("shopstream_segment_feed_subscribers").increment(1.0);
        Subscribed
    }
}

impl Drop for Subscribed {
    fn drop(&mut self) {
        metrics::gauge!("shopstream_segment_feed_subscribers").decrement(1.0);
    }
}

impl Feed {
    async fn next(&mut self) -> Option<SseEvent> {
        if self.ended {
            return None;
        }
        if let Some(edge) = self.ready.take() {
            // Where this subscription stands: a client that reconnects before any
            // change arrives resumes from here.
            let mut e = SseEvent::default()
                .event("ready")
                .data(json!({"epoch": edge.map(|p| p.0)}).to_string());
            if let Some(p) = edge.filter(|_| self.last.is_none()) {
                e = e.id(format_position(p));
            }
            return Some(e);
        }
        loop {
            if *self.closed.borrow() {
                return None;
            }
            let e = match self.backlog.pop_front() {
                Some(e) => e,
                None if self.skipped.is_some() => {
                    // Changes of other segments were passed over: move the
                    // client's Last-Event-ID past them (an id-only event fires no
                    // handler), so a reconnect resumes here, not behind them.
                    let epoch = self.skipped.take().unwrap_or_default();
                    return Some(SseEvent::default().id(format_position((epoch, u32::MAX))));
                }
                None => match tokio::select! {
                    r = self.live.recv() => r,
                    _ = self.closed.wait_for(|c| *c) => return None,
                } {
                    Ok(epoch) => {
                        self.backlog.extend(epoch.iter().copied());
                        continue;
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        // Too slow for the live buffer: say so and end; the client
                        // reconnects with its Last-Event-ID and misses nothing.
                        self.ended = true;
                        return Some(
                            SseEvent::default().event("lagged").data(
                                json!({"error": format!("the subscriber fell {n} epochs behind; reconnect with Last-Event-ID to resume")})
                                    .to_string(),
                            ),
                        );
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            };
            if self.last.is_some_and(|l| e.position <= l) {
                continue;
            }
            self.last = Some(e.position);
            if self.only.as_ref().is_some_and(|o| !o.contains(&e.segment)) {
                // Remember the epoch, once it is passed whole.
                let last_of_epoch = self
                    .backlog
                    .front()
                    .is_none_or(|n| n.position.0 != e.position.0);
                if last_of_epoch {
                    self.skipped = Some(e.position.0);
                }
                continue;
            }
            self.skipped = None;
            let segment = match self.names.get(&e.segment) {
                Some(n) => n.clone(),
                None => {
                    let n: Arc<str> = self.hub.segment_name(e.segment).into();
                    self.names.insert(e.segment, n.clone());
                    n
                }
            };
            let Feed { engine, buf, .. } = self;
            let event = engine.symbols.with_resolved(e.user, |user| match user {
                Some(user) => sse_event(&e, &segment, user, buf),
                None => sse_event(&e, &segment, &format!("#{:016x}", e.user), buf),
            });
            return Some(event);
        }
    }
}

/// `GET /v1/stream/segments[?name=a,b]`: Server-Sent Events, one per enter or exit,
/// `id` = position. With `Last-Event-ID` (header, or `last_event_id=` in the query)
/// it resumes right after that position; without, it starts at the live edge.
async fn stream(
    State(engine): State<Arc<Engine>>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let only = params.get("name").map(|names| {
        names
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect::<HashSet<_>>()
    });
    if only.as_ref().is_some_and(HashSet::is_empty) {
        return error(
            StatusCode::BAD_REQUEST,
            "name: expected one or more segment names, comma-separated (leave it out for all)",
        );
    }
    if let Some(only) = &only {
        if let Some(unknown) = only.iter().find(|n| definition(&engine, n).is_none()) {
            return not_defined(unknown);
        }
    }
    let resume = match headers.get("last-event-id").map(|v| v.to_str()) {
        Some(Ok(v)) => Some(v.to_owned()),
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "Last-Event-ID: not valid text; expected an event id like \"12.0\" or an epoch like \"12\"",
            )
        }
        None => params.get("last_event_id").cloned(),
    };
    let after = match resume {
        None => None,
        Some(s) => match parse_position(&s) {
            Some(p) => Some(p),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("Last-Event-ID: expected an event id like \"12.0\" or an epoch like \"12\", got {s:?}"),
                )
            }
        },
    };
    let hub = hub(&engine);
    let sub = match hub.subscribe(after) {
        Ok(x) => x,
        Err(e @ Unresumable::TooOld { .. }) => return error(StatusCode::GONE, e.to_string()),
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let feed = Feed {
        engine: engine.clone(),
        backlog: sub.backlog.into(),
        live: sub.live,
        ready: Some(sub.edge),
        closed: hub.closed(),
        hub,
        only: only.map(|o| o.iter().map(|n| segment_id(n)).collect()),
        last: after,
        skipped: None,
        ended: false,
        names: HashMap::new(),
        buf: Vec::with_capacity(128),
        _subscribed: Subscribed::new(),
    };
    let events = futures_util::stream::unfold(feed, |mut feed| async move {
        feed.next().await.map(|e| (Ok::<_, Infallible>(e), feed))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
