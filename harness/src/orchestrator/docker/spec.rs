//! Pure request building for the Docker backend: container specs, labels, the network,
//! health checks, port bindings, the connector registration and fault commands. Nothing
//! here talks to a daemon, so all of it is unit tested without one.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, EndpointSettings, HealthConfig, HostConfig, NetworkCreateRequest, NetworkingConfig, PortBinding};
use serde_json::{Value, json};

use super::images::ImageSet;
use super::{DockerConfig, Images, TargetKind};
use crate::config::{CONNECTOR_NAME, GROUP_ID, PUBLICATION_NAME, SLOT_NAME, SOURCE_DB, TARGET_DB, TOPIC_PREFIX};
use crate::orchestrator::ServiceKind;

/// Every container and network of a run carries this label with the run id; teardown (also
/// of a crashed run's leftovers) selects by it.
pub const LABEL_RUN: &str = "io.cdc-harness.run";
/// Which role a container plays (`postgres`, `kafka`, ...), for status and log capture.
pub const LABEL_ROLE: &str = "io.cdc-harness.role";
/// Listener other containers use to reach Kafka (the host uses the published one).
pub const KAFKA_INTERNAL_PORT: u16 = 19092;
/// Kafka's listener published on the host; advertised as `127.0.0.1:<host port>`.
pub const KAFKA_EXTERNAL_PORT: u16 = 9092;
pub const POSTGRES_PORT: u16 = 5432;
pub const CONNECT_PORT: u16 = 8083;
pub const MONGO_PORT: u16 = 27017;
pub const SINK_HTTP_PORT: u16 = 9095;
pub const PROMETHEUS_PORT: u16 = 9090;
pub const GRAFANA_PORT: u16 = 3000;
/// The control API of a pod's fault proxy (`fault-proxy --control`).
pub const PROXY_CONTROL_PORT: u16 = 7070;
/// Where the local set's Debezium container mounts its folder of the run.
pub const DEBEZIUM_DIR: &str = "/var/lib/debezium";

/// One container of the stack. `alias` is its DNS name on the run's network, the same
/// names docker-compose.yml uses, so the observability configs work in both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Postgres,
    Kafka,
    Connect,
    Mongo,
    Sink,
    /// The local set's pods: the fault proxy owning Debezium's (the sink's) network
    /// namespace, its published ports and its links to the broker and PostgreSQL.
    ConnectProxy,
    SinkProxy,
    OtelCollector,
    Tempo,
    Loki,
    Prometheus,
    Grafana,
}

impl Role {
    pub const OBSERVABILITY: [Role; 5] = [Self::OtelCollector, Self::Tempo, Self::Loki, Self::Prometheus, Self::Grafana];

    pub fn alias(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Kafka => "kafka",
            Self::Connect => "connect",
            Self::Mongo => "mongo",
            Self::Sink => "sink",
            Self::ConnectProxy => "connect-proxy",
            Self::SinkProxy => "sink-proxy",
            Self::OtelCollector => "otel-collector",
            Self::Tempo => "tempo",
            Self::Loki => "loki",
            Self::Prometheus => "prometheus",
            Self::Grafana => "grafana",
        }
    }

    pub fn from_alias(alias: &str) -> Option<Self> {
        [
            Self::Postgres,
            Self::Kafka,
            Self::Connect,
            Self::Mongo,
            Self::Sink,
            Self::ConnectProxy,
            Self::SinkProxy,
            Self::OtelCollector,
            Self::Tempo,
            Self::Loki,
            Self::Prometheus,
            Self::Grafana,
        ]
        .into_iter()
        .find(|r| r.alias() == alias)
    }

    /// The roles that make up a pipeline service, in start order; the last one is the
    /// service itself (`ServiceKind` has no MongoDB: it belongs to the sink's side). On the
    /// local set Debezium and the sink run as pods behind their fault proxy.
    pub fn for_service(service: ServiceKind, config: &DockerConfig) -> Vec<Role> {
        let pods = config.image_set == ImageSet::Local;
        match service {
            ServiceKind::Postgres => vec![Self::Postgres],
            ServiceKind::Broker => vec![Self::Kafka],
            ServiceKind::Debezium if pods => vec![Self::ConnectProxy, Self::Connect],
            ServiceKind::Debezium => vec![Self::Connect],
            ServiceKind::Sink if config.target == TargetKind::Mongodb => vec![Self::Mongo, Self::Sink],
            ServiceKind::Sink if pods => vec![Self::SinkProxy, Self::Sink],
            ServiceKind::Sink => vec![Self::Sink],
        }
    }

    /// The container whose network namespace this role joins, when it runs in a pod.
    pub fn pod(self, config: &DockerConfig) -> Option<Role> {
        match self {
            Self::Connect if config.image_set == ImageSet::Local => Some(Self::ConnectProxy),
            Self::Sink if config.image_set == ImageSet::Local => Some(Self::SinkProxy),
            _ => None,
        }
    }

    /// Removed after every other container: pod members hold their namespace.
    pub fn is_proxy(self) -> bool {
        matches!(self, Self::ConnectProxy | Self::SinkProxy)
    }

    /// This role's image, from the config.
    pub fn image(self, images: &Images) -> &str {
        match self {
            Self::Postgres => &images.postgres,
            Self::Kafka => &images.kafka,
            Self::Connect => &images.connect,
            Self::Mongo => &images.mongo,
            Self::Sink => &images.sink,
            Self::ConnectProxy | Self::SinkProxy => &images.proxy,
            Self::OtelCollector => &images.otel_collector,
            Self::Tempo => &images.tempo,
            Self::Loki => &images.loki,
            Self::Prometheus => &images.prometheus,
            Self::Grafana => &images.grafana,
        }
    }
}

/// Container and network names of one run: `cdc-<run id>-<alias>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunNames {
    pub run_id: String,
}

impl RunNames {
    pub fn new(run_id: impl Into<String>) -> Self {
        Self { run_id: run_id.into() }
    }
    pub fn network(&self) -> String {
        format!("cdc-{}", self.run_id)
    }
    pub fn container(&self, role: Role) -> String {
        format!("cdc-{}-{}", self.run_id, role.alias())
    }
    pub fn labels(&self, role: Option<Role>) -> HashMap<String, String> {
        let mut labels = HashMap::from([(LABEL_RUN.to_string(), self.run_id.clone())]);
        if let Some(role) = role {
            labels.insert(LABEL_ROLE.to_string(), role.alias().to_string());
        }
        labels
    }
}

/// `filters` for list calls: this run's objects, or (None) every run's, for `down` after a crash.
pub fn label_filter(run_id: Option<&str>) -> HashMap<String, Vec<String>> {
    let label = match run_id {
        Some(id) => format!("{LABEL_RUN}={id}"),
        None => LABEL_RUN.to_string(),
    };
    HashMap::from([("label".to_string(), vec![label])])
}

pub fn network_request(names: &RunNames) -> NetworkCreateRequest {
    NetworkCreateRequest { name: names.network(), driver: Some("bridge".into()), labels: Some(names.labels(None)), ..Default::default() }
}

/// A Docker health check (the daemon runs it; readiness waits on `healthy`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub test: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
    pub start_period: Duration,
}

impl HealthCheck {
    fn shell(command: &str) -> Self {
        Self {
            test: vec!["CMD-SHELL".into(), command.into()],
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(5),
            retries: 30,
            start_period: Duration::from_secs(5),
        }
    }

    fn to_config(&self) -> HealthConfig {
        let nanos = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        HealthConfig {
            test: Some(self.test.clone()),
            interval: Some(nanos(self.interval)),
            timeout: Some(nanos(self.timeout)),
            retries: Some(i64::from(self.retries)),
            start_period: Some(nanos(self.start_period)),
            // Checks run every second during start-up: readiness is seen sooner.
            start_interval: Some(nanos(Duration::from_secs(1))),
        }
    }
}

/// Everything needed to create one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    pub role: Role,
    pub image: String,
    pub env: Vec<(String, String)>,
    pub cmd: Vec<String>,
    pub health: Option<HealthCheck>,
    /// (container port, host port) published on 127.0.0.1 only.
    pub ports: Vec<(u16, u16)>,
    /// `host path:container path[:ro]`.
    pub binds: Vec<String>,
    /// Joins this container's network namespace (`network_mode: container:<name>`): no
    /// network, alias, hostname or ports of its own.
    pub pod: Option<Role>,
    /// `uid:gid` to run as (files it writes into a bind mount belong to the user).
    pub user: Option<String>,
}

impl ContainerSpec {
    fn new(role: Role, images: &Images) -> Self {
        Self {
            role,
            image: role.image(images).to_string(),
            env: Vec::new(),
            cmd: Vec::new(),
            health: None,
            ports: Vec::new(),
            binds: Vec::new(),
            pod: None,
            user: None,
        }
    }

    fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.push((key.to_string(), value.into()));
        self
    }

    pub fn create_body(&self, names: &RunNames) -> ContainerCreateBody {
        let port_key = |p: u16| format!("{p}/tcp");
        let port_bindings: HashMap<String, Option<Vec<PortBinding>>> = self
            .ports
            .iter()
            .map(|(container, host)| (port_key(*container), Some(vec![PortBinding { host_ip: Some("127.0.0.1".into()), host_port: Some(host.to_string()) }])))
            .collect();
        if let Some(pod) = self.pod {
            return ContainerCreateBody {
                image: Some(self.image.clone()),
                env: Some(self.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
                cmd: (!self.cmd.is_empty()).then(|| self.cmd.clone()),
                healthcheck: self.health.as_ref().map(HealthCheck::to_config),
                labels: Some(names.labels(Some(self.role))),
                user: self.user.clone(),
                host_config: Some(HostConfig {
                    network_mode: Some(format!("container:{}", names.container(pod))),
                    binds: (!self.binds.is_empty()).then(|| self.binds.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            };
        }
        let endpoint = EndpointSettings { aliases: Some(vec![self.role.alias().to_string()]), ..Default::default() };
        ContainerCreateBody {
            image: Some(self.image.clone()),
            hostname: Some(self.role.alias().to_string()),
            env: Some(self.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            cmd: (!self.cmd.is_empty()).then(|| self.cmd.clone()),
            healthcheck: self.health.as_ref().map(HealthCheck::to_config),
            exposed_ports: Some(self.ports.iter().map(|(c, _)| port_key(*c)).collect()),
            labels: Some(names.labels(Some(self.role))),
            user: self.user.clone(),
            host_config: Some(HostConfig {
                network_mode: Some(names.network()),
                port_bindings: Some(port_bindings),
                binds: (!self.binds.is_empty()).then(|| self.binds.clone()),
                ..Default::default()
            }),
            networking_config: Some(NetworkingConfig { endpoints_config: Some(HashMap::from([(names.network(), endpoint)])) }),
            ..Default::default()
        }
    }
}

/// Host ports chosen at the first `up` (free ports, so parallel runs do not collide).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostPorts {
    pub postgres: u16,
    pub kafka: u16,
    pub connect: u16,
    pub mongo: u16,
    pub sink_http: u16,
    pub prometheus: u16,
    pub grafana: u16,
    /// Control APIs of the local set's pod proxies.
    #[serde(default)]
    pub connect_proxy: u16,
    #[serde(default)]
    pub sink_proxy: u16,
}

/// Inputs of the container specs that vary per run.
#[derive(Debug, Clone)]
pub struct SpecInputs<'a> {
    pub config: &'a DockerConfig,
    pub ports: &'a HostPorts,
    /// PostgreSQL superuser password (the sink and Connect receive it via env/config).
    pub pg_password: &'a str,
    /// The run folder on the host: the local set's Debezium and sink mount their
    /// configuration (and Debezium its offsets) from it.
    pub run_dir: &'a std::path::Path,
    /// `uid:gid` of the harness, for containers that write into the run folder.
    pub user: String,
}

pub fn container_spec(role: Role, inputs: &SpecInputs<'_>) -> ContainerSpec {
    let base = ContainerSpec::new(role, &inputs.config.images);
    let local = inputs.config.image_set == ImageSet::Local;
    match role {
        Role::Postgres => postgres_spec(base, inputs),
        Role::Kafka if local => tansu_spec(base, inputs),
        Role::Kafka => kafka_spec(base, inputs),
        Role::ConnectProxy | Role::SinkProxy => proxy_spec(base, role, inputs),
        Role::Connect if local => launcher_spec(base, inputs),
        Role::Connect => connect_spec(base, inputs),
        Role::Sink if local => pod_sink_spec(base, inputs),
        Role::Sink => sink_spec(base, inputs),
        Role::Mongo => mongo_spec(base, inputs),
        Role::OtelCollector => otel_collector_spec(base, inputs),
        Role::Tempo => config_file_spec(base, inputs, "-config.file=/etc/tempo.yaml", "docker/tempo/tempo.yaml", "/etc/tempo.yaml"),
        Role::Loki => config_file_spec(base, inputs, "-config.file=/etc/loki/config.yaml", "docker/loki/loki.yaml", "/etc/loki/config.yaml"),
        Role::Prometheus => prometheus_spec(base, inputs),
        Role::Grafana => grafana_spec(base, inputs),
    }
}

/// PostgreSQL with logical decoding on, as the local backend's `postgresql.conf` has it.
fn postgres_spec(base: ContainerSpec, inputs: &SpecInputs<'_>) -> ContainerSpec {
    let mut spec = base.env("POSTGRES_USER", "postgres").env("POSTGRES_PASSWORD", inputs.pg_password).env("POSTGRES_DB", "postgres");
    spec.cmd = [
        "postgres",
        "-c",
        "wal_level=logical",
        "-c",
        "max_wal_senders=10",
        "-c",
        "max_replication_slots=10",
        "-c",
        "max_connections=200",
        "-c",
        "track_commit_timestamp=on",
    ]
    .map(String::from)
    .to_vec();
    spec.health = Some(HealthCheck::shell("pg_isready -U postgres -d postgres -h 127.0.0.1"));
    spec.ports = vec![(POSTGRES_PORT, inputs.ports.postgres)];
    spec
}

/// The local set's broker: tansu advertises one listener, the published one, as the local
/// backend's broker advertises its proxy.
fn tansu_spec(base: ContainerSpec, inputs: &SpecInputs<'_>) -> ContainerSpec {
    let ports = inputs.ports;
    let mut spec = base.env("RUST_LOG", "warn");
    spec.cmd = vec![
        "broker".into(),
        "--cluster-id=cdc-harness".into(),
        format!("--listener-url=tcp://0.0.0.0:{KAFKA_EXTERNAL_PORT}"),
        format!("--advertised-listener-url=tcp://127.0.0.1:{}", ports.kafka),
        "--storage-engine=sqlite://tansu.db".into(),
    ];
    spec.health = Some(HealthCheck::shell(&format!("bash -c '</dev/tcp/127.0.0.1/{KAFKA_EXTERNAL_PORT}'")));
    spec.ports = vec![(KAFKA_EXTERNAL_PORT, ports.kafka)];
    spec
}

/// Apache Kafka, one KRaft node (broker and controller).
fn kafka_spec(base: ContainerSpec, inputs: &SpecInputs<'_>) -> ContainerSpec {
    let ports = inputs.ports;
    let mut spec = base
        .env("KAFKA_NODE_ID", "1")
        .env("KAFKA_PROCESS_ROLES", "broker,controller")
        .env("KAFKA_LISTENERS", format!("INTERNAL://:{KAFKA_INTERNAL_PORT},EXTERNAL://:{KAFKA_EXTERNAL_PORT},CONTROLLER://:9093"))
        .env("KAFKA_ADVERTISED_LISTENERS", format!("INTERNAL://kafka:{KAFKA_INTERNAL_PORT},EXTERNAL://127.0.0.1:{}", ports.kafka))
        .env("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "INTERNAL:PLAINTEXT,EXTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT")
        .env("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER")
        .env("KAFKA_INTER_BROKER_LISTENER_NAME", "INTERNAL")
        .env("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@kafka:9093")
        .env("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1")
        .env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        .env("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
        // Topics are created by the harness before the connector starts, as on the
        // local broker: a topic that appears by accident hides a misconfiguration.
        .env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false");
    spec.health =
        Some(HealthCheck::shell(&format!("/opt/kafka/bin/kafka-broker-api-versions.sh --bootstrap-server localhost:{KAFKA_INTERNAL_PORT} >/dev/null 2>&1")));
    spec.ports = vec![(KAFKA_EXTERNAL_PORT, ports.kafka)];
    spec
}

/// A pod's fault proxy: its own link to PostgreSQL, the shared broker link, and the
/// published ports of the pod (control API, the service's HTTP port).
fn proxy_spec(base: ContainerSpec, role: Role, inputs: &SpecInputs<'_>) -> ContainerSpec {
    let ports = inputs.ports;
    // Inside the pod the service reaches the broker at the address tansu advertises
    // (127.0.0.1:<published port>) and PostgreSQL at 127.0.0.1:5432.
    let (link, service_port, host_port, control) = match role {
        Role::ConnectProxy => ("debezium-postgres", CONNECT_PORT, ports.connect, ports.connect_proxy),
        _ => ("sink-target", SINK_HTTP_PORT, ports.sink_http, ports.sink_proxy),
    };
    let mut spec = base;
    spec.cmd = vec![
        "--link".into(),
        format!("broker={}=kafka:{KAFKA_EXTERNAL_PORT}", ports.kafka),
        "--link".into(),
        format!("{link}={POSTGRES_PORT}=postgres:{POSTGRES_PORT}"),
        "--control".into(),
        format!("0.0.0.0:{PROXY_CONTROL_PORT}"),
    ];
    spec.health = Some(HealthCheck::shell(&format!("bash -c '</dev/tcp/127.0.0.1/{PROXY_CONTROL_PORT}'")));
    spec.ports = vec![(PROXY_CONTROL_PORT, control), (service_port, host_port)];
    spec
}

/// The local set's Debezium: the embedded-engine launcher; its properties and offsets
/// live in the run folder (written by the backend before the start), so a restart resumes.
fn launcher_spec(base: ContainerSpec, inputs: &SpecInputs<'_>) -> ContainerSpec {
    let mut spec = base.env(crate::orchestrator::local::debezium::PASSWORD_ENV, inputs.pg_password);
    spec.cmd = vec![format!("{DEBEZIUM_DIR}/launcher.properties")];
    spec.binds = vec![format!("{}:{DEBEZIUM_DIR}", inputs.run_dir.join("debezium").display())];
    spec.health = Some(HealthCheck::shell(&format!("curl -fsS http://127.0.0.1:{CONNECT_PORT}/status >/dev/null")));
    spec.pod = Some(Role::ConnectProxy);
    spec.user = Some(inputs.user.clone());
    spec
}

/// Debezium's Kafka Connect (the connector is registered once it answers).
fn connect_spec(base: ContainerSpec, inputs: &SpecInputs<'_>) -> ContainerSpec {
    let mut spec = base
        .env("BOOTSTRAP_SERVERS", format!("kafka:{KAFKA_INTERNAL_PORT}"))
        .env("GROUP_ID", "cdc-connect")
        .env("CONFIG_STORAGE_TOPIC", "connect_configs")
        .env("OFFSET_STORAGE_TOPIC", "connect_offsets")
        .env("STATUS_STORAGE_TOPIC", "connect_statuses")
        .env("CONFIG_STORAGE_REPLICATION_FACTOR", "1")
        .env("OFFSET_STORAGE_REPLICATION_FACTOR", "1")
        .env("STATUS_STORAGE_REPLICATION_FACTOR", "1")
        .env("KEY_CONVERTER", "org.apache.kafka.connect.json.JsonConverter")
        .env("VALUE_CONVERTER", "org.apache.kafka.connect.json.JsonConverter")
        .env("CONNECT_KEY_CONVERTER_SCHEMAS_ENABLE", "false")
        .env("CONNECT_VALUE_CONVERTER_SCHEMAS_ENABLE", "false")
        // Source offsets flushed every second: a kill re-sends at most a second of events.
        .env("OFFSET_FLUSH_INTERVAL_MS", "1000");
    spec.health = Some(HealthCheck::shell(&format!("curl -fsS http://localhost:{CONNECT_PORT}/ >/dev/null")));
    spec.ports = vec![(CONNECT_PORT, inputs.ports.connect)];
    spec
}

/// The local set's sink: the same sink.toml the local backend writes, mounted over the image's.
fn pod_sink_spec(base: ContainerSpec, inputs: &SpecInputs<'_>) -> ContainerSpec {
    let mut spec = base.env("SINK__TARGET__PASSWORD", inputs.pg_password);
    spec.binds = vec![format!("{}:/etc/sink/sink.toml:ro", inputs.run_dir.join("sink").join("sink.toml").display())];
    spec.health = Some(HealthCheck::shell(&format!("curl -fsS http://127.0.0.1:{SINK_HTTP_PORT}/readyz >/dev/null")));
    spec.pod = Some(Role::SinkProxy);
    spec
}

/// The sink's `[target]` kind and URL inside the run network (no password: PostgreSQL's
/// comes from the environment).
fn sink_target(target: TargetKind) -> (&'static str, String) {
    match target {
        TargetKind::Postgres => {
            let port = POSTGRES_PORT.to_string();
            let pairs = [("host", "postgres"), ("port", port.as_str()), ("user", "postgres"), ("dbname", TARGET_DB)];
            ("postgres", secure_conn::pg::conninfo(&pairs))
        }
        TargetKind::Mongodb => ("mongodb", format!("mongodb://mongo:{MONGO_PORT}")),
    }
}

/// The sink image: it ships /etc/sink/sink.toml (docker/sink/sink.toml); everything that
/// differs per run is an environment override.
fn sink_spec(base: ContainerSpec, inputs: &SpecInputs<'_>) -> ContainerSpec {
    let (kind, url) = sink_target(inputs.config.target);
    let mut spec = base
        .env("SINK__KAFKA__BROKERS", format!("kafka:{KAFKA_INTERNAL_PORT}"))
        .env("SINK__KAFKA__GROUP_ID", GROUP_ID)
        .env("SINK__TARGET__KIND", kind)
        .env("SINK__TARGET__URL", url)
        .env("SINK__HTTP__LISTEN", format!("0.0.0.0:{SINK_HTTP_PORT}"));
    if inputs.config.target == TargetKind::Postgres {
        spec = spec.env("SINK__TARGET__PASSWORD", inputs.pg_password);
    }
    spec.health = Some(HealthCheck::shell(&format!("curl -fsS http://127.0.0.1:{SINK_HTTP_PORT}/readyz >/dev/null")));
    spec.ports = vec![(SINK_HTTP_PORT, inputs.ports.sink_http)];
    spec
}

fn mongo_spec(base: ContainerSpec, inputs: &SpecInputs<'_>) -> ContainerSpec {
    let mut spec = base;
    spec.health = Some(HealthCheck::shell("mongosh --quiet --eval 'quit(db.adminCommand({ping: 1}).ok ? 0 : 1)'"));
    spec.ports = vec![(MONGO_PORT, inputs.ports.mongo)];
    spec
}

fn otel_collector_spec(base: ContainerSpec, inputs: &SpecInputs<'_>) -> ContainerSpec {
    let mut spec = base;
    spec.cmd = vec!["--config=/etc/otelcol/config.yaml".into()];
    spec.binds = vec![
        bind(&inputs.config.assets_dir, "docker/otel/collector.yaml", "/etc/otelcol/config.yaml"),
        // The filelog receiver tails container logs for Loki.
        "/var/lib/docker/containers:/var/lib/docker/containers:ro".into(),
    ];
    spec
}

/// A service configured by one file of the repository (Tempo, Loki): `flag` names where
/// it is mounted.
fn config_file_spec(base: ContainerSpec, inputs: &SpecInputs<'_>, flag: &str, asset: &str, target: &str) -> ContainerSpec {
    let mut spec = base;
    spec.cmd = vec![flag.into()];
    spec.binds = vec![bind(&inputs.config.assets_dir, asset, target)];
    spec
}

fn prometheus_spec(base: ContainerSpec, inputs: &SpecInputs<'_>) -> ContainerSpec {
    let mut spec = base;
    spec.cmd = ["--config.file=/etc/prometheus/prometheus.yml", "--web.enable-lifecycle", "--web.enable-remote-write-receiver"].map(String::from).to_vec();
    spec.binds = vec![bind(&inputs.config.assets_dir, "prometheus", "/etc/prometheus")];
    spec.health = Some(HealthCheck::shell(&format!("wget -q -O /dev/null http://127.0.0.1:{PROMETHEUS_PORT}/-/ready")));
    spec.ports = vec![(PROMETHEUS_PORT, inputs.ports.prometheus)];
    spec
}

fn grafana_spec(base: ContainerSpec, inputs: &SpecInputs<'_>) -> ContainerSpec {
    let mut spec = base.env("GF_AUTH_ANONYMOUS_ENABLED", "true").env("GF_AUTH_ANONYMOUS_ORG_ROLE", "Viewer");
    spec.binds = vec![
        bind(&inputs.config.assets_dir, "grafana/provisioning", "/etc/grafana/provisioning"),
        bind(&inputs.config.assets_dir, "grafana/dashboards", "/var/lib/grafana/dashboards"),
    ];
    spec.health = Some(HealthCheck::shell(&format!("wget -q -O /dev/null http://127.0.0.1:{GRAFANA_PORT}/api/health")));
    spec.ports = vec![(GRAFANA_PORT, inputs.ports.grafana)];
    spec
}

fn bind(assets: &std::path::Path, relative: &str, target: &str) -> String {
    format!("{}:{target}:ro", assets.join(relative).display())
}

/// Body of `POST /connectors`: the same Debezium settings as the local launcher
/// (`local::debezium::configure`), with the database reached by its network alias.
/// `defaults`: Debezium's own encoding defaults (schemas on, precise decimals, adaptive
/// times), see `StackConfig::debezium_defaults`.
pub fn connector_request(pg_password: &str, poll_interval_ms: u32, defaults: bool) -> Value {
    let tables = crate::config::captured_tables("public");
    let mut request = json!({
        "name": CONNECTOR_NAME,
        "config": {
            "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
            "tasks.max": "1",
            "database.hostname": "postgres",
            "database.port": POSTGRES_PORT.to_string(),
            "database.user": "postgres",
            "database.password": pg_password,
            "database.dbname": SOURCE_DB,
            "topic.prefix": TOPIC_PREFIX,
            "plugin.name": "pgoutput",
            "slot.name": SLOT_NAME,
            "publication.name": PUBLICATION_NAME,
            "publication.autocreate.mode": "filtered",
            "table.include.list": tables.join(","),
            "snapshot.mode": "initial",
            "tombstones.on.delete": "true",
            "decimal.handling.mode": "string",
            "time.precision.mode": "isostring",
            "poll.interval.ms": poll_interval_ms.to_string(),
            "max.batch.size": "2048",
            "key.converter": "org.apache.kafka.connect.json.JsonConverter",
            "key.converter.schemas.enable": "false",
            "value.converter": "org.apache.kafka.connect.json.JsonConverter",
            "value.converter.schemas.enable": "false",
            // Kafka Connect's JsonConverter writes a column's DEFAULT in place of a NULL
            // unless told not to: a NULL in the source would arrive as the default.
            "value.converter.replace.null.with.default": "false",
            "errors.max.retries": "10",
            "heartbeat.interval.ms": crate::config::HEARTBEAT_INTERVAL_MS.to_string(),
            "heartbeat.action.query": crate::config::heartbeat_action_query("public")
        }
    });
    if defaults {
        if let Some(config) = request["config"].as_object_mut() {
            for key in ["decimal.handling.mode", "time.precision.mode", "key.converter.schemas.enable", "value.converter.schemas.enable"] {
                config.remove(key);
            }
        }
    }
    request
}

/// What an answer to `POST /connectors` means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// Created, or registered by an earlier `up` (its stored offsets make it resume).
    Registered,
    /// The workers are rebalancing (409 without "already exists", or 503 while the
    /// herder starts): ask again.
    Retry,
    Failed,
}

pub fn registration_outcome(status: u16, body: &str) -> Registration {
    match status {
        200..=299 => Registration::Registered,
        409 if body.contains("already exists") => Registration::Registered,
        409 | 503 => Registration::Retry,
        _ => Registration::Failed,
    }
}

/// The topics created before the connector starts.
pub fn topics() -> Vec<String> {
    crate::config::pipeline_topics()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs_with<'a>(config: &'a DockerConfig, ports: &'a HostPorts) -> SpecInputs<'a> {
        SpecInputs { config, ports, pg_password: "pw", run_dir: std::path::Path::new("/runs/r1"), user: "1000:1000".into() }
    }

    fn ports() -> HostPorts {
        HostPorts {
            postgres: 15432,
            kafka: 19092,
            connect: 18083,
            mongo: 27018,
            sink_http: 19095,
            prometheus: 19090,
            grafana: 13000,
            connect_proxy: 17070,
            sink_proxy: 17071,
        }
    }

    fn env_of(body: &ContainerCreateBody) -> Vec<String> {
        body.env.clone().unwrap_or_default()
    }

    #[test]
    fn names_and_labels_carry_the_run_id() {
        let names = RunNames::new("r1");
        assert_eq!(names.network(), "cdc-r1");
        assert_eq!(names.container(Role::Kafka), "cdc-r1-kafka");
        let net = network_request(&names);
        assert_eq!(net.labels.unwrap().get(LABEL_RUN).map(String::as_str), Some("r1"));
        assert_eq!(label_filter(Some("r1"))["label"], vec!["io.cdc-harness.run=r1".to_string()]);
        assert_eq!(label_filter(None)["label"], vec!["io.cdc-harness.run".to_string()]);
    }

    #[test]
    fn every_container_is_labelled_networked_and_published_on_loopback() {
        let config = DockerConfig::default();
        let ports = ports();
        let names = RunNames::new("r1");
        for role in [Role::Postgres, Role::Kafka, Role::Connect, Role::Mongo, Role::Sink, Role::Prometheus, Role::Grafana] {
            let body = container_spec(role, &inputs_with(&config, &ports)).create_body(&names);
            let labels = body.labels.clone().unwrap();
            assert_eq!(labels[LABEL_RUN], "r1", "{role:?}");
            assert_eq!(labels[LABEL_ROLE], role.alias());
            let host = body.host_config.clone().unwrap();
            assert_eq!(host.network_mode.as_deref(), Some("cdc-r1"));
            for bindings in host.port_bindings.unwrap().values() {
                let binding = &bindings.as_ref().unwrap()[0];
                assert_eq!(binding.host_ip.as_deref(), Some("127.0.0.1"), "{role:?} must not listen on all interfaces");
            }
            let aliases = body.networking_config.unwrap().endpoints_config.unwrap()["cdc-r1"].aliases.clone().unwrap();
            assert_eq!(aliases, vec![role.alias().to_string()]);
            assert!(body.healthcheck.is_some(), "{role:?} needs a health check");
        }
    }

    #[test]
    fn postgres_runs_with_logical_replication_and_a_health_check() {
        let config = DockerConfig::default();
        let ports = ports();
        let body = container_spec(Role::Postgres, &inputs_with(&config, &ports)).create_body(&RunNames::new("r"));
        assert_eq!(body.image.as_deref(), Some("postgres:15"));
        assert!(body.cmd.clone().unwrap_or_default().windows(2).any(|w| w[0] == "-c" && w[1] == "wal_level=logical"));
        assert!(env_of(&body).contains(&"POSTGRES_PASSWORD=pw".to_string()));
        let health = body.healthcheck.unwrap();
        assert_eq!(health.test.unwrap()[0], "CMD-SHELL");
        assert_eq!(health.interval, Some(2_000_000_000));
        let bindings = body.host_config.unwrap().port_bindings.unwrap();
        assert_eq!(bindings["5432/tcp"].as_ref().unwrap()[0].host_port.as_deref(), Some("15432"));
    }

    #[test]
    fn kafka_is_kraft_and_advertises_the_published_port() {
        let config = DockerConfig::default();
        let ports = ports();
        let env = env_of(&container_spec(Role::Kafka, &inputs_with(&config, &ports)).create_body(&RunNames::new("r")));
        assert!(env.contains(&"KAFKA_PROCESS_ROLES=broker,controller".to_string()));
        assert!(env.contains(&"KAFKA_ADVERTISED_LISTENERS=INTERNAL://kafka:19092,EXTERNAL://127.0.0.1:19092".to_string()));
        assert!(env.contains(&"KAFKA_AUTO_CREATE_TOPICS_ENABLE=false".to_string()));
    }

    #[test]
    fn the_local_set_runs_tansu_advertising_the_published_port() {
        let local = super::super::images::LocalImages {
            base: "b".into(),
            postgres: "cdc-harness/postgres:1".into(),
            broker: "cdc-harness/broker:2".into(),
            debezium: "cdc-harness/debezium:3".into(),
            sink: "cdc-harness/sink:4".into(),
            proxy: "cdc-harness/proxy:5".into(),
        };
        let config = DockerConfig { images: Images::with_local(&local), image_set: ImageSet::Local, ..DockerConfig::default() };
        let ports = ports();
        let body = container_spec(Role::Kafka, &inputs_with(&config, &ports)).create_body(&RunNames::new("r"));
        assert_eq!(body.image.as_deref(), Some("cdc-harness/broker:2"));
        let cmd = body.cmd.clone().unwrap();
        assert!(cmd.contains(&format!("--advertised-listener-url=tcp://127.0.0.1:{}", ports.kafka)), "{cmd:?}");
        assert!(!env_of(&body).iter().any(|e| e.starts_with("KAFKA_")), "no Kafka settings for tansu");
        let pg = container_spec(Role::Postgres, &inputs_with(&config, &ports)).create_body(&RunNames::new("r"));
        assert_eq!(pg.image.as_deref(), Some("cdc-harness/postgres:1"));
        assert_eq!(config.images.mongo, Images::default().mongo, "no local MongoDB image");
    }

    fn local_set() -> DockerConfig {
        let images = Images { proxy: "cdc-harness/proxy:5".into(), ..Images::default() };
        DockerConfig { images, image_set: ImageSet::Local, target: TargetKind::Postgres, ..DockerConfig::default() }
    }

    #[test]
    fn on_the_local_set_debezium_and_the_sink_run_as_pods_behind_their_fault_proxy() {
        let config = local_set();
        let ports = ports();
        let names = RunNames::new("r1");
        assert_eq!(Role::for_service(ServiceKind::Debezium, &config), vec![Role::ConnectProxy, Role::Connect]);
        assert_eq!(Role::for_service(ServiceKind::Sink, &config), vec![Role::SinkProxy, Role::Sink]);
        for (member, proxy, link, service_port, host_port, control) in [
            (Role::Connect, Role::ConnectProxy, "debezium-postgres", CONNECT_PORT, ports.connect, ports.connect_proxy),
            (Role::Sink, Role::SinkProxy, "sink-target", SINK_HTTP_PORT, ports.sink_http, ports.sink_proxy),
        ] {
            let body = container_spec(member, &inputs_with(&config, &ports)).create_body(&names);
            let host = body.host_config.clone().unwrap();
            assert_eq!(host.network_mode.as_deref(), Some(format!("container:cdc-r1-{}", proxy.alias()).as_str()), "{member:?}");
            assert!(host.port_bindings.is_none() && body.networking_config.is_none() && body.hostname.is_none(), "{member:?} owns no network");
            assert_eq!(body.labels.unwrap()[LABEL_ROLE], member.alias());

            let proxy_body = container_spec(proxy, &inputs_with(&config, &ports)).create_body(&names);
            assert_eq!(proxy_body.image.as_deref(), Some("cdc-harness/proxy:5"));
            let cmd = proxy_body.cmd.clone().unwrap().join(" ");
            // The broker at the address tansu advertises, PostgreSQL at its usual port.
            assert!(cmd.contains(&format!("--link broker={}=kafka:9092", ports.kafka)), "{cmd}");
            assert!(cmd.contains(&format!("--link {link}=5432=postgres:5432")), "{cmd}");
            let bindings = proxy_body.host_config.unwrap().port_bindings.unwrap();
            assert_eq!(bindings[&format!("{PROXY_CONTROL_PORT}/tcp")].as_ref().unwrap()[0].host_port, Some(control.to_string()));
            assert_eq!(bindings[&format!("{service_port}/tcp")].as_ref().unwrap()[0].host_port, Some(host_port.to_string()));
            assert!(proxy.is_proxy() && !member.is_proxy());
        }
        let debezium = container_spec(Role::Connect, &inputs_with(&config, &ports)).create_body(&names);
        assert_eq!(debezium.binds().first().map(String::as_str), Some("/runs/r1/debezium:/var/lib/debezium"));
        assert_eq!(debezium.user.as_deref(), Some("1000:1000"), "offsets written as the harness's user");
        assert!(env_of(&debezium).contains(&"CDC_PG_PASSWORD=pw".to_string()));
        let sink = container_spec(Role::Sink, &inputs_with(&config, &ports)).create_body(&names);
        assert_eq!(sink.binds().first().map(String::as_str), Some("/runs/r1/sink/sink.toml:/etc/sink/sink.toml:ro"));
        // Upstream images keep Kafka's internal listener: no pods there.
        assert_eq!(Role::for_service(ServiceKind::Debezium, &DockerConfig::default()), vec![Role::Connect]);
        assert_eq!(Role::Connect.pod(&DockerConfig::default()), None);
    }

    trait Binds {
        fn binds(&self) -> Vec<String>;
    }

    impl Binds for ContainerCreateBody {
        fn binds(&self) -> Vec<String> {
            self.host_config.as_ref().and_then(|h| h.binds.clone()).unwrap_or_default()
        }
    }

    #[test]
    fn sink_targets_follow_the_config() {
        let mut config = DockerConfig::default();
        let ports = ports();
        let env = env_of(&container_spec(Role::Sink, &inputs_with(&config, &ports)).create_body(&RunNames::new("r")));
        assert!(env.contains(&"SINK__TARGET__KIND=mongodb".to_string()));
        assert!(env.contains(&"SINK__TARGET__URL=mongodb://mongo:27017".to_string()));
        assert!(!env.iter().any(|e| e.starts_with("SINK__TARGET__PASSWORD")));
        config.target = TargetKind::Postgres;
        let env = env_of(&container_spec(Role::Sink, &inputs_with(&config, &ports)).create_body(&RunNames::new("r")));
        assert!(env.contains(&"SINK__TARGET__KIND=postgres".to_string()));
        assert!(env.contains(&"SINK__TARGET__PASSWORD=pw".to_string()));
        assert!(env.contains(&"SINK__KAFKA__BROKERS=kafka:19092".to_string()));
        assert_eq!(Role::for_service(ServiceKind::Sink, &DockerConfig { target: TargetKind::Postgres, ..DockerConfig::default() }), vec![Role::Sink]);
        assert_eq!(
            Role::for_service(ServiceKind::Sink, &DockerConfig { target: TargetKind::Mongodb, ..DockerConfig::default() }),
            vec![Role::Mongo, Role::Sink]
        );
    }

    #[test]
    fn the_sink_reaches_its_target_by_its_name_on_the_run_network_without_a_password() {
        let (kind, url) = sink_target(TargetKind::Postgres);
        assert_eq!(kind, "postgres");
        assert!(url.contains("host='postgres'") || url.contains("host=postgres"), "{url}");
        assert!(url.contains(TARGET_DB) && !url.contains("password"), "{url}");
        assert_eq!(sink_target(TargetKind::Mongodb), ("mongodb", "mongodb://mongo:27017".to_string()));
    }

    #[test]
    fn connector_matches_the_local_launcher_settings() {
        let body = connector_request("pw", 10, false);
        assert_eq!(body["name"], CONNECTOR_NAME);
        let c = &body["config"];
        for (key, value) in [
            ("plugin.name", "pgoutput"),
            ("slot.name", "cdc_slot"),
            ("publication.name", "cdc_publication"),
            ("publication.autocreate.mode", "filtered"),
            ("topic.prefix", "cdc"),
            ("tombstones.on.delete", "true"),
            ("decimal.handling.mode", "string"),
            ("time.precision.mode", "isostring"),
            ("poll.interval.ms", "10"),
            ("value.converter.schemas.enable", "false"),
            ("value.converter.replace.null.with.default", "false"),
            ("key.converter.schemas.enable", "false"),
            ("database.dbname", "app"),
            ("table.include.list", "public.customer,public.address,public.orders,public.order_item,public.cdc_heartbeat"),
            ("heartbeat.interval.ms", "5000"),
        ] {
            assert_eq!(c[key], value, "{key}");
        }
        assert!(c["heartbeat.action.query"].as_str().is_some_and(|q| q.contains("public.cdc_heartbeat")));
        assert_eq!(topics().len(), 7, "{:?}", topics());
    }

    #[test]
    fn a_rebalance_conflict_is_retried_and_an_existing_connector_is_kept() {
        assert_eq!(registration_outcome(201, "{}"), Registration::Registered);
        assert_eq!(registration_outcome(409, r#"{"error_code":409,"message":"Connector cdc-harness already exists"}"#), Registration::Registered);
        let rebalance = r#"{"error_code":409,"message":"Cannot complete request because of a conflicting operation (e.g. worker rebalance)"}"#;
        assert_eq!(registration_outcome(409, rebalance), Registration::Retry);
        assert_eq!(registration_outcome(503, "starting"), Registration::Retry);
        assert_eq!(registration_outcome(400, "Connector configuration is invalid"), Registration::Failed);
    }

    #[test]
    fn roles_round_trip_through_their_alias() {
        for role in
            [Role::Postgres, Role::Kafka, Role::Connect, Role::Mongo, Role::Sink, Role::ConnectProxy, Role::SinkProxy].into_iter().chain(Role::OBSERVABILITY)
        {
            assert_eq!(Role::from_alias(role.alias()), Some(role));
        }
        assert_eq!(Role::from_alias("nope"), None);
    }
}
