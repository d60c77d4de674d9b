//! `harness up`, `status` and `down`: the stack's life outside a run.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use harness::config::StackConfig;
use harness::exit::Outcome;
use harness::orchestrator::stack::Stack;
use harness::orchestrator::{Endpoints, ServiceError, ServiceState};

use super::args::{ExternalArgs, StackArgs};

#[derive(clap::Args)]
pub(crate) struct UpArgs {
    #[command(flatten)]
    stack: StackArgs,
    /// Also write an endpoints file for the started stack (`--backend external
    /// --endpoints FILE` then verifies it as a stack the run did not start); the
    /// PostgreSQL password goes to a 0600 file in the run folder, which it names.
    #[arg(long, value_name = "FILE")]
    write_endpoints: Option<PathBuf>,
    /// Customers in the seed data (addresses, orders and items follow from it).
    #[arg(long, default_value_t = 3000)]
    seed_customers: u32,
    /// Partitions per CDC topic.
    #[arg(long, default_value_t = 3)]
    partitions: u32,
}

pub(crate) async fn up(args: UpArgs, run_dir: &Path) -> anyhow::Result<Outcome> {
    let mut config = StackConfig::new(run_dir);
    config.seed.customers = args.seed_customers;
    config.partitions = args.partitions;
    let started = Instant::now();
    let mut stack = Stack::create(config, args.stack.choice()).await?;
    let outcome = tokio::select! {
        outcome = stack.up() => outcome,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("up: interrupted, stopping what was started");
            stack.down().await?;
            return Ok(Outcome::Interrupted);
        }
    };
    finish_up(outcome, &mut stack, started).await?;
    if let Some(file) = &args.write_endpoints {
        if let Err(e) = write_endpoints_file(&stack, run_dir, file) {
            stack.detach();
            return Err(e);
        }
    }
    stack.detach();
    Ok(Outcome::Pass)
}

/// Prints the endpoints of a stack that came up, or stops what was started.
async fn finish_up(outcome: Result<Endpoints, ServiceError>, stack: &mut Stack, started: Instant) -> anyhow::Result<()> {
    match outcome {
        Ok(endpoints) => {
            eprintln!("up: stack ready in {:.1}s", started.elapsed().as_secs_f64());
            eprintln!("  postgres  {}", endpoints.postgres.display(&endpoints.postgres.source_db));
            eprintln!("  kafka     {}", endpoints.kafka);
            eprintln!("  debezium  {}", endpoints.debezium_status);
            eprintln!("  sink      {}", endpoints.sink_http);
            Ok(())
        }
        Err(e) if !stack.owns_services() => {
            eprintln!("up: the external stack failed its pre-flight (nothing was started)");
            Err(e.into())
        }
        Err(e) => {
            eprintln!("up: failed, stopping what was started");
            stack.down().await?;
            Err(e.into())
        }
    }
}

/// Writes the endpoints file of a started stack; its PostgreSQL password goes to a file
/// of its own (mode 0600) that the endpoints file names.
fn write_endpoints_file(stack: &Stack, run_dir: &Path, file: &Path) -> anyhow::Result<()> {
    let endpoints = stack.endpoints();
    let run_dir = std::path::absolute(run_dir)?;
    let password_file = run_dir.join("postgres.password");
    harness::orchestrator::state::write_private(&password_file, format!("{}\n", endpoints.postgres.password.expose()).as_bytes())
        .with_context(|| format!("{}", password_file.display()))?;
    let publication = harness::config::PUBLICATION_NAME;
    let text = harness::orchestrator::external::file::EndpointsFile::for_started(&endpoints, publication, &password_file).to_toml();
    std::fs::write(file, text).with_context(|| format!("writing {}", file.display()))?;
    eprintln!("up: endpoints written to {} (password in {})", file.display(), password_file.display());
    Ok(())
}

#[derive(clap::Args)]
pub(crate) struct StatusArgs {
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    external: ExternalArgs,
}

pub(crate) async fn status(args: StatusArgs, run_dir: &Path) -> anyhow::Result<Outcome> {
    let stack = args.external.open(run_dir).await?;
    let statuses = stack.status().await;
    stack.detach();
    let statuses = statuses?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&statuses)?);
    } else {
        println!("{:<10} {:<10} {:>8}  ENDPOINT", "SERVICE", "STATE", "PID");
        for s in &statuses {
            let state = serde_json::to_value(s.state)?.as_str().unwrap_or_default().to_string();
            let pid = s.pid.map(|p| p.to_string()).or_else(|| s.container.clone()).unwrap_or_else(|| "-".into());
            println!("{:<10} {:<10} {:>8}  {}{}", s.service, state, pid, s.endpoint, s.detail.as_ref().map(|d| format!("  ({d})")).unwrap_or_default());
            if let Some(security) = &s.security {
                println!("{:<10} {:<10} {:>8}  {}: {}", "", "", "", security.summary(), security.detail);
            }
        }
    }
    Ok(if statuses.iter().all(|s| s.state == ServiceState::Healthy) { Outcome::Pass } else { Outcome::Unhealthy })
}

#[derive(clap::Args)]
pub(crate) struct DownArgs {
    /// Also remove every container and network any run of the Docker backend left
    /// (labelled `io.cdc-harness.run`), e.g. after a crashed run whose folder is gone.
    #[arg(long)]
    all: bool,
}

pub(crate) async fn down(args: DownArgs, run_dir: &Path) -> anyhow::Result<Outcome> {
    if args.all {
        let docker = harness::orchestrator::docker::connect().await?;
        let (containers, networks) = harness::orchestrator::docker::remove_all_labelled(&docker).await?;
        eprintln!("down --all: removed {containers} labelled container(s) and {networks} network(s)");
    }
    let Some(mut stack) = Stack::open(run_dir).await.context("reading the stack state")? else {
        eprintln!("down: no stack in {}", run_dir.display());
        return Ok(Outcome::Pass);
    };
    stack.down().await?;
    stack.detach();
    eprintln!("down: every service stopped");
    Ok(Outcome::Pass)
}
