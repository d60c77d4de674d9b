//! What a run's samples and probes add up to: rates, lag and pipeline recovery, the
//! slowest probe of a breakpoint step, percentiles.

use super::probe;
use crate::load::LoadPlan;
use crate::report::model::{FaultRecord, Sample};
use crate::verify::Percentiles;

/// The slowest probe of a breakpoint step (a step holds some thirty probes: their p99 is
/// their maximum, so it is named and computed as one): probes sent in the step, a probe not
/// back by the step's end counting as infinitely late (over any SLO). None: no probe.
pub fn step_probe_max(probes: &[probe::ProbeResult], step_start: f64, step_end: f64) -> Option<f64> {
    let latencies: Vec<f64> = probes
        .iter()
        .filter(|p| p.at >= step_start && p.at < step_end)
        .map(|p| match (p.latency_ms, p.arrived_at()) {
            (Some(l), Some(arrived)) if arrived <= step_end => l,
            _ => f64::INFINITY,
        })
        .collect();
    latencies.into_iter().reduce(f64::max)
}

/// Changes applied per second over the load window: the sum of the per-second increases of
/// the sink's write counters (restarts handled by the sampler), over the window's length.
pub fn applied_per_sec(samples: &[Sample], load_secs: f64) -> Option<f64> {
    let mut previous_t = 0.0;
    let mut total = 0.0;
    let mut measured = false;
    for s in samples.iter().filter(|s| s.t <= load_secs + 0.5) {
        if let Some(rate) = s.sink_rate {
            total += rate * (s.t - previous_t).max(0.0);
            measured = true;
        }
        previous_t = s.t;
    }
    measured.then(|| total / load_secs.max(1e-3))
}

/// Lag recovery: after the spike (the highest-rate segment that is followed by a lower
/// one) or, without a spike, after the load ends: seconds until lag is back to its level
/// before (twice the median lag of the 10 s before, at least 10 events).
pub fn lag_recovery(samples: &[Sample], plan: &LoadPlan, load_secs: f64) -> (Option<f64>, bool) {
    let mut t = 0.0;
    let mut spike: Option<(f64, f64)> = None;
    let mut peak = 0.0;
    for (i, s) in plan.segments.iter().enumerate() {
        let end = t + s.duration.as_secs_f64();
        let rate = s.from.max(s.to);
        let previous = if i > 0 { plan.segments[i - 1].to } else { f64::INFINITY };
        let next = plan.segments.get(i + 1).map(|n| n.from).unwrap_or(f64::INFINITY);
        if rate > previous * 1.5 && rate > next * 1.5 && rate > peak {
            peak = rate;
            spike = Some((t, end));
        }
        t = end;
    }
    // Without a spike: the drain after load end, against the level of the load's first
    // 10 s (a lag that grew through the run must come back down to count as recovered).
    let (event_start, event_end) = spike.unwrap_or((CALM_WINDOW_S.min(load_secs), load_secs));
    match recovered_at(samples, event_start, event_end, &[lag_signal()]) {
        Some(t) => (Some(t), true),
        None => (None, false),
    }
}

/// Length of the calm window a recovery compares with.
const CALM_WINDOW_S: f64 = 10.0;

/// A lag series the recovery looks at, with the floor below which it counts as calm
/// whatever the level before (a pipeline at rest still has a few events in flight).
struct Signal {
    read: fn(&Sample) -> Option<u64>,
    floor: u64,
}

fn lag_signal() -> Signal {
    Signal { read: |s| s.lag, floor: 10 }
}

/// 256 KiB of WAL: a few hundred changes of this workload.
fn slot_signal() -> Signal {
    Signal { read: |s| s.slot_lag_bytes, floor: 256 * 1024 }
}

/// Consecutive samples a recovery must hold for: a lag that dips for a second (a restarted
/// consumer that reads a burst, then loses its partitions) has not recovered.
const RECOVERY_HOLD: usize = 3;

/// Seconds after `event_end` until every signal is back to its level in the calm window
/// (the 10 s before `event_start`: twice its median, at least the floor) and stays there
/// for `RECOVERY_HOLD` samples. A signal with no sample in the calm window uses its floor;
/// a second in which a signal was not measured cannot count as recovered. None: never
/// recovered within the series.
fn recovered_at(samples: &[Sample], event_start: f64, event_end: f64, signals: &[Signal]) -> Option<f64> {
    let levels: Vec<u64> = signals
        .iter()
        .map(|signal| {
            let mut calm: Vec<u64> = samples.iter().filter(|s| s.t >= event_start - CALM_WINDOW_S && s.t < event_start).filter_map(signal.read).collect();
            calm.sort_unstable();
            calm.get(calm.len() / 2).map(|median| (median * 2).max(signal.floor)).unwrap_or(signal.floor)
        })
        .collect();
    let after: Vec<&Sample> = samples.iter().filter(|s| s.t >= event_end).collect();
    let calm = |s: &Sample| signals.iter().zip(&levels).all(|(signal, level)| (signal.read)(s).is_some_and(|v| v <= *level));
    after.windows(RECOVERY_HOLD).find(|w| w.iter().all(|s| calm(s))).map(|w| (w[0].t - event_end).max(0.0))
}

/// Seconds after a fault ended until both the consumer lag and the replication slot's
/// backlog were back to their level before the fault.
pub fn pipeline_recovery(samples: &[Sample], fault: &FaultRecord) -> Option<f64> {
    let end = fault.end_s?;
    let slot_measured = samples.iter().any(|s| s.slot_lag_bytes.is_some());
    let signals: Vec<Signal> = if slot_measured { vec![lag_signal(), slot_signal()] } else { vec![lag_signal()] };
    recovered_at(samples, fault.start_s, end, &signals)
}

/// Exact percentiles by nearest rank (the value at rank ceil(q * n)): the method of every
/// distribution the harness computes from its samples, probes and both verifiers
/// (PostgreSQL's `percentile_disc` is nearest rank too). The one exception is the load
/// API's server-side latency, recorded per request for the whole run: an HdrHistogram
/// (3 significant digits) keeps its memory bounded in a soak. Empty input: not measured.
pub fn percentiles(mut values: Vec<f64>) -> Percentiles {
    if values.is_empty() {
        return Percentiles::default();
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    let at = |q: f64| values[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
    Percentiles { count: n as u64, p50: at(0.5), p90: at(0.9), p95: at(0.95), p99: at(0.99), max: values[n - 1] }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::load::Segment;

    fn sample(t: f64, lag: Option<u64>, slot: Option<u64>) -> Sample {
        Sample { t, lag, slot_lag_bytes: slot, ..Default::default() }
    }

    fn plan(secs: &[(u64, f64)]) -> LoadPlan {
        LoadPlan { segments: secs.iter().map(|(d, r)| Segment { duration: Duration::from_secs(*d), from: *r, to: *r }).collect() }
    }

    #[test]
    fn percentiles_are_nearest_rank_and_empty_is_absent() {
        let p = percentiles((1..=100).map(f64::from).collect());
        assert_eq!((p.count, p.p50, p.p90, p.p95, p.p99, p.max), (100, 50.0, 90.0, 95.0, 99.0, 100.0));
        let small = percentiles(vec![3.0, 1.0, 2.0]);
        assert_eq!((small.p50, small.p99), (2.0, 3.0));
        assert!(!percentiles(Vec::new()).measured());
    }

    #[test]
    fn lag_recovery_after_a_spike_is_measured_against_the_calm_window() {
        // 30 s at 100, a 10 s spike at 500, 30 s at 100; lag ~5 when calm.
        let p = plan(&[(30, 100.0), (10, 500.0), (30, 100.0)]);
        let samples: Vec<Sample> = (0..70)
            .map(|t| {
                let lag = match t {
                    0..30 => 5,
                    30..40 => 2000,
                    40..47 => 800,
                    _ => 6,
                };
                sample(t as f64, Some(lag), None)
            })
            .collect();
        assert_eq!(lag_recovery(&samples, &p, 70.0), (Some(7.0), true));
    }

    #[test]
    fn lag_that_never_recovers_fails() {
        let p = plan(&[(30, 100.0)]);
        let samples: Vec<Sample> = (0..60).map(|t| sample(t as f64, Some(if t < 20 { 5 } else { 5000 + t as u64 }), None)).collect();
        assert_eq!(lag_recovery(&samples, &p, 30.0), (None, false));
    }

    /// A restarted consumer that reads a burst and then loses its partitions: the lag dips
    /// for a second, then grows for good. That is no recovery.
    #[test]
    fn a_momentary_dip_is_not_a_recovery() {
        let p = plan(&[(60, 100.0)]);
        let samples: Vec<Sample> = (0..90)
            .map(|t| {
                let lag = match t {
                    0..10 => 50,
                    31 => 40,
                    _ if t >= 10 => 500 + 100 * t as u64,
                    _ => 50,
                };
                sample(t as f64, Some(lag), None)
            })
            .collect();
        let fault = FaultRecord {
            kind: "kill".into(),
            target: "sink".into(),
            parameters: BTreeMap::new(),
            start_s: 10.0,
            end_s: Some(26.0),
            service_recovery_s: Some(6.0),
            pipeline_recovery_s: None,
        };
        assert_eq!(pipeline_recovery(&samples, &fault), None);
        assert_eq!(lag_recovery(&samples, &p, 60.0), (None, false));
    }

    #[test]
    fn an_unmeasured_second_never_counts_as_recovered() {
        let p = plan(&[(30, 100.0)]);
        // After load end lag is not measured for 5 s (a gap), then it is calm.
        let samples: Vec<Sample> = (0..40).map(|t| sample(t as f64, if (30..35).contains(&t) { None } else { Some(3) }, None)).collect();
        assert_eq!(lag_recovery(&samples, &p, 30.0), (Some(5.0), true));
    }

    #[test]
    fn pipeline_recovery_waits_for_both_lags() {
        let fault = FaultRecord {
            kind: "stop".into(),
            target: "debezium".into(),
            parameters: BTreeMap::new(),
            start_s: 20.0,
            end_s: Some(30.0),
            service_recovery_s: Some(2.0),
            pipeline_recovery_s: None,
        };
        // Kafka lag is back at 32 s (nothing was produced while Debezium was down), the
        // slot still holds the WAL written meanwhile until 38 s.
        let samples: Vec<Sample> = (0..50)
            .map(|t| {
                let kafka = if (30..32).contains(&t) { 500 } else { 4 };
                let slot = if (20..38).contains(&t) { 8 * 1024 * 1024 } else { 16 * 1024 };
                sample(t as f64, Some(kafka), Some(slot))
            })
            .collect();
        assert_eq!(pipeline_recovery(&samples, &fault), Some(8.0));
        let never: Vec<Sample> =
            samples.iter().map(|s| Sample { slot_lag_bytes: Some(if s.t < 20.0 { 16 * 1024 } else { 64 * 1024 * 1024 }), ..s.clone() }).collect();
        assert_eq!(pipeline_recovery(&never, &fault), None, "a slot backlog that never drains is no recovery");
    }

    #[test]
    fn breakpoint_step_counts_late_probes_and_needs_probes() {
        let probe = |at: f64, latency: Option<f64>| probe::ProbeResult { at, latency_ms: latency, pending: latency.is_none() };
        let probes = vec![probe(1.0, Some(50.0)), probe(2.0, Some(60.0)), probe(9.5, None)];
        assert_eq!(step_probe_max(&probes, 0.0, 10.0), Some(f64::INFINITY), "a probe not back by the step's end is over any SLO");
        assert_eq!(step_probe_max(&probes[..2], 0.0, 10.0), Some(60.0));
        assert_eq!(step_probe_max(&probes, 20.0, 30.0), None, "a step with no probes");
    }

    #[test]
    fn applied_rate_sums_the_counter_increases_of_the_window() {
        let mut samples: Vec<Sample> = (1..=10).map(|t| Sample { t: t as f64, sink_rate: Some(100.0), ..Default::default() }).collect();
        samples[4].sink_rate = None; // a failed scrape: its increase lands in the next sample
        samples[5].sink_rate = Some(200.0);
        assert_eq!(applied_per_sec(&samples, 10.0), Some(100.0));
        let unmeasured: Vec<Sample> = samples.iter().map(|s| Sample { sink_rate: None, ..s.clone() }).collect();
        assert_eq!(applied_per_sec(&unmeasured, 10.0), None);
    }
}
