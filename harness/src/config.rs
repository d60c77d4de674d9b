//! Settings of a stack: what to seed, how many partitions, how Debezium is tuned.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedConfig {
    /// Customers to create before capture starts; addresses (1-3 each), orders (0-3 each)
    /// and items (1-4 per order) follow from it.
    pub customers: u32,
    /// Makes the seed data reproducible.
    pub seed: u64,
}

impl Default for SeedConfig {
    fn default() -> Self {
        Self { customers: 3000, seed: 42 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackConfig {
    /// Folder for every service's data, logs and the stack state.
    pub run_dir: PathBuf,
    /// Partitions per `cdc.public.<table>` topic.
    pub partitions: u32,
    pub seed: SeedConfig,
    /// Debezium's `poll.interval.ms`: it dominates end-to-end latency (500 by default upstream).
    pub debezium_poll_interval_ms: u32,
    /// Start the sink (off for tests that read the topics themselves).
    pub with_sink: bool,
    /// Route the broker, Debezium->PostgreSQL and sink->target links through fault
    /// proxies run by this harness process (network faults need them; they live as long
    /// as the process, so `harness up` leaves them off).
    #[serde(default)]
    pub fault_proxies: bool,
    /// Run Debezium at its own defaults (JSON with schemas, `decimal.handling.mode=precise`,
    /// `time.precision.mode=adaptive`) and give the sink no `[source]` settings, as a new
    /// user would; only `value.converter.replace.null.with.default=false` stays set.
    #[serde(default)]
    pub debezium_defaults: bool,
}

impl StackConfig {
    pub fn new(run_dir: impl Into<PathBuf>) -> Self {
        Self {
            run_dir: run_dir.into(),
            partitions: 3,
            seed: SeedConfig::default(),
            debezium_poll_interval_ms: 10,
            with_sink: true,
            fault_proxies: false,
            debezium_defaults: false,
        }
    }
}

/// Topics of the pipeline.
pub const TABLES: [&str; 4] = ["customer", "address", "orders", "order_item"];
pub const TOPIC_PREFIX: &str = "cdc";
pub const DLQ_TOPIC: &str = "cdc.dlq";

/// Names every backend's pipeline uses (local processes, containers; an external stack's
/// endpoints file may name its own group and slot).
/// The connector's replication slot in the source.
pub const SLOT_NAME: &str = "cdc_slot";
/// The publication the connector streams.
pub const PUBLICATION_NAME: &str = "cdc_publication";
/// The sink's consumer group.
pub const GROUP_ID: &str = "cdc-sink";
/// The connector's name (`debezium.name`; registered under it in Kafka Connect, and the
/// launcher serves Connect's REST subset under it).
pub const CONNECTOR_NAME: &str = "cdc-harness";
/// The source database of a stack the harness starts.
pub const SOURCE_DB: &str = "app";
/// The sink's target database of a stack the harness starts.
pub const TARGET_DB: &str = "sink";

pub fn topic_for(table: &str) -> String {
    format!("{TOPIC_PREFIX}.public.{table}")
}

/// A captured table Debezium's heartbeat writes to (`heartbeat.action.query`): while the
/// workload's tables are idle and the rest of the database writes, its changes give the
/// connector a newer position to confirm, so the slot releases WAL instead of holding it.
pub const HEARTBEAT_TABLE: &str = "cdc_heartbeat";
/// Where Debezium writes its heartbeat records (`topic.heartbeat.prefix` + `.` + prefix).
pub const HEARTBEAT_TOPIC: &str = "__debezium-heartbeat.cdc";
/// How often the heartbeat fires.
pub const HEARTBEAT_INTERVAL_MS: u32 = 5000;

/// The statement the heartbeat runs in the source (`schema`: where the tables live).
pub fn heartbeat_action_query(schema: &str) -> String {
    format!("INSERT INTO {schema}.{HEARTBEAT_TABLE} (id, beat_at) VALUES (1, now()) ON CONFLICT (id) DO UPDATE SET beat_at = now()")
}

/// Debezium's `table.include.list`: the workload's tables and the heartbeat table.
pub fn captured_tables(schema: &str) -> Vec<String> {
    TABLES.iter().copied().chain([HEARTBEAT_TABLE]).map(|t| format!("{schema}.{t}")).collect()
}

/// Every topic a stack's broker needs before Debezium and the sink start (tansu creates
/// none on first use): the tables', the heartbeat table's and Debezium's heartbeat topic,
/// and the dead-letter topic.
pub fn pipeline_topics() -> Vec<String> {
    let mut topics: Vec<String> = TABLES.iter().chain([&HEARTBEAT_TABLE]).map(|t| topic_for(t)).collect();
    topics.push(HEARTBEAT_TOPIC.to_string());
    topics.push(DLQ_TOPIC.to_string());
    topics
}
