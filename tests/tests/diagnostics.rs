//! Delivery diagnostics against the real stack: the receiver's
//! authentication verdicts and mailloop's own, alignment, expectations,
//! Received hops, certificates and the SPF lookup budget.

use mailloop_common::alignment::Alignment;
use mailloop_common::{FailureClass, Outcome, StepName};
use mailloop_tests::{Check, Stack};

/// A probe through submission with `lines` added to the `[[check]]` table.
async fn probe_with(test: &str, lines: &[&str]) -> mailloop_common::ProbeReport {
    let mut check = Check::new(test);
    check.check_extra = lines.iter().map(|l| l.to_string()).collect();
    check.probe().await
}

#[tokio::test]
async fn the_receivers_verdicts_and_our_own_agree() {
    let id = Stack::get().var("MAILSTACK_AUTHSERV_ID");
    let r = probe_with("auth-pass", &[&format!("trusted_authserv_id = {id:?}")]).await;
    assert_eq!(r.outcome, Outcome::Ok, "{r:#?}");
    let a = r.auth.as_ref().expect("auth report");
    assert_eq!((a.spf.as_deref(), a.dkim.as_deref(), a.dmarc.as_deref()), (Some("pass"), Some("pass"), Some("pass")));
    assert_eq!(a.dkim_domain.as_deref(), Some("sender.test"));
    assert_eq!(a.spf_domain.as_deref(), Some("sender.test"));
    assert_eq!(a.from_domain.as_deref(), Some("sender.test"));
    assert_eq!((a.alignment.dkim, a.alignment.spf), (Alignment::Strict, Alignment::Strict));
    assert_eq!(a.authserv_id.as_deref(), Some(id));
    assert_eq!(a.own_dkim.as_deref(), Some("pass"), "mail-auth's own verification");
    assert_eq!(a.raw.len(), 3);
    assert!(a.warning.is_none(), "a trusted id is configured: {:?}", a.warning);
}

#[tokio::test]
async fn headers_from_an_untrusted_authserv_id_are_ignored() {
    let r = probe_with("auth-untrusted", &["trusted_authserv_id = \"mx.elsewhere.test\"", "[check.expect]"]).await;
    let a = r.auth.as_ref().unwrap();
    assert_eq!(a.ignored, 3);
    assert!(a.spf.is_none() && a.dkim.is_none() && a.dmarc.is_none());
    // Expecting pass with no trusted verdict is a finding, not a silent ok.
    assert_eq!(r.outcome, Outcome::Degraded);
    assert!(r.reasons.contains(&"SPF absent, expected pass".to_string()), "{:?}", r.reasons);
}

#[tokio::test]
async fn an_unmet_expectation_degrades_with_a_reason() {
    let r = probe_with("auth-expect", &["[check.expect]", "dmarc = \"fail\"", "alignment = \"strict\""]).await;
    assert_eq!(r.outcome, Outcome::Degraded, "{r:#?}");
    assert_eq!(r.reasons, ["DMARC pass, expected fail"]);
}

#[tokio::test]
async fn a_spoofed_sender_is_seen_as_such() {
    // Straight to the MX as spoofed.test, whose SPF allows only 192.0.2.1
    // and which has no DKIM key: delivered (annotate-only policy), but failing.
    let s = Stack::get();
    let mut check = Check::new("spoofed");
    check.smtp_port = s.port("MAILSTACK_PORT_MX");
    check.smtp_security = "none";
    check.smtp_login = None;
    check.check_extra = vec!["[check.expect]".into()];
    let f = check.file();
    let text = std::fs::read_to_string(f.path()).unwrap().replace("from = \"probe@sender.test\"", "from = \"probe@spoofed.test\"");
    std::fs::write(f.path(), text).unwrap();
    let (code, out, err) = mailloop_tests::run_agent(&["probe", "-c", f.path().to_str().unwrap(), "-o", "json"]);
    assert_eq!(code, 1, "{out}\n{err}");
    let r: mailloop_common::ProbeReport = serde_json::from_str(out.trim()).unwrap();
    let a = r.auth.as_ref().unwrap();
    assert_eq!((a.spf.as_deref(), a.dmarc.as_deref()), (Some("fail"), Some("fail")), "{a:#?}");
    assert_eq!(a.own_dkim.as_deref(), Some("none"));
    assert!(r.reasons.contains(&"SPF fail, expected pass".to_string()), "{:?}", r.reasons);
    assert!(r.reasons.contains(&"DMARC fail, expected pass".to_string()), "{:?}", r.reasons);
}

#[tokio::test]
async fn received_hops_in_travel_order() {
    let r = probe_with("hops", &[]).await;
    let path: Vec<(&str, &str)> = r.hops.iter().map(|h| (h.by.as_deref().unwrap(), h.with.as_deref().unwrap())).collect();
    assert_eq!(path, [("mail.sender.test", "ESMTPSA"), ("mx.receiver.test", "ESMTPS"), ("mx.receiver.test", "LMTP")]);
    for hop in &r.hops {
        // A local delivery takes under a second per hop: a number, or an honest note.
        assert!(hop.delay_ms.is_some_and(|d| d < 2000) || hop.note.is_some(), "{hop:#?}");
    }
    assert!(r.hops[1].tls.as_deref().is_some_and(|t| t.starts_with("TLSv1.")), "{:#?}", r.hops[1]);
}

/// A probe whose SPF walk covers `domain` of the stack's budget zones.
async fn spf_budget(domain: &str) -> mailloop_common::ProbeReport {
    probe_with(&format!("spf-{}", domain.replace('.', "-")), &["[check.spf]", &format!("domain = {domain:?}")]).await
}

#[tokio::test]
async fn spf_budget_well_within_the_limit() {
    let r = spf_budget("spf3.test").await;
    let b = r.spf.as_ref().unwrap();
    assert_eq!((b.lookups, b.void_lookups, b.limit), (3, 0, 10));
    assert_eq!(b.chain, ["spf3.test", "i1.spf3.test", "i2.spf3.test"]);
    assert_eq!(r.outcome, Outcome::Ok, "{:?}", r.reasons);
    assert!(r.step(StepName::DnsSpf).is_some_and(|s| s.ok));
}

#[tokio::test]
async fn spf_budget_near_the_limit_degrades() {
    for (domain, lookups) in [("spf9.test", 9), ("spf10.test", 10)] {
        let r = spf_budget(domain).await;
        assert_eq!(r.spf.as_ref().unwrap().lookups, lookups);
        assert_eq!(r.outcome, Outcome::Degraded, "{domain}: {:?}", r.reasons);
        assert!(r.reasons.iter().any(|m| m.contains(&format!("needs {lookups} of 10 DNS lookups"))), "{:?}", r.reasons);
    }
}

#[tokio::test]
async fn spf_budget_over_the_limit_fails() {
    let r = spf_budget("spf11.test").await;
    assert_eq!(r.spf.as_ref().unwrap().lookups, 11);
    let f = r.failure.as_ref().expect("failure");
    assert_eq!((f.step, f.class), (StepName::DnsSpf, FailureClass::Permanent));
    assert!(f.message.contains("needs 11 DNS lookups, over the limit of 10"), "{}", f.message);
    // The probe itself still went through; the budget is what failed.
    assert!(r.rtt_ms.is_some());
}

#[tokio::test]
async fn spf_include_loop_and_void_lookups_fail() {
    let r = spf_budget("spfloop.test").await;
    let f = r.failure.as_ref().expect("failure");
    assert!(f.message.contains("include loop: spfloop.test → loop2.spfloop.test → spfloop.test"), "{}", f.message);

    let r = spf_budget("spfvoid.test").await;
    assert_eq!(r.spf.as_ref().unwrap().void_lookups, 3);
    let f = r.failure.as_ref().expect("failure");
    assert!(f.message.contains("3 void lookups, over the limit of 2"), "{}", f.message);
}
