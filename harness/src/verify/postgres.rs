//! Reading a PostgreSQL target (and the PostgreSQL source) for the verifier: ordered full
//! scans through `COPY ... TO STDOUT`, and keyed look-ups with the evidence the anomaly
//! classification needs.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_postgres::Client;

use super::copy_stream::CopyLines;
use super::mapping::Entity;
use super::{SourceRecord, TargetRecord, VerifyError};

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The source table, quoted: `schema.table` as written in the mapping, else found through
/// the source connection's search path (the stack's workload schema).
pub(super) fn source_relation(entity: &Entity) -> String {
    match entity.source_table.split_once('.') {
        Some((schema, table)) => format!("{}.{}", ident(schema), ident(table)),
        None => ident(&entity.source_table),
    }
}

fn column_list(entity: &Entity) -> String {
    entity.columns.iter().map(|c| ident(&c.name)).collect::<Vec<_>>().join(", ")
}

/// The target's columns in the source's order; a column the target lacks reads as null.
fn target_column_list(entity: &Entity) -> String {
    entity.columns.iter().map(|c| if c.absent_in_target { "NULL::text".to_string() } else { ident(c.target()) }).collect::<Vec<_>>().join(", ")
}

fn text_column_list(entity: &Entity, alias: &str, target: bool) -> String {
    entity
        .columns
        .iter()
        .map(|c| match (target, c.absent_in_target) {
            (true, true) => "NULL::text".to_string(),
            (true, false) => format!("{alias}.{}::text", ident(c.target())),
            (false, _) => format!("{alias}.{}::text", ident(&c.name)),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The source table's live columns in attribute order: name, type name (a domain's base
/// type), and the type as written (`numeric(10,2)`). Empty when the table does not exist.
pub(super) async fn source_columns(client: &Client, entity: &Entity) -> Result<Vec<super::columns::SourceColumn>, VerifyError> {
    let sql = "SELECT a.attname::text, coalesce(b.typname, t.typname)::text, format_type(a.atttypid, a.atttypmod) \
               FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid LEFT JOIN pg_type b ON b.oid = t.typbasetype \
               WHERE a.attrelid = to_regclass($1)::oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum";
    let rows = client.query(sql, &[&source_relation(entity)]).await.map_err(VerifyError::source_pg)?;
    Ok(rows.iter().map(|r| super::columns::SourceColumn { name: r.get(0), typname: r.get(1), declared: r.get(2) }).collect())
}

/// The names of the target table's live columns (empty when it does not exist).
pub(super) async fn target_columns(client: &Client, entity: &Entity) -> Result<Vec<String>, VerifyError> {
    let sql = "SELECT attname::text FROM pg_attribute WHERE attrelid = to_regclass($1)::oid AND attnum > 0 AND NOT attisdropped";
    let rows = client.query(sql, &[&ident(&entity.postgres.table)]).await.map_err(VerifyError::target_pg)?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Rows of the source table ordered by key: `key \t col... ` in COPY text format.
pub async fn scan_source(client: &Client, entity: &Entity) -> Result<CopyLines, VerifyError> {
    let sql = format!("COPY (SELECT {} FROM {} ORDER BY {}) TO STDOUT", column_list(entity), source_relation(entity), ident(&entity.key().name));
    Ok(CopyLines::new(client.copy_out(sql.as_str()).await.map_err(VerifyError::source_pg)?))
}

/// Rows of the target table ordered by key, tombstones included, with `_cdc_deleted` last.
pub async fn scan_target(client: &Client, entity: &Entity) -> Result<CopyLines, VerifyError> {
    let sql = format!(
        "COPY (SELECT {}, _cdc_deleted FROM {} ORDER BY {}) TO STDOUT",
        target_column_list(entity),
        ident(&entity.postgres.table),
        ident(&entity.key().name)
    );
    Ok(CopyLines::new(client.copy_out(sql.as_str()).await.map_err(VerifyError::target_pg)?))
}

/// Source rows for `keys`, with their commit time (needs `track_commit_timestamp`).
pub async fn fetch_source(client: &Client, entity: &Entity, keys: &[String]) -> Result<HashMap<String, SourceRecord>, VerifyError> {
    let commit_ts = "pg_xact_commit_timestamp(s.xmin)";
    let build = |with_commit: bool| {
        format!(
            "SELECT {}, {}, to_jsonb(s), s.xmin::text FROM {} s WHERE s.{} = ANY($1::text[]::uuid[])",
            text_column_list(entity, "s", false),
            if with_commit { commit_ts } else { "NULL::timestamptz" },
            source_relation(entity),
            ident(&entity.key().name)
        )
    };
    let rows = match client.query(build(true).as_str(), &[&keys]).await {
        Ok(rows) => rows,
        // Without track_commit_timestamp the classification falls back to values only.
        Err(_) => client.query(build(false).as_str(), &[&keys]).await.map_err(VerifyError::source_pg)?,
    };
    let n = entity.columns.len();
    let mut out = HashMap::with_capacity(rows.len());
    for row in rows {
        let values: Vec<Option<String>> = (0..n).map(|i| row.get(i)).collect();
        let committed: Option<DateTime<Utc>> = row.get(n);
        let json: Value = row.get(n + 1);
        let key = values[0].clone().unwrap_or_default();
        out.insert(key, SourceRecord { values, committed_at: committed, xid: row.get(n + 2), row: json });
    }
    Ok(out)
}

/// When the source deleted each of `keys` (from the harness's delete ledger), if it did.
pub async fn fetch_deletions(client: &Client, entity: &Entity, keys: &[String]) -> HashMap<String, Option<DateTime<Utc>>> {
    let sql = "SELECT id::text, pg_xact_commit_timestamp(((xid::text::numeric % 4294967296)::bigint)::text::xid) \
               FROM harness.deleted_keys WHERE table_name = $1 AND id = ANY($2::text[]::uuid[])";
    // The ledger names tables as the trigger sees them (`TG_TABLE_NAME`): without a schema.
    let table = entity.source_table.rsplit('.').next().unwrap_or_default();
    match client.query(sql, &[&table, &keys]).await {
        Ok(rows) => rows.into_iter().map(|r| (r.get::<_, String>(0), r.get::<_, Option<DateTime<Utc>>>(1))).collect(),
        // A source without the ledger (an external stack): deletes cannot be told apart.
        Err(_) => HashMap::new(),
    }
}

/// Every target record (duplicates included) for `keys`, with CDC metadata.
pub async fn fetch_target(client: &Client, entity: &Entity, keys: &[String]) -> Result<HashMap<String, Vec<TargetRecord>>, VerifyError> {
    let sql = format!(
        "SELECT {}, t._cdc_deleted, t._cdc_source_ts, t._cdc_applied_at, to_jsonb(t) FROM {} t WHERE t.{} = ANY($1::text[]::uuid[])",
        text_column_list(entity, "t", true),
        ident(&entity.postgres.table),
        ident(&entity.key().name)
    );
    let rows = client.query(sql.as_str(), &[&keys]).await.map_err(VerifyError::target_pg)?;
    let n = entity.columns.len();
    let mut out: HashMap<String, Vec<TargetRecord>> = HashMap::new();
    for row in rows {
        let values: Vec<Option<String>> = (0..n).map(|i| row.get(i)).collect();
        let key = values[0].clone().unwrap_or_default();
        let record: Value = row.get(n + 3);
        let int = |name: &str| record.get(name).and_then(Value::as_i64);
        let position = int("_cdc_partition").and_then(|p| i32::try_from(p).ok()).zip(int("_cdc_offset"));
        let lsn = int("_cdc_lsn");
        out.entry(key).or_default().push(TargetRecord {
            values,
            deleted: row.get(n),
            source_ts: row.get(n + 1),
            applied_at: row.get(n + 2),
            position,
            lsn,
            record,
        });
    }
    Ok(out)
}

/// Commit -> applied latency in ms of the latest change per key (snapshot reads excluded),
/// for changes committed at or after `since`. Returns [count, p50, p90, p95, p99, max].
/// `percentile_disc` is nearest rank, the method `run::percentiles` uses.
pub async fn latency(client: &Client, entities: &[&Entity], since: Option<DateTime<Utc>>) -> Result<Vec<f64>, VerifyError> {
    let union = entities
        .iter()
        .map(|e| {
            format!(
                "SELECT (extract(epoch FROM _cdc_applied_at - _cdc_source_ts) * 1000)::float8 AS l FROM {} \
                 WHERE _cdc_op <> 'r' AND _cdc_source_ts IS NOT NULL AND ($1::timestamptz IS NULL OR _cdc_source_ts >= $1)",
                ident(&e.postgres.table)
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let sql = format!(
        "SELECT count(*)::float8, coalesce(percentile_disc(ARRAY[0.5, 0.9, 0.95, 0.99]) WITHIN GROUP (ORDER BY l), ARRAY[0,0,0,0]::float8[]), coalesce(max(l), 0)::float8 FROM ({union}) s"
    );
    let row = client.query_one(sql.as_str(), &[&since]).await.map_err(VerifyError::target_pg)?;
    let count: f64 = row.get(0);
    let pcts: Vec<f64> = row.get(1);
    let max: f64 = row.get(2);
    Ok([vec![count], pcts, vec![max]].concat())
}
