//! Crash and shutdown tests of `batchd serve`: SIGKILL at random points during a job, then a
//! restart, many times over; SIGTERM mid-job. Each input record must end in the output
//! exactly once, in input order, with an exact manifest.
#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use batchd_testkit::{FakeConfig, FakeServer};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BATCHD: &str = env!("CARGO_BIN_EXE_batchd");
const MODEL: &str = "anthropic.claude-3-haiku-20240307-v1:0";
const BUCKET: &str = "crash";

/// A data dir and config for `batchd serve` against a fake backend.
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new(fake: &FakeServer, concurrency: usize, engine_extra: &str) -> Self {
        Self::with_backend(&fake.base_url(), concurrency, engine_extra)
    }

    fn with_backend(base_url: &str, concurrency: usize, engine_extra: &str) -> Self {
        batchd_testkit::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "[engine]\nbackoff_base_ms = 5\nbackoff_max_ms = 50\n{engine_extra}\n\n\
             [[models]]\nid = \"{MODEL}\"\nbackend = \"openai\"\nbase_url = \"{base_url}\"\n\
             model = \"fake\"\nmax_concurrency = {concurrency}\n"
        );
        std::fs::write(dir.path().join("batchd.toml"), config).unwrap();
        Self { dir }
    }

    fn bucket(&self) -> PathBuf {
        self.dir.path().join("data/buckets").join(BUCKET)
    }

    /// Writes `files` (name, record count) under `in/`; returns every recordId per file.
    fn write_inputs(&self, files: &[(&str, usize)]) -> Vec<(String, Vec<String>)> {
        let dir = self.bucket().join("in");
        std::fs::create_dir_all(&dir).unwrap();
        let mut all = Vec::new();
        for (name, n) in files {
            let mut text = String::new();
            let mut ids = Vec::new();
            for i in 0..*n {
                let id = format!("{name}-{i:05}");
                let record = json!({
                    "recordId": id,
                    "modelInput": {"messages": [{"role": "user", "content": [{"text": format!("record {id}")}]}]},
                });
                text.push_str(&record.to_string());
                text.push('\n');
                ids.push(id);
            }
            std::fs::write(dir.join(name), text).unwrap();
            all.push((name.to_string(), ids));
        }
        all
    }

    async fn start(&self) -> Server {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("serve.log"))
            .unwrap();
        let mut child = Command::new(BATCHD)
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(self.dir.path().join("batchd.toml"))
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .env("BATCHD_LOG", "batchd_engine=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("batchd serve prints its address")
            .unwrap()
            .unwrap_or_else(|| panic!("serve exited early:\n{}", self.log()));
        let url = first.strip_prefix("listening on ").unwrap().to_owned();
        Server {
            child,
            url,
            http: reqwest::Client::new(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    /// Checks the finished job's output: every recordId once, in order, and the manifest.
    fn check_output(&self, job_id: &str, inputs: &[(String, Vec<String>)]) {
        let out = self.bucket().join("out").join(job_id);
        let total: usize = inputs.iter().map(|(_, ids)| ids.len()).sum();
        for (name, ids) in inputs {
            let lines = read_jsonl(&out.join(format!("{name}.out")));
            let got: Vec<&str> = lines
                .iter()
                .map(|l| l["recordId"].as_str().unwrap())
                .collect();
            assert_eq!(got.len(), ids.len(), "{name}: line count");
            assert!(
                got == *ids,
                "{name}: every recordId exactly once, in input order"
            );
            for line in &lines {
                assert!(line.get("modelOutput").is_some(), "{line}");
            }
        }
        let manifest: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json.out")).unwrap())
                .unwrap();
        assert_eq!(manifest["totalRecordCount"], total, "{manifest}");
        assert_eq!(manifest["processedRecordCount"], total, "{manifest}");
        assert_eq!(manifest["successRecordCount"], total, "{manifest}");
        assert_eq!(manifest["errorRecordCount"], 0, "{manifest}");
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
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

struct Server {
    child: Child,
    url: String,
    http: reqwest::Client,
}

impl Server {
    async fn create_job(&self, name: &str) -> String {
        let body = json!({
            "jobName": name,
            "modelId": MODEL,
            "roleArn": "arn:aws:iam::123456789012:role/batchd",
            "inputDataConfig": {"s3InputDataConfig": {"s3Uri": format!("s3://{BUCKET}/in/")}},
            "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": format!("s3://{BUCKET}/out/")}},
            "modelInvocationType": "Converse",
        });
        let answer: Value = self
            .http
            .post(format!("{}/model-invocation-job", self.url))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let arn = answer["jobArn"]
            .as_str()
            .unwrap_or_else(|| panic!("{answer}"));
        arn.rsplit('/').next().unwrap().to_owned()
    }

    async fn job(&self, id: &str) -> Value {
        self.http
            .get(format!("{}/model-invocation-job/{id}", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn wait_for(&self, id: &str, status: &str, limit: Duration) -> Value {
        let started = Instant::now();
        loop {
            let job = self.job(id).await;
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

    fn signal(&self, signal: &str) {
        let pid = self.child.id().unwrap().to_string();
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    async fn kill9(mut self) {
        self.signal("-KILL");
        let _ = self.child.wait().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_then_restart_loses_and_repeats_nothing() {
    let fake = FakeServer::start(FakeConfig {
        latency_ms: 5,
        latency_jitter_ms: 30,
        ..Default::default()
    })
    .await
    .unwrap();
    let env = Env::new(&fake, 4, "");
    // Two files: kills also land between files and while one file is being finished.
    let inputs = env.write_inputs(&[("a.jsonl", 1300), ("b.jsonl", 1700)]);
    let seed = fastrand::u64(..);
    let mut rng = fastrand::Rng::with_seed(seed);
    eprintln!("seed {seed}");

    let mut server = env.start().await;
    let job_id = server.create_job("crash-test").await;
    let mut kills = 0;
    let mut processed_at_kill = Vec::new();
    while kills < 12 {
        // Anywhere from validation to well past a checkpoint (local commits are 100 ms apart).
        tokio::time::sleep(Duration::from_millis(rng.u64(50..1000))).await;
        let job = server.job(&job_id).await;
        if job["status"] == "Completed" {
            break;
        }
        assert_ne!(job["status"], "Failed", "{job}");
        processed_at_kill.push(job["processedRecordCount"].as_u64().unwrap_or(0));
        server.kill9().await;
        kills += 1;
        server = env.start().await;
    }
    eprintln!("{kills} kills; processed (last checkpoint) at each: {processed_at_kill:?}");
    assert!(
        kills >= 10,
        "the job ended before 10 kills (seed {seed}): make it longer"
    );
    let job = server
        .wait_for(&job_id, "Completed", Duration::from_secs(60))
        .await;
    assert_eq!(job["processedRecordCount"], 3000, "{job}");
    env.check_output(&job_id, &inputs);
    // Killed work is done again: at least every record once.
    assert!(fake.stats().ok >= 3000);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_job_exits_0_and_the_restart_completes_it_exactly_once() {
    let fake = FakeServer::start(FakeConfig {
        latency_ms: 20,
        latency_jitter_ms: 20,
        ..Default::default()
    })
    .await
    .unwrap();
    let env = Env::new(&fake, 4, "shutdown_grace_seconds = 10");
    let inputs = env.write_inputs(&[("only.jsonl", 400)]);
    let mut server = env.start().await;
    let job_id = server.create_job("sigterm-test").await;
    let started = Instant::now();
    loop {
        let job = server.job(&job_id).await;
        if job["processedRecordCount"].as_u64().unwrap_or(0) >= 40 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopping = Instant::now();
    server.signal("-TERM");
    let status = tokio::time::timeout(Duration::from_secs(20), server.child.wait())
        .await
        .expect("exits within the grace period")
        .unwrap();
    assert_eq!(status.code(), Some(0), "{}", env.log());
    assert!(stopping.elapsed() < Duration::from_secs(10));

    let server = env.start().await;
    let job = server.job(&job_id).await;
    let resumed_at = job["processedRecordCount"].as_u64().unwrap();
    assert!((40..400).contains(&resumed_at), "{job}");
    server
        .wait_for(&job_id, "Completed", Duration::from_secs(60))
        .await;
    env.check_output(&job_id, &inputs);
    // Records in flight at SIGTERM finished and were checkpointed: none ran twice.
    assert_eq!(fake.stats().ok, 400, "{:?}", fake.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grace_period_bounds_a_shutdown_and_abandoned_records_run_again() {
    // Answers take 20 s; the grace period is 0.5 s.
    let fake = FakeServer::start(FakeConfig {
        latency_ms: 20_000,
        ..Default::default()
    })
    .await
    .unwrap();
    let env = Env::new(&fake, 4, "shutdown_grace_seconds = 0.5");
    let inputs = env.write_inputs(&[("slow.jsonl", 20)]);
    let mut server = env.start().await;
    let job_id = server.create_job("grace-test").await;
    server
        .wait_for(&job_id, "InProgress", Duration::from_secs(30))
        .await;
    while fake.stats().requests < 4 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopping = Instant::now();
    server.signal("-TERM");
    let status = tokio::time::timeout(Duration::from_secs(15), server.child.wait())
        .await
        .expect("the grace period bounds the shutdown")
        .unwrap();
    assert_eq!(status.code(), Some(0), "{}", env.log());
    assert!(
        stopping.elapsed() < Duration::from_secs(8),
        "{:?}",
        stopping.elapsed()
    );

    fake.set_config(FakeConfig::default());
    let server = env.start().await;
    let job = server
        .wait_for(&job_id, "Completed", Duration::from_secs(60))
        .await;
    assert_eq!(job["processedRecordCount"], 20, "{job}");
    env.check_output(&job_id, &inputs);
}

/// A port nothing listens on (bound, then released).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_wait_while_the_backend_is_down_and_run_when_it_is_back() {
    let port = free_port();
    let env = Env::with_backend(
        &format!("http://127.0.0.1:{port}/v1"),
        4,
        "backend_down_seconds = 20",
    );
    let inputs = env.write_inputs(&[("down.jsonl", 30)]);
    let server = env.start().await;
    let job_id = server.create_job("down-then-up").await;
    server
        .wait_for(&job_id, "InProgress", Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let job = server.job(&job_id).await;
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
    let job = server
        .wait_for(&job_id, "Completed", Duration::from_secs(30))
        .await;
    assert_eq!(job["errorRecordCount"], 0, "{job}");
    env.check_output(&job_id, &inputs);
    assert_eq!(fake.stats().ok, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_down_past_the_limit_fails_records_as_unreachable() {
    let port = free_port();
    let env = Env::with_backend(
        &format!("http://127.0.0.1:{port}/v1"),
        4,
        "backend_down_seconds = 1\nmax_attempts = 2",
    );
    env.write_inputs(&[("never.jsonl", 10)]);
    let server = env.start().await;
    let job_id = server.create_job("never-up").await;
    let started = Instant::now();
    let job = server
        .wait_for(&job_id, "Completed", Duration::from_secs(30))
        .await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "records waited first"
    );
    assert_eq!(job["errorRecordCount"], 10, "{job}");
    let message = job["message"].as_str().unwrap();
    assert!(message.contains("backend was unreachable"), "{message}");
    let lines = read_jsonl(
        &env.bucket()
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
