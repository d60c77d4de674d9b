//! `/healthz` (alive), `/readyz` (Kafka and the target reachable, group joined) and
//! `/metrics` (Prometheus text, OpenMetrics flavour).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

#[derive(Default)]
pub struct Readiness {
    pub kafka: AtomicBool,
    pub target: AtomicBool,
    pub joined: AtomicBool,
}

impl Readiness {
    /// What is not ready yet, or None.
    pub fn missing(&self) -> Option<String> {
        let mut missing = Vec::new();
        if !self.kafka.load(Ordering::Relaxed) {
            missing.push("kafka unreachable");
        }
        if !self.target.load(Ordering::Relaxed) {
            missing.push("target unreachable");
        }
        if !self.joined.load(Ordering::Relaxed) {
            missing.push("consumer group not joined");
        }
        (!missing.is_empty()).then(|| missing.join(", "))
    }
}

pub struct AppState {
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    match state.readiness.missing() {
        None => (StatusCode::OK, "ready\n".to_string()),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
