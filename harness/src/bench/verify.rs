//! `harness bench verify --rows N`: N rows of the schema in source and an identical
//! PostgreSQL target, the verifier over them, and the raw limit of just reading both sides
//! (`COPY ... TO STDOUT`, concurrently) in the same run.

use std::time::Instant;

use futures::{SinkExt, StreamExt};
use serde::Serialize;

use crate::orchestrator::PgEndpoint;
use crate::testing::TestPostgres;
use crate::verify::mapping::Mapping;
use crate::verify::{VerifyOptions, verify_postgres};

#[derive(Debug, Serialize)]
pub struct VerifyBench {
    pub rows: u64,
    pub load_seconds: f64,
    pub verify_seconds: f64,
    /// Source rows compared with their target rows, per second.
    pub rows_per_sec: f64,
    pub raw_read_seconds: f64,
    /// Source rows per second when only reading both sides.
    pub raw_read_rows_per_sec: f64,
    pub ratio_to_raw: f64,
    /// Absent where /proc does not tell.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_mb: Option<f64>,
    pub converged: bool,
    pub differences: u64,
}

pub async fn run(rows: u64) -> anyhow::Result<VerifyBench> {
    let pg = TestPostgres::start("bench-verify").await?;
    eprintln!("bench verify: loading {rows} rows into source and target");
    let started = Instant::now();
    load(&pg.endpoint, rows).await?;
    let load_seconds = started.elapsed().as_secs_f64();

    let started = Instant::now();
    raw_read(&pg.endpoint).await?;
    let raw_read_seconds = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let report = verify_postgres(&pg.endpoint, &VerifyOptions::default()).await?;
    let verify_seconds = started.elapsed().as_secs_f64();
    let compared: u64 = report.entities.iter().map(|e| e.source_count).sum();
    let differences = report.entities.iter().map(|e| e.missing_in_target + e.extra_in_target + e.mismatched + e.duplicates).sum();
    Ok(VerifyBench {
        rows: compared,
        load_seconds,
        verify_seconds,
        rows_per_sec: compared as f64 / verify_seconds,
        raw_read_seconds,
        raw_read_rows_per_sec: compared as f64 / raw_read_seconds,
        ratio_to_raw: raw_read_seconds / verify_seconds,
        peak_rss_mb: super::peak_rss_mb(),
        converged: report.converged,
        differences,
    })
}

/// N rows spread over the four tables (a quarter each), keys in random order, and the
/// target copied from the source through COPY with CDC metadata appended.
async fn load(pg: &PgEndpoint, rows: u64) -> anyhow::Result<()> {
    let per = (rows / 4).max(1) as i64;
    let source = pg.connect_source().await?;
    source
        .execute(
            "INSERT INTO customer SELECT gen_random_uuid(), 'c'||g||'@example.com', (ARRAY['active','inactive','blocked'])[1 + g % 3], now() - g * interval '1 second' FROM generate_series(1, $1::int8) g",
            &[&per],
        )
        .await?;
    source
        .execute(
            "INSERT INTO address SELECT gen_random_uuid(), c.id, 'billing', '1 Main St', 'Springfield', 'CA', '12345', 'US', true, now() FROM customer c",
            &[],
        )
        .await?;
    source.execute("INSERT INTO orders SELECT gen_random_uuid(), c.id, 'paid', 123.45, now(), now() FROM customer c", &[]).await?;
    source.execute("INSERT INTO order_item SELECT gen_random_uuid(), o.id, 'SKU-1', 'Thing', 3, 41.15, 123.45 FROM orders o", &[]).await?;
    source.batch_execute("ANALYZE").await?;
    let target = pg.connect_target().await?;
    target.batch_execute(include_str!("../../sql/target_layout.sql")).await?;
    for entity in &Mapping::builtin().entity {
        let columns = entity.columns.iter().map(|c| format!("\"{}\"", c.name)).collect::<Vec<_>>().join(", ");
        let out = source
            .copy_out(format!("COPY (SELECT {columns}, 1, now(), 'c', 0, 0, now(), false FROM public.{}) TO STDOUT", entity.source_table).as_str())
            .await?;
        let sink = target
            .copy_in(
                format!(
                    "COPY {} ({columns}, _cdc_lsn, _cdc_source_ts, _cdc_op, _cdc_partition, _cdc_offset, _cdc_applied_at, _cdc_deleted) FROM STDIN",
                    entity.postgres.table
                )
                .as_str(),
            )
            .await?;
        futures::pin_mut!(sink);
        futures::pin_mut!(out);
        while let Some(chunk) = out.next().await {
            sink.send(chunk?).await?;
        }
        sink.finish().await?;
    }
    target.batch_execute("ANALYZE").await?;
    Ok(())
}

/// Reads every table of both sides ordered by key, concurrently, discarding the rows.
async fn raw_read(pg: &PgEndpoint) -> anyhow::Result<()> {
    let source = pg.connect_source().await?;
    let target = pg.connect_target().await?;
    for entity in &Mapping::builtin().entity {
        let columns = entity.columns.iter().map(|c| format!("\"{}\"", c.name)).collect::<Vec<_>>().join(", ");
        let s = drain(&source, format!("COPY (SELECT {columns} FROM public.{} ORDER BY id) TO STDOUT", entity.source_table));
        let t = drain(&target, format!("COPY (SELECT {columns}, _cdc_deleted FROM {} ORDER BY id) TO STDOUT", entity.postgres.table));
        let (a, b) = tokio::join!(s, t);
        a?;
        b?;
    }
    Ok(())
}

async fn drain(client: &tokio_postgres::Client, sql: String) -> anyhow::Result<u64> {
    let stream = client.copy_out(sql.as_str()).await?;
    futures::pin_mut!(stream);
    let mut bytes = 0u64;
    while let Some(chunk) = stream.next().await {
        bytes += chunk?.len() as u64;
    }
    Ok(bytes)
}
