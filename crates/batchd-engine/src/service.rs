//! The scheduler as the APIs' [`JobService`] and [`Files`] as the OpenAI API's
//! [`FileService`] (feature `api`): the adapters that `batchd serve` and the API crate's HTTP
//! tests both use, so those tests exercise the real scheduler, store and storage.

use batchd_api::{
    ByteStream, FailedPage, FailedRecord, FileService, JobService, LiveProgress, ServiceError,
};
use batchd_core::{FileFilter, FileRecord, Job, JobFilter, JobId, JobOrigin, JobRequest};

use futures::{StreamExt, TryStreamExt};

use crate::files::{Files, FilesError};
use crate::scheduler::{Scheduler, SchedulerError};

/// The API's view of the scheduler: only jobs of origin `Api` exist for it.
#[derive(Clone)]
pub struct SchedulerService(pub Scheduler);

/// A store failure, as the API reports it.
fn internal(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Internal(e.to_string())
}

fn service_error(e: SchedulerError) -> ServiceError {
    match e {
        SchedulerError::UnknownModel(m) | SchedulerError::BadRequest(m) => {
            ServiceError::Validation(m)
        }
        SchedulerError::Conflict(m) => ServiceError::Conflict(m),
        SchedulerError::QuotaExceeded(m) => ServiceError::QuotaExceeded(m),
        SchedulerError::NotFound(id) => ServiceError::NotFound(format!("Could not find job {id}")),
        SchedulerError::Store(e) => internal(e),
        SchedulerError::Internal(m) => ServiceError::Internal(m),
    }
}

impl SchedulerService {
    /// A job with the counters its execution has written so far, when this server runs it:
    /// the store has them only as of the last checkpoint (every 5 s for S3 output), so every
    /// API's Get and List show progress within the 50 ms the pipeline publishes it at.
    fn with_live_counters(&self, mut job: Job) -> Job {
        if !job.status.is_terminal()
            && let Some(live) = self.0.live_progress(&job.id)
            && live.counters.processed >= job.counters.processed
        {
            job.counters = batchd_core::Counters {
                total: job.counters.total.max(live.counters.total),
                ..live.counters
            };
        }
        job
    }
}

#[async_trait::async_trait]
impl JobService for SchedulerService {
    async fn create_job(&self, request: JobRequest) -> Result<Job, ServiceError> {
        self.0.create(request).await.map_err(service_error)
    }

    async fn get_job(&self, account: &str, id: &JobId) -> Result<Job, ServiceError> {
        match self.0.store().get(id).await {
            // `batchd run`'s jobs are not the API's, and another account's job is not the
            // caller's: not found, as an unknown id (never "forbidden": ids do not leak).
            Ok(Some(job))
                if job.request.origin == JobOrigin::Api && job.request.account_id == account =>
            {
                Ok(self.with_live_counters(job))
            }
            Ok(_) => Err(ServiceError::NotFound(format!("Could not find job {id}"))),
            Err(e) => Err(internal(e)),
        }
    }

    async fn job_tags(
        &self,
        account: &str,
        id: &JobId,
    ) -> Result<Vec<(String, String)>, ServiceError> {
        self.get_job(account, id).await?;
        self.0.store().tags(id).await.map_err(internal)
    }

    async fn tag_job(
        &self,
        account: &str,
        id: &JobId,
        tags: Vec<(String, String)>,
    ) -> Result<(), ServiceError> {
        self.get_job(account, id).await?;
        self.0.store().set_tags(id, &tags).await.map_err(internal)
    }

    async fn untag_job(
        &self,
        account: &str,
        id: &JobId,
        keys: Vec<String>,
    ) -> Result<(), ServiceError> {
        self.get_job(account, id).await?;
        self.0
            .store()
            .remove_tags(id, &keys)
            .await
            .map_err(internal)
    }

    async fn list_jobs(&self, filter: JobFilter) -> Result<Vec<Job>, ServiceError> {
        self.0
            .store()
            .list(&filter)
            .await
            .map(|jobs| {
                jobs.into_iter()
                    .map(|job| self.with_live_counters(job))
                    .collect()
            })
            .map_err(internal)
    }

    async fn stop_job(&self, account: &str, id: &JobId) -> Result<(), ServiceError> {
        self.get_job(account, id).await?;
        self.0.stop(id).await.map_err(service_error)
    }

    async fn live_progress(&self, id: &JobId) -> Option<LiveProgress> {
        let progress = self.0.live_progress(id)?;
        Some(LiveProgress {
            counters: progress.counters,
            timing: progress.timing,
        })
    }

    async fn job_analysis(&self, job: &Job) -> Option<serde_json::Value> {
        let output = batchd_storage::StorageUri::parse(&job.request.output).ok()?;
        let uri = output.join(&format!("{}.analysis.json", job.id));
        let bytes = self.0.engine().storage().get(&uri).await.ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    async fn failed_records(
        &self,
        job: &Job,
        offset: u64,
        limit: usize,
    ) -> Result<FailedPage, ServiceError> {
        let output = batchd_storage::StorageUri::parse(&job.request.output).map_err(internal)?;
        let dir = output.join(job.id.as_str());
        let storage = self.0.engine().storage();
        let max_line = self.0.engine().config.max_line_bytes;
        let files = match crate::analysis::result_files(storage, &dir).await {
            Ok(files) => files,
            // Nothing written yet.
            Err(crate::analysis::AnalysisError::NothingThere { .. }) => {
                return Ok(FailedPage::default());
            }
            Err(e) => return Err(internal(e)),
        };
        let (mut page, mut seen) = (FailedPage::default(), 0u64);
        for file in files {
            let name = file.file.relative.clone();
            crate::analysis::read_results(
                storage,
                &file,
                max_line,
                batchd_formats::analysis::Detail::Full,
                |position, result| {
                    let Some(error) = result.error else {
                        return Ok(());
                    };
                    seen += 1;
                    if seen <= offset {
                    } else if page.records.len() < limit {
                        page.records.push(FailedRecord {
                            file: name.clone(),
                            position,
                            id: result.id,
                            input: result.input,
                            code: error.code,
                            message: error.message,
                        });
                    } else {
                        page.more = true;
                    }
                    Ok(())
                },
            )
            .await
            .map_err(internal)?;
        }
        Ok(page)
    }

    async fn start_job(&self, account: &str, id: &JobId) -> Result<Job, ServiceError> {
        self.get_job(account, id).await?;
        self.0.start_job(id).await.map_err(service_error)
    }
}

fn file_error(e: FilesError) -> ServiceError {
    match e {
        FilesError::NotFound(id) => ServiceError::NotFound(format!("No such File object: {id}")),
        // OpenAI's words: the API shows them as they are.
        FilesError::TooLarge { .. } => ServiceError::Validation("File is too large.".into()),
        FilesError::Body(e) => ServiceError::Validation(format!("The upload broke off: {e}")),
        e @ (FilesError::Storage(_) | FilesError::Store(_) | FilesError::Entropy(_)) => internal(e),
    }
}

#[async_trait::async_trait]
impl FileService for Files {
    async fn upload(
        &self,
        account: &str,
        filename: &str,
        purpose: &str,
        expires_after_seconds: Option<i64>,
        body: ByteStream<'_>,
        max_bytes: u64,
    ) -> Result<FileRecord, ServiceError> {
        Files::upload(
            self,
            account,
            filename,
            purpose,
            expires_after_seconds,
            body,
            max_bytes,
        )
        .await
        .map_err(file_error)
    }

    async fn get(&self, account: &str, id: &str) -> Result<FileRecord, ServiceError> {
        Files::get(self, account, id).await.map_err(file_error)
    }

    async fn list(&self, filter: FileFilter) -> Result<Vec<FileRecord>, ServiceError> {
        Files::list(self, &filter).await.map_err(file_error)
    }

    async fn delete(&self, account: &str, id: &str) -> Result<(), ServiceError> {
        Files::delete(self, account, id).await.map_err(file_error)
    }

    async fn content(&self, account: &str, id: &str) -> Result<ByteStream<'static>, ServiceError> {
        Files::content(self, account, id)
            .await
            // HTTP bodies take io errors.
            .map(|stream| stream.map_err(std::io::Error::other).boxed())
            .map_err(file_error)
    }
}
