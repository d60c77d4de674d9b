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

/// Why the sink stopped, which decides its exit code (README, Exit codes; the same
/// convention as the harness: 2 for what the caller got wrong, 1 for the environment).
enum Failure {
    /// The configuration, or an input file of `bench-apply`, is invalid: exit 2.
    Config(String),
    /// Anything that failed while running: exit 1.
    Runtime(String),
}

impl Failure {
    /// The one place a failure becomes an exit code.
    fn code(&self) -> ExitCode {
        ExitCode::from(match self {
            Self::Config(_) => 2,
            Self::Runtime(_) => 1,
        })
    }

    fn message(&self) -> &str {
        match self {
            Self::Config(m) | Self::Runtime(m) => m,
        }
    }
}

fn main() -> ExitCode {
    match start(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("sink: {}", failure.message());
            failure.code()
        }
    }
}

fn start(args: Args) -> Result<(), Failure> {
    // Logging is configured by the file, so a configuration error is reported on stderr.
    let config = SinkConfig::load(&args.config, std::env::vars()).map_err(|e| Failure::Config(e.to_string()))?;
    // Dropped last: flushes the spans of the shutdown.
    let _telemetry = sink::telemetry::init(&config.telemetry).map_err(|e| Failure::Config(e.to_string()))?;
    if let Some(Command::BenchApply { events, partitions }) = args.command {
        return bench_apply(config, &events, partitions);
    }
    run(config).map_err(|error| {
        tracing::error!(message = "sink failed", error = format!("{error:#}"));
        Failure::Runtime(format!("{error:#}"))
    })
}

fn bench_apply(config: SinkConfig, events: &std::path::Path, partitions: u32) -> Result<(), Failure> {
    use sink::bench::BenchError;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| Failure::Runtime(format!("starting the runtime: {e}")))?;
    let run = runtime.block_on(sink::bench::apply_from_memory(config, events, partitions)).map_err(|error| match error {
        BenchError::Read { .. } | BenchError::Line { .. } | BenchError::NoEntity => Failure::Config(error.to_string()),
        BenchError::Run(_) | BenchError::Task(_) => Failure::Runtime(error.to_string()),
    })?;
    println!("{}", serde_json::to_string(&run).expect("serializable"));
    Ok(())
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
