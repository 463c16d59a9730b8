//! Native InvokeModel bodies of the model families batchd accepts (spec A3/A6): validate a
//! body (every defect with its `modelInput.` path), translate it to a neutral request, and
//! render the backend's answer in the family's native response shape.
//!
//! Prompt-only families (Llama, Mistral, Titan Text) carry a raw prompt with the chat
//! template already applied; it is parsed back into system/user/assistant turns (see
//! [`prompt`]) because every backend applies its own template to a chat.

mod anthropic;
mod llama;
mod mistral;
mod nova;
pub mod prompt;
mod titan;

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value};

use crate::Defect;
use crate::converse::MAX_DEFECTS;
use crate::converse::check::{Checker, Path, parse_model_input};
use crate::neutral::{ChatMessage, ChatRequest, ChatResponse, ContentPart, Role};

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
        let id = batchd_core::ModelId::new(model_id).base();
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
/// translates it. Every defect is returned (up to [`MAX_DEFECTS`]), each with a path such as
/// `modelInput.anthropic_version`. A member whose value is `null` counts as absent.
pub fn parse_native(family: ModelFamily, model_input: &str) -> Result<NativeRequest, Vec<Defect>> {
    let value = parse_model_input(model_input)?;
    let mut cx = Checker::new(MAX_DEFECTS);
    let root = Path::Root("modelInput");
    let chat = |req: Option<ChatRequest>| req.map(|r| NativeRequest::Chat(Box::new(r)));
    let request = match family {
        ModelFamily::Anthropic => chat(anthropic::request(&mut cx, &root, &value)),
        ModelFamily::TitanText => chat(titan::text_request(&mut cx, &root, &value)),
        ModelFamily::TitanEmbed => {
            titan::embed_request(&mut cx, &root, &value).map(NativeRequest::Embed)
        }
        ModelFamily::Nova => chat(nova::request(&mut cx, &root, &value)),
        ModelFamily::Llama => chat(llama::request(&mut cx, &root, &value)),
        ModelFamily::Mistral => chat(mistral::request(&mut cx, &root, &value)),
    };
    cx.finish(request)
}

/// The family's native response body (the record's modelOutput) for a chat answer.
/// `latency_ms` is not part of any native shape (only Converse reports it); it is accepted
/// so callers treat every format alike.
pub fn render_chat(family: ModelFamily, response: &ChatResponse, latency_ms: u64) -> Value {
    let _ = latency_ms;
    match family {
        ModelFamily::Anthropic => anthropic::render(response),
        ModelFamily::TitanText => titan::render_text(response),
        ModelFamily::Nova => nova::render(response),
        ModelFamily::Llama => llama::render(response),
        ModelFamily::Mistral => mistral::render(response),
        // An embedding family never gets a chat answer; render the text Titan-style rather
        // than failing the record.
        ModelFamily::TitanEmbed => titan::render_text(response),
    }
}

/// The family's native response body for one embedding.
///
/// The vector is cut to `item.dimensions` when the backend returned more (the backend is
/// asked for the dimensions too, but many local models ignore the request), then L2-normalised
/// when `item.normalize` is set. `binary` holds the sign bits (1 for a positive component, else
/// 0) of the written vector.
pub fn render_embed(
    family: ModelFamily,
    item: &EmbedItem,
    vector: &[f32],
    input_tokens: u64,
) -> Value {
    let _ = family; // Titan is the only embedding family.
    titan::render_embed(item, vector, input_tokens)
}

/// The text parts of an answer, concatenated: the prompt-only families have one output text.
pub(crate) fn answer_text(response: &ChatResponse) -> String {
    let mut text = String::new();
    for part in &response.content {
        if let ContentPart::Text(t) = part {
            text.push_str(t);
        }
    }
    text
}

/// A JSON number for an f32, written with the f32's shortest decimal form (`0.1`, not
/// `0.10000000149011612`) to keep embedding lines small. Non-finite values, which JSON
/// cannot hold, become 0.
pub(crate) fn f32_value(x: f32) -> Value {
    if !x.is_finite() {
        return Value::from(0);
    }
    let shortest: f64 = x.to_string().parse().unwrap_or(f64::from(x));
    serde_json::Number::from_f64(shortest).map_or(Value::from(0), Value::Number)
}

/// A fresh id such as `msg_bdrk_0123456789abcdef01234567`. `RandomState` is seeded per
/// process, so ids differ between runs without a random-number dependency.
pub(crate) fn message_id(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let state = RandomState::new();
    let a = state.hash_one(n);
    let b = state.hash_one(n ^ 0x9e37_79b9_7f4a_7c15);
    format!("{prefix}{a:016x}{:08x}", b >> 32)
}

/// The chat of a prompt-only body, added to `req` (the body's settings): the required
/// string member `key` split into turns by `template`, or the whole prompt as one user
/// message when it has no template. A defect when nothing is left to send.
pub(crate) fn prompt_request(
    cx: &mut Checker,
    (root, map, key): (&Path<'_>, &Map<String, Value>, &str),
    template: fn(&str) -> Option<prompt::Turns>,
    mut req: ChatRequest,
) -> Option<ChatRequest> {
    let path = root.key(key);
    let text = cx.required(root, map, key)?;
    let text = cx.string(&path, text)?;
    if text.trim().is_empty() {
        cx.defect(&path, "must not be blank");
        return None;
    }
    match template(text) {
        Some(turns) => {
            if turns.messages.is_empty() {
                cx.defect(&path, "the chat template holds no user or assistant text");
                return None;
            }
            req.system = turns.system;
            req.messages = turns
                .messages
                .into_iter()
                .map(|(role, text)| ChatMessage {
                    role,
                    content: vec![ContentPart::Text(text)],
                })
                .collect();
        }
        None => {
            req.messages = vec![ChatMessage {
                role: Role::User,
                content: vec![ContentPart::Text(text.to_owned())],
            }];
        }
    }
    Some(req)
}

/// Checks a JSON object's members against `allowed` and returns it, or records a defect.
pub(crate) fn body<'v>(
    cx: &mut Checker,
    path: &Path<'_>,
    value: &'v Value,
    allowed: &[&str],
) -> Option<&'v Map<String, Value>> {
    let map = cx.object(path, value)?;
    cx.known_keys(path, map, allowed);
    Some(map)
}

#[cfg(test)]
mod tests;
