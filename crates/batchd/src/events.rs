//! Job events of `batchd serve`: every status change of a server job is counted in the
//! metrics and, with `[events] webhook_url`, POSTed as JSON shaped like Amazon Bedrock's
//! EventBridge "Batch Inference Job State Change" event.
//!
//! [`EventStore`] wraps the job store: a status changes only through `JobStore::create`,
//! `transition` and `start` (invariant 3), so wrapping those three sees every change,
//! whichever part of the server made it. Delivery never blocks a job: events go into a
//! bounded queue (a full queue drops the event with a log line), and one task delivers them
//! in order, retrying each with capped exponential backoff.

use std::sync::Arc;
use std::time::Duration;

use batchd_core::{
    Checkpoint, Counters, FileFilter, FileRecord, Job, JobFile, JobFilter, JobId, JobOrigin,
    JobStatus, NewJob,
};
use batchd_store::{JobStore, SharedStore, StoreError};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Status changes of server jobs, by the status reached.
pub const STATUS_CHANGES: &str = "batchd_job_status_changes_total";
/// Webhook deliveries by outcome (`delivered`, `failed` after the last attempt, `dropped`
/// when the queue was full).
pub const DELIVERIES: &str = "batchd_job_events_total";

/// `[events]`: where job events go and how hard batchd tries.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsSection {
    /// Receives a POST per status change; `None`: no webhook.
    pub webhook_url: Option<String>,
    /// Attempts per event (the first included).
    pub max_attempts: u32,
    /// The first retry's wait; each next one doubles, up to `backoff_max_ms`.
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Each attempt's timeout.
    pub timeout_secs: u64,
    /// Events waiting for delivery, at most; beyond, new ones are dropped (and logged).
    pub queue_size: usize,
}

impl Default for EventsSection {
    fn default() -> Self {
        Self {
            webhook_url: None,
            max_attempts: 6,
            backoff_base_ms: 500,
            backoff_max_ms: 30_000,
            timeout_secs: 10,
            queue_size: 1000,
        }
    }
}

impl EventsSection {
    /// The wait after failed attempt `attempt` (1-based): base × 2^(attempt-1), capped.
    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u64 << attempt.saturating_sub(1).min(20);
        Duration::from_millis(
            self.backoff_base_ms
                .saturating_mul(factor)
                .min(self.backoff_max_ms),
        )
    }
}

/// Where events go: the metrics always, the webhook's queue when one is configured.
#[derive(Debug, Clone)]
pub struct Events {
    queue: Option<mpsc::Sender<Value>>,
    region: String,
}

impl Events {
    /// Starts the delivery task when `config` names a webhook; returns the sender and the
    /// task (to let it finish the queue at shutdown).
    pub fn start(config: &EventsSection, region: &str) -> anyhow::Result<(Self, Option<Delivery>)> {
        let Some(url) = config.webhook_url.clone() else {
            return Ok((
                Self {
                    queue: None,
                    region: region.to_owned(),
                },
                None,
            ));
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(config.timeout_secs.max(1)))
            .build()?;
        let (tx, rx) = mpsc::channel(config.queue_size.max(1));
        let closing = CancellationToken::new();
        let task = tokio::spawn(deliver(rx, client, url, config.clone(), closing.clone()));
        Ok((
            Self {
                queue: Some(tx),
                region: region.to_owned(),
            },
            Some(Delivery { task, closing }),
        ))
    }

    /// A job reached `job.status`.
    fn emit(&self, job: &Job) {
        metrics::counter!(STATUS_CHANGES, "status" => job.status.as_str()).increment(1);
        let Some(queue) = &self.queue else {
            return;
        };
        if job.request.origin != JobOrigin::Api {
            return;
        }
        if let Err(mpsc::error::TrySendError::Full(_)) =
            queue.try_send(state_change_event(job, &self.region))
        {
            metrics::counter!(DELIVERIES, "outcome" => "dropped").increment(1);
            tracing::warn!(job_id = %job.id, status = %job.status, "job event dropped: the webhook queue is full");
        }
    }
}

/// The webhook's delivery task.
pub struct Delivery {
    task: tokio::task::JoinHandle<()>,
    closing: CancellationToken,
}

impl Delivery {
    /// Takes no more events and delivers those queued, for at most `within`.
    pub async fn finish(self, within: Duration) {
        self.closing.cancel();
        if tokio::time::timeout(within, self.task).await.is_err() {
            tracing::warn!("job events still queued at exit were not delivered");
        }
    }
}

/// Bedrock's "Batch Inference Job State Change" EventBridge event for a job as it is now,
/// plus `batchdDialect` (which API the job belongs to).
pub fn state_change_event(job: &Job, region: &str) -> Value {
    let r = &job.request;
    let c = &job.counters;
    let now = batchd_store::now_ms();
    json!({
        "version": "0",
        "id": event_id(),
        "detail-type": "Batch Inference Job State Change",
        "source": "aws.bedrock",
        "account": r.account_id,
        "time": batchd_api::bedrock::timestamp::format_ms(now),
        "region": region,
        "resources": [job.arn],
        "detail": {
            "version": "0.0",
            "accountId": r.account_id,
            "batchJobName": r.name,
            "batchJobArn": job.arn,
            "batchModelId": r.model_id,
            "status": job.status.as_str(),
            "failureMessage": job.message.as_deref().unwrap_or(""),
            "totalRecordCount": c.total,
            "processedRecordCount": c.processed,
            "successRecordCount": c.success,
            "errorRecordCount": c.error,
            "inputTokenCount": c.input_tokens,
            "outputTokenCount": c.output_tokens,
            "inputDataConfig": {"s3InputDataConfig": {
                "s3Uri": r.inputs.first(), "s3InputFormat": "JSONL"}},
            "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": r.output}},
            "batchdDialect": r.dialect.kind().as_str(),
        }
    })
}

/// A random UUID-shaped id (EventBridge's event ids are UUIDs).
fn event_id() -> String {
    let hex: String = (0..32)
        .map(|_| char::from(b"0123456789abcdef"[fastrand::usize(..16)]))
        .collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Delivers events in order; each is retried until a 2xx or `max_attempts`.
async fn deliver(
    mut rx: mpsc::Receiver<Value>,
    client: reqwest::Client,
    url: String,
    config: EventsSection,
    closing: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            event = rx.recv() => event,
            // Shutting down: what is queued still goes, nothing new comes.
            () = closing.cancelled(), if !rx.is_closed() => {
                rx.close();
                continue;
            }
        };
        let Some(event) = event else { return };
        let body = event.to_string();
        let job = event["detail"]["batchJobArn"].as_str().unwrap_or_default();
        let status = event["detail"]["status"].as_str().unwrap_or_default();
        let attempts = config.max_attempts.max(1);
        for attempt in 1..=attempts {
            let sent = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await;
            let failure = match sent {
                Ok(r) if r.status().is_success() => {
                    metrics::counter!(DELIVERIES, "outcome" => "delivered").increment(1);
                    tracing::debug!(job, status, attempt, "job event delivered");
                    break;
                }
                Ok(r) => format!("HTTP {}", r.status()),
                Err(e) => e.to_string(),
            };
            if attempt == attempts {
                metrics::counter!(DELIVERIES, "outcome" => "failed").increment(1);
                tracing::warn!(job, status, attempts, error = %failure, "job event not delivered; giving up");
                break;
            }
            tracing::info!(job, status, attempt, error = %failure, "job event not delivered; retrying");
            tokio::time::sleep(config.backoff(attempt)).await;
        }
    }
}

/// The job store with every status change reported to [`Events`].
#[derive(Debug)]
pub struct EventStore {
    inner: SharedStore,
    events: Events,
}

impl EventStore {
    pub fn new(inner: SharedStore, events: Events) -> Arc<Self> {
        Arc::new(Self { inner, events })
    }
}

#[async_trait::async_trait]
impl JobStore for EventStore {
    async fn create(&self, job: NewJob) -> Result<Job, StoreError> {
        let job = self.inner.create(job).await?;
        self.events.emit(&job);
        Ok(job)
    }

    async fn transition(
        &self,
        id: &JobId,
        to: JobStatus,
        message: Option<&str>,
    ) -> Result<Job, StoreError> {
        let job = self.inner.transition(id, to, message).await?;
        self.events.emit(&job);
        Ok(job)
    }

    async fn start(&self, id: &JobId, job_expiration_ms: Option<i64>) -> Result<Job, StoreError> {
        let job = self.inner.start(id, job_expiration_ms).await?;
        self.events.emit(&job);
        Ok(job)
    }

    async fn get(&self, id: &JobId) -> Result<Option<Job>, StoreError> {
        self.inner.get(id).await
    }

    async fn list_in_status(
        &self,
        origin: JobOrigin,
        statuses: &[JobStatus],
    ) -> Result<Vec<Job>, StoreError> {
        self.inner.list_in_status(origin, statuses).await
    }

    async fn list(&self, filter: &JobFilter) -> Result<Vec<Job>, StoreError> {
        self.inner.list(filter).await
    }

    async fn find_by_token(&self, account: &str, token: &str) -> Result<Option<Job>, StoreError> {
        self.inner.find_by_token(account, token).await
    }

    async fn find_active_by_name(
        &self,
        origin: JobOrigin,
        account: &str,
        name: &str,
    ) -> Result<Option<Job>, StoreError> {
        self.inner.find_active_by_name(origin, account, name).await
    }

    async fn set_job_files(&self, id: &JobId, files: &[JobFile]) -> Result<(), StoreError> {
        self.inner.set_job_files(id, files).await
    }

    async fn job_files(&self, id: &JobId) -> Result<Vec<JobFile>, StoreError> {
        self.inner.job_files(id).await
    }

    async fn update_counters(&self, id: &JobId, counters: &Counters) -> Result<(), StoreError> {
        self.inner.update_counters(id, counters).await
    }

    async fn checkpoint(&self, id: &JobId, checkpoint: &Checkpoint) -> Result<bool, StoreError> {
        self.inner.checkpoint(id, checkpoint).await
    }

    async fn set_message(&self, id: &JobId, message: &str) -> Result<(), StoreError> {
        self.inner.set_message(id, message).await
    }

    async fn mark_finalizing(&self, id: &JobId) -> Result<(), StoreError> {
        self.inner.mark_finalizing(id).await
    }

    async fn tags(&self, id: &JobId) -> Result<Vec<(String, String)>, StoreError> {
        self.inner.tags(id).await
    }

    async fn set_tags(&self, id: &JobId, tags: &[(String, String)]) -> Result<(), StoreError> {
        self.inner.set_tags(id, tags).await
    }

    async fn remove_tags(&self, id: &JobId, keys: &[String]) -> Result<(), StoreError> {
        self.inner.remove_tags(id, keys).await
    }

    async fn create_file(&self, file: &FileRecord) -> Result<(), StoreError> {
        self.inner.create_file(file).await
    }

    async fn get_file(&self, id: &str) -> Result<Option<FileRecord>, StoreError> {
        self.inner.get_file(id).await
    }

    async fn list_files(&self, filter: &FileFilter) -> Result<Vec<FileRecord>, StoreError> {
        self.inner.list_files(filter).await
    }

    async fn delete_file(&self, id: &str) -> Result<bool, StoreError> {
        self.inner.delete_file(id).await
    }

    fn leases(&self) -> &dyn batchd_store::Leases {
        self.inner.leases()
    }

    async fn close(&self) {
        self.inner.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let c = EventsSection {
            backoff_base_ms: 100,
            backoff_max_ms: 1000,
            ..EventsSection::default()
        };
        let waits: Vec<u64> = (1..=6).map(|a| c.backoff(a).as_millis() as u64).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(c.backoff(u32::MAX), Duration::from_millis(1000));
    }

    #[test]
    fn event_ids_look_like_uuids() {
        let id = event_id();
        let parts: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12], "{id}");
    }
}
