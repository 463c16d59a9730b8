//! The scheduler when instances share one store (`[cluster]`, `batchd serve` on Postgres):
//! every decision about a job is taken under its lease, a Bedrock job or OpenAI batch runs as
//! chunks that every instance claims, and nothing is resumed by instance: an instance that
//! stops renewing loses its leases and another takes its work over.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use batchd_core::{ChunkState, DialectKind, Job, JobId, JobStatus};
use batchd_store::{JobStore, StoreError, now_ms};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Scheduler, TimeoutTimer, job_span, lock};
use crate::chunks::{ChunkClaim, ChunkEnd, ChunkTerms, LeaseTimes};
use crate::{JobSpec, StopReason, StopSignal};

/// Instances sharing one store: who this one is, how long its leases last, how jobs split.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This instance's name in leases (unique among the instances; random by default).
    pub instance_id: String,
    /// How long a lease lasts without renewal: how soon another instance takes over the work
    /// of one that died or stalled.
    pub lease: Duration,
    /// Records per chunk of a Bedrock job or OpenAI batch.
    pub chunk_records: u64,
}

impl ClusterConfig {
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
    pub const DEFAULT_CHUNK_RECORDS: u64 = 1_000;

    pub(crate) fn times(&self) -> LeaseTimes {
        LeaseTimes { lease: self.lease }
    }
}

/// A job's lease held by this instance, renewed by a task until released. Each claim or
/// renewal lets `on_loss` write for a while longer (`StopSignal::hold_until`); a renewal that
/// finds the lease taken stops it (the job's run here gives up).
pub(super) struct JobLease {
    id: JobId,
    fence: i64,
    keeper: tokio::task::JoinHandle<()>,
}

impl JobLease {
    pub(super) async fn release(self, store: &dyn JobStore, owner: &str) {
        self.keeper.abort();
        if let Err(e) = store
            .leases()
            .release_job(&self.id, owner, self.fence)
            .await
        {
            tracing::warn!(job = %self.id, error = %e, "cannot release a job lease");
        }
    }
}

/// Whether a job runs as chunks shared by instances: Bedrock jobs and OpenAI batches do (their
/// input and output are one line per record); a batch job (the first seed's API, whose input
/// may be one JSON array with no lines to cut it at) runs whole on the instance holding the
/// job's lease, writing only while it holds it (`StopSignal::may_write`).
fn chunked(job: &Job) -> bool {
    matches!(
        job.request.dialect.kind(),
        DialectKind::Bedrock | DialectKind::OpenAi
    )
}

impl Scheduler {
    fn cluster(&self) -> &ClusterConfig {
        // Only called in shared mode.
        self.inner
            .config
            .cluster
            .as_ref()
            .unwrap_or_else(|| unreachable!("shared scheduling without [cluster]"))
    }

    /// Takes the job's lease and keeps it renewed; `None` when another instance holds it.
    pub(super) async fn claim_job(
        &self,
        id: &JobId,
        on_loss: Option<StopSignal>,
    ) -> Result<Option<JobLease>, StoreError> {
        let cluster = self.cluster();
        let times = cluster.times();
        let owner = cluster.instance_id.clone();
        let store = self.inner.store.clone();
        let asked = std::time::Instant::now();
        let Some(fence) = store
            .leases()
            .claim_job(id, &owner, now_ms(), times.until())
            .await?
        else {
            return Ok(None);
        };
        if let Some(signal) = &on_loss {
            signal.hold_until(asked + times.writes_for());
        }
        let job = id.clone();
        let keeper = tokio::spawn(async move {
            loop {
                tokio::time::sleep(times.renew_every()).await;
                let asked = std::time::Instant::now();
                match store
                    .leases()
                    .renew_job(&job, &owner, fence, times.until())
                    .await
                {
                    Ok(true) => {
                        if let Some(signal) = &on_loss {
                            signal.hold_until(asked + times.writes_for());
                        }
                    }
                    Ok(false) => {
                        tracing::warn!(job = %job, "job lease lost to another instance");
                        if let Some(signal) = &on_loss {
                            signal.stop(StopReason::LeaseLost);
                        }
                        return;
                    }
                    Err(e) => tracing::warn!(job = %job, error = %e, "cannot renew a job lease"),
                }
            }
        });
        Ok(Some(JobLease {
            id: id.clone(),
            fence,
            keeper,
        }))
    }

    /// Takes up one unfinished job in a shared pass (expiries are the common pass's): a
    /// validation under the job's lease; a worker for a running chunked job this instance is
    /// not working on yet; a batch job started or taken over under its lease.
    pub(super) async fn take_up(&self, job: Job) -> Result<(), StoreError> {
        if matches!(job.status, JobStatus::Submitted | JobStatus::Validating) {
            let (busy, here) = {
                let validating = lock(&self.inner.validating);
                let busy = validating.len() >= self.inner.config.max_validating_jobs;
                (busy, validating.contains(&job.id))
            };
            if !busy
                && !here
                && let Some(lease) = self.claim_job(&job.id, None).await?
            {
                self.start_validation(job, Some(lease));
            }
            return Ok(());
        }
        let (here, room) = {
            let running = lock(&self.inner.running);
            let room = running.len() < self.inner.config.max_running_jobs;
            (running.contains_key(&job.id), room)
        };
        if here || !room {
            return Ok(());
        }
        if chunked(&job) {
            self.start_chunk_worker(job);
        } else {
            let signal = StopSignal::new();
            if let Some(lease) = self.claim_job(&job.id, Some(signal.clone())).await? {
                self.start_execution_with(job, signal, Some(lease));
            }
        }
        Ok(())
    }

    /// Works on a chunked job until this instance can do nothing more for it: plans it if it
    /// is `Scheduled`, claims and runs chunks while there are any, and ends the job when no
    /// chunk is left to run and none is held.
    fn start_chunk_worker(&self, job: Job) {
        let this = self.clone();
        let (id, span) = (job.id.clone(), job_span(&job));
        let signal = StopSignal::new();
        let run_signal = signal.clone();
        let work = async move {
            let id = &job.id;
            match this.spec(&job) {
                Ok(spec) => {
                    if let Err(e) = this.work_on_chunks(&job, &spec, &run_signal).await {
                        tracing::error!(job = %id, error = %e, "chunk worker failed");
                    }
                }
                Err(message) => {
                    if let Some(lease) = this.claim_job(id, None).await.ok().flatten() {
                        if let Err(e) = this.fail(&job, &message).await {
                            tracing::error!(job = %id, error = %e, "cannot fail a job");
                        }
                        lease
                            .release(this.inner.store.as_ref(), &this.cluster().instance_id)
                            .await;
                    }
                }
            }
        };
        self.spawn_running(id, signal, None, work.instrument(span));
    }

    async fn work_on_chunks(
        &self,
        job: &Job,
        spec: &JobSpec,
        signal: &StopSignal,
    ) -> Result<(), crate::EngineError> {
        let Some(model) = self.model(&job.request.model_id) else {
            return Ok(());
        };
        let backend = model.backend.clone();
        let store = self.inner.store.as_ref();
        let leases = store.leases();
        let cluster = self.cluster();
        let me = cluster.instance_id.as_str();
        let engine = &self.inner.engine;
        let terms = ChunkTerms {
            times: cluster.times(),
            in_flight: Arc::new(AtomicUsize::new(0)),
            room: Arc::new(tokio::sync::Notify::new()),
            instances: self
                .model_key(&job.request.model_id)
                .and_then(|key| self.inner.instances.get(key))
                .map_or_else(|| Arc::new(AtomicUsize::new(1)), Arc::clone),
        };
        let _timer = TimeoutTimer::start(job, signal);
        // At most two chunks run here at once: the next starts when the last record of the
        // one before has started, so the instance's share stays full across chunk ends.
        let mut runs = FuturesUnordered::new();
        let mut newest: Option<CancellationToken> = None;
        let mut released = false;
        loop {
            let Some(stored) = store.get(&job.id).await? else {
                return Ok(());
            };
            let shutdown = signal.reason() == Some(StopReason::Shutdown);
            if (stored.status.is_terminal() || shutdown || released) && runs.is_empty() {
                return Ok(());
            }
            let expired = stored.job_expiration_ms.is_some_and(|t| t <= now_ms());
            let stopping = stored.status == JobStatus::Stopping;
            if stored.status == JobStatus::Scheduled && runs.is_empty() {
                let Some(lease) = self.claim_job(&job.id, None).await? else {
                    // Another instance is planning it.
                    tokio::time::sleep(self.inner.config.poll_interval).await;
                    continue;
                };
                let planned = self.plan(&job.id, spec).await;
                lease.release(store, me).await;
                planned?;
                continue;
            }
            let next_due = newest.as_ref().is_none_or(CancellationToken::is_cancelled);
            if !stopping
                && !expired
                && !signal.is_stopped()
                && !stored.status.is_terminal()
                && !released
                && runs.len() < 2
                && next_due
            {
                let claim = leases
                    .claim_chunk(&job.id, me, now_ms(), cluster.times().until())
                    .await?;
                if let Some(lease) = claim {
                    let claim = ChunkClaim {
                        lease,
                        input_read: CancellationToken::new(),
                    };
                    newest = Some(claim.input_read.clone());
                    let (backend, terms) = (backend.clone(), &terms);
                    runs.push(async move {
                        let end = engine
                            .run_chunk(spec, backend, store, &claim, terms, signal)
                            .await;
                        (claim.lease.index, end)
                    });
                    continue;
                }
            }
            if !runs.is_empty() {
                let read = newest.clone().unwrap_or_default();
                tokio::select! {
                    Some((index, end)) = runs.next() => match end {
                        Ok(ChunkEnd::Committed(c)) => {
                            tracing::debug!(job = %job.id, chunk = index, records = c.processed, "chunk committed")
                        }
                        Ok(ChunkEnd::Refused) => crate::metrics::chunk_refused(),
                        Ok(ChunkEnd::Released) => released = true,
                        Err(e) if e.fails_the_job() => {
                            let message = format!("job failed while running: {e}");
                            let _ = store
                                .transition(&job.id, JobStatus::Failed, Some(&message))
                                .await;
                            return Err(e);
                        }
                        Err(e) => return Err(e),
                    },
                    _ = read.cancelled(), if !read.is_cancelled() => {}
                }
                continue;
            }
            // Nothing to claim here: the job ends once no chunk is left to run or held.
            let now = now_ms();
            let chunks = leases.chunks(&job.id).await?;
            if chunks.iter().any(|c| c.is_held(now)) {
                return Ok(());
            }
            // A job started without a plan (by a batchd from before chunks) is planned now.
            if chunks.is_empty() && stored.counters.total > 0 && !stopping && !expired {
                match self.claim_job(&job.id, None).await? {
                    Some(lease) => {
                        let planned = self.plan(&job.id, spec).await;
                        lease.release(store, me).await;
                        planned?;
                    }
                    None => tokio::time::sleep(self.inner.config.poll_interval).await,
                }
                continue;
            }
            let reason = if stopping || signal.reason() == Some(StopReason::User) {
                Some(StopReason::User)
            } else if expired || signal.reason() == Some(StopReason::Timeout) {
                Some(StopReason::Timeout)
            } else if chunks.iter().any(|c| c.state != ChunkState::Done) {
                // A chunk came free (its holder gave it back or its lease ran out).
                continue;
            } else {
                None
            };
            let Some(lease) = self.claim_job(&job.id, None).await? else {
                return Ok(());
            };
            // Another instance may have ended it between our look and our claim.
            if store
                .get(&job.id)
                .await?
                .is_none_or(|j| j.status.is_terminal())
            {
                lease.release(store, me).await;
                return Ok(());
            }
            let ended = engine.finish_chunked(spec, store, reason).await;
            if let Err(e) = &ended
                && e.fails_the_job()
            {
                let message = format!("job failed while finishing: {e}");
                store
                    .transition(&job.id, JobStatus::Failed, Some(&message))
                    .await?;
            }
            lease.release(store, me).await;
            let outcome = ended?;
            tracing::info!(job = %job.id, status = %outcome.status, "job run ended");
            return Ok(());
        }
    }
    /// Signs this instance in for every model whose backend other instances may share, and
    /// keeps the count of instances sharing each.
    pub(super) async fn heartbeat(&self, now: i64) -> Result<(), StoreError> {
        let cluster = self.cluster();
        let lease_ms = i64::try_from(cluster.lease.as_millis()).unwrap_or(i64::MAX / 2);
        let (keys, scopes): (Vec<&String>, Vec<String>) = self
            .inner
            .models
            .iter()
            .filter_map(|(key, m)| Some((key, format!("{key}@{}", m.shared_backend.as_ref()?))))
            .unzip();
        let live = self
            .inner
            .store
            .leases()
            .heartbeat(&cluster.instance_id, &scopes, now, now - lease_ms)
            .await?;
        for (key, live) in keys.into_iter().zip(live) {
            if let Some(count) = self.inner.instances.get(key) {
                let live = usize::try_from(live).unwrap_or(usize::MAX).max(1);
                count.store(live, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Splits a `Scheduled` job into chunks and starts it (`InProgress`); its validated files
    /// are read once more to find where each chunk starts.
    async fn plan(&self, id: &JobId, spec: &JobSpec) -> Result<(), crate::EngineError> {
        let store = self.inner.store.as_ref();
        let per_chunk = self.cluster().chunk_records;
        let plans = match self.inner.engine.plan_chunks(spec, store, per_chunk).await {
            Ok(plans) => plans,
            Err(e) if e.fails_the_job() => {
                // Failed is reached from InProgress, where a job planned late already is.
                match store.transition(id, JobStatus::InProgress, None).await {
                    Ok(_) | Err(StoreError::Transition { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
                let message = format!("job failed while running: {e}");
                store
                    .transition(id, JobStatus::Failed, Some(&message))
                    .await?;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        store.leases().plan_chunks(id, &plans).await?;
        match store.transition(id, JobStatus::InProgress, None).await {
            Ok(_) => Ok(()),
            // A stop won the race: the job's worker ends it.
            Err(StoreError::Transition { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
