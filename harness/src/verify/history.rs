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
    let mut state: HashMap<(&str, uuid::Uuid), (HashMap<VersionKey, &LogRow>, Option<&LogRow>)> = HashMap::new();
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

/// The hop at which a wrongly materialized key went wrong, from its log rows and the
/// source's newest commit time for it (None: the source no longer holds the key).
pub fn hop_of(rows: &[&LogRow], source_committed_ms: Option<i64>) -> String {
    let newest_applied = rows.iter().filter(|r| r.outcome == "applied").max_by_key(|r| r.id);
    let Some(committed) = source_committed_ms else {
        return match newest_applied {
            Some(r) => format!("the delete never reached the sink as applied; the last applied change is version {:?} (log row {})", r.version, r.id),
            None => "no change of this key is in the apply log".into(),
        };
    };
    let of_newest: Vec<&&LogRow> = rows.iter().filter(|r| r.source_ts.is_some_and(|t| t.timestamp_millis() >= committed)).collect();
    if of_newest.is_empty() {
        return "never reached the sink: the newest source change is not in the apply log (not produced, or not consumed)".into();
    }
    if of_newest.iter().any(|r| r.outcome == "applied" || r.outcome == "superseded") {
        return match newest_applied {
            Some(r) if r.source_ts.is_some_and(|t| t.timestamp_millis() < committed) => {
                format!("applied, then overwritten by an older version (log row {}, version {:?})", r.id, r.version)
            }
            _ => "applied (the apply log has it); the target lost it afterwards".into(),
        };
    }
    let outcomes: Vec<&str> = of_newest.iter().map(|r| r.outcome.as_str()).collect();
    format!("reached the sink but was not applied (outcome {})", outcomes.join(", "))
}

/// The log indexed by key, to judge the keys the state comparison found wrong.
pub struct History {
    rows: Vec<LogRow>,
    by_key: HashMap<(String, uuid::Uuid), Vec<usize>>,
}

/// What the log says of one wrongly materialized key.
#[derive(Debug, Clone, PartialEq)]
pub enum Judgement {
    /// The newest change was dead-lettered on purpose (the rule named): not lost.
    Rejected { rule: String },
    /// An anomaly; the hop where it went wrong.
    Anomaly { hop: String },
}

impl History {
    pub fn new(rows: Vec<LogRow>) -> Self {
        let mut by_key: HashMap<(String, uuid::Uuid), Vec<usize>> = HashMap::new();
        for (i, r) in rows.iter().enumerate() {
            if let Some(k) = r.key {
                by_key.entry((r.entity.clone(), k)).or_default().push(i);
            }
        }
        Self { rows, by_key }
    }

    pub fn rows(&self) -> &[LogRow] {
        &self.rows
    }

    /// Judges a key of `entity` whose target state differs from the source, given when the
    /// source committed the row it holds (None: the source holds none).
    pub fn judge(&self, entity: &str, key: &str, source_committed: Option<chrono::DateTime<chrono::Utc>>, source_holds_row: bool) -> Judgement {
        let rows: Vec<&LogRow> = uuid::Uuid::parse_str(key)
            .ok()
            .and_then(|k| self.by_key.get(&(entity.to_string(), k)))
            .map(|idx| idx.iter().map(|i| &self.rows[*i]).collect())
            .unwrap_or_default();
        if rows.is_empty() {
            return Judgement::Anomaly { hop: "no change of this key is in the apply log (never produced, or not consumed)".into() };
        }
        let committed = source_committed.map(|t| t.timestamp_millis());
        // The newest change the sink saw: for a live source row the one at its commit time,
        // for a deleted one the last in the log.
        let newest: Vec<&&LogRow> = match committed {
            Some(c) => rows.iter().filter(|r| r.source_ts.is_some_and(|t| t.timestamp_millis() >= c)).collect(),
            None => rows.last().into_iter().collect(),
        };
        if !newest.is_empty() && newest.iter().all(|r| r.outcome == "dlq") {
            let rule = newest.iter().find_map(|r| r.rule.clone()).unwrap_or_else(|| "unknown".into());
            return Judgement::Rejected { rule };
        }
        if source_holds_row && committed.is_none() {
            let seen: Vec<String> = rows.iter().map(|r| format!("v{} {}", r.version.map(|v| v.to_string()).unwrap_or_default(), r.outcome)).collect();
            return Judgement::Anomaly { hop: format!("source commit time unknown; apply log: {}", seen.join(", ")) };
        }
        Judgement::Anomaly { hop: hop_of(&rows, committed) }
    }
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;

    use super::*;

    fn row(id: i64, version: i64, outcome: &str) -> LogRow {
        LogRow {
            id,
            entity: "customer".into(),
            key: Some(uuid::Uuid::from_u128(1)),
            version: Some(version),
            commit: None,
            epoch: 0,
            snapshot: false,
            op: Some("u".into()),
            outcome: outcome.into(),
            partition: 0,
            offset: id * 10,
            kafka_ts: None,
            source_ts: DateTime::from_timestamp_millis(version * 1000),
            applied_at: DateTime::from_timestamp_millis(id * 1000).unwrap(),
            rule: None,
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
    fn a_key_whose_newest_change_was_dead_lettered_is_rejected_not_lost() {
        let mut dlq = row(2, 11, "dlq");
        dlq.rule = Some("email_format".into());
        let history = History::new(vec![row(1, 10, "applied"), dlq]);
        let key = uuid::Uuid::from_u128(1).to_string();
        let committed = DateTime::from_timestamp_millis(11_000);
        assert_eq!(history.judge("customer", &key, committed, true), Judgement::Rejected { rule: "email_format".into() });
        // A newer change that never reached the sink is an anomaly with its hop.
        let later = DateTime::from_timestamp_millis(12_000);
        assert!(matches!(history.judge("customer", &key, later, true), Judgement::Anomaly { hop } if hop.starts_with("never reached the sink")));
        let other = uuid::Uuid::from_u128(2).to_string();
        assert!(matches!(history.judge("customer", &other, committed, true), Judgement::Anomaly { hop } if hop.starts_with("no change of this key")));
    }

    #[test]
    fn the_hop_is_named_from_the_log() {
        let applied = row(1, 10, "applied");
        let dlq = row(2, 11, "dlq");
        assert!(hop_of(&[&applied], Some(11_000)).starts_with("never reached the sink"));
        assert!(hop_of(&[&applied, &dlq], Some(11_000)).contains("not applied (outcome dlq)"));
        let newer = row(2, 11, "applied");
        let older_again = row(3, 10, "applied");
        assert!(hop_of(&[&applied, &newer, &older_again], Some(11_000)).starts_with("applied, then overwritten by an older version (log row 3"));
    }
}
