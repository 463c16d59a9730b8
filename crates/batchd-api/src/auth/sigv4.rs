//! SigV4 verification of a request signed in its `Authorization` header
//! (`AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...`): the canonical request
//! built here from what arrived, the key and HMACs from `aws-sigv4`, the signatures compared in
//! constant time. Every refusal is an [`AuthError`] with the code AWS answers.

use std::time::{Duration, SystemTime};

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{AccessKey, AuthError, AuthErrorKind};

pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// `x-amz-content-sha256` of a body the client did not hash.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// `x-amz-content-sha256` of an aws-chunked body with unsigned chunks and a checksum trailer
/// (what botocore sends for S3 uploads over HTTPS).
pub const STREAMING_UNSIGNED_TRAILER: &str = "STREAMING-UNSIGNED-PAYLOAD-TRAILER";
/// The SHA-256 of no bytes.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
/// How far a request's date may be from the server's clock, either way (AWS: 15 minutes).
pub const MAX_SKEW: Duration = Duration::from_secs(15 * 60);

/// What the verifier reads of one request. `path` and `query` are as sent (percent-encoded).
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// The URI's authority, for `host` when the request has no Host header (HTTP/2).
    pub authority: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The body, when the middleware read it (`None` for `UNSIGNED-PAYLOAD`).
    pub body: Option<&'a [u8]>,
}

impl<'a> Request<'a> {
    /// The request an HTTP request's head describes, with `body` when it was read.
    pub fn of(parts: &'a axum::http::request::Parts, body: Option<&'a [u8]>) -> Self {
        Self {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query(),
            authority: parts.uri.authority().map(|a| a.as_str()),
            headers: &parts.headers,
            body,
        }
    }
}

/// The service and regions a request must be scoped to, and the keys it may be signed with.
pub struct Verifier<'a> {
    pub service: &'a str,
    /// `None`: any region.
    pub regions: Option<&'a [String]>,
    pub keys: &'a [AccessKey],
    pub now: SystemTime,
    /// The body is checked by the caller as it streams (S3 uploads too large to hold): a
    /// claimed `x-amz-content-sha256` is signed as given, and `STREAMING-UNSIGNED-PAYLOAD-TRAILER`
    /// is accepted.
    pub deferred_payload: bool,
}

/// The three parameters of the `Authorization` header.
#[derive(Debug, PartialEq, Eq)]
struct Authorization<'a> {
    credential: &'a str,
    signed_headers: &'a str,
    signature: &'a str,
}

fn incomplete(message: impl Into<String>) -> AuthError {
    AuthError::new(AuthErrorKind::IncompleteSignature, message)
}

fn invalid(message: impl Into<String>) -> AuthError {
    AuthError::new(AuthErrorKind::InvalidSignature, message)
}

fn mismatch() -> AuthError {
    invalid(
        "The request signature we calculated does not match the signature you provided. \
         Check your AWS Secret Access Key and signing method. Consult the service \
         documentation for details.",
    )
}

/// Parses the header's value after the algorithm. A parameter given twice, or missing, or
/// anything but `key=value` pairs, is an IncompleteSignatureException.
fn parse_authorization(value: &str) -> Result<Authorization<'_>, AuthError> {
    let rest = value
        .strip_prefix(ALGORITHM)
        .filter(|r| r.starts_with(' '))
        .ok_or_else(|| incomplete(format!("Unsupported AWS 'algorithm': expected {ALGORITHM}")))?;
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        let Some((key, value)) = part.split_once('=') else {
            return Err(incomplete(format!(
                "'{part}' not a valid key=value pair (missing equal-sign) in Authorization header"
            )));
        };
        let slot = match key {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed_headers,
            "Signature" => &mut signature,
            _ => continue,
        };
        if slot.replace(value).is_some() {
            return Err(incomplete(format!(
                "Authorization header has the '{key}' parameter twice"
            )));
        }
    }
    let mut missing = Vec::new();
    for (name, value) in [
        ("Credential", credential),
        ("Signature", signature),
        ("SignedHeaders", signed_headers),
    ] {
        if value.is_none() {
            missing.push(format!("Authorization header requires '{name}' parameter."));
        }
    }
    match (credential, signed_headers, signature) {
        (Some(credential), Some(signed_headers), Some(signature)) => Ok(Authorization {
            credential,
            signed_headers,
            signature,
        }),
        _ => Err(incomplete(missing.join(" "))),
    }
}

/// The one value of a header that must appear at most once.
fn single_header<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, AuthError> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(incomplete(format!(
            "The request has more than one {name} header"
        )));
    }
    first
        .to_str()
        .map(Some)
        .map_err(|_| incomplete(format!("The {name} header is not ASCII")))
}

/// `20240102T030405Z` (x-amz-date) or an HTTP date (`Date`).
fn parse_date(amz: Option<&str>, http: Option<&str>) -> Result<(SystemTime, String), AuthError> {
    use time::format_description::well_known::Rfc2822;
    use time::macros::format_description;
    let basic = format_description!("[year][month][day]T[hour][minute][second]Z");
    let parsed = if let Some(amz) = amz {
        time::PrimitiveDateTime::parse(amz, basic)
            .map(time::PrimitiveDateTime::assume_utc)
            .map_err(|_| {
                incomplete(format!(
                    "X-Amz-Date {amz:?} is not a date of the form 20240102T030405Z"
                ))
            })?
    } else if let Some(http) = http {
        let imf = format_description!(
            "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
        );
        time::PrimitiveDateTime::parse(http, imf)
            .map(time::PrimitiveDateTime::assume_utc)
            .or_else(|_| time::OffsetDateTime::parse(http, &Rfc2822))
            .map_err(|_| incomplete(format!("Date {http:?} is not an HTTP date")))?
    } else {
        return Err(incomplete(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
        ));
    };
    let text = parsed
        .format(basic)
        .map_err(|_| incomplete("The request's date is out of range"))?;
    Ok((parsed.into(), text))
}

/// Percent-encodes every byte but the unreserved ones (and `/` when `keep_slash`), as SigV4's
/// `UriEncode`.
fn uri_encode(out: &mut String, bytes: &[u8], keep_slash: bool) {
    for &b in bytes {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// The path's dot segments and empty segments removed, its leading and trailing slash kept
/// (what botocore and aws-sigv4 sign for every service but S3).
fn normalize_path(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::from("/");
    out.push_str(&segments.join("/"));
    // `/a/b/.` and `/a/b/..` end in a directory too (RFC 3986 5.2.4).
    let directory = ["/", "/.", "/.."].iter().any(|end| path.ends_with(end));
    if directory && !segments.is_empty() {
        out.push('/');
    }
    out
}

/// The canonical URI: S3 signs the path as sent; every other service its normalised path,
/// encoded once more (so `%3A` in a label signs as `%253A`).
fn canonical_uri(service: &str, path: &str) -> String {
    let path = if path.is_empty() { "/" } else { path };
    if service == "s3" {
        return path.to_owned();
    }
    let mut out = String::with_capacity(path.len() + 16);
    uri_encode(&mut out, normalize_path(path).as_bytes(), true);
    out
}

/// The canonical query: each name and value decoded (form encoding: `+` is a space) and
/// encoded again strictly, sorted by name, then value.
fn canonical_query(query: Option<&str>) -> String {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return String::new();
    };
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let encode = |s: &str| {
                let spaced = s.replace('+', "%20");
                let decoded: Vec<u8> = percent_encoding::percent_decode_str(&spaced).collect();
                let mut out = String::new();
                uri_encode(&mut out, &decoded, false);
                out
            };
            (encode(name), encode(value))
        })
        .collect();
    pairs.sort();
    let mut out = String::new();
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(name);
        out.push('=');
        out.push_str(value);
    }
    out
}

/// A header value as SigV4 signs it: trimmed, each run of spaces one space.
fn push_header_value(out: &mut Vec<u8>, value: &[u8]) {
    let mut words = value
        .split(|b| matches!(b, b' ' | b'\t'))
        .filter(|w| !w.is_empty());
    if let Some(first) = words.next() {
        out.extend_from_slice(first);
        for word in words {
            out.push(b' ');
            out.extend_from_slice(word);
        }
    }
}

/// The canonical headers block (each `name:value\n`) of the signed headers, which must be
/// lower case, sorted, unique, include `host` and exist in the request.
fn canonical_headers(request: &Request<'_>, signed: &str) -> Result<Vec<u8>, AuthError> {
    let names: Vec<&str> = signed.split(';').collect();
    if names
        .iter()
        .any(|n| n.is_empty() || n.bytes().any(|b| b.is_ascii_uppercase()))
        || names.windows(2).any(|w| w[0] >= w[1])
    {
        return Err(incomplete(
            "SignedHeaders must be lower-case header names, sorted, each once, separated by ';'",
        ));
    }
    if !names.contains(&"host") {
        return Err(invalid(
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
        ));
    }
    let mut out = Vec::new();
    for name in names {
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        let mut values = request.headers.get_all(name).iter().peekable();
        if values.peek().is_none() {
            match (name, request.authority) {
                ("host", Some(authority)) => push_header_value(&mut out, authority.as_bytes()),
                _ => {
                    return Err(incomplete(format!(
                        "'{name}' is named as a SignedHeader, but it does not exist in the HTTP request."
                    )));
                }
            }
        }
        for (i, value) in values.enumerate() {
            if i > 0 {
                out.push(b',');
            }
            push_header_value(&mut out, value.as_bytes());
        }
        out.push(b'\n');
    }
    Ok(out)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Verifier<'_> {
    /// The key that signed `request`, or why it is refused.
    pub fn verify<'k>(
        &'k self,
        request: &Request<'_>,
        authorization: &str,
    ) -> Result<&'k AccessKey, AuthError> {
        let auth = parse_authorization(authorization)?;
        let headers = request.headers;
        let amz_date = single_header(headers, "x-amz-date")?;
        let (time, stamp) = parse_date(amz_date, single_header(headers, "date")?)?;

        // Credential=AKID/20240102/us-east-1/bedrock/aws4_request
        let parts: Vec<&str> = auth.credential.split('/').collect();
        let [key_id, date, region, service, terminator] = parts[..] else {
            return Err(incomplete(format!(
                "Credential should have the form <key>/<date>/<region>/<service>/aws4_request, got '{}'",
                auth.credential
            )));
        };
        let key = self
            .keys
            .iter()
            .find(|k| bool::from(k.access_key_id.as_bytes().ct_eq(key_id.as_bytes())))
            .ok_or_else(|| {
                AuthError::new(
                    AuthErrorKind::UnrecognizedClient,
                    "The security token included in the request is invalid.",
                )
            })?;
        if headers.contains_key("x-amz-security-token") {
            // batchd's keys are long-term keys: a session token belongs to someone else's.
            return Err(AuthError::new(
                AuthErrorKind::UnrecognizedClient,
                "The security token included in the request is invalid.",
            ));
        }
        if terminator != "aws4_request" {
            return Err(invalid(
                "Credential should be scoped with a valid terminator: 'aws4_request'.",
            ));
        }
        if service != self.service {
            return Err(invalid(format!(
                "Credential should be scoped to correct service: '{}'.",
                self.service
            )));
        }
        if region.is_empty() || self.regions.is_some_and(|r| !r.iter().any(|r| r == region)) {
            return Err(invalid(format!(
                "Credential should be scoped to a valid region, not '{region}'."
            )));
        }
        if !stamp.starts_with(date) || date.len() != 8 {
            return Err(invalid(format!(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{date}' != '{}'",
                &stamp[..8.min(stamp.len())]
            )));
        }
        if amz_date.is_some() && !auth.signed_headers.split(';').any(|h| h == "x-amz-date") {
            return Err(incomplete(
                "'x-amz-date' must be a 'SignedHeader' when the request has one.",
            ));
        }
        self.check_skew(time, &stamp)?;

        let payload_hash = match single_header(headers, "x-amz-content-sha256")? {
            Some(UNSIGNED_PAYLOAD) => UNSIGNED_PAYLOAD.to_owned(),
            Some(STREAMING_UNSIGNED_TRAILER) if self.deferred_payload => {
                STREAMING_UNSIGNED_TRAILER.to_owned()
            }
            Some(h) if h.starts_with("STREAMING-") => {
                return Err(incomplete(format!(
                    "x-amz-content-sha256 {h}: streaming (aws-chunked) payloads are not supported"
                )));
            }
            Some(claimed) if self.deferred_payload => {
                if claimed.len() != 64 || !claimed.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(invalid(
                        "x-amz-content-sha256 must be a SHA-256 in hex, UNSIGNED-PAYLOAD or STREAMING-UNSIGNED-PAYLOAD-TRAILER",
                    ));
                }
                claimed.to_owned()
            }
            None if self.deferred_payload => EMPTY_SHA256.to_owned(),
            Some(claimed) => {
                let actual = sha256_hex(request.body.unwrap_or_default());
                if request.body.is_none() || !actual.eq_ignore_ascii_case(claimed) {
                    return Err(invalid(
                        "The provided 'x-amz-content-sha256' header does not match what was computed.",
                    ));
                }
                claimed.to_owned()
            }
            None => sha256_hex(request.body.unwrap_or_default()),
        };

        let mut canonical = Vec::with_capacity(512);
        canonical.extend_from_slice(request.method.as_bytes());
        canonical.push(b'\n');
        canonical.extend_from_slice(canonical_uri(self.service, request.path).as_bytes());
        canonical.push(b'\n');
        canonical.extend_from_slice(canonical_query(request.query).as_bytes());
        canonical.push(b'\n');
        canonical.extend_from_slice(&canonical_headers(request, auth.signed_headers)?);
        canonical.push(b'\n');
        canonical.extend_from_slice(auth.signed_headers.as_bytes());
        canonical.push(b'\n');
        canonical.extend_from_slice(payload_hash.as_bytes());

        let string_to_sign = format!(
            "{ALGORITHM}\n{stamp}\n{date}/{region}/{service}/aws4_request\n{}",
            sha256_hex(&canonical)
        );
        let signing_key =
            aws_sigv4::sign::v4::generate_signing_key(key.secret.expose(), time, region, service);
        let expected =
            aws_sigv4::sign::v4::calculate_signature(signing_key, string_to_sign.as_bytes());
        if bool::from(expected.as_bytes().ct_eq(auth.signature.as_bytes())) {
            Ok(key)
        } else {
            Err(mismatch())
        }
    }

    fn check_skew(&self, time: SystemTime, stamp: &str) -> Result<(), AuthError> {
        use time::macros::format_description;
        let fmt = |t: SystemTime| {
            time::OffsetDateTime::from(t)
                .format(format_description!(
                    "[year][month][day]T[hour][minute][second]Z"
                ))
                .unwrap_or_default()
        };
        if time + MAX_SKEW < self.now {
            return Err(invalid(format!(
                "Signature expired: {stamp} is now earlier than {} ({} - 15 min.)",
                fmt(self.now - MAX_SKEW),
                fmt(self.now)
            )));
        }
        if time > self.now + MAX_SKEW {
            return Err(invalid(format!(
                "Signature not yet current: {stamp} is still later than {} ({} + 15 min.)",
                fmt(self.now + MAX_SKEW),
                fmt(self.now)
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization_parameters_are_parsed_and_checked() {
        let ok = parse_authorization(
            "AWS4-HMAC-SHA256 Credential=AK/20240102/us-east-1/bedrock/aws4_request, \
             SignedHeaders=host;x-amz-date, Signature=abc",
        )
        .unwrap();
        assert_eq!(ok.signed_headers, "host;x-amz-date");
        assert_eq!(ok.signature, "abc");
        for (bad, says) in [
            (
                "AWS4-HMAC-SHA256 Credential=a, Signature=b",
                "requires 'SignedHeaders'",
            ),
            (
                "AWS4-HMAC-SHA256 Credential=a, Credential=a, SignedHeaders=h, Signature=b",
                "twice",
            ),
            ("AWS4-HMAC-SHA256 Credential a", "missing equal-sign"),
            ("AWS4-HMAC-SHA1 Credential=a", "algorithm"),
            ("AWS4-HMAC-SHA256Credential=a", "algorithm"),
        ] {
            let e = parse_authorization(bad).unwrap_err();
            assert_eq!(e.kind, AuthErrorKind::IncompleteSignature, "{bad}");
            assert!(e.message.contains(says), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn paths_are_normalised_and_encoded_twice_except_for_s3() {
        assert_eq!(canonical_uri("bedrock", ""), "/");
        assert_eq!(canonical_uri("bedrock", "/a//b/./c/../d/"), "/a/b/d/");
        assert_eq!(canonical_uri("bedrock", "/a/b/."), "/a/b/");
        assert_eq!(canonical_uri("bedrock", "/a/.."), "/");
        assert_eq!(
            canonical_uri("bedrock", "/model-invocation-job/arn%3Aaws%3Ab"),
            "/model-invocation-job/arn%253Aaws%253Ab"
        );
        assert_eq!(canonical_uri("s3", "/b/a%20b/../c"), "/b/a%20b/../c");
    }

    #[test]
    fn queries_are_decoded_encoded_and_sorted() {
        assert_eq!(canonical_query(None), "");
        assert_eq!(
            canonical_query(Some("b=2&a=%7e x&a=1&flag")),
            "a=1&a=~%20x&b=2&flag="
        );
        assert_eq!(canonical_query(Some("k=a%2Fb+c%2B")), "k=a%2Fb%20c%2B");
    }

    #[test]
    fn header_values_are_trimmed_and_spaces_folded() {
        let mut out = Vec::new();
        push_header_value(&mut out, b"  a   b\tc  ");
        assert_eq!(out, b"a b c");
    }
}
