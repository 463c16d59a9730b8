//! The job store: the [`JobStore`] trait every implementation keeps (status changes as
//! compare-and-set over the legal transitions of `batchd-core`, checkpoints that never move
//! backwards, keyset-paginated lists, the OpenAI API's file records), written once for SQL
//! databases ([`sql::SqlStore`]): [`SqliteStore`] for one machine, [`PgStore`] for several.
//!
//! The job types themselves live in `batchd-core::job`, so the APIs need nothing from here.
//! `tests/conformance.rs` is the suite every implementation must pass.

mod direct;
mod postgres;
mod sql;
mod sqlite;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use batchd_core::{
    Checkpoint, Chunk, ChunkLease, ChunkPlan, Counters, FileFilter, FileRecord, Job, JobFile,
    JobFilter, JobId, JobOrigin, JobStatus, NewJob, StatusError,
};

pub use postgres::PgStore;
pub use sql::{Columns, Flavor, SqlStore};
pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("job store database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("job store read failed: {0}")]
    Read(#[from] rusqlite::Error),
    #[error("job store migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("job {0} not found")]
    NotFound(JobId),
    #[error("job {job}: {source}")]
    Transition {
        job: JobId,
        #[source]
        source: StatusError,
    },
    #[error("job store holds a bad value in {column}: {value:?}")]
    Corrupt { column: &'static str, value: String },
}

/// A store shared by the scheduler, the engine and the APIs.
pub type SharedStore = Arc<dyn JobStore>;

/// Where jobs live. Every implementation passes `tests/conformance.rs`.
#[async_trait::async_trait]
pub trait JobStore: Send + Sync + std::fmt::Debug {
    /// Inserts a job in `Submitted`. A second job of one account with the same
    /// `client_request_token` is an error (the caller then finds the first with
    /// [`JobStore::find_by_token`]); another account may use the same token.
    async fn create(&self, job: NewJob) -> Result<Job, StoreError>;

    async fn get(&self, id: &JobId) -> Result<Option<Job>, StoreError>;

    /// A job's tags, by key. A Bedrock job starts with its create request's `tags`.
    async fn tags(&self, id: &JobId) -> Result<Vec<(String, String)>, StoreError>;

    /// Adds tags to a job, replacing the value of a key it has (all or none).
    async fn set_tags(&self, id: &JobId, tags: &[(String, String)]) -> Result<(), StoreError>;

    /// Removes a job's tags by key; keys it does not have are ignored.
    async fn remove_tags(&self, id: &JobId, keys: &[String]) -> Result<(), StoreError>;

    /// Jobs of `origin` in the given statuses, oldest first (the scheduler's and resume's view).
    async fn list_in_status(
        &self,
        origin: JobOrigin,
        statuses: &[JobStatus],
    ) -> Result<Vec<Job>, StoreError>;

    /// One page of jobs, in submit-time order (ties broken by id), after the cursor.
    async fn list(&self, filter: &JobFilter) -> Result<Vec<Job>, StoreError>;

    /// The job this account created with this `clientRequestToken`, if any.
    async fn find_by_token(&self, account: &str, token: &str) -> Result<Option<Job>, StoreError>;

    /// A Bedrock-dialect job of `origin` and this account with this name that has not ended,
    /// if any (only Bedrock's API wants names unique, and only within an account).
    async fn find_active_by_name(
        &self,
        origin: JobOrigin,
        account: &str,
        name: &str,
    ) -> Result<Option<Job>, StoreError>;

    /// Records the input files a job validated (replacing any earlier list): what its
    /// execution and every resume read.
    async fn set_job_files(&self, id: &JobId, files: &[JobFile]) -> Result<(), StoreError>;

    /// The input files recorded for a job, in order; empty for a job not validated yet.
    async fn job_files(&self, id: &JobId) -> Result<Vec<JobFile>, StoreError>;

    /// Moves a job to `to` if that is legal from its current status; sets `message` when
    /// given, and `end_time` when `to` is terminal (and the first `InProgress` / `Stopping`
    /// time in `phases`). Compare-and-set: a concurrent change
    /// makes it re-check against the new status.
    async fn transition(
        &self,
        id: &JobId,
        to: JobStatus,
        message: Option<&str>,
    ) -> Result<Job, StoreError>;

    /// Starts a job that waits for its start (`Created` → `Submitted`, compare-and-set) and
    /// sets its expiration, which counts from now. Any other status is a `Transition` error.
    async fn start(&self, id: &JobId, job_expiration_ms: Option<i64>) -> Result<Job, StoreError>;

    /// Records the live counters of a running job.
    async fn update_counters(&self, id: &JobId, counters: &Counters) -> Result<(), StoreError>;

    /// Records a checkpoint and its counters, atomically. A checkpoint behind the stored one
    /// is refused (returns false; the stored one stays), so it never moves backwards.
    async fn checkpoint(&self, id: &JobId, checkpoint: &Checkpoint) -> Result<bool, StoreError>;

    /// Records that every record of a running job is done and it is writing its logs and
    /// files (the first time only; `PhaseTimes::finalizing_ms`).
    async fn mark_finalizing(&self, id: &JobId) -> Result<(), StoreError>;

    /// Sets the job's message without changing its status.
    async fn set_message(&self, id: &JobId, message: &str) -> Result<(), StoreError>;

    /// Records a file of the OpenAI Files API (its content is already stored at `file.uri`).
    /// A second file with the same id is an error.
    async fn create_file(&self, file: &FileRecord) -> Result<(), StoreError>;

    /// The file with this id, expired or not (the caller decides what expiry means).
    async fn get_file(&self, id: &str) -> Result<Option<FileRecord>, StoreError>;

    /// One page of files ordered by `(created_at, id)`, after the cursor file.
    async fn list_files(&self, filter: &FileFilter) -> Result<Vec<FileRecord>, StoreError>;

    /// Forgets a file (not its content); false when there was none.
    async fn delete_file(&self, id: &str) -> Result<bool, StoreError>;

    /// The leases of jobs and chunks, for instances that share this store.
    fn leases(&self) -> &dyn Leases;

    /// Flushes and closes; the store is not used afterwards.
    async fn close(&self);
}

/// Leases on jobs and on their chunks, with fencing tokens: how `batchd serve` instances that
/// share one store divide the work and take over from one that stopped renewing. Times are
/// the callers' clocks in milliseconds since the Unix epoch (instances keep them in sync).
#[async_trait::async_trait]
pub trait Leases: Send + Sync {
    /// Takes the job's lease for `owner` until `until_ms` if no one else holds it unexpired;
    /// returns the new fencing token (raised by every claim), or `None` when it is held.
    async fn claim_job(
        &self,
        id: &JobId,
        owner: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<Option<i64>, StoreError>;

    /// Extends the job's lease if `owner` still holds it under `fence`; false when it is lost.
    async fn renew_job(
        &self,
        id: &JobId,
        owner: &str,
        fence: i64,
        until_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Gives the job's lease up (if still held under `fence`) so another instance may act at once.
    async fn release_job(&self, id: &JobId, owner: &str, fence: i64) -> Result<(), StoreError>;

    /// Records how the job's input splits into chunks, once: a second plan for the same job
    /// changes nothing (every planner computes the same one from the same files).
    async fn plan_chunks(&self, id: &JobId, plans: &[ChunkPlan]) -> Result<(), StoreError>;

    /// The job's chunks in input order; empty for a job that was not split.
    async fn chunks(&self, id: &JobId) -> Result<Vec<Chunk>, StoreError>;

    /// Claims the first chunk that is pending or whose lease ran out before `now_ms`, for
    /// `owner` until `until_ms` (never one held unexpired, even by `owner`: an instance may run
    /// two chunks of a job at once): its fencing token is raised and its counters start again
    /// from zero. Instances claiming at once get different chunks; `None` when none is free.
    async fn claim_chunk(
        &self,
        id: &JobId,
        owner: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<Option<ChunkLease>, StoreError>;

    /// Extends a chunk's lease and records its live counters (the job's counters become the
    /// sum of its chunks'); false when the lease is lost (another claim raised the token).
    async fn renew_chunk(
        &self,
        lease: &ChunkLease,
        counters: &Counters,
        until_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Marks a chunk done with its final counters, only under the latest fencing token:
    /// false (nothing changed) for a holder whose lease another instance took over.
    async fn commit_chunk(
        &self,
        lease: &ChunkLease,
        counters: &Counters,
    ) -> Result<bool, StoreError>;

    /// Returns a chunk to pending (its counters to zero) if still held under the token.
    async fn release_chunk(&self, lease: &ChunkLease) -> Result<bool, StoreError>;
    /// Records that `instance` is alive at `now_ms` and uses the backends `scopes`; returns,
    /// for each of them, how many instances using it were seen at or after `since_ms`
    /// (itself included).
    async fn heartbeat(
        &self,
        instance: &str,
        scopes: &[String],
        now_ms: i64,
        since_ms: i64,
    ) -> Result<Vec<u64>, StoreError>;

    /// Forgets `instance` (it is shutting down): the others' shares grow at once.
    async fn leave(&self, instance: &str) -> Result<(), StoreError>;
}

/// Milliseconds since the Unix epoch: the store's timestamps.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Statuses that count as submitted or running (not terminal).
pub const ACTIVE_STATUSES: [JobStatus; 5] = [
    JobStatus::Submitted,
    JobStatus::Validating,
    JobStatus::Scheduled,
    JobStatus::InProgress,
    JobStatus::Stopping,
];
