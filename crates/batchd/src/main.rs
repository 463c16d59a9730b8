//! The batchd binary: `batchd run` runs one batch job in-process, `batchd validate` checks
//! input files, `batchd results` analyses a job's results. Config, storage, backends and the job store are built here, once.

mod client;
mod config;
mod embedded;
mod events;
mod listener;
mod results;
mod serve;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use batchd_backends::ModelBackend;
use batchd_backends::adaptive::{AdaptiveBackend, AdaptiveConfig, Limiter};
use batchd_backends::bedrock::{AwsEnvironment, BedrockBackend, BedrockConfig};
use batchd_backends::openai::{OpenAiBackend, OpenAiConfig, server_slots};
use batchd_core::{InvocationType, Job, JobArn, JobId, JobOrigin, JobRequest, JobStatus, NewJob};
use batchd_engine::{
    Engine, JobContext, JobOutcome, JobSpec, Progress, RecordOptions, RetryPolicy, StopReason,
    StopSignal,
};
use batchd_formats::native::ModelFamily;
use batchd_storage::{Storage, StorageUri};
use batchd_store::{JobStore, SqliteStore};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::watch;

use crate::config::{Backend, Config, ModelConfig};

/// mimalloc rather than glibc's malloc: allocation was a fifth of the CPU per record, most of
/// it small short-lived buffers that mimalloc's thread-local pages serve without locks.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Where `batchd serve` listens, and where `batchd jobs` looks for it, by default.
const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:8080";

#[derive(Parser)]
#[command(
    name = "batchd",
    version,
    about = "Self-hosted batch inference in Amazon Bedrock's batch format"
)]
struct Cli {
    /// Log lines on stderr: `text` for people, `json` (one object a line, with the job and
    /// record spans' fields) for log collectors. `BATCHD_LOG` sets the level (default warn).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum InvocationArg {
    Converse,
    InvokeModel,
}

impl From<InvocationArg> for InvocationType {
    fn from(a: InvocationArg) -> Self {
        match a {
            InvocationArg::Converse => InvocationType::Converse,
            InvocationArg::InvokeModel => InvocationType::InvokeModel,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run one batch job in this process and print a summary.
    Run(RunArgs),
    /// Serve the Bedrock batch control plane (boto3 / AWS CLI with --endpoint-url) and run jobs.
    Serve(serve::ServeArgs),
    /// Talk to a running `batchd serve`: create, get, list, stop and wait for jobs.
    Jobs {
        #[arg(long, env = "BATCHD_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
        endpoint: String,
        /// A bearer key of the server's [[auth.tokens]] (sent as `Authorization: Bearer`).
        #[arg(long, env = "BATCHD_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        #[command(subcommand)]
        command: client::JobsCommand,
    },
    /// Analyse a job's results: counts, success rate, errors by code, processing time
    /// percentiles, tokens, throughput and cost; export one row per record.
    Results(results::ResultsArgs),
    /// Check input files; print every defect as file:line: field: reason.
    Validate {
        #[arg(required = true)]
        inputs: Vec<String>,
        #[arg(long, value_enum, default_value = "converse")]
        invocation_type: InvocationArg,
        /// Validate for this model (its InvokeModel format and Converse options).
        #[arg(long)]
        model_id: Option<String>,
        /// InvokeModel body format (anthropic, titan-text, titan-embed, nova, llama,
        /// mistral); default: the model's `format`, else what its id implies.
        #[arg(long, value_parser = parse_family)]
        format: Option<ModelFamily>,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Write files that teach an SDK batchd's own API.
    Sdk {
        #[command(subcommand)]
        command: SdkCommand,
    },
}

#[derive(clap::Subcommand)]
enum SdkCommand {
    /// Write botocore's service-model extras for the batch-job API
    /// (`DIR/bedrock/2023-04-20/service-2.sdk-extras.json`). With `AWS_DATA_PATH=DIR`,
    /// `boto3.client("bedrock")` gains create/start/get/list/stop_batch_inference_job.
    Botocore {
        /// The directory to put on AWS_DATA_PATH.
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BATCHD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        // Every enclosing span (job, attempt) with its fields, so a line stands on its own.
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
    // One TLS provider for every HTTPS client (S3, remote backends).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    // `serve` keeps one worker per core (or TOKIO_WORKER_THREADS) for its many jobs and
    // callers; every other command runs on its own threads (`batchd run --threads`, else one).
    let serve = matches!(cli.command, Command::Serve(_));
    if !serve {
        runtime.worker_threads(match &cli.command {
            Command::Run(args) => args.threads.get(),
            _ => 1,
        });
    }
    let runtime = match runtime.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = if serve {
        runtime.block_on(dispatch(cli))
    } else {
        // On a worker, not on this thread: a job's pipeline and its record tasks then wake
        // each other within the runtime's threads, not across to this one (a futex call or
        // two per record; docs/benchmarks.md has the figures).
        runtime
            .block_on(async { tokio::spawn(dispatch(cli)).await })
            .unwrap_or_else(|e| Err(anyhow::anyhow!("the command's task failed: {e}")))
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run(args).await,
        Command::Results(args) => results::results(args).await,
        Command::Jobs {
            endpoint,
            api_key,
            command,
        } => client::run(&endpoint, api_key, command).await,
        Command::Sdk {
            command: SdkCommand::Botocore { dir },
        } => {
            let path = dir.join(batchd_api::batch_job::BOTOCORE_EXTRAS_PATH);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            std::fs::write(&path, batchd_api::batch_job::BOTOCORE_EXTRAS)
                .with_context(|| format!("cannot write {}", path.display()))?;
            println!("{}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(args) => {
            serve::serve(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate {
            inputs,
            invocation_type,
            model_id,
            format,
            config,
            data_dir,
        } => {
            validate(ValidateArgs {
                inputs,
                invocation_type: invocation_type.into(),
                model_id,
                format,
                config,
                data_dir,
            })
            .await
        }
    }
}

/// `batchd run`'s arguments.
#[derive(clap::Args)]
struct RunArgs {
    /// Input `.jsonl` files or folders/prefixes (local paths or s3://bucket/key).
    #[arg(required_unless_present = "resume", conflicts_with = "resume")]
    inputs: Vec<String>,
    /// The model id the records run on (a [[models]] entry of the config).
    #[arg(long, required_unless_present = "resume", conflicts_with = "resume")]
    model_id: Option<String>,
    /// Resume an interrupted run (killed, crashed, or stopped by a shutdown) from its last
    /// checkpoint: its inputs, model and output come from the job store in --data-dir.
    #[arg(long, value_name = "JOB_ID")]
    resume: Option<String>,
    /// Output folder or s3:// prefix; the job writes to <out>/<jobId>/.
    #[arg(long)]
    out: Option<String>,
    /// Format of the records' modelInput.
    #[arg(long, value_enum, default_value = "converse")]
    invocation_type: InvocationArg,
    /// InvokeModel body format (anthropic, titan-text, titan-embed, nova, llama,
    /// mistral); default: the model's `format`, else what its id implies.
    #[arg(long, value_parser = parse_family)]
    format: Option<ModelFamily>,
    #[arg(long, help = format!(
        "Records in flight at once (default: the model's max_concurrency, else the \
         slots its server reports in /props (llama-server), else engine.concurrency, {})",
        JobSpec::DEFAULT_CONCURRENCY
    ))]
    concurrency: Option<usize>,
    #[arg(long, help = format!(
        "Attempts per record for retryable errors (default: engine.max_attempts, {})",
        RetryPolicy::default().max_attempts
    ))]
    max_attempts: Option<u32>,
    #[arg(long)]
    config: Option<PathBuf>,
    /// Local state: the job database and s3:// buckets without an endpoint.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Name recorded for the job.
    #[arg(long)]
    job_name: Option<String>,
    /// Print no progress bar.
    #[arg(long)]
    quiet: bool,
    /// Threads that run the job's pipeline, HTTP calls and output (the embedded models have
    /// threads of their own). One keeps up with tens of thousands of records a second and
    /// spends the least CPU per record; more help only when batchd itself is the bottleneck.
    #[arg(long, default_value = "1", value_name = "N")]
    threads: std::num::NonZeroUsize,
}

fn parse_family(name: &str) -> Result<ModelFamily, String> {
    ModelFamily::from_name(name).ok_or_else(|| {
        format!(
            "unknown format {name:?}; one of {}",
            ModelFamily::ALL.map(ModelFamily::name).join(", ")
        )
    })
}

fn parse_uris(inputs: &[String]) -> anyhow::Result<Vec<StorageUri>> {
    inputs
        .iter()
        .map(|s| StorageUri::parse(s).map_err(anyhow::Error::from))
        .collect()
}

/// A model's backend, its concurrency and its adaptive limiter (remote backends only).
pub(crate) type AdaptiveModel = (Arc<dyn ModelBackend>, usize, Option<Arc<Limiter>>);

/// [`build_backend`], with remote backends wrapped in an [`AdaptiveBackend`] (unless
/// `engine.adaptive_concurrency = false`) whose limit starts at, and never exceeds, the
/// model's concurrency; its limiter is returned for progress displays. Build it once per
/// model: every job on the model shares the limit.
pub(crate) async fn build_backend_adaptive(
    model: &ModelConfig,
    requested: Option<usize>,
    engine: &config::EngineSection,
    embedded: &Arc<embedded::EmbeddedModels>,
) -> anyhow::Result<AdaptiveModel> {
    let default = default_concurrency(model, requested, engine.concurrency).await;
    let (backend, concurrency) = build_backend(model, requested, default, embedded)?;
    if matches!(model.backend, Backend::Embedded(_)) || !engine.adaptive_concurrency {
        return Ok((backend, concurrency, None));
    }
    let adaptive = AdaptiveBackend::new(backend, AdaptiveConfig::with_max(concurrency));
    let limiter = adaptive.limiter();
    Ok((Arc::new(adaptive), concurrency, Some(limiter)))
}

/// How long start-up waits for a model server's `/props`.
const SLOTS_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The concurrency of a model that sets none (no `--concurrency`, no `max_concurrency`): an
/// OpenAI-compatible server that says how many slots it decodes at once (llama-server's
/// `/props`) gets exactly that many records in flight: more only wait in its queue (no
/// faster, docs/benchmarks.md, and each waits out the queue inside its attempt timeout),
/// fewer leave slots idle. Any other server: `engine.concurrency`.
async fn default_concurrency(
    model: &ModelConfig,
    requested: Option<usize>,
    engine_default: usize,
) -> usize {
    let Backend::OpenAi(openai) = &model.backend else {
        return engine_default;
    };
    if requested.is_some() || model.max_concurrency.is_some() {
        return engine_default;
    }
    // A missing key variable is reported by build_backend; the probe just goes without.
    let api_key = openai
        .api_key_env
        .as_ref()
        .and_then(|var| std::env::var(var).ok());
    match server_slots(&openai.base_url, api_key.as_deref(), SLOTS_PROBE_TIMEOUT).await {
        Some(slots) => {
            tracing::info!(model = %model.id, slots, "concurrency: the server's slot count (/props)");
            slots
        }
        None => engine_default,
    }
}

/// The backend of a configured model, and the concurrency its jobs run at (an embedded chat
/// model runs as many records as it has slots, unless `requested` says otherwise).
pub(crate) fn build_backend(
    model: &ModelConfig,
    requested: Option<usize>,
    default_concurrency: usize,
    embedded: &Arc<embedded::EmbeddedModels>,
) -> anyhow::Result<(Arc<dyn ModelBackend>, usize)> {
    let concurrency = requested
        .or(model.max_concurrency)
        .unwrap_or(default_concurrency)
        .max(1);
    let cannot_build = || {
        format!(
            "model {}: cannot build the {} backend",
            model.id,
            model.backend.name()
        )
    };
    match &model.backend {
        Backend::Embedded(_) => {
            let kind = embedded::embedded_kind(model.model.as_deref(), &model.id)?;
            let concurrency = match kind {
                embedded::CHAT_MODEL => requested.unwrap_or_else(|| embedded.section().slots()),
                _ => concurrency,
            };
            let backend = embedded::EmbeddedBackend::new(embedded.clone(), kind);
            Ok((Arc::new(backend), concurrency.max(1)))
        }
        Backend::OpenAi(openai) => {
            let api_key = match &openai.api_key_env {
                Some(var) => Some(std::env::var(var).with_context(|| {
                    format!("model {}: api_key_env {var} is not set", model.id)
                })?),
                None => None,
            };
            let backend = OpenAiBackend::new(OpenAiConfig {
                base_url: openai.base_url.clone(),
                model: model.backend_model(),
                api_key,
                max_connections: concurrency,
            })
            .with_context(cannot_build)?;
            Ok((Arc::new(backend), concurrency))
        }
        Backend::Bedrock(bedrock) => {
            let config = BedrockConfig {
                model_id: model.backend_model(),
                region: bedrock.region.clone(),
                endpoint_url: bedrock.endpoint_url.clone(),
                max_connections: concurrency,
                profile: bedrock.profile.clone(),
            };
            // Credentials and region: the AWS environment, read here at start-up.
            let env = AwsEnvironment::from_lookup(|name| std::env::var(name).ok());
            let backend = BedrockBackend::new(config, &env).with_context(cannot_build)?;
            Ok((Arc::new(backend), concurrency))
        }
    }
}

/// What `batchd run` stores with a job so that `--resume` runs it the same way.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct RunRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    format: Option<String>,
}

/// Holds `<data-dir>/locks/<job id>.lock` while a process runs the job, so that two processes
/// never write one job's output. The OS releases it when the process dies, even by `kill -9`.
struct JobLock {
    _file: std::fs::File,
}

impl JobLock {
    fn path(data_dir: &std::path::Path, job_id: &str) -> PathBuf {
        data_dir.join("locks").join(format!("{job_id}.lock"))
    }

    /// `Ok(None)` when another process holds it.
    fn try_acquire(data_dir: &std::path::Path, job_id: &str) -> anyhow::Result<Option<Self>> {
        let path = Self::path(data_dir, job_id);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Self { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("cannot lock {}", path.display()))
            }
        }
    }
}

/// A local input or output path made absolute, so that `--resume` works from any folder.
fn absolute_uri(uri: StorageUri) -> anyhow::Result<StorageUri> {
    Ok(match uri {
        StorageUri::Local(path) => StorageUri::Local(
            std::path::absolute(&path)
                .with_context(|| format!("cannot resolve {}", path.display()))?,
        ),
        other => other,
    })
}

/// Tells about runs in this data dir that died before they ended.
async fn note_interrupted_runs(store: &dyn JobStore, data_dir: &std::path::Path) {
    // The server resumes its own jobs; only `batchd run`'s are this process's to mention.
    let Ok(jobs) = store
        .list_in_status(
            JobOrigin::Run,
            &[
                JobStatus::InProgress,
                JobStatus::Validating,
                JobStatus::Scheduled,
                JobStatus::Stopping,
            ],
        )
        .await
    else {
        return;
    };
    for job in jobs {
        if let Ok(Some(_lock)) = JobLock::try_acquire(data_dir, job.id.as_str()) {
            eprintln!(
                "note: job {} ({}) was interrupted at {} of {} records; resume it with \
                 `batchd run --resume {}`",
                job.id,
                job.request.name,
                job.checkpoint.counters.processed,
                job.counters.total,
                job.id
            );
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(args.config.as_deref())?;
    let data_dir = config.data_dir(args.data_dir.as_deref());
    let store = SqliteStore::open(&data_dir.join("batchd.sqlite"))
        .await
        .with_context(|| format!("cannot open the job store in {}", data_dir.display()))?;

    // A resumed job brings its own inputs, model, output and format.
    let resumed = match &args.resume {
        Some(id) => {
            let job_id = JobId::parse(id).map_err(|e| anyhow::anyhow!("--resume {id}: {e}"))?;
            let job = store
                .get(&job_id)
                .await?
                .with_context(|| format!("--resume {id}: no such job in {}", data_dir.display()))?;
            if job.request.origin != JobOrigin::Run {
                bail!("--resume {id}: the job belongs to `batchd serve`, which resumes it itself");
            }
            if job.status.is_terminal() {
                bail!("--resume {id}: the job already ended ({})", job.status);
            }
            Some(job)
        }
        None => None,
    };
    let (model_id, format) = match &resumed {
        Some(job) => {
            let record: RunRecord = job
                .request
                .request_json
                .as_deref()
                .and_then(|j| serde_json::from_str(j).ok())
                .unwrap_or_default();
            let stored = record.format.as_deref().and_then(ModelFamily::from_name);
            (job.request.model_id.clone(), args.format.or(stored))
        }
        None => (args.model_id.clone().unwrap_or_default(), args.format),
    };
    let model = config.model(&model_id)?;
    let embedded_models = embedded::EmbeddedModels::new(config.embedded.clone());
    let (backend, concurrency, limiter) =
        build_backend_adaptive(model, args.concurrency, &config.engine, &embedded_models).await?;
    if let Backend::Embedded(_) = model.backend {
        // Missing model files are an error now, not one error line per record.
        embedded_models
            .preload(embedded::embedded_kind(model.model.as_deref(), &model.id)?)
            .await?;
    }
    let storage = Arc::new(Storage::new(config.storage_config(&data_dir)));
    let engine = Engine::new(storage, config.engine_config(args.max_attempts));

    let validated = resumed.as_ref().is_some_and(|job| {
        matches!(
            job.status,
            JobStatus::Scheduled | JobStatus::InProgress | JobStatus::Stopping
        )
    });
    let (job, _lock) = match resumed {
        Some(job) => {
            let Some(lock) = JobLock::try_acquire(&data_dir, job.id.as_str())? else {
                bail!("job {} is being run by another process", job.id);
            };
            eprintln!(
                "resuming job {} from record {} ({})",
                job.id, job.checkpoint.counters.processed, job.status
            );
            (job, lock)
        }
        None => {
            note_interrupted_runs(&store, &data_dir).await;
            create_run_job(&store, &config, &args, format, &data_dir).await?
        }
    };
    let spec = JobSpec::for_job(&job, record_options(model, format), concurrency)?;

    let stop = StopSignal::new();
    spawn_signal_handler(stop.clone());
    let (progress_tx, progress_rx) =
        watch::channel(Progress::new(JobStatus::Submitted, Default::default()));
    let show_bar = !args.quiet && std::io::stderr().is_terminal();
    let bar_task = tokio::spawn(show_progress(progress_rx, show_bar, limiter));
    eprintln!(
        "job {}: {} on model {} ({} in flight)",
        job.id,
        job.request.inputs.join(" "),
        model_id,
        concurrency
    );
    let job_context = JobContext {
        spec: &spec,
        store: &store,
        progress: &progress_tx,
        stop: &stop,
    };
    let outcome = if validated {
        engine.execute_job(job_context, backend).await
    } else {
        engine.run_job(job_context, backend).await
    };
    drop(progress_tx);
    let _ = bar_task.await;
    store.close().await;
    let outcome = outcome?;

    Ok(report(&job, &outcome))
}

/// Prints the run's summary on stdout and returns the exit code: 0 completed, 130 stopped,
/// 1 otherwise (a failed job prints its message instead of the counts).
fn report(job: &Job, outcome: &JobOutcome) -> ExitCode {
    let c = outcome.counters;
    let secs = outcome.elapsed.as_secs_f64();
    println!("job:       {} ({})", job.id, job.arn);
    println!("status:    {}", outcome.status);
    if outcome.status == JobStatus::Failed {
        if let Some(message) = &outcome.message {
            println!("{message}");
        }
        return ExitCode::from(1);
    }
    println!(
        "records:   {} total, {} processed, {} succeeded, {} failed",
        c.total, c.processed, c.success, c.error
    );
    println!(
        "tokens:    {} input, {} output",
        c.input_tokens, c.output_tokens
    );
    let rate = if secs > 0.0 {
        c.processed as f64 / secs
    } else {
        0.0
    };
    println!("elapsed:   {secs:.2} s ({rate:.1} records/s)");
    println!("output:    {}", outcome.output_dir);
    match outcome.status {
        JobStatus::Completed => ExitCode::SUCCESS,
        JobStatus::Stopped => ExitCode::from(130),
        _ => ExitCode::from(1),
    }
}

/// A new `batchd run` job in the store, from the command line (local paths made absolute),
/// and the lock that makes it this process's.
async fn create_run_job(
    store: &SqliteStore,
    config: &Config,
    args: &RunArgs,
    format: Option<ModelFamily>,
    data_dir: &std::path::Path,
) -> anyhow::Result<(Job, JobLock)> {
    let inputs = parse_uris(&args.inputs)?
        .into_iter()
        .map(|uri| absolute_uri(uri).map(|uri| uri.to_string()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let output = match &args.out {
        Some(out) => absolute_uri(StorageUri::parse(out)?)?,
        None => absolute_uri(StorageUri::Local(data_dir.join("output")))?,
    };
    let job_id = batchd_engine::ids::new_job_id().context("no randomness for a job id")?;
    let arn = JobArn::new(
        &config.server.region,
        &config.server.account_id,
        job_id.clone(),
    );
    let Some(lock) = JobLock::try_acquire(data_dir, job_id.as_str())? else {
        bail!("job {job_id} is locked by another process");
    };
    let record = RunRecord {
        format: format.map(|f| f.name().to_owned()),
    };
    let request = JobRequest {
        name: args
            .job_name
            .clone()
            .unwrap_or_else(|| format!("batchd-run-{job_id}")),
        account_id: config.server.account_id.clone(),
        model_id: args.model_id.clone().unwrap_or_default(),
        origin: JobOrigin::Run,
        role_arn: None,
        client_request_token: None,
        invocation_type: args.invocation_type.into(),
        inputs,
        output: output.to_string(),
        timeout_hours: None,
        request_json: serde_json::to_string(&record).ok(),
        dialect: batchd_core::Dialect::Bedrock,
    };
    let job = store
        .create(NewJob {
            id: job_id,
            arn: arn.to_string(),
            request,
            job_expiration_ms: None,
        })
        .await?;
    Ok((job, lock))
}

/// First Ctrl-C / SIGTERM: stop taking records and finish cleanly. Second: exit now.
fn spawn_signal_handler(stop: StopSignal) {
    tokio::spawn(async move {
        wait_for_signal().await;
        eprintln!("\nstopping: finishing records in flight (press Ctrl-C again to exit now)");
        stop.stop(StopReason::User);
        wait_for_signal().await;
        std::process::exit(130);
    });
}

pub(crate) async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn show_progress(
    mut rx: watch::Receiver<Progress>,
    visible: bool,
    limiter: Option<Arc<Limiter>>,
) {
    let bar = if visible {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {elapsed_precise} [{bar:30}] {pos}/{len} records  {per_sec}  ETA {eta}  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    loop {
        let p = *rx.borrow_and_update();
        match p.status {
            JobStatus::Submitted | JobStatus::Validating => bar.set_message("validating"),
            _ => {
                bar.set_length(p.counters.total);
                bar.set_position(p.counters.processed);
                // The adaptive concurrency limit, when the backend has one.
                let limit = limiter.as_ref().map_or(String::new(), |l| {
                    format!("  limit {}/{}", l.current_limit(), l.max_limit())
                });
                bar.set_message(format!("{} errors{limit}", p.counters.error));
            }
        }
        if rx.changed().await.is_err() {
            break;
        }
    }
    bar.finish_and_clear();
}

/// The model's record options, with `--format` over its own.
fn record_options(model: &ModelConfig, format: Option<ModelFamily>) -> RecordOptions {
    let mut options = model.record_options();
    if format.is_some() {
        options.family = format;
    }
    options
}

struct ValidateArgs {
    inputs: Vec<String>,
    invocation_type: InvocationType,
    model_id: Option<String>,
    format: Option<ModelFamily>,
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
}

async fn validate(args: ValidateArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(args.config.as_deref())?;
    let data_dir = config.data_dir(args.data_dir.as_deref());
    let storage = Arc::new(Storage::new(config.storage_config(&data_dir)));
    let engine = Engine::new(storage, config.engine_config(None));
    let uris = parse_uris(&args.inputs)?;
    let records = match &args.model_id {
        Some(id) => record_options(config.model(id)?, args.format),
        None => RecordOptions {
            family: args.format,
            ..RecordOptions::default()
        },
    };
    if args.invocation_type == InvocationType::InvokeModel && records.family.is_none() {
        bail!(
            "InvokeModel records need a body format: pass --format ({}) or --model-id of a model \
             that has one",
            ModelFamily::ALL.map(ModelFamily::name).join(", ")
        );
    }
    let report = engine
        .validate_input(
            &uris,
            args.invocation_type,
            &records,
            "validate0000",
            usize::MAX,
            batchd_engine::validate::Units::Records,
        )
        .await?;
    for defect in &report.defects {
        println!("{defect}");
    }
    let files = report.files.len();
    if report.is_valid() {
        eprintln!(
            "ok: {} records in {files} file{}",
            report.total_records,
            if files == 1 { "" } else { "s" }
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "{} defect{} in {files} file{} ({} valid records)",
            report.defect_count,
            if report.defect_count == 1 { "" } else { "s" },
            if files == 1 { "" } else { "s" },
            report.total_records
        );
        Ok(ExitCode::from(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_look_for_the_server_where_serve_listens_by_default() {
        assert_eq!(DEFAULT_ENDPOINT, format!("http://{DEFAULT_LISTEN}"));
        let serve = Cli::try_parse_from(["batchd", "serve"]).unwrap();
        let Command::Serve(args) = serve.command else {
            panic!("not serve")
        };
        assert_eq!(args.listen.to_string(), DEFAULT_LISTEN);
    }
}
