//! The entities the sink materializes and the decoded form of one change.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entity {
    Customer,
    Address,
    Orders,
    OrderItem,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Uuid,
    Text,
    Bool,
    Int4,
    /// `numeric(p, scale)`: base64 byte encodings carry the unscaled value.
    Numeric {
        scale: u32,
    },
    Timestamptz,
}

impl ColumnType {
    pub const fn sql(self) -> &'static str {
        match self {
            Self::Uuid => "uuid",
            Self::Text => "text",
            Self::Bool => "boolean",
            Self::Int4 => "integer",
            Self::Numeric { .. } => "numeric(12,2)",
            Self::Timestamptz => "timestamptz",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub ty: ColumnType,
    /// NOT NULL in the source.
    pub required: bool,
}

const fn col(name: &'static str, ty: ColumnType, required: bool) -> Column {
    Column { name, ty, required }
}

const MONEY: ColumnType = ColumnType::Numeric { scale: 2 };

const CUSTOMER: &[Column] = &[
    col("id", ColumnType::Uuid, true),
    col("email", ColumnType::Text, true),
    col("status", ColumnType::Text, true),
    col("updated_at", ColumnType::Timestamptz, true),
];
const ADDRESS: &[Column] = &[
    col("id", ColumnType::Uuid, true),
    col("customer_id", ColumnType::Uuid, true),
    col("type", ColumnType::Text, true),
    col("street", ColumnType::Text, true),
    col("city", ColumnType::Text, true),
    col("state", ColumnType::Text, false),
    col("postal_code", ColumnType::Text, true),
    col("country", ColumnType::Text, true),
    col("is_default", ColumnType::Bool, true),
    col("updated_at", ColumnType::Timestamptz, true),
];
const ORDERS: &[Column] = &[
    col("id", ColumnType::Uuid, true),
    col("customer_id", ColumnType::Uuid, true),
    col("status", ColumnType::Text, true),
    col("total_amount", MONEY, true),
    col("created_at", ColumnType::Timestamptz, true),
    col("updated_at", ColumnType::Timestamptz, true),
];
const ORDER_ITEM: &[Column] = &[
    col("id", ColumnType::Uuid, true),
    col("order_id", ColumnType::Uuid, true),
    col("product_sku", ColumnType::Text, true),
    col("product_name", ColumnType::Text, true),
    col("quantity", ColumnType::Int4, true),
    col("unit_price", MONEY, true),
    col("line_total", MONEY, true),
];

impl Entity {
    pub const ALL: [Entity; 4] = [Entity::Customer, Entity::Address, Entity::Orders, Entity::OrderItem];

    pub fn from_table(table: &str) -> Option<Self> {
        match table {
            "customer" => Some(Self::Customer),
            "address" => Some(Self::Address),
            "orders" => Some(Self::Orders),
            "order_item" => Some(Self::OrderItem),
            _ => None,
        }
    }

    /// `cdc.public.orders` -> orders: Debezium names topics `<prefix>.<schema>.<table>`.
    pub fn from_topic(topic: &str) -> Option<Self> {
        topic.rsplit('.').next().and_then(Self::from_table)
    }

    pub const fn table(self) -> &'static str {
        match self {
            Self::Customer => "customer",
            Self::Address => "address",
            Self::Orders => "orders",
            Self::OrderItem => "order_item",
        }
    }

    pub const fn columns(self) -> &'static [Column] {
        match self {
            Self::Customer => CUSTOMER,
            Self::Address => ADDRESS,
            Self::Orders => ORDERS,
            Self::OrderItem => ORDER_ITEM,
        }
    }

    pub fn column_index(self, name: &str) -> Option<usize> {
        self.columns().iter().position(|c| c.name == name)
    }

    /// The column referencing a parent entity, checked by the referential rule.
    pub const fn parent(self) -> Option<(&'static str, Entity)> {
        match self {
            Self::Customer => None,
            Self::Address | Self::Orders => Some(("customer_id", Entity::Customer)),
            Self::OrderItem => Some(("order_id", Entity::Orders)),
        }
    }
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.table())
    }
}

/// A decoded column value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Uuid(Uuid),
    Text(String),
    Bool(bool),
    /// An integer column's value: 64 bits, so a source column widened from `integer` to
    /// `bigint` keeps decoding (the target column is widened when such a value arrives).
    Int(i64),
    Numeric(Decimal),
    Timestamp(DateTime<Utc>),
}

/// The type an event's schema declares for a known integer or decimal column: what the
/// target column must be able to hold (it is widened to it when it cannot). Events without
/// a schema declare nothing; the target column's type then bounds their values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceType {
    Integer,
    Bigint,
    /// `numeric(precision, scale)`.
    Numeric {
        precision: u32,
        scale: u32,
    },
    /// `numeric` without precision or scale (`io.debezium.data.VariableScaleDecimal`).
    AnyNumeric,
}

/// One column of a row image.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    Value(Value),
    /// Debezium's TOAST placeholder: the value did not change and was not sent; the
    /// target keeps what it has.
    Unavailable,
}

/// A row image. Known columns are indexed like `Entity::columns()`; `None` means the
/// column was absent (dropped in the source, or not sent), which keeps the target value.
/// Columns the sink does not know (added in the source) travel as text in `extra`; those
/// sent as Debezium's TOAST placeholder are named in `unavailable` instead (the target keeps
/// what it has, exactly as for a known column's `Field::Unavailable`).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub known: Vec<Option<Field>>,
    pub extra: BTreeMap<String, Extra>,
    pub unavailable: BTreeSet<String>,
    /// Known column index -> the type the event's schema declares for it (integer and
    /// decimal columns of events that carry a schema).
    pub source_types: BTreeMap<usize, SourceType>,
}

/// The JSON kind of an added column's value, for classifying type changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JsonKind {
    Null,
    Bool,
    Number,
    String,
    Object,
    Array,
}

impl JsonKind {
    pub fn of(json: &serde_json::Value) -> Self {
        match json {
            serde_json::Value::Null => Self::Null,
            serde_json::Value::Bool(_) => Self::Bool,
            serde_json::Value::Number(_) => Self::Number,
            serde_json::Value::String(_) => Self::String,
            serde_json::Value::Object(_) => Self::Object,
            serde_json::Value::Array(_) => Self::Array,
        }
    }
}

/// What an added source column whose name a target reserves is stored under: this prefix
/// and the name with `%`, `.` and `$` percent-encoded (`_cdc_lsn` -> `_source__cdc_lsn`,
/// `a.b` -> `_source_a%2Eb`).
pub const RENAMED_PREFIX: &str = "_source_";

/// The name an added source column is stored under, the same in every target. Reserved, so
/// renamed: the sink's own columns and fields (`_cdc`, `_cdc_*`), MongoDB's `_id` and the
/// orders' embedded `items`, names MongoDB reads as paths or operators (containing `.`,
/// starting with `$`), and names that already start with the prefix (so the rule is
/// one-to-one: two source columns never share a stored name). Anything else is kept as is.
pub fn stored_name(source: &str) -> std::borrow::Cow<'_, str> {
    let reserved = source.starts_with("_cdc")
        || source == "_id"
        || source == "items"
        || source.contains('.')
        || source.starts_with('$')
        || source.starts_with(RENAMED_PREFIX);
    if !reserved {
        return std::borrow::Cow::Borrowed(source);
    }
    let escaped = source.replace('%', "%25").replace('.', "%2E").replace('$', "%24");
    std::borrow::Cow::Owned(format!("{RENAMED_PREFIX}{escaped}"))
}

/// A value of a column the sink does not know: stored as text (JSON text for non-strings).
#[derive(Debug, Clone, PartialEq)]
pub struct Extra {
    pub text: Option<String>,
    pub kind: JsonKind,
}

impl Row {
    pub fn empty(entity: Entity) -> Self {
        Self { known: vec![None; entity.columns().len()], extra: BTreeMap::new(), unavailable: BTreeSet::new(), source_types: BTreeMap::new() }
    }

    pub fn value(&self, entity: Entity, name: &str) -> Option<&Value> {
        match entity.column_index(name).and_then(|i| self.known[i].as_ref()) {
            Some(Field::Value(v)) => Some(v),
            _ => None,
        }
    }

    pub fn uuid(&self, entity: Entity, name: &str) -> Option<Uuid> {
        match self.value(entity, name) {
            Some(Value::Uuid(u)) => Some(*u),
            _ => None,
        }
    }

    pub fn text(&self, entity: Entity, name: &str) -> Option<&str> {
        match self.value(entity, name) {
            Some(Value::Text(s)) => Some(s),
            _ => None,
        }
    }

    /// True when every known column carries a value and no added column is a TOAST
    /// placeholder: only then does this image subsume older images of its key in a batch
    /// (an added column left out would otherwise lose the value an older image set).
    pub fn is_complete(&self) -> bool {
        self.unavailable.is_empty() && self.known.iter().all(|f| matches!(f, Some(Field::Value(_))))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Snapshot read.
    Read,
    Create,
    Update,
    Delete,
}

impl Op {
    pub const fn code(self) -> &'static str {
        match self {
            Self::Read => "r",
            Self::Create => "c",
            Self::Update => "u",
            Self::Delete => "d",
        }
    }
    pub const fn is_delete(self) -> bool {
        matches!(self, Self::Delete)
    }
}

/// Where an event came from in Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coords {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The record's Kafka timestamp (the producer's CreateTime, or the broker's
    /// LogAppendTime), when it has one: where the capture hop ends.
    pub timestamp: Option<DateTime<Utc>>,
}

/// The order of changes to one key: the transaction's commit position first, the change's
/// own LSN second, under an operator-set source epoch.
///
/// A change's own LSN alone does not order transactions: a transaction that wrote a row
/// before a snapshot point and committed after it is streamed with an LSN below the
/// snapshot's, yet it is newer. Transactions are streamed in commit order, and Debezium's
/// `source.sequence` carries `[last commit LSN, change LSN]`: the first element is the
/// commit position the stream had reached when the transaction began to be emitted, which
/// rises from one transaction to the next. Snapshot rows take the snapshot's LSN as their
/// commit position (every transaction streamed after the snapshot has a later one).
///
/// The first transaction of a connector session has no last commit yet (`[null, lsn]`):
/// its commit position is unknown. Against a snapshot row it is the newer (it was
/// streamed after the snapshot); against anything else its LSN stands in for the commit.
///
/// `epoch` re-bases versions: after a restore or a move to a new source cluster, LSNs start
/// again from lower values; raising `[source] epoch` makes every new change outrank every
/// version written under an earlier epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Version {
    pub epoch: i32,
    /// Snapshot rows: the snapshot LSN. Streamed changes: `source.sequence[0]`, or None
    /// when the connector sent none.
    pub commit: Option<i64>,
    pub lsn: i64,
    pub snapshot: bool,
}

impl Version {
    /// A streamed change at `lsn` with a known commit position (tests and benchmarks).
    pub const fn streamed(commit: Option<i64>, lsn: i64) -> Self {
        Self { epoch: 0, commit, lsn, snapshot: false }
    }

    /// Whether this version replaces `stored`. The same rule is written as SQL in the
    /// PostgreSQL target and as an aggregation expression in the MongoDB target.
    pub fn is_newer_than(&self, stored: &Version) -> bool {
        if self.epoch != stored.epoch {
            return self.epoch > stored.epoch;
        }
        let unknown_commit = |v: &Version| !v.snapshot && v.commit.is_none();
        if stored.snapshot && unknown_commit(self) {
            return true;
        }
        if self.snapshot && unknown_commit(stored) {
            return false;
        }
        (self.commit.unwrap_or(self.lsn), self.lsn) > (stored.commit.unwrap_or(stored.lsn), stored.lsn)
    }
}

/// One row change, decoded and typed.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub entity: Entity,
    pub key: Uuid,
    pub op: Op,
    /// What the change is ordered by against what the target holds.
    pub version: Version,
    /// Commit time in the source.
    pub source_ts: Option<DateTime<Utc>>,
    /// When Debezium produced the event (envelope `ts_ms`), for clock-drift detection.
    pub emitted_ts: Option<DateTime<Utc>>,
    /// The source transaction that made the change (Debezium `source.txId`, a 32-bit xid,
    /// or an epoch-qualified one): kept in the apply log so that a verifier can tell
    /// whether a source snapshot shows it. None when the event does not carry it.
    pub tx_id: Option<i64>,
    pub before: Option<Row>,
    /// For deletes: absent.
    pub after: Option<Row>,
    pub coords: Coords,
}

/// Keys are logged truncated: they can be long and are only there to find the event.
pub(crate) fn key_for_log(key: Option<&[u8]>) -> String {
    key.map(|k| {
        let s = String::from_utf8_lossy(k);
        if s.len() > 64 { format!("{}...", s.chars().take(64).collect::<String>()) } else { s.into_owned() }
    })
    .unwrap_or_default()
}
