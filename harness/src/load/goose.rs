//! The goose driver, in process. Each goose user runs its own schedule of one operation per
//! second at fixed intended times (open model: the next start does not wait for the last
//! answer plus a pause), so a test plan of user counts is the arrival-rate plan. A request
//! that starts late because its user was still busy counts its delay: latency is measured
//! from the intended start, so a stall shows in the percentiles instead of hiding in fewer
//! requests. Every request carries a fresh W3C `traceparent`, 5% of them sampled.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use goose::config::{GooseConfiguration, GooseDefault, GooseDefaultType};
use goose::goose::{GooseMethod, GooseRequest, GooseUser, Scenario, Transaction, TransactionResult};
use goose::metrics::GooseCoordinatedOmissionMitigation;
use goose::prelude::GooseAttack;
use rand::Rng;

use super::{DriverError, DriverResult, LoadPlan};

const OPS_PATH: &str = "/v1/ops";

fn failed(reason: impl std::fmt::Display) -> DriverError {
    DriverError::Failed { driver: "goose", reason: reason.to_string() }
}

/// goose's test plan (`users,duration;...`, each step ramping linearly to its user
/// count) for a rate plan, at one operation per user per second.
pub fn test_plan(plan: &LoadPlan) -> String {
    let mut out = String::new();
    let mut current = 0.0;
    for segment in &plan.segments {
        if (segment.from - current).abs() >= 1.0 {
            let _ = write!(out, "{},1s;", segment.from.round() as u64);
        }
        let _ = write!(out, "{},{}s;", segment.to.round() as u64, segment.duration.as_secs().max(1));
        current = segment.to;
    }
    out.push_str("0,0s");
    out
}

/// Share of requests whose trace is sampled (flag `01`): only those are carried through
/// the pipeline as a header (see `workload::executor::execute`), enough to follow requests
/// end to end without a header on every change event.
const TRACE_SAMPLE_RATIO: f64 = 0.05;

/// A user's schedule: when its next request is due.
#[derive(Debug, Clone)]
struct Pace {
    next: Instant,
}

/// Every request's intended start (seconds after the load's start) and its latency from
/// that start, in milliseconds.
type Latencies = Arc<Mutex<Vec<(f64, f64)>>>;

/// The interval of each user's schedule: one operation per second.
const PERIOD: Duration = Duration::from_secs(1);

async fn operation(user: &mut GooseUser, latencies: Latencies, load_start: Instant) -> TransactionResult {
    // The first request of a user is spread over the first period, so users started
    // together do not fire together.
    let intended = match user.get_session_data_mut::<Pace>() {
        Some(pace) => {
            let due = pace.next;
            pace.next = due + PERIOD;
            due
        }
        None => {
            let due = Instant::now() + PERIOD.mul_f64(rand::rng().random::<f64>());
            user.set_session_data(Pace { next: due + PERIOD });
            due
        }
    };
    tokio::time::sleep_until(intended.into()).await;
    let traceparent = {
        let mut rng = rand::rng();
        let flags = if rng.random::<f64>() < TRACE_SAMPLE_RATIO { "01" } else { "00" };
        format!("00-{:032x}-{:016x}-{flags}", rng.random::<u128>() | 1, rng.random::<u64>() | 1)
    };
    let builder = user.get_request_builder(&GooseMethod::Post, OPS_PATH)?.header("traceparent", traceparent).json(&serde_json::json!({}));
    let request = GooseRequest::builder().set_request_builder(builder).build();
    let mut response = user.request(request).await?;
    let at = intended.saturating_duration_since(load_start).as_secs_f64();
    latencies.lock().expect("latency list").push((at, intended.elapsed().as_secs_f64() * 1000.0));
    // 409: every key tried vanished under concurrent deletes; the workload's own choice,
    // not a failure of the system under test.
    if let Ok(r) = &response.response {
        if r.status().as_u16() == 409 {
            user.set_success(&mut response.request)?;
        }
    }
    Ok(())
}

pub async fn run(api: &str, plan: &LoadPlan, out_dir: &Path) -> Result<DriverResult, DriverError> {
    let latencies: Latencies = Arc::new(Mutex::new(Vec::new()));
    let recorder = latencies.clone();
    let load_start = Instant::now();
    // No wait between transactions: each one sleeps until its own intended start.
    let scenario = Scenario::new("workload").register_transaction(
        Transaction::new(Arc::new(move |user| {
            let recorder = recorder.clone();
            Box::pin(async move { operation(user, recorder, load_start).await })
        }))
        .set_name("op"),
    );
    let report = out_dir.join("goose-report.html");
    let attack = GooseAttack::initialize_with_config(GooseConfiguration::default())
        .map_err(failed)?
        // One HTTP client for every user: building one per user (TLS roots included) cost
        // the harness seconds of CPU as the load started, and the workload API needs no
        // per-user session.
        .set_client_builder_without_cookies(goose::client::GooseClientBuilder::new().without_cookies().timeout(Duration::from_secs(60)))
        .map_err(failed)?
        .register_scenario(scenario)
        .set_default(GooseDefault::Host, api)
        .and_then(|a| a.set_default(GooseDefault::TestPlan, test_plan(plan).as_str()))
        // The schedule already measures from intended starts; goose's back-fill would count
        // a late request twice.
        .and_then(|a| a.set_default(GooseDefault::CoordinatedOmissionMitigation, GooseCoordinatedOmissionMitigation::Disabled))
        .and_then(|a| a.set_default(GooseDefault::NoTelnet, true))
        .and_then(|a| a.set_default(GooseDefault::NoPrintMetrics, true))
        .and_then(|a| a.set_default(GooseDefault::Quiet, 1usize))
        .and_then(|a| a.set_default(GooseDefault::ReportFile, report.to_string_lossy().as_ref()))
        .map_err(failed)?;
    let metrics = attack.execute().await.map_err(failed)?;
    // One endpoint only: the single aggregate is the workload's requests.
    let Some(requests) = metrics.requests.values().max_by_key(|r| r.success_count + r.fail_count) else {
        return Err(failed("goose made no request"));
    };
    let total = (requests.success_count + requests.fail_count) as u64;
    let timed = std::mem::take(&mut *latencies.lock().expect("latency list"));
    let latency_ms = crate::run::percentiles(timed.iter().map(|(_, l)| *l).collect());
    Ok(DriverResult {
        driver: "goose".into(),
        requests: total,
        failures: requests.fail_count as u64,
        latency_ms,
        achieved_rate: total as f64 / plan.duration().as_secs_f64().max(1.0),
        dropped: None,
        timed_latencies: Some(timed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::Segment;

    #[test]
    fn a_rate_plan_becomes_a_user_plan() {
        let s = |d, from, to| Segment { duration: Duration::from_secs(d), from, to };
        let baseline = LoadPlan { segments: vec![s(300, 100.0, 100.0)] };
        assert_eq!(test_plan(&baseline), "100,1s;100,300s;0,0s");
        let spike = LoadPlan { segments: vec![s(60, 100.0, 100.0), s(60, 500.0, 500.0), s(120, 100.0, 100.0)] };
        assert_eq!(test_plan(&spike), "100,1s;100,60s;500,1s;500,60s;100,1s;100,120s;0,0s");
        let ramp = LoadPlan { segments: vec![s(300, 100.0, 1000.0)] };
        assert_eq!(test_plan(&ramp), "100,1s;1000,300s;0,0s");
    }
}
