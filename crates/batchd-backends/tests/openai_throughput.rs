//! Throughput of the OpenAI backend against the fake: 100k chats, 256 at a time, on one
//! runtime thread. Ignored; run it in release, against `batchd-fake --threads 1` in its own
//! process with `BATCHD_FAKE_URL=<its url>`, or without the variable against an in-process fake:
//! `cargo test --release -p batchd-backends --test openai_throughput -- --ignored --nocapture`
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Instant;

use batchd_backends::ModelBackend;
use batchd_backends::openai::{OpenAiBackend, OpenAiConfig};
use batchd_formats::neutral::{ChatMessage, ChatRequest, ContentPart, Role};
use batchd_testkit::{FakeConfig, FakeServer};

#[test]
#[ignore = "benchmark"]
fn chat_throughput() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        batchd_testkit::install_crypto_provider();
        let (server, base_url) = match std::env::var("BATCHD_FAKE_URL") {
            Ok(url) => (None, url),
            Err(_) => {
                let server = FakeServer::start(FakeConfig::default()).await.unwrap();
                let url = server.base_url();
                (Some(server), url)
            }
        };
        let concurrency = 256;
        let backend = Arc::new(
            OpenAiBackend::new(OpenAiConfig {
                base_url,
                model: "m".into(),
                api_key: None,
                max_connections: concurrency,
            })
            .unwrap(),
        );
        let request = Arc::new(ChatRequest {
            system: vec!["You are a helpful assistant.".into()],
            messages: vec![ChatMessage {
                role: Role::User,
                content: vec![ContentPart::Text(
                    "Summarize the following paragraph in one sentence please.".into(),
                )],
            }],
            max_tokens: Some(64),
            ..Default::default()
        });
        let n = 100_000usize;
        let start = Instant::now();
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let workers: Vec<_> = (0..concurrency)
            .map(|_| {
                let (backend, request, next) = (backend.clone(), request.clone(), next.clone());
                tokio::spawn(async move {
                    while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                        backend.chat(&request).await.unwrap();
                    }
                })
            })
            .collect();
        for w in workers {
            w.await.unwrap();
        }
        let secs = start.elapsed().as_secs_f64();
        println!("{n} chats in {secs:.2}s: {:.0}/s", n as f64 / secs);
        if let Some(server) = server {
            println!("{:?}", server.stats());
            server.shutdown().await;
        }
    });
}
