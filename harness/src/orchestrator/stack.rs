//! The one stack type every command drives (`run`, fault schedules, `verify`, `status`,
//! `down`), whichever backend runs the services. Each operation means the same on every
//! backend; one a backend cannot do is an error that says so, never a silent no-op.

use std::path::Path;
use std::time::Duration;

use super::docker::images::{self, ImageSet};
use super::docker::{DockerConfig, DockerStack, Images, TargetKind};
use super::external::ExternalStack;
use super::external::connect::ConnectClient;
use super::local::LocalStack;
use super::{BackendKind, Endpoints, Orchestrator, ServiceError, ServiceKind, ServiceStatus};
use crate::config::StackConfig;
use crate::faults::Link;
use fault_proxy::LinkFault;

pub enum Stack {
    Local(LocalStack),
    Docker(DockerStack),
    External(ExternalStack),
}

/// Grace of a graceful stop before SIGKILL, as the local backend gives.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// What the user asked for: `--backend`, `--images`, `--target`, `--endpoints`.
#[derive(Debug, Clone, Default)]
pub struct StackChoice {
    pub backend: Option<BackendKind>,
    pub images: Option<ImageSet>,
    pub target: Option<TargetKind>,
    /// The endpoints file of an external stack.
    pub endpoints: Option<std::path::PathBuf>,
    /// An external stack's pre-flight refuses a hop in plaintext.
    pub require_tls: bool,
}

impl StackChoice {
    /// The local backend, as every command ran before `--backend` existed.
    pub fn local() -> Self {
        Self { backend: Some(BackendKind::Local), ..Self::default() }
    }
}

fn refused(reason: &str) -> ServiceError {
    ServiceError::Unsupported(reason.to_string())
}

impl Stack {
    /// A new stack (not started) in `config.run_dir`, on the backend `choice` resolves to:
    /// `auto` takes Docker when a daemon answers and the chosen image set is there (the
    /// local set is built when asked for with `--images local`), the local backend otherwise,
    /// and says why.
    pub async fn create(config: StackConfig, choice: StackChoice) -> Result<Self, ServiceError> {
        if let Some(stack) = Self::external(&choice)? {
            return Ok(stack);
        }
        let requested = choice.backend.unwrap_or(BackendKind::Auto);
        let mut backend = super::resolve_backend(requested).await?;
        if requested == BackendKind::Auto && backend == BackendKind::Docker && choice.images != Some(ImageSet::Local) {
            if let Some(missing) = missing_upstream_images(choice.target).await {
                eprintln!(
                    "backend auto: a Docker daemon answers but {missing} is not present: running on the local backend (pull it, or pass --backend docker / --images local)"
                );
                backend = BackendKind::Local;
            }
        }
        match backend {
            BackendKind::Docker => {
                let image_set = choice.images.unwrap_or_default();
                let target = choice.target.unwrap_or(match image_set {
                    ImageSet::Local => TargetKind::Postgres,
                    ImageSet::Upstream => TargetKind::Mongodb,
                });
                let mut docker = DockerConfig { image_set, target, ..DockerConfig::default() };
                if image_set == ImageSet::Local && target == TargetKind::Postgres {
                    let client = super::docker::connect().await.map_err(|e| ServiceError::BackendUnavailable("docker", e.to_string()))?;
                    let cache = crate::provision::Cache::locate()?;
                    let inputs = images::LocalInputs::provision().await?;
                    let built = images::ensure_local(&client, &cache, &inputs).await?;
                    docker.images = Images::with_local(&built);
                }
                Ok(Self::Docker(DockerStack::new(config, docker).await?))
            }
            _ => {
                if choice.images.is_some() {
                    return Err(refused("--images chooses the Docker backend's images: add --backend docker"));
                }
                if choice.target == Some(TargetKind::Mongodb) {
                    return Err(refused("the local backend's sink writes to PostgreSQL; a MongoDB target needs --backend docker"));
                }
                Ok(Self::Local(LocalStack::new(config)?))
            }
        }
    }

    /// The external stack `choice` names (`--endpoints` with `--backend external` or
    /// `auto`), if it names one; `--endpoints` with another backend is a usage error.
    pub fn external(choice: &StackChoice) -> Result<Option<Self>, ServiceError> {
        match (choice.backend, &choice.endpoints) {
            (Some(BackendKind::External) | None | Some(BackendKind::Auto), Some(file)) => {
                if choice.images.is_some() || choice.target.is_some() {
                    return Err(refused("--images and --target choose what the harness starts; an external stack's target is in its endpoints file"));
                }
                Ok(Some(Self::External(ExternalStack::load(file, choice.require_tls)?)))
            }
            (Some(BackendKind::External), None) => Err(refused("--backend external needs --endpoints FILE")),
            (Some(other), Some(_)) => Err(refused(&format!("--endpoints names an external stack: use --backend external, not {}", other.name()))),
            _ => Ok(None),
        }
    }

    /// The stack a previous `up` left in `run_dir`, of whichever backend made it.
    pub async fn open(run_dir: &Path) -> Result<Option<Self>, ServiceError> {
        if let Some(stack) = DockerStack::open(run_dir).await? {
            return Ok(Some(Self::Docker(stack)));
        }
        Ok(LocalStack::open(run_dir)?.map(Self::Local))
    }

    /// The local backend's stack, for what only it has (process handles).
    pub fn as_local(&self) -> Option<&LocalStack> {
        match self {
            Self::Local(stack) => Some(stack),
            Self::Docker(_) => None,
            Self::External(_) => None,
        }
    }

    pub fn backend(&self) -> BackendKind {
        match self {
            Self::Local(_) => BackendKind::Local,
            Self::Docker(_) => BackendKind::Docker,
            Self::External(_) => BackendKind::External,
        }
    }

    /// The image set of a Docker stack.
    pub fn image_set(&self) -> Option<ImageSet> {
        match self {
            Self::Local(_) => None,
            Self::Docker(stack) => Some(stack.image_set()),
            Self::External(_) => None,
        }
    }

    /// MongoDB on the host, when the stack's sink materializes into it.
    pub fn mongo_uri(&self) -> Option<String> {
        match self {
            Self::Local(_) => None,
            Self::Docker(stack) => stack.mongo_uri(),
            Self::External(stack) => stack.mongo().map(|(uri, _)| uri),
        }
    }

    pub fn endpoints(&self) -> Endpoints {
        match self {
            Self::Local(stack) => stack.endpoints(),
            Self::Docker(stack) => stack.endpoints(),
            Self::External(stack) => stack.endpoints(),
        }
    }

    pub async fn up(&mut self) -> Result<Endpoints, ServiceError> {
        match self {
            Self::Local(stack) => stack.up().await,
            Self::Docker(stack) => stack.up().await,
            Self::External(stack) => stack.up().await,
        }
    }

    pub async fn status(&self) -> Result<Vec<ServiceStatus>, ServiceError> {
        match self {
            Self::Local(stack) => stack.status().await,
            Self::Docker(stack) => stack.status().await,
            Self::External(stack) => Ok(stack.status().await),
        }
    }

    pub async fn down(&mut self) -> Result<(), ServiceError> {
        match self {
            Self::Local(stack) => stack.down().await,
            Self::Docker(stack) => stack.down().await,
            // Nothing was started.
            Self::External(_) => Ok(()),
        }
    }

    /// Leaves the services running when this value is dropped.
    pub fn detach(self) {
        match self {
            Self::Local(stack) => stack.detach(),
            Self::Docker(stack) => stack.detach(),
            Self::External(_) => {}
        }
    }

    /// Never tears the services down, whatever happens to this value (`--reuse`).
    pub fn borrow_only(&mut self) {
        match self {
            Self::Local(stack) => stack.borrow_only(),
            Self::Docker(stack) => stack.borrow_only(),
            Self::External(_) => {}
        }
    }

    /// Each running service's leader pid, asked again every second by the sampler.
    pub fn leader_resolver(&self) -> Box<dyn Fn() -> Vec<(String, i32)> + Send + Sync> {
        match self {
            Self::Local(stack) => Box::new(stack.leader_resolver()),
            Self::Docker(stack) => Box::new(stack.leader_resolver()),
            // Its processes run elsewhere: no CPU or memory is sampled.
            Self::External(_) => Box::new(Vec::new),
        }
    }

    /// SIGKILL: no chance to flush or commit.
    pub async fn kill(&mut self, service: ServiceKind) -> Result<(), ServiceError> {
        match self {
            Self::Local(stack) => {
                stack.kill(service);
                Ok(())
            }
            Self::Docker(stack) => stack.kill(service).await,
            Self::External(_) => Err(external_refuses("killing a service")),
        }
    }

    /// The service's own shutdown signal, SIGKILL after the grace period.
    pub async fn stop(&mut self, service: ServiceKind) -> Result<(), ServiceError> {
        match self {
            Self::Local(stack) => {
                stack.stop(service);
                Ok(())
            }
            Self::Docker(stack) => stack.stop(service, STOP_GRACE).await,
            Self::External(_) => Err(external_refuses("stopping a service")),
        }
    }

    /// Freezes every process of the service (SIGSTOP / cgroup freezer).
    pub async fn pause(&mut self, service: ServiceKind) -> Result<(), ServiceError> {
        match self {
            Self::Local(stack) => {
                stack.pause(service);
                Ok(())
            }
            Self::Docker(stack) => stack.pause(service).await,
            Self::External(_) => Err(external_refuses("freezing a service (pause the connector instead: target `connector`)")),
        }
    }

    pub async fn resume(&mut self, service: ServiceKind) -> Result<(), ServiceError> {
        match self {
            Self::Local(stack) => {
                stack.resume(service);
                Ok(())
            }
            Self::Docker(stack) => stack.resume(service).await,
            Self::External(_) => Err(external_refuses("resuming a frozen service")),
        }
    }

    /// Starts the service if it is not running and waits for its readiness.
    pub async fn start_service(&mut self, service: ServiceKind) -> Result<(), ServiceError> {
        match self {
            Self::Local(stack) => stack.start_service(service).await,
            Self::Docker(stack) => stack.start_service(service).await,
            Self::External(_) => Err(external_refuses("starting a service")),
        }
    }

    pub async fn is_healthy(&self, service: ServiceKind) -> bool {
        match self {
            Self::Local(stack) => stack.is_healthy(service).await,
            Self::Docker(stack) => stack.is_healthy(service).await,
            Self::External(stack) => stack.status().await.iter().any(|s| s.service == service && s.state == super::ServiceState::Healthy),
        }
    }

    pub async fn set_link(&self, link: Link, fault: LinkFault) -> Result<(), ServiceError> {
        match self {
            Self::Local(stack) => stack.set_link(link, fault),
            Self::Docker(stack) => stack.set_link(link, fault).await,
            Self::External(_) => Err(external_refuses("a link fault")),
        }
    }

    pub async fn reset_link(&self, link: Link) -> Result<(), ServiceError> {
        match self {
            Self::Local(stack) => stack.reset_link(link),
            Self::Docker(stack) => stack.reset_link(link).await,
            Self::External(_) => Err(external_refuses("a link fault")),
        }
    }

    /// Starts the stack, killing Debezium `after` into its initial snapshot for
    /// `downtime` (the `snapshot_fault` of a scenario).
    pub async fn up_with_snapshot_kill(&mut self, after: Duration, downtime: Duration) -> Result<crate::report::model::FaultRecord, ServiceError> {
        match self {
            Self::Local(stack) => stack.up_with_snapshot_kill(after, downtime).await,
            Self::Docker(_) => {
                Err(ServiceError::BackendUnavailable("docker", "a snapshot fault (kill during the initial snapshot) runs on the local backend only".into()))
            }
            Self::External(_) => Err(external_refuses("a snapshot fault (kill during the initial snapshot)")),
        }
    }

    /// Partitions of the CDC topics, where the stack did not choose them (external).
    pub fn partitions(&self) -> Option<u32> {
        match self {
            Self::External(stack) => stack.partitions(),
            _ => None,
        }
    }

    /// What the report says about the stack's endpoints (never a credential).
    pub fn describe(&self) -> serde_json::Value {
        match self {
            Self::External(stack) => stack.describe(),
            _ => {
                let e = self.endpoints();
                serde_json::json!({ "postgres": e.postgres.display(&e.postgres.source_db), "kafka": e.kafka, "sink": e.sink_http })
            }
        }
    }

    /// Kafka Connect's REST API for the connector faults, where the stack has one.
    pub fn connector(&self) -> Result<ConnectClient, ServiceError> {
        match self.endpoints().connect {
            Some(endpoint) => Ok(ConnectClient::new(&endpoint)),
            None => Err(refused("connector faults need Kafka Connect's REST API: this stack names none ([connect] in the endpoints file)")),
        }
    }

    /// Refuses, before any load, a schedule with a fault this backend cannot inject.
    pub fn check_faults(&self, faults: &[crate::faults::FaultSpec]) -> Result<(), ServiceError> {
        for fault in faults {
            if fault.on_connector() {
                self.connector()?;
            } else if matches!(self, Self::External(_)) && fault.fault != crate::faults::FaultKind::Poison {
                return Err(external_refuses(&format!("fault {} on {}", fault.fault.name(), fault.target)));
            }
        }
        Ok(())
    }
}

fn external_refuses(what: &str) -> ServiceError {
    refused(&format!(
        "the external backend does only what a client can do from outside: {what} is refused (its faults: pause / restart of target `connector`, restart of `connector-task`, poison)"
    ))
}

/// The first upstream image of the pipeline that is not present on the daemon, if any.
async fn missing_upstream_images(target: Option<TargetKind>) -> Option<String> {
    let docker = super::docker::connect().await.ok()?;
    let images = Images::default();
    let mut wanted = vec![images.postgres, images.kafka, images.connect, images.sink];
    if target.unwrap_or(TargetKind::Mongodb) == TargetKind::Mongodb {
        wanted.push(images.mongo);
    }
    for image in wanted {
        if docker.inspect_image(&image).await.is_err() {
            return Some(image);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_local_backend_refuses_docker_only_options_with_a_usage_error() {
        let config = || StackConfig::new(std::env::temp_dir().join(format!("stack-choice-{}", std::process::id())));
        let images = StackChoice { images: Some(ImageSet::Local), ..StackChoice::local() };
        let err = Stack::create(config(), images).await.err().expect("refused");
        assert!(matches!(&err, ServiceError::Unsupported(m) if m.contains("--backend docker")), "{err}");
        let mongo = StackChoice { target: Some(TargetKind::Mongodb), ..StackChoice::local() };
        let err = Stack::create(config(), mongo).await.err().expect("refused");
        assert!(matches!(&err, ServiceError::Unsupported(m) if m.contains("MongoDB")), "{err}");
        assert_eq!(crate::exit::code_for(&anyhow::Error::new(err)), crate::exit::USAGE);
    }

    #[test]
    fn the_external_backend_accepts_only_faults_from_outside_and_declares_the_rest_refused() {
        use crate::faults::{FaultKind, FaultSpec};
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("e.toml");
        std::fs::write(dir.path().join("pw"), "x\n").unwrap();
        let text = "[source]\ndsn = \"postgres://u@h/db\"\npassword = { file = \"pw\" }\npublication = \"p\"\n\n[kafka]\nbootstrap_servers = \"k:9092\"\ntopic_prefix = \"cdc\"\nconsumer_group = \"g\"\n\n[target]\nkind = \"postgres\"\ndsn = \"postgres://u@h/t\"\npassword = { file = \"pw\" }\n";
        std::fs::write(&file, text).unwrap();
        let choice = StackChoice { backend: Some(BackendKind::External), endpoints: Some(file.clone()), ..StackChoice::default() };
        let stack = Stack::external(&choice).unwrap().expect("external");
        assert_eq!(stack.backend(), BackendKind::External);
        let fault = |fault: FaultKind, target: &str| FaultSpec {
            at: Duration::ZERO,
            duration: Duration::from_secs(1),
            target: target.into(),
            fault,
            latency_ms: Some(10),
            jitter_ms: None,
            bandwidth_kbps: None,
            count: Some(1),
        };
        stack.check_faults(&[fault(FaultKind::Poison, "customer")]).unwrap();
        for refused in [fault(FaultKind::Kill, "sink"), fault(FaultKind::Latency, "broker"), fault(FaultKind::Pause, "debezium")] {
            let err = stack.check_faults(std::slice::from_ref(&refused)).unwrap_err();
            assert!(err.to_string().contains("is refused"), "{err}");
            assert_eq!(crate::exit::code_for(&anyhow::Error::new(err)), crate::exit::USAGE);
        }
        // Connector faults need the [connect] section.
        let err = stack.check_faults(&[fault(FaultKind::Pause, "connector")]).unwrap_err();
        assert!(err.to_string().contains("[connect]"), "{err}");
        std::fs::write(&file, format!("{text}\n[connect]\nurl = \"http://c:8083\"\nconnector = \"n\"\n")).unwrap();
        let stack = Stack::external(&choice).unwrap().expect("external");
        stack.check_faults(&[fault(FaultKind::Pause, "connector"), fault(FaultKind::Restart, "connector-task")]).unwrap();
        // --endpoints with another backend, or external without a file: usage errors.
        let mixed = StackChoice { backend: Some(BackendKind::Local), ..choice.clone() };
        assert!(Stack::external(&mixed).err().unwrap().to_string().contains("--backend external"));
        let bare = StackChoice { backend: Some(BackendKind::External), ..StackChoice::default() };
        assert!(Stack::external(&bare).err().unwrap().to_string().contains("--endpoints FILE"));
    }
}
