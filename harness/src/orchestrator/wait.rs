//! The one deadline loop of the harness (`poll`, and `poll_blocking` for threads that must
//! not await), and on it the readiness helper every backend uses, in the manner of
//! testcontainers' `WaitFor`: a probe polled at an interval until it answers, the service
//! is seen dead, or the timeout passes. Its error names the service, how long it waited,
//! the probe's last answer and the log to read.

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{ServiceError, ServiceKind};

/// One probe's answer when what it waits for is not there.
#[derive(Debug)]
pub enum NotReady<R = String, E = ServiceError> {
    /// Not yet: poll again (the reason is reported if the wait times out).
    Yet(R),
    /// It will never be: the process exited, the container stopped, the connector failed.
    Never(E),
}

/// How a `poll` ended without an answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Waited<R, E> {
    /// The timeout passed; the last probe's reason.
    TimedOut(R),
    /// A probe said it will never be.
    Failed(E),
}

/// Polls `probe` every `interval` until it answers, says never, or `timeout` passes; the
/// first probe runs at once, and no probe starts after the deadline.
pub async fn poll<T, R, E, F, Fut>(timeout: Duration, interval: Duration, mut probe: F) -> Result<T, Waited<R, E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, NotReady<R, E>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match probe().await {
            Ok(value) => return Ok(value),
            Err(NotReady::Never(error)) => return Err(Waited::Failed(error)),
            Err(NotReady::Yet(reason)) if Instant::now() + interval > deadline => return Err(Waited::TimedOut(reason)),
            Err(NotReady::Yet(_)) => tokio::time::sleep(interval).await,
        }
    }
}

/// `poll` for a thread that must not await (a blocking task, a `Drop`).
pub fn poll_blocking<T, R, E>(timeout: Duration, interval: Duration, mut probe: impl FnMut() -> Result<T, NotReady<R, E>>) -> Result<T, Waited<R, E>> {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(value) => return Ok(value),
            Err(NotReady::Never(error)) => return Err(Waited::Failed(error)),
            Err(NotReady::Yet(reason)) if Instant::now() + interval > deadline => return Err(Waited::TimedOut(reason)),
            Err(NotReady::Yet(_)) => std::thread::sleep(interval),
        }
    }
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
    pub async fn until<T, F, Fut>(&self, probe: F) -> Result<T, ServiceError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, NotReady>>,
    {
        poll(self.timeout, self.poll, probe).await.map_err(|waited| match waited {
            Waited::TimedOut(reason) => ServiceError::NotReady { service: self.service, waited: self.timeout, reason, log: self.log.clone() },
            Waited::Failed(error) => error,
        })
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

    #[test]
    fn a_blocking_poll_answers_times_out_or_fails_like_the_async_one() {
        let mut n = 0;
        let counted = poll_blocking(Duration::from_secs(5), Duration::from_millis(1), || {
            n += 1;
            if n < 3 { Err(NotReady::<&str, ()>::Yet("not yet")) } else { Ok(n) }
        });
        assert_eq!(counted, Ok(3));
        let timed_out = poll_blocking(Duration::from_millis(20), Duration::from_millis(5), || Err::<(), _>(NotReady::<_, ()>::Yet("still")));
        assert_eq!(timed_out, Err(Waited::TimedOut("still")));
        let started = Instant::now();
        let failed = poll_blocking(Duration::from_secs(10), Duration::from_millis(5), || Err::<(), _>(NotReady::<(), _>::Never("gone")));
        assert_eq!(failed, Err(Waited::Failed("gone")));
        assert!(started.elapsed() < Duration::from_secs(5));
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
