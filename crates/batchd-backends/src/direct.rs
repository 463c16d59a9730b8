//! A lean HTTP/1.1 client for the common case: a model server at a plain `http://` address that
//! no proxy setting covers (vLLM, llama.cpp, SGLang, Ollama beside batchd).
//!
//! reqwest's layers (redirects, proxies, timeouts, decompression) parse the URL again and box
//! every request; on this path they give nothing (docs/benchmarks.md measures what they cost).
//! Here: hyper's HTTP/1.1 connections kept alive in a pool sized to the concurrency, the URI and
//! headers built once. HTTPS and proxied addresses stay on reqwest.

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HOST, HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::{BackendError, ErrorKind};

/// A status, the headers and the whole body of an answer.
pub(crate) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Keep-alive HTTP/1.1 connections to one `host:port`.
pub(crate) struct DirectClient {
    /// What `TcpStream::connect` resolves: `host:port`.
    authority: String,
    /// Sent with every request: `Host` and the client's default headers.
    headers: HeaderMap,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
    max_idle: usize,
    connect_timeout: Duration,
}

impl DirectClient {
    /// A client for `url`'s host and port. `None` unless the scheme is `http` with a host:
    /// the caller uses reqwest for the rest.
    pub fn new(
        url: &reqwest::Url,
        mut headers: HeaderMap,
        max_idle: usize,
        connect_timeout: Duration,
    ) -> Option<Self> {
        if url.scheme() != "http" {
            return None;
        }
        let host = url.host_str()?;
        let port = url.port_or_known_default()?;
        // `host_str` keeps an IPv6 address's brackets, as both `Host` and connect want.
        let authority = format!("{host}:{port}");
        let host_header = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        headers.insert(HOST, HeaderValue::from_str(&host_header).ok()?);
        Some(Self {
            authority,
            headers,
            idle: Mutex::new(Vec::new()),
            max_idle: max_idle.max(1),
            connect_timeout,
        })
    }

    /// POSTs `body` to `path` (origin form, e.g. `/v1/chat/completions`) and reads the whole
    /// answer. A request a pooled connection could not take (the server closed it while idle)
    /// goes out again on another; one that was sent is never sent twice.
    pub async fn post(&self, path: &Uri, body: Vec<u8>) -> Result<Answer, BackendError> {
        let mut request = Request::new(Full::new(Bytes::from(body)));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = path.clone();
        *request.headers_mut() = self.headers.clone();
        loop {
            let (mut sender, pooled) = match self.take_idle() {
                Some(sender) => (sender, true),
                None => (self.connect().await?, false),
            };
            if sender.ready().await.is_err() {
                if pooled {
                    continue;
                }
                return Err(connect_error(
                    &self.authority,
                    "the connection closed at once",
                ));
            }
            let response = match sender.try_send_request(request).await {
                Ok(response) => response,
                Err(mut e) => match e.take_message() {
                    Some(unsent) if pooled => {
                        request = unsent;
                        continue;
                    }
                    _ => return Err(hyper_error(e.into_error())),
                },
            };
            let (parts, incoming) = response.into_parts();
            let body = match incoming.collect().await {
                Ok(collected) => {
                    self.put_idle(sender);
                    collected.to_bytes()
                }
                // A body that breaks off does not change the verdict an error status gave.
                Err(_) if !parts.status.is_success() => Bytes::new(),
                Err(e) => return Err(hyper_error(e)),
            };
            return Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            });
        }
    }

    fn take_idle(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        while let Some(sender) = idle.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    fn put_idle(&self, sender: SendRequest<Full<Bytes>>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if idle.len() < self.max_idle {
            idle.push(sender);
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, BackendError> {
        let stream =
            tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.authority))
                .await
                .map_err(|_| {
                    BackendError::new(
                        ErrorKind::Timeout,
                        format!("cannot connect to {}: timed out", self.authority),
                    )
                })?
                .map_err(|e| connect_error(&self.authority, e))?;
        // Small request bodies: do not wait for more to fill a segment.
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(hyper_error)?;
        // Ends when the server closes or every sender is gone; errors reach the request.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }
}

fn connect_error(authority: &str, cause: impl std::fmt::Display) -> BackendError {
    BackendError::new(
        ErrorKind::Connect,
        format!("cannot connect to {authority}: {cause}"),
    )
}

/// Everything hyper reports after the connection is made: it broke, or the server spoke
/// something that is not HTTP. Either way another try may work.
fn hyper_error(e: hyper::Error) -> BackendError {
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else {
        ErrorKind::Connect
    };
    BackendError::new(kind, crate::http::error_chain(&e))
}
