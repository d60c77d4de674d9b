//! What the verifier found, as data: rendered by the CLI and embedded in run reports.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How a key of the target disagrees with the source, judged from the evidence: the
/// source row and its commit time, the source's delete ledger, and the CDC metadata the
/// target keeps (source commit time of the version it holds, when it applied it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    /// The target holds an older version (or none, or the row although the source deleted
    /// it) and applied it before the source's newer change: that change never arrived.
    LostChange,
    /// The target holds an older version that it applied after the newer one was committed:
    /// an old event overwrote a newer state.
    StaleOverwrite,
    /// The source deleted the key; the target holds it live, applied after the delete.
    ResurrectedDelete,
    /// The same key is materialized more than once, or (apply log) one version of a key
    /// was applied twice.
    DuplicateApply,
    /// (Apply log) a version was applied after a newer version of the same key, even if a
    /// later change healed the final state.
    OutOfOrderApply,
    /// The target holds a key the source never had.
    ExtraRow,
    /// Same version on both sides, different values (a corrupted or mis-decoded field).
    ValueMismatch,
}

impl AnomalyKind {
    pub const ALL: [AnomalyKind; 7] =
        [Self::LostChange, Self::StaleOverwrite, Self::ResurrectedDelete, Self::DuplicateApply, Self::OutOfOrderApply, Self::ExtraRow, Self::ValueMismatch];
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldDiff {
    pub field: String,
    pub source: Option<String>,
    pub target: Option<String>,
}

/// One anomaly with its witness.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    pub kind: AnomalyKind,
    pub entity: String,
    pub key: String,
    pub fields: Vec<FieldDiff>,
    /// The source row (None when the source does not hold the key).
    pub source_row: Option<Value>,
    /// The target record with its CDC metadata (None when the target does not hold it).
    pub target_record: Option<Value>,
    /// Why this kind was chosen, in words.
    pub evidence: String,
    /// When the source committed the row it holds (None: it holds none, or unknown).
    #[serde(default)]
    pub source_committed_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Where in the pipeline it went wrong, from the sink's apply log (None: no log).
    #[serde(default)]
    pub hop: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntityOutcome {
    pub entity: String,
    pub source_count: u64,
    /// Live target records (tombstones not counted).
    pub target_count: u64,
    pub matching: u64,
    pub missing_in_target: u64,
    pub extra_in_target: u64,
    pub mismatched: u64,
    pub duplicates: u64,
    /// Keys that differ only by changes dead-lettered under an expected rule.
    #[serde(default)]
    pub excused: u64,
    /// Live verification: keys whose target version is newer than the source snapshot the
    /// check compared against (the source moved on; not compared).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub newer_than_watermark: u64,
    /// Of those, the keys the clock rule set aside (a version's source transaction unknown);
    /// the rest the snapshot decided.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub newer_by_clock: u64,
    /// Live verification: differing keys compared because the clock rule called them older
    /// than the snapshot (a version's source transaction unknown).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub compared_by_clock: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl EntityOutcome {
    /// Moves one differing key to `excused`: it was missing (the source holds it, the
    /// target not), extra (the other way round) or mismatched.
    pub fn excuse(&mut self, in_source: bool, in_target: bool) {
        self.uncount(in_source, in_target);
        self.excused += 1;
    }

    /// Moves one differing key to `newer_than_watermark` (live verification), decided by the
    /// clock rule or by the snapshot.
    pub fn set_aside_newer(&mut self, in_source: bool, in_target: bool, by_clock: bool) {
        self.uncount(in_source, in_target);
        self.newer_than_watermark += 1;
        self.newer_by_clock += u64::from(by_clock);
    }

    fn uncount(&mut self, in_source: bool, in_target: bool) {
        let counter = match (in_source, in_target) {
            (true, false) => &mut self.missing_in_target,
            (false, true) => &mut self.extra_in_target,
            _ => &mut self.mismatched,
        };
        *counter = counter.saturating_sub(1);
    }
}

/// Percentiles of a set of samples, computed exactly (nearest rank over every sample:
/// `run::percentiles`) wherever the harness computes them. With no samples (`count == 0`)
/// nothing was measured: it serializes as `null` and renders as "not measured", and
/// metrics built from it are absent (a threshold on them fails).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn measured(&self) -> bool {
        self.count > 0
    }
}

#[derive(Serialize, Deserialize)]
struct PercentilesRepr {
    count: u64,
    p50: f64,
    p90: f64,
    p95: f64,
    p99: f64,
    max: f64,
}

impl Serialize for Percentiles {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !self.measured() {
            return s.serialize_none();
        }
        PercentilesRepr { count: self.count, p50: self.p50, p90: self.p90, p95: self.p95, p99: self.p99, max: self.max }.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Percentiles {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Option::<PercentilesRepr>::deserialize(d)? {
            Some(r) => Self { count: r.count, p50: r.p50, p90: r.p90, p95: r.p95, p99: r.p99, max: r.max },
            None => Self::default(),
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Source commit -> applied in the target, in milliseconds, over the latest change of
    /// every key the target holds (snapshot reads excluded).
    pub overall: Percentiles,
    pub per_entity: BTreeMap<String, Percentiles>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub target: String,
    pub converged: bool,
    pub entities: Vec<EntityOutcome>,
    pub anomaly_counts: BTreeMap<AnomalyKind, u64>,
    /// At most `max_examples` per kind.
    pub anomalies: Vec<Anomaly>,
    /// From the end of load to the start of the first full pass that found full agreement
    /// (online mode).
    pub time_to_converge_ms: Option<u64>,
    /// Duration of each full pass, in order (the last one is the verdict's).
    #[serde(default)]
    pub full_pass_ms: Vec<u64>,
    /// Keys still different when the deadline passed (online mode; bounded).
    pub never_converged: Vec<String>,
    /// Commit -> applied over the latest change of each key (not every change: the run's
    /// per-hop figures come from the apply log).
    #[serde(rename = "latest_change_latency", alias = "latency")]
    pub latency: LatencySummary,
    pub rows_compared: u64,
    pub elapsed_ms: u64,
    /// Differences beyond what is tracked key by key (counted, not classified).
    pub untracked_differences: u64,
    /// Keys whose newest change the sink dead-lettered on purpose, per rule (from its
    /// apply log): rejected, not lost, and not anomalies. A scenario declares the
    /// rejections it expects with a threshold on `convergence.dlq_rejected`.
    #[serde(default)]
    pub dlq_rejected: BTreeMap<String, u64>,
    /// Whether the sink's apply log was there to check the history (duplicate and
    /// out-of-order applies need it).
    #[serde(default)]
    pub history_checked: bool,
    /// Columns the source's catalog has other than the mapping says: added, dropped,
    /// retyped, or absent in the target (see `verify::columns`).
    #[serde(default)]
    pub columns: Vec<super::columns::ColumnFinding>,
    /// The dead letters read back from their topic; `None`: not read.
    #[serde(default)]
    pub dlq: Option<super::dlq::DlqReport>,
    /// The fence the comparison waited for (a run's verification); `None`: none was taken.
    #[serde(default)]
    pub watermark: Option<crate::run::fence::Watermark>,
    /// Live checks made while the load ran (`[verify] live_every`), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub live_checks: Vec<super::live::LiveCheck>,
}

impl VerifyReport {
    pub fn count(&self, kind: AnomalyKind) -> u64 {
        self.anomaly_counts.get(&kind).copied().unwrap_or(0)
    }

    pub fn total(&self, f: impl Fn(&EntityOutcome) -> u64) -> u64 {
        self.entities.iter().map(f).sum()
    }
}
