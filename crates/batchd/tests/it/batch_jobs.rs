//! The batch-job API (`/batch-inference-jobs`) of `batchd serve` over HTTP, against the fake
//! backend: create → start → get, batch bounds, one result per item in input order, the three
//! terminal statuses (complete, stop, timeout), a job's own retry policy, bad requests and bad
//! items. The seed's own Python classes run against it in `tests/python/test_seed_api.py`.

use std::time::{Duration, Instant};

use batchd_testkit::harness::{Config, Model, Served, TestEnv};
use batchd_testkit::{FakeConfig, FakeServer};
use serde_json::{Value, json};

use crate::{MODEL, test_env};

const FAIL_MARKER: &str = "BATCHD-FAIL-400";

fn env_for(fake: &FakeServer) -> TestEnv {
    test_env(
        &Config::new()
            .backoff_ms(1, 20)
            .model(Model::fake(MODEL, fake).max_concurrency(64)),
    )
}

/// `n` documents as the seed's `BatchInputPreparator` writes them.
fn documents(prefix: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({"id": format!("{prefix}{i}"), "content": format!("document {prefix}{i}"),
                   "metadata": {"type": "report", "n": i}})
        })
        .collect()
}

/// A fake backend with `config` and a test environment naming it as `MODEL`.
async fn setup(config: FakeConfig) -> (FakeServer, TestEnv) {
    let fake = FakeServer::start(config).await.unwrap();
    let env = env_for(&fake);
    (fake, env)
}

/// Writes `items` as the JSON array `s3://input/docs/NAME`.
fn input(env: &TestEnv, name: &str, items: &[Value]) {
    let dir = env.bucket("input").join("docs");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), serde_json::to_vec(items).unwrap()).unwrap();
}

fn create_body(name: &str, batch_size: u64, batches: u64, timeout: u64) -> Value {
    json!({
        "name": name,
        "modelId": MODEL,
        "inputConfiguration": {"inputLocation": "s3://input/docs/", "inputFormat": "JSON", "batchSize": batch_size},
        "outputConfiguration": {"outputLocation": "s3://output/results/", "outputFormat": "JSON"},
        "jobConfiguration": {"maxConcurrentBatches": batches, "timeoutInSeconds": timeout}
    })
}

async fn create(server: &Served, body: &Value) -> String {
    let (status, answer) = server.post_status("batch-inference-jobs", Some(body)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "CREATED", "{answer}");
    answer["jobId"].as_str().unwrap().to_owned()
}

async fn start(server: &Served, id: &str) {
    let path = format!("batch-inference-jobs/{id}/start");
    let (status, answer) = server.post_status(&path, None).await;
    assert_eq!(status, 200, "{answer}");
}

async fn get(server: &Served, id: &str) -> Value {
    server.get_json(&format!("batch-inference-jobs/{id}")).await
}

/// Polls until the job shows one of the three terminal statuses.
async fn wait_end(server: &Served, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let job = get(server, id).await;
        for member in ["processedItems", "totalItems", "progress"] {
            assert!(job.get(member).is_some(), "{member} missing: {job}");
        }
        if ["COMPLETED", "FAILED", "STOPPED"].contains(&job["status"].as_str().unwrap()) {
            return job;
        }
        assert!(Instant::now() < deadline, "job did not end: {job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every result object of a job's output folder, file by file (sorted by name).
fn results(env: &TestEnv, id: &str) -> Vec<(String, Vec<Value>)> {
    let dir = env.bucket("output").join("results").join(id);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let text = std::fs::read_to_string(dir.join(&name)).unwrap();
            let items: Vec<Value> = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{name} is not a JSON array ({e}): {text}"));
            (name, items)
        })
        .collect()
}

/// Asserts that a POST answered `status` with an error of `error_type`; returns the answer.
async fn post_refused(
    server: &Served,
    path: &str,
    body: Option<&Value>,
    (status, error_type): (u16, &str),
) -> Value {
    let (got, answer) = server.post_status(path, body).await;
    assert_eq!(
        (got, answer["__type"].as_str()),
        (status, Some(error_type)),
        "{answer}"
    );
    answer
}

fn ids(items: &[Value]) -> Vec<&str> {
    items.iter().map(|r| r["id"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn batches_are_bounded_and_every_item_gets_one_result_in_order() {
    let (fake, env) = setup(FakeConfig {
        fail_when_prompt_contains: Some(FAIL_MARKER.into()),
        ..FakeConfig::latency(150, 0)
    })
    .await;
    let mut first = documents("a", 12);
    first[4]["content"] = json!(format!("please {FAIL_MARKER}"));
    input(&env, "batch_0.json", &first);
    input(&env, "batch_1.json", &documents("b", 8));
    let server = env.serve().await;

    let id = create(&server, &create_body("bounded", 3, 2, 600)).await;
    let created = get(&server, &id).await;
    assert_eq!(created["status"], "CREATED");
    assert_eq!(
        (
            &created["processedItems"],
            &created["totalItems"],
            &created["progress"]
        ),
        (&json!(0), &json!(0), &json!(0.0))
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(fake.stats().requests, 0, "nothing runs before start");

    start(&server, &id).await;
    let start_path = format!("batch-inference-jobs/{id}/start");
    post_refused(&server, &start_path, None, (400, "ConflictException")).await;
    let job = wait_end(&server, &id).await;
    assert_eq!(job["status"], "COMPLETED", "{job}");
    assert_eq!(
        (&job["processedItems"], &job["totalItems"], &job["progress"]),
        (&json!(20), &json!(20), &json!(100.0))
    );
    assert_eq!(
        (&job["successCount"], &job["errorCount"]),
        (&json!(19), &json!(1))
    );
    let metrics = &job["metrics"];
    assert!(metrics["recordsPerSecond"].as_f64().unwrap() > 0.0, "{job}");
    // Once ended, from the job's analysis: exact percentiles over all 20 results.
    let time = &metrics["processingTime"];
    assert_eq!(time["count"], 20, "{job}");
    assert!(time["p50"].as_f64().unwrap() >= 0.15, "{job}");
    let analysis_path = env
        .bucket("output")
        .join(format!("results/{id}.analysis.json"));
    let analysis: Value = serde_json::from_slice(&std::fs::read(&analysis_path).unwrap()).unwrap();
    assert_eq!(analysis["processing_time"]["p90"], time["p90"]);
    assert_eq!(
        (&analysis["total_processed"], &analysis["error_count"]),
        (&json!(20), &json!(1))
    );
    assert!(metrics["outputTokens"].as_u64().unwrap() > 0, "{job}");
    // `batchd results` joins each result with its input item.
    let csv = env.path("rows.csv");
    let out = env
        .batchd(&[
            "results",
            &id,
            "--format",
            "json",
            "--export",
            csv.to_str().unwrap(),
        ])
        .await;
    assert!(
        out.status.success(),
        "{}",
        batchd_testkit::harness::describe(&out)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["success_count"], 19);
    let rows = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(rows.lines().count(), 21, "a header and 20 rows:\n{rows}");
    assert!(
        rows.lines().nth(1).unwrap().contains("document a0"),
        "{rows}"
    );

    // 3 items a batch, 2 batches at once: never more than 6 in flight, and 6 reached.
    assert_eq!(fake.stats().max_in_flight, 6, "{:?}", fake.stats());

    let files = results(&env, &id);
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["batch_0.json", "batch_1.json"],
        "nothing else in the folder"
    );
    assert_eq!(ids(&files[0].1), ids(&first));
    assert_eq!(ids(&files[1].1), ids(&documents("b", 8)));
    let ok = &files[0].1[0];
    assert_eq!(ok["status"], "SUCCESS");
    assert_eq!(ok["output"], "echo: document a0");
    assert_eq!(ok["metadata"], json!({"type": "report", "n": 0}));
    assert_eq!((&ok["attempts"], &ok["error"]), (&json!(1), &Value::Null));
    assert!(ok["processing_time"].as_f64().unwrap() >= 0.15, "{ok}");
    let failed = &files[0].1[4];
    assert_eq!(failed["status"], "ERROR");
    assert_eq!(failed["error"]["code"], "ValidationException");
    assert_eq!(failed["output"], Value::Null);
    // The manifest sits beside the folder, not in it.
    assert!(
        env.bucket("output")
            .join(format!("results/{id}.manifest.json"))
            .is_file()
    );
}

#[tokio::test]
async fn stop_and_timeout_end_stopped_and_failed_with_every_item_present() {
    let (_fake, env) = setup(FakeConfig::latency(300, 0)).await;
    input(&env, "batch_0.json", &documents("d", 30));
    let server = env.serve().await;

    let stopped = create(&server, &create_body("stopped", 2, 1, 600)).await;
    start(&server, &stopped).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(&server, &stopped).await["status"] != "IN_PROGRESS" {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Live between checkpoints: counts and processing times of what has been written.
    // Polled, not slept: on a loaded CI machine two 300 ms records can take longer than 800 ms.
    let running = loop {
        let running = get(&server, &stopped).await;
        if running["processedItems"].as_u64().unwrap() >= 2 {
            break running;
        }
        assert!(Instant::now() < deadline, "{running}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(running["status"], "IN_PROGRESS", "{running}");
    let time = &running["metrics"]["processingTime"];
    assert!(time["p50"].as_f64().unwrap() >= 0.29, "{running}");
    assert!(
        running["metrics"]["etaSeconds"].as_f64().unwrap() > 0.0,
        "{running}"
    );
    let (status, answer) = server
        .post_status(&format!("batch-inference-jobs/{stopped}/stop"), None)
        .await;
    assert_eq!(status, 200, "{answer}");
    let job = wait_end(&server, &stopped).await;
    assert_eq!(job["status"], "STOPPED", "{job}");
    let items = &results(&env, &stopped)[0].1;
    assert_eq!(
        ids(items),
        ids(&documents("d", 30)),
        "every item, once, in order"
    );
    let codes: Vec<&str> = items
        .iter()
        .filter(|r| r["status"] == "ERROR")
        .map(|r| r["error"]["code"].as_str().unwrap())
        .collect();
    assert!(
        !codes.is_empty() && codes.iter().all(|c| *c == "JobStopped"),
        "{codes:?}"
    );
    assert!(items[0]["status"] == "SUCCESS", "{}", items[0]);

    // Stopped before its start: nothing ran, nothing was read; a second stop is a conflict.
    let mut body = create_body("never-started", 2, 1, 600);
    body["clientRequestToken"] = json!("token-1");
    let unstarted = create(&server, &body).await;
    assert_eq!(
        create(&server, &body).await,
        unstarted,
        "the same token, the same job"
    );
    let stop_path = format!("batch-inference-jobs/{unstarted}/stop");
    assert_eq!(server.post_status(&stop_path, None).await.0, 200);
    let job = wait_end(&server, &unstarted).await;
    assert_eq!(
        (&job["status"], &job["processedItems"]),
        (&json!("STOPPED"), &json!(0))
    );
    post_refused(&server, &stop_path, None, (400, "ConflictException")).await;

    let timed_out = create(&server, &create_body("timed-out", 2, 1, 1)).await;
    start(&server, &timed_out).await;
    let job = wait_end(&server, &timed_out).await;
    assert_eq!(job["status"], "FAILED", "{job}");
    let reason = job["statusReason"].as_str().unwrap();
    assert!(reason.contains("timed out"), "{reason}");
    let items = &results(&env, &timed_out)[0].1;
    assert_eq!(items.len(), 30);
    assert!(
        items.iter().any(|r| r["status"] == "SUCCESS"),
        "finished results are kept"
    );
    assert!(
        items.iter().any(|r| r["error"]["code"] == "JobTimedOut"),
        "{items:?}"
    );
}

#[tokio::test]
async fn a_jobs_retry_policy_decides_what_is_retried_and_how_often() {
    let (_fake, env) = setup(FakeConfig {
        rate_429: 1.0,
        ..FakeConfig::default()
    })
    .await;
    input(&env, "batch_0.json", &documents("r", 2));
    let server = env.serve().await;
    for (retry_on, attempts) in [(json!(["THROTTLING"]), 3), (json!(["SERVER_ERROR"]), 1)] {
        let mut body = create_body(&format!("retry-{attempts}"), 10, 1, 600);
        body["jobConfiguration"]["retryPolicy"] = json!({
            "maxAttempts": 3, "initialBackoffMillis": 1, "maxBackoffMillis": 5, "retryOn": retry_on
        });
        let id = create(&server, &body).await;
        start(&server, &id).await;
        let job = wait_end(&server, &id).await;
        assert_eq!(job["status"], "COMPLETED", "{job}");
        assert_eq!(job["jobConfiguration"]["retryPolicy"]["retryOn"], retry_on);
        for item in &results(&env, &id)[0].1 {
            assert_eq!(item["attempts"], attempts, "{item}");
            assert_eq!(item["error"]["code"], "ThrottlingException", "{item}");
        }
    }
}

#[tokio::test]
async fn bad_requests_and_bad_items_are_named() {
    let (fake, env) = setup(FakeConfig::default()).await;
    let mut items = documents("x", 3);
    items[1] = json!({"id": "x1", "text": "no content"});
    items[2]["content"] = json!(7);
    input(&env, "batch_0.json", &items);
    let server = env.serve().await;

    let mut body = create_body("bad", 0, 1, 600);
    body["jobConfiguration"]["maxConcurrentBatchs"] = json!(2);
    let answer = post_refused(
        &server,
        "batch-inference-jobs",
        Some(&body),
        (400, "ValidationException"),
    )
    .await;
    let message = answer["message"].as_str().unwrap();
    assert!(
        message.contains("inputConfiguration.batchSize: must be an integer from 1 to 10000, got 0"),
        "{message}"
    );
    assert!(
        message.contains("jobConfiguration.maxConcurrentBatchs: unknown member"),
        "{message}"
    );
    let unknown = "batch-inference-jobs/abcdefabcdef/start";
    post_refused(&server, unknown, None, (404, "ResourceNotFoundException")).await;

    let id = create(&server, &create_body("bad-items", 10, 1, 600)).await;
    start(&server, &id).await;
    let job = wait_end(&server, &id).await;
    assert_eq!(job["status"], "FAILED", "{job}");
    let reason = job["statusReason"].as_str().unwrap();
    assert!(
        reason.contains("docs/batch_0.json:item 1: item: must be a Bedrock record"),
        "{reason}"
    );
    assert!(
        reason.contains("docs/batch_0.json:item 2: content: must be a string"),
        "{reason}"
    );
    assert_eq!(fake.stats().requests, 0, "no item runs when one is bad");

    // The Bedrock API does not see batch jobs, and this API does not see Bedrock's.
    let listed = server.get_json("model-invocation-jobs").await;
    assert_eq!(listed["invocationJobSummaries"], json!([]), "{listed}");
    let listed = server
        .get_json("batch-inference-jobs?statusEquals=FAILED")
        .await;
    let names: Vec<&str> = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bad-items"], "{listed}");
}

#[tokio::test]
async fn jsonl_items_of_every_kind_run_through_the_prompt_template() {
    let (_fake, env) = setup(FakeConfig::default()).await;
    let lines = [
        json!({"id": "doc", "content": "the text", "metadata": {"type": "memo"}}),
        json!({"recordId": "rec", "modelInput": {"messages": [{"role": "user", "content": [{"text": "from a record"}]}]}}),
        json!({"messages": [{"role": "user", "content": [{"text": "bare converse"}]}]}),
    ];
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::create_dir_all(env.bucket("input").join("docs")).unwrap();
    std::fs::write(env.bucket("input").join("docs/part.jsonl"), text).unwrap();
    let server = env.serve().await;
    let mut body = create_body("jsonl", 2, 2, 600);
    body["inputConfiguration"]["inputFormat"] = json!("JSONL");
    body["inputConfiguration"]["promptTemplate"] =
        json!("Summarise this {metadata.type}: {content}");
    body["outputConfiguration"]["outputFormat"] = json!("JSONL");
    let id = create(&server, &body).await;
    start(&server, &id).await;
    let job = wait_end(&server, &id).await;
    assert_eq!(job["status"], "COMPLETED", "{job}");
    let out = env
        .bucket("output")
        .join(format!("results/{id}/part.jsonl"));
    let results: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let outputs: Vec<&str> = results
        .iter()
        .map(|r| r["output"].as_str().unwrap())
        .collect();
    assert_eq!(
        outputs,
        [
            "echo: Summarise this memo: the text",
            "echo: from a record",
            "echo: bare converse"
        ]
    );
    assert_eq!(results[1]["id"], "rec");
    assert!(
        results[2]["id"].as_str().unwrap().len() > 4,
        "a generated id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_restart_keep_one_result_per_item_in_valid_json_arrays() {
    let (_fake, env) = setup(FakeConfig::latency(5, 20)).await;
    let first = documents("a", 700);
    let second = documents("b", 500);
    input(&env, "batch_0.json", &first);
    input(&env, "batch_1.json", &second);
    let seed = fastrand::u64(..);
    let mut rng = fastrand::Rng::with_seed(seed);
    eprintln!("seed {seed}");

    let mut server = env.serve().await;
    let id = create(&server, &create_body("crash", 4, 2, 600)).await;
    start(&server, &id).await;
    let mut kills = 0;
    while kills < 8 {
        tokio::time::sleep(Duration::from_millis(rng.u64(100..700))).await;
        let job = get(&server, &id).await;
        if job["status"] == "COMPLETED" {
            break;
        }
        assert_ne!(job["status"], "FAILED", "{job}");
        server.kill9().await;
        kills += 1;
        server = env.serve().await;
    }
    assert!(
        kills >= 4,
        "the job ended after {kills} kills (seed {seed}): make it longer"
    );
    let job = wait_end(&server, &id).await;
    assert_eq!(job["status"], "COMPLETED", "{job}");
    assert_eq!(job["processedItems"], 1200, "{job}");
    let files = results(&env, &id);
    assert_eq!(ids(&files[0].1), ids(&first), "seed {seed}");
    assert_eq!(ids(&files[1].1), ids(&second), "seed {seed}");
    assert!(
        files
            .iter()
            .all(|(_, items)| items.iter().all(|r| r["status"] == "SUCCESS"))
    );
}

#[tokio::test]
async fn a_batch_job_runs_on_the_embedded_model() {
    let models = batchd_embedded::default_cache_dir(|name| std::env::var_os(name));
    if let Err(e) = batchd_embedded::locate(&models) {
        batchd_testkit::skip_unless_ci(&e.to_string(), "CI must run scripts/models.sh first");
        return;
    }
    // No model in the config: the built-in id names the embedded chat model.
    let env = test_env(&Config::new().set("embedded", "context_per_sequence", 512));
    input(&env, "batch_0.json", &documents("e", 4));
    let server = env.serve().await;
    let mut body = create_body("embedded", 4, 1, 600);
    body["modelId"] = json!("batchd.smollm2-135m-instruct");
    body["inputConfiguration"]["promptTemplate"] = json!("Say hello to {id}.");
    let id = create(&server, &body).await;
    start(&server, &id).await;
    let job = wait_end(&server, &id).await;
    assert_eq!(job["status"], "COMPLETED", "{job}\n{}", env.serve_log());
    let items = &results(&env, &id)[0].1;
    assert_eq!(ids(items), ["e0", "e1", "e2", "e3"]);
    for item in items {
        assert_eq!(item["status"], "SUCCESS", "{item}");
        assert!(
            !item["output"].as_str().unwrap().trim().is_empty(),
            "{item}"
        );
        assert!(item["output_tokens"].as_u64().unwrap() > 0, "{item}");
    }
}
