//! The one job model: what a caller asks for ([`JobRequest`]), what a store inserts
//! ([`NewJob`]), a job as stored ([`Job`]), how jobs are listed ([`JobFilter`]) and the input
//! files a job validated ([`JobFile`]). Every API dialect, `batchd run`, the engine and every
//! `JobStore` share these types.

use std::fmt;
use std::str::FromStr;

use crate::{Checkpoint, Counters, InvocationType, JobId, JobStatus};

/// Who created a job, and so who drives it: the server's scheduler runs `Api` jobs and
/// resumes them after a restart; a `Run` job belongs to the `batchd run` process (and to
/// `batchd run --resume`), and the server's APIs neither list nor touch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobOrigin {
    /// Created through an API of `batchd serve`.
    Api,
    /// Created by `batchd run`.
    Run,
}

impl JobOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Run => "run",
        }
    }
}

impl fmt::Display for JobOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job origin the store does not know.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown job origin {0:?} (expected api or run)")]
pub struct UnknownOrigin(pub String);

impl FromStr for JobOrigin {
    type Err = UnknownOrigin;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "api" => Ok(Self::Api),
            "run" => Ok(Self::Run),
            other => Err(UnknownOrigin(other.to_owned())),
        }
    }
}

/// Which API a job belongs to, with what only that API asks for. Each API lists, gets and
/// stops only its own dialect's jobs.
#[derive(Debug, Clone, PartialEq)]
pub enum Dialect {
    /// Bedrock's `CreateModelInvocationJob` (and `batchd run`): JSONL records in, `.out`
    /// files and a manifest out.
    Bedrock,
    /// The batch-job API of the first seed (`create_batch_inference_job`): items in JSON
    /// arrays or JSONL, batches, a start step, one result object per item.
    BatchJob(Box<BatchJobOptions>),
    /// The OpenAI Batch API: one uploaded JSONL file of `{custom_id, method, url, body}`
    /// lines, an output file and an error file.
    OpenAi(Box<OpenAiBatchOptions>),
}

impl Dialect {
    pub fn kind(&self) -> DialectKind {
        match self {
            Self::Bedrock => DialectKind::Bedrock,
            Self::BatchJob(_) => DialectKind::BatchJob,
            Self::OpenAi(_) => DialectKind::OpenAi,
        }
    }

    pub fn batch_job(&self) -> Option<&BatchJobOptions> {
        match self {
            Self::BatchJob(options) => Some(options),
            _ => None,
        }
    }

    pub fn openai(&self) -> Option<&OpenAiBatchOptions> {
        match self {
            Self::OpenAi(options) => Some(options),
            _ => None,
        }
    }
}

/// A [`Dialect`] without its options: what lists filter on and stores keep in a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DialectKind {
    Bedrock,
    BatchJob,
    OpenAi,
}

impl DialectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bedrock => "bedrock",
            Self::BatchJob => "batch-job",
            Self::OpenAi => "openai",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Bedrock, Self::BatchJob, Self::OpenAi]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// What an OpenAI batch was created with.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenAiBatchOptions {
    /// `/v1/chat/completions` or `/v1/embeddings`: every line's `url`.
    pub endpoint: String,
    pub input_file_id: String,
    /// `24h`, the only window OpenAI offers.
    pub completion_window: String,
    /// Up to 16 pairs, in the order given.
    pub metadata: Vec<(String, String)>,
    /// Seconds after creation the output and error files expire; `None`: they do not.
    pub output_expires_after_seconds: Option<i64>,
}

impl OpenAiBatchOptions {
    /// The ids of a batch's output and error files (made from the job id: one of each per
    /// batch, known before they exist).
    pub fn output_file_id(job: &crate::JobId) -> String {
        format!("file-{job}out")
    }

    pub fn error_file_id(job: &crate::JobId) -> String {
        format!("file-{job}err")
    }
}

/// How a batch-job API job reads, groups, runs and writes its items.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchJobOptions {
    /// Items per batch, in input order; a batch is the unit of parallelism.
    pub batch_size: u32,
    /// Batches running at once, at most.
    pub max_concurrent_batches: u32,
    /// From `start` to the end; past it the job ends `FAILED`, keeping what finished.
    pub timeout_seconds: u64,
    pub input_format: ItemFormat,
    pub output_format: ItemFormat,
    /// Turns a document item into the user message (`{content}`, `{metadata.type}`, ...);
    /// `None`: the content itself.
    pub prompt_template: Option<String>,
    /// Overrides the server's retry policy for this job's items.
    pub retry: Option<JobRetry>,
}

impl BatchJobOptions {
    pub const DEFAULT_BATCH_SIZE: u32 = 100;
    pub const DEFAULT_MAX_CONCURRENT_BATCHES: u32 = 10;
    pub const DEFAULT_TIMEOUT_SECONDS: u64 = 3600;
}

/// The file format of a batch job's input or output objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ItemFormat {
    /// One JSON array per object.
    Json,
    /// One JSON value per line.
    Jsonl,
}

impl ItemFormat {
    /// As the API writes it (`JSON`, `JSONL`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Json => "JSON",
            Self::Jsonl => "JSONL",
        }
    }

    /// File extension of objects in this format.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Jsonl => "jsonl",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Json, Self::Jsonl]
            .into_iter()
            .find(|f| f.as_str() == s)
    }
}

/// A job's own retry policy: how often, how long to wait, and for which failures.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRetry {
    /// Attempts per item, the first included.
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// The failures worth another attempt; any other fails the item at once.
    pub retry_on: Vec<RetryClass>,
}

/// A class of failure a retry policy can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryClass {
    /// The model server asked to slow down (429).
    Throttling,
    /// The model server failed (5xx).
    ServerError,
    /// No answer within the attempt's time limit.
    Timeout,
    /// The model server could not be reached.
    Connection,
}

impl RetryClass {
    pub const ALL: [RetryClass; 4] = [
        Self::Throttling,
        Self::ServerError,
        Self::Timeout,
        Self::Connection,
    ];

    /// As the API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Throttling => "THROTTLING",
            Self::ServerError => "SERVER_ERROR",
            Self::Timeout => "TIMEOUT",
            Self::Connection => "CONNECTION",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// What a caller asks for, already checked for shape by whoever took it in (an API's
/// validation, `batchd run`'s arguments). Stored whole with the job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRequest {
    pub name: String,
    /// The caller's account (12 digits): the job's ARN carries it, and only callers of this
    /// account list, get and stop the job.
    pub account_id: String,
    /// As the caller wrote it (any form [`crate::ModelId`] resolves).
    pub model_id: String,
    pub origin: JobOrigin,
    /// Bedrock's `roleArn` (required by its API; batchd does not assume it).
    pub role_arn: Option<String>,
    pub client_request_token: Option<String>,
    pub invocation_type: InvocationType,
    /// Input files or prefixes (URIs), in the order given. The Bedrock API gives one.
    pub inputs: Vec<String>,
    /// Output prefix (URI); the job writes below `<output>/<jobId>/`.
    pub output: String,
    /// `timeoutDurationInHours`; the scheduler fills in its default before the job is stored.
    pub timeout_hours: Option<u32>,
    /// The request body as received, for what only its API echoes (vpcConfig, tags) and for
    /// `batchd run`'s own settings. Opaque to everything but the code that wrote it.
    pub request_json: Option<String>,
    pub dialect: Dialect,
}

/// What a store inserts: the request plus the identity and deadline given to it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub id: JobId,
    pub arn: String,
    pub request: JobRequest,
    pub job_expiration_ms: Option<i64>,
}

impl NewJob {
    /// A batch-job API job waits for its start; every other job is submitted at once.
    pub fn initial_status(&self) -> JobStatus {
        match self.request.dialect {
            Dialect::BatchJob(_) => JobStatus::Created,
            Dialect::Bedrock | Dialect::OpenAi(_) => JobStatus::Submitted,
        }
    }
}

/// When a job first entered a phase (Unix ms); `None` until it does. A resumed job keeps
/// the first time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PhaseTimes {
    /// First `InProgress`.
    pub in_progress_ms: Option<i64>,
    /// Every record done: the job writes its logs and publishes its files, then ends.
    pub finalizing_ms: Option<i64>,
    /// First `Stopping`.
    pub stopping_ms: Option<i64>,
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: JobId,
    pub arn: String,
    pub request: JobRequest,
    pub status: JobStatus,
    pub message: Option<String>,
    pub submit_time_ms: i64,
    pub last_modified_ms: i64,
    pub end_time_ms: Option<i64>,
    pub job_expiration_ms: Option<i64>,
    /// When the job first entered each phase the OpenAI Batch object reports.
    pub phases: PhaseTimes,
    /// Live counters: those of the last checkpoint while running, final once ended.
    pub counters: Counters,
    pub checkpoint: Checkpoint,
}

/// One page of `JobStore::list`: filters, order and a keyset cursor.
#[derive(Debug, Clone, PartialEq)]
pub struct JobFilter {
    /// Only jobs of this origin (each API lists its own).
    pub origin: JobOrigin,
    /// Only jobs of this dialect (each API lists its own); `None`: every dialect.
    pub dialect: Option<DialectKind>,
    /// Only jobs of this account (an API lists its caller's); `None`: every account.
    pub account_id: Option<String>,
    /// Only jobs submitted strictly after this time.
    pub submit_time_after_ms: Option<i64>,
    /// Only jobs submitted strictly before this time.
    pub submit_time_before_ms: Option<i64>,
    pub status: Option<JobStatus>,
    /// Substring of the job name (case-sensitive).
    pub name_contains: Option<String>,
    /// Oldest first when true; newest first otherwise.
    pub ascending: bool,
    /// Continue after this `(submit_time_ms, job_id)` in the chosen order.
    pub after: Option<(i64, String)>,
    pub limit: u32,
}

impl JobFilter {
    /// Every job of `origin`, newest first, `limit` at a time.
    pub fn new(origin: JobOrigin, limit: u32) -> Self {
        Self {
            origin,
            dialect: None,
            account_id: None,
            submit_time_after_ms: None,
            submit_time_before_ms: None,
            status: None,
            name_contains: None,
            ascending: false,
            after: None,
            limit,
        }
    }
}

/// One input file of a job as validation saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFile {
    pub uri: String,
    /// Path relative to its input prefix: the output file is `<relative>.out`.
    pub relative: String,
    pub size: u64,
    /// The object's ETag (for local files: inode, mtime and size), if the store gives one.
    pub version: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_round_trip_their_stored_names() {
        for origin in [JobOrigin::Api, JobOrigin::Run] {
            assert_eq!(origin.as_str().parse::<JobOrigin>(), Ok(origin));
        }
        assert_eq!(
            "serve".parse::<JobOrigin>(),
            Err(UnknownOrigin("serve".into()))
        );
    }

    #[test]
    fn dialects_formats_and_retry_classes_round_trip_their_names() {
        for kind in [
            DialectKind::Bedrock,
            DialectKind::BatchJob,
            DialectKind::OpenAi,
        ] {
            assert_eq!(DialectKind::parse(kind.as_str()), Some(kind));
        }
        for format in [ItemFormat::Json, ItemFormat::Jsonl] {
            assert_eq!(ItemFormat::parse(format.as_str()), Some(format));
        }
        for class in RetryClass::ALL {
            assert_eq!(RetryClass::parse(class.as_str()), Some(class));
        }
        assert_eq!(ItemFormat::parse("json"), None);
    }
}
