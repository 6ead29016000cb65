//! The public status page of a real cluster: agents in two regions probe
//! the real mail stack, the coordinator rolls their reports into hourly
//! aggregates, and headless Chromium (Debian's) reads the check's page:
//! its round-trip and delivery charts have a point per region from those
//! real round trips, in both colour schemes, with no axe violation.
//!
//! `cargo test -p mailloop-tests --test status_live` (needs the stack up
//! and `make deps` for the browser tooling).

use mailloop_tests::browser::{browser_dir, require_browser};
use mailloop_tests::Check;
use mailloop_tests::cluster::{Cluster, check_toml, wait_until};
use serde_json::Value;
use std::time::Duration;

const REGIONS: [&str; 2] = ["eu-west", "us-east"];

/// Runs the browser script on `url`: what it saw, per scheme.
fn browse(url: &str, shots: &std::path::Path, name: &str) -> Value {
    let out = std::process::Command::new("node")
        .arg(browser_dir().join("status_page.mjs"))
        .args([url, shots.to_str().unwrap(), name])
        .output()
        .expect("node is installed (apt-get install nodejs npm)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the browser script failed:\n{}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn a_browser_sees_charts_of_real_round_trips_per_region() {
    require_browser();
    let mut check = Check::new("status-live");
    check.check_extra.push("public = true".into());
    check.check_extra.push("display_name = \"Live Mail\"".into());
    let id = check.name.clone();
    let c = Cluster::start(&check_toml(&check, "2s", &REGIONS));

    // Real round trips stored from both regions (each is rolled into its
    // hour's aggregate as it is stored).
    wait_until(Duration::from_secs(120), "two ok results in each region", || {
        let rounds = c.rounds(&id);
        REGIONS
            .iter()
            .all(|r| {
                rounds
                    .iter()
                    .filter(|((region, _), results)| region == r && results.iter().any(|x| x["outcome"] == "ok"))
                    .count()
                    >= 2
            })
            .then_some(())
    });

    let shots = tempfile::tempdir().unwrap();
    let base = format!("http://{}/status", c.coordinator.http);
    let page = browse(&base, shots.path(), "status");
    for scheme in ["light", "dark"] {
        let s = &page["schemes"][scheme];
        assert_eq!(s["status"], 200);
        assert_eq!(s["violations"], serde_json::json!([]), "axe on /status ({scheme}): {:#}", s["violations"]);
        assert_eq!(s["checks"][0]["name"], "Live Mail", "{s}");
    }

    let url = format!("{base}/check/{id}");
    let seen = browse(&url, shots.path(), "check");
    for scheme in ["light", "dark"] {
        let s = &seen["schemes"][scheme];
        assert_eq!(s["status"], 200, "{scheme}");
        assert_eq!(s["violations"], serde_json::json!([]), "axe on the check's page ({scheme}): {:#}", s["violations"]);
        assert_eq!(s["scripts"], 0);
        let charts = s["charts"].as_array().unwrap();
        assert_eq!(charts.len(), 4, "24 h and 7 d, round trip and delivery: {charts:#?}");
        for chart in charts {
            assert_eq!(chart["role"], "img");
            let desc = chart["desc"].as_str().unwrap();
            for region in REGIONS {
                assert!(desc.contains(&format!("{region}: ")), "{desc}");
            }
            assert!(!desc.contains("no data"), "real measurements in every region: {desc}");
            let lines = chart["lines"].as_array().unwrap();
            for region in REGIONS {
                let drawn = lines
                    .iter()
                    .filter(|l| l["title"].as_str().is_some_and(|t| t.starts_with(region)))
                    .map(|l| l["points"].as_u64().unwrap())
                    .collect::<Vec<_>>();
                assert!(!drawn.is_empty() && drawn.iter().all(|p| *p >= 1), "{region} has points: {chart:#}");
            }
        }
    }
    assert!(shots.path().join("check-dark.png").exists());
}
