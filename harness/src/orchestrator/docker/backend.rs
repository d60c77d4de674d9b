//! Talks to the Docker daemon (bollard): network, images, containers, readiness, logs,
//! teardown by label and faults. Every call goes through a thin wrapper that maps the
//! bollard error into a typed `DockerError`.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{ContainerStateStatusEnum, EndpointSettings, HealthStatusEnum, NetworkConnectRequest, NetworkDisconnectRequest};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, InspectContainerOptions, KillContainerOptions, ListContainersOptions, ListNetworksOptions, LogsOptions,
    RemoveContainerOptions, RestartContainerOptions, StopContainerOptions,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;

use super::images::ImageSet;
use super::spec::{self, ConnectorHealth, ContainerSpec, HostPorts, Registration, Role, RunNames, SpecInputs};
use super::{DockerConfig, DockerError, SINK_IMAGE, TargetKind};
use crate::config::StackConfig;
use crate::faults::Link;
use crate::orchestrator::local::{broker, debezium as local_debezium, postgres as local_pg, sink as local_sink};
use crate::orchestrator::state::{self, PortPicker, absolute, state_err};
use crate::orchestrator::wait::{NotReady, WaitFor};
use crate::orchestrator::{Endpoints, Orchestrator, PgEndpoint, Secret, ServiceError, ServiceKind, ServiceState, ServiceStatus};
use fault_proxy::FaultBody;
use fault_proxy::LinkFault;

const STATE_FILE: &str = "docker-stack.json";
const POLL: Duration = Duration::from_millis(500);

/// Connects to the daemon named by DOCKER_HOST (`unix://` or `tcp://`; default: the local
/// socket), settles on the API version both sides speak (20.10's 1.41 here, newer
/// elsewhere) and pings it.
pub async fn connect() -> Result<Docker, DockerError> {
    let unreachable = |reason: String| DockerError::Unreachable { reason };
    let docker = Docker::connect_with_defaults().map_err(|e| unreachable(e.to_string()))?;
    let docker = match tokio::time::timeout(Duration::from_secs(5), docker.negotiate_version()).await {
        Ok(Ok(docker)) => docker,
        Ok(Err(e)) => return Err(unreachable(e.to_string())),
        Err(_) => return Err(unreachable("no answer to GET /version within 5s".into())),
    };
    match tokio::time::timeout(Duration::from_secs(5), docker.ping()).await {
        Ok(Ok(_)) => Ok(docker),
        Ok(Err(e)) => Err(unreachable(e.to_string())),
        Err(_) => Err(unreachable("ping timed out after 5s".into())),
    }
}

/// Removes every container and network carrying the run label, whichever run made them
/// (`harness down --backend docker` after a crash). Returns (containers, networks) removed.
pub async fn remove_all_labelled(docker: &Docker) -> Result<(usize, usize), DockerError> {
    remove_labelled(docker, None).await
}

async fn remove_labelled(docker: &Docker, run_id: Option<&str>) -> Result<(usize, usize), DockerError> {
    let filters = spec::label_filter(run_id);
    let target = run_id.unwrap_or("all runs").to_string();
    let containers = docker
        .list_containers(Some(ListContainersOptions { all: true, filters: Some(filters.clone()), ..Default::default() }))
        .await
        .map_err(|e| DockerError::from_bollard("list containers", &target, e))?;
    // Pod members first: their proxy holds the network namespace they joined.
    let is_proxy = |c: &bollard::models::ContainerSummary| {
        c.labels.as_ref().and_then(|l| l.get(spec::LABEL_ROLE)).and_then(|r| Role::from_alias(r)).is_some_and(Role::is_proxy)
    };
    let (proxies, members): (Vec<_>, Vec<_>) = containers.into_iter().partition(is_proxy);
    let mut removed = 0;
    for container in members.into_iter().chain(proxies) {
        let Some(id) = container.id else { continue };
        match docker.remove_container(&id, Some(RemoveContainerOptions { force: true, v: true, ..Default::default() })).await {
            Ok(()) => removed += 1,
            // Already gone (a concurrent down): nothing left to do.
            Err(e) => match DockerError::from_bollard("remove container", &id, e) {
                DockerError::NotFound { .. } => {}
                other => return Err(other),
            },
        }
    }
    let networks =
        docker.list_networks(Some(ListNetworksOptions { filters: Some(filters) })).await.map_err(|e| DockerError::from_bollard("list networks", &target, e))?;
    let mut networks_removed = 0;
    for network in networks {
        let Some(id) = network.id else { continue };
        match docker.remove_network(&id).await {
            Ok(()) => networks_removed += 1,
            Err(e) => match DockerError::from_bollard("remove network", &id, e) {
                DockerError::NotFound { .. } => {}
                other => return Err(other),
            },
        }
    }
    Ok((removed, networks_removed))
}

/// A fault on one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL: no chance to flush or commit.
    Kill,
    /// SIGTERM, SIGKILL after `grace`.
    Stop {
        grace: Duration,
    },
    /// Start again after Kill/Stop (waits for readiness).
    Start,
    /// Freezes every process (cgroup freezer): connections stay open but nothing answers.
    Pause,
    Unpause,
    Restart {
        grace: Duration,
    },
    /// Takes the container off the run network (peers see timeouts / resets).
    Disconnect,
    Reconnect,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Kill => f.write_str("kill"),
            Self::Stop { .. } => f.write_str("stop"),
            Self::Start => f.write_str("start"),
            Self::Pause => f.write_str("pause"),
            Self::Unpause => f.write_str("unpause"),
            Self::Restart { .. } => f.write_str("restart"),
            Self::Disconnect => f.write_str("network disconnect"),
            Self::Reconnect => f.write_str("network connect"),
        }
    }
}

/// What survives between invocations (`up`, then `status`/`down` later): in
/// `<run dir>/docker-stack.json`, mode 0600 (it holds the database password).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DockerState {
    backend: String,
    run_id: String,
    config: StackConfig,
    docker: DockerConfig,
    ports: HostPorts,
    password: Secret,
    snapshot_done: bool,
}

/// A stack of containers. Unlike the local backend, dropping it does not tear down (that
/// needs async daemon calls): call `down()`; leftovers are removed by label.
pub struct DockerStack {
    docker: Docker,
    run_dir: PathBuf,
    names: RunNames,
    state: DockerState,
    /// Log followers of containers started by this process, by role.
    followers: BTreeMap<Role, JoinHandle<()>>,
    /// Host pid of each service's main container, refreshed at every start (CPU and
    /// memory sampling reads /proc by it).
    pids: Arc<std::sync::Mutex<BTreeMap<ServiceKind, i32>>>,
    /// Containers paused with SIGSTOP (no cgroup freezer here): resumed with SIGCONT.
    signal_paused: std::collections::BTreeSet<Role>,
    /// Left running when dropped (`up`, `--keep`, a reused stack); otherwise a drop
    /// without `down` (an error, a panic, Ctrl-C) removes the run's containers.
    detached: bool,
}

impl Drop for DockerStack {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        // Async daemon calls cannot run in drop: a thread with its own runtime does them.
        let run_id = self.state.run_id.clone();
        let removal = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let docker = connect().await.ok()?;
                remove_labelled(&docker, Some(&run_id)).await.ok()
            })
        });
        match removal.join() {
            Ok(Some((containers, _))) if containers > 0 => eprintln!("docker: removed the {containers} containers of run {}", self.state.run_id),
            Ok(Some(_)) => {}
            _ => eprintln!("docker: could not remove the containers of run {}; `harness down --all` sweeps them", self.state.run_id),
        }
    }
}

fn unavailable(e: DockerError) -> ServiceError {
    ServiceError::BackendUnavailable("docker", e.to_string())
}

impl DockerStack {
    /// Opens (or prepares) the stack in `config.run_dir`; fails when no daemon answers.
    pub async fn new(config: StackConfig, docker_config: DockerConfig) -> Result<Self, ServiceError> {
        if docker_config.image_set == ImageSet::Local && docker_config.target == TargetKind::Mongodb {
            return Err(ServiceError::BackendUnavailable(
                "docker",
                "the local image set has no MongoDB image (none can be built without a registry): use --target postgres".into(),
            ));
        }
        let docker = connect().await.map_err(unavailable)?;
        let run_dir = absolute(&config.run_dir);
        let mut picker = PortPicker::default();
        let state = match read_state(&run_dir)? {
            Some(state) => state,
            None => DockerState {
                backend: "docker".into(),
                run_id: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
                config: StackConfig { run_dir: run_dir.clone(), ..config },
                docker: docker_config,
                ports: HostPorts {
                    postgres: picker.free_port()?,
                    kafka: picker.free_port()?,
                    connect: picker.free_port()?,
                    mongo: picker.free_port()?,
                    sink_http: picker.free_port()?,
                    prometheus: picker.free_port()?,
                    grafana: picker.free_port()?,
                    connect_proxy: picker.free_port()?,
                    sink_proxy: picker.free_port()?,
                },
                password: Secret::generate(),
                snapshot_done: false,
            },
        };
        Ok(Self::with_state(docker, run_dir, state))
    }

    fn with_state(docker: Docker, run_dir: PathBuf, state: DockerState) -> Self {
        Self {
            docker,
            names: RunNames::new(state.run_id.clone()),
            run_dir,
            state,
            followers: BTreeMap::new(),
            pids: Arc::default(),
            signal_paused: Default::default(),
            detached: false,
        }
    }

    /// The stack a previous `up` left in `run_dir`, if any.
    pub async fn open(run_dir: &Path) -> Result<Option<Self>, ServiceError> {
        let run_dir = absolute(run_dir);
        let Some(state) = read_state(&run_dir)? else {
            return Ok(None);
        };
        let docker = connect().await.map_err(unavailable)?;
        Ok(Some(Self::with_state(docker, run_dir, state)))
    }

    /// Leaves the containers running when this value is dropped.
    pub fn detach(mut self) {
        self.detached = true;
    }

    /// Never removes the containers, whatever happens to this value (`--reuse`).
    pub fn borrow_only(&mut self) {
        self.detached = true;
    }

    /// The container that is `service` itself (not its pod proxy or MongoDB).
    fn main_role(&self, service: ServiceKind) -> Role {
        Role::for_service(service, &self.state.docker).last().copied().unwrap_or(Role::Sink)
    }

    pub async fn kill(&mut self, service: ServiceKind) -> Result<(), ServiceError> {
        self.inject(self.main_role(service), &Fault::Kill).await
    }

    pub async fn stop(&mut self, service: ServiceKind, grace: Duration) -> Result<(), ServiceError> {
        self.inject(self.main_role(service), &Fault::Stop { grace }).await
    }

    /// The daemon's pause (cgroup freezer); where the kernel has no freezer ("unable to
    /// freeze", as on this machine), SIGSTOP to every process of the container, seen from
    /// the host.
    pub async fn pause(&mut self, service: ServiceKind) -> Result<(), ServiceError> {
        let role = self.main_role(service);
        match self.inject(role, &Fault::Pause).await {
            Err(e) if e.to_string().contains("unable to freeze") => {
                self.signal_container(role, nix::sys::signal::Signal::SIGSTOP).await?;
                tracing::info!(message = "no cgroup freezer: container stopped with SIGSTOP", container = %self.names.container(role));
                self.signal_paused.insert(role);
                Ok(())
            }
            other => other,
        }
    }

    pub async fn resume(&mut self, service: ServiceKind) -> Result<(), ServiceError> {
        let role = self.main_role(service);
        if self.signal_paused.remove(&role) {
            return self.signal_container(role, nix::sys::signal::Signal::SIGCONT).await;
        }
        self.inject(role, &Fault::Unpause).await
    }

    /// `signal` to every process of the container of `role` (its init's tree on the host).
    async fn signal_container(&self, role: Role, signal: nix::sys::signal::Signal) -> Result<(), ServiceError> {
        let name = self.names.container(role);
        let fail = |reason: String| ServiceError::Start { service: service_of(role), reason: format!("{signal} to {name}: {reason}") };
        let inspect = self.docker.inspect_container(&name, None::<InspectContainerOptions>).await.map_err(|e| fail(e.to_string()))?;
        let pid = inspect.state.and_then(|s| s.pid).filter(|p| *p > 0).ok_or_else(|| fail("not running".into()))?;
        let pids = crate::run::procstat::process_tree(i32::try_from(pid).map_err(|e| fail(e.to_string()))?);
        for pid in &pids {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), signal).map_err(|e| fail(format!("pid {pid}: {e}")))?;
        }
        Ok(())
    }

    /// Which images the stack runs (`upstream` or `local`), for the report.
    pub fn image_set(&self) -> ImageSet {
        self.state.docker.image_set
    }

    pub fn run_id(&self) -> &str {
        &self.state.run_id
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    pub fn endpoints(&self) -> Endpoints {
        let p = &self.state.ports;
        let connect_url = format!("http://127.0.0.1:{}", p.connect);
        let (debezium_status, connector) = match self.state.docker.image_set {
            ImageSet::Local => (format!("{connect_url}/status"), crate::config::CONNECTOR_NAME),
            ImageSet::Upstream => (format!("{connect_url}/connectors/{}/status", crate::config::CONNECTOR_NAME), crate::config::CONNECTOR_NAME),
        };
        Endpoints::started(
            PgEndpoint {
                host: "127.0.0.1".into(),
                port: p.postgres,
                user: "postgres".into(),
                password: self.state.password.clone(),
                source_db: crate::config::SOURCE_DB.into(),
                target_db: crate::config::TARGET_DB.into(),
                target_server: None,
                source_schema: crate::orchestrator::PUBLIC_SCHEMA.into(),
                params: Default::default(),
            },
            format!("127.0.0.1:{}", p.kafka),
            debezium_status,
            format!("http://127.0.0.1:{}", p.sink_http),
            Some(crate::orchestrator::ConnectEndpoint { url: connect_url, connector: connector.into() }),
        )
    }

    /// MongoDB on the host, when the sink materializes into it.
    pub fn mongo_uri(&self) -> Option<String> {
        (self.state.docker.target == TargetKind::Mongodb).then(|| format!("mongodb://127.0.0.1:{}", self.state.ports.mongo))
    }

    /// Grafana and Prometheus on the host, when the observability stack runs.
    pub fn observability_urls(&self) -> Option<(String, String)> {
        self.state
            .docker
            .observability
            .then(|| (format!("http://127.0.0.1:{}", self.state.ports.grafana), format!("http://127.0.0.1:{}", self.state.ports.prometheus)))
    }

    fn log_path(&self, role: Role) -> PathBuf {
        self.run_dir.join("logs").join(format!("{}.log", role.alias()))
    }

    fn services(&self) -> Vec<ServiceKind> {
        ServiceKind::ALL.into_iter().filter(|s| *s != ServiceKind::Sink || self.state.config.with_sink).collect()
    }

    fn roles(&self) -> Vec<Role> {
        let mut roles: Vec<Role> = self.services().into_iter().flat_map(|s| Role::for_service(s, &self.state.docker)).collect();
        if self.state.docker.observability {
            roles.extend(Role::OBSERVABILITY);
        }
        roles
    }

    fn spec(&self, role: Role) -> ContainerSpec {
        let user = format!("{}:{}", nix::unistd::geteuid(), nix::unistd::getegid());
        spec::container_spec(
            role,
            &SpecInputs { config: &self.state.docker, ports: &self.state.ports, pg_password: self.state.password.expose(), run_dir: &self.run_dir, user },
        )
    }

    fn save(&self) -> Result<(), ServiceError> {
        write_state(&self.run_dir, &self.state)
    }

    async fn ensure_network(&self) -> Result<(), DockerError> {
        let name = self.names.network();
        match self.docker.inspect_network(&name, None::<bollard::query_parameters::InspectNetworkOptions>).await {
            Ok(_) => Ok(()),
            Err(e) => match DockerError::from_bollard("inspect network", &name, e) {
                DockerError::NotFound { .. } => self
                    .docker
                    .create_network(spec::network_request(&self.names))
                    .await
                    .map(|_| ())
                    .map_err(|e| DockerError::from_bollard("create network", &name, e)),
                other => Err(other),
            },
        }
    }

    /// Pulls `image` unless present, with progress on stderr. The sink image is built
    /// from the workspace, never pulled.
    async fn ensure_image(&self, image: &str) -> Result<(), DockerError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(e) => match DockerError::from_bollard("inspect image", image, e) {
                DockerError::NotFound { .. } => {}
                other => return Err(other),
            },
        }
        // Built here, never pulled.
        if self.state.docker.image_set == ImageSet::Local {
            return Err(DockerError::ImageMissing { image: image.to_string(), build: "harness provision --images local".into() });
        }
        if image == self.state.docker.images.sink || image == SINK_IMAGE {
            return Err(DockerError::ImageMissing { image: image.to_string(), build: format!("docker build -t {image} .") });
        }
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_prefix(format!("pull {image}"));
        if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {prefix}: {wide_msg}") {
            bar.set_style(style);
        }
        bar.enable_steady_tick(Duration::from_millis(200));
        let credentials = super::registry::credentials_for(image);
        let mut stream = self.docker.create_image(Some(CreateImageOptions { from_image: Some(image.to_string()), ..Default::default() }), None, credentials);
        // Per layer: latest status; the message sums them up.
        let mut layers: BTreeMap<String, String> = BTreeMap::new();
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| DockerError::Pull { image: image.to_string(), reason: e.to_string() })?;
            if let Some(detail) = info.error_detail.and_then(|d| d.message) {
                bar.finish_and_clear();
                return Err(DockerError::Pull { image: image.to_string(), reason: detail });
            }
            if let (Some(id), Some(status)) = (info.id, info.status.clone()) {
                layers.insert(id, status);
            }
            let done = layers.values().filter(|s| s.starts_with("Pull complete") || s.starts_with("Already exists")).count();
            bar.set_message(format!("{done}/{} layers; {}", layers.len(), info.status.unwrap_or_default()));
        }
        bar.finish_and_clear();
        eprintln!("pulled {image}");
        Ok(())
    }

    /// Creates (if needed) and starts the container of `role`, and follows its log.
    async fn start_container(&mut self, role: Role) -> Result<(), DockerError> {
        let name = self.names.container(role);
        let state = match self.docker.inspect_container(&name, None::<InspectContainerOptions>).await {
            Ok(inspect) => inspect.state.and_then(|s| s.status),
            Err(e) => match DockerError::from_bollard("inspect container", &name, e) {
                DockerError::NotFound { .. } => {
                    let body = self.spec(role).create_body(&self.names);
                    self.docker
                        .create_container(Some(CreateContainerOptions { name: Some(name.clone()), ..Default::default() }), body)
                        .await
                        .map_err(|e| DockerError::from_bollard("create container", &name, e))?;
                    None
                }
                other => return Err(other),
            },
        };
        match state {
            Some(ContainerStateStatusEnum::RUNNING) => {}
            Some(ContainerStateStatusEnum::PAUSED) => {
                self.docker.unpause_container(&name).await.map_err(|e| DockerError::from_bollard("unpause container", &name, e))?;
            }
            _ => {
                self.docker
                    .start_container(&name, None::<bollard::query_parameters::StartContainerOptions>)
                    .await
                    .map_err(|e| DockerError::from_bollard("start container", &name, e))?;
            }
        }
        self.follow_logs(role);
        Ok(())
    }

    /// Appends the container's output to `<run dir>/logs/<role>.log` until it stops.
    fn follow_logs(&mut self, role: Role) {
        if self.followers.get(&role).is_some_and(|h| !h.is_finished()) {
            return;
        }
        let docker = self.docker.clone();
        let name = self.names.container(role);
        let path = self.log_path(role);
        // A re-follow after a restart starts at now: earlier output is already in the file.
        let since = if self.followers.contains_key(&role) { chrono::Utc::now().timestamp() as i32 } else { 0 };
        let handle = tokio::spawn(async move {
            let Ok(mut file) = tokio::fs::OpenOptions::new().create(true).append(true).open(&path).await else {
                return;
            };
            let mut logs = docker.logs(&name, Some(LogsOptions { follow: true, stdout: true, stderr: true, since, ..Default::default() }));
            while let Some(Ok(chunk)) = logs.next().await {
                if file.write_all(&chunk.into_bytes()).await.is_err() {
                    return;
                }
            }
            let _ = file.flush().await;
        });
        self.followers.insert(role, handle);
    }

    /// Waits for the container's own health check to report healthy.
    async fn wait_healthy(&self, role: Role, service: ServiceKind, timeout: Duration) -> Result<(), ServiceError> {
        let name = self.names.container(role);
        WaitFor::new(service, timeout, self.log_path(role))
            .poll(POLL)
            .until(|| async {
                let inspect = self.docker.inspect_container(&name, None::<InspectContainerOptions>).await;
                let state = inspect.map_err(|e| DockerError::from_bollard("inspect container", &name, e).to_string())?.state.unwrap_or_default();
                let running = state.running.unwrap_or(false);
                if !running && state.status == Some(ContainerStateStatusEnum::EXITED) {
                    return Err(NotReady::Never(ServiceError::Exited { service, log: self.log_path(role), tail: self.log_tail(role, 25).await }));
                }
                match state.health.and_then(|h| h.status) {
                    Some(HealthStatusEnum::HEALTHY) => Ok(()),
                    // No health check declared: running is all the daemon can tell.
                    None | Some(HealthStatusEnum::NONE | HealthStatusEnum::EMPTY) if running => Ok(()),
                    other => Err(NotReady::Yet(format!("{name}: health {}", other.map(|s| s.to_string()).unwrap_or_else(|| "none".into())))),
                }
            })
            .await
    }

    async fn log_tail(&self, role: Role, lines: usize) -> String {
        let name = self.names.container(role);
        let mut logs = self.docker.logs(&name, Some(LogsOptions { stdout: true, stderr: true, tail: lines.to_string(), ..Default::default() }));
        let mut out = String::new();
        while let Some(Ok(chunk)) = logs.next().await {
            out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        }
        out
    }

    /// Starts every container of `service` and waits for its declared readiness.
    pub async fn start_service(&mut self, service: ServiceKind) -> Result<(), ServiceError> {
        let start_err = |e: DockerError| ServiceError::Start { service, reason: e.to_string() };
        fs::create_dir_all(self.run_dir.join("logs")).map_err(|e| state_err(&self.run_dir, e))?;
        self.save()?;
        self.ensure_network().await.map_err(start_err)?;
        let endpoints = self.endpoints();
        let pods = self.state.docker.image_set == ImageSet::Local;
        if pods {
            self.configure_pod_service(service)?;
        }
        for role in Role::for_service(service, &self.state.docker) {
            self.start_container(role).await.map_err(start_err)?;
            let timeout = match role {
                Role::Connect => Duration::from_secs(180),
                _ => Duration::from_secs(120),
            };
            self.wait_healthy(role, service, timeout).await?;
        }
        match service {
            ServiceKind::Postgres => {
                wait_until(service, Duration::from_secs(60), self.log_path(Role::Postgres), || async {
                    let client = endpoints.postgres.connect("postgres").await.map_err(|e| e.to_string())?;
                    client.simple_query("select 1").await.map(|_| ()).map_err(|e| e.to_string())
                })
                .await?;
                if local_pg::bootstrap(&endpoints.postgres, &self.state.config.seed).await? {
                    tracing::info!(message = "source schema and seed data loaded", customers = self.state.config.seed.customers);
                }
            }
            ServiceKind::Broker => {
                let bootstrap = endpoints.kafka.clone();
                wait_until(service, Duration::from_secs(60), self.log_path(Role::Kafka), || kafka_metadata(bootstrap.clone())).await?;
                if self.state.docker.image_set == ImageSet::Local {
                    self.index_tansu_headers().await?;
                }
                broker::create_topics(&endpoints.kafka, &spec::topics(), self.state.config.partitions).await?;
            }
            ServiceKind::Debezium if pods => {
                let require_snapshot = !self.state.snapshot_done && self.state.config.seed.customers > 0;
                let url = endpoints.debezium_status.clone();
                wait_until(service, Duration::from_secs(180), self.log_path(Role::Connect), || launcher_ready(url.clone(), require_snapshot)).await?;
                self.state.snapshot_done = true;
                self.save()?;
            }
            ServiceKind::Debezium => {
                self.register_connector().await?;
                let require_snapshot = !self.state.snapshot_done && self.state.config.seed.customers > 0;
                let connect = format!("http://127.0.0.1:{}", self.state.ports.connect);
                let pg = endpoints.postgres.clone();
                wait_until(service, Duration::from_secs(180), self.log_path(Role::Connect), || connector_ready(connect.clone(), pg.clone(), require_snapshot))
                    .await?;
                self.state.snapshot_done = true;
                self.save()?;
            }
            ServiceKind::Sink => {
                let http = endpoints.sink_http.clone();
                wait_until(service, Duration::from_secs(120), self.log_path(Role::Sink), || {
                    let http = http.clone();
                    async move { local_sink::is_ready(&http).await }
                })
                .await?;
            }
        }
        self.record_pid(service).await;
        Ok(())
    }

    /// The local set's Debezium and sink read the same files the local backend writes,
    /// from the run folder: the launcher's properties (offsets beside them, so a restart
    /// resumes) and sink.toml. Inside the pod, the broker is at its advertised address and
    /// PostgreSQL at 127.0.0.1:5432, both through the pod's fault proxy.
    fn configure_pod_service(&self, service: ServiceKind) -> Result<(), ServiceError> {
        let kafka = format!("127.0.0.1:{}", self.state.ports.kafka);
        let pg = PgEndpoint { host: "127.0.0.1".into(), port: spec::POSTGRES_PORT, ..self.endpoints().postgres };
        match service {
            ServiceKind::Debezium => {
                let host_dir = self.run_dir.join("debezium");
                let layout = local_debezium::DebeziumLayout {
                    properties: host_dir.join("launcher.properties"),
                    offsets: Path::new(spec::DEBEZIUM_DIR).join("offsets.dat"),
                    acks: Path::new(spec::DEBEZIUM_DIR).join("acks.log"),
                    log: self.log_path(Role::Connect),
                    dir: host_dir,
                };
                let settings = local_debezium::DebeziumSettings {
                    poll_interval_ms: self.state.config.debezium_poll_interval_ms,
                    status_port: spec::CONNECT_PORT,
                    status_address: "0.0.0.0",
                    defaults: self.state.config.debezium_defaults,
                };
                local_debezium::configure(&layout, &pg, &kafka, &Default::default(), &settings)
            }
            ServiceKind::Sink => {
                let layout = local_sink::SinkLayout::new(&self.run_dir);
                local_sink::configure(&layout, &pg, &kafka, &format!("0.0.0.0:{}", spec::SINK_HTTP_PORT), self.state.config.debezium_defaults)
            }
            ServiceKind::Postgres | ServiceKind::Broker => Ok(()),
        }
    }

    /// Notes the host pid of the service's main container for the sampler.
    async fn record_pid(&self, service: ServiceKind) {
        let Some(main) = Role::for_service(service, &self.state.docker).last().copied() else { return };
        let name = self.names.container(main);
        let pid = self.docker.inspect_container(&name, None::<InspectContainerOptions>).await.ok().and_then(|i| i.state?.pid).filter(|p| *p > 0);
        let mut pids = self.pids.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match pid.and_then(|p| i32::try_from(p).ok()) {
            Some(pid) => pids.insert(service, pid),
            None => pids.remove(&service),
        };
    }

    /// Each service's main container pid as the sampler asks for it every second.
    pub fn leader_resolver(&self) -> impl Fn() -> Vec<(String, i32)> + Send + Sync + 'static {
        let pids = self.pids.clone();
        move || pids.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().map(|(s, p)| (s.name().to_string(), *p)).collect()
    }

    /// Healthy: running and passing its readiness probe.
    pub async fn is_healthy(&self, service: ServiceKind) -> bool {
        self.check(service).await.state == ServiceState::Healthy
    }

    /// The control URLs of the pod proxies that carry `link`.
    fn link_controls(&self, link: Link) -> Result<Vec<String>, ServiceError> {
        if self.state.docker.image_set != ImageSet::Local {
            return Err(ServiceError::Start {
                service: ServiceKind::Broker,
                reason: format!("link faults ({}) run through the local image set's pod proxies: use --images local", link.name()),
            });
        }
        let url = |port: u16| format!("http://127.0.0.1:{port}/links/{}", link.name());
        let p = &self.state.ports;
        Ok(match link {
            Link::Broker => vec![url(p.connect_proxy), url(p.sink_proxy)],
            Link::DebeziumPostgres => vec![url(p.connect_proxy)],
            Link::SinkTarget => vec![url(p.sink_proxy)],
        })
    }

    /// Sets `fault` on `link` in every pod proxy that carries it.
    pub async fn set_link(&self, link: Link, fault: LinkFault) -> Result<(), ServiceError> {
        let body = FaultBody::from(fault);
        for url in self.link_controls(link)? {
            control_call(crate::http::client().put(&url).json(&body), &url).await?;
        }
        Ok(())
    }

    /// Cuts the open connections of `link` once.
    pub async fn reset_link(&self, link: Link) -> Result<(), ServiceError> {
        for url in self.link_controls(link)? {
            let url = format!("{url}/reset");
            control_call(crate::http::client().post(&url), &url).await?;
        }
        Ok(())
    }

    /// tansu's fetch scans its `header` table without an index; the local backend adds one
    /// to the storage file, here through the broker image's sqlite3 once the table exists.
    async fn index_tansu_headers(&self) -> Result<(), ServiceError> {
        let container = self.names.container(Role::Kafka);
        let sql = format!("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'header'; {};", broker::HEADER_INDEX_SQL);
        let command = vec!["sqlite3".to_string(), "-cmd".into(), ".timeout 5000".into(), "/data/tansu.db".into(), sql];
        wait_until(ServiceKind::Broker, Duration::from_secs(60), self.log_path(Role::Kafka), || {
            let command = command.clone();
            let container = container.clone();
            async move {
                match self.exec(&container, command).await {
                    Ok((0, out)) if out.trim_start().starts_with('1') => Ok(()),
                    Ok((code, out)) => Err(format!("sqlite3 exited {code}: {}", out.trim())),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await
    }

    /// `POST /connectors`; 409 (registered by an earlier `up`) keeps the stored config,
    /// whose offsets make the connector resume instead of re-snapshotting.
    async fn register_connector(&self) -> Result<(), ServiceError> {
        let err = |reason: String| ServiceError::Setup { service: ServiceKind::Debezium, reason };
        let client = crate::http::client();
        let url = format!("http://127.0.0.1:{}/connectors", self.state.ports.connect);
        let body = spec::connector_request(self.state.password.expose(), self.state.config.debezium_poll_interval_ms, self.state.config.debezium_defaults);
        let password = self.state.password.expose();
        WaitFor::new(ServiceKind::Debezium, Duration::from_secs(60), self.log_path(Role::Connect))
            .poll(Duration::from_secs(1))
            .until(|| async {
                let response = client.post(&url).timeout(Duration::from_secs(10)).json(&body).send().await.map_err(|e| format!("POST {url}: {e}"))?;
                let status = response.status().as_u16();
                // The body echoes the request on some errors: never surface the password.
                let text = response.text().await.unwrap_or_default().replace(password, "***");
                match spec::registration_outcome(status, &text) {
                    Registration::Registered => Ok(()),
                    Registration::Retry => Err(NotReady::Yet(format!("POST {url} answered {status} (rebalance): {text}"))),
                    Registration::Failed => Err(NotReady::Never(err(format!("POST {url} answered {status}: {text}")))),
                }
            })
            .await
    }

    async fn container_state(&self, role: Role) -> Result<Option<ContainerStateStatusEnum>, DockerError> {
        let name = self.names.container(role);
        match self.docker.inspect_container(&name, None::<InspectContainerOptions>).await {
            Ok(inspect) => Ok(inspect.state.and_then(|s| s.status)),
            Err(e) => match DockerError::from_bollard("inspect container", &name, e) {
                DockerError::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    async fn check(&self, service: ServiceKind) -> ServiceStatus {
        let endpoints = self.endpoints();
        let roles = Role::for_service(service, &self.state.docker);
        let main = *roles.last().unwrap_or(&Role::Sink);
        let endpoint = match service {
            ServiceKind::Postgres => endpoints.postgres.display(&endpoints.postgres.source_db),
            ServiceKind::Broker => endpoints.kafka.clone(),
            ServiceKind::Debezium => endpoints.debezium_status.clone(),
            ServiceKind::Sink => endpoints.sink_http.clone(),
        };
        let mut status = ServiceStatus {
            service,
            state: ServiceState::Stopped,
            pid: None,
            container: Some(self.names.container(main)),
            endpoint,
            log: self.log_path(main),
            detail: None,
            security: None,
        };
        for role in &roles {
            match self.container_state(*role).await {
                Ok(Some(ContainerStateStatusEnum::RUNNING)) => {}
                Ok(other) => {
                    status.detail = Some(format!("{}: {}", self.names.container(*role), other.map(|s| s.to_string()).unwrap_or_else(|| "absent".into())));
                    return status;
                }
                Err(e) => {
                    status.detail = Some(e.to_string());
                    return status;
                }
            }
        }
        let probe = match service {
            ServiceKind::Postgres => match endpoints.postgres.connect("postgres").await {
                Ok(client) => client.simple_query("select 1").await.map(|_| ()).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
            ServiceKind::Broker => kafka_metadata(endpoints.kafka.clone()).await,
            ServiceKind::Debezium if self.state.docker.image_set == ImageSet::Local => launcher_ready(endpoints.debezium_status.clone(), false).await,
            ServiceKind::Debezium => connector_ready(format!("http://127.0.0.1:{}", self.state.ports.connect), endpoints.postgres.clone(), false).await,
            ServiceKind::Sink => local_sink::is_ready(&endpoints.sink_http).await,
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

    /// Injects `fault` into the container of `role`. `Start`/`Restart` wait for readiness
    /// of the service the role belongs to.
    pub async fn inject(&mut self, role: Role, fault: &Fault) -> Result<(), ServiceError> {
        let name = self.names.container(role);
        let service = service_of(role);
        let fail = |e: DockerError| ServiceError::Start { service, reason: e.to_string() };
        let grace_secs = |d: &Duration| i32::try_from(d.as_secs()).unwrap_or(i32::MAX);
        tracing::info!(message = "fault", container = %name, %fault);
        match fault {
            Fault::Kill => self
                .docker
                .kill_container(&name, Some(KillContainerOptions { signal: "SIGKILL".into() }))
                .await
                .map_err(|e| fail(DockerError::from_bollard("kill container", &name, e))),
            Fault::Stop { grace } => self
                .docker
                .stop_container(&name, Some(StopContainerOptions { t: Some(grace_secs(grace)), ..Default::default() }))
                .await
                .map_err(|e| fail(DockerError::from_bollard("stop container", &name, e))),
            Fault::Start => self.start_service(service).await,
            Fault::Pause => self.docker.pause_container(&name).await.map_err(|e| fail(DockerError::from_bollard("pause container", &name, e))),
            Fault::Unpause => self.docker.unpause_container(&name).await.map_err(|e| fail(DockerError::from_bollard("unpause container", &name, e))),
            Fault::Restart { grace } => {
                self.docker
                    .restart_container(&name, Some(RestartContainerOptions { t: Some(grace_secs(grace)), ..Default::default() }))
                    .await
                    .map_err(|e| fail(DockerError::from_bollard("restart container", &name, e)))?;
                self.follow_logs(role);
                self.start_service(service).await
            }
            Fault::Disconnect => {
                let network = self.names.network();
                self.docker
                    .disconnect_network(&network, NetworkDisconnectRequest { container: name.clone(), force: Some(true) })
                    .await
                    .map_err(|e| fail(DockerError::from_bollard("disconnect network", &name, e)))
            }
            Fault::Reconnect => {
                let network = self.names.network();
                // The alias is per attachment: restore it or peers no longer resolve the name.
                let endpoint = EndpointSettings { aliases: Some(vec![role.alias().to_string()]), ..Default::default() };
                self.docker
                    .connect_network(&network, NetworkConnectRequest { container: name.clone(), endpoint_config: Some(endpoint) })
                    .await
                    .map_err(|e| fail(DockerError::from_bollard("connect network", &name, e)))
            }
        }
    }

    /// Runs `cmd` in `container`; returns its exit code and combined output.
    pub async fn exec(&self, container: &str, cmd: Vec<String>) -> Result<(i64, String), DockerError> {
        let created = self
            .docker
            .create_exec(container, CreateExecOptions { cmd: Some(cmd), attach_stdout: Some(true), attach_stderr: Some(true), ..Default::default() })
            .await
            .map_err(|e| DockerError::from_bollard("create exec", container, e))?;
        let mut output = String::new();
        if let StartExecResults::Attached { output: mut stream, .. } =
            self.docker.start_exec(&created.id, None).await.map_err(|e| DockerError::from_bollard("start exec", container, e))?
        {
            while let Some(Ok(chunk)) = stream.next().await {
                output.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            }
        }
        let inspect = self.docker.inspect_exec(&created.id).await.map_err(|e| DockerError::from_bollard("inspect exec", container, e))?;
        Ok((inspect.exit_code.unwrap_or(-1), output))
    }

    /// Writes each container's whole log to its file when this process did not follow it
    /// (the stack was started by an earlier `harness up`).
    async fn collect_logs(&self) {
        for role in self.roles() {
            if self.followers.contains_key(&role) {
                continue;
            }
            let text = self.log_tail(role, usize::MAX).await;
            if !text.is_empty() {
                let _ = fs::write(self.log_path(role), text);
            }
        }
    }
}

fn service_of(role: Role) -> ServiceKind {
    match role {
        Role::Postgres => ServiceKind::Postgres,
        Role::Kafka => ServiceKind::Broker,
        Role::Connect => ServiceKind::Debezium,
        _ => ServiceKind::Sink,
    }
}

/// One call to a pod proxy's control API.
async fn control_call(request: reqwest::RequestBuilder, url: &str) -> Result<(), ServiceError> {
    let fail = |reason: String| ServiceError::Start { service: ServiceKind::Broker, reason: format!("fault proxy {url}: {reason}") };
    let response = request.timeout(Duration::from_secs(5)).send().await.map_err(|e| fail(e.to_string()))?;
    if response.status().is_success() { Ok(()) } else { Err(fail(format!("answered {}", response.status()))) }
}

/// The launcher streams and, on the first start, finished its snapshot.
async fn launcher_ready(url: String, require_snapshot: bool) -> Result<(), String> {
    let status = local_debezium::fetch_status(&url).await?;
    if status.state == "failed" {
        return Err(format!("launcher failed: {}", status.last_error.unwrap_or_default()));
    }
    if status.streaming_connected && (status.snapshot_completed || status.snapshot_skipped || !require_snapshot) {
        Ok(())
    } else {
        Err(format!("state {}, snapshot_completed {}, streaming_connected {}", status.state, status.snapshot_completed, status.streaming_connected))
    }
}

/// Waits for `probe` (an answer or the reason there is none yet) with the one readiness helper.
async fn wait_until<F, Fut>(service: ServiceKind, timeout: Duration, log: PathBuf, mut probe: F) -> Result<(), ServiceError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    WaitFor::new(service, timeout, log)
        .poll(POLL)
        .until(|| {
            let attempt = probe();
            async move { attempt.await.map_err(NotReady::Yet) }
        })
        .await
}

/// The broker answers a metadata request naming at least one broker.
async fn kafka_metadata(bootstrap: String) -> Result<(), String> {
    tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = broker::client_config(&bootstrap).create().map_err(|e| e.to_string())?;
        let metadata = consumer.fetch_metadata(None, Duration::from_secs(3)).map_err(|e| e.to_string())?;
        if metadata.brokers().is_empty() { Err("metadata lists no broker".into()) } else { Ok(()) }
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()))
}

/// Connector and tasks RUNNING, the replication slot in use (streaming connected) and,
/// on the first start, the initial snapshot finished.
async fn connector_ready(connect: String, pg: PgEndpoint, require_snapshot: bool) -> Result<(), String> {
    let status: serde_json::Value = crate::http::client()
        .get(format!("{connect}/connectors/{}/status", crate::config::CONNECTOR_NAME))
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    match spec::connector_health(&status) {
        ConnectorHealth::Running => {}
        ConnectorHealth::Pending(s) | ConnectorHealth::Failed(s) => return Err(s),
    }
    let source = pg.connect_source().await.map_err(|e| e.to_string())?;
    let active = source
        .query_opt("select active from pg_replication_slots where slot_name = $1", &[&crate::config::SLOT_NAME])
        .await
        .map_err(|e| e.to_string())?
        .map(|row| row.get::<_, bool>(0))
        .unwrap_or(false);
    if !active {
        return Err("replication slot not active yet".into());
    }
    if require_snapshot {
        let offsets: serde_json::Value = crate::http::client()
            .get(format!("{connect}/connectors/{}/offsets", crate::config::CONNECTOR_NAME))
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        match spec::snapshot_finished(&offsets) {
            Some(true) => {}
            Some(false) => return Err("initial snapshot in progress".into()),
            None => return Err("no source offset committed yet".into()),
        }
    }
    Ok(())
}

impl Orchestrator for DockerStack {
    async fn up(&mut self) -> Result<Endpoints, ServiceError> {
        fs::create_dir_all(self.run_dir.join("logs")).map_err(|e| state_err(&self.run_dir, e))?;
        // Every image up front: a missing one fails the run before anything starts.
        for role in self.roles() {
            let image = role.image(&self.state.docker.images).to_string();
            self.ensure_image(&image).await.map_err(|e| ServiceError::Setup { service: service_of(role), reason: e.to_string() })?;
        }
        for service in self.services() {
            eprintln!("up: starting {service} (docker)");
            let started = Instant::now();
            self.start_service(service).await?;
            eprintln!("up: {service} ready ({:.1}s)", started.elapsed().as_secs_f64());
        }
        if self.state.docker.observability {
            for role in Role::OBSERVABILITY {
                self.start_container(role).await.map_err(|e| ServiceError::Start { service: ServiceKind::Sink, reason: e.to_string() })?;
            }
            for role in Role::OBSERVABILITY {
                self.wait_healthy(role, ServiceKind::Sink, Duration::from_secs(120)).await?;
            }
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
        self.collect_logs().await;
        let (containers, networks) = remove_labelled(&self.docker, Some(&self.state.run_id))
            .await
            .map_err(|e| ServiceError::State { path: self.run_dir.clone(), reason: e.to_string() })?;
        for (_, follower) in std::mem::take(&mut self.followers) {
            // The stream ends when its container is removed; wait so the file is complete.
            let _ = tokio::time::timeout(Duration::from_secs(5), follower).await;
        }
        tracing::info!(message = "docker stack removed", run = %self.state.run_id, containers, networks);
        let _ = fs::remove_file(self.run_dir.join(STATE_FILE));
        Ok(())
    }
}

fn read_state(run_dir: &Path) -> Result<Option<DockerState>, ServiceError> {
    state::read(run_dir, STATE_FILE)
}

fn write_state(run_dir: &Path, docker_state: &DockerState) -> Result<(), ServiceError> {
    state::write(run_dir, STATE_FILE, docker_state)
}

/// Every container of a run keyed by role, from the daemon (for tests and diagnostics).
pub async fn run_containers(docker: &Docker, run_id: &str) -> Result<HashMap<Role, String>, DockerError> {
    let containers = docker
        .list_containers(Some(ListContainersOptions { all: true, filters: Some(spec::label_filter(Some(run_id))), ..Default::default() }))
        .await
        .map_err(|e| DockerError::from_bollard("list containers", run_id, e))?;
    Ok(containers
        .into_iter()
        .filter_map(|c| {
            let role = Role::from_alias(c.labels.as_ref()?.get(spec::LABEL_ROLE)?)?;
            Some((role, c.state.map(|s| s.to_string()).unwrap_or_default()))
        })
        .collect())
}
