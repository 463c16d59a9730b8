//! The engine against the fake backend: stopping mid-job, attempt timeouts, Retry-After.
#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use batchd_backends::openai::{OpenAiBackend, OpenAiConfig};
use batchd_core::{Counters, InvocationType, JobId, JobStatus};
use batchd_engine::analysis::analyze_output;
use batchd_engine::{
    Engine, EngineConfig, EngineError, JobContext, JobOutcome, JobSpec, Progress, RecordOptions,
    RetryPolicy, StopReason, StopSignal,
};

use batchd_core::{JobOrigin, JobRequest, NewJob};
use batchd_formats::analysis::AnalysisContext;
use batchd_storage::{Storage, StorageConfig, StorageUri};
use batchd_store::{JobStore, SqliteStore};
use batchd_testkit::harness::{manifest, read_jsonl, record_ids};
use batchd_testkit::{FakeConfig, FakeServer};
use serde_json::Value;
use support::{create, write_prefixed, write_records};
use tokio::sync::watch;

struct Harness {
    dir: tempfile::TempDir,
    engine: Engine,
    store: SqliteStore,
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
        let store = SqliteStore::in_memory().await.unwrap();
        let job_id = JobId::parse("testjob00001").unwrap();
        store
            .create(NewJob {
                id: job_id.clone(),
                arn: "arn".into(),
                request: JobRequest {
                    model_id: "m".into(),
                    origin: JobOrigin::Run,
                    inputs: vec!["in".into()],
                    output: "out".into(),
                    ..create("t", None)
                },
                job_expiration_ms: None,
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
            model_id: "test-model".into(),
            inputs: vec![StorageUri::Local(self.dir.path().join("in"))],
            output: StorageUri::Local(self.dir.path().join("out")),
            invocation_type: InvocationType::Converse,
            records: RecordOptions::default(),
            concurrency,
            batch: None,
            openai: None,
            note: None,
        }
    }

    /// Validates the job and asserts that validation passed.
    async fn validate_ok(&self, spec: &JobSpec, tx: &watch::Sender<Progress>) {
        let failed = self
            .engine
            .validate_job(spec, &self.store, tx)
            .await
            .unwrap();
        assert!(failed.is_none(), "{:?}", failed.map(|o| o.message));
    }

    /// Runs the whole job (validation, then execution) on the fake backend, `concurrency`
    /// records at a time.
    async fn run(
        &self,
        concurrency: usize,
        tx: &watch::Sender<Progress>,
        stop: &StopSignal,
    ) -> JobOutcome {
        let spec = self.spec(concurrency);
        self.engine
            .run_job(self.context(&spec, tx, stop), self.backend.clone())
            .await
            .unwrap()
    }

    /// Runs the job's execution phase on the fake backend.
    async fn execute(
        &self,
        spec: &JobSpec,
        tx: &watch::Sender<Progress>,
        stop: &StopSignal,
    ) -> Result<JobOutcome, EngineError> {
        self.engine
            .execute_job(self.context(spec, tx, stop), self.backend.clone())
            .await
    }

    fn context<'a>(
        &'a self,
        spec: &'a JobSpec,
        progress: &'a watch::Sender<Progress>,
        stop: &'a StopSignal,
    ) -> JobContext<'a> {
        JobContext {
            spec,
            store: &self.store,
            progress,
            stop,
        }
    }

    /// The job's output folder.
    fn out(&self) -> PathBuf {
        self.dir.path().join("out").join(self.job_id.as_str())
    }

    /// Validates the job, then executes it (4 records at a time) until a shutdown once
    /// `processed` records are counted, which leaves it `InProgress` to resume. Returns its spec.
    async fn execute_until_shutdown(&self, processed: u64) -> JobSpec {
        let spec = self.spec(4);
        let (tx, rx) = progress();
        self.validate_ok(&spec, &tx).await;
        let stop = StopSignal::new();
        let stopper = stop_at(stop.clone(), rx, processed, StopReason::Shutdown);
        let first = self.execute(&spec, &tx, &stop).await.unwrap();
        stopper.await.unwrap();
        assert_eq!(
            first.status,
            JobStatus::InProgress,
            "a shutdown leaves the job running"
        );
        spec
    }

    fn output(&self, name: &str) -> Vec<Value> {
        read_jsonl(&self.out().join(name))
    }

    fn manifest(&self) -> Value {
        manifest(&self.out())
    }
}

fn progress() -> (watch::Sender<Progress>, watch::Receiver<Progress>) {
    watch::channel(Progress::new(JobStatus::Submitted, Counters::default()))
}

/// Stops `stop` for `reason` once `processed` records are counted.
fn stop_at(
    stop: StopSignal,
    mut rx: watch::Receiver<Progress>,
    processed: u64,
    reason: StopReason,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            if rx.borrow().counters.processed >= processed {
                stop.stop(reason);
                return;
            }
        }
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
    let fake = FakeServer::start(FakeConfig::latency(10, 0)).await.unwrap();
    let h = Harness::new(&fake, fast_retry()).await;
    write_records(&h.dir.path().join("in/a.jsonl"), 400);
    let (tx, rx) = progress();
    let cancel = StopSignal::new();
    let stopper = stop_at(cancel.clone(), rx, 20, StopReason::User);
    let outcome = h.run(4, &tx, &cancel).await;
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
    let manifest = h.manifest();
    assert_eq!(manifest["processedRecordCount"], c.processed);
    assert_eq!(manifest["totalRecordCount"], 400);
    let job = h.store.get(&h.job_id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Stopped);
    assert_eq!(job.counters, c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_that_times_out_is_retried_then_becomes_a_408_error_line() {
    let fake = FakeServer::start(FakeConfig::latency(2_000, 0))
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
    let outcome = h.run(2, &tx, &StopSignal::new()).await;
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
    let outcome = h.run(1, &tx, &StopSignal::new()).await;
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

/// `<out>/<jobId>.analysis.json` as written at the end of the job, without the fields that
/// depend on when it was written.
fn written_analysis(h: &Harness) -> Value {
    let path = h.dir.path().join(format!("out/{}.analysis.json", h.job_id));
    let mut analysis: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    for timed in ["wall_time_seconds", "records_per_second"] {
        analysis.as_object_mut().unwrap().remove(timed);
    }
    analysis
}

/// The job's output folder analysed by reading it back, as `batchd results` does.
async fn read_back_analysis(h: &Harness, written: &Value) -> Value {
    let context = AnalysisContext {
        job_id: Some(h.job_id.to_string()),
        model_id: written["model_id"].as_str().map(str::to_owned),
        output_location: written["output_location"].as_str().unwrap().to_owned(),
        wall_time_seconds: None,
        prices: None,
    };
    let dir = StorageUri::Local(h.out());
    let analysis = analyze_output(h.engine.storage(), &dir, 1 << 20, context)
        .await
        .unwrap();
    // Through text as the written one is: serde_json's parser may round a float's last bit,
    // so values are compared after the same write and parse.
    let text = serde_json::to_string(&analysis).unwrap();
    let mut analysis: Value = serde_json::from_str(&text).unwrap();
    for timed in ["wall_time_seconds", "records_per_second"] {
        analysis.as_object_mut().unwrap().remove(timed);
    }
    analysis
}

/// A job run from start to end tallies its analysis as it writes; the result is what reading
/// the folder back gives (errors by code and message, times, tokens, files).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_analysis_tallied_during_a_run_equals_the_folder_read_back() {
    let fake = FakeServer::start(FakeConfig {
        latency_jitter_ms: 4,
        rate_400: 0.1,
        fail_when_prompt_contains: Some("FAIL-ME".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let h = Harness::new(&fake, fast_retry()).await;
    let lines = |prefix: &str, n: usize| {
        (0..n)
            .map(|i| {
                let text = if i % 9 == 4 { "FAIL-ME" } else { "hello" };
                format!("{{\"recordId\":\"{prefix}{i:04}\",\"modelInput\":{{\"messages\":[{{\"role\":\"user\",\"content\":[{{\"text\":\"{text} {i}\"}}]}}]}}}}\n")
            })
            .collect::<String>()
    };
    std::fs::create_dir_all(h.dir.path().join("in/sub")).unwrap();
    std::fs::write(h.dir.path().join("in/a.jsonl"), lines("a", 150)).unwrap();
    std::fs::write(h.dir.path().join("in/b.jsonl"), "").unwrap();
    std::fs::write(h.dir.path().join("in/sub/c.jsonl"), lines("c", 40)).unwrap();
    let (tx, _rx) = progress();
    let outcome = h.run(8, &tx, &StopSignal::new()).await;
    assert_eq!(outcome.status, JobStatus::Completed);
    let written = written_analysis(&h);
    assert_eq!(written["total_processed"], 190);
    assert_eq!(written["result_files"], 3);
    assert!(written["error_count"].as_u64().unwrap() >= 21, "{written}");
    assert!(
        written["processing_time"]["p50"].as_f64().is_some(),
        "{written}"
    );
    assert_eq!(written, read_back_analysis(&h, &written).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_interrupted_by_shutdown_resumes_exactly_once_from_its_checkpoint() {
    let fake = FakeServer::start(FakeConfig::latency(5, 10)).await.unwrap();
    let h = Harness::new(&fake, fast_retry()).await;
    write_records(&h.dir.path().join("in/a.jsonl"), 150);
    write_records(&h.dir.path().join("in/b.jsonl"), 0);
    std::fs::write(
        h.dir.path().join("in/c.jsonl"),
        (0..120)
            .map(|i| format!("{{\"recordId\":\"c{i:04}\",\"modelInput\":{{\"messages\":[{{\"role\":\"user\",\"content\":[{{\"text\":\"c {i}\"}}]}}]}}}}\n"))
            .collect::<String>(),
    )
    .unwrap();
    // First run: shut down once 60 records are written.
    let spec = h.execute_until_shutdown(60).await;
    let job = h.store.get(&h.job_id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::InProgress);
    assert!(job.checkpoint.counters.processed >= 60);
    assert!(
        !h.dir
            .path()
            .join("out/testjob00001/manifest.json.out")
            .exists()
    );

    // A crash would leave bytes after the checkpoint: they must not survive the resume.
    let a_out = h.dir.path().join("out/testjob00001/a.jsonl.out");
    let mut text = std::fs::read_to_string(&a_out).unwrap();
    text.push_str("{\"recordId\":\"garbage\"}\n");
    std::fs::write(&a_out, text).unwrap();

    let (tx2, _rx2) = progress();
    let second = h.execute(&spec, &tx2, &StopSignal::new()).await.unwrap();
    assert_eq!(second.status, JobStatus::Completed);
    let a = h.output("a.jsonl.out");
    let want: Vec<String> = (0..150).map(|i| format!("r{i:04}")).collect();
    assert_eq!(record_ids(&a), want, "every record exactly once, in order");
    assert!(h.output("b.jsonl.out").is_empty());
    let c = h.output("c.jsonl.out");
    assert_eq!(c.len(), 120);
    assert_eq!(c[119]["recordId"], "c0119");
    assert_eq!(second.counters.processed, 270);
    assert_eq!(second.counters.success, 270);
    let manifest = h.manifest();
    assert_eq!(manifest["processedRecordCount"], 270);
    assert_eq!(manifest["totalRecordCount"], 270);
    // A graceful shutdown drains the records in flight into the checkpoint: none runs twice.
    assert_eq!(fake.stats().ok, 270, "each record ran exactly once");
    // The resumed run wrote part of the output: its analysis covers all of it.
    let written = written_analysis(&h);
    assert_eq!(written["total_processed"], 270);
    assert_eq!(written, read_back_analysis(&h, &written).await);
}

/// Prefix grouping starts records of one system prompt ahead of older ones; at a shutdown the
/// older ones they overtook start too, so everything that ran is written: the resume redoes
/// nothing and the output has every record once, in input order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouped_records_resume_exactly_once_after_a_shutdown() {
    let fake = FakeServer::start(FakeConfig::latency(2, 8)).await.unwrap();
    let h = Harness::new(&fake, fast_retry()).await;
    let system = |k: usize| {
        format!(
            "Prompt {k}. {}",
            "Answer like a careful support agent. ".repeat(10)
        )
    };
    std::fs::create_dir_all(h.dir.path().join("in")).unwrap();
    let text: String = (0..300)
        .map(|i| {
            let record = serde_json::json!({
                "recordId": format!("g{i:04}"),
                "modelInput": {
                    "system": [{"text": system(i % 5)}],
                    "messages": [{"role": "user", "content": [{"text": format!("q {i}")}]}],
                },
            });
            format!("{record}\n")
        })
        .collect();
    std::fs::write(h.dir.path().join("in/g.jsonl"), text).unwrap();
    let mut spec = h.spec(4);
    spec.records.group_prefixes = true;
    let (tx, rx) = progress();
    h.validate_ok(&spec, &tx).await;
    let stop = StopSignal::new();
    let stopper = stop_at(stop.clone(), rx, 30, StopReason::Shutdown);
    let first = h.execute(&spec, &tx, &stop).await.unwrap();
    stopper.await.unwrap();
    assert_eq!(first.status, JobStatus::InProgress);
    assert!(first.counters.processed < 300, "{:?}", first.counters);

    let (tx2, _rx2) = progress();
    let second = h.execute(&spec, &tx2, &StopSignal::new()).await.unwrap();
    assert_eq!(second.status, JobStatus::Completed);
    let want: Vec<String> = (0..300).map(|i| format!("g{i:04}")).collect();
    assert_eq!(record_ids(&h.output("g.jsonl.out")), want);
    assert_eq!(fake.stats().ok, 300, "each record ran exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_fail_validation_naming_the_quota_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    write_records(&dir.path().join("in/a.jsonl"), 2);
    write_prefixed(&dir.path().join("in/b.jsonl"), "b", 5);
    let storage = Arc::new(Storage::new(StorageConfig {
        data_dir: dir.path().into(),
        ..Default::default()
    }));
    let inputs = [StorageUri::Local(dir.path().join("in"))];
    // Validates the inputs under `quotas`.
    let validate = |quotas: batchd_engine::Quotas| {
        let engine = Engine::new(
            storage.clone(),
            EngineConfig {
                quotas: Some(quotas),
                ..EngineConfig::default()
            },
        );
        let inputs = inputs.clone();
        async move {
            engine
                .validate_input(
                    &inputs,
                    InvocationType::Converse,
                    &RecordOptions::default(),
                    "job000000001",
                    20,
                    batchd_engine::validate::Units::Records,
                )
                .await
                .unwrap()
        }
    };

    let report = validate(batchd_engine::Quotas {
        max_records_per_file: 3,
        max_records_per_job: 6,
        ..Default::default()
    })
    .await;
    assert!(!report.is_valid());
    let message = report.failure_message(20);
    assert!(
        message.contains("Records per input file per batch inference job (3)"),
        "{message}"
    );
    assert!(message.contains("b.jsonl has 5 records"), "{message}");
    assert!(!message.contains("a.jsonl has"), "{message}");
    assert!(
        message.contains("Records per batch inference job (6): the job has 7 records"),
        "{message}"
    );

    let report = validate(batchd_engine::Quotas {
        max_file_bytes: 100,
        ..Default::default()
    })
    .await;
    let message = report.failure_message(20);
    assert!(
        message.contains("Batch inference input file size (100 bytes)"),
        "{message}"
    );
    assert_eq!(
        report.total_records, 0,
        "files over the size quota are not read"
    );

    let report = validate(batchd_engine::Quotas {
        min_records_per_job: 10,
        ..Default::default()
    })
    .await;
    assert!(
        report
            .failure_message(20)
            .contains("Minimum number of records per batch inference job (10)")
    );
}

/// What happens to the inputs after validation, in the Scheduled gap before the run.
enum Change {
    Add,
    Remove,
    Rewrite,
}

/// A job runs exactly the files its validation saw, in the versions it saw: a file added to
/// the prefix afterwards is not part of it (it was never validated), and a removed or
/// rewritten one fails the job with a message naming the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_only_the_input_files_it_validated() {
    let fake = FakeServer::start(FakeConfig::default()).await.unwrap();
    for change in [Change::Add, Change::Remove, Change::Rewrite] {
        let h = Harness::new(&fake, fast_retry()).await;
        let input = h.dir.path().join("in");
        write_prefixed(&input.join("a.jsonl"), "a", 10);
        write_prefixed(&input.join("b.jsonl"), "b", 10);
        let spec = h.spec(4);
        let (tx, _rx) = progress();
        h.validate_ok(&spec, &tx).await;
        // Distinct modification times for the rewrite, whatever the clock's resolution.
        std::thread::sleep(Duration::from_millis(20));
        let result = match change {
            Change::Add => {
                write_prefixed(&input.join("c.jsonl"), "c", 5);
                let outcome = h.execute(&spec, &tx, &StopSignal::new()).await.unwrap();
                assert_eq!(outcome.status, JobStatus::Completed);
                assert_eq!(outcome.counters.processed, 20, "the added file did not run");
                assert!(!h.dir.path().join("out/testjob00001/c.jsonl.out").exists());
                continue;
            }
            Change::Remove => {
                std::fs::remove_file(input.join("b.jsonl")).unwrap();
                h.execute(&spec, &tx, &StopSignal::new()).await
            }
            Change::Rewrite => {
                // Same size, other content.
                let text = std::fs::read_to_string(input.join("b.jsonl")).unwrap();
                std::fs::write(input.join("b.jsonl"), text.replace("hi ", "ho ")).unwrap();
                h.execute(&spec, &tx, &StopSignal::new()).await
            }
        };
        let err = result.unwrap_err().to_string();
        assert!(
            err.contains("b.jsonl") && err.contains("changed since the job validated it"),
            "{err}"
        );
        let job = h.store.get(&h.job_id).await.unwrap().unwrap();
        assert_eq!(job.status, JobStatus::Failed);
        let message = job.message.unwrap();
        assert!(message.contains("b.jsonl"), "{message}");
        assert_eq!(
            fake.stats().requests % 10,
            0,
            "no record of a changed job ran"
        );
    }
}

/// A resumed job checks its files again: one rewritten while the job was interrupted fails
/// it, naming the file, and the output written before the interruption stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_refuses_a_file_rewritten_meanwhile_and_keeps_what_was_written() {
    let fake = FakeServer::start(FakeConfig::latency(5, 0)).await.unwrap();
    let h = Harness::new(&fake, fast_retry()).await;
    let input = h.dir.path().join("in");
    write_prefixed(&input.join("a.jsonl"), "a", 150);
    write_prefixed(&input.join("b.jsonl"), "b", 20);
    let spec = h.execute_until_shutdown(30).await;
    let written = h.output("a.jsonl.out");
    let checkpointed = h
        .store
        .get(&h.job_id)
        .await
        .unwrap()
        .unwrap()
        .checkpoint
        .counters
        .processed;
    assert!((30..150).contains(&checkpointed), "{checkpointed}");

    std::thread::sleep(Duration::from_millis(20));
    write_prefixed(&input.join("b.jsonl"), "b", 21);
    let (tx2, _rx2) = progress();
    let err = h
        .execute(&spec, &tx2, &StopSignal::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("b.jsonl") && err.contains("changed since the job validated it"),
        "{err}"
    );
    let job = h.store.get(&h.job_id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Failed);
    assert!(job.message.unwrap().contains("b.jsonl"));
    assert_eq!(
        h.output("a.jsonl.out"),
        written,
        "what was written before stays"
    );
}
