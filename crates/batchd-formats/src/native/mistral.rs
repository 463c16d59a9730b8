//! Mistral text-completion bodies (`mistral.*`, spec A6): an `<s>[INST] … [/INST]` prompt,
//! parsed back into turns, and the native `{"outputs": [...]}` response.

use serde_json::{Value, json};

use super::{answer_text, body, prompt, prompt_request};
use crate::converse::check::{Checker, Path, member};
use crate::converse::request::{Setting, settings};
use crate::neutral::{ChatRequest, ChatResponse, StopReason};

/// Bedrock's limit on Mistral stop sequences.
const MAX_STOP: usize = 10;

pub(super) fn request(cx: &mut Checker, root: &Path<'_>, value: &Value) -> Option<ChatRequest> {
    let map = body(
        cx,
        root,
        value,
        &[
            "prompt",
            "max_tokens",
            "temperature",
            "top_p",
            "top_k",
            "stop",
        ],
    )?;
    let mut req = ChatRequest::default();
    let keys = [
        ("max_tokens", Setting::MaxTokens),
        ("temperature", Setting::Temperature),
        ("top_p", Setting::TopP),
        ("top_k", Setting::TopK),
    ];
    settings(cx, root, map, &keys, &mut req);
    if let Some(v) = member(map, "stop") {
        req.stop_sequences = cx.non_empty_strings(&root.key("stop"), v, MAX_STOP);
    }
    prompt_request(cx, (root, map, "prompt"), prompt::inst, req)
}

pub(super) fn render(response: &ChatResponse) -> Value {
    json!({
        "outputs": [{
            "text": answer_text(response),
            "stop_reason": match response.stop_reason {
                StopReason::MaxTokens | StopReason::ModelContextWindowExceeded => "length",
                _ => "stop",
            },
        }],
    })
}
