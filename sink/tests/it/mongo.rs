//! The MongoDB target against a real server. There is none on the development machines:
//! these run when `MONGODB_URI` is set (at build time) and are ignored, with the reason, otherwise.

use mongodb::bson::{Bson, Document, doc};
use sink::config::SinkConfig;
use sink::model::{Change, Coords, Entity, Field, Op, Row, Value, Version};
use sink::targets::Target;
use uuid::Uuid;

/// Only called by tests that are ignored unless `MONGODB_URI` is set.
fn mongo_uri() -> Option<String> {
    Some(std::env::var("MONGODB_URI").expect("MONGODB_URI is set (the test is ignored otherwise)"))
}

/// A MongoDB target on a fresh database of the server at `uri`.
async fn mongo_target(uri: &str) -> (String, Target) {
    let database = format!("sink_test_{}", Uuid::new_v4().simple());
    let toml = format!(
        "[kafka]\nbrokers=\"x:1\"\ngroup_id=\"g\"\ntopics=[\"cdc.public.orders\"]\ndlq_topic=\"cdc.dlq\"\n\
         [target]\nkind=\"mongodb\"\nurl=\"{uri}\"\n[target.mongodb]\ndatabase=\"{database}\"\n[http]\nlisten=\"127.0.0.1:0\"\n"
    );
    let config = SinkConfig::from_toml(&toml, []).unwrap();
    let target = Target::connect(&config.target, false).await.unwrap();
    (database, target)
}

fn item(id: Uuid, order: Uuid, lsn: i64, qty: i64, op: Op) -> Change {
    let e = Entity::OrderItem;
    let mut row = Row::empty(e);
    row.known[0] = Some(Field::Value(Value::Uuid(id)));
    row.known[1] = Some(Field::Value(Value::Uuid(order)));
    row.known[2] = Some(Field::Value(Value::Text("SKU".into())));
    row.known[4] = Some(Field::Value(Value::Int(qty)));
    let (before, after) = if op.is_delete() { (Some(row), None) } else { (None, Some(row)) };
    Change {
        entity: e,
        key: id,
        op,
        version: Version::streamed(None, lsn),
        source_ts: None,
        emitted_ts: None,
        tx_id: None,
        before,
        after,
        coords: Coords { topic: "cdc.public.order_item".into(), partition: 0, offset: lsn, timestamp: None },
    }
}

fn order(id: Uuid, lsn: i64, status: &str) -> Change {
    let e = Entity::Orders;
    let mut row = Row::empty(e);
    row.known[0] = Some(Field::Value(Value::Uuid(id)));
    row.known[2] = Some(Field::Value(Value::Text(status.into())));
    Change {
        entity: e,
        key: id,
        op: Op::Update,
        version: Version::streamed(None, lsn),
        source_ts: None,
        emitted_ts: None,
        tx_id: None,
        before: None,
        after: Some(row),
        coords: Coords { topic: "cdc.public.orders".into(), partition: 0, offset: lsn, timestamp: None },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(mongodb), ignore = "needs a MongoDB server: set MONGODB_URI (at build time too) to run it")]
async fn items_before_their_order_are_embedded_and_versions_guard() {
    let Some(uri) = mongo_uri() else { return };
    let (database, target) = mongo_target(&uri).await;
    let (o, i1, i2) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());

    target.apply(Entity::OrderItem, &[item(i1, o, 10, 1, Op::Create), item(i2, o, 11, 2, Op::Create)]).await.unwrap();
    target.apply(Entity::Orders, &[order(o, 5, "pending")]).await.unwrap();
    // Replays change nothing; newer item version wins; delete leaves an item tombstone.
    let r = target.apply(Entity::OrderItem, &[item(i1, o, 10, 9, Op::Update)]).await.unwrap();
    assert_eq!(r.stale.len(), 1);
    target.apply(Entity::OrderItem, &[item(i1, o, 20, 3, Op::Update), item(i2, o, 21, 2, Op::Delete)]).await.unwrap();
    let r = target.apply(Entity::Orders, &[order(o, 4, "cancelled")]).await.unwrap();
    assert_eq!(r.stale.len(), 1);

    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
    let db = client.database(&database);
    let doc: Document = db.collection("orders").find_one(doc! { "_id": o.to_string() }).await.unwrap().unwrap();
    assert_eq!(doc.get_str("status").unwrap(), "pending");
    assert_eq!(doc.get_document("_cdc").unwrap().get_i64("lsn").unwrap(), 5);
    let items = doc.get_array("items").unwrap();
    assert_eq!(items.len(), 2);
    for it in items {
        let it = it.as_document().unwrap();
        let cdc = it.get_document("_cdc").unwrap();
        if it.get_str("id").unwrap() == i1.to_string() {
            assert_eq!((it.get_i32("quantity").unwrap(), cdc.get_i64("lsn").unwrap()), (3, 20));
        } else {
            assert!(cdc.get_bool("deleted").unwrap());
        }
    }
    assert!(target.existing(Entity::Orders, &[o]).await.unwrap().contains(&o));
    db.drop().await.unwrap();
}

/// An item moved from order A to order B lives only in B (tombstoned in A, where an older
/// replay naming A stays stale); a large batch goes through as several commands under 16 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(mongodb), ignore = "needs a MongoDB server: set MONGODB_URI (at build time too) to run it")]
async fn a_moved_item_leaves_its_old_order_and_large_batches_split() {
    let Some(uri) = mongo_uri() else { return };
    let (database, target) = mongo_target(&uri).await;
    let (a, b, i) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    target.apply(Entity::OrderItem, &[item(i, a, 10, 1, Op::Create)]).await.unwrap();
    target.apply(Entity::OrderItem, &[item(i, b, 20, 2, Op::Update)]).await.unwrap();
    let r = target.apply(Entity::OrderItem, &[item(i, a, 10, 1, Op::Create)]).await.unwrap();
    assert_eq!(r.stale.len(), 1, "the replayed create naming A is stale");

    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
    let db = client.database(&database);
    let live = |d: &Document| {
        d.get_array("items")
            .unwrap()
            .iter()
            .filter_map(Bson::as_document)
            .filter(|it| !it.get_document("_cdc").unwrap().get_bool("deleted").unwrap_or(false))
            .count()
    };
    let in_a: Document = db.collection("orders").find_one(doc! { "_id": a.to_string() }).await.unwrap().unwrap();
    let in_b: Document = db.collection("orders").find_one(doc! { "_id": b.to_string() }).await.unwrap().unwrap();
    assert_eq!((live(&in_a), live(&in_b)), (0, 1));

    // 24 orders of ~1 MiB each in one batch: over 16 MiB together.
    let big: Vec<Change> = (0..24)
        .map(|n| {
            let mut o = order(Uuid::new_v4(), 100 + n, "pending");
            o.after
                .as_mut()
                .unwrap()
                .extra
                .insert("note".into(), sink::model::Extra { text: Some("x".repeat(1024 * 1024)), kind: sink::model::JsonKind::String });
            o
        })
        .collect();
    let r = target.apply(Entity::Orders, &big).await.unwrap();
    assert_eq!(r.applied.len(), 24, "{:?}", r.rejected);
    db.drop().await.unwrap();
}

/// REPLICA IDENTITY DEFAULT: a key-only delete of an item no document holds leaves a
/// tombstone, so a re-sent (older) create does not embed the item again; outcomes are per
/// document (applied and stale in one batch told apart exactly, not by count); a TOAST
/// placeholder on an added field keeps the value an older change of the batch set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(mongodb), ignore = "needs a MongoDB server: set MONGODB_URI (at build time too) to run it")]
async fn key_only_item_deletes_leave_a_tombstone_and_outcomes_are_per_document() {
    let Some(uri) = mongo_uri() else { return };
    let (database, target) = mongo_target(&uri).await;
    let (o, i) = (Uuid::new_v4(), Uuid::new_v4());
    let mut delete = item(i, o, 30, 1, Op::Delete);
    delete.before.as_mut().unwrap().known[1] = None;
    let r = target.apply(Entity::OrderItem, &[delete]).await.unwrap();
    assert_eq!(r.applied, vec![i], "the tombstone is the delete's effect");
    let r = target.apply(Entity::OrderItem, &[item(i, o, 20, 1, Op::Create)]).await.unwrap();
    assert_eq!(r.stale, vec![i], "the older create stays deleted");
    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
    let db = client.database(&database);
    assert!(db.collection::<Document>("orders").find_one(doc! { "items.id": i.to_string() }).await.unwrap().is_none());
    assert_eq!(target.apply(Entity::OrderItem, &[item(i, o, 40, 1, Op::Create)]).await.unwrap().applied, vec![i], "a newer create revives the key");

    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    target.apply(Entity::Orders, &[order(a, 10, "pending"), order(b, 10, "pending")]).await.unwrap();
    let r = target.apply(Entity::Orders, &[order(a, 11, "paid"), order(b, 9, "paid")]).await.unwrap();
    assert_eq!((r.applied, r.stale), (vec![a], vec![b]));

    let mut first = order(Uuid::new_v4(), 50, "pending");
    first.after.as_mut().unwrap().extra.insert("notes".into(), sink::model::Extra { text: Some("long".into()), kind: sink::model::JsonKind::String });
    let mut second = first.clone();
    second.version = Version::streamed(None, 51);
    second.after.as_mut().unwrap().extra.clear();
    second.after.as_mut().unwrap().unavailable.insert("notes".into());
    target.apply(Entity::Orders, &[first.clone(), second]).await.unwrap();
    let doc: Document = db.collection("orders").find_one(doc! { "_id": first.key.to_string() }).await.unwrap().unwrap();
    assert_eq!(doc.get_str("notes").unwrap(), "long");
    db.drop().await.unwrap();
}

/// A wrong password is the target's fault, not a transient one: the sink exits at start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(mongodb), ignore = "needs a MongoDB server: set MONGODB_URI (at build time too) to run it")]
async fn a_wrong_password_is_refused_at_connect() {
    let Some(uri) = mongo_uri() else { return };
    let wrong = uri.replacen("mongodb://", "mongodb://nobody:wrong@", 1);
    let toml = format!(
        "[kafka]\nbrokers=\"x:1\"\ngroup_id=\"g\"\ntopics=[\"cdc.public.orders\"]\ndlq_topic=\"cdc.dlq\"\n\
         [target]\nkind=\"mongodb\"\nurl=\"{wrong}\"\n[http]\nlisten=\"127.0.0.1:0\"\n"
    );
    let config = SinkConfig::from_toml(&toml, []).unwrap();
    let error = Target::connect(&config.target, false).await.err().expect("refused");
    assert_eq!(error.class(), sink::targets::ErrorClass::Target, "{error}");
}
