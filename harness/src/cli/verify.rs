//! `harness verify`: the target against the source, key by key; `--live` while the load runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::exit::{Outcome, UsageError};
use harness::orchestrator::Endpoints;
use harness::verify::{VerifyOptions, VerifyReport};

use super::args::{ExternalArgs, VerifyTarget, parse_since};

#[derive(clap::Args)]
pub(crate) struct VerifyArgs {
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
    settle: Option<Duration>,
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
    every: Duration,
    /// ...for this long (default: one check).
    #[arg(long = "for", value_parser = humantime::parse_duration, requires = "live")]
    for_: Option<Duration>,
}

pub(crate) async fn exec(args: VerifyArgs, run_dir: &Path) -> anyhow::Result<Outcome> {
    let stack = args.external.open(run_dir).await?;
    let endpoints = stack.endpoints();
    // A stack that materializes into MongoDB is verified there by default.
    let stack_mongo = stack.mongo_uri();
    let mongo_db = stack.mongo_db().unwrap_or_else(|| args.mongo_db.clone());
    stack.detach();
    if args.live {
        return live(&endpoints, args.every, args.for_.unwrap_or_default(), args.json).await;
    }
    let mapping = match &args.mapping {
        Some(path) => Some(harness::verify::mapping::Mapping::load(path).map_err(UsageError::new)?),
        None => None,
    };
    let dlq = (!args.no_dlq).then(|| harness::verify::dlq::DlqSource {
        config: endpoints.kafka_config(),
        topic: args.dlq_topic.clone(),
        poison: Default::default(),
        since: args.since,
    });
    let options = VerifyOptions {
        max_examples: args.max_examples,
        settle: args.settle,
        mapping,
        expected_rejections: args.expect_rejections.clone(),
        dlq,
        ..Default::default()
    };
    let (target, mongo_uri) = match (args.target, args.mongo_uri.clone(), stack_mongo) {
        (VerifyTarget::Stack, given, Some(uri)) => (VerifyTarget::Mongo, given.or(Some(uri))),
        (VerifyTarget::Stack, given, None) => (VerifyTarget::Postgres, given),
        (target, given, stack_uri) => (target, given.or(stack_uri)),
    };
    let report = match (target, mongo_uri) {
        (VerifyTarget::Mongo, Some(uri)) => harness::verify::verify_mongo(&endpoints.postgres, &uri, &mongo_db, &options).await?,
        // clap requires --mongo-uri with --target mongo.
        (VerifyTarget::Mongo, None) => return Err(UsageError::new("--target mongo needs --mongo-uri").into()),
        (VerifyTarget::Postgres | VerifyTarget::Stack, _) => harness::verify::verify_postgres(&endpoints.postgres, &options).await?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(Outcome::gate(report.converged))
}

/// `harness verify --live`: a check every `every` for `span` (one check when zero); a
/// failed gate unless every check agreed.
async fn live(endpoints: &Endpoints, every: Duration, span: Duration, json: bool) -> anyhow::Result<Outcome> {
    let topics: Vec<String> = harness::config::TABLES.iter().map(|t| endpoints.topic(t)).collect();
    let (config, first) = (endpoints.kafka_config(), topics[0].clone());
    let partitions = tokio::task::spawn_blocking(move || harness::run::lag::LagMeter::partitions_of(&config, &first)).await??;
    anyhow::ensure!(partitions > 0, "topic {} has no partitions on the broker", topics[0]);
    let started = std::time::Instant::now();
    let mut checks = Vec::new();
    loop {
        let at_s = started.elapsed().as_secs_f64();
        let check = harness::verify::live::check(endpoints, topics.clone(), partitions, Duration::from_secs(120), at_s).await;
        if !json {
            print_live_check(at_s, &check);
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
    Ok(Outcome::gate(checks.iter().all(|c| c.converged)))
}

fn print_live_check(at_s: f64, check: &harness::verify::live::LiveCheck) {
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

fn render(report: &VerifyReport) -> String {
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
    render_dlq(&mut out, report.dlq.as_ref());
    let l = &report.latency.overall;
    let _ =
        writeln!(out, "latest change per key, commit -> applied (ms, {} keys): p50 {:.1} p95 {:.1} p99 {:.1} max {:.1}", l.count, l.p50, l.p95, l.p99, l.max);
    let _ = writeln!(out, "{} rows compared in {} ms: {}", report.rows_compared, report.elapsed_ms, if report.converged { "CONVERGED" } else { "DIVERGED" });
    out
}

fn render_dlq(out: &mut String, dlq: Option<&harness::verify::dlq::DlqReport>) {
    use std::fmt::Write as _;
    let Some(d) = dlq else {
        let _ = writeln!(out, "dead letters: not read");
        return;
    };
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
