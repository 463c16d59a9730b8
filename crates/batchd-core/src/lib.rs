//! Domain vocabulary of batchd: job ids and ARNs, the ten job statuses and their legal
//! transitions, record counters, generated record ids, the invocation type, model ids, the
//! job model every API, the engine and the job stores share (`job`), the chunks instances
//! sharing a store split a job into (`chunk`), and the OpenAI API's file records (`file`).
//!
//! This crate does no IO and depends on no runtime, HTTP or JSON crate (ARCHITECTURE.md,
//! invariant 1), so every other crate can share these types without pulling anything in.

pub mod chunk;
pub mod file;
mod ids;
pub mod job;
pub mod model_id;
mod status;

pub use chunk::{Chunk, ChunkLease, ChunkPlan, ChunkState};
pub use file::{FileFilter, FileRecord, PURPOSE_BATCH, PURPOSE_BATCH_OUTPUT};
pub use ids::{IdError, JobArn, JobId, generated_record_id, stable_hash64};
pub use job::{
    BatchJobOptions, Dialect, DialectKind, ItemFormat, Job, JobFile, JobFilter, JobOrigin,
    JobRequest, JobRetry, NewJob, OpenAiBatchOptions, PhaseTimes, RetryClass, UnknownOrigin,
};
pub use model_id::ModelId;
pub use status::{InvocationType, JobStatus, StatusError};
// TimingSummary is defined below, next to Counters.
// Checkpoint is defined below, next to Counters.

/// Live and final record counts of a job; the manifest's six fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Records found in the input (known once validation has read every line).
    pub total: u64,
    /// Records finished, successfully or with an error line.
    pub processed: u64,
    pub success: u64,
    pub error: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

impl Counters {
    /// Records not yet processed.
    pub fn remaining(&self) -> u64 {
        self.total.saturating_sub(self.processed)
    }
}

/// Processing time of the records a run has finished (seconds): the mean and percentiles of
/// the time from a record's first attempt to its last answer.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TimingSummary {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

/// How far a running job's output is durable: every record before `records_in_file` of
/// input file `file_index` (and all of every earlier file) is written, and the output file is
/// at `position` (bytes, or parts for object stores), its side file of processing times (when
/// the job keeps one) at `timings_position`. `counters` are the counts at that point.
/// A checkpoint never moves backwards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checkpoint {
    pub file_index: u64,
    pub records_in_file: u64,
    pub position: u64,
    pub timings_position: u64,
    pub counters: Counters,
}

impl Checkpoint {
    /// Whether `self` is at or after `other` in the input.
    pub fn is_at_or_after(&self, other: &Checkpoint) -> bool {
        (self.file_index, self.records_in_file) >= (other.file_index, other.records_in_file)
    }
}
