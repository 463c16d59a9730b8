//! Authentication, once for every API batchd serves: a request is signed with SigV4 (boto3, the
//! AWS CLI) or carries `Authorization: Bearer <key>` (Bedrock API keys, the OpenAI SDK), and
//! the key says which account the caller is. [`layer`] is the axum middleware: it admits a
//! request and puts its [`Caller`] into the request's extensions (handlers take
//! `Extension<Caller>`), or answers the refusal in the dialect's error shape ([`Render`]:
//! rest-json for the Bedrock routes; the OpenAI API will bring its `{"error": {...}}`).
//!
//! With no keys and no tokens configured every request is the caller
//! [`AuthConfig::anonymous_account`]; `batchd serve` allows that only on a loopback address.

pub mod sigv4;

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The account of every caller when authentication is off.
pub const ANONYMOUS_ACCOUNT: &str = "000000000000";

/// A secret that does not print: `Debug` shows `***`, so no log line or error can carry it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself, for the signing math only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// An access key of `[[auth.keys]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessKey {
    pub access_key_id: String,
    pub secret: Secret,
    pub account_id: String,
}

/// A bearer key of `[[auth.tokens]]`, kept as its SHA-256 only.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerKey {
    sha256: [u8; 32],
    pub account_id: String,
}

impl fmt::Debug for BearerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerKey")
            .field("account_id", &self.account_id)
            .finish_non_exhaustive()
    }
}

/// A `sha256:` hash that is not 64 hex digits.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "a hashed bearer key must be \"sha256:\" and 64 hex digits (printf %s \"$KEY\" | sha256sum)"
)]
pub struct BadKeyHash;

impl BearerKey {
    pub fn from_token(token: &str, account_id: impl Into<String>) -> Self {
        Self {
            sha256: Sha256::digest(token.as_bytes()).into(),
            account_id: account_id.into(),
        }
    }

    /// From `sha256:<64 hex digits>`, how a key file holds it.
    pub fn from_hash(hash: &str, account_id: impl Into<String>) -> Result<Self, BadKeyHash> {
        let hex_digits = hash.trim().strip_prefix("sha256:").ok_or(BadKeyHash)?;
        let mut sha256 = [0u8; 32];
        hex::decode_to_slice(hex_digits, &mut sha256).map_err(|_| BadKeyHash)?;
        Ok(Self {
            sha256,
            account_id: account_id.into(),
        })
    }
}

/// Who may call, and as which account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    pub keys: Vec<AccessKey>,
    pub tokens: Vec<BearerKey>,
    /// Regions a SigV4 request may be scoped to; `None`: any.
    pub regions: Option<Vec<String>>,
    /// Every caller's account when there are no keys and no tokens.
    pub anonymous_account: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            tokens: Vec::new(),
            regions: None,
            anonymous_account: ANONYMOUS_ACCOUNT.into(),
        }
    }
}

/// The caller of an admitted request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// 12 digits: the account whose jobs this caller sees.
    pub account_id: String,
    pub credential: Credential,
}

/// How a caller proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// Authentication is off (no keys configured, loopback only).
    Anonymous,
    /// SigV4 with this access key id.
    AccessKey(String),
    /// A bearer key.
    BearerKey,
}

/// Why a request is refused; each kind is the error code AWS answers in the same case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthErrorKind {
    /// No `Authorization` header.
    MissingAuthenticationToken,
    /// An unknown access key id or bearer key.
    UnrecognizedClient,
    /// A wrong signature, scope or date.
    InvalidSignature,
    /// A malformed `Authorization` header, or a signed header that is not there.
    IncompleteSignature,
    /// A body over the route's limit (read to check its hash).
    RequestEntityTooLarge,
}

impl AuthErrorKind {
    pub fn code(self) -> &'static str {
        match self {
            Self::MissingAuthenticationToken => "MissingAuthenticationTokenException",
            Self::UnrecognizedClient => "UnrecognizedClientException",
            Self::InvalidSignature => "InvalidSignatureException",
            Self::IncompleteSignature => "IncompleteSignatureException",
            Self::RequestEntityTooLarge => "RequestEntityTooLargeException",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Self::IncompleteSignature => StatusCode::BAD_REQUEST,
            Self::RequestEntityTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::MissingAuthenticationToken
            | Self::UnrecognizedClient
            | Self::InvalidSignature => StatusCode::FORBIDDEN,
        }
    }
}

/// A refusal: never names a secret (only what the client sent in the clear).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", kind.code())]
pub struct AuthError {
    pub kind: AuthErrorKind,
    pub message: String,
}

impl AuthError {
    pub fn new(kind: AuthErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// How a refusal is answered, given the request's path: in the shape of the dialect that
/// serves the path (rest-json: [`crate::ApiError`]'s; `/v1/`: [`crate::OpenAiError`]'s).
pub type Render = fn(AuthError, &str) -> Response;

/// Checks requests against the configured keys.
#[derive(Debug)]
pub struct Authenticator {
    config: AuthConfig,
}

impl Authenticator {
    pub fn new(config: AuthConfig) -> Self {
        Self { config }
    }

    /// No keys and no tokens: every request is the anonymous account's.
    pub fn is_open(&self) -> bool {
        self.config.keys.is_empty() && self.config.tokens.is_empty()
    }

    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// The caller of a request whose body has been read (or, for `UNSIGNED-PAYLOAD`, need not
    /// be: `body` is `None`), at time `now`, for `service` (the SigV4 scope's service).
    pub fn check(
        &self,
        request: &sigv4::Request<'_>,
        service: &str,
        now: SystemTime,
    ) -> Result<Caller, AuthError> {
        self.check_with(request, service, now, false)
    }

    /// [`Self::check`] for a body the caller reads later (S3 uploads): the signature covers
    /// the claimed `x-amz-content-sha256`, which the caller must check against the body as it
    /// streams (see [`sigv4::Verifier::deferred_payload`]).
    pub fn check_streaming(
        &self,
        request: &sigv4::Request<'_>,
        service: &str,
        now: SystemTime,
    ) -> Result<Caller, AuthError> {
        self.check_with(request, service, now, true)
    }

    fn check_with(
        &self,
        request: &sigv4::Request<'_>,
        service: &str,
        now: SystemTime,
        deferred_payload: bool,
    ) -> Result<Caller, AuthError> {
        if self.is_open() {
            return Ok(Caller {
                account_id: self.config.anonymous_account.clone(),
                credential: Credential::Anonymous,
            });
        }
        let authorization = authorization(request.headers)?;
        if let Some(token) = authorization.strip_prefix("Bearer ") {
            return self.check_bearer(token.trim());
        }
        let verifier = sigv4::Verifier {
            service,
            regions: self.config.regions.as_deref(),
            keys: &self.config.keys,
            now,
            deferred_payload,
        };
        let key = verifier.verify(request, authorization)?;
        Ok(Caller {
            account_id: key.account_id.clone(),
            credential: Credential::AccessKey(key.access_key_id.clone()),
        })
    }

    fn check_bearer(&self, token: &str) -> Result<Caller, AuthError> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Every key is compared, so the time taken does not say which one came close.
        let mut found = None;
        for key in &self.config.tokens {
            if bool::from(key.sha256.ct_eq(&presented)) {
                found = Some(key);
            }
        }
        found
            .map(|key| Caller {
                account_id: key.account_id.clone(),
                credential: Credential::BearerKey,
            })
            .ok_or_else(|| {
                AuthError::new(
                    AuthErrorKind::UnrecognizedClient,
                    "The security token included in the request is invalid.",
                )
            })
    }
}

/// The one `Authorization` header, as text.
fn authorization(headers: &HeaderMap) -> Result<&str, AuthError> {
    let mut values = headers.get_all(axum::http::header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        if headers.contains_key(axum::http::header::AUTHORIZATION) {
            return Err(AuthError::new(
                AuthErrorKind::IncompleteSignature,
                "The request has more than one Authorization header.",
            ));
        }
        return Err(AuthError::new(
            AuthErrorKind::MissingAuthenticationToken,
            "Missing Authentication Token",
        ));
    };
    value.to_str().map_err(|_| {
        AuthError::new(
            AuthErrorKind::IncompleteSignature,
            "The Authorization header is not ASCII.",
        )
    })
}

/// What [`layer`]'s middleware holds: the keys, the service its routes sign for, the
/// largest body it reads to check a hash, and the dialect's error shape.
#[derive(Clone)]
pub struct AuthLayer {
    pub auth: Arc<Authenticator>,
    pub service: &'static str,
    pub max_body_bytes: usize,
    pub render: Render,
}

/// The middleware: `router.layer(axum::middleware::from_fn_with_state(state, auth::layer))`.
pub async fn layer(State(state): State<AuthLayer>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    match admit(&state, request).await {
        Ok(request) => next.run(request).await,
        Err(e) => {
            // Only the code and message: neither holds a secret (tested).
            tracing::info!(code = e.kind.code(), message = %e.message, "request refused");
            (state.render)(e, &path)
        }
    }
}

async fn admit(state: &AuthLayer, request: Request) -> Result<Request, AuthError> {
    let (mut parts, body) = request.into_parts();
    let unsigned_payload = state.auth.is_open()
        || parts
            .headers
            .get("x-amz-content-sha256")
            .is_some_and(|v| v.as_bytes() == sigv4::UNSIGNED_PAYLOAD.as_bytes())
        || parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .is_some_and(|v| v.as_bytes().starts_with(b"Bearer "));
    let (body, bytes) = if unsigned_payload {
        (body, None)
    } else {
        let too_large = || {
            AuthError::new(
                AuthErrorKind::RequestEntityTooLarge,
                format!(
                    "The request body is larger than {} bytes, or could not be read.",
                    state.max_body_bytes
                ),
            )
        };
        let declared = parts
            .headers
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > state.max_body_bytes as u64) {
            return Err(too_large());
        }
        let bytes = axum::body::to_bytes(body, state.max_body_bytes)
            .await
            .map_err(|_| too_large())?;
        (Body::from(bytes.clone()), Some(bytes))
    };
    let caller = state.auth.check(
        &sigv4::Request::of(&parts, bytes.as_deref()),
        state.service,
        SystemTime::now(),
    )?;
    parts.extensions.insert(caller);
    Ok(Request::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        let key = AccessKey {
            access_key_id: "AKID".into(),
            secret: Secret::new("very-secret"),
            account_id: "111122223333".into(),
        };
        assert!(!format!("{key:?}").contains("very-secret"));
        let token = BearerKey::from_token("tok-secret", "111122223333");
        assert!(!format!("{token:?}").contains("tok"));
    }

    #[test]
    fn bearer_keys_match_by_hash_and_file_hashes_parse() {
        let hash = format!("sha256:{}", hex::encode(Sha256::digest(b"tok-b")));
        let auth = Authenticator::new(AuthConfig {
            tokens: vec![
                BearerKey::from_token("tok-a", "111111111111"),
                BearerKey::from_hash(&hash, "222222222222").unwrap(),
            ],
            ..AuthConfig::default()
        });
        assert_eq!(
            auth.check_bearer("tok-a").unwrap().account_id,
            "111111111111"
        );
        assert_eq!(
            auth.check_bearer("tok-b").unwrap().account_id,
            "222222222222"
        );
        assert_eq!(
            auth.check_bearer("tok-c").unwrap_err().kind,
            AuthErrorKind::UnrecognizedClient
        );
        assert_eq!(BearerKey::from_hash("tok-b", "1"), Err(BadKeyHash));
        assert_eq!(BearerKey::from_hash("sha256:abc", "1"), Err(BadKeyHash));
    }
}
