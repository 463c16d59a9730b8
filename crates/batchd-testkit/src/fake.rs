//! The fake's routes and wire types. Requests are parsed into small borrowed structs and answers
//! written with `serde_json::to_vec`, so the fake stays far from being the bottleneck.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::serving::{Live, Stopped, admin_routes};
use crate::{FakeConfig, Shared};

const EMBEDDING_DIMENSIONS: usize = 384;
const MAX_EMBEDDING_DIMENSIONS: usize = 65_536;
const MODEL_ID: &str = "fake-model";

pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    shutdown: Stopped,
) -> std::io::Result<()> {
    let listener = listener.tap_io(|stream| {
        // Small request/response pairs: do not let Nagle delay them.
        let _ = stream.set_nodelay(true);
    });
    axum::serve(listener, router(shared))
        .with_graceful_shutdown(shutdown)
        .await
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/props", get(props))
        .merge(admin_routes())
        // Records may carry images; the default 2 MB would refuse them.
        .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
        .with_state(shared)
}

// ---- chat ----------------------------------------------------------------------------------

#[derive(Deserialize)]
struct ChatIn<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow)]
    messages: Vec<MessageIn<'a>>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(borrow, default)]
    stop: Option<Stop<'a>>,
    #[serde(borrow, default)]
    tools: Vec<ToolIn<'a>>,
    #[serde(default)]
    tool_choice: Option<ToolChoiceIn>,
}

#[derive(Deserialize)]
struct MessageIn<'a> {
    #[serde(borrow)]
    role: Cow<'a, str>,
    #[serde(borrow, default)]
    content: Texts<'a>,
}

/// The texts of a message's `content`: a string, an array of parts (text parts kept, others
/// skipped) or null.
#[derive(Default)]
struct Texts<'a>(Vec<Cow<'a, str>>);

/// `stop`: one string or several.
struct Stop<'a>(Vec<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for Texts<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let visitor = StringsVisitor::<PartIn>::new("a string, an array of content parts or null");
        deserializer.deserialize_any(visitor).map(Texts)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Stop<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let visitor = StringsVisitor::<CowStr>::new("a string or an array of strings");
        deserializer.deserialize_any(visitor).map(Stop)
    }
}

/// An item of a list of strings: what it contributes to the list.
trait StringItem<'de>: Deserialize<'de> {
    fn text(self) -> Option<Cow<'de, str>>;
}

#[derive(Deserialize)]
struct PartIn<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

impl<'de> StringItem<'de> for PartIn<'de> {
    fn text(self) -> Option<Cow<'de, str>> {
        self.text
    }
}

#[derive(Deserialize)]
struct CowStr<'a>(#[serde(borrow)] Cow<'a, str>);

impl<'de> StringItem<'de> for CowStr<'de> {
    fn text(self) -> Option<Cow<'de, str>> {
        Some(self.0)
    }
}

/// One string (borrowed when it can be) or a sequence of `I`; null is no strings (a null
/// `stop` never gets here: it is an `Option`).
struct StringsVisitor<I> {
    expecting: &'static str,
    item: PhantomData<fn() -> I>,
}

impl<I> StringsVisitor<I> {
    fn new(expecting: &'static str) -> Self {
        StringsVisitor {
            expecting,
            item: PhantomData,
        }
    }
}

impl<'de, I: StringItem<'de>> Visitor<'de> for StringsVisitor<I> {
    type Value = Vec<Cow<'de, str>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.expecting)
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(vec![Cow::Borrowed(v)])
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(vec![Cow::Owned(v.to_owned())])
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(vec![Cow::Owned(v)])
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut texts = Vec::new();
        while let Some(item) = seq.next_element::<I>()? {
            texts.extend(item.text());
        }
        Ok(texts)
    }
}

#[derive(Deserialize)]
struct ToolIn<'a> {
    #[serde(borrow)]
    function: FunctionIn<'a>,
}

#[derive(Deserialize)]
struct FunctionIn<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ToolChoiceIn {
    Mode(String),
    Named { function: NamedFunction },
}

#[derive(Deserialize)]
struct NamedFunction {
    name: String,
}

#[derive(Serialize)]
struct ChatOut<'a> {
    id: String,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [ChoiceOut<'a>; 1],
    usage: UsageOut,
}

#[derive(Serialize)]
struct ChoiceOut<'a> {
    index: u32,
    message: MessageOut<'a>,
    logprobs: Option<()>,
    finish_reason: &'static str,
    /// vLLM's field: the stop string that matched, else null.
    stop_reason: Option<&'a str>,
}

#[derive(Serialize)]
struct MessageOut<'a> {
    role: &'static str,
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCallOut<'a>>,
}

#[derive(Serialize)]
struct ToolCallOut<'a> {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionCallOut<'a>,
}

#[derive(Serialize)]
struct FunctionCallOut<'a> {
    name: &'a str,
    arguments: &'static str,
}

#[derive(Serialize)]
struct UsageOut {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

async fn chat(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let _in_flight = shared.counters.enter();
    let n = shared.counters.chat.fetch_add(1, Ordering::Relaxed);
    let live = shared.live();
    let request: ChatIn<'_> = match parse(&shared, &live.config, &body, "chat") {
        Ok(request) => request,
        Err(answer) => return *answer,
    };
    if let Some(prompts) = shared.lock_prompts().as_mut() {
        let texts: Vec<String> = request
            .messages
            .iter()
            .map(|m| m.content.0.join(" "))
            .collect();
        prompts.push(texts.join("\n"));
    }
    let has_marker = |marker: &str| {
        request
            .messages
            .iter()
            .any(|m| m.content.0.iter().any(|t| t.contains(marker)))
    };
    if let Some(status) = pick_failure(&shared, &live, has_marker) {
        return fail(&shared, &live.config, status, failure_message(status));
    }
    sleep_latency(&live.config).await;

    let prompt_tokens = request
        .messages
        .iter()
        .flat_map(|m| m.content.0.iter())
        .map(|t| count_words(t) as u64)
        .sum::<u64>()
        .max(1);
    let model = request.model.as_deref().unwrap_or(MODEL_ID);
    let id = format!("chatcmpl-fake-{n}");
    let created = unix_now();

    // A forced tool call answers the call; otherwise the reply text, cut like a model's.
    let reply: Cow<'_, str>;
    let (message, finish_reason, stop_reason, completion_tokens) =
        if let Some(tool) = forced_tool(&request) {
            let call = ToolCallOut {
                id: format!("call_fake_{n}"),
                kind: "function",
                function: FunctionCallOut {
                    name: tool,
                    arguments: "{}",
                },
            };
            let message = MessageOut {
                role: "assistant",
                content: None,
                tool_calls: vec![call],
            };
            (message, "tool_calls", None, 1)
        } else {
            reply = match &live.config.reply {
                Some(reply) => Cow::Borrowed(reply),
                None => Cow::Owned(format!("echo: {}", last_user_text(&request))),
            };
            let mut content: &str = &reply;
            let mut finish_reason = "stop";
            let mut stop_reason = None;
            // Like a model: generation ends at whichever comes first, a stop string or max_tokens.
            if let Some(stops) = &request.stop {
                let first = stops
                    .0
                    .iter()
                    .filter(|s| !s.is_empty())
                    .filter_map(|s| content.find(&**s).map(|at| (at, &**s)))
                    .min_by_key(|(at, _)| *at);
                if let Some((at, stop)) = first {
                    content = &content[..at];
                    stop_reason = Some(stop);
                }
            }
            if let Some(max_tokens) = request.max_completion_tokens.or(request.max_tokens)
                && let Some(cut) = first_words(content, max_tokens)
            {
                content = cut;
                finish_reason = "length";
                stop_reason = None;
            }
            let message = MessageOut {
                role: "assistant",
                content: Some(content),
                tool_calls: Vec::new(),
            };
            (
                message,
                finish_reason,
                stop_reason,
                count_words(content) as u64,
            )
        };
    let choice = ChoiceOut {
        index: 0,
        message,
        logprobs: None,
        finish_reason,
        stop_reason,
    };
    let usage = UsageOut {
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens + completion_tokens,
    };
    let out = ChatOut {
        id,
        object: "chat.completion",
        created,
        model,
        choices: [choice],
        usage,
    };
    shared.counters.ok.fetch_add(1, Ordering::Relaxed);
    json(StatusCode::OK, &out)
}

/// The tool to call when the request forces one: the named tool, or the first for "required".
fn forced_tool<'r>(request: &'r ChatIn<'_>) -> Option<&'r str> {
    let first = request.tools.first()?;
    match request.tool_choice.as_ref()? {
        ToolChoiceIn::Mode(mode) if mode == "required" => Some(&first.function.name),
        ToolChoiceIn::Mode(_) => None,
        ToolChoiceIn::Named { function } => request
            .tools
            .iter()
            .find(|t| t.function.name == function.name)
            .map(|t| t.function.name.as_ref()),
    }
}

fn last_user_text(request: &ChatIn<'_>) -> String {
    request
        .messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .map(|m| m.content.0.join(" "))
        .unwrap_or_default()
}

fn count_words(text: &str) -> usize {
    text.split_whitespace().count()
}

/// The text up to its `n`th word, or `None` when it has no more than `n` words.
fn first_words(text: &str, n: u64) -> Option<&str> {
    let mut words = 0u64;
    let mut in_word = false;
    for (at, c) in text.char_indices() {
        if c.is_whitespace() {
            in_word = false;
        } else if !in_word {
            in_word = true;
            words += 1;
            if words > n {
                return Some(text[..at].trim_end());
            }
        }
    }
    None
}

// ---- embeddings ----------------------------------------------------------------------------

#[derive(Deserialize)]
struct EmbeddingsIn<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    input: EmbedInput,
    #[serde(default)]
    dimensions: Option<usize>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum EmbedInput {
    One(String),
    Many(Vec<String>),
}

#[derive(Serialize)]
struct EmbeddingsOut<'a> {
    object: &'static str,
    data: Vec<EmbeddingOut>,
    model: &'a str,
    usage: EmbedUsageOut,
}

#[derive(Serialize)]
struct EmbeddingOut {
    object: &'static str,
    index: usize,
    embedding: Vec<f32>,
}

#[derive(Serialize)]
struct EmbedUsageOut {
    prompt_tokens: u64,
    total_tokens: u64,
}

async fn embeddings(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let _in_flight = shared.counters.enter();
    shared.counters.embeddings.fetch_add(1, Ordering::Relaxed);
    let live = shared.live();
    let request: EmbeddingsIn<'_> = match parse(&shared, &live.config, &body, "embeddings") {
        Ok(request) => request,
        Err(answer) => return *answer,
    };
    let inputs = match &request.input {
        EmbedInput::One(text) => std::slice::from_ref(text),
        EmbedInput::Many(texts) => texts.as_slice(),
    };
    let dimensions = request.dimensions.unwrap_or(EMBEDDING_DIMENSIONS);
    if dimensions == 0 || dimensions > MAX_EMBEDDING_DIMENSIONS || inputs.is_empty() {
        let message = "input must not be empty and dimensions must be in 1..=65536";
        return fail(&shared, &live.config, 400, message);
    }
    let has_marker = |marker: &str| inputs.iter().any(|t| t.contains(marker));
    if let Some(status) = pick_failure(&shared, &live, has_marker) {
        return fail(&shared, &live.config, status, failure_message(status));
    }
    sleep_latency(&live.config).await;

    let data = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| EmbeddingOut {
            object: "embedding",
            index,
            embedding: embedding_of(text, dimensions),
        })
        .collect();
    let prompt_tokens = inputs.iter().map(|t| count_words(t).max(1) as u64).sum();
    let out = EmbeddingsOut {
        object: "list",
        data,
        model: request.model.as_deref().unwrap_or(MODEL_ID),
        usage: EmbedUsageOut {
            prompt_tokens,
            total_tokens: prompt_tokens,
        },
    };
    shared.counters.ok.fetch_add(1, Ordering::Relaxed);
    json(StatusCode::OK, &out)
}

/// A unit vector seeded by the text (FNV-1a, stable across runs and Rust versions).
pub(crate) fn embedding_of(text: &str, dimensions: usize) -> Vec<f32> {
    let seed = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut vector: Vec<f32> = (0..dimensions).map(|_| rng.f32() * 2.0 - 1.0).collect();
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|x| *x /= norm);
    } else if let Some(first) = vector.first_mut() {
        *first = 1.0;
    }
    vector
}

// ---- other routes --------------------------------------------------------------------------

async fn models() -> Response {
    let body = serde_json::json!({
        "object": "list",
        "data": [{ "id": MODEL_ID, "object": "model", "created": 0, "owned_by": "batchd-fake" }],
    });
    json(StatusCode::OK, &body)
}

/// llama-server's `/props` (only the field batchd reads), when `total_slots` is set.
async fn props(State(shared): State<Arc<Shared>>) -> Response {
    match shared.live().config.total_slots {
        Some(slots) => json(
            StatusCode::OK,
            &serde_json::json!({ "total_slots": slots, "model_alias": MODEL_ID }),
        ),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

// ---- failures and helpers ------------------------------------------------------------------

/// The status to fail this request with, if any: `fail_first_n`, then the marker, then
/// capacity, then rates.
fn pick_failure(
    shared: &Shared,
    live: &Live<FakeConfig>,
    has_marker: impl Fn(&str) -> bool,
) -> Option<u16> {
    let config = &live.config;
    if config.fail_first_n > 0 && live.served.fetch_add(1, Ordering::Relaxed) < config.fail_first_n
    {
        return Some(503);
    }
    if let Some(marker) = &config.fail_when_prompt_contains
        && !marker.is_empty()
        && has_marker(marker)
    {
        return Some(400);
    }
    // This request is already counted in.
    if let Some(capacity) = config.capacity
        && shared.counters.in_flight.load(Ordering::Relaxed) > capacity
    {
        return Some(429);
    }
    let total = config.rate_429 + config.rate_500 + config.rate_503 + config.rate_400;
    if total <= 0.0 {
        return None;
    }
    let draw = fastrand::f64();
    let mut threshold = 0.0;
    for (rate, status) in [
        (config.rate_429, 429),
        (config.rate_500, 500),
        (config.rate_503, 503),
        (config.rate_400, 400),
    ] {
        threshold += rate.max(0.0);
        if draw < threshold {
            return Some(status);
        }
    }
    None
}

fn failure_message(status: u16) -> &'static str {
    match status {
        429 => "Rate limit reached (fake server).",
        500 => "The server had an error while processing your request (fake server).",
        503 => "The server is overloaded (fake server).",
        _ => "Invalid request (fake server).",
    }
}

/// A request body of `what` endpoint; one that does not parse is answered 400.
fn parse<'a, T: Deserialize<'a>>(
    shared: &Shared,
    config: &FakeConfig,
    body: &'a [u8],
    what: &str,
) -> Result<T, Box<Response>> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(fail(
            shared,
            config,
            400,
            &format!("invalid {what} request: {e}"),
        ))
    })
}

fn fail(shared: &Shared, config: &FakeConfig, status: u16, message: &str) -> Response {
    let counters = &shared.counters;
    let (counter, kind) = match status {
        429 => (&counters.status_429, "rate_limit_error"),
        500 => (&counters.status_500, "server_error"),
        503 => (&counters.status_503, "server_error"),
        _ => (&counters.status_400, "invalid_request_error"),
    };
    counter.fetch_add(1, Ordering::Relaxed);
    let retry_after = if status == 429 {
        config.retry_after_secs
    } else {
        None
    };
    error_response(status, message, kind, retry_after)
}

#[derive(Serialize)]
struct ErrorOut<'a> {
    error: ErrorDetailOut<'a>,
}

#[derive(Serialize)]
struct ErrorDetailOut<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    code: u16,
}

/// A `POST /fake/config` body that is not a config: 400 in OpenAI's error shape.
pub(crate) fn config_error(message: &str) -> Response {
    error_response(400, message, "invalid_request_error", None)
}

fn error_response(status: u16, message: &str, kind: &str, retry_after: Option<u64>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let body = ErrorOut {
        error: ErrorDetailOut {
            message,
            kind,
            code: status.as_u16(),
        },
    };
    let mut response = json(status, &body);
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn sleep_latency(config: &FakeConfig) {
    let jitter = if config.latency_jitter_ms > 0 {
        fastrand::u64(0..=config.latency_jitter_ms)
    } else {
        0
    };
    let total = config.latency_ms + jitter;
    if total > 0 {
        tokio::time::sleep(Duration::from_millis(total)).await;
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_words_cuts_after_n_words() {
        assert_eq!(first_words("a b  c d", 2), Some("a b"));
        assert_eq!(first_words("  a b", 2), None);
        assert_eq!(first_words("a b c", 0), Some(""));
        assert_eq!(first_words("", 0), None);
    }

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let a = embedding_of("hello", 16);
        assert_eq!(a, embedding_of("hello", 16));
        assert_ne!(a, embedding_of("hellp", 16));
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
    }
}
