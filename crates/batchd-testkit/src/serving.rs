//! What both fakes share: [`Fake`], the running server's handle (stopped on drop, or gracefully
//! by `shutdown`) with the accessors of its config and counters, the config swapped as one
//! with its own served-request counter, and the `/fake/...` routes that read and change them.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A config with its own counter of requests served under it (`fail_first_n`,
/// `throttle_first_n` count from the moment the config is set).
pub(crate) struct Live<C> {
    pub(crate) config: C,
    pub(crate) served: AtomicU64,
}

pub(crate) struct LiveConfig<C>(RwLock<Arc<Live<C>>>);

impl<C> LiveConfig<C> {
    pub(crate) fn new(config: C) -> Self {
        LiveConfig(RwLock::new(Self::fresh(config)))
    }

    fn fresh(config: C) -> Arc<Live<C>> {
        Arc::new(Live {
            config,
            served: AtomicU64::new(0),
        })
    }

    pub(crate) fn get(&self) -> Arc<Live<C>> {
        match self.0.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub(crate) fn set(&self, config: C) {
        let live = Self::fresh(config);
        match self.0.write() {
            Ok(mut guard) => *guard = live,
            Err(poisoned) => *poisoned.into_inner() = live,
        }
    }
}

/// What a fake keeps between requests: its config and its counters.
pub trait FakeState: Send + Sync + 'static {
    type Config: Clone + Serialize + DeserializeOwned + Send;
    type Stats: Serialize;
    fn config(&self) -> Self::Config;
    fn set_config(&self, config: Self::Config);
    fn stats(&self) -> Self::Stats;
    fn reset_stats(&self);
    /// The answer to a `POST /fake/config` body that is not a config, in the fake's own error
    /// shape.
    fn config_error(message: &str) -> Response;
}

/// `GET /fake/stats`, `POST /fake/stats/reset` and `GET|POST /fake/config`: a new config
/// answers with itself, as the fake read it (missing fields take their defaults).
pub(crate) fn admin_routes<S: FakeState>() -> Router<Arc<S>> {
    Router::new()
        .route(
            "/fake/stats",
            get(|State(state): State<Arc<S>>| async move { Json(state.stats()) }),
        )
        .route(
            "/fake/stats/reset",
            post(|State(state): State<Arc<S>>| async move {
                state.reset_stats();
                StatusCode::NO_CONTENT
            }),
        )
        .route(
            "/fake/config",
            get(|State(state): State<Arc<S>>| async move { Json(state.config()) }).post(set_config),
        )
}

/// Takes raw bytes rather than `Json` so shell users need no `Content-Type` header.
async fn set_config<S: FakeState>(State(state): State<Arc<S>>, body: Bytes) -> Response {
    match serde_json::from_slice::<S::Config>(&body) {
        Ok(config) => {
            state.set_config(config.clone());
            Json(config).into_response()
        }
        Err(e) => S::config_error(&format!("invalid fake config: {e}")),
    }
}

/// A running fake over its state `S`. Dropping it stops the server too (without waiting).
pub struct Fake<S> {
    running: Running,
    pub(crate) state: Arc<S>,
}

impl<S: FakeState> Fake<S> {
    /// Binds `addr` and serves `state` with `serve`.
    pub(crate) async fn bind_with<Fut>(
        addr: SocketAddr,
        state: S,
        serve: impl FnOnce(TcpListener, Arc<S>, Stopped) -> Fut,
    ) -> io::Result<Self>
    where
        Fut: Future<Output = io::Result<()>> + Send + 'static,
    {
        let state = Arc::new(state);
        let served = state.clone();
        let running =
            Running::bind(addr, |listener, stopped| serve(listener, served, stopped)).await?;
        Ok(Fake { running, state })
    }

    pub fn addr(&self) -> SocketAddr {
        self.running.addr
    }

    pub fn stats(&self) -> S::Stats {
        self.state.stats()
    }

    pub fn reset_stats(&self) {
        self.state.reset_stats();
    }

    pub fn config(&self) -> S::Config {
        self.state.config()
    }

    /// Replaces the config; its first-n knob (`fail_first_n`, `throttle_first_n`) counts again
    /// from here.
    pub fn set_config(&self, config: S::Config) {
        self.state.set_config(config);
    }

    /// Stops accepting, lets requests in progress finish (at most 5 s), then returns.
    pub async fn shutdown(self) {
        self.running.shutdown().await;
    }
}

/// Resolves when the server is to stop: `shutdown` was called or the handle dropped.
pub(crate) type Stopped = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A server task on its own port.
struct Running {
    addr: SocketAddr,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<io::Result<()>>,
}

impl Running {
    /// Binds `addr` (port 0: the OS picks) and spawns `serve` on the listener.
    async fn bind<Fut>(
        addr: SocketAddr,
        serve: impl FnOnce(TcpListener, Stopped) -> Fut,
    ) -> io::Result<Running>
    where
        Fut: Future<Output = io::Result<()>> + Send + 'static,
    {
        // Tests build reqwest clients (rustls without a provider) right after starting a
        // fake; installing one here spares every test from doing it.
        crate::install_crypto_provider();
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(
            listener,
            Box::pin(async move {
                // A dropped sender (handle dropped) also stops it.
                let _ = shutdown_rx.await;
            }),
        ));
        Ok(Running {
            addr,
            shutdown,
            task,
        })
    }

    async fn shutdown(self) {
        let _ = self.shutdown.send(());
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(5), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}
