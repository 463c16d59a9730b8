//! When to try a record again, and how long to wait first; and [`WaitWhileDown`], which
//! holds records while the backend refuses connections instead of failing them at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use batchd_backends::{BackendError, ErrorKind, ModelBackend, NativeAnswer, NativeCall};
use batchd_formats::neutral::{ChatRequest, ChatResponse, EmbedRequest, EmbedResponse};

/// Retries of retryable backend errors: capped exponential backoff with full jitter; a
/// backend's `Retry-After` is honoured (never retried sooner), up to `max_retry_after`.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts per record, the first one included.
    pub max_attempts: u32,
    /// Time limit of one attempt.
    pub attempt_timeout: Duration,
    /// Backoff before the second attempt; doubles each time up to `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// Longest `Retry-After` obeyed; longer ones are cut to this.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            attempt_timeout: Duration::from_secs(300),
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt number `attempt` (1-based). `random` is uniform in
    /// [0, 1) and comes from the caller so that this stays a pure function.
    pub fn backoff(&self, attempt: u32, retry_after: Option<Duration>, random: f64) -> Duration {
        let exp = self
            .base_backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let capped = exp.min(self.max_backoff);
        let jittered = capped.mul_f64(random.clamp(0.0, 1.0));
        match retry_after {
            // Honour the server's wait, plus a little jitter so retries do not arrive together.
            Some(after) => {
                after.min(self.max_retry_after) + self.base_backoff.mul_f64(random.clamp(0.0, 1.0))
            }
            None => jittered,
        }
    }
}

/// Wraps a job's backend: a call refused with a connection error is tried again with
/// backoff (0.2 s doubling to 5 s, jittered) while the backend has been unreachable for less
/// than `limit`; past it, calls fail at once with a message saying so. Any answer from the
/// backend ends the outage. One call waits at most `per_call`, so that the engine's attempt
/// timeout does not fire first and turn the outage into timeouts.
pub(crate) struct WaitWhileDown {
    inner: Arc<dyn ModelBackend>,
    limit: Duration,
    per_call: Duration,
    down_since: Mutex<Option<Instant>>,
    /// Calls that failed because the outage outlasted `limit`.
    gave_up: AtomicU64,
}

impl WaitWhileDown {
    pub(crate) fn new(inner: Arc<dyn ModelBackend>, limit: Duration, per_call: Duration) -> Self {
        Self {
            inner,
            limit,
            per_call,
            down_since: Mutex::new(None),
            gave_up: AtomicU64::new(0),
        }
    }

    /// Whether some call failed because the backend stayed unreachable past the limit.
    pub(crate) fn gave_up(&self) -> u64 {
        self.gave_up.load(Ordering::Relaxed)
    }

    fn down_since(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.down_since
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn call<T, F, Fut>(&self, mut f: F) -> Result<T, BackendError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, BackendError>>,
    {
        let started = Instant::now();
        let mut wait = Duration::from_millis(200);
        loop {
            let result = f().await;
            let error = match result {
                Err(e) if e.kind == ErrorKind::Connect => e,
                other => {
                    *self.down_since() = None;
                    return other;
                }
            };
            let since = *self.down_since().get_or_insert_with(Instant::now);
            let down_for = since.elapsed();
            if down_for >= self.limit {
                self.gave_up.fetch_add(1, Ordering::Relaxed);
                return Err(BackendError {
                    message: format!(
                        "the backend was unreachable for {} s (engine.backend_down_seconds): {}",
                        down_for.as_secs(),
                        error.message
                    ),
                    ..error
                });
            }
            let sleep = wait
                .mul_f64(0.5 + fastrand::f64() / 2.0)
                .min(self.limit - down_for);
            if started.elapsed() + sleep >= self.per_call {
                // The record's own retry loop takes over from here.
                return Err(error);
            }
            tokio::time::sleep(sleep).await;
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }
}

#[async_trait::async_trait]
impl ModelBackend for WaitWhileDown {
    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, BackendError> {
        self.call(|| self.inner.chat(request)).await
    }

    async fn embed(&self, request: &EmbedRequest) -> Result<EmbedResponse, BackendError> {
        self.call(|| self.inner.embed(request)).await
    }

    fn runs_native(&self) -> bool {
        self.inner.runs_native()
    }

    async fn invoke_native(&self, call: NativeCall<'_>) -> Result<NativeAnswer, BackendError> {
        self.call(|| self.inner.invoke_native(call)).await
    }

    fn max_embed_batch(&self) -> usize {
        self.inner.max_embed_batch()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            attempt_timeout: Duration::from_secs(1),
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
            max_retry_after: Duration::from_secs(10),
        }
    }

    #[test]
    fn backoff_grows_exponentially_up_to_the_cap() {
        let p = policy();
        assert_eq!(p.backoff(1, None, 0.999_999).as_millis(), 99);
        assert_eq!(p.backoff(2, None, 0.999_999).as_millis(), 199);
        assert_eq!(p.backoff(3, None, 0.999_999).as_millis(), 399);
        assert_eq!(p.backoff(10, None, 0.999_999).as_millis(), 999);
        assert_eq!(p.backoff(40, None, 0.999_999).as_millis(), 999);
    }

    #[test]
    fn full_jitter_spans_zero_to_the_cap() {
        let p = policy();
        assert_eq!(p.backoff(3, None, 0.0), Duration::ZERO);
        assert_eq!(p.backoff(3, None, 0.5), Duration::from_millis(200));
    }

    #[test]
    fn retry_after_is_a_floor_and_is_capped() {
        let p = policy();
        let wait = p.backoff(1, Some(Duration::from_secs(3)), 0.5);
        assert_eq!(wait, Duration::from_millis(3050));
        let wait = p.backoff(1, Some(Duration::from_secs(3600)), 0.0);
        assert_eq!(wait, Duration::from_secs(10));
    }
}
