//! The local-process backend: every service is a child process of the harness with its
//! data under the run folder. State (pids, ports, the generated password) lives in
//! `<run dir>/stack.json` (mode 0600) so that `harness status` and `harness down` in a
//! later invocation find what `harness up` started.

pub mod broker;
pub mod debezium;
pub mod postgres;
pub mod process;
pub mod sink;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use self::process::ProcessHandle;
use super::{Endpoints, Orchestrator, PgEndpoint, Secret, ServiceError, ServiceKind, ServiceState, ServiceStatus};
use crate::config::{DLQ_TOPIC, StackConfig, TABLES, topic_for};
use crate::provision::Provisioned as Tools;

const STATE_FILE: &str = "stack.json";

/// Ports and credentials chosen at the first `up` and kept for restarts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ports {
    pub postgres: u16,
    pub broker: u16,
    pub debezium_status: u16,
    pub sink_http: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StackState {
    pub backend: String,
    pub config: StackConfig,
    pub ports: Ports,
    pub password: Secret,
    pub services: BTreeMap<ServiceKind, ProcessHandle>,
    /// Whether Debezium already finished its initial snapshot once (a restart resumes
    /// streaming from its offsets and takes no new snapshot).
    pub snapshot_done: bool,
}

impl StackState {
    fn endpoints(&self) -> Endpoints {
        Endpoints {
            postgres: PgEndpoint {
                host: "127.0.0.1".into(),
                port: self.ports.postgres,
                user: "postgres".into(),
                password: self.password.clone(),
                source_db: postgres::SOURCE_DB.into(),
                target_db: postgres::TARGET_DB.into(),
            },
            kafka: format!("127.0.0.1:{}", self.ports.broker),
            debezium_status: format!("http://127.0.0.1:{}/status", self.ports.debezium_status),
            sink_http: format!("http://127.0.0.1:{}", self.ports.sink_http),
        }
    }
}

/// A stack of local processes. Dropping it tears everything down unless it was detached
/// (`harness up` leaves the services running for later commands).
pub struct LocalStack {
    run_dir: PathBuf,
    state: StackState,
    tools: Option<Tools>,
    detached: bool,
}

impl LocalStack {
    /// Opens the stack in `config.run_dir`, reusing its state (ports, password, running
    /// services) when a previous `up` left one.
    pub fn new(config: StackConfig) -> Result<Self, ServiceError> {
        let run_dir = absolute(&config.run_dir);
        let state = match read_state(&run_dir)? {
            Some(state) => state,
            None => StackState {
                backend: "local".into(),
                config: StackConfig { run_dir: run_dir.clone(), ..config },
                ports: Ports {
                    postgres: free_port()?,
                    broker: free_port()?,
                    debezium_status: free_port()?,
                    sink_http: free_port()?,
                },
                password: Secret::generate(),
                services: BTreeMap::new(),
                snapshot_done: false,
            },
        };
        Ok(Self { run_dir, state, tools: None, detached: false })
    }

    /// Opens an existing stack's state without changing anything (for `status`/`down`).
    pub fn open(run_dir: &Path) -> Result<Option<Self>, ServiceError> {
        let run_dir = absolute(run_dir);
        Ok(read_state(&run_dir)?.map(|state| Self { run_dir, state, tools: None, detached: false }))
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    pub fn endpoints(&self) -> Endpoints {
        self.state.endpoints()
    }

    pub fn handle(&self, service: ServiceKind) -> Option<&ProcessHandle> {
        self.state.services.get(&service)
    }

    /// Leaves the services running when this value is dropped.
    pub fn detach(mut self) {
        self.detached = true;
    }

    fn services(&self) -> Vec<ServiceKind> {
        ServiceKind::ALL.into_iter().filter(|s| *s != ServiceKind::Sink || self.state.config.with_sink).collect()
    }

    fn tools(&mut self) -> Result<Tools, ServiceError> {
        if self.tools.is_none() {
            let with_sink = self.state.config.with_sink;
            self.tools = Some(tokio::task::block_in_place(|| Tools::provision(with_sink))?);
        }
        Ok(self.tools.clone().expect("provisioned above"))
    }

    fn save(&self) -> Result<(), ServiceError> {
        write_state(&self.run_dir, &self.state)
    }

    /// Starts `service` (if it is not running) and waits until it is ready.
    pub async fn start_service(&mut self, service: ServiceKind) -> Result<(), ServiceError> {
        if self.state.services.get(&service).is_some_and(ProcessHandle::is_alive) {
            return Ok(());
        }
        let tools = self.tools()?;
        let endpoints = self.endpoints();
        let ports = self.state.ports.clone();
        let config = self.state.config.clone();
        let run_dir = self.run_dir.clone();
        let ready_timeout = Duration::from_secs(120);
        match service {
            ServiceKind::Postgres => {
                let layout = postgres::PostgresLayout::new(&run_dir);
                postgres::init(&tools.pg_bin, &layout, ports.postgres, &self.state.password)?;
                let handle = postgres::start(&tools.pg_bin, &layout)?;
                self.record(service, handle.clone())?;
                postgres::wait_ready(&endpoints.postgres, &handle, Duration::from_secs(60)).await?;
                if postgres::bootstrap(&endpoints.postgres, &config.seed).await? {
                    tracing::info!(message = "source schema and seed data loaded", customers = config.seed.customers);
                }
            }
            ServiceKind::Broker => {
                let layout = broker::BrokerLayout::new(&run_dir);
                let handle = broker::start(&tools.tansu, &layout, ports.broker)?;
                self.record(service, handle.clone())?;
                broker::wait_ready(&endpoints.kafka, &handle, Duration::from_secs(60)).await?;
                let mut topics: Vec<String> = TABLES.iter().map(|t| topic_for(t)).collect();
                topics.push(DLQ_TOPIC.to_string());
                broker::create_topics(&endpoints.kafka, &topics, config.partitions).await?;
            }
            ServiceKind::Debezium => {
                let layout = debezium::DebeziumLayout::new(&run_dir);
                let settings = debezium::DebeziumSettings { poll_interval_ms: config.debezium_poll_interval_ms, status_port: ports.debezium_status };
                debezium::configure(&layout, &endpoints.postgres, &endpoints.kafka, &settings)?;
                let handle = debezium::start(&tools.java, &tools.debezium_libs, &layout, &endpoints.postgres)?;
                self.record(service, handle.clone())?;
                debezium::wait_ready(&endpoints.debezium_status, &handle, !self.state.snapshot_done, ready_timeout).await?;
                self.state.snapshot_done = true;
                self.save()?;
            }
            ServiceKind::Sink => {
                let layout = sink::SinkLayout::new(&run_dir);
                let bin = tools.sink.clone().ok_or_else(|| ServiceError::Setup { service, reason: "the stack was configured without a sink".into() })?;
                sink::configure(&layout, &endpoints.postgres, &endpoints.kafka, ports.sink_http)?;
                let handle = sink::start(&bin, &layout, &endpoints.postgres)?;
                self.record(service, handle.clone())?;
                sink::wait_ready(&endpoints.sink_http, &handle, ready_timeout).await?;
            }
        }
        Ok(())
    }

    fn record(&mut self, service: ServiceKind, handle: ProcessHandle) -> Result<(), ServiceError> {
        self.state.services.insert(service, handle);
        self.save()
    }

    /// SIGKILL: the service gets no chance to flush or commit.
    pub fn kill(&mut self, service: ServiceKind) {
        if let Some(handle) = self.state.services.get(&service) {
            let _ = handle.signal(Signal::SIGKILL);
            handle.wait_exit(Duration::from_secs(10));
        }
    }

    /// Graceful stop with the service's own shutdown signal; SIGKILL after the grace period.
    pub fn stop(&mut self, service: ServiceKind) -> bool {
        match self.state.services.get(&service) {
            Some(handle) => handle.stop(stop_signal(service), Duration::from_secs(30)),
            None => true,
        }
    }

    pub async fn restart(&mut self, service: ServiceKind) -> Result<(), ServiceError> {
        self.stop(service);
        self.start_service(service).await
    }

    async fn check(&self, service: ServiceKind) -> ServiceStatus {
        let endpoints = self.endpoints();
        let handle = self.state.services.get(&service);
        let alive = handle.is_some_and(ProcessHandle::is_alive);
        let (endpoint, log) = match service {
            ServiceKind::Postgres => (endpoints.postgres.display(&endpoints.postgres.source_db), "postgres.log"),
            ServiceKind::Broker => (endpoints.kafka.clone(), "broker.log"),
            ServiceKind::Debezium => (endpoints.debezium_status.clone(), "debezium.log"),
            ServiceKind::Sink => (endpoints.sink_http.clone(), "sink.log"),
        };
        let mut status = ServiceStatus {
            service,
            state: ServiceState::Stopped,
            pid: handle.filter(|_| alive).map(|h| h.pid),
            container: None,
            endpoint,
            log: self.run_dir.join("logs").join(log),
            detail: None,
        };
        if !alive {
            return status;
        }
        let probe: Result<(), String> = match service {
            ServiceKind::Postgres => match endpoints.postgres.connect("postgres").await {
                Ok(client) => client.simple_query("select 1").await.map(|_| ()).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
            ServiceKind::Broker => {
                let bootstrap = endpoints.kafka.clone();
                tokio::task::spawn_blocking(move || {
                    use rdkafka::consumer::{BaseConsumer, Consumer};
                    let consumer: BaseConsumer = broker::client_config(&bootstrap).create().map_err(|e| e.to_string())?;
                    consumer.fetch_metadata(None, Duration::from_secs(3)).map(|_| ()).map_err(|e| e.to_string())
                })
                .await
                .unwrap_or_else(|e| Err(e.to_string()))
            }
            ServiceKind::Debezium => match debezium::fetch_status(&endpoints.debezium_status).await {
                Ok(s) if s.streaming_connected => {
                    status.detail = Some(format!("{}; {} records sent", s.state, s.records_sent));
                    Ok(())
                }
                Ok(s) => Err(format!("state {}, streaming_connected false{}", s.state, s.last_error.map(|e| format!(": {e}")).unwrap_or_default())),
                Err(e) => Err(e),
            },
            ServiceKind::Sink => sink::is_ready(&endpoints.sink_http).await,
        };
        match probe {
            Ok(()) => status.state = ServiceState::Healthy,
            Err(reason) => {
                status.state = ServiceState::Unhealthy;
                status.detail = Some(reason);
            }
        }
        status
    }

    /// Stops every service in reverse start order and forgets them.
    fn teardown(&mut self) {
        for service in self.services().into_iter().rev() {
            if let Some(handle) = self.state.services.get(&service) {
                handle.stop(stop_signal(service), Duration::from_secs(20));
            }
        }
        // Services recorded but not in `services()` (config changed between runs).
        for handle in self.state.services.values() {
            handle.stop(Signal::SIGKILL, Duration::from_secs(5));
        }
        self.state.services.clear();
        let _ = self.save();
    }
}

/// Each service's graceful shutdown signal: postgres' "fast" shutdown is SIGINT; the JVM
/// runs its shutdown hook (engine close, offset commit) on SIGTERM.
fn stop_signal(service: ServiceKind) -> Signal {
    match service {
        ServiceKind::Postgres => Signal::SIGINT,
        _ => Signal::SIGTERM,
    }
}

impl Orchestrator for LocalStack {
    async fn up(&mut self) -> Result<Endpoints, ServiceError> {
        fs::create_dir_all(self.run_dir.join("logs")).map_err(|e| state_err(&self.run_dir, e))?;
        // The postgres user must be able to traverse into the run folder.
        let _ = fs::set_permissions(&self.run_dir, fs::Permissions::from_mode(0o755));
        self.save()?;
        self.tools()?;
        for service in self.services() {
            tracing::info!(message = "starting service", %service);
            eprintln!("up: starting {service}");
            let started = std::time::Instant::now();
            self.start_service(service).await?;
            eprintln!("up: {service} ready ({:.1}s)", started.elapsed().as_secs_f64());
        }
        Ok(self.endpoints())
    }

    async fn status(&self) -> Result<Vec<ServiceStatus>, ServiceError> {
        let mut out = Vec::new();
        for service in self.services() {
            out.push(self.check(service).await);
        }
        Ok(out)
    }

    async fn down(&mut self) -> Result<(), ServiceError> {
        tokio::task::block_in_place(|| self.teardown());
        Ok(())
    }
}

impl Drop for LocalStack {
    fn drop(&mut self) {
        if !self.detached {
            self.teardown();
        }
    }
}

fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() { path.to_path_buf() } else { std::env::current_dir().unwrap_or_default().join(path) }
}

fn free_port() -> Result<u16, ServiceError> {
    process::free_port().map_err(|e| ServiceError::State { path: PathBuf::from("127.0.0.1"), reason: format!("no free port: {e}") })
}

fn state_err(path: &Path, e: impl std::fmt::Display) -> ServiceError {
    ServiceError::State { path: path.to_path_buf(), reason: e.to_string() }
}

fn read_state(run_dir: &Path) -> Result<Option<StackState>, ServiceError> {
    let path = run_dir.join(STATE_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| state_err(&path, format!("unreadable ({e}); remove the run folder to start afresh"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(state_err(&path, e)),
    }
}

fn write_state(run_dir: &Path, state: &StackState) -> Result<(), ServiceError> {
    let path = run_dir.join(STATE_FILE);
    fs::create_dir_all(run_dir).map_err(|e| state_err(run_dir, e))?;
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(state).map_err(|e| state_err(&path, e))?;
    fs::write(&tmp, text).map_err(|e| state_err(&tmp, e))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).map_err(|e| state_err(&tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| state_err(&path, e))
}
