//! The PostgreSQL target against a real server: version guard, tombstones, TOAST, new
//! columns, CDC metadata.

use harness::testing::TestPostgres;
use sink::model::{Entity, Extra, Field, JsonKind, Op};

use crate::common::{customer, customer_row, key, postgres_target};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_guard_tombstone_and_no_resurrection() {
    let pg = TestPostgres::start("sink-pg-guard").await.unwrap();
    let target = postgres_target(&pg).await;
    let client = pg.endpoint.connect(&pg.endpoint.target_db).await.unwrap();
    let id = key(1);

    let r = target.apply(Entity::Customer, &[customer(id, Op::Create, 10, "a@x.io", "active", 0)]).await.unwrap();
    assert_eq!(r.applied, vec![id]);
    // In-batch dedup keeps the newest; the older create of the batch is subsumed.
    let r = target
        .apply(Entity::Customer, &[customer(id, Op::Create, 10, "a@x.io", "active", 0), customer(id, Op::Update, 20, "b@x.io", "blocked", 1)])
        .await
        .unwrap();
    assert_eq!((r.applied.len(), r.stale.len()), (1, 0));
    assert_eq!(customer_row(&client, id).await, Some((Some("b@x.io".into()), Some("blocked".into()), 20, false)));

    // Duplicate: stale.
    let r = target.apply(Entity::Customer, &[customer(id, Op::Update, 20, "b@x.io", "blocked", 1)]).await.unwrap();
    assert_eq!(r.stale, vec![id]);

    // Delete leaves a tombstone with the version; a replayed older update cannot resurrect.
    target.apply(Entity::Customer, &[customer(id, Op::Delete, 30, "b@x.io", "blocked", 2)]).await.unwrap();
    let r = target.apply(Entity::Customer, &[customer(id, Op::Update, 20, "c@x.io", "active", 1)]).await.unwrap();
    assert_eq!(r.stale, vec![id]);
    assert_eq!(customer_row(&client, id).await, Some((Some("b@x.io".into()), Some("blocked".into()), 30, true)));

    // A newer create (key reused) revives it.
    target.apply(Entity::Customer, &[customer(id, Op::Create, 40, "d@x.io", "active", 3)]).await.unwrap();
    assert_eq!(customer_row(&client, id).await, Some((Some("d@x.io".into()), Some("active".into()), 40, false)));

    let row = client
        .query_one(
            "SELECT _cdc_op::text, _cdc_partition, _cdc_offset, _cdc_source_ts IS NOT NULL, _cdc_applied_at <= clock_timestamp() \
             FROM customer_materialized WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "c");
    assert_eq!((row.get::<_, i32>(1), row.get::<_, i64>(2)), (0, 3));
    assert!(row.get::<_, bool>(3) && row.get::<_, bool>(4));

    // Delete of a key never seen: a tombstone row with only the CDC columns.
    let other = key(2);
    target.apply(Entity::Customer, &[customer(other, Op::Delete, 5, "x@x.io", "active", 4)]).await.unwrap();
    let r = target.apply(Entity::Customer, &[customer(other, Op::Create, 4, "x@x.io", "active", 0)]).await.unwrap();
    assert_eq!(r.stale, vec![other]);
    assert_eq!(customer_row(&client, other).await.map(|r| (r.2, r.3)), Some((5, true)));

    // Parents lookup sees tombstoned rows too (a parent deleted later still existed).
    let found = target.existing(Entity::Customer, &[id, other, key(3)]).await.unwrap();
    assert!(found.contains(&id) && found.contains(&other) && !found.contains(&key(3)));

    // Purge with a long retention keeps the fresh tombstone.
    assert_eq!(target.purge_tombstones(Entity::Customer, std::time::Duration::from_secs(3600)).await.unwrap(), 0);
    assert_eq!(target.purge_tombstones(Entity::Customer, std::time::Duration::ZERO).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toast_placeholder_keeps_value_and_new_columns_are_added() {
    let pg = TestPostgres::start("sink-pg-toast").await.unwrap();
    let target = postgres_target(&pg).await;
    let client = pg.endpoint.connect(&pg.endpoint.target_db).await.unwrap();
    let id = key(7);
    target.apply(Entity::Customer, &[customer(id, Op::Create, 10, "a@x.io", "active", 0)]).await.unwrap();

    let mut toasted = customer(id, Op::Update, 20, "b@x.io", "ignored", 1);
    toasted.after.as_mut().unwrap().known[2] = Some(Field::Unavailable);
    target.apply(Entity::Customer, &[toasted.clone()]).await.unwrap();
    assert_eq!(customer_row(&client, id).await, Some((Some("b@x.io".into()), Some("active".into()), 20, false)));

    // Within one batch the placeholder is filled from the older image of the same key.
    let mut later = toasted.clone();
    later.version.lsn = 40;
    let r = target.apply(Entity::Customer, &[customer(id, Op::Update, 30, "c@x.io", "blocked", 2), later]).await.unwrap();
    assert_eq!(r.applied.len(), 1);
    assert_eq!(customer_row(&client, id).await, Some((Some("b@x.io".into()), Some("blocked".into()), 40, false)));

    let mut extended = customer(id, Op::Update, 50, "e@x.io", "active", 3);
    extended.after.as_mut().unwrap().extra.insert("loyalty_tier".into(), Extra { text: Some("3".into()), kind: JsonKind::Number });
    target.ensure_columns(Entity::Customer, &["loyalty_tier".into()]).await.unwrap();
    target.apply(Entity::Customer, &[extended]).await.unwrap();
    let tier: Option<String> = client.query_one("SELECT loyalty_tier FROM customer_materialized WHERE id = $1", &[&id]).await.unwrap().get(0);
    assert_eq!(tier.as_deref(), Some("3"));
    // Rows without the new column leave it as it was (removed columns keep history).
    target.apply(Entity::Customer, &[customer(id, Op::Update, 60, "f@x.io", "active", 4)]).await.unwrap();
    let tier: Option<String> = client.query_one("SELECT loyalty_tier FROM customer_materialized WHERE id = $1", &[&id]).await.unwrap().get(0);
    assert_eq!(tier.as_deref(), Some("3"));
}

/// Audit mode: every change of a batch leaves one apply log row, written by the change's own
/// statement, with its outcome (applied, superseded in its batch, stale), its Kafka
/// coordinates, timestamps and source transaction; events that write nothing are logged by
/// `Target::log`. A log table of an earlier release gains the columns added since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_mode_logs_every_change_with_its_outcome() {
    use sink::targets::{LogEntry, LoggedOutcome, Target};
    let pg = TestPostgres::start("sink-pg-audit").await.unwrap();
    let client = pg.endpoint.connect(&pg.endpoint.target_db).await.unwrap();
    // The first release's layout: no version_commit, epoch, snapshot, tx_id.
    client
        .batch_execute(
            "CREATE TABLE _cdc_apply_log (id bigserial PRIMARY KEY, entity text NOT NULL, key uuid, version bigint, op char(1), outcome text NOT NULL, \
             kafka_partition int NOT NULL, kafka_offset bigint NOT NULL, kafka_ts timestamptz, source_ts timestamptz, \
             applied_at timestamptz NOT NULL DEFAULT clock_timestamp(), rule text)",
        )
        .await
        .unwrap();
    let target = Target::connect(&crate::common::target_config(&pg), true).await.expect("connect with audit");
    let id = key(7);
    let kafka_ts = crate::common::ts("2024-05-01T10:00:01Z");
    // Each change with its source transaction (`source.txId`): 9000 + its LSN.
    let with_ts = |mut c: sink::model::Change| {
        c.coords.timestamp = Some(kafka_ts);
        c.tx_id = Some(9_000 + c.version.lsn);
        c
    };
    // One batch: create (superseded by the update in the same batch), update (applied).
    target
        .apply(Entity::Customer, &[with_ts(customer(id, Op::Create, 10, "a@x.io", "active", 0)), with_ts(customer(id, Op::Update, 20, "b@x.io", "blocked", 1))])
        .await
        .unwrap();
    // A replay of the update: stale.
    target.apply(Entity::Customer, &[with_ts(customer(id, Op::Update, 20, "b@x.io", "blocked", 1))]).await.unwrap();
    // A dead-lettered event, logged apart.
    let mut dlq = LogEntry::of_change(&with_ts(customer(id, Op::Update, 30, "bad", "active", 2)), LoggedOutcome::Dlq);
    dlq.rule = Some("email_format".into());
    // An event without a transaction id (a flattened one): NULL.
    let mut ignored = LogEntry::of_change(&customer(id, Op::Update, 40, "x@x.io", "active", 3), LoggedOutcome::Ignored);
    ignored.key = None;
    target.log(Entity::Customer, &[dlq, ignored]).await.unwrap();

    let tx: Vec<Option<i64>> = client.query("SELECT tx_id FROM _cdc_apply_log ORDER BY id", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(tx, [Some(9_020), Some(9_010), Some(9_020), Some(9_030), None], "each row carries its change's source transaction");
    client.execute("DELETE FROM _cdc_apply_log WHERE outcome = 'ignored'", &[]).await.unwrap();
    let rows = client
        .query(
            "SELECT entity, key, version, op::text, outcome, kafka_partition, kafka_offset, kafka_ts, source_ts IS NOT NULL, applied_at <= clock_timestamp(), rule \
             FROM _cdc_apply_log ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, i64, String, String, i64, Option<String>)> =
        rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, i64>(2), r.get::<_, String>(3), r.get::<_, String>(4), r.get::<_, i64>(6), r.get(10))).collect();
    assert_eq!(
        got,
        vec![
            ("customer".into(), 20, "u".into(), "applied".into(), 1, None),
            ("customer".into(), 10, "c".into(), "superseded".into(), 0, None),
            ("customer".into(), 20, "u".into(), "stale".into(), 1, None),
            ("customer".into(), 30, "u".into(), "dlq".into(), 2, Some("email_format".into())),
        ]
    );
    for r in &rows[..3] {
        assert_eq!(r.get::<_, uuid::Uuid>(1), id);
        assert_eq!(r.get::<_, Option<chrono::DateTime<chrono::Utc>>>(7), Some(kafka_ts), "the Kafka record timestamp is kept");
        assert!(r.get::<_, bool>(8) && r.get::<_, bool>(9));
    }
    // Without audit mode nothing is logged and no log table is created.
    let pg2 = TestPostgres::start("sink-pg-no-audit").await.unwrap();
    let plain = postgres_target(&pg2).await;
    plain.apply(Entity::Customer, &[customer(id, Op::Create, 10, "a@x.io", "active", 0)]).await.unwrap();
    let c2 = pg2.endpoint.connect(&pg2.endpoint.target_db).await.unwrap();
    let exists: bool = c2.query_one("SELECT to_regclass('_cdc_apply_log') IS NOT NULL", &[]).await.unwrap().get(0);
    assert!(!exists);
}

/// A replayed image older than what the target holds, in the same batch as a newer change
/// that carries a TOAST placeholder: the placeholder keeps the target's (newer) value, it is
/// never filled from the replay. And when the target is older than both, the batch's older
/// image is what the placeholder keeps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toast_placeholder_never_takes_a_replayed_older_value() {
    let pg = TestPostgres::start("sink-pg-toast-replay").await.unwrap();
    let target = postgres_target(&pg).await;
    let client = pg.endpoint.connect(&pg.endpoint.target_db).await.unwrap();
    let id = key(8);
    target.apply(Entity::Customer, &[customer(id, Op::Create, 90, "v9@x.io", "blocked", 9)]).await.unwrap();
    let replay = customer(id, Op::Update, 50, "v5@x.io", "inactive", 5);
    let mut toasted = customer(id, Op::Update, 100, "v10@x.io", "ignored", 10);
    toasted.after.as_mut().unwrap().known[2] = Some(Field::Unavailable);
    let r = target.apply(Entity::Customer, &[replay.clone(), toasted.clone()]).await.unwrap();
    assert_eq!(r.applied, vec![id]);
    assert_eq!(
        customer_row(&client, id).await,
        Some((Some("v10@x.io".into()), Some("blocked".into()), 100, false)),
        "status kept from v9, not the replayed v5"
    );

    let fresh = key(9);
    let mut toasted = customer(fresh, Op::Update, 100, "v10@x.io", "ignored", 10);
    toasted.after.as_mut().unwrap().known[2] = Some(Field::Unavailable);
    target.apply(Entity::Customer, &[customer(fresh, Op::Create, 50, "v5@x.io", "inactive", 5), toasted]).await.unwrap();
    assert_eq!(customer_row(&client, fresh).await, Some((Some("v10@x.io".into()), Some("inactive".into()), 100, false)));
}

/// Versions in the target: a transaction that wrote before the snapshot point and committed
/// after it replaces the snapshot row; a replayed snapshot row does not come back; a raised
/// epoch outranks every version of the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_position_orders_snapshot_and_stream() {
    use sink::model::Version;
    let pg = TestPostgres::start("sink-pg-versions").await.unwrap();
    let target = postgres_target(&pg).await;
    let client = pg.endpoint.connect(&pg.endpoint.target_db).await.unwrap();
    let id = key(10);
    let at = |version: Version, email: &str, offset: i64| {
        let mut c = customer(id, if version.snapshot { Op::Read } else { Op::Update }, version.lsn, email, "active", offset);
        c.version = version;
        c
    };
    let snapshot = Version { epoch: 0, commit: Some(5000), lsn: 5000, snapshot: true };
    assert_eq!(target.apply(Entity::Customer, &[at(snapshot, "snapshot@x.io", 0)]).await.unwrap().applied, vec![id]);
    let r = target.apply(Entity::Customer, &[at(Version::streamed(None, 4900), "straddling@x.io", 1)]).await.unwrap();
    assert_eq!(r.applied, vec![id], "lower LSN, later commit: applied");
    let r = target.apply(Entity::Customer, &[at(Version::streamed(Some(5100), 4950), "later@x.io", 2)]).await.unwrap();
    assert_eq!(r.applied, vec![id]);
    let r = target.apply(Entity::Customer, &[at(snapshot, "snapshot@x.io", 0), at(Version::streamed(None, 4900), "straddling@x.io", 1)]).await.unwrap();
    assert_eq!(r.stale, vec![id], "replays of the snapshot row and the first transaction stay stale");
    assert_eq!(customer_row(&client, id).await.map(|r| r.0), Some(Some("later@x.io".into())));
    let restored = Version { epoch: 1, ..Version::streamed(Some(10), 20) };
    assert_eq!(target.apply(Entity::Customer, &[at(restored, "restored@x.io", 3)]).await.unwrap().applied, vec![id], "a new epoch re-bases versions");
    let r = target.apply(Entity::Customer, &[at(Version::streamed(Some(9000), 9000), "old-cluster@x.io", 4)]).await.unwrap();
    assert_eq!(r.stale, vec![id], "the old epoch's higher LSNs no longer win");
}

/// Sends `signal` to a process and its children (a postmaster and its backends).
fn signal_tree(pid: i32, signal: nix::sys::signal::Signal) {
    let mut pids = vec![pid];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else { continue };
        // Field 4, after the parenthesised command name.
        let ppid = stat.rsplit_once(") ").and_then(|(_, rest)| rest.split(' ').nth(1)).and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(pid) {
            pids.push(child);
        }
    }
    for p in pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), signal);
    }
}

/// Client-side deadlines and a pool that hands out a free connection: a server that stops
/// answering (frozen) makes a call fail with a retriable timeout instead of hanging, the
/// next call after it recovers works on a fresh connection; and a connection stuck behind a
/// lock does not hold up calls while another connection is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_and_a_free_connection_pool() {
    use nix::sys::signal::Signal;
    use sink::targets::{Target, TargetError};
    use std::time::Duration;
    let pg = TestPostgres::start("sink-pg-deadlines").await.unwrap();
    let config = crate::common::sink_config(&pg, "127.0.0.1:1", "[target.postgres]\npool_size = 2\nstatement_timeout = \"5s\"\ncall_timeout = \"6s\"\n");
    let target = std::sync::Arc::new(Target::connect(&config.target, false).await.unwrap());
    let id = key(20);
    target.apply(Entity::Customer, &[customer(id, Op::Create, 10, "a@x.io", "active", 0)]).await.unwrap();

    signal_tree(pg.pid(), Signal::SIGSTOP);
    let frozen = tokio::time::timeout(Duration::from_secs(30), target.apply(Entity::Customer, &[customer(id, Op::Update, 20, "b@x.io", "active", 1)])).await;
    signal_tree(pg.pid(), Signal::SIGCONT);
    let error = frozen.expect("the client deadline ends the call").expect_err("a frozen server cannot answer");
    assert!(matches!(error, TargetError::Timeout { .. }) && error.is_retriable(), "{error}");
    let r = target.apply(Entity::Customer, &[customer(id, Op::Update, 20, "b@x.io", "active", 1)]).await.unwrap();
    assert_eq!(r.applied, vec![id], "after the server is back the retried call works");

    // One connection waits on a lock; the other serves every other call meanwhile.
    let mut blocker = pg.endpoint.connect(&pg.endpoint.target_db).await.unwrap();
    let lock = blocker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE customer_materialized IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let stuck = tokio::spawn({
        let target = std::sync::Arc::clone(&target);
        async move { target.apply(Entity::Customer, &[customer(id, Op::Update, 30, "c@x.io", "active", 2)]).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!stuck.is_finished(), "the customer write waits on the lock");
    for n in 0..4u8 {
        let address = key(40 + n);
        let found = tokio::time::timeout(Duration::from_secs(2), target.existing(Entity::Address, &[address])).await;
        assert!(matches!(found, Ok(Ok(_))), "call {n} waited behind the stuck connection: {found:?}");
    }
    lock.commit().await.unwrap();
    assert_eq!(stuck.await.unwrap().unwrap().applied, vec![id]);
}

/// Decodes one Debezium JSON event (decimals as strings) into its change.
fn decoded(table: &str, offset: i64, value: serde_json::Value) -> sink::model::Change {
    use sink::decode::{DecodeOptions, Decoded, decode};
    let coords = sink::model::Coords { topic: format!("cdc.public.{table}"), partition: 0, offset, timestamp: None };
    let options = DecodeOptions { decimals: sink::config::DecimalHandling::String, ..DecodeOptions::default() };
    match decode(&coords, None, Some(value.to_string().as_bytes()), &options) {
        Ok(Decoded::Change(c)) => *c,
        other => panic!("{other:?}"),
    }
}

/// REPLICA IDENTITY DEFAULT: a column added in the source (unknown to the sink) is set by
/// one change and sent as the TOAST placeholder by the next change of the key in the same
/// batch (the same transaction): the target holds the value the first one set, and a later
/// placeholder alone leaves it as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toast_placeholder_on_an_added_column_keeps_the_value_an_older_change_set() {
    let pg = TestPostgres::start("sink-pg-toast-added").await.unwrap();
    let target = postgres_target(&pg).await;
    let client = pg.endpoint.connect(&pg.endpoint.target_db).await.unwrap();
    let id = key(11).to_string();
    let notes = "n".repeat(12_800);
    let event = |lsn: i64, email: &str, notes: &str| {
        serde_json::json!({"before": null, "after": {"id": id, "email": email, "status": "active", "updated_at": "2024-05-01T10:00:00Z", "notes": notes},
            "source": {"lsn": lsn}, "op": "u"})
    };
    let batch = [decoded("customer", 0, event(10, "a@x.io", &notes)), decoded("customer", 1, event(11, "b@x.io", sink::decode::TOAST_PLACEHOLDER))];
    target.ensure_columns(Entity::Customer, &["notes".into()]).await.unwrap();
    let r = target.apply(Entity::Customer, &batch).await.unwrap();
    assert_eq!(r.applied, vec![key(11)]);
    const STORED: &str = "SELECT email, notes FROM customer_materialized WHERE id = $1";
    let got = client.query_one(STORED, &[&key(11)]).await.unwrap();
    assert_eq!((got.get::<_, String>(0), got.get::<_, Option<String>>(1)), ("b@x.io".to_string(), Some(notes.clone())), "the older change's value is kept");
    target.apply(Entity::Customer, &[decoded("customer", 2, event(12, "c@x.io", sink::decode::TOAST_PLACEHOLDER))]).await.unwrap();
    let got = client.query_one(STORED, &[&key(11)]).await.unwrap();
    assert_eq!((got.get::<_, String>(0), got.get::<_, Option<String>>(1)), ("c@x.io".to_string(), Some(notes)), "a placeholder is never data");
}

/// Added source columns named like the sink's own columns (or MongoDB's reserved fields)
/// are stored under the documented rename: never a duplicate column in the INSERT, and the
/// sink's own `_cdc_lsn` still holds the version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_columns_named_like_the_sinks_own_are_renamed() {
    let pg = TestPostgres::start("sink-pg-reserved-names").await.unwrap();
    let target = postgres_target(&pg).await;
    let client = pg.endpoint.connect(&pg.endpoint.target_db).await.unwrap();
    let id = key(12).to_string();
    let change = decoded(
        "customer",
        0,
        serde_json::json!({"after": {"id": id, "email": "a@x.io", "status": "active", "updated_at": "2024-05-01T10:00:00Z",
            "_cdc_lsn": "source value", "_id": "x", "a.b": 1}, "source": {"lsn": 77}, "op": "c"}),
    );
    let added: Vec<String> = change.after.as_ref().unwrap().extra.keys().cloned().collect();
    assert_eq!(added, ["_source__cdc_lsn", "_source__id", "_source_a%2Eb"]);
    target.ensure_columns(Entity::Customer, &added).await.unwrap();
    assert_eq!(target.apply(Entity::Customer, &[change]).await.unwrap().applied, vec![key(12)]);
    let row = client.query_one("SELECT _cdc_lsn, \"_source__cdc_lsn\", \"_source_a%2Eb\" FROM customer_materialized WHERE id = $1", &[&key(12)]).await.unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, String>(1), row.get::<_, String>(2)), (77, "source value".to_string(), "1".to_string()));
}

/// A table made by a sink version without commit positions: on upgrade its rows get their
/// LSN as commit position, so a later snapshot row replaces them (and an older one still
/// does not), while a NULL commit written after the upgrade still means an unknown commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_upgrade_rows_can_be_replaced_by_a_later_snapshot_row() {
    use sink::model::Version;
    let pg = TestPostgres::start("sink-pg-upgrade").await.unwrap();
    let client = pg.endpoint.connect(&pg.endpoint.target_db).await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE customer_materialized (id uuid PRIMARY KEY, email text, status text, updated_at timestamptz, \
             _cdc_lsn bigint not null, _cdc_source_ts timestamptz, _cdc_op char(1) not null, _cdc_partition int, _cdc_offset bigint, \
             _cdc_applied_at timestamptz not null default clock_timestamp(), _cdc_deleted boolean not null default false);
             INSERT INTO customer_materialized (id, email, status, _cdc_lsn, _cdc_op) VALUES ('0d0d0d0d-0d0d-0d0d-0d0d-0d0d0d0d0d0d', 'old@x.io', 'active', 100, 'u');",
        )
        .await
        .unwrap();
    let target = postgres_target(&pg).await;
    let id = key(13);
    let snapshot = |lsn: i64, email: &str| {
        let mut c = customer(id, Op::Read, lsn, email, "active", 0);
        c.version = Version { epoch: 0, commit: Some(lsn), lsn, snapshot: true };
        c
    };
    let r = target.apply(Entity::Customer, &[snapshot(50, "older-snapshot@x.io")]).await.unwrap();
    assert_eq!(r.stale, vec![id], "a snapshot before the stored change stays stale");
    let r = target.apply(Entity::Customer, &[snapshot(500, "re-snapshot@x.io")]).await.unwrap();
    assert_eq!(r.applied, vec![id], "a later snapshot replaces the pre-upgrade row");
    assert_eq!(customer_row(&client, id).await.map(|r| r.0), Some(Some("re-snapshot@x.io".into())));
    // Restarting the sink does not touch NULL commits written since (first transactions).
    let first = key(14);
    let mut c = customer(first, Op::Update, 900, "first@x.io", "active", 1);
    c.version = Version::streamed(None, 900);
    target.apply(Entity::Customer, &[c]).await.unwrap();
    drop(target);
    let target = postgres_target(&pg).await;
    let mut replayed = customer(first, Op::Read, 1000, "snapshot@x.io", "active", 0);
    replayed.version = Version { epoch: 0, commit: Some(1000), lsn: 1000, snapshot: true };
    assert_eq!(target.apply(Entity::Customer, &[replayed]).await.unwrap().stale, vec![first], "an unknown commit still outranks the snapshot");
}

/// An order item as Debezium sends it with its schema, `quantity` declared `int64` (the
/// source column is now bigint).
fn bigint_item(id: uuid::Uuid, lsn: i64, quantity: i64) -> serde_json::Value {
    serde_json::json!({
        "schema": {"type": "struct", "fields": [
            {"field": "before", "type": "struct", "optional": true, "fields": []},
            {"field": "after", "type": "struct", "optional": true, "fields": [{"field": "quantity", "type": "int64"}]}]},
        "payload": {
            "after": {"id": id, "order_id": key(90), "product_sku": "S", "product_name": "N", "quantity": quantity, "unit_price": "1.00", "line_total": "1.00"},
            "source": {"lsn": lsn, "table": "order_item"}, "op": "c"}
    })
}

/// Widening follows the source's declared type and waits for its lock no longer than the
/// lock timeout: a long transaction holding the table makes the ALTER fail fast with 55P03
/// (transient: retried), never queue every other session behind it until the statement
/// timeout. Without a wider declared type a value that does not fit is set apart, the
/// table is never altered for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn widening_follows_the_schema_and_waits_only_for_the_lock_timeout() {
    let pg = TestPostgres::start("sink-pg-widen").await.unwrap();
    let target = postgres_target(&pg).await;
    let client = pg.endpoint.connect(&pg.endpoint.target_db).await.unwrap();
    let column_type = || async {
        client
            .query_one("SELECT data_type::text FROM information_schema.columns WHERE table_name = 'order_item_materialized' AND column_name = 'quantity'", &[])
            .await
            .unwrap()
            .get::<_, String>(0)
    };
    // Schemaless: 9e9 does not fit integer and nothing says the source changed.
    let plain = serde_json::json!({"after": {"id": key(1), "order_id": key(90), "product_sku": "S", "product_name": "N", "quantity": 9_000_000_000i64,
        "unit_price": "1.00", "line_total": "1.00"}, "source": {"lsn": 10, "table": "order_item"}, "op": "c"});
    let r = target.apply(Entity::OrderItem, &[decoded("order_item", 0, plain)]).await.unwrap();
    assert!(r.applied.is_empty() && r.out_of_range.len() == 1, "{r:?}");
    assert!(r.out_of_range[0].1.contains("out of range for integer"), "{:?}", r.out_of_range);
    assert_eq!(column_type().await, "integer", "never altered for an undeclared value");

    // A long transaction holds the table: the widening gives up after the lock timeout.
    let holder = pg.endpoint.connect(&pg.endpoint.target_db).await.unwrap();
    holder.batch_execute("BEGIN; LOCK TABLE order_item_materialized IN ACCESS SHARE MODE").await.unwrap();
    let err = target.apply(Entity::OrderItem, &[decoded("order_item", 1, bigint_item(key(2), 20, 9_000_000_000))]).await.unwrap_err();
    assert!(err.to_string().contains("SQLSTATE 55P03"), "lock_timeout, not the statement timeout: {err}");
    assert_eq!(err.class(), sink::targets::ErrorClass::Transient);
    holder.batch_execute("COMMIT").await.unwrap();
    let r = target.apply(Entity::OrderItem, &[decoded("order_item", 1, bigint_item(key(2), 20, 9_000_000_000))]).await.unwrap();
    assert_eq!(r.applied, vec![key(2)], "{r:?}");
    assert_eq!(column_type().await, "bigint");
    let quantity: i64 = client.query_one("SELECT quantity FROM order_item_materialized WHERE id = $1", &[&key(2)]).await.unwrap().get(0);
    assert_eq!(quantity, 9_000_000_000);
}
