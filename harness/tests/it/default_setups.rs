//! The setups a new user starts from, end to end through the main job: Debezium left at
//! its defaults with a sink given no `[source]` settings, and the source tables at
//! PostgreSQL's default REPLICA IDENTITY DEFAULT with TOASTed values.

use harness::run::{RunOptions, RunOutcome, run};
use harness::scenario::Scenario;

async fn run_scenario(name: &str) -> anyhow::Result<RunOutcome> {
    let _turn = harness::testing::stack_turn().await;
    let options = RunOptions {
        scenario: Scenario::load(name)?,
        driver: None,
        duration: None,
        rate: None,
        seed: 7,
        reuse: None,
        keep: false,
        reports_dir: harness::testing::run_dir(&format!("reports-{name}")),
        stack: harness::orchestrator::stack::StackChoice::local(),
    };
    Ok(run(options).await?)
}

fn assert_clean(outcome: &RunOutcome) {
    let r = &outcome.report;
    let failed: Vec<_> = r.thresholds.iter().filter(|t| !t.passed).collect();
    assert!(r.summary.converged, "run {} did not converge: {:?} {:?}", r.run.run_id, r.convergence.anomaly_counts, r.convergence.anomalies);
    assert!(r.convergence.anomaly_counts.values().all(|n| *n == 0), "anomalies: {:?}", r.convergence.anomaly_counts);
    assert!(failed.is_empty(), "thresholds failed: {failed:?}");
    assert_eq!(r.validation.dlq, 0, "no event dead-lettered: {:?}", r.validation.failed_by_rule);
    assert!(r.convergence.rows_compared > 1000, "rows compared: {}", r.convergence.rows_compared);
}

/// Debezium at its defaults (schemas on, precise decimals, adaptive times): before the
/// sink read the event's schema, every row with money went to the DLQ as `decode`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_at_its_defaults_converges_with_an_unconfigured_sink() -> anyhow::Result<()> {
    let outcome = run_scenario("debezium-defaults").await?;
    assert_clean(&outcome);
    let stack = outcome.dir.join("stack");
    let properties = std::fs::read_to_string(stack.join("debezium").join("launcher.properties"))?;
    for forced in ["decimal.handling.mode", "time.precision.mode", "schemas.enable"] {
        assert!(!properties.contains(forced), "Debezium at its defaults sets no {forced}: {properties}");
    }
    assert!(properties.contains("value.converter.replace.null.with.default=false"), "the one recommended setting stays");
    let sink = std::fs::read_to_string(stack.join("sink").join("sink.toml"))?;
    assert!(!sink.contains("[source]"), "the sink has no [source] settings: {sink}");
    Ok(())
}

/// Every table at REPLICA IDENTITY DEFAULT, `notes` (12,800 incompressible characters,
/// stored out of line) on customer and orders, updates that leave it unchanged: the TOAST
/// placeholder never overwrites or loses the stored value, deletes carry only the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_identity_default_with_toasted_notes_converges() -> anyhow::Result<()> {
    let outcome = run_scenario("replica-identity-default").await?;
    assert_clean(&outcome);
    let schema_change = outcome.report.faults.iter().find(|f| f.kind == "schema_change").expect("the setup DDL ran");
    assert!(!schema_change.parameters.contains_key("error"), "setup DDL failed: {:?}", schema_change.parameters);
    Ok(())
}
