//! What went wrong with a key whose target state differs from the source, decided from the
//! order of versions (the commit position and LSN the apply log and the target both
//! carry), never by comparing one machine's clock with another's:
//!
//! - *lost change*: a change of the key that the target should show was never applied, and
//!   the anomaly names it (its version, partition and offset from the apply log, or the
//!   source row's commit when no change of it reached the sink at all);
//! - *stale overwrite*: the target holds a version older than one that was applied;
//! - *resurrected delete*: the target holds a live row although its delete was applied;
//! - *differs*: values differ and no change newer than what the target holds is known
//!   (a value the sink mis-wrote, or a source row changed without a change event: a table
//!   rewrite, a column DEFAULT). Never called lost.
//!
//! A key is *excused* only when every change the target does not show was dead-lettered
//! under a business rule the scenario expects (its letter read back from the topic when it
//! was read), and the apply log accounts for every record between the version the target
//! holds and the rejected one: "v2 lost, v3 dead-lettered" is a lost change.

use chrono::{DateTime, Utc};

use super::canonical::TimestampPrecision;
use super::dlq::LetterIndex;
use super::history::History;
use super::mapping::Entity;
use super::report::{Anomaly, AnomalyKind};
use super::{SourceRecord, TargetRecord, field_diffs, fmt_ts};
use crate::run::apply_log::LogRow;

/// Everything known about one differing key.
pub(crate) struct KeyCase<'a> {
    pub entity: &'a Entity,
    pub key: &'a str,
    pub source: Option<&'a SourceRecord>,
    /// Every record the target holds for the key (tombstones included).
    pub records: &'a [TargetRecord],
    /// When the source deleted the key (the harness's delete ledger), if it did.
    pub deleted_at: Option<DateTime<Utc>>,
    pub precision: TimestampPrecision,
}

/// Which dead letters excuse a key.
pub(crate) struct Rejections<'a> {
    pub expected_rules: &'a [String],
    /// Letters read back from the topic; `None` when it was not read (the apply log's rule
    /// is then all there is).
    pub letters: Option<&'a LetterIndex>,
}

impl Rejections<'_> {
    /// The expected rule that dead-lettered `row`, if one did.
    fn excusing_rule(&self, row: &LogRow) -> Option<String> {
        if row.outcome != "dlq" {
            return None;
        }
        let rule = match self.letters {
            Some(letters) => letters.get(&(row.entity.clone(), row.partition, row.offset))?.rule.clone(),
            None => row.rule.clone()?,
        };
        self.expected_rules.contains(&rule).then_some(rule)
    }
}

#[derive(Debug)]
pub(crate) enum Judged {
    Agrees,
    Excused { rule: String },
    Anomaly(Box<Anomaly>),
}

/// A log row in words: its version and where it was read.
fn describe(r: &LogRow) -> String {
    let version = r.version.map_or_else(|| "?".into(), |v| v.to_string());
    let commit = r.commit.map(|c| format!(" commit {c}")).unwrap_or_default();
    let op = r.op.as_deref().unwrap_or("?");
    format!("version {version}{commit} (op {op}, partition {} offset {}, apply log row {})", r.partition, r.offset, r.id)
}

/// The apply-log row of the change `record` holds: the one read at its position, else the
/// applied one of its LSN.
fn held_row<'a>(rows: &[&'a LogRow], record: &TargetRecord) -> Option<&'a LogRow> {
    let applied = |r: &&&LogRow| r.outcome == "applied";
    rows.iter().rev().filter(applied).find(|r| Some((r.partition, r.offset)) == record.position).copied().or_else(|| {
        let lsn = record.lsn?;
        rows.iter().rev().filter(applied).find(|r| r.version == Some(lsn)).copied()
    })
}

pub(crate) fn classify(case: &KeyCase<'_>, history: Option<&History>, rejections: &Rejections<'_>) -> Judged {
    let live: Vec<&TargetRecord> = case.records.iter().filter(|r| !r.deleted).collect();
    // The record the target holds for the key: live, else its tombstone.
    let shown = live.first().copied().or(case.records.first());
    let anomaly = |kind, evidence: String, fields, hop: Option<String>| {
        Judged::Anomaly(Box::new(Anomaly {
            kind,
            entity: case.entity.name.clone(),
            key: case.key.to_string(),
            fields,
            source_row: case.source.map(|s| s.row.clone()),
            target_record: shown.map(|t| t.record.clone()),
            evidence,
            source_committed_at: case.source.and_then(|s| s.committed_at),
            hop,
        }))
    };
    if live.len() > 1 {
        return anomaly(AnomalyKind::DuplicateApply, format!("the target holds {} live records for this key", live.len()), vec![], None);
    }
    let t = live.first().copied();
    let fields = field_diffs(case.entity, case.source.map(|s| s.values.as_slice()), t.map(|t| t.values.as_slice()), case.precision);
    match (case.source, t) {
        (None, None) => return Judged::Agrees,
        (Some(_), Some(_)) if fields.is_empty() => return Judged::Agrees,
        _ => {}
    }
    let target_has = match (t, case.records.is_empty()) {
        (Some(_), _) => "a live record",
        (None, true) => "no record",
        (None, false) => "only a tombstone",
    };
    let source_commit = fmt_ts(case.source.and_then(|s| s.committed_at));

    let Some(history) = history else {
        // Without the apply log there is no order of versions: say what is known.
        return match (case.source, t) {
            (Some(_), None) => {
                anomaly(AnomalyKind::LostChange, format!("the source holds the row (committed at {source_commit}), the target {target_has}"), fields, None)
            }
            (None, Some(t)) => match case.deleted_at {
                Some(d) => anomaly(
                    AnomalyKind::LostChange,
                    format!(
                        "the source deleted the key at {d}; the target holds the live version applied at {} (no apply log to order the two)",
                        fmt_ts(t.applied_at)
                    ),
                    fields,
                    None,
                ),
                None => anomaly(AnomalyKind::ExtraRow, "the source never deleted this key and does not hold it".into(), fields, None),
            },
            (Some(s), Some(t)) => lost_or_differs(s, t, "no apply log row".into(), fields, anomaly),
            (None, None) => Judged::Agrees,
        };
    };

    let rows = history.rows_of(&case.entity.name, case.key);
    let held = shown.and_then(|r| held_row(&rows, r));
    let newer_than_target = |r: &&LogRow| match (held, shown.and_then(|s| s.lsn)) {
        (Some(h), _) => r.is_newer_than(h),
        (None, Some(lsn)) => r.version.is_some_and(|v| v > lsn),
        (None, None) => true,
    };
    let newer: Vec<&LogRow> = rows.iter().copied().filter(newer_than_target).collect();
    let holds = held.map_or_else(|| format!("{target_has} (no apply log row of it)"), |h| format!("{target_has}: {}", describe(h)));

    // The source no longer holds the key, the target does.
    if case.source.is_none() {
        let deletes: Vec<&LogRow> = rows.iter().copied().filter(|r| r.op.as_deref() == Some("d")).collect();
        if let Some(d) = deletes.iter().rev().find(|r| r.outcome == "applied") {
            let after = held.filter(|h| h.id > d.id).map(|h| format!(", and the live {} was applied after it", describe(h))).unwrap_or_default();
            return anomaly(
                AnomalyKind::ResurrectedDelete,
                format!("the delete {} was applied; the target holds {holds}{after}", describe(d)),
                fields,
                Some("sink: a live version outlived an applied delete".into()),
            );
        }
        if let Some(d) = deletes.last() {
            if let Some(rule) = excused(&newer, held, history, rejections) {
                return Judged::Excused { rule };
            }
            return anomaly(
                AnomalyKind::LostChange,
                format!("the delete {} reached the sink and was not applied (outcome {}); the target holds {holds}", describe(d), d.outcome),
                fields,
                Some(format!("sink: {}", d.outcome)),
            );
        }
        return match case.deleted_at {
            Some(at) => anomaly(
                AnomalyKind::LostChange,
                format!("the source deleted the key (committed at {at}); no delete of it is in the apply log; the target holds {holds}"),
                fields,
                Some("capture or transport: never reached the sink".into()),
            ),
            None => anomaly(AnomalyKind::ExtraRow, "the source never deleted this key and does not hold it".into(), fields, None),
        };
    }

    // The source holds the row; the target holds another version of it, or none.
    if let Some(a) = newer.iter().rev().find(|r| r.outcome == "applied") {
        return match t {
            Some(_) => {
                let when = if held.is_some_and(|h| h.id > a.id) { "; the older version was applied after it" } else { "" };
                anomaly(
                    AnomalyKind::StaleOverwrite,
                    format!("the target holds {holds}, older than {}, which was applied{when}", describe(a)),
                    fields,
                    Some("target: a newer applied version was overwritten".into()),
                )
            }
            None => anomaly(
                AnomalyKind::LostChange,
                format!("{} was applied, yet the target holds {holds}", describe(a)),
                fields,
                Some("target: lost after it was applied".into()),
            ),
        };
    }
    if !newer.is_empty() {
        if let Some(rule) = excused(&newer, held, history, rejections) {
            return Judged::Excused { rule };
        }
        let first = newer.iter().find(|r| rejections.excusing_rule(r).is_none()).or(newer.first()).copied().expect("not empty");
        let outcomes: Vec<String> = newer.iter().map(|r| format!("{} {}", r.version.unwrap_or_default(), r.outcome)).collect();
        return anomaly(
            AnomalyKind::LostChange,
            format!(
                "{} reached the sink and was not applied (outcome {}{}); the target holds {holds}; newer changes: {}",
                describe(first),
                first.outcome,
                first.rule.as_deref().map(|r| format!(", rule {r}")).unwrap_or_default(),
                outcomes.join(", ")
            ),
            fields,
            Some(format!("sink: {}", first.outcome)),
        );
    }
    match t {
        None => anomaly(
            AnomalyKind::LostChange,
            format!(
                "the source row was written by {}; no change of the key newer than what the target holds reached the sink (the target holds {holds})",
                written_by(case.source)
            ),
            fields,
            Some("capture or transport: never reached the sink".into()),
        ),
        Some(t) => lost_or_differs(case.source.expect("the source holds the row"), t, holds, fields, anomaly),
    }
}

/// The transaction that last wrote the source row, in words.
fn written_by(source: Option<&SourceRecord>) -> String {
    let xid = source.and_then(|s| s.xid.as_deref()).map(|x| format!("transaction {x}, ")).unwrap_or_default();
    format!("{xid}committed at {}", fmt_ts(source.and_then(|s| s.committed_at)))
}

/// Values differ and no change newer than the target's version is known to the sink.
/// Whether the source row was written after that version is told by the source's own
/// commit times (one clock: the version carries its source commit time): if it was, that
/// transaction is the lost change; if not, the values differ at the same version.
fn lost_or_differs(
    source: &SourceRecord,
    target: &TargetRecord,
    holds: String,
    fields: Vec<super::report::FieldDiff>,
    anomaly: impl Fn(AnomalyKind, String, Vec<super::report::FieldDiff>, Option<String>) -> Judged,
) -> Judged {
    let written_after = match (source.committed_at, target.source_ts) {
        (Some(s), Some(v)) => s.timestamp_millis() > v.timestamp_millis(),
        (_, None) => true,
        (None, Some(_)) => false,
    };
    if written_after {
        return anomaly(
            AnomalyKind::LostChange,
            format!(
                "the source row was written by {}, after the version the target holds ({holds}, committed at {}); no change of it reached the sink. \
                 (A table rewrite also re-stamps rows without a change event.)",
                written_by(Some(source)),
                fmt_ts(target.source_ts)
            ),
            fields,
            Some("capture or transport: never reached the sink".into()),
        );
    }
    anomaly(
        AnomalyKind::ValueMismatch,
        format!("the target holds the version the source row was last written at ({holds}, committed at {}), and its values differ", fmt_ts(target.source_ts)),
        fields,
        None,
    )
}

/// The expected rule under which every change in `newer` was dead-lettered, when the apply
/// log accounts for every record of the key's partition between the version the target
/// holds and the last of them (so no change of the key can hide in between).
fn excused(newer: &[&LogRow], held: Option<&LogRow>, history: &History, rejections: &Rejections<'_>) -> Option<String> {
    let last = newer.iter().max_by_key(|r| r.id)?;
    let mut rule = None;
    for r in newer {
        rule = Some(rejections.excusing_rule(r)?);
    }
    let from = held.filter(|h| h.partition == last.partition).map_or(last.offset, |h| h.offset);
    history.offsets_complete(&last.entity, last.partition, from, last.offset).then_some(())?;
    rule
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::json;

    use super::*;
    use crate::verify::dlq::Letter;
    use crate::verify::mapping::Mapping;

    const KEY: &str = "00000000-0000-0000-0000-000000000001";

    fn log(id: i64, lsn: i64, op: &str, outcome: &str, offset: i64) -> LogRow {
        LogRow {
            version: Some(lsn),
            commit: Some(lsn),
            op: Some(op.into()),
            offset,
            source_ts: DateTime::from_timestamp_millis(lsn * 1000),
            applied_at: DateTime::from_timestamp_millis(lsn * 1000 + 3000).unwrap(),
            rule: (outcome == "dlq").then(|| "email".into()),
            ..LogRow::sample(id, outcome)
        }
    }

    fn source(status: &str) -> SourceRecord {
        SourceRecord {
            values: vec![Some(KEY.into()), Some("a@b.c".into()), Some(status.into()), None],
            committed_at: DateTime::from_timestamp_millis(30_000),
            xid: Some("77".into()),
            row: json!({}),
        }
    }

    fn target(status: &str, at: &LogRow, deleted: bool) -> TargetRecord {
        TargetRecord {
            values: vec![Some(KEY.into()), Some("a@b.c".into()), Some(status.into()), None],
            deleted,
            source_ts: at.source_ts,
            applied_at: Some(at.applied_at),
            position: Some((at.partition, at.offset)),
            lsn: at.version,
            record: json!({}),
        }
    }

    fn judge(source: Option<&SourceRecord>, records: &[TargetRecord], log: Vec<LogRow>, expected: &[String], letters: Option<&LetterIndex>) -> Judged {
        let mapping = Mapping::builtin();
        let case = KeyCase { entity: mapping.entity("customer").unwrap(), key: KEY, source, records, deleted_at: None, precision: TimestampPrecision::Micros };
        let history = History::new(log);
        classify(&case, Some(&history), &Rejections { expected_rules: expected, letters })
    }

    fn kind(j: &Judged) -> Option<AnomalyKind> {
        match j {
            Judged::Anomaly(a) => Some(a.kind),
            _ => None,
        }
    }

    #[test]
    fn a_newer_change_skipped_by_the_sink_is_lost_and_named() {
        let (v1, v2) = (log(1, 10, "c", "applied", 0), log(2, 20, "u", "stale", 1));
        let j = judge(Some(&source("inactive")), &[target("active", &v1, false)], vec![v1.clone(), v2], &[], None);
        let Judged::Anomaly(a) = j else { panic!("{j:?}") };
        assert_eq!(a.kind, AnomalyKind::LostChange);
        assert!(
            a.evidence.starts_with("version 20 commit 20 (op u, partition 0 offset 1, apply log row 2) reached the sink and was not applied (outcome stale"),
            "{}",
            a.evidence
        );
    }

    /// Ordinary lag: the sink applied the older version seconds after the newer one was
    /// committed. Clocks would call that a stale overwrite; the order of versions says the
    /// newer one was simply never applied.
    #[test]
    fn lag_does_not_turn_a_lost_change_into_a_stale_overwrite() {
        let v1 = log(1, 10, "c", "applied", 0);
        let mut late = v1.clone();
        late.applied_at = DateTime::from_timestamp_millis(40_000).unwrap();
        let j = judge(Some(&source("inactive")), &[target("active", &late, false)], vec![late.clone()], &[], None);
        let Judged::Anomaly(a) = j else { panic!("{j:?}") };
        assert_eq!(a.kind, AnomalyKind::LostChange, "{}", a.evidence);
        assert_eq!(a.hop.as_deref(), Some("capture or transport: never reached the sink"));
    }

    #[test]
    fn an_older_version_applied_after_a_newer_one_is_a_stale_overwrite() {
        let (v2, v1) = (log(1, 20, "u", "applied", 1), log(2, 10, "c", "applied", 0));
        let j = judge(Some(&source("inactive")), &[target("active", &v1, false)], vec![v2, v1.clone()], &[], None);
        let Judged::Anomaly(a) = j else { panic!("{j:?}") };
        assert_eq!(a.kind, AnomalyKind::StaleOverwrite);
        assert!(a.evidence.contains("the older version was applied after it"), "{}", a.evidence);
    }

    #[test]
    fn a_live_row_after_an_applied_delete_is_resurrected() {
        let (v1, d, again) = (log(1, 10, "c", "applied", 0), log(2, 20, "d", "applied", 1), log(3, 10, "c", "applied", 2));
        let j = judge(None, &[target("active", &again, false)], vec![v1, d, again.clone()], &[], None);
        assert_eq!(kind(&j), Some(AnomalyKind::ResurrectedDelete), "{j:?}");
        let lost_delete = judge(
            None,
            &[target("active", &log(1, 10, "c", "applied", 0), false)],
            vec![log(1, 10, "c", "applied", 0), log(2, 20, "d", "stale", 1)],
            &[],
            None,
        );
        assert_eq!(kind(&lost_delete), Some(AnomalyKind::LostChange), "a delete that was never applied is lost, not resurrected");
    }

    #[test]
    fn a_difference_with_no_newer_change_differs_and_is_never_lost() {
        let v1 = log(1, 10, "c", "applied", 0);
        // The source row was written after the target's version: that transaction is lost.
        let j = judge(Some(&source("inactive")), &[target("active", &v1, false)], vec![v1.clone()], &[], None);
        let Judged::Anomaly(a) = j else { panic!() };
        assert_eq!(a.kind, AnomalyKind::LostChange);
        assert!(a.evidence.contains("transaction 77, committed at"), "{}", a.evidence);
        let mut same_time = source("inactive");
        same_time.committed_at = v1.source_ts;
        let j = judge(Some(&same_time), &[target("active", &v1, false)], vec![v1.clone()], &[], None);
        assert_eq!(kind(&j), Some(AnomalyKind::ValueMismatch), "{j:?}");
    }

    #[test]
    fn only_an_expected_rule_excuses_and_only_with_every_earlier_change_accounted_for() {
        let (v1, v3) = (log(1, 10, "c", "applied", 0), log(2, 30, "u", "dlq", 1));
        let email = ["email".to_string()];
        let j = judge(Some(&source("blocked")), &[target("active", &v1, false)], vec![v1.clone(), v3.clone()], &email, None);
        assert!(matches!(&j, Judged::Excused { rule } if rule == "email"), "{j:?}");
        let j = judge(Some(&source("blocked")), &[target("active", &v1, false)], vec![v1.clone(), v3.clone()], &[], None);
        assert_eq!(kind(&j), Some(AnomalyKind::LostChange), "a rule the scenario does not expect excuses nothing");
        // v2 lost (offset 1 is not in the log), v3 dead-lettered at offset 2.
        let v3_later = log(2, 30, "u", "dlq", 2);
        let j = judge(Some(&source("blocked")), &[target("active", &v1, false)], vec![v1.clone(), v3_later], &email, None);
        assert_eq!(kind(&j), Some(AnomalyKind::LostChange), "an unaccounted record between the held version and the letter: {j:?}");
        // v2 skipped as stale, v3 dead-lettered.
        let (v2, v3) = (log(2, 20, "u", "stale", 1), log(3, 30, "u", "dlq", 2));
        let j = judge(Some(&source("blocked")), &[target("active", &v1, false)], vec![v1.clone(), v2, v3], &email, None);
        assert_eq!(kind(&j), Some(AnomalyKind::LostChange), "{j:?}");
        // The letters were read back: the topic's word, not the log's, names the rule.
        let letters: LetterIndex = HashMap::from([(
            ("customer".to_string(), 0, 1),
            Letter {
                partition: 0,
                offset: 0,
                rule: "decode".into(),
                reason: "bad".into(),
                entity: "customer".into(),
                original_topic: String::new(),
                original_partition: 0,
                original_offset: 1,
                key: None,
            },
        )]);
        let v3 = log(2, 30, "u", "dlq", 1);
        let j = judge(Some(&source("blocked")), &[target("active", &v1, false)], vec![v1.clone(), v3], &email, Some(&letters));
        assert_eq!(kind(&j), Some(AnomalyKind::LostChange), "a decode letter is never excused: {j:?}");
    }
}
