//! Integration tests on the real local stack (PostgreSQL, tansu, Debezium, sink).

mod bench;
mod campaign;
mod chaos;
mod default_setups;
mod docker;
mod external;
mod faults;
mod k6;
mod live;
mod observability;
mod pipeline;
mod replica_identity;
mod report;
mod resilience;
mod runs;
mod scenarios;
mod support;
mod teardown;
mod tls;
mod type_changes;
mod verify;
mod verify_mongo;
