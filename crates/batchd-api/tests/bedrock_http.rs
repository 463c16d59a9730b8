//! The Bedrock control plane over real HTTP: the router served on 127.0.0.1:0 over the real
//! scheduler (`batchd-engine`'s `SchedulerService`, SQLite store, local buckets, the fake
//! OpenAI-compatible backend), and reqwest as the client. The scheduling loop runs only where a
//! test starts it, so the other tests see their jobs exactly as they created them.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use batchd_api::auth::{AuthConfig, Authenticator, BearerKey};
use batchd_api::bedrock::timestamp;
use batchd_api::{ApiConfig, router};
use batchd_core::{Counters, JobArn, JobId, JobStatus};
use batchd_engine::scheduler::{ModelEntry, Scheduler, SchedulerConfig};
use batchd_engine::service::SchedulerService;
use batchd_engine::{Engine, EngineConfig, RecordOptions};
use batchd_store::SharedStore;
use batchd_testkit::{FakeConfig, FakeServer};
use serde_json::{Value, json};

const REGION: &str = "us-east-1";
const ACCOUNT: &str = "123456789012";
/// The model most tests name.
const MODEL: &str = "anthropic.claude-3-haiku-20240307-v1:0";

/// The models the server is configured with (the validation test's good model ids too).
fn models() -> Vec<String> {
    vec![
        MODEL.into(),
        "my-model".into(),
        "m".into(),
        "m".repeat(2048),
    ]
}

struct Server {
    base: String,
    store: SharedStore,
    scheduler: Scheduler,
    http: reqwest::Client,
    dir: tempfile::TempDir,
    _fake: FakeServer,
}

async fn start() -> Server {
    start_with(SchedulerConfig::default()).await
}

async fn start_with(config: SchedulerConfig) -> Server {
    let anonymous = AuthConfig {
        anonymous_account: ACCOUNT.into(),
        ..AuthConfig::default()
    };
    start_with_auth(config, anonymous).await
}

async fn start_with_auth(config: SchedulerConfig, auth: AuthConfig) -> Server {
    batchd_testkit::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeServer::start(FakeConfig::default()).await.unwrap();
    let (storage, store) = support::local_state(dir.path()).await;
    let backend = batchd_testkit::conformance::openai_backend(fake.base_url()).unwrap();
    let models = models()
        .into_iter()
        .map(|id| {
            let entry = ModelEntry {
                shared_backend: None,
                backend: backend.clone(),
                concurrency: 4,
                records: RecordOptions::default(),
            };
            (id, entry)
        })
        .collect::<HashMap<_, _>>();
    let scheduler = Scheduler::new(
        Engine::new(storage, EngineConfig::default()),
        store.clone(),
        models,
        SchedulerConfig {
            region: REGION.into(),
            poll_interval: Duration::from_millis(20),
            ..config
        },
    );
    let app = router(
        Arc::new(SchedulerService(scheduler.clone())),
        ApiConfig {
            region: REGION.into(),
            account_id: ACCOUNT.into(),
            models: Vec::new(),
        },
        None,
        Arc::new(Authenticator::new(auth)),
    );
    Server {
        base: support::serve(app).await,
        store,
        scheduler,
        http: reqwest::Client::new(),
        dir,
        _fake: fake,
    }
}

fn valid_body(name: &str) -> Value {
    json!({
        "jobName": name,
        "roleArn": "arn:aws:iam::123456789012:role/batchd",
        "modelId": MODEL,
        "inputDataConfig": {"s3InputDataConfig": {"s3Uri": "s3://bucket/in/"}},
        "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": "s3://bucket/out/"}},
    })
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Server {
    async fn send(&self, req: reqwest::RequestBuilder) -> Answer {
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn create(&self, body: &Value) -> Answer {
        self.send(
            self.http
                .post(format!("{}/model-invocation-job", self.base))
                .json(body),
        )
        .await
    }

    async fn get(&self, path_and_query: &str) -> Answer {
        self.call(reqwest::Method::GET, path_and_query).await
    }

    async fn post(&self, path: &str) -> Answer {
        self.call(reqwest::Method::POST, path).await
    }

    /// A request without a body.
    async fn call(&self, method: reqwest::Method, path_and_query: &str) -> Answer {
        self.send(
            self.http
                .request(method, format!("{}{path_and_query}", self.base)),
        )
        .await
    }

    async fn create_ok(&self, name: &str) -> JobId {
        let a = self.create(&valid_body(name)).await;
        assert_eq!(a.status, 200, "{}", a.body);
        JobArn::parse(a.body["jobArn"].as_str().unwrap())
            .unwrap()
            .id
    }
}

fn header<'a>(a: &'a Answer, name: &str) -> &'a str {
    a.headers
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

/// Checks a rest-json error answer and returns its message.
fn assert_error(a: &Answer, status: u16, code: &str) -> String {
    assert_eq!(a.status, status, "{}", a.body);
    assert_eq!(header(a, "x-amzn-ErrorType"), code);
    assert_eq!(header(a, "content-type"), "application/json");
    assert_eq!(header(a, "x-amzn-RequestId").len(), 36);
    assert_eq!(a.body["__type"], code, "{}", a.body);
    a.body["message"].as_str().unwrap().to_owned()
}

/// A job's record counts: total, processed, success, error.
fn record_counts(job: &Value) -> Value {
    [
        "totalRecordCount",
        "processedRecordCount",
        "successRecordCount",
        "errorRecordCount",
    ]
    .map(|k| job[k].clone())
    .into()
}

fn assert_iso_ms(v: &Value) -> i64 {
    let s = v.as_str().unwrap_or_else(|| panic!("not a timestamp: {v}"));
    assert_eq!(s.len(), 24, "{s}");
    assert!(s.ends_with('Z') && s.as_bytes()[19] == b'.', "{s}");
    timestamp::millis_floor(timestamp::parse_lenient(s).unwrap())
}

#[tokio::test]
async fn create_then_get_round_trips_every_field() {
    let s = start().await;
    let body = json!({
        "jobName": "full-job.v1",
        "roleArn": "arn:aws:iam::123456789012:role/batchd",
        "clientRequestToken": "0c9b3b57-8d2a-4a5e-9c7b-2f1d3e4a5b6c",
        "modelId": "my-model",
        "inputDataConfig": {"s3InputDataConfig": {
            "s3Uri": "s3://bucket/in/records.jsonl", "s3InputFormat": "JSONL",
            "s3BucketOwner": "123456789012"}},
        "outputDataConfig": {"s3OutputDataConfig": {
            "s3Uri": "s3://bucket/out/", "s3EncryptionKeyId": "alias/batch",
            "s3BucketOwner": "123456789012"}},
        "vpcConfig": {"subnetIds": ["subnet-1", "subnet-2"], "securityGroupIds": ["sg-1"]},
        "timeoutDurationInHours": 48,
        "tags": [{"key": "team", "value": "ml"}],
        "modelInvocationType": "Converse",
    });
    let a = s.create(&body).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(header(&a, "content-type"), "application/json");
    assert_eq!(header(&a, "x-amzn-RequestId").len(), 36);
    let arn = a.body["jobArn"].as_str().unwrap().to_owned();
    let id = JobArn::parse(&arn).unwrap().id;
    assert_eq!(a.body.as_object().unwrap().len(), 1);

    let g = s.get(&format!("/model-invocation-job/{id}")).await;
    assert_eq!(g.status, 200, "{}", g.body);
    let job = &g.body;
    assert_eq!(job["jobArn"], arn);
    assert_eq!(job["jobName"], "full-job.v1");
    assert_eq!(job["modelId"], "my-model");
    assert_eq!(job["roleArn"], body["roleArn"]);
    assert_eq!(job["clientRequestToken"], body["clientRequestToken"]);
    assert_eq!(job["status"], "Submitted");
    assert_eq!(job["inputDataConfig"], body["inputDataConfig"]);
    assert_eq!(job["outputDataConfig"], body["outputDataConfig"]);
    assert_eq!(job["vpcConfig"], body["vpcConfig"]);
    assert_eq!(job["timeoutDurationInHours"], 48);
    assert_eq!(job["modelInvocationType"], "Converse");
    assert_eq!(job["totalRecordCount"], 0);
    let submit = assert_iso_ms(&job["submitTime"]);
    assert_iso_ms(&job["lastModifiedTime"]);
    let expiry = assert_iso_ms(&job["jobExpirationTime"]) - submit;
    assert!(
        (expiry - 48 * 3_600_000).abs() < 1000,
        "the expiry is submit + 48h: {expiry}"
    );
    for absent in ["endTime", "message", "tags"] {
        assert!(job.get(absent).is_none(), "{absent} in {job}");
    }

    // A job that ran and failed: status, message, endTime and counters show.
    s.store
        .transition(&id, JobStatus::Validating, None)
        .await
        .unwrap();
    let counters = Counters {
        total: 10,
        processed: 7,
        success: 5,
        error: 2,
        ..Counters::default()
    };
    s.store.update_counters(&id, &counters).await.unwrap();
    s.store
        .transition(&id, JobStatus::Failed, Some(&"x".repeat(3000)))
        .await
        .unwrap();
    let job = s.get(&format!("/model-invocation-job/{id}")).await.body;
    assert_eq!(job["status"], "Failed");
    assert_eq!(job["message"].as_str().unwrap().len(), 2048);
    assert!(assert_iso_ms(&job["endTime"]) >= submit);
    assert_eq!(record_counts(&job), json!([10, 7, 5, 2]));

    // The same token answers the same job.
    let again = s.create(&body).await;
    assert_eq!(again.body["jobArn"], arn);
}

#[tokio::test]
async fn a_percent_encoded_arn_names_the_job_in_get_and_stop() {
    let s = start().await;
    let id = s.create_ok("encoded").await;
    let arn = JobArn::new(REGION, ACCOUNT, id.clone()).to_string();
    // What botocore sends for a non-greedy label: ':' and '/' percent-encoded.
    let encoded = arn.replace(':', "%3A").replace('/', "%2F");
    assert!(encoded.contains("%2F"));
    let g = s.get(&format!("/model-invocation-job/{encoded}")).await;
    assert_eq!(g.status, 200, "{}", g.body);
    assert_eq!(g.body["jobArn"], arn);
    let lower = arn.replace(':', "%3a").replace('/', "%2f");
    assert_eq!(
        s.get(&format!("/model-invocation-job/{lower}"))
            .await
            .status,
        200
    );

    let stop = s
        .post(&format!("/model-invocation-job/{encoded}/stop"))
        .await;
    assert_eq!(stop.status, 200, "{}", stop.body);
    assert_eq!(stop.body, json!({}));
    assert_eq!(header(&stop, "content-type"), "application/json");
    assert_eq!(header(&stop, "x-amzn-RequestId").len(), 36);
    // Not validating or running yet, so the scheduler stops it at once.
    let job = s.get(&format!("/model-invocation-job/{id}")).await.body;
    assert_eq!(job["status"], "Stopped");
}

/// Sets (or with `None` removes) the member at a JSON pointer, creating objects on the way.
fn with(mut body: Value, pointer: &str, value: Option<Value>) -> Value {
    let mut parts: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    let last = parts.pop().unwrap();
    let mut node = &mut body;
    for p in parts {
        node = node
            .as_object_mut()
            .unwrap()
            .entry(p)
            .or_insert_with(|| json!({}));
    }
    let obj = node.as_object_mut().unwrap();
    match value {
        Some(v) => {
            obj.insert(last.to_owned(), v);
        }
        None => {
            obj.remove(last);
        }
    }
    body
}

#[tokio::test]
async fn every_validation_rule_accepts_good_values_and_names_the_field_of_bad_ones() {
    // Every good case creates a job of one model: more than the default quota allows.
    let s = start_with(SchedulerConfig {
        max_active_jobs_per_model: 1000,
        ..SchedulerConfig::default()
    })
    .await;
    let tags = |n: usize| json!(vec![json!({"key": "k", "value": "v"}); n]);
    let ids = |n: usize| json!(vec!["id-1"; n]);
    let input = "/inputDataConfig/s3InputDataConfig";
    let output = "/outputDataConfig/s3OutputDataConfig";
    // (pointer, good value, bad value, the path the message must name)
    let cases: Vec<(String, Value, Value, &str)> = vec![
        (
            "/jobName".into(),
            json!("ok-Name.v1+x"),
            json!("bad name!"),
            "jobName",
        ),
        (
            "/jobName".into(),
            json!("a".repeat(63)),
            json!("a".repeat(64)),
            "jobName",
        ),
        ("/jobName".into(), json!("a"), json!(""), "jobName"),
        (
            "/roleArn".into(),
            json!("arn:aws-cn:iam:::role/r"),
            json!("arn:aws:iam::1:role/r"),
            "roleArn",
        ),
        (
            "/roleArn".into(),
            json!("arn:aws:iam::123456789012:role/x"),
            json!(format!(
                "arn:aws:iam::123456789012:role/{}",
                "x".repeat(2040)
            )),
            "roleArn",
        ),
        (
            "/clientRequestToken".into(),
            json!("tok-1"),
            json!("tok_1"),
            "clientRequestToken",
        ),
        (
            "/clientRequestToken".into(),
            json!("t".repeat(256)),
            json!("t".repeat(257)),
            "clientRequestToken",
        ),
        (
            "/clientRequestToken".into(),
            json!("t"),
            json!(""),
            "clientRequestToken",
        ),
        (
            "/modelId".into(),
            json!("m".repeat(2048)),
            json!("m".repeat(2049)),
            "modelId",
        ),
        ("/modelId".into(), json!("m"), json!(""), "modelId"),
        (
            format!("{input}/s3Uri"),
            json!("s3://my.bucket/in/a.jsonl"),
            json!("s3://My_Bucket/in"),
            "inputDataConfig.s3InputDataConfig.s3Uri",
        ),
        (
            format!("{input}/s3Uri"),
            json!("s3://bkt"),
            json!(format!("s3://bkt/{}", "k".repeat(1020))),
            "inputDataConfig.s3InputDataConfig.s3Uri",
        ),
        (
            format!("{input}/s3InputFormat"),
            json!("JSONL"),
            json!("CSV"),
            "inputDataConfig.s3InputDataConfig.s3InputFormat",
        ),
        (
            format!("{input}/s3BucketOwner"),
            json!("123456789012"),
            json!("1234"),
            "inputDataConfig.s3InputDataConfig.s3BucketOwner",
        ),
        (
            format!("{output}/s3Uri"),
            json!("s3://bucket/out/x/"),
            json!("file:///tmp/out"),
            "outputDataConfig.s3OutputDataConfig.s3Uri",
        ),
        (
            format!("{output}/s3EncryptionKeyId"),
            json!("alias/k"),
            json!("not a key"),
            "outputDataConfig.s3OutputDataConfig.s3EncryptionKeyId",
        ),
        (
            "/vpcConfig/subnetIds".into(),
            ids(16),
            ids(17),
            "vpcConfig.subnetIds",
        ),
        (
            "/vpcConfig/subnetIds".into(),
            ids(1),
            json!([]),
            "vpcConfig.subnetIds",
        ),
        (
            "/vpcConfig/subnetIds".into(),
            ids(1),
            json!(["bad id"]),
            "vpcConfig.subnetIds.1.member",
        ),
        (
            "/vpcConfig/securityGroupIds".into(),
            ids(5),
            ids(6),
            "vpcConfig.securityGroupIds",
        ),
        ("/tags".into(), tags(200), tags(201), "tags"),
        (
            "/tags".into(),
            json!([{"key": "k", "value": ""}]),
            json!([{"key": "", "value": "v"}]),
            "tags.1.member.key",
        ),
        (
            "/tags".into(),
            json!([{"key": "k".repeat(128), "value": "v".repeat(256)}]),
            json!([{"key": "k", "value": "v".repeat(257)}]),
            "tags.1.member.value",
        ),
        (
            "/tags".into(),
            json!([{"key": "a b:c/d=e+f@g-h_i.j", "value": "v"}]),
            json!([{"key": "k*", "value": "v"}]),
            "tags.1.member.key",
        ),
        (
            "/tags".into(),
            json!([]),
            json!([{"key": "k"}]),
            "tags.1.member.value",
        ),
        (
            "/timeoutDurationInHours".into(),
            json!(24),
            json!(23),
            "timeoutDurationInHours",
        ),
        (
            "/timeoutDurationInHours".into(),
            json!(168),
            json!(169),
            "timeoutDurationInHours",
        ),
        (
            "/timeoutDurationInHours".into(),
            json!(100),
            json!(24.5),
            "timeoutDurationInHours",
        ),
        (
            "/modelInvocationType".into(),
            json!("InvokeModel"),
            json!("converse"),
            "modelInvocationType",
        ),
    ];
    for (i, (pointer, good, bad, field)) in cases.into_iter().enumerate() {
        let base = valid_body(&format!("case{i}"));
        // vpcConfig members need their sibling to be valid.
        let base = if pointer.starts_with("/vpcConfig") {
            with(
                base,
                "/vpcConfig",
                Some(json!({"subnetIds": ["s-1"], "securityGroupIds": ["sg-1"]})),
            )
        } else {
            base
        };
        let ok = s.create(&with(base.clone(), &pointer, Some(good))).await;
        assert_eq!(ok.status, 200, "{pointer} good: {}", ok.body);
        let base = with(base, "/jobName", Some(json!(format!("bad{i}"))));
        let err = s.create(&with(base, &pointer, Some(bad.clone()))).await;
        let message = assert_error(&err, 400, "ValidationException");
        assert!(
            message.contains(" validation error") && message.contains("detected: Value "),
            "{pointer}: {message}"
        );
        assert!(
            message.contains(&format!(
                "at '{field}' failed to satisfy constraint: Member must"
            )),
            "{pointer} = {bad}: {message}"
        );
    }

    // The brief's example, word for word.
    let err = s.create(&valid_body("bad name!")).await;
    assert_eq!(
        assert_error(&err, 400, "ValidationException"),
        "1 validation error detected: Value 'bad name!' at 'jobName' failed to satisfy \
         constraint: Member must satisfy regular expression pattern: \
         [a-zA-Z0-9]{1,63}(-*[a-zA-Z0-9\\+\\-\\.]){0,63}"
    );
}

#[tokio::test]
async fn missing_members_malformed_bodies_and_oversized_bodies_are_validation_errors() {
    let s = start().await;
    for (pointer, field) in [
        ("/jobName", "jobName"),
        ("/roleArn", "roleArn"),
        ("/modelId", "modelId"),
        ("/inputDataConfig", "inputDataConfig"),
        ("/outputDataConfig", "outputDataConfig"),
        (
            "/inputDataConfig/s3InputDataConfig",
            "inputDataConfig.s3InputDataConfig",
        ),
        (
            "/outputDataConfig/s3OutputDataConfig/s3Uri",
            "outputDataConfig.s3OutputDataConfig.s3Uri",
        ),
    ] {
        let err = s.create(&with(valid_body("m"), pointer, None)).await;
        let message = assert_error(&err, 400, "ValidationException");
        assert!(
            message.contains(&format!(
                "Value null at '{field}' failed to satisfy constraint: Member must not be null"
            )),
            "{message}"
        );
    }
    let vpc = with(
        valid_body("m"),
        "/vpcConfig",
        Some(json!({"subnetIds": ["s"]})),
    );
    let message = assert_error(&s.create(&vpc).await, 400, "ValidationException");
    assert!(
        message.contains("'vpcConfig.securityGroupIds'"),
        "{message}"
    );

    let raw = |body: &'static str| {
        s.http
            .post(format!("{}/model-invocation-job", s.base))
            .header("content-type", "application/json")
            .body(body)
    };
    let message = assert_error(
        &s.send(raw("{\"jobName\": ")).await,
        400,
        "ValidationException",
    );
    assert!(message.contains("not valid JSON"), "{message}");
    assert_error(&s.send(raw("[]")).await, 400, "ValidationException");
    let message = assert_error(&s.send(raw("")).await, 400, "ValidationException");
    assert!(
        message.starts_with("5 validation errors detected"),
        "{message}"
    );

    let huge = with(
        valid_body("huge"),
        "/padding",
        Some(json!("x".repeat(2 << 20))),
    );
    let message = assert_error(&s.create(&huge).await, 400, "ValidationException");
    assert!(message.contains("larger than"), "{message}");
}

async fn list_all(s: &Server, query: &str) -> (Vec<String>, usize) {
    let mut ids = Vec::new();
    let mut pages = 0;
    let mut token: Option<String> = None;
    loop {
        let mut q = query.to_owned();
        if let Some(t) = &token {
            q.push_str(&format!("&nextToken={t}"));
        }
        let a = s.get(&format!("/model-invocation-jobs?{q}")).await;
        assert_eq!(a.status, 200, "{}", a.body);
        pages += 1;
        for job in a.body["invocationJobSummaries"].as_array().unwrap() {
            assert!(job["jobName"].is_string());
            assert_iso_ms(&job["submitTime"]);
            ids.push(
                JobArn::parse(job["jobArn"].as_str().unwrap())
                    .unwrap()
                    .id
                    .to_string(),
            );
        }
        match a.body.get("nextToken") {
            Some(t) => token = Some(t.as_str().unwrap().to_owned()),
            None => return (ids, pages),
        }
        assert!(pages < 20, "runaway pagination");
    }
}

#[tokio::test]
async fn list_pages_through_every_job_once_in_both_orders_and_filters() {
    let s = start().await;
    let mut created = Vec::new();
    for i in 0..5 {
        let name = if i % 2 == 0 { "even" } else { "odd" };
        created.push(s.create_ok(&format!("{name}-{i}")).await);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut expected: Vec<(i64, String)> = Vec::new();
    for id in &created {
        let job = s.store.get(id).await.unwrap().unwrap();
        expected.push((job.submit_time_ms, id.to_string()));
    }
    expected.sort();
    let ascending: Vec<String> = expected.iter().map(|(_, id)| id.clone()).collect();
    let mut descending = ascending.clone();
    descending.reverse();

    let (ids, pages) = list_all(&s, "maxResults=2").await;
    assert_eq!((ids, pages), (descending.clone(), 3));
    let (ids, pages) = list_all(&s, "maxResults=2&sortOrder=Descending&sortBy=CreationTime").await;
    assert_eq!((ids, pages), (descending.clone(), 3));
    let (ids, pages) = list_all(&s, "maxResults=2&sortOrder=Ascending").await;
    assert_eq!((ids, pages), (ascending.clone(), 3));
    // Exactly one full page: no nextToken (the service was asked for one row more).
    let (ids, pages) = list_all(&s, "maxResults=5").await;
    assert_eq!((ids.len(), pages), (5, 1));
    let (ids, pages) = list_all(&s, "").await;
    assert_eq!((ids, pages), (descending.clone(), 1));

    // Filters.
    let (ids, _) = list_all(&s, "nameContains=odd&maxResults=1").await;
    assert_eq!(ids, [descending[1].clone(), descending[3].clone()]);
    s.store
        .transition(&created[2], JobStatus::Validating, None)
        .await
        .unwrap();
    let (ids, _) = list_all(&s, "statusEquals=Validating").await;
    assert_eq!(ids, [created[2].to_string()]);
    let (ids, _) = list_all(&s, "statusEquals=Completed").await;
    assert!(ids.is_empty());
    let third = timestamp::format_ms(expected[2].0).unwrap();
    let (ids, _) = list_all(&s, &format!("submitTimeAfter={third}&sortOrder=Ascending")).await;
    assert_eq!(ids, ascending[3..]);
    let (ids, _) = list_all(&s, &format!("submitTimeBefore={third}&sortOrder=Ascending")).await;
    assert_eq!(ids, ascending[..2]);
    // botocore's form, without fractional seconds, and epoch seconds.
    let (ids, _) = list_all(&s, "submitTimeAfter=2000-01-01T00:00:00Z").await;
    assert_eq!(ids.len(), 5);
    let (ids, _) = list_all(&s, "submitTimeBefore=946684800").await;
    assert!(ids.is_empty());
    let offset = "submitTimeAfter=2000-01-01T01:00:00%2B01:00";
    assert_eq!(list_all(&s, offset).await.0.len(), 5);
}

#[tokio::test]
async fn list_rejects_bad_parameters_naming_them() {
    let s = start().await;
    s.create_ok("one").await;
    s.create_ok("two").await;
    let first = s.get("/model-invocation-jobs?maxResults=1").await;
    let token = first.body["nextToken"].as_str().unwrap().to_owned();
    for (query, field) in [
        ("nextToken=garbage", "nextToken"),
        ("nextToken=djEuQS4xLmFiYw", "nextToken"),
        (
            &*format!("nextToken={token}&sortOrder=Ascending"),
            "nextToken",
        ),
        ("statusEquals=Running", "statusEquals"),
        ("statusEquals=inprogress", "statusEquals"),
        ("maxResults=0", "maxResults"),
        ("maxResults=1001", "maxResults"),
        ("maxResults=ten", "maxResults"),
        ("sortBy=Name", "sortBy"),
        ("sortOrder=asc", "sortOrder"),
        ("submitTimeAfter=yesterday", "submitTimeAfter"),
        ("submitTimeBefore=2025-99-01", "submitTimeBefore"),
        (&*format!("nameContains={}", "n".repeat(64)), "nameContains"),
    ] {
        let a = s.get(&format!("/model-invocation-jobs?{query}")).await;
        let message = assert_error(&a, 400, "ValidationException");
        assert!(
            message.contains(&format!("at '{field}'")),
            "{query}: {message}"
        );
    }
    // The token continues where the first page ended.
    let second = s
        .get(&format!(
            "/model-invocation-jobs?maxResults=1&nextToken={token}"
        ))
        .await;
    assert_eq!(second.status, 200);
    assert_ne!(
        second.body["invocationJobSummaries"][0]["jobArn"],
        first.body["invocationJobSummaries"][0]["jobArn"]
    );
    assert!(second.body.get("nextToken").is_none());
}

#[tokio::test]
async fn each_error_type_has_its_status_headers_and_body() {
    let s = start_with(SchedulerConfig {
        max_active_jobs_per_model: 1,
        ..SchedulerConfig::default()
    })
    .await;
    let id = s.create_ok("taken").await;

    let message = assert_error(
        &s.get("/model-invocation-job/aaaaaaaaaaaa").await,
        404,
        "ResourceNotFoundException",
    );
    assert!(message.contains("aaaaaaaaaaaa"), "{message}");
    assert_error(
        &s.post("/model-invocation-job/aaaaaaaaaaaa/stop").await,
        404,
        "ResourceNotFoundException",
    );
    let message = assert_error(
        &s.create(&with(
            valid_body("nomodel"),
            "/modelId",
            Some(json!("no-such-model")),
        ))
        .await,
        400,
        "ValidationException",
    );
    assert!(message.contains("no-such-model"), "{message}");

    for bad in [
        "nope",
        "ABCDEFABCDEF",
        "arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Amodel-invocation-job%2Fabc123def456",
    ] {
        let message = assert_error(
            &s.get(&format!("/model-invocation-job/{bad}")).await,
            400,
            "ValidationException",
        );
        assert!(message.contains("at 'jobIdentifier'"), "{message}");
        assert_error(
            &s.post(&format!("/model-invocation-job/{bad}/stop")).await,
            400,
            "ValidationException",
        );
    }

    let message = assert_error(
        &s.create(&valid_body("taken")).await,
        400,
        "ConflictException",
    );
    assert!(message.contains("in use"), "{message}");
    // "taken" is the model's one active job.
    assert_error(
        &s.create(&valid_body("q")).await,
        400,
        "ServiceQuotaExceededException",
    );

    s.store
        .transition(&id, JobStatus::Validating, None)
        .await
        .unwrap();
    s.store
        .transition(&id, JobStatus::Failed, Some("bad input"))
        .await
        .unwrap();
    assert_error(
        &s.post(&format!("/model-invocation-job/{id}/stop")).await,
        400,
        "ConflictException",
    );

    // A store that fails: 500, and nothing of the database error reaches the client.
    s.store.close().await;
    let message = assert_error(
        &s.create(&valid_body("b")).await,
        500,
        "InternalServerException",
    );
    for detail in ["pool", "closed", "sqlite", "database"] {
        assert!(!message.to_lowercase().contains(detail), "{message}");
    }
}

/// With the scheduling loop running, a job created over HTTP validates, runs on the fake
/// backend and completes; Get and List show what the scheduler did.
#[tokio::test]
async fn a_job_created_over_http_runs_to_completion_on_the_real_scheduler() {
    let s = start().await;
    let records: String = (0..3)
        .map(|i| {
            format!(
                "{{\"recordId\":\"r{i}\",\"modelInput\":{{\"messages\":[{{\"role\":\"user\",\"content\":[{{\"text\":\"hi {i}\"}}]}}]}}}}\n"
            )
        })
        .collect();
    let input = s.dir.path().join("buckets/bucket/in/a.jsonl");
    std::fs::create_dir_all(input.parent().unwrap()).unwrap();
    std::fs::write(&input, records).unwrap();
    s.scheduler.start();
    let body = with(
        valid_body("runs"),
        "/modelInvocationType",
        Some(json!("Converse")),
    );
    let a = s.create(&body).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let id = JobArn::parse(a.body["jobArn"].as_str().unwrap())
        .unwrap()
        .id;
    let deadline = Instant::now() + Duration::from_secs(30);
    let job = loop {
        let job = s.get(&format!("/model-invocation-job/{id}")).await.body;
        if job["status"] == "Completed" {
            break job;
        }
        assert!(Instant::now() < deadline, "not done: {job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(record_counts(&job), json!([3, 3, 3, 0]));
    assert_iso_ms(&job["endTime"]);
    let out = s
        .dir
        .path()
        .join(format!("buckets/bucket/out/{id}/a.jsonl.out"));
    assert_eq!(std::fs::read_to_string(out).unwrap().lines().count(), 3);
    let (ids, _) = list_all(&s, "statusEquals=Completed").await;
    assert_eq!(ids, [id.to_string()]);
    assert_error(
        &s.post(&format!("/model-invocation-job/{id}/stop")).await,
        400,
        "ConflictException",
    );
    s.scheduler.shutdown().await;
}

/// `batchd run`'s jobs share the store but are not the API's: not listed, not found, not
/// stoppable through it, and their names do not conflict with the API's.
#[tokio::test]
async fn jobs_of_batchd_run_are_invisible_to_the_api() {
    let s = start().await;
    let id = JobId::parse("0000000000aa").unwrap();
    s.store
        .create(batchd_core::NewJob {
            id: id.clone(),
            arn: JobArn::new(REGION, ACCOUNT, id.clone()).to_string(),
            request: batchd_core::JobRequest {
                name: "local-run".into(),
                account_id: ACCOUNT.into(),
                model_id: MODEL.into(),
                origin: batchd_core::JobOrigin::Run,
                role_arn: None,
                client_request_token: None,
                invocation_type: batchd_core::InvocationType::Converse,
                inputs: vec!["/data/a.jsonl".into(), "/data/b/".into()],
                output: "/data/out".into(),
                timeout_hours: None,
                request_json: None,
                dialect: batchd_core::Dialect::Bedrock,
            },
            job_expiration_ms: None,
        })
        .await
        .unwrap();
    let api_job = s.create_ok("local-run").await;
    let (ids, _) = list_all(&s, "").await;
    assert_eq!(ids, [api_job.to_string()]);
    for answer in [
        s.get(&format!("/model-invocation-job/{id}")).await,
        s.post(&format!("/model-invocation-job/{id}/stop")).await,
    ] {
        assert_error(&answer, 404, "ResourceNotFoundException");
    }
    let run_job = s.store.get(&id).await.unwrap().unwrap();
    assert_eq!(
        run_job.status,
        JobStatus::Submitted,
        "the stop did not touch it"
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_unknown_operation() {
    let s = start().await;
    let message = assert_error(&s.get("/nope").await, 404, "UnknownOperationException");
    assert!(message.contains("/nope"), "{message}");
    for (method, path) in [
        (
            reqwest::Method::GET,
            "/model-invocation-job/abc123def456/stop",
        ),
        (reqwest::Method::GET, "/model-invocation-job"),
        (
            reqwest::Method::DELETE,
            "/model-invocation-job/abc123def456",
        ),
        (reqwest::Method::POST, "/model-invocation-jobs"),
    ] {
        assert_error(
            &s.call(method, path).await,
            405,
            "UnknownOperationException",
        );
    }
}

#[tokio::test]
async fn without_keys_auth_headers_are_ignored() {
    let s = start().await;
    let sigv4 = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20250115/us-east-1/bedrock/aws4_request, \
                 SignedHeaders=host;x-amz-date, Signature=deadbeef";
    for auth in [sigv4, "Bearer bedrock-api-key-xyz", "garbage"] {
        let a = s
            .send(
                s.http
                    .get(format!("{}/model-invocation-jobs", s.base))
                    .header("authorization", auth)
                    .header("x-amz-date", "20250115T100000Z")
                    .header("x-amz-security-token", "token"),
            )
            .await;
        assert_eq!(a.status, 200, "{auth}: {}", a.body);
        assert_eq!(a.body, json!({"invocationJobSummaries": []}));
    }
}

/// A client that sends `Authorization: Bearer <token>` on every request.
fn bearer_client(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

#[tokio::test]
async fn each_account_lists_gets_and_stops_only_its_own_jobs() {
    const A: &str = "111111111111";
    const B: &str = "222222222222";
    let s = start_with_auth(
        SchedulerConfig::default(),
        AuthConfig {
            tokens: vec![
                BearerKey::from_token("key-of-a", A),
                BearerKey::from_token("key-of-b", B),
            ],
            ..AuthConfig::default()
        },
    )
    .await;
    let (a, b) = (bearer_client("key-of-a"), bearer_client("key-of-b"));
    let create = |client: &reqwest::Client, name: &str| {
        client
            .post(format!("{}/model-invocation-job", s.base))
            .json(&valid_body(name))
    };
    let mut arns_of_a = Vec::new();
    // One name in both accounts: names are unique per account only.
    for name in ["shared-name", "a-2", "a-3"] {
        let answer = s.send(create(&a, name)).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let arn = JobArn::parse(answer.body["jobArn"].as_str().unwrap()).unwrap();
        assert_eq!(arn.account, A, "the ARN carries the caller's account");
        arns_of_a.push(arn);
    }
    let mut ids_of_b = Vec::new();
    for name in ["shared-name", "b-2"] {
        let answer = s.send(create(&b, name)).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let arn = JobArn::parse(answer.body["jobArn"].as_str().unwrap()).unwrap();
        assert_eq!(arn.account, B);
        ids_of_b.push(arn.id.to_string());
    }

    // List, two per page: each account pages through exactly its own jobs.
    let list_all_of = |client: reqwest::Client| {
        let base = s.base.clone();
        async move {
            let mut ids = Vec::new();
            let mut token: Option<String> = None;
            for _ in 0..10 {
                let mut url = format!("{base}/model-invocation-jobs?maxResults=2");
                if let Some(t) = &token {
                    url.push_str(&format!("&nextToken={t}"));
                }
                let page: Value = client.get(url).send().await.unwrap().json().await.unwrap();
                for job in page["invocationJobSummaries"].as_array().unwrap() {
                    let arn = JobArn::parse(job["jobArn"].as_str().unwrap()).unwrap();
                    ids.push(arn.id.to_string());
                }
                match page.get("nextToken") {
                    Some(t) => token = Some(t.as_str().unwrap().to_owned()),
                    None => break,
                }
            }
            ids.sort();
            ids
        }
    };
    let mut expected_a: Vec<String> = arns_of_a.iter().map(|a| a.id.to_string()).collect();
    expected_a.sort();
    ids_of_b.sort();
    assert_eq!(list_all_of(a.clone()).await, expected_a);
    assert_eq!(list_all_of(b.clone()).await, ids_of_b);

    // B names A's job by ARN and by id: not found (404), never forbidden.
    let arn = arns_of_a[0].to_string();
    let encoded = arn.replace(':', "%3A").replace('/', "%2F");
    for path in [
        format!("/model-invocation-job/{encoded}"),
        format!("/model-invocation-job/{}", arns_of_a[0].id),
    ] {
        let get = s.send(b.get(format!("{}{path}", s.base))).await;
        assert_error(&get, 404, "ResourceNotFoundException");
        let stop = s.send(b.post(format!("{}{path}/stop", s.base))).await;
        assert_error(&stop, 404, "ResourceNotFoundException");
    }
    let own = s
        .send(a.get(format!("{}/model-invocation-job/{encoded}", s.base)))
        .await;
    assert_eq!(own.status, 200, "{}", own.body);
    assert_eq!(own.body["status"], "Submitted", "B's stop did not reach it");
    // The batch-job API too.
    let batch = s
        .send(b.get(format!(
            "{}/batch-inference-jobs/{}",
            s.base, arns_of_a[0].id
        )))
        .await;
    assert_error(&batch, 404, "ResourceNotFoundException");

    // No key, an unknown key: refused before any handler.
    let none = s.get("/model-invocation-jobs").await;
    assert_error(&none, 403, "MissingAuthenticationTokenException");
    let unknown = s
        .send(bearer_client("key-of-c").get(format!("{}/model-invocation-jobs", s.base)))
        .await;
    assert_error(&unknown, 403, "UnrecognizedClientException");
}
