//! `report.html`: one self-contained page (inline CSS, inline SVG, no script, no network)
//! that reads well on a laptop screen and prints.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::markdown::kind_name;
use super::model::{FaultRecord, Report, Sample};
use super::svg::{Band, Chart, Series, line_chart};
use super::{fmt_num, fmt_opt, passed};
use crate::verify::Percentiles;

pub(crate) const STYLE: &str = r#"
:root { --fg:#1d2330; --muted:#5b6475; --line:#d9dde5; --bg:#f5f6f8; --card:#fff; --pass:#1a7f37; --fail:#cf222e; --warn:#9a6700; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--fg); font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif; }
main { max-width:1200px; margin:0 auto; padding:24px 28px 48px; }
header.top { display:flex; align-items:center; gap:20px; padding:20px 24px; background:var(--card); border:1px solid var(--line); border-left:8px solid var(--fail); border-radius:8px; }
header.top.pass { border-left-color:var(--pass); }
header.top h1 { margin:0 0 4px; font-size:22px; }
header.top p { margin:0; color:var(--muted); }
header.top p.reasons { color:var(--fg); font-weight:600; margin-bottom:2px; }
.badge { display:inline-block; padding:6px 14px; border-radius:6px; font-weight:700; letter-spacing:.04em; color:#fff; background:var(--fail); }
.badge.pass { background:var(--pass); }
.badge.small { padding:2px 8px; font-size:12px; }
.badge.outline { background:none; border:2px solid currentColor; color:var(--fail); }
.badge.outline.pass { color:var(--pass); }
.spacer { flex:1; }
section { margin-top:22px; background:var(--card); border:1px solid var(--line); border-radius:8px; padding:16px 20px; }
h2 { margin:0 0 12px; font-size:17px; }
h3 { margin:16px 0 8px; font-size:14px; color:var(--muted); text-transform:uppercase; letter-spacing:.05em; }
.cards { display:grid; grid-template-columns:repeat(auto-fill,minmax(170px,1fr)); gap:12px; }
.card { border:1px solid var(--line); border-radius:6px; padding:10px 12px; }
.card .label { color:var(--muted); font-size:12px; }
.card .value { font-size:20px; font-weight:600; font-variant-numeric:tabular-nums; }
.card .value small { font-size:12px; font-weight:400; color:var(--muted); }
table { border-collapse:collapse; width:100%; font-variant-numeric:tabular-nums; }
th, td { text-align:left; padding:6px 10px; border-bottom:1px solid var(--line); vertical-align:top; }
th { font-size:12px; color:var(--muted); font-weight:600; background:#fafbfc; }
td.num, th.num { text-align:right; }
tr.bad td { background:#fff5f5; }
td.ok { color:var(--pass); font-weight:600; }
td.ko { color:var(--fail); font-weight:600; }
code, pre { font-family:ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace; font-size:12.5px; }
pre { background:#f6f8fa; border:1px solid var(--line); border-radius:6px; padding:10px; overflow:auto; max-height:360px; }
.meta { display:grid; grid-template-columns:max-content 1fr; gap:4px 16px; margin:0; }
.meta dt { color:var(--muted); }
.meta dd { margin:0; }
.grid2 { display:grid; grid-template-columns:1fr 1fr; gap:20px; }
.chart { width:100%; height:auto; display:block; }
.chart .plot { fill:#fff; stroke:var(--line); }
.chart .grid { stroke:#eceef2; }
.chart .tick { fill:var(--muted); font-size:12px; }
.chart .axis { fill:var(--muted); font-size:12px; }
.chart .line { fill:none; stroke-width:2; stroke-linejoin:round; }
.chart .legend line { stroke-width:3; }
.chart .legend text { font-size:12px; fill:var(--fg); }
.chart .fault rect { fill:#cf222e; fill-opacity:.12; stroke:#cf222e; stroke-opacity:.5; stroke-dasharray:3 3; }
.chart .fault text { fill:#a40e26; font-size:11px; font-weight:600; }
.chart .empty { fill:var(--muted); font-size:14px; }
.anomaly { border:1px solid var(--line); border-left:4px solid var(--warn); border-radius:6px; padding:10px 14px; margin:10px 0; }
.anomaly .evidence { margin:6px 0; }
.muted { color:var(--muted); }
details summary { cursor:pointer; color:var(--muted); }
footer { margin-top:24px; color:var(--muted); font-size:12px; text-align:center; }
@media (max-width: 800px) { .grid2 { grid-template-columns:1fr; } }
"#;

pub fn render(report: &Report) -> String {
    let mut o = String::new();
    let run = &report.run;
    let ok = passed(report);
    // `write!` into a String cannot fail; the results are discarded on purpose.
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{} {} – {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n",
        super::verdict(report).label(),
        esc(&run.scenario),
        esc(&run.run_id)
    );
    header(&mut o, report, ok);
    summary(&mut o, report);
    thresholds(&mut o, report);
    charts(&mut o, report);
    faults(&mut o, &report.faults);
    convergence(&mut o, report);
    validation_and_load(&mut o, report);
    resources(&mut o, &report.series);
    metadata(&mut o, report);
    let _ = write!(o, "<footer>harness report · schema version {} · generated from report.json</footer>\n</main>\n</body>\n</html>\n", report.schema_version);
    o
}

fn header(o: &mut String, report: &Report, ok: bool) {
    let run = &report.run;
    let c = &report.convergence;
    let failed = report.thresholds.iter().filter(|t| !t.passed).count();
    let class = if ok { "pass" } else { "fail" };
    let mut reasons: Vec<String> = report.summary.no_verdict.iter().map(|r| format!("no verdict: {}", esc(r))).collect();
    if failed > 0 {
        reasons.push(format!("{failed} of {} thresholds failed", report.thresholds.len()));
    }
    if !c.converged {
        let anomalies: u64 = c.anomaly_counts.values().sum();
        reasons.push(format!("the target diverged ({anomalies} {})", if anomalies == 1 { "anomaly" } else { "anomalies" }));
    }
    if reasons.is_empty() {
        reasons.push(format!("all {} thresholds passed and the target converged", report.thresholds.len()));
    }
    let _ = write!(
        o,
        "<header class=\"top {class}\">\n<span id=\"verdict\" class=\"badge {class}\">{}</span>\n<div><h1>{} <span class=\"muted\">· CDC run report</span></h1>\n<p class=\"reasons\">{}</p>\n<p>run <code>{}</code> · {} · {} s · {} driver · {} backend</p></div>\n<div class=\"spacer\"></div>\n<span id=\"converged\" class=\"badge outline {}\">{}</span>\n</header>\n",
        super::verdict(report).label(),
        esc(&run.scenario),
        reasons.join("; "),
        esc(&run.run_id),
        esc(&run.started_at),
        fmt_num(run.duration_s),
        esc(&run.driver),
        esc(&run.backend),
        if c.converged { "pass" } else { "fail" },
        if c.converged { "CONVERGED" } else { "DIVERGED" },
    );
}

fn summary(o: &mut String, report: &Report) {
    o.push_str("<section id=\"summary\">\n<h2>Summary</h2>\n<div class=\"cards\">\n");
    for row in crate::report::summary_rows(report) {
        let absent = if row.value == crate::report::NOT_MEASURED { " absent" } else { "" };
        let _ = writeln!(
            o,
            "<div class=\"card{absent}\"><div class=\"label\">{}</div><div class=\"value\">{}<small>{}</small></div></div>",
            esc(row.label),
            esc(&row.value),
            esc(row.unit)
        );
    }
    o.push_str("</div>\n</section>\n");
}

fn thresholds(o: &mut String, report: &Report) {
    o.push_str("<section id=\"thresholds\">\n<h2>Thresholds</h2>\n");
    if report.thresholds.is_empty() {
        o.push_str("<p class=\"muted\">The scenario declares no thresholds.</p>\n</section>\n");
        return;
    }
    o.push_str("<table>\n<tr><th>Threshold</th><th>Metric</th><th class=\"num\">Observed</th><th>Result</th></tr>\n");
    for t in &report.thresholds {
        let _ = writeln!(
            o,
            "<tr{}><td><code>{}</code></td><td>{}</td><td class=\"num\">{}</td><td class=\"{}\">{}</td></tr>",
            if t.passed { "" } else { " class=\"bad\"" },
            esc(&t.expression),
            esc(&t.metric),
            t.observed.map_or_else(|| "absent".to_string(), fmt_num),
            if t.passed { "ok" } else { "ko" },
            if t.passed { "pass" } else { "FAIL" }
        );
    }
    o.push_str("</table>\n</section>\n");
}

fn charts(o: &mut String, report: &Report) {
    let bands: Vec<Band> = report.faults.iter().map(fault_band).collect();
    let series = &report.series;
    let line = |name: &str, f: &dyn Fn(&Sample) -> Option<f64>| Series { name: name.to_string(), points: series.iter().map(|s| (s.t, f(s))).collect() };
    let per_service = |f: &dyn Fn(&Sample) -> &BTreeMap<String, f64>| -> Vec<Series> {
        let services: BTreeSet<&String> = series.iter().flat_map(|s| f(s).keys()).collect();
        services.into_iter().map(|name| Series { name: name.clone(), points: series.iter().map(|s| (s.t, f(s).get(name).copied())).collect() }).collect()
    };
    let charts = [
        (
            "Throughput",
            Chart {
                id: "chart-throughput",
                unit: "per second: source ops, applied events",
                series: vec![line("writes (ops/s)", &|s| Some(s.write_rate)), line("applied (events/s)", &|s| s.sink_rate)],
                bands: &bands,
            },
        ),
        (
            "End-to-end latency",
            Chart {
                id: "chart-latency",
                unit: "ms (commit → applied)",
                series: vec![
                    line("p50", &|s| s.e2e_p50_ms),
                    line("p95", &|s| s.e2e_p95_ms),
                    line("p99", &|s| s.e2e_p99_ms),
                    line("capture p95", &|s| s.capture_p95_ms),
                    line("apply p95", &|s| s.apply_p95_ms),
                ],
                bands: &bands,
            },
        ),
        (
            "Consumer lag",
            Chart {
                id: "chart-lag",
                unit: "events (all partitions; gaps: not measured)",
                series: vec![line("lag", &|s| s.lag.map(|v| v as f64))],
                bands: &bands,
            },
        ),
        (
            "Replication slot lag",
            Chart {
                id: "chart-slot-lag",
                unit: "KiB of WAL behind",
                series: vec![line("slot lag", &|s| s.slot_lag_bytes.map(|v| v as f64 / 1024.0))],
                bands: &bands,
            },
        ),
        ("CPU per service", Chart { id: "chart-cpu", unit: "% of one core", series: per_service(&|s| &s.cpu_pct), bands: &bands }),
        ("Memory per service", Chart { id: "chart-memory", unit: "PSS, MiB", series: per_service(&|s| &s.rss_mb), bands: &bands }),
    ];
    o.push_str("<section id=\"charts\">\n<h2>Over time</h2>\n");
    if !bands.is_empty() {
        o.push_str("<p class=\"muted\">Shaded: fault windows (hover for details).</p>\n");
    }
    for (title, chart) in &charts {
        let _ = write!(o, "<h3>{title}</h3>\n{}", line_chart(chart));
    }
    o.push_str("</section>\n");
}

/// Seconds from the end of load to agreement; "never" when the target did not converge.
pub(crate) fn time_to_converge(report: &Report, unit: &str) -> String {
    match report.convergence.time_to_converge_ms {
        Some(ms) => format!("{}{unit}", fmt_num(ms as f64 / 1000.0)),
        None if !report.convergence.converged => "never".into(),
        None => "—".into(),
    }
}

/// A fault's window: until it ended, else until the service recovered, else an instant.
fn fault_band(f: &FaultRecord) -> Band {
    let end = f.end_s.or(f.service_recovery_s.map(|r| f.start_s + r)).unwrap_or(f.start_s);
    let mut title = format!("{} {} at {} s", f.kind, f.target, fmt_num(f.start_s));
    if let Some(end) = f.end_s {
        let _ = write!(title, " until {} s", fmt_num(end));
    }
    for (k, v) in &f.parameters {
        let _ = write!(title, ", {k}={v}");
    }
    let _ = write!(title, "; service recovery {}, pipeline recovery {}", fmt_opt(f.service_recovery_s, " s"), fmt_opt(f.pipeline_recovery_s, " s"));
    Band { start: f.start_s, end, label: format!("{} {}", f.kind, f.target), title }
}

fn faults(o: &mut String, faults: &[FaultRecord]) {
    o.push_str("<section id=\"faults\">\n<h2>Faults</h2>\n");
    if faults.is_empty() {
        o.push_str("<p class=\"muted\">No faults were injected.</p>\n</section>\n");
        return;
    }
    o.push_str("<table>\n<tr><th>Fault</th><th>Target</th><th>Parameters</th><th class=\"num\">Start</th><th class=\"num\">End</th><th class=\"num\">Service recovery</th><th class=\"num\">Pipeline recovery</th></tr>\n");
    for f in faults {
        let params: Vec<String> = f.parameters.iter().map(|(k, v)| format!("{}={}", esc(k), esc(v))).collect();
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td class=\"num\">{} s</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            esc(&f.kind),
            esc(&f.target),
            params.join(" "),
            fmt_num(f.start_s),
            fmt_opt(f.end_s, " s"),
            fmt_opt(f.service_recovery_s, " s"),
            fmt_opt(f.pipeline_recovery_s, " s")
        );
    }
    o.push_str("</table>\n</section>\n");
}

fn convergence(o: &mut String, report: &Report) {
    let c = &report.convergence;
    let _ = write!(
        o,
        "<section id=\"convergence\">\n<h2>Convergence <span class=\"badge small {}\">{}</span></h2>\n<p>Target <b>{}</b> · {} rows compared in {} ms · time to converge {}{}</p>\n",
        if c.converged { "pass" } else { "fail" },
        if c.converged { "converged" } else { "diverged" },
        esc(&c.target),
        c.rows_compared,
        c.elapsed_ms,
        time_to_converge(report, " s"),
        if c.untracked_differences > 0 { format!(" · {} untracked differences", c.untracked_differences) } else { String::new() }
    );
    o.push_str("<table>\n<tr><th>Entity</th><th class=\"num\">Source</th><th class=\"num\">Target</th><th class=\"num\">Matching</th><th class=\"num\">Missing</th><th class=\"num\">Extra</th><th class=\"num\">Mismatched</th><th class=\"num\">Duplicates</th><th class=\"num\">E2E p95 (ms)</th></tr>\n");
    for e in &c.entities {
        let bad = e.missing_in_target + e.extra_in_target + e.mismatched + e.duplicates > 0;
        let p95 = report.pipeline.e2e_latency_ms_per_entity.get(&e.entity).map(|p| p.p95);
        let _ = writeln!(
            o,
            "<tr{}><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            if bad { " class=\"bad\"" } else { "" },
            esc(&e.entity),
            e.source_count,
            e.target_count,
            e.matching,
            e.missing_in_target,
            e.extra_in_target,
            e.mismatched,
            e.duplicates,
            fmt_opt(p95, "")
        );
    }
    o.push_str("</table>\n");
    let counts: Vec<String> = c.anomaly_counts.iter().filter(|(_, n)| **n > 0).map(|(k, n)| format!("<b>{}</b> {n}", esc(&kind_name(*k)))).collect();
    if !counts.is_empty() {
        let _ = writeln!(o, "<h3>Anomalies</h3>\n<p>{}</p>", counts.join(" · "));
    }
    for a in &c.anomalies {
        let _ = write!(
            o,
            "<div class=\"anomaly\"><b>{}</b> · {} · key <code>{}</code>\n<div class=\"evidence\">{}</div>\n{}",
            esc(&kind_name(a.kind)),
            esc(&a.entity),
            esc(&a.key),
            esc(&a.evidence),
            a.hop.as_deref().map(|h| format!("<div class=\"evidence\"><b>Hop:</b> {}</div>\n", esc(h))).unwrap_or_default()
        );
        if !a.fields.is_empty() {
            o.push_str("<table>\n<tr><th>Field</th><th>Source</th><th>Target</th></tr>\n");
            for f in &a.fields {
                let side =
                    |v: &Option<String>| v.as_deref().map_or_else(|| "<span class=\"muted\">absent</span>".to_string(), |v| format!("<code>{}</code>", esc(v)));
                let _ = writeln!(o, "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>", esc(&f.field), side(&f.source), side(&f.target));
            }
            o.push_str("</table>\n");
        }
        let pretty = |v: &Option<serde_json::Value>| v.as_ref().and_then(|v| serde_json::to_string_pretty(v).ok()).unwrap_or_else(|| "absent".into());
        let _ = write!(
            o,
            "<details><summary>source row and target record</summary><div class=\"grid2\"><pre>{}</pre><pre>{}</pre></div></details>\n</div>\n",
            esc(&pretty(&a.source_row)),
            esc(&pretty(&a.target_record))
        );
    }
    if !c.never_converged.is_empty() {
        let keys: Vec<String> = c.never_converged.iter().map(|k| format!("<code>{}</code>", esc(k))).collect();
        let _ = writeln!(o, "<h3>Never converged</h3>\n<p>{}</p>", keys.join(" "));
    }
    o.push_str("</section>\n");
}

fn validation_and_load(o: &mut String, report: &Report) {
    let v = &report.validation;
    let l = &report.load;
    let _ = write!(
        o,
        "<section id=\"validation\">\n<div class=\"grid2\">\n<div>\n<h2>Validation and DLQ</h2>\n<table>\n<tr><td>Passed</td><td class=\"num\">{}</td></tr>\n<tr><td>Sent to the DLQ</td><td class=\"num\">{}</td></tr>\n<tr><td>Stale events skipped</td><td class=\"num\">{}</td></tr>\n",
        v.passed, v.dlq, v.stale_skipped
    );
    for (rule, n) in &v.failed_by_rule {
        let _ = writeln!(o, "<tr class=\"bad\"><td>Failed rule <code>{}</code></td><td class=\"num\">{n}</td></tr>", esc(rule));
    }
    let _ = write!(
        o,
        "</table>\n</div>\n<div>\n<h2>Load</h2>\n<table>\n<tr><td>Achieved / target rate</td><td class=\"num\">{} / {} ops/s</td></tr>\n<tr><td>Write errors</td><td class=\"num\">{}</td></tr>\n",
        fmt_num(l.achieved_rate),
        fmt_num(l.target_rate),
        l.errors
    );
    for (kind, n) in &l.ops_by_kind {
        let _ = writeln!(o, "<tr><td>Ops <code>{}</code></td><td class=\"num\">{n}</td></tr>", esc(kind));
    }
    o.push_str("</table>\n</div>\n</div>\n<h3>Latency percentiles (ms)</h3>\n<table>\n<tr><th>Measure</th><th class=\"num\">Count</th><th class=\"num\">p50</th><th class=\"num\">p90</th><th class=\"num\">p95</th><th class=\"num\">p99</th><th class=\"num\">Max</th></tr>\n");
    let p = &report.pipeline;
    let mut rows: Vec<(String, &Percentiles)> = vec![
        ("End-to-end (commit → applied)".into(), &p.e2e_latency_ms),
        ("Probe (commit → visible)".into(), &p.probe_latency_ms),
        ("Workload writes".into(), &l.write_latency_ms),
    ];
    rows.extend(p.e2e_latency_ms_per_entity.iter().map(|(e, pct)| (format!("End-to-end · {e}"), pct)));
    for (name, pct) in rows {
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            esc(&name),
            pct.count,
            fmt_num(pct.p50),
            fmt_num(pct.p90),
            fmt_num(pct.p95),
            fmt_num(pct.p99),
            fmt_num(pct.max)
        );
    }
    o.push_str("</table>\n</section>\n");
}

fn resources(o: &mut String, series: &[Sample]) {
    let mut cpu: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut rss: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for s in series {
        for (name, v) in &s.cpu_pct {
            cpu.entry(name).or_default().push(*v);
        }
        for (name, v) in &s.rss_mb {
            rss.entry(name).or_default().push(*v);
        }
    }
    o.push_str("<section id=\"resources\">\n<h2>Resources per service</h2>\n");
    let services: BTreeSet<&str> = cpu.keys().chain(rss.keys()).copied().collect();
    if services.is_empty() {
        o.push_str("<p class=\"muted\">No resource samples.</p>\n</section>\n");
        return;
    }
    o.push_str("<table>\n<tr><th>Service</th><th class=\"num\">CPU avg (%)</th><th class=\"num\">CPU max (%)</th><th class=\"num\">PSS avg (MiB)</th><th class=\"num\">PSS max (MiB)</th></tr>\n");
    let stats = |v: Option<&Vec<f64>>| match v {
        Some(v) if !v.is_empty() => (fmt_num(v.iter().sum::<f64>() / v.len() as f64), fmt_num(v.iter().copied().fold(f64::MIN, f64::max))),
        _ => ("—".into(), "—".into()),
    };
    for name in services {
        let (cpu_avg, cpu_max) = stats(cpu.get(name));
        let (rss_avg, rss_max) = stats(rss.get(name));
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td class=\"num\">{cpu_avg}</td><td class=\"num\">{cpu_max}</td><td class=\"num\">{rss_avg}</td><td class=\"num\">{rss_max}</td></tr>",
            esc(name)
        );
    }
    o.push_str("</table>\n</section>\n");
}

fn metadata(o: &mut String, report: &Report) {
    let run = &report.run;
    let m = &run.machine;
    let rows = [
        ("Run id", run.run_id.clone()),
        ("Scenario", run.scenario.clone()),
        ("Seed", run.seed.to_string()),
        ("Driver", run.driver.clone()),
        ("Backend", run.backend.clone()),
        ("Git commit", run.git_sha.clone().unwrap_or_else(|| "—".into())),
        ("Started", run.started_at.clone()),
        ("Ended", run.ended_at.clone()),
        ("Duration", format!("{} s", fmt_num(run.duration_s))),
        ("Machine", format!("{} cores, {} MiB, {}", m.cores, m.memory_mb, m.os)),
    ];
    o.push_str("<section id=\"run\">\n<div class=\"grid2\">\n<div>\n<h2>Run</h2>\n<dl class=\"meta\">\n");
    for (k, v) in rows {
        let _ = writeln!(o, "<dt>{k}</dt><dd>{}</dd>", esc(&v));
    }
    o.push_str("</dl>\n</div>\n<div>\n<h2>Versions</h2>\n<dl class=\"meta\">\n");
    for (k, v) in &run.versions {
        let _ = writeln!(o, "<dt>{}</dt><dd><code>{}</code></dd>", esc(k), esc(v));
    }
    let config = serde_json::to_string_pretty(&report.config).unwrap_or_default();
    let _ = write!(
        o,
        "</dl>\n</div>\n</div>\n<details id=\"config\"><summary>Configuration as run (secrets redacted)</summary><pre>{}</pre></details>\n</section>\n",
        esc(&config)
    );
}

/// Escapes text for HTML content and quoted attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::thresholds::representative_report;

    #[test]
    fn escapes_report_text() {
        let mut report = representative_report();
        report.run.scenario = "<script>alert('x')</script>".into();
        report.convergence.entities.push(crate::verify::EntityOutcome { entity: "a&b".into(), ..Default::default() });
        let html = render(&report);
        assert!(!html.contains("<script>"), "unescaped scenario");
        assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
        assert!(html.contains("<td>a&amp;b</td>"));
    }

    #[test]
    fn empty_report_renders_every_section() {
        let html = render(&representative_report());
        for id in ["verdict", "summary", "thresholds", "charts", "faults", "convergence", "validation", "resources", "run"] {
            assert!(html.contains(&format!("id=\"{id}\"")), "{id}");
        }
        assert!(html.contains("no samples"));
    }
}
