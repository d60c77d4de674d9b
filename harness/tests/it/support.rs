//! Reading Debezium events back from the broker, and writing rows in the source.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers as _;
use serde_json::Value;

/// One record as read from a CDC topic.
#[derive(Debug, Clone)]
pub struct Event {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Value>,
    /// `None` is a tombstone.
    pub value: Option<Value>,
    /// Kafka headers with UTF-8 values.
    pub headers: Vec<(String, String)>,
}

impl Event {
    pub fn op(&self) -> Option<&str> {
        self.value.as_ref()?.get("op")?.as_str()
    }

    /// The row image the event carries (`after`, or `before` for deletes).
    pub fn row(&self) -> Option<&Value> {
        let value = self.value.as_ref()?;
        match self.op()? {
            "d" => value.get("before"),
            _ => value.get("after"),
        }
    }

    pub fn key_id(&self) -> Option<String> {
        self.key.as_ref()?.get("id")?.as_str().map(str::to_owned)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn lsn(&self) -> Option<i64> {
        self.value.as_ref()?.get("source")?.get("lsn")?.as_i64()
    }
}

/// Consumes `topics` from the beginning with a fresh consumer group until `done` holds for
/// what was read (or `timeout`), and returns every event in arrival order.
pub async fn consume_until(bootstrap: &str, topics: &[String], timeout: Duration, mut done: impl FnMut(&[Event]) -> bool) -> anyhow::Result<Vec<Event>> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("it-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&names)?;
    let mut events = Vec::new();
    let deadline = Instant::now() + timeout;
    let mut stream = consumer.stream();
    while Instant::now() < deadline {
        if done(&events) {
            return Ok(events);
        }
        let next = tokio::time::timeout(Duration::from_millis(500), stream.next()).await;
        let Ok(Some(message)) = next else { continue };
        let message = message?;
        let parse = |bytes: Option<&[u8]>| -> anyhow::Result<Option<Value>> {
            Ok(match bytes {
                Some(b) => Some(serde_json::from_slice(b)?),
                None => None,
            })
        };
        events.push(Event {
            topic: message.topic().to_string(),
            partition: message.partition(),
            offset: message.offset(),
            key: parse(message.key())?,
            value: parse(message.payload())?,
            headers: message
                .headers()
                .map(|h| h.iter().filter_map(|h| Some((h.key.to_string(), String::from_utf8(h.value?.to_vec()).ok()?))).collect())
                .unwrap_or_default(),
        });
    }
    if done(&events) { Ok(events) } else { anyhow::bail!("timed out after {timeout:?} with {} events read", events.len()) }
}

/// Events grouped per (topic, key id), in arrival order.
pub fn by_key(events: &[Event]) -> BTreeMap<(String, String), Vec<&Event>> {
    let mut map: BTreeMap<(String, String), Vec<&Event>> = BTreeMap::new();
    for e in events {
        if let Some(id) = e.key_id() {
            map.entry((e.topic.clone(), id)).or_default().push(e);
        }
    }
    map
}

pub fn cdc_topics() -> Vec<String> {
    harness::config::TABLES.iter().map(|t| harness::config::topic_for(t)).collect()
}
