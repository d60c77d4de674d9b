//! The sink's pipeline, one handler per entity: decode, validate, apply and dead-letter
//! (the letter stage) one partition batch, each stage its own function.
//! Partitions of an entity run as their own tasks, so an entity whose target writes fail
//! (and retry) stalls only its own partitions.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use tracing::{Instrument, debug, error, info, info_span, warn};
use uuid::Uuid;

use crate::config::SinkConfig;
use crate::decode::{DecodeError, DecodeOptions, Decoded, decode};
use crate::dlq::{DeadLetter, DlqProducer};
use crate::internal_events::{
    ApplyLogRefused, DeletesNotCarried, DlqProduceFailed, EventsDeadLettered, InternalEvent as _, Stall, TargetRefusedRecord, TargetRefusesEntity,
    TargetResumed, TargetUnavailable,
};
use crate::metrics::Metrics;
use crate::model::{Change, Coords, Entity, Version};
use crate::retry::Backoff;
use crate::schema::SchemaTracker;
use crate::targets::{ApplyReport, ErrorClass, Target, TargetError};
use crate::validation::{KeyMemory, Rule, Severity, Tally, Validator};

/// Key, version, op, source commit time and source transaction of a decoded change, by
/// batch index: the apply log rows of events that write nothing.
type ChangeMeta = (Uuid, Version, &'static str, Option<chrono::DateTime<Utc>>, Option<i64>);

/// What the decode stage hands to validation.
struct DecodedBatch {
    /// Decoded changes, by batch index, in offset order.
    changes: Vec<(usize, Change)>,
    /// `decode` dead letters.
    letters: Vec<DeadLetter>,
    /// Audit mode: what the apply log needs of every decoded change.
    meta: HashMap<usize, ChangeMeta>,
}

/// A batch between validation and the letter stage.
struct BatchWork {
    /// By batch index.
    outcomes: Vec<Outcome>,
    /// Changes still to apply, by batch index.
    changes: Vec<(usize, Change)>,
    letters: Vec<DeadLetter>,
    meta: HashMap<usize, ChangeMeta>,
}

/// A Kafka record, detached from the consumer.
#[derive(Debug, Clone)]
pub struct Record {
    pub coords: Coords,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// W3C trace context from the record's headers, when the producer set one.
    pub trace: Option<crate::telemetry::TraceHeaders>,
}

impl Record {
    /// What the record weighs in memory for backpressure: its key and value.
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len) + self.value.as_ref().map_or(0, Vec::len)
    }
}

/// What became of one record, for its span and log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Upserted,
    Deleted,
    /// Not newer than the target's version.
    Stale,
    DeadLettered,
    /// Tombstones, truncates, logical decoding messages.
    Ignored,
}

impl Outcome {
    const fn name(self) -> &'static str {
        match self {
            Self::Upserted | Self::Deleted => "applied",
            Self::Stale => "stale",
            Self::DeadLettered => "dlq",
            Self::Ignored => "ignored",
        }
    }

    /// `db.operation` of the record's span.
    const fn db_operation(self) -> &'static str {
        match self {
            Self::Upserted => "upsert",
            Self::Deleted => "delete",
            Self::Stale | Self::DeadLettered | Self::Ignored => "ignore",
        }
    }
}

/// What a partition task keeps between batches.
#[derive(Default)]
pub struct PartitionState {
    memory: KeyMemory,
    /// Offsets of the batch being processed whose dead letters the DLQ acknowledged: a
    /// batch processed again after a panic does not send them twice.
    pub(crate) lettered: HashSet<i64>,
    /// The topic's progress (`Stalls::progress`) when this partition last dead-lettered an
    /// event that panicked alone: a second such panic with no progress in between is not
    /// the data's fault.
    pub(crate) panic_letter_at: Option<u64>,
}

impl PartitionState {
    /// Forgets what validation learnt (it may come from a half-done batch that panicked);
    /// the letters already sent stay known.
    pub(crate) fn forget_memory(&mut self) {
        self.memory = KeyMemory::default();
    }
}

pub struct Handler {
    pub entity: Entity,
    pub target: Arc<Target>,
    pub dlq: Arc<DlqProducer>,
    pub metrics: Arc<Metrics>,
    pub schema: Arc<SchemaTracker>,
    pub config: Arc<SinkConfig>,
    /// Where a partition that cannot make progress says so (readiness).
    pub stalls: Arc<crate::http::Stalls>,
}

impl Handler {
    /// Processes one batch (records of one partition, in offset order). Returns when every
    /// record's effect is durable in the target or the DLQ; the caller then stores the
    /// offset. Transient failures are retried here without limit.
    ///
    /// Traces: the batch is one span (a new trace) linked to the trace of every record that
    /// carried a `traceparent`; each such record also gets its own span as a child of that
    /// remote parent, closed when its effect is durable, so one trace runs from the write
    /// that made the change to its apply here.
    pub async fn process(&self, batch: &[Record], state: &mut PartitionState) {
        let Some(first) = batch.first() else { return };
        let started = Instant::now();
        let topic = first.coords.topic.as_str();
        let span = info_span!(
            "batch",
            otel.name = %format_args!("{topic} process"),
            otel.kind = "consumer",
            messaging.system = "kafka",
            messaging.destination.name = %topic,
            messaging.kafka.consumer.group = %self.config.kafka.group_id,
            messaging.kafka.partition = first.coords.partition,
            messaging.kafka.offset = first.coords.offset,
            messaging.batch.message_count = batch.len(),
            messaging.operation = "process",
            db.operation = tracing::field::Empty,
            cdc.entity.type = %self.entity,
        );
        let traced = self.message_spans(batch, &span);
        let outcomes = self.process_inner(batch, state).instrument(span).await;
        for (i, message_span) in traced {
            let record = &batch[i];
            let outcome = outcomes[i];
            message_span.record("db.operation", outcome.db_operation());
            message_span.record("cdc.outcome", outcome.name());
            message_span.in_scope(|| {
                debug!(message = "event processed", topic = %record.coords.topic, partition = record.coords.partition,
                    offset = record.coords.offset, key = %crate::model::key_for_log(record.key.as_deref()), outcome = outcome.name())
            });
        }
        self.metrics.batch(self.entity, batch.len(), started.elapsed().as_secs_f64());
    }

    /// A span per record that carries a valid trace context, parented by it.
    fn message_spans(&self, batch: &[Record], batch_span: &tracing::Span) -> Vec<(usize, tracing::Span)> {
        use opentelemetry::trace::TraceContextExt as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        let mut spans = Vec::new();
        for (i, record) in batch.iter().enumerate() {
            let Some(headers) = &record.trace else { continue };
            let Some(parent) = crate::telemetry::remote_context(&headers.traceparent, headers.tracestate.as_deref()) else {
                debug!(message = "ignoring a malformed traceparent header", offset = record.coords.offset);
                continue;
            };
            batch_span.add_link(parent.span().span_context().clone());
            let span = info_span!(
                parent: None,
                "message",
                otel.name = %format_args!("{} process", record.coords.topic),
                otel.kind = "consumer",
                messaging.system = "kafka",
                messaging.destination.name = %record.coords.topic,
                messaging.kafka.consumer.group = %self.config.kafka.group_id,
                messaging.kafka.partition = record.coords.partition,
                messaging.kafka.offset = record.coords.offset,
                messaging.kafka.message.key = %crate::model::key_for_log(record.key.as_deref()),
                messaging.operation = "process",
                db.operation = tracing::field::Empty,
                cdc.entity.type = %self.entity,
                cdc.outcome = tracing::field::Empty,
            );
            if span.set_parent(parent).is_ok() {
                // Starts the span now, so its duration covers the whole apply.
                let _ = span.context();
                spans.push((i, span));
            }
        }
        spans
    }

    /// The stages of one batch: decode, validate (per event, then the added columns the
    /// target needs and the references), apply, and dead-letter what did not make it.
    async fn process_inner(&self, batch: &[Record], state: &mut PartitionState) -> Vec<Outcome> {
        let Some(first) = batch.first() else { return Vec::new() };
        let mut tally = Tally::default();
        let decoded = self.decode_batch(batch).await;
        let mut work = self.validate_batch(batch, decoded, state, &mut tally);
        self.ensure_added_columns(&work.changes, &first.coords).await;
        self.validate_references(batch, &mut work, state, &mut tally).await;
        self.apply_batch(batch, &mut work, state).await;
        self.letter_batch(batch, work, state).await
    }

    /// Decode stage: every record as a change, an ignored record (counted, logged) or a
    /// `decode` dead letter. Stops the partition on a topic that cannot carry deletes.
    async fn decode_batch(&self, batch: &[Record]) -> DecodedBatch {
        let entity = self.entity;
        let audit = self.target.audits();
        let options = DecodeOptions::of(&self.config);
        let mut out = DecodedBatch { changes: Vec::with_capacity(batch.len()), letters: Vec::new(), meta: HashMap::new() };
        let mut ops: HashMap<&'static str, u64> = HashMap::new();
        for (i, record) in batch.iter().enumerate() {
            match decode(&record.coords, record.key.as_deref(), record.value.as_deref(), &options) {
                Err(DecodeError::DeletesNotCarried) => self.refuse_without_deletes(record).await,
                Err(error) => {
                    *ops.entry("invalid").or_default() += 1;
                    if let DecodeError::BadColumn { column, .. } = &error {
                        self.schema.incompatible_known(entity, column, &self.metrics);
                    }
                    out.letters.push(self.letter_for(record, "decode", format!("{}: {error}", error.kind())));
                }
                Ok(Decoded::Tombstone) => *ops.entry("tombstone").or_default() += 1,
                Ok(Decoded::Truncate) => {
                    *ops.entry("truncate").or_default() += 1;
                    warn!(message = "truncate event ignored: the target keeps its rows", topic = %record.coords.topic,
                        partition = record.coords.partition, offset = record.coords.offset, outcome = "ignored");
                }
                Ok(Decoded::Message { prefix }) => {
                    *ops.entry("message").or_default() += 1;
                    info!(message = "logical decoding message ignored", prefix, topic = %record.coords.topic,
                        partition = record.coords.partition, offset = record.coords.offset, outcome = "ignored");
                }
                Ok(Decoded::Change(change)) => {
                    *ops.entry(change.op.code()).or_default() += 1;
                    if audit {
                        out.meta.insert(i, (change.key, change.version, change.op.code(), change.source_ts, change.tx_id));
                    }
                    out.changes.push((i, *change));
                }
            }
        }
        for (op, n) in ops {
            self.metrics.events_processed(entity, op, n);
        }
        out
    }

    /// Validate stage, per event: the rules that need only the event and what the partition
    /// learnt. Warnings are counted and logged; a rejected event becomes a dead letter.
    fn validate_batch(&self, batch: &[Record], decoded: DecodedBatch, state: &mut PartitionState, tally: &mut Tally) -> BatchWork {
        let validator = Validator { config: &self.config.validation, now: Utc::now() };
        let DecodedBatch { changes, mut letters, meta } = decoded;
        let mut outcomes = vec![Outcome::Ignored; batch.len()];
        let mut accepted = Vec::with_capacity(changes.len());
        for (i, change) in changes {
            let record = &batch[i];
            let mut rejected = None;
            for v in validator.check(&change, &mut state.memory, tally) {
                self.metrics.validation_failed(v.rule.name(), v.severity);
                match v.severity {
                    Severity::Warn => {
                        debug!(message = "validation warning", rule = v.rule.name(), reason = %v.reason,
                        topic = %record.coords.topic, partition = record.coords.partition, offset = record.coords.offset,
                        key = %crate::model::key_for_log(record.key.as_deref()), outcome = "warned")
                    }
                    Severity::Reject => rejected = rejected.or(Some(v)),
                }
            }
            match rejected {
                Some(v) => letters.push(self.letter_for(record, v.rule.name(), v.reason)),
                None => {
                    outcomes[i] = if change.op.is_delete() { Outcome::Deleted } else { Outcome::Upserted };
                    accepted.push((i, change));
                }
            }
        }
        // Decode and rule letters in record order, as they are produced.
        letters.sort_by_key(|l| l.coords.offset);
        BatchWork { outcomes, changes: accepted, letters, meta }
    }

    /// Columns added in the source get room in the target before the apply.
    async fn ensure_added_columns(&self, changes: &[(usize, Change)], at: &Coords) {
        let entity = self.entity;
        let added: HashSet<String> =
            changes.iter().filter_map(|(_, c)| c.after.as_ref()).flat_map(|row| self.schema.observe(entity, row, &self.metrics)).collect();
        if added.is_empty() {
            return;
        }
        let added: Vec<String> = added.into_iter().collect();
        // A refusal about the target (not owner, no privilege) stalls the partition in
        // `retry` until fixed. One about the column itself (a name the server refuses)
        // is logged; the rows carrying it then fail the apply on the missing column,
        // which stalls the partition with that reason: never skipped silently.
        if let Err(error) = self.retry("ensure_columns", at, || self.target.ensure_columns(entity, &added)).await {
            error!(message = "added columns refused by the target", entity = %entity, columns = ?added, %error);
        }
    }

    /// Validate stage, against the target: the referential rule, then the batch's tally.
    async fn validate_references(&self, batch: &[Record], work: &mut BatchWork, state: &mut PartitionState, tally: &mut Tally) {
        let validated: Vec<(Uuid, Version)> = work.changes.iter().map(|(_, c)| (c.key, c.version)).collect();
        self.check_referential(batch, &mut work.changes, &mut work.letters, tally).await;
        if work.changes.len() < validated.len() {
            // Dropped by the referential rule: what they taught validation is void.
            let kept: HashSet<(Uuid, Version)> = work.changes.iter().map(|(_, c)| (c.key, c.version)).collect();
            for (key, version) in validated.into_iter().filter(|k| !kept.contains(k)) {
                state.memory.unlearn(key, version);
            }
        }
        self.metrics.validation(tally);
    }

    /// Apply stage: the version-guarded write (retried while transient). Stale changes are
    /// marked; the ones the target refused become dead letters.
    async fn apply_batch(&self, batch: &[Record], work: &mut BatchWork, state: &mut PartitionState) {
        if work.changes.is_empty() {
            return;
        }
        let plain: Vec<Change> = work.changes.iter().map(|(_, c)| c.clone()).collect();
        let report = match self.retry("apply", &batch[0].coords, || self.target.apply(self.entity, &plain)).await {
            Ok(r) => r,
            Err(reason) => {
                let reason = reason.to_string();
                ApplyReport { rejected: plain.iter().map(|c| (c.key, reason.clone())).collect(), ..Default::default() }
            }
        };
        self.record_applied(&plain, &report);
        if !report.stale.is_empty() {
            let stale: HashSet<Uuid> = report.stale.iter().copied().collect();
            for (i, change) in &work.changes {
                if stale.contains(&change.key) {
                    work.outcomes[*i] = Outcome::Stale;
                }
            }
        }
        // Refused by the target: rule `apply`; a value its column cannot hold while the
        // source declared no wider type: the event's own fault, rule `decode`.
        for (rule, refused) in [("apply", &report.rejected), ("decode", &report.out_of_range)] {
            if refused.is_empty() {
                continue;
            }
            let reasons: HashMap<Uuid, &String> = refused.iter().map(|(k, r)| (*k, r)).collect();
            for (i, change) in &work.changes {
                if let Some(reason) = reasons.get(&change.key) {
                    state.memory.unlearn(change.key, change.version);
                    work.letters.push(self.letter_for(&batch[*i], rule, (*reason).clone()));
                }
            }
        }
    }

    /// Rows written (by the newest change of each applied key), stale skips, end-to-end
    /// latencies and the batch span's `db.operation`.
    fn record_applied(&self, plain: &[Change], report: &ApplyReport) {
        let entity = self.entity;
        let mut latest: HashMap<Uuid, &Change> = HashMap::with_capacity(plain.len());
        for c in plain {
            let newest = latest.get(&c.key).is_none_or(|kept| !kept.version.is_newer_than(&c.version));
            if newest {
                latest.insert(c.key, c);
            }
        }
        let (mut upserts, mut deletes) = (0, 0);
        let now = Utc::now();
        let mut latencies = Vec::with_capacity(report.applied.len());
        for c in report.applied.iter().filter_map(|key| latest.get(key)) {
            if c.op.is_delete() {
                deletes += 1
            } else {
                upserts += 1
            }
            if let Some(ts) = c.source_ts {
                latencies.push((now - ts).as_seconds_f64());
            }
        }
        let operation = if report.applied.is_empty() {
            "ignore"
        } else if deletes > upserts {
            "delete"
        } else {
            "upsert"
        };
        tracing::Span::current().record("db.operation", operation);
        self.metrics.rows_written(entity, "upsert", upserts);
        self.metrics.rows_written(entity, "delete", deletes);
        self.metrics.stale_skipped(entity, report.stale.len() as u64);
        self.metrics.e2e_latencies(entity, latencies);
    }

    /// Letter stage: the batch's dead letters, durable in the DLQ before this returns (the
    /// offset is stored after it), and in audit mode the log rows of what wrote nothing.
    async fn letter_batch(&self, batch: &[Record], work: BatchWork, state: &mut PartitionState) -> Vec<Outcome> {
        let BatchWork { mut outcomes, letters, meta, .. } = work;
        for letter in &letters {
            if let Ok(i) = batch.binary_search_by_key(&letter.coords.offset, |r| r.coords.offset) {
                outcomes[i] = Outcome::DeadLettered;
            }
        }
        self.send_letters(&letters, &mut state.lettered).await;
        if self.target.audits() {
            let rules: HashMap<i64, &str> = letters.iter().map(|l| (l.coords.offset, l.rule.as_str())).collect();
            self.log_unwritten(batch, &outcomes, &meta, &rules).await;
        }
        outcomes
    }

    /// A flattened topic that does not carry deletes is a connector misconfiguration that
    /// would silently keep deleted rows: the partition stops here (nothing applied, no offset
    /// stored, readiness red, logged and counted) until the connector is fixed and the sink
    /// restarted.
    async fn refuse_without_deletes(&self, record: &Record) -> ! {
        let reason = DecodeError::DeletesNotCarried.to_string();
        self.stall(&record.coords).mark(reason.clone());
        let event = DeletesNotCarried { reason: &reason, at: &record.coords };
        event.emit(&self.metrics);
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            event.log();
        }
    }

    /// Dead-letters one event whose processing panicked (the panic is the event's fault:
    /// it panicked alone), so the partition moves on.
    pub async fn dead_letter_panic(&self, record: &Record, panic: &str, state: &mut PartitionState) {
        let letter = self.letter_for(record, "panic", format!("processing panicked: {panic}"));
        self.send_letters(std::slice::from_ref(&letter), &mut state.lettered).await;
    }

    /// Produces the letters all at once (the producer batches them; an idempotent producer
    /// keeps their order through retries) and waits until the DLQ acknowledged every one,
    /// retrying those that failed; a partition stuck on them says so. Offsets in `sent` were
    /// acknowledged earlier (before a panic) and are not sent again; acknowledged ones are
    /// added. Logs one WARN line per batch once durable (per letter only at `debug`).
    async fn send_letters(&self, letters: &[DeadLetter], sent: &mut HashSet<i64>) {
        let mut pending: Vec<&DeadLetter> = letters.iter().filter(|l| !sent.contains(&l.coords.offset)).collect();
        let Some(&first) = pending.first() else { return };
        let started = Instant::now();
        let batch = pending.clone();
        let stall = self.stall(&first.coords);
        let mut backoff = Backoff::new(&self.config.apply);
        let mut rounds = 0u32;
        while !pending.is_empty() {
            let results = futures::future::join_all(pending.iter().map(|letter| self.dlq.send(letter))).await;
            let mut failed = Vec::new();
            let mut last_error = None;
            for (letter, result) in pending.into_iter().zip(results) {
                match result {
                    Ok(()) => {
                        sent.insert(letter.coords.offset);
                    }
                    Err(error) => {
                        last_error = Some(error);
                        failed.push(letter);
                    }
                }
            }
            pending = failed;
            if let (Some(error), Some(first)) = (last_error, pending.first()) {
                rounds += 1;
                DlqProduceFailed { error: &error, dlq_topic: self.dlq.topic(), attempts: rounds, letters: pending.len(), first: &first.coords }
                    .emit(&self.metrics);
                if rounds == 3 {
                    // The partition cannot move past these events until the DLQ takes them: say so.
                    stall.mark(format!("dead-letter produce to {} failing: {error}", self.dlq.topic()));
                }
                backoff.wait().await;
            }
        }
        EventsDeadLettered { letters: &batch, dlq_topic: self.dlq.topic(), ack: started.elapsed() }.emit(&self.metrics);
        if rounds >= 3 {
            stall.clear();
        }
    }

    /// Audit mode: apply log rows for the events that wrote nothing to the target
    /// (dead-lettered once the DLQ write is durable, ignored), before the offset is stored.
    async fn log_unwritten(&self, batch: &[Record], outcomes: &[Outcome], decoded: &HashMap<usize, ChangeMeta>, rules: &HashMap<i64, &str>) {
        use crate::targets::{LogEntry, LoggedOutcome};
        let entries: Vec<LogEntry> = outcomes
            .iter()
            .enumerate()
            .filter_map(|(i, outcome)| {
                let logged = match outcome {
                    Outcome::DeadLettered => LoggedOutcome::Dlq,
                    Outcome::Ignored => LoggedOutcome::Ignored,
                    _ => return None,
                };
                let change = decoded.get(&i);
                Some(LogEntry {
                    key: change.map(|c| c.0),
                    version: change.map(|c| c.1),
                    op: change.map(|c| c.2),
                    outcome: logged,
                    partition: batch[i].coords.partition,
                    offset: batch[i].coords.offset,
                    kafka_ts: batch[i].coords.timestamp,
                    source_ts: change.and_then(|c| c.3),
                    tx_id: change.and_then(|c| c.4),
                    rule: rules.get(&batch[i].coords.offset).map(|r| (*r).to_string()),
                })
            })
            .collect();
        if entries.is_empty() {
            return;
        }
        // A log the target refuses is reported and counted; the events' effects (none, or
        // the DLQ record) are durable, so the offset may still move on.
        if let Err(reason) = self.retry("apply_log", &batch[0].coords, || self.target.log(self.entity, &entries)).await {
            ApplyLogRefused { entity: &self.entity, reason: &reason }.emit(&self.metrics);
        }
    }

    fn stall<'a>(&'a self, at: &'a Coords) -> Stall<'a> {
        Stall { stalls: &self.stalls, metrics: &self.metrics, topic: &at.topic, partition: at.partition }
    }

    fn letter_for(&self, record: &Record, rule: &str, reason: String) -> DeadLetter {
        DeadLetter {
            coords: record.coords.clone(),
            entity: self.entity.to_string(),
            rule: rule.to_string(),
            reason,
            key: record.key.clone(),
            value: record.value.clone(),
            trace: record.trace.clone(),
        }
    }

    /// Runs `op` until it succeeds or fails for a reason of the row's own (returned, the
    /// event is then dead-lettered). Transient errors are retried quietly; an error about
    /// the target (see `ErrorClass::Target`) stalls the partition at `at` visibly (readiness,
    /// gauge, ERROR log) while retrying, and the stall is cleared once the target accepts.
    async fn retry<T, F, Fut>(&self, what: &'static str, at: &Coords, mut op: F) -> Result<T, TargetError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, TargetError>>,
    {
        let mut backoff = Backoff::new(&self.config.apply);
        let mut stalled = false;
        loop {
            match op().await {
                Ok(v) => {
                    if stalled {
                        self.stall(at).clear();
                        TargetResumed { operation: what, entity: &self.entity, at }.emit(&self.metrics);
                    } else {
                        self.metrics.dependency_up("target", true);
                    }
                    return Ok(v);
                }
                Err(error) => match error.class() {
                    ErrorClass::Transient => {
                        TargetUnavailable { operation: what, entity: &self.entity, error: &error }.emit(&self.metrics);
                        backoff.wait().await;
                    }
                    ErrorClass::Target => {
                        if !stalled {
                            stalled = true;
                            self.stall(at).mark(format!("the target refuses {what} for {}: {error}", self.entity));
                        }
                        TargetRefusesEntity { operation: what, entity: &self.entity, error: &error, at }.emit(&self.metrics);
                        backoff.wait().await;
                    }
                    ErrorClass::Record => {
                        TargetRefusedRecord { operation: what, entity: &self.entity, error: &error }.emit(&self.metrics);
                        return Err(error);
                    }
                },
            }
        }
    }

    /// The referential rule. Parents travel on other topics and partitions, so a missing
    /// parent is given `referential_grace`: with severity `reject` the batch waits (and
    /// re-checks) before dead-lettering; with `warn` the child is applied now and the
    /// check is repeated in the background once the grace has passed, counting only
    /// children whose parent still never arrived.
    async fn check_referential(&self, batch: &[Record], changes: &mut Vec<(usize, Change)>, letters: &mut Vec<DeadLetter>, tally: &mut Tally) {
        let setting = self.config.validation.rule(Rule::Referential);
        let Some((column, parent)) = self.entity.parent() else {
            return;
        };
        if !setting.enabled {
            return;
        }
        let refs: Vec<(usize, Uuid)> = changes
            .iter()
            .enumerate()
            .filter(|(_, (_, c))| !c.op.is_delete())
            .filter_map(|(j, (_, c))| c.after.as_ref().and_then(|r| r.uuid(self.entity, column)).map(|p| (j, p)))
            .collect();
        if refs.is_empty() {
            return;
        }
        let mut ids: Vec<Uuid> = refs.iter().map(|(_, p)| *p).collect();
        ids.sort_unstable();
        ids.dedup();
        let at = &batch[0].coords;
        let mut missing = self.missing(parent, &ids, at).await;
        if setting.severity == Severity::Reject {
            let deadline = Instant::now() + self.config.validation.referential_grace;
            while !missing.is_empty() && Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                let still: Vec<Uuid> = missing.iter().copied().collect();
                missing = self.missing(parent, &still, at).await;
            }
        }
        for _ in refs.iter().filter(|(_, p)| !missing.contains(p)) {
            tally.pass(Rule::Referential);
        }
        if missing.is_empty() {
            return;
        }
        if setting.severity == Severity::Reject {
            let mut drop = HashSet::new();
            for (j, p) in &refs {
                if missing.contains(p) {
                    let (i, _) = &changes[*j];
                    self.metrics.validation_failed(Rule::Referential.name(), Severity::Reject);
                    letters.push(self.letter_for(&batch[*i], Rule::Referential.name(), format!("{column} {p} not found in {parent} after the grace period")));
                    drop.insert(*j);
                }
            }
            let mut j = 0;
            changes.retain(|_| {
                j += 1;
                !drop.contains(&(j - 1))
            });
            return;
        }
        let target = Arc::clone(&self.target);
        let metrics = Arc::clone(&self.metrics);
        let grace = self.config.validation.referential_grace;
        let entity = self.entity;
        let children: Vec<Uuid> = refs.iter().filter(|(_, p)| missing.contains(p)).map(|(_, p)| *p).collect();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let ids: Vec<Uuid> = missing.into_iter().collect();
            match target.existing(parent, &ids).await {
                Ok(found) => {
                    for p in children.iter().filter(|p| !found.contains(p)) {
                        metrics.validation_failed(Rule::Referential.name(), Severity::Warn);
                        warn!(message = "referenced parent still missing after grace period", entity = %entity, parent = %parent,
                            parent_id = %p, outcome = "warned");
                    }
                }
                Err(error) => warn!(message = "deferred referential check failed", %error),
            }
        });
    }

    async fn missing(&self, parent: Entity, ids: &[Uuid], at: &Coords) -> HashSet<Uuid> {
        match self.retry("referential_lookup", at, || self.target.existing(parent, ids)).await {
            Ok(found) => ids.iter().filter(|id| !found.contains(id)).copied().collect(),
            // A lookup the target refuses is not evidence of a missing parent.
            Err(_) => HashSet::new(),
        }
    }
}
