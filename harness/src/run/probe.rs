//! End-to-end latency measured from outside: probe writes whose arrival in the target the
//! harness polls for. Cross-checks the latency derived from the target's CDC metadata.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use uuid::Uuid;

use crate::orchestrator::PgEndpoint;
use crate::orchestrator::wait::NotReady;

/// How often the target is polled for a probe; bounds the measurement's resolution.
const POLL: Duration = Duration::from_millis(5);
const GIVE_UP: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct ProbeResult {
    /// Seconds since load start at which the probe was committed.
    pub at: f64,
    /// None: it has not arrived (yet, while `pending`; or within the give-up time).
    pub latency_ms: Option<f64>,
    /// Still being polled for.
    pub pending: bool,
}

impl ProbeResult {
    /// Seconds since load start at which it was seen in the target.
    pub fn arrived_at(&self) -> Option<f64> {
        self.latency_ms.map(|l| self.at + l / 1000.0)
    }
}

/// Waits (at most the give-up time) until no probe is pending.
pub async fn settle(results: &Mutex<Vec<ProbeResult>>) {
    let settled = || async { if results.lock().await.iter().any(|p| p.pending) { Err(NotReady::<(), ()>::Yet(())) } else { Ok(()) } };
    // Probes still pending then are reported as lost.
    let _ = crate::orchestrator::wait::poll(GIVE_UP + Duration::from_secs(1), Duration::from_millis(50), settled).await;
}

/// Writes one probe per `interval` until `stop` is set, polling the target for each.
pub async fn run(pg: PgEndpoint, started: Instant, interval: Duration, stop: Arc<std::sync::atomic::AtomicBool>, results: Arc<Mutex<Vec<ProbeResult>>>) {
    let (Ok(source), Ok(target)) = (pg.connect_source().await, pg.connect_target().await) else {
        tracing::warn!(message = "probe connections failed; no probe latency this run");
        return;
    };
    let target = Arc::new(target);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        ticker.tick().await;
        // Stopped while waiting for the tick: no write after the load (the fence after it
        // must be the last change).
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        let id = Uuid::new_v4();
        let email = format!("probe-{}@probe.invalid", id.simple());
        if source.execute("INSERT INTO customer (id, email, status) VALUES ($1, $2, 'active')", &[&id, &email]).await.is_err() {
            continue;
        }
        let committed = Instant::now();
        let at = committed.duration_since(started).as_secs_f64();
        let target = target.clone();
        let results = results.clone();
        let index = {
            let mut r = results.lock().await;
            r.push(ProbeResult { at, latency_ms: None, pending: true });
            r.len() - 1
        };
        tokio::spawn(async move {
            let mut latency = None;
            while committed.elapsed() < GIVE_UP {
                if let Ok(Some(_)) = target.query_opt("SELECT 1 FROM customer_materialized WHERE id = $1 AND NOT _cdc_deleted", &[&id]).await {
                    latency = Some(committed.elapsed().as_secs_f64() * 1000.0);
                    break;
                }
                tokio::time::sleep(POLL).await;
            }
            results.lock().await[index] = ProbeResult { at, latency_ms: latency, pending: false };
        });
    }
}
