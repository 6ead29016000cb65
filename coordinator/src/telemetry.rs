//! The coordinator's own traces: report ingest, the judge's verdicts and
//! alert deliveries, exported over OTLP like the agent's probes (the
//! `[telemetry]` table and the standard `OTEL_*` variables, shared in
//! `mailloop_common::telemetry`; `service.name` defaults to
//! `mailloop-coordinator`).
//!
//! - `report.ingest` (kind internal): one per batch of up to
//!   [`INGEST_BATCH`] reports taken from all agents within
//!   [`INGEST_WINDOW`], from the first one's read to the last one's
//!   acknowledgement (after its commit), with the number of reports and
//!   results (`stored`, `duplicate`), and one **link** per report to its
//!   probe's span carrying the probe id (and `mailloop.ingest.result` =
//!   `duplicate` for a replayed one; the probe span itself has the check,
//!   region, round and agent). One span per report cost the coordinator
//!   about 12 µs a report (span, attributes, batch queue, OTLP encoding on
//!   the export thread), a fifth of its ingest work; a link costs a
//!   fraction of that. A report that is refused or cannot be
//!   stored still gets a span of its own, kind server, in error with the
//!   reason and every id as attributes (rare, and what one looks for).
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
use std::time::{Duration, Instant, SystemTime};

/// The instrumentation scope and default `service.name`.
pub const SERVICE: &str = "mailloop-coordinator";

/// Reports per `report.ingest` span at most (the SDK's default limit of
/// links per span).
pub const INGEST_BATCH: usize = 128;
/// A `report.ingest` span ends at most this long after its first report
/// (a little later under no load: the flusher looks once per window).
pub const INGEST_WINDOW: Duration = Duration::from_secs(1);

/// The coordinator's tracer, or nothing when export is off. Cheap to clone.
#[derive(Clone, Default)]
pub struct Traces {
    on: Option<Arc<On>>,
}

/// A running exporter and the `report.ingest` batch being filled.
struct On {
    exporter: Exporter,
    batch: std::sync::Mutex<Option<IngestBatch>>,
}

/// Reports acknowledged since the current `report.ingest` span opened.
struct IngestBatch {
    opened: Instant,
    /// The first report's read.
    started: SystemTime,
    /// The last report's acknowledgement.
    ended: SystemTime,
    links: Vec<Link>,
    reports: i64,
    stored: i64,
    duplicate: i64,
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
        let Some(exporter) = Exporter::start(config, &who)? else {
            return Ok(Traces::off());
        };
        let on = Arc::new(On {
            exporter,
            batch: std::sync::Mutex::new(None),
        });
        // Ends a `report.ingest` batch that stopped filling (an idle
        // coordinator's last reports); gone with the last `Traces`.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&on);
            rt.spawn(async move {
                let mut tick = tokio::time::interval(INGEST_WINDOW);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(on) = weak.upgrade() else { return };
                    on.flush(false);
                }
            });
        }
        Ok(Traces { on: Some(on) })
    }

    /// Whether spans are built and exported.
    pub fn is_on(&self) -> bool {
        self.on.is_some()
    }

    fn tracer(&self) -> Option<&SdkTracer> {
        self.on.as_deref().map(|o| o.exporter.tracer())
    }

    /// Ends the open `report.ingest` batch, ships what is queued (bounded)
    /// and stops. Blocking.
    pub fn shutdown(&self) {
        if let Some(on) = &self.on {
            on.flush(true);
            on.exporter.shutdown();
        }
    }

    /// The ingest tracing of one agent's report stream: marks each report
    /// as it is read ([`IngestStream::mark`]) and adds it to the current
    /// `report.ingest` batch at its acknowledgement.
    pub fn ingest_stream(&self, agent: &str, region: &str) -> IngestStream {
        IngestStream {
            on: self.on.clone(),
            agent: Arc::from(agent),
            region: Arc::from(region),
        }
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

impl On {
    /// Ends the open `report.ingest` batch if it is full, older than
    /// [`INGEST_WINDOW`], or `always`.
    fn flush(&self, always: bool) {
        let batch = {
            let mut open = self.batch.lock().unwrap_or_else(|p| p.into_inner());
            match &*open {
                Some(b)
                    if always
                        || b.reports >= INGEST_BATCH as i64
                        || b.opened.elapsed() >= INGEST_WINDOW =>
                {
                    open.take()
                }
                _ => None,
            }
        };
        let Some(b) = batch else { return };
        let tracer = self.exporter.tracer();
        let attrs = vec![
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.service", "mailloop.v1.AgentService"),
            KeyValue::new("rpc.method", "ReportResults"),
            KeyValue::new("mailloop.reports", b.reports),
            KeyValue::new("mailloop.reports.stored", b.stored),
            KeyValue::new("mailloop.reports.duplicate", b.duplicate),
            KeyValue::new("mailloop.reports.untraced", b.reports - b.links.len() as i64),
        ];
        let mut span = tracer
            .span_builder("report.ingest")
            .with_kind(SpanKind::Internal)
            .with_start_time(b.started)
            .with_attributes(attrs)
            .with_links(b.links)
            .start_with_context(tracer, &Context::new());
        span.end_with_timestamp(b.ended);
    }
}

/// One report on its way from its read to its acknowledgement, when the
/// coordinator traces: what its `report.ingest` link (or, refused, its own
/// span) says. Built without the SDK: a report costs a link, not a span.
#[derive(Debug)]
pub struct IngestMark {
    read_at: SystemTime,
    round: u64,
    /// The on-demand run it answers (rare).
    request_id: Option<String>,
    /// The agent's `probe` span, when the report names it.
    probe: Option<SpanContext>,
}

impl IngestMark {
    /// What the report said about itself: its round, the on-demand request
    /// and its probe's trace.
    pub fn read(
        mark: Option<&mut IngestMark>,
        round: u64,
        request_id: &str,
        report: &mailloop_common::ProbeReport,
    ) {
        let Some(mark) = mark else { return };
        mark.round = round;
        if !request_id.is_empty() {
            mark.request_id = Some(request_id.to_string());
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
        mark.probe = ids
            .map(|(trace, span)| {
                SpanContext::new(trace, span, TraceFlags::SAMPLED, true, TraceState::default())
            })
            .filter(SpanContext::is_valid);
    }
}

/// The ingest tracing of one report stream (see [`Traces::ingest_stream`]).
#[derive(Clone)]
pub struct IngestStream {
    on: Option<Arc<On>>,
    agent: Arc<str>,
    region: Arc<str>,
}

impl std::fmt::Debug for IngestStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestStream").field("on", &self.on.is_some()).finish()
    }
}

impl IngestStream {
    /// A report was read (none when export is off).
    pub fn mark(&self) -> Option<IngestMark> {
        self.on.as_ref()?;
        Some(IngestMark {
            read_at: SystemTime::now(),
            round: 0,
            request_id: None,
            probe: None,
        })
    }

    /// A report was stored (`duplicate`: it already was) and acknowledged:
    /// it joins the current `report.ingest` batch, as a link to its probe.
    pub fn acked(&self, mark: Option<IngestMark>, probe_id: &str, duplicate: bool) {
        let (Some(on), Some(mark)) = (&self.on, mark) else { return };
        // The probe's own span has the check, region, round and agent (its
        // resource): the link only names the probe, and an exception.
        let link = mark.probe.map(|cx| {
            let mut attrs = vec![KeyValue::new("mailloop.probe.id", probe_id.to_string())];
            if duplicate {
                attrs.push(KeyValue::new("mailloop.ingest.result", "duplicate"));
            }
            if let Some(r) = mark.request_id {
                attrs.push(KeyValue::new("mailloop.request_id", r));
            }
            Link::new(cx, attrs, 0)
        });
        let now = SystemTime::now();
        let full = {
            let mut open = on.batch.lock().unwrap_or_else(|p| p.into_inner());
            let b = open.get_or_insert_with(|| IngestBatch {
                opened: Instant::now(),
                started: mark.read_at,
                ended: now,
                links: Vec::with_capacity(INGEST_BATCH),
                reports: 0,
                stored: 0,
                duplicate: 0,
            });
            b.started = b.started.min(mark.read_at);
            b.ended = b.ended.max(now);
            b.links.extend(link);
            b.reports += 1;
            if duplicate {
                b.duplicate += 1;
            } else {
                b.stored += 1;
            }
            b.reports >= INGEST_BATCH as i64
        };
        if full {
            on.flush(false);
        }
    }

    /// A report refused (`rejected`) or not stored (`error`): a
    /// `report.ingest` span of its own, from its read to now, in error with
    /// `why`, with every id as an attribute and a link to its probe.
    pub fn failed(
        &self,
        mark: Option<IngestMark>,
        check: &str,
        probe_id: &str,
        result: &'static str,
        why: &str,
    ) {
        let (Some(on), Some(mark)) = (&self.on, mark) else { return };
        let tracer = on.exporter.tracer();
        let mut attrs = vec![
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.service", "mailloop.v1.AgentService"),
            KeyValue::new("rpc.method", "ReportResults"),
            KeyValue::new("mailloop.agent", self.agent.clone()),
            KeyValue::new("mailloop.region", self.region.clone()),
            KeyValue::new("mailloop.check", check.to_string()),
            KeyValue::new("mailloop.probe.id", probe_id.to_string()),
            KeyValue::new("mailloop.reports", 1),
            KeyValue::new("mailloop.ingest.result", result),
            KeyValue::new("error.type", result),
        ];
        if mark.round != 0 {
            attrs.push(KeyValue::new("mailloop.round", mark.round as i64));
        }
        if let Some(r) = mark.request_id {
            attrs.push(KeyValue::new("mailloop.request_id", r));
        }
        let links = mark
            .probe
            .map(|cx| vec![Link::new(cx, vec![KeyValue::new("mailloop.link", "probe")], 0)])
            .unwrap_or_default();
        let mut span = tracer
            .span_builder("report.ingest")
            .with_kind(SpanKind::Server)
            .with_start_time(mark.read_at)
            .with_attributes(attrs)
            .with_links(links)
            .start_with_context(tracer, &Context::new());
        span.set_status(Status::error(why.to_string()));
        span.end();
    }
}
