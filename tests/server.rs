//! Black-box tests of the whole server: events over TCP and HTTP to exact
//! profiles and windows over HTTP, aliases and odd ids, prefix-consistent reads,
//! durability across graceful restarts (malformed input, duplicates and limits
//! are in `ingest.rs`; crashes and faults in `reliability.rs`).
//!
//! Every read that follows a write waits with `min_seq` (read-your-writes) instead
//! of sleeping; nothing here asserts on timings.

mod util;

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

// --- 3. graceful restart --------------------------------------------------------------------

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
