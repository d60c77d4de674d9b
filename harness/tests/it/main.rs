//! Integration tests on the real local stack (PostgreSQL, tansu, Debezium, sink).

mod k6;
mod pipeline;
mod report;
mod resilience;
mod support;
mod teardown;
mod verify;
