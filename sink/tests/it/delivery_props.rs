//! Property: for a random source history (a snapshot, a transaction spanning the snapshot
//! point, then streamed transactions of one to four changes each, with creates, updates,
//! TOAST placeholders and deletes over a few customers and orders on two partitions each),
//! any delivery that duplicates events, replays from
//! arbitrary earlier offsets and splits into different batches, with the two partitions'
//! batches interleaved, leaves exactly the final source state in the real PostgreSQL target:
//! no lost change, no stale overwrite, no resurrected delete, no placeholder filled with an
//! outdated value.

use std::collections::HashMap;

use harness::testing::TestPostgres;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use sink::model::{Change, Entity, Field, Op, Value, Version};

use crate::common::{customer, customer_row, key, postgres_target};

/// Keys per entity: indexes below KEYS are customers, the next KEYS orders.
const KEYS: u8 = 4;
const SNAPSHOT_LSN: i64 = 1000;

/// (key index, is delete, payload variant, TOAST placeholder for the status, ends its
/// transaction)
type Step = (u8, bool, u32, bool, bool);

/// One event of the history, with what the target must hold once it is the key's last.
#[derive(Clone)]
struct Event {
    change: Change,
    /// (email or total_amount, status) the row holds after this event; None after a delete.
    state: Option<(String, String)>,
}

fn entity_of(k: u8) -> Entity {
    if k < KEYS { Entity::Customer } else { Entity::Orders }
}

/// A change of customer `k` (email, status) or order `k` (total_amount, status).
fn event(k: u8, op: Op, version: Version, first: &str, status: &str, toast: bool, offset: i64) -> Change {
    let mut c = customer(key(k), op, version.lsn, first, status, offset);
    if entity_of(k) == Entity::Orders {
        let entity = Entity::Orders;
        let mut row = sink::model::Row::empty(entity);
        row.known[0] = Some(Field::Value(Value::Uuid(key(k))));
        row.known[1] = Some(Field::Value(Value::Uuid(key(200))));
        row.known[2] = Some(Field::Value(Value::Text(status.into())));
        row.known[3] = Some(Field::Value(Value::Numeric(first.parse().expect("an amount"))));
        let at = Value::Timestamp(crate::common::ts("2024-05-01T10:00:00Z"));
        row.known[4] = Some(Field::Value(at.clone()));
        row.known[5] = Some(Field::Value(at));
        (c.before, c.after) = if op.is_delete() { (Some(row), None) } else { (None, Some(row)) };
        c.entity = entity;
        c.coords.topic = "cdc.public.orders".into();
    }
    c.version = version;
    c.coords.partition = i32::from(k % 2);
    if toast {
        // Both entities have their status third.
        c.after.as_mut().expect("an update").known[2] = Some(Field::Unavailable);
    }
    c
}

/// A valid source history: snapshot rows of the keys present at the snapshot point, then the
/// transaction that wrote before the snapshot point and committed after it (commit position
/// unknown: the session's first), then streamed transactions of the steps (a step that ends
/// its transaction closes it): the changes of one transaction share its commit position and
/// rise in LSN, so a guard that compares commit positions alone cannot order them.
fn history(snapshot_keys: &[bool], straddling: Option<(u8, u32)>, steps: &[Step]) -> Vec<Event> {
    let mut state: HashMap<u8, (String, String)> = HashMap::new();
    let mut out = Vec::new();
    #[allow(clippy::too_many_arguments)]
    fn push(out: &mut Vec<Event>, state: &mut HashMap<u8, (String, String)>, k: u8, op: Op, version: Version, email: String, status: String, toast: bool) {
        let offset = out.len() as i64;
        let next = (!op.is_delete()).then(|| (email.clone(), status.clone()));
        out.push(Event { change: event(k, op, version, &email, &status, toast, offset), state: next.clone() });
        match next {
            Some(s) => state.insert(k, s),
            None => state.remove(&k),
        };
    }
    let first = |k: u8, tag: &str, variant: u32| {
        if entity_of(k) == Entity::Orders { format!("{variant}.{:02}", variant % 100) } else { format!("{tag}{variant}@x.io") }
    };
    for (k, present) in snapshot_keys.iter().enumerate() {
        if *present {
            let k = k as u8;
            let snapshot = Version { epoch: 0, commit: Some(SNAPSHOT_LSN), lsn: SNAPSHOT_LSN, snapshot: true };
            push(&mut out, &mut state, k, Op::Read, snapshot, first(k, "snap", u32::from(k)), "active".into(), false);
        }
    }
    if let Some((k, variant)) = straddling {
        let op = if state.contains_key(&k) { Op::Update } else { Op::Create };
        push(&mut out, &mut state, k, op, Version::streamed(None, SNAPSHOT_LSN - 100), first(k, "t0-", variant), "inactive".into(), false);
    }
    let (mut tx, mut in_tx, mut written_earlier) = (0i64, 0i64, 0i64);
    for (k, delete, variant, toast, ends) in steps {
        let k = k % (2 * KEYS);
        let exists = state.contains_key(&k);
        let op = match (delete, exists) {
            (true, true) => Op::Delete,
            (_, true) => Op::Update,
            (_, false) => Op::Create,
        };
        // Transactions in commit order: the stream's last commit rises; the transaction's
        // own LSNs may be lower than an earlier transaction's (it wrote earlier, committed
        // later), and rise within it.
        if in_tx == 0 {
            written_earlier = i64::from(*variant % 7) * 300;
        }
        let commit = SNAPSHOT_LSN + 100 + tx * 200;
        let lsn = commit - 150 - written_earlier + in_tx * 8;
        let toast = *toast && op == Op::Update;
        let status = if toast { state[&k].1.clone() } else { ["active", "inactive", "blocked"][*variant as usize % 3].to_string() };
        push(&mut out, &mut state, k, op, Version::streamed(Some(commit), lsn), first(k, "u", *variant), status, toast);
        in_tx += 1;
        // At most four changes per transaction.
        if *ends || in_tx == 4 {
            tx += 1;
            in_tx = 0;
        }
    }
    out
}

/// The row of a customer (email, status) or order (total_amount, status) in the target,
/// with its version and tombstone flag.
async fn row_of(client: &tokio_postgres::Client, k_entity: Entity, id: uuid::Uuid) -> Option<(Option<String>, Option<String>, i64, bool)> {
    if k_entity == Entity::Customer {
        return customer_row(client, id).await;
    }
    client
        .query_opt("SELECT total_amount::text, status, _cdc_lsn, _cdc_deleted FROM orders_materialized WHERE id = $1", &[&id])
        .await
        .expect("query orders")
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
}

/// Positions (into one partition's events) in delivery order: everything once, plus
/// replays of arbitrary earlier ranges (a consumer restart before the commit, a connector
/// re-sending) and duplicates.
fn delivery(n: usize, replays: &[(usize, usize, usize)], dups: &[usize]) -> Vec<usize> {
    let mut order = Vec::new();
    for i in 0..n {
        order.push(i);
        if dups.contains(&i) {
            order.push(i);
        }
        for (at, from, len) in replays {
            if *at % n == i {
                let from = from % (i + 1);
                order.extend(from..=(from + len).min(i));
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

    let steps = prop::collection::vec((0u8..2 * KEYS, prop::bool::weighted(0.2), 0u32..1000, prop::bool::weighted(0.3), prop::bool::weighted(0.4)), 1..40);
    let straddling = prop::option::of((0u8..2 * KEYS, 0u32..1000));
    let strategy = (prop::collection::vec(any::<bool>(), 2 * KEYS as usize), straddling, steps).prop_flat_map(|(snap, straddling, steps)| {
        let n = steps.len() + 2 * KEYS as usize + 1;
        (
            Just(snap),
            Just(straddling),
            Just(steps),
            prop::collection::vec(prop::bool::weighted(0.3), n * 4 + 8),
            prop::collection::vec((0..n, 0..n, 0..n), 0..4),
            prop::collection::vec(0..n, 0..5),
        )
    });
    let mut runner = TestRunner::new(Config { cases: 48, failure_persistence: None, ..Config::default() });
    runner
        .run(&strategy, |(snap, straddling, steps, cuts, replays, dups)| {
            let events = history(&snap, straddling, &steps);
            // Each (entity, partition) stream is delivered on its own; their batches interleave.
            let streams: Vec<(Entity, i32)> = [Entity::Customer, Entity::Orders].into_iter().flat_map(|e| [(e, 0), (e, 1)]).collect();
            let mut batches: Vec<Vec<Vec<Change>>> = vec![Vec::new(); streams.len()];
            for (s, (entity, p)) in streams.iter().enumerate() {
                let mine: Vec<&Event> = events.iter().filter(|e| e.change.entity == *entity && e.change.coords.partition == *p).collect();
                if mine.is_empty() {
                    continue;
                }
                let mut batch = Vec::new();
                let order = delivery(mine.len(), &replays, &dups);
                for (pos, i) in order.iter().enumerate() {
                    batch.push(mine[*i].change.clone());
                    if cuts.get(pos + s).copied().unwrap_or(false) || pos + 1 == order.len() {
                        batches[s].push(std::mem::take(&mut batch));
                    }
                }
            }
            rt.block_on(async {
                client.batch_execute("TRUNCATE customer_materialized, orders_materialized").await.unwrap();
                for i in 0..batches.iter().map(Vec::len).max().unwrap_or(0) {
                    for (s, stream) in batches.iter().enumerate() {
                        if let Some(batch) = stream.get(i) {
                            target.apply(streams[s].0, batch).await.unwrap();
                        }
                    }
                }
                let mut last: HashMap<uuid::Uuid, &Event> = HashMap::new();
                for e in &events {
                    last.insert(e.change.key, e);
                }
                for (id, e) in last {
                    let row = row_of(&client, e.change.entity, id).await;
                    let expected = match &e.state {
                        Some((email, status)) => Some((Some(email.clone()), Some(status.clone()), e.change.version.lsn, false)),
                        None => row.clone().map(|(email, status, _, _)| (email, status, e.change.version.lsn, true)),
                    };
                    prop_assert_eq!(
                        row,
                        expected,
                        "key {} after batches {:?}",
                        id,
                        batches.iter().map(|p| p.iter().map(|b| b.iter().map(|c| c.coords.offset).collect::<Vec<_>>()).collect::<Vec<_>>()).collect::<Vec<_>>()
                    );
                }
                Ok(())
            })
        })
        .unwrap();
}
