//! Bedrock's rest-json errors: one [`ApiError`] type that renders as a status code, the
//! `x-amzn-ErrorType` header and a `{"__type", "message"}` body, the shape botocore parses.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::InternalDetail;
use crate::ServiceError;
use crate::auth::{AuthError, AuthErrorKind};

/// The header botocore reads the error code from (before the body's `__type`).
pub const ERROR_TYPE_HEADER: &str = "x-amzn-ErrorType";

/// The error types the control plane answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Validation,
    ResourceNotFound,
    Conflict,
    ServiceQuotaExceeded,
    /// TagResource would leave a resource with more tags than allowed.
    TooManyTags,
    AccessDenied,
    Throttling,
    InternalServer,
    /// No such route, or a route that does not take this method (not a modelled error; the
    /// name follows what AWS front ends answer for an unknown operation).
    UnknownOperation,
    /// An authentication refusal (`crate::auth`), with AWS's code for it.
    Auth(AuthErrorKind),
}

impl ErrorKind {
    /// The error code, as `__type` and `x-amzn-ErrorType`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Validation => "ValidationException",
            Self::ResourceNotFound => "ResourceNotFoundException",
            Self::Conflict => "ConflictException",
            Self::ServiceQuotaExceeded => "ServiceQuotaExceededException",
            Self::TooManyTags => "TooManyTagsException",
            Self::AccessDenied => "AccessDeniedException",
            Self::Throttling => "ThrottlingException",
            Self::InternalServer => "InternalServerException",
            Self::UnknownOperation => "UnknownOperationException",
            Self::Auth(kind) => kind.code(),
        }
    }

    /// The HTTP status of the service model (Conflict and ServiceQuota are 400, not 409/402).
    pub fn status(self) -> StatusCode {
        match self {
            Self::Validation | Self::Conflict | Self::ServiceQuotaExceeded | Self::TooManyTags => {
                StatusCode::BAD_REQUEST
            }
            Self::AccessDenied => StatusCode::FORBIDDEN,
            Self::ResourceNotFound | Self::UnknownOperation => StatusCode::NOT_FOUND,
            Self::Throttling => StatusCode::TOO_MANY_REQUESTS,
            Self::InternalServer => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Auth(kind) => kind.status(),
        }
    }
}

/// An error answer of the control plane.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", kind.as_str())]
pub struct ApiError {
    pub kind: ErrorKind,
    /// Usually `kind.status()`; 405 for a known path with the wrong method.
    pub status: StatusCode,
    pub message: String,
    /// What an InternalServerException hides from the client; logged with the request id.
    detail: Option<String>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            status: kind.status(),
            message: message.into(),
            detail: None,
        }
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Validation, message)
    }

    pub fn unknown_operation(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::UnknownOperation,
            status,
            message: message.into(),
            detail: None,
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::NotFound(m) => Self::new(ErrorKind::ResourceNotFound, m),
            ServiceError::Validation(m) => Self::new(ErrorKind::Validation, m),
            ServiceError::Conflict(m) => Self::new(ErrorKind::Conflict, m),
            ServiceError::QuotaExceeded(m) => Self::new(ErrorKind::ServiceQuotaExceeded, m),
            // The detail may name paths or SQL: it goes to the log, not to the client.
            ServiceError::Internal(detail) => Self {
                detail: Some(detail),
                ..Self::new(
                    ErrorKind::InternalServer,
                    "The server encountered an internal error; see the batchd log for details.",
                )
            },
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        Self::new(ErrorKind::Auth(e.kind), e.message)
    }
}

/// The Bedrock routes' [`crate::auth::Render`]: a refusal as a rest-json error.
/// A refusal in rest-json; a path under `/v1/` gets the OpenAI API's shape instead, so the
/// `openai` SDK raises its own exception classes.
pub fn render_auth_error(e: AuthError, path: &str) -> Response {
    if path.starts_with("/v1/") {
        return crate::openai::error::render_auth_error(e);
    }
    ApiError::from(e).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "__type": self.kind.as_str(),
            "message": self.message,
        });
        let mut response = (self.status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            ERROR_TYPE_HEADER,
            HeaderValue::from_static(self.kind.as_str()),
        );
        if let Some(detail) = self.detail {
            response.extensions_mut().insert(InternalDetail(detail));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_errors_map_to_the_modelled_types_and_codes() {
        let cases = [
            (
                ServiceError::NotFound("x".into()),
                "ResourceNotFoundException",
                404,
            ),
            (
                ServiceError::Validation("x".into()),
                "ValidationException",
                400,
            ),
            (ServiceError::Conflict("x".into()), "ConflictException", 400),
            (
                ServiceError::QuotaExceeded("x".into()),
                "ServiceQuotaExceededException",
                400,
            ),
            (
                ServiceError::Internal("x".into()),
                "InternalServerException",
                500,
            ),
        ];
        for (service, code, status) in cases {
            let api = ApiError::from(service);
            assert_eq!(api.kind.as_str(), code);
            assert_eq!(api.status.as_u16(), status);
        }
    }

    #[test]
    fn internal_details_stay_out_of_the_message() {
        let api = ApiError::from(ServiceError::Internal("disk /secret full".into()));
        assert!(!api.message.contains("secret"), "{}", api.message);
    }
}
