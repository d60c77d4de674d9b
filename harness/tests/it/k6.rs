//! The k6 driver against the real workload API on a real PostgreSQL: the plan's rate is
//! delivered, every operation lands in the database, and each carries its own traceparent.

use std::time::Duration;

use harness::load::{LoadPlan, Segment};
use harness::testing::{TestPostgres, run_dir};
use harness::workload::Mix;
use harness::workload::api::{self, Workload};

#[tokio::test]
async fn k6_drives_the_workload_api_at_the_planned_rate() -> anyhow::Result<()> {
    let pg = TestPostgres::start("k6").await?;
    let workload = Workload::new(&pg.endpoint, Mix::default(), 7, 8).await?;
    let (addr, server) = api::serve(workload.clone()).await?;
    let plan = LoadPlan { segments: vec![Segment { duration: Duration::from_secs(10), from: 50.0, to: 50.0 }] };
    let out = run_dir("k6-out");

    let result = harness::load::k6::run(&format!("http://{addr}"), &plan, "baseline", &out).await?;
    server.abort();

    assert_eq!(result.driver, "k6");
    assert!(result.requests.abs_diff(500) <= 50, "requests {} not within 10% of 500: {result:?}", result.requests);
    assert_eq!(result.failures, 0, "{result:?}; see {}", out.join("k6.log").display());
    assert!(result.latency_ms.p50 > 0.0 && result.latency_ms.p99 <= result.latency_ms.max, "{:?}", result.latency_ms);
    assert!((result.achieved_rate - 50.0).abs() <= 5.0, "achieved {:.1} ops/s", result.achieved_rate);
    assert!(out.join("k6-summary.json").is_file() && out.join("k6.log").is_file());

    // Every request committed except the few 409s (keys deleted concurrently), which the
    // API does not count as operations.
    let stats = workload.stats().await;
    assert!(
        stats.total <= result.requests && stats.total * 100 >= result.requests * 95,
        "API committed {} of {} requests: {stats:?}",
        stats.total,
        result.requests
    );
    assert_eq!(stats.errors, result.requests - stats.total, "requests that did not commit are the API's 409s: {stats:?}");
    assert_eq!(stats.traceparents, stats.total, "k6 sends a valid traceparent with every request");

    let app = pg.endpoint.connect("app").await?;
    let row = app.query_one("SELECT count(*), count(DISTINCT traceparent) FROM harness.write_trace", &[]).await?;
    let (recorded, distinct): (i64, i64) = (row.get(0), row.get(1));
    assert!(recorded > 0);
    assert_eq!(recorded as u64, stats.traceparents, "one trace row per committed operation");
    assert_eq!(distinct, recorded, "each request has its own trace id");
    Ok(())
}

#[tokio::test]
async fn k6_fails_clearly_when_the_api_is_down() {
    let plan = LoadPlan { segments: vec![Segment { duration: Duration::from_secs(1), from: 5.0, to: 5.0 }] };
    let err = harness::load::k6::run("http://127.0.0.1:9", &plan, "baseline", &run_dir("k6-down")).await.expect_err("nothing listens on port 9");
    assert!(err.to_string().contains("workload API at http://127.0.0.1:9 is not reachable"), "{err}");
}
