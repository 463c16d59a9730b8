//! Runs one job end to end: validate every line of every input file, run the records on a
//! backend with bounded concurrency, retries and a timeout per attempt, write the output in
//! input order, keep live counters, and write the manifest.
//!
//! - [`validate`]: the validation pass (every defect as `file:line: field: reason`).
//! - [`run`]: the record pipeline and ordered writer.
//! - [`retry`]: capped exponential backoff with full jitter, honouring `Retry-After`.
//! - [`analysis`]: a job's results read back into statistics, written beside its folder.
//! - [`files`]: the OpenAI API's files (uploads streamed to storage, records in the store).
//! - [`metrics`]: the metric names the engine records (records, tokens, retries, latency).
//! - [`Engine::validate_job`] and [`Engine::execute_job`]: the two phases of a job's life,
//!   recorded in the job store, resumable from the last checkpoint; [`Engine::run_job`] runs
//!   both (the CLI's in-process job).

pub mod analysis;
pub mod chunks;
mod embed_batch;
pub mod files;
pub mod ids;
pub mod metrics;
mod record;
pub mod retry;
pub mod run;
pub mod scheduler;
#[cfg(feature = "api")]
pub mod service;
pub mod units;
pub mod validate;

// The scheduler's unit tests share tests/support with the integration tests, which name the
// crate `batchd_engine`.
#[cfg(test)]
extern crate self as batchd_engine;

use std::sync::Arc;
use std::time::{Duration, Instant};

use batchd_backends::ModelBackend;
use batchd_core::{
    BatchJobOptions, Checkpoint, Counters, InvocationType, Job, JobFile, JobId, JobStatus,
    OpenAiBatchOptions, TimingSummary,
};
use batchd_formats::analysis::{AnalysisContext, Prices, Tally};
use batchd_formats::converse::ConverseOptions;
use batchd_formats::native::ModelFamily;
use batchd_storage::{InputFile, Storage, StorageError, StorageUri};
use batchd_store::{JobStore, StoreError};
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

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
    /// A start found the job in a status with nothing to run (already ended, or not
    /// validated yet): a stale decision, refused so no record runs twice.
    #[error("job {job} is {status}: nothing to run")]
    NotRunnable { job: JobId, status: JobStatus },
}

impl EngineError {
    /// The job's input is not what was validated (changed, gone, or unreadable as planned):
    /// running it again cannot help, so the job fails. Other errors (a storage or database
    /// fault) leave it to be resumed.
    pub fn fails_the_job(&self) -> bool {
        matches!(
            self,
            Self::Input(_) | Self::Storage(StorageError::InputChanged { .. })
        )
    }
}

/// What to do with blank (whitespace-only) lines (`engine.blank_lines = "skip" | "reject"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
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
    /// Limits checked while validating (server jobs); `None` checks none.
    pub quotas: Option<Quotas>,
    /// After a stop, records in flight get this long to finish; the rest are abandoned
    /// (not written, so a resume runs them again).
    pub shutdown_grace: Duration,
    /// While the backend refuses connections, records wait (with backoff) this long before
    /// they fail as unreachable.
    pub backend_down: Duration,
}

/// Bedrock's batch quotas (per job), with self-hosted defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quotas {
    /// "Records per input file per batch inference job".
    pub max_records_per_file: u64,
    /// "Records per batch inference job".
    pub max_records_per_job: u64,
    /// "Minimum number of records per batch inference job" (Bedrock: 100; here 1).
    pub min_records_per_job: u64,
    /// "Batch inference input file size" in bytes.
    pub max_file_bytes: u64,
    /// "Batch inference job size" in bytes.
    pub max_job_bytes: u64,
}

impl Quotas {
    /// Bedrock states the size quotas "in GB": decimal gigabytes, as the config's `*_gb` keys.
    pub const BYTES_PER_GB: u64 = 1_000_000_000;
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            max_records_per_file: 50_000,
            max_records_per_job: 50_000,
            min_records_per_job: 1,
            max_file_bytes: Self::BYTES_PER_GB,
            max_job_bytes: 5 * Self::BYTES_PER_GB,
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            max_line_bytes: 64 * 1024 * 1024,
            max_defects_in_message: 20,
            blank_lines: BlankLines::Skip,
            quotas: None,
            shutdown_grace: Duration::from_secs(30),
            backend_down: Duration::from_secs(300),
        }
    }
}

/// One job to run.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub job_id: JobId,
    /// The model id as the job names it (metrics and logs label records with it).
    pub model_id: String,
    /// Input files or prefixes; every `*.jsonl` below a prefix, in sorted order.
    pub inputs: Vec<StorageUri>,
    /// Output goes to `<output>/<jobId>/...`.
    pub output: StorageUri,
    pub invocation_type: InvocationType,
    /// How the model's records are read and sent.
    pub records: RecordOptions,
    /// Records in flight at once.
    pub concurrency: usize,
    /// A batch-job API job's items, batches, formats and retry policy; `None`: a Bedrock job.
    pub batch: Option<BatchJobOptions>,
    /// An OpenAI batch's endpoint and model: its lines are `{custom_id, method, url, body}`.
    pub openai: Option<OpenAiRun>,
    /// What the job's final message starts with (the server's catch-all model says it ran
    /// the job).
    pub note: Option<String>,
}

/// What the engine needs of an OpenAI batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenAiRun {
    /// The batch's endpoint (`/v1/chat/completions`, `/v1/embeddings`).
    pub endpoint: String,
    /// The `body.model` every line names.
    pub model: String,
    /// Seconds after publication its output and error files expire (`None`: never).
    pub output_expires_after: Option<i64>,
    /// The batch's account: its output and error files are that account's.
    pub account_id: String,
}

impl JobSpec {
    /// Records in flight per job when neither the model nor the caller says.
    pub const DEFAULT_CONCURRENCY: usize = 16;

    /// Most items a batch job has in flight, whatever its batch size × batches ask for.
    pub const MAX_BATCH_CONCURRENCY: usize = 4096;

    /// Whether a user stop or the timeout still gives every input line its output line (a
    /// batch job's item result, an OpenAI batch's `batch_cancelled`/`batch_expired` line).
    pub fn answers_every_line(&self) -> bool {
        self.batch.is_some() || self.openai.is_some()
    }

    /// The file extension of the job's input files.
    pub fn input_extension(&self) -> &'static str {
        self.batch
            .as_ref()
            .map_or("jsonl", |b| b.input_format.extension())
    }

    /// The spec of a stored job: its inputs and output parsed (stored URIs are absolute), and
    /// the record options and concurrency of the model it names.
    pub fn for_job(
        job: &Job,
        records: RecordOptions,
        concurrency: usize,
    ) -> Result<Self, StorageError> {
        let r = &job.request;
        let batch = r.dialect.batch_job().cloned();
        let concurrency = match &batch {
            Some(b) => (b.batch_size as usize)
                .saturating_mul(b.max_concurrent_batches as usize)
                .clamp(1, Self::MAX_BATCH_CONCURRENCY),
            None => concurrency,
        };
        let openai = r.dialect.openai().map(|o| OpenAiRun {
            endpoint: o.endpoint.clone(),
            model: r.model_id.clone(),
            output_expires_after: o.output_expires_after_seconds,
            account_id: r.account_id.clone(),
        });
        Ok(Self {
            job_id: job.id.clone(),
            model_id: r.model_id.clone(),
            inputs: r
                .inputs
                .iter()
                .map(|uri| StorageUri::parse(uri))
                .collect::<Result<_, _>>()?,
            output: StorageUri::parse(&r.output)?,
            invocation_type: r.invocation_type,
            records,
            concurrency,
            batch,
            openai,
            note: None,
        })
    }
}

/// How one model's records are validated, translated and sent; from the model's config.
#[derive(Debug, Clone)]
pub struct RecordOptions {
    pub converse: ConverseOptions,
    /// The InvokeModel body format (from the model id's prefix or the config's `format`).
    /// `None`: the model takes no InvokeModel records.
    pub family: Option<ModelFamily>,
    /// Embedding records sent in one backend call, at most.
    pub embed_batch_size: usize,
    /// What the model's tokens cost, for the job's result analysis; `None`: not configured.
    pub prices: Option<Prices>,
    /// Start records whose prompts begin alike one after another, within the reorder window
    /// (output order unchanged), so a server's prompt cache hits (`run::group`). The config
    /// sets it for OpenAI-compatible models (default [`Self::DEFAULT_GROUP_PREFIXES`]); off
    /// here, so a caller that says nothing runs records in input order.
    pub group_prefixes: bool,
}

impl RecordOptions {
    /// The default embedding batch: large enough to amortise a call, small enough that
    /// one slow batch does not hold many records.
    pub const DEFAULT_EMBED_BATCH: usize = 16;

    /// `group_prefixes` of an OpenAI-compatible model whose config says nothing: off. It
    /// doubles throughput on a server whose prompt cache is per slot (llama-server
    /// `--cache-ram 0`), but llama-server's default host-memory cache gains nothing from it,
    /// and a group's first records reach every slot at once, each computing the same new
    /// prefix (docs/benchmarks.md).
    pub const DEFAULT_GROUP_PREFIXES: bool = false;
}

impl Default for RecordOptions {
    fn default() -> Self {
        Self {
            converse: ConverseOptions::default(),
            family: None,
            embed_batch_size: Self::DEFAULT_EMBED_BATCH,
            prices: None,
            group_prefixes: false,
        }
    }
}

/// Where a job stands, for progress displays.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    pub status: JobStatus,
    pub counters: Counters,
    /// Processing times of the records this run has finished (not those before a resume).
    pub timing: Option<TimingSummary>,
}

impl Progress {
    pub fn new(status: JobStatus, counters: Counters) -> Self {
        Self {
            status,
            counters,
            timing: None,
        }
    }
}

/// Why a running job is asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// StopModelInvocationJob, or Ctrl-C on `batchd run`: ends `Stopped`.
    User,
    /// The job's timeout passed: ends `PartiallyCompleted`.
    Timeout,
    /// The process is shutting down: the job stays `InProgress`, to be resumed.
    Shutdown,
    /// Another instance took over this run's chunk or job (or may have: its lease ran out
    /// before a write): nothing more starts or is written, and a chunk's commit is refused.
    LeaseLost,
}

impl StopReason {
    /// The job is not over: it goes on after a restart (a shutdown) or on the instance that
    /// took it over (a lost lease), so nothing of it is finished here.
    pub fn goes_on(self) -> bool {
        matches!(self, Self::Shutdown | Self::LeaseLost)
    }
}

/// Asks a running job to stop, once, for one reason.
#[derive(Debug, Clone, Default)]
pub struct StopSignal {
    token: CancellationToken,
    reason: Arc<std::sync::OnceLock<StopReason>>,
    /// When set, the run's writes are its own only until then: a job lease (shared mode),
    /// moved on by each renewal. Past it, another instance may own the job's output.
    writes_until: Arc<std::sync::Mutex<Option<Instant>>>,
}

impl StopSignal {
    pub fn new() -> Self {
        Self::default()
    }

    /// The first reason given wins.
    pub fn stop(&self, reason: StopReason) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    pub fn is_stopped(&self) -> bool {
        self.token.is_cancelled()
    }

    pub fn reason(&self) -> Option<StopReason> {
        self.reason.get().copied()
    }

    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    /// The run may write until `until` (a lease just taken or renewed).
    pub fn hold_until(&self, until: Instant) {
        *self
            .writes_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(until);
    }

    /// Whether the run may still write: not once the lease it writes under has run out
    /// unrenewed (a process paused or cut off past it), when the run is stopped as
    /// `LeaseLost` instead. Checked before each write, so a run that wakes up late writes
    /// nothing over the output of the instance that took its job over.
    pub fn may_write(&self) -> bool {
        let until = *self
            .writes_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if until.is_none_or(|t| Instant::now() < t) {
            return true;
        }
        if !self.is_stopped() {
            tracing::warn!("the job's lease ran out before this write: writing nothing more");
        }
        self.stop(StopReason::LeaseLost);
        false
    }
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

/// Where a job's manifest goes: Bedrock's `<out>/<jobId>/manifest.json.out`; a batch job's
/// beside its folder (`<out>/<jobId>.manifest.json`), since its readers load every object in
/// the folder as results.
pub fn manifest_uri(output: &StorageUri, job_id: &JobId, batch_job: bool) -> StorageUri {
    if batch_job {
        output.join(&format!("{job_id}.manifest.json"))
    } else {
        output.join(&format!("{job_id}/manifest.json.out"))
    }
}

fn job_file(file: &InputFile) -> JobFile {
    JobFile {
        uri: file.uri.to_string(),
        relative: file.relative.clone(),
        size: file.size,
        version: file.version.clone(),
    }
}

/// One job as a caller hands it to [`Engine::run_job`] or [`Engine::execute_job`]: what it
/// is, where its state is kept, where its progress goes and how it is told to stop.
#[derive(Clone, Copy)]
pub struct JobContext<'a> {
    pub spec: &'a JobSpec,
    pub store: &'a dyn JobStore,
    pub progress: &'a watch::Sender<Progress>,
    pub stop: &'a StopSignal,
}

/// What every step of one job's execution needs: the engine, the job, where its status goes
/// and how it is told to stop.
pub(crate) struct JobRun<'a> {
    pub engine: &'a Engine,
    pub spec: &'a JobSpec,
    pub store: &'a dyn JobStore,
    pub progress: &'a watch::Sender<Progress>,
    pub stop: &'a StopSignal,
    /// Set when this run is one chunk of a job shared by instances.
    pub chunk: Option<&'a chunks::ChunkRun>,
}

impl JobRun<'_> {
    /// Ends the running job as `Failed` because of `error`, and returns that error.
    async fn fail<T>(&self, error: EngineError) -> Result<T, EngineError> {
        let message = format!("job failed while running: {error}");
        self.store
            .transition(&self.spec.job_id, JobStatus::Failed, Some(&message))
            .await?;
        self.progress
            .send_replace(Progress::new(JobStatus::Failed, Counters::default()));
        Err(error)
    }
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

    /// Runs a `Submitted` job to its end in this process: validation, then execution.
    pub async fn run_job(
        &self,
        job: JobContext<'_>,
        backend: Arc<dyn ModelBackend>,
    ) -> Result<JobOutcome, EngineError> {
        let started = Instant::now();
        if let Some(failed) = self.validate_job(job.spec, job.store, job.progress).await? {
            return Ok(JobOutcome {
                elapsed: started.elapsed(),
                ..failed
            });
        }
        let outcome = self.execute_job(job, backend).await?;
        Ok(JobOutcome {
            elapsed: started.elapsed(),
            ..outcome
        })
    }

    /// The validation phase: `Submitted` (or `Validating`, when resumed) → `Validating` →
    /// `Scheduled` with the record count stored, or `Failed` with the defects. Returns the
    /// outcome when the job failed. If the job's status changed meanwhile (a stop), that wins.
    pub async fn validate_job(
        &self,
        spec: &JobSpec,
        store: &dyn JobStore,
        progress: &watch::Sender<Progress>,
    ) -> Result<Option<JobOutcome>, EngineError> {
        let started = Instant::now();
        let output_dir = spec.output.join(spec.job_id.as_str());
        let job = store
            .get(&spec.job_id)
            .await?
            .ok_or_else(|| StoreError::NotFound(spec.job_id.clone()))?;
        match job.status {
            JobStatus::Submitted => {
                store
                    .transition(&spec.job_id, JobStatus::Validating, None)
                    .await?;
            }
            // Resumed, or stopped meanwhile (the final transition then fails and the caller
            // finishes the stop).
            JobStatus::Validating | JobStatus::Stopping => {}
            // Validated already: a stale second validation must not touch it.
            _ => return Ok(None),
        }
        progress.send_replace(Progress::new(JobStatus::Validating, Counters::default()));
        let failed = |message: String, validation: Option<ValidationReport>| JobOutcome {
            status: JobStatus::Failed,
            counters: Counters::default(),
            message: Some(message),
            validation,
            elapsed: started.elapsed(),
            output_dir: output_dir.clone(),
        };
        let fail = |outcome: JobOutcome| async move {
            store
                .transition(&spec.job_id, JobStatus::Failed, outcome.message.as_deref())
                .await?;
            progress.send_replace(Progress::new(JobStatus::Failed, Counters::default()));
            Ok::<_, EngineError>(Some(outcome))
        };
        if let Err(e) = self.probe_output(spec).await {
            return fail(failed(
                format!("validation failed: cannot write the output location: {e}"),
                None,
            ))
            .await;
        }
        let report = match self.validate(spec).await {
            Ok(report) => report,
            Err(EngineError::Store(e)) => return Err(EngineError::Store(e)),
            Err(e) => return fail(failed(format!("validation failed: {e}"), None)).await,
        };
        if !report.is_valid() {
            let message = report.failure_message(self.config.max_defects_in_message);
            return fail(failed(message, Some(report))).await;
        }
        // Execution and every resume read exactly these files, in this order.
        let files: Vec<JobFile> = report.files.iter().map(job_file).collect();
        store.set_job_files(&spec.job_id, &files).await?;
        let total = report.total_records;
        let counters = Counters {
            total,
            ..Counters::default()
        };
        store
            .checkpoint(
                &spec.job_id,
                &Checkpoint {
                    counters,
                    ..Checkpoint::default()
                },
            )
            .await?;
        store
            .transition(&spec.job_id, JobStatus::Scheduled, None)
            .await?;
        progress.send_replace(Progress::new(JobStatus::Scheduled, counters));
        Ok(None)
    }

    /// The input files the job validated, each checked to be still there, the same size and
    /// the same version. A job validated by a batchd that kept no list lists its inputs again.
    async fn validated_files(
        &self,
        spec: &JobSpec,
        store: &dyn JobStore,
    ) -> Result<Vec<InputFile>, EngineError> {
        let recorded = store.job_files(&spec.job_id).await?;
        if recorded.is_empty() {
            tracing::warn!(job = %spec.job_id, "no validated file list recorded; listing the inputs again");
            return self.list_inputs(&spec.inputs, spec.input_extension()).await;
        }
        let mut files = Vec::with_capacity(recorded.len());
        for f in recorded {
            files.push(self.verified_file(f).await?);
        }
        Ok(files)
    }

    /// A recorded input file, checked to be still the version validated.
    async fn verified_file(&self, f: JobFile) -> Result<InputFile, EngineError> {
        let uri = StorageUri::parse(&f.uri)
            .map_err(|e| EngineError::Input(format!("recorded input file {}: {e}", f.uri)))?;
        let file = InputFile {
            uri,
            relative: f.relative,
            size: f.size,
            version: f.version,
        };
        self.storage.verify_input(&file).await?;
        Ok(file)
    }

    /// Writes and removes a small object where the output goes, so that a missing bucket or
    /// a read-only folder fails the job before any record runs.
    async fn probe_output(&self, spec: &JobSpec) -> Result<(), StorageError> {
        let probe = spec
            .output
            .join(&format!(".batchd-write-check-{}", spec.job_id));
        self.storage
            .put(&probe, bytes::Bytes::from_static(b"ok"))
            .await?;
        self.storage.delete(&probe).await
    }

    /// The execution phase: `Scheduled` → `InProgress`, or an `InProgress`/`Stopping` job
    /// resumed from its checkpoint, to `Completed`, `Stopped` or `PartiallyCompleted`. A
    /// shutdown stop leaves it `InProgress` with a fresh checkpoint.
    pub async fn execute_job(
        &self,
        context: JobContext<'_>,
        backend: Arc<dyn ModelBackend>,
    ) -> Result<JobOutcome, EngineError> {
        let started = Instant::now();
        let JobContext {
            spec,
            store,
            progress,
            stop,
        } = context;
        let job = JobRun {
            engine: self,
            spec,
            store,
            progress,
            stop,
            chunk: None,
        };
        let resume_from = self.start_execution(&job).await?;
        let files = match self.validated_files(spec, store).await {
            Ok(files) => files,
            // A changed input fails the job; a storage fault leaves it to resume.
            Err(e) if e.fails_the_job() => {
                // Nothing is run or removed: what earlier runs wrote stays where it is.
                return job.fail(e).await;
            }
            Err(e) => return Err(e),
        };
        let mut end = match run::run_records(&job, &files, resume_from, backend).await {
            Ok(end) => end,
            Err(e) if stop.reason().is_some_and(StopReason::goes_on) => return Err(e),
            Err(e) => return job.fail(e).await,
        };
        if stop.reason().is_none() {
            store.mark_finalizing(&spec.job_id).await?;
        }
        if spec.batch.is_some()
            && !stop.reason().is_some_and(StopReason::goes_on)
            && let Err(e) = self.write_error_log(spec, &files).await
        {
            tracing::warn!(job = %spec.job_id, error = %e, "cannot write the error log");
        }
        if spec.openai.is_some()
            && !stop.reason().is_some_and(StopReason::goes_on)
            && let Err(e) = self.publish_openai_files(spec, store, &files).await
        {
            // Without its files the batch cannot be read: fail it rather than complete it.
            return job.fail(e).await;
        }
        let (status, message) = self.end_execution(&job, &mut end).await?;
        Ok(JobOutcome {
            status,
            counters: end.counters,
            message: Some(message),
            validation: None,
            elapsed: started.elapsed(),
            output_dir: spec.output.join(spec.job_id.as_str()),
        })
    }

    /// An OpenAI batch's output file (2xx lines) and error file (the rest), split from the
    /// job's output in order, written beside its folder and published as files
    /// (`OpenAiBatchOptions::output_file_id` / `error_file_id`); an empty one is not published.
    async fn publish_openai_files(
        &self,
        spec: &JobSpec,
        store: &dyn JobStore,
        files: &[InputFile],
    ) -> Result<(), EngineError> {
        let output_uri = spec.output.join(&format!("{}.output.jsonl", spec.job_id));
        let error_uri = spec.output.join(&format!("{}.error.jsonl", spec.job_id));
        let mut output = self.storage.create(&output_uri)?;
        let mut errors = self.storage.create(&error_uri)?;
        let (mut output_bytes, mut error_bytes) = (0u64, 0u64);
        for file in files {
            let uri = run::output_uri(spec, file);
            let mut lines = self
                .storage
                .read_lines(&uri, self.config.max_line_bytes)
                .await?;
            while let Some((_, line)) = lines.next_line().await? {
                let text = String::from_utf8_lossy(&line);
                if text.trim().is_empty() {
                    continue;
                }
                let (writer, bytes) = if batchd_formats::openai::is_success_line(&text) {
                    (&mut output, &mut output_bytes)
                } else {
                    (&mut errors, &mut error_bytes)
                };
                writer.write(&line).await?;
                writer.write(b"\n").await?;
                *bytes += line.len() as u64 + 1;
            }
        }
        output.finish().await?;
        errors.finish().await?;
        let published = [
            (
                OpenAiBatchOptions::output_file_id(&spec.job_id),
                output_uri,
                output_bytes,
            ),
            (
                OpenAiBatchOptions::error_file_id(&spec.job_id),
                error_uri,
                error_bytes,
            ),
        ];
        for (id, uri, bytes) in published {
            if bytes == 0 {
                self.storage.delete(&uri).await?;
                continue;
            }
            let Some(openai) = &spec.openai else { break };
            let expires_at = openai
                .output_expires_after
                .map(|seconds| batchd_store::now_ms() / 1000 + seconds);
            let filename = format!("batch_{}_{}.jsonl", spec.job_id, &id[id.len() - 3..]);
            let record = batchd_core::FileRecord {
                id,
                account_id: openai.account_id.clone(),
                bytes,
                created_at: files::now_secs(),
                expires_at,
                filename,
                purpose: batchd_core::PURPOSE_BATCH_OUTPUT.into(),
                uri: uri.to_string(),
            };
            files::register_file(store, record).await?;
        }
        Ok(())
    }

    /// A batch job's error log, `<out>/<jobId>.errors.jsonl`: one line per failed item (file,
    /// index, id, attempts, error), read back from the output so that it holds across resumes.
    async fn write_error_log(
        &self,
        spec: &JobSpec,
        files: &[InputFile],
    ) -> Result<u64, EngineError> {
        let uri = spec.output.join(&format!("{}.errors.jsonl", spec.job_id));
        let mut log = self.storage.create(&uri)?;
        let mut logged = 0;
        for file in files {
            let output = run::output_uri(spec, file);
            let name = output.file_name().unwrap_or_default().to_owned();
            let mut lines = match self
                .storage
                .read_lines(&output, self.config.max_line_bytes)
                .await
            {
                Ok(lines) => lines,
                // Not written: the job stopped before it.
                Err(StorageError::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            let mut index = 0;
            while let Some((line_no, line)) = lines.next_line().await? {
                let text = String::from_utf8_lossy(&line);
                if !batchd_formats::batch_job::is_result_line(&text) {
                    continue;
                }
                let entry = batchd_formats::batch_job::error_log_line(&name, index, &text)
                    .map_err(|d| EngineError::Input(format!("{output}:{line_no}: {d}")))?;
                if let Some(entry) = entry {
                    log.write(entry.as_bytes()).await?;
                    logged += 1;
                }
                index += 1;
            }
        }
        log.finish().await?;
        Ok(logged)
    }

    /// Moves the job to `InProgress` (or takes up a stop or a resume) and returns the
    /// checkpoint to run from; a job that ended or is not validated is `NotRunnable`.
    async fn start_execution(&self, job: &JobRun<'_>) -> Result<Checkpoint, EngineError> {
        let id = &job.spec.job_id;
        let stored = job
            .store
            .get(id)
            .await?
            .ok_or_else(|| StoreError::NotFound(id.clone()))?;
        match stored.status {
            JobStatus::Scheduled => {
                job.store
                    .transition(id, JobStatus::InProgress, None)
                    .await?;
            }
            JobStatus::Stopping => job.stop.stop(StopReason::User),
            JobStatus::InProgress => {}
            status => {
                return Err(EngineError::NotRunnable {
                    job: id.clone(),
                    status,
                });
            }
        }
        job.progress.send_replace(Progress::new(
            JobStatus::InProgress,
            stored.checkpoint.counters,
        ));
        Ok(stored.checkpoint)
    }

    /// After the records: a shutdown leaves the job `InProgress` for its resume; otherwise
    /// the manifest is written and the job ends `Completed`, `PartiallyCompleted` (timeout)
    /// or `Stopped`. Returns the status and the message stored with it.
    async fn end_execution(
        &self,
        job: &JobRun<'_>,
        end: &mut run::RunEnd,
    ) -> Result<(JobStatus, String), EngineError> {
        let (spec, store, counters) = (job.spec, job.store, end.counters);
        if job.stop.reason().is_some_and(StopReason::goes_on) {
            let abandoned = match end.abandoned {
                0 => String::new(),
                n => format!(" ({n} records in flight past the grace period run again)"),
            };
            return Ok((
                JobStatus::InProgress,
                format!("interrupted by shutdown; resumes on restart{abandoned}"),
            ));
        }
        let manifest = batchd_formats::manifest::Manifest::from(&counters);
        self.storage
            .put(
                &manifest_uri(&spec.output, &spec.job_id, spec.batch.is_some()),
                manifest.to_json().into(),
            )
            .await?;
        // Before the final status, so a job seen ended has its analysis beside its folder.
        self.write_analysis(job, end.tally.take()).await;
        let mut summary = format!(
            "{} of {} records processed: {} succeeded, {} failed",
            counters.processed, counters.total, counters.success, counters.error
        );
        if end.unreachable > 0 {
            summary = format!(
                "the backend was unreachable (connections refused for more than {} s); {summary}",
                self.config.backend_down.as_secs()
            );
        }
        if let Some(note) = &spec.note {
            summary = format!("{note}; {summary}");
        }
        let (status, message) = match job.stop.reason() {
            _ if end.complete => (JobStatus::Completed, summary),
            Some(StopReason::Timeout) => (
                JobStatus::PartiallyCompleted,
                format!("the job timed out; {summary}"),
            ),
            _ => {
                if store
                    .get(&spec.job_id)
                    .await?
                    .is_some_and(|j| j.status != JobStatus::Stopping)
                {
                    store
                        .transition(&spec.job_id, JobStatus::Stopping, None)
                        .await?;
                }
                (JobStatus::Stopped, format!("stopped; {summary}"))
            }
        };
        store
            .transition(&spec.job_id, status, Some(&message))
            .await?;
        job.progress.send_replace(Progress::new(status, counters));
        Ok((status, message))
    }

    /// Writes `<output>/<jobId>.analysis.json` from the run's `tally` when it has one, else
    /// from the output folder read back; a failure is logged, never the job's.
    async fn write_analysis(&self, job: &JobRun<'_>, tally: Option<Tally>) {
        let spec = job.spec;
        let stored = match job.store.get(&spec.job_id).await {
            Ok(stored) => stored,
            Err(e) => {
                tracing::warn!(job = %spec.job_id, "no result analysis: reading the job: {e}");
                return;
            }
        };
        let now = batchd_store::now_ms();
        let context = AnalysisContext {
            job_id: Some(spec.job_id.to_string()),
            model_id: stored.as_ref().map(|j| j.request.model_id.clone()),
            output_location: spec.output.join(spec.job_id.as_str()).to_string(),
            wall_time_seconds: stored.map(|j| (now - j.submit_time_ms).max(0) as f64 / 1000.0),
            prices: spec.records.prices,
        };
        let written = match tally {
            Some(tally) => {
                let analysis = tally.finish(context);
                analysis::write_analysis(
                    &self.storage,
                    &spec.output,
                    spec.job_id.as_str(),
                    analysis,
                )
                .await
            }
            None => {
                analysis::write_job_analysis(
                    &self.storage,
                    &spec.output,
                    spec.job_id.as_str(),
                    self.config.max_line_bytes,
                    context,
                )
                .await
            }
        };
        if let Err(e) = written {
            tracing::warn!(job = %spec.job_id, "the result analysis was not written: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_writes_only_while_the_lease_it_writes_under_is_held() {
        let signal = StopSignal::new();
        // No lease (one machine, or a chunk whose part is its own): always.
        assert!(signal.may_write());
        signal.hold_until(Instant::now() + Duration::from_secs(60));
        assert!(signal.may_write());
        assert!(!signal.is_stopped());
        // Woken up past the lease: nothing is written, and the run stops.
        signal.hold_until(Instant::now() - Duration::from_millis(1));
        assert!(!signal.may_write());
        assert_eq!(signal.reason(), Some(StopReason::LeaseLost));
        // A renewal that still succeeds (no one took the job) lets the records already in
        // flight be written, but the run stays stopped: it ends and the job is resumed.
        signal.hold_until(Instant::now() + Duration::from_secs(60));
        assert!(signal.may_write());
        assert_eq!(signal.reason(), Some(StopReason::LeaseLost));
    }
}
