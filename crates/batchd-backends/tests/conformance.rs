//! The `ModelBackend` conformance suite (batchd-testkit) against the backends of this crate:
//! openai on the fake OpenAI-compatible server, bedrock on the fake bedrock-runtime, and
//! adaptive wrapped around openai; each working, down (nothing listening) and throttling.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use batchd_backends::adaptive::{AdaptiveBackend, AdaptiveConfig};
use batchd_backends::bedrock::{AwsEnvironment, BedrockBackend, BedrockConfig};
use batchd_backends::openai::{OpenAiBackend, OpenAiConfig};
use batchd_backends::{BackendInfo, ErrorKind, ModelBackend};
use batchd_testkit::conformance::{check_fails_with, check_working, check_wrapper};
use batchd_testkit::fake_bedrock::{
    ACCESS_KEY_ID, FakeBedrock, FakeBedrockConfig, SECRET_ACCESS_KEY,
};
use batchd_testkit::{FakeConfig, FakeServer};

const CLAUDE: &str = "anthropic.claude-3-haiku-20240307-v1:0";

const BEDROCK: BackendInfo = BackendInfo {
    chat: false,
    embed: false,
    runs_native: true,
    max_embed_batch: None,
};

/// `http://127.0.0.1:PORT` where nothing listens (the port was just free).
async fn nothing_listening() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

fn openai(base_url: String) -> Arc<dyn ModelBackend> {
    batchd_testkit::install_crypto_provider();
    Arc::new(
        OpenAiBackend::new(OpenAiConfig {
            base_url,
            model: "fake-model".into(),
            api_key: None,
            max_connections: 4,
        })
        .unwrap(),
    )
}

fn bedrock(endpoint: String) -> Arc<dyn ModelBackend> {
    batchd_testkit::install_crypto_provider();
    let env = AwsEnvironment::new(
        [
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY),
        ],
        None,
    );
    let config = BedrockConfig {
        model_id: CLAUDE.into(),
        region: Some("us-east-1".into()),
        endpoint_url: Some(endpoint),
        max_connections: 4,
        profile: None,
    };
    Arc::new(BedrockBackend::with_environment(config, &env).unwrap())
}

fn adaptive(inner: Arc<dyn ModelBackend>) -> Arc<dyn ModelBackend> {
    Arc::new(AdaptiveBackend::new(inner, AdaptiveConfig::with_max(4)))
}

fn throttling() -> FakeConfig {
    FakeConfig {
        rate_429: 1.0,
        ..FakeConfig::default()
    }
}

fn overloaded() -> FakeConfig {
    FakeConfig {
        rate_503: 1.0,
        ..FakeConfig::default()
    }
}

#[tokio::test]
async fn openai_conforms() {
    let server = FakeServer::start(FakeConfig::default()).await.unwrap();
    let backend = openai(server.base_url());
    check_working(&backend, BackendInfo::NEUTRAL).await.unwrap();

    let down = openai(nothing_listening().await);
    check_fails_with(&down, ErrorKind::Connect).await.unwrap();

    server.set_config(throttling());
    check_fails_with(&backend, ErrorKind::RateLimited)
        .await
        .unwrap();
    server.set_config(overloaded());
    check_fails_with(&backend, ErrorKind::Server).await.unwrap();
}

#[tokio::test]
async fn bedrock_conforms() {
    let fake = FakeBedrock::start(FakeBedrockConfig::default())
        .await
        .unwrap();
    let backend = bedrock(fake.url());
    check_working(&backend, BEDROCK).await.unwrap();
    assert!(
        fake.stats().converse > 0,
        "the native call reached the fake"
    );

    let down = bedrock(nothing_listening().await);
    check_fails_with(&down, ErrorKind::Connect).await.unwrap();

    fake.set_config(FakeBedrockConfig {
        throttle_rate: 1.0,
        ..FakeBedrockConfig::default()
    });
    check_fails_with(&backend, ErrorKind::RateLimited)
        .await
        .unwrap();
}

#[tokio::test]
async fn adaptive_around_openai_conforms() {
    let server = FakeServer::start(FakeConfig::default()).await.unwrap();
    let inner = openai(server.base_url());
    let backend = adaptive(inner.clone());
    check_wrapper(backend.as_ref(), inner.as_ref()).unwrap();
    check_working(&backend, BackendInfo::NEUTRAL).await.unwrap();

    let down = adaptive(openai(nothing_listening().await));
    check_fails_with(&down, ErrorKind::Connect).await.unwrap();

    server.set_config(throttling());
    check_fails_with(&backend, ErrorKind::RateLimited)
        .await
        .unwrap();
    server.set_config(overloaded());
    check_fails_with(&backend, ErrorKind::Server).await.unwrap();
}

#[tokio::test]
async fn adaptive_around_bedrock_forwards_its_info() {
    let fake = FakeBedrock::start(FakeBedrockConfig::default())
        .await
        .unwrap();
    let inner = bedrock(fake.url());
    let backend = adaptive(inner.clone());
    check_wrapper(backend.as_ref(), inner.as_ref()).unwrap();
    check_working(&backend, BEDROCK).await.unwrap();
}
