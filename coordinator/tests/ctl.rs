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
    let added = ctl.ok(&["agents", "add", "ap-1", "--region", "ap-south"]);
    let token = added.lines().last().unwrap().trim().to_string();
    assert!(token.starts_with("mlt_"), "{added}");
    let mut agent = c.agent_with(Some(&token)).await;
    let reg = mailloop_proto::pb::RegisterRequest { name: "ap-1".into(), region: "ap-south".into(), version: "9.9".into() };
    agent.register(reg.clone()).await.unwrap();
    let list = ctl.ok(&["agents", "list"]);
    assert!(list.lines().any(|l| l.starts_with("ap-1") && l.contains("ap-south") && l.contains("9.9")), "{list}");
    assert!(ctl.ok(&["agents", "revoke", "ap-1"]).contains("revoked"));
    assert_eq!(agent.register(reg).await.unwrap_err().code(), tonic::Code::Unauthenticated);
    let (code, _, stderr) = ctl.run(&["agents", "revoke", "eu-1"]);
    assert_eq!(code, 4, "config-declared agents are owned by the file");
    assert!(stderr.contains("config file"), "{stderr}");
}

#[tokio::test]
async fn results_as_table_and_json() {
    let c = Coordinator::start("", &check_toml("corp", &["eu-west"], "1m"));
    let mut eu1 = c.agent("eu-1").await;
    let mut reports = Reports::open(&mut eu1).await;
    let mut r = result("ml-1", "corp", 4);
    r.report_json = report_json("ml-1", "corp").replace("2026-11-27T23:17:08.596634Z", &chrono::Utc::now().to_rfc3339());
    assert!(reports.send(r).await.stored);
    let ctl = Ctl(&c);
    let table = ctl.ok(&["results", "corp", "--since", "1h"]);
    assert!(table.lines().any(|l| l.contains("eu-west") && l.contains("eu-1") && l.contains("ok") && l.contains("35.2 ms")), "{table}");
    let json = ctl.ok(&["results", "corp", "--region", "eu-west", "--output", "json"]);
    let first: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(first["probe_id"], "ml-1");
    let latest = ctl.ok(&["latest", "corp"]);
    assert!(latest.contains("round 4") && latest.contains("smtp.banner"), "{latest}");
    // Unreachable coordinator: exit 6.
    let out = Command::new(env!("CARGO_BIN_EXE_mailloopctl")).args(["--url", "http://127.0.0.1:1", "checks", "list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(6));
}
