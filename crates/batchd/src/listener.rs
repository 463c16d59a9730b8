//! `batchd serve`'s accept loop: TLS when a certificate is given, a cap on open connections,
//! and timeouts that keep a slow or silent client from holding a connection forever (the
//! handshake, the request head, each piece of a body). `axum::serve` has none of these knobs.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::response::IntoResponse;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// How connections are taken and how long a client may dawdle.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open connections at most; more wait in the listen queue until one closes.
    pub max_connections: usize,
    /// From accept to the end of the TLS handshake.
    pub handshake_timeout: Duration,
    /// From the first byte of a request to the end of its head (HTTP/1).
    pub header_timeout: Duration,
    /// The longest wait for the next piece of a request body.
    pub body_timeout: Duration,
    /// The request head's largest size (URL and headers): past it, 431.
    pub max_head_bytes: usize,
    /// The longest URL (path and query): past it, 414.
    pub max_uri_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(60),
            max_head_bytes: 64 * 1024,
            max_uri_bytes: 8 * 1024,
        }
    }
}

/// The TLS configuration of a PEM certificate chain and its private key.
pub fn tls_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read the certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}: not a PEM certificate chain", cert.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{}: no certificate in it (expected PEM \"BEGIN CERTIFICATE\" blocks)",
        cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("{}: not a PEM private key", key.display()))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the certificate and the key do not go together")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Where a certificate and key are, from `--tls-cert` / `--tls-key` (both or neither).
pub fn tls_paths(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> anyhow::Result<Option<(PathBuf, PathBuf)>> {
    match (cert, key) {
        (Some(c), Some(k)) => Ok(Some((c, k))),
        (None, None) => Ok(None),
        _ => anyhow::bail!("--tls-cert and --tls-key go together: give both, or neither"),
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets open requests finish (up
/// to `drain`).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let (max_uri, max_head) = (limits.max_uri_bytes, limits.max_head_bytes);
    let app = app
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            limits.body_timeout,
        ))
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| async move {
                if request.uri().to_string().len() > max_uri {
                    let message = format!("The URL is longer than {max_uri} bytes.");
                    return (axum::http::StatusCode::URI_TOO_LONG, message).into_response();
                }
                let head: usize = request
                    .headers()
                    .iter()
                    .map(|(name, value)| name.as_str().len() + value.len() + 4)
                    .sum();
                if head > max_head {
                    let message =
                        format!("The request's headers are larger than {max_head} bytes.");
                    let status = axum::http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
                    return (status, message).into_response();
                }
                next.run(request).await
            },
        ));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    // HTTP/1.1 on plain connections (what boto3, the AWS CLI and the openai SDK speak), h2 only
    // when TLS negotiates it: sniffing the protocol first would read with no timeout at all.
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_head_bytes.max(8192));
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_head_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(limits.header_timeout)
        .keep_alive_timeout(limits.header_timeout);
    let (h1, h2) = (Arc::new(h1), Arc::new(h2));
    tokio::pin!(shutdown);
    loop {
        // A permit first: at the cap, new clients wait in the kernel's queue, not in memory.
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let (h1, h2) = (h1.clone(), h2.clone());
        let acceptor = acceptor.clone();
        let watcher = graceful.watcher();
        let handshake_timeout = limits.handshake_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            let served = match acceptor {
                None => {
                    let conn = h1.serve_connection(TokioIo::new(stream), service);
                    watcher.watch(conn).await.map_err(|e| e.to_string())
                }
                Some(acceptor) => {
                    let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                        let conn = h2.serve_connection(TokioIo::new(tls), service);
                        watcher.watch(conn).await.map_err(|e| e.to_string())
                    } else {
                        let conn = h1.serve_connection(TokioIo::new(tls), service);
                        watcher.watch(conn).await.map_err(|e| e.to_string())
                    }
                }
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("open connections did not finish in {drain:?}; closing them");
    }
}
