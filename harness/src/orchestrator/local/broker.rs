//! The Kafka-API broker for the local backend: tansu with durable sqlite storage in the run
//! folder (survives kill -9). Topics are created explicitly: tansu does not auto-create.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

use super::process::{self, ProcessHandle};
use crate::orchestrator::wait::{NotReady, WaitFor};
use crate::orchestrator::{ServiceError, ServiceKind};

pub struct BrokerLayout {
    pub dir: PathBuf,
    pub log: PathBuf,
}

/// The broker's sqlite storage, relative to `BrokerLayout::dir` (its working directory).
const STORAGE_FILE: &str = "tansu.db";

impl BrokerLayout {
    pub fn new(run_dir: &Path) -> Self {
        Self { dir: run_dir.join("broker"), log: run_dir.join("logs").join("broker.log") }
    }

    pub fn storage(&self) -> PathBuf {
        self.dir.join(STORAGE_FILE)
    }
}

fn err(reason: impl Into<String>) -> ServiceError {
    ServiceError::Setup { service: ServiceKind::Broker, reason: reason.into() }
}

/// Starts tansu listening on `port` and advertising `advertised` (a fault proxy's port
/// when the broker link may be broken; clients connect to what the broker advertises).
pub fn start(tansu: &Path, layout: &BrokerLayout, port: u16, advertised: u16) -> Result<ProcessHandle, ServiceError> {
    start_with(tansu, layout, port, advertised, false)
}

/// `start`, with tansu's `--authentication` (SASL required, users from its storage) if
/// `authentication`.
pub fn start_with(tansu: &Path, layout: &BrokerLayout, port: u16, advertised: u16, authentication: bool) -> Result<ProcessHandle, ServiceError> {
    std::fs::create_dir_all(&layout.dir).map_err(|e| err(format!("{}: {e}", layout.dir.display())))?;
    let mut cmd = Command::new(tansu);
    cmd.current_dir(&layout.dir)
        .arg("broker")
        .args(["--cluster-id", "cdc-harness"])
        .arg(format!("--listener-url=tcp://127.0.0.1:{port}"))
        .arg(format!("--advertised-listener-url=tcp://127.0.0.1:{advertised}"))
        // Relative to the working directory: the broker's data stays in the run folder.
        .arg(format!("--storage-engine=sqlite://{STORAGE_FILE}"))
        .env("RUST_LOG", "warn");
    if authentication {
        cmd.arg("--authentication");
    }
    process::spawn(cmd, &layout.log).map_err(|e| ServiceError::Start { service: ServiceKind::Broker, reason: e.to_string() })
}

pub fn client_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap).set("socket.timeout.ms", "5000");
    config
}

/// Waits until the broker answers a metadata request and its storage has the header index
/// (see `index_headers`).
pub async fn wait_ready(bootstrap: &str, handle: &ProcessHandle, layout: &BrokerLayout, timeout: Duration) -> Result<(), ServiceError> {
    let deadline = Instant::now() + timeout;
    answers_metadata(bootstrap, handle, timeout).await?;
    let storage = layout.storage();
    let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(5));
    tokio::task::spawn_blocking(move || index_headers(&storage, remaining))
        .await
        .map_err(|e| err(format!("header index task: {e}")))?
        .map_err(|reason| err(format!("cannot index the broker's header table in {}: {reason}", layout.storage().display())))
}

/// The index tansu 0.6's sqlite schema lacks. Its fetch path reads each record's headers
/// with `... FROM header h WHERE h.topition = ? AND h.offset_id = ?`, and `header` has no
/// index on those columns, so every fetch scans every header ever written: with a
/// `traceparent` header on each change event the broker's CPU grows with the run (30% to
/// 90% of a core in 4 minutes at 100 ops/s, e2e p95 from 80 ms to 5 s). With the index the
/// lookup is a seek and the broker stays flat. Created once the broker has created its
/// schema; `IF NOT EXISTS` makes restarts (and reused storage) a no-op. sqlite re-prepares
/// the broker's statements on the schema change, so it can be added while it runs.
pub const HEADER_INDEX_SQL: &str = "CREATE INDEX IF NOT EXISTS cdc_harness_header_topition_offset ON header (topition, offset_id)";

/// Waits (up to `timeout`) for the broker's `header` table, then creates the index.
pub fn index_headers(storage: &Path, timeout: Duration) -> Result<(), String> {
    let attempt = || -> Result<bool, rusqlite::Error> {
        let db = rusqlite::Connection::open_with_flags(storage, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        db.busy_timeout(Duration::from_secs(5))?;
        let has_table: bool = db.query_row("SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'header'", [], |r| r.get(0))?;
        if has_table {
            db.execute_batch(HEADER_INDEX_SQL)?;
        }
        Ok(has_table)
    };
    let indexed = || match attempt() {
        Ok(true) => Ok(()),
        Ok(false) => Err(NotReady::<String, std::convert::Infallible>::Yet("the broker never created its `header` table".into())),
        Err(e) => {
            tracing::debug!(message = "broker storage not ready for the header index", error = %e);
            Err(NotReady::Yet(e.to_string()))
        }
    };
    crate::orchestrator::wait::poll_blocking(timeout, Duration::from_millis(100), indexed).map_err(|waited| match waited {
        crate::orchestrator::wait::Waited::TimedOut(reason) => reason,
        crate::orchestrator::wait::Waited::Failed(never) => match never {},
    })
}

async fn answers_metadata(bootstrap: &str, handle: &ProcessHandle, timeout: Duration) -> Result<(), ServiceError> {
    WaitFor::new(ServiceKind::Broker, timeout, handle.log.clone())
        .until(|| async {
            if !handle.is_alive() {
                return Err(NotReady::Never(ServiceError::Exited { service: ServiceKind::Broker, log: handle.log.clone(), tail: handle.log_tail(15) }));
            }
            // A client per attempt: one that got metadata naming an advertised address it
            // cannot reach (a broker behind a TLS terminator) has dropped its bootstrap
            // connection and never answers again.
            let consumer: BaseConsumer = client_config(bootstrap).create().map_err(|e| NotReady::Never(err(e.to_string())))?;
            let metadata = tokio::task::block_in_place(|| consumer.fetch_metadata(None, Duration::from_secs(2))).map_err(|e| e.to_string())?;
            if metadata.brokers().is_empty() { Err(NotReady::Yet("metadata lists no broker".into())) } else { Ok(()) }
        })
        .await
}

/// Creates the topics (existing ones are left as they are).
pub async fn create_topics(bootstrap: &str, topics: &[String], partitions: u32) -> Result<(), ServiceError> {
    create_topics_with(&client_config(bootstrap), topics, partitions).await
}

/// Same, with a client of `config` (a broker reached over TLS or SASL).
pub async fn create_topics_with(config: &ClientConfig, topics: &[String], partitions: u32) -> Result<(), ServiceError> {
    let admin: AdminClient<DefaultClientContext> = config.create().map_err(|e| err(e.to_string()))?;
    let new_topics: Vec<NewTopic> = topics.iter().map(|t| NewTopic::new(t, partitions as i32, TopicReplication::Fixed(1))).collect();
    let results = admin
        .create_topics(&new_topics, &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))))
        .await
        .map_err(|e| err(format!("create topics: {e}")))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(err(format!("create topic {topic}: {code}"))),
        }
    }
    Ok(())
}
