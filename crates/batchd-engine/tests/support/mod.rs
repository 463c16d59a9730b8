//! Helpers shared by the scheduler's tests: `tests/scheduler.rs` and the unit tests in
//! `src/scheduler.rs` (which include this file by path, with `batchd_engine` naming the crate).
#![allow(clippy::unwrap_used, dead_code)] // test helpers fail loudly by design; each user takes some

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use batchd_core::{InvocationType, Job, JobId, JobOrigin, JobRequest};
use batchd_engine::scheduler::{ModelEntry, Scheduler, SchedulerConfig};
use batchd_engine::{Engine, EngineConfig, RecordOptions};
use batchd_storage::{Storage, StorageConfig};
use batchd_store::SqliteStore;
use batchd_testkit::harness::{converse_record, read_jsonl, record_ids, write_jsonl};
use batchd_testkit::{FakeConfig, FakeServer};

pub const MODEL: &str = "test.model-v1";

/// `n` Converse records with ids `r0000`, `r0001`, ...
pub fn write_records(path: &Path, n: usize) {
    write_prefixed(path, "r", n);
}

/// `n` Converse records with ids `<prefix>0000`, ...: unique across the files of one job.
pub fn write_prefixed(path: &Path, prefix: &str, n: usize) {
    write_jsonl(
        path,
        (0..n).map(|i| converse_record(&format!("{prefix}{i:04}"), &format!("hi {i}"))),
    );
}

/// A data dir whose `s3://bucket/in/a.jsonl` holds `records` Converse records (see
/// [`create`]), and a fake backend that behaves as `fake` says.
pub async fn dir_and_fake(records: usize, fake: FakeConfig) -> (tempfile::TempDir, FakeServer) {
    let dir = tempfile::tempdir().unwrap();
    write_records(&dir.path().join("buckets/bucket/in/a.jsonl"), records);
    let fake = FakeServer::start(fake).await.unwrap();
    (dir, fake)
}

/// A scheduler over `dir` (SQLite store, local buckets) and the fake; its loop is not started.
pub async fn scheduler(dir: &Path, fake: &FakeServer, config: SchedulerConfig) -> Scheduler {
    let storage = Arc::new(Storage::new(StorageConfig {
        data_dir: dir.into(),
        ..Default::default()
    }));
    let engine = Engine::new(storage, EngineConfig::default());
    let store = Arc::new(SqliteStore::open(&dir.join("batchd.sqlite")).await.unwrap());
    let backend = batchd_testkit::conformance::openai_backend(fake.base_url()).unwrap();
    let models = HashMap::from([(
        MODEL.to_owned(),
        ModelEntry {
            backend,
            shared_backend: Some(fake.base_url().to_string()),
            concurrency: 4,
            records: RecordOptions::default(),
        },
    )]);
    Scheduler::new(
        engine,
        store,
        models,
        SchedulerConfig {
            poll_interval: Duration::from_millis(20),
            ..config
        },
    )
}

/// A server job's request over `s3://bucket/in/`.
pub fn create(name: &str, timeout_hours: Option<u32>) -> JobRequest {
    JobRequest {
        name: name.into(),
        account_id: "000000000000".into(),
        model_id: MODEL.into(),
        origin: JobOrigin::Api,
        role_arn: None,
        client_request_token: None,
        invocation_type: InvocationType::Converse,
        inputs: vec!["s3://bucket/in/".into()],
        output: "s3://bucket/out/".into(),
        timeout_hours,
        request_json: None,
        dialect: batchd_core::Dialect::Bedrock,
    }
}

pub async fn wait_for(s: &Scheduler, id: &JobId, done: impl Fn(&Job) -> bool) -> Job {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let job = s.store().get(id).await.unwrap().unwrap();
        if done(&job) {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "timed out; job is {:?}",
            job.status
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn output_ids(dir: &Path, id: &JobId) -> Vec<String> {
    let lines = read_jsonl(&dir.join(format!("buckets/bucket/out/{id}/a.jsonl.out")));
    record_ids(&lines).into_iter().map(str::to_owned).collect()
}
