//! `harness campaign`: many seeded runs of one chaos scenario, one after another (each on
//! a fresh stack it starts and stops), one report over all of them (`campaign.json`,
//! `campaign.html`, `summary.md`), the merge of shards run apart, and the shrink of a
//! failing seed's schedule to a small reproducer.

pub mod html;
pub mod merge;
pub mod model;
pub mod shrink;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::Utc;

use self::model::{Campaign, Derived, RecoveryTargets, SCHEMA_VERSION, SeedRun, Shard};
use crate::orchestrator::stack::StackChoice;
use crate::scenario::Scenario;

pub const CAMPAIGN_JSON: &str = "campaign.json";
pub const CAMPAIGN_HTML: &str = "campaign.html";
pub const SUMMARY_MD: &str = "summary.md";

#[derive(Debug, Clone)]
pub struct CampaignOptions {
    pub scenario: Scenario,
    /// Every seed asked for, before sharding.
    pub all_seeds: Vec<u64>,
    pub shard: Option<Shard>,
    pub duration: Option<Duration>,
    /// The campaign's folder; None: `reports/campaign-<id>`.
    pub out: Option<PathBuf>,
    pub recovery_targets: RecoveryTargets,
    pub stack: StackChoice,
}

pub struct CampaignOutcome {
    pub campaign: Campaign,
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
}

impl CampaignOptions {
    /// The seeds this campaign runs: its shard's.
    pub fn seeds(&self) -> Vec<u64> {
        self.shard.map_or_else(|| self.all_seeds.clone(), |s| s.select(&self.all_seeds))
    }
}

/// Runs one seeded run per seed of the shard, one after another, each with its own stack
/// (`reuse: None, keep: false`), its report under `<dir>/runs/seed-<N>/`. A run that
/// errors is a row with verdict `error` and the campaign goes on. When `interrupt`
/// completes, the run under way is dropped (its stack stops) and the campaign report of
/// the seeds that finished is written, marked interrupted. campaign.json is rewritten
/// after every seed.
pub async fn run(options: CampaignOptions, interrupt: impl Future<Output = ()>) -> std::io::Result<CampaignOutcome> {
    let started = Utc::now();
    let seeds = options.seeds();
    let id = match options.shard {
        Some(s) => format!("{}-{}-shard{}of{}", options.scenario.name, started.format("%Y%m%d-%H%M%S"), s.index, s.count),
        None => format!("{}-{}", options.scenario.name, started.format("%Y%m%d-%H%M%S")),
    };
    let dir = options.out.clone().unwrap_or_else(|| PathBuf::from("reports").join(format!("campaign-{id}")));
    std::fs::create_dir_all(dir.join("runs"))?;
    let mut campaign = Campaign {
        schema_version: SCHEMA_VERSION,
        campaign_id: id.clone(),
        scenario: options.scenario.name.clone(),
        duration_s: options.duration.map(|d| d.as_secs_f64()),
        all_seeds: options.all_seeds.clone(),
        shard: options.shard,
        seeds: seeds.clone(),
        merged_from: Vec::new(),
        interrupted: false,
        recovery_targets: options.recovery_targets.clone(),
        started_at: started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ended_at: started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        runs: Vec::new(),
        derived: Derived::of(&[], &seeds, &options.recovery_targets, false),
    };
    let shard = options.shard.map_or_else(String::new, |s| format!(", shard {s}"));
    eprintln!("campaign {id}: scenario {}, {} seeds{shard}: {}; reports in {}", campaign.scenario, seeds.len(), join(&seeds), dir.display());
    let mut interrupt = std::pin::pin!(interrupt);
    write(&campaign, &dir)?;
    for (i, seed) in seeds.iter().copied().enumerate() {
        eprintln!("campaign {id}: seed {seed} ({} of {}), ETA {}", i + 1, seeds.len(), eta(&campaign.runs, seeds.len() - i));
        let reports_dir = dir.join("runs").join(format!("seed-{seed}"));
        let run_options = crate::run::RunOptions {
            scenario: options.scenario.clone(),
            driver: None,
            duration: options.duration,
            rate: None,
            seed,
            reuse: None,
            keep: false,
            reports_dir,
            stack: options.stack.clone(),
        };
        let begun = Instant::now();
        let result = tokio::select! {
            result = crate::run::run(run_options) => result,
            _ = &mut interrupt => {
                // Dropping the run's future drops its stack, which stops every service.
                eprintln!("campaign {id}: interrupted during seed {seed}; its stack is stopped, the seeds that finished are reported");
                campaign.interrupted = true;
                break;
            }
        };
        let wall_s = begun.elapsed().as_secs_f64();
        let row = match result {
            Ok(outcome) => {
                let path = outcome.dir.join("report.json");
                let relative = path.strip_prefix(&dir).unwrap_or(&path).display().to_string();
                SeedRun::of_report(seed, &outcome.report, relative, wall_s)
            }
            Err(error) => {
                let message = crate::exit::describe(&anyhow::Error::new(error));
                eprintln!("campaign {id}: seed {seed}: the run failed: {message}");
                SeedRun::of_error(seed, message, wall_s)
            }
        };
        eprintln!("campaign {id}: seed {seed}: {} in {}", row.verdict.label(), format_eta(wall_s));
        campaign.runs.push(row);
        campaign.ended_at = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        campaign.recompute();
        write(&campaign, &dir)?;
    }
    campaign.ended_at = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    campaign.recompute();
    let files = write(&campaign, &dir)?;
    Ok(CampaignOutcome { campaign, dir, files })
}

/// Writes campaign.json, campaign.html and summary.md into `dir`.
pub fn write(campaign: &Campaign, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_string_pretty(campaign).map_err(std::io::Error::other)? + "\n";
    [(CAMPAIGN_JSON, json), (CAMPAIGN_HTML, html::render(campaign)), (SUMMARY_MD, html::markdown(campaign))]
        .into_iter()
        .map(|(name, text)| {
            let path = dir.join(name);
            std::fs::write(&path, text)?;
            Ok(path)
        })
        .collect()
}

/// Reads a campaign.json.
pub fn read(path: &Path) -> Result<Campaign, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Time left: the mean wall time of the finished runs times the runs left; unknown before
/// the first finished.
fn eta(finished: &[SeedRun], left: usize) -> String {
    if finished.is_empty() {
        return "unknown".into();
    }
    let mean = finished.iter().map(|r| r.wall_s).sum::<f64>() / finished.len() as f64;
    format_eta(mean * left as f64)
}

fn format_eta(secs: f64) -> String {
    let secs = secs.max(0.0).round() as u64;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs.div_ceil(60)),
        _ => format!("{}h{:02}m", secs / 3600, (secs % 3600).div_ceil(60).min(59)),
    }
}

fn join(seeds: &[u64]) -> String {
    seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::campaign::model::SeedVerdict;
    use crate::campaign::model::tests::row;

    #[test]
    fn eta_is_the_mean_of_finished_runs_times_the_runs_left() {
        assert_eq!(eta(&[], 5), "unknown");
        let runs = vec![row(1, SeedVerdict::Pass, vec![]), row(2, SeedVerdict::Pass, vec![])];
        // 60 s each (the test rows' wall time), 14 left.
        assert_eq!(eta(&runs, 14), "14m");
        assert_eq!(format_eta(45.0), "45s");
        assert_eq!(format_eta(3600.0 + 120.0), "1h02m");
    }

    #[test]
    fn a_campaign_written_reads_back_equal() {
        let c = crate::campaign::merge::tests::campaign_of(crate::campaign::merge::tests::six_rows(), None, &[1, 2, 3, 4, 5, 6]);
        let dir = std::env::temp_dir().join(format!("campaign-write-{}", std::process::id()));
        let files = write(&c, &dir).unwrap();
        assert_eq!(files.len(), 3);
        assert_eq!(read(&dir.join(CAMPAIGN_JSON)).unwrap(), c);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
