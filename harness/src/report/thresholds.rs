//! k6-like threshold expressions (`e2e_latency_ms.p95 < 2000`) as written in scenario
//! files: parsing with errors that say which part is wrong, validation against the metric
//! names `Report::metrics()` declares, and evaluation against a finished report.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::model::{LoadStats, PipelineStats, Report, ThresholdResult};
use crate::verify::{Percentiles, VerifyReport};

/// Stands for any entity name in per-entity metric names (`e2e_latency_ms.<entity>.p95`).
pub const ENTITY_PLACEHOLDER: &str = "<entity>";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "==")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
}

impl Op {
    /// Two-character operators first, so `<=` is not read as `<` followed by `=2000`.
    const BY_LENGTH: [(&'static str, Op); 6] = [("<=", Op::Le), (">=", Op::Ge), ("==", Op::Eq), ("!=", Op::Ne), ("<", Op::Lt), (">", Op::Gt)];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Eq => "==",
            Op::Ne => "!=",
        }
    }

    pub fn holds(self, observed: f64, bound: f64) -> bool {
        match self {
            Op::Lt => observed < bound,
            Op::Le => observed <= bound,
            Op::Gt => observed > bound,
            Op::Ge => observed >= bound,
            Op::Eq => observed == bound,
            Op::Ne => observed != bound,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Error)]
pub enum ThresholdError {
    #[error("empty threshold expression: expected `<metric> <op> <number>`, e.g. `e2e_latency_ms.p95 < 2000`")]
    Empty,
    #[error("threshold `{expression}` has no comparison operator: expected one of <, <=, >, >=, ==, !=")]
    MissingOperator { expression: String },
    #[error("threshold `{expression}`: `{found}` is not an operator (use {suggestion})")]
    InvalidOperator { expression: String, found: String, suggestion: &'static str },
    #[error("threshold `{expression}` has no metric name before `{op}`")]
    MissingMetric { expression: String, op: Op },
    #[error("threshold `{expression}`: `{name}` is not a metric name (letters, digits, `_`, `-` and `.` only)")]
    InvalidMetricName { expression: String, name: String },
    #[error("threshold `{expression}` has no number after `{op}`")]
    MissingValue { expression: String, op: Op },
    #[error("threshold `{expression}`: `{value}` is not a finite number")]
    InvalidValue { expression: String, value: String },
    #[error("threshold `{expression}`: unknown metric `{name}`; known metrics: {}", .known.join(", "))]
    UnknownMetric { expression: String, name: String, known: Vec<String> },
}

/// One parsed threshold. In scenario files it is the string itself (serde goes through
/// `parse`, so a typo fails when the scenario loads, not at the end of a run).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Threshold {
    /// As written (trimmed): reports show it verbatim.
    pub expression: String,
    pub metric: String,
    pub op: Op,
    pub bound: f64,
}

impl Threshold {
    pub fn parse(expression: &str) -> Result<Threshold, ThresholdError> {
        let expression = expression.trim();
        if expression.is_empty() {
            return Err(ThresholdError::Empty);
        }
        let owned = || expression.to_string();
        let Some((at, op_str, op)) = find_operator(expression) else {
            // Common slips from other languages get a pointed hint instead of "no operator".
            for (found, suggestion) in [("=<", "`<=`"), ("=>", "`>=`"), ("<>", "`!=`"), ("=", "`==`")] {
                if expression.contains(found) {
                    return Err(ThresholdError::InvalidOperator { expression: owned(), found: found.into(), suggestion });
                }
            }
            return Err(ThresholdError::MissingOperator { expression: owned() });
        };
        let name = expression[..at].trim();
        let value = expression[at + op_str.len()..].trim();
        // The operator with its neighbours, to catch `=>`, `=<` and `<>` (char-wise: the
        // input may hold multi-byte characters).
        let around: String =
            expression[..at].chars().next_back().into_iter().chain(op_str.chars()).chain(expression[at + op_str.len()..].chars().next()).collect();
        for (found, suggestion) in [("=<", "`<=`"), ("=>", "`>=`"), ("<>", "`!=`")] {
            if around.contains(found) {
                return Err(ThresholdError::InvalidOperator { expression: owned(), found: found.into(), suggestion });
            }
        }
        if name.is_empty() {
            return Err(ThresholdError::MissingMetric { expression: owned(), op });
        }
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) {
            return Err(ThresholdError::InvalidMetricName { expression: owned(), name: name.into() });
        }
        if value.is_empty() {
            return Err(ThresholdError::MissingValue { expression: owned(), op });
        }
        let bound =
            value.parse::<f64>().ok().filter(|v| v.is_finite()).ok_or_else(|| ThresholdError::InvalidValue { expression: owned(), value: value.into() })?;
        if !is_known_metric(name) {
            return Err(ThresholdError::UnknownMetric { expression: owned(), name: name.into(), known: known_metric_names() });
        }
        Ok(Threshold { expression: owned(), metric: name.into(), op, bound })
    }
}

/// The leftmost operator, preferring the two-character form at the same position.
fn find_operator(expression: &str) -> Option<(usize, &'static str, Op)> {
    Op::BY_LENGTH.iter().filter_map(|&(s, op)| expression.find(s).map(|at| (at, s, op))).min_by_key(|&(at, s, _)| (at, std::cmp::Reverse(s.len())))
}

impl FromStr for Threshold {
    type Err = ThresholdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Threshold::parse(s)
    }
}

impl TryFrom<String> for Threshold {
    type Error = ThresholdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Threshold::parse(&s)
    }
}

impl From<Threshold> for String {
    fn from(t: Threshold) -> String {
        t.expression
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.expression)
    }
}

/// Evaluates every threshold against the report's metrics. A metric the report does not
/// carry (an optional one such as `lag_recovery_s`, or an entity that did not run) fails
/// with `observed: None`: a gate that cannot be checked must not pass silently.
pub fn evaluate(report: &Report, thresholds: &[Threshold]) -> Vec<ThresholdResult> {
    let metrics: BTreeMap<String, f64> = report.metrics().into_iter().map(|m| (m.name, m.value)).collect();
    thresholds
        .iter()
        .map(|t| {
            let observed = metrics.get(&t.metric).copied();
            let reason = match observed {
                None => Some(format!("{} was not measured in this run", t.metric)),
                Some(v) if v.is_nan() => Some(format!("{} is not a number", t.metric)),
                Some(_) => None,
            };
            ThresholdResult {
                expression: t.expression.clone(),
                metric: t.metric.clone(),
                observed,
                passed: observed.is_some_and(|v| !v.is_nan() && t.op.holds(v, t.bound)),
                reason,
            }
        })
        .collect()
}

/// Every metric name a threshold may use, derived from `Report::metrics()` of a report in
/// which every optional metric is present; per-entity names carry `<entity>`.
pub fn known_metric_names() -> Vec<String> {
    representative_report().metrics().into_iter().map(|m| m.name).collect()
}

fn is_known_metric(name: &str) -> bool {
    known_metric_names().iter().any(|known| match known.split_once(ENTITY_PLACEHOLDER) {
        None => known == name,
        Some((prefix, suffix)) => {
            name.strip_prefix(prefix).and_then(|rest| rest.strip_suffix(suffix)).is_some_and(|entity| !entity.is_empty() && !entity.contains('.'))
        }
    })
}

/// A distribution with one sample: present (a default one is "not measured").
fn one() -> Percentiles {
    Percentiles { count: 1, ..Percentiles::default() }
}

/// A report in which every optional metric is present and one entity stands for all, so
/// that `metrics()` names everything a threshold can refer to. Tests build on it too.
pub(crate) fn representative_report() -> Report {
    let convergence = VerifyReport {
        time_to_converge_ms: Some(0),
        dlq_rejected: BTreeMap::from([(ENTITY_PLACEHOLDER.to_string(), 0)]),
        watermark: Some(crate::run::fence::Watermark { quiet: true, last_lag: Some(0), ..Default::default() }),
        dlq: Some(crate::verify::dlq::DlqReport { by_class: BTreeMap::from([(format!("rule:{ENTITY_PLACEHOLDER}"), 0)]), ..Default::default() }),
        latency: crate::verify::LatencySummary { overall: one(), per_entity: BTreeMap::new() },
        live_checks: vec![crate::verify::live::LiveCheck::default()],
        ..VerifyReport::default()
    };
    Report {
        load: LoadStats {
            write_latency_ms: one(),
            write_latency_outside_faults_ms: Some(one()),
            dropped_iterations: Some(0),
            stages: vec![crate::report::model::StageDelivery::default()],
            ..LoadStats::default()
        },
        pipeline: PipelineStats {
            events_per_sec: Some(0.0),
            e2e_latency_ms: one(),
            capture_latency_ms: one(),
            apply_latency_ms: one(),
            probe_latency_ms: one(),
            e2e_latency_ms_per_entity: BTreeMap::from([(ENTITY_PLACEHOLDER.to_string(), one())]),
            max_lag: Some(0),
            slot_lag_bytes_max: Some(0),
            slot_lag_bytes_max_during_load: Some(0),
            slot_lag_bytes_max_after_load: Some(0),
            idle_wal_bytes: Some(0),
            clock_skew_ms: Some(0.0),
            lag_recovery_s: Some(0.0),
            max_sustainable_rate: Some(0.0),
            new_column_rows: Some(0),
            new_columns: vec![crate::report::model::NewColumnCheck::default()],
            ..PipelineStats::default()
        },
        faults: vec![crate::report::model::FaultRecord {
            kind: "poison".into(),
            target: String::new(),
            parameters: BTreeMap::from([(crate::faults::POISON_UNRECONCILED.to_string(), "0".to_string())]),
            start_s: 0.0,
            end_s: None,
            service_recovery_s: None,
            pipeline_recovery_s: None,
        }],
        ..Report::of_verification(convergence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Threshold {
        match Threshold::parse(s) {
            Ok(t) => t,
            Err(e) => panic!("`{s}` should parse: {e}"),
        }
    }

    #[test]
    fn parses_every_operator() {
        for (text, op) in [("<", Op::Lt), ("<=", Op::Le), (">", Op::Gt), (">=", Op::Ge), ("==", Op::Eq), ("!=", Op::Ne)] {
            let t = parse(&format!("e2e_latency_ms.p95 {text} 2000"));
            assert_eq!((t.metric.as_str(), t.op, t.bound), ("e2e_latency_ms.p95", op, 2000.0));
        }
    }

    #[test]
    fn spacing_decimals_and_signs() {
        let t = parse("  events_per_sec>=500.5 ");
        assert_eq!((t.expression.as_str(), t.op, t.bound), ("events_per_sec>=500.5", Op::Ge, 500.5));
        assert_eq!(parse("convergence.missing == 0").bound, 0.0);
        assert_eq!(parse("load.errors < 1e3").bound, 1000.0);
        assert_eq!(parse("max_lag > -1").bound, -1.0);
    }

    #[test]
    fn per_entity_metrics_accept_any_entity_name() {
        assert_eq!(parse("e2e_latency_ms.order_item.p99 < 5000").metric, "e2e_latency_ms.order_item.p99");
        assert!(matches!(Threshold::parse("e2e_latency_ms.a.b.p99 < 5"), Err(ThresholdError::UnknownMetric { .. })));
        assert!(matches!(Threshold::parse("e2e_latency_ms..p99 < 5"), Err(ThresholdError::UnknownMetric { .. })));
    }

    #[test]
    fn each_error_kind() {
        let err = |s: &str| Threshold::parse(s).expect_err(s);
        assert_eq!(err("   "), ThresholdError::Empty);
        assert!(matches!(err("events_per_sec 500"), ThresholdError::MissingOperator { .. }));
        assert!(matches!(err("events_per_sec = 500"), ThresholdError::InvalidOperator { found, .. } if found == "="));
        assert!(matches!(err("events_per_sec => 500"), ThresholdError::InvalidOperator { found, .. } if found == "=>"));
        assert!(matches!(err("max_lag =< 5"), ThresholdError::InvalidOperator { found, .. } if found == "=<"));
        assert!(matches!(err("max_lag <> 5"), ThresholdError::InvalidOperator { found, .. } if found == "<>"));
        assert!(matches!(err(" < 5"), ThresholdError::MissingMetric { op: Op::Lt, .. }));
        assert!(matches!(err("e2e latency < 5"), ThresholdError::InvalidMetricName { name, .. } if name == "e2e latency"));
        assert!(matches!(err("延迟 <= 5"), ThresholdError::InvalidMetricName { .. }));
        assert!(matches!(err("max_lag <"), ThresholdError::MissingValue { .. }));
        assert!(matches!(err("max_lag < 2s"), ThresholdError::InvalidValue { value, .. } if value == "2s"));
        assert!(matches!(err("max_lag < 1 < 2"), ThresholdError::InvalidValue { .. }));
        assert!(matches!(err("max_lag < NaN"), ThresholdError::InvalidValue { .. }));
        match err("e2e_latency_ms.p955 < 5") {
            ThresholdError::UnknownMetric { name, known, .. } => {
                assert_eq!(name, "e2e_latency_ms.p955");
                assert!(known.contains(&"e2e_latency_ms.p95".to_string()));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn unknown_metric_message_lists_known_names() {
        let message = Threshold::parse("latency < 5").expect_err("unknown").to_string();
        assert!(message.contains("unknown metric `latency`"), "{message}");
        for name in ["events_per_sec", "convergence.missing", "e2e_latency_ms.<entity>.p95", "lag_recovery_s"] {
            assert!(message.contains(name), "{name} missing from: {message}");
        }
    }

    #[test]
    fn known_names_cover_every_optional_metric() {
        let names = known_metric_names();
        for name in ["max_sustainable_rate", "lag_recovery_s", "convergence.time_to_converge_s", "errors"] {
            assert!(names.iter().any(|n| n == name), "{name}");
        }
        // An optional field left `None` here would hide its metric from threshold
        // validation: every `null` in the sections `metrics()` reads is a field to set.
        fn nulls(path: &str, v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Null => out.push(path.to_string()),
                serde_json::Value::Object(map) => map.iter().for_each(|(k, v)| nulls(&format!("{path}.{k}"), v, out)),
                _ => {}
            }
        }
        let json = serde_json::to_value(representative_report()).expect("serializes");
        let mut found = Vec::new();
        for section in ["load", "pipeline", "convergence", "validation"] {
            nulls(section, &json[section], &mut found);
        }
        assert!(found.is_empty(), "set these in representative_report(): {found:?}");
    }

    #[test]
    fn evaluate_compares_and_fails_absent_metrics() {
        let mut report = representative_report();
        report.pipeline.e2e_latency_ms.p95 = 1500.0;
        report.pipeline.events_per_sec = Some(400.0);
        report.pipeline.lag_recovery_s = None;
        let thresholds: Vec<Threshold> =
            ["e2e_latency_ms.p95 < 2000", "events_per_sec > 500", "lag_recovery_s < 30", "e2e_latency_ms.customer.p95 < 1"].iter().map(|s| parse(s)).collect();
        let results = evaluate(&report, &thresholds);
        let got: Vec<(Option<f64>, bool)> = results.iter().map(|r| (r.observed, r.passed)).collect();
        assert_eq!(got, vec![(Some(1500.0), true), (Some(400.0), false), (None, false), (None, false)]);
        assert_eq!(results[0].expression, "e2e_latency_ms.p95 < 2000");
        assert_eq!(results[2].reason.as_deref(), Some("lag_recovery_s was not measured in this run"));
    }

    /// No latency samples at all: the latency gates fail (absent, never 0 ms).
    #[test]
    fn no_latency_samples_fail_the_latency_gates() {
        let mut report = representative_report();
        report.pipeline.e2e_latency_ms = Percentiles::default();
        report.pipeline.events_per_sec = None;
        report.pipeline.max_lag = None;
        let thresholds: Vec<Threshold> = ["e2e_latency_ms.p95 < 2000", "events_per_sec > 0", "max_lag < 1000"].iter().map(|s| parse(s)).collect();
        let results = evaluate(&report, &thresholds);
        assert!(results.iter().all(|r| !r.passed && r.observed.is_none() && r.reason.is_some()), "{results:?}");
        let json = serde_json::to_value(&report).expect("serializes");
        assert!(json["pipeline"]["e2e_latency_ms"].is_null() && json["pipeline"]["events_per_sec"].is_null(), "absent is null in JSON");
    }

    #[test]
    fn serde_goes_through_the_parser() {
        let t: Threshold = serde_json::from_str("\"events_per_sec > 500\"").expect("valid");
        assert_eq!(t.op, Op::Gt);
        assert_eq!(serde_json::to_string(&t).expect("serializes"), "\"events_per_sec > 500\"");
        let err = serde_json::from_str::<Threshold>("\"events_per_sec >> 500\"").expect_err("invalid");
        assert!(err.to_string().contains("not a finite number"), "{err}");
    }
}
