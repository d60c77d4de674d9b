//! The daemon itself: connecting, commands run in a container, and the removal and
//! listing of a run's containers by label (also of runs whose folder is gone).

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::query_parameters::{ListContainersOptions, ListNetworksOptions, RemoveContainerOptions};
use futures::StreamExt;

use super::DockerError;
use super::lifecycle::DockerStack;
use super::spec::{self, Role};

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

pub(super) async fn remove_labelled(docker: &Docker, run_id: Option<&str>) -> Result<(usize, usize), DockerError> {
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

impl DockerStack {
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
}
