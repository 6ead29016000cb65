//! The email alert channel against the real mail stack: submission with
//! STARTTLS + AUTH, implicit TLS, and a wrong password (permanent, not
//! retried, logged as one `smtp_reply` 535 attempt). Each test mails its own fresh mailbox and reads it back
//! through Python's imaplib, independently of mailloop's own code.

use mailloop_coordinator::alerts::{Alerts, AttemptLog, ChannelConfig, config};
use mailloop_coordinator::judge::{
    AlertEvent, AlertEventKind, Incident, IncidentKind, IncidentState, Severity, TimelineEntry,
    VerdictKind,
};
use mailloop_coordinator::shutdown;
use mailloop_tests::{Stack, unique};
use serde_json::{Value, json};
use std::process::Command;
use std::time::{Duration, Instant};

/// Delivery through Postfix, OpenDKIM and LMTP takes well under a second;
/// this is only the point where the test gives up.
const WAIT: Duration = Duration::from_secs(30);

/// An `[[alert]]` email table for the stack, to `to`.
fn email_table(to: &str, port_key: &str, security: &str, password: &str) -> Value {
    let s = Stack::get();
    json!({
        "name": "mail",
        "type": "email",
        "smtp_host": "127.0.0.1",
        "smtp_port": s.port(port_key),
        "security": security,
        "username": s.var("MAILSTACK_SMTP_USER"),
        "password": password,
        "from": s.var("MAILSTACK_SMTP_USER"),
        "to": [to],
        "ca_file": s.var("MAILSTACK_CA_FILE"),
        "timeout": "10s",
    })
}

fn channel(table: Value) -> ChannelConfig {
    let mut issues = Vec::new();
    let mut chs = config::parse(Some(&json!([table])), &|_| None, &mut issues);
    assert!(issues.is_empty(), "{issues:?}");
    let mut ch = chs.remove(0);
    ch.backoff_base = Duration::from_millis(50);
    ch
}

fn outage(check: &str, summary: &str) -> AlertEvent {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    AlertEvent {
        event: AlertEventKind::Opened,
        at_ms: now,
        incident: Incident {
            id: 4242,
            check_id: check.into(),
            kind: IncidentKind::Outage,
            severity: Severity::Critical,
            state: IncidentState::Open,
            key: String::new(),
            regions: vec!["eu-west".into(), "us-east".into()],
            step: Some("smtp.rcpt_to".into()),
            class: Some("permanent".into()),
            opened_at_ms: now,
            first_round: 3,
            last_round: 3,
            acknowledged_at_ms: None,
            acknowledged_by: None,
            resolved_at_ms: None,
            summary: summary.into(),
            timeline: vec![TimelineEntry {
                at_ms: now,
                round: Some(3),
                event: "opened".into(),
                verdict: Some(VerdictKind::Down),
                note: "down in eu-west, us-east".into(),
            }],
        },
        traceparent: None,
        intent: None,
    }
}

/// Every message in `user`'s INBOX, read over IMAPS with imaplib and
/// decoded by Python's `email` package, independently of mailloop's and
/// lettre's code: the header block as delivered, then `Decoded-Subject:`
/// (RFC 2047 undone) and the body with its transfer encoding undone.
fn messages(user: &str) -> Vec<String> {
    let s = Stack::get();
    let script = format!(
        "import imaplib, ssl, email, email.policy\n\
         ctx = ssl.create_default_context(cafile={ca:?})\n\
         m = imaplib.IMAP4_SSL('127.0.0.1', {port}, ssl_context=ctx)\n\
         m.login({user:?}, {pw:?})\n\
         m.select('INBOX')\n\
         typ, data = m.uid('SEARCH', None, 'ALL')\n\
         for uid in data[0].split():\n    \
             typ, d = m.uid('FETCH', uid, '(BODY.PEEK[])')\n    \
             raw = d[0][1]\n    \
             msg = email.message_from_bytes(raw, policy=email.policy.default)\n    \
             print(raw.split(b'\\r\\n\\r\\n', 1)[0].decode('utf-8', 'replace'))\n    \
             print('Decoded-Subject: ' + str(msg['subject']))\n    \
             print()\n    \
             print(msg.get_content())\n    \
             print('\\x00')\n\
         m.logout()\n",
        ca = s.var("MAILSTACK_CA_FILE"),
        port = s.port("MAILSTACK_PORT_IMAPS"),
        pw = s.var("MAILSTACK_IMAP_PASS"),
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "imaplib: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split('\0')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(str::to_string)
        .collect()
}

/// Polls the mailbox until a message with `subject` arrives.
async fn wait_for(user: &str, subject: &str) -> String {
    let deadline = Instant::now() + mailloop_tests::patience(WAIT);
    loop {
        let owned = user.to_string();
        let found = tokio::task::spawn_blocking(move || messages(&owned))
            .await
            .unwrap();
        if let Some(m) = found.into_iter().find(|m| m.contains(subject)) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "no message {subject:?} in {user} within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn status(alerts: &Alerts) -> Value {
    alerts.status()["channels"][0].clone()
}

async fn status_until(alerts: &Alerts, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + mailloop_tests::patience(WAIT);
    loop {
        let s = status(alerts);
        if cond(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "status never matched: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends one outage through `security` on `port_key` and checks what arrives.
async fn delivers(port_key: &str, security: &str) -> String {
    let summary = format!(
        "Since 01:02 UTC all 2 regions fail at smtp.rcpt_to with 550 5.1.1 'User unknown' (permanent). Marker {}.",
        unique("")
    );
    delivers_outage(port_key, security, &unique("corp-"), &summary).await
}

/// Sends one outage of `check` with `summary` and checks what arrives;
/// returns the message as `messages` shows it.
async fn delivers_outage(port_key: &str, security: &str, check: &str, summary: &str) -> String {
    let s = Stack::get();
    let to = s.mailbox(&unique("alert-"));
    let check = check.to_string();
    let summary = summary.to_string();
    let ch = channel(email_table(
        &to,
        port_key,
        security,
        s.var("MAILSTACK_SMTP_PASS"),
    ));
    let (_trigger, shutdown) = shutdown::channel();
    let alerts = Alerts::start(vec![ch], shutdown);
    let started = Instant::now();
    alerts.notify(outage(&check, &summary));
    let st = status_until(&alerts, |s| s["delivered"] == 1).await;
    eprintln!(
        "{security}: accepted by submission {:?} after notify",
        started.elapsed()
    );
    assert_eq!(st["failed"], 0, "{st}");
    assert_eq!(st["type"], "email");

    let subject = format!("Subject: [mailloop] OUTAGE opened: {check}");
    let msg = wait_for(&to, &subject).await;
    eprintln!(
        "{security}: alert in the mailbox {:?} after notify",
        started.elapsed()
    );
    let unfolded = msg.replace("\r\n", "\n");
    assert!(unfolded.contains(&summary), "summary missing:\n{msg}");
    for needle in [
        "Regions:   eu-west, us-east",
        "Step:      smtp.rcpt_to",
        "Incident:  #4242 (open)",
        "mailloopctl incidents ack 4242",
        "Timeline:",
        &format!("From: {}", s.var("MAILSTACK_SMTP_USER")),
        &format!("To: {to}"),
        "Message-ID: <mailloop.4242.opened.",
        "Date: ",
        // Signed on submission like any mail from the sender domain.
        "DKIM-Signature:",
    ] {
        assert!(unfolded.contains(needle), "{needle:?} missing:\n{msg}");
    }
    msg
}

#[tokio::test]
async fn email_alert_is_delivered_over_submission_with_starttls_and_auth() {
    delivers("MAILSTACK_PORT_SUBMISSION", "starttls").await;
}

#[tokio::test]
async fn a_non_ascii_alert_arrives_as_proper_mime() {
    // Non-ASCII in the subject (the check id) and the body, and a line
    // longer than SMTP allows: a reader decodes it back to the same text.
    let check = unique("zürich-café-");
    let summary = format!(
        "Seit 01:02 UTC schlagen beide Regionen bei smtp.rcpt_to fehl: 550 5.1.1 „Benutzer unbekannt“ — {} {}",
        "très long ".repeat(120),
        unique("Marke ")
    );
    let msg = delivers_outage("MAILSTACK_PORT_SUBMISSION", "starttls", &check, &summary).await;
    let headers = msg.split("\nDecoded-Subject:").next().unwrap();
    assert!(
        headers.is_ascii(),
        "8-bit bytes in the header block:\n{headers}"
    );
    assert!(
        headers.contains("Content-Type: text/plain; charset=utf-8"),
        "{headers}"
    );
    let subject = headers
        .lines()
        .skip_while(|l| !l.starts_with("Subject:"))
        .take_while(|l| l.starts_with("Subject:") || l.starts_with(' '))
        .collect::<String>();
    assert!(
        subject.to_ascii_lowercase().contains("=?utf-8?"),
        "subject is not an encoded word: {subject}"
    );
    assert!(
        msg.contains(&format!(
            "Decoded-Subject: [mailloop] OUTAGE opened: {check}\n"
        )),
        "{msg}"
    );
}

#[tokio::test]
async fn email_alert_is_delivered_over_implicit_tls() {
    delivers("MAILSTACK_PORT_SUBMISSIONS", "tls").await;
}

/// The SASL mechanism Postfix logged for the submission of `msg` (found
/// through its Message-ID: cleanup logs it with the queue id, smtpd logs
/// `sasl_method=` with the same queue id).
async fn sasl_method_of(msg: &str) -> String {
    let id = msg
        .lines()
        .find_map(|l| l.strip_prefix("Message-ID: "))
        .unwrap_or_else(|| panic!("no Message-ID in\n{msg}"))
        .trim()
        .to_string();
    let log_path = Stack::get().var("MAILSTACK_POSTFIX_LOG").to_string();
    let deadline = Instant::now() + mailloop_tests::patience(WAIT);
    loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let queue_ids: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&format!("message-id={id}")))
            .filter_map(|l| l.split(": ").nth(1))
            .collect();
        let method = log.lines().find_map(|l| {
            let (_, rest) = l.split_once("]: ")?;
            let (qid, rest) = rest.split_once(": client=")?;
            if !queue_ids.contains(&qid) {
                return None;
            }
            let m = rest.split("sasl_method=").nth(1)?;
            Some(m.split(',').next()?.trim().to_string())
        });
        if let Some(m) = method {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "no sasl_method for {id} in {log_path} within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn email_alert_uses_auth_login_where_the_relay_offers_only_login() {
    // This submission service's EHLO says `AUTH LOGIN`. Postfix would still
    // take a blind AUTH PLAIN, so the log, not the delivery, shows that the
    // mechanism was picked from what the server offered.
    let msg = delivers("MAILSTACK_PORT_SUBMISSION_LOGIN", "starttls").await;
    assert_eq!(sasl_method_of(&msg).await, "LOGIN");
}

#[tokio::test]
async fn email_alert_prefers_plain_where_the_relay_offers_both() {
    let msg = delivers("MAILSTACK_PORT_SUBMISSIONS", "tls").await;
    assert_eq!(sasl_method_of(&msg).await, "PLAIN");
}

#[tokio::test]
async fn a_wrong_password_is_permanent_and_shown_in_status() {
    let s = Stack::get();
    let to = s.mailbox(&unique("alert-badpw-"));
    let mut table = email_table(
        &to,
        "MAILSTACK_PORT_SUBMISSION",
        "starttls",
        "not-the-password",
    );
    table["retries"] = json!(3);
    let (_trigger, shutdown) = shutdown::channel();
    let mut ch = channel(table);
    // A retry would wait a minute, past WAIT: failing in time proves none.
    ch.backoff_base = Duration::from_secs(60);
    // The delivery log in a storage of its own: the attempt with its class and reply code.
    let dir = tempfile::tempdir().unwrap();
    let storage = std::sync::Arc::new(mailloop_coordinator::storage::Storage::open(dir.path()).unwrap());
    let log = AttemptLog::to_storage(storage.clone());
    let alerts = Alerts::start_logged(vec![ch], shutdown, Default::default(), log);
    alerts.notify(outage("corp", "never sent"));
    let st = status_until(&alerts, |s| s["failed"] == 1).await;
    let err = st["last_error"].as_str().unwrap();
    assert!(err.contains("AUTH PLAIN: 535"), "{err}");
    assert!(!err.contains("not-the-password"), "{err}");
    assert_eq!(st["delivered"], 0);
    assert_eq!(st["pending"], 0, "{st}");
    let deadline = Instant::now() + WAIT;
    let attempts = loop {
        let q = mailloop_coordinator::storage::AlertAttemptQuery { limit: 10, ..Default::default() };
        let found = storage.alert_attempts(q).await.unwrap();
        if !found.is_empty() {
            break found;
        }
        assert!(Instant::now() < deadline, "no attempt in the delivery log within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(attempts.len(), 1, "permanent: one attempt, not retried: {attempts:?}");
    let a = &attempts[0];
    assert_eq!((a.attempt, a.of, a.result.as_str()), (1, 4, "permanent"), "{a:?}");
    assert_eq!((a.class.as_deref(), a.code), (Some("smtp_reply"), Some(535)), "{a:?}");
    assert_eq!((a.channel_type.as_str(), a.incident_id, a.event.as_str()), ("email", 4242, "opened"), "{a:?}");
    assert!(!a.detail.as_deref().unwrap_or("").contains("not-the-password"), "{a:?}");
}
