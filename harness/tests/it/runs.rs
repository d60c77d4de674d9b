//! The main job end to end: short baselines on the local stack pass their thresholds and
//! converge, write their reports, and two real runs diff cleanly.

use std::time::Duration;

use harness::run::{RunOptions, run};
use harness::scenario::Scenario;

async fn short_baseline(reports: &std::path::Path, seed: u64) -> anyhow::Result<harness::run::RunOutcome> {
    let options = RunOptions {
        scenario: Scenario::load("baseline")?,
        driver: None,
        duration: Some(Duration::from_secs(20)),
        rate: Some(100.0),
        seed,
        reuse: None,
        keep: false,
        reports_dir: reports.to_path_buf(),
        stack: harness::orchestrator::stack::StackChoice::local(),
    };
    Ok(run(options).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_baselines_pass_converge_and_diff() -> anyhow::Result<()> {
    let _turn = harness::testing::stack_turn().await;
    let reports = harness::testing::run_dir("reports");
    let mut files = Vec::new();
    for seed in [1, 2] {
        let outcome = short_baseline(&reports, seed).await?;
        let r = &outcome.report;
        let failed: Vec<_> = r.thresholds.iter().filter(|t| !t.passed).collect();
        assert!(r.summary.converged, "run {} did not converge: {:?}", r.run.run_id, r.convergence.anomaly_counts);
        assert!(failed.is_empty(), "thresholds failed: {failed:?}");
        assert!(r.load.achieved_rate > 80.0, "achieved {:.1} ops/s of 100", r.load.achieved_rate);
        assert!(r.summary.events_per_sec.is_some_and(|v| v > 0.0), "applied changes measured: {:?}", r.summary.events_per_sec);
        assert!(r.pipeline.probe_latency_ms.count > 10, "probes: {}", r.pipeline.probe_latency_ms.count);
        // Per hop, over every change (the sink runs in audit mode under the harness).
        for (hop, p) in [("e2e", &r.pipeline.e2e_latency_ms), ("capture", &r.pipeline.capture_latency_ms), ("apply", &r.pipeline.apply_latency_ms)] {
            assert!(p.count as f64 >= r.load.achieved_rate * 10.0, "{hop} latency over every change: {} samples", p.count);
        }
        assert!(r.pipeline.slot_lag_bytes_max.is_some(), "slot lag measured");
        let postgres_cpu: f64 = r.series.iter().filter_map(|s| s.cpu_pct.get("postgres")).sum();
        assert!(postgres_cpu > 0.0, "postgres' backends are counted in its CPU");
        assert!(r.series.iter().any(|s| s.cpu_pct.contains_key("harness")), "the harness's own CPU is reported");
        assert!(r.series.len() >= 15, "one sample per second ({} samples)", r.series.len());
        for name in ["report.json", "report.html", "summary.md", "junit.xml"] {
            assert!(outcome.dir.join(name).is_file(), "{name} written");
        }
        files.push(outcome.dir.join("report.json"));
    }
    let diff = |args: &[&std::ffi::OsStr]| -> anyhow::Result<(i32, serde_json::Value)> {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_harness")).arg("diff").args(args).arg("--json").output()?;
        let code = out.status.code().unwrap_or(-1);
        let json = serde_json::from_slice(&out.stdout)
            .map_err(|e| anyhow::anyhow!("diff exited {code} without JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)))?;
        Ok((code, json))
    };
    let verdict = |d: &serde_json::Value, name: &str| -> Option<String> {
        d["metrics"].as_array()?.iter().find(|m| m["name"] == name).and_then(|m| m["verdict"].as_str().map(str::to_owned))
    };
    // Two real runs of the same scenario, with a tolerance wide enough for run-to-run
    // noise on this machine: no regression, exit 0.
    let (code, d) = diff(&[files[0].as_os_str(), files[1].as_os_str(), "--tolerance".as_ref(), "*=500:5000".as_ref()])?;
    assert_eq!(code, 0, "two healthy runs within a wide tolerance: {d:#}");
    for metric in ["events_per_sec", "e2e_latency_ms.p95", "capture_latency_ms.p95", "apply_latency_ms.p95", "convergence.missing"] {
        assert!(verdict(&d, metric).is_some(), "diff covers {metric}");
    }
    // The second run with its e2e p95 made five times worse: a gated regression, exit 4.
    let mut slower: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&files[1])?)?;
    let p95 = slower["pipeline"]["e2e_latency_ms"]["p95"].as_f64().expect("e2e p95 measured");
    slower["pipeline"]["e2e_latency_ms"]["p95"] = serde_json::json!(p95 * 5.0 + 100.0);
    let slower_path = files[1].with_file_name("report-slower.json");
    std::fs::write(&slower_path, serde_json::to_string(&slower)?)?;
    let (code, d) = diff(&[files[0].as_os_str(), slower_path.as_os_str()])?;
    assert_eq!(code, 4, "a five times slower p95 is a regression: {d:#}");
    assert_eq!(verdict(&d, "e2e_latency_ms.p95").as_deref(), Some("regressed"));
    Ok(())
}

/// The captured tables idle while another table is written: Debezium's heartbeat keeps the
/// slot confirming newer positions, so its backlog stays a small share of the WAL written
/// meanwhile (without the heartbeat it would hold all of it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tables_keep_the_slot_releasing_wal() -> anyhow::Result<()> {
    let _turn = harness::testing::stack_turn().await;
    let mut scenario = Scenario::load("idle-tables")?;
    let idle = scenario.idle.as_mut().expect("the scenario has an idle phase");
    // A minute of idling writes enough WAL (~10 MB) to tell holding from releasing.
    idle.duration = Duration::from_secs(60);
    let options = RunOptions {
        scenario,
        driver: None,
        duration: Some(Duration::from_secs(20)),
        rate: None,
        seed: 1,
        reuse: None,
        keep: false,
        reports_dir: harness::testing::run_dir("reports"),
        stack: harness::orchestrator::stack::StackChoice::local(),
    };
    let r = run(options).await?.report;
    let p = &r.pipeline;
    let (wal, after) = (p.idle_wal_bytes.expect("idle phase measured"), p.slot_lag_bytes_max_after_load.expect("slot lag after the load measured"));
    assert!(wal > 4 * 1024 * 1024, "the idle phase wrote {wal} bytes of WAL");
    assert!(after * 3 < wal, "the slot held {after} of the {wal} bytes written while its tables were idle");
    assert!(p.slot_lag_bytes_max_during_load.is_some(), "slot lag during the load measured apart");
    let failed: Vec<_> = r.thresholds.iter().filter(|t| !t.passed).collect();
    assert!(failed.is_empty() && r.summary.converged && r.summary.no_verdict.is_empty(), "{failed:?} {:?}", r.summary.no_verdict);
    Ok(())
}

/// A fault that could not be injected leaves the run without a verdict, in every report
/// file and in its exit code; in the same run the sink is killed and restarted, and its
/// counters still cover every change (summed over the restart, not reset by it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_that_did_not_inject_has_no_verdict_and_a_sink_restart_keeps_its_counters() -> anyhow::Result<()> {
    use harness::faults::{FaultKind, FaultSpec};
    let _turn = harness::testing::stack_turn().await;
    let mut scenario = Scenario::load("baseline")?;
    let fault = |at: u64, fault: FaultKind, target: &str| FaultSpec {
        at: Duration::from_secs(at),
        duration: Duration::from_secs(3),
        target: target.into(),
        fault,
        latency_ms: None,
        jitter_ms: None,
        bandwidth_kbps: None,
        count: Some(2),
    };
    // A topic that does not exist (tansu creates none on first use): the poison cannot be
    // produced. Scenario files refuse such a target; built here, it reaches the injector.
    scenario.faults = vec![fault(5, FaultKind::Poison, "no_such_table"), fault(10, FaultKind::Kill, "sink")];
    let options = RunOptions {
        scenario,
        driver: None,
        duration: Some(Duration::from_secs(25)),
        rate: Some(50.0),
        seed: 3,
        reuse: None,
        keep: false,
        reports_dir: harness::testing::run_dir("reports"),
        stack: harness::orchestrator::stack::StackChoice::local(),
    };
    let outcome = run(options).await?;
    let r = &outcome.report;
    assert!(r.summary.no_verdict.iter().any(|n| n.contains("poison no_such_table") && n.contains("failed to inject")), "{:?}", r.summary.no_verdict);
    let verdict = harness::report::verdict(r);
    assert_eq!(verdict, harness::report::model::Verdict::NoVerdict);
    assert_eq!(harness::exit::code_for_verdict(verdict), harness::exit::NO_VERDICT);
    for file in ["summary.md", "junit.xml", "report.html"] {
        let text = std::fs::read_to_string(outcome.dir.join(file))?;
        assert!(text.contains("NO VERDICT") && text.contains("failed to inject"), "{file} says no verdict, with the reason");
    }
    // The kill did inject, and the sink came back.
    let kill = r.faults.iter().find(|f| f.kind == "kill").expect("the kill is recorded");
    assert!(!kill.parameters.contains_key("error") && kill.service_recovery_s.is_some(), "{kill:?}");
    // Every change delivered was validated by one sink process or the other: the counters
    // of the killed one are kept (without that, only the restarted sink's share is left).
    let delivered = r.pipeline.e2e_latency_ms.count;
    assert!(delivered > 500, "{delivered} changes delivered");
    assert!(r.validation.passed as f64 >= delivered as f64 * 0.95, "validated {} of {delivered} delivered changes", r.validation.passed);
    assert!(r.summary.errors_by_kind.contains_key("sink_errors"), "the sink's error counter was read: {:?}", r.summary.errors_by_kind);
    Ok(())
}

/// Load the system never saw is not a PASS: the source's tables are locked for 8 s of a
/// 20 s run (the workload's writes wait; no fault the run knows of excuses it), so the
/// stage delivers well under its rate and the run has no verdict, with that reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_load_was_not_delivered_is_not_a_pass() -> anyhow::Result<()> {
    // A stack of the test's own, reused by the run, so the test can reach its source.
    let stack = harness::testing::TestStack::start("undelivered", |_| {}).await?;
    let options = RunOptions {
        scenario: Scenario::load("baseline")?,
        driver: None,
        duration: Some(Duration::from_secs(20)),
        rate: Some(50.0),
        seed: 4,
        reuse: Some(stack.run_dir.clone()),
        keep: false,
        reports_dir: harness::testing::run_dir("reports"),
        stack: harness::orchestrator::stack::StackChoice::local(),
    };
    let pg = stack.endpoints.postgres.clone();
    let locked = tokio::spawn(async move {
        // Into the run's load: the source has taken a few hundred rows of it.
        let mut client = pg.connect("app").await?;
        let inserted = "SELECT coalesce(sum(n_tup_ins), 0)::int8 FROM pg_stat_user_tables WHERE schemaname = 'public'";
        let before: i64 = client.query_one(inserted, &[]).await?.get(0);
        let until = std::time::Instant::now() + Duration::from_secs(300);
        while client.query_one(inserted, &[]).await?.get::<_, i64>(0) < before + 300 {
            anyhow::ensure!(std::time::Instant::now() < until, "the run's load never started");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // Held past the end of the 20 s load: writes that wait on it cannot complete inside
        // the stage, so the stage's average rate cannot be made up by a burst after it.
        let tx = client.transaction().await?;
        tx.batch_execute("LOCK TABLE customer IN ACCESS EXCLUSIVE MODE").await?;
        tokio::time::sleep(Duration::from_secs(25)).await;
        tx.commit().await?;
        anyhow::Ok(())
    });
    let outcome = run(options).await?;
    locked.await??;
    let r = &outcome.report;
    assert!(r.summary.no_verdict.iter().any(|n| n.starts_with("load not delivered")), "{:?} {:?}", r.summary.no_verdict, r.load.stages);
    assert_ne!(harness::report::verdict(r), harness::report::model::Verdict::Pass);
    Ok(())
}
