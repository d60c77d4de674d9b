//! Reading the sink's `/metrics` (Prometheus text format).

use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the samples of a Prometheus text exposition (comments and bad lines skipped).
pub fn parse(text: &str) -> Vec<Series> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|line| {
            let (head, value) = line.rsplit_once(' ')?;
            let value: f64 = value.trim().parse().ok()?;
            let (name, labels) = match head.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)),
                None => (head, BTreeMap::new()),
            };
            Some(Series { name: name.trim().to_string(), labels, value })
        })
        .collect()
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(key.trim_start_matches(',').trim().to_string(), value);
        rest = &after[end..];
    }
    out
}

/// Sum of every sample of `name` (all label sets).
pub fn sum(series: &[Series], name: &str) -> f64 {
    series.iter().filter(|s| s.name == name).map(|s| s.value).sum()
}

/// `name` summed per value of `label`.
pub fn by_label(series: &[Series], name: &str, label: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for s in series.iter().filter(|s| s.name == name) {
        *out.entry(s.labels.get(label).cloned().unwrap_or_default()).or_default() += s.value;
    }
    out
}

pub async fn scrape(http: &str) -> Result<Vec<Series>, String> {
    let text = crate::http::client()
        .get(format!("{http}/metrics"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .map_err(|e| crate::http::error_text(&e))?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    Ok(parse(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labelled_and_plain_samples() {
        let text = "# HELP x\n# TYPE sink_events_processed_total counter\nsink_events_processed_total{entity=\"orders\",op=\"u\"} 3\nsink_events_processed_total{entity=\"customer\",op=\"c\"} 4\nsink_up 1\nsink_validation_failed_total{rule=\"email\\\"x\",severity=\"reject\"} 2\n";
        let s = parse(text);
        assert_eq!(sum(&s, "sink_events_processed_total"), 7.0);
        assert_eq!(sum(&s, "sink_up"), 1.0);
        assert_eq!(by_label(&s, "sink_validation_failed_total", "rule").get("email\"x"), Some(&2.0));
    }
}
