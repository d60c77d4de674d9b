//! Live verification on the real stack while changes keep flowing: a check fenced by a WAL
//! watermark agrees with a healthy pipeline, and finds a value the target lost though the
//! source keeps moving.

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

    // A customer the writer never touches loses its email in the target (a write the sink
    // never made): the next live check finds it, with the source still moving.
    let target = endpoints.postgres.connect_target().await?;
    let source = endpoints.postgres.connect("app").await?;
    let untouched: uuid::Uuid = source.query_one("SELECT id FROM customer ORDER BY id DESC LIMIT 1", &[]).await?.get(0);
    let changed = target.execute("UPDATE customer_materialized SET email = 'lost@example.com' WHERE id = $1", &[&untouched]).await?;
    assert_eq!(changed, 1);
    let broken = live::check(&endpoints, topics, partitions, Duration::from_secs(90), 1.0).await;
    stop.store(true, Ordering::Relaxed);
    let writes = writer.await??;
    assert!(writes > 100, "the source kept moving ({writes} updates)");
    assert!(!broken.converged, "{broken:#?}");
    assert_eq!(broken.mismatched, 1, "{broken:#?}");
    assert_eq!(broken.anomalies.get(&AnomalyKind::ValueMismatch), Some(&1), "{broken:#?}");
    assert!(broken.examples.iter().any(|a| a.key == untouched.to_string()), "{broken:#?}");
    Ok(())
}
