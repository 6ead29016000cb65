//! Issue 5 end to end, with real processes: three agents in three regions
//! probe the real mail stack, each through its own TCP proxies (the agents'
//! `connect_to`), and the coordinator judges every round across regions.
//!
//! - one region's path cut: `transit`, a regional incident, never a page;
//! - greylisting on the path: `deferred` then `up`, no incident at all;
//! - every region's path cut (what a stopped stack looks like to agents):
//!   `down`, an outage within `confirm_rounds` rounds, paged with a summary
//!   naming the step and the regions, resolved after the paths come back.
//!
//! The real stop of the shared stack is `tests/outage.rs`, a binary of its own.
//! Figures (false outages, time to page) are printed: run with `--nocapture`.

use mailloop_tests::cluster::wait_until;
use mailloop_tests::regions::{self, RegionCluster, Settings, describe, now_ms};
use mailloop_tests::{Check, Stack, run_agent, unique};
use serde_json::Value;
use std::time::{Duration, Instant};

fn region_evidence<'a>(verdict: &'a Value, region: &str) -> &'a Value {
    verdict["regions"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["region"] == region))
        .unwrap_or_else(|| panic!("no evidence for {region} in {verdict}"))
}

/// Outage incidents and pages: both must stay at zero outside a real outage.
fn false_outages(c: &RegionCluster) -> usize {
    let outages = c.all_incidents().iter().filter(|i| i["kind"] == "outage").count();
    outages + c.pager.hits().len()
}

/// Waits until the cluster has produced `n` `up` verdicts in a row (every
/// region probes the stack through its path).
fn wait_for_up_rounds(c: &RegionCluster, n: usize) {
    wait_until(Duration::from_secs(60), &format!("{n} up verdicts"), || {
        let v = c.verdicts();
        (v.len() >= n && v[..n].iter().all(|v| v["verdict"] == "up")).then_some(())
    });
}

#[test]
fn connect_to_sends_the_probe_through_the_replacement_address() {
    let s = Stack::get();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let host = s.var("MAILSTACK_HOST");
    let smtp_proxy = regions::Proxy::start(
        runtime.handle(),
        format!("{host}:{}", s.port("MAILSTACK_PORT_SUBMISSION")).parse().unwrap(),
    );
    let imap_proxy =
        regions::Proxy::start(runtime.handle(), format!("{host}:{}", s.port("MAILSTACK_PORT_IMAPS")).parse().unwrap());
    // The check names ports nothing listens on (bound, then closed).
    let closed = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut check = Check::new("connect-to");
    check.smtp_port = closed();
    check.imap_port = closed();
    let f = check.file();
    let config = f.path().to_str().unwrap();

    let (code, out, _) = run_agent(&["probe", "-c", config, "-o", "json"]);
    assert_eq!(code, 2, "without connect_to the closed port fails the probe: {out}");
    let r: mailloop_common::ProbeReport = serde_json::from_str(out.trim()).unwrap();
    let failure = r.failure.expect("a failure");
    assert_eq!(failure.class.to_string(), "connect", "{failure:?}");

    let smtp_rule = format!("127.0.0.1:{}={}", check.smtp_port, smtp_proxy.addr());
    let imap_rule = format!("127.0.0.1:{}={}", check.imap_port, imap_proxy.addr());
    let (code, out, err) =
        run_agent(&["probe", "-c", config, "-o", "json", "--connect-to", &smtp_rule, "--connect-to", &imap_rule]);
    assert_eq!(code, 0, "through connect_to the probe reaches the stack:\n{out}\n{err}");
    let r: mailloop_common::ProbeReport = serde_json::from_str(out.trim()).unwrap();
    assert!(r.failure.is_none(), "{:?}", r.failure);
    // The reported endpoint is the check's, with where it really went.
    let detail = |name: &str| {
        r.steps.iter().find(|st| st.name.to_string() == name).and_then(|st| st.detail.clone()).unwrap_or_default()
    };
    assert_eq!(detail("smtp.connect"), format!("127.0.0.1:{} via {}", check.smtp_port, smtp_proxy.addr()));
    assert_eq!(detail("imap.connect"), format!("127.0.0.1:{} via {}", check.imap_port, imap_proxy.addr()));
    // TLS still verified the stack's certificate for the check's name.
    assert!(r.tls.iter().any(|t| t.endpoint.ends_with(&check.smtp_port.to_string())), "{:#?}", r.tls);
    assert_eq!((smtp_proxy.accepted(), imap_proxy.accepted()), (1, 1), "each connection went through its proxy once");
}

#[test]
fn one_regions_cut_path_is_transit_and_a_regional_incident_never_a_page() {
    let c = RegionCluster::start(&Check::new("v-transit"), &Settings::new());
    wait_for_up_rounds(&c, 2);
    let r1 = c.region("r1");
    let before = r1.accepted();
    assert!(before > 0, "r1's agent probes through its own proxies");

    let cut_ms = now_ms();
    r1.cut();
    // transit_rounds (3) rounds of 2 s, plus the round in flight and slack.
    let transit = wait_until(Duration::from_secs(30), "a transit verdict naming r1", || {
        let v = c.verdicts_since(cut_ms);
        v.into_iter().find(|v| v["verdict"] == "transit")
    });
    let e1 = region_evidence(&transit, "r1");
    assert_eq!(e1["state"], "failed", "{transit}");
    let step = e1["step"].as_str().unwrap_or_default().to_string();
    assert!(step.ends_with(".connect"), "r1 fails where its path is refused: {transit}");
    assert_eq!(e1["class"], "connect", "{transit}");
    for other in ["r2", "r3"] {
        assert_eq!(region_evidence(&transit, other)["state"], "ok", "{transit}");
    }
    let note = transit["note"].as_str().unwrap_or_default();
    assert!(note.contains("r1") && note.contains(&step), "the note names the region and the step: {note:?}");

    let incident = wait_until(Duration::from_secs(40), "a regional incident for r1", || {
        c.incidents("state=active&kind=regional").into_iter().next()
    });
    let since_cut = c.verdicts_since(cut_ms);
    eprintln!("verdicts since the cut:\n{}", describe(&since_cut));
    let transit_rounds = since_cut.iter().filter(|v| v["verdict"] == "transit").count();
    assert!(transit_rounds >= 3, "opened after transit_rounds (3) transit rounds, saw {transit_rounds}");
    assert!(
        since_cut.iter().all(|v| v["verdict"] == "transit" || v["verdict"] == "up"),
        "one region's cut path is never down:\n{}",
        describe(&since_cut)
    );
    assert_eq!(incident["regions"], serde_json::json!(["r1"]), "{incident}");
    assert_ne!(incident["severity"], "critical", "a regional incident does not page: {incident}");
    let summary = incident["summary"].as_str().unwrap_or_default();
    assert!(summary.to_lowercase().contains("transit"), "labelled transit: {summary:?}");
    assert!(summary.contains("r1"), "names the region: {summary:?}");
    let ticket = wait_until(Duration::from_secs(15), "the regional incident on the tickets channel", || {
        c.tickets.hits().into_iter().find(|h| h.body["event"] == "opened" && h.body["incident"]["kind"] == "regional")
    });
    assert_eq!(ticket.body["version"], 1);
    assert_eq!(ticket.body["incident"]["id"], incident["id"]);

    let restored = Instant::now();
    r1.restore();
    let id = incident["id"].clone();
    wait_until(Duration::from_secs(40), "the regional incident resolved after r1's path is back", || {
        c.all_incidents().into_iter().find(|i| i["id"] == id && i["state"] == "resolved")
    });
    wait_until(Duration::from_secs(15), "the resolved event on the tickets channel", || {
        c.tickets.hits().into_iter().find(|h| h.body["event"] == "resolved" && h.body["incident"]["id"] == id)
    });
    assert!(r1.accepted() > before, "r1 probed through its path again");
    let false_outages = false_outages(&c);
    eprintln!(
        "FIGURE single-region cut: false outages = {false_outages} (pager hits {}), transit rounds before the regional incident = {transit_rounds}, resolved {:.1} s after restore",
        c.pager.hits().len(),
        restored.elapsed().as_secs_f64()
    );
    assert_eq!(false_outages, 0, "no outage, no page: {:#?}", c.all_incidents());
}

#[test]
fn greylisting_on_the_path_is_deferred_then_up_and_no_incident() {
    let s = Stack::get();
    // A fresh (client, sender, recipient) triplet on the greylisting MX:
    // postgrey answers 451 until its delay has passed. A probe gives up at
    // once (grace 0s), so early rounds report the deferral itself.
    let name = unique("v-grey");
    let mut check = Check::new(&name);
    check.to = format!("t-{name}@{}", s.var("MAILSTACK_GREY_DOMAIN"));
    check.smtp_port = s.port("MAILSTACK_PORT_GREY");
    check.smtp_security = "none";
    check.smtp_login = None;
    check.check_extra = vec!["greylist_retry = \"1s\"".into(), "greylist_grace = \"0s\"".into()];
    let delay = Duration::from_secs(s.var("MAILSTACK_GREY_DELAY").parse().unwrap());
    let start_ms = now_ms();
    let c = RegionCluster::start(&check, &Settings::new());

    let first_up = wait_until(delay + Duration::from_secs(60), "an up verdict once postgrey's delay passed", || {
        c.verdicts_since(start_ms).into_iter().find(|v| v["verdict"] == "up")
    });
    // Two more rounds after the first up: it stays up.
    let up_round = first_up["round"].as_u64().unwrap();
    wait_until(Duration::from_secs(30), "two more verdicts after the first up", || {
        let v = c.verdicts_since(start_ms);
        (v.iter().filter(|v| v["round"].as_u64().unwrap_or(0) > up_round).count() >= 2).then_some(())
    });
    let all = c.verdicts_since(start_ms);
    eprintln!("verdicts:\n{}", describe(&all));
    // Rounds that started while some agents were still connecting are
    // `unknown` (rightly: those regions said nothing); judge from the first
    // round every region reported.
    let warm = all
        .iter()
        .position(|v| v["regions"].as_array().unwrap().iter().all(|r| r["state"] != "missing"))
        .expect("a round every region reported");
    let all = all[warm..].to_vec();
    let deferred: Vec<&Value> = all.iter().filter(|v| v["verdict"] == "deferred").collect();
    assert!(!deferred.is_empty(), "greylisting shows as deferred first:\n{}", describe(&all));
    for v in &deferred {
        for r in v["regions"].as_array().unwrap() {
            if r["state"] == "deferred" {
                assert_eq!(
                    (r["step"].as_str(), r["class"].as_str(), r["code"].as_u64()),
                    (Some("smtp.rcpt_to"), Some("deferred"), Some(451)),
                    "{v}"
                );
            }
        }
    }
    // A round whose every report came in after the judge closed it is
    // `unknown` (no data; on a loaded machine the first delivered round
    // trips after the greylisting can be that late): never up, never down.
    let late = |v: &Value| {
        v["verdict"] == "unknown" && v["regions"].as_array().unwrap().iter().all(|r| r["state"] == "missing" || r["state"] == "ok")
    };
    let first_up_at = all.iter().position(|v| v["verdict"] == "up").unwrap();
    assert!(
        all[..first_up_at].iter().all(|v| v["verdict"] == "deferred" || v["verdict"] == "up" || late(v)),
        "{}",
        describe(&all)
    );
    // Delivered from then on. `degraded` is tolerated: a delivered probe
    // over a threshold on the busy shared machine is not a failure and not
    // an incident (one such round was seen in another test).
    assert!(
        all[first_up_at..].iter().all(|v| v["verdict"] == "up" || v["verdict"] == "degraded" || late(v)),
        "up once delivered:\n{}",
        describe(&all)
    );
    assert!(
        all.iter().all(|v| !matches!(v["verdict"].as_str(), Some("down" | "transit")) && (v["verdict"] != "unknown" || late(v))),
        "{}",
        describe(&all)
    );

    let incidents = c.all_incidents();
    let false_outages = false_outages(&c);
    eprintln!(
        "FIGURE greylisting: false outages = {false_outages}, deferred rounds = {}, incidents = {}, pager hits = {}, ticket hits = {}",
        deferred.len(),
        incidents.len(),
        c.pager.hits().len(),
        c.tickets.hits().len()
    );
    assert!(incidents.is_empty(), "no incident of any kind: {incidents:#?}");
    assert_eq!(false_outages, 0);
    assert!(c.tickets.hits().is_empty(), "nothing sent: {:#?}", c.tickets.hits());
}

#[test]
fn every_regions_path_cut_is_down_an_outage_paged_then_resolved() {
    let c = RegionCluster::start(&Check::new("v-down"), &Settings::new());
    wait_for_up_rounds(&c, 2);
    let figure = regions::expect_outage_paged_and_resolved(&c, || c.cut_all(), || c.restore_all());
    eprintln!("FIGURE all paths cut: outage webhook {:.1} s after the cut", figure.as_secs_f64());
}

#[test]
fn an_outage_whose_failing_probes_outlast_the_interval_is_still_confirmed() {
    // What a stopped stack looks like to agents: every path refused AND
    // its DNS silent (dnsmasq stops with it). The SPF walk beside every
    // submission then waits out its DNS timeouts (~9 s), so every failing
    // probe outlasts the 2 s interval: agents skip rounds, and the rounds
    // nobody reported are `unknown`. Those must neither extend nor break
    // the down streak: the outage is still confirmed and paged.
    //
    // Fails today (2026-11-28): no round is decided at all after the stop.
    // judge/run.rs `decide_due` moves `next_round` up to `current - 3`
    // (BACKFILL_ROUNDS) before a pending round's deadline (start + 2 s +
    // round_slack 10 s = 12 s) can pass, so with 9 s reports every round is
    // skipped unjudged; the floor should count from rounds whose deadline
    // has passed. Same cause as the first real-stop runs of tests/outage.rs.
    let c = RegionCluster::start(&Check::new("v-slow-down"), &Settings::new());
    wait_for_up_rounds(&c, 2);
    let stop = || {
        c.dns.silence();
        c.cut_all();
    };
    let restore = || {
        c.restore_all();
        c.dns.restore();
    };
    let figure = regions::expect_outage_paged_and_resolved(&c, stop, restore);
    eprintln!(
        "FIGURE paths cut and DNS silent (9 s failing probes, 2 s interval): outage webhook {:.1} s after the cut",
        figure.as_secs_f64()
    );
}
