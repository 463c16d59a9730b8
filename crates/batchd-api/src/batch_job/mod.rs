//! The batch-job API of the first seed (`create_batch_inference_job`,
//! `start_batch_inference_job`, `get_batch_inference_job`, plus list and stop), served beside
//! the Bedrock control plane. boto3 learns the operations from the `service-2.sdk-extras.json`
//! that [`BOTOCORE_EXTRAS`] holds (written out by `batchd sdk botocore DIR`).
//!
//! Errors are rest-json like Bedrock's (`x-amzn-ErrorType`, `{"__type", "message"}`), so a
//! boto3 caller catches `ValidationException`, `ResourceNotFoundException` and
//! `ConflictException` by name.

pub mod model;
pub mod validate;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use batchd_core::{DialectKind, Job, JobArn, JobFilter, JobId, JobOrigin};
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::bedrock::routes::query_pairs;
use crate::bedrock::token::PageToken;
use crate::bedrock::{ApiConfig, ApiError};
use crate::path_job::FindJob;
use crate::{JobService, ServiceError};

/// botocore's service-model extras for the `bedrock` client: the five operations and their
/// shapes, merged into the real model when the file sits at
/// `$AWS_DATA_PATH/bedrock/2023-04-20/service-2.sdk-extras.json`.
pub const BOTOCORE_EXTRAS: &str = include_str!("service-2.sdk-extras.json");

/// Where [`BOTOCORE_EXTRAS`] goes below a directory on `AWS_DATA_PATH`.
pub const BOTOCORE_EXTRAS_PATH: &str = "bedrock/2023-04-20/service-2.sdk-extras.json";

#[derive(Clone)]
struct BatchState {
    service: Arc<dyn JobService>,
    config: Arc<ApiConfig>,
}

type ApiResult = Result<Json<Value>, ApiError>;

/// The batch-job routes (no fallback: the caller merges them into a router that has one).
pub fn routes(service: Arc<dyn JobService>, config: Arc<ApiConfig>) -> Router {
    Router::new()
        .route("/batch-inference-jobs", post(create).get(list))
        .route("/batch-inference-jobs/{jobId}", get(get_job))
        .route("/batch-inference-jobs/{jobId}/start", post(start))
        .route("/batch-inference-jobs/{jobId}/stop", post(stop))
        .with_state(BatchState { service, config })
}

fn arn(job: &Job, config: &ApiConfig) -> String {
    if job.arn.is_empty() {
        JobArn::new(&config.region, &config.account_id, job.id.clone()).to_string()
    } else {
        job.arn.clone()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn job_id(path: Result<Path<String>, PathRejection>) -> Result<JobId, ApiError> {
    let Path(raw) = path.map_err(|e| ApiError::validation(format!("jobId: {}", e.body_text())))?;
    JobArn::parse_identifier(&raw).map_err(|_| {
        ApiError::validation(format!(
            "jobId: {raw:?} is not a job id (12 lower-case letters and digits) or job ARN"
        ))
    })
}

/// A job of this API and the caller's account: another dialect's or account's job is not
/// found, as an unknown id.
async fn batch_job(state: &BatchState, caller: &Caller, id: &JobId) -> Result<Job, ApiError> {
    let job = state.service.get_job(&caller.account_id, id).await?;
    if job.request.dialect.kind() != DialectKind::BatchJob {
        return Err(
            ServiceError::NotFound(format!("Could not find batch inference job {id}")).into(),
        );
    }
    Ok(job)
}

/// A `/batch-inference-jobs/{jobId}/...` path names a job as [`batch_job`] finds it.
impl FindJob for BatchState {
    type Found = Job;
    type Error = ApiError;

    async fn find(
        &self,
        caller: &Caller,
        path: Result<Path<String>, PathRejection>,
    ) -> Result<Job, ApiError> {
        batch_job(self, caller, &job_id(path)?).await
    }
}

type PathJob = crate::path_job::PathJob<BatchState>;

fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        ApiError::validation(format!("Cannot read the request body: {}", e.body_text()))
    })
}

/// CreateBatchInferenceJob: `POST /batch-inference-jobs`. The job waits for its start.
async fn create(
    State(state): State<BatchState>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let request = batchd_core::JobRequest {
        account_id: caller.account_id,
        ..validate::parse_create(&body_bytes(body)?)?
    };
    let job = state.service.create_job(request).await?;
    Ok(job_answer(&job, &state.config))
}

/// What create and start answer: the job's id, ARN and status.
fn job_answer(job: &Job, config: &ApiConfig) -> Json<Value> {
    Json(json!({
        "jobId": job.id.as_str(),
        "jobArn": arn(job, config),
        "status": model::status_name(job.status),
    }))
}

/// StartBatchInferenceJob: `POST /batch-inference-jobs/{jobId}/start`.
async fn start(PathJob { state, caller, job }: PathJob) -> ApiResult {
    let job = state.service.start_job(&caller.account_id, &job.id).await?;
    Ok(job_answer(&job, &state.config))
}

/// GetBatchInferenceJob: `GET /batch-inference-jobs/{jobId}`.
async fn get_job(PathJob { state, job, .. }: PathJob) -> ApiResult {
    let timing = if job.status.is_terminal() {
        // The analysis's `{records, mean, p50, ...}` in this API's names.
        state.service.job_analysis(&job).await.and_then(|a| {
            let t = a.get("processing_time")?;
            t.get("mean").filter(|m| !m.is_null())?;
            Some(json!({
                "count": t.get("records"), "mean": t.get("mean"), "p50": t.get("p50"),
                "p90": t.get("p90"), "p99": t.get("p99"),
            }))
        })
    } else {
        // The counters are live already (`JobService::get_job`); the running job's
        // processing times are here.
        let live = state.service.live_progress(&job.id).await;
        live.and_then(|l| l.timing).map(
            |t| json!({"count": t.count, "mean": t.mean, "p50": t.p50, "p90": t.p90, "p99": t.p99}),
        )
    };
    Ok(Json(model::job_json(
        &job,
        &arn(&job, &state.config),
        now_ms(),
        timing.as_ref(),
    )))
}

/// StopBatchInferenceJob: `POST /batch-inference-jobs/{jobId}/stop`.
async fn stop(PathJob { state, caller, job }: PathJob) -> ApiResult {
    state.service.stop_job(&caller.account_id, &job.id).await?;
    let job = batch_job(&state, &caller, &job.id).await?;
    Ok(Json(json!({
        "jobId": job.id.as_str(),
        "status": model::status_name(job.status),
    })))
}

/// Jobs read from the store per scan while a status filter skips some.
const SCAN: u32 = 500;

/// ListBatchInferenceJobs: `GET /batch-inference-jobs`, newest first. One status name may
/// stand for several stored statuses (FAILED), so the filter is applied here, scanning on
/// until the page is full.
async fn list(
    State(state): State<BatchState>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult {
    let q = validate::parse_list_query(&query_pairs(query)?)?;
    let mut after = match &q.next_token {
        Some(token) => {
            let t = PageToken::decode(token)
                .ok_or_else(|| ApiError::validation("nextToken: not a token this API gave"))?;
            Some((t.submit_time_ms, t.job_id.to_string()))
        }
        None => None,
    };
    let page = q.max_results as usize;
    let mut jobs: Vec<Job> = Vec::new();
    let mut more = false;
    loop {
        let mut filter = JobFilter::new(JobOrigin::Api, SCAN);
        filter.dialect = Some(DialectKind::BatchJob);
        filter.account_id = Some(caller.account_id.clone());
        filter.after = after.clone();
        let scanned = state.service.list_jobs(filter).await?;
        let done = scanned.len() < SCAN as usize;
        for job in scanned {
            after = Some((job.submit_time_ms, job.id.to_string()));
            if q.status.as_ref().is_none_or(|s| s.contains(&job.status)) {
                if jobs.len() == page {
                    more = true;
                    break;
                }
                jobs.push(job);
            }
        }
        if more || done {
            break;
        }
    }
    let now = now_ms();
    let summaries: Vec<Value> = jobs
        .iter()
        .map(|job| model::job_json(job, &arn(job, &state.config), now, None))
        .collect();
    let mut body = json!({ "jobs": summaries });
    if more && let Some(last) = jobs.last() {
        body["nextToken"] = PageToken {
            ascending: false,
            submit_time_ms: last.submit_time_ms,
            job_id: last.id.clone(),
        }
        .encode()
        .into();
    }
    Ok(Json(body))
}
