//! TLS for TCP ingest and HTTP (rustls, with the *ring* provider: it builds with a
//! C compiler alone, no cmake or nasm).
//!
//! One certificate chain and key (`tls.cert_file`, `tls.key_file`, PEM) serve
//! both listeners; `tls.ingest` and `tls.http` say which of them use it. A
//! handshake must finish within `tls.handshake_timeout_ms`, so a client that
//! connects and never completes it cannot hold a connection slot.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// The certificate files, both set (`tls.cert_file`, `tls.key_file`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why the TLS configuration could not be loaded: the key, the file and the reason.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("config key {key}: {path}: {reason}")]
    File {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("config keys tls.cert_file and tls.key_file: {0}")]
    Rustls(#[from] rustls::Error),
}

fn file_error(key: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        key,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Reads the PEM files and builds the acceptor both listeners share.
pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| file_error("tls.cert_file", &files.cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error("tls.cert_file", &files.cert, e))?;
    if certs.is_empty() {
        return Err(file_error(
            "tls.cert_file",
            &files.cert,
            "no PEM certificate in it",
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| file_error("tls.key_file", &files.key, e))?;
    // The provider is named, not taken from the process default, so another
    // crate enabling a second provider cannot make the choice ambiguous.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Completes the server side of a handshake within `timeout`; `None` (logged at
/// debug) when it failed or took too long: the connection is simply dropped.
pub async fn handshake(
    acceptor: &TlsAcceptor,
    socket: tokio::net::TcpStream,
    timeout: std::time::Duration,
    peer: std::net::SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    match tokio::time::timeout(timeout, acceptor.accept(socket)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            metrics::counter!("shopstream_tls_handshakes_failed_total").increment(1);
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            metrics::counter!("shopstream_tls_handshakes_failed_total").increment(1);
            tracing::debug!(%peer, "TLS handshake timed out (tls.handshake_timeout_ms)");
            None
        }
    }
}
