//! Each fault action on the real local stack, under writes: the service recovers, and
//! afterwards the target converges with no anomaly (the verifier proves nothing was lost).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use harness::faults::inject::apply;
use harness::faults::{FaultKind, FaultSpec};
use harness::orchestrator::stack::Stack;
use harness::run::sink_metrics;
use harness::testing::TestStack;
use harness::verify::{VerifyOptions, verify_postgres};
use harness::workload::Mix;
use harness::workload::api::Workload;

fn spec(fault: FaultKind, target: &str, secs: u64) -> FaultSpec {
    FaultSpec {
        at: Duration::ZERO,
        duration: Duration::from_secs(secs),
        target: target.into(),
        fault,
        latency_ms: (fault == FaultKind::Latency).then_some(150),
        jitter_ms: (fault == FaultKind::Latency).then_some(20),
        bandwidth_kbps: (fault == FaultKind::Bandwidth).then_some(64),
        count: (fault == FaultKind::Poison).then_some(3),
    }
}

/// Writes through the workload until stopped; returns how many operations committed.
fn writer(workload: Arc<Workload>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let _ = workload.perform(None, None).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        workload.total()
    })
}

async fn converges(stack: &Stack) -> anyhow::Result<()> {
    let options = VerifyOptions { settle: Some(Duration::from_secs(180)), load_ended: Some(Instant::now()), ..Default::default() };
    let report = verify_postgres(&stack.endpoints().postgres, &options).await?;
    assert!(report.converged, "did not converge: {:?} {:#?}", report.anomaly_counts, report.anomalies);
    assert!(report.anomaly_counts.is_empty());
    Ok(())
}

async fn with_faults(name: &str, faults: Vec<FaultSpec>) -> anyhow::Result<Vec<harness::report::model::FaultRecord>> {
    let mut stack = TestStack::start(name, |c| {
        c.seed.customers = 100;
        c.fault_proxies = true;
    })
    .await?;
    let workload = Workload::new(&stack.endpoints.postgres, Mix::default(), 3, 4).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let writes = writer(workload.clone(), stop.clone());
    let started = Instant::now();
    let mut records = Vec::new();
    for fault in &faults {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let record = apply(&mut stack.stack, fault, started).await;
        assert!(!record.parameters.contains_key("error"), "{} {} failed: {:?}", fault.fault.name(), fault.target, record.parameters);
        records.push(record);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let written = writes.await?;
    assert!(written > 100, "writes went on during the faults ({written})");
    converges(&stack.stack).await?;
    Ok(records)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_faults_recover_and_lose_nothing() -> anyhow::Result<()> {
    let records = with_faults(
        "faults-services",
        vec![
            spec(FaultKind::Kill, "sink", 3),
            spec(FaultKind::Stop, "debezium", 3),
            spec(FaultKind::Pause, "sink", 3),
            spec(FaultKind::Restart, "broker", 0),
            spec(FaultKind::Kill, "debezium", 2),
        ],
    )
    .await?;
    for r in &records {
        let recovery = r.service_recovery_s.unwrap_or_else(|| panic!("{} {} never recovered", r.kind, r.target));
        eprintln!("fault {} {}: healthy {recovery:.2}s after it was started again", r.kind, r.target);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_faults_delay_and_cut_but_lose_nothing() -> anyhow::Result<()> {
    let records = with_faults(
        "faults-links",
        vec![
            spec(FaultKind::Latency, "broker", 4),
            spec(FaultKind::Bandwidth, "sink-target", 3),
            spec(FaultKind::Blackhole, "sink-target", 4),
            spec(FaultKind::Down, "debezium-postgres", 3),
            spec(FaultKind::Reset, "broker", 0),
        ],
    )
    .await?;
    assert_eq!(records.len(), 5);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_end_in_the_dlq_and_the_pipeline_goes_on() -> anyhow::Result<()> {
    let mut stack = TestStack::start("faults-poison", |c| c.seed.customers = 50).await?;
    let sink_http = stack.endpoints.sink_http.clone();
    let dlq = || async { sink_metrics::sum(&sink_metrics::scrape(&sink_http).await.unwrap_or_default(), "sink_dlq_events_total") };
    let before = dlq().await;
    let record = apply(&mut stack.stack, &spec(FaultKind::Poison, "customer", 0), Instant::now()).await;
    assert_eq!(record.parameters.get("sent").map(String::as_str), Some("3"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while dlq().await < before + 3.0 {
        assert!(Instant::now() < deadline, "poison did not reach the DLQ");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Each poison event, by its offset, is in the sink's apply log as dead-lettered.
    let target = stack.endpoints.postgres.connect_target().await?;
    let log = harness::run::apply_log::read(&target, 0).await?;
    let mut records = vec![record];
    harness::faults::reconcile_poison(&mut records, &log);
    let p = &records[0].parameters;
    assert_eq!((p["dead_lettered"].as_str(), p["applied"].as_str(), p[harness::faults::POISON_UNRECONCILED].as_str()), ("3", "0", "0"), "{p:?}");
    // The sink is still healthy and still applies real changes.
    let pg = stack.endpoints.postgres.connect("app").await?;
    let id = uuid::Uuid::new_v4();
    pg.execute("INSERT INTO customer (id, email, status) VALUES ($1, 'after-poison@example.com', 'active')", &[&id]).await?;
    converges(&stack.stack).await?;
    Ok(())
}
