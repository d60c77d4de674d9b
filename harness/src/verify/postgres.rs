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
fn source_relation(entity: &Entity) -> String {
    match entity.source_table.split_once('.') {
        Some((schema, table)) => format!("{}.{}", ident(schema), ident(table)),
        None => ident(&entity.source_table),
    }
}

fn column_list(entity: &Entity) -> String {
    entity.columns.iter().map(|c| ident(&c.name)).collect::<Vec<_>>().join(", ")
}

fn text_column_list(entity: &Entity, alias: &str) -> String {
    entity.columns.iter().map(|c| format!("{alias}.{}::text", ident(&c.name))).collect::<Vec<_>>().join(", ")
}

/// Rows of the source table ordered by key: `key \t col... ` in COPY text format.
pub async fn scan_source(client: &Client, entity: &Entity) -> Result<CopyLines, VerifyError> {
    let sql = format!("COPY (SELECT {} FROM {} ORDER BY {}) TO STDOUT", column_list(entity), source_relation(entity), ident(&entity.key().name));
    Ok(CopyLines::new(client.copy_out(sql.as_str()).await.map_err(VerifyError::source)?))
}

/// Rows of the target table ordered by key, tombstones included, with `_cdc_deleted` last.
pub async fn scan_target(client: &Client, entity: &Entity) -> Result<CopyLines, VerifyError> {
    let sql =
        format!("COPY (SELECT {}, _cdc_deleted FROM {} ORDER BY {}) TO STDOUT", column_list(entity), ident(&entity.postgres.table), ident(&entity.key().name));
    Ok(CopyLines::new(client.copy_out(sql.as_str()).await.map_err(VerifyError::target)?))
}

/// Source rows for `keys`, with their commit time (needs `track_commit_timestamp`).
pub async fn fetch_source(client: &Client, entity: &Entity, keys: &[String]) -> Result<HashMap<String, SourceRecord>, VerifyError> {
    let commit_ts = "pg_xact_commit_timestamp(s.xmin)";
    let build = |with_commit: bool| {
        format!(
            "SELECT {}, {}, to_jsonb(s) FROM {} s WHERE s.{} = ANY($1::text[]::uuid[])",
            text_column_list(entity, "s"),
            if with_commit { commit_ts } else { "NULL::timestamptz" },
            source_relation(entity),
            ident(&entity.key().name)
        )
    };
    let rows = match client.query(build(true).as_str(), &[&keys]).await {
        Ok(rows) => rows,
        // Without track_commit_timestamp the classification falls back to values only.
        Err(_) => client.query(build(false).as_str(), &[&keys]).await.map_err(VerifyError::source)?,
    };
    let n = entity.columns.len();
    let mut out = HashMap::with_capacity(rows.len());
    for row in rows {
        let values: Vec<Option<String>> = (0..n).map(|i| row.get(i)).collect();
        let committed: Option<DateTime<Utc>> = row.get(n);
        let json: Value = row.get(n + 1);
        let key = values[0].clone().unwrap_or_default();
        out.insert(key, SourceRecord { values, committed_at: committed, row: json });
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
        text_column_list(entity, "t"),
        ident(&entity.postgres.table),
        ident(&entity.key().name)
    );
    let rows = client.query(sql.as_str(), &[&keys]).await.map_err(VerifyError::target)?;
    let n = entity.columns.len();
    let mut out: HashMap<String, Vec<TargetRecord>> = HashMap::new();
    for row in rows {
        let values: Vec<Option<String>> = (0..n).map(|i| row.get(i)).collect();
        let key = values[0].clone().unwrap_or_default();
        out.entry(key).or_default().push(TargetRecord {
            values,
            deleted: row.get(n),
            source_ts: row.get(n + 1),
            applied_at: row.get(n + 2),
            record: row.get(n + 3),
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
    let row = client.query_one(sql.as_str(), &[&since]).await.map_err(VerifyError::target)?;
    let count: f64 = row.get(0);
    let pcts: Vec<f64> = row.get(1);
    let max: f64 = row.get(2);
    Ok([vec![count], pcts, vec![max]].concat())
}
