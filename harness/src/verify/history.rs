//! Evidence from the sink's apply log (audit mode): what the final state cannot show.
//!
//! - *duplicate apply*: one version of a key applied more than once (a broken version
//!   guard lets a replay write again);
//! - *out-of-order apply*: a version applied after a newer one of the same key, reported
//!   even when a later change healed the final state;
//! - and, for every key the state comparison found wrong, which hop it went wrong at: the
//!   newest source change never reached the sink, reached it and was dead-lettered or
//!   skipped as stale, or was applied and then overwritten by an older version.
//!
//! Rows are taken in log order (the id the sink's statements assigned); one key always
//! travels one partition, whose batches the sink writes one after another.

use std::collections::{BTreeMap, HashMap};

use serde_json::json;

use super::report::{Anomaly, AnomalyKind};
use crate::run::apply_log::LogRow;

/// What the history found; merged into a `VerifyReport` by `apply_to`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct HistoryFindings {
    pub counts: BTreeMap<AnomalyKind, u64>,
    pub examples: Vec<Anomaly>,
}

fn entry_json(r: &LogRow) -> serde_json::Value {
    json!({
        "log_id": r.id, "version": r.version, "op": r.op, "outcome": r.outcome,
        "partition": r.partition, "offset": r.offset,
        "source_ts": r.source_ts.map(|t| t.to_rfc3339()), "applied_at": r.applied_at.to_rfc3339(),
    })
}

/// Duplicate and out-of-order applies over the whole log.
pub fn analyze(rows: &[LogRow], max_examples: usize) -> HistoryFindings {
    let mut findings = HistoryFindings::default();
    let mut shown: BTreeMap<AnomalyKind, usize> = BTreeMap::new();
    // (entity, key) -> (version -> first applied row, highest applied row so far)
    type VersionKey = (i32, Option<i64>, i64, bool);
    // Per key: every version applied (with its row), and the last row applied.
    type Applied<'a> = (HashMap<VersionKey, &'a LogRow>, Option<&'a LogRow>);
    let mut state: HashMap<(&str, uuid::Uuid), Applied> = HashMap::new();
    for row in rows.iter().filter(|r| r.outcome == "applied") {
        let (Some(key), Some(identity), Some(version)) = (row.key, row.version_key(), row.version) else { continue };
        let (applied, highest) = state.entry((row.entity.as_str(), key)).or_default();
        let mut found = |kind: AnomalyKind, evidence: String, earlier: &LogRow| {
            *findings.counts.entry(kind).or_default() += 1;
            let n = shown.entry(kind).or_default();
            if *n < max_examples {
                *n += 1;
                findings.examples.push(Anomaly {
                    kind,
                    entity: row.entity.clone(),
                    key: key.to_string(),
                    fields: Vec::new(),
                    source_row: None,
                    target_record: Some(json!({ "apply_log": [entry_json(earlier), entry_json(row)] })),
                    evidence,
                    source_committed_at: None,
                    hop: Some("sink: applied by the sink against its version guard".into()),
                });
            }
        };
        if let Some(first) = applied.get(&identity) {
            found(
                AnomalyKind::DuplicateApply,
                format!("version {version} was applied twice: log rows {} and {} (offsets {} and {})", first.id, row.id, first.offset, row.offset),
                first,
            );
        } else if let Some(newer) = highest.filter(|h| h.is_newer_than(row)) {
            found(
                AnomalyKind::OutOfOrderApply,
                format!(
                    "version {version} (offset {}) was applied after the newer version {} (log row {}, offset {})",
                    row.offset,
                    newer.version.unwrap_or_default(),
                    newer.id,
                    newer.offset
                ),
                newer,
            );
        }
        applied.entry(identity).or_insert(row);
        if highest.is_none_or(|h| row.is_newer_than(h)) {
            *highest = Some(row);
        }
    }
    findings
}

/// The log indexed by key (to judge the keys the state comparison found wrong) and by
/// partition (to tell whether it accounts for every record of a range).
pub struct History {
    rows: Vec<LogRow>,
    by_key: HashMap<(String, uuid::Uuid), Vec<usize>>,
    /// (entity, partition) -> the offsets the log has, sorted.
    offsets: HashMap<(String, i32), Vec<i64>>,
}

impl History {
    pub fn new(rows: Vec<LogRow>) -> Self {
        let mut by_key: HashMap<(String, uuid::Uuid), Vec<usize>> = HashMap::new();
        let mut offsets: HashMap<(String, i32), Vec<i64>> = HashMap::new();
        for (i, r) in rows.iter().enumerate() {
            if let Some(k) = r.key {
                by_key.entry((r.entity.clone(), k)).or_default().push(i);
            }
            offsets.entry((r.entity.clone(), r.partition)).or_default().push(r.offset);
        }
        for list in offsets.values_mut() {
            list.sort_unstable();
            list.dedup();
        }
        Self { rows, by_key, offsets }
    }

    pub fn rows(&self) -> &[LogRow] {
        &self.rows
    }

    /// The rows of one key of `entity`, in log order.
    pub fn rows_of(&self, entity: &str, key: &str) -> Vec<&LogRow> {
        uuid::Uuid::parse_str(key)
            .ok()
            .and_then(|k| self.by_key.get(&(entity.to_string(), k)))
            .map(|idx| idx.iter().map(|i| &self.rows[*i]).collect())
            .unwrap_or_default()
    }

    /// Whether the log has a row for every offset from `from` to `to` (inclusive) of the
    /// entity's partition: the sink logs every record it handles, so a gap is a record it
    /// never accounted for.
    pub fn offsets_complete(&self, entity: &str, partition: i32, from: i64, to: i64) -> bool {
        let Some(list) = self.offsets.get(&(entity.to_string(), partition)) else { return false };
        let (lo, hi) = (from.min(to), from.max(to));
        let start = list.partition_point(|o| *o < lo);
        let end = list.partition_point(|o| *o <= hi);
        (end - start) as i64 == hi - lo + 1
    }
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;

    use super::*;

    fn row(id: i64, version: i64, outcome: &str) -> LogRow {
        LogRow {
            version: Some(version),
            op: Some("u".into()),
            offset: id * 10,
            source_ts: DateTime::from_timestamp_millis(version * 1000),
            applied_at: DateTime::from_timestamp_millis(id * 1000).unwrap(),
            ..LogRow::sample(id, outcome)
        }
    }

    #[test]
    fn a_clean_history_has_no_findings() {
        let rows = [row(1, 10, "applied"), row(2, 11, "superseded"), row(3, 12, "applied"), row(4, 10, "stale"), row(5, 12, "stale")];
        assert_eq!(analyze(&rows, 5), HistoryFindings::default());
    }

    #[test]
    fn one_version_applied_twice_is_a_duplicate_apply() {
        let rows = [row(1, 10, "applied"), row(2, 10, "applied")];
        let f = analyze(&rows, 5);
        assert_eq!(f.counts, BTreeMap::from([(AnomalyKind::DuplicateApply, 1)]));
        assert!(f.examples[0].evidence.contains("version 10 was applied twice: log rows 1 and 2"), "{}", f.examples[0].evidence);
    }

    #[test]
    fn an_older_version_applied_after_a_newer_one_is_out_of_order_even_when_healed() {
        // 12, then the older 11, then 13: the final state (13) is right, the history is not.
        let rows = [row(1, 12, "applied"), row(2, 11, "applied"), row(3, 13, "applied")];
        let f = analyze(&rows, 5);
        assert_eq!(f.counts, BTreeMap::from([(AnomalyKind::OutOfOrderApply, 1)]));
        assert!(f.examples[0].evidence.contains("version 11 (offset 20) was applied after the newer version 12"), "{}", f.examples[0].evidence);
    }

    /// Versions as the sink orders them: a transaction that committed after the snapshot
    /// but wrote below its LSN (commit unknown: the session's first) is newer than the
    /// snapshot row; the snapshot row applied after it would be out of order.
    #[test]
    fn versions_follow_the_sinks_commit_order() {
        let snapshot = |id| LogRow { snapshot: true, commit: Some(5000), op: Some("r".into()), ..row(id, 5000, "applied") };
        let straddling = |id| row(id, 4900, "applied");
        let next = |id| LogRow { commit: Some(5100), ..row(id, 4950, "applied") };
        assert_eq!(analyze(&[snapshot(1), straddling(2), next(3)], 5), HistoryFindings::default());
        let f = analyze(&[straddling(1), snapshot(2)], 5);
        assert_eq!(f.counts, BTreeMap::from([(AnomalyKind::OutOfOrderApply, 1)]));
        let f = analyze(&[next(1), straddling(2)], 5);
        assert_eq!(f.counts, BTreeMap::from([(AnomalyKind::OutOfOrderApply, 1)]), "commit order, not LSN order");
    }

    #[test]
    fn a_gap_in_a_partitions_offsets_is_found() {
        let history = History::new(vec![row(1, 10, "applied"), row(2, 11, "stale"), row(4, 12, "applied")]);
        // Offsets are id * 10: 10, 20, 40.
        assert!(history.offsets_complete("customer", 0, 10, 10));
        assert!(!history.offsets_complete("customer", 0, 10, 20), "offsets 11..19 are not in the log");
        assert!(!history.offsets_complete("customer", 1, 0, 0), "a partition the log never saw");
        let contiguous = History::new((0..5).map(|i| LogRow { offset: i, ..row(i, 10 + i, "applied") }).collect());
        assert!(contiguous.offsets_complete("customer", 0, 1, 4));
        assert_eq!(contiguous.rows_of("customer", &uuid::Uuid::from_u128(1).to_string()).len(), 5);
    }
}
