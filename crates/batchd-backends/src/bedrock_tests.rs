//! Tests of the Bedrock backend: credential and region resolution, SigV4 against known
//! botocore signatures, error classification, and calls against the SigV4-checking fake.
#![allow(clippy::unwrap_used)]

use std::time::UNIX_EPOCH;

use batchd_testkit::fake_bedrock::{
    ACCESS_KEY_ID, FakeBedrock, FakeBedrockConfig, SECRET_ACCESS_KEY,
};

use super::*;
use reqwest::header::RETRY_AFTER;

const CLAUDE: &str = "anthropic.claude-3-haiku-20240307-v1:0";
const CONVERSE_BODY: &str =
    r#"{"messages":[{"role":"user","content":[{"text":"what is two plus two"}]}]}"#;
const ANTHROPIC_BODY: &str = r#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":100,"messages":[{"role":"user","content":"say hello world"}]}"#;

fn env(vars: &[(&str, &str)]) -> AwsEnvironment {
    AwsEnvironment::new(vars.iter().copied(), None)
}

fn fake_env() -> AwsEnvironment {
    env(&[
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY),
    ])
}

fn config(model_id: &str, endpoint: Option<String>) -> BedrockConfig {
    BedrockConfig {
        model_id: model_id.to_owned(),
        region: Some("us-east-1".to_owned()),
        endpoint_url: endpoint,
        max_connections: 4,
        profile: None,
    }
}

async fn fake() -> FakeBedrock {
    FakeBedrock::start(FakeBedrockConfig::default())
        .await
        .unwrap()
}

fn backend_for(fake: &FakeBedrock, model_id: &str, env: &AwsEnvironment) -> BedrockBackend {
    BedrockBackend::new(config(model_id, Some(fake.url())), env).unwrap()
}

fn setup_err(config: BedrockConfig, env: &AwsEnvironment) -> String {
    match BedrockBackend::new(config, env) {
        Ok(_) => panic!("expected a setup error"),
        Err(e) => {
            assert_eq!(e.kind, ErrorKind::Client);
            e.message
        }
    }
}

// ---- signing -------------------------------------------------------------------------------

/// Signatures botocore 1.44 computes for the same request at 2024-01-02T03:04:05Z
/// (`SigV4Auth(creds, "bedrock", "us-east-1")`, with and without a session token).
#[test]
fn signatures_match_botocore() {
    let body = r#"{"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#;
    let time = UNIX_EPOCH + Duration::from_secs(1_704_164_645);
    for (token, signed, signature) in [
        (
            Some("SESSIONTOKEN"),
            "accept;content-type;host;x-amz-date;x-amz-security-token",
            "103e8c2c3b5f5a6329c0d06324d6ad685711feda64d7d59e7837a3037b60a60e",
        ),
        (
            None,
            "accept;content-type;host;x-amz-date",
            "30f5beb3b37897a0607ece0c9b8b66363f820a1d90bee5ce54dee0e92eb2310d",
        ),
    ] {
        let mut vars = vec![
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            (
                "AWS_SECRET_ACCESS_KEY",
                "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            ),
        ];
        if let Some(token) = token {
            vars.push(("AWS_SESSION_TOKEN", token));
        }
        let backend = BedrockBackend::new(config(CLAUDE, None), &env(&vars)).unwrap();
        assert_eq!(
            backend.converse_url(),
            "https://bedrock-runtime.us-east-1.amazonaws.com/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"
        );
        let headers = backend
            .signed_headers(&backend.converse_url, body.as_bytes(), time)
            .unwrap();
        let header = |name: &str| headers.get(name).unwrap().to_str().unwrap().to_owned();
        assert_eq!(header("x-amz-date"), "20240102T030405Z");
        assert_eq!(
            header("authorization"),
            format!(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240102/us-east-1/bedrock/aws4_request, SignedHeaders={signed}, Signature={signature}"
            )
        );
        assert_eq!(
            headers
                .get("x-amz-security-token")
                .map(|v| v.to_str().unwrap()),
            token
        );
        assert_eq!(header("content-type"), "application/json");
        assert_eq!(header("accept"), "application/json");
        assert!(headers.get("authorization").unwrap().is_sensitive());
    }
}

#[test]
fn model_ids_and_arns_stay_one_path_segment() {
    assert_eq!(
        encode_path_segment(CLAUDE),
        "anthropic.claude-3-haiku-20240307-v1%3A0"
    );
    assert_eq!(
        encode_path_segment("arn:aws:bedrock:us-east-1:123:inference-profile/us.x-v1:0"),
        "arn%3Aaws%3Abedrock%3Aus-east-1%3A123%3Ainference-profile%2Fus.x-v1%3A0"
    );
    let backend = BedrockBackend::new(
        BedrockConfig {
            endpoint_url: Some("http://127.0.0.1:9/prefix/".into()),
            ..config("amazon.nova-lite-v1:0", None)
        },
        &fake_env(),
    )
    .unwrap();
    assert_eq!(
        backend.converse_url(),
        "http://127.0.0.1:9/prefix/model/amazon.nova-lite-v1%3A0/converse"
    );
    assert_eq!(
        backend.invoke_url.as_str(),
        "http://127.0.0.1:9/prefix/model/amazon.nova-lite-v1%3A0/invoke"
    );
}

// ---- credentials and region ----------------------------------------------------------------

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

const CREDENTIALS_FILE: &str = "\
# comment
[default]
aws_access_key_id = AKIDDEFAULT
aws_secret_access_key = secret-default

[work]
aws_access_key_id=AKIDWORK
aws_secret_access_key=secret-work
aws_session_token = token-work
";

const CONFIG_FILE: &str = "\
[default]
region = eu-west-1

[profile work]
region = ap-south-1
s3 =
  max_concurrent_requests = 20

[profile cfgonly]
aws_access_key_id = AKIDCFG
aws_secret_access_key = secret-cfg
region = us-west-2

[profile sso]
sso_session = corp
sso_account_id = 123
";

fn files_env(dir: &Path, vars: &[(&str, &str)]) -> AwsEnvironment {
    write(dir, "credentials", CREDENTIALS_FILE);
    write(dir, "config", CONFIG_FILE);
    let mut all: Vec<(String, String)> = vec![
        (
            "AWS_SHARED_CREDENTIALS_FILE".into(),
            dir.join("credentials").display().to_string(),
        ),
        (
            "AWS_CONFIG_FILE".into(),
            dir.join("config").display().to_string(),
        ),
    ];
    all.extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    AwsEnvironment::new(all, None)
}

fn resolved(config: &BedrockConfig, env: &AwsEnvironment) -> (Credentials, String) {
    let profile = Profile::load(config.profile.as_deref(), env).unwrap();
    let credentials = resolve_credentials(config.profile.is_some(), env, &profile).unwrap();
    let region = resolve_region(config.region.as_deref(), env, &profile).unwrap();
    (credentials, region)
}

fn no_region(model_id: &str) -> BedrockConfig {
    BedrockConfig {
        region: None,
        ..config(model_id, None)
    }
}

#[test]
fn environment_keys_come_first() {
    let dir = tempfile::tempdir().unwrap();
    let env = files_env(
        dir.path(),
        &[
            ("AWS_ACCESS_KEY_ID", "AKIDENV"),
            ("AWS_SECRET_ACCESS_KEY", "secret-env"),
            ("AWS_SESSION_TOKEN", "token-env"),
            ("AWS_REGION", "ca-central-1"),
            ("AWS_DEFAULT_REGION", "sa-east-1"),
        ],
    );
    let (credentials, region) = resolved(&no_region(CLAUDE), &env);
    assert_eq!(credentials.access_key_id(), "AKIDENV");
    assert_eq!(credentials.secret_access_key(), "secret-env");
    assert_eq!(credentials.session_token(), Some("token-env"));
    assert_eq!(region, "ca-central-1");
    // The model's own region wins over everything.
    let (_, region) = resolved(&config(CLAUDE, None), &env);
    assert_eq!(region, "us-east-1");
}

#[test]
fn files_give_default_profile_aws_profile_or_the_configured_one() {
    let dir = tempfile::tempdir().unwrap();
    let env = files_env(dir.path(), &[]);
    let (credentials, region) = resolved(&no_region(CLAUDE), &env);
    assert_eq!(credentials.access_key_id(), "AKIDDEFAULT");
    assert_eq!(credentials.session_token(), None);
    assert_eq!(region, "eu-west-1");

    let env = files_env(dir.path(), &[("AWS_PROFILE", "work")]);
    let (credentials, region) = resolved(&no_region(CLAUDE), &env);
    assert_eq!(credentials.access_key_id(), "AKIDWORK");
    assert_eq!(credentials.session_token(), Some("token-work"));
    assert_eq!(region, "ap-south-1");

    // An explicit profile skips the environment keys; AWS_DEFAULT_REGION still beats the file.
    let env = files_env(
        dir.path(),
        &[
            ("AWS_ACCESS_KEY_ID", "AKIDENV"),
            ("AWS_SECRET_ACCESS_KEY", "secret-env"),
            ("AWS_DEFAULT_REGION", "sa-east-1"),
        ],
    );
    let explicit = BedrockConfig {
        profile: Some("cfgonly".into()),
        ..no_region(CLAUDE)
    };
    let (credentials, region) = resolved(&explicit, &env);
    assert_eq!(credentials.access_key_id(), "AKIDCFG");
    assert_eq!(region, "sa-east-1");

    // Home folder default paths.
    let aws = dir.path().join(".aws");
    std::fs::create_dir_all(&aws).unwrap();
    write(&aws, "credentials", CREDENTIALS_FILE);
    write(&aws, "config", CONFIG_FILE);
    let env = AwsEnvironment::new([("AWS_PROFILE", "work")], Some(dir.path().to_owned()));
    let (credentials, region) = resolved(&no_region(CLAUDE), &env);
    assert_eq!(credentials.access_key_id(), "AKIDWORK");
    assert_eq!(region, "ap-south-1");
}

#[test]
fn missing_credentials_or_region_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let nothing = AwsEnvironment::new([("AWS_REGION", "us-east-1")], Some(dir.path().to_owned()));
    let message = setup_err(no_region(CLAUDE), &nothing);
    assert!(message.starts_with("no AWS credentials found"), "{message}");
    assert!(message.contains(".aws/credentials"), "{message}");

    let message = setup_err(no_region(CLAUDE), &fake_env());
    assert!(message.starts_with("no AWS region"), "{message}");

    let half = env(&[("AWS_ACCESS_KEY_ID", "AKID")]);
    let message = setup_err(config(CLAUDE, None), &half);
    assert!(
        message.contains("AWS_SECRET_ACCESS_KEY is not"),
        "{message}"
    );

    let files = files_env(dir.path(), &[]);
    let message = setup_err(
        BedrockConfig {
            profile: Some("nope".into()),
            ..config(CLAUDE, None)
        },
        &files,
    );
    assert!(message.contains("profile \"nope\" not found"), "{message}");
    let message = setup_err(
        BedrockConfig {
            profile: Some("sso".into()),
            ..config(CLAUDE, None)
        },
        &files,
    );
    assert!(message.contains("uses sso_session"), "{message}");

    let message = setup_err(config("  ", None), &fake_env());
    assert!(message.contains("model id is empty"), "{message}");
}

// ---- errors and answers --------------------------------------------------------------------

#[test]
fn errors_are_classified_by_type_then_status() {
    let check = |status: u16, header: Option<&str>, body: &str, kind: ErrorKind, message: &str| {
        let e = classify_error(status, header, body.as_bytes(), None);
        assert_eq!(e.kind, kind, "{status} {header:?} {body}");
        assert_eq!(e.status, Some(status));
        assert_eq!(e.message, message);
    };
    let ns = "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/";
    check(
        429,
        Some(ns),
        r#"{"message":"Too many requests"}"#,
        ErrorKind::RateLimited,
        "ThrottlingException: Too many requests",
    );
    check(
        400,
        None,
        r#"{"__type":"com.amazon.coral.validate#ValidationException","message":"bad"}"#,
        ErrorKind::Client,
        "ValidationException: bad",
    );
    check(
        429,
        Some("ModelNotReadyException"),
        r#"{"Message":"warming"}"#,
        ErrorKind::RateLimited,
        "ModelNotReadyException: warming",
    );
    check(
        503,
        Some("ServiceUnavailableException"),
        "{}",
        ErrorKind::Server,
        "ServiceUnavailableException: {}",
    );
    check(
        500,
        Some("InternalServerException"),
        r#"{"message":"oops"}"#,
        ErrorKind::Server,
        "InternalServerException: oops",
    );
    check(
        408,
        Some("ModelTimeoutException"),
        r#"{"message":"slow"}"#,
        ErrorKind::Timeout,
        "ModelTimeoutException: slow",
    );
    check(
        424,
        Some("ModelErrorException"),
        r#"{"message":"model failed"}"#,
        ErrorKind::Client,
        "ModelErrorException: model failed",
    );
    check(
        403,
        Some("AccessDeniedException"),
        r#"{"message":"no"}"#,
        ErrorKind::Client,
        "AccessDeniedException: no",
    );
    check(
        404,
        Some("ResourceNotFoundException"),
        r#"{"message":"no model"}"#,
        ErrorKind::Client,
        "ResourceNotFoundException: no model",
    );
    // Unknown types and bare statuses fall back to the status.
    check(
        502,
        Some("SomethingNewException"),
        "",
        ErrorKind::Server,
        "SomethingNewException: HTTP 502",
    );
    check(502, None, "Bad Gateway", ErrorKind::Server, "Bad Gateway");
    check(400, None, "", ErrorKind::Client, "HTTP 400");

    let mut headers = HeaderMap::new();
    headers.insert(RETRY_AFTER, HeaderValue::from_static("2"));
    assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
    headers.insert(RETRY_AFTER, HeaderValue::from_static("0.5"));
    assert_eq!(retry_after(&headers), Some(Duration::from_millis(500)));
}

#[test]
fn native_usage_from_the_family_bodies() {
    let usage = |body: &str| invoke_usage(body.as_bytes()).unwrap();
    assert_eq!(
        usage(r#"{"usage":{"input_tokens":3,"output_tokens":4}}"#),
        (3, 4)
    );
    assert_eq!(
        usage(r#"{"usage":{"inputTokens":5,"outputTokens":6}}"#),
        (5, 6)
    );
    assert_eq!(
        usage(r#"{"inputTextTokenCount":7,"results":[{"tokenCount":8}]}"#),
        (7, 8)
    );
    assert_eq!(
        usage(r#"{"inputTextTokenCount":9,"embedding":[0.1]}"#),
        (9, 0)
    );
    assert_eq!(
        usage(r#"{"prompt_token_count":1,"generation_token_count":2}"#),
        (1, 2)
    );
    assert_eq!(usage(r#"{"outputs":[{"text":"x"}]}"#), (0, 0));
    assert_eq!(
        invoke_usage(b"not json").unwrap_err().kind,
        ErrorKind::Protocol
    );
    assert_eq!(
        converse_usage(br#"{"usage":{"inputTokens":1,"outputTokens":2,"totalTokens":3}}"#).unwrap(),
        (1, 2)
    );
}

// ---- against the fake ----------------------------------------------------------------------

#[tokio::test]
async fn signed_converse_is_accepted_with_its_token_counts() {
    let fake = fake().await;
    let backend = backend_for(&fake, CLAUDE, &fake_env());
    assert!(backend.info().runs_native);
    let answer = backend
        .invoke_native(NativeCall::Converse(CONVERSE_BODY))
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(
        body["output"]["message"]["content"][0]["text"],
        "echo: what is two plus two"
    );
    assert_eq!(answer.input_tokens, 5);
    assert_eq!(answer.output_tokens, 6);
    assert_eq!(body["usage"]["inputTokens"], 5);
    let stats = fake.stats();
    assert_eq!(
        (
            stats.requests,
            stats.ok,
            stats.converse,
            stats.rejected_signatures
        ),
        (1, 1, 1, 0)
    );
    assert_eq!(stats.with_session_token, 0);
}

#[tokio::test]
async fn invoke_model_token_counts_come_from_the_headers() {
    let fake = fake().await;
    let backend = backend_for(&fake, CLAUDE, &fake_env());
    let answer = backend
        .invoke_native(NativeCall::InvokeModel(ANTHROPIC_BODY))
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(body["type"], "message");
    assert_eq!(body["content"][0]["text"], "echo: say hello world");
    assert_eq!((answer.input_tokens, answer.output_tokens), (3, 4));
    assert_eq!(fake.stats().invoke, 1);

    // Titan embeddings through an inference-profile ARN: `/` and `:` are encoded in the path
    // and the signature still verifies.
    let arn =
        "arn:aws:bedrock:us-east-1:123456789012:inference-profile/amazon.titan-embed-text-v2:0";
    let backend = backend_for(&fake, arn, &fake_env());
    let answer = backend
        .invoke_native(NativeCall::InvokeModel(
            r#"{"inputText":"one two three","dimensions":256}"#,
        ))
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(body["embedding"].as_array().unwrap().len(), 256);
    assert_eq!((answer.input_tokens, answer.output_tokens), (3, 0));
    assert_eq!(fake.stats().rejected_signatures, 0);
}

#[tokio::test]
async fn session_token_is_sent_and_signed() {
    let fake = fake().await;
    let env = env(&[
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY),
        ("AWS_SESSION_TOKEN", "IQoJb3JpZ2luX2VjE/fake+token=="),
    ]);
    let backend = backend_for(&fake, CLAUDE, &env);
    backend
        .invoke_native(NativeCall::Converse(CONVERSE_BODY))
        .await
        .unwrap();
    assert_eq!(fake.stats().with_session_token, 1);
    assert_eq!(
        fake.last_session_token().as_deref(),
        Some("IQoJb3JpZ2luX2VjE/fake+token==")
    );
}

#[tokio::test]
async fn wrong_secret_or_unknown_key_is_rejected_and_not_retryable() {
    let fake = fake().await;
    let wrong = env(&[
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", "not-the-secret"),
    ]);
    let e = backend_for(&fake, CLAUDE, &wrong)
        .invoke_native(NativeCall::Converse(CONVERSE_BODY))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Client);
    assert!(!e.is_retryable());
    assert_eq!(e.status, Some(403));
    assert!(
        e.message.starts_with("InvalidSignatureException: "),
        "{}",
        e.message
    );

    let unknown = env(&[
        ("AWS_ACCESS_KEY_ID", "AKIDSOMEONEELSE"),
        ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY),
    ]);
    let e = backend_for(&fake, CLAUDE, &unknown)
        .invoke_native(NativeCall::InvokeModel(ANTHROPIC_BODY))
        .await
        .unwrap_err();
    assert!(!e.is_retryable());
    assert!(
        e.message.starts_with("UnrecognizedClientException: "),
        "{}",
        e.message
    );
    // A signature for another region is refused when the fake pins one.
    fake.set_config(FakeBedrockConfig {
        region: Some("eu-central-1".into()),
        ..FakeBedrockConfig::default()
    });
    let e = backend_for(&fake, CLAUDE, &fake_env())
        .invoke_native(NativeCall::Converse(CONVERSE_BODY))
        .await
        .unwrap_err();
    assert!(e.message.contains("region"), "{}", e.message);
    let stats = fake.stats();
    assert_eq!((stats.rejected_signatures, stats.ok), (3, 0));
}

#[tokio::test]
async fn throttling_is_retryable_rate_limited_with_retry_after() {
    let fake = FakeBedrock::start(FakeBedrockConfig {
        throttle_first_n: 1,
        retry_after_secs: Some(2),
        ..FakeBedrockConfig::default()
    })
    .await
    .unwrap();
    let backend = backend_for(&fake, CLAUDE, &fake_env());
    let e = backend
        .invoke_native(NativeCall::Converse(CONVERSE_BODY))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::RateLimited);
    assert!(e.is_retryable());
    assert_eq!(e.status, Some(429));
    assert_eq!(e.retry_after, Some(Duration::from_secs(2)));
    assert!(
        e.message.starts_with("ThrottlingException: "),
        "{}",
        e.message
    );
    // The next one goes through.
    backend
        .invoke_native(NativeCall::Converse(CONVERSE_BODY))
        .await
        .unwrap();
    let stats = fake.stats();
    assert_eq!((stats.throttled, stats.ok), (1, 1));
}

#[tokio::test]
async fn forced_errors_keep_their_retry_class() {
    let fake = fake().await;
    let backend = backend_for(&fake, CLAUDE, &fake_env());
    for (error_type, kind, status) in [
        ("ValidationException", ErrorKind::Client, 400),
        ("ModelErrorException", ErrorKind::Client, 424),
        ("AccessDeniedException", ErrorKind::Client, 403),
        ("ServiceUnavailableException", ErrorKind::Server, 503),
        ("InternalServerException", ErrorKind::Server, 500),
        ("ModelTimeoutException", ErrorKind::Timeout, 408),
        ("ModelNotReadyException", ErrorKind::RateLimited, 429),
    ] {
        fake.set_config(FakeBedrockConfig {
            forced_error: Some(error_type.into()),
            ..FakeBedrockConfig::default()
        });
        let e = backend
            .invoke_native(NativeCall::InvokeModel(ANTHROPIC_BODY))
            .await
            .unwrap_err();
        assert_eq!(e.kind, kind, "{error_type}");
        assert_eq!(e.status, Some(status), "{error_type}");
        assert_eq!(
            e.message,
            format!("{error_type}: forced by the fake's config")
        );
    }
    // A body the model family rejects: ValidationException, not retryable.
    fake.set_config(FakeBedrockConfig::default());
    let e = backend
        .invoke_native(NativeCall::InvokeModel(
            r#"{"max_tokens":10,"messages":[{"role":"user","content":"x"}]}"#,
        ))
        .await
        .unwrap_err();
    assert!(!e.is_retryable());
    assert!(e.message.contains("anthropic_version"), "{}", e.message);
}

#[tokio::test]
async fn connection_failures_are_connect_errors() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let backend = BedrockBackend::new(config(CLAUDE, Some(url)), &fake_env()).unwrap();
    let e = backend
        .invoke_native(NativeCall::Converse(CONVERSE_BODY))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Connect, "{}", e.message);
    assert!(e.is_retryable());
}

#[tokio::test]
async fn neutral_calls_are_unsupported() {
    let backend = BedrockBackend::new(config(CLAUDE, None), &fake_env()).unwrap();
    let e = backend
        .embed(&EmbedRequest {
            inputs: vec!["x".into()],
            ..EmbedRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert_eq!(backend.region(), "us-east-1");
}

/// `from_lookup` takes the AWS variables and the home folder from the lookup it is given, and
/// nothing else: what the binary passes is the whole of what the backend sees.
#[test]
fn the_environment_comes_from_the_lookup_only() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join(".aws")).unwrap();
    std::fs::write(
        dir.path().join(".aws/config"),
        "[default]\nregion = ap-south-1\n",
    )
    .unwrap();
    let home = dir.path().to_str().unwrap().to_owned();
    let lookup = |name: &str| match name {
        "AWS_ACCESS_KEY_ID" => Some("AKIDLOOKUP".to_owned()),
        "AWS_SECRET_ACCESS_KEY" => Some("secret".to_owned()),
        "HOME" => Some(home.clone()),
        "PATH" => panic!("asked for a variable it has no use for"),
        _ => None,
    };
    let env = AwsEnvironment::from_lookup(lookup);
    let (_, region) = resolved(&no_region(CLAUDE), &env);
    assert_eq!(
        region, "ap-south-1",
        "the region comes from $HOME/.aws/config"
    );
    let nothing = AwsEnvironment::from_lookup(|_| None);
    assert!(
        Profile::load(None, &nothing)
            .and_then(|p| resolve_credentials(false, &nothing, &p))
            .is_err(),
        "no variables, no home: no credentials"
    );
}
