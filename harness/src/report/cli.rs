//! Handlers of `harness diff` and `harness report`. An unreadable or wrong-version input is a
//! `UsageError`, a failed write a runtime error; `crate::exit` maps either to its code.

use std::path::{Path, PathBuf};

use super::diff::{self, ToleranceOverride};
use super::model::Report;
use super::{html, json, junit, markdown};
use anyhow::Context as _;

use crate::exit::{Outcome, UsageError};

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// BASE.json NEW.json; or only NEW.json when the bases are given with --base.
    #[arg(value_name = "REPORT", num_args = 1..=2)]
    pub reports: Vec<PathBuf>,
    /// A base report (repeat for repeated runs: compared by their median, and the tolerance
    /// widens by their spread).
    #[arg(long = "base", value_name = "REPORT")]
    pub bases: Vec<PathBuf>,
    /// Print the diff as Markdown (for PR comments and CI step summaries).
    #[arg(long, conflicts_with = "json")]
    pub markdown: bool,
    /// Print the diff as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also write the diff as a self-contained HTML page.
    #[arg(long, value_name = "OUT")]
    pub html: Option<PathBuf>,
    /// Override a metric's tolerance: METRIC=PCT or METRIC=PCT:ABS (METRIC may end with
    /// `*` to match a prefix); repeatable.
    #[arg(long = "tolerance", value_name = "METRIC=PCT[:ABS]")]
    pub tolerances: Vec<ToleranceOverride>,
}

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// The report.json to render.
    pub report: PathBuf,
    /// Write the HTML page to OUT.
    #[arg(long, value_name = "OUT")]
    pub html: Option<PathBuf>,
    /// Print the Markdown summary (the default when no other output is asked for).
    #[arg(long)]
    pub markdown: bool,
    /// Write JUnit XML (one test case per threshold plus convergence) to OUT.
    #[arg(long, value_name = "OUT")]
    pub junit: Option<PathBuf>,
}

/// `harness diff`: `Regression` when a gated metric regressed; a usage error on bad input.
pub fn diff(args: &DiffArgs) -> anyhow::Result<Outcome> {
    let (base_paths, new_path): (Vec<&PathBuf>, &PathBuf) = match (args.bases.as_slice(), args.reports.as_slice()) {
        ([], [base, new]) => (vec![base], new),
        ([_, ..], [new]) => (args.bases.iter().collect(), new),
        _ => {
            return Err(UsageError::new(
                "give BASE.json NEW.json, or --base BASE.json (repeatable) and NEW.json\n  e.g. harness diff main/report.json pr/report.json",
            )
            .into());
        }
    };
    let bases = base_paths.into_iter().map(|p| json::load(p)).collect::<Result<Vec<Report>, _>>().map_err(UsageError::new)?;
    let new = json::load(new_path).map_err(UsageError::new)?;
    let report = diff::diff(&bases, &new, &args.tolerances).map_err(UsageError::new)?;
    if let Some(out) = &args.html {
        write(out, &diff::render_html(&report))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).context("serializing the diff")?);
    } else if args.markdown {
        print!("{}", diff::render_markdown(&report));
    } else {
        print!("{}", diff::render_text(&report));
    }
    Ok(if report.failed { Outcome::Regression } else { Outcome::Pass })
}

/// `harness report`: re-renders a report.json; a usage error when it cannot be read.
pub fn report(args: &ReportArgs) -> anyhow::Result<Outcome> {
    let report = json::load(&args.report).map_err(UsageError::new)?;
    if let Some(path) = &args.html {
        write(path, &html::render(&report))?;
    }
    if let Some(path) = &args.junit {
        write(path, &junit::render(&report)?)?;
    }
    if args.markdown || (args.html.is_none() && args.junit.is_none()) {
        print!("{}", markdown::render(&report));
    }
    Ok(Outcome::Pass)
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
