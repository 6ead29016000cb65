//! A probe across two real MTA implementations: submitted to the stack's
//! Exim relay (`MAILSTACK_PORT_EXIM`, STARTTLS + AUTH), relayed by Exim
//! over STARTTLS into Postfix's MX-hop, delivered by Dovecot LMTP. The
//! delivered message carries three `Received:` headers in three styles
//! (Exim's `with esmtpsa (TLS1.3) tls CIPHER (Exim 4.96)`, Postfix's
//! `(using TLSv1.3 with cipher ...) by ... (Postfix) with ESMTPS`,
//! Dovecot's bare `with LMTP`); the agent's hop chain must name each relay,
//! its protocol, its TLS session and a delay it did not invent.

use mailloop_common::Outcome;
use mailloop_tests::cluster::wait_until;
use mailloop_tests::{Check, Stack};
use std::time::Duration;

#[tokio::test]
async fn a_probe_through_exim_then_postfix_names_every_hop() {
    let s = Stack::get();
    let mut check = Check::new("two-mtas");
    check.smtp_port = s.port("MAILSTACK_PORT_EXIM");
    let receiver = s.var("MAILSTACK_AUTHSERV_ID");
    check.check_extra = vec![format!("trusted_authserv_id = {receiver:?}")];
    let r = check.probe().await;
    assert_eq!(r.outcome, Outcome::Ok, "{r:#?}");

    // Travel order: Exim took it from the agent, Postfix from Exim, Dovecot from Postfix.
    let path: Vec<(Option<&str>, Option<&str>, Option<&str>)> =
        r.hops.iter().map(|h| (h.from.as_deref(), h.by.as_deref(), h.with.as_deref())).collect();
    assert_eq!(
        path,
        [
            (Some("[127.0.0.1]"), Some("relay.sender.test"), Some("esmtpsa")),
            (Some("relay.sender.test"), Some("mx.receiver.test"), Some("ESMTPS")),
            (Some("mx.receiver.test"), Some("mx.receiver.test"), Some("LMTP")),
        ],
        "{:#?}",
        r.hops
    );
    // Both SMTP hops ran TLS 1.3, each written its own way and read the same.
    for hop in &r.hops[..2] {
        let tls = hop.tls.as_deref().unwrap_or_else(|| panic!("no TLS read from {hop:#?}"));
        assert!(tls.starts_with("TLSv1.3 TLS_"), "{hop:#?}");
    }
    assert_eq!(r.hops[2].tls, None, "LMTP over a UNIX socket has no TLS");

    // Delays: every hop has a date, so every delay is a number, never
    // negative (one clock), and they add up to the last hop's date minus
    // the send time: nothing invented, nothing lost. The first hop is
    // measured from the moment DATA was acked (the end of smtp.data_ack),
    // truncated to the second like the dates.
    for hop in &r.hops {
        assert!(hop.at.is_some() && hop.delay_ms.is_some_and(|d| d >= 0) && hop.note.is_none(), "{hop:#?}");
    }
    let at = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis();
    let ack = r.steps.iter().find(|s| s.name.as_str() == "smtp.data_ack").expect("smtp.data_ack step");
    let acked = at(&r.started_at) as f64 + ack.start_ms + ack.ms;
    // Within a millisecond either way, for the float sum of offsets.
    let seconds = [((acked - 1.0) as i64) / 1000 * 1000, ((acked + 1.0) as i64) / 1000 * 1000];
    let total: i64 = r.hops.iter().map(|h| h.delay_ms.unwrap()).sum();
    let sent = at(r.hops[2].at.as_deref().unwrap()) - total;
    assert!(seconds.contains(&sent), "delays add up to a send time of {sent}, DATA was acked at {acked}: {:#?}", r.hops);

    // The receiver's verdicts: Exim DKIM-signed for sender.test, Postfix's
    // milters verified it. Exim's own `auth=pass` header (authserv-id
    // relay.sender.test) is a relay's word, not the receiver's: ignored.
    let a = r.auth.as_ref().expect("auth report");
    assert_eq!((a.spf.as_deref(), a.dkim.as_deref(), a.dmarc.as_deref()), (Some("pass"), Some("pass"), Some("pass")));
    assert_eq!((a.raw.len(), a.ignored, a.authserv_id.as_deref()), (3, 1, Some(receiver)), "{a:#?}");
    assert!(a.warning.is_none(), "{:?}", a.warning);

    // Exim's own log tells the same story: it received this probe (the
    // queue id the agent read from its 250) authenticated over TLS 1.3, and
    // handed it to Postfix over a verified TLS session. Exim writes the
    // delivery line right after Postfix's 250, which may come a moment
    // after Dovecot has the message: wait for the line, bounded.
    let qid = r.queue_id.clone().expect("Exim's queue id from its 250 reply");
    let log_path = s.var("MAILSTACK_EXIM_LOG");
    let lines = wait_until(Duration::from_secs(10), "Exim's delivery line", || {
        let log = std::fs::read_to_string(log_path).unwrap();
        let lines: Vec<String> = log.lines().filter(|l| l.contains(&qid)).map(str::to_string).collect();
        lines.iter().any(|l| l.contains(" => ")).then_some(lines)
    });
    assert!(
        lines.iter().any(|l| l.contains(" <= probe@sender.test ") && l.contains(" P=esmtpsa ") && l.contains(" X=TLS1.3:")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.contains(" => ") && l.contains(" X=TLS1.3:") && l.contains(" CV=yes ") && l.contains("queued as")),
        "{lines:#?}"
    );
}
