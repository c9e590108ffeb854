//! Access control and TLS, over real sockets: tokens and scopes on HTTP (Bearer,
//! and Basic as the Segment SDKs send their write key) and on TCP ingest (the
//! auth line, the auth frame), the refusal to listen beyond loopback without
//! tokens, and TLS on both listeners with a certificate made here (rcgen).
//!
//! A refused connection must log nothing: checked with `logged_seq` of `/healthz`.

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use base64::Engine as _;
use serde_json::{json, Value};
use shopstream::auth::{digest_hex, Auth, RawToken};
use shopstream::config::Config;
use shopstream::ingest::binary::{encode_auth_frame, encode_frame, MAGIC};
use util::*;

const SHOP: &str = "shop-write-key";
const READER: &str = "dashboard-read-token";
const OPS: &str = "ops-admin-token";

/// Three tokens: `shop` (ingest), `reader` (query), `ops` (admin).
fn tokens(cfg: &mut Config) {
    let token = |name: &str, secret: &str, scope: &str| RawToken {
        name: name.into(),
        sha256: digest_hex(secret.as_bytes()),
        scopes: vec![scope.into()],
    };
    cfg.auth = Auth::new(
        &[
            token("shop", SHOP, "ingest"),
            token("reader", READER, "query"),
            token("ops", OPS, "admin"),
        ],
        true,
        false,
    )
    .expect("valid tokens");
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// How the Segment and RudderStack SDKs send a write key: Basic `KEY:`.
fn basic(token: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{token}:"));
    format!("Basic {encoded}")
}

/// One HTTP request with an optional `Authorization`: (status, JSON body,
/// `WWW-Authenticate`).
fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value, Option<String>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(IO_TIMEOUT))
        .build()
        .into();
    let url = format!("http://{addr}{path}");
    // No credentials: an empty header name is not sent, so send a harmless one.
    let (name, value) = match authorization {
        Some(a) => ("authorization", a),
        None => ("x-no-authorization", "1"),
    };
    let sent = match (method, body) {
        ("GET", _) => agent.get(&url).header(name, value).call(),
        ("POST", Some(b)) => agent
            .post(&url)
            .header(name, value)
            .header("content-type", "application/json")
            .send(b.to_string().as_bytes()),
        _ => panic!("call: {method} with {body:?} is not used here"),
    };
    let mut resp = sent.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().expect("ascii").to_owned());
    let text = resp.body_mut().read_to_string().expect("body");
    let v = if text.is_empty() || path == "/metrics" && status == 200 {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
    };
    (status, v, challenge)
}

fn logged_seq(http: SocketAddr) -> u64 {
    let (status, health) = get_json(http, "/healthz");
    assert_eq!(status, 200, "{health}");
    health["logged_seq"].as_u64().expect("logged_seq")
}

#[test]
fn http_routes_need_a_token_with_their_scope() {
    let server = TestServer::start_with(tokens);
    let http = server.http;
    let batch = json!({"batch": [valid("u1")]});
    let post = |auth: Option<&str>| call(http, "POST", "/v1/batch", auth, Some(&batch));

    let (status, body, challenge) = post(None);
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].as_str().unwrap().contains("Bearer"), "{body}");
    assert_eq!(challenge.as_deref(), Some(r#"Bearer realm="shopstream""#));
    let (status, body, _) = post(Some(&bearer("not-a-token")));
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unknown token"))
    );
    let (status, body, _) = post(Some("Digest abc"));
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].as_str().unwrap().contains("scheme"), "{body}");
    let (status, body, challenge) = post(Some(&bearer(READER)));
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body["error"],
        r#"token "reader" does not have the ingest scope"#
    );
    assert_eq!(challenge, None);
    assert_eq!(logged_seq(http), 0, "a refused request logged events");

    let (status, body, _) = post(Some(&bearer(SHOP)));
    assert_eq!(status, 200, "{body}");
    let (status, body, _) = post(Some(&basic(SHOP)));
    assert_eq!(status, 200, "Basic with the token as user name: {body}");
    // An admin token may ingest too.
    let (status, body, _) = post(Some(&bearer(OPS)));
    assert_eq!(status, 200, "{body}");
    let seq = body["seq"].as_u64().expect("seq");

    let profile = format!("/v1/users/u1/profile?min_seq={seq}");
    assert_eq!(call(http, "GET", &profile, None, None).0, 401);
    assert_eq!(
        call(http, "GET", &profile, Some(&bearer(SHOP)), None).0,
        403
    );
    for token in [READER, OPS] {
        let (status, body, _) = call(http, "GET", &profile, Some(&bearer(token)), None);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["profile"]["events_total"], 3, "{body}");
    }

    let define = json!({"name": "viewers", "rule": "events_total >= 1"});
    let (status, body, _) = call(
        http,
        "POST",
        "/v1/segments",
        Some(&bearer(READER)),
        Some(&define),
    );
    assert_eq!(status, 403, "definitions need admin: {body}");
    assert!(body["error"].as_str().unwrap().contains("admin"), "{body}");
    let (status, body, _) = call(
        http,
        "POST",
        "/v1/segments",
        Some(&bearer(OPS)),
        Some(&define),
    );
    assert_eq!(status, 201, "{body}");
    let (status, body, _) = call(
        http,
        "GET",
        "/v1/segments/viewers",
        Some(&bearer(READER)),
        None,
    );
    assert_eq!((status, &body["size"]), (200, &json!(1)), "{body}");

    // /healthz is public, /metrics needs query (auth.public_health, public_metrics).
    assert_eq!(call(http, "GET", "/healthz", None, None).0, 200);
    assert_eq!(call(http, "GET", "/metrics", None, None).0, 401);
    assert_eq!(
        call(http, "GET", "/metrics", Some(&bearer(SHOP)), None).0,
        403
    );
    assert_eq!(
        call(http, "GET", "/metrics", Some(&bearer(READER)), None).0,
        200
    );
    server.shutdown();
}

#[test]
fn tcp_ingest_opens_with_an_auth_line_or_frame() {
    let server = TestServer::start_with(tokens);
    let (tcp, http) = (server.tcp, server.http);
    let auth_line = |token: &str| format!("{}\n", json!({ "auth": token })).into_bytes();
    let events = ndjson(&[valid("u1"), json!({"type": "track"}), valid("u2")]);

    // Refused: no auth line, an unknown token, a token without ingest. Each gets
    // one fatal line, and nothing it sent is logged.
    let refusals = [
        (events.clone(), "first line"),
        (
            [auth_line("wrong"), events.clone()].concat(),
            "unknown token",
        ),
        ([auth_line(READER), events.clone()].concat(), "ingest scope"),
        (Vec::new(), "closed before its auth line"),
    ];
    for (bytes, why) in refusals {
        let answers = send_tcp(tcp, &bytes);
        assert_eq!(answers.lines.len(), 1, "{why}: {:?}", answers.lines);
        let fatal = &answers.lines[0];
        assert_eq!(fatal["fatal"], true, "{fatal}");
        assert!(fatal["error"].as_str().unwrap().contains(why), "{fatal}");
    }
    assert_eq!(logged_seq(http), 0, "a refused connection logged events");

    // Accepted: the auth line is not answered and not counted, so line numbers
    // are those of the events, as without access control.
    let answers = send_tcp(tcp, &[auth_line(SHOP), events.clone()].concat());
    assert_eq!(
        (answers.accepted(), answers.rejected()),
        (2, 1),
        "{:?}",
        answers.lines
    );
    assert!(answers.error_for_line(2).is_some(), "{:?}", answers.lines);
    let answers = send_tcp(tcp, &[auth_line(OPS), events].concat());
    assert_eq!(answers.accepted(), 2, "{:?}", answers.lines);

    // Binary framing: the first frame after the magic carries the token.
    let frame = encode_frame(&[event(&valid("u3")), event(&valid("u4"))]);
    let binary = |auth: Option<&str>| {
        let mut bytes = MAGIC.to_vec();
        if let Some(token) = auth {
            bytes.extend(encode_auth_frame(token));
        }
        bytes.extend(&frame);
        send_tcp(tcp, &bytes)
    };
    let before = logged_seq(http);
    for auth in [None, Some("wrong"), Some(READER)] {
        let answers = binary(auth);
        assert_eq!(answers.lines.len(), 1, "{auth:?}: {:?}", answers.lines);
        assert_eq!(answers.lines[0]["fatal"], true, "{:?}", answers.lines);
    }
    assert_eq!(
        logged_seq(http),
        before,
        "a refused binary connection logged events"
    );
    let answers = binary(Some(SHOP));
    assert_eq!(
        (answers.accepted(), answers.rejected()),
        (2, 0),
        "{:?}",
        answers.lines
    );
    assert_eq!(logged_seq(http), before + 2);
    server.shutdown();
}

#[test]
fn listening_beyond_loopback_needs_tokens_or_insecure() {
    let any: SocketAddr = "0.0.0.0:0".parse().expect("addr");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = config(dir.path());
    cfg.http_addr = any;
    let err = rt
        .block_on(shopstream::server::Server::start(cfg.clone(), |_, _| {}))
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("http.addr") && err.contains("--insecure") && err.contains("auth.tokens"),
        "{err}"
    );
    for allow in [
        |c: &mut Config| c.insecure = true,
        tokens as fn(&mut Config),
    ] {
        let server = TestServer::start_with(|c| {
            c.tcp_addr = any;
            c.http_addr = any;
            allow(c);
        });
        let local = |a: SocketAddr| SocketAddr::from(([127, 0, 0, 1], a.port()));
        assert_eq!(logged_seq(local(server.http)), 0);
        server.shutdown();
    }
}

/// The `shopstream` binary with `args`, its environment cleared of SHOPSTREAM_*.
fn shopstream(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shopstream"));
    cmd.args(args).env("NO_COLOR", "1").stdin(Stdio::null());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SHOPSTREAM_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

#[test]
fn the_cli_refuses_an_open_port_without_insecure_and_sends_with_a_token() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf-8 path");
    let serve = ["serve", "--data-dir", data, "--workers", "1"];
    let open = ["--ingest-addr", "0.0.0.0:0", "--http-addr", "127.0.0.1:0"];
    let out = shopstream(&[&serve[..], &open[..]].concat())
        .output()
        .expect("run shopstream serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "served an open port without tokens");
    assert!(
        stderr.contains("ingest.tcp_addr") && stderr.contains("--insecure"),
        "{stderr}"
    );

    // With --insecure it starts (and prints its ready line).
    let mut child = shopstream(&[&serve[..], &open[..], &["--insecure"]].concat())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn shopstream serve --insecure");
    let mut first = String::new();
    let mut stdout = child.stdout.take().expect("stdout");
    let mut byte = [0u8; 1];
    while stdout.read(&mut byte).expect("read stdout") == 1 && byte[0] != b'\n' {
        first.push(byte[0] as char);
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(first.starts_with("shopstream listening"), "{first:?}");

    // `auth hash` prints what the config holds; `send --token` presents it, as
    // NDJSON and as binary frames, on TCP and (`--wait-visible`) on HTTP: a token
    // with both scopes.
    let mut hash = shopstream(&["auth", "hash"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn auth hash");
    writeln!(hash.stdin.take().expect("stdin"), "{SHOP}").expect("write token");
    let hashed = hash.wait_with_output().expect("auth hash");
    assert_eq!(
        String::from_utf8_lossy(&hashed.stdout).trim(),
        digest_hex(SHOP.as_bytes())
    );

    let server = TestServer::start_with(tokens);
    let file = dir.path().join("events.ndjson");
    std::fs::write(&file, ndjson(&[valid("u1"), valid("u2")])).expect("write events");
    let (file, tcp, http) = (
        file.to_str().unwrap(),
        server.tcp.to_string(),
        server.http.to_string(),
    );
    for binary in [false, true] {
        let mut args = vec!["send", file, "--addr", &tcp, "--wait-visible", &http];
        if binary {
            args.push("--binary");
        }
        let refused = shopstream(&args).output().expect("send without a token");
        assert!(!refused.status.success());
        let sent = shopstream(&args)
            .env("SHOPSTREAM_TOKEN", OPS)
            .output()
            .expect("send with a token");
        let stdout = String::from_utf8_lossy(&sent.stdout);
        assert!(
            sent.status.success(),
            "{stdout} {}",
            String::from_utf8_lossy(&sent.stderr)
        );
        assert!(stdout.contains("accepted 2 rejected 0"), "{stdout}");
    }
    server.shutdown();
}

#[test]
fn the_load_driver_presents_its_token_on_both_sides() {
    // One token for the driver's both sides.
    let server = TestServer::start_with(|c| {
        c.auth = Auth::new(
            &[RawToken {
                name: "bench".into(),
                sha256: digest_hex(OPS.as_bytes()),
                scopes: vec!["ingest".into(), "query".into()],
            }],
            true,
            false,
        )
        .expect("token");
    });
    let mut opts = shopstream_tools::load::LoadOptions::new(server.tcp, server.http);
    opts.rate = 2_000;
    opts.qps = 50;
    opts.duration = std::time::Duration::from_millis(500);
    opts.token = Some(OPS.into());
    let report = shopstream_tools::load::run(&opts).expect("load run");
    assert_eq!(report.failure(), None, "{report}");
    assert!(report.ingest.acked > 0, "{report}");
    assert_eq!(
        (report.queries.errors, report.freshness.errors),
        (0, 0),
        "{report}"
    );
    assert!(report.queries.done > 0, "{report}");
    server.shutdown();
}

// --- TLS ------------------------------------------------------------------------

/// A self-signed certificate for `localhost`, written as PEM files in `dir`.
fn certificate(
    dir: &Path,
) -> (
    shopstream::tls::TlsFiles,
    rustls::pki_types::CertificateDer<'static>,
) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("rcgen");
    let files = shopstream::tls::TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&files.cert, made.cert.pem()).expect("write cert");
    std::fs::write(&files.key, made.signing_key.serialize_pem()).expect("write key");
    (files, made.cert.der().clone())
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS connection to `addr` that trusts only `cert`, for `localhost`.
fn tls_connect(addr: SocketAddr, cert: &rustls::pki_types::CertificateDer<'static>) -> Tls {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let socket = TcpStream::connect(addr).expect("connect");
    socket.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    rustls::StreamOwned::new(conn, socket)
}

/// Reads until the peer closes; a close without close_notify ends it too.
fn read_all(stream: &mut impl Read) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn tls_get(
    addr: SocketAddr,
    cert: &rustls::pki_types::CertificateDer<'static>,
    path: &str,
) -> (u16, Value) {
    let mut tls = tls_connect(addr, cert);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    tls.flush().expect("flush");
    let text = read_all(&mut tls);
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok());
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: {e}: {text}"));
    (
        status.unwrap_or_else(|| panic!("no status in {text:?}")),
        body,
    )
}

#[test]
fn tls_serves_both_listeners_and_plain_text_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (files, cert) = certificate(dir.path());
    let server = TestServer::start_with(|c| c.tls = Some(files.clone()));
    let (tcp, http) = (server.tcp, server.http);

    let (status, health) = tls_get(http, &cert, "/healthz");
    assert_eq!(
        (status, &health["logged_seq"]),
        (200, &json!(0)),
        "{health}"
    );

    // Plain text to either port: no answer of ours, nothing logged.
    let mut plain = TcpStream::connect(http).expect("connect");
    plain.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let _ = plain.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(
        !read_all(&mut plain).starts_with("HTTP/"),
        "plain HTTP was answered"
    );
    let mut plain = TcpStream::connect(tcp).expect("connect");
    plain.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let _ = plain.write_all(&ndjson(&[valid("u0")]));
    let _ = plain.shutdown(std::net::Shutdown::Write);
    assert!(
        !read_all(&mut plain).contains("\"ack\""),
        "plain ingest was answered"
    );

    // NDJSON over TLS: acknowledged, and visible over HTTPS.
    let mut tls = tls_connect(tcp, &cert);
    tls.write_all(&ndjson(&[valid("u1"), valid("u2")]))
        .expect("send");
    tls.conn.send_close_notify();
    tls.flush().expect("flush");
    let answers: Vec<Value> = read_all(&mut tls)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let last = answers.last().expect("an ack");
    assert_eq!(
        (&last["accepted"], &last["ack"]),
        (&json!(2), &json!(2)),
        "{answers:?}"
    );
    let (status, body) = tls_get(http, &cert, "/v1/users/u2/profile?min_seq=2");
    assert_eq!(
        (status, &body["profile"]["events_total"]),
        (200, &json!(1)),
        "{body}"
    );
    server.shutdown();
}

/// A client that connects and never finishes its handshake is dropped after
/// `tls.handshake_timeout_ms`, and its connection slot is free again.
#[test]
fn a_stalled_tls_handshake_is_dropped_and_frees_its_slot() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (files, cert) = certificate(dir.path());
    let server = TestServer::start_with(|c| {
        c.tls = Some(files.clone());
        c.tls_handshake_timeout = std::time::Duration::from_millis(200);
        c.max_connections = 1;
    });
    let mut silent = TcpStream::connect(server.tcp).expect("connect");
    silent.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    // Ends (EOF or reset) when the server gives up on the handshake.
    let _ = read_all(&mut silent);
    let mut tls = tls_connect(server.tcp, &cert);
    tls.write_all(&ndjson(&[valid("u1")])).expect("send");
    tls.conn.send_close_notify();
    tls.flush().expect("flush");
    assert!(
        read_all(&mut tls).contains(r#""accepted":1"#),
        "the slot was not freed"
    );
    server.shutdown();
}

#[test]
fn an_unreadable_certificate_stops_the_start_naming_its_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = config(dir.path());
    cfg.tls = Some(shopstream::tls::TlsFiles {
        cert: dir.path().join("missing.pem"),
        key: dir.path().join("missing-key.pem"),
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let err = rt
        .block_on(shopstream::server::Server::start(cfg, |_, _| {}))
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("tls.cert_file") && err.contains("missing.pem"),
        "{err}"
    );
}

/// Review finding: every read restarted the idle timer, so a client trickling an
/// auth line a byte at a time held its connection slot (and its address's) for
/// days. The framing and the auth line now have `ingest.auth_timeout_ms` in all.
#[test]
fn a_trickled_auth_line_is_cut_off_at_the_auth_timeout() {
    let s = TestServer::start_with(|c| {
        tokens(c);
        c.auth_timeout = std::time::Duration::from_millis(400);
    });
    let stream = std::net::TcpStream::connect(s.tcp).expect("connect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let reader = stream.try_clone().expect("clone");
    let trickle = std::thread::spawn(move || {
        for b in br#"{"auth": "shop-write-key"#.iter() {
            if (&stream).write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    });
    let answers = read_answers(reader);
    let _ = trickle.join();
    let fatal = answers.errors();
    assert_eq!(fatal.len(), 1, "{:?}", answers.lines);
    assert!(
        fatal[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("ingest.auth_timeout_ms")),
        "{}",
        fatal[0]
    );
    assert_eq!(fatal[0]["fatal"], json!(true));
}

/// Review finding: the digest of the empty token was accepted in the config, and
/// `Basic Og==` (user "" ) or `{"auth": ""}` then matched it.
#[test]
fn the_empty_token_is_refused_in_the_config_and_on_the_wire() {
    let empty = RawToken {
        name: "oops".into(),
        sha256: digest_hex(b""),
        scopes: vec!["admin".into()],
    };
    let refused = Auth::new(&[empty], true, false)
        .map(drop)
        .expect_err("refused");
    assert!(refused.contains("empty token"), "{refused}");
    let s = TestServer::start_with(tokens);
    let (status, _, _) = call(s.http, "GET", "/v1/segments", Some("Basic Og=="), None);
    assert_eq!(status, 401);
}

/// Review finding: a connection refused while the client was still writing was
/// closed with its input unread, so the kernel sent a reset and the client saw
/// "connection reset" instead of the line saying why. The server now reads and
/// discards for a moment after a fatal answer.
#[test]
fn a_client_still_writing_when_refused_reads_the_reason() {
    let s = TestServer::start_with(tokens);
    let stream = std::net::TcpStream::connect(s.tcp).expect("connect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let mut bytes = b"{\"auth\": \"not-a-token\"}\n".to_vec();
    let line = ndjson(&[valid("refused")]);
    while bytes.len() < 8 << 20 {
        bytes.extend_from_slice(&line);
    }
    (&stream)
        .write_all(&bytes)
        .expect("the server reads what was sent");
    let answers = read_answers(stream);
    let fatal = answers.errors();
    assert_eq!(fatal.len(), 1, "{:?}", answers.lines);
    assert_eq!(fatal[0]["error"], json!("unknown token"), "{}", fatal[0]);
    let (_, health) = get_json(s.http, "/healthz");
    assert_eq!(health["logged_seq"], json!(0), "nothing of it is logged");
}
