//! Version-guarded apply into `<entity>_materialized`.
//!
//! A batch (already one change per key) is grouped by the set of columns its rows carry;
//! normally that is one group of complete upserts plus one of deletes, so a batch costs
//! one or two statements. Each group is one prepared
//! `INSERT ... SELECT FROM UNNEST(arrays) ON CONFLICT (id) DO UPDATE ... WHERE <the event's
//! version is newer> RETURNING id`: the returned ids were applied, the others were stale. Rows that carry fewer columns (TOAST placeholders, dropped columns) form
//! their own group whose statement leaves the missing columns untouched.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tokio::sync::Mutex;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::PostgresConfig;
use super::service::Pool;
use crate::config::TargetConfig;
use crate::model::{Change, ColumnType, Entity, Field, SourceType, Value};
use crate::targets::{ApplyReport, LogEntry, TargetError};

/// Runs `body` (which uses `lease`) within the pool's client-side deadline; a missed
/// deadline drops the connection and is a retriable `TargetError::Timeout`.
macro_rules! within_deadline {
    ($pool:expr, $lease:ident, $operation:literal, $body:expr) => {{
        match tokio::time::timeout($pool.call_timeout, async { $body }).await {
            Ok(result) => result.map_err(|e: tokio_postgres::Error| {
                // A node that turned read-only (a demoted primary) stays so: reconnect, so
                // the retry finds the primary (`target_session_attrs = read-write`).
                if e.code() == Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION) {
                    $lease.discard();
                }
                TargetError::from(e)
            }),
            Err(_) => {
                $lease.discard();
                Err(TargetError::Timeout { operation: $operation, after: $pool.call_timeout })
            }
        }
    }};
}

pub fn table_name(entity: Entity) -> String {
    format!("{}_materialized", entity.table())
}

/// Quotes an identifier (column names of added columns come from the source).
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

const CDC_COLUMNS: &str = "_cdc_lsn bigint not null, _cdc_source_ts timestamptz, _cdc_op char(1) not null, \
     _cdc_partition int, _cdc_offset bigint, _cdc_applied_at timestamptz not null default clock_timestamp(), \
     _cdc_deleted boolean not null default false, _cdc_commit bigint, _cdc_epoch int not null default 0, \
     _cdc_snapshot boolean not null default false";

/// Columns of the version added after the first release: tables made before get them.
const VERSION_MIGRATION: &str = "ADD COLUMN IF NOT EXISTS _cdc_commit bigint, \
     ADD COLUMN IF NOT EXISTS _cdc_epoch int NOT NULL DEFAULT 0, ADD COLUMN IF NOT EXISTS _cdc_snapshot boolean NOT NULL DEFAULT false";

/// The commit position of rows written before versions had one. Such a row was ordered by
/// its LSN alone, so that LSN is its commit position; left NULL it would read as "the first
/// transaction of a connector session", which no snapshot row may replace, and a later
/// re-snapshot could never refresh it. Set once, when the column is added (under a lock,
/// so two sinks starting together do it once): later NULLs are real unknown commits.
fn commit_migration_sql(table: &str) -> String {
    format!(
        "DO $$ BEGIN \
           LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE; \
           IF NOT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() \
                          AND table_name = '{table}' AND column_name = '_cdc_commit') THEN \
             ALTER TABLE {table} ADD COLUMN _cdc_commit bigint; \
             UPDATE {table} SET _cdc_commit = _cdc_lsn; \
           END IF; \
         END $$"
    )
}

/// `model::Version::is_newer_than` in SQL: `excluded` (the event) against `t` (stored).
const VERSION_GUARD: &str = "CASE WHEN t._cdc_epoch <> excluded._cdc_epoch THEN t._cdc_epoch < excluded._cdc_epoch \
     WHEN t._cdc_snapshot AND NOT excluded._cdc_snapshot AND excluded._cdc_commit IS NULL THEN true \
     WHEN excluded._cdc_snapshot AND NOT t._cdc_snapshot AND t._cdc_commit IS NULL THEN false \
     ELSE (coalesce(t._cdc_commit, t._cdc_lsn), t._cdc_lsn) < (coalesce(excluded._cdc_commit, excluded._cdc_lsn), excluded._cdc_lsn) END";

pub fn create_table_sql(entity: Entity) -> String {
    let mut sql = format!("CREATE TABLE IF NOT EXISTS {} (", table_name(entity));
    for c in entity.columns() {
        let pk = if c.name == "id" { " PRIMARY KEY" } else { "" };
        // Data columns are nullable: a delete of a key never seen leaves a tombstone row
        // with only the CDC columns.
        let _ = write!(sql, "{} {}{pk}, ", ident(c.name), c.ty.sql());
    }
    let _ = write!(sql, "{CDC_COLUMNS})");
    sql
}

/// The apply log of audit mode. No index beyond the key: it is appended to on every write
/// and read whole (in id order) by a verifier.
pub const APPLY_LOG_TABLE: &str = "_cdc_apply_log";
const APPLY_LOG_SQL: &str = "CREATE TABLE IF NOT EXISTS _cdc_apply_log (\
     id bigserial PRIMARY KEY, entity text NOT NULL, key uuid, version bigint, op char(1), outcome text NOT NULL, \
     kafka_partition int NOT NULL, kafka_offset bigint NOT NULL, kafka_ts timestamptz, source_ts timestamptz, \
     applied_at timestamptz NOT NULL DEFAULT clock_timestamp(), rule text, version_commit bigint, epoch int, snapshot boolean, tx_id bigint)";
/// Columns added after the first release (`tx_id`: the source transaction, `source.txId`).
const APPLY_LOG_MIGRATION: &str = "ALTER TABLE _cdc_apply_log ADD COLUMN IF NOT EXISTS version_commit bigint, \
     ADD COLUMN IF NOT EXISTS epoch int, ADD COLUMN IF NOT EXISTS snapshot boolean, ADD COLUMN IF NOT EXISTS tx_id bigint";

pub struct PostgresSink {
    pool: Pool,
    pub audit: bool,
    /// Columns added to each table beyond the known ones (so ALTER runs once per column).
    added: Mutex<BTreeMap<Entity, HashSet<String>>>,
    /// What the target's known integer and decimal columns are now (from the catalog at
    /// start, then as widened); a column absent here has the type `create_table_sql` gives.
    stored: Mutex<BTreeMap<(Entity, &'static str), Stored>>,
}

/// How long a widening `ALTER TABLE` waits for its lock (`SET LOCAL lock_timeout`): the
/// ACCESS EXCLUSIVE request queues every other session of the table behind it, so it must
/// not wait for long transactions; on timeout (55P03, transient) it is retried later.
const WIDEN_LOCK_TIMEOUT: &str = "5s";

/// One typed parameter array.
enum Array {
    Uuid(Vec<Option<Uuid>>),
    Text(Vec<Option<String>>),
    Bool(Vec<Option<bool>>),
    Int(Vec<Option<i64>>),
    Numeric(Vec<Option<Decimal>>),
    Timestamp(Vec<Option<DateTime<Utc>>>),
    Int8(Vec<i64>),
}

/// The version columns of a group's rows.
#[derive(Default)]
struct VersionArrays {
    lsn: Vec<i64>,
    commit: Vec<Option<i64>>,
    epoch: Vec<i32>,
    snapshot: Vec<bool>,
}

impl VersionArrays {
    fn push(&mut self, v: &crate::model::Version) {
        self.lsn.push(v.lsn);
        self.commit.push(v.commit);
        self.epoch.push(v.epoch);
        self.snapshot.push(v.snapshot);
    }
}

impl Array {
    fn new(ty: ColumnType, n: usize) -> Self {
        match ty {
            ColumnType::Uuid => Self::Uuid(Vec::with_capacity(n)),
            ColumnType::Text => Self::Text(Vec::with_capacity(n)),
            ColumnType::Bool => Self::Bool(Vec::with_capacity(n)),
            ColumnType::Int4 => Self::Int(Vec::with_capacity(n)),
            ColumnType::Numeric { .. } => Self::Numeric(Vec::with_capacity(n)),
            ColumnType::Timestamptz => Self::Timestamp(Vec::with_capacity(n)),
        }
    }

    /// Values were decoded for this column's type, so a mismatch cannot happen; it would
    /// be a decoder bug and is stored as NULL rather than crash the sink.
    fn push(&mut self, value: &Value) {
        match (self, value) {
            (Self::Uuid(v), Value::Uuid(x)) => v.push(Some(*x)),
            (Self::Text(v), Value::Text(x)) => v.push(Some(x.clone())),
            (Self::Bool(v), Value::Bool(x)) => v.push(Some(*x)),
            (Self::Int(v), Value::Int(x)) => v.push(Some(*x)),
            (Self::Numeric(v), Value::Numeric(x)) => v.push(Some(*x)),
            (Self::Timestamp(v), Value::Timestamp(x)) => v.push(Some(*x)),
            (a, _) => a.push_null(),
        }
    }

    fn push_null(&mut self) {
        match self {
            Self::Uuid(v) => v.push(None),
            Self::Text(v) => v.push(None),
            Self::Bool(v) => v.push(None),
            Self::Int(v) => v.push(None),
            Self::Numeric(v) => v.push(None),
            Self::Timestamp(v) => v.push(None),
            Self::Int8(v) => v.push(0),
        }
    }

    fn as_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Self::Uuid(v) => v,
            Self::Text(v) => v,
            Self::Bool(v) => v,
            Self::Int(v) => v,
            Self::Numeric(v) => v,
            Self::Timestamp(v) => v,
            Self::Int8(v) => v,
        }
    }
}

/// Rows sharing one statement: same delete flag, same known columns, same added columns.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Shape {
    delete: bool,
    known: Vec<usize>,
    extra: Vec<String>,
}

fn shape_of(change: &Change) -> Shape {
    match &change.after {
        None => Shape { delete: true, known: Vec::new(), extra: Vec::new() },
        Some(row) => Shape {
            delete: false,
            known: row.known.iter().enumerate().filter(|(i, f)| *i != 0 && matches!(f, Some(Field::Value(_)))).map(|(i, _)| i).collect(),
            extra: row.extra.keys().cloned().collect(),
        },
    }
}

/// The parameter array type of a column: integers travel as int8 and decimals as
/// unconstrained numeric, so a value the column's declared type cannot hold reaches the
/// column (widened first, see `PostgresSink::widen`) instead of failing the cast.
const fn param_type(ty: ColumnType) -> &'static str {
    match ty {
        ColumnType::Uuid => "uuid[]",
        ColumnType::Text => "text[]",
        ColumnType::Bool => "bool[]",
        ColumnType::Int4 => "int8[]",
        ColumnType::Numeric { .. } => "numeric[]",
        ColumnType::Timestamptz => "timestamptz[]",
    }
}

/// What a known integer or decimal column of the target is: the same vocabulary as what an
/// event's schema declares, so the two compare directly.
use crate::model::SourceType as Stored;

impl Stored {
    /// The type `create_table_sql` gives a known column (None: not an integer or decimal).
    const fn created(ty: ColumnType) -> Option<Self> {
        match ty {
            ColumnType::Int4 => Some(Self::Integer),
            ColumnType::Numeric { scale } => Some(Self::Numeric { precision: 12, scale }),
            _ => None,
        }
    }

    /// What an `information_schema.columns` row says the column is.
    fn of_catalog(data_type: &str, precision: Option<i32>, scale: Option<i32>) -> Option<Self> {
        let unsigned = |n: Option<i32>| n.and_then(|n| u32::try_from(n).ok());
        match (data_type, unsigned(precision), unsigned(scale)) {
            ("integer", ..) => Some(Self::Integer),
            ("bigint", ..) => Some(Self::Bigint),
            ("numeric", Some(precision), Some(scale)) => Some(Self::Numeric { precision, scale }),
            ("numeric", ..) => Some(Self::AnyNumeric),
            _ => None,
        }
    }

    fn sql(self) -> String {
        match self {
            Self::Integer => "integer".into(),
            Self::Bigint => "bigint".into(),
            Self::Numeric { precision, scale } => format!("numeric({precision},{scale})"),
            Self::AnyNumeric => "numeric".into(),
        }
    }

    /// The type this column must become to hold what the source now declares, if it cannot
    /// already. Never narrower (older rows keep fitting), and never a table rewrite for a
    /// decimal: more integer digits at the same scale raise the precision (metadata only),
    /// a larger scale makes the column unconstrained `numeric` (metadata only too, and
    /// every value exact); integer -> bigint has to rewrite the table.
    fn widened_for(self, source: SourceType) -> Option<Self> {
        match (self, source) {
            (Self::Integer, SourceType::Bigint) => Some(Self::Bigint),
            (Self::Numeric { .. }, SourceType::AnyNumeric) => Some(Self::AnyNumeric),
            (Self::Numeric { precision, scale }, SourceType::Numeric { precision: p, scale: s }) => {
                let (digits, wanted) = (precision.saturating_sub(scale), p.saturating_sub(s));
                if s > scale {
                    Some(Self::AnyNumeric)
                } else if wanted > digits {
                    Some(Self::Numeric { precision: wanted + scale, scale })
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    /// Why `value` does not fit this column as it is (PostgreSQL would refuse it, or round a
    /// decimal to the column's scale: a changed value, never written).
    fn misfit(self, value: &Value) -> Option<String> {
        match (self, value) {
            (Self::Integer, Value::Int(v)) if i32::try_from(*v).is_err() => Some(format!("{v} is out of range for integer")),
            (Self::Numeric { precision, scale }, Value::Numeric(d)) => {
                let integer_digits = d.trunc().abs().to_string().trim_start_matches('0').len() as u32;
                (d.normalize().scale() > scale || integer_digits > precision.saturating_sub(scale))
                    .then(|| format!("{d} does not fit numeric({precision},{scale})"))
            }
            _ => None,
        }
    }
}

/// The upsert of one shape; with `audit`, a data-modifying CTE that also appends every
/// change of the group to the apply log in the same statement (so the log row is durable
/// exactly when the change is), its outcome taken from what the upsert returned.
fn upsert_sql(entity: Entity, shape: &Shape, audit: bool) -> String {
    let columns = entity.columns();
    let mut names: Vec<String> = vec![ident("id")];
    let mut types: Vec<String> = vec!["uuid[]".into()];
    for &i in &shape.known {
        names.push(ident(columns[i].name));
        types.push(param_type(columns[i].ty).into());
    }
    for name in &shape.extra {
        names.push(ident(name));
        types.push("text[]".into());
    }
    let data: Vec<String> = names[1..].to_vec();
    for (name, ty) in [
        ("_cdc_lsn", "int8[]"),
        ("_cdc_source_ts", "timestamptz[]"),
        ("_cdc_op", "text[]"),
        ("_cdc_partition", "int4[]"),
        ("_cdc_offset", "int8[]"),
        ("_cdc_commit", "int8[]"),
        ("_cdc_epoch", "int4[]"),
        ("_cdc_snapshot", "bool[]"),
    ] {
        names.push(name.into());
        types.push(ty.into());
    }
    let params: Vec<String> = types.iter().enumerate().map(|(i, t)| format!("${}::{t}", i + 1)).collect();
    let mut sets: Vec<String> = data.iter().map(|c| format!("{c} = excluded.{c}")).collect();
    sets.extend(
        ["_cdc_lsn", "_cdc_source_ts", "_cdc_op", "_cdc_partition", "_cdc_offset", "_cdc_deleted", "_cdc_commit", "_cdc_epoch", "_cdc_snapshot"]
            .iter()
            .map(|c| format!("{c} = excluded.{c}")),
    );
    sets.push("_cdc_applied_at = clock_timestamp()".into());
    let upsert = format!(
        "INSERT INTO {table} AS t ({names}, _cdc_deleted) SELECT u.*, {deleted} FROM UNNEST({params}) AS u \
         ON CONFLICT (id) DO UPDATE SET {sets} WHERE {VERSION_GUARD} RETURNING t.id",
        table = table_name(entity),
        names = names.join(", "),
        deleted = shape.delete,
        params = params.join(", "),
        sets = sets.join(", "),
    );
    if !audit {
        return upsert;
    }
    let n = types.len();
    let log_params: Vec<String> =
        ["uuid[]", "int8[]", "text[]", "bool[]", "int4[]", "int8[]", "timestamptz[]", "timestamptz[]", "int8[]", "int4[]", "bool[]", "int8[]"]
            .iter()
            .enumerate()
            .map(|(i, t)| format!("${}::{t}", n + i + 1))
            .collect();
    format!(
        "WITH up AS ({upsert}), logged AS (INSERT INTO {APPLY_LOG_TABLE} \
         (entity, key, version, op, outcome, kafka_partition, kafka_offset, kafka_ts, source_ts, version_commit, epoch, snapshot, tx_id) \
         SELECT '{entity}', l.key, l.version, l.op, \
         CASE WHEN NOT l.latest THEN 'superseded' WHEN up.id IS NULL THEN 'stale' ELSE 'applied' END, \
         l.part, l.off, l.kts, l.sts, l.vc, l.ep, l.snap, l.tx FROM UNNEST({log}) AS l(key, version, op, latest, part, off, kts, sts, vc, ep, snap, tx) \
         LEFT JOIN up ON up.id = l.key) SELECT id FROM up",
        entity = entity.table(),
        log = log_params.join(", "),
    )
}

/// Parameter arrays of the apply log rows: the group's changes (latest = true) and the
/// in-batch changes they superseded.
#[derive(Default)]
struct LogArrays {
    key: Vec<Uuid>,
    version: VersionArrays,
    op: Vec<&'static str>,
    latest: Vec<bool>,
    partition: Vec<i32>,
    offset: Vec<i64>,
    kafka_ts: Vec<Option<DateTime<Utc>>>,
    source_ts: Vec<Option<DateTime<Utc>>>,
    tx_id: Vec<Option<i64>>,
}

impl LogArrays {
    fn push(&mut self, change: &Change, latest: bool) {
        self.key.push(change.key);
        self.version.push(&change.version);
        self.op.push(change.op.code());
        self.latest.push(latest);
        self.partition.push(change.coords.partition);
        self.offset.push(change.coords.offset);
        self.kafka_ts.push(change.coords.timestamp);
        self.source_ts.push(change.source_ts);
        self.tx_id.push(change.tx_id);
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 12] {
        let v = &self.version;
        [
            &self.key,
            &v.lsn,
            &self.op,
            &self.latest,
            &self.partition,
            &self.offset,
            &self.kafka_ts,
            &self.source_ts,
            &v.commit,
            &v.epoch,
            &v.snapshot,
            &self.tx_id,
        ]
    }
}

impl PostgresSink {
    pub async fn connect(target: &TargetConfig, audit: bool) -> Result<Self, TargetError> {
        let settings: &PostgresConfig = &target.postgres;
        let pool = Pool::new(target, settings)?;
        let sink = Self { pool, audit, added: Mutex::new(BTreeMap::new()), stored: Mutex::new(BTreeMap::new()) };
        sink.prepare().await?;
        Ok(sink)
    }

    /// Creates the tables if missing and learns which columns were added earlier.
    async fn prepare(&self) -> Result<(), TargetError> {
        let mut lease = self.pool.get().await?;
        let client = &lease.conn().client;
        let mut added = self.added.lock().await;
        if self.audit {
            client.batch_execute(APPLY_LOG_SQL).await?;
            client.batch_execute(APPLY_LOG_MIGRATION).await?;
        }
        for entity in Entity::ALL {
            let table = table_name(entity);
            client.batch_execute(&create_table_sql(entity)).await?;
            client.batch_execute(&commit_migration_sql(&table)).await?;
            client.batch_execute(&format!("ALTER TABLE {table} {VERSION_MIGRATION}")).await?;
            client.batch_execute(&format!("CREATE INDEX IF NOT EXISTS {table}_tombstones ON {table} (_cdc_applied_at) WHERE _cdc_deleted")).await?;
            let rows = client
                .query(
                    "SELECT column_name::text, data_type::text, numeric_precision::int, numeric_scale::int FROM information_schema.columns \
                     WHERE table_schema = current_schema() AND table_name = $1",
                    &[&table],
                )
                .await?;
            let extra = added.entry(entity).or_default();
            let mut stored = self.stored.lock().await;
            for row in rows {
                let name: String = row.get(0);
                match entity.columns().iter().find(|c| c.name == name) {
                    Some(column) => {
                        if let Some(ty) = Stored::of_catalog(&row.get::<_, String>(1), row.get(2), row.get(3)) {
                            stored.insert((entity, column.name), ty);
                        }
                    }
                    None if !name.starts_with("_cdc_") => {
                        extra.insert(name);
                    }
                    None => {}
                }
            }
        }
        Ok(())
    }

    pub async fn ensure_columns(&self, entity: Entity, columns: &[String]) -> Result<(), TargetError> {
        let mut added = self.added.lock().await;
        let have = added.entry(entity).or_default();
        let missing: Vec<&String> = columns.iter().filter(|c| !have.contains(*c)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let mut lease = self.pool.get().await?;
        for column in missing {
            // Added columns are stored as text: every JSON value has a text form, so a later
            // type change in the source never makes a row unstorable.
            let sql = format!("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} text", table_name(entity), ident(column));
            within_deadline!(self.pool, lease, "add_column", lease.conn().client.batch_execute(&sql).await)?;
            have.insert(column.clone());
        }
        Ok(())
    }

    /// Widens known columns to what the events' schemas now declare (a source type change:
    /// integer -> bigint, a decimal with more digits or a larger scale), each ALTER bounded
    /// by `WIDEN_LOCK_TIMEOUT`, then sets apart the changes with a value the column still
    /// cannot hold: the source did not declare a wider type (or sent no schema), so the value
    /// is the event's fault (a `decode` dead letter), never a reason to rewrite the table.
    async fn admit<'c>(&self, entity: Entity, changes: &'c [Change]) -> Result<(Vec<&'c Change>, Vec<(Uuid, String)>), TargetError> {
        let mut stored = self.stored.lock().await;
        let current = |stored: &BTreeMap<(Entity, &'static str), Stored>, i: usize| {
            let column = &entity.columns()[i];
            stored.get(&(entity, column.name)).copied().or_else(|| Stored::created(column.ty))
        };
        let mut wanted: BTreeMap<usize, Stored> = BTreeMap::new();
        for row in changes.iter().filter_map(|c| c.after.as_ref()) {
            for (&i, &source) in &row.source_types {
                let now = wanted.get(&i).copied().or_else(|| current(&stored, i));
                if let Some(wider) = now.and_then(|t| t.widened_for(source)) {
                    wanted.insert(i, wider);
                }
            }
        }
        for (i, ty) in wanted {
            let column = entity.columns()[i].name;
            // SET LOCAL: the implicit transaction of this one query string ends with it.
            let sql =
                format!("SET LOCAL lock_timeout = '{WIDEN_LOCK_TIMEOUT}'; ALTER TABLE {} ALTER COLUMN {} TYPE {}", table_name(entity), ident(column), ty.sql());
            let mut lease = self.pool.get().await?;
            within_deadline!(self.pool, lease, "widen_column", lease.conn().client.batch_execute(&sql).await)?;
            tracing::warn!(message = "target column widened: the source declares a wider type", entity = %entity, column, to = %ty.sql());
            stored.insert((entity, column), ty);
        }
        let mut admitted = Vec::with_capacity(changes.len());
        let mut misfits = Vec::new();
        for change in changes {
            let misfit = change.after.as_ref().and_then(|row| {
                row.known.iter().enumerate().find_map(|(i, field)| match field {
                    Some(Field::Value(value)) => current(&stored, i)?.misfit(value).map(|why| format!("column {}: {why}", entity.columns()[i].name)),
                    _ => None,
                })
            });
            match misfit {
                Some(why) => misfits.push((change.key, format!("value_out_of_range: {why} and the source declares no wider type"))),
                None => admitted.push(change),
            }
        }
        Ok((admitted, misfits))
    }

    /// `superseded`: in-batch changes subsumed by one of `latest` (logged in audit mode).
    pub async fn apply(&self, entity: Entity, latest: &[Change], superseded: &[Change]) -> Result<ApplyReport, TargetError> {
        let (latest, out_of_range) = self.admit(entity, latest).await?;
        let mut groups: BTreeMap<Shape, Vec<&Change>> = BTreeMap::new();
        for change in latest {
            groups.entry(shape_of(change)).or_default().push(change);
        }
        let mut older: BTreeMap<Uuid, Vec<&Change>> = BTreeMap::new();
        for change in superseded {
            older.entry(change.key).or_default().push(change);
        }
        let mut report = ApplyReport { out_of_range, ..ApplyReport::default() };
        for (shape, rows) in groups {
            match self.apply_group(entity, &shape, &rows, &older).await {
                Ok(applied) => split(&rows, &applied, &mut report),
                Err(e) if e.is_retriable() => return Err(e),
                Err(e) if rows.len() == 1 => report.rejected.push((rows[0].key, e.to_string())),
                // One bad row fails the whole statement: find it row by row, keep the rest.
                Err(_) => {
                    for row in rows {
                        match self.apply_group(entity, &shape, &[row], &older).await {
                            Ok(applied) => split(&[row], &applied, &mut report),
                            Err(e) if e.is_retriable() => return Err(e),
                            Err(e) => report.rejected.push((row.key, e.to_string())),
                        }
                    }
                }
            }
        }
        Ok(report)
    }

    async fn apply_group(&self, entity: Entity, shape: &Shape, rows: &[&Change], older: &BTreeMap<Uuid, Vec<&Change>>) -> Result<HashSet<Uuid>, TargetError> {
        let columns = entity.columns();
        let n = rows.len();
        let mut ids = Vec::with_capacity(n);
        let mut data: Vec<Array> = shape.known.iter().map(|&i| Array::new(columns[i].ty, n)).collect();
        let mut extra: Vec<Vec<Option<String>>> = vec![Vec::with_capacity(n); shape.extra.len()];
        let mut version = VersionArrays::default();
        let (mut source_ts, mut op, mut partition, mut offset) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        for change in rows {
            ids.push(change.key);
            if let Some(row) = &change.after {
                for (array, &i) in data.iter_mut().zip(&shape.known) {
                    match &row.known[i] {
                        Some(Field::Value(v)) => array.push(v),
                        _ => array.push_null(),
                    }
                }
                for (array, name) in extra.iter_mut().zip(&shape.extra) {
                    array.push(row.extra.get(name).and_then(|e| e.text.clone()));
                }
            }
            version.push(&change.version);
            source_ts.push(change.source_ts);
            op.push(change.op.code());
            partition.push(change.coords.partition);
            offset.push(change.coords.offset);
        }
        let offset = Array::Int8(offset);
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&ids];
        params.extend(data.iter().map(Array::as_sql));
        params.extend(extra.iter().map(|e| e as &(dyn ToSql + Sync)));
        params.extend([&version.lsn as &(dyn ToSql + Sync), &source_ts, &op, &partition, offset.as_sql(), &version.commit, &version.epoch, &version.snapshot]);
        let mut log = LogArrays::default();
        if self.audit {
            for change in rows {
                log.push(change, true);
                for old in older.get(&change.key).into_iter().flatten() {
                    log.push(old, false);
                }
            }
            params.extend(log.params());
        }

        let sql = upsert_sql(entity, shape, self.audit);
        let mut lease = self.pool.get().await?;
        let returned = within_deadline!(self.pool, lease, "apply", {
            let conn = lease.conn();
            let statement = conn.statement(&sql).await?;
            conn.client.query(&statement, &params).await
        })?;
        Ok(returned.iter().map(|r| r.get::<_, Uuid>(0)).collect())
    }

    /// Apply log rows of events that wrote nothing (dead-lettered, ignored).
    pub async fn log(&self, entity: Entity, entries: &[LogEntry]) -> Result<(), TargetError> {
        let sql = format!(
            "INSERT INTO {APPLY_LOG_TABLE} (entity, key, version, op, outcome, kafka_partition, kafka_offset, kafka_ts, source_ts, rule, version_commit, epoch, snapshot, tx_id) \
             SELECT $1, * FROM UNNEST($2::uuid[], $3::int8[], $4::text[], $5::text[], $6::int4[], $7::int8[], $8::timestamptz[], $9::timestamptz[], $10::text[], \
             $11::int8[], $12::int4[], $13::bool[], $14::int8[])"
        );
        let key: Vec<Option<Uuid>> = entries.iter().map(|e| e.key).collect();
        let version: Vec<Option<i64>> = entries.iter().map(|e| e.version.map(|v| v.lsn)).collect();
        let commit: Vec<Option<i64>> = entries.iter().map(|e| e.version.and_then(|v| v.commit)).collect();
        let epoch: Vec<Option<i32>> = entries.iter().map(|e| e.version.map(|v| v.epoch)).collect();
        let snapshot: Vec<Option<bool>> = entries.iter().map(|e| e.version.map(|v| v.snapshot)).collect();
        let op: Vec<Option<&str>> = entries.iter().map(|e| e.op).collect();
        let outcome: Vec<&str> = entries.iter().map(|e| e.outcome.name()).collect();
        let partition: Vec<i32> = entries.iter().map(|e| e.partition).collect();
        let offset: Vec<i64> = entries.iter().map(|e| e.offset).collect();
        let kafka_ts: Vec<Option<DateTime<Utc>>> = entries.iter().map(|e| e.kafka_ts).collect();
        let source_ts: Vec<Option<DateTime<Utc>>> = entries.iter().map(|e| e.source_ts).collect();
        let rule: Vec<Option<&str>> = entries.iter().map(|e| e.rule.as_deref()).collect();
        let tx_id: Vec<Option<i64>> = entries.iter().map(|e| e.tx_id).collect();
        let mut lease = self.pool.get().await?;
        within_deadline!(self.pool, lease, "apply_log", {
            let conn = lease.conn();
            let statement = conn.statement(&sql).await?;
            conn.client
                .execute(
                    &statement,
                    &[&entity.table(), &key, &version, &op, &outcome, &partition, &offset, &kafka_ts, &source_ts, &rule, &commit, &epoch, &snapshot, &tx_id],
                )
                .await
        })?;
        Ok(())
    }

    pub async fn existing(&self, entity: Entity, ids: &[Uuid]) -> Result<HashSet<Uuid>, TargetError> {
        let sql = format!("SELECT id FROM {} WHERE id = ANY($1::uuid[])", table_name(entity));
        let mut lease = self.pool.get().await?;
        let rows = within_deadline!(self.pool, lease, "lookup", {
            let conn = lease.conn();
            let statement = conn.statement(&sql).await?;
            conn.client.query(&statement, &[&ids]).await
        })?;
        Ok(rows.iter().map(|r| r.get::<_, Uuid>(0)).collect())
    }

    pub async fn ping(&self) -> Result<(), TargetError> {
        let mut lease = self.pool.get().await?;
        within_deadline!(self.pool, lease, "ping", lease.conn().client.simple_query("SELECT 1").await)?;
        Ok(())
    }

    pub async fn purge_tombstones(&self, entity: Entity, older_than: Duration) -> Result<u64, TargetError> {
        let sql = format!("DELETE FROM {} WHERE _cdc_deleted AND _cdc_applied_at < clock_timestamp() - $1::float8 * interval '1 second'", table_name(entity));
        let mut lease = self.pool.get().await?;
        within_deadline!(self.pool, lease, "purge_tombstones", lease.conn().client.execute(&sql, &[&older_than.as_secs_f64()]).await)
    }
}

fn split(rows: &[&Change], applied: &HashSet<Uuid>, report: &mut ApplyReport) {
    for row in rows {
        if applied.contains(&row.key) {
            report.applied.push(row.key);
        } else {
            report.stale.push(row.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Widening follows what the source declares, never narrows, and never rewrites a
    /// decimal column (a larger scale becomes unconstrained numeric); a value the column
    /// cannot hold is a misfit (PostgreSQL would refuse it or round it).
    #[test]
    fn widening_follows_the_declared_source_type() {
        let money = Stored::Numeric { precision: 12, scale: 2 };
        assert_eq!(Stored::Integer.widened_for(SourceType::Bigint), Some(Stored::Bigint));
        assert_eq!(Stored::Integer.widened_for(SourceType::Integer), None);
        assert_eq!(Stored::Bigint.widened_for(SourceType::Integer), None, "never narrower");
        assert_eq!(money.widened_for(SourceType::Numeric { precision: 14, scale: 2 }), Some(Stored::Numeric { precision: 14, scale: 2 }));
        assert_eq!(money.widened_for(SourceType::Numeric { precision: 14, scale: 4 }), Some(Stored::AnyNumeric));
        assert_eq!(money.widened_for(SourceType::Numeric { precision: 10, scale: 2 }), None);
        assert_eq!(money.widened_for(SourceType::Numeric { precision: 11, scale: 1 }), None, "10 integer digits fit in 12,2");
        assert_eq!(money.widened_for(SourceType::Numeric { precision: 13, scale: 1 }), Some(Stored::Numeric { precision: 14, scale: 2 }));
        assert_eq!(money.widened_for(SourceType::AnyNumeric), Some(Stored::AnyNumeric));
        assert_eq!(Stored::AnyNumeric.widened_for(SourceType::Numeric { precision: 30, scale: 9 }), None);
        let d = |s: &str| Value::Numeric(s.parse().unwrap());
        assert!(money.misfit(&d("1234567890.12")).is_none());
        assert!(money.misfit(&d("1.10")).is_none(), "trailing zeros are not scale");
        assert!(money.misfit(&d("1.005")).is_some(), "would be rounded");
        assert!(money.misfit(&d("12345678901.5")).is_some(), "too many integer digits");
        assert!(Stored::AnyNumeric.misfit(&d("1.00000001")).is_none());
        assert!(Stored::Integer.misfit(&Value::Int(1 << 31)).is_some());
        assert!(Stored::Bigint.misfit(&Value::Int(1 << 40)).is_none());
        assert_eq!(Stored::of_catalog("numeric", Some(14), Some(4)), Some(Stored::Numeric { precision: 14, scale: 4 }));
        assert_eq!(Stored::of_catalog("numeric", None, None), Some(Stored::AnyNumeric));
        assert_eq!(Stored::of_catalog("text", None, None), None);
    }

    #[test]
    fn table_layout_has_the_cdc_columns() {
        let sql = create_table_sql(Entity::Orders);
        assert!(sql.starts_with("CREATE TABLE IF NOT EXISTS orders_materialized (\"id\" uuid PRIMARY KEY"));
        assert!(sql.contains("\"total_amount\" numeric(12,2)"));
        assert!(sql.contains("_cdc_applied_at timestamptz not null default clock_timestamp()"));
    }

    #[test]
    fn upsert_is_one_guarded_unnest_statement() {
        let shape = Shape { delete: false, known: vec![1, 2], extra: vec!["tier".into()] };
        let sql = upsert_sql(Entity::Customer, &shape, false);
        assert!(sql.contains("UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int8[]"), "{sql}");
        assert!(sql.contains("\"tier\" = excluded.\"tier\""));
        assert!(sql.contains(&format!("WHERE {VERSION_GUARD} RETURNING t.id")));
        assert!(!sql.contains("updated_at"), "columns not carried are left untouched: {sql}");
    }

    #[test]
    fn audited_upsert_logs_in_the_same_statement() {
        let shape = Shape { delete: false, known: vec![1], extra: vec![] };
        let sql = upsert_sql(Entity::Customer, &shape, true);
        assert!(sql.starts_with("WITH up AS (INSERT INTO customer_materialized"), "{sql}");
        // id, email, then 8 CDC arrays = 10 parameters before the 12 log arrays.
        assert!(
            sql.contains(
                "UNNEST($11::uuid[], $12::int8[], $13::text[], $14::bool[], $15::int4[], $16::int8[], $17::timestamptz[], $18::timestamptz[], $19::int8[], $20::int4[], $21::bool[], $22::int8[])"
            ),
            "{sql}"
        );
        assert!(sql.contains("WHEN up.id IS NULL THEN 'stale' ELSE 'applied'"), "{sql}");
        assert!(sql.ends_with("SELECT id FROM up"), "{sql}");
    }
}
