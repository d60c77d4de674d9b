//! Version-guarded apply into `<entity>_materialized`.
//!
//! A batch (already one change per key) is grouped by the set of columns its rows carry;
//! normally that is one group of complete upserts plus one of deletes, so a batch costs
//! one or two statements. Each group is one prepared
//! `INSERT ... SELECT FROM UNNEST(arrays) ON CONFLICT (id) DO UPDATE ... WHERE
//! t._cdc_lsn < excluded._cdc_lsn RETURNING id`: the returned ids were applied, the others
//! were stale. Rows that carry fewer columns (TOAST placeholders, dropped columns) form
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
use crate::model::{Change, ColumnType, Entity, Field, Value};
use crate::targets::{ApplyReport, TargetError};

pub fn table_name(entity: Entity) -> String {
    format!("{}_materialized", entity.table())
}

/// Quotes an identifier (column names of added columns come from the source).
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

const CDC_COLUMNS: &str = "_cdc_lsn bigint not null, _cdc_source_ts timestamptz, _cdc_op char(1) not null, \
     _cdc_partition int, _cdc_offset bigint, _cdc_applied_at timestamptz not null default clock_timestamp(), \
     _cdc_deleted boolean not null default false";

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

pub struct PostgresSink {
    pool: Pool,
    /// Columns added to each table beyond the known ones (so ALTER runs once per column).
    added: Mutex<BTreeMap<Entity, HashSet<String>>>,
}

/// One typed parameter array.
enum Array {
    Uuid(Vec<Option<Uuid>>),
    Text(Vec<Option<String>>),
    Bool(Vec<Option<bool>>),
    Int(Vec<Option<i32>>),
    Numeric(Vec<Option<Decimal>>),
    Timestamp(Vec<Option<DateTime<Utc>>>),
    Int8(Vec<i64>),
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

fn upsert_sql(entity: Entity, shape: &Shape) -> String {
    let columns = entity.columns();
    let mut names: Vec<String> = vec![ident("id")];
    let mut types: Vec<String> = vec!["uuid[]".into()];
    for &i in &shape.known {
        names.push(ident(columns[i].name));
        types.push(format!("{}[]", columns[i].ty.sql()));
    }
    for name in &shape.extra {
        names.push(ident(name));
        types.push("text[]".into());
    }
    let data: Vec<String> = names[1..].to_vec();
    for (name, ty) in
        [("_cdc_lsn", "int8[]"), ("_cdc_source_ts", "timestamptz[]"), ("_cdc_op", "text[]"), ("_cdc_partition", "int4[]"), ("_cdc_offset", "int8[]")]
    {
        names.push(name.into());
        types.push(ty.into());
    }
    let params: Vec<String> = types.iter().enumerate().map(|(i, t)| format!("${}::{t}", i + 1)).collect();
    let mut sets: Vec<String> = data.iter().map(|c| format!("{c} = excluded.{c}")).collect();
    sets.extend(["_cdc_lsn", "_cdc_source_ts", "_cdc_op", "_cdc_partition", "_cdc_offset", "_cdc_deleted"].iter().map(|c| format!("{c} = excluded.{c}")));
    sets.push("_cdc_applied_at = clock_timestamp()".into());
    format!(
        "INSERT INTO {table} AS t ({names}, _cdc_deleted) SELECT u.*, {deleted} FROM UNNEST({params}) AS u \
         ON CONFLICT (id) DO UPDATE SET {sets} WHERE t._cdc_lsn < excluded._cdc_lsn RETURNING t.id",
        table = table_name(entity),
        names = names.join(", "),
        deleted = shape.delete,
        params = params.join(", "),
        sets = sets.join(", "),
    )
}

impl PostgresSink {
    pub async fn connect(target: &TargetConfig) -> Result<Self, TargetError> {
        let settings: &PostgresConfig = &target.postgres;
        let pool = Pool::new(target, settings)?;
        let sink = Self { pool, added: Mutex::new(BTreeMap::new()) };
        sink.prepare().await?;
        Ok(sink)
    }

    /// Creates the tables if missing and learns which columns were added earlier.
    async fn prepare(&self) -> Result<(), TargetError> {
        let mut lease = self.pool.get().await?;
        let client = &lease.conn().client;
        let mut added = self.added.lock().await;
        for entity in Entity::ALL {
            let table = table_name(entity);
            client.batch_execute(&create_table_sql(entity)).await?;
            client.batch_execute(&format!("CREATE INDEX IF NOT EXISTS {table}_tombstones ON {table} (_cdc_applied_at) WHERE _cdc_deleted")).await?;
            let rows =
                client.query("SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1", &[&table]).await?;
            let known: HashSet<&str> = entity.columns().iter().map(|c| c.name).collect();
            let extra = added.entry(entity).or_default();
            for row in rows {
                let name: String = row.get(0);
                if !known.contains(name.as_str()) && !name.starts_with("_cdc_") {
                    extra.insert(name);
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
            lease.conn().client.batch_execute(&sql).await?;
            have.insert(column.clone());
        }
        Ok(())
    }

    pub async fn apply(&self, entity: Entity, latest: &[Change]) -> Result<ApplyReport, TargetError> {
        let mut groups: BTreeMap<Shape, Vec<&Change>> = BTreeMap::new();
        for change in latest {
            groups.entry(shape_of(change)).or_default().push(change);
        }
        let mut report = ApplyReport::default();
        for (shape, rows) in groups {
            match self.apply_group(entity, &shape, &rows).await {
                Ok(applied) => split(&rows, &applied, &mut report),
                Err(e) if e.is_retriable() => return Err(e),
                Err(e) if rows.len() == 1 => report.rejected.push((rows[0].key, e.to_string())),
                // One bad row fails the whole statement: find it row by row, keep the rest.
                Err(_) => {
                    for row in rows {
                        match self.apply_group(entity, &shape, &[row]).await {
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

    async fn apply_group(&self, entity: Entity, shape: &Shape, rows: &[&Change]) -> Result<HashSet<Uuid>, TargetError> {
        let columns = entity.columns();
        let n = rows.len();
        let mut ids = Vec::with_capacity(n);
        let mut data: Vec<Array> = shape.known.iter().map(|&i| Array::new(columns[i].ty, n)).collect();
        let mut extra: Vec<Vec<Option<String>>> = vec![Vec::with_capacity(n); shape.extra.len()];
        let (mut lsn, mut source_ts, mut op, mut partition, mut offset) =
            (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
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
            lsn.push(change.lsn);
            source_ts.push(change.source_ts);
            op.push(change.op.code());
            partition.push(change.coords.partition);
            offset.push(change.coords.offset);
        }
        let lsn = Array::Int8(lsn);
        let offset = Array::Int8(offset);
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&ids];
        params.extend(data.iter().map(Array::as_sql));
        params.extend(extra.iter().map(|e| e as &(dyn ToSql + Sync)));
        params.extend([lsn.as_sql(), &source_ts, &op, &partition, offset.as_sql()]);

        let sql = upsert_sql(entity, shape);
        let mut lease = self.pool.get().await?;
        let conn = lease.conn();
        let statement = conn.statement(&sql).await?;
        let returned = conn.client.query(&statement, &params).await?;
        Ok(returned.iter().map(|r| r.get::<_, Uuid>(0)).collect())
    }

    pub async fn existing(&self, entity: Entity, ids: &[Uuid]) -> Result<HashSet<Uuid>, TargetError> {
        let sql = format!("SELECT id FROM {} WHERE id = ANY($1::uuid[])", table_name(entity));
        let mut lease = self.pool.get().await?;
        let conn = lease.conn();
        let statement = conn.statement(&sql).await?;
        let rows = conn.client.query(&statement, &[&ids]).await?;
        Ok(rows.iter().map(|r| r.get::<_, Uuid>(0)).collect())
    }

    pub async fn ping(&self) -> Result<(), TargetError> {
        let mut lease = self.pool.get().await?;
        lease.conn().client.simple_query("SELECT 1").await?;
        Ok(())
    }

    pub async fn purge_tombstones(&self, entity: Entity, older_than: Duration) -> Result<u64, TargetError> {
        let sql = format!("DELETE FROM {} WHERE _cdc_deleted AND _cdc_applied_at < clock_timestamp() - $1::float8 * interval '1 second'", table_name(entity));
        let mut lease = self.pool.get().await?;
        Ok(lease.conn().client.execute(&sql, &[&older_than.as_secs_f64()]).await?)
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
        let sql = upsert_sql(Entity::Customer, &shape);
        assert!(sql.contains("UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int8[]"), "{sql}");
        assert!(sql.contains("\"tier\" = excluded.\"tier\""));
        assert!(sql.contains("WHERE t._cdc_lsn < excluded._cdc_lsn RETURNING t.id"));
        assert!(!sql.contains("updated_at"), "columns not carried are left untouched: {sql}");
    }
}
