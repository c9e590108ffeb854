//! Starting and stopping the whole server: engine (log replay first), the TCP
//! ingest listener and the HTTP listener, with one shutdown signal for all.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::catalog::StartupError;
use crate::config::Config;
use crate::runtime::{Engine, EngineError, ReplayError};

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Definitions(#[from] StartupError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("refusing to listen on {addr} ({key}) without access control: it is not a loopback address, so anyone who can reach it could send and read everything. Configure [[auth.tokens]] (see config/default.toml), or pass --insecure (auth.insecure = true) to allow it")]
    Insecure { key: &'static str, addr: SocketAddr },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// Refuses a configuration that listens beyond loopback with no tokens, unless
/// `auth.insecure`: an open port on a network should be a decision, not a default.
fn check_exposure(config: &Config) -> Result<(), ServerError> {
    if config.auth.enabled() || config.insecure {
        return Ok(());
    }
    for (key, addr) in [
        ("ingest.tcp_addr", config.tcp_addr),
        ("http.addr", config.http_addr),
    ] {
        if !addr.ip().is_loopback() {
            return Err(ServerError::Insecure { key, addr });
        }
    }
    Ok(())
}

/// How long a graceful shutdown waits for open responses (SSE streams, slow
/// readers) before it closes them.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// A running server. Dropping it does not stop it; call [`Server::shutdown`].
pub struct Server {
    pub engine: Arc<Engine>,
    pub tcp_addr: SocketAddr,
    pub http_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Replays the log, then binds the listeners (port 0 picks a free port) and
    /// starts serving. `progress` sees (bytes replayed, bytes total). Access
    /// control and TLS settings are checked first, before a long replay.
    pub async fn start(
        config: Config,
        progress: impl FnMut(u64, u64) + Send + 'static,
    ) -> Result<Server, ServerError> {
        check_exposure(&config)?;
        let tls = config
            .tls
            .as_ref()
            .map(crate::tls::acceptor)
            .transpose()?
            .map(|acceptor| (acceptor, config.tls_handshake_timeout));
        let tls_for = |on: bool| tls.clone().filter(|_| on);
        let (tcp_tls, http_tls) = (tls_for(config.tls_ingest), tls_for(config.tls_http));
        if tls.is_some() && !config.tls_ingest && !config.tls_http {
            tracing::warn!(
                "tls.cert_file and tls.key_file are set, but tls.ingest and tls.http are both \
                 false: neither listener uses TLS"
            );
        }
        crate::serve::health::metrics_handle();
        let views = crate::serve::views();
        let hosts = crate::serve::hosts(&views);
        for h in &hosts {
            h.check(&config)?;
        }
        let engine = tokio::task::spawn_blocking(move || Engine::start(config, &hosts, progress))
            .await
            .map_err(|e| EngineError::Replay(ReplayError::Task(e.to_string())))??;
        Self::apply_configured_definitions(&engine).await?;
        let bind = |addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind { addr, source })
        };
        let tcp = bind(engine.config.tcp_addr).await?;
        let http = bind(engine.config.http_addr).await?;
        let tcp_addr = tcp.local_addr().expect("bound");
        let http_addr = http.local_addr().expect("bound");
        let (shutdown, rx) = watch::channel(false);
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(crate::ingest::listener::serve(
            tcp,
            engine.clone(),
            tcp_tls,
            rx.clone(),
        )));
        let app = crate::http::router(engine.clone(), &views);
        let header_timeout = engine.config.header_timeout;
        let http_connections = engine.config.max_http_connections;
        let mut http_rx = rx.clone();
        tasks.push(tokio::spawn(async move {
            let stop = async move {
                let _ = http_rx.changed().await;
            };
            crate::http::serve(http, app, header_timeout, http_tls, http_connections, stop).await;
        }));
        tracing::info!(%tcp_addr, %http_addr, "shopstream is serving");
        Ok(Server {
            engine,
            tcp_addr,
            http_addr,
            shutdown,
            tasks,
        })
    }

    /// Logs what the configuration defines (built-in segments, the segment file)
    /// like API definitions, so that a replay sees them at the same epoch, before
    /// anything is served.
    async fn apply_configured_definitions(engine: &Engine) -> Result<(), ServerError> {
        let _one_at_a_time = engine.definitions.lock().await;
        let controls = engine.startup_controls()?;
        if !controls.is_empty() {
            tracing::info!(
                changes = controls.len(),
                "applying the configured definitions"
            );
            engine.define(controls).await?;
        }
        Ok(())
    }

    /// Stops the listeners, then the engine (which drains the log queue).
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        self.engine.close_feeds();
        // A client that stops reading can hold a response open forever; after
        // SHUTDOWN_GRACE the listeners are stopped regardless.
        for t in self.tasks {
            let abort = t.abort_handle();
            if tokio::time::timeout(SHUTDOWN_GRACE, t).await.is_err() {
                tracing::warn!("a connection did not finish within the shutdown grace; closing it");
                abort.abort();
            }
        }
        let engine = self.engine;
        let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
    }
}
