//! The Converse body of a batch record: validate a request (reporting every defect with its
//! path) and translate it to a [`ChatRequest`]; render a [`ChatResponse`] as a Converse
//! response body (spec A7).

pub(crate) mod check;
mod fast;
pub(crate) mod request;

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::Defect;
use crate::neutral::{ChatRequest, ChatResponse, ContentPart};
use crate::record::InputText;

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
    // Options only restrict members the quick read never accepts (toolConfig).
    if let Some(req) = fast::simple_request(model_input) {
        return Ok(req);
    }
    walk_converse(model_input, opts)
}

/// A record line read in one pass, for the validation pass: `Some(recordId)` (`Some(None)`: the
/// line has no id) when the line is valid and its modelInput is a valid Converse body of the
/// common simple kind (text messages, a text system prompt, the four inference settings):
/// what [`crate::record::parse_record_line`] then [`parse_converse`] would accept (a property
/// test compares them), with each byte read once. `None` leaves the line to those two, which
/// also name its defects.
pub fn simple_record_line(line: &str) -> Option<Option<std::borrow::Cow<'_, str>>> {
    fast::simple_record_line(line)
}

/// A record line of the common kind, read for the run in one pass: see [`simple_record`].
#[derive(Debug)]
pub struct SimpleRecord<'a> {
    /// `None`: the line has no id.
    pub record_id: Option<std::borrow::Cow<'a, str>>,
    pub model_input: InputText<'a>,
    pub request: ChatRequest,
}

/// [`simple_record_line`] for the run: when the line is valid and its modelInput a valid
/// Converse body of the simple kind, its id, its modelInput's text and the request, what
/// [`crate::record::parse_record_line`] then [`parse_converse`] give (a property test compares
/// them), with the line parsed once. `None` leaves the line to those two.
pub fn simple_record(line: &str) -> Option<SimpleRecord<'_>> {
    let (record_id, text, request) = fast::simple_record(line)?;
    Some(SimpleRecord {
        record_id,
        model_input: InputText::parsed(text),
        request,
    })
}

/// [`parse_converse`] by the full walk alone.
fn walk_converse(model_input: &str, opts: &ConverseOptions) -> Result<ChatRequest, Vec<Defect>> {
    let value = check::parse_model_input(model_input)?;
    let mut checker = check::Checker::new(MAX_DEFECTS);
    let req = request::request(&mut checker, &value, opts);
    checker.finish(Some(req))
}

/// Renders the Converse response body (the record's modelOutput) as a `Value`: what
/// [`ConverseResponse`] writes.
pub fn render_converse_response(response: &ChatResponse, latency_ms: u64) -> Value {
    // Cannot fail: every member is a string, a number or a `Value`.
    serde_json::to_value(ConverseResponse::new(response, latency_ms)).unwrap_or(Value::Null)
}

/// The Converse response body (the record's modelOutput), serialised straight from the
/// response, with no `Value` built on the way (the per-record hot path). Response content is
/// text, tool calls, reasoning and images; other parts cannot come from a model and are left
/// out. Members are declared in sorted order: the bytes are those of the same body as a
/// `Value`, whose maps sort their keys.
#[derive(Serialize)]
pub struct ConverseResponse<'a> {
    metrics: Metrics,
    output: Output<'a>,
    #[serde(rename = "stopReason")]
    stop_reason: &'static str,
    usage: UsageBody,
}

impl<'a> ConverseResponse<'a> {
    pub fn new(response: &'a ChatResponse, latency_ms: u64) -> Self {
        let usage = &response.usage;
        Self {
            metrics: Metrics { latency_ms },
            output: Output {
                message: Message {
                    content: Content(&response.content),
                    role: "assistant",
                },
            },
            stop_reason: response.stop_reason.as_str(),
            usage: UsageBody {
                cache_read_input_tokens: usage.cache_read_input_tokens,
                input_tokens: usage.input_tokens,
                output_tokens: usage.output_tokens,
                total_tokens: usage.input_tokens.saturating_add(usage.output_tokens),
            },
        }
    }
}

#[derive(Serialize)]
struct Metrics {
    #[serde(rename = "latencyMs")]
    latency_ms: u64,
}

#[derive(Serialize)]
struct Output<'a> {
    message: Message<'a>,
}

#[derive(Serialize)]
struct Message<'a> {
    content: Content<'a>,
    role: &'static str,
}

#[derive(Serialize)]
struct UsageBody {
    #[serde(
        rename = "cacheReadInputTokens",
        skip_serializing_if = "Option::is_none"
    )]
    cache_read_input_tokens: Option<u64>,
    #[serde(rename = "inputTokens")]
    input_tokens: u64,
    #[serde(rename = "outputTokens")]
    output_tokens: u64,
    #[serde(rename = "totalTokens")]
    total_tokens: u64,
}

/// The parts a response can carry, each as its Converse content block.
struct Content<'a>(&'a [ContentPart]);

impl Serialize for Content<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(None)?;
        for part in self.0 {
            match part {
                ContentPart::Text(text) => seq.serialize_element(&TextBlock { text })?,
                ContentPart::ToolUse { id, name, input } => {
                    seq.serialize_element(&ToolUseBlock {
                        tool_use: ToolUse {
                            input,
                            name,
                            tool_use_id: id,
                        },
                    })?
                }
                ContentPart::Reasoning { text } => seq.serialize_element(&ReasoningBlock {
                    reasoning_content: ReasoningText {
                        reasoning_text: TextBlock { text },
                    },
                })?,
                ContentPart::Image {
                    format,
                    data_base64,
                } => seq.serialize_element(&ImageBlock {
                    image: Image {
                        format,
                        source: ImageSource { bytes: data_base64 },
                    },
                })?,
                ContentPart::Document { .. }
                | ContentPart::ToolResult { .. }
                | ContentPart::Unsupported { .. } => {}
            }
        }
        seq.end()
    }
}

#[derive(Serialize)]
struct TextBlock<'a> {
    text: &'a str,
}

#[derive(Serialize)]
struct ToolUseBlock<'a> {
    #[serde(rename = "toolUse")]
    tool_use: ToolUse<'a>,
}

#[derive(Serialize)]
struct ToolUse<'a> {
    input: &'a Value,
    name: &'a str,
    #[serde(rename = "toolUseId")]
    tool_use_id: &'a str,
}

#[derive(Serialize)]
struct ReasoningBlock<'a> {
    #[serde(rename = "reasoningContent")]
    reasoning_content: ReasoningText<'a>,
}

#[derive(Serialize)]
struct ReasoningText<'a> {
    #[serde(rename = "reasoningText")]
    reasoning_text: TextBlock<'a>,
}

#[derive(Serialize)]
struct ImageBlock<'a> {
    image: Image<'a>,
}

#[derive(Serialize)]
struct Image<'a> {
    format: &'a str,
    source: ImageSource<'a>,
}

#[derive(Serialize)]
struct ImageSource<'a> {
    bytes: &'a str,
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
    fn the_typed_body_writes_the_bytes_of_the_value_body() {
        // The Value is built the old way (render_message_response, sorted maps); the typed
        // body must give the same bytes for every kind of part and usage.
        let parts = vec![
            ContentPart::Reasoning {
                text: "think \"hard\"".into(),
            },
            ContentPart::Text("Let me check.\n".into()),
            ContentPart::ToolUse {
                id: "tu_1".into(),
                name: "get_weather".into(),
                input: json!({"city": "Tokyo", "days": [1, 2], "a": null}),
            },
            ContentPart::Image {
                format: "png".into(),
                data_base64: "aGk=".into(),
            },
            ContentPart::Unsupported {
                kind: "video".into(),
            },
            ContentPart::Text("ünïcödé".into()),
        ];
        for (content, cache) in [(parts, Some(7)), (vec![], None), (vec![], Some(0))] {
            let r = response(content, cache);
            let mut old = render_message_response(&r, "cacheReadInputTokens");
            old.insert("metrics".into(), json!({"latencyMs": 250}));
            let typed = serde_json::to_vec(&ConverseResponse::new(&r, 250)).unwrap();
            assert_eq!(
                String::from_utf8(typed).unwrap(),
                serde_json::to_string(&Value::Object(old)).unwrap()
            );
        }
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
