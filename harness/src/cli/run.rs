//! `harness baseline` and `harness run`: one scenario, start to verdict.

use std::path::Path;

use harness::exit::{Outcome, UsageError};

use super::args::RunArgs;

pub(crate) async fn exec(name: &str, args: RunArgs, run_dir: &Path) -> anyhow::Result<Outcome> {
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
            return Ok(Outcome::Interrupted);
        }
    };
    let report = &outcome.report;
    if args.json {
        println!("{}", serde_json::to_string_pretty(report)?);
    }
    print_summary(report, &outcome.dir);
    for reason in &report.summary.no_verdict {
        eprintln!("no verdict: {reason}");
    }
    Ok(Outcome::of_run(report))
}

fn print_summary(report: &harness::report::model::Report, dir: &Path) {
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
