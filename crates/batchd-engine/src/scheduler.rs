//! The server's job scheduler: drives jobs through their lifecycle from the job store, so that
//! the store, not memory, is the truth and a restarted server picks up where it was.
//!
//! Each pass: jobs `Scheduled` past their expiration → `Expired`; `Submitted` jobs are
//! validated (a few at a time); `Scheduled` jobs start, oldest first, while fewer than
//! `max_running_jobs` run. A running job past its expiration is stopped as `PartiallyCompleted`.
//! On start, jobs left `InProgress`, `Stopping` or `Validating` are resumed.
//!
//! With `cluster` set (instances sharing one store), `shared` takes over the passes: leases
//! instead of resumes, and Bedrock jobs as chunks.

mod shared;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use batchd_backends::ModelBackend;
use batchd_core::{
    Counters, Job, JobArn, JobId, JobOrigin, JobRequest, JobStatus, ModelId, NewJob,
};
use batchd_storage::StorageUri;
use batchd_store::{ACTIVE_STATUSES, JobStore, SharedStore, StoreError, now_ms};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use shared::ClusterConfig;

use crate::{
    Engine, EngineError, JobContext, JobSpec, Progress, RecordOptions, StopReason, StopSignal,
};

/// A model jobs may name, with the backend that serves it.
#[derive(Clone)]
pub struct ModelEntry {
    pub backend: Arc<dyn ModelBackend>,
    /// The server the model's concurrency limits, as instances sharing a store name it (its
    /// URL): instances naming the same one share the limit. `None`: a backend of this
    /// instance alone (an embedded model), whose limit is this instance's.
    pub shared_backend: Option<String>,
    /// Records in flight per job.
    pub concurrency: usize,
    pub records: RecordOptions,
}

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Jobs executing at once.
    pub max_running_jobs: usize,
    /// Submitted + running jobs per model; more is ServiceQuotaExceeded.
    pub max_active_jobs_per_model: u64,
    /// One "hour" of `timeoutDurationInHours` (shorter in tests).
    pub timeout_unit: Duration,
    /// `timeoutDurationInHours` when a request has none.
    pub default_timeout_hours: u32,
    /// Validations at once.
    pub max_validating_jobs: usize,
    /// The region job ARNs carry (their account is the caller's).
    pub region: String,
    /// How often the store is looked at when nothing wakes the scheduler.
    pub poll_interval: Duration,
    /// A configured model that runs any Bedrock model id no configured model answers to
    /// (local development; off by default). The job's message says so.
    pub catch_all_model: Option<String>,
    /// Set when instances share the store: this one's lease identity and chunk size.
    pub cluster: Option<ClusterConfig>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_running_jobs: 2,
            max_active_jobs_per_model: 20,
            timeout_unit: Duration::from_secs(3600),
            default_timeout_hours: 24,
            max_validating_jobs: 2,
            region: "us-east-1".into(),
            poll_interval: Duration::from_millis(500),
            catch_all_model: None,
            cluster: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("{0}")]
    UnknownModel(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    QuotaExceeded(String),
    #[error("job {0} not found")]
    NotFound(JobId),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    store: SharedStore,
    models: HashMap<String, ModelEntry>,
    config: SchedulerConfig,
    /// Executing jobs and how to stop each.
    running: Mutex<HashMap<JobId, StopSignal>>,
    /// What each executing job has written so far (fresher than the store's checkpoints).
    live: Mutex<HashMap<JobId, watch::Receiver<Progress>>>,
    validating: Mutex<HashSet<JobId>>,
    /// Serialises status decisions (start, stop) so they never race each other.
    decisions: tokio::sync::Mutex<()>,
    /// Serialises creates: the name and per-model checks and the insert are one step.
    creates: tokio::sync::Mutex<()>,
    wake: Notify,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// Shared mode: per model key, the live instances using the same backend at the last
    /// heartbeat (they share the model's concurrency).
    instances: HashMap<String, Arc<AtomicUsize>>,
}

/// What a job run by the catch-all model says about it.
fn catch_all_note(model_id: &str, key: &str) -> String {
    format!(
        "modelId {model_id:?} is not a configured model: it runs on {key:?}, the catch-all model \
         ([server] catch_all_model)"
    )
}

/// The span of a job's validation or execution: every log line of it (and of its records,
/// whose tasks inherit it) names the job and its model.
fn job_span(job: &Job) -> tracing::Span {
    tracing::info_span!("job", job_id = %job.id, model_id = %job.request.model_id)
}

/// Stops a job's run with `Timeout` when its expiration passes; stopped when dropped.
struct TimeoutTimer(Option<tokio::task::JoinHandle<()>>);

impl TimeoutTimer {
    fn start(job: &Job, signal: &StopSignal) -> Self {
        Self(job.job_expiration_ms.map(|at| {
            let signal = signal.clone();
            tokio::spawn(async move {
                let wait = u64::try_from(at - now_ms()).unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(wait)).await;
                signal.stop(StopReason::Timeout);
            })
        }))
    }
}

impl Drop for TimeoutTimer {
    fn drop(&mut self) {
        if let Some(timer) = &self.0 {
            timer.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Scheduler {
    pub fn new(
        engine: Engine,
        store: SharedStore,
        models: HashMap<String, ModelEntry>,
        config: SchedulerConfig,
    ) -> Self {
        let instances = models
            .keys()
            .map(|key| (key.clone(), Arc::new(AtomicUsize::new(1))))
            .collect();
        Self {
            inner: Arc::new(Inner {
                engine,
                store,
                models,
                config,
                running: Mutex::new(HashMap::new()),
                live: Mutex::new(HashMap::new()),
                validating: Mutex::new(HashSet::new()),
                decisions: tokio::sync::Mutex::new(()),
                creates: tokio::sync::Mutex::new(()),
                wake: Notify::new(),
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
                instances,
            }),
        }
    }

    pub fn store(&self) -> &dyn JobStore {
        self.inner.store.as_ref()
    }

    /// Shared mode: how many live instances (this one included) use the backend of the model
    /// configured as `model_key`, as of this instance's last heartbeat; they split its
    /// concurrency. `None` when the store is not shared or the backend is this instance's own.
    pub fn instances_sharing(&self, model_key: &str) -> Option<usize> {
        let count = self.inner.instances.get(model_key)?;
        Some(count.load(std::sync::atomic::Ordering::Relaxed))
    }

    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The counters and processing times of a job this server is executing now, as its
    /// records are written (the store has them only as of the last checkpoint).
    pub fn live_progress(&self, id: &JobId) -> Option<Progress> {
        lock(&self.inner.live).get(id).map(|rx| *rx.borrow())
    }

    /// Starts the scheduling loop (resuming unfinished jobs first).
    pub fn start(&self) {
        let this = self.clone();
        self.inner.tasks.spawn(async move { this.run_loop().await });
    }

    /// Stops taking work, asks running jobs to checkpoint and stop (they stay `InProgress`),
    /// and waits for every task.
    pub async fn shutdown(&self) {
        {
            let running = lock(&self.inner.running);
            self.inner.shutdown.cancel();
            for signal in running.values() {
                signal.stop(StopReason::Shutdown);
            }
        }
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        if let Some(cluster) = &self.inner.config.cluster
            && let Err(e) = self.inner.store.leases().leave(&cluster.instance_id).await
        {
            tracing::warn!(error = %e, "cannot sign this instance off");
        }
    }

    /// Creates a job of the server (the request's origin is `Api`; a `Run` request is refused,
    /// since this scheduler would never run it).
    pub async fn create(&self, mut req: JobRequest) -> Result<Job, SchedulerError> {
        if req.origin != JobOrigin::Api {
            return Err(SchedulerError::BadRequest(format!(
                "a job of origin {} is not the server's to run",
                req.origin
            )));
        }
        // The API sets it from the authenticated caller; a job without one would be nobody's.
        if !(req.account_id.len() == 12 && req.account_id.bytes().all(|b| b.is_ascii_digit())) {
            return Err(SchedulerError::BadRequest(format!(
                "account id {:?} is not 12 digits",
                req.account_id
            )));
        }
        let _creates = self.inner.creates.lock().await;
        let store = &self.inner.store;
        if let Some(token) = &req.client_request_token
            && let Some(existing) = store.find_by_token(&req.account_id, token).await?
        {
            return Ok(existing);
        }
        let Some(model_key) = self.model_key(&req.model_id) else {
            let mut known: Vec<&str> = self.inner.models.keys().map(String::as_str).collect();
            known.sort_unstable();
            return Err(SchedulerError::UnknownModel(format!(
                "modelId {:?} is not a model of this server; configured models: {}",
                req.model_id,
                known.join(", ")
            )));
        };
        let (input_field, output_field) = if req.dialect.batch_job().is_some() {
            (
                "inputConfiguration.inputLocation",
                "outputConfiguration.outputLocation",
            )
        } else {
            ("inputDataConfig", "outputDataConfig")
        };
        let uris = req.inputs.iter().map(|uri| (input_field, uri));
        for (field, uri) in uris.chain([(output_field, &req.output)]) {
            let parsed = StorageUri::parse(uri)
                .map_err(|e| SchedulerError::BadRequest(format!("{field}: {e}")))?;
            // A caller of the server names buckets, never the server's own files. (An OpenAI
            // batch's locations are the server's files root: the API made them, not the caller.)
            if req.dialect.openai().is_none() && !matches!(parsed, StorageUri::S3 { .. }) {
                return Err(SchedulerError::BadRequest(format!(
                    "{field}: {uri:?} is not an s3:// URI (the server's APIs take no local paths)"
                )));
            }
        }
        let batch_job = req.dialect.batch_job().is_some();
        if !batch_job
            && let Some(active) = store
                .find_active_by_name(JobOrigin::Api, &req.account_id, &req.name)
                .await?
        {
            return Err(SchedulerError::Conflict(format!(
                "The provided job name is currently in use: job {} ({}) is {}",
                active.id, active.request.name, active.status
            )));
        }
        // Per configured model, whichever form of its id (ARN, profile id) each job used.
        let active = store
            .list_in_status(JobOrigin::Api, &ACTIVE_STATUSES)
            .await?
            .iter()
            .filter(|job| self.model_key(&job.request.model_id) == Some(model_key))
            .count();
        let active = u64::try_from(active).unwrap_or(u64::MAX);
        if active >= self.inner.config.max_active_jobs_per_model {
            return Err(SchedulerError::QuotaExceeded(format!(
                "Sum of in-progress and submitted batch inference jobs using a base model for {model_key} \
                 ({}) reached",
                self.inner.config.max_active_jobs_per_model
            )));
        }
        let id = crate::ids::new_job_id()
            .map_err(|e| SchedulerError::Internal(format!("no randomness for a job id: {e}")))?;
        // The caller's account, not the server's: the ARN says whose job it is.
        let arn = JobArn::new(&self.inner.config.region, &req.account_id, id.clone());
        // A batch job's timeout counts from its start.
        let job_expiration_ms = if batch_job {
            None
        } else {
            let hours = req
                .timeout_hours
                .unwrap_or(self.inner.config.default_timeout_hours);
            req.timeout_hours = Some(hours);
            let timeout_ms = self.inner.config.timeout_unit.as_millis() as i64 * i64::from(hours);
            Some(now_ms() + timeout_ms)
        };
        let token = req.client_request_token.clone();
        let req_account = req.account_id.clone();
        let new_job = NewJob {
            id,
            arn: arn.to_string(),
            request: req,
            job_expiration_ms,
        };
        let job = match store.create(new_job).await {
            Ok(job) => job,
            // Two creates with one token raced: the first one's job is the answer.
            Err(e) => match &token {
                Some(token) => store.find_by_token(&req_account, token).await?.ok_or(e)?,
                None => return Err(e.into()),
            },
        };
        let job = match self.caught_by_catch_all(&job.request.model_id) {
            Some(key) if job.message.is_none() => {
                let message = catch_all_note(&job.request.model_id, key);
                store.set_message(&job.id, &message).await?;
                self.stored(&job.id).await?
            }
            _ => job,
        };
        self.inner.wake.notify_one();
        Ok(job)
    }

    /// The catch-all model's name when only it answers to `model_id`.
    fn caught_by_catch_all(&self, model_id: &str) -> Option<&str> {
        let configured = ModelId::new(model_id).resolve(|id| self.inner.models.get(id));
        configured
            .is_none()
            .then(|| self.catch_all(model_id))
            .flatten()
    }

    async fn stored(&self, id: &JobId) -> Result<Job, SchedulerError> {
        self.inner
            .store
            .get(id)
            .await?
            .ok_or_else(|| SchedulerError::NotFound(id.clone()))
    }

    /// Starts a batch job that waits for its start; its timeout counts from now. A job that
    /// started already, or ended, is a Conflict.
    pub async fn start_job(&self, id: &JobId) -> Result<Job, SchedulerError> {
        let _decisions = self.inner.decisions.lock().await;
        let store = &self.inner.store;
        let job = self.stored(id).await?;
        let Some(batch) = job.request.dialect.batch_job() else {
            return Err(SchedulerError::BadRequest(format!(
                "job {id} is a Bedrock job: it started when it was created"
            )));
        };
        if job.status != JobStatus::Created {
            return Err(SchedulerError::Conflict(format!(
                "job {id} was started already (it is {})",
                job.status
            )));
        }
        let timeout_ms =
            i64::try_from(batch.timeout_seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
        let job = match store
            .start(id, Some(now_ms().saturating_add(timeout_ms)))
            .await
        {
            Ok(job) => job,
            Err(StoreError::Transition { .. }) => {
                return Err(SchedulerError::Conflict(format!(
                    "job {id} was started already"
                )));
            }
            Err(e) => return Err(e.into()),
        };
        self.inner.wake.notify_one();
        Ok(job)
    }

    /// Stops a job that has not ended. Running jobs finish their in-flight records, write
    /// what is done and the manifest; jobs not started yet stop at once.
    pub async fn stop(&self, id: &JobId) -> Result<(), SchedulerError> {
        let _decisions = self.inner.decisions.lock().await;
        let store = &self.inner.store;
        let job = self.stored(id).await?;
        if job.status.is_terminal() {
            return Err(SchedulerError::Conflict(format!(
                "job {id} is {} and cannot be stopped",
                job.status
            )));
        }
        if job.status == JobStatus::Stopping {
            return Ok(());
        }
        store.transition(id, JobStatus::Stopping, None).await?;
        let signal = lock(&self.inner.running).get(id).cloned();
        match signal {
            Some(signal) => signal.stop(StopReason::User),
            // Validation in flight notices the Stopping status itself when it ends.
            None if lock(&self.inner.validating).contains(id) => {}
            // A validated batch job still gives each item its result ("not run"): the next
            // pass runs it as a run that stops at once.
            None if job.status == JobStatus::Scheduled
                && job.request.dialect.batch_job().is_some() => {}
            // Shared: the instances working on it see the stop, and one of them ends it.
            None if self.inner.config.cluster.is_some() && job.status == JobStatus::InProgress => {}
            None => self.finish_stopped_unstarted(&job).await?,
        }
        self.inner.wake.notify_one();
        Ok(())
    }

    /// A job stopped before it ran: the manifest says so, then `Stopped`.
    async fn finish_stopped_unstarted(&self, job: &Job) -> Result<(), SchedulerError> {
        let counters = Counters {
            total: job.counters.total,
            ..Counters::default()
        };
        if let Ok(out) = StorageUri::parse(&job.request.output) {
            let manifest = batchd_formats::manifest::Manifest::from(&counters).to_json();
            let batch_job = job.request.dialect.batch_job().is_some();
            let uri = crate::manifest_uri(&out, &job.id, batch_job);
            if let Err(e) = self.inner.engine.storage().put(&uri, manifest.into()).await {
                tracing::warn!(job = %job.id, error = %e, "cannot write the manifest of a stopped job");
            }
        }
        self.inner
            .store
            .transition(
                &job.id,
                JobStatus::Stopped,
                Some("stopped before it started; no record ran"),
            )
            .await?;
        Ok(())
    }

    /// The configured name of the model `model_id` names, in any of its forms
    /// ([`batchd_core::ModelId`]).
    fn model_key(&self, model_id: &str) -> Option<&str> {
        ModelId::new(model_id)
            .resolve(|id| {
                self.inner
                    .models
                    .get_key_value(id)
                    .map(|(key, _)| key.as_str())
            })
            .or_else(|| self.catch_all(model_id))
    }

    /// The catch-all model, when one is configured and `model_id` looks like a Bedrock model
    /// id (`provider.model`, in any of its forms): ids of other APIs (`gpt-4o`) stay unknown.
    fn catch_all(&self, model_id: &str) -> Option<&str> {
        let key = self.inner.config.catch_all_model.as_deref()?;
        let base = ModelId::new(model_id).base();
        let bedrock_like = base
            .split_once('.')
            .is_some_and(|(provider, rest)| !provider.is_empty() && !rest.is_empty());
        if !bedrock_like {
            return None;
        }
        self.inner
            .models
            .get_key_value(key)
            .map(|(key, _)| key.as_str())
    }

    /// The configured model `model_id` names, in any of its forms (or the catch-all).
    pub fn model(&self, model_id: &str) -> Option<&ModelEntry> {
        self.model_key(model_id)
            .and_then(|key| self.inner.models.get(key))
    }

    fn spec(&self, job: &Job) -> Result<JobSpec, String> {
        let model = self.model(&job.request.model_id).ok_or_else(|| {
            format!(
                "model {} is no longer configured on this server",
                job.request.model_id
            )
        })?;
        let mut spec = JobSpec::for_job(job, model.records.clone(), model.concurrency)
            .map_err(|e| e.to_string())?;
        spec.note = self
            .caught_by_catch_all(&job.request.model_id)
            .map(|key| catch_all_note(&job.request.model_id, key));
        Ok(spec)
    }

    async fn run_loop(&self) {
        let shared = self.inner.config.cluster.is_some();
        // Shared, nothing is this instance's to resume: what others hold, they renew.
        if !shared && let Err(e) = self.resume().await {
            tracing::error!(error = %e, "cannot resume unfinished jobs");
        }
        loop {
            if let Err(e) = self.tick().await {
                tracing::error!(error = %e, "scheduler pass failed");
            }
            tokio::select! {
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep(self.inner.config.poll_interval) => {}
                _ = self.inner.shutdown.cancelled() => return,
            }
        }
    }

    async fn resume(&self) -> Result<(), StoreError> {
        let jobs = self
            .inner
            .store
            .list_in_status(
                JobOrigin::Api,
                &[JobStatus::InProgress, JobStatus::Stopping],
            )
            .await?;
        for job in jobs {
            tracing::info!(job = %job.id, status = %job.status, "resuming job");
            self.start_execution(job);
        }
        Ok(())
    }

    /// One pass. Shared, running jobs are listed too: any instance may take them up.
    async fn tick(&self) -> Result<(), StoreError> {
        let now = now_ms();
        let store = &self.inner.store;
        let shared = self.inner.config.cluster.is_some();
        if shared {
            self.heartbeat(now).await?;
        }
        let _decisions = self.inner.decisions.lock().await;
        // Tasks leave `running` / `validating` only under `decisions`, so what this pass reads
        // from the store and what it sees in those sets agree.
        let mut statuses = vec![
            JobStatus::Submitted,
            JobStatus::Validating,
            JobStatus::Scheduled,
            JobStatus::Stopping,
        ];
        if shared {
            statuses.push(JobStatus::InProgress);
        }
        let waiting = store.list_in_status(JobOrigin::Api, &statuses).await?;
        for job in waiting {
            if self.inner.shutdown.is_cancelled() {
                break;
            }
            let expired = job.job_expiration_ms.is_some_and(|t| t <= now);
            let batch_job = job.request.dialect.batch_job().is_some();
            match job.status {
                // A batch job past its timeout still runs, at once stopped: every item gets
                // its "timed out" result.
                JobStatus::Scheduled if expired && !batch_job => match self.expire(&job).await {
                    // Another instance may have moved it on first.
                    Err(e) if shared => {
                        tracing::debug!(job = %job.id, error = %e, "expiry raced")
                    }
                    ended => ended?,
                },
                _ if shared => self.take_up(job).await?,
                JobStatus::Scheduled => {
                    let running = lock(&self.inner.running);
                    // Its task may not have moved it to InProgress yet.
                    let starting = running.contains_key(&job.id);
                    let room = running.len() < self.inner.config.max_running_jobs;
                    drop(running);
                    if room && !starting {
                        self.start_execution(job);
                    }
                }
                // A stop that found nothing to signal (it raced a start or the end of a
                // validation): finishing it as a run that stops at once writes what exists.
                JobStatus::Stopping => {
                    let running = lock(&self.inner.running).contains_key(&job.id);
                    let validating = lock(&self.inner.validating).contains(&job.id);
                    if !running && !validating {
                        self.start_execution(job);
                    }
                }
                JobStatus::Submitted | JobStatus::Validating => {
                    let busy =
                        lock(&self.inner.validating).len() >= self.inner.config.max_validating_jobs;
                    if !busy && !lock(&self.inner.validating).contains(&job.id) {
                        self.start_validation(job, None);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Validates `job` in a task; a job lease held for it is released when it ends.    /// A `Scheduled` job past its timeout, never started: `Expired`.
    async fn expire(&self, job: &Job) -> Result<(), StoreError> {
        let hours = job
            .request
            .timeout_hours
            .unwrap_or(self.inner.config.default_timeout_hours);
        let message = format!("the job did not start within its timeout ({hours} hours)");
        self.inner
            .store
            .transition(&job.id, JobStatus::Expired, Some(&message))
            .await?;
        Ok(())
    }

    fn start_validation(&self, job: Job, lease: Option<shared::JobLease>) {
        lock(&self.inner.validating).insert(job.id.clone());
        let this = self.clone();
        let span = job_span(&job);
        self.inner.tasks.spawn(async move {
            let id = job.id.clone();
            let result = match this.spec(&job) {
                Ok(spec) => {
                    let (progress, _) = watch::channel(Progress::new(job.status, Counters::default()));
                    tokio::select! {
                        r = this.inner.engine.validate_job(&spec, this.inner.store.as_ref(), &progress) => r.map(|_| ()),
                        // Redone from the start after a restart.
                        _ = this.inner.shutdown.cancelled() => Ok(()),
                    }
                }
                Err(message) => this.fail(&job, &message).await,
            };
            let decisions = this.inner.decisions.lock().await;
            if let Err(e) = result {
                this.after_interrupted_validation(&id, e).await;
            }
            lock(&this.inner.validating).remove(&id);
            drop(decisions);
            if let (Some(lease), Some(cluster)) = (lease, &this.inner.config.cluster) {
                lease.release(this.inner.store.as_ref(), &cluster.instance_id).await;
            }
            this.inner.wake.notify_one();
        }.instrument(span));
    }

    /// Validation could not move the job on: a stop arrived meanwhile, or something broke.
    /// The caller holds `decisions`.
    async fn after_interrupted_validation(&self, id: &JobId, error: EngineError) {
        match self.inner.store.get(id).await {
            Ok(Some(job)) if job.status == JobStatus::Stopping => {
                if let Err(e) = self.finish_stopped_unstarted(&job).await {
                    tracing::error!(job = %id, error = %e, "cannot finish a stopped job");
                }
            }
            Ok(Some(job)) if !job.status.is_terminal() => {
                let message = format!("validation failed: {error}");
                if let Err(e) = self.fail(&job, &message).await {
                    tracing::error!(job = %id, error = %e, "cannot fail a job");
                }
            }
            _ => {}
        }
    }

    async fn fail(&self, job: &Job, message: &str) -> Result<(), EngineError> {
        tracing::warn!(job = %job.id, message, "job failed");
        let status = job.status;
        if status == JobStatus::Submitted {
            self.inner
                .store
                .transition(&job.id, JobStatus::Validating, None)
                .await?;
        }
        if status == JobStatus::Scheduled {
            self.inner
                .store
                .transition(&job.id, JobStatus::InProgress, None)
                .await?;
        }
        self.inner
            .store
            .transition(&job.id, JobStatus::Failed, Some(message))
            .await?;
        Ok(())
    }

    fn start_execution(&self, job: Job) {
        self.start_execution_with(job, StopSignal::new(), None);
    }

    /// Executes `job` in a task, stopped through `signal`; a job lease held for it is
    /// released when it ends.
    fn start_execution_with(&self, job: Job, signal: StopSignal, lease: Option<shared::JobLease>) {
        let this = self.clone();
        let (id, span) = (job.id.clone(), job_span(&job));
        let run_signal = signal.clone();
        let work = async move {
            match this.spec(&job) {
                Ok(spec) => this.execute(&job, &spec, &run_signal).await,
                Err(message) => {
                    if let Err(e) = this.fail(&job, &message).await {
                        tracing::error!(job = %job.id, error = %e, "cannot fail a job");
                    }
                }
            }
        };
        self.spawn_running(id, signal, lease, work.instrument(span));
    }

    /// Runs `work` as job `id`'s task, in `running` under `signal` (checked and registered
    /// under the lock `shutdown` signals under: a job either sees the shutdown here or is in
    /// `running` when shutdown stops them all); when it ends it leaves `running`, and a job
    /// lease held for it is released.
    fn spawn_running(
        &self,
        id: JobId,
        signal: StopSignal,
        lease: Option<shared::JobLease>,
        work: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        {
            let mut running = lock(&self.inner.running);
            if self.inner.shutdown.is_cancelled() {
                return;
            }
            running.insert(id.clone(), signal);
        }
        let this = self.clone();
        self.inner.tasks.spawn(async move {
            work.await;
            let decisions = this.inner.decisions.lock().await;
            lock(&this.inner.running).remove(&id);
            drop(decisions);
            if let (Some(lease), Some(cluster)) = (lease, &this.inner.config.cluster) {
                lease
                    .release(this.inner.store.as_ref(), &cluster.instance_id)
                    .await;
            }
            this.inner.wake.notify_one();
        });
    }

    async fn execute(&self, job: &Job, spec: &JobSpec, signal: &StopSignal) {
        let Some(model) = self.model(&job.request.model_id) else {
            return;
        };
        // The job's timeout stops it where it is: PartiallyCompleted. Past it already, the
        // job stops before its first record.
        if job.job_expiration_ms.is_some_and(|at| at <= now_ms()) {
            signal.stop(StopReason::Timeout);
        }
        let _timer = TimeoutTimer::start(job, signal);
        let (progress, watcher) = watch::channel(Progress::new(job.status, job.counters));
        lock(&self.inner.live).insert(job.id.clone(), watcher);
        let result = self
            .inner
            .engine
            .execute_job(
                JobContext {
                    spec,
                    store: self.inner.store.as_ref(),
                    progress: &progress,
                    stop: signal,
                },
                model.backend.clone(),
            )
            .await;
        lock(&self.inner.live).remove(&job.id);
        match result {
            Ok(outcome) => tracing::info!(job = %job.id, status = %outcome.status, "job run ended"),
            Err(e @ EngineError::NotRunnable { .. }) => {
                tracing::debug!(job = %job.id, error = %e, "stale start refused")
            }
            Err(e) => tracing::error!(job = %job.id, error = %e, "job run failed"),
        }
    }
}

#[cfg(test)]
#[path = "../tests/support/mod.rs"]
mod test_support;

/// The scheduler's own decisions made by hand, in the orders a tick's stale store read or a
/// concurrent shutdown can produce.
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test helpers fail loudly by design

    use std::path::Path;
    use std::time::Instant;

    use batchd_testkit::{FakeConfig, FakeServer};

    use super::test_support::{create, output_ids, scheduler, wait_for, write_records};
    use super::*;

    /// The shared scheduler (loop not started: the test makes its decisions) over `records`.
    async fn idle_scheduler(dir: &Path, fake: &FakeServer, records: usize) -> Scheduler {
        write_records(&dir.join("buckets/bucket/in/a.jsonl"), records);
        scheduler(dir, fake, SchedulerConfig::default()).await
    }

    async fn wait_idle(s: &Scheduler) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(lock(&s.inner.running).is_empty() && lock(&s.inner.validating).is_empty()) {
            assert!(Instant::now() < deadline, "tasks still running");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn output(dir: &Path, id: &JobId) -> String {
        std::fs::read_to_string(dir.join(format!("buckets/bucket/out/{id}/a.jsonl.out"))).unwrap()
    }

    /// A tick reads a job as `Validating` just before its validation ends and validates it
    /// again while it runs; later a stale `Scheduled` read starts it again after it ended.
    /// Neither may fail the job, run a record twice or rewrite the output (the intermittent
    /// `Failed` job of test_list.py: "illegal job status transition InProgress -> Scheduled").
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stale_validation_and_start_leave_the_job_alone() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeServer::start(FakeConfig::latency(100, 0))
            .await
            .unwrap();
        let s = idle_scheduler(dir.path(), &fake, 12).await;
        let stale = s.create(create("stale", None)).await.unwrap();
        assert_eq!(stale.status, JobStatus::Submitted);
        s.start_validation(stale.clone(), None);
        let scheduled = wait_for(&s, &stale.id, |j| j.status == JobStatus::Scheduled).await;
        wait_idle(&s).await;
        s.start_execution(scheduled.clone());
        wait_for(&s, &stale.id, |j| j.status == JobStatus::InProgress).await;
        s.start_validation(stale.clone(), None);
        wait_for(&s, &stale.id, |j| j.status.is_terminal()).await;
        wait_idle(&s).await;
        let done = s.store().get(&stale.id).await.unwrap().unwrap();
        assert_eq!(done.status, JobStatus::Completed, "{:?}", done.message);
        let expected: Vec<_> = (0..12).map(|i| format!("r{i:04}")).collect();
        assert_eq!(
            output_ids(dir.path(), &stale.id),
            expected,
            "every record once, in order"
        );
        assert_eq!(fake.stats().requests, 12);
        let first = output(dir.path(), &stale.id);

        s.start_execution(scheduled);
        wait_idle(&s).await;
        let again = s.store().get(&stale.id).await.unwrap().unwrap();
        assert_eq!(again.status, JobStatus::Completed);
        assert_eq!(again.counters, done.counters);
        assert_eq!(output(dir.path(), &stale.id), first, "output untouched");
        assert_eq!(fake.stats().requests, 12, "no record ran again");
    }

    /// Starts racing a shutdown: every execution that got started is told to stop, so
    /// shutdown never waits for a job to run to its end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_stops_executions_started_concurrently() {
        let fake = FakeServer::start(FakeConfig::latency(20, 0)).await.unwrap();
        for round in 0..40_u32 {
            let dir = tempfile::tempdir().unwrap();
            let s = idle_scheduler(dir.path(), &fake, 400).await;
            let job = s.create(create("race", None)).await.unwrap();
            let spec = s.spec(&job).unwrap();
            let (progress, _) = watch::channel(Progress::new(job.status, Counters::default()));
            s.inner
                .engine
                .validate_job(&spec, s.store(), &progress)
                .await
                .unwrap();
            let job = s.store().get(&job.id).await.unwrap().unwrap();
            let starter = {
                let s = s.clone();
                tokio::spawn(async move {
                    for _ in 0..round % 8 {
                        tokio::task::yield_now().await;
                    }
                    s.start_execution(job);
                })
            };
            for _ in 0..round % 5 {
                tokio::task::yield_now().await;
            }
            s.shutdown().await;
            starter.await.unwrap();
            // A start that slipped past the shutdown would have run all 400 records (20 ms
            // each, 4 at a time) before `shutdown` returned; a stopped one leaves work to resume.
            s.inner.tasks.wait().await;
            let after = s
                .store()
                .list_in_status(JobOrigin::Api, &[JobStatus::Completed])
                .await
                .unwrap();
            assert!(
                after.is_empty(),
                "round {round}: a job ran to its end through a shutdown"
            );
        }
    }
}
