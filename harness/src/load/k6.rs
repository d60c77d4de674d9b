//! The k6 driver: runs the scenario's script from `k6/` against the workload API with the
//! plan passed in the environment, then reads k6's summary export.
//!
//! Script choice: `k6/<scenario>.js` when it exists; else a scenario named after a family
//! with a suffix (`stress-ci`, `soak_4h`) uses the family's script (`k6/stress.js`), since
//! the plan, not the script, carries durations and rates; any other name is an error that
//! names the missing file, rather than silently driving a baseline under another name.
//! `$HARNESS_K6_DIR` points at the scripts when the harness runs outside this workspace.
//!
//! Exit codes: k6 exits 99 when a threshold of the script is crossed. The harness decides
//! pass/fail on its own thresholds, so that run still counts: its summary is ingested and
//! the crossed thresholds are logged (they are also in `k6-summary.json`).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{DriverError, DriverResult, LoadPlan};
use crate::provision::{self, Cache};
use crate::verify::Percentiles;

const DRIVER: &str = "k6";
/// The scenario families that have a script in `k6/`.
const FAMILIES: &[&str] = &["baseline", "stress", "spike", "soak", "breakpoint", "schema-change", "chaos"];
/// k6's exit code when thresholds were crossed (the run itself completed).
const THRESHOLDS_CROSSED: i32 = 99;
/// Trend statistics in the summary export; k6's default lacks p(99).
const TREND_STATS: &str = "avg,min,med,max,p(90),p(95),p(99)";
/// Beyond the plan's duration: k6 start-up plus the scripts' 10 s graceful stop, with room.
/// Past it k6 is wedged and is killed rather than hanging the harness.
const OVERRUN: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
enum K6Error {
    #[error("bad load plan: {0}")]
    BadPlan(String),
    #[error("scenario name {0:?} is not a script name (letters, digits, '-' and '_' only)")]
    BadScenarioName(String),
    #[error(
        "no k6 script for scenario {scenario:?}: {missing} does not exist (scripts exist for {families}; \
         a scenario named <family>-<suffix> uses its family's script; set HARNESS_K6_DIR if the scripts are elsewhere)"
    )]
    NoScript { scenario: String, missing: PathBuf, families: String },
    #[error("the workload API at {api} is not reachable (GET /healthz: {reason}); start it before driving load")]
    ApiDown { api: String, reason: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot start {bin}: {source}")]
    Spawn { bin: PathBuf, source: std::io::Error },
    #[error("k6 did not finish within {0:?} after the plan's end and was killed; see {1}")]
    Wedged(Duration, PathBuf),
    #[error("k6 failed ({status}); see {log}: {tail}")]
    Exit { status: std::process::ExitStatus, log: PathBuf, tail: String },
    #[error("k6 summary {path}: {reason}")]
    Summary { path: PathBuf, reason: String },
    #[error("provisioning k6 panicked: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl From<K6Error> for DriverError {
    fn from(e: K6Error) -> Self {
        DriverError::Failed { driver: DRIVER, reason: e.to_string() }
    }
}

/// One plan segment as the scripts read it from `PLAN` (see `k6/lib/config.js`).
#[derive(Debug, PartialEq, Serialize)]
struct WireSegment {
    duration_ms: u64,
    from: f64,
    to: f64,
}

pub async fn run(api: &str, plan: &LoadPlan, scenario: &str, out_dir: &Path) -> Result<DriverResult, DriverError> {
    let segments = wire_plan(plan)?;
    let script = script_for(&scripts_dir(), scenario)?;
    let k6 = tokio::task::spawn_blocking(|| provision::k6::ensure(&Cache::locate()?)).await.map_err(K6Error::from)??;
    check_api(api).await?;

    std::fs::create_dir_all(out_dir).map_err(|source| K6Error::Io { path: out_dir.to_path_buf(), source })?;
    let summary = out_dir.join("k6-summary.json");
    let log = out_dir.join("k6.log");
    // A summary left by an earlier run in this folder must not pass for this run's.
    let _ = std::fs::remove_file(&summary);
    let log_file = File::create(&log).map_err(|source| K6Error::Io { path: log.clone(), source })?;
    let err_file = log_file.try_clone().map_err(|source| K6Error::Io { path: log.clone(), source })?;
    let plan_json = serde_json::to_string(&segments).map_err(|e| K6Error::BadPlan(e.to_string()))?;

    let mut command = tokio::process::Command::new(&k6);
    command
        .arg("run")
        .args(["--quiet", "--no-color", "--no-usage-report"])
        // No REST API server: its fixed default port would collide between concurrent runs.
        .args(["--address", ""])
        .args(["--summary-trend-stats", TREND_STATS])
        .arg("--summary-export")
        .arg(&summary)
        .arg("-e")
        .arg(format!("BASE_URL={}", api.trim_end_matches('/')))
        .arg("-e")
        .arg(format!("PLAN={plan_json}"))
        .arg(&script)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(err_file)
        // Dropping the future (the harness interrupted, a test failing) must not leave k6
        // loading the API.
        .kill_on_drop(true);
    tracing::info!(script = %script.display(), log = %log.display(), "k6: driving {scenario} for {:?}", plan.duration());
    let mut child = command.spawn().map_err(|source| K6Error::Spawn { bin: k6.clone(), source })?;
    let status = match tokio::time::timeout(plan.duration() + OVERRUN, child.wait()).await {
        Ok(status) => status.map_err(|source| K6Error::Spawn { bin: k6.clone(), source })?,
        Err(_) => {
            let _ = child.kill().await;
            return Err(K6Error::Wedged(OVERRUN, log).into());
        }
    };
    if !status.success() && status.code() != Some(THRESHOLDS_CROSSED) {
        return Err(K6Error::Exit { status, log: log.clone(), tail: tail(&log, 3) }.into());
    }

    let text = std::fs::read_to_string(&summary).map_err(|source| K6Error::Io { path: summary.clone(), source })?;
    let parsed = parse_summary(&text).map_err(|reason| K6Error::Summary { path: summary.clone(), reason })?;
    if status.code() == Some(THRESHOLDS_CROSSED) {
        tracing::warn!(
            summary = %summary.display(),
            "k6: the script's thresholds were crossed ({}); the harness's own thresholds decide the verdict",
            parsed.crossed.join(", ")
        );
    }
    tracing::info!(
        requests = parsed.result.requests,
        failures = parsed.result.failures,
        conflicts = parsed.conflicts,
        "k6: done at {:.1} ops/s",
        parsed.result.achieved_rate
    );
    Ok(parsed.result)
}

/// The plan in the scripts' terms. Segments shorter than a millisecond carry no arrivals and
/// are dropped (the next segment's start rate still applies, as a jump).
fn wire_plan(plan: &LoadPlan) -> Result<Vec<WireSegment>, K6Error> {
    if let Some(s) = plan.segments.iter().find(|s| !(s.from.is_finite() && s.to.is_finite() && s.from >= 0.0 && s.to >= 0.0)) {
        return Err(K6Error::BadPlan(format!("rates must be finite and not negative, got {} -> {} ops/s", s.from, s.to)));
    }
    let segments: Vec<WireSegment> = plan
        .segments
        .iter()
        .filter(|s| s.duration.as_millis() > 0)
        .map(|s| WireSegment { duration_ms: s.duration.as_millis() as u64, from: s.from, to: s.to })
        .collect();
    if segments.is_empty() {
        return Err(K6Error::BadPlan("it needs at least one segment of 1 ms or more".into()));
    }
    Ok(segments)
}

fn scripts_dir() -> PathBuf {
    std::env::var_os("HARNESS_K6_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../k6")))
}

fn script_for(dir: &Path, scenario: &str) -> Result<PathBuf, K6Error> {
    // The name becomes a file name: nothing that could leave `dir`.
    if scenario.is_empty() || !scenario.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(K6Error::BadScenarioName(scenario.to_string()));
    }
    let exact = dir.join(format!("{scenario}.js"));
    if exact.is_file() {
        return Ok(exact);
    }
    let family = FAMILIES.iter().filter(|f| scenario.strip_prefix(**f).is_some_and(|rest| rest.starts_with(['-', '_']))).max_by_key(|f| f.len());
    match family.map(|f| dir.join(format!("{f}.js"))) {
        Some(script) if script.is_file() => Ok(script),
        _ => Err(K6Error::NoScript { scenario: scenario.to_string(), missing: exact, families: FAMILIES.join(", ") }),
    }
}

/// A wrong address fails here with a clear message instead of as 100% failed requests.
async fn check_api(api: &str) -> Result<(), K6Error> {
    let down = |reason: String| K6Error::ApiDown { api: api.to_string(), reason };
    let response = crate::http::client()
        .get(format!("{}/healthz", api.trim_end_matches('/')))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| down(e.to_string()))?;
    if !response.status().is_success() {
        return Err(down(format!("status {}", response.status())));
    }
    Ok(())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}

/// What the summary export says, beyond the driver result.
#[derive(Debug)]
struct Parsed {
    result: DriverResult,
    /// 409 answers (`ops_conflicts`): in `requests`, not in `failures`.
    conflicts: u64,
    /// `metric: expression` of every crossed threshold.
    crossed: Vec<String>,
}

/// One metric of k6's summary export; which fields are present depends on its type
/// (counter: count/rate, rate: passes/fails/value, trend: the requested statistics).
#[derive(Debug, Default, Deserialize)]
struct Metric {
    count: Option<f64>,
    rate: Option<f64>,
    /// For a rate metric, the samples that were true: for `http_req_failed`, failed requests.
    passes: Option<f64>,
    med: Option<f64>,
    #[serde(rename = "p(90)")]
    p90: Option<f64>,
    #[serde(rename = "p(95)")]
    p95: Option<f64>,
    #[serde(rename = "p(99)")]
    p99: Option<f64>,
    max: Option<f64>,
    /// Expression -> crossed (true means the threshold failed).
    #[serde(default)]
    thresholds: BTreeMap<String, bool>,
}

#[derive(Debug, Deserialize)]
struct Summary {
    metrics: BTreeMap<String, Metric>,
}

fn parse_summary(text: &str) -> Result<Parsed, String> {
    let summary: Summary = serde_json::from_str(text).map_err(|e| format!("not a k6 summary export: {e}"))?;
    let metric = |name: &str| summary.metrics.get(name);
    let count = |m: Option<&Metric>, field: fn(&Metric) -> Option<f64>| m.and_then(field).unwrap_or(0.0).round() as u64;
    // k6 leaves out metrics that got no samples (a plan at rate 0): no requests, no latency.
    let requests = count(metric("http_reqs"), |m| m.count);
    let latency_ms = match metric("http_req_duration") {
        Some(d) if requests > 0 => {
            let stat = |v: Option<f64>, name: &str| {
                v.ok_or_else(|| format!("http_req_duration lacks {name}; k6 must run with --summary-trend-stats \"{TREND_STATS}\""))
            };
            Percentiles {
                count: requests,
                p50: stat(d.med, "med")?,
                p90: stat(d.p90, "p(90)")?,
                p95: stat(d.p95, "p(95)")?,
                p99: stat(d.p99, "p(99)")?,
                max: stat(d.max, "max")?,
            }
        }
        _ => Percentiles::default(),
    };
    let crossed = summary
        .metrics
        .iter()
        .flat_map(|(name, m)| m.thresholds.iter().filter(|(_, crossed)| **crossed).map(move |(expr, _)| format!("{name}: {expr}")))
        .collect();
    Ok(Parsed {
        result: DriverResult {
            driver: DRIVER.to_string(),
            requests,
            failures: count(metric("http_req_failed"), |m| m.passes),
            latency_ms,
            achieved_rate: metric("http_reqs").and_then(|m| m.rate).unwrap_or(0.0),
            // k6 leaves the metric out when nothing was dropped.
            dropped: Some(count(metric("dropped_iterations"), |m| m.count)),
            timed_latencies: None,
        },
        conflicts: count(metric("ops_conflicts"), |m| m.count),
        crossed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::Segment;

    const FIXTURE: &str = include_str!("../../tests/fixtures/k6-summary.json");

    #[test]
    fn parses_a_real_summary_export() {
        let parsed = parse_summary(FIXTURE).expect("fixture parses");
        let r = &parsed.result;
        assert_eq!(r.driver, "k6");
        assert_eq!(r.requests, 299);
        assert_eq!(r.failures, 0);
        assert_eq!(parsed.conflicts, 11, "every 25th answer of the fixture server is a 409");
        assert_eq!(r.latency_ms.count, 299);
        let l = &r.latency_ms;
        assert!(0.0 < l.p50 && l.p50 <= l.p90 && l.p90 <= l.p95 && l.p95 <= l.p99 && l.p99 <= l.max, "{l:?}");
        assert!((r.achieved_rate - 50.0).abs() < 5.0, "rate {}", r.achieved_rate);
        assert!(parsed.crossed.is_empty(), "{:?}", parsed.crossed);
    }

    #[test]
    fn reports_crossed_thresholds_and_failed_requests() {
        let mut summary: serde_json::Value = serde_json::from_str(FIXTURE).expect("fixture is JSON");
        let metrics = &mut summary["metrics"];
        metrics["http_req_failed"]["passes"] = 7.into();
        metrics["http_req_duration"]["thresholds"]["p(95)<500"] = true.into();
        let parsed = parse_summary(&summary.to_string()).expect("parses");
        assert_eq!(parsed.result.failures, 7);
        assert_eq!(parsed.crossed, vec!["http_req_duration: p(95)<500".to_string()]);
    }

    #[test]
    fn rejects_a_summary_without_p99_and_non_summaries() {
        let mut summary: serde_json::Value = serde_json::from_str(FIXTURE).expect("fixture is JSON");
        summary["metrics"]["http_req_duration"].as_object_mut().expect("object").remove("p(99)");
        let err = parse_summary(&summary.to_string()).expect_err("p99 is required");
        assert!(err.contains("--summary-trend-stats"), "{err}");
        assert!(parse_summary("{}").is_err());
    }

    #[test]
    fn a_run_without_requests_has_empty_latency() {
        let parsed = parse_summary(r#"{"root_group":{},"metrics":{"iterations":{"count":0,"rate":0}}}"#).expect("parses");
        assert_eq!(parsed.result.requests, 0);
        assert_eq!(parsed.result.latency_ms, Percentiles::default());
    }

    #[test]
    fn plan_goes_to_the_scripts_in_milliseconds_without_empty_segments() {
        let seg = |ms: u64, from: f64, to: f64| Segment { duration: Duration::from_millis(ms), from, to };
        let plan = LoadPlan { segments: vec![seg(60_000, 100.0, 100.0), seg(0, 500.0, 500.0), seg(1_500, 500.0, 2.5)] };
        let wire = wire_plan(&plan).expect("non-empty");
        assert_eq!(
            serde_json::to_string(&wire).expect("serializes"),
            r#"[{"duration_ms":60000,"from":100.0,"to":100.0},{"duration_ms":1500,"from":500.0,"to":2.5}]"#
        );
        assert!(matches!(wire_plan(&LoadPlan { segments: vec![seg(0, 1.0, 1.0)] }), Err(K6Error::BadPlan(_))));
        assert!(matches!(wire_plan(&LoadPlan { segments: vec![seg(10, f64::NAN, 1.0)] }), Err(K6Error::BadPlan(_))));
    }

    #[test]
    fn finds_the_scenario_script_or_its_family_script() {
        let dir = tempfile::tempdir().expect("temp dir");
        for name in ["baseline", "schema-change", "stress-ci"] {
            std::fs::write(dir.path().join(format!("{name}.js")), "").expect("write script");
        }
        let found = |s: &str| script_for(dir.path(), s).map(|p| p.file_name().expect("file").to_string_lossy().into_owned());
        assert_eq!(found("baseline").expect("exact"), "baseline.js");
        assert_eq!(found("stress-ci").expect("own script wins"), "stress-ci.js");
        assert_eq!(found("baseline-ci").expect("family"), "baseline.js");
        assert_eq!(found("schema-change_short").expect("family with a dash"), "schema-change.js");
        let err = found("nightly").expect_err("unknown").to_string();
        assert!(err.contains("nightly.js") && err.contains("HARNESS_K6_DIR"), "{err}");
        assert!(matches!(script_for(dir.path(), "spike-x"), Err(K6Error::NoScript { .. })), "family without its script");
        assert!(matches!(script_for(dir.path(), "../etc/passwd"), Err(K6Error::BadScenarioName(_))));
    }

    #[test]
    fn the_workspace_has_a_script_per_family() {
        for family in FAMILIES {
            let script = scripts_dir().join(format!("{family}.js"));
            assert!(script.is_file(), "{} is missing", script.display());
        }
    }
}
