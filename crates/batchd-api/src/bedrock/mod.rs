//! The Amazon Bedrock batch control plane over HTTP (service `bedrock`, protocol rest-json,
//! model version 2023-04-20): CreateModelInvocationJob, GetModelInvocationJob,
//! ListModelInvocationJobs and StopModelInvocationJob, the tagging operations for job ARNs
//! (`tags`) and the foundation-model listing (`models`), so boto3 and the AWS CLI work with
//! only `endpoint_url` changed.
//!
//! Authentication: clients sign requests with SigV4 for service `bedrock` (boto3, the AWS CLI)
//! or send `Authorization: Bearer <Bedrock API key>`; [`crate::auth`]'s layer checks both
//! before any handler runs, and handlers see the caller's account only.
//!
//! Every response carries `x-amzn-RequestId`; errors also carry `x-amzn-ErrorType` and a
//! `{"__type", "message"}` body ([`ApiError`]).

pub mod error;
pub mod model;
pub mod models;
pub(crate) mod routes;
pub mod tags;
pub mod timestamp;
pub mod token;
pub mod validate;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use tracing::Instrument;

pub use error::{ApiError, ErrorKind};

use crate::JobService;
use crate::auth::{AuthLayer, Authenticator};

/// The SigV4 service name the routes' requests are signed for.
pub const SERVICE: &str = "bedrock";

/// Where this control plane claims to run. Job ARNs are stored with each job; these values
/// are for ARNs the API has to make itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    pub region: String,
    /// 12 digits.
    pub account_id: String,
    /// What ListFoundationModels and GetFoundationModel show.
    pub models: Vec<models::ModelInfo>,
}

/// Largest request body accepted (a create request is a few KiB at most).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// The request-id header botocore reports as `ResponseMetadata.RequestId`.
pub const REQUEST_ID_HEADER: &str = "x-amzn-RequestId";

/// The control plane's routes, ready for `axum::serve` (or to be nested/merged by the
/// caller), with the batch-job API and, when given, the OpenAI API beside them, every one
/// behind `auth`. Unknown paths answer 404 and known paths with another method 405, both as
/// `UnknownOperationException` (under `/v1/`, as OpenAI errors; after authentication, as on AWS).
pub fn router(
    service: Arc<dyn JobService>,
    config: ApiConfig,
    openai: Option<crate::OpenAiApi>,
    auth: Arc<Authenticator>,
) -> Router {
    let config = Arc::new(config);
    let batch_jobs = crate::batch_job::routes(service.clone(), config.clone());
    let openai = openai.map_or_else(Router::new, |api| {
        crate::openai::routes(api.files.clone(), api.config)
            .merge(crate::openai::batches::routes(service.clone(), api.files))
    });
    let model_routes = Router::new()
        .route("/foundation-models", get(models::list))
        .route("/foundation-models/{modelIdentifier}", get(models::get))
        .with_state(config.clone());
    let console = crate::console::routes(service.clone());
    let state = routes::AppState { service, config };
    Router::new()
        .route("/model-invocation-job", post(routes::create))
        .route(
            "/model-invocation-job/{jobIdentifier}",
            get(routes::get_job),
        )
        .route(
            "/model-invocation-job/{jobIdentifier}/stop",
            post(routes::stop),
        )
        .route("/model-invocation-jobs", get(routes::list))
        .route("/tagResource", post(tags::tag))
        .route("/untagResource", post(tags::untag))
        .route("/listTagsForResource", post(tags::list))
        .with_state(state)
        .merge(model_routes)
        .merge(batch_jobs)
        .merge(openai)
        .merge(console)
        .fallback(routes::unknown_route)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(
            AuthLayer {
                auth,
                service: SERVICE,
                max_body_bytes: MAX_BODY_BYTES,
                render: error::render_auth_error,
            },
            crate::auth::layer,
        ))
        .layer(middleware::from_fn(request_id))
}

const OPENAI_REQUEST_ID_HEADER: &str = "x-request-id";

/// Detail of an InternalServerException, carried from the error to the log line that also
/// names the request id (the client sees only a generic message).
#[derive(Debug, Clone)]
pub(crate) struct InternalDetail(pub String);

/// Gives every response an `x-amzn-RequestId` and logs server errors with it.
async fn request_id(request: Request, next: Next) -> Response {
    let id = new_request_id();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let span = tracing::info_span!("bedrock_api", request_id = %id, %method, %path);
    let mut response = next.run(request).instrument(span).await;
    if let Some(InternalDetail(detail)) = response.extensions().get::<InternalDetail>() {
        tracing::error!(request_id = %id, %method, %path, %detail, "internal error");
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        // The OpenAI SDKs read theirs (`_request_id`) from `x-request-id`.
        if path.starts_with("/v1/") {
            response
                .headers_mut()
                .insert(OPENAI_REQUEST_ID_HEADER, value.clone());
        }
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

/// A random UUIDv4-shaped id, as AWS request ids look.
fn new_request_id() -> String {
    let a = fastrand::u32(..);
    let b = fastrand::u16(..);
    let c = fastrand::u16(..) & 0x0fff;
    let d = (fastrand::u16(..) & 0x3fff) | 0x8000;
    let e = fastrand::u64(..) & 0xffff_ffff_ffff;
    format!("{a:08x}-{b:04x}-4{c:03x}-{d:04x}-{e:012x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_look_like_uuids() {
        let id = new_request_id();
        let groups: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
        assert!(id.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()));
        assert_ne!(id, new_request_id());
    }
}
