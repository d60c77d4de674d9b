//! The sink's internal events, after Vector's `internal_events`: each thing an operator
//! must be told is one struct whose `emit` writes its log line and moves its metrics
//! together, so the counter an alert reads and the line a person greps for cannot drift
//! apart. A partition that cannot move is a [`Stall`]: its readiness mark and its
//! `sink_partition_stalled` gauge are set and cleared together.

use std::fmt::Display;
use std::time::Duration;

use tracing::{Level, error, info, warn};

use crate::dlq::DeadLetter;
use crate::http::Stalls;
use crate::metrics::Metrics;
use crate::model::Coords;

pub(crate) trait InternalEvent {
    fn emit(self, metrics: &Metrics);
}

/// One partition's stall: `/readyz` names it (with why) and the gauge says 1 until cleared.
pub(crate) struct Stall<'a> {
    pub stalls: &'a Stalls,
    pub metrics: &'a Metrics,
    pub topic: &'a str,
    pub partition: i32,
}

impl Stall<'_> {
    pub fn mark(&self, why: impl Into<String>) {
        self.stalls.mark(self.topic, self.partition, why);
        self.metrics.partition_stalled(self.topic, self.partition, true);
    }

    pub fn clear(&self) {
        self.stalls.clear(self.topic, self.partition);
        self.metrics.partition_stalled(self.topic, self.partition, false);
    }
}

/// An error librdkafka reports through the client context (`kind="kafka"`).
pub(crate) struct KafkaClientError<'a, E: Display> {
    pub error: &'a E,
    pub reason: &'a str,
}

impl<E: Display> InternalEvent for KafkaClientError<'_, E> {
    fn emit(self, metrics: &Metrics) {
        metrics.error("kafka");
        warn!(message = "kafka client error", error = %self.error, reason = self.reason);
    }
}

/// A receive from the consumer failed (`kind="kafka"`).
pub(crate) struct KafkaReceiveError<'a, E: Display> {
    pub error: &'a E,
}

impl<E: Display> InternalEvent for KafkaReceiveError<'_, E> {
    fn emit(self, metrics: &Metrics) {
        metrics.error("kafka");
        warn!(message = "kafka receive error", error = %self.error);
    }
}

/// An offset commit the broker refused (`kind="kafka_commit"`); the offsets are committed
/// again with the next one.
pub(crate) struct OffsetCommitFailed<'a, E: Display> {
    pub error: &'a E,
}

impl<E: Display> InternalEvent for OffsetCommitFailed<'_, E> {
    fn emit(self, metrics: &Metrics) {
        metrics.error("kafka_commit");
        warn!(message = "offset commit failed", error = %self.error);
    }
}

/// Partition tasks that did not finish their batch within the drain timeout were aborted
/// (`kind="drain_timeout"`): what they had not stored is redelivered.
pub(crate) struct DrainTimedOut {
    pub tasks: usize,
    pub timeout: Duration,
}

impl InternalEvent for DrainTimedOut {
    fn emit(self, metrics: &Metrics) {
        metrics.error("drain_timeout");
        warn!(message = "drain timed out: aborted the partition tasks still running", tasks = self.tasks, timeout = ?self.timeout);
    }
}

/// The consumer held no assignment for `rejoin_timeout` while the broker answered, and a new
/// one replaced it (`sink_consumer_restarts_total`).
pub(crate) struct ConsumerRecreated {
    pub unassigned: Duration,
}

impl InternalEvent for ConsumerRecreated {
    fn emit(self, metrics: &Metrics) {
        metrics.consumer_restarted();
        warn!(message = "no partition assignment while the broker answers; consumer recreated", unassigned_s = self.unassigned.as_secs());
    }
}

/// Creating the replacement consumer failed; the old one is kept (`kind="kafka"`).
pub(crate) struct ConsumerRecreateFailed<'a, E: Display> {
    pub error: &'a E,
}

impl<E: Display> InternalEvent for ConsumerRecreateFailed<'_, E> {
    fn emit(self, metrics: &Metrics) {
        metrics.error("kafka");
        error!(message = "recreating the consumer failed; keeping the old one", error = %self.error);
    }
}

/// A batch panicked (`kind="panic"`, every time); logged at ERROR the first time, at DEBUG
/// while the same batch keeps panicking (its stall logs each try).
pub(crate) struct BatchPanicked<'a> {
    pub why: &'a str,
    pub topic: &'a str,
    pub partition: i32,
    pub first_offset: Option<i64>,
    pub events: usize,
    pub again: bool,
}

impl InternalEvent for BatchPanicked<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.error("panic");
        let message = "processing a batch panicked; retrying its events one by one";
        let (why, topic, partition, first_offset, events) = (self.why, self.topic, self.partition, self.first_offset, self.events);
        if self.again {
            tracing::event!(Level::DEBUG, message, panic = %why, topic, partition, first_offset, events);
        } else {
            tracing::event!(Level::ERROR, message, panic = %why, topic, partition, first_offset, events);
        }
    }
}

/// The target refused an operation for a reason of the row's own (`kind="target_permanent"`):
/// the event is dead-lettered.
pub(crate) struct TargetRefusedRecord<'a, E: Display> {
    pub operation: &'static str,
    pub entity: &'a dyn Display,
    pub error: &'a E,
}

impl<E: Display> InternalEvent for TargetRefusedRecord<'_, E> {
    fn emit(self, metrics: &Metrics) {
        metrics.error("target_permanent");
        warn!(message = "target refused the operation", operation = self.operation, entity = %self.entity, error = %self.error);
    }
}

/// The target is unreachable or busy (`kind="target_transient"`, `sink_up{dependency="target"}`
/// 0): retried at the backoff.
pub(crate) struct TargetUnavailable<'a, E: Display> {
    pub operation: &'static str,
    pub entity: &'a dyn Display,
    pub error: &'a E,
}

impl<E: Display> InternalEvent for TargetUnavailable<'_, E> {
    fn emit(self, metrics: &Metrics) {
        metrics.error("target_transient");
        metrics.dependency_up("target", false);
        warn!(message = "target unavailable, retrying", operation = self.operation, entity = %self.entity, error = %self.error);
    }
}

/// The target refuses every write of an entity until an operator acts (permissions, a
/// missing table, a read-only node: `kind="target_refused"`, alert `SinkTargetRefusesWrites`);
/// the partition is stalled while it is retried.
pub(crate) struct TargetRefusesEntity<'a, E: Display> {
    pub operation: &'static str,
    pub entity: &'a dyn Display,
    pub error: &'a E,
    pub at: &'a Coords,
}

impl<E: Display> InternalEvent for TargetRefusesEntity<'_, E> {
    fn emit(self, metrics: &Metrics) {
        metrics.error("target_refused");
        error!(message = "the target refuses the writes of this entity until an operator acts; partition stalled, retrying",
            operation = self.operation, entity = %self.entity, error = %self.error, topic = %self.at.topic, partition = self.at.partition, offset = self.at.offset);
    }
}

/// The target accepts an operation again after refusing it (the stall is cleared by the caller).
pub(crate) struct TargetResumed<'a> {
    pub operation: &'static str,
    pub entity: &'a dyn Display,
    pub at: &'a Coords,
}

impl InternalEvent for TargetResumed<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.dependency_up("target", true);
        info!(message = "target accepts the writes again; partition resumed", operation = self.operation, entity = %self.entity,
            topic = %self.at.topic, partition = self.at.partition);
    }
}

/// The target refused the apply log's rows (`kind="apply_log"`); the events' effects are
/// durable, so the offset still moves on.
pub(crate) struct ApplyLogRefused<'a, E: Display> {
    pub entity: &'a dyn Display,
    pub reason: &'a E,
}

impl<E: Display> InternalEvent for ApplyLogRefused<'_, E> {
    fn emit(self, metrics: &Metrics) {
        metrics.error("apply_log");
        warn!(message = "apply log rows refused by the target", entity = %self.entity, reason = %self.reason);
    }
}

/// A flattened topic whose events cannot carry deletes (`kind="deletes_not_carried"`): the
/// partition stops until the connector is fixed. Emitted once, then repeated as a log line
/// every minute while it lasts.
#[derive(Clone, Copy)]
pub(crate) struct DeletesNotCarried<'a> {
    pub reason: &'a str,
    pub at: &'a Coords,
}

impl InternalEvent for DeletesNotCarried<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.error("deletes_not_carried");
        self.log();
    }
}

impl DeletesNotCarried<'_> {
    pub fn log(&self) {
        error!(message = "partition stopped: its events cannot carry deletes", reason = %self.reason, topic = %self.at.topic,
            partition = self.at.partition, offset = self.at.offset);
    }
}

/// Dead letters the DLQ did not acknowledge (`kind="dlq_produce"`, one per letter): retried.
pub(crate) struct DlqProduceFailed<'a, E: Display> {
    pub error: &'a E,
    pub dlq_topic: &'a str,
    pub attempts: u32,
    pub letters: usize,
    pub first: &'a Coords,
}

impl<E: Display> InternalEvent for DlqProduceFailed<'_, E> {
    fn emit(self, metrics: &Metrics) {
        metrics.errors("dlq_produce", self.letters as u64);
        warn!(message = "dead-letter produce failed, retrying", error = %self.error, dlq_topic = self.dlq_topic, attempts = self.attempts,
            letters = self.letters, topic = %self.first.topic, partition = self.first.partition, offset = self.first.offset);
    }
}

/// A batch's letters, all acknowledged by the DLQ: counted per entity and rule
/// (`sink_dlq_events_total`), logged as one WARN line for the batch (a flood of bad events must not
/// flood the log too; each letter carries its own rule, reason and coordinates), and one
/// DEBUG line per letter.
pub(crate) struct EventsDeadLettered<'a> {
    pub letters: &'a [&'a DeadLetter],
    pub dlq_topic: &'a str,
    pub ack: Duration,
}

impl InternalEvent for EventsDeadLettered<'_> {
    fn emit(self, metrics: &Metrics) {
        let (Some(first), Some(last)) = (self.letters.first(), self.letters.last()) else { return };
        for letter in self.letters {
            metrics.dead_lettered(&letter.entity, &letter.rule);
            tracing::debug!(message = "event dead-lettered", rule = %letter.rule, reason = %crate::dlq::truncate_text(&letter.reason, 512),
                topic = %letter.coords.topic, partition = letter.coords.partition, offset = letter.coords.offset,
                key = %crate::model::key_for_log(letter.key.as_deref()), outcome = "dlq");
        }
        warn!(message = "events dead-lettered", letters = self.letters.len(), rule = %first.rule, reason = %crate::dlq::truncate_text(&first.reason, 512),
            topic = %first.coords.topic, partition = first.coords.partition, offset = first.coords.offset, last_offset = last.coords.offset,
            key = %crate::model::key_for_log(first.key.as_deref()), dlq_topic = self.dlq_topic, ack_ms = self.ack.as_millis() as u64, outcome = "dlq");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coords(offset: i64) -> Coords {
        Coords { topic: "cdc.public.customer".into(), partition: 2, offset, timestamp: None }
    }

    fn letter(offset: i64, rule: &str) -> DeadLetter {
        DeadLetter { coords: coords(offset), entity: "customer".into(), rule: rule.into(), reason: "bad".into(), key: None, value: None, trace: None }
    }

    #[test]
    fn a_stall_marks_readiness_and_the_gauge_together_and_clears_both() {
        let (stalls, metrics) = (Stalls::default(), Metrics::new());
        let stall = Stall { stalls: &stalls, metrics: &metrics, topic: "cdc.public.customer", partition: 2 };
        stall.mark("the DLQ refuses");
        assert!(stalls.describe().is_some_and(|d| d.contains("cdc.public.customer/2") && d.contains("the DLQ refuses")));
        assert!(metrics.render().contains("sink_partition_stalled{topic=\"cdc.public.customer\",partition=\"2\"} 1"), "{}", metrics.render());
        stall.clear();
        assert_eq!(stalls.describe(), None);
        assert!(metrics.render().contains("sink_partition_stalled{topic=\"cdc.public.customer\",partition=\"2\"} 0"), "{}", metrics.render());
    }

    #[test]
    fn letters_are_counted_per_entity_and_rule_once_acknowledged() {
        let metrics = Metrics::new();
        let (a, b, c) = (letter(1, "decode"), letter(2, "decode"), letter(3, "rule:email"));
        EventsDeadLettered { letters: &[&a, &b, &c], dlq_topic: "dlq", ack: Duration::from_millis(3) }.emit(&metrics);
        let text = metrics.render();
        assert!(text.contains("sink_dlq_events_total{entity=\"customer\",rule=\"decode\"} 2"), "{text}");
        assert!(text.contains("sink_dlq_events_total{entity=\"customer\",rule=\"rule:email\"} 1"), "{text}");
        // No letters: nothing counted, nothing logged.
        let empty = Metrics::new();
        EventsDeadLettered { letters: &[], dlq_topic: "dlq", ack: Duration::ZERO }.emit(&empty);
        assert!(!empty.render().contains("sink_dlq_events_total{"), "{}", empty.render());
    }

    #[test]
    fn each_error_event_moves_its_own_counter() {
        let metrics = Metrics::new();
        let at = coords(7);
        let error = "boom";
        TargetUnavailable { operation: "apply", entity: &"customer", error: &error }.emit(&metrics);
        TargetRefusesEntity { operation: "apply", entity: &"customer", error: &error, at: &at }.emit(&metrics);
        TargetRefusedRecord { operation: "apply", entity: &"customer", error: &error }.emit(&metrics);
        DlqProduceFailed { error: &error, dlq_topic: "dlq", attempts: 1, letters: 3, first: &at }.emit(&metrics);
        DeletesNotCarried { reason: "no deletes", at: &at }.emit(&metrics);
        BatchPanicked { why: "x", topic: "t", partition: 0, first_offset: Some(1), events: 1, again: true }.emit(&metrics);
        let text = metrics.render();
        for (kind, n) in [("target_transient", 1), ("target_refused", 1), ("target_permanent", 1), ("dlq_produce", 3), ("deletes_not_carried", 1), ("panic", 1)]
        {
            assert!(text.contains(&format!("sink_errors_total{{kind=\"{kind}\"}} {n}")), "{kind}: {text}");
        }
        assert!(text.contains("sink_up{dependency=\"target\"} 0"), "{text}");
        TargetResumed { operation: "apply", entity: &"customer", at: &at }.emit(&metrics);
        assert!(metrics.render().contains("sink_up{dependency=\"target\"} 1"));
    }
}
