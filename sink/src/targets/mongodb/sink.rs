//! Version-guarded apply into MongoDB.
//!
//! Documents: `customers`, `addresses`, `orders` keyed by `_id` = the source id (canonical
//! uuid string), source columns as fields (decimals as Decimal128, timestamps as BSON
//! dates, millisecond precision), and `_cdc: {lsn, source_ts, op, partition, offset,
//! applied_at, deleted}`. Order items live in their order's `items` array, each with its
//! own `_cdc`. An item whose order has not arrived yet upserts a placeholder order
//! document (only `_id` and `items`, no `_cdc`) that the order fills in when it comes.
//!
//! Each batch is one unordered `update` command per collection. Every statement is an
//! update pipeline whose `$cond` compares the stored version (`_cdc.{epoch, commit, lsn,
//! snapshot}`) with the event's, so replays and duplicates change nothing; deletes set
//! `_cdc.deleted` (a tombstone).

use std::collections::HashSet;
use std::time::Duration;

use mongodb::Database;
use mongodb::IndexModel;
use mongodb::bson::{Bson, Document, doc};
use mongodb::options::IndexOptions;
use uuid::Uuid;

use super::MongoConfig;
use super::service::{class_of_code, connect};
use crate::config::TargetConfig;
use crate::model::{Change, Entity, Field, Value, Version};
use crate::targets::{ApplyReport, LogEntry, LoggedOutcome, TargetError};

pub const fn collection_name(entity: Entity) -> &'static str {
    match entity {
        Entity::Customer => "customers",
        Entity::Address => "addresses",
        Entity::Orders | Entity::OrderItem => "orders",
    }
}

/// The apply log of audit mode.
pub const APPLY_LOG_COLLECTION: &str = "cdc_apply_log";

pub struct MongoSink {
    db: Database,
    pub audit: bool,
    /// Client-side deadline of every operation (also sent as `maxTimeMS`).
    call_timeout: Duration,
}

/// `future` within `after`: a target that does not answer is a retriable timeout.
async fn within<T>(
    operation: &'static str,
    after: Duration,
    future: impl std::future::Future<Output = Result<T, mongodb::error::Error>>,
) -> Result<T, TargetError> {
    match tokio::time::timeout(after, future).await {
        Ok(result) => result.map_err(TargetError::from),
        Err(_) => Err(TargetError::Timeout { operation, after }),
    }
}

fn bson_ts(t: Option<chrono::DateTime<chrono::Utc>>) -> Bson {
    t.map_or(Bson::Null, |t| Bson::DateTime(mongodb::bson::DateTime::from_millis(t.timestamp_millis())))
}

fn log_document(entity: Entity, e: &LogEntry) -> Document {
    doc! {
        "entity": entity.table(),
        "key": e.key.map_or(Bson::Null, |k| Bson::String(k.to_string())),
        "version": e.version.map_or(Bson::Null, |v| Bson::Int64(v.lsn)),
        "version_commit": e.version.and_then(|v| v.commit).map_or(Bson::Null, Bson::Int64),
        "epoch": e.version.map_or(Bson::Null, |v| Bson::Int32(v.epoch)),
        "snapshot": e.version.map_or(Bson::Null, |v| Bson::Boolean(v.snapshot)),
        "op": e.op.map_or(Bson::Null, |o| Bson::String(o.into())),
        "outcome": e.outcome.name(),
        "kafka_partition": e.partition,
        "kafka_offset": e.offset,
        "kafka_ts": bson_ts(e.kafka_ts),
        "source_ts": bson_ts(e.source_ts),
        "tx_id": e.tx_id.map_or(Bson::Null, Bson::Int64),
        "applied_at": mongodb::bson::DateTime::now(),
        "rule": e.rule.clone().map_or(Bson::Null, Bson::String),
    }
}

fn bson_value(value: &Value) -> Bson {
    match value {
        Value::Null => Bson::Null,
        Value::Uuid(u) => Bson::String(u.to_string()),
        Value::Text(s) => Bson::String(s.clone()),
        Value::Bool(b) => Bson::Boolean(*b),
        Value::Int(i) => i32::try_from(*i).map_or(Bson::Int64(*i), Bson::Int32),
        Value::Numeric(d) => d.to_string().parse().map(Bson::Decimal128).unwrap_or_else(|_| Bson::String(d.to_string())),
        Value::Timestamp(t) => Bson::DateTime(mongodb::bson::DateTime::from_millis(t.timestamp_millis())),
    }
}

/// `{$literal: v}`: values are data, never field paths or operators.
fn literal(v: Bson) -> Bson {
    Bson::Document(doc! { "$literal": v })
}

/// The fields a change sets (present columns only: TOAST placeholders and absent columns
/// leave what is stored), as pipeline expressions.
fn fields(change: &Change) -> Document {
    let mut out = Document::new();
    if let Some(row) = &change.after {
        for (column, field) in change.entity.columns().iter().zip(&row.known) {
            match field {
                Some(Field::Value(v)) if column.name != "id" => {
                    out.insert(column.name, literal(bson_value(v)));
                }
                _ => {}
            }
        }
        for (name, value) in &row.extra {
            out.insert(name.clone(), literal(value.text.clone().map_or(Bson::Null, Bson::String)));
        }
    }
    out
}

/// `model::Version::is_newer_than` as an aggregation expression: the event's version
/// (constants) against the stored `_cdc` found at `stored` (`"$_cdc"`, `"$$c"`). A document
/// without `_cdc` (a placeholder order) holds no version: every change is newer.
fn newer_than_stored(stored: &str, v: &Version) -> Document {
    let field = |name: &str| format!("{stored}.{name}");
    let lsn = doc! { "$ifNull": [field("lsn"), -1_i64] };
    let epoch = doc! { "$ifNull": [field("epoch"), 0_i32] };
    let snapshot = doc! { "$ifNull": [field("snapshot"), false] };
    let commit = doc! { "$ifNull": [field("commit"), lsn.clone()] };
    let mine = v.commit.unwrap_or(v.lsn);
    let mut branches = vec![Bson::Document(doc! { "case": { "$ne": [epoch.clone(), v.epoch] }, "then": { "$lt": [epoch, v.epoch] } })];
    if !v.snapshot && v.commit.is_none() {
        branches.push(Bson::Document(doc! { "case": snapshot.clone(), "then": true }));
    }
    if v.snapshot {
        // An explicit null commit is a first transaction of a session; a document written
        // before versions had a commit position has no `commit` field at all and compares by
        // its LSN (`$ifNull` below), so a later re-snapshot can replace it.
        let unknown_commit = doc! { "$and": [ { "$not": [snapshot] }, { "$eq": [ { "$type": field("commit") }, "null" ] }, { "$ne": [lsn.clone(), -1_i64] } ] };
        branches.push(Bson::Document(doc! { "case": unknown_commit, "then": false }));
    }
    let lexicographic = doc! { "$or": [ { "$lt": [commit.clone(), mine] }, { "$and": [ { "$eq": [commit, mine] }, { "$lt": [lsn, v.lsn] } ] } ] };
    doc! { "$switch": { "branches": branches, "default": lexicographic } }
}

/// `write`: the token of the command that wrote it, so which statements took effect can be
/// read back exactly (an `update` reply only counts modified documents, and a `multi`
/// statement can modify two).
fn cdc(change: &Change, write: &str) -> Document {
    let v = &change.version;
    doc! {
        "write": write,
        "lsn": v.lsn,
        "commit": v.commit.map_or(Bson::Null, Bson::Int64),
        "epoch": v.epoch,
        "snapshot": v.snapshot,
        "source_ts": literal(change.source_ts.map_or(Bson::Null, |t| Bson::DateTime(mongodb::bson::DateTime::from_millis(t.timestamp_millis())))),
        "op": literal(Bson::String(change.op.code().into())),
        "partition": change.coords.partition,
        "offset": change.coords.offset,
        "applied_at": "$$NOW",
        "deleted": change.op.is_delete(),
    }
}

/// Update statement for a top-level document (customer, address, order).
fn document_update(change: &Change, write: &str) -> Document {
    let guard = newer_than_stored("$_cdc", &change.version);
    let mut set = Document::new();
    for (name, expr) in fields(change) {
        set.insert(name.clone(), doc! { "$cond": [guard.clone(), expr, format!("${name}")] });
    }
    set.insert("_cdc", doc! { "$cond": [guard, cdc(change, write), "$_cdc"] });
    doc! { "q": { "_id": change.key.to_string() }, "u": [ { "$set": set } ], "upsert": true }
}

/// Update statement for an order item inside its order document's `items`.
fn item_update(change: &Change, order_id: Uuid, write: &str) -> Document {
    let mut statement = item_statement(change, write);
    statement.insert("q", doc! { "_id": order_id.to_string() });
    statement.insert("upsert", true);
    statement
}

/// A delete whose before image has no `order_id` (REPLICA IDENTITY DEFAULT sends the key
/// only): the item is found by its own id (indexed `items.id`) in whichever order holds it
/// and tombstoned there. Whether or not one holds it, `item_tombstone` records the delete.
fn item_delete_by_id(change: &Change, write: &str) -> Document {
    let mut statement = item_statement(change, write);
    statement.insert("q", doc! { "items.id": change.key.to_string() });
    statement.insert("multi", true);
    statement
}

/// The guarded update pipeline of an item (without `q`).
fn item_statement(change: &Change, write: &str) -> Document {
    let id = change.key.to_string();
    let items = doc! { "$ifNull": ["$items", []] };
    let current = doc! { "$filter": { "input": items.clone(), "cond": { "$eq": ["$$this.id", &id] } } };
    let others = doc! { "$filter": { "input": items.clone(), "cond": { "$ne": ["$$this.id", &id] } } };
    let mut new_fields = fields(change);
    new_fields.insert("id", literal(Bson::String(id.clone())));
    new_fields.insert("_cdc", cdc(change, write));
    let merged = doc! { "$mergeObjects": [ { "$ifNull": [ { "$arrayElemAt": ["$$cur", 0] }, {} ] }, new_fields ] };
    let guarded = doc! {
        "$let": {
            "vars": { "c": { "$arrayElemAt": ["$$cur._cdc", 0] } },
            "in": { "$cond": [ newer_than_stored("$$c", &change.version), { "$concatArrays": [others, [merged]] }, items ] },
        }
    };
    let new_items = doc! { "$let": { "vars": { "cur": current }, "in": guarded } };
    doc! { "u": [ { "$set": { "items": new_items } } ] }
}

/// Key-only item deletes (REPLICA IDENTITY DEFAULT) name no order, so their tombstone may
/// find no document to live in: it is kept in this collection, by item id, and item upserts
/// check it first. Without it a re-sent create would embed the deleted item again.
pub const ITEM_TOMBSTONES_COLLECTION: &str = "order_item_tombstones";

/// The guarded upsert of a key-only item delete's tombstone (`ITEM_TOMBSTONES_COLLECTION`).
fn item_tombstone(change: &Change, write: &str) -> Document {
    let guard = newer_than_stored("$_cdc", &change.version);
    doc! { "q": { "_id": change.key.to_string() }, "u": [ { "$set": { "_cdc": { "$cond": [guard, cdc(change, write), "$_cdc"] } } } ], "upsert": true }
}

/// A stored `_cdc` as a version (absent fields as written before they existed).
fn stored_version(cdc: &Document) -> Option<Version> {
    let int = |name: &str| cdc.get_i64(name).ok().or_else(|| cdc.get_i32(name).ok().map(i64::from));
    Some(Version { epoch: cdc.get_i32("epoch").unwrap_or(0), commit: int("commit"), lsn: int("lsn")?, snapshot: cdc.get_bool("snapshot").unwrap_or(false) })
}

/// The statement that tombstones an item in every order but `order_id` where the change is
/// newer than the item there: it moved.
fn item_moved_away(change: &Change, order_id: Uuid) -> Document {
    let id = change.key.to_string();
    // No write token: this tombstone is a side effect, not the change's own outcome.
    let mut tombstone = cdc(change, "");
    tombstone.insert("deleted", true);
    tombstone.insert("moved_to", order_id.to_string());
    let moved = doc! {
        "$cond": [
            { "$and": [ { "$eq": ["$$this.id", &id] }, newer_than_stored("$$this._cdc", &change.version) ] },
            { "$mergeObjects": ["$$this", { "_cdc": tombstone }] },
            "$$this",
        ]
    };
    doc! {
        "q": { "items.id": &id, "_id": { "$ne": order_id.to_string() } },
        "u": [ { "$set": { "items": { "$map": { "input": { "$ifNull": ["$items", []] }, "in": moved } } } } ],
        "multi": true,
    }
}

/// A server command may not exceed 16 MiB (`maxBsonObjectSize`) nor hold more than 100,000
/// statements (`maxWriteBatchSize`): consecutive statements in commands within both, with
/// room for the command's own fields. A statement over the budget goes alone (the server
/// then refuses that one statement, which dead-letters its event).
fn chunks(updates: &[Document]) -> Vec<std::ops::Range<usize>> {
    const BUDGET: usize = 16 * 1024 * 1024 - 64 * 1024;
    const MAX_STATEMENTS: usize = 100_000;
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, update) in updates.iter().enumerate() {
        // Each array element also carries its index key and type byte.
        let size = mongodb::bson::to_vec(update).map_or(BUDGET, |v| v.len()) + 8;
        if i > start && (bytes + size > BUDGET || i - start == MAX_STATEMENTS) {
            out.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < updates.len() {
        out.push(start..updates.len());
    }
    out
}

/// The statements of one update command's reply (`keys`, in order) that the target refused
/// for the row's own reason (into `rejected`); an error about the target or a transient one
/// fails the whole call (unordered: the other statements were applied, and replaying them
/// is a no-op). Which of the others took effect is read back by their write token.
fn judge_reply(reply: &Document, keys: &[Uuid], rejected: &mut Vec<(Uuid, String)>) -> Result<(), TargetError> {
    if let Ok(errors) = reply.get_array("writeErrors") {
        for e in errors.iter().filter_map(Bson::as_document) {
            let index = e.get_i32("index").unwrap_or(-1);
            let code = e.get_i32("code").unwrap_or(0);
            let message = e.get_str("errmsg").unwrap_or_default().to_string();
            if class_of_code(code) != crate::targets::ErrorClass::Record {
                return Err(TargetError::MongoWrite { code, message });
            }
            if let Some(key) = usize::try_from(index).ok().and_then(|i| keys.get(i)) {
                rejected.push((*key, format!("write error {code}: {message}")));
            }
        }
    }
    if let Ok(wce) = reply.get_document("writeConcernError") {
        let code = wce.get_i32("code").unwrap_or(64);
        return Err(TargetError::MongoWrite { code, message: wce.get_str("errmsg").unwrap_or_default().into() });
    }
    Ok(())
}

/// The order an item belongs to: from the image being written, or for deletes the before image.
fn item_order(change: &Change) -> Option<Uuid> {
    change.after.as_ref().or(change.before.as_ref()).and_then(|row| row.uuid(Entity::OrderItem, "order_id"))
}

impl MongoSink {
    pub async fn connect(target: &TargetConfig, audit: bool) -> Result<Self, TargetError> {
        let settings: &MongoConfig = &target.mongodb;
        let db = connect(target, settings).await?;
        let sink = Self { db, audit, call_timeout: settings.operation_timeout };
        sink.ping().await?;
        sink.prepare().await?;
        Ok(sink)
    }

    /// A command under the deadline, with the server told the same limit.
    async fn command(&self, operation: &'static str, mut command: Document) -> Result<Document, TargetError> {
        command.insert("maxTimeMS", i64::try_from(self.call_timeout.as_millis()).unwrap_or(i64::MAX));
        within(operation, self.call_timeout, async { self.db.run_command(command).await }).await
    }

    async fn prepare(&self) -> Result<(), TargetError> {
        let tombstones = || {
            IndexModel::builder()
                .keys(doc! { "_cdc.applied_at": 1 })
                .options(IndexOptions::builder().partial_filter_expression(doc! { "_cdc.deleted": true }).build())
                .build()
        };
        let by = |field: &str| IndexModel::builder().keys(doc! { field: 1 }).build();
        self.db.collection::<Document>("customers").create_indexes([tombstones()]).await?;
        self.db.collection::<Document>("addresses").create_indexes([by("customer_id"), tombstones()]).await?;
        self.db.collection::<Document>("orders").create_indexes([by("customer_id"), by("items.id"), tombstones()]).await?;
        if self.audit {
            self.db.collection::<Document>(APPLY_LOG_COLLECTION).create_indexes([by("applied_at")]).await?;
        }
        Ok(())
    }

    /// Appends apply log documents. MongoDB cannot put them in the change's own `update`
    /// command (another collection), so they follow it, before the offset is stored: a
    /// crash between the two leaves the change applied without its log row, and the replay
    /// logs it (as `stale`).
    pub async fn log(&self, entity: Entity, entries: &[LogEntry]) -> Result<(), TargetError> {
        let documents: Vec<Document> = entries.iter().map(|e| log_document(entity, e)).collect();
        let command = doc! {
            "insert": APPLY_LOG_COLLECTION,
            "documents": documents,
            "ordered": true,
            "writeConcern": { "w": "majority", "j": true },
        };
        let reply = self.command("apply_log", command).await?;
        if let Some(e) = reply.get_array("writeErrors").ok().and_then(|a| a.first()).and_then(Bson::as_document) {
            return Err(TargetError::MongoWrite { code: e.get_i32("code").unwrap_or(0), message: e.get_str("errmsg").unwrap_or_default().into() });
        }
        if let Ok(wce) = reply.get_document("writeConcernError") {
            return Err(TargetError::MongoWrite { code: wce.get_i32("code").unwrap_or(64), message: wce.get_str("errmsg").unwrap_or_default().into() });
        }
        Ok(())
    }

    /// `superseded`: in-batch changes subsumed by one of `latest` (logged in audit mode).
    pub async fn apply(&self, entity: Entity, latest: &[Change], superseded: &[Change]) -> Result<ApplyReport, TargetError> {
        let report = self.apply_latest(entity, latest).await?;
        if self.audit {
            let applied: HashSet<Uuid> = report.applied.iter().copied().collect();
            let stale: HashSet<Uuid> = report.stale.iter().copied().collect();
            let mut entries: Vec<LogEntry> = latest
                .iter()
                .filter(|c| applied.contains(&c.key) || stale.contains(&c.key))
                .map(|c| LogEntry::of_change(c, if applied.contains(&c.key) { LoggedOutcome::Applied } else { LoggedOutcome::Stale }))
                .collect();
            entries.extend(superseded.iter().map(|c| LogEntry::of_change(c, LoggedOutcome::Superseded)));
            if !entries.is_empty() {
                self.log(entity, &entries).await?;
            }
        }
        Ok(report)
    }

    async fn apply_latest(&self, entity: Entity, latest: &[Change]) -> Result<ApplyReport, TargetError> {
        let write = mongodb::bson::oid::ObjectId::new().to_hex();
        let mut report = ApplyReport::default();
        let mut keys = Vec::with_capacity(latest.len());
        let mut updates = Vec::with_capacity(latest.len());
        let mut moves = Vec::new();
        let mut tombstones = Vec::new();
        let shadowed = if entity == Entity::OrderItem { self.tombstoned_items(latest).await? } else { HashSet::new() };
        for change in latest {
            if entity == Entity::OrderItem {
                match item_order(change) {
                    // Not newer than a key-only delete's tombstone: stale, never embedded again.
                    Some(_) if shadowed.contains(&change.key) => {
                        report.stale.push(change.key);
                        continue;
                    }
                    Some(order_id) => {
                        updates.push(item_update(change, order_id, &write));
                        if !change.op.is_delete() {
                            moves.push(item_moved_away(change, order_id));
                        }
                    }
                    None if change.op.is_delete() => {
                        updates.push(item_delete_by_id(change, &write));
                        tombstones.push(item_tombstone(change, &write));
                    }
                    None => {
                        report.rejected.push((change.key, "order item without order_id cannot be embedded".into()));
                        continue;
                    }
                }
            } else {
                updates.push(document_update(change, &write));
            }
            keys.push(change.key);
        }
        for chunk in chunks(&updates) {
            let reply = self.update_command(collection_name(entity), &updates[chunk.clone()]).await?;
            judge_reply(&reply, &keys[chunk], &mut report.rejected)?;
        }
        for chunk in chunks(&tombstones) {
            let reply = self.update_command(ITEM_TOMBSTONES_COLLECTION, &tombstones[chunk]).await?;
            judge_reply(&reply, &[], &mut Vec::new())?;
        }
        // An item now in another order is tombstoned where it was (its own version guard
        // applies there too), so it never shows in two orders and an older replay naming the
        // old order finds the tombstone and stays stale.
        for chunk in chunks(&moves) {
            let reply = self.update_command(collection_name(entity), &moves[chunk]).await?;
            judge_reply(&reply, &[], &mut Vec::new())?;
        }
        // Per document, not by count: what holds this command's token was written.
        let written = if keys.is_empty() { HashSet::new() } else { self.written_by(entity, &write, &keys).await? };
        let refused: HashSet<Uuid> = report.rejected.iter().map(|(k, _)| *k).collect();
        for key in keys.into_iter().filter(|k| !refused.contains(k)) {
            if written.contains(&key) {
                report.applied.push(key);
            } else {
                report.stale.push(key);
            }
        }
        Ok(report)
    }

    /// Item upserts of `latest` that are not newer than the tombstone a key-only delete left
    /// for their key.
    async fn tombstoned_items(&self, latest: &[Change]) -> Result<HashSet<Uuid>, TargetError> {
        let ids: Vec<String> = latest.iter().filter(|c| !c.op.is_delete()).map(|c| c.key.to_string()).collect();
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        let collection = self.db.collection::<Document>(ITEM_TOMBSTONES_COLLECTION);
        let stored: Vec<(Uuid, Version)> = within("lookup", self.call_timeout, async {
            let mut cursor = collection.find(doc! { "_id": { "$in": ids } }).max_time(self.call_timeout).await?;
            let mut out = Vec::new();
            while cursor.advance().await? {
                let doc: Document = cursor.deserialize_current()?;
                let id = doc.get_str("_id").ok().and_then(|s| Uuid::parse_str(s).ok());
                let version = doc.get_document("_cdc").ok().and_then(stored_version);
                if let (Some(id), Some(version)) = (id, version) {
                    out.push((id, version));
                }
            }
            Ok(out)
        })
        .await?;
        Ok(latest.iter().filter(|c| !c.op.is_delete() && stored.iter().any(|(id, v)| *id == c.key && !c.version.is_newer_than(v))).map(|c| c.key).collect())
    }

    /// Keys of `keys` whose document (or item, or item tombstone) now holds `write`.
    async fn written_by(&self, entity: Entity, write: &str, keys: &[Uuid]) -> Result<HashSet<Uuid>, TargetError> {
        let ids: Vec<String> = keys.iter().map(Uuid::to_string).collect();
        let find = |collection: &'static str, filter: Document, projection: Document| {
            let collection = self.db.collection::<Document>(collection);
            within("read_back", self.call_timeout, async move {
                let mut cursor = collection.find(filter).projection(projection).max_time(self.call_timeout).await?;
                let mut out = Vec::new();
                while cursor.advance().await? {
                    out.push(cursor.deserialize_current()?);
                }
                Ok(out)
            })
        };
        let uuid = |s: &str| Uuid::parse_str(s).ok();
        let mut written = HashSet::new();
        if entity != Entity::OrderItem {
            for doc in find(collection_name(entity), doc! { "_id": { "$in": &ids }, "_cdc.write": write }, doc! { "_id": 1 }).await? {
                written.extend(doc.get_str("_id").ok().and_then(uuid));
            }
            return Ok(written);
        }
        let orders = find("orders", doc! { "items.id": { "$in": &ids }, "items._cdc.write": write }, doc! { "items.id": 1, "items._cdc.write": 1 }).await?;
        for order in orders {
            for item in order.get_array("items").map(|a| a.iter().filter_map(Bson::as_document).collect::<Vec<_>>()).unwrap_or_default() {
                if item.get_document("_cdc").ok().and_then(|c| c.get_str("write").ok()) == Some(write) {
                    written.extend(item.get_str("id").ok().and_then(uuid));
                }
            }
        }
        for doc in find(ITEM_TOMBSTONES_COLLECTION, doc! { "_id": { "$in": &ids }, "_cdc.write": write }, doc! { "_id": 1 }).await? {
            written.extend(doc.get_str("_id").ok().and_then(uuid));
        }
        Ok(written)
    }

    async fn update_command(&self, collection: &str, updates: &[Document]) -> Result<Document, TargetError> {
        let command = doc! {
            "update": collection,
            "updates": updates.to_vec(),
            "ordered": false,
            "writeConcern": { "w": "majority", "j": true },
        };
        self.command("apply", command).await
    }

    pub async fn existing(&self, entity: Entity, ids: &[Uuid]) -> Result<HashSet<Uuid>, TargetError> {
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        // A placeholder order (items only) is not an order yet.
        let filter = doc! { "_id": { "$in": ids }, "_cdc": { "$exists": true } };
        let collection = self.db.collection::<Document>(collection_name(entity));
        within("lookup", self.call_timeout, async {
            let mut cursor = collection.find(filter).projection(doc! { "_id": 1 }).max_time(self.call_timeout).await?;
            let mut out = HashSet::new();
            while cursor.advance().await? {
                if let Ok(Some(id)) = cursor.current().get_str("_id").map(|s| Uuid::parse_str(s).ok()) {
                    out.insert(id);
                }
            }
            Ok(out)
        })
        .await
    }

    pub async fn ping(&self) -> Result<(), TargetError> {
        within("ping", self.call_timeout, async { self.db.run_command(doc! { "ping": 1 }).await }).await?;
        Ok(())
    }

    pub async fn purge_tombstones(&self, entity: Entity, older_than: Duration) -> Result<u64, TargetError> {
        let cutoff =
            mongodb::bson::DateTime::from_millis(mongodb::bson::DateTime::now().timestamp_millis() - i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX));
        let collection = self.db.collection::<Document>(collection_name(entity));
        if entity == Entity::OrderItem {
            let result = collection
                .update_many(
                    doc! { "items": { "$elemMatch": { "_cdc.deleted": true, "_cdc.applied_at": { "$lt": cutoff } } } },
                    doc! { "$pull": { "items": { "_cdc.deleted": true, "_cdc.applied_at": { "$lt": cutoff } } } },
                )
                .await?;
            let loose = self
                .db
                .collection::<Document>(ITEM_TOMBSTONES_COLLECTION)
                .delete_many(doc! { "_cdc.deleted": true, "_cdc.applied_at": { "$lt": cutoff } })
                .await?;
            return Ok(result.modified_count + loose.deleted_count);
        }
        let result = collection.delete_many(doc! { "_cdc.deleted": true, "_cdc.applied_at": { "$lt": cutoff } }).await?;
        Ok(result.deleted_count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statement(bytes: usize) -> Document {
        doc! { "q": { "_id": "x" }, "u": [ { "$set": { "pad": "x".repeat(bytes) } } ] }
    }

    /// Commands stay under 16 MiB: a batch of 40 statements of 1 MiB goes as 3 commands,
    /// none over the budget, in order, none lost; an oversized statement goes alone.
    #[test]
    fn commands_are_split_below_16_mib() {
        let updates: Vec<Document> = (0..40).map(|_| statement(1024 * 1024)).collect();
        let ranges = chunks(&updates);
        assert_eq!(ranges.iter().map(|r| r.len()).sum::<usize>(), 40);
        assert!(ranges.windows(2).all(|w| w[0].end == w[1].start) && ranges[0].start == 0);
        for r in &ranges {
            let size: usize = updates[r.clone()].iter().map(|d| mongodb::bson::to_vec(d).unwrap().len()).sum();
            assert!(size < 16 * 1024 * 1024, "{size}");
        }
        assert_eq!(ranges.len(), 3);
        let mixed = vec![statement(10), statement(17 * 1024 * 1024), statement(10)];
        assert_eq!(chunks(&mixed), vec![0..1, 1..2, 2..3]);
        assert_eq!(chunks(&[]), Vec::<std::ops::Range<usize>>::new());
    }

    /// A key-only item delete's tombstone is a guarded upsert by item id carrying the write
    /// token; a stored `_cdc` reads back as the version it holds (pre-upgrade fields absent).
    #[test]
    fn item_tombstones_and_stored_versions() {
        let change = Change {
            entity: Entity::OrderItem,
            key: Uuid::from_u128(7),
            op: crate::model::Op::Delete,
            version: Version::streamed(Some(100), 90),
            source_ts: None,
            emitted_ts: None,
            tx_id: None,
            before: Some(crate::model::Row::empty(Entity::OrderItem)),
            after: None,
            coords: crate::model::Coords { topic: "cdc.public.order_item".into(), partition: 0, offset: 1, timestamp: None },
        };
        let t = item_tombstone(&change, "w1");
        assert_eq!(t.get_document("q").unwrap(), &doc! { "_id": Uuid::from_u128(7).to_string() });
        assert_eq!(t.get_bool("upsert"), Ok(true));
        let text = t.to_string();
        assert!(text.contains("\"write\": \"w1\"") && text.contains("\"deleted\": true") && text.contains("$_cdc.lsn"), "{text}");
        let stored = stored_version(&doc! { "lsn": 90_i64, "commit": 100_i64, "epoch": 0, "snapshot": false }).unwrap();
        assert_eq!(stored, change.version);
        assert!(!change.version.is_newer_than(&stored), "a replay of the delete is not newer");
        assert_eq!(stored_version(&doc! { "lsn": 5_i64 }), Some(Version { epoch: 0, commit: None, lsn: 5, snapshot: false }));
    }

    /// A moved item is tombstoned, under its version guard, in every order but its new one.
    #[test]
    fn a_moved_item_is_tombstoned_in_its_old_order() {
        let id = Uuid::from_u128(7);
        let new_order = Uuid::from_u128(9);
        let change = Change {
            entity: Entity::OrderItem,
            key: id,
            op: crate::model::Op::Update,
            version: Version::streamed(Some(100), 90),
            source_ts: None,
            emitted_ts: None,
            tx_id: None,
            before: None,
            after: Some(crate::model::Row::empty(Entity::OrderItem)),
            coords: crate::model::Coords { topic: "cdc.public.order_item".into(), partition: 0, offset: 1, timestamp: None },
        };
        let s = item_moved_away(&change, new_order);
        assert!(s.to_string().contains("\"write\": \"\""), "a side effect carries no write token");
        assert_eq!(s.get_document("q").unwrap(), &doc! { "items.id": id.to_string(), "_id": { "$ne": new_order.to_string() } });
        assert_eq!(s.get_bool("multi"), Ok(true));
        let text = s.to_string();
        assert!(text.contains("\"deleted\": true") && text.contains(&format!("\"moved_to\": \"{new_order}\"")), "{text}");
        assert!(text.contains("$$this._cdc.lsn"), "the item's own version guards the tombstone: {text}");
    }
}
