//! Enrollment as an operator does it: `mailloopctl agents add` prints one
//! command, `mailloop-agent enroll` runs it on the "new machine", and the
//! enrolled agent's first report of the new region is stored. Real
//! coordinator (with TLS: the join token pins its CA), real agent, real
//! mail stack. Also: a wrong fingerprint, a used and an expired join token
//! are refused, each with a sentence that says so, and write nothing.

use mailloop_common::join::JoinToken;
use mailloop_coordinator::cluster::schedule;
use mailloop_tests::Check;
use mailloop_tests::Stack;
use mailloop_tests::cluster::{
    ADMIN_TOKEN, Coordinator, Proc, bin, check_toml, spawn_agent_run, wait_until,
};
use mailloop_tests::fake::certs::TestPki;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const DEADLINE: Duration = Duration::from_secs(120);

/// A coordinator serving gRPC and its admin API over TLS: a leaf for
/// 127.0.0.1 signed by the test CA, the file holding leaf then CA (so the
/// CA is what join tokens pin).
struct TlsCoordinator {
    c: Coordinator,
    pki: TestPki,
    dir: tempfile::TempDir,
}

impl TlsCoordinator {
    fn start(checks: &str) -> TlsCoordinator {
        Self::start_with(checks, false)
    }

    /// [`TlsCoordinator::start`], with `client_ca` (the test CA) when
    /// `mutual`: agents must present a certificate it issued.
    fn start_with(checks: &str, mutual: bool) -> TlsCoordinator {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::new();
        let client_ca = if mutual { format!("client_ca = {:?}\n", pki.ca_file()) } else { String::new() };
        let chain = dir.path().join("chain.pem");
        std::fs::write(&chain, format!("{}{}", pki.valid.cert_pem, pki.ca_pem)).unwrap();
        std::fs::write(dir.path().join("admin.token"), ADMIN_TOKEN).unwrap();
        let config = format!(
            "[server]\ngrpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\ndata_dir = {:?}\nadmin_token_file = {:?}\n\
             tls_cert = {chain:?}\ntls_key = {:?}\n{client_ca}test_mode = true\nheartbeat = \"2s\"\nshutdown_grace = \"5s\"\n\n{checks}",
            dir.path().join("data"),
            dir.path().join("admin.token"),
            pki.valid.key_file,
        );
        let c = Coordinator::start_with_config(dir.path(), &config);
        TlsCoordinator { c, pki, dir }
    }

    /// `mailloopctl` over https, trusting the test CA: (exit code, stdout, stderr).
    fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        self.ctl_as(ADMIN_TOKEN, args)
    }

    /// [`TlsCoordinator::ctl`] with another bearer token.
    fn ctl_as(&self, token: &str, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(bin("mailloopctl"))
            .args(["--url", &format!("https://{}", self.c.http)])
            .arg("--ca-file")
            .arg(self.pki.ca_file())
            .args(args)
            .env("MAILLOOP_TOKEN", token)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `agents add NAME --region REGION [extra]`: the join token of the one
    /// command it printed, checked to be exactly one line.
    fn add(&self, name: &str, region: &str, extra: &[&str]) -> String {
        let mut args = vec!["agents", "add", name, "--region", region];
        args.extend_from_slice(extra);
        let (code, out, err) = self.ctl(&args);
        assert_eq!(code, 0, "{out}{err}");
        assert_eq!(
            out.lines().count(),
            1,
            "agents add prints one command: {out:?}"
        );
        let line = out.trim();
        let token = line
            .strip_prefix("mailloop-agent enroll '")
            .and_then(|t| t.strip_suffix('\''))
            .unwrap_or_else(|| panic!("not an enroll command: {line:?}"));
        assert!(
            err.contains(&format!("agent {name} added in region {region}")),
            "{err}"
        );
        token.to_string()
    }
}

/// `mailloop-agent enroll TOKEN --config DIR/agent.toml --spool DIR/spool.db`.
fn enroll(token: &str, dir: &Path) -> (i32, String, String) {
    let out = Command::new(bin("mailloop-agent"))
        .args(["enroll", token, "--config"])
        .arg(dir.join("agent.toml"))
        .arg("--spool")
        .arg(dir.join("spool.db"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Appends the mail stack's resolver to what enroll wrote (the machine's
/// own settings go beside the enrolled ones).
fn add_resolver(config: &Path) {
    let s = Stack::get();
    let written = std::fs::read_to_string(config).unwrap();
    std::fs::write(
        config,
        format!("{written}\n[dns]\nnameservers = [\"{}:53\"]\n", s.var("MAILSTACK_DNS")),
    )
    .unwrap();
}

/// The stored reports of `check` in `region`, newest first.
fn results(coord: &TlsCoordinator, check: &str, region: &str) -> Vec<Value> {
    let (code, out, _) = coord.ctl(&["-o", "json", "results", check, "--region", region]);
    if code != 0 {
        return Vec::new();
    }
    out.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// An RFC 3339 time of the API as ms since the epoch.
fn ms_of(v: &Value) -> i64 {
    v.as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .unwrap_or_else(|| panic!("not a time: {v}"))
        .timestamp_millis()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn an_agent_added_at_run_time_enrolls_in_one_command_and_reports() {
    let s = Stack::get();
    let check = Check::new("enroll-ap");
    let id = check.name.clone();
    let coord = TlsCoordinator::start(&check_toml(&check, "10s", &["ap-south"]));
    let vm = coord.dir.path().join("vm");

    let added = Instant::now();
    let token = coord.add("ap-1", "ap-south", &[]);
    let join = JoinToken::decode(&token).unwrap();
    assert_eq!(join.urls, [format!("https://{}", coord.c.grpc)]);

    // A token whose fingerprint is not the coordinator's CA: refused before
    // the secret is sent, so the genuine token still works afterwards.
    let forged = JoinToken {
        sha256: Some("00".repeat(32)),
        ..join.clone()
    }
    .encode();
    let (code, out, err) = enroll(forged.expose(), &vm);
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        err.contains("no certificate with the join token's fingerprint")
            && err.contains("refusing to send the join token"),
        "{err}"
    );
    assert!(!vm.join("agent.toml").exists() && !vm.join("agent.token").exists());

    let (code, out, err) = enroll(&token, &vm);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("enrolled as agent ap-1 in region ap-south"),
        "{out}"
    );
    let config = vm.join("agent.toml");
    assert_eq!(mode(&config), 0o600);
    assert_eq!(mode(&vm.join("agent.token")), 0o600);
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(
        written.contains("ca_file") && !written.contains("mlt_"),
        "the token lives in its own file:\n{written}"
    );

    // Once used, the join token is refused, saying so (and nothing is written).
    let again = coord.dir.path().join("vm2");
    let (code, out, err) = enroll(&token, &again);
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("already used"), "{err}");
    assert!(!again.join("agent.toml").exists());

    // The machine's own settings (its resolver) go beside what enroll wrote.
    std::fs::write(
        &config,
        format!(
            "{written}\n[dns]\nnameservers = [\"{}:53\"]\n",
            s.var("MAILSTACK_DNS")
        ),
    )
    .unwrap();
    let _agent = Proc::new(spawn_agent_run(&config, &vm.join("agent.log"), "debug"));
    let first = wait_until(
        DEADLINE,
        "the first stored report of region ap-south",
        || {
            let (code, out, _) = coord.ctl(&["-o", "json", "results", &id, "--region", "ap-south"]);
            (code == 0).then_some(())?;
            out.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .next()
        },
    );
    let elapsed = added.elapsed();
    assert_eq!(first["region"], "ap-south", "{first}");
    assert_eq!(first["agent"], "ap-1", "{first}");
    // The goal is counted from the start of the first round the new agent
    // could take: the round in progress when `agents add` answered ends
    // before it is connected, so the next one is that round's successor.
    let added_ms = now_ms() - elapsed.as_millis() as i64;
    let interval = 10_000u64;
    let phase = schedule::phase_ms(&id, interval);
    let next_round = schedule::round_at(added_ms as u64, interval, phase) + 1;
    let next_start = schedule::round_start_ms(next_round, interval, phase) as i64;
    let received = ms_of(&first["received_at"]);
    assert!(
        first["round"].as_u64().is_some_and(|r| r >= next_round),
        "the first report is of a round after the agent was added: {first}"
    );
    println!(
        "enrollment: `agents add` to the first stored report of the new region: {elapsed:.1?} (10 s check interval); \
         {:.1} s beyond the start of the next round ({next_round}; the report is of round {}); goal: under 5 s",
        (received - next_start) as f64 / 1000.0,
        first["round"],
    );

    // An enrolled agent is revoked like any other, at once: its stream ends
    // and it stops probing.
    let (code, out, err) = coord.ctl(&["agents", "revoke", "ap-1"]);
    assert_eq!(code, 0, "{out}{err}");
    wait_until(DEADLINE, "the revoked agent to say its token was refused", || {
        std::fs::read_to_string(vm.join("agent.log")).ok()?.contains("token revoked or unknown").then_some(())
    });
}

#[test]
fn an_expired_join_token_is_refused() {
    let coord = TlsCoordinator::start("");
    let (code, out, err) = coord.ctl(&[
        "-o", "json", "agents", "add", "late-1", "--region", "ap-south", "--ttl", "1s",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let body: Value = serde_json::from_str(&out).unwrap();
    let token = body["join_token"].as_str().unwrap().to_string();
    let expires_at = body["join_expires_at_ms"].as_i64().unwrap();
    assert!(
        body.get("token").is_none(),
        "no agent token before enrollment: {body}"
    );
    // Waits for the clock, not for a process: the token's own expiry.
    wait_until(Duration::from_secs(30), "the join token's expiry", || {
        (now_ms() > expires_at + 50).then_some(())
    });
    let vm = coord.dir.path().join("late");
    let (code, out, err) = enroll(&token, &vm);
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        err.contains("expired at") && err.contains("mailloopctl agents revoke late-1"),
        "{err}"
    );
    assert!(!vm.join("agent.toml").exists());
    // Not a secret in the refusal, not the secret in the coordinator's log.
    let join = JoinToken::decode(&token).unwrap();
    let log = std::fs::read_to_string(coord.c.log_path()).unwrap();
    assert!(!log.contains(join.secret.expose()) && !err.contains(join.secret.expose()));
}

/// SIGHUP (the unit's ExecReload) reloads what join tokens carry:
/// `public_urls` and `join_token_ttl` apply to the next `agents add`
/// without a restart; the fingerprint stays the served certificate's.
#[test]
fn sighup_reloads_public_urls_and_join_token_ttl() {
    let coord = TlsCoordinator::start("");
    let add = |name: &str| -> (JoinToken, i64) {
        let (code, out, err) = coord.ctl(&["-o", "json", "agents", "add", name, "--region", "ap-south"]);
        assert_eq!(code, 0, "{out}{err}");
        let body: Value = serde_json::from_str(&out).unwrap();
        let join = JoinToken::decode(body["join_token"].as_str().unwrap()).unwrap();
        (join, body["join_expires_at_ms"].as_i64().unwrap())
    };
    let before = now_ms();
    let (join, expires) = add("hup-1");
    assert_eq!(join.urls, [format!("https://{}", coord.c.grpc)]);
    assert!(expires <= now_ms() + 3_600_000, "default lifetime 1 h");
    let pinned = join.sha256.clone();
    assert!(pinned.is_some());

    let path = coord.dir.path().join("coordinator.toml");
    let config = std::fs::read_to_string(&path).unwrap().replace(
        "[server]\n",
        "[server]\npublic_urls = [\"https://coord.example:7443\", \"https://10.0.0.7:7443\"]\njoin_token_ttl = \"3h\"\n",
    );
    std::fs::write(&path, config).unwrap();
    coord.c.proc.as_ref().unwrap().signal("HUP");
    wait_until(DEADLINE, "the reload of public_urls and join_token_ttl", || {
        std::fs::read_to_string(coord.c.log_path())
            .ok()?
            .contains("join tokens: URLs and lifetime reloaded")
            .then_some(())
    });
    let (join, expires) = add("hup-2");
    assert_eq!(join.urls, ["https://coord.example:7443", "https://10.0.0.7:7443"]);
    assert!(expires > before + 2 * 3_600_000, "join_token_ttl 3h applies: {expires}");
    assert_eq!(join.sha256, pinned, "the fingerprint is still the served certificate's");
}

/// A coordinator with `client_ca` (mutual TLS): enroll without a client
/// certificate stops at the first handshake with a sentence saying what to
/// pass, writes nothing and leaves the join token unused; with
/// `--client-cert`/`--client-key` it enrolls, writes them into the agent
/// config, and the agent reports over mutual TLS.
#[test]
fn enroll_with_a_client_certificate_when_the_coordinator_requires_one() {
    let check = Check::new("enroll-mtls");
    let id = check.name.clone();
    let coord = TlsCoordinator::start_with(&check_toml(&check, "10s", &["mtls-south"]), true);
    let vm = coord.dir.path().join("vm");
    let token = coord.add("mtls-1", "mtls-south", &[]);

    let (code, out, err) = enroll(&token, &vm);
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        err.contains("requires a client certificate") && err.contains("--client-cert FILE --client-key FILE"),
        "{err}"
    );
    assert!(!vm.join("agent.toml").exists() && !vm.join("agent.token").exists());

    let out = Command::new(bin("mailloop-agent"))
        .args(["enroll", &token, "--config"])
        .arg(vm.join("agent.toml"))
        .arg("--spool")
        .arg(vm.join("spool.db"))
        .arg("--client-cert")
        .arg(&coord.pki.client.cert_file)
        .arg("--client-key")
        .arg(&coord.pki.client.key_file)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the join token was unused, so it works now: {stdout}{stderr}");
    let config = vm.join("agent.toml");
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(written.contains("client_cert = ") && written.contains("client_key = "), "{written}");
    add_resolver(&config);
    let _agent = Proc::new(spawn_agent_run(&config, &vm.join("agent.log"), "debug"));
    let first = wait_until(DEADLINE, "a report of mtls-1 over mutual TLS", || {
        results(&coord, &id, "mtls-south").first().cloned()
    });
    assert_eq!(first["agent"], "mtls-1", "{first}");
}

/// `agents rotate`: the running agent gets the new token over its stream
/// and keeps it in its spool; the old token works through the grace period
/// (the admin API tells an agent's token, 403, from an unknown one, 401),
/// then stops; the agent keeps reporting, across a restart too (the
/// configured token file is dead by then: only the spooled one works).
#[test]
fn a_rotated_token_reaches_the_running_agent_and_the_old_one_stops_after_its_grace() {
    let check = Check::new("enroll-rot");
    let id = check.name.clone();
    let coord = TlsCoordinator::start(&check_toml(&check, "10s", &["rot-south"]));
    let vm = coord.dir.path().join("vm");
    let token = coord.add("rot-1", "rot-south", &[]);
    let (code, out, err) = enroll(&token, &vm);
    assert_eq!(code, 0, "{out}{err}");
    let config = vm.join("agent.toml");
    add_resolver(&config);
    let old = std::fs::read_to_string(vm.join("agent.token")).unwrap().trim().to_string();
    let log = vm.join("agent.log");
    let mut agent = Proc::new(spawn_agent_run(&config, &log, "debug"));
    wait_until(DEADLINE, "a first report of rot-1", || {
        results(&coord, &id, "rot-south").first().cloned()
    });

    // Known agent token: 403 on the admin API (an unknown one is 401).
    let (code, _, err) = coord.ctl_as(&old, &["agents", "list"]);
    assert!(code == 5 && err.contains("(403)"), "{code} {err}");

    let (code, out, err) = coord.ctl(&["agents", "rotate", "rot-1", "--grace", "6s"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("rot-1: token rotated") && out.contains("gets the new one now"),
        "{out}"
    );
    assert!(!out.contains("mlt_") && !err.contains("mlt_"), "no token in the answer: {out}{err}");
    let rotated_at = now_ms();

    // The agent reconnects with the new token (saying so) and saves it.
    wait_until(DEADLINE, "the agent to pick up the rotated token", || {
        std::fs::read_to_string(&log)
            .ok()?
            .contains("reconnecting with the new one")
            .then_some(())
    });
    let spooled: String = rusqlite::Connection::open(vm.join("spool.db"))
        .unwrap()
        .query_row("SELECT token FROM credential", [], |r| r.get(0))
        .unwrap();
    assert!(spooled.starts_with("mlt_") && spooled != old);
    let (code, _, err) = coord.ctl_as(&spooled, &["agents", "list"]);
    assert!(code == 5 && err.contains("(403)"), "the new token is the agent's: {code} {err}");

    // In the grace period the old token still works; after it, it is
    // unknown. Waits on the coordinator's answer, not on a clock.
    let (code, _, err) = coord.ctl_as(&old, &["agents", "list"]);
    assert!(
        (code == 5 && err.contains("(403)")) || now_ms() > rotated_at + 6_000,
        "the old token works in its grace period: {code} {err}"
    );
    wait_until(DEADLINE, "the old token to stop working", || {
        let (code, _, err) = coord.ctl_as(&old, &["agents", "list"]);
        (code == 5 && err.contains("(401)")).then_some(())
    });
    let dead_at = now_ms();

    // Still reporting, also after a restart with the (now dead) token file.
    agent.kill();
    let mut agent = Proc::new(spawn_agent_run(&config, &log, "debug"));
    let after = wait_until(DEADLINE, "a report stored after the old token died and the agent restarted", || {
        results(&coord, &id, "rot-south")
            .into_iter()
            .find(|r| {
                r["received_at"]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .is_some_and(|t| t.timestamp_millis() > dead_at)
            })
    });
    assert_eq!(after["agent"], "rot-1", "{after}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("using the token the coordinator rotated this agent to"), "{text}");
    assert!(!text.contains(&spooled) && !text.contains(&old), "no token in the agent's log");
    let clog = std::fs::read_to_string(coord.c.log_path()).unwrap();
    assert!(!clog.contains(&spooled) && !clog.contains(&old), "no token in the coordinator's log");
    agent.kill();
}

/// A rotation survives the coordinator: only token hashes are stored, so
/// the new token made at rotation dies with the process that made it; the
/// restarted coordinator makes another when the agent calls with its
/// previous one in the grace period, and delivers that. Whether the agent
/// already uses its newest token is stored too: a second rotation after
/// another restart replaces that one, not the token the agent dropped.
#[test]
fn a_rotation_survives_coordinator_restarts() {
    let check = Check::new("enroll-rot-restart");
    let id = check.name.clone();
    let mut coord = TlsCoordinator::start(&check_toml(&check, "10s", &["rr-south"]));
    let vm = coord.dir.path().join("vm");
    let token = coord.add("rr-1", "rr-south", &[]);
    let (code, out, err) = enroll(&token, &vm);
    assert_eq!(code, 0, "{out}{err}");
    let config = vm.join("agent.toml");
    add_resolver(&config);
    let first = std::fs::read_to_string(vm.join("agent.token")).unwrap().trim().to_string();
    let log = vm.join("agent.log");
    let mut agent = Proc::new(spawn_agent_run(&config, &log, "debug"));
    wait_until(DEADLINE, "a first report of rr-1", || {
        results(&coord, &id, "rr-south").first().cloned()
    });
    let db = coord.dir.path().join("data").join(mailloop_coordinator::storage::DB_FILE);
    let in_use = |token: &str| -> bool {
        let hash = mailloop_coordinator::config::names::token_sha256(token);
        rusqlite::Connection::open(&db)
            .unwrap()
            .query_row(
                "SELECT token_in_use FROM agents WHERE name = 'rr-1' AND token_sha256 = ?1",
                [hash],
                |r| r.get::<_, bool>(0),
            )
            .unwrap_or(false)
    };
    wait_until(DEADLINE, "the enrolled token to be stored as in use", || in_use(&first).then_some(()));

    // Rotated while the agent is stopped; the coordinator restarts before
    // the agent calls again: the token made at rotation is gone with it.
    agent.kill();
    let (code, out, err) = coord.ctl(&["agents", "rotate", "rr-1", "--grace", "30s"]);
    assert_eq!(code, 0, "{out}{err}");
    coord.c.stop();
    coord.c.restart_as_written();
    let mut agent = Proc::new(spawn_agent_run(&config, &log, "debug"));
    let picked = |n: usize| {
        let log = log.clone();
        move || {
            let text = std::fs::read_to_string(&log).ok()?;
            (text.matches("reconnecting with the new one").count() >= n).then_some(())
        }
    };
    wait_until(DEADLINE, "the agent to pick up a token made after the restart", picked(1));
    let clog = std::fs::read_to_string(coord.c.log_path()).unwrap();
    assert!(clog.contains("rotated token made again here"), "{clog}");
    let spooled = || -> String {
        rusqlite::Connection::open(vm.join("spool.db"))
            .unwrap()
            .query_row("SELECT token FROM credential", [], |r| r.get(0))
            .unwrap()
    };
    let second = spooled();
    assert!(second.starts_with("mlt_") && second != first);
    let (code, _, err) = coord.ctl_as(&second, &["agents", "list"]);
    assert!(code == 5 && err.contains("(403)"), "the remade token is the agent's: {code} {err}");
    wait_until(DEADLINE, "the remade token to be stored as in use", || in_use(&second).then_some(()));

    // Restarted again, then rotated again inside the first grace period:
    // the agent holds the second token, so that one stays valid for the
    // grace and the new one reaches it (a coordinator that forgot which
    // token the agent uses would keep the first and lock it out).
    coord.c.stop();
    coord.c.restart_as_written();
    let (code, out, err) = coord.ctl(&["agents", "rotate", "rr-1", "--grace", "30s"]);
    assert_eq!(code, 0, "{out}{err}");
    wait_until(DEADLINE, "the agent to pick up the second rotation", picked(2));
    let third = spooled();
    assert!(third != second && third != first);

    // The replaced tokens stop: the first one's grace ended, the second's ends.
    wait_until(DEADLINE, "the first and second tokens to stop working", || {
        let dead = |t: &str| {
            let (code, _, err) = coord.ctl_as(t, &["agents", "list"]);
            code == 5 && err.contains("(401)")
        };
        (dead(&first) && dead(&second)).then_some(())
    });
    let dead_at = now_ms();
    let after = wait_until(DEADLINE, "a report stored after the replaced tokens died", || {
        results(&coord, &id, "rr-south")
            .into_iter()
            .find(|r| ms_of(&r["received_at"]) > dead_at)
    });
    assert_eq!(after["agent"], "rr-1", "{after}");
    let clog = std::fs::read_to_string(coord.c.log_path()).unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    for t in [&first, &second, &third] {
        assert!(!clog.contains(t.as_str()) && !text.contains(t.as_str()), "no token in the logs");
    }
    agent.kill();
}

/// `enroll --secret` keeps mailbox credentials on the machine (a 0600 env
/// file the unit loads), never sends or prints them; `--start` is checked
/// before the join token is used (the unit reads /etc/mailloop/agent.toml),
/// and so is every bad `--secret`, all named at once.
#[test]
fn enroll_keeps_secrets_local_and_checks_start_before_using_the_token() {
    let coord = TlsCoordinator::start("");
    let vm = coord.dir.path().join("vm");
    let token = coord.add("sec-1", "sec-north", &[]);
    let pass = coord.dir.path().join("imap.pass");
    std::fs::write(&pass, "imap-password-never-sent-4711\n").unwrap();
    let run = |extra: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(bin("mailloop-agent"))
            .args(["enroll", &token, "--config"])
            .arg(vm.join("agent.toml"))
            .args(extra)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, out, err) = run(&["--start"], &[]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("reads /etc/mailloop/agent.toml") && err.contains("the join token is unused"), "{err}");
    let (code, out, err) = run(&["--secret", "IMAP_PASS=hunter2", "--secret", "SMTP_PASS=env:NOT_SET_ANYWHERE"], &[]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        err.contains("--secret IMAP_PASS: give @FILE or env:VAR")
            && err.contains("--secret SMTP_PASS: environment variable NOT_SET_ANYWHERE is not set")
            && !err.contains("hunter2"),
        "{err}"
    );
    assert!(!vm.join("agent.toml").exists());

    let secret_arg = format!("IMAP_PASS=@{}", pass.display());
    let (code, out, err) = run(
        &["--secret", &secret_arg, "--secret", "SMTP_PASS=env:MY_SMTP"],
        &[("MY_SMTP", "smtp-password-never-sent-0815")],
    );
    assert_eq!(code, 0, "{out}{err}");
    let env_file = vm.join("agent.env");
    assert_eq!(mode(&env_file), 0o600);
    let written = std::fs::read_to_string(&env_file).unwrap();
    assert!(
        written.contains("IMAP_PASS='imap-password-never-sent-4711'\n")
            && written.contains("SMTP_PASS='smtp-password-never-sent-0815'\n"),
        "{written}"
    );
    assert!(out.contains("IMAP_PASS, SMTP_PASS") && !out.contains("never-sent"), "{out}");
    let log = std::fs::read_to_string(coord.c.log_path()).unwrap();
    assert!(log.contains("agent enrolled"), "{log}");
    assert!(!log.contains("never-sent"), "a mailbox secret reached the coordinator");
}
