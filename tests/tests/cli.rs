//! `mailloop-agent probe` as a user runs it: output contracts, exit codes,
//! config errors.

use mailloop_tests::{Check, Stack, run_agent};
use std::net::TcpListener;

fn probe(check: &Check, output: &str) -> (i32, String, String) {
    let f = check.file();
    run_agent(&["probe", "--config", f.path().to_str().unwrap(), "--output", output])
}

#[test]
fn json_output_keeps_its_contract() {
    let (code, out, err) = probe(&Check::new("cli-json"), "json");
    assert_eq!(code, 0, "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    for required in ["probe_id", "check", "started_at", "outcome", "rtt_ms", "delivery_ms", "steps", "failure", "message_id", "queue_id"] {
        assert!(keys.contains(&required), "missing {required} in {keys:?}");
    }
    assert_eq!(v["outcome"], "ok");
    assert_eq!(v["check"], "cli-json");
    assert!(v["failure"].is_null());
    assert!(v["rtt_ms"].as_f64().unwrap() > 0.0);
    let first = &v["steps"][0];
    assert_eq!(first["name"], "smtp.connect");
    assert!(first["ms"].is_number() && first["ok"] == true);
    let names: Vec<&str> = v["steps"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"smtp.data_ack") && names.contains(&"imap.wait"), "{names:?}");
    // RFC 3339 with a zone.
    assert!(v["started_at"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn nagios_output_and_exit_codes() {
    let (code, out, _) = probe(&Check::new("cli-nagios"), "nagios");
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("OK - cli-nagios: delivered in "), "{out}");
    let perf = out.split_once(" | ").expect("perfdata").1;
    for item in perf.split_whitespace() {
        let (label, value) = item.split_once('=').unwrap_or_else(|| panic!("bad perfdata item {item:?}"));
        let number = value.split(';').next().unwrap().trim_end_matches('s');
        assert!(number.parse::<f64>().is_ok(), "{label}: {value:?} is not a number");
    }
    for label in ["smtp.connect=", "smtp.data_ack=", "imap.wait=", "rtt=", "delivery=", "cert_days=", "spf_lookups="] {
        assert!(perf.contains(label), "no {label} in {perf}");
    }

    let mut slow = Check::new("cli-nagios-warn");
    slow.thresholds = vec!["\"smtp.banner\" = \"1ns\"".into()];
    let (code, out, _) = probe(&slow, "nagios");
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("WARNING - cli-nagios-warn: delivered in "), "{out}");
    assert!(out.contains("smtp.banner took"), "{out}");
}

#[test]
fn a_failed_probe_exits_2_and_says_where() {
    let mut check = Check::new("cli-fail");
    check.to = format!("nosuchuser@{}", Stack::get().var("MAILSTACK_RCPT_DOMAIN"));
    let (code, out, _) = probe(&check, "table");
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("result: FAILED"), "{out}");
    assert!(out.contains("failed at smtp.rcpt_to (permanent): 550 5.1.1 "), "{out}");
}

#[test]
fn table_lists_every_step_then_the_verdict() {
    let (code, out, _) = probe(&Check::new("cli-table"), "table");
    assert_eq!(code, 0, "{out}");
    for step in ["smtp.connect", "smtp.starttls", "smtp.data_ack", "imap.login", "imap.wait", "imap.cleanup"] {
        assert!(out.lines().any(|l| l.trim_start().starts_with(step)), "no {step} line in\n{out}");
    }
    assert!(out.contains("result: OK  round trip "), "{out}");
}

#[test]
fn bad_config_names_every_key_and_contacts_nothing() {
    // A server that must never be contacted.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[[check]]
name = "bad"
from = "not-an-address"
to = "probe@receiver.test"
deadline = "soon"
[check.smtp]
host = "127.0.0.1"
port = {port}
security = "ssl"
password_env = "MAILLOOP_TEST_UNSET_VARIABLE"
username = "u"
[check.imap]
host = "127.0.0.1"
port = 99999
username = "u"
password = "p"
colour = "blue"
"#
        ),
    )
    .unwrap();
    let (code, out, err) = run_agent(&["probe", "--config", path.to_str().unwrap(), "--output", "nagios"]);
    assert_eq!(code, 3, "{out}\n{err}");
    for key in [
        "check[0].from",
        "check[0].deadline",
        "check[0].smtp.security",
        "check[0].smtp.password_env",
        "check[0].imap.port",
        "check[0].imap.colour",
    ] {
        assert!(err.contains(&format!("  {key}: ")), "{key} not named in:\n{err}");
    }
    assert!(err.starts_with("6 config errors in "), "{err}");
    assert!(out.starts_with("UNKNOWN - "), "{out}");
    assert_eq!(listener.accept().unwrap_err().kind(), std::io::ErrorKind::WouldBlock, "the probe connected despite a bad config");
}

#[test]
fn unknown_check_name_and_missing_file_exit_3() {
    let check = Check::new("cli-select");
    let f = check.file();
    let (code, _, err) = run_agent(&["probe", "-c", f.path().to_str().unwrap(), "--check", "nope"]);
    assert_eq!(code, 3);
    assert!(err.contains("no check named [\"nope\"]") && err.contains("checks: cli-select"), "{err}");
    let (code, _, err) = run_agent(&["probe", "-c", "/nonexistent/mailloop.toml"]);
    assert_eq!(code, 3);
    assert!(err.contains("cannot read config /nonexistent/mailloop.toml: no such file"), "{err}");
}

#[test]
fn secrets_stay_out_of_debug_logs() {
    let mut check = Check::new("cli-secrets");
    check.smtp_login = Some((Stack::get().var("MAILSTACK_SMTP_USER").into(), "wrong-Sup3rSecret".into()));
    let f = check.file();
    let out = std::process::Command::new(mailloop_tests::agent_bin())
        .args(["probe", "-c", f.path().to_str().unwrap()])
        .env("MAILLOOP_LOG", "trace")
        .output()
        .unwrap();
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(all.contains("smtp.auth"), "{all}");
    assert!(!all.contains("Sup3rSecret"), "password leaked:\n{all}");
    assert!(!all.contains(Stack::get().var("MAILSTACK_IMAP_PASS")), "password leaked:\n{all}");
}

#[test]
fn help_explains_outputs_and_exit_codes() {
    let (code, out, _) = run_agent(&["probe", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("--output") && out.contains("table") && out.contains("nagios"), "{out}");
    let (_, out, _) = run_agent(&["--help"]);
    assert!(out.contains("Exit codes"), "{out}");
}
