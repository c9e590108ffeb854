//! The TCP listener: a cap on connections, TLS when configured, and per
//! connection the framing it opens with: bincode frames after the magic bytes
//! [`binary::MAGIC`](super::binary::MAGIC), NDJSON lines otherwise (see
//! [`super::connection`] for what a connection answers).
//!
//! With access control on, the first line (binary: the first frame after the
//! magic) must be `{"auth": "TOKEN"}` with a token of the `ingest` scope. It is
//! not answered when accepted, and not counted in the line or frame numbers of
//! answers, so a client's answers are the same with or without it; a missing or
//! refused one is answered with a fatal error line and the connection is closed
//! before anything else of it is read, so nothing it sent is logged.

use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};

use super::connection::{fail, read_more, write_answers, Pending, IN_FLIGHT, READ_CHUNK};
use super::{binary, ndjson};
use crate::auth::{token_from_first_line, Scope};
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

/// What the per-address limit counts by: an IPv4 address, or the /64 network of
/// an IPv6 one (one host commonly holds a whole /64, so its addresses are one
/// sender).
fn addr_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
        v4 => v4,
    }
}

impl PerAddr {
    fn take(&self, ip: IpAddr, max: usize) -> Option<AddrSlot> {
        let ip = addr_key(ip);
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
///
/// On a TLS listener nothing is written (a plain-text line in the middle of a
/// handshake is garbage to the client): the connection is just closed.
fn refuse(mut socket: TcpStream, reason: String, tls: bool) {
    metrics::counter!("shopstream_connections_refused_total").increment(1);
    tokio::spawn(async move {
        if !tls {
            let line = format!("{}\n", serde_json::json!({"error": reason, "fatal": true}));
            let _ = socket.write_all(line.as_bytes()).await;
        }
        let _ = socket.shutdown().await;
        linger(&mut socket).await;
    });
}

/// After a fatal answer: reads and discards what the client still sends, for a
/// moment, before the socket is closed. Closing with unread input makes the
/// kernel answer with a reset, and a client that is still writing then sees
/// "connection reset" instead of the line that says why. Nothing read here is
/// parsed, so nothing of it is logged.
async fn linger(rd: &mut (impl AsyncRead + Unpin)) {
    let mut scratch = [0u8; 16 * 1024];
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        while let Ok(n) = rd.read(&mut scratch).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Accepts connections until `shutdown` fires. Beyond `ingest.max_connections` open
/// at once, or `ingest.max_connections_per_addr` from one address, a new connection
/// is answered with one error line and closed. With `tls`, each connection
/// completes a handshake within the given time (holding its connection slot
/// meanwhile), or is dropped.
pub async fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    tls: Option<(tokio_rustls::TlsAcceptor, std::time::Duration)>,
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
                    // Out of file descriptors, say: do not spin on it.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let Some(slot) = per_addr.take(peer.ip(), per_addr_max) else {
            let ip = peer.ip();
            refuse(socket, format!("too many connections from {ip} (ingest.max_connections_per_addr = {per_addr_max})"), tls.is_some());
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refuse(
                socket,
                format!("too many connections (ingest.max_connections = {max})"),
                tls.is_some(),
            );
            continue;
        };
        let (engine, tls) = (engine.clone(), tls.clone());
        tokio::spawn(async move {
            let _ = socket.set_nodelay(true);
            let result = match tls {
                None => {
                    let (rd, wr) = socket.into_split();
                    handle(rd, wr, engine).await
                }
                Some((acceptor, timeout)) => {
                    match crate::tls::handshake(&acceptor, socket, timeout, peer).await {
                        Some(stream) => {
                            let (rd, wr) = tokio::io::split(stream);
                            handle(rd, wr, engine).await
                        }
                        None => Ok(()),
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
            drop(slot);
        });
    }
}

async fn handle(
    mut rd: impl AsyncRead + Unpin,
    wr: impl AsyncWrite + Unpin + Send + 'static,
    engine: Arc<Engine>,
) -> std::io::Result<()> {
    let (tx, rx) = mpsc::channel::<Pending>(IN_FLIGHT);
    let writer = tokio::spawn(write_answers(wr, rx, engine.config.idle_timeout));
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    // With access control on, the framing and the auth line must arrive within
    // `ingest.auth_timeout_ms` altogether: each read restarts the idle timer, so
    // without an overall limit a trickle of bytes would hold a slot for days.
    let deadline = engine
        .config
        .auth
        .enabled()
        .then(|| Instant::now() + engine.config.auth_timeout);
    let idle = engine.config.idle_timeout;
    // Sniff the framing from the first bytes.
    while buf.len() < binary::MAGIC.len() {
        let read = read_more(&mut rd, &mut buf, idle, &tx);
        let read = match deadline {
            None => read.await,
            Some(d) => match tokio::time::timeout_at(d.into(), read).await {
                Ok(r) => r,
                Err(_) => {
                    fail(&tx, no_auth_line(&engine)).await;
                    drop(tx);
                    let _ = writer.await;
                    return Ok(());
                }
            },
        };
        let n = match read {
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
    let framed = buf.starts_with(binary::MAGIC);
    if framed {
        buf.drain(..binary::MAGIC.len());
    }
    let result = async {
        if let Some(deadline) = deadline {
            if !authenticate(&mut rd, &mut buf, framed, &engine, &tx, deadline).await? {
                return Ok(());
            }
        }
        if framed {
            binary::read_frames(&mut rd, buf, &engine, &tx).await
        } else {
            ndjson::read_lines(&mut rd, buf, &engine, &tx).await
        }
    }
    .await;
    drop(tx);
    let written = writer.await.unwrap_or(Ok(()));
    if written.is_err() {
        // A fatal answer went out (and the writer's half is closed).
        linger(&mut rd).await;
    }
    result.and(written)
}

/// Reads the connection's first line (`framed`: first frame) and checks the token
/// in it for the `ingest` scope; on success removes it from `buf`. A refusal is
/// queued as a fatal answer and gives `false`: the caller reads nothing more.
async fn authenticate(
    rd: &mut (impl AsyncReadExt + Unpin),
    buf: &mut Vec<u8>,
    framed: bool,
    engine: &Engine,
    tx: &mpsc::Sender<Pending>,
    deadline: Instant,
) -> std::io::Result<bool> {
    let max = engine.config.max_line_bytes;
    loop {
        let verdict = match first_unit(buf, framed, max) {
            Err(reason) => Err(reason),
            Ok(Some((body, used))) => match token_from_first_line(&buf[body]).and_then(|token| {
                engine
                    .config
                    .auth
                    .check(Some(&token), Scope::Ingest)
                    .cloned()
            }) {
                Ok(token) => {
                    tracing::debug!(token = %token.name, "ingest connection authenticated");
                    buf.drain(..used);
                    return Ok(true);
                }
                Err(denied) => Err(denied.to_string()),
            },
            Ok(None) => Ok(()),
        };
        let reason = match verdict {
            Err(reason) => reason,
            Ok(()) => {
                let read = read_more(rd, buf, engine.config.idle_timeout, tx);
                match tokio::time::timeout_at(deadline.into(), read).await {
                    Err(_) => no_auth_line(engine),
                    Ok(Ok(0)) => "connection closed before its auth line".into(),
                    Ok(Ok(_)) => continue,
                    // Idle: `read_more` has told the client.
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::TimedOut => return Ok(false),
                    Ok(Err(e)) => return Err(e),
                }
            }
        };
        metrics::counter!("shopstream_auth_refused_total", "transport" => "tcp").increment(1);
        fail(tx, reason).await;
        return Ok(false);
    }
}

/// Why a connection is closed when its auth line did not come in time.
fn no_auth_line(engine: &Engine) -> String {
    format!(
        "no auth line within {} ms (ingest.auth_timeout_ms)",
        engine.config.auth_timeout.as_millis()
    )
}

/// The first line (or frame) in `buf` once it is complete: the range of its body
/// and the bytes it takes. Longer than `max` (`ingest.max_line_bytes`): refused.
fn first_unit(
    buf: &[u8],
    framed: bool,
    max: usize,
) -> Result<Option<(Range<usize>, usize)>, String> {
    let too_long = || format!("the auth line is over the {max}-byte limit");
    if framed {
        let Some(len) = buf.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        if len > max {
            return Err(too_long());
        }
        Ok((buf.len() >= 4 + len).then_some((4..4 + len, 4 + len)))
    } else {
        match memchr::memchr(b'\n', buf) {
            Some(nl) if nl > max => Err(too_long()),
            Some(nl) => Ok(Some((0..nl, nl + 1))),
            None if buf.len() > max => Err(too_long()),
            None => Ok(None),
        }
    }
}
