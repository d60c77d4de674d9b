//! Canonical forms of column values, so that the source and any target compare equal when
//! they hold the same value however each one spells it: uuid as lowercase hyphenated
//! text, numeric without trailing zeros, timestamps as UTC microseconds since the epoch,
//! booleans as true/false, integers without leading zeros or '+'. Null and missing are
//! the same (`None`).
//!
//! BSON values (a MongoDB target) are first read as the text the source would spell (see
//! `bson_text`), then canonicalized like any text, so both targets share one comparison.
//! BSON dates hold milliseconds: against MongoDB, timestamps compare at
//! `TimestampPrecision::Millis` (both sides floored to the millisecond, as the sink does).

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use mongodb::bson::Bson;
use mongodb::bson::spec::BinarySubtype;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    Uuid,
    Text,
    Numeric,
    Timestamptz,
    Bool,
    Int,
    /// json/jsonb: compared as parsed JSON (key order and white space do not matter).
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not a valid {ty:?}")]
pub struct CanonicalError {
    pub ty: ColumnType,
    pub value: String,
}

/// How finely timestamps compare: a target can hold less than the source's microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampPrecision {
    Micros,
    /// BSON dates: UTC milliseconds.
    Millis,
}

impl TimestampPrecision {
    /// `micros` floored to this precision (flooring, as `timestamp_millis` does when the
    /// sink writes a BSON date, also for instants before the epoch).
    fn truncate(self, micros: i64) -> i64 {
        match self {
            Self::Micros => micros,
            Self::Millis => micros.div_euclid(1000) * 1000,
        }
    }
}

/// Canonical text of `raw` (as PostgreSQL's text output or a JSON scalar renders it).
pub fn canonicalize(ty: ColumnType, raw: &str) -> Result<String, CanonicalError> {
    canonicalize_at(ty, raw, TimestampPrecision::Micros)
}

/// `canonicalize` with timestamps compared at `precision`.
pub fn canonicalize_at(ty: ColumnType, raw: &str, precision: TimestampPrecision) -> Result<String, CanonicalError> {
    let bad = || CanonicalError { ty, value: raw.chars().take(80).collect() };
    match ty {
        ColumnType::Text => Ok(raw.to_string()),
        ColumnType::Uuid => uuid::Uuid::parse_str(raw.trim()).map(|u| u.hyphenated().to_string()).map_err(|_| bad()),
        // Floats print with an exponent when very large or small (`1e-07`).
        ColumnType::Numeric => canonical_numeric(raw.trim()).or_else(|| without_exponent(raw.trim()).and_then(|t| canonical_numeric(&t))).ok_or_else(bad),
        ColumnType::Timestamptz => timestamp_micros(raw.trim()).map(|m| precision.truncate(m).to_string()).ok_or_else(bad),
        ColumnType::Bool => match raw.trim() {
            "t" | "true" | "TRUE" | "True" | "1" => Ok("true".into()),
            "f" | "false" | "FALSE" | "False" | "0" => Ok("false".into()),
            _ => Err(bad()),
        },
        ColumnType::Int => raw.trim().parse::<i64>().map(|v| v.to_string()).map_err(|_| bad()),
        ColumnType::Json => serde_json::from_str::<serde_json::Value>(raw).map(|v| canonical_json(&v)).map_err(|_| bad()),
    }
}

/// JSON text with object keys sorted at every level, whatever order the map type keeps.
fn canonical_json(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            let inner: Vec<String> = entries.iter().map(|(k, v)| format!("{}:{}", Value::String((*k).clone()), canonical_json(v))).collect();
            format!("{{{}}}", inner.join(","))
        }
        Value::Array(items) => format!("[{}]", items.iter().map(canonical_json).collect::<Vec<_>>().join(",")),
        other => other.to_string(),
    }
}

/// Canonical form of a possibly null value (`None`: null or missing).
pub fn canonical_text(ty: ColumnType, raw: Option<&str>, precision: TimestampPrecision) -> Result<Option<String>, CanonicalError> {
    raw.map(|r| canonicalize_at(ty, r, precision)).transpose()
}

/// Canonical form of a BSON value (`None`: null, undefined or missing): the canonical form
/// of what it spells (`bson_text`). Values compare by what they spell, not by BSON type:
/// the sink itself stores a decimal that Decimal128 cannot hold as a string.
pub fn canonicalize_bson(ty: ColumnType, value: Option<&Bson>, precision: TimestampPrecision) -> Result<Option<String>, CanonicalError> {
    canonical_text(ty, value.and_then(bson_text).as_deref(), precision)
}

/// The text a BSON value spells, in a form `canonicalize` reads: strings as they are,
/// uuid binaries hyphenated, ObjectIds as hex, Decimal128 without exponent, dates as
/// RFC 3339 UTC with milliseconds, numbers in decimal. `None` for null and undefined.
/// Used for reports too, so it stays readable rather than canonical.
pub fn bson_text(value: &Bson) -> Option<String> {
    Some(match value {
        Bson::Null | Bson::Undefined => return None,
        Bson::String(s) => s.clone(),
        Bson::Boolean(b) => b.to_string(),
        Bson::Int32(i) => i.to_string(),
        Bson::Int64(i) => i.to_string(),
        // Rust prints f64 without exponent, the shortest text that reads back the same.
        Bson::Double(d) => d.to_string(),
        Bson::Decimal128(d) => {
            let text = d.to_string();
            without_exponent(&text).unwrap_or(text)
        }
        Bson::DateTime(d) => match DateTime::<Utc>::from_timestamp_millis(d.timestamp_millis()) {
            Some(t) => t.to_rfc3339_opts(SecondsFormat::Millis, true),
            None => d.timestamp_millis().to_string(),
        },
        Bson::Binary(b) if matches!(b.subtype, BinarySubtype::Uuid | BinarySubtype::UuidOld) => match uuid::Uuid::from_slice(&b.bytes) {
            Ok(u) => u.hyphenated().to_string(),
            Err(_) => value.clone().into_relaxed_extjson().to_string(),
        },
        Bson::ObjectId(o) => o.to_hex(),
        other => other.clone().into_relaxed_extjson().to_string(),
    })
}

/// `1.05E+3` -> `1050`, `1E-7` -> `0.0000001` (Decimal128's scientific notation); `None`
/// for text without an exponent or that is not a decimal (NaN, Infinity).
fn without_exponent(s: &str) -> Option<String> {
    let (mantissa, exponent) = s.split_once(['E', 'e'])?;
    let exponent: i64 = exponent.parse().ok()?;
    let (sign, mantissa) = mantissa.strip_prefix('-').map_or(("", mantissa), |m| ("-", m));
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{int_part}{frac_part}");
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Where the decimal point falls within `digits` once the exponent is applied.
    let point = i64::try_from(int_part.len()).ok()?.checked_add(exponent)?;
    let len = i64::try_from(digits.len()).ok()?;
    Some(if point <= 0 {
        format!("{sign}0.{}{digits}", "0".repeat(usize::try_from(-point).ok()?))
    } else if point >= len {
        format!("{sign}{digits}{}", "0".repeat(usize::try_from(point - len).ok()?))
    } else {
        let (a, b) = digits.split_at(usize::try_from(point).ok()?);
        format!("{sign}{a}.{b}")
    })
}

/// Decimal text without exponent, leading zeros, trailing fractional zeros, or a '-' on zero.
fn canonical_numeric(s: &str) -> Option<String> {
    let (negative, digits) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    if !int_part.bytes().chain(frac_part.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let int_part = int_part.trim_start_matches('0');
    let frac_part = frac_part.trim_end_matches('0');
    let int_part = if int_part.is_empty() { "0" } else { int_part };
    let is_zero = int_part == "0" && frac_part.is_empty();
    let mut out = String::with_capacity(s.len());
    if negative && !is_zero {
        out.push('-');
    }
    out.push_str(int_part);
    if !frac_part.is_empty() {
        out.push('.');
        out.push_str(frac_part);
    }
    Some(out)
}

/// UTC microseconds since the epoch from PostgreSQL's text output (`2024-01-02
/// 03:04:05.123456+00`), ISO-8601 (`2024-01-02T03:04:05.123456Z`), or epoch numbers.
pub fn timestamp_micros(s: &str) -> Option<i64> {
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Some(dt.with_timezone(&Utc).timestamp_micros());
    }
    for fmt in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%:z"] {
        if let Ok(dt) = DateTime::parse_from_str(s, fmt) {
            return Some(dt.with_timezone(&Utc).timestamp_micros());
        }
    }
    for fmt in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(naive.and_utc().timestamp_micros());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn spellings_of_the_same_value_agree() {
        let same = |ty, a: &str, b: &str| assert_eq!(canonicalize(ty, a).unwrap(), canonicalize(ty, b).unwrap(), "{a} vs {b}");
        same(ColumnType::Numeric, "10.50", "10.5");
        same(ColumnType::Numeric, "-0.00", "0");
        same(ColumnType::Numeric, "007.10", "7.1");
        same(ColumnType::Uuid, "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", "a0eebc999c0b4ef8bb6d6bb9bd380a11");
        same(ColumnType::Timestamptz, "2024-01-02 03:04:05.1234+00", "2024-01-02T03:04:05.123400Z");
        same(ColumnType::Timestamptz, "2024-01-02 05:04:05+02", "2024-01-02T03:04:05Z");
        same(ColumnType::Bool, "t", "true");
        same(ColumnType::Int, "+42", "42");
        same(ColumnType::Numeric, "1e-07", "0.0000001");
        same(ColumnType::Json, r#"{"b": [1, {"y": 2, "x": 1}], "a": null}"#, r#"{"a":null,"b":[1,{"x":1,"y":2}]}"#);
        assert_ne!(canonicalize(ColumnType::Json, r#"{"a": 1}"#).unwrap(), canonicalize(ColumnType::Json, r#"{"a": 2}"#).unwrap());
    }

    #[test]
    fn garbage_is_an_error_not_a_value() {
        assert!(canonicalize(ColumnType::Numeric, "1.2.3").is_err());
        assert!(canonicalize(ColumnType::Numeric, "").is_err());
        assert!(canonicalize(ColumnType::Uuid, "not-a-uuid").is_err());
        assert!(canonicalize(ColumnType::Timestamptz, "yesterday").is_err());
        assert!(canonicalize(ColumnType::Bool, "maybe").is_err());
    }

    fn bson(ty: ColumnType, value: Bson) -> Option<String> {
        canonicalize_bson(ty, Some(&value), TimestampPrecision::Millis).unwrap()
    }

    fn text(ty: ColumnType, raw: &str) -> Option<String> {
        Some(canonicalize_at(ty, raw, TimestampPrecision::Millis).unwrap())
    }

    fn decimal(s: &str) -> Bson {
        Bson::Decimal128(s.parse().unwrap())
    }

    #[test]
    fn bson_spellings_agree_with_the_source_text() {
        use mongodb::bson::{Binary, DateTime as BsonDate, oid::ObjectId};
        assert_eq!(bson(ColumnType::Numeric, decimal("10.50")), text(ColumnType::Numeric, "10.5"));
        assert_eq!(bson(ColumnType::Numeric, decimal("1.05E+3")), text(ColumnType::Numeric, "1050"));
        assert_eq!(bson(ColumnType::Numeric, decimal("1E-7")), text(ColumnType::Numeric, "0.0000001"));
        assert_eq!(bson(ColumnType::Numeric, decimal("-0.00")), text(ColumnType::Numeric, "0"));
        // The sink's fallback for decimals Decimal128 cannot hold.
        assert_eq!(bson(ColumnType::Numeric, Bson::String("10.50".into())), text(ColumnType::Numeric, "10.5"));
        assert_eq!(bson(ColumnType::Numeric, Bson::Double(0.25)), text(ColumnType::Numeric, "0.250"));
        let u = uuid::Uuid::from_u128(0xa0ee_bc99_9c0b_4ef8_bb6d_6bb9_bd38_0a11);
        let binary = Bson::Binary(Binary { subtype: BinarySubtype::Uuid, bytes: u.as_bytes().to_vec() });
        assert_eq!(bson(ColumnType::Uuid, binary), text(ColumnType::Uuid, "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"));
        let oid = ObjectId::parse_str("65a1b2c3d4e5f60718293a4b").unwrap();
        assert_eq!(bson(ColumnType::Text, Bson::ObjectId(oid)).as_deref(), Some("65a1b2c3d4e5f60718293a4b"));
        let date = Bson::DateTime(BsonDate::from_millis(1_704_164_645_123));
        assert_eq!(bson_text(&date).as_deref(), Some("2024-01-02T03:04:05.123Z"));
        assert_eq!(bson(ColumnType::Timestamptz, date), text(ColumnType::Timestamptz, "2024-01-02 04:04:05.123456+01"));
        for int in [Bson::Int32(42), Bson::Int64(42), Bson::Double(42.0)] {
            assert_eq!(bson(ColumnType::Int, int), text(ColumnType::Int, "42"));
        }
        assert_eq!(bson(ColumnType::Bool, Bson::Boolean(false)), text(ColumnType::Bool, "f"));
    }

    #[test]
    fn null_undefined_and_missing_are_one_thing() {
        for ty in [ColumnType::Uuid, ColumnType::Text, ColumnType::Numeric, ColumnType::Timestamptz, ColumnType::Bool, ColumnType::Int] {
            for value in [None, Some(&Bson::Null), Some(&Bson::Undefined)] {
                assert_eq!(canonicalize_bson(ty, value, TimestampPrecision::Millis), Ok(None), "{ty:?} {value:?}");
            }
            assert_eq!(canonical_text(ty, None, TimestampPrecision::Micros), Ok(None));
        }
        // An empty string is a value, not a null.
        assert_eq!(bson(ColumnType::Text, Bson::String(String::new())), Some(String::new()));
    }

    #[test]
    fn bson_values_that_are_not_the_column_type_are_errors() {
        let p = TimestampPrecision::Millis;
        assert!(canonicalize_bson(ColumnType::Int, Some(&Bson::Double(3.5)), p).is_err());
        assert!(canonicalize_bson(ColumnType::Numeric, Some(&decimal("NaN")), p).is_err());
        assert!(canonicalize_bson(ColumnType::Numeric, Some(&Bson::Double(f64::INFINITY)), p).is_err());
        assert!(canonicalize_bson(ColumnType::Uuid, Some(&Bson::Int32(1)), p).is_err());
        assert!(canonicalize_bson(ColumnType::Timestamptz, Some(&Bson::Boolean(true)), p).is_err());
        assert!(canonicalize_bson(ColumnType::Bool, Some(&Bson::Document(Default::default())), p).is_err());
    }

    #[test]
    fn precision_floors_timestamps_also_before_the_epoch() {
        let at = |raw, p| canonicalize_at(ColumnType::Timestamptz, raw, p).unwrap();
        assert_eq!(at("1969-12-31 23:59:59.9995+00", TimestampPrecision::Millis), "-1000");
        assert_eq!(at("1969-12-31 23:59:59.9995+00", TimestampPrecision::Micros), "-500");
        assert_eq!(at("2024-01-02 03:04:05.123999+00", TimestampPrecision::Millis), at("2024-01-02T03:04:05.123Z", TimestampPrecision::Micros));
    }

    proptest! {
        #[test]
        fn bson_uuid_strings_and_binaries_agree(bytes in any::<[u8; 16]>()) {
            let u = uuid::Uuid::from_bytes(bytes);
            let canonical = Some(u.hyphenated().to_string());
            let binary = mongodb::bson::Binary { subtype: BinarySubtype::Uuid, bytes: bytes.to_vec() };
            prop_assert_eq!(bson(ColumnType::Uuid, Bson::Binary(binary)), canonical.clone());
            prop_assert_eq!(bson(ColumnType::Uuid, Bson::String(u.to_string())), canonical.clone());
            prop_assert_eq!(bson(ColumnType::Uuid, Bson::String(u.simple().to_string().to_uppercase())), canonical);
        }

        #[test]
        fn bson_decimals_agree_with_source_text_in_any_notation(units in any::<i64>(), scale in 0u32..12, extra_zeros in 0usize..4) {
            // The source's text for units * 10^-scale, with trailing zeros as numeric(p, s) prints them.
            let digits = units.unsigned_abs().to_string();
            let scale = scale as usize;
            let padded = format!("{}{digits}", "0".repeat((scale + 1).saturating_sub(digits.len())));
            let (int_part, frac_part) = padded.split_at(padded.len() - scale);
            let sign = if units < 0 { "-" } else { "" };
            let plain = if scale == 0 { format!("{sign}{int_part}") } else { format!("{sign}{int_part}.{frac_part}") };
            let source = text(ColumnType::Numeric, &format!("{plain}{}", if scale > 0 { "0".repeat(extra_zeros) } else { String::new() }));
            prop_assert_eq!(bson(ColumnType::Numeric, decimal(&plain)), source.clone());
            // The same value in scientific notation (as Decimal128 prints large exponents).
            let scientific = format!("{sign}{digits}E-{scale}");
            prop_assert_eq!(bson(ColumnType::Numeric, decimal(&scientific)), source.clone());
            // A different value never agrees.
            let other = format!("{sign}{}E-{scale}", units.unsigned_abs() as u128 + 1);
            prop_assert_ne!(bson(ColumnType::Numeric, decimal(&other)), source);
        }

        #[test]
        fn bson_dates_agree_with_source_timestamps_at_milliseconds(micros in -2_208_988_800_000_000i64..4_102_444_800_000_000, offset_h in -12i32..=12) {
            let utc = DateTime::<Utc>::from_timestamp_micros(micros).unwrap();
            let offset = chrono::FixedOffset::east_opt(offset_h * 3600).unwrap();
            let pg_text = utc.with_timezone(&offset).format("%Y-%m-%d %H:%M:%S%.6f%:z").to_string();
            // What the sink writes: the instant's millisecond floor.
            let date = Bson::DateTime(mongodb::bson::DateTime::from_millis(utc.timestamp_millis()));
            prop_assert_eq!(bson(ColumnType::Timestamptz, date.clone()), text(ColumnType::Timestamptz, &pg_text));
            let a_millisecond_later = Bson::DateTime(mongodb::bson::DateTime::from_millis(utc.timestamp_millis() + 1));
            prop_assert_ne!(bson(ColumnType::Timestamptz, a_millisecond_later), text(ColumnType::Timestamptz, &pg_text));
            // At microsecond precision they agree only when the source has no sub-millisecond part.
            let micro = canonicalize_bson(ColumnType::Timestamptz, Some(&date), TimestampPrecision::Micros).unwrap();
            prop_assert_eq!(micro == Some(canonicalize(ColumnType::Timestamptz, &pg_text).unwrap()), micros.rem_euclid(1000) == 0);
        }

        #[test]
        fn bson_integers_agree_whatever_their_width(i in any::<i32>()) {
            let source = text(ColumnType::Int, &i.to_string());
            prop_assert_eq!(bson(ColumnType::Int, Bson::Int32(i)), source.clone());
            prop_assert_eq!(bson(ColumnType::Int, Bson::Int64(i64::from(i))), source.clone());
            prop_assert_eq!(bson(ColumnType::Int, Bson::Double(f64::from(i))), source.clone());
            prop_assert_ne!(bson(ColumnType::Int, Bson::Int64(i64::from(i) + 1)), source);
        }

        #[test]
        fn bson_strings_are_text_verbatim(s in ".*") {
            prop_assert_eq!(bson(ColumnType::Text, Bson::String(s.clone())), Some(s));
        }
    }

    proptest! {
        #[test]
        fn numeric_is_scale_insensitive_and_exact(units in -10_000_000_000i64..10_000_000_000, extra_zeros in 0usize..4) {
            let plain = format!("{}.{:02}", units / 100, (units % 100).abs());
            let plain = if units < 0 && units / 100 == 0 { format!("-{plain}") } else { plain };
            let padded = format!("{plain}{}", "0".repeat(extra_zeros));
            prop_assert_eq!(canonicalize(ColumnType::Numeric, &plain).unwrap(), canonicalize(ColumnType::Numeric, &padded).unwrap());
            // Different values never collide.
            let other = format!("{}.{:02}", (units + 1) / 100, ((units + 1) % 100).abs());
            if units >= 0 {
                prop_assert_ne!(canonicalize(ColumnType::Numeric, &plain).unwrap(), canonicalize(ColumnType::Numeric, &other).unwrap());
            }
        }

        #[test]
        fn timestamps_agree_across_offsets_and_formats(micros in 0i64..4_102_444_800_000_000, offset_h in -12i32..=12) {
            let utc = DateTime::<Utc>::from_timestamp_micros(micros).unwrap();
            let offset = chrono::FixedOffset::east_opt(offset_h * 3600).unwrap();
            let pg_text = utc.with_timezone(&offset).format("%Y-%m-%d %H:%M:%S%.6f%:z").to_string();
            let iso = utc.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            prop_assert_eq!(timestamp_micros(&pg_text), Some(micros));
            prop_assert_eq!(timestamp_micros(&iso), Some(micros));
        }

        #[test]
        fn uuid_case_and_hyphens_do_not_matter(bytes in any::<[u8; 16]>()) {
            let u = uuid::Uuid::from_bytes(bytes);
            prop_assert_eq!(canonicalize(ColumnType::Uuid, &u.simple().to_string().to_uppercase()).unwrap(), u.hyphenated().to_string());
        }

        #[test]
        fn text_is_kept_verbatim(s in ".*") {
            prop_assert_eq!(canonicalize(ColumnType::Text, &s).unwrap(), s);
        }
    }
}
