//! The TCP listener: a cap on connections, and per connection the framing it
//! opens with: bincode frames after the magic bytes
//! [`binary::MAGIC`](super::binary::MAGIC), NDJSON lines otherwise (see
//! [`super::connection`] for what a connection answers).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};

use super::connection::{read_more, write_answers, Pending, IN_FLIGHT, READ_CHUNK};
use super::{binary, ndjson};
use crate::runtime::Engine;

/// Open connections per remote address, so that one sender (or one misbehaving
/// host's idle or half-open sockets) cannot take every `ingest.max_connections` slot.
#[derive(Clone, Default)]
struct PerAddr(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One connection's place in [`PerAddr`], given back when dropped.
struct AddrSlot {
    map: PerAddr,
    ip: IpAddr,
}

impl PerAddr {
    fn take(&self, ip: IpAddr, max: usize) -> Option<AddrSlot> {
        let mut m = self.0.lock().expect("poisoned");
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(AddrSlot {
            map: self.clone(),
            ip,
        })
    }
}

impl Drop for AddrSlot {
    fn drop(&mut self) {
        let mut m = self.map.0.lock().expect("poisoned");
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// Refuses a connection with one fatal error line naming the limit.
fn refuse(mut socket: TcpStream, reason: String) {
    metrics::counter!("shopstream_connections_refused_total").increment(1);
    tokio::spawn(async move {
        let line = format!("{}\n", serde_json::json!({"error": reason, "fatal": true}));
        let _ = socket.write_all(line.as_bytes()).await;
        let _ = socket.shutdown().await;
    });
}

/// Accepts connections until `shutdown` fires. Beyond `ingest.max_connections` open
/// at once, or `ingest.max_connections_per_addr` from one address, a new connection
/// is answered with one error line and closed.
pub async fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let max = engine.config.max_connections;
    let per_addr_max = engine.config.max_connections_per_addr;
    let per_addr = PerAddr::default();
    let permits = Arc::new(Semaphore::new(max));
    loop {
        let (socket, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let Some(slot) = per_addr.take(peer.ip(), per_addr_max) else {
            let ip = peer.ip();
            refuse(socket, format!("too many connections from {ip} (ingest.max_connections_per_addr = {per_addr_max})"));
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refuse(
                socket,
                format!("too many connections (ingest.max_connections = {max})"),
            );
            continue;
        };
        let engine = engine.clone();
        tokio::spawn(async move {
            let _ = socket.set_nodelay(true);
            if let Err(e) = handle(socket, engine).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
            drop(slot);
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
