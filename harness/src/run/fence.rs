//! "Converged" is said only once the pipeline is quiet up to a watermark. After the load,
//! the harness commits a fence row into a captured table and takes the source's WAL
//! position X just after it. The pipeline is quiet up to X when the fence row is in the
//! target (Debezium reads the WAL in order, so every change committed before X was emitted
//! before it) and the sink's group has committed every partition up to its high watermark
//! (every record produced, the fence's included, is durable in the target). Only then is
//! the target compared; afterwards the apply log is read once more, and an apply after the
//! comparison started (a late replay the comparison could not see) fails the run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::apply_log::{self, LogRow};
use super::lag::LagMeter;
use crate::orchestrator::Endpoints;

/// The watermark a verification rested on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Watermark {
    /// The source's WAL position just after the fence committed (`pg_lsn` text).
    pub fence_lsn: String,
    pub fence_key: String,
    /// Whether the pipeline went quiet up to the fence before the deadline.
    pub quiet: bool,
    /// From the fence's commit to quiet (or to giving up).
    pub waited_ms: u64,
    /// Consumer lag summed over partitions when last measured (None: never measured).
    pub last_lag: Option<u64>,
    /// Applies the sink made after the comparison started of changes at or below the fence
    /// (versions the comparison covered): a late replay, a stale overwrite after "converged".
    pub late_applies: u64,
    pub late_examples: Vec<String>,
    /// Applies after the comparison started of changes committed after the fence: the
    /// source moved on (not a pipeline fault; counted, not gated).
    #[serde(default)]
    pub after_fence: u64,
}

/// `X/Y` (PostgreSQL's `pg_lsn` text) as the number the sink's versions carry.
pub fn parse_lsn(text: &str) -> Option<i64> {
    let (hi, lo) = text.split_once('/')?;
    let value = (u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?;
    i64::try_from(value).ok()
}

/// Writes the fence and waits, at most `deadline`, until the pipeline is quiet up to it.
pub async fn settle(endpoints: &Endpoints, topics: Vec<String>, partitions: u32, deadline: Duration) -> Result<Watermark, String> {
    let source = endpoints.postgres.connect_source().await.map_err(|e| format!("fence: source: {e}"))?;
    let key = uuid::Uuid::new_v4();
    let email = format!("fence-{}@fence.invalid", key.simple());
    source.execute("INSERT INTO customer (id, email, status) VALUES ($1, $2, 'active')", &[&key, &email]).await.map_err(|e| format!("fence: {e}"))?;
    let lsn: String = source.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.map_err(|e| format!("fence: {e}"))?.get(0);
    let committed = Instant::now();
    let target = endpoints.postgres.connect_target().await.map_err(|e| format!("fence: target: {e}"))?;
    let meter = Arc::new(LagMeter::new(endpoints.kafka_config(), &endpoints.consumer_group, topics, partitions).map_err(|e| format!("fence: lag: {e}"))?);
    let mut watermark = Watermark { fence_lsn: lsn, fence_key: key.to_string(), ..Default::default() };
    let mut said = Instant::now();
    while committed.elapsed() < deadline {
        let arrived = matches!(target.query_opt("SELECT 1 FROM customer_materialized WHERE id = $1 AND NOT _cdc_deleted", &[&key]).await, Ok(Some(_)));
        if arrived {
            let m = meter.clone();
            if let Ok(Ok(lag)) = tokio::task::spawn_blocking(move || m.measure()).await {
                let total: u64 = lag.values().sum();
                watermark.last_lag = Some(total);
                if total == 0 {
                    watermark.quiet = true;
                    break;
                }
            }
        }
        if said.elapsed() >= Duration::from_secs(10) {
            said = Instant::now();
            eprintln!(
                "run: waiting for the pipeline to go quiet up to the fence at {} (fence arrived: {arrived}, lag {:?})",
                watermark.fence_lsn, watermark.last_lag
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    watermark.waited_ms = committed.elapsed().as_millis() as u64;
    Ok(watermark)
}

/// Records the applies the sink made after `position` (the apply log's end when the
/// comparison started): none is expected of a quiet pipeline.
pub async fn late_applies(endpoints: &Endpoints, position: i64, watermark: &mut Watermark) -> Result<(), String> {
    let target = endpoints.postgres.connect_target().await.map_err(|e| format!("late applies: {e}"))?;
    let rows = apply_log::read(&target, position).await.map_err(|e| format!("late applies: {e}"))?;
    record_late(&rows, watermark);
    Ok(())
}

fn record_late(rows: &[LogRow], watermark: &mut Watermark) {
    let fence = parse_lsn(&watermark.fence_lsn);
    for r in rows.iter().filter(|r| r.outcome == "applied") {
        // A change written after the fence (its own LSN past it; the commit position is the
        // previous transaction's commit, so it cannot tell): the comparison never claimed it.
        if let (Some(fence), Some(version)) = (fence, r.version) {
            if version > fence {
                watermark.after_fence += 1;
                continue;
            }
        }
        watermark.late_applies += 1;
        if watermark.late_examples.len() < 5 {
            watermark.late_examples.push(format!(
                "{} {} version {} (partition {} offset {}, apply log row {}) applied at {} after the comparison started",
                r.entity,
                r.key.map(|k| k.to_string()).unwrap_or_default(),
                r.version.unwrap_or_default(),
                r.partition,
                r.offset,
                r.id,
                r.applied_at
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_apply_after_the_comparison_is_recorded_with_its_evidence() {
        let row = |id: i64, outcome: &str| LogRow {
            key: Some(uuid::Uuid::from_u128(9)),
            version: Some(40),
            commit: Some(40),
            op: Some("u".into()),
            partition: 1,
            offset: 77,
            ..LogRow::sample(id, outcome)
        };
        assert_eq!(parse_lsn("0/3A5B840"), Some(0x3A5B840));
        assert_eq!(parse_lsn("1/0"), Some(1 << 32));
        let mut w = Watermark { fence_lsn: "0/40".into(), ..Default::default() };
        record_late(&[row(10, "stale"), row(11, "ignored")], &mut w);
        assert_eq!(w.late_applies, 0, "a replay the guard skipped changed nothing");
        record_late(&[row(12, "applied")], &mut w);
        assert_eq!(w.late_applies, 1, "version 40 is at the fence (0x40 = 64): covered by the comparison");
        assert!(w.late_examples[0].contains("version 40 (partition 1 offset 77, apply log row 12)"), "{}", w.late_examples[0]);
        let newer = LogRow { version: Some(65), commit: Some(65), ..row(13, "applied") };
        record_late(&[newer], &mut w);
        assert_eq!((w.late_applies, w.after_fence), (1, 1), "a change committed after the fence is the source moving on");
    }
}
