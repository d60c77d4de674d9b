//! Validation before apply. Schema, business and temporal rules are checked here per
//! event; the referential rule needs the target and runs in the handler (with a grace
//! period) but shares the configuration.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use crate::model::{Change, ColumnType, Entity, Field, Op, Value, Version};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    /// Required columns not null, enum values.
    Schema,
    /// customer.email format.
    Email,
    /// orders.status transitions.
    StatusTransition,
    /// Timestamps neither in the future (beyond a tolerance) nor absurdly old.
    TimestampRange,
    /// The referenced customer/order exists in the target.
    Referential,
    /// Out-of-order delivery and clock drift.
    Temporal,
}

impl Rule {
    pub const ALL: [Rule; 6] = [Rule::Schema, Rule::Email, Rule::StatusTransition, Rule::TimestampRange, Rule::Referential, Rule::Temporal];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Schema => "schema",
            Self::Email => "email",
            Self::StatusTransition => "status_transition",
            Self::TimestampRange => "timestamp_range",
            Self::Referential => "referential",
            Self::Temporal => "temporal",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }

    /// Referential defaults to warn: parents and children travel on different topics and
    /// partitions, so a child legitimately arrives before its parent, and a parent deleted
    /// later (ON DELETE CASCADE) would make a replayed child look orphaned. Temporal
    /// anomalies are expected under replays, so they are counted, not rejected.
    const fn default_severity(self) -> Severity {
        match self {
            Self::Referential | Self::Temporal => Severity::Warn,
            _ => Severity::Reject,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Send the event to the DLQ instead of applying it.
    Reject,
    /// Count and log, apply anyway.
    Warn,
}

impl Severity {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Reject => "reject",
            Self::Warn => "warn",
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Default true.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// `reject` or `warn`; the default depends on the rule.
    #[serde(default)]
    pub severity: Option<Severity>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    #[serde(default)]
    pub schema: RuleConfig,
    #[serde(default)]
    pub email: RuleConfig,
    #[serde(default)]
    pub status_transition: RuleConfig,
    #[serde(default)]
    pub timestamp_range: RuleConfig,
    #[serde(default)]
    pub referential: RuleConfig,
    #[serde(default)]
    pub temporal: RuleConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleSetting {
    pub enabled: bool,
    pub severity: Severity,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationConfig {
    #[serde(default)]
    pub rules: RulesConfig,
    /// How far in the future a row timestamp may be (clock skew between hosts).
    #[serde(default = "ValidationConfig::default_future_tolerance", with = "humantime_serde")]
    pub future_tolerance: Duration,
    /// Row timestamps older than this are rejected as absurd.
    #[serde(default = "ValidationConfig::default_max_age", with = "humantime_serde")]
    pub max_age: Duration,
    /// How long a missing parent is waited for (and re-checked) before the rule fails.
    #[serde(default = "ValidationConfig::default_referential_grace", with = "humantime_serde")]
    pub referential_grace: Duration,
    /// Commit timestamps further than this from the sink's clock (either way) count as drift.
    #[serde(default = "ValidationConfig::default_clock_drift_tolerance", with = "humantime_serde")]
    pub clock_drift_tolerance: Duration,
    /// The business rules: allowed values and status transitions (defaults: the source
    /// application's). A value the source accepts and these do not is rejected by the
    /// `schema` (or `status_transition`) rule: widen them here when the source widens.
    #[serde(default)]
    pub business: BusinessRules,
}

/// `[validation.business]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusinessRules {
    #[serde(default = "BusinessRules::default_customer_status")]
    pub customer_status: Vec<String>,
    #[serde(default = "BusinessRules::default_address_type")]
    pub address_type: Vec<String>,
    #[serde(default = "BusinessRules::default_order_status")]
    pub order_status: Vec<String>,
    /// `from = [to, ...]`: the transitions of `orders.status` an update may make besides
    /// keeping the status. A status without an entry is final.
    #[serde(default = "BusinessRules::default_order_transitions")]
    pub order_transitions: BTreeMap<String, Vec<String>>,
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(ToString::to_string).collect()
}

impl BusinessRules {
    fn default_customer_status() -> Vec<String> {
        strings(&["active", "inactive", "blocked"])
    }
    fn default_address_type() -> Vec<String> {
        strings(&["billing", "shipping"])
    }
    fn default_order_status() -> Vec<String> {
        strings(&["pending", "paid", "shipped", "delivered", "cancelled"])
    }
    /// pending -> paid|cancelled, paid -> shipped|cancelled, shipped -> delivered;
    /// delivered and cancelled are final.
    fn default_order_transitions() -> BTreeMap<String, Vec<String>> {
        [("pending", &["paid", "cancelled"][..]), ("paid", &["shipped", "cancelled"]), ("shipped", &["delivered"])]
            .into_iter()
            .map(|(from, to)| (from.to_string(), strings(to)))
            .collect()
    }

    /// The enum column of an entity and its allowed values.
    pub fn allowed(&self, entity: Entity) -> Option<(&'static str, &[String])> {
        match entity {
            Entity::Customer => Some(("status", &self.customer_status)),
            Entity::Address => Some(("type", &self.address_type)),
            Entity::Orders => Some(("status", &self.order_status)),
            Entity::OrderItem => None,
        }
    }

    /// Same -> same is always allowed (updates of other columns).
    pub fn order_transition_allowed(&self, from: &str, to: &str) -> bool {
        from == to || self.order_transitions.get(from).is_some_and(|targets| targets.iter().any(|t| t == to))
    }

    fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, values) in [("customer_status", &self.customer_status), ("address_type", &self.address_type), ("order_status", &self.order_status)] {
            if values.is_empty() {
                problems.push(format!("[validation.business] {name} is empty: every row would be rejected"));
            }
        }
        for (from, targets) in &self.order_transitions {
            for status in std::iter::once(from).chain(targets) {
                if !self.order_status.contains(status) {
                    problems.push(format!("[validation.business] order_transitions names {status:?}, which is not in order_status"));
                }
            }
        }
        problems
    }
}

impl Default for BusinessRules {
    fn default() -> Self {
        Self {
            customer_status: Self::default_customer_status(),
            address_type: Self::default_address_type(),
            order_status: Self::default_order_status(),
            order_transitions: Self::default_order_transitions(),
        }
    }
}

impl ValidationConfig {
    const fn default_future_tolerance() -> Duration {
        Duration::from_secs(300)
    }
    const fn default_max_age() -> Duration {
        Duration::from_secs(50 * 365 * 86400)
    }
    const fn default_referential_grace() -> Duration {
        Duration::from_secs(30)
    }
    const fn default_clock_drift_tolerance() -> Duration {
        Duration::from_secs(300)
    }

    pub fn rule(&self, rule: Rule) -> RuleSetting {
        let r = &self.rules;
        let c = match rule {
            Rule::Schema => &r.schema,
            Rule::Email => &r.email,
            Rule::StatusTransition => &r.status_transition,
            Rule::TimestampRange => &r.timestamp_range,
            Rule::Referential => &r.referential,
            Rule::Temporal => &r.temporal,
        };
        RuleSetting { enabled: c.enabled.unwrap_or(true), severity: c.severity.unwrap_or(rule.default_severity()) }
    }

    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.max_age < Duration::from_secs(86400) {
            problems.push("[validation] max_age below 1 day would reject ordinary rows".into());
        }
        if self.referential_grace > Duration::from_secs(600) {
            problems.push("[validation] referential_grace above 10m would stall partitions for too long".into());
        }
        problems.extend(self.business.validate());
        problems
    }
}

impl Default for ValidationConfig {
    fn default() -> Self {
        Self {
            rules: RulesConfig::default(),
            future_tolerance: Self::default_future_tolerance(),
            max_age: Self::default_max_age(),
            referential_grace: Self::default_referential_grace(),
            clock_drift_tolerance: Self::default_clock_drift_tolerance(),
            business: BusinessRules::default(),
        }
    }
}

/// Deliberately simple: one `@`, a non-empty local part, a dotted domain, no whitespace.
/// RFC 5322 allows far more, but the source application only writes such addresses.
pub fn email_valid(email: &str) -> bool {
    if email.len() > 254 || email.chars().any(char::is_whitespace) {
        return false;
    }
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.contains('@')
        && domain.split('.').count() >= 2
        && domain.split('.').all(|label| !label.is_empty() && !label.starts_with('-') && !label.ends_with('-'))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub rule: Rule,
    pub severity: Severity,
    pub reason: String,
}

/// Per-rule counters of one batch, added to the metrics once per batch.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub passed: [u64; Rule::ALL.len()],
}

impl Tally {
    pub fn pass(&mut self, rule: Rule) {
        self.passed[rule.index()] += 1;
    }
}

/// What the validator remembers per key (per partition task; keys do not move between
/// partitions): the newest version seen, for out-of-order detection, and every status the
/// key has reached in the source since it was created, for transitions when there is no
/// `before` image. Bounded: cleared when it grows past `MAX_KEYS`, which only loses checks.
#[derive(Debug, Default)]
pub struct KeyMemory {
    keys: HashMap<Uuid, (Version, Vec<String>)>,
}

const MAX_KEYS: usize = 200_000;

pub struct Validator<'a> {
    pub config: &'a ValidationConfig,
    pub now: DateTime<Utc>,
}

impl Validator<'_> {
    /// Checks everything but the referential rule; records the event in `memory`.
    pub fn check(&self, change: &Change, memory: &mut KeyMemory, tally: &mut Tally) -> Vec<Violation> {
        let mut out = Vec::new();
        let verdict = |rule: Rule, failure: Option<String>, out: &mut Vec<Violation>, tally: &mut Tally| {
            let setting = self.config.rule(rule);
            if !setting.enabled {
                return;
            }
            match failure {
                None => tally.pass(rule),
                Some(reason) => out.push(Violation { rule, severity: setting.severity, reason }),
            }
        };
        let entity = change.entity;
        let previous = memory.keys.get(&change.key).cloned();

        // Temporal: an event older than one already seen for the key (a replay or an
        // out-of-order delivery), or a commit time far from our clock.
        let out_of_order = previous
            .as_ref()
            .filter(|(seen, _)| seen.is_newer_than(&change.version))
            .map(|(seen, _)| format!("out of order: {:?} after {seen:?} for key {}", change.version, change.key));
        let drift = change.source_ts.and_then(|ts| {
            let tolerance = chrono::Duration::from_std(self.config.clock_drift_tolerance).unwrap_or(chrono::Duration::MAX);
            let emitted = change.emitted_ts.unwrap_or(self.now);
            // Checked: an absurd envelope time (ts_ms 8210298412799999) must not overflow.
            let beyond = |reference: DateTime<Utc>| reference.checked_add_signed(tolerance).is_some_and(|limit| ts > limit);
            (beyond(self.now) || beyond(emitted)).then(|| format!("clock drift: commit time {ts} is ahead of the sink/connector clock ({emitted})"))
        });
        verdict(Rule::Temporal, out_of_order.or(drift), &mut out, tally);

        if let Some(after) = change.after.as_ref() {
            // Schema: NOT NULL columns must not be null (absent = dropped column, tolerated),
            // enum columns must hold a known value.
            let mut schema_failure = None;
            for (column, field) in entity.columns().iter().zip(&after.known) {
                if column.required && matches!(field, Some(Field::Value(Value::Null))) {
                    schema_failure = Some(format!("{}.{} is null", entity, column.name));
                    break;
                }
            }
            let allowed = self.config.business.allowed(entity);
            let bad_enum =
                allowed.and_then(|(column, values)| after.text(entity, column).filter(|v| !values.iter().any(|a| a == v)).map(|v| (column, values, v)));
            if let (None, Some((column, values, v))) = (&schema_failure, bad_enum) {
                schema_failure = Some(format!("{entity}.{column} {v:?} is not one of {values:?} ([validation.business])"));
            }
            verdict(Rule::Schema, schema_failure, &mut out, tally);

            if let Some(email) = after.text(entity, "email").filter(|_| entity == Entity::Customer) {
                verdict(Rule::Email, (!email_valid(email)).then(|| format!("email {email:?} is malformed")), &mut out, tally);
            }

            if let Some(to) = after.text(entity, "status").filter(|_| entity == Entity::Orders) {
                // The source's previous status when the event carries it (a `before` image:
                // REPLICA IDENTITY FULL; replays then check the same pair again). Without
                // it (REPLICA IDENTITY DEFAULT, flattened events) the previous status is not
                // known: the transition is accepted when it is valid from any status the key
                // has reached in the source, rejected changes included (the source did reach
                // them), so one rejected change never makes every later valid one fail.
                // Only for events newer than what was seen (older ones are stale anyway).
                let from: Vec<String> = match (change.before.as_ref().and_then(|b| b.text(entity, "status")), &previous) {
                    (Some(before), _) => vec![before.to_owned()],
                    (None, Some((seen, reached))) if change.version.is_newer_than(seen) => reached.clone(),
                    _ => Vec::new(),
                };
                if !from.is_empty() && change.op == Op::Update {
                    let failure = (!from.iter().any(|f| self.config.business.order_transition_allowed(f, to))).then(|| {
                        format!(
                            "orders.status transition {} -> {to} is not allowed ([validation.business] order_transitions)",
                            if from.len() == 1 { from[0].clone() } else { format!("from any of {from:?}") }
                        )
                    });
                    verdict(Rule::StatusTransition, failure, &mut out, tally);
                }
            }

            // Against the commit that wrote the row when the event carries it, not the sink's
            // clock: a source clock ahead of the sink's must not reject every change.
            let reference = change.source_ts.unwrap_or(self.now);
            let lower = reference
                .checked_sub_signed(chrono::Duration::from_std(self.config.max_age).unwrap_or(chrono::Duration::MAX))
                .unwrap_or(DateTime::<Utc>::MIN_UTC);
            let upper = reference
                .checked_add_signed(chrono::Duration::from_std(self.config.future_tolerance).unwrap_or(chrono::Duration::MAX))
                .unwrap_or(DateTime::<Utc>::MAX_UTC);
            let mut ts_failure = None;
            for (column, field) in entity.columns().iter().zip(&after.known) {
                if let (ColumnType::Timestamptz, Some(Field::Value(Value::Timestamp(ts)))) = (column.ty, field) {
                    if *ts > upper {
                        ts_failure = Some(format!("{entity}.{} {ts} is in the future", column.name));
                    } else if *ts < lower {
                        ts_failure = Some(format!("{entity}.{} {ts} is older than max_age", column.name));
                    }
                }
            }
            verdict(Rule::TimestampRange, ts_failure, &mut out, tally);
        }

        // Every newer change is what the source reached, accepted or not. A create (or a
        // snapshot read) starts the key's history again; a delete ends it.
        if previous.as_ref().is_none_or(|(seen, _)| change.version.is_newer_than(seen)) {
            if memory.keys.len() >= MAX_KEYS {
                memory.keys.clear();
            }
            let mut reached = match (change.op, previous) {
                (Op::Update, Some((_, reached))) => reached,
                _ => Vec::new(),
            };
            if let Some(status) = change.after.as_ref().and_then(|a| a.text(entity, "status")) {
                if !reached.iter().any(|s| s == status) {
                    reached.push(status.to_owned());
                }
            }
            memory.keys.insert(change.key, (change.version, reached));
        }
        out
    }
}

impl KeyMemory {
    /// Forgets what `change` taught, when a later stage (the referential rule, the target)
    /// rejected it after validation accepted it.
    pub fn unlearn(&mut self, key: Uuid, version: Version) {
        if self.keys.get(&key).is_some_and(|(seen, _)| *seen == version) {
            self.keys.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{Decoded, decode};
    use crate::model::Coords;
    use serde_json::{Value as Json, json};

    const ID: &str = "5f0c6d4e-1b7e-4c3a-9a55-1b2c3d4e5f60";
    const CUST: &str = "0a0c6d4e-1b7e-4c3a-9a55-1b2c3d4e5f61";

    fn change(table: &str, value: Json) -> Change {
        let coords = Coords { topic: format!("cdc.public.{table}"), partition: 0, offset: 1, timestamp: None };
        let options = crate::decode::DecodeOptions { decimals: crate::config::DecimalHandling::String, ..Default::default() };
        match decode(&coords, None, Some(value.to_string().as_bytes()), &options).unwrap() {
            Decoded::Change(c) => *c,
            other => panic!("{other:?}"),
        }
    }

    fn now() -> DateTime<Utc> {
        "2024-05-01T12:00:00Z".parse().unwrap()
    }

    fn order(status: &str) -> Json {
        json!({"id": ID, "customer_id": CUST, "status": status, "total_amount": "1.00",
               "created_at": "2024-05-01T10:00:00Z", "updated_at": "2024-05-01T10:00:00Z"})
    }

    fn run(config: &ValidationConfig, changes: &[Change]) -> Vec<Vec<Violation>> {
        let v = Validator { config, now: now() };
        let mut memory = KeyMemory::default();
        let mut tally = Tally::default();
        changes.iter().map(|c| v.check(c, &mut memory, &mut tally)).collect()
    }

    fn rules(violations: &[Violation]) -> Vec<Rule> {
        violations.iter().map(|v| v.rule).collect()
    }

    #[test]
    fn transitions_table() {
        let rules = BusinessRules::default();
        assert!(rules.order_transition_allowed("pending", "paid"));
        assert!(rules.order_transition_allowed("paid", "paid"));
        assert!(rules.order_transition_allowed("shipped", "delivered"));
        assert!(!rules.order_transition_allowed("delivered", "pending"));
        assert!(!rules.order_transition_allowed("cancelled", "paid"));
        assert!(!rules.order_transition_allowed("pending", "shipped"));
    }

    /// The business rules come from the configuration: a status the source started writing
    /// is accepted once configured, and a table naming an unknown status is refused at start.
    #[test]
    fn business_rules_are_configuration() {
        let default = ValidationConfig::default();
        let refunded = || {
            let mut o = order("refunded");
            o["status"] = json!("refunded");
            change("orders", json!({"before": order("delivered"), "after": o, "source": {"lsn": 5}, "op": "u"}))
        };
        assert_eq!(rules(&run(&default, &[refunded()])[0]), vec![Rule::Schema, Rule::StatusTransition]);
        let config: ValidationConfig = toml::from_str(
            "[business]\norder_status = [\"pending\", \"paid\", \"shipped\", \"delivered\", \"cancelled\", \"refunded\"]\n\
             [business.order_transitions]\npending = [\"paid\", \"cancelled\"]\npaid = [\"shipped\", \"cancelled\"]\nshipped = [\"delivered\"]\ndelivered = [\"refunded\"]\n",
        )
        .unwrap();
        assert!(config.validate().is_empty(), "{:?}", config.validate());
        assert!(run(&config, &[refunded()])[0].is_empty(), "configured: delivered -> refunded is accepted");
        let bad: ValidationConfig = toml::from_str("[business.order_transitions]\npending = [\"lost\"]\n").unwrap();
        assert_eq!(bad.validate(), vec!["[validation.business] order_transitions names \"lost\", which is not in order_status".to_string()]);
    }

    #[test]
    fn emails() {
        assert!(email_valid("a.b@example.com"));
        assert!(!email_valid("a.b@example"));
        assert!(!email_valid("no-at.example.com"));
        assert!(!email_valid("a @example.com"));
        assert!(!email_valid("a@@example.com"));
    }

    #[test]
    fn transition_from_before_image_and_from_memory() {
        let config = ValidationConfig::default();
        let bad = change("orders", json!({"before": order("delivered"), "after": order("pending"), "source": {"lsn": 5}, "op": "u"}));
        assert_eq!(rules(&run(&config, &[bad])[0]), vec![Rule::StatusTransition]);
        // Flattened form: no before image, the previous status comes from memory.
        let mut first = order("cancelled");
        first["__lsn"] = json!(5);
        first["__op"] = json!("c");
        first["__deleted"] = json!("false");
        let mut second = order("paid");
        second["__lsn"] = json!(6);
        second["__op"] = json!("u");
        second["__deleted"] = json!("false");
        let out = run(&config, &[change("orders", first.clone()), change("orders", second.clone())]);
        assert!(out[0].is_empty());
        assert_eq!(rules(&out[1]), vec![Rule::StatusTransition]);
        // A replayed older event is out of order (temporal, warn) but not a bad transition.
        let out = run(&config, &[change("orders", second), change("orders", first)]);
        assert_eq!(rules(&out[1]), vec![Rule::Temporal]);
        assert_eq!(out[1][0].severity, Severity::Warn);
    }

    #[test]
    fn schema_enum_null_and_email() {
        let config = ValidationConfig::default();
        let c = change(
            "customer",
            json!({"after": {"id": ID, "email": "x@y.org", "status": "zombie", "updated_at": "2024-05-01T10:00:00Z"}, "source": {"lsn": 1}, "op": "c"}),
        );
        assert_eq!(rules(&run(&config, &[c])[0]), vec![Rule::Schema]);
        let c = change("customer", json!({"after": {"id": ID, "email": null, "status": "active"}, "source": {"lsn": 1}, "op": "c"}));
        assert_eq!(rules(&run(&config, &[c])[0]), vec![Rule::Schema]);
        let c = change("customer", json!({"after": {"id": ID, "email": "bad", "status": "active"}, "source": {"lsn": 1}, "op": "c"}));
        assert_eq!(rules(&run(&config, &[c])[0]), vec![Rule::Email]);
        // A dropped (absent) required column is tolerated.
        let c = change("customer", json!({"after": {"id": ID, "email": "x@y.org"}, "source": {"lsn": 1}, "op": "c"}));
        assert!(run(&config, &[c])[0].is_empty());
    }

    /// A rejected status never becomes the "last status": the next valid change is compared
    /// with the last accepted one.
    #[test]
    fn memory_learns_only_from_accepted_changes() {
        let config = ValidationConfig::default();
        let flat = |status: &str, lsn: i64| {
            let mut o = order(status);
            let m = o.as_object_mut().unwrap();
            m.insert("__op".into(), json!("u"));
            m.insert("__lsn".into(), json!(lsn));
            m.insert("__deleted".into(), json!("false"));
            change("orders", o)
        };
        // pending (accepted) -> delivered (rejected: pending -> delivered) -> paid (valid from pending).
        let out = run(&config, &[flat("pending", 1), flat("delivered", 2), flat("paid", 3)]);
        assert_eq!(rules(&out[1]), vec![Rule::StatusTransition]);
        assert!(out[2].is_empty(), "paid follows the accepted pending, not the rejected delivered: {:?}", out[2]);
    }

    /// REPLICA IDENTITY DEFAULT (no before image): a change rejected by another rule does
    /// not make every later valid transition fail; it is checked against every status the key
    /// reached. An invalid transition is still caught.
    #[test]
    fn without_a_before_image_any_reached_status_may_precede() {
        let config = ValidationConfig::default();
        let update = |status: &str, lsn: i64, updated_at: &str| {
            let mut o = order(status);
            o["updated_at"] = json!(updated_at);
            change("orders", json!({"before": null, "after": o, "source": {"lsn": lsn}, "op": "u"}))
        };
        let ok = "2024-05-01T10:00:00Z";
        // paid is rejected (its timestamp is in the future); shipped is valid from paid.
        let out = run(&config, &[update("pending", 1, ok), update("paid", 2, "2024-05-01T13:00:00Z"), update("shipped", 3, ok)]);
        assert!(out[0].is_empty());
        assert_eq!(rules(&out[1]), vec![Rule::TimestampRange]);
        assert!(out[2].is_empty(), "paid was reached in the source: {:?}", out[2]);
        let out = run(&config, &[update("pending", 1, ok), update("delivered", 2, ok)]);
        assert_eq!(rules(&out[1]), vec![Rule::StatusTransition]);
        // A create starts the history again: a new order's first update is checked from it alone.
        let create = change("orders", json!({"before": null, "after": order("cancelled"), "source": {"lsn": 4}, "op": "c"}));
        let out = run(&config, &[update("paid", 1, ok), create, update("shipped", 5, ok)]);
        assert_eq!(rules(&out[2]), vec![Rule::StatusTransition], "cancelled is final");
    }

    /// A source clock an hour ahead of the sink's: rows stamped by it are not "in the
    /// future" relative to their own commit.
    #[test]
    fn timestamp_range_follows_the_commit_clock() {
        let config = ValidationConfig::default();
        let ahead = now() + chrono::Duration::hours(1);
        let mut o = order("paid");
        o["updated_at"] = json!(ahead.to_rfc3339());
        o["created_at"] = json!(ahead.to_rfc3339());
        let c = change("orders", json!({"after": o, "source": {"lsn": 1, "ts_ms": ahead.timestamp_millis()}, "ts_ms": ahead.timestamp_millis(), "op": "c"}));
        let violations = &run(&config, &[c])[0];
        assert!(!violations.iter().any(|v| v.rule == Rule::TimestampRange), "{violations:?}");
    }

    /// An envelope `ts_ms` far beyond any real date panicked in a date computation, which
    /// took its partition task down; now it is a clock-drift finding like any other.
    #[test]
    fn absurd_envelope_times_do_not_overflow() {
        let config = ValidationConfig::default();
        let c = change(
            "orders",
            json!({"after": order("paid"), "source": {"lsn": 1, "ts_ms": 8_210_298_412_799_999i64}, "ts_ms": 8_210_298_412_799_999i64, "op": "c"}),
        );
        let out = run(&config, &[c]);
        assert!(out[0].iter().all(|v| v.rule == Rule::Temporal || v.rule == Rule::TimestampRange), "{:?}", out[0]);
    }

    #[test]
    fn timestamps_future_old_and_drift() {
        let config = ValidationConfig::default();
        let mut o = order("paid");
        o["updated_at"] = json!("2024-05-01T13:00:00Z");
        let c = change("orders", json!({"after": o, "source": {"lsn": 1}, "op": "c"}));
        assert_eq!(rules(&run(&config, &[c])[0]), vec![Rule::TimestampRange]);
        let mut o = order("paid");
        o["created_at"] = json!("1900-01-01T00:00:00Z");
        let c = change("orders", json!({"after": o, "source": {"lsn": 1}, "op": "c"}));
        assert_eq!(rules(&run(&config, &[c])[0]), vec![Rule::TimestampRange]);
        let future_ms = now().timestamp_millis() + 3_600_000;
        let c = change("orders", json!({"after": order("paid"), "source": {"lsn": 1, "ts_ms": future_ms}, "op": "c"}));
        assert_eq!(rules(&run(&config, &[c])[0]), vec![Rule::Temporal]);
    }

    #[test]
    fn disabled_rule_and_severity_override() {
        let mut config = ValidationConfig::default();
        config.rules.email.enabled = Some(false);
        config.rules.schema.severity = Some(Severity::Warn);
        let c = change("customer", json!({"after": {"id": ID, "email": "bad", "status": "zombie"}, "source": {"lsn": 1}, "op": "c"}));
        let out = run(&config, &[c]);
        assert_eq!(out[0], vec![Violation { rule: Rule::Schema, severity: Severity::Warn, reason: out[0][0].reason.clone() }]);
    }
}
