//! The embedded models: batchd's built-in chat and embeddings backends, running in-process
//! with no model server.
//!
//! - [`EmbeddedChat`]: SmolLM2-135M-Instruct (GGUF) on llama.cpp (`llama-cpp-2`), with
//!   continuous batching on one inference thread; set the engine's concurrency to
//!   [`EmbeddedChat::slots`].
//! - [`EmbeddedEmbeddings`]: all-MiniLM-L6-v2 on candle, mean-pooled, L2-normalised, 384 dims.
//!
//! The model files come from `scripts/models.sh` into [`default_cache_dir`]; [`locate`] finds
//! them and nothing here downloads. The chat model runs Q8_0 weights that the first load derives
//! from the shipped Q4_1 file and caches beside it ([`q8_0_weights`]). Both backends do their CPU work on their own threads and
//! never block the async runtime (only `load` blocks, for well under a second).

mod chat;
mod embed;
mod error;
mod files;
mod quantize;

pub use chat::{ChatModelConfig, ChatWeights, EmbeddedChat, EngineStats};
pub use embed::{EMBEDDING_DIMENSIONS, EmbeddedEmbeddings, EmbeddingsConfig};
pub use error::EmbeddedError;
pub use files::{
    CHAT_DIR, CHAT_GGUF, ChatModelFiles, EMBEDDINGS_DIR, EmbeddingModelFiles, ModelFiles,
    default_cache_dir, locate,
};
pub use quantize::q8_0_weights;
