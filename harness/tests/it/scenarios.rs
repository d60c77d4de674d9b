//! Every shipped scenario parses and validates; bad files fail with the line and key.

use std::path::Path;

use harness::scenario::{Scenario, ScenarioError, builtin_names};

#[test]
fn every_shipped_scenario_is_valid() {
    let names = builtin_names();
    for expected in ["baseline", "stress", "spike", "soak", "breakpoint", "schema-change", "chaos-random", "chaos-snapshot-kill"] {
        assert!(names.iter().any(|n| n == expected), "scenarios/{expected}.toml is missing ({names:?})");
    }
    for name in &names {
        let scenario = Scenario::load(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(&scenario.name, name, "the file name and `name` agree");
        assert!(!scenario.thresholds.is_empty(), "{name} has thresholds");
    }
}

#[test]
fn an_unknown_key_is_named_with_its_line() {
    let text = "name = \"x\"\ndescription = \"d\"\n[load]\nstages = [{ duration = \"10s\", rate = 5 }]\nrmup = \"5s\"\n";
    let err = Scenario::parse(text, Path::new("bad.toml")).unwrap_err().to_string();
    assert!(err.contains("bad.toml"), "{err}");
    assert!(err.contains("line 5"), "{err}");
    assert!(err.contains("rmup"), "{err}");
}

#[test]
fn semantic_errors_say_what_to_fix() {
    let bad_mix = "name = \"x\"\ndescription = \"d\"\n[load]\nmix = { insert = 50, update = 20, delete = 10 }\nstages = [{ duration = \"10s\", rate = 5 }]\n";
    let err = Scenario::parse(bad_mix, Path::new("mix.toml")).unwrap_err().to_string();
    assert!(err.contains("add up to 100"), "{err}");

    let bad_threshold = "name = \"x\"\ndescription = \"d\"\nthresholds = [\"e2e_latency_ms.p95 <\"]\n[load]\nstages = [{ duration = \"10s\", rate = 5 }]\n";
    let err = Scenario::parse(bad_threshold, Path::new("t.toml")).unwrap_err().to_string();
    assert!(err.contains("thresholds"), "{err}");

    let bad_stage = "name = \"x\"\ndescription = \"d\"\n[load]\nstages = [{ duration = \"10s\", rate = 5, from = 1 }]\n";
    let err = Scenario::parse(bad_stage, Path::new("s.toml")).unwrap_err().to_string();
    assert!(err.contains("stages[0]"), "{err}");

    let bad_fault = "name = \"x\"\ndescription = \"d\"\n[load]\nstages = [{ duration = \"10s\", rate = 5 }]\n[[faults]]\nat = \"1s\"\ntarget = \"sink\"\nfault = \"latency\"\nlatency_ms = 5\n";
    let err = Scenario::parse(bad_fault, Path::new("f.toml")).unwrap_err().to_string();
    assert!(err.contains("not a link"), "{err}");
}

#[test]
fn unknown_scenarios_list_the_known_ones() {
    match Scenario::load("no-such-scenario") {
        Err(ScenarioError::NotFound(_, _, known)) => assert!(known.contains("baseline")),
        other => panic!("expected NotFound, got {other:?}"),
    }
}

#[test]
fn overrides_rescale_the_plan() {
    let spike = Scenario::load("spike").unwrap();
    let plan = spike.plan(Some(std::time::Duration::from_secs(40)), Some(20.0));
    assert_eq!(plan.duration().as_secs(), 40);
    assert_eq!(plan.segments[0].from, 20.0);
    assert_eq!(plan.segments[1].from, 100.0, "the burst keeps its 5x ratio");
}
