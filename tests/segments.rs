//! Segments through the real server over real sockets: definitions over HTTP
//! (create, change, delete, errors), queries, time-driven exits, the SSE change
//! feed resumed after a reconnect, definitions changed while events stream in,
//! and definitions surviving a restart.

mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{json, Value};
use util::*;

fn define(server: &TestServer, name: &str, rule: &str) -> Value {
    define_segment(server.http, name, rule)
}

/// Every member of `name`, paging `limit` at a time (checks the pages too).
fn members(server: &TestServer, name: &str, limit: usize, min_seq: u64) -> Vec<String> {
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            None => format!("/v1/segments/{name}/members?limit={limit}&min_seq={min_seq}"),
            Some(a) => {
                format!("/v1/segments/{name}/members?limit={limit}&after={a}&min_seq={min_seq}")
            }
        };
        let (status, body) = get_json(server.http, &path);
        assert_eq!(status, 200, "{body}");
        let page = body["members"].as_array().expect("members");
        assert!(page.len() <= limit, "{body}");
        all.extend(page.iter().map(|v| v.as_str().expect("id").to_owned()));
        match body["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => break,
        }
    }
    let unique: BTreeSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "a member on two pages: {all:?}");
    all
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn user_segments(server: &TestServer, user: &str, min_seq: u64) -> BTreeMap<String, Value> {
    let (status, body) = get_json(
        server.http,
        &format!("/v1/users/{user}/segments?min_seq={min_seq}"),
    );
    assert_eq!(status, 200, "{body}");
    body["segments"]
        .as_array()
        .expect("segments")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().expect("name").to_owned(),
                s["since"].clone(),
            )
        })
        .collect()
}

fn order(user: &str, ts: i64, id: &str, revenue: f64) -> Value {
    track(
        user,
        "Order Completed",
        ts,
        json!({"order_id": id, "revenue": revenue, "products": [{"product_id": "p1", "price": revenue, "quantity": 1}]}),
    )
}

fn view(user: &str, ts: i64) -> Value {
    track(
        user,
        "Product Viewed",
        ts,
        json!({"product_id": "p1", "category": "shoes"}),
    )
}

#[test]
fn segments_are_defined_queried_changed_and_deleted_over_http() {
    let server = TestServer::start();
    let created = define(&server, "buyers", "orders >= 1 and revenue >= 10");
    assert_eq!(created["size"], 0, "{created}");
    assert_eq!(created["source"], "api");
    let defined_at = created["as_of"].as_u64().expect("as_of");

    let answers = send_messages(
        server.tcp,
        &[
            order("alice", T0, "o1", 25.0),
            order("bob", T0 + MINUTE, "o2", 12.5),
            order("carol", T0 + 2 * MINUTE, "o3", 5.0),
            view("dave", T0 + 3 * MINUTE),
        ],
    );
    let seq = answers.seq();
    assert_eq!(
        sorted(members(&server, "buyers", 1, seq)),
        ["alice", "bob"],
        "paged one at a time"
    );
    assert_eq!(
        sorted(members(&server, "buyers", 100, seq)),
        ["alice", "bob"]
    );

    let alice = user_segments(&server, "alice", seq);
    assert!(alice.contains_key("buyers"), "{alice:?}");
    assert!(
        alice.contains_key("lifecycle:new"),
        "built-ins are on: {alice:?}"
    );
    assert_eq!(alice["buyers"]["as_of"], seq, "entered with the batch");
    assert!(!user_segments(&server, "carol", seq).contains_key("buyers"));
    // With no history kept (the default), `as_of` reads the newest point when it
    // is at or below it, and says 410 for an older one.
    let (status, now) = get_json(server.http, &format!("/v1/users/alice/profile?as_of={seq}"));
    assert_eq!((status, now["as_of"].as_u64()), (200, Some(seq)), "{now}");
    let (status, body) = get_json(server.http, "/v1/users/alice/profile?as_of=1");
    assert_eq!(status, 410, "{body}");

    let (status, c) = get_json(
        server.http,
        &format!("/v1/segments/buyers/contains/bob?min_seq={seq}"),
    );
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["member"], true);
    assert_eq!(c["since"]["as_of"], seq);
    let (_, c) = get_json(server.http, "/v1/segments/buyers/contains/dave");
    assert_eq!(c["member"], false);
    assert_eq!(c["since"], Value::Null);

    let (status, shown) = get_json(server.http, &format!("/v1/segments/buyers?min_seq={seq}"));
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["size"], 2);
    assert_eq!(shown["rule"], "orders >= 1 and revenue >= 10");
    assert_eq!(shown["defined_at"]["as_of"], defined_at);
    let history = shown["history"].as_array().expect("history");
    assert_eq!(history.last().expect("a point")["size"], 2, "{shown}");
    for grain in ["per_minute", "per_hour"] {
        let series = shown[grain].as_array().expect("a series");
        assert_eq!(
            series.last().expect("a bucket")["size"],
            2,
            "{grain}: {shown}"
        );
    }

    let (status, list) = get_json(server.http, &format!("/v1/segments?min_seq={seq}"));
    assert_eq!(status, 200, "{list}");
    let listed: BTreeMap<String, Value> = list["segments"]
        .as_array()
        .expect("segments")
        .iter()
        .map(|s| (s["name"].as_str().expect("name").to_owned(), s.clone()))
        .collect();
    assert_eq!(listed["buyers"]["size"], 2);
    assert_eq!(listed["lifecycle:new"]["size"], 4, "{list}");
    assert_eq!(listed["lifecycle:new"]["source"], "builtin");
    assert!(listed.contains_key("tier:gold") && listed.contains_key("rfm:champions"));

    // A change is evaluated over all history and answers at once.
    let (status, changed) = request(
        server.http,
        "PUT",
        "/v1/segments/buyers",
        Some(&json!({"rule": "revenue >= 20"})),
    );
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["size"], 1);
    let after_change = changed["as_of"].as_u64().expect("as_of");
    assert_eq!(members(&server, "buyers", 10, after_change), ["alice"]);
    // Alice stayed in: her `since` is still the batch's.
    assert_eq!(
        user_segments(&server, "alice", after_change)["buyers"]["as_of"],
        seq
    );

    let (status, deleted) = request(server.http, "DELETE", "/v1/segments/buyers", None);
    assert_eq!(status, 200, "{deleted}");
    let (status, _) = get_json(server.http, "/v1/segments/buyers");
    assert_eq!(status, 404);
    assert!(!user_segments(&server, "alice", seq).contains_key("buyers"));
    let (_, metrics) = get_text(server.http, "/metrics");
    for series in [
        "shopstream_segment_changes_total",
        "shopstream_segment_definitions_total",
        "shopstream_segment_feed_retained",
    ] {
        assert!(metrics.contains(series), "no {series} in /metrics");
    }
    // PUT creates.
    let (status, _) = request(
        server.http,
        "PUT",
        "/v1/segments/buyers",
        Some(&json!({"rule": "orders >= 1"})),
    );
    assert_eq!(status, 201);
    assert_eq!(members(&server, "buyers", 10, seq).len(), 3);
    server.shutdown();
}

#[test]
fn bad_definitions_and_parameters_get_clear_errors() {
    let server = TestServer::start();
    let post = |body: Value| request(server.http, "POST", "/v1/segments", Some(&body));

    let (status, body) = post(json!({"name": "x", "rule": "orders >= "}));
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["rule_error"]["at"], 10, "{body}");
    assert!(
        body["error"]
            .as_str()
            .expect("error")
            .contains("expected a value"),
        "{body}"
    );

    let (status, body) = post(json!({"name": "x", "rule": "ordrs > 1"}));
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .expect("error")
            .contains("unknown field `ordrs`"),
        "{body}"
    );

    let (status, body) = post(json!({"name": "x", "rule": "orders > \"many\""}));
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .expect("error")
            .contains("is a number"),
        "{body}"
    );

    let (status, body) = post(json!({"name": "bad name!", "rule": "orders > 1"}));
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().expect("error").contains("name"),
        "{body}"
    );

    let (status, body) = post(json!({"rule": "orders > 1"}));
    assert_eq!(status, 400, "{body}");

    let (status, body) = post(json!({"name": "lifecycle:new", "rule": "orders > 1"}));
    assert_eq!(status, 409, "configured segments are not the API's: {body}");
    let (status, body) = request(
        server.http,
        "PUT",
        "/v1/segments/tier:gold",
        Some(&json!({"rule": "orders > 1"})),
    );
    assert_eq!(status, 409, "{body}");
    let (status, _) = request(server.http, "DELETE", "/v1/segments/rfm:lost", None);
    assert_eq!(status, 409);

    define(&server, "x", "orders > 1");
    let (status, body) = post(json!({"name": "x", "rule": "orders > 2"}));
    assert_eq!(status, 409, "POST does not replace: {body}");

    let (status, _) = request(server.http, "DELETE", "/v1/segments/nope", None);
    assert_eq!(status, 404);
    for path in [
        "/v1/segments/nope",
        "/v1/segments/nope/members",
        "/v1/segments/nope/contains/u1",
        "/v1/stream/segments?name=nope",
    ] {
        let (status, body) = get_json(server.http, path);
        assert_eq!(status, 404, "{path}: {body}");
    }
    for path in [
        "/v1/segments/x/members?limit=0",
        "/v1/segments/x/members?limit=100000",
        "/v1/segments/x/members?after=zz",
        "/v1/segments/x?min_seq=-1",
        "/v1/users/u1/segments?min_seq=x",
        "/v1/segments/x?as_of=three",
        "/v1/users/u1/profile?as_of=-3",
    ] {
        let (status, body) = get_json(server.http, path);
        assert_eq!(status, 400, "{path}: {body}");
    }
    server.shutdown();
}

#[test]
fn members_leave_when_the_clock_passes_with_no_event_of_theirs() {
    let server = TestServer::start_with(|c| c.builtin_segments = false);
    define(&server, "browsing", "windows.7d.views >= 1");
    define(&server, "lapsed", "days_since(last_order_at) > 3");
    let feed = SseClient::connect(server.http, "/v1/stream/segments", None);
    assert_eq!(feed.status, 200);

    let seq = send_messages(
        server.tcp,
        &[view("erin", T0), order("erin", T0 + MINUTE, "o1", 10.0)],
    )
    .seq();
    assert_eq!(members(&server, "browsing", 10, seq), ["erin"]);
    assert!(members(&server, "lapsed", 10, seq).is_empty());

    // Another user's events move the (event) clock: 4 days, then 8.
    let seq = send_messages(server.tcp, &[view("frank", T0 + 4 * DAY + 2 * MINUTE)]).seq();
    assert_eq!(
        members(&server, "lapsed", 10, seq),
        ["erin"],
        "3 days after her order"
    );
    assert_eq!(
        sorted(members(&server, "browsing", 10, seq)),
        ["erin", "frank"]
    );
    let seq = send_messages(server.tcp, &[view("frank", T0 + 8 * DAY)]).seq();
    assert_eq!(
        members(&server, "browsing", 10, seq),
        ["frank"],
        "erin's view left the window"
    );
    let (_, c) = get_json(
        server.http,
        &format!("/v1/segments/browsing/contains/erin?min_seq={seq}"),
    );
    assert_eq!(c["member"], false);

    // The feed told it as it happened, in order.
    let mut seen = Vec::new();
    while let Some(e) = feed.next_change(Duration::from_secs(5)) {
        let d: Value = serde_json::from_str(&e.data).expect("json");
        seen.push((
            d["segment"].as_str().expect("segment").to_owned(),
            d["user_id"].as_str().expect("user").to_owned(),
            d["change"].as_str().expect("change").to_owned(),
        ));
        if seen.len() == 4 {
            break;
        }
    }
    let t = |s: &str, u: &str, c: &str| (s.to_owned(), u.to_owned(), c.to_owned());
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_eq!(seen[0], t("browsing", "erin", "enter"));
    // One epoch: frank's view, and erin's lapse that the clock brought.
    let middle: BTreeSet<_> = seen[1..3].iter().cloned().collect();
    assert_eq!(
        middle,
        BTreeSet::from([
            t("browsing", "frank", "enter"),
            t("lapsed", "erin", "enter")
        ])
    );
    assert_eq!(seen[3], t("browsing", "erin", "exit"));
    drop(feed);
    server.shutdown();
}

#[test]
fn the_change_feed_resumes_after_a_reconnect_with_nothing_missed_or_repeated() {
    let server = TestServer::start_with(|c| c.builtin_segments = false);
    define(&server, "viewers", "events.\"Product Viewed\" >= 1");
    define(&server, "regulars", "events.\"Product Viewed\" >= 3");
    let first = SseClient::connect(server.http, "/v1/stream/segments", None);
    let ready = first.next(Duration::from_secs(10)).expect("a ready event");
    assert_eq!(ready.event.as_deref(), Some("ready"), "{ready:?}");

    let users: Vec<String> = (0..40).map(|i| format!("sse-{i}")).collect();
    let mut messages = Vec::new();
    for round in 0..3 {
        for (i, u) in users.iter().enumerate() {
            messages.push(view(u, T0 + (round * 40 + i as i64) * MINUTE));
        }
    }
    // 40 enter "viewers" in round one, 40 enter "regulars" in round three.
    let seq = send_messages(server.tcp, &messages).seq();
    wait_visible_seq(&server, seq);

    let mut got: Vec<(String, String, String)> = Vec::new();
    let mut last_id = None;
    for _ in 0..30 {
        let e = first
            .next_change(Duration::from_secs(10))
            .expect("an event");
        let d: Value = serde_json::from_str(&e.data).expect("json");
        got.push(key(&d));
        last_id = e.id.clone();
    }
    drop(first);

    let second = SseClient::connect(server.http, "/v1/stream/segments", last_id.as_deref());
    assert_eq!(second.status, 200);
    while got.len() < 80 {
        let e = second
            .next_change(Duration::from_secs(10))
            .expect("the rest after resuming");
        let d: Value = serde_json::from_str(&e.data).expect("json");
        got.push(key(&d));
    }
    assert!(
        second.next(Duration::from_millis(300)).is_none(),
        "nothing more"
    );
    let unique: BTreeSet<_> = got.iter().cloned().collect();
    assert_eq!(unique.len(), 80, "no repeats");
    for u in &users {
        assert!(unique.contains(&("viewers".into(), u.clone(), "enter".into())));
        assert!(unique.contains(&("regulars".into(), u.clone(), "enter".into())));
    }

    drop(second);

    // Read, then follow from the epoch the read answered at: exactly what came after.
    let (_, page) = get_json(
        server.http,
        &format!("/v1/segments/regulars/members?limit=1&min_seq={seq}"),
    );
    let epoch = page["epoch"].as_u64().expect("epoch");
    let more: Vec<Value> = (0..3)
        .map(|i| view("late-joiner", T0 + (200 + i) * MINUTE))
        .collect();
    let seq = send_messages(server.tcp, &more).seq();
    wait_visible_seq(&server, seq);
    let third = SseClient::connect(
        server.http,
        "/v1/stream/segments?name=regulars",
        Some(&epoch.to_string()),
    );
    let e = third
        .next_change(Duration::from_secs(10))
        .expect("the late joiner");
    let d: Value = serde_json::from_str(&e.data).expect("json");
    assert_eq!(
        key(&d),
        ("regulars".into(), "late-joiner".into(), "enter".into())
    );
    assert!(
        third.next_change(Duration::from_millis(300)).is_none(),
        "only that"
    );
    drop(third);

    for path in [
        "/v1/stream/segments?last_event_id=x.y",
        "/v1/stream/segments?name=",
        "/v1/stream/segments?name=,",
    ] {
        let (status, body) = get_json(server.http, path);
        assert_eq!(status, 400, "{path}: {body}");
    }
    server.shutdown();
}

fn key(d: &Value) -> (String, String, String) {
    (
        d["segment"].as_str().expect("segment").to_owned(),
        d["user_id"].as_str().expect("user").to_owned(),
        d["change"].as_str().expect("change").to_owned(),
    )
}

fn wait_visible_seq(server: &TestServer, seq: u64) {
    let (status, body) = get_json(server.http, &format!("/v1/users/_/segments?min_seq={seq}"));
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_feed_too_old_to_resume_answers_gone() {
    let server = TestServer::start_with(|c| {
        c.builtin_segments = false;
        c.feed_retention = 5;
    });
    define(&server, "viewers", "events.\"Product Viewed\" >= 1");
    // Four epochs of five changes: whole epochs are evicted, never the newest.
    for batch in 0..4 {
        let messages: Vec<Value> = (0..5)
            .map(|i| view(&format!("old-{batch}-{i}"), T0 + (batch * 5 + i) * MINUTE))
            .collect();
        let seq = send_messages(server.tcp, &messages).seq();
        wait_visible_seq(&server, seq);
    }
    let (status, body) = get_json(server.http, "/v1/stream/segments?last_event_id=0.0");
    assert_eq!(status, 410, "{body}");
    let (ahead, ahead_body) = get_json(server.http, "/v1/stream/segments?last_event_id=999999");
    assert_eq!(ahead, 400, "a position ahead of the feed: {ahead_body}");
    assert!(
        body["error"]
            .as_str()
            .expect("error")
            .contains("no longer holds"),
        "{body}"
    );
    server.shutdown();
}

#[test]
fn definitions_changed_while_events_stream_in_end_where_a_fresh_server_starts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = TestServer::start_in(dir.path(), |c| c.builtin_segments = false);
    let messages = workload(3000, 60, 5 * MINUTE, "live");
    let tcp = server.tcp;
    let chunks: Vec<Vec<Value>> = messages.chunks(100).map(<[Value]>::to_vec).collect();
    let sender = std::thread::spawn(move || {
        let mut seq = 0;
        for c in chunks {
            seq = send_messages(tcp, &c).seq();
        }
        seq
    });
    let rules = [
        ("a", "orders >= 1"),
        ("b", "windows.30d.views >= 2"),
        ("c", "revenue >= 50 or traits.plan exists"),
    ];
    for (name, rule) in rules {
        define(&server, name, rule);
        std::thread::sleep(Duration::from_millis(20));
    }
    let put = |name: &str, rule: &str| {
        let (status, body) = request(
            server.http,
            "PUT",
            &format!("/v1/segments/{name}"),
            Some(&json!({"rule": rule})),
        );
        assert!(status == 200 || status == 201, "{body}");
    };
    put("a", "orders >= 2");
    std::thread::sleep(Duration::from_millis(20));
    let (status, _) = request(server.http, "DELETE", "/v1/segments/c", None);
    assert_eq!(status, 200);
    put("d", "days_since(last_seen) >= 2");
    let seq = sender.join().expect("sender");
    let live: BTreeMap<&str, Vec<String>> = ["a", "b", "d"]
        .into_iter()
        .map(|n| (n, sorted(members(&server, n, 7, seq))))
        .collect();
    assert!(live.values().any(|m| !m.is_empty()), "{live:?}");
    server.shutdown();

    // The same events into a fresh server that knew the final rules from the start.
    let fresh = TestServer::start_with(|c| c.builtin_segments = false);
    define(&fresh, "a", "orders >= 2");
    define(&fresh, "b", "windows.30d.views >= 2");
    define(&fresh, "d", "days_since(last_seen) >= 2");
    let mut seq2 = 0;
    for c in messages.chunks(100) {
        seq2 = send_messages(fresh.tcp, c).seq();
    }
    for (name, want) in &live {
        assert_eq!(
            &sorted(members(&fresh, name, 50, seq2)),
            want,
            "segment {name}"
        );
    }
    fresh.shutdown();

    // A restart on the first log replays events and definitions alike.
    let again = TestServer::start_in(dir.path(), |c| c.builtin_segments = false);
    let (_, list) = get_json(again.http, "/v1/segments");
    let names: Vec<&str> = list["segments"]
        .as_array()
        .expect("segments")
        .iter()
        .map(|s| s["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["a", "b", "d"]);
    for (name, want) in &live {
        assert_eq!(
            &sorted(members(&again, name, 1000, seq)),
            want,
            "replayed {name}"
        );
    }
    again.shutdown();
}

#[test]
fn the_segment_file_is_applied_at_start_and_followed_across_restarts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("segments.toml");
    let write = |text: &str| std::fs::write(&file, text).expect("write segments file");
    write(
        "[[segment]]\nname = \"repeat\"\nrule = \"orders >= 2\"\n\n\
         [[segment]]\nname = \"gone_soon\"\nrule = \"orders >= 1\"\n",
    );
    let data = dir.path().join("data");
    let tweak = |c: &mut shopstream::config::Config| {
        c.builtin_segments = false;
        c.segments_file = Some(file.clone());
    };
    let server = TestServer::start_in(&data, tweak);
    let seq = send_messages(
        server.tcp,
        &[
            order("gina", T0, "g1", 10.0),
            order("gina", T0 + MINUTE, "g2", 10.0),
            order("hal", T0 + 2 * MINUTE, "h1", 10.0),
        ],
    )
    .seq();
    assert_eq!(members(&server, "repeat", 10, seq), ["gina"]);
    define(&server, "mine", "orders >= 1");
    let (status, body) = request(
        server.http,
        "PUT",
        "/v1/segments/repeat",
        Some(&json!({"rule": "orders >= 5"})),
    );
    assert_eq!(status, 409, "the file owns it: {body}");
    server.shutdown();

    // Edited file: one rule changed, one removed, one added.
    write(
        "[[segment]]\nname = \"repeat\"\nrule = \"orders >= 1\"\n\n\
         [[segment]]\nname = \"new_one\"\nrule = \"revenue >= 20\"\n",
    );
    let server = TestServer::start_in(&data, tweak);
    let (_, list) = get_json(server.http, "/v1/segments");
    let sources: BTreeMap<String, String> = list["segments"]
        .as_array()
        .expect("segments")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().expect("name").to_owned(),
                s["source"].as_str().expect("source").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        sources,
        BTreeMap::from([
            ("mine".to_owned(), "api".to_owned()),
            ("new_one".to_owned(), "config".to_owned()),
            ("repeat".to_owned(), "config".to_owned()),
        ])
    );
    assert_eq!(sorted(members(&server, "repeat", 10, seq)), ["gina", "hal"]);
    assert_eq!(members(&server, "new_one", 10, seq), ["gina"]);
    server.shutdown();

    // A bad rule in the file stops the start with its name and position.
    write("[[segment]]\nname = \"broken\"\nrule = \"orders >\"\n");
    let mut config = util::config(&data);
    tweak(&mut config);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let err = rt
        .block_on(shopstream::server::Server::start(config, |_, _| {}))
        .err()
        .expect("a bad rule stops the start")
        .to_string();
    assert!(err.contains("broken") && err.contains("at 8"), "{err}");
}

#[test]
fn a_filtered_subscriber_is_moved_past_changes_it_does_not_want() {
    let server = TestServer::start_with(|c| {
        c.builtin_segments = false;
        c.feed_retention = 5;
    });
    define(&server, "quiet", "orders >= 1000");
    define(&server, "busy", "events.\"Product Viewed\" >= 1");
    let feed = SseClient::connect(server.http, "/v1/stream/segments?name=quiet", None);
    for batch in 0..4 {
        let messages: Vec<Value> = (0..5)
            .map(|i| view(&format!("busy-{batch}-{i}"), T0 + (batch * 5 + i) * MINUTE))
            .collect();
        let seq = send_messages(server.tcp, &messages).seq();
        wait_visible_seq(&server, seq);
    }
    // No change of "quiet", but ids that move past the others' epochs.
    let mut last_id = None;
    while let Some(e) = feed.next(Duration::from_millis(500)) {
        assert_ne!(e.event.as_deref(), Some("segment"), "{e:?}");
        if e.id.is_some() {
            last_id = e.id;
        }
    }
    let last_id = last_id.expect("an id past the busy epochs");
    drop(feed);
    // Other segments' changes went past the retention; this subscriber missed
    // nothing and resumes.
    let again = SseClient::connect(
        server.http,
        "/v1/stream/segments?name=quiet",
        Some(&last_id),
    );
    assert_eq!(again.status, 200, "resumed at {last_id}");
    drop(again);
    server.shutdown();
}

#[test]
fn reads_go_back_to_a_recent_as_of_and_say_when_it_is_no_longer_kept() {
    let server = TestServer::start_with(|c| {
        c.builtin_segments = false;
        c.as_of_history = 3;
    });
    let first = send_messages(server.tcp, &[view("ivy", T0), view("ivy", T0 + MINUTE)]).seq();
    wait_visible_seq(&server, first);
    let second = send_messages(server.tcp, &[view("ivy", T0 + 2 * MINUTE)]).seq();
    wait_visible_seq(&server, second);
    // Defined after both: its record shares `second`'s sequence number, and
    // `as_of=second` is the newest point at or below it, the definition's.
    define(&server, "fans", "events.\"Product Viewed\" >= 3");

    let at = |seq: u64| get_json(server.http, &format!("/v1/users/ivy/profile?as_of={seq}"));
    let (status, then) = at(first);
    assert_eq!(status, 200, "{then}");
    assert_eq!(then["as_of"], first);
    assert_eq!(then["profile"]["events_total"], 2);
    let (_, now) = at(second);
    assert_eq!(now["profile"]["events_total"], 3);
    let (_, c) = get_json(
        server.http,
        &format!("/v1/segments/fans/contains/ivy?as_of={second}"),
    );
    assert_eq!(c["member"], true, "{c}");
    let (status, body) = get_json(
        server.http,
        &format!("/v1/segments/fans/contains/ivy?as_of={first}"),
    );
    assert_eq!(status, 404, "fans did not exist at {first}: {body}");

    // Three more points push the first out of the kept history.
    for i in 0..3 {
        let seq = send_messages(server.tcp, &[view("jay", T0 + (10 + i) * MINUTE)]).seq();
        wait_visible_seq(&server, seq);
    }
    let (status, body) = at(first);
    assert_eq!(status, 410, "{body}");
    assert!(
        body["error"]
            .as_str()
            .expect("error")
            .contains("http.as_of_history"),
        "{body}"
    );
    server.shutdown();
}
