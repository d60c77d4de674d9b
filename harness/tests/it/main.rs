//! Integration tests on the real local stack (PostgreSQL, tansu, Debezium, sink).

mod pipeline;
mod resilience;
mod support;
mod teardown;
mod verify;
