//! The CDC verification harness: orchestrates PostgreSQL -> Debezium -> Kafka -> sink,
//! provisions what it needs, and (in later modules) drives load, injects faults, verifies
//! convergence and reports.

pub mod bench;
pub mod campaign;
pub mod config;
pub mod exit;
pub mod faults;
pub mod http;
pub mod load;
pub mod orchestrator;
pub mod provision;
pub mod report;
pub mod run;
pub mod scenario;
pub mod testing;
pub mod verify;
pub mod workload;
