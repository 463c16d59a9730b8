//! Errors of loading and running the embedded models.

use std::path::PathBuf;

use batchd_backends::{BackendError, ErrorKind};

/// Why an embedded model could not be loaded or started.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "{what} is not at {path}: run `scripts/models.sh` to fetch the embedded models (into \
         $BATCHD_MODELS_DIR, else ~/.cache/batchd/models)"
    )]
    MissingFile { what: &'static str, path: PathBuf },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot load the chat model {path}: {message}")]
    LoadChat { path: PathBuf, message: String },
    #[error("cannot load the embeddings model from {path}: {message}")]
    LoadEmbeddings { path: PathBuf, message: String },
    #[error("cannot start the {0} thread: {1}")]
    Thread(&'static str, std::io::Error),
}

pub(crate) fn unsupported(message: impl Into<String>) -> BackendError {
    BackendError::new(ErrorKind::Unsupported, message)
}

pub(crate) fn client(message: impl Into<String>) -> BackendError {
    BackendError::new(ErrorKind::Client, message)
}

pub(crate) fn server(message: impl Into<String>) -> BackendError {
    BackendError::new(ErrorKind::Server, message)
}
