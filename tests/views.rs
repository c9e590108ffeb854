//! The view interface, driven as a new view would use it: generic reads routed
//! by key or to every worker, at one pinned epoch, through the real engine; a
//! read of a view no worker hosts and a definition of a kind no view compiles
//! are refused with their typed error instead of hanging or being logged.

use std::sync::Arc;

use shopstream::catalog::{CatalogError, Control, Source};
use shopstream::config::Config;
use shopstream::event::{parse_message, ParseContext};
use shopstream::runtime::{Engine, EngineError, Route};
use shopstream_dataflows::types::{intern, owner, Time};
use shopstream_dataflows::view::{EpochBatch, Place, ReadCtx, RestoreError, View};
use shopstream_dataflows::views::profiles::ProfileView;

fn engine(workers: usize) -> (tempfile::TempDir, Arc<Engine>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config::defaults();
    config.data_dir = dir.path().to_path_buf();
    config.workers = workers;
    config.fsync = shopstream::log::FsyncPolicy::Never;
    let engine =
        Engine::start(config, &shopstream::serve::all_hosts(), |_, _| {}).expect("engine starts");
    (dir, engine)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn view_event(user: &str, n: usize) -> shopstream::event::Event {
    let line = format!(
        r#"{{"type":"track","event":"Product Viewed","userId":"{user}","messageId":"m-{user}-{n}","timestamp":"2026-11-01T00:00:00Z","properties":{{"product_id":"p1","price":2.5}}}}"#
    );
    parse_message(line.as_bytes(), &ParseContext::new("USD"), None).expect("valid")
}

#[test]
fn reads_go_to_the_owner_or_to_every_worker_at_one_epoch() {
    let rt = runtime();
    let (_dir, engine) = engine(3);
    let users: Vec<String> = (0..12).map(|i| format!("u{i}")).collect();
    let events: Vec<_> = users
        .iter()
        .enumerate()
        .flat_map(|(i, u)| (0..=i).map(move |n| view_event(u, n)))
        .collect();
    let ack = rt.block_on(engine.submit(events)).expect("submit");
    rt.block_on(async {
        // Owner routing: the one worker asked is the owner, and it holds the user.
        for (i, u) in users.iter().enumerate() {
            let id = intern(u);
            let (as_of, answers) = engine
                .read(
                    Some(ack.last_seq),
                    None,
                    Route::Owner(id),
                    move |v: &mut ProfileView, cx: ReadCtx| (cx.worker, v.read(id, cx)),
                )
                .await
                .expect("read");
            assert_eq!(as_of.seq, ack.last_seq);
            assert_eq!(answers.len(), 1);
            let (worker, answer) = &answers[0];
            assert_eq!(*worker, owner(id, 3));
            let events = answer.profile.lifetime.expect("a profile").events;
            assert_eq!(events, i as i64 + 1, "{u}");
        }
        // Every worker: each answers once, at the same pinned time, and together
        // they hold every user exactly once.
        let (_, answers) = engine
            .read(
                None,
                None,
                Route::All,
                |v: &mut ProfileView, cx: ReadCtx| (cx.worker, cx.at, v.traces.users(cx.at)),
            )
            .await
            .expect("read all");
        assert_eq!(
            answers.iter().map(|a| a.0).collect::<Vec<_>>(),
            [0, 1, 2],
            "in worker order"
        );
        let at: Vec<Time> = answers.iter().map(|a| a.1).collect();
        assert!(
            at.windows(2).all(|w| w[0] == w[1]),
            "one pinned time: {at:?}"
        );
        let mut held: Vec<u64> = answers.into_iter().flat_map(|a| a.2).collect();
        held.sort_unstable();
        let mut want: Vec<u64> = users.iter().map(|u| intern(u)).collect();
        want.sort_unstable();
        assert_eq!(held, want);
    });
    engine.shutdown();
}

/// A view type that no worker builds (it is never registered).
struct Unregistered;

impl View for Unregistered {
    fn name(&self) -> &'static str {
        "unregistered"
    }
    fn feed(&mut self, _epoch: &EpochBatch<'_>) {}
    fn compact(&mut self, _frontier: Time) {}
    fn snapshot(&mut self, _at: Time) -> Vec<u8> {
        Vec::new()
    }
    fn restore(&mut self, _: &[Vec<u8>], _: Time, _: Place) -> Result<(), RestoreError> {
        Ok(())
    }
}

#[test]
fn a_read_of_an_unregistered_view_is_refused_not_hung() {
    let rt = runtime();
    let (_dir, engine) = engine(2);
    let ack = rt
        .block_on(engine.submit(vec![view_event("a", 0)]))
        .expect("submit");
    for route in [Route::Owner(intern("a")), Route::All] {
        let at = Some(ack.last_seq);
        let got = rt.block_on(engine.read(at, None, route, |_: &mut Unregistered, _| ()));
        assert!(
            matches!(got, Err(EngineError::NoSuchView(name)) if name.ends_with("Unregistered")),
            "{route:?}: {:?}",
            got.map(|_| ())
        );
    }
    engine.shutdown();
}

#[test]
fn a_definition_of_an_unknown_kind_is_refused_before_the_log() {
    let rt = runtime();
    let (dir, engine) = engine(1);
    let before = engine.logged_seq();
    let got = rt.block_on(engine.define(vec![Control::put(
        "funnel",
        "checkout",
        "a -> b",
        Source::Api,
    )]));
    match got {
        Err(EngineError::Definition(CatalogError::UnknownKind(kind, known))) => {
            assert_eq!(kind, "funnel");
            assert_eq!(known, "segment");
        }
        other => panic!("expected an unknown kind, got {other:?}"),
    }
    let bad =
        rt.block_on(engine.define(vec![Control::put("segment", "s", "orders >", Source::Api)]));
    assert!(
        matches!(bad, Err(EngineError::Definition(CatalogError::Compile(_)))),
        "{bad:?}"
    );
    assert_eq!(engine.logged_seq(), before);
    assert!(engine.catalog().is_empty(), "nothing was defined");
    engine.shutdown();
    // Nothing reached the log: a restart replays no record at all.
    let mut config = Config::defaults();
    config.data_dir = dir.path().to_path_buf();
    config.fsync = shopstream::log::FsyncPolicy::Never;
    let engine =
        Engine::start(config, &shopstream::serve::all_hosts(), |_, _| {}).expect("restarts");
    assert_eq!(engine.recovery().records, 0, "no record was logged");
    assert_eq!(engine.recovery().last_epoch, None);
    engine.shutdown();
}
