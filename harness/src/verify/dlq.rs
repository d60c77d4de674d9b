//! The dead-letter topic read back at the end of a run: every letter with its headers,
//! classified by why it was written, and reconciled with the sink's apply log by the
//! record it carries (entity, partition, offset). A dead letter is the sink's claim that a
//! change was refused; read back, it is evidence, and only a letter of a business rule the
//! scenario expects excuses the key it rejected (see `classify`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::run::apply_log::LogRow;

/// One letter as the sink wrote it (`sink/README.md`, DLQ records).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Letter {
    pub partition: i32,
    pub offset: i64,
    pub rule: String,
    pub reason: String,
    pub entity: String,
    pub original_topic: String,
    pub original_partition: i32,
    pub original_offset: i64,
    pub key: Option<String>,
}

/// The classes other than `rule:<name>`, each always reported once the topic was read.
pub const FIXED_CLASSES: [&str; 5] = ["poison", "decode", "apply", "panic", "unknown"];

/// Why a letter was written: `rule:<name>` (a business rule), `decode`, `apply`, `panic`,
/// or `poison` (a record the harness injected on purpose).
pub fn class_of(rule: &str, poisoned: bool) -> String {
    if poisoned {
        return "poison".into();
    }
    match rule {
        "decode" | "apply" | "panic" => rule.into(),
        "" => "unknown".into(),
        other => format!("rule:{other}"),
    }
}

/// Where to read the letters, and what the run knows about them.
#[derive(Clone)]
pub struct DlqSource {
    pub config: ClientConfig,
    pub topic: String,
    /// (original topic, partition, offset) of every poison record the run injected.
    pub poison: HashSet<(String, i32, i64)>,
    /// Letters written before this instant belong to an earlier run on the same stack.
    pub since: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for DlqSource {
    // The client config can hold credentials: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DlqSource").field("topic", &self.topic).field("poison", &self.poison.len()).finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("reading the dead-letter topic {topic}: {source}")]
    Kafka { topic: String, source: rdkafka::error::KafkaError },
    #[error("reading the dead-letter topic {topic}: stopped at {reached} of {total} letters after {waited:?}")]
    Incomplete { topic: String, reached: i64, total: i64, waited: Duration },
}

/// Every letter of `topic`, from the start of each partition to its high watermark at the
/// time of the call (blocking: call from a blocking context). A topic that does not exist
/// holds no letter.
pub fn read_letters(config: &ClientConfig, topic: &str, since: Option<DateTime<Utc>>, timeout: Duration) -> Result<Vec<Letter>, DlqError> {
    let kafka = |source| DlqError::Kafka { topic: topic.to_string(), source };
    let consumer: BaseConsumer = config.clone().set("group.id", "cdc-harness-dlq-reader").set("enable.auto.commit", "false").create().map_err(kafka)?;
    let metadata = consumer.fetch_metadata(Some(topic), timeout).map_err(kafka)?;
    let Some(meta) = metadata.topics().iter().find(|t| t.name() == topic && t.error().is_none()) else {
        return Ok(Vec::new());
    };
    let mut assignment = TopicPartitionList::new();
    let mut ends: HashMap<i32, i64> = HashMap::new();
    let mut total = 0;
    for p in meta.partitions() {
        let (low, high) = consumer.fetch_watermarks(topic, p.id(), timeout).map_err(kafka)?;
        if high > low {
            assignment.add_partition_offset(topic, p.id(), Offset::Offset(low)).map_err(kafka)?;
            ends.insert(p.id(), high);
            total += high - low;
        }
    }
    if ends.is_empty() {
        return Ok(Vec::new());
    }
    consumer.assign(&assignment).map_err(kafka)?;
    let started = Instant::now();
    let mut letters = Vec::new();
    let mut done: HashSet<i32> = HashSet::new();
    while done.len() < ends.len() {
        if started.elapsed() > timeout {
            return Err(DlqError::Incomplete { topic: topic.to_string(), reached: letters.len() as i64, total, waited: timeout });
        }
        let Some(message) = consumer.poll(Duration::from_millis(200)) else { continue };
        let message = message.map_err(kafka)?;
        let end = ends.get(&message.partition()).copied().unwrap_or(0);
        if message.offset() + 1 >= end {
            done.insert(message.partition());
        }
        let written = message.timestamp().to_millis().and_then(DateTime::from_timestamp_millis);
        if since.is_some_and(|s| written.is_some_and(|w| w < s)) {
            continue;
        }
        let header = |name: &str| {
            message.headers().and_then(|h| h.iter().find(|x| x.key == name).and_then(|x| x.value).map(|v| String::from_utf8_lossy(v).into_owned()))
        };
        letters.push(Letter {
            partition: message.partition(),
            offset: message.offset(),
            rule: header("dlq.rule").unwrap_or_default(),
            reason: header("dlq.reason").unwrap_or_default(),
            entity: header("dlq.entity").unwrap_or_default(),
            original_topic: header("dlq.original.topic").unwrap_or_default(),
            original_partition: header("dlq.original.partition").and_then(|p| p.parse().ok()).unwrap_or(-1),
            original_offset: header("dlq.original.offset").and_then(|o| o.parse().ok()).unwrap_or(-1),
            key: message.key().map(|k| String::from_utf8_lossy(k).chars().take(200).collect()),
        });
    }
    Ok(letters)
}

/// One letter as a report shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LetterEvidence {
    pub class: String,
    pub entity: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    /// The letter's `dlq.reason` (the sink's error text), truncated.
    pub reason: String,
}

/// The dead letters of a run, read back from the topic.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DlqReport {
    pub topic: String,
    pub letters: u64,
    pub by_class: BTreeMap<String, u64>,
    /// The business rules the scenario declares as expected (`[verify] expected_rejections`).
    pub expected_rules: Vec<String>,
    /// Letters that are neither of an expected rule nor poison the run injected.
    pub unexpected: u64,
    pub unexpected_examples: Vec<LetterEvidence>,
    /// Apply-log rows that say `dlq` without a letter in the topic, plus letters the apply
    /// log does not have as `dlq`: the sink's account and the topic disagree.
    pub unreconciled: u64,
    pub unreconciled_examples: Vec<String>,
    /// Poison records the run injected that have no letter: every one must be dead-lettered.
    #[serde(default)]
    pub poison_missing: u64,
}

/// Letters by the record they carry: (entity, partition, offset).
pub type LetterIndex = HashMap<(String, i32, i64), Letter>;

/// Classifies and reconciles `letters` with `log` (None: no apply log to reconcile with);
/// log rows written before `source.since` are left out, as their letters were.
pub fn reconcile(source: &DlqSource, letters: Vec<Letter>, log: Option<&[LogRow]>, expected_rules: &[String], max_examples: usize) -> (DlqReport, LetterIndex) {
    let mut report = DlqReport { topic: source.topic.clone(), expected_rules: expected_rules.to_vec(), ..Default::default() };
    let mut index = LetterIndex::new();
    for letter in letters {
        let poisoned = source.poison.contains(&(letter.original_topic.clone(), letter.original_partition, letter.original_offset));
        let class = class_of(&letter.rule, poisoned);
        report.letters += 1;
        *report.by_class.entry(class.clone()).or_default() += 1;
        if !poisoned && !expected_rules.contains(&letter.rule) {
            report.unexpected += 1;
            if report.unexpected_examples.len() < max_examples {
                report.unexpected_examples.push(LetterEvidence {
                    class,
                    entity: letter.entity.clone(),
                    partition: letter.original_partition,
                    offset: letter.original_offset,
                    key: letter.key.clone(),
                    reason: letter.reason.chars().take(300).collect(),
                });
            }
        }
        index.insert((letter.entity.clone(), letter.original_partition, letter.original_offset), letter);
    }
    let lettered: HashSet<(&str, i32, i64)> = index.values().map(|l| (l.original_topic.as_str(), l.original_partition, l.original_offset)).collect();
    report.poison_missing = source.poison.iter().filter(|(t, p, o)| !lettered.contains(&(t.as_str(), *p, *o))).count() as u64;
    if let Some(log) = log {
        let mut logged: HashSet<(&str, i32, i64)> = HashSet::new();
        let unreconciled = |what: String, report: &mut DlqReport| {
            report.unreconciled += 1;
            if report.unreconciled_examples.len() < max_examples {
                report.unreconciled_examples.push(what);
            }
        };
        // The window the letters were read in applies to the log too: on a reused stack,
        // rows of earlier runs have their letters left out. The row's `applied_at` is the
        // target's clock, the letter's timestamp the sink's: one clock on one machine.
        let in_window = |r: &&LogRow| source.since.is_none_or(|s| r.applied_at >= s);
        for row in log.iter().filter(|r| r.outcome == "dlq").filter(in_window) {
            logged.insert((row.entity.as_str(), row.partition, row.offset));
            if !index.contains_key(&(row.entity.clone(), row.partition, row.offset)) {
                unreconciled(
                    format!(
                        "apply log row {} says {}/{} offset {} was dead-lettered; the topic has no letter of it",
                        row.id, row.entity, row.partition, row.offset
                    ),
                    &mut report,
                );
            }
        }
        for (entity, partition, offset) in index.keys() {
            if !logged.contains(&(entity.as_str(), *partition, *offset)) {
                unreconciled(format!("a letter of {entity}/{partition} offset {offset} has no dlq row in the apply log"), &mut report);
            }
        }
    }
    (report, index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(rule: &str, offset: i64) -> Letter {
        Letter {
            partition: 0,
            offset,
            rule: rule.into(),
            reason: format!("{rule} failed"),
            entity: "customer".into(),
            original_topic: "cdc.public.customer".into(),
            original_partition: 0,
            original_offset: offset,
            key: None,
        }
    }

    fn log_row(offset: i64) -> LogRow {
        LogRow { key: None, ..LogRow::sample(offset, "dlq") }
    }

    #[test]
    fn letters_are_classed_and_only_expected_rules_and_poison_are_expected() {
        let source =
            DlqSource { config: ClientConfig::new(), topic: "cdc.dlq".into(), poison: HashSet::from([("cdc.public.customer".to_string(), 0, 3)]), since: None };
        let letters = vec![letter("email", 1), letter("decode", 2), letter("decode", 3), letter("status_transition", 4)];
        let log: Vec<LogRow> = [1, 2, 3, 4].into_iter().map(log_row).collect();
        let (report, index) = reconcile(&source, letters, Some(&log), &["email".to_string()], 5);
        assert_eq!(report.letters, 4);
        assert_eq!(
            report.by_class,
            BTreeMap::from([("rule:email".into(), 1), ("decode".into(), 1), ("poison".into(), 1), ("rule:status_transition".into(), 1)])
        );
        assert_eq!(report.unexpected, 2, "the decode letter that is not poison, and the rule nobody expected");
        assert_eq!(report.unreconciled, 0);
        assert_eq!(report.poison_missing, 0);
        assert_eq!(index.len(), 4);
        let more_poison = DlqSource { poison: HashSet::from([("cdc.public.customer".to_string(), 0, 3), ("cdc.public.customer".to_string(), 0, 8)]), ..source };
        let (report, _) = reconcile(&more_poison, vec![letter("decode", 3)], None, &[], 5);
        assert_eq!(report.poison_missing, 1, "an injected poison record without its letter");
    }

    /// `since` leaves out the letters of earlier runs on a reused stack, and so the apply
    /// log rows those runs wrote: a dead-lettered row of an earlier run has no letter here,
    /// and is no disagreement of this run.
    #[test]
    fn apply_log_rows_before_since_are_left_out_like_their_letters() {
        let since = DateTime::from_timestamp_millis(10_000).unwrap();
        let source = DlqSource { config: ClientConfig::new(), topic: "cdc.dlq".into(), poison: HashSet::new(), since: Some(since) };
        let at = |offset, ms| LogRow { applied_at: DateTime::from_timestamp_millis(ms).unwrap(), ..log_row(offset) };
        // Offset 1: an earlier run's row (its letter was left out when read); 5: this run's.
        let log = [at(1, 9_999), at(5, 10_000)];
        let expected = ["email".to_string()];
        let (report, _) = reconcile(&source, vec![letter("email", 5)], Some(&log), &expected, 5);
        assert_eq!(report.unreconciled, 0, "{:?}", report.unreconciled_examples);
        let (report, _) = reconcile(&source, vec![], Some(&log), &expected, 5);
        assert_eq!(report.unreconciled, 1, "this run's row without its letter still disagrees");
        let every_run = DlqSource { since: None, ..source };
        let (report, _) = reconcile(&every_run, vec![letter("email", 5)], Some(&log), &expected, 5);
        assert_eq!(report.unreconciled, 1, "without a window the earlier run's row counts: {:?}", report.unreconciled_examples);
    }

    #[test]
    fn a_logged_letter_missing_from_the_topic_is_unreconciled() {
        let source = DlqSource { config: ClientConfig::new(), topic: "cdc.dlq".into(), poison: HashSet::new(), since: None };
        let (report, _) = reconcile(&source, vec![letter("email", 1), letter("email", 9)], Some(&[log_row(1), log_row(2)]), &["email".to_string()], 5);
        assert_eq!(report.unreconciled, 2, "{:?}", report.unreconciled_examples);
        assert!(report.unreconciled_examples[0].contains("offset 2"), "{:?}", report.unreconciled_examples);
    }
}
