//! PostgreSQL target: `<entity>_materialized` tables, one UNNEST upsert per batch.

mod config;
mod service;
mod sink;

pub use config::PostgresConfig;
pub use service::class_of;
pub use sink::{PostgresSink, table_name};
