//! Integration tests on the real local stack (PostgreSQL, tansu, Debezium, sink).

mod faults;
mod k6;
mod pipeline;
mod report;
mod resilience;
mod scenarios;
mod support;
mod teardown;
mod verify;
