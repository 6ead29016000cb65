//! coordinator.toml: every bad key reported at once, before anything is
//! bound; SIGHUP reloads a good config and keeps the old one on a bad one.

mod support;
use std::process::Command;
use std::time::Duration;
use support::*;

fn coordinator(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mailloop-coordinator")).args(args).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn every_bad_key_is_reported_at_once_with_exit_3_before_any_port_is_bound() {
    let dir = tempfile::tempdir().unwrap();
    // Hold the gRPC port: a coordinator that bound before validating would
    // fail with "address in use" instead of listing the bad keys.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let data_dir = dir.path().join("data");
    let config = format!(
        r#"
[server]
grpc_listen = "127.0.0.1:{port}"
http_listen = "0.0.0.0:7480"
data_dir = {data_dir:?}
admin_token_env = "MAILLOOP_TEST_NO_SUCH_VARIABLE"
retention = "a while"

[[agent]]
name = "eu 1"
region = "eu-west"
token_sha256 = "abc"
{}
"#,
        check_toml("corp", &["eu-west"], "5s").replace("port = 2525", "port = 70000")
    );
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, config).unwrap();
    let (code, _, stderr) = coordinator(&["serve", "--config", path.to_str().unwrap()]);
    assert_eq!(code, Some(3), "{stderr}");
    for key in [
        "server.http_listen:",
        "server.admin_token_env: environment variable MAILLOOP_TEST_NO_SUCH_VARIABLE is not set",
        "server.retention:",
        "agent[0].name:",
        "agent[0].token_sha256:",
        "check[0].interval:",
        "check[0].smtp.port: 70000 is not a port",
    ] {
        assert!(stderr.contains(key), "missing {key:?} in:\n{stderr}");
    }
    assert!(stderr.starts_with("7 config errors in"), "{stderr}");
    assert!(!stderr.contains("cannot listen"), "{stderr}");
    assert!(!data_dir.exists(), "nothing is created before the config is valid");
    drop(held);
}

#[test]
fn check_config_says_ok_or_lists_the_problems() {
    let c = Coordinator::start("", &check_toml("corp", &["eu-west"], "1m"));
    let (code, stdout, _) = coordinator(&["check-config", "--config", c.config_path().to_str().unwrap()]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("ok (1 checks, 3 agents)"), "{stdout}");
    let bad = c.dir.path().join("bad.toml");
    std::fs::write(&bad, "[server]\ncolour = \"blue\"\n").unwrap();
    let (code, _, stderr) = coordinator(&["check-config", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, Some(3));
    assert!(stderr.contains("server.data_dir: required") && stderr.contains("server.colour: unknown key"), "{stderr}");
}

#[tokio::test]
async fn sighup_applies_a_good_config_and_keeps_the_old_one_on_a_bad_one() {
    let c = Coordinator::start("", &check_toml("corp", &["eu-west"], "1m"));
    let mut eu1 = c.agent("eu-1").await;
    let mut watch = Watch::open(&mut eu1, &[]).await;
    assert_eq!(watch.next().await.upserted().check_id, "corp");
    let good = std::fs::read_to_string(c.config_path()).unwrap();

    // A bad reload: every bad key is logged, nothing changes.
    let bad = good.replace("interval = \"1m\"", "interval = \"soon\"").replace("port = 2525", "port = 0");
    std::fs::write(c.config_path(), &bad).unwrap();
    c.signal("HUP");
    let logged = wait_for(|| c.log().contains("config reload refused; the previous config stays in force")).await;
    assert!(logged, "{}", c.log());
    let log = c.log();
    assert!(log.contains("check[0].interval") && log.contains("check[0].smtp.port"), "{log}");
    watch.quiet(Duration::from_millis(300)).await;

    // A good reload: a new check arrives, a removed one goes.
    let next = good.replace("name = \"corp\"", "name = \"corp2\"");
    std::fs::write(c.config_path(), &next).unwrap();
    c.signal("HUP");
    let mut changes = [watch.next().await, watch.next().await];
    changes.sort_by_key(|c| format!("{c:?}"));
    assert_eq!(changes[0], Change::Remove("corp".into()));
    assert!(matches!(&changes[1], Change::Upsert(a) if a.check_id == "corp2"));
}

#[tokio::test]
async fn the_api_validates_checks_like_the_config_file() {
    let c = Coordinator::start("", "");
    let mut table = check_table("shop", &["eu-west"], "1m");
    table["smtp"]["port"] = serde_json::json!(70000);
    table["imap"]["password"] = serde_json::json!("inline-secret");
    table["regions"] = serde_json::json!([]);
    let r = c.api().post("/api/v1/checks", &table).await.unwrap();
    assert_eq!(r.status, 422);
    let paths: Vec<&str> = r.body["issues"].as_array().unwrap().iter().map(|i| i["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["body.regions", "body.smtp.port", "body.imap.password"]);
}

async fn wait_for(cond: impl Fn() -> bool) -> bool {
    for _ in 0..100 {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}
