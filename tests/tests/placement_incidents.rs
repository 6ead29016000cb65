//! Placement and reputation incidents end to end (issue 19): a coordinator
//! and three real agents (one per region, each through its own proxies) probe
//! the real stack. Region r1's submission comes from 127.0.0.66, an address
//! the stack's SpamAssassin scores as spam (a local rule standing in for a
//! sending IP with a bad reputation), so Sieve files r1's probes into Junk
//! while r2 and r3 reach the inbox; and the stack's relay address 127.0.0.1
//! is listed in the stack's DNSBL zone while the test says so.
//!
//! Expected: a placement incident naming r1 only, with the spam verdict as
//! evidence, and a reputation incident naming the listing and its TXT
//! reason, both on the alert channel and in `mailloopctl`; no performance
//! incident; both resolved once r1 submits from 127.0.0.1 again and the
//! listing is removed. Figures are printed: run with `--nocapture`.

use mailloop_tests::blocklist::Listing;
use mailloop_tests::cluster::wait_until;
use mailloop_tests::regions::{RegionCluster, Settings, describe};
use mailloop_tests::{Check, Mailbox, Stack};
use serde_json::Value;
use std::time::{Duration, Instant};

fn evidence<'a>(verdict: &'a Value, region: &str) -> &'a Value {
    verdict["regions"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["region"] == region))
        .unwrap_or_else(|| panic!("no evidence for {region} in {verdict}"))
}

fn active(c: &RegionCluster, kind: &str) -> Option<Value> {
    c.incidents(&format!("state=active&kind={kind}")).into_iter().next()
}

#[test]
fn a_junk_filed_region_and_a_listed_relay_open_placement_and_reputation_incidents_until_fixed() {
    let mut check = Check::new("pl-incidents");
    check.check_extra = vec![
        format!("trusted_authserv_id = {:?}", Stack::get().var("MAILSTACK_AUTHSERV_ID")),
        "blocklists = { dnsbl = [\"dnsbl.test\"], interval = \"1s\" }".into(),
    ];
    let inbox = Mailbox::new(&check.imap_user);
    inbox.clear();
    inbox.folder("Junk").clear();
    let listing = Listing::address("pl-incidents", "127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
    let c = RegionCluster::start(&check, &Settings::new());
    // r1's submission path (its first proxy: the SMTP port) from the bad address
    let bad_since = Instant::now();
    c.region("r1").proxies[0].set_source(Some("127.0.0.66".parse().unwrap()));

    let placement = wait_until(Duration::from_secs(60), "a placement incident", || active(&c, "placement"));
    let placement_after = bad_since.elapsed();
    assert_eq!(placement["regions"], serde_json::json!(["r1"]), "{placement}");
    assert_eq!(placement["severity"], "warning");
    let summary = placement["summary"].as_str().unwrap_or_default();
    for want in ["only in r1 while ", " the inbox", "sending path", "Junk", "spamassassin: spam", "MAILSTACK_BAD_PATH"] {
        assert!(summary.contains(want), "{want:?} in {summary:?}");
    }
    // The inbox regions named are those whose report of the deciding round
    // said inbox: r2 and r3, or one of them when the other's came late.
    let named = summary.split("only in r1 while ").nth(1).and_then(|t| t.split(" reach").next()).unwrap_or_default();
    let named: Vec<&str> = named.split(", ").collect();
    assert!(!named.is_empty() && named.iter().all(|r| ["r2", "r3"].contains(r)), "inbox regions {named:?} in {summary:?}");
    let verdicts = c.verdicts();
    let last = verdicts.iter().find(|v| evidence(v, "r1")["placement"] == "junk").expect("a verdict with r1 in junk");
    let r1 = evidence(last, "r1");
    assert_eq!(r1["placement_folder"], "Junk", "{r1}");
    assert_eq!(r1["spam"]["is_spam"], true, "{r1}");
    assert!(r1["spam"]["score"].as_f64().unwrap() >= 5.0, "{r1}");
    assert_eq!(evidence(last, "r2")["placement"], "inbox", "{last}");
    assert_eq!(last["verdict"], "degraded", "{}", describe(&verdicts));

    let reputation = wait_until(Duration::from_secs(60), "a reputation incident", || active(&c, "reputation"));
    let summary = reputation["summary"].as_str().unwrap_or_default();
    for want in ["127.0.0.1 listed in dnsbl.test", "127.0.0.2", "its outbound relay 127.0.0.1"] {
        assert!(summary.contains(want), "{want:?} in {summary:?}");
    }
    for kind in ["placement", "reputation"] {
        wait_until(Duration::from_secs(15), &format!("the {kind} incident on the tickets channel"), || {
            c.tickets.hits().into_iter().find(|h| h.body["event"] == "opened" && h.body["incident"]["kind"] == kind)
        });
    }
    let (code, out, err) = c.coordinator.ctl(&["incidents", "list", "--state", "active"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("placement") && out.contains("reputation"), "{out}");
    let (code, out, err) = c.coordinator.ctl(&["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("placement (open)") && out.contains("junk folder"), "{out}");
    assert!(active(&c, "performance").is_none(), "junk placement alone is no performance incident");

    let fixed = Instant::now();
    c.region("r1").proxies[0].set_source(None);
    listing.remove();
    for (kind, id) in [("placement", placement["id"].clone()), ("reputation", reputation["id"].clone())] {
        wait_until(Duration::from_secs(60), &format!("the {kind} incident resolved"), || {
            c.all_incidents().into_iter().find(|i| i["id"] == id && i["state"] == "resolved")
        });
        wait_until(Duration::from_secs(15), &format!("the {kind} resolved event"), || {
            c.tickets.hits().into_iter().find(|h| h.body["event"] == "resolved" && h.body["incident"]["id"] == id)
        });
    }
    let resolved_after = fixed.elapsed();
    assert!(c.all_incidents().iter().all(|i| i["kind"] != "performance" && i["kind"] != "outage"), "{:#?}", c.all_incidents());
    eprintln!(
        "FIGURE placement incident opened {:.1} s after r1's path turned bad (2 s rounds, placement_rounds 2); \
         placement and reputation resolved {:.1} s after the fix (resolve_rounds 2)",
        placement_after.as_secs_f64(),
        resolved_after.as_secs_f64()
    );
    drop(c);
    // every probe was cleaned up, from Junk too
    assert_eq!(Mailbox::new(&check.imap_user).folder("Junk").subjects(), Vec::<String>::new());
}
