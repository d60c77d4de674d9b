//! Whether a run delivered the load it was asked for, and what else leaves it without a
//! verdict. A run whose driver fell behind measured the driver, not the pipeline: its
//! numbers are not a PASS (nor a FAIL of the pipeline).

use crate::load::LoadPlan;
use crate::report::model::{FaultRecord, Sample, StageDelivery};
use crate::verify::Percentiles;

/// A stage delivered less than this share of its rate: the run has no verdict.
pub const MIN_DELIVERED: f64 = 0.95;
/// Seconds after a fault's end (or its service's recovery) still excused: the workload's
/// connections reopen.
const FAULT_GRACE_S: f64 = 5.0;
/// Seconds at a stage's edges left out: a ramp's first second, the sampler's phase.
const EDGE_S: f64 = 1.0;

/// Windows (seconds since load start) in which a fault may hold the load back on purpose:
/// the source stopped, its link cut, ...
fn fault_windows(faults: &[FaultRecord]) -> Vec<(f64, f64)> {
    faults
        .iter()
        .filter(|f| f.kind != "schema_change" && f.kind != "poison")
        .map(|f| {
            let end = f.end_s.unwrap_or(f.start_s).max(f.start_s + f.service_recovery_s.unwrap_or(0.0));
            (f.start_s, end + FAULT_GRACE_S)
        })
        .collect()
}

/// The write latency over the requests whose intended start no fault window covers: what
/// the source's clients saw when nothing was done to the system on purpose. None: the
/// driver kept no per-request times and there were fault windows to leave out.
pub fn write_latency_outside_faults(timed: Option<&[(f64, f64)]>, overall: &Percentiles, faults: &[FaultRecord]) -> Option<Percentiles> {
    let windows = fault_windows(faults);
    match timed {
        Some(timed) => {
            let kept = timed.iter().filter(|(at, _)| !windows.iter().any(|(a, b)| at >= a && at <= b)).map(|(_, ms)| *ms).collect();
            Some(crate::run::percentiles(kept)).filter(Percentiles::measured)
        }
        None if windows.is_empty() => Some(overall.clone()).filter(Percentiles::measured),
        None => None,
    }
}

/// Per stage: the target rate and what the workload committed per second, over the stage's
/// seconds that no fault window covers. A stage with no such second is left out.
pub fn stages(plan: &LoadPlan, samples: &[Sample], faults: &[FaultRecord]) -> Vec<StageDelivery> {
    let windows = fault_windows(faults);
    let mut out = Vec::new();
    let mut start = 0.0;
    for (i, segment) in plan.segments.iter().enumerate() {
        let end = start + segment.duration.as_secs_f64();
        // A sample at `t` covers the second before it.
        let counted: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.t - 1.0 >= start + EDGE_S && s.t <= end - EDGE_S.min((end - start) / 4.0))
            .filter(|s| !windows.iter().any(|(a, b)| s.t >= *a && s.t - 1.0 <= *b))
            .collect();
        if !counted.is_empty() {
            let n = counted.len() as f64;
            // The target over the same seconds (a ramp's rate changes along the stage).
            let target = counted
                .iter()
                .map(|s| {
                    let at = ((s.t - 0.5 - start) / (end - start)).clamp(0.0, 1.0);
                    segment.from + (segment.to - segment.from) * at
                })
                .sum::<f64>()
                / n;
            let achieved = counted.iter().map(|s| s.write_rate).sum::<f64>() / n;
            let cpu: Vec<f64> = counted.iter().filter_map(|s| s.cpu_pct.get("harness").copied()).collect();
            out.push(StageDelivery {
                stage: i + 1,
                start_s: start,
                end_s: end,
                target_rate: target,
                achieved_rate: achieved,
                ratio: if target > 0.0 { achieved / target } else { 1.0 },
                seconds: counted.len() as u64,
                harness_cpu_pct: (!cpu.is_empty()).then(|| cpu.iter().sum::<f64>() / cpu.len() as f64),
            });
        }
        start = end;
    }
    out
}

/// Why the run has no verdict, in words (empty: it has one).
pub fn no_verdict_reasons(stages: &[StageDelivery], faults: &[FaultRecord], history_expected: bool, history_checked: bool) -> Vec<String> {
    let mut reasons: Vec<String> = crate::faults::not_injected(faults);
    for s in stages.iter().filter(|s| s.ratio < MIN_DELIVERED) {
        let cpu = s.harness_cpu_pct.map(|c| format!(", the harness itself at {c:.0}% of a core")).unwrap_or_default();
        reasons.push(format!(
            "load not delivered: stage {} ({:.0}-{:.0} s) asked for {:.1} ops/s and got {:.1} ({:.0}%{cpu}): the driver, not the pipeline, was the limit",
            s.stage,
            s.start_s,
            s.end_s,
            s.target_rate,
            s.achieved_rate,
            s.ratio * 100.0
        ));
    }
    if history_expected && !history_checked {
        reasons.push("the sink keeps an apply log, but the verifier could not read it: duplicate and out-of-order applies were not checked".into());
    }
    reasons
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::load::Segment;

    fn sample(t: f64, rate: f64) -> Sample {
        Sample { t, write_rate: rate, cpu_pct: BTreeMap::from([("harness".to_string(), 40.0)]), ..Default::default() }
    }

    fn plan() -> LoadPlan {
        LoadPlan {
            segments: vec![
                Segment { duration: Duration::from_secs(20), from: 100.0, to: 100.0 },
                Segment { duration: Duration::from_secs(20), from: 100.0, to: 500.0 },
            ],
        }
    }

    #[test]
    fn a_driver_that_falls_behind_leaves_the_run_without_a_verdict() {
        // The flat stage is delivered; the ramp tops out at 200 ops/s.
        let samples: Vec<Sample> = (1..=40).map(|t| sample(t as f64, if t <= 20 { 100.0 } else { (100.0 + 20.0 * (t - 20) as f64).min(200.0) })).collect();
        let stages = stages(&plan(), &samples, &[]);
        assert_eq!(stages.len(), 2);
        assert!((stages[0].ratio - 1.0).abs() < 1e-9, "{:?}", stages[0]);
        assert!(stages[1].ratio < 0.7, "{:?}", stages[1]);
        let reasons = no_verdict_reasons(&stages, &[], false, false);
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(reasons[0].starts_with("load not delivered: stage 2") && reasons[0].contains("40% of a core"), "{}", reasons[0]);
    }

    #[test]
    fn seconds_inside_a_fault_window_do_not_count() {
        // PostgreSQL stopped from 5 s to 10 s: nothing committed then, on purpose.
        let samples: Vec<Sample> = (1..=20).map(|t| sample(t as f64, if (5..=12).contains(&t) { 0.0 } else { 100.0 })).collect();
        let fault = FaultRecord { kind: "stop".into(), start_s: 5.0, end_s: Some(10.0), ..Default::default() };
        let plan = LoadPlan { segments: vec![Segment { duration: Duration::from_secs(20), from: 100.0, to: 100.0 }] };
        let stages = stages(&plan, &samples, std::slice::from_ref(&fault));
        assert!(stages[0].ratio >= MIN_DELIVERED, "{:?}", stages[0]);
        assert!(no_verdict_reasons(&stages, &[fault], false, false).is_empty());
        let unexcused = super::stages(&plan, &samples, &[]);
        assert!(unexcused[0].ratio < MIN_DELIVERED, "the same seconds without the fault are a shortfall");
    }

    #[test]
    fn write_latency_leaves_out_the_requests_a_fault_held_back() {
        // A source stopped from 10 s to 20 s: the writes due then waited seconds.
        let timed: Vec<(f64, f64)> = (0..300).map(|i| i as f64 / 10.0).map(|at| (at, if (10.0..=22.0).contains(&at) { 8000.0 } else { 20.0 })).collect();
        let overall = crate::run::percentiles(timed.iter().map(|(_, ms)| *ms).collect());
        let fault = FaultRecord { kind: "stop".into(), start_s: 10.0, end_s: Some(20.0), ..Default::default() };
        let outside = write_latency_outside_faults(Some(&timed), &overall, std::slice::from_ref(&fault)).expect("measured");
        assert_eq!(outside.p99, 20.0, "{outside:?}");
        assert_eq!(overall.p99, 8000.0);
        // Without the fault, the same requests are all counted: a slow source is seen.
        assert_eq!(write_latency_outside_faults(Some(&timed), &overall, &[]).expect("measured").p99, 8000.0);
        // k6 keeps no per-request times: with a fault there is no such figure, without one it is the overall one.
        assert_eq!(write_latency_outside_faults(None, &overall, std::slice::from_ref(&fault)), None);
        assert_eq!(write_latency_outside_faults(None, &overall, &[]), Some(overall));
    }

    #[test]
    fn an_unread_apply_log_and_a_fault_that_did_not_inject_have_no_verdict() {
        let failed = FaultRecord {
            kind: "blackhole".into(),
            target: "sink-target".into(),
            parameters: BTreeMap::from([("error".into(), "no proxy".into())]),
            ..Default::default()
        };
        let reasons = no_verdict_reasons(&[], &[failed], true, false);
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(reasons[0].contains("failed to inject") && reasons[1].contains("apply log"), "{reasons:?}");
    }
}
