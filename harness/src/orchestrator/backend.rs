//! What every backend does (`Backend`) and what only some can (`ServiceControl`: a backend
//! that started the services can kill, stop, freeze and restart them and fault their links).
//!
//! Both traits are used as trait objects (`Stack` holds a `Box<dyn Backend>`, and
//! `Backend::control` hands out a `&mut dyn ServiceControl`), and `async fn` in a trait is
//! not dyn-compatible: `#[async_trait]` boxes their futures. A generic `Stack<B>` would
//! avoid the box, but every command would then be generic over the backend chosen at run
//! time (or match on it again, which is what this module replaces); one allocation per
//! service operation is nothing next to the daemon or process calls behind it.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;

use super::connect::ConnectClient;
use super::docker::images::ImageSet;
use super::{BackendKind, Endpoints, ServiceError, ServiceKind, ServiceStatus};
use crate::faults::Link;
use crate::report::model::FaultRecord;
use fault_proxy::LinkFault;

/// Each running service's leader pid, asked again every second by the sampler.
pub type LeaderResolver = Box<dyn Fn() -> Vec<(String, i32)> + Send + Sync>;

/// One way of running (or reaching) the pipeline's services.
#[async_trait]
pub trait Backend: Send + Sync {
    fn kind(&self) -> BackendKind;

    fn endpoints(&self) -> Endpoints;

    /// What the report says about the stack's endpoints (never a credential).
    fn describe(&self) -> serde_json::Value {
        let e = self.endpoints();
        serde_json::json!({ "postgres": e.postgres.display(&e.postgres.source_db), "kafka": e.kafka, "sink": e.sink_http })
    }

    /// Starts every service not yet running (or checks a stack it did not start), waits
    /// for readiness, returns the endpoints.
    async fn up(&mut self) -> Result<Endpoints, ServiceError>;

    /// Live state of every service (readiness re-checked).
    async fn status(&self) -> Result<Vec<ServiceStatus>, ServiceError>;

    /// Stops every service; nothing the backend started survives.
    async fn down(&mut self) -> Result<(), ServiceError>;

    /// Leaves the services running whatever happens to this value (dropped after `up`, on
    /// Ctrl-C or a panic): for `up` itself and for a stack this process did not start.
    fn detach(&mut self);

    fn leader_resolver(&self) -> LeaderResolver;

    /// Whether the harness started these services: it stops them when `up` fails, and it
    /// knows their versions.
    fn owns_services(&self) -> bool {
        true
    }

    /// Partitions of the CDC topics, where the stack did not choose them (external).
    fn partitions(&self) -> Option<u32> {
        None
    }

    /// MongoDB on the host, when the stack's sink materializes into it.
    fn mongo_uri(&self) -> Option<String> {
        None
    }

    /// The MongoDB database the stack names, where it names one (else the command's default).
    fn mongo_db(&self) -> Option<String> {
        None
    }

    /// The image set of a stack of containers.
    fn image_set(&self) -> Option<ImageSet> {
        None
    }

    /// The Debezium launcher's log of broker acknowledgements, where it is on this host.
    fn acks_log(&self) -> Option<PathBuf> {
        None
    }

    /// Kafka Connect's REST API for the connector faults, where the stack has one.
    fn connector(&self) -> Result<ConnectClient, ServiceError> {
        match self.endpoints().connect {
            Some(endpoint) => Ok(ConnectClient::new(&endpoint)),
            None => Err(ServiceError::Unsupported {
                backend: self.kind(),
                reason: "connector faults need Kafka Connect's REST API: this stack names none ([connect] in the endpoints file)".into(),
            }),
        }
    }

    /// The services' controls, if this backend has them.
    fn control(&mut self) -> Option<&mut dyn ServiceControl>;

    /// Same, for the probes that only read (`is_healthy`).
    fn control_ref(&self) -> Option<&dyn ServiceControl>;

    /// This backend's refusal of `what` (a usage error, in its own words).
    fn refuse(&self, what: &str) -> ServiceError {
        ServiceError::Unsupported { backend: self.kind(), reason: format!("the {} backend cannot do {what}", self.kind().name()) }
    }

    /// Refuses, before any load, what this stack cannot do for `scenario` besides its faults.
    fn check_scenario(&self, _scenario: &crate::scenario::Scenario) -> Result<(), ServiceError> {
        Ok(())
    }

    /// Starts the stack, killing Debezium `after` into its initial snapshot for
    /// `downtime` (the `snapshot_fault` of a scenario).
    async fn up_with_snapshot_kill(&mut self, _after: Duration, _downtime: Duration) -> Result<FaultRecord, ServiceError> {
        Err(self.refuse("a snapshot fault (kill during the initial snapshot)"))
    }
}

/// The faults a backend that runs the services itself can inject. Every operation waits
/// until it took effect (`start` until the service is ready again).
#[async_trait]
pub trait ServiceControl: Send + Sync {
    /// SIGKILL: no chance to flush or commit.
    async fn kill(&mut self, service: ServiceKind) -> Result<(), ServiceError>;

    /// The service's own shutdown signal, SIGKILL after `STOP_GRACE`.
    async fn stop(&mut self, service: ServiceKind) -> Result<(), ServiceError>;

    /// Freezes every process of the service (SIGSTOP / cgroup freezer).
    async fn pause(&mut self, service: ServiceKind) -> Result<(), ServiceError>;

    async fn resume(&mut self, service: ServiceKind) -> Result<(), ServiceError>;

    /// Starts the service if it is not running and waits for its readiness.
    async fn start(&mut self, service: ServiceKind) -> Result<(), ServiceError>;

    /// A graceful stop, then a start.
    async fn restart(&mut self, service: ServiceKind) -> Result<(), ServiceError> {
        self.stop(service).await?;
        self.start(service).await
    }

    /// Whether the service passes its readiness check now.
    async fn is_healthy(&self, service: ServiceKind) -> bool;

    async fn set_link(&self, link: Link, fault: LinkFault) -> Result<(), ServiceError>;

    /// Cuts every open connection on `link` once.
    async fn reset_link(&self, link: Link) -> Result<(), ServiceError>;
}

/// Grace of a graceful stop before SIGKILL, on every backend.
pub const STOP_GRACE: Duration = Duration::from_secs(30);
