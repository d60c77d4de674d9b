//! The sink's apply path fed from memory, no consumer: `sink --config C bench-apply --events F`.
//! The same `Handler` the partition tasks run (decode, validate, referential checks, batch
//! plan, guarded write, DLQ), over batches of `[apply] max_batch_size` records of the first
//! configured topic, spread over `--partitions` partitions by key (one key, one partition,
//! as a keyed topic is) and run as concurrent partition tasks, as the sink runs them. `harness bench sink` reports the rate as
//! `apply_events_per_sec`, so the broker's share and the sink's own share of the end-to-end
//! rate can be told apart.

use std::io::BufRead as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::app::RunError;
use crate::config::SinkConfig;
use crate::decode::{DecodeOptions, Decoded, decode};
use crate::dlq::DlqProducer;
use crate::pipeline::{Handler, PartitionState, Record};
use crate::metrics::Metrics;
use crate::model::{Coords, Entity};
use crate::schema::SchemaTracker;
use crate::targets::Target;
use crate::validation::{KeyMemory, Tally, Validator};

#[derive(Debug, Serialize)]
pub struct ApplyRun {
    pub events: usize,
    pub partitions: u32,
    pub seconds: f64,
    /// The same records decoded and validated only (no write): the sink's CPU share.
    pub decode_seconds: f64,
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
    #[error("a partition task failed: {0}")]
    Task(String),
}

/// Each line of `path` is `{"key": <json or null>, "value": <json or null>}`; records go to
/// `partitions` partitions by a hash of the key, in file order within each.
pub fn read_records(path: &Path, topic: &str, partitions: u32) -> Result<Vec<Vec<Record>>, BenchError> {
    let shown = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| BenchError::Read { path: shown.clone(), source })?;
    let mut records: Vec<Vec<Record>> = (0..partitions.max(1)).map(|_| Vec::new()).collect();
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
        let key = part("key")?;
        let partition = partition_of(key.as_deref(), records.len());
        let into = &mut records[partition];
        let coords = Coords { topic: topic.to_string(), partition: partition as i32, offset: into.len() as i64, timestamp: None };
        into.push(Record { coords, key, value: part("value")?, trace: None });
    }
    Ok(records)
}

fn partition_of(key: Option<&[u8]>, partitions: usize) -> usize {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() % partitions as u64) as usize
}

/// Applies the records through one handler, a task per partition, batch after batch, and
/// times it (connecting excluded).
pub async fn apply_from_memory(config: SinkConfig, events: &Path, partitions: u32) -> Result<ApplyRun, BenchError> {
    let topic = config.kafka.topics.first().cloned().ok_or(BenchError::NoEntity)?;
    let entity = Entity::from_topic(&topic).ok_or(BenchError::NoEntity)?;
    let records = read_records(events, &topic, partitions)?;
    let config = Arc::new(config);
    let target = Target::connect(&config.target, config.audit.enabled).await.map_err(RunError::from)?;
    // Only used if an event is refused; the bench's events are all valid.
    let dlq = DlqProducer::new(&config.kafka).map_err(RunError::from)?;
    let handler = Arc::new(Handler {
        entity,
        target: Arc::new(target),
        dlq: Arc::new(dlq),
        metrics: Arc::new(Metrics::new()),
        schema: Arc::new(SchemaTracker::new()),
        config: Arc::clone(&config),
        stalls: Arc::default(),
    });
    let decode_seconds = decode_only(&config, records.iter().flatten())?;
    let events = records.iter().map(Vec::len).sum();
    let batch_size = config.apply.max_batch_size.max(1);
    let started = Instant::now();
    let tasks: Vec<_> = records
        .into_iter()
        .map(|partition| {
            let handler = Arc::clone(&handler);
            tokio::spawn(async move {
                let mut state = PartitionState::default();
                for batch in partition.chunks(batch_size) {
                    handler.process(batch, &mut state).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.map_err(|e| BenchError::Task(e.to_string()))?;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(ApplyRun { events, partitions: partitions.max(1), seconds, decode_seconds })
}

fn decode_only<'a>(config: &SinkConfig, records: impl Iterator<Item = &'a Record>) -> Result<f64, BenchError> {
    let options = DecodeOptions::of(config);
    let validator = Validator { config: &config.validation, now: chrono::Utc::now() };
    let (mut memory, mut tally) = (KeyMemory::default(), Tally::default());
    let started = Instant::now();
    for record in records {
        let decoded = decode(&record.coords, record.key.as_deref(), record.value.as_deref(), &options).map_err(|e| BenchError::Line {
            path: "events".into(),
            line: record.coords.offset as usize + 1,
            why: e.to_string(),
        })?;
        if let Decoded::Change(change) = decoded {
            std::hint::black_box(validator.check(&change, &mut memory, &mut tally));
        }
    }
    Ok(started.elapsed().as_secs_f64())
}
