//! `mailloop-agent run` against a fake coordinator: registration, the
//! assignment feed, reports acknowledged and spooled, outages, restarts,
//! the spool cap, the token, TLS, graceful shutdown.
//!
//! Every probe here fails fast against a closed loopback port (see
//! `support`); what is under test is what the agent does with its reports.
//! Checks run every second; every wait has a deadline and none is a sleep.

mod support;

use std::collections::HashSet;
use std::time::Duration;
use support::agent::{Agent, AgentDir, WITHIN, waiting};
use support::coordinator::{Acks, FakeCoordinator, Script};
use support::*;

/// How long the coordinator may take to see what a test waits for.
const SOON: Duration = Duration::from_secs(20);

/// The ids of `log` that are not in `minus`, in order.
fn without(log: &[(String, String)], minus: &HashSet<String>) -> Vec<String> {
    log.iter().map(|(p, _)| p.clone()).filter(|p| !minus.contains(p)).collect()
}

#[tokio::test]
async fn a_bad_config_is_reported_whole_and_nothing_is_contacted() {
    let coord = FakeCoordinator::start(Script::default());
    let dir = AgentDir::new();
    let config = dir.config_text(&format!(
        "[agent]\n\
         name = \"eu 1\"\n\
         coordinator_url = \"http://coord.example:{port}\"\n\
         token = \"abc\"\n\
         token_env = \"SOME_VAR\"\n\
         ca_file = \"/nonexistent/ca.pem\"\n\
         spool = \"/proc/version/spool.db\"\n\
         spool_max_reports = -1\n\
         shutdown_grace = \"soon\"\n\
         colour = \"blue\"\n\
         [dns]\n\
         nameservers = [\"dns.example\"]\n",
        port = coord.port()
    ));
    let (code, log) = Agent::start(&config, &[]).exit_code().await;
    assert_eq!(code, 3, "{log}");
    assert!(log.starts_with("10 config errors in "), "{log}");
    for path in [
        "dns.nameservers[0]:",
        "agent.name:",
        "agent.region: required",
        "agent.coordinator_url: \"http://coord.example",
        "agent.token: set only one of token, token_file, token_env",
        "agent.ca_file:",
        "agent.spool: /proc/version is not a directory",
        "agent.spool_max_reports:",
        "agent.shutdown_grace:",
        "agent.colour: unknown key",
    ] {
        assert!(log.contains(&format!("  {path}")), "missing {path:?} in:\n{log}");
    }
    assert!(coord.record().auth.is_empty(), "a bad config contacts nobody");
}

#[tokio::test]
async fn the_agent_registers_watches_and_its_reports_are_acked_until_the_spool_is_empty() {
    let coord = FakeCoordinator::start(Script::default());
    let mut check = failing_check("corp");
    check.revision = 7;
    check.phase_ms = 300;
    coord.assign(check);
    let dir = AgentDir::new();
    dir.config(coord.port(), "");
    let mut agent = dir.start();

    let reg = coord.wait_for("Register", SOON, |r| r.registers.first().cloned()).await;
    assert_eq!((reg.name.as_str(), reg.region.as_str(), reg.version.as_str()), ("test-agent", "eu-west", env!("CARGO_PKG_VERSION")));
    let watch = coord.wait_for("WatchAssignments", SOON, |r| r.watches.first().cloned()).await;
    assert_eq!(watch.agent_id, "agent-1");
    assert!(watch.known.is_empty(), "a new agent knows no checks");
    agent.wait_line("assignment added: check corp revision 7, every 1s, phase 300ms").await;

    let reports = coord.wait_reports(3, SOON).await;
    for r in &reports {
        assert_eq!((r.check_id.as_str(), r.revision), ("corp", 7));
        let report = report(r);
        assert_eq!(report["probe_id"], r.probe_id.as_str());
        assert_eq!(report["outcome"], "failed");
        assert_eq!(report["failure"]["class"], "connect", "{report}");
        let started = epoch_ms(report["started_at"].as_str().unwrap());
        let round_start = r.round as i64 * 1000 + 300;
        assert!((round_start..round_start + 1000).contains(&started), "round {} starts at {round_start}, probe started at {started}", r.round);
    }
    let rounds: Vec<u64> = reports.iter().map(|r| r.round).collect();
    assert!(rounds.windows(2).all(|w| w[0] < w[1]), "one probe per round, in order: {rounds:?}");

    let beats = coord.wait_for("2 heartbeats", SOON, |r| (r.heartbeats.len() >= 2).then(|| r.heartbeats.clone())).await;
    assert!(beats.iter().all(|b| b.agent_id == "agent-1"));
    agent.wait_log("an acked report emptying the spool", |l| l.contains(" acked: stored") && waiting(l) == Some(0)).await;

    agent.stop().await;
    let ran = dir.probe_log();
    let stored = coord.record().probe_ids();
    assert_eq!(ran.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>(), stored, "every probe run was stored once, in order");
    assert!(dir.spooled().is_empty(), "every acknowledged report left the spool");
}

#[tokio::test]
async fn the_agent_spreads_its_reconnects_over_the_fleet_the_coordinator_advertises() {
    // 4,000 agents: a 12 s window (3 ms each) on top of the first backoff
    // step (at most 0.5 s).
    let coord = FakeCoordinator::start(Script { fleet_size: 4_000, ..Script::default() });
    coord.assign(failing_check("herd"));
    let dir = AgentDir::new();
    dir.config(coord.port(), "");
    let mut agent = dir.start();
    let said = agent.wait_line("reconnects after a lost session are spread over").await;
    assert!(said.contains("a fleet of 4000 agents") && said.contains("spread over 12.0 s"), "{said}");
    coord.kill();
    let retry = agent.wait_log("a retry", |l| l.contains("retrying in ")).await;
    let secs: f64 = retry
        .split("retrying in ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no wait in {retry:?}"));
    assert!((0.25..=12.5).contains(&secs), "wait {secs} s outside the first backoff step plus the 12 s window: {retry}");
    agent.stop().await;
}

#[tokio::test]
async fn with_the_coordinator_down_the_agent_keeps_probing_and_replays_the_spool_once_oldest_first() {
    let coord = FakeCoordinator::start(Script::default());
    coord.assign(failing_check("outage"));
    let port = coord.port();
    let dir = AgentDir::new();
    dir.config(port, "");
    let mut agent = dir.start();
    agent.wait_line(" acked: stored").await;

    let before = coord.kill().probe_ids();
    agent.wait_line("disconnected from the coordinator").await;
    agent.wait_log("a retry", |l| l.contains("retrying in ") && l.contains(" s")).await;
    agent.wait_log("3 reports spooled while down", |l| l.contains("spooled") && waiting(l) >= Some(3)).await;

    let coord = FakeCoordinator::start_on(port, Script::default());
    coord.assign(failing_check("outage"));
    agent.wait_line("connected to the coordinator").await;
    let watch = coord.wait_for("WatchAssignments", SOON, |r| r.watches.first().cloned()).await;
    assert_eq!(watch.known.iter().map(|k| (k.check_id.as_str(), k.revision)).collect::<Vec<_>>(), [("outage", 1)], "the agent says what it holds");
    agent.wait_log("the replay acked", |l| l.contains(" acked: stored") && waiting(l) == Some(0)).await;
    agent.stop().await;

    let ran = dir.probe_log();
    let first_stored: HashSet<String> = before.into_iter().collect();
    let after = coord.record().probe_ids();
    let unique: HashSet<&String> = after.iter().collect();
    assert_eq!(unique.len(), after.len(), "no report was sent twice after the reconnect: {after:?}");
    // What the first coordinator had not acknowledged reaches the second, in
    // the order it ran (a report the first stored but whose ack was lost
    // in the kill may come again: the coordinator dedups by probe id).
    let expected = without(&ran, &first_stored);
    let replayed: Vec<String> = after.iter().filter(|p| !first_stored.contains(*p)).cloned().collect();
    assert_eq!(replayed, expected, "every spooled report replayed once, oldest first");
    assert!(expected.len() >= 3);
    assert!(dir.spooled().is_empty());
}

#[tokio::test]
async fn an_agent_restarted_while_the_coordinator_is_down_resumes_its_checks_and_replays_its_spool() {
    let coord = FakeCoordinator::start(Script::default());
    let check = failing_check("restart");
    coord.assign(check.clone());
    let port = coord.port();
    let dir = AgentDir::new();
    dir.config(port, "");
    let mut agent = dir.start();
    agent.wait_line(" acked: stored").await;
    let first_stored: HashSet<String> = coord.kill().probe_ids().into_iter().collect();
    agent.wait_log("2 reports spooled while down", |l| l.contains("spooled") && waiting(l) >= Some(2)).await;
    agent.terminate();
    let (code, log) = agent.exit_code().await;
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("not connected to the coordinator: "), "{log}");
    let left = dir.spooled();
    assert!(left.len() >= 2, "the spool outlives the agent: {left:?}");

    // Restarted with the coordinator still down: it probes from the spool's assignments.
    let mut agent = dir.start();
    agent.wait_line("resuming 1 assignment(s) from the spool").await;
    agent.wait_line("assignment resumed: check restart revision 1").await;
    let more = left.len() as u64 + 1;
    agent.wait_log("a new report spooled while down", |l| l.contains("spooled") && waiting(l) >= Some(more)).await;

    let coord = FakeCoordinator::start_on(port, Script::default());
    coord.assign(check);
    agent.wait_log("the spool emptied", |l| l.contains(" acked: stored") && waiting(l) == Some(0)).await;
    agent.stop().await;

    let after = coord.record().probe_ids();
    assert_eq!(&after[..left.len()], &left[..], "the previous run's spool goes first, oldest first");
    let ran = dir.probe_log();
    let replayed: Vec<String> = after.iter().filter(|p| !first_stored.contains(*p)).cloned().collect();
    assert_eq!(replayed, without(&ran, &first_stored), "every probe of both runs stored once, in order");
    assert!(coord.record().watches[0].known.iter().any(|k| k.check_id == "restart"));
}

#[tokio::test]
async fn a_removed_assignment_stops_probing() {
    let coord = FakeCoordinator::start(Script::default());
    coord.assign(failing_check("stays"));
    coord.assign(failing_check("goes"));
    let dir = AgentDir::new();
    dir.config(coord.port(), "");
    let mut agent = dir.start();
    coord.wait_for("reports of both checks", SOON, |r| (r.reports_of("stays") > 0 && r.reports_of("goes") > 0).then_some(())).await;

    coord.unassign("goes");
    agent.wait_line("assignment removed: check goes (was revision 1)").await;
    let stays = coord.record().reports_of("stays");
    coord.wait_for("3 more rounds of the other check", SOON, |r| (r.reports_of("stays") >= stays + 3).then_some(())).await;
    let log = agent.stop().await;

    let after_removal = &log[log.find("assignment removed: check goes").unwrap()..];
    let goes_runs = after_removal.lines().filter(|l| l.contains("of check goes round")).count();
    let stays_runs = after_removal.lines().filter(|l| l.contains("of check stays round")).count();
    // A probe already in flight when the removal came may still finish.
    assert!(goes_runs <= 1, "probing went on after the removal:\n{after_removal}");
    assert!(stays_runs >= 3);
}

#[tokio::test]
async fn a_check_that_does_not_validate_here_is_logged_with_every_issue_and_skipped() {
    let coord = FakeCoordinator::start(Script::default());
    let mut bad = check_json("bad", closed_port());
    bad["smtp"]["port"] = serde_json::json!(70000);
    bad["imap"]["password_env"] = serde_json::json!("MAILLOOP_TEST_NOT_SET");
    coord.assign(assignment(&bad, 1000));
    coord.assign(failing_check("good"));
    let dir = AgentDir::new();
    dir.config(coord.port(), "");
    let mut agent = dir.start();
    let line = agent.wait_line("assignment bad (revision 1) skipped").await;
    assert!(line.contains("2 config errors"), "{line}");
    assert!(line.contains("assignment bad.smtp.port: 70000 is not a port"), "{line}");
    assert!(line.contains("assignment bad.imap.password_env: environment variable MAILLOOP_TEST_NOT_SET is not set"), "{line}");
    coord.wait_reports(2, SOON).await;
    agent.stop().await;
    assert_eq!(coord.record().reports_of("bad"), 0);
    assert!(coord.record().reports_of("good") >= 2, "the other check runs");
}

#[tokio::test]
async fn a_full_spool_drops_the_oldest_report_with_one_clear_line() {
    let coord = FakeCoordinator::start(Script { acks: Acks::Never, ..Script::default() });
    coord.assign(failing_check("capped"));
    let dir = AgentDir::new();
    dir.config(coord.port(), "spool_max_reports = 2");
    let mut agent = dir.start();
    let line = agent.wait_line("spool full").await;
    coord.kill();
    agent.wait_line("disconnected from the coordinator").await;
    agent.stop().await;

    let ran = dir.probe_log();
    let oldest = &ran[0].0;
    assert!(
        line.contains(&format!("spool full (2 unacknowledged reports): dropped the oldest, probe {oldest} (check capped, round ")),
        "{line}"
    );
    let newest: Vec<String> = ran[ran.len() - 2..].iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(dir.spooled(), newest, "the spool keeps the newest reports");
}

#[tokio::test]
async fn a_rejected_report_is_dropped_and_logged() {
    let coord = FakeCoordinator::start(Script { acks: Acks::Reject("check not assigned to this agent".into()), ..Script::default() });
    coord.assign(failing_check("rejected"));
    let dir = AgentDir::new();
    dir.config(coord.port(), "");
    let mut agent = dir.start();
    let line = agent.wait_line("rejected by the coordinator").await;
    assert!(line.contains("check not assigned to this agent; dropped from the spool"), "{line}");
    agent.stop().await;
    assert!(dir.spooled().is_empty(), "every rejected report left the spool");
    let ran: Vec<String> = dir.probe_log().into_iter().map(|(p, _)| p).collect();
    assert_eq!(coord.record().probe_ids(), ran, "each was sent once, and not again");
}

#[tokio::test]
async fn the_token_goes_as_a_bearer_on_every_call_and_a_wrong_one_is_refused_loudly() {
    let coord = FakeCoordinator::start(Script::default());
    coord.assign(failing_check("auth"));
    let dir = AgentDir::new();
    dir.config(coord.port(), "");
    let mut agent = dir.start();
    coord.wait_for("every call", SOON, |r| {
        let calls: HashSet<&str> = r.auth.iter().map(|(c, _)| *c).collect();
        (calls.len() == 4 && !r.reports.is_empty()).then_some(())
    })
    .await;
    agent.wait_line(" acked: stored").await;
    agent.stop().await;
    for (call, auth) in coord.record().auth {
        assert_eq!(auth.as_deref(), Some(format!("Bearer {TOKEN}").as_str()), "{call}");
    }

    let wrong = FakeCoordinator::start(Script { token: "another-token".into(), ..Script::default() });
    let dir = AgentDir::new();
    dir.config(wrong.port(), "");
    let mut agent = dir.start();
    let line = agent.wait_line("refused this agent").await;
    assert!(line.contains("Register failed: Unauthenticated"), "{line}");
    let log = agent.stop().await;
    assert!(!log.contains(TOKEN), "the token never shows in the log:\n{log}");
}

#[tokio::test]
async fn tls_trusts_ca_file_and_presents_the_client_certificate() {
    let pki = Pki::new();
    let coord = FakeCoordinator::start(Script {
        tls: Some((pki.server_cert.clone(), pki.server_key.clone(), Some(pki.ca_pem.clone()))),
        ..Script::default()
    });
    coord.assign(failing_check("tls"));
    let dir = AgentDir::new();
    for (name, pem) in [("ca.pem", &pki.ca_pem), ("agent.pem", &pki.client_cert), ("agent.key", &pki.client_key)] {
        std::fs::write(dir.file(name), pem).unwrap();
    }
    let tls_config = |extra: &str| {
        format!(
            "[agent]\nregion = \"eu-west\"\ncoordinator_url = \"https://127.0.0.1:{port}\"\ntoken_file = \"{token}\"\nspool = \"{spool}\"\n{extra}\n",
            port = coord.port(),
            token = dir.file("token").display(),
            spool = dir.file("spool.db").display(),
        )
    };

    // Without ca_file the coordinator's certificate is not trusted.
    dir.config_text(&tls_config(""));
    let mut agent = dir.start();
    agent.wait_line("cannot reach the coordinator").await;
    agent.stop().await;
    assert!(coord.record().registers.is_empty());

    dir.config_text(&tls_config(&format!(
        "ca_file = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"",
        dir.file("ca.pem").display(),
        dir.file("agent.pem").display(),
        dir.file("agent.key").display()
    )));
    let mut agent = dir.start();
    agent.wait_line("connected to the coordinator at https://127.0.0.1:").await;
    agent.wait_line(" acked: stored").await;
    agent.stop().await;
}

#[tokio::test]
async fn sigterm_lets_the_probe_in_flight_finish_and_flushes_its_report() {
    // A server that accepts and never speaks: the probe waits for a banner.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let check = assignment(&check_json("slow", silent.local_addr().unwrap().port()), 1000);
    let coord = FakeCoordinator::start(Script::default());
    coord.assign(check);
    let dir = AgentDir::new();
    dir.config(coord.port(), "shutdown_grace = \"5s\"");
    let mut agent = dir.start();
    agent.wait_line("connected to the coordinator").await;
    let (_conn, _) = tokio::time::timeout(WITHIN, silent.accept()).await.expect("the probe connects").unwrap();

    agent.terminate();
    agent.wait_line("shutting down: no new probes; waiting up to 5s for 1 probe(s) in flight").await;
    let reports = coord.wait_reports(1, SOON).await;
    assert_eq!(report(&reports[0])["failure"]["class"], "timeout", "the probe ran to its step timeout");
    let (code, log) = agent.exit_code().await;
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("spool flushed: every report acknowledged") || log.contains("stopped; 0 report(s) left"), "{log}");
    assert!(dir.spooled().is_empty());
}

#[tokio::test]
async fn a_probe_still_running_after_the_grace_period_is_abandoned_and_the_agent_exits() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut slow = check_json("stuck", silent.local_addr().unwrap().port());
    slow["step_timeout"] = serde_json::json!("60s");
    slow["deadline"] = serde_json::json!("2m");
    let coord = FakeCoordinator::start(Script::default());
    coord.assign(assignment(&slow, 1000));
    let dir = AgentDir::new();
    dir.config(coord.port(), "shutdown_grace = \"500ms\"");
    let mut agent = dir.start();
    let (_conn, _) = tokio::time::timeout(WITHIN, silent.accept()).await.expect("the probe connects").unwrap();
    agent.terminate();
    agent.wait_line("1 probe(s) still running after shutdown_grace (500ms): abandoned without a report").await;
    let (code, log) = agent.exit_code().await;
    assert_eq!(code, 0, "{log}");
}

#[tokio::test]
async fn a_second_agent_on_the_same_spool_refuses_to_start() {
    let coord = FakeCoordinator::start(Script::default());
    let dir = AgentDir::new();
    let config = dir.config(coord.port(), "");
    let mut first = dir.start();
    first.wait_line("connected to the coordinator").await;
    let (code, log) = Agent::start(&config, &[]).exit_code().await;
    assert_eq!(code, 3, "{log}");
    assert!(log.contains("is in use by another mailloop-agent"), "{log}");
    first.stop().await;
}

#[tokio::test]
async fn a_missing_spool_directory_is_created_private() {
    let coord = FakeCoordinator::start(Script::default());
    let dir = AgentDir::new();
    let spool = dir.file("var/lib/agent/spool.db");
    dir.config_text(&format!(
        "[agent]\nname = \"test-agent\"\nregion = \"eu-west\"\ncoordinator_url = \"http://127.0.0.1:{}\"\ntoken_file = {:?}\nspool = {:?}\n",
        coord.port(),
        dir.file("token"),
        spool,
    ));
    let mut agent = dir.start();
    agent.wait_line("created the spool directory").await;
    coord.wait_for("Register", SOON, |r| r.registers.first().cloned()).await;
    use std::os::unix::fs::PermissionsExt;
    for created in [dir.file("var"), dir.file("var/lib"), dir.file("var/lib/agent")] {
        let mode = std::fs::metadata(&created).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{} has mode {mode:o}", created.display());
    }
    assert!(spool.exists());
    agent.stop().await;
}

#[tokio::test]
async fn an_environment_override_with_a_typo_names_its_variable() {
    let coord = FakeCoordinator::start(Script::default());
    let dir = AgentDir::new();
    let config = dir.config(coord.port(), "");
    let (code, log) = Agent::start(&config, &[("MAILLOOP_AGENT__REGOIN", "us-east")]).exit_code().await;
    assert_eq!(code, 3, "{log}");
    assert!(log.contains("  agent.regoin: unknown key (from environment variable MAILLOOP_AGENT__REGOIN)"), "{log}");
    assert!(coord.record().auth.is_empty(), "a bad config contacts nobody");
}
