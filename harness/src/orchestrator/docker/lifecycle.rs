//! A stack of containers from creation to removal: its state file, images, network,
//! containers started in order with their readiness, and `up`/`status`/`down`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::models::ContainerStateStatusEnum;
use bollard::query_parameters::{CreateContainerOptions, CreateImageOptions, InspectContainerOptions};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use super::daemon::{connect, remove_labelled};
use super::faults::service_of;
use super::images::ImageSet;
use super::readiness::{connector_ready, launcher_ready, wait_until};
use super::spec::{self, ContainerSpec, HostPorts, Registration, Role, RunNames, SpecInputs};
use super::{DockerConfig, DockerError, SINK_IMAGE, TargetKind};
use crate::config::StackConfig;
use crate::orchestrator::local::{broker, debezium as local_debezium, postgres as local_pg, sink as local_sink};
use crate::orchestrator::services::{Services, broker_answers};
use crate::orchestrator::state::{self, PortPicker, absolute, state_err};
use crate::orchestrator::wait::{NotReady, WaitFor};
use crate::orchestrator::{Backend, BackendKind, Endpoints, LeaderResolver, PgEndpoint, Secret, ServiceControl, ServiceError, ServiceKind, ServiceStatus};

const STATE_FILE: &str = "docker-stack.json";

/// What survives between invocations (`up`, then `status`/`down` later): in
/// `<run dir>/docker-stack.json`, mode 0600 (it holds the database password).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct DockerState {
    pub(super) backend: String,
    pub(super) run_id: String,
    pub(super) config: StackConfig,
    pub(super) docker: DockerConfig,
    pub(super) ports: HostPorts,
    pub(super) password: Secret,
    pub(super) snapshot_done: bool,
}

/// A stack of containers. Unlike the local backend, dropping it does not tear down (that
/// needs async daemon calls): call `down()`; leftovers are removed by label.
pub struct DockerStack {
    pub(super) docker: Docker,
    pub(super) run_dir: PathBuf,
    pub(super) names: RunNames,
    pub(super) state: DockerState,
    /// Log followers of containers started by this process, by role.
    pub(super) followers: BTreeMap<Role, JoinHandle<()>>,
    /// Host pid of each service's main container, refreshed at every start (CPU and
    /// memory sampling reads /proc by it).
    pub(super) pids: Arc<std::sync::Mutex<BTreeMap<ServiceKind, i32>>>,
    /// Containers paused with SIGSTOP (no cgroup freezer here): resumed with SIGCONT.
    pub(super) signal_paused: std::collections::BTreeSet<Role>,
    /// Left running when dropped (`up`, `--keep`, a reused stack); otherwise a drop
    /// without `down` (an error, a panic, Ctrl-C) removes the run's containers.
    pub(super) detached: bool,
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

    pub(super) fn with_state(docker: Docker, run_dir: PathBuf, state: DockerState) -> Self {
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

    /// Which images the stack runs (`upstream` or `local`), for the report.
    pub fn run_id(&self) -> &str {
        &self.state.run_id
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    pub(super) fn services(&self) -> Vec<ServiceKind> {
        ServiceKind::ALL.into_iter().filter(|s| *s != ServiceKind::Sink || self.state.config.with_sink).collect()
    }

    pub(super) fn roles(&self) -> Vec<Role> {
        let mut roles: Vec<Role> = self.services().into_iter().flat_map(|s| Role::for_service(s, &self.state.docker)).collect();
        if self.state.docker.observability {
            roles.extend(Role::OBSERVABILITY);
        }
        roles
    }

    pub(super) fn spec(&self, role: Role) -> ContainerSpec {
        let user = format!("{}:{}", nix::unistd::geteuid(), nix::unistd::getegid());
        spec::container_spec(
            role,
            &SpecInputs { config: &self.state.docker, ports: &self.state.ports, pg_password: self.state.password.expose(), run_dir: &self.run_dir, user },
        )
    }

    pub(super) fn save(&self) -> Result<(), ServiceError> {
        write_state(&self.run_dir, &self.state)
    }

    pub(super) async fn ensure_network(&self) -> Result<(), DockerError> {
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
    pub(super) async fn ensure_image(&self, image: &str) -> Result<(), DockerError> {
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
    pub(super) async fn start_container(&mut self, role: Role) -> Result<(), DockerError> {
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
                wait_until(service, Duration::from_secs(60), self.log_path(Role::Kafka), || broker_answers(bootstrap.clone())).await?;
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
    pub(super) fn configure_pod_service(&self, service: ServiceKind) -> Result<(), ServiceError> {
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
    pub(super) async fn record_pid(&self, service: ServiceKind) {
        let Some(main) = Role::for_service(service, &self.state.docker).last().copied() else { return };
        let name = self.names.container(main);
        let pid = self.docker.inspect_container(&name, None::<InspectContainerOptions>).await.ok().and_then(|i| i.state?.pid).filter(|p| *p > 0);
        let mut pids = self.pids.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match pid.and_then(|p| i32::try_from(p).ok()) {
            Some(pid) => pids.insert(service, pid),
            None => pids.remove(&service),
        };
    }

    /// tansu's fetch scans its `header` table without an index; the local backend adds one
    /// to the storage file, here through the broker image's sqlite3 once the table exists.
    pub(super) async fn index_tansu_headers(&self) -> Result<(), ServiceError> {
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
    pub(super) async fn register_connector(&self) -> Result<(), ServiceError> {
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
}

#[async_trait::async_trait]
impl Services for DockerStack {
    fn services(&self) -> Vec<ServiceKind> {
        DockerStack::services(self)
    }

    async fn start_service(&mut self, service: ServiceKind) -> Result<(), ServiceError> {
        DockerStack::start_service(self, service).await
    }

    async fn check(&self, service: ServiceKind) -> ServiceStatus {
        DockerStack::check(self, service).await
    }
}

#[async_trait::async_trait]
impl Backend for DockerStack {
    fn kind(&self) -> BackendKind {
        BackendKind::Docker
    }

    fn endpoints(&self) -> Endpoints {
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
    fn mongo_uri(&self) -> Option<String> {
        (self.state.docker.target == TargetKind::Mongodb).then(|| format!("mongodb://127.0.0.1:{}", self.state.ports.mongo))
    }

    async fn up(&mut self) -> Result<Endpoints, ServiceError> {
        fs::create_dir_all(self.run_dir.join("logs")).map_err(|e| state_err(&self.run_dir, e))?;
        // The state file holds the database password: the folder is the owner's only
        // (containers reach their bind mounts through the daemon, not through it).
        crate::orchestrator::state::private_dir(&self.run_dir, None).map_err(|e| state_err(&self.run_dir, e))?;
        // Every image up front: a missing one fails the run before anything starts.
        for role in self.roles() {
            let image = role.image(&self.state.docker.images).to_string();
            self.ensure_image(&image).await.map_err(|e| ServiceError::Setup { service: service_of(role), reason: e.to_string() })?;
        }
        self.start_all(Some("docker")).await?;
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
        Ok(self.check_all().await)
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

    fn detach(&mut self) {
        self.detached = true;
    }

    /// Each service's main container pid as the sampler asks for it every second.
    fn leader_resolver(&self) -> LeaderResolver {
        let pids = self.pids.clone();
        Box::new(move || pids.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().map(|(s, p)| (s.name().to_string(), *p)).collect())
    }

    fn image_set(&self) -> Option<ImageSet> {
        Some(self.state.docker.image_set)
    }

    fn control(&mut self) -> Option<&mut dyn ServiceControl> {
        Some(self)
    }

    fn control_ref(&self) -> Option<&dyn ServiceControl> {
        Some(self)
    }

    fn refuse(&self, what: &str) -> ServiceError {
        ServiceError::Unsupported {
            backend: BackendKind::Docker,
            reason: format!("the docker backend is not available: {what} runs on the local backend only"),
        }
    }
}

fn read_state(run_dir: &Path) -> Result<Option<DockerState>, ServiceError> {
    state::read(run_dir, STATE_FILE)
}

fn write_state(run_dir: &Path, docker_state: &DockerState) -> Result<(), ServiceError> {
    state::write(run_dir, STATE_FILE, docker_state)
}
