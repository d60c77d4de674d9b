//! Arguments several commands share: where the stack runs, an external stack, a run's
//! options, the verification target.

use std::path::{Path, PathBuf};

use harness::orchestrator::docker::TargetKind;
use harness::orchestrator::docker::images::ImageSet;
use harness::orchestrator::stack::{Stack, StackChoice};

/// A stack the harness did not start.
#[derive(clap::Args, Clone)]
pub(crate) struct ExternalArgs {
    /// `external`: the stack the endpoints file names (the only backend these commands
    /// take besides the run folder's own stack).
    #[arg(long, value_enum)]
    backend: Option<harness::orchestrator::BackendKind>,
    /// Endpoints file of an external stack (see README, External stacks).
    #[arg(long, value_name = "FILE")]
    endpoints: Option<PathBuf>,
    /// External stack: a hop whose connection is not encrypted fails the pre-flight.
    #[arg(long)]
    require_tls: bool,
}

impl ExternalArgs {
    /// The external stack named, or the one a previous `up` left in `run_dir`.
    pub(crate) async fn open(&self, run_dir: &Path) -> anyhow::Result<Stack> {
        let choice = StackChoice { backend: self.backend, endpoints: self.endpoints.clone(), require_tls: self.require_tls, ..StackChoice::default() };
        Ok(Stack::open_named(&choice, run_dir).await?)
    }
}

/// Where the services run.
#[derive(clap::Args, Clone)]
pub(crate) struct StackArgs {
    /// `auto`: Docker when a daemon answers and the images are there, else local processes.
    #[arg(long, value_enum, default_value = "auto")]
    backend: harness::orchestrator::BackendKind,
    /// The Docker backend's images: `upstream` (pulled, the default) or `local` (built
    /// here by `harness provision --images local`; no registry needed).
    #[arg(long, value_enum)]
    images: Option<ImageSet>,
    /// The sink's target on Docker (default: MongoDB with upstream images, PostgreSQL
    /// with local ones; the local backend always writes to PostgreSQL).
    #[arg(long, value_enum)]
    target: Option<TargetKind>,
    /// Endpoints file of a stack the harness did not start (`--backend external`).
    #[arg(long, value_name = "FILE")]
    pub(crate) endpoints: Option<PathBuf>,
    /// External stack: a hop whose connection is not encrypted fails the pre-flight.
    #[arg(long)]
    require_tls: bool,
}

impl StackArgs {
    pub(crate) fn choice(self) -> StackChoice {
        StackChoice { backend: Some(self.backend), images: self.images, target: self.target, endpoints: self.endpoints, require_tls: self.require_tls }
    }
}

#[derive(clap::Args, Clone)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    pub(crate) stack: StackArgs,
    /// Load tool (default: the scenario's).
    #[arg(long, value_enum)]
    pub(crate) driver: Option<harness::load::DriverKind>,
    /// Total load duration (stages are rescaled), e.g. `60s`, `5m`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) duration: Option<std::time::Duration>,
    /// Rate of the first stage in operations/s (later stages scale with it).
    #[arg(long)]
    pub(crate) rate: Option<f64>,
    /// Seed of the data and the workload's choices.
    #[arg(long, default_value_t = 42)]
    pub(crate) seed: u64,
    /// Use the stack already running in --run-dir instead of starting one.
    #[arg(long)]
    pub(crate) reuse: bool,
    /// Leave the stack running after the run.
    #[arg(long)]
    pub(crate) keep: bool,
    /// Where `<run-id>/report.json` and friends are written.
    #[arg(long, default_value = "reports")]
    pub(crate) reports_dir: PathBuf,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum VerifyTarget {
    Stack,
    Postgres,
    Mongo,
}

/// `--since`: an RFC 3339 instant, or a duration before now (`30m`).
pub(crate) fn parse_since(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&chrono::Utc));
    }
    let ago = humantime::parse_duration(text).map_err(|e| format!("`{text}` is neither an RFC 3339 time nor a duration ago ({e})"))?;
    Ok(chrono::Utc::now() - chrono::Duration::from_std(ago).map_err(|e| e.to_string())?)
}
