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
    // Always there, 0 without a deferral, so a graph has no holes.
    assert!(perf.split_whitespace().any(|i| i == "greylist=0.000s"), "no greylist=0.000s in {perf}");

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
    // The failure object gives every documented field, null when not applicable.
    let (code, out, _) = probe(&check, "json");
    assert_eq!(code, 2, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    for field in ["step", "class", "code", "enhanced", "message", "raw"] {
        assert!(v["failure"].as_object().unwrap().contains_key(field), "failure.{field} missing: {}", v["failure"]);
    }
    assert!(v["failure"]["raw"].is_null() && v["rtt_ms"].is_null() && v["auth"].is_null(), "{v:#}");
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

/// Every field README's JSON contract lists, as a path: `a.b` a nested
/// field, `a[].b` a field of every element of list `a`.
const DOCUMENTED_FIELDS: &[&str] = &[
    "probe_id", "check", "started_at", "outcome", "rtt_ms", "delivery_ms", "steps", "steps[].name", "steps[].ms",
    "steps[].ok", "steps[].code", "steps[].detail", "steps[].start_ms", "failure", "message_id", "queue_id", "reasons", "warnings",
    "attempts", "attempts[].started_at", "attempts[].failure", "greylisted", "greylist_ms", "tls", "tls[].protocol",
    "tls[].endpoint", "tls[].subject", "tls[].sans", "tls[].issuer", "tls[].not_after", "tls[].days_left", "tls[].version",
    "tls[].cipher", "auth", "auth.spf", "auth.dkim", "auth.dmarc", "auth.dkim_domain", "auth.spf_domain",
    "auth.from_domain", "auth.alignment", "auth.alignment.dkim", "auth.alignment.spf", "auth.authserv_id",
    "auth.own_dkim", "auth.raw", "auth.ignored", "auth.warning", "hops", "hops[].from", "hops[].by", "hops[].with",
    "hops[].tls", "hops[].at", "hops[].delay_ms", "hops[].note", "spf", "spf.domain", "spf.lookups",
    "spf.void_lookups", "spf.limit", "spf.chain", "spf.error", "placement", "placement_folder", "spam", "reputation",
];

/// Whether `path` exists in `v` (null counts); for `a[]`, in every element.
fn has_field(v: &serde_json::Value, path: &str) -> bool {
    let Some((head, rest)) = path.split_once('.') else {
        return v.as_object().is_some_and(|o| o.contains_key(path));
    };
    match head.strip_suffix("[]") {
        Some(list) => v[list].as_array().is_some_and(|items| !items.is_empty() && items.iter().all(|i| has_field(i, rest))),
        None => has_field(&v[head], rest),
    }
}

#[test]
fn json_gives_every_documented_field_null_when_not_applicable() {
    let mut check = Check::new("cli-json-fields");
    check.check_extra.push("trusted_authserv_id = \"mx.receiver.test\"".into());
    let (code, out, err) = probe(&check, "json");
    assert_eq!(code, 0, "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    for field in DOCUMENTED_FIELDS {
        assert!(has_field(&v, field), "{field} missing from an OK probe's JSON: {v:#}");
        let leaf = field.rsplit(['.', '[']).next().unwrap().trim_end_matches(']');
        assert!(readme.contains(leaf), "{field} is not in README's JSON contract");
    }
    // Not applicable on a first-time delivery with a trusted authserv-id: null, not absent.
    for (path, value) in [("greylist_ms", &v["greylist_ms"]), ("auth.warning", &v["auth"]["warning"]), ("spf.error", &v["spf"]["error"])] {
        assert!(value.is_null(), "{path} should be null here: {value}");
    }
}

#[test]
fn a_degraded_table_says_why_and_a_failed_spf_lookup_is_not_ok() {
    let mut check = Check::new("cli-why");
    check.check_extra.push("[check.spf]\ndomain = \"no-such-domain.test\"".into());
    let (code, out, _) = probe(&check, "table");
    assert_eq!(code, 1, "{out}");
    let spf = out.lines().find(|l| l.trim_start().starts_with("dns.spf")).unwrap_or_else(|| panic!("no dns.spf row:\n{out}"));
    assert!(spf.contains("FAIL") && spf.contains("no-such-domain.test has no TXT record"), "{spf}");
    assert!(out.contains("spf:      no-such-domain.test walk stopped: "), "{out}");
    assert!(!spf.contains(" ok "), "{spf}");
    assert!(out.contains("result: DEGRADED"), "{out}");
    assert!(out.lines().any(|l| l.trim_start().starts_with("degraded: SPF walk of no-such-domain.test")), "no reason under the steps:\n{out}");
}

fn check_config(path: &std::path::Path, env: &[(&str, &str)]) -> (i32, String, String) {
    let out = std::process::Command::new(mailloop_tests::agent_bin()).args(["check-config", "-c"]).arg(path).envs(env.iter().copied()).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn check_config_loads_ca_files_as_the_probe_does_and_names_each_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let key = std::path::Path::new(Stack::get().var("MAILSTACK_CA_FILE")).with_file_name("server.key");
    assert!(key.exists(), "the stack's key {} is missing", key.display());
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n").unwrap();
    let good = Check::new("cli-ca").toml();
    let ca = Stack::get().var("MAILSTACK_CA_FILE");
    let bad = good.replacen(&format!("ca_file = {ca:?}"), &format!("ca_file = {key:?}"), 1).replacen(&format!("ca_file = {ca:?}"), &format!("ca_file = {garbage:?}"), 1);
    let path = dir.path().join("bad-ca.toml");
    std::fs::write(&path, &bad).unwrap();
    let (code, out, err) = check_config(&path, &[]);
    assert_eq!(code, 3, "{out}\n{err}");
    assert!(err.starts_with("2 config errors in "), "{err}");
    let smtp = err.lines().find(|l| l.starts_with("  check[0].smtp.ca_file: ")).unwrap_or_else(|| panic!("{err}"));
    assert!(smtp.contains("private key"), "{smtp}");
    let imap = err.lines().find(|l| l.starts_with("  check[0].imap.ca_file: ")).unwrap_or_else(|| panic!("{err}"));
    assert!(imap.contains(garbage.to_str().unwrap()), "{imap}");
    // The good config passes, so the failure above is the files'.
    std::fs::write(&path, &good).unwrap();
    let (code, out, err) = check_config(&path, &[]);
    assert_eq!((code, out.trim_end().ends_with("1 check(s) ok")), (0, true), "{out}\n{err}");
}

#[test]
fn config_mistakes_get_one_clear_error_each() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let good = Check::new("cli-env").toml();
    std::fs::write(&path, good.replace("[[check]]", "[[checks]]").replace("[check.", "[checks.")).unwrap();
    let (code, _, err) = check_config(&path, &[]);
    assert_eq!(code, 3, "{err}");
    assert_eq!(err.trim_end(), format!("1 config error in {}:\n  checks: unknown key: the table is spelt [[check]] (one per round trip to monitor)", path.display()));

    std::fs::write(&path, &good).unwrap();
    let (code, _, err) = check_config(&path, &[("MAILLOOP_CHECK__cli-env__SMTP__PROT", "2525"), ("MAILLOOP_CHECK__nope__SMTP__PORT", "2525")]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("  check[0].smtp.prot: unknown key (from environment variable MAILLOOP_CHECK__cli-env__SMTP__PROT)"), "{err}");
    assert!(err.contains("  MAILLOOP_CHECK__nope__SMTP__PORT: environment override for check \"nope\", but no check has that name (checks: cli-env)"), "{err}");
}

#[test]
fn a_one_shot_probe_logs_nothing_by_default_and_help_says_the_levels() {
    let mut check = Check::new("cli-quiet");
    check.check_extra.push("trusted_authserv_id = \"mx.receiver.test\"".into());
    let f = check.file();
    let out = std::process::Command::new(mailloop_tests::agent_bin()).args(["probe", "-c"]).arg(f.path()).env_remove("MAILLOOP_LOG").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "an OK probe at the default level (warn) logs nothing");
    let (_, help, _) = run_agent(&["--help"]);
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(help.contains("warn for probe and check-config") && help.contains("info for run"), "{help}");
}

#[test]
fn check_config_validates_an_agent_toml_as_run_would() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "agent-token-for-check-config").unwrap();
    let key = std::path::Path::new(Stack::get().var("MAILSTACK_CA_FILE")).with_file_name("server.key");
    let agent = |ca: &std::path::Path| {
        format!(
            "[agent]\nname = \"eu-1\"\nregion = \"eu-west\"\ncoordinator_url = \"https://127.0.0.1:7443\"\ntoken_file = {token:?}\nca_file = {ca:?}\nspool = {:?}\n",
            dir.path().join("spool/spool.db")
        )
    };
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, agent(&key)).unwrap();
    let (code, out, err) = check_config(&path, &[]);
    assert_eq!(code, 3, "{out}\n{err}");
    assert!(err.contains("  agent.ca_file: ") && err.contains("private key"), "{err}");
    std::fs::write(&path, agent(std::path::Path::new(Stack::get().var("MAILSTACK_CA_FILE")))).unwrap();
    let (code, out, err) = check_config(&path, &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("agent eu-1 in region eu-west ok"), "{out}");
    assert!(!dir.path().join("spool").exists(), "check-config creates nothing");
}
