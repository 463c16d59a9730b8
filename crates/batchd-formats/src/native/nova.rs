//! Amazon Nova bodies (`amazon.nova-*`, spec A6): Converse-shaped messages, system and
//! toolConfig (walked by the Converse validator), an `inferenceConfig` in both the Nova 1
//! (`max_new_tokens`, `top_p`, `top_k`) and Nova 2 (`maxTokens`, `topP`, `topK`) spellings,
//! and the native response.

use serde_json::{Map, Value};

use super::body;
use crate::converse::check::{Checker, Path, member};
use crate::converse::render_message_response;
use crate::converse::request::{messages, system, tool_config};
use crate::neutral::{ChatRequest, ChatResponse};

const TOP_LEVEL: &[&str] = &[
    "schemaVersion",
    "system",
    "messages",
    "inferenceConfig",
    "toolConfig",
    "reasoningConfig",
];

pub(super) fn request(cx: &mut Checker, root: &Path<'_>, value: &Value) -> Option<ChatRequest> {
    let map = body(cx, root, value, TOP_LEVEL)?;
    let mut req = ChatRequest::default();
    if let Some(v) = member(map, "schemaVersion") {
        cx.one_of(&root.key("schemaVersion"), v, &["messages-v1"]);
    }
    let path = root.key("messages");
    match member(map, "messages") {
        None => cx.defect(&path, "missing"),
        Some(v) => req.messages = messages(cx, &path, v),
    }
    if let Some(v) = member(map, "system") {
        req.system = system(cx, &root.key("system"), v);
    }
    if let Some(v) = member(map, "inferenceConfig") {
        inference_config(cx, &root.key("inferenceConfig"), v, &mut req);
    }
    // Tools always work on the InvokeModel path (spec A3); the per-model toolConfig switch
    // applies to Converse records only.
    if let Some(v) = member(map, "toolConfig") {
        tool_config(cx, &root.key("toolConfig"), v, &mut req);
    }
    if let Some(v) = member(map, "reasoningConfig") {
        cx.object(&root.key("reasoningConfig"), v);
    }
    Some(req)
}

/// One setting that has two spellings: the value of whichever is set (a defect when both are).
fn either<'v>(
    cx: &mut Checker,
    path: &Path<'_>,
    map: &'v Map<String, Value>,
    a: &'static str,
    b: &'static str,
) -> Option<(&'static str, &'v Value)> {
    match (member(map, a), member(map, b)) {
        (Some(_), Some(_)) => {
            cx.defect(&path.key(b), format!("set only one of {a} and {b}"));
            None
        }
        (Some(v), None) => Some((a, v)),
        (None, Some(v)) => Some((b, v)),
        (None, None) => None,
    }
}

const INFERENCE_KEYS: &[&str] = &[
    "maxTokens",
    "max_new_tokens",
    "temperature",
    "topP",
    "top_p",
    "topK",
    "top_k",
    "stopSequences",
];

fn inference_config(cx: &mut Checker, path: &Path<'_>, value: &Value, req: &mut ChatRequest) {
    let Some(map) = body(cx, path, value, INFERENCE_KEYS) else {
        return;
    };
    if let Some((key, v)) = either(cx, path, map, "maxTokens", "max_new_tokens") {
        req.max_tokens = cx.u32_at_least(&path.key(key), v, 1);
    }
    if let Some(v) = member(map, "temperature") {
        req.temperature = cx.number_in(&path.key("temperature"), v, 0.0, 1.0);
    }
    if let Some((key, v)) = either(cx, path, map, "topP", "top_p") {
        req.top_p = cx.number_in(&path.key(key), v, 0.0, 1.0);
    }
    if let Some((key, v)) = either(cx, path, map, "topK", "top_k") {
        req.top_k = cx.u32_at_least(&path.key(key), v, 0);
    }
    if let Some(v) = member(map, "stopSequences") {
        let path = path.key("stopSequences");
        if let Some(items) = cx.array(&path, v) {
            for (i, item) in items.iter().enumerate() {
                if let Some(s) = cx.non_empty_string(&path.index(i), item) {
                    req.stop_sequences.push(s.to_owned());
                }
            }
        }
    }
}

pub(super) fn render(response: &ChatResponse) -> Value {
    Value::Object(render_message_response(
        response,
        "cacheReadInputTokenCount",
    ))
}
