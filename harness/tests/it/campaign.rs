//! A short chaos campaign end to end through the library: two seeds of chaos-random, each
//! on its own stack; every row's verdict is its own run report's, read back from disk, and
//! the campaign's verdict is the verdict function of its rows and gates.

use std::path::Path;
use std::time::Duration;

use harness::campaign::model::{self, RecoveryTargets, SeedVerdict};
use harness::campaign::{self, CampaignOptions};
use harness::scenario::Scenario;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_seed_campaign_reports_every_seed_with_its_own_verdict() -> anyhow::Result<()> {
    let _turn = harness::testing::stack_turn().await;
    let out = harness::testing::run_dir("campaign");
    let started = std::time::Instant::now();
    let options = CampaignOptions {
        scenario: Scenario::load("chaos-random")?,
        all_seeds: vec![1, 2],
        shard: None,
        duration: Some(Duration::from_secs(40)),
        out: Some(out.clone()),
        recovery_targets: RecoveryTargets::default(),
        stack: harness::orchestrator::stack::StackChoice::local(),
    };
    let outcome = campaign::run(options, std::future::pending()).await?;
    eprintln!("campaign of 2 seeds took {:?}", started.elapsed());
    let c = &outcome.campaign;
    assert_eq!(c.runs.iter().map(|r| r.seed).collect::<Vec<_>>(), vec![1, 2]);
    for row in &c.runs {
        assert_ne!(row.verdict, SeedVerdict::Error, "seed {}: {:?}", row.seed, row.error);
        let path = outcome.dir.join(row.report.as_deref().expect("a report path"));
        let report: harness::report::model::Report = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        assert_eq!(report.run.seed, row.seed);
        assert_eq!(row.verdict, SeedVerdict::of(harness::report::verdict(&report)), "seed {}", row.seed);
        assert_eq!(row.faults.len(), report.faults.len());
    }
    let (verdict, reasons) = model::verdict(&c.runs, &c.derived.gates, &c.seeds, false);
    assert_eq!((c.derived.verdict, &c.derived.no_verdict), (verdict, &reasons));
    let recomputed = model::recovery_gates(&c.runs, &model::kind_aggregates(&c.runs), &c.recovery_targets);
    assert_eq!(recomputed, c.derived.gates);
    // What is on disk is what was returned, and the page names both seeds.
    let json = campaign::read(&outcome.dir.join(campaign::CAMPAIGN_JSON)).map_err(anyhow::Error::msg)?;
    assert_eq!(&json, c);
    let html = std::fs::read_to_string(outcome.dir.join(campaign::CAMPAIGN_HTML))?;
    for seed in [1, 2] {
        assert!(html.contains(&format!("id=\"seed-{seed}\"")), "seed {seed} in campaign.html");
        assert!(html.contains(&format!("id=\"matrix-seed-{seed}\"")), "seed {seed} in the matrix");
    }
    eprintln!(
        "campaign verdict {} ({:?}); gates {:?}",
        c.derived.verdict.label(),
        c.derived.no_verdict,
        c.derived.gates.iter().map(|g| (&g.kind, g.passed, g.observed_max_s)).collect::<Vec<_>>()
    );
    Ok(())
}

/// `campaign shrink` on real runs: a one-seed campaign whose schedule has a 6 s sink pause
/// (which breaks `e2e_latency_ms.max < 2500`) and a 20 ms broker latency (which does not).
/// The shrink confirms the failure, keeps the half with the pause, finds that without any
/// fault the run passes, and stops at its run cap; the reproducer it writes has the pause
/// alone, and the campaign's row links it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shrink_keeps_the_fault_that_fails_and_links_its_reproducer_from_the_campaign() -> anyhow::Result<()> {
    use harness::campaign::shrink::{self, ShrinkOptions, ShrinkStatus, TryVerdict};
    let _turn = harness::testing::stack_turn().await;
    let out = harness::testing::run_dir("shrink");
    let path = out.join("shrink-it.toml");
    std::fs::write(
        &path,
        r#"name = "shrink-it"
description = "A sink pause that breaks the latency bound, and a link latency that does not."
thresholds = ["convergence.missing == 0", "e2e_latency_ms.max < 2500"]

[load]
stages = [{ duration = "35s", rate = 50 }]

[[faults]]
at = "8s"
duration = "6s"
target = "sink"
fault = "pause"

[[faults]]
at = "20s"
duration = "3s"
target = "broker"
fault = "latency"
latency_ms = 20

[verify]
settle = "120s"
"#,
    )?;
    let campaign_dir = out.join("campaign");
    let options = CampaignOptions {
        scenario: Scenario::load(&path.display().to_string())?,
        all_seeds: vec![3],
        shard: None,
        duration: None,
        out: Some(campaign_dir.clone()),
        recovery_targets: RecoveryTargets::default(),
        stack: harness::orchestrator::stack::StackChoice::local(),
    };
    let outcome = campaign::run(options, std::future::pending()).await?;
    let row = &outcome.campaign.runs[0];
    assert_eq!(row.verdict, SeedVerdict::Fail, "the pause breaks the bound: {:?}", row.thresholds_failed);
    assert_eq!(row.thresholds_failed, vec!["e2e_latency_ms.max < 2500".to_string()]);
    let report = campaign_dir.join(row.report.as_deref().expect("a report path"));

    let repro = out.join("repro-3.toml");
    let options = ShrinkOptions {
        report,
        k: 1,
        // Confirm, keep the first half, drop the last fault: then the cap (before the
        // duration and load shortenings).
        max_runs: 3,
        recovery_targets: None,
        out_scenario: Some(repro.clone()),
        out: None,
        stack: harness::orchestrator::stack::StackChoice::local(),
    };
    let (exit, r) = shrink::run(options).await?;
    let o = &r.outcome;
    eprintln!("shrink: {:?}", o.tries.iter().map(|t| (&t.step, t.verdict, t.candidate.faults.len())).collect::<Vec<_>>());
    assert_eq!(exit, harness::exit::Outcome::Pass);
    assert_eq!((o.status, o.runs_used), (ShrinkStatus::Capped, 3));
    let steps: Vec<(TryVerdict, usize)> = o.tries.iter().map(|t| (t.verdict, t.candidate.faults.len())).collect();
    assert_eq!(steps, vec![(TryVerdict::Reproduced, 2), (TryVerdict::Reproduced, 1), (TryVerdict::Passed, 0)]);
    assert_eq!(o.best.faults.len(), 1);
    assert_eq!((o.best.faults[0].target.as_str(), o.best.faults[0].fault.name()), ("sink", "pause"));
    // Every run of a try has its own report folder.
    for t in &o.tries {
        for run in &t.runs {
            assert!(run.error.is_none(), "try {}: {:?}", t.n, run.error);
            assert!(Path::new(run.dir.as_deref().expect("a report folder")).join("report.json").is_file());
        }
    }
    // The reproducer runs as a scenario: the pause alone, the original's thresholds.
    let back = Scenario::load(&repro.display().to_string())?;
    assert_eq!(back.faults, o.best.faults);
    assert_eq!(back.thresholds, vec!["convergence.missing == 0".to_string(), "e2e_latency_ms.max < 2500".into()]);
    assert!(back.description.contains("not proven minimal"), "{}", back.description);
    // shrink.json beside the campaign, and the campaign's row links the reproducer.
    assert!(campaign_dir.join("shrink-3").join(shrink::SHRINK_JSON).is_file());
    let c = campaign::read(&campaign_dir.join(campaign::CAMPAIGN_JSON)).map_err(anyhow::Error::msg)?;
    let link = c.runs[0].repro.as_deref().expect("the row links the reproducer");
    assert_eq!(std::fs::canonicalize(campaign_dir.join(link))?, std::fs::canonicalize(&repro)?);
    assert!(std::fs::read_to_string(campaign_dir.join(campaign::CAMPAIGN_HTML))?.contains("class=\"repro\""));
    Ok(())
}
