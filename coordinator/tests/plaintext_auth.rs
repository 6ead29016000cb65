//! A check that would send its login in clear text to a host that is not
//! loopback is refused by the coordinator's config, as by the agent's: the
//! same validator reads both.

mod support;
use std::process::Command;
use support::*;

fn check_config(path: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mailloop-coordinator"))
        .args(["check-config", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn a_clear_text_login_to_a_remote_host_is_refused_unless_allowed() {
    let c = Coordinator::start("", &check_toml("corp", &["eu-west"], "1m"));
    let good = std::fs::read_to_string(c.config_path()).unwrap();
    // The IMAP side of check_toml is security = "none" with a login.
    let remote = good.replacen("[check.imap]\nhost = \"127.0.0.1\"", "[check.imap]\nhost = \"imap.example.net\"", 1);
    assert_ne!(remote, good, "the check's IMAP host was replaced");
    let path = c.dir.path().join("remote.toml");
    std::fs::write(&path, &remote).unwrap();
    let (code, out) = check_config(&path);
    assert_eq!(code, Some(3), "{out}");
    assert!(
        out.contains("check[0].imap.security: \"none\" would send the password in clear text to imap.example.net"),
        "{out}"
    );

    let allowed = remote.replacen("[check.imap]\n", "[check.imap]\nallow_plaintext_auth = true\n", 1);
    std::fs::write(&path, &allowed).unwrap();
    let (code, out) = check_config(&path);
    assert_eq!(code, Some(0), "{out}");
}
