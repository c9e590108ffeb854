//! Snapshots through the real server (issue 9, build item 2): a restart from a
//! snapshot and the log after it answers exactly as a restart from the whole log
//! (which `tests/oracle.rs` and `tests/segments_oracle.rs` check against
//! from-scratch recomputations, with a snapshot too); log files covered by a
//! snapshot can be removed; damage never costs data.

mod util;

use std::path::Path;

use serde_json::{json, Value};
use shopstream::server::Server;
use util::*;

const USERS: usize = 40;

/// Everything a client can read that a restart must keep: every user's profile
/// and segments, every segment with its size history and members, and how far
/// the log goes.
fn answers(s: &TestServer) -> Value {
    // Everything logged, visible: an acknowledgement says durable, not visible.
    let (_, health) = get_json(s.http, "/healthz");
    let at = format!("min_seq={}", health["logged_seq"]);
    let mut users = Vec::new();
    for k in 0..USERS {
        let id = format!("w-u{k}");
        let (_, profile) = get_json(s.http, &format!("/v1/users/{id}/profile?{at}"));
        let (_, segments) = get_json(s.http, &format!("/v1/users/{id}/segments?{at}"));
        users.push(json!({"profile": profile, "segments": segments}));
    }
    let (status, list) = get_json(s.http, &format!("/v1/segments?{at}"));
    assert_eq!(status, 200, "{list}");
    let mut segments = Vec::new();
    for d in list["segments"].as_array().expect("segments") {
        let name = d["name"].as_str().expect("name");
        let (_, one) = get_json(s.http, &format!("/v1/segments/{name}?{at}"));
        let (_, members) = get_json(
            s.http,
            &format!("/v1/segments/{name}/members?limit=1000&{at}"),
        );
        segments.push(json!({"segment": one, "members": members}));
    }
    json!({
        "users": users,
        "segments": segments,
        "logged_seq": health["logged_seq"],
    })
}

/// Asserts `got == want`, naming the first place they differ (the answers are
/// large).
fn same(got: &Value, want: &Value, what: &str) {
    fn first_difference(a: &Value, b: &Value, at: String) -> Option<String> {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                for (k, v) in x {
                    match y.get(k) {
                        None => return Some(format!("{at}.{k}: missing on the right")),
                        Some(w) => {
                            if let Some(d) = first_difference(v, w, format!("{at}.{k}")) {
                                return Some(d);
                            }
                        }
                    }
                }
                y.keys()
                    .find(|k| !x.contains_key(*k))
                    .map(|k| format!("{at}.{k}: missing on the left"))
            }
            (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
                .iter()
                .zip(y)
                .enumerate()
                .find_map(|(i, (v, w))| first_difference(v, w, format!("{at}[{i}]"))),
            _ if a == b => None,
            _ => Some(format!("{at}: {a} != {b}")),
        }
    }
    if let Some(d) = first_difference(got, want, String::new()) {
        panic!("{what}: {d}");
    }
}

fn snapshot(s: &TestServer) -> Value {
    let (status, body) = post(s.http, "/v1/admin/snapshot", b"");
    assert_eq!(status, 201, "{body}");
    body
}

fn define(s: &TestServer, name: &str, rule: &str) {
    define_segment(s.http, name, rule);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// Streams a workload with a snapshot in the middle and a segment defined on
/// each side of it; returns the answers before shutdown.
fn fill(data_dir: &Path, tweak: impl FnOnce(&mut shopstream::config::Config)) -> Value {
    let s = TestServer::start_in(data_dir, tweak);
    let messages = workload(6_000, USERS, 20 * MINUTE, "w");
    define(&s, "big_spenders", "revenue > 100");
    let first = send_messages(s.tcp, &messages[..3_000]);
    assert_eq!(first.rejected(), 0);
    let taken = snapshot(&s);
    assert_eq!(taken["as_of"], json!(first.seq()), "{taken}");
    assert!(taken["bytes"].as_u64().expect("bytes") > 0);
    define(&s, "browsers", "events.product_viewed >= 5");
    let second = send_messages(s.tcp, &messages[3_000..]);
    let got = answers(&s);
    assert_eq!(got["logged_seq"], json!(second.seq()));
    s.shutdown();
    got
}

#[test]
fn a_restart_from_a_snapshot_answers_as_a_full_replay_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let live = fill(dir.path(), |_| {});
    // The same data directory without its snapshots: a full replay.
    let full = tempfile::tempdir().expect("tempdir");
    copy_dir(dir.path(), full.path());
    std::fs::remove_dir_all(full.path().join(shopstream::snapshot::DIR)).expect("rm");

    for workers in [1, 3] {
        let restored = TestServer::start_in(dir.path(), |c| c.workers = workers);
        let recovery = restored.server().engine.recovery().clone();
        assert!(recovery.snapshot_epoch.is_some(), "{recovery:?}");
        same(
            &answers(&restored),
            &live,
            &format!("from the snapshot, {workers} workers"),
        );
        restored.shutdown();
    }
    let replayed = TestServer::start_in(full.path(), |c| c.workers = 2);
    assert_eq!(replayed.server().engine.recovery().snapshot_epoch, None);
    same(&answers(&replayed), &live, "from the whole log");
    replayed.shutdown();

    // A restarted server goes on: new events and definitions as before.
    let restored = TestServer::start_in(dir.path(), |_| {});
    let more = send_messages(restored.tcp, &[valid("w-u1")]);
    let profile = profile(restored.http, "w-u1", more.seq());
    assert_eq!(profile["as_of"], json!(more.seq()));
    restored.shutdown();
}

#[test]
fn log_files_a_snapshot_covers_are_removed_and_never_without_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prune = |c: &mut shopstream::config::Config| {
        c.file_bytes = 16 * 1024;
        c.snapshot.prune_log = true;
        c.snapshot.keep = 1;
    };
    let s = TestServer::start_in(dir.path(), prune);
    let messages = workload(4_000, USERS, 20 * MINUTE, "w");
    for chunk in messages[..3_000].chunks(300) {
        send_messages(s.tcp, chunk);
    }
    let before = log_files(dir.path()).len();
    assert!(before > 3, "several log files: {before}");
    let taken = snapshot(&s);
    let removed = taken["removed_log_files"].as_u64().expect("removed") as usize;
    assert!(removed > 0, "{taken}");
    assert_eq!(log_files(dir.path()).len(), before - removed);
    send_messages(s.tcp, &messages[3_000..]);
    let live = answers(&s);
    s.shutdown();

    let restored = TestServer::start_in(dir.path(), prune);
    same(&answers(&restored), &live, "restarted");
    restored.shutdown();

    // Without the snapshot the log cannot be replayed: the start is refused,
    // saying why, and nothing is changed.
    let files = log_files(dir.path());
    let aside = tempfile::tempdir().expect("tempdir");
    let snaps = dir.path().join(shopstream::snapshot::DIR);
    std::fs::rename(&snaps, aside.path().join("snapshots")).expect("move aside");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let refused = rt
        .block_on(Server::start(config(dir.path()), |_, _| {}))
        .err()
        .expect("refused");
    let message = refused.to_string();
    assert!(message.contains("the log starts at epoch"), "{message}");
    assert!(message.contains("there is no snapshot"), "{message}");
    assert_eq!(log_files(dir.path()), files, "nothing changed");

    // A damaged snapshot is refused the same way (and left in place).
    std::fs::rename(aside.path().join("snapshots"), &snaps).expect("move back");
    let (_, path) = shopstream::snapshot::list(&snaps).expect("list")[0].clone();
    let mut bytes = std::fs::read(&path).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&path, &bytes).expect("write");
    let refused = rt
        .block_on(Server::start(config(dir.path()), |_, _| {}))
        .err()
        .expect("refused");
    let message = refused.to_string();
    assert!(message.contains("is damaged"), "{message}");
    assert!(path.exists());
    assert_eq!(log_files(dir.path()), files, "nothing changed");
}

#[test]
fn a_damaged_snapshot_falls_back_to_an_older_one_or_the_whole_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let live = fill(dir.path(), |_| {});
    let snaps = shopstream::snapshot::dir(dir.path());
    let (_, path) = shopstream::snapshot::list(&snaps).expect("list")[0].clone();
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[40] ^= 1;
    std::fs::write(&path, &bytes).expect("write");
    let s = TestServer::start_in(dir.path(), |_| {});
    assert_eq!(s.server().engine.recovery().snapshot_epoch, None);
    same(&answers(&s), &live, "restarted");
    assert!(
        path.exists(),
        "the damaged snapshot is left for the operator"
    );
    s.shutdown();
}

#[test]
fn snapshots_are_taken_as_events_arrive_and_only_the_newest_are_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let often = |c: &mut shopstream::config::Config| {
        c.snapshot.every_events = 500;
        c.snapshot.min_interval_s = 0;
        c.snapshot.keep = 2;
    };
    let s = TestServer::start_in(dir.path(), often);
    let messages = workload(3_000, USERS, 20 * MINUTE, "w");
    for chunk in messages.chunks(250) {
        send_messages(s.tcp, chunk);
    }
    let live = answers(&s);
    s.shutdown();
    let kept = shopstream::snapshot::list(&shopstream::snapshot::dir(dir.path())).expect("list");
    assert_eq!(kept.len(), 2, "{kept:?}");
    let restored = TestServer::start_in(dir.path(), often);
    assert_eq!(
        restored.server().engine.recovery().snapshot_epoch,
        Some(kept[0].0)
    );
    same(&answers(&restored), &live, "restarted");
    restored.shutdown();
}
