//! The `JobStore` conformance suite: what every implementation must do, run against each one
//! (SQLite in memory and in a file, and Postgres: a database of its own per test on the server
//! `scripts/pg.sh` starts; a new implementation adds one line to `stores!`).
#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use batchd_core::{
    BatchJobOptions, Checkpoint, ChunkLease, ChunkPlan, ChunkState, Counters, Dialect, DialectKind,
    FileFilter, FileRecord, InvocationType, ItemFormat, Job, JobFile, JobFilter, JobId, JobOrigin,
    JobRequest, JobRetry, JobStatus, NewJob, PhaseTimes, RetryClass,
};
use batchd_store::{JobStore, Leases, PgStore, SharedStore, SqliteStore, StoreError};

/// A new empty store (`None`: this machine has none of that kind; the case then passes outside
/// CI and fails under it), and what must live as long as it.
type Made = Option<(SharedStore, Option<tempfile::TempDir>)>;
type Maker = fn() -> Pin<Box<dyn Future<Output = Made>>>;

fn sqlite_memory() -> Pin<Box<dyn Future<Output = Made>>> {
    Box::pin(async {
        let store: SharedStore = Arc::new(SqliteStore::in_memory().await.unwrap());
        Some((store, None))
    })
}

fn sqlite_file() -> Pin<Box<dyn Future<Output = Made>>> {
    Box::pin(async {
        let dir = tempfile::tempdir().unwrap();
        let store: SharedStore = Arc::new(
            SqliteStore::open(&dir.path().join("batchd.sqlite"))
                .await
                .unwrap(),
        );
        Some((store, Some(dir)))
    })
}

fn postgres() -> Pin<Box<dyn Future<Output = Made>>> {
    Box::pin(async {
        let url = batchd_testkit::postgres::fresh_database().await?;
        let store: SharedStore = Arc::new(PgStore::connect(&url).await.unwrap());
        Some((store, None))
    })
}

/// One `#[tokio::test]` per (store, case).
macro_rules! stores {
    ($($store:ident: $maker:expr;)*) => {
        $(mod $store {
            use super::*;
            const MAKE: Maker = $maker;
            cases!(
                a_job_reads_back_as_it_was_created,
                jobs_move_only_through_legal_transitions,
                phase_times_are_set_once_when_entered,
                racing_transitions_have_one_winner,
                list_filters_orders_and_pages_with_a_cursor,
                list_in_status_keeps_to_its_origin_oldest_first,
                tokens_and_active_names_are_found,
                checkpoints_never_move_backwards,
                a_jobs_file_list_round_trips_in_order_and_is_replaced_whole,
                counters_and_messages_change_nothing_else,
                batch_jobs_keep_their_options_wait_for_start_and_list_apart,
                a_file_reads_back_as_it_was_created,
                files_list_by_purpose_in_order_with_a_cursor,
                a_deleted_file_is_gone_once,
                files_list_by_account,
                each_account_lists_finds_and_names_only_its_own_jobs,
                tags_start_from_the_request_and_change_by_key,
                a_job_lease_has_one_holder_until_it_runs_out,
                chunks_are_planned_once_and_a_late_commit_is_refused,
                instances_claiming_at_once_get_different_chunks,
                live_instances_are_counted_from_their_heartbeats,
            );
        })*
    };
}

macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        $(#[tokio::test]
        async fn $case() {
            let Some((store, _dir)) = MAKE().await else { return };
            super::$case(store.as_ref()).await;
            store.close().await;
        })*
    };
}

stores! {
    sqlite_in_memory: sqlite_memory;
    sqlite_in_a_file: sqlite_file;
    postgres: postgres;
}

fn id(n: u32) -> JobId {
    JobId::parse(&format!("{n:012x}")).unwrap()
}

const ACCOUNT: &str = "000000000000";

fn request(origin: JobOrigin) -> JobRequest {
    JobRequest {
        name: "job".into(),
        account_id: ACCOUNT.into(),
        model_id: "m".into(),
        origin,
        role_arn: (origin == JobOrigin::Api).then(|| "arn:aws:iam::000000000000:role/r".into()),
        client_request_token: None,
        invocation_type: InvocationType::Converse,
        inputs: vec!["s3://b/in/".into()],
        output: "s3://b/out/".into(),
        timeout_hours: Some(24),
        request_json: None,
        dialect: Dialect::Bedrock,
    }
}

fn batch_job_request(retry: bool) -> JobRequest {
    JobRequest {
        dialect: Dialect::BatchJob(Box::new(BatchJobOptions {
            batch_size: 50,
            max_concurrent_batches: 5,
            timeout_seconds: 1800,
            input_format: ItemFormat::Json,
            output_format: ItemFormat::Jsonl,
            prompt_template: Some("Summarise the {metadata.type}: {content}".into()),
            retry: retry.then(|| JobRetry {
                max_attempts: 3,
                initial_backoff_ms: 200,
                max_backoff_ms: 5000,
                retry_on: vec![RetryClass::Throttling, RetryClass::Timeout],
            }),
        })),
        role_arn: None,
        timeout_hours: None,
        ..request(JobOrigin::Api)
    }
}

fn new_job(n: u32, request: JobRequest) -> NewJob {
    NewJob {
        id: id(n),
        arn: format!(
            "arn:aws:bedrock:us-east-1:000000000000:model-invocation-job/{}",
            id(n)
        ),
        request,
        job_expiration_ms: Some(1_000_000 + i64::from(n)),
    }
}

/// Creates jobs a few milliseconds apart, so their submit times differ.
async fn create_spaced(store: &dyn JobStore, jobs: Vec<NewJob>) -> Vec<Job> {
    let mut out = Vec::new();
    for job in jobs {
        out.push(store.create(job).await.unwrap());
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    out
}

fn ids(jobs: &[Job]) -> Vec<String> {
    jobs.iter().map(|j| j.id.to_string()).collect()
}

async fn a_job_reads_back_as_it_was_created(store: &dyn JobStore) {
    let mut run = request(JobOrigin::Run);
    run.inputs = vec![
        "/data/a.jsonl".into(),
        "/data/with space/".into(),
        "s3://b/x\"y\".jsonl".into(),
    ];
    run.request_json = Some(r#"{"format":"nova"}"#.into());
    run.timeout_hours = None;
    for (n, request) in [(1, request(JobOrigin::Api)), (2, run)] {
        let created = store.create(new_job(n, request.clone())).await.unwrap();
        assert_eq!(created.request, request);
        assert_eq!(created.status, JobStatus::Submitted);
        assert_eq!(created.counters, Counters::default());
        assert_eq!(created.checkpoint, Checkpoint::default());
        assert_eq!(created.job_expiration_ms, Some(1_000_000 + i64::from(n)));
        assert!(created.submit_time_ms > 0);
        assert_eq!(created.end_time_ms, None);
        assert_eq!(store.get(&id(n)).await.unwrap(), Some(created));
    }
    assert_eq!(store.get(&id(99)).await.unwrap(), None);
}

async fn jobs_move_only_through_legal_transitions(store: &dyn JobStore) {
    let job = store
        .create(new_job(1, request(JobOrigin::Api)))
        .await
        .unwrap();
    let err = store
        .transition(&job.id, JobStatus::InProgress, None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Transition { .. }), "{err}");
    for to in [
        JobStatus::Validating,
        JobStatus::Scheduled,
        JobStatus::InProgress,
    ] {
        assert_eq!(
            store.transition(&job.id, to, None).await.unwrap().status,
            to
        );
    }
    let done = store
        .transition(&job.id, JobStatus::Completed, Some("all done"))
        .await
        .unwrap();
    assert_eq!(done.message.as_deref(), Some("all done"));
    assert!(done.end_time_ms.is_some());
    let err = store
        .transition(&job.id, JobStatus::Stopping, None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Transition { .. }), "{err}");
    let err = store
        .transition(&id(99), JobStatus::Validating, None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
}

/// The first `InProgress`, finalizing and `Stopping` times are kept; later ones change
/// nothing.
async fn phase_times_are_set_once_when_entered(store: &dyn JobStore) {
    let job = store
        .create(new_job(1, request(JobOrigin::Api)))
        .await
        .unwrap();
    assert_eq!(job.phases, PhaseTimes::default());
    for to in [JobStatus::Validating, JobStatus::Scheduled] {
        store.transition(&job.id, to, None).await.unwrap();
    }
    let running = store
        .transition(&job.id, JobStatus::InProgress, None)
        .await
        .unwrap();
    let started = running.phases.in_progress_ms.unwrap();
    assert!(started >= job.submit_time_ms);
    assert_eq!(
        (running.phases.finalizing_ms, running.phases.stopping_ms),
        (None, None)
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    store.mark_finalizing(&job.id).await.unwrap();
    let finalizing = store.get(&job.id).await.unwrap().unwrap().phases;
    assert!(finalizing.finalizing_ms.unwrap() > started);
    tokio::time::sleep(Duration::from_millis(5)).await;
    store.mark_finalizing(&job.id).await.unwrap();
    let stopping = store
        .transition(&job.id, JobStatus::Stopping, None)
        .await
        .unwrap();
    assert_eq!(stopping.phases.in_progress_ms, Some(started));
    assert_eq!(stopping.phases.finalizing_ms, finalizing.finalizing_ms);
    assert!(stopping.phases.stopping_ms.unwrap() > finalizing.finalizing_ms.unwrap());
    let stopped = store
        .transition(&job.id, JobStatus::Stopped, None)
        .await
        .unwrap();
    assert_eq!(stopped.phases, stopping.phases);
}

/// Compare-and-set: of many writers making the same move, exactly one wins.
async fn racing_transitions_have_one_winner(store: &dyn JobStore) {
    store
        .create(new_job(1, request(JobOrigin::Api)))
        .await
        .unwrap();
    let job = id(1);
    // Polled together on one task, so their reads and writes interleave.
    let results = futures::future::join_all(
        (0..8).map(|_| store.transition(&job, JobStatus::Validating, None)),
    )
    .await;
    let wins = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1, "{results:?}");
}

async fn list_filters_orders_and_pages_with_a_cursor(store: &dyn JobStore) {
    let jobs = (1..=4)
        .map(|n| {
            let mut r = request(JobOrigin::Api);
            r.name = format!("{}-job-{n}", if n % 2 == 0 { "even" } else { "odd" });
            new_job(n, r)
        })
        .chain([new_job(5, request(JobOrigin::Run))])
        .collect();
    let jobs = create_spaced(store, jobs).await;
    store
        .transition(&id(2), JobStatus::Validating, None)
        .await
        .unwrap();

    let page = |after, ascending| JobFilter {
        ascending,
        after,
        ..JobFilter::new(JobOrigin::Api, 2)
    };
    let first = store.list(&page(None, false)).await.unwrap();
    assert_eq!(ids(&first), ids(&[jobs[3].clone(), jobs[2].clone()]));
    let last = first.last().unwrap();
    let cursor = Some((last.submit_time_ms, last.id.to_string()));
    let second = store.list(&page(cursor, false)).await.unwrap();
    assert_eq!(ids(&second), ids(&[jobs[1].clone(), jobs[0].clone()]));
    let asc = store.list(&page(None, true)).await.unwrap();
    assert_eq!(ids(&asc), ids(&jobs[..2]));

    let odd = JobFilter {
        name_contains: Some("odd".into()),
        ..JobFilter::new(JobOrigin::Api, 10)
    };
    assert_eq!(store.list(&odd).await.unwrap().len(), 2);
    let validating = JobFilter {
        status: Some(JobStatus::Validating),
        ..JobFilter::new(JobOrigin::Api, 10)
    };
    assert_eq!(
        ids(&store.list(&validating).await.unwrap()),
        [id(2).to_string()]
    );
    let after = JobFilter {
        submit_time_after_ms: Some(jobs[1].submit_time_ms),
        ..JobFilter::new(JobOrigin::Api, 10)
    };
    assert_eq!(store.list(&after).await.unwrap().len(), 2);
    let before = JobFilter {
        submit_time_before_ms: Some(jobs[1].submit_time_ms),
        ..JobFilter::new(JobOrigin::Api, 10)
    };
    assert_eq!(
        ids(&store.list(&before).await.unwrap()),
        [id(1).to_string()]
    );
    let runs = store
        .list(&JobFilter::new(JobOrigin::Run, 10))
        .await
        .unwrap();
    assert_eq!(ids(&runs), [id(5).to_string()]);
}

async fn list_in_status_keeps_to_its_origin_oldest_first(store: &dyn JobStore) {
    let jobs = vec![
        new_job(1, request(JobOrigin::Api)),
        new_job(2, request(JobOrigin::Run)),
        new_job(3, request(JobOrigin::Api)),
        new_job(4, request(JobOrigin::Api)),
    ];
    create_spaced(store, jobs).await;
    store
        .transition(&id(4), JobStatus::Validating, None)
        .await
        .unwrap();
    let submitted = store
        .list_in_status(JobOrigin::Api, &[JobStatus::Submitted])
        .await
        .unwrap();
    assert_eq!(ids(&submitted), [id(1).to_string(), id(3).to_string()]);
    let both = store
        .list_in_status(
            JobOrigin::Api,
            &[JobStatus::Validating, JobStatus::Submitted],
        )
        .await
        .unwrap();
    assert_eq!(
        ids(&both),
        [id(1).to_string(), id(3).to_string(), id(4).to_string()]
    );
    let runs = store
        .list_in_status(JobOrigin::Run, &[JobStatus::Submitted])
        .await
        .unwrap();
    assert_eq!(ids(&runs), [id(2).to_string()]);
    assert!(
        store
            .list_in_status(JobOrigin::Api, &[])
            .await
            .unwrap()
            .is_empty()
    );
}

async fn tokens_and_active_names_are_found(store: &dyn JobStore) {
    let mut with_token = request(JobOrigin::Api);
    with_token.client_request_token = Some("tok-1".into());
    with_token.name = "named".into();
    store.create(new_job(1, with_token.clone())).await.unwrap();
    assert_eq!(
        store
            .find_by_token(ACCOUNT, "tok-1")
            .await
            .unwrap()
            .map(|j| j.id),
        Some(id(1))
    );
    assert!(
        store
            .find_by_token(ACCOUNT, "nope")
            .await
            .unwrap()
            .is_none()
    );
    // A second job with the same token is refused; the first stays.
    assert!(store.create(new_job(2, with_token)).await.is_err());
    assert!(store.get(&id(2)).await.unwrap().is_none());

    let found = store
        .find_active_by_name(JobOrigin::Api, ACCOUNT, "named")
        .await
        .unwrap();
    assert_eq!(found.map(|j| j.id), Some(id(1)));
    assert!(
        store
            .find_active_by_name(JobOrigin::Run, ACCOUNT, "named")
            .await
            .unwrap()
            .is_none(),
        "names are per origin"
    );
    for to in [JobStatus::Validating, JobStatus::Failed] {
        store.transition(&id(1), to, Some("no")).await.unwrap();
    }
    assert!(
        store
            .find_active_by_name(JobOrigin::Api, ACCOUNT, "named")
            .await
            .unwrap()
            .is_none(),
        "an ended job does not hold its name"
    );
}

async fn checkpoints_never_move_backwards(store: &dyn JobStore) {
    let job = store
        .create(new_job(1, request(JobOrigin::Api)))
        .await
        .unwrap();
    let at = |file, records, processed| Checkpoint {
        file_index: file,
        records_in_file: records,
        position: records * 10,
        timings_position: records * 3 + 1,
        counters: Counters {
            total: 100,
            processed,
            success: processed,
            ..Counters::default()
        },
    };
    assert!(store.checkpoint(&job.id, &at(0, 5, 5)).await.unwrap());
    assert!(store.checkpoint(&job.id, &at(1, 2, 12)).await.unwrap());
    assert!(
        !store.checkpoint(&job.id, &at(0, 9, 9)).await.unwrap(),
        "backwards is refused"
    );
    let job = store.get(&job.id).await.unwrap().unwrap();
    assert_eq!(job.checkpoint, at(1, 2, 12));
    assert_eq!(job.counters, at(1, 2, 12).counters);
}

async fn a_jobs_file_list_round_trips_in_order_and_is_replaced_whole(store: &dyn JobStore) {
    let job = store
        .create(new_job(1, request(JobOrigin::Api)))
        .await
        .unwrap();
    assert!(store.job_files(&job.id).await.unwrap().is_empty());
    let file = |n: u64, version: Option<&str>| JobFile {
        uri: format!("s3://b/in/{n}.jsonl"),
        relative: format!("{n}.jsonl"),
        size: n * 1000,
        version: version.map(str::to_owned),
    };
    let files = vec![
        file(2, Some("\"e2\"")),
        file(1, None),
        file(3, Some("\"e3\"")),
    ];
    store.set_job_files(&job.id, &files).await.unwrap();
    assert_eq!(store.job_files(&job.id).await.unwrap(), files);
    store.set_job_files(&job.id, &files[..1]).await.unwrap();
    assert_eq!(store.job_files(&job.id).await.unwrap(), files[..1]);
    let other = store
        .create(new_job(2, request(JobOrigin::Api)))
        .await
        .unwrap();
    assert!(store.job_files(&other.id).await.unwrap().is_empty());
}

async fn counters_and_messages_change_nothing_else(store: &dyn JobStore) {
    let job = store
        .create(new_job(1, request(JobOrigin::Api)))
        .await
        .unwrap();
    let c = Counters {
        total: 10,
        processed: 4,
        success: 3,
        error: 1,
        input_tokens: 40,
        output_tokens: 50,
    };
    store.update_counters(&job.id, &c).await.unwrap();
    store.set_message(&job.id, "busy").await.unwrap();
    let now = store.get(&job.id).await.unwrap().unwrap();
    assert_eq!(now.counters, c);
    assert_eq!(now.message.as_deref(), Some("busy"));
    assert_eq!(now.status, JobStatus::Submitted);
    assert_eq!(now.request, job.request);
    assert_eq!(now.checkpoint.file_index, 0);
    let err = store.update_counters(&id(99), &c).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
}

async fn a_job_lease_has_one_holder_until_it_runs_out(store: &dyn JobStore) {
    let job = store
        .create(new_job(1, request(JobOrigin::Api)))
        .await
        .unwrap();
    let leases = store.leases();
    let first = leases
        .claim_job(&job.id, "a", 100, 200)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        leases.claim_job(&job.id, "b", 150, 250).await.unwrap(),
        None
    );
    assert!(leases.renew_job(&job.id, "a", first, 300).await.unwrap());
    assert_eq!(
        leases.claim_job(&job.id, "b", 250, 350).await.unwrap(),
        None
    );
    // Past its end another instance takes it, and the first holder's token is dead.
    let second = leases
        .claim_job(&job.id, "b", 301, 400)
        .await
        .unwrap()
        .unwrap();
    assert!(second > first);
    assert!(!leases.renew_job(&job.id, "a", first, 500).await.unwrap());
    leases.release_job(&job.id, "a", first).await.unwrap();
    assert_eq!(
        leases.claim_job(&job.id, "a", 350, 450).await.unwrap(),
        None
    );
    // Released, it is free at once.
    leases.release_job(&job.id, "b", second).await.unwrap();
    assert!(
        leases
            .claim_job(&job.id, "a", 350, 450)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(leases.claim_job(&id(9), "a", 0, 1).await.unwrap(), None);
}

fn plans(n: u64) -> Vec<ChunkPlan> {
    (0..n)
        .map(|i| ChunkPlan {
            file_index: i / 2,
            start_offset: 1000 * (i % 2),
            first_line: 1 + 10 * (i % 2),
            records: 10,
        })
        .collect()
}

/// A chunk's counters for `processed` records, `processed / 3` of them errors.
fn done(processed: u64) -> Counters {
    Counters {
        total: 0,
        processed,
        success: processed - processed / 3,
        error: processed / 3,
        input_tokens: 10 * processed,
        output_tokens: 20 * processed,
    }
}

/// The job's counters from its `total` and its chunks'.
fn summed(total: u64, chunks: &[Counters]) -> Counters {
    chunks.iter().fold(
        Counters {
            total,
            ..Counters::default()
        },
        |mut s, c| {
            s.processed += c.processed;
            s.success += c.success;
            s.error += c.error;
            s.input_tokens += c.input_tokens;
            s.output_tokens += c.output_tokens;
            s
        },
    )
}

/// The chunk `owner` claims of job `id` at `now` until `until`, where there must be one.
async fn claimed(leases: &dyn Leases, id: &JobId, owner: &str, now: i64, until: i64) -> ChunkLease {
    leases
        .claim_chunk(id, owner, now, until)
        .await
        .unwrap()
        .unwrap()
}

async fn chunks_are_planned_once_and_a_late_commit_is_refused(store: &dyn JobStore) {
    let job = store
        .create(new_job(1, request(JobOrigin::Api)))
        .await
        .unwrap();
    let total = Counters {
        total: 30,
        ..Counters::default()
    };
    store.update_counters(&job.id, &total).await.unwrap();
    let leases = store.leases();
    assert!(leases.chunks(&job.id).await.unwrap().is_empty());
    leases.plan_chunks(&job.id, &plans(3)).await.unwrap();
    // A second planner changes nothing.
    leases.plan_chunks(&job.id, &plans(1)).await.unwrap();
    let chunks = leases.chunks(&job.id).await.unwrap();
    let planned: Vec<_> = chunks.iter().map(|c| c.plan).collect();
    assert_eq!(planned, plans(3));
    assert!(
        chunks
            .iter()
            .all(|c| c.state == ChunkState::Pending && c.fence == 0)
    );

    let a = claimed(leases, &job.id, "a", 100, 200).await;
    let b = claimed(leases, &job.id, "b", 100, 200).await;
    assert_eq!((a.index, b.index), (0, 1));
    assert_eq!(a.plan, plans(3)[0]);
    assert!(leases.renew_chunk(&a, &done(4), 300).await.unwrap());
    assert!(leases.renew_chunk(&b, &done(2), 200).await.unwrap());
    // The job's counters are its chunks' sum, live; its total stays.
    let live = store.get(&job.id).await.unwrap().unwrap().counters;
    assert_eq!(live, summed(30, &[done(4), done(2)]));

    // b's lease runs out: c takes chunk 1 over (before the pending chunk 2), from zero.
    let c = claimed(leases, &job.id, "c", 250, 400).await;
    assert_eq!(c.index, 1);
    assert!(c.fence > b.fence);
    let live = store.get(&job.id).await.unwrap().unwrap().counters;
    assert_eq!(live, summed(30, &[done(4)]));
    // b wakes up: neither its renewal nor its commit lands.
    assert!(!leases.renew_chunk(&b, &done(9), 900).await.unwrap());
    assert!(!leases.commit_chunk(&b, &done(10)).await.unwrap());
    assert!(!leases.release_chunk(&b).await.unwrap());
    assert!(leases.commit_chunk(&c, &done(10)).await.unwrap());
    assert!(leases.commit_chunk(&a, &done(10)).await.unwrap());
    // Done is final: a second commit under the same token changes nothing.
    assert!(!leases.commit_chunk(&a, &done(3)).await.unwrap());

    let d = claimed(leases, &job.id, "d", 250, 400).await;
    assert_eq!(d.index, 2);
    assert!(leases.release_chunk(&d).await.unwrap());
    let again = claimed(leases, &job.id, "e", 260, 400).await;
    assert_eq!((again.index, again.fence), (2, d.fence + 1));
    assert!(leases.commit_chunk(&again, &done(7)).await.unwrap());
    assert_eq!(
        leases
            .claim_chunk(&job.id, "f", 10_000, 20_000)
            .await
            .unwrap(),
        None
    );

    let chunks = leases.chunks(&job.id).await.unwrap();
    assert!(
        chunks
            .iter()
            .all(|c| c.state == ChunkState::Done && !c.is_held(0))
    );
    let owners: Vec<_> = chunks.iter().map(|c| c.owner.as_deref()).collect();
    assert_eq!(owners, [Some("a"), Some("c"), Some("e")]);
    let job = store.get(&job.id).await.unwrap().unwrap();
    assert_eq!(job.counters, summed(30, &[done(10), done(10), done(7)]));
    assert_eq!(job.status, JobStatus::Submitted);

    // A holder never claims its own chunk again: an instance may run two chunks at once.
    let other = store
        .create(new_job(2, request(JobOrigin::Api)))
        .await
        .unwrap();
    leases.plan_chunks(&other.id, &plans(2)).await.unwrap();
    let first = claimed(leases, &other.id, "g", 500, 900).await;
    let second = claimed(leases, &other.id, "g", 600, 900).await;
    assert_eq!((first.index, second.index), (0, 1));
    assert_eq!(
        leases.claim_chunk(&other.id, "g", 700, 900).await.unwrap(),
        None
    );
}

async fn instances_claiming_at_once_get_different_chunks(store: &dyn JobStore) {
    let job = store
        .create(new_job(1, request(JobOrigin::Api)))
        .await
        .unwrap();
    let leases = store.leases();
    leases.plan_chunks(&job.id, &plans(24)).await.unwrap();
    let id = &job.id;
    let claimer = |owner: String| async move {
        let mut got = Vec::new();
        while let Some(lease) = leases.claim_chunk(id, &owner, 100, 10_000).await.unwrap() {
            assert!(leases.commit_chunk(&lease, &done(10)).await.unwrap());
            got.push(lease.index);
        }
        got
    };
    let all = futures::future::join_all((0..6).map(|i| claimer(format!("i{i}")))).await;
    let mut indices: Vec<u64> = all.into_iter().flatten().collect();
    indices.sort_unstable();
    assert_eq!(indices, (0..24).collect::<Vec<_>>());
    let job = store.get(&job.id).await.unwrap().unwrap();
    assert_eq!(job.counters.processed, 240);
}

async fn live_instances_are_counted_from_their_heartbeats(store: &dyn JobStore) {
    let leases = store.leases();
    let scopes = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (m1, both) = (scopes(&["m@x"]), scopes(&["m@x", "m@y"]));
    assert!(
        leases
            .heartbeat("a", &[], 1_000, 0)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(leases.heartbeat("a", &m1, 1_000, 0).await.unwrap(), [1]);
    // b uses the same server for m, and another that a does not.
    assert_eq!(
        leases.heartbeat("b", &both, 1_500, 0).await.unwrap(),
        [2, 1]
    );
    // a was last seen at 1000: not alive since 1200.
    assert_eq!(
        leases.heartbeat("b", &both, 2_000, 1_200).await.unwrap(),
        [1, 1]
    );
    assert_eq!(leases.heartbeat("a", &m1, 2_100, 1_200).await.unwrap(), [2]);
    leases.leave("b").await.unwrap();
    assert_eq!(leases.heartbeat("a", &m1, 2_200, 0).await.unwrap(), [1]);
}

async fn batch_jobs_keep_their_options_wait_for_start_and_list_apart(store: &dyn JobStore) {
    let bedrock = store
        .create(new_job(1, request(JobOrigin::Api)))
        .await
        .unwrap();
    for (n, retry) in [(2, true), (3, false)] {
        let request = batch_job_request(retry);
        let created = store.create(new_job(n, request.clone())).await.unwrap();
        assert_eq!(created.request, request);
        assert_eq!(created.status, JobStatus::Created);
        assert_eq!(store.get(&id(n)).await.unwrap(), Some(created));
    }
    // Created jobs are not active: the scheduler does not see them before their start.
    let active = store
        .list_in_status(JobOrigin::Api, &batchd_store::ACTIVE_STATUSES)
        .await
        .unwrap();
    assert_eq!(ids(&active), [bedrock.id.to_string()]);

    let started = store.start(&id(2), Some(42)).await.unwrap();
    assert_eq!(started.status, JobStatus::Submitted);
    assert_eq!(started.job_expiration_ms, Some(42));
    let again = store.start(&id(2), Some(43)).await.unwrap_err();
    assert!(matches!(again, StoreError::Transition { .. }), "{again}");
    let bedrock_start = store.start(&bedrock.id, None).await.unwrap_err();
    assert!(matches!(bedrock_start, StoreError::Transition { .. }));
    assert_eq!(
        store.get(&id(2)).await.unwrap().unwrap().job_expiration_ms,
        Some(42)
    );

    let mut filter = JobFilter::new(JobOrigin::Api, 10);
    filter.dialect = Some(DialectKind::BatchJob);
    let mut listed = ids(&store.list(&filter).await.unwrap());
    listed.sort();
    assert_eq!(listed, [id(2).to_string(), id(3).to_string()]);
    filter.dialect = Some(DialectKind::Bedrock);
    assert_eq!(
        ids(&store.list(&filter).await.unwrap()),
        [id(1).to_string()]
    );
    filter.dialect = None;
    assert_eq!(store.list(&filter).await.unwrap().len(), 3);

    let openai = JobRequest {
        dialect: Dialect::OpenAi(Box::new(batchd_core::OpenAiBatchOptions {
            endpoint: "/v1/chat/completions".into(),
            input_file_id: "file-abc".into(),
            completion_window: "24h".into(),
            metadata: vec![("team".into(), "eval".into()), ("run".into(), "7".into())],
            output_expires_after_seconds: Some(3600),
        })),
        role_arn: None,
        ..request(JobOrigin::Api)
    };
    let created = store.create(new_job(4, openai.clone())).await.unwrap();
    assert_eq!(
        (created.request, created.status),
        (openai, JobStatus::Submitted)
    );
    filter.dialect = Some(DialectKind::OpenAi);
    assert_eq!(
        ids(&store.list(&filter).await.unwrap()),
        [id(4).to_string()]
    );

    // Names are unique among Bedrock jobs only: a batch job of the same name is no conflict.
    let found = store
        .find_active_by_name(JobOrigin::Api, ACCOUNT, "job")
        .await
        .unwrap();
    assert_eq!(found.map(|j| j.id), Some(bedrock.id));
}

fn file(id: &str, created_at: i64, purpose: &str) -> FileRecord {
    FileRecord {
        id: id.into(),
        account_id: ACCOUNT.into(),
        bytes: 1234,
        created_at,
        expires_at: Some(created_at + 2_592_000),
        filename: format!("{id} with \"quotes\".jsonl"),
        purpose: purpose.into(),
        uri: format!("s3://bucket/files/{id}"),
    }
}

fn file_ids(files: &[FileRecord]) -> Vec<&str> {
    files.iter().map(|f| f.id.as_str()).collect()
}

async fn a_file_reads_back_as_it_was_created(store: &dyn JobStore) {
    let uploaded = file("file-a", 1_700_000_000, "batch");
    let output = FileRecord {
        expires_at: None,
        bytes: u64::from(u32::MAX) + 1,
        ..file("file-b", 1_700_000_001, "batch_output")
    };
    for f in [&uploaded, &output] {
        store.create_file(f).await.unwrap();
        assert_eq!(store.get_file(&f.id).await.unwrap().as_ref(), Some(f));
    }
    assert_eq!(store.get_file("file-nope").await.unwrap(), None);
    // An id is one file: a second one with it is refused, and the first stays.
    let twin = file("file-a", 1, "batch_output");
    assert!(store.create_file(&twin).await.is_err());
    assert_eq!(store.get_file("file-a").await.unwrap(), Some(uploaded));
}

async fn files_list_by_purpose_in_order_with_a_cursor(store: &dyn JobStore) {
    // Two files share a second: the id breaks the tie.
    for (id, at, purpose) in [
        ("file-c", 30, "batch"),
        ("file-a", 10, "batch"),
        ("file-e", 20, "batch"),
        ("file-d", 20, "batch"),
        ("file-b", 40, "batch_output"),
    ] {
        store.create_file(&file(id, at, purpose)).await.unwrap();
    }
    let filter =
        |purpose: Option<&str>, after: Option<&str>, limit: u32, ascending: bool| FileFilter {
            account_id: None,
            purpose: purpose.map(str::to_owned),
            after: after.map(str::to_owned),
            limit,
            ascending,
        };
    let list = |f: FileFilter| async move { store.list_files(&f).await.unwrap() };
    assert_eq!(
        file_ids(&list(filter(None, None, 10, true)).await),
        ["file-a", "file-d", "file-e", "file-c", "file-b"]
    );
    assert_eq!(
        file_ids(&list(filter(None, None, 10, false)).await),
        ["file-b", "file-c", "file-e", "file-d", "file-a"]
    );
    assert_eq!(
        file_ids(&list(filter(Some("batch"), None, 10, false)).await),
        ["file-c", "file-e", "file-d", "file-a"]
    );
    assert_eq!(
        file_ids(&list(filter(Some("batch_output"), None, 10, true)).await),
        ["file-b"]
    );
    assert!(
        list(filter(Some("fine-tune"), None, 10, true))
            .await
            .is_empty()
    );
    // Pages of two, each after the last id of the one before, in both orders.
    for (ascending, expected) in [
        (true, ["file-a", "file-d", "file-e", "file-c"]),
        (false, ["file-c", "file-e", "file-d", "file-a"]),
    ] {
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = list(filter(Some("batch"), after.as_deref(), 2, ascending)).await;
            assert!(page.len() <= 2);
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            seen.extend(page.iter().map(|f| f.id.clone()));
        }
        assert_eq!(seen, expected);
    }
    assert!(
        list(filter(None, Some("file-gone"), 10, true))
            .await
            .is_empty()
    );
}

async fn a_deleted_file_is_gone_once(store: &dyn JobStore) {
    for id in ["file-a", "file-b"] {
        store.create_file(&file(id, 5, "batch")).await.unwrap();
    }
    assert!(store.delete_file("file-a").await.unwrap());
    assert_eq!(store.get_file("file-a").await.unwrap(), None);
    assert!(!store.delete_file("file-a").await.unwrap());
    let all = FileFilter {
        account_id: None,
        purpose: None,
        after: None,
        limit: 10,
        ascending: true,
    };
    assert_eq!(file_ids(&store.list_files(&all).await.unwrap()), ["file-b"]);
    // The id is free again.
    store
        .create_file(&file("file-a", 6, "batch"))
        .await
        .unwrap();
}

/// A list with an account sees only that account's files; no account, all of them.
async fn files_list_by_account(store: &dyn JobStore) {
    const OTHER: &str = "111122223333";
    for (id, account) in [("file-a", ACCOUNT), ("file-b", OTHER), ("file-c", ACCOUNT)] {
        let f = FileRecord {
            account_id: account.into(),
            ..file(id, 7, "batch")
        };
        store.create_file(&f).await.unwrap();
        assert_eq!(
            store.get_file(id).await.unwrap().unwrap().account_id,
            account
        );
    }
    let of = |account: Option<&str>| FileFilter {
        account_id: account.map(str::to_owned),
        purpose: None,
        after: None,
        limit: 10,
        ascending: true,
    };
    let list = |f: FileFilter| async move { store.list_files(&f).await.unwrap() };
    assert_eq!(
        file_ids(&list(of(Some(ACCOUNT))).await),
        ["file-a", "file-c"]
    );
    assert_eq!(file_ids(&list(of(Some(OTHER))).await), ["file-b"]);
    assert!(list(of(Some("444455556666"))).await.is_empty());
    assert_eq!(
        file_ids(&list(of(None)).await),
        ["file-a", "file-b", "file-c"]
    );
}

/// Accounts: a list with an account sees only that account's jobs (pages included), tokens
/// and active names are per account, and no filter sees them all.
async fn each_account_lists_finds_and_names_only_its_own_jobs(store: &dyn JobStore) {
    const OTHER: &str = "111122223333";
    let of = |account: &str, n: u32| {
        let mut r = request(JobOrigin::Api);
        r.account_id = account.into();
        r.name = "same-name".into();
        r.client_request_token = Some("same-token".into());
        // Each account may have one active job of a name and one job per token.
        if n > 2 {
            r.name = format!("job-{n}");
            r.client_request_token = None;
        }
        new_job(n, r)
    };
    let jobs = create_spaced(
        store,
        vec![
            of(ACCOUNT, 1),
            of(OTHER, 2),
            of(ACCOUNT, 3),
            of(OTHER, 4),
            of(ACCOUNT, 5),
        ],
    )
    .await;
    assert_eq!(jobs[1].request.account_id, OTHER);

    let mine = |after| JobFilter {
        account_id: Some(ACCOUNT.into()),
        after,
        ..JobFilter::new(JobOrigin::Api, 2)
    };
    let first = store.list(&mine(None)).await.unwrap();
    assert_eq!(ids(&first), [id(5).to_string(), id(3).to_string()]);
    let last = first.last().unwrap();
    let second = store
        .list(&mine(Some((last.submit_time_ms, last.id.to_string()))))
        .await
        .unwrap();
    assert_eq!(ids(&second), [id(1).to_string()]);
    let theirs = JobFilter {
        account_id: Some(OTHER.into()),
        ..JobFilter::new(JobOrigin::Api, 10)
    };
    assert_eq!(
        ids(&store.list(&theirs).await.unwrap()),
        [id(4).to_string(), id(2).to_string()]
    );
    let nobody = JobFilter {
        account_id: Some("999999999999".into()),
        ..JobFilter::new(JobOrigin::Api, 10)
    };
    assert!(store.list(&nobody).await.unwrap().is_empty());
    assert_eq!(
        store
            .list(&JobFilter::new(JobOrigin::Api, 10))
            .await
            .unwrap()
            .len(),
        5
    );

    for (account, expected) in [(ACCOUNT, id(1)), (OTHER, id(2))] {
        let by_token = store.find_by_token(account, "same-token").await.unwrap();
        assert_eq!(by_token.map(|j| j.id), Some(expected.clone()), "{account}");
        let by_name = store
            .find_active_by_name(JobOrigin::Api, account, "same-name")
            .await
            .unwrap();
        assert_eq!(by_name.map(|j| j.id), Some(expected), "{account}");
    }
    assert!(
        store
            .find_by_token("999999999999", "same-token")
            .await
            .unwrap()
            .is_none()
    );
}

async fn tags_start_from_the_request_and_change_by_key(store: &dyn JobStore) {
    let mut r = request(JobOrigin::Api);
    r.request_json = Some(
        r#"{"jobName":"job","tags":[{"key":"team","value":"a"},{"key":"env","value":"dev"}]}"#
            .into(),
    );
    let tagged = store.create(new_job(1, r)).await.unwrap();
    let plain = store
        .create(new_job(2, request(JobOrigin::Api)))
        .await
        .unwrap();
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(
        store.tags(&tagged.id).await.unwrap(),
        pairs(&[("env", "dev"), ("team", "a")])
    );
    assert_eq!(store.tags(&plain.id).await.unwrap(), vec![]);

    store
        .set_tags(&tagged.id, &pairs(&[("team", "b"), ("cost", "x")]))
        .await
        .unwrap();
    assert_eq!(
        store.tags(&tagged.id).await.unwrap(),
        pairs(&[("cost", "x"), ("env", "dev"), ("team", "b")])
    );
    store
        .remove_tags(&tagged.id, &["env".to_string(), "nope".to_string()])
        .await
        .unwrap();
    assert_eq!(
        store.tags(&tagged.id).await.unwrap(),
        pairs(&[("cost", "x"), ("team", "b")])
    );
    assert_eq!(store.tags(&plain.id).await.unwrap(), vec![]);
}

/// Two instances that start at once on a new Postgres database both open it: the migrations
/// run once, under sqlx's advisory lock, and neither sees a half-made schema.
#[tokio::test]
async fn postgres_instances_starting_at_once_migrate_once() {
    let Some(url) = batchd_testkit::postgres::fresh_database().await else {
        return;
    };
    let (a, b) = tokio::join!(PgStore::connect(&url), PgStore::connect(&url));
    let (a, b) = (a.unwrap(), b.unwrap());
    let job = a.create(new_job(1, request(JobOrigin::Api))).await.unwrap();
    assert_eq!(b.get(&job.id).await.unwrap().unwrap().id, job.id);
    a.close().await;
    b.close().await;
}
