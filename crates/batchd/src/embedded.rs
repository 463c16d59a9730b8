//! The embedded models as configured backends: built-in model ids, the `[embedded]` config
//! section, and one shared instance per model, loaded on first use (a server that never runs
//! an embedded job never pays for the KV cache).

use std::path::PathBuf;
use std::sync::Arc;

use batchd_backends::{BackendError, BackendInfo, ErrorKind, ModelBackend};
use batchd_embedded::{
    ChatModelConfig, ChatModelFiles, EmbeddedChat, EmbeddedEmbeddings, EmbeddingModelFiles,
    EmbeddingsConfig,
};
use batchd_formats::neutral::{ChatRequest, ChatResponse, EmbedRequest, EmbedResponse};
use serde::Deserialize;
use tokio::sync::OnceCell;

pub const CHAT_MODEL: &str = "smollm2-135m-instruct";
pub const EMBEDDINGS_MODEL: &str = "all-minilm-l6-v2";
/// Model ids that exist with no config file.
pub const BUILTIN_CHAT_ID: &str = "batchd.smollm2-135m-instruct";
pub const BUILTIN_EMBEDDINGS_ID: &str = "batchd.all-minilm-l6-v2";
/// The same two models under names an OpenAI batch's `body.model` can use as they are.
pub const BUILTIN_CHAT_ALIAS: &str = "batchd-embedded-chat";
pub const BUILTIN_EMBEDDINGS_ALIAS: &str = "batchd-embedded-embeddings";

/// `[embedded]`: where the model files are and how the chat model runs.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedSection {
    /// Default: `$BATCHD_MODELS_DIR`, else `~/.cache/batchd/models` (what scripts/models.sh fills).
    pub models_dir: Option<PathBuf>,
    /// Sequences decoded together; the concurrency of jobs on the chat model.
    pub slots: Option<usize>,
    /// llama.cpp threads (default: one per core).
    pub threads: Option<usize>,
    /// Tokens of prompt plus answer per sequence.
    pub context_per_sequence: Option<u32>,
    /// Shortest prompt prefix shared with a sequence already in the cache that is copied
    /// instead of computed again (0: never).
    pub min_shared_prefix: Option<u32>,
    /// Greedy answers that do not depend on what else is batched, on slower kernels.
    pub batch_invariant: Option<bool>,
}

impl EmbeddedSection {
    pub fn models_dir(&self) -> PathBuf {
        self.models_dir
            .clone()
            .unwrap_or_else(|| batchd_embedded::default_cache_dir(|name| std::env::var_os(name)))
    }

    pub fn chat_config(&self) -> anyhow::Result<ChatModelConfig> {
        let files = ChatModelFiles::locate(&self.models_dir())?;
        let mut config = ChatModelConfig::from_files(&files);
        if let Some(slots) = self.slots {
            config.max_sequences = slots;
        }
        if let Some(threads) = self.threads {
            config.threads = threads;
        }
        if let Some(ctx) = self.context_per_sequence {
            config.context_per_sequence = ctx;
        }
        if let Some(min) = self.min_shared_prefix {
            config.min_shared_prefix = min;
        }
        if let Some(invariant) = self.batch_invariant {
            config.batch_invariant = invariant;
        }
        Ok(config)
    }

    /// The chat model's slots without loading it.
    pub fn slots(&self) -> usize {
        self.slots
            .unwrap_or_else(|| ChatModelConfig::new("").max_sequences)
    }
}

/// Which embedded model an entry's `model` names.
pub fn embedded_kind(model: Option<&str>, id: &str) -> anyhow::Result<&'static str> {
    match model.unwrap_or(id) {
        CHAT_MODEL | BUILTIN_CHAT_ID | BUILTIN_CHAT_ALIAS => Ok(CHAT_MODEL),
        EMBEDDINGS_MODEL | BUILTIN_EMBEDDINGS_ID | BUILTIN_EMBEDDINGS_ALIAS => Ok(EMBEDDINGS_MODEL),
        other => anyhow::bail!(
            "model {id}: embedded model {other:?} does not exist (expected \"{CHAT_MODEL}\" or \"{EMBEDDINGS_MODEL}\")"
        ),
    }
}

/// The embedded models of this process, each loaded once and shared by every model id that
/// maps to it.
#[derive(Default)]
pub struct EmbeddedModels {
    section: EmbeddedSection,
    chat: OnceCell<Arc<EmbeddedChat>>,
    embeddings: OnceCell<Arc<EmbeddedEmbeddings>>,
}

/// Loads a model on a blocking thread (loading reads and converts weights for a while).
async fn load_blocking<T, E>(
    load: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<Arc<T>, BackendError>
where
    T: Send + 'static,
    E: Into<anyhow::Error> + Send + 'static,
{
    tokio::task::spawn_blocking(load)
        .await
        .map_err(|e| unavailable(anyhow::anyhow!("{e}")))?
        .map(Arc::new)
        .map_err(|e| unavailable(e.into()))
}

impl EmbeddedModels {
    pub fn new(section: EmbeddedSection) -> Arc<Self> {
        Arc::new(Self {
            section,
            ..Self::default()
        })
    }

    pub fn section(&self) -> &EmbeddedSection {
        &self.section
    }

    async fn chat(&self) -> Result<Arc<EmbeddedChat>, BackendError> {
        self.chat
            .get_or_try_init(|| async {
                let config = self.section.chat_config().map_err(unavailable)?;
                load_blocking(move || EmbeddedChat::load(config)).await
            })
            .await
            .cloned()
    }

    async fn embeddings(&self) -> Result<Arc<EmbeddedEmbeddings>, BackendError> {
        self.embeddings
            .get_or_try_init(|| async {
                let files = EmbeddingModelFiles::locate(&self.section.models_dir())
                    .map_err(|e| unavailable(e.into()))?;
                load_blocking(move || EmbeddedEmbeddings::load(EmbeddingsConfig::new(files))).await
            })
            .await
            .cloned()
    }

    /// Loads the model now, so that `batchd run` fails before validating anything when the
    /// files are missing.
    pub async fn preload(&self, kind: &str) -> anyhow::Result<()> {
        let result = if kind == CHAT_MODEL {
            self.chat().await.map(|_| ())
        } else {
            self.embeddings().await.map(|_| ())
        };
        result.map_err(|e| anyhow::anyhow!("{}", e.message))
    }
}

fn unavailable(e: anyhow::Error) -> BackendError {
    // Missing files will not appear by retrying: not retryable.
    BackendError::new(
        ErrorKind::Unsupported,
        format!("the embedded model is not available: {e:#}"),
    )
}

/// A `ModelBackend` over one of the shared embedded models.
pub struct EmbeddedBackend {
    models: Arc<EmbeddedModels>,
    kind: &'static str,
}

impl EmbeddedBackend {
    pub fn new(models: Arc<EmbeddedModels>, kind: &'static str) -> Self {
        Self { models, kind }
    }
}

#[async_trait::async_trait]
impl ModelBackend for EmbeddedBackend {
    /// The info of the model it runs, known before that model is loaded: the loaded model's
    /// own once it is, else what loading gives it.
    fn info(&self) -> BackendInfo {
        if self.kind == CHAT_MODEL {
            return self
                .models
                .chat
                .get()
                .map_or(EmbeddedChat::INFO, |model| model.info());
        }
        self.models.embeddings.get().map_or_else(
            || EmbeddedEmbeddings::info_for(EmbeddingsConfig::DEFAULT_MAX_BATCH_INPUTS),
            |model| model.info(),
        )
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, BackendError> {
        if self.kind == CHAT_MODEL {
            self.models.chat().await?.chat(request).await
        } else {
            self.models.embeddings().await?.chat(request).await
        }
    }

    async fn embed(&self, request: &EmbedRequest) -> Result<EmbedResponse, BackendError> {
        if self.kind == CHAT_MODEL {
            self.models.chat().await?.embed(request).await
        } else {
            self.models.embeddings().await?.embed(request).await
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::num::NonZeroUsize;

    use batchd_testkit::conformance::{check_fails_with, check_working, check_wrapper};

    use super::*;

    /// A few tokens' worth of chat model: one slot, a short context.
    fn models(dir: PathBuf) -> Arc<EmbeddedModels> {
        EmbeddedModels::new(EmbeddedSection {
            models_dir: Some(dir),
            slots: Some(1),
            context_per_sequence: Some(256),
            ..EmbeddedSection::default()
        })
    }

    /// Where the model files are, or `None` (test skipped) when they are missing outside CI.
    fn models_dir() -> Option<PathBuf> {
        let dir = batchd_embedded::default_cache_dir(|name| std::env::var_os(name));
        match batchd_embedded::locate(&dir) {
            Ok(_) => Some(dir),
            Err(e) if std::env::var_os("CI").is_none() => {
                let _ = writeln!(std::io::stderr(), "skipping the model tests: {e}");
                None
            }
            Err(e) => panic!("{e} (CI must run scripts/models.sh first)"),
        }
    }

    const CHAT_INFO: BackendInfo = BackendInfo {
        chat: true,
        embed: false,
        runs_native: false,
        max_embed_batch: None,
    };
    const EMBEDDINGS_INFO: BackendInfo = BackendInfo {
        chat: false,
        embed: true,
        runs_native: false,
        max_embed_batch: NonZeroUsize::new(EmbeddingsConfig::DEFAULT_MAX_BATCH_INPUTS),
    };

    #[test]
    fn info_is_the_models_before_it_loads() {
        // The embeddings model's batch limit used to be dropped here (no limit at all).
        let m = models(PathBuf::from("/nonexistent"));
        let embeddings = EmbeddedBackend::new(m.clone(), EMBEDDINGS_MODEL);
        assert_eq!(embeddings.info(), EMBEDDINGS_INFO);
        assert_eq!(EMBEDDINGS_INFO.embed_batch(64), 32);
        let chat = EmbeddedBackend::new(m, CHAT_MODEL);
        assert_eq!(chat.info(), CHAT_INFO);
    }

    #[tokio::test]
    async fn missing_model_files_are_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        for kind in [CHAT_MODEL, EMBEDDINGS_MODEL] {
            let backend: Arc<dyn ModelBackend> =
                Arc::new(EmbeddedBackend::new(models(dir.path().into()), kind));
            check_fails_with(&backend, ErrorKind::Unsupported)
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn embedded_models_conform_and_the_backend_forwards_their_info() {
        let Some(dir) = models_dir() else {
            return;
        };
        let m = models(dir);
        for (kind, expected) in [(CHAT_MODEL, CHAT_INFO), (EMBEDDINGS_MODEL, EMBEDDINGS_INFO)] {
            let backend: Arc<dyn ModelBackend> = Arc::new(EmbeddedBackend::new(m.clone(), kind));
            check_working(&backend, expected).await.unwrap();
            let model: Arc<dyn ModelBackend> = if kind == CHAT_MODEL {
                m.chat().await.unwrap()
            } else {
                m.embeddings().await.unwrap()
            };
            check_working(&model, expected).await.unwrap();
            check_wrapper(backend.as_ref(), model.as_ref()).unwrap();
        }
    }
}
