//! A short chaos campaign end to end through the library: two seeds of chaos-random, each
//! on its own stack; every row's verdict is its own run report's, read back from disk, and
//! the campaign's verdict is the verdict function of its rows and gates.

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
