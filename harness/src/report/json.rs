//! `report.json`: the model as pretty JSON, and reading it back with a schema check.

use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::model::{Report, SCHEMA_VERSION};

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("cannot read report {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("report {path} is not JSON: {source}")]
    NotJson { path: PathBuf, source: serde_json::Error },
    #[error("report {path} has no numeric `schema_version`: is it a harness report.json?")]
    NoSchemaVersion { path: PathBuf },
    #[error(
        "report {path} has schema_version {found}, this harness reads schema_version {}: \
         re-run or re-render it with a harness of the matching version",
        SCHEMA_VERSION
    )]
    SchemaMismatch { path: PathBuf, found: u64 },
    #[error("report {path} does not match schema_version {}: {source}", SCHEMA_VERSION)]
    Invalid { path: PathBuf, source: serde_json::Error },
}

/// Pretty JSON with a trailing newline (so the file diffs cleanly). The free-form JSON
/// inside the model (config, anomaly witnesses) is written with sorted keys: its order
/// would otherwise depend on whether some crate in the build enables serde_json's
/// `preserve_order`, and the same report must render to the same bytes in every build.
pub fn render(report: &Report) -> io::Result<String> {
    let mut report = report.clone();
    report.config = sorted(&report.config);
    for anomaly in &mut report.convergence.anomalies {
        anomaly.source_row = anomaly.source_row.as_ref().map(sorted);
        anomaly.target_record = anomaly.target_record.as_ref().map(sorted);
    }
    let mut text = serde_json::to_string_pretty(&report)?;
    text.push('\n');
    Ok(text)
}

fn sorted(value: &serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<(&String, &serde_json::Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k.clone(), sorted(v))).collect())
        }
        serde_json::Value::Array(items) => serde_json::Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

pub fn load(path: &Path) -> Result<Report, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io { path: path.into(), source })?;
    parse(&text, path)
}

/// Checks `schema_version` before the shape, so an old or newer report gets "wrong
/// version" rather than a confusing "missing field" error.
pub fn parse(text: &str, path: &Path) -> Result<Report, LoadError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|source| LoadError::NotJson { path: path.into(), source })?;
    let found = value.get("schema_version").and_then(serde_json::Value::as_u64).ok_or_else(|| LoadError::NoSchemaVersion { path: path.into() })?;
    if found != u64::from(SCHEMA_VERSION) {
        return Err(LoadError::SchemaMismatch { path: path.into(), found });
    }
    serde_json::from_value(value).map_err(|source| LoadError::Invalid { path: path.into(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::thresholds::representative_report;

    #[test]
    fn round_trips() {
        let report = representative_report();
        let text = render(&report).expect("serializes");
        assert!(text.ends_with("}\n"));
        assert_eq!(parse(&text, Path::new("r.json")).expect("parses"), report);
    }

    #[test]
    fn refuses_other_schema_versions_before_reading_the_shape() {
        let err = parse(r#"{"schema_version": 99}"#, Path::new("old.json")).expect_err("refused");
        assert!(matches!(err, LoadError::SchemaMismatch { found: 99, .. }), "{err:?}");
        assert!(err.to_string().contains("old.json has schema_version 99"), "{err}");
        let err = parse(r#"{"run": {}}"#, Path::new("x.json")).expect_err("refused");
        assert!(matches!(err, LoadError::NoSchemaVersion { .. }));
        let err = parse("not json", Path::new("x.json")).expect_err("refused");
        assert!(matches!(err, LoadError::NotJson { .. }));
        let err = parse(r#"{"schema_version": 2}"#, Path::new("x.json")).expect_err("refused");
        assert!(matches!(err, LoadError::Invalid { .. }));
    }
}
