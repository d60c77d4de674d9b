//! `junit.xml`: one test case per threshold plus one for convergence, so CI systems that
//! read JUnit show which gate failed.

use std::fmt::Write as _;

use super::model::Report;
use super::{fmt_num, markdown::kind_name};

pub fn render(report: &Report) -> String {
    let c = &report.convergence;
    let mut cases = Vec::with_capacity(report.thresholds.len() + 1);
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

    let failures = cases.iter().filter(|(_, _, f)| f.is_some()).count();
    let suite = format!("harness.{}", report.run.scenario);
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    // `write!` into a String cannot fail; the results are discarded on purpose.
    let _ = writeln!(out, "<testsuites name=\"harness\" tests=\"{}\" failures=\"{failures}\" time=\"{}\">", cases.len(), report.run.duration_s);
    let _ = writeln!(
        out,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" timestamp=\"{}\" time=\"{}\">",
        xml(&suite),
        cases.len(),
        xml(&report.run.started_at),
        report.run.duration_s
    );
    let _ = writeln!(
        out,
        "    <properties>\n      <property name=\"run_id\" value=\"{}\"/>\n      <property name=\"seed\" value=\"{}\"/>\n    </properties>",
        xml(&report.run.run_id),
        report.run.seed
    );
    for (class, name, failure) in &cases {
        let head = format!("    <testcase classname=\"{}.{class}\" name=\"{}\"", xml(&suite), xml(name));
        match failure {
            None => {
                let _ = writeln!(out, "{head}/>");
            }
            Some(message) => {
                let _ = writeln!(out, "{head}>\n      <failure message=\"{0}\" type=\"{class}\">{0}</failure>\n    </testcase>", xml(message));
            }
        }
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

/// Escapes text for XML attributes and content; drops control characters XML 1.0 forbids.
fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\t' | '\r' => out.push(' '),
            c if (c as u32) < 0x20 => {}
            c => out.push(c),
        }
    }
    out
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
        let xml = render(&report);
        assert_eq!(xml.matches("<testcase ").count(), 4);
        assert!(xml.contains("tests=\"4\" failures=\"1\""), "{xml}");
        assert!(xml.contains("name=\"max_lag &lt; 5\"/>"), "{xml}");
        assert!(xml.contains("observed 12.5 does not satisfy events_per_sec &gt; 500"), "{xml}");
        assert!(xml.contains("name=\"postgres converges to the source\"/>"), "{xml}");
    }

    #[test]
    fn escapes_markup_and_control_characters() {
        assert_eq!(xml("a<b>&\"'\u{1}\n"), "a&lt;b&gt;&amp;&quot;&apos;&#10;");
    }
}
