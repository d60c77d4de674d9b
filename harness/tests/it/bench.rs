//! `harness bench sink` end to end on a small corpus: every figure is measured (none absent,
//! none zero), and the apply pass really wrote every key.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_sink_measures_every_figure_in_one_run() -> anyhow::Result<()> {
    let result = harness::bench::sink::run(3000, 1, 3000).await?;
    let figures = [
        ("events_per_sec", result.events_per_sec),
        ("consumer_read_per_sec", result.consumer_read_per_sec),
        ("apply_events_per_sec", result.apply_events_per_sec),
        ("baseline_events_per_sec", result.baseline_events_per_sec),
        ("audit_events_per_sec", result.audit_events_per_sec),
        ("apply_audit_events_per_sec", result.apply_audit_events_per_sec),
        ("dlq_letters_per_sec", result.dlq_letters_per_sec),
        ("dlq_raw_produce_per_sec", result.dlq_raw_produce_per_sec),
        ("dlq_raw_produce_no_headers_per_sec", result.dlq_raw_produce_no_headers_per_sec),
    ];
    for (name, value) in figures {
        assert!(value.is_finite() && value > 0.0, "{name} = {value}");
    }
    assert_eq!(result.events, 3000);
    let json = serde_json::to_value(&result)?;
    for field in [
        "ratio_to_consumer_read",
        "apply_ratio_to_baseline",
        "audit_ratio",
        "apply_audit_ratio",
        "ratio_to_baseline",
        "decode_seconds",
        "dlq_ratio_to_raw_produce",
    ] {
        assert!(json[field].as_f64().is_some_and(|v| v > 0.0), "{field} missing in {json}");
    }
    Ok(())
}
