//! The sink binary as a child process, configured through its TOML file (the password goes
//! through the environment, never into the file).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::process::{self, ProcessHandle};
use crate::config::{DLQ_TOPIC, GROUP_ID, TABLES, topic_for};
use crate::orchestrator::wait::{NotReady, WaitFor};
use crate::orchestrator::{PgEndpoint, ServiceError, ServiceKind};

pub struct SinkLayout {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
}

impl SinkLayout {
    pub fn new(run_dir: &Path) -> Self {
        let dir = run_dir.join("sink");
        Self { config: dir.join("sink.toml"), log: run_dir.join("logs").join("sink.log"), dir }
    }
}

/// `listen`: the HTTP address (`127.0.0.1:<port>` for a child process, `0.0.0.0:<port>` in a container).
/// `debezium_defaults`: Debezium runs at its defaults, so the sink gets no `[source]`
/// settings (its events carry their schemas).
pub fn configure(layout: &SinkLayout, pg: &PgEndpoint, kafka: &str, listen: &str, debezium_defaults: bool) -> Result<(), ServiceError> {
    let err = |e: std::io::Error| ServiceError::Setup { service: ServiceKind::Sink, reason: e.to_string() };
    fs::create_dir_all(&layout.dir).map_err(err)?;
    let topics: Vec<String> = TABLES.iter().map(|t| format!("\"{}\"", topic_for(t))).collect();
    let mut toml = String::new();
    let _ = writeln!(
        toml,
        "[kafka]\nbrokers = \"{kafka}\"\ngroup_id = \"{GROUP_ID}\"\ntopics = [{}]\ndlq_topic = \"{DLQ_TOPIC}\"\n# Fault runs restart the broker: rejoin the group sooner than the 60 s default.\nrejoin_timeout = \"20s\"\n\n# Static membership: a restarted sink takes its predecessor's place (and partitions) at\n# once instead of waiting for the coordinator to expire a member killed with -9.\n[kafka.librdkafka]\n\"group.instance.id\" = \"cdc-sink-1\"\n",
        topics.join(", ")
    );
    let _ = writeln!(toml, "[target]\nkind = \"postgres\"\nurl = {}\n", toml::Value::from(pg.target_conninfo()));
    let _ = writeln!(toml, "[http]\nlisten = \"{listen}\"");
    if !debezium_defaults {
        // What the harness's Debezium is configured with (decimal.handling.mode, time.precision.mode).
        let _ = writeln!(toml, "\n[source]\ndecimal_handling = \"string\"\ntime_precision = \"isostring\"");
    }
    // The apply log is the run's evidence: per-hop latency and duplicate/out-of-order applies.
    let _ = writeln!(toml, "\n[audit]\nenabled = true");
    fs::write(&layout.config, toml).map_err(err)
}

pub fn start(bin: &Path, layout: &SinkLayout, pg: &PgEndpoint) -> Result<ProcessHandle, ServiceError> {
    let mut cmd = Command::new(bin);
    cmd.current_dir(&layout.dir).arg("--config").arg(&layout.config).env("SINK__TARGET__PASSWORD", pg.password.expose());
    process::spawn(cmd, &layout.log).map_err(|e| ServiceError::Start { service: ServiceKind::Sink, reason: e.to_string() })
}

/// `GET /readyz` answers 200.
pub async fn is_ready(http: &str) -> Result<(), String> {
    let response = crate::http::client().get(format!("{http}/readyz")).timeout(Duration::from_secs(2)).send().await.map_err(|e| e.to_string())?;
    if response.status().is_success() { Ok(()) } else { Err(format!("/readyz answered {}: {}", response.status(), response.text().await.unwrap_or_default())) }
}

pub async fn wait_ready(http: &str, handle: &ProcessHandle, timeout: Duration) -> Result<(), ServiceError> {
    WaitFor::new(ServiceKind::Sink, timeout, handle.log.clone())
        .until(|| async {
            if !handle.is_alive() {
                return Err(NotReady::Never(ServiceError::Exited { service: ServiceKind::Sink, log: handle.log.clone(), tail: handle.log_tail(20) }));
            }
            is_ready(http).await.map_err(NotReady::Yet)
        })
        .await
}
