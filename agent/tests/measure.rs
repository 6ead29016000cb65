//! Measurements, not tests: the footprint of an idle agent holding many
//! checks, and how fast a backlog of spooled reports drains. Run with
//!
//! ```text
//! cargo test --release -p mailloop-agent --test measure -- --ignored --nocapture --test-threads 1
//! ```
//!
//! - `idle_agent_footprint` (`MAILLOOP_FOOTPRINT_CHECKS`, default 1000):
//!   the checks run hourly with phases at least half an hour away, so none
//!   probes during the measurement. With `MAILLOOP_FOOTPRINT_INTERVAL_MS`
//!   they run at that interval instead, phases spread across it (each probe
//!   fails at once on a closed port: the agent's own cost per probe).
//! - `replay_throughput` (`MAILLOOP_REPLAY_REPORTS`, default 2000): reports
//!   pile up while the coordinator is down, then drain.

mod support;

use std::time::{Duration, Instant};
use support::agent::AgentDir;
use support::coordinator::{FakeCoordinator, Script};
use support::*;

/// `VmRSS` and `VmHWM` of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// User plus system CPU time of a process, in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn idle_agent_footprint() {
    let n: usize = std::env::var("MAILLOOP_FOOTPRINT_CHECKS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let coord = FakeCoordinator::start(Script { heartbeat_seconds: 15, ..Script::default() });
    let hour = 3_600_000u64;
    let busy: Option<u64> = std::env::var("MAILLOOP_FOOTPRINT_INTERVAL_MS").ok().and_then(|v| v.parse().ok());
    let now = chrono::Utc::now().timestamp_millis() as u64;
    let port = closed_port();
    for i in 0..n {
        let mut a = assignment(&check_json(&format!("check-{i:04}"), port), busy.unwrap_or(hour));
        a.phase_ms = match busy {
            Some(interval) => i as u64 * interval / n as u64,
            // Every phase lies 30 to 60 minutes ahead: no round during the measurement.
            None => (now + hour / 2 + (i as u64 * 1000) % (hour / 2)) % hour,
        };
        coord.assign(a);
    }
    let dir = AgentDir::new();
    dir.config(coord.port(), "");
    let started = Instant::now();
    let mut agent = dir.start();
    for _ in 0..n {
        agent.wait_line("assignment added: check check-").await;
    }
    let ready = started.elapsed();
    let pid = agent.pid();
    let cpu_before = cpu_ticks(pid);
    let window = Duration::from_secs(if busy.is_some() { 30 } else { 10 });
    tokio::time::sleep(window).await; // measuring idle CPU over a window, not waiting for an event
    let idle_ticks = cpu_ticks(pid) - cpu_before;
    let (rss, peak) = memory_kib(pid);
    let what = match busy {
        Some(ms) => format!("agent probing {n} checks every {ms} ms"),
        None => format!("idle agent with {n} checks"),
    };
    println!(
        "{what}: RSS {:.1} MiB (peak {:.1} MiB); all assigned {:.2} s after start; CPU {:.2}% over {}s",
        rss as f64 / 1024.0,
        peak as f64 / 1024.0,
        ready.as_secs_f64(),
        idle_ticks as f64 / window.as_secs_f64(),
        window.as_secs()
    );
    agent.stop().await;
}

#[tokio::test]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn replay_throughput() {
    let n: u64 = std::env::var("MAILLOOP_REPLAY_REPORTS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let coord = FakeCoordinator::start(Script::default());
    let port = coord.port();
    let checks = 200;
    for i in 0..checks {
        coord.assign(assignment(&check_json(&format!("check-{i:03}"), closed_port()), 1000));
    }
    let dir = AgentDir::new();
    dir.config(port, "");
    let mut agent = dir.start();
    agent.wait_line("connected to the coordinator").await;
    agent.wait_line("assignment added: check check-199").await;
    coord.kill();
    let pile_started = Instant::now();
    let line = agent
        .wait_log_within(&format!("{n} reports spooled"), Duration::from_secs(120), |l| l.contains("spooled") && support::agent::waiting(l) >= Some(n))
        .await;
    let piled = pile_started.elapsed();
    let backlog = support::agent::waiting(&line).unwrap();
    let coord = FakeCoordinator::start_on(port, Script::default());
    agent.wait_log_within("a reconnect", Duration::from_secs(60), |l| l.contains("connected to the coordinator")).await;
    let drain_started = Instant::now();
    coord.wait_reports(backlog as usize, Duration::from_secs(300)).await;
    let drained = drain_started.elapsed();
    println!(
        "spooling {} checks/s while down: {backlog} reports in {:.1} s ({:.0}/s); replay: {backlog} reports stored in {:.2} s ({:.0}/s)",
        checks,
        piled.as_secs_f64(),
        backlog as f64 / piled.as_secs_f64(),
        drained.as_secs_f64(),
        backlog as f64 / drained.as_secs_f64()
    );
    agent.stop().await;
}
