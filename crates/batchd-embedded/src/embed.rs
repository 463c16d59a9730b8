//! The embedded embeddings model (all-MiniLM-L6-v2, BERT on candle): mean pooling over the
//! tokens, L2-normalised 384-dimensional vectors.
//!
//! A dedicated thread owns the model. Requests that arrive while it works are gathered into the
//! next round, their inputs sorted by length and run in forward passes of up to
//! `max_batch_inputs` texts padded to the longest of each pass, so records sent one per request
//! are batched as well as a request with many inputs.

use std::path::Path;
use std::sync::mpsc;

use std::num::NonZeroUsize;

use batchd_backends::{BackendError, BackendInfo, ErrorKind, ModelBackend};
use batchd_formats::neutral::{ChatRequest, ChatResponse, EmbedRequest, EmbedResponse};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config, DTYPE};
use tokenizers::{Tokenizer, TruncationParams};
use tokio::sync::oneshot;

use crate::error::{client, server, unsupported};
use crate::{EmbeddedError, EmbeddingModelFiles};

/// Width of all-MiniLM-L6-v2's vectors: the only `dimensions` a request may ask for.
pub const EMBEDDING_DIMENSIONS: u32 = 384;

/// Settings of the embedded embeddings model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingsConfig {
    pub files: EmbeddingModelFiles,
    /// Inputs longer than this many tokens (with `[CLS]`/`[SEP]`) are truncated (the model was
    /// trained on 256).
    pub max_input_tokens: usize,
    /// Most texts in one forward pass.
    pub max_batch_inputs: usize,
}

impl EmbeddingsConfig {
    /// Texts per forward pass unless configured otherwise.
    pub const DEFAULT_MAX_BATCH_INPUTS: usize = 32;

    /// Defaults: truncate at 256 tokens, up to 32 texts per forward pass.
    pub fn new(files: EmbeddingModelFiles) -> Self {
        Self {
            files,
            max_input_tokens: 256,
            max_batch_inputs: Self::DEFAULT_MAX_BATCH_INPUTS,
        }
    }
}

type Reply = oneshot::Sender<Result<EmbedResponse, BackendError>>;

struct Job {
    inputs: Vec<String>,
    reply: Reply,
}

/// The embedded embeddings model: a [`ModelBackend`] whose `embed` returns L2-normalised
/// vectors (always; the neutral request has no flag); `chat` is unsupported.
pub struct EmbeddedEmbeddings {
    jobs: mpsc::Sender<Job>,
    config: EmbeddingsConfig,
}

impl std::fmt::Debug for EmbeddedEmbeddings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedEmbeddings")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl EmbeddedEmbeddings {
    /// Loads the model and starts its thread. Blocks for the load (about a tenth of a second):
    /// from async code, call it inside `spawn_blocking`.
    pub fn load(config: EmbeddingsConfig) -> Result<Self, EmbeddedError> {
        if config.max_input_tokens < 2 || config.max_batch_inputs == 0 {
            return Err(EmbeddedError::Config(
                "max_input_tokens must be at least 2 and max_batch_inputs at least 1".into(),
            ));
        }
        let model = Model::load(&config)?;
        let (jobs, jobs_rx) = mpsc::channel::<Job>();
        let max_batch = config.max_batch_inputs;
        std::thread::Builder::new()
            .name("batchd-embed".into())
            .spawn(move || model.serve(&jobs_rx, max_batch))
            .map_err(|e| EmbeddedError::Thread("embeddings", e))?;
        Ok(Self { jobs, config })
    }

    pub fn config(&self) -> &EmbeddingsConfig {
        &self.config
    }

    /// What a model with `max_batch_inputs` texts per forward pass serves: embeddings only,
    /// one forward pass's worth of inputs per call (the engine's calls then map onto passes).
    pub fn info_for(max_batch_inputs: usize) -> BackendInfo {
        BackendInfo {
            chat: false,
            embed: true,
            runs_native: false,
            max_embed_batch: NonZeroUsize::new(max_batch_inputs),
        }
    }
}

#[async_trait::async_trait]
impl ModelBackend for EmbeddedEmbeddings {
    fn info(&self) -> BackendInfo {
        Self::info_for(self.config.max_batch_inputs)
    }

    async fn chat(&self, _request: &ChatRequest) -> Result<ChatResponse, BackendError> {
        Err(unsupported(
            "the embedded embeddings model does not chat; use batchd.smollm2-135m-instruct",
        ))
    }

    async fn embed(&self, request: &EmbedRequest) -> Result<EmbedResponse, BackendError> {
        if let Some(d) = request.dimensions
            && d != EMBEDDING_DIMENSIONS
        {
            return Err(client(format!(
                "dimensions {d} is not supported: all-MiniLM-L6-v2 makes \
                 {EMBEDDING_DIMENSIONS}-dimensional embeddings"
            )));
        }
        if request.inputs.is_empty() {
            return Ok(EmbedResponse::default());
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            inputs: request.inputs.clone(),
            reply,
        };
        self.jobs
            .send(job)
            .map_err(|_| server("the embedded embeddings model's thread has stopped"))?;
        answer
            .await
            .map_err(|_| server("the embedded embeddings model's thread stopped"))?
    }
}

struct Model {
    bert: BertModel,
    tokenizer: Tokenizer,
    device: Device,
}

/// One input of one job, tokenized.
struct Item {
    job: usize,
    input: usize,
    ids: Vec<u32>,
}

impl Model {
    fn load(config: &EmbeddingsConfig) -> Result<Self, EmbeddedError> {
        let files = &config.files;
        let load_err = |path: &Path, message: String| EmbeddedError::LoadEmbeddings {
            path: path.to_path_buf(),
            message,
        };
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| EmbeddedError::Read {
                path: path.to_path_buf(),
                source,
            })
        };
        let bert_config: Config = serde_json::from_str(&read(&files.config)?)
            .map_err(|e| load_err(&files.config, e.to_string()))?;
        let mut tokenizer = Tokenizer::from_file(&files.tokenizer)
            .map_err(|e| load_err(&files.tokenizer, e.to_string()))?;
        // tokenizer.json pads and truncates to 128: pad per batch instead, truncate at 256.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: config.max_input_tokens,
                ..TruncationParams::default()
            }))
            .map_err(|e| load_err(&files.tokenizer, e.to_string()))?;
        let device = Device::Cpu;
        // Read into memory (not mmap): safe code only, and the file is 90 MB.
        let tensors = candle_core::safetensors::load(&files.weights, &device)
            .map_err(|e| load_err(&files.weights, e.to_string()))?;
        let vb = VarBuilder::from_tensors(tensors, DTYPE, &device);
        let bert = BertModel::load(vb, &bert_config)
            .map_err(|e| load_err(&files.weights, e.to_string()))?;
        Ok(Self {
            bert,
            tokenizer,
            device,
        })
    }

    /// The thread's loop: every request waiting is served in the same round.
    fn serve(self, jobs: &mpsc::Receiver<Job>, max_batch: usize) {
        while let Ok(first) = jobs.recv() {
            let mut round = vec![first];
            round.extend(jobs.try_iter());
            round.retain(|job| !job.reply.is_closed());
            match self.embed_round(&round, max_batch) {
                Ok(results) => {
                    for (job, result) in round.into_iter().zip(results) {
                        let _ = job.reply.send(Ok(result));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e.message, "embedded embeddings failed");
                    for job in round {
                        let _ = job.reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    fn embed_round(
        &self,
        round: &[Job],
        max_batch: usize,
    ) -> Result<Vec<EmbedResponse>, BackendError> {
        let mut items = Vec::new();
        let mut results: Vec<EmbedResponse> = Vec::with_capacity(round.len());
        for (j, job) in round.iter().enumerate() {
            let mut input_tokens = 0u64;
            for (i, text) in job.inputs.iter().enumerate() {
                let encoding = self.tokenizer.encode(text.as_str(), true).map_err(|e| {
                    BackendError::new(ErrorKind::Server, format!("tokenizer failed: {e}"))
                })?;
                let ids = encoding.get_ids().to_vec();
                input_tokens += ids.len() as u64;
                items.push(Item {
                    job: j,
                    input: i,
                    ids,
                });
            }
            results.push(EmbedResponse {
                embeddings: vec![Vec::new(); job.inputs.len()],
                input_tokens,
            });
        }
        // Similar lengths together: less padding per pass.
        items.sort_by_key(|item| item.ids.len());
        for chunk in items.chunks(max_batch) {
            let vectors = self
                .forward(chunk)
                .map_err(|e| server(format!("embedded embeddings model: {e}")))?;
            for (item, vector) in chunk.iter().zip(vectors) {
                if let Some(slot) = results
                    .get_mut(item.job)
                    .and_then(|r| r.embeddings.get_mut(item.input))
                {
                    *slot = vector;
                }
            }
        }
        Ok(results)
    }

    /// One forward pass: pad to the longest input, mean-pool the real tokens, L2-normalise.
    fn forward(&self, items: &[Item]) -> candle_core::Result<Vec<Vec<f32>>> {
        let len = items.iter().map(|item| item.ids.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(items.len() * len);
        let mut mask = Vec::with_capacity(items.len() * len);
        for item in items {
            ids.extend_from_slice(&item.ids);
            ids.resize(ids.len() + len - item.ids.len(), 0);
            mask.extend(std::iter::repeat_n(1u32, item.ids.len()));
            mask.resize(mask.len() + len - item.ids.len(), 0);
        }
        let shape = (items.len(), len);
        let ids = Tensor::from_vec(ids, shape, &self.device)?;
        let mask = Tensor::from_vec(mask, shape, &self.device)?;
        let type_ids = ids.zeros_like()?;
        let hidden = self.bert.forward(&ids, &type_ids, Some(&mask))?;
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
        let mean = summed.broadcast_div(&mask.sum(1)?)?;
        let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f32::MAX)?;
        mean.broadcast_div(&norm)?.to_vec2::<f32>()
    }
}
