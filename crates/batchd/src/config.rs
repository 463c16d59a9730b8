//! `batchd.toml`: storage, engine defaults and the models jobs may name. Read once at
//! start-up, together with the few environment variables batchd uses.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use batchd_engine::{BlankLines, EngineConfig, RecordOptions, RetryPolicy};
use batchd_formats::converse::ConverseOptions;
use batchd_formats::native::ModelFamily;
use batchd_storage::StorageConfig;
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Local state: the job database and `s3://` buckets when no endpoint is set.
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    pub storage: StorageSection,
    #[serde(default)]
    pub engine: EngineSection,
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub quotas: QuotasSection,
    #[serde(default)]
    pub embedded: crate::embedded::EmbeddedSection,
    #[serde(default)]
    pub models: Vec<ModelConfig>,
}

/// Scheduling limits of `batchd serve`.
#[derive(Debug, Clone, Deserialize)]
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
        Self {
            max_running_jobs: 2,
            max_jobs_per_model: 20,
            timeout_unit_seconds: 3600.0,
            default_timeout_hours: 24,
        }
    }
}

/// Bedrock's batch quotas, checked while a server job validates.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotasSection {
    /// "Records per input file per batch inference job".
    pub records_per_input_file: u64,
    /// "Records per batch inference job".
    pub records_per_job: u64,
    /// "Minimum number of records per batch inference job" (Bedrock: 100).
    pub min_records_per_job: u64,
    /// "Batch inference input file size (in GB)".
    pub input_file_size_gb: f64,
    /// "Batch inference job size (in GB)".
    pub job_size_gb: f64,
}

impl Default for QuotasSection {
    fn default() -> Self {
        let q = batchd_engine::Quotas::default();
        Self {
            records_per_input_file: q.max_records_per_file,
            records_per_job: q.max_records_per_job,
            min_records_per_job: q.min_records_per_job,
            input_file_size_gb: 1.0,
            job_size_gb: 5.0,
        }
    }
}

impl QuotasSection {
    pub fn quotas(&self) -> batchd_engine::Quotas {
        let gb = |g: f64| (g * 1e9).max(0.0) as u64;
        batchd_engine::Quotas {
            max_records_per_file: self.records_per_input_file,
            max_records_per_job: self.records_per_job,
            min_records_per_job: self.min_records_per_job,
            max_file_bytes: gb(self.input_file_size_gb),
            max_job_bytes: gb(self.job_size_gb),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    /// S3 or S3-compatible endpoint; credentials and region come from `AWS_*` variables.
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
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
    pub blank_lines: String,
    /// After SIGTERM/SIGINT (or a stop), records in flight get this long to finish.
    pub shutdown_grace_seconds: f64,
    /// While a backend refuses connections, records wait this long before failing.
    pub backend_down_seconds: f64,
    /// Remote backends' concurrency adapts (AIMD, up to the model's concurrency).
    pub adaptive_concurrency: bool,
}

impl Default for EngineSection {
    fn default() -> Self {
        let retry = RetryPolicy::default();
        Self {
            concurrency: 16,
            max_attempts: retry.max_attempts,
            attempt_timeout_secs: retry.attempt_timeout.as_secs_f64(),
            backoff_base_ms: retry.base_backoff.as_millis() as u64,
            backoff_max_ms: retry.max_backoff.as_millis() as u64,
            retry_after_max_secs: retry.max_retry_after.as_secs_f64(),
            max_line_bytes: EngineConfig::default().max_line_bytes,
            blank_lines: "skip".into(),
            shutdown_grace_seconds: EngineConfig::default().shutdown_grace.as_secs_f64(),
            backend_down_seconds: EngineConfig::default().backend_down.as_secs_f64(),
            adaptive_concurrency: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Region and account that job ARNs carry.
    pub region: String,
    pub account_id: String,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            region: "us-east-1".into(),
            account_id: "000000000000".into(),
        }
    }
}

/// A model id jobs may name, and the backend that serves it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The Bedrock model id jobs name.
    pub id: String,
    /// openai | embedded | bedrock.
    pub backend: String,
    /// The OpenAI-compatible server's base URL (`http://host:port/v1`).
    pub base_url: Option<String>,
    /// The model name the server knows; defaults to `id`.
    pub model: Option<String>,
    pub max_concurrency: Option<usize>,
    /// Name of the environment variable holding the API key, if the server needs one.
    pub api_key_env: Option<String>,
    /// Whether Converse records with `toolConfig` are accepted (default true).
    pub allow_tool_config: Option<bool>,
    /// The InvokeModel body format of a custom model id (`anthropic`, `titan-text`,
    /// `titan-embed`, `nova`, `llama`, `mistral`); Bedrock ids imply theirs.
    pub format: Option<String>,
    /// Embedding records per backend call (default 16).
    pub embed_batch_size: Option<usize>,
    /// bedrock: the bedrock-runtime endpoint (default: AWS's, for the region).
    pub endpoint_url: Option<String>,
    /// bedrock: the region (default: the AWS environment/profile chain).
    pub region: Option<String>,
    /// bedrock: the AWS profile to read credentials and region from.
    pub profile: Option<String>,
}

impl ModelConfig {
    /// A model entry with every optional key unset.
    pub fn new(id: impl Into<String>, backend: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            backend: backend.into(),
            base_url: None,
            model: None,
            max_concurrency: None,
            api_key_env: None,
            allow_tool_config: None,
            format: None,
            embed_batch_size: None,
            endpoint_url: None,
            region: None,
            profile: None,
        }
    }

    /// The InvokeModel body family: `format`, else the one the id (or the backend's model
    /// name) implies.
    pub fn family(&self) -> Option<ModelFamily> {
        match &self.format {
            Some(name) => ModelFamily::from_name(name),
            None => ModelFamily::from_model_id(&self.id)
                .or_else(|| self.model.as_deref().and_then(ModelFamily::from_model_id)),
        }
    }

    /// How this model's records are read and sent.
    pub fn record_options(&self) -> RecordOptions {
        RecordOptions {
            converse: ConverseOptions {
                allow_tool_config: self.allow_tool_config.unwrap_or(true),
            },
            family: self.family(),
            embed_batch_size: self
                .embed_batch_size
                .unwrap_or(RecordOptions::DEFAULT_EMBED_BATCH)
                .max(1),
        }
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
            BUILTIN_CHAT_ID, BUILTIN_EMBEDDINGS_ID, CHAT_MODEL, EMBEDDINGS_MODEL,
        };
        for (id, model) in [
            (BUILTIN_CHAT_ID, CHAT_MODEL),
            (BUILTIN_EMBEDDINGS_ID, EMBEDDINGS_MODEL),
        ] {
            if !self.models.iter().any(|m| m.id == id) {
                let mut entry = ModelConfig::new(id, "embedded");
                entry.model = Some(model.into());
                // Titan embedding records run on the built-in embedding model as they are.
                if model == EMBEDDINGS_MODEL {
                    entry.format = Some(ModelFamily::TitanEmbed.name().into());
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
            if let Some(name) = &m.format
                && ModelFamily::from_name(name).is_none()
            {
                bail!(
                    "models[{i}] ({}): unknown format {name:?}; one of {}",
                    m.id,
                    ModelFamily::ALL.map(ModelFamily::name).join(", ")
                );
            }
            if m.embed_batch_size == Some(0) {
                bail!(
                    "models[{i}] ({}): embed_batch_size must be at least 1",
                    m.id
                );
            }
            match m.backend.as_str() {
                "openai" => {
                    if m.base_url.is_none() {
                        bail!("models[{i}] ({}): backend \"openai\" needs base_url", m.id);
                    }
                }
                "embedded" => {
                    crate::embedded::embedded_kind(m.model.as_deref(), &m.id)
                        .with_context(|| format!("models[{i}]"))?;
                }
                "bedrock" => {}
                other => bail!(
                    "models[{i}] ({}): unknown backend {other:?} (expected openai, embedded or bedrock)",
                    m.id
                ),
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
        if !matches!(self.engine.blank_lines.as_str(), "skip" | "reject") {
            bail!("engine.blank_lines must be \"skip\" or \"reject\"");
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
            blank_lines: if e.blank_lines == "reject" {
                BlankLines::Reject
            } else {
                BlankLines::Skip
            },
            shutdown_grace: Duration::from_secs_f64(e.shutdown_grace_seconds.clamp(0.0, 1e9)),
            backend_down: Duration::from_secs_f64(e.backend_down_seconds.clamp(0.0, 1e9)),
            ..EngineConfig::default()
        }
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
            (chat.backend.as_str(), chat.model.as_deref()),
            ("embedded", Some("smollm2-135m-instruct"))
        );
        assert!(config.model("batchd.all-minilm-l6-v2").is_ok());
        let mut own: Config = toml::from_str(
            "[[models]]\nid = \"batchd.smollm2-135m-instruct\"\nbackend = \"openai\"\nbase_url = \"http://x/v1\"\n",
        )
        .unwrap();
        own = own.with_builtins();
        assert_eq!(
            own.model("batchd.smollm2-135m-instruct").unwrap().backend,
            "openai"
        );
        let bad: Config =
            toml::from_str("[[models]]\nid = \"m\"\nbackend = \"embedded\"\nmodel = \"gpt-9\"\n")
                .unwrap();
        assert!(format!("{:#}", bad.check().unwrap_err()).contains("does not exist"));
    }

    #[test]
    fn rejects_bad_entries_with_their_index() {
        let config: Config = toml::from_str(
            "[[models]]\nid = \"a\"\nbackend = \"openai\"\n[[models]]\nid = \"b\"\nbackend = \"tgi\"\n",
        )
        .unwrap();
        let err = config.check().unwrap_err().to_string();
        assert!(
            err.contains("models[0] (a): backend \"openai\" needs base_url"),
            "{err}"
        );
        assert!(toml::from_str::<Config>("[engine]\nconcurency = 3\n").is_err());
    }
}
