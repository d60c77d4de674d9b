//! Reading a MongoDB target for the verifier, through the mapping (`harness/mapping.toml`)
//! and nothing of the sink's code: top-level entities are documents keyed by `_id`,
//! embedded ones (order items) elements of their parent's array, keyed by their own `id`
//! and belonging to the parent that holds them. CDC metadata is in `_cdc`; a record with
//! `_cdc.deleted = true` is a tombstone, and a parent document with neither `_cdc` nor
//! any column (the sink's placeholder for items that arrived first) is absent too.
//!
//! Full scans stream in key order so that the merge shared with PostgreSQL targets walks
//! them against the source's `COPY ... ORDER BY key`; the client holds one cursor batch:
//!
//! - documents: an aggregation sorted on `_id` (served by the `_id` index);
//! - embedded items: `$unwind` every parent's array and sort the items by their own key
//!   on the server (`allowDiskUse`: a large sort spills to disk, it neither fails nor
//!   grows the client). Sorting by item key, rather than walking orders by `_id` and
//!   merging their items against the source ordered by (order_id, id), is what lets items
//!   use the same merge as every other entity, and it brings every copy of an item
//!   together wherever it is embedded: an item held twice (by one order or by two) is a
//!   duplicate, where a walk by order would see a misplaced item as one missing and one
//!   extra far apart.
//!
//! Strings are sorted with the simple (binary) collation whatever the collection's
//! default, which orders uuid text as PostgreSQL orders uuids. Records whose key is not a
//! string sort apart by BSON type; they cannot be a source key, so they are counted as
//! extra (untracked: they cannot be looked up by key text) and skipped, which keeps the
//! string keys in order.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};
use mongodb::options::Collation;
use mongodb::{Cursor, Database};
use serde_json::Value;

use super::canonical::{TimestampPrecision, bson_text, canonical_text, canonicalize_bson};
use super::copy_stream::{fields, unescape};
use super::mapping::{Column, Entity, Mapping};
use super::{KeyedRecords, LatencySummary, OrderedScan, PassResult, Percentiles, TargetRecord, VerifyError, merge, postgres, same_canonical};

/// BSON dates hold milliseconds: finer source timestamps cannot be told apart.
pub(super) const PRECISION: TimestampPrecision = TimestampPrecision::Millis;

/// Documents per cursor batch: what the client holds of a scan at a time.
const BATCH_SIZE: u32 = 1000;

/// One record of an ordered scan.
struct ScanRow {
    key: String,
    /// The key of the document holding the record (embedded entities).
    parent: Option<Bson>,
    record: Document,
}

/// An ordered scan of `entity`'s records (see the module comment).
struct RecordScan<'a> {
    entity: &'a Entity,
    cursor: Cursor<Document>,
    /// Live records skipped because their key is not a string.
    stray: u64,
}

impl OrderedScan for RecordScan<'_> {
    type Row = ScanRow;

    async fn next_row(&mut self) -> Result<Option<(ScanRow, bool)>, VerifyError> {
        let key_field = self.entity.mongo.field(&self.entity.key().name);
        while let Some(mut doc) = self.cursor.try_next().await.map_err(VerifyError::target)? {
            let (parent, record) = match &self.entity.mongo.embedded_in {
                // `$unwind` left one element of the array in place of the array.
                Some(array) => match doc.remove(array) {
                    Some(Bson::Document(item)) => (doc.remove("_id"), item),
                    _ => {
                        self.stray += 1;
                        continue;
                    }
                },
                None => (None, doc),
            };
            let deleted = is_absent(self.entity, &record);
            match record.get(key_field) {
                Some(Bson::String(key)) => {
                    let row = ScanRow { key: key.clone(), parent, record };
                    return Ok(Some((row, deleted)));
                }
                _ if !deleted => self.stray += 1,
                _ => {}
            }
        }
        Ok(None)
    }

    fn key(row: &ScanRow) -> &[u8] {
        row.key.as_bytes()
    }
}

/// One ordered merge of the source and the MongoDB target for `entity`.
pub(super) async fn full_compare(source: &tokio_postgres::Client, db: &Database, entity: &Entity) -> Result<PassResult, VerifyError> {
    let src = postgres::scan_source(source, entity).await?;
    let mut tgt = RecordScan { entity, cursor: scan(db, entity).await?, stray: 0 };
    let mut pass = merge(entity, src, &mut tgt, |s, t| row_matches(entity, s, t)).await?;
    pass.outcome.target_count += tgt.stray;
    pass.outcome.extra_in_target += tgt.stray;
    pass.untracked += tgt.stray;
    Ok(pass)
}

/// The cursor of an ordered scan of `entity` (see the module comment).
async fn scan(db: &Database, entity: &Entity) -> Result<Cursor<Document>, VerifyError> {
    let key = entity.mongo.field(&entity.key().name);
    let pipeline = match &entity.mongo.embedded_in {
        Some(array) => {
            vec![doc! { "$unwind": format!("${array}") }, doc! { "$project": projection(entity) }, doc! { "$sort": { format!("{array}.{key}"): 1, "_id": 1 } }]
        }
        None => vec![doc! { "$sort": { key: 1 } }, doc! { "$project": projection(entity) }],
    };
    db.collection::<Document>(&entity.mongo.collection)
        .aggregate(pipeline)
        .allow_disk_use(true)
        .batch_size(BATCH_SIZE)
        .collation(Collation::builder().locale("simple").build())
        .await
        .map_err(VerifyError::target)
}

/// The fields the verifier reads: the mapped columns and `_cdc` (not, say, an order's
/// items when reading orders), inside the array for embedded entities.
fn projection(entity: &Entity) -> Document {
    let prefix = entity.mongo.embedded_in.as_ref().map(|array| format!("{array}.")).unwrap_or_default();
    let mut projection = Document::new();
    let columns = entity.columns.iter().map(|c| entity.mongo.field(&c.name));
    for field in columns.chain(["_cdc"]) {
        projection.insert(format!("{prefix}{field}"), 1);
    }
    projection
}

/// Whether a COPY text row of the source and a target record hold the same values.
fn row_matches(entity: &Entity, line: &[u8], row: &ScanRow) -> bool {
    let mut source = fields(line);
    let all = entity.columns.iter().all(|column| {
        let Some(raw) = source.next() else {
            return false;
        };
        let target = column_value(entity, column, &row.record, row.parent.as_ref());
        same_canonical(canonical_text(column.ty, unescape(raw).as_deref(), PRECISION), canonicalize_bson(column.ty, target, PRECISION))
    });
    all && source.next().is_none()
}

/// The BSON value of `column` in `record`: the parent's key for the parent key column of
/// an embedded entity (an item belongs to the order that holds it, whatever its own copy
/// of `order_id` says), else the column's field.
fn column_value<'a>(entity: &Entity, column: &Column, record: &'a Document, parent: Option<&'a Bson>) -> Option<&'a Bson> {
    if entity.mongo.parent_key.as_deref() == Some(column.name.as_str()) {
        return parent;
    }
    record.get(entity.mongo.field(&column.name))
}

/// A tombstone, or a parent document that is only the sink's placeholder for its
/// embedded records: no `_cdc` and none of its own columns.
fn is_absent(entity: &Entity, record: &Document) -> bool {
    match record.get("_cdc") {
        Some(Bson::Document(cdc)) => cdc.get("deleted") == Some(&Bson::Boolean(true)),
        _ => entity.mongo.embedded_in.is_none() && entity.columns.iter().skip(1).all(|c| !record.contains_key(entity.mongo.field(&c.name))),
    }
}

/// The record a top-level document holds, keyed by its key (None when it is not a string).
pub fn document_record(entity: &Entity, doc: &Document) -> Option<(String, TargetRecord)> {
    let key = doc.get_str(entity.mongo.field(&entity.key().name)).ok()?;
    let evidence = Bson::Document(doc.clone()).into_relaxed_extjson();
    Some((key.to_string(), target_record(entity, doc, None, evidence)))
}

/// The records of embedded `entity` that `parent` (an order with its items) holds, each
/// keyed by its key; elements that are not documents with a string key are left out.
pub fn embedded_records(entity: &Entity, parent: &Document) -> Vec<(String, TargetRecord)> {
    let (Some(array), Some(parent_key)) = (&entity.mongo.embedded_in, parent.get("_id")) else {
        return Vec::new();
    };
    let Ok(items) = parent.get_array(array) else {
        return Vec::new();
    };
    let key_field = entity.mongo.field(&entity.key().name);
    items
        .iter()
        .filter_map(Bson::as_document)
        .filter_map(|item| {
            let key = item.get_str(key_field).ok()?;
            // Evidence shows the item where it is: in its parent's array.
            let mut evidence = Document::new();
            evidence.insert("_id", parent_key.clone());
            evidence.insert(array.clone(), vec![Bson::Document(item.clone())]);
            let evidence = Bson::Document(evidence).into_relaxed_extjson();
            let record = target_record(entity, item, Some(parent_key), evidence);
            Some((key.to_string(), record))
        })
        .collect()
}

/// A record as the shared comparison and classification see it: each column as text.
fn target_record(entity: &Entity, record: &Document, parent: Option<&Bson>, evidence: Value) -> TargetRecord {
    let values = entity.columns.iter().map(|c| column_value(entity, c, record, parent).and_then(bson_text)).collect();
    let cdc = record.get_document("_cdc").ok();
    let date = |name: &str| {
        let millis = cdc?.get_datetime(name).ok()?.timestamp_millis();
        DateTime::<Utc>::from_timestamp_millis(millis)
    };
    let int = |name: &str| match cdc?.get(name)? {
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Int64(i) => Some(*i),
        _ => None,
    };
    let position = int("partition").and_then(|p| i32::try_from(p).ok()).zip(int("offset"));
    TargetRecord {
        values,
        deleted: is_absent(entity, record),
        source_ts: date("source_ts"),
        applied_at: date("applied_at"),
        position,
        lsn: int("lsn"),
        record: evidence,
    }
}

/// Every record (duplicates and tombstones included) the target holds for `keys`.
pub(super) async fn fetch_target(db: &Database, entity: &Entity, keys: &[String]) -> Result<KeyedRecords, VerifyError> {
    let key = entity.mongo.field(&entity.key().name);
    let (filter, projection) = match &entity.mongo.embedded_in {
        // Whole parents (their arrays projected), flattened here: parents are small, and
        // this reads them through the same flattening as the tests check.
        Some(array) => (doc! { format!("{array}.{key}"): { "$in": keys } }, doc! { array: 1 }),
        None => (doc! { key: { "$in": keys } }, projection(entity)),
    };
    let mut cursor =
        db.collection::<Document>(&entity.mongo.collection).find(filter).projection(projection).batch_size(BATCH_SIZE).await.map_err(VerifyError::target)?;
    let wanted: HashSet<&str> = keys.iter().map(String::as_str).collect();
    let mut out = KeyedRecords::new();
    while let Some(doc) = cursor.try_next().await.map_err(VerifyError::target)? {
        let records = match entity.mongo.embedded_in {
            Some(_) => embedded_records(entity, &doc),
            None => document_record(entity, &doc).into_iter().collect(),
        };
        // A parent holding a wanted item holds others too.
        for (key, record) in records.into_iter().filter(|(k, _)| wanted.contains(k.as_str())) {
            out.entry(key).or_default().push(record);
        }
    }
    Ok(out)
}

/// Source commit -> applied latency in ms of the latest change per key (snapshot reads
/// excluded), for changes committed at or after `since`. Percentiles come from a histogram
/// (3 significant digits) so that memory stays bounded whatever the number of keys.
pub(super) async fn latency(db: &Database, mapping: &Mapping, since: Option<DateTime<Utc>>) -> Result<LatencySummary, VerifyError> {
    let mut overall = Latencies::new();
    let mut per_entity = BTreeMap::new();
    for entity in &mapping.entity {
        let latencies = entity_latencies(db, entity, since).await?;
        overall.add(&latencies);
        per_entity.insert(entity.name.clone(), latencies.percentiles());
    }
    Ok(LatencySummary { overall: overall.percentiles(), per_entity })
}

/// Every latency of one entity, exact: percentiles by nearest rank (`run::percentiles`), the
/// method the PostgreSQL verifier's `percentile_disc` uses, so both targets report alike.
struct Latencies(Vec<f64>);

impl Latencies {
    fn new() -> Self {
        Self(Vec::new())
    }

    fn record(&mut self, ms: i64) {
        self.0.push(ms as f64);
    }

    fn add(&mut self, other: &Self) {
        self.0.extend_from_slice(&other.0);
    }

    fn percentiles(&self) -> Percentiles {
        crate::run::percentiles(self.0.clone())
    }
}

async fn entity_latencies(db: &Database, entity: &Entity, since: Option<DateTime<Utc>>) -> Result<Latencies, VerifyError> {
    let mut pipeline = Vec::new();
    let cdc = match &entity.mongo.embedded_in {
        Some(array) => {
            pipeline.push(doc! { "$unwind": format!("${array}") });
            format!("{array}._cdc")
        }
        None => "_cdc".to_string(),
    };
    let mut source_ts = doc! { "$type": "date" };
    if let Some(since) = since {
        source_ts.insert("$gte", mongodb::bson::DateTime::from_millis(since.timestamp_millis()));
    }
    // Placeholders (no `_cdc`) and records without both dates do not match.
    pipeline.push(doc! { "$match": {
        format!("{cdc}.op"): { "$ne": "r" },
        format!("{cdc}.source_ts"): source_ts,
        format!("{cdc}.applied_at"): { "$type": "date" },
    } });
    pipeline.push(doc! { "$project": {
        "_id": 0,
        "ms": { "$subtract": [format!("${cdc}.applied_at"), format!("${cdc}.source_ts")] },
    } });
    let mut cursor = db.collection::<Document>(&entity.mongo.collection).aggregate(pipeline).batch_size(BATCH_SIZE).await.map_err(VerifyError::target)?;
    let mut latencies = Latencies::new();
    while let Some(doc) = cursor.try_next().await.map_err(VerifyError::target)? {
        // `$subtract` of two dates is a long; anything else is not a latency.
        if let Ok(ms) = doc.get_i64("ms") {
            latencies.record(ms);
        }
    }
    Ok(latencies)
}

/// The sink's apply log (`cdc_apply_log`, audit mode) in insertion order (`_id` is an
/// ObjectId, increasing per writer); None when the collection does not exist. `id` is the
/// position in that order.
pub async fn apply_log(db: &Database) -> Result<Option<Vec<crate::run::apply_log::LogRow>>, VerifyError> {
    let names = db.list_collection_names().await.map_err(VerifyError::target)?;
    if !names.iter().any(|n| n == "cdc_apply_log") {
        return Ok(None);
    }
    let mut cursor = db.collection::<Document>("cdc_apply_log").find(doc! {}).sort(doc! { "_id": 1 }).await.map_err(VerifyError::target)?;
    let date = |d: &Document, k: &str| d.get_datetime(k).ok().and_then(|t| DateTime::<Utc>::from_timestamp_millis(t.timestamp_millis()));
    let mut rows = Vec::new();
    while let Some(d) = cursor.try_next().await.map_err(VerifyError::target)? {
        let Some(applied_at) = date(&d, "applied_at") else { continue };
        rows.push(crate::run::apply_log::LogRow {
            id: rows.len() as i64 + 1,
            entity: d.get_str("entity").unwrap_or_default().to_string(),
            key: d.get_str("key").ok().and_then(|k| uuid::Uuid::parse_str(k).ok()),
            version: d.get_i64("version").ok(),
            commit: d.get_i64("version_commit").ok(),
            epoch: d.get_i32("epoch").unwrap_or(0),
            snapshot: d.get_bool("snapshot").unwrap_or(false),
            op: d.get_str("op").ok().map(str::to_string),
            outcome: d.get_str("outcome").unwrap_or_default().to_string(),
            partition: d.get_i32("kafka_partition").unwrap_or(-1),
            offset: d.get_i64("kafka_offset").unwrap_or(-1),
            kafka_ts: date(&d, "kafka_ts"),
            source_ts: date(&d, "source_ts"),
            applied_at,
            rule: d.get_str("rule").ok().map(str::to_string),
            tx_id: d.get_i64("tx_id").ok(),
        });
    }
    Ok(Some(rows))
}

/// The source transaction (`tx_id`) of the apply log documents of `entity` at `positions`
/// (Kafka partition, offset), where known.
pub(super) async fn apply_log_tx_ids(db: &Database, entity: &str, positions: &[(i32, i64)]) -> Result<HashMap<(i32, i64), i64>, VerifyError> {
    let mut by_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for (partition, offset) in positions {
        by_partition.entry(*partition).or_default().push(*offset);
    }
    let mut out = HashMap::new();
    for (partition, offsets) in by_partition {
        let filter = doc! { "entity": entity, "kafka_partition": partition, "kafka_offset": { "$in": offsets }, "tx_id": { "$type": "long" } };
        let projection = doc! { "_id": 0, "kafka_offset": 1, "tx_id": 1 };
        let mut cursor = db.collection::<Document>("cdc_apply_log").find(filter).projection(projection).await.map_err(VerifyError::target)?;
        while let Some(d) = cursor.try_next().await.map_err(VerifyError::target)? {
            if let (Ok(offset), Ok(tx)) = (d.get_i64("kafka_offset"), d.get_i64("tx_id")) {
                out.insert((partition, offset), tx);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping() -> Mapping {
        Mapping::builtin()
    }

    #[test]
    fn latencies_are_exact_nearest_rank_like_the_postgres_verifiers() {
        let mut first = Latencies::new();
        (1..=60).for_each(|ms| first.record(ms));
        let mut overall = Latencies::new();
        overall.add(&first);
        // A value a 3-digit histogram would round (1234567 ms) stays exact, and a negative
        // latency (clock skew) is kept as measured, as PostgreSQL's percentile_disc keeps it.
        [-3, 1_234_567].into_iter().chain(61..=100).for_each(|ms| overall.record(ms));
        let p = overall.percentiles();
        assert_eq!((p.count, p.p50, p.p90, p.p99, p.max), (102, 50.0, 91.0, 100.0, 1_234_567.0));
        assert!(!Latencies::new().percentiles().measured());
    }

    const ORDER: &str = "6b0b4a5e-3c1f-4a44-9e0e-1d1f3f0b2a01";
    const ITEM_A: &str = "0f5e9a3a-1111-4c4c-8a8a-000000000001";
    const ITEM_B: &str = "0f5e9a3a-2222-4c4c-8a8a-000000000002";

    /// `_cdc` as the sink writes it.
    fn cdc(deleted: bool) -> Document {
        doc! {
            "lsn": 42_i64,
            "source_ts": mongodb::bson::DateTime::from_millis(1_704_164_645_123),
            "op": "u",
            "partition": 0_i32,
            "offset": 7_i64,
            "applied_at": mongodb::bson::DateTime::from_millis(1_704_164_645_200),
            "deleted": deleted,
        }
    }

    fn item(id: &str, order_id: &str, deleted: bool) -> Bson {
        Bson::Document(doc! {
            "order_id": order_id,
            "product_sku": "SKU-1",
            "product_name": "Thing",
            "quantity": 2_i32,
            "unit_price": "10.50".parse::<mongodb::bson::Decimal128>().unwrap(),
            "line_total": "21.00".parse::<mongodb::bson::Decimal128>().unwrap(),
            "id": id,
            "_cdc": cdc(deleted),
        })
    }

    fn order(items: Vec<Bson>) -> Document {
        doc! {
            "_id": ORDER,
            "customer_id": "c1f0e6a2-9b7d-4a1e-8f00-00000000000c",
            "status": "pending",
            "total_amount": "31.50".parse::<mongodb::bson::Decimal128>().unwrap(),
            "created_at": mongodb::bson::DateTime::from_millis(1_704_164_645_123),
            "updated_at": mongodb::bson::DateTime::from_millis(1_704_164_645_123),
            "_cdc": cdc(false),
            "items": items,
        }
    }

    fn values(record: &TargetRecord) -> Vec<Option<&str>> {
        record.values.iter().map(Option::as_deref).collect()
    }

    #[test]
    fn an_order_flattens_to_its_row_and_its_items_to_theirs() {
        let m = mapping();
        let doc = order(vec![item(ITEM_A, ORDER, false), item(ITEM_B, ORDER, true)]);
        let (key, o) = document_record(m.entity("orders").unwrap(), &doc).unwrap();
        assert_eq!(key, ORDER);
        assert_eq!(
            values(&o),
            [
                Some(ORDER),
                Some("c1f0e6a2-9b7d-4a1e-8f00-00000000000c"),
                Some("pending"),
                Some("31.50"),
                Some("2024-01-02T03:04:05.123Z"),
                Some("2024-01-02T03:04:05.123Z"),
            ]
        );
        assert!(!o.deleted);
        assert_eq!(o.source_ts.map(|t| t.timestamp_millis()), Some(1_704_164_645_123));
        assert_eq!(o.applied_at.map(|t| t.timestamp_millis()), Some(1_704_164_645_200));

        let items = embedded_records(m.entity("order_item").unwrap(), &doc);
        let keys: Vec<&str> = items.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, [ITEM_A, ITEM_B]);
        assert_eq!(values(&items[0].1), [Some(ITEM_A), Some(ORDER), Some("SKU-1"), Some("Thing"), Some("2"), Some("10.50"), Some("21.00"),]);
        assert!(!items[0].1.deleted);
        assert!(items[1].1.deleted, "an item tombstone is deleted");
        // The evidence shows the item inside its order.
        assert_eq!(items[0].1.record["_id"], ORDER);
        assert_eq!(items[0].1.record["items"][0]["id"], ITEM_A);
    }

    #[test]
    fn an_item_belongs_to_the_order_that_holds_it() {
        let m = mapping();
        let elsewhere = "99999999-9999-4999-8999-999999999999";
        let doc = order(vec![item(ITEM_A, elsewhere, false)]);
        let items = embedded_records(m.entity("order_item").unwrap(), &doc);
        assert_eq!(items[0].1.values[1].as_deref(), Some(ORDER));
    }

    #[test]
    fn malformed_items_are_left_out_and_a_duplicate_is_kept_twice() {
        let m = mapping();
        let mut doc =
            order(vec![item(ITEM_A, ORDER, false), Bson::String("not an item".into()), Bson::Document(doc! { "id": 7_i32 }), item(ITEM_A, ORDER, false)]);
        let entity = m.entity("order_item").unwrap();
        let keys: Vec<String> = embedded_records(entity, &doc).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, [ITEM_A, ITEM_A]);
        doc.insert("items", "not an array");
        assert!(embedded_records(entity, &doc).is_empty());
    }

    #[test]
    fn a_placeholder_order_is_absent_but_its_items_are_not() {
        let m = mapping();
        let placeholder = doc! { "_id": ORDER, "items": [item(ITEM_A, ORDER, false)] };
        let (_, o) = document_record(m.entity("orders").unwrap(), &placeholder).unwrap();
        assert!(o.deleted, "a placeholder counts as absent");
        let items = embedded_records(m.entity("order_item").unwrap(), &placeholder);
        assert!(!items[0].1.deleted);
        // A document without `_cdc` that holds columns is not a placeholder.
        let bare = doc! { "_id": ORDER, "status": "pending" };
        assert!(!document_record(m.entity("orders").unwrap(), &bare).unwrap().1.deleted);
        let mut tombstone = order(vec![]);
        tombstone.insert("_cdc", cdc(true));
        assert!(document_record(m.entity("orders").unwrap(), &tombstone).unwrap().1.deleted);
    }

    #[test]
    fn a_non_string_id_has_no_record() {
        let m = mapping();
        let doc = doc! { "_id": mongodb::bson::oid::ObjectId::new(), "status": "x" };
        assert!(document_record(m.entity("orders").unwrap(), &doc).is_none());
    }

    fn scan_row(entity: &Entity, doc: &Document) -> ScanRow {
        let (parent, record) = match &entity.mongo.embedded_in {
            Some(_) => (doc.get("_id").cloned(), doc.get_document("items").unwrap().clone()),
            None => (None, doc.clone()),
        };
        let key = record.get_str(entity.mongo.field("id")).unwrap().to_string();
        ScanRow { key, parent, record }
    }

    #[test]
    fn a_source_row_matches_its_document_at_millisecond_precision() {
        let m = mapping();
        let orders = m.entity("orders").unwrap();
        let row = scan_row(orders, &order(vec![]));
        // PostgreSQL holds microseconds; the BSON date their millisecond floor.
        let line = format!("{ORDER}\tc1f0e6a2-9b7d-4a1e-8f00-00000000000c\tpending\t31.5\t2024-01-02 04:04:05.123999+01\t2024-01-02 03:04:05.123+00");
        assert!(row_matches(orders, line.as_bytes(), &row));
        let late = line.replace("05.123999+01", "05.124+01");
        assert!(!row_matches(orders, late.as_bytes(), &row));
        let other = line.replace("pending", "paid");
        assert!(!row_matches(orders, other.as_bytes(), &row));
        let short = line.rsplit_once('\t').unwrap().0;
        assert!(!row_matches(orders, short.as_bytes(), &row));
    }

    #[test]
    fn an_unwound_item_matches_its_source_row() {
        let m = mapping();
        let entity = m.entity("order_item").unwrap();
        let unwound = doc! { "_id": ORDER, "items": item(ITEM_A, ORDER, false) };
        let row = scan_row(entity, &unwound);
        let line = format!("{ITEM_A}\t{ORDER}\tSKU-1\tThing\t2\t10.50\t21.00");
        assert!(row_matches(entity, line.as_bytes(), &row));
        let null_name = format!("{ITEM_A}\t{ORDER}\tSKU-1\t\\N\t2\t10.50\t21.00");
        assert!(!row_matches(entity, null_name.as_bytes(), &row));
    }

    #[test]
    fn projections_read_only_mapped_fields() {
        let m = mapping();
        let orders = projection(m.entity("orders").unwrap());
        assert!(orders.contains_key("_id") && orders.contains_key("_cdc"));
        assert!(!orders.contains_key("items"), "orders are read without their items");
        let items = projection(m.entity("order_item").unwrap());
        assert!(items.contains_key("items.id") && items.contains_key("items._cdc"));
    }
}
