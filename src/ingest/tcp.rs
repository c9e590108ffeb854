//! The TCP listener: NDJSON lines, or bincode frames when a connection opens with
//! the magic bytes [`binary::MAGIC`](super::binary::MAGIC).
//!
//! A connection has a reader (this task) and a writer task. The reader parses
//! whatever complete lines it has, submits the valid ones as one batch and hands the
//! pending acknowledgement to the writer, in order; at most [`IN_FLIGHT`] batches wait
//! per connection, so a slow log slows the reader, which stops reading the socket:
//! TCP backpressure. The writer answers, per batch, one error line per rejected line
//! and then an ack line whose counts are cumulative for the connection:
//!
//! ```text
//! {"error":"missing userId or anonymousId","line":3}
//! {"ack":1042,"accepted":7,"rejected":1,"duplicates":0}
//! ```
//!
//! `ack` is the highest sequence number given to this connection's events: all of
//! them are durable. When the client shuts its writing half, the rest is
//! acknowledged and the server closes.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::binary;
use super::{count_refusal, Refusal, Validator};
use crate::runtime::{Engine, EngineError, SubmitAck};

/// Batches a connection may have waiting for the log (or for the client to read
/// their answers).
pub const IN_FLIGHT: usize = 16;
/// Most refusals one batch carries: with [`IN_FLIGHT`], bounds the answers a
/// connection holds for a client that sends bad lines and never reads.
pub const MAX_REJECTS_PER_BATCH: usize = 256;
const READ_CHUNK: usize = 256 * 1024;

/// Accepts connections until `shutdown` fires. Beyond `ingest.max_connections` open
/// at once, a new connection is answered with one error line and closed.
pub async fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let max = engine.config.max_connections;
    let permits = Arc::new(Semaphore::new(max));
    loop {
        let (mut socket, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::counter!("shopstream_connections_refused_total").increment(1);
            tokio::spawn(async move {
                let line = format!(
                    "{}\n",
                    serde_json::json!({"error": format!("too many connections (ingest.max_connections = {max})"), "fatal": true})
                );
                let _ = socket.write_all(line.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
            continue;
        };
        let engine = engine.clone();
        tokio::spawn(async move {
            let _ = socket.set_nodelay(true);
            if let Err(e) = handle(socket, engine).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
}

/// Where a refused message was on the connection (numbers are 1-based).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Origin {
    Line(u64),
    Frame(u64),
    FrameEvent(u64, usize),
}

/// One batch's answer, in the order the batches were read.
pub(crate) struct Pending {
    pub rejects: Vec<(Origin, Refusal)>,
    /// Set when the connection must end: the reason, written as the last line.
    pub fatal: Option<String>,
    pub ack: Option<oneshot::Receiver<Result<SubmitAck, EngineError>>>,
}

async fn handle(socket: TcpStream, engine: Arc<Engine>) -> std::io::Result<()> {
    let (mut rd, wr) = socket.into_split();
    let (tx, rx) = mpsc::channel::<Pending>(IN_FLIGHT);
    let writer = tokio::spawn(write_answers(wr, rx));
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    // Sniff the framing from the first bytes.
    let idle = engine.config.idle_timeout;
    while buf.len() < binary::MAGIC.len() {
        let n = match read_more(&mut rd, &mut buf, idle, &tx).await {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                drop(tx);
                let _ = writer.await;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if n == 0 {
            break;
        }
        if !binary::MAGIC.starts_with(&buf[..buf.len().min(binary::MAGIC.len())]) {
            break;
        }
    }
    let result = if buf.starts_with(binary::MAGIC) {
        buf.drain(..binary::MAGIC.len());
        binary::read_frames(&mut rd, buf, &engine, &tx).await
    } else {
        read_lines(&mut rd, buf, &engine, &tx).await
    };
    drop(tx);
    let written = writer.await.unwrap_or(Ok(()));
    result.and(written)
}

/// Reads NDJSON until EOF, submitting one batch per read.
async fn read_lines(
    rd: &mut (impl AsyncReadExt + Unpin),
    mut buf: Vec<u8>,
    engine: &Engine,
    tx: &mpsc::Sender<Pending>,
) -> std::io::Result<()> {
    let mut validator = Validator::new(&engine.config);
    let max_line = validator.max_line_bytes();
    let idle = engine.config.idle_timeout;
    let mut line_no: u64 = 0;
    // Set while discarding the rest of an over-long line.
    let mut skipping = false;
    let mut eof = false;
    loop {
        // After the lines are taken, the buffer holds at most one partial line
        // (at most `max_line` bytes), so it always needs more input.
        if !eof {
            buf.reserve(READ_CHUNK);
            if read_more(rd, &mut buf, idle, tx).await? == 0 {
                eof = true;
            }
        }
        validator.tick();
        let mut events = Vec::new();
        let mut rejects = Vec::new();
        let mut start = 0;
        while let Some(nl) = memchr(&buf[start..]) {
            let line = &buf[start..start + nl];
            start += nl + 1;
            if skipping {
                skipping = false;
                continue;
            }
            take_line(line, &mut line_no, &validator, &mut events, &mut rejects);
            if rejects.len() >= MAX_REJECTS_PER_BATCH {
                // Answers wait in memory until the client reads them: bound them,
                // and stop reading while the client does not.
                submit(
                    engine,
                    tx,
                    std::mem::take(&mut events),
                    std::mem::take(&mut rejects),
                )
                .await?;
            }
        }
        buf.drain(..start);
        // A trailing `\r` belongs to the line ending, not to the line.
        let partial = buf.len() - usize::from(buf.last() == Some(&b'\r'));
        if !skipping && partial > max_line {
            // No newline within the limit: refuse the line now, drop bytes until its end.
            line_no += 1;
            rejects.push((
                Origin::Line(line_no),
                Refusal {
                    reason: format!("line is over the {max_line}-byte limit"),
                    code: "line_too_long",
                },
            ));
            skipping = true;
        }
        if skipping {
            buf.clear();
        }
        if eof && !buf.is_empty() {
            let line = std::mem::take(&mut buf);
            take_line(&line, &mut line_no, &validator, &mut events, &mut rejects);
        }
        submit(engine, tx, events, rejects).await?;
        if eof {
            return Ok(());
        }
    }
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

fn take_line(
    line: &[u8],
    line_no: &mut u64,
    validator: &Validator,
    events: &mut Vec<crate::event::Event>,
    rejects: &mut Vec<(Origin, Refusal)>,
) {
    *line_no += 1;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    match validator.parse(line, None) {
        Ok(ev) => events.push(ev),
        Err(r) => rejects.push((Origin::Line(*line_no), r)),
    }
}

fn memchr(s: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', s)
}

/// Submits a batch (waiting for room: backpressure) and queues its answer.
pub(crate) async fn submit(
    engine: &Engine,
    tx: &mpsc::Sender<Pending>,
    events: Vec<crate::event::Event>,
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

/// Writes error and ack lines in batch order.
async fn write_answers(
    wr: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::Receiver<Pending>,
) -> std::io::Result<()> {
    let mut out = BufWriter::new(wr);
    let (mut seq, mut accepted, mut rejected, mut duplicates) = (0u64, 0u64, 0u64, 0u64);
    let mut line = Vec::with_capacity(256);
    while let Some(p) = rx.recv().await {
        for (origin, r) in &p.rejects {
            line.clear();
            let v = match origin {
                Origin::Line(n) => serde_json::json!({"error": r.reason, "line": n}),
                Origin::Frame(n) => serde_json::json!({"error": r.reason, "frame": n}),
                Origin::FrameEvent(n, i) => {
                    serde_json::json!({"error": r.reason, "frame": n, "index": i})
                }
            };
            serde_json::to_writer(&mut line, &v).expect("json");
            line.push(b'\n');
            out.write_all(&line).await?;
        }
        rejected += p.rejects.len() as u64;
        if let Some(reason) = p.fatal {
            let v = serde_json::json!({"error": reason, "fatal": true});
            out.write_all(format!("{v}\n").as_bytes()).await?;
            out.flush().await?;
            return Err(std::io::Error::other(reason));
        }
        if let Some(ack) = p.ack {
            // Earlier answers go out before waiting on this batch's sync.
            out.flush().await?;
            match ack.await {
                Ok(Ok(a)) => {
                    seq = seq.max(a.last_seq);
                    accepted += (a.logged + a.duplicates.len()) as u64;
                    duplicates += a.duplicates.len() as u64;
                }
                Ok(Err(e)) => {
                    let v = serde_json::json!({"error": e.to_string(), "fatal": true});
                    out.write_all(format!("{v}\n").as_bytes()).await?;
                    out.flush().await?;
                    return Err(std::io::Error::other(e.to_string()));
                }
                Err(_) => return Err(std::io::Error::other("engine stopped")),
            }
        }
        line.clear();
        let v = serde_json::json!({"ack": seq, "accepted": accepted, "rejected": rejected, "duplicates": duplicates});
        serde_json::to_writer(&mut line, &v).expect("json");
        line.push(b'\n');
        out.write_all(&line).await?;
        out.flush().await?;
    }
    out.flush().await?;
    out.into_inner().shutdown().await
}
