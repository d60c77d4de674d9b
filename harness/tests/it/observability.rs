//! The observability assets (prometheus/, grafana/) against the real sink: every metric a
//! dashboard or rule queries is one the sink exports, dashboards use only provisioned
//! data sources, and the alert rules pass promtool's checks and unit tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use harness::testing::TestStack;
use serde_json::Value;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Metrics that do not come from the sink, and where they come from.
fn external_metric(name: &str, source: &str) -> bool {
    // `up` is Prometheus' own per-target series; otelcol_* is the collector's self-telemetry
    // (scrape job otel-collector), used only by the collector dashboard.
    name == "up" || (name.starts_with("otelcol_") && source.ends_with("cdc-collector.json"))
}

/// Keywords, and aggregation operators (`sum by (x) (...)` puts no `(` right after `sum`).
const PROMQL_KEYWORDS: [&str; 27] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
    "atan2",
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
    "limitk",
];

/// Metric names in a PromQL expression: identifiers that are not functions, keywords,
/// label names (inside `{}` or grouping clauses) or durations (inside `[]`).
fn promql_metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut skip_group = false;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                while i < chars.len() && chars[i] != close {
                    i += 1;
                }
                i += 1;
            }
            '(' if skip_group => {
                while i < chars.len() && chars[i] != ')' {
                    i += 1;
                }
                skip_group = false;
                i += 1;
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                let is_call = j < chars.len() && chars[j] == '(';
                let lower = word.to_ascii_lowercase();
                if ["by", "without", "on", "ignoring", "group_left", "group_right"].contains(&lower.as_str()) {
                    skip_group = true;
                } else if !is_call && !PROMQL_KEYWORDS.contains(&lower.as_str()) {
                    names.insert(word);
                }
            }
            // Numbers (incl. 1e-9) and template variables ($__rate_interval outside [] is not PromQL).
            c if c.is_ascii_digit() || c == '.' || c == '$' => {
                i += 1;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.' || chars[i] == '_') {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// `expr:` / `record:` values of a Prometheus rule file (single-line or `|` blocks).
fn rule_file_entries(text: &str) -> (Vec<String>, BTreeSet<String>) {
    let lines: Vec<&str> = text.lines().collect();
    let mut exprs = Vec::new();
    let mut records = BTreeSet::new();
    let mut i = 0;
    while i < lines.len() {
        let trimmed = lines[i].trim_start();
        let indent = lines[i].len() - trimmed.len();
        if let Some(record) = trimmed.strip_prefix("- record:").or_else(|| trimmed.strip_prefix("record:")) {
            records.insert(record.trim().to_string());
        }
        if let Some(value) = trimmed.strip_prefix("expr:") {
            let value = value.trim();
            if value == "|" || value == ">" {
                let mut block = String::new();
                while i + 1 < lines.len() {
                    let next = lines[i + 1];
                    let next_indent = next.len() - next.trim_start().len();
                    if !next.trim().is_empty() && next_indent <= indent {
                        break;
                    }
                    block.push_str(next.trim());
                    block.push(' ');
                    i += 1;
                }
                exprs.push(block);
            } else {
                exprs.push(value.to_string());
            }
        }
        i += 1;
    }
    (exprs, records)
}

fn dashboards() -> anyhow::Result<Vec<(PathBuf, Value)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(workspace().join("grafana/dashboards"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let value: Value = serde_json::from_str(&std::fs::read_to_string(&path)?).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            out.push((path, value));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// (source file, PromQL expression) pairs, and the recording rules' names.
type Queries = (Vec<(String, String)>, BTreeSet<String>);

/// Every Prometheus query in the dashboards and rule files, and the recording rules' names.
fn queried_expressions() -> anyhow::Result<Queries> {
    let mut exprs = Vec::new();
    let mut records = BTreeSet::new();
    for file in ["recording.yml", "alerts.yml"] {
        let path = workspace().join("prometheus/rules").join(file);
        let (e, r) = rule_file_entries(&std::fs::read_to_string(&path)?);
        exprs.extend(e.into_iter().map(|e| (path.display().to_string(), e)));
        records.extend(r);
    }
    for (path, dashboard) in dashboards()? {
        let source = path.display().to_string();
        for panel in dashboard["panels"].as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if target.pointer("/datasource/uid").and_then(Value::as_str) == Some("prometheus") {
                    if let Some(expr) = target["expr"].as_str() {
                        exprs.push((source.clone(), expr.to_string()));
                    }
                }
            }
        }
        for variable in dashboard.pointer("/templating/list").and_then(Value::as_array).into_iter().flatten() {
            // label_values(<metric>, <label>): only the metric is a metric.
            if let Some(query) = variable.pointer("/query/query").and_then(Value::as_str) {
                let inner = query.trim_start_matches("label_values(").split(',').next().unwrap_or_default();
                exprs.push((source.clone(), inner.to_string()));
            }
        }
    }
    Ok((exprs, records))
}

/// Family names in Prometheus/OpenMetrics text, with the sample names they produce.
fn exported_names(metrics_text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in metrics_text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            names.insert(name.to_string());
            match kind {
                "counter" => {
                    names.insert(format!("{}_total", name.trim_end_matches("_total")));
                }
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
                _ => {}
            }
        } else if !line.starts_with('#') {
            if let Some(name) = line.split(['{', ' ']).next().filter(|n| !n.is_empty()) {
                names.insert(name.to_string());
            }
        }
    }
    names
}

/// Families the sink registers (sink/src/metrics.rs), as the sample names they produce.
/// prometheus-client renders a family only once it has a series, so a scrape shows only
/// what this run happened to touch (no DLQ, no errors...); the registrations say the rest,
/// and the test checks that every scraped name is among them.
fn declared_sink_names() -> anyhow::Result<BTreeSet<String>> {
    let source = std::fs::read_to_string(workspace().join("sink/src/metrics.rs"))?;
    // Field name -> kind, from the struct declaration (`processed: Family<Labels, Counter>,`).
    let mut kinds = BTreeMap::new();
    for line in source.lines() {
        let line = line.trim();
        if let Some((field, ty)) = line.strip_suffix(',').and_then(|l| l.split_once(": ")) {
            let kind = if ty.contains("Histogram") {
                "histogram"
            } else if ty.contains("Counter") {
                "counter"
            } else if ty.contains("Gauge") {
                "gauge"
            } else {
                continue;
            };
            kinds.insert(field.trim().to_string(), kind);
        }
    }
    let prefix = source.split("Registry::with_prefix(\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("sink").to_string();
    let mut names = BTreeSet::new();
    for call in source.split(".register(").skip(1) {
        let mut literals = call.split('"');
        let (Some(_), Some(name)) = (literals.next(), literals.next()) else {
            continue;
        };
        let Some(field) = call.split(".clone()").next().and_then(|before| before.rsplit(|c: char| !(c.is_alphanumeric() || c == '_')).next()) else {
            continue;
        };
        let family = format!("{prefix}_{name}");
        // The family name itself (OpenMetrics `# TYPE` lines) and its sample names.
        names.insert(family.clone());
        match kinds.get(field).copied() {
            Some("counter") => names.insert(format!("{family}_total")),
            Some("histogram") => ["_bucket", "_sum", "_count"].iter().all(|s| names.insert(format!("{family}{s}"))),
            Some(_) => names.insert(family),
            None => anyhow::bail!("metrics.rs: cannot tell the type of {family} (field {field})"),
        };
    }
    anyhow::ensure!(names.len() > 10, "parsed only {names:?} from sink/src/metrics.rs");
    Ok(names)
}

/// Polls /metrics until `needle` appears (the sink processes the snapshot after /readyz).
async fn scrape_until(http: &str, needles: &[&str]) -> anyhow::Result<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let text = reqwest::get(format!("{http}/metrics")).await?.error_for_status()?.text().await?;
        if needles.iter().all(|n| text.contains(n)) || std::time::Instant::now() > deadline {
            return Ok(text);
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

#[test]
fn promql_names_are_extracted_without_functions_labels_or_durations() {
    let names = promql_metric_names(
        r#"histogram_quantile(0.95, sum by (le, entity) (rate(sink_e2e_latency_seconds_bucket{entity=~"$entity"}[$__rate_interval]))) > 1e-9 and on (job) up{job="sink"} == 0"#,
    );
    assert_eq!(names, BTreeSet::from(["sink_e2e_latency_seconds_bucket".to_string(), "up".to_string()]));
    let names = promql_metric_names("cdc:sink_errors:rate5m / cdc:sink_events:rate5m");
    assert_eq!(names.len(), 2);
    let (exprs, records) = rule_file_entries(
        "groups:\n  - rules:\n      - record: a:b\n        expr: |\n          sum(x)\n          / sum(y)\n      - alert: A\n        expr: a:b > 1\n",
    );
    assert_eq!(records, BTreeSet::from(["a:b".to_string()]));
    assert_eq!(exprs.len(), 2);
    assert_eq!(promql_metric_names(&exprs[0]), BTreeSet::from(["x".to_string(), "y".to_string()]));
}

#[test]
fn dashboards_parse_and_use_only_provisioned_datasources() -> anyhow::Result<()> {
    let provisioning = std::fs::read_to_string(workspace().join("grafana/provisioning/datasources/datasources.yml"))?;
    let provisioned: BTreeSet<String> = provisioning.lines().filter_map(|l| l.trim().strip_prefix("uid:").map(|u| u.trim().to_string())).collect();
    assert_eq!(provisioned, BTreeSet::from(["loki".to_string(), "prometheus".to_string(), "tempo".to_string()]));

    fn walk(value: &Value, path: &str, found: &mut Vec<(String, String)>) {
        match value {
            Value::Object(map) => {
                if let Some(uid) = map.get("datasource").and_then(|d| d.get("uid")).and_then(Value::as_str) {
                    found.push((path.to_string(), uid.to_string()));
                }
                for (k, v) in map {
                    walk(v, &format!("{path}/{k}"), found);
                }
            }
            Value::Array(items) => items.iter().enumerate().for_each(|(i, v)| walk(v, &format!("{path}/{i}"), found)),
            _ => {}
        }
    }
    let all = dashboards()?;
    assert!(all.len() >= 8, "expected the eight SPEC dashboards, found {}", all.len());
    let mut uids = BTreeSet::new();
    for (path, dashboard) in &all {
        let uid = dashboard["uid"].as_str().unwrap_or_default().to_string();
        assert!(!uid.is_empty() && uids.insert(uid.clone()), "{}: missing or duplicate uid {uid}", path.display());
        let panels = dashboard["panels"].as_array().map(Vec::len).unwrap_or(0);
        assert!(panels > 0, "{} has no panels", path.display());
        for panel in dashboard["panels"].as_array().into_iter().flatten() {
            assert!(panel.pointer("/datasource/uid").is_some(), "{}: panel {} names no data source", path.display(), panel["title"]);
        }
        let mut found = Vec::new();
        walk(dashboard, "", &mut found);
        for (at, ds) in found {
            assert!(provisioned.contains(&ds), "{}{at}: data source uid {ds} is not provisioned", path.display());
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_rules_query_only_metrics_the_sink_exports() -> anyhow::Result<()> {
    // The whole local pipeline, so that the sink is ready and has processed the seed.
    let stack = TestStack::start("observability", |c| {
        c.seed.customers = 20;
    })
    .await?;
    // Touch the families a quiet run leaves out: an invalid email (validation failure,
    // dead letter) and a new column (schema change).
    let source = stack.endpoints.postgres.connect_source().await?;
    source
        .batch_execute(
            "ALTER TABLE customer ADD COLUMN IF NOT EXISTS loyalty_tier text;
             UPDATE customer SET loyalty_tier = 'gold' WHERE id = (SELECT id FROM customer ORDER BY id LIMIT 1);
             UPDATE customer SET email = 'not-an-email' WHERE id = (SELECT id FROM customer ORDER BY id DESC LIMIT 1);",
        )
        .await?;
    let text = scrape_until(
        &stack.endpoints.sink_http,
        &["sink_events_processed_total", "sink_e2e_latency_seconds_bucket", "sink_dlq_events_total", "sink_schema_changes_total"],
    )
    .await?;
    let scraped = exported_names(&text);
    assert!(scraped.contains("sink_events_processed_total"), "unexpected /metrics output:\n{text}");
    let declared = declared_sink_names()?;
    let undeclared: Vec<&String> = scraped.iter().filter(|n| n.starts_with("sink_") && !declared.contains(*n)).collect();
    assert!(undeclared.is_empty(), "scraped but not found in sink/src/metrics.rs (parser out of date?): {undeclared:?}");
    let exported: BTreeSet<String> = scraped.union(&declared).cloned().collect();
    let unseen: Vec<&String> = declared.iter().filter(|n| !scraped.contains(*n)).collect();
    eprintln!("declared by the sink but without a series in this run: {unseen:?}");

    let (exprs, records) = queried_expressions()?;
    let mut missing: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut checked = 0;
    for (source, expr) in &exprs {
        for name in promql_metric_names(expr) {
            checked += 1;
            let known = if name.contains(':') { records.contains(&name) } else { exported.contains(&name) || external_metric(&name, source) };
            if !known {
                missing.entry(name).or_default().insert(format!("{source}: {expr}"));
            }
        }
    }
    assert!(checked > 50, "suspiciously few metric references ({checked})");
    assert!(missing.is_empty(), "queried but not exported by the sink (nor recorded):\n{missing:#?}\nexported: {exported:?}");
    Ok(())
}

fn promtool() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|p| p.join("promtool")).find(|p| p.is_file()))
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output()?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    anyhow::ensure!(out.status.success(), "{cmd:?} failed:\n{text}");
    Ok(text)
}

#[test]
fn prometheus_rules_pass_promtool_check_and_unit_tests() -> anyhow::Result<()> {
    let Some(promtool) = promtool() else {
        eprintln!("skipped: promtool not on PATH (apt-get install prometheus; .ci/checks.sh installs it)");
        return Ok(());
    };
    let rules: &Path = &workspace().join("prometheus/rules");
    let out = run(Command::new(&promtool).arg("check").arg("rules").arg(rules.join("recording.yml")).arg(rules.join("alerts.yml")))?;
    assert!(out.contains("SUCCESS"), "{out}");
    let out = run(Command::new(&promtool).args(["test", "rules"]).arg(rules.join("alerts_test.yml")))?;
    assert!(out.contains("SUCCESS"), "{out}");
    // Every alert of the rule file has at least one expectation in the unit tests.
    let alerts = std::fs::read_to_string(rules.join("alerts.yml"))?;
    let tests = std::fs::read_to_string(rules.join("alerts_test.yml"))?;
    for alert in alerts.lines().filter_map(|l| l.trim().strip_prefix("- alert:")).map(str::trim) {
        assert!(tests.contains(&format!("alertname: {alert}")), "alert {alert} has no promtool test");
    }
    Ok(())
}
