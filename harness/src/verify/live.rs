//! Live verification: a verdict while the load keeps running, fenced by a WAL watermark.
//!
//! 1. The source is read in one REPEATABLE READ transaction whose first statement takes
//!    the WAL position X: every transaction the snapshot shows committed before X.
//! 2. The check waits until the pipeline covers X: the replication slot confirmed X (the
//!    connector has every change up to it acknowledged by the broker), then the sink's group
//!    committed every partition up to the high watermark read at that moment (every record
//!    produced so far, those up to X among them, is durable in the target).
//! 3. The target is compared with the snapshot. A key whose target version is newer than
//!    the snapshot (its LSN past X, or committed after the snapshot, or in the last two
//!    seconds before it: a commit is timestamped before it becomes visible) is set aside:
//!    the source moved on, and the apply log's order checks (duplicates, out-of-order
//!    applies) cover it.
//!    Anything else that differs is an anomaly, as at the end of a run.
//!
//! What it proves: every change committed before X reached the target and nothing older
//! overwrote it, while the load ran. What it cannot: keys changed again after X are checked
//! only by the apply log until a later check (or the final one) compares them.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{AnomalyKind, TargetRecord, VerifyError, VerifyOptions};
use crate::orchestrator::Endpoints;
use crate::run::fence::parse_lsn;
use crate::run::lag::LagMeter;

/// A transaction gets its commit timestamp before it becomes visible (the WAL flush is in
/// between): one committed just before the snapshot may still be outside it. Versions
/// committed this close before the snapshot are set aside, not compared (found in a 10-min
/// soak: 6 rows committed at X, before the snapshot's clock, yet not in it).
const COMMIT_VISIBILITY_MARGIN: chrono::Duration = chrono::Duration::seconds(2);

/// The source snapshot a live check compares against.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotWatermark {
    pub lsn: i64,
    /// A version committed at or after this (source clock) may be outside the snapshot:
    /// the snapshot's time less `COMMIT_VISIBILITY_MARGIN`.
    pub at: DateTime<Utc>,
}

impl SnapshotWatermark {
    /// Whether the target holds a version of the key newer than the snapshot.
    pub fn covers_newer(&self, records: &[TargetRecord]) -> bool {
        records.iter().any(|r| r.lsn.is_some_and(|l| l > self.lsn) || r.source_ts.is_some_and(|t| t >= self.at))
    }
}

/// One live check's result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LiveCheck {
    /// Seconds after the load started (a run) or after the first check (`verify --live`).
    pub at_s: f64,
    /// The watermark X (`pg_lsn` text).
    pub lsn: String,
    /// From the snapshot until the pipeline covered X: the pipeline's lag at that moment.
    pub waited_ms: u64,
    /// The comparison's own duration (the check's cost).
    pub compare_ms: u64,
    pub rows_compared: u64,
    pub converged: bool,
    pub missing: u64,
    pub extra: u64,
    pub mismatched: u64,
    pub anomalies: std::collections::BTreeMap<AnomalyKind, u64>,
    /// Keys set aside: their target version is newer than the snapshot.
    pub newer_than_watermark: u64,
    /// At most three, with their evidence.
    pub examples: Vec<super::Anomaly>,
    /// Why the check has no verdict (the pipeline did not cover X in time, a read failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Takes a snapshot, waits (at most `deadline`) until the pipeline covers it, compares.
pub async fn check(endpoints: &Endpoints, topics: Vec<String>, partitions: u32, deadline: Duration, at_s: f64) -> LiveCheck {
    let mut out = LiveCheck { at_s, ..Default::default() };
    if let Err(e) = run_check(endpoints, topics, partitions, deadline, &mut out).await {
        out.error = Some(e);
        out.converged = false;
    }
    out
}

async fn run_check(endpoints: &Endpoints, topics: Vec<String>, partitions: u32, deadline: Duration, out: &mut LiveCheck) -> Result<(), String> {
    let pg = &endpoints.postgres;
    let text = |e: tokio_postgres::Error| crate::orchestrator::pg_error_text(&e);
    let source = pg.connect_source().await.map_err(|e| format!("source: {e}"))?;
    source.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await.map_err(|e| format!("source: {}", text(e)))?;
    // The first statement takes the snapshot; X is read in it, after the snapshot.
    let row = source.query_one("SELECT pg_current_wal_lsn()::text, clock_timestamp()", &[]).await.map_err(|e| format!("source: {}", text(e)))?;
    let (lsn_text, at): (String, DateTime<Utc>) = (row.get(0), row.get(1));
    let lsn = parse_lsn(&lsn_text).ok_or_else(|| format!("unreadable WAL position {lsn_text}"))?;
    out.lsn = lsn_text;
    let started = Instant::now();
    wait_covered(endpoints, topics, partitions, lsn, deadline).await?;
    out.waited_ms = started.elapsed().as_millis() as u64;

    let compared = Instant::now();
    let target = pg.connect_target().await.map_err(|e| format!("target: {e}"))?;
    let options = VerifyOptions { max_examples: 3, watermark: Some(SnapshotWatermark { lsn, at: at - COMMIT_VISIBILITY_MARGIN }), ..Default::default() };
    let report = super::verify(&source, &super::Target::Postgres(&target), &options, compared).await.map_err(|e: VerifyError| e.to_string())?;
    let _ = source.batch_execute("ROLLBACK").await;
    out.compare_ms = compared.elapsed().as_millis() as u64;
    out.rows_compared = report.rows_compared;
    out.converged = report.converged;
    out.missing = report.entities.iter().map(|e| e.missing_in_target).sum();
    out.extra = report.entities.iter().map(|e| e.extra_in_target).sum();
    out.mismatched = report.entities.iter().map(|e| e.mismatched).sum();
    out.newer_than_watermark = report.entities.iter().map(|e| e.newer_than_watermark).sum();
    out.anomalies = report.anomaly_counts;
    out.examples = report.anomalies;
    Ok(())
}

/// Waits until the slot confirmed `lsn` and then the sink's group committed every partition
/// up to the high watermark of that moment.
async fn wait_covered(endpoints: &Endpoints, topics: Vec<String>, partitions: u32, lsn: i64, deadline: Duration) -> Result<(), String> {
    let until = Instant::now() + deadline;
    let slot = endpoints.slot.clone().ok_or("the stack names no replication slot: its confirmed position cannot be read")?;
    let watcher = endpoints.postgres.connect_source().await.map_err(|e| format!("source: {e}"))?;
    loop {
        let confirmed: Option<String> = watcher
            .query_opt("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
            .await
            .map_err(|e| format!("slot: {}", crate::orchestrator::pg_error_text(&e)))?
            .and_then(|r| r.get(0));
        if confirmed.as_deref().and_then(parse_lsn).is_some_and(|c| c >= lsn) {
            break;
        }
        if Instant::now() >= until {
            return Err(format!("the slot had not confirmed the watermark within {deadline:?} (confirmed {confirmed:?})"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let meter = std::sync::Arc::new(LagMeter::new(endpoints.kafka_config(), &endpoints.consumer_group, topics, partitions).map_err(|e| format!("lag: {e}"))?);
    let m = meter.clone();
    let marks = tokio::task::spawn_blocking(move || m.positions()).await.map_err(|e| e.to_string())?.map_err(|e| format!("broker: {e}"))?;
    loop {
        let m = meter.clone();
        let now = tokio::task::spawn_blocking(move || m.positions()).await.map_err(|e| e.to_string())?.map_err(|e| format!("broker: {e}"))?;
        let behind: Vec<&String> =
            marks.iter().filter(|(tp, (_, high))| now.get(*tp).is_none_or(|(committed, _)| committed < high)).map(|(tp, _)| tp).collect();
        if behind.is_empty() {
            return Ok(());
        }
        if Instant::now() >= until {
            return Err(format!("the sink had not committed up to the watermark within {deadline:?}: {behind:?} behind"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(lsn: i64, committed_ms: i64) -> TargetRecord {
        TargetRecord {
            values: Vec::new(),
            deleted: false,
            source_ts: DateTime::from_timestamp_millis(committed_ms),
            applied_at: None,
            position: None,
            lsn: Some(lsn),
            record: serde_json::Value::Null,
        }
    }

    #[test]
    fn a_version_past_the_watermark_or_committed_after_the_snapshot_is_newer() {
        let w = SnapshotWatermark { lsn: 1_000, at: DateTime::from_timestamp_millis(50_000).unwrap() };
        assert!(!w.covers_newer(&[record(900, 49_999)]), "older on both counts: compared");
        assert!(w.covers_newer(&[record(1_001, 49_000)]), "its LSN is past X");
        // A transaction that wrote before X and committed after the snapshot: its change's
        // LSN is below X, its commit is not.
        assert!(w.covers_newer(&[record(900, 50_001)]));
        assert!(w.covers_newer(&[record(900, 50_000)]), "committed at the watermark's time: perhaps outside the snapshot");
        assert!(!w.covers_newer(&[]), "nothing in the target: missing, not newer");
    }
}
