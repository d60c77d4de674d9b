//! Exponential backoff for transient errors. There is no attempt limit on purpose: a
//! target or broker that is down makes the partition wait and resume, never skip.

use std::time::Duration;

use crate::config::ApplyConfig;

pub struct Backoff {
    initial: Duration,
    current: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(config: &ApplyConfig) -> Self {
        Self { initial: config.retry_initial_backoff, current: config.retry_initial_backoff, max: config.retry_max_backoff }
    }

    /// Sleeps for the current delay and doubles it (capped).
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.current).await;
        self.current = (self.current * 2).min(self.max);
    }

    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}
