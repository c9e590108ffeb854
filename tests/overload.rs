//! Overload and connection limits, black-box: senders flat out against a small
//! queue are slowed (TCP backpressure) or told `overloaded` with a retry hint (HTTP
//! 503 with `Retry-After`), reads keep answering, and nothing acknowledged is lost;
//! one address cannot take every connection slot, and idle connections give theirs
//! back. Nothing here asserts on timings.

mod util;

use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;
use util::*;

/// Over `ingest.max_connections_per_addr` from one address, a connection gets a
/// fatal error line naming the limit; idle connections are closed after
/// `ingest.idle_timeout_s` and their slots are free again.
#[test]
fn one_address_cannot_take_every_slot_and_idle_connections_free_theirs() {
    let server = TestServer::start_with(|c| {
        c.max_connections_per_addr = 2;
        c.idle_timeout = Duration::from_secs(1);
    });
    let idle: Vec<TcpStream> = (0..2)
        .map(|_| {
            let s = TcpStream::connect(server.tcp).expect("connect");
            s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
            s
        })
        .collect();
    // The two are accepted before the third is (one accept loop, in order).
    let third = TcpStream::connect(server.tcp).expect("third");
    third.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let refused = read_answers(third);
    assert_eq!(refused.lines.len(), 1, "{:?}", refused.lines);
    assert_eq!(refused.lines[0]["fatal"], true);
    let reason = refused.lines[0]["error"].as_str().expect("reason");
    assert!(
        reason.contains("127.0.0.1") && reason.contains("ingest.max_connections_per_addr = 2"),
        "{reason}"
    );
    for s in idle {
        let answers = read_answers(s);
        assert_eq!(answers.lines.len(), 1, "{:?}", answers.lines);
        assert!(answers.lines[0]["error"]
            .to_string()
            .contains("idle_timeout"));
    }
    // Both slots are free again (a slot is given back just after its socket
    // closes, so the first attempt may still find it taken): two connections at
    // once work.
    let a = TcpStream::connect(server.tcp).expect("a");
    let b = send_when_a_slot_is_free(server.tcp, &numbered("slot-b", 3));
    assert_eq!(b.accepted(), 3, "{:?}", b.lines);
    drop(a);
    server.shutdown();
}

/// Sends `messages` on one connection, again while it is refused for the
/// per-address limit (at most 100 times).
fn send_when_a_slot_is_free(addr: std::net::SocketAddr, messages: &[Value]) -> Answers {
    use std::io::{BufRead, Write};
    for _ in 0..100 {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        // A refused connection may be closed before this is written.
        let _ = (&s).write_all(&ndjson(messages));
        let _ = s.shutdown(std::net::Shutdown::Write);
        // Read what came before a reset (unread input makes the close a reset).
        let mut answers = Answers::default();
        for line in std::io::BufReader::new(s).lines() {
            let Ok(line) = line else { break };
            answers
                .lines
                .push(serde_json::from_str(&line).expect("answer is JSON"));
        }
        let refused = answers.lines.first().is_some_and(|l| {
            l["error"]
                .as_str()
                .is_some_and(|e| e.contains("max_connections_per_addr"))
        });
        if !refused {
            return answers;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the per-address slots were never given back");
}

const TCP_SENDERS: usize = 4;
const TCP_EVENTS: usize = 5_000;
const HTTP_SENDERS: usize = 2;
const HTTP_BATCHES: usize = 20;
const HTTP_BATCH: usize = 100;

/// Several senders flat out over TCP and HTTP against a queue of 2 batches, while a
/// reader queries: TCP senders are slowed, not refused; HTTP is refused with 503
/// and `Retry-After` when the queue is full, and the sender retries; every read
/// answers; after a restart every acknowledged event is there exactly once.
#[test]
fn overload_slows_or_refuses_senders_reads_answer_and_nothing_acknowledged_is_lost() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = TestServer::start_in(dir.path(), |c| {
        c.queue_depth = 2;
        c.max_concurrent_ingest = 4;
    });
    let (tcp, http) = (server.tcp, server.http);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let done = done.clone();
        std::thread::spawn(move || {
            let (mut answered, mut shed) = (0u64, 0u64);
            while !done.load(std::sync::atomic::Ordering::Relaxed) || answered == 0 {
                let (status, body) = get_profile(http, "tcp-0", 0);
                match status {
                    200 | 404 => answered += 1,
                    503 => shed += 1,
                    _ => panic!("a read under overload answered {status}: {body}"),
                }
            }
            (answered, shed)
        })
    };
    let tcp_senders: Vec<_> = (0..TCP_SENDERS)
        .map(|k| {
            std::thread::spawn(move || {
                send_messages(tcp, &numbered(&format!("tcp-{k}"), TCP_EVENTS))
            })
        })
        .collect();
    let http_senders: Vec<_> = (0..HTTP_SENDERS)
        .map(|k| {
            std::thread::spawn(move || {
                let all = numbered(&format!("http-{k}"), HTTP_BATCHES * HTTP_BATCH);
                let mut refused = 0u64;
                for batch in all.chunks(HTTP_BATCH) {
                    loop {
                        let (status, answer) = post_batch_raw(http, batch);
                        if status == 200 {
                            assert!(
                                answer.contains(&format!("\"accepted\":{HTTP_BATCH}")),
                                "{answer}"
                            );
                            break;
                        }
                        assert_eq!(status, 503, "{answer}");
                        assert!(
                            answer.to_ascii_lowercase().contains("retry-after: 1"),
                            "{answer}"
                        );
                        assert!(answer.contains("overloaded"), "{answer}");
                        refused += 1;
                        // Sooner than Retry-After asks: this test wants the pressure.
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                refused
            })
        })
        .collect();
    for s in tcp_senders {
        let answers = s.join().expect("tcp sender");
        assert!(
            answers.errors().is_empty(),
            "TCP is slowed, never refused: {:?}",
            answers.errors()
        );
        assert_eq!(answers.accepted(), TCP_EVENTS as u64);
    }
    let refused: u64 = http_senders
        .into_iter()
        .map(|s| s.join().expect("http sender"))
        .sum();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (answered, shed) = reader.join().expect("reader");
    eprintln!("overload: {refused} HTTP batches refused with 503 and retried; reads: {answered} answered, {shed} shed");

    let total = (TCP_SENDERS * TCP_EVENTS + HTTP_SENDERS * HTTP_BATCHES * HTTP_BATCH) as u64;
    let (_, health) = get_json(server.http, "/healthz");
    assert_eq!(
        health["logged_seq"], total,
        "every event logged once: {health}"
    );
    server.shutdown();
    let server = TestServer::start_in(dir.path(), |_| {});
    let users = (0..TCP_SENDERS)
        .map(|k| (format!("tcp-{k}"), TCP_EVENTS))
        .chain((0..HTTP_SENDERS).map(|k| (format!("http-{k}"), HTTP_BATCHES * HTTP_BATCH)));
    for (user, n) in users {
        let p = profile(server.http, &user, total);
        assert_eq!(p["profile"]["events_total"], n, "{user}");
    }
    server.shutdown();
}
