//! `harness diff`: two reports (or several base runs and one new run) compared metric by
//! metric, each in the direction `Report::metrics()` declares for it, with a noise
//! tolerance per metric. See README.md beside this file for the defaults.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::fmt_num;
use super::html::{STYLE, esc};
use super::model::{Direction, Metric, Report, SCHEMA_VERSION};

/// With several base runs, the noise band grows by this many median absolute deviations
/// (3 MAD is about 2 standard deviations for normal noise).
pub const SPREAD_FACTOR: f64 = 3.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Improved,
    /// Changed by no more than the tolerance.
    Unchanged,
    Regressed,
    MissingInBase,
    MissingInNew,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Improved => "improved",
            Verdict::Unchanged => "unchanged",
            Verdict::Regressed => "regressed",
            Verdict::MissingInBase => "missing in base",
            Verdict::MissingInNew => "missing in new",
        }
    }
}

/// A change is noise unless it exceeds both bounds: `relative_pct` of the base value and
/// `absolute` (in the metric's unit). Zero for both: any change in the bad direction counts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Tolerance {
    pub relative_pct: f64,
    pub absolute: f64,
}

impl Tolerance {
    /// The defaults by kind of metric (documented in README.md; keep both in sync).
    pub fn default_for(metric: &str) -> Tolerance {
        let t = |relative_pct, absolute| Tolerance { relative_pct, absolute };
        match metric {
            // Counts that should stay at zero: any increase is a regression.
            "errors" | "load.errors" | "validation.dlq" => t(0.0, 0.0),
            "convergence.time_to_converge_s" | "lag_recovery_s" => t(20.0, 2.0),
            m if m.starts_with("convergence.") => t(0.0, 0.0),
            m if m.contains("latency_ms") => t(10.0, 5.0),
            "max_lag" => t(25.0, 100.0),
            "events_per_sec" | "load.achieved_rate" | "max_sustainable_rate" => t(10.0, 1.0),
            _ => t(10.0, 0.0),
        }
    }
}

/// `--tolerance NAME=PCT[:ABS]`: overrides the relative tolerance (and optionally the
/// absolute floor) of the metrics it names; `NAME` may end with `*` to match a prefix.
#[derive(Debug, Clone, PartialEq)]
pub struct ToleranceOverride {
    pub pattern: String,
    pub relative_pct: f64,
    pub absolute: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Error)]
pub enum ToleranceError {
    #[error("tolerance `{0}` is not METRIC=PCT or METRIC=PCT:ABS (e.g. `e2e_latency_ms.p95=15` or `events_per_sec=5:10`)")]
    Syntax(String),
    #[error("tolerance `{text}`: `{value}` is not a non-negative number")]
    Value { text: String, value: String },
}

impl std::str::FromStr for ToleranceOverride {
    type Err = ToleranceError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (pattern, rest) = text.split_once('=').ok_or_else(|| ToleranceError::Syntax(text.into()))?;
        let pattern = pattern.trim();
        if pattern.is_empty() {
            return Err(ToleranceError::Syntax(text.into()));
        }
        let number = |s: &str| {
            let s = s.trim();
            s.trim_end_matches('%')
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| ToleranceError::Value { text: text.into(), value: s.into() })
        };
        let (relative, absolute) = match rest.split_once(':') {
            Some((rel, abs)) => (number(rel)?, Some(number(abs)?)),
            None => (number(rest)?, None),
        };
        Ok(ToleranceOverride { pattern: pattern.into(), relative_pct: relative, absolute })
    }
}

impl ToleranceOverride {
    fn matches(&self, metric: &str) -> bool {
        match self.pattern.strip_suffix('*') {
            Some(prefix) => metric.starts_with(prefix),
            None => metric == self.pattern,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Error)]
pub enum DiffError {
    #[error(
        "report {run_id} has schema_version {found}, this harness compares schema_version {}: \
         re-run or re-render it with a harness of the matching version",
        SCHEMA_VERSION
    )]
    SchemaMismatch { run_id: String, found: u32 },
    #[error("no base report to compare with")]
    NoBase,
    #[error("--tolerance {0} matches no metric of these reports")]
    UnusedTolerance(String),
}

/// The base side of one metric: the value of the single base run, or the median of
/// several with their median absolute deviation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub value: f64,
    /// Median absolute deviation over the base runs (0 with one run).
    pub spread: f64,
    /// Base runs that carry this metric.
    pub runs: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricDiff {
    pub name: String,
    pub direction: Direction,
    pub gated: bool,
    pub base: Option<Baseline>,
    pub new: Option<f64>,
    /// new - base.
    pub change: Option<f64>,
    /// Change relative to the base, in percent (None when the base is 0 or absent).
    pub change_pct: Option<f64>,
    pub tolerance: Tolerance,
    /// The noise band actually applied, in the metric's unit:
    /// max(absolute, relative_pct of |base|) + SPREAD_FACTOR x spread.
    pub allowed: Option<f64>,
    pub verdict: Verdict,
}

impl MetricDiff {
    /// Gated metrics fail the diff when they regress or disappear from the new report (a
    /// gate that can no longer be checked must not pass silently).
    pub fn fails_gate(&self) -> bool {
        self.gated && matches!(self.verdict, Verdict::Regressed | Verdict::MissingInNew)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiffReport {
    pub schema_version: u32,
    pub base_runs: Vec<String>,
    pub new_run: String,
    pub metrics: Vec<MetricDiff>,
    /// Differences that make the comparison less meaningful (other scenario, machine...).
    pub warnings: Vec<String>,
    /// Whether a gated metric regressed (`harness diff` then exits with REGRESSION).
    pub failed: bool,
}

pub fn diff(bases: &[Report], new: &Report, overrides: &[ToleranceOverride]) -> Result<DiffReport, DiffError> {
    if bases.is_empty() {
        return Err(DiffError::NoBase);
    }
    for r in bases.iter().chain([new]) {
        if r.schema_version != SCHEMA_VERSION {
            return Err(DiffError::SchemaMismatch { run_id: r.run.run_id.clone(), found: r.schema_version });
        }
    }
    let new_metrics = finite_metrics(new);
    let base_metrics: Vec<Vec<Metric>> = bases.iter().map(finite_metrics).collect();
    // Declared order of the new report, then what only the bases have.
    let mut declared: Vec<&Metric> = new_metrics.iter().collect();
    for m in base_metrics.iter().flatten() {
        if !declared.iter().any(|d| d.name == m.name) {
            declared.push(m);
        }
    }
    for o in overrides {
        if !declared.iter().any(|m| o.matches(&m.name)) {
            return Err(DiffError::UnusedTolerance(o.pattern.clone()));
        }
    }
    let metrics = declared
        .into_iter()
        .map(|m| {
            let new_value = new_metrics.iter().find(|n| n.name == m.name).map(|n| n.value);
            let base_values: Vec<f64> = base_metrics.iter().filter_map(|ms| ms.iter().find(|b| b.name == m.name).map(|b| b.value)).collect();
            compare(m, baseline(&base_values), new_value, tolerance(&m.name, overrides))
        })
        .collect::<Vec<_>>();
    let failed = metrics.iter().any(MetricDiff::fails_gate);
    Ok(DiffReport {
        schema_version: SCHEMA_VERSION,
        base_runs: bases.iter().map(|b| b.run.run_id.clone()).collect(),
        new_run: new.run.run_id.clone(),
        warnings: warnings(bases, new),
        metrics,
        failed,
    })
}

/// A NaN or infinite value carries no information to compare: treated as absent.
fn finite_metrics(report: &Report) -> Vec<Metric> {
    report.metrics().into_iter().filter(|m| m.value.is_finite()).collect()
}

fn tolerance(metric: &str, overrides: &[ToleranceOverride]) -> Tolerance {
    let default = Tolerance::default_for(metric);
    // The last matching override wins, like later flags overriding earlier ones.
    overrides
        .iter()
        .rev()
        .find(|o| o.matches(metric))
        .map_or(default, |o| Tolerance { relative_pct: o.relative_pct, absolute: o.absolute.unwrap_or(default.absolute) })
}

fn baseline(values: &[f64]) -> Option<Baseline> {
    let value = median(values)?;
    let deviations: Vec<f64> = values.iter().map(|v| (v - value).abs()).collect();
    Some(Baseline { value, spread: median(&deviations).unwrap_or(0.0), runs: values.len() })
}

fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

fn compare(m: &Metric, base: Option<Baseline>, new: Option<f64>, tolerance: Tolerance) -> MetricDiff {
    let mut out = MetricDiff {
        name: m.name.clone(),
        direction: m.direction,
        gated: m.gated,
        base,
        new,
        change: None,
        change_pct: None,
        tolerance,
        allowed: None,
        verdict: Verdict::Unchanged,
    };
    let (b, n) = match (base, new) {
        (None, _) => {
            out.verdict = Verdict::MissingInBase;
            return out;
        }
        (Some(_), None) => {
            out.verdict = Verdict::MissingInNew;
            return out;
        }
        (Some(b), Some(n)) => (b, n),
    };
    let change = n - b.value;
    let allowed = tolerance.absolute.max(tolerance.relative_pct / 100.0 * b.value.abs()) + SPREAD_FACTOR * b.spread;
    // Positive when the metric moved the wrong way.
    let worse = match m.direction {
        Direction::LowerIsBetter => change,
        Direction::HigherIsBetter => -change,
    };
    out.change = Some(change);
    out.change_pct = (b.value != 0.0).then(|| change / b.value.abs() * 100.0);
    out.allowed = Some(allowed);
    out.verdict = if worse > allowed {
        Verdict::Regressed
    } else if -worse > allowed {
        Verdict::Improved
    } else {
        Verdict::Unchanged
    };
    out
}

fn warnings(bases: &[Report], new: &Report) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |what: &str, get: &dyn Fn(&Report) -> String| {
        let theirs = get(new);
        if let Some(other) = bases.iter().map(get).find(|v| *v != theirs) {
            out.push(format!("{what} differs: base {other}, new {theirs}"));
        }
    };
    check("scenario", &|r| r.run.scenario.clone());
    check("driver", &|r| r.run.driver.clone());
    check("backend", &|r| r.run.backend.clone());
    check("machine", &|r| format!("{} cores / {} MiB", r.run.machine.cores, r.run.machine.memory_mb));
    if matches!(bases, [only] if only.run.run_id == new.run.run_id && only != new) {
        out.push(format!("base and new share run id {} but differ", new.run.run_id));
    }
    out
}

fn signed(v: f64) -> String {
    if v > 0.0 { format!("+{}", fmt_num(v)) } else { fmt_num(v) }
}

fn cells(m: &MetricDiff) -> [String; 4] {
    let base = match m.base {
        Some(b) if b.runs > 1 => format!("{} ±{}", fmt_num(b.value), fmt_num(b.spread)),
        Some(b) => fmt_num(b.value),
        None => "—".into(),
    };
    let new = m.new.map_or_else(|| "—".into(), fmt_num);
    let change = m.change.map_or_else(|| "—".into(), signed);
    let pct = m.change_pct.map_or_else(|| "—".into(), |p| format!("{}{p:.1}%", if p > 0.0 { "+" } else { "" }));
    [base, new, change, pct]
}

fn headline(d: &DiffReport) -> String {
    let count = |v: Verdict| d.metrics.iter().filter(|m| m.verdict == v).count();
    let gated = d.metrics.iter().filter(|m| m.fails_gate()).count();
    format!(
        "{}: {} regressed ({gated} gated), {} improved, {} unchanged, {} missing in base, {} missing in new",
        if d.failed { "REGRESSION" } else { "OK" },
        count(Verdict::Regressed),
        count(Verdict::Improved),
        count(Verdict::Unchanged),
        count(Verdict::MissingInBase),
        count(Verdict::MissingInNew)
    )
}

fn base_label(d: &DiffReport) -> String {
    match d.base_runs.as_slice() {
        [one] => one.clone(),
        many => format!("median of {} runs", many.len()),
    }
}

/// For terminals: aligned columns, one metric per line.
pub fn render_text(d: &DiffReport) -> String {
    let mut o = format!("{}\nbase {} -> new {}\n", headline(d), base_label(d), d.new_run);
    for w in &d.warnings {
        let _ = writeln!(o, "warning: {w}");
    }
    let width = d.metrics.iter().map(|m| m.name.len()).max().unwrap_or(6).max(6);
    let _ = writeln!(o, "{:<width$} {:>14} {:>12} {:>12} {:>9}  VERDICT", "METRIC", "BASE", "NEW", "CHANGE", "%");
    for m in &d.metrics {
        let [base, new, change, pct] = cells(m);
        let gate = if m.fails_gate() { "  (gated)" } else { "" };
        let _ = writeln!(o, "{:<width$} {base:>14} {new:>12} {change:>12} {pct:>9}  {}{gate}", m.name, m.verdict.as_str());
    }
    o
}

/// For PR comments and CI step summaries.
pub fn render_markdown(d: &DiffReport) -> String {
    let mut o = format!(
        "## {} {}\n\nBase {} → new `{}`\n\n",
        if d.failed { "❌" } else { "✅" },
        headline(d),
        if d.base_runs.len() == 1 { format!("`{}`", base_label(d)) } else { base_label(d) },
        d.new_run
    );
    for w in &d.warnings {
        let _ = writeln!(o, "> ⚠️ {w}\n");
    }
    o.push_str("| Metric | Better | Base | New | Change | % | Verdict |\n| --- | --- | ---: | ---: | ---: | ---: | --- |\n");
    for m in &d.metrics {
        let [base, new, change, pct] = cells(m);
        let verdict = match m.verdict {
            Verdict::Regressed if m.gated => "🔴 **regressed** (gated)".to_string(),
            Verdict::Regressed => "🟠 regressed".to_string(),
            Verdict::Improved => "🟢 improved".to_string(),
            Verdict::MissingInNew if m.gated => "🔴 **missing in new** (gated)".to_string(),
            v => v.as_str().to_string(),
        };
        let _ = writeln!(o, "| `{}` | {} | {base} | {new} | {change} | {pct} | {verdict} |", m.name, direction_word(m.direction));
    }
    o
}

fn direction_word(d: Direction) -> &'static str {
    match d {
        Direction::LowerIsBetter => "lower",
        Direction::HigherIsBetter => "higher",
    }
}

/// A self-contained page with the same table, styled like report.html.
pub fn render_html(d: &DiffReport) -> String {
    let class = if d.failed { "fail" } else { "pass" };
    let mut o = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>harness diff: {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n<header class=\"top {class}\"><span id=\"verdict\" class=\"badge {class}\">{}</span><div><h1>Report diff</h1><p>base {} → new <code>{}</code></p></div></header>\n<section id=\"diff\">\n<p>{}</p>\n",
        esc(&d.new_run),
        if d.failed { "REGRESSION" } else { "OK" },
        esc(&base_label(d)),
        esc(&d.new_run),
        esc(&headline(d))
    );
    for w in &d.warnings {
        let _ = writeln!(o, "<p class=\"muted\">warning: {}</p>", esc(w));
    }
    o.push_str("<table>\n<tr><th>Metric</th><th>Better</th><th class=\"num\">Base</th><th class=\"num\">New</th><th class=\"num\">Change</th><th class=\"num\">%</th><th class=\"num\">Allowed</th><th>Verdict</th></tr>\n");
    for m in &d.metrics {
        let [base, new, change, pct] = cells(m);
        let (row, cell) = match m.verdict {
            Verdict::Regressed | Verdict::MissingInNew if m.gated => (" class=\"bad\"", "ko"),
            Verdict::Regressed => ("", "ko"),
            Verdict::Improved => ("", "ok"),
            _ => ("", ""),
        };
        let _ = writeln!(
            o,
            "<tr{row}><td><code>{}</code>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"{cell}\">{}</td></tr>",
            esc(&m.name),
            if m.gated { " <span class=\"muted\">gated</span>" } else { "" },
            direction_word(m.direction),
            esc(&base),
            esc(&new),
            esc(&change),
            esc(&pct),
            m.allowed.map_or_else(|| "—".into(), |a| format!("±{}", fmt_num(a))),
            m.verdict.as_str()
        );
    }
    o.push_str("</table>\n</section>\n</main>\n</body>\n</html>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::thresholds::representative_report;

    fn report(id: &str, p95: f64, events: f64, missing: u64) -> Report {
        let mut r = representative_report();
        r.run.run_id = id.into();
        r.pipeline.e2e_latency_ms_per_entity.clear();
        r.pipeline.e2e_latency_ms.p95 = p95;
        r.pipeline.events_per_sec = Some(events);
        r.convergence.entities.push(crate::verify::EntityOutcome { entity: "customer".into(), missing_in_target: missing, ..Default::default() });
        r
    }

    fn verdict_of(d: &DiffReport, name: &str) -> Verdict {
        d.metrics.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("{name} absent")).verdict
    }

    fn run(base: &Report, new: &Report, overrides: &[&str]) -> DiffReport {
        let overrides: Vec<ToleranceOverride> = overrides.iter().map(|s| s.parse().expect("valid override")).collect();
        diff(std::slice::from_ref(base), new, &overrides).expect("diff")
    }

    #[test]
    fn direction_comes_from_the_declaration() {
        let base = report("a", 1000.0, 500.0, 0);
        // Latency up 50% is worse; throughput up 50% is better.
        let d = run(&base, &report("b", 1500.0, 750.0, 0), &[]);
        assert_eq!(verdict_of(&d, "e2e_latency_ms.p95"), Verdict::Regressed);
        assert_eq!(verdict_of(&d, "events_per_sec"), Verdict::Improved);
        assert!(d.failed);
        let d = run(&base, &report("b", 500.0, 250.0, 0), &[]);
        assert_eq!(verdict_of(&d, "e2e_latency_ms.p95"), Verdict::Improved);
        assert_eq!(verdict_of(&d, "events_per_sec"), Verdict::Regressed);
        let m = d.metrics.iter().find(|m| m.name == "events_per_sec").expect("present");
        assert_eq!((m.change, m.change_pct), (Some(-250.0), Some(-50.0)));
    }

    #[test]
    fn identical_reports_do_not_fail() {
        let base = report("a", 1000.0, 500.0, 0);
        let d = run(&base, &base, &[]);
        assert!(!d.failed);
        assert!(d.metrics.iter().all(|m| m.verdict == Verdict::Unchanged), "{d:?}");
    }

    #[test]
    fn changes_within_tolerance_are_unchanged() {
        let base = report("a", 1000.0, 500.0, 0);
        // +9% latency and -9% throughput: inside the default 10%.
        let d = run(&base, &report("b", 1090.0, 455.0, 0), &[]);
        assert_eq!(verdict_of(&d, "e2e_latency_ms.p95"), Verdict::Unchanged);
        assert_eq!(verdict_of(&d, "events_per_sec"), Verdict::Unchanged);
        assert!(!d.failed);
        // The absolute floor: 1 ms -> 4 ms is +300% but under 5 ms, so noise.
        let d = run(&report("a", 1.0, 500.0, 0), &report("b", 4.0, 500.0, 0), &[]);
        assert_eq!(verdict_of(&d, "e2e_latency_ms.p95"), Verdict::Unchanged);
        let d = run(&report("a", 1.0, 500.0, 0), &report("b", 7.0, 500.0, 0), &[]);
        assert_eq!(verdict_of(&d, "e2e_latency_ms.p95"), Verdict::Regressed);
    }

    #[test]
    fn tolerance_overrides() {
        let base = report("a", 1000.0, 500.0, 0);
        let new = report("b", 1090.0, 500.0, 0);
        let d = run(&base, &new, &["e2e_latency_ms.p95=5"]);
        assert_eq!(verdict_of(&d, "e2e_latency_ms.p95"), Verdict::Regressed);
        let d = run(&base, &report("b", 1400.0, 500.0, 0), &["e2e_latency_ms.*=50%"]);
        assert_eq!(verdict_of(&d, "e2e_latency_ms.p95"), Verdict::Unchanged);
        // Last match wins; ABS replaces the floor.
        let d = run(&report("a", 1.0, 500.0, 0), &report("b", 4.0, 500.0, 0), &["e2e_latency_ms.*=50", "e2e_latency_ms.p95=0:0"]);
        assert_eq!(verdict_of(&d, "e2e_latency_ms.p95"), Verdict::Regressed);
        let m = d.metrics.iter().find(|m| m.name == "e2e_latency_ms.p95").expect("present");
        assert_eq!(m.tolerance, Tolerance { relative_pct: 0.0, absolute: 0.0 });

        assert!(matches!("nope".parse::<ToleranceOverride>(), Err(ToleranceError::Syntax(_))));
        assert!(matches!("=5".parse::<ToleranceOverride>(), Err(ToleranceError::Syntax(_))));
        assert!(matches!("x=-5".parse::<ToleranceOverride>(), Err(ToleranceError::Value { .. })));
        assert!(matches!("x=5:y".parse::<ToleranceOverride>(), Err(ToleranceError::Value { .. })));
        let unused = vec!["e2e_latency_ms.p955=5".parse().expect("syntax ok")];
        assert_eq!(diff(std::slice::from_ref(&base), &new, &unused), Err(DiffError::UnusedTolerance("e2e_latency_ms.p955".into())));
    }

    #[test]
    fn zero_baseline_counts_regress_on_any_increase() {
        let d = run(&report("a", 1000.0, 500.0, 0), &report("b", 1000.0, 500.0, 1), &[]);
        let m = d.metrics.iter().find(|m| m.name == "convergence.missing").expect("present");
        assert_eq!((m.verdict, m.change, m.change_pct), (Verdict::Regressed, Some(1.0), None));
        assert!(d.failed);
        let d = run(&report("a", 1000.0, 500.0, 2), &report("b", 1000.0, 500.0, 0), &[]);
        assert_eq!(verdict_of(&d, "convergence.missing"), Verdict::Improved);
        assert!(!d.failed);
    }

    #[test]
    fn missing_metrics() {
        let base = report("a", 1000.0, 500.0, 0);
        let mut new = base.clone();
        new.run.run_id = "b".into();
        new.pipeline.max_sustainable_rate = None;
        new.pipeline.e2e_latency_ms_per_entity.insert("order".into(), crate::verify::Percentiles { count: 1, ..Default::default() });
        let d = run(&base, &new, &[]);
        assert_eq!(verdict_of(&d, "max_sustainable_rate"), Verdict::MissingInNew);
        assert_eq!(verdict_of(&d, "e2e_latency_ms.order.p95"), Verdict::MissingInBase);
        // max_sustainable_rate is gated: losing it fails the diff; a new metric does not.
        assert!(d.failed);
        new.pipeline.max_sustainable_rate = Some(0.0);
        assert!(!run(&base, &new, &[]).failed);
    }

    #[test]
    fn several_bases_use_median_and_widen_by_spread() {
        let bases = [report("a", 1000.0, 500.0, 0), report("b", 1200.0, 500.0, 0), report("c", 1100.0, 500.0, 0)];
        let new = report("n", 1400.0, 500.0, 0);
        let d = diff(&bases, &new, &[]).expect("diff");
        let m = d.metrics.iter().find(|m| m.name == "e2e_latency_ms.p95").expect("present");
        assert_eq!(m.base, Some(Baseline { value: 1100.0, spread: 100.0, runs: 3 }));
        // 10% of 1100 + 3 x 100 = 410 allowed; +300 is noise given how much the bases vary.
        assert_eq!(m.allowed, Some(410.0));
        assert_eq!(m.verdict, Verdict::Unchanged);
        let d = diff(&bases, &report("n", 1600.0, 500.0, 0), &[]).expect("diff");
        assert_eq!(verdict_of(&d, "e2e_latency_ms.p95"), Verdict::Regressed);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn schema_version_mismatch_is_refused() {
        let base = report("a", 1000.0, 500.0, 0);
        let mut new = report("b", 1000.0, 500.0, 0);
        new.schema_version = SCHEMA_VERSION + 1;
        let err = diff(std::slice::from_ref(&base), &new, &[]).expect_err("refused");
        assert_eq!(err, DiffError::SchemaMismatch { run_id: "b".into(), found: SCHEMA_VERSION + 1 });
        assert!(err.to_string().contains("schema_version"));
        assert_eq!(diff(&[], &base, &[]), Err(DiffError::NoBase));
    }

    #[test]
    fn warns_when_scenarios_differ() {
        let mut base = report("a", 1000.0, 500.0, 0);
        base.run.scenario = "baseline".into();
        let mut new = report("b", 1000.0, 500.0, 0);
        new.run.scenario = "spike".into();
        let d = run(&base, &new, &[]);
        assert_eq!(d.warnings, vec!["scenario differs: base baseline, new spike".to_string()]);
    }
}
