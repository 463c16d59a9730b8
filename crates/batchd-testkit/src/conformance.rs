//! The `ModelBackend` conformance suite: the contract every backend keeps, as checks that take
//! a backend (and what it is expected to serve) and return the first broken rule as a
//! [`Violation`]. Each backend's tests run them against a working instance
//! ([`check_working`]), a down or throttling one ([`check_fails_with`]) and, for wrappers,
//! the backend they wrap ([`check_wrapper`]); [`check_around_openai`] does all three for a
//! wrapper (or none) around the OpenAI backend on a [`FakeServer`].
//!
//! Every call runs in its own task with a time limit, so a backend that panics or hangs is a
//! violation, not a crashed or stuck test.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use batchd_backends::openai::{OpenAiBackend, OpenAiConfig};
use batchd_backends::{
    BackendError, BackendInfo, ErrorKind, ModelBackend, NativeAnswer, NativeCall,
};
use batchd_formats::neutral::{
    ChatMessage, ChatRequest, ChatResponse, ContentPart, EmbedRequest, EmbedResponse, Role,
};

use crate::{FakeConfig, FakeServer};

/// The longest one call may take (the embedded models load on their first call).
pub const CALL_LIMIT: Duration = Duration::from_secs(120);

/// Most inputs the embed check sends in one call, however large the backend's limit.
pub const MAX_CHECKED_BATCH: usize = 32;

/// A broken rule of the contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Which check found it.
    pub check: &'static str,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.check, self.detail)
    }
}

impl std::error::Error for Violation {}

/// The outcome of a check.
pub type Checked = Result<(), Violation>;

fn violation(check: &'static str, detail: impl Into<String>) -> Violation {
    Violation {
        check,
        detail: detail.into(),
    }
}

/// A short chat request: a few tokens in, at most eight out.
pub fn chat_request() -> ChatRequest {
    ChatRequest {
        messages: vec![ChatMessage {
            role: Role::User,
            content: vec![ContentPart::Text("Say hello.".into())],
        }],
        max_tokens: Some(8),
        temperature: Some(0.0),
        ..ChatRequest::default()
    }
}

/// A Converse body of the same request, for backends that run bodies as they are.
pub const CONVERSE_BODY: &str = r#"{"messages":[{"role":"user","content":[{"text":"Say hello."}]}],"inferenceConfig":{"maxTokens":8,"temperature":0}}"#;

/// `n` embedding inputs; the first and third are the same text, the second differs.
pub fn embed_inputs(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| match i {
            0 | 2 => "the cat sat on the mat".to_owned(),
            1 => "quarterly revenue grew".to_owned(),
            i => format!("input number {i}"),
        })
        .collect()
}

type Called<T> = Result<Result<T, BackendError>, Violation>;

/// Runs one call in its own task, within [`CALL_LIMIT`]; a panic or a hang is a violation.
async fn run<T, F, Fut>(check: &'static str, backend: &Arc<dyn ModelBackend>, call: F) -> Called<T>
where
    T: Send + 'static,
    F: FnOnce(Arc<dyn ModelBackend>) -> Fut,
    Fut: Future<Output = Result<T, BackendError>> + Send + 'static,
{
    run_within(CALL_LIMIT, check, backend, call).await
}

async fn run_within<T, F, Fut>(
    limit: Duration,
    check: &'static str,
    backend: &Arc<dyn ModelBackend>,
    call: F,
) -> Called<T>
where
    T: Send + 'static,
    F: FnOnce(Arc<dyn ModelBackend>) -> Fut,
    Fut: Future<Output = Result<T, BackendError>> + Send + 'static,
{
    let task = tokio::spawn(call(backend.clone()));
    let abort = task.abort_handle();
    match tokio::time::timeout(limit, task).await {
        Err(_) => {
            abort.abort();
            Err(violation(check, format!("no answer within {limit:?}")))
        }
        Ok(Err(e)) if e.is_panic() => Err(violation(check, "the backend panicked")),
        Ok(Err(e)) => Err(violation(check, format!("the call's task failed: {e}"))),
        Ok(Ok(result)) => Ok(result),
    }
}

async fn chat(backend: &Arc<dyn ModelBackend>, check: &'static str) -> Called<ChatResponse> {
    run(
        check,
        backend,
        |b| async move { b.chat(&chat_request()).await },
    )
    .await
}

async fn embed(
    backend: &Arc<dyn ModelBackend>,
    check: &'static str,
    inputs: Vec<String>,
) -> Called<EmbedResponse> {
    run(check, backend, |b| async move {
        b.embed(&EmbedRequest {
            inputs,
            dimensions: None,
        })
        .await
    })
    .await
}

async fn native(backend: &Arc<dyn ModelBackend>, check: &'static str) -> Called<NativeAnswer> {
    run(check, backend, |b| async move {
        b.invoke_native(NativeCall::Converse(CONVERSE_BODY)).await
    })
    .await
}

/// A call the backend does not serve must fail with a typed error that retrying cannot fix.
fn refused<T>(check: &'static str, result: Result<T, BackendError>) -> Checked {
    match result {
        Ok(_) => Err(violation(
            check,
            "answered a call its info says it does not serve",
        )),
        Err(e) if matches!(e.kind, ErrorKind::Unsupported | ErrorKind::Client) => Ok(()),
        Err(e) => Err(violation(
            check,
            format!(
                "refused with {:?} (want Unsupported or Client): {e}",
                e.kind
            ),
        )),
    }
}

/// Every check a working backend passes: [`check_info`], [`check_chat`], [`check_native`],
/// [`check_embed`].
pub async fn check_working(backend: &Arc<dyn ModelBackend>, expected: BackendInfo) -> Checked {
    check_info(backend.as_ref(), expected)?;
    check_chat(backend).await?;
    check_native(backend).await?;
    check_embed(backend).await
}

/// `info()` is what the backend is known to serve, and the same on every call.
pub fn check_info(backend: &dyn ModelBackend, expected: BackendInfo) -> Checked {
    let info = backend.info();
    if info != expected {
        return Err(violation(
            "info",
            format!("info() is {info:?}, expected {expected:?}"),
        ));
    }
    if backend.info() != info {
        return Err(violation("info", "info() changed between two calls"));
    }
    Ok(())
}

/// Where the info says it chats, a chat request gets text and token counts; elsewhere a
/// non-retryable typed error.
pub async fn check_chat(backend: &Arc<dyn ModelBackend>) -> Checked {
    const CHECK: &str = "chat";
    let result = chat(backend, CHECK).await?;
    if !backend.info().chat {
        return refused(CHECK, result);
    }
    let response = result.map_err(|e| violation(CHECK, format!("failed: {e} ({:?})", e.kind)))?;
    let has_text = response
        .content
        .iter()
        .any(|part| matches!(part, ContentPart::Text(t) if !t.trim().is_empty()));
    if !has_text {
        return Err(violation(
            CHECK,
            format!("no text in the answer: {:?}", response.content),
        ));
    }
    if response.usage.input_tokens == 0 || response.usage.output_tokens == 0 {
        return Err(violation(
            CHECK,
            format!("token usage missing: {:?}", response.usage),
        ));
    }
    Ok(())
}

/// Where the info says it runs bodies as they are, a Converse body gets a Converse answer
/// with text and token counts; elsewhere `Unsupported`.
pub async fn check_native(backend: &Arc<dyn ModelBackend>) -> Checked {
    const CHECK: &str = "native";
    let result = native(backend, CHECK).await?;
    if !backend.info().runs_native {
        return match result {
            Err(e) if e.kind == ErrorKind::Unsupported => Ok(()),
            Err(e) => Err(violation(
                CHECK,
                format!("refused with {:?} (want Unsupported): {e}", e.kind),
            )),
            Ok(_) => Err(violation(
                CHECK,
                "ran a native body though its info says it does not",
            )),
        };
    }
    let answer = result.map_err(|e| violation(CHECK, format!("failed: {e} ({:?})", e.kind)))?;
    let body: serde_json::Value = serde_json::from_slice(&answer.body)
        .map_err(|e| violation(CHECK, format!("the answer is not JSON: {e}")))?;
    let text = body["output"]["message"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    if text.trim().is_empty() {
        return Err(violation(CHECK, format!("no text in the answer: {body}")));
    }
    if answer.input_tokens == 0 || answer.output_tokens == 0 {
        return Err(violation(
            CHECK,
            format!(
                "token counts missing: {} in, {} out",
                answer.input_tokens, answer.output_tokens
            ),
        ));
    }
    Ok(())
}

/// Where the info says it embeds, one call of as many inputs as `max_embed_batch` allows (at
/// most [`MAX_CHECKED_BATCH`], at least 3) gets one finite, non-zero vector per input, all of
/// one width, in input order, and a token count; elsewhere a non-retryable typed error.
pub async fn check_embed(backend: &Arc<dyn ModelBackend>) -> Checked {
    const CHECK: &str = "embed";
    let info = backend.info();
    let n = info
        .max_embed_batch
        .map_or(3, |max| max.get().min(MAX_CHECKED_BATCH));
    let result = embed(backend, CHECK, embed_inputs(n)).await?;
    if !info.embed {
        return refused(CHECK, result);
    }
    let response = result.map_err(|e| {
        violation(
            CHECK,
            format!(
                "{n} inputs (max_embed_batch {:?}) failed: {e} ({:?})",
                info.max_embed_batch, e.kind
            ),
        )
    })?;
    let vectors = &response.embeddings;
    if vectors.len() != n {
        return Err(violation(
            CHECK,
            format!("{} vectors for {n} inputs", vectors.len()),
        ));
    }
    let width = vectors[0].len();
    for (i, v) in vectors.iter().enumerate() {
        if v.is_empty() || v.len() != width {
            return Err(violation(
                CHECK,
                format!("vector {i} has {} values, vector 0 has {width}", v.len()),
            ));
        }
        if v.iter().any(|x| !x.is_finite()) || v.iter().all(|x| *x == 0.0) {
            return Err(violation(
                CHECK,
                format!("vector {i} is zero or not finite"),
            ));
        }
    }
    if n >= 3 && (vectors[0] != vectors[2] || vectors[0] == vectors[1]) {
        return Err(violation(
            CHECK,
            "vectors are not in input order: equal inputs 0 and 2 must match, input 1 differ",
        ));
    }
    if response.input_tokens == 0 {
        return Err(violation(CHECK, "input token count missing"));
    }
    Ok(())
}

/// A backend that is down or throttling fails every call its info says it serves with `want`
/// (the retry class), in time and without panicking.
pub async fn check_fails_with(backend: &Arc<dyn ModelBackend>, want: ErrorKind) -> Checked {
    const CHECK: &str = "failure";
    let info = backend.info();
    let mut kinds = Vec::new();
    if info.chat {
        kinds.push(("chat", chat(backend, CHECK).await?.map(|_| ())));
    }
    if info.runs_native {
        kinds.push(("invoke_native", native(backend, CHECK).await?.map(|_| ())));
    }
    if info.embed {
        kinds.push((
            "embed",
            embed(backend, CHECK, embed_inputs(3)).await?.map(|_| ()),
        ));
    }
    if kinds.is_empty() {
        return Err(violation(CHECK, "the backend serves no call to check"));
    }
    for (call, result) in kinds {
        match result {
            Ok(()) => {
                return Err(violation(
                    CHECK,
                    format!("{call} answered; expected {want:?}"),
                ));
            }
            Err(e) if e.kind != want => {
                return Err(violation(
                    CHECK,
                    format!("{call} failed with {:?}, expected {want:?}: {e}", e.kind),
                ));
            }
            Err(_) => {}
        }
    }
    Ok(())
}

/// A wrapper serves exactly what the backend it wraps serves.
pub fn check_wrapper(wrapper: &dyn ModelBackend, inner: &dyn ModelBackend) -> Checked {
    let (outer, inner) = (wrapper.info(), inner.info());
    if outer != inner {
        return Err(violation(
            "wrapper",
            format!("the wrapper's info() is {outer:?}, the wrapped backend's {inner:?}"),
        ));
    }
    Ok(())
}

/// `http://127.0.0.1:PORT` where nothing listens: a port that was free a moment ago.
pub async fn nothing_listening() -> std::io::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    drop(listener);
    Ok(format!("http://{addr}"))
}

/// An OpenAI-compatible backend on `base_url` for model `fake-model`.
pub fn openai_backend(base_url: String) -> Result<Arc<dyn ModelBackend>, BackendError> {
    crate::install_crypto_provider();
    let backend = OpenAiBackend::new(OpenAiConfig {
        base_url,
        model: "fake-model".into(),
        api_key: None,
        max_connections: 4,
    })?;
    Ok(Arc::new(backend))
}

/// The suite against `wrap(openai on a FakeServer)`: the wrapper's info is openai's, it works,
/// and it fails with the right retry class when nothing listens (`Connect`), when the server
/// throttles (`RateLimited`) and when it is overloaded (`Server`).
pub async fn check_around_openai(
    wrap: impl Fn(Arc<dyn ModelBackend>) -> Arc<dyn ModelBackend>,
) -> Checked {
    let setup = |e: &dyn fmt::Display| violation("setup", e.to_string());
    let server = FakeServer::start(FakeConfig::default())
        .await
        .map_err(|e| setup(&e))?;
    let inner = openai_backend(server.base_url()).map_err(|e| setup(&e))?;
    let backend = wrap(inner.clone());
    check_wrapper(backend.as_ref(), inner.as_ref())?;
    check_working(&backend, BackendInfo::NEUTRAL).await?;

    let url = nothing_listening().await.map_err(|e| setup(&e))?;
    let down = wrap(openai_backend(url).map_err(|e| setup(&e))?);
    check_fails_with(&down, ErrorKind::Connect).await?;

    for (config, want) in [
        (
            FakeConfig {
                rate_429: 1.0,
                ..FakeConfig::default()
            },
            ErrorKind::RateLimited,
        ),
        (
            FakeConfig {
                rate_503: 1.0,
                ..FakeConfig::default()
            },
            ErrorKind::Server,
        ),
    ] {
        server.set_config(config);
        check_fails_with(&backend, want).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Each check fails on a backend that breaks its rule.

    use std::num::NonZeroUsize;

    use batchd_formats::neutral::{StopReason, Usage};

    use super::*;

    /// What a scripted backend gets wrong.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Fault {
        None,
        EmptyText,
        NoUsage,
        Panics,
        Hangs,
        ChatsAnyway,
        RetryableRefusal,
        OneVectorShort,
        Shuffled,
        NativeWithoutTokens,
        /// Every call fails to connect.
        Down,
    }

    struct Scripted {
        info: BackendInfo,
        fault: Fault,
    }

    fn scripted(info: BackendInfo, fault: Fault) -> Arc<dyn ModelBackend> {
        Arc::new(Scripted { info, fault })
    }

    fn vector(text: &str) -> Vec<f32> {
        vec![text.len() as f32, f32::from(text.as_bytes()[0]), 1.0]
    }

    #[async_trait::async_trait]
    impl ModelBackend for Scripted {
        fn info(&self) -> BackendInfo {
            self.info
        }

        async fn chat(&self, _: &ChatRequest) -> Result<ChatResponse, BackendError> {
            match self.fault {
                Fault::Panics => panic!("scripted panic"),
                Fault::Hangs => return std::future::pending().await,
                Fault::Down => return Err(BackendError::new(ErrorKind::Connect, "refused")),
                _ => {}
            }
            if !self.info.chat && self.fault != Fault::ChatsAnyway {
                let kind = if self.fault == Fault::RetryableRefusal {
                    ErrorKind::Server
                } else {
                    ErrorKind::Unsupported
                };
                return Err(BackendError::new(kind, "no chat"));
            }
            let text = if self.fault == Fault::EmptyText {
                " "
            } else {
                "hello"
            };
            let tokens = u64::from(self.fault != Fault::NoUsage);
            Ok(ChatResponse {
                content: vec![ContentPart::Text(text.into())],
                usage: Usage {
                    input_tokens: 3 * tokens,
                    output_tokens: tokens,
                    ..Usage::default()
                },
                stop_reason: StopReason::EndTurn,
                stop_sequence: None,
            })
        }

        async fn embed(&self, request: &EmbedRequest) -> Result<EmbedResponse, BackendError> {
            if self.fault == Fault::Down {
                return Err(BackendError::new(ErrorKind::Connect, "refused"));
            }
            if !self.info.embed {
                return Err(BackendError::new(ErrorKind::Unsupported, "no embeddings"));
            }
            if let Some(max) = self.info.max_embed_batch
                && request.inputs.len() > max.get()
            {
                return Err(BackendError::new(ErrorKind::Client, "too many inputs"));
            }
            let mut embeddings: Vec<Vec<f32>> = request.inputs.iter().map(|t| vector(t)).collect();
            match self.fault {
                Fault::OneVectorShort => {
                    embeddings.pop();
                }
                Fault::Shuffled => embeddings.swap(0, 1),
                _ => {}
            }
            Ok(EmbedResponse {
                embeddings,
                input_tokens: request.inputs.len() as u64,
            })
        }

        async fn invoke_native(&self, _: NativeCall<'_>) -> Result<NativeAnswer, BackendError> {
            if self.fault == Fault::Down {
                return Err(BackendError::new(ErrorKind::Connect, "refused"));
            }
            if !self.info.runs_native {
                return Err(BackendError::new(ErrorKind::Unsupported, "no native"));
            }
            let tokens = u64::from(self.fault != Fault::NativeWithoutTokens);
            Ok(NativeAnswer {
                body: br#"{"output":{"message":{"content":[{"text":"hello"}]}}}"#.to_vec(),
                input_tokens: 3 * tokens,
                output_tokens: tokens,
            })
        }
    }

    const CHAT_ONLY: BackendInfo = BackendInfo {
        embed: false,
        ..BackendInfo::NEUTRAL
    };
    const EMBED_ONLY: BackendInfo = BackendInfo {
        chat: false,
        max_embed_batch: NonZeroUsize::new(4),
        ..BackendInfo::NEUTRAL
    };
    const NATIVE: BackendInfo = BackendInfo {
        chat: false,
        embed: false,
        runs_native: true,
        max_embed_batch: None,
    };

    fn failed(result: Checked, check: &str) -> String {
        let v = result.expect_err("the check should have failed");
        assert_eq!(v.check, check, "{v}");
        v.detail
    }

    #[tokio::test]
    async fn working_backends_pass() {
        for info in [BackendInfo::NEUTRAL, CHAT_ONLY, EMBED_ONLY, NATIVE] {
            let b = scripted(info, Fault::None);
            check_working(&b, info).await.unwrap();
        }
    }

    #[tokio::test]
    async fn info_must_be_what_the_backend_serves() {
        let b = scripted(CHAT_ONLY, Fault::None);
        failed(check_working(&b, BackendInfo::NEUTRAL).await, "info");
    }

    /// Runs the named check on `backend` and asserts it fails saying `says`.
    async fn violates(check: &'static str, backend: Arc<dyn ModelBackend>, says: &str) {
        let result = match check {
            "chat" => check_chat(&backend).await,
            "embed" => check_embed(&backend).await,
            _ => check_native(&backend).await,
        };
        let detail = failed(result, check);
        assert!(detail.contains(says), "{detail}");
    }

    fn lying(info: BackendInfo, inner: Arc<dyn ModelBackend>) -> Arc<dyn ModelBackend> {
        Arc::new(Lying { info, inner })
    }

    #[tokio::test]
    async fn each_check_fails_on_a_backend_that_breaks_its_rule() {
        // A backend that refuses as many inputs as it says it takes.
        let overstated = BackendInfo {
            max_embed_batch: NonZeroUsize::new(8),
            ..EMBED_ONLY
        };
        let neutral = scripted(BackendInfo::NEUTRAL, Fault::None);
        let native = scripted(NATIVE, Fault::None);
        let embeds = scripted(EMBED_ONLY, Fault::None);
        let cases = [
            ("chat", scripted(CHAT_ONLY, Fault::EmptyText), "no text"),
            ("chat", scripted(CHAT_ONLY, Fault::NoUsage), "usage"),
            ("chat", scripted(CHAT_ONLY, Fault::Panics), "panicked"),
            ("chat", scripted(CHAT_ONLY, Fault::Down), "Connect"),
            // Calls the info says it does not serve: refused, for good.
            (
                "chat",
                scripted(EMBED_ONLY, Fault::ChatsAnyway),
                "does not serve",
            ),
            (
                "chat",
                scripted(EMBED_ONLY, Fault::RetryableRefusal),
                "Server",
            ),
            ("embed", lying(CHAT_ONLY, neutral), "does not serve"),
            ("native", lying(CHAT_ONLY, native), "ran a native body"),
            (
                "embed",
                scripted(EMBED_ONLY, Fault::OneVectorShort),
                "3 vectors",
            ),
            ("embed", scripted(EMBED_ONLY, Fault::Shuffled), "order"),
            ("embed", lying(overstated, embeds), "8 inputs"),
            (
                "native",
                scripted(NATIVE, Fault::NativeWithoutTokens),
                "token counts",
            ),
        ];
        for (check, backend, says) in cases {
            violates(check, backend, says).await;
        }
    }

    #[tokio::test]
    async fn a_hanging_call_is_a_violation() {
        let b = scripted(CHAT_ONLY, Fault::Hangs);
        let limit = Duration::from_millis(50);
        let called = run_within(limit, "chat", &b, |b| async move {
            b.chat(&chat_request()).await
        });
        let d = failed(called.await.map(|_| ()), "chat");
        assert!(d.contains("no answer within 50ms"), "{d}");
    }

    #[tokio::test]
    async fn failures_must_have_the_expected_retry_class() {
        let down = scripted(BackendInfo::NEUTRAL, Fault::Down);
        check_fails_with(&down, ErrorKind::Connect).await.unwrap();
        let d = failed(
            check_fails_with(&down, ErrorKind::RateLimited).await,
            "failure",
        );
        assert!(d.contains("Connect"), "{d}");
        let up = scripted(BackendInfo::NEUTRAL, Fault::None);
        let d = failed(check_fails_with(&up, ErrorKind::Connect).await, "failure");
        assert!(d.contains("answered"), "{d}");
        let d = failed(
            check_fails_with(&scripted(CHAT_ONLY, Fault::Panics), ErrorKind::Connect).await,
            "failure",
        );
        assert!(d.contains("panicked"), "{d}");
    }

    /// A wrapper that states its own info instead of its inner backend's.
    struct Lying {
        info: BackendInfo,
        inner: Arc<dyn ModelBackend>,
    }

    #[async_trait::async_trait]
    impl ModelBackend for Lying {
        fn info(&self) -> BackendInfo {
            self.info
        }
        async fn chat(&self, r: &ChatRequest) -> Result<ChatResponse, BackendError> {
            self.inner.chat(r).await
        }
        async fn embed(&self, r: &EmbedRequest) -> Result<EmbedResponse, BackendError> {
            self.inner.embed(r).await
        }
        async fn invoke_native(&self, call: NativeCall<'_>) -> Result<NativeAnswer, BackendError> {
            self.inner.invoke_native(call).await
        }
    }

    #[test]
    fn a_wrapper_must_not_drop_a_capability() {
        let inner = scripted(EMBED_ONLY, Fault::None);
        let dropped = Lying {
            info: BackendInfo {
                max_embed_batch: None,
                ..EMBED_ONLY
            },
            inner: inner.clone(),
        };
        let d = failed(check_wrapper(&dropped, inner.as_ref()), "wrapper");
        assert!(d.contains("max_embed_batch: None"), "{d}");
        let forwarding = Lying {
            info: inner.info(),
            inner: inner.clone(),
        };
        check_wrapper(&forwarding, inner.as_ref()).unwrap();
    }
}
