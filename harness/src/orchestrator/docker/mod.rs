//! The Docker backend: the real images (PostgreSQL, Apache Kafka in KRaft mode, Debezium's
//! Kafka Connect, MongoDB, the sink, optionally the observability stack) on a labelled
//! network per run, driven through bollard. `spec` builds every request (pure, unit
//! tested); `lifecycle` creates, starts and removes the stack, `readiness` waits for what
//! each service declares, `faults` is its `ServiceControl`, `logs` captures the output and
//! `daemon` talks to the daemon itself (connect, exec, removal by label).

mod daemon;
mod faults;
pub mod images;
mod lifecycle;
mod logs;
mod readiness;
mod registry;
pub mod spec;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use daemon::{connect, remove_all_labelled, run_containers};
pub use lifecycle::DockerStack;

/// Which database the sink materializes into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// The `sink` database of the PostgreSQL container (what `harness verify` compares by default).
    Postgres,
    /// A MongoDB container (`mongodb://mongo:27017`, database `cdc`).
    Mongodb,
}

/// Image references. Every one can be replaced (a mirror, a pinned digest, a newer tag).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Images {
    /// `postgres:15`, started with `wal_level=logical`.
    pub postgres: String,
    /// `apache/kafka:4.1.0`, a single KRaft node (broker + controller).
    pub kafka: String,
    /// `quay.io/debezium/connect:3.3`: Kafka Connect with the Debezium connectors.
    pub connect: String,
    /// `mongo:8`.
    pub mongo: String,
    /// `cdc-sink:local`, built from this workspace's Dockerfile (`docker build -t cdc-sink:local .`);
    /// never pulled.
    pub sink: String,
    /// The local set's pod proxy (`fault-proxy`), built by `harness provision
    /// --images local`; never pulled.
    pub proxy: String,
    /// `otel/opentelemetry-collector-contrib:0.139.0` (contrib: filelog receiver and Loki-bound OTLP).
    pub otel_collector: String,
    /// `grafana/tempo:2.9.0`.
    pub tempo: String,
    /// `grafana/loki:3.5.7`.
    pub loki: String,
    /// `prom/prometheus:v3.7.3`.
    pub prometheus: String,
    /// `grafana/grafana:12.2.1`.
    pub grafana: String,
}

impl Default for Images {
    fn default() -> Self {
        Self {
            postgres: "postgres:15".into(),
            kafka: "apache/kafka:4.1.0".into(),
            connect: "quay.io/debezium/connect:3.3".into(),
            mongo: "mongo:8".into(),
            sink: SINK_IMAGE.into(),
            proxy: "cdc-harness/proxy:local".into(),
            otel_collector: "otel/opentelemetry-collector-contrib:0.139.0".into(),
            tempo: "grafana/tempo:2.9.0".into(),
            loki: "grafana/loki:3.5.7".into(),
            prometheus: "prom/prometheus:v3.7.3".into(),
            grafana: "grafana/grafana:12.2.1".into(),
        }
    }
}

impl Images {
    /// The upstream references with every role the local set builds replaced by its image
    /// (MongoDB and the observability stack have none).
    pub fn with_local(local: &images::LocalImages) -> Self {
        Self {
            postgres: local.postgres.clone(),
            kafka: local.broker.clone(),
            connect: local.debezium.clone(),
            sink: local.sink.clone(),
            proxy: local.proxy.clone(),
            ..Self::default()
        }
    }
}

/// The tag `docker build` gives the sink image; it is built, not pulled.
pub const SINK_IMAGE: &str = "cdc-sink:local";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DockerConfig {
    pub images: Images,
    /// Which images `images` names: `upstream` (pulled) or `local` (built here by
    /// `harness provision --images local`; tansu instead of Kafka, PostgreSQL target).
    pub image_set: images::ImageSet,
    /// Default `mongodb`: the production shape. `postgres` matches the local backend.
    pub target: TargetKind,
    /// Also start the OTel Collector, Tempo, Loki, Prometheus and Grafana (default off:
    /// runs do not need them and they cost ~1 GiB).
    pub observability: bool,
    /// Where `docker/`, `prometheus/` and `grafana/` live (bind-mounted into the
    /// observability containers). Default: this workspace.
    pub assets_dir: PathBuf,
}

impl Default for DockerConfig {
    fn default() -> Self {
        Self {
            images: Images::default(),
            image_set: images::ImageSet::Upstream,
            target: TargetKind::Mongodb,
            observability: false,
            assets_dir: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/..")),
        }
    }
}

/// One failed daemon call, typed by what went wrong (as testcontainers does), so callers
/// can tell "no daemon" from "image missing" from "conflict".
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("no Docker daemon answers ({reason}); start one or use --backend local")]
    Unreachable { reason: String },
    #[error("pulling {image} failed: {reason}")]
    Pull { image: String, reason: String },
    #[error("image {image} is not present; build it with `{build}`")]
    ImageMissing { image: String, build: String },
    #[error("{op} {target}: not found")]
    NotFound { op: &'static str, target: String },
    #[error("{op} {target}: conflict: {message}")]
    Conflict { op: &'static str, target: String, message: String },
    #[error("{op} {target}: daemon answered {status}: {message}")]
    Api { op: &'static str, target: String, status: u16, message: String },
    #[error("{op} {target}: {reason}")]
    Transport { op: &'static str, target: String, reason: String },
    #[error("{command:?} in {container} exited with {code}: {output}")]
    Exec { container: String, command: Vec<String>, code: i64, output: String },
    #[error("{container}: container is not running ({state})")]
    NotRunning { container: String, state: String },
}

impl DockerError {
    /// Maps a bollard error of operation `op` on `target` into a typed variant.
    pub fn from_bollard(op: &'static str, target: &str, error: bollard::errors::Error) -> Self {
        use bollard::errors::Error as B;
        let target = target.to_string();
        match error {
            B::DockerResponseServerError { status_code: 404, .. } => Self::NotFound { op, target },
            B::DockerResponseServerError { status_code: 409, message } => Self::Conflict { op, target, message },
            B::DockerResponseServerError { status_code, message } => Self::Api { op, target, status: status_code, message },
            other => Self::Transport { op, target, reason: other.to_string() },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_images() {
        let images = Images::default();
        assert_eq!(images.postgres, "postgres:15");
        assert_eq!(images.kafka, "apache/kafka:4.1.0");
        assert!(images.connect.starts_with("quay.io/debezium/connect:3."));
        assert_eq!(images.mongo, "mongo:8");
        assert_eq!(images.sink, SINK_IMAGE);
        assert!(DockerConfig::default().assets_dir.join("docker-compose.yml").is_file());
    }

    #[test]
    fn config_overrides_parse_from_toml_and_reject_typos() {
        let config: DockerConfig = toml::from_str("target = \"postgres\"\n[images]\nkafka = \"mirror/kafka:4.1.0\"\n").expect("valid");
        assert_eq!(config.target, TargetKind::Postgres);
        assert_eq!(config.images.kafka, "mirror/kafka:4.1.0");
        assert_eq!(config.images.postgres, "postgres:15");
        assert!(toml::from_str::<DockerConfig>("[images]\nkafak = \"x\"\n").is_err());
    }

    #[test]
    fn daemon_errors_map_to_typed_variants() {
        let e = |status_code| bollard::errors::Error::DockerResponseServerError { status_code, message: "m".into() };
        assert!(matches!(DockerError::from_bollard("inspect", "c", e(404)), DockerError::NotFound { .. }));
        assert!(matches!(DockerError::from_bollard("create", "c", e(409)), DockerError::Conflict { .. }));
        assert!(matches!(DockerError::from_bollard("start", "c", e(500)), DockerError::Api { status: 500, .. }));
    }
}
