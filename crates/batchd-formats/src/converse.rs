//! The Converse body of a batch record: validate a request (reporting every defect with its
//! path) and translate it to a [`ChatRequest`]; render a [`ChatResponse`] as a Converse
//! response body (spec A7).

pub(crate) mod check;
pub(crate) mod request;

use serde_json::{Map, Value, json};

use crate::Defect;
use crate::neutral::{ChatRequest, ChatResponse, ContentPart};

/// How many defects one record may report; the last slot says that more were cut.
pub const MAX_DEFECTS: usize = 50;

#[derive(Debug, Clone)]
pub struct ConverseOptions {
    /// Whether records with `toolConfig` are accepted (a per-model switch; default true).
    pub allow_tool_config: bool,
}

impl Default for ConverseOptions {
    fn default() -> Self {
        Self {
            allow_tool_config: true,
        }
    }
}

/// Validates a Converse request body (the record's modelInput, raw JSON text) and translates
/// it to the neutral [`ChatRequest`]. Returns every defect found (up to [`MAX_DEFECTS`]), each
/// with a field path prefixed by `modelInput.`, e.g. `modelInput.messages[0].content[1]`.
///
/// A member whose value is `null` counts as absent, as in AWS's JSON protocols.
pub fn parse_converse(
    model_input: &str,
    opts: &ConverseOptions,
) -> Result<ChatRequest, Vec<Defect>> {
    let value = check::parse_model_input(model_input)?;
    let mut checker = check::Checker::new(MAX_DEFECTS);
    let req = request::request(&mut checker, &value, opts);
    checker.finish(Some(req))
}

/// Renders the Converse response body (the record's modelOutput). Response content is
/// text, tool calls, reasoning and images; other parts cannot come from a model and are
/// left out.
pub fn render_converse_response(response: &ChatResponse, latency_ms: u64) -> Value {
    let mut body = render_message_response(response, "cacheReadInputTokens");
    body.insert("metrics".into(), json!({"latencyMs": latency_ms}));
    Value::Object(body)
}

/// `{output: {message}, stopReason, usage}`: the Converse response, and Nova's native one,
/// which names its cached-token count `cache_key`.
pub(crate) fn render_message_response(
    response: &ChatResponse,
    cache_key: &str,
) -> Map<String, Value> {
    let content: Vec<Value> = response.content.iter().filter_map(render_part).collect();
    let usage = &response.usage;
    let mut usage_json = Map::new();
    usage_json.insert("inputTokens".into(), usage.input_tokens.into());
    usage_json.insert("outputTokens".into(), usage.output_tokens.into());
    usage_json.insert(
        "totalTokens".into(),
        usage
            .input_tokens
            .saturating_add(usage.output_tokens)
            .into(),
    );
    if let Some(cached) = usage.cache_read_input_tokens {
        usage_json.insert(cache_key.into(), cached.into());
    }
    let mut body = Map::new();
    body.insert(
        "output".into(),
        json!({"message": {"role": "assistant", "content": content}}),
    );
    body.insert("stopReason".into(), response.stop_reason.as_str().into());
    body.insert("usage".into(), Value::Object(usage_json));
    body
}

pub(crate) fn render_part(part: &ContentPart) -> Option<Value> {
    Some(match part {
        ContentPart::Text(text) => json!({"text": text}),
        ContentPart::ToolUse { id, name, input } => {
            json!({"toolUse": {"toolUseId": id, "name": name, "input": input}})
        }
        ContentPart::Reasoning { text } => {
            json!({"reasoningContent": {"reasoningText": {"text": text}}})
        }
        ContentPart::Image {
            format,
            data_base64,
        } => {
            json!({"image": {"format": format, "source": {"bytes": data_base64}}})
        }
        ContentPart::Document { .. }
        | ContentPart::ToolResult { .. }
        | ContentPart::Unsupported { .. } => {
            return None;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::neutral::{StopReason, Usage};

    fn response(content: Vec<ContentPart>, cache: Option<u64>) -> ChatResponse {
        ChatResponse {
            content,
            stop_reason: StopReason::ToolUse,
            stop_sequence: None,
            usage: Usage {
                input_tokens: 12,
                output_tokens: 30,
                cache_read_input_tokens: cache,
            },
        }
    }

    #[test]
    fn response_shape() {
        let out = render_converse_response(
            &response(
                vec![
                    ContentPart::Reasoning {
                        text: "think".into(),
                    },
                    ContentPart::Text("Let me check.".into()),
                    ContentPart::ToolUse {
                        id: "tu_1".into(),
                        name: "get_weather".into(),
                        input: json!({"city": "Tokyo"}),
                    },
                    ContentPart::Unsupported {
                        kind: "video".into(),
                    },
                ],
                None,
            ),
            250,
        );
        let expected = json!({
            "output": {"message": {"role": "assistant", "content": [
                {"reasoningContent": {"reasoningText": {"text": "think"}}},
                {"text": "Let me check."},
                {"toolUse": {"toolUseId": "tu_1", "name": "get_weather", "input": {"city": "Tokyo"}}},
            ]}},
            "stopReason": "tool_use",
            "usage": {"inputTokens": 12, "outputTokens": 30, "totalTokens": 42},
            "metrics": {"latencyMs": 250},
        });
        assert_eq!(out, expected);
    }

    #[test]
    fn response_cache_tokens_only_when_known() {
        let out =
            render_converse_response(&response(vec![ContentPart::Text("hi".into())], Some(7)), 1);
        assert_eq!(out["usage"]["cacheReadInputTokens"], json!(7));
        assert_eq!(out["stopReason"], json!("tool_use"));
        let out = render_converse_response(&response(vec![], None), 1);
        assert!(out["usage"].get("cacheReadInputTokens").is_none());
        assert_eq!(out["output"]["message"]["content"], json!([]));
    }

    #[test]
    fn every_stop_reason_renders_its_wire_name() {
        for reason in [
            StopReason::EndTurn,
            StopReason::MaxTokens,
            StopReason::StopSequence,
            StopReason::ContentFiltered,
            StopReason::GuardrailIntervened,
            StopReason::MalformedModelOutput,
            StopReason::MalformedToolUse,
            StopReason::ModelContextWindowExceeded,
        ] {
            let mut r = response(vec![], None);
            r.stop_reason = reason;
            assert_eq!(
                render_converse_response(&r, 0)["stopReason"],
                json!(reason.as_str())
            );
        }
    }
}
