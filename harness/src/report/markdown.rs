//! `summary.md`: the report for CI step summaries and PR comments (GitHub-flavoured
//! Markdown: short, tables only, no HTML).

use std::fmt::Write as _;

use super::model::Report;
use super::{fmt_num, fmt_opt};

/// Anomaly examples listed; the HTML report has all of them.
const TOP_ANOMALIES: usize = 5;
/// Differing fields shown per anomaly example.
const FIELDS_PER_ANOMALY: usize = 5;

pub fn render(report: &Report) -> String {
    let mut out = String::new();
    // `write!` into a String cannot fail; the results are discarded on purpose.
    let o = &mut out;
    let run = &report.run;
    let verdict = match super::verdict(report) {
        super::model::Verdict::Pass => "✅ PASS",
        super::model::Verdict::Fail => "❌ FAIL",
        super::model::Verdict::NoVerdict => "⚠️ NO VERDICT",
    };
    let _ = writeln!(o, "## {verdict}: {} (run {})\n", text(&run.scenario), code(&run.run_id));
    for reason in &report.summary.no_verdict {
        let _ = writeln!(o, "- **No verdict**: {}", text(reason));
    }
    if !report.summary.no_verdict.is_empty() {
        let _ = writeln!(o);
    }
    let failed = report.thresholds.iter().filter(|t| !t.passed).count();
    let _ = writeln!(
        o,
        "Converged: **{}** · Thresholds: **{}** · {} s · driver {} · backend {} · seed {}{}\n",
        if report.summary.converged { "yes" } else { "no" },
        if failed == 0 { format!("{} passed", report.thresholds.len()) } else { format!("{failed} of {} failed", report.thresholds.len()) },
        fmt_num(run.duration_s),
        text(&run.driver),
        text(&run.backend),
        run.seed,
        run.git_sha.as_deref().map(|sha| format!(" · commit {}", code(sha))).unwrap_or_default(),
    );

    let c = &report.convergence;
    let _ = writeln!(o, "### Summary\n\n| Metric | Value |\n| --- | --- |");
    for row in crate::report::summary_rows(report) {
        let _ = writeln!(o, "| {} | {}{} |", row.label, row.value, row.unit);
    }

    if !report.thresholds.is_empty() {
        let _ = writeln!(o, "\n### Thresholds\n\n| | Threshold | Observed |\n| --- | --- | --- |");
        for t in &report.thresholds {
            let mark = if t.passed { "✅" } else { "❌" };
            let observed = t.observed.map_or_else(|| "absent".to_string(), fmt_num);
            let _ = writeln!(o, "| {mark} | {} | {observed} |", code(&t.expression));
        }
    }

    if !report.faults.is_empty() {
        let _ = writeln!(o, "\n### Faults\n\n| Fault | Target | Window | Service recovery | Pipeline recovery |\n| --- | --- | --- | --- | --- |");
        for f in &report.faults {
            let window = match f.end_s {
                Some(end) => format!("{}–{} s", fmt_num(f.start_s), fmt_num(end)),
                None => format!("at {} s", fmt_num(f.start_s)),
            };
            let _ = writeln!(
                o,
                "| {} | {} | {window} | {} | {} |",
                text(&f.kind),
                text(&f.target),
                fmt_opt(f.service_recovery_s, " s"),
                fmt_opt(f.pipeline_recovery_s, " s")
            );
        }
    }

    let _ = writeln!(
        o,
        "\n### Convergence ({}: {})\n\n| Entity | Source | Target | Matching | Missing | Extra | Mismatched | Duplicates |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        text(&c.target),
        if c.converged { "converged" } else { "diverged" }
    );
    for e in &c.entities {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            text(&e.entity),
            e.source_count,
            e.target_count,
            e.matching,
            e.missing_in_target,
            e.extra_in_target,
            e.mismatched,
            e.duplicates
        );
    }
    let counts: Vec<String> = c.anomaly_counts.iter().filter(|(_, n)| **n > 0).map(|(kind, n)| format!("{} {n}", kind_name(*kind))).collect();
    if !counts.is_empty() {
        let _ = writeln!(o, "\nAnomalies: {}", counts.join(", "));
    }
    if !c.anomalies.is_empty() {
        let _ = writeln!(o, "\n### Top anomalies\n");
        for a in c.anomalies.iter().take(TOP_ANOMALIES) {
            let hop = a.hop.as_deref().map(|h| format!(" Hop: {}.", text(h))).unwrap_or_default();
            let _ = writeln!(o, "- **{}** {} key {}: {}.{hop}", kind_name(a.kind), text(&a.entity), code(&a.key), text(&a.evidence));
            for f in a.fields.iter().take(FIELDS_PER_ANOMALY) {
                let side = |v: &Option<String>| v.as_deref().map_or_else(|| "absent".to_string(), code);
                let _ = writeln!(o, "  - {}: source {} → target {}", code(&f.field), side(&f.source), side(&f.target));
            }
        }
        if c.anomalies.len() > TOP_ANOMALIES {
            let _ = writeln!(o, "\n…and {} more in report.html", c.anomalies.len() - TOP_ANOMALIES);
        }
    }
    out
}

/// The snake_case name the JSON uses, so the summary and the data agree.
pub(crate) fn kind_name(kind: crate::verify::AnomalyKind) -> String {
    serde_json::to_value(kind).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_else(|| format!("{kind:?}"))
}

/// Plain text in a paragraph or table cell: Markdown punctuation escaped, one line.
fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '\\' | '`' | '*' | '[' | ']' | '<' | '>' | '|' | '#' => {
                out.push('\\');
                out.push(ch);
            }
            '\n' | '\r' => out.push(' '),
            _ => out.push(ch),
        }
    }
    out
}

/// A code span that survives backticks in the value and pipes inside tables.
fn code(s: &str) -> String {
    let one_line = s.replace(['\n', '\r'], " ").replace('|', "\\|");
    if one_line.contains('`') { format!("`` {one_line} ``") } else { format!("`{one_line}`") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markdown_and_table_syntax() {
        assert_eq!(text("a|b <x> *y*\nz"), "a\\|b \\<x\\> \\*y\\* z");
        assert_eq!(code("a|b"), "`a\\|b`");
        assert_eq!(code("a`b"), "`` a`b ``");
    }
}
