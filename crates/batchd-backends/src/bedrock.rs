//! Bedrock on-demand backend: each record body goes as it is to bedrock-runtime
//! (`POST {endpoint}/model/{modelId}/converse` or `/invoke`), signed with SigV4.
//!
//! Credentials and region come from the standard AWS places, read once at construction (no
//! aws-config): `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`, then the shared
//! credentials and config files for the profile (`profile` in the config, else `AWS_PROFILE`,
//! else `default`). An explicit `profile` skips the environment keys, as the AWS CLI's
//! `--profile` does. SSO, `credential_process`, assumed roles and instance metadata are not read.
//!
//! Errors are classified by the `x-amzn-ErrorType` header (or the body's `__type`): throttling,
//! model-not-ready, unavailable, internal and model-timeout errors are retryable, the rest are not.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use reqwest::Url;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

use crate::http::{body_excerpt, error_chain, retry_after, transport_error};
use crate::{BackendError, BackendInfo, ErrorKind, ModelBackend, NativeAnswer, NativeCall};
use batchd_formats::neutral::{ChatRequest, ChatResponse, EmbedRequest, EmbedResponse};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The SigV4 signing name of bedrock-runtime.
const SIGNING_NAME: &str = "bedrock";
const JSON: &str = "application/json";
const INPUT_TOKENS_HEADER: &str = "x-amzn-bedrock-input-token-count";
const OUTPUT_TOKENS_HEADER: &str = "x-amzn-bedrock-output-token-count";
const ERROR_TYPE_HEADER: &str = "x-amzn-errortype";

/// One Bedrock model served on demand.
#[derive(Debug, Clone, Default)]
pub struct BedrockConfig {
    /// The Bedrock model id, inference profile id or ARN, e.g.
    /// `anthropic.claude-3-haiku-20240307-v1:0`.
    pub model_id: String,
    /// Signing region (and the default endpoint's); else from the environment or config file.
    pub region: Option<String>,
    /// e.g. `http://127.0.0.1:9000`; default `https://bedrock-runtime.{region}.amazonaws.com`.
    pub endpoint_url: Option<String>,
    /// Connection pool size hint: the max concurrency the engine will use.
    pub max_connections: usize,
    /// Profile of the shared credentials/config files; skips the environment keys when set.
    pub profile: Option<String>,
}

/// The environment the AWS settings are read from: variables and the home folder. The binary
/// builds it from the process's environment with [`AwsEnvironment::from_lookup`] (only the
/// binary reads the environment, ARCHITECTURE.md invariant 8); tests build their own.
#[derive(Debug, Clone, Default)]
pub struct AwsEnvironment {
    vars: HashMap<String, String>,
    home: Option<PathBuf>,
}

const AWS_VARS: [&str; 9] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
];

impl AwsEnvironment {
    /// The `AWS_*` variables and the home folder (`HOME`, else `USERPROFILE`) as `var` looks
    /// them up: the binary passes the process environment.
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Self {
        let vars = AWS_VARS
            .iter()
            .filter_map(|name| Some((name.to_string(), var(name)?)))
            .collect();
        let home = ["HOME", "USERPROFILE"]
            .iter()
            .find_map(|name| var(name).filter(|v| !v.is_empty()))
            .map(PathBuf::from);
        AwsEnvironment { vars, home }
    }

    /// Exactly these variables and this home folder.
    pub fn new<K: Into<String>, V: Into<String>>(
        vars: impl IntoIterator<Item = (K, V)>,
        home: Option<PathBuf>,
    ) -> Self {
        let vars = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        AwsEnvironment { vars, home }
    }

    /// A variable's value; empty counts as unset.
    fn var(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    fn file(&self, var: &str, default: &str) -> Option<PathBuf> {
        match self.var(var) {
            Some(path) => Some(self.expand_home(path)),
            None => self
                .home
                .as_ref()
                .map(|home| home.join(".aws").join(default)),
        }
    }

    fn expand_home(&self, path: &str) -> PathBuf {
        match (path.strip_prefix("~/"), &self.home) {
            (Some(rest), Some(home)) => home.join(rest),
            _ => PathBuf::from(path),
        }
    }
}

pub struct BedrockBackend {
    client: reqwest::Client,
    converse_url: Url,
    invoke_url: Url,
    identity: Identity,
    region: String,
}

impl BedrockBackend {
    /// Reads credentials and region from `env` and the AWS files it points at, builds the
    /// client once. Installs ring as the process's rustls provider if none is.
    pub fn new(config: BedrockConfig, env: &AwsEnvironment) -> Result<Self, BackendError> {
        let model_id = config.model_id.trim();
        if model_id.is_empty() {
            return Err(setup_error("the Bedrock model id is empty"));
        }
        let profile = Profile::load(config.profile.as_deref(), env)?;
        let credentials = resolve_credentials(config.profile.is_some(), env, &profile)?;
        let region = resolve_region(config.region.as_deref(), env, &profile)?;
        let endpoint = match config.endpoint_url.as_deref().map(str::trim) {
            Some(url) if !url.is_empty() => url.trim_end_matches('/').to_owned(),
            _ => format!("https://bedrock-runtime.{region}.amazonaws.com"),
        };
        let model_path = format!("{endpoint}/model/{}", encode_path_segment(model_id));
        let converse_url = parse_url(&format!("{model_path}/converse"))?;
        let invoke_url = parse_url(&format!("{model_path}/invoke"))?;

        // Fails only when another provider is already installed, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(config.max_connections.max(1))
            .tcp_nodelay(true)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| {
                setup_error(format!("cannot build the HTTP client: {}", error_chain(&e)))
            })?;
        Ok(BedrockBackend {
            client,
            converse_url,
            invoke_url,
            identity: credentials.into(),
            region,
        })
    }

    /// The signing region.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The Converse URL (the InvokeModel one ends in `/invoke` instead).
    pub fn converse_url(&self) -> &str {
        self.converse_url.as_str()
    }

    /// The SigV4 headers (`authorization`, `x-amz-date`, `x-amz-security-token`) plus
    /// content-type and accept for a POST of `body` to `url` at `time`.
    fn signed_headers(
        &self,
        url: &Url,
        body: &[u8],
        time: SystemTime,
    ) -> Result<HeaderMap, BackendError> {
        let params = v4::SigningParams::builder()
            .identity(&self.identity)
            .region(&self.region)
            .name(SIGNING_NAME)
            .time(time)
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| signing_error(&e))?
            .into();
        let request = SignableRequest::new(
            "POST",
            url.as_str(),
            [(CONTENT_TYPE.as_str(), JSON), (ACCEPT.as_str(), JSON)].into_iter(),
            SignableBody::Bytes(body),
        )
        .map_err(|e| signing_error(&e))?;
        let (instructions, _signature) = sign(request, &params)
            .map_err(|e| signing_error(&e))?
            .into_parts();
        let mut headers = HeaderMap::with_capacity(5);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(JSON));
        headers.insert(ACCEPT, HeaderValue::from_static(JSON));
        let (signing_headers, _) = instructions.into_parts();
        for header in signing_headers {
            let name = HeaderName::from_bytes(header.name().as_bytes()).map_err(|_| {
                setup_error(format!("the signed header {} is not valid", header.name()))
            })?;
            let mut value = HeaderValue::from_str(header.value()).map_err(|_| {
                setup_error(format!("the signed header {} is not valid", header.name()))
            })?;
            // Keep the signature and the session token out of debug output.
            value.set_sensitive(
                header.sensitive()
                    || name == AUTHORIZATION
                    || name.as_str() == "x-amz-security-token",
            );
            headers.insert(name, value);
        }
        Ok(headers)
    }

    async fn post(&self, url: &Url, body: &str) -> Result<reqwest::Response, BackendError> {
        let headers = self.signed_headers(url, body.as_bytes(), SystemTime::now())?;
        let response = self
            .client
            .post(url.clone())
            .headers(headers)
            .body(body.to_owned())
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = retry_after(response.headers());
        let error_type = response
            .headers()
            .get(ERROR_TYPE_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // A body that breaks off does not change the verdict the status already gave.
        let body = response.bytes().await.unwrap_or_default();
        Err(classify_error(
            status.as_u16(),
            error_type.as_deref(),
            &body,
            retry_after,
        ))
    }
}

#[async_trait::async_trait]
impl ModelBackend for BedrockBackend {
    async fn chat(&self, _request: &ChatRequest) -> Result<ChatResponse, BackendError> {
        Err(BackendError::new(
            ErrorKind::Unsupported,
            "the bedrock backend runs record bodies as they are, not neutral chat requests",
        ))
    }

    async fn embed(&self, _request: &EmbedRequest) -> Result<EmbedResponse, BackendError> {
        Err(BackendError::new(
            ErrorKind::Unsupported,
            "the bedrock backend runs record bodies as they are, not neutral embedding requests",
        ))
    }

    fn info(&self) -> BackendInfo {
        BackendInfo {
            chat: false,
            embed: false,
            runs_native: true,
            max_embed_batch: None,
        }
    }

    async fn invoke_native(&self, call: NativeCall<'_>) -> Result<NativeAnswer, BackendError> {
        match call {
            NativeCall::Converse(body) => {
                let response = self.post(&self.converse_url, body).await?;
                let bytes = response.bytes().await.map_err(transport_error)?;
                let usage = converse_usage(&bytes)?;
                Ok(NativeAnswer {
                    body: bytes.to_vec(),
                    input_tokens: usage.0,
                    output_tokens: usage.1,
                })
            }
            NativeCall::InvokeModel(body) => {
                let response = self.post(&self.invoke_url, body).await?;
                let headers = (
                    token_header(response.headers(), INPUT_TOKENS_HEADER),
                    token_header(response.headers(), OUTPUT_TOKENS_HEADER),
                );
                let bytes = response.bytes().await.map_err(transport_error)?;
                let (input_tokens, output_tokens) = match headers {
                    (Some(input), Some(output)) => {
                        ensure_json(&bytes)?;
                        (input, output)
                    }
                    (input, output) => {
                        let (body_input, body_output) = invoke_usage(&bytes)?;
                        (input.unwrap_or(body_input), output.unwrap_or(body_output))
                    }
                };
                Ok(NativeAnswer {
                    body: bytes.to_vec(),
                    input_tokens,
                    output_tokens,
                })
            }
        }
    }
}

// ---- answers -------------------------------------------------------------------------------

#[derive(Deserialize)]
struct ConverseWire {
    #[serde(default)]
    usage: Option<ConverseUsageWire>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConverseUsageWire {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
}

/// `usage.inputTokens` / `usage.outputTokens` of a Converse answer (0 when absent).
fn converse_usage(body: &[u8]) -> Result<(u64, u64), BackendError> {
    let answer: ConverseWire = serde_json::from_slice(body).map_err(protocol_error)?;
    Ok(answer
        .usage
        .map_or((0, 0), |u| (u.input_tokens, u.output_tokens)))
}

fn ensure_json(body: &[u8]) -> Result<(), BackendError> {
    serde_json::from_slice::<serde::de::IgnoredAny>(body).map_err(protocol_error)?;
    Ok(())
}

/// Token counts from a native answer body when the headers are missing: the usage fields of
/// the families of spec A6 (Anthropic, Nova, Titan text and embeddings, Llama), else 0.
fn invoke_usage(body: &[u8]) -> Result<(u64, u64), BackendError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(protocol_error)?;
    let n = |v: &serde_json::Value| v.as_u64();
    let usage = &value["usage"];
    let input = n(&usage["input_tokens"])
        .or_else(|| n(&usage["inputTokens"]))
        .or_else(|| n(&value["inputTextTokenCount"]))
        .or_else(|| n(&value["prompt_token_count"]))
        .unwrap_or(0);
    let output = n(&usage["output_tokens"])
        .or_else(|| n(&usage["outputTokens"]))
        .or_else(|| {
            value["results"]
                .as_array()
                .map(|results| results.iter().filter_map(|r| n(&r["tokenCount"])).sum())
        })
        .or_else(|| n(&value["generation_token_count"]))
        .unwrap_or(0);
    Ok((input, output))
}

fn token_header(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

fn protocol_error(e: serde_json::Error) -> BackendError {
    BackendError::new(
        ErrorKind::Protocol,
        format!("cannot parse Bedrock's answer: {e}"),
    )
}

// ---- errors --------------------------------------------------------------------------------

#[derive(Deserialize)]
struct ErrorWire {
    #[serde(default, rename = "__type")]
    kind: Option<String>,
    #[serde(default, alias = "Message")]
    message: Option<String>,
}

/// The retry class of a Bedrock error type, `None` for a type not listed here.
fn error_kind(error_type: &str) -> Option<ErrorKind> {
    Some(match error_type {
        "ThrottlingException" | "ModelNotReadyException" | "TooManyRequestsException" => {
            ErrorKind::RateLimited
        }
        "ServiceUnavailableException" | "InternalServerException" | "InternalFailure" => {
            ErrorKind::Server
        }
        "ModelTimeoutException" | "RequestTimeoutException" => ErrorKind::Timeout,
        "ValidationException"
        | "AccessDeniedException"
        | "ResourceNotFoundException"
        | "ModelErrorException"
        | "ServiceQuotaExceededException"
        | "ConflictException"
        | "ModelStreamErrorException"
        | "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "IncompleteSignatureException"
        | "MissingAuthenticationTokenException"
        | "ExpiredTokenException"
        | "SerializationException"
        | "UnknownOperationException" => ErrorKind::Client,
        _ => return None,
    })
}

/// `ThrottlingException:http://internal.amazon.com/...` or `com.amazon.coral#Throttling...`
/// → `ThrottlingException`.
fn short_error_type(raw: &str) -> &str {
    let raw = raw.split(':').next().unwrap_or(raw);
    raw.rsplit('#').next().unwrap_or(raw).trim()
}

/// A non-2xx answer as a classified error, message `"<ErrorType>: <message>"`.
fn classify_error(
    status: u16,
    header_type: Option<&str>,
    body: &[u8],
    retry_after: Option<Duration>,
) -> BackendError {
    let wire = serde_json::from_slice::<ErrorWire>(body).ok();
    let error_type = header_type
        .map(short_error_type)
        .filter(|t| !t.is_empty())
        .or_else(|| {
            wire.as_ref()
                .and_then(|w| w.kind.as_deref())
                .map(short_error_type)
                .filter(|t| !t.is_empty())
        });
    let message = wire
        .as_ref()
        .and_then(|w| w.message.as_deref())
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
        .unwrap_or_else(|| body_excerpt(status, body));
    let mut error = BackendError::from_status(status, message, retry_after);
    if let Some(error_type) = error_type {
        if let Some(kind) = error_kind(error_type) {
            error.kind = kind;
        }
        error.message = format!("{error_type}: {}", error.message);
    }
    error
}

fn setup_error(message: impl Into<String>) -> BackendError {
    BackendError::new(ErrorKind::Client, message)
}

fn signing_error(e: &dyn std::error::Error) -> BackendError {
    setup_error(format!("cannot sign the request: {}", error_chain(e)))
}

fn parse_url(url: &str) -> Result<Url, BackendError> {
    Url::parse(url).map_err(|e| setup_error(format!("invalid Bedrock URL {url:?}: {e}")))
}

/// Percent-encodes everything but RFC 3986's unreserved characters, so a model id's `:` and an
/// ARN's `/` stay inside one path segment.
fn encode_path_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len() + 8);
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

// ---- credentials and region ----------------------------------------------------------------

/// The settings of one profile from the shared credentials file and the config file.
#[derive(Debug, Default)]
struct Profile {
    name: String,
    /// From the credentials file's `[name]`.
    credentials: HashMap<String, String>,
    /// From the config file's `[profile name]` (or `[default]`).
    config: HashMap<String, String>,
    /// The files read, for error messages.
    searched: Vec<PathBuf>,
}

impl Profile {
    /// Reads the profile `explicit`, else `AWS_PROFILE`, else `default`. An explicit profile that
    /// neither file has is an error; a missing file is empty.
    fn load(explicit: Option<&str>, env: &AwsEnvironment) -> Result<Profile, BackendError> {
        let name = explicit
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .or_else(|| env.var("AWS_PROFILE"))
            .or_else(|| env.var("AWS_DEFAULT_PROFILE"))
            .unwrap_or("default")
            .to_owned();
        let mut profile = Profile {
            name,
            ..Profile::default()
        };
        let mut found = false;
        if let Some(path) = env.file("AWS_SHARED_CREDENTIALS_FILE", "credentials") {
            if let Some(text) = read_optional(&path)?
                && let Some(section) = ini_section(&text, |s| s == profile.name)
            {
                profile.credentials = section;
                found = true;
            }
            profile.searched.push(path);
        }
        if let Some(path) = env.file("AWS_CONFIG_FILE", "config") {
            if let Some(text) = read_optional(&path)? {
                let wanted = format!("profile {}", profile.name);
                let is_default = profile.name == "default";
                let section = ini_section(&text, |s| {
                    normalize_spaces(s) == wanted || (is_default && s == "default")
                });
                if let Some(section) = section {
                    profile.config = section;
                    found = true;
                }
            }
            profile.searched.push(path);
        }
        if explicit.is_some() && !found {
            return Err(setup_error(format!(
                "AWS profile {:?} not found in {}",
                profile.name,
                profile.searched_text()
            )));
        }
        Ok(profile)
    }

    /// A key from the credentials file, else from the config file.
    fn get(&self, key: &str) -> Option<&str> {
        self.credentials
            .get(key)
            .or_else(|| self.config.get(key))
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn searched_text(&self) -> String {
        if self.searched.is_empty() {
            return "no AWS files (no home folder)".to_owned();
        }
        self.searched
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" and ")
    }
}

fn normalize_spaces(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn read_optional(path: &Path) -> Result<Option<String>, BackendError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(setup_error(format!(
            "cannot read the AWS file {}: {e}",
            path.display()
        ))),
    }
}

/// The keys of the first `[section]` whose trimmed name `matches`, with later sections of the
/// same name merged in. Keys are lowercased; `#` and `;` start comment lines; indented lines
/// (sub-settings such as `s3 =` blocks) are skipped.
fn ini_section(text: &str, matches: impl Fn(&str) -> bool) -> Option<HashMap<String, String>> {
    let mut section: Option<HashMap<String, String>> = None;
    let mut inside = false;
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[') {
            let name = name.split(']').next().unwrap_or(name).trim();
            inside = matches(name);
            if inside && section.is_none() {
                section = Some(HashMap::new());
            }
            continue;
        }
        if !inside || raw.starts_with([' ', '\t']) {
            continue;
        }
        if let (Some(map), Some((key, value))) = (section.as_mut(), line.split_once('=')) {
            map.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    section
}

fn resolve_credentials(
    explicit_profile: bool,
    env: &AwsEnvironment,
    profile: &Profile,
) -> Result<Credentials, BackendError> {
    if !explicit_profile {
        match (
            env.var("AWS_ACCESS_KEY_ID"),
            env.var("AWS_SECRET_ACCESS_KEY"),
        ) {
            (Some(id), Some(secret)) => {
                let token = env.var("AWS_SESSION_TOKEN").map(str::to_owned);
                return Ok(Credentials::new(id, secret, token, None, "environment"));
            }
            (Some(_), None) => {
                return Err(setup_error(
                    "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not",
                ));
            }
            (None, Some(_)) => {
                return Err(setup_error(
                    "AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not",
                ));
            }
            (None, None) => {}
        }
    }
    match (
        profile.get("aws_access_key_id"),
        profile.get("aws_secret_access_key"),
    ) {
        (Some(id), Some(secret)) => {
            let token = profile.get("aws_session_token").map(str::to_owned);
            Ok(Credentials::new(id, secret, token, None, "profile"))
        }
        (Some(_), None) | (None, Some(_)) => Err(setup_error(format!(
            "AWS profile {:?} needs both aws_access_key_id and aws_secret_access_key",
            profile.name
        ))),
        (None, None) => {
            let unsupported = [
                "sso_session",
                "sso_start_url",
                "credential_process",
                "role_arn",
                "web_identity_token_file",
            ]
            .into_iter()
            .find(|key| profile.get(key).is_some());
            let message = match unsupported {
                Some(key) => format!(
                    "AWS profile {:?} uses {key}, which batchd does not read: set \
                     AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) instead, \
                     e.g. from `aws configure export-credentials --format env`",
                    profile.name
                ),
                None => format!(
                    "no AWS credentials found: set AWS_ACCESS_KEY_ID and \
                     AWS_SECRET_ACCESS_KEY, or put aws_access_key_id and aws_secret_access_key \
                     in profile {:?} of {}",
                    profile.name,
                    profile.searched_text()
                ),
            };
            Err(setup_error(message))
        }
    }
}

fn resolve_region(
    configured: Option<&str>,
    env: &AwsEnvironment,
    profile: &Profile,
) -> Result<String, BackendError> {
    configured
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .or_else(|| env.var("AWS_REGION"))
        .or_else(|| env.var("AWS_DEFAULT_REGION"))
        .or_else(|| profile.config.get("region").map(String::as_str))
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| {
            setup_error(format!(
                "no AWS region for the Bedrock backend: set `region` on the model, AWS_REGION, \
                 or region in profile {:?} of the AWS config file",
                profile.name
            ))
        })
}

#[cfg(test)]
#[path = "bedrock_tests.rs"]
mod tests;
