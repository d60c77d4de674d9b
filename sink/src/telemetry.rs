//! Traces and logs. One `tracing` subscriber feeds two outputs:
//! - OpenTelemetry spans (`tracing-opentelemetry`), exported over OTLP/HTTP (protobuf) when
//!   an endpoint is configured (`[telemetry] otlp_endpoint` or the standard
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`). Without one the
//!   spans are still created, so trace ids still reach the logs.
//! - JSON lines on stdout: timestamp, level, target, the fields of the enclosing spans,
//!   the event's own fields, and `trace_id` / `span_id` of the innermost span, so a log line
//!   leads to its trace.
//!
//! Incoming trace context is W3C `traceparent` (and `tracestate`) from Kafka headers.

use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::Deserialize;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// `[telemetry]`: where traces go and how much is logged.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Log filter in `tracing` syntax, e.g. `"info"` or `"info,sink=debug"` (debug logs one
    /// line per traced event). `RUST_LOG`, when set, wins.
    #[serde(default = "TelemetryConfig::default_log_level")]
    pub log_level: String,
    /// OTLP/HTTP base URL of a collector, e.g. `"http://otel-collector:4318"`; spans go to
    /// `<url>/v1/traces`. Absent: the standard `OTEL_EXPORTER_OTLP_*ENDPOINT` variables
    /// decide, and without those nothing is exported.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans (`OTEL_SERVICE_NAME` wins).
    #[serde(default = "TelemetryConfig::default_service_name")]
    pub service_name: String,
}

impl TelemetryConfig {
    fn default_log_level() -> String {
        "info,rdkafka=warn".into()
    }
    fn default_service_name() -> String {
        "cdc-sink".into()
    }
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self { log_level: Self::default_log_level(), otlp_endpoint: None, service_name: Self::default_service_name() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("[telemetry] log_level {0:?} is not a valid filter: {1}")]
    Filter(String, String),
    #[error("OTLP exporter: {0}")]
    Exporter(String),
    #[error("a global logger is already installed")]
    AlreadyInstalled,
}

/// Flushes and stops the span exporter when dropped (at the end of `main`).
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(error) = self.provider.shutdown() {
            eprintln!("sink: flushing spans at shutdown failed: {error}");
        }
    }
}

/// Where spans are exported, if anywhere: the config's URL (signal path appended) or the
/// standard environment variables, which the exporter then reads itself.
fn export_endpoint(config: &TelemetryConfig, env: &dyn Fn(&str) -> Option<String>) -> Option<Option<String>> {
    if let Some(url) = config.otlp_endpoint.as_deref().filter(|u| !u.trim().is_empty()) {
        let url = url.trim_end_matches('/');
        return Some(Some(if url.ends_with("/v1/traces") { url.to_string() } else { format!("{url}/v1/traces") }));
    }
    let set = |name: &str| env(name).is_some_and(|v| !v.trim().is_empty());
    (set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") || set("OTEL_EXPORTER_OTLP_ENDPOINT")).then_some(None)
}

/// Installs the global subscriber: JSON logs on stdout and spans for OpenTelemetry.
pub fn init(config: &TelemetryConfig) -> Result<TelemetryGuard, TelemetryError> {
    let env = |name: &str| std::env::var(name).ok();
    let filter = match env("RUST_LOG").filter(|v| !v.trim().is_empty()) {
        Some(value) => EnvFilter::try_new(&value).map_err(|e| TelemetryError::Filter(value, e.to_string()))?,
        None => EnvFilter::try_new(&config.log_level).map_err(|e| TelemetryError::Filter(config.log_level.clone(), e.to_string()))?,
    };
    let service_name = env("OTEL_SERVICE_NAME").filter(|v| !v.is_empty()).unwrap_or_else(|| config.service_name.clone());
    let resource = Resource::builder().with_service_name(service_name).with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))).build();
    let mut provider = SdkTracerProvider::builder().with_resource(resource);
    let exporting = export_endpoint(config, &env);
    if let Some(endpoint) = &exporting {
        let mut builder = opentelemetry_otlp::SpanExporter::builder().with_http().with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
        if let Some(url) = endpoint {
            builder = builder.with_endpoint(url.clone());
        }
        // The default client is reqwest's blocking one, used on the batch processor's own
        // thread (off the runtime); timeouts from OTEL_EXPORTER_OTLP_TIMEOUT.
        let exporter = builder.build().map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        provider = provider.with_batch_exporter(exporter);
    }
    let provider = provider.build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let tracer = provider.tracer("sink");
    tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(tracer).with_filter(EnvFilter::new("sink=info")))
        .with(tracing_subscriber::fmt::layer().fmt_fields(JsonFields::new()).event_format(JsonLines).with_filter(filter))
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    if let Some(endpoint) = exporting {
        // Only the URL, never the headers (OTEL_EXPORTER_OTLP_HEADERS may carry credentials).
        tracing::info!(message = "exporting spans over OTLP/HTTP", endpoint = endpoint.as_deref().unwrap_or("from OTEL_EXPORTER_OTLP_* environment"));
    }
    Ok(TelemetryGuard { provider })
}

/// W3C trace context headers of a Kafka record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceHeaders {
    pub traceparent: String,
    pub tracestate: Option<String>,
}

impl TraceHeaders {
    /// `traceparent` / `tracestate` among Kafka headers (UTF-8 values; others ignored).
    pub fn from_kafka<'a>(headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>) -> Option<Self> {
        let (mut parent, mut state) = (None, None);
        for (key, value) in headers {
            let text = value.and_then(|v| std::str::from_utf8(v).ok());
            if key.eq_ignore_ascii_case("traceparent") {
                parent = text;
            } else if key.eq_ignore_ascii_case("tracestate") {
                state = text;
            }
        }
        parent.map(|p| Self { traceparent: p.trim().to_string(), tracestate: state.map(str::to_string) })
    }
}

/// The W3C trace context carried by a Kafka record (`traceparent`, optional `tracestate`),
/// or None when absent or malformed.
pub fn remote_context(traceparent: &str, tracestate: Option<&str>) -> Option<Context> {
    use opentelemetry::propagation::TextMapPropagator as _;
    let mut carrier = std::collections::HashMap::with_capacity(2);
    carrier.insert("traceparent".to_string(), traceparent.to_string());
    if let Some(state) = tracestate {
        carrier.insert("tracestate".to_string(), state.to_string());
    }
    let cx = TraceContextPropagator::new().extract(&carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// One JSON object per line; span fields flattened (innermost wins), then the event's.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> std::fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert("timestamp".into(), chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true).into());
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("target".into(), meta.target().into());
        let mut innermost = None;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                if let Some(fields) = span.extensions().get::<FormattedFields<N>>() {
                    if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(fields) {
                        line.extend(map);
                    }
                }
                line.insert("span".into(), span.name().into());
                innermost = Some(span.id());
            }
        }
        if let Some(id) = innermost {
            // After the extensions above are released: the OTel layer takes them itself.
            let cx = tracing::dispatcher::get_default(|dispatch| tracing_opentelemetry::get_otel_context(&id, dispatch));
            if let Some(cx) = cx {
                let sc = cx.span().span_context().clone();
                if sc.is_valid() {
                    line.insert("trace_id".into(), sc.trace_id().to_string().into());
                    line.insert("span_id".into(), sc.span_id().to_string().into());
                }
            }
        }
        event.record(&mut JsonVisitor(&mut line));
        let mut text = Value::Object(line).to_string();
        text.push('\n');
        writer.write_str(&text)
    }
}

struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_url_wins_and_gets_the_signal_path() {
        let none = |_: &str| None;
        let config = TelemetryConfig { otlp_endpoint: Some("http://collector:4318/".into()), ..Default::default() };
        assert_eq!(export_endpoint(&config, &none), Some(Some("http://collector:4318/v1/traces".into())));
        let env = |name: &str| (name == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://x:4318".to_string());
        assert_eq!(export_endpoint(&TelemetryConfig::default(), &env), Some(None), "the exporter reads the variable itself");
        assert_eq!(export_endpoint(&TelemetryConfig::default(), &none), None, "nothing configured, nothing exported");
    }

    #[test]
    fn traceparent_headers_parse_or_are_ignored() {
        let cx = remote_context("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", Some("vendor=x")).expect("valid");
        assert_eq!(cx.span().span_context().trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(cx.span().span_context().span_id().to_string(), "00f067aa0ba902b7");
        assert!(cx.span().span_context().is_remote());
        assert!(remote_context("garbage", None).is_none());
        assert!(remote_context("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None).is_none());
    }
}
