//! Debezium event decoding: the raw envelope (`before`/`after`/`source`/`op`/`ts_ms`) and
//! the ExtractNewRecordState form (`__deleted`, `__op`, `__lsn`, `__source_ts_ms`, ...),
//! both JSON without schemas.

use base64::Engine;
use chrono::{DateTime, TimeZone, Utc};
use rust_decimal::Decimal;
use serde_json::{Map, Value as Json};
use uuid::Uuid;

use std::collections::HashMap;

use crate::config::{DecimalHandling, SinkConfig, TimePrecision};
use crate::model::{Change, ColumnType, Coords, Entity, Extra, Field, JsonKind, Op, Row, SourceType, Value, Version, stored_name};

/// What decoding needs from the configuration: how the connector encoded values that carry
/// no schema, the source epoch, the size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeOptions {
    pub max_event_bytes: usize,
    pub epoch: i32,
    pub decimals: DecimalHandling,
    pub time_precision: TimePrecision,
}

impl DecodeOptions {
    pub fn of(config: &SinkConfig) -> Self {
        Self {
            max_event_bytes: config.apply.max_event_bytes,
            epoch: config.source.epoch,
            decimals: config.source.decimal_handling,
            time_precision: config.source.time_precision,
        }
    }
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self { max_event_bytes: 1 << 20, epoch: 0, decimals: DecimalHandling::default(), time_precision: TimePrecision::default() }
    }
}

/// How the connector declared one column in an event's schema (events with
/// `schemas.enable=true`): the schema, not the value's look, says how to read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Declared {
    /// `org.apache.kafka.connect.data.Decimal` (`decimal.handling.mode=precise`): base64
    /// unscaled bytes at this scale; `connect.decimal.precision` when the column has one.
    DecimalBytes {
        scale: u32,
        precision: Option<u32>,
    },
    /// `{scale, value}`: a `numeric` column without precision and scale.
    VariableScaleDecimal,
    /// A string: text, `io.debezium.data.Json`, `Uuid`, `Enum`, a decimal under
    /// `decimal.handling.mode=string`.
    Text,
    Double,
    /// An integer without a logical type, of this many bits.
    Int {
        bits: u8,
    },
    /// Timestamps without a zone, as epoch numbers (`Timestamp`, `MicroTimestamp`,
    /// `NanoTimestamp`, Connect's `Timestamp`).
    EpochMillis,
    EpochMicros,
    EpochNanos,
    /// `ZonedTimestamp`, `IsoTimestamp`: ISO-8601 strings.
    IsoString,
    /// Days since the epoch (`io.debezium.time.Date`, Connect's `Date`).
    Date,
    /// Time of day since midnight (`Time` and Connect's `Time`: ms; `MicroTime`; `NanoTime`).
    TimeMillis,
    TimeMicros,
    TimeNanos,
    /// `bytes` without a logical type (bytea): where a TOAST placeholder arrives as the
    /// marker's bytes.
    Bytes,
    Other,
}

impl Declared {
    fn of(field: &Json) -> Self {
        let ty = field.get("type").and_then(Json::as_str).unwrap_or_default();
        let logical = field.get("name").and_then(Json::as_str).unwrap_or_default();
        let parameter = |name: &str| {
            field
                .pointer(&format!("/parameters/{name}"))
                .and_then(|s| s.as_str().and_then(|s| s.parse().ok()).or_else(|| s.as_u64().and_then(|n| u32::try_from(n).ok())))
        };
        match (logical, ty) {
            // A Decimal always names its scale; the parameter missing would be a broken
            // schema, read as scale 0 (the Connect default) rather than guessed.
            ("org.apache.kafka.connect.data.Decimal", _) => {
                Self::DecimalBytes { scale: parameter("scale").unwrap_or(0), precision: parameter("connect.decimal.precision") }
            }
            ("io.debezium.data.VariableScaleDecimal", _) => Self::VariableScaleDecimal,
            ("io.debezium.time.Timestamp" | "org.apache.kafka.connect.data.Timestamp", _) => Self::EpochMillis,
            ("io.debezium.time.MicroTimestamp", _) => Self::EpochMicros,
            ("io.debezium.time.NanoTimestamp", _) => Self::EpochNanos,
            ("io.debezium.time.ZonedTimestamp" | "io.debezium.time.IsoTimestamp", _) => Self::IsoString,
            ("io.debezium.time.Date" | "org.apache.kafka.connect.data.Date", _) => Self::Date,
            ("io.debezium.time.Time" | "org.apache.kafka.connect.data.Time", _) => Self::TimeMillis,
            ("io.debezium.time.MicroTime", _) => Self::TimeMicros,
            ("io.debezium.time.NanoTime", _) => Self::TimeNanos,
            (_, "double" | "float") => Self::Double,
            ("", "int8") => Self::Int { bits: 8 },
            ("", "int16") => Self::Int { bits: 16 },
            ("", "int32") => Self::Int { bits: 32 },
            ("", "int64") => Self::Int { bits: 64 },
            (_, "bytes") => Self::Bytes,
            (_, "string") => Self::Text,
            _ => Self::Other,
        }
    }

    /// What the declaration says a known integer or decimal column now is in the source.
    fn source_type(self, ty: ColumnType) -> Option<SourceType> {
        match (ty, self) {
            (ColumnType::Int4, Self::Int { bits: 64 }) => Some(SourceType::Bigint),
            (ColumnType::Int4, Self::Int { .. }) => Some(SourceType::Integer),
            (ColumnType::Numeric { .. }, Self::DecimalBytes { scale, precision: Some(precision) }) => Some(SourceType::Numeric { precision, scale }),
            (ColumnType::Numeric { .. }, Self::DecimalBytes { precision: None, .. } | Self::VariableScaleDecimal) => Some(SourceType::AnyNumeric),
            _ => None,
        }
    }
}

/// Column name -> declaration, from a Kafka Connect JSON schema: the `after` (or `before`)
/// struct of an envelope, or the top-level fields of a flattened event.
fn declared_columns(schema: &Json) -> HashMap<String, Declared> {
    let fields = |s: &Json| s.get("fields").and_then(Json::as_array).cloned().unwrap_or_default();
    let top = fields(schema);
    let row = top
        .iter()
        .find(|f| f.get("field").and_then(Json::as_str) == Some("after"))
        .or_else(|| top.iter().find(|f| f.get("field").and_then(Json::as_str) == Some("before")))
        .map_or(top.clone(), fields);
    row.iter().filter_map(|f| Some((f.get("field")?.as_str()?.to_string(), Declared::of(f)))).collect()
}

/// Everything a row needs to decode its values.
#[derive(Clone, Copy)]
struct Decoding<'a> {
    options: &'a DecodeOptions,
    declared: &'a HashMap<String, Declared>,
}

/// Debezium's placeholder for an unchanged TOASTed column.
pub const TOAST_PLACEHOLDER: &str = "__debezium_unavailable_value";

/// Whether `json` is Debezium's TOAST placeholder in any form the connector sends it: the
/// string itself (text, enums, `io.debezium.data.Json`, also JSON-quoted), a one-element
/// array of it (array columns), or, where the column may be bytes (`bytes_possible`), the
/// marker's own bytes as `binary.handling.mode` encodes them (base64, base64-url-safe, hex).
/// Never data: a placeholder is "unchanged, not sent".
pub fn is_placeholder(json: &Json, bytes_possible: bool) -> bool {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};
    match json {
        Json::String(s) if s == TOAST_PLACEHOLDER => true,
        // The byte forms are longer than the marker, the quoted form is 2 longer: skip the
        // work for ordinary values.
        Json::String(s) if s.len() < TOAST_PLACEHOLDER.len() + 2 => false,
        Json::String(s) if s.len() == TOAST_PLACEHOLDER.len() + 2 => s.strip_prefix('"').and_then(|r| r.strip_suffix('"')) == Some(TOAST_PLACEHOLDER),
        Json::String(s) if bytes_possible => {
            let marker = TOAST_PLACEHOLDER.as_bytes();
            [STANDARD.decode(s).ok(), URL_SAFE.decode(s).ok(), hex_bytes(s)].into_iter().flatten().any(|b| b == marker)
        }
        Json::Array(items) if items.len() == 1 => is_placeholder(&items[0], bytes_possible),
        _ => false,
    }
}

fn hex_bytes(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect()
}

/// What one Kafka record turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    Change(Box<Change>),
    /// Null value after a delete: nothing to apply (the delete event did the work).
    Tombstone,
    /// `op = t`: the sink does not mirror truncates (the target keeps its rows and
    /// tombstones; an operator decides), it logs and counts them.
    Truncate,
    /// `op = m`: a logical decoding message, not a row change.
    Message {
        prefix: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("value is not JSON: {0}")]
    MalformedValue(String),
    #[error("key is not JSON: {0}")]
    MalformedKey(String),
    #[error("value is not a JSON object")]
    NotAnObject,
    #[error("neither a Debezium envelope (op with source or after) nor a flattened event (ExtractNewRecordState fields)")]
    NotAnEvent,
    #[error("unknown op {0:?}")]
    UnknownOp(String),
    #[error("topic {0:?} does not name a known table")]
    UnknownTable(String),
    #[error("event is for table {event:?} but arrived on the topic of {topic:?}")]
    TableMismatch { event: String, topic: String },
    #[error("no source position: {0}")]
    MissingLsn(&'static str),
    #[error("missing row image: {0}")]
    MissingRow(&'static str),
    #[error("column {column}: {reason}")]
    BadColumn { column: String, reason: String },
    #[error("key {key} does not match the row id {row}")]
    KeyMismatch { key: String, row: String },
    #[error("value of {size} bytes exceeds max_event_bytes ({limit})")]
    TooLarge { size: usize, limit: usize },
    /// A flattened event without `__deleted`: the connector drops deletes or sends them as
    /// bare nulls, so the sink would silently keep deleted rows. A configuration error, not
    /// an event's fault: the partition stops until the connector is fixed.
    #[error(
        "flattened event without __deleted: deletes are dropped or sent without a row; configure ExtractNewRecordState \
         with delete.handling.mode=rewrite (Debezium 3: delete.tombstone.handling.mode=rewrite) and add.fields=op,lsn,source.ts_ms,sequence"
    )]
    DeletesNotCarried,
}

impl DecodeError {
    /// Short stable name for metrics and the `dlq.reason_kind` header.
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::MalformedValue(_) | Self::NotAnObject => "malformed_value",
            Self::NotAnEvent => "not_an_event",
            Self::MalformedKey(_) => "malformed_key",
            Self::UnknownOp(_) => "unknown_op",
            Self::UnknownTable(_) | Self::TableMismatch { .. } => "unknown_table",
            Self::MissingLsn(_) => "missing_lsn",
            Self::MissingRow(_) => "missing_row",
            Self::BadColumn { .. } => "bad_column",
            Self::KeyMismatch { .. } => "key_mismatch",
            Self::TooLarge { .. } => "too_large",
            Self::DeletesNotCarried => "deletes_not_carried",
        }
    }
}

/// Decodes one record. `key`/`value` are the raw Kafka bytes.
pub fn decode(coords: &Coords, key: Option<&[u8]>, value: Option<&[u8]>, options: &DecodeOptions) -> Result<Decoded, DecodeError> {
    let Some(value) = value else {
        return Ok(Decoded::Tombstone);
    };
    if value.len() > options.max_event_bytes {
        return Err(DecodeError::TooLarge { size: value.len(), limit: options.max_event_bytes });
    }
    let entity = Entity::from_topic(&coords.topic).ok_or_else(|| DecodeError::UnknownTable(coords.topic.clone()))?;
    let json: Json = serde_json::from_slice(value).map_err(|e| DecodeError::MalformedValue(e.to_string()))?;
    let Json::Object(obj) = json else {
        return Err(DecodeError::NotAnObject);
    };
    // Debezium with schemas enabled wraps everything in {schema, payload}; the schema then
    // declares how each column was encoded.
    let (obj, declared) = match (obj.get("payload"), obj.get("schema")) {
        (Some(Json::Object(p)), Some(schema)) => (p.clone(), declared_columns(schema)),
        _ => (obj, HashMap::new()),
    };
    let how = Decoding { options, declared: &declared };
    let is_envelope = obj.contains_key("op") && (obj.contains_key("source") || obj.contains_key("after"));
    let change = if is_envelope { decode_envelope(entity, &obj, coords, how)? } else { decode_flattened(entity, &obj, coords, how)? };
    let Some(mut change) = change else {
        return Ok(match obj.get("op").or_else(|| obj.get("__op")).and_then(Json::as_str) {
            Some("t") => Decoded::Truncate,
            _ => Decoded::Message { prefix: obj.get("message").and_then(|m| m.get("prefix")).and_then(Json::as_str).unwrap_or_default().to_string() },
        });
    };
    if let Some(key) = key {
        let key_id = decode_key(key)?;
        if let Some(key_id) = key_id.filter(|k| *k != change.key) {
            return Err(DecodeError::KeyMismatch { key: key_id.to_string(), row: change.key.to_string() });
        }
    }
    change.coords = coords.clone();
    Ok(Decoded::Change(Box::new(change)))
}

/// The Kafka key: `{"id": "<uuid>"}` (or a schema-wrapped payload). `None` when it names no id.
fn decode_key(key: &[u8]) -> Result<Option<Uuid>, DecodeError> {
    let json: Json = serde_json::from_slice(key).map_err(|e| DecodeError::MalformedKey(e.to_string()))?;
    let id = json.get("id").or_else(|| json.pointer("/payload/id"));
    match id {
        None => Ok(None),
        Some(Json::String(s)) => Uuid::parse_str(s).map(Some).map_err(|e| DecodeError::MalformedKey(format!("id {s:?} is not a uuid: {e}"))),
        Some(other) => Err(DecodeError::MalformedKey(format!("id is {other}, not a uuid string"))),
    }
}

fn parse_op(op: &str) -> Result<Option<Op>, DecodeError> {
    Ok(Some(match op {
        "r" => Op::Read,
        "c" => Op::Create,
        "u" => Op::Update,
        "d" => Op::Delete,
        "t" | "m" => return Ok(None),
        other => return Err(DecodeError::UnknownOp(other.to_string())),
    }))
}

/// `source.sequence`: a JSON array in a string, `["<last commit lsn>", "<lsn>"]`, either
/// element possibly null.
fn sequence_commit(sequence: Option<&Json>) -> Option<i64> {
    let text = sequence?.as_str()?;
    let parsed: Json = serde_json::from_str(text).ok()?;
    let first = parsed.as_array()?.first()?;
    first.as_str().and_then(|s| s.parse().ok()).or_else(|| first.as_i64())
}

/// `source.snapshot`: "true", "first", "last", "first_in_data_collection",
/// "last_in_data_collection", "incremental" (or a boolean in old versions); "false" or absent
/// for streamed changes.
fn is_snapshot(snapshot: Option<&Json>, op: Op) -> bool {
    op == Op::Read
        || match snapshot {
            Some(Json::Bool(b)) => *b,
            Some(Json::String(s)) => s != "false",
            _ => false,
        }
}

fn version(options: &DecodeOptions, lsn: i64, commit: Option<i64>, snapshot: bool) -> Version {
    // A snapshot row's commit position is the snapshot point itself.
    Version { epoch: options.epoch, commit: if snapshot { Some(lsn) } else { commit }, lsn, snapshot }
}

fn decode_envelope(entity: Entity, obj: &Map<String, Json>, coords: &Coords, how: Decoding<'_>) -> Result<Option<Change>, DecodeError> {
    let op = obj.get("op").and_then(Json::as_str).ok_or_else(|| DecodeError::UnknownOp(format!("{:?}", obj.get("op"))))?;
    let Some(op) = parse_op(op)? else {
        return Ok(None);
    };
    let source = obj.get("source").and_then(Json::as_object);
    if let Some(table) = source.and_then(|s| s.get("table")).and_then(Json::as_str).filter(|t| *t != entity.table()) {
        return Err(DecodeError::TableMismatch { event: table.into(), topic: coords.topic.clone() });
    }
    let lsn = source.and_then(|s| s.get("lsn")).and_then(Json::as_i64).ok_or(DecodeError::MissingLsn("source.lsn"))?;
    let commit = sequence_commit(source.and_then(|s| s.get("sequence")));
    let version = version(how.options, lsn, commit, is_snapshot(source.and_then(|s| s.get("snapshot")), op));
    let source_ts = source.and_then(|s| epoch_field(s, "ts"));
    let emitted_ts = epoch_field(obj, "ts");
    let tx_id = source.and_then(|s| s.get("txId")).and_then(Json::as_i64);
    let row = |name: &str, lenient: bool| -> Result<Option<Row>, DecodeError> {
        match obj.get(name) {
            None | Some(Json::Null) => Ok(None),
            Some(Json::Object(r)) if lenient => decode_delete_image(entity, r, how).map(Some),
            Some(Json::Object(r)) => decode_row(entity, r, how).map(Some),
            Some(_) => Err(DecodeError::MissingRow("before/after is not an object")),
        }
    };
    let before = row("before", op.is_delete())?;
    let after = row("after", false)?;
    let image = if op.is_delete() {
        before.as_ref().ok_or(DecodeError::MissingRow("delete without before"))?
    } else {
        after.as_ref().ok_or(DecodeError::MissingRow("create/update/read without after"))?
    };
    let key = row_id(entity, image)?;
    let after = if op.is_delete() { None } else { after };
    Ok(Some(Change { entity, key, op, version, source_ts, emitted_ts, tx_id, before, after, coords: coords.clone() }))
}

fn decode_flattened(entity: Entity, obj: &Map<String, Json>, coords: &Coords, how: Decoding<'_>) -> Result<Option<Change>, DecodeError> {
    let deleted = match obj.get("__deleted") {
        Some(Json::Bool(b)) => *b,
        Some(Json::String(s)) => s == "true",
        // Only a record that shows ExtractNewRecordState's metadata fields (`__op`, `__lsn`,
        // `__source_*`, `__table`, ...) says the connector flattens without deletes, which
        // stops the partition. Anything else (`{}`, an envelope without `op`) is this one
        // record's fault: dead-lettered, and the partition moves on.
        _ if obj.keys().any(|k| k.starts_with("__")) => return Err(DecodeError::DeletesNotCarried),
        _ => return Err(DecodeError::NotAnEvent),
    };
    let op = match obj.get("__op").and_then(Json::as_str) {
        Some(op) => parse_op(op)?,
        None if deleted => Some(Op::Delete),
        // Without `__op` a non-deleted row is an upsert; the version guard decides.
        None => Some(Op::Update),
    };
    let Some(mut op) = op else { return Ok(None) };
    if deleted {
        op = Op::Delete;
    }
    if let Some(table) = obj.get("__table").and_then(Json::as_str).filter(|t| *t != entity.table()) {
        return Err(DecodeError::TableMismatch { event: table.into(), topic: coords.topic.clone() });
    }
    let lsn = obj
        .get("__lsn")
        .or_else(|| obj.get("__source_lsn"))
        .and_then(Json::as_i64)
        .ok_or(DecodeError::MissingLsn("__lsn (configure ExtractNewRecordState add.fields=op,lsn,source.ts_ms,sequence,table)"))?;
    let commit = sequence_commit(obj.get("__sequence").or_else(|| obj.get("__source_sequence")));
    let snapshot = is_snapshot(obj.get("__snapshot").or_else(|| obj.get("__source_snapshot")), op);
    let version = version(how.options, lsn, commit, snapshot);
    let source_ts = epoch_field(obj, "__source_ts");
    let emitted_ts = epoch_field(obj, "__ts");
    // Only when ExtractNewRecordState adds it (`add.fields=txId` or `source.txId`).
    let tx_id = obj.get("__txId").or_else(|| obj.get("__source_txId")).and_then(Json::as_i64);
    let fields: Map<String, Json> = obj.iter().filter(|(k, _)| !k.starts_with("__")).map(|(k, v)| (k.clone(), v.clone())).collect();
    let row = if op.is_delete() { decode_delete_image(entity, &fields, how)? } else { decode_row(entity, &fields, how)? };
    let key = row_id(entity, &row)?;
    let (before, after) = if op.is_delete() { (Some(row), None) } else { (None, Some(row)) };
    Ok(Some(Change { entity, key, op, version, source_ts, emitted_ts, tx_id, before, after, coords: coords.clone() }))
}

/// `<prefix>_ms`, `<prefix>_us` or `<prefix>_ns` (Debezium 2.x sends all three on `source`).
fn epoch_field(obj: &Map<String, Json>, prefix: &str) -> Option<DateTime<Utc>> {
    let get = |suffix: &str| obj.get(&format!("{prefix}_{suffix}")).and_then(Json::as_i64);
    if let Some(ns) = get("ns") {
        return Some(Utc.timestamp_nanos(ns));
    }
    if let Some(us) = get("us") {
        return DateTime::from_timestamp_micros(us);
    }
    get("ms").and_then(DateTime::from_timestamp_millis)
}

fn row_id(entity: Entity, row: &Row) -> Result<uuid::Uuid, DecodeError> {
    row.uuid(entity, "id").ok_or_else(|| DecodeError::BadColumn { column: "id".into(), reason: "missing or null primary key".into() })
}

/// The image of a delete. A delete needs only its key: with `REPLICA IDENTITY DEFAULT`
/// (PostgreSQL's default) the before image carries the key alone and Debezium fills the
/// other required columns with empty values (`""` for a uuid column), which must not make
/// the delete undecodable (it would be dead-lettered and the row stay: a lost delete).
/// Non-key columns that do not decode are left out; the key must decode.
fn decode_delete_image(entity: Entity, obj: &Map<String, Json>, how: Decoding<'_>) -> Result<Row, DecodeError> {
    let decodable: Map<String, Json> = obj
        .iter()
        .filter(|(name, json)| {
            *name == "id"
                || match entity.column_index(name) {
                    Some(i) => how.is_placeholder(name, Some(entity.columns()[i].ty), json) || how.value(name, entity.columns()[i].ty, json).is_ok(),
                    None => true,
                }
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    decode_row(entity, &decodable, how)
}

impl Decoding<'_> {
    /// Whether a column's value is the TOAST placeholder. The byte forms count only where
    /// the column may hold bytes: declared so by the schema, a `precise` decimal, or an
    /// added column of an event without a schema (its type is unknown).
    fn is_placeholder(&self, column: &str, known: Option<ColumnType>, json: &Json) -> bool {
        let declared = self.declared.get(column).copied();
        let bytes_possible = match (declared, known) {
            (Some(Declared::Bytes | Declared::DecimalBytes { .. }), _) => true,
            (None, None) => true,
            (None, Some(ColumnType::Numeric { .. })) => self.options.decimals == DecimalHandling::Precise,
            _ => false,
        };
        is_placeholder(json, bytes_possible)
    }

    /// A column's value, read as the schema declares it, else as the connector settings say.
    fn value(&self, column: &str, ty: ColumnType, json: &Json) -> Result<Value, String> {
        let declared = self.declared.get(column).copied();
        match ty {
            ColumnType::Numeric { scale } if !json.is_null() => {
                let how = match declared {
                    Some(Declared::DecimalBytes { scale, .. }) => DecimalEncoding::Base64 { scale },
                    Some(Declared::VariableScaleDecimal) => DecimalEncoding::VariableScale,
                    Some(Declared::Text) => DecimalEncoding::Text,
                    Some(Declared::Double) => DecimalEncoding::Number,
                    _ => match self.options.decimals {
                        DecimalHandling::Precise => DecimalEncoding::Base64 { scale },
                        DecimalHandling::String => DecimalEncoding::Text,
                        DecimalHandling::Double => DecimalEncoding::Number,
                    },
                };
                decode_decimal(json, how).map(Value::Numeric)
            }
            ColumnType::Timestamptz if !json.is_null() => {
                let unit = match declared {
                    Some(Declared::EpochMillis) => Some(EpochUnit::Millis),
                    Some(Declared::EpochMicros) => Some(EpochUnit::Micros),
                    Some(Declared::EpochNanos) => Some(EpochUnit::Nanos),
                    Some(Declared::IsoString) => None,
                    _ => match self.options.time_precision {
                        // PostgreSQL's default timestamp precision is 6: microseconds.
                        TimePrecision::Adaptive | TimePrecision::AdaptiveTimeMicroseconds => Some(EpochUnit::Micros),
                        TimePrecision::Connect => Some(EpochUnit::Millis),
                        TimePrecision::Isostring => None,
                    },
                };
                decode_timestamp(json, unit).map(Value::Timestamp)
            }
            _ => decode_value(ty, json),
        }
    }
}

fn decode_row(entity: Entity, obj: &Map<String, Json>, how: Decoding<'_>) -> Result<Row, DecodeError> {
    let mut row = Row::empty(entity);
    for (name, json) in obj {
        match entity.column_index(name) {
            Some(i) => {
                let column = &entity.columns()[i];
                let field = if how.is_placeholder(name, Some(column.ty), json) {
                    Field::Unavailable
                } else {
                    Field::Value(how.value(name, column.ty, json).map_err(|reason| DecodeError::BadColumn { column: name.clone(), reason })?)
                };
                row.known[i] = Some(field);
                if let Some(source) = how.declared.get(name).and_then(|d| d.source_type(column.ty)) {
                    row.source_types.insert(i, source);
                }
            }
            None => {
                let stored = stored_name(name);
                // Kept (not dropped): a placeholder makes the image incomplete, so an older
                // image of the key in the same batch is still written first.
                if how.is_placeholder(name, None, json) {
                    row.unavailable.insert(stored.into_owned());
                    continue;
                }
                let text = match how.declared.get(name) {
                    Some(declared) => added_text(*declared, json).map_err(|reason| DecodeError::BadColumn { column: name.clone(), reason })?,
                    None => plain_text(json),
                };
                row.extra.insert(stored.into_owned(), Extra { text, kind: JsonKind::of(json) });
            }
        }
    }
    Ok(row)
}

fn plain_text(json: &Json) -> Option<String> {
    match json {
        Json::Null => None,
        Json::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// The text an added column is stored as when the event's schema declares its encoding:
/// what PostgreSQL's text output of the source value spells (decimals from their unscaled
/// bytes, dates and times from their epoch numbers), never the wire form (base64, day
/// counts). Anything else as its JSON text.
fn added_text(declared: Declared, json: &Json) -> Result<Option<String>, String> {
    if json.is_null() {
        return Ok(None);
    }
    let int = || json.as_i64().ok_or_else(|| format!("expected an integer, found {json}"));
    let time_of_day = |nanos: i64| {
        let secs = u32::try_from(nanos.div_euclid(1_000_000_000)).map_err(|_| format!("{json} is out of range for a time"))?;
        let nano = u32::try_from(nanos.rem_euclid(1_000_000_000)).map_err(|_| format!("{json} is out of range for a time"))?;
        // 24:00:00 is a valid PostgreSQL time; chrono has no such time of day.
        if secs == 86_400 && nano == 0 {
            return Ok("24:00:00".to_string());
        }
        chrono::NaiveTime::from_num_seconds_from_midnight_opt(secs, nano)
            .map(|t| t.format("%H:%M:%S%.f").to_string())
            .ok_or_else(|| format!("{json} is out of range for a time"))
    };
    let naive = |t: Option<DateTime<Utc>>| {
        t.map(|t| t.naive_utc().format("%Y-%m-%d %H:%M:%S%.f").to_string()).ok_or_else(|| format!("{json} is out of range for a timestamp"))
    };
    Ok(Some(match declared {
        Declared::DecimalBytes { scale, .. } => decode_decimal(json, DecimalEncoding::Base64 { scale })?.to_string(),
        Declared::VariableScaleDecimal => decode_decimal(json, DecimalEncoding::VariableScale)?.to_string(),
        Declared::Date => {
            let days = int()?;
            let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("the epoch");
            i32::try_from(days)
                .ok()
                .and_then(|d| epoch.checked_add_signed(chrono::TimeDelta::days(d.into())))
                .map(|d| d.format("%Y-%m-%d").to_string())
                .ok_or_else(|| format!("{json} days is out of range for a date"))?
        }
        Declared::TimeMillis => time_of_day(int()?.saturating_mul(1_000_000))?,
        Declared::TimeMicros => time_of_day(int()?.saturating_mul(1_000))?,
        Declared::TimeNanos => time_of_day(int()?)?,
        Declared::EpochMillis => naive(DateTime::from_timestamp_millis(int()?))?,
        Declared::EpochMicros => naive(DateTime::from_timestamp_micros(int()?))?,
        Declared::EpochNanos => naive(Some(Utc.timestamp_nanos(int()?)))?,
        Declared::Text | Declared::Double | Declared::Int { .. } | Declared::IsoString | Declared::Bytes | Declared::Other => return Ok(plain_text(json)),
    }))
}

/// Values whose encoding does not depend on the connector's settings (numeric and
/// timestamp columns are read by `Decoding::value`).
fn decode_value(ty: ColumnType, json: &Json) -> Result<Value, String> {
    if json.is_null() {
        return Ok(Value::Null);
    }
    match ty {
        ColumnType::Uuid => match json {
            Json::String(s) => Uuid::parse_str(s).map(Value::Uuid).map_err(|e| format!("{s:?} is not a uuid: {e}")),
            other => Err(format!("expected a uuid string, found {other}")),
        },
        ColumnType::Text => match json {
            Json::String(s) => Ok(Value::Text(s.clone())),
            other => Err(format!("expected a string, found {other}")),
        },
        ColumnType::Bool => match json {
            Json::Bool(b) => Ok(Value::Bool(*b)),
            Json::String(s) if s == "true" || s == "false" => Ok(Value::Bool(s == "true")),
            other => Err(format!("expected a boolean, found {other}")),
        },
        ColumnType::Int4 => {
            let n = match json {
                Json::Number(n) => n.as_i64(),
                Json::String(s) => s.parse::<i64>().ok(),
                _ => None,
            };
            n.map(Value::Int).ok_or_else(|| format!("expected an integer, found {json}"))
        }
        ColumnType::Numeric { scale } => decode_decimal(json, DecimalEncoding::Base64 { scale }).map(Value::Numeric),
        ColumnType::Timestamptz => decode_timestamp(json, Some(EpochUnit::Micros)).map(Value::Timestamp),
    }
}

/// How the connector encoded a decimal (declared by the event's schema or by
/// `[source] decimal_handling`), never guessed from the value: `"1234"` is valid base64
/// (of a negative unscaled value) as well as a decimal string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecimalEncoding {
    /// `precise`: base64 of the big-endian two's-complement unscaled value.
    Base64 { scale: u32 },
    /// `{"scale": s, "value": base64}` (`io.debezium.data.VariableScaleDecimal`).
    VariableScale,
    /// `string`.
    Text,
    /// `double`.
    Number,
}

pub fn decode_decimal(json: &Json, how: DecimalEncoding) -> Result<Decimal, String> {
    match (how, json) {
        // A JSON number is unambiguous whatever was declared.
        (_, Json::Number(n)) => n.to_string().parse::<Decimal>().map_err(|e| format!("{n} is not a decimal: {e}")),
        (DecimalEncoding::Base64 { scale }, Json::String(s)) => decimal_from_base64(s, scale),
        (DecimalEncoding::Text | DecimalEncoding::Number, Json::String(s)) => s.parse::<Decimal>().map_err(|e| format!("{s:?} is not a decimal: {e}")),
        // Variable scale always travels as an object.
        (_, Json::Object(o)) => {
            let scale = o.get("scale").and_then(Json::as_u64).ok_or("variable-scale decimal without scale")?;
            let value = o.get("value").and_then(Json::as_str).ok_or("variable-scale decimal without value")?;
            decimal_from_base64(value, u32::try_from(scale).map_err(|_| "scale out of range")?)
        }
        (DecimalEncoding::VariableScale, Json::String(s)) => Err(format!("{s:?}: a variable-scale decimal is an object {{scale, value}}")),
        (_, other) => Err(format!("expected a decimal, found {other}")),
    }
}

fn decimal_from_base64(s: &str, scale: u32) -> Result<Decimal, String> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(s).map_err(|e| format!("{s:?} is neither a decimal nor base64: {e}"))?;
    if bytes.is_empty() || bytes.len() > 12 {
        return Err(format!("{} unscaled bytes do not fit a 96-bit decimal", bytes.len()));
    }
    // Sign-extend the big-endian two's complement into an i128.
    let mut unscaled: i128 = if bytes[0] & 0x80 != 0 { -1 } else { 0 };
    for b in &bytes {
        unscaled = (unscaled << 8) | i128::from(*b);
    }
    Decimal::try_from_i128_with_scale(unscaled, scale).map_err(|e| format!("decimal out of range: {e}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochUnit {
    Millis,
    Micros,
    Nanos,
}

/// Timestamps arrive as ISO-8601 strings (`ZonedTimestamp` for timestamptz, with or without
/// offset) or epoch numbers in the unit the connector declared (`None`: numbers are refused,
/// `time.precision.mode=isostring`). The unit is never guessed from the magnitude.
pub fn decode_timestamp(json: &Json, unit: Option<EpochUnit>) -> Result<DateTime<Utc>, String> {
    match json {
        Json::String(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .or_else(|_| {
                chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
                    .or_else(|_| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f"))
                    .map(|n| n.and_utc())
            })
            .map_err(|e| format!("{s:?} is not an ISO-8601 timestamp: {e}")),
        Json::Number(n) => {
            let v = n.as_i64().ok_or_else(|| format!("{n} is not an integer epoch"))?;
            let t = match unit {
                Some(EpochUnit::Millis) => DateTime::from_timestamp_millis(v),
                Some(EpochUnit::Micros) => DateTime::from_timestamp_micros(v),
                Some(EpochUnit::Nanos) => Some(Utc.timestamp_nanos(v)),
                None => return Err(format!("{v}: an epoch number, but time_precision = \"isostring\" declares ISO-8601 strings")),
            };
            t.ok_or_else(|| format!("{v} is out of range"))
        }
        other => Err(format!("expected a timestamp, found {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::str::FromStr;

    fn coords(table: &str) -> Coords {
        Coords { topic: format!("cdc.public.{table}"), partition: 0, offset: 7, timestamp: None }
    }

    const ID: &str = "5f0c6d4e-1b7e-4c3a-9a55-1b2c3d4e5f60";
    const CUST: &str = "0a0c6d4e-1b7e-4c3a-9a55-1b2c3d4e5f61";

    /// The harness's connector settings: decimals as strings.
    fn options() -> DecodeOptions {
        DecodeOptions { decimals: DecimalHandling::String, ..DecodeOptions::default() }
    }

    fn dec(table: &str, key: Option<Json>, value: Json) -> Result<Decoded, DecodeError> {
        dec_with(&options(), table, key, value)
    }

    fn dec_with(options: &DecodeOptions, table: &str, key: Option<Json>, value: Json) -> Result<Decoded, DecodeError> {
        let k = key.map(|k| k.to_string().into_bytes());
        decode(&coords(table), k.as_deref(), Some(value.to_string().as_bytes()), options)
    }

    fn sized(max_event_bytes: usize) -> DecodeOptions {
        DecodeOptions { max_event_bytes, ..options() }
    }

    fn change(d: Decoded) -> Change {
        match d {
            Decoded::Change(c) => *c,
            other => panic!("expected a change, got {other:?}"),
        }
    }

    fn order(status: &str, amount: Json) -> Json {
        json!({"id": ID, "customer_id": CUST, "status": status, "total_amount": amount,
               "created_at": "2024-05-01T10:00:00.123456Z", "updated_at": "2024-05-01T10:00:00Z"})
    }

    #[test]
    fn raw_envelope_update_with_before() {
        let v = json!({"before": order("pending", json!("10.00")), "after": order("paid", json!("10.00")),
            "source": {"lsn": 12345, "ts_ms": 1714557600000i64, "table": "orders"}, "op": "u", "ts_ms": 1714557600100i64});
        let c = change(dec("orders", Some(json!({"id": ID})), v).unwrap());
        assert_eq!(c.op, Op::Update);
        assert_eq!(c.version, Version::streamed(None, 12345));
        assert_eq!(c.key.to_string(), ID);
        assert_eq!(c.source_ts.unwrap().timestamp_millis(), 1714557600000);
        let after = c.after.unwrap();
        assert_eq!(after.text(Entity::Orders, "status"), Some("paid"));
        assert_eq!(c.before.unwrap().text(Entity::Orders, "status"), Some("pending"));
        assert_eq!(after.value(Entity::Orders, "total_amount"), Some(&Value::Numeric(Decimal::from_str("10.00").unwrap())));
    }

    #[test]
    fn raw_envelope_snapshot_create_delete() {
        for (op, expected) in [("r", Op::Read), ("c", Op::Create)] {
            let v = json!({"before": null, "after": order("pending", json!("1.50")), "source": {"lsn": 1}, "op": op});
            assert_eq!(change(dec("orders", None, v).unwrap()).op, expected);
        }
        let v = json!({"before": order("paid", json!("1.50")), "after": null, "source": {"lsn": 9}, "op": "d"});
        let c = change(dec("orders", None, v).unwrap());
        assert_eq!(c.op, Op::Delete);
        assert!(c.after.is_none());
    }

    /// REPLICA IDENTITY DEFAULT: the before image of a delete has the key only, Debezium fills
    /// required columns with empty values. The delete decodes (only the key matters); an
    /// update whose after image has the same bad value still fails.
    #[test]
    fn a_delete_needs_only_its_key() {
        let item = "7a0c6d4e-1b7e-4c3a-9a55-1b2c3d4e5f62";
        let before = json!({"id": item, "order_id": "", "product_sku": "", "product_name": "", "quantity": 0, "unit_price": "", "line_total": ""});
        let v = json!({"before": before, "after": null, "source": {"lsn": 42, "table": "order_item"}, "op": "d"});
        let c = change(dec("order_item", Some(json!({"id": item})), v).unwrap());
        assert_eq!((c.op, c.key.to_string()), (Op::Delete, item.to_string()));
        assert_eq!(c.before.as_ref().and_then(|b| b.uuid(Entity::OrderItem, "order_id")), None, "the empty order_id is left out");
        let bad_update = json!({"before": null, "after": before, "source": {"lsn": 43, "table": "order_item"}, "op": "u"});
        assert!(dec("order_item", None, bad_update).is_err(), "an upsert with a bad uuid is still refused");
        let mut flattened = before.as_object().unwrap().clone();
        flattened.insert("__deleted".into(), json!("true"));
        flattened.insert("__lsn".into(), json!(44));
        let c = change(dec("order_item", None, Json::Object(flattened)).unwrap());
        assert_eq!(c.op, Op::Delete);
        let keyless = json!({"before": {"id": ""}, "after": null, "source": {"lsn": 45}, "op": "d"});
        assert!(dec("order_item", None, keyless).is_err(), "the key itself must decode");
    }

    #[test]
    fn flattened_form_with_metadata_and_delete_rewrite() {
        let mut v = order("shipped", json!("3.00"));
        let o = v.as_object_mut().unwrap();
        o.insert("__op".into(), json!("u"));
        o.insert("__lsn".into(), json!(777));
        o.insert("__source_ts_ms".into(), json!(1714557600000i64));
        o.insert("__table".into(), json!("orders"));
        o.insert("__deleted".into(), json!("false"));
        let c = change(dec("orders", Some(json!({"id": ID})), v.clone()).unwrap());
        assert_eq!((c.op, c.version.lsn), (Op::Update, 777));
        assert!(c.after.as_ref().unwrap().extra.is_empty(), "metadata fields are not columns");
        v["__deleted"] = json!("true");
        v["__op"] = json!("d");
        let c = change(dec("orders", None, v).unwrap());
        assert_eq!(c.op, Op::Delete);
        assert!(c.before.is_some() && c.after.is_none());
    }

    #[test]
    fn flattened_without_lsn_is_rejected() {
        let mut v = order("paid", json!("1.00"));
        v["__deleted"] = json!("false");
        let err = dec("orders", None, v).unwrap_err();
        assert_eq!(err.kind(), "missing_lsn");
    }

    #[test]
    fn tombstone_truncate_message() {
        assert_eq!(decode(&coords("orders"), Some(b"{\"id\":\"x\"}"), None, &sized(100)).unwrap(), Decoded::Tombstone);
        let t = json!({"op": "t", "source": {"lsn": 5, "table": "orders"}, "ts_ms": 1});
        assert_eq!(dec("orders", None, t).unwrap(), Decoded::Truncate);
        let m = json!({"op": "m", "source": {"lsn": 5}, "message": {"prefix": "audit", "content": "AQI="}});
        assert_eq!(dec("orders", None, m).unwrap(), Decoded::Message { prefix: "audit".into() });
    }

    #[test]
    fn unknown_op_and_malformed() {
        let v = json!({"op": "x", "source": {"lsn": 5}, "after": order("paid", json!("1"))});
        assert_eq!(dec("orders", None, v).unwrap_err().kind(), "unknown_op");
        let err = decode(&coords("orders"), None, Some(b"{not json"), &sized(100)).unwrap_err();
        assert_eq!(err.kind(), "malformed_value");
        let err = decode(&coords("invoice"), None, Some(b"{}"), &sized(100)).unwrap_err();
        assert_eq!(err.kind(), "unknown_table");
    }

    #[test]
    fn toast_placeholder_keeps_the_column() {
        let mut after = order("paid", json!("1.00"));
        after["status"] = json!(TOAST_PLACEHOLDER);
        let v = json!({"after": after, "source": {"lsn": 5}, "op": "u"});
        let c = change(dec("orders", None, v).unwrap());
        let row = c.after.unwrap();
        assert_eq!(row.known[Entity::Orders.column_index("status").unwrap()], Some(Field::Unavailable));
        assert!(!row.is_complete());
    }

    /// An added column sent as the placeholder is named unavailable, never stored as data,
    /// and makes the image incomplete (so an older image of the key is not discarded).
    #[test]
    fn placeholders_on_added_columns_in_every_form() {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE};
        let marker = TOAST_PLACEHOLDER.as_bytes();
        let hex: String = marker.iter().map(|b| format!("{b:02x}")).collect();
        let forms = [
            json!(TOAST_PLACEHOLDER),
            json!([TOAST_PLACEHOLDER]),
            json!(format!("\"{TOAST_PLACEHOLDER}\"")),
            json!(STANDARD.encode(marker)),
            json!(URL_SAFE.encode(marker)),
            json!(hex),
            json!([STANDARD.encode(marker)]),
        ];
        for form in forms {
            let mut after = order("paid", json!("1.00"));
            after["notes"] = form.clone();
            let c = change(dec("orders", None, json!({"after": after, "source": {"lsn": 5}, "op": "u"})).unwrap());
            let row = c.after.unwrap();
            assert!(row.extra.is_empty(), "{form}: never data: {:?}", row.extra);
            assert!(row.unavailable.contains("notes") && !row.is_complete(), "{form}");
        }
        // Declared by the schema as a string, a base64-looking value is data.
        let schema = json!({"type": "struct", "fields": [{"field": "after", "type": "struct", "fields": [{"field": "notes", "type": "string"}]}]});
        let mut after = order("paid", json!("1.00"));
        after["notes"] = json!(STANDARD.encode(marker));
        let c = change(dec("orders", None, json!({"schema": schema, "payload": {"after": after, "source": {"lsn": 5}, "op": "u"}})).unwrap());
        assert_eq!(c.after.unwrap().extra["notes"].text.as_deref(), Some(STANDARD.encode(marker).as_str()));
        // Ordinary values are not placeholders.
        assert!(!is_placeholder(&json!("x"), true) && !is_placeholder(&json!(["a", "b"]), true) && !is_placeholder(&json!([]), true));
        // A known column as a one-element array or JSON-quoted placeholder is unavailable too.
        let mut after = order("paid", json!("1.00"));
        after["status"] = json!([TOAST_PLACEHOLDER]);
        let row = change(dec("orders", None, json!({"after": after, "source": {"lsn": 5}, "op": "u"})).unwrap()).after.unwrap();
        assert_eq!(row.known[Entity::Orders.column_index("status").unwrap()], Some(Field::Unavailable));
    }

    /// Only a record with ExtractNewRecordState's fields stops its partition; anything else
    /// that is no event is a decode error of its own.
    #[test]
    fn records_that_are_no_event_are_decode_errors() {
        for value in [json!({}), json!({"before": null, "after": order("paid", json!("1")), "source": {"lsn": 5}}), json!({"id": ID})] {
            let err = dec("orders", None, value.clone()).unwrap_err();
            assert_eq!(err, DecodeError::NotAnEvent, "{value}");
            assert_eq!(err.kind(), "not_an_event");
        }
        for marker in ["__op", "__lsn", "__source_ts_ms", "__table"] {
            let mut flat = order("paid", json!("1"));
            flat[marker] = json!("u");
            assert_eq!(dec("orders", None, flat).unwrap_err(), DecodeError::DeletesNotCarried, "{marker}");
        }
    }

    /// Added columns named like the sink's own or MongoDB's reserved fields are stored under
    /// the documented rename; everything else keeps its name.
    #[test]
    fn reserved_added_column_names_are_renamed() {
        let mut after = order("paid", json!("1.00"));
        for name in ["_cdc_lsn", "_cdc", "_id", "items", "a.b", "$x", "_source_y", "loyalty"] {
            after[name] = json!(name);
        }
        let row = change(dec("orders", None, json!({"after": after, "source": {"lsn": 5}, "op": "u"})).unwrap()).after.unwrap();
        let names: Vec<&str> = row.extra.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            ["_source_%24x", "_source__cdc", "_source__cdc_lsn", "_source__id", "_source__source_y", "_source_a%2Eb", "_source_items", "loyalty"]
        );
        assert_eq!(row.extra["_source__cdc_lsn"].text.as_deref(), Some("_cdc_lsn"), "the value travels under the new name");
    }

    #[test]
    fn decimals_decode_as_declared() {
        let b64 = |scale| DecimalEncoding::Base64 { scale };
        assert_eq!(decode_decimal(&json!("1234.56"), DecimalEncoding::Text).unwrap().to_string(), "1234.56");
        assert_eq!(decode_decimal(&json!(12.5), DecimalEncoding::Number).unwrap().to_string(), "12.5");
        // 1234 unscaled = 0x04D2 -> "BNI=" -> 12.34 at scale 2.
        assert_eq!(decode_decimal(&json!("BNI="), b64(2)).unwrap().to_string(), "12.34");
        // -1 unscaled = 0xFF -> "/w==" -> -0.01.
        assert_eq!(decode_decimal(&json!("/w=="), b64(2)).unwrap().to_string(), "-0.01");
        assert_eq!(decode_decimal(&json!({"scale": 3, "value": "BNI="}), DecimalEncoding::VariableScale).unwrap().to_string(), "1.234");
        assert!(decode_decimal(&json!("not*base64"), b64(2)).is_err());
        assert!(decode_decimal(&json!(true), b64(2)).is_err());
        // "1234" is base64 of 0xD76DF8, the unscaled -2658824: declared precise, it is that
        // negative amount, never the number 1234.
        assert_eq!(decode_decimal(&json!("1234"), b64(2)).unwrap().to_string(), "-26588.24");
        assert_eq!(decode_decimal(&json!("1234"), DecimalEncoding::Text).unwrap().to_string(), "1234");
    }

    /// The connector's settings decide schema-less values; an event's schema overrides them.
    #[test]
    fn values_follow_the_settings_or_the_schema() {
        let item = |price: Json| {
            json!({"after": {"id": ID, "order_id": CUST, "product_sku": "S", "product_name": "N", "quantity": 1, "unit_price": price, "line_total": price},
                   "source": {"lsn": 5, "table": "order_item"}, "op": "c"})
        };
        let price = |d: Decoded| change(d).after.unwrap().value(Entity::OrderItem, "unit_price").cloned();
        let precise = DecodeOptions::default();
        assert_eq!(price(dec_with(&precise, "order_item", None, item(json!("1234"))).unwrap()), Some(Value::Numeric(Decimal::from_str("-26588.24").unwrap())));
        assert_eq!(price(dec("order_item", None, item(json!("1234"))).unwrap()), Some(Value::Numeric(Decimal::from_str("1234").unwrap())));
        let schema = json!({"type": "struct", "fields": [
            {"field": "before", "type": "struct", "fields": []},
            {"field": "after", "type": "struct", "fields": [
                {"field": "unit_price", "type": "bytes", "name": "org.apache.kafka.connect.data.Decimal", "parameters": {"scale": "2"}},
                {"field": "line_total", "type": "bytes", "name": "org.apache.kafka.connect.data.Decimal", "parameters": {"scale": "2"}}]}]});
        let wrapped = json!({"schema": schema, "payload": item(json!("BNI="))});
        assert_eq!(price(dec("order_item", None, wrapped).unwrap()), Some(Value::Numeric(Decimal::from_str("12.34").unwrap())), "the schema says bytes");

        let customer = |ts: Json| json!({"after": {"id": ID, "email": "a@b.c", "status": "active", "updated_at": ts}, "source": {"lsn": 5}, "op": "c"});
        let updated = |d: Decoded| change(d).after.unwrap().value(Entity::Customer, "updated_at").cloned();
        let micros = 1714557600123456i64;
        let expected = Some(Value::Timestamp(DateTime::from_timestamp_micros(micros).unwrap()));
        assert_eq!(updated(dec("customer", None, customer(json!(micros))).unwrap()), expected, "adaptive: microseconds");
        let connect = DecodeOptions { time_precision: TimePrecision::Connect, ..options() };
        assert_eq!(
            updated(dec_with(&connect, "customer", None, customer(json!(micros / 1000))).unwrap()).map(|v| format!("{v:?}")),
            Some(format!("{:?}", Value::Timestamp(DateTime::from_timestamp_millis(micros / 1000).unwrap())))
        );
        let iso = DecodeOptions { time_precision: TimePrecision::Isostring, ..options() };
        assert_eq!(dec_with(&iso, "customer", None, customer(json!(micros))).unwrap_err().kind(), "bad_column");
        let nanos = json!({"schema": {"type": "struct", "fields": [{"field": "after", "type": "struct", "fields": [
            {"field": "updated_at", "type": "int64", "name": "io.debezium.time.NanoTimestamp"}]}]}, "payload": customer(json!(micros * 1000))});
        assert_eq!(updated(dec("customer", None, nanos).unwrap()), expected, "the schema says nanoseconds");
    }

    /// With a schema, the schema decides: the declared source type of integer and decimal
    /// columns travels with the row (the target widens to it), the scale comes from the
    /// field's parameters, and added columns are stored as the source's text, not the wire
    /// form (base64 decimals, day counts, epoch numbers).
    #[test]
    fn the_schema_declares_types_scales_and_added_column_text() {
        let decimal = |field: &str, scale: u32, precision: u32| {
            json!({"field": field, "type": "bytes", "name": "org.apache.kafka.connect.data.Decimal",
                   "parameters": {"scale": scale.to_string(), "connect.decimal.precision": precision.to_string()}})
        };
        let fields = json!([
            {"field": "quantity", "type": "int64"},
            decimal("unit_price", 4, 14),
            {"field": "line_total", "type": "struct", "name": "io.debezium.data.VariableScaleDecimal"},
            decimal("discount", 3, 8),
            {"field": "shipped_on", "type": "int32", "name": "io.debezium.time.Date"},
            {"field": "cutoff", "type": "int64", "name": "io.debezium.time.MicroTime"},
            {"field": "cutoff_ms", "type": "int32", "name": "org.apache.kafka.connect.data.Time"},
            {"field": "packed_at", "type": "int64", "name": "io.debezium.time.MicroTimestamp"},
            {"field": "meta", "type": "string", "name": "io.debezium.data.Json"},
            {"field": "tags", "type": "array", "items": {"type": "string"}}
        ]);
        let schema =
            json!({"type": "struct", "fields": [{"field": "before", "type": "struct", "fields": []}, {"field": "after", "type": "struct", "fields": fields}]});
        // 12.3456 at scale 4 = 123456 = 0x01E240; 1.5 at scale 3 = 1500 = 0x05DC.
        let after = json!({"id": ID, "order_id": CUST, "product_sku": "S", "product_name": "N", "quantity": 9_000_000_000i64,
            "unit_price": "AeJA", "line_total": {"scale": 1, "value": "Dw=="}, "discount": "Bdw=", "shipped_on": 19_844,
            "cutoff": 45_296_000_001i64, "cutoff_ms": 45_296_123, "packed_at": 1_714_557_600_123_456i64, "meta": "{\"a\": 1}", "tags": ["x", "y"]});
        let value = json!({"schema": schema, "payload": {"after": after, "source": {"lsn": 5, "table": "order_item"}, "op": "c"}});
        let row = change(dec_with(&options(), "order_item", None, value).unwrap()).after.unwrap();
        let e = Entity::OrderItem;
        assert_eq!(row.value(e, "quantity"), Some(&Value::Int(9_000_000_000)));
        assert_eq!(row.value(e, "unit_price"), Some(&Value::Numeric(Decimal::from_str("12.3456").unwrap())), "scale 4 from the schema, not 2");
        assert_eq!(row.value(e, "line_total"), Some(&Value::Numeric(Decimal::from_str("1.5").unwrap())));
        let idx = |name| e.column_index(name).unwrap();
        assert_eq!(row.source_types.get(&idx("quantity")), Some(&SourceType::Bigint));
        assert_eq!(row.source_types.get(&idx("unit_price")), Some(&SourceType::Numeric { precision: 14, scale: 4 }));
        assert_eq!(row.source_types.get(&idx("line_total")), Some(&SourceType::AnyNumeric));
        let text = |name: &str| row.extra[name].text.clone();
        assert_eq!(text("discount").as_deref(), Some("1.500"));
        assert_eq!(text("shipped_on").as_deref(), Some("2024-05-01"));
        assert_eq!(text("cutoff").as_deref(), Some("12:34:56.000001"));
        assert_eq!(text("cutoff_ms").as_deref(), Some("12:34:56.123"));
        assert_eq!(text("packed_at").as_deref(), Some("2024-05-01 10:00:00.123456"));
        assert_eq!(text("meta").as_deref(), Some("{\"a\": 1}"));
        assert_eq!(text("tags").as_deref(), Some("[\"x\",\"y\"]"));
        // Without a schema nothing is declared: the target's column type bounds the values.
        let plain = json!({"after": {"id": ID, "order_id": CUST, "product_sku": "S", "product_name": "N", "quantity": 2, "unit_price": "1.00", "line_total": "2.00"},
            "source": {"lsn": 5, "table": "order_item"}, "op": "c"});
        assert!(change(dec("order_item", None, plain).unwrap()).after.unwrap().source_types.is_empty());
    }

    #[test]
    fn timestamps_iso_and_declared_epoch_units() {
        let expected = DateTime::parse_from_rfc3339("2024-05-01T10:00:00.123456Z").unwrap().with_timezone(&Utc);
        let micros = Some(EpochUnit::Micros);
        assert_eq!(decode_timestamp(&json!("2024-05-01T10:00:00.123456Z"), micros).unwrap(), expected);
        assert_eq!(decode_timestamp(&json!("2024-05-01T12:00:00.123456+02:00"), None).unwrap(), expected);
        assert_eq!(decode_timestamp(&json!(1714557600123456i64), micros).unwrap(), expected);
        assert_eq!(decode_timestamp(&json!(1714557600123456000i64), Some(EpochUnit::Nanos)).unwrap(), expected);
        assert_eq!(decode_timestamp(&json!(1714557600123i64), Some(EpochUnit::Millis)).unwrap().timestamp_millis(), 1714557600123);
        // A millisecond value read as declared microseconds is 1970, not guessed into 2024.
        assert_eq!(decode_timestamp(&json!(1714557600123i64), micros).unwrap().timestamp(), 1714557);
        assert!(decode_timestamp(&json!("yesterday"), micros).is_err());
    }

    /// Versions: commit position (`source.sequence[0]`) first, the change's LSN second; a
    /// snapshot row's commit is its snapshot LSN; a transaction that wrote before the
    /// snapshot point and committed after it outranks the snapshot row.
    #[test]
    fn versions_follow_commit_order() {
        let customer = |source: Json, op: &str| json!({"after": {"id": ID, "email": "a@b.c", "status": "active", "updated_at": "2024-05-01T10:00:00Z"}, "source": source, "op": op});
        let v = |source: Json, op: &str| change(dec("customer", None, customer(source, op)).unwrap()).version;
        let snapshot = v(json!({"lsn": 1000, "snapshot": "true", "sequence": "[null,\"1000\"]"}), "r");
        assert_eq!(snapshot, Version { epoch: 0, commit: Some(1000), lsn: 1000, snapshot: true });
        // Wrote at 900 (before the snapshot point), committed after: the first transaction
        // of the session has no last commit; a later one has.
        let straddling_first = v(json!({"lsn": 900, "snapshot": "false", "sequence": "[null,\"900\"]"}), "u");
        let straddling_later = v(json!({"lsn": 950, "snapshot": "false", "sequence": "[\"1200\",\"950\"]"}), "u");
        assert!(straddling_first.is_newer_than(&snapshot) && straddling_later.is_newer_than(&snapshot));
        assert!(!snapshot.is_newer_than(&straddling_first) && !snapshot.is_newer_than(&straddling_later), "a replayed snapshot row stays stale");
        assert!(straddling_later.is_newer_than(&straddling_first), "commit order, not change LSN order");
        let same_tx_next = v(json!({"lsn": 960, "sequence": "[\"1200\",\"960\"]"}), "u");
        assert!(same_tx_next.is_newer_than(&straddling_later) && !straddling_later.is_newer_than(&same_tx_next));
        assert!(!same_tx_next.is_newer_than(&same_tx_next), "a duplicate is not newer");
        let epoch1 = change(dec_with(&DecodeOptions { epoch: 1, ..options() }, "customer", None, customer(json!({"lsn": 5}), "u")).unwrap()).version;
        assert!(epoch1.is_newer_than(&same_tx_next), "a restored source re-based by its epoch");
        let flat = json!({"id": ID, "email": "a@b.c", "status": "active", "updated_at": "2024-05-01T10:00:00Z",
            "__deleted": "false", "__op": "u", "__lsn": 950, "__source_sequence": "[\"1200\",\"950\"]"});
        assert_eq!(change(dec("customer", None, flat).unwrap()).version, straddling_later);
    }

    /// `source.txId` is carried (a verifier asks whether a snapshot shows the change);
    /// events without it, flattened ones unless the SMT adds it, carry none.
    #[test]
    fn the_source_transaction_id_is_carried_when_sent() {
        let row = json!({"id": ID, "email": "a@b.c", "status": "active", "updated_at": "2024-05-01T10:00:00Z"});
        let envelope = |source: Json| json!({"after": row, "source": source, "op": "u"});
        let tx = |v: Json| change(dec("customer", None, v).unwrap()).tx_id;
        assert_eq!(tx(envelope(json!({"lsn": 5, "txId": 771}))), Some(771));
        assert_eq!(tx(envelope(json!({"lsn": 5}))), None);
        let mut flat = row.clone();
        flat["__deleted"] = json!("false");
        flat["__lsn"] = json!(5);
        assert_eq!(tx(flat.clone()), None);
        flat["__source_txId"] = json!(772);
        assert_eq!(tx(flat), Some(772));
    }

    /// ExtractNewRecordState without delete rewriting drops deletes: refused, never ignored.
    #[test]
    fn flattened_events_must_carry_deletes() {
        let flat = json!({"id": ID, "email": "a@b.c", "status": "active", "updated_at": "2024-05-01T10:00:00Z", "__op": "u", "__lsn": 7});
        assert_eq!(dec("customer", None, flat).unwrap_err(), DecodeError::DeletesNotCarried);
    }

    #[test]
    fn key_mismatch_and_bad_uuid() {
        let v = json!({"after": order("paid", json!("1")), "source": {"lsn": 5}, "op": "c"});
        let err = dec("orders", Some(json!({"id": CUST})), v.clone()).unwrap_err();
        assert_eq!(err.kind(), "key_mismatch");
        let err = decode(&coords("orders"), Some(b"nope"), Some(v.to_string().as_bytes()), &options()).unwrap_err();
        assert_eq!(err.kind(), "malformed_key");
        let mut bad = order("paid", json!("1"));
        bad["customer_id"] = json!("not-a-uuid");
        let err = dec("orders", None, json!({"after": bad, "source": {"lsn": 5}, "op": "c"})).unwrap_err();
        assert_eq!(err.kind(), "bad_column");
    }

    #[test]
    fn too_large_and_new_columns() {
        let v = json!({"after": order("paid", json!("1")), "source": {"lsn": 5}, "op": "c"}).to_string();
        let err = decode(&coords("orders"), None, Some(v.as_bytes()), &sized(10)).unwrap_err();
        assert_eq!(err.kind(), "too_large");
        let mut after = order("paid", json!("1"));
        after["loyalty_tier"] = json!(3);
        let c = change(dec("orders", None, json!({"after": after, "source": {"lsn": 5}, "op": "c"})).unwrap());
        let extra = c.after.unwrap().extra.remove("loyalty_tier").unwrap();
        assert_eq!((extra.text.as_deref(), extra.kind), (Some("3"), JsonKind::Number));
    }
}
