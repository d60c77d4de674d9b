//! The sink's apply log (audit mode), read once after the load: latency over every change,
//! split per hop, and the per-second latency series. One sequential read of the rows
//! written since the load started (`id > $start`), streamed: memory is one `f64` per change
//! per hop.
//!
//! Clocks: the source commit time is PostgreSQL's (`track_commit_timestamp`, carried by
//! Debezium as `source.ts_ms`, millisecond precision); the Kafka record timestamp is the
//! producer's clock (Debezium's `CreateTime`); `applied_at` is the target's clock
//! (`clock_timestamp()` in the statement that made the change durable). On one machine they
//! are the same clock; across machines each hop includes the skew between its two ends.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use futures::{StreamExt, pin_mut};

use super::percentiles;
use crate::verify::Percentiles;

pub const TABLE: &str = "_cdc_apply_log";

/// One row of the log, as the verifier and the latency use it.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRow {
    pub id: i64,
    pub entity: String,
    pub key: Option<uuid::Uuid>,
    /// The change's LSN (the second part of the sink's version).
    pub version: Option<i64>,
    /// The rest of the sink's version: the commit position (`source.sequence[0]`, or the
    /// snapshot LSN of a snapshot row), the source epoch, whether a snapshot read.
    pub commit: Option<i64>,
    pub epoch: i32,
    pub snapshot: bool,
    pub op: Option<String>,
    pub outcome: String,
    pub partition: i32,
    pub offset: i64,
    pub kafka_ts: Option<DateTime<Utc>>,
    pub source_ts: Option<DateTime<Utc>>,
    pub applied_at: DateTime<Utc>,
    /// The rule of a dead-lettered event.
    pub rule: Option<String>,
    /// The source transaction of the change (Debezium `source.txId`); None when the event
    /// did not carry it or the sink predates the column.
    pub tx_id: Option<i64>,
}

/// Where the log stands now (the highest id; 0 when empty); `Ok(None)` when the target has
/// no apply log (the sink does not run in audit mode). A failed query is an error, never
/// "no log": a run must not lose its history check to a passing fault.
pub async fn position(target: &tokio_postgres::Client) -> Result<Option<i64>, tokio_postgres::Error> {
    let exists: bool = target.query_one("SELECT to_regclass($1) IS NOT NULL", &[&TABLE]).await?.get(0);
    if !exists {
        return Ok(None);
    }
    Ok(Some(target.query_one(&format!("SELECT coalesce(max(id), 0) FROM {TABLE}"), &[]).await?.get(0)))
}

/// Every row after `after`, in id order (the order the sink wrote them).
pub async fn read(target: &tokio_postgres::Client, after: i64) -> Result<Vec<LogRow>, tokio_postgres::Error> {
    // A log written by a sink that predates `tx_id` is read all the same, without it.
    let tx_id = if has_column(target, "tx_id").await? { "tx_id" } else { "NULL::bigint" };
    let sql = format!(
        "SELECT id, entity, key, version, op::text, outcome, kafka_partition, kafka_offset, kafka_ts, source_ts, applied_at, rule, \
         version_commit, coalesce(epoch, 0), coalesce(snapshot, false), {tx_id} \
         FROM {TABLE} WHERE id > $1 ORDER BY id"
    );
    let stream = target.query_raw(sql.as_str(), [&after as &(dyn tokio_postgres::types::ToSql + Sync)]).await?;
    pin_mut!(stream);
    let mut rows = Vec::new();
    while let Some(row) = stream.next().await {
        let row = row?;
        rows.push(LogRow {
            id: row.get(0),
            entity: row.get(1),
            key: row.get(2),
            version: row.get(3),
            op: row.get(4),
            outcome: row.get(5),
            partition: row.get(6),
            offset: row.get(7),
            kafka_ts: row.get(8),
            source_ts: row.get(9),
            applied_at: row.get(10),
            rule: row.get(11),
            commit: row.get(12),
            epoch: row.get(13),
            snapshot: row.get(14),
            tx_id: row.get(15),
        });
    }
    Ok(rows)
}

/// The source transaction (`tx_id`) of the rows of `entity` at `positions` (Kafka
/// partition, offset) logged after row `after`, where known: the rows a verifier's read of
/// the log did not have yet (the id bound keeps it to the primary key's tail).
pub async fn tx_ids(
    target: &tokio_postgres::Client,
    entity: &str,
    after: i64,
    positions: &[(i32, i64)],
) -> Result<HashMap<(i32, i64), i64>, tokio_postgres::Error> {
    if positions.is_empty() || !has_column(target, "tx_id").await? {
        return Ok(HashMap::new());
    }
    let (partitions, offsets): (Vec<i32>, Vec<i64>) = positions.iter().copied().unzip();
    let sql = format!(
        "SELECT kafka_partition, kafka_offset, tx_id FROM {TABLE} WHERE id > $1 AND entity = $2 AND tx_id IS NOT NULL \
         AND (kafka_partition, kafka_offset) IN (SELECT * FROM unnest($3::int4[], $4::int8[]))"
    );
    let rows = target.query(sql.as_str(), &[&after, &entity, &partitions, &offsets]).await?;
    Ok(rows.iter().map(|r| ((r.get(0), r.get(1)), r.get(2))).collect())
}

async fn has_column(target: &tokio_postgres::Client, column: &str) -> Result<bool, tokio_postgres::Error> {
    let sql = "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($1) AND attname = $2 AND NOT attisdropped)";
    Ok(target.query_one(sql, &[&TABLE, &column]).await?.get(0))
}

impl LogRow {
    /// Whether this row's version is newer than `other`'s: the sink's own rule
    /// (`sink::model::Version::is_newer_than`): epoch, then commit position with the LSN
    /// second; a streamed change whose commit position is unknown (the first transaction of
    /// a connector session) is newer than a snapshot row and never older than it.
    pub fn is_newer_than(&self, other: &LogRow) -> bool {
        let (Some(lsn), Some(other_lsn)) = (self.version, other.version) else { return false };
        if self.epoch != other.epoch {
            return self.epoch > other.epoch;
        }
        let unknown_commit = |r: &LogRow| !r.snapshot && r.commit.is_none();
        if other.snapshot && unknown_commit(self) {
            return true;
        }
        if self.snapshot && unknown_commit(other) {
            return false;
        }
        (self.commit.unwrap_or(lsn), lsn) > (other.commit.unwrap_or(other_lsn), other_lsn)
    }

    /// The version as the sink stores it, for identity and evidence.
    pub fn version_key(&self) -> Option<(i32, Option<i64>, i64, bool)> {
        self.version.map(|lsn| (self.epoch, self.commit, lsn, self.snapshot))
    }
}

/// Latency of the changes applied in one second.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SecondLatency {
    /// e2e p50, p95, p99.
    pub e2e: Vec<f64>,
    pub capture_p95: Option<f64>,
    pub apply_p95: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct HopLatency {
    pub e2e: Percentiles,
    pub capture: Percentiles,
    pub apply: Percentiles,
    pub e2e_per_entity: BTreeMap<String, Percentiles>,
    /// Second since `origin` -> latency of the changes applied in it.
    pub per_second: HashMap<i64, SecondLatency>,
    /// Changes whose capture hop ended at the broker's acknowledgement (the rest: at the
    /// record's CreateTime).
    pub broker_acked: u64,
}

/// A change whose effect became durable: applied, or superseded in its batch by a newer
/// change of the key that was (both durable at that moment). Snapshot reads are not
/// changes of the run.
fn is_delivered_change(row: &LogRow) -> bool {
    matches!(row.outcome.as_str(), "applied" | "superseded") && row.op.as_deref() != Some("r")
}

fn ms(later: DateTime<Utc>, earlier: DateTime<Utc>) -> f64 {
    (later - earlier).num_microseconds().map(|us| us as f64 / 1000.0).unwrap_or(f64::MAX)
}

/// When the broker acknowledged each record (acks=all), by (entity, partition, offset): the
/// Debezium launcher's acknowledgement log, read at the end of a run.
pub type BrokerAcks = HashMap<(String, i32, i64), DateTime<Utc>>;

/// Reads the launcher's acknowledgement log (`topic partition offset epoch_ms` per line);
/// topics outside `<prefix>.public.` and lines it cannot parse are skipped. A record
/// acknowledged twice (a batch re-sent) keeps its first acknowledgement.
pub fn read_acks(text: &str, prefix: &str) -> BrokerAcks {
    let tables = format!("{prefix}.public.");
    let mut acks = BrokerAcks::new();
    for line in text.lines() {
        let mut f = line.split(' ');
        let (Some(topic), Some(partition), Some(offset), Some(at)) = (f.next(), f.next(), f.next(), f.next()) else { continue };
        let (Some(entity), Ok(partition), Ok(offset), Ok(at)) = (topic.strip_prefix(&tables), partition.parse(), offset.parse(), at.parse::<i64>()) else {
            continue;
        };
        if let Some(at) = DateTime::from_timestamp_millis(at) {
            acks.entry((entity.to_string(), partition, offset)).or_insert(at);
        }
    }
    acks
}

/// Latency over every delivered change, per hop; `origin` is the load start (the series'
/// time zero). The capture hop ends when the broker acknowledged the record (`acks`), else
/// at its CreateTime. A replayed change (the same version delivered twice) counts once: at
/// its first delivery.
pub fn hop_latency(rows: &[LogRow], origin: DateTime<Utc>, acks: &BrokerAcks) -> HopLatency {
    let mut seen = std::collections::HashSet::new();
    let (mut e2e, mut capture, mut apply) = (Vec::new(), Vec::new(), Vec::new());
    let mut per_entity: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    // Per second: e2e, capture and apply samples.
    type Hops = (Vec<f64>, Vec<f64>, Vec<f64>);
    let mut seconds: HashMap<i64, Hops> = HashMap::new();
    let mut broker_acked = 0u64;
    for row in rows.iter().filter(|r| is_delivered_change(r)) {
        if !seen.insert((row.entity.as_str(), row.key, row.version)) {
            continue;
        }
        let second = (row.applied_at - origin).num_milliseconds().div_euclid(1000);
        let bucket = seconds.entry(second).or_default();
        let acked = acks.get(&(row.entity.clone(), row.partition, row.offset)).copied();
        if acked.is_some() {
            broker_acked += 1;
        }
        let at_broker = acked.or(row.kafka_ts);
        if let Some(source) = row.source_ts {
            let v = ms(row.applied_at, source);
            e2e.push(v);
            bucket.0.push(v);
            per_entity.entry(row.entity.clone()).or_default().push(v);
            if let Some(kafka) = at_broker {
                let c = ms(kafka, source);
                capture.push(c);
                bucket.1.push(c);
            }
        }
        if let Some(kafka) = at_broker {
            let a = ms(row.applied_at, kafka);
            apply.push(a);
            bucket.2.push(a);
        }
    }
    let per_second = seconds
        .into_iter()
        .map(|(s, (e, c, a))| {
            let e = percentiles(e);
            let c = percentiles(c);
            let a = percentiles(a);
            let latency = SecondLatency {
                e2e: if e.measured() { vec![e.p50, e.p95, e.p99] } else { Vec::new() },
                capture_p95: c.measured().then_some(c.p95),
                apply_p95: a.measured().then_some(a.p95),
            };
            (s, latency)
        })
        .collect();
    HopLatency {
        e2e: percentiles(e2e),
        capture: percentiles(capture),
        apply: percentiles(apply),
        e2e_per_entity: per_entity.into_iter().map(|(k, v)| (k, percentiles(v))).collect(),
        per_second,
        broker_acked,
    }
}

/// The clocks and method behind `hop_latency`, for the report.
pub fn clocks(hops: &HopLatency) -> BTreeMap<String, String> {
    let broker = if hops.broker_acked == 0 {
        "Kafka record timestamp set by the producer (Debezium, CreateTime), ms: no acknowledgement log".to_string()
    } else if hops.broker_acked == hops.e2e.count {
        "the broker's acknowledgement of the record (acks=all), Debezium launcher's clock, ms".to_string()
    } else {
        format!(
            "the broker's acknowledgement of the record (acks=all), Debezium launcher's clock, ms, for {} of {} changes; CreateTime for the rest",
            hops.broker_acked, hops.e2e.count
        )
    };
    BTreeMap::from([
        ("source_commit".to_string(), "source PostgreSQL commit timestamp (track_commit_timestamp), ms".to_string()),
        ("kafka_record".to_string(), broker),
        ("applied".to_string(), "target clock_timestamp() in the statement that made the change durable".to_string()),
        ("percentiles".to_string(), "exact nearest rank over every change of the load window (replays counted once)".to_string()),
    ])
}

#[cfg(test)]
impl LogRow {
    /// A row for tests: customer 1, read at partition 0, offset `id`; no version, times at
    /// the epoch. Tests set what they are about with struct update syntax.
    pub(crate) fn sample(id: i64, outcome: &str) -> Self {
        LogRow {
            id,
            entity: "customer".into(),
            key: Some(uuid::Uuid::from_u128(1)),
            version: None,
            commit: None,
            epoch: 0,
            snapshot: false,
            op: None,
            outcome: outcome.into(),
            partition: 0,
            offset: id,
            kafka_ts: None,
            source_ts: None,
            applied_at: DateTime::from_timestamp_millis(0).expect("the epoch"),
            rule: None,
            tx_id: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, version: i64, outcome: &str, source_ms: i64, kafka_ms: i64, applied_ms: i64) -> LogRow {
        let t = |ms: i64| DateTime::from_timestamp_millis(1_700_000_000_000 + ms).unwrap();
        LogRow {
            id,
            entity: "customer".into(),
            key: Some(uuid::Uuid::from_u128(7)),
            version: Some(version),
            commit: None,
            epoch: 0,
            snapshot: false,
            op: Some("u".into()),
            outcome: outcome.into(),
            partition: 0,
            offset: id,
            kafka_ts: Some(t(kafka_ms)),
            source_ts: Some(t(source_ms)),
            applied_at: t(applied_ms),
            rule: None,
            tx_id: None,
        }
    }

    #[test]
    fn every_delivered_change_counts_per_hop_and_replays_once() {
        let rows = vec![
            row(1, 10, "applied", 0, 20, 100),
            row(2, 11, "superseded", 50, 60, 200),
            row(3, 12, "applied", 50, 70, 200),
            // A replay of version 10 after a restart: stale, not a new change.
            row(4, 10, "stale", 0, 20, 5_000),
            // The same version delivered again as applied (a broken guard): counted once.
            row(5, 12, "applied", 50, 70, 9_000),
            row(6, 13, "dlq", 0, 0, 300),
        ];
        let origin = DateTime::from_timestamp_millis(1_700_000_000_000).unwrap();
        let l = hop_latency(&rows, origin, &BrokerAcks::new());
        assert_eq!(l.e2e.count, 3);
        assert_eq!(l.e2e.max, 150.0);
        assert_eq!(l.capture.max, 20.0);
        assert_eq!(l.apply.max, 140.0);
        assert_eq!(l.per_second.len(), 1, "all three applied within the first second");
        assert_eq!(l.per_second[&0].e2e.len(), 3);
        assert!(clocks(&l)["kafka_record"].contains("CreateTime"));
    }

    #[test]
    fn the_capture_hop_ends_when_the_broker_acknowledged_the_record() {
        // The producer stamped the record at 20 ms; the broker was down and acknowledged it
        // at 5 s: the wait is capture's, not apply's.
        let rows = vec![row(1, 10, "applied", 0, 20, 5_100)];
        let origin = DateTime::from_timestamp_millis(1_700_000_000_000).unwrap();
        let acks = read_acks(&format!("cdc.public.customer 0 1 {}\ngarbage\ncdc.public.customer 0 1 1\n", 1_700_000_005_000i64), "cdc");
        assert_eq!(acks.len(), 1, "{acks:?}");
        let l = hop_latency(&rows, origin, &acks);
        assert_eq!((l.capture.max, l.apply.max, l.broker_acked), (5_000.0, 100.0, 1));
        assert!(clocks(&l)["kafka_record"].starts_with("the broker's acknowledgement"));
        let unacked = hop_latency(&rows, origin, &BrokerAcks::new());
        assert_eq!((unacked.capture.max, unacked.apply.max), (20.0, 5_080.0));
    }

    #[test]
    fn nothing_delivered_is_absent() {
        let origin = DateTime::from_timestamp_millis(0).unwrap();
        let l = hop_latency(&[], origin, &BrokerAcks::new());
        assert!(!l.e2e.measured() && !l.capture.measured() && !l.apply.measured());
        assert!(l.per_second.is_empty());
    }
}
