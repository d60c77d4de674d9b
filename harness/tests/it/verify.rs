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

/// As the sink applies a change of `key`: the target row takes the source's values (or
/// becomes a tombstone) with the version `lsn` read at `offset`, and the apply log gets
/// its row; `applied_at` is the target's clock at that moment, as the sink writes it.
async fn apply(f: &Fixture, table: &str, key: &str, lsn: i64, offset: i64, op: &str) -> anyhow::Result<()> {
    if op == "d" {
        f.target
            .execute(
                &format!("UPDATE {table}_materialized SET _cdc_deleted = true, _cdc_lsn = $2, _cdc_op = 'd', _cdc_partition = 0, _cdc_offset = $3, _cdc_applied_at = clock_timestamp() WHERE id = $1::text::uuid"),
                &[&key, &lsn, &offset],
            )
            .await?;
    } else {
        f.target.execute(&format!("DELETE FROM {table}_materialized WHERE id = $1::text::uuid"), &[&key]).await?;
        materialize(f, table, Some(key)).await?;
        f.target
            .execute(
                &format!("UPDATE {table}_materialized SET _cdc_lsn = $2, _cdc_op = $4, _cdc_partition = 0, _cdc_offset = $3 WHERE id = $1::text::uuid"),
                &[&key, &lsn, &offset, &op],
            )
            .await?;
    }
    log_op(f, table, key, lsn, op, "applied", offset, None).await
}

/// The realistic case: every version applied by the sink seconds after its commit (lag),
/// the newer one first, then a replay of the older one overwrites it. The order of versions
/// in the apply log says stale overwrite, whatever the clocks say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_version_put_back_is_a_stale_overwrite() -> anyhow::Result<()> {
    let f = fixture("verify-stale").await?;
    f.target.batch_execute(APPLY_LOG).await?;
    let k = key(&f, "c", 5).await?;
    apply(&f, "customer", &k, 10, 0, "c").await?;
    f.source.execute("UPDATE customer SET status = 'blocked' WHERE id = $1::text::uuid", &[&k]).await?;
    apply(&f, "customer", &k, 20, 1, "u").await?;
    assert!(verify(&f.pg.endpoint).await?.converged, "both versions applied in order");
    // The older version, replayed from offset 0, wrote again over the newer one.
    f.target.execute("UPDATE customer_materialized SET status = 'active', _cdc_lsn = 10, _cdc_offset = 0 WHERE id = $1::text::uuid", &[&k]).await?;
    log_op(&f, "customer", &k, 10, "c", "applied", 0, None).await?;
    let report = verify(&f.pg.endpoint).await?;
    let stale = report.anomalies.iter().find(|a| a.kind == AnomalyKind::StaleOverwrite).expect("a stale overwrite");
    assert_eq!((stale.entity.as_str(), stale.key.as_str()), ("customer", k.as_str()));
    assert_eq!(stale.fields[0].field, "status");
    assert!(stale.evidence.contains("older than version 20") && stale.evidence.contains("applied after it"), "{}", stale.evidence);
    assert_eq!(report.count(AnomalyKind::DuplicateApply), 1, "the history shows the same replay: version 10 applied twice");
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
    f.target.batch_execute(APPLY_LOG).await?;
    let k = key(&f, "i", 9).await?;
    apply(&f, "order_item", &k, 10, 0, "c").await?;
    f.source.execute("DELETE FROM order_item WHERE id = $1::text::uuid", &[&k]).await?;
    apply(&f, "order_item", &k, 20, 1, "d").await?;
    let clean = verify(&f.pg.endpoint).await?;
    assert!(clean.converged, "a tombstone counts as absent: {:?}", clean.anomaly_counts);
    // ... then the old create, replayed at offset 2, brought it back.
    f.target
        .execute("UPDATE order_item_materialized SET _cdc_deleted = false, _cdc_lsn = 10, _cdc_op = 'c', _cdc_offset = 2 WHERE id = $1::text::uuid", &[&k])
        .await?;
    log_op(&f, "order_item", &k, 10, "c", "applied", 2, None).await?;
    let report = verify(&f.pg.endpoint).await?;
    let resurrected = report.anomalies.iter().find(|a| a.kind == AnomalyKind::ResurrectedDelete).expect("a resurrected delete");
    assert_eq!(resurrected.key, k);
    assert!(resurrected.evidence.contains("the delete version 20") && resurrected.evidence.contains("applied after it"), "{}", resurrected.evidence);
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

/// Appends one apply log row (an update) for `key` of `entity`.
async fn log(f: &Fixture, entity: &str, key: &str, version: i64, outcome: &str, offset: i64, rule: Option<&str>) -> anyhow::Result<()> {
    log_op(f, entity, key, version, "u", outcome, offset, rule).await
}

/// Appends one apply log row for `key` of `entity`, its commit position its LSN.
#[allow(clippy::too_many_arguments)]
async fn log_op(f: &Fixture, entity: &str, key: &str, version: i64, op: &str, outcome: &str, offset: i64, rule: Option<&str>) -> anyhow::Result<()> {
    f.target
        .execute(
            "INSERT INTO _cdc_apply_log (entity, key, version, version_commit, op, outcome, kafka_partition, kafka_offset, kafka_ts, source_ts, rule) \
             VALUES ($1, $2::text::uuid, $3, $3, $4, $5, 0, $6, clock_timestamp(), clock_timestamp(), $7)",
            &[&entity, &key, &version, &op, &outcome, &offset, &rule],
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

fn expecting(rules: &[&str]) -> VerifyOptions {
    VerifyOptions { expected_rejections: rules.iter().map(|r| r.to_string()).collect(), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_the_scenario_expects_is_excused_and_counted_by_rule() -> anyhow::Result<()> {
    let f = fixture("verify-log-dlq").await?;
    f.target.batch_execute(APPLY_LOG).await?;
    let k = key(&f, "c", 5).await?;
    // The source's newest change never reached the target: the sink dead-lettered it.
    f.source.execute("UPDATE customer SET email = 'not-an-email' WHERE id = $1::text::uuid", &[&k]).await?;
    log(&f, "customer", &k, 30, "dlq", 7, Some("email")).await?;
    let report = verify_postgres(&f.pg.endpoint, &expecting(&["email"])).await?;
    assert!(report.converged, "an expected rejection is not divergence: {:?}", report.anomaly_counts);
    assert_eq!(report.anomaly_counts.values().sum::<u64>(), 0);
    assert_eq!(report.dlq_rejected, std::collections::BTreeMap::from([("email".to_string(), 1)]));
    let customer = &report.entities[0];
    assert_eq!((customer.mismatched, customer.missing_in_target, customer.excused), (0, 0, 1), "excused, never converged beside a mismatch: {customer:?}");
    // A scenario that does not expect the rule fails on it.
    let unexpected = verify(&f.pg.endpoint).await?;
    assert_only(&unexpected, AnomalyKind::LostChange, "customer", &k);
    assert!(unexpected.anomalies[0].evidence.contains("outcome dlq, rule email"), "{}", unexpected.anomalies[0].evidence);
    // Without the DLQ row the same key is a lost change, with the hop that lost it.
    f.target.execute("DELETE FROM _cdc_apply_log", &[]).await?;
    let lost = verify_postgres(&f.pg.endpoint, &expecting(&["email"])).await?;
    assert_only(&lost, AnomalyKind::LostChange, "customer", &k);
    assert_eq!(lost.anomalies[0].hop.as_deref(), Some("capture or transport: never reached the sink"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decode_letter_or_a_change_lost_before_the_letter_is_never_convergence() -> anyhow::Result<()> {
    let f = fixture("verify-log-decode").await?;
    f.target.batch_execute(APPLY_LOG).await?;
    let (decoded, lost_first) = (key(&f, "c", 6).await?, key(&f, "c", 7).await?);
    for k in [&decoded, &lost_first] {
        f.source.execute("UPDATE customer SET status = 'inactive' WHERE id = $1::text::uuid", &[k]).await?;
    }
    // A decode failure: dead-lettered, but not by a business rule.
    log(&f, "customer", &decoded, 30, "dlq", 1, Some("decode")).await?;
    // v2 skipped by the sink, v3 dead-lettered under the expected rule: v2 is still lost.
    log(&f, "customer", &lost_first, 20, "stale", 2, None).await?;
    log(&f, "customer", &lost_first, 30, "dlq", 3, Some("email")).await?;
    let report = verify_postgres(&f.pg.endpoint, &expecting(&["email"])).await?;
    assert!(!report.converged, "{report:#?}");
    assert_eq!(report.count(AnomalyKind::LostChange), 2, "{:?}", report.anomalies);
    assert!(report.dlq_rejected.is_empty(), "nothing excused: {:?}", report.dlq_rejected);
    let evidence = |k: &str| report.anomalies.iter().find(|a| a.key == k).map(|a| a.evidence.clone()).unwrap_or_default();
    assert!(evidence(&decoded).contains("outcome dlq, rule decode"), "{}", evidence(&decoded));
    assert!(evidence(&lost_first).contains("version 20") && evidence(&lost_first).contains("outcome stale"), "{}", evidence(&lost_first));
    Ok(())
}

/// A column added mid-stream is compared although the mapping does not list it: a large
/// value the target never got (the sink kept NULL) is a difference, never `converged`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_column_is_compared_and_a_lost_value_in_it_fails() -> anyhow::Result<()> {
    let f = fixture("verify-added-column").await?;
    let k = key(&f, "c", 4).await?;
    f.source.batch_execute("ALTER TABLE customer ADD COLUMN notes text").await?;
    assert!(verify(&f.pg.endpoint).await?.converged, "NULL everywhere, and the target has no such column: null == missing");
    // 12,800 incompressible characters (TOASTed out of line), then an update that leaves
    // them unchanged, in one transaction.
    f.source
        .execute("UPDATE customer SET notes = (SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 400)) WHERE id = $1::text::uuid", &[&k])
        .await?;
    f.source.execute("UPDATE customer SET status = 'inactive' WHERE id = $1::text::uuid", &[&k]).await?;
    let absent = verify(&f.pg.endpoint).await?;
    assert!(!absent.converged);
    assert!(absent.columns.iter().any(|c| c.column == "notes" && c.change == harness::verify::columns::ColumnChange::AbsentInTarget), "{:?}", absent.columns);
    // The sink added the column, but kept NULL in it (and applied the status).
    f.target.batch_execute("ALTER TABLE customer_materialized ADD COLUMN notes text").await?;
    f.target.execute("UPDATE customer_materialized SET status = 'inactive' WHERE id = $1::text::uuid", &[&k]).await?;
    let report = verify(&f.pg.endpoint).await?;
    assert!(!report.converged, "a lost value must never pass");
    assert_eq!(report.anomaly_counts.values().sum::<u64>(), 1, "{:?}", report.anomalies);
    let a = &report.anomalies[0];
    assert_eq!((a.entity.as_str(), a.key.as_str()), ("customer", k.as_str()));
    assert_eq!(a.fields.len(), 1);
    assert_eq!(a.fields[0].field, "notes");
    assert_eq!(a.fields[0].source.as_ref().map(String::len), Some(12_800));
    assert_eq!(a.fields[0].target, None);
    Ok(())
}

/// A column widened from integer to numeric compares by value (`4.00` is `4`): only the
/// one row changed after the ALTER differs, and it is named as what it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_widened_column_compares_by_value_and_reports_only_the_changed_row() -> anyhow::Result<()> {
    let f = fixture("verify-widened").await?;
    let k = key(&f, "i", 3).await?;
    // A table rewrite: every row gets the ALTER's transaction as its xmin.
    f.source.batch_execute("ALTER TABLE order_item ALTER COLUMN quantity TYPE numeric(10,2)").await?;
    let rewritten = verify(&f.pg.endpoint).await?;
    assert!(rewritten.converged, "1.00 in the source, 1 in the target: the same value: {:?}", rewritten.anomalies.first());
    assert!(rewritten.columns.iter().any(|c| c.column == "quantity" && c.change == harness::verify::columns::ColumnChange::Retyped), "{:?}", rewritten.columns);
    f.source.execute("UPDATE order_item SET quantity = 4.50 WHERE id = $1::text::uuid", &[&k]).await?;
    let report = verify(&f.pg.endpoint).await?;
    assert_only(&report, AnomalyKind::LostChange, "order_item", &k);
    let a = &report.anomalies[0];
    assert_eq!((a.fields[0].field.as_str(), a.fields[0].source.as_deref(), a.fields[0].target.as_deref()), ("quantity", Some("4.50"), Some("1")));
    assert!(a.evidence.contains("transaction "), "the lost change is named: {}", a.evidence);
    Ok(())
}

/// After the comparison the apply log is read once more: a stale replay applied after the
/// comparison started (a version at or below the fence) is caught with its evidence; a
/// change committed after the fence is the source moving on, counted apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_replay_applied_after_the_comparison_is_caught() -> anyhow::Result<()> {
    let f = fixture("verify-late-replay").await?;
    f.target.batch_execute(APPLY_LOG).await?;
    let k = key(&f, "c", 4).await?;
    log(&f, "customer", &k, 30, "applied", 1, None).await?;
    let compared_from = harness::run::apply_log::position(&f.target).await?.expect("the log has rows");
    // Version 20 (older than the 30 compared) applied again after the comparison started.
    log(&f, "customer", &k, 20, "applied", 2, None).await?;
    log(&f, "customer", &k, 100, "applied", 3, None).await?;
    let endpoints = harness::orchestrator::Endpoints {
        postgres: f.pg.endpoint.clone(),
        kafka: String::new(),
        kafka_client: Default::default(),
        topic_prefix: "cdc".into(),
        consumer_group: "unused".into(),
        slot: None,
        debezium_status: String::new(),
        sink_http: String::new(),
        connect: None,
    };
    // The fence at LSN 0x40 = 64: version 20 is below it, version 100 past it.
    let mut w = harness::run::fence::Watermark { fence_lsn: "0/40".into(), quiet: true, ..Default::default() };
    harness::run::fence::late_applies(&endpoints, compared_from, &mut w).await.map_err(anyhow::Error::msg)?;
    assert_eq!((w.late_applies, w.after_fence), (1, 1), "{w:?}");
    assert!(w.late_examples[0].contains(&format!("customer {k} version 20")), "{:?}", w.late_examples);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_postgres_refuses_prints_the_servers_message_and_sqlstate() -> anyhow::Result<()> {
    let f = fixture("verify-pg-error").await?;
    // A source whose rows fail to read (division by zero, 22012) once the scan runs.
    f.source
        .batch_execute("ALTER TABLE customer RENAME TO customer_t; CREATE VIEW customer AS SELECT * FROM customer_t WHERE 1 / (CASE WHEN id IS NULL THEN 1 ELSE 0 END) = 1")
        .await?;
    let error = anyhow::Error::new(verify_postgres(&f.pg.endpoint, &VerifyOptions::default()).await.expect_err("an unreadable source fails"));
    let text = harness::exit::describe(&error);
    assert!(text.starts_with("reading the source: ERROR: ") && text.contains("division by zero (SQLSTATE 22012)"), "{text}");
    assert!(!text.contains("db error"), "{text}");
    assert_eq!(harness::exit::code_for(&error), harness::exit::ERROR);
    Ok(())
}
