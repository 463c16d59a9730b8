//! The `ModelBackend` conformance suite (batchd-testkit) against the backends of this crate:
//! openai on the fake OpenAI-compatible server, bedrock on the fake bedrock-runtime, and
//! adaptive wrapped around each; working, down (nothing listening) and throttling.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use batchd_backends::adaptive::{AdaptiveBackend, AdaptiveConfig};
use batchd_backends::bedrock::{AwsEnvironment, BedrockBackend, BedrockConfig};
use batchd_backends::{BackendInfo, ErrorKind, ModelBackend};
use batchd_testkit::conformance::{
    check_around_openai, check_fails_with, check_working, check_wrapper, nothing_listening,
};
use batchd_testkit::fake_bedrock::{
    ACCESS_KEY_ID, FakeBedrock, FakeBedrockConfig, SECRET_ACCESS_KEY,
};

const CLAUDE: &str = "anthropic.claude-3-haiku-20240307-v1:0";

const BEDROCK: BackendInfo = BackendInfo {
    chat: false,
    embed: false,
    runs_native: true,
    max_embed_batch: None,
};

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
    Arc::new(BedrockBackend::new(config, &env).unwrap())
}

fn adaptive(inner: Arc<dyn ModelBackend>) -> Arc<dyn ModelBackend> {
    Arc::new(AdaptiveBackend::new(inner, AdaptiveConfig::with_max(4)))
}

fn unwrapped(backend: Arc<dyn ModelBackend>) -> Arc<dyn ModelBackend> {
    backend
}

#[tokio::test]
async fn openai_conforms() {
    check_around_openai(unwrapped).await.unwrap();
}

#[tokio::test]
async fn adaptive_around_openai_conforms() {
    check_around_openai(adaptive).await.unwrap();
}

/// The suite against `wrap(bedrock on the fake bedrock-runtime)`: working, down, throttling.
async fn check_around_bedrock(wrap: fn(Arc<dyn ModelBackend>) -> Arc<dyn ModelBackend>) {
    let fake = FakeBedrock::start(FakeBedrockConfig::default())
        .await
        .unwrap();
    let inner = bedrock(fake.url());
    let backend = wrap(inner.clone());
    check_wrapper(backend.as_ref(), inner.as_ref()).unwrap();
    check_working(&backend, BEDROCK).await.unwrap();
    assert!(
        fake.stats().converse > 0,
        "the native call reached the fake"
    );

    let down = wrap(bedrock(nothing_listening().await.unwrap()));
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
async fn bedrock_conforms() {
    check_around_bedrock(unwrapped).await;
}

#[tokio::test]
async fn adaptive_around_bedrock_conforms() {
    check_around_bedrock(adaptive).await;
}
