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
}

impl StackConfig {
    pub fn new(run_dir: impl Into<PathBuf>) -> Self {
        Self { run_dir: run_dir.into(), partitions: 3, seed: SeedConfig::default(), debezium_poll_interval_ms: 10, with_sink: true, fault_proxies: false }
    }
}

/// Topics of the pipeline.
pub const TABLES: [&str; 4] = ["customer", "address", "orders", "order_item"];
pub const TOPIC_PREFIX: &str = "cdc";
pub const DLQ_TOPIC: &str = "cdc.dlq";

pub fn topic_for(table: &str) -> String {
    format!("{TOPIC_PREFIX}.public.{table}")
}
