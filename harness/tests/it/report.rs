//! Reports: golden renderings, the HTML page in a real headless browser, and the
//! `harness diff` / `harness report` commands end to end.
//!
//! Two kinds of fixture. `run-base.json` / `run-new.json` are the `report.json` of two
//! short real runs (`harness run chaos-poison --duration 30s`, copied from `reports/`):
//! what the harness really writes, rendered to golden Markdown, JUnit and diff files. The
//! synthetic `report-base.json` / `report-new.json` are built by `base_report()` /
//! `new_report()` below for what a healthy run never shows (a lost change with its hop,
//! failed thresholds, a sink kill in the timeline). `UPDATE_GOLDEN=1 cargo test -p harness
//! --test it report::` rewrites the synthetic fixtures and every golden file after an
//! intended change (review the diff before committing); the real fixtures are replaced by
//! running again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use harness::exit;
use harness::report::model::{
    FaultRecord, LatencyTriple, LoadStats, Machine, PipelineStats, Report, RunMeta, SCHEMA_VERSION, Sample, Summary, ValidationStats,
};
use harness::report::thresholds::{Threshold, evaluate};
use harness::report::{diff, html, json, junit, markdown, write_all};
use harness::verify::{Anomaly, AnomalyKind, EntityOutcome, FieldDiff, LatencySummary, Percentiles, VerifyReport};
use serde_json::json;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn test_output() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-output");
    std::fs::create_dir_all(&dir).expect("create target/test-output");
    dir
}

/// Compares with the golden file byte for byte, or rewrites it under UPDATE_GOLDEN=1.
fn golden(name: &str, actual: &str) {
    let path = fixtures().join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        // Only on change: other tests read these files concurrently.
        if std::fs::read_to_string(&path).ok().as_deref() != Some(actual) {
            std::fs::write(&path, actual).expect("write golden file");
        }
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (create it with UPDATE_GOLDEN=1)", path.display()));
    if expected != actual {
        let line = expected.lines().zip(actual.lines()).position(|(a, b)| a != b).unwrap_or(expected.lines().count().min(actual.lines().count()));
        panic!(
            "{} differs from the rendering at line {}:\n  golden: {:?}\n  actual: {:?}\n(UPDATE_GOLDEN=1 rewrites it if the change is intended)",
            path.display(),
            line + 1,
            expected.lines().nth(line),
            actual.lines().nth(line)
        );
    }
}

fn pct(count: u64, p50: f64, p90: f64, p95: f64, p99: f64, max: f64) -> Percentiles {
    Percentiles { count, p50, p90, p95, p99, max }
}

/// Deterministic jitter in [-0.5, 0.5): the fixture must not change between runs.
fn jitter(i: usize, k: usize) -> f64 {
    // A SplitMix64 step: cheap, well mixed, no dependency.
    let mut z = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (k as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z % 1000) as f64 / 1000.0 - 0.5
}

const SINK_KILLED: (usize, usize) = (20, 25);
const CATCH_UP: (usize, usize) = (25, 32);
const NET_DELAY: (usize, usize) = (40, 50);

fn sample(i: usize) -> Sample {
    let within = |(a, b): (usize, usize)| (a..b).contains(&i);
    let write_rate = 100.0 + 6.0 * jitter(i, 1);
    let sink_rate = if within(SINK_KILLED) {
        0.0
    } else if within(CATCH_UP) {
        180.0 - 10.0 * (i - CATCH_UP.0) as f64 + 5.0 * jitter(i, 2)
    } else {
        write_rate + 4.0 * jitter(i, 3)
    };
    let lag = if within(SINK_KILLED) {
        40 + 100 * (i - SINK_KILLED.0 + 1) as u64
    } else if within(CATCH_UP) {
        540 - 75 * (i - CATCH_UP.0 + 1) as u64
    } else {
        (40.0 + 30.0 * jitter(i, 4)) as u64
    };
    let (p50, p95, p99) = if within(SINK_KILLED) {
        (None, None, None)
    } else if within(CATCH_UP) {
        let decay = 1.0 - (i - CATCH_UP.0) as f64 / 7.0;
        (Some(200.0 + 2300.0 * decay), Some(400.0 + 4400.0 * decay), Some(520.0 + 5000.0 * decay))
    } else if within(NET_DELAY) {
        (Some(340.0 + 40.0 * jitter(i, 5)), Some(620.0 + 60.0 * jitter(i, 6)), Some(900.0 + 90.0 * jitter(i, 7)))
    } else {
        (Some(120.0 + 20.0 * jitter(i, 5)), Some(310.0 + 40.0 * jitter(i, 6)), Some(450.0 + 60.0 * jitter(i, 7)))
    };
    let round = |v: f64| (v * 10.0).round() / 10.0;
    let mut cpu = BTreeMap::from([
        ("broker".to_string(), round(25.0 + 8.0 * jitter(i, 8))),
        ("connect".to_string(), round(35.0 + 10.0 * jitter(i, 9))),
        ("postgres".to_string(), round(18.0 + 6.0 * jitter(i, 10))),
    ]);
    let mut rss = BTreeMap::from([("broker".to_string(), 320.0), ("connect".to_string(), round(610.0 + i as f64 * 0.8)), ("postgres".to_string(), 182.0)]);
    if !within(SINK_KILLED) {
        let busy = if within(CATCH_UP) { 60.0 } else { 22.0 };
        cpu.insert("sink".into(), round(busy + 6.0 * jitter(i, 11)));
        rss.insert("sink".into(), round(if i < SINK_KILLED.0 { 45.0 + i as f64 * 0.1 } else { 38.0 + (i - 25) as f64 * 0.1 }));
    }
    Sample {
        t: i as f64,
        write_rate: round(write_rate),
        sink_rate: Some(round(sink_rate)),
        lag: Some(lag),
        lag_per_partition: BTreeMap::from([("0".to_string(), lag / 3), ("1".to_string(), lag / 3), ("2".to_string(), lag - 2 * (lag / 3))]),
        e2e_p50_ms: p50.map(round),
        e2e_p95_ms: p95.map(round),
        e2e_p99_ms: p99.map(round),
        cpu_pct: cpu,
        slot_lag_bytes: Some(64 * 1024 + 1024 * (lag % 7)),
        capture_p95_ms: p95.map(|v| round(v * 0.2)),
        apply_p95_ms: p95.map(|v| round(v * 0.8)),
        rss_mb: rss,
    }
}

fn entity(name: &str, rows: u64, mismatched: u64) -> EntityOutcome {
    EntityOutcome { entity: name.into(), source_count: rows, target_count: rows, matching: rows - mismatched, mismatched, ..EntityOutcome::default() }
}

const THRESHOLDS: [&str; 6] = [
    "e2e_latency_ms.p95 < 2000",
    "e2e_latency_ms.p99 < 2500",
    "events_per_sec > 90",
    "convergence.missing == 0",
    "convergence.anomalies == 0",
    "lag_recovery_s < 30",
];

/// Fills in what a run computes from the rest: thresholds and the summary.
fn finish(mut report: Report) -> Report {
    let thresholds: Vec<Threshold> = THRESHOLDS.iter().map(|t| Threshold::parse(t).expect("valid threshold")).collect();
    report.thresholds = evaluate(&report, &thresholds);
    let p = &report.pipeline;
    report.summary = Summary {
        converged: report.convergence.converged,
        events_per_sec: p.events_per_sec,
        e2e_latency_ms: p.e2e_latency_ms.measured().then_some(LatencyTriple {
            p50: p.e2e_latency_ms.p50,
            p95: p.e2e_latency_ms.p95,
            p99: p.e2e_latency_ms.p99,
        }),
        lag_recovery_s: p.lag_recovery_s,
        errors: report.load.errors + report.convergence.anomaly_counts.values().sum::<u64>(),
        errors_by_kind: BTreeMap::from([
            ("write_failures".to_string(), report.load.errors),
            ("anomalies".to_string(), report.convergence.anomaly_counts.values().sum::<u64>()),
        ]),
        thresholds_passed: report.thresholds.iter().all(|t| t.passed),
        no_verdict: Vec::new(),
    };
    report
}

/// A chaos run: 60 s of load at 100 ops/s, the sink killed at 20 s, 200 ms of network
/// delay between sink and broker from 40 s to 50 s; one change was lost.
fn base_report() -> Report {
    let series: Vec<Sample> = (0..60).map(sample).collect();
    let per_entity = BTreeMap::from([
        ("address".to_string(), pct(1180, 135.0, 400.0, 1390.0, 3010.0, 5610.0)),
        ("customer".to_string(), pct(902, 128.0, 385.0, 1320.0, 2950.0, 5520.0)),
        ("order_item".to_string(), pct(2496, 152.0, 440.0, 1510.0, 3190.0, 5830.0)),
        ("orders".to_string(), pct(1390, 141.0, 418.0, 1460.0, 3105.0, 5790.0)),
    ]);
    let overall = pct(5968, 140.0, 420.0, 1450.0, 3120.0, 5830.0);
    let key = "0190f3a2-7c1e-7b4d-9a51-3e2f8c6d1a07";
    finish(Report {
        schema_version: SCHEMA_VERSION,
        run: RunMeta {
            run_id: "20250601T100000Z-chaos-7f3a".into(),
            scenario: "chaos".into(),
            seed: 42,
            git_sha: Some("3212144".into()),
            driver: "goose".into(),
            backend: "local".into(),
            image_set: None,
            versions: BTreeMap::from([
                ("debezium".to_string(), "3.1.2.Final".to_string()),
                ("harness".to_string(), "0.1.0".to_string()),
                ("postgres".to_string(), "17.5".to_string()),
                ("sink".to_string(), "0.1.0".to_string()),
                ("broker".to_string(), "tansu 0.5.1".to_string()),
            ]),
            machine: Machine { cores: 2, memory_mb: 7952, os: "Debian GNU/Linux 12 (bookworm)".into() },
            started_at: "2025-06-01T10:00:00Z".into(),
            ended_at: "2025-06-01T10:01:35Z".into(),
            duration_s: 95.4,
        },
        config: json!({
            "scenario": { "kind": "chaos", "rate": 100, "duration": "60s", "mix": { "insert": 70, "update": 20, "delete": 10 } },
            "faults": [
                { "at": "20s", "kind": "kill", "target": "sink" },
                { "at": "40s", "for": "10s", "kind": "latency", "target": "sink->broker", "delay_ms": 200, "jitter_ms": 50 }
            ],
            "postgres": { "password": "<redacted>" }
        }),
        load: LoadStats {
            ops_by_kind: BTreeMap::from([
                ("delete".to_string(), 598),
                ("insert".to_string(), 4190),
                ("update".to_string(), 1187),
                ("insert.customer".to_string(), 902),
                ("insert.order_item".to_string(), 1650),
            ]),
            target_rate: 100.0,
            achieved_rate: 99.6,
            write_latency_ms: pct(5975, 2.1, 4.8, 6.3, 11.7, 48.2),
            write_latency_outside_faults_ms: Some(pct(5890, 2.0, 4.6, 6.0, 9.8, 31.5)),
            errors: 0,
            dropped_iterations: None,
            stages: Vec::new(),
        },
        pipeline: PipelineStats {
            events_per_sec: Some(98.7),
            e2e_latency_ms: overall.clone(),
            e2e_latency_ms_per_entity: per_entity.clone(),
            probe_latency_ms: pct(60, 160.0, 450.0, 1600.0, 4700.0, 5100.0),
            max_lag: series.iter().filter_map(|s| s.lag).max(),
            slot_lag_bytes_max: series.iter().filter_map(|s| s.slot_lag_bytes).max(),
            lag_recovery_s: Some(12.5),
            lag_recovered: true,
            max_sustainable_rate: None,
            // Fields added to the model later keep their defaults here.
            ..PipelineStats::default()
        },
        faults: vec![
            FaultRecord {
                kind: "kill".into(),
                target: "sink".into(),
                parameters: BTreeMap::from([("signal".to_string(), "SIGKILL".to_string())]),
                start_s: 20.0,
                end_s: None,
                service_recovery_s: Some(4.8),
                pipeline_recovery_s: Some(12.5),
            },
            FaultRecord {
                kind: "latency".into(),
                target: "sink->broker".into(),
                parameters: BTreeMap::from([("delay_ms".to_string(), "200".to_string()), ("jitter_ms".to_string(), "50".to_string())]),
                start_s: 40.0,
                end_s: Some(50.0),
                service_recovery_s: None,
                pipeline_recovery_s: Some(6.1),
            },
        ],
        series,
        convergence: VerifyReport {
            target: "postgres".into(),
            converged: false,
            entities: vec![entity("customer", 1000, 0), entity("address", 1500, 0), entity("orders", 2000, 1), entity("order_item", 5000, 0)],
            anomaly_counts: BTreeMap::from([(AnomalyKind::LostChange, 1)]),
            anomalies: vec![Anomaly {
                kind: AnomalyKind::LostChange,
                entity: "orders".into(),
                key: key.into(),
                fields: vec![
                    FieldDiff { field: "status".into(), source: Some("shipped".into()), target: Some("pending".into()) },
                    FieldDiff { field: "updated_at".into(), source: Some("2025-06-01T10:00:21.412Z".into()), target: Some("2025-06-01T10:00:19.087Z".into()) },
                ],
                source_row: Some(json!({ "id": key, "status": "shipped", "total": "10.50", "updated_at": "2025-06-01T10:00:21.412Z" })),
                target_record: Some(json!({
                    "id": key, "status": "pending", "total": "10.50", "updated_at": "2025-06-01T10:00:19.087Z",
                    "__source_ts_ms": 1748772019087_u64, "__applied_at": "2025-06-01T10:00:19.301Z"
                })),
                evidence: "target holds the version committed at 10:00:19.087 (applied 10:00:19.301); the source's update \
                           committed at 10:00:21.412 > that, while the sink was down, was never applied"
                    .into(),
                source_committed_at: chrono::DateTime::parse_from_rfc3339("2025-06-01T10:00:21.412Z").ok().map(|t| t.to_utc()),
                hop: Some("never reached the sink: the newest source change is not in the apply log (not produced, or not consumed)".into()),
            }],
            time_to_converge_ms: None,
            never_converged: vec![format!("orders/{key}")],
            latency: LatencySummary { overall, per_entity },
            rows_compared: 9500,
            elapsed_ms: 412,
            untracked_differences: 0,
            full_pass_ms: vec![180, 232],
            dlq_rejected: BTreeMap::from([("email_format".to_string(), 2)]),
            history_checked: true,
            columns: Vec::new(),
            dlq: None,
            watermark: None,
            live_checks: Vec::new(),
        },
        validation: ValidationStats {
            passed: 11_950,
            failed_by_rule: BTreeMap::from([("orders.total_non_negative".to_string(), 3)]),
            dlq: 3,
            stale_skipped: 12,
        },
        thresholds: Vec::new(),
        summary: Summary::default(),
    })
}

/// The same run on a slower build: latency 35% up, throughput 12% down.
fn new_report() -> Report {
    let mut r = base_report();
    r.run.run_id = "20250602T100000Z-chaos-91bc".into();
    r.run.git_sha = Some("9a0c7d2".into());
    let slower = |p: &mut Percentiles| {
        for v in [&mut p.p50, &mut p.p90, &mut p.p95, &mut p.p99, &mut p.max] {
            *v = (*v * 1.35).round();
        }
    };
    slower(&mut r.pipeline.e2e_latency_ms);
    r.pipeline.e2e_latency_ms_per_entity.values_mut().for_each(slower);
    r.pipeline.events_per_sec = Some(86.9);
    r.convergence.latency.overall = r.pipeline.e2e_latency_ms.clone();
    r.convergence.latency.per_entity = r.pipeline.e2e_latency_ms_per_entity.clone();
    for s in &mut r.series {
        for v in [&mut s.e2e_p50_ms, &mut s.e2e_p95_ms, &mut s.e2e_p99_ms].into_iter().flatten() {
            *v = (*v * 1.35).round();
        }
    }
    finish(r)
}

fn load_fixture(name: &str) -> Report {
    json::load(&fixtures().join(name)).unwrap_or_else(|e| panic!("{e} (create it with UPDATE_GOLDEN=1)"))
}

#[test]
fn json_rendering_is_golden_and_round_trips() {
    let base = base_report();
    assert_eq!(base.series.len(), 60);
    assert_eq!(base.faults.len(), 2);
    assert_eq!(base.convergence.entities.len(), 4);
    let failed: Vec<&str> = base.thresholds.iter().filter(|t| !t.passed).map(|t| t.expression.as_str()).collect();
    assert_eq!(failed, ["e2e_latency_ms.p99 < 2500", "convergence.anomalies == 0"]);

    let text = json::render(&base).expect("serialize");
    golden("report-base.json", &text);
    golden("report-new.json", &json::render(&new_report()).expect("serialize"));
    let loaded = load_fixture("report-base.json");
    assert_eq!(loaded, base);
    assert_eq!(json::render(&loaded).expect("serialize"), text);
}

/// A real run's report: it parses, renders back byte for byte, and its Markdown, JUnit and
/// diff renderings are golden.
#[test]
fn a_real_runs_report_round_trips_and_renders_golden() {
    let text = std::fs::read_to_string(fixtures().join("run-base.json")).expect("real run fixture");
    let base = load_fixture("run-base.json");
    let again = json::render(&base).expect("serialize");
    if std::env::var_os("UPDATE_GOLDEN").is_some() && again != text {
        // A field added to the model: the recorded run gains it with its default.
        std::fs::write(fixtures().join("run-base.json"), &again).expect("rewrite the fixture");
        return;
    }
    if let Some((i, (a, b))) = text.lines().zip(again.lines()).enumerate().find(|(_, (a, b))| a != b) {
        panic!("re-rendering the real report changed line {}:\n  file:     {a}\n  rendered: {b}", i + 1);
    }
    assert_eq!(again, text, "re-rendering a real report changes nothing");
    assert_eq!(base.run.backend, "local");
    assert!(base.summary.converged && base.summary.thresholds_passed, "the fixture run passed");
    assert!(base.pipeline.capture_latency_ms.measured() && base.pipeline.apply_latency_ms.measured(), "per-hop latency in a real report");
    assert!(base.faults.iter().any(|f| f.kind == "poison" && f.parameters.get("unreconciled").map(String::as_str) == Some("0")));
    let md = markdown::render(&base);
    assert!(md.contains("| Capture hop p50 / p95 / p99 (commit → broker) |"), "{md}");
    golden("run-summary.golden.md", &md);
    golden("run-junit.golden.xml", &junit::render(&base).expect("junit"));
    let new = load_fixture("run-new.json");
    let d = diff::diff(&[base], &new, &[]).expect("diff of two real runs");
    golden("run-diff.golden.md", &diff::render_markdown(&d));
}

#[test]
fn markdown_rendering_is_golden() {
    let report = load_fixture("report-base.json");
    let md = markdown::render(&report);
    assert!(md.starts_with("## ❌ FAIL: chaos"), "{md}");
    assert!(md.contains("| ❌ | `e2e_latency_ms.p99 < 2500` | 3120 |"), "{md}");
    assert!(md.contains("- **lost_change** orders key `0190f3a2-7c1e-7b4d-9a51-3e2f8c6d1a07`"), "{md}");
    golden("summary.golden.md", &md);
}

#[test]
fn junit_rendering_is_golden() {
    let xml = junit::render(&load_fixture("report-base.json")).expect("junit");
    assert_eq!(xml.matches("<testcase ").count(), THRESHOLDS.len() + 2, "every threshold, convergence and the verdict");
    assert_eq!(xml.matches("<failure ").count(), 3, "two thresholds and convergence fail");
    golden("junit.golden.xml", &xml);
}

#[test]
fn diff_markdown_is_golden() {
    let d = diff::diff(&[load_fixture("report-base.json")], &load_fixture("report-new.json"), &[]).expect("diff");
    assert!(d.failed);
    golden("diff.golden.md", &diff::render_markdown(&d));
}

/// A run whose load was not delivered, or whose fault did not inject, says NO VERDICT in
/// every file, and the CLI maps it to its own exit code: never a PASS, never a gate failure.
#[test]
fn a_run_without_a_verdict_says_so_in_every_file() {
    let mut report = base_report();
    report.convergence.converged = true;
    report.thresholds.clear();
    report.summary.converged = true;
    report.summary.thresholds_passed = true;
    assert_eq!(harness::report::verdict(&report), harness::report::model::Verdict::Pass);
    report.summary.no_verdict = vec!["load not delivered: stage 1 (0-180 s) asked for 550.0 ops/s and got 308.5 (56%)".into()];
    assert_eq!(harness::report::verdict(&report), harness::report::model::Verdict::NoVerdict);
    assert_eq!(exit::code_for_verdict(harness::report::verdict(&report)), exit::NO_VERDICT);
    assert!(!harness::report::passed(&report));
    let md = markdown::render(&report);
    assert!(md.starts_with("## ⚠️ NO VERDICT") && md.contains("load not delivered"), "{md}");
    let junit = junit::render(&report).expect("junit");
    assert!(junit.contains("NO VERDICT: load not delivered") && junit.contains("<failure"), "{junit}");
    let page = html::render(&report);
    assert!(page.contains("<title>NO VERDICT") && page.contains("no verdict: load not delivered"));
    let back: Report = serde_json::from_str(&json::render(&report).expect("json")).expect("parses");
    assert_eq!(back.summary.no_verdict, report.summary.no_verdict, "report.json tells the same");
}

#[test]
fn write_all_writes_the_four_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = write_all(&base_report(), &dir.path().join("out")).expect("write");
    let names: Vec<String> = paths.iter().map(|p| p.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string()).collect();
    assert_eq!(names, ["report.json", "report.html", "summary.md", "junit.xml"]);
    for p in &paths {
        assert!(std::fs::metadata(p).expect("written").len() > 500, "{}", p.display());
    }
}

const CHROMIUM: &str = "/usr/bin/chromium";

fn chromium(args: &[String]) -> Output {
    let profile = tempfile::tempdir().expect("tempdir");
    // `timeout` bounds a wedged browser; the flags keep it off the network and quiet.
    Command::new("timeout")
        .args(["120", CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"])
        .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .output()
        .expect("run chromium")
}

#[test]
fn html_renders_in_headless_chromium() {
    let page = html::render(&load_fixture("report-base.json"));
    for forbidden in ["<script", "<link", "src=\"http", "href=\"http", "url(", "@import"] {
        assert!(!page.contains(forbidden), "the page must be self-contained: found {forbidden}");
    }
    let out = test_output();
    let html_path = out.join("report.html");
    std::fs::write(&html_path, &page).expect("write html");
    if !Path::new(CHROMIUM).exists() {
        eprintln!("skipping the browser check: {CHROMIUM} is absent (apt-get install -y chromium)");
        return;
    }
    let url = format!("file://{}", html_path.canonicalize().expect("absolute path").display());
    let png = out.join("report.png");
    let _ = std::fs::remove_file(&png);
    let shot = chromium(&[format!("--screenshot={}", png.display()), "--window-size=1280,2400".into(), url.clone()]);
    assert!(shot.status.success(), "chromium --screenshot failed: {}", String::from_utf8_lossy(&shot.stderr));
    let size = std::fs::metadata(&png).expect("screenshot written").len();
    assert!(size > 50_000, "screenshot is only {size} bytes");

    let dom = chromium(&["--dump-dom".into(), url]);
    assert!(dom.status.success(), "chromium --dump-dom failed: {}", String::from_utf8_lossy(&dom.stderr));
    let dom = String::from_utf8_lossy(&dom.stdout);
    let charts = ["chart-throughput", "chart-latency", "chart-lag", "chart-slot-lag", "chart-cpu", "chart-memory"];
    for id in charts {
        assert!(dom.contains(&format!("<svg id=\"{id}\" class=\"chart\"")), "{id} missing from the DOM");
    }
    assert_eq!(dom.matches("<g class=\"fault\">").count(), charts.len() * 2, "each chart shades both faults");
    assert!(dom.contains("<polyline class=\"line\" data-series=\"p99\""));
    assert!(dom.contains("id=\"verdict\" class=\"badge fail\">FAIL<"));
    assert!(dom.contains("DIVERGED"));
    assert!(dom.contains("status"), "anomaly fields are listed");
    for forbidden in ["<script", "<link", "src=\"http", "href=\"http"] {
        assert!(!dom.contains(forbidden), "the DOM loads {forbidden}");
    }
}

fn harness(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_harness")).args(args).output().expect("run harness")
}

fn path_arg(name: &str) -> String {
    fixtures().join(name).display().to_string()
}

#[test]
fn cli_diff_exit_codes() {
    let (base, new) = (path_arg("report-base.json"), path_arg("report-new.json"));
    let same = harness(&["diff", &base, &base]);
    assert_eq!(same.status.code(), Some(exit::SUCCESS), "{}", String::from_utf8_lossy(&same.stderr));
    assert!(String::from_utf8_lossy(&same.stdout).starts_with("OK: 0 regressed"));

    let regressed = harness(&["diff", &base, &new, "--markdown"]);
    assert_eq!(regressed.status.code(), Some(exit::REGRESSION), "{}", String::from_utf8_lossy(&regressed.stderr));
    let expected = diff::diff(&[load_fixture("report-base.json")], &load_fixture("report-new.json"), &[]).expect("diff");
    assert_eq!(String::from_utf8_lossy(&regressed.stdout), diff::render_markdown(&expected));

    // Wide enough tolerances make the same change acceptable.
    let tolerated = harness(&["diff", &base, &new, "--tolerance", "e2e_latency_ms.*=50", "--tolerance", "events_per_sec=15"]);
    assert_eq!(tolerated.status.code(), Some(exit::SUCCESS), "{}", String::from_utf8_lossy(&tolerated.stdout));

    // Repeated base runs, JSON out: the typed report.
    let dir = tempfile::tempdir().expect("tempdir");
    let html_out = dir.path().join("diff.html");
    let repeated = harness(&["diff", "--base", &base, "--base", &base, &new, "--json", "--html", &html_out.display().to_string()]);
    assert_eq!(repeated.status.code(), Some(exit::REGRESSION));
    let d: diff::DiffReport = serde_json::from_slice(&repeated.stdout).expect("diff JSON");
    assert_eq!(d.base_runs.len(), 2);
    let p95 = d.metrics.iter().find(|m| m.name == "e2e_latency_ms.p95").expect("p95");
    assert_eq!((p95.verdict, p95.change), (diff::Verdict::Regressed, Some(508.0)));
    assert!(std::fs::read_to_string(&html_out).expect("html written").contains("REGRESSION"));
}

#[test]
fn cli_diff_refuses_bad_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = path_arg("report-base.json");
    let text = std::fs::read_to_string(&base).expect("fixture");
    let old = dir.path().join("old.json");
    std::fs::write(&old, text.replacen(&format!("\"schema_version\": {SCHEMA_VERSION}"), "\"schema_version\": 0", 1)).expect("write");
    let out = harness(&["diff", &old.display().to_string(), &base]);
    assert_eq!(out.status.code(), Some(exit::USAGE));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has schema_version 0"), "{}", String::from_utf8_lossy(&out.stderr));

    for args in [
        vec!["diff", base.as_str()],
        vec!["diff", base.as_str(), "/nonexistent/report.json"],
        vec!["diff", base.as_str(), base.as_str(), "--tolerance", "latency"],
        vec!["diff", base.as_str(), base.as_str(), "--tolerance", "no_such_metric=5"],
    ] {
        let out = harness(&args);
        assert_eq!(out.status.code(), Some(exit::USAGE), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn cli_report_rerenders_from_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (html_out, junit_out) = (dir.path().join("r.html"), dir.path().join("junit.xml"));
    let base = path_arg("report-base.json");
    let out = harness(&["report", &base, "--html", &html_out.display().to_string(), "--junit", &junit_out.display().to_string()]);
    assert_eq!(out.status.code(), Some(exit::SUCCESS), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.is_empty(), "no Markdown unless asked for");
    assert!(std::fs::read_to_string(&html_out).expect("html").contains("<svg id=\"chart-latency\""));
    let report = load_fixture("report-base.json");
    assert_eq!(std::fs::read_to_string(&junit_out).expect("junit"), junit::render(&report).expect("junit"));

    let md = harness(&["report", &base, "--markdown"]);
    assert_eq!(md.status.code(), Some(exit::SUCCESS));
    assert_eq!(String::from_utf8_lossy(&md.stdout), markdown::render(&report));
    assert_eq!(harness(&["report", "/nonexistent.json"]).status.code(), Some(exit::USAGE));
}
