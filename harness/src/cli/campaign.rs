//! `harness campaign`: many seeded chaos runs and one report over them; `harness campaign
//! merge`: the shards of a campaign made one.

use std::path::PathBuf;

use harness::campaign::model::{Campaign, RecoveryTargets, Shard, parse_seeds};
use harness::campaign::{self, CampaignOptions};
use harness::exit::{Outcome, UsageError};

use super::args::StackArgs;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(crate) struct CampaignArgs {
    #[command(subcommand)]
    command: Option<CampaignCommand>,
    #[command(flatten)]
    run: RunCampaignArgs,
}

#[derive(clap::Subcommand)]
enum CampaignCommand {
    /// Merge the shards of one campaign (their campaign.json) into one campaign: rows,
    /// per-kind aggregates, gates and verdict as the unsharded campaign would have them.
    /// Refuses shards of different scenarios, durations or recovery targets, and shards
    /// whose seeds overlap. Exits as the merged campaign's verdict.
    Merge(MergeArgs),
    /// Shrink a failing seed: re-run it (each run on a fresh stack) with smaller schedules
    /// (faults dropped in halves and one by one, ddmin-style, then shorter faults, a
    /// shorter load, a lower rate) down to one where removing any one fault makes the
    /// failure disappear; write it as `scenarios/repro-<seed>.toml` (`harness run` runs
    /// it), `shrink.json` with every try, and link it from the campaign the run is part
    /// of. A schedule counts as failing only when all k of its runs fail the same way.
    /// Exits 0 when a reproducer was written, 5 when the original schedule does not fail
    /// k of k (flaky, or not at all), 2 when the run passed, 130 on Ctrl-C.
    Shrink(ShrinkArgs),
}

#[derive(clap::Args)]
struct RunCampaignArgs {
    /// Seeds to run: a range `A..B` (B included: `1..20` is 20 seeds), a list `1,5,9`,
    /// or both (`1..5,9`). One run per seed, one after another.
    #[arg(long, required = true, value_name = "SEEDS")]
    seeds: Option<String>,
    /// Scenario name (from scenarios/) or path.
    #[arg(long, default_value = "chaos-random")]
    scenario: String,
    /// Load duration of every run (the random fault schedule is drawn over it), e.g. `120s`.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<std::time::Duration>,
    /// Run only shard I of N (1 <= I <= N): the seeds whose position in the list, counted
    /// from 0, modulo N is I-1 (`--seeds 1..8 --shard 2/4` runs 2 and 6).
    #[arg(long, value_name = "I/N")]
    shard: Option<String>,
    /// Pipeline recovery target of a fault kind, `KIND=SECS` (e.g. `kill=20`), or of every
    /// kind without its own, `default=SECS`; repeatable. Default: 10 s for every kind.
    #[arg(long = "recovery-target", value_name = "KIND=SECS")]
    recovery_targets: Vec<String>,
    /// The campaign's folder (default: reports/campaign-<id>); each run's report goes under
    /// its runs/seed-<N>/.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    #[command(flatten)]
    stack: StackArgs,
}

#[derive(clap::Args)]
struct ShrinkArgs {
    /// The failing run's report.json (e.g. `<campaign>/runs/seed-7/<run-id>/report.json`).
    #[arg(value_name = "REPORT")]
    report: PathBuf,
    /// Runs of a schedule that must all fail for it to count as failing.
    #[arg(long, default_value_t = harness::campaign::shrink::DEFAULT_K)]
    k: u32,
    /// At most this many runs in all (the k that confirm the original included); at the
    /// cap the smallest failing schedule so far is written, said not proven minimal.
    #[arg(long, default_value_t = harness::campaign::shrink::DEFAULT_MAX_RUNS)]
    max_runs: u32,
    /// Recovery target of a fault kind, as `harness campaign` takes it (default: the
    /// campaign's when the report is one of its runs, else 10 s for every kind).
    #[arg(long = "recovery-target", value_name = "KIND=SECS")]
    recovery_targets: Vec<String>,
    /// Where the reproducer goes (default: scenarios/repro-<seed>.toml).
    #[arg(long, value_name = "PATH")]
    out_scenario: Option<PathBuf>,
    /// Where `shrink-<seed>/` (shrink.json and every try's runs) goes (default: the
    /// campaign's folder, else the folder of the run's folder).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    #[command(flatten)]
    stack: StackArgs,
}

#[derive(clap::Args)]
struct MergeArgs {
    /// The shards' folders (each with its campaign.json).
    #[arg(required = true, value_name = "DIR")]
    dirs: Vec<PathBuf>,
    /// Where the merged campaign.json, campaign.html and summary.md go.
    #[arg(long, value_name = "DIR", default_value = "reports/campaign-merged")]
    out: PathBuf,
}

pub(crate) async fn exec(args: CampaignArgs) -> anyhow::Result<Outcome> {
    match args.command {
        Some(CampaignCommand::Merge(merge)) => exec_merge(merge),
        Some(CampaignCommand::Shrink(shrink)) => exec_shrink(shrink).await,
        None => exec_run(args.run).await,
    }
}

async fn exec_run(args: RunCampaignArgs) -> anyhow::Result<Outcome> {
    let seeds = args.seeds.as_deref().ok_or_else(|| UsageError::new("--seeds is required"))?;
    let all_seeds = parse_seeds(seeds).map_err(UsageError::new)?;
    let shard = args.shard.as_deref().map(Shard::parse).transpose().map_err(UsageError::new)?;
    let recovery_targets = RecoveryTargets::parse(&args.recovery_targets).map_err(UsageError::new)?;
    let scenario = harness::scenario::Scenario::load(&args.scenario).map_err(UsageError::new)?;
    let options = CampaignOptions { scenario, all_seeds, shard, duration: args.duration, out: args.out, recovery_targets, stack: args.stack.choice() };
    if options.seeds().is_empty() {
        let shard = shard.map(|s| s.to_string()).unwrap_or_default();
        return Err(UsageError::new(format!("shard {shard} of {} seeds has no seed", options.all_seeds.len())).into());
    }
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let outcome = campaign::run(options, interrupt).await?;
    print_summary(&outcome.campaign, &outcome.dir);
    Ok(outcome.campaign.outcome())
}

fn exec_merge(args: MergeArgs) -> anyhow::Result<Outcome> {
    let shards = campaign::merge::read_shards(&args.dirs, &args.out).map_err(UsageError::new)?;
    let id = format!("merged-{}", chrono::Utc::now().format("%Y%m%d-%H%M%S"));
    let merged = campaign::merge::merge(&shards, id).map_err(UsageError::new)?;
    campaign::write(&merged, &args.out)?;
    print!("{}", campaign::html::markdown(&merged));
    print_summary(&merged, &args.out);
    Ok(merged.outcome())
}

async fn exec_shrink(args: ShrinkArgs) -> anyhow::Result<Outcome> {
    use harness::campaign::shrink::{self, ShrinkStatus, TryVerdict};
    let recovery_targets = if args.recovery_targets.is_empty() { None } else { Some(RecoveryTargets::parse(&args.recovery_targets).map_err(UsageError::new)?) };
    let options = shrink::ShrinkOptions {
        report: args.report,
        k: args.k,
        max_runs: args.max_runs,
        recovery_targets,
        out_scenario: args.out_scenario,
        out: args.out,
        stack: args.stack.choice(),
    };
    let (outcome, r) = shrink::run(options).await?;
    let o = &r.outcome;
    let count = |v: TryVerdict| o.tries.iter().filter(|t| t.verdict == v).count();
    eprintln!();
    eprintln!("{:<24} seed {} of {} (run {})", "shrink", r.seed, r.scenario, r.run_id);
    eprintln!("{:<24} {}", "failure", r.signature.describe());
    eprintln!(
        "{:<24} {} tries, {} runs of at most {} (k = {}): {} reproduced, {} flaky, {} passed",
        "tries",
        o.tries.len(),
        o.runs_used,
        r.max_runs,
        r.k,
        count(TryVerdict::Reproduced),
        count(TryVerdict::Flaky),
        count(TryVerdict::Passed)
    );
    let status = match o.status {
        ShrinkStatus::Minimal => "1-minimal reproducer (removing any one fault makes the failure disappear)",
        ShrinkStatus::Capped => "reproducer, NOT proven minimal: the run cap was hit",
        ShrinkStatus::Interrupted => "reproducer so far, NOT proven minimal: interrupted",
        ShrinkStatus::Flaky => "FLAKY: the original schedule did not fail k of k; nothing shrunk",
        ShrinkStatus::NotReproduced => "NOT REPRODUCED: the original schedule did not fail again; nothing shrunk",
    };
    eprintln!("{:<24} {status}", "result");
    eprintln!(
        "{:<24} {} -> {} faults, load {} -> {}, rate x{}",
        "schedule",
        r.original.faults.len(),
        o.best.faults.len(),
        humantime::format_duration(r.original.duration),
        humantime::format_duration(o.best.duration),
        o.best.rate_factor
    );
    for f in &o.best.faults {
        eprintln!("  {} {} at {} for {}", f.fault.name(), f.target, humantime::format_duration(f.at), humantime::format_duration(f.duration));
    }
    if let Some(repro) = &r.repro {
        eprintln!("{:<24} {repro} (harness run {repro} --seed {})", "reproducer", r.seed);
    }
    if let Some(c) = &r.campaign {
        eprintln!("{:<24} {} (seed {} links the reproducer)", "campaign", c, r.seed);
    }
    Ok(outcome)
}

fn print_summary(c: &Campaign, dir: &std::path::Path) {
    let d = &c.derived;
    eprintln!();
    eprintln!("{:<24} {}", "campaign", c.campaign_id);
    eprintln!("{:<24} {} of {} ({})", "seeds run", c.runs.len(), c.seeds.len(), c.shard.map_or_else(|| "unsharded".into(), |s| format!("shard {s}")));
    for run in &c.runs {
        eprintln!(
            "  seed {:<6} {:<11} {} faults{}",
            run.seed,
            run.verdict.label(),
            run.faults.len(),
            run.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
        );
    }
    for g in &d.gates {
        let observed = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.1}"));
        eprintln!("  {} {:<40} p95 {} max {}", if g.passed { "PASS" } else { "FAIL" }, g.expression(), observed(g.observed_p95_s), observed(g.observed_max_s));
    }
    for reason in &d.no_verdict {
        eprintln!("no verdict: {reason}");
    }
    eprintln!("{:<24} {}", "verdict", d.verdict.label());
    eprintln!("{:<24} {}", "report", dir.join(campaign::CAMPAIGN_HTML).display());
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    #[test]
    fn campaign_and_merge_parse() {
        let parse = |args: &[&str]| crate::cli::Cli::try_parse_from(args).map(|_| ()).map_err(|e| e.kind());
        assert!(parse(&["harness", "campaign", "--seeds", "1..20", "--shard", "1/4", "--duration", "120s", "--recovery-target", "kill=20"]).is_ok());
        assert!(parse(&["harness", "campaign", "merge", "a", "b", "--out", "m"]).is_ok());
        assert!(parse(&["harness", "campaign", "shrink", "path", "--k", "3"]).is_ok());
        assert!(
            parse(&[
                "harness",
                "campaign",
                "shrink",
                "r.json",
                "--max-runs",
                "10",
                "--recovery-target",
                "kill=20",
                "--out-scenario",
                "x.toml",
                "--backend",
                "local"
            ])
            .is_ok()
        );
        assert_eq!(parse(&["harness", "campaign", "shrink"]), Err(clap::error::ErrorKind::MissingRequiredArgument));
        assert_eq!(parse(&["harness", "campaign", "shrink", "r.json", "--k", "x"]), Err(clap::error::ErrorKind::ValueValidation));
        assert_eq!(parse(&["harness", "campaign"]), Err(clap::error::ErrorKind::MissingRequiredArgument));
        assert_eq!(parse(&["harness", "campaign", "merge"]), Err(clap::error::ErrorKind::MissingRequiredArgument));
    }
}
