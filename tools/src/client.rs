//! Client side of the CLI: `send` (stream a file over TCP ingest and wait for the
//! final acknowledgement), `query` (read a profile over HTTP), and the demo workload.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use shopstream::event::{parse_message, ParseContext};
use shopstream::ingest::binary::{encode_auth_frame, encode_frame, MAGIC};

/// Errors of the client commands.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("the server closed the connection without a final acknowledgement")]
    NoAck,
    #[error("the server reported a fatal error: {0}")]
    Fatal(String),
    #[error("http: {0}")]
    Http(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClientError {
    let what = what.into();
    move |source| ClientError::Io { what, source }
}

/// The last acknowledgement of a connection, and what `send` measured.
#[derive(Clone, Debug, Default)]
pub struct SendReport {
    pub ack_seq: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub duplicates: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// The first few error lines, as the server wrote them.
    pub errors: Vec<String>,
}

/// Streams `path` to the TCP ingest at `addr`: an NDJSON file as is, a file that
/// starts with the binary magic as is, or (with `binary`) NDJSON converted to
/// bincode frames on the client, validated with that context (its reporting
/// currency and rates must be the server's). Waits for the final acknowledgement.
/// With `token`, the connection opens with it (an auth line, or an auth frame
/// after the magic).
pub fn send(
    path: &Path,
    addr: SocketAddr,
    binary: Option<&ParseContext>,
    token: Option<&str>,
    progress: bool,
) -> Result<SendReport, ClientError> {
    let file = std::fs::File::open(path).map_err(io(format!("open {}", path.display())))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let stream = TcpStream::connect(addr).map_err(io(format!("connect {addr}")))?;
    stream.set_nodelay(true).ok();
    let reader = stream.try_clone().map_err(io("clone socket"))?;
    let started = Instant::now();
    let acks = std::thread::spawn(move || read_acks(reader));

    let bar = if progress {
        let b = ProgressBar::new(size);
        b.set_style(
            ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("template"),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let mut out = std::io::BufWriter::with_capacity(1 << 20, &stream);
    let mut input = BufReader::with_capacity(1 << 20, file);
    let starts_binary = input
        .fill_buf()
        .map(|b| b.starts_with(MAGIC))
        .unwrap_or(false);
    if let Some(ctx) = binary.filter(|_| !starts_binary) {
        out.write_all(MAGIC).map_err(io("send"))?;
        if let Some(token) = token {
            out.write_all(&encode_auth_frame(token))
                .map_err(io("send"))?;
        }
        let mut batch = Vec::with_capacity(1024);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = input
                .read_until(b'\n', &mut line)
                .map_err(io("read input"))?;
            if n == 0 {
                break;
            }
            bar.inc(n as u64);
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            // Lines the client cannot parse are sent as-is by the text protocol
            // only; in binary mode they are reported here and skipped.
            match parse_message(text, ctx, None) {
                Ok(ev) => batch.push(ev),
                Err(e) => eprintln!("skipped a line: {e}"),
            }
            if batch.len() == 1024 {
                out.write_all(&encode_frame(&batch)).map_err(io("send"))?;
                batch.clear();
            }
        }
        if !batch.is_empty() {
            out.write_all(&encode_frame(&batch)).map_err(io("send"))?;
        }
    } else {
        if let Some(token) = token {
            out.write_all(&auth_preamble(token, starts_binary))
                .map_err(io("send"))?;
            if starts_binary {
                // The file's magic went out in front of the auth frame.
                input.consume(MAGIC.len());
            }
        }
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = input.read(&mut buf).map_err(io("read input"))?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n]).map_err(io("send"))?;
            bar.inc(n as u64);
        }
    }
    out.flush().map_err(io("send"))?;
    drop(out);
    stream.shutdown(Shutdown::Write).map_err(io("shutdown"))?;
    bar.finish_and_clear();
    let mut report = acks.join().map_err(|_| ClientError::NoAck)??;
    report.bytes = size;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// What a connection opens with to present `token`: the auth line, or (binary)
/// the magic and the auth frame.
pub fn auth_preamble(token: &str, binary: bool) -> Vec<u8> {
    if binary {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&encode_auth_frame(token));
        out
    } else {
        let mut out = shopstream::auth::first_line(token);
        out.push(b'\n');
        out
    }
}

/// Reads answer lines until the server closes; keeps the last ack.
fn read_acks(stream: TcpStream) -> Result<SendReport, ClientError> {
    let mut report = SendReport::default();
    let mut seen_ack = false;
    for line in BufReader::new(stream).lines() {
        let line = line.map_err(io("read answers"))?;
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if let Some(seq) = v.get("ack").and_then(Value::as_u64) {
            seen_ack = true;
            report.ack_seq = seq;
            report.accepted = v["accepted"].as_u64().unwrap_or(0);
            report.rejected = v["rejected"].as_u64().unwrap_or(0);
            report.duplicates = v["duplicates"].as_u64().unwrap_or(0);
        } else if v.get("fatal").is_some() {
            return Err(ClientError::Fatal(v["error"].to_string()));
        } else if report.errors.len() < 10 {
            report.errors.push(line);
        }
    }
    if seen_ack {
        Ok(report)
    } else {
        Err(ClientError::NoAck)
    }
}

/// GETs `path` from the HTTP API; answers (status, JSON body).
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, Value), ClientError> {
    http_get_with(addr, path, None)
}

/// [`http_get`], presenting `token` (`Authorization: Bearer`) when given.
pub fn http_get_with(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> Result<(u16, Value), ClientError> {
    http_call(addr, "GET", path, token, Duration::from_secs(60))
}

/// POSTs an empty body to `path` of the HTTP API (a snapshot may take minutes),
/// presenting `token` when given; answers (status, JSON body).
pub fn http_post(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> Result<(u16, Value), ClientError> {
    http_call(addr, "POST", path, token, Duration::from_secs(600))
}

fn http_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<(u16, Value), ClientError> {
    let url = format!("http://{addr}{path}");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into();
    let failed = |e: ureq::Error| ClientError::Http(format!("{method} {url}: {e}"));
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut resp = match method {
        "POST" => {
            let mut request = agent.post(&url);
            if let Some(b) = &bearer {
                request = request.header("authorization", b);
            }
            request.send_empty()
        }
        _ => {
            let mut request = agent.get(&url);
            if let Some(b) = &bearer {
                request = request.header("authorization", b);
            }
            request.call()
        }
    }
    .map_err(failed)?;
    let status = resp.status().as_u16();
    let body: Value = resp.body_mut().read_json().map_err(failed)?;
    Ok((status, body))
}

/// Waits until the views include `seq`, by a read with `min_seq`.
pub fn wait_visible(
    addr: SocketAddr,
    seq: u64,
    token: Option<&str>,
) -> Result<Duration, ClientError> {
    let started = Instant::now();
    loop {
        let path = format!("/v1/users/_/profile?min_seq={seq}");
        let (status, body) = http_get_with(addr, &path, token)?;
        match status {
            200 | 404 => return Ok(started.elapsed()),
            504 => continue,
            _ => return Err(ClientError::Http(format!("{status}: {body}"))),
        }
    }
}

/// A small deterministic shop workload for the demo: sessions that browse a
/// category, add to cart, sometimes remove, buy, refund; identify calls.
pub struct DemoWorkload {
    state: u64,
    n: u64,
    order: u64,
    pub users: u64,
    pub items: u64,
}

impl DemoWorkload {
    pub fn new(seed: u64) -> Self {
        DemoWorkload {
            state: seed.max(1),
            n: 0,
            order: 0,
            users: 2_000,
            items: 500,
        }
    }

    fn next(&mut self) -> f64 {
        // xorshift64*: fast, deterministic, good enough for a workload.
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        (self.state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// One session's messages as NDJSON lines, stamped at `now_ms`.
    pub fn session(&mut self, now_ms: i64) -> Vec<String> {
        let user = (self.users as f64 * self.next().powi(2)) as u64;
        let cat = (20.0 * self.next().powf(1.5)) as u64;
        let mut out = Vec::new();
        let mut msg = |me: &mut Self, event: &str, props: Value| {
            me.n += 1;
            let v = serde_json::json!({"type": "track", "event": event, "userId": format!("u{user}"),
                "messageId": format!("demo-{}-{}", me.state, me.n), "timestamp": now_ms, "properties": props});
            out.push(v.to_string());
        };
        let mut cart = Vec::new();
        let views = 1 + (self.next() * 4.0) as u64;
        for _ in 0..views {
            let item = ((self.items / 20) as f64 * self.next().powi(3)) as u64 * 20 + cat;
            let price = (500 + (item % 97) * 150) as f64 / 100.0;
            let props = serde_json::json!({"product_id": format!("i{item}"), "category": format!("c{cat}"),
                "brand": format!("b{}", item % 7), "price": price});
            msg(self, "Product Viewed", props.clone());
            if self.next() < 0.25 {
                let mut p = props.clone();
                p["quantity"] = 1.into();
                msg(self, "Product Added", p);
                cart.push(props);
            }
        }
        if !cart.is_empty() && self.next() < 0.15 {
            let p = cart.pop().expect("non-empty");
            msg(self, "Product Removed", p);
        }
        if !cart.is_empty() && self.next() < 0.4 {
            self.order += 1;
            let total: f64 = cart
                .iter()
                .map(|p| p["price"].as_f64().unwrap_or(0.0))
                .sum();
            let order = format!("o{}-{}", self.state % 1000, self.order);
            let products: Vec<Value> = cart.clone();
            msg(
                self,
                "Order Completed",
                serde_json::json!({"order_id": order, "revenue": (total * 100.0).round() / 100.0, "products": products}),
            );
            if self.next() < 0.05 {
                msg(
                    self,
                    "Order Refunded",
                    serde_json::json!({"order_id": order}),
                );
            }
        }
        if self.next() < 0.02 {
            self.n += 1;
            let plan = if self.next() < 0.3 { "pro" } else { "free" };
            out.push(
                serde_json::json!({"type": "identify", "userId": format!("u{user}"),
                "messageId": format!("demo-{}-{}", self.state, self.n), "timestamp": now_ms,
                "traits": {"plan": plan, "email": format!("u{user}@example.com")}})
                .to_string(),
            );
        }
        out
    }
}
