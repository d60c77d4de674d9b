//! `sink --config <path.toml>`. Exit codes: 0 clean shutdown, 2 configuration error (or an
//! unreadable `bench-apply` events file), 1 runtime failure.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use sink::config::SinkConfig;

#[derive(Parser)]
#[command(version, about = "Materializes Debezium change events from Kafka into PostgreSQL or MongoDB")]
struct Args {
    /// TOML configuration; any key can be overridden by SINK__<SECTION>__<KEY>.
    #[arg(long)]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Apply the events of a file through the sink's pipeline, no consumer, and print
    /// `{"events": n, "seconds": s}` (what `harness bench sink` reports as apply_events_per_sec).
    BenchApply {
        /// One `{"key": .., "value": ..}` JSON object per line, applied on partition 0 of the
        /// first `[kafka] topics` entry.
        #[arg(long)]
        events: PathBuf,
        /// Partitions the records are spread over by key, each applied by its own task.
        #[arg(long, default_value_t = 1)]
        partitions: u32,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Logging is configured by the file, so a configuration error is reported on stderr.
    let config = match SinkConfig::load(&args.config, std::env::vars()) {
        Ok(c) => c,
        Err(error) => {
            eprintln!("sink: {error}");
            return ExitCode::from(2);
        }
    };
    // Dropped last: flushes the spans of the shutdown.
    let _telemetry = match sink::telemetry::init(&config.telemetry) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("sink: {error}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::BenchApply { events, partitions }) = args.command {
        return bench_apply(config, &events, partitions);
    }
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(message = "sink failed", error = format!("{error:#}"));
            eprintln!("sink: {error:#}");
            ExitCode::from(1)
        }
    }
}

fn bench_apply(config: SinkConfig, events: &std::path::Path, partitions: u32) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(error) => {
            eprintln!("sink: starting the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(sink::bench::apply_from_memory(config, events, partitions)) {
        Ok(run) => {
            println!("{}", serde_json::to_string(&run).expect("serializable"));
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("sink: {error}");
            ExitCode::from(match error {
                sink::bench::BenchError::Read { .. } | sink::bench::BenchError::Line { .. } | sink::bench::BenchError::NoEntity => 2,
                sink::bench::BenchError::Run(_) | sink::bench::BenchError::Task(_) => 1,
            })
        }
    }
}

fn run(config: SinkConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(async {
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("installing a SIGTERM handler");
            tokio::select! {
                _ = term.recv() => tracing::info!(message = "SIGTERM received"),
                _ = tokio::signal::ctrl_c() => tracing::info!(message = "SIGINT received"),
            }
        };
        sink::app::run(config, shutdown).await.context("sink stopped")
    })
}
