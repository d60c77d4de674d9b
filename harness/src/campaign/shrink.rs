//! `harness campaign shrink <report.json>`: narrows a failing seed's fault schedule to a
//! small one that still fails the same way, ddmin-style, and writes it as a scenario that
//! `harness run` reproduces it with.
//!
//! The failure to keep is the original run's *signature*: the thresholds that failed, the
//! anomaly kinds the verifier found, whether the target diverged, and the fault kinds
//! whose recovery gate (the campaign's, `RecoveryTargets`) a fault broke. A candidate
//! schedule *reproduces* when k of k runs of it (each on a fresh stack) fail with a
//! signature that shares at least one item with the original's. A candidate that
//! reproduces in some runs and not others is *flaky*: recorded, never adopted.
//!
//! The steps: confirm the original schedule (k runs, all of them); ddmin over the faults
//! (halves, then complements, then single removals) down to a 1-minimal set (removing any
//! one fault makes it stop reproducing); then halve each remaining fault's duration (not
//! below 1 s), shorten the load (down to the last fault's end + 20 s, not below 30 s) and
//! halve the rate (not below 10 ops/s at its peak), each change kept only if the schedule
//! still reproduces. After the confirmation a candidate stops at its first run that does
//! not reproduce (it cannot be k of k any more). `--max-runs` caps the runs; at the cap
//! the smallest schedule that reproduced so far is written, said not proven minimal.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::model::{RecoveryTargets, SeedRun, kind_aggregates, recovery_gates};
use crate::exit::Outcome;
use crate::faults::{FaultKind, FaultSpec};
use crate::load::{LoadPlan, Segment};
use crate::orchestrator::stack::StackChoice;
use crate::report::model::Report;
use crate::scenario::{Scenario, Stage};

pub const SHRINK_JSON: &str = "shrink.json";
/// Runs of a candidate that must all fail for it to reproduce (`--k`).
pub const DEFAULT_K: u32 = 2;
/// Cap on every run of a shrink, the confirmation included (`--max-runs`).
pub const DEFAULT_MAX_RUNS: u32 = 40;
const MIN_FAULT_DURATION: Duration = Duration::from_secs(1);
/// Load kept after the last fault ends (its recovery must be measurable).
const LOAD_AFTER_LAST_FAULT: Duration = Duration::from_secs(20);
const MIN_LOAD: Duration = Duration::from_secs(30);
/// The rate is not halved below this at its peak (ops/s).
const MIN_RATE: f64 = 10.0;

/// What a run's failure is made of; empty: it did not fail.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// Expressions of the thresholds that failed.
    #[serde(default)]
    pub thresholds: BTreeSet<String>,
    /// Kinds of the anomalies the verifier found (`lost_change`, ...).
    #[serde(default)]
    pub anomalies: BTreeSet<String>,
    /// Fault kinds whose recovery gate a fault of the run broke.
    #[serde(default)]
    pub recovery: BTreeSet<String>,
    /// The target did not converge.
    #[serde(default)]
    pub diverged: bool,
}

impl Signature {
    /// The signature of a finished run, its recovery gates judged against `targets`.
    pub fn of_report(report: &Report, targets: &RecoveryTargets) -> Self {
        let row = SeedRun::of_report(report.run.seed, report, String::new(), 0.0);
        Self::of_row(&row, targets)
    }

    pub fn of_row(row: &SeedRun, targets: &RecoveryTargets) -> Self {
        let rows = std::slice::from_ref(row);
        let gates = recovery_gates(rows, &kind_aggregates(rows), targets);
        Self {
            thresholds: row.thresholds_failed.iter().cloned().collect(),
            anomalies: row.anomaly_counts.keys().map(|k| crate::report::markdown::kind_name(*k)).collect(),
            recovery: gates.iter().filter(|g| !g.passed).map(|g| g.kind.clone()).collect(),
            diverged: row.converged == Some(false),
        }
    }

    pub fn is_failure(&self) -> bool {
        !self.items().is_empty()
    }

    /// Every item, prefixed by what it is (`threshold ...`, `anomaly ...`, `recovery ...`,
    /// `diverged`).
    pub fn items(&self) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = self.thresholds.iter().map(|t| format!("threshold `{t}`")).collect();
        out.extend(self.anomalies.iter().map(|a| format!("anomaly {a}")));
        out.extend(self.recovery.iter().map(|k| format!("recovery gate of {k}")));
        if self.diverged {
            out.insert("diverged".into());
        }
        out
    }

    /// Shares at least one item with `other`.
    pub fn intersects(&self, other: &Signature) -> bool {
        !self.items().is_disjoint(&other.items())
    }

    pub fn describe(&self) -> String {
        let items: Vec<String> = self.items().into_iter().collect();
        if items.is_empty() { "no failure".into() } else { items.join(", ") }
    }
}

/// One schedule to try: the faults, the load's duration, and the factor its rates are
/// scaled by (1: as the original ran).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub faults: Vec<FaultSpec>,
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    pub rate_factor: f64,
}

impl Candidate {
    /// The load must last this long at least: the last fault's end (and the last schema
    /// change) plus 20 s, and 30 s.
    fn min_duration(&self, schema_changes_until: Duration) -> Duration {
        let last_end = self.faults.iter().map(|f| f.at + f.duration).max().unwrap_or_default().max(schema_changes_until);
        (last_end + LOAD_AFTER_LAST_FAULT).max(MIN_LOAD)
    }
}

/// The run to shrink: its scenario as it ran, its load plan, its schedule and its failure.
#[derive(Debug, Clone)]
pub struct Original {
    /// As run (its driver included), without `random_faults`: `faults` is the realized
    /// schedule.
    pub scenario: Scenario,
    /// The load plan as run (`--duration` and `--rate` applied).
    pub segments: Vec<Segment>,
    pub seed: u64,
    pub run_id: String,
    pub signature: Signature,
    pub candidate: Candidate,
}

impl Original {
    /// Rebuilds the run of `report` from its `config` (the scenario, the plan and the
    /// fault schedule as run).
    pub fn of_report(report: &Report, targets: &RecoveryTargets) -> Result<Self, String> {
        let config = &report.config;
        let mut scenario: Scenario = serde_json::from_value(config["scenario"].clone()).map_err(|e| format!("the report's config.scenario: {e}"))?;
        if scenario.breakpoint.is_some() {
            return Err(format!("scenario {}: a breakpoint search has no fault schedule to shrink", scenario.name));
        }
        if let Ok(driver) = serde_json::from_value(serde_json::Value::String(report.run.driver.clone())) {
            scenario.load.driver = driver;
        }
        let override_of = |key: &str| config["overrides"][key].as_f64();
        let plan: LoadPlan = match serde_json::from_value(config["plan"].clone()) {
            Ok(plan) => plan,
            Err(_) => scenario.plan(override_of("duration").map(Duration::from_secs_f64), override_of("rate")),
        };
        let faults: Vec<FaultSpec> = match serde_json::from_value(config["fault_schedule"].clone()) {
            Ok(faults) => faults,
            Err(_) => scenario.fault_schedule(report.run.seed, plan.duration()),
        };
        scenario.random_faults = None;
        scenario.faults = faults.clone();
        let candidate = Candidate { faults, duration: plan.duration(), rate_factor: 1.0 };
        Ok(Self {
            scenario,
            segments: plan.segments,
            seed: report.run.seed,
            run_id: report.run.run_id.clone(),
            signature: Signature::of_report(report, targets),
            candidate,
        })
    }

    /// The scenario that runs `c`: the original's with `c`'s faults and its stages
    /// rescaled to `c`'s duration and rate (written out, so that a run without overrides
    /// runs them and the faults keep their times).
    pub fn scenario_of(&self, c: &Candidate) -> Scenario {
        let mut s = self.scenario.clone();
        s.name = format!("repro-{}", self.seed);
        s.random_faults = None;
        s.faults = c.faults.clone();
        let total: f64 = self.segments.iter().map(|g| g.duration.as_secs_f64()).sum::<f64>().max(1e-9);
        let round = |v: f64| (v * 100.0).round() / 100.0;
        s.load.stages = self
            .segments
            .iter()
            .map(|g| {
                let duration = Duration::from_secs_f64((g.duration.as_secs_f64() / total * c.duration.as_secs_f64()).round().max(1.0));
                let (from, to) = (round(g.from * c.rate_factor), round(g.to * c.rate_factor));
                if from == to {
                    Stage { duration, rate: Some(from), from: None, to: None }
                } else {
                    Stage { duration, rate: None, from: Some(from), to: Some(to) }
                }
            })
            .collect();
        s
    }

    /// The highest rate of the plan as run (ops/s).
    fn peak_rate(&self) -> f64 {
        self.segments.iter().map(|g| g.from.max(g.to)).fold(0.0, f64::max)
    }

    fn schema_changes_until(&self) -> Duration {
        self.scenario.schema_changes.iter().map(|c| c.at).max().unwrap_or_default()
    }
}

/// Runs a candidate once and tells the signature of its run.
pub(crate) trait Oracle {
    /// `try_no` numbers the candidate, `run_no` its run (from 0), for folder names.
    fn run(&mut self, candidate: &Candidate, try_no: usize, run_no: u32) -> impl Future<Output = anyhow::Result<RunResult>>;
}

/// One run of a candidate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub signature: Signature,
    /// Its report folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
}

/// Ctrl-C during a run of the shrink (the oracle's error).
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TryVerdict {
    /// Every one of the k runs reproduced the failure.
    Reproduced,
    /// Some runs reproduced it, some did not.
    Flaky,
    /// No run reproduced it.
    Passed,
    /// Stopped by the run cap or Ctrl-C before its k runs, every run so far reproducing.
    Incomplete,
}

/// One run of a try, as shrink.json records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TryRun {
    pub reproduced: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// The run failed to run (counts as not reproducing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One candidate tried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Try {
    pub n: usize,
    /// Which step of the shrink proposed it.
    pub step: String,
    pub candidate: Candidate,
    pub runs: Vec<TryRun>,
    pub verdict: TryVerdict,
}

/// The verdict of `results` (reproduced or not, in order) of a try that wanted `k`.
pub fn try_verdict(results: &[bool], k: u32) -> TryVerdict {
    if results.is_empty() {
        return TryVerdict::Incomplete;
    }
    let reproduced = results.iter().filter(|r| **r).count();
    match (reproduced, results.len()) {
        (r, n) if r == n && n as u32 >= k => TryVerdict::Reproduced,
        (r, n) if r == n && n > 0 => TryVerdict::Incomplete,
        (0, _) => TryVerdict::Passed,
        _ => TryVerdict::Flaky,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShrinkStatus {
    /// A 1-minimal schedule (every step ran to its end).
    Minimal,
    /// The run cap was hit: the smallest schedule that reproduced so far, not proven minimal.
    Capped,
    /// Ctrl-C: the smallest schedule that reproduced so far, not proven minimal.
    Interrupted,
    /// The original schedule reproduced in some of its k confirmation runs only.
    Flaky,
    /// The original schedule did not reproduce in any of its k confirmation runs.
    NotReproduced,
}

impl ShrinkStatus {
    /// Whether a reproducer was found (and is written).
    pub fn reproduced(self) -> bool {
        matches!(self, Self::Minimal | Self::Capped | Self::Interrupted)
    }
}

/// What a shrink found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShrinkOutcome {
    pub status: ShrinkStatus,
    /// The smallest schedule that reproduced (the original's when none smaller did).
    pub best: Candidate,
    pub runs_used: u32,
    pub tries: Vec<Try>,
}

pub(crate) struct Shrinker<'a, O> {
    oracle: O,
    original: &'a Signature,
    k: u32,
    max_runs: u32,
    runs: u32,
    tries: Vec<Try>,
    /// Verdicts of the candidates tried (by their JSON), so that none runs twice.
    seen: BTreeMap<String, TryVerdict>,
    stopped: Option<ShrinkStatus>,
}

impl<'a, O: Oracle> Shrinker<'a, O> {
    pub(crate) fn new(oracle: O, original: &'a Signature, k: u32, max_runs: u32) -> Self {
        Self { oracle, original, k: k.max(1), max_runs, runs: 0, tries: Vec::new(), seen: BTreeMap::new(), stopped: None }
    }

    /// Runs `c` up to k times (all k when `all`, else until one does not reproduce).
    async fn test(&mut self, c: &Candidate, step: &str, all: bool) -> TryVerdict {
        let key = serde_json::to_string(c).unwrap_or_default();
        if let Some(v) = self.seen.get(&key) {
            return *v;
        }
        if self.stopped.is_some() {
            return TryVerdict::Incomplete;
        }
        let n = self.tries.len() + 1;
        let mut runs = Vec::new();
        for run_no in 0..self.k {
            if self.runs >= self.max_runs {
                self.stopped = Some(ShrinkStatus::Capped);
                break;
            }
            self.runs += 1;
            eprintln!(
                "shrink: try {n} ({step}, {} faults), run {} of {} ({} of at most {} runs)",
                c.faults.len(),
                run_no + 1,
                self.k,
                self.runs,
                self.max_runs
            );
            let run = match self.oracle.run(c, n, run_no).await {
                Ok(result) => {
                    TryRun { reproduced: result.signature.intersects(self.original), signature: Some(result.signature), dir: result.dir, error: None }
                }
                Err(e) if e.downcast_ref::<Interrupted>().is_some() => {
                    self.stopped = Some(ShrinkStatus::Interrupted);
                    break;
                }
                Err(e) => TryRun { reproduced: false, signature: None, dir: None, error: Some(crate::exit::describe(&e)) },
            };
            let reproduced = run.reproduced;
            runs.push(run);
            if !reproduced && !all {
                break;
            }
        }
        if runs.is_empty() {
            // Stopped before its first run: not a try.
            return TryVerdict::Incomplete;
        }
        let verdict = try_verdict(&runs.iter().map(|r| r.reproduced).collect::<Vec<_>>(), self.k);
        eprintln!("shrink: try {n}: {verdict:?}");
        if verdict != TryVerdict::Incomplete {
            self.seen.insert(key, verdict);
        }
        self.tries.push(Try { n, step: step.into(), candidate: c.clone(), runs, verdict });
        verdict
    }

    async fn reproduces(&mut self, c: &Candidate, step: &str) -> bool {
        self.test(c, step, false).await == TryVerdict::Reproduced
    }

    /// The whole shrink of `original` (`min_duration` of a candidate: how short its load
    /// may get; `peak_rate`: the original's highest rate).
    pub(crate) async fn shrink(mut self, original: &Candidate, schema_changes_until: Duration, peak_rate: f64) -> ShrinkOutcome {
        let confirmed = self.test(original, "confirm the original schedule", true).await;
        let status = match confirmed {
            TryVerdict::Reproduced => None,
            TryVerdict::Flaky => Some(ShrinkStatus::Flaky),
            TryVerdict::Passed => Some(ShrinkStatus::NotReproduced),
            TryVerdict::Incomplete => self.stopped,
        };
        if let Some(status) = status {
            return ShrinkOutcome { status, best: original.clone(), runs_used: self.runs, tries: self.tries };
        }
        let best = self.ddmin(original).await;
        let best = self.shorten(best, schema_changes_until, peak_rate).await;
        ShrinkOutcome { status: self.stopped.unwrap_or(ShrinkStatus::Minimal), best, runs_used: self.runs, tries: self.tries }
    }

    /// ddmin over the faults of `base` (which reproduces): the subsets of a split first,
    /// then their complements, the split refined up to single faults.
    async fn ddmin(&mut self, base: &Candidate) -> Candidate {
        let with = |set: &[usize]| Candidate { faults: set.iter().map(|i| base.faults[*i].clone()).collect(), ..base.clone() };
        let mut current: Vec<usize> = (0..base.faults.len()).collect();
        let mut granularity = 2;
        while current.len() >= 2 && self.stopped.is_none() {
            let parts = split(&current, granularity);
            let mut reduced = false;
            for part in &parts {
                if self.reproduces(&with(part), &format!("ddmin: keep {} of {}", part.len(), current.len())).await {
                    current = part.clone();
                    granularity = 2;
                    reduced = true;
                    break;
                }
            }
            // With two parts each complement is the other part, tried already.
            if !reduced && granularity > 2 {
                for part in &parts {
                    let rest: Vec<usize> = current.iter().copied().filter(|i| !part.contains(i)).collect();
                    if self.reproduces(&with(&rest), &format!("ddmin: drop {} of {}", part.len(), current.len())).await {
                        current = rest;
                        granularity = (granularity - 1).max(2);
                        reduced = true;
                        break;
                    }
                }
            }
            if !reduced {
                if granularity >= current.len() {
                    break;
                }
                granularity = (granularity * 2).min(current.len());
            }
        }
        // One fault left: without it?
        if current.len() == 1 && self.stopped.is_none() && self.reproduces(&with(&[]), "ddmin: drop the last fault").await {
            current.clear();
        }
        with(&current)
    }

    /// Halves each fault's duration, shortens the load, halves the rate: each change kept
    /// only when the schedule still reproduces.
    async fn shorten(&mut self, mut best: Candidate, schema_changes_until: Duration, peak_rate: f64) -> Candidate {
        for i in 0..best.faults.len() {
            let f = &best.faults[i];
            if !has_duration(f.fault) || f.duration <= MIN_FAULT_DURATION {
                continue;
            }
            let mut c = best.clone();
            c.faults[i].duration = round_ms(f.duration / 2).max(MIN_FAULT_DURATION);
            let step = format!("halve fault {} ({} {}) to {}", i + 1, f.fault.name(), f.target, humantime::format_duration(c.faults[i].duration));
            if self.reproduces(&c, &step).await {
                best = c;
            }
        }
        let floor = best.min_duration(schema_changes_until);
        if floor < best.duration {
            let mut c = best.clone();
            c.duration = floor;
            if self.reproduces(&c, &format!("shorten the load to {}", humantime::format_duration(floor))).await {
                best = c;
            } else {
                let mid = Duration::from_secs(((floor + best.duration) / 2).as_secs());
                if mid > floor && mid + Duration::from_secs(5) < best.duration {
                    c.duration = mid;
                    if self.reproduces(&c, &format!("shorten the load to {}", humantime::format_duration(mid))).await {
                        best = c;
                    }
                }
            }
        }
        while peak_rate * best.rate_factor / 2.0 >= MIN_RATE && self.stopped.is_none() {
            let mut c = best.clone();
            c.rate_factor /= 2.0;
            if !self.reproduces(&c, &format!("halve the rate to {} ops/s at its peak", crate::report::fmt_num(peak_rate * c.rate_factor))).await {
                break;
            }
            best = c;
        }
        best
    }
}

/// Faults whose duration matters (a restart, a reset and poison are instants).
fn has_duration(kind: FaultKind) -> bool {
    !matches!(kind, FaultKind::Restart | FaultKind::Reset | FaultKind::Poison)
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// `items` in `n` parts of near-equal size, in order (fewer when there are fewer items).
fn split(items: &[usize], n: usize) -> Vec<Vec<usize>> {
    let n = n.clamp(1, items.len().max(1));
    let mut out = Vec::with_capacity(n);
    let mut start = 0;
    for i in 0..n {
        let end = start + (items.len() - start) / (n - i);
        out.push(items[start..end].to_vec());
        start = end;
    }
    out.retain(|p| !p.is_empty());
    out
}

/// The oracle of real runs: each run of a candidate writes its scenario to
/// `<dir>/try-<n>/scenario.toml`, loads it back and runs it with `harness run`'s machinery
/// on a fresh stack (`reuse: None, keep: false`), its report under `<dir>/try-<n>/run-<i>/`.
pub(crate) struct StackOracle<'a> {
    pub original: &'a Original,
    pub dir: PathBuf,
    pub stack: StackChoice,
    pub targets: RecoveryTargets,
}

impl Oracle for StackOracle<'_> {
    async fn run(&mut self, candidate: &Candidate, try_no: usize, run_no: u32) -> anyhow::Result<RunResult> {
        let dir = self.dir.join(format!("try-{try_no}"));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("scenario.toml");
        std::fs::write(&path, scenario_toml(&self.original.scenario_of(candidate), "")?)?;
        let scenario = Scenario::load(&path.display().to_string())?;
        let options = crate::run::RunOptions {
            scenario,
            driver: None,
            duration: None,
            rate: None,
            seed: self.original.seed,
            reuse: None,
            keep: false,
            reports_dir: dir.join(format!("run-{}", run_no + 1)),
            stack: self.stack.clone(),
        };
        let outcome = tokio::select! {
            outcome = crate::run::run(options) => outcome?,
            _ = tokio::signal::ctrl_c() => return Err(Interrupted.into()),
        };
        Ok(RunResult { signature: Signature::of_report(&outcome.report, &self.targets), dir: Some(outcome.dir.display().to_string()) })
    }
}

/// A scenario as TOML, `header` (comment lines) first; it parses back (checked).
pub fn scenario_toml(scenario: &Scenario, header: &str) -> anyhow::Result<String> {
    let body = toml::to_string(scenario)?;
    let text = format!("{header}{body}");
    Scenario::parse(&text, Path::new("repro.toml"))?;
    Ok(text)
}

/// The reproducer's file: the scenario of `best`, named `repro-<seed>`, its description
/// telling where it came from and how it fails.
pub fn repro_toml(original: &Original, outcome: &ShrinkOutcome, provenance: &str, targets: &RecoveryTargets) -> anyhow::Result<String> {
    let mut scenario = original.scenario_of(&outcome.best);
    let minimal = match outcome.status {
        ShrinkStatus::Minimal => "1-minimal: removing any one fault makes the failure disappear".to_string(),
        ShrinkStatus::Capped => format!("not proven minimal: the run cap ({} runs) was hit", outcome.runs_used),
        _ => "not proven minimal: the shrink was interrupted".to_string(),
    };
    scenario.description = format!(
        "Reproducer of seed {} of scenario {} ({provenance}, run {}): fails with {}. Shrunk by `harness campaign shrink` from {} faults to {} ({minimal}).",
        original.seed,
        original.scenario.name,
        original.run_id,
        original.signature.describe(),
        original.candidate.faults.len(),
        outcome.best.faults.len(),
    );
    let mut header = format!(
        "# Written by `harness campaign shrink` from run {} (seed {}, {provenance}).\n# Failure signature: {}.\n# Run it with `harness run {} --seed {}`.\n",
        original.run_id,
        original.seed,
        original.signature.describe(),
        scenario.name,
        original.seed
    );
    if !original.signature.recovery.is_empty() {
        // No report metric holds one fault's pipeline recovery: the recovery gates are the
        // campaign's, over the report's fault records.
        let gates: Vec<String> =
            original.signature.recovery.iter().map(|k| format!("{k}: pipeline recovery <= {} s", crate::report::fmt_num(targets.target(k)))).collect();
        header.push_str(&format!(
            "# The failure is a recovery gate ({}), which no threshold of a run expresses: check it with\n#   harness campaign --scenario <this file> --seeds {}{}\n",
            gates.join("; "),
            original.seed,
            targets_flags(targets)
        ));
    }
    scenario_toml(&scenario, &header)
}

fn targets_flags(targets: &RecoveryTargets) -> String {
    let mut out = String::new();
    if targets.default_s != RecoveryTargets::default().default_s {
        out.push_str(&format!(" --recovery-target default={}", crate::report::fmt_num(targets.default_s)));
    }
    for (kind, s) in &targets.per_kind {
        out.push_str(&format!(" --recovery-target {kind}={}", crate::report::fmt_num(*s)));
    }
    out
}

/// shrink.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShrinkReport {
    pub report: String,
    pub seed: u64,
    pub scenario: String,
    pub run_id: String,
    pub k: u32,
    pub max_runs: u32,
    pub recovery_targets: RecoveryTargets,
    pub signature: Signature,
    pub original: Candidate,
    #[serde(flatten)]
    pub outcome: ShrinkOutcome,
    /// The reproducer written; None: none (flaky or not reproduced).
    pub repro: Option<String>,
    /// The campaign whose row links it.
    pub campaign: Option<String>,
}

/// `harness campaign shrink`'s options.
#[derive(Debug, Clone)]
pub struct ShrinkOptions {
    pub report: PathBuf,
    pub k: u32,
    pub max_runs: u32,
    /// None: the campaign's (when the report is one of its runs), else the defaults.
    pub recovery_targets: Option<RecoveryTargets>,
    /// None: `scenarios/repro-<seed>.toml`.
    pub out_scenario: Option<PathBuf>,
    /// Where the tries' runs go; None: the campaign folder, else the report's run folder's
    /// parent.
    pub out: Option<PathBuf>,
    pub stack: StackChoice,
}

/// A campaign the report is a run of: its folder, when an ancestor's campaign.json has a
/// row whose report is this one.
pub fn campaign_of(report: &Path) -> Option<(PathBuf, super::model::Campaign)> {
    let canonical = |p: &Path| std::fs::canonicalize(p).ok();
    let target = canonical(report)?;
    let mut dir = target.parent();
    for _ in 0..5 {
        let d = dir?;
        if let Ok(c) = super::read(&d.join(super::CAMPAIGN_JSON)) {
            if c.runs.iter().any(|r| r.report.as_ref().and_then(|p| canonical(&d.join(p))).is_some_and(|p| p == target)) {
                return Some((d.to_path_buf(), c));
            }
        }
        dir = d.parent();
    }
    None
}

/// Sets the repro link of `seed`'s row and rewrites the campaign's files.
pub fn link_repro(dir: &Path, campaign: &mut super::model::Campaign, seed: u64, repro: &Path) -> std::io::Result<()> {
    let absolute = std::fs::canonicalize(repro).unwrap_or_else(|_| repro.to_path_buf());
    let canonical_dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let link = absolute.strip_prefix(&canonical_dir).map_or_else(|_| absolute.display().to_string(), |p| p.display().to_string());
    for row in campaign.runs.iter_mut().filter(|r| r.seed == seed) {
        row.repro = Some(link.clone());
    }
    super::write(campaign, dir).map(|_| ())
}

/// The whole command: reads the report, shrinks, writes shrink.json and the reproducer,
/// links it from the campaign. Exits PASS when a reproducer was written, NO VERDICT when
/// the original schedule does not reproduce k of k, INTERRUPTED on Ctrl-C.
pub async fn run(options: ShrinkOptions) -> anyhow::Result<(Outcome, ShrinkReport)> {
    use crate::exit::UsageError;
    let text = std::fs::read_to_string(&options.report).map_err(|e| UsageError::new(format!("{}: {e}", options.report.display())))?;
    let report: Report = serde_json::from_str(&text).map_err(|e| UsageError::new(format!("{}: {e}", options.report.display())))?;
    if options.k == 0 {
        return Err(UsageError::new("--k must be at least 1").into());
    }
    if options.max_runs < options.k {
        return Err(
            UsageError::new(format!("--max-runs {} is fewer than the {} runs that confirm the original schedule (--k)", options.max_runs, options.k)).into()
        );
    }
    let mut campaign = campaign_of(&options.report);
    let targets = options.recovery_targets.clone().or_else(|| campaign.as_ref().map(|(_, c)| c.recovery_targets.clone())).unwrap_or_default();
    let original = Original::of_report(&report, &targets).map_err(|e| UsageError::new(format!("{}: {e}", options.report.display())))?;
    if !original.signature.is_failure() {
        return Err(UsageError::new(format!("seed {} passed: nothing to shrink ({})", original.seed, options.report.display())).into());
    }
    let seed = original.seed;
    let out = options.out.clone().or_else(|| campaign.as_ref().map(|(d, _)| d.clone())).unwrap_or_else(|| {
        let run_dir = options.report.parent().unwrap_or(Path::new("."));
        run_dir.parent().unwrap_or(Path::new(".")).to_path_buf()
    });
    let dir = out.join(format!("shrink-{seed}"));
    std::fs::create_dir_all(&dir)?;
    eprintln!(
        "shrink: seed {seed} of {} ({} faults), failure: {}; k = {}, at most {} runs; tries in {}",
        original.scenario.name,
        original.candidate.faults.len(),
        original.signature.describe(),
        options.k,
        options.max_runs,
        dir.display()
    );
    let oracle = StackOracle { original: &original, dir: dir.clone(), stack: options.stack.clone(), targets: targets.clone() };
    let shrinker = Shrinker::new(oracle, &original.signature, options.k, options.max_runs);
    let outcome = shrinker.shrink(&original.candidate, original.schema_changes_until(), original.peak_rate()).await;
    let provenance = match &campaign {
        Some((_, c)) => format!("campaign {}", c.campaign_id),
        None => format!("report {}", options.report.display()),
    };
    let mut repro = None;
    if outcome.status.reproduced() {
        let path = options.out_scenario.clone().unwrap_or_else(|| crate::scenario::scenarios_dir().join(format!("repro-{seed}.toml")));
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, repro_toml(&original, &outcome, &provenance, &targets)?)?;
        if let Some((cdir, c)) = campaign.as_mut() {
            link_repro(cdir, c, seed, &path)?;
        }
        repro = Some(path.display().to_string());
    }
    let shrink_report = ShrinkReport {
        report: options.report.display().to_string(),
        seed,
        scenario: original.scenario.name.clone(),
        run_id: original.run_id.clone(),
        k: options.k,
        max_runs: options.max_runs,
        recovery_targets: targets,
        signature: original.signature.clone(),
        original: original.candidate.clone(),
        outcome,
        repro,
        campaign: campaign.as_ref().map(|(d, _)| d.display().to_string()),
    };
    std::fs::write(dir.join(SHRINK_JSON), serde_json::to_string_pretty(&shrink_report)? + "\n")?;
    let o = &shrink_report.outcome;
    let code = match o.status {
        ShrinkStatus::Minimal | ShrinkStatus::Capped => Outcome::Pass,
        ShrinkStatus::Interrupted => Outcome::Interrupted,
        ShrinkStatus::Flaky => {
            let first = o.tries.first().map(|t| (t.runs.iter().filter(|r| r.reproduced).count(), t.runs.len())).unwrap_or_default();
            Outcome::NoVerdict {
                reasons: vec![format!("seed {seed}: the original schedule is flaky: it reproduced in {} of {} runs (--k {})", first.0, first.1, options.k)],
            }
        }
        ShrinkStatus::NotReproduced => {
            Outcome::NoVerdict { reasons: vec![format!("seed {seed}: the original schedule did not reproduce the failure in {} runs", options.k)] }
        }
    };
    Ok((code, shrink_report))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(i: u64) -> FaultSpec {
        FaultSpec {
            at: Duration::from_secs(10 + 20 * i),
            duration: Duration::from_secs(8),
            target: "sink".into(),
            fault: FaultKind::Pause,
            latency_ms: None,
            jitter_ms: None,
            bandwidth_kbps: None,
            count: None,
        }
    }

    fn failing() -> Signature {
        Signature { recovery: ["pause".to_string()].into(), ..Signature::default() }
    }

    /// Tells the original signature when `fails` says so; counts its calls.
    struct Predicate<F> {
        fails: F,
        calls: u32,
    }

    impl<F: FnMut(&Candidate, u32) -> bool> Oracle for Predicate<F> {
        async fn run(&mut self, candidate: &Candidate, _try_no: usize, _run_no: u32) -> anyhow::Result<RunResult> {
            self.calls += 1;
            let fails = (self.fails)(candidate, self.calls);
            Ok(RunResult { signature: if fails { failing() } else { Signature::default() }, dir: None })
        }
    }

    fn original(n: u64) -> Candidate {
        Candidate { faults: (0..n).map(fault).collect(), duration: Duration::from_secs(300), rate_factor: 1.0 }
    }

    fn has(c: &Candidate, i: u64) -> bool {
        c.faults.iter().any(|f| f.at == fault(i).at)
    }

    fn block_on<T>(f: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }

    fn shrink<F: FnMut(&Candidate, u32) -> bool>(fails: F, n: u64, k: u32, max_runs: u32) -> ShrinkOutcome {
        let signature = failing();
        let shrinker = Shrinker::new(Predicate { fails, calls: 0 }, &signature, k, max_runs);
        block_on(shrinker.shrink(&original(n), Duration::ZERO, 100.0))
    }

    #[test]
    fn ddmin_finds_the_two_faults_that_fail_together_and_is_1_minimal() {
        let fails = |c: &Candidate, _: u32| has(c, 2) && has(c, 5);
        let signature = failing();
        let mut shrinker = Shrinker::new(Predicate { fails, calls: 0 }, &signature, 2, 1000);
        let base = original(8);
        assert_eq!(block_on(shrinker.test(&base, "confirm", true)), TryVerdict::Reproduced);
        let best = block_on(shrinker.ddmin(&base));
        assert_eq!(best.faults, vec![fault(2), fault(5)]);
        assert!(shrinker.stopped.is_none());
        // 1-minimal: without either fault it passes.
        for i in 0..best.faults.len() {
            let mut c = best.clone();
            c.faults.remove(i);
            assert!(!fails(&c, 0));
        }
        // The whole shrink: the same faults, durations halved, load and rate lowered.
        let outcome = shrink(fails, 8, 2, 1000);
        assert_eq!(outcome.status, ShrinkStatus::Minimal);
        assert_eq!(outcome.best.faults.iter().map(|f| f.at).collect::<Vec<_>>(), vec![fault(2).at, fault(5).at]);
        assert!(outcome.best.faults.iter().all(|f| f.duration == Duration::from_secs(4)), "{:?}", outcome.best.faults);
        // Last fault: at 110 s for 4 s, + 20 s.
        assert_eq!(outcome.best.duration, Duration::from_secs(134));
        // 100 ops/s halved while >= 10: 50, 25, 12.5.
        assert_eq!(outcome.best.rate_factor, 0.125);
        assert!(outcome.tries.iter().all(|t| t.verdict != TryVerdict::Flaky));
        assert_eq!(outcome.tries[0].runs.len(), 2, "the confirmation runs k times");
    }

    #[test]
    fn a_failure_that_alternates_is_flaky_and_not_minimised() {
        let outcome = shrink(|_: &Candidate, call: u32| call % 2 == 1, 8, 2, 40);
        assert_eq!(outcome.status, ShrinkStatus::Flaky);
        assert_eq!(outcome.tries.len(), 1);
        assert_eq!(outcome.tries[0].verdict, TryVerdict::Flaky);
        assert_eq!(outcome.tries[0].runs.iter().map(|r| r.reproduced).collect::<Vec<_>>(), vec![true, false]);
        assert_eq!(outcome.best, original(8));
        assert_eq!(outcome.runs_used, 2);
        let never = shrink(|_: &Candidate, _: u32| false, 3, 2, 40);
        assert_eq!((never.status, never.runs_used), (ShrinkStatus::NotReproduced, 2));
        assert!(!never.status.reproduced());
    }

    #[test]
    fn k_of_k_counts_every_run() {
        assert_eq!(try_verdict(&[true, true], 2), TryVerdict::Reproduced);
        assert_eq!(try_verdict(&[true, true], 3), TryVerdict::Incomplete);
        assert_eq!(try_verdict(&[true, false], 2), TryVerdict::Flaky);
        assert_eq!(try_verdict(&[false], 2), TryVerdict::Passed);
        assert_eq!(try_verdict(&[], 2), TryVerdict::Incomplete);
        assert_eq!(try_verdict(&[true, true, false], 3), TryVerdict::Flaky);
        // k = 3: two of every three calls fail; the confirmation sees 2 of 3: flaky.
        let outcome = shrink(|_: &Candidate, call: u32| call % 3 != 0, 4, 3, 40);
        assert_eq!((outcome.status, outcome.tries[0].runs.len()), (ShrinkStatus::Flaky, 3));
        // A candidate after the confirmation stops at its first run that does not fail.
        let fails = |c: &Candidate, _: u32| has(c, 0);
        let outcome = shrink(fails, 2, 3, 1000);
        assert_eq!(outcome.status, ShrinkStatus::Minimal);
        assert!(outcome.tries.iter().filter(|t| t.verdict == TryVerdict::Passed).all(|t| t.runs.len() == 1));
        assert!(outcome.tries.iter().filter(|t| t.verdict == TryVerdict::Reproduced).all(|t| t.runs.len() == 3));
    }

    #[test]
    fn only_the_shortenings_that_still_fail_are_kept() {
        // Fails only with fault 1 lasting 8 s, a load of 200 s or more, and 50 ops/s or more.
        let fails = |c: &Candidate, _: u32| {
            c.faults.iter().any(|f| f.at == fault(1).at && f.duration >= Duration::from_secs(8))
                && c.duration >= Duration::from_secs(200)
                && c.rate_factor >= 0.5
        };
        let outcome = shrink(fails, 3, 2, 1000);
        assert_eq!(outcome.status, ShrinkStatus::Minimal);
        assert_eq!(outcome.best.faults, vec![fault(1)], "its duration kept");
        // The floor (38 + 20 s: 58 s) fails; the midpoint (179 s) too: the load is kept.
        assert_eq!(outcome.best.duration, Duration::from_secs(300));
        assert_eq!(outcome.best.rate_factor, 0.5);
        let steps: Vec<&str> = outcome.tries.iter().map(|t| t.step.as_str()).collect();
        assert!(steps.iter().any(|s| s.starts_with("halve fault 1")) && steps.iter().any(|s| s.starts_with("shorten the load")), "{steps:?}");
        for t in &outcome.tries {
            assert_eq!(t.verdict == TryVerdict::Reproduced, fails(&t.candidate, 0), "{}", t.step);
        }
    }

    #[test]
    fn the_run_cap_stops_with_the_smallest_reproducing_schedule() {
        let fails = |c: &Candidate, _: u32| has(c, 2) && has(c, 5);
        // 2 to confirm, 6 for the halves and quarters, 2 for the first complement that
        // fails ({2..7}), then the cap.
        let outcome = shrink(fails, 8, 2, 12);
        assert_eq!((outcome.status, outcome.runs_used), (ShrinkStatus::Capped, 12));
        assert_eq!(outcome.best.faults.len(), 6);
        assert!(outcome.status.reproduced());
        assert!(fails(&outcome.best, 0) && outcome.best.faults.len() < 8, "{:?}", outcome.best.faults.len());
        // The best is a schedule that reproduced k of k.
        assert!(outcome.tries.iter().any(|t| t.verdict == TryVerdict::Reproduced && t.candidate == outcome.best));
        // The candidate the cap stopped before its first run is not a try.
        assert!(outcome.tries.iter().all(|t| !t.runs.is_empty()));
    }

    fn report_of(faults: Vec<FaultSpec>) -> Report {
        let scenario = Scenario::load("chaos-random").expect("shipped scenario");
        let plan = scenario.plan(Some(Duration::from_secs(240)), None);
        let mut report = crate::report::thresholds::representative_report();
        report.run.seed = 7;
        report.run.run_id = "chaos-random-1".into();
        report.run.driver = "goose".into();
        report.convergence.converged = true;
        report.summary.converged = true;
        report.config = serde_json::json!({ "scenario": scenario, "plan": plan, "overrides": { "duration": 240.0, "rate": null }, "fault_schedule": faults });
        report
    }

    #[test]
    fn the_repro_file_parses_back_with_the_same_faults() {
        let faults = vec![fault(1), fault(3), FaultSpec { fault: FaultKind::Latency, target: "broker".into(), latency_ms: Some(300), ..fault(4) }];
        let mut report = report_of(faults.clone());
        report.faults = vec![crate::report::model::FaultRecord {
            kind: "pause".into(),
            target: "sink".into(),
            start_s: 30.0,
            end_s: Some(38.0),
            pipeline_recovery_s: Some(25.0),
            ..Default::default()
        }];
        let targets = RecoveryTargets::default();
        let original = Original::of_report(&report, &targets).unwrap();
        assert_eq!(original.candidate.faults, faults);
        assert_eq!(original.candidate.duration, Duration::from_secs(240));
        assert!(original.scenario.random_faults.is_none());
        assert_eq!(original.signature.recovery, ["pause".to_string()].into());
        let best = Candidate { faults: vec![faults[0].clone(), faults[2].clone()], duration: Duration::from_secs(120), rate_factor: 0.5 };
        let outcome = ShrinkOutcome { status: ShrinkStatus::Minimal, best: best.clone(), runs_used: 9, tries: Vec::new() };
        let text = repro_toml(&original, &outcome, "campaign c1", &targets).unwrap();
        let back = Scenario::parse(&text, Path::new("repro-7.toml")).unwrap();
        assert_eq!(back.name, "repro-7");
        assert_eq!(back.faults, best.faults);
        assert!(back.random_faults.is_none());
        assert!(
            back.description.contains("seed 7") && back.description.contains("campaign c1") && back.description.contains("recovery gate of pause"),
            "{}",
            back.description
        );
        assert!(text.contains("harness campaign --scenario"), "{text}");
        assert_eq!(back.thresholds, original.scenario.thresholds);
        // The load as written: 120 s, half the rate; the faults keep their times.
        assert_eq!(back.plan(None, None).duration(), Duration::from_secs(120));
        let first = original.segments[0].from;
        assert_eq!(back.plan(None, None).segments[0].from, (first * 0.5 * 100.0).round() / 100.0);
        assert_eq!(back.fault_schedule(7, back.plan(None, None).duration()), best.faults);
    }

    #[test]
    fn a_run_that_passed_has_no_failure_to_shrink() {
        let report = report_of(vec![fault(1)]);
        let original = Original::of_report(&report, &RecoveryTargets::default()).unwrap();
        assert!(!original.signature.is_failure(), "{:?}", original.signature);
        let failed = Signature { thresholds: ["errors == 0".into()].into(), ..Signature::default() };
        assert!(failed.intersects(&Signature { thresholds: ["errors == 0".into(), "x < 1".into()].into(), ..Signature::default() }));
        assert!(!failed.intersects(&failing()));
    }

    #[test]
    fn a_campaign_rows_repro_link_survives_json_and_merge() {
        use crate::campaign::merge::tests::{campaign_of, six_rows};
        let mut rows = six_rows();
        rows[1].repro = Some("../../scenarios/repro-2.toml".into());
        let c = campaign_of(rows, None, &[1, 2, 3, 4, 5, 6]);
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains("repro-2.toml"));
        let back: crate::campaign::model::Campaign = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
        // An old campaign.json (no repro) still reads.
        let mut value: serde_json::Value = serde_json::from_str(&json).unwrap();
        value["runs"][1].as_object_mut().unwrap().remove("repro");
        let old: crate::campaign::model::Campaign = serde_json::from_value(value).unwrap();
        assert_eq!(old.runs[1].repro, None);
        assert!(!serde_json::to_string(&old).unwrap().contains("\"repro\""));
        let merged = crate::campaign::merge::merge(&[("one".into(), c.clone())], "m".into()).unwrap();
        assert_eq!(merged.runs[1].repro, c.runs[1].repro);
        let html = crate::campaign::html::render(&c);
        assert!(html.contains("href=\"../../scenarios/repro-2.toml\">repro</a>"), "repro link in the page");
        assert!(crate::campaign::html::markdown(&c).contains("seed 2: reproducer"));
    }

    #[test]
    fn the_link_goes_into_the_campaign_folder() {
        use crate::campaign::merge::tests::{campaign_of, six_rows};
        let dir = std::env::temp_dir().join(format!("shrink-link-{}", std::process::id()));
        let mut c = campaign_of(six_rows(), None, &[1, 2, 3, 4, 5, 6]);
        let report = dir.join(c.runs[1].report.clone().unwrap());
        std::fs::create_dir_all(report.parent().unwrap()).unwrap();
        std::fs::write(&report, "{}").unwrap();
        super::super::write(&c, &dir).unwrap();
        let (found, mut campaign) = campaign_of_report(&report).expect("the report is a run of the campaign");
        assert_eq!(std::fs::canonicalize(&found).unwrap(), std::fs::canonicalize(&dir).unwrap());
        let repro = dir.join("repro-2.toml");
        std::fs::write(&repro, "").unwrap();
        link_repro(&found, &mut campaign, 2, &repro).unwrap();
        let back = super::super::read(&dir.join(super::super::CAMPAIGN_JSON)).unwrap();
        assert_eq!(back.runs[1].repro.as_deref(), Some("repro-2.toml"));
        c.runs[1].repro = Some("repro-2.toml".into());
        assert_eq!(back.runs, c.runs);
        let _ = std::fs::remove_dir_all(&dir);
    }

    use super::campaign_of as campaign_of_report;
}
