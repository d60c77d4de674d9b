//! Command line of the `harness` binary.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use harness::config::StackConfig;
use harness::exit::{self, UsageError};
use harness::orchestrator::docker::TargetKind;
use harness::orchestrator::docker::images::ImageSet;
use harness::orchestrator::stack::{Stack, StackChoice};
use harness::orchestrator::{ServiceError, ServiceState};
use harness::verify::{VerifyOptions, VerifyReport};

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
    Baseline(RunArgs),
    /// Run a scenario by name (from scenarios/) or path: up, warm-up, load, drain,
    /// verify, report, down.
    Run {
        /// Scenario name (`baseline`, `stress`, ...) or path to a scenario file.
        scenario: String,
        #[command(flatten)]
        args: RunArgs,
    },
    /// Start the pipeline (PostgreSQL, broker, Debezium, sink) and leave it running.
    Up {
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
    },
    /// Show each service's state, pid and endpoint.
    Status {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        external: ExternalArgs,
    },
    /// Stop every service of the stack.
    Down {
        /// Also remove every container and network any run of the Docker backend left
        /// (labelled `io.cdc-harness.run`), e.g. after a crashed run whose folder is gone.
        #[arg(long)]
        all: bool,
    },
    /// Install what the local backend needs into the cache (also done by `up` on demand);
    /// with `--images local`, also build the Docker backend's local image set.
    Provision {
        /// Docker images to make ready: `local` builds them here (debootstrap base, then
        /// PostgreSQL, tansu, Debezium and the sink FROM it); `upstream` needs nothing here.
        #[arg(long, value_enum)]
        images: Option<harness::orchestrator::docker::images::ImageSet>,
    },
    /// Compare the source with the target of the running stack, key by key.
    Verify {
        /// `stack`: the target the running stack's sink writes to.
        #[arg(long, value_enum, default_value = "stack")]
        target: VerifyTarget,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Anomaly examples to show per kind.
        #[arg(long, default_value_t = 5)]
        max_examples: usize,
        /// Online mode: re-check differing keys until they agree or this much time passes.
        #[arg(long, value_parser = humantime::parse_duration)]
        settle: Option<std::time::Duration>,
        /// The MongoDB target's connection string (`--target mongo`).
        #[arg(long, required_if_eq("target", "mongo"))]
        mongo_uri: Option<String>,
        /// The MongoDB target's database.
        #[arg(long, default_value = "cdc")]
        mongo_db: String,
        #[command(flatten)]
        external: ExternalArgs,
        /// The table -> target mapping to verify (a team's own tables); default: the
        /// harness's workload tables (`harness/mapping.toml`).
        #[arg(long, value_name = "FILE")]
        mapping: Option<PathBuf>,
        /// Business rules whose dead letters are expected (comma-separated rule names): only
        /// those excuse a key; any other dead letter is a failure of convergence.
        #[arg(long, value_delimiter = ',', value_name = "RULE")]
        expect_rejections: Vec<String>,
        /// The sink's dead-letter topic, read back from its start and reconciled with the
        /// apply log.
        #[arg(long, default_value = harness::config::DLQ_TOPIC)]
        dlq_topic: String,
        /// Only letters, and apply log rows, written after this point are reconciled (an
        /// RFC 3339 time, or a duration ago such as `30m`): earlier ones belong to earlier
        /// runs on the same stack.
        #[arg(long, value_parser = parse_since)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// Do not read the dead-letter topic (a stack whose sink has none).
        #[arg(long)]
        no_dlq: bool,
        /// Live verification while the load runs: compare against a source snapshot fenced
        /// by its WAL position, once the pipeline covered it (README, Live verification).
        #[arg(long)]
        live: bool,
        /// With --live: a check this often...
        #[arg(long, value_parser = humantime::parse_duration, default_value = "3m", requires = "live")]
        every: std::time::Duration,
        /// ...for this long (default: one check).
        #[arg(long = "for", value_parser = humantime::parse_duration, requires = "live")]
        for_: Option<std::time::Duration>,
    },
    /// Benchmarks, each against a raw baseline measured in the same run.
    #[command(subcommand)]
    Bench(Bench),
    /// Compare two reports (or repeated base runs and a new one) metric by metric; exits 4
    /// when a gated metric regressed.
    Diff(harness::report::cli::DiffArgs),
    /// Re-render a report.json as HTML, Markdown or JUnit XML.
    Report(harness::report::cli::ReportArgs),
}

/// A stack the harness did not start.
#[derive(clap::Args, Clone)]
struct ExternalArgs {
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
    async fn open(&self, run_dir: &std::path::Path) -> anyhow::Result<Stack> {
        let choice = StackChoice { backend: self.backend, endpoints: self.endpoints.clone(), require_tls: self.require_tls, ..StackChoice::default() };
        Ok(Stack::open_named(&choice, run_dir).await?)
    }
}

/// Where the services run.
#[derive(clap::Args, Clone)]
struct StackArgs {
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
    endpoints: Option<PathBuf>,
    /// External stack: a hop whose connection is not encrypted fails the pre-flight.
    #[arg(long)]
    require_tls: bool,
}

impl StackArgs {
    fn choice(self) -> StackChoice {
        StackChoice { backend: Some(self.backend), images: self.images, target: self.target, endpoints: self.endpoints, require_tls: self.require_tls }
    }
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    #[command(flatten)]
    stack: StackArgs,
    /// Load tool (default: the scenario's).
    #[arg(long, value_enum)]
    driver: Option<harness::load::DriverKind>,
    /// Total load duration (stages are rescaled), e.g. `60s`, `5m`.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<std::time::Duration>,
    /// Rate of the first stage in operations/s (later stages scale with it).
    #[arg(long)]
    rate: Option<f64>,
    /// Seed of the data and the workload's choices.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Use the stack already running in --run-dir instead of starting one.
    #[arg(long)]
    reuse: bool,
    /// Leave the stack running after the run.
    #[arg(long)]
    keep: bool,
    /// Where `<run-id>/report.json` and friends are written.
    #[arg(long, default_value = "reports")]
    reports_dir: PathBuf,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum VerifyTarget {
    Stack,
    Postgres,
    Mongo,
}

#[derive(Subcommand)]
enum Bench {
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
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => exit::exit_code(code),
        Err(error) => {
            eprintln!("error: {}", exit::describe(&error));
            exit::exit_code(exit::code_for(&error))
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Baseline(args) => run_scenario("baseline", args, &cli.run_dir).await,
        Command::Run { scenario, args } => run_scenario(&scenario, args, &cli.run_dir).await,
        Command::Up { stack, write_endpoints, seed_customers, partitions } => {
            let mut config = StackConfig::new(&cli.run_dir);
            config.seed.customers = seed_customers;
            config.partitions = partitions;
            let started = std::time::Instant::now();
            let mut stack = Stack::create(config, stack.choice()).await?;
            let outcome = tokio::select! {
                outcome = stack.up() => Some(outcome),
                _ = tokio::signal::ctrl_c() => None,
            };
            match outcome {
                Some(outcome) => {
                    let code = finish_up(outcome, &mut stack, started).await?;
                    if code == exit::SUCCESS {
                        if let Some(file) = &write_endpoints {
                            if let Err(e) = write_endpoints_file(&stack, &cli.run_dir, file) {
                                stack.detach();
                                return Err(e);
                            }
                        }
                        stack.detach();
                    }
                    Ok(code)
                }
                None => {
                    eprintln!("up: interrupted, stopping what was started");
                    stack.down().await?;
                    Ok(exit::INTERRUPTED)
                }
            }
        }
        Command::Status { json, external } => {
            let stack = external.open(&cli.run_dir).await?;
            let statuses = stack.status().await;
            stack.detach();
            let statuses = statuses?;
            if json {
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
            Ok(if statuses.iter().all(|s| s.state == ServiceState::Healthy) { exit::SUCCESS } else { exit::ERROR })
        }
        Command::Provision { images } => {
            let tools = tokio::task::spawn_blocking(|| harness::provision::Provisioned::provision(true)).await??;
            println!("postgres  {}", tools.pg_bin.display());
            println!("java      {}", tools.java.display());
            println!("tansu     {}", tools.tansu.display());
            println!("debezium  {}", tools.debezium_libs.display());
            println!("k6        {}", tools.k6.display());
            if let Some(sink) = &tools.sink {
                println!("sink      {}", sink.display());
            }
            if images == Some(ImageSet::Local) {
                use harness::orchestrator::docker::images;
                let docker = harness::orchestrator::docker::connect().await?;
                let inputs = images::LocalInputs::provision().await?;
                let built = images::ensure_local(&docker, &harness::provision::Cache::locate()?, &inputs).await?;
                for (role, tag) in built.all() {
                    println!("image {role:<9} {tag}");
                }
            }
            Ok(exit::SUCCESS)
        }
        Command::Verify { live: true, every, for_, json, external, .. } => {
            let stack = external.open(&cli.run_dir).await?;
            let endpoints = stack.endpoints();
            stack.detach();
            live_verify(&endpoints, every, for_.unwrap_or_default(), json).await
        }
        Command::Verify { target, json, max_examples, settle, mongo_uri, mongo_db, external, mapping, expect_rejections, dlq_topic, since, no_dlq, .. } => {
            let stack = external.open(&cli.run_dir).await?;
            let endpoints = stack.endpoints();
            // A stack that materializes into MongoDB is verified there by default.
            let stack_mongo = stack.mongo_uri();
            let mongo_db = stack.mongo_db().unwrap_or(mongo_db);
            stack.detach();
            let mapping = match &mapping {
                Some(path) => Some(harness::verify::mapping::Mapping::load(path).map_err(ServiceError::Usage)?),
                None => None,
            };
            let dlq =
                (!no_dlq).then(|| harness::verify::dlq::DlqSource { config: endpoints.kafka_config(), topic: dlq_topic, poison: Default::default(), since });
            let options = VerifyOptions { max_examples, settle, mapping, expected_rejections: expect_rejections, dlq, ..Default::default() };
            let (target, mongo_uri) = match (target, mongo_uri, stack_mongo) {
                (VerifyTarget::Stack, given, Some(uri)) => (VerifyTarget::Mongo, given.or(Some(uri))),
                (VerifyTarget::Stack, given, None) => (VerifyTarget::Postgres, given),
                (target, given, stack_uri) => (target, given.or(stack_uri)),
            };
            let report = match (target, mongo_uri) {
                (VerifyTarget::Mongo, Some(uri)) => harness::verify::verify_mongo(&endpoints.postgres, &uri, &mongo_db, &options).await?,
                // clap requires --mongo-uri with --target mongo.
                (VerifyTarget::Mongo, None) => anyhow::bail!("--target mongo needs --mongo-uri"),
                (VerifyTarget::Postgres | VerifyTarget::Stack, _) => harness::verify::verify_postgres(&endpoints.postgres, &options).await?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", render_verify(&report));
            }
            Ok(if report.converged { exit::SUCCESS } else { exit::GATE_FAILED })
        }
        Command::Diff(args) => Ok(harness::report::cli::diff(&args)),
        Command::Report(args) => Ok(harness::report::cli::report(&args)),
        Command::Bench(Bench::Sink { target, events, partitions, dlq_events, json }) => {
            if matches!(target, VerifyTarget::Mongo) {
                anyhow::bail!("the sink benchmark needs a MongoDB server, and none is reachable here; use --target postgres");
            }
            let result = harness::bench::sink::run(events, partitions, dlq_events).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&result)?);
            } else {
                println!(
                    "sink {} events: {:.0} events/s ({:.2}s), {:.2}x a bare consumer's {:.0} msg/s; with the apply log (audit) {:.0} events/s ({:.2}s, ratio {:.2}); apply path from memory {:.0} events/s ({:.2}s, decoding {:.2}s; audited {:.0} events/s, ratio {:.2}), {:.2}x the raw baseline's {:.0} rows/s ({:.2}s); {} bad records dead-lettered at {:.0} letters/s ({:.2}s)",
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
                );
            }
            Ok(exit::SUCCESS)
        }
        Command::Bench(Bench::Verify { rows, json }) => {
            let result = harness::bench::verify::run(rows).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&result)?);
            } else {
                println!(
                    "verify {} rows: {:.0} rows/s ({:.2}s); raw read {:.0} rows/s ({:.2}s); ratio {:.2}; peak RSS {:.0} MiB; converged {}",
                    result.rows,
                    result.rows_per_sec,
                    result.verify_seconds,
                    result.raw_read_rows_per_sec,
                    result.raw_read_seconds,
                    result.ratio_to_raw,
                    result.peak_rss_mb,
                    result.converged
                );
            }
            Ok(if result.converged { exit::SUCCESS } else { exit::GATE_FAILED })
        }
        Command::Down { all } => {
            if all {
                let docker = harness::orchestrator::docker::connect().await?;
                let (containers, networks) = harness::orchestrator::docker::remove_all_labelled(&docker).await?;
                eprintln!("down --all: removed {containers} labelled container(s) and {networks} network(s)");
            }
            let Some(mut stack) = Stack::open(&cli.run_dir).await.context("reading the stack state")? else {
                eprintln!("down: no stack in {}", cli.run_dir.display());
                return Ok(exit::SUCCESS);
            };
            stack.down().await?;
            stack.detach();
            eprintln!("down: every service stopped");
            Ok(exit::SUCCESS)
        }
    }
}

/// Writes the endpoints file of a started stack; its PostgreSQL password goes to a file
/// of its own (mode 0600) that the endpoints file names.
fn write_endpoints_file(stack: &Stack, run_dir: &std::path::Path, file: &std::path::Path) -> anyhow::Result<()> {
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

/// Prints the endpoints of a stack that came up, or stops what was started.
async fn finish_up(outcome: Result<harness::orchestrator::Endpoints, ServiceError>, stack: &mut Stack, started: std::time::Instant) -> anyhow::Result<i32> {
    match outcome {
        Ok(endpoints) => {
            eprintln!("up: stack ready in {:.1}s", started.elapsed().as_secs_f64());
            eprintln!("  postgres  {}", endpoints.postgres.display(&endpoints.postgres.source_db));
            eprintln!("  kafka     {}", endpoints.kafka);
            eprintln!("  debezium  {}", endpoints.debezium_status);
            eprintln!("  sink      {}", endpoints.sink_http);
            Ok(exit::SUCCESS)
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

async fn run_scenario(name: &str, args: RunArgs, run_dir: &std::path::Path) -> anyhow::Result<i32> {
    let scenario = harness::scenario::Scenario::load(name).map_err(UsageError::new)?;
    if args.reuse && args.stack.endpoints.is_some() {
        return Err(UsageError::new("--reuse takes the stack of --run-dir; an external stack (--endpoints) is always used as it stands").into());
    }
    if args.reuse && scenario.needs_link_faults() {
        let reason = format!("scenario {} injects link faults, which need the fault proxies of a stack this run starts; run it without --reuse", scenario.name);
        return Err(UsageError::new(reason).into());
    }
    let options = harness::run::RunOptions {
        scenario,
        driver: args.driver,
        duration: args.duration,
        rate: args.rate,
        seed: args.seed,
        reuse: args.reuse.then(|| run_dir.to_path_buf()),
        keep: args.keep,
        reports_dir: args.reports_dir,
        stack: args.stack.choice(),
    };
    let outcome = tokio::select! {
        outcome = harness::run::run(options) => outcome?,
        _ = tokio::signal::ctrl_c() => {
            // Dropping the run's future drops its stack, which stops every service.
            eprintln!("run: interrupted; stopping the stack");
            return Ok(exit::INTERRUPTED);
        }
    };
    let report = &outcome.report;
    if args.json {
        println!("{}", serde_json::to_string_pretty(report)?);
    }
    print_run_summary(report, &outcome.dir);
    for reason in &report.summary.no_verdict {
        eprintln!("no verdict: {reason}");
    }
    Ok(exit::code_for_verdict(harness::report::verdict(report)))
}

fn print_run_summary(report: &harness::report::model::Report, dir: &std::path::Path) {
    let s = &report.summary;
    eprintln!();
    eprintln!("{:<46} {}", "run", report.run.run_id);
    eprintln!("{:<46} {}", "converged", s.converged);
    // The same rows as the HTML and Markdown summaries.
    for row in harness::report::summary_rows(report) {
        eprintln!("{:<46} {}{}", row.label, row.value, row.unit);
    }
    for t in &report.thresholds {
        eprintln!(
            "  {} {:<40} observed {}",
            if t.passed { "PASS" } else { "FAIL" },
            t.expression,
            t.observed.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into())
        );
    }
    eprintln!("{:<46} {}", "thresholds", if s.thresholds_passed { "passed" } else { "FAILED" });
    eprintln!("{:<46} {}", "verdict", harness::report::verdict(report).label());
    eprintln!("{:<46} {}", "report", dir.join("report.html").display());
}

/// `harness verify --live`: a check every `every` for `span` (one check when zero); exits
/// 0 when every check agreed, as a failed gate otherwise.
async fn live_verify(endpoints: &harness::orchestrator::Endpoints, every: std::time::Duration, span: std::time::Duration, json: bool) -> anyhow::Result<i32> {
    let topics: Vec<String> = harness::config::TABLES.iter().map(|t| endpoints.topic(t)).collect();
    let (config, first) = (endpoints.kafka_config(), topics[0].clone());
    let partitions = tokio::task::spawn_blocking(move || harness::run::lag::LagMeter::partitions_of(&config, &first)).await??;
    anyhow::ensure!(partitions > 0, "topic {} has no partitions on the broker", topics[0]);
    let started = std::time::Instant::now();
    let mut checks = Vec::new();
    loop {
        let at_s = started.elapsed().as_secs_f64();
        let check = harness::verify::live::check(endpoints, topics.clone(), partitions, std::time::Duration::from_secs(120), at_s).await;
        if !json {
            println!(
                "{at_s:>6.0} s  watermark {:<12} {:<8} covered in {} ms, compared {} rows in {} ms; missing {} extra {} mismatched {} anomalies {} newer {} (by clock {}){}",
                check.lsn,
                if check.converged { "agrees" } else { "DIFFERS" },
                check.waited_ms,
                check.rows_compared,
                check.compare_ms,
                check.missing,
                check.extra,
                check.mismatched,
                check.anomalies.values().sum::<u64>(),
                check.newer_than_watermark,
                check.set_aside_by_clock,
                check.error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default()
            );
            for a in &check.examples {
                println!("        {:?} {} {}: {}", a.kind, a.entity, a.key, a.evidence);
            }
        }
        checks.push(check);
        let next = every * checks.len() as u32;
        if next > span {
            break;
        }
        tokio::time::sleep(next.saturating_sub(started.elapsed())).await;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    }
    Ok(if checks.iter().all(|c| c.converged) { exit::SUCCESS } else { exit::GATE_FAILED })
}

/// `--since`: an RFC 3339 instant, or a duration before now (`30m`).
fn parse_since(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&chrono::Utc));
    }
    let ago = humantime::parse_duration(text).map_err(|e| format!("`{text}` is neither an RFC 3339 time nor a duration ago ({e})"))?;
    Ok(chrono::Utc::now() - chrono::Duration::from_std(ago).map_err(|e| e.to_string())?)
}

fn render_verify(report: &VerifyReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ =
        writeln!(out, "{:<12} {:>9} {:>9} {:>9} {:>8} {:>6} {:>10} {:>5}", "ENTITY", "SOURCE", "TARGET", "MATCHING", "MISSING", "EXTRA", "MISMATCHED", "DUPS");
    for e in &report.entities {
        let _ = writeln!(
            out,
            "{:<12} {:>9} {:>9} {:>9} {:>8} {:>6} {:>10} {:>5}",
            e.entity, e.source_count, e.target_count, e.matching, e.missing_in_target, e.extra_in_target, e.mismatched, e.duplicates
        );
    }
    for (kind, count) in &report.anomaly_counts {
        let _ = writeln!(out, "anomaly {kind:?}: {count}");
    }
    for a in &report.anomalies {
        let _ = writeln!(out, "  {:?} {} {}: {}", a.kind, a.entity, a.key, a.evidence);
        for f in &a.fields {
            let _ = writeln!(out, "    {}: source {:?} target {:?}", f.field, f.source, f.target);
        }
    }
    for c in &report.columns {
        let _ = writeln!(out, "column {}.{} {:?}: {}", c.entity, c.column, c.change, c.detail);
    }
    for (rule, n) in &report.dlq_rejected {
        let _ = writeln!(out, "excused by rule {rule}: {n} keys");
    }
    match &report.dlq {
        Some(d) => {
            let classes: Vec<String> = d.by_class.iter().map(|(class, n)| format!("{class} {n}")).collect();
            let _ = writeln!(
                out,
                "dead letters in {}: {} ({}); unexpected {}, unreconciled {}",
                d.topic,
                d.letters,
                if classes.is_empty() { "none".into() } else { classes.join(", ") },
                d.unexpected,
                d.unreconciled
            );
            for e in &d.unexpected_examples {
                let _ = writeln!(
                    out,
                    "  unexpected {} {} partition {} offset {} key {}: {}",
                    e.class,
                    e.entity,
                    e.partition,
                    e.offset,
                    e.key.as_deref().unwrap_or("-"),
                    e.reason
                );
            }
            for e in &d.unreconciled_examples {
                let _ = writeln!(out, "  unreconciled: {e}");
            }
        }
        None => {
            let _ = writeln!(out, "dead letters: not read");
        }
    }
    let l = &report.latency.overall;
    let _ =
        writeln!(out, "latest change per key, commit -> applied (ms, {} keys): p50 {:.1} p95 {:.1} p99 {:.1} max {:.1}", l.count, l.p50, l.p95, l.p99, l.max);
    let _ = writeln!(out, "{} rows compared in {} ms: {}", report.rows_compared, report.elapsed_ms, if report.converged { "CONVERGED" } else { "DIVERGED" });
    out
}
