//! The local-process backend: every service is a child process of the harness with its
//! data under the run folder. State (pids, ports, the generated password) lives in
//! `<run dir>/stack.json` (mode 0600) so that `harness status` and `harness down` in a
//! later invocation find what `harness up` started.

pub mod broker;
pub mod debezium;
pub(crate) mod postgres;
pub mod process;
pub(crate) mod sink;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use self::process::ProcessHandle;
use super::services::{self, Services};
use super::state::{self, PortPicker, absolute, state_err};
use super::wait::{NotReady, WaitFor};
use super::{
    Backend, BackendKind, ConnectEndpoint, Endpoints, LeaderResolver, PgEndpoint, STOP_GRACE, Secret, ServiceControl, ServiceError, ServiceKind, ServiceState,
    ServiceStatus,
};
use crate::config::StackConfig;
use crate::faults::Link;
use crate::provision::Provisioned as Tools;
use fault_proxy::{FaultProxy, LinkFault};

const STATE_FILE: &str = "stack.json";

/// Ports and credentials chosen at the first `up` and kept for restarts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ports {
    pub postgres: u16,
    pub broker: u16,
    pub debezium_status: u16,
    pub sink_http: u16,
    /// Fault proxy ports (only used with `fault_proxies`).
    #[serde(default)]
    pub proxies: BTreeMap<Link, u16>,
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
        Endpoints::started(
            PgEndpoint {
                host: "127.0.0.1".into(),
                port: self.ports.postgres,
                user: "postgres".into(),
                password: self.password.clone(),
                source_db: crate::config::SOURCE_DB.into(),
                target_db: crate::config::TARGET_DB.into(),
                target_server: None,
                source_schema: crate::orchestrator::PUBLIC_SCHEMA.into(),
                params: Default::default(),
            },
            format!("127.0.0.1:{}", self.ports.broker),
            format!("http://127.0.0.1:{}/status", self.ports.debezium_status),
            format!("http://127.0.0.1:{}", self.ports.sink_http),
            // The launcher serves Connect's pause/resume/restart for its one connector.
            Some(ConnectEndpoint { url: format!("http://127.0.0.1:{}", self.ports.debezium_status), connector: crate::config::CONNECTOR_NAME.into() }),
        )
    }
}

/// A stack of local processes. Dropping it tears everything down unless it was detached
/// (`harness up` leaves the services running for later commands).
pub struct LocalStack {
    run_dir: PathBuf,
    state: StackState,
    tools: Option<Tools>,
    detached: bool,
    proxies: BTreeMap<Link, FaultProxy>,
}

impl LocalStack {
    /// Opens the stack in `config.run_dir`, reusing its state (ports, password, running
    /// services) when a previous `up` left one.
    pub fn new(config: StackConfig) -> Result<Self, ServiceError> {
        let run_dir = absolute(&config.run_dir);
        let mut picker = PortPicker::default();
        let state = match read_state(&run_dir)? {
            Some(state) => state,
            None => StackState {
                backend: "local".into(),
                config: StackConfig { run_dir: run_dir.clone(), ..config },
                ports: Ports {
                    postgres: picker.free_port()?,
                    broker: picker.free_port()?,
                    debezium_status: picker.free_port()?,
                    sink_http: picker.free_port()?,
                    proxies: Link::ALL.iter().map(|l| Ok((*l, picker.free_port()?))).collect::<Result<_, ServiceError>>()?,
                },
                password: Secret::generate(),
                services: BTreeMap::new(),
                snapshot_done: false,
            },
        };
        Ok(Self { run_dir, state, tools: None, detached: false, proxies: BTreeMap::new() })
    }

    /// Opens an existing stack's state without changing anything (for `status`/`down`).
    pub fn open(run_dir: &Path) -> Result<Option<Self>, ServiceError> {
        let run_dir = absolute(run_dir);
        Ok(read_state(&run_dir)?.map(|state| Self { run_dir, state, tools: None, detached: false, proxies: BTreeMap::new() }))
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    pub fn handle(&self, service: ServiceKind) -> Option<&ProcessHandle> {
        self.state.services.get(&service)
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

    /// The port a client reaches `link`'s server on: the proxy when proxies are on.
    fn port_via(&self, link: Link, direct: u16) -> u16 {
        if self.state.config.fault_proxies { self.state.ports.proxies.get(&link).copied().unwrap_or(direct) } else { direct }
    }

    /// Starts the fault proxies (in this process) for every link.
    async fn start_proxies(&mut self) -> Result<(), ServiceError> {
        if !self.state.config.fault_proxies || !self.proxies.is_empty() {
            return Ok(());
        }
        let ports = self.state.ports.clone();
        for link in Link::ALL {
            let upstream = match link {
                Link::Broker => ports.broker,
                Link::DebeziumPostgres | Link::SinkTarget => ports.postgres,
            };
            let listen = ports.proxies.get(&link).copied().unwrap_or(0);
            let proxy = FaultProxy::start(listen, format!("127.0.0.1:{upstream}"), true)
                .await
                .map_err(|e| ServiceError::Setup { service: ServiceKind::Broker, reason: format!("fault proxy for {}: {e}", link.name()) })?;
            self.proxies.insert(link, proxy);
        }
        Ok(())
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
                self.start_proxies().await?;
                let advertised = self.port_via(Link::Broker, ports.broker);
                let handle = broker::start(&tools.tansu, &layout, ports.broker, advertised)?;
                self.record(service, handle.clone())?;
                broker::wait_ready(&endpoints.kafka, &handle, &layout, Duration::from_secs(60)).await?;
                broker::create_topics(&endpoints.kafka, &crate::config::pipeline_topics(), config.partitions).await?;
            }
            ServiceKind::Debezium => {
                let layout = debezium::DebeziumLayout::new(&run_dir);
                let settings = debezium::DebeziumSettings {
                    poll_interval_ms: config.debezium_poll_interval_ms,
                    status_port: ports.debezium_status,
                    status_address: "127.0.0.1",
                    defaults: config.debezium_defaults,
                };
                let pg = PgEndpoint { port: self.port_via(Link::DebeziumPostgres, ports.postgres), ..endpoints.postgres.clone() };
                debezium::configure(&layout, &pg, &endpoints.kafka, &endpoints.kafka_client, &settings)?;
                let handle = debezium::start(&tools.java, &tools.debezium_libs, &layout, &endpoints.postgres, &endpoints.kafka_client)?;
                self.record(service, handle.clone())?;
                debezium::wait_ready(&endpoints.debezium_status, &handle, !self.state.snapshot_done, ready_timeout).await?;
                self.state.snapshot_done = true;
                self.save()?;
            }
            ServiceKind::Sink => {
                let layout = sink::SinkLayout::new(&run_dir);
                let bin = tools.sink.clone().ok_or_else(|| ServiceError::Setup { service, reason: "the stack was configured without a sink".into() })?;
                let pg = PgEndpoint { port: self.port_via(Link::SinkTarget, ports.postgres), ..endpoints.postgres.clone() };
                sink::configure(&layout, &pg, &endpoints.kafka, &format!("127.0.0.1:{}", ports.sink_http), config.debezium_defaults)?;
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

    /// The run folder, private (it holds the state file, the logs and the databases): only
    /// the postgres user's group may traverse it, to reach the server's folder.
    fn private_run_dir(&self) -> Result<(), ServiceError> {
        crate::orchestrator::state::private_dir(&self.run_dir, postgres::traverse_gid()?).map_err(|e| state_err(&self.run_dir, e))?;
        fs::create_dir_all(self.run_dir.join("logs")).map_err(|e| state_err(&self.run_dir, e))
    }

    /// `up`, except that Debezium is killed `after` its initial snapshot started and
    /// started again `downtime` later; returns that fault's timeline entry (seconds are
    /// relative to the kill, since the load has not started yet).
    async fn snapshot_kill(&mut self, after: Duration, downtime: Duration) -> Result<crate::report::model::FaultRecord, ServiceError> {
        self.private_run_dir()?;
        self.tools()?;
        self.start_service(ServiceKind::Postgres).await?;
        self.start_service(ServiceKind::Broker).await?;
        let tools = self.tools()?;
        let endpoints = self.endpoints();
        let layout = debezium::DebeziumLayout::new(&self.run_dir);
        let settings = debezium::DebeziumSettings {
            poll_interval_ms: self.state.config.debezium_poll_interval_ms,
            status_port: self.state.ports.debezium_status,
            status_address: "127.0.0.1",
            defaults: self.state.config.debezium_defaults,
        };
        let pg = PgEndpoint { port: self.port_via(Link::DebeziumPostgres, self.state.ports.postgres), ..endpoints.postgres.clone() };
        debezium::configure(&layout, &pg, &endpoints.kafka, &endpoints.kafka_client, &settings)?;
        let handle = debezium::start(&tools.java, &tools.debezium_libs, &layout, &endpoints.postgres, &endpoints.kafka_client)?;
        self.record(ServiceKind::Debezium, handle.clone())?;
        // Wait for the snapshot to be under way, then kill in the middle of it.
        let never_started = || ServiceError::NotReady {
            service: ServiceKind::Debezium,
            waited: Duration::from_secs(120),
            reason: "the snapshot never started".into(),
            log: handle.log.clone(),
        };
        WaitFor::new(ServiceKind::Debezium, Duration::from_secs(120), handle.log.clone())
            .poll(Duration::from_millis(20))
            .until(|| async {
                match debezium::fetch_status(&endpoints.debezium_status).await {
                    Ok(status) if status.records_sent > 0 || status.state == "snapshotting" => Ok(()),
                    _ if !handle.is_alive() => Err(NotReady::Never(never_started())),
                    _ => Err(NotReady::Yet("the snapshot never started".into())),
                }
            })
            .await?;
        tokio::time::sleep(after).await;
        let sent_before_kill = debezium::fetch_status(&endpoints.debezium_status).await.map(|s| s.records_sent).unwrap_or(0);
        let killed = std::time::Instant::now();
        self.signal_kill(ServiceKind::Debezium);
        eprintln!("up: killed debezium during the snapshot ({sent_before_kill} records sent)");
        tokio::time::sleep(downtime).await;
        let end_s = killed.elapsed().as_secs_f64();
        self.start_service(ServiceKind::Debezium).await?;
        let recovered = killed.elapsed().as_secs_f64() - end_s;
        if self.state.config.with_sink {
            self.start_service(ServiceKind::Sink).await?;
        }
        Ok(crate::report::model::FaultRecord {
            kind: "kill".into(),
            target: "debezium (during snapshot)".into(),
            parameters: [
                ("records_sent_before_kill".to_string(), sent_before_kill.to_string()),
                ("downtime_s".to_string(), downtime.as_secs_f64().to_string()),
            ]
            .into(),
            start_s: 0.0,
            end_s: Some(end_s),
            service_recovery_s: Some(recovered),
            pipeline_recovery_s: None,
        })
    }

    /// SIGKILL, and the wait for the process to be gone.
    fn signal_kill(&self, service: ServiceKind) {
        if let Some(handle) = self.state.services.get(&service) {
            let _ = handle.signal(Signal::SIGKILL);
            handle.wait_exit(Duration::from_secs(10));
        }
    }

    /// `signal` to the service's process group, if it runs.
    fn signal(&self, service: ServiceKind, signal: Signal) {
        if let Some(handle) = self.state.services.get(&service) {
            let _ = handle.signal(signal);
        }
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
        let status = ServiceStatus {
            service,
            state: ServiceState::Stopped,
            pid: handle.filter(|_| alive).map(|h| h.pid),
            container: None,
            endpoint,
            log: self.run_dir.join("logs").join(log),
            detail: None,
            security: None,
        };
        if !alive {
            return status;
        }
        let mut detail = None;
        let probe: Result<(), String> = match service {
            ServiceKind::Postgres => services::postgres_answers(&endpoints.postgres).await,
            ServiceKind::Broker => services::broker_answers(endpoints.kafka.clone()).await,
            ServiceKind::Debezium => match debezium::fetch_status(&endpoints.debezium_status).await {
                Ok(s) if s.streaming_connected => {
                    detail = Some(format!("{}; {} records sent", s.state, s.records_sent));
                    Ok(())
                }
                Ok(s) => Err(format!("state {}, streaming_connected false{}", s.state, s.last_error.map(|e| format!(": {e}")).unwrap_or_default())),
                Err(e) => Err(e),
            },
            ServiceKind::Sink => sink::is_ready(&endpoints.sink_http).await,
        };
        ServiceStatus { detail, ..status }.probed(probe)
    }

    /// Stops every service in reverse start order and forgets the ones that stopped.
    /// Returns the services still running (they stay in the state file, so a later
    /// `harness down` can try again).
    fn teardown(&mut self) -> Vec<String> {
        for service in self.services().into_iter().rev() {
            if let Some(handle) = self.state.services.get(&service) {
                handle.stop(stop_signal(service), Duration::from_secs(20));
            }
        }
        // Services recorded but not in `services()` (config changed between runs).
        for handle in self.state.services.values() {
            handle.stop(Signal::SIGKILL, Duration::from_secs(5));
        }
        self.state.services.retain(|_, handle| handle.is_alive());
        let left: Vec<String> = self.state.services.iter().map(|(s, h)| format!("{s} (pid {})", h.pid)).collect();
        let _ = self.save();
        left
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

#[async_trait::async_trait]
impl Services for LocalStack {
    fn services(&self) -> Vec<ServiceKind> {
        LocalStack::services(self)
    }

    async fn start_service(&mut self, service: ServiceKind) -> Result<(), ServiceError> {
        LocalStack::start_service(self, service).await
    }

    async fn check(&self, service: ServiceKind) -> ServiceStatus {
        LocalStack::check(self, service).await
    }
}

#[async_trait::async_trait]
impl Backend for LocalStack {
    fn kind(&self) -> BackendKind {
        BackendKind::Local
    }

    fn endpoints(&self) -> Endpoints {
        self.state.endpoints()
    }

    async fn up(&mut self) -> Result<Endpoints, ServiceError> {
        self.private_run_dir()?;
        self.save()?;
        self.tools()?;
        self.start_all(None).await?;
        Ok(self.endpoints())
    }

    async fn status(&self) -> Result<Vec<ServiceStatus>, ServiceError> {
        Ok(self.check_all().await)
    }

    async fn down(&mut self) -> Result<(), ServiceError> {
        let left = tokio::task::block_in_place(|| self.teardown());
        if left.is_empty() { Ok(()) } else { Err(ServiceError::Teardown { left }) }
    }

    fn detach(&mut self) {
        self.detached = true;
    }

    /// Tells each running service's leader pid now, from the state file (so a sampler
    /// follows services across restarts done by another part of the harness).
    fn leader_resolver(&self) -> LeaderResolver {
        let run_dir = self.run_dir.clone();
        Box::new(move || match read_state(&run_dir) {
            Ok(Some(state)) => state.services.iter().filter(|(_, h)| h.is_alive()).map(|(s, h)| (s.name().to_string(), h.pid)).collect(),
            _ => Vec::new(),
        })
    }

    fn acks_log(&self) -> Option<PathBuf> {
        Some(debezium::DebeziumLayout::new(&self.run_dir).acks)
    }

    fn control(&mut self) -> Option<&mut dyn ServiceControl> {
        Some(self)
    }

    fn control_ref(&self) -> Option<&dyn ServiceControl> {
        Some(self)
    }

    async fn up_with_snapshot_kill(&mut self, after: Duration, downtime: Duration) -> Result<crate::report::model::FaultRecord, ServiceError> {
        self.snapshot_kill(after, downtime).await
    }
}

/// Signals to process groups; link faults through the proxies in this process.
#[async_trait::async_trait]
impl ServiceControl for LocalStack {
    async fn kill(&mut self, service: ServiceKind) -> Result<(), ServiceError> {
        self.signal_kill(service);
        Ok(())
    }

    /// The service's own shutdown signal; SIGKILL after the grace period.
    async fn stop(&mut self, service: ServiceKind) -> Result<(), ServiceError> {
        if let Some(handle) = self.state.services.get(&service) {
            handle.stop(stop_signal(service), STOP_GRACE);
        }
        Ok(())
    }

    /// SIGSTOP to the service's process group.
    async fn pause(&mut self, service: ServiceKind) -> Result<(), ServiceError> {
        self.signal(service, Signal::SIGSTOP);
        Ok(())
    }

    /// SIGCONT to the service's process group.
    async fn resume(&mut self, service: ServiceKind) -> Result<(), ServiceError> {
        self.signal(service, Signal::SIGCONT);
        Ok(())
    }

    async fn start(&mut self, service: ServiceKind) -> Result<(), ServiceError> {
        self.start_service(service).await
    }

    async fn is_healthy(&self, service: ServiceKind) -> bool {
        self.check(service).await.state == ServiceState::Healthy
    }

    /// Needs `fault_proxies`.
    async fn set_link(&self, link: Link, fault: LinkFault) -> Result<(), ServiceError> {
        self.proxies.get(&link).map(|p| p.set(fault)).ok_or_else(|| no_proxies(link))
    }

    async fn reset_link(&self, link: Link) -> Result<(), ServiceError> {
        self.proxies.get(&link).map(FaultProxy::reset).ok_or_else(|| no_proxies(link))
    }
}

impl Drop for LocalStack {
    fn drop(&mut self) {
        if !self.detached {
            let left = self.teardown();
            if !left.is_empty() {
                eprintln!("teardown left running: {} (run `harness down --run-dir {}`)", left.join(", "), self.run_dir.display());
            }
        }
    }
}

fn no_proxies(link: Link) -> ServiceError {
    ServiceError::Setup {
        service: ServiceKind::Broker,
        reason: format!(
            "link {} has no fault proxy: the stack was started without fault proxies (they live in the harness process that started the stack)",
            link.name()
        ),
    }
}

fn read_state(run_dir: &Path) -> Result<Option<StackState>, ServiceError> {
    state::read(run_dir, STATE_FILE)
}

fn write_state(run_dir: &Path, stack: &StackState) -> Result<(), ServiceError> {
    state::write(run_dir, STATE_FILE, stack)
}
