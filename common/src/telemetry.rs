//! OTLP trace export, shared by the agent and the coordinator (cargo
//! feature `otlp`): the `[telemetry]` table and the standard `OTEL_*`
//! variables over it ([`TelemetryConfig`]), the exporter ([`Exporter`]:
//! batching, a bounded queue, its own runtime, a warning a minute at most
//! while the collector is down), and W3C `traceparent` in and out.
//!
//! What goes into the spans is each side's business: the agent turns a
//! finished `ProbeReport` into a trace (`mailloop_agent::telemetry`), the
//! coordinator traces ingest, verdicts and alert deliveries
//! (`mailloop_coordinator::telemetry`).
//!
//! Export is off unless an endpoint is set (`[telemetry] endpoint` or
//! `OTEL_EXPORTER_OTLP_ENDPOINT`): then nothing is built and no thread
//! started, and the callers skip span building altogether. With an
//! endpoint, the SDK's batch processor queues finished spans (bounded; full
//! means dropped, never waiting) and a background thread ships them over
//! OTLP/gRPC or OTLP/HTTP protobuf, on a one-worker runtime of the
//! exporter's own. A one-shot command ([`Exporter::start_one_shot`]) starts
//! no thread, runtime or timer: it holds its few spans and sends them in one
//! request on its own runtime before it exits ([`Exporter::export_held`]).

use crate::Secret;
use crate::config::{ConfigIssue, Table};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags, TraceState, TracerProvider};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, IdGenerator, RandomIdGenerator, SdkTracer, SdkTracerProvider, SpanData, SpanExporter,
};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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

    /// Reads an optional `[telemetry]` value, then the environment over it:
    /// every bad key and variable becomes an issue.
    pub fn parse(value: Option<&Value>, env: &dyn Fn(&str) -> Option<String>, issues: &mut Vec<ConfigIssue>) -> Option<TelemetryConfig> {
        let mut t = Table::or_empty(issues, "telemetry", value)?;
        let config = TelemetryConfig::from_table(&mut t, issues);
        t.finish(issues);
        let mut config = config?;
        config.apply_env(env, issues);
        Some(config)
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
pub struct ServiceIdentity {
    /// The default `service.name` (`OTEL_SERVICE_NAME` and the config win)
    /// and the instrumentation scope: `mailloop-agent`, `mailloop-coordinator`.
    pub service: &'static str,
    /// `service.instance.id`: the agent's name, the host name.
    pub instance: String,
    /// `mailloop.region`, when the exporter has one.
    pub region: Option<String>,
}

/// A running exporter and its tracer. Cheap to share behind an `Arc`.
pub struct Exporter {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    /// The exporter's own runtime (long-running processes), so export never
    /// runs on (or waits for) the runtime that does the work.
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    /// A one-shot command's spans, held until [`Exporter::export_held`].
    held: Option<Arc<Held>>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter").finish_non_exhaustive()
    }
}

impl Exporter {
    /// Starts exporting if `config` names an endpoint; `Ok(None)` otherwise
    /// (export off: nothing is built, no thread started).
    pub fn start(config: &TelemetryConfig, who: &ServiceIdentity) -> Result<Option<Exporter>, String> {
        Self::build(config, who, false)
    }

    /// [`Exporter::start`] for a process that records a few traces and
    /// exits (`mailloop-agent probe`): no thread, no runtime and no timer of
    /// its own; spans are held (bounded by [`MAX_QUEUED_SPANS`]) and sent in
    /// one request by [`Exporter::export_held`] on the caller's runtime.
    /// Must be called inside that tokio runtime (the clients are built on it).
    pub fn start_one_shot(config: &TelemetryConfig, who: &ServiceIdentity) -> Result<Option<Exporter>, String> {
        Self::build(config, who, true)
    }

    fn build(config: &TelemetryConfig, who: &ServiceIdentity, one_shot: bool) -> Result<Option<Exporter>, String> {
        let Some(base) = config.endpoint.as_deref() else {
            return Ok(None);
        };
        let protocol = config.protocol.unwrap_or(Protocol::Grpc);
        // Both clients (tonic, hyper) are tokio clients: a long-running
        // process gives them a runtime of their own; a one-shot command
        // lends its own.
        let runtime = if one_shot {
            if tokio::runtime::Handle::try_current().is_err() {
                return Err("the one-shot trace exporter must be started inside a tokio runtime".into());
            }
            None
        } else {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).thread_name("otlp-export").enable_all().build();
            Some(rt.map_err(|e| format!("cannot start the trace exporter's runtime: {e}"))?)
        };
        let headers: HashMap<String, String> = config.headers.iter().map(|(k, v)| (k.clone(), v.expose().to_string())).collect();
        let exporter = {
            let _inside = runtime.as_ref().map(tokio::runtime::Runtime::enter);
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
                // The hyper client (cargo feature `hyper-client`): no thread
                // or runtime of its own, unlike the blocking reqwest one.
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
        let exporter = Logged::new(exporter, format!("{base} ({})", protocol.as_str()), runtime.as_ref().map(|rt| rt.handle().clone()));

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
            .unwrap_or_else(|| who.service.to_string());
        let resource = Resource::builder_empty().with_attributes(attributes).with_service_name(service).build();
        let provider = SdkTracerProvider::builder().with_resource(resource);
        let (provider, held) = if one_shot {
            let held = Arc::new(Held { exporter: tokio::sync::Mutex::new(exporter), spans: Mutex::new(Vec::new()) });
            (provider.with_span_processor(AtEnd(held.clone())).build(), Some(held))
        } else {
            let batch =
                BatchConfigBuilder::default().with_max_queue_size(MAX_QUEUED_SPANS).with_scheduled_delay(Duration::from_secs(1)).build();
            (provider.with_span_processor(BatchSpanProcessor::builder(exporter).with_batch_config(batch).build()).build(), None)
        };
        let tracer = provider.tracer(who.service);
        tracing::info!("exporting traces to {base} over {}", protocol.as_str());
        Ok(Some(Exporter { provider, tracer, runtime: Mutex::new(runtime), held }))
    }

    /// The tracer whose spans this exporter ships.
    pub fn tracer(&self) -> &SdkTracer {
        &self.tracer
    }

    /// A one-shot exporter's held spans, sent in one request on the
    /// caller's runtime (bounded by [`EXPORT_TIMEOUT`]); a failure is
    /// logged, never returned. Nothing to do for a long-running exporter.
    pub async fn export_held(&self) {
        if let Some(held) = &self.held {
            held.export().await;
        }
    }

    /// Exports what is queued (bounded by [`EXPORT_TIMEOUT`]) and stops.
    /// Blocking: call from a plain thread or `spawn_blocking` (a one-shot
    /// exporter's spans go with [`Exporter::export_held`] first).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown_with_timeout(EXPORT_TIMEOUT) {
            tracing::debug!("trace exporter shutdown: {e}");
        }
        if let Some(rt) = self.runtime.lock().unwrap_or_else(|p| p.into_inner()).take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        // A runtime may not be dropped inside another one; let its thread go.
        if let Some(rt) = self.runtime.lock().unwrap_or_else(|p| p.into_inner()).take() {
            rt.shutdown_background();
        }
    }
}

/// A one-shot command's finished spans (bounded; past [`MAX_QUEUED_SPANS`]
/// dropped) and the exporter that sends them at the end.
#[derive(Debug)]
struct Held {
    exporter: tokio::sync::Mutex<Logged<opentelemetry_otlp::SpanExporter>>,
    spans: Mutex<Vec<SpanData>>,
}

impl Held {
    async fn export(&self) {
        let batch = std::mem::take(&mut *self.spans.lock().unwrap_or_else(|p| p.into_inner()));
        if batch.is_empty() {
            return;
        }
        let exporter = self.exporter.lock().await;
        // Logged reports a failure (a warning); a timeout is one too.
        if tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(batch)).await.is_err() {
            exporter.note(&Err(opentelemetry_sdk::error::OTelSdkError::Timeout(EXPORT_TIMEOUT)), 0);
        }
    }
}

/// The one-shot span processor: holds finished spans for [`Held::export`].
#[derive(Debug)]
struct AtEnd(Arc<Held>);

impl opentelemetry_sdk::trace::SpanProcessor for AtEnd {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        let mut spans = self.0.spans.lock().unwrap_or_else(|p| p.into_inner());
        if spans.len() < MAX_QUEUED_SPANS {
            spans.push(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        // Sending needs the caller's runtime: `Exporter::export_held`.
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        let left = self.0.spans.lock().unwrap_or_else(|p| p.into_inner()).len();
        if left > 0 {
            tracing::debug!("{left} span(s) not exported: export_held was not called");
        }
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        if let Ok(mut exporter) = self.0.exporter.try_lock() {
            exporter.set_resource(resource);
        }
    }
}

/// This machine's host name (`service.instance.id` when there is no better
/// name), or `fallback` when it cannot be read.
pub fn host_name(fallback: &str) -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name = name.trim();
    if name.is_empty() { fallback.to_string() } else { name.to_string() }
}

// ---------------------------------------------------------------------------
// W3C trace context.

/// The span context a W3C `traceparent` value names (remote, sampled or
/// not as it says); None when it is not a valid `traceparent`.
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    // The SDK's propagator reads the ids as numbers of any length ("abc"
    // would pass): the W3C shape is checked here first.
    let parts: Vec<&str> = value.trim().split('-').collect();
    let hex_of = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if parts.len() != 4 || !hex_of(parts[0], 2) || !hex_of(parts[1], 32) || !hex_of(parts[2], 16) || !hex_of(parts[3], 2) {
        return None;
    }
    let carrier: HashMap<String, String> = [("traceparent".to_string(), value.trim().to_string())].into();
    let cx = TraceContextPropagator::new().extract(&carrier);
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// `00-<trace id>-<span id>-<flags>`, the W3C `traceparent` of `sc`.
pub fn traceparent(sc: &SpanContext) -> String {
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&Context::new().with_remote_span_context(sc.clone()), &mut carrier);
    carrier.remove("traceparent").unwrap_or_default()
}

/// A fresh sampled trace and span id, for a caller that starts a trace it
/// does not record itself (`mailloopctl probe`): its `traceparent`.
pub fn new_traceparent() -> String {
    let ids = RandomIdGenerator::default();
    traceparent(&SpanContext::new(ids.new_trace_id(), ids.new_span_id(), TraceFlags::SAMPLED, true, TraceState::default()))
}

/// The exporter, plus a warning at most once a minute while exports fail
/// (the SDK itself stays silent), and one line when they work again. With
/// a runtime handle, each export runs on that runtime (the batch
/// processor's thread only waits for it): both OTLP clients are tokio ones.
#[derive(Debug)]
struct Logged<E> {
    inner: Arc<E>,
    runtime: Option<tokio::runtime::Handle>,
    target: String,
    failures: AtomicU64,
    last_warned: Mutex<Option<Instant>>,
}

impl<E> Logged<E> {
    fn new(inner: E, target: String, runtime: Option<tokio::runtime::Handle>) -> Self {
        Logged { inner: Arc::new(inner), runtime, target, failures: AtomicU64::new(0), last_warned: Mutex::new(None) }
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

impl<E: SpanExporter + 'static> SpanExporter for Logged<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = match &self.runtime {
            Some(rt) => {
                let inner = self.inner.clone();
                rt.spawn(async move { inner.export(batch).await })
                    .await
                    .unwrap_or_else(|e| Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(format!("export task: {e}"))))
            }
            None => self.inner.export(batch).await,
        };
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
        // Called once while the provider is built, before any export holds a clone.
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
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
        assert!(Exporter::start(&c, &ServiceIdentity { service: "mailloop-test", instance: "i".into(), region: None }).unwrap().is_none());
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
    fn traceparent_round_trips_and_nonsense_is_refused() {
        let tp = new_traceparent();
        let sc = parse_traceparent(&tp).expect("valid");
        assert!(sc.is_remote() && sc.is_sampled());
        assert_eq!(traceparent(&sc), tp);
        assert_eq!(tp.len(), 55, "{tp}");
        assert_ne!(new_traceparent(), tp);
        for bad in [
            "",
            "00-abc-def-01",
            "00-00000000000000000000000000000000-0000000000000001-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "zz",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?}");
        }
    }
}
