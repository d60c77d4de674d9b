//! The Docker backend's `ServiceControl`: the daemon's kill, stop, pause and unpause on a
//! service's main container (SIGSTOP/SIGCONT where the kernel has no freezer), and link
//! faults through the local image set's pod proxies.

use bollard::query_parameters::{InspectContainerOptions, KillContainerOptions, StopContainerOptions};
use fault_proxy::{FaultBody, LinkFault};
use nix::sys::signal::Signal;

use super::DockerError;
use super::images::ImageSet;
use super::lifecycle::DockerStack;
use super::spec::Role;
use crate::faults::Link;
use crate::orchestrator::{STOP_GRACE, ServiceControl, ServiceError, ServiceKind, ServiceState};

impl DockerStack {
    /// The container that is `service` itself (not its pod proxy or MongoDB).
    fn main_role(&self, service: ServiceKind) -> Role {
        Role::for_service(service, &self.state.docker).last().copied().unwrap_or(Role::Sink)
    }

    /// The main container's name, logged as the fault `what` is injected into it.
    fn fault_target(&self, service: ServiceKind, what: &str) -> String {
        let name = self.names.container(self.main_role(service));
        tracing::info!(message = "fault", container = %name, fault = what);
        name
    }

    /// `signal` to every process of the container of `role` (its init's tree on the host).
    async fn signal_container(&self, role: Role, signal: Signal) -> Result<(), ServiceError> {
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

    /// The control URLs of the pod proxies that carry `link`.
    fn link_controls(&self, link: Link) -> Result<Vec<String>, ServiceError> {
        if self.state.docker.image_set != ImageSet::Local {
            return Err(ServiceError::Start {
                service: ServiceKind::Broker,
                reason: format!("link faults ({}) run through the local image set's pod proxies: use --images local", link.name()),
            });
        }
        let p = &self.state.ports;
        Ok(proxy_ports(link, p.connect_proxy, p.sink_proxy).into_iter().map(|port| format!("http://127.0.0.1:{port}/links/{}", link.name())).collect())
    }
}

/// The pod proxies that carry `link`: the broker link runs through both pods, the source
/// link through Debezium's, the target link through the sink's.
fn proxy_ports(link: Link, connect_proxy: u16, sink_proxy: u16) -> Vec<u16> {
    match link {
        Link::Broker => vec![connect_proxy, sink_proxy],
        Link::DebeziumPostgres => vec![connect_proxy],
        Link::SinkTarget => vec![sink_proxy],
    }
}

/// The service whose readiness a container's restart waits for.
pub(super) fn service_of(role: Role) -> ServiceKind {
    match role {
        Role::Postgres => ServiceKind::Postgres,
        Role::Kafka => ServiceKind::Broker,
        Role::Connect => ServiceKind::Debezium,
        _ => ServiceKind::Sink,
    }
}

/// A daemon call of a fault on `service` that failed.
fn failed(service: ServiceKind, action: &'static str, name: &str, e: bollard::errors::Error) -> ServiceError {
    ServiceError::Start { service, reason: DockerError::from_bollard(action, name, e).to_string() }
}

/// One call to a pod proxy's control API.
async fn control_call(request: reqwest::RequestBuilder, url: &str) -> Result<(), ServiceError> {
    let fail = |reason: String| ServiceError::Start { service: ServiceKind::Broker, reason: format!("fault proxy {url}: {reason}") };
    let response = request.timeout(std::time::Duration::from_secs(5)).send().await.map_err(|e| fail(e.to_string()))?;
    if response.status().is_success() { Ok(()) } else { Err(fail(format!("answered {}", response.status()))) }
}

#[async_trait::async_trait]
impl ServiceControl for DockerStack {
    async fn kill(&mut self, service: ServiceKind) -> Result<(), ServiceError> {
        let name = self.fault_target(service, "kill");
        let options = KillContainerOptions { signal: "SIGKILL".into() };
        self.docker.kill_container(&name, Some(options)).await.map_err(|e| failed(service, "kill container", &name, e))
    }

    async fn stop(&mut self, service: ServiceKind) -> Result<(), ServiceError> {
        let name = self.fault_target(service, "stop");
        let grace = i32::try_from(STOP_GRACE.as_secs()).unwrap_or(i32::MAX);
        let options = StopContainerOptions { t: Some(grace), ..Default::default() };
        self.docker.stop_container(&name, Some(options)).await.map_err(|e| failed(service, "stop container", &name, e))
    }

    /// The daemon's pause (cgroup freezer); where the kernel has no freezer ("unable to
    /// freeze", as on this machine), SIGSTOP to every process of the container, seen from
    /// the host.
    async fn pause(&mut self, service: ServiceKind) -> Result<(), ServiceError> {
        let name = self.fault_target(service, "pause");
        match self.docker.pause_container(&name).await.map_err(|e| failed(service, "pause container", &name, e)) {
            Err(e) if e.to_string().contains("unable to freeze") => {
                let role = self.main_role(service);
                self.signal_container(role, Signal::SIGSTOP).await?;
                tracing::info!(message = "no cgroup freezer: container stopped with SIGSTOP", container = %name);
                self.signal_paused.insert(role);
                Ok(())
            }
            other => other,
        }
    }

    async fn resume(&mut self, service: ServiceKind) -> Result<(), ServiceError> {
        let role = self.main_role(service);
        if self.signal_paused.remove(&role) {
            return self.signal_container(role, Signal::SIGCONT).await;
        }
        let name = self.fault_target(service, "unpause");
        self.docker.unpause_container(&name).await.map_err(|e| failed(service, "unpause container", &name, e))
    }

    async fn start(&mut self, service: ServiceKind) -> Result<(), ServiceError> {
        self.start_service(service).await
    }

    /// Healthy: running and passing its readiness probe.
    async fn is_healthy(&self, service: ServiceKind) -> bool {
        self.check(service).await.state == ServiceState::Healthy
    }

    /// Sets `fault` on `link` in every pod proxy that carries it.
    async fn set_link(&self, link: Link, fault: LinkFault) -> Result<(), ServiceError> {
        let body = FaultBody::from(fault);
        for url in self.link_controls(link)? {
            control_call(crate::http::client().put(&url).json(&body), &url).await?;
        }
        Ok(())
    }

    /// Cuts the open connections of `link` once.
    async fn reset_link(&self, link: Link) -> Result<(), ServiceError> {
        for url in self.link_controls(link)? {
            let url = format!("{url}/reset");
            control_call(crate::http::client().post(&url), &url).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_link_runs_through_the_pod_proxies_of_its_peers() {
        assert_eq!(proxy_ports(Link::Broker, 1, 2), vec![1, 2]);
        assert_eq!(proxy_ports(Link::DebeziumPostgres, 1, 2), vec![1]);
        assert_eq!(proxy_ports(Link::SinkTarget, 1, 2), vec![2]);
        assert_eq!(service_of(Role::Kafka), ServiceKind::Broker);
        assert_eq!(service_of(Role::Connect), ServiceKind::Debezium);
        assert_eq!(service_of(Role::Mongo), ServiceKind::Sink);
    }
}
