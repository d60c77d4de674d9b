//! Load drivers: the same workload (the workload HTTP API) driven by different tools at an
//! open-model arrival rate. A `LoadPlan` is the rate over time; each driver turns it into
//! its tool's terms and reports what it measured from the client side.

pub(crate) mod goose;
pub mod k6;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::verify::Percentiles;

/// One segment of the plan: the rate moves linearly from `from` to `to` over `duration`
/// (equal for a constant rate).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// Operations per second at the start of the segment.
    pub from: f64,
    /// Operations per second at its end.
    pub to: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadPlan {
    pub segments: Vec<Segment>,
}

impl LoadPlan {
    pub fn duration(&self) -> Duration {
        self.segments.iter().map(|s| s.duration).sum()
    }

    /// Operations the plan asks for in total.
    pub fn total_ops(&self) -> f64 {
        self.segments.iter().map(|s| (s.from + s.to) / 2.0 * s.duration.as_secs_f64()).sum()
    }
}

/// What a driver measured from the client side.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DriverResult {
    pub driver: String,
    pub requests: u64,
    pub failures: u64,
    /// Client-side latency of the API's writes, milliseconds, from each request's intended
    /// start (open model: a late start counts in its latency).
    pub latency_ms: Percentiles,
    pub achieved_rate: f64,
    /// Requests the plan asked for that the driver never started (k6's
    /// `dropped_iterations`: no free VU at their time). None: the driver does not drop
    /// (goose starts every request, late if it must; the delay is in its latency).
    #[serde(default)]
    pub dropped: Option<u64>,
    /// Every request's intended start (seconds after the load started) with its latency
    /// (ms), where the driver keeps them (goose), so the latency outside fault windows can
    /// be told apart. Not part of the report.
    #[serde(skip)]
    pub timed_latencies: Option<Vec<(f64, f64)>>,
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("{driver}: {reason}")]
    Failed { driver: &'static str, reason: String },
    #[error(transparent)]
    Provision(#[from] crate::provision::ProvisionError),
}

/// Which tool drives the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    Goose,
    K6,
}

impl DriverKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Goose => "goose",
            Self::K6 => "k6",
        }
    }
}

/// Runs `plan` against the workload API at `api` (e.g. `http://127.0.0.1:PORT`) with the
/// chosen driver; `scenario` names the k6 script. `out_dir` receives the driver's own
/// output files (k6 summary, goose report).
pub async fn drive(kind: DriverKind, api: &str, plan: &LoadPlan, scenario: &str, out_dir: &std::path::Path) -> Result<DriverResult, DriverError> {
    match kind {
        DriverKind::Goose => goose::run(api, plan, out_dir).await,
        DriverKind::K6 => k6::run(api, plan, scenario, out_dir).await,
    }
}
