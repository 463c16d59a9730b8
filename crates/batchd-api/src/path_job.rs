//! The extractor of every API's job routes (`.../{jobId}/...`): the job the path names, found
//! by that API's own rule (its dialect, the caller's account), with the route's state and caller.

use std::future::Future;

use axum::extract::rejection::PathRejection;
use axum::extract::{Extension, FromRequestParts, Path};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};

use crate::auth::Caller;

/// An API's state, which knows how that API finds the job a path names.
pub(crate) trait FindJob: Clone + Send + Sync + 'static {
    /// What the handlers get: the job (and whatever else the API keeps of the path).
    type Found: Send;
    /// A path that names no job of this API and caller, in the API's error shape.
    type Error: IntoResponse;

    fn find(
        &self,
        caller: &Caller,
        path: Result<Path<String>, PathRejection>,
    ) -> impl Future<Output = Result<Self::Found, Self::Error>> + Send;
}

/// The job a route's path names, with the route's state and caller.
pub(crate) struct PathJob<S: FindJob> {
    pub(crate) state: S,
    pub(crate) caller: Caller,
    pub(crate) job: S::Found,
}

impl<S: FindJob> FromRequestParts<S> for PathJob<S> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let Extension(caller) = Extension::<Caller>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let path = Path::<String>::from_request_parts(parts, state).await;
        let job = state
            .find(&caller, path)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(PathJob {
            state: state.clone(),
            caller,
            job,
        })
    }
}
