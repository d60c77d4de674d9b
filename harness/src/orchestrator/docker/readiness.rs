//! Waiting for declared readiness: a container's own health check, then each service's
//! probe (a query, broker metadata, the connector or launcher status, the sink's `/readyz`).

use std::path::PathBuf;
use std::time::Duration;

use bollard::models::{ContainerStateStatusEnum, HealthStatusEnum};
use bollard::query_parameters::InspectContainerOptions;

use super::DockerError;
use super::images::ImageSet;
use super::lifecycle::DockerStack;
use super::spec::Role;
use crate::orchestrator::connect::{ConnectClient, ConnectorHealth};
use crate::orchestrator::local::{debezium as local_debezium, sink as local_sink};
use crate::orchestrator::services;
use crate::orchestrator::wait::{NotReady, WaitFor};
use crate::orchestrator::{Backend, ConnectEndpoint, PgEndpoint, ServiceError, ServiceKind, ServiceState, ServiceStatus};

const POLL: Duration = Duration::from_millis(500);

impl DockerStack {
    /// Waits for the container's own health check to report healthy.
    pub(super) async fn wait_healthy(&self, role: Role, service: ServiceKind, timeout: Duration) -> Result<(), ServiceError> {
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

    pub(super) async fn container_state(&self, role: Role) -> Result<Option<ContainerStateStatusEnum>, DockerError> {
        let name = self.names.container(role);
        match self.docker.inspect_container(&name, None::<InspectContainerOptions>).await {
            Ok(inspect) => Ok(inspect.state.and_then(|s| s.status)),
            Err(e) => match DockerError::from_bollard("inspect container", &name, e) {
                DockerError::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    pub(super) async fn check(&self, service: ServiceKind) -> ServiceStatus {
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
            ServiceKind::Postgres => services::postgres_answers(&endpoints.postgres).await,
            ServiceKind::Broker => services::broker_answers(endpoints.kafka.clone()).await,
            ServiceKind::Debezium if self.state.docker.image_set == ImageSet::Local => launcher_ready(endpoints.debezium_status.clone(), false).await,
            ServiceKind::Debezium => connector_ready(format!("http://127.0.0.1:{}", self.state.ports.connect), endpoints.postgres.clone(), false).await,
            ServiceKind::Sink => local_sink::is_ready(&endpoints.sink_http).await,
        };
        status.probed(probe)
    }
}

/// The launcher streams and, on the first start, finished its snapshot.
pub(super) async fn launcher_ready(url: String, require_snapshot: bool) -> Result<(), String> {
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
pub(super) async fn wait_until<F, Fut>(service: ServiceKind, timeout: Duration, log: PathBuf, mut probe: F) -> Result<(), ServiceError>
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

/// Connector and tasks RUNNING, the replication slot in use (streaming connected) and,
/// on the first start, the initial snapshot finished.
pub(super) async fn connector_ready(connect: String, pg: PgEndpoint, require_snapshot: bool) -> Result<(), String> {
    let client = ConnectClient::new(&ConnectEndpoint { url: connect, connector: crate::config::CONNECTOR_NAME.into() });
    match client.status().await.map_err(|e| e.to_string())?.health() {
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
        match client.snapshot_finished().await.map_err(|e| e.to_string())? {
            Some(true) => {}
            Some(false) => return Err("initial snapshot in progress".into()),
            None => return Err("no source offset committed yet".into()),
        }
    }
    Ok(())
}
