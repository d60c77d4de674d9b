//! One readiness helper for every backend, in the manner of testcontainers' `WaitFor`: a
//! probe polled at an interval until it answers, the service is seen dead, or the timeout
//! passes. The error names the service, how long it waited, the probe's last answer and
//! the log to read.

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{ServiceError, ServiceKind};

/// One probe's answer when the service is not ready.
#[derive(Debug)]
pub enum NotReady {
    /// Not yet: poll again (the reason is reported if the wait times out).
    Yet(String),
    /// It will never be: the process exited, the container stopped, the connector failed.
    Never(ServiceError),
}

impl From<String> for NotReady {
    fn from(reason: String) -> Self {
        Self::Yet(reason)
    }
}

/// What to wait for: the service, how long, how often, and where its log is.
#[derive(Debug, Clone)]
pub struct WaitFor {
    pub service: ServiceKind,
    pub timeout: Duration,
    pub poll: Duration,
    pub log: PathBuf,
}

impl WaitFor {
    pub fn new(service: ServiceKind, timeout: Duration, log: PathBuf) -> Self {
        Self { service, timeout, poll: Duration::from_millis(200), log }
    }

    pub fn poll(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// Polls `probe` until it returns a value; the first probe runs at once.
    pub async fn until<T, F, Fut>(&self, mut probe: F) -> Result<T, ServiceError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, NotReady>>,
    {
        let deadline = Instant::now() + self.timeout;
        loop {
            let reason = match probe().await {
                Ok(value) => return Ok(value),
                Err(NotReady::Never(error)) => return Err(error),
                Err(NotReady::Yet(reason)) => reason,
            };
            if Instant::now() + self.poll > deadline {
                return Err(ServiceError::NotReady { service: self.service, waited: self.timeout, reason, log: self.log.clone() });
            }
            tokio::time::sleep(self.poll).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait(timeout_ms: u64) -> WaitFor {
        WaitFor::new(ServiceKind::Sink, Duration::from_millis(timeout_ms), PathBuf::from("/logs/sink.log")).poll(Duration::from_millis(5))
    }

    #[tokio::test]
    async fn returns_the_first_answer() {
        let mut calls = 0;
        let value = wait(1000)
            .until(|| {
                calls += 1;
                let n = calls;
                async move { if n < 3 { Err(NotReady::Yet(format!("try {n}"))) } else { Ok(n) } }
            })
            .await
            .unwrap();
        assert_eq!(value, 3);
    }

    #[tokio::test]
    async fn times_out_with_the_last_reason_and_the_log() {
        let err = wait(30).until(|| async { Err::<(), _>(NotReady::Yet("connection refused".into())) }).await.unwrap_err();
        match err {
            ServiceError::NotReady { service, reason, log, .. } => {
                assert_eq!(service, ServiceKind::Sink);
                assert_eq!(reason, "connection refused");
                assert_eq!(log, PathBuf::from("/logs/sink.log"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_dead_service_ends_the_wait_at_once() {
        let started = Instant::now();
        let err = wait(10_000)
            .until(|| async {
                Err::<(), _>(NotReady::Never(ServiceError::Exited { service: ServiceKind::Sink, log: PathBuf::from("/l"), tail: "panic".into() }))
            })
            .await
            .unwrap_err();
        assert!(matches!(err, ServiceError::Exited { .. }), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
