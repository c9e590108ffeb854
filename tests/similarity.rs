//! Black-box tests of item similarities through the real server: events over
//! TCP and `/v1/batch`, `GET /v1/items/{id}/similar` over HTTP. The README's
//! worked example is the first test. Reads wait for their writes with
//! `min_seq`; nothing here asserts on timings.

mod util;

use serde_json::{json, Value};
use util::*;

fn order(user: &str, id: &str, ts: i64, items: &[&str], message: &str) -> Value {
    let products: Vec<Value> = items
        .iter()
        .map(|i| json!({"product_id": i, "price": 10, "quantity": 1}))
        .collect();
    json!({"type": "track", "userId": user, "event": "Order Completed", "timestamp": ts,
           "messageId": message,
           "properties": {"order_id": id, "revenue": 10 * items.len(), "products": products}})
}

fn similar(http: std::net::SocketAddr, item: &str, query: &str, seq: u64) -> Value {
    let (status, body) = get_json(
        http,
        &format!("/v1/items/{item}/similar?{query}&min_seq={seq}"),
    );
    assert_eq!(status, 200, "{item}?{query}: {body}");
    assert_eq!(body["item_id"], item);
    assert!(body["as_of"].as_u64().expect("as_of") >= seq, "{body}");
    body
}

/// `(item, count)` of an answer, in its order.
fn listed(body: &Value) -> Vec<(String, i64)> {
    body["similar"]
        .as_array()
        .expect("similar")
        .iter()
        .map(|s| {
            (
                s["item_id"].as_str().expect("item_id").to_owned(),
                s["count"].as_i64().expect("count"),
            )
        })
        .collect()
}

fn pairs(v: &[(&str, i64)]) -> Vec<(String, i64)> {
    v.iter().map(|(i, c)| (i.to_string(), *c)).collect()
}

#[test]
fn frequently_bought_together_follows_orders_and_refunds() {
    let s = TestServer::start_with(|c| c.builtin_segments = false);
    let sent = send_messages(
        s.tcp,
        &[
            order("ann", "o-1", T0, &["shoe", "sock"], "b1"),
            order("bob", "o-2", T0 + 1_000, &["shoe", "sock", "lace"], "b2"),
            order("cat", "o-3", T0 + 2_000, &["shoe", "hat"], "b3"),
        ],
    );
    let body = similar(s.http, "shoe", "kind=bought&measure=count", sent.seq());
    assert_eq!(body["kind"], "bought");
    assert_eq!(body["measure"], "count");
    assert_eq!(
        listed(&body),
        pairs(&[("sock", 2), ("hat", 1), ("lace", 1)]),
        "{body}"
    );
    assert_eq!(body["n"], 3);
    assert_eq!(body["units"], 3);
    // cosine(shoe, sock) = 2 / sqrt(3 * 2); lift = 2 * 3 / (3 * 2).
    let cosine = similar(s.http, "shoe", "kind=bought", sent.seq());
    assert_eq!(cosine["measure"], "cosine");
    assert_eq!(cosine["similar"][0]["item_id"], "sock");
    let score = cosine["similar"][0]["score"].as_f64().expect("score");
    assert!((score - 2.0 / 6f64.sqrt()).abs() < 1e-12, "{cosine}");
    let lift = similar(s.http, "shoe", "kind=bought&measure=lift&k=1", sent.seq());
    assert_eq!(lift["similar"].as_array().expect("list").len(), 1);
    assert_eq!(lift["similar"][0]["score"], 1.0);

    // Bought with both the shoe and the socks: only the laces (1 + 1 orders).
    let (status, body) = get_json(
        s.http,
        &format!("/v1/items/bundles?items=shoe,sock&min_seq={}", sent.seq()),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["items"], json!(["shoe", "sock"]));
    assert_eq!(
        body["bundles"],
        json!([{"item_id": "lace", "score": 2.0, "count": 1}])
    );

    // Bob sends the laces back; Ann's whole order is refunded.
    let (status, refunds) = post_batch(
        s.http,
        &[
            json!({"type": "track", "userId": "bob", "event": "Order Refunded",
                   "timestamp": T0 + 3_000, "messageId": "r1",
                   "properties": {"order_id": "o-2", "products": [{"product_id": "lace", "price": 10}]}}),
            json!({"type": "track", "userId": "ann", "event": "Order Refunded",
                   "timestamp": T0 + 4_000, "messageId": "r2",
                   "properties": {"order_id": "o-1"}}),
        ],
    );
    assert_eq!(status, 200, "{refunds}");
    let seq = refunds["seq"].as_u64().expect("seq");
    let body = similar(s.http, "shoe", "kind=bought&measure=count", seq);
    assert_eq!(listed(&body), pairs(&[("hat", 1), ("sock", 1)]), "{body}");
    assert_eq!(body["units"], 2);
    // Seen, but with no live co-occurrence: an empty list, not a 404.
    let lace = similar(s.http, "lace", "kind=bought", seq);
    assert_eq!(lace["similar"], json!([]), "{lace}");
    s.shutdown();
}

#[test]
fn viewed_together_includes_what_an_anonymous_visitor_saw_before_signing_in() {
    let s = TestServer::start_with(|c| c.builtin_segments = false);
    let view = |user: (&str, &str), item: &str, ts: i64, id: &str| {
        json!({"type": "track", user.0: user.1, "event": "Product Viewed", "timestamp": ts,
               "messageId": id, "properties": {"product_id": item, "price": 5}})
    };
    let sent = send_messages(
        s.tcp,
        &[
            view(("anonymousId", "a-1"), "tent", T0, "v1"),
            view(("anonymousId", "a-1"), "stove", T0 + 1_000, "v2"),
            view(("userId", "u-1"), "lamp", T0 + 2_000, "v3"),
        ],
    );
    let before = similar(s.http, "lamp", "measure=count", sent.seq());
    assert_eq!(before["kind"], "viewed");
    assert_eq!(listed(&before), pairs(&[]), "{before}");
    assert_eq!(
        listed(&similar(s.http, "tent", "measure=count", sent.seq())),
        pairs(&[("stove", 1)])
    );
    let (status, signed_in) = post_batch(
        s.http,
        &[
            json!({"type": "identify", "userId": "u-1", "anonymousId": "a-1",
                 "timestamp": T0 + 3_000, "messageId": "i1"}),
        ],
    );
    assert_eq!(status, 200, "{signed_in}");
    let seq = signed_in["seq"].as_u64().expect("seq");
    let after = similar(s.http, "lamp", "measure=count", seq);
    assert_eq!(
        listed(&after),
        pairs(&[("stove", 1), ("tent", 1)]),
        "{after}"
    );
    // One history now, not two.
    assert_eq!(after["units"], 1, "{after}");
    s.shutdown();
}

#[test]
fn similar_items_refuses_bad_parameters_and_unknown_items() {
    let s = TestServer::start_with(|c| c.builtin_segments = false);
    let sent = send_messages(s.tcp, &[order("ann", "o-1", T0, &["a", "b"], "m1")]);
    let seq = sent.seq();
    for (query, says) in [
        ("k=0", "k: expected 1 to 100"),
        ("k=101", "k: expected 1 to 100"),
        ("k=ten", "k: expected 1 to 100"),
        ("kind=clicked", "kind: expected viewed or bought"),
        ("measure=pearson", "measure: expected count, jaccard"),
        ("limit=3", "unknown parameter \"limit\""),
        ("min_seq=x", "min_seq: expected a non-negative integer"),
    ] {
        let (status, body) = get_json(s.http, &format!("/v1/items/a/similar?{query}"));
        assert_eq!(status, 400, "{query}: {body}");
        let message = body["error"].as_str().expect("error");
        assert!(message.contains(says), "{query}: {message}");
    }
    for (query, says) in [
        ("", "items: expected 1 to 20"),
        ("items=", "items: expected 1 to 20"),
        ("items=a&k=0", "k: expected 1 to 100"),
        ("items=a&kind=viewed", "unknown parameter \"kind\""),
    ] {
        let (status, body) = get_json(s.http, &format!("/v1/items/bundles?{query}"));
        assert_eq!(status, 400, "{query}: {body}");
        let message = body["error"].as_str().expect("error");
        assert!(message.contains(says), "{query}: {message}");
    }
    let (status, body) = get_json(
        s.http,
        &format!("/v1/items/bundles?items=a,never-sold&min_seq={seq}"),
    );
    assert_eq!(status, 404, "{body}");
    let (status, body) = get_json(
        s.http,
        &format!("/v1/items/never-sold/similar?min_seq={seq}"),
    );
    assert_eq!(status, 404, "{body}");
    assert!(body["error"]
        .as_str()
        .expect("error")
        .contains("never-sold"));
    let ok = similar(s.http, "a", "kind=bought&k=100&measure=llr", seq);
    assert_eq!(listed(&ok), pairs(&[("b", 1)]));
    // Repeated and space-padded items are one item each.
    let (status, body) = get_json(
        s.http,
        &format!("/v1/items/bundles?items=a,%20a,a&min_seq={seq}"),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["items"], json!(["a"]));
    assert_eq!(
        body["bundles"],
        json!([{"item_id": "b", "score": 1.0, "count": 1}])
    );
    let (_, metrics) = get_text(s.http, "/metrics");
    for gauge in [
        "shopstream_similarity_ignored_users",
        "shopstream_similarity_oversized_orders",
    ] {
        assert!(metrics.contains(gauge), "{gauge} missing from /metrics");
    }
    s.shutdown();
}

#[test]
fn switched_off_it_answers_404_saying_so_and_profiles_carry_on() {
    let s = TestServer::start_with(|c| {
        c.builtin_segments = false;
        c.similarity.enabled = false;
    });
    let sent = send_messages(s.tcp, &[order("ann", "o-1", T0, &["a", "b"], "m1")]);
    let (status, body) = get_json(
        s.http,
        &format!("/v1/items/a/similar?min_seq={}", sent.seq()),
    );
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]
            .as_str()
            .expect("error")
            .contains("similarity.enabled = false"),
        "{body}"
    );
    let (status, body) = get_json(s.http, "/v1/items/bundles?items=a");
    assert_eq!(status, 404, "{body}");
    assert_eq!(profile(s.http, "ann", sent.seq())["profile"]["orders"], 1);
    s.shutdown();
}

/// With a book of one order per worker, each order forgets the one before: x-1's
/// basket stays counted and a cancellation of it then finds nothing to take back;
/// y-1, forgotten and completed again, counts once. A restart from a snapshot, and
/// from the whole log, answers the same.
#[test]
fn forgotten_orders_keep_their_counts_across_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tweak = |c: &mut shopstream::config::Config| {
        c.builtin_segments = false;
        c.workers = 1;
        c.order_horizon = 1;
    };
    let s = TestServer::start_in(dir.path(), tweak);
    let sent = send_messages(
        s.tcp,
        &[
            order("ann", "x-1", T0, &["a", "b"], "m1"),
            order("bob", "o-2", T0 + 1_000, &["c"], "m2"),
            json!({"type": "track", "userId": "ann", "event": "Order Cancelled",
                   "timestamp": T0 + 2_000, "messageId": "m3", "properties": {"order_id": "x-1"}}),
            order("cat", "y-1", T0 + 3_000, &["d", "e"], "m4"),
            order("bob", "o-3", T0 + 4_000, &["f"], "m5"),
            order("cat", "y-1", T0 + 5_000, &["d", "e"], "m6"),
        ],
    );
    let answer = |http, seq| {
        ["a", "d"].map(|item| {
            let body = similar(http, item, "kind=bought&measure=count", seq);
            (listed(&body), body["n"].clone(), body["units"].clone())
        })
    };
    let live = answer(s.http, sent.seq());
    assert_eq!(
        live,
        [
            (pairs(&[("b", 1)]), json!(1), json!(4)),
            (pairs(&[("e", 1)]), json!(1), json!(4)),
        ]
    );
    let (status, snap) = post(s.http, "/v1/admin/snapshot", b"");
    assert_eq!(status, 201, "{snap}");
    s.shutdown();
    let s = TestServer::start_in(dir.path(), tweak);
    assert_eq!(answer(s.http, sent.seq()), live, "from the snapshot");
    s.shutdown();
    std::fs::remove_dir_all(dir.path().join("snapshots")).expect("remove snapshots");
    let s = TestServer::start_in(dir.path(), tweak);
    assert_eq!(answer(s.http, sent.seq()), live, "replayed");
    s.shutdown();
}

/// The value of a counter in `/metrics` (0 before it is first counted).
fn counter(http: std::net::SocketAddr, name: &str) -> u64 {
    let (status, text) = get_text(http, "/metrics");
    assert_eq!(status, 200);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[test]
fn a_popular_items_top_partners_are_read_without_reading_all_of_them() {
    // 1,000 users view "hit" and an item of their own; top-j is viewed also by
    // the first 40 + 15 j of them. "hit" has 1,010 partners.
    let s = TestServer::start_with(|c| c.builtin_segments = false);
    let view = |user: usize, item: String, n: usize| {
        json!({"type": "track", "userId": format!("u-{user}"), "event": "Product Viewed",
               "timestamp": T0 + n as i64, "messageId": format!("v{n}"),
               "properties": {"product_id": item}})
    };
    let mut messages = Vec::new();
    for user in 0..1_000 {
        messages.push(view(user, "hit".into(), messages.len()));
        messages.push(view(user, format!("once-{user}"), messages.len()));
        for j in (0..10).filter(|j| user < 40 + 15 * j) {
            messages.push(view(user, format!("top-{j}"), messages.len()));
        }
    }
    let sent = send_messages(s.tcp, &messages);
    assert_eq!(sent.accepted(), messages.len() as u64);
    let metric = "shopstream_similar_partners_read_total";
    let top = |js: &[usize]| -> Vec<(String, i64)> {
        js.iter()
            .map(|j| (format!("top-{j}"), 40 + 15 * *j as i64))
            .collect()
    };
    // cosine(hit, top-j) = m / sqrt(1000 m) with m = 40 + 15 j; a partner seen
    // once scores 1 / sqrt(1000): the read stops at the first of those.
    let before = counter(s.http, metric);
    let cosine = similar(s.http, "hit", "k=5", sent.seq());
    assert_eq!(listed(&cosine), top(&[9, 8, 7, 6, 5]), "{cosine}");
    let score = cosine["similar"][0]["score"].as_f64().expect("score");
    assert!((score - (175f64 / 1000.0).sqrt()).abs() < 1e-12, "{cosine}");
    let read = counter(s.http, metric) - before;
    assert!(read < 100, "read {read} of 1,010 partners for a top 5");
    let count = similar(s.http, "hit", "k=3&measure=count", sent.seq());
    assert_eq!(listed(&count), top(&[9, 8, 7]), "{count}");
    let jaccard = similar(s.http, "hit", "k=10&measure=jaccard", sent.seq());
    assert_eq!(
        listed(&jaccard),
        top(&[9, 8, 7, 6, 5, 4, 3, 2, 1, 0]),
        "{jaccard}"
    );
    let bounded = counter(s.http, metric) - before;
    assert!(
        bounded < 200,
        "read {bounded} partners in three bounded reads"
    );
    // lift is not bounded by the count: it reads every partner (here they all
    // score 1, everyone who saw one saw "hit", and the greatest count wins).
    let lift = similar(s.http, "hit", "k=1&measure=lift", sent.seq());
    assert_eq!(listed(&lift), top(&[9]), "{lift}");
    assert!(counter(s.http, metric) - before >= bounded + 1_010);
    s.shutdown();
}
