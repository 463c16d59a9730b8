//! Crash and shutdown tests of `batchd serve`: SIGKILL at random points during a job, then a
//! restart, many times over; SIGTERM mid-job. Each input record must end in the output
//! exactly once, in input order, with an exact manifest.

use std::time::{Duration, Instant};

use batchd_testkit::harness::{
    Config, Model, Served, TestEnv, assert_counts, converse_record, manifest, read_jsonl,
    record_ids, write_jsonl,
};
use batchd_testkit::{FakeConfig, FakeServer};
use serde_json::{Value, json};

use crate::{MODEL, test_env};

const BUCKET: &str = "crash";

/// A data dir and config for `batchd serve` with `MODEL` on the OpenAI-compatible backend at
/// `base_url`; `engine` holds the test's own `[engine]` knobs.
fn env_for(base_url: &str, concurrency: i64, engine: Config) -> TestEnv {
    let config = engine.backoff_ms(5, 50).model(
        Model::openai(MODEL, base_url)
            .set("model", "fake")
            .max_concurrency(concurrency),
    );
    test_env(&config).env("BATCHD_LOG", "batchd_engine=info")
}

/// Writes `files` (name, record count) of Converse records under the bucket's `in/`; returns
/// every recordId per file.
fn write_inputs(env: &TestEnv, files: &[(&str, usize)]) -> Vec<(String, Vec<String>)> {
    write_inputs_with(env, files, |id| {
        converse_record(id, &format!("record {id}"))
    })
}

/// [`write_inputs`] with the record of each id from `record`.
fn write_inputs_with(
    env: &TestEnv,
    files: &[(&str, usize)],
    record: impl Fn(&str) -> Value,
) -> Vec<(String, Vec<String>)> {
    let dir = env.bucket(BUCKET).join("in");
    let mut all = Vec::new();
    for (name, n) in files {
        let ids: Vec<String> = (0..*n).map(|i| format!("{name}-{i:05}")).collect();
        write_jsonl(&dir.join(name), ids.iter().map(|id| record(id)));
        all.push((name.to_string(), ids));
    }
    all
}

/// Checks the finished job's output: every recordId once, in order, and the manifest.
fn check_output(env: &TestEnv, job_id: &str, inputs: &[(String, Vec<String>)]) {
    let out = env.bucket(BUCKET).join("out").join(job_id);
    let total: usize = inputs.iter().map(|(_, ids)| ids.len()).sum();
    for (name, ids) in inputs {
        let lines = read_jsonl(&out.join(format!("{name}.out")));
        let got = record_ids(&lines);
        assert_eq!(got.len(), ids.len(), "{name}: line count");
        assert!(
            got == *ids,
            "{name}: every recordId exactly once, in input order"
        );
        for line in &lines {
            assert!(line.get("modelOutput").is_some(), "{line}");
        }
    }
    assert_counts(&manifest(&out), total, 0);
    // No part objects or stray files left next to the outputs.
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut expected: Vec<String> = inputs.iter().map(|(n, _)| format!("{n}.out")).collect();
    expected.push("manifest.json.out".into());
    expected.sort();
    assert_eq!(names, expected);
}

/// Writes `files` (see [`write_inputs`]), starts `batchd serve` and creates the job `name` over
/// them; returns the server, the job id and the inputs' recordIds.
async fn serve_job(
    env: &TestEnv,
    files: &[(&str, usize)],
    name: &str,
) -> (Served, String, Vec<(String, Vec<String>)>) {
    let inputs = write_inputs(env, files);
    let server = env.serve().await;
    let job_id = create_job(&server, name).await;
    (server, job_id, inputs)
}

/// A Converse CreateModelInvocationJob over the bucket's `in/` and `out/`; returns the job id.
async fn create_job(server: &Served, name: &str) -> String {
    create_job_of(server, name, "Converse").await
}

/// [`create_job`] of the given `modelInvocationType`.
async fn create_job_of(server: &Served, name: &str, invocation_type: &str) -> String {
    let body = json!({
        "jobName": name,
        "modelId": MODEL,
        "roleArn": "arn:aws:iam::123456789012:role/batchd",
        "inputDataConfig": {"s3InputDataConfig": {"s3Uri": format!("s3://{BUCKET}/in/")}},
        "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": format!("s3://{BUCKET}/out/")}},
        "modelInvocationType": invocation_type,
    });
    let answer = server.post_json("model-invocation-job", &body).await;
    let arn = answer["jobArn"]
        .as_str()
        .unwrap_or_else(|| panic!("{answer}"));
    arn.rsplit('/').next().unwrap().to_owned()
}

async fn job(server: &Served, id: &str) -> Value {
    server.get_json(&format!("model-invocation-job/{id}")).await
}

/// Polls the job until it has `status`; fails at once if it ends otherwise.
async fn wait_for(server: &Served, id: &str, status: &str, limit: Duration) -> Value {
    let started = Instant::now();
    loop {
        let job = job(server, id).await;
        if job["status"] == status {
            return job;
        }
        assert!(
            !["Failed", "Stopped", "Expired"].contains(&job["status"].as_str().unwrap_or("")),
            "{job}"
        );
        assert!(
            started.elapsed() < limit,
            "job not {status} after {limit:?}: {job}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERMs `server` and asserts that it exits 0 within `within` (waiting `limit` at most).
async fn sigterm(env: &TestEnv, server: &mut Served, limit: Duration, within: Duration) {
    let stopping = Instant::now();
    server.signal("-TERM");
    let status = server.wait(limit).await;
    assert_eq!(status.code(), Some(0), "{}", env.serve_log());
    let took = stopping.elapsed();
    assert!(took < within, "{took:?}");
}

/// SIGKILLs `server` and starts it again, `pause` milliseconds apart (random), until the job
/// `id` is `Completed` or `most` kills are done; returns the server running now and the job as
/// seen before each kill (it never shows `Failed`).
async fn kill_at_random(
    env: &TestEnv,
    mut server: Served,
    id: &str,
    rng: &mut fastrand::Rng,
    most: usize,
    pause: std::ops::Range<u64>,
) -> (Served, Vec<Value>) {
    let mut seen = Vec::new();
    while seen.len() < most {
        tokio::time::sleep(Duration::from_millis(rng.u64(pause.clone()))).await;
        let job = job(&server, id).await;
        if job["status"] == "Completed" {
            break;
        }
        assert_ne!(job["status"], "Failed", "{job}");
        seen.push(job);
        server.kill9().await;
        server = env.serve().await;
    }
    (server, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_then_restart_loses_and_repeats_nothing() {
    let fake = FakeServer::start(FakeConfig::latency(5, 30)).await.unwrap();
    let env = env_for(&fake.base_url(), 4, Config::new());
    let seed = fastrand::u64(..);
    let mut rng = fastrand::Rng::with_seed(seed);
    eprintln!("seed {seed}");

    // Two files: kills also land between files and while one file is being finished.
    let files = [("a.jsonl", 1300), ("b.jsonl", 1700)];
    let (server, job_id, inputs) = serve_job(&env, &files, "crash-test").await;
    // Anywhere from validation to well past a checkpoint (local commits are 100 ms apart).
    let (server, seen) = kill_at_random(&env, server, &job_id, &mut rng, 12, 50..1000).await;
    let kills = seen.len();
    let processed_at_kill: Vec<u64> = seen
        .iter()
        .map(|job| job["processedRecordCount"].as_u64().unwrap_or(0))
        .collect();
    eprintln!("{kills} kills; processed (last checkpoint) at each: {processed_at_kill:?}");
    assert!(
        kills >= 10,
        "the job ended before 10 kills (seed {seed}): make it longer"
    );
    let job = wait_for(&server, &job_id, "Completed", Duration::from_secs(60)).await;
    assert_eq!(job["processedRecordCount"], 3000, "{job}");
    check_output(&env, &job_id, &inputs);
    // Killed work is done again: at least every record once.
    assert!(fake.stats().ok >= 3000);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_job_exits_0_and_the_restart_completes_it_exactly_once() {
    let fake = FakeServer::start(FakeConfig::latency(20, 20))
        .await
        .unwrap();
    let env = env_for(
        &fake.base_url(),
        4,
        Config::new().engine("shutdown_grace_seconds", 10),
    );
    let (mut server, job_id, inputs) =
        serve_job(&env, &[("only.jsonl", 400)], "sigterm-test").await;
    let started = Instant::now();
    loop {
        let job = job(&server, &job_id).await;
        if job["processedRecordCount"].as_u64().unwrap_or(0) >= 40 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Exits within the grace period.
    sigterm(
        &env,
        &mut server,
        Duration::from_secs(20),
        Duration::from_secs(10),
    )
    .await;

    let server = env.serve().await;
    let job = job(&server, &job_id).await;
    let resumed_at = job["processedRecordCount"].as_u64().unwrap();
    assert!((40..400).contains(&resumed_at), "{job}");
    wait_for(&server, &job_id, "Completed", Duration::from_secs(60)).await;
    check_output(&env, &job_id, &inputs);
    // Records in flight at SIGTERM finished and were checkpointed: none ran twice.
    assert_eq!(fake.stats().ok, 400, "{:?}", fake.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grace_period_bounds_a_shutdown_and_abandoned_records_run_again() {
    // Answers take 20 s; the grace period is 0.5 s.
    let fake = FakeServer::start(FakeConfig::latency(20_000, 0))
        .await
        .unwrap();
    let env = env_for(
        &fake.base_url(),
        4,
        Config::new().engine("shutdown_grace_seconds", 0.5),
    );
    let (mut server, job_id, inputs) = serve_job(&env, &[("slow.jsonl", 20)], "grace-test").await;
    wait_for(&server, &job_id, "InProgress", Duration::from_secs(30)).await;
    while fake.stats().requests < 4 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The grace period bounds it.
    sigterm(
        &env,
        &mut server,
        Duration::from_secs(15),
        Duration::from_secs(8),
    )
    .await;

    fake.set_config(FakeConfig::default());
    let server = env.serve().await;
    let job = wait_for(&server, &job_id, "Completed", Duration::from_secs(60)).await;
    assert_eq!(job["processedRecordCount"], 20, "{job}");
    check_output(&env, &job_id, &inputs);
}

/// A port nothing listens on (bound, then released).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_wait_while_the_backend_is_down_and_run_when_it_is_back() {
    let port = free_port();
    let env = env_for(
        &format!("http://127.0.0.1:{port}/v1"),
        4,
        Config::new().engine("backend_down_seconds", 20),
    );
    let (server, job_id, inputs) = serve_job(&env, &[("down.jsonl", 30)], "down-then-up").await;
    wait_for(&server, &job_id, "InProgress", Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let job = job(&server, &job_id).await;
    assert_eq!(
        job["processedRecordCount"], 0,
        "records wait, not fail: {job}"
    );
    let fake = FakeServer::bind(
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        FakeConfig::default(),
    )
    .await
    .unwrap();
    let job = wait_for(&server, &job_id, "Completed", Duration::from_secs(30)).await;
    assert_eq!(job["errorRecordCount"], 0, "{job}");
    check_output(&env, &job_id, &inputs);
    assert_eq!(fake.stats().ok, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_down_past_the_limit_fails_records_as_unreachable() {
    let port = free_port();
    let env = env_for(
        &format!("http://127.0.0.1:{port}/v1"),
        4,
        Config::new()
            .engine("backend_down_seconds", 1)
            .engine("max_attempts", 2),
    );
    let (server, job_id, _) = serve_job(&env, &[("never.jsonl", 10)], "never-up").await;
    let started = Instant::now();
    let job = wait_for(&server, &job_id, "Completed", Duration::from_secs(30)).await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "records waited first"
    );
    assert_eq!(job["errorRecordCount"], 10, "{job}");
    let message = job["message"].as_str().unwrap();
    assert!(message.contains("backend was unreachable"), "{message}");
    let lines = read_jsonl(
        &env.bucket(BUCKET)
            .join("out")
            .join(&job_id)
            .join("never.jsonl.out"),
    );
    assert_eq!(lines.len(), 10);
    for line in lines {
        assert_eq!(line["error"]["errorCode"], 503, "{line}");
        let text = line["error"]["errorMessage"].as_str().unwrap();
        assert!(text.contains("unreachable"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_an_invoke_model_job_keeps_its_side_file_of_times_aligned() {
    let fake = FakeServer::start(FakeConfig::latency(5, 30)).await.unwrap();
    let env = env_for(&fake.base_url(), 4, Config::new());
    let inputs = write_inputs_with(&env, &[("a.jsonl", 900), ("b.jsonl", 700)], |id| {
        json!({"recordId": id, "modelInput": {"anthropic_version": "bedrock-2023-05-31",
            "max_tokens": 8, "messages": [{"role": "user", "content": format!("record {id}")}]}})
    });
    let seed = fastrand::u64(..);
    let mut rng = fastrand::Rng::with_seed(seed);
    let server = env.serve().await;
    let job_id = create_job_of(&server, "invoke-crash", "InvokeModel").await;
    let (server, seen) = kill_at_random(&env, server, &job_id, &mut rng, 8, 50..800).await;
    let kills = seen.len();
    assert!(
        kills >= 4,
        "the job ended after {kills} kills (seed {seed})"
    );
    wait_for(&server, &job_id, "Completed", Duration::from_secs(60)).await;
    let out = env.bucket(BUCKET).join("out");
    for (name, ids) in &inputs {
        let lines = read_jsonl(&out.join(&job_id).join(format!("{name}.out")));
        assert!(
            record_ids(&lines) == *ids,
            "{name}: each record once, in order (seed {seed})"
        );
        let times = read_jsonl(&out.join(format!("{job_id}.timings/{name}.jsonl")));
        assert_eq!(
            times.len(),
            ids.len(),
            "{name}: one time per output line (seed {seed})"
        );
        assert!(
            times.iter().all(|t| t["latencyMs"].is_u64()),
            "{name} (seed {seed})"
        );
    }
    drop(server);
}
