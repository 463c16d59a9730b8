//! Amazon Titan bodies (spec A6): Titan Text (`inputText` + `textGenerationConfig`) and Titan
//! Text Embeddings V2 / G1 (`inputText`, `dimensions`, `normalize`, `embeddingTypes`).

use serde_json::{Map, Value, json};

use super::{EmbedItem, answer_text, body, f32_value, prompt, prompt_request};
use crate::converse::check::{Checker, Path, member};
use crate::converse::request::{Setting, settings};
use crate::neutral::{ChatRequest, ChatResponse, StopReason};

/// Titan Text V2 embeddings come in these sizes only.
const DIMENSIONS: [u32; 3] = [256, 512, 1024];

/// Titan Text: the prompt in its `User: …\nBot:` convention becomes turns (see
/// [`prompt::titan`]); any other prompt is one user message, as it is.
pub(super) fn text_request(
    cx: &mut Checker,
    root: &Path<'_>,
    value: &Value,
) -> Option<ChatRequest> {
    let map = body(cx, root, value, &["inputText", "textGenerationConfig"])?;
    let mut req = ChatRequest::default();
    if let Some(v) = member(map, "textGenerationConfig") {
        let path = root.key("textGenerationConfig");
        if let Some(config) = body(
            cx,
            &path,
            v,
            &["temperature", "topP", "maxTokenCount", "stopSequences"],
        ) {
            let keys = [
                ("temperature", Setting::Temperature),
                ("topP", Setting::TopP),
                ("maxTokenCount", Setting::MaxTokens),
            ];
            settings(cx, &path, config, &keys, &mut req);
            if let Some(v) = member(config, "stopSequences") {
                let path = path.key("stopSequences");
                req.stop_sequences = cx.non_empty_strings(&path, v, usize::MAX);
            }
        }
    }
    prompt_request(cx, (root, map, "inputText"), prompt::titan, req)
}

fn non_blank<'v>(cx: &mut Checker, path: &Path<'_>, value: &'v Value) -> Option<&'v str> {
    let text = cx.string(path, value)?;
    if text.trim().is_empty() {
        cx.defect(path, "must not be blank");
        return None;
    }
    Some(text)
}

/// Titan embeddings. Accepts the V2 members for G1 ids too: the family does not tell the two
/// apart, and G1 ignoring them is harmless.
pub(super) fn embed_request(cx: &mut Checker, root: &Path<'_>, value: &Value) -> Option<EmbedItem> {
    let map = body(
        cx,
        root,
        value,
        &["inputText", "dimensions", "normalize", "embeddingTypes"],
    )?;
    let mut item = EmbedItem {
        text: String::new(),
        dimensions: None,
        normalize: true,
        float: true,
        binary: false,
    };
    let mut ok = true;
    if let Some(v) = member(map, "dimensions") {
        let path = root.key("dimensions");
        match cx.u32_at_least(&path, v, 1) {
            Some(d) if DIMENSIONS.contains(&d) => item.dimensions = Some(d),
            Some(d) => {
                cx.defect(&path, format!("must be 256, 512 or 1024, found {d}"));
                ok = false;
            }
            None => ok = false,
        }
    }
    if let Some(v) = member(map, "normalize") {
        match cx.boolean(&root.key("normalize"), v) {
            Some(normalize) => item.normalize = normalize,
            None => ok = false,
        }
    }
    if let Some(v) = member(map, "embeddingTypes") {
        let path = root.key("embeddingTypes");
        match cx.non_empty_array(&path, v) {
            Some(types) => {
                item.float = false;
                for (i, t) in types.iter().enumerate() {
                    match cx.one_of(&path.index(i), t, &["float", "binary"]) {
                        Some("float") => item.float = true,
                        Some(_) => item.binary = true,
                        None => ok = false,
                    }
                }
            }
            None => ok = false,
        }
    }
    let text = cx.required(root, map, "inputText")?;
    item.text = non_blank(cx, &root.key("inputText"), text)?.to_owned();
    ok.then_some(item)
}

/// Titan's completion reason for a stop reason.
fn completion_reason(reason: StopReason) -> &'static str {
    match reason {
        StopReason::EndTurn
        | StopReason::ToolUse
        | StopReason::MalformedModelOutput
        | StopReason::MalformedToolUse => "FINISH",
        StopReason::MaxTokens | StopReason::ModelContextWindowExceeded => "LENGTH",
        StopReason::StopSequence => "STOP_CRITERIA_MET",
        StopReason::ContentFiltered | StopReason::GuardrailIntervened => "CONTENT_FILTERED",
    }
}

pub(super) fn render_text(response: &ChatResponse) -> Value {
    json!({
        "inputTextTokenCount": response.usage.input_tokens,
        "results": [{
            "tokenCount": response.usage.output_tokens,
            "outputText": answer_text(response),
            "completionReason": completion_reason(response.stop_reason),
        }],
    })
}

pub(super) fn render_embed(item: &EmbedItem, vector: &[f32], input_tokens: u64) -> Value {
    let len = match item.dimensions {
        Some(d) => vector.len().min(usize::try_from(d).unwrap_or(usize::MAX)),
        None => vector.len(),
    };
    let vector = vector.get(..len).unwrap_or(vector);
    let scale = if item.normalize {
        let norm = vector
            .iter()
            .map(|x| f64::from(*x) * f64::from(*x))
            .sum::<f64>()
            .sqrt();
        // A zero vector stays zero rather than turning into NaNs.
        if norm > 0.0 { 1.0 / norm } else { 1.0 }
    } else {
        1.0
    };
    let floats: Vec<Value> = vector
        .iter()
        .map(|x| f32_value((f64::from(*x) * scale) as f32))
        .collect();
    let mut by_type = Map::new();
    if item.float {
        by_type.insert("float".into(), Value::Array(floats.clone()));
    }
    if item.binary {
        let bits: Vec<Value> = vector
            .iter()
            .map(|x| Value::from(u8::from(*x > 0.0)))
            .collect();
        by_type.insert("binary".into(), Value::Array(bits));
    }
    json!({
        "embedding": floats,
        "inputTextTokenCount": input_tokens,
        "embeddingsByType": by_type,
    })
}
