//! Integration tests against real services: a private PostgreSQL (harness helper), the
//! tansu broker, and MongoDB when `MONGODB_URI` is set.

mod binary;
mod broker_restart;
mod common;
mod delivery_props;
mod fixtures;
mod mongo;
mod postgres_apply;
mod rebalance;
mod target_refusal;
mod telemetry;
mod throughput;
mod tls;
