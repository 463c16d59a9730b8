//! The OpenAI backend end to end against the fake server from batchd-testkit, on both of its
//! HTTP clients (the lean one for plain `http`, and reqwest); and the lean client's keep-alive
//! edge cases against a hand-driven socket.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use batchd_backends::openai::{HttpClient, OpenAiBackend, OpenAiConfig};
use batchd_backends::{ErrorKind, ModelBackend};
use batchd_formats::neutral::{
    ChatMessage, ChatRequest, ContentPart, EmbedRequest, Role, StopReason, ToolChoice, ToolSpec,
};
use batchd_testkit::{FakeConfig, FakeServer};
use serde_json::json;

tokio::task_local! {
    /// The client the running test builds its backends with.
    static CLIENT: HttpClient;
}

/// Each test below runs twice: on the lean client and on reqwest.
macro_rules! on_both_clients {
    ($(async fn $name:ident() $body:block)*) => {$(
        mod $name {
            use super::*;
            #[tokio::test]
            async fn direct() {
                CLIENT.scope(HttpClient::Auto, async $body).await
            }
            #[tokio::test]
            async fn reqwest() {
                CLIENT.scope(HttpClient::Reqwest, async $body).await
            }
        }
    )*};
}

fn backend(base_url: String) -> OpenAiBackend {
    let client = CLIENT.try_with(|c| *c).unwrap_or(HttpClient::Auto);
    let backend = OpenAiBackend::with_client(
        OpenAiConfig {
            base_url,
            model: "fake-model".into(),
            api_key: Some("sk-test".into()),
            max_connections: 16,
        },
        client,
    )
    .unwrap();
    // No proxy is set where the tests run: Auto must pick the lean client.
    assert_eq!(backend.is_direct(), client == HttpClient::Auto);
    backend
}

async fn start(config: FakeConfig) -> (FakeServer, OpenAiBackend) {
    let server = FakeServer::start(config).await.unwrap();
    // With a trailing slash, to check it is tolerated.
    let backend = backend(format!("{}/", server.base_url()));
    (server, backend)
}

fn ask(text: &str) -> ChatRequest {
    ChatRequest {
        system: vec!["Be brief.".into()],
        messages: vec![ChatMessage {
            role: Role::User,
            content: vec![ContentPart::Text(text.into())],
        }],
        ..Default::default()
    }
}

on_both_clients! {
    async fn chat_round_trip() {
        let (server, backend) = start(FakeConfig::default()).await;
        let response = backend.chat(&ask("hello there")).await.unwrap();
        assert_eq!(
            response.content,
            vec![ContentPart::Text("echo: hello there".into())]
        );
        assert_eq!(response.stop_reason, StopReason::EndTurn);
        assert_eq!(response.stop_sequence, None);
        assert_eq!(response.usage.input_tokens, 4);
        assert_eq!(response.usage.output_tokens, 3);

        let mut request = ask("one two three four");
        request.max_tokens = Some(2);
        let response = backend.chat(&request).await.unwrap();
        assert_eq!(
            response.content,
            vec![ContentPart::Text("echo: one".into())]
        );
        assert_eq!(response.stop_reason, StopReason::MaxTokens);

        let mut request = ask("alpha STOP beta");
        request.stop_sequences = vec!["STOP".into()];
        let response = backend.chat(&request).await.unwrap();
        assert_eq!(
            response.content,
            vec![ContentPart::Text("echo: alpha ".into())]
        );
        assert_eq!(response.stop_reason, StopReason::StopSequence);
        assert_eq!(response.stop_sequence.as_deref(), Some("STOP"));

        let mut request = ask("use the tool");
        request.tools = vec![ToolSpec {
            name: "lookup".into(),
            description: Some("Looks things up".into()),
            input_schema: json!({"type": "object"}),
        }];
        request.tool_choice = Some(ToolChoice::Any);
        let response = backend.chat(&request).await.unwrap();
        assert_eq!(response.stop_reason, StopReason::ToolUse);
        let [ContentPart::ToolUse { name, input, .. }] = response.content.as_slice() else {
            panic!("expected one tool call, got {:?}", response.content)
        };
        assert_eq!(name, "lookup");
        assert_eq!(input, &json!({}));

        assert_eq!(server.stats().ok, 4);
        server.shutdown().await;
    }

    async fn rate_limited_with_retry_after() {
        let config = FakeConfig {
            rate_429: 1.0,
            retry_after_secs: Some(3),
            ..Default::default()
        };
        let (server, backend) = start(config).await;
        let e = backend.chat(&ask("hi")).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::RateLimited);
        assert_eq!(e.status, Some(429));
        assert_eq!(e.retry_after, Some(Duration::from_secs(3)));
        assert!(e.is_retryable());
        assert!(e.message.contains("Rate limit"), "{}", e.message);
        server.shutdown().await;
    }

    async fn server_errors_are_retryable() {
        for (config, status) in [
            (
                FakeConfig {
                    rate_500: 1.0,
                    ..Default::default()
                },
                500,
            ),
            (
                FakeConfig {
                    rate_503: 1.0,
                    ..Default::default()
                },
                503,
            ),
        ] {
            let (server, backend) = start(config).await;
            let e = backend.chat(&ask("hi")).await.unwrap_err();
            assert_eq!(e.kind, ErrorKind::Server);
            assert_eq!(e.status, Some(status));
            assert_eq!(e.retry_after, None);
            assert!(e.is_retryable());
            server.shutdown().await;
        }
    }

    async fn bad_request_is_not_retryable() {
        let config = FakeConfig {
            fail_when_prompt_contains: Some("POISON".into()),
            ..Default::default()
        };
        let (server, backend) = start(config).await;
        let e = backend.chat(&ask("a POISON record")).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Client);
        assert_eq!(e.status, Some(400));
        assert_eq!(e.error_code(), 400);
        assert!(!e.is_retryable());
        assert_eq!(e.message, "Invalid request (fake server).");
        assert!(backend.chat(&ask("a fine record")).await.is_ok());
        server.shutdown().await;
    }

    async fn connection_refused_is_connect() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        batchd_testkit::install_crypto_provider();
        let backend = backend(format!("http://{addr}/v1"));
        let e = backend.chat(&ask("hi")).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Connect, "{}", e.message);
        assert_eq!(e.status, None);
        assert!(e.is_retryable());
        let e = backend
            .embed(&EmbedRequest {
                inputs: vec!["x".into()],
                dimensions: None,
            })
            .await;
        assert_eq!(e.unwrap_err().kind, ErrorKind::Connect);
    }

    async fn embeddings_round_trip() {
        let (server, backend) = start(FakeConfig::default()).await;
        let request = EmbedRequest {
            inputs: vec!["first text".into(), "second".into(), "first text".into()],
            dimensions: Some(32),
        };
        let response = backend.embed(&request).await.unwrap();
        assert_eq!(response.embeddings.len(), 3);
        assert!(response.embeddings.iter().all(|v| v.len() == 32));
        assert_eq!(response.embeddings[0], response.embeddings[2]);
        assert_ne!(response.embeddings[0], response.embeddings[1]);
        assert_eq!(response.input_tokens, 5);

        let default_dims = backend
            .embed(&EmbedRequest {
                inputs: vec!["x".into()],
                dimensions: None,
            })
            .await
            .unwrap();
        assert_eq!(default_dims.embeddings[0].len(), 384);
        let empty = backend.embed(&EmbedRequest::default()).await.unwrap();
        assert!(empty.embeddings.is_empty());
        assert_eq!(server.stats().embeddings, 2);
        server.shutdown().await;
    }

    async fn concurrent_calls_share_the_pool() {
        let (server, backend) = start(FakeConfig::latency(20, 0)).await;
        let backend = Arc::new(backend);
        let calls: Vec<_> = (0..64)
            .map(|i| {
                let backend = backend.clone();
                tokio::spawn(async move { backend.chat(&ask(&format!("n{i}"))).await })
            })
            .collect();
        for (i, call) in calls.into_iter().enumerate() {
            let response = call.await.unwrap().unwrap();
            assert_eq!(
                response.content,
                vec![ContentPart::Text(format!("echo: n{i}"))]
            );
        }
        let stats = server.stats();
        assert_eq!(stats.ok, 64);
        assert!(stats.max_in_flight > 1, "{stats:?}");
        server.shutdown().await;
    }
}

#[tokio::test]
async fn server_slots_come_from_props_when_the_server_has_them() {
    use batchd_backends::openai::server_slots;
    let timeout = Duration::from_secs(5);
    let server = FakeServer::start(FakeConfig {
        total_slots: Some(6),
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    // `/props` sits at the root, beside `/v1`; a trailing slash is fine.
    let base = server.base_url();
    assert_eq!(server_slots(&base, None, timeout).await, Some(6));
    assert_eq!(
        server_slots(&format!("{base}/"), Some("sk"), timeout).await,
        Some(6)
    );

    // A server without the route (vLLM, Ollama): no answer, no error.
    server.set_config(FakeConfig::default());
    assert_eq!(server_slots(&base, None, timeout).await, None);
    // Nor an absurd count.
    server.set_config(FakeConfig {
        total_slots: Some(0),
        ..FakeConfig::default()
    });
    assert_eq!(server_slots(&base, None, timeout).await, None);
    // Nobody listening: none either.
    assert_eq!(
        server_slots("http://127.0.0.1:1/v1", None, timeout).await,
        None
    );
}

/// How [`OneShotServer`] treats the one request it reads from each connection.
#[derive(Clone, Copy)]
enum Reply {
    /// Answers as if keeping the connection alive, then closes it (an idle timeout).
    ThenClose,
    /// Answers with `connection: close`, then closes.
    SayingClose,
    /// Closes without answering.
    Nothing,
}

/// A hand-driven server: accepts connections, reads one request from each and replies as told
/// before it closes the connection. Counts connections and requests.
struct OneShotServer {
    base_url: String,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    requests: Arc<std::sync::atomic::AtomicUsize>,
}

impl OneShotServer {
    async fn start(reply: Reply) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (conns, reqs) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                conns.fetch_add(1, Ordering::SeqCst);
                let reqs = reqs.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    // The head, then as much body as Content-Length says.
                    let complete = loop {
                        let n = socket.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            break false;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_lowercase();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let length: usize = text
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse().ok())
                                .unwrap_or(0);
                            if buf.len() >= end + 4 + length {
                                break true;
                            }
                        }
                    };
                    if !complete {
                        return;
                    }
                    reqs.fetch_add(1, Ordering::SeqCst);
                    if !matches!(reply, Reply::Nothing) {
                        let body = r#"{"choices":[{"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#;
                        let close = match reply {
                            Reply::SayingClose => "connection: close\r\n",
                            _ => "",
                        };
                        let head = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{close}content-length: {}\r\n\r\n",
                            body.len()
                        );
                        let _ = socket.write_all(head.as_bytes()).await;
                        let _ = socket.write_all(body.as_bytes()).await;
                        if matches!(reply, Reply::ThenClose) {
                            // Long enough for the client to pool the connection first.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                });
            }
        });
        OneShotServer {
            base_url,
            connections,
            requests,
        }
    }

    fn counts(&self) -> (usize, usize) {
        use std::sync::atomic::Ordering;
        (
            self.connections.load(Ordering::SeqCst),
            self.requests.load(Ordering::SeqCst),
        )
    }
}

#[tokio::test]
async fn a_pooled_connection_the_server_closed_is_replaced() {
    // Closed while idle in the pool, and closed as announced: each next request goes out on a
    // new connection.
    for (reply, pause) in [(Reply::ThenClose, 50), (Reply::SayingClose, 0)] {
        let server = OneShotServer::start(reply).await;
        let backend = backend(server.base_url.clone());
        assert!(backend.is_direct());
        for i in 0..5 {
            let response = backend.chat(&ask(&format!("n{i}"))).await;
            assert!(response.is_ok(), "request {i}: {:?}", response.err());
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        assert_eq!(server.counts(), (5, 5));
    }
}

#[tokio::test]
async fn a_request_the_server_took_is_not_sent_again() {
    let server = OneShotServer::start(Reply::Nothing).await;
    let backend = backend(server.base_url.clone());
    let e = backend.chat(&ask("hi")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Connect, "{}", e.message);
    assert!(e.is_retryable());
    // The engine decides about retries; the client sent it once.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(server.counts(), (1, 1));
}

#[tokio::test]
async fn https_and_forced_reqwest_use_reqwest() {
    batchd_testkit::install_crypto_provider();
    let config = |base_url: &str| OpenAiConfig {
        base_url: base_url.into(),
        model: "m".into(),
        api_key: None,
        max_connections: 4,
    };
    let https = OpenAiBackend::new(config("https://api.example.com/v1")).unwrap();
    assert!(!https.is_direct());
    let forced =
        OpenAiBackend::with_client(config("http://127.0.0.1:1/v1"), HttpClient::Reqwest).unwrap();
    assert!(!forced.is_direct());
    let lean = OpenAiBackend::new(config("http://[::1]:8000/v1")).unwrap();
    assert!(lean.is_direct());
}
