//! The operator's usual mistakes against a real coordinator and real
//! agents: each one answered by a message that names what to fix.

use mailloop_tests::Check;
use mailloop_tests::cluster::{AGENTS, Cluster, Coordinator, Proc, bin, check_toml, wait_until};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(30);

/// A coordinator with the two test agents declared and no checks.
fn coordinator(dir: &Path) -> Coordinator {
    std::fs::write(dir.join("admin.token"), mailloop_tests::cluster::ADMIN_TOKEN).unwrap();
    let mut agents = String::new();
    for (name, region) in AGENTS {
        let token = dir.join(format!("{name}.token"));
        std::fs::write(&token, format!("token-{name}-for-operator-tests")).unwrap();
        agents.push_str(&format!("[[agent]]\nname = {name:?}\nregion = {region:?}\ntoken_file = {token:?}\n"));
    }
    let config = format!(
        "[server]\ngrpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\ndata_dir = {:?}\nadmin_token_file = {:?}\ntest_mode = true\n{agents}",
        dir.join("data"),
        dir.join("admin.token"),
    );
    Coordinator::start_with_config(dir, &config)
}

/// `mailloop-agent run` as agent eu-1 against `url`, logging to `log`.
fn agent(dir: &Path, file: &str, url: &str) -> (Proc, PathBuf) {
    let config = dir.join(format!("{file}.toml"));
    std::fs::write(
        &config,
        format!(
            "[agent]\nname = \"eu-1\"\nregion = \"eu-west\"\ncoordinator_url = {url:?}\ntoken_file = {:?}\nspool = {:?}\n",
            dir.join("eu-1.token"),
            dir.join(format!("{file}/spool.db")),
        ),
    )
    .unwrap();
    let log = dir.join(format!("{file}.log"));
    let child = Command::new(bin("mailloop-agent"))
        .args(["run", "--config"])
        .arg(&config)
        .env("MAILLOOP_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    (Proc::new(child), log)
}

/// The first line of `log` containing `text`, waited for.
fn wait_line(log: &Path, text: &str) -> String {
    wait_until(WITHIN, &format!("{text:?} in {}", log.display()), || {
        std::fs::read_to_string(log).unwrap_or_default().lines().find(|l| l.contains(text)).map(str::to_string)
    })
}

#[test]
fn an_agent_pointed_at_the_http_api_port_is_told_to_use_the_grpc_port() {
    let dir = tempfile::tempdir().unwrap();
    let c = coordinator(dir.path());
    let (_agent, log) = agent(dir.path(), "wrong-port", &format!("http://{}", c.http));
    let line = wait_line(&log, "cannot reach the coordinator");
    assert!(
        line.contains("this is mailloop's HTTP API port (http_listen); agents connect to the gRPC port (grpc_listen)"),
        "{line}"
    );
    assert!(!line.contains("compression flag"), "{line}");
}

#[test]
fn https_to_a_plaintext_port_and_a_refused_port_say_so_once() {
    let dir = tempfile::tempdir().unwrap();
    let c = coordinator(dir.path());
    let (_tls, log) = agent(dir.path(), "https-plain", &format!("https://{}", c.grpc));
    let line = wait_line(&log, "cannot reach the coordinator");
    assert!(line.contains("does not speak TLS") && line.contains("use http://"), "{line}");
    assert!(!line.contains("InvalidContentType"), "{line}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (_refused, log) = agent(dir.path(), "refused", &format!("http://{closed}"));
    let line = wait_line(&log, "cannot reach the coordinator");
    assert_eq!(line.to_ascii_lowercase().matches("refused").count(), 1, "said more than once: {line}");
    assert!(line.contains("grpc_listen"), "{line}");
}

#[test]
fn a_second_process_with_the_same_identity_is_warned_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let c = coordinator(dir.path());
    let url = format!("http://{}", c.grpc);
    let (_first, first_log) = agent(dir.path(), "first", &url);
    wait_line(&first_log, "connected to the coordinator");
    let (_second, second_log) = agent(dir.path(), "second", &url);
    let told = wait_line(&second_log, "the coordinator warns");
    assert!(told.contains("another process with this agent's identity (eu-1) is already connected from 127.0.0.1:"), "{told}");
    let logged = wait_line(&c.log_path(), "a second process uses the identity (token) of agent eu-1");
    assert!(logged.contains("connected_peer=127.0.0.1:") && logged.contains("new_peer=127.0.0.1:"), "{logged}");
    // The first agent, reconnecting as itself, is not the one warned.
    assert!(!std::fs::read_to_string(&first_log).unwrap().contains("the coordinator warns"));
}

#[test]
fn dns_in_coordinator_toml_points_to_agent_toml() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), mailloop_tests::cluster::ADMIN_TOKEN).unwrap();
    let config = dir.path().join("coordinator.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ngrpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\ndata_dir = {:?}\nadmin_token_file = {:?}\n[dns]\nnameservers = [\"127.0.0.53\"]\n",
            dir.path().join("data"),
            dir.path().join("admin.token"),
        ),
    )
    .unwrap();
    let out = Command::new(bin("mailloop-coordinator")).args(["serve", "--config"]).arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("dns: unknown key: [dns] is an agent setting") && err.contains("put it in agent.toml"), "{err}");
    assert!(out.stdout.is_empty(), "it started listening: {}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn a_check_without_trusted_authserv_id_warns_once_not_every_round() {
    let check = Check::new("op-warn-once");
    let c = Cluster::start_with_agents(&check_toml(&check, "1s", &["eu-west"]), &[("eu-1", "eu-west")]);
    // Three delivered rounds, each carrying the warning in its report.
    let reports = wait_until(Duration::from_secs(90), "3 delivered reports of op-warn-once", || {
        let r = c.coordinator.results("op-warn-once");
        let warned: Vec<_> = r.iter().filter(|r| !r["report"]["auth"]["warning"].is_null()).cloned().collect();
        (warned.len() >= 3).then_some(warned)
    });
    assert!(reports[0]["report"]["auth"]["warning"].as_str().unwrap().contains("no trusted authserv-id"), "{}", reports[0]);
    let log = c.agents[0].log();
    let said = log.lines().filter(|l| l.contains("no trusted authserv-id configured")).count();
    assert_eq!(said, 1, "the warning should be logged once per check; the log:\n{log}");
}

#[test]
fn the_coordinator_refuses_an_override_for_no_check_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), mailloop_tests::cluster::ADMIN_TOKEN).unwrap();
    let config = dir.path().join("coordinator.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ngrpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\ndata_dir = {:?}\nadmin_token_file = {:?}\n",
            dir.path().join("data"),
            dir.path().join("admin.token"),
        ),
    )
    .unwrap();
    let out = Command::new(bin("mailloop-coordinator"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("MAILLOOP_CHECK__corp__SMTP__PORT", "2525")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("MAILLOOP_CHECK__corp__SMTP__PORT: environment override for check \"corp\", but no check has that name"), "{err}");
    assert!(out.stdout.is_empty(), "it started listening: {}", String::from_utf8_lossy(&out.stdout));
}
