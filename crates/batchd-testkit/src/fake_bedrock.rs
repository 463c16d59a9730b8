//! A fake bedrock-runtime for tests: [`FakeBedrock`] verifies the SigV4 signature of every
//! request (recomputed with aws-sigv4 from the known secret) and answers `POST
//! /model/{modelId}/converse` and `POST /model/{modelId}/invoke` like Bedrock on demand. It is
//! never a real backend.
//!
//! - Converse: `output.message` echoes the last user text (`echo: <text>`), with `stopReason`,
//!   `usage` (word counts) and `metrics`.
//! - InvokeModel: the native answer of the model id's family (Anthropic, Titan text, Titan
//!   embeddings, Nova, Llama, Mistral; spec A6), with the `X-Amzn-Bedrock-Input-Token-Count` /
//!   `-Output-Token-Count` headers.
//! - Errors come as Bedrock sends them: the status, `x-amzn-ErrorType: <Type>:<namespace>` and
//!   `{"message": ...}`. A bad or missing signature is a 403 `InvalidSignatureException` (an
//!   unknown access key or no `Authorization` at all: `UnrecognizedClientException`).
//! - Knobs ([`FakeBedrockConfig`]): a fraction of `ThrottlingException` answers, the first n
//!   requests throttled, a forced error type, a prompt marker that fails one record, latency.
//! - `GET /fake/stats` ([`FakeBedrockStats`]), `POST /fake/stats/reset`, `GET|POST /fake/config`
//!   for out-of-process users (these need no signature).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, post};
use batchd_formats::native::ModelFamily as Family;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::serving::{Fake, FakeState, Live, LiveConfig, admin_routes};

/// The access key id the fake accepts by default.
pub const ACCESS_KEY_ID: &str = "AKIDBATCHDFAKE000001";
/// Its secret.
pub const SECRET_ACCESS_KEY: &str = "batchd/fake/secret/0123456789abcdefABCDEF";
/// The signing name bedrock-runtime expects.
const SERVICE: &str = "bedrock";
/// Largest clock difference accepted, as AWS does.
const MAX_SKEW: Duration = Duration::from_secs(15 * 60);
const ERROR_NAMESPACE: &str = "http://internal.amazon.com/coral/com.amazon.bedrock/";

/// The fake's behaviour. Serde names match the field names (`POST /fake/config`); missing fields
/// take their defaults. `batchd-fake-bedrock` takes each field as a flag (`--throttle-rate`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default)]
pub struct FakeBedrockConfig {
    /// The access key id the fake accepts.
    #[arg(long, default_value = ACCESS_KEY_ID)]
    pub access_key_id: String,
    /// Its secret.
    #[arg(long, default_value = SECRET_ACCESS_KEY)]
    pub secret_access_key: String,
    /// The region signatures must be scoped to; `None` accepts any.
    #[arg(long)]
    pub region: Option<String>,
    /// Fraction of (correctly signed) requests answered 429 `ThrottlingException`.
    #[arg(long, default_value_t = 0.0, value_parser = crate::process::parse_rate)]
    pub throttle_rate: f64,
    /// The first n signed requests after this config is set are throttled.
    #[arg(long, default_value_t = 0)]
    pub throttle_first_n: u64,
    /// Sent as `Retry-After` on throttled answers.
    #[arg(long)]
    pub retry_after_secs: Option<u64>,
    /// Every signed request fails with this error type (e.g. `ValidationException`,
    /// `ServiceUnavailableException`), with its usual status.
    #[arg(long)]
    pub forced_error: Option<String>,
    /// A request whose body contains this marker fails with `ValidationException`.
    #[arg(long)]
    pub fail_when_prompt_contains: Option<String>,
    /// Latency of every successful answer.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
}

impl Default for FakeBedrockConfig {
    fn default() -> Self {
        FakeBedrockConfig {
            access_key_id: ACCESS_KEY_ID.to_owned(),
            secret_access_key: SECRET_ACCESS_KEY.to_owned(),
            region: None,
            throttle_rate: 0.0,
            throttle_first_n: 0,
            retry_after_secs: None,
            forced_error: None,
            fail_when_prompt_contains: None,
            latency_ms: 0,
        }
    }
}

/// Counters since start (or the last reset).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FakeBedrockStats {
    /// Every request to a model route.
    pub requests: u64,
    /// Requests refused for a missing or wrong signature or an unknown key.
    pub rejected_signatures: u64,
    pub ok: u64,
    pub throttled: u64,
    /// Other error answers (forced errors, markers, invalid bodies or model ids).
    pub errors: u64,
    pub converse: u64,
    pub invoke: u64,
    /// Correctly signed requests that carried `x-amz-security-token`.
    pub with_session_token: u64,
}

/// A running fake. Dropping it stops the server too (without waiting).
pub type FakeBedrock = Fake<Shared>;

impl Fake<Shared> {
    /// Starts on 127.0.0.1 with a port the OS picks.
    pub async fn start(config: FakeBedrockConfig) -> std::io::Result<FakeBedrock> {
        Self::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    /// Starts on `addr`.
    pub async fn bind(addr: SocketAddr, config: FakeBedrockConfig) -> std::io::Result<FakeBedrock> {
        Fake::bind_with(addr, Shared::new(config), |listener, shared, stopped| {
            let app = router(shared);
            async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stopped)
                    .await
            }
        })
        .await
    }

    /// `http://127.0.0.1:PORT`: the `endpoint_url` of a bedrock model.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The session token of the last correctly signed request that carried one.
    pub fn last_session_token(&self) -> Option<String> {
        match self.state.last_session_token.lock() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

// ---- shared state --------------------------------------------------------------------------

/// The fake bedrock-runtime's state.
pub struct Shared {
    live: LiveConfig<FakeBedrockConfig>,
    counters: Counters,
    last_session_token: Mutex<Option<String>>,
}

impl Shared {
    fn new(config: FakeBedrockConfig) -> Self {
        Shared {
            live: LiveConfig::new(config),
            counters: Counters::default(),
            last_session_token: Mutex::new(None),
        }
    }

    fn live(&self) -> Arc<Live<FakeBedrockConfig>> {
        self.live.get()
    }

    fn remember_session_token(&self, token: &str) {
        let token = Some(token.to_owned());
        match self.last_session_token.lock() {
            Ok(mut guard) => *guard = token,
            Err(poisoned) => *poisoned.into_inner() = token,
        }
    }
}

impl FakeState for Shared {
    type Config = FakeBedrockConfig;
    type Stats = FakeBedrockStats;

    fn config(&self) -> FakeBedrockConfig {
        self.live().config.clone()
    }

    fn set_config(&self, config: FakeBedrockConfig) {
        self.live.set(config);
    }

    fn stats(&self) -> FakeBedrockStats {
        self.counters.snapshot()
    }

    fn reset_stats(&self) {
        self.counters.reset();
    }

    fn config_error(message: &str) -> Response {
        error_response("ValidationException", message, None)
    }
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    rejected_signatures: AtomicU64,
    ok: AtomicU64,
    throttled: AtomicU64,
    errors: AtomicU64,
    converse: AtomicU64,
    invoke: AtomicU64,
    with_session_token: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> FakeBedrockStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        FakeBedrockStats {
            requests: get(&self.requests),
            rejected_signatures: get(&self.rejected_signatures),
            ok: get(&self.ok),
            throttled: get(&self.throttled),
            errors: get(&self.errors),
            converse: get(&self.converse),
            invoke: get(&self.invoke),
            with_session_token: get(&self.with_session_token),
        }
    }

    fn reset(&self) {
        for counter in [
            &self.requests,
            &self.rejected_signatures,
            &self.ok,
            &self.throttled,
            &self.errors,
            &self.converse,
            &self.invoke,
            &self.with_session_token,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

// ---- routes --------------------------------------------------------------------------------

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/model/{model_id}/converse", model_route(Api::Converse))
        .route("/model/{model_id}/invoke", model_route(Api::Invoke))
        .merge(admin_routes())
        .fallback(unknown_operation)
        // Records may carry images; the default 2 MB would refuse them.
        .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
        .with_state(shared)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    Converse,
    Invoke,
}

/// `POST /model/{model_id}/<api>`: one handler for both APIs, told apart by `api`.
fn model_route(api: Api) -> MethodRouter<Arc<Shared>> {
    post(
        move |State(shared): State<Arc<Shared>>,
              Path(model_id): Path<String>,
              uri: Uri,
              headers: HeaderMap,
              body: Bytes| async move {
            handle(&shared, api, &model_id, &uri, &headers, &body).await
        },
    )
}

async fn handle(
    shared: &Shared,
    api: Api,
    model_id: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let counters = &shared.counters;
    bump(&counters.requests);
    let live = shared.live();
    let config = &live.config;
    if let Err((error_type, message)) = verify_signature(config, uri, headers, body) {
        bump(&counters.rejected_signatures);
        return error_response(error_type, &message, None);
    }
    if let Some(token) = header_str(headers, "x-amz-security-token") {
        bump(&counters.with_session_token);
        shared.remember_session_token(token);
    }
    bump(match api {
        Api::Converse => &counters.converse,
        Api::Invoke => &counters.invoke,
    });

    let served = live.served.fetch_add(1, Ordering::Relaxed);
    if served < config.throttle_first_n
        || (config.throttle_rate > 0.0 && fastrand::f64() < config.throttle_rate)
    {
        bump(&counters.throttled);
        return error_response(
            "ThrottlingException",
            "Too many requests, please wait before trying again.",
            config.retry_after_secs,
        );
    }
    if let Some(error_type) = config.forced_error.as_deref() {
        bump(if error_type == "ThrottlingException" {
            &counters.throttled
        } else {
            &counters.errors
        });
        return error_response(error_type, "forced by the fake's config", None);
    }
    if let Some(marker) = config.fail_when_prompt_contains.as_deref()
        && !marker.is_empty()
        && memmem(body, marker.as_bytes())
    {
        bump(&counters.errors);
        return error_response(
            "ValidationException",
            "The request contains the fake's failure marker.",
            None,
        );
    }

    let answer = match serde_json::from_slice::<Value>(body) {
        Err(e) => Err(format!("Malformed input request: {e}")),
        Ok(request) => match api {
            Api::Converse => converse_answer(&request),
            Api::Invoke => invoke_answer(model_id, &request),
        },
    };
    match answer {
        Err(message) => {
            bump(&counters.errors);
            error_response("ValidationException", &message, None)
        }
        Ok(answer) => {
            if config.latency_ms > 0 {
                tokio::time::sleep(Duration::from_millis(config.latency_ms)).await;
            }
            bump(&counters.ok);
            answer.into_response()
        }
    }
}

async fn unknown_operation() -> Response {
    error_response("UnknownOperationException", "no such operation", None)
}

// ---- signature check -----------------------------------------------------------------------

/// Recomputes the request's SigV4 signature from the known secret. `Err((error type,
/// message))` when it is missing, malformed, for another key, stale or wrong.
fn verify_signature(
    config: &FakeBedrockConfig,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), (&'static str, String)> {
    let invalid = |message: &str| ("InvalidSignatureException", message.to_owned());
    let Some(authorization) = header_str(headers, "authorization") else {
        return Err((
            "UnrecognizedClientException",
            "The security token included in the request is invalid (no Authorization header)."
                .to_owned(),
        ));
    };
    let auth = parse_authorization(authorization)
        .ok_or_else(|| invalid("The Authorization header is not a SigV4 header."))?;
    let scope: Vec<&str> = auth.credential.split('/').collect();
    let [access_key_id, date, region, service, terminator] = scope[..] else {
        return Err(invalid("The credential scope is malformed."));
    };
    if access_key_id != config.access_key_id {
        return Err((
            "UnrecognizedClientException",
            "The security token included in the request is invalid.".to_owned(),
        ));
    }
    if service != SERVICE || terminator != "aws4_request" {
        return Err(invalid(&format!(
            "Credential should be scoped to correct service: '{SERVICE}'."
        )));
    }
    if let Some(expected) = config.region.as_deref()
        && region != expected
    {
        return Err(invalid(&format!(
            "Credential should be scoped to a valid region, not '{region}'."
        )));
    }
    let amz_date = header_str(headers, "x-amz-date")
        .ok_or_else(|| invalid("The request has no X-Amz-Date header."))?;
    let time = parse_amz_date(amz_date).ok_or_else(|| invalid("X-Amz-Date is malformed."))?;
    if !amz_date.starts_with(date) || date.len() != 8 {
        return Err(invalid(
            "The credential scope date does not match X-Amz-Date.",
        ));
    }
    let now = SystemTime::now();
    let skew = now
        .duration_since(time)
        .or_else(|_| time.duration_since(now))
        .unwrap_or_default();
    if skew > MAX_SKEW {
        return Err(invalid("Signature expired or not yet valid."));
    }

    let signed: Vec<&str> = auth.signed_headers.split(';').collect();
    if !signed.contains(&"host") || !signed.contains(&"x-amz-date") {
        return Err(invalid("SignedHeaders must include host and x-amz-date."));
    }
    let token = header_str(headers, "x-amz-security-token");
    if token.is_some() && !signed.contains(&"x-amz-security-token") {
        return Err(invalid("x-amz-security-token is not signed."));
    }
    // The signer adds x-amz-date and the token itself; every other signed header comes from the
    // request as it arrived.
    let mut signable_headers: Vec<(&str, &str)> = Vec::with_capacity(signed.len());
    for name in &signed {
        if matches!(*name, "x-amz-date" | "x-amz-security-token") {
            continue;
        }
        let value = header_str(headers, name)
            .ok_or_else(|| invalid(&format!("Signed header {name} is missing.")))?;
        signable_headers.push((name, value));
    }
    let host = header_str(headers, "host").unwrap_or("localhost");
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("http://{host}{path}");

    let identity: Identity = Credentials::new(
        access_key_id,
        config.secret_access_key.clone(),
        token.map(str::to_owned),
        None,
        "fake-bedrock",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SERVICE)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| invalid(&format!("cannot recompute the signature: {e}")))?
        .into();
    let request = SignableRequest::new(
        "POST",
        url,
        signable_headers.into_iter(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| invalid(&format!("cannot recompute the signature: {e}")))?;
    let output = sign(request, &params)
        .map_err(|e| invalid(&format!("cannot recompute the signature: {e}")))?;
    if output.signature() != auth.signature {
        return Err(invalid(
            "The request signature we calculated does not match the signature you provided. \
             Check your AWS Secret Access Key and signing method.",
        ));
    }
    Ok(())
}

struct Authorization<'a> {
    credential: &'a str,
    signed_headers: &'a str,
    signature: &'a str,
}

/// `AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...`
fn parse_authorization(value: &str) -> Option<Authorization<'_>> {
    let rest = value.strip_prefix("AWS4-HMAC-SHA256 ")?;
    let mut fields: HashMap<&str, &str> = HashMap::new();
    for part in rest.split(',') {
        let (key, value) = part.trim().split_once('=')?;
        fields.insert(key, value);
    }
    Some(Authorization {
        credential: fields.get("Credential")?,
        signed_headers: fields.get("SignedHeaders")?,
        signature: fields.get("Signature")?,
    })
}

/// `20240102T030405Z`
fn parse_amz_date(value: &str) -> Option<SystemTime> {
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let at = time::PrimitiveDateTime::parse(value, format).ok()?;
    Some(at.assume_utc().into())
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name)?.to_str().ok().map(str::trim)
}

fn memmem(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

// ---- answers -------------------------------------------------------------------------------

struct Answer {
    body: Value,
    /// The token-count headers (InvokeModel only).
    tokens: Option<(u64, u64)>,
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut response = json_response(StatusCode::OK, &self.body);
        if let Some((input, output)) = self.tokens {
            let headers = response.headers_mut();
            headers.insert("x-amzn-bedrock-input-token-count", HeaderValue::from(input));
            headers.insert(
                "x-amzn-bedrock-output-token-count",
                HeaderValue::from(output),
            );
        }
        response
    }
}

fn words(text: &str) -> u64 {
    (text.split_whitespace().count() as u64).max(1)
}

/// `echo: <text>`, cut to `max_tokens` words; whether it was cut.
fn reply(text: &str, max_tokens: Option<u64>) -> (String, bool) {
    let full = format!("echo: {text}");
    match max_tokens {
        Some(max) if words(&full) > max => {
            let cut: Vec<&str> = full
                .split_whitespace()
                .take(usize::try_from(max).unwrap_or(usize::MAX))
                .collect();
            (cut.join(" "), true)
        }
        _ => (full, false),
    }
}

/// The text of a content value: a string, or the `text` of each block (`[{text}]` or
/// `[{"type":"text","text"}]`), joined with spaces.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// The fake's reply: `echo: <text>` cut to a word limit, and the word counts it reports as
/// tokens.
struct Reply {
    text: String,
    cut: bool,
    input: u64,
    output: u64,
}

impl Reply {
    /// `prompt` echoed; its words are the input tokens.
    fn to_prompt(prompt: &str, max_tokens: Option<u64>) -> Reply {
        Self::echo(prompt, words(prompt), max_tokens)
    }

    /// The last user message echoed; the words of all messages are the input tokens.
    fn to_messages(messages: &Value, max_tokens: Option<u64>) -> Result<Reply, String> {
        let messages = messages
            .as_array()
            .filter(|m| !m.is_empty())
            .ok_or("messages: must be a non-empty array")?;
        let mut input_words = 0;
        let mut last = None;
        for message in messages {
            let text = content_text(&message["content"]);
            input_words += words(&text);
            if message["role"] == "user" {
                last = Some(text);
            }
        }
        let last = last.ok_or("messages: no user message")?;
        Ok(Self::echo(&last, input_words, max_tokens))
    }

    fn echo(text: &str, input: u64, max_tokens: Option<u64>) -> Reply {
        let (text, cut) = reply(text, max_tokens);
        let output = words(&text);
        Reply {
            text,
            cut,
            input,
            output,
        }
    }

    /// Converse's (and Nova's) `stopReason`, Anthropic's `stop_reason`.
    fn end_turn(&self) -> &'static str {
        if self.cut { "max_tokens" } else { "end_turn" }
    }

    /// Llama's and Mistral's `stop_reason`.
    fn stop(&self) -> &'static str {
        if self.cut { "length" } else { "stop" }
    }
}

/// The text the fake answers a Converse or Anthropic body's `messages` with (the last user
/// message echoed, cut to `max_tokens` words): what a test expects back.
pub fn expected_reply(messages: &Value, max_tokens: Option<u64>) -> Result<String, String> {
    Reply::to_messages(messages, max_tokens).map(|r| r.text)
}

fn converse_answer(request: &Value) -> Result<Answer, String> {
    let r = Reply::to_messages(
        &request["messages"],
        request["inferenceConfig"]["maxTokens"].as_u64(),
    )?;
    Ok(Answer {
        body: json!({
            "output": {"message": {"role": "assistant", "content": [{"text": r.text}]}},
            "stopReason": r.end_turn(),
            "usage": {"inputTokens": r.input, "outputTokens": r.output, "totalTokens": r.input + r.output},
            "metrics": {"latencyMs": 1},
        }),
        tokens: None,
    })
}

/// The model family an id (or inference profile id, or ARN) belongs to: the fake's own reading
/// of the id, not the formats crate's, so the two are checked against each other.
fn family(model_id: &str) -> Option<Family> {
    let id = model_id.rsplit('/').next().unwrap_or(model_id);
    let has = |s: &str| id.contains(s);
    Some(if has("anthropic.") {
        Family::Anthropic
    } else if has("amazon.titan-embed") {
        Family::TitanEmbed
    } else if has("amazon.titan-text") || has("amazon.titan-tg1") {
        Family::TitanText
    } else if has("amazon.nova") {
        Family::Nova
    } else if has("meta.llama") {
        Family::Llama
    } else if has("mistral.") {
        Family::Mistral
    } else {
        return None;
    })
}

fn invoke_answer(model_id: &str, request: &Value) -> Result<Answer, String> {
    let family = family(model_id).ok_or_else(|| {
        format!("The provided model identifier is invalid: {model_id} (the fake knows anthropic, titan, nova, llama and mistral ids)")
    })?;
    let (body, r) = match family {
        Family::Anthropic => {
            if request["anthropic_version"].as_str().is_none() {
                return Err(
                    "Malformed input request: #: required key [anthropic_version] not found"
                        .to_owned(),
                );
            }
            let max_tokens = request["max_tokens"].as_u64().ok_or(
                "Malformed input request: #: required key [max_tokens] not found".to_owned(),
            )?;
            let r = Reply::to_messages(&request["messages"], Some(max_tokens))?;
            let body = json!({
                "id": format!("msg_bdrk_{:016x}", fastrand::u64(..)),
                "type": "message",
                "role": "assistant",
                "model": model_id,
                "content": [{"type": "text", "text": r.text}],
                "stop_reason": r.end_turn(),
                "stop_sequence": null,
                "usage": {"input_tokens": r.input, "output_tokens": r.output},
            });
            (body, r)
        }
        Family::Nova => {
            let config = &request["inferenceConfig"];
            let max = config["maxTokens"]
                .as_u64()
                .or_else(|| config["max_new_tokens"].as_u64());
            let r = Reply::to_messages(&request["messages"], max)?;
            let body = json!({
                "output": {"message": {"role": "assistant", "content": [{"text": r.text}]}},
                "stopReason": r.end_turn(),
                "usage": {"inputTokens": r.input, "outputTokens": r.output, "totalTokens": r.input + r.output},
            });
            (body, r)
        }
        Family::TitanText => {
            let max = request["textGenerationConfig"]["maxTokenCount"].as_u64();
            let r = Reply::to_prompt(input_text(request)?, max);
            let completion = if r.cut { "LENGTH" } else { "FINISH" };
            let body = json!({
                "inputTextTokenCount": r.input,
                "results": [{"tokenCount": r.output, "outputText": r.text, "completionReason": completion}],
            });
            (body, r)
        }
        Family::TitanEmbed => return titan_embed_answer(model_id, request),
        Family::Llama => {
            let r = Reply::to_prompt(prompt(request)?, request["max_gen_len"].as_u64());
            let body = json!({
                "generation": r.text,
                "prompt_token_count": r.input,
                "generation_token_count": r.output,
                "stop_reason": r.stop(),
            });
            (body, r)
        }
        Family::Mistral => {
            let r = Reply::to_prompt(prompt(request)?, request["max_tokens"].as_u64());
            let body = json!({"outputs": [{"text": r.text, "stop_reason": r.stop()}]});
            (body, r)
        }
    };
    Ok(Answer {
        body,
        tokens: Some((r.input, r.output)),
    })
}

fn titan_embed_answer(model_id: &str, request: &Value) -> Result<Answer, String> {
    let text = input_text(request)?;
    let dimensions = request["dimensions"].as_u64().unwrap_or(1024);
    if !matches!(dimensions, 256 | 512 | 1024) {
        return Err(format!(
            "Malformed input request: dimensions {dimensions} is not 256, 512 or 1024"
        ));
    }
    let vector = embedding(text, dimensions as usize);
    let input = words(text);
    let mut body = json!({"embedding": vector, "inputTextTokenCount": input});
    if model_id.contains("v2") {
        body["embeddingsByType"] = json!({"float": body["embedding"].clone()});
    }
    Ok(Answer {
        body,
        tokens: Some((input, 0)),
    })
}

fn input_text(request: &Value) -> Result<&str, String> {
    request["inputText"]
        .as_str()
        .ok_or_else(|| "Malformed input request: #: required key [inputText] not found".to_owned())
}

fn prompt(request: &Value) -> Result<&str, String> {
    request["prompt"]
        .as_str()
        .ok_or_else(|| "Malformed input request: #: required key [prompt] not found".to_owned())
}

/// A deterministic unit vector seeded by the text.
fn embedding(text: &str, dimensions: usize) -> Vec<f32> {
    let seed = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut rng = fastrand::Rng::with_seed(seed);
    let raw: Vec<f32> = (0..dimensions).map(|_| rng.f32() * 2.0 - 1.0).collect();
    let norm = raw
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    raw.into_iter().map(|x| x / norm).collect()
}

// ---- responses -----------------------------------------------------------------------------

/// The usual status of a Bedrock error type.
pub fn error_status(error_type: &str) -> u16 {
    match error_type {
        "ThrottlingException" | "ModelNotReadyException" => 429,
        "ServiceUnavailableException" => 503,
        "InternalServerException" => 500,
        "ModelTimeoutException" => 408,
        "AccessDeniedException"
        | "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "ExpiredTokenException" => 403,
        "ResourceNotFoundException" | "UnknownOperationException" => 404,
        "ModelErrorException" => 424,
        "ConflictException" => 409,
        _ => 400,
    }
}

fn error_response(error_type: &str, message: &str, retry_after: Option<u64>) -> Response {
    let status = StatusCode::from_u16(error_status(error_type)).unwrap_or(StatusCode::BAD_REQUEST);
    let mut response = json_response(status, &json!({ "message": message }));
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&format!("{error_type}:{ERROR_NAMESPACE}")) {
        headers.insert("x-amzn-errortype", value);
    }
    if let Some(secs) = retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => {
            let mut response = (status, bytes).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response.headers_mut().insert(
                "x-amzn-requestid",
                HeaderValue::from_str(&format!("{:032x}", fastrand::u128(..)))
                    .unwrap_or(HeaderValue::from_static("0")),
            );
            response
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The shared `/fake/...` routes answer in this fake's error shape.
    #[tokio::test]
    async fn config_is_replaced_over_http_and_a_bad_one_is_a_validation_error() {
        let fake = FakeBedrock::start(FakeBedrockConfig::default())
            .await
            .unwrap();
        let client = reqwest::Client::new();
        let url = format!("{}/fake/config", fake.url());
        let set = client
            .post(&url)
            .body(r#"{"throttle_first_n": 3}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(set.status(), 200);
        let echoed: FakeBedrockConfig = set.json().await.unwrap();
        assert_eq!(echoed.throttle_first_n, 3);
        assert_eq!(fake.config().throttle_first_n, 3);
        let read: FakeBedrockConfig = client.get(&url).send().await.unwrap().json().await.unwrap();
        assert_eq!(read.throttle_first_n, 3);

        let bad = client.post(&url).body("{").send().await.unwrap();
        assert_eq!(bad.status(), 400);
        let error_type = bad.headers()["x-amzn-errortype"].to_str().unwrap();
        assert!(
            error_type.starts_with("ValidationException:"),
            "{error_type}"
        );
        let message: Value = bad.json().await.unwrap();
        assert!(
            message["message"]
                .as_str()
                .unwrap()
                .starts_with("invalid fake config"),
            "{message}"
        );
        assert_eq!(
            fake.config().throttle_first_n,
            3,
            "a bad body changes nothing"
        );
        fake.shutdown().await;
    }

    #[tokio::test]
    async fn unsigned_or_malformed_requests_are_rejected_and_counted() {
        let fake = FakeBedrock::start(FakeBedrockConfig::default())
            .await
            .unwrap();
        let client = reqwest::Client::new();
        let url = format!("{}/model/amazon.nova-lite-v1%3A0/converse", fake.url());
        let body = r#"{"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#;
        let unsigned = client.post(&url).body(body).send().await.unwrap();
        assert_eq!(unsigned.status(), 403);
        let error_type = unsigned.headers()["x-amzn-errortype"].to_str().unwrap();
        assert!(error_type.starts_with("UnrecognizedClientException:"));
        let format =
            time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
        let now = time::OffsetDateTime::now_utc().format(format).unwrap();
        let forged = client
            .post(&url)
            .header("x-amz-date", &now)
            .header(
                "authorization",
                format!(
                    "AWS4-HMAC-SHA256 Credential={ACCESS_KEY_ID}/{}/us-east-1/bedrock/aws4_request, SignedHeaders=host;x-amz-date, Signature=00",
                    &now[..8]
                ),
            )
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(forged.status(), 403);
        let error_type = forged.headers()["x-amzn-errortype"].to_str().unwrap();
        assert!(error_type.starts_with("InvalidSignatureException:"));
        let message: Value = forged.json().await.unwrap();
        assert!(
            message["message"]
                .as_str()
                .unwrap()
                .starts_with("The request signature we calculated does not match"),
            "{message}"
        );
        let stats: FakeBedrockStats = client
            .get(format!("{}/fake/stats", fake.url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            (stats.requests, stats.rejected_signatures, stats.ok),
            (2, 2, 0)
        );
        fake.shutdown().await;
    }

    #[test]
    fn families_from_ids_profiles_and_arns() {
        for (id, expected) in [
            ("anthropic.claude-3-haiku-20240307-v1:0", Family::Anthropic),
            (
                "us.anthropic.claude-3-5-sonnet-20241022-v2:0",
                Family::Anthropic,
            ),
            ("amazon.titan-text-express-v1", Family::TitanText),
            ("amazon.titan-embed-text-v2:0", Family::TitanEmbed),
            ("amazon.nova-lite-v1:0", Family::Nova),
            ("meta.llama3-1-8b-instruct-v1:0", Family::Llama),
            ("mistral.mistral-7b-instruct-v0:2", Family::Mistral),
            (
                "arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-pro-v1:0",
                Family::Nova,
            ),
        ] {
            assert_eq!(family(id), Some(expected), "{id}");
        }
        assert_eq!(family("cohere.command-r-v1:0"), None);
    }

    #[test]
    fn authorization_header_is_parsed() {
        let auth = parse_authorization(
            "AWS4-HMAC-SHA256 Credential=AK/20240102/us-east-1/bedrock/aws4_request, SignedHeaders=host;x-amz-date, Signature=abc",
        )
        .unwrap();
        assert_eq!(
            auth.credential,
            "AK/20240102/us-east-1/bedrock/aws4_request"
        );
        assert_eq!(auth.signed_headers, "host;x-amz-date");
        assert_eq!(auth.signature, "abc");
        assert!(parse_authorization("Bearer x").is_none());
        assert!(parse_amz_date("20240102T030405Z").is_some());
        assert!(parse_amz_date("2024-01-02").is_none());
    }

    #[test]
    fn answers_have_the_family_shapes() {
        let anthropic = invoke_answer(
            "anthropic.claude-3-haiku-20240307-v1:0",
            &json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 50,
                    "messages": [{"role": "user", "content": "hi there"}]}),
        )
        .unwrap();
        assert_eq!(anthropic.body["content"][0]["text"], "echo: hi there");
        assert_eq!(anthropic.tokens, Some((2, 3)));
        assert!(
            invoke_answer(
                "anthropic.claude-3-haiku-20240307-v1:0",
                &json!({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
            )
            .is_err()
        );
        let embed = invoke_answer(
            "amazon.titan-embed-text-v2:0",
            &json!({"inputText": "a b", "dimensions": 256}),
        )
        .unwrap();
        assert_eq!(embed.body["embedding"].as_array().unwrap().len(), 256);
        assert!(embed.body["embeddingsByType"]["float"].is_array());
        let llama = invoke_answer(
            "meta.llama3-8b-instruct-v1:0",
            &json!({"prompt": "one two three", "max_gen_len": 2}),
        )
        .unwrap();
        assert_eq!(llama.body["generation"], "echo: one");
        assert_eq!(llama.body["stop_reason"], "length");
        let converse = converse_answer(&json!({"messages": [
            {"role": "user", "content": [{"text": "first"}]},
            {"role": "assistant", "content": [{"text": "ok"}]},
            {"role": "user", "content": [{"text": "second question"}]},
        ]}))
        .unwrap();
        assert_eq!(
            converse.body["output"]["message"]["content"][0]["text"],
            "echo: second question"
        );
        assert_eq!(converse.body["usage"]["inputTokens"], 4);
    }
}
