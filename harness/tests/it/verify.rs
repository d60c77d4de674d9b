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

/// The apply log as the sink's audit mode creates it (sink/README.md, "Audit mode").
const APPLY_LOG: &str = "CREATE TABLE IF NOT EXISTS _cdc_apply_log (id bigserial PRIMARY KEY, entity text NOT NULL, key uuid, version bigint, \
     op char(1), outcome text NOT NULL, kafka_partition int NOT NULL, kafka_offset bigint NOT NULL, kafka_ts timestamptz, source_ts timestamptz, \
     applied_at timestamptz NOT NULL DEFAULT clock_timestamp(), rule text, version_commit bigint, epoch int, snapshot boolean)";

/// Appends one apply log row for `key` of `entity`.
async fn log(f: &Fixture, entity: &str, key: &str, version: i64, outcome: &str, offset: i64, rule: Option<&str>) -> anyhow::Result<()> {
    f.target
        .execute(
            "INSERT INTO _cdc_apply_log (entity, key, version, op, outcome, kafka_partition, kafka_offset, kafka_ts, source_ts, rule) \
             VALUES ($1, $2::text::uuid, $3, 'u', $4, 0, $5, clock_timestamp(), clock_timestamp(), $6)",
            &[&entity, &key, &version, &outcome, &offset, &rule],
        )
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_version_applied_twice_in_the_apply_log_is_a_duplicate_apply() -> anyhow::Result<()> {
    let f = fixture("verify-log-duplicate").await?;
    f.target.batch_execute(APPLY_LOG).await?;
    let k = key(&f, "c", 3).await?;
    log(&f, "customer", &k, 10, "applied", 1, None).await?;
    log(&f, "customer", &k, 10, "stale", 2, None).await?;
    let clean = verify(&f.pg.endpoint).await?;
    assert!(clean.converged && clean.history_checked, "a replay skipped as stale is fine: {:?}", clean.anomaly_counts);
    // A replay that the guard let through: the final state is right, the history is not.
    log(&f, "customer", &k, 10, "applied", 3, None).await?;
    let report = verify(&f.pg.endpoint).await?;
    assert_only(&report, AnomalyKind::DuplicateApply, "customer", &k);
    assert!(report.anomalies[0].evidence.contains("version 10 was applied twice"), "{}", report.anomalies[0].evidence);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_version_applied_after_a_newer_one_is_an_out_of_order_apply() -> anyhow::Result<()> {
    let f = fixture("verify-log-order").await?;
    f.target.batch_execute(APPLY_LOG).await?;
    let k = key(&f, "o", 4).await?;
    log(&f, "orders", &k, 20, "applied", 1, None).await?;
    log(&f, "orders", &k, 19, "applied", 2, None).await?;
    log(&f, "orders", &k, 21, "applied", 3, None).await?;
    let report = verify(&f.pg.endpoint).await?;
    assert_only(&report, AnomalyKind::OutOfOrderApply, "orders", &k);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_whose_newest_change_was_dead_lettered_is_rejected_not_lost() -> anyhow::Result<()> {
    let f = fixture("verify-log-dlq").await?;
    f.target.batch_execute(APPLY_LOG).await?;
    let k = key(&f, "c", 5).await?;
    // The source's newest change never reached the target: the sink dead-lettered it.
    f.source.execute("UPDATE customer SET email = 'not-an-email' WHERE id = $1::text::uuid", &[&k]).await?;
    log(&f, "customer", &k, 30, "dlq", 7, Some("email_format")).await?;
    let report = verify(&f.pg.endpoint).await?;
    assert!(report.converged, "rejected on purpose is not divergence: {:?}", report.anomaly_counts);
    assert_eq!(report.anomaly_counts.values().sum::<u64>(), 0);
    assert_eq!(report.dlq_rejected, std::collections::BTreeMap::from([("email_format".to_string(), 1)]));
    // A scenario that expects no rejection fails on it.
    let mut run_report = harness::report::model::Report::of_verification(report);
    let gate = harness::report::thresholds::Threshold::parse("convergence.dlq_rejected == 0")?;
    run_report.thresholds = harness::report::thresholds::evaluate(&run_report, &[gate]);
    assert!(!run_report.thresholds[0].passed, "an unexpected rejection fails the gate");
    // Without the DLQ row the same key is a lost change, with the hop that lost it.
    f.target.execute("DELETE FROM _cdc_apply_log", &[]).await?;
    let lost = verify(&f.pg.endpoint).await?;
    assert_only(&lost, AnomalyKind::LostChange, "customer", &k);
    assert!(lost.anomalies[0].hop.as_deref().is_some_and(|h| h.contains("not in the apply log") || h.starts_with("no change")), "{:?}", lost.anomalies[0].hop);
    Ok(())
}
