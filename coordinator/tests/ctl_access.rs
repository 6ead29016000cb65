//! `mailloopctl` with tokens and roles: every call carries the token, a
//! read token reads, `tokens add` leaves the new token only in a 0600 file,
//! `audit` shows who changed what.

mod support;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use support::*;

/// Runs `mailloopctl ARGS` with `token` (None: none); (exit code, stdout, stderr).
fn ctl(c: &Coordinator, token: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailloopctl"));
    cmd.args(args).env("MAILLOOP_URL", format!("http://{}", c.http)).env_remove("MAILLOOP_TOKEN").current_dir(c.dir.path());
    if let Some(t) = token {
        cmd.env("MAILLOOP_TOKEN", t);
    }
    let out = cmd.output().unwrap();
    (out.status.code().unwrap(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn reads_carry_the_token_and_a_read_token_reads_but_does_not_write() {
    let c = Coordinator::start("", &check_toml("corp", &["eu-west"], "1m"));
    let (code, _, err) = ctl(&c, None, &["checks", "list"]);
    assert_eq!(code, 5, "no token is exit 5: {err}");
    assert!(err.contains("Authorization: Bearer"), "the refusal says what is missing: {err}");
    let (code, out, err) = ctl(&c, Some(READ_TOKEN), &["checks", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().any(|l| l.starts_with("corp")), "{out}");
    let (code, _, err) = ctl(&c, Some(READ_TOKEN), &["checks", "delete", "corp"]);
    assert_eq!(code, 5, "a role that may not do this is exit 5: {err}");
    assert!(err.contains("read role"), "{err}");
}

#[tokio::test]
async fn tokens_add_writes_a_private_file_and_audit_shows_who_did_it() {
    let c = Coordinator::start("", "");
    let (code, out, err) = ctl(&c, Some(ADMIN_TOKEN), &["tokens", "add", "wall", "--role", "read"]);
    assert_eq!(code, 0, "{err}");
    let file = c.dir.path().join("wall.token");
    assert!(out.contains("wall.token") && out.contains("0600"), "{out}");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let token = std::fs::read_to_string(&file).unwrap().trim().to_string();
    assert!(token.len() >= 32, "{token:?}");
    assert!(!out.contains(&token) && !err.contains(&token), "never printed");
    assert_eq!(ctl(&c, Some(&token), &["agents", "list"]).0, 0, "the new token reads");

    // An existing file is never overwritten, and then no token is made.
    let (code, _, err) = ctl(&c, Some(ADMIN_TOKEN), &["tokens", "add", "wall", "--role", "admin"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("never overwritten"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), token);

    let (code, list, _) = ctl(&c, Some(ADMIN_TOKEN), &["tokens", "list"]);
    assert_eq!(code, 0);
    assert!(list.lines().any(|l| l.starts_with("wall") && l.contains("read") && l.contains("api") && l.contains("active")), "{list}");
    assert_eq!(ctl(&c, Some(ADMIN_TOKEN), &["tokens", "revoke", "wall"]).0, 0);
    assert_eq!(ctl(&c, Some(&token), &["agents", "list"]).0, 5, "revoked");

    let (code, audit, err) = ctl(&c, Some(ADMIN_TOKEN), &["audit"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = audit.lines().collect();
    assert!(lines[0].starts_with("AT"), "{audit}");
    assert!(lines[1].contains("admin") && lines[1].contains("127.0.0.1") && lines[1].contains("revoked") && lines[1].contains("token wall"), "{audit}");
    assert!(lines[2].contains("created") && lines[2].contains("token wall"), "{audit}");
    assert_eq!(ctl(&c, Some(READ_TOKEN), &["audit"]).0, 5, "the audit log is the admin's");
}
