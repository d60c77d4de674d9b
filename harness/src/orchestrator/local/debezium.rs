//! Debezium for the local backend: the real Postgres connector in Debezium's embedded
//! engine, run by the launcher kept in `harness/launcher/` (Kafka Connect's REST server
//! cannot start from the jars available here). The launcher produces every event to the
//! broker with acks=all and commits source offsets only after the broker acknowledged them.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::process::{self, ProcessHandle};
use crate::config::{TABLES, TOPIC_PREFIX};
use crate::orchestrator::{PgEndpoint, ServiceError, ServiceKind};

pub const SLOT_NAME: &str = "cdc_slot";
pub const PUBLICATION_NAME: &str = "cdc_publication";
const LAUNCHER_SOURCE: &str = include_str!("../../../launcher/DebeziumLauncher.java");

pub struct DebeziumLayout {
    pub dir: PathBuf,
    pub log: PathBuf,
    pub properties: PathBuf,
    pub offsets: PathBuf,
}

impl DebeziumLayout {
    pub fn new(run_dir: &Path) -> Self {
        let dir = run_dir.join("debezium");
        Self {
            properties: dir.join("launcher.properties"),
            offsets: dir.join("offsets.dat"),
            log: run_dir.join("logs").join("debezium.log"),
            dir,
        }
    }
}

fn err(reason: impl Into<String>) -> ServiceError {
    ServiceError::Setup { service: ServiceKind::Debezium, reason: reason.into() }
}

/// Tunables of the connector that scenarios may change.
#[derive(Debug, Clone)]
pub struct DebeziumSettings {
    pub poll_interval_ms: u32,
    pub status_port: u16,
}

/// Writes the launcher and its properties (0600: they hold the database password).
pub fn configure(layout: &DebeziumLayout, pg: &PgEndpoint, kafka: &str, settings: &DebeziumSettings) -> Result<(), ServiceError> {
    fs::create_dir_all(&layout.dir).map_err(|e| err(format!("{}: {e}", layout.dir.display())))?;
    fs::write(layout.dir.join("DebeziumLauncher.java"), LAUNCHER_SOURCE).map_err(|e| err(e.to_string()))?;
    let tables: Vec<String> = TABLES.iter().map(|t| format!("public.{t}")).collect();
    let mut props = String::from("# Written by the harness; holds a credential, keep private.\n");
    let mut set = |k: &str, v: &str| {
        let _ = writeln!(props, "{k}={v}");
    };
    set("debezium.name", "cdc-harness");
    set("debezium.connector.class", "io.debezium.connector.postgresql.PostgresConnector");
    set("debezium.offset.storage", "org.apache.kafka.connect.storage.FileOffsetBackingStore");
    set("debezium.offset.storage.file.filename", &layout.offsets.display().to_string());
    set("debezium.offset.flush.interval.ms", "1000");
    set("debezium.database.hostname", &pg.host);
    set("debezium.database.port", &pg.port.to_string());
    set("debezium.database.user", &pg.user);
    set("debezium.database.password", pg.password.expose());
    set("debezium.database.dbname", &pg.source_db);
    set("debezium.topic.prefix", TOPIC_PREFIX);
    set("debezium.plugin.name", "pgoutput");
    set("debezium.slot.name", SLOT_NAME);
    set("debezium.publication.name", PUBLICATION_NAME);
    set("debezium.publication.autocreate.mode", "filtered");
    set("debezium.table.include.list", &tables.join(","));
    set("debezium.snapshot.mode", "initial");
    set("debezium.tombstones.on.delete", "true");
    set("debezium.decimal.handling.mode", "string");
    set("debezium.time.precision.mode", "adaptive_time_microseconds");
    set("debezium.poll.interval.ms", &settings.poll_interval_ms.to_string());
    set("debezium.key.converter.schemas.enable", "false");
    set("debezium.value.converter.schemas.enable", "false");
    set("debezium.converter.schemas.enable", "false");
    set("kafka.bootstrap.servers", kafka);
    set("kafka.acks", "all");
    set("kafka.enable.idempotence", "false");
    set("kafka.linger.ms", "1");
    set("kafka.delivery.timeout.ms", "120000");
    set("kafka.max.in.flight.requests.per.connection", "1");
    set("launcher.status.port", &settings.status_port.to_string());
    fs::write(&layout.properties, props).map_err(|e| err(e.to_string()))?;
    fs::set_permissions(&layout.properties, fs::Permissions::from_mode(0o600)).map_err(|e| err(e.to_string()))?;
    Ok(())
}

pub fn start(java: &Path, libs: &Path, layout: &DebeziumLayout) -> Result<ProcessHandle, ServiceError> {
    let mut cmd = Command::new(java);
    cmd.current_dir(&layout.dir)
        .args(["-Xms128m", "-Xmx768m", "-XX:+UseSerialGC", "-cp"])
        .arg(format!("{}/*", libs.display()))
        .arg(layout.dir.join("DebeziumLauncher.java"))
        .arg(&layout.properties);
    process::spawn(cmd, &layout.log).map_err(|e| ServiceError::Start { service: ServiceKind::Debezium, reason: e.to_string() })
}

/// What the launcher reports on `GET /status`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct LauncherStatus {
    pub state: String,
    pub snapshot_completed: bool,
    pub streaming_connected: bool,
    pub records_sent: u64,
    pub last_error: Option<String>,
}

pub async fn fetch_status(url: &str) -> Result<LauncherStatus, String> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().map_err(|e| e.to_string())?;
    let response = client.get(url).send().await.map_err(|e| e.to_string())?;
    response.json::<LauncherStatus>().await.map_err(|e| e.to_string())
}

/// Waits until streaming is connected and, on the first start, the initial snapshot is
/// complete (a restart resumes from its offsets and takes no snapshot).
pub async fn wait_ready(status_url: &str, handle: &ProcessHandle, require_snapshot: bool, timeout: Duration) -> Result<LauncherStatus, ServiceError> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        if !handle.is_alive() {
            return Err(ServiceError::Exited { service: ServiceKind::Debezium, log: handle.log.clone(), tail: handle.log_tail(25) });
        }
        match fetch_status(status_url).await {
            Ok(status) if status.streaming_connected && (status.snapshot_completed || !require_snapshot) => return Ok(status),
            Ok(status) if status.state == "failed" => {
                return Err(ServiceError::Exited {
                    service: ServiceKind::Debezium,
                    log: handle.log.clone(),
                    tail: status.last_error.unwrap_or_default(),
                });
            }
            Ok(status) => last = format!("state {}, snapshot_completed {}, streaming_connected {}", status.state, status.snapshot_completed, status.streaming_connected),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(ServiceError::NotReady { service: ServiceKind::Debezium, waited: timeout, reason: last, log: handle.log.clone() })
}
