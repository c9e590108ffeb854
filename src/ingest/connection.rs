//! A connection's plumbing, shared by both framings (NDJSON lines and bincode
//! frames): reading with an idle timeout, submitting one batch at a time with
//! backpressure, and the writer task that answers in batch order.
//!
//! A connection has a reader (the framing's task) and a writer task. The reader
//! parses whatever complete messages it has, submits the valid ones as one batch and
//! hands the pending acknowledgement to the writer, in order; at most [`IN_FLIGHT`]
//! batches wait per connection, so a slow log slows the reader, which stops reading
//! the socket: TCP backpressure. The writer answers, per batch, one error line per
//! rejected message and then an ack line whose counts are cumulative for the
//! connection:
//!
//! ```text
//! {"error":"missing userId or anonymousId","line":3}
//! {"ack":1042,"accepted":7,"rejected":1,"duplicates":0}
//! ```
//!
//! `ack` is the highest sequence number given to this connection's events: all of
//! them are durable. When the client shuts its writing half, the rest is
//! acknowledged and the server closes.

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, oneshot};

use super::{count_refusal, Refusal};
use crate::event::Event;
use crate::runtime::{Engine, EngineError, SubmitAck};

/// Batches a connection may have waiting for the log (or for the client to read
/// their answers).
pub const IN_FLIGHT: usize = 16;
/// Most refusals one batch carries: with [`IN_FLIGHT`], bounds the answers a
/// connection holds for a client that sends bad lines and never reads.
pub const MAX_REJECTS_PER_BATCH: usize = 256;
pub(crate) const READ_CHUNK: usize = 256 * 1024;

/// Where a refused message was on the connection (numbers are 1-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Line(u64),
    Frame(u64),
    FrameEvent(u64, usize),
}

/// What a framing decoder made of the bytes read so far: the valid events and the
/// refusals, each in stream order; one batch to submit.
#[derive(Debug, Default)]
pub struct Decoded {
    pub events: Vec<Event>,
    pub rejects: Vec<(Origin, Refusal)>,
}

/// One batch's answer, in the order the batches were read.
pub(crate) struct Pending {
    pub rejects: Vec<(Origin, Refusal)>,
    /// Set when the connection must end: the reason, written as the last line.
    pub fatal: Option<String>,
    pub ack: Option<oneshot::Receiver<Result<SubmitAck, EngineError>>>,
}

/// Reads more input. A connection silent for `idle` is told why, as its last answer
/// line, and the read fails with `TimedOut`.
pub(crate) async fn read_more(
    rd: &mut (impl AsyncReadExt + Unpin),
    buf: &mut Vec<u8>,
    idle: std::time::Duration,
    tx: &mpsc::Sender<Pending>,
) -> std::io::Result<usize> {
    match tokio::time::timeout(idle, rd.read_buf(buf)).await {
        Ok(read) => read,
        Err(_) => {
            let reason = format!("no data for {} s (ingest.idle_timeout_s)", idle.as_secs());
            fail(tx, reason.clone()).await;
            Err(std::io::Error::new(std::io::ErrorKind::TimedOut, reason))
        }
    }
}

/// Tells the client why the connection ends, as the last answer line.
pub(crate) async fn fail(tx: &mpsc::Sender<Pending>, reason: String) {
    let _ = tx
        .send(Pending {
            rejects: Vec::new(),
            ack: None,
            fatal: Some(reason),
        })
        .await;
}

/// Submits a batch (waiting for room: backpressure) and queues its answer.
pub(crate) async fn submit(
    engine: &Engine,
    tx: &mpsc::Sender<Pending>,
    events: Vec<Event>,
    rejects: Vec<(Origin, Refusal)>,
) -> std::io::Result<()> {
    if events.is_empty() && rejects.is_empty() {
        return Ok(());
    }
    for (_, r) in &rejects {
        count_refusal(r);
    }
    let mut fatal = None;
    let ack = if events.is_empty() {
        None
    } else {
        match engine.enqueue(events).await {
            Ok(rx) => Some(rx),
            Err(e) => {
                fatal = Some(e.to_string());
                None
            }
        }
    };
    let stop = fatal.clone();
    tx.send(Pending {
        rejects,
        ack,
        fatal,
    })
    .await
    .map_err(|_| std::io::Error::other("connection writer stopped"))?;
    match stop {
        Some(reason) => Err(std::io::Error::other(reason)),
        None => Ok(()),
    }
}

/// Writes error and ack lines in batch order (to a TCP or a TLS stream).
///
/// A write that makes no progress for `stall` (a client that sends and never
/// reads its answers, so that its receive window stays shut) ends the
/// connection: otherwise the reader, waiting for room to queue answers, would
/// never get back to its idle timeout, and the connection would hold its slots
/// for as long as the client likes.
pub(crate) async fn write_answers(
    wr: impl tokio::io::AsyncWrite + Unpin,
    mut rx: mpsc::Receiver<Pending>,
    stall: std::time::Duration,
) -> std::io::Result<()> {
    async fn timed<T>(
        stall: std::time::Duration,
        f: impl std::future::Future<Output = std::io::Result<T>>,
    ) -> std::io::Result<T> {
        tokio::time::timeout(stall, f).await.map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client reads no answers (ingest.idle_timeout_s)",
            )
        })?
    }
    let mut out = BufWriter::new(wr);
    let (mut seq, mut accepted, mut rejected, mut duplicates) = (0u64, 0u64, 0u64, 0u64);
    let mut line = Vec::with_capacity(256);
    while let Some(p) = rx.recv().await {
        for (origin, r) in &p.rejects {
            line.clear();
            let r = r.to_string();
            let v = match origin {
                Origin::Line(n) => serde_json::json!({"error": r, "line": n}),
                Origin::Frame(n) => serde_json::json!({"error": r, "frame": n}),
                Origin::FrameEvent(n, i) => {
                    serde_json::json!({"error": r, "frame": n, "index": i})
                }
            };
            serde_json::to_writer(&mut line, &v).expect("json");
            line.push(b'\n');
            timed(stall, out.write_all(&line)).await?;
        }
        rejected += p.rejects.len() as u64;
        if let Some(reason) = p.fatal {
            let v = serde_json::json!({"error": reason, "fatal": true});
            timed(stall, out.write_all(format!("{v}\n").as_bytes())).await?;
            timed(stall, out.flush()).await?;
            return Err(std::io::Error::other(reason));
        }
        if let Some(ack) = p.ack {
            // Earlier answers go out before waiting on this batch's sync.
            timed(stall, out.flush()).await?;
            match ack.await {
                Ok(Ok(a)) => {
                    seq = seq.max(a.last_seq);
                    accepted += (a.logged + a.duplicates.len()) as u64;
                    duplicates += a.duplicates.len() as u64;
                }
                Ok(Err(e)) => {
                    let v = serde_json::json!({"error": e.to_string(), "fatal": true});
                    timed(stall, out.write_all(format!("{v}\n").as_bytes())).await?;
                    timed(stall, out.flush()).await?;
                    return Err(std::io::Error::other(e.to_string()));
                }
                Err(_) => return Err(std::io::Error::other("engine stopped")),
            }
        }
        line.clear();
        let v = serde_json::json!({"ack": seq, "accepted": accepted, "rejected": rejected, "duplicates": duplicates});
        serde_json::to_writer(&mut line, &v).expect("json");
        line.push(b'\n');
        timed(stall, out.write_all(&line)).await?;
        timed(stall, out.flush()).await?;
    }
    timed(stall, out.flush()).await?;
    timed(stall, out.into_inner().shutdown()).await
}
