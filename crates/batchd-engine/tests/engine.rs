//! The engine against the fake backend: stopping mid-job, attempt timeouts, Retry-After.
#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use batchd_backends::openai::{OpenAiBackend, OpenAiConfig};
use batchd_core::{Counters, InvocationType, JobId, JobStatus};
use batchd_engine::{Engine, EngineConfig, JobSpec, Progress, RetryPolicy};
use batchd_formats::converse::ConverseOptions;
use batchd_storage::{Storage, StorageConfig, StorageUri};
use batchd_store::{JobStore, NewJob};
use batchd_testkit::{FakeConfig, FakeServer};
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

fn write_records(path: &Path, n: usize) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let text: String = (0..n)
        .map(|i| {
            format!(
                "{{\"recordId\":\"r{i:04}\",\"modelInput\":{{\"messages\":[{{\"role\":\"user\",\"content\":[{{\"text\":\"hi {i}\"}}]}}]}}}}\n"
            )
        })
        .collect();
    std::fs::write(path, text).unwrap();
}

struct Harness {
    dir: tempfile::TempDir,
    engine: Engine,
    store: JobStore,
    backend: Arc<OpenAiBackend>,
    job_id: JobId,
}

impl Harness {
    async fn new(fake: &FakeServer, retry: RetryPolicy) -> Self {
        batchd_testkit::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(Storage::new(StorageConfig {
            data_dir: dir.path().into(),
            ..Default::default()
        }));
        let engine = Engine::new(
            storage,
            EngineConfig {
                retry,
                ..EngineConfig::default()
            },
        );
        let store = JobStore::in_memory().await.unwrap();
        let job_id = JobId::parse("testjob00001").unwrap();
        store
            .create(NewJob {
                id: job_id.clone(),
                arn: "arn".into(),
                name: "t".into(),
                model_id: "m".into(),
                role_arn: None,
                client_request_token: None,
                invocation_type: InvocationType::Converse,
                input_uri: "in".into(),
                output_uri: "out".into(),
                timeout_hours: None,
                job_expiration_ms: None,
                request_json: None,
            })
            .await
            .unwrap();
        let backend = Arc::new(
            OpenAiBackend::new(OpenAiConfig {
                base_url: fake.base_url(),
                model: "fake".into(),
                api_key: None,
                max_connections: 16,
            })
            .unwrap(),
        );
        Self {
            dir,
            engine,
            store,
            backend,
            job_id,
        }
    }

    fn spec(&self, concurrency: usize) -> JobSpec {
        JobSpec {
            job_id: self.job_id.clone(),
            inputs: vec![StorageUri::Local(self.dir.path().join("in"))],
            output: StorageUri::Local(self.dir.path().join("out")),
            invocation_type: InvocationType::Converse,
            converse: ConverseOptions::default(),
            concurrency,
        }
    }

    fn output(&self, name: &str) -> Vec<Value> {
        let path = self
            .dir
            .path()
            .join("out")
            .join(self.job_id.as_str())
            .join(name);
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn progress() -> (watch::Sender<Progress>, watch::Receiver<Progress>) {
    watch::channel(Progress {
        status: JobStatus::Submitted,
        counters: Counters::default(),
    })
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        attempt_timeout: Duration::from_secs(10),
        base_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        max_retry_after: Duration::from_secs(5),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_mid_job_keeps_an_ordered_prefix_and_writes_the_manifest() {
    let fake = FakeServer::start(FakeConfig {
        latency_ms: 10,
        ..Default::default()
    })
    .await
    .unwrap();
    let h = Harness::new(&fake, fast_retry()).await;
    write_records(&h.dir.path().join("in/a.jsonl"), 400);
    let (tx, mut rx) = progress();
    let cancel = CancellationToken::new();
    let stopper = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                if rx.borrow().counters.processed >= 20 {
                    cancel.cancel();
                    return;
                }
            }
        })
    };
    let outcome = h
        .engine
        .run_job(&h.spec(4), h.backend.clone(), &h.store, &tx, &cancel)
        .await
        .unwrap();
    stopper.await.unwrap();
    assert_eq!(outcome.status, JobStatus::Stopped);
    let c = outcome.counters;
    assert!(c.processed >= 20 && c.processed < 400, "{c:?}");
    let lines = h.output("a.jsonl.out");
    assert_eq!(
        lines.len() as u64,
        c.processed,
        "every finished record is written, nothing else"
    );
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(
            line["recordId"],
            format!("r{i:04}"),
            "an in-order prefix of the input"
        );
    }
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(h.dir.path().join("out/testjob00001/manifest.json.out")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["processedRecordCount"], c.processed);
    assert_eq!(manifest["totalRecordCount"], 400);
    let job = h.store.get(&h.job_id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Stopped);
    assert_eq!(job.counters, c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_that_times_out_is_retried_then_becomes_a_408_error_line() {
    let fake = FakeServer::start(FakeConfig {
        latency_ms: 2_000,
        ..Default::default()
    })
    .await
    .unwrap();
    let retry = RetryPolicy {
        attempt_timeout: Duration::from_millis(100),
        max_attempts: 2,
        ..fast_retry()
    };
    let h = Harness::new(&fake, retry).await;
    write_records(&h.dir.path().join("in/a.jsonl"), 2);
    let (tx, _rx) = progress();
    let outcome = h
        .engine
        .run_job(
            &h.spec(2),
            h.backend.clone(),
            &h.store,
            &tx,
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(outcome.status, JobStatus::Completed);
    assert_eq!(outcome.counters.error, 2);
    for line in h.output("a.jsonl.out") {
        assert_eq!(line["error"]["errorCode"], 408, "{line}");
        let message = line["error"]["errorMessage"].as_str().unwrap();
        assert!(message.contains("gave up after 2 attempts"), "{message}");
    }
    assert!(
        fake.stats().requests >= 4,
        "two attempts per record: {:?}",
        fake.stats()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_before_the_next_attempt() {
    let fake = FakeServer::start(FakeConfig {
        rate_429: 1.0,
        retry_after_secs: Some(1),
        ..Default::default()
    })
    .await
    .unwrap();
    let retry = RetryPolicy {
        max_attempts: 2,
        ..fast_retry()
    };
    let h = Harness::new(&fake, retry).await;
    write_records(&h.dir.path().join("in/a.jsonl"), 1);
    let (tx, _rx) = progress();
    let started = Instant::now();
    let outcome = h
        .engine
        .run_job(
            &h.spec(1),
            h.backend.clone(),
            &h.store,
            &tx,
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited for Retry-After: {:?}",
        started.elapsed()
    );
    assert_eq!(outcome.counters.error, 1);
    let line = &h.output("a.jsonl.out")[0];
    assert_eq!(line["error"]["errorCode"], 429, "{line}");
    assert_eq!(fake.stats().status_429, 2);
}
