//! The sink's apply path fed from memory, no consumer: `sink --config C bench-apply --events F`.
//! The same `Handler` the partition tasks run (decode, validate, referential checks, batch
//! plan, guarded write, DLQ), over batches of `[apply] max_batch_size` records on
//! partition 0 of the first configured topic. `harness bench sink` reports the rate as
//! `apply_events_per_sec`, so the broker's share and the sink's own share of the end-to-end
//! rate can be told apart.

use std::io::BufRead as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::app::RunError;
use crate::config::SinkConfig;
use crate::dlq::DlqProducer;
use crate::handler::{Handler, PartitionState, Record};
use crate::metrics::Metrics;
use crate::model::{Coords, Entity};
use crate::schema::SchemaTracker;
use crate::targets::Target;

#[derive(Debug, Serialize)]
pub struct ApplyRun {
    pub events: usize,
    pub seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} line {line}: {why}")]
    Line { path: String, line: usize, why: String },
    #[error("[kafka] topics names no known table in its first entry")]
    NoEntity,
    #[error(transparent)]
    Run(#[from] RunError),
}

/// Each line of `path` is `{"key": <json or null>, "value": <json or null>}`.
pub fn read_records(path: &Path, topic: &str) -> Result<Vec<Record>, BenchError> {
    let shown = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| BenchError::Read { path: shown.clone(), source })?;
    let mut records = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| BenchError::Read { path: shown.clone(), source })?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: String| BenchError::Line { path: shown.clone(), line: i + 1, why };
        let value: serde_json::Value = serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?;
        let part = |name: &str| match value.get(name) {
            None => Err(bad(format!("no \"{name}\" field"))),
            Some(serde_json::Value::Null) => Ok(None),
            Some(v) => Ok(Some(v.to_string().into_bytes())),
        };
        let coords = Coords { topic: topic.to_string(), partition: 0, offset: records.len() as i64, timestamp: None };
        records.push(Record { coords, key: part("key")?, value: part("value")?, trace: None });
    }
    Ok(records)
}

/// Applies `records` through one handler, batch after batch, and times it (connect excluded).
pub async fn apply_from_memory(config: SinkConfig, events: &Path) -> Result<ApplyRun, BenchError> {
    let topic = config.kafka.topics.first().cloned().ok_or(BenchError::NoEntity)?;
    let entity = Entity::from_topic(&topic).ok_or(BenchError::NoEntity)?;
    let records = read_records(events, &topic)?;
    let config = Arc::new(config);
    let target = Target::connect(&config.target, config.audit.enabled).await.map_err(RunError::from)?;
    // Only used if an event is refused; the bench's events are all valid.
    let dlq = DlqProducer::new(&config.kafka).map_err(RunError::from)?;
    let handler = Handler {
        entity,
        target: Arc::new(target),
        dlq: Arc::new(dlq),
        metrics: Arc::new(Metrics::new()),
        schema: Arc::new(SchemaTracker::new()),
        config: Arc::clone(&config),
        stalls: Arc::default(),
    };
    let mut state = PartitionState::default();
    let started = Instant::now();
    for batch in records.chunks(config.apply.max_batch_size.max(1)) {
        handler.process(batch, &mut state).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(ApplyRun { events: records.len(), seconds })
}
