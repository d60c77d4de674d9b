//! Live verification on the real stack while changes keep flowing: a check fenced by a WAL
//! watermark agrees with a healthy pipeline, finds a value the target lost though the
//! source keeps moving, and one stale by a version committed within what the clock would
//! call the snapshot's margin; versions of transactions the snapshot does not show are set
//! aside by the snapshot, not by the clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use harness::testing::TestStack;
use harness::verify::AnomalyKind;
use harness::verify::live;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_check_agrees_under_load_and_finds_a_lost_value() -> anyhow::Result<()> {
    let stack = TestStack::start("live-verify", |c| c.seed.customers = 200).await?;
    let endpoints = stack.endpoints.clone();
    let topics: Vec<String> = harness::config::TABLES.iter().map(|t| endpoints.topic(t)).collect();
    let partitions = 3;

    // Changes keep flowing: one customer updated every 20 ms, round the seed rows.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, pg) = (stop.clone(), endpoints.postgres.clone());
        tokio::spawn(async move {
            let client = pg.connect("app").await?;
            let ids: Vec<uuid::Uuid> = client.query("SELECT id FROM customer ORDER BY id LIMIT 100", &[]).await?.iter().map(|r| r.get(0)).collect();
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                client
                    .execute(
                        "UPDATE customer SET status = CASE status WHEN 'active' THEN 'inactive' ELSE 'active' END, updated_at = now() WHERE id = $1",
                        &[&ids[n % ids.len()]],
                    )
                    .await?;
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            anyhow::Ok(n)
        })
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    let healthy = live::check(&endpoints, topics.clone(), partitions, Duration::from_secs(90), 0.0).await;
    assert!(healthy.converged, "a healthy pipeline under load: {healthy:#?}");
    assert!(healthy.rows_compared > 0 && !healthy.lsn.is_empty());
    // The writer's changes carry their transaction to the apply log: the keys it moved on
    // since the snapshot were set aside by the snapshot, none by the clock.
    assert_eq!((healthy.set_aside_by_clock, healthy.compared_by_clock), (0, 0), "{healthy:#?}");
    let target = endpoints.postgres.connect_target().await?;
    let (streamed, without_tx): (i64, i64) = {
        let row = target.query_one("SELECT count(*), count(*) FILTER (WHERE tx_id IS NULL) FROM _cdc_apply_log WHERE op <> 'r'", &[]).await?;
        (row.get(0), row.get(1))
    };
    assert!(streamed > 0 && without_tx == 0, "{without_tx} of {streamed} streamed changes logged without their transaction");

    // A customer the writer never touches loses its email in the target (a write the sink
    // never made): the next live check finds it, with the source still moving.
    let source = endpoints.postgres.connect("app").await?;
    let untouched: uuid::Uuid = source.query_one("SELECT id FROM customer ORDER BY id DESC LIMIT 1", &[]).await?.get(0);
    let changed = target.execute("UPDATE customer_materialized SET email = 'lost@example.com' WHERE id = $1", &[&untouched]).await?;
    assert_eq!(changed, 1);
    // Another one is left stale by a version committed just before the snapshot: changed
    // twice, the target ends up holding the first change again (an older version applied
    // over the newer one), its commit time inside the clock rule's two seconds before the
    // snapshot (set on the row: the pipeline's own latency would make that a coin flip).
    // The clock rule set it aside as perhaps newer; its transaction, which the snapshot
    // shows, makes it an anomaly.
    let stale: uuid::Uuid = source.query_one("SELECT id FROM customer ORDER BY id DESC OFFSET 1 LIMIT 1", &[]).await?.get(0);
    source.execute("UPDATE customer SET email = 'first@example.com' WHERE id = $1", &[&stale]).await?;
    let first = wait_for_email(&target, stale, "first@example.com").await?;
    source.execute("UPDATE customer SET email = 'second@example.com' WHERE id = $1", &[&stale]).await?;
    wait_for_email(&target, stale, "second@example.com").await?;
    let restored = target
        .execute(
            "UPDATE customer_materialized SET email = $2, _cdc_lsn = $3, _cdc_commit = $4, _cdc_partition = $5, _cdc_offset = $6, \
             _cdc_source_ts = clock_timestamp() - interval '500 milliseconds' WHERE id = $1",
            &[&stale, &first.email, &first.lsn, &first.commit, &first.partition, &first.offset],
        )
        .await?;
    assert_eq!(restored, 1);
    let broken = live::check(&endpoints, topics, partitions, Duration::from_secs(90), 1.0).await;
    stop.store(true, Ordering::Relaxed);
    let writes = writer.await??;
    assert!(writes > 100, "the source kept moving ({writes} updates)");
    assert!(!broken.converged, "{broken:#?}");
    assert_eq!(broken.mismatched, 2, "{broken:#?}");
    assert_eq!(broken.anomalies.values().sum::<u64>(), 2, "{broken:#?}");
    let kind_of = |key: uuid::Uuid| broken.examples.iter().find(|a| a.key == key.to_string()).map(|a| a.kind);
    assert_eq!(kind_of(untouched), Some(AnomalyKind::ValueMismatch), "{broken:#?}");
    assert_eq!(kind_of(stale), Some(AnomalyKind::StaleOverwrite), "an older version over the applied newer one: {broken:#?}");
    Ok(())
}

/// The CDC metadata of the version a target row holds.
struct Held {
    email: String,
    lsn: i64,
    commit: Option<i64>,
    partition: Option<i32>,
    offset: Option<i64>,
}

/// Waits until the target's customer `id` has `email`; returns the version it holds then.
async fn wait_for_email(target: &tokio_postgres::Client, id: uuid::Uuid, email: &str) -> anyhow::Result<Held> {
    let until = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let sql = "SELECT email, _cdc_lsn, _cdc_commit, _cdc_partition, _cdc_offset FROM customer_materialized WHERE id = $1";
        if let Some(r) = target.query_opt(sql, &[&id]).await?.filter(|r| r.get::<_, Option<String>>(0).as_deref() == Some(email)) {
            return Ok(Held { email: r.get(0), lsn: r.get(1), commit: r.get(2), partition: r.get(3), offset: r.get(4) });
        }
        anyhow::ensure!(std::time::Instant::now() < until, "customer {id} never reached {email} in the target");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Versions written by transactions the snapshot does not show are set aside exactly: one
/// in flight when the snapshot was taken (it had written, not committed: in the snapshot's
/// running list) and one begun after it (past its xmax), both applied before the
/// comparison. The snapshot decides them, not the clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_of_transactions_outside_the_snapshot_are_set_aside_exactly() -> anyhow::Result<()> {
    let stack = TestStack::start("live-exact", |c| c.seed.customers = 50).await?;
    let endpoints = stack.endpoints.clone();
    let topics: Vec<String> = harness::config::TABLES.iter().map(|t| endpoints.topic(t)).collect();
    let source = endpoints.postgres.connect("app").await?;
    let target = endpoints.postgres.connect_target().await?;
    let ids: Vec<uuid::Uuid> = source.query("SELECT id FROM customer ORDER BY id LIMIT 2", &[]).await?.iter().map(|r| r.get(0)).collect();
    let (in_flight, after) = (ids[0], ids[1]);
    // The seed is in the target before anything else happens.
    let seeded: String = source.query_one("SELECT email FROM customer WHERE id = $1", &[&after]).await?.get(0);
    wait_for_email(&target, after, &seeded).await?;

    let writer = endpoints.postgres.connect("app").await?;
    writer.batch_execute("BEGIN").await?;
    writer.execute("UPDATE customer SET email = 'in-flight@example.com' WHERE id = $1", &[&in_flight]).await?;
    let snapshot = live::Snapshot::take(&endpoints).await.map_err(anyhow::Error::msg)?;
    writer.batch_execute("COMMIT").await?;
    source.execute("UPDATE customer SET email = 'after@example.com' WHERE id = $1", &[&after]).await?;
    wait_for_email(&target, in_flight, "in-flight@example.com").await?;
    wait_for_email(&target, after, "after@example.com").await?;

    let check = snapshot.check(&endpoints, topics, 3, Duration::from_secs(90), 0.0).await;
    assert!(check.converged, "{check:#?}");
    assert_eq!(check.newer_than_watermark, 2, "{check:#?}");
    assert_eq!((check.set_aside_by_clock, check.compared_by_clock), (0, 0), "decided by the snapshot: {check:#?}");
    assert_eq!(check.mismatched + check.missing + check.extra, 0, "{check:#?}");
    Ok(())
}
