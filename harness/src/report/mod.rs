//! Run reports: the model and its renderings (JSON, HTML, Markdown, JUnit), threshold
//! gates, and `harness diff`.

pub mod cli;
pub mod diff;
pub mod html;
pub mod json;
pub mod junit;
pub mod markdown;
pub mod model;
mod svg;
pub mod thresholds;

use std::io;
use std::path::{Path, PathBuf};

use model::Report;

/// The run passed when the target converged and every threshold held.
pub fn passed(report: &Report) -> bool {
    report.summary.converged && report.summary.thresholds_passed
}

/// Writes `report.json`, `report.html`, `summary.md` and `junit.xml` into `dir` (created
/// if missing) and returns their paths.
pub fn write_all(report: &Report, dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let files = [
        ("report.json", json::render(report)?),
        ("report.html", html::render(report)),
        ("summary.md", markdown::render(report)),
        ("junit.xml", junit::render(report)),
    ];
    files
        .into_iter()
        .map(|(name, text)| {
            let path = dir.join(name);
            std::fs::write(&path, text)?;
            Ok(path)
        })
        .collect()
}

/// Numbers as every renderer shows them: integers without decimals, small values with two,
/// large ones with one (stable across platforms, which the golden tests rely on).
pub(crate) fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        format!("{v}")
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

pub(crate) fn fmt_opt(v: Option<f64>, unit: &str) -> String {
    v.map_or_else(|| "—".to_string(), |v| format!("{}{unit}", fmt_num(v)))
}
