//! Targets: where changes are materialized. Each target lives in its own module with the
//! Vector-style split: `config.rs` (typed settings), `service.rs` (connections, errors and
//! the retriable decision), `sink.rs` (the version-guarded apply).

pub mod mongodb;
pub mod postgres;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::config::{TargetConfig, TargetKind};
use crate::model::{Change, Entity, Version};

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("postgres: {}", postgres_reason(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// The URL's TLS settings cannot be used (a certificate file missing or unreadable).
    #[error("postgres: {0}")]
    Tls(String),
    #[error("mongodb: {0}")]
    Mongo(#[from] ::mongodb::error::Error),
    #[error("mongodb write error {code}: {message}")]
    MongoWrite { code: i32, message: String },
    /// A call that missed the sink's client-side deadline: the target (or the link to it)
    /// is not answering. Retried on a fresh connection.
    #[error("{operation}: no answer from the target within {after:?}")]
    Timeout { operation: &'static str, after: std::time::Duration },
}

/// A server error with its SQLSTATE, message and detail (what a DLQ reason must carry);
/// anything else as the client says it.
fn postgres_reason(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let detail = db.detail().map(|d| format!(" ({d})")).unwrap_or_default();
            format!("SQLSTATE {}: {}{detail}", db.code().code(), db.message())
        }
        None => e.to_string(),
    }
}

/// Whom an error is about, which decides what the sink does with the write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The target, or the link to it, is briefly unavailable (connection loss, timeouts,
    /// failover, lock or serialization conflicts): retried with backoff, without limit.
    Transient,
    /// The target refuses this row (a value out of range, a constraint): its event is
    /// dead-lettered with the reason and the partition moves on.
    Record,
    /// The target refuses every write until an operator acts (credentials, permissions, a
    /// table or column that is missing, a read-only node): never the row's fault, so never
    /// dead-lettered. The partition stalls and says so (`/readyz` 503 with the reason,
    /// `sink_partition_stalled`, an ERROR log) while it retries at the backoff, and resumes by
    /// itself once fixed. At start-up the sink exits 1 instead.
    Target,
}

impl TargetError {
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Postgres(e) => postgres::class_of(e),
            Self::Mongo(e) => mongodb::class_of(e),
            Self::MongoWrite { code, .. } => mongodb::class_of_code(*code),
            Self::Timeout { .. } => ErrorClass::Transient,
            Self::Tls(_) => ErrorClass::Target,
        }
    }

    /// Whether the write must be tried again (transient, or the target's fault): a batch
    /// that failed so is never split up to find a bad row.
    pub fn is_retriable(&self) -> bool {
        self.class() != ErrorClass::Record
    }
}

/// What one apply did, per key of the (de-duplicated) batch.
#[derive(Debug, Default)]
pub struct ApplyReport {
    /// Keys whose change was written (it was newer than the target's version).
    pub applied: Vec<Uuid>,
    /// Keys whose change was not newer than the target's version.
    pub stale: Vec<Uuid>,
    /// Keys whose write failed for a non-retriable reason (they go to the DLQ).
    pub rejected: Vec<(Uuid, String)>,
    /// Keys whose change holds a value its target column cannot hold while the source
    /// declares no wider type: not written, dead-lettered as `decode` (the event's fault).
    pub out_of_range: Vec<(Uuid, String)>,
}

/// What became of one event, as the apply log records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoggedOutcome {
    Applied,
    /// The target already held this version or a newer one.
    Stale,
    /// A newer change of the same key in the same batch was written instead; this one's
    /// effect is subsumed by it (durable at the same moment).
    Superseded,
    Dlq,
    /// Tombstones, truncates, logical decoding messages.
    Ignored,
}

impl LoggedOutcome {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Stale => "stale",
            Self::Superseded => "superseded",
            Self::Dlq => "dlq",
            Self::Ignored => "ignored",
        }
    }
}

/// One row of the apply log (audit mode) that is not written with a change: dead-lettered
/// and ignored events. Changes that reach the target are logged by the apply itself.
#[derive(Debug, Clone)]
pub struct LogEntry {
    pub key: Option<Uuid>,
    pub version: Option<Version>,
    pub op: Option<&'static str>,
    pub outcome: LoggedOutcome,
    pub partition: i32,
    pub offset: i64,
    pub kafka_ts: Option<DateTime<Utc>>,
    pub source_ts: Option<DateTime<Utc>>,
    /// The source transaction (`Change::tx_id`).
    pub tx_id: Option<i64>,
    /// For dead-lettered events: the rule that rejected it.
    pub rule: Option<String>,
}

impl LogEntry {
    pub fn of_change(change: &Change, outcome: LoggedOutcome) -> Self {
        Self {
            key: Some(change.key),
            version: Some(change.version),
            op: Some(change.op.code()),
            outcome,
            partition: change.coords.partition,
            offset: change.coords.offset,
            kafka_ts: change.coords.timestamp,
            source_ts: change.source_ts,
            tx_id: change.tx_id,
            rule: None,
        }
    }
}

/// How a batch is written: `rounds` first, in order, then `latest` (the newest change per
/// key) with `superseded` (the older in-batch changes it subsumes, for the apply log).
#[derive(Debug, Default)]
pub struct Plan {
    pub rounds: Vec<Vec<Change>>,
    pub latest: Vec<Change>,
    pub superseded: Vec<Change>,
}

/// One write per key where that is exact; more where it is not. The newest change of a key
/// subsumes its older in-batch changes when it carries every column. When it does not (a
/// TOAST placeholder, an absent column: "keep what the target has"), what the target should
/// keep depends on the target's version, which only the guarded write knows: merging the
/// older image in would let a replayed image older than the target's fill the placeholder
/// with an outdated value. Such keys write their older images first, one round each in
/// version order, each against the guard, and the newest last.
pub fn plan(changes: &[Change]) -> Plan {
    let mut by_key: HashMap<Uuid, Vec<&Change>> = HashMap::with_capacity(changes.len());
    let mut order: Vec<Uuid> = Vec::new();
    for change in changes {
        by_key
            .entry(change.key)
            .or_insert_with(|| {
                order.push(change.key);
                Vec::new()
            })
            .push(change);
    }
    let mut plan = Plan::default();
    for key in order {
        let mut images = by_key.remove(&key).unwrap_or_default();
        // Stable: of equal versions (duplicates) the later delivery stays last.
        images.sort_by(|a, b| {
            if a.version.is_newer_than(&b.version) {
                std::cmp::Ordering::Greater
            } else if b.version.is_newer_than(&a.version) {
                std::cmp::Ordering::Less
            } else {
                std::cmp::Ordering::Equal
            }
        });
        let newest = images.pop().expect("a key has at least one change");
        let complete = newest.after.as_ref().is_none_or(crate::model::Row::is_complete);
        if complete {
            plan.superseded.extend(images.into_iter().cloned());
        } else {
            let mut older: Vec<&Change> = Vec::new();
            for image in images {
                // Duplicates of one version are written once; the others are superseded.
                match older.last() {
                    Some(last) if !image.version.is_newer_than(&last.version) => plan.superseded.push(image.clone()),
                    _ => older.push(image),
                }
            }
            for (i, image) in older.into_iter().enumerate() {
                if plan.rounds.len() <= i {
                    plan.rounds.push(Vec::new());
                }
                plan.rounds[i].push(image.clone());
            }
        }
        plan.latest.push(newest.clone());
    }
    plan
}

/// A configured target.
pub enum Target {
    // Boxed: the pool is large and the enum is held behind an Arc anyway.
    Postgres(Box<postgres::PostgresSink>),
    Mongo(mongodb::MongoSink),
}

impl Target {
    /// Connects and prepares tables/collections and indexes. Fails fast on errors that
    /// are not transient (bad credentials, bad URL) so main can report them.
    /// `audit`: keep the apply log (see `AuditConfig`).
    pub async fn connect(config: &TargetConfig, audit: bool) -> Result<Self, TargetError> {
        Ok(match config.kind {
            TargetKind::Postgres => Self::Postgres(Box::new(postgres::PostgresSink::connect(config, audit).await?)),
            TargetKind::Mongodb => Self::Mongo(mongodb::MongoSink::connect(config, audit).await?),
        })
    }

    pub const fn kind(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "postgres",
            Self::Mongo(_) => "mongodb",
        }
    }

    /// Applies the batch (one entity, partition order) with the version guard.
    /// In audit mode every change of the batch is logged with its outcome by the same write.
    pub async fn apply(&self, entity: Entity, changes: &[Change]) -> Result<ApplyReport, TargetError> {
        let Plan { rounds, latest, superseded } = plan(changes);
        let superseded = if self.audits() { superseded } else { Vec::new() };
        let mut refused: Vec<(Uuid, String)> = Vec::new();
        let mut out_of_range: Vec<(Uuid, String)> = Vec::new();
        for round in &rounds {
            // Each older image is logged (audit mode) by its own write; what matters for the
            // report is the newest change of each key.
            let older = self.write(entity, round, &[]).await?;
            refused.extend(older.rejected);
            out_of_range.extend(older.out_of_range);
        }
        let mut report = self.write(entity, &latest, &superseded).await?;
        // An older image the target refused matters only if the newest was not written.
        let settled: HashSet<Uuid> =
            report.applied.iter().chain(report.rejected.iter().map(|(k, _)| k)).chain(report.out_of_range.iter().map(|(k, _)| k)).copied().collect();
        report.rejected.extend(refused.into_iter().filter(|(key, _)| !settled.contains(key)));
        report.out_of_range.extend(out_of_range.into_iter().filter(|(key, _)| !settled.contains(key)));
        Ok(report)
    }

    async fn write(&self, entity: Entity, latest: &[Change], superseded: &[Change]) -> Result<ApplyReport, TargetError> {
        match self {
            Self::Postgres(t) => t.apply(entity, latest, superseded).await,
            Self::Mongo(t) => t.apply(entity, latest, superseded).await,
        }
    }

    pub fn audits(&self) -> bool {
        match self {
            Self::Postgres(t) => t.audit,
            Self::Mongo(t) => t.audit,
        }
    }

    /// Appends dead-lettered and ignored events to the apply log (audit mode; a no-op
    /// otherwise).
    pub async fn log(&self, entity: Entity, entries: &[LogEntry]) -> Result<(), TargetError> {
        if !self.audits() || entries.is_empty() {
            return Ok(());
        }
        match self {
            Self::Postgres(t) => t.log(entity, entries).await,
            Self::Mongo(t) => t.log(entity, entries).await,
        }
    }

    /// Which of `ids` exist in the target (tombstoned ones included: a parent deleted
    /// later still existed).
    pub async fn existing(&self, entity: Entity, ids: &[Uuid]) -> Result<HashSet<Uuid>, TargetError> {
        match self {
            Self::Postgres(t) => t.existing(entity, ids).await,
            Self::Mongo(t) => t.existing(entity, ids).await,
        }
    }

    /// Makes room for columns added in the source.
    pub async fn ensure_columns(&self, entity: Entity, columns: &[String]) -> Result<(), TargetError> {
        match self {
            Self::Postgres(t) => t.ensure_columns(entity, columns).await,
            // Documents take new fields as they come.
            Self::Mongo(_) => Ok(()),
        }
    }

    pub async fn ping(&self) -> Result<(), TargetError> {
        match self {
            Self::Postgres(t) => t.ping().await,
            Self::Mongo(t) => t.ping().await,
        }
    }

    pub async fn purge_tombstones(&self, entity: Entity, older_than: Duration) -> Result<u64, TargetError> {
        match self {
            Self::Postgres(t) => t.purge_tombstones(entity, older_than).await,
            Self::Mongo(t) => t.purge_tombstones(entity, older_than).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Coords, Extra, Field, JsonKind, Op, Row, Value};

    fn change(lsn: i64, notes: Option<&str>) -> Change {
        let mut row = Row::empty(Entity::Customer);
        for f in row.known.iter_mut() {
            *f = Some(Field::Value(Value::Null));
        }
        match notes {
            Some(text) => {
                row.extra.insert("notes".into(), Extra { text: Some(text.into()), kind: JsonKind::String });
            }
            None => {
                row.unavailable.insert("notes".into());
            }
        }
        Change {
            entity: Entity::Customer,
            key: Uuid::from_u128(1),
            op: Op::Update,
            version: Version::streamed(None, lsn),
            source_ts: None,
            emitted_ts: None,
            tx_id: None,
            before: None,
            after: Some(row),
            coords: Coords { topic: "cdc.public.customer".into(), partition: 0, offset: lsn, timestamp: None },
        }
    }

    /// The newest change of a key sends an added column as the TOAST placeholder: the older
    /// change that set it is written first (its own round), never discarded as superseded.
    #[test]
    fn a_placeholder_on_an_added_column_keeps_the_older_image() {
        let plan = plan(&[change(10, Some("long text")), change(11, None)]);
        assert!(plan.superseded.is_empty());
        assert_eq!(plan.rounds.len(), 1);
        assert_eq!(plan.rounds[0][0].version.lsn, 10);
        assert_eq!(plan.latest[0].version.lsn, 11);
        let complete = super::plan(&[change(10, Some("a")), change(11, Some("b"))]);
        assert!(complete.rounds.is_empty() && complete.superseded.len() == 1, "a complete newest image subsumes the older one");
    }
}
