//! The one stack type every command drives (`run`, fault schedules, `verify`, `status`,
//! `down`), whichever backend runs the services. Each operation means the same on every
//! backend; one a backend cannot do is an error that says so, never a silent no-op.

use std::path::Path;

use super::connect::ConnectClient;
use super::docker::images::{self, ImageSet};
use super::docker::{DockerConfig, DockerStack, Images, TargetKind};
use super::external::ExternalStack;
use super::local::LocalStack;
use super::{Backend, BackendKind, Endpoints, LeaderResolver, ServiceControl, ServiceError, ServiceStatus};
use crate::config::StackConfig;

/// A stack of any backend. Commands ask it what it can do (`control`, `owns_services`,
/// ...), never which backend it is, except to name it in a report.
pub struct Stack(Box<dyn Backend>);

impl<B: Backend + 'static> From<B> for Stack {
    fn from(backend: B) -> Self {
        Self(Box::new(backend))
    }
}

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

fn usage(reason: &str) -> ServiceError {
    ServiceError::Usage(reason.to_string())
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
            BackendKind::Docker => Ok(Self::from(DockerStack::new(config, docker_config(&choice).await?).await?)),
            _ => {
                if choice.images.is_some() {
                    return Err(usage("--images chooses the Docker backend's images: add --backend docker"));
                }
                if choice.target == Some(TargetKind::Mongodb) {
                    return Err(usage("the local backend's sink writes to PostgreSQL; a MongoDB target needs --backend docker"));
                }
                Ok(Self::from(LocalStack::new(config)?))
            }
        }
    }

    /// The external stack `choice` names (`--endpoints` with `--backend external` or
    /// `auto`), if it names one; `--endpoints` with another backend is a usage error.
    pub fn external(choice: &StackChoice) -> Result<Option<Self>, ServiceError> {
        match (choice.backend, &choice.endpoints) {
            (Some(BackendKind::External) | None | Some(BackendKind::Auto), Some(file)) => {
                if choice.images.is_some() || choice.target.is_some() {
                    return Err(usage("--images and --target choose what the harness starts; an external stack's target is in its endpoints file"));
                }
                Ok(Some(Self::from(ExternalStack::load(file, choice.require_tls)?)))
            }
            (Some(BackendKind::External), None) => Err(usage("--backend external needs --endpoints FILE")),
            (Some(other), Some(_)) => Err(usage(&format!("--endpoints names an external stack: use --backend external, not {}", other.name()))),
            _ => Ok(None),
        }
    }

    /// The stack a previous `up` left in `run_dir`, of whichever backend made it.
    pub async fn open(run_dir: &Path) -> Result<Option<Self>, ServiceError> {
        if let Some(stack) = DockerStack::open(run_dir).await? {
            return Ok(Some(Self::from(stack)));
        }
        Ok(LocalStack::open(run_dir)?.map(Self::from))
    }

    /// For the commands that read a stack (`status`, `verify`, ...): the external stack
    /// `choice` names, or the one a previous `up` left in `run_dir`. Any other `--backend`
    /// than `auto` is a usage error: these commands start nothing.
    pub async fn open_named(choice: &StackChoice, run_dir: &Path) -> Result<Self, ServiceError> {
        if let Some(stack) = Self::external(choice)? {
            return Ok(stack);
        }
        if let Some(other) = choice.backend.filter(|b| *b != BackendKind::Auto) {
            return Err(usage(&format!("--backend {} is for commands that start a stack; this one reads the stack in --run-dir or --endpoints", other.name())));
        }
        Self::open(run_dir).await?.ok_or_else(|| ServiceError::NoStack(run_dir.to_path_buf()))
    }

    /// The backend's name in reports; decisions go through what the stack can do.
    pub fn backend(&self) -> BackendKind {
        self.0.kind()
    }

    /// The services' controls (kill, stop, pause, start, link faults), or this backend's
    /// refusal when it has none.
    pub fn control(&mut self) -> Result<&mut dyn ServiceControl, ServiceError> {
        if self.0.control_ref().is_none() {
            return Err(self.0.refuse(CONTROL));
        }
        Ok(self.0.control().expect("control_ref answered"))
    }

    /// Same, for the probes that only read.
    pub fn control_ref(&self) -> Result<&dyn ServiceControl, ServiceError> {
        self.0.control_ref().ok_or_else(|| self.0.refuse(CONTROL))
    }

    pub fn image_set(&self) -> Option<ImageSet> {
        self.0.image_set()
    }

    pub fn mongo_uri(&self) -> Option<String> {
        self.0.mongo_uri()
    }

    pub fn mongo_db(&self) -> Option<String> {
        self.0.mongo_db()
    }

    pub fn endpoints(&self) -> Endpoints {
        self.0.endpoints()
    }

    pub async fn up(&mut self) -> Result<Endpoints, ServiceError> {
        self.0.up().await
    }

    pub async fn status(&self) -> Result<Vec<ServiceStatus>, ServiceError> {
        self.0.status().await
    }

    pub async fn down(&mut self) -> Result<(), ServiceError> {
        self.0.down().await
    }

    /// Leaves the services running when this value is dropped.
    pub fn detach(mut self) {
        self.0.detach();
    }

    /// Never tears the services down, whatever happens to this value (`--reuse`).
    pub fn borrow_only(&mut self) {
        self.0.detach();
    }

    pub fn owns_services(&self) -> bool {
        self.0.owns_services()
    }

    pub fn leader_resolver(&self) -> LeaderResolver {
        self.0.leader_resolver()
    }

    pub fn acks_log(&self) -> Option<std::path::PathBuf> {
        self.0.acks_log()
    }

    pub async fn up_with_snapshot_kill(
        &mut self,
        after: std::time::Duration,
        downtime: std::time::Duration,
    ) -> Result<crate::report::model::FaultRecord, ServiceError> {
        self.0.up_with_snapshot_kill(after, downtime).await
    }

    pub fn partitions(&self) -> Option<u32> {
        self.0.partitions()
    }

    pub fn describe(&self) -> serde_json::Value {
        self.0.describe()
    }

    pub fn connector(&self) -> Result<ConnectClient, ServiceError> {
        self.0.connector()
    }

    /// Refuses, before any load, a schedule with a fault this backend cannot inject: a
    /// connector fault needs Connect's API; poison needs only a producer; every other
    /// fault needs the services' controls.
    pub fn check_faults(&self, faults: &[crate::faults::FaultSpec]) -> Result<(), ServiceError> {
        for fault in faults {
            if fault.on_connector() {
                self.connector()?;
            } else if fault.fault != crate::faults::FaultKind::Poison && self.0.control_ref().is_none() {
                return Err(self.0.refuse(&format!("fault {} on {}", fault.fault.name(), fault.target)));
            }
        }
        Ok(())
    }

    /// Refuses, before any load, what this stack cannot do for `scenario`: its faults, and
    /// whatever else its backend declares (see `Backend::check_scenario`).
    pub fn check_scenario(&self, scenario: &crate::scenario::Scenario, faults: &[crate::faults::FaultSpec]) -> Result<(), ServiceError> {
        self.check_faults(faults)?;
        self.0.check_scenario(scenario)
    }
}

/// What `control()` is refused as.
const CONTROL: &str = "killing, stopping, freezing or starting a service, or a link fault";

/// The Docker backend's settings `choice` asks for; the local image set is built here
/// when it is asked for with the PostgreSQL target.
async fn docker_config(choice: &StackChoice) -> Result<DockerConfig, ServiceError> {
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
    Ok(docker)
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
    use std::time::Duration;

    #[tokio::test]
    async fn the_local_backend_refuses_docker_only_options_with_a_usage_error() {
        let config = || StackConfig::new(std::env::temp_dir().join(format!("stack-choice-{}", std::process::id())));
        let images = StackChoice { images: Some(ImageSet::Local), ..StackChoice::local() };
        let err = Stack::create(config(), images).await.err().expect("refused");
        assert!(matches!(&err, ServiceError::Usage(m) if m.contains("--backend docker")), "{err}");
        let mongo = StackChoice { target: Some(TargetKind::Mongodb), ..StackChoice::local() };
        let err = Stack::create(config(), mongo).await.err().expect("refused");
        assert!(matches!(&err, ServiceError::Usage(m) if m.contains("MongoDB")), "{err}");
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
