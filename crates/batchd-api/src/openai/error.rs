//! OpenAI's error answers: `{"error": {"message", "type", "param", "code"}}` with the status
//! code the SDKs turn into their exception classes (openai-python: 400 `BadRequestError`, 401
//! `AuthenticationError`, 403 `PermissionDeniedError`, 404 `NotFoundError`, 409
//! `ConflictError`, 429 `RateLimitError`, 5xx `InternalServerError`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::ServiceError;
use crate::auth::{AuthError, AuthErrorKind};
use crate::bedrock::InternalDetail;

/// An error answer of the OpenAI API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct OpenAiError {
    pub status: StatusCode,
    pub message: String,
    /// The body's `type`.
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<String>,
    /// What a server error hides from the client; logged with the request id.
    detail: Option<String>,
}

impl OpenAiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            detail: None,
        }
    }

    /// 400 `invalid_request_error`, naming the parameter at fault when there is one.
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        Self {
            param: param.map(str::to_owned),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        }
    }

    /// 404: an unknown object or path (OpenAI's type for these is `invalid_request_error`).
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", message)
    }

    /// 405: a known path with a method it does not take.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            message,
        )
    }

    /// 409: the object is in a state that refuses the request (cancelling an ended batch).
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "invalid_request_error", message)
    }

    /// 401 with code `invalid_api_key`: the one place an API-key check answers from.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message)
            .with_code("invalid_api_key")
    }

    /// 429 `rate_limit_exceeded`.
    pub fn rate_limited(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            message,
        )
        .with_code("rate_limit_exceeded")
    }

    /// 500 `server_error`: the client sees a generic message, the log gets `detail`.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self {
            detail: Some(detail.into()),
            ..Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "The server had an error while processing your request; see the batchd log.",
            )
        }
    }

    pub fn with_code(mut self, code: &str) -> Self {
        self.code = Some(code.to_owned());
        self
    }

    pub fn with_param(mut self, param: &str) -> Self {
        self.param = Some(param.to_owned());
        self
    }
}

impl From<ServiceError> for OpenAiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::NotFound(m) => Self::not_found(m),
            ServiceError::Validation(m) => Self::invalid(m, None),
            ServiceError::Conflict(m) => Self::conflict(m),
            ServiceError::QuotaExceeded(m) => Self::rate_limited(m),
            ServiceError::Internal(detail) => Self::internal(detail),
        }
    }
}

/// A refusal of the authentication layer as OpenAI answers one: 401 `invalid_api_key` (the
/// SDK's `AuthenticationError`), or 413 for a body too large to check.
pub fn render_auth_error(e: AuthError) -> Response {
    let error = match e.kind {
        AuthErrorKind::MissingAuthenticationToken => OpenAiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "You didn't provide an API key. You need to provide your API key in an \
             Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        ),
        AuthErrorKind::RequestEntityTooLarge => OpenAiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            e.message,
        ),
        AuthErrorKind::UnrecognizedClient
        | AuthErrorKind::InvalidSignature
        | AuthErrorKind::IncompleteSignature => {
            OpenAiError::unauthorized("Incorrect API key provided.")
        }
    };
    error.into_response()
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(detail) = self.detail {
            response.extensions_mut().insert(InternalDetail(detail));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn rendered(e: OpenAiError) -> (u16, String, serde_json::Value) {
        let response = e.into_response();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, content_type, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn errors_render_openais_shape_and_status() {
        let cases = [
            (
                OpenAiError::invalid("File is too large.", Some("file")),
                400,
                "invalid_request_error",
                Some("file"),
                None,
            ),
            (
                OpenAiError::not_found("No such File object: file-x"),
                404,
                "invalid_request_error",
                None,
                None,
            ),
            (
                OpenAiError::conflict("ended"),
                409,
                "invalid_request_error",
                None,
                None,
            ),
            (
                OpenAiError::unauthorized("Incorrect API key provided."),
                401,
                "invalid_request_error",
                None,
                Some("invalid_api_key"),
            ),
            (
                OpenAiError::rate_limited("slow down"),
                429,
                "rate_limit_exceeded",
                None,
                Some("rate_limit_exceeded"),
            ),
        ];
        for (error, status, kind, param, code) in cases {
            let message = error.message.clone();
            let (got, content_type, body) = rendered(error).await;
            assert_eq!(got, status, "{body}");
            assert_eq!(content_type, "application/json");
            assert_eq!(
                body,
                serde_json::json!({"error": {
                    "message": message, "type": kind, "param": param, "code": code,
                }})
            );
        }
    }

    #[tokio::test]
    async fn service_errors_map_to_statuses_and_internal_details_stay_in_the_log() {
        let statuses = [
            (ServiceError::NotFound("x".into()), 404),
            (ServiceError::Validation("x".into()), 400),
            (ServiceError::Conflict("x".into()), 409),
            (ServiceError::QuotaExceeded("x".into()), 429),
            (ServiceError::Internal("x".into()), 500),
        ];
        for (e, status) in statuses {
            assert_eq!(OpenAiError::from(e).status.as_u16(), status);
        }
        let response = OpenAiError::from(ServiceError::Internal("/secret/path: disk full".into()))
            .into_response();
        let detail = response.extensions().get::<InternalDetail>().cloned();
        assert_eq!(
            detail.map(|d| d.0),
            Some("/secret/path: disk full".to_owned())
        );
        let (_, _, body) = rendered(OpenAiError::internal("/secret/path: disk full")).await;
        assert_eq!(body["error"]["type"], "server_error");
        assert!(!body.to_string().contains("secret"), "{body}");
    }
}
