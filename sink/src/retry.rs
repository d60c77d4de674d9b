//! Exponential backoff with jitter for transient errors (backon's). There is no attempt
//! limit on purpose: a target or broker that is down makes the partition wait and resume,
//! never skip. Jitter spreads the retries of many partitions (and of many sinks) that
//! failed together, so they do not hit a recovering target in lockstep.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

use crate::config::ApplyConfig;

pub struct Backoff {
    delays: ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    /// Waits of `[d/2, d)`, where `d` doubles from `retry_initial_backoff` to
    /// `retry_max_backoff`: backon adds a jitter of up to the delay itself, so it is built
    /// on half of both bounds, which keeps `retry_max_backoff` the longest wait.
    pub fn new(config: &ApplyConfig) -> Self {
        let delays = ExponentialBuilder::default()
            .with_min_delay(config.retry_initial_backoff / 2)
            .with_max_delay(config.retry_max_backoff / 2)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build();
        Self { delays, max: config.retry_max_backoff }
    }

    /// The next wait (grows, capped at `retry_max_backoff`).
    fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(self.max).min(self.max)
    }

    /// Sleeps for the next wait.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(initial_ms: u64, max_ms: u64) -> ApplyConfig {
        ApplyConfig { retry_initial_backoff: Duration::from_millis(initial_ms), retry_max_backoff: Duration::from_millis(max_ms), ..ApplyConfig::default() }
    }

    #[test]
    fn waits_double_within_their_jitter_and_never_pass_the_maximum() {
        let mut backoff = Backoff::new(&config(100, 1_000));
        let waits: Vec<Duration> = (0..40).map(|_| backoff.next_delay()).collect();
        let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
        // First wait in [50, 100) ms, second in [100, 200), third in [200, 400).
        for (i, upper) in [100.0, 200.0, 400.0].iter().enumerate() {
            assert!(ms(&waits[i]) >= upper / 2.0 && ms(&waits[i]) <= *upper, "wait {i}: {:?}", waits[i]);
        }
        // From the fifth on: capped, in [500, 1000] ms, and never beyond the maximum.
        assert!(waits[5..].iter().all(|w| ms(w) >= 500.0 && ms(w) <= 1_000.0), "{waits:?}");
        // Jittered: forty waits at the cap are not all the same.
        let mut distinct = waits[5..].to_vec();
        distinct.dedup();
        assert!(distinct.len() > 1, "no jitter: {waits:?}");
    }

    #[test]
    fn there_is_no_attempt_limit() {
        let mut backoff = Backoff::new(&config(1, 2));
        assert!((0..10_000).map(|_| backoff.next_delay()).all(|w| w <= Duration::from_millis(2) && !w.is_zero()));
    }
}
