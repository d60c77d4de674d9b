//! Carrying out a fault schedule against the stack (any backend) while load runs.

use std::time::{Duration, Instant};

use super::{FaultKind, FaultSpec, Link};
use crate::orchestrator::ServiceKind;
use crate::orchestrator::stack::Stack;
use crate::orchestrator::wait::{self, NotReady};
use crate::report::model::FaultRecord;
use fault_proxy::LinkFault;

/// Longest wait for a service to be healthy again after a fault.
const RECOVERY_LIMIT: Duration = Duration::from_secs(180);

fn service(name: &str) -> Option<ServiceKind> {
    ServiceKind::ALL.into_iter().find(|s| s.name() == name)
}

/// Runs `faults` in order (each starting at its `at` after `started`, or right after the
/// previous one if that ran late) and records each one.
pub async fn run_schedule(stack: &mut Stack, faults: &[FaultSpec], started: Instant) -> Vec<FaultRecord> {
    let mut records = Vec::new();
    for fault in faults {
        tokio::time::sleep_until((started + fault.at).into()).await;
        eprintln!("\nfault: {} {} for {:?}", fault.fault.name(), fault.target, fault.duration);
        records.push(apply(stack, fault, started).await);
    }
    records
}

/// Applies one fault, waits its duration, reverts it, and measures the service's recovery.
pub async fn apply(stack: &mut Stack, fault: &FaultSpec, started: Instant) -> FaultRecord {
    let start_s = started.elapsed().as_secs_f64();
    let mut parameters = fault.parameters();
    // The service and when it was started again (or resumed): recovery is measured from there.
    let mut recovered_service: Option<(ServiceKind, Instant)> = None;
    // Connector faults recover when Connect reports the connector and its tasks running.
    let mut recovered_connector: Option<Instant> = None;
    let outcome: Result<(), String> = async {
        if fault.on_connector() {
            let connect = stack.connector().map_err(|e| e.to_string())?;
            let failed = |e: crate::orchestrator::connect::ConnectError| e.to_string();
            match (fault.target.as_str(), fault.fault) {
                (super::CONNECTOR, FaultKind::Pause) => {
                    connect.pause().await.map_err(failed)?;
                    tokio::time::sleep(fault.duration).await;
                    connect.resume().await.map_err(failed)?;
                }
                (super::CONNECTOR, _) => connect.restart().await.map_err(failed)?,
                _ => connect.restart_task(0).await.map_err(failed)?,
            }
            recovered_connector = Some(Instant::now());
            return Ok(());
        }
        match fault.fault {
            FaultKind::Kill | FaultKind::Stop | FaultKind::Pause | FaultKind::Restart => {
                let svc = service(&fault.target).ok_or("unknown service")?;
                let failed = |e: crate::orchestrator::ServiceError| e.to_string();
                let control = stack.control().map_err(failed)?;
                match fault.fault {
                    FaultKind::Kill => control.kill(svc).await.map_err(failed)?,
                    FaultKind::Stop | FaultKind::Restart => control.stop(svc).await.map_err(failed)?,
                    FaultKind::Pause => control.pause(svc).await.map_err(failed)?,
                    _ => {}
                }
                if fault.fault != FaultKind::Restart {
                    tokio::time::sleep(fault.duration).await;
                }
                let restarted = Instant::now();
                recovered_service = Some((svc, restarted));
                if fault.fault == FaultKind::Pause {
                    control.resume(svc).await.map_err(failed)?;
                } else {
                    control.start(svc).await.map_err(failed)?;
                }
                Ok(())
            }
            FaultKind::Latency | FaultKind::Bandwidth | FaultKind::Blackhole | FaultKind::Down => {
                let link = Link::parse(&fault.target).ok_or("unknown link")?;
                let link_fault = match fault.fault {
                    FaultKind::Latency => LinkFault::Latency {
                        delay: Duration::from_millis(fault.latency_ms.unwrap_or(100)),
                        jitter: Duration::from_millis(fault.jitter_ms.unwrap_or(0)),
                    },
                    FaultKind::Bandwidth => LinkFault::Bandwidth { bytes_per_sec: fault.bandwidth_kbps.unwrap_or(64) * 1024 / 8 },
                    FaultKind::Blackhole => LinkFault::Blackhole,
                    _ => LinkFault::Down,
                };
                let control = stack.control_ref().map_err(|e| e.to_string())?;
                control.set_link(link, link_fault).await.map_err(|e| e.to_string())?;
                tokio::time::sleep(fault.duration).await;
                control.set_link(link, LinkFault::Healthy).await.map_err(|e| e.to_string())
            }
            FaultKind::Reset => {
                let link = Link::parse(&fault.target).ok_or("unknown link")?;
                stack.control_ref().map_err(|e| e.to_string())?.reset_link(link).await.map_err(|e| e.to_string())
            }
            FaultKind::Poison => {
                let sent = super::poison::inject(&stack.endpoints(), &fault.target, fault.count.unwrap_or(1)).await.map_err(|e| e.to_string())?;
                parameters.insert("sent".into(), sent.len().to_string());
                parameters.insert(super::POISON_OFFSETS.into(), super::format_offsets(&sent));
                Ok(())
            }
        }
    }
    .await;
    if let Err(e) = outcome {
        parameters.insert("error".into(), e);
    }
    let end_s = started.elapsed().as_secs_f64();
    let service_recovery_s = match (recovered_service, recovered_connector) {
        (None, Some(resumed)) => connector_recovery(stack, resumed).await,
        (recovered, _) => service_recovery(stack, recovered).await,
    };
    FaultRecord {
        kind: fault.fault.name().into(),
        target: fault.target.clone(),
        parameters,
        start_s,
        end_s: Some(end_s),
        service_recovery_s,
        pipeline_recovery_s: None,
    }
}

/// Seconds from the resume (or restart request) until Connect reports the connector and
/// its tasks running again.
async fn connector_recovery(stack: &Stack, resumed: Instant) -> Option<f64> {
    let connect = stack.connector().ok()?;
    // A restart is asynchronous: the status may still say RUNNING for the old task at first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    recovered_after(resumed, || connect.is_running()).await
}

/// Seconds from `since` until `healthy` says so (polled every 100 ms); None after
/// `RECOVERY_LIMIT`.
async fn recovered_after<F, Fut>(since: Instant, mut healthy: F) -> Option<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let probe = || {
        let answer = healthy();
        async move { if answer.await { Ok(since.elapsed().as_secs_f64()) } else { Err(NotReady::<(), ()>::Yet(())) } }
    };
    wait::poll(RECOVERY_LIMIT, Duration::from_millis(100), probe).await.ok()
}

async fn service_recovery(stack: &Stack, recovered_service: Option<(ServiceKind, Instant)>) -> Option<f64> {
    match (recovered_service, stack.control_ref()) {
        (Some((svc, restarted)), Ok(control)) => recovered_after(restarted, || control.is_healthy(svc)).await,
        _ => None,
    }
}
