//! The run report: one versioned, serializable model that every renderer (JSON, HTML,
//! Markdown, JUnit) and `harness diff` read. Bump `SCHEMA_VERSION` on any breaking change.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::verify::{Percentiles, VerifyReport};

/// 2: absent measurements are `null` (never 0), per-hop latency, slot lag, lag gaps.
pub const SCHEMA_VERSION: u32 = 2;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub schema_version: u32,
    pub run: RunMeta,
    /// The scenario and stack settings as run, secrets redacted.
    pub config: serde_json::Value,
    pub load: LoadStats,
    pub pipeline: PipelineStats,
    /// One sample per second.
    pub series: Vec<Sample>,
    pub faults: Vec<FaultRecord>,
    pub convergence: VerifyReport,
    pub validation: ValidationStats,
    pub thresholds: Vec<ThresholdResult>,
    pub summary: Summary,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunMeta {
    pub run_id: String,
    pub scenario: String,
    pub seed: u64,
    pub git_sha: Option<String>,
    /// `goose` or `k6`.
    pub driver: String,
    /// `local`, `docker` or `external`.
    pub backend: String,
    /// The Docker backend's image set (`upstream` or `local`); absent on other backends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_set: Option<String>,
    /// Component -> version (postgres, debezium, broker, sink, harness, ...).
    pub versions: BTreeMap<String, String>,
    pub machine: Machine,
    /// RFC 3339.
    pub started_at: String,
    pub ended_at: String,
    pub duration_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Machine {
    pub cores: u32,
    pub memory_mb: u64,
    pub os: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LoadStats {
    /// insert / update / delete (and per table: `insert.customer`, ...).
    pub ops_by_kind: BTreeMap<String, u64>,
    pub target_rate: f64,
    pub achieved_rate: f64,
    /// Latency of the workload API's writes (from intended start: no coordinated omission).
    pub write_latency_ms: Percentiles,
    /// The same over the requests whose intended start no fault window covers (a stopped
    /// source holds writes back on purpose). None: not measured (k6 keeps no per-request
    /// times; without a fault it is `write_latency_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_latency_outside_faults_ms: Option<Percentiles>,
    /// Requests the driver saw fail (transport errors and 5xx: a transaction the workload
    /// could not commit is one of them, counted once).
    pub errors: u64,
    /// Requests of the plan the driver never started (k6 `dropped_iterations`); None for
    /// a driver that starts every request (late if need be: the delay is in its latency).
    #[serde(default)]
    pub dropped_iterations: Option<u64>,
    /// What each stage of the plan got, outside fault windows (empty: not measured, as in
    /// breakpoint runs, which raise the rate until something gives).
    #[serde(default)]
    pub stages: Vec<StageDelivery>,
}

/// One load stage: the rate it asked for and the rate the driver delivered, over the
/// seconds of the stage that no fault window covers.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StageDelivery {
    pub stage: usize,
    pub start_s: f64,
    pub end_s: f64,
    pub target_rate: f64,
    pub achieved_rate: f64,
    /// achieved / target.
    pub ratio: f64,
    pub seconds: u64,
    /// The harness's own CPU (percent of one core) in the stage: a driver that falls
    /// behind while this is high was limited by the machine it runs on.
    pub harness_cpu_pct: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PipelineStats {
    /// Change events (row changes) the sink applied to the target per second over the load
    /// window, from its write counters (not records consumed); None: not measured.
    pub events_per_sec: Option<f64>,
    /// Source commit -> durable in the target, over every change of the load window (the
    /// sink's apply log), snapshot reads excluded.
    pub e2e_latency_ms: Percentiles,
    /// First hop: source commit -> the change's Kafka record timestamp.
    pub capture_latency_ms: Percentiles,
    /// Second hop: Kafka record timestamp -> durable in the target.
    pub apply_latency_ms: Percentiles,
    /// Which clock stamps each end of the latencies above, and how percentiles are computed.
    #[serde(default)]
    pub latency_clocks: BTreeMap<String, String>,
    pub e2e_latency_ms_per_entity: BTreeMap<String, Percentiles>,
    /// Probe writes: commit -> visible in the target, polled by the harness.
    pub probe_latency_ms: Percentiles,
    /// Highest consumer lag (events) measured at the broker; None: never measured.
    pub max_lag: Option<u64>,
    /// Highest replication slot backlog (bytes of WAL behind the source's current position).
    pub slot_lag_bytes_max: Option<u64>,
    /// The same while the load ran, and after it (the drain, an idle phase, the
    /// verification): WAL a slot holds while its tables are idle shows in the second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot_lag_bytes_max_during_load: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot_lag_bytes_max_after_load: Option<u64>,
    /// WAL the database wrote during the scenario's idle phase (captured tables idle):
    /// what a slot that confirmed nothing meanwhile would hold. None: no idle phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_wal_bytes: Option<u64>,
    /// The target's clock minus the source's at the start of the run (ms, fastest of five
    /// round trips): every end-to-end latency carries it. None: not measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_skew_ms: Option<f64>,
    /// Seconds the lag series could not be sampled (gaps in the series).
    #[serde(default)]
    pub lag_unmeasured_s: u64,
    /// Seconds until lag returned to its pre-spike level after the load peak (None: no
    /// spike in the scenario, or it never recovered: see `lag_recovered`).
    pub lag_recovery_s: Option<f64>,
    pub lag_recovered: bool,
    /// Highest rate that met every SLO (breakpoint scenario).
    pub max_sustainable_rate: Option<f64>,
    /// Target rows carrying a column added to the source during the run (schema-change
    /// scenario): the new column reached the target.
    #[serde(default)]
    pub new_column_rows: Option<u64>,
    /// Each column a schema change added, compared row by row between source and target
    /// (rows that took a DEFAULT without a change event included).
    #[serde(default)]
    pub new_columns: Vec<NewColumnCheck>,
}

/// A column added during the run, source against target for every row.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NewColumnCheck {
    /// `table.column` in the target.
    pub column: String,
    /// Source rows compared (keys in both sides).
    pub rows: u64,
    /// Rows whose value differs (NULL against a value counts).
    pub differing: u64,
    /// Rows the target holds no value for while the source does.
    pub missing_in_target: u64,
    /// A few differing keys: (key, source value, target value).
    pub examples: Vec<(String, Option<String>, Option<String>)>,
    /// Why it could not be compared (e.g. the column is not in the target).
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Sample {
    /// Seconds since the load started.
    pub t: f64,
    /// Workload operations (source transactions) per second: ops/s.
    pub write_rate: f64,
    /// Row changes the sink applied per second (its write counters): events/s. None: its
    /// `/metrics` could not be read this second.
    pub sink_rate: Option<f64>,
    /// Consumer lag summed over partitions, at the broker. None: not measured this second
    /// (a gap in the series, never a 0).
    pub lag: Option<u64>,
    pub lag_per_partition: BTreeMap<String, u64>,
    /// Replication slot backlog: bytes of WAL between the source's current position and
    /// what the connector confirmed. None: not measured this second.
    #[serde(default)]
    pub slot_lag_bytes: Option<u64>,
    /// Latency of the changes applied in this second (from the apply log, after the run).
    pub e2e_p50_ms: Option<f64>,
    pub e2e_p95_ms: Option<f64>,
    pub e2e_p99_ms: Option<f64>,
    #[serde(default)]
    pub capture_p95_ms: Option<f64>,
    #[serde(default)]
    pub apply_p95_ms: Option<f64>,
    /// Service -> CPU percent of one core (every process of the service; `harness` is the
    /// harness itself: load generator, workload API, observers).
    pub cpu_pct: BTreeMap<String, f64>,
    /// Service -> memory in MiB: proportional set size summed over its processes.
    pub rss_mb: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FaultRecord {
    /// e.g. `kill`, `stop`, `pause`, `restart`, `latency`, `partition`, `poison`.
    pub kind: String,
    /// Service or link (`sink->broker`).
    pub target: String,
    pub parameters: BTreeMap<String, String>,
    /// Seconds since load start.
    pub start_s: f64,
    pub end_s: Option<f64>,
    /// Seconds from the service being started again (or resumed) until it was healthy.
    pub service_recovery_s: Option<f64>,
    /// Until both the consumer lag and the replication slot lag were back to their level
    /// before the fault.
    pub pipeline_recovery_s: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ValidationStats {
    pub passed: u64,
    /// Rule -> failures.
    pub failed_by_rule: BTreeMap<String, u64>,
    pub dlq: u64,
    pub stale_skipped: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ThresholdResult {
    /// As written in the scenario, e.g. `e2e_latency_ms.p95 < 2000`.
    pub expression: String,
    pub metric: String,
    /// None when the metric is absent from the report (counts as failed).
    pub observed: Option<f64>,
    pub passed: bool,
    /// Why it failed when that is not the comparison itself (e.g. "not measured").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub converged: bool,
    pub events_per_sec: Option<f64>,
    /// None: no change latency was measured.
    pub e2e_latency_ms: Option<LatencyTriple>,
    pub lag_recovery_s: Option<f64>,
    /// Write failures + sink errors + lost probes + anomalies (see `errors_by_kind`).
    pub errors: u64,
    /// `errors` by what they are: `write_failures` (requests the driver saw fail),
    /// `sink_errors` (transient errors the sink retried; absent when its metrics were never
    /// read), `lost_probes` (probe writes that never reached the target) and `anomalies`
    /// (correctness: what the verifier found).
    #[serde(default)]
    pub errors_by_kind: BTreeMap<String, u64>,
    pub thresholds_passed: bool,
    /// Why the run has no verdict (its load was not delivered, a fault did not inject, the
    /// apply log could not be read, ...): when any, it neither passes nor fails.
    #[serde(default)]
    pub no_verdict: Vec<String>,
}

/// The one verdict of a run, which every report file and the exit code tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail,
    NoVerdict,
}

impl Verdict {
    pub fn of(summary: &Summary) -> Self {
        if !summary.no_verdict.is_empty() {
            Self::NoVerdict
        } else if summary.converged && summary.thresholds_passed {
            Self::Pass
        } else {
            Self::Fail
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::Fail => "FAIL",
            Self::NoVerdict => "NO VERDICT",
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LatencyTriple {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

/// Which way a metric should move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    LowerIsBetter,
    HigherIsBetter,
}

/// A numeric metric of a report, named as thresholds and `diff` name it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    pub name: String,
    pub value: f64,
    pub direction: Direction,
    /// Whether `harness diff` fails when this metric regresses.
    pub gated: bool,
}

impl Report {
    /// A report that holds only a verification (no load, nothing else measured: every
    /// other metric is absent), so thresholds on `convergence.*` can be evaluated on it.
    pub fn of_verification(convergence: VerifyReport) -> Report {
        Report {
            schema_version: SCHEMA_VERSION,
            run: RunMeta {
                run_id: String::new(),
                scenario: "verify".into(),
                seed: 0,
                git_sha: None,
                driver: String::new(),
                backend: String::new(),
                image_set: None,
                versions: BTreeMap::new(),
                machine: Machine { cores: 0, memory_mb: 0, os: String::new() },
                started_at: String::new(),
                ended_at: String::new(),
                duration_s: 0.0,
            },
            config: serde_json::Value::Null,
            load: LoadStats::default(),
            pipeline: PipelineStats::default(),
            series: Vec::new(),
            faults: Vec::new(),
            summary: Summary { converged: convergence.converged, ..Summary::default() },
            convergence,
            validation: ValidationStats::default(),
            thresholds: Vec::new(),
        }
    }

    /// Every numeric metric with its direction: the single place where names and
    /// directions are declared (thresholds and diff both use it).
    pub fn metrics(&self) -> Vec<Metric> {
        use Direction::*;
        let mut out = Vec::new();
        let mut push = |name: &str, value: f64, direction: Direction, gated: bool| {
            out.push(Metric { name: name.to_string(), value, direction, gated });
        };
        let p = &self.pipeline;
        if let Some(v) = p.events_per_sec {
            push("events_per_sec", v, HigherIsBetter, true);
        }
        for (suffix, v) in pct_fields(&p.e2e_latency_ms) {
            push(&format!("e2e_latency_ms.{suffix}"), v, LowerIsBetter, suffix != "max");
        }
        for (suffix, v) in pct_fields(&p.capture_latency_ms) {
            push(&format!("capture_latency_ms.{suffix}"), v, LowerIsBetter, false);
        }
        for (suffix, v) in pct_fields(&p.apply_latency_ms) {
            push(&format!("apply_latency_ms.{suffix}"), v, LowerIsBetter, false);
        }
        for (entity, pct) in &p.e2e_latency_ms_per_entity {
            for (suffix, v) in pct_fields(pct) {
                push(&format!("e2e_latency_ms.{entity}.{suffix}"), v, LowerIsBetter, false);
            }
        }
        for (suffix, v) in pct_fields(&p.probe_latency_ms) {
            push(&format!("probe_latency_ms.{suffix}"), v, LowerIsBetter, false);
        }
        if let Some(v) = p.max_lag {
            push("max_lag", v as f64, LowerIsBetter, false);
        }
        if let Some(v) = p.slot_lag_bytes_max {
            push("slot_lag_bytes.max", v as f64, LowerIsBetter, false);
        }
        if let Some(v) = p.slot_lag_bytes_max_during_load {
            push("slot_lag_bytes.max_during_load", v as f64, LowerIsBetter, false);
        }
        if let Some(v) = p.slot_lag_bytes_max_after_load {
            push("slot_lag_bytes.max_after_load", v as f64, LowerIsBetter, true);
        }
        if let Some(v) = p.clock_skew_ms {
            push("clock_skew_ms", v.abs(), LowerIsBetter, false);
        }
        if let Some(v) = p.idle_wal_bytes {
            push("idle.wal_bytes", v as f64, LowerIsBetter, false);
        }
        if let Some(v) = p.lag_recovery_s {
            push("lag_recovery_s", v, LowerIsBetter, true);
        }
        if let Some(v) = p.max_sustainable_rate {
            push("max_sustainable_rate", v, HigherIsBetter, true);
        }
        if let Some(v) = p.new_column_rows {
            push("schema_change.new_column_rows", v as f64, HigherIsBetter, false);
        }
        if !p.new_columns.is_empty() {
            // A column that could not be compared counts as differing everywhere it exists.
            let differing: u64 = p.new_columns.iter().map(|c| if c.error.is_some() { c.rows.max(1) } else { c.differing }).sum();
            push("schema_change.differing_rows", differing as f64, LowerIsBetter, true);
            // Rows whose new column holds a value in the source and nothing in the target.
            let missing: u64 = p.new_columns.iter().map(|c| if c.error.is_some() { c.rows.max(1) } else { c.missing_in_target }).sum();
            push("schema_change.missing_rows", missing as f64, LowerIsBetter, true);
        }
        let l = &self.load;
        push("load.achieved_rate", l.achieved_rate, HigherIsBetter, false);
        push("load.errors", l.errors as f64, LowerIsBetter, true);
        if let Some(min) = l.stages.iter().map(|s| s.ratio).min_by(f64::total_cmp) {
            push("load.delivered_ratio", min, HigherIsBetter, true);
        }
        if let Some(v) = l.dropped_iterations {
            push("load.dropped_iterations", v as f64, LowerIsBetter, true);
        }
        for (suffix, v) in pct_fields(&l.write_latency_ms) {
            push(&format!("write_latency_ms.{suffix}"), v, LowerIsBetter, false);
        }
        if let Some(p) = l.write_latency_outside_faults_ms.as_ref().filter(|p| p.measured()) {
            push("load.write_latency_outside_faults_ms.p99", p.p99, LowerIsBetter, true);
        }
        let c = &self.convergence;
        push("convergence.missing", c.total(|e| e.missing_in_target) as f64, LowerIsBetter, true);
        push("convergence.extra", c.total(|e| e.extra_in_target) as f64, LowerIsBetter, true);
        push("convergence.mismatched", c.total(|e| e.mismatched) as f64, LowerIsBetter, true);
        push("convergence.duplicates", c.total(|e| e.duplicates) as f64, LowerIsBetter, true);
        push("convergence.anomalies", c.anomaly_counts.values().sum::<u64>() as f64, LowerIsBetter, true);
        if !c.live_checks.is_empty() {
            push("live.checks", c.live_checks.len() as f64, HigherIsBetter, false);
            push("live.failed", c.live_checks.iter().filter(|l| !l.converged).count() as f64, LowerIsBetter, true);
            if let Some(max) = c.live_checks.iter().map(|l| l.waited_ms).max() {
                push("live.waited_ms.max", max as f64, LowerIsBetter, false);
            }
            if let Some(max) = c.live_checks.iter().map(|l| l.compare_ms).max() {
                push("live.compare_ms.max", max as f64, LowerIsBetter, false);
            }
            // Decisions the clock made, not the snapshot: how much of the verdict is exact.
            push("live.set_aside_by_clock", c.live_checks.iter().map(|l| l.set_aside_by_clock).sum::<u64>() as f64, LowerIsBetter, false);
            push("live.compared_by_clock", c.live_checks.iter().map(|l| l.compared_by_clock).sum::<u64>() as f64, LowerIsBetter, false);
        }
        if let Some(ms) = c.time_to_converge_ms {
            push("convergence.time_to_converge_s", ms as f64 / 1000.0, LowerIsBetter, false);
        }
        push("validation.dlq", self.validation.dlq as f64, LowerIsBetter, false);
        push("convergence.dlq_rejected", c.dlq_rejected.values().sum::<u64>() as f64, LowerIsBetter, false);
        for (rule, n) in &c.dlq_rejected {
            push(&format!("convergence.dlq_rejected.{rule}"), *n as f64, LowerIsBetter, false);
        }
        push("convergence.excused", c.total(|e| e.excused) as f64, LowerIsBetter, false);
        if let Some(w) = &c.watermark {
            push("convergence.late_applies", w.late_applies as f64, LowerIsBetter, true);
            if w.quiet {
                push("convergence.quiet_after_s", w.waited_ms as f64 / 1000.0, LowerIsBetter, false);
            }
        }
        // Read back from the topic; absent when it was not read (a gate on it then fails).
        if let Some(d) = &c.dlq {
            push("dlq.letters", d.letters as f64, LowerIsBetter, false);
            push("dlq.unexpected", d.unexpected as f64, LowerIsBetter, true);
            push("dlq.unreconciled", d.unreconciled as f64, LowerIsBetter, true);
            push("dlq.poison_missing", d.poison_missing as f64, LowerIsBetter, true);
            for class in crate::verify::dlq::FIXED_CLASSES {
                push(&format!("dlq.{class}"), d.by_class.get(class).copied().unwrap_or(0) as f64, LowerIsBetter, false);
            }
            for (class, n) in &d.by_class {
                if let Some(rule) = class.strip_prefix("rule:") {
                    push(&format!("dlq.rule.{rule}"), *n as f64, LowerIsBetter, false);
                }
            }
        }
        let poison: Vec<u64> = self.faults.iter().filter_map(|f| f.parameters.get(crate::faults::POISON_UNRECONCILED)).filter_map(|v| v.parse().ok()).collect();
        if !poison.is_empty() {
            push("faults.poison_unreconciled", poison.iter().sum::<u64>() as f64, LowerIsBetter, true);
        }
        push("errors", self.summary.errors as f64, LowerIsBetter, true);
        for (kind, n) in &self.summary.errors_by_kind {
            push(&format!("errors.{kind}"), *n as f64, LowerIsBetter, false);
        }
        out
    }
}

/// The named fields of a measured distribution; none when nothing was measured (absent,
/// never 0).
fn pct_fields(p: &Percentiles) -> Vec<(&'static str, f64)> {
    if !p.measured() {
        return Vec::new();
    }
    vec![("p50", p.p50), ("p90", p.p90), ("p95", p.p95), ("p99", p.p99), ("max", p.max)]
}
