//! Native InvokeModel bodies of the model families batchd accepts (spec A3/A6): validate a
//! body (every defect with its `modelInput.` path), translate it to a neutral request, and
//! render the backend's answer in the family's native response shape.

use serde_json::Value;

use crate::Defect;
use crate::neutral::{ChatRequest, ChatResponse};

/// A model family, which fixes the InvokeModel body and response shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelFamily {
    /// `anthropic.*`: the Anthropic Messages API.
    Anthropic,
    /// `amazon.titan-text-*`.
    TitanText,
    /// `amazon.titan-embed-text-*` (V2 and G1).
    TitanEmbed,
    /// `amazon.nova-*`.
    Nova,
    /// `meta.llama*`: a raw prompt in the Llama chat template.
    Llama,
    /// `mistral.*`: an `[INST]` prompt.
    Mistral,
}

impl ModelFamily {
    pub const ALL: [ModelFamily; 6] = [
        ModelFamily::Anthropic,
        ModelFamily::TitanText,
        ModelFamily::TitanEmbed,
        ModelFamily::Nova,
        ModelFamily::Llama,
        ModelFamily::Mistral,
    ];

    /// The family of a Bedrock model id (with or without a cross-region prefix such as
    /// `us.`), or `None` for ids of no known family.
    pub fn from_model_id(model_id: &str) -> Option<Self> {
        let id = model_id
            .strip_prefix("arn:aws:bedrock:")
            .map_or(model_id, |rest| rest.rsplit('/').next().unwrap_or(rest));
        let id = [
            "us.", "eu.", "apac.", "global.", "us-gov.", "ca.", "jp.", "au.",
        ]
        .iter()
        .find_map(|p| id.strip_prefix(p))
        .unwrap_or(id);
        if id.starts_with("anthropic.") {
            Some(Self::Anthropic)
        } else if id.starts_with("amazon.titan-text-") || id.starts_with("amazon.titan-tg1") {
            Some(Self::TitanText)
        } else if id.starts_with("amazon.titan-embed-text-")
            || id.starts_with("amazon.titan-embed-g1-text")
        {
            Some(Self::TitanEmbed)
        } else if id.starts_with("amazon.nova-") {
            Some(Self::Nova)
        } else if id.starts_with("meta.llama") {
            Some(Self::Llama)
        } else if id.starts_with("mistral.") {
            Some(Self::Mistral)
        } else {
            None
        }
    }

    /// The family named by a model's `format = "..."` config key.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// The config name: `anthropic`, `titan-text`, `titan-embed`, `nova`, `llama`, `mistral`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Anthropic => "anthropic",
            Self::TitanText => "titan-text",
            Self::TitanEmbed => "titan-embed",
            Self::Nova => "nova",
            Self::Llama => "llama",
            Self::Mistral => "mistral",
        }
    }

    /// Whether records of this family are embedding requests.
    pub fn is_embedding(self) -> bool {
        matches!(self, Self::TitanEmbed)
    }
}

/// A native body, translated.
#[derive(Debug, Clone, PartialEq)]
pub enum NativeRequest {
    Chat(Box<ChatRequest>),
    Embed(EmbedItem),
}

/// One text to embed, with the output options of its record.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedItem {
    pub text: String,
    /// Requested dimensions (Titan V2: 256, 512 or 1024).
    pub dimensions: Option<u32>,
    /// Whether the vector is L2-normalised before it is written.
    pub normalize: bool,
    /// Which of `embeddingsByType` to write (Titan V2 `embeddingTypes`).
    pub float: bool,
    pub binary: bool,
}

/// Validates a native body (the record's modelInput as raw JSON text) of `family` and
/// translates it. Every defect is returned, each with a path such as
/// `modelInput.anthropic_version`.
pub fn parse_native(family: ModelFamily, model_input: &str) -> Result<NativeRequest, Vec<Defect>> {
    let _ = (family, model_input);
    Err(vec![Defect::new(
        "modelInput",
        "native bodies are not implemented yet",
    )])
}

/// The family's native response body (the record's modelOutput) for a chat answer.
pub fn render_chat(family: ModelFamily, response: &ChatResponse, latency_ms: u64) -> Value {
    let _ = (family, response, latency_ms);
    Value::Null
}

/// The family's native response body for one embedding.
pub fn render_embed(
    family: ModelFamily,
    item: &EmbedItem,
    vector: &[f32],
    input_tokens: u64,
) -> Value {
    let _ = (family, item, vector, input_tokens);
    Value::Null
}
