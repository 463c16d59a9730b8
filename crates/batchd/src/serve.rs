//! `batchd serve`: the Bedrock control plane and the OpenAI API (`/v1`) over HTTP, with the
//! scheduler running jobs.
//! SIGTERM/SIGINT stop accepting requests, checkpoint running jobs (they stay `InProgress` and
//! resume on the next start) and exit 0.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use batchd_api::auth::{AuthLayer, Authenticator, Caller};
use batchd_api::bedrock::models::ModelInfo;
use batchd_api::s3::{LocalBuckets, S3Api};
use batchd_api::{ApiConfig, OpenAiApi};
use batchd_core::JobOrigin;
use batchd_engine::Engine;
use batchd_engine::files::Files;
use batchd_engine::scheduler::{ModelEntry, Scheduler};
use batchd_engine::service::SchedulerService;
use batchd_storage::Storage;
use batchd_store::SharedStore;

use crate::config::Config;
use crate::events::{EventStore, Events};

/// `batchd serve`'s arguments.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port, printed on the first line).
    #[arg(long, default_value = crate::DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Keep jobs in this PostgreSQL database (`postgres://user:password@host/db`) instead
    /// of `<data-dir>/batchd.sqlite`: instances sharing it serve one set of jobs.
    #[arg(long, env = "BATCHD_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key).
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
}

/// What `GET /batchd/metrics` reads.
struct Metrics {
    limiters: Vec<(String, Arc<batchd_backends::adaptive::Limiter>)>,
    store: SharedStore,
    /// For the running jobs' live counters (the store's are as of the last checkpoint).
    scheduler: Scheduler,
}

/// `GET /batchd/metrics`: each remote model's adaptive concurrency limit, and the caller's
/// running jobs with the limit of their model.
async fn metrics(
    axum::extract::State(m): axum::extract::State<Arc<Metrics>>,
    axum::extract::Extension(caller): axum::extract::Extension<Caller>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let limit_of = |model_id: &str| {
        batchd_core::ModelId::new(model_id)
            .resolve(|id| m.limiters.iter().find(|(m, _)| m == id).map(|(_, l)| l))
    };
    let models: Vec<serde_json::Value> = m
        .limiters
        .iter()
        .map(|(id, l)| {
            serde_json::json!({
                "modelId": id,
                "concurrencyLimit": l.current_limit(),
                "maxConcurrency": l.max_limit(),
                "inFlight": l.in_flight(),
            })
        })
        .collect();
    let running = m
        .store
        .list_in_status(JobOrigin::Api, &[batchd_core::JobStatus::InProgress])
        .await
        .unwrap_or_default();
    let live = |j: &batchd_core::Job| {
        m.scheduler
            .live_progress(&j.id)
            .map_or(j.counters, |p| p.counters)
    };
    let jobs: Vec<serde_json::Value> = running
        .iter()
        .filter(|j| j.request.account_id == caller.account_id)
        .map(|j| {
            serde_json::json!({
                "jobId": j.id.as_str(),
                "modelId": j.request.model_id,
                "processedRecordCount": live(j).processed,
                "totalRecordCount": live(j).total,
                "concurrencyLimit": limit_of(&j.request.model_id).map(|l| l.current_limit()),
            })
        })
        .collect();
    axum::Json(serde_json::json!({ "models": models, "jobs": jobs })).into_response()
}

/// What `GET /metrics` reads besides the recorder: the state sampled at each scrape.
struct Prometheus {
    handle: metrics_exporter_prometheus::PrometheusHandle,
    limiters: Vec<(String, Arc<batchd_backends::adaptive::Limiter>)>,
    store: SharedStore,
}

/// Gauges sampled at each scrape (the rest is recorded where it happens).
const CONCURRENCY_LIMIT: &str = "batchd_concurrency_limit";
const CONCURRENCY_MAX: &str = "batchd_concurrency_max";
const BACKEND_IN_FLIGHT: &str = "batchd_backend_in_flight";
const JOBS: &str = "batchd_jobs";

/// Installs the process's metrics recorder (the Prometheus exporter, rendered by `GET
/// /metrics`; no listener of its own) and describes every metric batchd records.
fn install_metrics() -> anyhow::Result<metrics_exporter_prometheus::PrometheusHandle> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(batchd_engine::metrics::BACKEND_LATENCY.into()),
            &batchd_engine::metrics::LATENCY_BUCKETS,
        )?
        .install_recorder()?;
    for (name, help) in batchd_engine::metrics::DESCRIPTIONS {
        metrics::describe_counter!(name, help);
    }
    let described = [
        (
            batchd_api::observe::API_REQUESTS,
            "API responses by route, method and status code",
        ),
        (
            crate::events::STATUS_CHANGES,
            "Status changes of server jobs, by the status reached",
        ),
        (
            crate::events::DELIVERIES,
            "Job events for the webhook, by outcome",
        ),
        (
            CONCURRENCY_LIMIT,
            "The adaptive concurrency limit of a remote model now",
        ),
        (
            CONCURRENCY_MAX,
            "The most calls a remote model may have in flight",
        ),
        (BACKEND_IN_FLIGHT, "Calls in flight to a remote model"),
        (JOBS, "Server jobs that have not ended, by status"),
    ];
    for (name, help) in described {
        metrics::describe_counter!(name, help);
    }
    Ok(handle)
}

/// `GET /metrics`: the Prometheus text exposition of every metric of the process.
async fn prometheus(
    axum::extract::State(p): axum::extract::State<Arc<Prometheus>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    for (id, l) in &p.limiters {
        let model = || [("model_id", id.clone())];
        metrics::gauge!(CONCURRENCY_LIMIT, &model()).set(l.current_limit() as f64);
        metrics::gauge!(CONCURRENCY_MAX, &model()).set(l.max_limit() as f64);
        metrics::gauge!(BACKEND_IN_FLIGHT, &model()).set(l.in_flight() as f64);
    }
    // Only unfinished jobs: ended ones are the status-change counter's (a count of every
    // job ever ended would read the whole store at each scrape).
    if let Ok(active) = p
        .store
        .list_in_status(JobOrigin::Api, &batchd_store::ACTIVE_STATUSES)
        .await
    {
        for status in batchd_store::ACTIVE_STATUSES
            .into_iter()
            .chain([batchd_core::JobStatus::Created])
        {
            let n = active.iter().filter(|j| j.status == status).count();
            metrics::gauge!(JOBS, "status" => status.as_str()).set(n as f64);
        }
    }
    p.handle.run_upkeep();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        p.handle.render(),
    )
        .into_response()
}

/// Refuses to serve everyone as one account anywhere but on loopback.
fn check_exposure(auth: &Authenticator, listen: SocketAddr) -> anyhow::Result<()> {
    if auth.is_open() && !listen.ip().is_loopback() {
        anyhow::bail!(
            "refusing to listen on {listen} without authentication: anyone who reaches it could \
             run and read jobs. Add an access key to the config file (--config), e.g.\n\n\
             [[auth.keys]]\n\
             access_key_id = \"AKIDBATCHD1\"\n\
             secret_access_key_env = \"BATCHD_SECRET_ACCESS_KEY\"\n\
             account_id = \"111122223333\"\n\n\
             (or a bearer key under [[auth.tokens]]; see README, Authentication), or listen \
             on 127.0.0.1"
        );
    }
    Ok(())
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref())?;
    if let Some(model) = &config.server.catch_all_model
        && !config.models.iter().any(|m| &m.id == model)
    {
        anyhow::bail!(
            "server.catch_all_model {model:?} is not a model id of the config ([[models]] or a \
             built-in one such as batchd.smollm2-135m-instruct)"
        );
    }
    let auth = Arc::new(Authenticator::new(config.auth_config()?));
    check_exposure(&auth, args.listen)?;
    let tls = crate::listener::tls_paths(
        args.tls_cert.or(config.server.tls_cert.clone()),
        args.tls_key.or(config.server.tls_key.clone()),
    )?
    .map(|(cert, key)| crate::listener::tls_config(&cert, &key))
    .transpose()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let data_dir = config.data_dir(args.data_dir.as_deref());
    let storage_config = config.storage_config(&data_dir);
    let local_buckets = storage_config.local_buckets();
    let s3_endpoint = storage_config.s3_endpoint.clone();
    let storage = Arc::new(Storage::new(storage_config));
    let mut engine_config = config.engine_config(None);
    engine_config.quotas = Some(config.quotas.quotas());
    let shutdown_grace = engine_config.shutdown_grace;
    let engine = Engine::new(storage.clone(), engine_config);
    let metrics_handle = install_metrics()?;
    let jobs = config
        .open_store(args.database_url.as_deref(), &data_dir)
        .await?;
    // Every status change goes through the store: the events see them all there.
    let (events, events_task) = Events::start(&config.events, &config.server.region)?;
    let store: SharedStore = EventStore::new(jobs, events);

    let mut models = HashMap::new();
    // Each remote model's adaptive limit, for GET /batchd/metrics.
    let mut limiters = Vec::new();
    let embedded = crate::embedded::EmbeddedModels::new(config.embedded.clone());
    for model in &config.models {
        let (backend, concurrency, limiter) =
            crate::build_backend_adaptive(model, None, &config.engine, &embedded).await?;
        if let Some(limiter) = limiter {
            limiters.push((model.id.clone(), limiter));
        }
        models.insert(
            model.id.clone(),
            ModelEntry {
                backend,
                shared_backend: model.shared_backend(),
                concurrency,
                records: model.record_options(),
            },
        );
    }
    let mut scheduler_config = config.scheduler_config();
    // On Postgres, other instances may share the store: work is taken under leases.
    if args.database_url.is_some() || config.database_url.is_some() {
        let cluster = config.cluster.cluster_config()?;
        tracing::info!(instance = %cluster.instance_id, "job store shared through leases");
        scheduler_config.cluster = Some(cluster);
    }
    let scheduler = Scheduler::new(engine, store.clone(), models, scheduler_config);
    scheduler.start();

    let api_config = ApiConfig {
        region: config.server.region.clone(),
        account_id: config.server.account_id.clone(),
        models: config
            .models
            .iter()
            .map(|m| ModelInfo {
                model_id: m.id.clone(),
                embedding: m.is_embedding(),
            })
            .collect(),
    };
    let openai = OpenAiApi {
        files: Arc::new(Files::new(
            storage,
            store.clone(),
            config.files_root(&data_dir)?,
        )),
        config: config.openai_config(),
    };
    let metrics_route = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(prometheus).with_state(Arc::new(Prometheus {
                handle: metrics_handle,
                limiters: limiters.clone(),
                store: store.clone(),
            })),
        )
        .route(
            "/batchd/metrics",
            axum::routing::get(metrics).with_state(Arc::new(Metrics {
                limiters,
                store: store.clone(),
                scheduler: scheduler.clone(),
            })),
        )
        .layer(axum::middleware::from_fn_with_state(
            AuthLayer {
                auth: auth.clone(),
                service: batchd_api::bedrock::SERVICE,
                max_body_bytes: batchd_api::bedrock::MAX_BODY_BYTES,
                render: batchd_api::bedrock::error::render_auth_error,
            },
            batchd_api::auth::layer,
        ));
    let app = metrics_route
        .merge(batchd_api::router(
            Arc::new(SchedulerService(scheduler.clone())),
            api_config,
            Some(openai),
            auth.clone(),
        ))
        .layer(axum::middleware::from_fn(
            batchd_api::observe::count_requests,
        ));
    // The S3 API serves the local buckets; with an S3 endpoint configured, `s3://` is that
    // store's, and S3 clients should talk to it.
    let s3_api = match &local_buckets {
        Some(root) => {
            let buckets = LocalBuckets::new(root.clone(), &data_dir.join("s3-staging"))
                .with_context(|| {
                    format!(
                        "cannot prepare the S3 API's folders in {}",
                        data_dir.display()
                    )
                })?;
            Some(S3Api::new(buckets, auth.clone()))
        }
        None => None,
    };
    let app = match s3_api {
        Some(api) => batchd_api::s3::with_s3(app, api),
        None => app,
    };
    let listener =
        listen(args.listen).with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    if let Some(endpoint) = s3_endpoint.as_deref()
        && names_this_server(endpoint, addr)
    {
        anyhow::bail!(
            "the S3 endpoint {endpoint} ([storage] s3_endpoint or AWS_ENDPOINT_URL_S3) is this \
             server itself: its jobs would read and write through their own API. Unset it to \
             serve the local buckets in {} (the S3 API is then on {addr})",
            data_dir.join("buckets").display()
        );
    }
    // Scripts and tests read the address (the port may have been 0) from this first line.
    println!("listening on {scheme}://{addr}");
    eprintln!(
        "batchd serve: Bedrock batch API on {scheme}://{addr}, OpenAI API on {scheme}://{addr}/v1 \
         (data dir {}), {} model(s)",
        data_dir.display(),
        config.models.len()
    );
    match &local_buckets {
        Some(root) => eprintln!(
            "batchd serve: S3 API on {scheme}://{addr} over {} (aws s3 --endpoint-url {scheme}://{addr})",
            root.display()
        ),
        None => eprintln!("batchd serve: no S3 API: s3:// locations are the configured endpoint's"),
    }
    let a = auth.config();
    if auth.is_open() {
        eprintln!(
            "batchd serve: authentication is off (no [[auth.keys]] or [[auth.tokens]] in the \
             config): every caller is account {}; allowed because {addr} is a loopback address",
            a.anonymous_account
        );
    } else {
        eprintln!(
            "batchd serve: authentication on: {} access key(s), {} bearer key(s), regions: {}",
            a.keys.len(),
            a.tokens.len(),
            a.regions
                .as_ref()
                .map_or("any".to_owned(), |r| r.join(", "))
        );
    }
    crate::listener::serve(
        listener,
        app,
        tls,
        config.server.limits(),
        crate::wait_for_signal(),
        shutdown_grace,
    )
    .await;
    eprintln!(
        "batchd serve: shutting down; records in flight get {:?} to finish, running jobs \
         checkpoint and resume on the next start (a second signal exits at once)",
        shutdown_grace
    );
    // The last checkpoint stays valid whenever the process dies, so a second signal may
    // simply exit: the jobs resume from there.
    tokio::spawn(async {
        crate::wait_for_signal().await;
        eprintln!("batchd serve: second signal, exiting now");
        std::process::exit(130);
    });
    scheduler.shutdown().await;
    if let Some(delivery) = events_task {
        // The queue's last events (the jobs' final statuses) get a few seconds to go out.
        delivery.finish(std::time::Duration::from_secs(5)).await;
    }
    store.close().await;
    Ok(())
}

/// Whether an endpoint URL names the address this server listens on (a client of this
/// machine reaching it on loopback or on that address).
fn names_this_server(endpoint: &str, addr: SocketAddr) -> bool {
    let rest = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (host, port.parse::<u16>().ok()),
        _ => (authority, None),
    };
    let port = port.unwrap_or(if endpoint.starts_with("https://") {
        443
    } else {
        80
    });
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let local = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() || ip == addr.ip());
    port == addr.port() && local
}

/// Binds with a deep accept queue: a burst of clients (a thousand boto3 pollers) otherwise
/// overflows the default one and waits a second for SYN retries.
fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_on_this_servers_port_is_this_server() {
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        for endpoint in [
            "http://127.0.0.1:8080",
            "http://localhost:8080/",
            "http://[::1]:8080",
        ] {
            assert!(names_this_server(endpoint, addr), "{endpoint}");
        }
        for endpoint in [
            "http://127.0.0.1:9000",
            "http://minio.internal:8080",
            "https://s3.amazonaws.com",
            "http://10.0.0.5:8080",
        ] {
            assert!(!names_this_server(endpoint, addr), "{endpoint}");
        }
        let public: SocketAddr = "10.0.0.5:8080".parse().unwrap();
        assert!(names_this_server("http://10.0.0.5:8080", public));
    }
}
