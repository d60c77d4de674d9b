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
use crate::model::{Change, Entity};

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("postgres: {}", postgres_reason(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("mongodb: {0}")]
    Mongo(#[from] ::mongodb::error::Error),
    #[error("mongodb write error {code}: {message}")]
    MongoWrite { code: i32, message: String },
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

impl TargetError {
    /// Transient errors (connection loss, timeouts, failover, lock/serialization
    /// conflicts) are retried with backoff forever: a target that is down makes the sink
    /// wait, never skip. Anything else is a property of the data and is not retried.
    pub fn is_retriable(&self) -> bool {
        match self {
            Self::Postgres(e) => postgres::is_retriable(e),
            Self::Mongo(e) => mongodb::is_retriable(e),
            Self::MongoWrite { code, .. } => mongodb::is_retriable_code(*code),
        }
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
    pub version: Option<i64>,
    pub op: Option<&'static str>,
    pub outcome: LoggedOutcome,
    pub partition: i32,
    pub offset: i64,
    pub kafka_ts: Option<DateTime<Utc>>,
    pub source_ts: Option<DateTime<Utc>>,
    /// For dead-lettered events: the rule that rejected it.
    pub rule: Option<String>,
}

impl LogEntry {
    pub fn of_change(change: &Change, outcome: LoggedOutcome) -> Self {
        Self {
            key: Some(change.key),
            version: Some(change.lsn),
            op: Some(change.op.code()),
            outcome,
            partition: change.coords.partition,
            offset: change.coords.offset,
            kafka_ts: change.coords.timestamp,
            source_ts: change.source_ts,
            rule: None,
        }
    }
}

/// The changes of a batch that a newer in-batch change of the same key subsumed (what
/// `latest_per_key` drops), for the apply log.
pub fn superseded(changes: &[Change], latest: &[Change]) -> Vec<Change> {
    let kept: HashSet<(Uuid, i32, i64)> = latest.iter().map(|c| (c.key, c.coords.partition, c.coords.offset)).collect();
    changes.iter().filter(|c| !kept.contains(&(c.key, c.coords.partition, c.coords.offset))).cloned().collect()
}

/// The newest change per key of a batch. Older in-batch changes of the same key are
/// subsumed (the target would skip them as stale anyway); columns the newest image does
/// not carry (TOAST placeholder, absent) are filled from an older image when it has them.
pub fn latest_per_key(changes: &[Change]) -> Vec<Change> {
    let mut index: HashMap<Uuid, usize> = HashMap::with_capacity(changes.len());
    let mut out: Vec<Change> = Vec::with_capacity(changes.len());
    for change in changes {
        match index.get(&change.key) {
            None => {
                index.insert(change.key, out.len());
                out.push(change.clone());
            }
            Some(&i) => {
                let kept = &mut out[i];
                let (newer, older) = if change.lsn >= kept.lsn { (change.clone(), &*kept) } else { (kept.clone(), change) };
                let mut newer = newer;
                if let (Some(n), Some(o)) = (newer.after.as_mut(), older.after.as_ref()) {
                    n.fill_missing_from(o);
                }
                *kept = newer;
            }
        }
    }
    out
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
        let latest = latest_per_key(changes);
        let superseded = if self.audits() { superseded(changes, &latest) } else { Vec::new() };
        match self {
            Self::Postgres(t) => t.apply(entity, &latest, &superseded).await,
            Self::Mongo(t) => t.apply(entity, &latest, &superseded).await,
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
