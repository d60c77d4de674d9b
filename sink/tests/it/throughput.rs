//! Quick self-measurement of the PostgreSQL apply path (the benchmark proper lives in
//! `harness bench sink`): concurrent partitions, batches of a few thousand rows.

use std::time::Instant;

use harness::testing::TestPostgres;
use sink::model::{Entity, Op};

use crate::common::{customer, postgres_target};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_throughput_self_measurement() {
    let pg = TestPostgres::start("sink-pg-throughput").await.unwrap();
    let target = std::sync::Arc::new(postgres_target(&pg).await);
    const PARTITIONS: usize = 4;
    const PER_PARTITION: usize = 20_000;
    const BATCH: usize = 4096;
    let batches: Vec<Vec<Vec<sink::model::Change>>> = (0..PARTITIONS)
        .map(|p| {
            (0..PER_PARTITION)
                .map(|i| {
                    let id = uuid::Uuid::from_u128(((p as u128) << 64) | (i % 5000) as u128);
                    let op = if i < 5000 { Op::Create } else { Op::Update };
                    customer(id, op, i as i64 + 1, "bench@x.io", "active", i as i64)
                })
                .collect::<Vec<_>>()
                .chunks(BATCH)
                .map(<[_]>::to_vec)
                .collect()
        })
        .collect();
    let started = Instant::now();
    let tasks: Vec<_> = batches
        .into_iter()
        .map(|partition| {
            let target = std::sync::Arc::clone(&target);
            tokio::spawn(async move {
                for batch in partition {
                    target.apply(Entity::Customer, &batch).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let rate = (PARTITIONS * PER_PARTITION) as f64 / started.elapsed().as_secs_f64();
    eprintln!("postgres apply: {rate:.0} events/s ({} build)", if cfg!(debug_assertions) { "debug" } else { "release" });
    assert!(rate > 1_000.0, "apply path unexpectedly slow: {rate:.0} events/s");
}
