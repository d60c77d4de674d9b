//! Command line of the `harness` binary.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use harness::config::StackConfig;
use harness::exit;
use harness::orchestrator::local::LocalStack;
use harness::orchestrator::{BackendKind, Orchestrator, ServiceError, ServiceState, resolve_backend};

#[derive(Parser)]
#[command(name = "harness", version, about = "Verify PostgreSQL -> Debezium -> Kafka -> sink pipelines")]
struct Cli {
    /// Folder of the stack: every service's data, logs and state.
    #[arg(long, global = true, default_value = ".harness/stack", env = "HARNESS_RUN_DIR")]
    run_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the pipeline (PostgreSQL, broker, Debezium, sink) and leave it running.
    Up {
        #[arg(long, value_enum, default_value = "auto")]
        backend: BackendKind,
        /// Customers in the seed data (addresses, orders and items follow from it).
        #[arg(long, default_value_t = 3000)]
        seed_customers: u32,
        /// Partitions per CDC topic.
        #[arg(long, default_value_t = 3)]
        partitions: u32,
    },
    /// Show each service's state, pid and endpoint.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Stop every service of the stack.
    Down,
    /// Install what the local backend needs into the cache (also done by `up` on demand).
    Provision,
}

pub fn run() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { exit::USAGE as u8 } else { exit::SUCCESS as u8 });
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("HARNESS_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => ExitCode::from(code as u8),
        Err(error) => {
            eprintln!("error: {error:#}");
            let code = match (error.downcast_ref::<ServiceError>(), error.downcast_ref::<harness::provision::ProvisionError>()) {
                (Some(ServiceError::Provision(_) | ServiceError::BackendUnavailable(..)), _) | (_, Some(_)) => exit::USAGE,
                _ => exit::ERROR,
            };
            ExitCode::from(code as u8)
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Up { backend, seed_customers, partitions } => {
            resolve_backend(backend)?;
            let mut config = StackConfig::new(&cli.run_dir);
            config.seed.customers = seed_customers;
            config.partitions = partitions;
            let mut stack = LocalStack::new(config)?;
            let started = std::time::Instant::now();
            let outcome = tokio::select! {
                outcome = stack.up() => Some(outcome),
                _ = tokio::signal::ctrl_c() => None,
            };
            match outcome {
                Some(Ok(endpoints)) => {
                    eprintln!("up: stack ready in {:.1}s (run dir {})", started.elapsed().as_secs_f64(), stack.run_dir().display());
                    eprintln!("  postgres  {}", endpoints.postgres.display(&endpoints.postgres.source_db));
                    eprintln!("  kafka     {}", endpoints.kafka);
                    eprintln!("  debezium  {}", endpoints.debezium_status);
                    eprintln!("  sink      {}", endpoints.sink_http);
                    stack.detach();
                    Ok(exit::SUCCESS)
                }
                Some(Err(e)) => {
                    eprintln!("up: failed, stopping what was started");
                    stack.down().await?;
                    Err(e.into())
                }
                None => {
                    eprintln!("up: interrupted, stopping what was started");
                    stack.down().await?;
                    Ok(exit::INTERRUPTED)
                }
            }
        }
        Command::Status { json } => {
            let Some(stack) = LocalStack::open(&cli.run_dir)? else {
                anyhow::bail!("no stack in {} (start one with `harness up`)", cli.run_dir.display());
            };
            let statuses = stack.status().await?;
            stack.detach();
            if json {
                println!("{}", serde_json::to_string_pretty(&statuses)?);
            } else {
                println!("{:<10} {:<10} {:>8}  {}", "SERVICE", "STATE", "PID", "ENDPOINT");
                for s in &statuses {
                    let state = serde_json::to_value(s.state)?.as_str().unwrap_or_default().to_string();
                    let pid = s.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
                    println!("{:<10} {:<10} {:>8}  {}{}", s.service, state, pid, s.endpoint, s.detail.as_ref().map(|d| format!("  ({d})")).unwrap_or_default());
                }
            }
            Ok(if statuses.iter().all(|s| s.state == ServiceState::Healthy) { exit::SUCCESS } else { exit::ERROR })
        }
        Command::Provision => {
            let tools = tokio::task::spawn_blocking(|| harness::provision::Provisioned::provision(true)).await??;
            println!("postgres  {}", tools.pg_bin.display());
            println!("java      {}", tools.java.display());
            println!("tansu     {}", tools.tansu.display());
            println!("debezium  {}", tools.debezium_libs.display());
            if let Some(sink) = &tools.sink {
                println!("sink      {}", sink.display());
            }
            Ok(exit::SUCCESS)
        }
        Command::Down => {
            let Some(mut stack) = LocalStack::open(&cli.run_dir).context("reading the stack state")? else {
                eprintln!("down: no stack in {}", cli.run_dir.display());
                return Ok(exit::SUCCESS);
            };
            stack.down().await?;
            eprintln!("down: every service stopped");
            Ok(exit::SUCCESS)
        }
    }
}
