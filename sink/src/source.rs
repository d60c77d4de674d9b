//! Kafka source: one consumer in a group over the Debezium topics. The main loop receives
//! and hands each record to its partition's task (created on first record), so partitions
//! are processed concurrently while each keeps its order. Offsets are stored by the
//! partition task only after the batch is durable (`enable.auto.offset.store=false`) and
//! committed by librdkafka's auto-commit, on revoke and (synchronously) at shutdown.
//!
//! The group membership is watched: `GroupState` knows whether an assignment is held (the
//! last rebalance event was an assign) and since when none is. `/readyz` turns not ready
//! when none is held past `assignment_grace`, and a consumer holding none past
//! `rejoin_timeout` while the broker answers metadata is recreated and subscribes again
//! (a broker restart can leave librdkafka's group state without an assignment and
//! without the rejoin that would bring it back).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Headers as _, Message};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::config::{ApplyConfig, KafkaConfig};
use crate::http::Stalls;
use crate::internal_events::{
    BatchPanicked, ConsumerRecreateFailed, ConsumerRecreated, DrainTimedOut, InternalEvent as _, KafkaClientError, KafkaReceiveError, OffsetCommitFailed, Stall,
};
use crate::metrics::Metrics;
use crate::model::{Coords, Entity};
use crate::pipeline::{Handler, PartitionState, Record};
use crate::retry::Backoff;
use crate::telemetry::TraceHeaders;

type Key = (String, i32);

struct Partition {
    tx: mpsc::UnboundedSender<Record>,
    /// Records queued but not yet taken into a batch.
    depth: Arc<AtomicUsize>,
    /// Bytes of the records queued or in the batch being processed.
    bytes: Arc<AtomicUsize>,
    task: JoinHandle<()>,
    paused: bool,
}

/// Group membership as seen from the rebalance callbacks; outlives consumer recreation.
pub struct GroupState {
    inner: Mutex<GroupInner>,
}

struct GroupInner {
    /// The group assigned us something (possibly nothing) at least once.
    joined: bool,
    /// The last rebalance event was an assignment (and it was not lost since).
    holding: bool,
    /// Partitions in that assignment.
    partitions: usize,
    /// When `holding` last turned false (or the state was created).
    unassigned_since: std::time::Instant,
}

impl Default for GroupState {
    fn default() -> Self {
        Self { inner: Mutex::new(GroupInner { joined: false, holding: false, partitions: 0, unassigned_since: std::time::Instant::now() }) }
    }
}

impl GroupState {
    fn lock(&self) -> std::sync::MutexGuard<'_, GroupInner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn joined(&self) -> bool {
        self.lock().joined
    }

    /// How long no assignment has been held, None while one is.
    pub fn unassigned_for(&self) -> Option<Duration> {
        let g = self.lock();
        (!g.holding).then(|| g.unassigned_since.elapsed())
    }

    pub(crate) fn assigned(&self, partitions: usize) {
        let mut g = self.lock();
        g.joined = true;
        g.holding = true;
        g.partitions = partitions;
    }

    pub(crate) fn unassigned(&self) {
        let mut g = self.lock();
        if g.holding {
            g.holding = false;
            g.unassigned_since = std::time::Instant::now();
        }
        g.partitions = 0;
    }

    /// Partitions the last assignment gave us, None when none is held.
    fn held_partitions(&self) -> Option<usize> {
        let g = self.lock();
        g.holding.then_some(g.partitions)
    }
}

/// Shared between the consumer callbacks (rebalance, stats, errors) and the main loop.
pub struct SinkContext {
    partitions: Mutex<HashMap<Key, Partition>>,
    metrics: Arc<Metrics>,
    drain_timeout: Duration,
    pub group: Arc<GroupState>,
    pub broker_up: AtomicBool,
    /// Set when the watchdog replaced this consumer: its closing callbacks no longer
    /// speak for the group membership.
    retired: AtomicBool,
    /// Where partition tasks report that they cannot make progress (readiness).
    stalls: Arc<crate::http::Stalls>,
}

impl SinkContext {
    /// Closes the partitions' queues and waits (up to the drain timeout) until their tasks
    /// have written and stored offsets for everything queued. Returns false on timeout.
    fn drain(&self, keys: Option<&[Key]>) -> bool {
        let drained: Vec<(Key, Partition)> = {
            let mut map = self.partitions.lock().expect("partition map");
            let keys: Vec<Key> = keys.map_or_else(|| map.keys().cloned().collect(), <[Key]>::to_vec);
            keys.iter().filter_map(|k| map.remove_entry(k)).collect()
        };
        if drained.is_empty() {
            return true;
        }
        let keys: Vec<Key> = drained.iter().map(|(k, _)| k.clone()).collect();
        let tasks: Vec<JoinHandle<()>> = drained
            .into_iter()
            .map(|(_, p)| {
                drop(p.tx);
                p.task
            })
            .collect();
        let timeout = self.drain_timeout;
        // A task given up on is aborted: it must not write or dead-letter after its
        // partitions were handed over (what it had not stored is redelivered).
        let aborts: Vec<tokio::task::AbortHandle> = tasks.iter().map(JoinHandle::abort_handle).collect();
        let metrics = Arc::clone(&self.metrics);
        let wait = async move {
            let finished = tokio::time::timeout(timeout, futures::future::join_all(tasks)).await.is_ok();
            if !finished {
                let stuck = aborts.iter().filter(|a| !a.is_finished()).count();
                for abort in &aborts {
                    abort.abort();
                }
                DrainTimedOut { tasks: stuck, timeout }.emit(&metrics);
            }
            finished
        };
        // Callbacks run inside `recv()` on a runtime worker: block_in_place lets the
        // partition tasks progress on the other workers while we wait for them.
        let finished = match tokio::runtime::Handle::try_current() {
            Ok(handle) => tokio::task::block_in_place(|| handle.block_on(wait)),
            Err(_) => false,
        };
        // Once its task is gone, a partition that is no longer ours says nothing about this
        // sink: a stall it marked (an aborted task never clears its own) must not keep
        // readiness red, nor its series linger. Its new owner reports it again if it must.
        for (topic, partition) in &keys {
            self.stalls.clear(topic, *partition);
            self.metrics.forget_partition(topic, *partition);
        }
        finished
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
        if matches!(error.rdkafka_error_code(), Some(RDKafkaErrorCode::AllBrokersDown)) {
            self.broker_up.store(false, Ordering::Relaxed);
        }
        KafkaClientError { error: &error, reason }.emit(&self.metrics);
    }
}

impl SinkContext {
    fn is_assigned(&self, topic: &str, partition: i32) -> bool {
        self.partitions.lock().expect("partition map").contains_key(&(topic.to_string(), partition))
    }
}

impl ConsumerContext for SinkContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let keys: Vec<Key> = tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
            let lost = consumer.assignment_lost();
            info!(message = "partitions revoked, draining", count = keys.len(), lost);
            if !self.drain(Some(&keys)) {
                warn!(message = "drain on revoke timed out; uncommitted events will be redelivered", timeout = ?self.drain_timeout);
            }
            // A lost assignment (session expired, broker gone) cannot be committed any more.
            // Otherwise commit what the drain stored. Asynchronously: this runs inside the
            // poll, and a synchronous commit waits without limit for a coordinator that may
            // be gone (the broker restarting), which would stall the consumer for good.
            // librdkafka also commits stored offsets of unassigned partitions itself.
            if !lost {
                match consumer.commit_consumer_state(CommitMode::Async) {
                    Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                    Err(error) => warn!(message = "commit on revoke failed", %error),
                }
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if self.retired.load(Ordering::Relaxed) {
            return;
        }
        match rebalance {
            Rebalance::Assign(tpl) => {
                info!(message = "partitions assigned", count = tpl.count());
                // A partition paused by backpressure before a revoke must not come back
                // paused: its new task starts unpaused.
                if tpl.count() > 0 {
                    if let Err(error) = consumer.resume(tpl) {
                        warn!(message = "resuming assigned partitions failed", %error);
                    }
                }
                self.group.assigned(tpl.count());
            }
            Rebalance::Revoke(_) => self.group.unassigned(),
            Rebalance::Error(error) => {
                // rust-rdkafka unassigns on a rebalance error.
                warn!(message = "rebalance error", %error);
                self.group.unassigned();
            }
        }
        self.metrics.assigned_partitions(consumer.assignment().map(|a| a.count()).unwrap_or(0));
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Some(error) = result.err().filter(|e| !matches!(e, KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset))) {
            OffsetCommitFailed { error: &error }.emit(&self.metrics);
        }
    }
}

pub type SinkConsumer = StreamConsumer<SinkContext>;

/// Whether the consumer of the `generation`-th creation keeps the configured static
/// membership (`group.instance.id`): only the first. A consumer the watchdog recreates
/// (no assignment for `rejoin_timeout`) joins as a dynamic member. Seen on tansu 0.6: a
/// restarted sink that reclaimed its killed predecessor's static identity inherited that
/// member's stale last contact, was evicted for a missed heartbeat seconds after its
/// assignment (revoked as lost), and every later static join, under any identity, waited on
/// a group left without a leader; the coordinator expires stale members and forms a new
/// generation only when a dynamic member joins.
pub fn keeps_static_membership(generation: u32) -> bool {
    generation == 0
}

/// Shared state a consumer reports into; it outlives any one consumer.
pub struct ConsumerShared {
    pub metrics: Arc<Metrics>,
    pub group: Arc<GroupState>,
    pub stalls: Arc<crate::http::Stalls>,
}

pub fn create_consumer(config: &KafkaConfig, shared: &ConsumerShared, generation: u32) -> Result<Arc<SinkConsumer>, KafkaError> {
    let context = SinkContext {
        partitions: Mutex::new(HashMap::new()),
        metrics: Arc::clone(&shared.metrics),
        drain_timeout: config.drain_timeout,
        group: Arc::clone(&shared.group),
        broker_up: AtomicBool::new(true),
        retired: AtomicBool::new(false),
        stalls: Arc::clone(&shared.stalls),
    };
    let mut client = config.client_config();
    client
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        // Offsets are stored by hand after the write is durable.
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", config.auto_offset_reset.as_str())
        .set("session.timeout.ms", config.session_timeout.as_millis().to_string())
        .set("statistics.interval.ms", config.statistics_interval.as_millis().to_string())
        .set("enable.partition.eof", "false")
        // Latency: the broker answers a fetch as soon as one byte is there, and holds an
        // empty fetch at most fetch_wait_max (librdkafka's default 500 ms wait is what a
        // change waits for when it arrives just after an empty fetch was sent).
        .set("fetch.min.bytes", "1")
        .set("fetch.wait.max.ms", config.fetch_wait_max.as_millis().max(1).to_string())
        .set("reconnect.backoff.max.ms", crate::config::RECONNECT_BACKOFF_MAX_MS)
        .set_log_level(RDKafkaLogLevel::Warning);
    for (k, v) in &config.librdkafka {
        if k == "group.instance.id" && !keeps_static_membership(generation) {
            continue;
        }
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
    pub kafka: KafkaConfig,
    pub metrics: Arc<Metrics>,
    pub group: Arc<GroupState>,
    pub stalls: Arc<crate::http::Stalls>,
    /// Consumers created so far after the first (those join as dynamic members).
    pub generation: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("in-flight batches did not finish within the drain timeout; their events will be redelivered")]
    DrainTimeout,
}

impl Source {
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), SourceError> {
        tokio::pin!(shutdown);
        let high_water = self.apply.max_batch_size * 4;
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        let mut watchdog = tokio::time::interval(Duration::from_secs(1));
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_restart: Option<Instant> = None;
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = tick.tick() => self.resume_drained(high_water / 4, self.apply.max_buffered_bytes / 2),
                _ = watchdog.tick() => self.watch_assignment(&mut last_restart).await,
                received = self.consumer.recv() => match received {
                    Ok(message) => {
                        let record = Record {
                            coords: Coords {
                                topic: message.topic().to_string(),
                                partition: message.partition(),
                                offset: message.offset(),
                                timestamp: message.timestamp().to_millis().and_then(chrono::DateTime::from_timestamp_millis),
                            },
                            key: message.key().map(<[u8]>::to_vec),
                            value: message.payload().map(<[u8]>::to_vec),
                            trace: message.headers().and_then(|h| TraceHeaders::from_kafka(h.iter().map(|h| (h.key, h.value)))),
                        };
                        drop(message);
                        self.consumer.context().broker_up.store(true, Ordering::Relaxed);
                        self.dispatch(record, high_water);
                    }
                    Err(error) => {
                        KafkaReceiveError { error: &error }.emit(&self.consumer.context().metrics);
                    }
                },
            }
        }
        info!(message = "shutting down: draining partitions");
        let drained = self.consumer.context().drain(None);
        // Synchronous, but bounded: with the broker gone the commit would wait forever.
        let consumer = Arc::clone(&self.consumer);
        let commit = tokio::task::spawn_blocking(move || {
            let result = consumer.commit_consumer_state(CommitMode::Sync);
            consumer.unsubscribe();
            result
        });
        match tokio::time::timeout(self.kafka.drain_timeout, commit).await {
            Ok(Ok(Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)))) => {}
            Ok(Ok(Err(error))) => {
                error!(message = "final commit failed", %error);
                return Err(error.into());
            }
            Ok(Err(_)) | Err(_) => {
                error!(message = "final commit did not finish within the drain timeout", timeout = ?self.kafka.drain_timeout);
                return Err(SourceError::DrainTimeout);
            }
        }
        if drained { Ok(()) } else { Err(SourceError::DrainTimeout) }
    }

    /// Once a second: notices an assignment librdkafka dropped without a revoke, publishes
    /// the assigned-partitions gauge, and recreates the consumer when it has held no
    /// assignment for `rejoin_timeout` while the broker answers metadata.
    async fn watch_assignment(&mut self, last_restart: &mut Option<Instant>) {
        let actual = self.consumer.assignment().map(|a| a.count()).unwrap_or(0);
        self.metrics.assigned_partitions(actual);
        if actual == 0 && self.group.held_partitions().is_some_and(|n| n > 0) {
            warn!(message = "assignment dropped without a revoke; waiting for the group to assign again");
            self.group.unassigned();
        }
        let Some(unassigned) = self.group.unassigned_for() else {
            return;
        };
        let timeout = self.kafka.rejoin_timeout;
        if unassigned < timeout || last_restart.is_some_and(|t| t.elapsed() < timeout) {
            return;
        }
        let probe = Arc::clone(&self.consumer);
        let topic = self.kafka.topics[0].clone();
        let broker_answers = tokio::task::spawn_blocking(move || probe.fetch_metadata(Some(&topic), Duration::from_secs(5)).is_ok()).await.unwrap_or(false);
        if !broker_answers {
            // Nothing to gain from a new consumer while the broker is away.
            return;
        }
        *last_restart = Some(Instant::now());
        let shared = ConsumerShared { metrics: Arc::clone(&self.metrics), group: Arc::clone(&self.group), stalls: Arc::clone(&self.stalls) };
        let fresh = match create_consumer(&self.kafka, &shared, self.generation + 1) {
            Ok(c) => c,
            Err(error) => {
                ConsumerRecreateFailed { error: &error }.emit(&self.metrics);
                return;
            }
        };
        self.generation += 1;
        ConsumerRecreated { unassigned }.emit(&self.metrics);
        let old = std::mem::replace(&mut self.consumer, fresh);
        old.context().retired.store(true, Ordering::Relaxed);
        // Whatever the old consumer still had queued is written (idempotently) and then
        // redelivered to the new one from the committed offsets.
        if !old.context().drain(None) {
            warn!(message = "draining the old consumer timed out");
        }
        // Closing may wait for the group leave; keep it off the runtime.
        tokio::task::spawn_blocking(move || {
            old.unsubscribe();
            drop(old);
        });
    }

    fn dispatch(&self, record: Record, high_water: usize) {
        let key = (record.coords.topic.clone(), record.coords.partition);
        let mut map = self.consumer.context().partitions.lock().expect("partition map");
        let partition = map.entry(key.clone()).or_insert_with(|| self.spawn_partition(&key));
        partition.depth.fetch_add(1, Ordering::Relaxed);
        let bytes = partition.bytes.fetch_add(record.size(), Ordering::Relaxed) + record.size();
        if partition.tx.send(record).is_err() {
            // The task ended (it only does when its queue closes); cannot happen while the
            // partition is in the map, and the record will be redelivered anyway.
            warn!(message = "partition task gone", topic = %key.0, partition = key.1);
        }
        if !partition.paused && (partition.depth.load(Ordering::Relaxed) > high_water || bytes > self.apply.max_buffered_bytes) {
            // Backpressure per partition, by count and by size: a slow entity stops
            // fetching only its partitions, and a backlog of large events cannot grow
            // memory without bound.
            self.metrics.buffered_bytes(&key.0, key.1, bytes);
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&key.0, key.1);
            if self.consumer.pause(&tpl).is_ok() {
                partition.paused = true;
            }
        }
    }

    fn resume_drained(&self, low_water: usize, low_bytes: usize) {
        let mut map = self.consumer.context().partitions.lock().expect("partition map");
        for ((topic, id), partition) in map.iter_mut() {
            let bytes = partition.bytes.load(Ordering::Relaxed);
            self.metrics.buffered_bytes(topic, *id, bytes);
            if partition.paused && partition.depth.load(Ordering::Relaxed) <= low_water && bytes <= low_bytes {
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
        let bytes = Arc::new(AtomicUsize::new(0));
        // Topics were validated to name a known entity, and there is a handler for each.
        let handler = Entity::from_topic(&key.0).and_then(|_| self.handlers.get(&key.0)).cloned();
        let queue = Queue { rx, depth: Arc::clone(&depth), bytes: Arc::clone(&bytes) };
        let task = tokio::spawn(run_partition(handler, Arc::clone(&self.consumer), queue, key.clone(), self.apply.clone()));
        Partition { tx, depth, bytes, task, paused: false }
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic.downcast_ref::<&str>().map(|s| (*s).to_string()).or_else(|| panic.downcast_ref::<String>().cloned()).unwrap_or_else(|| "a non-text panic".into())
}

/// What supervision drives: the partition's handler.
pub(crate) trait Process: Sync {
    fn process(&self, batch: &[Record], state: &mut PartitionState) -> impl std::future::Future<Output = ()> + Send;
    fn dead_letter_panic(&self, record: &Record, panic: &str, state: &mut PartitionState) -> impl std::future::Future<Output = ()> + Send;
}

impl Process for Handler {
    fn process(&self, batch: &[Record], state: &mut PartitionState) -> impl std::future::Future<Output = ()> + Send {
        Handler::process(self, batch, state)
    }

    fn dead_letter_panic(&self, record: &Record, panic: &str, state: &mut PartitionState) -> impl std::future::Future<Output = ()> + Send {
        Handler::dead_letter_panic(self, record, panic, state)
    }
}

/// Where supervision reports and how long it waits between tries.
pub(crate) struct Supervision<'a> {
    pub stalls: &'a Stalls,
    pub metrics: &'a Metrics,
    pub apply: &'a ApplyConfig,
}

/// Processes a batch. A panic is caught, logged and counted, the partition reported
/// stalled, and the batch processed again one event at a time (effects are idempotent;
/// letters already acknowledged are not sent again). An event that panics alone goes to the
/// DLQ as its own fault -- when the panic is the data's: some other event of the batch got
/// through, or of the topic since the panic, or it is the partition's first lone panic
/// since the topic last moved. When every event panics alone and nothing moves, processing
/// itself is broken (not the data): nothing is dead-lettered, the partition stays stalled
/// (`/readyz` 503 with the panic, `sink_partition_stalled`, an ERROR log each try) and the
/// batch is tried again at the backoff until it goes through.
pub(crate) async fn process_supervised<P: Process>(
    handler: &P,
    with: &Supervision<'_>,
    batch: &[Record],
    state: &mut PartitionState,
    topic: &str,
    partition: i32,
) {
    use futures::FutureExt as _;
    state.lettered.clear();
    let mut backoff = Backoff::new(with.apply);
    let stall = Stall { stalls: with.stalls, metrics: with.metrics, topic, partition };
    let mut systemic = false;
    loop {
        let Err(panic) = std::panic::AssertUnwindSafe(handler.process(batch, state)).catch_unwind().await else {
            with.stalls.progressed(topic);
            if systemic {
                stall.clear();
                info!(message = "processing works again; partition resumed", topic, partition);
            }
            return;
        };
        let why = panic_text(panic.as_ref());
        BatchPanicked { why: &why, topic, partition, first_offset: batch.first().map(|r| r.coords.offset), events: batch.len(), again: systemic }
            .emit(with.metrics);
        if !systemic {
            stall.mark(format!("processing panicked: {why}"));
        }
        let progress_before = with.stalls.progress(topic);
        // What validation remembered may come from the half-done batch.
        state.forget_memory();
        let mut panicked: Vec<(&Record, String)> = Vec::new();
        let mut through = 0usize;
        for record in batch {
            let single = std::slice::from_ref(record);
            match std::panic::AssertUnwindSafe(handler.process(single, state)).catch_unwind().await {
                Ok(()) => through += 1,
                Err(panic) => {
                    panicked.push((record, panic_text(panic.as_ref())));
                    state.forget_memory();
                }
            }
        }
        let progress = with.stalls.progress(topic);
        let lone_again = panicked.len() == 1 && state.panic_letter_at == Some(progress);
        let the_data = through > 0 || progress > progress_before || (panicked.len() == 1 && !lone_again);
        if the_data {
            for (record, why) in &panicked {
                error!(message = "event panicked alone: dead-lettering it", panic = %why, topic, partition, offset = record.coords.offset);
                handler.dead_letter_panic(record, why, state).await;
            }
            if through > 0 {
                with.stalls.progressed(topic);
            }
            state.panic_letter_at = (!panicked.is_empty()).then(|| with.stalls.progress(topic));
            stall.clear();
            return;
        }
        systemic = true;
        let reason = format!("every event panics, not the data's fault ({} of {} alone): {why}; retrying", panicked.len(), batch.len());
        stall.mark(reason.clone());
        error!(message = "processing panics for every event: partition stalled, nothing dead-lettered; retrying", reason = %reason, topic, partition,
            first_offset = batch.first().map(|r| r.coords.offset));
        backoff.wait().await;
    }
}

/// A partition task's end of its queue, with the counters backpressure reads.
struct Queue {
    rx: mpsc::UnboundedReceiver<Record>,
    depth: Arc<AtomicUsize>,
    bytes: Arc<AtomicUsize>,
}

async fn run_partition(handler: Option<Arc<Handler>>, consumer: Arc<SinkConsumer>, queue: Queue, (topic, partition): Key, apply: ApplyConfig) {
    let Queue { mut rx, depth, bytes } = queue;
    let Some(handler) = handler else {
        error!(message = "no handler for topic; its records are not consumed", topic, partition);
        return;
    };
    let mut state = PartitionState::default();
    let supervision = Supervision { stalls: &handler.stalls, metrics: &handler.metrics, apply: &apply };
    let mut batch = Vec::with_capacity(apply.max_batch_size);
    let mut open = true;
    while open {
        let Some(first) = rx.recv().await else { break };
        let mut batch_bytes = first.size();
        batch.push(first);
        let deadline = Instant::now() + apply.max_batch_wait;
        while batch.len() < apply.max_batch_size && batch_bytes < apply.max_batch_bytes {
            match rx.try_recv() {
                Ok(r) => {
                    batch_bytes += r.size();
                    batch.push(r);
                }
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
                Err(mpsc::error::TryRecvError::Empty) => match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(r)) => {
                        batch_bytes += r.size();
                        batch.push(r);
                    }
                    Ok(None) => {
                        open = false;
                        break;
                    }
                    Err(_) => break,
                },
            }
        }
        depth.fetch_sub(batch.len(), Ordering::Relaxed);
        process_supervised(handler.as_ref(), &supervision, &batch, &mut state, &topic, partition).await;
        bytes.fetch_sub(batch_bytes, Ordering::Relaxed);
        let last = batch.last().map(|r| r.coords.offset).expect("batch is not empty");
        // librdkafka stores last + 1, the next offset to consume.
        if let Err(error) = consumer.store_offset(&topic, partition, last) {
            warn!(message = "storing offset failed (partition no longer assigned?)", %error, topic, partition, offset = last);
        }
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Processing that panics on some events: those whose offsets are `poison`, or every
    /// event while `broken` is set (a fault of the processing, not of the data). Letters
    /// are recorded as the handler sends them: once, by offset (`PartitionState::lettered`).
    #[derive(Default)]
    struct Panicking {
        poison: std::collections::HashSet<i64>,
        broken: AtomicBool,
        /// Offset whose letter the whole-batch pass sends before a later step panics.
        letter_then_panic: Option<i64>,
        processed: Mutex<Vec<i64>>,
        letters: Mutex<Vec<i64>>,
    }

    impl Panicking {
        fn send(&self, offset: i64, state: &mut PartitionState) {
            if state.lettered.insert(offset) {
                self.letters.lock().unwrap().push(offset);
            }
        }
    }

    impl Process for Panicking {
        async fn process(&self, batch: &[Record], state: &mut PartitionState) {
            if let (Some(offset), true) = (self.letter_then_panic, batch.len() > 1) {
                self.send(offset, state);
                panic!("a step after the letters panicked");
            }
            assert!(!self.broken.load(Ordering::SeqCst), "processing is broken");
            assert!(!batch.iter().any(|r| self.poison.contains(&r.coords.offset)), "poison event");
            self.processed.lock().unwrap().extend(batch.iter().map(|r| r.coords.offset));
        }

        async fn dead_letter_panic(&self, record: &Record, _panic: &str, state: &mut PartitionState) {
            self.send(record.coords.offset, state);
        }
    }

    fn records(offsets: std::ops::Range<i64>) -> Vec<Record> {
        offsets
            .map(|offset| Record {
                coords: Coords { topic: "cdc.public.customer".into(), partition: 0, offset, timestamp: None },
                key: None,
                value: None,
                trace: None,
            })
            .collect()
    }

    fn apply_config() -> ApplyConfig {
        crate::config::SinkConfig::from_toml(
            "[kafka]\nbrokers = \"x:1\"\ngroup_id = \"g\"\ntopics = [\"cdc.public.customer\"]\ndlq_topic = \"d\"\n[target]\nkind = \"postgres\"\nurl = \"host=x\"\n[http]\nlisten = \"127.0.0.1:0\"\n[apply]\nretry_initial_backoff = \"10ms\"\nretry_max_backoff = \"20ms\"\n",
            [],
        )
        .expect("a valid config")
        .apply
    }

    /// A poison event panics alone: it is dead-lettered, the others are processed, the
    /// stall clears. A panic after letters were sent does not send them again.
    #[tokio::test]
    async fn an_event_that_panics_alone_is_dead_lettered_once() {
        let (stalls, metrics, apply) = (Stalls::default(), Metrics::new(), apply_config());
        let with = Supervision { stalls: &stalls, metrics: &metrics, apply: &apply };
        let handler = Panicking { poison: [2].into(), letter_then_panic: Some(4), ..Panicking::default() };
        let mut state = PartitionState::default();
        process_supervised(&handler, &with, &records(0..6), &mut state, "cdc.public.customer", 0).await;
        assert_eq!(*handler.processed.lock().unwrap(), vec![0, 1, 3, 4, 5]);
        assert_eq!(*handler.letters.lock().unwrap(), vec![4, 2], "the letter sent before the panic is not sent again");
        assert_eq!(stalls.describe(), None);
    }

    /// Processing that panics for every event (not the data's fault) dead-letters nothing:
    /// the partition stays stalled, readiness says why, and it resumes once processing works.
    #[tokio::test]
    async fn a_panic_on_every_event_stalls_instead_of_dead_lettering() {
        let (stalls, metrics, apply) = (Stalls::default(), Metrics::new(), apply_config());
        let handler = Panicking::default();
        handler.broken.store(true, Ordering::SeqCst);
        let batch = records(0..5);
        let supervised = async {
            let with = Supervision { stalls: &stalls, metrics: &metrics, apply: &apply };
            let mut state = PartitionState::default();
            process_supervised(&handler, &with, &batch, &mut state, "cdc.public.customer", 0).await;
        };
        let watch = async {
            while !stalls.describe().is_some_and(|d| d.contains("every event panics")) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let why = stalls.describe().unwrap();
            assert!(why.contains("5 of 5") && why.contains("processing is broken"), "{why}");
            assert!(metrics.render().contains("sink_partition_stalled{topic=\"cdc.public.customer\",partition=\"0\"} 1"), "{}", metrics.render());
            assert!(handler.letters.lock().unwrap().is_empty(), "nothing dead-lettered while every event panics");
            handler.broken.store(false, Ordering::SeqCst);
        };
        tokio::join!(supervised, watch);
        assert!(handler.letters.lock().unwrap().is_empty());
        assert_eq!(*handler.processed.lock().unwrap(), vec![0, 1, 2, 3, 4], "the batch went through once processing worked");
        assert_eq!(stalls.describe(), None);
        // Batches of one event: the first lone panic is taken for poison, a second one with
        // nothing processed in between is not.
        handler.broken.store(true, Ordering::SeqCst);
        let with = Supervision { stalls: &stalls, metrics: &metrics, apply: &apply };
        let mut state = PartitionState::default();
        process_supervised(&handler, &with, &records(10..11), &mut state, "cdc.public.customer", 0).await;
        assert_eq!(*handler.letters.lock().unwrap(), vec![10]);
        let second =
            tokio::time::timeout(Duration::from_millis(300), process_supervised(&handler, &with, &records(11..12), &mut state, "cdc.public.customer", 0)).await;
        assert!(second.is_err(), "a second lone panic without progress stalls");
        assert_eq!(*handler.letters.lock().unwrap(), vec![10]);
        assert!(stalls.describe().is_some_and(|d| d.contains("every event panics")));
    }

    /// A partition whose task is stuck (it marked itself stalled and never returns) is
    /// revoked: the drain gives up on the task and the stall mark goes with the partition, so
    /// readiness no longer reports a partition this sink does not hold.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_revoked_partition_takes_its_stall_mark_with_it() {
        let metrics = Arc::new(Metrics::new());
        let stalls = Arc::new(crate::http::Stalls::default());
        let context = SinkContext {
            partitions: Mutex::new(HashMap::new()),
            metrics: Arc::clone(&metrics),
            drain_timeout: Duration::from_millis(50),
            group: Arc::new(GroupState::default()),
            broker_up: AtomicBool::new(true),
            retired: AtomicBool::new(false),
            stalls: Arc::clone(&stalls),
        };
        let key: Key = ("cdc.public.customer".into(), 3);
        let (tx, _rx) = mpsc::unbounded_channel();
        let task = tokio::spawn({
            let (stalls, metrics) = (Arc::clone(&stalls), Arc::clone(&metrics));
            async move {
                stalls.mark("cdc.public.customer", 3, "stuck on purpose");
                metrics.partition_stalled("cdc.public.customer", 3, true);
                std::future::pending::<()>().await;
            }
        });
        while stalls.describe().is_none() {
            tokio::task::yield_now().await;
        }
        let partition = Partition { tx, depth: Arc::default(), bytes: Arc::default(), task, paused: false };
        context.partitions.lock().unwrap().insert(key.clone(), partition);
        assert!(!context.drain(Some(&[key])), "the stuck task is given up on");
        assert_eq!(stalls.describe(), None, "the stall mark left with the partition");
        assert!(!metrics.render().contains("sink_partition_stalled{"), "{}", metrics.render());
    }
}
