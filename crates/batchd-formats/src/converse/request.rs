//! The Converse request walk: checks every member against spec A7 and builds the
//! [`ChatRequest`] on the way. A defect never stops the walk; the caller discards the
//! request when any defect was recorded.

use serde_json::{Map, Value};

use super::ConverseOptions;
use super::check::{Checker, Path, base64_problem, matches_name_pattern, member, quoted};
use crate::neutral::{
    ChatMessage, ChatRequest, ContentPart, JsonSchemaFormat, Role, ToolChoice, ToolResultPart,
    ToolSpec,
};

const TOP_LEVEL: &[&str] = &[
    "messages",
    "system",
    "inferenceConfig",
    "toolConfig",
    "guardrailConfig",
    "additionalModelRequestFields",
    "additionalModelResponseFieldPaths",
    "promptVariables",
    "requestMetadata",
    "performanceConfig",
    "serviceTier",
    "outputConfig",
];

/// Members that are only type-checked: they have no neutral counterpart.
const OBJECT_ONLY: &[&str] = &[
    "guardrailConfig",
    "promptVariables",
    "requestMetadata",
    "performanceConfig",
    "serviceTier",
];

const IMAGE_FORMATS: &[&str] = &["png", "jpeg", "gif", "webp"];
const DOCUMENT_FORMATS: &[&str] = &[
    "pdf", "csv", "doc", "docx", "xls", "xlsx", "html", "txt", "md",
];
const VIDEO_FORMATS: &[&str] = &[
    "mkv", "mov", "mp4", "webm", "flv", "mpeg", "mpg", "wmv", "three_gp",
];

pub(super) const MAX_STOP_SEQUENCES: usize = 2500;
const MAX_RESPONSE_FIELD_PATHS: usize = 10;
const NAME_PATTERN: &str = "[a-zA-Z0-9_-]{1,64}";
const TOOL_USE_ID_PATTERN: &str = "[a-zA-Z0-9_.:-]{1,64}";

pub(super) fn request(cx: &mut Checker, value: &Value, opts: &ConverseOptions) -> ChatRequest {
    let root = Path::Root("modelInput");
    let mut req = ChatRequest::default();
    let Some(body) = cx.object(&root, value) else {
        return req;
    };
    for key in body.keys() {
        if key == "modelId" {
            cx.defect(
                &root.key("modelId"),
                "not allowed in a batch record: the model comes from the job's modelId",
            );
        } else if !TOP_LEVEL.contains(&key.as_str()) {
            cx.unknown_key(&root, key);
        }
    }

    conversation(cx, &root, body, &mut req, (messages, system));
    if let Some(v) = member(body, "inferenceConfig") {
        inference_config(cx, &root.key("inferenceConfig"), v, &mut req);
    }
    if let Some(v) = member(body, "toolConfig") {
        let path = root.key("toolConfig");
        if opts.allow_tool_config {
            tool_config(cx, &path, v, &mut req);
        } else {
            cx.defect(
                &path,
                "not accepted for this model (toolConfig is disabled in its config)",
            );
        }
    }
    if let Some(v) = member(body, "outputConfig") {
        req.response_format = output_config(cx, &root.key("outputConfig"), v);
    }
    if let Some(v) = member(body, "additionalModelRequestFields") {
        req.extra = cx
            .object(&root.key("additionalModelRequestFields"), v)
            .cloned();
    }
    if let Some(v) = member(body, "additionalModelResponseFieldPaths") {
        let path = root.key("additionalModelResponseFieldPaths");
        cx.non_empty_strings(&path, v, MAX_RESPONSE_FIELD_PATHS);
    }
    for key in OBJECT_ONLY {
        if let Some(v) = member(body, key) {
            cx.object(&root.key(key), v);
        }
    }
    req
}

/// One dialect's walkers of `messages` and of `system`.
pub(crate) type ConversationWalkers = (
    fn(&mut Checker, &Path<'_>, &Value) -> Vec<ChatMessage>,
    fn(&mut Checker, &Path<'_>, &Value) -> Vec<String>,
);

/// `messages` (required) and `system` of a body into `req`, each by the dialect's walker.
pub(crate) fn conversation(
    cx: &mut Checker,
    root: &Path<'_>,
    map: &Map<String, Value>,
    req: &mut ChatRequest,
    (messages, system): ConversationWalkers,
) {
    if let Some(v) = cx.required(root, map, "messages") {
        req.messages = messages(cx, &root.key("messages"), v);
    }
    if let Some(v) = member(map, "system") {
        req.system = system(cx, &root.key("system"), v);
    }
}

/// A sampling setting of the neutral request; each dialect spells it with its own key, the
/// ranges are the same in all of them.
#[derive(Clone, Copy)]
pub(crate) enum Setting {
    MaxTokens,
    Temperature,
    TopP,
    TopK,
}

impl Setting {
    /// Checks `value` (at `path`) and sets it on `req` (`None` when it fails the check).
    pub(crate) fn apply(
        self,
        cx: &mut Checker,
        path: &Path<'_>,
        value: &Value,
        req: &mut ChatRequest,
    ) {
        match self {
            Setting::MaxTokens => req.max_tokens = cx.u32_at_least(path, value, 1),
            Setting::Temperature => req.temperature = cx.number_in(path, value, 0.0, 1.0),
            Setting::TopP => req.top_p = cx.number_in(path, value, 0.0, 1.0),
            Setting::TopK => req.top_k = cx.u32_at_least(path, value, 0),
        }
    }
}

/// The settings of `keys` that `map` has, checked in that order and set on `req`.
pub(crate) fn settings(
    cx: &mut Checker,
    path: &Path<'_>,
    map: &Map<String, Value>,
    keys: &[(&str, Setting)],
    req: &mut ChatRequest,
) {
    for &(key, setting) in keys {
        if let Some(v) = member(map, key) {
            setting.apply(cx, &path.key(key), v, req);
        }
    }
}

pub(crate) fn messages(cx: &mut Checker, path: &Path<'_>, value: &Value) -> Vec<ChatMessage> {
    let Some(items) = cx.non_empty_array(path, value) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        if let Some(message) = message(cx, &path.index(i), item) {
            out.push(message);
        }
    }
    out
}

/// A message's required `role`: `user` or `assistant`.
pub(crate) fn role(cx: &mut Checker, path: &Path<'_>, map: &Map<String, Value>) -> Option<Role> {
    let v = cx.required(path, map, "role")?;
    let role = cx.one_of(&path.key("role"), v, &["user", "assistant"])?;
    Some(if role == "user" {
        Role::User
    } else {
        Role::Assistant
    })
}

fn message(cx: &mut Checker, path: &Path<'_>, value: &Value) -> Option<ChatMessage> {
    let map = cx.object(path, value)?;
    cx.known_keys(path, map, &["role", "content"]);
    let role = role(cx, path, map);
    let content = cx.required(path, map, "content").and_then(|v| {
        let path = path.key("content");
        let blocks = cx.non_empty_array(&path, v)?;
        let mut parts = Vec::with_capacity(blocks.len());
        for (i, block) in blocks.iter().enumerate() {
            if let Some(part) = content_block(cx, &path.index(i), block) {
                parts.push(part);
            }
        }
        Some(parts)
    });
    Some(ChatMessage {
        role: role?,
        content: content?,
    })
}

/// A text block Bedrock refuses: "The text field in the ContentBlock object ... is blank".
pub(super) fn blank(text: &str) -> bool {
    text.trim().is_empty()
}

fn unsupported(kind: &str) -> ContentPart {
    ContentPart::Unsupported {
        kind: kind.to_owned(),
    }
}

/// One message content block. None for blocks with no neutral form that need none
/// (cachePoint) and for broken blocks.
fn content_block(cx: &mut Checker, path: &Path<'_>, value: &Value) -> Option<ContentPart> {
    let (kind, body) = cx.object_union(path, value)?;
    let inner = path.key(kind);
    match kind {
        "text" => {
            let text = cx.string(&inner, body)?;
            if blank(text) {
                cx.defect(&inner, "must not be blank");
                return None;
            }
            Some(ContentPart::Text(text.to_owned()))
        }
        "image" => image(cx, &inner, body),
        "document" => {
            let doc = document(cx, &inner, body)?;
            Some(match doc.text {
                Some(text) => ContentPart::Document {
                    name: doc.name,
                    format: doc.format,
                    text,
                },
                None => unsupported(doc.source_kind),
            })
        }
        "video" => {
            video(cx, &inner, body)?;
            Some(unsupported("video"))
        }
        "audio" | "guardContent" | "citationsContent" | "searchResult" => {
            cx.object(&inner, body)?;
            Some(unsupported(kind))
        }
        "toolUse" => tool_use(cx, &inner, body),
        "toolResult" => tool_result(cx, &inner, body),
        "cachePoint" => {
            cache_point(cx, &inner, body);
            None
        }
        "reasoningContent" => reasoning(cx, &inner, body),
        other => {
            cx.defect(
                path,
                format!("unknown content block type {}", quoted(other)),
            );
            None
        }
    }
}

/// A media `source` union.
enum Source<'v> {
    Bytes(&'v str),
    S3,
    Text(String),
}

/// Checks a `source` union whose allowed variants are `allowed` (a subset of bytes,
/// s3Location, text, content).
fn source<'v>(
    cx: &mut Checker,
    path: &Path<'_>,
    value: &'v Value,
    allowed: &[&str],
) -> Option<Source<'v>> {
    let (kind, body) = cx.object_union(path, value)?;
    let inner = path.key(kind);
    if !allowed.contains(&kind) {
        let list = allowed.join(", ");
        cx.defect(
            path,
            format!(
                "unknown source type {} (expected one of {list})",
                quoted(kind)
            ),
        );
        return None;
    }
    match kind {
        "bytes" => base64(cx, &inner, body).map(Source::Bytes),
        "s3Location" => s3_location(cx, &inner, body).map(|()| Source::S3),
        "text" => cx
            .non_empty_string(&inner, body)
            .map(|s| Source::Text(s.to_owned())),
        // `content`: a list of `{text}` blocks, joined into one text.
        _ => {
            let blocks = cx.non_empty_array(&inner, body)?;
            let mut texts = Vec::with_capacity(blocks.len());
            for (i, block) in blocks.iter().enumerate() {
                let path = inner.index(i);
                let Some((key, text)) = cx.object_union(&path, block) else {
                    continue;
                };
                if key == "text" {
                    if let Some(text) = cx.string(&path.key("text"), text) {
                        texts.push(text);
                    }
                } else {
                    cx.defect(
                        &path,
                        format!("unknown block type {} (expected text)", quoted(key)),
                    );
                }
            }
            Some(Source::Text(texts.join("\n")))
        }
    }
}

pub(crate) fn base64<'v>(cx: &mut Checker, path: &Path<'_>, value: &'v Value) -> Option<&'v str> {
    let s = cx.string(path, value)?;
    match base64_problem(s) {
        None => Some(s),
        Some(problem) => {
            cx.defect(path, problem);
            None
        }
    }
}

fn s3_location(cx: &mut Checker, path: &Path<'_>, value: &Value) -> Option<()> {
    let map = cx.object(path, value)?;
    cx.known_keys(path, map, &["uri", "bucketOwner"]);
    if let Some(owner) = member(map, "bucketOwner") {
        cx.string(&path.key("bucketOwner"), owner);
    }
    let uri_path = path.key("uri");
    let uri = cx.required(path, map, "uri")?;
    let uri = cx.string(&uri_path, uri)?;
    if uri.len() <= "s3://".len() || !uri.starts_with("s3://") {
        cx.defect(
            &uri_path,
            format!("must be an s3:// URI, found {}", quoted(uri)),
        );
        return None;
    }
    Some(())
}

/// An image or video block, `{format, source}`: each part `None` when it has a defect.
struct Media<'v> {
    format: Option<&'v str>,
    source: Option<Source<'v>>,
}

impl<'v> Media<'v> {
    /// The format must be one of `formats`; the source is bytes or s3Location.
    fn walk(cx: &mut Checker, path: &Path<'_>, value: &'v Value, formats: &[&str]) -> Option<Self> {
        let map = cx.object(path, value)?;
        cx.known_keys(path, map, &["format", "source"]);
        let format = cx
            .required(path, map, "format")
            .and_then(|v| cx.one_of(&path.key("format"), v, formats));
        let source = cx
            .required(path, map, "source")
            .and_then(|v| source(cx, &path.key("source"), v, &["bytes", "s3Location"]));
        Some(Media { format, source })
    }
}

fn image(cx: &mut Checker, path: &Path<'_>, value: &Value) -> Option<ContentPart> {
    let Media { format, source } = Media::walk(cx, path, value, IMAGE_FORMATS)?;
    Some(match source? {
        Source::Bytes(data) => ContentPart::Image {
            format: format?.to_owned(),
            data_base64: data.to_owned(),
        },
        _ => unsupported("image with s3Location source"),
    })
}

struct Document {
    name: String,
    format: Option<String>,
    /// The document's text when its source is text or content blocks.
    text: Option<String>,
    /// What the source is, for an Unsupported part when it is not text.
    source_kind: &'static str,
}

fn document(cx: &mut Checker, path: &Path<'_>, value: &Value) -> Option<Document> {
    let map = cx.object(path, value)?;
    cx.known_keys(
        path,
        map,
        &["format", "name", "source", "context", "citations"],
    );
    let format = member(map, "format").map(|v| cx.one_of(&path.key("format"), v, DOCUMENT_FORMATS));
    let name = cx.required(path, map, "name").and_then(|v| {
        let name_path = path.key("name");
        let name = cx.string(&name_path, v)?;
        let chars = name.chars().count();
        if !(1..=200).contains(&chars) {
            cx.defect(
                &name_path,
                format!("must be 1 to 200 characters long, found {chars}"),
            );
            return None;
        }
        Some(name)
    });
    let source = cx.required(path, map, "source").and_then(|v| {
        source(
            cx,
            &path.key("source"),
            v,
            &["bytes", "s3Location", "text", "content"],
        )
    });
    if let Some(v) = member(map, "context") {
        cx.string(&path.key("context"), v);
    }
    if let Some(v) = member(map, "citations") {
        let citations_path = path.key("citations");
        if let Some(citations) = cx.object(&citations_path, v) {
            cx.known_keys(&citations_path, citations, &["enabled"]);
            if let Some(enabled) = cx.required(&citations_path, citations, "enabled") {
                cx.boolean(&citations_path.key("enabled"), enabled);
            }
        }
    }
    let (text, source_kind) = match source? {
        Source::Text(text) => (Some(text), "document"),
        Source::Bytes(_) => (None, "document with bytes source"),
        Source::S3 => (None, "document with s3Location source"),
    };
    Some(Document {
        name: name?.to_owned(),
        format: match format {
            Some(f) => Some(f?.to_owned()),
            None => None,
        },
        text,
        source_kind,
    })
}

fn video(cx: &mut Checker, path: &Path<'_>, value: &Value) -> Option<()> {
    let Media { format, source } = Media::walk(cx, path, value, VIDEO_FORMATS)?;
    format?;
    source?;
    Some(())
}

/// A name-like string matching `[a-zA-Z0-9_-]{1,64}` plus `extra` characters.
fn patterned<'v>(
    cx: &mut Checker,
    path: &Path<'_>,
    value: &'v Value,
    extra: &[u8],
    pattern: &str,
) -> Option<&'v str> {
    let s = cx.string(path, value)?;
    if matches_name_pattern(s, extra) {
        return Some(s);
    }
    cx.defect(path, format!("must match {pattern}, found {}", quoted(s)));
    None
}

/// A tool use id: `[a-zA-Z0-9_.:-]{1,64}`.
const TOOL_USE_ID: (&str, &[u8], &str) = ("toolUseId", b".:", TOOL_USE_ID_PATTERN);
/// A tool name: `[a-zA-Z0-9_-]{1,64}`.
const TOOL_NAME: (&str, &[u8], &str) = ("name", b"", NAME_PATTERN);

/// The required member `key` of `map`, a string matching `pattern` (see [`patterned`]).
fn patterned_member<'v>(
    cx: &mut Checker,
    path: &Path<'_>,
    map: &'v Map<String, Value>,
    (key, extra, pattern): (&str, &[u8], &str),
) -> Option<&'v str> {
    let v = cx.required(path, map, key)?;
    patterned(cx, &path.key(key), v, extra, pattern)
}

fn tool_use(cx: &mut Checker, path: &Path<'_>, value: &Value) -> Option<ContentPart> {
    let map = cx.object(path, value)?;
    cx.known_keys(path, map, &["toolUseId", "name", "input", "type"]);
    let id = patterned_member(cx, path, map, TOOL_USE_ID);
    let name = patterned_member(cx, path, map, TOOL_NAME);
    let input = cx.required(path, map, "input");
    if let Some(v) = member(map, "type") {
        cx.string(&path.key("type"), v);
    }
    Some(ContentPart::ToolUse {
        id: id?.to_owned(),
        name: name?.to_owned(),
        input: input?.clone(),
    })
}

fn tool_result(cx: &mut Checker, path: &Path<'_>, value: &Value) -> Option<ContentPart> {
    let map = cx.object(path, value)?;
    cx.known_keys(path, map, &["toolUseId", "content", "status", "type"]);
    let id = patterned_member(cx, path, map, TOOL_USE_ID);
    let status = match member(map, "status") {
        Some(v) => cx.one_of(&path.key("status"), v, &["success", "error"]),
        None => Some("success"),
    };
    if let Some(v) = member(map, "type") {
        cx.string(&path.key("type"), v);
    }
    let content_path = path.key("content");
    let blocks = cx
        .required(path, map, "content")
        .and_then(|v| cx.array(&content_path, v));
    let mut parts = Vec::new();
    // The first part the neutral ToolResultPart cannot carry, if any.
    let mut unrepresentable: Option<&str> = None;
    for (i, block) in blocks.unwrap_or_default().iter().enumerate() {
        let block_path = content_path.index(i);
        let Some((kind, body)) = cx.object_union(&block_path, block) else {
            continue;
        };
        let inner = block_path.key(kind);
        match kind {
            "json" => parts.push(ToolResultPart::Json(body.clone())),
            "text" => {
                if let Some(text) = cx.string(&inner, body) {
                    parts.push(ToolResultPart::Text(text.to_owned()));
                }
            }
            "image" => match image(cx, &inner, body) {
                Some(ContentPart::Image {
                    format,
                    data_base64,
                }) => {
                    parts.push(ToolResultPart::Image {
                        format,
                        data_base64,
                    });
                }
                Some(_) => {
                    unrepresentable.get_or_insert("image with s3Location source");
                }
                None => {}
            },
            // A text document is text to the model; other sources have no neutral form.
            "document" => match document(cx, &inner, body) {
                Some(Document {
                    text: Some(text), ..
                }) => parts.push(ToolResultPart::Text(text)),
                Some(doc) => {
                    unrepresentable.get_or_insert(doc.source_kind);
                }
                None => {}
            },
            "video" => {
                if video(cx, &inner, body).is_some() {
                    unrepresentable.get_or_insert("video");
                }
            }
            "searchResult" => {
                if cx.object(&inner, body).is_some() {
                    unrepresentable.get_or_insert("searchResult");
                }
            }
            other => cx.defect(
                &block_path,
                format!(
                    "unknown tool result block type {} (expected json, text, image, document, \
                     video or searchResult)",
                    quoted(other)
                ),
            ),
        }
    }
    let id = id?;
    let status = status?;
    blocks?;
    if let Some(kind) = unrepresentable {
        // Dropping the part would change what the model sees; let the backend refuse it.
        return Some(unsupported(&format!("toolResult with {kind} content")));
    }
    Some(ContentPart::ToolResult {
        tool_use_id: id.to_owned(),
        content: parts,
        is_error: status == "error",
    })
}

fn cache_point(cx: &mut Checker, path: &Path<'_>, value: &Value) {
    let Some(map) = cx.object(path, value) else {
        return;
    };
    cx.known_keys(path, map, &["type", "ttl"]);
    if let Some(v) = cx.required(path, map, "type") {
        cx.one_of(&path.key("type"), v, &["default"]);
    }
    if let Some(v) = member(map, "ttl") {
        cx.one_of(&path.key("ttl"), v, &["5m", "1h"]);
    }
}

fn reasoning(cx: &mut Checker, path: &Path<'_>, value: &Value) -> Option<ContentPart> {
    let (kind, body) = cx.object_union(path, value)?;
    let inner = path.key(kind);
    match kind {
        "reasoningText" => {
            let text_map = cx.object(&inner, body)?;
            cx.known_keys(&inner, text_map, &["text", "signature"]);
            if let Some(v) = member(text_map, "signature") {
                cx.string(&inner.key("signature"), v);
            }
            let text = cx.required(&inner, text_map, "text")?;
            let text = cx.string(&inner.key("text"), text)?;
            Some(ContentPart::Reasoning {
                text: text.to_owned(),
            })
        }
        "redactedContent" => {
            base64(cx, &inner, body)?;
            Some(unsupported("redacted reasoning"))
        }
        other => {
            cx.defect(
                path,
                format!(
                    "unknown reasoning type {} (expected reasoningText or redactedContent)",
                    quoted(other)
                ),
            );
            None
        }
    }
}

pub(crate) fn system(cx: &mut Checker, path: &Path<'_>, value: &Value) -> Vec<String> {
    let Some(blocks) = cx.array(path, value) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(blocks.len());
    for (i, block) in blocks.iter().enumerate() {
        let block_path = path.index(i);
        let Some((kind, body)) = cx.object_union(&block_path, block) else {
            continue;
        };
        let inner = block_path.key(kind);
        match kind {
            "text" => {
                if let Some(text) = cx.non_empty_string(&inner, body) {
                    out.push(text.to_owned());
                }
            }
            "guardContent" => {
                // Without a guardrail Bedrock passes guarded text to the model as plain text;
                // keep it rather than silently dropping part of the system prompt.
                if let Some(guard) = cx.object(&inner, body) {
                    let text = member(guard, "text")
                        .and_then(Value::as_object)
                        .and_then(|t| member(t, "text"))
                        .and_then(Value::as_str);
                    if let Some(text) = text {
                        out.push(text.to_owned());
                    }
                }
            }
            "cachePoint" => cache_point(cx, &inner, body),
            other => cx.defect(
                &block_path,
                format!(
                    "unknown system block type {} (expected text, guardContent or cachePoint)",
                    quoted(other)
                ),
            ),
        }
    }
    out
}

fn inference_config(cx: &mut Checker, path: &Path<'_>, value: &Value, req: &mut ChatRequest) {
    let Some(map) = cx.object(path, value) else {
        return;
    };
    cx.known_keys(
        path,
        map,
        &["maxTokens", "temperature", "topP", "stopSequences"],
    );
    let keys = [
        ("maxTokens", Setting::MaxTokens),
        ("temperature", Setting::Temperature),
        ("topP", Setting::TopP),
    ];
    settings(cx, path, map, &keys, req);
    if let Some(v) = member(map, "stopSequences") {
        let seq_path = path.key("stopSequences");
        let Some(items) = cx.array(&seq_path, v) else {
            return;
        };
        // Unlike the other string lists, a list too long is not walked item by item.
        if !cx.at_most(&seq_path, items.len(), MAX_STOP_SEQUENCES) {
            return;
        }
        for (i, item) in items.iter().enumerate() {
            if let Some(s) = cx.non_empty_string(&seq_path.index(i), item) {
                req.stop_sequences.push(s.to_owned());
            }
        }
    }
}

pub(crate) fn tool_config(cx: &mut Checker, path: &Path<'_>, value: &Value, req: &mut ChatRequest) {
    let Some(map) = cx.object(path, value) else {
        return;
    };
    cx.known_keys(path, map, &["tools", "toolChoice"]);
    // Names a toolChoice may refer to: toolSpec and systemTool names.
    let mut names: Vec<&str> = Vec::new();
    let tools_path = path.key("tools");
    let tools = cx
        .required(path, map, "tools")
        .and_then(|v| cx.non_empty_array(&tools_path, v));
    for (i, tool) in tools.unwrap_or_default().iter().enumerate() {
        let tool_path = tools_path.index(i);
        let Some((kind, body)) = cx.object_union(&tool_path, tool) else {
            continue;
        };
        let inner = tool_path.key(kind);
        let name = match kind {
            "toolSpec" => tool_spec(cx, &inner, body).map(|spec| {
                req.tools.push(spec);
                // Borrow the name from the input, not from `req`, to keep `names` independent.
                body.get("name").and_then(Value::as_str).unwrap_or_default()
            }),
            "systemTool" => cx.object(&inner, body).and_then(|m| {
                cx.known_keys(&inner, m, &["name"]);
                let v = cx.required(&inner, m, "name")?;
                cx.non_empty_string(&inner.key("name"), v)
            }),
            "cachePoint" => {
                cache_point(cx, &inner, body);
                None
            }
            other => {
                cx.defect(
                    &tool_path,
                    format!(
                        "unknown tool type {} (expected toolSpec, systemTool or cachePoint)",
                        quoted(other)
                    ),
                );
                None
            }
        };
        if let Some(name) = name {
            if names.contains(&name) {
                cx.defect(
                    &inner.key("name"),
                    format!("duplicate tool name {}", quoted(name)),
                );
            } else {
                names.push(name);
            }
        }
    }
    if let Some(v) = member(map, "toolChoice") {
        req.tool_choice = tool_choice(
            cx,
            &path.key("toolChoice"),
            v,
            tools.map(|_| names.as_slice()),
        );
    }
}

fn tool_spec(cx: &mut Checker, path: &Path<'_>, value: &Value) -> Option<ToolSpec> {
    let map = cx.object(path, value)?;
    cx.known_keys(path, map, &["name", "description", "inputSchema", "strict"]);
    let name = patterned_member(cx, path, map, TOOL_NAME);
    let description =
        member(map, "description").map(|v| cx.non_empty_string(&path.key("description"), v));
    if let Some(v) = member(map, "strict") {
        cx.boolean(&path.key("strict"), v);
    }
    let schema_path = path.key("inputSchema");
    let schema = cx.required(path, map, "inputSchema").and_then(|v| {
        let (kind, body) = cx.object_union(&schema_path, v)?;
        if kind != "json" {
            cx.defect(
                &schema_path,
                format!("unknown schema type {} (expected json)", quoted(kind)),
            );
            return None;
        }
        cx.object(&schema_path.key("json"), body)?;
        Some(body.clone())
    });
    Some(ToolSpec {
        name: name?.to_owned(),
        description: match description {
            Some(d) => Some(d?.to_owned()),
            None => None,
        },
        input_schema: schema?,
    })
}

/// `known` is None when the tools list itself was broken (then names are not checked).
fn tool_choice(
    cx: &mut Checker,
    path: &Path<'_>,
    value: &Value,
    known: Option<&[&str]>,
) -> Option<ToolChoice> {
    let (kind, body) = cx.object_union(path, value)?;
    let inner = path.key(kind);
    match kind {
        "auto" | "any" => {
            let m = cx.object(&inner, body)?;
            cx.known_keys(&inner, m, &[]);
            Some(if kind == "auto" {
                ToolChoice::Auto
            } else {
                ToolChoice::Any
            })
        }
        "tool" => {
            let m = cx.object(&inner, body)?;
            cx.known_keys(&inner, m, &["name"]);
            let name_path = inner.key("name");
            let name = cx.required(&inner, m, "name")?;
            let name = cx.non_empty_string(&name_path, name)?;
            if let Some(known) = known
                && !known.contains(&name)
            {
                cx.defect(
                    &name_path,
                    format!("names no tool in toolConfig.tools, found {}", quoted(name)),
                );
                return None;
            }
            Some(ToolChoice::Tool(name.to_owned()))
        }
        other => {
            cx.defect(
                path,
                format!(
                    "unknown tool choice {} (expected auto, any or tool)",
                    quoted(other)
                ),
            );
            None
        }
    }
}

fn output_config(cx: &mut Checker, path: &Path<'_>, value: &Value) -> Option<JsonSchemaFormat> {
    let map = cx.object(path, value)?;
    cx.known_keys(path, map, &["textFormat"]);
    let format_path = path.key("textFormat");
    let format = cx.object(&format_path, member(map, "textFormat")?)?;
    cx.known_keys(&format_path, format, &["type", "structure"]);
    let kind = cx
        .required(&format_path, format, "type")
        .and_then(|v| cx.one_of(&format_path.key("type"), v, &["json_schema"]));
    let structure_path = format_path.key("structure");
    let structure = cx
        .required(&format_path, format, "structure")
        .and_then(|v| cx.object(&structure_path, v));
    kind?;
    let (variant, body) = cx.union(&structure_path, structure?)?;
    if variant != "jsonSchema" {
        cx.defect(
            &structure_path,
            format!(
                "unknown structure type {} (expected jsonSchema)",
                quoted(variant)
            ),
        );
        return None;
    }
    let schema_path = structure_path.key("jsonSchema");
    let def = cx.object(&schema_path, body)?;
    cx.known_keys(&schema_path, def, &["schema", "name", "description"]);
    let name = member(def, "name").and_then(|v| cx.non_empty_string(&schema_path.key("name"), v));
    let description = member(def, "description")
        .and_then(|v| cx.non_empty_string(&schema_path.key("description"), v));
    let text_path = schema_path.key("schema");
    let text = cx.required(&schema_path, def, "schema")?;
    let text = cx.string(&text_path, text)?;
    let schema = match serde_json::from_str::<Value>(text) {
        Ok(schema @ Value::Object(_)) => schema,
        Ok(other) => {
            cx.wrong_type(
                &text_path,
                "a JSON object (a JSON schema) in a string",
                &other,
            );
            return None;
        }
        Err(e) => {
            cx.defect(
                &text_path,
                format!("must be a string holding a JSON schema: invalid JSON: {e}"),
            );
            return None;
        }
    };
    Some(JsonSchemaFormat {
        name: name.map(str::to_owned),
        description: description.map(str::to_owned),
        schema,
    })
}
