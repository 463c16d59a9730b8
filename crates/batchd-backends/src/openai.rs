//! OpenAI-compatible backend (vLLM, SGLang, llama.cpp, Ollama, OpenAI): neutral requests to
//! `POST {base}/chat/completions` and `POST {base}/embeddings`, answers back to neutral types;
//! and [`server_slots`], what llama.cpp's server says of its parallel slots.
//!
//! Hot path: one pool of keep-alive connections (the lean [`crate::direct`] client for plain
//! `http` without a proxy, reqwest otherwise), URLs parsed once, bodies serialized from structs
//! that borrow the request, answers parsed into small typed structs. No per-call timeout here: the
//! engine wraps every call in its own.

use std::borrow::Cow;
use std::time::Duration;

use batchd_formats::neutral::{
    ChatMessage, ChatRequest, ChatResponse, ContentPart, EmbedRequest, EmbedResponse, StopReason,
    ToolChoice, ToolResultPart, Usage,
};
use hyper::Uri;
use reqwest::Url;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::direct::{Answer, DirectClient};
use crate::http::{body_excerpt, error_chain, retry_after, transport_error};
use crate::{BackendError, BackendInfo, ErrorKind, ModelBackend};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// e.g. "http://127.0.0.1:8000/v1" (with or without trailing slash)
    pub base_url: String,
    /// the model name the server knows
    pub model: String,
    /// sent as `Authorization: Bearer ...` when set
    pub api_key: Option<String>,
    /// connection pool size hint: the max concurrency the engine will use
    pub max_connections: usize,
}

pub struct OpenAiBackend {
    transport: Transport,
    model: String,
}

/// How requests reach the server: [`DirectClient`] for plain `http` that no proxy setting
/// covers, reqwest for the rest (HTTPS, proxies).
enum Transport {
    Direct {
        client: DirectClient,
        chat_path: Uri,
        embeddings_path: Uri,
    },
    Reqwest {
        client: reqwest::Client,
        chat_url: Url,
        embeddings_url: Url,
    },
}

/// Which HTTP client a backend uses; [`OpenAiBackend::with_client`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpClient {
    /// The lean client where it can serve (plain `http`, no proxy), reqwest elsewhere.
    Auto,
    /// reqwest for every request.
    Reqwest,
}

impl OpenAiBackend {
    /// Builds the client once, choosing it as [`HttpClient::Auto`] does.
    pub fn new(config: OpenAiConfig) -> Result<Self, BackendError> {
        Self::with_client(config, HttpClient::Auto)
    }

    /// Builds the client once. Installs ring as the process's rustls provider if none is
    /// (reqwest is built without a default provider and would panic).
    pub fn with_client(config: OpenAiConfig, choice: HttpClient) -> Result<Self, BackendError> {
        let base = config.base_url.trim_end_matches('/');
        let chat_url = parse_url(&format!("{base}/chat/completions"))?;
        let embeddings_url = parse_url(&format!("{base}/embeddings"))?;
        let headers = default_headers(config.api_key.as_deref())?;
        let pool = config.max_connections.max(1);

        let direct = match choice {
            HttpClient::Auto if !proxied(&chat_url) => {
                DirectClient::new(&chat_url, headers.clone(), pool, CONNECT_TIMEOUT)
            }
            _ => None,
        };
        if let Some(client) = direct {
            return Ok(OpenAiBackend {
                transport: Transport::Direct {
                    client,
                    chat_path: origin_form(&chat_url)?,
                    embeddings_path: origin_form(&embeddings_url)?,
                },
                model: config.model,
            });
        }

        let builder = reqwest::Client::builder()
            .default_headers(headers)
            .pool_max_idle_per_host(pool)
            .tcp_nodelay(true)
            // Model servers do not redirect. (reqwest 0.13 keeps its redirect layer even so.)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT);
        // Fails only when another provider is already installed, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = builder.build().map_err(|e| {
            let message = format!("cannot build the HTTP client: {}", error_chain(&e));
            BackendError::new(ErrorKind::Client, message)
        })?;
        Ok(OpenAiBackend {
            transport: Transport::Reqwest {
                client,
                chat_url,
                embeddings_url,
            },
            model: config.model,
        })
    }

    /// Whether requests go through the lean client (`false`: through reqwest).
    pub fn is_direct(&self) -> bool {
        matches!(self.transport, Transport::Direct { .. })
    }

    /// POSTs a JSON body to the chat or the embeddings route and parses a 2xx answer as `T`;
    /// anything else becomes a classified error.
    async fn post<T: DeserializeOwned>(
        &self,
        route: Route,
        body: Vec<u8>,
    ) -> Result<T, BackendError> {
        let answer = match &self.transport {
            Transport::Direct {
                client,
                chat_path,
                embeddings_path,
            } => {
                let path = match route {
                    Route::Chat => chat_path,
                    Route::Embeddings => embeddings_path,
                };
                client.post(path, body).await?
            }
            Transport::Reqwest {
                client,
                chat_url,
                embeddings_url,
            } => {
                let url = match route {
                    Route::Chat => chat_url,
                    Route::Embeddings => embeddings_url,
                };
                reqwest_post(client, url, body).await?
            }
        };
        if !answer.status.is_success() {
            let message = error_message(answer.status, &answer.body);
            return Err(BackendError::from_status(
                answer.status.as_u16(),
                message,
                retry_after(&answer.headers),
            ));
        }
        serde_json::from_slice(&answer.body).map_err(|e| {
            BackendError::new(
                ErrorKind::Protocol,
                format!("cannot parse the backend's answer: {e}"),
            )
        })
    }
}

#[derive(Clone, Copy)]
enum Route {
    Chat,
    Embeddings,
}

async fn reqwest_post(
    client: &reqwest::Client,
    url: &Url,
    body: Vec<u8>,
) -> Result<Answer, BackendError> {
    let response = client
        .post(url.clone())
        .body(body)
        .send()
        .await
        .map_err(transport_error)?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = if status.is_success() {
        response.bytes().await.map_err(transport_error)?
    } else {
        // A body that breaks off does not change the verdict the status already gave.
        response.bytes().await.unwrap_or_default()
    };
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// Whether a proxy setting in the environment (`HTTP_PROXY`, `ALL_PROXY`, less `NO_PROXY`)
/// covers `url`, as reqwest would honour it.
fn proxied(url: &Url) -> bool {
    let Ok(uri) = url.as_str().parse::<Uri>() else {
        return true;
    };
    hyper_util::client::proxy::matcher::Matcher::from_system()
        .intercept(&uri)
        .is_some()
}

/// `/v1/chat/completions` (with the query, if any) of a parsed URL.
fn origin_form(url: &Url) -> Result<Uri, BackendError> {
    let path = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    };
    path.parse().map_err(|e| {
        BackendError::new(ErrorKind::Client, format!("invalid backend URL {url}: {e}"))
    })
}

#[async_trait::async_trait]
impl ModelBackend for OpenAiBackend {
    /// The server decides what the model can do; both calls are sent.
    fn info(&self) -> BackendInfo {
        BackendInfo::NEUTRAL
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, BackendError> {
        let body = to_json(&chat_body(&self.model, request)?)?;
        let completion: ChatCompletionWire = self.post(Route::Chat, body).await?;
        chat_response(completion)
    }

    async fn embed(&self, request: &EmbedRequest) -> Result<EmbedResponse, BackendError> {
        if request.inputs.is_empty() {
            return Ok(EmbedResponse::default());
        }
        let body = EmbedBody {
            model: &self.model,
            input: &request.inputs,
            dimensions: request.dimensions,
        };
        let answer: EmbeddingsWire = self.post(Route::Embeddings, to_json(&body)?).await?;
        embed_response(answer, request.inputs.len())
    }
}

fn default_headers(api_key: Option<&str>) -> Result<HeaderMap, BackendError> {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(key) = api_key {
        let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
            BackendError::new(
                ErrorKind::Client,
                "the API key is not a valid HTTP header value",
            )
        })?;
        value.set_sensitive(true);
        headers.insert(AUTHORIZATION, value);
    }
    Ok(headers)
}

/// A `/props` answer larger than this is not llama-server's: not read.
const MAX_PROPS_BYTES: usize = 1 << 20;
/// A slot count above this is not believed either.
pub const MAX_SERVER_SLOTS: usize = 4096;

/// How many sequences the server at `base_url` decodes at once, if it says: llama.cpp's
/// `llama-server` answers `GET /props` (at the server root, beside `/v1`) with `total_slots`.
/// `None` for servers without that route (vLLM, Ollama, hosted APIs) and on any failure
/// within `timeout`: the caller keeps its own default.
pub async fn server_slots(
    base_url: &str,
    api_key: Option<&str>,
    timeout: Duration,
) -> Option<usize> {
    #[derive(Deserialize)]
    struct Props {
        total_slots: Option<u64>,
    }
    let base = base_url.trim_end_matches('/');
    let root = base.strip_suffix("/v1").unwrap_or(base);
    let url = parse_url(&format!("{root}/props")).ok()?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .default_headers(default_headers(api_key).ok()?)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .build()
        .ok()?;
    let mut response = client.get(url).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.ok()? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_PROPS_BYTES {
            return None;
        }
    }
    let props: Props = serde_json::from_slice(&body).ok()?;
    let slots = usize::try_from(props.total_slots?).ok()?;
    (1..=MAX_SERVER_SLOTS).contains(&slots).then_some(slots)
}

fn parse_url(url: &str) -> Result<Url, BackendError> {
    Url::parse(url).map_err(|e| {
        BackendError::new(
            ErrorKind::Client,
            format!("invalid backend URL {url:?}: {e}"),
        )
    })
}

fn to_json<T: Serialize>(body: &T) -> Result<Vec<u8>, BackendError> {
    serde_json::to_vec(body).map_err(|e| {
        BackendError::new(
            ErrorKind::Client,
            format!("cannot serialize the request: {e}"),
        )
    })
}

// ---- request -------------------------------------------------------------------------------

#[derive(Serialize)]
struct ChatBody<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<u32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<WireToolChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<WireResponseFormat<'a>>,
    #[serde(flatten)]
    extra: Option<Extra<'a>>,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    /// Null only for an assistant turn that is all tool calls.
    content: Option<WireContent<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<WireToolCall<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum WireContent<'a> {
    Text(Cow<'a, str>),
    Parts(Vec<WirePart<'a>>),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WirePart<'a> {
    Text { text: Cow<'a, str> },
    ImageUrl { image_url: WireImageUrl },
}

#[derive(Serialize)]
struct WireImageUrl {
    url: String,
}

#[derive(Serialize)]
struct WireToolCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireFunctionCall<'a>,
}

#[derive(Serialize)]
struct WireFunctionCall<'a> {
    name: &'a str,
    /// OpenAI carries tool arguments as a JSON string.
    arguments: String,
}

#[derive(Serialize)]
struct WireTool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireFunction<'a>,
}

#[derive(Serialize)]
struct WireFunction<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    parameters: &'a Value,
}

#[derive(Serialize)]
#[serde(untagged)]
enum WireToolChoice<'a> {
    Mode(&'static str),
    Named {
        #[serde(rename = "type")]
        kind: &'static str,
        function: WireFunctionName<'a>,
    },
}

#[derive(Serialize)]
struct WireFunctionName<'a> {
    name: &'a str,
}

#[derive(Serialize)]
struct WireResponseFormat<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    json_schema: WireJsonSchema<'a>,
}

#[derive(Serialize)]
struct WireJsonSchema<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    schema: &'a Value,
}

/// Model-specific fields merged into the body, minus the keys the body already sets.
struct Extra<'a> {
    fields: &'a Map<String, Value>,
    taken: Vec<&'static str>,
}

impl Serialize for Extra<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        for (key, value) in self.fields {
            if !self.taken.contains(&key.as_str()) {
                map.serialize_entry(key, value)?;
            }
        }
        map.end()
    }
}

fn chat_body<'a>(model: &'a str, request: &'a ChatRequest) -> Result<ChatBody<'a>, BackendError> {
    let mut messages = Vec::with_capacity(request.messages.len() + 1);
    if !request.system.is_empty() {
        let text = match request.system.as_slice() {
            [only] => Cow::Borrowed(only.as_str()),
            pieces => Cow::Owned(pieces.join("\n\n")),
        };
        messages.push(WireMessage {
            role: "system",
            content: Some(WireContent::Text(text)),
            tool_calls: Vec::new(),
            tool_call_id: None,
        });
    }
    for message in &request.messages {
        push_message(&mut messages, message)?;
    }

    let tools: Vec<WireTool<'a>> = request
        .tools
        .iter()
        .map(|tool| WireTool {
            kind: "function",
            function: WireFunction {
                name: &tool.name,
                description: tool.description.as_deref(),
                parameters: &tool.input_schema,
            },
        })
        .collect();
    // OpenAI refuses tool_choice without tools.
    let tool_choice = match &request.tool_choice {
        Some(_) if tools.is_empty() => None,
        None => None,
        Some(ToolChoice::Auto) => Some(WireToolChoice::Mode("auto")),
        Some(ToolChoice::Any) => Some(WireToolChoice::Mode("required")),
        Some(ToolChoice::Tool(name)) => Some(WireToolChoice::Named {
            kind: "function",
            function: WireFunctionName { name },
        }),
    };
    let response_format = request
        .response_format
        .as_ref()
        .map(|format| WireResponseFormat {
            kind: "json_schema",
            json_schema: WireJsonSchema {
                name: format.name.as_deref().unwrap_or("response"),
                description: format.description.as_deref(),
                schema: &format.schema,
            },
        });

    let mut body = ChatBody {
        model,
        messages,
        max_tokens: request.max_tokens,
        temperature: request.temperature,
        top_p: request.top_p,
        top_k: request.top_k,
        stop: &request.stop_sequences,
        tools,
        tool_choice,
        response_format,
        extra: None,
    };
    if let Some(fields) = request.extra.as_ref().filter(|fields| !fields.is_empty()) {
        let taken = taken_keys(&body);
        body.extra = Some(Extra { fields, taken });
    }
    Ok(body)
}

/// The top-level keys `body` sets, which extra fields must not override.
fn taken_keys(body: &ChatBody<'_>) -> Vec<&'static str> {
    let mut taken = vec!["model", "messages"];
    let optional = [
        ("max_tokens", body.max_tokens.is_some()),
        ("temperature", body.temperature.is_some()),
        ("top_p", body.top_p.is_some()),
        ("top_k", body.top_k.is_some()),
        ("stop", !body.stop.is_empty()),
        ("tools", !body.tools.is_empty()),
        ("tool_choice", body.tool_choice.is_some()),
        ("response_format", body.response_format.is_some()),
    ];
    taken.extend(optional.iter().filter(|(_, set)| *set).map(|(key, _)| *key));
    taken
}

/// Appends one neutral message: its tool results as `tool` messages first, then the rest.
fn push_message<'a>(
    out: &mut Vec<WireMessage<'a>>,
    message: &'a ChatMessage,
) -> Result<(), BackendError> {
    let mut parts: Vec<WirePart<'a>> = Vec::new();
    let mut only_text = true;
    let mut tool_calls = Vec::new();
    let mut tool_results = 0usize;
    for part in &message.content {
        match part {
            ContentPart::Text(text) => parts.push(WirePart::Text {
                text: Cow::Borrowed(text),
            }),
            ContentPart::Image {
                format,
                data_base64,
            } => {
                only_text = false;
                let url = format!("data:image/{format};base64,{data_base64}");
                parts.push(WirePart::ImageUrl {
                    image_url: WireImageUrl { url },
                });
            }
            ContentPart::Document { name, text, .. } => {
                // The name is user text: a quote in it must not end the attribute.
                let name = name.replace('&', "&amp;").replace('"', "&quot;");
                let text = format!("<document name=\"{name}\">\n{text}\n</document>");
                parts.push(WirePart::Text {
                    text: Cow::Owned(text),
                });
            }
            ContentPart::ToolUse { id, name, input } => tool_calls.push(WireToolCall {
                id,
                kind: "function",
                function: WireFunctionCall {
                    name,
                    arguments: input.to_string(),
                },
            }),
            ContentPart::ToolResult {
                tool_use_id,
                content,
                is_error,
            } => {
                tool_results += 1;
                out.push(WireMessage {
                    role: "tool",
                    content: Some(WireContent::Text(tool_result_text(content, *is_error))),
                    tool_calls: Vec::new(),
                    tool_call_id: Some(tool_use_id),
                });
                // A tool message carries text only: its images follow in the user message
                // pushed after the tool messages.
                for part in content {
                    if let ToolResultPart::Image {
                        format,
                        data_base64,
                    } = part
                    {
                        only_text = false;
                        parts.push(WirePart::ImageUrl {
                            image_url: WireImageUrl {
                                url: format!("data:image/{format};base64,{data_base64}"),
                            },
                        });
                    }
                }
            }
            // Chat completions have no field for reasoning sent back in.
            ContentPart::Reasoning { .. } => {}
            ContentPart::Unsupported { kind } => return Err(unsupported(kind)),
        }
    }
    if parts.is_empty() && tool_calls.is_empty() && tool_results > 0 {
        return Ok(());
    }
    let content = if parts.is_empty() {
        if tool_calls.is_empty() {
            Some(WireContent::Text(Cow::Borrowed("")))
        } else {
            None
        }
    } else if only_text {
        Some(WireContent::Text(join_text_parts(parts)))
    } else {
        Some(WireContent::Parts(parts))
    };
    out.push(WireMessage {
        role: message.role.as_str(),
        content,
        tool_calls,
        tool_call_id: None,
    });
    Ok(())
}

/// Several text parts become one string, a part per line.
fn join_text_parts(parts: Vec<WirePart<'_>>) -> Cow<'_, str> {
    let mut texts = parts.into_iter().filter_map(|part| match part {
        WirePart::Text { text } => Some(text),
        WirePart::ImageUrl { .. } => None,
    });
    match texts.next() {
        Some(first) => join_lines(first, texts),
        None => Cow::Borrowed(""),
    }
}

/// A tool message's content is a string: text as is, JSON serialized, a part per line
/// (images travel separately). Chat completions have no error flag for a tool result, so a
/// failed call says so in its text.
fn tool_result_text(parts: &[ToolResultPart], is_error: bool) -> Cow<'_, str> {
    let mut pieces = parts.iter().filter_map(|part| match part {
        ToolResultPart::Text(text) => Some(Cow::Borrowed(text.as_str())),
        ToolResultPart::Json(value) => Some(Cow::Owned(value.to_string())),
        ToolResultPart::Image { .. } => None,
    });
    let first = match (pieces.next(), is_error) {
        (Some(first), false) => first,
        (None, false) => return Cow::Borrowed(""),
        (first, true) => Cow::Owned(format!("Error: {}", first.unwrap_or_default())),
    };
    join_lines(first, pieces)
}

/// `first` and the `rest`, a line each; borrowed when there is only `first`.
fn join_lines<'a>(
    first: Cow<'a, str>,
    mut rest: impl Iterator<Item = Cow<'a, str>>,
) -> Cow<'a, str> {
    let Some(second) = rest.next() else {
        return first;
    };
    let mut joined = first.into_owned();
    for line in std::iter::once(second).chain(rest) {
        joined.push('\n');
        joined.push_str(&line);
    }
    Cow::Owned(joined)
}

fn unsupported(kind: &str) -> BackendError {
    BackendError::new(
        ErrorKind::Unsupported,
        format!("the openai backend cannot send {kind} content"),
    )
}

#[derive(Serialize)]
struct EmbedBody<'a> {
    model: &'a str,
    input: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    dimensions: Option<u32>,
}

// ---- response ------------------------------------------------------------------------------

#[derive(Deserialize)]
struct ChatCompletionWire {
    #[serde(default)]
    choices: Option<Vec<ChoiceWire>>,
    #[serde(default)]
    usage: Option<UsageWire>,
}

#[derive(Deserialize)]
struct ChoiceWire {
    message: ResponseMessageWire,
    #[serde(default)]
    finish_reason: Option<FinishReason>,
    /// vLLM: the stop string that matched (a string), or a stop token id, or null.
    #[serde(default)]
    stop_reason: Option<Value>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "snake_case")]
enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    FunctionCall,
    ContentFilter,
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct ResponseMessageWire {
    #[serde(default)]
    content: Option<String>,
    /// Reasoning text: `reasoning_content` (vLLM, SGLang, DeepSeek) or `reasoning` (Ollama,
    /// newer vLLM; some servers send both with the same text). Not an alias: serde refuses a
    /// body holding both spellings of one field.
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    reasoning: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallWire>>,
}

#[derive(Deserialize)]
struct ToolCallWire {
    #[serde(default)]
    id: Option<String>,
    function: FunctionCallWire,
}

#[derive(Deserialize)]
struct FunctionCallWire {
    name: String,
    /// A JSON string by the spec; some servers send the object itself.
    #[serde(default)]
    arguments: Option<Value>,
}

#[derive(Deserialize, Default)]
struct UsageWire {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<PromptTokensDetailsWire>,
}

#[derive(Deserialize)]
struct PromptTokensDetailsWire {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

fn chat_response(completion: ChatCompletionWire) -> Result<ChatResponse, BackendError> {
    let Some(choice) = completion
        .choices
        .and_then(|choices| choices.into_iter().next())
    else {
        return Err(BackendError::new(
            ErrorKind::Protocol,
            "the backend answered with no choices",
        ));
    };
    let mut content = Vec::new();
    if let Some(text) = choice
        .message
        .reasoning_content
        .or(choice.message.reasoning)
        .filter(|text| !text.is_empty())
    {
        content.push(ContentPart::Reasoning { text });
    }
    if let Some(text) = choice.message.content.filter(|text| !text.is_empty()) {
        content.push(ContentPart::Text(text));
    }
    let tool_calls = choice.message.tool_calls.unwrap_or_default();
    let has_tool_calls = !tool_calls.is_empty();
    for (i, call) in tool_calls.into_iter().enumerate() {
        content.push(ContentPart::ToolUse {
            id: call
                .id
                .filter(|id| !id.is_empty())
                .unwrap_or_else(|| format!("call_{i}")),
            name: call.function.name,
            input: tool_arguments(call.function.arguments),
        });
    }

    let mut stop_sequence = None;
    let stop_reason = match choice.finish_reason {
        Some(FinishReason::Length) => StopReason::MaxTokens,
        Some(FinishReason::ToolCalls | FinishReason::FunctionCall) => StopReason::ToolUse,
        Some(FinishReason::ContentFilter) => StopReason::ContentFiltered,
        // OpenAI says "stop" when a named tool_choice forced the call.
        _ if has_tool_calls => StopReason::ToolUse,
        Some(FinishReason::Stop) => match choice.stop_reason {
            Some(Value::String(matched)) => {
                stop_sequence = Some(matched);
                StopReason::StopSequence
            }
            _ => StopReason::EndTurn,
        },
        Some(FinishReason::Other) | None => StopReason::EndTurn,
    };

    let usage = completion.usage.unwrap_or_default();
    Ok(ChatResponse {
        content,
        stop_reason,
        stop_sequence,
        usage: Usage {
            input_tokens: usage.prompt_tokens.unwrap_or(0),
            output_tokens: usage.completion_tokens.unwrap_or(0),
            cache_read_input_tokens: usage.prompt_tokens_details.and_then(|d| d.cached_tokens),
        },
    })
}

/// Tool arguments as JSON: a string is parsed, and kept as a string when it is not JSON.
fn tool_arguments(arguments: Option<Value>) -> Value {
    match arguments {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(Value::String(text)) if text.trim().is_empty() => Value::Object(Map::new()),
        Some(Value::String(text)) => serde_json::from_str(&text).unwrap_or(Value::String(text)),
        Some(value) => value,
    }
}

#[derive(Deserialize)]
struct EmbeddingsWire {
    data: Vec<EmbeddingWire>,
    #[serde(default)]
    usage: Option<EmbedUsageWire>,
}

#[derive(Deserialize)]
struct EmbeddingWire {
    #[serde(default)]
    index: Option<usize>,
    embedding: Vec<f32>,
}

#[derive(Deserialize)]
struct EmbedUsageWire {
    #[serde(default)]
    prompt_tokens: Option<u64>,
}

fn embed_response(answer: EmbeddingsWire, n_inputs: usize) -> Result<EmbedResponse, BackendError> {
    let protocol = |message: String| BackendError::new(ErrorKind::Protocol, message);
    if answer.data.len() != n_inputs {
        return Err(protocol(format!(
            "the backend answered {} embeddings for {n_inputs} inputs",
            answer.data.len()
        )));
    }
    // Place each vector by its index (servers may answer out of order).
    let mut slots: Vec<Option<Vec<f32>>> = vec![None; n_inputs];
    for (position, item) in answer.data.into_iter().enumerate() {
        let index = item.index.unwrap_or(position);
        match slots.get_mut(index) {
            Some(slot @ None) => *slot = Some(item.embedding),
            _ => return Err(protocol(format!("bad or repeated embedding index {index}"))),
        }
    }
    let embeddings = slots.into_iter().flatten().collect();
    Ok(EmbedResponse {
        embeddings,
        input_tokens: answer.usage.and_then(|u| u.prompt_tokens).unwrap_or(0),
    })
}

// ---- errors --------------------------------------------------------------------------------

#[derive(Deserialize)]
struct ErrorEnvelope {
    #[serde(default)]
    error: Option<ErrorField>,
    /// Some servers (older vLLM) put the message at the top level.
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ErrorField {
    Detail { message: String },
    Text(String),
}

/// The server's own message when the body is OpenAI-style JSON, else the start of the body.
fn error_message(status: reqwest::StatusCode, body: &[u8]) -> String {
    if let Ok(envelope) = serde_json::from_slice::<ErrorEnvelope>(body) {
        let message = match envelope.error {
            Some(ErrorField::Detail { message } | ErrorField::Text(message)) => Some(message),
            None => envelope.message,
        };
        if let Some(message) = message.filter(|m| !m.trim().is_empty()) {
            return message;
        }
    }
    body_excerpt(status, body)
}

#[cfg(test)]
#[path = "openai_tests.rs"]
mod tests;
