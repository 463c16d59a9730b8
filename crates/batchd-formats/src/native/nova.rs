//! Amazon Nova bodies (`amazon.nova-*`, spec A6): Converse-shaped messages, system and
//! toolConfig (walked by the Converse validator), an `inferenceConfig` in both the Nova 1
//! (`max_new_tokens`, `top_p`, `top_k`) and Nova 2 (`maxTokens`, `topP`, `topK`) spellings,
//! and the native response.

use serde_json::{Map, Value};

use super::body;
use crate::converse::check::{Checker, Path, member};
use crate::converse::render_message_response;
use crate::converse::request::{Setting, conversation, messages, system, tool_config};
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
    conversation(cx, root, map, &mut req, (messages, system));
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
    // Nova 2's spelling, then Nova 1's (temperature has one).
    let spellings = [
        ("maxTokens", Some("max_new_tokens"), Setting::MaxTokens),
        ("temperature", None, Setting::Temperature),
        ("topP", Some("top_p"), Setting::TopP),
        ("topK", Some("top_k"), Setting::TopK),
    ];
    for (a, b, setting) in spellings {
        let found = match b {
            Some(b) => either(cx, path, map, a, b),
            None => member(map, a).map(|v| (a, v)),
        };
        if let Some((key, v)) = found {
            setting.apply(cx, &path.key(key), v, req);
        }
    }
    if let Some(v) = member(map, "stopSequences") {
        req.stop_sequences = cx.non_empty_strings(&path.key("stopSequences"), v, usize::MAX);
    }
}

pub(super) fn render(response: &ChatResponse) -> Value {
    Value::Object(render_message_response(
        response,
        "cacheReadInputTokenCount",
    ))
}
