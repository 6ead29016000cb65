//! `deploy/systemd/`'s units, checked as systemd itself sees them:
//! `systemd-analyze verify` clean (no warning at all) against a root that
//! holds the built binaries, and `systemd-analyze security --offline=true`
//! at most 2.0 ("OK") for each. And the `Type=notify` contract they rely
//! on: the coordinator sends READY=1 only once its listeners answer, and
//! `--log-format json` logs one JSON object per line.

use mailloop_tests::cluster::{ADMIN_TOKEN, bin};
use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const UNITS: [&str; 2] = ["mailloop-coordinator.service", "mailloop-agent.service"];
/// The most exposure `systemd-analyze security` may score a unit.
const MAX_EXPOSURE: f64 = 2.0;

fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd")
}

fn systemd_analyze() -> Command {
    let found = Command::new("systemd-analyze").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(found, "systemd-analyze is missing: install systemd (bash tests/mailstack/install.sh installs it)");
    Command::new("systemd-analyze")
}

/// Puts `from` at `to`: a hard link (same file system) or a copy.
fn place(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to).unwrap_or_else(|e| panic!("{} -> {}: {e}", from.display(), to.display()));
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = std::fs::symlink_metadata(&src).unwrap().file_type();
        if kind.is_symlink() {
            let _ = std::os::unix::fs::symlink(std::fs::read_link(&src).unwrap(), &dst);
        } else if kind.is_dir() {
            copy_dir(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

#[test]
fn the_units_verify_cleanly_against_the_built_binaries() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    // What the units run, where the package puts it.
    place(&bin("mailloop-coordinator"), &r.join("usr/bin/mailloop-coordinator"));
    place(&bin("mailloop-agent"), &r.join("usr/bin/mailloop-agent"));
    place(Path::new("/bin/kill"), &r.join("bin/kill"));
    // The targets and units they refer to (network-online.target, ...).
    copy_dir(Path::new("/usr/lib/systemd/system"), &r.join("usr/lib/systemd/system"));
    for unit in UNITS {
        std::fs::copy(units_dir().join(unit), r.join("etc/systemd/system").join(unit)).unwrap_or_else(|_| {
            std::fs::create_dir_all(r.join("etc/systemd/system")).unwrap();
            std::fs::copy(units_dir().join(unit), r.join("etc/systemd/system").join(unit)).unwrap()
        });
    }
    let out = systemd_analyze().args(["verify", "--man=no"]).arg(format!("--root={}", r.display())).args(UNITS).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "systemd-analyze verify failed:\n{said}");
    // An unknown or misspelt key is only a warning to systemd: none allowed.
    assert!(said.trim().is_empty(), "systemd-analyze verify warned:\n{said}");
}

#[test]
fn each_unit_scores_at_most_2_0_exposure() {
    for unit in UNITS {
        let out = systemd_analyze()
            .args(["security", "--offline=true", "--no-pager"])
            .arg(units_dir().join(unit))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .unwrap_or_else(|| panic!("no exposure level for {unit}:\n{text}{}", String::from_utf8_lossy(&out.stderr)));
        let score: f64 = line
            .split(": ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("unreadable: {line}"));
        println!("systemd-analyze security {unit}: {score}");
        assert!(score <= MAX_EXPOSURE, "{unit} scores {score} (> {MAX_EXPOSURE}):\n{text}");
    }
}

#[test]
fn the_coordinator_notifies_ready_once_listening_and_logs_json() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("admin.token"), ADMIN_TOKEN).unwrap();
    let config = d.join("coordinator.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ngrpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\ndata_dir = {:?}\nadmin_token_file = {:?}\n",
            d.join("data"),
            d.join("admin.token")
        ),
    )
    .unwrap();
    // systemd's side of sd_notify: a datagram socket named by NOTIFY_SOCKET.
    let socket_path = d.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(mailloop_tests::patience(Duration::from_secs(60)))).unwrap();
    let mut child = Command::new(bin("mailloop-coordinator"))
        .args(["--log-format", "json", "serve", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("MAILLOOP_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut proc = mailloop_tests::cluster::Proc::new(child);
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).expect("no sd_notify message from the coordinator");
    let message = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(message.lines().any(|l| l == "READY=1"), "{message:?}");
    // READY means serving: both ports accept now, without waiting.
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    for key in ["grpc=", "http="] {
        let addr: std::net::SocketAddr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {line:?}"));
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("READY=1 sent, but {key}{addr} refuses: {e}"));
    }
    proc.signal("TERM");
    assert_eq!(proc.wait_exit(Duration::from_secs(30)), Some(0));
    let lines: Vec<String> = stderr.lines().map_while(Result::ok).collect();
    assert!(lines.iter().any(|l| l.contains("coordinator serving")), "{lines:?}");
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string() && v["message"].is_string(), "{l}");
    }
}
