//! `junit.xml`: one test case per threshold plus one for convergence, so CI systems that
//! read JUnit show which gate failed. Written with `quick-junit` (nextest's JUnit writer),
//! which escapes the text.

use std::time::Duration;

use quick_junit::{NonSuccessKind, Property, TestCase, TestCaseStatus, TestSuite};

use super::model::Report;
use super::{fmt_num, markdown::kind_name};

pub fn render(report: &Report) -> std::io::Result<String> {
    let c = &report.convergence;
    let mut cases = Vec::with_capacity(report.thresholds.len() + 2);
    for t in &report.thresholds {
        let failure = (!t.passed).then(|| match t.observed {
            Some(v) => format!("observed {} does not satisfy {}", fmt_num(v), t.expression),
            None => format!("metric {} is absent from the report", t.metric),
        });
        cases.push(("thresholds", t.expression.clone(), failure));
    }
    let convergence_failure = (!c.converged).then(|| {
        let mut parts = vec![
            format!("missing {}", c.total(|e| e.missing_in_target)),
            format!("extra {}", c.total(|e| e.extra_in_target)),
            format!("mismatched {}", c.total(|e| e.mismatched)),
            format!("duplicates {}", c.total(|e| e.duplicates)),
        ];
        parts.extend(c.anomaly_counts.iter().filter(|(_, n)| **n > 0).map(|(k, n)| format!("{} {n}", kind_name(*k))));
        format!("target {} diverged from the source: {}", c.target, parts.join(", "))
    });
    cases.push(("convergence", format!("{} converges to the source", c.target), convergence_failure));
    // A run without a verdict must not read as green in a CI system.
    let no_verdict = (!report.summary.no_verdict.is_empty()).then(|| format!("NO VERDICT: {}", report.summary.no_verdict.join("; ")));
    cases.push(("verdict", "the run delivered what it was asked to (load, faults, evidence)".to_string(), no_verdict));

    let suite_name = format!("harness.{}", report.run.scenario);
    let duration = Duration::try_from_secs_f64(report.run.duration_s).unwrap_or_default();
    let mut suite = TestSuite::new(suite_name.as_str());
    suite.set_time(duration);
    if let Ok(started) = chrono::DateTime::parse_from_rfc3339(&report.run.started_at) {
        suite.set_timestamp(started);
    }
    suite.add_property(Property::new("run_id", report.run.run_id.as_str()));
    suite.add_property(Property::new("seed", report.run.seed.to_string()));
    for (class, name, failure) in cases {
        let status = match failure {
            None => TestCaseStatus::success(),
            Some(message) => {
                let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
                status.set_message(message.as_str()).set_type(class).set_description(message);
                status
            }
        };
        let mut case = TestCase::new(name, status);
        case.set_classname(format!("{suite_name}.{class}"));
        suite.add_test_case(case);
    }
    let mut junit = quick_junit::Report::new("harness");
    junit.set_time(duration);
    junit.add_test_suite(suite);
    junit.to_string().map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::model::ThresholdResult;
    use crate::report::thresholds::representative_report;

    #[test]
    fn one_case_per_threshold_plus_convergence_and_verdict() {
        let mut report = representative_report();
        report.run.scenario = "chaos".into();
        report.convergence.target = "postgres".into();
        report.convergence.converged = true;
        report.thresholds = vec![
            ThresholdResult { expression: "max_lag < 5".into(), metric: "max_lag".into(), observed: Some(1.0), passed: true, reason: None },
            ThresholdResult { expression: "events_per_sec > 500".into(), metric: "events_per_sec".into(), observed: Some(12.5), passed: false, reason: None },
        ];
        let xml = render(&report).unwrap();
        assert_eq!(xml.matches("<testcase ").count(), 4, "{xml}");
        assert!(xml.contains("tests=\"4\""), "{xml}");
        assert!(xml.contains("failures=\"1\""), "{xml}");
        assert!(xml.contains("name=\"max_lag &lt; 5\""), "{xml}");
        assert!(xml.contains("observed 12.5 does not satisfy events_per_sec &gt; 500"), "{xml}");
        assert!(xml.contains("name=\"postgres converges to the source\""), "{xml}");
        assert!(xml.contains("<property name=\"seed\""), "{xml}");
    }

    #[test]
    fn markup_in_a_failure_is_escaped() {
        let mut report = representative_report();
        report.summary.no_verdict = vec!["a <b> & \"c\"".into()];
        let xml = render(&report).unwrap();
        assert!(xml.contains("NO VERDICT: a &lt;b&gt; &amp; &quot;c&quot;"), "{xml}");
        assert!(!xml.contains("<b>"), "{xml}");
    }
}
