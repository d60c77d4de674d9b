//! One sample per second of the pipeline while a run is in progress: write rate, sink
//! throughput, consumer lag per partition, end-to-end latency of the last second (from the
//! target's CDC metadata) and CPU/memory per service.

use std::collections::BTreeMap;
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

pub struct SamplerInputs {
    pub endpoints: Endpoints,
    pub workload: Arc<Workload>,
    pub lag: Option<LagMeter>,
    /// Service name -> process group id.
    pub services: Vec<(String, i32)>,
    pub started: Instant,
    pub target_tables: Vec<String>,
}

/// Samples once per second into `samples` until `stop` is set.
pub async fn run(inputs: SamplerInputs, samples: Arc<Mutex<Vec<Sample>>>, stop: Arc<AtomicBool>) {
    let target = inputs.endpoints.postgres.connect(&inputs.endpoints.postgres.target_db).await.ok();
    let lag = inputs.lag.map(Arc::new);
    let mut cpu = CpuMeter::default();
    let mut last_ops = inputs.workload.total();
    let mut last_sink = sink_processed(&inputs.endpoints.sink_http).await;
    let mut last_at = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let latency_sql = latency_sql(&inputs.target_tables);
    while !stop.load(Ordering::Relaxed) {
        ticker.tick().await;
        let now = Instant::now();
        let secs = now.duration_since(last_at).as_secs_f64().max(1e-3);
        last_at = now;
        let ops = inputs.workload.total();
        let sink = sink_processed(&inputs.endpoints.sink_http).await;
        let mut sample = Sample {
            t: now.duration_since(inputs.started).as_secs_f64(),
            write_rate: (ops - last_ops) as f64 / secs,
            sink_rate: match (sink, last_sink) {
                (Some(now), Some(before)) => (now - before).max(0.0) / secs,
                _ => 0.0,
            },
            ..Default::default()
        };
        last_ops = ops;
        if sink.is_some() {
            last_sink = sink;
        }
        if let Some(lag) = &lag {
            let lag = lag.clone();
            if let Ok(Ok(per_partition)) = tokio::task::spawn_blocking(move || lag.measure()).await {
                sample.lag = per_partition.values().sum();
                sample.lag_per_partition = per_partition;
            }
        }
        if let Some(target) = &target {
            if let Ok(row) = target.query_one(latency_sql.as_str(), &[]).await {
                let values: Option<Vec<f64>> = row.get(0);
                if let Some(v) = values.filter(|v| v.len() == 3) {
                    (sample.e2e_p50_ms, sample.e2e_p95_ms, sample.e2e_p99_ms) = (Some(v[0]), Some(v[1]), Some(v[2]));
                }
            }
        }
        let mut cpu_pct = BTreeMap::new();
        let mut rss = BTreeMap::new();
        for (service, pgid) in &inputs.services {
            let (c, r) = cpu.sample(service, *pgid);
            if let Some(c) = c {
                cpu_pct.insert(service.clone(), c);
            }
            rss.insert(service.clone(), r);
        }
        sample.cpu_pct = cpu_pct;
        sample.rss_mb = rss;
        samples.lock().await.push(sample);
    }
}

async fn sink_processed(http: &str) -> Option<f64> {
    sink_metrics::scrape(http).await.ok().map(|s| sink_metrics::sum(&s, "sink_events_processed_total"))
}

/// Percentiles of commit -> applied over changes applied in the last second.
fn latency_sql(tables: &[String]) -> String {
    let union = tables
        .iter()
        .map(|t| {
            format!(
                "SELECT (extract(epoch FROM _cdc_applied_at - _cdc_source_ts) * 1000)::float8 AS l FROM {t} \
                 WHERE _cdc_applied_at > now() - interval '1 second' AND _cdc_op <> 'r' AND _cdc_source_ts IS NOT NULL"
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    format!("SELECT CASE WHEN count(*) > 0 THEN percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY l) END FROM ({union}) s")
}
