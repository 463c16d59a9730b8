//! Mistral text-completion bodies (`mistral.*`, spec A6): an `<s>[INST] … [/INST]` prompt,
//! parsed back into turns, and the native `{"outputs": [...]}` response.

use serde_json::{Value, json};

use super::{answer_text, body, prompt, prompt_request};
use crate::converse::check::{Checker, Path, member};
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
    let max_tokens =
        member(map, "max_tokens").map(|v| cx.u32_at_least(&root.key("max_tokens"), v, 1));
    let temperature =
        member(map, "temperature").map(|v| cx.number_in(&root.key("temperature"), v, 0.0, 1.0));
    let top_p = member(map, "top_p").map(|v| cx.number_in(&root.key("top_p"), v, 0.0, 1.0));
    let top_k = member(map, "top_k").map(|v| cx.u32_at_least(&root.key("top_k"), v, 0));
    let mut stop = Vec::new();
    if let Some(v) = member(map, "stop") {
        let path = root.key("stop");
        if let Some(items) = cx.array(&path, v) {
            if items.len() > MAX_STOP {
                cx.defect(
                    &path,
                    format!("must have at most {MAX_STOP} items, found {}", items.len()),
                );
            }
            for (i, item) in items.iter().enumerate() {
                if let Some(s) = cx.non_empty_string(&path.index(i), item) {
                    stop.push(s.to_owned());
                }
            }
        }
    }
    let prompt_path = root.key("prompt");
    let text = cx.required(root, map, "prompt")?;
    let text = cx.string(&prompt_path, text)?;
    let mut req = prompt_request(cx, &prompt_path, text, prompt::inst(text))?;
    req.max_tokens = max_tokens.flatten();
    req.temperature = temperature.flatten();
    req.top_p = top_p.flatten();
    req.top_k = top_k.flatten();
    req.stop_sequences = stop;
    Some(req)
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
