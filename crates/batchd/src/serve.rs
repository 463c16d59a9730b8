//! `batchd serve`: the Bedrock control plane over HTTP, with the scheduler running jobs.
//! SIGTERM/SIGINT stop accepting requests, checkpoint running jobs (they stay `InProgress` and
//! resume on the next start) and exit 0.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use batchd_api::{ApiConfig, CreateJobRequest, JobService, ServiceError};
use batchd_core::JobId;
use batchd_engine::Engine;
use batchd_engine::scheduler::{CreateJob, ModelEntry, Scheduler, SchedulerConfig, SchedulerError};
use batchd_storage::Storage;
use batchd_store::{JobFilter, JobRecord, JobStore};

use crate::config::Config;

pub struct ServeArgs {
    pub listen: SocketAddr,
    pub data_dir: Option<PathBuf>,
    pub config: Option<PathBuf>,
}

/// The API's view of the scheduler.
struct SchedulerService(Scheduler);

fn service_error(e: SchedulerError) -> ServiceError {
    match e {
        SchedulerError::UnknownModel(m) | SchedulerError::BadRequest(m) => {
            ServiceError::Validation(m)
        }
        SchedulerError::Conflict(m) => ServiceError::Conflict(m),
        SchedulerError::QuotaExceeded(m) => ServiceError::QuotaExceeded(m),
        SchedulerError::NotFound(id) => ServiceError::NotFound(format!("Could not find job {id}")),
        SchedulerError::Store(e) => ServiceError::Internal(e.to_string()),
    }
}

#[async_trait::async_trait]
impl JobService for SchedulerService {
    async fn create_job(&self, r: CreateJobRequest) -> Result<JobRecord, ServiceError> {
        let job = CreateJob {
            name: r.job_name,
            model_id: r.model_id,
            role_arn: Some(r.role_arn),
            client_request_token: r.client_request_token,
            invocation_type: r.invocation_type,
            input_uri: r.input_uri,
            output_uri: r.output_uri,
            timeout_hours: r.timeout_hours,
            request_json: Some(r.request_json),
        };
        self.0.create(job).await.map_err(service_error)
    }

    async fn get_job(&self, id: &JobId) -> Result<JobRecord, ServiceError> {
        match self.0.store().get(id).await {
            Ok(Some(job)) => Ok(job),
            Ok(None) => Err(ServiceError::NotFound(format!("Could not find job {id}"))),
            Err(e) => Err(ServiceError::Internal(e.to_string())),
        }
    }

    async fn list_jobs(&self, filter: JobFilter) -> Result<Vec<JobRecord>, ServiceError> {
        self.0
            .store()
            .list(&filter)
            .await
            .map_err(|e| ServiceError::Internal(e.to_string()))
    }

    async fn stop_job(&self, id: &JobId) -> Result<(), ServiceError> {
        self.0.stop(id).await.map_err(service_error)
    }
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref())?;
    let data_dir = config.data_dir(args.data_dir.as_deref());
    let storage = Arc::new(Storage::new(config.storage_config(&data_dir)));
    let mut engine_config = config.engine_config(None);
    engine_config.quotas = Some(config.quotas.quotas());
    let engine = Engine::new(storage, engine_config);
    let store = JobStore::open(&data_dir.join("batchd.sqlite"))
        .await
        .with_context(|| format!("cannot open the job store in {}", data_dir.display()))?;

    let mut models = HashMap::new();
    let embedded = crate::embedded::EmbeddedModels::new(config.embedded.clone());
    for model in &config.models {
        let (backend, concurrency) =
            crate::build_backend(model, None, config.engine.concurrency, &embedded)?;
        models.insert(
            model.id.clone(),
            ModelEntry {
                backend,
                concurrency,
                records: model.record_options(),
            },
        );
    }
    let scheduler_config = SchedulerConfig {
        max_running_jobs: config.limits.max_running_jobs,
        max_active_jobs_per_model: config.limits.max_jobs_per_model,
        timeout_unit: Duration::from_secs_f64(config.limits.timeout_unit_seconds),
        default_timeout_hours: config.limits.default_timeout_hours,
        region: config.server.region.clone(),
        account_id: config.server.account_id.clone(),
        ..SchedulerConfig::default()
    };
    let scheduler = Scheduler::new(engine, store.clone(), models, scheduler_config);
    scheduler.start();

    let api_config = ApiConfig {
        region: config.server.region.clone(),
        account_id: config.server.account_id.clone(),
    };
    let app = batchd_api::router(Arc::new(SchedulerService(scheduler.clone())), api_config);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    // Scripts and tests read the address (the port may have been 0) from this first line.
    println!("listening on http://{addr}");
    eprintln!(
        "batchd serve: Bedrock batch API on http://{addr} (data dir {}), {} model(s)",
        data_dir.display(),
        config.models.len()
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(crate::wait_for_signal())
        .await
        .context("server error")?;
    eprintln!("batchd serve: shutting down; running jobs checkpoint and resume on the next start");
    scheduler.shutdown().await;
    store.close().await;
    Ok(())
}
