//! `harness run <scenario>`: up (unless reusing a stack), warm-up, load, drain, verify,
//! report, down (unless kept). While the load runs the pipeline is sampled every second
//! and probe writes measure end-to-end latency from outside.

pub mod apply_log;
mod assemble;
mod clock;
pub(crate) mod delivery;
pub mod fence;
mod idle;
pub mod lag;
mod meta;
pub(crate) mod probe;
pub(crate) mod procstat;
pub(crate) mod sampler;
pub mod sink_metrics;
mod stats;

pub use self::stats::{applied_per_sec, lag_recovery, percentiles, pipeline_recovery, step_probe_max};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::Mutex;

use crate::config::{StackConfig, TABLES};
use crate::load::{self, DriverKind, DriverResult, LoadPlan, Segment};
use crate::orchestrator::stack::{Stack, StackChoice};
use crate::orchestrator::wait::{self, NotReady};
use crate::orchestrator::{Endpoints, ServiceError};
use crate::report::model::{FaultRecord, Report, Sample, ValidationStats};
use crate::scenario::{Breakpoint, Scenario};
use crate::verify::VerifyOptions;
use crate::workload::api::{self, Workload};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Stack(#[from] ServiceError),
    #[error("workload: {0}")]
    Workload(#[from] crate::workload::executor::ExecError),
    #[error(transparent)]
    Driver(#[from] crate::load::DriverError),
    #[error(transparent)]
    Verify(#[from] crate::verify::VerifyError),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("the stack to reuse in {0} is not running (start it with `harness up --run-dir {0}`)")]
    NoStackToReuse(PathBuf),
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub scenario: Scenario,
    pub driver: Option<DriverKind>,
    pub duration: Option<Duration>,
    pub rate: Option<f64>,
    pub seed: u64,
    /// Run dir of a running stack to use instead of starting one.
    pub reuse: Option<PathBuf>,
    /// Leave the stack running (and its data on disk) after the run.
    pub keep: bool,
    pub reports_dir: PathBuf,
    /// Backend, image set and target of a stack this run starts.
    pub stack: StackChoice,
}

pub struct RunOutcome {
    pub report: Report,
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
}

/// Shared state of the tasks observing a run.
struct Observers {
    samples: Arc<Mutex<Vec<Sample>>>,
    /// The sink's counters, summed over its restarts by the sampler.
    counters: Arc<Mutex<sampler::CounterTotals>>,
    probes: Arc<Mutex<Vec<probe::ProbeResult>>>,
    stop: Arc<AtomicBool>,
    /// Probes stop with the load (before verification), the sampler goes on through it.
    stop_probes: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Observers {
    /// No new probe after this; returns once every probe sent has arrived or given up.
    async fn stop_probes(&self) {
        self.stop_probes.store(true, Ordering::Relaxed);
        probe::settle(&self.probes).await;
    }

    async fn stop(self) -> (Vec<Sample>, Vec<probe::ProbeResult>, sampler::CounterTotals) {
        self.stop_probes.store(true, Ordering::Relaxed);
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        let samples = self.samples.lock().await.clone();
        let probes = self.probes.lock().await.clone();
        let counters = self.counters.lock().await.clone();
        (samples, probes, counters)
    }
}

pub async fn run(options: RunOptions) -> Result<RunOutcome, RunError> {
    let scenario = &options.scenario;
    let started_at = Utc::now();
    let run_id = format!("{}-{}", scenario.name, started_at.format("%Y%m%d-%H%M%S"));
    let dir = options.reports_dir.join(&run_id);
    std::fs::create_dir_all(&dir).map_err(|e| RunError::Io(dir.clone(), e))?;
    let driver = options.driver.unwrap_or(scenario.load.driver);
    eprintln!("run {run_id}: scenario {}, driver {}, seed {}", scenario.name, driver.name(), options.seed);

    let mut snapshot_record = None;
    let mut stack = match &options.reuse {
        Some(run_dir) => {
            let mut stack = Stack::open(run_dir).await?.ok_or_else(|| RunError::NoStackToReuse(run_dir.clone()))?;
            // Not ours: never torn down, also when this run is interrupted or panics.
            stack.borrow_only();
            let statuses = stack.status().await?;
            if statuses.iter().any(|s| s.state != crate::orchestrator::ServiceState::Healthy) {
                stack.detach();
                return Err(RunError::NoStackToReuse(run_dir.clone()));
            }
            check_runnable(&stack, &options)?;
            stack
        }
        None => {
            let mut config = StackConfig::new(dir.join("stack"));
            config.seed.customers = scenario.stack.seed_customers;
            config.seed.seed = options.seed;
            config.partitions = scenario.stack.partitions;
            config.debezium_poll_interval_ms = scenario.stack.debezium_poll_interval_ms;
            config.debezium_defaults = scenario.stack.debezium_defaults;
            config.fault_proxies = scenario.needs_link_faults();
            let mut stack = Stack::create(config, options.stack.clone()).await?;
            check_runnable(&stack, &options)?;
            match &scenario.snapshot_fault {
                Some(fault) => {
                    let record = stack.up_with_snapshot_kill(fault.after, fault.downtime).await?;
                    snapshot_record = Some(record);
                }
                None => {
                    stack.up().await?;
                }
            }
            stack
        }
    };
    let outcome = measure(&options, &mut stack, driver, &run_id, &dir, started_at, snapshot_record).await;
    if options.reuse.is_some() || options.keep {
        stack.detach();
    } else {
        stack.down().await?;
        // Service data is large and of no use after the report; logs stay.
        for data in ["postgres", "broker"] {
            let _ = std::fs::remove_dir_all(dir.join("stack").join(data));
        }
    }
    outcome
}

/// Refuses, before any load, what the stack cannot do for this scenario: a fault its
/// backend cannot inject, and on an external stack a schema change (DDL on a team's
/// source) or a MongoDB target (the run reads the sink's apply log in PostgreSQL).
fn check_runnable(stack: &Stack, options: &RunOptions) -> Result<(), ServiceError> {
    let scenario = &options.scenario;
    let planned = scenario.fault_schedule(options.seed, scenario.plan(options.duration, options.rate).duration());
    stack.check_scenario(scenario, &planned)
}

/// The run's stages, one after another: prepare the workload, start observing, drive the
/// load (and the faults), wind down, verify, collect what the observers saw, report.
async fn measure(
    options: &RunOptions,
    stack: &mut Stack,
    driver: DriverKind,
    run_id: &str,
    dir: &Path,
    started_at: chrono::DateTime<Utc>,
    snapshot_record: Option<FaultRecord>,
) -> Result<RunOutcome, RunError> {
    let scenario = &options.scenario;
    let endpoints = stack.endpoints();
    let partitions = stack.partitions().unwrap_or(scenario.stack.partitions);
    let prepared = prepare(options, &endpoints, partitions, dir).await?;
    let mut load = start_observing(stack, scenario, &endpoints, &prepared, partitions).await;
    let driven = match drive(options, stack, driver, dir, &prepared.api_url, &load).await {
        Ok(driven) => driven,
        Err(e) => {
            load.observers.stop().await;
            prepared.api_task.abort();
            return Err(e);
        }
    };
    let load_ended = Instant::now();
    let load_secs = load_ended.duration_since(load.started).as_secs_f64();
    eprintln!("\nrun: load done ({load_secs:.0}s); waiting for the last probes, then verifying convergence (up to {:?})", scenario.verify.settle);
    let wound_down = wind_down(scenario, &endpoints, &mut load).await;
    let convergence = verify_convergence(scenario, &endpoints, partitions, &prepared, &load, &driven, started_at, load_ended, wound_down.live_results).await?;
    let collected = collect(stack, load, prepared.log_start, driven.fault_records, snapshot_record).await?;
    prepared.api_task.abort();
    let stats_after = prepared.workload.stats().await;
    let inputs = assemble::Inputs {
        options,
        stack,
        driver,
        run_id,
        started_at,
        endpoints: &endpoints,
        stats_before: prepared.stats_before,
        stats_after,
        clock_skew_ms: prepared.clock_skew_ms,
        audited: prepared.log_start.is_some(),
        load_secs,
        plan: driven.plan,
        driver_result: driven.driver_result,
        max_sustainable: driven.max_sustainable,
        fault_schedule: driven.fault_schedule,
        idle_wal_bytes: wound_down.idle_wal_bytes,
        no_verdict: convergence.no_verdict.into_iter().chain(wound_down.idle_error).collect(),
        convergence: convergence.report,
        collected,
    };
    let report = assemble::report(inputs).await;
    let files = crate::report::write_all(&report, dir).map_err(|e| RunError::Io(dir.to_path_buf(), e))?;
    Ok(RunOutcome { report, dir: dir.to_path_buf(), files })
}

/// What the load needs before it starts.
struct Prepared {
    workload: Arc<Workload>,
    api_url: String,
    api_task: tokio::task::JoinHandle<()>,
    /// The apply log's end before the load; None when the sink keeps no apply log.
    log_start: Option<i64>,
    clock_skew_ms: Option<f64>,
    stats_before: api::WorkloadStats,
}

/// The workload and its HTTP API, the warm-up, an empty pipeline, and where the apply log
/// stands before the load.
async fn prepare(options: &RunOptions, endpoints: &Endpoints, partitions: u32, dir: &Path) -> Result<Prepared, RunError> {
    let scenario = &options.scenario;
    let workload = Workload::new(&endpoints.postgres, scenario.load.mix, options.seed, 16).await?;
    let (addr, api_task) = api::serve(workload.clone()).await.map_err(|e| RunError::Io(dir.to_path_buf(), e))?;
    warm_up(&workload, scenario.load.warmup).await;
    drain_before_load(endpoints, partitions).await;
    let log_start = apply_log_position(endpoints).await?;
    if log_start.is_none() {
        eprintln!("run: the sink keeps no apply log (audit mode off): per-hop latency will be absent");
    }
    let clock_skew_ms = measure_clock_skew(endpoints).await;
    let stats_before = workload.stats().await;
    Ok(Prepared { workload, api_url: format!("http://{addr}"), api_task, log_start, clock_skew_ms, stats_before })
}

/// The apply log's end, read on a connection of its own (one opened earlier may not have
/// survived a fault that stopped PostgreSQL).
async fn apply_log_position(endpoints: &Endpoints) -> Result<Option<i64>, RunError> {
    let target = connect_target(endpoints).await?;
    Ok(apply_log::position(&target).await.map_err(apply_log_error)?)
}

async fn connect_target(endpoints: &Endpoints) -> Result<tokio_postgres::Client, crate::verify::VerifyError> {
    endpoints.postgres.connect_target().await.map_err(|e| crate::verify::VerifyError::Target(e.to_string()))
}

fn apply_log_error(e: tokio_postgres::Error) -> crate::verify::VerifyError {
    crate::verify::VerifyError::Target(format!("apply log: {e}"))
}

/// The observers of a load under way, started with it.
struct Load {
    started: Instant,
    started_wall: chrono::DateTime<Utc>,
    observers: Observers,
    schema_changes: Vec<tokio::task::JoinHandle<Option<FaultRecord>>>,
    live: Option<(Arc<AtomicBool>, tokio::task::JoinHandle<Vec<crate::verify::live::LiveCheck>>)>,
}

async fn start_observing(stack: &Stack, scenario: &Scenario, endpoints: &Endpoints, prepared: &Prepared, partitions: u32) -> Load {
    let started = Instant::now();
    let started_wall = Utc::now();
    let observers = observe(stack, endpoints, &prepared.workload, started, partitions).await;
    let schema_changes = schedule_schema_changes(scenario, endpoints, started);
    let live = scenario.verify.live_every.map(|every| live_checks(every, endpoints, partitions, started));
    Load { started, started_wall, observers, schema_changes, live }
}

/// What the load did: its plan (the breakpoint's last), the driver's figures, and the
/// faults planned and injected.
struct Driven {
    plan: LoadPlan,
    driver_result: DriverResult,
    max_sustainable: Option<f64>,
    fault_schedule: Vec<crate::faults::FaultSpec>,
    fault_records: Vec<FaultRecord>,
}

/// The load, with the scenario's fault schedule injected beside it; or the breakpoint search.
async fn drive(options: &RunOptions, stack: &mut Stack, driver: DriverKind, dir: &Path, api_url: &str, load: &Load) -> Result<Driven, RunError> {
    let scenario = &options.scenario;
    if let Some(bp) = &scenario.breakpoint {
        let (plan, driver_result, best) = breakpoint(bp, driver, api_url, &scenario.name, dir, &load.observers, load.started).await?;
        return Ok(Driven { plan, driver_result, max_sustainable: Some(best), fault_schedule: Vec::new(), fault_records: Vec::new() });
    }
    let plan = scenario.plan(options.duration, options.rate);
    let fault_schedule = scenario.fault_schedule(options.seed, plan.duration());
    let progress = progress_printer(plan.duration(), load.observers.samples.clone(), load.started);
    let (result, fault_records) =
        tokio::join!(load::drive(driver, api_url, &plan, &scenario.name, dir), crate::faults::inject::run_schedule(stack, &fault_schedule, load.started));
    progress.abort();
    Ok(Driven { plan, driver_result: result?, max_sustainable: None, fault_schedule, fault_records })
}

struct WoundDown {
    live_results: Vec<crate::verify::live::LiveCheck>,
    idle_wal_bytes: Option<u64>,
    idle_error: Option<String>,
}

/// After the load: the live checks end, the last probes arrive, and the idle phase runs.
async fn wind_down(scenario: &Scenario, endpoints: &Endpoints, load: &mut Load) -> WoundDown {
    let live_results = match load.live.take() {
        Some((stop, task)) => {
            stop.store(true, Ordering::Relaxed);
            task.await.unwrap_or_default()
        }
        None => Vec::new(),
    };
    load.observers.stop_probes().await;
    let (idle_wal_bytes, idle_error) = match &scenario.idle {
        Some(phase) => {
            eprintln!("run: idle phase: the captured tables idle for {:?} while another table takes {} rows/s", phase.duration, phase.writes_per_sec);
            match idle::run(&endpoints.postgres, phase).await {
                Ok(w) => {
                    eprintln!("run: idle phase done: {} rows written outside the publication, {} KiB of WAL", w.rows, w.wal_bytes / 1024);
                    (Some(w.wal_bytes), None)
                }
                Err(e) => (None, Some(format!("the idle phase could not write to the source: {e}"))),
            }
        }
        None => (None, None),
    };
    WoundDown { live_results, idle_wal_bytes, idle_error }
}

struct Convergence {
    report: crate::verify::VerifyReport,
    /// Why the comparison proves nothing, where it does not.
    no_verdict: Option<String>,
}

/// Quiet up to a fence, then compare source and target. The apply log's end at the fence
/// marks where the comparison starts, so an apply after it is seen (and voids the verdict).
#[allow(clippy::too_many_arguments)]
async fn verify_convergence(
    scenario: &Scenario,
    endpoints: &Endpoints,
    partitions: u32,
    prepared: &Prepared,
    load: &Load,
    driven: &Driven,
    started_at: chrono::DateTime<Utc>,
    load_ended: Instant,
    live_results: Vec<crate::verify::live::LiveCheck>,
) -> Result<Convergence, RunError> {
    let topics = TABLES.iter().map(|t| endpoints.topic(t)).collect();
    let watermark = fence::settle(endpoints, topics, partitions, scenario.verify.settle).await;
    let compare_from = match prepared.log_start {
        Some(_) => apply_log_position(endpoints).await?,
        None => None,
    };
    let dlq = crate::verify::dlq::DlqSource {
        config: endpoints.kafka_config(),
        topic: crate::config::DLQ_TOPIC.to_string(),
        poison: poison_records(&driven.fault_records, endpoints),
        since: Some(started_at),
    };
    let options = VerifyOptions {
        max_examples: 5,
        settle: Some(scenario.verify.settle),
        load_ended: Some(load_ended),
        since: Some(load.started_wall),
        mapping: None,
        expected_rejections: scenario.verify.expected_rejections.clone(),
        dlq: Some(dlq),
        watermark: None,
    };
    let mut report = crate::verify::verify_postgres(&endpoints.postgres, &options).await?;
    report.live_checks = live_results;
    let mut no_watermark = None;
    match watermark {
        Ok(mut w) => {
            if let Some(position) = compare_from {
                if let Err(e) = fence::late_applies(endpoints, position, &mut w).await {
                    no_watermark = Some(e);
                }
            }
            // Not quiet, or written to after the comparison: the comparison proves nothing.
            if !w.quiet || w.late_applies > 0 {
                report.converged = false;
            }
            report.watermark = Some(w);
        }
        Err(e) => no_watermark = Some(e),
    }
    Ok(Convergence { report, no_verdict: no_watermark.map(|e| format!("no watermark to verify against: {e}")) })
}

/// What the observers saw, and the faults with their pipeline recovery.
struct Collected {
    samples: Vec<Sample>,
    probes: Vec<probe::ProbeResult>,
    counters: sampler::CounterTotals,
    /// Per-hop latency from the apply log; None when the sink keeps none.
    hops: Option<apply_log::HopLatency>,
    faults: Vec<FaultRecord>,
}

async fn collect(
    stack: &Stack,
    load: Load,
    log_start: Option<i64>,
    mut fault_records: Vec<FaultRecord>,
    snapshot_record: Option<FaultRecord>,
) -> Result<Collected, RunError> {
    // Let the lag series show the drain back to its resting level.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (mut samples, probes, counters) = load.observers.stop().await;
    let hops = match log_start {
        Some(after) => {
            let target = connect_target(&stack.endpoints()).await?;
            let rows = apply_log::read(&target, after).await.map_err(apply_log_error)?;
            crate::faults::reconcile_poison(&mut fault_records, &rows);
            // The launcher's log of broker acknowledgements, where the stack's Debezium is
            // ours and local; elsewhere the capture hop ends at the record's CreateTime.
            let acks = stack
                .acks_log()
                .and_then(|path| std::fs::read_to_string(path).ok())
                .map(|text| apply_log::read_acks(&text, crate::config::TOPIC_PREFIX))
                .unwrap_or_default();
            Some(apply_log::hop_latency(&rows, load.started_wall, &acks))
        }
        None => None,
    };
    if let Some(hops) = &hops {
        sampler::merge_latency(&mut samples, &hops.per_second);
    }
    for record in &mut fault_records {
        record.pipeline_recovery_s = pipeline_recovery(&samples, record);
    }
    // The snapshot fault happened before the load (its times are relative to the kill).
    let mut faults: Vec<FaultRecord> = snapshot_record.into_iter().chain(fault_records).collect();
    for handle in load.schema_changes {
        if let Ok(Some(record)) = handle.await {
            faults.push(record);
        }
    }
    Ok(Collected { samples, probes, counters, hops, faults })
}

/// A live check every `every` while the load runs (see `verify::live`); set the flag to
/// stop (a check under way finishes), and the task returns the checks made.
fn live_checks(
    every: Duration,
    endpoints: &Endpoints,
    partitions: u32,
    load_started: Instant,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<Vec<crate::verify::live::LiveCheck>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let (flag, endpoints) = (stop.clone(), endpoints.clone());
    let task = tokio::spawn(async move {
        let topics: Vec<String> = TABLES.iter().map(|t| endpoints.topic(t)).collect();
        let mut checks = Vec::new();
        let mut next = load_started + every;
        loop {
            while Instant::now() < next {
                if flag.load(Ordering::Relaxed) {
                    return checks;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let at_s = load_started.elapsed().as_secs_f64();
            let check = crate::verify::live::check(&endpoints, topics.clone(), partitions, LIVE_COVER_DEADLINE, at_s).await;
            eprintln!(
                "\nrun: live check at {at_s:.0} s, watermark {}: {} (pipeline covered it in {} ms, compared {} rows in {} ms, {} newer keys set aside, {} of them by the clock){}",
                check.lsn,
                if check.converged { "agrees" } else { "DIFFERS" },
                check.waited_ms,
                check.rows_compared,
                check.compare_ms,
                check.newer_than_watermark,
                check.set_aside_by_clock,
                check.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
            );
            checks.push(check);
            next += every;
        }
    });
    (stop, task)
}

/// How long a live check waits for the pipeline to cover its snapshot.
const LIVE_COVER_DEADLINE: Duration = Duration::from_secs(60);

/// The target's clock minus the source's (ms), which every end-to-end latency carries;
/// warned about above `clock::WARN_SKEW_MS`. None: a server did not answer.
async fn measure_clock_skew(endpoints: &Endpoints) -> Option<f64> {
    let source = endpoints.postgres.connect(&endpoints.postgres.source_db).await.ok()?;
    let target = endpoints.postgres.connect_target().await.ok()?;
    let ((source_offset, _), (target_offset, rtt)) = (clock::offset_ms(&source).await.ok()?, clock::offset_ms(&target).await.ok()?);
    let skew = clock::skew_ms(source_offset, target_offset);
    if skew.abs() > clock::WARN_SKEW_MS {
        eprintln!(
            "run: warning: the target's clock is {skew:+.0} ms from the source's (±{:.0} ms): every end-to-end latency in this report carries it",
            rtt / 2.0
        );
    }
    Some(skew)
}

/// Where every poison record of the run landed: (topic, partition, offset).
fn poison_records(records: &[FaultRecord], endpoints: &Endpoints) -> std::collections::HashSet<(String, i32, i64)> {
    records
        .iter()
        .filter(|r| r.kind == "poison")
        .flat_map(|r| {
            let topic = endpoints.topic(&r.target);
            r.parameters
                .get(crate::faults::POISON_OFFSETS)
                .map(|t| crate::faults::parse_offsets(t))
                .unwrap_or_default()
                .into_iter()
                .map(move |(p, o)| (topic.clone(), p, o))
        })
        .collect()
}

/// Rows of the target holding a value in the column a schema change added (None when the
/// scenario expects none; 0 when the column never reached the target).
async fn new_column_rows(scenario: &Scenario, endpoints: &Endpoints) -> Option<u64> {
    let expected: Vec<&str> = scenario.schema_changes.iter().filter_map(|c| c.expect_target_column.as_deref()).collect();
    if expected.is_empty() {
        return None;
    }
    let client = endpoints.postgres.connect_target().await.ok()?;
    let mut rows = 0u64;
    for column in expected {
        let Some((table, column)) = column.split_once('.') else { continue };
        let sql = format!("SELECT count(*) FROM \"{}\" WHERE \"{}\" IS NOT NULL", table.replace('"', ""), column.replace('"', ""));
        // An error here is the finding: the column is not in the target.
        rows += client.query_one(sql.as_str(), &[]).await.map(|r| r.get::<_, i64>(0) as u64).unwrap_or(0);
    }
    Some(rows)
}

/// Every column a schema change added, compared row by row: the source's value (as text)
/// against the target's for every key both hold. Both sides are read in key order and
/// merged, one column at a time.
async fn compare_new_columns(scenario: &Scenario, endpoints: &Endpoints) -> Vec<crate::report::model::NewColumnCheck> {
    use crate::report::model::NewColumnCheck;
    let mut out = Vec::new();
    for target_column in scenario.schema_changes.iter().filter_map(|c| c.expect_target_column.as_deref()) {
        let mut check = NewColumnCheck { column: target_column.to_string(), ..Default::default() };
        let Some((table, column)) = target_column.split_once('.') else {
            check.error = Some("expect_target_column must be `table.column`".into());
            out.push(check);
            continue;
        };
        let source_table = table.strip_suffix("_materialized").unwrap_or(table);
        let q = |t: &str| format!("\"{}\"", t.replace('"', ""));
        let read = |target: bool, sql: String| {
            let pg = endpoints.postgres.clone();
            async move {
                let client = if target { pg.connect_target().await } else { pg.connect_source().await }.map_err(|e| e.to_string())?;
                let rows = client.query(sql.as_str(), &[]).await.map_err(|e| e.to_string())?;
                Ok::<Vec<(uuid::Uuid, Option<String>)>, String>(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
            }
        };
        let source = read(false, format!("SELECT id, {}::text FROM {} ORDER BY id", q(column), q(source_table))).await;
        let target = read(true, format!("SELECT id, {}::text FROM {} WHERE NOT _cdc_deleted ORDER BY id", q(column), q(table))).await;
        match (source, target) {
            (Ok(source), Ok(target)) => {
                let target: std::collections::HashMap<uuid::Uuid, Option<String>> = target.into_iter().collect();
                for (id, value) in source {
                    let Some(stored) = target.get(&id) else { continue };
                    check.rows += 1;
                    if *stored != value {
                        check.differing += 1;
                        if stored.is_none() {
                            check.missing_in_target += 1;
                        }
                        if check.examples.len() < 5 {
                            check.examples.push((id.to_string(), value, stored.clone()));
                        }
                    }
                }
            }
            (Err(e), _) => check.error = Some(format!("source: {e}")),
            (_, Err(e)) => check.error = Some(format!("target: {e}")),
        }
        out.push(check);
    }
    out
}

/// Waits (at most 2 minutes) until the sink has consumed what is already in the topics (the
/// initial snapshot, the warm-up), so the measured window starts from a drained pipeline
/// and its rates and latencies are the load's, not the snapshot's.
async fn drain_before_load(endpoints: &Endpoints, partitions: u32) {
    let topics = TABLES.iter().map(|t| endpoints.topic(t)).collect();
    let Ok(meter) = lag::LagMeter::new(endpoints.kafka_config(), &endpoints.consumer_group, topics, partitions) else { return };
    let meter = Arc::new(meter);
    let said = std::cell::Cell::new(Instant::now());
    let drained = || async {
        let m = meter.clone();
        let Ok(Ok(lag)) = tokio::task::spawn_blocking(move || m.measure()).await else { return Err(NotReady::<(), ()>::Yet(())) };
        let total: u64 = lag.values().sum();
        if total <= 10 {
            return Ok(());
        }
        if said.get().elapsed() >= Duration::from_secs(10) {
            said.set(Instant::now());
            eprintln!("run: waiting for the sink to drain the snapshot ({total} events behind)");
        }
        Err(NotReady::Yet(()))
    };
    if wait::poll(Duration::from_secs(120), Duration::from_millis(500), drained).await.is_err() {
        eprintln!("run: the pipeline did not drain within 2 minutes; measuring anyway (the lag series shows it)");
    }
}

/// A few seconds of light writes so the first measured second is not a cold start.
async fn warm_up(workload: &Workload, duration: Duration) {
    let until = Instant::now() + duration;
    while Instant::now() < until {
        let _ = workload.perform(None, None).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn observe(stack: &Stack, endpoints: &Endpoints, workload: &Arc<Workload>, started: Instant, partitions: u32) -> Observers {
    let samples = Arc::new(Mutex::new(Vec::new()));
    let counters = Arc::new(Mutex::new(sampler::CounterTotals::default()));
    let probes = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let stop_probes = Arc::new(AtomicBool::new(false));
    let topics = TABLES.iter().map(|t| endpoints.topic(t)).collect();
    let inputs = sampler::SamplerInputs {
        endpoints: endpoints.clone(),
        workload: workload.clone(),
        lag: lag::LagMeter::new(endpoints.kafka_config(), &endpoints.consumer_group, topics, partitions).ok(),
        leaders: stack.leader_resolver(),
        started,
        slot: endpoints.slot.clone(),
        counters: counters.clone(),
    };
    let tasks = vec![
        tokio::spawn(sampler::run(inputs, samples.clone(), stop.clone())),
        tokio::spawn(probe::run(endpoints.postgres.clone(), started, Duration::from_secs(1), stop_probes.clone(), probes.clone())),
    ];
    Observers { samples, counters, probes, stop, stop_probes, tasks }
}

/// Runs each scheduled DDL at its time; returns its timeline entry.
fn schedule_schema_changes(scenario: &Scenario, endpoints: &Endpoints, started: Instant) -> Vec<tokio::task::JoinHandle<Option<FaultRecord>>> {
    scenario
        .schema_changes
        .iter()
        .cloned()
        .map(|change| {
            let pg = endpoints.postgres.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until((started + change.at).into()).await;
                let start_s = started.elapsed().as_secs_f64();
                let outcome = match pg.connect_source().await {
                    Ok(client) => client.batch_execute(&change.sql).await.map_err(|e| e.to_string()),
                    Err(e) => Err(format!("cannot connect to the source: {e}")),
                };
                let mut parameters = BTreeMap::from([("sql".to_string(), change.sql.clone())]);
                if let Err(e) = outcome {
                    parameters.insert("error".into(), e);
                }
                Some(FaultRecord {
                    kind: "schema_change".into(),
                    target: change.label,
                    parameters,
                    start_s,
                    end_s: Some(started.elapsed().as_secs_f64()),
                    service_recovery_s: None,
                    pipeline_recovery_s: None,
                })
            })
        })
        .collect()
}

/// A live progress line: on a terminal one line rewritten each second, in logs every 10 s.
fn progress_printer(total: Duration, samples: Arc<Mutex<Vec<Sample>>>, started: Instant) -> tokio::task::JoinHandle<()> {
    use std::io::IsTerminal;
    let tty = std::io::stderr().is_terminal();
    tokio::spawn(async move {
        let mut tick = 0u64;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            tick += 1;
            if !tty && tick % 10 != 0 {
                continue;
            }
            let last = samples.lock().await.last().cloned().unwrap_or_default();
            let line = format!(
                "[{:>4.0}/{}s] writes {:>7.1} ops/s  applied {:>8} ev/s  lag {:>6}  slot lag {:>9}",
                started.elapsed().as_secs_f64(),
                total.as_secs(),
                last.write_rate,
                last.sink_rate.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into()),
                last.lag.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
                last.slot_lag_bytes.map(|v| format!("{} KiB", v / 1024)).unwrap_or_else(|| "-".into()),
            );
            if tty {
                eprint!("\r{line}");
            } else {
                eprintln!("{line}");
            }
        }
    })
}

/// The rate is raised step by step; each step must keep its slowest probe and the lag growth
/// within the SLOs. Returns the plan that ran and the highest rate that met them.
async fn breakpoint(
    bp: &Breakpoint,
    driver: DriverKind,
    api: &str,
    scenario: &str,
    dir: &Path,
    observers: &Observers,
    started: Instant,
) -> Result<(LoadPlan, DriverResult, f64), RunError> {
    let mut rate = bp.start_rate;
    let mut best = 0.0;
    let mut segments = Vec::new();
    let mut total = DriverResult { driver: driver.name().into(), ..Default::default() };
    while rate <= bp.max_rate {
        let step_plan = LoadPlan { segments: vec![Segment { duration: bp.step_duration, from: rate, to: rate }] };
        let step_start = started.elapsed().as_secs_f64();
        let lag_before = last_lag(&observers.samples).await;
        let result = load::drive(driver, api, &step_plan, scenario, dir).await?;
        let step_end = started.elapsed().as_secs_f64();
        segments.extend(step_plan.segments);
        let lag_after = last_lag(&observers.samples).await;
        let slowest = step_probe_max(&observers.probes.lock().await, step_start, step_end);
        let lag_ok = match (lag_before, lag_after) {
            (Some(before), Some(after)) => after.saturating_sub(before) <= bp.max_lag_growth,
            // Lag that could not be measured cannot show the step was sustained.
            _ => false,
        };
        let achieved_ok = result.achieved_rate >= rate * 0.9;
        let ok = slowest.is_some_and(|p| p <= bp.max_probe_latency_ms) && lag_ok && result.failures == 0 && achieved_ok;
        let show = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "not measured".into());
        eprintln!(
            "breakpoint: {rate:.0} ops/s -> achieved {:.0}/s, slowest probe {}, lag {} -> {}, failures {}: {}",
            result.achieved_rate,
            slowest
                .map(|p| if p.is_finite() { format!("{p:.1} ms") } else { "a probe not back by the step's end".into() })
                .unwrap_or_else(|| "no probes".into()),
            show(lag_before),
            show(lag_after),
            result.failures,
            if ok { "sustained" } else { "SLO broken" }
        );
        total.requests += result.requests;
        total.failures += result.failures;
        total.latency_ms = result.latency_ms;
        if !ok {
            break;
        }
        best = rate;
        rate += bp.step;
    }
    let plan = LoadPlan { segments };
    total.achieved_rate = total.requests as f64 / plan.duration().as_secs_f64().max(1.0);
    Ok((plan, total, best))
}

async fn last_lag(samples: &Mutex<Vec<Sample>>) -> Option<u64> {
    samples.lock().await.iter().rev().take(3).find_map(|s| s.lag)
}

fn validation(counters: &sampler::CounterTotals) -> ValidationStats {
    let total = |name: &str| counters.sum(name).unwrap_or(0.0) as u64;
    ValidationStats {
        passed: total("sink_validation_passed_total"),
        failed_by_rule: counters
            .by_label("sink_validation_failed_total", "rule")
            .into_iter()
            .map(|(rule, v)| (rule, v as u64))
            .filter(|(_, v)| *v > 0)
            .collect(),
        dlq: total("sink_dlq_events_total"),
        stale_skipped: total("sink_stale_skips_total"),
    }
}
