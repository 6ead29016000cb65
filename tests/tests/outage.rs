//! Issue 5's outage, for real: the shared mail stack is stopped
//! (`tests/mailstack/down.sh`) under three agents in three regions, and
//! started again (`up.sh`, same ports). Its own test binary, so cargo runs
//! it alone, after the binaries that need the stack up; a guard starts the
//! stack again even when the test fails. It runs on both storage backends
//! (`…::sqlite`, `…::postgres`), one after the other: two runs stopping
//! the one stack at once would see each other's outage.
//!
//! Run it only when no one else is testing against the stack:
//! `cargo test -p mailloop-tests --test outage -- --nocapture`.

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
    let mut check = Check::new(&backend.name("v-outage"));
    check.check_extra.push("spf = { enabled = false }".into());
    let mut settings = Settings::new();
    settings.storage_url = backend.storage_url("outage");
    let c = RegionCluster::start(&check, &settings);
    wait_until(Duration::from_secs(60), "2 up verdicts", || {
        let v = c.verdicts();
        (v.len() >= 2 && v[..2].iter().all(|v| v["verdict"] == "up")).then_some(())
    });
    let guard = std::cell::RefCell::new(StackGuard { stopped: false });
    let to_page =
        regions::expect_outage_paged_and_resolved(&c, || guard.borrow_mut().stop(), || guard.borrow_mut().start());
    eprintln!("FIGURE real stack stop ({backend:?}): outage webhook {:.2} s after down.sh began", to_page.as_secs_f64());
}
