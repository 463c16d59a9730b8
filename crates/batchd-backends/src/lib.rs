//! Model backends: the [`ModelBackend`] trait (chat and embeddings over the neutral types of
//! `batchd-formats`) and its implementations, with errors classified for retry.
//!
//! - [`openai`]: any OpenAI-compatible server (vLLM, SGLang, llama.cpp, Ollama).
//! - [`bedrock`]: bedrock-runtime on demand, record bodies as they are.
//! - [`adaptive`]: an AIMD concurrency limiter around any backend.
//!
//! What a backend can do is one [`BackendInfo`] value ([`ModelBackend::info`]).
//!
//! Backends know nothing of jobs, records or files: the engine owns retries, timeouts and
//! concurrency, deciding from [`BackendError::is_retryable`], never from message text.

pub mod adaptive;
pub mod bedrock;
mod direct;
mod http;
pub mod openai;

use std::num::NonZeroUsize;
use std::time::Duration;

use batchd_formats::neutral::{ChatRequest, ChatResponse, EmbedRequest, EmbedResponse};

/// What went wrong, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 429: the backend asks us to slow down. Retryable.
    RateLimited,
    /// 5xx. Retryable.
    Server,
    /// No answer in time. Retryable.
    Timeout,
    /// Could not connect or the connection broke. Retryable.
    Connect,
    /// Any other 4xx: the request itself is wrong. Not retryable.
    Client,
    /// The request carries something this backend cannot express. Not retryable.
    Unsupported,
    /// The backend answered 2xx with a body we could not understand. Not retryable.
    Protocol,
}

/// A failed backend call.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct BackendError {
    pub kind: ErrorKind,
    /// HTTP status when the backend answered.
    pub status: Option<u16>,
    pub message: String,
    /// The backend's `Retry-After`, when it sent one.
    pub retry_after: Option<Duration>,
}

impl BackendError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            status: None,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Classifies an HTTP error status: 429 and 5xx are retryable, other 4xx are not.
    pub fn from_status(
        status: u16,
        message: impl Into<String>,
        retry_after: Option<Duration>,
    ) -> Self {
        let kind = match status {
            429 => ErrorKind::RateLimited,
            500..=599 => ErrorKind::Server,
            408 => ErrorKind::Timeout,
            _ => ErrorKind::Client,
        };
        Self {
            kind,
            status: Some(status),
            message: message.into(),
            retry_after,
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::RateLimited | ErrorKind::Server | ErrorKind::Timeout | ErrorKind::Connect
        )
    }

    /// The `errorCode` of the record's error line: the backend's status where it answered,
    /// else a status that describes the failure.
    pub fn error_code(&self) -> u16 {
        if let Some(status) = self.status {
            return status;
        }
        match self.kind {
            ErrorKind::RateLimited => 429,
            ErrorKind::Server | ErrorKind::Protocol => 500,
            ErrorKind::Timeout => 408,
            ErrorKind::Connect => 503,
            ErrorKind::Client | ErrorKind::Unsupported => 400,
        }
    }
}

/// A model server batchd sends records to.
#[async_trait::async_trait]
pub trait ModelBackend: Send + Sync {
    /// One chat completion.
    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, BackendError>;

    /// Embeddings for one or more texts, one vector per input in order.
    async fn embed(&self, request: &EmbedRequest) -> Result<EmbedResponse, BackendError>;

    /// What this backend can do. Required, with no default: a wrapper must say what it
    /// serves (usually its inner backend's info), so it cannot drop a capability by forgetting
    /// to forward one method.
    fn info(&self) -> BackendInfo;

    /// Runs one record body as it is and returns the model's answer as it is (backends whose
    /// [`BackendInfo::runs_native`] is set).
    async fn invoke_native(&self, call: NativeCall<'_>) -> Result<NativeAnswer, BackendError> {
        let _ = call;
        Err(BackendError::new(
            ErrorKind::Unsupported,
            "this backend does not run native record bodies",
        ))
    }
}

/// Everything the engine asks of a backend before calling it, as one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendInfo {
    /// [`ModelBackend::chat`] answers (else it returns a typed error).
    pub chat: bool,
    /// [`ModelBackend::embed`] answers (else it returns a typed error).
    pub embed: bool,
    /// Record bodies run as they are (Bedrock on-demand), through
    /// [`ModelBackend::invoke_native`], instead of the neutral chat/embed calls.
    pub runs_native: bool,
    /// The most inputs one [`ModelBackend::embed`] call may carry; `None` leaves it to the
    /// model's `embed_batch_size`.
    pub max_embed_batch: Option<NonZeroUsize>,
}

impl BackendInfo {
    /// A server that chats and embeds through the neutral calls, with no batch limit of its own.
    pub const NEUTRAL: BackendInfo = BackendInfo {
        chat: true,
        embed: true,
        runs_native: false,
        max_embed_batch: None,
    };

    /// Inputs per embed call: `wanted`, cut to this backend's limit, at least 1.
    pub fn embed_batch(&self, wanted: usize) -> usize {
        self.max_embed_batch
            .map_or(wanted, |max| wanted.min(max.get()))
            .max(1)
    }
}

/// A record body for a backend that runs bodies as they are.
#[derive(Debug, Clone, Copy)]
pub enum NativeCall<'a> {
    /// A Converse request body (the record's modelInput), for the Converse API.
    Converse(&'a str),
    /// A model family's InvokeModel body, for the InvokeModel API.
    InvokeModel(&'a str),
}

/// The answer to a [`NativeCall`]: the response body (JSON) and its token counts.
#[derive(Debug, Clone)]
pub struct NativeAnswer {
    pub body: Vec<u8>,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embed_batch_is_cut_to_the_backend_limit() {
        let mut info = BackendInfo::NEUTRAL;
        assert_eq!(info.embed_batch(16), 16);
        assert_eq!(info.embed_batch(0), 1);
        info.max_embed_batch = NonZeroUsize::new(4);
        assert_eq!(info.embed_batch(16), 4);
        assert_eq!(info.embed_batch(3), 3);
    }

    #[test]
    fn statuses_are_classified_for_retry() {
        for (status, retryable) in [
            (429, true),
            (500, true),
            (502, true),
            (503, true),
            (400, false),
            (404, false),
            (422, false),
        ] {
            let e = BackendError::from_status(status, "x", None);
            assert_eq!(e.is_retryable(), retryable, "{status}");
            assert_eq!(e.error_code(), status);
        }
        assert!(BackendError::new(ErrorKind::Connect, "refused").is_retryable());
        assert!(BackendError::new(ErrorKind::Timeout, "slow").is_retryable());
        assert!(!BackendError::new(ErrorKind::Unsupported, "video").is_retryable());
        assert_eq!(
            BackendError::new(ErrorKind::Timeout, "slow").error_code(),
            408
        );
    }
}
