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
use crate::orchestrator::{ServiceError, ServiceKind};

pub struct BrokerLayout {
    pub dir: PathBuf,
    pub log: PathBuf,
}

impl BrokerLayout {
    pub fn new(run_dir: &Path) -> Self {
        Self { dir: run_dir.join("broker"), log: run_dir.join("logs").join("broker.log") }
    }
}

fn err(reason: impl Into<String>) -> ServiceError {
    ServiceError::Setup { service: ServiceKind::Broker, reason: reason.into() }
}

/// Starts tansu listening on `port` and advertising `advertised` (a fault proxy's port
/// when the broker link may be broken; clients connect to what the broker advertises).
pub fn start(tansu: &Path, layout: &BrokerLayout, port: u16, advertised: u16) -> Result<ProcessHandle, ServiceError> {
    std::fs::create_dir_all(&layout.dir).map_err(|e| err(format!("{}: {e}", layout.dir.display())))?;
    let mut cmd = Command::new(tansu);
    cmd.current_dir(&layout.dir)
        .arg("broker")
        .args(["--cluster-id", "cdc-harness"])
        .arg(format!("--listener-url=tcp://127.0.0.1:{port}"))
        .arg(format!("--advertised-listener-url=tcp://127.0.0.1:{advertised}"))
        // Relative to the working directory: the broker's data stays in the run folder.
        .arg("--storage-engine=sqlite://tansu.db")
        .env("RUST_LOG", "warn");
    process::spawn(cmd, &layout.log).map_err(|e| ServiceError::Start { service: ServiceKind::Broker, reason: e.to_string() })
}

pub fn client_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap).set("socket.timeout.ms", "5000");
    config
}

/// Waits until the broker answers a metadata request.
pub async fn wait_ready(bootstrap: &str, handle: &ProcessHandle, timeout: Duration) -> Result<(), ServiceError> {
    let deadline = Instant::now() + timeout;
    let consumer: BaseConsumer = client_config(bootstrap).create().map_err(|e| err(e.to_string()))?;
    let mut last_error = String::new();
    while Instant::now() < deadline {
        if !handle.is_alive() {
            return Err(ServiceError::Exited { service: ServiceKind::Broker, log: handle.log.clone(), tail: handle.log_tail(15) });
        }
        let result = tokio::task::block_in_place(|| consumer.fetch_metadata(None, Duration::from_secs(2)));
        match result {
            Ok(metadata) if !metadata.brokers().is_empty() => return Ok(()),
            Ok(_) => last_error = "metadata lists no broker".into(),
            Err(e) => last_error = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(ServiceError::NotReady { service: ServiceKind::Broker, waited: timeout, reason: last_error, log: handle.log.clone() })
}

/// Creates the topics (existing ones are left as they are).
pub async fn create_topics(bootstrap: &str, topics: &[String], partitions: u32) -> Result<(), ServiceError> {
    let admin: AdminClient<DefaultClientContext> = client_config(bootstrap).create().map_err(|e| err(e.to_string()))?;
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
