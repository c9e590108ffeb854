//! Black-box tests of the whole server: ingest over TCP (NDJSON and binary) and
//! HTTP, reads over HTTP, durability across graceful restarts (crashes and
//! faults are in `reliability.rs`).
//!
//! Every read that follows a write waits with `min_seq` (read-your-writes) instead
//! of sleeping; nothing here asserts on timings.

mod util;

use std::io::Write;
use std::net::TcpStream;

use serde_json::{json, Value};
use util::*;

// --- 1. profile fields ---------------------------------------------------------

/// `T0 + s` seconds.
fn at(s: i64) -> i64 {
    T0 + s * SECOND
}

#[test]
fn tcp_ingest_then_profile_has_exact_fields() {
    let server = TestServer::start();
    let u = "alice";
    let shoe = |qty: i64| json!({"product_id": "p1", "category": "shoes", "brand": "acme", "price": 19.99, "quantity": qty});
    let hat = |qty: i64| json!({"product_id": "p2", "category": "hats", "brand": "zeta", "price": 0.01, "quantity": qty});
    let messages = vec![
        // Sent first, but newer than the next identify: its plan must win.
        identify(u, at(50), json!({"plan": "pro", "email": "a@example.com"})),
        // Sent later, older: only its `age` (later overridden) is kept.
        identify(u, at(5), json!({"plan": "free", "age": 30})),
        track(u, "Product Viewed", at(10), shoe(1)),
        track(u, "Product Added", at(20), shoe(2)),
        track(u, "Product Added", at(30), hat(3)),
        track(u, "Product Removed", at(40), hat(1)),
        // No amount: revenue is the sum of the lines, 19.99 + 0.01 = 20.00.
        track(
            u,
            "Order Completed",
            at(60),
            json!({"order_id": "o1", "products": [shoe(1), hat(1)]}),
        ),
        track(
            u,
            "Order Completed",
            at(120),
            json!({"order_id": "o2", "revenue": 100.10,
            "products": [{"product_id": "p3", "category": "bags", "brand": "acme", "price": 25, "quantity": 4}]}),
        ),
        track(
            u,
            "Order Completed",
            at(180),
            json!({"order_id": "o3", "total": 50,
            "products": [{"product_id": "p4", "category": "bags", "brand": "omega", "price": 50}]}),
        ),
        // A partial refund with an amount.
        track(
            u,
            "Order Refunded",
            at(200),
            json!({"order_id": "o2", "revenue": 30.05}),
        ),
        // A refund naming only the order: the whole unrefunded 50.00.
        track(u, "Order Refunded", at(220), json!({"order_id": "o3"})),
        // Cancelling o1 takes back one order, its 2 items and its 20.00.
        track(u, "Order Cancelled", at(240), json!({"order_id": "o1"})),
        track(u, "Newsletter Signup", at(250), json!({"list": "weekly"})),
        // GA4 alias with GA4 field names: counts as a Product Viewed.
        track(
            u,
            "view_item",
            at(260),
            json!({"item_id": "p5", "item_category": "hats", "item_brand": "zeta", "price": 5}),
        ),
        // Sent last and newest: its age wins.
        identify(u, at(300), json!({"age": 31})),
        // Sent last but oldest: its email loses to the one at +50 s.
        identify(u, at(1), json!({"email": "old@example.com"})),
        // Equal timestamps: the later message (greater seq) wins.
        identify(u, at(70), json!({"tier": "gold"})),
        identify(u, at(70), json!({"tier": "silver"})),
        // Someone else, to check that users do not mix.
        track(
            "bob",
            "Order Completed",
            at(400),
            json!({"order_id": "o1", "revenue": 7}),
        ),
    ];
    let answers = send_messages(server.tcp, &messages);
    assert!(answers.errors().is_empty(), "{:?}", answers.lines);
    assert_eq!(answers.accepted(), messages.len() as u64);
    assert_eq!(answers.rejected(), 0);
    assert_eq!(
        answers.seq(),
        messages.len() as u64,
        "a fresh log numbers from 1"
    );

    let doc = profile(server.http, u, answers.seq());
    assert_eq!(doc["user_id"], "alice");
    assert_eq!(doc["as_of"], answers.seq());
    assert_eq!(
        doc["clock"], "2023-11-14T22:20:00Z",
        "event clock: bob's +400 s"
    );
    let p = &doc["profile"];
    assert_eq!(
        p["events"],
        json!({"identify": 6, "Product Viewed": 2, "Product Added": 2, "Product Removed": 1,
            "Order Completed": 3, "Order Refunded": 2, "Order Cancelled": 1, "Newsletter Signup": 1})
    );
    assert_eq!(p["events_total"], 18);
    assert_eq!(p["first_seen"], "2023-11-14T22:13:21Z");
    assert_eq!(p["last_seen"], "2023-11-14T22:18:20Z");
    assert_eq!(p["orders"], 2);
    assert_eq!(p["items_purchased"], 5);
    // 20.00 + 100.10 + 50.00 - 30.05 - 50.00 - 20.00
    assert_money(&p["revenue"], 70.05);
    assert_eq!(p["refunds"], 2);
    assert_money(&p["refunded"], 80.05);
    assert_eq!(p["cancellations"], 1);
    // 70.05 / 2 = 35.025, rounded half away from zero to the cent.
    assert_money(&p["avg_order_value"], 35.03);
    assert_eq!(p["last_order_at"], "2023-11-14T22:16:20Z");
    for w in ["7d", "30d"] {
        let win = &p["windows"][w];
        assert_eq!(win["views"], 2, "{w}");
        assert_eq!(win["cart_adds"], 2, "{w}");
        assert_eq!(win["orders"], 2, "{w}");
        assert_money(&win["revenue"], 70.05);
    }
    // p1: +2 added, -1 bought; p2: +3 added, -1 removed, -1 bought. p3 and p4 were
    // bought without being added: nothing positive left in the cart for them.
    let mut cart = p["cart"].as_array().expect("cart").clone();
    cart.sort_by_key(|c| c["product_id"].as_str().unwrap_or("").to_owned());
    assert_eq!(
        Value::Array(cart),
        json!([{"product_id": "p1", "quantity": 1}, {"product_id": "p2", "quantity": 1}])
    );
    // Weights: viewed 1, added 3, ordered 5 (per order line).
    assert_eq!(
        p["top_categories"],
        json!([{"category": "bags", "score": 10}, {"category": "hats", "score": 9},
            {"category": "shoes", "score": 9}])
    );
    assert_eq!(
        p["top_brands"],
        json!([{"brand": "acme", "score": 14}, {"brand": "zeta", "score": 9},
            {"brand": "omega", "score": 5}])
    );
    assert_eq!(
        p["traits"],
        json!({"plan": "pro", "email": "a@example.com", "age": 31, "tier": "silver"})
    );
    assert_eq!(p["rfm"]["frequency"], 2);
    assert_eq!(p["rfm"]["recency_days"], 0);
    assert_money(&p["rfm"]["monetary"], 70.05);

    let bob = &profile(server.http, "bob", answers.seq())["profile"];
    assert_eq!(bob["events"], json!({"Order Completed": 1}));
    assert_eq!(bob["orders"], 1);
    assert_money(&bob["revenue"], 7.0);
    assert_eq!(bob["traits"], json!({}));
    server.shutdown();
}

// --- 2. windows ------------------------------------------------------------------

#[test]
fn windows_follow_the_event_clock_and_late_events_count_where_they_fall() {
    let server = TestServer::start();
    let a = "win-a";
    let first = send_messages(
        server.tcp,
        &[
            track(a, "Product Viewed", T0, json!({"product_id": "p"})),
            track(
                a,
                "Product Added",
                T0,
                json!({"product_id": "p", "price": 10}),
            ),
            track(
                a,
                "Order Completed",
                T0,
                json!({"order_id": "o", "revenue": 10, "products": [{"product_id": "p", "price": 10}]}),
            ),
        ],
    );
    let full = json!({"views": 1, "cart_adds": 1, "orders": 1, "revenue": 10.0});
    let empty = json!({"views": 0, "cart_adds": 0, "orders": 0, "revenue": 0.0});
    let windows = |doc: &Value, w: &str| {
        let mut v = doc["profile"]["windows"][w].clone();
        // Compare money as a float whatever its JSON spelling.
        v["revenue"] = json!(v["revenue"].as_f64().expect("revenue"));
        v
    };
    let doc = profile(server.http, a, first.seq());
    assert_eq!(windows(&doc, "7d"), full);
    assert_eq!(windows(&doc, "30d"), full);

    // Another user moves the clock 8 days on: A's events leave the 7-day window.
    let later = send_messages(
        server.tcp,
        &[track(
            "win-b",
            "Product Viewed",
            T0 + 8 * DAY,
            json!({"product_id": "q"}),
        )],
    );
    let doc = profile(server.http, a, later.seq());
    assert_eq!(doc["clock"], "2023-11-22T22:13:20Z");
    assert_eq!(windows(&doc, "7d"), empty);
    assert_eq!(windows(&doc, "30d"), full);
    assert_eq!(doc["profile"]["orders"], 1);

    // A late event: older than clock - 7d, newer than clock - 30d.
    let late = send_messages(
        server.tcp,
        &[track(
            a,
            "Product Viewed",
            T0 - 2 * DAY,
            json!({"product_id": "p"}),
        )],
    );
    let doc = profile(server.http, a, late.seq());
    assert_eq!(windows(&doc, "7d"), empty, "too late for 7d");
    assert_eq!(
        windows(&doc, "30d"),
        json!({"views": 2, "cart_adds": 1, "orders": 1, "revenue": 10.0})
    );
    assert_eq!(doc["profile"]["events_total"], 4);
    assert_eq!(doc["profile"]["events"]["Product Viewed"], 2);
    assert_eq!(doc["profile"]["first_seen"], "2023-11-12T22:13:20Z");

    // 31 days after T0 everything of A has left the 30-day window too.
    let end = send_messages(
        server.tcp,
        &[track(
            "win-b",
            "Product Viewed",
            T0 + 31 * DAY,
            json!({"product_id": "q"}),
        )],
    );
    let doc = profile(server.http, a, end.seq());
    assert_eq!(doc["clock"], "2023-12-15T22:13:20Z");
    assert_eq!(windows(&doc, "7d"), empty);
    assert_eq!(windows(&doc, "30d"), empty);
    let p = &doc["profile"];
    assert_eq!(p["events_total"], 4, "lifetime totals do not expire");
    assert_eq!(p["orders"], 1);
    assert_eq!(p["items_purchased"], 1);
    assert_money(&p["revenue"], 10.0);
    assert_eq!(p["last_order_at"], "2023-11-14T22:13:20Z");
    // B: its +8 d view is 23 days old now: in 30d, not in 7d; its +31 d view in both.
    let b = profile(server.http, "win-b", end.seq());
    assert_eq!(windows(&b, "7d")["views"], 1);
    assert_eq!(windows(&b, "30d")["views"], 2);
    server.shutdown();
}

// --- 3. malformed input ---------------------------------------------------------------

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

// --- 4. duplicates ---------------------------------------------------------------------

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

// --- 5. errors, health, metrics ---------------------------------------------------------

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

// --- 7. graceful restart --------------------------------------------------------------------

#[test]
fn restart_replays_the_log_to_identical_answers() {
    let dir = tempfile::tempdir().expect("temp dir");
    // 41 days of traffic: windows open and close along the way.
    let messages = workload(3000, 30, 20 * MINUTE, "replay");
    let users = users_of(&messages);
    let server = TestServer::start_in(dir.path(), |_| {});
    // Every ingest path: TCP NDJSON, HTTP batches, binary frames.
    let tcp = send_messages(server.tcp, &messages[..1000]);
    assert_eq!(tcp.seq(), 1000);
    for chunk in messages[1000..2000].chunks(250) {
        let (status, body) = post_batch(server.http, chunk);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["rejected"], json!([]));
    }
    let frames: Vec<Vec<u8>> = messages[2000..]
        .chunks(300)
        .map(|c| {
            let events: Vec<_> = c.iter().map(event).collect();
            shopstream::ingest::binary::encode_frame(&events)
        })
        .collect();
    let bin = send_binary(server.tcp, &frames);
    assert_eq!(bin.seq(), 3000);
    assert_eq!(bin.rejected(), 0);
    let before = all_profiles(server.http, &users, 3000);
    let (_, health_before) = get_json(server.http, "/healthz");
    server.shutdown();

    let server = TestServer::start_in(dir.path(), |_| {});
    let (_, health) = get_json(server.http, "/healthz");
    assert_eq!(health["as_of"], 3000, "{health}");
    assert_eq!(health["clock"], health_before["clock"]);
    let after = all_profiles(server.http, &users, 3000);
    for ((u, s1, p1), (_, s2, p2)) in before.iter().zip(&after) {
        assert_eq!(s1, s2, "{u}");
        assert_eq!(p1, p2, "profile of {u} after a restart");
    }
    assert!(before.iter().all(|(_, s, _)| *s == 200));

    // Deduplication survives the restart, and numbering continues.
    let again = send_messages(server.tcp, &messages[..2]);
    assert_eq!(again.duplicates(), 2);
    let next = send_messages(server.tcp, &[valid("replay-new")]);
    assert_eq!(next.seq(), 3001);
    server.shutdown();
}

#[test]
fn wall_clock_windows_survive_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_millis() as i64;
    let wall = |c: &mut shopstream::config::Config| c.clock = shopstream::config::ClockMode::Wall;
    let server = TestServer::start_in(dir.path(), wall);
    let u = "wall-u";
    let answers = send_messages(
        server.tcp,
        &[
            track(
                u,
                "Product Viewed",
                now - 10 * DAY,
                json!({"product_id": "p"}),
            ),
            track(
                u,
                "Product Viewed",
                now - 3_600_000,
                json!({"product_id": "p"}),
            ),
            track(
                u,
                "Product Added",
                now - 40 * DAY,
                json!({"product_id": "p"}),
            ),
            track(
                u,
                "Order Completed",
                now - 2 * DAY,
                json!({"order_id": "o", "revenue": 5}),
            ),
        ],
    );
    assert_eq!(answers.seq(), 4);
    let before = profile(server.http, u, 4);
    let w = |doc: &Value, name: &str| {
        let v = &doc["profile"]["windows"][name];
        (
            v["views"].clone(),
            v["cart_adds"].clone(),
            v["orders"].clone(),
            v["revenue"].as_f64(),
        )
    };
    // The clock is now, not the newest event: the window edges are measured from it.
    assert_eq!(w(&before, "7d"), (json!(1), json!(0), json!(1), Some(5.0)));
    assert_eq!(w(&before, "30d"), (json!(2), json!(0), json!(1), Some(5.0)));
    assert_eq!(before["profile"]["events_total"], 4);
    assert_eq!(before["profile"]["rfm"]["recency_days"], 2);
    server.shutdown();

    let server = TestServer::start_in(dir.path(), wall);
    let after = profile(server.http, u, 4);
    assert_eq!(after["as_of"], 4);
    assert_eq!(after["profile"], before["profile"]);
    server.shutdown();
}

// --- more: aliases, currencies, odd ids, prefix consistency -------------------------

#[test]
fn ga4_aliases_and_segment_names_give_the_same_profile() {
    let server = TestServer::start_with(|c| {
        c.currency_rates.insert("EUR".into(), 1.1);
    });
    let line =
        json!({"product_id": "p1", "category": "c", "brand": "b", "price": 9.99, "quantity": 2});
    let item = json!({"item_id": "p1", "item_category": "c", "item_brand": "b", "price": 9.99, "quantity": 2});
    let one = |mut v: Value| {
        v["quantity"] = json!(1);
        v
    };
    let (s, g) = ("seg-user", "ga4-user");
    let pairs = vec![
        (
            track(s, "Product Viewed", at(1), line.clone()),
            track(g, "view_item", at(1), json!({"items": [item.clone()]})),
        ),
        (
            track(s, "Product Added", at(2), line.clone()),
            track(g, "add_to_cart", at(2), json!({"items": [item.clone()]})),
        ),
        (
            track(s, "Product Removed", at(3), one(line.clone())),
            track(
                g,
                "remove_from_cart",
                at(3),
                json!({"items": [one(item.clone())]}),
            ),
        ),
        (
            track(s, "Product Added to Wishlist", at(4), line.clone()),
            track(
                g,
                "add_to_wishlist",
                at(4),
                json!({"items": [item.clone()]}),
            ),
        ),
        (
            track(s, "Cart Viewed", at(5), json!({"products": [line.clone()]})),
            track(g, "view_cart", at(5), json!({"items": [item.clone()]})),
        ),
        (
            track(
                s,
                "Checkout Started",
                at(6),
                json!({"products": [line.clone()]}),
            ),
            track(g, "begin_checkout", at(6), json!({"items": [item.clone()]})),
        ),
        (
            track(
                s,
                "Order Completed",
                at(7),
                json!({"order_id": "o1", "revenue": 25.5, "products": [one(line.clone())]}),
            ),
            track(
                g,
                "purchase",
                at(7),
                json!({"transaction_id": "o1", "value": 25.5, "items": [one(item.clone())]}),
            ),
        ),
        (
            track(
                s,
                "Order Completed",
                at(8),
                json!({"order_id": "o2", "revenue": 10, "currency": "EUR"}),
            ),
            track(
                g,
                "purchase",
                at(8),
                json!({"transaction_id": "o2", "value": 10, "currency": "eur"}),
            ),
        ),
        (
            track(s, "Order Refunded", at(9), json!({"order_id": "o1"})),
            track(g, "refund", at(9), json!({"transaction_id": "o1"})),
        ),
        (
            track(s, "Products Searched", at(10), json!({"query": "shoes"})),
            track(g, "search", at(10), json!({"search_term": "shoes"})),
        ),
        (
            track(
                s,
                "Promotion Viewed",
                at(11),
                json!({"promotion_id": "summer", "creative": "banner"}),
            ),
            track(
                g,
                "view_promotion",
                at(11),
                json!({"promotion_id": "summer", "creative_name": "banner"}),
            ),
        ),
        (
            track(
                s,
                "Promotion Clicked",
                at(12),
                json!({"promotion_id": "summer"}),
            ),
            track(
                g,
                "select_promotion",
                at(12),
                json!({"promotion_id": "summer"}),
            ),
        ),
    ];
    let mut messages = Vec::new();
    for (a, b) in pairs {
        messages.push(a);
        messages.push(b);
    }
    // A currency without a configured rate is refused, with its reason.
    messages.push(track(
        s,
        "Order Completed",
        at(13),
        json!({"order_id": "o3", "revenue": 5, "currency": "GBP"}),
    ));
    let answers = send_messages(server.tcp, &messages);
    assert_eq!(answers.rejected(), 1, "{:?}", answers.lines);
    let e = answers
        .error_for_line(messages.len() as u64)
        .expect("GBP error");
    assert!(
        e["error"]
            .as_str()
            .unwrap_or("")
            .contains("currency GBP has no rate"),
        "{e}"
    );

    let seg = profile(server.http, s, answers.seq());
    let ga4 = profile(server.http, g, answers.seq());
    assert_eq!(seg["profile"], ga4["profile"]);
    let p = &seg["profile"];
    assert_eq!(p["events"]["Product Viewed"], 1);
    assert_eq!(p["events"]["Order Completed"], 2);
    assert_eq!(p["events"]["Order Refunded"], 1);
    assert_eq!(
        p["events"].as_object().map(|o| o.len()),
        Some(11),
        "{}",
        p["events"]
    );
    assert_eq!(p["orders"], 2);
    // 25.50 + 10 EUR at 1.1 - the refund of o1 (25.50)
    assert_money(&p["revenue"], 11.0);
    assert_money(&p["refunded"], 25.5);
    assert_eq!(p["cart"], json!([]), "2 added, 1 removed, 1 bought");
    server.shutdown();
}

#[test]
fn user_ids_with_spaces_slashes_and_unicode_round_trip() {
    let server = TestServer::start();
    let odd = "a b/ü?#%";
    let answers = send_messages(
        server.tcp,
        &[
            track(odd, "Product Viewed", T0, json!({"product_id": "p"})),
            json!({"type": "track", "userId": 42, "event": "Product Viewed", "timestamp": T0}),
            json!({"type": "track", "anonymousId": "anon-1", "event": "Product Viewed", "timestamp": T0}),
        ],
    );
    assert_eq!(answers.accepted(), 3);
    let doc = profile(server.http, "a%20b%2F%C3%BC%3F%23%25", answers.seq());
    assert_eq!(doc["user_id"], odd);
    assert_eq!(doc["profile"]["events_total"], 1);
    assert_eq!(
        profile(server.http, "42", answers.seq())["profile"]["events_total"],
        1
    );
    assert_eq!(
        profile(server.http, "anon-1", answers.seq())["profile"]["events_total"],
        1
    );
    server.shutdown();
}

#[test]
fn reads_during_ingest_are_prefix_consistent() {
    const N: usize = 4000;
    let server = TestServer::start();
    // Users alternate; on one connection to a fresh log, message i gets seq i + 1.
    let messages: Vec<Value> = (0..N)
        .map(|i| {
            let user = if i % 3 == 0 { "pc-a" } else { "pc-b" };
            track(
                user,
                "Product Viewed",
                T0 + i as i64 * SECOND,
                json!({"product_id": format!("p{}", i % 7), "category": "c"}),
            )
        })
        .collect();
    let tcp = server.tcp;
    let sender = {
        let messages = messages.clone();
        std::thread::spawn(move || {
            let mut seq = 0;
            for chunk in messages.chunks(100) {
                let answers = send_messages(tcp, chunk);
                seq = answers.seq();
            }
            seq
        })
    };
    let mut reads = 0;
    loop {
        // pc-a's first event is seq 1: waiting for it is enough, later reads
        // answer whatever prefix is complete.
        let (status, doc) = get_profile(server.http, "pc-a", 1);
        assert_eq!(status, 200, "{doc}");
        reads += 1;
        let as_of = doc["as_of"].as_u64().expect("as_of") as usize;
        let mine: Vec<usize> = (0..as_of).filter(|i| i % 3 == 0).collect();
        let p = &doc["profile"];
        assert_eq!(p["events_total"], mine.len(), "at as_of {as_of}");
        assert_eq!(p["windows"]["7d"]["views"], mine.len(), "at as_of {as_of}");
        assert_eq!(
            p["top_categories"][0]["score"],
            mine.len(),
            "at as_of {as_of}"
        );
        // The clock is the newest event time of the same prefix.
        let newest = time::OffsetDateTime::from_unix_timestamp(T0 / 1000 + as_of as i64 - 1)
            .expect("time")
            .format(&time::format_description::well_known::Rfc3339)
            .expect("format");
        assert_eq!(doc["clock"], newest, "at as_of {as_of}");
        if as_of == N {
            break;
        }
    }
    assert_eq!(sender.join().expect("sender"), N as u64);
    assert!(reads > 0);
    server.shutdown();
}

// --- found bugs: unchecked sums of client-controlled amounts -------------------------

/// Sends `messages` and a harmless event of another user; the server must go on
/// serving: the other user is readable, and the big spender is either refused
/// (unknown) or has a sane, non-negative revenue and item count.
fn assert_survives(messages: &[Value]) {
    let server = TestServer::start_with(|c| c.min_seq_timeout = std::time::Duration::from_secs(2));
    let mut all = messages.to_vec();
    all.push(valid("bystander"));
    let answers = send_messages(server.tcp, &all);
    let (status, doc) = get_profile(server.http, "bystander", answers.seq());
    if status != 200 {
        // The engine is wedged; a graceful shutdown would wait for it forever.
        server.abandon();
        panic!("the engine stopped making progress: {status} {doc}");
    }
    assert_eq!(doc["profile"]["events_total"], 1);
    let (status, doc) = get_profile(server.http, "big-spender", answers.seq());
    if status == 200 {
        let p = &doc["profile"];
        assert!(p["revenue"].as_f64().is_some_and(|r| r >= 0.0), "{p}");
        assert!(p["items_purchased"].as_i64().is_some_and(|n| n >= 0), "{p}");
    } else {
        assert_eq!(status, 404, "{doc}");
    }
    server.shutdown();
}

/// Bug: each order amount is validated to fit in i64 minor units, but the profile
/// sums them unchecked (`Lifetime::plus_equals`, `self.revenue += rhs.revenue`):
/// two accepted orders of 9e16 USD overflow, the timely worker panics (debug) or the
/// revenue wraps negative (release), and no read ever completes again.
#[test]
fn regression_revenue_sum_overflow_killed_a_worker_and_stalled_every_read() {
    let order = |o: &str| {
        track(
            "big-spender",
            "Order Completed",
            T0,
            json!({"order_id": o, "revenue": 90_000_000_000_000_000u64}),
        )
    };
    assert_survives(&[order("o1"), order("o2")]);
}

/// Bug: a single order whose line quantities (each a valid i64, price 0 so the
/// money check passes) add up past i64 panics the worker in `ProfileFeeder::event`
/// (`ev.lines.iter().map(|l| l.quantity).sum()`).
#[test]
fn regression_quantity_sum_overflow_in_one_order_killed_a_worker() {
    let q = 9_000_000_000_000_000_000u64;
    assert_survives(&[track(
        "big-spender",
        "Order Completed",
        T0,
        json!({"order_id": "o", "products": [{"product_id": "a", "quantity": q}, {"product_id": "b", "quantity": q}]}),
    )]);
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
    let mut stream = TcpStream::connect(server.tcp).expect("connect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let (head, tail) = line.split_at(line.len() / 2);
    stream.write_all(head).expect("first half");
    stream.flush().expect("flush");
    std::thread::sleep(std::time::Duration::from_millis(200));
    stream.write_all(tail).expect("second half");
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    let answers = read_answers(stream);
    assert_eq!(
        (answers.accepted(), answers.rejected()),
        (1, 0),
        "{:?}",
        answers.lines
    );
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
    let mut stream = TcpStream::connect(server.tcp).expect("connect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    stream.write_all(body).expect("line");
    stream.write_all(b"\r").expect("cr");
    stream.flush().expect("flush");
    std::thread::sleep(std::time::Duration::from_millis(100));
    stream.write_all(b"\n").expect("lf");
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    let answers = read_answers(stream);
    assert_eq!(
        (answers.accepted(), answers.rejected()),
        (1, 0),
        "{:?}",
        answers.lines
    );
    server.shutdown();
}

/// Regression: a timestamp near `i64::MIN` was accepted and made every read of the
/// user panic on `clock - last_order_at`.
#[test]
fn regression_ancient_timestamp_overflowed_recency() {
    let server = TestServer::start();
    let messages = [
        json!({"type": "track", "userId": "old", "event": "Order Completed",
               "timestamp": -9_223_372_036_854_775_000i64, "properties": {"revenue": 1}}),
        track(
            "old",
            "Order Completed",
            T0,
            json!({"order_id": "o1", "revenue": 5}),
        ),
    ];
    let answers = send_messages(server.tcp, &messages);
    assert_eq!(
        (answers.accepted(), answers.rejected()),
        (1, 1),
        "{:?}",
        answers.lines
    );
    let reason = answers.error_for_line(1).expect("line 1 refused")["error"].to_string();
    assert!(reason.contains("before 1970"), "{reason}");
    let p = profile(server.http, "old", answers.seq());
    assert_eq!(p["profile"]["orders"], 1);
    server.shutdown();
}

/// Regression: cancelling an order and then refunding it without an amount took
/// the order's money back twice.
#[test]
fn regression_refund_after_cancel_took_the_money_back_twice() {
    let server = TestServer::start();
    let messages = [
        track(
            "c",
            "Order Completed",
            T0,
            json!({"order_id": "o1", "revenue": 100}),
        ),
        track(
            "c",
            "Order Cancelled",
            T0 + SECOND,
            json!({"order_id": "o1"}),
        ),
        track(
            "c",
            "Order Refunded",
            T0 + 2 * SECOND,
            json!({"order_id": "o1"}),
        ),
    ];
    let answers = send_messages(server.tcp, &messages);
    let p = &profile(server.http, "c", answers.seq())["profile"];
    assert_money(&p["revenue"], 0.0);
    assert_eq!(p["orders"], 0);
    assert_eq!(p["windows"]["7d"]["orders"], 0);
    assert_money(&p["windows"]["7d"]["revenue"], 0.0);
    server.shutdown();
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
