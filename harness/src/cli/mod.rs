//! Command line of the `harness` binary: parsing, and one `exec` per command in the modules
//! beside this one. Every command returns its `Outcome` or an error; `exit` turns either
//! into the exit code, in one place.

mod args;
mod bench;
mod campaign;
mod provision;
mod run;
mod stack;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use harness::exit::{self, Outcome};

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
    /// Run the baseline scenario (= `run baseline`): up, load, verify, report, down.
    Baseline(args::RunArgs),
    /// Run a scenario by name (from scenarios/) or path: up, warm-up, load, drain,
    /// verify, report, down.
    Run {
        /// Scenario name (`baseline`, `stress`, ...) or path to a scenario file.
        scenario: String,
        #[command(flatten)]
        args: args::RunArgs,
    },
    /// Start the pipeline (PostgreSQL, broker, Debezium, sink) and leave it running.
    Up(stack::UpArgs),
    /// Show each service's state, pid and endpoint.
    Status(stack::StatusArgs),
    /// Stop every service of the stack.
    Down(stack::DownArgs),
    /// Install what the local backend needs into the cache (also done by `up` on demand);
    /// with `--images local`, also build the Docker backend's local image set.
    Provision(provision::ProvisionArgs),
    /// Compare the source with the target of the running stack, key by key.
    Verify(Box<verify::VerifyArgs>),
    /// Benchmarks, each against a raw baseline measured in the same run.
    #[command(subcommand)]
    Bench(bench::Bench),
    /// Many seeded runs of a chaos scenario, one after another (each on a fresh stack), and
    /// one report over them: campaign.json, campaign.html, summary.md. `campaign merge`
    /// joins shards. Exits as a run does: 0 pass, 3 a seed or a recovery gate failed,
    /// 5 no verdict, 130 interrupted.
    Campaign(Box<campaign::CampaignArgs>),
    /// Compare two reports (or repeated base runs and a new one) metric by metric; exits 4
    /// when a gated metric regressed.
    Diff(harness::report::cli::DiffArgs),
    /// Re-render a report.json as HTML, Markdown or JUnit XML.
    Report(harness::report::cli::ReportArgs),
}

pub fn run() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return exit::exit_code(exit::code_for_parse(&e));
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HARNESS_LOG").unwrap_or_else(|_| "warn,librdkafka=off,rdkafka=off,deadpool=error,goose=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(dispatch(cli));
    if let Err(error) = &result {
        eprintln!("error: {}", exit::describe(error));
    }
    exit::exit_code(exit::code_for_result(&result))
}

async fn dispatch(cli: Cli) -> anyhow::Result<Outcome> {
    let run_dir = &cli.run_dir;
    match cli.command {
        Command::Baseline(args) => run::exec("baseline", args, run_dir).await,
        Command::Run { scenario, args } => run::exec(&scenario, args, run_dir).await,
        Command::Up(args) => stack::up(args, run_dir).await,
        Command::Status(args) => stack::status(args, run_dir).await,
        Command::Down(args) => stack::down(args, run_dir).await,
        Command::Provision(args) => provision::exec(args).await,
        Command::Verify(args) => verify::exec(*args, run_dir).await,
        Command::Bench(bench) => bench::exec(bench).await,
        Command::Campaign(args) => campaign::exec(*args).await,
        Command::Diff(args) => harness::report::cli::diff(&args),
        Command::Report(args) => harness::report::cli::report(&args),
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    /// clap checks its own definitions (conflicting names, `requires` of an unknown
    /// argument, ...) only when asked; this asks once for every command.
    #[test]
    fn every_command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }

    #[test]
    fn verify_options_of_live_mode_need_live() {
        let parse = |args: &[&str]| super::Cli::try_parse_from(args).map(|_| ()).map_err(|e| e.kind());
        assert!(parse(&["harness", "verify", "--live", "--every", "1m"]).is_ok());
        assert_eq!(parse(&["harness", "verify", "--every", "1m"]), Err(clap::error::ErrorKind::MissingRequiredArgument));
        assert_eq!(parse(&["harness", "verify", "--target", "mongo"]), Err(clap::error::ErrorKind::MissingRequiredArgument));
    }
}
