//! Poison messages: events the sink must route to its dead-letter topic (and then move
//! on) instead of crashing or stalling.

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};

/// Produces `count` bad events to the topic of `table`, cycling through the kinds of
/// poison: malformed JSON, an unknown op, a rule-breaking value (bad email/uuid). Returns
/// where each landed (partition, offset), to reconcile them one by one with the DLQ.
pub async fn inject(endpoints: &crate::orchestrator::Endpoints, table: &str, count: u32) -> Result<Vec<(i32, i64)>, rdkafka::error::KafkaError> {
    let producer: FutureProducer = endpoints.kafka_config().set("message.timeout.ms", "30000").create()?;
    let topic = endpoints.topic(table);
    let mut sent = Vec::new();
    for i in 0..count {
        let id = uuid::Uuid::new_v4();
        let key = format!("{{\"id\":\"{id}\"}}");
        let value = match i % 3 {
            0 => "{\"before\":null,\"after\":{\"id\":".to_string(),
            1 => format!("{{\"before\":null,\"after\":{{\"id\":\"{id}\"}},\"op\":\"x\",\"source\":{{\"lsn\":1,\"ts_ms\":0,\"table\":\"{table}\"}}}}"),
            _ => format!(
                "{{\"before\":null,\"after\":{{\"id\":\"not-a-uuid\",\"email\":\"nope\",\"status\":\"zombie\"}},\"op\":\"c\",\"source\":{{\"lsn\":1,\"ts_ms\":0,\"table\":\"{table}\"}}}}"
            ),
        };
        let delivery = producer.send(FutureRecord::to(&topic).key(&key).payload(&value), Duration::from_secs(30)).await.map_err(|(e, _)| e)?;
        sent.push((delivery.partition, delivery.offset));
    }
    Ok(sent)
}
