//! How far the source's and the target's clocks are from the harness's. End-to-end
//! latency is the target's apply time minus the source's commit time: two clocks. On one
//! machine they are the same clock; against an external stack they are not, and a skew of
//! 50 ms is a 50 ms error in every latency the report gives.

use std::time::Instant;

use chrono::{DateTime, Utc};

/// Readings per server; the one with the shortest round trip is kept (NTP's rule: its
/// midpoint is the least uncertain).
const READINGS: usize = 5;
/// Above this, the run warns that its latencies carry the skew.
pub const WARN_SKEW_MS: f64 = 50.0;

/// The server's clock minus the harness's at the midpoint of the fastest round trip, in ms,
/// with that round trip (the measurement's uncertainty is half of it).
pub async fn offset_ms(client: &tokio_postgres::Client) -> Result<(f64, f64), tokio_postgres::Error> {
    let mut best: Option<(f64, f64)> = None;
    for _ in 0..READINGS {
        let sent = Instant::now();
        let sent_wall = Utc::now();
        let server: DateTime<Utc> = client.query_one("SELECT clock_timestamp()", &[]).await?.get(0);
        let rtt = sent.elapsed();
        let midpoint = sent_wall + chrono::Duration::from_std(rtt / 2).unwrap_or_default();
        let offset = (server - midpoint).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0;
        let rtt_ms = rtt.as_secs_f64() * 1000.0;
        if best.is_none_or(|(_, r)| rtt_ms < r) {
            best = Some((offset, rtt_ms));
        }
    }
    Ok(best.expect("at least one reading"))
}

/// The skew e2e latency carries: the target's clock minus the source's.
pub fn skew_ms(source_offset: f64, target_offset: f64) -> f64 {
    target_offset - source_offset
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skew_is_the_target_clock_minus_the_source_clock() {
        // Target 70 ms ahead of the harness, source 10 ms behind: every e2e latency reads
        // 80 ms long.
        assert_eq!(skew_ms(-10.0, 70.0), 80.0);
        assert!(skew_ms(-10.0, 70.0).abs() > WARN_SKEW_MS);
    }
}
