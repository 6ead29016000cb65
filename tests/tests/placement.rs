//! Inbox placement against the real stack: SpamAssassin (spamass-milter on
//! the MX-hop) flags a GTUBE probe, Dovecot's Sieve files it into Junk, and
//! the probe finds it there, reads the verdict and deletes it. Checked from
//! the outside with imaplib, not the agent's IMAP code.

use mailloop_common::{FailureClass, Outcome, StepName};
use mailloop_tests::{Check, Mailbox, Stack};

fn check(test: &str, extra: &[&str]) -> Check {
    let mut c = Check::new(test);
    let id = Stack::get().var("MAILSTACK_AUTHSERV_ID");
    c.check_extra = vec![format!("trusted_authserv_id = {id:?}")];
    c.check_extra.extend(extra.iter().map(|l| l.to_string()));
    // a fresh start in both folders (the login creates Junk)
    let inbox = Mailbox::new(&c.imap_user);
    inbox.clear();
    inbox.folder("Junk").clear();
    c
}

#[tokio::test]
async fn a_gtube_probe_is_found_in_junk_with_the_verdict_and_cleaned_from_there() {
    let c = check("placement-junk", &["probe_body = \"gtube\""]);
    let r = c.probe().await;
    assert!(
        r.failure.is_none(),
        "delivered to junk is delivered: {r:#?}"
    );
    assert_eq!(r.placement.as_deref(), Some("junk"), "{r:#?}");
    assert_eq!(r.placement_folder.as_deref(), Some("Junk"));
    assert_eq!(r.outcome, Outcome::Degraded);
    assert!(r.rtt_ms.is_some() && r.delivery_ms.is_some());
    let reason = r
        .reasons
        .iter()
        .find(|m| m.contains("junk folder"))
        .unwrap_or_else(|| panic!("{:?}", r.reasons));
    assert!(
        reason.contains("\"Junk\"") && reason.contains("GTUBE"),
        "{reason}"
    );
    let spam = r.spam.as_ref().expect("spam verdict");
    assert_eq!(spam.filters, ["spamassassin"]);
    assert_eq!(spam.is_spam, Some(true));
    assert!(spam.score.unwrap() >= 900.0, "{spam:?}");
    assert_eq!(spam.threshold, Some(5.0));
    assert!(spam.rules.iter().any(|x| x == "GTUBE"), "{spam:?}");
    assert!(
        spam.trusted,
        "the trusted receiver's Authentication-Results are there"
    );
    let wait = r.step(StepName::ImapWait).unwrap();
    assert!(
        wait.detail
            .as_deref()
            .unwrap_or("")
            .contains("junk folder Junk"),
        "{wait:?}"
    );
    assert!(
        r.step(StepName::ImapCleanup).is_some_and(|s| s.ok),
        "{r:#?}"
    );
    let m = Mailbox::new(&c.imap_user);
    assert_eq!(
        m.folder("Junk").subjects(),
        Vec::<String>::new(),
        "the probe is deleted from Junk"
    );
    assert_eq!(m.subjects(), Vec::<String>::new(), "and never was in INBOX");
}

#[tokio::test]
async fn a_normal_probe_stays_in_the_inbox_with_a_low_score() {
    let c = check("placement-inbox", &[]);
    let r = c.probe().await;
    assert_eq!(r.outcome, Outcome::Ok, "{r:#?}");
    assert_eq!(r.placement.as_deref(), Some("inbox"));
    assert_eq!(r.placement_folder, None);
    let spam = r
        .spam
        .as_ref()
        .expect("SpamAssassin scores every inbound message");
    assert_eq!(spam.is_spam, Some(false));
    assert!(spam.score.unwrap() < 5.0, "{spam:?}");
    let select = r.step(StepName::ImapSelect).unwrap();
    assert!(
        select
            .detail
            .as_deref()
            .unwrap_or("")
            .contains("junk: Junk"),
        "found through \\Junk: {select:?}"
    );
    assert_eq!(
        Mailbox::new(&c.imap_user).folder("Junk").subjects(),
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn a_configured_junk_folder_that_does_not_exist_is_a_reason() {
    let c = check("placement-nofolder", &[]);
    let mut c = c;
    c.imap_extra = vec!["junk = [\"NoSuchFolder\"]".into()];
    let r = c.probe().await;
    assert_eq!(r.outcome, Outcome::Degraded, "{r:#?}");
    assert!(
        r.reasons
            .iter()
            .any(|m| m.contains("\"NoSuchFolder\" not watched")),
        "{:?}",
        r.reasons
    );
    assert_eq!(r.placement.as_deref(), Some("inbox"));
}

#[tokio::test]
async fn with_junk_watching_off_a_junk_filed_probe_is_not_delivered() {
    let mut c = check("placement-off", &["probe_body = \"gtube\""]);
    c.deadline = "4s";
    c.imap_extra = vec!["junk = false".into()];
    let r = c.probe().await;
    let f = r.failure.as_ref().expect("not found in INBOX");
    assert_eq!(f.class, FailureClass::NotDelivered, "{r:#?}");
    assert!(!f.message.contains("nor in"), "{}", f.message);
    assert_eq!(r.placement, None);
    // it did land in Junk: the filter, not the probe, put it there
    let junk = Mailbox::new(&c.imap_user).folder("Junk");
    let deadline = std::time::Instant::now() + mailloop_tests::patience(std::time::Duration::from_secs(30));
    while junk.subjects().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the GTUBE probe never reached Junk"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    junk.clear();
}

#[tokio::test]
async fn blocklist_lookups_decode_listings_and_reasons_through_the_stacks_dns() {
    let mut c = check("blocklists", &[]);
    c.check_extra.push(
        "blocklists = { dnsbl = [\"dnsbl.test\"], dbl = [\"dbl.test\"], addresses = [\"127.0.0.2\", \"127.0.0.3\"], \
         domains = [\"listed.test\", \"sender.test\"], interval = \"1s\" }"
            .into(),
    );
    let r = c.probe().await;
    assert_eq!(r.outcome, Outcome::Ok, "a listing is a reputation finding, not a degraded delivery: {r:#?}");
    let rep = r.reputation.as_ref().expect("a reputation section");
    assert_eq!(rep.address_source.as_deref(), Some("config"));
    let find = |name: &str| {
        rep.lookups.iter().find(|l| l.name == name).unwrap_or_else(|| panic!("no lookup of {name}: {rep:#?}"))
    };
    let test_point = find("127.0.0.2");
    assert_eq!((test_point.zone.as_str(), test_point.listed), ("dnsbl.test", true), "{test_point:?}");
    assert_eq!(test_point.codes, ["127.0.0.2"]);
    assert_eq!(test_point.lists, ["listed"]);
    assert!(test_point.reason.as_deref().unwrap_or("").contains("DNSBL test point"), "{test_point:?}");
    let clean = find("127.0.0.3");
    assert!(!clean.listed && clean.codes.is_empty() && clean.error.is_none(), "{clean:?}");
    let domain = find("listed.test");
    assert_eq!((domain.zone.as_str(), domain.listed, domain.codes.clone()), ("dbl.test", true, vec!["127.0.1.2".to_string()]));
    assert!(!find("sender.test").listed);
    assert_eq!(rep.lookups.len(), 4, "two addresses in one zone, two domains in the other: {rep:#?}");
}

#[tokio::test]
async fn without_configured_addresses_the_one_that_entered_the_receiver_is_looked_up() {
    let mut c = check("blocklists-learned", &[]);
    c.check_extra.push("blocklists = { dnsbl = [\"dnsbl.test\"], interval = \"1s\" }".into());
    let r = c.probe().await;
    let rep = r.reputation.as_ref().expect("a reputation section");
    assert_eq!(rep.address_source.as_deref(), Some("received"), "{rep:#?}");
    // the stack's relay enters its MX hop from 127.0.0.1
    assert_eq!(rep.addresses, ["127.0.0.1"], "{:#?}", r.hops);
    assert_eq!(rep.domains, [Stack::get().var("MAILSTACK_SENDER_DOMAIN")], "the from domain by default");
    assert_eq!(rep.lookups.len(), 1, "no dbl zone: no domain lookup");
    assert_eq!(rep.lookups[0].zone, "dnsbl.test");
}
