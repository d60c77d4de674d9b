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

use model::{PipelineStats, Report};

/// The run passed when the target converged and every threshold held.
pub fn passed(report: &Report) -> bool {
    verdict(report) == model::Verdict::Pass
}

/// The run's verdict (see `model::Verdict`).
pub fn verdict(report: &Report) -> model::Verdict {
    model::Verdict::of(&report.summary)
}

/// Writes `report.json`, `report.html`, `summary.md` and `junit.xml` into `dir` (created
/// if missing) and returns their paths.
pub fn write_all(report: &Report, dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let files = [
        ("report.json", json::render(report)?),
        ("report.html", html::render(report)),
        ("summary.md", markdown::render(report)),
        ("junit.xml", junit::render(report)?),
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

/// What a renderer shows for a value that was not measured.
pub const NOT_MEASURED: &str = "not measured";

/// One row of the summary every renderer shows (the same rows, in the same order).
pub struct SummaryRow {
    pub label: &'static str,
    /// The value as text (numbers formatted, "not measured" when absent).
    pub value: String,
    /// Unit shown after a measured value (empty for words).
    pub unit: &'static str,
}

fn num_or_absent(v: Option<f64>) -> (String, bool) {
    match v {
        Some(v) => (fmt_num(v), true),
        None => (NOT_MEASURED.to_string(), false),
    }
}

/// The total and what it is made of (a transient retry is not a lost change).
fn errors(s: &model::Summary) -> String {
    if s.errors_by_kind.is_empty() {
        return s.errors.to_string();
    }
    let kinds: Vec<String> = s.errors_by_kind.iter().map(|(kind, n)| format!("{} {n}", kind.replace('_', " "))).collect();
    format!("{} ({})", s.errors, kinds.join(", "))
}

/// The slot's backlog while the load ran and after it; the overall maximum for a report
/// made before the two were told apart.
fn slot_lag(p: &PipelineStats) -> (String, bool) {
    let kib = |v: Option<u64>| num_or_absent(v.map(|v| v as f64 / 1024.0)).0;
    match (p.slot_lag_bytes_max_during_load, p.slot_lag_bytes_max_after_load) {
        (None, None) => num_or_absent(p.slot_lag_bytes_max.map(|v| v as f64 / 1024.0)),
        (during, after) => (format!("{} / {}", kib(during), kib(after)), true),
    }
}

fn pct_triple(p: &crate::verify::Percentiles) -> Option<String> {
    p.measured().then(|| format!("{} / {} / {}", fmt_num(p.p50), fmt_num(p.p95), fmt_num(p.p99)))
}

/// The summary rows of a report, shared by HTML and Markdown.
pub fn summary_rows(report: &Report) -> Vec<SummaryRow> {
    let p = &report.pipeline;
    let l = &report.load;
    let s = &report.summary;
    let row = |label: &'static str, (value, measured): (String, bool), unit: &'static str| SummaryRow { label, value, unit: if measured { unit } else { "" } };
    let triple = |pct: &crate::verify::Percentiles| pct_triple(pct).map_or((NOT_MEASURED.to_string(), false), |t| (t, true));
    let lag_recovery = match (p.lag_recovery_s, p.lag_recovered) {
        (Some(v), _) => (fmt_num(v), true),
        (None, true) => ("—".into(), false),
        (None, false) => ("never recovered".into(), false),
    };
    let time_to_converge = match report.convergence.time_to_converge_ms {
        Some(ms) => (fmt_num(ms as f64 / 1000.0), true),
        None if !report.convergence.converged => ("never".into(), false),
        None => ("—".into(), false),
    };
    let mut rows = vec![
        row("Applied changes (sink)", num_or_absent(p.events_per_sec), " events/s"),
        row("Load achieved / target", (format!("{} / {}", fmt_num(l.achieved_rate), fmt_num(l.target_rate)), true), " ops/s"),
        row("E2E latency p50 / p95 / p99", triple(&p.e2e_latency_ms), " ms"),
        row("Capture hop p50 / p95 / p99 (commit → broker)", triple(&p.capture_latency_ms), " ms"),
        row("Apply hop p50 / p95 / p99 (broker → target)", triple(&p.apply_latency_ms), " ms"),
        row("Probe latency p50 / p95 / p99", triple(&p.probe_latency_ms), " ms"),
        row("Clock skew, target − source (in every e2e figure)", num_or_absent(p.clock_skew_ms), " ms"),
        row("Max consumer lag", num_or_absent(p.max_lag.map(|v| v as f64)), " events"),
        row("Max slot lag during load / after", slot_lag(p), " KiB"),
        row("Lag recovery", lag_recovery, " s"),
        row("Time to converge", time_to_converge, " s"),
        row("Errors", (errors(s), true), ""),
        row("Validation failures / DLQ", (format!("{} / {}", report.validation.failed_by_rule.values().sum::<u64>(), report.validation.dlq), true), ""),
        row("Rows rejected on purpose (DLQ)", (report.convergence.dlq_rejected.values().sum::<u64>().to_string(), true), ""),
    ];
    // Only a breakpoint run looks for it.
    if let Some(rate) = p.max_sustainable_rate {
        rows.push(row("Max sustainable rate", (fmt_num(rate), true), " ops/s"));
    }
    rows
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
