//! Black-box tests of recommendations, popular and trending items through the
//! real server: events over TCP and `/v1/batch`, answers over HTTP. The
//! README's worked example is the first test. Reads wait for their writes with
//! `min_seq`; nothing here asserts on timings.

mod util;

use serde_json::{json, Value};
use util::*;

fn event(user: &str, name: &str, item: &str, category: &str, ts: i64, id: &str) -> Value {
    json!({"type": "track", "userId": user, "event": name, "timestamp": ts, "messageId": id,
           "properties": {"product_id": item, "category": category, "price": 10}})
}

fn view(user: &str, item: &str, category: &str, ts: i64, id: &str) -> Value {
    event(user, "Product Viewed", item, category, ts, id)
}

fn get(http: std::net::SocketAddr, path: &str, seq: u64) -> Value {
    let sep = if path.contains('?') { '&' } else { '?' };
    let (status, body) = get_json(http, &format!("{path}{sep}min_seq={seq}"));
    assert_eq!(status, 200, "{path}: {body}");
    assert!(body["as_of"].as_u64().expect("as_of") >= seq, "{body}");
    body
}

/// The item ids of a list, in order.
fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .expect("a list")
        .iter()
        .map(|i| i["item_id"].as_str().expect("item_id").to_owned())
        .collect()
}

fn post(http: std::net::SocketAddr, messages: &[Value]) -> u64 {
    let (status, body) = post_batch(http, messages);
    assert_eq!(status, 200, "{body}");
    body["seq"].as_u64().expect("seq")
}

/// The shop of the README: tents and stoves (camping), a lamp and a hat.
fn shop() -> Vec<Value> {
    vec![
        view("u1", "tent", "camping", T0, "s1"),
        view("u1", "stove", "camping", T0 + 1_000, "s2"),
        view("u2", "tent", "camping", T0 + 2_000, "s3"),
        view("u2", "lamp", "camping", T0 + 3_000, "s4"),
        view("u3", "mug", "kitchen", T0 + 4_000, "s5"),
        view("u3", "hat", "clothing", T0 + 5_000, "s6"),
        view("u4", "hat", "clothing", T0 + 6_000, "s7"),
        event("u4", "Product Added", "hat", "clothing", T0 + 7_000, "s8"),
    ]
}

#[test]
fn recommendations_switch_from_popular_to_personal_and_obey_cart_and_orders() {
    let s = TestServer::start_with(|c| c.builtin_segments = false);
    let seq = send_messages(s.tcp, &shop()).seq();

    // Popular in the last week: the hat (u3 viewed it, u4 put it in the cart:
    // 1 + 3), then the tent (two viewers), then the rest, by name.
    let popular = get(s.http, "/v1/items/popular?k=3", seq);
    assert_eq!(popular["window"], "7d");
    assert_eq!(
        popular["items"],
        json!([{"item_id": "hat", "score": 4}, {"item_id": "tent", "score": 2},
               {"item_id": "lamp", "score": 1}]),
        "{popular}"
    );
    let camping = get(s.http, "/v1/items/popular?category=camping", seq);
    assert_eq!(
        ids(&camping["items"]),
        ["tent", "lamp", "stove"],
        "{camping}"
    );

    // Nobody knows "zed": popular items, 200.
    let zed = get(s.http, "/v1/users/zed/recommendations?k=2", seq);
    assert_eq!(zed["strategy"], "popular", "{zed}");
    assert_eq!(ids(&zed["items"]), ["hat", "tent"], "{zed}");
    assert_eq!(zed["items"][0]["source"], "popular");

    // Ann has seen one camping item: popular camping items she has not seen
    // first, then popular items of any category.
    let seq = post(
        s.http,
        &[view("ann", "stove", "camping", T0 + 10_000, "a1")],
    );
    let ann = get(s.http, "/v1/users/ann/recommendations?k=4", seq);
    assert_eq!(ann["strategy"], "popular", "{ann}");
    assert_eq!(ids(&ann["items"]), ["tent", "lamp", "hat", "mug"], "{ann}");

    // Three items in her history: personal. The tent went with the stove (u1);
    // the lamp goes with the tent (u2), the mug and the hat with nothing she saw.
    let seq = post(
        s.http,
        &[
            view("ann", "tent", "camping", T0 + 11_000, "a2"),
            view("ann", "mug", "kitchen", T0 + 12_000, "a3"),
        ],
    );
    let ann = get(s.http, "/v1/users/ann/recommendations?k=3", seq);
    assert_eq!(ann["strategy"], "personal", "{ann}");
    assert_eq!(ann["history_items"], 3);
    let items = ann["items"].as_array().expect("items");
    // Her own history is not recommended back: the lamp (via the tent), the hat
    // (via the mug), and then popular fill.
    assert_eq!(items[0]["item_id"], "lamp", "{ann}");
    assert_eq!(items[0]["because"], json!(["tent"]), "{ann}");
    assert_eq!(items[0]["source"], "personal");
    assert_eq!(items[1]["item_id"], "hat", "{ann}");
    assert_eq!(items[1]["because"], json!(["mug"]), "{ann}");
    assert!(items[0]["score"].as_f64().unwrap() > 0.0);

    // The lamp goes into her cart: no longer recommended. She buys the hat: gone
    // too, unless asked for; the refund brings it back.
    let seq = post(
        s.http,
        &[
            event("ann", "Product Added", "lamp", "camping", T0 + 13_000, "a4"),
            json!({"type": "track", "userId": "ann", "event": "Order Completed",
                   "timestamp": T0 + 14_000, "messageId": "a5",
                   "properties": {"order_id": "o-1", "revenue": 10,
                                  "products": [{"product_id": "hat", "price": 10}]}}),
        ],
    );
    let ann = get(s.http, "/v1/users/ann/recommendations?k=10", seq);
    let listed = ids(&ann["items"]);
    assert!(!listed.contains(&"lamp".to_owned()), "{ann}");
    assert!(!listed.contains(&"hat".to_owned()), "{ann}");
    let with = get(
        s.http,
        "/v1/users/ann/recommendations?k=10&exclude_purchased=false&exclude_seen=false",
        seq,
    );
    assert!(ids(&with["items"]).contains(&"hat".to_owned()), "{with}");
    let seq = post(
        s.http,
        &[
            event(
                "ann",
                "Product Removed",
                "lamp",
                "camping",
                T0 + 15_000,
                "a6",
            ),
            json!({"type": "track", "userId": "ann", "event": "Order Refunded",
                   "timestamp": T0 + 16_000, "messageId": "a7",
                   "properties": {"order_id": "o-1"}}),
        ],
    );
    let ann = get(s.http, "/v1/users/ann/recommendations?k=10", seq);
    let listed = ids(&ann["items"]);
    assert!(listed.contains(&"lamp".to_owned()), "{ann}");
    assert!(listed.contains(&"hat".to_owned()), "{ann}");
    // Filters: only clothing.
    let clothing = get(
        s.http,
        "/v1/users/ann/recommendations?k=10&category=clothing",
        seq,
    );
    assert_eq!(ids(&clothing["items"]), ["hat"], "{clothing}");
    s.shutdown();
}

#[test]
fn block_and_boost_lists_apply_to_recommendations() {
    let s = TestServer::start_with(|c| {
        c.builtin_segments = false;
        c.recommend.block = vec!["lamp".into()];
        c.recommend.boost.insert("hat".into(), 100.0);
    });
    let mut messages = shop();
    messages.push(view("ann", "stove", "camping", T0 + 10_000, "a1"));
    messages.push(view("ann", "tent", "camping", T0 + 11_000, "a2"));
    messages.push(view("ann", "mug", "kitchen", T0 + 12_000, "a3"));
    let seq = send_messages(s.tcp, &messages).seq();
    let ann = get(s.http, "/v1/users/ann/recommendations?k=5", seq);
    assert_eq!(ann["strategy"], "personal", "{ann}");
    let listed = ids(&ann["items"]);
    assert_eq!(listed[0], "hat", "boosted first: {ann}");
    assert!(!listed.contains(&"lamp".to_owned()), "blocked: {ann}");
    s.shutdown();
}

#[test]
fn trending_compares_the_last_day_with_the_week() {
    let s = TestServer::start_with(|c| {
        c.builtin_segments = false;
        c.recommend.trending_min = 2;
    });
    let mut messages = Vec::new();
    // The kettle: three viewers five days ago, two today (steady-ish); the
    // scarf: three viewers today only (new); the pan: one viewer today (below
    // the minimum).
    for (i, u) in ["a", "b", "c"].iter().enumerate() {
        messages.push(view(
            u,
            "kettle",
            "kitchen",
            T0 + i as i64,
            &format!("k{i}"),
        ));
    }
    let today = T0 + 5 * DAY;
    for (i, u) in ["d", "e"].iter().enumerate() {
        messages.push(view(
            u,
            "kettle",
            "kitchen",
            today + i as i64,
            &format!("t{i}"),
        ));
    }
    for (i, u) in ["f", "g", "h"].iter().enumerate() {
        messages.push(view(
            u,
            "scarf",
            "clothing",
            today + 10 + i as i64,
            &format!("s{i}"),
        ));
    }
    messages.push(view("i", "pan", "kitchen", today + 20, "p0"));
    let seq = send_messages(s.tcp, &messages).seq();
    let body = get(s.http, "/v1/items/trending", seq);
    assert_eq!(body["min_day"], 2);
    assert_eq!(ids(&body["items"]), ["scarf", "kettle"], "{body}");
    assert_eq!(body["items"][0]["growth"], 7.0);
    assert_eq!(body["items"][0]["day"], 3);
    // 7 · 2 / 5.
    assert_eq!(body["items"][1]["week"], 5);
    let growth = body["items"][1]["growth"].as_f64().unwrap();
    assert!((growth - 14.0 / 5.0).abs() < 1e-12, "{body}");
    // Windows: the kettle's first viewers are out of the last day, in the week.
    let day = get(s.http, "/v1/items/popular?window=1d", seq);
    assert_eq!(ids(&day["items"]), ["scarf", "kettle", "pan"], "{day}");
    let week = get(s.http, "/v1/items/popular?window=7d", seq);
    assert_eq!(week["items"][0], json!({"item_id": "kettle", "score": 5}));
    s.shutdown();
}

#[test]
fn recommendation_endpoints_refuse_bad_parameters() {
    let s = TestServer::start_with(|c| c.builtin_segments = false);
    for (path, says) in [
        (
            "/v1/items/popular?window=2d",
            "window: expected 1d, 7d, 30d or all",
        ),
        ("/v1/items/popular?k=0", "k: expected 1 to 100"),
        (
            "/v1/items/popular?kind=viewed",
            "unknown parameter \"kind\"",
        ),
        (
            "/v1/items/trending?window=1d",
            "unknown parameter \"window\"",
        ),
        ("/v1/items/trending?k=x", "k: expected 1 to 100"),
        (
            "/v1/users/ann/recommendations?exclude_purchased=maybe",
            "exclude_purchased: expected true or false",
        ),
        (
            "/v1/users/ann/recommendations?k=1000",
            "k: expected 1 to 100",
        ),
        (
            "/v1/users/ann/recommendations?limit=3",
            "unknown parameter \"limit\"",
        ),
    ] {
        let (status, body) = get_json(s.http, path);
        assert_eq!(status, 400, "{path}: {body}");
        let message = body["error"].as_str().expect("error");
        assert!(message.contains(says), "{path}: {message}");
    }
    s.shutdown();
}

#[test]
fn switched_off_recommendations_answer_404_saying_so() {
    let s = TestServer::start_with(|c| {
        c.builtin_segments = false;
        c.recommend.enabled = false;
    });
    for path in [
        "/v1/items/popular",
        "/v1/items/trending",
        "/v1/users/ann/recommendations",
    ] {
        let (status, body) = get_json(s.http, path);
        assert_eq!(status, 404, "{path}: {body}");
        assert!(body["error"]
            .as_str()
            .unwrap()
            .contains("recommend.enabled = false"));
    }
    s.shutdown();
}
