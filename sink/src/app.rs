//! Wiring: HTTP server, target, DLQ producer, consumer, probes, tombstone purge, and the
//! graceful shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use tracing::{info, warn};

use crate::config::SinkConfig;
use crate::dlq::DlqProducer;
use crate::pipeline::Handler;
use crate::http::{AppState, Readiness, router};
use crate::metrics::Metrics;
use crate::model::Entity;
use crate::retry::Backoff;
use crate::schema::SchemaTracker;
use crate::source::{ConsumerShared, GroupState, Source, SourceError, create_consumer};
use crate::targets::{ErrorClass, Target, TargetError};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    /// Only errors that waiting does not fix (bad credentials, permissions, a missing
    /// database): transient ones are waited out.
    #[error("the target refused the sink at start-up ({0}); fix the target settings or grants and restart")]
    Target(#[from] TargetError),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Source(#[from] SourceError),
}

/// Connects the target, waiting while it is unreachable (a transient error) and failing
/// on anything else (bad credentials, permissions, a missing database): those would fail
/// every write, and an operator learns of them at once from the exit status.
async fn connect_target(config: &SinkConfig, metrics: &Metrics) -> Result<Target, TargetError> {
    let mut backoff = Backoff::new(&config.apply);
    loop {
        match Target::connect(&config.target, config.audit.enabled).await {
            Ok(t) => return Ok(t),
            Err(error) if error.class() == ErrorClass::Transient => {
                metrics.dependency_up("target", false);
                warn!(message = "target not reachable yet, waiting", %error);
                backoff.wait().await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Runs the sink until `shutdown` resolves. Ok means a clean shutdown.
pub async fn run(config: SinkConfig, shutdown: impl std::future::Future<Output = ()>) -> Result<(), RunError> {
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new());
    let group = Arc::new(GroupState::default());
    let readiness = Arc::new(Readiness::new(Arc::clone(&group), config.kafka.assignment_grace));

    let addr = config.listen_addr();
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| RunError::Listen { addr: addr.to_string(), source })?;
    let app = router(Arc::new(AppState { metrics: Arc::clone(&metrics), readiness: Arc::clone(&readiness) }));
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            warn!(message = "http server stopped", %error);
        }
    });
    info!(message = "http listening", %addr);

    let target = Arc::new(connect_target(&config, &metrics).await?);
    readiness.target.store(true, Ordering::Relaxed);
    metrics.dependency_up("target", true);
    info!(message = "target ready", kind = target.kind());

    let dlq = Arc::new(DlqProducer::new(&config.kafka)?);
    let shared = ConsumerShared { metrics: Arc::clone(&metrics), group: Arc::clone(&group), stalls: Arc::clone(&readiness.stalls) };
    let consumer = create_consumer(&config.kafka, &shared, 0)?;
    let metadata_probe = metadata_client(&config.kafka)?;
    let schema = Arc::new(SchemaTracker::new());
    let handlers: HashMap<String, Arc<Handler>> = config
        .kafka
        .topics
        .iter()
        .filter_map(|topic| Entity::from_topic(topic).map(|e| (topic, e)))
        .map(|(topic, entity)| {
            let handler = Handler {
                entity,
                target: Arc::clone(&target),
                dlq: Arc::clone(&dlq),
                metrics: Arc::clone(&metrics),
                schema: Arc::clone(&schema),
                config: Arc::clone(&config),
                stalls: Arc::clone(&readiness.stalls),
            };
            (topic.clone(), Arc::new(handler))
        })
        .collect();

    let probe = tokio::spawn(probe_loop(metadata_probe, Arc::clone(&target), Arc::clone(&readiness), Arc::clone(&metrics), config.kafka.topics[0].clone()));
    let purge = config
        .tombstones
        .retention
        .map(|retention| tokio::spawn(purge_loop(Arc::clone(&target), Arc::clone(&metrics), retention, config.tombstones.purge_interval)));

    info!(message = "consuming", topics = ?config.kafka.topics, group = %config.kafka.group_id);
    let source = Source {
        consumer,
        handlers,
        apply: config.apply.clone(),
        kafka: config.kafka.clone(),
        metrics: Arc::clone(&metrics),
        group,
        stalls: Arc::clone(&readiness.stalls),
        generation: 0,
    };
    let result = source.run(shutdown).await;
    probe.abort();
    if let Some(purge) = purge {
        purge.abort();
    }
    readiness.running.store(false, Ordering::Relaxed);
    result?;
    info!(message = "clean shutdown");
    Ok(())
}

/// A plain client (no group) for the broker probe: independent of the group consumer,
/// which the watchdog may replace.
fn metadata_client(config: &crate::config::KafkaConfig) -> Result<Arc<BaseConsumer>, rdkafka::error::KafkaError> {
    let mut client = config.client_config();
    client.set_log_level(rdkafka::config::RDKafkaLogLevel::Error);
    for (k, v) in &config.librdkafka {
        // Connection settings (security, timeouts) apply; consumer tuning does no harm.
        client.set(k, v);
    }
    Ok(Arc::new(client.create()?))
}

/// Keeps `/readyz` honest: the target answers a ping and the broker answers a metadata
/// request, every few seconds.
async fn probe_loop(consumer: Arc<BaseConsumer>, target: Arc<Target>, readiness: Arc<Readiness>, metrics: Arc<Metrics>, topic: String) {
    let mut tick = tokio::time::interval(Duration::from_secs(3));
    loop {
        tick.tick().await;
        let target_up = tokio::time::timeout(Duration::from_secs(3), target.ping()).await.is_ok_and(|r| r.is_ok());
        readiness.target.store(target_up, Ordering::Relaxed);
        metrics.dependency_up("target", target_up);
        let c = Arc::clone(&consumer);
        let t = topic.clone();
        let kafka_up = tokio::task::spawn_blocking(move || c.fetch_metadata(Some(&t), Duration::from_secs(3)).is_ok()).await.unwrap_or(false);
        readiness.kafka.store(kafka_up, Ordering::Relaxed);
        metrics.dependency_up("kafka", kafka_up);
    }
}

/// Purges delete tombstones older than the retention (see README: it must exceed the
/// broker's retention, or a replay could resurrect a purged key).
async fn purge_loop(target: Arc<Target>, metrics: Arc<Metrics>, retention: Duration, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        for entity in Entity::ALL {
            match target.purge_tombstones(entity, retention).await {
                Ok(n) => {
                    if n > 0 {
                        info!(message = "tombstones purged", entity = %entity, count = n);
                        metrics.tombstones_purged(entity, n);
                    }
                }
                Err(error) => {
                    metrics.error("purge");
                    warn!(message = "tombstone purge failed", entity = %entity, %error);
                }
            }
        }
    }
}
