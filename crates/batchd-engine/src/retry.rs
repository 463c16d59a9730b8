//! When to try a record again, and how long to wait first; and [`WaitWhileDown`], which
//! holds records while the backend refuses connections instead of failing them at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use batchd_backends::{
    BackendError, BackendInfo, ErrorKind, ModelBackend, NativeAnswer, NativeCall,
};
use batchd_formats::neutral::{ChatRequest, ChatResponse, EmbedRequest, EmbedResponse};
// Tokio's clock, so that tests can run an outage on a paused clock.
use tokio::time::Instant;

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

/// Wraps a job's backend: a call refused with a connection error is tried again, after the
/// backoff of the engine's [`RetryPolicy`] (the one records use), while the backend has been
/// unreachable for less than `limit`; past it, calls fail at once with a message saying so.
/// Any answer from the backend ends the outage. One call waits at most `per_call`, so that the
/// engine's attempt timeout does not fire first and turn the outage into timeouts.
pub(crate) struct WaitWhileDown {
    inner: Arc<dyn ModelBackend>,
    limit: Duration,
    per_call: Duration,
    policy: RetryPolicy,
    /// Uniform in [0, 1): the backoff's jitter (fixed in tests).
    random: fn() -> f64,
    down_since: Mutex<Option<Instant>>,
    /// Calls that failed because the outage outlasted `limit`.
    gave_up: AtomicU64,
}

impl WaitWhileDown {
    pub(crate) fn new(
        inner: Arc<dyn ModelBackend>,
        limit: Duration,
        per_call: Duration,
        policy: RetryPolicy,
    ) -> Self {
        Self {
            inner,
            limit,
            per_call,
            policy,
            random: fastrand::f64,
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
        let mut attempt = 0u32;
        loop {
            attempt = attempt.saturating_add(1);
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
            let sleep = self
                .policy
                .backoff(attempt, None, (self.random)())
                .min(self.limit - down_for);
            if started.elapsed() + sleep >= self.per_call {
                // The record's own retry loop takes over from here.
                return Err(error);
            }
            tokio::time::sleep(sleep).await;
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

    fn info(&self) -> BackendInfo {
        self.inner.info()
    }

    async fn invoke_native(&self, call: NativeCall<'_>) -> Result<NativeAnswer, BackendError> {
        self.call(|| self.inner.invoke_native(call)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use batchd_testkit::conformance::check_around_openai;

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

    /// Refuses every connection, noting when each call came.
    #[derive(Default)]
    struct Refusing {
        calls: Mutex<Vec<Instant>>,
    }

    impl Refusing {
        fn refuse<T>(&self) -> Result<T, BackendError> {
            self.calls.lock().unwrap().push(Instant::now());
            Err(BackendError::new(ErrorKind::Connect, "connection refused"))
        }

        fn gaps(&self) -> Vec<Duration> {
            let calls = self.calls.lock().unwrap();
            calls.windows(2).map(|w| w[1] - w[0]).collect()
        }
    }

    #[async_trait::async_trait]
    impl ModelBackend for Refusing {
        fn info(&self) -> BackendInfo {
            BackendInfo::NEUTRAL
        }
        async fn chat(&self, _: &ChatRequest) -> Result<ChatResponse, BackendError> {
            self.refuse()
        }
        async fn embed(&self, _: &EmbedRequest) -> Result<EmbedResponse, BackendError> {
            self.refuse()
        }
    }

    /// A policy whose every backoff is `backoff` (with the jitter fixed at 0.5).
    fn flat(backoff: Duration) -> RetryPolicy {
        RetryPolicy {
            base_backoff: backoff * 2,
            max_backoff: backoff * 2,
            ..policy()
        }
    }

    async fn outage(policy: RetryPolicy) -> (Arc<Refusing>, BackendError) {
        let inner = Arc::new(Refusing::default());
        let mut down = WaitWhileDown::new(
            inner.clone(),
            Duration::from_millis(1000),
            Duration::from_secs(60),
            policy,
        );
        down.random = || 0.5;
        let error = down.chat(&ChatRequest::default()).await.unwrap_err();
        assert_eq!(down.gave_up(), 1);
        (inner, error)
    }

    #[tokio::test]
    async fn waiting_for_a_down_backend_follows_the_configured_policy() {
        // Short backoffs: many tries within the limit, none sooner than the policy says.
        let (inner, error) = outage(flat(Duration::from_millis(50))).await;
        assert_eq!(error.kind, ErrorKind::Connect);
        assert!(
            error.message.contains("unreachable for 1 s"),
            "{}",
            error.message
        );
        let gaps = inner.gaps();
        assert!(gaps.len() >= 10, "{gaps:?}");
        // The last wait is cut to what is left of the limit.
        let (last, rest) = gaps.split_last().unwrap();
        assert!(
            rest.iter().all(|g| *g >= Duration::from_millis(50)),
            "{gaps:?}"
        );
        assert!(*last <= Duration::from_millis(100), "{gaps:?}");

        // Long backoffs: few tries, each after the policy's wait.
        let (inner, _) = outage(flat(Duration::from_millis(300))).await;
        let gaps = inner.gaps();
        assert!((3..=4).contains(&gaps.len()), "{gaps:?}");
        let (_, rest) = gaps.split_last().unwrap();
        assert!(
            rest.iter().all(|g| *g >= Duration::from_millis(300)),
            "{gaps:?}"
        );

        // Exponential growth comes from the policy as well: 10, 20, 40, 80 ms.
        let (inner, _) = outage(RetryPolicy {
            base_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(160),
            ..policy()
        })
        .await;
        let gaps = inner.gaps();
        for (gap, want) in gaps.iter().zip([10, 20, 40, 80]) {
            assert!(*gap >= Duration::from_millis(want), "{gaps:?}");
        }
    }

    fn wait_while_down(inner: Arc<dyn ModelBackend>) -> Arc<dyn ModelBackend> {
        Arc::new(WaitWhileDown::new(
            inner,
            Duration::from_millis(300),
            Duration::from_secs(10),
            flat(Duration::from_millis(20)),
        ))
    }

    #[tokio::test]
    async fn wait_while_down_around_openai_conforms() {
        // Down: refused until the 300 ms limit, then `Connect`, still the retry class.
        check_around_openai(wait_while_down).await.unwrap();
    }
}
