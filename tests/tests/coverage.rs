//! Issue 17 end to end, with real processes: the monitor's own blindness
//! is an incident. Three `mailloop-agent run` processes, one per region,
//! probe the real mail stack; killing a region's only agent opens a
//! `coverage` incident whose alert names the region and the agent, `/status`
//! and the verdict evidence say why the region has no report, and starting
//! the agent again resolves it.
//!
//! The figure (kill to alert) is printed: run with `--nocapture`.

use mailloop_tests::cluster::wait_until;
use mailloop_tests::regions::{RegionCluster, Settings, now_ms};
use mailloop_tests::Check;
use serde_json::Value;
use std::time::{Duration, Instant};

fn region_of<'a>(regions: &'a Value, name: &str) -> &'a Value {
    regions
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["region"] == name))
        .unwrap_or_else(|| panic!("no {name} in {regions}"))
}

#[test]
fn killing_a_regions_only_agent_opens_a_coverage_incident_and_its_return_resolves_it() {
    let mut c = RegionCluster::start(&Check::new("v-coverage"), &Settings::new());
    wait_until(Duration::from_secs(60), "a round every region reported", || {
        (c.rounds_reported_by_all() >= 1).then_some(())
    });

    let killed_ms = now_ms();
    let killed = Instant::now();
    c.kill_agent("r3");
    // The round in flight (2 s) plus its deadline (round_slack 10 s) and a loaded machine.
    let alert = wait_until(Duration::from_secs(90), "the coverage alert on the watch channel", || {
        c.watch.hits().into_iter().find(|h| h.body["event"] == "opened" && h.body["incident"]["kind"] == "coverage")
    });
    eprintln!("FIGURE agent killed: coverage webhook {:.1} s after the kill", alert.at.duration_since(killed).as_secs_f64());
    let incident = &alert.body["incident"];
    let summary = incident["summary"].as_str().unwrap_or_default();
    assert_eq!(incident["regions"], serde_json::json!(["r3"]), "{incident}");
    assert_eq!(incident["key"], "r3", "{incident}");
    assert!(summary.contains("The monitor is blind in r3"), "{summary}");
    assert!(summary.contains("agent agent-r3 disconnected"), "names the agent and when it went: {summary}");
    assert!(c.pager.hits().is_empty(), "coverage is not an outage: {:#?}", c.pager.hits().iter().map(|h| &h.body).collect::<Vec<_>>());

    // The API says why r3 is missing, in the verdict and in /status.
    // The incident opens when the agent's disconnection is seen, which can
    // be before the next round is decided: wait for that round.
    let blind = wait_until(Duration::from_secs(60), "a verdict with r3 missing", || {
        c.verdicts_since(killed_ms).into_iter().find(|v| region_of(&v["regions"], "r3")["state"] == "missing")
    });
    let r3 = region_of(&blind["regions"], "r3");
    let detail = r3["detail"].as_str().unwrap_or_default();
    assert!(detail.starts_with("no report from r3 since "), "{r3}");
    assert!(detail.contains("(agent agent-r3 disconnected "), "{r3}");
    assert_eq!(r3["agents_connected"], 0, "{r3}");
    let status = c.coordinator.get_ok("/api/v1/status");
    let check = status["checks"].as_array().unwrap().iter().find(|s| s["check"] == c.check_id.as_str()).unwrap().clone();
    let live = region_of(&check["regions"], "r3")["detail"].as_str().unwrap_or_default().to_string();
    assert!(live.starts_with("no agent connected in r3 now (agent agent-r3 disconnected "), "{check}");
    assert!(check["incidents"].as_array().unwrap().iter().any(|i| i["kind"] == "coverage"), "{check}");

    c.restart_agent("r3");
    let id = incident["id"].clone();
    wait_until(Duration::from_secs(90), "the coverage incident resolved on the watch channel", || {
        c.watch.hits().into_iter().find(|h| h.body["event"] == "resolved" && h.body["incident"]["id"] == id)
    });
    let active = c.incidents("state=active&kind=coverage");
    assert!(active.is_empty(), "{active:#?}");
}
