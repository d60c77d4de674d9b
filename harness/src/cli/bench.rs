//! `harness bench`: each benchmark against a raw baseline measured in the same run.

use harness::exit::{Outcome, UsageError};

use super::args::VerifyTarget;

#[derive(clap::Subcommand)]
pub(crate) enum Bench {
    /// Sink throughput into PostgreSQL from a preloaded topic vs. raw batched upserts.
    Sink {
        #[arg(long, value_enum, default_value = "postgres")]
        target: VerifyTarget,
        #[arg(long, default_value_t = 200_000)]
        events: u64,
        /// Partitions of the preloaded topic (the sink applies partitions concurrently).
        #[arg(long, default_value_t = 3)]
        partitions: u32,
        /// Bad records the sink dead-letters for `dlq_letters_per_sec`.
        #[arg(long, default_value_t = 100_000)]
        dlq_events: u64,
        #[arg(long)]
        json: bool,
    },
    /// Verifier throughput over N rows vs. just reading both sides.
    Verify {
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        #[arg(long)]
        json: bool,
    },
}

pub(crate) async fn exec(bench: Bench) -> anyhow::Result<Outcome> {
    match bench {
        Bench::Sink { target, events, partitions, dlq_events, json } => sink(target, events, partitions, dlq_events, json).await,
        Bench::Verify { rows, json } => verify(rows, json).await,
    }
}

async fn sink(target: VerifyTarget, events: u64, partitions: u32, dlq_events: u64, json: bool) -> anyhow::Result<Outcome> {
    if matches!(target, VerifyTarget::Mongo) {
        // A prerequisite set-up cannot provide here.
        return Err(UsageError::new("the sink benchmark needs a MongoDB server, and none is reachable here; use --target postgres").into());
    }
    let result = harness::bench::sink::run(events, partitions, dlq_events).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        println!(
            "sink {} events: {:.0} events/s ({:.2}s), {:.2}x a bare consumer's {:.0} msg/s; with the apply log (audit) {:.0} events/s ({:.2}s, ratio {:.2}); apply path from memory {:.0} events/s ({:.2}s, decoding {:.2}s; audited {:.0} events/s, ratio {:.2}), {:.2}x the raw baseline's {:.0} rows/s ({:.2}s); {} bad records dead-lettered at {:.0} letters/s ({:.2}s), {:.2}x an idempotent producer's {:.0} letters/s straight to the broker ({:.0} records/s without the headers)",
            result.events,
            result.events_per_sec,
            result.sink_seconds,
            result.ratio_to_consumer_read,
            result.consumer_read_per_sec,
            result.audit_events_per_sec,
            result.audit_seconds,
            result.audit_ratio,
            result.apply_events_per_sec,
            result.apply_seconds,
            result.decode_seconds,
            result.apply_audit_events_per_sec,
            result.apply_audit_ratio,
            result.apply_ratio_to_baseline,
            result.baseline_events_per_sec,
            result.baseline_seconds,
            result.dlq_events,
            result.dlq_letters_per_sec,
            result.dlq_seconds,
            result.dlq_ratio_to_raw_produce,
            result.dlq_raw_produce_per_sec,
            result.dlq_raw_produce_no_headers_per_sec,
        );
    }
    Ok(Outcome::Pass)
}

async fn verify(rows: u64, json: bool) -> anyhow::Result<Outcome> {
    let result = harness::bench::verify::run(rows).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        println!(
            "verify {} rows: {:.0} rows/s ({:.2}s); raw read {:.0} rows/s ({:.2}s); ratio {:.2}; peak RSS {}; converged {}",
            result.rows,
            result.rows_per_sec,
            result.verify_seconds,
            result.raw_read_rows_per_sec,
            result.raw_read_seconds,
            result.ratio_to_raw,
            result.peak_rss_mb.map_or("unmeasured".to_string(), |mb| format!("{mb:.0} MiB")),
            result.converged
        );
    }
    Ok(Outcome::gate(result.converged))
}
