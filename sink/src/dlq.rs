//! Dead-letter topic: events that cannot be decoded, fail a rejecting validation rule, or
//! are refused by the target. The record keeps the original key and value; headers name
//! the rule, the reason and the original coordinates (and its `traceparent`, if any).

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::config::KafkaConfig;
use crate::model::Coords;
use crate::telemetry::TraceHeaders;

/// Values above this are truncated in the DLQ record (header `dlq.value.truncated`), so a
/// huge poison message cannot also be refused by the broker.
const MAX_DLQ_VALUE: usize = 900 * 1024;
/// Bounds of the reason header and of the key: a reason quotes the bad value (a 600 KB
/// e-mail made a DLQ record over the broker's limit, retried forever), so it is truncated
/// like the value; the whole record stays under the broker's default 1 MiB.
const MAX_DLQ_REASON: usize = 4 * 1024;
const MAX_DLQ_KEY: usize = 16 * 1024;

/// `text` cut to at most `max` bytes at a character boundary, with a marker when cut.
pub fn truncate_text(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut end = max.saturating_sub(32);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... [{} bytes truncated]", &text[..end], text.len() - end).into()
}

#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub coords: Coords,
    pub entity: String,
    pub rule: String,
    pub reason: String,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// The original record's trace context, handed on so the DLQ's consumer joins its trace.
    pub trace: Option<TraceHeaders>,
}

pub struct DlqProducer {
    producer: FutureProducer,
    topic: String,
}

impl DlqProducer {
    pub fn new(config: &KafkaConfig) -> Result<Self, KafkaError> {
        let mut client = config.client_config();
        // Idempotent: a letter retried by librdkafka after a lost acknowledgement is written
        // once, and letters keep their order through retries (they are sent in batches).
        client
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "30000")
            .set("reconnect.backoff.max.ms", crate::config::RECONNECT_BACKOFF_MAX_MS);
        for (k, v) in &config.librdkafka {
            client.set(k, v);
        }
        Ok(Self { producer: client.create()?, topic: config.dlq_topic.clone() })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Produces and waits for the broker's acknowledgement (the letter is durable when
    /// this returns Ok).
    pub async fn send(&self, letter: &DeadLetter) -> Result<(), KafkaError> {
        let partition = letter.coords.partition.to_string();
        let offset = letter.coords.offset.to_string();
        let value = letter.value.as_deref().map(|v| &v[..v.len().min(MAX_DLQ_VALUE)]);
        let truncated = letter.value.as_ref().is_some_and(|v| v.len() > MAX_DLQ_VALUE);
        let reason = truncate_text(&letter.reason, MAX_DLQ_REASON);
        let rule = truncate_text(&letter.rule, 256);
        let mut headers = OwnedHeaders::new_with_capacity(8)
            .insert(Header { key: "dlq.rule", value: Some(rule.as_ref()) })
            .insert(Header { key: "dlq.reason", value: Some(reason.as_ref()) })
            .insert(Header { key: "dlq.entity", value: Some(letter.entity.as_str()) })
            .insert(Header { key: "dlq.original.topic", value: Some(letter.coords.topic.as_str()) })
            .insert(Header { key: "dlq.original.partition", value: Some(partition.as_str()) })
            .insert(Header { key: "dlq.original.offset", value: Some(offset.as_str()) });
        if let Some(trace) = &letter.trace {
            headers = headers.insert(Header { key: "traceparent", value: Some(trace.traceparent.as_str()) });
            if let Some(state) = &trace.tracestate {
                headers = headers.insert(Header { key: "tracestate", value: Some(state.as_str()) });
            }
        }
        if truncated {
            headers = headers.insert(Header { key: "dlq.value.truncated", value: Some("true") });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic).headers(headers);
        if let Some(key) = letter.key.as_deref() {
            record = record.key(&key[..key.len().min(MAX_DLQ_KEY)]);
        }
        if let Some(value) = value {
            record = record.payload(value);
        }
        self.producer.send(record, Duration::from_secs(30)).await.map(|_| ()).map_err(|(e, _)| e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_reasons_are_cut_at_a_character_boundary_and_say_so() {
        assert_eq!(truncate_text("short", 100), "short");
        let long = "é".repeat(10_000);
        let cut = truncate_text(&long, MAX_DLQ_REASON);
        assert!(cut.len() <= MAX_DLQ_REASON, "{} bytes", cut.len());
        assert!(cut.ends_with("bytes truncated]"), "{}", &cut[cut.len() - 40..]);
    }
}
