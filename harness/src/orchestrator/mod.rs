//! How the pipeline's services are run. One backend per way of running them, behind the
//! `Backend` trait: `local` (child processes, data in the run folder), `docker` (real
//! images through bollard), selected by `--backend docker|local|auto`, and `external` (a
//! stack the harness did not start). The first two also have `ServiceControl`.

pub(crate) mod backend;
pub(crate) mod connect;
pub mod docker;
pub mod external;
pub mod local;
mod services;
pub mod stack;
pub mod state;
pub mod wait;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use backend::{Backend, LeaderResolver, STOP_GRACE, ServiceControl};

/// The services of the pipeline under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord, clap::ValueEnum, strum::IntoStaticStr, strum::EnumIter)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
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
        self.into()
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
    /// The options are wrong or contradict each other (a usage error).
    #[error("{0}")]
    Usage(String),
    /// The backend cannot do what was asked (a usage error); `reason` says so in its words.
    #[error("{reason}")]
    Unsupported { backend: BackendKind, reason: String },
    /// A command that reads a stack found none in the run folder.
    #[error("no stack in {} (start one with `harness up`, or name one with --backend external --endpoints FILE)", .0.display())]
    NoStack(PathBuf),
    #[error(transparent)]
    Images(#[from] docker::images::ImageError),
    /// An external stack's pre-flight found a hop that does not answer or is not set up.
    #[error("pre-flight: {hop}: {reason}")]
    Preflight { hop: &'static str, reason: String },
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
    /// The server of `target_db` when it is not the source's (an external stack's
    /// separate target); `None`: both databases live on this server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_server: Option<PgServer>,
    /// Schema of the workload's tables in the source: `public` on the stacks the harness
    /// starts; on an external stack one of their own unless the endpoints file says otherwise.
    #[serde(default = "default_source_schema")]
    pub source_schema: String,
    /// Every other libpq setting of the source's DSN (`sslmode`, `sslrootcert`, ...), as given.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
}

pub const PUBLIC_SCHEMA: &str = "public";

fn default_source_schema() -> String {
    PUBLIC_SCHEMA.to_string()
}

/// A PostgreSQL server and the role to log in with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PgServer {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Secret,
    /// Every other libpq setting of its DSN, as given.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
}

/// A connection that could not be made: the client's or server's error, or TLS settings
/// that cannot be used (never the password: no message here quotes a connection string).
#[derive(Debug, thiserror::Error)]
pub enum PgConnectError {
    #[error("{}", pg_error_text(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Dsn(#[from] secure_conn::pg::DsnError),
    #[error(transparent)]
    Tls(#[from] secure_conn::pg::TlsSetupError),
}

/// The client settings and TLS of one database: built field by field with
/// `tokio_postgres::Config` (no connection string is formatted, so no value can inject an
/// option), `params` first so that the endpoint's own fields win.
fn pg_dsn(host: &str, port: u16, user: &str, password: &Secret, db: &str, params: &BTreeMap<String, String>) -> Result<secure_conn::pg::Dsn, PgConnectError> {
    let mut dsn = secure_conn::pg::Dsn::default();
    for (key, value) in params {
        dsn.set(key, value)?;
    }
    let config = &mut dsn.config;
    // A multi-host DSN keeps its host and port lists in `params`.
    if !params.contains_key("host") {
        config.host(host);
    }
    if !params.contains_key("port") {
        config.port(port);
    }
    config.user(user).password(password.expose()).dbname(db);
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    Ok(dsn)
}

impl PgServer {
    fn dsn(&self, db: &str) -> Result<secure_conn::pg::Dsn, PgConnectError> {
        pg_dsn(&self.host, self.port, &self.user, &self.password, db, &self.params)
    }
}

impl PgEndpoint {
    /// The source database, with only its workload schema on the search path (the workload's
    /// SQL names its tables unqualified); `public` keeps the server's default path.
    pub async fn connect_source(&self) -> Result<tokio_postgres::Client, PgConnectError> {
        connect_with(&self.source_dsn()?).await
    }

    /// The source's client settings and TLS, password included (never log them).
    pub fn source_dsn(&self) -> Result<secure_conn::pg::Dsn, PgConnectError> {
        let mut dsn = self.dsn(&self.source_db)?;
        if self.source_schema != PUBLIC_SCHEMA {
            // Only this schema: a table missing from it must fail, never fall back to `public`.
            // The schema is a plain identifier (checked when the endpoints file was read).
            let options = dsn.config.get_options().map(|o| format!("{o} ")).unwrap_or_default();
            dsn.config.options(format!("{options}-c search_path={}", self.source_schema));
        }
        Ok(dsn)
    }

    /// The target database, on its own server when it has one.
    pub async fn connect_target(&self) -> Result<tokio_postgres::Client, PgConnectError> {
        connect_with(&self.target_dsn()?).await
    }

    /// The target's client settings and TLS, password included (never log them).
    pub fn target_dsn(&self) -> Result<secure_conn::pg::Dsn, PgConnectError> {
        match &self.target_server {
            Some(server) => server.dsn(&self.target_db),
            None => self.dsn(&self.target_db),
        }
    }

    /// The target database without the password: for logs and reports.
    pub fn display_target(&self) -> String {
        match &self.target_server {
            Some(s) => format!("postgres://{}@{}:{}/{}", s.user, s.host, s.port, self.target_db),
            None => self.display(&self.target_db),
        }
    }

    fn dsn(&self, db: &str) -> Result<secure_conn::pg::Dsn, PgConnectError> {
        pg_dsn(&self.host, self.port, &self.user, &self.password, db, &self.params)
    }

    /// The target as the sink's `[target] url` (libpq key=value, every value quoted, no
    /// password: the sink gets it from its environment).
    pub fn target_conninfo(&self) -> String {
        let (host, port, user, params) = match &self.target_server {
            Some(s) => (&s.host, s.port, &s.user, &s.params),
            None => (&self.host, self.port, &self.user, &self.params),
        };
        let port = port.to_string();
        let mut pairs = vec![("host", host.as_str()), ("port", port.as_str()), ("user", user.as_str()), ("dbname", self.target_db.as_str())];
        pairs.retain(|(k, _)| !params.contains_key(*k));
        pairs.extend(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        secure_conn::pg::conninfo(&pairs)
    }

    /// Same, without the password: for logs and reports.
    pub fn display(&self, db: &str) -> String {
        format!("postgres://{}@{}:{}/{db}", self.user, self.host, self.port)
    }

    /// `db` on this server (the source's).
    pub async fn connect(&self, db: &str) -> Result<tokio_postgres::Client, PgConnectError> {
        connect_with(&self.dsn(db)?).await
    }
}

pub(crate) async fn connect_with(dsn: &secure_conn::pg::Dsn) -> Result<tokio_postgres::Client, PgConnectError> {
    let (client, connection) = dsn.connector()?.connect(&dsn.config).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Where the running stack can be reached.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Endpoints {
    pub postgres: PgEndpoint,
    /// Kafka bootstrap servers.
    pub kafka: String,
    /// librdkafka settings of every client the harness makes (TLS, SASL), as given; the
    /// values may be credentials, so none is ever printed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub kafka_client: BTreeMap<String, Secret>,
    /// Topics are `<prefix>.<source schema>.<table>`.
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// The sink's consumer group (its lag is measured at the broker).
    #[serde(default = "default_group")]
    pub consumer_group: String,
    /// The connector's replication slot (its backlog is sampled); `None`: not sampled.
    #[serde(default = "default_slot")]
    pub slot: Option<String>,
    /// Debezium launcher status URL (`GET /status`); empty when there is none.
    pub debezium_status: String,
    /// Sink HTTP (`/healthz`, `/readyz`, `/metrics`); empty when there is none.
    pub sink_http: String,
    /// Kafka Connect's REST API and the connector's name, where one serves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<ConnectEndpoint>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConnectEndpoint {
    /// Base URL (`http://host:8083`).
    pub url: String,
    pub connector: String,
}

fn default_topic_prefix() -> String {
    crate::config::TOPIC_PREFIX.to_string()
}

fn default_group() -> String {
    crate::config::GROUP_ID.to_string()
}

fn default_slot() -> Option<String> {
    Some(crate::config::SLOT_NAME.to_string())
}

impl Endpoints {
    /// The endpoints of a stack this harness started: its topic prefix, group and slot.
    pub fn started(postgres: PgEndpoint, kafka: String, debezium_status: String, sink_http: String, connect: Option<ConnectEndpoint>) -> Self {
        Self {
            postgres,
            kafka,
            kafka_client: BTreeMap::new(),
            topic_prefix: default_topic_prefix(),
            consumer_group: default_group(),
            slot: default_slot(),
            debezium_status,
            sink_http,
            connect,
        }
    }

    /// A Kafka client configuration with the bootstrap servers and the stack's client settings.
    pub fn kafka_config(&self) -> rdkafka::ClientConfig {
        let mut config = rdkafka::ClientConfig::new();
        config.set("bootstrap.servers", &self.kafka);
        for (key, value) in &self.kafka_client {
            config.set(key, value.expose());
        }
        config
    }

    /// The CDC topic of `table`.
    pub fn topic(&self, table: &str) -> String {
        format!("{}.{}.{table}", self.topic_prefix, self.postgres.source_schema)
    }
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
    /// Whether the hop's connection is encrypted and verified (external stacks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<HopSecurity>,
}

/// What a connection to one hop guarantees: as negotiated where it can be asked
/// (PostgreSQL's `pg_stat_ssl`), else as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HopSecurity {
    pub encrypted: bool,
    /// The peer's certificate chain and host name are checked.
    pub verified: bool,
    pub detail: String,
}

impl HopSecurity {
    /// Both hops of one line (source and target): only as good as the weaker.
    pub fn and(self, other: HopSecurity) -> HopSecurity {
        HopSecurity {
            encrypted: self.encrypted && other.encrypted,
            verified: self.verified && other.verified,
            detail: format!("{}; {}", self.detail, other.detail),
        }
    }

    pub fn summary(&self) -> &'static str {
        match (self.encrypted, self.verified) {
            (true, true) => "TLS verified",
            (true, false) => "TLS NOT verified",
            (false, _) => "PLAINTEXT",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize, strum::IntoStaticStr, strum::EnumIter)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum BackendKind {
    /// Docker when a daemon answers, local processes otherwise.
    Auto,
    Local,
    Docker,
    /// A stack the harness did not start, named by an endpoints file (`--endpoints`).
    External,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        self.into()
    }
}

/// Resolves `auto` (Docker when a daemon answers) and refuses `docker` without a daemon.
/// The daemon is the one `DOCKER_HOST` names (unix or tcp), asked with a ping.
pub async fn resolve_backend(requested: BackendKind) -> Result<BackendKind, ServiceError> {
    match requested {
        BackendKind::Local => Ok(BackendKind::Local),
        BackendKind::External => Err(ServiceError::Usage("--backend external needs --endpoints FILE".into())),
        BackendKind::Auto => Ok(if docker::connect().await.is_ok() { BackendKind::Docker } else { BackendKind::Local }),
        BackendKind::Docker => match docker::connect().await {
            Ok(_) => Ok(BackendKind::Docker),
            Err(e) => Err(ServiceError::BackendUnavailable("docker", format!("{e} (DOCKER_HOST or /var/run/docker.sock)"))),
        },
    }
}

/// A PostgreSQL error with the server's own message (its `Display` says only "db error").
pub fn pg_error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}
