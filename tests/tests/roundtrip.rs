//! The round trip against the real mail stack (Postfix, Dovecot, OpenDKIM,
//! OpenDMARC, policyd-spf, dnsmasq), one mailbox per test.

use mailloop_common::{FailureClass, Outcome, StepName};
use mailloop_tests::{Check, Mailbox, Stack};

use StepName::*;

/// The names of the steps, in the order they ran, for one protocol.
fn names(r: &mailloop_common::ProbeReport, smtp: bool) -> Vec<StepName> {
    let prefix = if smtp { "smtp." } else { "imap." };
    r.steps.iter().map(|s| s.name).filter(|n| n.as_str().starts_with(prefix)).collect()
}

fn assert_delivered(r: &mailloop_common::ProbeReport) {
    assert_eq!(r.outcome, Outcome::Ok, "{r:#?}");
    assert!(r.failure.is_none());
    let rtt = r.rtt_ms.expect("rtt measured");
    let delivery = r.delivery_ms.expect("delivery measured");
    assert!(rtt > delivery && delivery > 0.0, "rtt {rtt} delivery {delivery}");
    assert!(r.steps.iter().all(|s| s.ok && s.ms >= 0.0), "{:#?}", r.steps);
    // Steps are listed in the order they started.
    assert!(r.steps.windows(2).all(|w| w[0].start_ms <= w[1].start_ms));
}

#[tokio::test]
async fn starttls_submission_and_imaps_with_idle() {
    let check = Check::new("starttls-imaps");
    let r = check.probe().await;
    assert_delivered(&r);
    assert_eq!(
        names(&r, true),
        [SmtpConnect, SmtpBanner, SmtpEhlo, SmtpStarttls, SmtpEhloTls, SmtpAuth, SmtpMailFrom, SmtpRcptTo, SmtpData, SmtpDataAck, SmtpQuit]
    );
    assert_eq!(
        names(&r, false),
        [ImapConnect, ImapTls, ImapGreeting, ImapLogin, ImapSelect, ImapWait, ImapSearch, ImapFetch, ImapCleanup, ImapLogout]
    );
    assert_eq!(r.step(SmtpDataAck).unwrap().code, Some(250));
    assert_eq!(r.step(SmtpAuth).unwrap().code, Some(235));
    // Postfix names its queue id in the reply to end-of-data.
    let qid = r.queue_id.as_deref().expect("queue id");
    assert!(r.step(SmtpDataAck).unwrap().detail.as_deref().unwrap().contains(qid));
    assert!(r.message_id.starts_with(&format!("<{}@", r.probe_id)));
    // Both handshakes left their certificate in the report.
    let protocols: Vec<&str> = r.tls.iter().map(|c| c.protocol.as_str()).collect();
    assert_eq!(protocols, ["smtp", "imap"], "{:#?}", r.tls);
    for cert in &r.tls {
        assert!(cert.sans.iter().any(|s| s == "127.0.0.1"), "{cert:#?}");
        assert!(cert.days_left > 14 && cert.version.as_deref().is_some_and(|v| v.starts_with("TLSv1.")), "{cert:#?}");
    }
    // The probe was deleted after reading.
    assert_eq!(Mailbox::new(&check.to).subjects(), Vec::<String>::new());
}

#[tokio::test]
async fn implicit_tls_submission_and_imap_starttls() {
    let s = Stack::get();
    let mut check = Check::new("smtps-starttls");
    check.smtp_port = s.port("MAILSTACK_PORT_SUBMISSIONS");
    check.smtp_security = "tls";
    check.imap_port = s.port("MAILSTACK_PORT_IMAP");
    check.imap_security = "starttls";
    let r = check.probe().await;
    assert_delivered(&r);
    assert_eq!(
        names(&r, true),
        [SmtpConnect, SmtpTls, SmtpBanner, SmtpEhlo, SmtpAuth, SmtpMailFrom, SmtpRcptTo, SmtpData, SmtpDataAck, SmtpQuit]
    );
    assert_eq!(
        names(&r, false)[..5],
        [ImapConnect, ImapGreeting, ImapStarttls, ImapLogin, ImapSelect]
    );
    assert!(r.step(SmtpTls).unwrap().detail.as_deref().unwrap().starts_with("TLSv1."));
}

#[tokio::test]
async fn inbound_mx_without_auth() {
    let s = Stack::get();
    let mut check = Check::new("mx-direct");
    check.smtp_port = s.port("MAILSTACK_PORT_MX");
    check.smtp_security = "none";
    check.smtp_login = None;
    let r = check.probe().await;
    assert_delivered(&r);
    assert!(r.step(SmtpAuth).is_none() && r.step(SmtpStarttls).is_none());
}

#[tokio::test]
async fn polling_when_idle_is_off() {
    let mut check = Check::new("polling");
    check.imap_extra = vec!["wait = \"poll\"".into(), "poll_interval = \"100ms\"".into(), "fast_window = \"0s\"".into()];
    let r = check.probe().await;
    assert_delivered(&r);
    let wait = r.step(ImapWait).unwrap().detail.clone().unwrap();
    assert!(wait.contains("via polling") || wait.contains("already in the mailbox"), "{wait}");
}

#[tokio::test]
async fn pure_idle_catches_the_arrival() {
    let mut check = Check::new("pure-idle");
    check.imap_extra = vec!["fast_window = \"0s\"".into()];
    let r = check.probe().await;
    assert_delivered(&r);
    let wait = r.step(ImapWait).unwrap().detail.clone().unwrap();
    assert!(wait.contains("via IDLE") || wait.contains("already in the mailbox"), "{wait}");
}

#[tokio::test]
async fn cleanup_sweeps_stale_probes_and_keeps_other_mail() {
    let check = Check::new("sweep");
    let mailbox = Mailbox::new(&check.to);
    mailbox.clear();
    // A probe of this check left behind two hours ago by a failed run,
    // a fresh one (another agent's, still in flight), and a human's mail.
    let stale = format!(
        "From: <probe@sender.test>\nTo: <{to}>\nSubject: stale probe\nX-Mailloop-Probe: ml-old\nX-Mailloop-Check: sweep\n\nold\n",
        to = check.to
    );
    mailbox.append(&stale, "01-Jan-2026 00:00:00 +0000");
    let fresh = stale.replace("stale probe", "fresh probe").replace("ml-old", "ml-fresh");
    let now = chrono_like_now();
    mailbox.append(&fresh, &now);
    mailbox.append("From: <a@b.test>\nSubject: keep me\n\nhello\n", "01-Jan-2026 00:00:00 +0000");

    let r = check.probe().await;
    assert_delivered(&r);
    let detail = r.step(ImapCleanup).unwrap().detail.clone().unwrap();
    assert_eq!(detail, "deleted the probe and 1 stale probe(s)");
    let mut left = mailbox.subjects();
    left.sort();
    assert_eq!(left, ["fresh probe", "keep me"]);
}

/// Today's date in IMAP's internal-date form.
fn chrono_like_now() -> String {
    let out = std::process::Command::new("date").args(["-u", "+%d-%b-%Y %H:%M:%S +0000"]).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test]
async fn thresholds_turn_ok_into_degraded() {
    let mut check = Check::new("thresholds");
    check.thresholds = vec!["\"smtp.connect\" = \"1ns\"".into(), "rtt = \"1h\"".into()];
    let r = check.probe().await;
    assert_eq!(r.outcome, Outcome::Degraded, "{r:#?}");
    assert_eq!(r.reasons.len(), 1, "{:?}", r.reasons);
    assert!(r.reasons[0].starts_with("smtp.connect took "), "{:?}", r.reasons);
    assert!(r.failure.is_none() && r.rtt_ms.is_some());
}

#[tokio::test]
async fn wrong_smtp_password_fails_at_auth() {
    let mut check = Check::new("bad-smtp-pass");
    check.smtp_login = Some((Stack::get().var("MAILSTACK_SMTP_USER").into(), "wrong".into()));
    let r = check.probe().await;
    assert_eq!(r.outcome, Outcome::Failed);
    let f = r.failure.as_ref().unwrap();
    assert_eq!((f.step, f.class, f.code), (SmtpAuth, FailureClass::Auth, Some(535)), "{f:#?}");
    assert_eq!(f.enhanced.as_deref(), Some("5.7.8"));
    // The probe stopped there, and still said goodbye.
    assert!(r.step(SmtpMailFrom).is_none());
    assert!(r.step(SmtpQuit).is_some_and(|q| q.ok));
}

#[tokio::test]
async fn wrong_imap_password_fails_at_login() {
    let mut check = Check::new("bad-imap-pass");
    check.imap_pass = "wrong".into();
    let r = check.probe().await;
    assert_eq!(r.outcome, Outcome::Failed);
    let f = r.failure.as_ref().unwrap();
    assert_eq!((f.step, f.class), (ImapLogin, FailureClass::Auth), "{f:#?}");
    assert!(f.message.contains("AUTHENTICATIONFAILED"), "{f:#?}");
}

#[tokio::test]
async fn unknown_recipient_is_permanent_at_rcpt() {
    let mut check = Check::new("unknown-rcpt");
    check.to = format!("nosuchuser@{}", Stack::get().var("MAILSTACK_RCPT_DOMAIN"));
    let r = check.probe().await;
    let f = r.failure.as_ref().expect("failure");
    assert_eq!((f.step, f.class, f.code), (SmtpRcptTo, FailureClass::Permanent, Some(550)), "{f:#?}");
    assert_eq!(f.enhanced.as_deref(), Some("5.1.1"));
    assert!(r.step(SmtpData).is_none());
}

#[test]
fn greylisting_is_retried_not_alarmed() {
    let s = Stack::get();
    // A fresh triplet on the greylisting MX: postgrey answers 451 until its
    // delay has passed.
    let name = mailloop_tests::unique("grey");
    let mut check = Check::new(&name);
    check.to = format!("t-{name}@{}", s.var("MAILSTACK_GREY_DOMAIN"));
    check.smtp_port = s.port("MAILSTACK_PORT_GREY");
    check.smtp_security = "none";
    check.smtp_login = None;
    check.check_extra = vec!["greylist_retry = \"4s\"".into(), "greylist_grace = \"2m\"".into()];
    let f = check.file();
    let (code, out, err) = mailloop_tests::run_agent(&["probe", "-c", f.path().to_str().unwrap(), "-o", "json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let r: mailloop_common::ProbeReport = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(r.outcome, Outcome::Ok);
    assert!(r.greylisted);
    assert!(r.attempts.len() >= 2, "{:#?}", r.attempts);
    let first = r.attempts[0].failure.as_ref().expect("the first attempt was deferred");
    assert_eq!((first.step, first.class, first.code), (SmtpRcptTo, FailureClass::Deferred, Some(451)));
    assert_eq!(first.enhanced.as_deref(), Some("4.2.0"));
    assert!(r.attempts.last().unwrap().failure.is_none());
    // The wait is its own figure, at least postgrey's delay, and not part of the round trip.
    let delay_ms: f64 = s.var("MAILSTACK_GREY_DELAY").parse::<f64>().unwrap() * 1000.0;
    let grey = r.greylist_ms.expect("greylist_ms");
    assert!(grey >= delay_ms, "greylist_ms {grey} < postgrey delay {delay_ms}");
    assert!(r.rtt_ms.unwrap() < grey, "rtt {:?} includes the greylist wait {grey}", r.rtt_ms);
}

#[tokio::test]
async fn an_older_probe_in_the_mailbox_does_not_hide_a_lost_one() {
    // This run's probe goes to another mailbox (it is "lost" for the reader),
    // while the mailbox read holds a recent probe of the same check.
    let mut check = Check::new("lost");
    let reader = Mailbox::new(&check.imap_user);
    reader.clear();
    let old = format!(
        "From: <probe@sender.test>\nTo: <{to}>\nSubject: previous probe\nX-Mailloop-Probe: ml-previous\nX-Mailloop-Check: lost\n\nold\n",
        to = check.to
    );
    reader.append(&old, &chrono_like_now());
    check.to = Stack::get().mailbox("lost-elsewhere");
    check.deadline = "3s";
    let r = check.probe().await;
    assert_eq!(r.outcome, Outcome::Failed);
    let f = r.failure.as_ref().unwrap();
    assert_eq!((f.step, f.class), (ImapWait, FailureClass::NotDelivered), "{f:#?}");
    assert!(r.rtt_ms.is_none());
    // The previous probe is young, so it stays; this run never took it for its own.
    assert_eq!(reader.subjects(), ["previous probe"]);
    Mailbox::new(&check.to).clear();
}
