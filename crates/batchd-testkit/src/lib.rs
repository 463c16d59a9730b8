//! Dev-only test kit: [`FakeServer`], a fake OpenAI-compatible model server with knobs for
//! latency and error rates, used by tests and benchmarks. It is never a real backend.
//!
//! - `POST /v1/chat/completions`: echoes the last user message (or a fixed reply), honours
//!   `max_tokens` (finish `length`), `stop` (finish `stop`, vLLM-style `stop_reason`) and forced
//!   tool calls (finish `tool_calls`).
//! - `POST /v1/embeddings`: deterministic, L2-normalized vectors seeded by each input's text.
//! - `GET /v1/models`: one model.
//! - `GET /fake/stats` ([`FakeStats`] as JSON), `POST /fake/stats/reset`, `GET|POST /fake/config`
//!   ([`FakeConfig`] as JSON; a POST replaces it) for out-of-process users.
//!
//! Failures (by rate, `fail_first_n`, or a prompt marker) answer at once with an OpenAI-style
//! `{"error":{..}}` body; only successful answers wait for the configured latency.
//!
//! [`conformance`] holds the checks every `ModelBackend` passes; `fuzz` (feature `proptest`)
//! the property tests' JSON strategies.
//!
//! [`moto::MotoServer`] starts a moto S3-compatible server for storage tests.
//!
//! [`postgres::fresh_database`] gives a Postgres test its own database.
//!
//! [`harness::TestEnv`] is the one test environment of the `batchd` binary's tests: a typed
//! config written as `batchd.toml`, `batchd run`/`serve` as child processes, output readers.

pub mod conformance;
mod fake;
pub mod fake_bedrock;
#[cfg(feature = "proptest")]
pub mod fuzz;
pub mod harness;
pub mod moto;
pub mod postgres;
pub mod process;
mod serving;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

pub use serving::{Fake, FakeState};
use serving::{Live, LiveConfig};

/// The fake's behaviour. Serde names match the field names (`POST /fake/config`); missing
/// fields take their defaults. `batchd-fake` takes each field as a flag (`--latency-ms`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default)]
pub struct FakeConfig {
    /// Fixed latency added to every successful answer.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Plus a uniform random 0..=jitter.
    #[arg(long, default_value_t = 0)]
    pub latency_jitter_ms: u64,
    /// Fraction of requests answered 429 (with `Retry-After` if `retry_after_secs` is set;
    /// likewise 500, 503 and 400 for the other rates).
    #[arg(long, default_value_t = 0.0, value_parser = process::parse_rate)]
    pub rate_429: f64,
    #[arg(long, default_value_t = 0.0, value_parser = process::parse_rate)]
    pub rate_500: f64,
    #[arg(long, default_value_t = 0.0, value_parser = process::parse_rate)]
    pub rate_503: f64,
    #[arg(long, default_value_t = 0.0, value_parser = process::parse_rate)]
    pub rate_400: f64,
    /// Sent as `Retry-After` on 429 answers.
    #[arg(long)]
    pub retry_after_secs: Option<u64>,
    /// The first n requests after this config is set answer 503 (retry tests).
    #[arg(long, default_value_t = 0)]
    pub fail_first_n: u64,
    /// Fixed reply text; `None` echoes `echo: <last user message text>`.
    #[arg(long)]
    pub reply: Option<String>,
    /// Answer 400 when any message (or embedding input) contains this marker: a deterministic
    /// per-record failure.
    #[arg(long)]
    pub fail_when_prompt_contains: Option<String>,
    /// Requests beyond this many in progress at once answer 429 at once (with `Retry-After`
    /// if `retry_after_secs` is set): a server with a fixed capacity, for adaptive clients.
    #[arg(long)]
    pub capacity: Option<u64>,
    /// Answer `GET /props` with this `total_slots`, as llama.cpp's `llama-server` does; unset,
    /// `/props` is 404, as on vLLM or Ollama.
    #[arg(long)]
    pub total_slots: Option<u64>,
}

impl FakeConfig {
    /// Every successful answer after `ms`, plus a uniform random 0..=`jitter_ms`.
    pub fn latency(ms: u64, jitter_ms: u64) -> FakeConfig {
        FakeConfig {
            latency_ms: ms,
            latency_jitter_ms: jitter_ms,
            ..FakeConfig::default()
        }
    }
}

/// Counters since start (or the last reset).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FakeStats {
    /// Chat and embedding requests received.
    pub requests: u64,
    pub ok: u64,
    pub status_429: u64,
    pub status_500: u64,
    pub status_503: u64,
    /// Includes bodies the fake could not parse.
    pub status_400: u64,
    pub chat: u64,
    pub embeddings: u64,
    /// Highest number of requests in progress at once.
    pub max_in_flight: u64,
}

/// A running fake server. Dropping it stops the server too (without waiting).
pub type FakeServer = Fake<Shared>;

impl Fake<Shared> {
    /// Starts on 127.0.0.1 with a port the OS picks.
    pub async fn start(config: FakeConfig) -> std::io::Result<FakeServer> {
        Self::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    /// Starts on `addr`.
    pub async fn bind(addr: SocketAddr, config: FakeConfig) -> std::io::Result<FakeServer> {
        Fake::bind_with(addr, Shared::new(config), fake::serve).await
    }

    /// `http://127.0.0.1:PORT/v1`
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr())
    }

    /// From now on (and forgetting those kept so far), keeps each chat request's message
    /// texts, one line per message, in the order the requests arrive; off by default, so
    /// benchmarks pay nothing for it.
    pub fn record_prompts(&self) {
        *self.state.lock_prompts() = Some(Vec::new());
    }

    /// The requests' message texts kept since [`Self::record_prompts`], in arrival order.
    pub fn prompts(&self) -> Vec<String> {
        self.state.lock_prompts().clone().unwrap_or_default()
    }
}

/// For a test that needs what this machine may lack (model files, a server): prints why and
/// returns, so a developer's `cargo test` passes; under CI (`CI` set) it fails, saying
/// `ci_fix`, so CI never passes by skipping.
pub fn skip_unless_ci(why: &str, ci_fix: &str) {
    assert!(std::env::var_os("CI").is_none(), "{why} ({ci_fix})");
    // Straight to stderr: libtest captures `eprintln!` of passing tests.
    let _ = writeln!(std::io::stderr(), "skipping: {why}");
}

/// `found`'s value; or, when it is an error, `None` after [`skip_unless_ci`] has said
/// `what: <the error>`.
pub fn found_or_skip<T, E: std::fmt::Display>(
    found: Result<T, E>,
    what: &str,
    ci_fix: &str,
) -> Option<T> {
    found
        .map_err(|e| skip_unless_ci(&format!("{what}: {e}"), ci_fix))
        .ok()
}

/// Installs ring as the process-wide rustls provider if none is installed yet. reqwest is
/// built with `rustls-no-provider` and panics building a client without one.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The OpenAI-compatible fake's state.
pub struct Shared {
    live: LiveConfig<FakeConfig>,
    counters: Counters,
    /// Each chat request's message texts, when recording (`record_prompts`).
    prompts: std::sync::Mutex<Option<Vec<String>>>,
}

impl FakeState for Shared {
    type Config = FakeConfig;
    type Stats = FakeStats;

    fn config(&self) -> FakeConfig {
        self.live().config.clone()
    }

    fn set_config(&self, config: FakeConfig) {
        self.live.set(config);
    }

    fn stats(&self) -> FakeStats {
        self.counters.snapshot()
    }

    fn reset_stats(&self) {
        self.counters.reset();
    }

    fn config_error(message: &str) -> axum::response::Response {
        fake::config_error(message)
    }
}

impl Shared {
    fn new(config: FakeConfig) -> Self {
        Shared {
            live: LiveConfig::new(config),
            counters: Counters::default(),
            prompts: std::sync::Mutex::new(None),
        }
    }

    /// The prompt log; a panic elsewhere while it was held leaves it as it was.
    fn lock_prompts(&self) -> std::sync::MutexGuard<'_, Option<Vec<String>>> {
        self.prompts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn live(&self) -> Arc<Live<FakeConfig>> {
        self.live.get()
    }
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    ok: AtomicU64,
    status_429: AtomicU64,
    status_500: AtomicU64,
    status_503: AtomicU64,
    status_400: AtomicU64,
    chat: AtomicU64,
    embeddings: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> FakeStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        FakeStats {
            requests: get(&self.requests),
            ok: get(&self.ok),
            status_429: get(&self.status_429),
            status_500: get(&self.status_500),
            status_503: get(&self.status_503),
            status_400: get(&self.status_400),
            chat: get(&self.chat),
            embeddings: get(&self.embeddings),
            max_in_flight: get(&self.max_in_flight),
        }
    }

    fn reset(&self) {
        for counter in [
            &self.requests,
            &self.ok,
            &self.status_429,
            &self.status_500,
            &self.status_503,
            &self.status_400,
            &self.chat,
            &self.embeddings,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
        // Requests still running keep counting from here.
        self.max_in_flight
            .store(self.in_flight.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Counts a request in; the guard counts it out however the handler ends.
    fn enter(&self) -> InFlight<'_> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_in_flight.fetch_max(now, Ordering::Relaxed);
        InFlight(self)
    }
}

struct InFlight<'a>(&'a Counters);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
