//! `campaign.html` and `summary.md` of a campaign: one self-contained page in the style of
//! the run report (its CSS, no script), led by the verdict, the recovery gates and a seeds
//! x fault-kinds matrix coloured by each seed's verdict.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::model::{Campaign, CampaignVerdict, RecoveryStats, SeedRun};
use crate::report::html::{STYLE, esc};
use crate::report::markdown::kind_name;
use crate::report::{fmt_num, fmt_opt};

const CAMPAIGN_STYLE: &str = r#"
table.matrix { width:auto; }
table.matrix th, table.matrix td { text-align:center; padding:4px 10px; }
table.matrix td.cell { min-width:44px; font-weight:600; }
td.pass, span.key.pass { background:#dafbe1; color:#116329; }
td.fail, span.key.fail { background:#ffd8d3; color:#a40e26; }
td.noverdict, span.key.noverdict { background:#fff1c2; color:#7d4e00; }
td.error, span.key.error { background:#e6e8ec; color:#3b4252; }
td.zero { color:#9aa3b2; font-weight:400; }
span.key { display:inline-block; padding:1px 8px; border-radius:4px; margin-right:6px; font-size:12px; font-weight:600; }
header.top.noverdict { border-left-color:var(--warn); }
.badge.noverdict { background:var(--warn); }
"#;

fn verdict_class(v: CampaignVerdict) -> &'static str {
    match v {
        CampaignVerdict::Pass => "pass",
        CampaignVerdict::Fail => "fail",
        CampaignVerdict::NoVerdict | CampaignVerdict::Interrupted => "noverdict",
    }
}

pub fn render(c: &Campaign) -> String {
    let mut o = String::new();
    let d = &c.derived;
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{} campaign {} – {}</title>\n<style>{STYLE}{CAMPAIGN_STYLE}</style>\n</head>\n<body>\n<main>\n",
        d.verdict.label(),
        esc(&c.scenario),
        esc(&c.campaign_id)
    );
    header(&mut o, c);
    matrix(&mut o, c);
    gates(&mut o, c);
    kinds(&mut o, c);
    seeds(&mut o, c);
    let _ = write!(o, "<footer>harness campaign · schema version {} · generated from campaign.json</footer>\n</main>\n</body>\n</html>\n", c.schema_version);
    o
}

fn header(o: &mut String, c: &Campaign) {
    let d = &c.derived;
    let class = verdict_class(d.verdict);
    let failed = c.failed_seeds();
    let gates_failed = d.gates.iter().filter(|g| !g.passed).count();
    let mut reasons = Vec::new();
    if c.interrupted {
        reasons.push("interrupted: the seeds that finished are shown".to_string());
    }
    if !failed.is_empty() {
        reasons.push(format!("{} of {} seeds failed ({})", failed.len(), c.runs.len(), join(&failed)));
    }
    if gates_failed > 0 {
        reasons.push(format!("{gates_failed} of {} recovery gates failed", d.gates.len()));
    }
    reasons.extend(d.no_verdict.iter().map(|r| format!("no verdict: {}", esc(r))));
    if reasons.is_empty() {
        reasons.push(format!("all {} seeds passed and all {} recovery gates held", c.runs.len(), d.gates.len()));
    }
    let shard = match (&c.shard, c.merged_from.is_empty()) {
        (Some(s), _) => format!("shard {s}"),
        (None, false) => format!("merged from {} shards", c.merged_from.len()),
        (None, true) => "unsharded".to_string(),
    };
    let _ = write!(
        o,
        "<header class=\"top {class}\">\n<span id=\"verdict\" class=\"badge {class}\">{}</span>\n<div><h1>{} <span class=\"muted\">· chaos campaign</span></h1>\n<p class=\"reasons\">{}</p>\n<p>campaign <code>{}</code> · {} · seeds <code>{}</code> of <code>{}</code> · load {} · {} → {}</p></div>\n</header>\n",
        d.verdict.label(),
        esc(&c.scenario),
        reasons.join("; "),
        esc(&c.campaign_id),
        esc(&shard),
        join(&c.seeds),
        join(&c.all_seeds),
        c.duration_s.map_or_else(|| "as the scenario".to_string(), |s| format!("{} s", fmt_num(s))),
        esc(&c.started_at),
        esc(&c.ended_at),
    );
}

fn matrix(o: &mut String, c: &Campaign) {
    let kinds: Vec<&str> = c.derived.kinds.iter().map(|k| k.kind.as_str()).collect();
    o.push_str("<section id=\"matrix\">\n<h2>Seeds × fault kinds</h2>\n<p class=\"muted\">Each cell: how many faults of the kind the seed's schedule had; colour: the seed's verdict. <span class=\"key pass\">PASS</span><span class=\"key fail\">FAIL</span><span class=\"key noverdict\">NO VERDICT</span><span class=\"key error\">ERROR</span></p>\n");
    if c.runs.is_empty() {
        o.push_str("<p class=\"muted\">No seed ran.</p>\n</section>\n");
        return;
    }
    o.push_str("<table class=\"matrix\">\n<tr><th>Seed</th><th>Verdict</th>");
    for k in &kinds {
        let _ = write!(o, "<th>{}</th>", esc(k));
    }
    o.push_str("</tr>\n");
    for run in &c.runs {
        let class = run.verdict.class();
        let counts: BTreeMap<&str, usize> = run.faults.iter().fold(BTreeMap::new(), |mut m, f| {
            *m.entry(f.kind.as_str()).or_default() += 1;
            m
        });
        let _ = write!(
            o,
            "<tr id=\"matrix-seed-{}\"><th><a href=\"#seed-{}\">{}</a></th><td class=\"{class}\">{}{}</td>",
            run.seed,
            run.seed,
            run.seed,
            run.verdict.label(),
            run.repro.as_deref().map(|r| format!(" · <a class=\"repro\" href=\"{}\">repro</a>", esc(r))).unwrap_or_default()
        );
        for k in &kinds {
            match counts.get(k) {
                Some(n) => {
                    let _ = write!(o, "<td class=\"cell {class}\">{n}</td>");
                }
                None => {
                    let _ = write!(o, "<td class=\"cell zero\">·</td>");
                }
            }
        }
        o.push_str("</tr>\n");
    }
    o.push_str("</table>\n</section>\n");
}

fn gates(o: &mut String, c: &Campaign) {
    let t = &c.recovery_targets;
    let _ = writeln!(
        o,
        "<section id=\"gates\">\n<h2>Recovery gates</h2>\n<p class=\"muted\">Every fault's pipeline recovery (consumer and slot lag back to their level before it) within its kind's target (default {} s); a fault that ended without a measured recovery fails its gate.</p>",
        fmt_num(t.default_s)
    );
    if c.derived.gates.is_empty() {
        o.push_str("<p class=\"muted\">No fault occurred.</p>\n</section>\n");
        return;
    }
    o.push_str("<table>\n<tr><th>Gate</th><th class=\"num\">Faults</th><th class=\"num\">p95</th><th class=\"num\">Max</th><th class=\"num\">Over target</th><th class=\"num\">Unmeasured</th><th>Failing faults</th><th>Result</th></tr>\n");
    for g in &c.derived.gates {
        let failing: Vec<String> = g
            .violations
            .iter()
            .map(|v| {
                format!(
                    "seed {} {} at {} s: {}",
                    v.seed,
                    esc(&v.target),
                    fmt_num(v.start_s),
                    v.pipeline_recovery_s.map_or_else(|| "not measured".into(), |s| format!("{} s", fmt_num(s)))
                )
            })
            .collect();
        let _ = writeln!(
            o,
            "<tr{}><td><code>{}</code></td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
            if g.passed { "" } else { " class=\"bad\"" },
            esc(&g.expression()),
            g.faults,
            fmt_opt(g.observed_p95_s, " s"),
            fmt_opt(g.observed_max_s, " s"),
            g.over_target,
            g.unmeasured,
            failing.join("<br>"),
            if g.passed { "ok" } else { "ko" },
            if g.passed { "pass" } else { "FAIL" }
        );
    }
    o.push_str("</table>\n</section>\n");
}

fn stats_cells(s: &RecoveryStats) -> String {
    format!(
        "<td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>",
        fmt_opt(s.p50, " s"),
        fmt_opt(s.p95, " s"),
        fmt_opt(s.max, " s"),
        s.unmeasured
    )
}

fn kinds(o: &mut String, c: &Campaign) {
    o.push_str("<section id=\"kinds\">\n<h2>Per fault kind</h2>\n<p class=\"muted\">Recovery percentiles: nearest rank over every fault of the kind whose recovery was measured; the unmeasured are counted, not taken as 0.</p>\n");
    if c.derived.kinds.is_empty() {
        o.push_str("<p class=\"muted\">No fault occurred.</p>\n</section>\n");
        return;
    }
    o.push_str("<table>\n<tr><th>Kind</th><th class=\"num\">Faults</th><th class=\"num\">Runs</th><th class=\"num\">Failed runs</th><th class=\"num\">Service p50</th><th class=\"num\">p95</th><th class=\"num\">max</th><th class=\"num\">unmeasured</th><th class=\"num\">Pipeline p50</th><th class=\"num\">p95</th><th class=\"num\">max</th><th class=\"num\">unmeasured</th></tr>\n");
    for k in &c.derived.kinds {
        let _ = writeln!(
            o,
            "<tr{}><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}{}</td>{}{}</tr>",
            if k.failed_runs > 0 { " class=\"bad\"" } else { "" },
            esc(&k.kind),
            k.faults,
            k.runs,
            k.failed_runs,
            if k.failed_seeds.is_empty() { String::new() } else { format!(" <span class=\"muted\">(seeds {})</span>", join(&k.failed_seeds)) },
            stats_cells(&k.service_recovery),
            stats_cells(&k.pipeline_recovery)
        );
    }
    o.push_str("</table>\n</section>\n");
}

fn seeds(o: &mut String, c: &Campaign) {
    o.push_str("<section id=\"seeds\">\n<h2>Seeds</h2>\n");
    for run in &c.runs {
        seed(o, run);
    }
    o.push_str("</section>\n");
}

fn seed(o: &mut String, run: &SeedRun) {
    let class = run.verdict.class();
    let report = run.report.as_deref().map(|r| {
        let html = r.strip_suffix(".json").map_or_else(|| r.to_string(), |stem| format!("{stem}.html"));
        format!(" · <a href=\"{}\">run report</a> <code>{}</code>", esc(&html), esc(r))
    });
    let repro = run.repro.as_deref().map(|r| format!(" · <a class=\"repro\" href=\"{}\">repro</a> <code>{}</code>", esc(r), esc(r)));
    let _ = write!(
        o,
        "<h3 id=\"seed-{}\">Seed {} <span class=\"key {class}\">{}</span></h3>\n<p>{}{}{} · {} s wall{}</p>\n",
        run.seed,
        run.seed,
        run.verdict.label(),
        run.run_id.as_deref().map_or_else(|| "no run report".to_string(), |id| format!("run <code>{}</code>", esc(id))),
        report.unwrap_or_default(),
        repro.unwrap_or_default(),
        fmt_num(run.wall_s),
        run.converged.map_or_else(String::new, |c| format!(" · {}", if c { "converged" } else { "<b>diverged</b>" })),
    );
    if let Some(error) = &run.error {
        let _ = writeln!(o, "<pre>{}</pre>", esc(error));
    }
    for reason in &run.no_verdict {
        let _ = writeln!(o, "<p>no verdict: {}</p>", esc(reason));
    }
    if !run.thresholds_failed.is_empty() {
        let failed: Vec<String> = run.thresholds_failed.iter().map(|t| format!("<code>{}</code>", esc(t))).collect();
        let _ = writeln!(o, "<p>thresholds failed: {}</p>", failed.join(" · "));
    }
    if !run.faults.is_empty() {
        o.push_str("<table>\n<tr><th>Fault</th><th>Target</th><th class=\"num\">Start</th><th class=\"num\">Duration</th><th class=\"num\">Service recovery</th><th class=\"num\">Pipeline recovery</th></tr>\n");
        for f in &run.faults {
            let _ = writeln!(
                o,
                "<tr><td>{}</td><td>{}</td><td class=\"num\">{} s</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                esc(&f.kind),
                esc(&f.target),
                fmt_num(f.start_s),
                fmt_opt(f.duration_s, " s"),
                fmt_opt(f.service_recovery_s, " s"),
                fmt_opt(f.pipeline_recovery_s, " s")
            );
        }
        o.push_str("</table>\n");
    }
    if !run.anomaly_counts.is_empty() {
        let counts: Vec<String> = run.anomaly_counts.iter().map(|(k, n)| format!("<b>{}</b> {n}", esc(&kind_name(*k)))).collect();
        let _ = writeln!(o, "<p>Anomalies: {}</p>", counts.join(" · "));
    }
    for a in &run.anomalies {
        let _ = writeln!(
            o,
            "<div class=\"anomaly\"><b>{}</b> · {} · key <code>{}</code><div class=\"evidence\">{}</div>{}</div>",
            esc(&kind_name(a.kind)),
            esc(&a.entity),
            esc(&a.key),
            esc(&a.evidence),
            a.hop.as_deref().map(|h| format!("<div class=\"evidence\"><b>Hop:</b> {}</div>", esc(h))).unwrap_or_default()
        );
    }
}

fn join(seeds: &[u64]) -> String {
    seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

/// `summary.md`: the verdict, the seeds that failed, per-kind recovery and the gates (for
/// a CI job summary).
pub fn markdown(c: &Campaign) -> String {
    let d = &c.derived;
    let mut o = String::new();
    let _ = writeln!(o, "## Chaos campaign `{}`: {}\n", c.scenario, d.verdict.label());
    let failed = c.failed_seeds();
    let _ = writeln!(
        o,
        "{} seeds ran of {} planned; failed: {}.\n",
        c.runs.len(),
        c.seeds.len(),
        if failed.is_empty() { "none".to_string() } else { join(&failed) }
    );
    for reason in &d.no_verdict {
        let _ = writeln!(o, "- no verdict: {reason}");
    }
    if !d.no_verdict.is_empty() {
        o.push('\n');
    }
    let repros: Vec<String> = c.runs.iter().filter_map(|r| r.repro.as_deref().map(|p| format!("- seed {}: reproducer `{p}`", r.seed))).collect();
    if !repros.is_empty() {
        let _ = writeln!(o, "{}\n", repros.join("\n"));
    }
    if d.kinds.is_empty() {
        o.push_str("No fault occurred.\n");
        return o;
    }
    o.push_str("| Fault kind | Faults | Failed runs | Pipeline recovery p95 | max | unmeasured | Target | Gate |\n|---|---:|---:|---:|---:|---:|---:|---|\n");
    for k in &d.kinds {
        let gate = d.gates.iter().find(|g| g.kind == k.kind);
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            k.kind,
            k.faults,
            k.failed_runs,
            fmt_opt(k.pipeline_recovery.p95, " s"),
            fmt_opt(k.pipeline_recovery.max, " s"),
            k.pipeline_recovery.unmeasured,
            gate.map_or_else(|| "—".into(), |g| format!("{} s", fmt_num(g.target_s))),
            gate.map_or("—", |g| if g.passed { "pass" } else { "**FAIL**" })
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::campaign::merge::tests::{campaign_of, six_rows};

    #[test]
    fn the_page_has_the_matrix_and_every_seed() {
        let all: Vec<u64> = (1..=6).collect();
        let c = campaign_of(six_rows(), None, &all);
        let html = render(&c);
        for id in ["verdict", "matrix", "gates", "kinds", "seeds"] {
            assert!(html.contains(&format!("id=\"{id}\"")), "{id}");
        }
        for seed in &all {
            assert!(html.contains(&format!("id=\"matrix-seed-{seed}\"")), "seed {seed} in the matrix");
            assert!(html.contains(&format!("id=\"seed-{seed}\"")), "seed {seed} detailed");
        }
        for kind in ["kill", "pause", "stop", "latency", "poison", "restart"] {
            assert!(html.contains(&format!("<th>{kind}</th>")), "{kind} column");
        }
        // Seed 1 passed with one kill; seed 2 failed (its cells red), seed 5 errored.
        assert!(html.contains("<td class=\"cell pass\">1</td>"));
        assert!(html.contains("<td class=\"cell fail\">1</td>"));
        assert!(html.contains("<tr id=\"matrix-seed-5\"><th><a href=\"#seed-5\">5</a></th><td class=\"error\">ERROR</td>"));
        assert!(html.contains("stack did not start"));
        assert!(html.contains("lost_change"));
        assert!(html.contains(&format!("<span id=\"verdict\" class=\"badge fail\">{}</span>", c.derived.verdict.label())));
        let md = markdown(&c);
        assert!(md.contains("FAIL") && md.contains("failed: 2") && md.contains("| kill |"), "{md}");
    }

    #[test]
    fn text_is_escaped() {
        let mut rows = six_rows();
        rows[0].faults[0].target = "<b>x</b>".into();
        let mut c = campaign_of(rows, None, &[1, 2, 3, 4, 5, 6]);
        c.scenario = "<script>".into();
        let html = render(&c);
        assert!(!html.contains("<script>") && !html.contains("<b>x</b>"));
    }
}
