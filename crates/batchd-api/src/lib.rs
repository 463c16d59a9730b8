//! HTTP APIs of batchd: the Amazon Bedrock batch control plane (rest-json), served by
//! `batchd serve`, so `boto3.client("bedrock", endpoint_url=...)` and the AWS CLI work as they
//! are; beside it the first seed's batch-job API (`create_batch_inference_job`, ...); and the
//! OpenAI API under `/v1` (files, models), for the `openai` SDKs.
//!
//! - [`JobService`]: what the API needs from the rest of batchd (the scheduler implements it).
//! - [`FileService`]: the OpenAI API's files (the engine's `Files` implements it).
//! - `bedrock`: routes, request validation, the job object's JSON, rest-json errors.
//! - `batch_job`: the batch-job API's routes, validation, job object and botocore extras.
//! - `openai`: the OpenAI API's routes and its `{"error": {...}}` errors.
//! - `auth`: SigV4 and bearer keys, one middleware for every route; the caller's account.
//! - `s3`: the S3 API over the local buckets (s3s), in front of the others on the same port.
//! - `observe`: request counts by route and status for the Prometheus metrics.
//! - `console`: the web console at `/ui` (server-rendered HTML, no script).
//!
//! Only this crate (and `batchd-formats` for record bodies) knows the API's JSON shapes.

pub mod auth;
pub mod batch_job;
pub mod bedrock;
pub mod console;
pub mod observe;
pub mod openai;
mod path_job;
pub mod s3;

pub use bedrock::{ApiConfig, ApiError, router};
pub use openai::{OpenAiApi, OpenAiConfig, OpenAiError};

use batchd_core::{
    Counters, FileFilter, FileRecord, Job, JobFilter, JobId, JobRequest, TimingSummary,
};

/// Bytes as a stream: an upload's body, a file's content.
pub type ByteStream<'a> = futures::stream::BoxStream<'a, Result<bytes::Bytes, std::io::Error>>;

/// Why a service call failed; each maps to one Bedrock error type.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ServiceError {
    /// ResourceNotFoundException (404): unknown job or model.
    #[error("{0}")]
    NotFound(String),
    /// ValidationException (400).
    #[error("{0}")]
    Validation(String),
    /// ConflictException (400): stop of an ended job, duplicate active job name.
    #[error("{0}")]
    Conflict(String),
    /// ServiceQuotaExceededException (400).
    #[error("{0}")]
    QuotaExceeded(String),
    /// InternalServerException (500); the detail is logged, not returned.
    #[error("{0}")]
    Internal(String),
}

/// A running job's progress between checkpoints.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LiveProgress {
    pub counters: Counters,
    pub timing: Option<TimingSummary>,
}

/// A record that failed, as the console lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRecord {
    /// The result file, relative to the job's folder.
    pub file: String,
    /// Line number (JSONL) or item index (JSON array) in that file.
    pub position: u64,
    pub id: String,
    /// The record's input as JSON text, when its result carries it.
    pub input: Option<String>,
    pub code: String,
    pub message: String,
}

/// One page of a job's failed records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailedPage {
    pub records: Vec<FailedRecord>,
    /// There are more after this page.
    pub more: bool,
}

/// The job operations behind the control plane.
#[async_trait::async_trait]
pub trait JobService: Send + Sync + 'static {
    /// Creates a job of `request.account_id` (or returns the job an earlier call of that
    /// account with the same `client_request_token` created) and schedules it.
    async fn create_job(&self, request: JobRequest) -> Result<Job, ServiceError>;

    /// A job of this API's origin (`JobOrigin::Api`) and of `account`; another origin's or
    /// another account's job is NotFound, as an unknown id. A running job's counters are live
    /// (as of its last written record, not its last checkpoint); so are `list_jobs`'s.
    async fn get_job(&self, account: &str, id: &JobId) -> Result<Job, ServiceError>;

    /// One page of jobs; `filter.limit` is the page size (the API sets `filter.account_id`).
    async fn list_jobs(&self, filter: JobFilter) -> Result<Vec<Job>, ServiceError>;

    /// Stops a job that has not ended (ConflictException for an ended one).
    async fn stop_job(&self, account: &str, id: &JobId) -> Result<(), ServiceError>;

    /// The tags of a job of `account` (as [`JobService::get_job`] finds it), by key.
    async fn job_tags(
        &self,
        account: &str,
        id: &JobId,
    ) -> Result<Vec<(String, String)>, ServiceError>;

    /// Adds tags to a job of `account`, replacing the values of keys it has.
    async fn tag_job(
        &self,
        account: &str,
        id: &JobId,
        tags: Vec<(String, String)>,
    ) -> Result<(), ServiceError>;

    /// Removes a job's tags by key (keys it does not have are ignored).
    async fn untag_job(
        &self,
        account: &str,
        id: &JobId,
        keys: Vec<String>,
    ) -> Result<(), ServiceError>;

    /// Starts a batch-job API job that waits for its start (Conflict once started).
    async fn start_job(&self, account: &str, id: &JobId) -> Result<Job, ServiceError>;

    /// What a job being executed now has written: counters as of its last written record (the
    /// stored ones are as of its last checkpoint) and the processing times of this run.
    async fn live_progress(&self, id: &JobId) -> Option<LiveProgress>;

    /// The result analysis an ended job wrote beside its output (`<out>/<jobId>.analysis.json`),
    /// if there is one and it can be read.
    async fn job_analysis(&self, job: &Job) -> Option<serde_json::Value>;

    /// The failed records written so far under the job's output folder, `limit` from the
    /// `offset`-th on, in output order (Bedrock and batch-job results; an OpenAI batch's
    /// failures are in its error file).
    async fn failed_records(
        &self,
        job: &Job,
        offset: u64,
        limit: usize,
    ) -> Result<FailedPage, ServiceError>;
}

/// The files of the OpenAI API: metadata in the job store, content in storage.
#[async_trait::async_trait]
///
/// Every file belongs to an account: another account's file is NotFound, as an unknown id.
pub trait FileService: Send + Sync + 'static {
    /// Stores `body` as a new file of `account`, never holding all of it in memory. More than
    /// `max_bytes` is `Validation("File is too large.")` and leaves nothing behind; so does a
    /// body that breaks off. `expires_after_seconds` counts from the upload (`None`: never
    /// expires).
    async fn upload(
        &self,
        account: &str,
        filename: &str,
        purpose: &str,
        expires_after_seconds: Option<i64>,
        body: ByteStream<'_>,
        max_bytes: u64,
    ) -> Result<FileRecord, ServiceError>;

    /// A file of `account`; an unknown or expired one is NotFound.
    async fn get(&self, account: &str, id: &str) -> Result<FileRecord, ServiceError>;

    /// One page of unexpired files; `filter.limit` is the page size (the API sets
    /// `filter.account_id`).
    async fn list(&self, filter: FileFilter) -> Result<Vec<FileRecord>, ServiceError>;

    /// Removes a file of `account` and its content (NotFound if there is none).
    async fn delete(&self, account: &str, id: &str) -> Result<(), ServiceError>;

    /// A file's content as stored, streamed.
    async fn content(&self, account: &str, id: &str) -> Result<ByteStream<'static>, ServiceError>;
}
