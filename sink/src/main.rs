//! `sink --config <path.toml>`. Exit codes: 0 clean shutdown, 2 configuration error,
//! 1 runtime failure.

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
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(message = "sink failed", error = format!("{error:#}"));
            eprintln!("sink: {error:#}");
            ExitCode::from(1)
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
