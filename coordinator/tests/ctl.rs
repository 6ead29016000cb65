//! `mailloopctl` against a running coordinator.

mod support;
use std::process::Command;
use support::*;

struct Ctl<'a>(&'a Coordinator);

impl Ctl<'_> {
    /// Runs `mailloopctl ARGS` with the admin token; (exit code, stdout, stderr).
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_mailloopctl"))
            .args(args)
            .env("MAILLOOP_URL", format!("http://{}", self.0.http))
            .env("MAILLOOP_TOKEN", ADMIN_TOKEN)
            .output()
            .unwrap();
        (out.status.code().unwrap(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    fn ok(&self, args: &[&str]) -> String {
        let (code, stdout, stderr) = self.run(args);
        assert_eq!(code, 0, "mailloopctl {args:?}: {stderr}");
        stdout
    }
}

#[tokio::test]
async fn apply_list_show_delete_checks() {
    let c = Coordinator::start("", "");
    let ctl = Ctl(&c);
    let file = c.dir.path().join("checks.toml");
    std::fs::write(&file, format!("{}{}", check_toml("shop", &["eu-west"], "1m"), check_toml("corp", &["eu-west", "us-east"], "5m"))).unwrap();
    let applied = ctl.ok(&["checks", "apply", "-f", file.to_str().unwrap()]);
    assert!(applied.contains("shop: created") && applied.contains("corp: created"), "{applied}");
    assert!(ctl.ok(&["checks", "apply", "-f", file.to_str().unwrap()]).contains("shop: unchanged"));

    let list = ctl.ok(&["checks", "list"]);
    assert!(list.starts_with("CHECK"), "{list}");
    assert!(list.lines().any(|l| l.starts_with("corp") && l.contains("eu-west=- us-east=-")), "{list}");

    // `show` prints TOML that `apply` takes back unchanged.
    let shown = ctl.ok(&["checks", "show", "corp"]);
    assert!(shown.contains("[[check]]") && shown.contains("interval = \"5m\""), "{shown}");
    let again = c.dir.path().join("again.toml");
    std::fs::write(&again, &shown).unwrap();
    assert!(ctl.ok(&["checks", "apply", "-f", again.to_str().unwrap()]).contains("corp: unchanged"));

    // Bad checks are refused with their place in the file; exit 4.
    std::fs::write(&file, check_toml("bad", &["eu-west"], "1m").replace("port = 2525", "port = 99999")).unwrap();
    let (code, _, stderr) = ctl.run(&["checks", "apply", "-f", file.to_str().unwrap()]);
    assert_eq!(code, 4);
    assert!(stderr.contains("check[0].smtp.port"), "{stderr}");

    assert!(ctl.ok(&["checks", "delete", "shop"]).contains("shop: deleted"));
    assert!(!ctl.ok(&["checks", "list"]).contains("shop"));
}

#[tokio::test]
async fn add_list_and_revoke_agents() {
    let c = Coordinator::start("", "");
    let ctl = Ctl(&c);
    let added = ctl.ok(&["agents", "add", "ap-1", "--region", "ap-south", "--show-token"]);
    let token = added.lines().last().unwrap().trim().to_string();
    assert!(token.starts_with("mlt_"), "{added}");
    let mut agent = c.agent_with(Some(&token)).await;
    let reg = mailloop_proto::pb::RegisterRequest { name: "ap-1".into(), region: "ap-south".into(), version: "9.9".into(), ..Default::default() };
    agent.register(reg.clone()).await.unwrap();
    let list = ctl.ok(&["agents", "list"]);
    assert!(list.lines().any(|l| l.starts_with("ap-1") && l.contains("ap-south") && l.contains("9.9")), "{list}");
    assert!(ctl.ok(&["agents", "revoke", "ap-1"]).contains("revoked"));
    assert_eq!(agent.register(reg).await.unwrap_err().code(), tonic::Code::Unauthenticated);
    let (code, _, stderr) = ctl.run(&["agents", "revoke", "eu-1"]);
    assert_eq!(code, 4, "config-declared agents are owned by the file");
    assert!(stderr.contains("config file"), "{stderr}");
    // Without --show-token: one line, the command for the agent's machine.
    let added = ctl.ok(&["agents", "add", "ap-2", "--region", "ap-south"]);
    assert_eq!(added.lines().count(), 1, "{added}");
    assert!(added.starts_with("mailloop-agent enroll 'mlj1.") && added.trim_end().ends_with('\''), "{added}");
    assert!(!added.contains("mlt_"), "no agent token before enrollment: {added}");
}

#[tokio::test]
async fn results_as_table_and_json() {
    let c = Coordinator::start("", &check_toml("corp", &["eu-west"], "1m"));
    let mut eu1 = c.agent("eu-1").await;
    let mut reports = Reports::open(&mut eu1).await;
    // The round running now: a round far from the clock is never `latest` (round sanity).
    let now_ms = chrono::Utc::now().timestamp_millis() as u64;
    let k = mailloop_coordinator::cluster::schedule::round_at(now_ms, 60_000, mailloop_coordinator::cluster::schedule::phase_ms("corp", 60_000));
    let mut r = result("ml-1", "corp", k);
    r.report_json = report_json("ml-1", "corp").replace("2026-11-27T23:17:08.596634Z", &chrono::Utc::now().to_rfc3339());
    assert!(reports.send(r).await.stored);
    let ctl = Ctl(&c);
    let table = ctl.ok(&["results", "corp", "--since", "1h"]);
    assert!(table.lines().any(|l| l.contains("eu-west") && l.contains("eu-1") && l.contains("ok") && l.contains("35.2 ms")), "{table}");
    let json = ctl.ok(&["results", "corp", "--region", "eu-west", "--output", "json"]);
    let first: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(first["probe_id"], "ml-1");
    let latest = ctl.ok(&["latest", "corp"]);
    assert!(latest.contains(&format!("round {k}")) && latest.contains("smtp.banner"), "{latest}");
    // Unreachable coordinator: exit 6.
    let out = Command::new(env!("CARGO_BIN_EXE_mailloopctl")).args(["--url", "http://127.0.0.1:1", "checks", "list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(6));
}

// ---------------------------------------------------------------------------
// Why, on every screen: reasons, failures, replies.
// ---------------------------------------------------------------------------

/// A stored report of `check` in round `round` whose JSON is `report_json(..)` changed by `edit`.
fn report(probe_id: &str, check: &str, round: u64, edit: impl FnOnce(&mut serde_json::Value)) -> mailloop_proto::pb::ProbeResult {
    let mut v: serde_json::Value = serde_json::from_str(&report_json(probe_id, check)).unwrap();
    v["started_at"] = chrono::Utc::now().to_rfc3339().into();
    edit(&mut v);
    mailloop_proto::pb::ProbeResult { report_json: v.to_string(), ..result(probe_id, check, round) }
}

#[tokio::test]
async fn latest_and_results_tables_say_why_a_report_is_degraded_or_failed() {
    let c = Coordinator::start("", &check_toml("corp", &["eu-west", "us-east"], "1m"));
    // The round running now: one far from the coordinator's clock is kept out of `latest`.
    let now_ms = chrono::Utc::now().timestamp_millis() as u64;
    let k = mailloop_coordinator::cluster::schedule::round_at(now_ms, 60_000, mailloop_coordinator::cluster::schedule::phase_ms("corp", 60_000));
    let degraded = report("ml-deg", "corp", k, |v| {
        v["outcome"] = "degraded".into();
        v["reasons"] = serde_json::json!(["SPF absent, expected pass", "DMARC pass, expected fail"]);
        v["auth"] = serde_json::json!({"spf": null, "dkim": "pass", "dmarc": "pass", "dkim_domain": "sender.test", "spf_domain": null, "from_domain": "sender.test",
            "alignment": {"dkim": "strict", "spf": "none"}, "authserv_id": "mx.receiver.test", "own_dkim": null, "raw": [], "ignored": 0,
            "warning": "no trusted_authserv_id: any host could have written these verdicts"});
    });
    let failed = report("ml-fail", "corp", k, |v| {
        v["outcome"] = "failed".into();
        v["rtt_ms"] = serde_json::Value::Null;
        v["delivery_ms"] = serde_json::Value::Null;
        v["steps"][1]["ok"] = false.into();
        v["steps"][1]["code"] = 550.into();
        v["failure"] = serde_json::json!({"step": "smtp.rcpt_to", "class": "permanent", "code": 550, "enhanced": "5.1.1",
            "message": "<probe@receiver.test>: Recipient address rejected:\r\n User unknown in virtual mailbox table", "raw": "550-5.1.1 first line"});
        v["warnings"] = serde_json::json!(["the login went in clear text (allow_plaintext_auth)"]);
    });
    let mut eu1 = c.agent("eu-1").await;
    assert!(Reports::open(&mut eu1).await.send(degraded).await.stored);
    let mut us1 = c.agent("us-1").await;
    assert!(Reports::open(&mut us1).await.send(failed).await.stored);
    let ctl = Ctl(&c);

    let latest = ctl.ok(&["latest", "corp"]);
    eprintln!("{latest}");
    for line in [
        "eu-west: DEGRADED by eu-1",
        "  degraded: SPF absent, expected pass",
        "  degraded: DMARC pass, expected fail",
        "  auth warning: no trusted_authserv_id: any host could have written these verdicts",
        "us-east: FAILED by us-1",
        "  failed at smtp.rcpt_to (permanent 550 5.1.1): <probe@receiver.test>: Recipient address rejected: / User unknown in virtual mailbox table",
        "    raw: 550-5.1.1 first line",
        "  warning: the login went in clear text (allow_plaintext_auth)",
    ] {
        assert!(latest.lines().any(|l| l.trim_end() == line.trim_end() || l.starts_with(line)), "missing {line:?} in:\n{latest}");
    }

    // The same reasons in `results`, one line per report; nothing the JSON says is lost.
    let results = ctl.ok(&["results", "corp"]);
    assert!(results.lines().next().unwrap().ends_with("WHY"), "{results}");
    let row = |region: &str| results.lines().find(|l| l.contains(region)).unwrap_or_else(|| panic!("{region} in {results}")).to_string();
    assert!(row("eu-west").ends_with("SPF absent, expected pass; DMARC pass, expected fail"), "{results}");
    assert!(row("us-east").contains("failed at smtp.rcpt_to (permanent 550 5.1.1): <probe@receiver.test>: Recipient address rejected"), "{results}");
    let json = ctl.ok(&["-o", "json", "results", "corp"]);
    for r in json.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()) {
        for reason in r["report"]["reasons"].as_array().into_iter().flatten() {
            assert!(results.contains(reason.as_str().unwrap()), "{reason} from the JSON is in the table:\n{results}");
        }
    }
}

// ---------------------------------------------------------------------------
// Output: a closed pipe.
// ---------------------------------------------------------------------------

/// Runs mailloopctl with stdout a pipe whose reader is already closed.
fn run_into_closed_pipe(c: &Coordinator, args: &[&str]) -> (i32, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_mailloopctl"))
        .args(args)
        .env("MAILLOOP_URL", format!("http://{}", c.http))
        .env("MAILLOOP_TOKEN", ADMIN_TOKEN)
        .stdout(writer)
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn a_closed_stdout_ends_mailloopctl_quietly() {
    let c = Coordinator::start("", &check_toml("corp", &["eu-west"], "1m"));
    // Every way out: tables, JSON, a TOML file, clap's help.
    for args in [&["checks", "list"][..], &["-o", "json", "agents", "list"], &["checks", "show", "corp"], &["status"], &["--help"]] {
        let (code, stderr) = run_into_closed_pipe(&c, args);
        assert_eq!((code, stderr.as_str()), (0, ""), "mailloopctl {args:?} | (closed)");
    }
}

// ---------------------------------------------------------------------------
// The URL: the wrong port, said so.
// ---------------------------------------------------------------------------

/// Runs mailloopctl at `url` (with the admin token); (exit code, stderr).
fn at_url(url: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mailloopctl")).args(args).env("MAILLOOP_URL", url).env("MAILLOOP_TOKEN", ADMIN_TOKEN).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn a_url_at_the_wrong_port_says_which_port_it_is() {
    let c = Coordinator::start("", "");
    let grpc_said = format!("mailloopctl: {} speaks HTTP/2 gRPC: that is the agents' port (grpc_listen); mailloopctl needs the admin API port (http_listen) [URL from $MAILLOOP_URL]\n", c.grpc);
    assert_eq!(at_url(&format!("http://{}", c.grpc), &["checks", "list"]), (6, grpc_said.clone()));
    assert_eq!(at_url(&format!("https://{}", c.grpc), &["checks", "list"]), (6, grpc_said));
    let (code, stderr) = at_url(&format!("https://{}", c.http), &["checks", "list"]);
    assert_eq!(code, 6, "{stderr}");
    assert_eq!(
        stderr,
        format!("mailloopctl: https:// to a server that answered in plain HTTP ({0}): use http://{0}, or enable tls_cert on the coordinator [URL from $MAILLOOP_URL]\n", c.http)
    );

    // Some other web server: its 404 page is not the API's JSON.
    let web = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let web_addr = web.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut s, _) = web.accept().unwrap();
        let _ = s.read(&mut [0u8; 4096]);
        let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-type: text/html\r\ncontent-length: 22\r\n\r\n<h1>Not Found</h1>\r\n\r\n");
    });
    let (code, stderr) = at_url(&format!("http://{web_addr}"), &["checks", "list"]);
    assert_eq!(code, 6, "{stderr}");
    assert!(stderr.contains("answered 404 with a body that is not JSON: is it mailloop's admin API (http_listen)?"), "{stderr}");

    // Nothing listening: said once, on one line.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (code, stderr) = at_url(&format!("http://{closed}"), &["checks", "list"]);
    assert_eq!(code, 6, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert_eq!(stderr.matches("refused").count(), 1, "{stderr}");
    assert!(stderr.starts_with(&format!("mailloopctl: cannot connect to {closed}: connection refused")), "{stderr}");
}

// ---------------------------------------------------------------------------
// Tokens: where from, where to, and what a refusal says.
// ---------------------------------------------------------------------------

/// Runs mailloopctl against `c` with exactly the environment given; (exit code, stdout, stderr).
fn with_env(c: &Coordinator, env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailloopctl"));
    cmd.args(args).env_remove("MAILLOOP_TOKEN").env("MAILLOOP_URL", format!("http://{}", c.http));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn a_missing_token_and_a_wrong_one_read_differently_with_one_exit_code() {
    let c = Coordinator::start("", "");
    let file = c.dir.path().join("corp.toml");
    std::fs::write(&file, check_toml("corp", &["eu-west"], "1m")).unwrap();
    Ctl(&c).ok(&["checks", "apply", "-f", file.to_str().unwrap()]);
    let writes: [&[&str]; 3] = [&["agents", "add", "x-1", "--region", "x"], &["checks", "delete", "corp"], &["incidents", "ack", "1"]];
    for args in writes {
        let (code, _, stderr) = with_env(&c, &[], args);
        assert_eq!(code, 5, "{args:?}: {stderr}");
        assert!(stderr.starts_with("mailloopctl: no token: set MAILLOOP_TOKEN or --token-file"), "{args:?}: {stderr}");

        let (code, _, stderr) = with_env(&c, &[("MAILLOOP_TOKEN", "not-the-admin-token-0000")], args);
        assert_eq!(code, 5, "{args:?}: {stderr}");
        assert!(stderr.starts_with("mailloopctl: the coordinator refused the token from $MAILLOOP_TOKEN (401)"), "{args:?}: {stderr}");
        assert!(!stderr.contains("not-the-admin-token"), "the token itself is never printed: {stderr}");
    }

    // --token-file wins over the environment and is named as the source.
    let wrong = c.dir.path().join("wrong.token");
    std::fs::write(&wrong, "not-the-admin-token-1111\n").unwrap();
    let wrong_arg = wrong.to_str().unwrap();
    let (code, _, stderr) = with_env(&c, &[("MAILLOOP_TOKEN", ADMIN_TOKEN)], &["--token-file", wrong_arg, "checks", "delete", "corp"]);
    assert_eq!(code, 5, "{stderr}");
    assert!(stderr.contains(&format!("refused the token from --token-file {wrong_arg} (401)")), "{stderr}");
    assert!(stderr.contains(&format!("warning: --token-file {wrong_arg} is readable by others (mode 644): chmod 600 {wrong_arg}")), "{stderr}");
    let right = c.dir.path().join("admin.token");
    let (code, stdout, stderr) = with_env(&c, &[], &["--token-file", right.to_str().unwrap(), "checks", "delete", "corp"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("corp: deleted"), "{stdout}");

    // An empty or unreadable token file is a local problem: 3.
    let empty = c.dir.path().join("empty.token");
    std::fs::write(&empty, "\n").unwrap();
    let (code, _, stderr) = with_env(&c, &[], &["--token-file", empty.to_str().unwrap(), "checks", "list"]);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("the file is empty"), "{stderr}");

    // Refused by the coordinator for another reason: 4, whatever the subcommand.
    for args in [&["checks", "delete", "nosuch"][..], &["incidents", "show", "999"], &["latest", "nosuch"], &["agents", "revoke", "nosuch"]] {
        let (code, _, stderr) = with_env(&c, &[("MAILLOOP_TOKEN", ADMIN_TOKEN)], args);
        assert_eq!(code, 4, "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn a_token_on_the_command_line_is_refused() {
    let c = Coordinator::start("", "");
    for args in [&["--token", ADMIN_TOKEN, "agents", "list"][..], &["agents", "list", &format!("--token={ADMIN_TOKEN}")], &["agents", "list", "--token"]] {
        let (code, stdout, stderr) = with_env(&c, &[], args);
        assert_eq!((code, stdout.as_str()), (3, ""), "{args:?}: {stderr}");
        assert!(stderr.contains("--token is refused") && stderr.contains("process list") && stderr.contains("MAILLOOP_TOKEN") && stderr.contains("--token-file"), "{stderr}");
        assert!(!stderr.contains(ADMIN_TOKEN), "{stderr}");
    }
    // Usage errors share the code.
    assert_eq!(with_env(&c, &[], &["no-such-command"]).0, 3);
}

#[test]
fn a_token_is_never_sent_over_plain_http_off_loopback() {
    // 0.0.0.0 and [::] are not loopback names; were the refusal missing, a
    // connection to them would stay on this machine (and fail: exit 6).
    for (url, host) in [("http://0.0.0.0:9", "0.0.0.0:9"), ("http://[::]:9/", "[::]:9")] {
        let (code, stderr) = at_url(url, &["checks", "list"]);
        assert_eq!(code, 3, "{url}: {stderr}");
        assert_eq!(
            stderr,
            format!("mailloopctl: refusing to send the token from $MAILLOOP_TOKEN over plain http:// to {host}, which is not a loopback address: use https:// (the coordinator's tls_cert), or reach it over loopback (an SSH tunnel)\n")
        );
    }
}

// ---------------------------------------------------------------------------
// Files: checks in JSON, token files 0600.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn checks_apply_reads_json_as_well_as_toml() {
    let c = Coordinator::start("", "");
    let ctl = Ctl(&c);
    let path = |name: &str| c.dir.path().join(name).to_str().unwrap().to_string();
    std::fs::write(path("checks.json"), serde_json::json!({"check": [check_table("shop", &["eu-west"], "1m"), check_table("corp", &["eu-west"], "5m")]}).to_string()).unwrap();
    let applied = ctl.ok(&["checks", "apply", "-f", &path("checks.json")]);
    assert_eq!(applied, "shop: created (revision 1)\ncorp: created (revision 2)\n");
    // No extension: told by its content; a bare array of checks.
    std::fs::write(path("checks"), serde_json::json!([check_table("shop", &["eu-west"], "2m")]).to_string()).unwrap();
    assert_eq!(ctl.ok(&["checks", "apply", "-f", &path("checks")]), "shop: updated (revision 3)\n");
    // What `checks show -o json` prints applies back unchanged.
    std::fs::write(path("shown.json"), ctl.ok(&["-o", "json", "checks", "show", "corp"])).unwrap();
    assert_eq!(ctl.ok(&["checks", "apply", "-f", &path("shown.json")]), "corp: unchanged (revision 2)\n");
    // Broken JSON: where, and exit 3 before anything is sent.
    std::fs::write(path("bad.json"), "{\"check\": [\n  {\"name\": \"x\",}\n]}").unwrap();
    let (code, _, stderr) = ctl.run(&["checks", "apply", "-f", &path("bad.json")]);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("bad.json: not valid JSON") && stderr.contains("line 2"), "{stderr}");
    // The format is documented where it is used.
    let help = ctl.ok(&["checks", "apply", "--help"]);
    assert!(help.contains("[[check]]") && help.contains("JSON") && help.contains("checks show"), "{help}");
}

#[tokio::test]
async fn agents_add_writes_its_token_to_a_file_only_the_owner_reads() {
    use std::os::unix::fs::PermissionsExt;
    let c = Coordinator::start("", "");
    let ctl = Ctl(&c);
    let file = c.dir.path().join("lab-1.token");
    // A file that was there (world-readable) is replaced, not reused.
    std::fs::write(&file, "old").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = ctl.ok(&["agents", "add", "lab-1", "--region", "lab", "--write-token", file.to_str().unwrap()]);
    let token = std::fs::read_to_string(&file).unwrap();
    assert!(token.starts_with("mlt_") && token.ends_with('\n'), "{token:?}");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(out.contains("(mode 0600)") && !out.contains(token.trim()), "the token is not printed: {out}");
    // The agent can use it.
    let mut agent = c.agent_with(Some(token.trim())).await;
    agent.register(mailloop_proto::pb::RegisterRequest { name: "lab-1".into(), region: "lab".into(), version: "t".into(), ..Default::default() }).await.unwrap();
    assert!(c.dir.path().read_dir().unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().contains(".tmp")), "no temporary file left");

    // A file that cannot be written: refused before the agent exists.
    let (code, _, stderr) = ctl.run(&["agents", "add", "lab-2", "--region", "lab", "--write-token", "/nonexistent-dir/lab-2.token"]);
    assert_eq!(code, 3, "{stderr}");
    assert!(!ctl.ok(&["agents", "list"]).contains("lab-2"), "no agent whose token was lost");
}

#[tokio::test]
async fn status_says_why_for_a_failing_and_a_missing_region() {
    use mailloop_coordinator::cluster::schedule;
    let c = Coordinator::start("", &format!("{}\n[incidents]\nround_slack = \"1s\"\n", check_toml("corp", &["eu-west", "us-east"], "1s")));
    let now = chrono::Utc::now().timestamp_millis() as u64;
    let round = schedule::round_at(now, 1000, schedule::phase_ms("corp", 1000));
    // eu-west fails at RCPT TO; us-east never reports.
    let failed = report("ml-f", "corp", round, |v| {
        v["outcome"] = "failed".into();
        v["rtt_ms"] = serde_json::Value::Null;
        v["delivery_ms"] = serde_json::Value::Null;
        v["failure"] = serde_json::json!({"step": "smtp.rcpt_to", "class": "permanent", "code": 550, "enhanced": "5.1.1", "message": "550 5.1.1 User unknown"});
    });
    let mut eu1 = c.agent("eu-1").await;
    assert!(Reports::open(&mut eu1).await.send(failed).await.stored);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while c.api().get("/api/v1/status").await.unwrap().body["checks"][0]["verdict"].is_null() {
        assert!(std::time::Instant::now() < deadline, "no verdict for round {round}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    let status = Ctl(&c).ok(&["status"]);
    eprintln!("{status}");
    let row = |region: &str| status.lines().find(|l| l.contains(&format!("  {region}  "))).unwrap_or_else(|| panic!("{region}:\n{status}")).to_string();
    let cells = |region: &str| row(region).split_whitespace().skip_while(|w| *w != region).skip(1).collect::<Vec<_>>().join(" ");
    // The coordinator's own why (no live agent, and what the last round said) comes first.
    let eu = cells("eu-west");
    assert!(eu.starts_with("failed ") && eu.contains("smtp.rcpt_to") && eu.contains("550 5.1.1") && eu.contains("permanent"), "{status}");
    let us = cells("us-east");
    assert!(us.starts_with("missing ") && us.contains("no agent connected in us-east") && us.contains("us-1"), "{status}");
    let note = status.lines().find(|l| l.starts_with("corp: unknown: ")).unwrap_or_else(|| panic!("the judge's note:\n{status}"));
    assert!(note.contains("failing: eu-west at smtp.rcpt_to (permanent 550 5.1.1)") && note.ends_with("missing: us-east (agents offline?)"), "{note}");
}
