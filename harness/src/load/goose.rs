//! The goose driver, in process. Each goose user paces one operation per second
//! (`set_wait_time(1s, 1s)`), so a test plan of user counts is the arrival-rate plan;
//! goose's coordinated-omission mitigation back-fills the requests a stalled user would
//! have sent, so a stall shows in the latency percentiles instead of hiding in fewer
//! requests. Every request carries a fresh W3C `traceparent`, 5% of them sampled.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use goose::config::{GooseConfiguration, GooseDefault, GooseDefaultType};
use goose::goose::{GooseMethod, GooseRequest, GooseUser, Scenario, Transaction, TransactionResult};
use goose::metrics::GooseCoordinatedOmissionMitigation;
use goose::prelude::GooseAttack;
use rand::Rng;

use super::{DriverError, DriverResult, LoadPlan};
use crate::verify::Percentiles;

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

async fn operation(user: &mut GooseUser) -> TransactionResult {
    let traceparent = {
        let mut rng = rand::rng();
        let flags = if rng.random::<f64>() < TRACE_SAMPLE_RATIO { "01" } else { "00" };
        format!("00-{:032x}-{:016x}-{flags}", rng.random::<u128>() | 1, rng.random::<u64>() | 1)
    };
    let builder = user.get_request_builder(&GooseMethod::Post, OPS_PATH)?.header("traceparent", traceparent).json(&serde_json::json!({}));
    let request = GooseRequest::builder().set_request_builder(builder).build();
    let mut response = user.request(request).await?;
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
    let scenario = Scenario::new("workload")
        .set_wait_time(Duration::from_secs(1), Duration::from_secs(1))
        .map_err(failed)?
        .register_transaction(Transaction::new(std::sync::Arc::new(move |user| Box::pin(operation(user)))).set_name("op"));
    let report = out_dir.join("goose-report.html");
    let attack = GooseAttack::initialize_with_config(GooseConfiguration::default())
        .map_err(failed)?
        .register_scenario(scenario)
        .set_default(GooseDefault::Host, api)
        .and_then(|a| a.set_default(GooseDefault::TestPlan, test_plan(plan).as_str()))
        .and_then(|a| a.set_default(GooseDefault::CoordinatedOmissionMitigation, GooseCoordinatedOmissionMitigation::Average))
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
    // The mitigated data includes the back-filled requests of stalled users.
    let timing = requests.coordinated_omission_data.as_ref().unwrap_or(&requests.raw_data);
    let ms = |q: f32| timing.percentile_us(q) as f64 / 1000.0;
    let total = (requests.success_count + requests.fail_count) as u64;
    Ok(DriverResult {
        driver: "goose".into(),
        requests: total,
        failures: requests.fail_count as u64,
        latency_ms: Percentiles {
            count: timing.counter as u64,
            p50: ms(0.5),
            p90: ms(0.9),
            p95: ms(0.95),
            p99: ms(0.99),
            max: timing.maximum_time_us as f64 / 1000.0,
        },
        achieved_rate: total as f64 / plan.duration().as_secs_f64().max(1.0),
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
