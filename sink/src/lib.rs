//! The CDC sink: Debezium change events from Kafka, materialized into PostgreSQL or
//! MongoDB idempotently (version-guarded by the source LSN), validated, with a
//! dead-letter topic. See README.md for configuration, table layout and metrics.

pub mod app;
pub mod bench;
pub mod config;
pub mod decode;
pub mod dlq;
pub mod http;
mod internal_events;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod retry;
pub mod schema;
pub mod source;
pub mod targets;
pub mod telemetry;
pub mod validation;
