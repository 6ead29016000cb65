//! Issue 5's outage, for real: the shared mail stack is stopped
//! (`tests/mailstack/down.sh`) under three agents in three regions, and
//! started again (`up.sh`, same ports). Its own test binary, so cargo runs
//! it alone, after the binaries that need the stack up; a guard starts the
//! stack again even when the test fails. It runs on both storage backends
//! (`…::sqlite`, `…::postgres`), one after the other: two runs stopping
//! the one stack at once would see each other's outage.
//!
//! While the stack is down, the public status page is read in a real
//! headless Chromium (Debian's, through tests/browser/status_page.mjs):
//! the check says "Outage", the incident is listed, axe finds nothing.
//!
//! Run it only when no one else is testing against the stack:
//! `cargo test -p mailloop-tests --test outage -- --nocapture`.

use mailloop_tests::browser::{browser_dir, require_browser};
use mailloop_tests::backend::Backend;
use mailloop_tests::regions::{self, RegionCluster, Settings};
use mailloop_tests::{Check, cluster::wait_until, on_both_backends};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `up.sh` on drop unless the test already brought the stack back.
struct StackGuard {
    stopped: bool,
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("mailstack").join(name)
}

fn run_script(name: &str) -> Duration {
    let started = Instant::now();
    let out = Command::new("bash").arg(script(name)).output().unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
    assert!(
        out.status.success(),
        "{name} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed()
}

impl StackGuard {
    fn stop(&mut self) {
        self.stopped = true;
        let took = run_script("down.sh");
        eprintln!("down.sh took {:.2} s", took.as_secs_f64());
    }

    fn start(&mut self) {
        let took = run_script("up.sh");
        self.stopped = false;
        eprintln!("up.sh took {:.2} s", took.as_secs_f64());
    }
}

impl Drop for StackGuard {
    fn drop(&mut self) {
        if self.stopped {
            eprintln!("restoring the mail stack after a failed test");
            let _ = Command::new("bash").arg(script("up.sh")).status();
        }
    }
}

on_both_backends!(stopping_the_mail_stack_is_down_an_outage_paged_then_resolved);

/// Held while a test stops and starts the stack (a failed run's poison is
/// no reason to fail the other backend's run).
static STACK_STOPPER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn stopping_the_mail_stack_is_down_an_outage_paged_then_resolved(backend: Backend) {
    let _alone = STACK_STOPPER.lock().unwrap_or_else(|e| e.into_inner());
    // The stack's DNS (dnsmasq) stops with it. The SPF walk runs beside the
    // submission and the probe waits for it, so with DNS gone every failed
    // probe took ~9 s, past the 2 s interval, and the judge skipped those
    // rounds unjudged (its backfill floor overtakes a round before its 12 s
    // deadline; see an_outage_whose_failing_probes_outlast_the_interval_...
    // in tests/verdicts.rs, which reproduces it without stopping the
    // stack). Without the walk a stopped stack fails a probe in
    // milliseconds, which is what this test measures.
    require_browser();
    let mut check = Check::new(&backend.name("v-outage"));
    check.check_extra.push("spf = { enabled = false }".into());
    check.check_extra.push(format!("public = true\ndisplay_name = {DISPLAY:?}"));
    let mut settings = Settings::new();
    settings.storage_url = backend.storage_url("outage");
    let c = RegionCluster::start(&check, &settings);
    wait_until(Duration::from_secs(60), "2 up verdicts", || {
        let v = c.verdicts();
        (v.len() >= 2 && v[..2].iter().all(|v| v["verdict"] == "up")).then_some(())
    });
    let guard = std::cell::RefCell::new(StackGuard { stopped: false });
    let to_page = regions::expect_outage_paged_and_resolved_with(
        &c,
        || guard.borrow_mut().stop(),
        || the_public_page_shows_the_outage(&c),
        || guard.borrow_mut().start(),
    );
    eprintln!("FIGURE real stack stop ({backend:?}): outage webhook {:.2} s after down.sh began", to_page.as_secs_f64());
}

/// What visitors of the status page call the check.
const DISPLAY: &str = "Webmail (outage test)";

/// The outage is open (paged) and the stack still down: the public page,
/// rebuilt within a round, says so in words a visitor reads, lists the
/// incident, and passes axe in both schemes.
fn the_public_page_shows_the_outage(c: &RegionCluster) {
    let summary = wait_until(Duration::from_secs(60), "the outage on status.json", || {
        let s = c.coordinator.get_ok("/status.json");
        let shown = s["components"][0]["status"] == "major_outage" && !s["incidents"].as_array()?.is_empty();
        shown.then_some(s)
    });
    assert_eq!(summary["status"]["indicator"], "critical", "{summary:#}");
    let shots = tempfile::tempdir().unwrap();
    let url = format!("http://{}/status", c.coordinator.http);
    let out = Command::new("node")
        .arg(browser_dir().join("status_page.mjs"))
        .args([url.as_str(), shots.path().to_str().unwrap(), "outage"])
        .output()
        .expect("node is installed (apt-get install nodejs npm)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the browser script failed:\n{}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    for scheme in ["light", "dark"] {
        let s = &seen["schemes"][scheme];
        assert_eq!(s["status"], 200, "{scheme}");
        assert_eq!(s["violations"], serde_json::json!([]), "axe on /status in an outage ({scheme}): {:#}", s["violations"]);
        assert_eq!(s["checks"][0]["name"], DISPLAY, "{s}");
        assert_eq!(s["checks"][0]["state"], "Outage", "{s}");
        let incidents = s["incidents"].as_array().unwrap();
        assert!(
            incidents.iter().any(|h| h.as_str().is_some_and(|h| h.contains(DISPLAY))),
            "the open incident is listed: {incidents:?}"
        );
    }
    eprintln!("public page in the outage: {} / {:?}", seen["schemes"]["light"]["overall"], seen["schemes"]["light"]["incidents"]);
}
