//! Prometheus metrics. Every observable event of the sink has a named method here, so the
//! names and labels live in one place (and in the README).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::model::Entity;
use crate::validation::{Rule, Severity, Tally};

type Labels = Vec<(&'static str, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms .. ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

fn batch_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 15))
}

pub struct Metrics {
    registry: Registry,
    processed: Family<Labels, Counter>,
    writes: Family<Labels, Counter>,
    stale: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
    dlq: Family<Labels, Counter>,
    validation_passed: Family<Labels, Counter>,
    validation_failed: Family<Labels, Counter>,
    schema_changes: Family<Labels, Counter>,
    purged: Family<Labels, Counter>,
    batch_size: HistogramFamily,
    processing_latency: HistogramFamily,
    e2e_latency: HistogramFamily,
    consumer_lag: Family<Labels, Gauge>,
    up: Family<Labels, Gauge>,
    assigned: Gauge,
    consumer_restarts: Counter,
    stalled: Family<Labels, Gauge>,
    buffered_bytes: Family<Labels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sink");
        let processed = Family::default();
        registry.register("events_processed", "Events consumed, by entity and op (r/c/u/d/tombstone/truncate/message)", processed.clone());
        let writes = Family::default();
        registry.register("writes", "Rows written to the target, by entity and kind (upsert/delete)", writes.clone());
        let stale = Family::default();
        registry.register("stale_skips", "Events not newer than the target's version, skipped", stale.clone());
        let errors = Family::default();
        registry.register("errors", "Errors by kind", errors.clone());
        let dlq = Family::default();
        registry.register("dlq_events", "Events sent to the dead-letter topic, by entity and rule", dlq.clone());
        let validation_passed = Family::default();
        registry.register("validation_passed", "Validation checks passed, by rule", validation_passed.clone());
        let validation_failed = Family::default();
        registry.register("validation_failed", "Validation checks failed, by rule and severity", validation_failed.clone());
        let schema_changes = Family::default();
        registry.register(
            "schema_changes",
            "Source schema changes seen, by entity and change (added/removed/type_compatible/type_incompatible)",
            schema_changes.clone(),
        );
        let purged = Family::default();
        registry.register("tombstones_purged", "Delete tombstones purged after the retention", purged.clone());
        let batch_size: HistogramFamily = Family::new_with_constructor(batch_histogram);
        registry.register("batch_size", "Events per partition batch", batch_size.clone());
        let processing_latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register("processing_latency_seconds", "From a batch's first event received to its offsets stored, by entity", processing_latency.clone());
        let e2e_latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register("e2e_latency_seconds", "From source commit to applied in the target, by entity", e2e_latency.clone());
        let consumer_restarts = Counter::default();
        registry.register("consumer_restarts", "Kafka consumers recreated by the watchdog after holding no assignment too long", consumer_restarts.clone());
        let consumer_lag = Family::default();
        registry.register("consumer_lag", "Messages behind the high watermark, by topic and partition", consumer_lag.clone());
        let up = Family::default();
        registry.register("up", "1 when the dependency (kafka/target) answered its last probe", up.clone());
        let assigned = Gauge::default();
        registry.register("assigned_partitions", "Partitions assigned to this consumer", assigned.clone());
        let stalled = Family::default();
        registry.register("partition_stalled", "1 while a partition cannot make progress (see /readyz for why), by topic and partition", stalled.clone());
        let buffered_bytes = Family::default();
        registry.register(
            "partition_buffered_bytes",
            "Bytes of records a partition holds (queued or in its batch), bounded by [apply] max_buffered_bytes",
            buffered_bytes.clone(),
        );
        Self {
            registry,
            processed,
            writes,
            stale,
            errors,
            dlq,
            validation_passed,
            validation_failed,
            schema_changes,
            purged,
            batch_size,
            processing_latency,
            e2e_latency,
            consumer_lag,
            up,
            assigned,
            consumer_restarts,
            stalled,
            buffered_bytes,
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    pub fn events_processed(&self, entity: Entity, op: &str, n: u64) {
        self.processed.get_or_create(&vec![("entity", entity.to_string()), ("op", op.to_string())]).inc_by(n);
    }

    pub fn rows_written(&self, entity: Entity, kind: &'static str, n: u64) {
        if n > 0 {
            self.writes.get_or_create(&vec![("entity", entity.to_string()), ("kind", kind.to_string())]).inc_by(n);
        }
    }

    pub fn stale_skipped(&self, entity: Entity, n: u64) {
        if n > 0 {
            self.stale.get_or_create(&vec![("entity", entity.to_string())]).inc_by(n);
        }
    }

    pub fn error(&self, kind: &'static str) {
        self.errors(kind, 1);
    }

    /// `n` errors of one kind at once (a batch's letters the DLQ refused).
    pub fn errors(&self, kind: &'static str, n: u64) {
        self.errors.get_or_create(&vec![("kind", kind.to_string())]).inc_by(n);
    }

    pub fn dead_lettered(&self, entity: &str, rule: &str) {
        self.dlq.get_or_create(&vec![("entity", entity.to_string()), ("rule", rule.to_string())]).inc();
    }

    pub fn validation(&self, tally: &Tally) {
        for rule in Rule::ALL {
            let n = tally.passed[rule as usize];
            if n > 0 {
                self.validation_passed.get_or_create(&vec![("rule", rule.name().to_string())]).inc_by(n);
            }
        }
    }

    pub fn validation_failed(&self, rule: &str, severity: Severity) {
        self.validation_failed.get_or_create(&vec![("rule", rule.to_string()), ("severity", severity.as_str().to_string())]).inc();
    }

    pub fn schema_change(&self, entity: Entity, change: &'static str) {
        self.schema_changes.get_or_create(&vec![("entity", entity.to_string()), ("change", change.to_string())]).inc();
    }

    pub fn tombstones_purged(&self, entity: Entity, n: u64) {
        self.purged.get_or_create(&vec![("entity", entity.to_string())]).inc_by(n);
    }

    pub fn batch(&self, entity: Entity, size: usize, seconds: f64) {
        let labels = vec![("entity", entity.to_string())];
        self.batch_size.get_or_create(&labels).observe(size as f64);
        self.processing_latency.get_or_create(&labels).observe(seconds);
    }

    pub fn e2e_latencies(&self, entity: Entity, seconds: impl IntoIterator<Item = f64>) {
        let histogram = self.e2e_latency.get_or_create(&vec![("entity", entity.to_string())]);
        for s in seconds {
            histogram.observe(s.max(0.0));
        }
    }

    pub fn consumer_lag(&self, topic: &str, partition: i32, lag: i64) {
        self.consumer_lag.get_or_create(&vec![("topic", topic.to_string()), ("partition", partition.to_string())]).set(lag);
    }

    pub fn forget_partition(&self, topic: &str, partition: i32) {
        let labels = vec![("topic", topic.to_string()), ("partition", partition.to_string())];
        self.consumer_lag.remove(&labels);
        self.buffered_bytes.remove(&labels);
        self.stalled.remove(&labels);
    }

    pub fn buffered_bytes(&self, topic: &str, partition: i32, bytes: usize) {
        self.buffered_bytes
            .get_or_create(&vec![("topic", topic.to_string()), ("partition", partition.to_string())])
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    pub fn dependency_up(&self, dependency: &'static str, up: bool) {
        self.up.get_or_create(&vec![("dependency", dependency.to_string())]).set(i64::from(up));
    }

    pub fn partition_stalled(&self, topic: &str, partition: i32, stalled: bool) {
        self.stalled.get_or_create(&vec![("topic", topic.to_string()), ("partition", partition.to_string())]).set(i64::from(stalled));
    }

    pub fn consumer_restarted(&self) {
        self.consumer_restarts.inc();
    }

    pub fn assigned_partitions(&self, n: usize) {
        self.assigned.set(n as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_named_metrics() {
        let m = Metrics::new();
        m.events_processed(Entity::Orders, "u", 3);
        m.rows_written(Entity::Orders, "upsert", 2);
        m.stale_skipped(Entity::Orders, 1);
        m.batch(Entity::Orders, 3, 0.01);
        m.consumer_lag("cdc.public.orders", 0, 42);
        let text = m.render();
        for needle in [
            "sink_events_processed_total{entity=\"orders\",op=\"u\"} 3",
            "sink_writes_total{entity=\"orders\",kind=\"upsert\"} 2",
            "sink_stale_skips_total{entity=\"orders\"} 1",
            "sink_batch_size_bucket",
            "sink_consumer_lag{topic=\"cdc.public.orders\",partition=\"0\"} 42",
        ] {
            assert!(text.contains(needle), "{needle} missing in\n{text}");
        }
    }
}
