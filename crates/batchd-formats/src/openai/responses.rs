//! `/v1/responses` bodies (the Responses API, text only): `instructions` and `input` (a
//! string, or message items with text content) become a chat request; the answer is a
//! `response` object with one output message.

use serde_json::{Map, Value, json};

use super::{message_text, response_text, sampling};
use crate::Defect;
use crate::neutral::{ChatMessage, ChatRequest, ChatResponse, ContentPart, StopReason};

pub(super) fn parse(map: &Map<String, Value>, defects: &mut Vec<Defect>) -> Option<ChatRequest> {
    let mut req = ChatRequest::default();
    match map.get("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => req.system.push(s.clone()),
        Some(_) => defects.push(Defect::new("body.instructions", "must be a string")),
    }
    match map.get("input") {
        Some(Value::String(s)) if !s.is_empty() => req
            .messages
            .push(ChatMessage::user(vec![ContentPart::Text(s.clone())])),
        Some(Value::Array(items)) if !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                input_item(item, i, &mut req, defects);
            }
        }
        _ => {
            defects.push(Defect::new(
                "body.input",
                "must be a non-empty string or array of messages",
            ));
            return None;
        }
    }
    sampling(map, defects, &mut req, &["max_output_tokens"]);
    let refuse = |key: &str, reason: &str, defects: &mut Vec<Defect>| {
        defects.push(Defect::new(format!("body.{key}"), reason));
    };
    if map
        .get("tools")
        .is_some_and(|t| !t.is_null() && t.as_array().is_none_or(|a| !a.is_empty()))
    {
        refuse(
            "tools",
            "tools are not supported in batches by batchd yet",
            defects,
        );
    }
    if map
        .get("previous_response_id")
        .is_some_and(|v| !v.is_null())
    {
        refuse(
            "previous_response_id",
            "a batch request cannot continue a stored response",
            defects,
        );
    }
    if let Some(format) = map.get("text").and_then(|t| t.get("format"))
        && format.get("type").and_then(Value::as_str) != Some("text")
    {
        refuse(
            "text.format",
            "only {\"type\": \"text\"} is supported",
            defects,
        );
    }
    Some(req)
}

/// One item of `input`: a message (`{role, content}`, `type` "message" or absent) whose
/// content is a string or `input_text` / `output_text` parts.
fn input_item(item: &Value, i: usize, req: &mut ChatRequest, defects: &mut Vec<Defect>) {
    let at = |field: &str| format!("body.input[{i}]{field}");
    if let Some(kind) = item.get("type").and_then(Value::as_str)
        && kind != "message"
    {
        defects.push(Defect::new(
            at(".type"),
            format!("{kind:?} items are not supported (messages only)"),
        ));
        return;
    }
    let text = match item.get("content") {
        Some(Value::Array(parts)) => {
            // Responses' part types, read as chat's text parts.
            let parts: Vec<Value> = parts
                .iter()
                .map(|p| match p.get("type").and_then(Value::as_str) {
                    Some("input_text" | "output_text") => {
                        json!({"type": "text", "text": p.get("text")})
                    }
                    _ => p.clone(),
                })
                .collect();
            message_text(Some(&Value::Array(parts)))
        }
        other => message_text(other),
    };
    let text = match text {
        Ok(text) => text,
        Err(reason) => {
            defects.push(Defect::new(at(".content"), reason));
            return;
        }
    };
    match item.get("role").and_then(Value::as_str) {
        Some("system" | "developer") => req.system.push(text),
        Some("user") => req
            .messages
            .push(ChatMessage::user(vec![ContentPart::Text(text)])),
        Some("assistant") => req
            .messages
            .push(ChatMessage::assistant(vec![ContentPart::Text(text)])),
        Some(other) => defects.push(Defect::new(
            at(".role"),
            format!("{other:?} is not supported (system, developer, user or assistant)"),
        )),
        None => defects.push(Defect::new(at(".role"), "must be a string")),
    }
}

/// The `response` object of a chat response: `incomplete` when it stopped at the token
/// limit, as OpenAI reports it.
pub(super) fn render(response: &ChatResponse, model: &str, id: &str, created: i64) -> Value {
    let u = &response.usage;
    let incomplete = matches!(
        response.stop_reason,
        StopReason::MaxTokens | StopReason::ModelContextWindowExceeded
    );
    let filtered = matches!(
        response.stop_reason,
        StopReason::ContentFiltered | StopReason::GuardrailIntervened
    );
    let (status, details) = match (incomplete, filtered) {
        (true, _) => ("incomplete", json!({"reason": "max_output_tokens"})),
        (_, true) => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    };
    json!({
        "id": format!("resp_{id}"),
        "object": "response",
        "created_at": created,
        "status": status,
        "error": null,
        "incomplete_details": details,
        "model": model,
        "output": [{
            "type": "message",
            "id": format!("msg_{id}"),
            "status": status,
            "role": "assistant",
            "content": [{"type": "output_text", "text": response_text(response), "annotations": []}],
        }],
        "parallel_tool_calls": true,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": u.input_tokens,
            "input_tokens_details": {
                "cached_tokens": u.cache_read_input_tokens.unwrap_or(0),
                "cache_write_tokens": 0,
            },
            "output_tokens": u.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": u.input_tokens + u.output_tokens,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::super::{Endpoint, chat_body, render_text};
    use super::*;
    use crate::neutral::{Role, Usage};

    fn body(v: Value) -> Result<ChatRequest, Vec<Defect>> {
        chat_body(Endpoint::Responses, v)
    }

    fn text(m: &ChatMessage) -> &str {
        match &m.content[..] {
            [ContentPart::Text(t)] => t,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn instructions_and_input_become_a_chat() {
        let req = body(
            json!({"model": "m", "instructions": "Be brief.", "input": "Hi",
            "max_output_tokens": 50, "store": false}),
        )
        .unwrap();
        assert_eq!(req.system, ["Be brief."]);
        assert_eq!(text(&req.messages[0]), "Hi");
        assert_eq!(req.max_tokens, Some(50));
        assert_eq!(req.extra, None);
        let req = body(json!({"model": "m", "input": [
            {"role": "developer", "content": "Rules."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Q1"}]},
            {"role": "assistant", "content": [{"type": "output_text", "text": "A1"}]},
            {"role": "user", "content": "Q2"},
        ]}))
        .unwrap();
        assert_eq!(req.system, ["Rules."]);
        let turns: Vec<(Role, &str)> = req.messages.iter().map(|m| (m.role, text(m))).collect();
        assert_eq!(
            turns,
            [
                (Role::User, "Q1"),
                (Role::Assistant, "A1"),
                (Role::User, "Q2")
            ]
        );
    }

    #[test]
    fn what_a_response_cannot_do_names_its_field() {
        let fields = |v: Value| -> Vec<String> {
            body(v).unwrap_err().into_iter().map(|d| d.field).collect()
        };
        assert_eq!(fields(json!({"model": "m", "input": []})), ["body.input"]);
        assert_eq!(
            fields(json!({"model": "m", "input": [
                {"type": "function_call_output", "output": "x"},
                {"role": "user", "content": [{"type": "input_image", "image_url": "u"}]},
                {"role": "tool", "content": "x"},
            ]})),
            [
                "body.input[0].type",
                "body.input[1].content",
                "body.input[2].role"
            ]
        );
        assert_eq!(
            fields(
                json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}],
                "previous_response_id": "resp_1", "text": {"format": {"type": "json_object"}}})
            ),
            [
                "body.tools",
                "body.previous_response_id",
                "body.text.format"
            ]
        );
        body(
            json!({"model": "m", "input": "x", "tools": [], "text": {"format": {"type": "text"}}}),
        )
        .unwrap();
    }

    #[test]
    fn the_answer_is_a_response_incomplete_at_the_token_limit() {
        let mut response = ChatResponse {
            content: vec![ContentPart::Text("Hello".into())],
            stop_reason: StopReason::EndTurn,
            stop_sequence: None,
            usage: Usage {
                input_tokens: 4,
                output_tokens: 1,
                cache_read_input_tokens: Some(2),
            },
        };
        let v = render_text(Endpoint::Responses, &response, "m", "abc", 1_700_000_000);
        assert_eq!(
            (v["object"].as_str(), v["status"].as_str()),
            (Some("response"), Some("completed"))
        );
        assert_eq!(v["id"], "resp_abc");
        assert_eq!(v["output"][0]["content"][0]["text"], "Hello");
        assert_eq!(v["usage"]["input_tokens_details"]["cached_tokens"], 2);
        assert_eq!(v["incomplete_details"], Value::Null);
        response.stop_reason = StopReason::MaxTokens;
        let v = render_text(Endpoint::Responses, &response, "m", "abc", 1_700_000_000);
        assert_eq!(v["status"], "incomplete");
        assert_eq!(v["incomplete_details"]["reason"], "max_output_tokens");
    }
}
