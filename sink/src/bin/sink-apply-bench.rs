//! `sink-apply-bench --config <sink.toml> --events <file.ndjson>`: the sink's own apply path
//! (decode, validate, batch plan and the guarded write) fed from memory into the configured
//! target, no broker: what `harness bench sink` reports as `apply_events_per_sec`. Each line
//! of the file is `{"key": <json>, "value": <json>}`; events go in batches of
//! `[apply] max_batch_size`, on partition 0 of the topic the first `[kafka] topics` entry
//! names. Prints `{"events": n, "applied": n, "seconds": s}`.

use std::io::BufRead as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use clap::Parser;
use sink::config::SinkConfig;
use sink::decode::{DecodeOptions, Decoded, decode};
use sink::model::{Coords, Entity};
use sink::targets::Target;
use sink::validation::{KeyMemory, Tally, Validator};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    config: PathBuf,
    #[arg(long)]
    events: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = SinkConfig::load(&args.config, std::env::vars()).context("sink config")?;
    let topic = config.kafka.topics.first().context("[kafka] topics is empty")?.clone();
    let entity = Entity::from_topic(&topic).context("the first topic names no known table")?;
    let file = std::fs::File::open(&args.events).with_context(|| format!("open {}", args.events.display()))?;
    let mut records: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for line in std::io::BufReader::new(file).lines() {
        let line: serde_json::Value = serde_json::from_str(&line?)?;
        records.push((line["key"].to_string().into_bytes(), line["value"].to_string().into_bytes()));
    }
    let target = Target::connect(&config.target, config.audit.enabled).await.context("connect the target")?;
    let options = DecodeOptions::of(&config);
    let mut memory = KeyMemory::default();
    let mut tally = Tally::default();
    let (mut applied, started) = (0usize, Instant::now());
    for (b, batch) in records.chunks(config.apply.max_batch_size).enumerate() {
        let validator = Validator { config: &config.validation, now: chrono::Utc::now() };
        let mut changes = Vec::with_capacity(batch.len());
        for (i, (key, value)) in batch.iter().enumerate() {
            let offset = (b * config.apply.max_batch_size + i) as i64;
            let coords = Coords { topic: topic.clone(), partition: 0, offset, timestamp: None };
            if let Decoded::Change(change) = decode(&coords, Some(key), Some(value), &options)? {
                if validator.check(&change, &mut memory, &mut tally).is_empty() {
                    changes.push(*change);
                }
            }
        }
        applied += target.apply(entity, &changes).await?.applied.len();
    }
    let seconds = started.elapsed().as_secs_f64();
    println!("{}", serde_json::json!({ "events": records.len(), "applied": applied, "seconds": seconds }));
    Ok(())
}
