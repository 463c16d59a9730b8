//! Anthropic Messages bodies (`anthropic.*`, spec A6): the request walk and the native
//! response (`{"id","type":"message","role","content","stop_reason",...}`).

use serde_json::{Map, Value, json};

use super::{body, message_id};
use crate::converse::check::{Checker, Path, matches_name_pattern, member, quoted};
use crate::converse::request::{Setting, base64, conversation, role, settings};
use crate::neutral::{
    ChatMessage, ChatRequest, ChatResponse, ContentPart, JsonSchemaFormat, Role, StopReason,
    ToolChoice, ToolResultPart, ToolSpec,
};

/// The only version Bedrock accepts for the Messages API.
const VERSION: &str = "bedrock-2023-05-31";

const TOP_LEVEL: &[&str] = &[
    "anthropic_version",
    "anthropic_beta",
    "max_tokens",
    "messages",
    "system",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "tools",
    "tool_choice",
    "thinking",
    "metadata",
    "output_format",
    "output_config",
];

const IMAGE_MEDIA_TYPES: &[&str] = &["image/jpeg", "image/png", "image/gif", "image/webp"];
const TOOL_NAME_PATTERN: &str = "[a-zA-Z0-9_-]{1,64}";

pub(super) fn request(cx: &mut Checker, root: &Path<'_>, value: &Value) -> Option<ChatRequest> {
    let map = body(cx, root, value, TOP_LEVEL)?;
    let mut req = ChatRequest::default();
    if let Some(v) = cx.required(root, map, "anthropic_version") {
        cx.one_of(&root.key("anthropic_version"), v, &[VERSION]);
    }
    if let Some(v) = cx.required(root, map, "max_tokens") {
        Setting::MaxTokens.apply(cx, &root.key("max_tokens"), v, &mut req);
    }
    if let Some(v) = member(map, "anthropic_beta") {
        cx.non_empty_strings(&root.key("anthropic_beta"), v, usize::MAX);
    }
    conversation(cx, root, map, &mut req, (messages, system));
    let keys = [
        ("temperature", Setting::Temperature),
        ("top_p", Setting::TopP),
        ("top_k", Setting::TopK),
    ];
    settings(cx, root, map, &keys, &mut req);
    if let Some(v) = member(map, "stop_sequences") {
        req.stop_sequences = cx.non_empty_strings(&root.key("stop_sequences"), v, usize::MAX);
    }
    let mut names = Vec::new();
    if let Some(v) = member(map, "tools") {
        let path = root.key("tools");
        req.tools = tools(cx, &path, v);
        names = req.tools.iter().map(|t| t.name.clone()).collect();
    }
    if let Some(v) = member(map, "tool_choice") {
        match tool_choice(cx, &root.key("tool_choice"), v, &names) {
            // `none`: the model must not call tools; the neutral form says that by sending
            // none (tool calls earlier in the conversation stay as they are).
            Some(None) => req.tools.clear(),
            Some(Some(choice)) => req.tool_choice = Some(choice),
            None => {}
        }
    }
    for key in ["thinking", "metadata"] {
        // Type-checked only: the neutral request has no counterpart.
        if let Some(v) = member(map, key) {
            cx.object(&root.key(key), v);
        }
    }
    if let Some(v) = member(map, "output_format") {
        req.response_format = output_format(cx, &root.key("output_format"), v);
    }
    if let Some(v) = member(map, "output_config") {
        let path = root.key("output_config");
        if let Some(config) = body(cx, &path, v, &["format", "effort"]) {
            if let Some(v) = member(config, "effort") {
                cx.string(&path.key("effort"), v);
            }
            if let Some(v) = member(config, "format") {
                let format = output_format(cx, &path.key("format"), v);
                if req.response_format.is_some() && format.is_some() {
                    cx.defect(
                        &path.key("format"),
                        "set only one of output_format and output_config.format",
                    );
                } else if format.is_some() {
                    req.response_format = format;
                }
            }
        }
    }
    Some(req)
}

fn system(cx: &mut Checker, path: &Path<'_>, value: &Value) -> Vec<String> {
    match value {
        Value::String(text) if text.trim().is_empty() => Vec::new(),
        Value::String(text) => vec![text.clone()],
        Value::Array(blocks) => {
            let mut out = Vec::with_capacity(blocks.len());
            for (i, block) in blocks.iter().enumerate() {
                let path = path.index(i);
                let Some(map) = body(
                    cx,
                    &path,
                    block,
                    &["type", "text", "cache_control", "citations"],
                ) else {
                    continue;
                };
                let kind = cx
                    .required(&path, map, "type")
                    .and_then(|v| cx.one_of(&path.key("type"), v, &["text"]));
                let text = cx
                    .required(&path, map, "text")
                    .and_then(|v| cx.non_empty_string(&path.key("text"), v));
                cache_control(cx, &path, map);
                if let (Some(_), Some(text)) = (kind, text) {
                    out.push(text.to_owned());
                }
            }
            out
        }
        other => {
            cx.wrong_type(path, "a string or an array of text blocks", other);
            Vec::new()
        }
    }
}

fn cache_control(cx: &mut Checker, path: &Path<'_>, map: &Map<String, Value>) {
    if let Some(v) = member(map, "cache_control") {
        let path = path.key("cache_control");
        if let Some(cc) = body(cx, &path, v, &["type", "ttl"]) {
            if let Some(v) = cx.required(&path, cc, "type") {
                cx.one_of(&path.key("type"), v, &["ephemeral"]);
            }
            if let Some(v) = member(cc, "ttl") {
                cx.one_of(&path.key("ttl"), v, &["5m", "1h"]);
            }
        }
    }
}

fn messages(cx: &mut Checker, path: &Path<'_>, value: &Value) -> Vec<ChatMessage> {
    let Some(items) = cx.non_empty_array(path, value) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let last = i + 1 == items.len();
        if let Some(message) = message(cx, &path.index(i), item, last) {
            out.push(message);
        }
    }
    out
}

fn message(cx: &mut Checker, path: &Path<'_>, value: &Value, last: bool) -> Option<ChatMessage> {
    let map = body(cx, path, value, &["role", "content"])?;
    let role = role(cx, path, map);
    let content_path = path.key("content");
    let content = cx.required(path, map, "content")?;
    // Anthropic allows an empty final assistant turn (nothing prefilled); it says nothing.
    let empty_ok = last && role == Some(Role::Assistant);
    let parts = match content {
        Value::String(text) => {
            if text.trim().is_empty() {
                if !empty_ok {
                    cx.defect(&content_path, "must not be blank");
                }
                return None;
            }
            vec![ContentPart::Text(text.clone())]
        }
        Value::Array(blocks) => {
            if blocks.is_empty() {
                if !empty_ok {
                    cx.defect(&content_path, "must not be empty");
                }
                return None;
            }
            let mut parts = Vec::with_capacity(blocks.len());
            for (i, block) in blocks.iter().enumerate() {
                if let Some(part) = content_block(cx, &content_path.index(i), block) {
                    parts.push(part);
                }
            }
            parts
        }
        other => {
            cx.wrong_type(
                &content_path,
                "a string or an array of content blocks",
                other,
            );
            return None;
        }
    };
    Some(ChatMessage {
        role: role?,
        content: parts,
    })
}

fn unsupported(kind: &str) -> ContentPart {
    ContentPart::Unsupported {
        kind: kind.to_owned(),
    }
}

/// The block's `type`, after checking its members against the type's allowed set.
fn block_type<'v>(
    cx: &mut Checker,
    path: &Path<'_>,
    map: &'v Map<String, Value>,
    allowed: &[(&str, &[&str])],
) -> Option<&'v str> {
    let v = cx.required(path, map, "type")?;
    let kind = cx.string(&path.key("type"), v)?;
    let Some((_, keys)) = allowed.iter().find(|(name, _)| *name == kind) else {
        let names: Vec<&str> = allowed.iter().map(|(name, _)| *name).collect();
        cx.defect(
            &path.key("type"),
            format!(
                "unknown block type {} (expected one of {})",
                quoted(kind),
                names.join(", ")
            ),
        );
        return None;
    };
    for key in map.keys() {
        if key != "type" && key != "cache_control" && !keys.contains(&key.as_str()) {
            cx.unknown_key(path, key);
        }
    }
    cache_control(cx, path, map);
    Some(kind)
}

const BLOCKS: &[(&str, &[&str])] = &[
    ("text", &["text", "citations"]),
    ("image", &["source"]),
    ("document", &["source", "title", "context", "citations"]),
    ("tool_use", &["id", "name", "input"]),
    ("tool_result", &["tool_use_id", "content", "is_error"]),
    ("thinking", &["thinking", "signature"]),
    ("redacted_thinking", &["data"]),
    (
        "search_result",
        &["source", "title", "content", "citations"],
    ),
];

fn content_block(cx: &mut Checker, path: &Path<'_>, value: &Value) -> Option<ContentPart> {
    let map = cx.object(path, value)?;
    let kind = block_type(cx, path, map, BLOCKS)?;
    match kind {
        "text" => {
            let text = cx.required(path, map, "text")?;
            let text = cx.string(&path.key("text"), text)?;
            if text.trim().is_empty() {
                cx.defect(&path.key("text"), "must not be blank");
                return None;
            }
            Some(ContentPart::Text(text.to_owned()))
        }
        "image" => {
            let source = cx.required(path, map, "source")?;
            image_source(cx, &path.key("source"), source)
        }
        "document" => document(cx, path, map),
        "tool_use" => {
            let id = cx
                .required(path, map, "id")
                .and_then(|v| cx.non_empty_string(&path.key("id"), v));
            let name = cx
                .required(path, map, "name")
                .and_then(|v| cx.non_empty_string(&path.key("name"), v));
            let input = cx
                .required(path, map, "input")
                .and_then(|v| cx.object(&path.key("input"), v).map(|_| v));
            Some(ContentPart::ToolUse {
                id: id?.to_owned(),
                name: name?.to_owned(),
                input: input?.clone(),
            })
        }
        "tool_result" => tool_result(cx, path, map),
        "thinking" => {
            if let Some(v) = member(map, "signature") {
                cx.string(&path.key("signature"), v);
            }
            let text = cx.required(path, map, "thinking")?;
            let text = cx.string(&path.key("thinking"), text)?;
            Some(ContentPart::Reasoning {
                text: text.to_owned(),
            })
        }
        "redacted_thinking" => {
            let data = cx.required(path, map, "data")?;
            cx.string(&path.key("data"), data)?;
            Some(unsupported("redacted thinking"))
        }
        _ => Some(unsupported(kind)),
    }
}

/// An image `source`: base64 data becomes an image part; url and file sources have no
/// neutral form.
fn image_source(cx: &mut Checker, path: &Path<'_>, value: &Value) -> Option<ContentPart> {
    let map = cx.object(path, value)?;
    let kind = cx
        .required(path, map, "type")
        .and_then(|v| cx.one_of(&path.key("type"), v, &["base64", "url", "file"]))?;
    match kind {
        "base64" => {
            cx.known_keys(path, map, &["type", "media_type", "data"]);
            let media = cx
                .required(path, map, "media_type")
                .and_then(|v| cx.one_of(&path.key("media_type"), v, IMAGE_MEDIA_TYPES));
            let data = cx
                .required(path, map, "data")
                .and_then(|v| base64(cx, &path.key("data"), v));
            let format = media?.strip_prefix("image/").unwrap_or_default();
            Some(ContentPart::Image {
                format: format.to_owned(),
                data_base64: data?.to_owned(),
            })
        }
        "url" => {
            cx.known_keys(path, map, &["type", "url"]);
            let url = cx.required(path, map, "url")?;
            cx.non_empty_string(&path.key("url"), url)?;
            Some(unsupported("image with url source"))
        }
        _ => {
            cx.known_keys(path, map, &["type", "file_id"]);
            let id = cx.required(path, map, "file_id")?;
            cx.non_empty_string(&path.key("file_id"), id)?;
            Some(unsupported("image with file source"))
        }
    }
}

fn document(cx: &mut Checker, path: &Path<'_>, map: &Map<String, Value>) -> Option<ContentPart> {
    let title = member(map, "title").and_then(|v| cx.string(&path.key("title"), v));
    if let Some(v) = member(map, "context") {
        cx.string(&path.key("context"), v);
    }
    if let Some(v) = member(map, "citations") {
        cx.object(&path.key("citations"), v);
    }
    let source_path = path.key("source");
    let source = cx.required(path, map, "source")?;
    let source = cx.object(&source_path, source)?;
    let kind = cx.required(&source_path, source, "type").and_then(|v| {
        cx.one_of(
            &source_path.key("type"),
            v,
            &["text", "content", "base64", "url", "file"],
        )
    })?;
    let (format, text) = match kind {
        "text" => {
            cx.known_keys(&source_path, source, &["type", "media_type", "data"]);
            if let Some(v) = member(source, "media_type") {
                cx.one_of(&source_path.key("media_type"), v, &["text/plain"]);
            }
            let data = cx.required(&source_path, source, "data")?;
            (
                Some("txt".to_owned()),
                cx.string(&source_path.key("data"), data)?.to_owned(),
            )
        }
        "content" => {
            cx.known_keys(&source_path, source, &["type", "content"]);
            let content_path = source_path.key("content");
            let content = cx.required(&source_path, source, "content")?;
            match content {
                Value::String(text) => (None, text.clone()),
                Value::Array(blocks) => {
                    let mut texts = Vec::with_capacity(blocks.len());
                    let mut images = false;
                    for (i, block) in blocks.iter().enumerate() {
                        let path = content_path.index(i);
                        let Some(block) = cx.object(&path, block) else {
                            continue;
                        };
                        match block_type(cx, &path, block, &BLOCKS[..2]) {
                            Some("text") => {
                                if let Some(text) = cx
                                    .required(&path, block, "text")
                                    .and_then(|v| cx.string(&path.key("text"), v))
                                {
                                    texts.push(text);
                                }
                            }
                            Some(_) => images = true,
                            None => {}
                        }
                    }
                    if images {
                        return Some(unsupported("document with image content"));
                    }
                    (None, texts.join("\n"))
                }
                other => {
                    cx.wrong_type(&content_path, "a string or an array of blocks", other);
                    return None;
                }
            }
        }
        "base64" => {
            cx.known_keys(&source_path, source, &["type", "media_type", "data"]);
            if let Some(v) = cx.required(&source_path, source, "media_type") {
                cx.string(&source_path.key("media_type"), v);
            }
            let data = cx.required(&source_path, source, "data")?;
            base64(cx, &source_path.key("data"), data)?;
            return Some(unsupported("document with base64 source"));
        }
        other => {
            cx.known_keys(&source_path, source, &["type", "url", "file_id"]);
            return Some(unsupported(&format!("document with {other} source")));
        }
    };
    Some(ContentPart::Document {
        name: title.unwrap_or("document").to_owned(),
        format,
        text,
    })
}

fn tool_result(cx: &mut Checker, path: &Path<'_>, map: &Map<String, Value>) -> Option<ContentPart> {
    let id = cx
        .required(path, map, "tool_use_id")
        .and_then(|v| cx.non_empty_string(&path.key("tool_use_id"), v));
    let is_error = match member(map, "is_error") {
        Some(v) => cx.boolean(&path.key("is_error"), v),
        None => Some(false),
    };
    let content_path = path.key("content");
    let mut parts = Vec::new();
    // The first part the neutral ToolResultPart cannot carry, if any.
    let mut unrepresentable: Option<&str> = None;
    let mut broken = false;
    match member(map, "content") {
        None => {}
        Some(Value::String(text)) => parts.push(ToolResultPart::Text(text.clone())),
        Some(Value::Array(blocks)) => {
            for (i, block) in blocks.iter().enumerate() {
                let path = content_path.index(i);
                let Some(block) = cx.object(&path, block) else {
                    broken = true;
                    continue;
                };
                let allowed: &[(&str, &[&str])] = &[
                    BLOCKS[0],
                    BLOCKS[1],
                    BLOCKS[2],
                    (
                        "search_result",
                        &["source", "title", "content", "citations"],
                    ),
                ];
                match block_type(cx, &path, block, allowed) {
                    Some("text") => match cx
                        .required(&path, block, "text")
                        .and_then(|v| cx.string(&path.key("text"), v))
                    {
                        Some(text) => parts.push(ToolResultPart::Text(text.to_owned())),
                        None => broken = true,
                    },
                    Some("image") => {
                        let image = cx
                            .required(&path, block, "source")
                            .and_then(|v| image_source(cx, &path.key("source"), v));
                        match image {
                            Some(ContentPart::Image {
                                format,
                                data_base64,
                            }) => parts.push(ToolResultPart::Image {
                                format,
                                data_base64,
                            }),
                            Some(_) => {
                                unrepresentable.get_or_insert("image with url or file source");
                            }
                            None => broken = true,
                        }
                    }
                    // A text document is text to the model.
                    Some("document") => match document(cx, &path, block) {
                        Some(ContentPart::Document { text, .. }) => {
                            parts.push(ToolResultPart::Text(text));
                        }
                        Some(_) => {
                            unrepresentable.get_or_insert("document");
                        }
                        None => broken = true,
                    },
                    Some(_) => {
                        unrepresentable.get_or_insert("search_result");
                    }
                    None => broken = true,
                }
            }
        }
        Some(other) => {
            cx.wrong_type(
                &content_path,
                "a string or an array of content blocks",
                other,
            );
            broken = true;
        }
    }
    let id = id?;
    let is_error = is_error?;
    if broken {
        return None;
    }
    if let Some(kind) = unrepresentable {
        // Dropping the part would change what the model sees; let the backend refuse it.
        return Some(unsupported(&format!("tool_result with {kind} content")));
    }
    Some(ContentPart::ToolResult {
        tool_use_id: id.to_owned(),
        content: parts,
        is_error,
    })
}

fn tools(cx: &mut Checker, path: &Path<'_>, value: &Value) -> Vec<ToolSpec> {
    let Some(items) = cx.array(path, value) else {
        return Vec::new();
    };
    let mut out: Vec<ToolSpec> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = path.index(i);
        let Some(map) = body(
            cx,
            &path,
            item,
            &[
                "type",
                "name",
                "description",
                "input_schema",
                "cache_control",
                "strict",
            ],
        ) else {
            continue;
        };
        if let Some(v) = member(map, "type") {
            // Anthropic-defined tools (bash, text editor, computer use, web search) run inside
            // Anthropic's service; no other backend can run them.
            if let Some(kind) = cx.string(&path.key("type"), v)
                && kind != "custom"
            {
                cx.defect(
                    &path.key("type"),
                    format!("server tools are not supported, found {}", quoted(kind)),
                );
                continue;
            }
        }
        let name = cx.required(&path, map, "name").and_then(|v| {
            let name = cx.string(&path.key("name"), v)?;
            if !matches_name_pattern(name, b"") {
                cx.defect(
                    &path.key("name"),
                    format!("must match {TOOL_NAME_PATTERN}, found {}", quoted(name)),
                );
                return None;
            }
            if out.iter().any(|t| t.name == name) {
                cx.defect(
                    &path.key("name"),
                    format!("duplicate tool name {}", quoted(name)),
                );
                return None;
            }
            Some(name)
        });
        let description = match member(map, "description") {
            Some(v) => cx.string(&path.key("description"), v).map(Some),
            None => Some(None),
        };
        if let Some(v) = member(map, "strict") {
            cx.boolean(&path.key("strict"), v);
        }
        cache_control(cx, &path, map);
        let schema = cx
            .required(&path, map, "input_schema")
            .and_then(|v| cx.object(&path.key("input_schema"), v).map(|_| v));
        if let (Some(name), Some(description), Some(schema)) = (name, description, schema) {
            out.push(ToolSpec {
                name: name.to_owned(),
                description: description.map(str::to_owned),
                input_schema: schema.clone(),
            });
        }
    }
    out
}

/// `Some(None)` for `{"type": "none"}`.
fn tool_choice(
    cx: &mut Checker,
    path: &Path<'_>,
    value: &Value,
    names: &[String],
) -> Option<Option<ToolChoice>> {
    let map = body(
        cx,
        path,
        value,
        &["type", "name", "disable_parallel_tool_use"],
    )?;
    if let Some(v) = member(map, "disable_parallel_tool_use") {
        cx.boolean(&path.key("disable_parallel_tool_use"), v);
    }
    let kind = cx
        .required(path, map, "type")
        .and_then(|v| cx.one_of(&path.key("type"), v, &["auto", "any", "tool", "none"]))?;
    if kind != "tool" {
        if member(map, "name").is_some() {
            cx.defect(
                &path.key("name"),
                format!(
                    "only allowed when type is \"tool\", found type {}",
                    quoted(kind)
                ),
            );
        }
        return Some(match kind {
            "auto" => Some(ToolChoice::Auto),
            "any" => Some(ToolChoice::Any),
            _ => None,
        });
    }
    let name_path = path.key("name");
    let name = cx.required(path, map, "name")?;
    let name = cx.non_empty_string(&name_path, name)?;
    if !names.iter().any(|n| n == name) {
        cx.defect(
            &name_path,
            format!("names no tool in tools, found {}", quoted(name)),
        );
        return None;
    }
    Some(Some(ToolChoice::Tool(name.to_owned())))
}

/// Structured output: `{"type": "json_schema", "schema": {...}}`.
fn output_format(cx: &mut Checker, path: &Path<'_>, value: &Value) -> Option<JsonSchemaFormat> {
    let map = body(cx, path, value, &["type", "schema"])?;
    let kind = cx
        .required(path, map, "type")
        .and_then(|v| cx.one_of(&path.key("type"), v, &["json_schema"]));
    let schema = cx
        .required(path, map, "schema")
        .and_then(|v| cx.object(&path.key("schema"), v).map(|_| v));
    kind?;
    Some(JsonSchemaFormat {
        name: None,
        description: None,
        schema: schema?.clone(),
    })
}

/// Anthropic's name for a stop reason. Filters map to `refusal` (Anthropic's own filter
/// reason); malformed output has no Anthropic name and reads as a finished turn.
fn stop_reason(reason: StopReason) -> &'static str {
    match reason {
        StopReason::EndTurn | StopReason::MalformedModelOutput | StopReason::MalformedToolUse => {
            "end_turn"
        }
        StopReason::ToolUse => "tool_use",
        StopReason::MaxTokens => "max_tokens",
        StopReason::StopSequence => "stop_sequence",
        StopReason::ContentFiltered | StopReason::GuardrailIntervened => "refusal",
        StopReason::ModelContextWindowExceeded => "model_context_window_exceeded",
    }
}

pub(super) fn render(response: &ChatResponse) -> Value {
    let content: Vec<Value> = response
        .content
        .iter()
        .filter_map(|part| match part {
            ContentPart::Text(text) => Some(json!({"type": "text", "text": text})),
            ContentPart::ToolUse { id, name, input } => {
                Some(json!({"type": "tool_use", "id": id, "name": name, "input": input}))
            }
            // Anthropic's SDKs require a signature; no backend here signs its reasoning.
            ContentPart::Reasoning { text } => {
                Some(json!({"type": "thinking", "thinking": text, "signature": ""}))
            }
            _ => None,
        })
        .collect();
    let mut usage = Map::new();
    usage.insert("input_tokens".into(), response.usage.input_tokens.into());
    usage.insert("output_tokens".into(), response.usage.output_tokens.into());
    if let Some(cached) = response.usage.cache_read_input_tokens {
        usage.insert("cache_read_input_tokens".into(), cached.into());
    }
    let stop_sequence = match response.stop_reason {
        StopReason::StopSequence => response.stop_sequence.clone(),
        _ => None,
    };
    json!({
        "id": message_id("msg_bdrk_"),
        "type": "message",
        "role": "assistant",
        "content": content,
        "stop_reason": stop_reason(response.stop_reason),
        "stop_sequence": stop_sequence,
        "usage": usage,
    })
}
