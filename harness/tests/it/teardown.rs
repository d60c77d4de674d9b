//! Nothing the harness starts outlives `down`, nor a test that panics.

use std::sync::{Arc, Mutex};

use harness::orchestrator::local::process::ProcessHandle;
use harness::orchestrator::{Backend, ServiceKind};
use harness::testing::{TestPostgres, TestStack};

fn assert_all_dead(handles: &[ProcessHandle]) {
    for h in handles {
        assert!(!h.is_alive(), "pid {} (log {}) survived teardown", h.pid, h.log.display());
        // Its whole process group is gone too (e.g. postgres' backends).
        assert!(nix::sys::signal::killpg(nix::unistd::Pid::from_raw(h.pid), None).is_err(), "process group {} still has members", h.pid);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_leaves_no_process_running() -> anyhow::Result<()> {
    let mut stack = TestStack::start("teardown", |c| c.seed.customers = 10).await?;
    let handles: Vec<ProcessHandle> = stack.processes.clone();
    assert_eq!(handles.len(), 4, "postgres, broker, debezium and sink were started");
    assert!(handles.iter().all(ProcessHandle::is_alive));
    let statuses = stack.stack.status().await?;
    assert!(statuses.iter().all(|s| s.state == harness::orchestrator::ServiceState::Healthy), "{statuses:?}");
    stack.stack.down().await?;
    assert_all_dead(&handles);
    Ok(())
}

#[test]
fn a_panicking_test_leaves_no_process_running() {
    let started: Arc<Mutex<Vec<ProcessHandle>>> = Arc::default();
    let seen = started.clone();
    let outcome = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async {
            let pg = TestPostgres::start("panicking").await.expect("postgres starts");
            seen.lock().unwrap().push(pg.handle().clone());
            panic!("deliberate failure while a service runs");
        })
    })
    .join();
    assert!(outcome.is_err(), "the thread panicked");
    let handles = started.lock().unwrap().clone();
    assert_eq!(handles.len(), 1);
    assert_all_dead(&handles);
}

/// `--reuse`: a stack the run did not start is never torn down by it, also when the run's
/// value is dropped early (Ctrl-C drops the run's future; a panic unwinds through it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_borrowed_stack_survives_the_drop_of_the_run_that_borrowed_it() -> anyhow::Result<()> {
    use harness::orchestrator::local::LocalStack;
    let dir = harness::testing::run_dir("teardown-borrowed");
    let mut config = harness::config::StackConfig::new(&dir);
    config.with_sink = false;
    std::fs::create_dir_all(dir.join("logs"))?;
    // The unprivileged postgres user must reach the run folder (as `up` arranges).
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let mut owner = LocalStack::new(config)?;
    owner.start_service(ServiceKind::Postgres).await?;
    let postgres = owner.handle(ServiceKind::Postgres).cloned().expect("postgres started");
    owner.detach(); // what `harness up` leaves behind
    {
        let mut borrowed = LocalStack::open(&dir)?.expect("the state file of the running stack");
        borrowed.detach();
        // Dropped here, as an interrupted `harness run --reuse` drops it.
    }
    assert!(postgres.is_alive(), "a borrowed stack was torn down by the run that reused it");
    // Its owner (`harness down`) does tear it down.
    let mut owner = LocalStack::open(&dir)?.expect("state file");
    owner.down().await?;
    assert_all_dead(&[postgres]);
    Ok(())
}
