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

/// What a caller asks for, already checked for shape by whoever took it in (an API's
/// validation, `batchd run`'s arguments). Stored whole with the job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRequest {
    pub name: String,
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
}

/// What a store inserts: the request plus the identity and deadline given to it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub id: JobId,
    pub arn: String,
    pub request: JobRequest,
    pub job_expiration_ms: Option<i64>,
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
    /// Live counters: those of the last checkpoint while running, final once ended.
    pub counters: Counters,
    pub checkpoint: Checkpoint,
}

/// One page of `JobStore::list`: filters, order and a keyset cursor.
#[derive(Debug, Clone, PartialEq)]
pub struct JobFilter {
    /// Only jobs of this origin (each API lists its own).
    pub origin: JobOrigin,
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
}
