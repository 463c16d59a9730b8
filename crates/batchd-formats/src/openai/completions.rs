//! `/v1/completions` bodies (the legacy text completions): the prompt runs as one user
//! message of a chat request, so it goes through the model's chat template; the answer is a
//! `text_completion` object.

use serde_json::{Map, Value, json};

use super::{completion_object, extra_keys, finish_reason, response_text, sampling, usage_counts};
use crate::Defect;
use crate::neutral::{ChatMessage, ChatRequest, ChatResponse, ContentPart, Role};

/// OpenAI's `max_tokens` when a completions body has none.
pub const DEFAULT_MAX_TOKENS: u32 = 16;

/// Keys read here; any other is passed to the backend as it is.
const KEYS: [&str; 12] = [
    "model",
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "stop",
    "n",
    "stream",
    "echo",
    "suffix",
    "logprobs",
    "best_of",
];

pub(super) fn parse(map: &Map<String, Value>, defects: &mut Vec<Defect>) -> Option<ChatRequest> {
    let prompt = match map.get("prompt") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Array(items)) if items.len() == 1 && items[0].is_string() => {
            items[0].as_str().unwrap_or_default().to_owned()
        }
        Some(Value::Array(items)) if items.len() > 1 => {
            defects.push(Defect::new(
                "body.prompt",
                "one prompt per request in a batch (write one line per prompt)",
            ));
            return None;
        }
        _ => {
            defects.push(Defect::new("body.prompt", "must be a non-empty string"));
            return None;
        }
    };
    let mut req = ChatRequest {
        messages: vec![ChatMessage {
            role: Role::User,
            content: vec![ContentPart::Text(prompt)],
        }],
        ..ChatRequest::default()
    };
    sampling(map, defects, &mut req, &["max_tokens"]);
    req.max_tokens = req.max_tokens.or(Some(DEFAULT_MAX_TOKENS));
    let unsupported = |key: &str, allowed: &dyn Fn(&Value) -> bool| {
        map.get(key).is_some_and(|v| !v.is_null() && !allowed(v))
    };
    if unsupported("echo", &|v| v == &Value::Bool(false)) {
        defects.push(Defect::new("body.echo", "echo is not supported"));
    }
    if unsupported("suffix", &|_| false) {
        defects.push(Defect::new("body.suffix", "suffix is not supported"));
    }
    if unsupported("logprobs", &|_| false) {
        defects.push(Defect::new("body.logprobs", "logprobs are not supported"));
    }
    if unsupported("best_of", &|v| v.as_u64() == Some(1)) {
        defects.push(Defect::new("body.best_of", "only best_of 1 is supported"));
    }
    req.extra = extra_keys(map, &KEYS);
    Some(req)
}

/// The `text_completion` object of a response.
pub(super) fn render(response: &ChatResponse, model: &str, id: &str, created: i64) -> Value {
    let choice = json!({
        "text": response_text(response),
        "index": 0,
        "logprobs": null,
        "finish_reason": finish_reason(response.stop_reason),
    });
    let usage = usage_counts(&response.usage);
    completion_object(
        "text_completion",
        &format!("cmpl-{id}"),
        model,
        created,
        choice,
        usage,
    )
}

#[cfg(test)]
mod tests {
    use super::super::{Endpoint, chat_body, render_text};
    use super::*;
    use crate::neutral::{StopReason, Usage};

    fn body(v: Value) -> Result<ChatRequest, Vec<Defect>> {
        chat_body(Endpoint::Completions, v)
    }

    #[test]
    fn a_prompt_is_one_user_message_with_openais_default_limit() {
        let req = body(json!({"model": "m", "prompt": "Once upon", "temperature": 0, "seed": 7}))
            .unwrap();
        assert_eq!(req.messages.len(), 1);
        assert_eq!(req.messages[0].role, Role::User);
        assert_eq!(
            req.messages[0].content,
            [ContentPart::Text("Once upon".into())]
        );
        assert_eq!(req.max_tokens, Some(DEFAULT_MAX_TOKENS));
        assert_eq!(req.temperature, Some(0.0));
        // What is not read here goes to the backend.
        assert_eq!(req.extra.unwrap()["seed"], 7);
        let req = body(json!({"model": "m", "prompt": ["one"], "max_tokens": 40})).unwrap();
        assert_eq!(req.max_tokens, Some(40));
    }

    #[test]
    fn what_a_completion_cannot_do_names_its_field() {
        let fields = |v: Value| -> Vec<String> {
            body(v).unwrap_err().into_iter().map(|d| d.field).collect()
        };
        assert_eq!(fields(json!({"model": "m"})), ["body.prompt"]);
        assert_eq!(
            fields(json!({"model": "m", "prompt": ["a", "b"]})),
            ["body.prompt"]
        );
        assert_eq!(
            fields(
                json!({"model": "m", "prompt": "x", "echo": true, "suffix": "y",
                "logprobs": 2, "best_of": 3, "stream": true})
            ),
            [
                "body.stream",
                "body.echo",
                "body.suffix",
                "body.logprobs",
                "body.best_of"
            ]
        );
        // Their harmless values are fine.
        body(json!({"model": "m", "prompt": "x", "echo": false, "best_of": 1, "logprobs": null}))
            .unwrap();
    }

    #[test]
    fn the_answer_is_a_text_completion() {
        let response = ChatResponse {
            content: vec![ContentPart::Text("there was".into())],
            stop_reason: StopReason::MaxTokens,
            stop_sequence: None,
            usage: Usage {
                input_tokens: 3,
                output_tokens: 2,
                cache_read_input_tokens: None,
            },
        };
        let v = render_text(Endpoint::Completions, &response, "m", "abc", 1_700_000_000);
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["id"], "cmpl-abc");
        assert_eq!(v["choices"][0]["text"], "there was");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["total_tokens"], 5);
    }
}
