//! Retry policy: exponential backoff with jitter, and a maximum number of attempts.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts before giving up: an action's before the saga compensates, a compensation's
    /// before the instance is flagged for an operator (and retried on).
    pub max_attempts: u32,
    /// The delay after the first failure; it doubles with each further one…
    pub initial: Duration,
    /// …up to this.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial: Duration::from_millis(200),
            max: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The delay before the attempt after `failures` failed ones (≥ 1), with "equal jitter":
    /// half the backoff fixed, half scaled by `jitter` in [0, 1), so retries of many instances
    /// that failed together spread out.
    pub fn delay(&self, failures: u32, jitter: f64) -> Duration {
        let doublings = failures.saturating_sub(1).min(30);
        let backoff = self.initial.saturating_mul(1u32 << doublings).min(self.max);
        let half = backoff / 2;
        half + half.mul_f64(jitter.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy {
            max_attempts: 10,
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(p.delay(1, 1.0), Duration::from_millis(100));
        assert_eq!(p.delay(2, 1.0), Duration::from_millis(200));
        assert_eq!(p.delay(3, 0.0), Duration::from_millis(200));
        assert_eq!(p.delay(9, 1.0), Duration::from_secs(1));
        assert_eq!(p.delay(u32::MAX, 1.0), Duration::from_secs(1));
    }

    proptest! {
        #[test]
        fn a_delay_is_between_half_the_backoff_and_the_backoff(failures in 1u32..64, jitter in 0.0f64..1.0) {
            let p = RetryPolicy::default();
            let d = p.delay(failures, jitter);
            let full = p.delay(failures, 1.0);
            prop_assert!(d >= full / 2 && d <= full && full <= p.max);
        }
    }
}
