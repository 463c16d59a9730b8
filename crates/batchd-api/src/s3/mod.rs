//! The S3 API of `batchd serve`, on the same port as the other APIs: the local buckets
//! (`<data-dir>/buckets/<bucket>/<key>`, what `s3://` means without an endpoint) for
//! `aws s3`, `boto3.client("s3")` and any S3 client, so a batch workflow needs no other server.
//!
//! - [`with_s3`] puts [`dispatch`] in front of the app: a request signed for service `s3` (the
//!   SigV4 credential scope), or an unsigned one whose path is not one of the other APIs', goes
//!   to the S3 service; everything else to the app.
//! - Authentication is [`crate::auth`]'s, the same keys and accounts as every other route
//!   ([`Authenticator::check_streaming`]): the signature is checked before the body is read,
//!   and the signed body hash as the body streams into its temp file ([`local`]), so a 100 MB
//!   upload is never held in memory. s3s's own SigV4 check is not used (it would need every
//!   secret in a second form and could not serve the keyless loopback mode).
//! - `s3s` parses the S3 protocol (routing, XML, errors); [`local::LocalBuckets`] implements
//!   the operations on files; [`chunked`] decodes aws-chunked upload bodies.

pub mod chunked;
pub mod local;

use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use s3s::access::{S3Access, S3AccessContext};

pub use local::{KeyError, LocalBuckets, bucket_path, object_path};

use crate::auth::{AuthError, AuthErrorKind, Authenticator, sigv4};

/// The SigV4 service name of S3 requests.
pub const SERVICE: &str = "s3";

/// First path segments of the other APIs: an unsigned request (or one with a bearer key)
/// under one of them is theirs, any other is S3's. (None is a valid bucket name that a SigV4
/// client would send unsigned; signed requests are told apart by their scope.)
const API_PATHS: &[&str] = &[
    "model-invocation-job",
    "model-invocation-jobs",
    "batch-inference-jobs",
    "foundation-models",
    "tagResource",
    "untagResource",
    "listTagsForResource",
    "v1",
    "batchd",
    "metrics",
    "ui",
];

/// The S3 service and the authenticator it shares with the other APIs.
#[derive(Clone)]
pub struct S3Api {
    service: Arc<s3s::service::S3Service>,
    auth: Arc<Authenticator>,
}

impl std::fmt::Debug for S3Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Api").finish_non_exhaustive()
    }
}

/// Every request that reaches s3s was admitted by [`crate::auth`] already.
struct Admitted;

#[async_trait::async_trait]
impl S3Access for Admitted {
    async fn check(&self, _cx: &mut S3AccessContext<'_>) -> s3s::S3Result<()> {
        Ok(())
    }
}

impl S3Api {
    pub fn new(buckets: LocalBuckets, auth: Arc<Authenticator>) -> Self {
        let mut builder = s3s::service::S3ServiceBuilder::new(buckets);
        builder.set_access(Admitted);
        Self {
            service: Arc::new(builder.build()),
            auth,
        }
    }

    async fn call(&self, request: Request) -> Response {
        let (mut parts, body) = request.into_parts();
        let checked = self.auth.check_streaming(
            &sigv4::Request::of(&parts, None),
            SERVICE,
            SystemTime::now(),
        );
        let caller = match checked {
            Ok(caller) => caller,
            Err(e) => {
                tracing::info!(code = e.kind.code(), message = %e.message, "S3 request refused");
                return auth_error(&e);
            }
        };
        parts.extensions.insert(caller);
        // Checked here; s3s would otherwise look for its own secret store.
        parts.headers.remove(header::AUTHORIZATION);
        let streaming = parts
            .headers
            .get("x-amz-content-sha256")
            .is_some_and(|v| v.as_bytes().starts_with(b"STREAMING-"));
        let body = if streaming {
            match unchunk_headers(&mut parts.headers) {
                Ok(()) => {}
                Err(message) => {
                    return xml_error(StatusCode::LENGTH_REQUIRED, "MissingContentLength", message);
                }
            }
            let data = body
                .into_data_stream()
                .map(|r| r.map_err(std::io::Error::other));
            s3s::Body::http_body_unsync(Body::from_stream(chunked::decode(data)))
        } else {
            s3s::Body::http_body_unsync(body)
        };
        match self
            .service
            .call(axum::http::Request::from_parts(parts, body))
            .await
        {
            Ok(response) => response.map(Body::new),
            Err(e) => {
                tracing::error!(error = ?e, "S3 API: internal error");
                xml_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    "We encountered an internal error. Please try again.",
                )
            }
        }
    }
}

/// Headers of an aws-chunked request made to describe the decoded body: its length is
/// `x-amz-decoded-content-length`, its encoding loses `aws-chunked`, and its (already
/// checked) payload claim becomes UNSIGNED-PAYLOAD.
fn unchunk_headers(headers: &mut HeaderMap) -> Result<(), &'static str> {
    let decoded = headers
        .get("x-amz-decoded-content-length")
        .cloned()
        .ok_or("aws-chunked bodies need x-amz-decoded-content-length")?;
    headers.insert(header::CONTENT_LENGTH, decoded);
    let encodings: Vec<String> = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty() && !e.eq_ignore_ascii_case("aws-chunked"))
        .map(str::to_owned)
        .collect();
    headers.remove(header::CONTENT_ENCODING);
    if !encodings.is_empty()
        && let Ok(v) = HeaderValue::from_str(&encodings.join(","))
    {
        headers.insert(header::CONTENT_ENCODING, v);
    }
    headers.insert(
        "x-amz-content-sha256",
        HeaderValue::from_static(sigv4::UNSIGNED_PAYLOAD),
    );
    headers.remove("x-amz-trailer");
    Ok(())
}

/// The service of a SigV4 `Authorization` header's credential scope.
fn scope_service(authorization: &str) -> Option<&str> {
    let credential = authorization.split("Credential=").nth(1)?;
    let credential = credential.split([',', ' ']).next()?;
    credential.split('/').nth(3)
}

/// Whether a request is for the S3 API (see the module's doc).
pub fn is_s3_request(headers: &HeaderMap, uri: &Uri) -> bool {
    if let Some(auth) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        if auth.starts_with(sigv4::ALGORITHM) {
            return scope_service(auth) == Some(SERVICE);
        }
        // SigV2 was only ever S3's.
        if auth.starts_with("AWS ") {
            return true;
        }
    }
    if let Some(query) = uri.query()
        && query.contains("X-Amz-Credential=")
    {
        return query.contains("%2Fs3%2F") || query.contains("/s3/");
    }
    let first = uri
        .path()
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default();
    !API_PATHS.contains(&first)
}

/// The middleware: S3 requests to the S3 service, the rest on to the app.
pub async fn dispatch(State(api): State<Arc<S3Api>>, request: Request, next: Next) -> Response {
    if is_s3_request(request.headers(), request.uri()) {
        api.call(request).await
    } else {
        next.run(request).await
    }
}

/// `app` with the S3 API in front of it.
pub fn with_s3(app: Router, api: S3Api) -> Router {
    app.layer(middleware::from_fn_with_state(Arc::new(api), dispatch))
}

/// S3's XML error body.
fn xml_error(status: StatusCode, code: &str, message: &str) -> Response {
    let escaped = message
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{escaped}</Message></Error>"
    );
    (status, [(header::CONTENT_TYPE, "application/xml")], body).into_response()
}

/// An authentication refusal with the code S3 answers in the same case.
fn auth_error(e: &AuthError) -> Response {
    let (status, code) = match e.kind {
        AuthErrorKind::MissingAuthenticationToken => (StatusCode::FORBIDDEN, "AccessDenied"),
        AuthErrorKind::UnrecognizedClient => (StatusCode::FORBIDDEN, "InvalidAccessKeyId"),
        AuthErrorKind::InvalidSignature if e.message.starts_with("Signature expired") => {
            (StatusCode::FORBIDDEN, "RequestTimeTooSkewed")
        }
        AuthErrorKind::InvalidSignature => (StatusCode::FORBIDDEN, "SignatureDoesNotMatch"),
        AuthErrorKind::IncompleteSignature => {
            (StatusCode::BAD_REQUEST, "AuthorizationHeaderMalformed")
        }
        AuthErrorKind::RequestEntityTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "EntityTooLarge"),
    };
    xml_error(status, code, &e.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(auth: Option<&str>, uri: &str) -> bool {
        let mut headers = HeaderMap::new();
        if let Some(a) = auth {
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(a).unwrap());
        }
        is_s3_request(&headers, &uri.parse().unwrap())
    }

    #[test]
    fn requests_are_told_apart_by_scope_then_path() {
        let signed = |service: &str| {
            format!(
                "AWS4-HMAC-SHA256 Credential=AK/20240102/us-east-1/{service}/aws4_request, \
                 SignedHeaders=host;x-amz-date, Signature=abc"
            )
        };
        assert!(req(Some(&signed("s3")), "/model-invocation-jobs"));
        assert!(!req(Some(&signed("bedrock")), "/my-bucket/key"));
        assert!(!req(Some(&signed("bedrock")), "/"));
        assert!(req(None, "/my-bucket/key"));
        assert!(req(None, "/"));
        assert!(!req(None, "/model-invocation-jobs"));
        assert!(!req(Some("Bearer x"), "/v1/files"));
        assert!(!req(None, "/batchd/metrics"));
        assert!(req(
            None,
            "/b/k?X-Amz-Credential=AK%2F20240102%2Fus-east-1%2Fs3%2Faws4_request"
        ));
    }

    #[test]
    fn chunked_headers_describe_the_decoded_body() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-amz-decoded-content-length",
            HeaderValue::from_static("11"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("80"));
        h.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static("aws-chunked"),
        );
        h.insert(
            "x-amz-content-sha256",
            HeaderValue::from_static("STREAMING-UNSIGNED-PAYLOAD-TRAILER"),
        );
        unchunk_headers(&mut h).unwrap();
        assert_eq!(h[header::CONTENT_LENGTH], "11");
        assert!(h.get(header::CONTENT_ENCODING).is_none());
        assert_eq!(h["x-amz-content-sha256"], "UNSIGNED-PAYLOAD");
        assert!(unchunk_headers(&mut HeaderMap::new()).is_err());
    }
}
