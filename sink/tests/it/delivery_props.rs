//! Property: for a random source history (a snapshot, a transaction spanning the snapshot
//! point, then streamed transactions with creates, updates, TOAST placeholders and deletes
//! over a few keys on two partitions), any delivery that duplicates events, replays from
//! arbitrary earlier offsets and splits into different batches, with the two partitions'
//! batches interleaved, leaves exactly the final source state in the real PostgreSQL target:
//! no lost change, no stale overwrite, no resurrected delete, no placeholder filled with an
//! outdated value.

use std::collections::HashMap;

use harness::testing::TestPostgres;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use sink::model::{Change, Entity, Field, Op, Version};

use crate::common::{customer, customer_row, key, postgres_target};

const KEYS: u8 = 4;
const SNAPSHOT_LSN: i64 = 1000;

/// (key index, is delete, payload variant, TOAST placeholder for the status)
type Step = (u8, bool, u32, bool);

/// One event of the history, with what the target must hold once it is the key's last.
#[derive(Clone)]
struct Event {
    change: Change,
    /// (email, status) the row holds after this event; None after a delete.
    state: Option<(String, String)>,
}

fn event(k: u8, op: Op, version: Version, email: &str, status: &str, toast: bool, offset: i64) -> Change {
    let mut c = customer(key(k), op, version.lsn, email, status, offset);
    c.version = version;
    c.coords.partition = i32::from(k % 2);
    if toast {
        c.after.as_mut().expect("an update").known[2] = Some(Field::Unavailable);
    }
    c
}

/// A valid source history: snapshot rows of the keys present at the snapshot point, then the
/// transaction that wrote before the snapshot point and committed after it (commit position
/// unknown: the session's first), then one streamed transaction per step.
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
    for (k, present) in snapshot_keys.iter().enumerate() {
        if *present {
            let snapshot = Version { epoch: 0, commit: Some(SNAPSHOT_LSN), lsn: SNAPSHOT_LSN, snapshot: true };
            push(&mut out, &mut state, k as u8, Op::Read, snapshot, format!("snap{k}@x.io"), "active".into(), false);
        }
    }
    if let Some((k, variant)) = straddling {
        let op = if state.contains_key(&k) { Op::Update } else { Op::Create };
        push(&mut out, &mut state, k, op, Version::streamed(None, SNAPSHOT_LSN - 100), format!("t0-{variant}@x.io"), "inactive".into(), false);
    }
    for (i, (k, delete, variant, toast)) in steps.iter().enumerate() {
        let k = k % KEYS;
        let exists = state.contains_key(&k);
        let op = match (delete, exists) {
            (true, true) => Op::Delete,
            (_, true) => Op::Update,
            (_, false) => Op::Create,
        };
        // Transactions in commit order: the stream's last commit rises; the change's own LSN
        // may be lower than an earlier transaction's (it wrote earlier, committed later).
        let commit = SNAPSHOT_LSN + 100 + i as i64 * 10;
        let lsn = commit - 5 - i64::from(*variant % 7) * 30;
        let toast = *toast && op == Op::Update;
        let status = if toast { state[&k].1.clone() } else { ["active", "inactive", "blocked"][*variant as usize % 3].to_string() };
        push(&mut out, &mut state, k, op, Version::streamed(Some(commit), lsn), format!("u{variant}@x.io"), status, toast);
    }
    out
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

    let steps = prop::collection::vec((0u8..KEYS, prop::bool::weighted(0.2), 0u32..1000, prop::bool::weighted(0.3)), 1..30);
    let straddling = prop::option::of((0u8..KEYS, 0u32..1000));
    let strategy = (prop::collection::vec(any::<bool>(), KEYS as usize), straddling, steps).prop_flat_map(|(snap, straddling, steps)| {
        let n = steps.len() + KEYS as usize + 1;
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
            // Each partition is delivered on its own; their batches interleave.
            let mut batches: [Vec<Vec<Change>>; 2] = [Vec::new(), Vec::new()];
            for (p, partition_batches) in batches.iter_mut().enumerate() {
                let mine: Vec<&Event> = events.iter().filter(|e| e.change.coords.partition == p as i32).collect();
                if mine.is_empty() {
                    continue;
                }
                let mut batch = Vec::new();
                let order = delivery(mine.len(), &replays, &dups);
                for (pos, i) in order.iter().enumerate() {
                    batch.push(mine[*i].change.clone());
                    if cuts.get(pos + p).copied().unwrap_or(false) || pos + 1 == order.len() {
                        partition_batches.push(std::mem::take(&mut batch));
                    }
                }
            }
            rt.block_on(async {
                client.batch_execute("TRUNCATE customer_materialized").await.unwrap();
                let [a, b] = &batches;
                for i in 0..a.len().max(b.len()) {
                    for batch in [a.get(i), b.get(i)].into_iter().flatten() {
                        target.apply(Entity::Customer, batch).await.unwrap();
                    }
                }
                let mut last: HashMap<uuid::Uuid, &Event> = HashMap::new();
                for e in &events {
                    last.insert(e.change.key, e);
                }
                for (id, e) in last {
                    let row = customer_row(&client, id).await;
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
