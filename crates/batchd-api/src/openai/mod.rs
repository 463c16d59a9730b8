//! The OpenAI API under `/v1`, for the `openai` SDKs with `base_url` changed: the Files API
//! (`files`), the Batch API (`batches`) and `GET /v1/models` (`models`). Errors are OpenAI's
//! `{"error": {"message", "type", "param", "code"}}` ([`OpenAiError`]); an unknown `/v1/` path
//! or method answers in that shape too.
//!
//! Authentication is the server's one layer (`crate::auth`): the API key is a bearer key of
//! `[[auth.tokens]]`, naming its account; a refusal answers 401 `invalid_api_key` in OpenAI's
//! shape. Files and batches belong to the caller's account; another account's are not found.

pub mod batches;
pub mod error;
pub mod files;
pub mod models;

use std::sync::Arc;

use axum::Router;
use axum::http::{Method, Uri};
use axum::routing::any;

pub use error::OpenAiError;

use crate::FileService;

/// What the OpenAI API is configured with (`[openai]` in `batchd.toml`, and the models).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenAiConfig {
    /// The model ids `GET /v1/models` lists (the configured models).
    pub models: Vec<String>,
    /// The largest file `POST /v1/files` stores (bytes).
    pub max_file_bytes: u64,
}

impl OpenAiConfig {
    /// OpenAI's limit for a batch input file, "200 MB", read as MiB so that no file OpenAI
    /// takes is refused here.
    pub const DEFAULT_MAX_FILE_BYTES: u64 = 200 * 1024 * 1024;

    /// The given models, the default limits.
    pub fn new(models: Vec<String>) -> Self {
        Self {
            models,
            max_file_bytes: Self::DEFAULT_MAX_FILE_BYTES,
        }
    }
}

/// The OpenAI API as `router` serves it beside the Bedrock API.
#[derive(Clone)]
pub struct OpenAiApi {
    pub files: Arc<dyn FileService>,
    pub config: OpenAiConfig,
}

/// The OpenAI routes (merged by the caller into a router; they answer unknown `/v1/` paths
/// themselves).
pub fn routes(files: Arc<dyn FileService>, config: OpenAiConfig) -> Router {
    Router::new()
        .merge(files::routes(files, config.max_file_bytes))
        .merge(models::routes(config.models))
        .route("/v1/{*rest}", any(unknown_route))
}

async fn unknown_route(method: Method, uri: Uri) -> OpenAiError {
    OpenAiError::not_found(format!(
        "Invalid URL ({method} {}): batchd serves /v1/files, /v1/batches and /v1/models.",
        uri.path()
    ))
}

/// The fallback of a known path's other methods.
pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> OpenAiError {
    OpenAiError::method_not_allowed(format!("{} does not accept {method}.", uri.path()))
}
