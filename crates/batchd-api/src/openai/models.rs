//! `GET /v1/models` and `GET /v1/models/{model}`: the configured model ids, owned by batchd.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::{OpenAiError, method_not_allowed};

struct Models {
    ids: Vec<String>,
    /// When this server started (Unix seconds): a model's `created`.
    created: i64,
}

pub fn routes(ids: Vec<String>) -> Router {
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    Router::new()
        .route("/v1/models", get(list).fallback(method_not_allowed))
        .route(
            "/v1/models/{*model}",
            get(retrieve).fallback(method_not_allowed),
        )
        .with_state(Arc::new(Models { ids, created }))
}

fn model(id: &str, created: i64) -> Value {
    json!({"id": id, "object": "model", "created": created, "owned_by": "batchd"})
}

async fn list(State(models): State<Arc<Models>>) -> Json<Value> {
    let data: Vec<Value> = models
        .ids
        .iter()
        .map(|id| model(id, models.created))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

/// One model; ids may hold `/` (a catch-all segment), as OpenAI's fine-tuned ids do not but
/// configured ids may.
async fn retrieve(
    State(models): State<Arc<Models>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, OpenAiError> {
    match models.ids.iter().find(|m| **m == id) {
        Some(id) => Ok(Json(model(id, models.created))),
        None => Err(OpenAiError::not_found(format!(
            "The model '{id}' does not exist or you do not have access to it."
        ))
        .with_param("model")
        .with_code("model_not_found")),
    }
}
