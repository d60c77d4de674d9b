//! The convergence verifier: does the target hold exactly the source's state, and if not,
//! which keys are wrong and how. Independent of the sink's code: it reads the source with
//! SQL and the target with its own driver, through the mapping in `harness/mapping.toml`.
//!
//! A full pass streams both sides ordered by key (`COPY ... TO STDOUT`) and merges them,
//! so memory stays bounded whatever the table size; raw field bytes are compared first and
//! canonical forms only when they differ. Differing keys (up to `MAX_TRACKED_KEYS` per
//! entity) are then looked up with their evidence and classified (see `AnomalyKind`).
//! In online mode a difference is not a verdict: the differing keys are re-checked until
//! they agree or the deadline passes, and a last full pass confirms agreement.
//!
//! PostgreSQL and MongoDB targets share all of it (the loop, the merge, the canonical
//! comparison, the classification); they differ only in how they are read (`Target`).
//! MongoDB holds timestamps in milliseconds, so they are compared at that precision there.

pub mod canonical;
mod classify;
pub mod columns;
pub(crate) mod copy_stream;
pub mod dlq;
pub(crate) mod history;
pub mod live;
pub mod mapping;
pub(crate) mod mongo;
pub(crate) mod postgres;
pub(crate) mod report;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;

use self::canonical::{CanonicalError, ColumnType, TimestampPrecision, canonical_text};
use self::copy_stream::{CopyLines, fields, unescape};
use self::history::History;
use self::mapping::{Entity, Mapping};
pub use self::report::{Anomaly, AnomalyKind, EntityOutcome, FieldDiff, LatencySummary, Percentiles, VerifyReport};
use crate::orchestrator::PgEndpoint;

/// Differing keys tracked one by one per entity; beyond it they are only counted.
pub const MAX_TRACKED_KEYS: usize = 100_000;
const KEY_BATCH: usize = 5_000;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("reading the source: {0}")]
    Source(String),
    #[error("reading the target: {0}")]
    Target(String),
    /// Kept as the cause, so the server's message, SQLSTATE, detail and hint reach whoever
    /// prints the chain (the error's own `Display` is only "db error").
    #[error("reading the {side}: {}", crate::orchestrator::pg_error_text(.error))]
    Postgres { side: &'static str, #[source] error: tokio_postgres::Error },
    #[error(transparent)]
    Dlq(#[from] dlq::DlqError),
}

impl VerifyError {
    fn source(e: impl std::fmt::Display) -> Self {
        Self::Source(e.to_string())
    }
    fn target(e: impl std::fmt::Display) -> Self {
        Self::Target(e.to_string())
    }
    fn source_pg(error: tokio_postgres::Error) -> Self {
        Self::Postgres { side: "source", error }
    }
    fn target_pg(error: tokio_postgres::Error) -> Self {
        Self::Postgres { side: "target", error }
    }
}

#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Anomaly examples kept per kind.
    pub max_examples: usize,
    /// Online mode: re-check differing keys until they agree or this deadline passes.
    pub settle: Option<Duration>,
    /// When load ended (time-to-converge is measured from here; default: verify start).
    pub load_ended: Option<Instant>,
    /// Latency only over changes committed at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// The tables to verify and how they map; `None`: the workload's (`harness/mapping.toml`).
    pub mapping: Option<Mapping>,
    /// Business rules whose dead letters excuse the key they rejected (a scenario's
    /// `[verify] expected_rejections`); every other letter is a failure.
    pub expected_rejections: Vec<String>,
    /// The dead-letter topic to read back and reconcile; `None`: not read (the DLQ
    /// figures are then absent, and a gate on them fails).
    pub dlq: Option<dlq::DlqSource>,
    /// Live verification: the source is read in a snapshot taken at this watermark, and a
    /// key whose target version is newer than it is set aside, not compared.
    pub watermark: Option<live::SnapshotWatermark>,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self { max_examples: 5, settle: None, load_ended: None, since: None, mapping: None, expected_rejections: Vec::new(), dlq: None, watermark: None }
    }
}

pub struct SourceRecord {
    /// Text of each mapped column, key first.
    pub values: Vec<Option<String>>,
    pub committed_at: Option<DateTime<Utc>>,
    /// The transaction that last wrote the row (`xmin`).
    pub xid: Option<String>,
    pub row: Value,
}

pub struct TargetRecord {
    pub values: Vec<Option<String>>,
    pub deleted: bool,
    pub source_ts: Option<DateTime<Utc>>,
    pub applied_at: Option<DateTime<Utc>>,
    /// Where the change it holds was read (Kafka partition, offset): its apply-log row.
    pub position: Option<(i32, i64)>,
    /// The LSN of the version it holds.
    pub lsn: Option<i64>,
    pub record: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DiffKind {
    Missing,
    Extra,
    Mismatch,
    Duplicate,
}

struct PassResult {
    outcome: EntityOutcome,
    diffs: Vec<String>,
    untracked: u64,
}

/// Verifies a PostgreSQL target against the PostgreSQL source.
pub async fn verify_postgres(pg: &PgEndpoint, options: &VerifyOptions) -> Result<VerifyReport, VerifyError> {
    let started = Instant::now();
    let source = pg.connect_source().await.map_err(VerifyError::source)?;
    let target = pg.connect_target().await.map_err(VerifyError::target)?;
    verify(&source, &Target::Postgres(&target), options, started).await
}

/// Verifies a MongoDB target (database `database` at `mongo_uri`) against the PostgreSQL
/// source. Timestamps are compared at millisecond precision (BSON dates).
pub async fn verify_mongo(pg: &PgEndpoint, mongo_uri: &str, database: &str, options: &VerifyOptions) -> Result<VerifyReport, VerifyError> {
    let started = Instant::now();
    let source = pg.connect_source().await.map_err(VerifyError::source)?;
    let client = mongodb::Client::with_uri_str(mongo_uri).await.map_err(VerifyError::target)?;
    let target = client.database(database);
    verify(&source, &Target::Mongo(&target), options, started).await
}

/// The target being verified: how it is read, and how finely it keeps timestamps.
enum Target<'a> {
    Postgres(&'a tokio_postgres::Client),
    Mongo(&'a mongodb::Database),
}

impl Target<'_> {
    fn name(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "postgres",
            Self::Mongo(_) => "mongo",
        }
    }

    fn precision(&self) -> TimestampPrecision {
        match self {
            Self::Postgres(_) => TimestampPrecision::Micros,
            Self::Mongo(_) => mongo::PRECISION,
        }
    }

    /// The target's column names where it has a catalog; `None` for MongoDB, where a
    /// field that is not there reads as null.
    async fn column_names(&self, entity: &Entity) -> Result<Option<Vec<String>>, VerifyError> {
        match self {
            Self::Postgres(target) => postgres::target_columns(target, entity).await.map(Some),
            Self::Mongo(_) => Ok(None),
        }
    }

    async fn full_compare(&self, source: &tokio_postgres::Client, entity: &Entity) -> Result<PassResult, VerifyError> {
        match self {
            Self::Postgres(target) => full_compare(source, target, entity).await,
            Self::Mongo(target) => mongo::full_compare(source, target, entity).await,
        }
    }

    /// Every record (duplicates and tombstones included) the target holds for `keys`.
    async fn fetch(&self, entity: &Entity, keys: &[String]) -> Result<KeyedRecords, VerifyError> {
        match self {
            Self::Postgres(target) => postgres::fetch_target(target, entity, keys).await,
            Self::Mongo(target) => mongo::fetch_target(target, entity, keys).await,
        }
    }

    /// The sink's apply log, when it keeps one (audit mode).
    async fn history(&self) -> Result<Option<history::History>, VerifyError> {
        let rows = match self {
            Self::Postgres(target) => match crate::run::apply_log::position(target).await.map_err(|e| VerifyError::Target(format!("apply log: {e}")))? {
                Some(_) => Some(crate::run::apply_log::read(target, 0).await.map_err(VerifyError::target)?),
                None => None,
            },
            Self::Mongo(target) => mongo::apply_log(target).await?,
        };
        Ok(rows.map(history::History::new))
    }

    /// The source transaction of the apply log rows at `positions` of `entity` logged after
    /// row `after` (PostgreSQL; MongoDB's log has no such id: all its rows), where known.
    async fn logged_tx_ids(&self, entity: &str, after: i64, positions: &[(i32, i64)]) -> Result<HashMap<(i32, i64), i64>, VerifyError> {
        match self {
            Self::Postgres(target) => crate::run::apply_log::tx_ids(target, entity, after, positions).await.map_err(VerifyError::target_pg),
            Self::Mongo(target) => mongo::apply_log_tx_ids(target, entity, positions).await,
        }
    }

    async fn latency(&self, mapping: &Mapping, since: Option<DateTime<Utc>>) -> Result<LatencySummary, VerifyError> {
        match self {
            Self::Postgres(target) => latency_summary(target, mapping, since).await,
            Self::Mongo(target) => mongo::latency(target, mapping, since).await,
        }
    }
}

/// The verification loop, whatever the target: full passes, online re-checks of the
/// differing keys, then classification of what still differs.
async fn verify(source: &tokio_postgres::Client, target: &Target<'_>, options: &VerifyOptions, started: Instant) -> Result<VerifyReport, VerifyError> {
    let load_ended = options.load_ended.unwrap_or(started);
    let mut report = VerifyReport { target: target.name().into(), ..Default::default() };
    // The source as it is now decides what is compared, not the mapping as written.
    let mut mapping = options.mapping.clone().unwrap_or_else(Mapping::builtin);
    for entity in &mut mapping.entity {
        let source_columns = postgres::source_columns(source, entity).await?;
        let target_columns = target.column_names(entity).await?;
        let (resolved, findings) = columns::resolve(entity, &source_columns, target_columns.as_deref()).map_err(VerifyError::Source)?;
        *entity = resolved;
        report.columns.extend(findings);
    }
    let deadline = options.settle.map(|s| Instant::now() + s);

    let mut pending: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut untracked = 0u64;
    let mut outcomes = BTreeMap::new();
    let mut full_pass = true;
    let mut pass_started = Instant::now();
    loop {
        if full_pass {
            untracked = 0;
            pass_started = Instant::now();
            for entity in &mapping.entity {
                let pass = target.full_compare(source, entity).await?;
                report.rows_compared += pass.outcome.source_count + pass.outcome.target_count;
                untracked += pass.untracked;
                pending.insert(entity.name.clone(), pass.diffs);
                outcomes.insert(entity.name.clone(), pass.outcome);
            }
            report.full_pass_ms.push(pass_started.elapsed().as_millis() as u64);
        }
        let differing: usize = pending.values().map(Vec::len).sum();
        if differing == 0 && untracked == 0 {
            if full_pass {
                report.converged = true;
                if options.settle.is_some() {
                    // To the start of the clean pass: the state agreed from then on; the
                    // pass's own duration is the verifier's, reported apart.
                    report.time_to_converge_ms = Some(pass_started.saturating_duration_since(load_ended).as_millis() as u64);
                }
                break;
            }
            full_pass = true; // the re-checked keys agree: confirm with a full pass
            continue;
        }
        if deadline.is_none_or(|d| Instant::now() >= d) {
            if !full_pass {
                // The verdict always rests on a full pass, not on the last re-check.
                full_pass = true;
                continue;
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if untracked > 0 {
            full_pass = true;
            continue;
        }
        full_pass = false;
        for entity in &mapping.entity {
            let keys = pending.remove(&entity.name).unwrap_or_default();
            let still = recheck(source, target, entity, &keys).await?;
            pending.insert(entity.name.clone(), still);
        }
    }

    // What still differs is judged from the order of versions in the sink's apply log and
    // from the dead letters read back from their topic (see `classify`).
    let history = target.history().await?;
    report.history_checked = history.is_some();
    let letters = match &options.dlq {
        Some(source) => {
            let reader = source.clone();
            let letters = tokio::task::spawn_blocking(move || dlq::read_letters(&reader.config, &reader.topic, reader.since, Duration::from_secs(60)))
                .await
                .map_err(|e| VerifyError::Target(format!("dead-letter reader: {e}")))??;
            let (found, index) = dlq::reconcile(source, letters, history.as_ref().map(History::rows), &options.expected_rejections, options.max_examples);
            report.dlq = Some(found);
            Some(index)
        }
        None => None,
    };
    let rejections = classify::Rejections { expected_rules: &options.expected_rejections, letters: letters.as_ref() };
    let mut examples: BTreeMap<AnomalyKind, Vec<Anomaly>> = BTreeMap::new();
    let mut unexplained = 0u64;
    let mut excused = 0u64;
    let mut newer = 0u64;
    let tx_index = options.watermark.as_ref().map(|_| live::TxIndex::new(history.as_ref()));
    for entity in &mapping.entity {
        let keys = pending.get(&entity.name).cloned().unwrap_or_default();
        for chunk in keys.chunks(KEY_BATCH) {
            let known = source_keys(entity, chunk);
            let src = postgres::fetch_source(source, entity, &known).await?;
            let tgt = target.fetch(entity, chunk).await?;
            let deleted = postgres::fetch_deletions(source, entity, &known).await;
            let decisions = match (&options.watermark, &tx_index) {
                (Some(w), Some(index)) => live::decide(source, target, w, index, &entity.name, &tgt).await?,
                _ => HashMap::new(),
            };
            for key in chunk {
                let records = tgt.get(key).map(Vec::as_slice).unwrap_or_default();
                let (set_aside, by_clock) = match decisions.get(key) {
                    Some(live::Decision::Newer) => (true, false),
                    Some(live::Decision::ByClock { newer }) => (*newer, true),
                    Some(live::Decision::Compare) | None => (false, false),
                };
                if set_aside {
                    newer += 1;
                    if let Some(outcome) = outcomes.get_mut(&entity.name) {
                        outcome.set_aside_newer(src.contains_key(key), records.iter().any(|r| !r.deleted), by_clock);
                    }
                    continue;
                }
                if by_clock && let Some(outcome) = outcomes.get_mut(&entity.name) {
                    outcome.compared_by_clock += 1;
                }
                let case = classify::KeyCase {
                    entity,
                    key,
                    source: src.get(key),
                    records,
                    deleted_at: deleted.get(key).copied().flatten(),
                    precision: target.precision(),
                };
                match classify::classify(&case, history.as_ref(), &rejections) {
                    classify::Judged::Agrees => {}
                    classify::Judged::Excused { rule } => {
                        // Counted as excused, by rule, and no longer as missing or mismatched.
                        excused += 1;
                        *report.dlq_rejected.entry(rule).or_default() += 1;
                        if let Some(outcome) = outcomes.get_mut(&entity.name) {
                            outcome.excuse(case.source.is_some(), records.iter().any(|r| !r.deleted));
                        }
                    }
                    classify::Judged::Anomaly(anomaly) => {
                        unexplained += 1;
                        *report.anomaly_counts.entry(anomaly.kind).or_default() += 1;
                        let list = examples.entry(anomaly.kind).or_default();
                        if list.len() < options.max_examples {
                            list.push(*anomaly);
                        }
                    }
                }
            }
        }
        if options.settle.is_some() && !report.converged {
            report.never_converged.extend(keys.iter().take(options.max_examples).map(|k| format!("{}:{k}", entity.name)));
        }
    }
    // Differences that are all excused rejections (or, live, versions newer than the
    // snapshot) leave the target converged with the source's accepted changes.
    if !report.converged && unexplained == 0 && untracked == 0 && (excused > 0 || newer > 0) {
        report.converged = outcomes.values().all(|o| o.missing_in_target + o.extra_in_target + o.mismatched + o.duplicates == 0);
    }
    report.anomalies = examples.into_values().flatten().collect();
    if let Some(h) = &history {
        let findings = history::analyze(h.rows(), options.max_examples);
        for (kind, n) in &findings.counts {
            *report.anomaly_counts.entry(*kind).or_default() += n;
        }
        if !findings.counts.is_empty() {
            report.converged = false;
        }
        report.anomalies.extend(findings.examples);
    }
    // A letter of no expected rule (a decode failure, a permanent target error, a panic) is
    // a change the target does not hold: never convergence.
    if report.dlq.as_ref().is_some_and(|d| d.unexpected > 0 || d.unreconciled > 0) {
        report.converged = false;
    }
    report.untracked_differences = untracked;
    report.entities = mapping.entity.iter().filter_map(|e| outcomes.remove(&e.name)).collect();
    report.latency = target.latency(&mapping, options.since).await?;
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

async fn latency_summary(target: &tokio_postgres::Client, mapping: &Mapping, since: Option<DateTime<Utc>>) -> Result<LatencySummary, VerifyError> {
    let to_pcts = |v: Vec<f64>| Percentiles { count: v[0] as u64, p50: v[1], p90: v[2], p95: v[3], p99: v[4], max: v[5] };
    let all: Vec<&Entity> = mapping.entity.iter().collect();
    let mut summary = LatencySummary { overall: to_pcts(postgres::latency(target, &all, since).await?), per_entity: BTreeMap::new() };
    for entity in &mapping.entity {
        summary.per_entity.insert(entity.name.clone(), to_pcts(postgres::latency(target, &[entity], since).await?));
    }
    Ok(summary)
}

/// A target scanned in key order, each row with whether it is a tombstone (absent).
trait OrderedScan {
    type Row;
    async fn next_row(&mut self) -> Result<Option<(Self::Row, bool)>, VerifyError>;
    /// The row's key, spelled and ordered as the source's COPY text spells and orders it.
    fn key(row: &Self::Row) -> &[u8];
}

/// A PostgreSQL target table: COPY text rows.
struct PgScan(CopyLines);

impl OrderedScan for PgScan {
    type Row = bytes::Bytes;

    async fn next_row(&mut self) -> Result<Option<(bytes::Bytes, bool)>, VerifyError> {
        next_target(&mut self.0).await
    }

    fn key(row: &bytes::Bytes) -> &[u8] {
        first_field(row)
    }
}

/// One ordered merge of source and target for `entity`.
async fn full_compare(source: &tokio_postgres::Client, target: &tokio_postgres::Client, entity: &Entity) -> Result<PassResult, VerifyError> {
    let src = postgres::scan_source(source, entity).await?;
    let mut tgt = PgScan(postgres::scan_target(target, entity).await?);
    let ncols = entity.columns.len();
    merge(entity, src, &mut tgt, |s, t| rows_equal(entity, s, t, ncols)).await
}

/// Walks the source (COPY text ordered by key) and a target scan in the same order:
/// counts each key's outcome and collects the differing keys. `equal` compares a source
/// line with a live target row of the same key.
async fn merge<S: OrderedScan>(entity: &Entity, mut src: CopyLines, tgt: &mut S, equal: impl Fn(&[u8], &S::Row) -> bool) -> Result<PassResult, VerifyError> {
    let mut outcome = EntityOutcome { entity: entity.name.clone(), ..Default::default() };
    let mut diffs = Vec::new();
    let mut untracked = 0u64;
    let mut record = |key: &[u8], kind: DiffKind, outcome: &mut EntityOutcome| {
        match kind {
            DiffKind::Missing => outcome.missing_in_target += 1,
            DiffKind::Extra => outcome.extra_in_target += 1,
            DiffKind::Mismatch => outcome.mismatched += 1,
            DiffKind::Duplicate => outcome.duplicates += 1,
        }
        let key = String::from_utf8_lossy(key).into_owned();
        if diffs.last() == Some(&key) {
            return;
        }
        if diffs.len() < MAX_TRACKED_KEYS {
            diffs.push(key);
        } else {
            untracked += 1;
        }
    };

    let mut s_line = src.next_line().await.map_err(VerifyError::source_pg)?;
    let mut t_row = tgt.next_row().await?;
    // The previous target row's key, in one buffer reused row after row.
    let mut last_target_key: Option<Vec<u8>> = None;
    loop {
        // Consecutive target rows with one key: the key is materialized twice.
        if let Some((t, _)) = &t_row {
            let key = S::key(t);
            if last_target_key.as_deref() == Some(key) {
                record(key, DiffKind::Duplicate, &mut outcome);
                t_row = tgt.next_row().await?;
                continue;
            }
        }
        match (&s_line, &t_row) {
            (None, None) => break,
            (Some(s), None) => {
                outcome.source_count += 1;
                record(first_field(s), DiffKind::Missing, &mut outcome);
                s_line = src.next_line().await.map_err(VerifyError::source_pg)?;
            }
            (None, Some((t, deleted))) => {
                remember(&mut last_target_key, S::key(t));
                if !deleted {
                    outcome.target_count += 1;
                    record(S::key(t), DiffKind::Extra, &mut outcome);
                }
                t_row = tgt.next_row().await?;
            }
            (Some(s), Some((t, deleted))) => {
                let (sk, tk) = (first_field(s), S::key(t));
                match sk.cmp(tk) {
                    std::cmp::Ordering::Less => {
                        outcome.source_count += 1;
                        record(sk, DiffKind::Missing, &mut outcome);
                        s_line = src.next_line().await.map_err(VerifyError::source_pg)?;
                    }
                    std::cmp::Ordering::Greater => {
                        remember(&mut last_target_key, tk);
                        if !deleted {
                            outcome.target_count += 1;
                            record(tk, DiffKind::Extra, &mut outcome);
                        }
                        t_row = tgt.next_row().await?;
                    }
                    std::cmp::Ordering::Equal => {
                        outcome.source_count += 1;
                        remember(&mut last_target_key, tk);
                        if *deleted {
                            record(sk, DiffKind::Missing, &mut outcome);
                        } else {
                            outcome.target_count += 1;
                            if equal(s, t) {
                                outcome.matching += 1;
                            } else {
                                record(sk, DiffKind::Mismatch, &mut outcome);
                            }
                        }
                        s_line = src.next_line().await.map_err(VerifyError::source_pg)?;
                        t_row = tgt.next_row().await?;
                    }
                }
            }
        }
    }
    Ok(PassResult { outcome, diffs, untracked })
}

fn remember(last: &mut Option<Vec<u8>>, key: &[u8]) {
    let buffer = last.get_or_insert_with(Vec::new);
    buffer.clear();
    buffer.extend_from_slice(key);
}

/// The next target row and whether it is a tombstone (`_cdc_deleted`, the last field).
async fn next_target(lines: &mut CopyLines) -> Result<Option<(bytes::Bytes, bool)>, VerifyError> {
    Ok(lines.next_line().await.map_err(VerifyError::target_pg)?.map(|line| {
        let cut = line.iter().rposition(|&b| b == b'\t').unwrap_or(line.len());
        let deleted = line.get(cut + 1..) == Some(b"t");
        (line.slice(..cut), deleted)
    }))
}

fn first_field(line: &[u8]) -> &[u8] {
    fields(line).next().unwrap_or_default()
}

fn rows_equal(entity: &Entity, source: &[u8], target: &[u8], ncols: usize) -> bool {
    if source == target {
        return true;
    }
    let s: Vec<&[u8]> = fields(source).collect();
    let t: Vec<&[u8]> = fields(target).collect();
    if s.len() != ncols || t.len() != ncols {
        return false;
    }
    (0..ncols).all(|i| s[i] == t[i] || values_equal(entity.columns[i].ty, unescape(s[i]).as_deref(), unescape(t[i]).as_deref(), TimestampPrecision::Micros))
}

/// Whether two values (null or missing: `None`) are the same once canonical.
fn values_equal(ty: ColumnType, a: Option<&str>, b: Option<&str>, precision: TimestampPrecision) -> bool {
    same_canonical(canonical_text(ty, a, precision), canonical_text(ty, b, precision))
}

/// Two canonical forms agree; a value that cannot be read as its type agrees with nothing.
fn same_canonical(a: Result<Option<String>, CanonicalError>, b: Result<Option<String>, CanonicalError>) -> bool {
    matches!((a, b), (Ok(a), Ok(b)) if a == b)
}

pub(crate) fn field_diffs(
    entity: &Entity,
    source: Option<&[Option<String>]>,
    target: Option<&[Option<String>]>,
    precision: TimestampPrecision,
) -> Vec<FieldDiff> {
    let mut out = Vec::new();
    for (i, column) in entity.columns.iter().enumerate() {
        let s = source.and_then(|v| v.get(i).cloned().flatten());
        let t = target.and_then(|v| v.get(i).cloned().flatten());
        if !values_equal(column.ty, s.as_deref(), t.as_deref(), precision) {
            out.push(FieldDiff { field: column.name.clone(), source: s, target: t });
        }
    }
    out
}

/// The keys the source may hold: those spelled as the source spells its keys (canonical).
/// A target may hold other keys (a MongoDB `_id` is any string); they are never source
/// keys, and sending them would fail the source's cast to the key type for all the others.
fn source_keys(entity: &Entity, keys: &[String]) -> Vec<String> {
    let ty = entity.key().ty;
    keys.iter().filter(|k| canonical::canonicalize(ty, k).is_ok_and(|c| c == **k)).cloned().collect()
}

/// The keys among `keys` that still differ.
async fn recheck(source: &tokio_postgres::Client, target: &Target<'_>, entity: &Entity, keys: &[String]) -> Result<Vec<String>, VerifyError> {
    let precision = target.precision();
    let mut still = Vec::new();
    for chunk in keys.chunks(KEY_BATCH) {
        let src = postgres::fetch_source(source, entity, &source_keys(entity, chunk)).await?;
        let tgt = target.fetch(entity, chunk).await?;
        for key in chunk {
            let s = src.get(key);
            let live: Vec<&TargetRecord> = tgt.get(key).map(|v| v.iter().filter(|r| !r.deleted).collect()).unwrap_or_default();
            let agrees = match (s, live.as_slice()) {
                (None, []) => true,
                (Some(s), [t]) => field_diffs(entity, Some(&s.values), Some(&t.values), precision).is_empty(),
                _ => false,
            };
            if !agrees {
                still.push(key.clone());
            }
        }
    }
    Ok(still)
}

pub(crate) fn fmt_ts(ts: Option<DateTime<Utc>>) -> String {
    ts.map(|t| t.to_string()).unwrap_or_else(|| "an unknown time".into())
}

/// Keys in the target for `entity` keyed by value (for tests and tools).
pub type KeyedRecords = HashMap<String, Vec<TargetRecord>>;
