//! Black-box tests of ingest through the real server: malformed NDJSON lines,
//! `/v1/batch` messages and binary frames refused with their reason while the
//! valid ones around them are kept, duplicates, HTTP errors, line and connection
//! limits (split from `server.rs`).
//!
//! Every read that follows a write waits with `min_seq` (read-your-writes) instead
//! of sleeping; nothing here asserts on timings.

mod util;

use std::io::Write;
use std::net::TcpStream;

use serde_json::{json, Value};
use util::*;

// --- 1. malformed input ---------------------------------------------------------------

/// One bad input of each class, with the reason its error must contain.
fn bad_inputs() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let line = |v: Value| serde_json::to_vec(&v).expect("json");
    // A complete, otherwise valid 40 KiB message.
    let long = line(json!({"type": "track", "userId": "x", "event": "e",
        "properties": {"pad": "x".repeat(40 * 1024)}}));
    vec![
        ("not json", b"this is not json".to_vec(), "not JSON"),
        (
            "json array",
            b"[1,2,3]".to_vec(),
            "expected a JSON object, got array",
        ),
        (
            "missing user",
            line(json!({"type": "track", "event": "Product Viewed"})),
            "missing userId or anonymousId",
        ),
        (
            "bad timestamp",
            line(json!({"type": "track", "userId": "x", "event": "e", "timestamp": "yesterday"})),
            "timestamp: cannot parse \"yesterday\"",
        ),
        (
            "negative price",
            line(track(
                "x",
                "Product Viewed",
                T0,
                json!({"product_id": "p", "price": -5}),
            )),
            "properties.price: expected a non-negative number, got number -5",
        ),
        (
            "non-numeric quantity",
            line(track(
                "x",
                "Product Added",
                T0,
                json!({"product_id": "p", "quantity": "two"}),
            )),
            "properties.quantity: expected a non-negative integer, got string \"two\"",
        ),
        (
            "userId of the wrong type",
            line(json!({"type": "track", "userId": {"id": 1}, "event": "e"})),
            "userId: expected a string or number, got object",
        ),
        ("oversized", long, "32768-byte limit"),
        (
            "invalid utf-8",
            b"{\"type\":\"track\",\"userId\":\"\xff\xfe\",\"event\":\"e\"}".to_vec(),
            "not valid UTF-8 at byte 26",
        ),
        (
            "empty event name",
            line(json!({"type": "track", "userId": "x", "event": ""})),
            "event: required for track",
        ),
        (
            "unknown type",
            line(json!({"type": "page", "userId": "x", "name": "Home"})),
            "type: expected \"track\", \"identify\" or \"alias\", got \"page\"",
        ),
    ]
}

#[test]
fn tcp_malformed_lines_get_their_reason_and_neighbours_are_kept() {
    let server = TestServer::start();
    let bad = bad_inputs();
    let mut input = Vec::new();
    let mut expected = Vec::new(); // (line number, reason)
    let mut users = Vec::new();
    let mut line_no = 0u64;
    let mut push_valid = |input: &mut Vec<u8>, line_no: &mut u64| {
        let user = format!("tcp-ok-{}", *line_no + 1);
        input.extend(ndjson(&[valid(&user)]));
        *line_no += 1;
        users.push(user);
    };
    push_valid(&mut input, &mut line_no);
    for (_, bytes, reason) in &bad {
        input.extend_from_slice(bytes);
        input.push(b'\n');
        line_no += 1;
        expected.push((line_no, *reason));
        push_valid(&mut input, &mut line_no);
    }
    // A line far longer than the read buffer: refused while still incomplete.
    input.extend(vec![b'x'; 300 * 1024]);
    input.push(b'\n');
    line_no += 1;
    expected.push((line_no, "32768-byte limit"));
    push_valid(&mut input, &mut line_no);
    // Blank and CRLF lines are fine, and still count as lines.
    input.extend_from_slice(b"\n");
    input.extend_from_slice(&serde_json::to_vec(&valid("tcp-crlf")).expect("json"));
    input.extend_from_slice(b"\r\n");
    users.push("tcp-crlf".into());
    line_no += 2;
    input.extend_from_slice(b"nope\n");
    line_no += 1;
    expected.push((line_no, "not JSON"));
    // The last line needs no newline.
    input.extend_from_slice(&serde_json::to_vec(&valid("tcp-eof")).expect("json"));
    users.push("tcp-eof".into());

    let answers = send_tcp(server.tcp, &input);
    let errors = answers.errors();
    assert_eq!(errors.len(), expected.len(), "errors: {errors:?}");
    for (line, reason) in &expected {
        let e = answers
            .error_for_line(*line)
            .unwrap_or_else(|| panic!("no error for line {line}; answers {:?}", answers.lines));
        let text = e["error"].as_str().expect("error text");
        assert!(
            text.contains(reason),
            "line {line}: {text:?} should contain {reason:?}"
        );
    }
    assert_eq!(answers.accepted(), users.len() as u64);
    assert_eq!(answers.rejected(), expected.len() as u64);
    assert_eq!(answers.duplicates(), 0);
    assert_eq!(answers.seq(), users.len() as u64);
    for u in &users {
        let doc = profile(server.http, u, answers.seq());
        assert_eq!(doc["profile"]["events_total"], 1, "{u}");
    }
    // The rejections are counted by reason.
    let (_, metrics) = get_text(server.http, "/metrics");
    for code in [
        "not_json",
        "not_object",
        "missing_user",
        "bad_timestamp",
        "bad_number",
        "wrong_type",
        "line_too_long",
        "invalid_utf8",
        "missing_event",
        "bad_type",
    ] {
        let series = format!("shopstream_events_rejected_total{{reason=\"{code}\"}}");
        assert!(metrics.contains(&series), "no {series} in /metrics");
    }
    server.shutdown();
}

#[test]
fn http_batch_rejects_bad_messages_by_index_and_keeps_the_rest() {
    let server = TestServer::start();
    let mut batch = Vec::new();
    let mut expected = Vec::new(); // (index, reason)
    let mut users = Vec::new();
    let mut push_valid = |batch: &mut Vec<Value>| {
        let user = format!("http-ok-{}", batch.len());
        batch.push(valid(&user));
        users.push(user);
    };
    push_valid(&mut batch);
    for (what, bytes, reason) in bad_inputs() {
        // Inside a JSON body only JSON values can travel.
        let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
            continue;
        };
        assert!(what != "not json" && what != "invalid utf-8");
        expected.push((batch.len(), reason));
        batch.push(v);
        push_valid(&mut batch);
    }
    expected.push((batch.len(), "expected a JSON object, got string"));
    batch.push(json!("a string"));
    push_valid(&mut batch);

    let (status, body) = post_batch(server.http, &batch);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], users.len());
    assert_eq!(body["duplicates"], 0);
    assert_eq!(body["seq"], users.len());
    let rejected = body["rejected"].as_array().expect("rejected");
    assert_eq!(rejected.len(), expected.len(), "{body}");
    for ((index, reason), r) in expected.iter().zip(rejected) {
        assert_eq!(r["index"], *index, "{r}");
        let text = r["reason"].as_str().expect("reason");
        assert!(
            text.contains(reason),
            "index {index}: {text:?} should contain {reason:?}"
        );
    }
    for u in &users {
        let doc = profile(server.http, u, users.len() as u64);
        assert_eq!(doc["profile"]["events_total"], 1, "{u}");
    }

    // A body that is not a batch at all is a 400 with a JSON reason.
    let (status, body) = post(server.http, "/v1/batch", b"{\"batch\": 3}");
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("batch")),
        "{body}"
    );
    let (status, body) = post(server.http, "/v1/batch", b"not json");
    assert_eq!(status, 400);
    assert!(body["error"].is_string(), "{body}");

    // Single messages: the endpoint implies the type.
    let seq = users.len() as u64;
    let single = serde_json::to_vec(
        &json!({"userId": "single", "event": "Product Viewed", "timestamp": T0}),
    );
    let (status, body) = post(server.http, "/v1/track", &single.expect("json"));
    assert_eq!(
        (status, &body["accepted"], &body["seq"]),
        (200, &json!(1), &json!(seq + 1)),
        "{body}"
    );
    let single = serde_json::to_vec(
        &json!({"userId": "single", "traits": {"plan": "pro"}, "timestamp": T0}),
    );
    let (status, body) = post(server.http, "/v1/identify", &single.expect("json"));
    assert_eq!(
        (status, &body["accepted"], &body["seq"]),
        (200, &json!(1), &json!(seq + 2)),
        "{body}"
    );
    let p = &profile(server.http, "single", seq + 2)["profile"];
    assert_eq!(p["events"], json!({"Product Viewed": 1, "identify": 1}));
    assert_eq!(p["traits"], json!({"plan": "pro"}));
    let (status, body) = post(server.http, "/v1/track", b"{\"event\": \"x\"}");
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["accepted"], 0);
    assert_eq!(body["rejected"][0]["index"], 0);
    assert!(
        body["rejected"][0]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("missing userId"),
        "{body}"
    );
    server.shutdown();
}

/// The frames of the binary test: valid, one bad event inside, not bincode,
/// oversized, valid, cut short by the end of the connection.
fn binary_frames() -> Vec<Vec<u8>> {
    use shopstream::ingest::binary::encode_frame;
    let mut bad_event = event(&track(
        "bin-x",
        "Product Viewed",
        T0,
        json!({"product_id": "p"}),
    ));
    bad_event.products[0].price = -100;
    let not_bincode = {
        let body = [0xffu8; 10];
        let mut f = (body.len() as u32).to_le_bytes().to_vec();
        f.extend_from_slice(&body);
        f
    };
    let oversized = {
        let len = 520_000u32; // over the default 512000-byte max_batch_bytes
        let mut f = len.to_le_bytes().to_vec();
        f.extend(vec![0u8; len as usize]);
        f
    };
    vec![
        encode_frame(&[event(&valid("bin-1")), bad_event]),
        not_bincode,
        encode_frame(&[event(&valid("bin-2"))]),
        oversized,
        encode_frame(&[event(&valid("bin-3")), event(&valid("bin-4"))]),
        // The connection ends inside this frame.
        [&100u32.to_le_bytes()[..], &[1u8; 10]].concat(),
    ]
}

#[test]
fn binary_bad_frames_are_refused_and_framing_stays_in_step() {
    let server = TestServer::start();
    let answers = send_binary(server.tcp, &binary_frames());
    let errors = answers.errors();
    assert_eq!(errors.len(), 4, "{:?}", answers.lines);
    assert_eq!(errors[0]["frame"], 1, "{}", errors[0]);
    assert_eq!(errors[0]["index"], 1, "{}", errors[0]);
    assert!(errors[0]["error"]
        .as_str()
        .unwrap_or("")
        .contains("price must be between 0"));
    assert!(
        errors[1]["error"]
            .as_str()
            .unwrap_or("")
            .contains("frame 2 is not a bincode"),
        "{}",
        errors[1]
    );
    assert!(
        errors[2]["error"]
            .as_str()
            .unwrap_or("")
            .contains("frame 4 is 520000 bytes, over the 512000-byte limit"),
        "{}",
        errors[2]
    );
    assert!(
        errors[3]["error"]
            .as_str()
            .unwrap_or("")
            .contains("connection closed inside frame 6"),
        "{}",
        errors[3]
    );
    assert_eq!(answers.accepted(), 4);
    assert_eq!(answers.rejected(), 4);
    assert_eq!(answers.seq(), 4);
    for u in ["bin-1", "bin-2", "bin-3", "bin-4"] {
        assert_eq!(
            profile(server.http, u, 4)["profile"]["events_total"],
            1,
            "{u}"
        );
    }
    assert_eq!(get_profile(server.http, "bin-x", 4).0, 404);
    server.shutdown();
}

/// Bug: a refused binary frame is reported as `{"error": ..., "line": N}`; the
/// binary protocol names frames (`"frame": N`), as its per-event errors do.
#[test]
fn regression_binary_whole_frame_error_said_line_instead_of_frame() {
    let server = TestServer::start();
    let answers = send_binary(server.tcp, &binary_frames());
    let errors = answers.errors();
    assert_eq!(errors.len(), 4, "{:?}", answers.lines);
    assert_eq!(errors[1]["frame"], 2, "not-bincode frame: {}", errors[1]);
    assert_eq!(errors[2]["frame"], 4, "oversized frame: {}", errors[2]);
    assert_eq!(errors[3]["frame"], 6, "truncated frame: {}", errors[3]);
    assert!(errors[1].get("line").is_none(), "{}", errors[1]);
    server.shutdown();
}

// --- 2. duplicates ---------------------------------------------------------------------

#[test]
fn duplicate_message_ids_are_acknowledged_but_counted_once() {
    let server = TestServer::start();
    let u = "dup-u";
    let view = |id: &str| {
        with_id(
            track(u, "Product Viewed", T0, json!({"product_id": "p"})),
            id,
        )
    };
    let order = with_id(
        track(
            u,
            "Order Completed",
            T0,
            json!({"order_id": "o", "revenue": 12.34}),
        ),
        "d3",
    );
    // Same connection: d2 again.
    let first = send_messages(
        server.tcp,
        &[view("d1"), view("d2"), order.clone(), view("d2")],
    );
    assert_eq!(first.accepted(), 4);
    assert_eq!(first.duplicates(), 1);
    assert_eq!(first.rejected(), 0);
    assert_eq!(first.seq(), 3);
    // Another connection: d1 and d3 again, d4 new.
    let second = send_messages(server.tcp, &[view("d1"), order.clone(), view("d4")]);
    assert_eq!(second.accepted(), 3);
    assert_eq!(second.duplicates(), 2);
    assert_eq!(second.seq(), 4);
    // HTTP: d4 again, d5 new.
    let (status, body) = post_batch(server.http, &[view("d4"), view("d5")]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 2);
    assert_eq!(body["duplicates"], 1);
    assert_eq!(body["seq"], 5);
    // Without a messageId nothing is deduplicated.
    let plain = track(u, "Custom Thing", T0, json!({}));
    let third = send_messages(server.tcp, &[plain.clone(), plain]);
    assert_eq!(third.duplicates(), 0);
    assert_eq!(third.seq(), 7);

    let p = &profile(server.http, u, 7)["profile"];
    assert_eq!(
        p["events"],
        json!({"Product Viewed": 4, "Order Completed": 1, "Custom Thing": 2})
    );
    assert_eq!(p["events_total"], 7);
    assert_eq!(p["orders"], 1);
    assert_money(&p["revenue"], 12.34);
    assert_eq!(p["windows"]["7d"]["views"], 4);
    server.shutdown();
}

/// Bug: when every event of a submission is a duplicate, the acknowledgement says
/// `seq` 0 (HTTP) / does not move (TCP), instead of a sequence number at or after
/// the original event, so a retrying client cannot read its own write with
/// `min_seq`.
#[test]
fn regression_duplicate_only_batch_acked_seq_0_instead_of_the_original() {
    let server = TestServer::start();
    let m = with_id(
        track("dup-ryw", "Product Viewed", T0, json!({"product_id": "p"})),
        "ryw-1",
    );
    let (_, first) = post_batch(server.http, std::slice::from_ref(&m));
    assert_eq!(first["seq"], 1, "{first}");
    let (status, retry) = post_batch(server.http, std::slice::from_ref(&m));
    assert_eq!(status, 200);
    assert_eq!(retry["duplicates"], 1, "{retry}");
    let tcp_retry = send_messages(server.tcp, &[m]);
    assert_eq!(tcp_retry.duplicates(), 1);
    assert!(
        retry["seq"].as_u64().unwrap_or(0) >= 1,
        "HTTP retry of an already logged event answers seq {} (the original is seq 1)",
        retry["seq"]
    );
    assert!(
        tcp_retry.seq() >= 1,
        "TCP retry of an already logged event is acked at seq {} (the original is seq 1)",
        tcp_retry.seq()
    );
    server.shutdown();
}

// --- 3. errors, health, metrics ---------------------------------------------------------

#[test]
fn http_errors_are_json_with_the_right_status() {
    let server = TestServer::start_with(|c| {
        c.min_seq_timeout = std::time::Duration::from_millis(300);
        c.max_batch_bytes = 4096;
    });
    let answers = send_messages(server.tcp, &[valid("err-u")]);
    assert_eq!(answers.seq(), 1);
    assert_eq!(profile(server.http, "err-u", 1)["as_of"], 1);

    // min_seq beyond the log: 504 after the timeout, saying what it reached.
    let (status, body) = get_profile(server.http, "err-u", 1000);
    assert_eq!(status, 504, "{body}");
    let e = body["error"].as_str().expect("error text");
    assert!(e.contains("timed out") && e.contains("1000"), "{e}");
    assert_eq!(body["as_of"], 1, "{body}");

    for bad in ["abc", "-1", "1.5", ""] {
        let (status, body) = get_json(
            server.http,
            &format!("/v1/users/err-u/profile?min_seq={bad}"),
        );
        assert_eq!(status, 400, "min_seq={bad}: {body}");
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("min_seq")),
            "{body}"
        );
    }

    let (status, body) = get_profile(server.http, "nobody", 1);
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("nobody")),
        "{body}"
    );
    let (status, body) = get_json(server.http, "/v1/no/such/endpoint");
    assert_eq!(status, 404);
    assert!(body["error"].is_string(), "{body}");

    // A batch body over max_batch_bytes: 413 with the reason; nothing is logged.
    let big: Vec<Value> = (0..40).map(|i| valid(&format!("big-{i}"))).collect();
    let (status, body) = post_batch(server.http, &big);
    assert_eq!(status, 413, "{body}");
    let e = body["error"].as_str().expect("error text");
    assert!(e.contains("4096-byte limit"), "{e}");
    // The same without a Content-Length (chunked): refused while reading.
    let chunk = serde_json::to_vec(&json!({"batch": big})).expect("json");
    let mut request = format!(
        "POST /v1/batch HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n",
        chunk.len()
    )
    .into_bytes();
    request.extend_from_slice(&chunk);
    request.extend_from_slice(b"\r\n0\r\n\r\n");
    let (status, text) = raw_http(server.http, &request);
    assert_eq!(status, 413, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("4096-byte limit")),
        "{body}"
    );
    let (status, health) = get_json(server.http, "/healthz");
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["as_of"], 1);
    assert_eq!(health["logged_seq"], 1, "the refused batch logged nothing");
    assert_eq!(health["workers"], 2);

    // A rejected line, so that the rejection counter exists in this process.
    send_tcp(server.tcp, b"nope\n");
    let (status, metrics) = get_text(server.http, "/metrics");
    assert_eq!(status, 200);
    for name in [
        "shopstream_events_accepted_total",
        "shopstream_events_rejected_total{reason=\"not_json\"}",
        "shopstream_log_fsync_seconds",
        "shopstream_frontier_lag_events",
        "shopstream_query_seconds",
    ] {
        assert!(metrics.contains(name), "no {name} in /metrics:\n{metrics}");
    }
    server.shutdown();
}

// --- regressions from review ------------------------------------------------------

/// Regression: a partial line longer than the reader's 256 KiB chunk (allowed by a
/// larger `max_line_bytes`) made the connection task spin without reading, hanging
/// the server.
#[test]
fn regression_line_longer_than_the_read_chunk_spun_forever() {
    let server = TestServer::start_with(|c| c.max_line_bytes = 1 << 20);
    let big = "x".repeat(300 * 1024);
    let line = ndjson(&[track("long", "Custom Thing", T0, json!({ "blob": big }))]);
    let (head, tail) = line.split_at(line.len() / 2);
    let answers = send_in_parts(server.tcp, &[head, tail], 200);
    assert_one_accepted(&answers);
    let (status, _) = get_json(server.http, "/healthz");
    assert_eq!(status, 200);
    server.shutdown();
}

/// Regression: a line of exactly `max_line_bytes` ending in CRLF was refused when
/// the `\r` and the `\n` arrived in different reads.
#[test]
fn regression_crlf_line_at_the_limit_split_across_reads_was_refused() {
    let message = ndjson(&[track("crlf", "Custom Thing", T0, json!({}))]);
    let body = &message[..message.len() - 1];
    let limit = body.len();
    let server = TestServer::start_with(|c| c.max_line_bytes = limit);
    let answers = send_in_parts(server.tcp, &[&[body, b"\r"].concat(), b"\n"], 100);
    assert_one_accepted(&answers);
    server.shutdown();
}

/// Sends `parts` on one connection, flushing and pausing `pause_ms` between them
/// (so that they arrive in separate reads), and reads the answers.
fn send_in_parts(addr: std::net::SocketAddr, parts: &[&[u8]], pause_ms: u64) -> Answers {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            stream.flush().expect("flush");
            std::thread::sleep(std::time::Duration::from_millis(pause_ms));
        }
        stream.write_all(part).expect("part");
    }
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    read_answers(stream)
}

fn assert_one_accepted(answers: &Answers) {
    assert_eq!(
        (answers.accepted(), answers.rejected()),
        (1, 0),
        "{:?}",
        answers.lines
    );
}

/// Over `max_connections`, a connection gets one fatal error line and is closed;
/// an idle connection is told why and closed after `idle_timeout`.
#[test]
fn connection_limit_and_idle_timeout_answer_with_a_reason() {
    let server = TestServer::start_with(|c| {
        c.max_connections = 1;
        c.idle_timeout = std::time::Duration::from_secs(1);
    });
    let first = TcpStream::connect(server.tcp).expect("first");
    first.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let second = TcpStream::connect(server.tcp).expect("second");
    second.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let refused = read_answers(second);
    assert_eq!(refused.lines.len(), 1, "{:?}", refused.lines);
    assert_eq!(refused.lines[0]["fatal"], true);
    assert!(refused.lines[0]["error"]
        .to_string()
        .contains("max_connections"));
    // The first one sends nothing: after the idle timeout it is told and closed.
    let idle = read_answers(first);
    assert_eq!(idle.lines.len(), 1, "{:?}", idle.lines);
    assert!(idle.lines[0]["error"].to_string().contains("idle_timeout"));
    // And its slot is free again.
    let ok = send_messages(server.tcp, &[track("after", "Custom Thing", T0, json!({}))]);
    assert_eq!(ok.accepted(), 1);
    server.shutdown();
}

/// Every HTTP error is JSON, wrong methods included.
#[test]
fn wrong_method_is_a_json_405() {
    let server = TestServer::start();
    let (status, body) = post(server.http, "/v1/users/x/profile", b"{}");
    assert_eq!(status, 405, "{body}");
    assert!(body["error"].is_string(), "{body}");
    server.shutdown();
}
