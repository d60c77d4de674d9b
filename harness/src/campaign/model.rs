//! `campaign.json`: one versioned model of a chaos campaign (many seeded runs of one
//! scenario), and the one function that computes its aggregates, gates and verdict from
//! the per-seed rows. A campaign run and a merge of shards both call it, so a merged
//! campaign is exactly what the unsharded one would be.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::exit::Outcome;
use crate::report::model::{Report, Verdict};
use crate::verify::{Anomaly, AnomalyKind};

/// 1: the first campaign model.
pub const SCHEMA_VERSION: u32 = 1;

/// Pipeline recovery target of every fault kind without its own (`--recovery-target`).
pub const DEFAULT_RECOVERY_TARGET_S: f64 = 10.0;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Campaign {
    pub schema_version: u32,
    pub campaign_id: String,
    pub scenario: String,
    /// `--duration` in seconds; None: the scenario's own load duration.
    pub duration_s: Option<f64>,
    /// The seed list as asked (`--seeds`), before sharding.
    pub all_seeds: Vec<u64>,
    /// This campaign's share of `all_seeds`; None: all of them (or a merge of shards).
    pub shard: Option<Shard>,
    /// The seeds this campaign was to run, in order (the shard's, or every shard's merged).
    pub seeds: Vec<u64>,
    /// A merge: the shards it was made of.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merged_from: Vec<MergedShard>,
    /// Stopped by Ctrl-C (a merge: any of its shards was).
    pub interrupted: bool,
    pub recovery_targets: RecoveryTargets,
    /// RFC 3339.
    pub started_at: String,
    pub ended_at: String,
    /// One row per seed that ran, in the order of `seeds`.
    pub runs: Vec<SeedRun>,
    /// Computed from `runs` (`Derived::of`).
    #[serde(flatten)]
    pub derived: Derived,
}

/// What a campaign computes from its rows: never stored apart from them, never averaged
/// over shards.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Derived {
    pub kinds: Vec<KindAggregate>,
    pub gates: Vec<RecoveryGate>,
    pub verdict: CampaignVerdict,
    /// Why the campaign has no verdict (seeds without verdict, errors, seeds not run).
    pub no_verdict: Vec<String>,
}

/// `--shard I/N`: the seeds whose index in the list (from 0) modulo N is I-1.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Shard {
    /// 1-based.
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// `I/N` with 1 <= I <= N.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("--shard `{text}`: expected I/N with 1 <= I <= N, e.g. 2/4");
        let (i, n) = text.split_once('/').ok_or_else(bad)?;
        let index: u32 = i.trim().parse().map_err(|_| bad())?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index == 0 || index > count {
            return Err(bad());
        }
        Ok(Self { index, count })
    }

    /// The seeds of `all` this shard takes: index % N == I - 1, order kept.
    pub fn select(self, all: &[u64]) -> Vec<u64> {
        all.iter().enumerate().filter(|(i, _)| *i as u64 % u64::from(self.count) == u64::from(self.index - 1)).map(|(_, s)| *s).collect()
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// `--seeds`: ranges `A..B` (B included) and single seeds, comma-separated (`1..5,9`),
/// in the order written. Empty, reversed or repeated seeds are refused.
pub fn parse_seeds(text: &str) -> Result<Vec<u64>, String> {
    let mut seeds = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err(format!("--seeds `{text}`: an empty item (expected A..B or a list like 1,5,9)"));
        }
        let number = |s: &str| s.trim().parse::<u64>().map_err(|_| format!("--seeds `{text}`: `{s}` is not a seed (a non-negative integer)"));
        match part.split_once("..") {
            Some((a, b)) => {
                let (a, b) = (number(a)?, number(b.strip_prefix('=').unwrap_or(b))?);
                if b < a {
                    return Err(format!("--seeds `{text}`: the range {a}..{b} is reversed"));
                }
                seeds.extend(a..=b);
            }
            None => seeds.push(number(part)?),
        }
    }
    let mut seen = BTreeSet::new();
    if let Some(dup) = seeds.iter().find(|s| !seen.insert(**s)) {
        return Err(format!("--seeds `{text}`: seed {dup} is named twice"));
    }
    if seeds.is_empty() {
        return Err(format!("--seeds `{text}`: no seed"));
    }
    Ok(seeds)
}

/// One shard of a merge.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MergedShard {
    pub campaign_id: String,
    /// Its folder as given to `campaign merge`.
    pub dir: String,
    pub shard: Option<Shard>,
    pub seeds: Vec<u64>,
}

/// Pipeline recovery targets per fault kind (seconds).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RecoveryTargets {
    pub default_s: f64,
    pub per_kind: BTreeMap<String, f64>,
}

impl Default for RecoveryTargets {
    fn default() -> Self {
        Self { default_s: DEFAULT_RECOVERY_TARGET_S, per_kind: BTreeMap::new() }
    }
}

impl RecoveryTargets {
    pub fn target(&self, kind: &str) -> f64 {
        self.per_kind.get(kind).copied().unwrap_or(self.default_s)
    }

    /// `--recovery-target kind=SECS` (or `default=SECS`), SECS in seconds (`20`, `2.5`) or a
    /// duration (`20s`, `1m`); a later one for the same kind wins.
    pub fn parse(items: &[String]) -> Result<Self, String> {
        let mut targets = Self::default();
        for item in items {
            let bad = |why: &str| format!("--recovery-target `{item}`: {why} (expected KIND=SECS or default=SECS, e.g. kill=20)");
            let (kind, secs) = item.split_once('=').ok_or_else(|| bad("no `=`"))?;
            let kind = kind.trim();
            if kind.is_empty() {
                return Err(bad("no fault kind"));
            }
            let secs = secs.trim();
            let value = secs
                .parse::<f64>()
                .ok()
                .or_else(|| humantime::parse_duration(secs).ok().map(|d| d.as_secs_f64()))
                .ok_or_else(|| bad("not a number of seconds"))?;
            if !value.is_finite() || value < 0.0 {
                return Err(bad("not a number of seconds"));
            }
            if kind == "default" {
                targets.default_s = value;
            } else {
                targets.per_kind.insert(kind.to_string(), value);
            }
        }
        Ok(targets)
    }
}

/// A seed's verdict: its run's, or `error` when the run did not finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeedVerdict {
    Pass,
    Fail,
    NoVerdict,
    Error,
}

impl SeedVerdict {
    pub fn of(verdict: Verdict) -> Self {
        match verdict {
            Verdict::Pass => Self::Pass,
            Verdict::Fail => Self::Fail,
            Verdict::NoVerdict => Self::NoVerdict,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::Fail => "FAIL",
            Self::NoVerdict => "NO VERDICT",
            Self::Error => "ERROR",
        }
    }

    /// CSS class of a cell coloured by this verdict.
    pub fn class(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "fail",
            Self::NoVerdict => "noverdict",
            Self::Error => "error",
        }
    }
}

/// One seed of the campaign.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SeedRun {
    pub seed: u64,
    pub verdict: SeedVerdict,
    /// Its `report.json`, relative to the campaign folder; None: the run errored.
    pub report: Option<String>,
    pub run_id: Option<String>,
    /// The run's error (verdict `error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why the run has no verdict.
    #[serde(default)]
    pub no_verdict: Vec<String>,
    /// None: the run errored before verifying.
    pub converged: Option<bool>,
    /// Expressions of the thresholds that failed.
    #[serde(default)]
    pub thresholds_failed: Vec<String>,
    /// Wall-clock seconds of the run (stack up to down).
    pub wall_s: f64,
    pub faults: Vec<SeedFault>,
    pub anomaly_counts: BTreeMap<AnomalyKind, u64>,
    /// The examples the run report has (at most its `max_examples` per kind).
    pub anomalies: Vec<Anomaly>,
    /// The reproducer `campaign shrink` wrote for this seed (relative to the campaign
    /// folder when it is inside it); None: not shrunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repro: Option<String>,
}

impl SeedRun {
    /// The row of a run that finished; `report` is its report.json relative to the
    /// campaign folder.
    pub fn of_report(seed: u64, report: &Report, report_path: String, wall_s: f64) -> Self {
        Self {
            seed,
            verdict: SeedVerdict::of(crate::report::verdict(report)),
            report: Some(report_path),
            run_id: Some(report.run.run_id.clone()),
            error: None,
            no_verdict: report.summary.no_verdict.clone(),
            converged: Some(report.convergence.converged),
            thresholds_failed: report.thresholds.iter().filter(|t| !t.passed).map(|t| t.expression.clone()).collect(),
            wall_s,
            faults: report.faults.iter().map(SeedFault::of).collect(),
            anomaly_counts: report.convergence.anomaly_counts.iter().filter(|(_, n)| **n > 0).map(|(k, n)| (*k, *n)).collect(),
            anomalies: report.convergence.anomalies.clone(),
            repro: None,
        }
    }

    /// The row of a run that did not finish.
    pub fn of_error(seed: u64, error: String, wall_s: f64) -> Self {
        Self {
            seed,
            verdict: SeedVerdict::Error,
            report: None,
            run_id: None,
            error: Some(error),
            no_verdict: Vec::new(),
            converged: None,
            thresholds_failed: Vec::new(),
            wall_s,
            faults: Vec::new(),
            anomaly_counts: BTreeMap::new(),
            anomalies: Vec::new(),
            repro: None,
        }
    }
}

/// A fault of a seed's schedule, as its run report recorded it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SeedFault {
    pub kind: String,
    pub target: String,
    pub start_s: f64,
    /// None: the fault has no end in the report (an instant fault, or it never ended).
    pub duration_s: Option<f64>,
    /// None: not measured (never 0).
    pub service_recovery_s: Option<f64>,
    pub pipeline_recovery_s: Option<f64>,
}

impl SeedFault {
    pub fn of(f: &crate::report::model::FaultRecord) -> Self {
        Self {
            kind: f.kind.clone(),
            target: f.target.clone(),
            start_s: f.start_s,
            duration_s: f.end_s.map(|end| (end - f.start_s).max(0.0)),
            service_recovery_s: f.service_recovery_s,
            pipeline_recovery_s: f.pipeline_recovery_s,
        }
    }

    pub fn ended(&self) -> bool {
        self.duration_s.is_some()
    }
}

/// Nearest-rank percentiles of the recoveries measured; `unmeasured` counts the faults
/// without one (absent here, never a 0).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RecoveryStats {
    pub measured: u64,
    pub unmeasured: u64,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub max: Option<f64>,
}

impl RecoveryStats {
    pub fn of(values: impl IntoIterator<Item = Option<f64>>) -> Self {
        let (measured, unmeasured): (Vec<_>, Vec<_>) = values.into_iter().partition(Option::is_some);
        let p = crate::run::percentiles(measured.into_iter().flatten().collect());
        let some = |v: f64| p.measured().then_some(v);
        Self { measured: p.count, unmeasured: unmeasured.len() as u64, p50: some(p.p50), p95: some(p.p95), max: some(p.max) }
    }
}

/// One fault kind over every seed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KindAggregate {
    pub kind: String,
    /// Faults of this kind over every seed.
    pub faults: u64,
    /// Seeds whose schedule has it.
    pub runs: u64,
    /// Of those, the seeds whose run failed.
    pub failed_runs: u64,
    pub failed_seeds: Vec<u64>,
    pub service_recovery: RecoveryStats,
    pub pipeline_recovery: RecoveryStats,
}

/// A fault that failed its kind's recovery gate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GateViolation {
    pub seed: u64,
    pub target: String,
    pub start_s: f64,
    /// None: not measured after a fault that ended.
    pub pipeline_recovery_s: Option<f64>,
}

/// Pipeline recovery of one fault kind against its target.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RecoveryGate {
    pub kind: String,
    pub target_s: f64,
    pub faults: u64,
    pub observed_p95_s: Option<f64>,
    pub observed_max_s: Option<f64>,
    /// Faults whose recovery exceeded the target.
    pub over_target: u64,
    /// Faults that ended without a measured recovery (they fail the gate).
    pub unmeasured: u64,
    pub passed: bool,
    pub violations: Vec<GateViolation>,
}

impl RecoveryGate {
    pub fn expression(&self) -> String {
        format!("{}: pipeline recovery <= {} s", self.kind, crate::report::fmt_num(self.target_s))
    }
}

/// The verdict of a whole campaign, which campaign.json tells and the exit code follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CampaignVerdict {
    Pass,
    Fail,
    NoVerdict,
    Interrupted,
}

impl CampaignVerdict {
    pub fn label(self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::Fail => "FAIL",
            Self::NoVerdict => "NO VERDICT",
            Self::Interrupted => "INTERRUPTED",
        }
    }
}

/// Every fault kind's aggregate, in name order.
pub fn kind_aggregates(runs: &[SeedRun]) -> Vec<KindAggregate> {
    let kinds: BTreeSet<&str> = runs.iter().flat_map(|r| r.faults.iter().map(|f| f.kind.as_str())).collect();
    kinds
        .into_iter()
        .map(|kind| {
            let with: Vec<&SeedRun> = runs.iter().filter(|r| r.faults.iter().any(|f| f.kind == kind)).collect();
            let failed_seeds: Vec<u64> = with.iter().filter(|r| r.verdict == SeedVerdict::Fail).map(|r| r.seed).collect();
            let faults = || runs.iter().flat_map(|r| r.faults.iter()).filter(|f| f.kind == kind);
            KindAggregate {
                kind: kind.to_string(),
                faults: faults().count() as u64,
                runs: with.len() as u64,
                failed_runs: failed_seeds.len() as u64,
                failed_seeds,
                service_recovery: RecoveryStats::of(faults().map(|f| f.service_recovery_s)),
                pipeline_recovery: RecoveryStats::of(faults().map(|f| f.pipeline_recovery_s)),
            }
        })
        .collect()
}

/// One gate per fault kind that occurred: every fault's pipeline recovery within its
/// kind's target; a fault that ended without a measured recovery fails it.
pub fn recovery_gates(runs: &[SeedRun], kinds: &[KindAggregate], targets: &RecoveryTargets) -> Vec<RecoveryGate> {
    kinds
        .iter()
        .map(|k| {
            let target_s = targets.target(&k.kind);
            let mut over_target = 0;
            let mut unmeasured = 0;
            let mut violations = Vec::new();
            for run in runs {
                for f in run.faults.iter().filter(|f| f.kind == k.kind) {
                    let violated = match f.pipeline_recovery_s {
                        Some(s) if s > target_s => {
                            over_target += 1;
                            true
                        }
                        Some(_) => false,
                        None if f.ended() => {
                            unmeasured += 1;
                            true
                        }
                        None => false,
                    };
                    if violated {
                        violations.push(GateViolation {
                            seed: run.seed,
                            target: f.target.clone(),
                            start_s: f.start_s,
                            pipeline_recovery_s: f.pipeline_recovery_s,
                        });
                    }
                }
            }
            RecoveryGate {
                kind: k.kind.clone(),
                target_s,
                faults: k.faults,
                observed_p95_s: k.pipeline_recovery.p95,
                observed_max_s: k.pipeline_recovery.max,
                over_target,
                unmeasured,
                passed: violations.is_empty(),
                violations,
            }
        })
        .collect()
}

/// The campaign's verdict: interrupted on Ctrl-C; else FAIL when a seed failed or a gate
/// failed; else NO VERDICT when a seed has none, errored, or was planned and did not run
/// (or none ran); else PASS. The reasons are the no-verdict ones.
pub fn verdict(runs: &[SeedRun], gates: &[RecoveryGate], seeds: &[u64], interrupted: bool) -> (CampaignVerdict, Vec<String>) {
    let mut reasons = Vec::new();
    for r in runs {
        match r.verdict {
            SeedVerdict::NoVerdict => reasons.push(format!("seed {}: no verdict ({})", r.seed, r.no_verdict.join("; "))),
            SeedVerdict::Error => reasons.push(format!("seed {}: the run failed: {}", r.seed, r.error.as_deref().unwrap_or("unknown error"))),
            _ => {}
        }
    }
    let ran: BTreeSet<u64> = runs.iter().map(|r| r.seed).collect();
    let missing: Vec<String> = seeds.iter().filter(|s| !ran.contains(s)).map(u64::to_string).collect();
    if !missing.is_empty() {
        reasons.push(format!("seeds not run: {}", missing.join(", ")));
    }
    if runs.is_empty() {
        reasons.push("no seed ran".into());
    }
    let verdict = if interrupted {
        CampaignVerdict::Interrupted
    } else if runs.iter().any(|r| r.verdict == SeedVerdict::Fail) || gates.iter().any(|g| !g.passed) {
        CampaignVerdict::Fail
    } else if !reasons.is_empty() {
        CampaignVerdict::NoVerdict
    } else {
        CampaignVerdict::Pass
    };
    (verdict, reasons)
}

impl Derived {
    /// Everything a campaign computes from its rows.
    pub fn of(runs: &[SeedRun], seeds: &[u64], targets: &RecoveryTargets, interrupted: bool) -> Self {
        let kinds = kind_aggregates(runs);
        let gates = recovery_gates(runs, &kinds, targets);
        let (verdict, no_verdict) = verdict(runs, &gates, seeds, interrupted);
        Self { kinds, gates, verdict, no_verdict }
    }
}

impl Campaign {
    /// Recomputes `derived` from the rows (after a row is added, or on a merge).
    pub fn recompute(&mut self) {
        self.derived = Derived::of(&self.runs, &self.seeds, &self.recovery_targets, self.interrupted);
    }

    /// The command's outcome: the campaign's verdict, as campaign.json tells it.
    pub fn outcome(&self) -> Outcome {
        match self.derived.verdict {
            CampaignVerdict::Pass => Outcome::Pass,
            CampaignVerdict::Fail => Outcome::GateFailed,
            CampaignVerdict::NoVerdict => Outcome::NoVerdict { reasons: self.derived.no_verdict.clone() },
            CampaignVerdict::Interrupted => Outcome::Interrupted,
        }
    }

    pub fn failed_seeds(&self) -> Vec<u64> {
        self.runs.iter().filter(|r| r.verdict == SeedVerdict::Fail).map(|r| r.seed).collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn fault(kind: &str, start_s: f64, duration_s: Option<f64>, service: Option<f64>, pipeline: Option<f64>) -> SeedFault {
        SeedFault { kind: kind.into(), target: "broker".into(), start_s, duration_s, service_recovery_s: service, pipeline_recovery_s: pipeline }
    }

    pub(crate) fn row(seed: u64, verdict: SeedVerdict, faults: Vec<SeedFault>) -> SeedRun {
        let mut r = SeedRun::of_error(seed, String::new(), 60.0);
        r.verdict = verdict;
        r.error = (verdict == SeedVerdict::Error).then(|| "stack did not start".into());
        r.report = (verdict != SeedVerdict::Error).then(|| format!("runs/seed-{seed}/run/report.json"));
        r.converged = (verdict != SeedVerdict::Error).then_some(verdict != SeedVerdict::Fail);
        r.faults = faults;
        r
    }

    #[test]
    fn seeds_parse_as_inclusive_ranges_and_lists() {
        assert_eq!(parse_seeds("1..5").unwrap(), vec![1, 2, 3, 4, 5]);
        assert_eq!(parse_seeds("3..3").unwrap(), vec![3]);
        assert_eq!(parse_seeds("1,5,9").unwrap(), vec![1, 5, 9]);
        assert_eq!(parse_seeds("9, 1..2 ,20").unwrap(), vec![9, 1, 2, 20]);
        assert_eq!(parse_seeds("7").unwrap(), vec![7]);
        for bad in ["", "5..1", "1..", "..4", "a..b", "1,,2", "1,x", "-1", "1..3,2", "1,1"] {
            assert!(parse_seeds(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_seeds("5..1").unwrap_err().contains("reversed"));
    }

    #[test]
    fn shards_parse_validate_and_take_every_nth_seed() {
        assert_eq!(Shard::parse("2/4").unwrap(), Shard { index: 2, count: 4 });
        for bad in ["0/4", "5/4", "1/0", "1", "a/b", "/4", "1/", "-1/4"] {
            assert!(Shard::parse(bad).is_err(), "{bad:?} accepted");
        }
        let seeds = parse_seeds("1..10").unwrap();
        let shards: Vec<Vec<u64>> = (1..=3).map(|i| Shard { index: i, count: 3 }.select(&seeds)).collect();
        assert_eq!(shards, vec![vec![1, 4, 7, 10], vec![2, 5, 8], vec![3, 6, 9]]);
        // By index in the list, not by value.
        assert_eq!(Shard { index: 1, count: 2 }.select(&[9, 5, 1]), vec![9, 1]);
        assert_eq!(Shard { index: 1, count: 1 }.select(&seeds), seeds);
    }

    #[test]
    fn recovery_targets_parse_per_kind_and_default() {
        let t = RecoveryTargets::parse(&["kill=20".into(), "default=15s".into(), "pause=2.5".into()]).unwrap();
        assert_eq!((t.target("kill"), t.target("pause"), t.target("stop")), (20.0, 2.5, 15.0));
        assert_eq!(RecoveryTargets::parse(&[]).unwrap().target("kill"), DEFAULT_RECOVERY_TARGET_S);
        for bad in ["kill", "=5", "kill=x", "kill=-1"] {
            assert!(RecoveryTargets::parse(&[bad.into()]).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn per_kind_recovery_uses_nearest_rank_and_counts_unmeasured_apart() {
        let recoveries = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0, 16.0, 17.0, 18.0, 19.0, 20.0];
        let mut faults: Vec<SeedFault> = recoveries.iter().map(|r| fault("kill", 0.0, Some(3.0), Some(r / 2.0), Some(*r))).collect();
        faults.push(fault("kill", 0.0, Some(3.0), None, None));
        let runs = vec![row(1, SeedVerdict::Pass, faults[..10].to_vec()), row(2, SeedVerdict::Fail, faults[10..].to_vec())];
        let kinds = kind_aggregates(&runs);
        assert_eq!(kinds.len(), 1);
        let k = &kinds[0];
        assert_eq!((k.faults, k.runs, k.failed_runs, k.failed_seeds.clone()), (21, 2, 1, vec![2]));
        // Nearest rank over the 20 measured: p50 = 10th, p95 = 19th, max = 20th.
        assert_eq!((k.pipeline_recovery.p50, k.pipeline_recovery.p95, k.pipeline_recovery.max), (Some(10.0), Some(19.0), Some(20.0)));
        assert_eq!((k.pipeline_recovery.measured, k.pipeline_recovery.unmeasured), (20, 1));
        assert_eq!(k.service_recovery.max, Some(10.0));
        // Nothing measured: absent, not 0.
        let none = RecoveryStats::of([None, None]);
        assert_eq!(none, RecoveryStats { measured: 0, unmeasured: 2, p50: None, p95: None, max: None });
        let one = RecoveryStats::of([Some(4.0)]);
        assert_eq!((one.p50, one.p95, one.max), (Some(4.0), Some(4.0), Some(4.0)));
    }

    #[test]
    fn a_gate_fails_on_a_slow_or_unmeasured_recovery_of_a_fault_that_ended() {
        let runs = vec![
            row(1, SeedVerdict::Pass, vec![fault("kill", 10.0, Some(3.0), Some(1.0), Some(21.0)), fault("pause", 30.0, Some(4.0), Some(0.5), Some(2.0))]),
            row(2, SeedVerdict::Pass, vec![fault("stop", 5.0, Some(5.0), None, None), fault("poison", 8.0, None, None, None)]),
        ];
        let kinds = kind_aggregates(&runs);
        let gates = recovery_gates(&runs, &kinds, &RecoveryTargets::default());
        let by_kind: BTreeMap<&str, &RecoveryGate> = gates.iter().map(|g| (g.kind.as_str(), g)).collect();
        assert!(!by_kind["kill"].passed);
        assert_eq!((by_kind["kill"].over_target, by_kind["kill"].observed_p95_s, by_kind["kill"].observed_max_s), (1, Some(21.0), Some(21.0)));
        assert_eq!(by_kind["kill"].violations[0].seed, 1);
        assert!(by_kind["pause"].passed);
        // A fault that ended and was never seen recovering fails; one with no end is counted
        // as unmeasured in its aggregate but does not fail the gate.
        assert!(!by_kind["stop"].passed);
        assert_eq!(by_kind["stop"].unmeasured, 1);
        assert!(by_kind["poison"].passed);
        assert_eq!(kinds.iter().find(|k| k.kind == "poison").unwrap().pipeline_recovery.unmeasured, 1);
        // A kind's own target, and the default.
        let targets = RecoveryTargets::parse(&["kill=25".into(), "default=1".into()]).unwrap();
        let gates = recovery_gates(&runs, &kinds, &targets);
        let by_kind: BTreeMap<&str, &RecoveryGate> = gates.iter().map(|g| (g.kind.as_str(), g)).collect();
        assert!(by_kind["kill"].passed);
        assert!(!by_kind["pause"].passed, "2 s > default 1 s");
        assert_eq!(by_kind["kill"].target_s, 25.0);
    }

    #[test]
    fn the_campaign_verdict_and_its_outcome_agree() {
        let ok = |seed| row(seed, SeedVerdict::Pass, vec![fault("pause", 1.0, Some(3.0), Some(1.0), Some(2.0))]);
        let slow = |seed| row(seed, SeedVerdict::Pass, vec![fault("kill", 1.0, Some(3.0), Some(1.0), Some(20.0))]);
        let of = |runs: Vec<SeedRun>, seeds: &[u64], interrupted: bool| Derived::of(&runs, seeds, &RecoveryTargets::default(), interrupted);
        assert_eq!(of(vec![ok(1), ok(2)], &[1, 2], false).verdict, CampaignVerdict::Pass);
        assert_eq!(of(vec![ok(1), row(2, SeedVerdict::Fail, vec![])], &[1, 2], false).verdict, CampaignVerdict::Fail);
        assert_eq!(of(vec![ok(1), slow(2)], &[1, 2], false).verdict, CampaignVerdict::Fail, "a recovery gate failed");
        let nv = of(vec![ok(1), row(2, SeedVerdict::NoVerdict, vec![])], &[1, 2], false);
        assert_eq!(nv.verdict, CampaignVerdict::NoVerdict);
        assert_eq!(nv.no_verdict.len(), 1);
        let err = of(vec![ok(1), row(2, SeedVerdict::Error, vec![])], &[1, 2], false);
        assert_eq!(err.verdict, CampaignVerdict::NoVerdict);
        assert!(err.no_verdict[0].contains("stack did not start"));
        // A failure outweighs a missing verdict.
        assert_eq!(of(vec![row(1, SeedVerdict::Error, vec![]), row(2, SeedVerdict::Fail, vec![])], &[1, 2], false).verdict, CampaignVerdict::Fail);
        assert_eq!(of(vec![ok(1)], &[1, 2], false).verdict, CampaignVerdict::NoVerdict, "seed 2 did not run");
        assert_eq!(of(vec![], &[], false).verdict, CampaignVerdict::NoVerdict);
        assert_eq!(of(vec![ok(1)], &[1, 2], true).verdict, CampaignVerdict::Interrupted);
        // The outcome (hence the exit code) is read from the verdict campaign.json holds.
        let mut c = crate::campaign::merge::tests::campaign_of(vec![ok(1), slow(2)], None, &[1, 2]);
        assert_eq!((c.derived.verdict, c.outcome()), (CampaignVerdict::Fail, Outcome::GateFailed));
        c.runs = vec![ok(1), ok(2)];
        c.recompute();
        assert_eq!((c.derived.verdict, c.outcome().code()), (CampaignVerdict::Pass, crate::exit::SUCCESS));
        c.runs.pop();
        c.recompute();
        assert_eq!(c.outcome(), Outcome::NoVerdict { reasons: c.derived.no_verdict.clone() });
        c.interrupted = true;
        c.recompute();
        assert_eq!(c.outcome().code(), crate::exit::INTERRUPTED);
    }
}
