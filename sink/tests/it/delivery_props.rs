//! Property: for a random history of changes to a few keys, any delivery that duplicates
//! events, replays from an earlier offset, or splits into different batches leaves exactly
//! the final source state in the real PostgreSQL target (no lost change, no stale
//! overwrite, no resurrected delete).

use std::collections::HashMap;

use harness::testing::TestPostgres;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use sink::model::{Change, Entity, Op};

use crate::common::{customer, customer_row, key, postgres_target};

/// (key index, is delete, payload variant)
type Step = (u8, bool, u32);

/// Turns random steps into a valid source history (no delete of an absent key).
fn history(steps: &[Step]) -> Vec<Change> {
    let mut present: HashMap<u8, bool> = HashMap::new();
    let mut out = Vec::new();
    for (i, (k, delete, variant)) in steps.iter().enumerate() {
        let exists = present.get(k).copied().unwrap_or(false);
        let op = match (delete, exists) {
            (true, true) => Op::Delete,
            (_, true) => Op::Update,
            (_, false) => Op::Create,
        };
        present.insert(*k, !op.is_delete());
        let status = ["active", "inactive", "blocked"][*variant as usize % 3];
        out.push(customer(key(*k), op, 100 + i as i64 * 10, &format!("u{variant}@x.io"), status, i as i64));
    }
    out
}

/// Event indices in delivery order: everything once, plus replays from an earlier offset
/// (a consumer restart before the commit) and duplicated events.
fn delivery(n: usize, replays: &[(usize, usize)], dups: &[usize]) -> Vec<usize> {
    let mut order = Vec::new();
    for i in 0..n {
        order.push(i);
        if dups.contains(&i) {
            order.push(i);
        }
        for (at, back) in replays {
            if *at == i {
                order.extend(i.saturating_sub(*back)..=i);
            }
        }
    }
    order
}

#[test]
fn any_delivery_converges_to_the_final_source_state() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let pg = rt.block_on(TestPostgres::start("sink-pg-props")).unwrap();
    let target = rt.block_on(postgres_target(&pg));
    let client = rt.block_on(pg.endpoint.connect(&pg.endpoint.target_db)).unwrap();

    let strategy = prop::collection::vec((0u8..4, prop::bool::weighted(0.25), 0u32..1000), 1..40).prop_flat_map(|steps| {
        let n = steps.len();
        (Just(steps), prop::collection::vec(prop::bool::weighted(0.3), n * 2 + 8), prop::collection::vec((0..n, 0..n), 0..4), prop::collection::vec(0..n, 0..5))
    });
    let mut runner = TestRunner::new(Config { cases: 32, failure_persistence: None, ..Config::default() });
    runner
        .run(&strategy, |(steps, cuts, replays, dups)| {
            let events = history(&steps);
            let order = delivery(events.len(), &replays, &dups);
            rt.block_on(async {
                client.batch_execute("TRUNCATE customer_materialized").await.unwrap();
                let mut batch = Vec::new();
                for (pos, i) in order.iter().enumerate() {
                    batch.push(events[*i].clone());
                    if cuts.get(pos).copied().unwrap_or(false) || pos + 1 == order.len() {
                        target.apply(Entity::Customer, &batch).await.unwrap();
                        batch.clear();
                    }
                }
                let mut last: HashMap<uuid::Uuid, &Change> = HashMap::new();
                for e in &events {
                    last.insert(e.key, e);
                }
                for (id, change) in last {
                    let row = customer_row(&client, id).await;
                    let expected = match &change.after {
                        Some(after) => Some((
                            after.text(Entity::Customer, "email").map(String::from),
                            after.text(Entity::Customer, "status").map(String::from),
                            change.version.lsn,
                            false,
                        )),
                        None => row.clone().map(|(email, status, _, _)| (email, status, change.version.lsn, true)),
                    };
                    prop_assert_eq!(row, expected, "key {} after delivery {:?}", id, order);
                }
                Ok(())
            })
        })
        .unwrap();
}
