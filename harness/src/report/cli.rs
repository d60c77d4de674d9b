//! Handlers of `harness diff` and `harness report`. They print their own errors and return
//! the exit code (see `crate::exit`), because the code depends on what went wrong: an
//! unreadable or wrong-version input is a usage error, a failed write is a runtime error.

use std::path::{Path, PathBuf};

use super::diff::{self, ToleranceOverride};
use super::model::Report;
use super::{html, json, junit, markdown};
use crate::exit;

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

/// `harness diff`: SUCCESS, REGRESSION when a gated metric regressed, USAGE on bad input.
pub fn diff(args: &DiffArgs) -> i32 {
    let (base_paths, new_path): (Vec<&PathBuf>, &PathBuf) = match (args.bases.as_slice(), args.reports.as_slice()) {
        ([], [base, new]) => (vec![base], new),
        ([_, ..], [new]) => (args.bases.iter().collect(), new),
        _ => {
            eprintln!("error: give BASE.json NEW.json, or --base BASE.json (repeatable) and NEW.json\n  e.g. harness diff main/report.json pr/report.json");
            return exit::USAGE;
        }
    };
    let load = |p: &PathBuf| json::load(p);
    let (bases, new) = match (base_paths.into_iter().map(load).collect::<Result<Vec<Report>, _>>(), load(new_path)) {
        (Ok(bases), Ok(new)) => (bases, new),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let report = match diff::diff(&bases, &new, &args.tolerances) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    if let Some(out) = &args.html {
        if let Err(code) = write(out, &diff::render_html(&report)) {
            return code;
        }
    }
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("error: serializing the diff: {e}");
                return exit::ERROR;
            }
        }
    } else if args.markdown {
        print!("{}", diff::render_markdown(&report));
    } else {
        print!("{}", diff::render_text(&report));
    }
    if report.failed { exit::REGRESSION } else { exit::SUCCESS }
}

/// `harness report`: re-renders a report.json; SUCCESS, or USAGE when it cannot be read.
pub fn report(args: &ReportArgs) -> i32 {
    let report = match json::load(&args.report) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let outputs = [(&args.html, html::render as fn(&Report) -> String), (&args.junit, junit::render)];
    for (path, render) in outputs.into_iter().filter_map(|(out, render)| Some((out.as_ref()?, render))) {
        if let Err(code) = write(path, &render(&report)) {
            return code;
        }
    }
    if args.markdown || (args.html.is_none() && args.junit.is_none()) {
        print!("{}", markdown::render(&report));
    }
    exit::SUCCESS
}

fn write(path: &Path, text: &str) -> Result<(), i32> {
    std::fs::write(path, text).map_err(|e| {
        eprintln!("error: writing {}: {e}", path.display());
        exit::ERROR
    })?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
