//! The scheduler in-process against the fake backend: lifecycle, stop, timeouts, expiry,
//! limits and resuming after a shutdown; and instances sharing one store (`cluster`).
#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod support;

use std::path::Path;
use std::time::Duration;

use batchd_core::{ChunkState, JobOrigin, JobRequest, JobStatus, NewJob};
use batchd_engine::scheduler::{ClusterConfig, Scheduler, SchedulerConfig, SchedulerError};
use batchd_testkit::{FakeConfig, FakeServer};
use support::{create, dir_and_fake, output_ids, wait_for};

/// The shared scheduler with its loop running.
async fn scheduler(dir: &Path, fake: &FakeServer, config: SchedulerConfig) -> Scheduler {
    let s = support::scheduler(dir, fake, config).await;
    s.start();
    s
}

/// A job of `model_id`, which names no configured model, is refused, naming the id.
async fn assert_unknown_model(s: &Scheduler, model_id: &str) {
    let request = JobRequest {
        model_id: model_id.into(),
        ..create("unknown", None)
    };
    let err = s.create(request).await.unwrap_err();
    assert!(
        matches!(&err, SchedulerError::UnknownModel(m) if m.contains(model_id)),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_complete_and_create_is_idempotent_by_token() {
    let (dir, fake) = dir_and_fake(20, FakeConfig::default()).await;
    let s = scheduler(dir.path(), &fake, SchedulerConfig::default()).await;
    let with_token = JobRequest {
        client_request_token: Some("tok1".into()),
        ..create("one", None)
    };
    let job = s.create(with_token.clone()).await.unwrap();
    assert_eq!(
        s.create(with_token).await.unwrap().id,
        job.id,
        "same token, same job"
    );
    let done = wait_for(&s, &job.id, |j| j.status.is_terminal()).await;
    assert_eq!(done.status, JobStatus::Completed, "{:?}", done.message);
    assert_eq!(done.counters.processed, 20);
    assert_eq!(done.request.timeout_hours, Some(24));
    assert!(done.end_time_ms.is_some());
    assert_eq!(output_ids(dir.path(), &job.id).len(), 20);
    let err = s.stop(&job.id).await.unwrap_err();
    assert!(matches!(err, SchedulerError::Conflict(_)), "{err}");
    let err = s.create(create("two", None).clone()).await.map(|_| ());
    assert!(err.is_ok(), "a finished job's name may be reused");
    assert_unknown_model(&s, "nope").await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_while_running_keeps_a_prefix_and_duplicate_active_names_conflict() {
    let (dir, fake) = dir_and_fake(400, FakeConfig::latency(20, 0)).await;
    let s = scheduler(dir.path(), &fake, SchedulerConfig::default()).await;
    let job = s.create(create("slow", None)).await.unwrap();
    let dup = s.create(create("slow", None)).await.unwrap_err();
    assert!(matches!(dup, SchedulerError::Conflict(_)), "{dup}");
    wait_for(&s, &job.id, |j| {
        j.status == JobStatus::InProgress && j.counters.processed > 0
    })
    .await;
    s.stop(&job.id).await.unwrap();
    s.stop(&job.id).await.unwrap(); // a second stop while Stopping is fine
    let done = wait_for(&s, &job.id, |j| j.status.is_terminal()).await;
    assert_eq!(done.status, JobStatus::Stopped);
    let ids = output_ids(dir.path(), &job.id);
    assert!(ids.len() < 400);
    assert_eq!(ids.len() as u64, done.counters.processed);
    assert!(
        ids.iter()
            .enumerate()
            .all(|(i, id)| *id == format!("r{i:04}"))
    );
    assert!(
        dir.path()
            .join(format!("buckets/bucket/out/{}/manifest.json.out", job.id))
            .exists()
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_give_partially_completed_and_expired() {
    let (dir, fake) = dir_and_fake(400, FakeConfig::latency(25, 0)).await;
    let config = SchedulerConfig {
        max_running_jobs: 1,
        timeout_unit: Duration::from_millis(40),
        ..Default::default()
    };
    let s = scheduler(dir.path(), &fake, config).await;
    // 400 records at 4 × 25 ms need ~2.5 s; 48 "hours" of 40 ms are ~1.9 s, and the waiting
    // job's 24 run out (~1 s) while the slow one still holds the only running slot.
    let slow = s.create(create("slow", Some(48))).await.unwrap();
    wait_for(&s, &slow.id, |j| j.status == JobStatus::InProgress).await;
    let waiting = s.create(create("waiting", Some(24))).await.unwrap();
    let done = wait_for(&s, &slow.id, |j| j.status.is_terminal()).await;
    assert_eq!(
        done.status,
        JobStatus::PartiallyCompleted,
        "{:?}",
        done.message
    );
    assert!(done.counters.processed > 0 && done.counters.processed < 400);
    assert_eq!(
        output_ids(dir.path(), &slow.id).len() as u64,
        done.counters.processed
    );
    let expired = wait_for(&s, &waiting.id, |j| j.status.is_terminal()).await;
    assert_eq!(expired.status, JobStatus::Expired, "{:?}", expired.message);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_scheduler_resumes_the_running_job_exactly_once() {
    // ~2.5 s of work; store counters move at checkpoints (every second for local files).
    let (dir, fake) = dir_and_fake(500, FakeConfig::latency(15, 10)).await;
    let s = scheduler(dir.path(), &fake, SchedulerConfig::default()).await;
    let job = s.create(create("resumed", None)).await.unwrap();
    wait_for(&s, &job.id, |j| j.counters.processed > 0).await;
    s.shutdown().await;
    let mid = s.store().get(&job.id).await.unwrap().unwrap();
    assert_eq!(
        mid.status,
        JobStatus::InProgress,
        "a shutdown leaves the job to resume"
    );
    assert!(mid.counters.processed < 500);
    s.store().close().await;

    let s = scheduler(dir.path(), &fake, SchedulerConfig::default()).await;
    let done = wait_for(&s, &job.id, |j| j.status.is_terminal()).await;
    assert_eq!(done.status, JobStatus::Completed);
    let ids = output_ids(dir.path(), &job.id);
    let want: Vec<String> = (0..500).map(|i| format!("r{i:04}")).collect();
    assert_eq!(ids, want);
    assert_eq!(done.counters.processed, 500);
    assert_eq!(fake.stats().ok, 500, "no record ran twice");
    s.shutdown().await;
}

/// Every form of a configured model's id reaches it, and the per-model quota counts the jobs
/// of one model whichever form each named it by.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_id_forms_resolve_and_share_one_quota() {
    let (dir, fake) = dir_and_fake(8, FakeConfig::latency(50, 0)).await;
    let config = SchedulerConfig {
        max_active_jobs_per_model: 1,
        ..SchedulerConfig::default()
    };
    let s = scheduler(dir.path(), &fake, config).await;
    let profile_arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.test.model-v1";
    let job = s
        .create(JobRequest {
            model_id: profile_arn.into(),
            ..create("by-arn", None)
        })
        .await
        .unwrap();
    assert_eq!(
        job.request.model_id, profile_arn,
        "the job keeps the id as the caller wrote it"
    );
    for other in ["test.model-v1", "eu.test.model-v1"] {
        let err = s
            .create(JobRequest {
                model_id: other.into(),
                ..create(&format!("while-busy-{other}"), None)
            })
            .await
            .unwrap_err();
        assert!(
            matches!(err, SchedulerError::QuotaExceeded(_)),
            "{other}: {err}"
        );
    }
    let done = wait_for(&s, &job.id, |j| j.status.is_terminal()).await;
    assert_eq!(done.status, JobStatus::Completed, "{:?}", done.message);
    assert_eq!(output_ids(dir.path(), &job.id).len(), 8);
    for (i, form) in [
        "arn:aws:bedrock:us-east-1::foundation-model/test.model-v1",
        "global.test.model-v1",
    ]
    .into_iter()
    .enumerate()
    {
        let job = s
            .create(JobRequest {
                model_id: form.into(),
                ..create(&format!("form-{i}"), None)
            })
            .await
            .unwrap();
        let done = wait_for(&s, &job.id, |j| j.status.is_terminal()).await;
        assert_eq!(
            done.status,
            JobStatus::Completed,
            "{form}: {:?}",
            done.message
        );
    }
    assert_unknown_model(&s, "us.other.model-v1").await;
    s.shutdown().await;
}

/// A `batchd run` job left in the store (its process died mid-run) belongs to `batchd run
/// --resume`: the server neither resumes, validates nor counts it, and refuses to create one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_leaves_jobs_of_batchd_run_alone() {
    let (dir, fake) = dir_and_fake(5, FakeConfig::default()).await;
    let idle = support::scheduler(dir.path(), &fake, SchedulerConfig::default()).await;
    let run = |n: u32| NewJob {
        id: batchd_core::JobId::parse(&format!("{n:012x}")).unwrap(),
        arn: String::new(),
        request: JobRequest {
            origin: JobOrigin::Run,
            ..create("local", None)
        },
        job_expiration_ms: None,
    };
    let store = idle.store();
    let submitted = store.create(run(1)).await.unwrap();
    let running = store.create(run(2)).await.unwrap();
    for to in [
        JobStatus::Validating,
        JobStatus::Scheduled,
        JobStatus::InProgress,
    ] {
        store.transition(&running.id, to, None).await.unwrap();
    }
    let err = idle
        .create(JobRequest {
            origin: JobOrigin::Run,
            ..create("via-server", None)
        })
        .await
        .unwrap_err();
    assert!(matches!(err, SchedulerError::BadRequest(_)), "{err}");

    let s = scheduler(
        dir.path(),
        &fake,
        SchedulerConfig {
            max_active_jobs_per_model: 1,
            ..SchedulerConfig::default()
        },
    )
    .await;
    // An API job of the same model and name runs: the run jobs neither hold the quota nor
    // the name.
    let api = s.create(create("local", None)).await.unwrap();
    let done = wait_for(&s, &api.id, |j| j.status.is_terminal()).await;
    assert_eq!(done.status, JobStatus::Completed, "{:?}", done.message);
    // Several passes later the run jobs are as they were, with no output.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (job, status) in [
        (&submitted, JobStatus::Submitted),
        (&running, JobStatus::InProgress),
    ] {
        let now = s.store().get(&job.id).await.unwrap().unwrap();
        assert_eq!(now.status, status);
        assert_eq!(now.counters.processed, 0);
        assert!(
            !dir.path()
                .join(format!("buckets/bucket/out/{}", job.id))
                .exists()
        );
    }
    s.shutdown().await;
}

/// A scheduler of instances sharing one store: its own lease identity, 2 s leases, chunks of 7.
fn instance(id: &str) -> SchedulerConfig {
    SchedulerConfig {
        cluster: Some(ClusterConfig {
            instance_id: id.into(),
            lease: Duration::from_secs(2),
            chunk_records: 7,
        }),
        ..SchedulerConfig::default()
    }
}

/// Instances `a` and `b`, their loops running, sharing the store and data dir of `dir`.
async fn two_instances(dir: &Path, fake: &FakeServer) -> (Scheduler, Scheduler) {
    let a = scheduler(dir, fake, instance("a")).await;
    let b = scheduler(dir, fake, instance("b")).await;
    (a, b)
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|e| match e.path().is_dir() {
            true => files_under(&e.path()),
            false => vec![e.path()],
        })
        .collect()
}

fn in_order(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("r{i:04}")).collect()
}

/// Two schedulers on one store and one data dir (two instances) split a job into chunks:
/// both run some, the output has every record once, in input order, the parts removed, and
/// the model's concurrency (4) holds across the two (2 each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_sharing_a_store_split_a_job_and_write_it_once_in_order() {
    let (dir, fake) = dir_and_fake(100, FakeConfig::latency(5, 5)).await;
    let (a, b) = two_instances(dir.path(), &fake).await;
    // Both have seen each other sign in (a heartbeat every pass) before the job exists, so
    // each takes half the model's concurrency from its first chunk.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while [&a, &b]
        .iter()
        .any(|s| s.instances_sharing(support::MODEL) != Some(2))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the instances never saw each other"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let job = a.create(create("shared", None)).await.unwrap();
    let done = wait_for(&b, &job.id, |j| j.status.is_terminal()).await;
    assert_eq!(done.status, JobStatus::Completed, "{:?}", done.message);
    assert_eq!((done.counters.processed, done.counters.success), (100, 100));
    assert_eq!(output_ids(dir.path(), &job.id), in_order(100));
    let chunks = b.store().leases().chunks(&job.id).await.unwrap();
    assert_eq!(chunks.len(), 15);
    assert!(chunks.iter().all(|c| c.state == ChunkState::Done));
    assert_eq!(
        chunks.iter().map(|c| c.counters.processed).sum::<u64>(),
        100
    );
    let owners: std::collections::BTreeSet<_> =
        chunks.iter().filter_map(|c| c.owner.as_deref()).collect();
    assert_eq!(owners, ["a", "b"].into());
    let in_flight = fake.stats().max_in_flight;
    assert!(in_flight <= 4, "{in_flight} requests in flight at once");
    // The parts go right after the final status.
    let parts = dir
        .path()
        .join(format!("buckets/bucket/out/{}.parts", job.id));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !files_under(&parts).is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(files_under(&parts), Vec::<std::path::PathBuf>::new());
    a.shutdown().await;
    b.shutdown().await;
}

/// An instance shut down mid-job gives its chunk back at once; the other finishes the job,
/// each record once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_shut_down_mid_job_gives_its_chunk_back() {
    let (dir, fake) = dir_and_fake(120, FakeConfig::latency(20, 5)).await;
    let a = scheduler(dir.path(), &fake, instance("a")).await;
    let job = a.create(create("handover", None)).await.unwrap();
    wait_for(&a, &job.id, |j| j.counters.processed >= 10).await;
    let b = scheduler(dir.path(), &fake, instance("b")).await;
    a.shutdown().await;
    let done = wait_for(&b, &job.id, |j| j.status.is_terminal()).await;
    assert_eq!(done.status, JobStatus::Completed, "{:?}", done.message);
    assert_eq!(done.counters.processed, 120);
    assert_eq!(output_ids(dir.path(), &job.id), in_order(120));
    b.shutdown().await;
}

/// A stop sent to one instance ends a job that both run: `Stopped`, with a prefix of each
/// chunk that ran, in input order, and a manifest that counts exactly what was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_on_one_instance_stops_the_shared_job() {
    let (dir, fake) = dir_and_fake(200, FakeConfig::latency(20, 5)).await;
    let (a, b) = two_instances(dir.path(), &fake).await;
    let job = a.create(create("stopped", None)).await.unwrap();
    wait_for(&a, &job.id, |j| j.counters.processed >= 20).await;
    b.stop(&job.id).await.unwrap();
    let done = wait_for(&a, &job.id, |j| j.status.is_terminal()).await;
    assert_eq!(done.status, JobStatus::Stopped, "{:?}", done.message);
    let ids = output_ids(dir.path(), &job.id);
    assert!(ids.len() < 200 && ids.len() as u64 == done.counters.processed);
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, ids, "in input order, each once");
    let manifest = std::fs::read_to_string(
        dir.path()
            .join(format!("buckets/bucket/out/{}/manifest.json.out", job.id)),
    )
    .unwrap();
    assert!(
        manifest.contains(&format!("\"processedRecordCount\":{}", ids.len())),
        "{manifest}"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// An input rewritten while instances share its job fails the job, naming the file, at the
/// next chunk any instance starts (invariant 4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_rewritten_under_a_shared_job_fails_it() {
    let (dir, fake) = dir_and_fake(200, FakeConfig::latency(20, 5)).await;
    let (a, b) = two_instances(dir.path(), &fake).await;
    let job = a.create(create("rewritten", None)).await.unwrap();
    wait_for(&a, &job.id, |j| j.counters.processed >= 10).await;
    support::write_prefixed(&dir.path().join("buckets/bucket/in/a.jsonl"), "x", 300);
    let done = wait_for(&b, &job.id, |j| j.status.is_terminal()).await;
    assert_eq!(done.status, JobStatus::Failed);
    let message = done.message.unwrap_or_default();
    assert!(message.contains("a.jsonl"), "{message}");
    a.shutdown().await;
    b.shutdown().await;
}
