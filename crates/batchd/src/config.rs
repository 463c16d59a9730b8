//! `batchd.toml`: storage, engine defaults and the models jobs may name. Read once at
//! start-up, together with the few environment variables batchd uses.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use batchd_api::OpenAiConfig;
use batchd_engine::scheduler::{ClusterConfig, SchedulerConfig};
use batchd_engine::{BlankLines, EngineConfig, JobSpec, Quotas, RecordOptions, RetryPolicy};
use batchd_formats::analysis::Prices;
use batchd_formats::converse::ConverseOptions;
use batchd_formats::native::ModelFamily;
use batchd_storage::{StorageConfig, StorageUri};
use serde::{Deserialize, Deserializer};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Local state: the job database and `s3://` buckets when no endpoint is set.
    pub data_dir: Option<PathBuf>,
    /// A PostgreSQL job store (`postgres://...`) instead of `<data_dir>/batchd.sqlite`
    /// (`batchd serve` and `batchd results`; `--database-url` wins).
    pub database_url: Option<String>,
    #[serde(default)]
    pub storage: StorageSection,
    #[serde(default)]
    pub engine: EngineSection,
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub auth: AuthSection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub cluster: ClusterSection,
    #[serde(default)]
    pub quotas: QuotasSection,
    #[serde(default)]
    pub embedded: crate::embedded::EmbeddedSection,
    #[serde(default)]
    pub openai: OpenAiSection,
    #[serde(default)]
    pub events: crate::events::EventsSection,
    #[serde(default, deserialize_with = "models")]
    pub models: Vec<ModelConfig>,
}

/// Scheduling limits of `batchd serve`; the defaults are [`SchedulerConfig`]'s.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Jobs executing at once.
    pub max_running_jobs: usize,
    /// Submitted + running jobs per model ("Sum of in-progress and submitted batch inference
    /// jobs using a base model"); more is ServiceQuotaExceededException.
    pub max_jobs_per_model: u64,
    /// Seconds in one hour of `timeoutDurationInHours` (3600; shorter for tests).
    pub timeout_unit_seconds: f64,
    /// `timeoutDurationInHours` of a request without one.
    pub default_timeout_hours: u32,
}

impl Default for LimitsSection {
    fn default() -> Self {
        let s = SchedulerConfig::default();
        Self {
            max_running_jobs: s.max_running_jobs,
            max_jobs_per_model: s.max_active_jobs_per_model,
            timeout_unit_seconds: s.timeout_unit.as_secs_f64(),
            default_timeout_hours: s.default_timeout_hours,
        }
    }
}

/// `[cluster]`: instances of `batchd serve` sharing one Postgres job store (and one S3-compatible
/// store); the defaults are [`ClusterConfig`]'s. Used only with a Postgres store.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// This instance's name in leases; unique among the instances (default: random per start).
    pub instance_id: Option<String>,
    /// Seconds a lease lasts unrenewed: how soon another instance takes over a stalled one's
    /// chunks.
    pub lease_seconds: f64,
    /// Records per chunk of a Bedrock job (chunks are what instances claim).
    pub chunk_records: u64,
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self {
            instance_id: None,
            lease_seconds: ClusterConfig::DEFAULT_LEASE.as_secs_f64(),
            chunk_records: ClusterConfig::DEFAULT_CHUNK_RECORDS,
        }
    }
}

impl ClusterSection {
    /// The scheduler's cluster settings; a random instance id when none is configured.
    pub fn cluster_config(&self) -> anyhow::Result<ClusterConfig> {
        if !(self.lease_seconds.is_finite() && self.lease_seconds >= 0.1) {
            bail!("cluster.lease_seconds must be at least 0.1");
        }
        if self.chunk_records == 0 {
            bail!("cluster.chunk_records must be at least 1");
        }
        let instance_id = match &self.instance_id {
            Some(id) if id.trim().is_empty() => bail!("cluster.instance_id must not be empty"),
            Some(id) => id.clone(),
            None => format!(
                "batchd-{}-{}",
                std::process::id(),
                batchd_engine::ids::unguessable_alnum(8)?
            ),
        };
        Ok(ClusterConfig {
            instance_id,
            lease: Duration::from_secs_f64(self.lease_seconds),
            chunk_records: self.chunk_records,
        })
    }
}

/// Bedrock's batch quotas, checked while a server job validates; the defaults are
/// [`Quotas`]'s.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotasSection {
    /// "Records per input file per batch inference job".
    pub records_per_input_file: u64,
    /// "Records per batch inference job".
    pub records_per_job: u64,
    /// "Minimum number of records per batch inference job" (Bedrock: 100).
    pub min_records_per_job: u64,
    /// "Batch inference input file size (in GB)", GB = 10^9 bytes.
    pub input_file_size_gb: f64,
    /// "Batch inference job size (in GB)".
    pub job_size_gb: f64,
}

impl Default for QuotasSection {
    fn default() -> Self {
        let q = Quotas::default();
        let gb = |bytes: u64| bytes as f64 / Quotas::BYTES_PER_GB as f64;
        Self {
            records_per_input_file: q.max_records_per_file,
            records_per_job: q.max_records_per_job,
            min_records_per_job: q.min_records_per_job,
            input_file_size_gb: gb(q.max_file_bytes),
            job_size_gb: gb(q.max_job_bytes),
        }
    }
}

impl QuotasSection {
    pub fn quotas(&self) -> Quotas {
        let bytes = |g: f64| (g * Quotas::BYTES_PER_GB as f64).max(0.0) as u64;
        Quotas {
            max_records_per_file: self.records_per_input_file,
            max_records_per_job: self.records_per_job,
            min_records_per_job: self.min_records_per_job,
            max_file_bytes: bytes(self.input_file_size_gb),
            max_job_bytes: bytes(self.job_size_gb),
        }
    }
}

/// `[openai]`: the OpenAI API's files; the defaults are [`OpenAiConfig`]'s.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenAiSection {
    /// Where uploaded files are stored (a local folder or an `s3://` prefix); default
    /// `<data-dir>/files/`.
    pub files_location: Option<String>,
    /// The largest file `POST /v1/files` takes (bytes).
    pub max_file_bytes: u64,
}

impl Default for OpenAiSection {
    fn default() -> Self {
        Self {
            files_location: None,
            max_file_bytes: OpenAiConfig::DEFAULT_MAX_FILE_BYTES,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    /// S3 or S3-compatible endpoint; credentials and region come from `AWS_*` variables.
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
}

/// `[engine]`; the defaults are the engine's ([`EngineConfig`], [`RetryPolicy`], [`JobSpec`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    /// Records in flight per model, unless the model sets `max_concurrency`.
    pub concurrency: usize,
    pub max_attempts: u32,
    pub attempt_timeout_secs: f64,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    pub retry_after_max_secs: f64,
    pub max_line_bytes: usize,
    /// "skip" (default) or "reject".
    pub blank_lines: BlankLines,
    /// After SIGTERM/SIGINT (or a stop), records in flight get this long to finish.
    pub shutdown_grace_seconds: f64,
    /// While a backend refuses connections, records wait this long before failing.
    pub backend_down_seconds: f64,
    /// Remote backends' concurrency adapts (AIMD, up to the model's concurrency).
    pub adaptive_concurrency: bool,
}

impl Default for EngineSection {
    fn default() -> Self {
        let engine = EngineConfig::default();
        let retry = &engine.retry;
        Self {
            concurrency: JobSpec::DEFAULT_CONCURRENCY,
            max_attempts: retry.max_attempts,
            attempt_timeout_secs: retry.attempt_timeout.as_secs_f64(),
            backoff_base_ms: retry.base_backoff.as_millis() as u64,
            backoff_max_ms: retry.max_backoff.as_millis() as u64,
            retry_after_max_secs: retry.max_retry_after.as_secs_f64(),
            max_line_bytes: engine.max_line_bytes,
            blank_lines: engine.blank_lines,
            shutdown_grace_seconds: engine.shutdown_grace.as_secs_f64(),
            backend_down_seconds: engine.backend_down.as_secs_f64(),
            adaptive_concurrency: true,
        }
    }
}

/// `[server]`; the defaults are [`SchedulerConfig`]'s and [`batchd_api::auth`]'s.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// The region job ARNs carry.
    pub region: String,
    /// The account of every caller when no keys are configured (and of `batchd run`'s jobs).
    pub account_id: String,
    /// Open connections at most; more wait until one closes.
    pub max_connections: usize,
    /// Seconds a client has to send a request's head (and, with TLS, to finish the handshake).
    pub header_timeout_seconds: f64,
    /// Seconds a request body may go without sending anything.
    pub body_timeout_seconds: f64,
    /// PEM certificate chain and private key: serve HTTPS (`--tls-cert` / `--tls-key` win).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// A configured model id that runs any Bedrock model id no entry answers to (off when
    /// unset; `batchd serve` only).
    pub catch_all_model: Option<String>,
}

impl Default for ServerSection {
    fn default() -> Self {
        let limits = crate::listener::Limits::default();
        Self {
            region: SchedulerConfig::default().region,
            account_id: batchd_api::auth::ANONYMOUS_ACCOUNT.into(),
            max_connections: limits.max_connections,
            header_timeout_seconds: limits.header_timeout.as_secs_f64(),
            body_timeout_seconds: limits.body_timeout.as_secs_f64(),
            tls_cert: None,
            tls_key: None,
            catch_all_model: None,
        }
    }
}

impl ServerSection {
    /// The accept loop's limits.
    pub fn limits(&self) -> crate::listener::Limits {
        let header = Duration::from_secs_f64(self.header_timeout_seconds.clamp(0.001, 1e9));
        crate::listener::Limits {
            max_connections: self.max_connections,
            handshake_timeout: header,
            header_timeout: header,
            body_timeout: Duration::from_secs_f64(self.body_timeout_seconds.clamp(0.001, 1e9)),
            ..crate::listener::Limits::default()
        }
    }
}

/// `[auth]`: who may call `batchd serve`, and as which account. No keys and no tokens: anyone,
/// as `server.account_id`, and only on a loopback address.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// Regions a SigV4 request may be signed for; unset: any.
    pub regions: Option<Vec<String>>,
    /// `[[auth.keys]]`: SigV4 access keys.
    pub keys: Vec<KeyEntry>,
    /// `[[auth.tokens]]`: bearer keys (`Authorization: Bearer ...`).
    pub tokens: Vec<TokenEntry>,
}

/// A secret written in the config file; `Debug` does not show it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct ConfigSecret(String);

impl std::fmt::Debug for ConfigSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// One `[[auth.keys]]` entry: the secret in the file, in an environment variable or in a file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    pub access_key_id: String,
    pub secret_access_key: Option<ConfigSecret>,
    pub secret_access_key_env: Option<String>,
    pub secret_access_key_file: Option<PathBuf>,
    pub account_id: String,
}

/// One `[[auth.tokens]]` entry: the key in the file, in an environment variable, or its
/// SHA-256 in a file (`sha256:<hex>`, so the key itself is stored nowhere on the server).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub token: Option<ConfigSecret>,
    pub token_env: Option<String>,
    pub token_file: Option<PathBuf>,
    pub account_id: String,
}

fn is_account_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

/// The one secret source an entry names: the text, an environment variable, or a file.
enum SecretSource<'a> {
    Text(&'a str),
    Env(&'a str),
    File(&'a Path),
}

fn secret_source<'a>(
    what: &str,
    keys: [&str; 3],
    text: Option<&'a ConfigSecret>,
    env: Option<&'a str>,
    file: Option<&'a Path>,
) -> anyhow::Result<SecretSource<'a>> {
    match (text, env, file) {
        (Some(t), None, None) => Ok(SecretSource::Text(&t.0)),
        (None, Some(e), None) => Ok(SecretSource::Env(e)),
        (None, None, Some(f)) => Ok(SecretSource::File(f)),
        _ => bail!("{what}: set exactly one of {}", keys.join(", ")),
    }
}

/// Reads a secret from the environment or a file (trailing newline dropped). Errors name the
/// variable or file, never the value.
fn read_secret(what: &str, source: SecretSource<'_>) -> anyhow::Result<String> {
    let value = match source {
        SecretSource::Text(text) => text.to_owned(),
        SecretSource::Env(var) => std::env::var(var)
            .with_context(|| format!("{what}: environment variable {var} is not set"))?,
        SecretSource::File(path) => std::fs::read_to_string(path)
            .with_context(|| format!("{what}: cannot read {}", path.display()))?
            .trim_end_matches(['\n', '\r'])
            .to_owned(),
    };
    if value.is_empty() {
        bail!("{what}: the secret is empty");
    }
    Ok(value)
}

/// A `[[models]]` entry: a model id jobs may name, and the backend that serves it. The keys
/// every backend takes are fields here; `backend = "..."` picks a [`Backend`] variant, which
/// takes the rest of the entry's keys and refuses any other.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelConfig {
    /// The Bedrock model id jobs name.
    pub id: String,
    /// The model name the backend knows (openai: the server's, bedrock: Bedrock's model id,
    /// embedded: which embedded model); defaults to `id`.
    pub model: Option<String>,
    pub max_concurrency: Option<usize>,
    /// Whether Converse records with `toolConfig` are accepted (default: [`ConverseOptions`]).
    pub allow_tool_config: Option<bool>,
    /// The InvokeModel body format of a custom model id (`anthropic`, `titan-text`,
    /// `titan-embed`, `nova`, `llama`, `mistral`); Bedrock ids imply theirs.
    #[serde(default, deserialize_with = "family")]
    pub format: Option<ModelFamily>,
    /// Embedding records per backend call (default: [`RecordOptions::DEFAULT_EMBED_BATCH`]).
    pub embed_batch_size: Option<usize>,
    /// Prices per million tokens, for the cost in result analyses (`batchd results`); both
    /// or neither.
    pub price_per_million_input_tokens: Option<f64>,
    pub price_per_million_output_tokens: Option<f64>,
    /// `backend = "openai" | "bedrock" | "embedded"` and that backend's own keys.
    #[serde(flatten)]
    pub backend: Backend,
}

/// The backend of a model entry, with the keys only it takes. Serde's tag and
/// `deny_unknown_fields` on each variant make an unknown backend, a key of another backend and
/// a missing required key errors.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "backend")]
pub enum Backend {
    /// An OpenAI-compatible server (vLLM, SGLang, llama.cpp's `llama-server`, Ollama).
    #[serde(rename = "openai")]
    OpenAi(OpenAiModel),
    /// bedrock-runtime on demand.
    #[serde(rename = "bedrock")]
    Bedrock(BedrockModel),
    /// One of the models built into batchd (`model` names which).
    #[serde(rename = "embedded")]
    Embedded(EmbeddedModel),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiModel {
    /// The OpenAI-compatible server's base URL (`http://host:port/v1`).
    pub base_url: String,
    /// Name of the environment variable holding the API key, if the server needs one.
    pub api_key_env: Option<String>,
    /// Start records whose prompts begin alike one after another, so the server's prompt
    /// cache hits (output order unchanged); default [`RecordOptions::DEFAULT_GROUP_PREFIXES`].
    pub group_prefixes: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BedrockModel {
    /// The bedrock-runtime endpoint (default: AWS's, for the region).
    pub endpoint_url: Option<String>,
    /// The region (default: the AWS environment/profile chain).
    pub region: Option<String>,
    /// The AWS profile to read credentials and region from.
    pub profile: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedModel {}

impl Backend {
    /// The `backend = "..."` value of this variant.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::OpenAi(_) => "openai",
            Backend::Bedrock(_) => "bedrock",
            Backend::Embedded(_) => "embedded",
        }
    }
}

/// `[[models]]`: each entry is read on its own (a seed that knows its index), so that an
/// error names the entry (`models[1] (id)`), the key (serde_path_to_error) and, through the
/// TOML deserializer, the entry's line.
fn models<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<ModelConfig>, D::Error> {
    struct Entries;
    impl<'de> serde::de::Visitor<'de> for Entries {
        type Value = Vec<ModelConfig>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("[[models]] tables")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut models = Vec::new();
            while let Some(model) = seq.next_element_seed(Entry(models.len()))? {
                models.push(model);
            }
            Ok(models)
        }
    }
    deserializer.deserialize_seq(Entries)
}

/// The `[[models]]` entry at this index. It is read as a table and checked inside the
/// visitor, so that the TOML deserializer gives the error this entry's position.
struct Entry(usize);

impl<'de> serde::de::DeserializeSeed<'de> for Entry {
    type Value = ModelConfig;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<ModelConfig, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Entry {
    type Value = ModelConfig;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a [[models]] table")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<ModelConfig, A::Error> {
        let entry = toml::Table::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
        let mut name = format!("models[{}]", self.0);
        if let Some(id) = entry.get("id").and_then(toml::Value::as_str) {
            name.push_str(&format!(" ({id})"));
        }
        let backend = entry
            .get("backend")
            .and_then(toml::Value::as_str)
            .map(str::to_owned);
        serde_path_to_error::deserialize(toml::Value::Table(entry)).map_err(|e| {
            let path = e.path().to_string();
            // Keys of the flattened backend part have no path of their own ("?"): name the
            // backend, whose keys serde's message lists.
            if !matches!(path.as_str(), "." | "?") {
                name.push_str(&format!(": {path}"));
            } else if let Some(backend) = backend {
                name.push_str(&format!(": backend {backend:?}"));
            }
            serde::de::Error::custom(format!("{name}: {}", e.inner().message()))
        })
    }
}

/// `format = "..."`: a model family by its config name.
fn family<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<ModelFamily>, D::Error> {
    let name = String::deserialize(deserializer)?;
    ModelFamily::from_name(&name).map(Some).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "unknown format {name:?}; one of {}",
            ModelFamily::ALL.map(ModelFamily::name).join(", ")
        ))
    })
}

impl ModelConfig {
    /// The server this model's concurrency limits, as instances sharing a store compare it:
    /// instances whose model calls the same server share its `max_concurrency`; an embedded
    /// model is each instance's own.
    pub fn shared_backend(&self) -> Option<String> {
        match &self.backend {
            Backend::OpenAi(m) => Some(m.base_url.trim_end_matches('/').to_owned()),
            Backend::Bedrock(m) => Some(format!(
                "bedrock:{}",
                m.endpoint_url
                    .as_deref()
                    .or(m.region.as_deref())
                    .unwrap_or("default")
            )),
            Backend::Embedded(_) => None,
        }
    }

    /// A model entry with every optional key unset.
    pub fn new(id: impl Into<String>, backend: Backend) -> Self {
        Self {
            id: id.into(),
            model: None,
            max_concurrency: None,
            allow_tool_config: None,
            format: None,
            embed_batch_size: None,
            price_per_million_input_tokens: None,
            price_per_million_output_tokens: None,
            backend,
        }
    }

    /// Answers with embeddings (a Titan embedding family, or the built-in embedding model):
    /// what the model listing says.
    pub fn is_embedding(&self) -> bool {
        self.family().is_some_and(ModelFamily::is_embedding)
            || (matches!(self.backend, Backend::Embedded(_))
                && self.model.as_deref() == Some(crate::embedded::EMBEDDINGS_MODEL))
    }

    /// The InvokeModel body family: `format`, else the one the id (or the backend's model
    /// name) implies.
    pub fn family(&self) -> Option<ModelFamily> {
        self.format.or_else(|| {
            ModelFamily::from_model_id(&self.id)
                .or_else(|| self.model.as_deref().and_then(ModelFamily::from_model_id))
        })
    }

    /// How this model's records are read and sent.
    pub fn record_options(&self) -> RecordOptions {
        let defaults = RecordOptions::default();
        RecordOptions {
            converse: ConverseOptions {
                allow_tool_config: self
                    .allow_tool_config
                    .unwrap_or(defaults.converse.allow_tool_config),
            },
            family: self.family(),
            embed_batch_size: self
                .embed_batch_size
                .unwrap_or(defaults.embed_batch_size)
                .max(1),
            prices: self.prices(),
            group_prefixes: match &self.backend {
                Backend::OpenAi(m) => m
                    .group_prefixes
                    .unwrap_or(RecordOptions::DEFAULT_GROUP_PREFIXES),
                Backend::Bedrock(_) | Backend::Embedded(_) => defaults.group_prefixes,
            },
        }
    }

    /// The model's token prices, when the config gives them.
    pub fn prices(&self) -> Option<Prices> {
        Some(Prices {
            per_million_input_tokens: self.price_per_million_input_tokens?,
            per_million_output_tokens: self.price_per_million_output_tokens?,
        })
    }

    /// The model name the backend knows: `model`, else the id.
    pub fn backend_model(&self) -> String {
        self.model.clone().unwrap_or_else(|| self.id.clone())
    }
}

impl Config {
    /// Reads `path`, or returns the defaults when there is no file.
    /// Built-in models are added unless the file has entries with their ids.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        Self::load_file(path).map(Self::with_builtins)
    }

    fn with_builtins(mut self) -> Self {
        use crate::embedded::{
            BUILTIN_CHAT_ALIAS, BUILTIN_CHAT_ID, BUILTIN_EMBEDDINGS_ALIAS, BUILTIN_EMBEDDINGS_ID,
            CHAT_MODEL, EMBEDDINGS_MODEL,
        };
        for (id, model) in [
            (BUILTIN_CHAT_ID, CHAT_MODEL),
            (BUILTIN_EMBEDDINGS_ID, EMBEDDINGS_MODEL),
            (BUILTIN_CHAT_ALIAS, CHAT_MODEL),
            (BUILTIN_EMBEDDINGS_ALIAS, EMBEDDINGS_MODEL),
        ] {
            if !self.models.iter().any(|m| m.id == id) {
                let mut entry = ModelConfig::new(id, Backend::Embedded(EmbeddedModel {}));
                entry.model = Some(model.into());
                // Titan embedding records run on the built-in embedding model as they are.
                if model == EMBEDDINGS_MODEL {
                    entry.format = Some(ModelFamily::TitanEmbed);
                }
                self.models.push(entry);
            }
        }
        self
    }

    fn load_file(path: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let config: Config =
            toml::from_str(&text).with_context(|| format!("{}: invalid config", path.display()))?;
        config
            .check()
            .with_context(|| format!("{}: invalid config", path.display()))?;
        Ok(config)
    }

    fn check(&self) -> anyhow::Result<()> {
        let mut seen = HashMap::new();
        for (i, m) in self.models.iter().enumerate() {
            if let Some(first) = seen.insert(m.id.as_str(), i) {
                bail!(
                    "models[{i}]: id {:?} is already used by models[{first}]",
                    m.id
                );
            }
            if m.embed_batch_size == Some(0) {
                bail!(
                    "models[{i}] ({}): embed_batch_size must be at least 1",
                    m.id
                );
            }
            if let Backend::Embedded(_) = m.backend {
                crate::embedded::embedded_kind(m.model.as_deref(), &m.id)
                    .with_context(|| format!("models[{i}]"))?;
            }
            match (
                m.price_per_million_input_tokens,
                m.price_per_million_output_tokens,
            ) {
                (Some(_), None) | (None, Some(_)) => bail!(
                    "models[{i}] ({}): set both price_per_million_input_tokens and \
                     price_per_million_output_tokens, or neither",
                    m.id
                ),
                (Some(a), Some(b)) if !(a.is_finite() && b.is_finite() && a >= 0.0 && b >= 0.0) => {
                    bail!("models[{i}] ({}): prices must be numbers, 0 or more", m.id)
                }
                _ => {}
            }
            if m.max_concurrency == Some(0) {
                bail!("models[{i}] ({}): max_concurrency must be at least 1", m.id);
            }
        }
        if self.engine.concurrency == 0 {
            bail!("engine.concurrency must be at least 1");
        }
        if self.engine.max_attempts == 0 {
            bail!("engine.max_attempts must be at least 1");
        }
        if !self.engine.attempt_timeout_secs.is_finite() || self.engine.attempt_timeout_secs <= 0.0
        {
            bail!("engine.attempt_timeout_secs must be positive");
        }
        if let Some(url) = &self.events.webhook_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            bail!("events.webhook_url: {url:?} is not an http:// or https:// URL");
        }
        if let Some(location) = &self.openai.files_location {
            StorageUri::parse(location).context("openai.files_location")?;
        }
        if self.limits.max_running_jobs == 0 {
            bail!("limits.max_running_jobs must be at least 1");
        }
        if !self.limits.timeout_unit_seconds.is_finite() || self.limits.timeout_unit_seconds <= 0.0
        {
            bail!("limits.timeout_unit_seconds must be positive");
        }
        for (key, value) in [
            ("shutdown_grace_seconds", self.engine.shutdown_grace_seconds),
            ("backend_down_seconds", self.engine.backend_down_seconds),
        ] {
            if !value.is_finite() || value < 0.0 {
                bail!("engine.{key} must be a number of seconds, 0 or more");
            }
        }
        for (key, value) in [
            ("header_timeout_seconds", self.server.header_timeout_seconds),
            ("body_timeout_seconds", self.server.body_timeout_seconds),
        ] {
            if !value.is_finite() || value <= 0.0 {
                bail!("server.{key} must be a positive number of seconds");
            }
        }
        if self.server.max_connections == 0 {
            bail!("server.max_connections must be at least 1");
        }
        Ok(())
    }

    /// The model entry for `id`: the user's config first, then built-in models.
    /// The model `id` names: as written, or any other form of a configured id (an ARN, a
    /// cross-region profile id; [`batchd_core::ModelId`]).
    pub fn model(&self, id: &str) -> anyhow::Result<&ModelConfig> {
        let found = batchd_core::ModelId::new(id)
            .resolve(|candidate| self.models.iter().find(|m| m.id == candidate));
        if let Some(m) = found {
            return Ok(m);
        }
        let known: Vec<&str> = self.models.iter().map(|m| m.id.as_str()).collect();
        if known.is_empty() {
            bail!(
                "unknown model id {id:?}: no models are configured; add a [[models]] entry with this id \
                 to the config file (--config)"
            );
        }
        bail!(
            "unknown model id {id:?}; configured models: {}",
            known.join(", ")
        )
    }

    pub fn data_dir(&self, flag: Option<&Path>) -> PathBuf {
        flag.map(Path::to_path_buf)
            .or_else(|| self.data_dir.clone())
            .unwrap_or_else(|| PathBuf::from("batchd-data"))
    }

    /// The job store: Postgres at `--database-url` (or `database_url`), else SQLite in the
    /// data dir.
    pub async fn open_store(
        &self,
        flag: Option<&str>,
        data_dir: &Path,
    ) -> anyhow::Result<batchd_store::SharedStore> {
        use anyhow::Context as _;
        let Some(url) = flag.or(self.database_url.as_deref()) else {
            let store = batchd_store::SqliteStore::open(&data_dir.join("batchd.sqlite"))
                .await
                .with_context(|| format!("cannot open the job store in {}", data_dir.display()))?;
            return Ok(std::sync::Arc::new(store));
        };
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            anyhow::bail!(
                "--database-url / database_url: {} is not a postgres:// URL",
                without_password(url)
            );
        }
        let store = batchd_store::PgStore::connect(url)
            .await
            .with_context(|| format!("cannot open the job store at {}", without_password(url)))?;
        Ok(std::sync::Arc::new(store))
    }

    /// Storage settings; credentials and region come from the usual `AWS_*` variables.
    pub fn storage_config(&self, data_dir: &Path) -> StorageConfig {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        StorageConfig {
            data_dir: data_dir.to_path_buf(),
            s3_endpoint: self
                .storage
                .s3_endpoint
                .clone()
                .or_else(|| env("AWS_ENDPOINT_URL_S3")),
            s3_region: self
                .storage
                .s3_region
                .clone()
                .or_else(|| env("AWS_REGION"))
                .or_else(|| env("AWS_DEFAULT_REGION")),
            s3_access_key_id: env("AWS_ACCESS_KEY_ID"),
            s3_secret_access_key: env("AWS_SECRET_ACCESS_KEY"),
            s3_session_token: env("AWS_SESSION_TOKEN"),
        }
    }

    pub fn engine_config(&self, max_attempts: Option<u32>) -> EngineConfig {
        let e = &self.engine;
        EngineConfig {
            retry: RetryPolicy {
                max_attempts: max_attempts.unwrap_or(e.max_attempts).max(1),
                attempt_timeout: Duration::from_secs_f64(e.attempt_timeout_secs),
                base_backoff: Duration::from_millis(e.backoff_base_ms),
                max_backoff: Duration::from_millis(e.backoff_max_ms),
                max_retry_after: Duration::from_secs_f64(e.retry_after_max_secs.max(0.0)),
            },
            max_line_bytes: e.max_line_bytes,
            blank_lines: e.blank_lines,
            shutdown_grace: Duration::from_secs_f64(e.shutdown_grace_seconds.clamp(0.0, 1e9)),
            backend_down: Duration::from_secs_f64(e.backend_down_seconds.clamp(0.0, 1e9)),
            ..EngineConfig::default()
        }
    }

    /// Where the OpenAI API's uploads go: `[openai] files_location`, else `<data-dir>/files/`.
    pub fn files_root(&self, data_dir: &Path) -> anyhow::Result<StorageUri> {
        match &self.openai.files_location {
            Some(location) => StorageUri::parse(location).context("openai.files_location"),
            None => Ok(StorageUri::Local(data_dir.join("files"))),
        }
    }

    /// The OpenAI API's settings: `[openai]` and the configured model ids.
    pub fn openai_config(&self) -> OpenAiConfig {
        OpenAiConfig {
            models: self.models.iter().map(|m| m.id.clone()).collect(),
            max_file_bytes: self.openai.max_file_bytes,
        }
    }

    /// `[auth]` with every secret read (from the config, the environment or files). Errors
    /// name the entry and the key, never a secret.
    pub fn auth_config(&self) -> anyhow::Result<batchd_api::auth::AuthConfig> {
        use batchd_api::auth::{AccessKey, AuthConfig, BearerKey, Secret};
        let mut keys: Vec<AccessKey> = Vec::new();
        for (i, k) in self.auth.keys.iter().enumerate() {
            let what = format!("auth.keys[{i}] ({})", k.access_key_id);
            if k.access_key_id.is_empty()
                || !k.access_key_id.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                bail!("auth.keys[{i}]: access_key_id must be letters and digits");
            }
            if keys.iter().any(|o| o.access_key_id == k.access_key_id) {
                bail!("{what}: access_key_id is used twice");
            }
            if !is_account_id(&k.account_id) {
                bail!(
                    "{what}: account_id must be 12 digits, got {:?}",
                    k.account_id
                );
            }
            let source = secret_source(
                &what,
                [
                    "secret_access_key",
                    "secret_access_key_env",
                    "secret_access_key_file",
                ],
                k.secret_access_key.as_ref(),
                k.secret_access_key_env.as_deref(),
                k.secret_access_key_file.as_deref(),
            )?;
            keys.push(AccessKey {
                access_key_id: k.access_key_id.clone(),
                secret: Secret::new(read_secret(&what, source)?),
                account_id: k.account_id.clone(),
            });
        }
        let mut tokens = Vec::new();
        for (i, t) in self.auth.tokens.iter().enumerate() {
            let what = format!("auth.tokens[{i}]");
            if !is_account_id(&t.account_id) {
                bail!(
                    "{what}: account_id must be 12 digits, got {:?}",
                    t.account_id
                );
            }
            let source = secret_source(
                &what,
                ["token", "token_env", "token_file"],
                t.token.as_ref(),
                t.token_env.as_deref(),
                t.token_file.as_deref(),
            )?;
            let hashed = matches!(source, SecretSource::File(_));
            let value = read_secret(&what, source)?;
            tokens.push(if hashed {
                BearerKey::from_hash(&value, t.account_id.clone())
                    .with_context(|| format!("{what}: token_file"))?
            } else {
                BearerKey::from_token(&value, t.account_id.clone())
            });
        }
        if let Some(regions) = &self.auth.regions
            && regions.is_empty()
        {
            bail!("auth.regions: list at least one region, or leave it out for any region");
        }
        if !is_account_id(&self.server.account_id) {
            bail!("server.account_id must be 12 digits");
        }
        Ok(AuthConfig {
            keys,
            tokens,
            regions: self.auth.regions.clone(),
            anonymous_account: self.server.account_id.clone(),
        })
    }

    /// `batchd serve`'s scheduler: `[limits]` and `[server]`.
    pub fn scheduler_config(&self) -> SchedulerConfig {
        SchedulerConfig {
            max_running_jobs: self.limits.max_running_jobs,
            max_active_jobs_per_model: self.limits.max_jobs_per_model,
            timeout_unit: Duration::from_secs_f64(self.limits.timeout_unit_seconds),
            default_timeout_hours: self.limits.default_timeout_hours,
            region: self.server.region.clone(),
            catch_all_model: self.server.catch_all_model.clone(),
            ..SchedulerConfig::default()
        }
    }
}

/// A database URL fit for a message: its password, if any, replaced.
fn without_password(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(_) => url.to_owned(),
        Err(_) => "(an unparsable URL)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_model_entry() {
        let config: Config = toml::from_str(
            r#"
            [[models]]
            id = "anthropic.claude-3-haiku-20240307-v1:0"
            backend = "openai"
            base_url = "http://127.0.0.1:8000/v1"
            model = "name-the-server-knows"
            max_concurrency = 64
            "#,
        )
        .unwrap();
        config.check().unwrap();
        let m = config
            .model("anthropic.claude-3-haiku-20240307-v1:0")
            .unwrap();
        assert_eq!(m.max_concurrency, Some(64));
        assert_eq!(m.model.as_deref(), Some("name-the-server-knows"));
        let err = config.model("nope").unwrap_err().to_string();
        assert!(err.contains("unknown model id \"nope\""), "{err}");
        // `--model-id` takes every form of the id, as the server does.
        for form in [
            "us.anthropic.claude-3-haiku-20240307-v1:0",
            "arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-3-haiku-20240307-v1:0",
            "arn:aws:bedrock:us-west-2:123456789012:inference-profile/apac.anthropic.claude-3-haiku-20240307-v1:0",
        ] {
            assert_eq!(
                config.model(form).unwrap().max_concurrency,
                Some(64),
                "{form}"
            );
        }
    }

    #[test]
    fn builtin_models_exist_without_a_file_and_config_entries_win() {
        let config = Config::load(None).unwrap();
        let chat = config.model("batchd.smollm2-135m-instruct").unwrap();
        assert_eq!(
            (&chat.backend, chat.model.as_deref()),
            (
                &Backend::Embedded(EmbeddedModel {}),
                Some("smollm2-135m-instruct")
            )
        );
        let embeddings = config.model("batchd.all-minilm-l6-v2").unwrap();
        assert_eq!(embeddings.family(), Some(ModelFamily::TitanEmbed));
        let mut own: Config = toml::from_str(
            "[[models]]\nid = \"batchd.smollm2-135m-instruct\"\nbackend = \"openai\"\nbase_url = \"http://x/v1\"\n",
        )
        .unwrap();
        own = own.with_builtins();
        assert_eq!(
            own.model("batchd.smollm2-135m-instruct").unwrap().backend,
            Backend::OpenAi(OpenAiModel {
                base_url: "http://x/v1".into(),
                api_key_env: None,
                group_prefixes: None,
            })
        );
        // Prefix grouping: the default for an OpenAI-compatible model unless it says; no
        // other backend takes the key.
        let openai = own.model("batchd.smollm2-135m-instruct").unwrap();
        assert_eq!(
            openai.record_options().group_prefixes,
            RecordOptions::DEFAULT_GROUP_PREFIXES
        );
        for said in [false, true] {
            let config: Config = toml::from_str(&format!(
                "[[models]]\nid = \"m\"\nbackend = \"openai\"\nbase_url = \"http://x/v1\"\ngroup_prefixes = {said}\n"
            ))
            .unwrap();
            assert_eq!(config.models[0].record_options().group_prefixes, said);
        }
        assert!(
            toml::from_str::<Config>(
                "[[models]]\nid = \"m\"\nbackend = \"bedrock\"\ngroup_prefixes = true\n"
            )
            .is_err()
        );
        let bad: Config =
            toml::from_str("[[models]]\nid = \"m\"\nbackend = \"embedded\"\nmodel = \"gpt-9\"\n")
                .unwrap();
        assert!(format!("{:#}", bad.check().unwrap_err()).contains("does not exist"));
    }

    #[test]
    fn backend_names_are_the_backend_keys_values() {
        for backend in [
            Backend::OpenAi(OpenAiModel {
                base_url: "http://x/v1".into(),
                api_key_env: None,
                group_prefixes: None,
            }),
            Backend::Bedrock(BedrockModel::default()),
            Backend::Embedded(EmbeddedModel {}),
        ] {
            let mut text = format!(
                "[[models]]\nid = \"batchd.all-minilm-l6-v2\"\nbackend = \"{}\"\n",
                backend.name()
            );
            if let Backend::OpenAi(o) = &backend {
                text.push_str(&format!("base_url = \"{}\"\n", o.base_url));
            }
            let config: Config = toml::from_str(&text).unwrap();
            assert_eq!(config.models[0].backend, backend);
        }
    }

    /// The parse error of a config with one `[[models]]` entry after a valid one.
    fn second_entry_error(entry: &str) -> String {
        let text = format!(
            "[[models]]\nid = \"a\"\nbackend = \"bedrock\"\n[[models]]\nid = \"b\"\n{entry}"
        );
        toml::from_str::<Config>(&text).unwrap_err().to_string()
    }

    #[test]
    fn rejects_bad_entries_naming_the_entry_and_the_key() {
        for (entry, expected) in [
            (
                "backend = \"openai\"\n",
                "models[1] (b): backend \"openai\": missing field `base_url`",
            ),
            (
                "backend = \"tgi\"\n",
                "models[1] (b): backend \"tgi\": unknown variant `tgi`, expected one of `openai`, `bedrock`, `embedded`",
            ),
            ("model = \"x\"\n", "models[1] (b): missing field `backend`"),
            // A key of another backend.
            (
                "backend = \"openai\"\nbase_url = \"http://x/v1\"\nregion = \"us-east-1\"\n",
                "models[1] (b): backend \"openai\": unknown field `region`",
            ),
            (
                "backend = \"bedrock\"\nbase_url = \"http://x/v1\"\n",
                "models[1] (b): backend \"bedrock\": unknown field `base_url`",
            ),
            (
                "backend = \"embedded\"\napi_key_env = \"K\"\n",
                "models[1] (b): backend \"embedded\": unknown field `api_key_env`",
            ),
            (
                "backend = \"bedrock\"\nmax_concurency = 3\n",
                "models[1] (b): backend \"bedrock\": unknown field `max_concurency`",
            ),
            (
                "backend = \"bedrock\"\nmax_concurrency = \"3\"\n",
                "models[1] (b): max_concurrency: invalid type: string \"3\"",
            ),
            (
                "backend = \"bedrock\"\nformat = \"gpt\"\n",
                "models[1] (b): format: unknown format \"gpt\"; one of anthropic,",
            ),
        ] {
            let err = second_entry_error(entry);
            assert!(err.contains(expected), "{entry}: {err}");
        }
        let config: Config = toml::from_str(
            "[[models]]\nid = \"a\"\nbackend = \"bedrock\"\n[[models]]\nid = \"a\"\nbackend = \"bedrock\"\n",
        )
        .unwrap();
        let err = config.check().unwrap_err().to_string();
        assert!(
            err.contains("models[1]: id \"a\" is already used by models[0]"),
            "{err}"
        );
        for (prices, expected) in [
            (
                "price_per_million_input_tokens = 1.0\n",
                "models[0] (a): set both price_per_million_input_tokens and",
            ),
            (
                "price_per_million_input_tokens = 1.0\nprice_per_million_output_tokens = -2.0\n",
                "models[0] (a): prices must be numbers, 0 or more",
            ),
        ] {
            let config: Config = toml::from_str(&format!(
                "[[models]]\nid = \"a\"\nbackend = \"bedrock\"\n{prices}"
            ))
            .unwrap();
            let err = config.check().unwrap_err().to_string();
            assert!(err.contains(expected), "{prices}: {err}");
        }
        assert!(toml::from_str::<Config>("[engine]\nconcurency = 3\n").is_err());
        let err = toml::from_str::<Config>("[engine]\nblank_lines = \"keep\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown variant `keep`, expected `skip` or `reject`"),
            "{err}"
        );
    }

    #[test]
    fn config_defaults_are_the_engine_defaults() {
        let config = Config::default();
        // Debug covers every field, so a default written twice and changed once shows here.
        assert_eq!(
            format!("{:?}", config.engine_config(None)),
            format!("{:?}", EngineConfig::default())
        );
        assert_eq!(
            format!("{:?}", config.scheduler_config()),
            format!("{:?}", SchedulerConfig::default())
        );
        assert_eq!(config.quotas.quotas(), Quotas::default());
        assert_eq!(config.openai_config(), OpenAiConfig::new(Vec::new()));
        assert_eq!(
            config.files_root(Path::new("/d")).unwrap(),
            StorageUri::Local("/d/files".into())
        );
        let s3: Config =
            toml::from_str("[openai]\nfiles_location = \"s3://bkt/files/\"\nmax_file_bytes = 5\n")
                .unwrap();
        assert_eq!(
            s3.files_root(Path::new("/d")).unwrap().to_string(),
            "s3://bkt/files/"
        );
        assert_eq!(s3.openai_config().max_file_bytes, 5);
        let bad: Config = toml::from_str("[openai]\nfiles_location = \"http://x/\"\n").unwrap();
        assert!(format!("{:#}", bad.check().unwrap_err()).contains("openai.files_location"));
        assert_eq!(config.engine.concurrency, JobSpec::DEFAULT_CONCURRENCY);
        let record = ModelConfig::new("m", Backend::Bedrock(BedrockModel::default()));
        assert_eq!(
            format!("{:?}", record.record_options()),
            format!("{:?}", RecordOptions::default())
        );
        // Bedrock's size quotas are "in GB": 10^9 bytes, in the engine and in the config.
        assert_eq!(Quotas::default().max_file_bytes, 1_000_000_000);
        assert_eq!(Quotas::default().max_job_bytes, 5_000_000_000);
        let quotas: Config = toml::from_str("[quotas]\ninput_file_size_gb = 0.5\n").unwrap();
        assert_eq!(quotas.quotas.quotas().max_file_bytes, 500_000_000);
    }

    #[test]
    fn auth_keys_and_tokens_resolve_from_the_config_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let secret_file = dir.path().join("secret");
        std::fs::write(&secret_file, "from-a-file\n").unwrap();
        let hash_file = dir.path().join("token.sha256");
        // printf %s tok-b | sha256sum
        std::fs::write(
            &hash_file,
            "sha256:efa1cd32d437a4dd30463a379503cadfb2b13481660f6345110f3bde01f2e773\n",
        )
        .unwrap();
        let text = format!(
            r#"
            [auth]
            regions = ["us-east-1", "us-west-2"]
            [[auth.keys]]
            access_key_id = "AKIDA"
            secret_access_key = "in-the-config"
            account_id = "111111111111"
            [[auth.keys]]
            access_key_id = "AKIDB"
            secret_access_key_file = "{}"
            account_id = "222222222222"
            [[auth.tokens]]
            token = "tok-a"
            account_id = "111111111111"
            [[auth.tokens]]
            token_file = "{}"
            account_id = "222222222222"
            "#,
            secret_file.display(),
            hash_file.display()
        );
        let config: Config = toml::from_str(&text).unwrap();
        assert!(
            !format!("{config:?}").contains("in-the-config"),
            "Debug hides secrets"
        );
        let auth = config.auth_config().unwrap();
        assert_eq!(auth.keys[0].secret.expose(), "in-the-config");
        assert_eq!(auth.keys[1].secret.expose(), "from-a-file");
        assert_eq!(auth.keys[1].account_id, "222222222222");
        assert_eq!(auth.tokens.len(), 2);
        assert_eq!(
            auth.regions,
            Some(vec!["us-east-1".to_owned(), "us-west-2".to_owned()])
        );
        assert_eq!(auth.anonymous_account, "000000000000");
        assert!(Config::default().auth_config().unwrap().keys.is_empty());
    }

    #[test]
    fn bad_auth_entries_are_refused_naming_the_key() {
        let parse_error = |entry: &str| toml::from_str::<Config>(entry).unwrap_err().to_string();
        let e = parse_error(
            "[[auth.keys]]\naccess_key_id = \"A\"\nsecret_acces_key = \"s\"\naccount_id = \"111111111111\"\n",
        );
        assert!(e.contains("unknown field `secret_acces_key`"), "{e}");
        let e = parse_error("[[auth.tokens]]\ntokn = \"t\"\naccount_id = \"111111111111\"\n");
        assert!(e.contains("unknown field `tokn`"), "{e}");
        let e = parse_error("[auth]\nregion = [\"us-east-1\"]\n");
        assert!(e.contains("unknown field `region`"), "{e}");

        let check_error = |entry: &str| {
            let config: Config = toml::from_str(entry).unwrap();
            format!("{:#}", config.auth_config().unwrap_err())
        };
        for (entry, says) in [
            (
                "[[auth.keys]]\naccess_key_id = \"A\"\naccount_id = \"111111111111\"\n",
                "auth.keys[0] (A): set exactly one of secret_access_key, secret_access_key_env, secret_access_key_file",
            ),
            (
                "[[auth.keys]]\naccess_key_id = \"A\"\nsecret_access_key = \"hush\"\nsecret_access_key_env = \"X\"\naccount_id = \"111111111111\"\n",
                "set exactly one of",
            ),
            (
                "[[auth.keys]]\naccess_key_id = \"A\"\nsecret_access_key = \"hush\"\naccount_id = \"1234\"\n",
                "auth.keys[0] (A): account_id must be 12 digits",
            ),
            (
                "[[auth.keys]]\naccess_key_id = \"A\"\nsecret_access_key_env = \"BATCHD_TEST_NOT_SET_ANYWHERE\"\naccount_id = \"111111111111\"\n",
                "environment variable BATCHD_TEST_NOT_SET_ANYWHERE is not set",
            ),
            (
                "[[auth.tokens]]\ntoken_file = \"/nonexistent/batchd-token\"\naccount_id = \"111111111111\"\n",
                "auth.tokens[0]: cannot read /nonexistent/batchd-token",
            ),
            ("[auth]\nregions = []\n", "auth.regions"),
        ] {
            let e = check_error(entry);
            assert!(e.contains(says), "{entry}: {e}");
            assert!(!e.contains("hush"), "a secret in an error: {e}");
        }
        // A key file holds the key's hash, never the key.
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "the-token-itself").unwrap();
        let e = check_error(&format!(
            "[[auth.tokens]]\ntoken_file = \"{}\"\naccount_id = \"111111111111\"\n",
            plain.display()
        ));
        assert!(e.contains("sha256:"), "{e}");
        assert!(!e.contains("the-token-itself"), "{e}");
    }

    /// The ```toml blocks of the README.
    fn readme_configs() -> Vec<&'static str> {
        include_str!("../../../README.md")
            .split("```toml\n")
            .skip(1)
            .filter_map(|block| block.split("```").next())
            .collect()
    }

    #[test]
    fn the_readme_configs_parse_and_state_the_defaults() {
        let blocks = readme_configs();
        assert_eq!(blocks.len(), 3, "{blocks:?}");
        let full: Config = toml::from_str(blocks[0]).unwrap();
        full.check().unwrap();
        // Every backend's own keys reach its variant.
        let [openai, bedrock] = &full.models[..] else {
            panic!("{:?}", full.models)
        };
        assert_eq!(
            openai.backend,
            Backend::OpenAi(OpenAiModel {
                base_url: "http://127.0.0.1:8000/v1".into(),
                api_key_env: Some("OPENAI_API_KEY".into()),
                group_prefixes: Some(false),
            })
        );
        assert_eq!(openai.backend_model(), "name-the-server-knows");
        let options = openai.record_options();
        assert!(!options.group_prefixes);
        assert_eq!(
            (options.family, options.embed_batch_size),
            (Some(ModelFamily::Anthropic), 16)
        );
        assert_eq!(
            options.prices,
            Some(Prices {
                per_million_input_tokens: 0.25,
                per_million_output_tokens: 1.25
            })
        );
        assert_eq!(bedrock.prices(), None);
        assert_eq!(
            bedrock.backend,
            Backend::Bedrock(BedrockModel {
                endpoint_url: Some("https://bedrock-runtime.us-east-1.amazonaws.com".into()),
                region: Some("us-east-1".into()),
                profile: Some("default".into()),
            })
        );
        assert_eq!(
            bedrock.backend_model(),
            "us.anthropic.claude-3-5-sonnet-20240620-v1:0"
        );
        // The README says its [engine], [server], [limits], [quotas], [openai] and [events] values are the
        // defaults.
        let defaults = Config::default();
        assert_eq!(full.engine, defaults.engine);
        assert_eq!(full.server, defaults.server);
        assert_eq!(full.limits, defaults.limits);
        assert_eq!(full.quotas, defaults.quotas);
        assert_eq!(full.openai, defaults.openai);
        assert_eq!(full.events, defaults.events);
        let embedded: Config = toml::from_str(blocks[1]).unwrap();
        embedded.check().unwrap();
        assert_eq!(embedded.models[0].backend.name(), "embedded");
        assert_eq!(embedded.embedded.slots, Some(32));
        assert_eq!(embedded.embedded.batch_invariant, Some(false));
        // The Authentication section's example: one key from the environment, one hashed
        // token from a file, two regions.
        let auth: Config = toml::from_str(blocks[2]).unwrap();
        assert_eq!(auth.auth.keys.len(), 1);
        assert_eq!(
            auth.auth.keys[0].secret_access_key_env.as_deref(),
            Some("BATCHD_SECRET_ACCESS_KEY")
        );
        assert_eq!(auth.auth.tokens[0].account_id, "444455556666");
        assert_eq!(auth.auth.regions.as_ref().map(Vec::len), Some(2));
    }
}
