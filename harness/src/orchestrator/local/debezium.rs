//! Debezium for the local backend: the real Postgres connector in Debezium's embedded
//! engine, run by the launcher kept in `harness/launcher/` (Kafka Connect's REST server
//! cannot start from the jars available here). The launcher produces every event to the
//! broker with acks=all and commits source offsets only after the broker acknowledged them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;

use super::process::{self, ProcessHandle};
use crate::config::{CONNECTOR_NAME, PUBLICATION_NAME, SLOT_NAME, TOPIC_PREFIX};
use crate::orchestrator::wait::{NotReady, WaitFor};
use crate::orchestrator::{PgEndpoint, Secret, ServiceError, ServiceKind};

const LAUNCHER_SOURCE: &str = include_str!("../../../launcher/DebeziumLauncher.java");

pub struct DebeziumLayout {
    pub dir: PathBuf,
    pub log: PathBuf,
    pub properties: PathBuf,
    pub offsets: PathBuf,
    /// The launcher's log of broker acknowledgements (see `apply_log::read_acks`).
    pub acks: PathBuf,
}

impl DebeziumLayout {
    pub fn new(run_dir: &Path) -> Self {
        let dir = run_dir.join("debezium");
        Self {
            properties: dir.join("launcher.properties"),
            offsets: dir.join("offsets.dat"),
            acks: dir.join("acks.log"),
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
    /// Where the status endpoint listens: loopback for a child process, `0.0.0.0` in a
    /// container whose port is published.
    pub status_address: &'static str,
    /// Debezium's own defaults for the event encoding (see `StackConfig::debezium_defaults`).
    pub defaults: bool,
}

/// Environment variable through which the launcher receives the database password.
pub const PASSWORD_ENV: &str = "CDC_PG_PASSWORD";

/// The environment variable through which the launcher receives the Kafka client
/// setting `key` when its value is a credential (`sasl.password` -> `CDC_KAFKA_SASL_PASSWORD`).
fn kafka_secret_env(key: &str) -> String {
    let name: String = key.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    format!("CDC_KAFKA_{name}")
}

/// Writes the launcher and its properties. `kafka_client`: the stack's Kafka client
/// settings (librdkafka names; the launcher turns them into the Java producer's), credentials
/// as `${env:...}` references that `start` fills in.
pub fn configure(
    layout: &DebeziumLayout,
    pg: &PgEndpoint,
    kafka: &str,
    kafka_client: &BTreeMap<String, Secret>,
    settings: &DebeziumSettings,
) -> Result<(), ServiceError> {
    fs::create_dir_all(&layout.dir).map_err(|e| err(format!("{}: {e}", layout.dir.display())))?;
    fs::write(layout.dir.join("DebeziumLauncher.java"), LAUNCHER_SOURCE).map_err(|e| err(e.to_string()))?;
    let tables = crate::config::captured_tables("public");
    let mut props = String::from("# Written by the harness for DebeziumLauncher.java.\n");
    let mut set = |k: &str, v: &str| {
        let _ = writeln!(props, "{k}={v}");
    };
    set("debezium.name", CONNECTOR_NAME);
    set("debezium.connector.class", "io.debezium.connector.postgresql.PostgresConnector");
    set("debezium.offset.storage", "org.apache.kafka.connect.storage.FileOffsetBackingStore");
    set("debezium.offset.storage.file.filename", &layout.offsets.display().to_string());
    // Offsets are committed after every acknowledged batch: a crash re-sends one batch at most.
    set("debezium.offset.flush.interval.ms", "0");
    set("debezium.offset.flush.timeout.ms", "10000");
    set("debezium.database.hostname", &pg.host);
    set("debezium.database.port", &pg.port.to_string());
    set("debezium.database.user", &pg.user);
    // Resolved by the launcher from its environment: the file never holds the password.
    set("debezium.database.password", &format!("${{env:{PASSWORD_ENV}}}"));
    set("debezium.database.dbname", &pg.source_db);
    set("debezium.topic.prefix", TOPIC_PREFIX);
    set("debezium.plugin.name", "pgoutput");
    set("debezium.slot.name", SLOT_NAME);
    set("debezium.publication.name", PUBLICATION_NAME);
    set("debezium.publication.autocreate.mode", "filtered");
    set("debezium.table.include.list", &tables.join(","));
    set("debezium.snapshot.mode", "initial");
    set("debezium.tombstones.on.delete", "true");
    if !settings.defaults {
        set("debezium.decimal.handling.mode", "string");
        set("debezium.time.precision.mode", "isostring");
    }
    set("debezium.poll.interval.ms", &settings.poll_interval_ms.to_string());
    set("debezium.max.batch.size", "2048");
    // Without a heartbeat the slot holds WAL while the captured tables are idle and the
    // rest of the database writes (its topics are created with the others).
    set("debezium.heartbeat.interval.ms", &crate::config::HEARTBEAT_INTERVAL_MS.to_string());
    set("debezium.heartbeat.action.query", &crate::config::heartbeat_action_query("public"));
    set("debezium.errors.max.retries", "10");
    if !settings.defaults {
        set("debezium.key.converter.schemas.enable", "false");
        set("debezium.value.converter.schemas.enable", "false");
    }
    // The one converter setting kept also at Debezium's defaults (the sink README recommends
    // it): Kafka Connect's JsonConverter writes a column's DEFAULT in place of a NULL unless told
    // not to (KIP-581, on by default): a column added with `SET DEFAULT` then arrives as the
    // default for every old row an update touches, though the source holds NULL. Found by
    // the schema-change scenario once the verifier compared every source column.
    set("debezium.value.converter.replace.null.with.default", "false");
    set("kafka.bootstrap.servers", kafka);
    set("kafka.client.id", "debezium-launcher");
    set("kafka.acks", "all");
    set("kafka.enable.idempotence", "true");
    set("kafka.max.in.flight.requests.per.connection", "5");
    set("kafka.linger.ms", "0");
    set("kafka.delivery.timeout.ms", "120000");
    set("kafka.request.timeout.ms", "30000");
    set("kafka.max.block.ms", "60000");
    set("kafka.enable.metrics.push", "false");
    for (key, value) in kafka_client {
        let value = if secure_conn::kafka::is_credential_key(key) { format!("${{env:{}}}", kafka_secret_env(key)) } else { value.expose().to_string() };
        set(&format!("kafka.{key}"), &value);
    }
    set("launcher.status.port", &settings.status_port.to_string());
    set("launcher.ack.file", &layout.acks.display().to_string());
    set("launcher.status.address", settings.status_address);
    fs::write(&layout.properties, props).map_err(|e| err(e.to_string()))?;
    Ok(())
}

pub fn start(
    java: &Path,
    libs: &Path,
    layout: &DebeziumLayout,
    pg: &PgEndpoint,
    kafka_client: &BTreeMap<String, Secret>,
) -> Result<ProcessHandle, ServiceError> {
    let mut cmd = Command::new(java);
    for (key, value) in kafka_client.iter().filter(|(k, _)| secure_conn::kafka::is_credential_key(k)) {
        cmd.env(kafka_secret_env(key), value.expose());
    }
    cmd.current_dir(&layout.dir).env(PASSWORD_ENV, pg.password.expose()).args(["-Xms128m", "-Xmx768m", "-XX:+UseSerialGC", "-cp"]);
    // Precompiled classes start 2-4 s faster than single-file source launch.
    match compiled_launcher(java, libs) {
        Some(classes) => cmd.arg(format!("{}:{}/*", classes.display(), libs.display())).arg("DebeziumLauncher"),
        None => cmd.arg(format!("{}/*", libs.display())).arg(layout.dir.join("DebeziumLauncher.java")),
    };
    cmd.arg(&layout.properties);
    process::spawn(cmd, &layout.log).map_err(|e| ServiceError::Start { service: ServiceKind::Debezium, reason: e.to_string() })
}

/// The launcher compiled once per source version into `<libs>/../launcher-<hash>`, or None
/// when `javac` is unavailable (the source is then run directly).
fn compiled_launcher(java: &Path, libs: &Path) -> Option<PathBuf> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    LAUNCHER_SOURCE.hash(&mut hasher);
    let dir = libs.parent()?.join(format!("launcher-{:016x}", hasher.finish()));
    if dir.join("DebeziumLauncher.class").is_file() {
        return Some(dir);
    }
    let javac = java.parent().map(|bin| bin.join("javac")).filter(|p| p.is_file()).unwrap_or_else(|| PathBuf::from("javac"));
    let staging = dir.with_extension(format!("tmp{}", std::process::id()));
    fs::create_dir_all(&staging).ok()?;
    fs::write(staging.join("DebeziumLauncher.java"), LAUNCHER_SOURCE).ok()?;
    let status = Command::new(javac)
        .arg("-nowarn")
        .arg("-cp")
        .arg(format!("{}/*", libs.display()))
        .arg("-d")
        .arg(&staging)
        .arg(staging.join("DebeziumLauncher.java"))
        .output()
        .ok()?;
    if !status.status.success() {
        tracing::warn!(message = "javac failed; running the launcher from source", stderr = %String::from_utf8_lossy(&status.stderr));
        let _ = fs::remove_dir_all(&staging);
        return None;
    }
    // Another process may have won the race; either copy is good.
    if fs::rename(&staging, &dir).is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    dir.join("DebeziumLauncher.class").is_file().then_some(dir)
}

/// What the launcher reports on `GET /status`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct LauncherStatus {
    pub state: String,
    pub snapshot_completed: bool,
    /// A restart that resumes from offsets skips the snapshot.
    #[serde(default)]
    pub snapshot_skipped: bool,
    pub streaming_connected: bool,
    pub records_sent: u64,
    pub last_error: Option<String>,
}

impl LauncherStatus {
    /// Where the launcher is on its way to ready, for a timeout's message.
    pub fn progress(&self) -> String {
        format!("state {}, snapshot_completed {}, streaming_connected {}", self.state, self.snapshot_completed, self.streaming_connected)
    }
}

pub async fn fetch_status(url: &str) -> Result<LauncherStatus, String> {
    let response = crate::http::client().get(url).timeout(Duration::from_secs(2)).send().await.map_err(|e| e.to_string())?;
    response.json::<LauncherStatus>().await.map_err(|e| e.to_string())
}

/// Waits until streaming is connected and, on the first start, the initial snapshot is
/// complete (a restart resumes from its offsets and takes no snapshot).
pub async fn wait_ready(status_url: &str, handle: &ProcessHandle, require_snapshot: bool, timeout: Duration) -> Result<LauncherStatus, ServiceError> {
    let exited = |tail: String| NotReady::Never(ServiceError::Exited { service: ServiceKind::Debezium, log: handle.log.clone(), tail });
    WaitFor::new(ServiceKind::Debezium, timeout, handle.log.clone())
        .poll(Duration::from_millis(250))
        .until(|| async {
            if !handle.is_alive() {
                return Err(exited(handle.log_tail(25)));
            }
            let status = fetch_status(status_url).await?;
            if status.state == "failed" {
                return Err(exited(status.last_error.unwrap_or_default()));
            }
            if status.streaming_connected && (status.snapshot_completed || status.snapshot_skipped || !require_snapshot) {
                return Ok(status);
            }
            Err(NotReady::Yet(status.progress()))
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The producer gets the stack's Kafka security settings; a credential only as an
    /// environment reference, so the properties file never holds it.
    #[test]
    fn kafka_security_settings_pass_to_the_producer_without_the_secret_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let layout = DebeziumLayout::new(dir.path());
        let pg = PgEndpoint {
            host: "127.0.0.1".into(),
            port: 5432,
            user: "postgres".into(),
            password: Secret::new("pg-secret"),
            source_db: "app".into(),
            target_db: "sink".into(),
            target_server: None,
            source_schema: "public".into(),
            params: BTreeMap::new(),
        };
        let client: BTreeMap<String, Secret> = [
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "cdc"),
            ("sasl.password", "kafka-secret"),
            ("ssl.ca.location", "/ca.pem"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), Secret::new(v)))
        .collect();
        let settings = DebeziumSettings { poll_interval_ms: 100, status_port: 1, status_address: "127.0.0.1", defaults: false };
        configure(&layout, &pg, "k:9093", &client, &settings).unwrap();
        let props = fs::read_to_string(&layout.properties).unwrap();
        for line in ["kafka.security.protocol=SASL_SSL", "kafka.sasl.mechanism=SCRAM-SHA-512", "kafka.sasl.username=cdc", "kafka.ssl.ca.location=/ca.pem"] {
            assert!(props.lines().any(|l| l == line), "{line}: {props}");
        }
        assert!(props.lines().any(|l| l == "kafka.sasl.password=${env:CDC_KAFKA_SASL_PASSWORD}"), "{props}");
        assert!(!props.contains("kafka-secret") && !props.contains("pg-secret"), "{props}");
    }
}
