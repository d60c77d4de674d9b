//! Live verification: a verdict while the load keeps running, fenced by a WAL watermark.
//!
//! 1. The source is read in one REPEATABLE READ transaction whose first statement takes
//!    the snapshot (`pg_current_snapshot()`) and the WAL position X: every transaction the
//!    snapshot shows committed before X.
//! 2. The check waits until the pipeline covers X: the replication slot confirmed X (the
//!    connector has every change up to it acknowledged by the broker), then the sink's group
//!    committed every partition up to the high watermark read at that moment (every record
//!    produced so far, those up to X among them, is durable in the target).
//! 3. The target is compared with the snapshot. For a key that differs, the source
//!    transaction of each version the target holds (`source.txId`, kept in the sink's apply
//!    log) decides: one the snapshot does not show (`pg_visible_in_snapshot`) is newer than
//!    the snapshot and the key is set aside (the source moved on; the apply log's order
//!    checks cover it); when the snapshot shows them all, the snapshot holds that version
//!    or a later one committed before X, so a difference is an anomaly, as at the end of a
//!    run. A version whose transaction is unknown (an event without `txId`, a sink without
//!    the column) falls back to the clock (`SnapshotWatermark::clock_says_newer`), counted
//!    apart.
//!
//! What it proves: every change committed before X reached the target and nothing older
//! overwrote it, while the load ran. What it cannot: keys changed again after X are checked
//! only by the apply log until a later check (or the final one) compares them.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::history::History;
use super::{AnomalyKind, Target, TargetRecord, VerifyError, VerifyOptions};
use crate::orchestrator::Endpoints;
use crate::run::fence::parse_lsn;
use crate::run::lag::LagMeter;

/// The clock rule's margin, for versions whose transaction is unknown: a transaction gets
/// its commit timestamp before it becomes visible (the WAL flush is in between), so one
/// committed just before the snapshot may still be outside it (a 10-min soak found 6 rows
/// committed at X, before the snapshot's clock, yet not in it). Such versions are set aside.
const COMMIT_VISIBILITY_MARGIN: chrono::Duration = chrono::Duration::seconds(2);

/// The source snapshot a live check compares against.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotWatermark {
    pub lsn: i64,
    /// `pg_current_snapshot()` of the check's transaction, as text (`xmin:xmax:xip,...`).
    pub snapshot: String,
    /// The snapshot's xmax (the first transaction id it does not show): the full id the
    /// 32-bit ids of the changes are widened against (`full_xid`).
    pub xmax: u64,
    /// Clock rule: a version committed at or after this (source clock) may be outside the
    /// snapshot: the snapshot's time less `COMMIT_VISIBILITY_MARGIN`.
    pub at: DateTime<Utc>,
}

/// How a differing key was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// The snapshot shows the transaction of every version the target holds: compared.
    Compare,
    /// The snapshot does not show the transaction of a version the target holds.
    Newer,
    /// A version's transaction is unknown: the clock rule decided.
    ByClock { newer: bool },
}

impl SnapshotWatermark {
    /// The clock rule: the target holds a version past X or committed at or after `at`.
    pub(crate) fn clock_says_newer<'a>(&self, records: impl IntoIterator<Item = &'a TargetRecord>) -> bool {
        records.into_iter().any(|r| r.lsn.is_some_and(|l| l > self.lsn) || r.source_ts.is_some_and(|t| t >= self.at))
    }

    /// Decides a differing key from whether the snapshot shows the transaction of each
    /// version the target holds (`visible[i]` for `records[i]`; None: unknown).
    pub(crate) fn decide(&self, records: &[TargetRecord], visible: &[Option<bool>]) -> Decision {
        if visible.contains(&Some(false)) {
            return Decision::Newer;
        }
        let unknown: Vec<&TargetRecord> = records.iter().zip(visible).filter(|(_, v)| v.is_none()).map(|(r, _)| r).collect();
        if unknown.is_empty() { Decision::Compare } else { Decision::ByClock { newer: self.clock_says_newer(unknown) } }
    }
}

/// The xmax of a `pg_snapshot` in text form (`xmin:xmax:xip,...`).
pub(crate) fn snapshot_xmax(snapshot: &str) -> Option<u64> {
    snapshot.split(':').nth(1)?.parse().ok()
}

/// Debezium's `source.txId` as a full (epoch-qualified, `xid8`) transaction id. Streamed
/// changes carry the 32-bit xid; PostgreSQL keeps every xid in use within 2^31 of the next
/// one to be assigned, so the full id is the one nearest `reference` (the snapshot's xmax,
/// a full id) with those low 32 bits: above the reference's low bits by less than 2^31 it
/// is later in the same epoch (a transaction begun after the snapshot), by more it belongs
/// to the previous epoch (an xid above the low bits of the next one wrapped before it), and
/// symmetrically below, in the next epoch. A reference taken once, at the snapshot, thus
/// places transactions begun after it too (the previous-epoch rule alone against the
/// current xid would put them in the past). A value past 32 bits is already full
/// (`txid_current()`, which Debezium's snapshot reads carry); 0-2 are no transaction.
pub(crate) fn full_xid(tx_id: i64, reference: u64) -> Option<u64> {
    if tx_id > i64::from(u32::MAX) {
        return Some(tx_id as u64);
    }
    // A negative value is the xid read as a signed 32-bit integer.
    let low = u32::try_from(tx_id).ok().or_else(|| i32::try_from(tx_id).ok().map(|x| x as u32))?;
    if low < 3 {
        return None;
    }
    let distance = low.wrapping_sub(reference as u32) as i32;
    reference.checked_add_signed(i64::from(distance))
}

/// The source transaction of each apply log row with one, by (entity, partition, offset):
/// a target record's position names the row of the version it holds.
pub(crate) struct TxIndex<'a> {
    known: HashMap<(&'a str, i32, i64), i64>,
    /// The highest log id read (PostgreSQL): rows logged since are looked up in the target.
    last_id: i64,
}

impl<'a> TxIndex<'a> {
    pub(crate) fn new(history: Option<&'a History>) -> Self {
        let rows = history.map(History::rows).unwrap_or_default();
        let known = rows.iter().filter_map(|r| Some(((r.entity.as_str(), r.partition, r.offset), r.tx_id?))).collect();
        Self { known, last_id: rows.iter().map(|r| r.id).max().unwrap_or(0) }
    }
}

/// Decides every differing key of `records` (one chunk of `entity`): the transactions of
/// the versions the target holds, from the apply log (the history read, then the target
/// for rows logged since), widened to full ids and asked of the snapshot in one query.
pub(super) async fn decide(
    source: &tokio_postgres::Client,
    target: &Target<'_>,
    watermark: &SnapshotWatermark,
    index: &TxIndex<'_>,
    entity: &str,
    records: &HashMap<String, Vec<TargetRecord>>,
) -> Result<HashMap<String, Decision>, VerifyError> {
    let positions: HashSet<(i32, i64)> = records.values().flatten().filter_map(|r| r.position).collect();
    let mut tx: HashMap<(i32, i64), i64> = HashMap::new();
    let mut unseen = Vec::new();
    for p in positions {
        match index.known.get(&(entity, p.0, p.1)) {
            Some(t) => {
                tx.insert(p, *t);
            }
            None => unseen.push(p),
        }
    }
    if !unseen.is_empty() {
        tx.extend(target.logged_tx_ids(entity, index.last_id, &unseen).await?);
    }
    let full: HashMap<(i32, i64), u64> = tx.iter().filter_map(|(p, t)| Some((*p, full_xid(*t, watermark.xmax)?))).collect();
    let ids: Vec<i64> = full.values().copied().collect::<HashSet<u64>>().into_iter().filter_map(|x| i64::try_from(x).ok()).collect();
    let visible: HashMap<i64, bool> = if ids.is_empty() {
        HashMap::new()
    } else {
        let sql = "SELECT x, pg_visible_in_snapshot(x::text::xid8, $1::text::pg_snapshot) FROM unnest($2::int8[]) AS x";
        source.query(sql, &[&watermark.snapshot, &ids]).await.map_err(VerifyError::source_pg)?.iter().map(|r| (r.get(0), r.get(1))).collect()
    };
    let seen = |r: &TargetRecord| r.position.and_then(|p| full.get(&p)).and_then(|x| visible.get(&i64::try_from(*x).ok()?)).copied();
    Ok(records.iter().map(|(key, list)| (key.clone(), watermark.decide(list, &list.iter().map(seen).collect::<Vec<_>>()))).collect())
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
    /// Of those, the keys set aside by the clock rule (a version's transaction unknown);
    /// the rest were decided exactly, by the snapshot.
    #[serde(default)]
    pub set_aside_by_clock: u64,
    /// Differing keys compared because the clock rule called them older (a version's
    /// transaction unknown): their anomalies rest on the clock, not on the snapshot.
    #[serde(default)]
    pub compared_by_clock: u64,
    /// At most three, with their evidence.
    pub examples: Vec<super::Anomaly>,
    /// Why the check has no verdict (the pipeline did not cover X in time, a read failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Takes a snapshot, waits (at most `deadline`) until the pipeline covers it, compares.
pub async fn check(endpoints: &Endpoints, topics: Vec<String>, partitions: u32, deadline: Duration, at_s: f64) -> LiveCheck {
    match Snapshot::take(endpoints).await {
        Ok(snapshot) => snapshot.check(endpoints, topics, partitions, deadline, at_s).await,
        Err(e) => LiveCheck { at_s, error: Some(e), ..Default::default() },
    }
}

/// A live check's source snapshot: its open REPEATABLE READ transaction and watermark.
pub struct Snapshot {
    source: tokio_postgres::Client,
    lsn_text: String,
    watermark: SnapshotWatermark,
}

impl Snapshot {
    /// Opens the transaction; its first statement takes the snapshot, then X in it.
    pub async fn take(endpoints: &Endpoints) -> Result<Self, String> {
        let text = |e: tokio_postgres::Error| format!("source: {}", crate::orchestrator::pg_error_text(&e));
        let source = endpoints.postgres.connect_source().await.map_err(|e| format!("source: {e}"))?;
        source.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await.map_err(text)?;
        let row = source.query_one("SELECT pg_current_wal_lsn()::text, clock_timestamp(), pg_current_snapshot()::text", &[]).await.map_err(text)?;
        let (lsn_text, at, snapshot): (String, DateTime<Utc>, String) = (row.get(0), row.get(1), row.get(2));
        let lsn = parse_lsn(&lsn_text).ok_or_else(|| format!("unreadable WAL position {lsn_text}"))?;
        let xmax = snapshot_xmax(&snapshot).ok_or_else(|| format!("unreadable snapshot {snapshot}"))?;
        Ok(Self { source, lsn_text, watermark: SnapshotWatermark { lsn, snapshot, xmax, at: at - COMMIT_VISIBILITY_MARGIN } })
    }

    /// The watermark X (`pg_lsn` text).
    pub fn lsn(&self) -> &str {
        &self.lsn_text
    }

    /// Waits (at most `deadline`) until the pipeline covers the snapshot, then compares.
    pub async fn check(self, endpoints: &Endpoints, topics: Vec<String>, partitions: u32, deadline: Duration, at_s: f64) -> LiveCheck {
        let mut out = LiveCheck { at_s, lsn: self.lsn_text.clone(), ..Default::default() };
        if let Err(e) = self.cover_and_compare(endpoints, topics, partitions, deadline, &mut out).await {
            out.error = Some(e);
            out.converged = false;
        }
        out
    }

    async fn cover_and_compare(
        self,
        endpoints: &Endpoints,
        topics: Vec<String>,
        partitions: u32,
        deadline: Duration,
        out: &mut LiveCheck,
    ) -> Result<(), String> {
        let started = Instant::now();
        wait_covered(endpoints, topics, partitions, self.watermark.lsn, deadline).await?;
        out.waited_ms = started.elapsed().as_millis() as u64;

        let compared = Instant::now();
        let target = endpoints.postgres.connect_target().await.map_err(|e| format!("target: {e}"))?;
        let options = VerifyOptions { max_examples: 3, watermark: Some(self.watermark), ..Default::default() };
        let report = super::verify(&self.source, &super::Target::Postgres(&target), &options, compared).await.map_err(|e: VerifyError| e.to_string())?;
        let _ = self.source.batch_execute("ROLLBACK").await;
        out.compare_ms = compared.elapsed().as_millis() as u64;
        out.rows_compared = report.rows_compared;
        out.converged = report.converged;
        out.missing = report.total(|e| e.missing_in_target);
        out.extra = report.total(|e| e.extra_in_target);
        out.mismatched = report.total(|e| e.mismatched);
        out.newer_than_watermark = report.total(|e| e.newer_than_watermark);
        out.set_aside_by_clock = report.total(|e| e.newer_by_clock);
        out.compared_by_clock = report.total(|e| e.compared_by_clock);
        out.anomalies = report.anomaly_counts;
        out.examples = report.anomalies;
        Ok(())
    }
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

    fn watermark() -> SnapshotWatermark {
        SnapshotWatermark { lsn: 1_000, snapshot: "90:100:95".into(), xmax: 100, at: DateTime::from_timestamp_millis(50_000).unwrap() }
    }

    #[test]
    fn the_clock_rule_calls_newer_a_version_past_the_watermark_or_committed_after_its_time() {
        let w = watermark();
        assert!(!w.clock_says_newer(&[record(900, 49_999)]), "older on both counts: compared");
        assert!(w.clock_says_newer(&[record(1_001, 49_000)]), "its LSN is past X");
        // A transaction that wrote before X and committed after the snapshot: its change's
        // LSN is below X, its commit is not.
        assert!(w.clock_says_newer(&[record(900, 50_001)]));
        assert!(w.clock_says_newer(&[record(900, 50_000)]), "committed at the watermark's time: perhaps outside the snapshot");
        assert!(!w.clock_says_newer(&[]), "nothing in the target: missing, not newer");
    }

    /// The snapshot decides where it knows the transaction, whatever the clock says; the
    /// clock only where a version's transaction is unknown.
    #[test]
    fn the_snapshot_decides_and_the_clock_only_without_a_transaction() {
        let w = watermark();
        let recent = record(900, 50_001);
        let old = record(900, 1_000);
        assert_eq!(w.decide(std::slice::from_ref(&recent), &[Some(true)]), Decision::Compare, "shown by the snapshot: compared, however recent its clock");
        assert_eq!(w.decide(std::slice::from_ref(&old), &[Some(false)]), Decision::Newer, "not shown: newer, however old its clock");
        assert_eq!(w.decide(std::slice::from_ref(&recent), &[None]), Decision::ByClock { newer: true });
        assert_eq!(w.decide(std::slice::from_ref(&old), &[None]), Decision::ByClock { newer: false });
        let both = [record(900, 1_000), record(900, 50_001)];
        assert_eq!(w.decide(&both, &[Some(true), Some(false)]), Decision::Newer, "one version outside the snapshot is enough");
        assert_eq!(w.decide(&both, &[None, Some(true)]), Decision::ByClock { newer: false }, "only the unknown one's clock counts");
        assert_eq!(w.decide(&[], &[]), Decision::Compare, "nothing in the target: missing, decided by the snapshot");
    }

    #[test]
    fn a_snapshots_xmax_is_read_from_its_text() {
        assert_eq!(snapshot_xmax("748:752:748,750"), Some(752));
        assert_eq!(snapshot_xmax("752:752:"), Some(752));
        assert_eq!(snapshot_xmax("garbage"), None);
    }

    const EPOCH: u64 = 1 << 32;

    #[test]
    fn a_32_bit_xid_takes_the_epoch_of_the_reference() {
        let reference = 5 * EPOCH + 1_000;
        assert_eq!(full_xid(900, reference), Some(5 * EPOCH + 900), "before the snapshot");
        assert_eq!(full_xid(1_000, reference), Some(5 * EPOCH + 1_000), "the snapshot's xmax itself");
        assert_eq!(full_xid(1_500, reference), Some(5 * EPOCH + 1_500), "begun after the snapshot: later, same epoch");
        assert_eq!(full_xid(900, 1_000), Some(900), "epoch 0");
        assert_eq!(full_xid(7 * EPOCH as i64 + 12, reference), Some(7 * EPOCH + 12), "already full (txid_current)");
        for special in [0, 1, 2] {
            assert_eq!(full_xid(special, reference), None, "{special} is no transaction");
        }
    }

    #[test]
    fn a_32_bit_xid_across_wraparound_belongs_to_the_neighbouring_epoch() {
        // The reference just past a wraparound: low bits 10 in epoch 5. An xid near the top
        // of the 32-bit range is above the low bits: the previous epoch's.
        let reference = 5 * EPOCH + 10;
        assert_eq!(full_xid(i64::from(u32::MAX), reference), Some(5 * EPOCH - 1));
        assert_eq!(full_xid(4_000_000_000, reference), Some(4 * EPOCH + 4_000_000_000));
        assert_eq!(full_xid(3, reference), Some(5 * EPOCH + 3), "below the low bits: the same epoch");
        // The reference just before a wraparound: an xid begun after the snapshot wrapped
        // into the next epoch.
        let reference = 5 * EPOCH + u64::from(u32::MAX) - 5;
        assert_eq!(full_xid(20, reference), Some(6 * EPOCH + 20));
        assert_eq!(full_xid(i64::from(u32::MAX) - 10, reference), Some(5 * EPOCH + u64::from(u32::MAX) - 10));
        // Epoch 0 has no previous epoch.
        assert_eq!(full_xid(4_000_000_000, 10), None);
        // The xid read as a signed 32-bit integer.
        assert_eq!(full_xid(-1, reference), Some(5 * EPOCH + u64::from(u32::MAX)));
    }
}
