//! `/healthz` (alive), `/readyz` (Kafka and the target reachable, group joined and an
//! assignment held) and `/metrics` (Prometheus text, OpenMetrics flavour).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;
use crate::source::GroupState;

/// Partitions that cannot make progress now (a DLQ record the broker keeps refusing, a
/// panicked task), with why: any of them turns `/readyz` red.
#[derive(Default)]
pub struct Stalls {
    by_partition: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
    /// Batches processed without a panic, per topic: whether events of a topic get through
    /// tells a poison event (dead-lettered) from processing that panics on everything
    /// (stalled).
    progress: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Stalls {
    pub fn progressed(&self, topic: &str) {
        let mut progress = self.progress.lock().expect("progress lock");
        match progress.get_mut(topic) {
            Some(n) => *n += 1,
            None => {
                progress.insert(topic.to_string(), 1);
            }
        }
    }

    pub fn progress(&self, topic: &str) -> u64 {
        self.progress.lock().expect("progress lock").get(topic).copied().unwrap_or(0)
    }

    pub fn mark(&self, topic: &str, partition: i32, why: impl Into<String>) {
        self.by_partition.lock().expect("stalls lock").insert(format!("{topic}/{partition}"), why.into());
    }

    pub fn clear(&self, topic: &str, partition: i32) {
        self.by_partition.lock().expect("stalls lock").remove(&format!("{topic}/{partition}"));
    }

    pub fn describe(&self) -> Option<String> {
        let map = self.by_partition.lock().expect("stalls lock");
        (!map.is_empty()).then(|| map.iter().map(|(p, why)| format!("partition {p} cannot make progress: {why}")).collect::<Vec<_>>().join(", "))
    }
}

pub struct Readiness {
    pub stalls: Arc<Stalls>,
    pub kafka: AtomicBool,
    pub target: AtomicBool,
    /// Cleared at shutdown.
    pub running: AtomicBool,
    pub group: Arc<GroupState>,
    /// How long holding no assignment is tolerated (a rebalance in progress).
    pub assignment_grace: Duration,
}

impl Readiness {
    pub fn new(group: Arc<GroupState>, assignment_grace: Duration) -> Self {
        Self {
            stalls: Arc::new(Stalls::default()),
            kafka: AtomicBool::new(false),
            target: AtomicBool::new(false),
            running: AtomicBool::new(true),
            group,
            assignment_grace,
        }
    }

    /// What is not ready yet, or None.
    pub fn missing(&self) -> Option<String> {
        let mut missing = Vec::new();
        if !self.kafka.load(Ordering::Relaxed) {
            missing.push("kafka unreachable".to_string());
        }
        if !self.target.load(Ordering::Relaxed) {
            missing.push("target unreachable".to_string());
        }
        if !self.running.load(Ordering::Relaxed) || !self.group.joined() {
            missing.push("consumer group not joined".to_string());
        } else if let Some(since) = self.group.unassigned_for().filter(|d| *d > self.assignment_grace) {
            missing.push(format!("no partition assignment held for {}s", since.as_secs()));
        }
        if let Some(stalled) = self.stalls.describe() {
            missing.push(stalled);
        }
        (!missing.is_empty()).then(|| missing.join(", "))
    }
}

pub struct AppState {
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new().route("/healthz", get(|| async { "ok\n" })).route("/readyz", get(readyz)).route("/metrics", get(metrics)).with_state(state)
}

async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    match state.readiness.missing() {
        None => (StatusCode::OK, "ready\n".to_string()),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.render())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stalled_partition_turns_readiness_red_until_it_moves_again() {
        let group = Arc::new(GroupState::default());
        let r = Readiness::new(Arc::clone(&group), Duration::from_secs(60));
        r.stalls.mark("cdc.public.customer", 2, "dead-letter produce failing: MessageSizeTooLarge");
        let missing = r.missing().expect("not ready");
        assert!(missing.contains("partition cdc.public.customer/2 cannot make progress: dead-letter produce failing"), "{missing}");
        r.stalls.clear("cdc.public.customer", 2);
        assert!(r.stalls.describe().is_none());
    }

    #[test]
    fn readiness_needs_an_assignment_held_past_the_grace() {
        let group = Arc::new(GroupState::default());
        let r = Readiness::new(Arc::clone(&group), Duration::from_millis(20));
        r.kafka.store(true, Ordering::Relaxed);
        r.target.store(true, Ordering::Relaxed);
        assert!(r.missing().unwrap().contains("not joined"));
        group.assigned(0);
        assert_eq!(r.missing(), None, "assigned nothing is still a membership");
        group.assigned(3);
        group.unassigned();
        assert_eq!(r.missing(), None, "within the grace (a rebalance)");
        std::thread::sleep(Duration::from_millis(40));
        assert!(r.missing().unwrap().contains("no partition assignment"));
        group.assigned(3);
        assert_eq!(r.missing(), None);
    }
}
