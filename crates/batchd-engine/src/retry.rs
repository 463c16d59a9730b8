//! When to try a record again, and how long to wait first.

use std::time::Duration;

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
