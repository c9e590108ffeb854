//! The TCP listener: a cap on connections, and per connection the framing it
//! opens with: bincode frames after the magic bytes
//! [`binary::MAGIC`](super::binary::MAGIC), NDJSON lines otherwise (see
//! [`super::connection`] for what a connection answers).

use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};

use super::connection::{read_more, write_answers, Pending, IN_FLIGHT, READ_CHUNK};
use super::{binary, ndjson};
use crate::runtime::Engine;

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
        ndjson::read_lines(&mut rd, buf, &engine, &tx).await
    };
    drop(tx);
    let written = writer.await.unwrap_or(Ok(()));
    result.and(written)
}
