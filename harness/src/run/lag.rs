//! Consumer lag of the sink's group, measured at the broker (high watermark minus the
//! group's committed offset, per partition), independently of what the sink reports.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

pub struct LagMeter {
    consumer: BaseConsumer,
    topics: Vec<String>,
    partitions: i32,
}

impl LagMeter {
    /// A client that reads the group's committed offsets without joining the group.
    pub fn new(mut client: ClientConfig, group: &str, topics: Vec<String>, partitions: u32) -> Result<Self, rdkafka::error::KafkaError> {
        // librdkafka backs off up to 10 s between reconnects by default: after a broker
        // restart the lag would stay unmeasured for that long, and an unmeasured second
        // cannot count as recovered, so the observer's own backoff would be reported as the
        // pipeline's recovery. 1 s is the Java client's default.
        let consumer = client
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("socket.timeout.ms", "3000")
            .set("reconnect.backoff.ms", "100")
            .set("reconnect.backoff.max.ms", "1000")
            .create()?;
        Ok(Self { consumer, topics, partitions: partitions as i32 })
    }

    /// Partitions of `topic` as the broker's metadata has them (blocking).
    pub fn partitions_of(client: &ClientConfig, topic: &str) -> Result<u32, rdkafka::error::KafkaError> {
        let consumer: BaseConsumer = client.create()?;
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        Ok(metadata.topics().first().map(|t| t.partitions().len() as u32).unwrap_or(0))
    }

    /// `topic/partition` -> lag (blocking: call from a blocking context).
    pub fn measure(&self) -> Result<BTreeMap<String, u64>, rdkafka::error::KafkaError> {
        Ok(self.positions()?.into_iter().map(|(tp, (committed, high))| (tp, (high - committed).max(0) as u64)).collect())
    }

    /// `topic/partition` -> (the group's committed offset, the high watermark); a
    /// partition with nothing committed counts from its log start (blocking).
    pub fn positions(&self) -> Result<BTreeMap<String, (i64, i64)>, rdkafka::error::KafkaError> {
        let timeout = Duration::from_secs(3);
        let mut tpl = TopicPartitionList::new();
        for t in &self.topics {
            for p in 0..self.partitions {
                tpl.add_partition(t, p);
            }
        }
        let committed = self.consumer.committed_offsets(tpl, timeout)?;
        let mut out = BTreeMap::new();
        for element in committed.elements() {
            let (low, high) = self.consumer.fetch_watermarks(element.topic(), element.partition(), timeout)?;
            let position = match element.offset() {
                Offset::Offset(o) => o,
                // Nothing committed yet: everything from the start of the log is pending.
                _ => low,
            };
            out.insert(format!("{}/{}", element.topic(), element.partition()), (position, high));
        }
        Ok(out)
    }
}
