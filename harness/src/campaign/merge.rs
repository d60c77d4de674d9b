//! `harness campaign merge`: the shards of one campaign made one. The rows are taken as
//! they are and everything else is computed from them again (`Derived::of`), never from
//! the shards' own aggregates.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use super::model::{Campaign, Derived, MergedShard, SCHEMA_VERSION};

/// Shards that cannot be one campaign.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("nothing to merge")]
    Empty,
    #[error("{dir}: campaign.json has schema version {found}; this harness reads {SCHEMA_VERSION}")]
    Schema { dir: String, found: u32 },
    #[error("{dir} ran scenario {theirs}, {first_dir} ran {ours}: shards of different scenarios do not merge")]
    Scenario { dir: String, theirs: String, first_dir: String, ours: String },
    #[error("{dir} ran with --duration {theirs}, {first_dir} with {ours}: shards of different durations do not merge")]
    Duration { dir: String, theirs: String, first_dir: String, ours: String },
    #[error("{dir} gated recovery with other targets than {first_dir}: shards of different --recovery-target do not merge")]
    Targets { dir: String, first_dir: String },
    #[error("seed {seed} is in both {a} and {b}: shards overlap")]
    Overlap { seed: u64, a: String, b: String },
    #[error("{0}")]
    Read(String),
}

/// The shards (each a campaign and the folder it was read from) as one campaign, its
/// rows in the order of the seed list (the shards' common list when they share one).
pub fn merge(shards: &[(String, Campaign)], campaign_id: String) -> Result<Campaign, MergeError> {
    let ((first_dir, first), rest) = shards.split_first().ok_or(MergeError::Empty)?;
    let duration = |c: &Campaign| c.duration_s.map_or_else(|| "(the scenario's)".to_string(), |d| format!("{d} s"));
    let mut owner: BTreeMap<u64, &str> = BTreeMap::new();
    for (dir, c) in shards {
        if c.schema_version != SCHEMA_VERSION {
            return Err(MergeError::Schema { dir: dir.clone(), found: c.schema_version });
        }
        if c.scenario != first.scenario {
            return Err(MergeError::Scenario { dir: dir.clone(), theirs: c.scenario.clone(), first_dir: first_dir.clone(), ours: first.scenario.clone() });
        }
        if c.duration_s != first.duration_s {
            return Err(MergeError::Duration { dir: dir.clone(), theirs: duration(c), first_dir: first_dir.clone(), ours: duration(first) });
        }
        if c.recovery_targets != first.recovery_targets {
            return Err(MergeError::Targets { dir: dir.clone(), first_dir: first_dir.clone() });
        }
        for seed in &c.seeds {
            if let Some(other) = owner.insert(*seed, dir) {
                return Err(MergeError::Overlap { seed: *seed, a: other.to_string(), b: dir.clone() });
            }
        }
    }
    // The order of the list the shards were cut from; seeds outside it after, by value.
    let common = rest.iter().all(|(_, c)| c.all_seeds == first.all_seeds);
    let all_seeds: Vec<u64> = if common { first.all_seeds.clone() } else { owner.keys().copied().collect() };
    let position = |seed: u64| all_seeds.iter().position(|s| *s == seed).unwrap_or(usize::MAX);
    let mut seeds: Vec<u64> = owner.keys().copied().collect();
    seeds.sort_by_key(|s| (position(*s), *s));
    let mut runs: Vec<_> = shards.iter().flat_map(|(_, c)| c.runs.iter().cloned()).collect();
    runs.sort_by_key(|r| (position(r.seed), r.seed));
    let interrupted = shards.iter().any(|(_, c)| c.interrupted);
    let derived = Derived::of(&runs, &all_seeds, &first.recovery_targets, interrupted);
    Ok(Campaign {
        schema_version: SCHEMA_VERSION,
        campaign_id,
        scenario: first.scenario.clone(),
        duration_s: first.duration_s,
        all_seeds,
        shard: None,
        seeds,
        merged_from: shards
            .iter()
            .map(|(dir, c)| MergedShard { campaign_id: c.campaign_id.clone(), dir: dir.clone(), shard: c.shard, seeds: c.seeds.clone() })
            .collect(),
        interrupted,
        recovery_targets: first.recovery_targets.clone(),
        started_at: shards.iter().map(|(_, c)| c.started_at.clone()).min().unwrap_or_default(),
        ended_at: shards.iter().map(|(_, c)| c.ended_at.clone()).max().unwrap_or_default(),
        runs,
        derived,
    })
}

/// Reads `DIR/campaign.json` of every shard and rewrites each row's report path so that
/// it is relative to `out` (the merged campaign's folder).
pub fn read_shards(dirs: &[PathBuf], out: &Path) -> Result<Vec<(String, Campaign)>, MergeError> {
    dirs.iter()
        .map(|dir| {
            let path = dir.join(super::CAMPAIGN_JSON);
            let text = std::fs::read_to_string(&path).map_err(|e| MergeError::Read(format!("{}: {e}", path.display())))?;
            let mut campaign: Campaign = serde_json::from_str(&text).map_err(|e| MergeError::Read(format!("{}: {e}", path.display())))?;
            for run in &mut campaign.runs {
                if let Some(report) = &run.report {
                    run.report = Some(relative_to(&dir.join(report), out).display().to_string());
                }
                if let Some(repro) = run.repro.as_ref().filter(|r| Path::new(r).is_relative()) {
                    run.repro = Some(relative_to(&dir.join(repro), out).display().to_string());
                }
            }
            Ok((dir.display().to_string(), campaign))
        })
        .collect()
}

/// `path` as seen from `base` (both made absolute from the current directory); `path`
/// itself when they share no root.
pub fn relative_to(path: &Path, base: &Path) -> PathBuf {
    let absolute = |p: &Path| -> PathBuf {
        let p = if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir().unwrap_or_default().join(p) };
        let mut out = PathBuf::new();
        for c in p.components() {
            match c {
                Component::CurDir => {}
                Component::ParentDir => {
                    out.pop();
                }
                c => out.push(c),
            }
        }
        out
    };
    let (path_abs, base_abs) = (absolute(path), absolute(base));
    let (p, b): (Vec<_>, Vec<_>) = (path_abs.components().collect(), base_abs.components().collect());
    let common = p.iter().zip(&b).take_while(|(x, y)| x == y).count();
    if common == 0 {
        return path.to_path_buf();
    }
    let mut out = PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    for c in &p[common..] {
        out.push(c);
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::campaign::model::tests::{fault, row};
    use crate::campaign::model::{RecoveryTargets, SeedRun, SeedVerdict, Shard};

    pub(crate) fn campaign_of(runs: Vec<SeedRun>, shard: Option<Shard>, all_seeds: &[u64]) -> Campaign {
        let seeds = shard.map_or_else(|| all_seeds.to_vec(), |s| s.select(all_seeds));
        let runs: Vec<SeedRun> = runs.into_iter().filter(|r| seeds.contains(&r.seed)).collect();
        let targets = RecoveryTargets::default();
        Campaign {
            schema_version: SCHEMA_VERSION,
            campaign_id: format!("c-{}", shard.map_or("all".into(), |s| s.to_string())),
            scenario: "chaos-random".into(),
            duration_s: Some(40.0),
            all_seeds: all_seeds.to_vec(),
            shard,
            derived: Derived::of(&runs, &seeds, &targets, false),
            seeds,
            merged_from: Vec::new(),
            interrupted: false,
            recovery_targets: targets,
            started_at: "2026-12-07T18:00:00Z".into(),
            ended_at: "2026-12-07T18:10:00Z".into(),
            runs,
        }
    }

    /// Seeds 1..6 as a real campaign would record them: mixed verdicts, measured and
    /// unmeasured recoveries, a slow broker kill, an errored run.
    pub(crate) fn six_rows() -> Vec<SeedRun> {
        let mut rows = vec![
            row(1, SeedVerdict::Pass, vec![fault("kill", 12.0, Some(3.0), Some(4.0), Some(21.5)), fault("pause", 40.0, Some(5.0), Some(0.2), Some(1.5))]),
            row(2, SeedVerdict::Fail, vec![fault("stop", 20.0, Some(6.0), Some(3.0), None), fault("latency", 50.0, Some(8.0), None, Some(4.0))]),
            row(3, SeedVerdict::Pass, vec![fault("pause", 15.0, Some(4.0), Some(0.1), Some(2.5)), fault("poison", 60.0, None, None, None)]),
            row(4, SeedVerdict::NoVerdict, vec![fault("kill", 30.0, Some(3.0), Some(5.0), Some(8.0))]),
            row(5, SeedVerdict::Error, vec![]),
            row(6, SeedVerdict::Pass, vec![fault("restart", 10.0, Some(2.0), Some(6.0), Some(9.0)), fault("kill", 70.0, Some(3.0), Some(4.5), Some(7.0))]),
        ];
        rows[1].anomaly_counts.insert(crate::verify::AnomalyKind::LostChange, 3);
        rows[3].no_verdict = vec!["a fault did not inject".into()];
        rows
    }

    #[test]
    fn shards_merge_into_exactly_the_unsharded_campaign() {
        let all: Vec<u64> = (1..=6).collect();
        let whole = campaign_of(six_rows(), None, &all);
        let shard = |i| campaign_of(six_rows(), Some(Shard { index: i, count: 2 }), &all);
        let (one, two) = (shard(1), shard(2));
        assert_eq!(one.seeds, vec![1, 3, 5]);
        assert_eq!(two.seeds, vec![2, 4, 6]);
        // The shards' own verdicts differ from the whole's; the merge does not care.
        assert_ne!(one.derived, two.derived);
        for order in [[one.clone(), two.clone()], [two.clone(), one.clone()]] {
            let shards: Vec<(String, Campaign)> = order.into_iter().map(|c| (c.campaign_id.clone(), c)).collect();
            let merged = merge(&shards, "merged".into()).unwrap();
            assert_eq!(merged.derived.verdict, whole.derived.verdict);
            assert_eq!(merged.runs, whole.runs);
            assert_eq!(merged.derived.kinds, whole.derived.kinds);
            assert_eq!(merged.derived.gates, whole.derived.gates);
            assert_eq!(merged.derived, whole.derived);
            assert_eq!((merged.seeds.clone(), merged.all_seeds.clone()), (whole.seeds.clone(), whole.all_seeds.clone()));
            assert_eq!(merged.outcome(), whole.outcome());
            assert_eq!(merged.merged_from.len(), 2);
        }
        // A missing shard leaves its seeds "not run".
        let only = merge(&[("one".into(), one.clone())], "m".into()).unwrap();
        assert!(only.derived.no_verdict.iter().any(|r| r.contains("seeds not run: 2, 4, 6")), "{:?}", only.derived.no_verdict);
    }

    #[test]
    fn shards_of_other_scenarios_durations_or_overlapping_seeds_are_refused() {
        let all: Vec<u64> = (1..=6).collect();
        let shard = |i| campaign_of(six_rows(), Some(Shard { index: i, count: 2 }), &all);
        let named = |c: Campaign| (c.campaign_id.clone(), c);
        let mut other = shard(2);
        other.scenario = "chaos-connector".into();
        assert!(matches!(merge(&[named(shard(1)), named(other)], "m".into()), Err(MergeError::Scenario { .. })));
        let mut longer = shard(2);
        longer.duration_s = Some(120.0);
        assert!(matches!(merge(&[named(shard(1)), named(longer)], "m".into()), Err(MergeError::Duration { .. })));
        let mut targets = shard(2);
        targets.recovery_targets.default_s = 30.0;
        assert!(matches!(merge(&[named(shard(1)), named(targets)], "m".into()), Err(MergeError::Targets { .. })));
        let overlap = campaign_of(six_rows(), Some(Shard { index: 1, count: 3 }), &all);
        assert!(matches!(merge(&[named(shard(1)), (String::from("x"), overlap)], "m".into()), Err(MergeError::Overlap { seed: 1, .. })));
        assert!(matches!(merge(&[], "m".into()), Err(MergeError::Empty)));
    }

    #[test]
    fn report_paths_are_rewritten_relative_to_the_merged_folder() {
        assert_eq!(
            relative_to(Path::new("/r/shard-1/runs/seed-1/x/report.json"), Path::new("/r/merged")),
            PathBuf::from("../shard-1/runs/seed-1/x/report.json")
        );
        assert_eq!(relative_to(Path::new("/r/merged/a"), Path::new("/r/merged")), PathBuf::from("a"));
        assert_eq!(relative_to(Path::new("shards/s1/./runs/r.json"), Path::new("out")), PathBuf::from("../shards/s1/runs/r.json"));
    }
}
