//! The wall clock: windows close as real time passes, with no new event, and a
//! replay of the log (whose records carry the clock) reaches the same answers.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use shopstream::config::{ClockMode, Config};
use shopstream::server::Server;
use shopstream_tools::client::http_get;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64
}

fn config(dir: &std::path::Path) -> Config {
    let mut c = Config::defaults();
    c.tcp_addr = "127.0.0.1:0".parse().expect("addr");
    c.http_addr = "127.0.0.1:0".parse().expect("addr");
    c.data_dir = dir.to_path_buf();
    c.clock = ClockMode::Wall;
    c.clock_tick = Duration::from_millis(100);
    c
}

/// Sends NDJSON lines, returns the final ack line.
fn send(addr: std::net::SocketAddr, lines: &[String]) -> Value {
    let mut s = TcpStream::connect(addr).expect("connect");
    for l in lines {
        writeln!(s, "{l}").expect("write");
    }
    s.shutdown(Shutdown::Write).expect("shutdown");
    let last = BufReader::new(s)
        .lines()
        .map(|l| l.expect("read"))
        .last()
        .expect("an ack");
    serde_json::from_str(&last).expect("json")
}

fn windows(addr: std::net::SocketAddr, min_seq: u64) -> (u64, i64, i64, i64) {
    let (status, body) =
        http_get(addr, &format!("/v1/users/w1/profile?min_seq={min_seq}")).expect("get");
    assert_eq!(status, 200, "{body}");
    let p = &body["profile"];
    (
        body["as_of"].as_u64().expect("as_of"),
        p["windows"]["7d"]["views"].as_i64().expect("7d"),
        p["windows"]["30d"]["views"].as_i64().expect("30d"),
        p["events_total"].as_i64().expect("total"),
    )
}

#[test]
fn wall_clock_closes_windows_without_new_events_and_replays_the_same() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let server = rt
        .block_on(Server::start(config(dir.path()), |_, _| {}))
        .expect("start");
    // One view that leaves the 7-day window about 1.5 s from now, one well inside.
    let edge = now_ms() - 7 * 86_400_000 + 1_500;
    let lines: Vec<String> = [edge, now_ms() - 86_400_000]
        .iter()
        .enumerate()
        .map(|(i, ts)| {
            serde_json::json!({"type": "track", "event": "Product Viewed", "userId": "w1",
                "messageId": format!("w{i}"), "timestamp": ts,
                "properties": {"product_id": "i1", "price": 1.0}})
            .to_string()
        })
        .collect();
    let ack = send(server.tcp_addr, &lines);
    assert_eq!(ack["accepted"], 2, "{ack}");
    let seq = ack["ack"].as_u64().expect("seq");

    let (as_of, d7, d30, total) = windows(server.http_addr, seq);
    assert_eq!((as_of, total, d30), (seq, 2, 2));
    // The edge event may already have left if this machine is slow; it must leave.
    assert!(d7 == 2 || d7 == 1, "7d views {d7}");

    // Time passes, nothing is sent: the 7-day window loses the edge event.
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let w = windows(server.http_addr, seq);
        if w.1 == 1 || Instant::now() > deadline {
            break w;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        after,
        (seq, 1, 2, 2),
        "(as_of, 7d, 30d, total) after the clock passed"
    );
    rt.block_on(server.shutdown());

    // A replay reaches the same answer: the clock ticks are in the log.
    let server = rt
        .block_on(Server::start(config(dir.path()), |_, _| {}))
        .expect("restart");
    assert_eq!(windows(server.http_addr, seq), (seq, 1, 2, 2));
    rt.block_on(server.shutdown());
}
