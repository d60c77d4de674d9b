//! The verifier names exactly the anomaly that was put into a real MongoDB target, and no
//! other: the same corruptions as `verify.rs`, plus the ones only embedding allows. The
//! target is built from the source as the sink writes it (`_id` = uuid text, decimals as
//! Decimal128, timestamps as BSON dates in milliseconds, `_cdc`, items embedded in their
//! order's `items`), so these tests do not depend on the sink's code.
//!
//! They need a MongoDB server at `MONGODB_URI` (each test uses its own database and drops
//! it); without one they say so and pass.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use harness::testing::TestPostgres;
use harness::verify::canonical::ColumnType;
use harness::verify::mapping::Mapping;
use harness::verify::{AnomalyKind, VerifyOptions, VerifyReport, verify_mongo};
use mongodb::bson::{Bson, Document, doc};
use mongodb::{Collection, Database};
use tokio_postgres::Client;

struct Fixture {
    pg: TestPostgres,
    source: Client,
    uri: String,
    db: Database,
}

impl Fixture {
    fn orders(&self) -> Collection<Document> {
        self.db.collection("orders")
    }

    fn customers(&self) -> Collection<Document> {
        self.db.collection("customers")
    }
}

/// The collection the sink writes each table to.
fn collection(table: &str) -> &'static str {
    match table {
        "customer" => "customers",
        "address" => "addresses",
        _ => "orders",
    }
}

/// Source with a few rows of every table; target materialized from it, all in agreement.
/// Only called by tests that are ignored unless `MONGODB_URI` is set.
async fn fixture(name: &str) -> anyhow::Result<Option<Fixture>> {
    let uri = std::env::var("MONGODB_URI").map_err(|_| anyhow::anyhow!("MONGODB_URI is not set"))?;
    let pg = TestPostgres::start(name).await?;
    let source = pg.endpoint.connect("app").await?;
    source
        .batch_execute(
            "INSERT INTO customer SELECT md5('c'||g)::uuid, 'c'||g||'@example.com', 'active', now() FROM generate_series(1, 20) g;
             INSERT INTO address SELECT md5('a'||g)::uuid, md5('c'||g)::uuid, 'billing', g||' Main St', 'Springfield', NULL, '12345', 'US', true, now() FROM generate_series(1, 20) g;
             INSERT INTO orders SELECT md5('o'||g)::uuid, md5('c'||g)::uuid, 'pending', 10.50, now(), now() FROM generate_series(1, 20) g;
             INSERT INTO order_item SELECT md5('i'||g)::uuid, md5('o'||g)::uuid, 'SKU-'||g, 'Thing '||g, 1, 10.50, 10.50 FROM generate_series(1, 20) g;",
        )
        .await?;
    let client = mongodb::Client::with_uri_str(&uri).await?;
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let db = client.database(&format!("{}_{}", name.replace('-', "_"), &suffix[..8]));
    let f = Fixture { pg, source, uri, db };
    materialize(&f).await?;
    Ok(Some(f))
}

/// A source row as the sink writes it: the fields (without `id`) and `_cdc`.
struct SinkRow {
    id: String,
    fields: Document,
    cdc: Document,
}

/// `table`'s rows as the sink would have applied them: values as the sink encodes them,
/// the commit time (milliseconds) as the version's source timestamp, applied now.
async fn sink_rows(f: &Fixture, table: &str) -> anyhow::Result<Vec<SinkRow>> {
    let mapping = Mapping::builtin();
    let entity = mapping.entity.iter().find(|e| e.source_table == table).expect("mapped table");
    // Text for what the sink writes as strings or decimals, typed values for the rest.
    let select: Vec<String> = entity
        .columns
        .iter()
        .map(|c| match c.ty {
            ColumnType::Uuid | ColumnType::Numeric => format!("t.{}::text", c.name),
            _ => format!("t.{}", c.name),
        })
        .collect();
    let sql = format!("SELECT {}, pg_xact_commit_timestamp(t.xmin) FROM {table} t ORDER BY t.id", select.join(", "));
    let mut out = Vec::new();
    for row in f.source.query(&sql, &[]).await? {
        let mut fields = Document::new();
        for (i, c) in entity.columns.iter().enumerate() {
            // As the sink's `bson_value`: uuid/text strings, Decimal128, int32, bool, and
            // dates floored to the millisecond.
            let value = match c.ty {
                ColumnType::Uuid | ColumnType::Text | ColumnType::Json => row.get::<_, Option<String>>(i).map_or(Bson::Null, Bson::String),
                ColumnType::Numeric => row.get::<_, Option<String>>(i).map_or(Ok(Bson::Null), |d| d.parse().map(Bson::Decimal128))?,
                ColumnType::Timestamptz => {
                    row.get::<_, Option<DateTime<Utc>>>(i).map_or(Bson::Null, |t| Bson::DateTime(mongodb::bson::DateTime::from_millis(t.timestamp_millis())))
                }
                ColumnType::Bool => row.get::<_, Option<bool>>(i).map_or(Bson::Null, Bson::Boolean),
                ColumnType::Int => row.get::<_, Option<i32>>(i).map_or(Bson::Null, Bson::Int32),
            };
            fields.insert(c.name.clone(), value);
        }
        let id = fields.get_str("id")?.to_string();
        fields.remove("id");
        let committed: DateTime<Utc> = row.get(entity.columns.len());
        out.push(SinkRow { id, fields, cdc: cdc(committed) });
    }
    Ok(out)
}

/// `_cdc` of a version committed at `committed`, applied now.
fn cdc(committed: DateTime<Utc>) -> Document {
    doc! {
        "lsn": 1_i64,
        "source_ts": mongodb::bson::DateTime::from_millis(committed.timestamp_millis()),
        "op": "c",
        "partition": 0_i32,
        "offset": 0_i64,
        "applied_at": mongodb::bson::DateTime::now(),
        "deleted": false,
    }
}

/// Writes every source row to the target as a perfect sink would.
async fn materialize(f: &Fixture) -> anyhow::Result<()> {
    let mut items: HashMap<String, Vec<Bson>> = HashMap::new();
    for row in sink_rows(f, "order_item").await? {
        let order_id = row.fields.get_str("order_id")?.to_string();
        let mut item = row.fields;
        item.insert("id", row.id);
        item.insert("_cdc", row.cdc);
        items.entry(order_id).or_default().push(Bson::Document(item));
    }
    for table in ["customer", "address", "orders"] {
        let mut docs = Vec::new();
        for row in sink_rows(f, table).await? {
            let mut doc = doc! { "_id": &row.id };
            doc.extend(row.fields);
            doc.insert("_cdc", row.cdc);
            if table == "orders" {
                doc.insert("items", items.remove(&row.id).unwrap_or_default());
            }
            docs.push(doc);
        }
        f.db.collection::<Document>(collection(table)).insert_many(docs).await?;
    }
    assert!(items.is_empty(), "every item has its order");
    Ok(())
}

async fn verify(f: &Fixture) -> anyhow::Result<VerifyReport> {
    Ok(verify_mongo(&f.pg.endpoint, &f.uri, f.db.name(), &VerifyOptions::default()).await?)
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

/// The embedded item `id` as stored, with the order holding it.
async fn stored_item(f: &Fixture, id: &str) -> anyhow::Result<(String, Document)> {
    let order = f.orders().find_one(doc! { "items.id": id }).await?.expect("the item is embedded");
    let item =
        order.get_array("items")?.iter().filter_map(Bson::as_document).find(|i| i.get_str("id").ok() == Some(id)).expect("the item is in the array").clone();
    Ok((order.get_str("_id")?.to_string(), item))
}

/// Sink timestamps are milliseconds: waiting a few makes "applied after" unambiguous.
async fn next_millisecond() {
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(mongodb), ignore = "needs a MongoDB server: set MONGODB_URI (at build time too) to run it")]
async fn an_untouched_target_converges_with_no_anomaly() -> anyhow::Result<()> {
    let f = fixture("verify-mongo-clean").await?.expect("a MongoDB fixture");
    let report = verify(&f).await?;
    assert!(report.converged, "{report:#?}");
    assert_eq!(report.target, "mongo");
    assert!(report.anomaly_counts.is_empty());
    assert_eq!(report.entities.len(), 4);
    for e in &report.entities {
        assert_eq!((e.source_count, e.target_count, e.matching), (20, 20, 20), "{e:?}");
    }
    f.db.drop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(mongodb), ignore = "needs a MongoDB server: set MONGODB_URI (at build time too) to run it")]
async fn a_deleted_document_is_a_lost_change() -> anyhow::Result<()> {
    let f = fixture("verify-mongo-lost").await?.expect("a MongoDB fixture");
    let k = key(&f, "c", 3).await?;
    f.customers().delete_one(doc! { "_id": &k }).await?;
    let report = verify(&f).await?;
    assert_only(&report, AnomalyKind::LostChange, "customer", &k);
    assert_eq!(report.entities[0].missing_in_target, 1);
    f.db.drop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(mongodb), ignore = "needs a MongoDB server: set MONGODB_URI (at build time too) to run it")]
async fn an_order_left_a_placeholder_is_a_lost_change_its_items_are_fine() -> anyhow::Result<()> {
    let f = fixture("verify-mongo-placeholder").await?.expect("a MongoDB fixture");
    let k = key(&f, "o", 3).await?;
    // What the sink leaves when an order's items arrived and the order never did.
    f.orders()
        .update_one(
            doc! { "_id": &k },
            doc! { "$unset": { "customer_id": "", "status": "", "total_amount": "", "created_at": "", "updated_at": "", "_cdc": "" } },
        )
        .await?;
    let report = verify(&f).await?;
    assert_only(&report, AnomalyKind::LostChange, "orders", &k);
    assert_eq!(report.entities[2].missing_in_target, 1);
    assert_eq!(report.entities[3].matching, 20);
    f.db.drop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(mongodb), ignore = "needs a MongoDB server: set MONGODB_URI (at build time too) to run it")]
async fn an_older_version_put_back_is_a_stale_overwrite() -> anyhow::Result<()> {
    let f = fixture("verify-mongo-stale").await?.expect("a MongoDB fixture");
    let k = key(&f, "c", 5).await?;
    // The source moves on; the target got the newer version, then an old event overwrote
    // it (its older values and version, applied after the newer commit).
    f.source.execute("UPDATE customer SET status = 'blocked' WHERE id = $1::text::uuid", &[&k]).await?;
    next_millisecond().await;
    f.customers().update_one(doc! { "_id": &k }, vec![doc! { "$set": { "_cdc.applied_at": "$$NOW" } }]).await?;
    let report = verify(&f).await?;
    assert_only(&report, AnomalyKind::StaleOverwrite, "customer", &k);
    assert_eq!(report.anomalies[0].fields[0].field, "status");
    f.db.drop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(mongodb), ignore = "needs a MongoDB server: set MONGODB_URI (at build time too) to run it")]
async fn a_change_that_never_arrived_is_a_lost_change() -> anyhow::Result<()> {
    let f = fixture("verify-mongo-lost-update").await?.expect("a MongoDB fixture");
    let k = key(&f, "a", 7).await?;
    f.source.execute("UPDATE address SET city = 'Riverton' WHERE id = $1::text::uuid", &[&k]).await?;
    let report = verify(&f).await?;
    assert_only(&report, AnomalyKind::LostChange, "address", &k);
    f.db.drop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(mongodb), ignore = "needs a MongoDB server: set MONGODB_URI (at build time too) to run it")]
async fn a_deleted_item_made_live_again_is_a_resurrected_delete() -> anyhow::Result<()> {
    let f = fixture("verify-mongo-resurrect").await?.expect("a MongoDB fixture");
    let k = key(&f, "i", 9).await?;
    f.source.execute("DELETE FROM order_item WHERE id = $1::text::uuid", &[&k]).await?;
    // The sink applied the delete (an item tombstone) ... then an old upsert brought it back.
    f.orders().update_one(doc! { "items.id": &k }, doc! { "$set": { "items.$._cdc.deleted": true } }).await?;
    let clean = verify(&f).await?;
    assert!(clean.converged, "a tombstone counts as absent: {:?}", clean.anomaly_counts);
    next_millisecond().await;
    f.orders()
        .update_one(doc! { "items.id": &k }, doc! { "$set": { "items.$._cdc.deleted": false, "items.$._cdc.applied_at": mongodb::bson::DateTime::now() } })
        .await?;
    let report = verify(&f).await?;
    assert_only(&report, AnomalyKind::ResurrectedDelete, "order_item", &k);
    f.db.drop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(mongodb), ignore = "needs a MongoDB server: set MONGODB_URI (at build time too) to run it")]
async fn one_changed_field_is_a_value_mismatch_naming_the_field() -> anyhow::Result<()> {
    let f = fixture("verify-mongo-field").await?.expect("a MongoDB fixture");
    let k = key(&f, "o", 11).await?;
    let amount: mongodb::bson::Decimal128 = "99.99".parse()?;
    f.orders().update_one(doc! { "_id": &k }, doc! { "$set": { "total_amount": amount } }).await?;
    let report = verify(&f).await?;
    assert_only(&report, AnomalyKind::ValueMismatch, "orders", &k);
    let diff = &report.anomalies[0].fields;
    assert_eq!(diff.len(), 1);
    assert_eq!((diff[0].field.as_str(), diff[0].source.as_deref(), diff[0].target.as_deref()), ("total_amount", Some("10.50"), Some("99.99")));
    f.db.drop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(mongodb), ignore = "needs a MongoDB server: set MONGODB_URI (at build time too) to run it")]
async fn a_key_the_source_never_had_is_an_extra_row() -> anyhow::Result<()> {
    let f = fixture("verify-mongo-extra").await?.expect("a MongoDB fixture");
    let k = uuid::Uuid::new_v4().to_string();
    f.customers()
        .insert_one(doc! {
            "_id": &k,
            "email": "ghost@example.com",
            "status": "active",
            "updated_at": mongodb::bson::DateTime::now(),
            "_cdc": cdc(Utc::now()),
        })
        .await?;
    let report = verify(&f).await?;
    assert_only(&report, AnomalyKind::ExtraRow, "customer", &k);
    assert_eq!(report.entities[0].extra_in_target, 1);
    f.db.drop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(mongodb), ignore = "needs a MongoDB server: set MONGODB_URI (at build time too) to run it")]
async fn an_item_embedded_twice_in_its_order_is_a_duplicate_apply() -> anyhow::Result<()> {
    let f = fixture("verify-mongo-duplicate").await?.expect("a MongoDB fixture");
    let k = key(&f, "i", 2).await?;
    let (order, item) = stored_item(&f, &k).await?;
    f.orders().update_one(doc! { "_id": &order }, doc! { "$push": { "items": item } }).await?;
    let report = verify(&f).await?;
    assert_only(&report, AnomalyKind::DuplicateApply, "order_item", &k);
    assert_eq!(report.entities[3].duplicates, 1);
    f.db.drop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(mongodb), ignore = "needs a MongoDB server: set MONGODB_URI (at build time too) to run it")]
async fn an_item_held_by_two_orders_is_a_duplicate_apply() -> anyhow::Result<()> {
    let f = fixture("verify-mongo-two-orders").await?.expect("a MongoDB fixture");
    let k = key(&f, "i", 4).await?;
    let other = key(&f, "o", 5).await?;
    let (_, item) = stored_item(&f, &k).await?;
    // An item whose order changed, written into the new order and left in the old one.
    f.orders().update_one(doc! { "_id": &other }, doc! { "$push": { "items": item } }).await?;
    let report = verify(&f).await?;
    assert_only(&report, AnomalyKind::DuplicateApply, "order_item", &k);
    assert_eq!(report.entities[3].duplicates, 1);
    f.db.drop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(mongodb), ignore = "needs a MongoDB server: set MONGODB_URI (at build time too) to run it")]
async fn an_item_missing_from_its_order_is_a_lost_change() -> anyhow::Result<()> {
    let f = fixture("verify-mongo-item-lost").await?.expect("a MongoDB fixture");
    let k = key(&f, "i", 6).await?;
    f.orders().update_one(doc! { "items.id": &k }, doc! { "$pull": { "items": { "id": &k } } }).await?;
    let report = verify(&f).await?;
    assert_only(&report, AnomalyKind::LostChange, "order_item", &k);
    assert_eq!(report.entities[3].missing_in_target, 1);
    assert_eq!(report.entities[2].matching, 20, "its order is intact");
    f.db.drop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(mongodb), ignore = "needs a MongoDB server: set MONGODB_URI (at build time too) to run it")]
async fn online_mode_waits_for_a_late_change_and_reports_time_to_converge() -> anyhow::Result<()> {
    let f = fixture("verify-mongo-online").await?.expect("a MongoDB fixture");
    let k = key(&f, "c", 1).await?;
    f.source.execute("UPDATE customer SET status = 'inactive' WHERE id = $1::text::uuid", &[&k]).await?;
    // The change reaches the target 1.5 s later, while the verifier is already checking.
    let late = {
        let customers = f.customers();
        let k = k.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
            customers.update_one(doc! { "_id": &k }, vec![doc! { "$set": { "status": "inactive", "_cdc.source_ts": "$$NOW" } }]).await
        })
    };
    let options = VerifyOptions { settle: Some(std::time::Duration::from_secs(20)), load_ended: Some(std::time::Instant::now()), ..Default::default() };
    let report = verify_mongo(&f.pg.endpoint, &f.uri, f.db.name(), &options).await?;
    late.await??;
    assert!(report.converged, "{:?}", report.anomaly_counts);
    let ttc = report.time_to_converge_ms.expect("time to converge");
    assert!(ttc >= 1500, "converged only after the late change: {ttc} ms");
    assert!(report.never_converged.is_empty());
    f.db.drop().await?;
    Ok(())
}
