//! The embedded chat model (SmolLM2-135M-Instruct on llama.cpp): request translation (chat
//! template, sampling, seed) here, continuous batching in [`engine`].

mod engine;
mod output;
mod reference;

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};

use batchd_backends::{BackendError, BackendInfo, ModelBackend};
use batchd_formats::neutral::{
    ChatRequest, ChatResponse, ContentPart, EmbedRequest, EmbedResponse, Role,
};
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use tokio::sync::oneshot;

pub use engine::EngineStats;
use engine::{Counters, EngineParams, Job, Sampling};

use crate::error::{client, server, unsupported};
use crate::{ChatModelFiles, EmbeddedError};

/// Settings of the embedded chat model. [`ChatModelConfig::new`] gives defaults for a
/// 2-core machine.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatModelConfig {
    /// The GGUF file (as shipped: SmolLM2 in Q4_1).
    pub model_path: PathBuf,
    /// Which weights to run: see [`ChatWeights`].
    pub weights: ChatWeights,
    /// Sequences decoded together (slots); the engine's concurrency for this model. At most 256.
    pub max_sequences: usize,
    /// KV cells of one sequence: prompt plus output tokens.
    pub context_per_sequence: u32,
    /// CPU threads of llama.cpp.
    pub threads: usize,
    /// Most tokens in one forward pass (decode tokens plus prompt chunks).
    pub batch_size: u32,
    /// One KV buffer shared by all sequences instead of one stream per sequence.
    pub kv_unified: bool,
    /// llama.cpp's flash attention: `None` lets llama.cpp decide (it turns it on for CPU).
    pub flash_attention: Option<bool>,
    /// Greedy answers that do not depend on what else is batched (or on prefix sharing): the
    /// CPU backend runs ggml's reference kernels, which are slower. Needs `kv_unified` off.
    pub batch_invariant: bool,
    /// A request whose prompt starts with at least this many tokens of a prompt already in
    /// the KV cache copies those cells instead of computing them again (a shared system
    /// prompt is evaluated once). 0 turns prefix sharing off.
    pub min_shared_prefix: u32,
    /// `maxTokens` when the request has none.
    pub default_max_tokens: u32,
    /// `temperature` when the request has none (SmolLM2's recommended 0.2).
    pub default_temperature: f32,
    /// `topP` when the request has none (SmolLM2's recommended 0.9).
    pub default_top_p: f32,
}

impl ChatModelConfig {
    /// Defaults for a 2-core, 24 GiB machine: 32 slots of 2,048 tokens (1.5 GB of KV cache,
    /// about 1.7 GB resident in all), one thread per core, 512-token batches, Q8_0 weights.
    /// On 2 cores a full batch of 32 gives about 2.8× the single-stream output rate; 64 slots
    /// add little more and double the time each record takes.
    pub fn new(model_path: impl Into<PathBuf>) -> Self {
        Self {
            model_path: model_path.into(),
            weights: ChatWeights::Q8_0,
            max_sequences: 32,
            context_per_sequence: 2048,
            threads: std::thread::available_parallelism().map_or(2, usize::from),
            batch_size: 512,
            kv_unified: false,
            flash_attention: None,
            batch_invariant: false,
            min_shared_prefix: 32,
            default_max_tokens: 256,
            default_temperature: 0.2,
            default_top_p: 0.9,
        }
    }

    /// Defaults for the chat model found by [`ChatModelFiles::locate`].
    pub fn from_files(files: &ChatModelFiles) -> Self {
        Self::new(files.gguf.clone())
    }

    fn check(&self) -> Result<(), EmbeddedError> {
        let bad = |m: &str| Err(EmbeddedError::Config(m.to_string()));
        if !(1..=256).contains(&self.max_sequences) {
            return bad("max_sequences must be between 1 and 256");
        }
        if self.context_per_sequence < 16 {
            return bad("context_per_sequence must be at least 16");
        }
        if self.threads == 0 || self.default_max_tokens == 0 {
            return bad("threads and default_max_tokens must be at least 1");
        }
        // Every active sequence puts one token into each batch.
        if (self.batch_size as usize) < self.max_sequences {
            return bad("batch_size must be at least max_sequences");
        }
        // In one shared buffer a sequence's cells land wherever there is room, and the sums
        // over them follow.
        if self.batch_invariant && self.kv_unified {
            return bad("batch_invariant needs one KV stream per sequence (kv_unified off)");
        }
        if !(self.default_temperature >= 0.0 && self.default_top_p > 0.0) {
            return bad("default_temperature must be ≥ 0 and default_top_p > 0");
        }
        Ok(())
    }
}

/// Which weights the chat model runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChatWeights {
    /// Q8_0 weights derived from the file once and cached beside it ([`crate::q8_0_weights`]):
    /// llama.cpp batches these far better than Q4_1.
    #[default]
    Q8_0,
    /// The file's own weights.
    AsShipped,
}

/// The process-wide llama.cpp backend: it can be initialised once only.
pub(crate) fn backend() -> Result<&'static LlamaBackend, String> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            // llama.cpp logs through `tracing` (target `llama-cpp-2`) instead of stderr.
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The embedded chat model: a [`ModelBackend`] whose `chat` runs on a dedicated inference
/// thread with continuous batching; `embed` is unsupported.
pub struct EmbeddedChat {
    model: Arc<LlamaModel>,
    template: LlamaChatTemplate,
    config: ChatModelConfig,
    jobs: mpsc::Sender<Job>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for EmbeddedChat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedChat")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl EmbeddedChat {
    /// Loads the model and starts the inference thread. Blocks for the load (well under a
    /// second for SmolLM2-135M): from async code, call it inside `spawn_blocking`.
    pub fn load(config: ChatModelConfig) -> Result<Self, EmbeddedError> {
        config.check()?;
        if !config.model_path.is_file() {
            return Err(EmbeddedError::MissingFile {
                what: "the chat model",
                path: config.model_path.clone(),
            });
        }
        let path = match config.weights {
            ChatWeights::Q8_0 => crate::q8_0_weights(&config.model_path)?,
            ChatWeights::AsShipped => config.model_path.clone(),
        };
        let load_err = |message: String| EmbeddedError::LoadChat {
            path: path.clone(),
            message,
        };
        let backend = backend().map_err(load_err)?;
        let model = LlamaModel::load_from_file(backend, &path, &LlamaModelParams::default())
            .map_err(|e| load_err(e.to_string()))?;
        let template = model
            .chat_template(None)
            .map_err(|e| load_err(format!("no chat template: {e}")))?;
        let model = Arc::new(model);
        let threads = i32::try_from(config.threads)
            .map_err(|_| EmbeddedError::Config("threads is too large".into()))?;
        let params = EngineParams {
            slots: config.max_sequences,
            context_per_sequence: config.context_per_sequence,
            batch_size: config.batch_size,
            threads,
            kv_unified: config.kv_unified,
            flash_attention: config.flash_attention,
            batch_invariant: config.batch_invariant,
            min_shared_prefix: config.min_shared_prefix,
        };

        let counters = Arc::new(Counters::default());
        let (jobs, jobs_rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), String>>(1);
        let thread_model = Arc::clone(&model);
        let thread_counters = Arc::clone(&counters);
        std::thread::Builder::new()
            .name("batchd-chat".into())
            .spawn(move || {
                // The context borrows the model and must stay on this thread (it is not Sync).
                let mut ctx = match engine::new_context(&thread_model, params) {
                    Ok(ctx) => ctx,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                engine::run(&thread_model, &mut ctx, params, &jobs_rx, &thread_counters);
            })
            .map_err(|e| EmbeddedError::Thread("chat inference", e))?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(load_err(format!("cannot create the context: {e}"))),
            Err(_) => return Err(load_err("the inference thread died".into())),
        }
        Ok(Self {
            model,
            template,
            config,
            jobs,
            counters,
        })
    }

    /// How many sequences decode together: set the engine's concurrency for this model to it.
    pub fn slots(&self) -> usize {
        self.config.max_sequences
    }

    pub fn config(&self) -> &ChatModelConfig {
        &self.config
    }

    /// Counters of the inference thread since the model was loaded.
    pub fn stats(&self) -> EngineStats {
        self.counters.snapshot()
    }

    /// The prompt text the chat template makes of a request.
    pub fn render_prompt(&self, request: &ChatRequest) -> Result<String, BackendError> {
        let turns = prompt_turns(request)?;
        // A final assistant turn is a prefill: the answer continues it, so it goes after the
        // template's opening of the assistant turn instead of being closed by the template.
        let (turns, prefill) = match turns.split_last() {
            Some((last, rest)) if last.role == "assistant" => (rest, last.content.as_str()),
            _ => (turns.as_slice(), ""),
        };
        let messages = turns
            .iter()
            .map(|t| LlamaChatMessage::new(t.role.to_string(), t.content.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| client(format!("message text cannot contain NUL bytes: {e}")))?;
        let mut prompt = self
            .model
            .apply_chat_template(&self.template, &messages, true)
            .map_err(|e| server(format!("embedded chat model: chat template failed: {e}")))?;
        prompt.push_str(prefill);
        Ok(prompt)
    }

    fn job(
        &self,
        request: &ChatRequest,
        reply: oneshot::Sender<Result<ChatResponse, BackendError>>,
    ) -> Result<Job, BackendError> {
        if !request.tools.is_empty() || request.tool_choice.is_some() {
            return Err(unsupported(
                "the embedded chat model does not support tool use (toolConfig)",
            ));
        }
        if request.response_format.is_some() {
            return Err(unsupported(
                "the embedded chat model does not support structured output (outputConfig)",
            ));
        }
        let prompt_text = self.render_prompt(request)?;
        let prompt = self
            .model
            .vocab()
            .tokenize(prompt_text.as_bytes(), true, true);
        let limit = self.config.context_per_sequence;
        let prompt_len = u32::try_from(prompt.len()).unwrap_or(u32::MAX);
        if prompt_len == 0 || prompt_len >= limit {
            return Err(client(format!(
                "the prompt has {prompt_len} tokens; the embedded chat model takes fewer than \
                 {limit} per record (context_per_sequence)"
            )));
        }
        let max_tokens = match request.max_tokens {
            Some(0) => return Err(client("maxTokens must be at least 1")),
            Some(n) => n,
            None => self.config.default_max_tokens,
        };
        let sampling = sampling(request, &self.config, &prompt_text)?;
        Ok(Job {
            prompt,
            sampling,
            max_tokens,
            stop_sequences: request.stop_sequences.clone(),
            reply,
        })
    }
}

impl EmbeddedChat {
    /// What the embedded chat model serves: chat only.
    pub const INFO: BackendInfo = BackendInfo {
        chat: true,
        embed: false,
        runs_native: false,
        max_embed_batch: None,
    };
}

#[async_trait::async_trait]
impl ModelBackend for EmbeddedChat {
    fn info(&self) -> BackendInfo {
        Self::INFO
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, BackendError> {
        let (reply, answer) = oneshot::channel();
        let job = self.job(request, reply)?;
        self.jobs
            .send(job)
            .map_err(|_| server("the embedded chat model's inference thread has stopped"))?;
        // Dropping `answer` (attempt timeout) makes the inference thread free the slot.
        answer
            .await
            .map_err(|_| server("the embedded chat model's inference thread stopped"))?
    }

    async fn embed(&self, _request: &EmbedRequest) -> Result<EmbedResponse, BackendError> {
        Err(unsupported(
            "the embedded chat model does not make embeddings; use batchd.all-minilm-l6-v2",
        ))
    }
}

/// One turn as the chat template sees it.
#[derive(Debug, Clone, PartialEq)]
struct Turn {
    role: &'static str,
    content: String,
}

/// The request's system prompt and messages as plain-text turns. Parts the model cannot read
/// (images, tool calls and results, other media) are an `Unsupported` error naming the part;
/// reasoning parts of earlier assistant turns are left out.
fn prompt_turns(request: &ChatRequest) -> Result<Vec<Turn>, BackendError> {
    let mut turns = Vec::with_capacity(request.messages.len() + 1);
    if !request.system.is_empty() {
        turns.push(Turn {
            role: "system",
            content: request.system.join("\n"),
        });
    }
    for (i, message) in request.messages.iter().enumerate() {
        let mut texts = Vec::with_capacity(message.content.len());
        for (j, part) in message.content.iter().enumerate() {
            let kind = match part {
                ContentPart::Text(text) => {
                    texts.push(text.clone());
                    continue;
                }
                ContentPart::Document { name, text, .. } => {
                    texts.push(format!("Document \"{name}\":\n{text}"));
                    continue;
                }
                ContentPart::Reasoning { .. } => continue,
                ContentPart::Image { .. } => "image",
                ContentPart::ToolUse { .. } => "toolUse",
                ContentPart::ToolResult { .. } => "toolResult",
                ContentPart::Unsupported { kind } => kind.as_str(),
            };
            return Err(unsupported(format!(
                "messages[{i}].content[{j}]: the embedded chat model reads text only, not {kind}"
            )));
        }
        turns.push(Turn {
            role: match message.role {
                Role::User => "user",
                Role::Assistant => "assistant",
            },
            content: texts.join("\n"),
        });
    }
    Ok(turns)
}

/// Sampling settings of a request. The seed comes from `additionalModelRequestFields.seed`,
/// else from a hash of the prompt and settings, so a record samples the same text every run.
fn sampling(
    request: &ChatRequest,
    config: &ChatModelConfig,
    prompt: &str,
) -> Result<Sampling, BackendError> {
    let temperature = request
        .temperature
        .map_or(config.default_temperature, |t| t as f32);
    let top_p = request.top_p.map_or(config.default_top_p, |p| p as f32);
    // Written so that NaN fails too.
    let valid = temperature >= 0.0 && top_p > 0.0 && top_p <= 1.0;
    if !valid {
        return Err(client("temperature must be ≥ 0 and topP in (0, 1]"));
    }
    let top_k = match request.top_k {
        None | Some(0) => None,
        Some(k) => Some(i32::try_from(k).unwrap_or(i32::MAX)),
    };
    let seed = match request.extra.as_ref().and_then(|extra| extra.get("seed")) {
        Some(value) => {
            let seed = value
                .as_u64()
                .or_else(|| value.as_i64().map(i64::cast_unsigned))
                .ok_or_else(|| client("additionalModelRequestFields.seed must be an integer"))?;
            // Fold to 32 bits so every 64-bit seed counts.
            (seed ^ (seed >> 32)) as u32
        }
        None => {
            let mut hash = fnv1a(prompt.as_bytes());
            for part in [temperature.to_bits(), top_p.to_bits()] {
                hash = fnv1a_extend(hash, &part.to_le_bytes());
            }
            (hash ^ (hash >> 32)) as u32
        }
    };
    // llama.cpp reads u32::MAX as "pick a random seed".
    let seed = if seed == u32::MAX { 0x5eed } else { seed };
    Ok(Sampling {
        temperature,
        top_p,
        top_k,
        seed,
    })
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a: a hash that stays the same across Rust versions and platforms.
fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_extend(FNV_OFFSET, bytes)
}

fn fnv1a_extend(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use batchd_formats::neutral::ChatMessage;
    use serde_json::json;

    #[test]
    fn batch_invariant_is_refused_with_one_shared_kv_buffer() {
        let invariant = ChatModelConfig {
            batch_invariant: true,
            ..ChatModelConfig::new("m.gguf")
        };
        assert!(invariant.check().is_ok());
        let shared = ChatModelConfig {
            kv_unified: true,
            ..invariant
        };
        let message = shared.check().unwrap_err().to_string();
        assert!(
            message.contains("batch_invariant") && message.contains("kv_unified"),
            "{message}"
        );
    }

    fn request(parts: Vec<ContentPart>) -> ChatRequest {
        ChatRequest {
            system: vec!["Be brief.".into()],
            messages: vec![ChatMessage {
                role: Role::User,
                content: parts,
            }],
            ..ChatRequest::default()
        }
    }

    #[test]
    fn turns_carry_system_and_text() {
        let turns = prompt_turns(&request(vec![
            ContentPart::Text("Hi".into()),
            ContentPart::Document {
                name: "a".into(),
                format: None,
                text: "body".into(),
            },
        ]))
        .unwrap();
        assert_eq!(turns.len(), 2);
        assert_eq!(turns[0].role, "system");
        assert_eq!(turns[1].content, "Hi\nDocument \"a\":\nbody");
    }

    #[test]
    fn images_and_tools_are_unsupported_and_named() {
        let e = prompt_turns(&request(vec![ContentPart::Image {
            format: "png".into(),
            data_base64: String::new(),
        }]))
        .unwrap_err();
        assert_eq!(e.kind, batchd_backends::ErrorKind::Unsupported);
        assert!(
            e.message.contains("messages[0].content[0]"),
            "{}",
            e.message
        );
        assert!(e.message.contains("image"), "{}", e.message);
    }

    #[test]
    fn seed_comes_from_extra_else_from_the_prompt() {
        let config = ChatModelConfig::new("x.gguf");
        let mut req = request(vec![ContentPart::Text("Hi".into())]);
        let a = sampling(&req, &config, "prompt one").unwrap();
        let b = sampling(&req, &config, "prompt one").unwrap();
        let c = sampling(&req, &config, "prompt two").unwrap();
        assert_eq!(a.seed, b.seed);
        assert_ne!(a.seed, c.seed);
        req.extra = Some(json!({"seed": 42}).as_object().unwrap().clone());
        assert_eq!(sampling(&req, &config, "p").unwrap().seed, 42);
        req.extra = Some(json!({"seed": "x"}).as_object().unwrap().clone());
        let e = sampling(&req, &config, "p").unwrap_err();
        assert_eq!(e.kind, batchd_backends::ErrorKind::Client);
    }

    #[test]
    fn temperature_zero_is_greedy_and_defaults_apply() {
        let config = ChatModelConfig::new("x.gguf");
        let mut req = request(vec![]);
        let s = sampling(&req, &config, "p").unwrap();
        assert_eq!((s.temperature, s.top_p), (0.2, 0.9));
        req.temperature = Some(0.0);
        assert_eq!(sampling(&req, &config, "p").unwrap().temperature, 0.0);
    }
}
