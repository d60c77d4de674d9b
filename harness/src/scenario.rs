//! Scenario files (`scenarios/<name>.toml`): load profile, stack settings, thresholds,
//! scheduled schema changes. Strict: unknown keys are rejected, and every error names the
//! file, line and key. The format is documented in `scenarios/README.md`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::faults::{FaultSpec, RandomFaults};
use crate::load::{DriverKind, LoadPlan, Segment};
use crate::report::thresholds::Threshold;
use crate::workload::Mix;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub load: LoadSection,
    #[serde(default)]
    pub stack: StackSection,
    #[serde(default)]
    pub verify: VerifySection,
    /// k6-like expressions over report metrics, e.g. `e2e_latency_ms.p95 < 2000`.
    #[serde(default)]
    pub thresholds: Vec<String>,
    /// DDL run against the source during load.
    #[serde(default)]
    pub schema_changes: Vec<SchemaChange>,
    /// Raise the rate step by step until an SLO breaks (breakpoint scenario).
    pub breakpoint: Option<Breakpoint>,
    /// Faults at fixed times.
    #[serde(default)]
    pub faults: Vec<FaultSpec>,
    /// Faults drawn from the run's seed.
    pub random_faults: Option<RandomFaults>,
    /// Kill Debezium while it takes the initial snapshot, then start it again.
    pub snapshot_fault: Option<SnapshotFault>,
    /// After the load: the captured tables idle while other tables of the database are
    /// written (the slot must keep releasing WAL).
    pub idle: Option<IdlePhase>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdlePhase {
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// Rows per second written to a table outside the publication.
    pub writes_per_sec: u32,
    /// Bytes of each row's payload (incompressible).
    #[serde(default = "default_idle_row_bytes")]
    pub row_bytes: u32,
}

/// Under PostgreSQL's TOAST threshold: every byte goes to the WAL as it is.
const fn default_idle_row_bytes() -> u32 {
    1500
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotFault {
    /// Time after the snapshot started at which Debezium is killed.
    #[serde(with = "humantime_serde")]
    pub after: Duration,
    /// How long it stays down.
    #[serde(with = "humantime_serde")]
    pub downtime: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadSection {
    #[serde(default = "default_driver")]
    pub driver: DriverKind,
    #[serde(default)]
    pub mix: Mix,
    /// Writes at a low rate before measuring (Debezium and the sink warm up).
    #[serde(default = "default_warmup", with = "humantime_serde")]
    pub warmup: Duration,
    /// The rate over time; `breakpoint` scenarios derive theirs.
    #[serde(default)]
    pub stages: Vec<Stage>,
}

fn default_driver() -> DriverKind {
    DriverKind::Goose
}

const fn default_warmup() -> Duration {
    Duration::from_secs(5)
}

/// A constant rate (`rate`) or a linear ramp (`from` -> `to`) for `duration`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    pub rate: Option<f64>,
    pub from: Option<f64>,
    pub to: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackSection {
    #[serde(default = "default_seed_customers")]
    pub seed_customers: u32,
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// Debezium `poll.interval.ms`.
    #[serde(default = "default_poll")]
    pub debezium_poll_interval_ms: u32,
    /// Debezium at its own defaults, the sink without `[source]` settings (see
    /// `StackConfig::debezium_defaults`).
    #[serde(default)]
    pub debezium_defaults: bool,
}

impl Default for StackSection {
    fn default() -> Self {
        Self { seed_customers: default_seed_customers(), partitions: default_partitions(), debezium_poll_interval_ms: default_poll(), debezium_defaults: false }
    }
}

const fn default_seed_customers() -> u32 {
    3000
}
const fn default_partitions() -> u32 {
    3
}
const fn default_poll() -> u32 {
    10
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifySection {
    /// How long the pipeline may take to converge after load stops.
    #[serde(default = "default_settle", with = "humantime_serde")]
    pub settle: Duration,
    /// Business rules of the sink (`email`, `status_transition`, ...) whose dead letters
    /// are expected: they excuse the change they rejected. Every other letter fails the run.
    #[serde(default)]
    pub expected_rejections: Vec<String>,
    /// Live verification while the load runs: a check every this often (see
    /// `verify::live`); every check is gated (`live.failed == 0`).
    #[serde(default, with = "humantime_serde")]
    pub live_every: Option<Duration>,
}

impl Default for VerifySection {
    fn default() -> Self {
        Self { settle: default_settle(), expected_rejections: Vec::new(), live_every: None }
    }
}

const fn default_settle() -> Duration {
    Duration::from_secs(120)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaChange {
    /// Since the load started.
    #[serde(with = "humantime_serde")]
    pub at: Duration,
    pub sql: String,
    /// What the change is, for the timeline.
    pub label: String,
    /// `<target table>.<column>` that must exist in the PostgreSQL target with values
    /// after the run (an added column reached the target).
    pub expect_target_column: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Breakpoint {
    pub start_rate: f64,
    pub step: f64,
    #[serde(with = "humantime_serde")]
    pub step_duration: Duration,
    pub max_rate: f64,
    /// SLO per step: the slowest probe write's end-to-end latency, in milliseconds (a step
    /// holds some thirty probes, too few for a p99 that is not their maximum).
    #[serde(alias = "max_e2e_p99_ms")]
    pub max_probe_latency_ms: f64,
    /// SLO per step: consumer lag may not grow by more than this over a step.
    pub max_lag_growth: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("scenario `{0}` not found: looked for {1} (built-in scenarios: {2})")]
    NotFound(String, PathBuf, String),
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The workspace's `scenarios/` folder (overridable with `HARNESS_SCENARIOS_DIR`).
pub fn scenarios_dir() -> PathBuf {
    std::env::var_os("HARNESS_SCENARIOS_DIR").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("scenarios"))
}

pub fn builtin_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(scenarios_dir())
        .map(|dir| dir.filter_map(|e| e.ok()).filter_map(|e| e.file_name().to_str()?.strip_suffix(".toml").map(str::to_owned)).collect())
        .unwrap_or_default();
    names.sort();
    names
}

impl Scenario {
    /// Loads a scenario by name (from `scenarios/`) or by path.
    pub fn load(name_or_path: &str) -> Result<Self, ScenarioError> {
        let path = if name_or_path.ends_with(".toml") || name_or_path.contains('/') {
            PathBuf::from(name_or_path)
        } else {
            scenarios_dir().join(format!("{name_or_path}.toml"))
        };
        let text = std::fs::read_to_string(&path).map_err(|_| ScenarioError::NotFound(name_or_path.to_string(), path.clone(), builtin_names().join(", ")))?;
        Self::parse(&text, &path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ScenarioError> {
        let invalid = |message: String| ScenarioError::Invalid { path: path.to_path_buf(), message };
        // toml's messages carry the line, column and the offending key.
        let scenario: Scenario = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        scenario.validate().map_err(invalid)?;
        Ok(scenario)
    }

    fn validate(&self) -> Result<(), String> {
        self.load.mix.validate().map_err(|e| format!("[load] mix: {e}"))?;
        if self.load.stages.is_empty() && self.breakpoint.is_none() {
            return Err("[load] stages: at least one stage is needed (or a [breakpoint] section)".into());
        }
        for (i, stage) in self.load.stages.iter().enumerate() {
            stage.segment().map_err(|e| format!("[load] stages[{i}]: {e}"))?;
        }
        for t in &self.thresholds {
            Threshold::parse(t).map_err(|e| format!("thresholds: `{t}`: {e}"))?;
        }
        if let Some(b) = &self.breakpoint {
            if b.start_rate <= 0.0 || b.step <= 0.0 || b.max_rate < b.start_rate {
                return Err("[breakpoint]: need start_rate > 0, step > 0 and max_rate >= start_rate".into());
            }
        }
        for (i, f) in self.faults.iter().enumerate() {
            f.validate().map_err(|e| format!("faults[{i}]: {e}"))?;
        }
        if let Some(r) = &self.random_faults {
            if r.kinds.is_empty() || r.services.is_empty() || r.min_duration > r.max_duration {
                return Err("[random_faults]: need kinds, services and min_duration <= max_duration".into());
            }
        }
        if self.stack.partitions == 0 {
            return Err("[stack] partitions: must be at least 1".into());
        }
        Ok(())
    }

    /// The rate plan, with the command line's overrides: `duration` rescales every stage
    /// proportionally, `rate` rescales every rate so the first stage starts at it.
    pub fn plan(&self, duration: Option<Duration>, rate: Option<f64>) -> LoadPlan {
        let mut segments: Vec<Segment> = self.load.stages.iter().filter_map(|s| s.segment().ok()).collect();
        if let Some(target) = duration {
            let total: f64 = segments.iter().map(|s| s.duration.as_secs_f64()).sum();
            for s in &mut segments {
                s.duration = Duration::from_secs_f64((s.duration.as_secs_f64() / total * target.as_secs_f64()).max(1.0));
            }
        }
        if let (Some(rate), Some(first)) = (rate, segments.first().map(|s| s.from)) {
            let factor = rate / first.max(1e-9);
            for s in &mut segments {
                s.from *= factor;
                s.to *= factor;
            }
        }
        LoadPlan { segments }
    }

    /// The fault schedule of a run over `total` of load: fixed faults (their times
    /// rescaled when the load's duration was overridden) plus those drawn from `seed`.
    pub fn fault_schedule(&self, seed: u64, total: Duration) -> Vec<FaultSpec> {
        let written = self.plan(None, None).duration().as_secs_f64();
        let factor = if written > 0.0 { total.as_secs_f64() / written } else { 1.0 };
        let mut faults: Vec<FaultSpec> = self
            .faults
            .iter()
            .cloned()
            .map(|mut f| {
                f.at = f.at.mul_f64(factor);
                f.duration = f.duration.mul_f64(factor.min(1.0)).max(Duration::from_secs(1));
                f
            })
            .collect();
        if let Some(r) = &self.random_faults {
            faults.extend(r.draw(seed, total));
        }
        faults.sort_by_key(|f| f.at);
        faults
    }

    /// Whether the run needs fault proxies on the links.
    pub fn needs_link_faults(&self) -> bool {
        self.faults.iter().any(|f| f.fault.on_link()) || self.random_faults.as_ref().is_some_and(|r| r.kinds.iter().any(|k| k.on_link()))
    }

    /// The scenario's thresholds, and the gates every run has whatever its file says: no
    /// dead letter the scenario does not expect, the DLQ topic agreeing with the sink's
    /// apply log, and (but in a breakpoint search, which raises the rate until something
    /// gives) the load delivered as planned: no iteration k6 dropped, and the write latency
    /// outside fault windows bounded where it was measured. A file can tighten them, never
    /// drop them.
    pub fn thresholds_for(&self, driver: DriverKind, write_latency_measured: bool) -> Vec<Threshold> {
        let mut out: Vec<Threshold> = self.thresholds.iter().filter_map(|t| Threshold::parse(t).ok()).collect();
        let mut gates: Vec<&str> = ALWAYS_GATED.to_vec();
        if self.verify.live_every.is_some() {
            gates.push(LIVE_GATE);
        }
        if self.breakpoint.is_none() {
            if driver == DriverKind::K6 {
                gates.push(DROPPED_ITERATIONS_GATE);
            }
            if write_latency_measured {
                gates.push(WRITE_LATENCY_GATE);
            }
        }
        for gate in gates {
            let metric = gate.split_whitespace().next().unwrap_or_default();
            if !out.iter().any(|t| t.metric == metric) {
                out.extend(Threshold::parse(gate).ok());
            }
        }
        out
    }
}

/// Every live check found the target agreeing with the snapshot it was fenced by (a check
/// without a verdict counts as failed).
pub const LIVE_GATE: &str = "live.failed == 0";
/// k6 drops an iteration when no VU is free at its time: the plan was not delivered.
pub const DROPPED_ITERATIONS_GATE: &str = "load.dropped_iterations == 0";
/// Writes outside fault windows slower than this (p99, ms, from their intended start) mean
/// the source or the driver could not keep up.
pub const WRITE_LATENCY_GATE: &str = "load.write_latency_outside_faults_ms.p99 < 5000";

/// Gates of every scenario (see `Scenario::thresholds`).
pub const ALWAYS_GATED: [&str; 3] = ["dlq.unexpected == 0", "dlq.unreconciled == 0", "dlq.poison_missing == 0"];

impl Stage {
    fn segment(&self) -> Result<Segment, String> {
        let (from, to) = match (self.rate, self.from, self.to) {
            (Some(r), None, None) => (r, r),
            (None, Some(f), Some(t)) => (f, t),
            _ => return Err("give either `rate` or both `from` and `to`".into()),
        };
        if from < 0.0 || to < 0.0 || self.duration.is_zero() {
            return Err("rates must be >= 0 and the duration > 0".into());
        }
        Ok(Segment { duration: self.duration, from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(s: &Scenario, driver: DriverKind, latency: bool) -> Vec<String> {
        s.thresholds_for(driver, latency).into_iter().map(|t| t.metric).collect()
    }

    #[test]
    fn every_run_gates_its_delivery_where_it_was_measured() {
        let baseline = Scenario::load("baseline").expect("shipped scenario");
        let k6 = metrics(&baseline, DriverKind::K6, true);
        assert!(k6.iter().any(|m| m == "load.dropped_iterations") && k6.iter().any(|m| m == "load.write_latency_outside_faults_ms.p99"), "{k6:?}");
        // goose never drops an iteration (a late one is in its latency); an unmeasured
        // latency is not gated (it would fail as absent).
        let goose = metrics(&baseline, DriverKind::Goose, false);
        assert!(!goose.iter().any(|m| m == "load.dropped_iterations" || m.starts_with("load.write_latency")), "{goose:?}");
        assert!(goose.iter().any(|m| m == "dlq.unexpected"), "{goose:?}");
        // A breakpoint search raises the rate until something gives: no delivery gate.
        let breakpoint = Scenario::load("breakpoint").expect("shipped scenario");
        assert!(!metrics(&breakpoint, DriverKind::K6, true).iter().any(|m| m == "load.dropped_iterations" || m.starts_with("load.write_latency")));
    }

    #[test]
    fn idle_tables_fails_a_slot_that_holds_the_wal_of_other_tables() {
        let scenario = Scenario::load("idle-tables").expect("shipped scenario");
        let gate = |after: u64| {
            let mut report = crate::report::thresholds::representative_report();
            report.pipeline.slot_lag_bytes_max_after_load = Some(after);
            let results = crate::report::thresholds::evaluate(&report, &scenario.thresholds_for(DriverKind::Goose, false));
            results.into_iter().find(|t| t.metric == "slot_lag_bytes.max_after_load").expect("gated").passed
        };
        assert!(!gate(50 << 20), "a slot holding the idle phase's 50 MB fails");
        assert!(gate(1 << 20), "one heartbeat interval's backlog passes");
    }
}
