//! The workload HTTP API: `POST /v1/ops` performs one business operation (the server
//! picks the entity and values, so every load tool drives the same workload), `GET
//! /v1/stats` reports what was done, `GET /healthz`. A W3C `traceparent` header is
//! validated and recorded with the write.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use deadpool_postgres::Pool;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::executor::{self, ExecError};
use super::model::Registry;
use super::{Mix, OpKind};
use crate::orchestrator::PgEndpoint;

/// Attempts on other keys when the chosen one vanished under a concurrent delete.
const MAX_ATTEMPTS: usize = 4;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpRequest {
    /// insert, update or delete; absent: drawn from the scenario's mix.
    pub kind: Option<OpKind>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct OpResponse {
    pub op: String,
    pub micros: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WorkloadStats {
    /// `insert.customer` ... -> committed operations.
    pub ops: BTreeMap<String, u64>,
    pub total: u64,
    pub errors: u64,
    /// Operations retried on another key because theirs vanished (not errors).
    pub retried: u64,
    pub traceparents: u64,
    /// Server-side latency (request arrival -> commit), milliseconds.
    pub latency_ms: crate::verify::Percentiles,
}

pub struct Workload {
    pool: Pool,
    registry: Mutex<Registry>,
    rng: Mutex<StdRng>,
    mix: Mix,
    counts: Mutex<BTreeMap<&'static str, u64>>,
    latency: Mutex<Histogram<u64>>,
    total: AtomicU64,
    errors: AtomicU64,
    retried: AtomicU64,
    traceparents: AtomicU64,
}

impl Workload {
    pub async fn new(pg: &PgEndpoint, mix: Mix, seed: u64, connections: usize) -> Result<Arc<Self>, ExecError> {
        let registry = executor::load_registry(pg).await?;
        Ok(Arc::new(Self {
            pool: executor::pool(pg, connections)?,
            registry: Mutex::new(registry),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            mix,
            counts: Mutex::default(),
            latency: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")),
            total: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            traceparents: AtomicU64::new(0),
        }))
    }

    /// Performs one operation of `kind` (or drawn from the mix). Returns its label.
    pub async fn perform(&self, kind: Option<OpKind>, traceparent: Option<&str>) -> Result<&'static str, ExecError> {
        let started = Instant::now();
        let mut last = ExecError::Vanished;
        let mut retry: Option<super::model::Operation> = None;
        for attempt in 0..MAX_ATTEMPTS {
            let op = match retry.take() {
                Some(op) => op,
                None => {
                    let mut rng = self.rng.lock().await;
                    let kind = kind.unwrap_or_else(|| self.mix.pick(rng.random_range(0..100)));
                    self.registry.lock().await.draw(kind, &mut *rng)
                }
            };
            match executor::execute(&self.pool, &op, traceparent).await {
                Ok(()) => {
                    self.registry.lock().await.apply(&op);
                    let label = op.label();
                    *self.counts.lock().await.entry(label).or_default() += 1;
                    self.total.fetch_add(1, Ordering::Relaxed);
                    if traceparent.is_some() {
                        self.traceparents.fetch_add(1, Ordering::Relaxed);
                    }
                    let micros = started.elapsed().as_micros().max(1) as u64;
                    let _ = self.latency.lock().await.record(micros.min(60_000_000));
                    return Ok(label);
                }
                Err(ExecError::Vanished) => {
                    self.registry.lock().await.forget(&op);
                    if attempt + 1 < MAX_ATTEMPTS {
                        self.retried.fetch_add(1, Ordering::Relaxed);
                    }
                    last = ExecError::Vanished;
                }
                Err(ExecError::Contention) => {
                    self.retried.fetch_add(1, Ordering::Relaxed);
                    retry = Some(op);
                    last = ExecError::Contention;
                }
                Err(e) => {
                    self.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(message = "workload operation failed", error = %e);
                    return Err(e);
                }
            }
        }
        self.errors.fetch_add(1, Ordering::Relaxed);
        Err(last)
    }

    pub async fn stats(&self) -> WorkloadStats {
        let h = self.latency.lock().await;
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        WorkloadStats {
            ops: self.counts.lock().await.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            total: self.total.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            traceparents: self.traceparents.load(Ordering::Relaxed),
            latency_ms: crate::verify::Percentiles { count: h.len(), p50: ms(0.5), p90: ms(0.9), p95: ms(0.95), p99: ms(0.99), max: h.max() as f64 / 1000.0 },
        }
    }

    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

/// A valid W3C traceparent: `00-<32 hex trace id, not all zero>-<16 hex span id, not all zero>-<2 hex flags>`.
pub fn valid_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1].bytes().any(|b| b != b'0')
        && hex(parts[2], 16)
        && parts[2].bytes().any(|b| b != b'0')
        && hex(parts[3], 2)
}

async fn post_op(State(workload): State<Arc<Workload>>, headers: HeaderMap, body: Option<Json<OpRequest>>) -> Result<Json<OpResponse>, (StatusCode, String)> {
    let started = Instant::now();
    let traceparent = headers.get("traceparent").and_then(|v| v.to_str().ok()).filter(|v| valid_traceparent(v));
    let kind = body.and_then(|Json(b)| b.kind);
    match workload.perform(kind, traceparent).await {
        Ok(label) => Ok(Json(OpResponse { op: label.to_string(), micros: started.elapsed().as_micros() as u64 })),
        Err(ExecError::Vanished) => Err((StatusCode::CONFLICT, "every key tried was deleted concurrently".into())),
        Err(ExecError::Contention) => Err((StatusCode::CONFLICT, "lock contention persisted over every retry".into())),
        Err(e) => Err((StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    }
}

async fn get_stats(State(workload): State<Arc<Workload>>) -> Json<WorkloadStats> {
    Json(workload.stats().await)
}

pub fn router(workload: Arc<Workload>) -> Router {
    Router::new().route("/v1/ops", post(post_op)).route("/v1/stats", get(get_stats)).route("/healthz", get(|| async { "ok" })).with_state(workload)
}

/// Serves the API on 127.0.0.1 (free port) until the returned handle is aborted.
pub async fn serve(workload: Arc<Workload>) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let handle = tokio::spawn(async move {
        let _ = axum::serve(listener, router(workload)).await;
    });
    Ok((addr, handle))
}

#[cfg(test)]
mod tests {
    use super::valid_traceparent;

    #[test]
    fn traceparent_validation_follows_w3c() {
        assert!(valid_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        assert!(!valid_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01"));
        assert!(!valid_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"));
        assert!(!valid_traceparent("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        assert!(!valid_traceparent("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"));
        assert!(super::executor::sampled("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        assert!(!super::executor::sampled("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"));
        assert!(!valid_traceparent("garbage"));
    }
}
