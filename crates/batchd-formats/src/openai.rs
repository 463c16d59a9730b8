//! The OpenAI Batch API's request lines (`{custom_id, method, url, body}`), the chat
//! completions and embeddings bodies they carry (→ the neutral requests), and the output and
//! error lines (`{id, custom_id, response: {status_code, request_id, body}, error}`). The
//! completions and Responses bodies are in `completions` and `responses`: both run as chat.

mod completions;
mod responses;

use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::Defect;
use crate::neutral::{
    ChatMessage, ChatRequest, ChatResponse, ContentPart, EmbedRequest, Role, StopReason, Usage,
};

/// The endpoints a batch may name that batchd runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Embeddings,
    /// The legacy text completions: the prompt runs as one user message.
    Completions,
    /// The Responses API (text in, text out).
    Responses,
}

impl Endpoint {
    pub const ALL: [Endpoint; 4] = [
        Self::ChatCompletions,
        Self::Embeddings,
        Self::Completions,
        Self::Responses,
    ];

    pub fn path(self) -> &'static str {
        match self {
            Self::ChatCompletions => "/v1/chat/completions",
            Self::Embeddings => "/v1/embeddings",
            Self::Completions => "/v1/completions",
            Self::Responses => "/v1/responses",
        }
    }

    pub fn parse(path: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.path() == path)
    }
}

/// One input line, its body still raw.
#[derive(Debug)]
pub struct BatchLine<'a> {
    pub custom_id: String,
    pub url: String,
    pub body: &'a RawValue,
}

#[derive(serde::Deserialize)]
struct WireLine<'a> {
    custom_id: Option<Value>,
    method: Option<Value>,
    url: Option<Value>,
    #[serde(borrow)]
    body: Option<&'a RawValue>,
}

/// Reads one input line; `endpoint` is the batch's (every line's `url` must equal it).
pub fn parse_line(text: &str, endpoint: Endpoint) -> Result<BatchLine<'_>, Vec<Defect>> {
    crate::record::expect_object_line(text).map_err(|d| vec![d])?;
    let wire: WireLine<'_> = serde_json::from_str(text)
        .map_err(|e| vec![Defect::new("line", crate::record::json_error_reason(&e))])?;
    let mut defects = Vec::new();
    let custom_id = match wire.custom_id {
        Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= 512 => s,
        Some(Value::String(_)) => {
            defects.push(Defect::new("custom_id", "must be 1 to 512 characters"));
            String::new()
        }
        None | Some(Value::Null) => {
            defects.push(Defect::new("custom_id", "is required"));
            String::new()
        }
        Some(_) => {
            defects.push(Defect::new("custom_id", "must be a string"));
            String::new()
        }
    };
    match wire.method {
        Some(Value::String(m)) if m == "POST" => {}
        other => defects.push(Defect::new(
            "method",
            format!("must be \"POST\", got {}", shown(other.as_ref())),
        )),
    }
    let url = match wire.url {
        Some(Value::String(u)) if u == endpoint.path() => u,
        other => {
            defects.push(Defect::new(
                "url",
                format!(
                    "must be the batch's endpoint {:?}, got {}",
                    endpoint.path(),
                    shown(other.as_ref())
                ),
            ));
            String::new()
        }
    };
    let Some(body) = wire.body else {
        defects.push(Defect::new("body", "is required"));
        return Err(defects);
    };
    if !defects.is_empty() {
        return Err(defects);
    }
    Ok(BatchLine {
        custom_id,
        url,
        body,
    })
}

fn shown(value: Option<&Value>) -> String {
    value.map_or_else(|| "nothing".to_owned(), Value::to_string)
}

/// A line's body, for the backend.
#[derive(Debug)]
pub enum BatchBody {
    Chat(Box<ChatRequest>),
    Embed(EmbedRequest),
}

/// The `model` of a body (every line of a batch names the same one).
pub fn body_model(body: &RawValue) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Model {
        model: Option<String>,
    }
    serde_json::from_str::<Model>(body.get()).ok()?.model
}

/// Checks and translates a body of `endpoint`. Defect fields are paths below `body`.
pub fn parse_body(endpoint: Endpoint, body: &RawValue) -> Result<BatchBody, Vec<Defect>> {
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(body.get()) else {
        return Err(vec![Defect::new("body", "must be a JSON object")]);
    };
    let mut defects = Vec::new();
    match map.get("model") {
        Some(Value::String(m)) if !m.is_empty() => {}
        _ => defects.push(Defect::new("body.model", "must be a non-empty string")),
    }
    let parsed = match endpoint {
        Endpoint::ChatCompletions => chat(&map, &mut defects).map(|c| BatchBody::Chat(Box::new(c))),
        Endpoint::Embeddings => embed(&map, &mut defects).map(BatchBody::Embed),
        Endpoint::Completions => {
            completions::parse(&map, &mut defects).map(|c| BatchBody::Chat(Box::new(c)))
        }
        Endpoint::Responses => {
            responses::parse(&map, &mut defects).map(|c| BatchBody::Chat(Box::new(c)))
        }
    };
    match parsed {
        Some(body) if defects.is_empty() => Ok(body),
        _ => Err(defects),
    }
}

/// Chat completions keys batchd reads; any other is passed to the backend as it is.
const CHAT_KEYS: [&str; 10] = [
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "n",
    "stream",
    "tools",
];

fn chat(map: &Map<String, Value>, defects: &mut Vec<Defect>) -> Option<ChatRequest> {
    let mut req = ChatRequest::default();
    let Some(Value::Array(messages)) = map.get("messages") else {
        defects.push(Defect::new("body.messages", "must be a non-empty array"));
        return None;
    };
    if messages.is_empty() {
        defects.push(Defect::new("body.messages", "must be a non-empty array"));
    }
    for (i, message) in messages.iter().enumerate() {
        let at = |field: &str| format!("body.messages[{i}]{field}");
        let role = message.get("role").and_then(Value::as_str);
        let text = match message_text(message.get("content")) {
            Ok(text) => text,
            Err(reason) => {
                defects.push(Defect::new(at(".content"), reason));
                continue;
            }
        };
        match role {
            Some("system" | "developer") => req.system.push(text),
            Some(r @ ("user" | "assistant")) => req.messages.push(ChatMessage {
                role: if r == "user" {
                    Role::User
                } else {
                    Role::Assistant
                },
                content: vec![ContentPart::Text(text)],
            }),
            Some(other) => defects.push(Defect::new(
                at(".role"),
                format!("{other:?} is not supported (system, developer, user or assistant)"),
            )),
            None => defects.push(Defect::new(at(".role"), "must be a string")),
        }
    }
    sampling(
        map,
        defects,
        &mut req,
        &["max_completion_tokens", "max_tokens"],
    );
    if map.get("tools").is_some_and(|t| !t.is_null()) {
        defects.push(Defect::new(
            "body.tools",
            "tools are not supported in batches by batchd yet",
        ));
    }
    req.extra = extra_keys(map, &CHAT_KEYS);
    Some(req)
}

/// Keys of `map` not in `known`, passed to the backend as they are.
fn extra_keys(map: &Map<String, Value>, known: &[&str]) -> Option<Map<String, Value>> {
    let extra: Map<String, Value> = map
        .iter()
        .filter(|(k, _)| !known.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    (!extra.is_empty()).then_some(extra)
}

/// The sampling members the text endpoints share: the first of `max_keys` present is the
/// token limit; `temperature`, `top_p`, `stop`, `n` (1) and `stream` (false).
fn sampling(
    map: &Map<String, Value>,
    defects: &mut Vec<Defect>,
    req: &mut ChatRequest,
    max_keys: &[&str],
) {
    let count = |key: &str, defects: &mut Vec<Defect>| match map.get(key) {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) if n > 0 => Some(n),
            _ => {
                defects.push(Defect::new(
                    format!("body.{key}"),
                    "must be a positive integer",
                ));
                None
            }
        },
    };
    req.max_tokens = max_keys.iter().find_map(|key| count(key, defects));
    let ranged = |key: &str, max: f64, defects: &mut Vec<Defect>| match map.get(key) {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_f64() {
            Some(x) if (0.0..=max).contains(&x) => Some(x),
            _ => {
                defects.push(Defect::new(
                    format!("body.{key}"),
                    format!("must be a number from 0 to {max}"),
                ));
                None
            }
        },
    };
    req.temperature = ranged("temperature", 2.0, defects);
    req.top_p = ranged("top_p", 1.0, defects);
    match map.get("stop") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => req.stop_sequences.push(s.clone()),
        Some(Value::Array(items)) if items.len() <= 4 && items.iter().all(Value::is_string) => {
            req.stop_sequences = items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect();
        }
        Some(_) => defects.push(Defect::new(
            "body.stop",
            "must be a string or up to 4 strings",
        )),
    }
    if map.get("n").is_some_and(|n| n.as_u64() != Some(1)) {
        defects.push(Defect::new(
            "body.n",
            "only 1 choice per request is supported",
        ));
    }
    if map.get("stream").is_some_and(|s| s != &Value::Bool(false)) {
        defects.push(Defect::new(
            "body.stream",
            "streaming is not allowed in a batch",
        ));
    }
}

/// A message's text: a string, or an array of `{"type": "text", "text"}` parts.
fn message_text(content: Option<&Value>) -> Result<String, String> {
    match content {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (i, part) in parts.iter().enumerate() {
                match (part.get("type").and_then(Value::as_str), part.get("text")) {
                    (Some("text"), Some(Value::String(t))) => text.push_str(t),
                    (Some(kind), _) => {
                        return Err(format!(
                            "part [{i}]: {kind:?} parts are not supported (text only)"
                        ));
                    }
                    _ => {
                        return Err(format!(
                            "part [{i}]: must be {{\"type\": \"text\", \"text\": ...}}"
                        ));
                    }
                }
            }
            Ok(text)
        }
        _ => Err("must be a string or an array of text parts".to_owned()),
    }
}

fn embed(map: &Map<String, Value>, defects: &mut Vec<Defect>) -> Option<EmbedRequest> {
    let inputs = match map.get("input") {
        Some(Value::String(s)) if !s.is_empty() => vec![s.clone()],
        Some(Value::Array(items))
            if !items.is_empty()
                && items
                    .iter()
                    .all(|i| i.as_str().is_some_and(|s| !s.is_empty())) =>
        {
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        }
        _ => {
            defects.push(Defect::new(
                "body.input",
                "must be a non-empty string or array of non-empty strings",
            ));
            return None;
        }
    };
    let dimensions = match map.get("dimensions") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) if n > 0 => Some(n),
            _ => {
                defects.push(Defect::new("body.dimensions", "must be a positive integer"));
                None
            }
        },
    };
    if map
        .get("encoding_format")
        .is_some_and(|f| f != "float" && !f.is_null())
    {
        defects.push(Defect::new(
            "body.encoding_format",
            "only \"float\" is supported",
        ));
    }
    Some(EmbedRequest { inputs, dimensions })
}

/// The answer object of `endpoint` (chat completion, text completion or response) for a
/// chat response.
pub fn render_text(
    endpoint: Endpoint,
    response: &ChatResponse,
    model: &str,
    id: &str,
    created: i64,
) -> Value {
    match endpoint {
        Endpoint::Completions => completions::render(response, model, id, created),
        Endpoint::Responses => responses::render(response, model, id, created),
        Endpoint::ChatCompletions | Endpoint::Embeddings => {
            render_chat(response, model, id, created)
        }
    }
}

/// The text of a response's parts.
fn response_text(response: &ChatResponse) -> String {
    response
        .content
        .iter()
        .filter_map(|p| match p {
            ContentPart::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}

/// OpenAI's `finish_reason` for a stop reason.
fn finish_reason(stop: StopReason) -> &'static str {
    match stop {
        StopReason::MaxTokens | StopReason::ModelContextWindowExceeded => "length",
        StopReason::ToolUse => "tool_calls",
        StopReason::ContentFiltered | StopReason::GuardrailIntervened => "content_filter",
        _ => "stop",
    }
}

/// The chat completion object of a response.
pub fn render_chat(response: &ChatResponse, model: &str, id: &str, created: i64) -> Value {
    let u = &response.usage;
    let choice = json!({
        "index": 0,
        "message": {"role": "assistant", "content": response_text(response), "refusal": null},
        "logprobs": null,
        "finish_reason": finish_reason(response.stop_reason),
    });
    let mut usage = usage_counts(u);
    usage["prompt_tokens_details"] =
        json!({"cached_tokens": u.cache_read_input_tokens.unwrap_or(0)});
    usage["completion_tokens_details"] = json!({"reasoning_tokens": 0});
    completion_object(
        "chat.completion",
        &format!("chatcmpl-{id}"),
        model,
        created,
        choice,
        usage,
    )
}

/// What a chat completion and a `text_completion` share: the object around one choice.
fn completion_object(
    object: &str,
    id: &str,
    model: &str,
    created: i64,
    choice: Value,
    usage: Value,
) -> Value {
    json!({
        "id": id,
        "object": object,
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": usage,
    })
}

/// The token counts of a completion's `usage`, in OpenAI's names.
fn usage_counts(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.input_tokens + u.output_tokens,
    })
}

/// The embeddings list object of a response (`vectors` in input order).
pub fn render_embeddings(vectors: &[Vec<f32>], model: &str, tokens: u64) -> Value {
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| json!({"object": "embedding", "index": i, "embedding": v}))
        .collect();
    json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })
}

/// How a request of a batch ended, for its output or error line.
pub enum LineOutcome<'a> {
    /// The endpoint answered (2xx goes to the output file).
    Answered { body: &'a Value },
    /// The model server refused or failed: the error file, `response.body.error`.
    Failed {
        status_code: u16,
        kind: &'a str,
        code: Option<&'a str>,
        message: &'a str,
    },
    /// Never run: `response: null`, `error.code` (`batch_cancelled`, `batch_expired`, ...).
    NotRun { code: &'a str, message: &'a str },
}

/// Appends one output or error line (with its newline).
pub fn write_line(buf: &mut Vec<u8>, id: &str, custom_id: &str, outcome: &LineOutcome<'_>) {
    let line = match outcome {
        LineOutcome::Answered { body } => json!({
            "id": format!("batch_req_{id}"), "custom_id": custom_id,
            "response": {"status_code": 200, "request_id": format!("req_{id}"), "body": body},
            "error": null,
        }),
        LineOutcome::Failed {
            status_code,
            kind,
            code,
            message,
        } => json!({
            "id": format!("batch_req_{id}"), "custom_id": custom_id,
            "response": {"status_code": status_code, "request_id": format!("req_{id}"),
                "body": {"error": {"message": message, "type": kind, "param": null, "code": code}}},
            "error": null,
        }),
        LineOutcome::NotRun { code, message } => json!({
            "id": format!("batch_req_{id}"), "custom_id": custom_id,
            "response": null,
            "error": {"code": code, "message": message},
        }),
    };
    // Writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, &line);
    buf.push(b'\n');
}

/// Whether an output line of a batch belongs in the output file (a 2xx response) rather than
/// the error file.
pub fn is_success_line(line: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Line {
        response: Option<Response>,
    }
    #[derive(serde::Deserialize)]
    struct Response {
        status_code: u16,
    }
    serde_json::from_str::<Line>(line)
        .ok()
        .and_then(|l| l.response)
        .is_some_and(|r| (200..300).contains(&r.status_code))
}

/// A chat body of `endpoint` parsed as a batch line's body would be (the dialects' tests).
#[cfg(test)]
#[allow(clippy::unwrap_used)]
fn chat_body(endpoint: Endpoint, v: Value) -> Result<ChatRequest, Vec<Defect>> {
    let raw = RawValue::from_string(v.to_string()).unwrap();
    match parse_body(endpoint, &raw)? {
        BatchBody::Chat(c) => Ok(*c),
        BatchBody::Embed(_) => panic!("{endpoint:?} parsed as an embedding"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn raw(v: Value) -> Box<RawValue> {
        RawValue::from_string(v.to_string()).unwrap()
    }

    #[test]
    fn a_chat_line_becomes_a_chat_request() {
        let line = r#"{"custom_id":"request-1","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"Hi"}]}],"max_tokens":64,"temperature":0.2,"stop":"END","seed":7}}"#;
        let parsed = parse_line(line, Endpoint::ChatCompletions).unwrap();
        assert_eq!(parsed.custom_id, "request-1");
        assert_eq!(body_model(parsed.body).as_deref(), Some("m"));
        let BatchBody::Chat(req) = parse_body(Endpoint::ChatCompletions, parsed.body).unwrap()
        else {
            panic!("a chat body");
        };
        assert_eq!(req.system, ["Be brief."]);
        assert_eq!(req.messages[0].content, [ContentPart::Text("Hi".into())]);
        assert_eq!((req.max_tokens, req.temperature), (Some(64), Some(0.2)));
        assert_eq!(req.stop_sequences, ["END"]);
        assert_eq!(req.extra.unwrap().get("seed"), Some(&json!(7)));
    }

    #[test]
    fn bad_lines_and_bodies_name_the_field() {
        let wrong_url = r#"{"custom_id":"a","method":"GET","url":"/v1/embeddings","body":{}}"#;
        let defects: Vec<String> = parse_line(wrong_url, Endpoint::ChatCompletions)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(defects.len(), 2, "{defects:?}");
        assert!(
            defects[0].starts_with("method: must be \"POST\""),
            "{defects:?}"
        );
        assert!(
            defects[1].starts_with("url: must be the batch's endpoint"),
            "{defects:?}"
        );
        let cases = [
            (json!({"messages": []}), "body.model"),
            (
                json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}),
                "body.messages[0].role",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": 3}]}),
                "body.messages[0].content",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": true}),
                "body.stream",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 3}),
                "body.temperature",
            ),
        ];
        for (body, field) in cases {
            let defects = parse_body(Endpoint::ChatCompletions, &raw(body.clone())).unwrap_err();
            assert!(
                defects.iter().any(|d| d.field == field),
                "{body}: {defects:?}"
            );
        }
        let no_input = parse_body(Endpoint::Embeddings, &raw(json!({"model": "e"}))).unwrap_err();
        assert_eq!(no_input[0].field, "body.input");
    }

    #[test]
    fn embeddings_bodies_take_one_or_many_inputs() {
        let BatchBody::Embed(req) = parse_body(
            Endpoint::Embeddings,
            &raw(json!({"model": "e", "input": ["a", "b"], "dimensions": 8})),
        )
        .unwrap() else {
            panic!("an embedding body");
        };
        assert_eq!((req.inputs.len(), req.dimensions), (2, Some(8)));
    }

    #[test]
    fn output_and_error_lines_have_openais_shape() {
        let body = json!({"object": "chat.completion"});
        let mut buf = Vec::new();
        write_line(&mut buf, "x1", "c1", &LineOutcome::Answered { body: &body });
        let ok = String::from_utf8(buf.clone()).unwrap();
        assert!(is_success_line(&ok));
        let v: Value = serde_json::from_str(&ok).unwrap();
        assert_eq!(v["response"]["status_code"], 200);
        assert_eq!(v["error"], Value::Null);
        buf.clear();
        let failed = LineOutcome::Failed {
            status_code: 429,
            kind: "rate_limit_error",
            code: None,
            message: "slow",
        };
        write_line(&mut buf, "x2", "c2", &failed);
        let line = String::from_utf8(buf.clone()).unwrap();
        assert!(!is_success_line(&line));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["response"]["body"]["error"]["type"], "rate_limit_error");
        buf.clear();
        write_line(
            &mut buf,
            "x3",
            "c3",
            &LineOutcome::NotRun {
                code: "batch_cancelled",
                message: "m",
            },
        );
        let v: Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(
            (&v["response"], &v["error"]["code"]),
            (&Value::Null, &json!("batch_cancelled"))
        );
    }
}
