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
//! passwords are not in the report, and header values are `Secret`s.
//!
//! An on-demand run (`mailloopctl probe`) arrives with the caller's W3C
//! `traceparent`: its `probe` span is then a child of it, in the caller's
//! trace ([`Telemetry::record_in`]).
//!
//! The settings and the exporter are shared with the coordinator
//! (`mailloop_common::telemetry`): off unless an endpoint is set (`[telemetry]
//! endpoint` or `OTEL_EXPORTER_OTLP_ENDPOINT`); a bounded batch queue that
//! never waits; a collector that is down costs a warning a minute, never a probe.

use mailloop_common::config::CheckConfig;
pub use mailloop_common::telemetry::{EXPORT_TIMEOUT, MAX_QUEUED_SPANS, Protocol, TelemetryConfig};
use mailloop_common::telemetry::{Exporter, ServiceIdentity, parse_traceparent};
use mailloop_common::{ProbeReport, StepName};
use opentelemetry::trace::{Span, SpanContext, SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::SdkTracer;
use std::time::{Duration, SystemTime};

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
#[derive(Debug)]
pub struct Telemetry {
    exporter: Exporter,
    region: Option<String>,
}

impl Telemetry {
    /// Starts exporting if `config` names an endpoint; `Ok(None)` otherwise
    /// (export off: nothing is built, no thread started).
    pub fn start(config: &TelemetryConfig, who: &Identity) -> Result<Option<Telemetry>, String> {
        let service = ServiceIdentity { service: "mailloop-agent", instance: who.instance.clone(), region: who.region.clone() };
        Ok(Exporter::start(config, &service)?.map(|exporter| Telemetry { exporter, region: who.region.clone() }))
    }

    /// [`Telemetry::start`] for `mailloop-agent probe`: the traces are sent
    /// in one request by [`Telemetry::export_held`] on the caller's tokio
    /// runtime (call this inside it), with no thread of their own.
    pub fn start_one_shot(config: &TelemetryConfig, who: &Identity) -> Result<Option<Telemetry>, String> {
        let service = ServiceIdentity { service: "mailloop-agent", instance: who.instance.clone(), region: who.region.clone() };
        Ok(Exporter::start_one_shot(config, &service)?.map(|exporter| Telemetry { exporter, region: who.region.clone() }))
    }

    /// Turns a finished report into a trace and queues it for export
    /// (never waits). Returns the trace's ids.
    pub fn record(&self, report: &ProbeReport, check: &CheckConfig) -> TraceIds {
        record(self.exporter.tracer(), report, check, self.region.as_deref(), None)
    }

    /// [`Telemetry::record`] for a run that is part of a caller's trace (an
    /// on-demand run's W3C `traceparent`): the probe span becomes its child.
    /// A `traceparent` that does not parse is ignored (a trace of its own).
    pub fn record_in(&self, report: &ProbeReport, check: &CheckConfig, traceparent: Option<&str>) -> TraceIds {
        let parent = traceparent.and_then(parse_traceparent);
        record(self.exporter.tracer(), report, check, self.region.as_deref(), parent)
    }

    /// A one-shot exporter's traces, sent in one request (bounded by
    /// [`EXPORT_TIMEOUT`]; a failure is a warning, never an error).
    pub async fn export_held(&self) {
        self.exporter.export_held().await;
    }

    /// Exports what is queued (bounded by [`EXPORT_TIMEOUT`]) and stops.
    /// Blocking: call from a plain thread or `spawn_blocking`.
    pub fn shutdown(&self) {
        self.exporter.shutdown();
    }
}

/// Builds the spans of one report with `tracer` (any tracer: the tests use
/// an in-memory one), as a child of `parent` when given. Returns the trace's ids.
pub fn record(
    tracer: &SdkTracer,
    report: &ProbeReport,
    check: &CheckConfig,
    region: Option<&str>,
    parent: Option<SpanContext>,
) -> TraceIds {
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
        .start_with_context(tracer, &parent.map_or_else(Context::new, |p| Context::new().with_remote_span_context(p)));
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

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn tls_versions_in_semantic_convention_form() {
        assert_eq!(tls_version("TLSv1_3"), "1.3");
        assert_eq!(tls_version("TLSv1.2"), "1.2");
    }
}
