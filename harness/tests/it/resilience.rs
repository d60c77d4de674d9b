//! kill -9 of the broker and then of the Debezium launcher while rows are written: after
//! both restart, every change still arrives (at-least-once: duplicates allowed).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use harness::orchestrator::ServiceKind;
use harness::testing::TestStack;

use crate::support::consume_until;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_survive_kill_9_of_broker_and_debezium() -> anyhow::Result<()> {
    let mut stack = TestStack::start("resilience", |c| {
        c.with_sink = false;
        c.seed.customers = 20;
    })
    .await?;
    let pg = stack.endpoints.postgres.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let client = pg.connect("app").await?;
            let mut written = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let id = uuid::Uuid::new_v4();
                client
                    .execute("insert into customer (id, email, status) values ($1, $2, 'active')", &[&id, &format!("w{}@example.com", written.len())])
                    .await?;
                written.push(id.to_string());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            anyhow::Ok(written)
        })
    };

    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.stack.control()?.kill(ServiceKind::Broker).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.stack.control()?.start(ServiceKind::Broker).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.stack.control()?.kill(ServiceKind::Debezium).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.stack.control()?.start(ServiceKind::Debezium).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let written = writer.await??;
    assert!(written.len() > 100, "the writer kept writing through the faults ({} rows)", written.len());

    let expected: HashSet<String> = written.iter().cloned().collect();
    let events = consume_until(&stack.endpoints.kafka, &["cdc.public.customer".to_string()], Duration::from_secs(120), |events| {
        let seen: HashSet<String> = events.iter().filter(|e| e.op() == Some("c")).filter_map(|e| e.key_id()).collect();
        expected.is_subset(&seen)
    })
    .await
    .map_err(|e| anyhow::anyhow!("not every insert arrived: {e}"))?;
    let creates: Vec<String> = events.iter().filter(|e| e.op() == Some("c")).filter_map(|e| e.key_id()).collect();
    let duplicates = creates.len() - creates.iter().collect::<HashSet<_>>().len();
    eprintln!("resilience: {} rows written, all arrived, {duplicates} duplicate deliveries", written.len());
    Ok(())
}
