//! One sample per second of the pipeline while a run is in progress: write rate (ops/s),
//! applied changes (events/s, the sink's write counters), consumer lag per partition (at the
//! broker), the replication slot's backlog, and CPU/memory of every service and of the
//! harness itself.
//!
//! What it costs the system under test, per second: one `/metrics` scrape of the sink, one
//! committed-offsets and one watermark request per partition to the broker, and one
//! catalog query (`pg_replication_slots`) on the source. It reads no table of the target:
//! per-second latency comes from the sink's apply log, read once after the run
//! (`apply_log`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use super::lag::LagMeter;
use super::procstat::CpuMeter;
use super::sink_metrics;
use crate::orchestrator::Endpoints;
use crate::report::model::Sample;
use crate::workload::api::Workload;

/// Each running service's leader pid, asked again every second (services restart).
pub type LeaderResolver = Box<dyn Fn() -> Vec<(String, i32)> + Send + Sync>;

pub struct SamplerInputs {
    pub endpoints: Endpoints,
    pub workload: Arc<Workload>,
    pub lag: Option<LagMeter>,
    pub leaders: LeaderResolver,
    pub started: Instant,
    /// The connector's replication slot in the source (None: its backlog is not sampled).
    pub slot: Option<String>,
    /// Every sink counter, summed over restarts (read by the run at its end).
    pub counters: Arc<Mutex<CounterTotals>>,
}

/// A counter summed over a process's lifetimes: a value below the previous one means the
/// process restarted and counts from zero again, so its whole value is an increase.
#[derive(Debug, Default, Clone)]
pub struct ResettingCounter {
    last: Option<f64>,
    pub total: f64,
}

impl ResettingCounter {
    /// Feeds a new reading; returns the increase since the previous one.
    pub fn observe(&mut self, value: f64) -> f64 {
        let increase = match self.last {
            Some(prev) if value >= prev => value - prev,
            Some(_) => value,
            None => 0.0,
        };
        self.last = Some(value);
        self.total += increase;
        increase
    }
}

/// Every counter (`*_total`) of the sink's `/metrics`, per label set, summed over the
/// sink's lifetimes: a restart mid-run neither loses what was counted before it nor counts
/// it twice. A scrape that fails adds nothing (the next one catches up, or, after a
/// restart, starts from the new process's count).
#[derive(Debug, Default, Clone)]
pub struct CounterTotals {
    counters: BTreeMap<(String, BTreeMap<String, String>), ResettingCounter>,
    scraped: bool,
}

impl CounterTotals {
    pub fn observe(&mut self, series: &[sink_metrics::Series]) {
        let first = !self.scraped;
        self.scraped = true;
        for s in series.iter().filter(|s| s.name.ends_with("_total")) {
            let counter = self.counters.entry((s.name.clone(), s.labels.clone())).or_insert_with(|| ResettingCounter {
                // A label set that appears after the first reading counted from zero.
                last: (!first).then_some(0.0),
                total: 0.0,
            });
            counter.observe(s.value);
        }
    }

    /// The increase of `name` (all label sets) since the first reading; None when no reading
    /// ever succeeded (not measured, never 0).
    pub fn sum(&self, name: &str) -> Option<f64> {
        self.scraped.then(|| self.counters.iter().filter(|((n, _), _)| n == name).map(|(_, c)| c.total).sum())
    }

    /// `sum` split by the value of `label`.
    pub fn by_label(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for ((n, labels), c) in &self.counters {
            if n == name {
                *out.entry(labels.get(label).cloned().unwrap_or_default()).or_default() += c.total;
            }
        }
        out
    }
}

/// The sink's applied-change counter: every row it wrote (upserts and deletes).
pub fn applied_changes(series: &[sink_metrics::Series]) -> f64 {
    sink_metrics::sum(series, "sink_writes_total")
}

/// Samples once per second into `samples` until `stop` is set.
pub async fn run(inputs: SamplerInputs, samples: Arc<Mutex<Vec<Sample>>>, stop: Arc<AtomicBool>) {
    let mut source = connect_source(&inputs.endpoints).await;
    let lag = inputs.lag.map(Arc::new);
    let mut cpu = CpuMeter::default();
    let mut last_ops = inputs.workload.total();
    let mut applied = ResettingCounter::default();
    if let Some(v) = scrape_applied(&inputs.endpoints.sink_http, &inputs.counters).await {
        applied.observe(v);
    }
    let mut last_at = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    while !stop.load(Ordering::Relaxed) {
        ticker.tick().await;
        let now = Instant::now();
        let secs = now.duration_since(last_at).as_secs_f64().max(1e-3);
        last_at = now;
        let ops = inputs.workload.total();
        let mut sample = Sample {
            t: now.duration_since(inputs.started).as_secs_f64(),
            write_rate: (ops - last_ops) as f64 / secs,
            sink_rate: scrape_applied(&inputs.endpoints.sink_http, &inputs.counters).await.map(|v| applied.observe(v) / secs),
            ..Default::default()
        };
        last_ops = ops;
        if let Some(lag) = &lag {
            let lag = lag.clone();
            if let Ok(Ok(per_partition)) = tokio::task::spawn_blocking(move || lag.measure()).await {
                sample.lag = Some(per_partition.values().sum());
                sample.lag_per_partition = per_partition;
            }
        }
        // A fault that stopped PostgreSQL closed the connection: open another, or the slot's
        // backlog stays unmeasured for the rest of the run.
        if source.as_ref().is_none_or(tokio_postgres::Client::is_closed) {
            source = connect_source(&inputs.endpoints).await;
        }
        if let (Some(source), Some(slot)) = (&source, &inputs.slot) {
            sample.slot_lag_bytes = slot_lag(source, slot).await;
        }
        let usage = cpu.sample(&(inputs.leaders)());
        let mut cpu_pct = BTreeMap::new();
        let mut rss = BTreeMap::new();
        for (service, u) in usage {
            if let Some(c) = u.cpu_pct {
                cpu_pct.insert(service.clone(), c);
            }
            rss.insert(service, u.rss_mb);
        }
        sample.cpu_pct = cpu_pct;
        sample.rss_mb = rss;
        samples.lock().await.push(sample);
    }
}

/// The source, or None when it does not answer within a sampling tick.
async fn connect_source(endpoints: &Endpoints) -> Option<tokio_postgres::Client> {
    tokio::time::timeout(Duration::from_millis(800), endpoints.postgres.connect_source()).await.ok()?.ok()
}

/// One scrape: feeds every counter's total and returns the applied-change count.
async fn scrape_applied(http: &str, counters: &Mutex<CounterTotals>) -> Option<f64> {
    let series = sink_metrics::scrape(http).await.ok()?;
    counters.lock().await.observe(&series);
    Some(applied_changes(&series))
}

/// Bytes of WAL the slot has not confirmed (None: no such slot, or the query failed).
pub async fn slot_lag(source: &tokio_postgres::Client, slot: &str) -> Option<u64> {
    let row = source
        .query_opt("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8 FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
        .await
        .ok()??;
    row.get::<_, Option<i64>>(0).map(|v| v.max(0) as u64)
}

/// Per-second latency percentiles from the apply log, merged into the samples by time.
pub fn merge_latency(samples: &mut [Sample], per_second: &HashMap<i64, super::apply_log::SecondLatency>) {
    for sample in samples {
        // A sample at t covers (t - 1, t].
        let second = sample.t.ceil() as i64 - 1;
        if let Some(l) = per_second.get(&second) {
            sample.e2e_p50_ms = l.e2e.first().copied();
            sample.e2e_p95_ms = l.e2e.get(1).copied();
            sample.e2e_p99_ms = l.e2e.get(2).copied();
            sample.capture_p95_ms = l.capture_p95;
            sample.apply_p95_ms = l.apply_p95;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_resets_count_as_increases() {
        let mut totals = CounterTotals::default();
        assert_eq!(totals.sum("sink_errors_total"), None, "no reading: not measured");
        let series = |v: f64, rule: Option<&str>| {
            let mut out = vec![sink_metrics::Series { name: "sink_errors_total".into(), labels: BTreeMap::new(), value: v }];
            if let Some(rule) = rule {
                out.push(sink_metrics::Series { name: "sink_errors_total".into(), labels: BTreeMap::from([("kind".into(), rule.into())]), value: 2.0 });
            }
            out
        };
        totals.observe(&series(10.0, None));
        totals.observe(&series(15.0, None));
        // The sink restarted: 3 since, and a new label set counts from zero.
        totals.observe(&series(3.0, Some("panic")));
        assert_eq!(totals.sum("sink_errors_total"), Some(5.0 + 3.0 + 2.0));
        assert_eq!(totals.by_label("sink_errors_total", "kind").get("panic"), Some(&2.0));
        let mut c = ResettingCounter::default();
        assert_eq!(c.observe(100.0), 0.0);
        assert_eq!(c.observe(150.0), 50.0);
        // The sink restarted: its counter starts over.
        assert_eq!(c.observe(20.0), 20.0);
        assert_eq!(c.observe(30.0), 10.0);
        assert_eq!(c.total, 80.0);
    }
}
