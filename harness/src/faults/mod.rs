//! Fault injection: actions on services (kill, stop, pause, restart), on links (latency,
//! bandwidth, reset, blackhole, down) and on the data (poison messages), scheduled in a
//! scenario or drawn from a seed (same seed, same schedule), each recorded in the run's
//! timeline with its recovery times.

pub mod inject;
pub(crate) mod poison;

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// What a fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr, strum::EnumIter)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum FaultKind {
    /// SIGKILL, started again after `duration`.
    Kill,
    /// Graceful stop, started again after `duration`.
    Stop,
    /// SIGSTOP, SIGCONT after `duration`.
    Pause,
    /// Graceful stop and immediate start.
    Restart,
    /// Link: added delay ± jitter for `duration`.
    Latency,
    /// Link: throughput cap for `duration`.
    Bandwidth,
    /// Link: every open connection cut once.
    Reset,
    /// Link: connections stall for `duration`.
    Blackhole,
    /// Link: connections refused for `duration`.
    Down,
    /// A malformed or rule-breaking event produced to a CDC topic; must end in the DLQ.
    Poison,
}

impl FaultKind {
    pub fn name(self) -> &'static str {
        self.into()
    }

    pub fn on_link(self) -> bool {
        matches!(self, Self::Latency | Self::Bandwidth | Self::Reset | Self::Blackhole | Self::Down)
    }
}

/// The links the local backend can break. Kafka clients learn the broker's address from
/// the broker itself, so locally every client reaches it through one proxy: `broker`
/// breaks the broker link of Debezium, the sink and the harness at once. The Docker
/// backend breaks links one by one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord, strum::IntoStaticStr, strum::EnumIter, strum::EnumString)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum Link {
    Broker,
    DebeziumPostgres,
    SinkTarget,
}

impl Link {
    pub const ALL: [Link; 3] = [Self::Broker, Self::DebeziumPostgres, Self::SinkTarget];

    pub fn name(self) -> &'static str {
        self.into()
    }

    pub fn parse(s: &str) -> Option<Self> {
        s.parse().ok()
    }
}

/// Fault target: the CDC connector, paused/resumed or restarted over Kafka Connect's REST API.
pub const CONNECTOR: &str = "connector";
/// Fault target: the connector's task 0, restarted over Kafka Connect's REST API.
pub const CONNECTOR_TASK: &str = "connector-task";

/// One scheduled fault, as written in a scenario's `[[faults]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// Since the load started.
    #[serde(with = "humantime_serde")]
    pub at: Duration,
    /// How long the fault lasts (downtime for kill/stop, pause length, link fault length).
    #[serde(default = "default_duration", with = "humantime_serde")]
    pub duration: Duration,
    /// A service (`postgres`, `broker`, `debezium`, `sink`), the connector (`connector`,
    /// `connector-task`: through Kafka Connect's REST API), a link (`broker`,
    /// `debezium-postgres`, `sink-target`) for link faults, or a table for poison.
    pub target: String,
    pub fault: FaultKind,
    #[serde(default)]
    pub latency_ms: Option<u64>,
    #[serde(default)]
    pub jitter_ms: Option<u64>,
    #[serde(default)]
    pub bandwidth_kbps: Option<u64>,
    /// Poison: how many bad events.
    #[serde(default)]
    pub count: Option<u32>,
}

const fn default_duration() -> Duration {
    Duration::from_secs(10)
}

impl FaultSpec {
    pub fn validate(&self) -> Result<(), String> {
        let services = ["postgres", "broker", "debezium", "sink"];
        if self.target == CONNECTOR || self.target == CONNECTOR_TASK {
            let allowed = if self.target == CONNECTOR { &[FaultKind::Pause, FaultKind::Restart][..] } else { &[FaultKind::Restart][..] };
            if !allowed.contains(&self.fault) {
                let names: Vec<&str> = allowed.iter().map(|k| k.name()).collect();
                return Err(format!("`{}` takes {} (through Kafka Connect's REST API), not {}", self.target, names.join(" or "), self.fault.name()));
            }
        } else if self.fault.on_link() {
            if Link::parse(&self.target).is_none() {
                return Err(format!(
                    "`{}` is not a link; links: broker, debezium-postgres, sink-target (locally the broker link is shared by every Kafka client)",
                    self.target
                ));
            }
        } else if self.fault == FaultKind::Poison {
            if !crate::config::TABLES.contains(&self.target.as_str()) {
                return Err(format!("poison target `{}` must be a table: {}", self.target, crate::config::TABLES.join(", ")));
            }
        } else if !services.contains(&self.target.as_str()) {
            return Err(format!("`{}` is not a service: {}", self.target, services.join(", ")));
        }
        if self.fault == FaultKind::Latency && self.latency_ms.is_none() {
            return Err("a latency fault needs latency_ms".into());
        }
        if self.fault == FaultKind::Bandwidth && self.bandwidth_kbps.is_none() {
            return Err("a bandwidth fault needs bandwidth_kbps".into());
        }
        Ok(())
    }

    /// A fault done through Kafka Connect's REST API (`connector`, `connector-task`).
    pub fn on_connector(&self) -> bool {
        self.target == CONNECTOR || self.target == CONNECTOR_TASK
    }

    pub fn parameters(&self) -> std::collections::BTreeMap<String, String> {
        let mut p = std::collections::BTreeMap::new();
        p.insert("duration_s".into(), format!("{}", self.duration.as_secs_f64()));
        if let Some(v) = self.latency_ms {
            p.insert("latency_ms".into(), v.to_string());
        }
        if let Some(v) = self.jitter_ms {
            p.insert("jitter_ms".into(), v.to_string());
        }
        if let Some(v) = self.bandwidth_kbps {
            p.insert("bandwidth_kbps".into(), v.to_string());
        }
        if let Some(v) = self.count {
            p.insert("count".into(), v.to_string());
        }
        p
    }
}

/// A random schedule: `[random_faults]` in a scenario, drawn from the run's seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomFaults {
    pub count: u32,
    /// Quiet time before the first fault, between faults and after the last one, so the
    /// pipeline's recovery from each is measurable.
    #[serde(with = "humantime_serde")]
    pub calm: Duration,
    #[serde(with = "humantime_serde")]
    pub min_duration: Duration,
    #[serde(with = "humantime_serde")]
    pub max_duration: Duration,
    pub kinds: Vec<FaultKind>,
    pub services: Vec<String>,
}

impl RandomFaults {
    /// The schedule for `seed` over a load of `total`: the same seed gives the same one.
    pub fn draw(&self, seed: u64, total: Duration) -> Vec<FaultSpec> {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x0FA0_17ED);
        let mut out = Vec::new();
        let mut t = self.calm;
        for _ in 0..self.count {
            let kind = self.kinds[rng.random_range(0..self.kinds.len())];
            let duration = Duration::from_millis(rng.random_range(self.min_duration.as_millis() as u64..=self.max_duration.as_millis() as u64));
            if t + duration + self.calm > total {
                break;
            }
            let target = if kind.on_link() {
                Link::ALL[rng.random_range(0..Link::ALL.len())].name().to_string()
            } else if kind == FaultKind::Poison {
                crate::config::TABLES[rng.random_range(0..crate::config::TABLES.len())].to_string()
            } else {
                self.services[rng.random_range(0..self.services.len())].clone()
            };
            out.push(FaultSpec {
                at: t,
                duration,
                target,
                fault: kind,
                latency_ms: (kind == FaultKind::Latency).then(|| rng.random_range(50..500)),
                jitter_ms: (kind == FaultKind::Latency).then(|| rng.random_range(0..50)),
                bandwidth_kbps: (kind == FaultKind::Bandwidth).then(|| rng.random_range(16..256)),
                count: (kind == FaultKind::Poison).then(|| rng.random_range(1..5)),
            });
            // Jitter the calm gap a little so faults do not align with sampling seconds.
            t += duration + self.calm + Duration::from_millis(rng.random_range(0..2000));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random() -> RandomFaults {
        RandomFaults {
            count: 5,
            calm: Duration::from_secs(10),
            min_duration: Duration::from_secs(2),
            max_duration: Duration::from_secs(8),
            kinds: vec![FaultKind::Kill, FaultKind::Pause, FaultKind::Latency, FaultKind::Poison],
            services: vec!["sink".into(), "debezium".into()],
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule_and_another_seed_another() {
        let total = Duration::from_secs(120);
        assert_eq!(random().draw(7, total), random().draw(7, total));
        assert_ne!(random().draw(7, total), random().draw(8, total));
    }

    #[test]
    fn random_schedules_keep_calm_periods_and_valid_targets() {
        let total = Duration::from_secs(120);
        for seed in 0..50 {
            let faults = random().draw(seed, total);
            assert!(!faults.is_empty());
            let mut previous_end = Duration::ZERO;
            for f in &faults {
                assert!(f.at >= previous_end + Duration::from_secs(10), "calm before {f:?}");
                assert!(f.at + f.duration + Duration::from_secs(10) <= total);
                f.validate().unwrap();
                previous_end = f.at + f.duration;
            }
        }
    }

    #[test]
    fn specs_are_checked() {
        let mut f = FaultSpec {
            at: Duration::ZERO,
            duration: Duration::from_secs(1),
            target: "sink".into(),
            fault: FaultKind::Latency,
            latency_ms: Some(10),
            jitter_ms: None,
            bandwidth_kbps: None,
            count: None,
        };
        assert!(f.validate().unwrap_err().contains("not a link"));
        f.target = "broker".into();
        f.validate().unwrap();
        f.fault = FaultKind::Kill;
        f.target = "kafka".into();
        assert!(f.validate().unwrap_err().contains("not a service"));
        f.target = CONNECTOR.into();
        assert!(f.validate().unwrap_err().contains("takes pause or restart"));
        f.fault = FaultKind::Pause;
        f.validate().unwrap();
        f.target = CONNECTOR_TASK.into();
        assert!(f.validate().unwrap_err().contains("takes restart"));
        f.fault = FaultKind::Restart;
        f.validate().unwrap();
    }
}

/// The faults (and schema changes) of a run that failed to inject, each named with its
/// error: a run with any of them did not test what it was asked to.
pub fn not_injected(records: &[crate::report::model::FaultRecord]) -> Vec<String> {
    records.iter().filter_map(|r| r.parameters.get("error").map(|e| format!("{} {} at {:.1}s failed to inject: {e}", r.kind, r.target, r.start_s))).collect()
}

/// Fault parameter: where each poison event landed, `partition:offset,...`.
pub const POISON_OFFSETS: &str = "offsets";
/// Fault parameter: poison events not found dead-lettered in the sink's apply log.
pub const POISON_UNRECONCILED: &str = "unreconciled";

pub fn format_offsets(offsets: &[(i32, i64)]) -> String {
    offsets.iter().map(|(p, o)| format!("{p}:{o}")).collect::<Vec<_>>().join(",")
}

pub fn parse_offsets(text: &str) -> Vec<(i32, i64)> {
    text.split(',').filter_map(|po| po.split_once(':')).filter_map(|(p, o)| Some((p.parse().ok()?, o.parse().ok()?))).collect()
}

/// Reconciles each poison fault's events with the sink's apply log: every one must be
/// there as `dlq`, none applied. Records `dead_lettered`, `applied`, `not_in_log` and
/// `unreconciled` (what is not dead-lettered) on the fault.
pub fn reconcile_poison(records: &mut [crate::report::model::FaultRecord], log: &[crate::run::apply_log::LogRow]) {
    use std::collections::HashMap;
    for record in records.iter_mut().filter(|r| r.kind == "poison") {
        let Some(offsets) = record.parameters.get(POISON_OFFSETS).map(|t| parse_offsets(t)) else { continue };
        let outcomes: HashMap<(i32, i64), &str> =
            log.iter().filter(|r| r.entity == record.target).map(|r| ((r.partition, r.offset), r.outcome.as_str())).collect();
        let (mut dlq, mut applied, mut missing) = (0, 0, 0);
        for at in &offsets {
            match outcomes.get(at) {
                Some(&"dlq") => dlq += 1,
                Some(&("applied" | "superseded" | "stale")) => applied += 1,
                Some(_) => applied += 1,
                None => missing += 1,
            }
        }
        record.parameters.insert("dead_lettered".into(), dlq.to_string());
        record.parameters.insert("applied".into(), applied.to_string());
        record.parameters.insert("not_in_log".into(), missing.to_string());
        record.parameters.insert(POISON_UNRECONCILED.into(), (offsets.len() - dlq).to_string());
    }
}

#[cfg(test)]
mod poison_tests {
    use super::*;
    use crate::report::model::FaultRecord;
    use crate::run::apply_log::LogRow;

    fn log(offset: i64, outcome: &str) -> LogRow {
        LogRow { key: None, rule: Some("decode".into()), ..LogRow::sample(offset, outcome) }
    }

    #[test]
    fn a_fault_that_failed_to_inject_is_named() {
        let record = |kind: &str, error: Option<&str>| FaultRecord {
            kind: kind.into(),
            target: "sink-target".into(),
            parameters: error.map(|e| [("error".to_string(), e.to_string())].into()).unwrap_or_default(),
            start_s: 12.0,
            end_s: Some(15.0),
            service_recovery_s: None,
            pipeline_recovery_s: None,
        };
        assert!(not_injected(&[record("latency", None)]).is_empty());
        let failed = not_injected(&[record("latency", None), record("blackhole", Some("link sink-target has no fault proxy"))]);
        assert_eq!(failed, vec!["blackhole sink-target at 12.0s failed to inject: link sink-target has no fault proxy".to_string()]);
    }

    #[test]
    fn every_poison_event_must_be_dead_lettered() {
        let mut records = vec![FaultRecord {
            kind: "poison".into(),
            target: "customer".into(),
            parameters: [(POISON_OFFSETS.to_string(), format_offsets(&[(0, 5), (0, 6), (0, 7)]))].into(),
            start_s: 1.0,
            end_s: Some(1.0),
            service_recovery_s: None,
            pipeline_recovery_s: None,
        }];
        reconcile_poison(&mut records, &[log(5, "dlq"), log(6, "dlq"), log(7, "dlq")]);
        assert_eq!(records[0].parameters[POISON_UNRECONCILED], "0");
        reconcile_poison(&mut records, &[log(5, "dlq"), log(6, "applied")]);
        let p = &records[0].parameters;
        assert_eq!((p["dead_lettered"].as_str(), p["applied"].as_str(), p["not_in_log"].as_str(), p[POISON_UNRECONCILED].as_str()), ("1", "1", "1", "2"));
    }
}

/// The names the harness prints (strum) are the names its files and reports use (serde):
/// a scenario, a report and a log line say the same word for the same thing.
#[cfg(test)]
mod name_tests {
    use strum::IntoEnumIterator;

    fn same_names<T: IntoEnumIterator + serde::Serialize + Copy>(name: impl Fn(T) -> &'static str) {
        for v in T::iter() {
            assert_eq!(serde_json::to_value(v).unwrap(), serde_json::json!(name(v)));
        }
    }

    #[test]
    fn printed_names_are_the_serialized_names() {
        same_names(super::FaultKind::name);
        same_names(super::Link::name);
        same_names(crate::orchestrator::ServiceKind::name);
        same_names(crate::orchestrator::BackendKind::name);
        same_names(crate::orchestrator::docker::images::ImageSet::name);
        same_names(crate::workload::OpKind::name);
        for link in super::Link::ALL {
            assert_eq!(super::Link::parse(link.name()), Some(link));
        }
        assert_eq!(super::Link::parse("nope"), None);
    }
}
