//! Helpers shared by the integration tests: in-process servers, TCP (NDJSON and
//! binary) and HTTP clients that return the server's answers, message builders, and a
//! deterministic shop workload. The `shopstream serve` child process is in `process.rs`.
//!
//! Everything here is blocking: a test is a plain `#[test]`, and each
//! [`TestServer`] owns the tokio runtime it runs on.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Value};
use shopstream::config::Config;
use shopstream::event::{parse_message, Event, ParseContext};
use shopstream::server::Server;

/// 2023-11-14T22:13:20Z: a base time safely in the past (the server refuses
/// timestamps more than a day ahead of its clock).
pub const T0: i64 = 1_700_000_000_000;
pub const SECOND: i64 = 1_000;
pub const MINUTE: i64 = 60 * SECOND;
pub const DAY: i64 = 86_400_000;

/// How long any single network wait may take before the test fails instead of hanging.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// The embedded defaults with OS-chosen ports, 2 workers, and the log in `data_dir`.
pub fn config(data_dir: &Path) -> Config {
    let mut cfg = Config::defaults();
    cfg.tcp_addr = "127.0.0.1:0".parse().expect("addr");
    cfg.http_addr = "127.0.0.1:0".parse().expect("addr");
    cfg.data_dir = data_dir.to_path_buf();
    cfg.workers = 2;
    // Tests define the segments they need; the repository's example file (the
    // default `segments.file`, found when tests run from the crate root) stays out.
    cfg.segments_file = None;
    cfg
}

/// A server running in this process, on its own tokio runtime.
pub struct TestServer {
    rt: Option<tokio::runtime::Runtime>,
    server: Option<Server>,
    pub tcp: SocketAddr,
    pub http: SocketAddr,
    pub data_dir: PathBuf,
    /// Set when the server made its own temporary data directory.
    _temp: Option<tempfile::TempDir>,
}

impl TestServer {
    /// Defaults, in a fresh temporary data directory.
    pub fn start() -> TestServer {
        TestServer::start_with(|_| {})
    }

    /// Defaults changed by `tweak`, in a fresh temporary data directory.
    pub fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let temp = tempfile::tempdir().expect("temp dir");
        let mut s = TestServer::start_in(temp.path(), tweak);
        s._temp = Some(temp);
        s
    }

    /// Defaults changed by `tweak`, with the log in `data_dir` (which the caller
    /// keeps, e.g. to restart on it).
    pub fn start_in(data_dir: &Path, tweak: impl FnOnce(&mut Config)) -> TestServer {
        let mut cfg = config(data_dir);
        tweak(&mut cfg);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let server = rt
            .block_on(Server::start(cfg, |_, _| {}))
            .expect("server starts");
        TestServer {
            tcp: server.tcp_addr,
            http: server.http_addr,
            data_dir: data_dir.to_path_buf(),
            server: Some(server),
            rt: Some(rt),
            _temp: None,
        }
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("running")
    }

    /// Graceful shutdown: listeners, then the engine (which drains the log queue).
    /// Fails the test if it does not finish within [`SHUTDOWN_TIMEOUT`].
    pub fn shutdown(mut self) {
        assert!(
            self.stop(),
            "graceful shutdown did not finish within {SHUTDOWN_TIMEOUT:?}"
        );
    }

    /// Leaves the server running in the background without waiting for it (for a
    /// test that found the engine wedged and is about to fail).
    pub fn abandon(mut self) {
        self.server.take();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }

    /// Shuts down with a time limit; false (and the server leaked) if it hung.
    fn stop(&mut self) -> bool {
        let (Some(server), Some(rt)) = (self.server.take(), self.rt.take()) else {
            return true;
        };
        let done = rt.block_on(async {
            tokio::time::timeout(SHUTDOWN_TIMEOUT, server.shutdown())
                .await
                .is_ok()
        });
        if done {
            drop(rt);
        } else {
            rt.shutdown_background();
        }
        done
    }
}

/// How long a graceful shutdown may take before the test gives up on it.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(20);

impl Drop for TestServer {
    fn drop(&mut self) {
        if !self.stop() {
            eprintln!("warning: server shutdown hung; left it running in the background");
        }
    }
}

/// The values of every `key=N` field in log text.
pub fn log_field_values(log: &str, key: &str) -> Vec<u64> {
    let pat = format!("{key}=");
    log.match_indices(&pat)
        .filter_map(|(i, _)| {
            let rest = &log[i + pat.len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

/// The log files (`*.log`) of a data directory, in name (epoch) order.
pub fn log_files(data_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data_dir)
        .expect("read data dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

// --- TCP ingest --------------------------------------------------------------

/// Every answer line of one TCP ingest connection, in order.
#[derive(Clone, Debug, Default)]
pub struct Answers {
    pub lines: Vec<Value>,
}

impl Answers {
    /// The `{"error": ...}` lines.
    pub fn errors(&self) -> Vec<&Value> {
        self.lines
            .iter()
            .filter(|v| v.get("error").is_some())
            .collect()
    }
    /// The `{"ack": ...}` lines.
    pub fn acks(&self) -> Vec<&Value> {
        self.lines
            .iter()
            .filter(|v| v.get("ack").is_some())
            .collect()
    }
    /// The final acknowledgement (its counts are cumulative for the connection).
    pub fn last_ack(&self) -> &Value {
        self.acks()
            .last()
            .copied()
            .unwrap_or_else(|| panic!("no ack line; answers: {:?}", self.lines))
    }
    pub fn seq(&self) -> u64 {
        self.last_ack()["ack"].as_u64().expect("ack is a number")
    }
    pub fn accepted(&self) -> u64 {
        self.last_ack()["accepted"].as_u64().expect("accepted")
    }
    pub fn rejected(&self) -> u64 {
        self.last_ack()["rejected"].as_u64().expect("rejected")
    }
    pub fn duplicates(&self) -> u64 {
        self.last_ack()["duplicates"].as_u64().expect("duplicates")
    }
    /// The error line for input line `line`, if any.
    pub fn error_for_line(&self, line: u64) -> Option<&Value> {
        self.lines
            .iter()
            .find(|v| v.get("error").is_some() && v["line"].as_u64() == Some(line))
    }
}

/// Sends `bytes` on one TCP ingest connection, shuts the write half, and reads
/// every answer until the server closes. Reading runs beside writing, so large
/// inputs cannot deadlock on full socket buffers.
pub fn send_tcp(addr: SocketAddr, bytes: &[u8]) -> Answers {
    let stream = TcpStream::connect(addr).expect("connect to ingest");
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let reader = stream.try_clone().expect("clone socket");
    let answers = std::thread::spawn(move || read_answers(reader));
    (&stream).write_all(bytes).expect("send");
    stream
        .shutdown(Shutdown::Write)
        .expect("shutdown write half");
    answers.join().expect("answer reader")
}

/// Reads answer lines until EOF.
pub fn read_answers(stream: TcpStream) -> Answers {
    let mut answers = Answers::default();
    for line in BufReader::new(stream).lines() {
        let line = line.expect("read answer line");
        let v = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("answer line is not JSON ({e}): {line}"));
        answers.lines.push(v);
    }
    answers
}

/// NDJSON: one compact JSON message per line.
pub fn ndjson(messages: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in messages {
        serde_json::to_writer(&mut out, m).expect("json");
        out.push(b'\n');
    }
    out
}

/// Sends messages as NDJSON on one connection.
pub fn send_messages(addr: SocketAddr, messages: &[Value]) -> Answers {
    send_tcp(addr, &ndjson(messages))
}

/// Sends the binary magic and then `frames` (already length-prefixed) on one connection.
pub fn send_binary(addr: SocketAddr, frames: &[Vec<u8>]) -> Answers {
    let mut bytes = shopstream::ingest::binary::MAGIC.to_vec();
    for f in frames {
        bytes.extend_from_slice(f);
    }
    send_tcp(addr, &bytes)
}

/// A message turned into the engine's event model (for binary frames).
pub fn event(message: &Value) -> Event {
    let bytes = serde_json::to_vec(message).expect("json");
    parse_message(&bytes, &ParseContext::new("USD"), None)
        .unwrap_or_else(|e| panic!("{message} does not parse: {e}"))
}

// --- HTTP ----------------------------------------------------------------------

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(IO_TIMEOUT))
        .build()
        .into()
}

/// GET returning (status, JSON body); panics if the body is not JSON.
pub fn get_json(addr: SocketAddr, path: &str) -> (u16, Value) {
    let (status, text) = get_text(addr, path);
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("GET {path}: {status} body is not JSON ({e}): {text}"));
    (status, v)
}

/// GET returning (status, body text).
pub fn get_text(addr: SocketAddr, path: &str) -> (u16, String) {
    let url = format!("http://{addr}{path}");
    let mut resp = agent()
        .get(&url)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .read_to_string()
        .unwrap_or_else(|e| panic!("GET {url}: reading the body: {e}"));
    (status, text)
}

/// POST `body` as JSON, returning (status, JSON body).
pub fn post(addr: SocketAddr, path: &str, body: &[u8]) -> (u16, Value) {
    let url = format!("http://{addr}{path}");
    let mut resp = agent()
        .post(&url)
        .header("content-type", "application/json")
        .send(body)
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .read_to_string()
        .unwrap_or_else(|e| panic!("POST {url}: reading the body: {e}"));
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("POST {path}: {status} body is not JSON ({e}): {text}"));
    (status, v)
}

/// `method` on `path` with an optional JSON body, returning (status, JSON body).
pub fn request(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let url = format!("http://{addr}{path}");
    let agent = agent();
    let result = match (method, body) {
        ("GET", _) => agent.get(&url).call(),
        ("DELETE", _) => agent.delete(&url).call(),
        ("POST", Some(b)) => agent
            .post(&url)
            .header("content-type", "application/json")
            .send(b.to_string().as_bytes()),
        ("PUT", Some(b)) => agent
            .put(&url)
            .header("content-type", "application/json")
            .send(b.to_string().as_bytes()),
        _ => panic!("request: {method} with body {body:?} is not supported here"),
    };
    let mut resp = result.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .read_to_string()
        .unwrap_or_else(|e| panic!("{method} {url}: reading the body: {e}"));
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{method} {path}: {status} body is not JSON ({e}): {text}"));
    (status, v)
}

/// One Server-Sent Event: its id, its event name and its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sse {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// A Server-Sent Events subscription read on a thread; events arrive on `events`.
pub struct SseClient {
    pub events: mpsc::Receiver<Sse>,
    pub status: u16,
    _reader: JoinHandle<()>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl SseClient {
    /// GETs `path` with `Last-Event-ID: last_id` when given.
    pub fn connect(addr: SocketAddr, path: &str, last_id: Option<&str>) -> SseClient {
        let url = format!("http://{addr}{path}");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(IO_TIMEOUT))
            .build()
            .into();
        let mut req = agent.get(&url);
        if let Some(id) = last_id {
            req = req.header("last-event-id", id);
        }
        let resp = req.call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = resp.status().as_u16();
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let reader = std::thread::spawn(move || {
            let reader = BufReader::new(resp.into_body().into_reader());
            let mut current = Sse {
                id: None,
                event: None,
                data: String::new(),
            };
            for line in reader.lines() {
                if stopped.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                let Ok(line) = line else { return };
                if line.is_empty() {
                    // An id-only event fires no handler in a browser, but moves
                    // its Last-Event-ID: hand it over too.
                    if !current.data.is_empty() || current.event.is_some() || current.id.is_some() {
                        let done = std::mem::replace(
                            &mut current,
                            Sse {
                                id: None,
                                event: None,
                                data: String::new(),
                            },
                        );
                        if tx.send(done).is_err() {
                            return;
                        }
                    }
                    continue;
                }
                if let Some(v) = line.strip_prefix("id:") {
                    current.id = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("event:") {
                    current.event = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("data:") {
                    current.data.push_str(v.trim_start());
                }
            }
        });
        SseClient {
            events: rx,
            status,
            _reader: reader,
            stop,
        }
    }

    /// The next event, waiting at most `timeout`.
    pub fn next(&self, timeout: Duration) -> Option<Sse> {
        self.events.recv_timeout(timeout).ok()
    }

    /// The next `segment` event (skipping `ready`), waiting at most `timeout`.
    pub fn next_change(&self, timeout: Duration) -> Option<Sse> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let e = self.events.recv_timeout(left).ok()?;
            if e.event.as_deref() == Some("segment") {
                return Some(e);
            }
        }
    }
}

impl Drop for SseClient {
    fn drop(&mut self) {
        // The reader thread ends at the next line or when the server closes; it
        // holds nothing the test needs.
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Sends raw bytes as one HTTP/1.1 exchange (`Connection: close` expected) and
/// returns the status and the body of a non-chunked answer.
pub fn raw_http(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to http");
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    // The server may answer (and close) before reading everything: ignore write errors.
    let _ = stream.write_all(request);
    let (status, text) = http_answer(stream);
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned());
    (status, body)
}

/// Reads an HTTP answer until the server closes: its status and its whole text.
pub fn http_answer(mut stream: TcpStream) -> (u16, String) {
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status line in {text:?}"));
    (status, text)
}

/// `POST /v1/batch` over a raw socket: status and the whole answer, headers included.
pub fn post_batch_raw(addr: SocketAddr, batch: &[Value]) -> (u16, String) {
    let body = serde_json::to_vec(&json!({ "batch": batch })).expect("json");
    let mut s = TcpStream::connect(addr).expect("connect to http");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let head = format!(
        "POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).expect("send head");
    s.write_all(&body).expect("send body");
    http_answer(s)
}

/// `n` `Product Viewed` messages of `user`, one a millisecond from [`T0`], with
/// messageIds `{user}-{i}`.
pub fn numbered(user: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let props = json!({"product_id": format!("p{}", i % 50), "price": 1.25});
            with_id(
                track(user, "Product Viewed", T0 + i as i64, props),
                &format!("{user}-{i}"),
            )
        })
        .collect()
}

/// A valid `Product Viewed` message of `user`.
pub fn valid(user: &str) -> Value {
    track(
        user,
        "Product Viewed",
        T0,
        json!({"product_id": "p", "price": 1}),
    )
}

/// `POST /v1/segments` of a segment `name` with `rule`; must be 201. The answer.
pub fn define_segment(addr: SocketAddr, name: &str, rule: &str) -> Value {
    let segment = json!({"name": name, "rule": rule});
    let (status, body) = request(addr, "POST", "/v1/segments", Some(&segment));
    assert_eq!(status, 201, "{body}");
    body
}

/// `POST /v1/batch` of `messages`.
pub fn post_batch(addr: SocketAddr, messages: &[Value]) -> (u16, Value) {
    let body = serde_json::to_vec(&json!({ "batch": messages })).expect("json");
    post(addr, "/v1/batch", &body)
}

/// `GET /v1/users/{user}/profile?min_seq={min_seq}`: (status, body).
pub fn get_profile(addr: SocketAddr, user: &str, min_seq: u64) -> (u16, Value) {
    get_json(addr, &format!("/v1/users/{user}/profile?min_seq={min_seq}"))
}

/// The whole profile answer (`user_id`, `as_of`, `clock`, `profile`); must be 200.
pub fn profile(addr: SocketAddr, user: &str, min_seq: u64) -> Value {
    let (status, body) = get_profile(addr, user, min_seq);
    assert_eq!(status, 200, "profile of {user:?}: {body}");
    body
}

/// Asserts that a money field equals `expected` major units exactly (compared as
/// the `f64` JSON numbers they are).
#[track_caller]
pub fn assert_money(v: &Value, expected: f64) {
    let got = v
        .as_f64()
        .unwrap_or_else(|| panic!("money is not a number: {v}"));
    assert!(got == expected, "money: got {got}, expected {expected}");
}

// --- messages ----------------------------------------------------------------

/// A Segment `track` message.
pub fn track(user: &str, event: &str, ts: i64, properties: Value) -> Value {
    json!({"type": "track", "userId": user, "event": event, "timestamp": ts, "properties": properties})
}

/// A Segment `identify` message.
pub fn identify(user: &str, ts: i64, traits: Value) -> Value {
    json!({"type": "identify", "userId": user, "timestamp": ts, "traits": traits})
}

/// `message` with `messageId` set.
pub fn with_id(mut message: Value, id: &str) -> Value {
    message["messageId"] = json!(id);
    message
}

/// A deterministic shop workload of `n` messages over `users` users
/// (`{prefix}-u{k}`), one every `step_ms` from [`T0`] (every 13th one is late by
/// 10 days), with messageIds `{prefix}-{i}`. Mixes views, cart adds and removes,
/// orders (with lines, categories and brands), refunds with and without amounts,
/// cancellations, identifies and custom events.
pub fn workload(n: usize, users: usize, step_ms: i64, prefix: &str) -> Vec<Value> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |m: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % m
    };
    let mut last_order: std::collections::HashMap<usize, String> = Default::default();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let u = next(users as u64) as usize;
        let user = format!("{prefix}-u{u}");
        let mut ts = T0 + i as i64 * step_ms;
        if i % 13 == 12 {
            ts -= 10 * DAY;
        }
        let item = next(20);
        let product = json!({"product_id": format!("p{item}"), "category": format!("c{}", item % 5),
            "brand": format!("b{}", item % 3), "price": (item * 137 % 5000) as f64 / 100.0,
            "quantity": 1 + next(3)});
        let msg = match next(20) {
            0..=6 => track(&user, "Product Viewed", ts, product),
            7..=9 => track(&user, "Product Added", ts, product),
            10 => track(&user, "Product Removed", ts, product),
            11..=13 => {
                let order = format!("{prefix}-o{i}");
                last_order.insert(u, order.clone());
                track(
                    &user,
                    "Order Completed",
                    ts,
                    json!({"order_id": order, "products": [product]}),
                )
            }
            14 => match last_order.get(&u) {
                Some(o) => track(&user, "Order Refunded", ts, json!({"order_id": o})),
                None => track(&user, "Order Refunded", ts, json!({"revenue": 1.5})),
            },
            15 => match last_order.get(&u) {
                Some(o) => track(
                    &user,
                    "Order Refunded",
                    ts,
                    json!({"order_id": o, "revenue": 0.25}),
                ),
                None => track(&user, "Coupon Applied", ts, json!({})),
            },
            16 => match last_order.get(&u) {
                Some(o) => track(&user, "Order Cancelled", ts, json!({"order_id": o})),
                None => track(&user, "Coupon Applied", ts, json!({})),
            },
            17 => {
                let plan = ["free", "pro", "team"][next(3) as usize];
                identify(&user, ts, json!({"plan": plan, "n": i}))
            }
            18 => track(&user, "Coupon Applied", ts, json!({"coupon": "X"})),
            _ => track(
                &user,
                "view_item",
                ts,
                json!({"item_id": format!("p{item}"),
                "item_category": format!("c{}", item % 5), "price": 3}),
            ),
        };
        out.push(with_id(msg, &format!("{prefix}-{i}")));
    }
    out
}

/// The distinct users of a workload, in first-seen order.
pub fn users_of(messages: &[Value]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for m in messages {
        let u = m["userId"].as_str().expect("userId").to_owned();
        if seen.insert(u.clone()) {
            out.push(u);
        }
    }
    out
}

/// Every user's profile answer (status and body) at `min_seq`, keyed by user.
pub fn all_profiles(addr: SocketAddr, users: &[String], min_seq: u64) -> Vec<(String, u16, Value)> {
    users
        .iter()
        .map(|u| {
            let (status, body) = get_profile(addr, u, min_seq);
            (u.clone(), status, body)
        })
        .collect()
}
