//! The embedded embeddings model against the real all-MiniLM-L6-v2: similarity of paraphrases
//! and unrelated texts, unit norm, dimensions, padding-independent batching, truncation.
//! Without the model files these tests print why and pass, unless `CI` is set.
#![allow(clippy::unwrap_used)]

use std::sync::OnceLock;

use batchd_backends::{ErrorKind, ModelBackend};
use batchd_embedded::{
    EMBEDDING_DIMENSIONS, EmbeddedEmbeddings, EmbeddingModelFiles, EmbeddingsConfig,
    default_cache_dir,
};
use batchd_formats::neutral::{ChatRequest, EmbedRequest};
use batchd_testkit::found_or_skip;
use futures::future::join_all;

fn model() -> Option<&'static EmbeddedEmbeddings> {
    static MODEL: OnceLock<Option<EmbeddedEmbeddings>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let cache = default_cache_dir(|name| std::env::var_os(name));
            let files = found_or_skip(
                EmbeddingModelFiles::locate(&cache),
                "the model tests",
                "CI must run scripts/models.sh first",
            )?;
            Some(EmbeddedEmbeddings::load(EmbeddingsConfig::new(files)).unwrap())
        })
        .as_ref()
}

async fn embed(model: &EmbeddedEmbeddings, inputs: &[&str]) -> Vec<Vec<f32>> {
    let request = EmbedRequest {
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        dimensions: None,
    };
    let response = model.embed(&request).await.unwrap();
    assert_eq!(response.embeddings.len(), inputs.len());
    response.embeddings
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[tokio::test]
async fn paraphrases_are_close_and_unrelated_texts_are_not() {
    let Some(model) = model() else { return };
    let v = embed(
        model,
        &[
            "The cat sits on the mat.",
            "A cat is sitting on a rug.",
            "Quarterly revenue of the semiconductor industry rose sharply.",
        ],
    )
    .await;
    let paraphrase = dot(&v[0], &v[1]);
    let unrelated = dot(&v[0], &v[2]);
    assert!(paraphrase > 0.5, "paraphrases: {paraphrase}");
    assert!(unrelated < 0.2, "unrelated: {unrelated}");
}

#[tokio::test]
async fn vectors_have_384_dimensions_and_norm_1() {
    let Some(model) = model() else { return };
    let v = embed(
        model,
        &["hello", "", "A longer sentence about batch inference."],
    )
    .await;
    for vector in &v {
        assert_eq!(vector.len(), EMBEDDING_DIMENSIONS as usize);
        let norm = dot(vector, vector).sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    }
}

#[tokio::test]
async fn other_dimensions_are_a_client_error() {
    let Some(model) = model() else { return };
    let request = |dimensions| EmbedRequest {
        inputs: vec!["hello".into()],
        dimensions,
    };
    let e = model.embed(&request(Some(256))).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Client);
    assert!(e.message.contains("256"), "{}", e.message);
    let ok = model.embed(&request(Some(384))).await.unwrap();
    assert_eq!(ok.embeddings[0].len(), 384);
    assert_eq!(ok.input_tokens, 3, "[CLS] hello [SEP]");
}

#[tokio::test]
async fn a_text_embeds_the_same_alone_batched_or_concurrent() {
    let Some(model) = model() else { return };
    let short = "Paris is the capital of France.";
    let alone = embed(model, &[short]).await.remove(0);
    // Padded next to a longer input in one forward pass.
    let batched = embed(
        model,
        &[
            "A much longer text that forces padding of the shorter one in the same forward pass.",
            short,
        ],
    )
    .await
    .remove(1);
    // One input per request, many requests at once: served together in one round.
    let concurrent = join_all((0..8).map(|i| async move {
        let text = if i == 5 {
            short.to_string()
        } else {
            format!("filler text number {i}")
        };
        embed(model, &[&text]).await.remove(0)
    }))
    .await
    .remove(5);
    for other in [&batched, &concurrent] {
        let diff = alone
            .iter()
            .zip(other)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(diff < 1e-4, "max difference {diff}");
    }
}

#[tokio::test]
async fn long_inputs_are_truncated_at_256_tokens() {
    let Some(model) = model() else { return };
    let long = "word ".repeat(2000);
    let response = model
        .embed(&EmbedRequest {
            inputs: vec![long],
            dimensions: None,
        })
        .await
        .unwrap();
    assert_eq!(response.input_tokens, 256);
    assert_eq!(response.embeddings[0].len(), 384);
}

#[tokio::test]
async fn chat_is_unsupported() {
    let Some(model) = model() else { return };
    let e = model.chat(&ChatRequest::default()).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);
}
