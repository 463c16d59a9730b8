//! The OpenAI Batch API: `POST /v1/batches`, `GET /v1/batches/{id}`,
//! `POST /v1/batches/{id}/cancel`, `GET /v1/batches`. A batch is a job of dialect `OpenAi`
//! whose input is an uploaded file; its output and error files are published as files when
//! it ends.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use batchd_core::{
    Dialect, DialectKind, InvocationType, Job, JobFilter, JobId, JobOrigin, JobRequest, JobStatus,
    OpenAiBatchOptions,
};
use batchd_formats::openai::Endpoint;
use futures::StreamExt;
use serde_json::{Map, Value, json};

use super::OpenAiError;
use crate::auth::Caller;
use crate::path_job::FindJob;
use crate::{FileService, JobService, ServiceError};

#[derive(Clone)]
struct BatchesState {
    jobs: Arc<dyn JobService>,
    files: Arc<dyn FileService>,
}

type Answer = Result<Json<Value>, OpenAiError>;

/// The batch routes (no fallback: merged into a router that has one).
pub fn routes(jobs: Arc<dyn JobService>, files: Arc<dyn FileService>) -> Router {
    Router::new()
        .route("/v1/batches", post(create).get(list))
        .route("/v1/batches/{batch_id}", get(retrieve))
        .route("/v1/batches/{batch_id}/cancel", post(cancel))
        .with_state(BatchesState { jobs, files })
}

/// A batch's id is its job's id behind OpenAI's prefix.
fn batch_id(job: &JobId) -> String {
    format!("batch_{job}")
}

fn job_id(raw: &str) -> Result<JobId, OpenAiError> {
    raw.strip_prefix("batch_")
        .and_then(|id| JobId::parse(id).ok())
        .ok_or_else(|| OpenAiError::not_found(format!("No batch found with id '{raw}'.")))
}

/// This API's batch of the caller's account: another dialect's or account's job is not
/// found, as an unknown id.
async fn batch(state: &BatchesState, caller: &Caller, raw: &str) -> Result<Job, OpenAiError> {
    let id = job_id(raw)?;
    match state.jobs.get_job(&caller.account_id, &id).await {
        Ok(job) if job.request.dialect.kind() == DialectKind::OpenAi => Ok(job),
        Ok(_) | Err(ServiceError::NotFound(_)) => Err(OpenAiError::not_found(format!(
            "No batch found with id '{raw}'."
        ))),
        Err(e) => Err(e.into()),
    }
}

/// A `/v1/batches/{batch_id}/...` path names a batch as [`batch`] finds it; the handlers
/// keep the id as given too.
impl FindJob for BatchesState {
    type Found = (String, Job);
    type Error = OpenAiError;

    async fn find(
        &self,
        caller: &Caller,
        path: Result<Path<String>, PathRejection>,
    ) -> Result<(String, Job), OpenAiError> {
        let Path(raw) = path.map_err(|e| OpenAiError::invalid(e.body_text(), None))?;
        let job = batch(self, caller, &raw).await?;
        Ok((raw, job))
    }
}

type PathBatch = crate::path_job::PathJob<BatchesState>;

fn bad(param: &str, message: impl Into<String>) -> OpenAiError {
    OpenAiError::invalid(message, Some(param))
}

/// The `model` of the input file's first line: a batch runs one model, and the job needs it
/// before validation reads the rest.
async fn first_model(
    state: &BatchesState,
    account: &str,
    file_id: &str,
) -> Result<String, OpenAiError> {
    let mut content = state.files.content(account, file_id).await?;
    let mut head = Vec::new();
    while let Some(chunk) = content.next().await {
        let chunk = chunk.map_err(|e| OpenAiError::internal(e.to_string()))?;
        head.extend_from_slice(&chunk);
        if head.contains(&b'\n') || head.len() > 1 << 20 {
            break;
        }
    }
    let first = head.split(|b| *b == b'\n').next().unwrap_or_default();
    #[derive(serde::Deserialize)]
    struct Line {
        body: Option<Body>,
    }
    #[derive(serde::Deserialize)]
    struct Body {
        model: Option<String>,
    }
    serde_json::from_slice::<Line>(first)
        .ok()
        .and_then(|l| l.body?.model)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| {
            bad(
                "input_file_id",
                "The input file's first line has no body.model: every line names the model of the batch.",
            )
        })
}

/// CreateBatch.
async fn create(
    State(state): State<BatchesState>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let body = body.map_err(|e| OpenAiError::invalid(e.body_text(), None))?;
    let Ok(Value::Object(req)) = serde_json::from_slice::<Value>(&body) else {
        return Err(OpenAiError::invalid(
            "The request body must be a JSON object.",
            None,
        ));
    };
    let string = |key: &str| req.get(key).and_then(Value::as_str);
    let input_file_id = string("input_file_id").ok_or_else(|| {
        bad(
            "input_file_id",
            "Missing required parameter: 'input_file_id'.",
        )
    })?;
    let endpoint = string("endpoint")
        .ok_or_else(|| bad("endpoint", "Missing required parameter: 'endpoint'."))?;
    if Endpoint::parse(endpoint).is_none() {
        return Err(bad(
            "endpoint",
            format!(
                "Invalid value: '{endpoint}'. batchd runs batches for {}.",
                Endpoint::ALL.map(Endpoint::path).join(", ")
            ),
        ));
    }
    if string("completion_window") != Some("24h") {
        return Err(bad(
            "completion_window",
            "Invalid value for 'completion_window': only '24h' is supported.",
        ));
    }
    let metadata = metadata(req.get("metadata"))?;
    let output_expires_after_seconds = match req.get("output_expires_after") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let anchor = v.get("anchor").and_then(Value::as_str);
            let seconds = v.get("seconds").and_then(Value::as_i64);
            match (anchor, seconds) {
                (Some("created_at"), Some(s)) if (3600..=2_592_000).contains(&s) => Some(s),
                _ => {
                    return Err(bad(
                        "output_expires_after",
                        "'output_expires_after' must be {\"anchor\": \"created_at\", \"seconds\": 3600 to 2592000}.",
                    ));
                }
            }
        }
    };
    let file = state
        .files
        .get(&caller.account_id, input_file_id)
        .await
        .map_err(|e| match e {
            ServiceError::NotFound(_) => bad(
                "input_file_id",
                format!("Invalid 'input_file_id': no file with id '{input_file_id}'."),
            ),
            other => other.into(),
        })?;
    if file.purpose != "batch" {
        return Err(bad(
            "input_file_id",
            format!(
                "The file '{input_file_id}' has purpose '{}', not 'batch'.",
                file.purpose
            ),
        ));
    }
    let model = first_model(&state, &caller.account_id, input_file_id).await?;
    // Results go beside the files: `<files root>/batches/<jobId>/...`.
    let root = file
        .uri
        .rsplit_once('/')
        .map_or(file.uri.as_str(), |(dir, _)| dir);
    let request = JobRequest {
        account_id: caller.account_id.clone(),
        name: format!("openai-batch-{input_file_id}"),
        model_id: model,
        origin: JobOrigin::Api,
        role_arn: None,
        client_request_token: None,
        invocation_type: InvocationType::Converse,
        inputs: vec![file.uri.clone()],
        output: format!("{root}/batches/"),
        timeout_hours: Some(24),
        request_json: None,
        dialect: Dialect::OpenAi(Box::new(OpenAiBatchOptions {
            endpoint: endpoint.to_owned(),
            input_file_id: input_file_id.to_owned(),
            completion_window: "24h".into(),
            metadata,
            output_expires_after_seconds,
        })),
    };
    let job = state.jobs.create_job(request).await.map_err(|e| match e {
        ServiceError::Validation(m) => bad("input_file_id", m),
        other => other.into(),
    })?;
    Ok(Json(batch_json(&state, &job).await))
}

fn metadata(value: Option<&Value>) -> Result<Vec<(String, String)>, OpenAiError> {
    let map = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(map)) => map,
        Some(_) => return Err(bad("metadata", "'metadata' must be an object of strings.")),
    };
    if map.len() > 16 {
        return Err(bad("metadata", "'metadata' may have at most 16 pairs."));
    }
    map.iter()
        .map(|(k, v)| match v.as_str() {
            Some(s) if k.chars().count() <= 64 && s.chars().count() <= 512 => {
                Ok((k.clone(), s.to_owned()))
            }
            _ => Err(bad(
                "metadata",
                format!(
                    "'metadata.{k}': keys are at most 64 characters, values strings of at most 512."
                ),
            )),
        })
        .collect()
}

/// RetrieveBatch.
async fn retrieve(
    PathBatch {
        state,
        job: (_, job),
        ..
    }: PathBatch,
) -> Answer {
    Ok(Json(batch_json(&state, &job).await))
}

/// CancelBatch: `cancelling`, then `cancelled` with the output of what finished.
async fn cancel(
    PathBatch {
        state,
        caller,
        job: (raw, job),
    }: PathBatch,
) -> Answer {
    match state.jobs.stop_job(&caller.account_id, &job.id).await {
        Ok(()) => {}
        Err(ServiceError::Conflict(_)) => {
            return Err(OpenAiError::conflict(format!(
                "Cannot cancel a batch with status '{}'.",
                status_name(job.status)
            )));
        }
        Err(e) => return Err(e.into()),
    }
    let job = batch(&state, &caller, &raw).await?;
    Ok(Json(batch_json(&state, &job).await))
}

/// ListBatches: newest first, `after` a batch id, `limit` 1..=100 (20).
async fn list(
    State(state): State<BatchesState>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Answer {
    let Query(pairs) = query.map_err(|e| OpenAiError::invalid(e.body_text(), None))?;
    let mut limit = 20u32;
    let mut after = None;
    for (key, value) in &pairs {
        match key.as_str() {
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=100).contains(n))
                    .ok_or_else(|| bad("limit", "'limit' must be an integer from 1 to 100."))?;
            }
            "after" => {
                let job = batch(&state, &caller, value).await?;
                after = Some((job.submit_time_ms, job.id.to_string()));
            }
            _ => {}
        }
    }
    let mut filter = JobFilter::new(JobOrigin::Api, limit + 1);
    filter.dialect = Some(DialectKind::OpenAi);
    filter.account_id = Some(caller.account_id.clone());
    filter.after = after;
    let mut jobs = state.jobs.list_jobs(filter).await?;
    let has_more = jobs.len() > limit as usize;
    jobs.truncate(limit as usize);
    let mut data = Vec::with_capacity(jobs.len());
    for job in &jobs {
        data.push(batch_json(&state, job).await);
    }
    Ok(Json(json!({
        "object": "list",
        "first_id": jobs.first().map(|j| batch_id(&j.id)),
        "last_id": jobs.last().map(|j| batch_id(&j.id)),
        "has_more": has_more,
        "data": data,
    })))
}

/// OpenAI's name for a job status.
pub fn status_name(status: JobStatus) -> &'static str {
    match status {
        JobStatus::Created | JobStatus::Submitted | JobStatus::Validating => "validating",
        JobStatus::Scheduled | JobStatus::InProgress => "in_progress",
        JobStatus::Completed => "completed",
        JobStatus::Failed => "failed",
        JobStatus::Stopping => "cancelling",
        JobStatus::Stopped => "cancelled",
        JobStatus::PartiallyCompleted | JobStatus::Expired => "expired",
    }
}

fn seconds(ms: i64) -> i64 {
    ms.div_euclid(1000)
}

/// The Batch object of a job.
async fn batch_json(state: &BatchesState, job: &Job) -> Value {
    let Some(options) = job.request.dialect.openai() else {
        return Value::Null;
    };
    // Live between checkpoints: `JobService::get_job`/`list_jobs` give the running counters.
    let counters = job.counters;
    let status = match status_name(job.status) {
        "in_progress" if job.phases.finalizing_ms.is_some() => "finalizing",
        name => name,
    };
    let ended = job.end_time_ms.map(seconds);
    let at = |name: &str| if status == name { ended } else { None };
    let account = &job.request.account_id;
    let output_file_id =
        published(state, account, OpenAiBatchOptions::output_file_id(&job.id)).await;
    let error_file_id = published(state, account, OpenAiBatchOptions::error_file_id(&job.id)).await;
    let created = seconds(job.submit_time_ms);
    let metadata: Map<String, Value> = options
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    json!({
        "id": batch_id(&job.id),
        "object": "batch",
        "endpoint": options.endpoint,
        "model": job.request.model_id,
        "errors": errors(job),
        "input_file_id": options.input_file_id,
        "completion_window": options.completion_window,
        "status": status,
        "output_file_id": output_file_id,
        "error_file_id": error_file_id,
        "created_at": created,
        "in_progress_at": job.phases.in_progress_ms.map(seconds),
        "expires_at": created + 24 * 3600,
        "finalizing_at": job.phases.finalizing_ms.map(seconds),
        "completed_at": at("completed"),
        "failed_at": at("failed"),
        "expired_at": at("expired"),
        "cancelling_at": job.phases.stopping_ms.map(seconds),
        "cancelled_at": at("cancelled"),
        "request_counts": {"total": counters.total, "completed": counters.success, "failed": counters.error},
        "metadata": if metadata.is_empty() { Value::Null } else { Value::Object(metadata) },
        "usage": {
            "input_tokens": counters.input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": counters.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": counters.input_tokens + counters.output_tokens,
        },
    })
}

/// The file's id once the batch has published it.
async fn published(state: &BatchesState, account: &str, id: String) -> Option<String> {
    state.files.get(account, &id).await.ok().map(|f| f.id)
}

/// A failed batch's `errors`: one entry per defect line of its message
/// (`<file>:<line>: <field>: <reason>`), or the message itself.
fn errors(job: &Job) -> Value {
    if job.status != JobStatus::Failed {
        return Value::Null;
    }
    let message = job.message.as_deref().unwrap_or("the batch failed");
    let mut data: Vec<Value> = message
        .lines()
        .filter_map(|line| {
            let (place, rest) = line.split_once(": ")?;
            let (_, number) = place.rsplit_once(':')?;
            let line_no: u64 = number.parse().ok()?;
            let field = rest.split_once(": ").map(|(field, _)| field);
            Some(json!({"code": "invalid_request", "message": rest, "param": field, "line": line_no}))
        })
        .collect();
    if data.is_empty() {
        data.push(json!({"code": "batch_failed", "message": message, "param": null, "line": null}));
    }
    json!({"object": "list", "data": data})
}
