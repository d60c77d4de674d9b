//! Kafka source: one consumer in a group over the Debezium topics. The main loop receives
//! and hands each record to its partition's task (created on first record), so partitions
//! are processed concurrently while each keeps its order. Offsets are stored by the
//! partition task only after the batch is durable (`enable.auto.offset.store=false`) and
//! committed by librdkafka's auto-commit, synchronously on revoke and at shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::config::{ApplyConfig, KafkaConfig};
use crate::handler::{Handler, PartitionState, Record};
use crate::metrics::Metrics;
use crate::model::{Coords, Entity};

type Key = (String, i32);

struct Partition {
    tx: mpsc::UnboundedSender<Record>,
    /// Records queued but not yet taken into a batch.
    depth: Arc<AtomicUsize>,
    task: JoinHandle<()>,
    paused: bool,
}

/// Shared between the consumer callbacks (rebalance, stats, errors) and the main loop.
pub struct SinkContext {
    partitions: Mutex<HashMap<Key, Partition>>,
    metrics: Arc<Metrics>,
    drain_timeout: Duration,
    /// Set once the group assigned us (possibly nothing): part of readiness.
    pub joined: AtomicBool,
    pub broker_up: AtomicBool,
}

impl SinkContext {
    /// Closes the partitions' queues and waits (up to the drain timeout) until their tasks
    /// have written and stored offsets for everything queued. Returns false on timeout.
    fn drain(&self, keys: Option<&[Key]>) -> bool {
        let drained: Vec<(Key, Partition)> = {
            let mut map = self.partitions.lock().expect("partition map");
            let keys: Vec<Key> =
                keys.map_or_else(|| map.keys().cloned().collect(), <[Key]>::to_vec);
            keys.iter().filter_map(|k| map.remove_entry(k)).collect()
        };
        if drained.is_empty() {
            return true;
        }
        let tasks: Vec<JoinHandle<()>> = drained
            .into_iter()
            .map(|((topic, partition), p)| {
                self.metrics.forget_partition(&topic, partition);
                drop(p.tx);
                p.task
            })
            .collect();
        let timeout = self.drain_timeout;
        let wait = async move {
            tokio::time::timeout(timeout, futures::future::join_all(tasks))
                .await
                .is_ok()
        };
        // Callbacks run inside `recv()` on a runtime worker: block_in_place lets the
        // partition tasks progress on the other workers while we wait for them.
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => tokio::task::block_in_place(|| handle.block_on(wait)),
            Err(_) => false,
        }
    }
}

impl ClientContext for SinkContext {
    fn stats(&self, statistics: Statistics) {
        for (name, topic) in &statistics.topics {
            for (id, partition) in &topic.partitions {
                if *id >= 0 && partition.consumer_lag >= 0 && self.is_assigned(name, *id) {
                    self.metrics.consumer_lag(name, *id, partition.consumer_lag);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.metrics.error("kafka");
        if matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::AllBrokersDown)
        ) {
            self.broker_up.store(false, Ordering::Relaxed);
        }
        warn!(message = "kafka client error", %error, reason);
    }
}

impl SinkContext {
    fn is_assigned(&self, topic: &str, partition: i32) -> bool {
        self.partitions
            .lock()
            .expect("partition map")
            .contains_key(&(topic.to_string(), partition))
    }
}

impl ConsumerContext for SinkContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let keys: Vec<Key> = tpl
                .elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect();
            info!(message = "partitions revoked, draining", count = keys.len());
            if !self.drain(Some(&keys)) {
                warn!(message = "drain on revoke timed out; uncommitted events will be redelivered", timeout = ?self.drain_timeout);
            }
            // Nothing stored means nothing to commit: librdkafka answers NoOffset.
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(error) => warn!(message = "commit on revoke failed", %error),
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                info!(message = "partitions assigned", count = tpl.count());
                self.joined.store(true, Ordering::Relaxed);
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => warn!(message = "rebalance error", %error),
        }
        self.metrics
            .assigned_partitions(consumer.assignment().map(|a| a.count()).unwrap_or(0));
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Some(error) = result
            .err()
            .filter(|e| !matches!(e, KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)))
        {
            self.metrics.error("kafka_commit");
            warn!(message = "offset commit failed", %error);
        }
    }
}

pub type SinkConsumer = StreamConsumer<SinkContext>;

pub fn create_consumer(
    config: &KafkaConfig,
    metrics: Arc<Metrics>,
) -> Result<Arc<SinkConsumer>, KafkaError> {
    let context = SinkContext {
        partitions: Mutex::new(HashMap::new()),
        metrics,
        drain_timeout: config.drain_timeout,
        joined: AtomicBool::new(false),
        broker_up: AtomicBool::new(true),
    };
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        // Offsets are stored by hand after the write is durable.
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", config.auto_offset_reset.as_str())
        .set(
            "session.timeout.ms",
            config.session_timeout.as_millis().to_string(),
        )
        .set(
            "statistics.interval.ms",
            config.statistics_interval.as_millis().to_string(),
        )
        .set("enable.partition.eof", "false")
        .set_log_level(RDKafkaLogLevel::Warning);
    for (k, v) in &config.librdkafka {
        client.set(k, v);
    }
    let consumer: SinkConsumer = client.create_with_context(context)?;
    let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    Ok(Arc::new(consumer))
}

/// Drives the consumer until `shutdown` resolves, then drains and commits.
pub struct Source {
    pub consumer: Arc<SinkConsumer>,
    pub handlers: HashMap<String, Arc<Handler>>,
    pub apply: ApplyConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error(
        "in-flight batches did not finish within the drain timeout; their events will be redelivered"
    )]
    DrainTimeout,
}

impl Source {
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), SourceError> {
        tokio::pin!(shutdown);
        let high_water = self.apply.max_batch_size * 4;
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = tick.tick() => self.resume_drained(high_water / 4),
                received = self.consumer.recv() => match received {
                    Ok(message) => {
                        let record = Record {
                            coords: Coords { topic: message.topic().to_string(), partition: message.partition(), offset: message.offset() },
                            key: message.key().map(<[u8]>::to_vec),
                            value: message.payload().map(<[u8]>::to_vec),
                        };
                        drop(message);
                        self.consumer.context().broker_up.store(true, Ordering::Relaxed);
                        self.dispatch(record, high_water);
                    }
                    Err(error) => {
                        self.consumer.context().metrics.error("kafka");
                        warn!(message = "kafka receive error", %error);
                    }
                },
            }
        }
        info!(message = "shutting down: draining partitions");
        let drained = self.consumer.context().drain(None);
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => {
                error!(message = "final commit failed", %error);
                return Err(error.into());
            }
        }
        self.consumer.unsubscribe();
        if drained {
            Ok(())
        } else {
            Err(SourceError::DrainTimeout)
        }
    }

    fn dispatch(&self, record: Record, high_water: usize) {
        let key = (record.coords.topic.clone(), record.coords.partition);
        let mut map = self
            .consumer
            .context()
            .partitions
            .lock()
            .expect("partition map");
        let partition = map
            .entry(key.clone())
            .or_insert_with(|| self.spawn_partition(&key));
        partition.depth.fetch_add(1, Ordering::Relaxed);
        if partition.tx.send(record).is_err() {
            // The task ended (it only does when its queue closes); cannot happen while the
            // partition is in the map, and the record will be redelivered anyway.
            warn!(message = "partition task gone", topic = %key.0, partition = key.1);
        }
        if !partition.paused && partition.depth.load(Ordering::Relaxed) > high_water {
            // Backpressure per partition: a slow entity stops fetching only its partitions.
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&key.0, key.1);
            if self.consumer.pause(&tpl).is_ok() {
                partition.paused = true;
            }
        }
    }

    fn resume_drained(&self, low_water: usize) {
        let mut map = self
            .consumer
            .context()
            .partitions
            .lock()
            .expect("partition map");
        for ((topic, id), partition) in map.iter_mut() {
            if partition.paused && partition.depth.load(Ordering::Relaxed) <= low_water {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(topic, *id);
                if self.consumer.resume(&tpl).is_ok() {
                    partition.paused = false;
                }
            }
        }
    }

    fn spawn_partition(&self, key: &Key) -> Partition {
        let (tx, rx) = mpsc::unbounded_channel();
        let depth = Arc::new(AtomicUsize::new(0));
        // Topics were validated to name a known entity, and there is a handler for each.
        let handler = Entity::from_topic(&key.0)
            .and_then(|_| self.handlers.get(&key.0))
            .cloned();
        let task = tokio::spawn(run_partition(
            handler,
            Arc::clone(&self.consumer),
            rx,
            Arc::clone(&depth),
            key.clone(),
            self.apply.clone(),
        ));
        Partition {
            tx,
            depth,
            task,
            paused: false,
        }
    }
}

async fn run_partition(
    handler: Option<Arc<Handler>>,
    consumer: Arc<SinkConsumer>,
    mut rx: mpsc::UnboundedReceiver<Record>,
    depth: Arc<AtomicUsize>,
    (topic, partition): Key,
    apply: ApplyConfig,
) {
    let Some(handler) = handler else {
        error!(
            message = "no handler for topic; its records are not consumed",
            topic, partition
        );
        return;
    };
    let mut state = PartitionState::default();
    let mut batch = Vec::with_capacity(apply.max_batch_size);
    let mut open = true;
    while open {
        let Some(first) = rx.recv().await else { break };
        batch.push(first);
        let deadline = Instant::now() + apply.max_batch_wait;
        while batch.len() < apply.max_batch_size {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(r)) => batch.push(r),
                        Ok(None) => {
                            open = false;
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
        }
        depth.fetch_sub(batch.len(), Ordering::Relaxed);
        handler.process(&batch, &mut state).await;
        let last = batch
            .last()
            .map(|r| r.coords.offset)
            .expect("batch is not empty");
        // librdkafka stores last + 1, the next offset to consume.
        if let Err(error) = consumer.store_offset(&topic, partition, last) {
            warn!(message = "storing offset failed (partition no longer assigned?)", %error, topic, partition, offset = last);
        }
        batch.clear();
    }
}
