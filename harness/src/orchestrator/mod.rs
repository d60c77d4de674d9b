//! How the pipeline's services are run. One backend per way of running them, behind the
//! `Orchestrator` trait: `local` (child processes, data in the run folder) and `docker`
//! (real images through bollard), selected by `--backend docker|local|auto`.

pub mod docker;
pub mod local;
pub mod stack;
pub mod state;
pub mod wait;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The services of the pipeline under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ServiceKind {
    Postgres,
    Broker,
    Debezium,
    Sink,
}

impl ServiceKind {
    /// Start order; teardown runs in reverse.
    pub const ALL: [ServiceKind; 4] = [Self::Postgres, Self::Broker, Self::Debezium, Self::Sink];

    pub fn name(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Broker => "broker",
            Self::Debezium => "debezium",
            Self::Sink => "sink",
        }
    }
}

impl fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{service}: setup failed: {reason}")]
    Setup { service: ServiceKind, reason: String },
    #[error("{service}: cannot start: {reason}")]
    Start { service: ServiceKind, reason: String },
    #[error("{service}: exited during start-up; log {}:\n{tail}", log.display())]
    Exited { service: ServiceKind, log: PathBuf, tail: String },
    #[error("{service}: not ready after {}s: {reason}; see its log {}", waited.as_secs(), log.display())]
    NotReady { service: ServiceKind, waited: Duration, reason: String, log: PathBuf },
    #[error(transparent)]
    Provision(#[from] crate::provision::ProvisionError),
    #[error("stack state {}: {reason}", path.display())]
    State { path: PathBuf, reason: String },
    #[error("the {0} backend is not available: {1}")]
    BackendUnavailable(&'static str, String),
    /// The options ask for something this backend cannot do (a usage error).
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Images(#[from] docker::images::ImageError),
    #[error("teardown left running: {}", left.join(", "))]
    Teardown { left: Vec<String> },
}

/// A credential: printed and logged as `***`, serialized only into the run folder's
/// private state file.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PgEndpoint {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Secret,
    pub source_db: String,
    pub target_db: String,
}

impl PgEndpoint {
    /// libpq-style connection string for `db`, password included (never log it).
    pub fn conn_string(&self, db: &str) -> String {
        format!("host={} port={} user={} password={} dbname={db} connect_timeout=5", self.host, self.port, self.user, self.password.expose())
    }

    /// Same, without the password: for logs and reports.
    pub fn display(&self, db: &str) -> String {
        format!("postgres://{}@{}:{}/{db}", self.user, self.host, self.port)
    }

    pub async fn connect(&self, db: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::connect(&self.conn_string(db), tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }
}

/// Where the running stack can be reached.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Endpoints {
    pub postgres: PgEndpoint,
    /// Kafka bootstrap servers.
    pub kafka: String,
    /// Debezium launcher status URL (`GET /status`).
    pub debezium_status: String,
    /// Sink HTTP (`/healthz`, `/readyz`, `/metrics`).
    pub sink_http: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceState {
    /// Running and passing its readiness check.
    Healthy,
    /// Running but its readiness check fails.
    Unhealthy,
    /// Not running.
    Stopped,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub service: ServiceKind,
    pub state: ServiceState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    pub endpoint: String,
    pub log: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// One way of running the pipeline's services.
#[allow(async_fn_in_trait)]
pub trait Orchestrator {
    /// Starts every service not yet running, waits for readiness, returns the endpoints.
    async fn up(&mut self) -> Result<Endpoints, ServiceError>;
    /// Live state of every service (readiness re-checked).
    async fn status(&self) -> Result<Vec<ServiceStatus>, ServiceError>;
    /// Stops every service; nothing the backend started survives.
    async fn down(&mut self) -> Result<(), ServiceError>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Docker when a daemon answers, local processes otherwise.
    Auto,
    Local,
    Docker,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Local => "local",
            Self::Docker => "docker",
        }
    }
}

/// Resolves `auto` (Docker when a daemon answers) and refuses `docker` without a daemon.
/// The daemon is the one `DOCKER_HOST` names (unix or tcp), asked with a ping.
pub async fn resolve_backend(requested: BackendKind) -> Result<BackendKind, ServiceError> {
    match requested {
        BackendKind::Local => Ok(BackendKind::Local),
        BackendKind::Auto => Ok(if docker::connect().await.is_ok() { BackendKind::Docker } else { BackendKind::Local }),
        BackendKind::Docker => match docker::connect().await {
            Ok(_) => Ok(BackendKind::Docker),
            Err(e) => Err(ServiceError::BackendUnavailable("docker", format!("{e} (DOCKER_HOST or /var/run/docker.sock)"))),
        },
    }
}
