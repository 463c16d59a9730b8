//! ListFoundationModels (`GET /foundation-models`) and GetFoundationModel
//! (`GET /foundation-models/{modelIdentifier}`) over the models this server runs: the
//! configured `[[models]]` and the built-in ones, so code that checks a model before
//! submitting works. Every model is active, on demand and batch-capable here.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use batchd_core::ModelId;
use serde_json::{Value, json};

use super::ApiConfig;
use super::error::ApiError;
use super::routes::query_pairs;
use super::validate::last_param;

/// What the model listing says about one model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// The id jobs name it by (as configured).
    pub model_id: String,
    /// Answers with embeddings rather than text.
    pub embedding: bool,
}

impl ModelInfo {
    /// The provider's name, from the id's first segment (`anthropic.` → Anthropic).
    pub fn provider_name(&self) -> String {
        let base = ModelId::new(&self.model_id).base();
        let provider = base.split('.').next().unwrap_or(base);
        match provider {
            "anthropic" => "Anthropic".into(),
            "amazon" => "Amazon".into(),
            "meta" => "Meta".into(),
            "mistral" => "Mistral AI".into(),
            "cohere" => "Cohere".into(),
            "ai21" => "AI21 Labs".into(),
            "deepseek" => "DeepSeek".into(),
            "openai" => "OpenAI".into(),
            "qwen" => "Qwen".into(),
            _ => "batchd".into(),
        }
    }

    fn output_modality(&self) -> &'static str {
        if self.embedding { "EMBEDDING" } else { "TEXT" }
    }

    /// The FoundationModelSummary / FoundationModelDetails shape (the same members), plus
    /// `batchInferenceSupported`, which botocore ignores and batchd's users may read.
    fn json(&self, config: &ApiConfig) -> Value {
        let id = &self.model_id;
        json!({
            "modelArn": format!("arn:aws:bedrock:{}::foundation-model/{id}", config.region),
            "modelId": id,
            "modelName": id,
            "providerName": self.provider_name(),
            "inputModalities": ["TEXT"],
            "outputModalities": [self.output_modality()],
            "responseStreamingSupported": false,
            "customizationsSupported": [],
            "inferenceTypesSupported": ["ON_DEMAND"],
            "modelLifecycle": {"status": "ACTIVE"},
            "batchInferenceSupported": true,
        })
    }
}

/// ListFoundationModels: every model, filtered by `byProvider` (case-insensitive),
/// `byOutputModality`, `byInferenceType` and `byCustomizationType` (no model here is
/// customizable).
pub(super) async fn list(
    State(config): State<Arc<ApiConfig>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let pairs = query_pairs(query)?;
    let param = |name: &str| last_param(&pairs, name);
    for (name, allowed) in [
        ("byOutputModality", &["TEXT", "IMAGE", "EMBEDDING"][..]),
        ("byInferenceType", &["ON_DEMAND", "PROVISIONED"][..]),
        (
            "byCustomizationType",
            &["FINE_TUNING", "CONTINUED_PRE_TRAINING", "DISTILLATION"][..],
        ),
    ] {
        if let Some(v) = param(name)
            && !allowed.contains(&v)
        {
            return Err(ApiError::validation(format!(
                "1 validation error detected: Value '{v}' at '{name}' failed to satisfy constraint: Member must satisfy enum value set: [{}]",
                allowed.join(", ")
            )));
        }
    }
    let summaries: Vec<Value> = config
        .models
        .iter()
        .filter(|m| param("byProvider").is_none_or(|p| m.provider_name().eq_ignore_ascii_case(p)))
        .filter(|m| param("byOutputModality").is_none_or(|o| o == m.output_modality()))
        .filter(|_| param("byInferenceType").is_none_or(|t| t == "ON_DEMAND"))
        .filter(|_| param("byCustomizationType").is_none())
        .map(|m| m.json(&config))
        .collect();
    Ok(Json(json!({ "modelSummaries": summaries })))
}

/// GetFoundationModel: a model by any form of its id (plain, profile, ARN), as jobs resolve
/// it; an unknown one is the ValidationException Bedrock answers.
pub(super) async fn get(
    State(config): State<Arc<ApiConfig>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(identifier) = path.map_err(|e| ApiError::validation(e.body_text()))?;
    let model = ModelId::new(&identifier)
        .resolve(|candidate| config.models.iter().find(|m| m.model_id == candidate));
    match model {
        Some(m) => Ok(Json(json!({ "modelDetails": m.json(&config) }))),
        None => Err(ApiError::validation(format!(
            "The provided model identifier is invalid: {identifier} is not a model of this server."
        ))),
    }
}
