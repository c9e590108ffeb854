//! Black-box tests of identity resolution through the real server: links logged
//! on every ingest path, an anonymous visitor becoming a known user in every
//! answer, and the README's story (browse anonymously, sign in, pay) through TCP
//! and `/v1/batch`. Reads wait for their writes with `min_seq`.

mod util;

use serde_json::{json, Value};
use util::*;

/// Identity links (the first step of identity resolution, docs/identity.md) are
/// logged on every ingest path: the `anonymousId` of an identify or track that
/// also has a `userId` (TCP NDJSON, `/v1/batch`), and `alias` calls (`/v1/batch`,
/// `/v1/alias`, binary frames). An alias counts as a custom event of its user.
#[test]
fn identity_links_reach_the_log_on_every_ingest_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = TestServer::start_in(dir.path(), |_| {});
    let user = "u-42";
    let answers = send_messages(
        s.tcp,
        &[json!({"type": "identify", "userId": user, "anonymousId": "a-1", "messageId": "l1"})],
    );
    assert_eq!(answers.rejected(), 0);
    let (status, body) = post_batch(
        s.http,
        &[
            json!({"type": "track", "event": "Product Viewed", "userId": user, "anonymousId": "a-2",
                   "properties": {"product_id": "p1"}, "messageId": "l2"}),
            json!({"type": "alias", "previousId": "a-3", "userId": user, "messageId": "l3"}),
            json!({"type": "alias", "userId": user, "messageId": "l-bad"}),
        ],
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rejected"][0]["index"], json!(2), "{body}");
    let (status, body) = post(
        s.http,
        "/v1/alias",
        br#"{"previousId": "a-4", "userId": "u-42", "messageId": "l4"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let alias =
        event(&json!({"type": "alias", "previousId": "a-5", "userId": user, "messageId": "l5"}));
    let framed = send_binary(s.tcp, &[shopstream::ingest::binary::encode_frame(&[alias])]);
    assert_eq!(framed.rejected(), 0);
    let p = profile(s.http, user, framed.seq());
    assert_eq!(p["profile"]["events"]["alias"], json!(3), "{p}");
    s.shutdown();

    let mut links = Vec::new();
    shopstream::log::open(
        &shopstream::log::LogConfig::new(dir.path()),
        |_, payload, _| {
            let (events, _) = shopstream::runtime::decode_payload(payload).expect("decodes");
            links.extend(
                events
                    .into_iter()
                    .filter_map(|e| e.link.map(|l| format!("{}<-{l}", e.user))),
            );
            Ok(())
        },
    )
    .expect("log opens");
    links.sort();
    assert_eq!(
        links,
        [
            "u-42<-a-1",
            "u-42<-a-2",
            "u-42<-a-3",
            "u-42<-a-4",
            "u-42<-a-5"
        ]
    );
}

/// The identity graph (docs/identity.md, step 2), over the real server: a visitor
/// browses as an anonymous id, signs in, and the id belongs to the user from that
/// point; the first link wins and a conflicting one is reported; the cap refuses;
/// a past `as_of` sees the graph as it was; a restart (from the log, and from a
/// snapshot) answers the same.
#[test]
fn identity_links_make_an_anonymous_visitor_a_known_user() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cap = |c: &mut shopstream::config::Config| c.max_ids_per_user = 2;
    let s = TestServer::start_in(dir.path(), cap);
    let browse = send_messages(
        s.tcp,
        &[
            json!({"type": "track", "event": "Product Viewed", "anonymousId": "a-17",
                 "properties": {"product_id": "p1"}, "messageId": "i1"}),
        ],
    );
    let (_, before) = get_json(
        s.http,
        &format!("/v1/users/a-17/identity?min_seq={}", browse.seq()),
    );
    assert_eq!(
        before["error"]
            .as_str()
            .map(|e| e.contains("no identity link")),
        Some(true)
    );
    let signed_in = send_messages(
        s.tcp,
        &[
            json!({"type": "identify", "userId": "u-42", "anonymousId": "a-17", "messageId": "i2"}),
            json!({"type": "identify", "userId": "u-43", "anonymousId": "a-17", "messageId": "i3"}),
            json!({"type": "alias", "previousId": "a-18", "userId": "u-42", "messageId": "i4"}),
            json!({"type": "alias", "previousId": "a-19", "userId": "u-42", "messageId": "i5"}),
        ],
    );
    let answers = |s: &TestServer| {
        let at = format!("min_seq={}", signed_in.seq());
        ["a-17", "u-42", "u-43", "a-19"]
            .map(|id| get_json(s.http, &format!("/v1/users/{id}/identity?{at}")))
    };
    let live = answers(&s);
    let [(st, by_anon), (_, by_user), (_, other), (_, refused)] = live.clone();
    assert_eq!(st, 200, "{by_anon}");
    assert_eq!(by_anon["user_id"], json!("u-42"));
    assert_eq!(by_anon["belongs_to"], json!("u-42"));
    let ids = |v: &Value| {
        v["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|i| i["id"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&by_user), [json!("a-17"), json!("a-18")]);
    assert_eq!(by_user.get("belongs_to"), None);
    assert_eq!(
        by_user["ids"][0]["linked_at"]["as_of"],
        json!(browse.seq() + 1)
    );
    // u-43's link came second: a conflict, reported, not merged.
    assert_eq!(other["user_id"], json!("u-43"));
    assert_eq!(ids(&other), Vec::<Value>::new());
    assert_eq!(
        other["unmerged"][0]["outcome"],
        json!("conflict"),
        "{other}"
    );
    // The third id of u-42 is over identity.max_ids_per_user = 2.
    assert_eq!(refused["user_id"], json!("a-19"), "{refused}");
    assert_eq!(refused["unmerged"][0]["outcome"], json!("refused"));
    // As of the sign-in, only a-17 was linked.
    let (_, past) = get_json(
        s.http,
        &format!("/v1/users/u-42/identity?as_of={}", browse.seq() + 1),
    );
    assert_eq!(ids(&past), [json!("a-17")]);
    let (status, _) = post(s.http, "/v1/admin/snapshot", b"");
    assert_eq!(status, 201);
    s.shutdown();

    let restarted = TestServer::start_in(dir.path(), cap);
    assert!(restarted
        .server()
        .engine
        .recovery()
        .snapshot_epoch
        .is_some());
    assert_eq!(answers(&restarted), live, "from the snapshot");
    restarted.shutdown();
    std::fs::remove_dir_all(dir.path().join(shopstream::snapshot::DIR)).expect("rm");
    let replayed = TestServer::start_in(dir.path(), cap);
    assert_eq!(answers(&replayed), live, "from the whole log");
    replayed.shutdown();
}

/// The story of the README's "Identities" section, through TCP and `/v1/batch`:
/// a visitor browses anonymously and fills a cart (an audience catches the
/// anonymous id), signs in and pays; from the sign-in on, every read by either
/// id answers for the user, with the visitor's history in it, and the change
/// feed reports the anonymous id's exit and the user's enter. A second visitor
/// pays *before* signing in (the link comes late) and the signed-in user's
/// refund finds the order. The same after a restart from the log.
#[test]
fn a_visitor_who_browses_anonymously_signs_in_and_pays_is_one_customer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let quiet = |c: &mut shopstream::config::Config| c.builtin_segments = false;
    let s = TestServer::start_in(dir.path(), quiet);
    define_segment(s.http, "carting", "cart contains \"p1\"");
    define_segment(s.http, "buyers", "orders >= 1");
    let feed = SseClient::connect(s.http, "/v1/stream/segments", None);
    let anon = |event: &str, ts: i64, props: Value, id: &str| {
        json!({"type": "track", "anonymousId": "a-17", "event": event, "timestamp": ts,
               "properties": props, "messageId": id})
    };
    let shoe = json!({"product_id": "p1", "category": "shoes", "price": 30, "quantity": 1});
    let browsed = send_messages(
        s.tcp,
        &[
            anon("Product Viewed", T0, shoe.clone(), "s1"),
            anon("Product Added", T0 + 1_000, shoe.clone(), "s2"),
        ],
    );
    let (_, carting) = get_json(
        s.http,
        &format!(
            "/v1/segments/carting/contains/a-17?min_seq={}",
            browsed.seq()
        ),
    );
    assert_eq!(carting["member"], true, "{carting}");

    // Signs in and pays, in one batch over HTTP.
    let (status, paid) = post_batch(
        s.http,
        &[
            json!({"type": "identify", "userId": "u-42", "anonymousId": "a-17",
                   "timestamp": T0 + 60_000, "traits": {"plan": "gold"}, "messageId": "s3"}),
            json!({"type": "track", "userId": "u-42", "event": "Order Completed",
                   "timestamp": T0 + 120_000, "messageId": "s4",
                   "properties": {"order_id": "o-1", "revenue": 30, "products": [shoe]}}),
        ],
    );
    assert_eq!(status, 200, "{paid}");
    let seq = paid["seq"].as_u64().expect("seq");
    let by_user = profile(s.http, "u-42", seq);
    let by_anon = profile(s.http, "a-17", seq);
    assert_eq!(by_user["user_id"], "u-42");
    assert_eq!(by_user["ids"], json!(["a-17"]));
    assert_eq!(by_user.get("belongs_to"), None);
    assert_eq!(by_anon["user_id"], "u-42", "{by_anon}");
    assert_eq!(by_anon["belongs_to"], "u-42");
    assert_eq!(by_anon["profile"], by_user["profile"]);
    let p = &by_user["profile"];
    assert_eq!(
        p["events_total"], 4,
        "the visitor's view and add are the user's: {p}"
    );
    assert_eq!(p["events"]["Product Viewed"], 1);
    assert_eq!(p["orders"], 1);
    assert_eq!(p["cart"], json!([]), "added anonymously, bought signed in");
    // View 1 + cart add 3 + order 5.
    assert_eq!(
        p["top_categories"],
        json!([{"category": "shoes", "score": 9}])
    );
    assert_eq!(p["first_seen"], by_anon["profile"]["first_seen"]);
    assert_eq!(p["windows"]["7d"]["views"], 1);
    assert_eq!(p["traits"]["plan"], "gold");
    for id in ["a-17", "u-42"] {
        let (_, segs) = get_json(s.http, &format!("/v1/users/{id}/segments?min_seq={seq}"));
        assert_eq!(segs["user_id"], "u-42", "{segs}");
        let names: Vec<&str> = segs["segments"]
            .as_array()
            .expect("segments")
            .iter()
            .map(|x| x["name"].as_str().expect("name"))
            .collect();
        assert_eq!(names, ["buyers"], "{segs}");
    }

    // A second visitor pays first and signs in later; the user's refund (with
    // no amount: "refund what is left") finds the order the visitor placed.
    let bought = send_messages(
        s.tcp,
        &[
            json!({"type": "track", "anonymousId": "a-99", "event": "Order Completed",
                 "timestamp": T0 + 200_000, "messageId": "s5",
                 "properties": {"order_id": "o-9", "revenue": 20,
                                "products": [{"product_id": "p2", "price": 20, "quantity": 1}]}}),
        ],
    );
    let (_, anon_buyer) = get_json(
        s.http,
        &format!("/v1/segments/buyers/contains/a-99?min_seq={}", bought.seq()),
    );
    assert_eq!(anon_buyer["member"], true);
    let refunded = send_messages(
        s.tcp,
        &[
            json!({"type": "identify", "userId": "u-7", "anonymousId": "a-99",
                   "timestamp": T0 + 300_000, "messageId": "s6"}),
            json!({"type": "track", "userId": "u-7", "event": "Order Refunded",
                   "timestamp": T0 + 400_000, "messageId": "s7",
                   "properties": {"order_id": "o-9"}}),
        ],
    );
    let late = profile(s.http, "u-7", refunded.seq());
    assert_eq!(late["ids"], json!(["a-99"]));
    assert_eq!(late["profile"]["orders"], 1, "{late}");
    assert_eq!(late["profile"]["refunds"], 1);
    assert_money(&late["profile"]["refunded"], 20.0);
    assert_money(&late["profile"]["revenue"], 0.0);
    let (_, buyers) = get_json(
        s.http,
        &format!("/v1/segments/buyers/members?min_seq={}", refunded.seq()),
    );
    let members: Vec<&str> = buyers["members"]
        .as_array()
        .unwrap_or_else(|| panic!("{buyers}"))
        .iter()
        .map(|m| {
            m.as_str()
                .or_else(|| m["user_id"].as_str())
                .expect("member")
        })
        .collect();
    assert_eq!(sorted_strs(members), ["u-42", "u-7"], "{buyers}");

    // The feed: each anonymous id entered, then exited at its link, as its user
    // entered.
    let mut seen = Vec::new();
    while let Some(e) = feed.next_change(std::time::Duration::from_secs(5)) {
        let d: Value = serde_json::from_str(&e.data).expect("json");
        let t = |k: &str| d[k].as_str().expect(k).to_owned();
        seen.push(format!("{} {} {}", t("segment"), t("user_id"), t("change")));
        if seen.len() == 6 {
            break;
        }
    }
    let want = [
        "carting a-17 enter",
        "carting a-17 exit",
        "buyers u-42 enter",
        "buyers a-99 enter",
        "buyers a-99 exit",
        "buyers u-7 enter",
    ];
    assert_eq!(
        seen.iter().collect::<std::collections::BTreeSet<_>>(),
        want.iter()
            .map(|w| w.to_string())
            .collect::<Vec<_>>()
            .iter()
            .collect(),
        "{seen:?}"
    );
    let position = |w: &str| seen.iter().position(|x| x == w).expect(w);
    assert!(position("carting a-17 enter") < position("carting a-17 exit"));
    assert!(position("buyers a-99 enter") < position("buyers a-99 exit"));
    drop(feed);
    let live = [profile(s.http, "a-17", refunded.seq()), late.clone()];
    s.shutdown();

    let replayed = TestServer::start_in(dir.path(), quiet);
    let again = [
        profile(replayed.http, "a-17", refunded.seq()),
        profile(replayed.http, "u-7", refunded.seq()),
    ];
    for (a, b) in again.iter().zip(&live) {
        assert_eq!(a["profile"], b["profile"], "after a restart");
        assert_eq!(a["user_id"], b["user_id"]);
    }
    replayed.shutdown();
}

fn sorted_strs(mut v: Vec<&str>) -> Vec<&str> {
    v.sort_unstable();
    v
}
