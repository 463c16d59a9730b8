//! Where the embedded model files live: the cache dir and the layout `scripts/models.sh`
//! writes. Nothing here downloads; a missing file is an error that names the fetch command.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::EmbeddedError;

/// The chat model's file name inside `<cache>/smollm2-135m-instruct/`.
pub const CHAT_GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Sub-directory of the chat model.
pub const CHAT_DIR: &str = "smollm2-135m-instruct";
/// Sub-directory of the embeddings model (`model.safetensors`, `config.json`, `tokenizer.json`).
pub const EMBEDDINGS_DIR: &str = "all-minilm-l6-v2";

/// The models cache dir: `$BATCHD_MODELS_DIR`, else `${XDG_CACHE_HOME:-~/.cache}/batchd/models`
/// (the same rule as `scripts/models.sh`), with `env` looking the variables up: the binary
/// passes the process environment (ARCHITECTURE.md, invariant 8), tests pass what they like.
pub fn default_cache_dir(env: impl Fn(&str) -> Option<OsString>) -> PathBuf {
    let var = |name: &str| env(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("BATCHD_MODELS_DIR") {
        return PathBuf::from(dir);
    }
    let cache = var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("batchd").join("models")
}

/// Paths of the chat model (SmolLM2-135M-Instruct, GGUF).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatModelFiles {
    pub gguf: PathBuf,
}

/// Paths of the embeddings model (all-MiniLM-L6-v2, safetensors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingModelFiles {
    pub weights: PathBuf,
    pub config: PathBuf,
    pub tokenizer: PathBuf,
}

/// Both embedded models, as found in one cache dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    pub chat: ChatModelFiles,
    pub embeddings: EmbeddingModelFiles,
}

impl ChatModelFiles {
    /// Finds the chat model under `cache_dir`.
    pub fn locate(cache_dir: &Path) -> Result<Self, EmbeddedError> {
        Ok(Self {
            gguf: existing(cache_dir.join(CHAT_DIR).join(CHAT_GGUF), "the chat model")?,
        })
    }
}

impl EmbeddingModelFiles {
    /// Finds the embeddings model under `cache_dir`.
    pub fn locate(cache_dir: &Path) -> Result<Self, EmbeddedError> {
        let dir = cache_dir.join(EMBEDDINGS_DIR);
        Ok(Self {
            weights: existing(dir.join("model.safetensors"), "the embeddings model")?,
            config: existing(dir.join("config.json"), "the embeddings model config")?,
            tokenizer: existing(dir.join("tokenizer.json"), "the embeddings tokenizer")?,
        })
    }
}

/// Finds both models under `cache_dir`.
pub fn locate(cache_dir: &Path) -> Result<ModelFiles, EmbeddedError> {
    Ok(ModelFiles {
        chat: ChatModelFiles::locate(cache_dir)?,
        embeddings: EmbeddingModelFiles::locate(cache_dir)?,
    })
}

fn existing(path: PathBuf, what: &'static str) -> Result<PathBuf, EmbeddedError> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(EmbeddedError::MissingFile { what, path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_name_the_fetch_command() {
        let dir = std::env::temp_dir().join("batchd-embedded-no-models");
        let err = locate(&dir).unwrap_err().to_string();
        assert!(err.contains("scripts/models.sh"), "{err}");
        assert!(err.contains(CHAT_GGUF), "{err}");
    }

    #[test]
    fn the_cache_dir_follows_the_models_sh_rule() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        let dir = |vars| default_cache_dir(env(vars));
        assert_eq!(
            dir(&[("BATCHD_MODELS_DIR", "/m"), ("HOME", "/h")]),
            PathBuf::from("/m")
        );
        assert_eq!(
            dir(&[
                ("BATCHD_MODELS_DIR", ""),
                ("XDG_CACHE_HOME", "/x"),
                ("HOME", "/h")
            ]),
            PathBuf::from("/x/batchd/models")
        );
        assert_eq!(
            dir(&[("HOME", "/h")]),
            PathBuf::from("/h/.cache/batchd/models")
        );
        assert_eq!(dir(&[]), PathBuf::from(".cache/batchd/models"));
    }
}
