//! Runs one job end to end: validate every line of every input file, run the records on a
//! backend with bounded concurrency, retries and a timeout per attempt, write the output in
//! input order, keep live counters, and write the manifest.
//!
//! - [`validate`]: the validation pass (every defect as `file:line: field: reason`).
//! - [`run`]: the record pipeline and ordered writer.
//! - [`retry`]: capped exponential backoff with full jitter, honouring `Retry-After`.
//! - [`Engine::run_job`]: the job lifecycle on top of them, recorded in the job store.

pub mod retry;
pub mod run;
pub mod validate;

use std::sync::Arc;
use std::time::{Duration, Instant};

use batchd_backends::ModelBackend;
use batchd_core::{Counters, InvocationType, JobId, JobStatus};
use batchd_formats::converse::ConverseOptions;
use batchd_storage::{Storage, StorageError, StorageUri};
use batchd_store::{JobStore, StoreError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use retry::RetryPolicy;
pub use validate::{LineDefect, ValidationReport};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Input(String),
}

/// What to do with blank (whitespace-only) lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BlankLines {
    /// Skip them: they are not records and not defects (line numbers still count them).
    #[default]
    Skip,
    /// Report each as a defect.
    Reject,
}

/// Engine settings, from config.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub retry: RetryPolicy,
    /// Longest accepted input line.
    pub max_line_bytes: usize,
    /// Defects listed in a failed job's message.
    pub max_defects_in_message: usize,
    pub blank_lines: BlankLines,
    /// How often live counters are written to the job store.
    pub progress_interval: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            max_line_bytes: 64 * 1024 * 1024,
            max_defects_in_message: 20,
            blank_lines: BlankLines::Skip,
            progress_interval: Duration::from_millis(500),
        }
    }
}

/// One job to run.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub job_id: JobId,
    /// Input files or prefixes; every `*.jsonl` below a prefix, in sorted order.
    pub inputs: Vec<StorageUri>,
    /// Output goes to `<output>/<jobId>/...`.
    pub output: StorageUri,
    pub invocation_type: InvocationType,
    pub converse: ConverseOptions,
    /// Records in flight at once.
    pub concurrency: usize,
}

/// Where a job stands, for progress displays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub status: JobStatus,
    pub counters: Counters,
}

/// How a job ended.
#[derive(Debug, Clone)]
pub struct JobOutcome {
    pub status: JobStatus,
    pub counters: Counters,
    pub message: Option<String>,
    /// Set when validation failed.
    pub validation: Option<ValidationReport>,
    pub elapsed: Duration,
    /// `<output>/<jobId>/`.
    pub output_dir: StorageUri,
}

/// Runs jobs on shared storage.
#[derive(Debug, Clone)]
pub struct Engine {
    storage: Arc<Storage>,
    config: EngineConfig,
}

impl Engine {
    pub fn new(storage: Arc<Storage>, config: EngineConfig) -> Self {
        Self { storage, config }
    }

    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Runs a job that is `Submitted` in `store` to its end: Validating → (Failed |
    /// Scheduled → InProgress → Completed, or Stopped when `cancel` fires). Each status is
    /// recorded in the store; `progress` sees counters as records are written.
    pub async fn run_job(
        &self,
        spec: &JobSpec,
        backend: Arc<dyn ModelBackend>,
        store: &JobStore,
        progress: &watch::Sender<Progress>,
        cancel: &CancellationToken,
    ) -> Result<JobOutcome, EngineError> {
        let started = Instant::now();
        let output_dir = spec.output.join(spec.job_id.as_str());
        let set_status = |status: JobStatus, counters: Counters| {
            progress.send_replace(Progress { status, counters });
        };

        store
            .transition(&spec.job_id, JobStatus::Validating, None)
            .await?;
        set_status(JobStatus::Validating, Counters::default());
        let report = match self.validate(spec).await {
            Ok(report) => report,
            Err(e) => {
                let message = e.to_string();
                store
                    .transition(&spec.job_id, JobStatus::Failed, Some(&message))
                    .await?;
                set_status(JobStatus::Failed, Counters::default());
                return Ok(JobOutcome {
                    status: JobStatus::Failed,
                    counters: Counters::default(),
                    message: Some(message),
                    validation: None,
                    elapsed: started.elapsed(),
                    output_dir,
                });
            }
        };
        if !report.is_valid() {
            let message = report.failure_message(self.config.max_defects_in_message);
            store
                .transition(&spec.job_id, JobStatus::Failed, Some(&message))
                .await?;
            set_status(JobStatus::Failed, Counters::default());
            return Ok(JobOutcome {
                status: JobStatus::Failed,
                counters: Counters::default(),
                message: Some(message),
                validation: Some(report),
                elapsed: started.elapsed(),
                output_dir,
            });
        }

        let counters = Counters {
            total: report.total_records,
            ..Counters::default()
        };
        store.update_counters(&spec.job_id, &counters).await?;
        store
            .transition(&spec.job_id, JobStatus::Scheduled, None)
            .await?;
        store
            .transition(&spec.job_id, JobStatus::InProgress, None)
            .await?;
        set_status(JobStatus::InProgress, counters);

        let result = run::run_records(
            self,
            spec,
            &report.files,
            counters,
            backend,
            store,
            progress,
            cancel,
        )
        .await;
        let counters = match result {
            Ok(counters) => counters,
            Err(e) => {
                let message = format!("job failed while running: {e}");
                store
                    .transition(&spec.job_id, JobStatus::Failed, Some(&message))
                    .await?;
                set_status(JobStatus::Failed, Counters::default());
                return Err(e);
            }
        };
        store.update_counters(&spec.job_id, &counters).await?;

        let manifest = batchd_formats::manifest::Manifest::from(&counters);
        self.storage
            .put(
                &output_dir.join("manifest.json.out"),
                manifest.to_json().into(),
            )
            .await?;

        let (status, message) = if cancel.is_cancelled() {
            store
                .transition(&spec.job_id, JobStatus::Stopping, None)
                .await?;
            (
                JobStatus::Stopped,
                format!(
                    "stopped after {} of {} records",
                    counters.processed, counters.total
                ),
            )
        } else {
            (
                JobStatus::Completed,
                format!(
                    "{} records: {} succeeded, {} failed",
                    counters.processed, counters.success, counters.error
                ),
            )
        };
        store
            .transition(&spec.job_id, status, Some(&message))
            .await?;
        set_status(status, counters);
        Ok(JobOutcome {
            status,
            counters,
            message: Some(message),
            validation: None,
            elapsed: started.elapsed(),
            output_dir,
        })
    }
}
