//! The verifier names exactly the anomaly that was put into a real target, and no other.
//! Targets here are built by copying the source with SQL (the layout the sink documents),
//! so these tests do not depend on the sink's code; `pipeline_target` checks the real sink.

use harness::orchestrator::PgEndpoint;
use harness::testing::TestPostgres;
use harness::verify::{AnomalyKind, VerifyOptions, VerifyReport, verify_postgres};
use tokio_postgres::Client;

struct Fixture {
    pg: TestPostgres,
    source: Client,
    target: Client,
}

/// Source with a few rows of every table; target materialized from it, all in agreement.
async fn fixture(name: &str) -> anyhow::Result<Fixture> {
    let pg = TestPostgres::start(name).await?;
    let source = pg.endpoint.connect("app").await?;
    let target = pg.endpoint.connect("sink").await?;
    target.batch_execute(include_str!("../../sql/target_layout.sql")).await?;
    source
        .batch_execute(
            "INSERT INTO customer SELECT md5('c'||g)::uuid, 'c'||g||'@example.com', 'active', now() FROM generate_series(1, 20) g;
             INSERT INTO address SELECT md5('a'||g)::uuid, md5('c'||g)::uuid, 'billing', g||' Main St', 'Springfield', NULL, '12345', 'US', true, now() FROM generate_series(1, 20) g;
             INSERT INTO orders SELECT md5('o'||g)::uuid, md5('c'||g)::uuid, 'pending', 10.50, now(), now() FROM generate_series(1, 20) g;
             INSERT INTO order_item SELECT md5('i'||g)::uuid, md5('o'||g)::uuid, 'SKU-'||g, 'Thing '||g, 1, 10.50, 10.50 FROM generate_series(1, 20) g;",
        )
        .await?;
    let f = Fixture { pg, source, target };
    for table in harness::config::TABLES {
        materialize(&f, table, None).await?;
    }
    Ok(f)
}

/// Copies `table` (or one key of it) from source to target as a perfect sink would:
/// values, the commit time as the version's source timestamp, applied now.
async fn materialize(f: &Fixture, table: &str, key: Option<&str>) -> anyhow::Result<()> {
    let filter = key.map(|k| format!("WHERE id = '{k}'")).unwrap_or_default();
    let rows =
        f.source.query(&format!("SELECT to_jsonb(t)::text, date_trunc('milliseconds', pg_xact_commit_timestamp(t.xmin)) FROM {table} t {filter}"), &[]).await?;
    for row in rows {
        let json: String = row.get(0);
        let committed: chrono::DateTime<chrono::Utc> = row.get(1);
        f.target
            .execute(
                &format!(
                    "INSERT INTO {table}_materialized SELECT (jsonb_populate_record(NULL::{table}_materialized,
                        $1::text::jsonb || jsonb_build_object('_cdc_lsn', 1, '_cdc_op', 'c', '_cdc_deleted', false, '_cdc_source_ts', $2::timestamptz, '_cdc_applied_at', clock_timestamp()))).*
                     ON CONFLICT (id) DO UPDATE SET _cdc_deleted = false"
                ),
                &[&json, &committed],
            )
            .await?;
    }
    Ok(())
}

async fn verify(pg: &PgEndpoint) -> anyhow::Result<VerifyReport> {
    Ok(verify_postgres(pg, &VerifyOptions::default()).await?)
}

/// Exactly one anomaly, of `kind`, on `key` of `entity`.
fn assert_only(report: &VerifyReport, kind: AnomalyKind, entity: &str, key: &str) {
    assert!(!report.converged, "a corrupted target must not converge");
    let total: u64 = report.anomaly_counts.values().sum();
    assert_eq!(total, 1, "exactly one anomaly expected, got {:?}", report.anomaly_counts);
    let a = &report.anomalies[0];
    assert_eq!((a.kind, a.entity.as_str(), a.key.as_str()), (kind, entity, key), "evidence: {}", a.evidence);
}

/// The fixture's key `md5(prefix || n)::uuid`, as SQL names it.
async fn key(f: &Fixture, prefix: &str, n: u32) -> anyhow::Result<String> {
    Ok(f.source.query_one("SELECT md5($1)::uuid::text", &[&format!("{prefix}{n}")]).await?.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untouched_target_converges_with_no_anomaly() -> anyhow::Result<()> {
    let f = fixture("verify-clean").await?;
    let report = verify(&f.pg.endpoint).await?;
    assert!(report.converged, "{report:#?}");
    assert!(report.anomaly_counts.is_empty());
    assert_eq!(report.entities.len(), 4);
    for e in &report.entities {
        assert_eq!((e.source_count, e.target_count, e.matching), (20, 20, 20), "{e:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_target_row_is_a_lost_change() -> anyhow::Result<()> {
    let f = fixture("verify-lost").await?;
    let k = key(&f, "o", 3).await?;
    f.target.execute("DELETE FROM orders_materialized WHERE id = $1::text::uuid", &[&k]).await?;
    let report = verify(&f.pg.endpoint).await?;
    assert_only(&report, AnomalyKind::LostChange, "orders", &k);
    assert_eq!(report.entities[2].missing_in_target, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_version_put_back_is_a_stale_overwrite() -> anyhow::Result<()> {
    let f = fixture("verify-stale").await?;
    let k = key(&f, "c", 5).await?;
    // The source moves on; the target got the newer version, then an old event overwrote
    // it (its older values and version, applied after the newer commit).
    f.source.execute("UPDATE customer SET status = 'blocked' WHERE id = $1::text::uuid", &[&k]).await?;
    f.target.execute("UPDATE customer_materialized SET _cdc_applied_at = clock_timestamp() WHERE id = $1::text::uuid", &[&k]).await?;
    let report = verify(&f.pg.endpoint).await?;
    assert_only(&report, AnomalyKind::StaleOverwrite, "customer", &k);
    assert_eq!(report.anomalies[0].fields[0].field, "status");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_never_arrived_is_a_lost_change() -> anyhow::Result<()> {
    let f = fixture("verify-lost-update").await?;
    let k = key(&f, "a", 7).await?;
    f.source.execute("UPDATE address SET city = 'Riverton' WHERE id = $1::text::uuid", &[&k]).await?;
    let report = verify(&f.pg.endpoint).await?;
    assert_only(&report, AnomalyKind::LostChange, "address", &k);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_key_made_live_again_is_a_resurrected_delete() -> anyhow::Result<()> {
    let f = fixture("verify-resurrect").await?;
    let k = key(&f, "i", 9).await?;
    f.source.execute("DELETE FROM order_item WHERE id = $1::text::uuid", &[&k]).await?;
    // The sink applied the delete (tombstone) ... then an old upsert brought it back.
    f.target.execute("UPDATE order_item_materialized SET _cdc_deleted = true WHERE id = $1::text::uuid", &[&k]).await?;
    let clean = verify(&f.pg.endpoint).await?;
    assert!(clean.converged, "a tombstone counts as absent: {:?}", clean.anomaly_counts);
    f.target.execute("UPDATE order_item_materialized SET _cdc_deleted = false, _cdc_applied_at = clock_timestamp() WHERE id = $1::text::uuid", &[&k]).await?;
    let report = verify(&f.pg.endpoint).await?;
    assert_only(&report, AnomalyKind::ResurrectedDelete, "order_item", &k);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_changed_field_is_a_value_mismatch_naming_the_field() -> anyhow::Result<()> {
    let f = fixture("verify-field").await?;
    let k = key(&f, "o", 11).await?;
    f.target.execute("UPDATE orders_materialized SET total_amount = 99.99 WHERE id = $1::text::uuid", &[&k]).await?;
    let report = verify(&f.pg.endpoint).await?;
    assert_only(&report, AnomalyKind::ValueMismatch, "orders", &k);
    let diff = &report.anomalies[0].fields;
    assert_eq!(diff.len(), 1);
    assert_eq!((diff[0].field.as_str(), diff[0].source.as_deref(), diff[0].target.as_deref()), ("total_amount", Some("10.50"), Some("99.99")));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_the_source_never_had_is_an_extra_row() -> anyhow::Result<()> {
    let f = fixture("verify-extra").await?;
    let k = uuid::Uuid::new_v4().to_string();
    f.target
        .execute(
            "INSERT INTO customer_materialized (id, email, status, updated_at, _cdc_lsn, _cdc_op) VALUES ($1::text::uuid, 'ghost@example.com', 'active', now(), 1, 'c')",
            &[&k],
        )
        .await?;
    let report = verify(&f.pg.endpoint).await?;
    assert_only(&report, AnomalyKind::ExtraRow, "customer", &k);
    assert_eq!(report.entities[0].extra_in_target, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_materialized_twice_is_a_duplicate_apply() -> anyhow::Result<()> {
    let f = fixture("verify-duplicate").await?;
    let k = key(&f, "a", 2).await?;
    f.target.batch_execute("ALTER TABLE address_materialized DROP CONSTRAINT address_materialized_pkey").await?;
    f.target.execute("INSERT INTO address_materialized SELECT * FROM address_materialized WHERE id = $1::text::uuid", &[&k]).await?;
    let report = verify(&f.pg.endpoint).await?;
    assert_only(&report, AnomalyKind::DuplicateApply, "address", &k);
    assert_eq!(report.entities[1].duplicates, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_mode_waits_for_a_late_change_and_reports_time_to_converge() -> anyhow::Result<()> {
    let f = fixture("verify-online").await?;
    let k = key(&f, "c", 1).await?;
    f.source.execute("UPDATE customer SET status = 'inactive' WHERE id = $1::text::uuid", &[&k]).await?;
    // The change reaches the target 1.5 s later, while the verifier is already checking.
    let late = {
        let target = f.pg.endpoint.connect("sink").await?;
        let k = k.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
            target.execute("UPDATE customer_materialized SET status = 'inactive', _cdc_source_ts = clock_timestamp() WHERE id = $1::text::uuid", &[&k]).await
        })
    };
    let options = VerifyOptions { settle: Some(std::time::Duration::from_secs(20)), load_ended: Some(std::time::Instant::now()), ..Default::default() };
    let report = verify_postgres(&f.pg.endpoint, &options).await?;
    late.await??;
    assert!(report.converged, "{:?}", report.anomaly_counts);
    let ttc = report.time_to_converge_ms.expect("time to converge");
    assert!(ttc >= 1500, "converged only after the late change: {ttc} ms");
    assert!(report.never_converged.is_empty());
    Ok(())
}
