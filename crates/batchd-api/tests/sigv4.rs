//! The SigV4 verifier against an independent signer: requests signed by `aws-sigv4`'s own
//! `sign` (random methods, paths, encodings, query orders with duplicates, header orders and
//! repeated headers) are accepted; the same requests with any one part tampered are refused;
//! and no input makes the verifier panic.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use batchd_api::auth::sigv4::{Request, Verifier};
use batchd_api::auth::{AccessKey, AuthErrorKind, Secret};
use proptest::prelude::*;

const KEY_ID: &str = "AKIDTEST1";
const SECRET: &str = "s3cr3t/with+chars";
const HOST: &str = "127.0.0.1:8080";

fn keys() -> Vec<AccessKey> {
    vec![AccessKey {
        access_key_id: KEY_ID.into(),
        secret: Secret::new(SECRET),
        account_id: "111122223333".into(),
    }]
}

/// A request as sent: the raw path and query, headers in sending order, the body.
#[derive(Debug, Clone)]
struct Sent {
    method: String,
    path: String,
    query: Option<String>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    time: SystemTime,
}

impl Sent {
    fn header_map(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in &self.headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn verify(&self, now: SystemTime) -> Result<(), AuthErrorKind> {
        let headers = self.header_map();
        let authorization = headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let keys = keys();
        let verifier = Verifier {
            service: "bedrock",
            regions: None,
            keys: &keys,
            now,
            deferred_payload: false,
        };
        let request = Request {
            method: &self.method,
            path: &self.path,
            query: self.query.as_deref(),
            authority: None,
            headers: &headers,
            body: Some(&self.body),
        };
        verifier
            .verify(&request, &authorization)
            .map(|_| ())
            .map_err(|e| e.kind)
    }
}

/// Signs with aws-sigv4 (the signer picks which headers to sign) and appends what it adds.
fn signed(mut sent: Sent, region: &str) -> Sent {
    let identity: Identity = Credentials::new(KEY_ID, SECRET, None, None, "test").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("bedrock")
        .time(sent.time)
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let url = match &sent.query {
        Some(q) => format!("http://{HOST}{}?{q}", sent.path),
        None => format!("http://{HOST}{}", sent.path),
    };
    let request = SignableRequest::new(
        &sent.method,
        url,
        sent.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        SignableBody::Bytes(&sent.body),
    )
    .unwrap();
    let (instructions, _) = sign(request, &params).unwrap().into_parts();
    let added: Vec<(String, String)> = instructions
        .headers()
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
    sent.headers.extend(added);
    sent
}

/// Percent-encodes a path segment or query part, upper- or lower-case hex, `~` raw or not:
/// every form a client may send for the same text.
fn encode(text: &str, lower: bool, tilde_raw: bool) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        let raw = b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_')
            || (tilde_raw && b == b'~');
        if raw {
            out.push(char::from(b));
        } else if lower {
            out.push_str(&format!("%{b:02x}"));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 :/~%+=&._-]{0,12}"
}

prop_compose! {
    fn request()(
        post in any::<bool>(),
        segments in proptest::collection::vec("[a-zA-Z0-9 :~%+_-]{1,10}", 0..4),
        trailing in any::<bool>(),
        params in proptest::collection::vec((text(), text()), 0..5),
        dup in any::<bool>(),
        lower in any::<bool>(),
        tilde_raw in any::<bool>(),
        extra in proptest::collection::vec(("x-[a-z]{1,6}", "[ a-zA-Z0-9]{0,10}"), 0..3),
        repeat in any::<bool>(),
        body in proptest::collection::vec(any::<u8>(), 0..64),
        shuffle in any::<u64>(),
        skew in -800i64..800,
    ) -> Sent {
        let mut path = String::new();
        for s in &segments {
            path.push('/');
            path.push_str(&encode(s, lower, tilde_raw));
        }
        if path.is_empty() || trailing {
            path.push('/');
        }
        let mut pairs: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k, lower, tilde_raw), encode(v, lower, tilde_raw)))
            .collect();
        if dup && let Some(first) = pairs.first().cloned() {
            pairs.push(first);
        }
        let query = (!pairs.is_empty()).then(|| pairs.join("&"));
        let mut headers = vec![
            ("host".to_owned(), HOST.to_owned()),
            ("content-type".to_owned(), "application/json".to_owned()),
        ];
        for (name, value) in &extra {
            headers.push((name.clone(), format!("  {value}  ")));
            if repeat {
                headers.push((name.clone(), value.clone()));
            }
        }
        // The sending order is any order.
        let mut rng = shuffle;
        for i in (1..headers.len()).rev() {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            headers.swap(i, (rng >> 33) as usize % (i + 1));
        }
        Sent {
            method: if post { "POST" } else { "GET" }.into(),
            path,
            query,
            headers,
            body,
            time: SystemTime::UNIX_EPOCH + Duration::from_secs((1_767_000_000 + skew) as u64),
        }
    }
}

/// One change to a signed request.
#[derive(Debug, Clone)]
enum Tamper {
    Method,
    Path,
    AddParam,
    Body,
    HeaderValue(usize),
    DropHeader(usize),
    Date,
    Signature(usize),
    Region,
}

fn tamper() -> impl Strategy<Value = Tamper> {
    prop_oneof![
        Just(Tamper::Method),
        Just(Tamper::Path),
        Just(Tamper::AddParam),
        Just(Tamper::Body),
        any::<usize>().prop_map(Tamper::HeaderValue),
        any::<usize>().prop_map(Tamper::DropHeader),
        Just(Tamper::Date),
        any::<usize>().prop_map(Tamper::Signature),
        Just(Tamper::Region),
    ]
}

/// The server's clock in these tests: requests are signed up to ±800 s from it, within the
/// 15 minutes allowed.
fn now_for(_sent: &Sent) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_000_000)
}

fn signed_headers(sent: &Sent) -> Vec<String> {
    let auth = &sent
        .headers
        .iter()
        .find(|(n, _)| n == "authorization")
        .unwrap()
        .1;
    let list = auth
        .split("SignedHeaders=")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap();
    list.split(';').map(str::to_owned).collect()
}

fn apply(mut sent: Sent, tamper: &Tamper) -> Sent {
    match tamper {
        Tamper::Method => sent.method = if sent.method == "GET" { "PUT" } else { "GET" }.into(),
        Tamper::Path => sent.path.push('x'),
        Tamper::AddParam => {
            let q = sent
                .query
                .take()
                .map_or("zz=1".to_owned(), |q| format!("{q}&zz=1"));
            sent.query = Some(q);
        }
        Tamper::Body => sent.body.push(b'!'),
        Tamper::HeaderValue(i) => {
            let signed = signed_headers(&sent);
            let name = &signed[i % signed.len()];
            let (_, value) = sent.headers.iter_mut().find(|(n, _)| n == name).unwrap();
            if name == "x-amz-date" {
                // Another valid date, one second later.
                let last = value.pop().unwrap();
                let digit = value.pop().unwrap();
                let bumped = if digit == '9' {
                    '8'
                } else {
                    char::from(digit as u8 + 1)
                };
                value.push(bumped);
                value.push(last);
            } else {
                value.push('x');
            }
        }
        Tamper::DropHeader(i) => {
            let signed = signed_headers(&sent);
            let name = signed[i % signed.len()].clone();
            sent.headers.retain(|(n, _)| *n != name);
        }
        Tamper::Date => {
            sent.headers.retain(|(n, _)| n != "x-amz-date");
            let t = time::OffsetDateTime::from(sent.time + Duration::from_secs(3600));
            let f = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
            sent.headers
                .push(("x-amz-date".into(), t.format(f).unwrap()));
        }
        Tamper::Signature(i) => {
            let (_, auth) = sent
                .headers
                .iter_mut()
                .find(|(n, _)| n == "authorization")
                .unwrap();
            let at = auth.find("Signature=").unwrap() + "Signature=".len();
            let pos = at + i % 64;
            let old = auth.as_bytes()[pos];
            let new = if old == b'0' { '1' } else { '0' };
            auth.replace_range(pos..=pos, &new.to_string());
        }
        Tamper::Region => {
            let (_, auth) = sent
                .headers
                .iter_mut()
                .find(|(n, _)| n == "authorization")
                .unwrap();
            *auth = auth.replace("/us-east-1/", "/us-west-2/");
        }
    }
    sent
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn what_aws_sigv4_signs_is_accepted(sent in request()) {
        let sent = signed(sent, "us-east-1");
        prop_assert_eq!(sent.verify(now_for(&sent)), Ok(()), "{:?}", sent);
    }

    #[test]
    fn a_tampered_request_is_refused(sent in request(), tamper in tamper()) {
        let sent = signed(sent, "us-east-1");
        let now = now_for(&sent);
        let tampered = apply(sent, &tamper);
        prop_assert!(tampered.verify(now).is_err(), "{:?} accepted: {:?}", tamper, tampered);
    }

    #[test]
    fn arbitrary_authorization_headers_never_panic(
        sent in request(),
        auth in ".{0,200}",
        prefix in any::<bool>(),
    ) {
        let mut sent = signed(sent, "us-east-1");
        let value = if prefix { format!("AWS4-HMAC-SHA256 {auth}") } else { auth };
        // (The middleware refuses a non-ASCII header before the verifier sees it.)
        if value.is_ascii() && HeaderValue::from_str(&value).is_ok() {
            sent.headers.retain(|(n, _)| n != "authorization");
            sent.headers.push(("authorization".into(), value));
            prop_assert!(sent.verify(now_for(&sent)).is_err());
        }
    }
}

#[test]
fn a_request_signed_twenty_minutes_ago_has_expired() {
    let mut sent = signed(
        Sent {
            method: "GET".into(),
            path: "/model-invocation-jobs".into(),
            query: None,
            headers: vec![("host".into(), HOST.into())],
            body: Vec::new(),
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_000_000),
        },
        "us-east-1",
    );
    assert_eq!(
        sent.verify(sent.time + Duration::from_secs(14 * 60)),
        Ok(())
    );
    assert_eq!(
        sent.verify(sent.time + Duration::from_secs(20 * 60)),
        Err(AuthErrorKind::InvalidSignature)
    );
    assert_eq!(
        sent.verify(sent.time - Duration::from_secs(20 * 60)),
        Err(AuthErrorKind::InvalidSignature)
    );
    // An unknown key id is another code.
    for (_, v) in sent
        .headers
        .iter_mut()
        .filter(|(n, _)| n == "authorization")
    {
        *v = v.replace(KEY_ID, "AKIDOTHER");
    }
    assert_eq!(
        sent.verify(sent.time),
        Err(AuthErrorKind::UnrecognizedClient)
    );
}
