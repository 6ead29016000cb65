//! OTLP traces of finished probes: one trace per probe attempt, built from
//! the [`ProbeReport`] after the probe is over.
//!
//! A span here records a measurement already made; it never adds a clock of
//! its own. The root span `probe` starts at the report's `started_at`; each
//! step becomes a child span whose start and end are the report's
//! `start_ms` and `ms` laid on the wall clock of the attempt that ran it, so
//! a step of 2.3 ms in the report is 2.3 ms in Jaeger or Tempo. Submissions
//! that were deferred and retried (greylisting) are span events on the root,
//! at the moment each attempt started, with the server's reply.
//!
//! Names follow the OpenTelemetry semantic conventions where one exists
//! (`server.address`, `server.port`, `network.protocol.name`,
//! `tls.protocol.version`, `tls.cipher`, `error.type`) and `mailloop.*`
//! otherwise. No credential ever goes into an attribute: user names and
//! passwords are not in the report, and header values are [`Secret`]s.
//!
//! Export is off unless an endpoint is set (`[telemetry] endpoint` or
//! `OTEL_EXPORTER_OTLP_ENDPOINT`): then the SDK's batch processor queues
//! finished spans (bounded; full means dropped, never waiting) and a
//! background thread ships them over OTLP/gRPC or OTLP/HTTP protobuf. A
//! collector that is down costs a warning a minute, never a probe.

use mailloop_common::config::{CheckConfig, ConfigIssue, Table};
use mailloop_common::{ProbeReport, Secret, StepName};
use opentelemetry::trace::{Span, SpanKind, Status, TraceContextExt, Tracer, TracerProvider};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider, SpanData, SpanExporter};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// Finished spans waiting for export; past this, new ones are dropped.
pub const MAX_QUEUED_SPANS: usize = 4096;
/// How long one export may take before it is abandoned.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// At most one warning about a failing collector per this interval.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The OTLP wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (default port 4317).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (default port 4318, path `/v1/traces`).
    HttpProtobuf,
}

impl Protocol {
    /// Parses the `OTEL_EXPORTER_OTLP_PROTOCOL` spelling.
    pub fn parse(s: &str) -> Option<Protocol> {
        match s.trim() {
            "grpc" => Some(Protocol::Grpc),
            "http/protobuf" => Some(Protocol::HttpProtobuf),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// Where and how to send traces: the `[telemetry]` table, then the standard
/// `OTEL_*` environment variables on top.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TelemetryConfig {
    /// Base URL of the collector (`http://collector:4317`); none: export off.
    pub endpoint: Option<String>,
    /// Default: gRPC.
    pub protocol: Option<Protocol>,
    /// Sent with every export (an API key, a tenant id). The exporter adds
    /// `OTEL_EXPORTER_OTLP_HEADERS` on top, which wins per header.
    pub headers: Vec<(String, Secret)>,
    /// `service.name`; default `mailloop-agent`.
    pub service_name: Option<String>,
    /// Extra resource attributes (`deployment.environment = "prod"`).
    pub resource_attributes: Vec<(String, String)>,
}

impl TelemetryConfig {
    /// Reads a `[telemetry]` table (`t` may be [`Table::empty`]); every bad
    /// key becomes an issue.
    pub fn from_table(t: &mut Table<'_>, issues: &mut Vec<ConfigIssue>) -> Option<TelemetryConfig> {
        let endpoint = t.string(issues, "endpoint");
        let endpoint = match endpoint {
            Some(Some(e)) => match check_endpoint(&e) {
                Ok(()) => Some(Some(e)),
                Err(m) => {
                    issues.push(ConfigIssue { path: t.path_of("endpoint"), message: m });
                    None
                }
            },
            other => other,
        };
        let protocol = match t.string(issues, "protocol") {
            Some(Some(p)) => match Protocol::parse(&p) {
                Some(p) => Some(Some(p)),
                None => {
                    issues.push(ConfigIssue { path: t.path_of("protocol"), message: format!("{p:?}: use \"grpc\" or \"http/protobuf\"") });
                    None
                }
            },
            Some(None) => Some(None),
            None => None,
        };
        let service_name = t.string(issues, "service_name");
        let headers = string_map(t, issues, "headers").map(|m| m.into_iter().map(|(k, v)| (k, Secret::new(v))).collect());
        let resource_attributes = string_map(t, issues, "resource_attributes");
        Some(TelemetryConfig {
            endpoint: endpoint?,
            protocol: protocol?,
            headers: headers?,
            service_name: service_name?,
            resource_attributes: resource_attributes?,
        })
    }

    /// Applies the standard variables over the table, as OpenTelemetry users
    /// expect: `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_PROTOCOL`,
    /// `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` (`k=v,k=v`).
    /// (`OTEL_EXPORTER_OTLP_HEADERS` is merged by the exporter itself.)
    pub fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>, issues: &mut Vec<ConfigIssue>) {
        let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        if let Some(e) = set("OTEL_EXPORTER_OTLP_ENDPOINT") {
            match check_endpoint(&e) {
                Ok(()) => self.endpoint = Some(e),
                Err(m) => issues.push(ConfigIssue { path: "OTEL_EXPORTER_OTLP_ENDPOINT".into(), message: m }),
            }
        }
        if let Some(p) = set("OTEL_EXPORTER_OTLP_PROTOCOL") {
            match Protocol::parse(&p) {
                Some(p) => self.protocol = Some(p),
                None => issues.push(ConfigIssue {
                    path: "OTEL_EXPORTER_OTLP_PROTOCOL".into(),
                    message: format!("{p:?}: mailloop exports \"grpc\" or \"http/protobuf\""),
                }),
            }
        }
        if let Some(attrs) = set("OTEL_RESOURCE_ATTRIBUTES") {
            for pair in attrs.split(',').filter(|p| !p.trim().is_empty()) {
                match pair.split_once('=') {
                    Some((k, v)) if !k.trim().is_empty() => {
                        let (k, v) = (k.trim().to_string(), percent_decode(v.trim()));
                        self.resource_attributes.retain(|(old, _)| *old != k);
                        self.resource_attributes.push((k, v));
                    }
                    _ => {
                        issues.push(ConfigIssue { path: "OTEL_RESOURCE_ATTRIBUTES".into(), message: format!("{pair:?} is not key=value") })
                    }
                }
            }
        }
        if let Some(name) = set("OTEL_SERVICE_NAME") {
            self.service_name = Some(name);
        }
    }

    /// The validated settings from the environment alone (`mailloop-agent probe`).
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<TelemetryConfig, Vec<ConfigIssue>> {
        let mut issues = Vec::new();
        let mut c = TelemetryConfig::default();
        c.apply_env(env, &mut issues);
        if issues.is_empty() { Ok(c) } else { Err(issues) }
    }
}

fn check_endpoint(e: &str) -> Result<(), String> {
    match e.parse::<tonic::transport::Uri>() {
        Ok(u) if matches!(u.scheme_str(), Some("http")) && u.host().is_some_and(|h| !h.is_empty()) => Ok(()),
        Ok(u) if matches!(u.scheme_str(), Some("https")) => {
            Err(format!("{e:?}: https:// is not supported yet; send to a local collector over http:// (it forwards with TLS)"))
        }
        _ => Err(format!("{e:?} is not a collector URL; write e.g. \"http://127.0.0.1:4317\"")),
    }
}

/// A table of string values (`headers`, `resource_attributes`).
fn string_map(t: &mut Table<'_>, issues: &mut Vec<ConfigIssue>, key: &'static str) -> Option<Vec<(String, String)>> {
    let path = t.path_of(key);
    match t.get(key) {
        None => Some(Vec::new()),
        Some(Value::Object(map)) => {
            let mut out = Vec::new();
            let mut ok = true;
            for (k, v) in map {
                match v {
                    Value::String(s) => out.push((k.clone(), s.clone())),
                    other => {
                        issues.push(ConfigIssue { path: format!("{path}.{k}"), message: format!("expected a string, found {other}") });
                        ok = false;
                    }
                }
            }
            ok.then_some(out)
        }
        Some(other) => {
            issues.push(ConfigIssue { path, message: format!("expected a table of strings, found {other}") });
            None
        }
    }
}

/// `%XX` decoding of an `OTEL_RESOURCE_ATTRIBUTES` value.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 3 <= bytes.len() {
            if let Some(b) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Who is exporting: the resource every span carries.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `service.instance.id`: the agent's name (host name for a one-shot probe).
    pub instance: String,
    /// `mailloop.region`, when the agent has one.
    pub region: Option<String>,
}

/// The trace of a recorded probe, to find it in the tracing backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceIds {
    /// 32 hex digits.
    pub trace_id: String,
    /// The root span, 16 hex digits.
    pub span_id: String,
}

/// A running exporter. Cheap to share behind an `Arc`.
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    region: Option<String>,
    /// The gRPC client's own runtime, so export never runs on (or waits
    /// for) the runtime that probes, and works from a one-shot command.
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").field("region", &self.region).finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Starts exporting if `config` names an endpoint; `Ok(None)` otherwise
    /// (export off: nothing is built, no thread started).
    pub fn start(config: &TelemetryConfig, who: &Identity) -> Result<Option<Telemetry>, String> {
        let Some(base) = config.endpoint.as_deref() else {
            return Ok(None);
        };
        let protocol = config.protocol.unwrap_or(Protocol::Grpc);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-export")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the trace exporter's runtime: {e}"))?;
        let headers: HashMap<String, String> = config.headers.iter().map(|(k, v)| (k.clone(), v.expose().to_string())).collect();
        let exporter = {
            let _inside = runtime.enter();
            match protocol {
                Protocol::Grpc => {
                    let mut metadata = tonic::metadata::MetadataMap::new();
                    for (k, v) in &headers {
                        let key = tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
                            .map_err(|_| format!("telemetry header {k:?} is not a valid gRPC metadata name"))?;
                        let value = v.parse().map_err(|_| format!("telemetry header {k:?}: value is not printable ASCII"))?;
                        metadata.insert(key, value);
                    }
                    opentelemetry_otlp::SpanExporter::builder()
                        .with_tonic()
                        .with_endpoint(base)
                        .with_timeout(EXPORT_TIMEOUT)
                        .with_metadata(metadata)
                        .build()
                }
                Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_endpoint(format!("{}/v1/traces", base.trim_end_matches('/')))
                    .with_timeout(EXPORT_TIMEOUT)
                    .with_headers(headers)
                    .build(),
            }
            .map_err(|e| format!("cannot build the OTLP exporter for {base}: {e}"))?
        };
        let exporter = Logged::new(exporter, format!("{base} ({})", protocol.as_str()));
        let batch =
            BatchConfigBuilder::default().with_max_queue_size(MAX_QUEUED_SPANS).with_scheduled_delay(Duration::from_secs(1)).build();
        let processor = BatchSpanProcessor::builder(exporter).with_batch_config(batch).build();

        let mut attributes =
            vec![KeyValue::new("service.version", env!("CARGO_PKG_VERSION")), KeyValue::new("service.instance.id", who.instance.clone())];
        if let Some(r) = &who.region {
            attributes.push(KeyValue::new("mailloop.region", r.clone()));
        }
        attributes.extend(config.resource_attributes.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())));
        let service = config
            .service_name
            .clone()
            .or_else(|| config.resource_attributes.iter().find(|(k, _)| k == "service.name").map(|(_, v)| v.clone()))
            .unwrap_or_else(|| "mailloop-agent".to_string());
        let resource = Resource::builder_empty().with_attributes(attributes).with_service_name(service).build();
        let provider = SdkTracerProvider::builder().with_span_processor(processor).with_resource(resource).build();
        let tracer = provider.tracer("mailloop-agent");
        tracing::info!("exporting probe traces to {base} over {}", protocol.as_str());
        Ok(Some(Telemetry { provider, tracer, region: who.region.clone(), runtime: Mutex::new(Some(runtime)) }))
    }

    /// Turns a finished report into a trace and queues it for export
    /// (never waits). Returns the trace's ids.
    pub fn record(&self, report: &ProbeReport, check: &CheckConfig) -> TraceIds {
        record(&self.tracer, report, check, self.region.as_deref())
    }

    /// Exports what is queued (bounded by [`EXPORT_TIMEOUT`]) and stops.
    /// Blocking: call from a plain thread or `spawn_blocking`.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown_with_timeout(EXPORT_TIMEOUT) {
            tracing::debug!("trace exporter shutdown: {e}");
        }
        if let Some(rt) = self.runtime.lock().unwrap_or_else(|p| p.into_inner()).take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        // A runtime may not be dropped inside another one; let its thread go.
        if let Some(rt) = self.runtime.lock().unwrap_or_else(|p| p.into_inner()).take() {
            rt.shutdown_background();
        }
    }
}

/// Builds the spans of one report with `tracer` (any tracer: the tests use
/// an in-memory one). Returns the trace's ids.
pub fn record(tracer: &SdkTracer, report: &ProbeReport, check: &CheckConfig, region: Option<&str>) -> TraceIds {
    let started = wall(&report.started_at).unwrap_or_else(SystemTime::now);
    // Steps are timed from the start of the attempt that ran them (the last).
    let origin = report.attempts.last().and_then(|a| wall(&a.started_at)).unwrap_or(started);
    let end_of = |start_ms: f64, ms: f64| origin + millis(start_ms) + millis(ms);
    let ended = report.steps.iter().map(|s| end_of(s.start_ms, s.ms)).max().unwrap_or(origin).max(started);

    let mut attrs = vec![
        KeyValue::new("mailloop.check", report.check.clone()),
        KeyValue::new("mailloop.probe.id", report.probe_id.clone()),
        KeyValue::new("mailloop.outcome", report.outcome.as_str()),
        KeyValue::new("mailloop.attempts", report.attempts.len().max(1) as i64),
        KeyValue::new("mailloop.greylisted", report.greylisted),
    ];
    if let Some(r) = region {
        attrs.push(KeyValue::new("mailloop.region", r.to_string()));
    }
    if let Some(v) = report.rtt_ms {
        attrs.push(KeyValue::new("mailloop.rtt_ms", v));
    }
    if let Some(v) = report.delivery_ms {
        attrs.push(KeyValue::new("mailloop.delivery_ms", v));
    }
    if let Some(v) = report.greylist_ms {
        attrs.push(KeyValue::new("mailloop.greylist_ms", v));
    }
    if let Some(q) = &report.queue_id {
        attrs.push(KeyValue::new("mailloop.queue_id", q.clone()));
    }
    if !report.reasons.is_empty() {
        attrs.push(KeyValue::new("mailloop.degraded.reasons", report.reasons.join("; ")));
    }
    if let Some(f) = &report.failure {
        attrs.push(KeyValue::new("error.type", f.class.to_string()));
        attrs.push(KeyValue::new("mailloop.failure.class", f.class.to_string()));
        attrs.push(KeyValue::new("mailloop.failure.step", f.step.as_str()));
    }
    let mut root = tracer
        .span_builder("probe")
        .with_kind(SpanKind::Client)
        .with_start_time(started)
        .with_attributes(attrs)
        .start_with_context(tracer, &Context::new());
    if let Some(f) = &report.failure {
        root.set_status(Status::error(format!("{} at {}: {}", f.class, f.step, reply(f))));
    }
    // Every deferred submission, at the moment it started.
    let deferred = report.attempts.len().saturating_sub(1);
    for (i, attempt) in report.attempts.iter().take(deferred).enumerate() {
        let at = wall(&attempt.started_at).unwrap_or(started);
        let mut ev = vec![KeyValue::new("mailloop.attempt", (i + 1) as i64)];
        if let Some(f) = &attempt.failure {
            ev.push(KeyValue::new("error.type", f.class.to_string()));
            ev.push(KeyValue::new("mailloop.failure.step", f.step.as_str()));
            ev.push(KeyValue::new("mailloop.failure.message", f.message.clone()));
            if let Some(c) = f.code {
                ev.push(KeyValue::new("mailloop.smtp.reply.code", c as i64));
            }
            if let Some(e) = &f.enhanced {
                ev.push(KeyValue::new("mailloop.smtp.enhanced_status", e.clone()));
            }
        }
        root.add_event_with_timestamp("mailloop.attempt.deferred", at, ev);
    }

    let ids = TraceIds { trace_id: root.span_context().trace_id().to_string(), span_id: root.span_context().span_id().to_string() };
    let parent = Context::new().with_remote_span_context(root.span_context().clone());
    for step in &report.steps {
        let start = origin + millis(step.start_ms);
        let mut span = tracer
            .span_builder(step.name.as_str())
            .with_kind(SpanKind::Client)
            .with_start_time(start)
            .with_attributes(step_attributes(report, check, step))
            .start_with_context(tracer, &parent);
        match &report.failure {
            Some(f) if f.step == step.name => span.set_status(Status::error(format!("{}: {}", f.class, reply(f)))),
            _ if !step.ok => span.set_status(Status::error(step.detail.clone().unwrap_or_else(|| "step failed".into()))),
            _ => {}
        }
        span.end_with_timestamp(start + millis(step.ms));
    }
    root.end_with_timestamp(ended);
    ids
}

/// The server's reply as it said it: `550 5.1.1 <x@y>: Recipient address rejected`.
fn reply(f: &mailloop_common::Failure) -> String {
    let mut out = String::new();
    if let Some(c) = f.code.filter(|c| !f.message.starts_with(&c.to_string())) {
        out.push_str(&format!("{c} "));
        if let Some(e) = f.enhanced.as_deref().filter(|e| !f.message.starts_with(e)) {
            out.push_str(&format!("{e} "));
        }
    }
    out.push_str(&f.message);
    out
}

fn step_attributes(report: &ProbeReport, check: &CheckConfig, step: &mailloop_common::StepReport) -> Vec<KeyValue> {
    let name = step.name;
    let (protocol, endpoint) = match name.as_str().split_once('.').map(|(p, _)| p) {
        Some("smtp") => ("smtp", Some(&check.smtp.endpoint)),
        Some("imap") => ("imap", Some(&check.imap.endpoint)),
        Some(other) => (other, None),
        None => ("", None),
    };
    let mut attrs = vec![KeyValue::new("network.protocol.name", protocol)];
    if let Some(e) = endpoint {
        attrs.push(KeyValue::new("server.address", e.host.clone()));
        attrs.push(KeyValue::new("server.port", e.port as i64));
    }
    if let Some(c) = step.code {
        attrs.push(KeyValue::new(if name.is_smtp() { "mailloop.smtp.reply.code" } else { "mailloop.reply.code" }, c as i64));
    }
    if let Some(d) = &step.detail {
        attrs.push(KeyValue::new("mailloop.step.detail", d.clone()));
    }
    if matches!(name, StepName::SmtpTls | StepName::SmtpStarttls | StepName::ImapTls | StepName::ImapStarttls) {
        if let Some(cert) = report.tls.iter().find(|c| c.protocol == protocol) {
            attrs.push(KeyValue::new("tls.protocol.name", "tls"));
            if let Some(v) = &cert.version {
                attrs.push(KeyValue::new("tls.protocol.version", tls_version(v)));
            }
            if let Some(c) = &cert.cipher {
                attrs.push(KeyValue::new("tls.cipher", c.clone()));
            }
            attrs.push(KeyValue::new("mailloop.tls.days_left", cert.days_left));
        }
    }
    if let Some(f) = report.failure.as_ref().filter(|f| f.step == name) {
        attrs.push(KeyValue::new("error.type", f.class.to_string()));
        if let Some(e) = &f.enhanced {
            attrs.push(KeyValue::new("mailloop.smtp.enhanced_status", e.clone()));
        }
        if step.code.is_none() {
            if let Some(c) = f.code {
                attrs.push(KeyValue::new("mailloop.smtp.reply.code", c as i64));
            }
        }
    }
    attrs
}

/// `TLSv1_3` / `TLSv1.3` → `1.3`, as `tls.protocol.version` spells it.
fn tls_version(v: &str) -> String {
    let digits = v.trim_start_matches(|c: char| c.is_ascii_alphabetic()).replace('_', ".");
    if digits.is_empty() { v.to_string() } else { digits }
}

fn millis(ms: f64) -> Duration {
    Duration::from_nanos((ms.max(0.0) * 1e6).round() as u64)
}

fn wall(rfc3339: &str) -> Option<SystemTime> {
    chrono::DateTime::parse_from_rfc3339(rfc3339).ok().map(SystemTime::from)
}

/// The exporter, plus a warning at most once a minute while exports fail
/// (the SDK itself stays silent), and one line when they work again.
#[derive(Debug)]
struct Logged<E> {
    inner: E,
    target: String,
    failures: AtomicU64,
    last_warned: Mutex<Option<Instant>>,
}

impl<E> Logged<E> {
    fn new(inner: E, target: String) -> Self {
        Logged { inner, target, failures: AtomicU64::new(0), last_warned: Mutex::new(None) }
    }

    fn note(&self, result: &OTelSdkResult, spans: usize) {
        match result {
            Ok(()) => {
                let failed = self.failures.swap(0, Ordering::Relaxed);
                if failed > 0 {
                    tracing::info!("trace export to {} works again after {failed} failed batch(es)", self.target);
                }
            }
            Err(e) => {
                let failed = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                let mut last = self.last_warned.lock().unwrap_or_else(|p| p.into_inner());
                if last.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                    *last = Some(Instant::now());
                    tracing::warn!(
                        "cannot export traces to {} ({failed} batch(es) failed, {spans} span(s) dropped in this one): {e}; probes go on, next warning in a minute at most",
                        self.target
                    );
                }
            }
        }
    }
}

impl<E: SpanExporter> SpanExporter for Logged<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        self.note(&result, spans);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(table: Value, env: &[(&str, &str)]) -> Result<TelemetryConfig, Vec<String>> {
        let map = table.as_object().unwrap().clone();
        let mut issues = Vec::new();
        let mut t = Table::new("telemetry", &map);
        let c = TelemetryConfig::from_table(&mut t, &mut issues);
        t.finish(&mut issues);
        let lookup = |name: &str| env.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string());
        let c = c.map(|mut c| {
            c.apply_env(&lookup, &mut issues);
            c
        });
        match c {
            Some(c) if issues.is_empty() => Ok(c),
            _ => Err(issues.into_iter().map(|i| format!("{}: {}", i.path, i.message)).collect()),
        }
    }

    #[test]
    fn the_environment_wins_over_the_table() {
        let table = json!({
            "endpoint": "http://10.0.0.1:4317", "protocol": "grpc", "service_name": "from-file",
            "headers": {"x-api-key": "k3y"}, "resource_attributes": {"team": "mail", "site": "a"}
        });
        let c = read(table.clone(), &[]).unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("http://10.0.0.1:4317"));
        assert_eq!(c.protocol, Some(Protocol::Grpc));
        assert_eq!(c.service_name.as_deref(), Some("from-file"));
        assert_eq!(format!("{:?}", c.headers), "[(\"x-api-key\", <redacted>)]", "header values are secrets");

        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_SERVICE_NAME", "from-env"),
            ("OTEL_RESOURCE_ATTRIBUTES", "site=b,env=prod%2Feu"),
        ];
        let c = read(table, &env).unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:4318"));
        assert_eq!(c.protocol, Some(Protocol::HttpProtobuf));
        assert_eq!(c.service_name.as_deref(), Some("from-env"));
        let attrs: HashMap<_, _> = c.resource_attributes.into_iter().collect();
        assert_eq!((attrs["team"].as_str(), attrs["site"].as_str(), attrs["env"].as_str()), ("mail", "b", "prod/eu"));
    }

    #[test]
    fn off_unless_an_endpoint_is_set() {
        let c = read(json!({"service_name": "x"}), &[]).unwrap();
        assert!(c.endpoint.is_none());
        assert!(Telemetry::start(&c, &Identity { instance: "i".into(), region: None }).unwrap().is_none());
    }

    #[test]
    fn every_bad_key_is_named() {
        let issues = read(
            json!({"endpoint": "collector:4317", "protocol": "thrift", "headers": {"a": 1}, "colour": "red"}),
            &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"), ("OTEL_RESOURCE_ATTRIBUTES", "novalue")],
        )
        .unwrap_err();
        for key in ["telemetry.endpoint", "telemetry.protocol", "telemetry.headers.a", "telemetry.colour"] {
            assert!(issues.iter().any(|i| i.starts_with(key)), "{key} not in {issues:?}");
        }
        // The table was bad, so the environment is not read over it; alone it is checked too.
        let env = |name: &str| match name {
            "OTEL_EXPORTER_OTLP_PROTOCOL" => Some("http/json".to_string()),
            "OTEL_RESOURCE_ATTRIBUTES" => Some("novalue".to_string()),
            _ => None,
        };
        let issues = TelemetryConfig::from_env(&env).unwrap_err();
        assert_eq!(issues.len(), 2, "{issues:?}");
    }

    #[test]
    fn tls_versions_in_semantic_convention_form() {
        assert_eq!(tls_version("TLSv1_3"), "1.3");
        assert_eq!(tls_version("TLSv1.2"), "1.2");
    }
}
