//! What every backend that starts services does the same way: start them in order with
//! progress, report the status of each, and the probes both use to say a service answers.

use std::time::{Duration, Instant};

use super::{PgEndpoint, ServiceError, ServiceKind, ServiceState, ServiceStatus};

/// A backend's own services, started one after another and checked one by one.
#[async_trait::async_trait]
pub(crate) trait Services: Send + Sync {
    /// The services of this stack, in start order.
    fn services(&self) -> Vec<ServiceKind>;
    /// Starts one service and waits until it is ready.
    async fn start_service(&mut self, service: ServiceKind) -> Result<(), ServiceError>;
    /// One service's status, probed.
    async fn check(&self, service: ServiceKind) -> ServiceStatus;

    /// Starts every service in order, saying on stderr how long each took (`how`: where
    /// they run, e.g. "docker", for the progress line).
    async fn start_all(&mut self, how: Option<&str>) -> Result<(), ServiceError> {
        let how = how.map(|h| format!(" ({h})")).unwrap_or_default();
        for service in self.services() {
            tracing::info!(message = "starting service", %service);
            eprintln!("up: starting {service}{how}");
            let started = Instant::now();
            self.start_service(service).await?;
            eprintln!("up: {service} ready ({:.1}s)", started.elapsed().as_secs_f64());
        }
        Ok(())
    }

    async fn check_all(&self) -> Vec<ServiceStatus> {
        let mut out = Vec::new();
        for service in self.services() {
            out.push(self.check(service).await);
        }
        out
    }
}

impl ServiceStatus {
    /// Healthy when the probe answered, else unhealthy with its reason.
    pub(crate) fn probed(mut self, probe: Result<(), String>) -> Self {
        match probe {
            Ok(()) => self.state = ServiceState::Healthy,
            Err(reason) => {
                self.state = ServiceState::Unhealthy;
                self.detail = Some(reason);
            }
        }
        self
    }
}

/// PostgreSQL answers a query on its maintenance database.
pub(crate) async fn postgres_answers(pg: &PgEndpoint) -> Result<(), String> {
    let client = pg.connect("postgres").await.map_err(|e| e.to_string())?;
    client.simple_query("select 1").await.map(drop).map_err(|e| e.to_string())
}

/// The broker answers a metadata request naming at least one broker.
pub(crate) async fn broker_answers(bootstrap: String) -> Result<(), String> {
    tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = super::local::broker::client_config(&bootstrap).create().map_err(|e| e.to_string())?;
        let metadata = consumer.fetch_metadata(None, Duration::from_secs(3)).map_err(|e| e.to_string())?;
        if metadata.brokers().is_empty() { Err("metadata lists no broker".into()) } else { Ok(()) }
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()))
}
