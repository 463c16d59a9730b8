//! The four operation handlers and the fallbacks for unknown routes and methods.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use batchd_core::{DialectKind, JobFilter, JobOrigin};
use batchd_core::{JobArn, JobId};
use serde_json::{Value, json};

use super::error::ApiError;
use super::token::PageToken;
use super::validate::{self, Violations};
use super::{ApiConfig, MAX_BODY_BYTES, model};
use crate::JobService;
use crate::auth::Caller;
use crate::path_job::FindJob;

#[derive(Clone)]
pub(super) struct AppState {
    pub service: Arc<dyn JobService>,
    pub config: Arc<ApiConfig>,
}

type ApiResult = Result<Json<Value>, ApiError>;

/// The model's `ModelInvocationJobIdentifier` pattern, for the message.
const JOB_IDENTIFIER_PATTERN: &str =
    "((arn:aws(-[^:]+)?:bedrock:[a-z0-9-]{1,20}:[0-9]{12}:model-invocation-job/)?[a-z0-9]{12})";

/// The job id of a `{jobIdentifier}` label (already percent-decoded by `Path`).
fn job_id(path: Result<Path<String>, PathRejection>) -> Result<JobId, ApiError> {
    let Path(raw) = path.map_err(|e| {
        ApiError::validation(format!(
            "1 validation error detected: Value at 'jobIdentifier' failed to satisfy constraint: {}",
            e.body_text()
        ))
    })?;
    JobArn::parse_identifier(&raw).map_err(|_| {
        let mut v = Violations::default();
        v.add(
            "jobIdentifier",
            Some(&Value::String(raw.clone())),
            &format!("Member must satisfy regular expression pattern: {JOB_IDENTIFIER_PATTERN}"),
        );
        v.into_result()
            .err()
            .unwrap_or_else(|| ApiError::validation("invalid jobIdentifier"))
    })
}

/// A job of this API and the caller's account: another dialect's or account's job is not
/// found, as an unknown id.
async fn bedrock_job(
    state: &AppState,
    caller: &Caller,
    id: &JobId,
) -> Result<batchd_core::Job, ApiError> {
    let job = state.service.get_job(&caller.account_id, id).await?;
    if job.request.dialect.kind() != DialectKind::Bedrock {
        return Err(crate::ServiceError::NotFound(format!("Could not find job {id}")).into());
    }
    Ok(job)
}

/// A `/model-invocation-job/{jobIdentifier}/...` path names a job as [`bedrock_job`] finds it.
impl FindJob for AppState {
    type Found = batchd_core::Job;
    type Error = ApiError;

    async fn find(
        &self,
        caller: &Caller,
        path: Result<Path<String>, PathRejection>,
    ) -> Result<batchd_core::Job, ApiError> {
        bedrock_job(self, caller, &job_id(path)?).await
    }
}

type PathJob = crate::path_job::PathJob<AppState>;

/// CreateModelInvocationJob: `POST /model-invocation-job`.
pub(super) async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::validation(format!(
                "The request body is larger than {MAX_BODY_BYTES} bytes."
            ))
        } else {
            ApiError::validation(format!("Cannot read the request body: {}", e.body_text()))
        }
    })?;
    let request = batchd_core::JobRequest {
        account_id: caller.account_id,
        ..validate::parse_create(&body)?
    };
    let job = state.service.create_job(request).await?;
    Ok(Json(
        json!({ "jobArn": model::job_arn(&job, &state.config) }),
    ))
}

/// GetModelInvocationJob: `GET /model-invocation-job/{jobIdentifier}`.
pub(super) async fn get_job(PathJob { state, job, .. }: PathJob) -> Result<Response, ApiError> {
    Ok(Json(model::job_json(&job, &state.config)).into_response())
}

/// StopModelInvocationJob: `POST /model-invocation-job/{jobIdentifier}/stop`. The output
/// shape has no members; `{}` with a JSON content type parses in every SDK.
pub(super) async fn stop(PathJob { state, caller, job }: PathJob) -> ApiResult {
    state.service.stop_job(&caller.account_id, &job.id).await?;
    Ok(Json(json!({})))
}

/// ListModelInvocationJobs: `GET /model-invocation-jobs`. Asks the service for one row more
/// than the page size to learn whether a `nextToken` is due.
pub(super) async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = validate::parse_list_query(&query_pairs(query)?)?;
    let filter = JobFilter {
        origin: JobOrigin::Api,
        dialect: Some(DialectKind::Bedrock),
        account_id: Some(caller.account_id),
        submit_time_after_ms: q.submit_time_after_ms,
        submit_time_before_ms: q.submit_time_before_ms,
        status: q.status,
        name_contains: q.name_contains.clone(),
        ascending: q.ascending,
        after: q.after.as_ref().map(|(t, id)| (*t, id.to_string())),
        limit: q.max_results + 1,
    };
    let mut jobs = state.service.list_jobs(filter).await?;
    let page = q.max_results as usize;
    let next_token = if jobs.len() > page {
        jobs.truncate(page);
        jobs.last().map(|last| {
            PageToken {
                ascending: q.ascending,
                submit_time_ms: last.submit_time_ms,
                job_id: last.id.clone(),
            }
            .encode()
        })
    } else {
        None
    };
    Ok(Json(model::JobList {
        invocation_job_summaries: jobs
            .iter()
            .map(|job| model::job_json(job, &state.config))
            .collect(),
        next_token,
    })
    .into_response())
}

/// The query string's pairs, or a ValidationException for a malformed one.
pub(crate) fn query_pairs(
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Vec<(String, String)>, ApiError> {
    let Query(pairs) = query.map_err(|e| {
        ApiError::validation(format!("The query string is malformed: {}", e.body_text()))
    })?;
    Ok(pairs)
}

pub(super) async fn unknown_route(method: Method, uri: Uri) -> ApiError {
    ApiError::unknown_operation(
        StatusCode::NOT_FOUND,
        format!("No operation matches {method} {}", uri.path()),
    )
}

pub(super) async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::unknown_operation(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} does not accept {method}", uri.path()),
    )
}
