//! The coordinator's own traces: report ingest, the judge's verdicts and
//! alert deliveries, exported over OTLP like the agent's probes (the
//! `[telemetry]` table and the standard `OTEL_*` variables, shared in
//! `mailloop_common::telemetry`; `service.name` defaults to
//! `mailloop-coordinator`).
//!
//! - `report.ingest` (kind server): one per report an agent streams, from
//!   the moment it is read to its acknowledgement (after the commit), with
//!   the agent, region, check, round and probe id, the result (`stored`,
//!   `duplicate`, `rejected`, `error`), and a link to the probe's trace.
//! - `verdict` (kind internal): one per decided round, with the check,
//!   round and verdict; it **links** to the `probe` span of every report it
//!   judged (the report carries the agent's trace and span id), so a user
//!   clicks from an outage to the failing round trips of each region. Its
//!   start and duration are those of `mailloop_judge_round_duration_seconds`
//!   (the same measurement), and each incident the round opened or resolved
//!   is an event on it.
//! - `alert.deliver` (kind client): one per incident event and channel,
//!   child of the verdict that raised it, with the channel, its type, the
//!   incident id, the result and the number of attempts; each failed
//!   attempt is an event with the error (never the URL or a routing key).
//! - `mailloop.v1.AgentService/<Method>` (kind server): one per agent call
//!   other than the report stream (`Register`, `Heartbeat`,
//!   `WatchAssignments` up to the stream's opening, `Enroll`), with the
//!   agent and region once authenticated and the gRPC status code.
//! - `<METHOD> <route>` (kind server): one per admin API request, named by
//!   the route template (`GET /api/v1/checks/{id}`), with the response status.
//! - `run.order`: an on-demand run (`POST /api/v1/checks/{id}/run`), child
//!   of the caller's W3C `traceparent`; the agents get this span's context,
//!   so their `probe` spans are in the caller's trace.
//!
//! Off by default: [`Traces::off`] holds nothing, and every method returns
//! at once without building a span.

use crate::judge::model::{RegionReport, Verdict};
use mailloop_common::telemetry::{
    Exporter, ServiceIdentity, TelemetryConfig, parse_traceparent, traceparent,
};
use opentelemetry::trace::{
    Link, Span, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::SdkTracer;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The instrumentation scope and default `service.name`.
pub const SERVICE: &str = "mailloop-coordinator";

/// The coordinator's tracer, or nothing when export is off. Cheap to clone.
#[derive(Clone, Default)]
pub struct Traces {
    exporter: Option<Arc<Exporter>>,
}

impl std::fmt::Debug for Traces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traces").field("on", &self.is_on()).finish()
    }
}

/// A span in progress (the SDK's, when export is on).
pub type OpenSpan = opentelemetry_sdk::trace::Span;

impl Traces {
    /// Export off: no span is ever built.
    pub fn off() -> Traces {
        Traces::default()
    }

    /// Starts the exporter if `config` names an endpoint; off otherwise.
    /// `instance` is `service.instance.id` (the host name).
    pub fn start(config: &TelemetryConfig, instance: String) -> Result<Traces, String> {
        let who = ServiceIdentity {
            service: SERVICE,
            instance,
            region: None,
        };
        Ok(Traces {
            exporter: Exporter::start(config, &who)?.map(Arc::new),
        })
    }

    /// Whether spans are built and exported.
    pub fn is_on(&self) -> bool {
        self.exporter.is_some()
    }

    fn tracer(&self) -> Option<&SdkTracer> {
        self.exporter.as_deref().map(Exporter::tracer)
    }

    /// Ships what is queued (bounded) and stops. Blocking.
    pub fn shutdown(&self) {
        if let Some(e) = &self.exporter {
            e.shutdown();
        }
    }

    /// Starts the `report.ingest` span of one report an agent sent (ended
    /// by [`end_ingest`] once the report is acknowledged or refused).
    pub fn ingest(
        &self,
        agent: &str,
        region: &str,
        check: &str,
        probe_id: &str,
    ) -> Option<OpenSpan> {
        let tracer = self.tracer()?;
        let attrs = vec![
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.service", "mailloop.v1.AgentService"),
            KeyValue::new("rpc.method", "ReportResults"),
            KeyValue::new("mailloop.agent", agent.to_string()),
            KeyValue::new("mailloop.region", region.to_string()),
            KeyValue::new("mailloop.check", check.to_string()),
            KeyValue::new("mailloop.probe.id", probe_id.to_string()),
        ];
        Some(
            tracer
                .span_builder("report.ingest")
                .with_kind(SpanKind::Server)
                .with_attributes(attrs)
                .start_with_context(tracer, &Context::new()),
        )
    }

    /// Starts the span of one agent call other than the report stream
    /// (`Register`, `Heartbeat`, `WatchAssignments`, `Enroll`): kind server,
    /// the `rpc.*` names of the semantic conventions. The agent is added by
    /// [`rpc_agent`] once its token is known; the token itself (and an
    /// enrollment's join secret) never goes into the span.
    pub fn rpc(&self, method: &'static str) -> Option<OpenSpan> {
        let tracer = self.tracer()?;
        let attrs = vec![
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.service", "mailloop.v1.AgentService"),
            KeyValue::new("rpc.method", method),
        ];
        Some(
            tracer
                .span_builder(format!("mailloop.v1.AgentService/{method}"))
                .with_kind(SpanKind::Server)
                .with_attributes(attrs)
                .start_with_context(tracer, &Context::new()),
        )
    }

    /// Starts the span of one admin API request (`GET /api/v1/checks/{id}`):
    /// kind server, named by the route template, never by the path's ids;
    /// ended by [`end_http`] with the response status. No header (the
    /// bearer token) and no query string goes into it.
    pub fn http(&self, method: &str, route: &str) -> Option<OpenSpan> {
        let tracer = self.tracer()?;
        let attrs = vec![
            KeyValue::new("http.request.method", method.to_string()),
            KeyValue::new("http.route", route.to_string()),
        ];
        Some(
            tracer
                .span_builder(format!("{method} {route}"))
                .with_kind(SpanKind::Server)
                .with_attributes(attrs)
                .start_with_context(tracer, &Context::new()),
        )
    }

    /// Starts the `verdict` span of a round whose judging began at
    /// `started_at` (the round timer's start), linked to the probe span of
    /// every report in `reports` that names one. End it with [`end_verdict`].
    pub fn verdict(
        &self,
        check: &str,
        round: u64,
        started_at: SystemTime,
        reports: &[RegionReport],
    ) -> Option<OpenSpan> {
        let tracer = self.tracer()?;
        let links = reports.iter().filter_map(probe_link).collect::<Vec<_>>();
        let attrs = vec![
            KeyValue::new("mailloop.check", check.to_string()),
            KeyValue::new("mailloop.round", round as i64),
            KeyValue::new("mailloop.reports", reports.len() as i64),
        ];
        Some(
            tracer
                .span_builder("verdict")
                .with_kind(SpanKind::Internal)
                .with_start_time(started_at)
                .with_attributes(attrs)
                .with_links(links)
                .start_with_context(tracer, &Context::new()),
        )
    }

    /// Starts the `alert.deliver` span of one incident event on one channel,
    /// child of the verdict that raised it (when it was traced).
    pub fn alert(
        &self,
        channel: &str,
        kind: &str,
        incident: u64,
        event: &str,
        parent: Option<&SpanContext>,
    ) -> Option<OpenSpan> {
        let tracer = self.tracer()?;
        let attrs = vec![
            KeyValue::new("mailloop.alert.channel", channel.to_string()),
            KeyValue::new("mailloop.alert.type", kind.to_string()),
            KeyValue::new("mailloop.incident.id", incident as i64),
            KeyValue::new("mailloop.incident.event", event.to_string()),
        ];
        let cx = parent.map_or_else(Context::new, |p| {
            Context::new().with_remote_span_context(p.clone())
        });
        Some(
            tracer
                .span_builder("alert.deliver")
                .with_kind(SpanKind::Client)
                .with_attributes(attrs)
                .start_with_context(tracer, &cx),
        )
    }

    /// An on-demand run ordered by a caller: the `run.order` span, child of
    /// `caller` (its W3C `traceparent`, when valid), and the `traceparent`
    /// the agents get. With export off the caller's own `traceparent` is
    /// passed on unchanged, so the agents still join the caller's trace.
    pub fn run_order(&self, check: &str, request_id: &str, caller: Option<&str>) -> Option<String> {
        let parent = caller.and_then(parse_traceparent);
        let Some(tracer) = self.tracer() else {
            return parent.as_ref().map(traceparent);
        };
        let cx = parent.map_or_else(Context::new, |p| Context::new().with_remote_span_context(p));
        let attrs = vec![
            KeyValue::new("mailloop.check", check.to_string()),
            KeyValue::new("mailloop.request_id", request_id.to_string()),
        ];
        let mut span = tracer
            .span_builder("run.order")
            .with_kind(SpanKind::Server)
            .with_attributes(attrs)
            .start_with_context(tracer, &cx);
        let passed_on = traceparent(span.span_context());
        span.end();
        Some(passed_on)
    }
}

/// The link from a verdict to the probe span of one region's report, when
/// the report names its trace (the agent exported it).
fn probe_link(r: &RegionReport) -> Option<Link> {
    let trace = TraceId::from_hex(r.report.trace_id.as_deref()?).ok()?;
    let span = SpanId::from_hex(r.report.span_id.as_deref()?).ok()?;
    let cx = SpanContext::new(
        trace,
        span,
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    if !cx.is_valid() {
        return None;
    }
    let attrs = vec![
        KeyValue::new("mailloop.region", r.region.clone()),
        KeyValue::new("mailloop.agent", r.agent.clone()),
        KeyValue::new("mailloop.probe.id", r.report.probe_id.clone()),
        KeyValue::new("mailloop.outcome", r.report.outcome.as_str()),
    ];
    Some(Link::new(cx, attrs, 0))
}

/// Ends a `report.ingest` span with what became of the report: `stored`,
/// `duplicate`, `rejected` (with the reason), `error` (with the reason).
/// `round` and the probe's trace are known once the report was read.
pub fn end_ingest(span: Option<OpenSpan>, result: &str, error: Option<&str>) {
    let Some(mut span) = span else { return };
    span.set_attribute(KeyValue::new("mailloop.ingest.result", result.to_string()));
    if let Some(e) = error {
        span.set_attribute(KeyValue::new("error.type", result.to_string()));
        span.set_status(Status::error(e.to_string()));
    }
    span.end();
}

/// The authenticated agent of a call, on its span.
pub fn rpc_agent(span: Option<&mut OpenSpan>, agent: &str, region: &str) {
    let Some(span) = span else { return };
    span.set_attribute(KeyValue::new("mailloop.agent", agent.to_string()));
    span.set_attribute(KeyValue::new("mailloop.region", region.to_string()));
}

/// Ends an agent call's span with its gRPC status (`rpc.grpc.status_code`;
/// span status Error with the message when the call failed).
pub fn end_rpc<T>(span: Option<OpenSpan>, result: &Result<T, tonic::Status>) {
    let Some(mut span) = span else { return };
    let code = result.as_ref().err().map_or(tonic::Code::Ok, tonic::Status::code);
    span.set_attribute(KeyValue::new("rpc.grpc.status_code", code as i64));
    if let Err(status) = result {
        span.set_attribute(KeyValue::new("error.type", format!("{code:?}")));
        span.set_status(Status::error(status.message().to_string()));
    }
    span.end();
}

/// Ends an admin API request's span with its response status (a 5xx is an
/// error of the server, a 4xx the caller's: only the former sets Error,
/// as the HTTP semantic conventions say for server spans).
pub fn end_http(span: Option<OpenSpan>, status: u16) {
    let Some(mut span) = span else { return };
    span.set_attribute(KeyValue::new("http.response.status_code", status as i64));
    if status >= 500 {
        span.set_attribute(KeyValue::new("error.type", status.to_string()));
        span.set_status(Status::error(format!("HTTP {status}")));
    }
    span.end();
}

/// What the report said about itself, on its ingest span: the round, the
/// on-demand request and a link to the probe's own trace.
pub fn ingest_read(
    span: Option<&mut OpenSpan>,
    round: u64,
    request_id: &str,
    report: &mailloop_common::ProbeReport,
) {
    let Some(span) = span else { return };
    span.set_attribute(KeyValue::new("mailloop.round", round as i64));
    if !request_id.is_empty() {
        span.set_attribute(KeyValue::new("mailloop.request_id", request_id.to_string()));
    }
    let ids = report
        .trace_id
        .as_deref()
        .and_then(|t| TraceId::from_hex(t).ok())
        .zip(
            report
                .span_id
                .as_deref()
                .and_then(|s| SpanId::from_hex(s).ok()),
        );
    if let Some((trace, span_id)) = ids {
        let cx = SpanContext::new(
            trace,
            span_id,
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        if cx.is_valid() {
            span.add_link(cx, vec![KeyValue::new("mailloop.link", "probe")]);
        }
    }
}

/// What the judge decided, on the round's `verdict` span.
pub fn verdict_decided(span: Option<&mut OpenSpan>, verdict: &Verdict) {
    let Some(span) = span else { return };
    span.set_attribute(KeyValue::new("mailloop.verdict", verdict.verdict.as_str()));
    span.set_attribute(KeyValue::new("mailloop.quorum", verdict.quorum as i64));
    span.set_attribute(KeyValue::new("mailloop.verdict.note", verdict.note.clone()));
}

/// Ends a `verdict` span after `took` (the round timer's measurement),
/// with each incident event the round produced (event, id, kind).
pub fn end_verdict(
    span: Option<OpenSpan>,
    started_at: SystemTime,
    took: Duration,
    incidents: &[(String, u64, String)],
) {
    let Some(mut span) = span else { return };
    for (event, id, kind) in incidents {
        span.add_event(
            format!("mailloop.incident.{event}"),
            vec![
                KeyValue::new("mailloop.incident.id", *id as i64),
                KeyValue::new("mailloop.incident.kind", kind.clone()),
            ],
        );
    }
    span.end_with_timestamp(started_at + took);
}

/// A failed delivery attempt, on its `alert.deliver` span.
pub fn alert_attempt_failed(span: Option<&mut OpenSpan>, attempt: u32, error: &str) {
    if let Some(span) = span {
        span.add_event(
            "mailloop.alert.attempt_failed",
            vec![
                KeyValue::new("mailloop.alert.attempt", attempt as i64),
                KeyValue::new("error.message", error.to_string()),
            ],
        );
    }
}

/// Ends an `alert.deliver` span: `delivered`, or `failed` with why.
pub fn end_alert(span: Option<OpenSpan>, attempts: u32, failure: Option<&str>) {
    let Some(mut span) = span else { return };
    span.set_attribute(KeyValue::new("mailloop.alert.attempts", attempts as i64));
    span.set_attribute(KeyValue::new(
        "mailloop.alert.result",
        if failure.is_some() {
            "failed"
        } else {
            "delivered"
        },
    ));
    if let Some(why) = failure {
        span.set_attribute(KeyValue::new("error.type", "alert_delivery"));
        span.set_status(Status::error(why.to_string()));
    }
    span.end();
}

/// The context of a span, to parent or link later work to it.
pub fn context_of(span: Option<&OpenSpan>) -> Option<SpanContext> {
    span.map(|s| s.span_context().clone())
}
