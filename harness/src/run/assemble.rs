//! The run's report, assembled from what its stages measured: the load's figures, the
//! pipeline's (latency per hop, lag, recovery), the convergence, the gates and the verdict.

use std::collections::BTreeMap;

use chrono::Utc;

use super::meta::{git_sha, machine, versions};
use super::stats::{applied_per_sec, lag_recovery, percentiles};
use super::{Collected, RunOptions, apply_log, compare_new_columns, delivery, new_column_rows, validation};
use crate::load::{DriverKind, DriverResult, LoadPlan};
use crate::orchestrator::Endpoints;
use crate::orchestrator::stack::Stack;
use crate::report::model::{LatencyTriple, LoadStats, PipelineStats, Report, RunMeta, SCHEMA_VERSION, Summary};
use crate::workload::api::WorkloadStats;

/// Everything the report is made of.
pub(super) struct Inputs<'a> {
    pub options: &'a RunOptions,
    pub stack: &'a Stack,
    pub driver: DriverKind,
    pub run_id: &'a str,
    pub started_at: chrono::DateTime<Utc>,
    pub endpoints: &'a Endpoints,
    pub stats_before: WorkloadStats,
    pub stats_after: WorkloadStats,
    pub clock_skew_ms: Option<f64>,
    /// The sink kept an apply log (per-hop latency and the history check need it).
    pub audited: bool,
    pub load_secs: f64,
    pub plan: LoadPlan,
    pub driver_result: DriverResult,
    pub max_sustainable: Option<f64>,
    pub fault_schedule: Vec<crate::faults::FaultSpec>,
    pub idle_wal_bytes: Option<u64>,
    /// Reasons found by the stages that the run has no verdict.
    pub no_verdict: Vec<String>,
    pub convergence: crate::verify::VerifyReport,
    pub collected: Collected,
}

pub(super) async fn report(inputs: Inputs<'_>) -> Report {
    let Inputs {
        options,
        stack,
        driver,
        run_id,
        started_at,
        endpoints,
        stats_before,
        stats_after,
        clock_skew_ms,
        audited,
        load_secs,
        plan,
        driver_result,
        max_sustainable,
        fault_schedule,
        idle_wal_bytes,
        no_verdict,
        convergence,
        collected: Collected { samples, probes, counters, hops, faults },
    } = inputs;
    let scenario = &options.scenario;
    let events_per_sec = applied_per_sec(&samples, load_secs);
    // One source of truth: the requests the driver saw fail. A transaction the workload
    // could not commit answers 503, so it is among them (adding the workload's own count
    // would count it twice).
    let load_errors = driver_result.failures;
    let (lag_recovery_s, lag_recovered) = lag_recovery(&samples, &plan, load_secs);
    let probe_latency = percentiles(probes.iter().filter_map(|p| p.latency_ms).collect());
    let lost_probes = probes.iter().filter(|p| p.latency_ms.is_none()).count() as u64;
    let anomalies: u64 = convergence.anomaly_counts.values().sum();
    // Summed over sink restarts by the sampler (a restart resets the process's counters).
    let sink_errors = counters.sum("sink_errors_total").map(|v| v.max(0.0) as u64);
    let errors_by_kind: BTreeMap<String, u64> =
        [("write_failures", Some(load_errors)), ("sink_errors", sink_errors), ("lost_probes", Some(lost_probes)), ("anomalies", Some(anomalies))]
            .into_iter()
            .filter_map(|(kind, n)| n.map(|n| (kind.to_string(), n)))
            .collect();

    let hops = hops.unwrap_or_default();
    let latency_clocks = apply_log::clocks(&hops);
    let pipeline = PipelineStats {
        events_per_sec,
        e2e_latency_ms: hops.e2e,
        capture_latency_ms: hops.capture,
        apply_latency_ms: hops.apply,
        latency_clocks,
        e2e_latency_ms_per_entity: hops.e2e_per_entity,
        probe_latency_ms: probe_latency,
        max_lag: samples.iter().filter_map(|s| s.lag).max(),
        slot_lag_bytes_max: samples.iter().filter_map(|s| s.slot_lag_bytes).max(),
        slot_lag_bytes_max_during_load: samples.iter().filter(|s| s.t <= load_secs).filter_map(|s| s.slot_lag_bytes).max(),
        slot_lag_bytes_max_after_load: samples.iter().filter(|s| s.t > load_secs + 1.0).filter_map(|s| s.slot_lag_bytes).max(),
        idle_wal_bytes,
        clock_skew_ms,
        lag_unmeasured_s: samples.iter().filter(|s| s.lag.is_none()).count() as u64,
        lag_recovery_s,
        lag_recovered,
        max_sustainable_rate: max_sustainable,
        new_column_rows: new_column_rows(scenario, endpoints).await,
        new_columns: compare_new_columns(scenario, endpoints).await,
    };
    let summary = Summary {
        converged: convergence.converged,
        events_per_sec,
        e2e_latency_ms: pipeline.e2e_latency_ms.measured().then_some(LatencyTriple {
            p50: pipeline.e2e_latency_ms.p50,
            p95: pipeline.e2e_latency_ms.p95,
            p99: pipeline.e2e_latency_ms.p99,
        }),
        lag_recovery_s,
        errors: errors_by_kind.values().sum(),
        errors_by_kind,
        thresholds_passed: false,
        no_verdict: Vec::new(),
    };
    // Breakpoint runs raise the rate until something gives: falling behind is their finding.
    let stages = if scenario.breakpoint.is_some() { Vec::new() } else { delivery::stages(&plan, &samples, &faults) };
    let ended_at = Utc::now();
    let mut report = Report {
        schema_version: SCHEMA_VERSION,
        run: RunMeta {
            run_id: run_id.to_string(),
            scenario: scenario.name.clone(),
            seed: options.seed,
            git_sha: git_sha(),
            driver: driver.name().to_string(),
            backend: stack.backend().name().into(),
            image_set: stack.image_set().map(|s| s.name().to_string()),
            versions: versions(stack.owns_services()),
            machine: machine(),
            started_at: started_at.to_rfc3339(),
            ended_at: ended_at.to_rfc3339(),
            duration_s: (ended_at - started_at).num_milliseconds() as f64 / 1000.0,
        },
        config: serde_json::json!({
            "scenario": scenario,
            "plan": plan,
            "overrides": { "duration": options.duration.map(|d| d.as_secs_f64()), "rate": options.rate },
            // The planned schedule (fixed and seeded faults): the same seed gives the same one.
            "fault_schedule": fault_schedule,
            "stack": stack.describe(),
        }),
        load: LoadStats {
            ops_by_kind: ops_by_kind(&stats_before, &stats_after),
            target_rate: plan.total_ops() / plan.duration().as_secs_f64().max(1e-3),
            achieved_rate: (stats_after.total - stats_before.total) as f64 / load_secs.max(1e-3),
            write_latency_ms: driver_result.latency_ms.clone(),
            write_latency_outside_faults_ms: delivery::write_latency_outside_faults(
                driver_result.timed_latencies.as_deref(),
                &driver_result.latency_ms,
                &faults,
            ),
            errors: load_errors,
            dropped_iterations: driver_result.dropped,
            stages,
        },
        pipeline,
        series: samples,
        faults,
        convergence,
        validation: validation(&counters),
        thresholds: Vec::new(),
        summary,
    };
    report.thresholds = crate::report::thresholds::evaluate(&report, &scenario.thresholds_for(driver, report.load.write_latency_outside_faults_ms.is_some()));
    report.summary.thresholds_passed = report.thresholds.iter().all(|t| t.passed);
    report.summary.no_verdict = delivery::no_verdict_reasons(&report.load.stages, &report.faults, audited, report.convergence.history_checked);
    report.summary.no_verdict.extend(no_verdict);
    report
}

/// Operations committed during the load, by `kind.entity` and summed by kind.
fn ops_by_kind(before: &WorkloadStats, after: &WorkloadStats) -> BTreeMap<String, u64> {
    let during = |k: &String, v: &u64| v - before.ops.get(k).copied().unwrap_or(0);
    after
        .ops
        .iter()
        .map(|(k, v)| (k.clone(), during(k, v)))
        .chain(["insert", "update", "delete"].iter().map(|kind| {
            let n = after.ops.iter().filter(|(k, _)| k.starts_with(kind)).map(|(k, v)| during(k, v)).sum();
            (kind.to_string(), n)
        }))
        .collect()
}
