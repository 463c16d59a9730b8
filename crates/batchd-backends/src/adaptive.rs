//! Adaptive concurrency: [`AdaptiveBackend`] wraps any [`ModelBackend`] and lets at most
//! [`AdaptiveBackend::current_limit`] calls run at once. The limit is AIMD: it starts at the
//! configured value, halves on overload (429, 503, 504, timeouts; at most once per round
//! trip), pauses new calls for a `Retry-After`, and grows by about one per limit's worth of
//! successes while latency stays near its baseline; never above the configured maximum.
//!
//! One `AdaptiveBackend` per model, shared by every job on that model, so they share its limit.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use batchd_formats::neutral::{ChatRequest, ChatResponse, EmbedRequest, EmbedResponse};
use tokio::sync::Notify;

use crate::{BackendError, BackendInfo, ErrorKind, ModelBackend, NativeAnswer, NativeCall};

/// How the limit moves.
#[derive(Debug, Clone)]
pub struct AdaptiveConfig {
    /// The limit at start.
    pub initial: usize,
    /// The limit never goes above this.
    pub max: usize,
    /// Nor below this (at least 1).
    pub min: usize,
    /// Multiplied into the limit on overload.
    pub decrease_factor: f64,
    /// Growth stops while recent latency is above `baseline × latency_tolerance`.
    pub latency_tolerance: f64,
    /// The longest `Retry-After` pause obeyed.
    pub max_pause: Duration,
}

impl AdaptiveConfig {
    /// Starts at `max` (the configured concurrency) and may only go down from there and back.
    pub fn with_max(max: usize) -> Self {
        let max = max.max(1);
        Self {
            initial: max,
            max,
            min: 1,
            decrease_factor: 0.5,
            latency_tolerance: 2.0,
            max_pause: Duration::from_secs(60),
        }
    }
}

/// The shared state: a semaphore whose size moves.
#[derive(Debug)]
pub struct Limiter {
    config: AdaptiveConfig,
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Debug)]
struct State {
    limit: f64,
    in_flight: usize,
    /// No call starts before this (a `Retry-After`).
    paused_until: Option<Instant>,
    /// Calls started before the last cut do not cut again: one cut per round trip.
    last_cut: Option<Instant>,
    /// Slow-moving latency floor, and a fast average of recent latencies.
    baseline: Option<f64>,
    recent: Option<f64>,
}

/// How a call ended, as far as the limit is concerned.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Success(Duration),
    Overload(Option<Duration>),
    /// Neither: a client error, a refused connection, a cancelled call.
    Neutral,
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Limiter {
    pub fn new(config: AdaptiveConfig) -> Self {
        let min = config.min.max(1);
        let max = config.max.max(min);
        let initial = config.initial.clamp(min, max);
        Self {
            config: AdaptiveConfig {
                min,
                max,
                initial,
                ..config
            },
            state: Mutex::new(State {
                limit: initial as f64,
                in_flight: 0,
                paused_until: None,
                last_cut: None,
                baseline: None,
                recent: None,
            }),
            changed: Notify::new(),
        }
    }

    /// Calls allowed at once now.
    pub fn current_limit(&self) -> usize {
        lock(&self.state).limit.floor() as usize
    }

    /// Calls running now.
    pub fn in_flight(&self) -> usize {
        lock(&self.state).in_flight
    }

    pub fn max_limit(&self) -> usize {
        self.config.max
    }

    /// Waits for room under the limit (and for any `Retry-After` pause to pass).
    pub async fn acquire(self: &Arc<Self>) -> Permit {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let pause = {
                let mut state = lock(&self.state);
                let now = Instant::now();
                match state.paused_until {
                    Some(until) if until > now => Some(until - now),
                    _ if state.in_flight < state.limit.floor().max(1.0) as usize => {
                        state.in_flight += 1;
                        return Permit {
                            limiter: self.clone(),
                            started: now,
                            done: false,
                        };
                    }
                    _ => None,
                }
            };
            match pause {
                Some(pause) => tokio::time::sleep(pause).await,
                None => notified.await,
            }
        }
    }

    fn release(&self, started: Instant, outcome: Outcome) {
        let mut state = lock(&self.state);
        state.in_flight = state.in_flight.saturating_sub(1);
        let c = &self.config;
        match outcome {
            Outcome::Success(latency) => {
                let ms = latency.as_secs_f64() * 1000.0;
                let recent = state.recent.map_or(ms, |r| r + (ms - r) * 0.2);
                // The floor follows drops at once and rises only slowly.
                let baseline = state
                    .baseline
                    .map_or(ms, |b| if ms < b { ms } else { b + (ms - b) * 0.01 });
                state.recent = Some(recent);
                state.baseline = Some(baseline);
                if recent <= baseline * c.latency_tolerance + 1.0 {
                    state.limit = (state.limit + 1.0 / state.limit.max(1.0)).min(c.max as f64);
                }
            }
            Outcome::Overload(retry_after) => {
                let fresh = state.last_cut.is_none_or(|cut| started >= cut);
                if fresh {
                    state.limit = (state.limit * c.decrease_factor).max(c.min as f64);
                    state.last_cut = Some(Instant::now());
                }
                // Calls already in flight when the server said "wait" say it again; only
                // the first answer of a round pauses everyone.
                if let Some(after) = retry_after.filter(|_| fresh) {
                    let until = Instant::now() + after.min(c.max_pause);
                    state.paused_until = Some(state.paused_until.map_or(until, |p| p.max(until)));
                }
            }
            Outcome::Neutral => {}
        }
        drop(state);
        self.changed.notify_waiters();
    }
}

/// Room for one call; given back when dropped (a dropped, unfinished call counts as a
/// timeout: the engine drops calls that ran past their attempt timeout).
#[derive(Debug)]
pub struct Permit {
    limiter: Arc<Limiter>,
    started: Instant,
    done: bool,
}

impl Permit {
    fn finish<T>(mut self, result: &Result<T, BackendError>) {
        self.done = true;
        let outcome = match result {
            Ok(_) => Outcome::Success(self.started.elapsed()),
            Err(e) => classify(e),
        };
        self.limiter.release(self.started, outcome);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.done {
            self.limiter.release(self.started, Outcome::Overload(None));
        }
    }
}

fn classify(e: &BackendError) -> Outcome {
    match e.kind {
        ErrorKind::RateLimited | ErrorKind::Timeout => Outcome::Overload(e.retry_after),
        ErrorKind::Server if matches!(e.status, Some(503 | 504)) => {
            Outcome::Overload(e.retry_after)
        }
        _ => Outcome::Neutral,
    }
}

/// A backend whose calls go through a shared [`Limiter`].
pub struct AdaptiveBackend {
    inner: Arc<dyn ModelBackend>,
    limiter: Arc<Limiter>,
}

impl AdaptiveBackend {
    pub fn new(inner: Arc<dyn ModelBackend>, config: AdaptiveConfig) -> Self {
        Self {
            inner,
            limiter: Arc::new(Limiter::new(config)),
        }
    }

    /// Calls allowed at once now.
    pub fn current_limit(&self) -> usize {
        self.limiter.current_limit()
    }

    /// The shared limiter, for displays that outlive a borrow of the backend.
    pub fn limiter(&self) -> Arc<Limiter> {
        self.limiter.clone()
    }

    pub fn inner(&self) -> &Arc<dyn ModelBackend> {
        &self.inner
    }
}

#[async_trait::async_trait]
impl ModelBackend for AdaptiveBackend {
    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, BackendError> {
        let permit = self.limiter.acquire().await;
        let result = self.inner.chat(request).await;
        permit.finish(&result);
        result
    }

    async fn embed(&self, request: &EmbedRequest) -> Result<EmbedResponse, BackendError> {
        let permit = self.limiter.acquire().await;
        let result = self.inner.embed(request).await;
        permit.finish(&result);
        result
    }

    fn info(&self) -> BackendInfo {
        self.inner.info()
    }

    async fn invoke_native(&self, call: NativeCall<'_>) -> Result<NativeAnswer, BackendError> {
        let permit = self.limiter.acquire().await;
        let result = self.inner.invoke_native(call).await;
        permit.finish(&result);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn limiter(max: usize) -> Arc<Limiter> {
        Arc::new(Limiter::new(AdaptiveConfig::with_max(max)))
    }

    #[tokio::test]
    async fn overload_halves_once_per_round_trip_and_success_grows_back() {
        let l = limiter(16);
        assert_eq!(l.current_limit(), 16);
        let permits: Vec<Permit> = futures_lite_collect(&l, 4).await;
        // Four calls that started together fail together: one cut, not four.
        for p in permits {
            p.finish::<()>(&Err(BackendError::from_status(429, "slow down", None)));
        }
        assert_eq!(l.current_limit(), 8);
        for _ in 0..200 {
            let p = l.acquire().await;
            p.finish::<()>(&Ok(()));
        }
        assert_eq!(l.current_limit(), 16, "never above the configured max");
        // Client errors and refused connections do not move the limit.
        let p = l.acquire().await;
        p.finish::<()>(&Err(BackendError::from_status(400, "bad", None)));
        let p = l.acquire().await;
        p.finish::<()>(&Err(BackendError::new(ErrorKind::Connect, "refused")));
        assert_eq!(l.current_limit(), 16);
        // A call dropped unfinished (the engine's attempt timeout) is a timeout.
        drop(l.acquire().await);
        assert_eq!(l.current_limit(), 8);
        assert_eq!(l.in_flight(), 0);
    }

    async fn futures_lite_collect(l: &Arc<Limiter>, n: usize) -> Vec<Permit> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(l.acquire().await);
        }
        v
    }

    #[tokio::test]
    async fn never_more_calls_than_the_limit_and_never_below_one() {
        let l = limiter(3);
        for _ in 0..5 {
            let p = l.acquire().await;
            p.finish::<()>(&Err(BackendError::new(ErrorKind::Timeout, "slow")));
        }
        assert_eq!(l.current_limit(), 1);
        let l = limiter(3);
        let peak = Arc::new(AtomicUsize::new(0));
        let now = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (l, peak, now) = (l.clone(), peak.clone(), now.clone());
            tasks.push(tokio::spawn(async move {
                let p = l.acquire().await;
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                p.finish::<()>(&Ok(()));
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn retry_after_pauses_new_calls() {
        let l = limiter(4);
        let p = l.acquire().await;
        p.finish::<()>(&Err(BackendError::from_status(
            429,
            "slow down",
            Some(Duration::from_millis(200)),
        )));
        let started = Instant::now();
        let p = l.acquire().await;
        assert!(started.elapsed() >= Duration::from_millis(150));
        p.finish::<()>(&Ok(()));
    }
}
