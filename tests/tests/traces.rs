//! OTLP traces of real probes on the real mail stack, received by a test
//! collector that decodes them with the official OpenTelemetry protocol
//! types (`opentelemetry-proto`): over gRPC (its tonic `TraceService`
//! server) and over HTTP/protobuf (its prost messages behind an axum route).
//!
//! What is checked is what a user of Jaeger or Tempo relies on: one trace
//! per probe, a root `probe` span with one child per step, each step exactly
//! as long as the report says (to the microsecond), failed steps in error
//! with the server's reply, the resource naming the agent, no secret in any
//! attribute, and a collector that is down changing nothing about the probe.

use mailloop_common::ProbeReport;
use mailloop_tests::{Check, Stack, agent_bin};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{Span, status::StatusCode};
use prost::Message;
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// The test collector.

/// Everything a collector received, as decoded requests, and each
/// request's headers (gRPC metadata, HTTP headers), lower-case names.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<ExportTraceServiceRequest>>>, Arc<Mutex<Vec<HashMap<String, String>>>>);

/// A span with the resource it came with.
#[derive(Debug, Clone)]
struct Got {
    span: Span,
    resource: HashMap<String, Val>,
}

impl Received {
    /// Every span of `trace_id` (hex), once `want` of them have arrived.
    fn trace(&self, trace_id: &str, want: usize) -> Vec<Got> {
        let deadline = Instant::now() + mailloop_tests::patience(Duration::from_secs(30));
        loop {
            let spans = self.spans(trace_id);
            if spans.len() >= want || Instant::now() > deadline {
                return spans;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn spans(&self, trace_id: &str) -> Vec<Got> {
        let mut out = Vec::new();
        for req in self.0.lock().unwrap().iter() {
            for rs in &req.resource_spans {
                let resource = rs.resource.as_ref().map(|r| attrs(&r.attributes)).unwrap_or_default();
                for ss in &rs.scope_spans {
                    for s in &ss.spans {
                        if hex(&s.trace_id) == trace_id {
                            out.push(Got { span: s.clone(), resource: resource.clone() });
                        }
                    }
                }
            }
        }
        out
    }

    /// Every span received so far.
    fn all(&self) -> Vec<Got> {
        let mut out = Vec::new();
        for req in self.0.lock().unwrap().iter() {
            for rs in &req.resource_spans {
                let resource = rs.resource.as_ref().map(|r| attrs(&r.attributes)).unwrap_or_default();
                for ss in &rs.scope_spans {
                    out.extend(ss.spans.iter().map(|s| Got { span: s.clone(), resource: resource.clone() }));
                }
            }
        }
        out
    }

    /// The first span `matches` accepts, once one has arrived (deadline 120 s).
    fn wait_for(&self, what: &str, matches: impl Fn(&Got) -> bool) -> Got {
        mailloop_tests::cluster::wait_until(Duration::from_secs(120), what, || self.all().into_iter().find(|g| matches(g)))
    }

    fn all_debug(&self) -> String {
        format!("{:?}", self.0.lock().unwrap())
    }

    /// The headers of every request received so far.
    fn headers(&self) -> Vec<HashMap<String, String>> {
        self.1.lock().unwrap().clone()
    }

    fn note_headers(&self, headers: &axum::http::HeaderMap) {
        let map = headers.iter().map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect();
        self.1.lock().unwrap().push(map);
    }
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.note_headers(&request.metadata().clone().into_headers());
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// A collector on 127.0.0.1:0 in its own thread and runtime.
struct Collector {
    addr: SocketAddr,
    received: Received,
}

impl Collector {
    fn grpc() -> Collector {
        Self::start(|listener, received| {
            Box::pin(async move {
                let incoming = tonic::transport::server::TcpIncoming::from(listener);
                tonic::transport::Server::builder()
                    .add_service(TraceServiceServer::new(received))
                    .serve_with_incoming(incoming)
                    .await
                    .unwrap();
            })
        })
    }

    fn http() -> Collector {
        Self::start(|listener, received| {
            Box::pin(async move {
                let app = axum::Router::new().route(
                    "/v1/traces",
                    axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| async move {
                        received.note_headers(&headers);
                        let req = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf body");
                        received.0.lock().unwrap().push(req);
                        ([("content-type", "application/x-protobuf")], ExportTraceServiceResponse { partial_success: None }.encode_to_vec())
                    }),
                );
                axum::serve(listener, app).await.unwrap();
            })
        })
    }

    fn start(
        serve: impl FnOnce(tokio::net::TcpListener, Received) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + 'static,
    ) -> Collector {
        let received = Received::default();
        let (tx, rx) = std::sync::mpsc::channel();
        let r = received.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                serve(listener, r).await;
            });
        });
        Collector { addr: rx.recv().unwrap(), received }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

// ---------------------------------------------------------------------------
// Reading spans.

#[derive(Debug, Clone, PartialEq)]
enum Val {
    S(String),
    I(i64),
    F(f64),
    B(bool),
    Other,
}

fn attrs(kvs: &[KeyValue]) -> HashMap<String, Val> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v: &AnyValue| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => Val::S(s.clone()),
                Some(any_value::Value::IntValue(i)) => Val::I(*i),
                Some(any_value::Value::DoubleValue(f)) => Val::F(*f),
                Some(any_value::Value::BoolValue(b)) => Val::B(*b),
                _ => Val::Other,
            };
            (kv.key.clone(), v)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn s(v: &str) -> Val {
    Val::S(v.to_string())
}

fn unix_nanos(rfc3339: &str) -> u64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339).unwrap().timestamp_nanos_opt().unwrap() as u64
}

/// Whether span `g` is `name` with attribute `key` = `value`.
fn named(g: &Got, name: &str, key: &str, value: &Val) -> bool {
    g.span.name == name && attrs(&g.span.attributes).get(key) == Some(value)
}

/// Microseconds, rounded: the report's resolution.
fn micros_of_ms(ms: f64) -> i64 {
    (ms * 1000.0).round() as i64
}

fn micros_of_ns(ns: u64) -> i64 {
    (ns as f64 / 1000.0).round() as i64
}

// ---------------------------------------------------------------------------
// Running probes.

/// `mailloop-agent probe --output json` with `env`; (exit code, report, stderr).
fn probe(check: &Check, env: &[(&str, String)]) -> (i32, ProbeReport, String) {
    let f = check.file();
    let mut cmd = Command::new(agent_bin());
    cmd.args(["probe", "--config", f.path().to_str().unwrap(), "--output", "json"]).env_remove("MAILLOOP_LOG");
    for var in [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_SERVICE_NAME",
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_EXPORTER_OTLP_HEADERS",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report: ProbeReport = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    (out.status.code().unwrap_or(-1), report, stderr)
}

fn exporting_to(c: &Collector, protocol: &str) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", c.url()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.to_string()),
        ("OTEL_SERVICE_NAME", "mailloop-traces-test".to_string()),
        ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test,team=mail%20ops".to_string()),
    ]
}

/// The trace of `report`: (root, children in report order), after checking
/// the tree's shape and that every step is exactly as the report timed it.
fn tree(received: &Received, report: &ProbeReport) -> (Got, Vec<Got>) {
    let trace_id = report.trace_id.as_deref().expect("the report names its trace");
    let spans = received.trace(trace_id, report.steps.len() + 1);
    assert_eq!(spans.len(), report.steps.len() + 1, "one root and one span per step; got {spans:#?}");
    let roots: Vec<&Got> = spans.iter().filter(|g| g.span.parent_span_id.is_empty()).collect();
    assert_eq!(roots.len(), 1, "exactly one root span");
    let root = roots[0].clone();
    assert_eq!(root.span.name, "probe");
    assert_eq!(Some(hex(&root.span.span_id)), report.span_id, "the report names its root span");
    assert_eq!(root.span.start_time_unix_nano, unix_nanos(&report.started_at), "the root starts when the report says");

    let origin = unix_nanos(&report.attempts.last().expect("an attempt").started_at);
    let mut children = Vec::new();
    for step in &report.steps {
        let found: Vec<&Got> = spans.iter().filter(|g| g.span.name == step.name.as_str()).collect();
        assert_eq!(found.len(), 1, "one span for {}", step.name);
        let c = found[0].clone();
        assert_eq!(c.span.parent_span_id, root.span.span_id, "{} is a child of the root", step.name);
        let duration = c.span.end_time_unix_nano - c.span.start_time_unix_nano;
        assert_eq!(
            micros_of_ns(duration),
            micros_of_ms(step.ms),
            "{}: {} ns in the trace, {} ms in the report",
            step.name,
            duration,
            step.ms
        );
        assert_eq!(
            micros_of_ns(c.span.start_time_unix_nano - origin),
            micros_of_ms(step.start_ms),
            "{} starts where the report says",
            step.name
        );
        assert!(c.span.end_time_unix_nano <= root.span.end_time_unix_nano, "{} ends within the root", step.name);
        children.push(c);
    }
    (root, children)
}

fn status(g: &Got) -> (StatusCode, String) {
    let st = g.span.status.clone().unwrap_or_default();
    (StatusCode::try_from(st.code).unwrap(), st.message)
}

fn secrets_absent(received: &Received) {
    let st = Stack::get();
    let everything = received.all_debug();
    for secret in [st.var("MAILSTACK_SMTP_PASS"), st.var("MAILSTACK_IMAP_PASS"), st.var("MAILSTACK_SMTP_USER")] {
        assert!(!everything.contains(secret), "{secret:?} was exported");
    }
}

// ---------------------------------------------------------------------------
// The tests.

#[test]
fn grpc_trace_of_a_real_probe_matches_its_report() {
    let collector = Collector::grpc();
    let check = Check::new("traces-grpc");
    let (code, report, err) = probe(&check, &exporting_to(&collector, "grpc"));
    assert_eq!(code, 0, "{err}");
    let (root, children) = tree(&collector.received, &report);

    let a = attrs(&root.span.attributes);
    assert_eq!(a["mailloop.check"], s("traces-grpc"));
    assert_eq!(a["mailloop.probe.id"], s(&report.probe_id));
    assert_eq!(a["mailloop.outcome"], s("ok"));
    assert_eq!(a["mailloop.rtt_ms"], Val::F(report.rtt_ms.unwrap()));
    assert_eq!(a["mailloop.delivery_ms"], Val::F(report.delivery_ms.unwrap()));
    assert!(!a.contains_key("error.type"), "{a:?}");
    assert_eq!(status(&root).0, StatusCode::Unset);

    // The resource says who sent it, with the environment's own attributes.
    let r = &root.resource;
    assert_eq!(r["service.name"], s("mailloop-traces-test"));
    assert_eq!(r["service.version"], s(env!("CARGO_PKG_VERSION")));
    assert!(matches!(&r["service.instance.id"], Val::S(h) if !h.is_empty()), "{r:?}");
    assert_eq!(r["deployment.environment"], s("test"));
    assert_eq!(r["team"], s("mail ops"));

    // Steps carry the semantic-convention names.
    let st = Stack::get();
    let step = |name: &str| children.iter().find(|c| c.span.name == name).map(|c| attrs(&c.span.attributes)).unwrap();
    let connect = step("smtp.connect");
    assert_eq!(connect["server.address"], s("127.0.0.1"));
    assert_eq!(connect["server.port"], Val::I(st.port("MAILSTACK_PORT_SUBMISSION") as i64));
    assert_eq!(connect["network.protocol.name"], s("smtp"));
    let starttls = step("smtp.starttls");
    assert!(matches!(&starttls["tls.protocol.version"], Val::S(v) if v == "1.3" || v == "1.2"), "{starttls:?}");
    assert!(matches!(&starttls["tls.cipher"], Val::S(c) if !c.is_empty()), "{starttls:?}");
    assert_eq!(step("smtp.data_ack")["mailloop.smtp.reply.code"], Val::I(250));
    assert_eq!(step("imap.login")["server.port"], Val::I(st.port("MAILSTACK_PORT_IMAPS") as i64));
    assert_eq!(step("imap.login")["network.protocol.name"], s("imap"));
    for c in &children {
        assert_eq!(status(c).0, StatusCode::Unset, "{} is not in error", c.span.name);
    }
    secrets_absent(&collector.received);

    // The table names the trace, so a user can look it up.
    let f = check.file();
    let out = Command::new(agent_bin())
        .args(["probe", "--config", f.path().to_str().unwrap()])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url())
        .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    let id =
        table.lines().find_map(|l| l.trim().strip_prefix("trace:")).map(str::trim).unwrap_or_else(|| panic!("no trace line in\n{table}"));
    assert_eq!(id.len(), 32, "{table}");
    assert!(!collector.received.trace(id, 1).is_empty(), "the printed trace id is the exported trace");
}

#[test]
fn http_protobuf_export_and_failed_steps_in_error() {
    let collector = Collector::http();
    let env = exporting_to(&collector, "http/protobuf");

    // A recipient the receiver does not have: 550 5.1.1 at RCPT TO.
    let mut check = Check::new("traces-http-rcpt");
    check.to = format!("nosuchuser@{}", Stack::get().var("MAILSTACK_RCPT_DOMAIN"));
    let (code, report, err) = probe(&check, &env);
    assert_eq!(code, 2, "{err}");
    let (root, children) = tree(&collector.received, &report);
    let (code, message) = status(&root);
    assert_eq!(code, StatusCode::Error);
    assert!(message.contains("smtp.rcpt_to") && message.contains("550"), "{message}");
    assert_eq!(attrs(&root.span.attributes)["error.type"], s("permanent"));
    let rcpt = children.iter().find(|c| c.span.name == "smtp.rcpt_to").unwrap();
    let (code, message) = status(rcpt);
    assert_eq!(code, StatusCode::Error);
    assert!(message.starts_with("permanent: 550 5.1.1"), "{message}");
    let a = attrs(&rcpt.span.attributes);
    assert_eq!(a["error.type"], s("permanent"));
    assert_eq!(a["mailloop.smtp.reply.code"], Val::I(550));
    assert_eq!(a["mailloop.smtp.enhanced_status"], s("5.1.1"));
    for c in children.iter().filter(|c| c.span.name != "smtp.rcpt_to") {
        assert_ne!(status(c).0, StatusCode::Error, "{} is not the failed step", c.span.name);
    }

    // A wrong submission password: the auth step is in error, the password
    // (right or wrong) is nowhere.
    let mut check = Check::new("traces-http-auth");
    let user = Stack::get().var("MAILSTACK_SMTP_USER").to_string();
    check.smtp_login = Some((user, "wrong-secret-xyz".into()));
    let (code, report, err) = probe(&check, &env);
    assert_eq!(code, 2, "{err}");
    let failure = report.failure.clone().expect("a failure");
    let (_, children) = tree(&collector.received, &report);
    let auth = children.iter().find(|c| c.span.name == "smtp.auth").unwrap();
    let (code, message) = status(auth);
    assert_eq!(code, StatusCode::Error);
    assert!(message.starts_with(&format!("{}: 535", failure.class)), "{message}");
    assert_eq!(attrs(&auth.span.attributes)["error.type"], s(&failure.class.to_string()));
    assert!(!collector.received.all_debug().contains("wrong-secret-xyz"), "the wrong password was exported");
    secrets_absent(&collector.received);
}

#[test]
fn a_collector_that_is_down_changes_nothing_about_the_probe() {
    // A port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let check = Check::new("traces-down");
    let (plain_code, plain, _) = probe(&check, &[]);
    assert!(plain.trace_id.is_none(), "no endpoint: no trace");
    for protocol in ["grpc", "http/protobuf"] {
        let env =
            [("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{port}")), ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.to_string())];
        let (code, report, err) = probe(&check, &env);
        assert_eq!((code, plain_code), (0, 0), "{err}");
        assert_eq!(report.outcome, plain.outcome);
        assert_eq!(report.failure, plain.failure);
        // SMTP and IMAP run side by side: the same steps, in either order.
        let names = |r: &ProbeReport| r.steps.iter().map(|s| s.name).collect::<std::collections::BTreeSet<_>>();
        assert_eq!(names(&report), names(&plain));
        assert!(report.trace_id.is_some(), "the trace was made even if it could not be sent");
        let warnings = err.lines().filter(|l| l.contains("cannot export traces")).count();
        assert_eq!(warnings, 1, "{protocol}: one warning about the collector, not one per batch or per span:\n{err}");
    }
}

#[test]
fn otlp_headers_reach_the_collector_and_never_the_logs() {
    let secret = "tenant-s3cret-7f3a9c";
    let check = Check::new("traces-headers");
    for (collector, protocol) in [(Collector::grpc(), "grpc"), (Collector::http(), "http/protobuf")] {
        let mut env = exporting_to(&collector, protocol);
        env.push(("OTEL_EXPORTER_OTLP_HEADERS", format!("x-scope-orgid={secret},x-mailloop-test=present")));
        // The most talkative level mailloop's own code logs at.
        env.push(("MAILLOOP_LOG", "mailloop_agent=trace,mailloop_common=trace,debug".to_string()));
        let (code, report, stderr) = probe(&check, &env);
        assert_eq!(code, 0, "{stderr}");
        tree(&collector.received, &report);
        let headers = collector.received.headers();
        assert!(!headers.is_empty(), "{protocol}: no request");
        for h in &headers {
            assert_eq!(h.get("x-scope-orgid").map(String::as_str), Some(secret), "{protocol}: {h:?}");
            assert_eq!(h.get("x-mailloop-test").map(String::as_str), Some("present"), "{protocol}: {h:?}");
        }
        assert!(stderr.contains("exporting traces to"), "{protocol}: the debug log was on: {stderr}");
        assert!(!stderr.contains(secret), "{protocol}: the header value is in the log:\n{stderr}");
        let stdout_report = serde_json::to_string(&report).unwrap();
        assert!(!stdout_report.contains(secret), "{protocol}: the header value is in the report");
        assert!(!collector.received.all_debug().contains(secret), "{protocol}: the header value is in a span");
    }
}

#[test]
fn bad_trace_settings_are_config_errors() {
    let check = Check::new("traces-badenv");
    let f = check.file();
    let out = Command::new(agent_bin())
        .args(["probe", "--config", f.path().to_str().unwrap()])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://127.0.0.1:1")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("OTEL_EXPORTER_OTLP_ENDPOINT") && err.contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "both named: {err}");

    let dir = tempfile::tempdir().unwrap();
    let agent_toml = dir.path().join("agent.toml");
    std::fs::write(
        &agent_toml,
        "[agent]\nregion = \"eu\"\ncoordinator_url = \"http://127.0.0.1:1\"\ntoken = \"t\"\n\
         [telemetry]\nendpoint = \"collector:4317\"\nprotocol = \"smoke\"\nheaders = { a = 1 }\nbogus = true\n",
    )
    .unwrap();
    let out = Command::new(agent_bin())
        .args(["run", "--config", agent_toml.to_str().unwrap()])
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    for key in ["telemetry.endpoint", "telemetry.protocol", "telemetry.headers.a", "telemetry.bogus"] {
        assert!(err.contains(key), "{key} not named in: {err}");
    }
}

#[test]
fn a_greylisted_probe_keeps_its_deferred_attempts_as_events() {
    let st = Stack::get();
    // A fresh triplet on the greylisting MX: postgrey answers 451 until its delay has passed.
    let name = mailloop_tests::unique("trgrey");
    let mut check = Check::new(&name);
    check.to = format!("t-{name}@{}", st.var("MAILSTACK_GREY_DOMAIN"));
    check.smtp_port = st.port("MAILSTACK_PORT_GREY");
    check.smtp_security = "none";
    check.smtp_login = None;
    check.check_extra = vec!["greylist_retry = \"4s\"".into(), "greylist_grace = \"2m\"".into()];
    let collector = Collector::grpc();
    let (code, report, err) = probe(&check, &exporting_to(&collector, "grpc"));
    assert_eq!(code, 0, "{err}");
    assert!(report.greylisted && report.attempts.len() >= 2, "{:#?}", report.attempts);
    // The tree checks the steps against the last attempt, the one that went through.
    let (root, _) = tree(&collector.received, &report);
    let a = attrs(&root.span.attributes);
    assert_eq!(a["mailloop.greylisted"], Val::B(true));
    assert_eq!(a["mailloop.attempts"], Val::I(report.attempts.len() as i64));
    assert_eq!(a["mailloop.greylist_ms"], Val::F(report.greylist_ms.unwrap()));
    let events = &root.span.events;
    assert_eq!(events.len(), report.attempts.len() - 1, "one event per deferred attempt: {events:#?}");
    for (i, (ev, attempt)) in events.iter().zip(&report.attempts).enumerate() {
        assert_eq!(ev.name, "mailloop.attempt.deferred");
        assert_eq!(ev.time_unix_nano, unix_nanos(&attempt.started_at), "event {i} is when the attempt started");
        let ea = attrs(&ev.attributes);
        let f = attempt.failure.as_ref().expect("a deferred attempt failed");
        assert_eq!(ea["mailloop.attempt"], Val::I(i as i64 + 1));
        assert_eq!(ea["error.type"], s("deferred"));
        assert_eq!(ea["mailloop.failure.step"], s("smtp.rcpt_to"));
        assert_eq!(ea["mailloop.smtp.reply.code"], Val::I(451));
        assert_eq!(ea["mailloop.smtp.enhanced_status"], s(f.enhanced.as_deref().unwrap()));
    }
    assert_eq!(status(&root).0, StatusCode::Unset, "delivered in the end: not an error");
}

/// With a collector that accepts connections but never answers, a flood of
/// traces is held in a bounded queue: memory stays flat and recording never
/// waits for the exporter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_collector_holds_bounded_memory() {
    use mailloop_agent::telemetry::{Identity, Telemetry, TelemetryConfig};
    // Accepts, reads nothing, answers nothing.
    let blackhole = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", blackhole.local_addr().unwrap());
    let _held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in blackhole.incoming().take(64) {
            conns.push(c);
        }
        std::thread::sleep(Duration::from_secs(3600));
    });

    let check = Check::new("traces-flood");
    let report = check.probe().await;
    let f = check.file();
    let cfg = mailloop_common::config::ProbeConfig::load(f.path()).unwrap();
    let check_cfg = cfg.checks.into_iter().next().unwrap();
    let config = TelemetryConfig { endpoint: Some(url), ..Default::default() };
    let telemetry = Telemetry::start(&config, &Identity { instance: "flood".into(), region: None }).unwrap().expect("exporting");

    let rss = || -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        statm.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 4096
    };
    // Warm up past the queue's capacity, then measure a flood thirty times as large.
    let per_trace = report.steps.len() + 1;
    let fill = mailloop_agent::telemetry::MAX_QUEUED_SPANS / per_trace + 1;
    for _ in 0..fill * 2 {
        telemetry.record(&report, &check_cfg);
    }
    let before = rss();
    for _ in 0..fill * 60 {
        telemetry.record(&report, &check_cfg);
    }
    let grown = rss().saturating_sub(before);
    // Unbounded, these ~250,000 spans hold about 100 MiB (measured).
    assert!(grown < 16 * 1024 * 1024, "memory grew by {} MiB while the collector was stuck", grown / (1024 * 1024));
    drop(telemetry);
}

/// `mailloop-agent run` with a `[telemetry]` table: every scheduled probe is
/// a trace, the resource names the agent and its region, and the report the
/// coordinator stores carries the trace's id (so a verdict can point at it).
#[test]
fn the_long_running_agent_traces_every_probe_it_runs() {
    use mailloop_tests::cluster::{Cluster, IMAP_PASS_ENV, Proc, SMTP_PASS_ENV, check_toml, wait_until};
    let collector = Collector::grpc();
    let check = Check::new("traces-run");
    let mut c = Cluster::start_with_agents(&check_toml(&check, "2s", &["eu-trace"]), &[("tr-eu", "eu-trace")]);
    // The harness's agent, restarted by hand with a [telemetry] table.
    c.agents[0].kill9();
    let st = Stack::get();
    let config = c.dir.path().join("tr-eu-traced.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nname = \"tr-eu\"\nregion = \"eu-trace\"\ncoordinator_url = \"http://{}\"\ntoken_file = {:?}\nspool = {:?}\n\
             shutdown_grace = \"5s\"\n[dns]\nnameservers = [\"{}:53\"]\n\
             [telemetry]\nendpoint = \"{}\"\nservice_name = \"agent-under-test\"\nresource_attributes = {{ \"deployment.environment\" = \"ci\" }}\n",
            c.coordinator.grpc,
            c.dir.path().join("tr-eu.token"),
            c.agents[0].spool_path(),
            st.var("MAILSTACK_DNS"),
            collector.url(),
        ),
    )
    .unwrap();
    let log = std::fs::File::create(c.dir.path().join("tr-eu-traced.log")).unwrap();
    let mut cmd = Command::new(agent_bin());
    cmd.args(["run", "--config"])
        .arg(&config)
        .env(SMTP_PASS_ENV, st.var("MAILSTACK_SMTP_PASS"))
        .env(IMAP_PASS_ENV, st.var("MAILSTACK_IMAP_PASS"));
    for var in ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES"] {
        cmd.env_remove(var);
    }
    let mut agent = Proc::new(cmd.stdout(std::process::Stdio::null()).stderr(log).spawn().unwrap());

    // A stored report with a trace id, from the traced agent.
    let stored = wait_until(Duration::from_secs(60), "a traced report stored by the coordinator", || {
        c.coordinator.results(&check.name).into_iter().find(|r| r["report"]["trace_id"].is_string())
    });
    let report: ProbeReport = serde_json::from_value(stored["report"].clone()).unwrap();
    assert_eq!(report.outcome, mailloop_common::Outcome::Ok);
    let (root, _) = tree(&collector.received, &report);
    assert_eq!(root.resource["service.name"], s("agent-under-test"));
    assert_eq!(root.resource["service.instance.id"], s("tr-eu"));
    assert_eq!(root.resource["mailloop.region"], s("eu-trace"));
    assert_eq!(root.resource["deployment.environment"], s("ci"));
    assert_eq!(attrs(&root.span.attributes)["mailloop.region"], s("eu-trace"));
    secrets_absent(&collector.received);
    agent.signal("TERM");
    assert_eq!(agent.wait_exit(Duration::from_secs(30)), Some(0), "the agent stops cleanly with its exporter");
}

// ---------------------------------------------------------------------------
// The coordinator's own traces.

/// The `[telemetry]` table that sends to `c` (coordinator and agents alike).
fn telemetry_table(c: &Collector) -> String {
    format!("\n[telemetry]\nendpoint = \"{}\"\n", c.url())
}

/// Nothing the cluster was configured with as a secret was exported: the
/// stack's passwords, the admin token and the agents' tokens.
fn cluster_secrets_absent(received: &Received) {
    use mailloop_tests::cluster::{ADMIN_TOKEN, AGENTS};
    secrets_absent(received);
    let everything = received.all_debug();
    assert!(!everything.contains(ADMIN_TOKEN), "the admin token was exported");
    for (name, _) in AGENTS {
        let token = format!("token-{name}-for-distributed-tests");
        assert!(!everything.contains(&token), "agent {name}'s token was exported");
    }
}

/// A coordinator and two agents exporting to one collector: every round's
/// `verdict` span links to exactly the probe spans of the reports it
/// judged (the trace and span ids the stored reports carry), each report's
/// ingest is a link to its probe from a `report.ingest` batch span, and the
/// coordinator names itself in its resource.
#[test]
fn each_verdict_links_to_the_probes_it_judged() {
    use mailloop_tests::cluster::{AGENTS, Cluster, check_toml, wait_until};
    let collector = Collector::grpc();
    let check = Check::new("traces-verdict");
    let telemetry = telemetry_table(&collector);
    let regions: Vec<&str> = AGENTS.iter().map(|(_, r)| *r).collect();
    let config = format!("{}{telemetry}", check_toml(&check, "5s", &regions));
    let c = Cluster::start_configured(&config, &AGENTS, &telemetry);

    // A decided round with a traced report from every region.
    let (round, verdict, reports) = wait_until(Duration::from_secs(120), "a verdict on traced reports of both regions", || {
        let body = c.coordinator.get_ok(&format!("/api/v1/verdicts?check={}&limit=100", check.name));
        let rounds = c.rounds(&check.name);
        body["verdicts"].as_array()?.iter().find_map(|v| {
            let round = v["round"].as_u64()?;
            let reports: Vec<ProbeReport> = regions
                .iter()
                .map(|r| rounds.get(&(r.to_string(), round))?.first().map(|row| serde_json::from_value(row["report"].clone()).unwrap()))
                .collect::<Option<_>>()?;
            reports.iter().all(|r| r.trace_id.is_some()).then(|| (round, v["verdict"].as_str().unwrap().to_string(), reports))
        })
    });

    let name = s(&check.name);
    let got = collector.received.wait_for(&format!("the verdict span of round {round}"), |g| {
        named(g, "verdict", "mailloop.round", &Val::I(round as i64)) && attrs(&g.span.attributes).get("mailloop.check") == Some(&name)
    });
    let a = attrs(&got.span.attributes);
    assert_eq!(a["mailloop.verdict"], s(&verdict), "the span says what the judge stored");
    assert_eq!(a["mailloop.reports"], Val::I(regions.len() as i64));
    let linked: std::collections::BTreeSet<(String, String)> = got.span.links.iter().map(|l| (hex(&l.trace_id), hex(&l.span_id))).collect();
    let judged: std::collections::BTreeSet<(String, String)> =
        reports.iter().map(|r| (r.trace_id.clone().unwrap(), r.span_id.clone().unwrap())).collect();
    assert_eq!(linked, judged, "one link per judged report, to its probe span");
    for l in &got.span.links {
        let la = attrs(&l.attributes);
        let report = reports.iter().find(|r| r.trace_id.as_deref() == Some(&hex(&l.trace_id))).unwrap();
        assert_eq!(la["mailloop.probe.id"], s(&report.probe_id));
        assert!(matches!(&la["mailloop.region"], Val::S(r) if regions.contains(&r.as_str())), "{la:?}");
    }
    // What a link points at exists: each agent's probe span, in its own trace.
    for (trace_id, span_id) in &judged {
        let probe = collector.received.wait_for("the linked probe span", |g| hex(&g.span.span_id) == *span_id);
        assert_eq!((probe.span.name.as_str(), &hex(&probe.span.trace_id)), ("probe", trace_id));
        assert_eq!(probe.resource["service.name"], s("mailloop-agent"));
    }
    // The verdict span is the judge's measurement: it starts after the round did.
    let round_start = c.coordinator.get_ok(&format!("/api/v1/verdicts?check={}&limit=100", check.name))["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["round"] == round)
        .map(|v| unix_nanos(v["round_start"].as_str().unwrap()))
        .unwrap();
    assert!(got.span.start_time_unix_nano >= round_start && got.span.end_time_unix_nano >= got.span.start_time_unix_nano);

    // The coordinator's resource.
    let r = &got.resource;
    assert_eq!(r["service.name"], s("mailloop-coordinator"));
    assert_eq!(r["service.version"], s(env!("CARGO_PKG_VERSION")));
    assert!(matches!(&r["service.instance.id"], Val::S(h) if !h.is_empty()), "{r:?}");

    // Ingest: reports are traced in batches, one `report.ingest` span per
    // batch, each report a link to the probe it carried with its ids.
    let eu = &reports[0];
    let (eu_trace, eu_span) = (eu.trace_id.clone().unwrap(), eu.span_id.clone().unwrap());
    let links_to_eu = |g: &Got| g.span.links.iter().any(|l| hex(&l.trace_id) == eu_trace && hex(&l.span_id) == eu_span);
    let ingest = collector.received.wait_for("the ingest span of a judged report", |g| g.span.name == "report.ingest" && links_to_eu(g));
    let ia = attrs(&ingest.span.attributes);
    assert_eq!(ia["rpc.method"], s("ReportResults"));
    let Val::I(n) = ia["mailloop.reports"] else { panic!("mailloop.reports: {ia:?}") };
    assert!(n >= 1 && n as usize >= ingest.span.links.len() && n as usize <= 128, "{n} reports, {} links", ingest.span.links.len());
    assert_eq!(ia["mailloop.reports.stored"], Val::I(n), "every report of the batch was new: {ia:?}");
    assert_eq!(ingest.resource["service.name"], s("mailloop-coordinator"));
    assert_eq!(status(&ingest).0, StatusCode::Unset);
    let link = ingest.span.links.iter().find(|l| hex(&l.span_id) == eu_span).unwrap();
    let la = attrs(&link.attributes);
    assert_eq!(la["mailloop.probe.id"], s(&eu.probe_id));
    assert!(!la.contains_key("mailloop.ingest.result"), "only a duplicate says so: {la:?}");
    assert!(ingest.span.start_time_unix_nano <= ingest.span.end_time_unix_nano);
    cluster_secrets_absent(&collector.received);
}

/// The value of the series `name{labels}` in a Prometheus text exposition.
fn series_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `GET path` from `addr` with extra `headers`: (status, body).
fn raw_get(addr: SocketAddr, path: &str, headers: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{headers}\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    (head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0), body.to_string())
}

/// The coordinator's gRPC handlers and admin API are traced: a span per
/// Register, Heartbeat and WatchAssignments call with the agent and region
/// (never its token), one per admin request named by its route, a refused
/// call in error; and a report the coordinator refuses is visible twice, as
/// a `report.ingest` span in error and in `mailloop_reports_rejected_total`.
#[test]
fn agent_calls_admin_requests_and_refused_reports_are_traced() {
    use mailloop_proto::pb;
    use mailloop_tests::cluster::{ADMIN_TOKEN, AGENTS, Cluster, check_toml};
    let collector = Collector::grpc();
    let check = Check::new("traces-calls");
    let telemetry = telemetry_table(&collector);
    let regions: Vec<&str> = AGENTS.iter().map(|(_, r)| *r).collect();
    let config = format!("{}{telemetry}", check_toml(&check, "30m", &regions));
    let c = Cluster::start_configured(&config, &AGENTS, &telemetry);
    let (agent, region) = AGENTS[0];
    let is_agent = |g: &Got| attrs(&g.span.attributes).get("mailloop.agent") == Some(&s(agent));

    // Each agent call: a server span with the agent and an OK status code.
    for method in ["Register", "WatchAssignments", "Heartbeat"] {
        let name = format!("mailloop.v1.AgentService/{method}");
        let got = collector.received.wait_for(&format!("the {method} span of {agent}"), |g| g.span.name == name && is_agent(g));
        let a = attrs(&got.span.attributes);
        assert_eq!((a["rpc.system"].clone(), a["rpc.method"].clone()), (s("grpc"), s(method)));
        assert_eq!(a["mailloop.region"], s(region));
        assert_eq!(a["rpc.grpc.status_code"], Val::I(0));
        assert_eq!(status(&got).0, StatusCode::Unset);
        assert_eq!(got.resource["service.name"], s("mailloop-coordinator"));
    }

    // A call with a wrong token and a report the coordinator refuses.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (refused, ack) = rt.block_on(async {
        let mut client = pb::agent_service_client::AgentServiceClient::connect(format!("http://{}", c.coordinator.grpc)).await.unwrap();
        let mut req = tonic::Request::new(pb::HeartbeatRequest { agent_id: agent.into(), ..Default::default() });
        req.metadata_mut().insert("authorization", "Bearer wrong-token-xyz-0123456789".parse().unwrap());
        let refused = client.heartbeat(req).await.expect_err("a wrong token is refused");
        let bad = pb::ProbeResult {
            probe_id: "refused-probe-1".into(),
            check_id: check.name.clone(),
            report_json: "{\"not\": \"a report\"}".into(),
            ..Default::default()
        };
        let mut req = tonic::Request::new(tonic::codegen::tokio_stream::iter(vec![bad]));
        let token = format!("Bearer token-{agent}-for-distributed-tests");
        req.metadata_mut().insert("authorization", token.parse().unwrap());
        let mut acks = client.report_results(req).await.unwrap().into_inner();
        let ack = acks.message().await.unwrap().expect("an ack for the refused report");
        (refused, ack)
    });
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert!(!ack.stored && ack.error.contains("not a probe report"), "{ack:?}");

    let got = collector.received.wait_for("the refused Heartbeat's span", |g| {
        g.span.name == "mailloop.v1.AgentService/Heartbeat" && status(g).0 == StatusCode::Error
    });
    let a = attrs(&got.span.attributes);
    assert_eq!(a["rpc.grpc.status_code"], Val::I(tonic::Code::Unauthenticated as i64));
    assert_eq!(a["error.type"], s("Unauthenticated"));
    assert!(!a.contains_key("mailloop.agent"), "no agent for an unknown token: {a:?}");

    let got = collector.received.wait_for("the refused report's ingest span", |g| {
        named(g, "report.ingest", "mailloop.probe.id", &s("refused-probe-1"))
    });
    let a = attrs(&got.span.attributes);
    assert_eq!((a["mailloop.ingest.result"].clone(), a["error.type"].clone()), (s("rejected"), s("rejected")));
    assert_eq!(a["mailloop.agent"], s(agent));
    let (code, message) = status(&got);
    assert_eq!(code, StatusCode::Error);
    assert_eq!(message, ack.error, "the span says why, as the ack did");
    let (_, metrics) = raw_get(c.coordinator.metrics, "/metrics", "");
    let rejected = series_value(&metrics, &format!("mailloop_reports_rejected_total{{region=\"{region}\"}}"));
    assert_eq!(rejected, Some(1.0), "the refused report is counted once:\n{metrics}");

    // An admin request: named by its route (not the path's id), with its status.
    let (code, _) = c.coordinator.get(&format!("/api/v1/checks/{}", check.name));
    assert_eq!(code, 200);
    let got = collector.received.wait_for("the admin request's span", |g| g.span.name == "GET /api/v1/checks/{id}");
    let a = attrs(&got.span.attributes);
    assert_eq!((a["http.route"].clone(), a["http.response.status_code"].clone()), (s("/api/v1/checks/{id}"), Val::I(200)));
    assert_eq!(got.resource["service.name"], s("mailloop-coordinator"));
    let (code, _) = raw_get(c.coordinator.http, "/api/v1/checks", "Authorization: Bearer wrong-token-xyz-admin\r\n");
    assert_eq!(code, 401, "a wrong token");
    collector.received.wait_for("the refused admin request's span", |g| {
        g.span.name == "GET /api/v1/checks" && attrs(&g.span.attributes).get("http.response.status_code") == Some(&Val::I(401))
    });

    let everything = collector.received.all_debug();
    assert!(!everything.contains("wrong-token-xyz"), "a presented token was exported");
    assert!(!everything.contains(ADMIN_TOKEN));
    cluster_secrets_absent(&collector.received);
}

/// `mailloopctl probe` prints a trace id, and that trace holds the whole
/// run: the coordinator's `run.order` span (child of the CLI's context)
/// and, below it, each region's `probe` span with its steps; the stored
/// reports name the same trace.
#[test]
fn an_on_demand_run_is_one_trace_from_the_cli_to_the_agents() {
    use mailloop_tests::cluster::{AGENTS, Cluster, check_toml};
    let collector = Collector::grpc();
    let check = Check::new("traces-ondemand");
    let telemetry = telemetry_table(&collector);
    let regions: Vec<&str> = AGENTS.iter().map(|(_, r)| *r).collect();
    let config = format!("{}{telemetry}", check_toml(&check, "30m", &regions));
    let c = Cluster::start_configured(&config, &AGENTS, &telemetry);

    let (code, out, err) = c.coordinator.ctl(&["probe", &check.name, "--timeout", "120s"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let trace_id = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("trace:"))
        .map(|t| t.trim().to_string())
        .unwrap_or_else(|| panic!("no trace line in\n{out}"));
    assert_eq!(trace_id.len(), 32, "{out}");

    // The stored reports of the run are in the CLI's trace.
    let run: Vec<ProbeReport> = c
        .coordinator
        .results(&check.name)
        .into_iter()
        .filter(|r| r["request_id"].is_string())
        .map(|r| serde_json::from_value(r["report"].clone()).unwrap())
        .collect();
    assert_eq!(run.len(), regions.len(), "one report per region");
    for r in &run {
        assert_eq!(r.trace_id.as_deref(), Some(trace_id.as_str()), "{} is in the CLI's trace", r.probe_id);
    }

    // The trace: run.order → probe (one per region) → steps.
    let want = 1 + run.iter().map(|r| r.steps.len() + 1).sum::<usize>();
    let spans = collector.received.trace(&trace_id, want);
    assert_eq!(spans.len(), want, "{spans:#?}");
    let order: Vec<&Got> = spans.iter().filter(|g| g.span.name == "run.order").collect();
    assert_eq!(order.len(), 1, "one order span");
    let order = order[0];
    assert_eq!(order.resource["service.name"], s("mailloop-coordinator"));
    assert_eq!(attrs(&order.span.attributes)["mailloop.check"], s(&check.name));
    assert_eq!(order.span.parent_span_id.len(), 8, "a child of the CLI's span context");
    for r in &run {
        let probe = spans.iter().find(|g| Some(hex(&g.span.span_id)) == r.span_id).expect("the report's probe span");
        assert_eq!(probe.span.name, "probe");
        assert_eq!(probe.span.parent_span_id, order.span.span_id, "the probe is a child of the order");
        assert_eq!(probe.resource["service.name"], s("mailloop-agent"));
        let steps = spans.iter().filter(|g| g.span.parent_span_id == probe.span.span_id).count();
        assert_eq!(steps, r.steps.len(), "each step of {} under its probe", r.probe_id);
    }

    // JSON output names the trace too.
    let (code, out, err) = c.coordinator.ctl(&["--output", "json", "probe", &check.name, "--timeout", "120s"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let body: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    let json_trace = body["trace_id"].as_str().expect("trace_id in the JSON output");
    assert_ne!(json_trace, trace_id, "each run is its own trace");
    for r in body["results"].as_array().unwrap() {
        assert_eq!(r["report"]["trace_id"], json_trace);
    }
    cluster_secrets_absent(&collector.received);
}

/// With the coordinator not exporting, the CLI's trace context still
/// reaches the agents: their probe spans are in the trace it printed.
#[test]
fn the_trace_context_passes_through_a_coordinator_that_does_not_export() {
    use mailloop_tests::cluster::{AGENTS, Cluster, check_toml};
    let collector = Collector::http();
    let check = Check::new("traces-passthrough");
    let telemetry = format!("{}protocol = \"http/protobuf\"\n", telemetry_table(&collector));
    let regions: Vec<&str> = AGENTS.iter().map(|(_, r)| *r).collect();
    let c = Cluster::start_configured(&check_toml(&check, "30m", &regions), &AGENTS, &telemetry);
    let (code, out, err) = c.coordinator.ctl(&["probe", &check.name, "--timeout", "120s"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let trace_id = out.lines().find_map(|l| l.trim().strip_prefix("trace:")).map(|t| t.trim().to_string()).expect("a trace line");
    // Every region's probe span arrives in the CLI's trace (each agent exports on its own).
    mailloop_tests::cluster::wait_until(Duration::from_secs(120), "a probe span per region in the CLI's trace", || {
        let probes = collector.received.spans(&trace_id).into_iter().filter(|g| g.span.name == "probe").count();
        assert!(probes <= regions.len(), "{probes} probe spans");
        (probes == regions.len()).then_some(())
    });
    assert!(collector.received.all().iter().all(|g| g.resource["service.name"] == s("mailloop-agent")), "the coordinator exported nothing");
}

/// Each alert delivery is an `alert.deliver` span, a child of the verdict
/// that raised it (its `traceparent` travels with the event), with the
/// channel, the incident and the result; a refused delivery is in error.
/// The webhook URLs (secrets: they carry tokens) are not exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_deliveries_are_spans_under_their_verdict() {
    use mailloop_common::telemetry::{TelemetryConfig, new_traceparent, parse_traceparent};
    use mailloop_coordinator::alerts::{Alerts, config};
    use mailloop_coordinator::judge::{AlertEvent, AlertEventKind, Incident, IncidentKind, IncidentState, Severity};
    use mailloop_coordinator::telemetry::Traces;

    let collector = Collector::grpc();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hooks = axum::Router::new()
        .route("/ok/{secret}", axum::routing::post(|| async { "ok" }))
        .route("/gone/{secret}", axum::routing::post(|| async { (axum::http::StatusCode::NOT_FOUND, "no such hook") }));
    tokio::spawn(async move { axum::serve(listener, hooks).await.unwrap() });
    let mut issues = Vec::new();
    let channels = config::parse(
        Some(&serde_json::json!([
            {"name": "team-hook", "type": "webhook", "url": format!("http://{addr}/ok/hook-secret-123")},
            {"name": "old-hook", "type": "webhook", "url": format!("http://{addr}/gone/hook-secret-456")},
        ])),
        &|_| None,
        &mut issues,
    );
    assert!(issues.is_empty(), "{issues:?}");
    let config = TelemetryConfig { endpoint: Some(collector.url()), ..Default::default() };
    let traces = Traces::start(&config, "alert-test".into()).unwrap();
    assert!(traces.is_on());
    let (_trigger, shutdown) = mailloop_coordinator::shutdown::channel();
    let alerts = Alerts::start_traced(channels, shutdown, traces.clone());

    let verdict = new_traceparent();
    let now = chrono::Utc::now().timestamp_millis();
    alerts.notify(AlertEvent {
        event: AlertEventKind::Opened,
        at_ms: now,
        incident: Incident {
            id: 4711,
            check_id: "corp".into(),
            kind: IncidentKind::Outage,
            severity: Severity::Critical,
            state: IncidentState::Open,
            key: String::new(),
            regions: vec!["eu-west".into()],
            step: Some("smtp.rcpt_to".into()),
            class: Some("permanent".into()),
            opened_at_ms: now,
            first_round: 1,
            last_round: 1,
            acknowledged_at_ms: None,
            acknowledged_by: None,
            resolved_at_ms: None,
            summary: "eu-west fails at smtp.rcpt_to".into(),
            timeline: Vec::new(),
        },
        traceparent: Some(verdict.clone()),
        intent: None,
    });
    let parent = parse_traceparent(&verdict).unwrap();
    let received = collector.received.clone();
    let (ok, gone) = tokio::task::spawn_blocking(move || {
        let ok = received.wait_for("the delivered alert's span", |g| named(g, "alert.deliver", "mailloop.alert.channel", &s("team-hook")));
        let gone = received.wait_for("the refused alert's span", |g| named(g, "alert.deliver", "mailloop.alert.channel", &s("old-hook")));
        (ok, gone)
    })
    .await
    .unwrap();
    for g in [&ok, &gone] {
        assert_eq!(hex(&g.span.trace_id), parent.trace_id().to_string(), "in the verdict's trace");
        assert_eq!(hex(&g.span.parent_span_id), parent.span_id().to_string(), "a child of the verdict span");
        let a = attrs(&g.span.attributes);
        assert_eq!(a["mailloop.incident.id"], Val::I(4711));
        assert_eq!(a["mailloop.incident.event"], s("opened"));
        assert_eq!(a["mailloop.alert.type"], s("webhook"));
        assert_eq!(g.resource["service.name"], s("mailloop-coordinator"));
    }
    let a = attrs(&ok.span.attributes);
    assert_eq!((a["mailloop.alert.result"].clone(), a["mailloop.alert.attempts"].clone()), (s("delivered"), Val::I(1)));
    assert_eq!(status(&ok).0, StatusCode::Unset);
    let a = attrs(&gone.span.attributes);
    assert_eq!(a["mailloop.alert.result"], s("failed"));
    let (code, message) = status(&gone);
    assert_eq!(code, StatusCode::Error);
    assert!(message.contains("404"), "{message}");
    assert_eq!(gone.span.events.len(), 1, "the failed attempt is an event: {:?}", gone.span.events);
    let everything = collector.received.all_debug();
    assert!(!everything.contains("hook-secret-123") && !everything.contains("hook-secret-456"), "a webhook URL was exported");
    tokio::task::spawn_blocking(move || traces.shutdown()).await.unwrap();
}
