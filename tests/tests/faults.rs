//! Fault injection: what the real mail stack cannot do on demand, staged by
//! scripted fake servers (`mailloop_tests::fake`). Each test is one fault
//! and asserts where the probe failed and how it was classified; the
//! scenario runner also fails a test when the agent panics, hangs past its
//! deadline, or strays from the scripted dialogue.

use mailloop_common::{Failure, FailureClass, Outcome, ProbeReport, StepName};
use mailloop_tests::fake::*;
use std::time::Duration;

use FailureClass::*;
use StepName::*;

/// The probe failed at `step` with `class` and `code`; the step is recorded
/// as failed. Returns the failure for closer looks at its message.
#[track_caller]
fn assert_failed(r: &ProbeReport, step: StepName, class: FailureClass, code: Option<u16>) -> &Failure {
    let f = r.failure.as_ref().unwrap_or_else(|| panic!("expected a failure at {step}, got {r:#?}"));
    assert_eq!((f.step, f.class, f.code), (step, class, code), "{f:#?}\n{r:#?}");
    assert_eq!(r.outcome, Outcome::Failed);
    let recorded = r.step(step).unwrap_or_else(|| panic!("{step} is not in the report: {r:#?}"));
    assert!(!recorded.ok, "{step} is recorded as ok: {r:#?}");
    f
}

#[track_caller]
fn assert_message(f: &Failure, needle: &str) {
    assert!(f.message.contains(needle), "{needle:?} is not in {:?}", f.message);
}

/// A step gave up after `timeout`, not much later: bounded by its timeout.
#[track_caller]
fn assert_gave_up_after(r: &ProbeReport, step: StepName, timeout: Duration) {
    let ms = r.step(step).unwrap_or_else(|| panic!("{step} is not in the report: {r:#?}")).ms;
    let limit = timeout.as_secs_f64() * 1000.0;
    assert!(ms >= limit - 1.0 && ms < limit + 1500.0, "{step} took {ms} ms, timeout {limit} ms");
}

// SMTP faults.

/// Paused clock: the banner timeout elapses at once, without real waiting.
#[tokio::test(start_paused = true)]
async fn smtp_banner_never_sent_times_out_at_the_banner() {
    let run = Scenario::new(FakeServer::start([hang()]), FakeServer::start([hang()])).run().await;
    let f = assert_failed(&run.report, SmtpBanner, Timeout, None);
    assert_message(f, "no answer within 2s (step timeout)");
}

#[tokio::test(start_paused = true)]
async fn smtp_banner_after_30_seconds_times_out_at_the_step_timeout() {
    let late = [delay(Duration::from_secs(30)), say("220 fake-smtp.invalid ESMTP, finally"), hang()];
    let run = Scenario::new(FakeServer::start(late), FakeServer::start([hang()])).run().await;
    let f = assert_failed(&run.report, SmtpBanner, Timeout, None);
    assert_message(f, "within 2s");
}

#[tokio::test]
async fn smtp_banner_421_is_rate_limited() {
    let run =
        Scenario::smtp_fault([say("421 4.3.2 fake-smtp.invalid Service not available, too many connections"), close()])
            .run()
            .await;
    let f = assert_failed(&run.report, SmtpBanner, RateLimited, Some(421));
    assert_eq!(f.enhanced.as_deref(), Some("4.3.2"));
}

/// A dead DNS server (it takes every query and never answers) must not hold
/// back a submission failure: the SPF walk is dropped once submission failed.
#[tokio::test]
async fn a_failed_submission_does_not_wait_for_a_silent_dns_server() {
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let run = Scenario::smtp_fault([say("554 5.7.1 fake-smtp.invalid no service for you"), close()])
        .configure(|c| c.set("spf", serde_json::json!({"enabled": true, "domain": "sender.mailloop.test"})).timeout(DnsSpf, "8s"))
        .dns(vec![silent.local_addr().unwrap()])
        .run()
        .await;
    assert_failed(&run.report, SmtpBanner, Permanent, Some(554));
    assert!(!run.report.steps.iter().any(|s| s.name == DnsSpf), "the SPF walk was waited for: {:#?}", run.report.steps);
}

#[tokio::test]
async fn smtp_421_after_mail_from_is_rate_limited() {
    let run = Scenario::smtp_fault(smtp::ready().then([
        expect("MAIL FROM:<probe@sender.invalid>"),
        say("421 4.7.0 fake-smtp.invalid Error: too many messages, closing connection"),
        close(),
    ]))
    .run()
    .await;
    assert_failed(&run.report, SmtpMailFrom, RateLimited, Some(421));
}

/// Greylisting defers the first three attempts; with retries off (the fake
/// check's default) the probe reports the first. The later test of the
/// greylist retry uses the same servers with `greylist_grace` set.
#[tokio::test]
async fn smtp_451_greylisting_at_rcpt_is_deferred() {
    let run =
        Scenario::new(FakeServer::start_each(smtp::greylists_then_accepts(3)), FakeServer::start(imap::mailbox()))
            .run()
            .await;
    let f = assert_failed(&run.report, SmtpRcptTo, Deferred, Some(451));
    assert_eq!(f.enhanced.as_deref(), Some("4.2.0"));
    assert_message(f, "Greylisted");
    assert_eq!(run.smtp.connections, 1, "one attempt only");
    assert_eq!(run.smtp.received.last().map(String::as_str), Some("QUIT"), "a deferred client says goodbye");
}

#[tokio::test]
async fn smtp_550_at_rcpt_is_permanent() {
    let run = Scenario::smtp_fault(smtp::ready().then([
        expect("MAIL FROM"),
        say("250 2.1.0 Ok"),
        expect("RCPT TO:<probe@receiver.invalid>"),
        say("550 5.1.1 <probe@receiver.invalid>: Recipient address rejected: User unknown"),
        expect("QUIT"),
        say("221 2.0.0 Bye"),
    ]))
    .run()
    .await;
    let f = assert_failed(&run.report, SmtpRcptTo, Permanent, Some(550));
    assert_eq!(f.enhanced.as_deref(), Some("5.1.1"));
}

#[tokio::test]
async fn smtp_552_after_the_body_is_permanent_at_data_ack() {
    let run = Scenario::smtp_fault(smtp::ready().then([
        expect("MAIL FROM"),
        say("250 2.1.0 Ok"),
        expect("RCPT TO"),
        say("250 2.1.5 Ok"),
        expect("DATA"),
        say("354 End data with <CR><LF>.<CR><LF>"),
        read_data(),
        say("552 5.3.4 Message size exceeds fixed limit"),
        expect("QUIT"),
        say("221 2.0.0 Bye"),
    ]))
    .run()
    .await;
    let f = assert_failed(&run.report, SmtpDataAck, Permanent, Some(552));
    assert_eq!(f.enhanced.as_deref(), Some("5.3.4"));
    assert!(run.report.step(SmtpData).unwrap().ok, "DATA itself was accepted");
}

#[tokio::test]
async fn smtp_connection_dropped_after_the_body_is_a_protocol_failure_at_data_ack() {
    let run = Scenario::smtp_fault(smtp::ready().then([
        expect("MAIL FROM"),
        say("250 2.1.0 Ok"),
        expect("RCPT TO"),
        say("250 2.1.5 Ok"),
        expect("DATA"),
        say("354 End data with <CR><LF>.<CR><LF>"),
        read_data(),
        close(),
    ]))
    .run()
    .await;
    let f = assert_failed(&run.report, SmtpDataAck, Protocol, None);
    assert_message(f, "connection closed by the server");
}

/// A reply line of 1 MiB without a line end: refused at the 8 KiB limit,
/// not buffered.
#[tokio::test]
async fn smtp_1_mib_reply_line_is_refused_at_the_line_limit() {
    let run = Scenario::smtp_fault([
        say("220 fake-smtp.invalid ESMTP fake"),
        expect("EHLO"),
        flood("250-fake-smtp.invalid ", 1024 * 1024),
        hang(),
    ])
    .run()
    .await;
    let f = assert_failed(&run.report, SmtpEhlo, Protocol, None);
    assert_message(f, "line longer than 8192 bytes");
}

/// Invalid UTF-8 in an EHLO reply is the server's business: the text is
/// kept lossily and the probe goes on to a full round trip.
#[tokio::test]
async fn smtp_invalid_utf8_in_ehlo_is_tolerated() {
    let run = Scenario::smtp_fault(
        Script::new([
            say("220 fake-smtp.invalid ESMTP fake"),
            expect("EHLO"),
            send_raw(b"250-fake-smtp.invalid greets \xff\xfe\xc3 you\r\n250-X-\xffJUNK\r\n250 PIPELINING\r\n"),
        ])
        .then(smtp::takes_the_message()),
    )
    .run()
    .await;
    assert_eq!(run.report.outcome, Outcome::Ok, "{:#?}", run.report);
    assert_eq!(run.report.step(SmtpEhlo).unwrap().code, Some(250));
}

#[tokio::test]
async fn smtp_550_with_invalid_utf8_is_permanent_with_the_text_kept_lossily() {
    let run = Scenario::smtp_fault(smtp::ready().then([
        expect("MAIL FROM"),
        say("250 2.1.0 Ok"),
        expect("RCPT TO"),
        send_raw(b"550 5.7.1 Message rejected \xff\xfe policy \xe2\x28\xa1\r\n"),
        expect("QUIT"),
        say("221 2.0.0 Bye"),
    ]))
    .run()
    .await;
    let f = assert_failed(&run.report, SmtpRcptTo, Permanent, Some(550));
    assert_eq!(f.enhanced.as_deref(), Some("5.7.1"));
    assert_message(f, "Message rejected \u{FFFD}\u{FFFD} policy");
}

#[tokio::test]
async fn smtp_starttls_refused_with_454_is_a_tls_failure() {
    let run = Scenario::smtp_fault(smtp::ready_with_starttls().then([
        expect("STARTTLS"),
        say("454 4.7.0 TLS not available due to local problem"),
        hang(),
    ]))
    .configure(|c| c.smtp("security", "starttls"))
    .run()
    .await;
    assert_failed(&run.report, SmtpStarttls, Tls, Some(454));
}

#[tokio::test]
async fn smtp_starttls_not_offered_is_a_tls_failure() {
    let run =
        Scenario::smtp_fault(smtp::ready().then([hang()])).configure(|c| c.smtp("security", "starttls")).run().await;
    let f = assert_failed(&run.report, SmtpStarttls, Tls, None);
    assert_message(f, "does not offer STARTTLS");
    assert!(!run.smtp.received.iter().any(|l| l == "STARTTLS"), "never asked: {:?}", run.smtp.received);
}

#[tokio::test]
async fn smtp_certificate_for_another_name_is_a_tls_failure_at_starttls() {
    let pki = TestPki::new();
    let run = Scenario::smtp_fault(smtp::ready_with_starttls().then([
        expect("STARTTLS"),
        say("220 2.0.0 Ready to start TLS"),
        start_tls(&pki.wrong_name),
    ]))
    .configure(|c| c.smtp("security", "starttls").trust(&pki))
    .run()
    .await;
    let f = assert_failed(&run.report, SmtpStarttls, Tls, None);
    assert_eq!(
        f.message,
        "certificate is for other.invalid, not 127.0.0.1: connect by a name it carries or set server_name to one, or give the server a certificate for 127.0.0.1"
    );
    assert!(f.raw.as_deref().is_some_and(|raw| raw.contains("not valid for name")), "{f:#?}");
}

#[tokio::test]
async fn smtp_expired_certificate_is_a_tls_failure_at_implicit_tls() {
    let pki = TestPki::new();
    let run = Scenario::smtp_fault([start_tls(&pki.expired), say("220 fake-smtp.invalid ESMTP fake"), hang()])
        .configure(|c| c.smtp("security", "tls").trust(&pki))
        .run()
        .await;
    let f = assert_failed(&run.report, SmtpTls, Tls, None);
    let expired_on = time::OffsetDateTime::from(pki.expired.not_after);
    let date = format!("{:04}-{:02}-{:02}", expired_on.year(), u8::from(expired_on.month()), expired_on.day());
    assert_eq!(f.message, format!("certificate expired on {date} (365 days ago): the server needs a renewed certificate"));
    // The refused certificate is still shown, with how long ago it expired.
    let cert = &run.report.tls[0];
    assert!(cert.days_left < 0 && cert.version.is_none(), "{cert:#?}");
}

#[tokio::test]
async fn smtp_garbage_instead_of_a_banner_is_a_protocol_failure() {
    let run = Scenario::smtp_fault([say("HTTP/1.1 400 Bad Request"), hang()]).run().await;
    let f = assert_failed(&run.report, SmtpBanner, Protocol, None);
    assert_message(f, "malformed reply line \"HTTP/1.1 400 Bad Request\"");
}

// The certificates themselves: without these, a TLS failure above could be
// a broken test CA rather than the fault.

#[tokio::test]
async fn valid_certificates_complete_a_round_trip_over_starttls_and_implicit_tls() {
    let pki = TestPki::new();
    let smtp = smtp::ready_with_starttls().then(smtp::upgrades_to_tls(&pki.valid)).then(smtp::takes_the_message());
    let imap = Script::new([start_tls(&pki.valid)]).then(imap::mailbox());
    let run = Scenario::new(FakeServer::start(smtp), FakeServer::start(imap))
        .configure(|c| c.smtp("security", "starttls").imap("security", "tls").trust(&pki))
        .run()
        .await;
    assert_eq!(run.report.outcome, Outcome::Ok, "{:#?}", run.report);
    assert!(run.report.step(SmtpStarttls).unwrap().detail.as_deref().unwrap().starts_with("TLSv1."));
    assert!(run.report.step(ImapTls).unwrap().ok);
}

/// Five days left is still a valid certificate: the handshake succeeds
/// (reporting the expiry is another test's business).
#[tokio::test]
async fn certificate_expiring_in_5_days_still_completes_the_handshake() {
    let pki = TestPki::new();
    let run = Scenario::smtp_fault(Script::new([start_tls(&pki.expires_in_5_days)]).then(smtp::delivers()))
        .configure(|c| c.smtp("security", "tls").trust(&pki))
        .run()
        .await;
    assert!(run.report.failure.is_none(), "{:#?}", run.report);
    assert!(run.report.step(SmtpTls).unwrap().ok);
}

/// ...but fewer days than `cert_min_days` (14) make the probe degraded.
#[tokio::test]
async fn certificate_expiring_in_5_days_degrades_the_probe() {
    let pki = TestPki::new();
    let run = Scenario::smtp_fault(Script::new([start_tls(&pki.expires_in_5_days)]).then(smtp::delivers()))
        .configure(|c| c.smtp("security", "tls").trust(&pki))
        .run()
        .await;
    let r = &run.report;
    assert_eq!(r.outcome, Outcome::Degraded, "{r:#?}");
    let cert = &r.tls[0];
    assert!((4..=5).contains(&cert.days_left), "{cert:#?}");
    assert_eq!((cert.protocol.as_str(), cert.sans.as_slice()), ("smtp", &["127.0.0.1".to_string(), "localhost".to_string()][..]));
    assert!(r.reasons.iter().any(|m| m.contains("certificate of 127.0.0.1:") && m.contains("below cert_min_days 14")), "{:?}", r.reasons);
    // With a lower bar the same certificate is fine.
    let run = Scenario::smtp_fault(Script::new([start_tls(&pki.expires_in_5_days)]).then(smtp::delivers()))
        .configure(|c| c.smtp("security", "tls").trust(&pki).set("cert_min_days", 3))
        .run()
        .await;
    assert_eq!(run.report.outcome, Outcome::Ok, "{:#?}", run.report.reasons);
}

// The greylist retry.

/// A server that greylists `times` attempts then accepts, probed with the
/// given retry settings.
async fn greylisted(times: usize, retry: &str, grace: &str) -> Run {
    Scenario::new(FakeServer::start_each(smtp::greylists_then_accepts(times)), FakeServer::start(imap::mailbox()))
        .configure(|c| c.set("greylist_retry", retry).set("greylist_grace", grace))
        .run()
        .await
}

#[tokio::test]
async fn greylisting_three_times_then_accepted_is_retried_to_delivery() {
    let run = greylisted(3, "50ms", "30s").await;
    let r = &run.report;
    assert_eq!(r.outcome, Outcome::Ok, "{r:#?}");
    assert!(r.greylisted);
    assert_eq!(run.smtp.connections, 4);
    assert_eq!(r.attempts.len(), 4);
    for a in &r.attempts[..3] {
        let f = a.failure.as_ref().unwrap();
        assert_eq!((f.step, f.class, f.code), (SmtpRcptTo, Deferred, Some(451)));
    }
    assert!(r.attempts[3].failure.is_none());
    // Waits of 50, 100 and 200 ms: the greylist figure holds them, the round trip does not.
    let grey = r.greylist_ms.unwrap();
    assert!(grey >= 350.0, "greylist_ms {grey}");
    assert!(r.rtt_ms.unwrap() < grey, "{:?} {grey}", r.rtt_ms);
}

#[tokio::test]
async fn deferrals_past_the_grace_window_fail_as_deferred() {
    let run = greylisted(10, "50ms", "300ms").await;
    let f = assert_failed(&run.report, SmtpRcptTo, Deferred, Some(451));
    assert_message(f, "still deferred after 3 attempts");
    assert_eq!(run.smtp.connections, 3, "50 ms, then 100 ms; the next wait (200 ms) would pass the 300 ms grace");
    assert!(!run.report.greylisted);
}

#[tokio::test]
async fn permanent_failures_are_never_retried() {
    let rejects = smtp::ready().then([
        expect("MAIL FROM"),
        say("250 2.1.0 Ok"),
        expect("RCPT TO"),
        say("550 5.1.1 <probe@receiver.invalid>: User unknown"),
        expect("QUIT"),
        say("221 2.0.0 Bye"),
        close(),
    ]);
    let run = Scenario::new(FakeServer::start(rejects), FakeServer::start(imap::mailbox()))
        .configure(|c| c.set("greylist_retry", "50ms").set("greylist_grace", "30s"))
        .run()
        .await;
    assert_failed(&run.report, SmtpRcptTo, Permanent, Some(550));
    assert_eq!((run.smtp.connections, run.report.attempts.len()), (1, 1));
}

// IMAP faults.

#[tokio::test]
async fn imap_bye_greeting_is_a_connect_failure() {
    let run = Scenario::imap_fault([say("* BYE Too many connections from your IP"), close()]).run().await;
    let f = assert_failed(&run.report, ImapGreeting, Connect, None);
    assert_message(f, "Too many connections");
}

#[tokio::test]
async fn imap_login_no_is_an_auth_failure() {
    let run = Scenario::imap_fault(imap::greeting().then([
        expect("LOGIN \"probe@receiver.invalid\""),
        tagged("NO [AUTHENTICATIONFAILED] Authentication failed."),
        hang(),
    ]))
    .run()
    .await;
    let f = assert_failed(&run.report, ImapLogin, Auth, None);
    assert_message(f, "AUTHENTICATIONFAILED");
}

/// A SEARCH that never answers is cut off by the search timeout, and
/// reported as the wait that could not finish.
#[tokio::test]
async fn imap_search_that_never_answers_times_out_within_the_search_timeout() {
    let run = Scenario::imap_fault(imap::selected().then([expect("UID SEARCH HEADER X-Mailloop-Probe"), hang()]))
        .configure(|c| c.timeout(ImapSearch, "1s").timeout(ImapLogout, "500ms"))
        .run()
        .await;
    let f = assert_failed(&run.report, ImapWait, Timeout, None);
    assert_message(f, "UID SEARCH got no answer within 1s");
    assert_gave_up_after(&run.report, ImapWait, Duration::from_secs(1));
}

/// While waiting for the probe, the server stops answering the NOOPs that
/// poll the mailbox: cut off by the imap.wait timeout, not left to hang.
#[tokio::test]
async fn imap_noop_that_never_answers_during_the_wait_times_out() {
    let run = Scenario::imap_fault(imap::selected().then([
        expect("UID SEARCH"),
        say("* SEARCH"),
        tagged("OK SEARCH completed"),
        expect("NOOP"),
        hang(),
    ]))
    .configure(|c| c.timeout(ImapWait, "1s").timeout(ImapLogout, "500ms"))
    .run()
    .await;
    let f = assert_failed(&run.report, ImapWait, Timeout, None);
    assert_message(f, "NOOP got no answer within 1s");
    assert_gave_up_after(&run.report, ImapWait, Duration::from_secs(1));
}

/// The server never confirms IDLE with its "+" continuation.
#[tokio::test]
async fn imap_idle_that_is_never_confirmed_times_out() {
    let run = Scenario::imap_fault(imap::selected().then([
        expect("UID SEARCH"),
        say("* SEARCH"),
        tagged("OK SEARCH completed"),
        expect("IDLE"),
        hang(),
    ]))
    .configure(|c| c.imap("fast_window", "0s").timeout(ImapWait, "1s").timeout(ImapLogout, "500ms"))
    .run()
    .await;
    let f = assert_failed(&run.report, ImapWait, Timeout, None);
    assert_message(f, "IDLE got no answer within 1s");
    assert_gave_up_after(&run.report, ImapWait, Duration::from_secs(1));
}

/// A FETCH announcing a 4 GiB literal is refused from the announcement: no
/// allocation, no waiting for the bytes.
#[tokio::test]
async fn imap_literal_of_4_gib_is_refused_at_the_literal_limit() {
    let run = Scenario::imap_fault(imap::selected().then([
        expect("UID SEARCH"),
        say("* SEARCH 1"),
        tagged("OK SEARCH completed"),
        expect("UID FETCH 1"),
        say("* 1 FETCH (UID 1 BODY[] {4294967296}"),
        flood("", 64 * 1024),
        hang(),
    ]))
    .configure(|c| c.timeout(ImapLogout, "500ms"))
    .run()
    .await;
    let f = assert_failed(&run.report, ImapFetch, Protocol, None);
    assert_message(f, "4294967296-byte literal (limit 16777216)");
}

/// Each literal under the limit, but one after another in the same FETCH
/// response without end: refused once the response outgrows the bound for
/// one answer, rather than buffered until memory runs out.
#[tokio::test]
async fn imap_fetch_with_endless_literals_is_refused_at_the_answer_limit() {
    const MIB: usize = 1024 * 1024;
    let literal_train =
        (2..=40).flat_map(|i| [send_raw(format!(" BODY[{i}] {{{MIB}}}\r\n").as_bytes()), flood("", MIB)]);
    let run = Scenario::imap_fault(
        imap::selected()
            .then([expect("UID SEARCH"), say("* SEARCH 1"), tagged("OK SEARCH completed"), expect("UID FETCH 1")])
            .then([send_raw(format!("* 1 FETCH (UID 1 BODY[1] {{{MIB}}}\r\n").as_bytes()), flood("", MIB)])
            .then(literal_train)
            .then([hang()]),
    )
    .configure(|c| c.timeout(ImapLogout, "500ms"))
    .run()
    .await;
    let f = assert_failed(&run.report, ImapFetch, Protocol, None);
    assert_message(f, "exceeds the limit of 17825792 bytes");
}

#[tokio::test]
async fn imap_connection_closed_mid_literal_is_a_protocol_failure() {
    let run = Scenario::imap_fault(imap::selected().then([
        expect("UID SEARCH"),
        say("* SEARCH 1"),
        tagged("OK SEARCH completed"),
        expect("UID FETCH 1"),
        say("* 1 FETCH (UID 1 BODY[] {2000}"),
        send_raw(b"From: <probe@sender.invalid>\r\nSubject: cut sh"),
        close(),
    ]))
    .run()
    .await;
    let f = assert_failed(&run.report, ImapFetch, Protocol, None);
    assert_message(f, "connection closed by the server");
}

#[tokio::test]
async fn imap_garbage_greeting_is_a_protocol_failure() {
    let run = Scenario::imap_fault([say("SSH-2.0-OpenSSH_9.6"), hang()]).run().await;
    let f = assert_failed(&run.report, ImapGreeting, Protocol, None);
    assert_message(f, "not an IMAP greeting");
}
