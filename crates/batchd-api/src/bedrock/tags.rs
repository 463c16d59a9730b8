//! TagResource, UntagResource and ListTagsForResource (`POST /tagResource`, `/untagResource`,
//! `/listTagsForResource`) for the ARNs of the caller's model invocation jobs. A create
//! request's `tags` are a job's first tags.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use batchd_core::{DialectKind, JobArn, JobId};
use serde_json::{Value, json};

use super::error::{ApiError, ErrorKind};
use super::routes::AppState;
use super::validate;
use crate::auth::Caller;

/// Tags a job may carry (AWS's limit of user tags per resource; Bedrock's own number is
/// UNCONFIRMED).
pub const MAX_TAGS_PER_RESOURCE: usize = 50;

type ApiResult = Result<Json<Value>, ApiError>;

fn body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        ApiError::validation(format!("Cannot read the request body: {}", e.body_text()))
    })
}

/// The job a resource ARN names, if it is a Bedrock job of the caller's account; any other
/// resource is not found (batchd tags only jobs).
async fn tagged_job(state: &AppState, caller: &Caller, arn: &str) -> Result<JobId, ApiError> {
    let not_found = || {
        ApiError::new(
            ErrorKind::ResourceNotFound,
            format!("The resource {arn} does not exist."),
        )
    };
    if !arn.starts_with("arn:") || !arn.contains(":model-invocation-job/") {
        return Err(not_found());
    }
    let id = JobArn::parse_identifier(arn).map_err(|_| not_found())?;
    let job = state
        .service
        .get_job(&caller.account_id, &id)
        .await
        .map_err(|_| not_found())?;
    if job.request.dialect.kind() != DialectKind::Bedrock {
        return Err(not_found());
    }
    Ok(id)
}

/// TagResource.
pub(super) async fn tag(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    request: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (arn, tags) = validate::parse_tag_resource(&body(request)?)?;
    if let Some((key, _)) = tags.iter().find(|(k, _)| k.starts_with("aws:")) {
        return Err(ApiError::validation(format!(
            "Tag keys may not start with the reserved prefix aws: ('{key}')."
        )));
    }
    let id = tagged_job(&state, &caller, &arn).await?;
    let current = state.service.job_tags(&caller.account_id, &id).await?;
    let added = tags
        .iter()
        .filter(|(k, _)| !current.iter().any(|(c, _)| c == k))
        .count();
    if current.len() + added > MAX_TAGS_PER_RESOURCE {
        return Err(ApiError::new(
            ErrorKind::TooManyTags,
            format!(
                "The resource {arn} would have {} tags; at most {MAX_TAGS_PER_RESOURCE} are allowed.",
                current.len() + added
            ),
        ));
    }
    state.service.tag_job(&caller.account_id, &id, tags).await?;
    Ok(Json(json!({})))
}

/// UntagResource.
pub(super) async fn untag(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    request: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (arn, keys) = validate::parse_untag_resource(&body(request)?)?;
    let id = tagged_job(&state, &caller, &arn).await?;
    state
        .service
        .untag_job(&caller.account_id, &id, keys)
        .await?;
    Ok(Json(json!({})))
}

/// ListTagsForResource.
pub(super) async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    request: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let arn = validate::parse_list_tags(&body(request)?)?;
    let id = tagged_job(&state, &caller, &arn).await?;
    let tags: Vec<Value> = state
        .service
        .job_tags(&caller.account_id, &id)
        .await?
        .into_iter()
        .map(|(key, value)| json!({"key": key, "value": value}))
        .collect();
    Ok(Json(json!({ "tags": tags })))
}
