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

/// Numbers as every renderer shows them: at most two decimals (one from 100 up), no
/// trailing zeros, stable across platforms (the golden tests rely on it).
pub(crate) fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let text = if v.abs() >= 100.0 { format!("{v:.1}") } else { format!("{v:.2}") };
    let text = if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.') } else { &text };
    // Rounding can leave a negative zero ("-0.00" -> "-0").
    if text == "-0" { "0".into() } else { text.into() }
}

pub(crate) fn fmt_opt(v: Option<f64>, unit: &str) -> String {
    v.map_or_else(|| "—".to_string(), |v| format!("{}{unit}", fmt_num(v)))
}

#[cfg(test)]
mod tests {
    use super::fmt_num;

    #[test]
    fn numbers_are_short_and_stable() {
        let cases = [(0.0, "0"), (-0.001, "0"), (98.7, "98.7"), (12.5, "12.5"), (2.126, "2.13"), (1450.0, "1450"), (1957.46, "1957.5"), (-11.8, "-11.8")];
        for (v, text) in cases {
            assert_eq!(fmt_num(v), text, "{v}");
        }
    }
}
