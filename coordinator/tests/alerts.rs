//! Alert channels against local HTTP receivers on 127.0.0.1 (port 0): what
//! each channel type sends, routing, retries, permanent errors, isolation
//! of a hanging channel, a `notify` that never blocks, shutdown, and config
//! validation. Backoff is shortened through `ChannelConfig::backoff_base`;
//! nothing here sleeps to synchronise: every wait is on a channel or a
//! polled condition with a deadline.

use mailloop_common::config::ConfigIssue;
use mailloop_coordinator::alerts::{Alerts, ChannelConfig, config};
use mailloop_coordinator::judge::{
    AlertEvent, AlertEventKind, Incident, IncidentKind, IncidentState, Severity, TimelineEntry,
    VerdictKind,
};
use mailloop_coordinator::shutdown;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// How long any single expectation may take before the test fails.
const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- receiver

/// How the receiver answers one request.
#[derive(Clone, Debug)]
enum Answer {
    Status(u16, &'static str),
    /// 429 with `Retry-After: <seconds>`.
    RateLimited(u64),
    /// Read the request, then never answer (the connection stays open).
    Hang,
}

/// One request as received.
#[derive(Debug)]
struct Received {
    path: String,
    content_type: String,
    body: Value,
}

/// A tiny HTTP/1.1 receiver: records every request and answers from a
/// script (then `default`).
struct Receiver {
    url: String,
    requests: mpsc::UnboundedReceiver<Received>,
    script: Arc<Mutex<VecDeque<Answer>>>,
}

impl Receiver {
    async fn start(default: Answer, script: Vec<Answer>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, requests) = mpsc::unbounded_channel();
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let s = script.clone();
        tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                let answer = || s.lock().unwrap().pop_front().unwrap_or(default.clone());
                tokio::spawn(serve(conn, tx.clone(), answer()));
            }
        });
        Receiver {
            url: format!("http://{addr}/hook/T0KEN-in-path"),
            requests,
            script,
        }
    }

    /// The same receiver behind TLS, with a certificate for 127.0.0.1
    /// from a throwaway CA; returns the CA's PEM file too.
    async fn https() -> (Receiver, tempfile::NamedTempFile) {
        let (acceptor, ca) = tls_acceptor();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, requests) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    // A client that does not trust us fails here: nothing recorded.
                    if let Ok(tls) = acceptor.accept(conn).await {
                        serve(tls, tx, Answer::Status(200, "")).await;
                    }
                });
            }
        });
        let rx = Receiver {
            url: format!("https://{addr}/hook/T0KEN-in-path"),
            requests,
            script: Arc::default(),
        };
        (rx, ca)
    }

    async fn ok() -> Receiver {
        Receiver::start(Answer::Status(200, ""), vec![]).await
    }

    /// The next request, or a test failure after [`WAIT`].
    async fn next(&mut self) -> Received {
        tokio::time::timeout(WAIT, self.requests.recv())
            .await
            .expect("no request within the deadline")
            .expect("receiver stopped")
    }
}

async fn serve<S>(mut conn: S, tx: mpsc::UnboundedSender<Received>, answer: Answer)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    let len: usize = header("content-length").parse().unwrap_or(0);
    while buf.len() < head_end + len {
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
    let body = serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or(Value::Null);
    let _ = tx.send(Received {
        path,
        content_type: header("content-type"),
        body,
    });
    match answer {
        Answer::Status(code, text) => {
            let resp = format!(
                "HTTP/1.1 {code} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                text.len()
            );
            let _ = conn.write_all(resp.as_bytes()).await;
            let _ = conn.shutdown().await;
        }
        Answer::RateLimited(secs) => {
            let resp = format!(
                "HTTP/1.1 429 X\r\nretry-after: {secs}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
            let _ = conn.write_all(resp.as_bytes()).await;
            let _ = conn.shutdown().await;
        }
        Answer::Hang => {
            // Hold the connection open without answering.
            let _ = conn.read(&mut chunk).await;
            std::future::pending::<()>().await;
        }
    }
}

/// A server config for 127.0.0.1 signed by a fresh CA, and that CA as a file.
fn tls_acceptor() -> (tokio_rustls::TlsAcceptor, tempfile::NamedTempFile) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "mailloop alerts test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let chain = vec![CertificateDer::from_pem_slice(leaf.pem().as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(leaf_key.serialize_pem().as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), ca_pem).unwrap();
    (tokio_rustls::TlsAcceptor::from(Arc::new(config)), file)
}

// ---------------------------------------------------------------- helpers

fn no_env(_: &str) -> Option<String> {
    None
}

/// Parses `[[alert]]` tables (as JSON) and shortens the backoff to 10 ms.
fn channels(tables: Value) -> Vec<ChannelConfig> {
    let mut issues = Vec::new();
    let mut out = config::parse(Some(&tables), &no_env, &mut issues);
    assert!(issues.is_empty(), "{issues:?}");
    for c in &mut out {
        c.backoff_base = Duration::from_millis(10);
    }
    out
}

fn channel(table: Value) -> ChannelConfig {
    channels(json!([table])).remove(0)
}

fn webhook(name: &str, url: &str) -> Value {
    json!({"name": name, "type": "webhook", "url": url})
}

fn incident(kind: IncidentKind, severity: Severity) -> Incident {
    Incident {
        id: 42,
        check_id: "corp".into(),
        kind,
        severity,
        state: IncidentState::Open,
        key: String::new(),
        regions: vec!["eu-west".into(), "us-east".into()],
        step: Some("smtp.rcpt_to".into()),
        class: Some("permanent".into()),
        opened_at_ms: 1_764_291_723_000,
        first_round: 7,
        last_round: 8,
        acknowledged_at_ms: None,
        acknowledged_by: None,
        resolved_at_ms: None,
        summary: "Since 01:02 UTC all 2 regions fail at smtp.rcpt_to with 550 5.1.1 'User unknown' (permanent).".into(),
        timeline: vec![TimelineEntry {
            at_ms: 1_764_291_723_000,
            round: Some(8),
            event: "opened".into(),
            verdict: Some(VerdictKind::Down),
            note: "down in eu-west, us-east".into(),
        }],
    }
}

fn event(kind: IncidentKind, severity: Severity, what: AlertEventKind) -> AlertEvent {
    AlertEvent {
        event: what,
        at_ms: 1_764_291_724_500,
        incident: incident(kind, severity),
        traceparent: None,
        intent: None,
    }
}

fn outage(what: AlertEventKind) -> AlertEvent {
    event(IncidentKind::Outage, Severity::Critical, what)
}

/// Starts the channels; the trigger must stay alive for the test.
fn start(chs: Vec<ChannelConfig>) -> (Arc<Alerts>, shutdown::Trigger) {
    let (trigger, shutdown) = shutdown::channel();
    (Alerts::start(chs, shutdown), trigger)
}

/// The status entry of channel `name`.
fn status_of(alerts: &Alerts, name: &str) -> Value {
    alerts.status()["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no channel {name} in status"))
}

/// Polls `status()` until `cond` holds for channel `name`.
async fn status_until(alerts: &Alerts, name: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = status_of(alerts, name);
        if cond(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "status never matched: {s}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------- payloads

#[tokio::test]
async fn webhook_posts_version_event_time_and_the_whole_incident() {
    let mut rx = Receiver::ok().await;
    let (alerts, _t) = start(vec![channel(webhook("hook", &rx.url))]);
    let sent = Instant::now();
    alerts.notify(outage(AlertEventKind::Opened));
    let got = rx.next().await;
    eprintln!("notify to webhook received: {:?}", sent.elapsed());
    assert_eq!(got.path, "/hook/T0KEN-in-path");
    assert_eq!(got.content_type, "application/json");
    let b = &got.body;
    assert_eq!(b["version"], 1);
    assert_eq!(b["event"], "opened");
    assert_eq!(b["at"], "2025-11-28T01:02:04.500Z");
    let expected =
        serde_json::to_value(incident(IncidentKind::Outage, Severity::Critical)).unwrap();
    assert_eq!(b["incident"], expected);
    assert_eq!(b["incident"]["id"], 42);
    assert_eq!(b["incident"]["kind"], "outage");
    assert_eq!(b["incident"]["severity"], "critical");
    assert_eq!(b["incident"]["regions"], json!(["eu-west", "us-east"]));
    assert_eq!(b["incident"]["timeline"][0]["event"], "opened");
    let s = status_until(&alerts, "hook", |s| s["delivered"] == 1).await;
    assert_eq!(s["type"], "webhook");
    assert_eq!(s["pending"], 0);
    assert!(s["last_ok_at"].is_string(), "{s}");
}

#[tokio::test]
async fn https_webhooks_trust_the_configured_ca_and_only_that() {
    let (mut rx, ca) = Receiver::https().await;
    let mut trusted = webhook("trusted", &rx.url);
    trusted["ca_file"] = json!(ca.path());
    let mut untrusted = webhook("untrusted", &rx.url);
    untrusted["retries"] = json!(0);
    let (alerts, _t) = start(channels(json!([trusted, untrusted])));
    alerts.notify(outage(AlertEventKind::Opened));
    let got = rx.next().await;
    assert_eq!(got.path, "/hook/T0KEN-in-path");
    assert_eq!(got.body["incident"]["id"], 42);
    status_until(&alerts, "trusted", |s| s["delivered"] == 1).await;
    // System roots alone do not know the test CA: a TLS error, reported.
    let s = status_until(&alerts, "untrusted", |s| s["failed"] == 1).await;
    let err = s["last_error"].as_str().unwrap();
    assert!(err.contains("TLS with 127.0.0.1"), "{err}");
    assert!(!err.contains("T0KEN"), "{err}");
}

#[tokio::test]
async fn slack_text_is_one_line_with_kind_event_check_and_summary() {
    let mut rx = Receiver::ok().await;
    let mut t = webhook("chat", &rx.url);
    t["type"] = json!("slack");
    let (alerts, _t) = start(vec![channel(t)]);
    alerts.notify(outage(AlertEventKind::Opened));
    let got = rx.next().await;
    let text = got.body["text"].as_str().unwrap();
    assert_eq!(
        text,
        "[OUTAGE opened] check corp: Since 01:02 UTC all 2 regions fail at smtp.rcpt_to with 550 5.1.1 'User unknown' (permanent)."
    );
    assert!(!text.contains('\n'));
    assert!(got.body["blocks"].is_array());
}

#[tokio::test]
async fn pagerduty_trigger_acknowledge_resolve_share_one_dedup_key() {
    let mut rx = Receiver::start(Answer::Status(202, "{\"status\":\"success\"}"), vec![]).await;
    let pd = channel(json!({
        "name": "oncall", "type": "pagerduty", "url": rx.url,
        "routing_key": "R0UTING-KEY-0123456789",
    }));
    assert!(
        !format!("{pd:?}").contains("R0UTING-KEY"),
        "routing key in Debug"
    );
    assert!(
        !format!("{pd:?}").contains("T0KEN-in-path"),
        "URL token in Debug"
    );
    let (alerts, _t) = start(vec![pd]);
    for what in [
        AlertEventKind::Opened,
        AlertEventKind::Acknowledged,
        AlertEventKind::Resolved,
    ] {
        alerts.notify(outage(what));
    }
    let mut actions = Vec::new();
    for _ in 0..3 {
        let b = rx.next().await.body;
        assert_eq!(b["routing_key"], "R0UTING-KEY-0123456789");
        assert_eq!(b["dedup_key"], "mailloop-corp-outage-42");
        actions.push(b["event_action"].as_str().unwrap().to_string());
        if b["event_action"] == "trigger" {
            let p = &b["payload"];
            assert_eq!(p["severity"], "critical");
            assert_eq!(p["source"], "corp");
            assert_eq!(p["component"], "smtp.rcpt_to");
            assert_eq!(p["group"], "eu-west,us-east");
            assert_eq!(p["class"], "permanent");
            assert_eq!(p["custom_details"]["id"], 42);
            let summary = p["summary"].as_str().unwrap();
            assert!(summary.contains("User unknown") && summary.chars().count() <= 1024);
        }
    }
    assert_eq!(actions, ["trigger", "acknowledge", "resolve"]);
}

#[tokio::test]
async fn pagerduty_severity_follows_the_incident() {
    let mut rx = Receiver::ok().await;
    let (alerts, _t) = start(vec![channel(json!({
        "name": "pd", "type": "pagerduty", "url": rx.url, "routing_key": "k",
    }))]);
    alerts.notify(event(
        IncidentKind::Regional,
        Severity::Warning,
        AlertEventKind::Opened,
    ));
    alerts.notify(event(
        IncidentKind::Certificate,
        Severity::Info,
        AlertEventKind::Opened,
    ));
    let first = rx.next().await.body;
    let second = rx.next().await.body;
    assert_eq!(first["payload"]["severity"], "warning");
    assert_eq!(first["dedup_key"], "mailloop-corp-regional-42");
    assert_eq!(second["payload"]["severity"], "info");
}

// ---------------------------------------------------------------- routing

#[tokio::test]
async fn an_outage_pages_and_transit_goes_to_tickets_only() {
    let mut pager = Receiver::ok().await;
    let mut tickets = Receiver::ok().await;
    let (alerts, _t) = start(channels(json!([
        {"name": "pager", "type": "webhook", "url": pager.url,
         "kinds": ["outage", "regional"], "min_severity": "critical"},
        {"name": "tickets", "type": "webhook", "url": tickets.url,
         "kinds": ["regional", "performance"]},
    ])));
    alerts.notify(outage(AlertEventKind::Opened));
    // Regional (transit) is warning: below the pager's min_severity.
    alerts.notify(event(
        IncidentKind::Regional,
        Severity::Warning,
        AlertEventKind::Opened,
    ));
    alerts.notify(outage(AlertEventKind::Resolved));
    alerts.notify(event(
        IncidentKind::Performance,
        Severity::Warning,
        AlertEventKind::Opened,
    ));

    // Each channel delivers in order, so the next request after one proves
    // what was skipped in between.
    let p1 = pager.next().await.body;
    let p2 = pager.next().await.body;
    assert_eq!(
        (p1["incident"]["kind"].as_str(), p1["event"].as_str()),
        (Some("outage"), Some("opened"))
    );
    assert_eq!(
        (p2["incident"]["kind"].as_str(), p2["event"].as_str()),
        (Some("outage"), Some("resolved"))
    );
    let t1 = tickets.next().await.body;
    let t2 = tickets.next().await.body;
    assert_eq!(t1["incident"]["kind"], "regional");
    assert_eq!(t2["incident"]["kind"], "performance");
    status_until(&alerts, "pager", |s| s["delivered"] == 2).await;
    status_until(&alerts, "tickets", |s| s["delivered"] == 2).await;
}

#[test]
fn events_route_only_the_listed_lifecycle_steps() {
    let ch = channel(
        json!({"name": "x", "type": "webhook", "url": "http://127.0.0.1:9/",
                           "events": ["opened", "resolved"]}),
    );
    assert!(ch.routes(&outage(AlertEventKind::Opened)));
    assert!(!ch.routes(&outage(AlertEventKind::Acknowledged)));
    assert!(ch.routes(&outage(AlertEventKind::Resolved)));
    // Defaults: every kind, every severity, every event.
    let all = channel(webhook("all", "http://127.0.0.1:9/"));
    assert!(all.routes(&event(
        IncidentKind::Certificate,
        Severity::Info,
        AlertEventKind::Acknowledged
    )));
}

// ---------------------------------------------------------------- delivery

#[tokio::test]
async fn a_receiver_failing_twice_gets_the_event_on_the_third_attempt() {
    let mut rx = Receiver::start(
        Answer::Status(200, ""),
        vec![Answer::Status(500, "oops"), Answer::Status(503, "busy")],
    )
    .await;
    let (alerts, _t) = start(vec![channel(webhook("flaky", &rx.url))]);
    alerts.notify(outage(AlertEventKind::Opened));
    let first = rx.next().await.body;
    let second = rx.next().await.body;
    let third = rx.next().await.body;
    assert_eq!(first, second);
    assert_eq!(first, third);
    let s = status_until(&alerts, "flaky", |s| s["delivered"] == 1).await;
    assert_eq!(s["failed"], 0);
    assert_eq!(s["pending"], 0);
    // The last error stays visible next to the later success.
    assert!(
        s["last_error"].as_str().unwrap().contains("HTTP 503: busy"),
        "{s}"
    );
    assert!(rx.script.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_429_waits_as_long_as_retry_after_says() {
    let mut rx = Receiver::start(Answer::Status(200, ""), vec![Answer::RateLimited(1)]).await;
    let (alerts, _t) = start(vec![channel(webhook("limited", &rx.url))]);
    alerts.notify(outage(AlertEventKind::Opened));
    rx.next().await;
    let refused_at = Instant::now();
    rx.next().await;
    // The 10 ms backoff alone would retry at once; the receiver asked for 1 s.
    let waited = refused_at.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "retried after {waited:?}"
    );
    status_until(&alerts, "limited", |s| s["delivered"] == 1).await;
}

#[tokio::test]
async fn retries_stop_after_the_configured_count() {
    let mut rx = Receiver::start(Answer::Status(500, ""), vec![]).await;
    let mut t = webhook("down", &rx.url);
    t["retries"] = json!(2);
    let (alerts, _t) = start(vec![channel(t)]);
    alerts.notify(outage(AlertEventKind::Opened));
    for _ in 0..3 {
        rx.next().await;
    }
    let s = status_until(&alerts, "down", |s| s["failed"] == 1).await;
    assert_eq!(s["delivered"], 0);
    // A fourth attempt would be a retry past the limit; the next request
    // must be the next event's.
    alerts.notify(outage(AlertEventKind::Resolved));
    assert_eq!(rx.next().await.body["event"], "resolved");
}

#[tokio::test]
async fn a_400_is_not_retried_and_status_shows_the_error() {
    let mut rx = Receiver::start(
        Answer::Status(200, ""),
        vec![Answer::Status(400, "invalid routing key")],
    )
    .await;
    let (alerts, _t) = start(vec![channel(webhook("bad", &rx.url))]);
    alerts.notify(outage(AlertEventKind::Opened));
    assert_eq!(rx.next().await.body["event"], "opened");
    let s = status_until(&alerts, "bad", |s| s["failed"] == 1).await;
    assert_eq!(s["delivered"], 0);
    let err = s["last_error"].as_str().unwrap();
    assert!(
        err.contains("HTTP 400: invalid routing key") && err.contains("#42"),
        "{err}"
    );
    assert!(s["last_error_at"].is_string());
    assert!(
        !err.contains("T0KEN"),
        "the URL leaked into the error: {err}"
    );
    // Not retried: the next request is the next event, which succeeds.
    alerts.notify(outage(AlertEventKind::Resolved));
    assert_eq!(rx.next().await.body["event"], "resolved");
    status_until(&alerts, "bad", |s| s["delivered"] == 1).await;
}

#[tokio::test]
async fn an_unreachable_receiver_is_retried_and_reported() {
    // A port that was just free: connect is refused.
    let addr: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut t = webhook("gone", &format!("http://{addr}/"));
    t["retries"] = json!(1);
    let (alerts, _t) = start(vec![channel(t)]);
    alerts.notify(outage(AlertEventKind::Opened));
    let s = status_until(&alerts, "gone", |s| s["failed"] == 1).await;
    assert!(
        s["last_error"].as_str().unwrap().contains("connect to"),
        "{s}"
    );
}

#[tokio::test]
async fn a_hanging_receiver_does_not_delay_another_channel() {
    let mut stuck = Receiver::start(Answer::Hang, vec![]).await;
    let mut fine = Receiver::ok().await;
    let mut slow = webhook("stuck", &stuck.url);
    slow["timeout"] = json!("60s");
    let (alerts, _t) = start(channels(json!([slow, webhook("fine", &fine.url)])));
    alerts.notify(outage(AlertEventKind::Opened));
    alerts.notify(outage(AlertEventKind::Resolved));
    // The stuck channel holds its first request...
    stuck.next().await;
    // ...while the other delivers both, long before the 60 s timeout.
    let started = Instant::now();
    assert_eq!(fine.next().await.body["event"], "opened");
    assert_eq!(fine.next().await.body["event"], "resolved");
    status_until(&alerts, "fine", |s| s["delivered"] == 2).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    let s = status_of(&alerts, "stuck");
    assert_eq!(
        (s["delivered"].as_u64(), s["pending"].as_u64()),
        (Some(0), Some(2)),
        "{s}"
    );
}

#[tokio::test]
async fn a_timed_out_attempt_is_retried() {
    let mut rx = Receiver::start(Answer::Status(200, ""), vec![Answer::Hang]).await;
    let mut t = webhook("slowpoke", &rx.url);
    t["timeout"] = json!("200ms");
    let (alerts, _t) = start(vec![channel(t)]);
    alerts.notify(outage(AlertEventKind::Opened));
    rx.next().await;
    rx.next().await;
    let s = status_until(&alerts, "slowpoke", |s| s["delivered"] == 1).await;
    assert!(
        s["last_error"]
            .as_str()
            .unwrap()
            .contains("no answer within"),
        "{s}"
    );
}

#[tokio::test]
async fn notify_returns_at_once_even_when_every_channel_hangs() {
    let mut receivers = Vec::new();
    let mut tables = Vec::new();
    for i in 0..3 {
        let rx = Receiver::start(Answer::Hang, vec![]).await;
        let mut t = webhook(&format!("hang{i}"), &rx.url);
        t["timeout"] = json!("60s");
        tables.push(t);
        receivers.push(rx);
    }
    let mut chs = channels(Value::Array(tables));
    for c in &mut chs {
        c.queue_capacity = 8;
    }
    let (alerts, _t) = start(chs);
    alerts.notify(outage(AlertEventKind::Opened));
    for rx in &mut receivers {
        rx.next().await; // every channel is now stuck in an attempt
    }
    let started = Instant::now();
    for _ in 0..1000 {
        alerts.notify(outage(AlertEventKind::Resolved));
    }
    let took = started.elapsed();
    eprintln!("1000 notify calls, 3 stuck channels: {took:?}");
    assert!(
        took < Duration::from_millis(500),
        "1000 notify calls took {took:?}"
    );
    for i in 0..3 {
        let s = status_of(&alerts, &format!("hang{i}"));
        // One in flight, eight queued, the rest dropped oldest-first.
        assert_eq!(s["pending"], 9, "{s}");
        assert_eq!(s["dropped"], 1001 - 9, "{s}");
    }
}

#[tokio::test]
async fn shutdown_delivers_what_is_queued_then_stops_within_the_grace() {
    let mut ok = Receiver::ok().await;
    let stuck = Receiver::start(Answer::Hang, vec![]).await;
    let mut chs = channels(json!([
        webhook("ok", &ok.url),
        webhook("stuck", &stuck.url)
    ]));
    for c in &mut chs {
        c.drain_grace = Duration::from_millis(300);
        c.timeout = Duration::from_secs(60);
    }
    let (mut trigger, shutdown) = shutdown::channel();
    let alerts = Alerts::start(chs, shutdown);
    alerts.notify(outage(AlertEventKind::Opened));
    alerts.notify(outage(AlertEventKind::Resolved));
    trigger.fire();
    let started = Instant::now();
    tokio::time::timeout(WAIT, trigger.wait())
        .await
        .expect("alert workers did not stop after the grace period");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(ok.next().await.body["event"], "opened");
    assert_eq!(ok.next().await.body["event"], "resolved");
    assert_eq!(status_of(&alerts, "ok")["delivered"], 2);
    let s = status_of(&alerts, "stuck");
    assert_eq!(s["failed"], 2, "{s}");
    assert!(
        s["last_error"].as_str().unwrap().contains("shutdown"),
        "{s}"
    );
    drop(stuck);
}

// ---------------------------------------------------------------- reload

#[tokio::test]
async fn a_reload_moves_a_changed_channels_queue_in_order_and_drops_a_removed_ones() {
    let mut stuck = Receiver::start(Answer::Hang, vec![]).await;
    let mut fine = Receiver::ok().await;
    let mut other = Receiver::ok().await;
    let mut slow = webhook("tickets", &stuck.url);
    slow["timeout"] = json!("60s");
    let mut gone = webhook("old", &stuck.url);
    gone["timeout"] = json!("60s");
    let (trigger, shutdown) = shutdown::channel();
    let alerts = Alerts::start(channels(json!([slow, gone])), shutdown.clone());
    alerts.notify(outage(AlertEventKind::Opened));
    alerts.notify(outage(AlertEventKind::Acknowledged));
    // Both channels hold their first event in flight, the second queued.
    stuck.next().await;
    stuck.next().await;
    status_until(&alerts, "tickets", |s| s["pending"] == 2).await;

    // Same name and type, another URL: the queue moves; "old" is removed.
    let summary = alerts
        .reload(
            channels(json!([
                webhook("tickets", &fine.url),
                webhook("new", &other.url)
            ])),
            shutdown.clone(),
        )
        .await;
    assert_eq!(
        (
            summary.added,
            summary.removed,
            summary.changed,
            summary.dropped_events
        ),
        (
            vec!["new".to_string()],
            vec!["old".to_string()],
            vec!["tickets".to_string()],
            2
        )
    );
    alerts.notify(outage(AlertEventKind::Resolved));
    // The interrupted event first, then the queued one, then the new one.
    for want in ["opened", "acknowledged", "resolved"] {
        assert_eq!(fine.next().await.body["event"], want);
    }
    // A channel added by the reload gets only what came after it.
    assert_eq!(other.next().await.body["event"], "resolved");
    status_until(&alerts, "tickets", |s| {
        s["delivered"] == 3 && s["pending"] == 0
    })
    .await;
    status_until(&alerts, "new", |s| s["delivered"] == 1).await;
    let names: Vec<Value> = alerts.status()["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].clone())
        .collect();
    assert_eq!(names, [json!("tickets"), json!("new")]);
    drop((shutdown, trigger));
}

// ---------------------------------------------------------------- config

fn parse_errors(tables: Value, env: &dyn Fn(&str) -> Option<String>) -> Vec<ConfigIssue> {
    let mut issues = Vec::new();
    config::parse(Some(&tables), env, &mut issues);
    issues
}

#[test]
fn config_errors_name_every_bad_key_at_once() {
    let issues = parse_errors(
        json!([
            {"name": "a", "type": "webhook", "url": "ftp://x/", "kinds": ["outage", "meltdown"],
             "min_severity": "panic", "events": ["opened", "exploded"], "timeout": "soon",
             "retries": -1, "colour": "red"},
            {"name": "a", "type": "webhook", "url": "http://127.0.0.1:1/"},
            {"type": "carrier-pigeon"},
            {"name": "pd", "type": "pagerduty", "routing_key_env": "NO_SUCH_VAR"},
            {"name": "pd2", "type": "pagerduty", "routing_key": "k", "routing_key_file": "/x"},
            {"name": "mail", "type": "email", "smtp_host": "smtp.example.net", "security": "none",
             "smtp_port": 70000, "username": "u", "from": "not an address", "to": ["ok@x.test", "bad"],
             "ca_file": "/no/such/ca.pem"},
            {"name": "slack", "type": "slack"},
        ]),
        &|v| (v == "SET").then(|| "x".into()),
    );
    let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
    let expected = [
        "alert[0].colour",
        "alert[0].kinds[1]",
        "alert[0].min_severity",
        "alert[0].events[1]",
        "alert[0].timeout",
        "alert[0].retries",
        "alert[0].url",
        "alert[1].name",
        "alert[2].name",
        "alert[2].type",
        "alert[3].routing_key_env",
        "alert[4].routing_key",
        "alert[5].ca_file",
        "alert[5].security",
        "alert[5].smtp_port",
        "alert[5].password",
        "alert[5].from",
        "alert[5].to[1]",
        "alert[6].url",
    ];
    for p in expected {
        assert!(paths.contains(&p), "missing {p} in {issues:#?}");
    }
    assert_eq!(paths.len(), expected.len(), "{issues:#?}");
    // Messages say why; the URL (which may hold a token) is never repeated.
    let url = issues.iter().find(|i| i.path == "alert[0].url").unwrap();
    assert!(
        url.message.contains("http://") && !url.message.contains("ftp://x"),
        "{url:?}"
    );
    let dup = issues.iter().find(|i| i.path == "alert[1].name").unwrap();
    assert!(dup.message.contains("earlier"), "{dup:?}");
}

#[test]
fn alert_must_be_an_array_of_tables() {
    let mut issues = Vec::new();
    config::parse(Some(&json!({"name": "x"})), &no_env, &mut issues);
    assert_eq!(issues.len(), 1);
    assert!(issues[0].message.contains("[[alert]]"), "{issues:?}");
}

#[test]
fn secrets_come_from_env_or_file_and_defaults_apply() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, "from-file\n").unwrap();
    let env = |v: &str| (v == "PD_KEY").then(|| "from-env".to_string());
    let mut issues = Vec::new();
    let chs = config::parse(
        Some(&json!([
            {"name": "pd", "type": "pagerduty", "routing_key_env": "PD_KEY"},
            {"name": "mail", "type": "email", "smtp_host": "127.0.0.1", "username": "u",
             "password_file": file.to_str().unwrap(), "from": "a@b.test", "to": ["c@d.test"]},
        ])),
        &env,
        &mut issues,
    );
    assert!(issues.is_empty(), "{issues:?}");
    match &chs[0].target {
        config::Target::PagerDuty {
            endpoint,
            routing_key,
        } => {
            assert_eq!(routing_key.expose(), "from-env");
            assert_eq!(endpoint.url.expose(), config::PAGERDUTY_URL);
            assert_eq!(endpoint.origin, "https://events.pagerduty.com:443");
        }
        other => panic!("{other:?}"),
    }
    match &chs[1].target {
        config::Target::Email(e) => {
            assert_eq!(e.password.as_ref().unwrap().expose(), "from-file");
            assert_eq!(e.port, 587);
            assert_eq!(e.security, mailloop_common::config::Security::Starttls);
        }
        other => panic!("{other:?}"),
    }
    let debug = format!("{chs:?}");
    assert!(
        !debug.contains("from-env") && !debug.contains("from-file"),
        "{debug}"
    );
    assert_eq!(chs[0].timeout, Duration::from_secs(10));
    assert_eq!(chs[0].retries, 5);
    assert_eq!(chs[0].min_severity, Severity::Info);
    assert_eq!(chs[0].events.len(), 3);
    assert_eq!(chs[0].kinds, IncidentKind::ALL, "every kind, coverage and clock too");
}

#[test]
fn the_alert_array_is_validated_with_the_rest_of_the_file() {
    let raw = mailloop_coordinator::config::parse_toml(
        "[server]\nadmin_token = \"0123456789abcdef0123\"\n\
         [[alert]]\nname = \"x\"\ntype = \"webhook\"\n",
    )
    .unwrap();
    let err = mailloop_coordinator::config::CoordinatorConfig::from_value(&raw, &no_env)
        .err()
        .unwrap_or_default();
    assert!(err.iter().any(|i| i.path == "alert[0].url"), "{err:?}");
}

// ---------------------------------------------------------------- logs

/// Log output captured in memory.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// Current-thread runtime: the workers run on this thread, under the
// thread-local subscriber set here.
#[tokio::test(flavor = "current_thread")]
async fn failures_are_logged_with_what_a_person_needs_and_no_secret() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut rx = Receiver::start(
        Answer::Status(200, ""),
        vec![
            Answer::Status(502, "bad gateway"),
            Answer::Status(400, "invalid routing key"),
        ],
    )
    .await;
    let (alerts, _t) = start(vec![channel(json!({
        "name": "oncall", "type": "pagerduty", "url": rx.url,
        "routing_key": "R0UTING-SECRET-123",
    }))]);
    alerts.notify(outage(AlertEventKind::Opened));
    rx.next().await;
    rx.next().await;
    status_until(&alerts, "oncall", |s| s["failed"] == 1).await;

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let retry = text
        .lines()
        .find(|l| l.contains("will retry"))
        .unwrap_or_else(|| panic!("no retry line in:\n{text}"));
    let gave_up = text
        .lines()
        .find(|l| l.contains("NOT delivered"))
        .unwrap_or_else(|| panic!("no failure line in:\n{text}"));
    for (line, attempt, error) in [
        (retry, "attempt=1", "HTTP 502"),
        (gave_up, "attempt=2", "HTTP 400"),
    ] {
        for needle in [
            "oncall",
            "incident=42",
            "event=\"opened\"",
            attempt,
            error,
            "http://127.0.0.1:",
        ] {
            assert!(line.contains(needle), "{needle:?} missing from: {line}");
        }
    }
    assert!(
        gave_up.contains("ERROR") && gave_up.contains("permanent"),
        "{gave_up}"
    );
    assert!(
        !text.contains("R0UTING-SECRET") && !text.contains("T0KEN"),
        "secret in logs:\n{text}"
    );
}

#[test]
fn email_takes_a_password_or_an_oauth2_token_never_both() {
    let env = |v: &str| (v == "TOKEN").then(|| "ya29.token".to_string());
    let base = json!({"type": "email", "smtp_host": "smtp.example.net",
                      "from": "a@b.test", "to": ["c@d.test"]});
    let with = |name: &str, extra: Value| {
        let mut t = base.clone();
        t["name"] = json!(name);
        for (k, v) in extra.as_object().unwrap() {
            t[k] = v.clone();
        }
        t
    };
    let mut issues = Vec::new();
    let chs = config::parse(
        Some(&json!([
            with(
                "token",
                json!({"username": "u", "oauth2_token_env": "TOKEN"})
            ),
            with(
                "both",
                json!({"username": "u", "password": "p", "oauth2_token": "t"})
            ),
            with("nouser", json!({"oauth2_token": "t"})),
            with("nothing", json!({"username": "u"})),
        ])),
        &env,
        &mut issues,
    );
    let got: Vec<(&str, &str)> = issues
        .iter()
        .map(|i| (i.path.as_str(), i.message.as_str()))
        .collect();
    assert_eq!(got.len(), 3, "{issues:#?}");
    assert!(
        got[0].0 == "alert[1].oauth2_token" && got[0].1.contains("not both"),
        "{got:?}"
    );
    assert!(
        got[1].0 == "alert[2].username" && got[1].1.contains("oauth2_token"),
        "{got:?}"
    );
    assert!(
        got[2].0 == "alert[3].password" && got[2].1.contains("oauth2_token"),
        "{got:?}"
    );
    assert_eq!(chs.len(), 1);
    match &chs[0].target {
        config::Target::Email(e) => {
            assert_eq!(e.oauth2_token.as_ref().unwrap().expose(), "ya29.token");
            assert!(e.password.is_none());
        }
        other => panic!("{other:?}"),
    }
    assert!(!format!("{chs:?}").contains("ya29"), "token in Debug");
}

/// A man in the middle appends a reply to the server's `220` to STARTTLS
/// (the "250" the client would read as its EHLO reply once TLS is up). The
/// email channel must not read it: the extra bytes break the handshake, the
/// attempt fails at STARTTLS, and nothing is sent under TLS.
#[tokio::test]
async fn email_refuses_replies_injected_before_starttls() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let (acceptor, ca) = tls_acceptor();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, seen) = (acceptor.clone(), seen_tx.clone());
            tokio::spawn(async move {
                let mut r = BufReader::new(tcp);
                r.get_mut().write_all(b"220 fake ESMTP\r\n").await.unwrap();
                let mut line = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let cmd = line.trim_end().to_ascii_uppercase();
                    let _ = seen.send(format!("plain: {cmd}"));
                    if cmd.starts_with("EHLO") {
                        r.get_mut()
                            .write_all(b"250-fake\r\n250-STARTTLS\r\n250 AUTH PLAIN LOGIN\r\n")
                            .await
                            .unwrap();
                    } else if cmd == "STARTTLS" {
                        // The injected reply rides in the same segment.
                        r.get_mut()
                            .write_all(b"220 go ahead\r\n250-injected\r\n250 AUTH PLAIN\r\n")
                            .await
                            .unwrap();
                        break;
                    }
                }
                let Ok(tls) = acceptor.accept(r.into_inner()).await else {
                    let _ = seen.send("handshake failed".into());
                    return;
                };
                let mut r = BufReader::new(tls);
                loop {
                    line.clear();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let _ = seen.send(format!("tls: {}", line.trim_end()));
                    r.get_mut().write_all(b"250 ok\r\n").await.unwrap();
                }
            });
        }
    });
    let mut table = json!({"name": "mail", "type": "email", "smtp_host": "127.0.0.1",
        "smtp_port": port, "security": "starttls", "username": "u", "password": "secret-pw",
        "from": "a@b.test", "to": ["c@d.test"], "ca_file": ca.path().to_str().unwrap(),
        "retries": 0});
    table["timeout"] = json!("10s");
    let (_trigger, shutdown) = shutdown::channel();
    let alerts = Alerts::start(vec![channel(table)], shutdown);
    alerts.notify(outage(AlertEventKind::Opened));
    let st = status_until(&alerts, "mail", |s| s["failed"] == 1).await;
    let err = st["last_error"].as_str().unwrap();
    assert!(err.contains(": STARTTLS: "), "{err}");
    assert_eq!(st["delivered"], 0, "{st}");
    let mut seen = Vec::new();
    while let Ok(l) = seen_rx.try_recv() {
        seen.push(l);
    }
    assert!(
        seen.iter().all(|l| !l.starts_with("tls:")),
        "commands sent under TLS: {seen:?}"
    );
    assert!(!format!("{seen:?}{err}").contains("secret-pw"));
}

/// A relay that offers XOAUTH2 and refuses the token the way Dovecot does
/// (a `334` carrying a JSON error, then `535` after the client's empty
/// answer): the channel picks XOAUTH2 for an `oauth2_token`, sends the
/// token in the SASL form, and fails permanently with a sentence, not a
/// retry loop. (Fault injection: a real relay's acceptance is not needed
/// to show the refusal path.)
#[tokio::test]
async fn email_with_an_oauth2_token_uses_xoauth2_and_a_refused_token_is_permanent() {
    use base64::Engine;
    use tokio::io::{AsyncBufReadExt, BufReader};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut r = BufReader::new(tcp);
        let _ = r.get_mut().write_all(b"220 fake ESMTP\r\n").await;
        let mut line = String::new();
        while r.read_line(&mut line).await.unwrap_or(0) > 0 {
            let cmd = line.trim_end().to_string();
            line.clear();
            let _ = seen_tx.send(cmd.clone());
            let reply: &[u8] = if cmd.starts_with("EHLO") {
                b"250-fake\r\n250 AUTH PLAIN LOGIN XOAUTH2\r\n"
            } else if cmd.starts_with("AUTH XOAUTH2") {
                // base64 of {"status":"401","schemes":"bearer","scope":"mail"}
                b"334 eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiYmVhcmVyIiwic2NvcGUiOiJtYWlsIn0=\r\n"
            } else if cmd.is_empty() {
                b"535 5.7.8 Error: authentication failed\r\n"
            } else {
                b"503 5.5.1 unexpected\r\n"
            };
            let _ = r.get_mut().write_all(reply).await;
        }
    });
    let table = json!({"name": "mail", "type": "email", "smtp_host": "127.0.0.1",
        "smtp_port": port, "security": "none", "username": "alerts@b.test",
        "oauth2_token": "ya29.expired-token", "from": "alerts@b.test", "to": ["c@d.test"],
        "retries": 3});
    let (_trigger, shutdown) = shutdown::channel();
    let mut ch = channel(table);
    // A retry would wait a minute, past WAIT: failing in time proves none.
    ch.backoff_base = Duration::from_secs(60);
    let alerts = Alerts::start(vec![ch], shutdown);
    alerts.notify(outage(AlertEventKind::Opened));
    let st = status_until(&alerts, "mail", |s| s["failed"] == 1).await;
    let err = st["last_error"].as_str().unwrap();
    assert!(
        err.contains("AUTH XOAUTH2") && err.contains("refused the token"),
        "{err}"
    );
    assert!(!err.contains("ya29"), "{err}");
    let mut seen = Vec::new();
    while let Ok(l) = seen_rx.try_recv() {
        seen.push(l);
    }
    let auth = seen
        .iter()
        .find(|l| l.starts_with("AUTH "))
        .expect("an AUTH command");
    let sasl = auth
        .strip_prefix("AUTH XOAUTH2 ")
        .unwrap_or_else(|| panic!("not XOAUTH2: {auth}"));
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(sasl)
        .unwrap();
    assert_eq!(
        decoded,
        b"user=alerts@b.test\x01auth=Bearer ya29.expired-token\x01\x01"
    );
    assert!(!seen.iter().any(|l| l.starts_with("MAIL")), "{seen:?}");
}
