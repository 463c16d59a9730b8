//! The neutral chat and embedding request/response that every record format translates to
//! and every backend speaks. No wire shape lives here: formats map their bodies onto these
//! types, backends map these onto their own protocol.

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One chat turn.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    pub role: Role,
    pub content: Vec<ContentPart>,
}

impl ChatMessage {
    pub fn user(content: Vec<ContentPart>) -> Self {
        ChatMessage {
            role: Role::User,
            content,
        }
    }

    pub fn assistant(content: Vec<ContentPart>) -> Self {
        ChatMessage {
            role: Role::Assistant,
            content,
        }
    }
}

/// A piece of a message. Formats produce these; a backend that cannot carry a part answers
/// with a non-retryable `Unsupported` error for that record.
#[derive(Debug, Clone, PartialEq)]
pub enum ContentPart {
    Text(String),
    /// Inline image bytes, base64 as they came in the record. `format` is png|jpeg|gif|webp.
    Image {
        format: String,
        data_base64: String,
    },
    /// A document whose content is text (Converse `source.text` / `source.content`).
    Document {
        name: String,
        format: Option<String>,
        text: String,
    },
    /// A tool call the assistant made (or makes, in a response).
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    /// The result of a tool call, sent back by the user.
    ToolResult {
        tool_use_id: String,
        content: Vec<ToolResultPart>,
        is_error: bool,
    },
    /// Model reasoning text carried in a conversation.
    Reasoning {
        text: String,
    },
    /// A part the request may legally carry but the neutral form does not model (video,
    /// audio, bytes documents, s3Location sources, ...). `kind` names it for error messages.
    Unsupported {
        kind: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum ToolResultPart {
    Text(String),
    Json(Value),
    Image { format: String, data_base64: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: Option<String>,
    /// JSON schema of the tool's input.
    pub input_schema: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    Auto,
    /// The model must call some tool.
    Any,
    /// The model must call this tool.
    Tool(String),
}

/// Structured output: the answer must match this JSON schema.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonSchemaFormat {
    pub name: Option<String>,
    pub description: Option<String>,
    pub schema: Value,
}

/// A chat request, whatever record format it came from.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChatRequest {
    /// System prompt pieces, in order.
    pub system: Vec<String>,
    pub messages: Vec<ChatMessage>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u32>,
    pub stop_sequences: Vec<String>,
    pub tools: Vec<ToolSpec>,
    pub tool_choice: Option<ToolChoice>,
    pub response_format: Option<JsonSchemaFormat>,
    /// Model-specific fields passed through to the backend untouched
    /// (Converse `additionalModelRequestFields`).
    pub extra: Option<serde_json::Map<String, Value>>,
}

/// Why generation stopped, in Converse's vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    EndTurn,
    ToolUse,
    MaxTokens,
    StopSequence,
    ContentFiltered,
    GuardrailIntervened,
    MalformedModelOutput,
    MalformedToolUse,
    ModelContextWindowExceeded,
}

impl StopReason {
    /// The Converse wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::EndTurn => "end_turn",
            StopReason::ToolUse => "tool_use",
            StopReason::MaxTokens => "max_tokens",
            StopReason::StopSequence => "stop_sequence",
            StopReason::ContentFiltered => "content_filtered",
            StopReason::GuardrailIntervened => "guardrail_intervened",
            StopReason::MalformedModelOutput => "malformed_model_output",
            StopReason::MalformedToolUse => "malformed_tool_use",
            StopReason::ModelContextWindowExceeded => "model_context_window_exceeded",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Prompt tokens served from a cache, when the backend reports them.
    pub cache_read_input_tokens: Option<u64>,
}

/// A backend's answer to a [`ChatRequest`].
#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    /// Text and tool-use parts of the assistant message.
    pub content: Vec<ContentPart>,
    pub stop_reason: StopReason,
    /// The stop sequence that ended generation, when known.
    pub stop_sequence: Option<String>,
    pub usage: Usage,
}

/// One or more texts to embed (several when records are batched into one backend call).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EmbedRequest {
    pub inputs: Vec<String>,
    /// Requested output dimensions, when the model supports choosing them.
    pub dimensions: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct EmbedResponse {
    /// One vector per input, in input order.
    pub embeddings: Vec<Vec<f32>>,
    pub input_tokens: u64,
}
