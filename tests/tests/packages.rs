//! The .deb packages as an operator gets them, installed with dpkg on the
//! machine that runs the tests: built by cargo-deb from the crates'
//! `[package.metadata.deb]` out of the binaries `cargo build --workspace
//! --bins` already made (`--no-build`, from a target directory whose
//! `release/` links to them, so no release build is needed), then
//! installed, checked (binaries, `/etc/mailloop`, the conffile, the admin
//! token made at install, the units as `systemd-analyze verify` and
//! `security` see them installed, no system user because the units run as
//! a `DynamicUser`), used (the installed coordinator on the shipped config
//! with a check of the real mail stack in two regions, `mailloopctl agents
//! add` per region with the admin token made at install, each printed one
//! command run by the installed agent, both agents running until a verdict
//! has both regions delivered), reinstalled and
//! upgraded over an edited conffile and a
//! config `enroll` wrote (both kept), removed (config kept) and purged
//! (nothing of theirs left but what the operator put there).
//!
//! This changes the machine: the packages get `~test` versions, a lock
//! lets one run at a time, a version not made by this test is never
//! touched, and both packages are purged at the end even when an
//! assertion fails.

use mailloop_tests::cluster::{IMAP_PASS_ENV, Proc, SMTP_PASS_ENV, bin, check_toml, wait_until};
use mailloop_tests::{Check, Stack};
use std::time::Duration;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const PACKAGES: [&str; 2] = ["mailloop-coordinator", "mailloop-agent"];
const BINARIES: [&str; 3] = ["mailloop-coordinator", "mailloopctl", "mailloop-agent"];
const UNITS: [&str; 2] = ["mailloop-coordinator.service", "mailloop-agent.service"];
/// Marks the versions this test installs (and may purge when left over).
const TEST_VERSION: &str = "~test";
const MAX_EXPOSURE: f64 = 2.0;
/// Generous: rounds are 10 s apart and the machine may be loaded.
const DEADLINE: Duration = Duration::from_secs(120);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs a command to completion: (success, stdout and stderr).
fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs a command that must succeed; its output.
fn must(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let (ok, text) = run(cmd);
    assert!(ok, "{shown} failed:\n{text}");
    text
}

fn dpkg(args: &[&str]) -> String {
    must(Command::new("dpkg").args(["--force-confold"]).args(args))
}

/// The installed version of `package`, if dpkg knows it as installed.
fn installed(package: &str) -> Option<String> {
    let (ok, text) =
        run(Command::new("dpkg-query").args(["-W", "-f", "${Status}|${Version}", package]));
    let (status, version) = text.trim().split_once('|')?;
    (ok && status.ends_with(" installed")).then(|| version.to_string())
}

/// What dpkg still knows of `package` (not installed, config files...).
fn status(package: &str) -> String {
    let (_, text) = run(Command::new("dpkg-query").args(["-W", "-f", "${Status}", package]));
    text.trim().to_string()
}

fn mode_owner(p: &str) -> (u32, u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{p}: {e}"));
    (m.permissions().mode() & 0o7777, m.uid(), m.gid())
}

fn read(p: &str) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// Purges both packages when dropped (an assertion failed or the test
/// ended), and removes what the test itself put in /etc/mailloop.
struct Purge {
    put: Vec<&'static str>,
}

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = run(Command::new("dpkg").arg("--purge").args(PACKAGES));
        for p in &self.put {
            let _ = std::fs::remove_file(p);
        }
        let _ = std::fs::remove_dir("/etc/mailloop");
    }
}

/// `cargo deb -p PACKAGE --no-build` into `out`, from `target` (whose
/// `release/` holds links to the built binaries); the .deb's path.
fn cargo_deb(package: &str, version: &str, target: &Path, out: &Path) -> PathBuf {
    let text = must(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(repo())
            .args([
                "deb",
                "-p",
                package,
                "--no-build",
                "--strip",
                "--fast",
                "--deb-version",
                version,
                "-o",
            ])
            .arg(out)
            .env("CARGO_TARGET_DIR", target),
    );
    let deb = out.join(format!("{package}_{version}_amd64.deb"));
    assert!(
        deb.exists(),
        "no {} after cargo deb:\n{text}",
        deb.display()
    );
    deb
}

/// The same package as version `version`, its files as in `deb` but
/// `edit` applied to the unpacked tree (an upgrade without a rebuild).
fn repack(deb: &Path, version: &str, out: &Path, edit: impl FnOnce(&Path)) -> PathBuf {
    let tree = out.join(format!(
        "tree-{}-{version}",
        deb.file_stem().unwrap().to_string_lossy()
    ));
    must(Command::new("dpkg-deb").arg("-R").arg(deb).arg(&tree));
    let control = tree.join("DEBIAN/control");
    let text = std::fs::read_to_string(&control).unwrap();
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("Version:") {
                format!("Version: {version}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&control, text).unwrap();
    edit(&tree);
    let name = deb
        .file_name()
        .unwrap()
        .to_string_lossy()
        .replace(TEST_VERSION, &format!("{TEST_VERSION}-next"));
    let built = out.join(name);
    must(
        Command::new("dpkg-deb")
            .args(["-Zgzip", "-z1", "--root-owner-group", "-b"])
            .arg(&tree)
            .arg(&built),
    );
    built
}

fn systemd_analyze(args: &[&str]) -> (bool, String) {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "systemd-analyze is missing: install systemd (bash tests/mailstack/install.sh installs it)"
    );
    run(Command::new("systemd-analyze").args(args))
}

#[test]
fn the_debs_install_upgrade_keep_edited_config_and_purge_cleanly() {
    // Preconditions, each with what to do about it.
    assert!(
        is_root(),
        "the package test installs .deb files with dpkg: run it as root (make test does)"
    );
    assert!(
        run(Command::new("dpkg").arg("--version")).0,
        "dpkg is missing: this test needs a Debian or Ubuntu machine"
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    assert!(
        run(Command::new(&cargo).args(["deb", "--version"])).0,
        "cargo-deb is missing: cargo install cargo-deb --locked (make deps installs it)"
    );
    let lock = std::fs::File::create("/run/lock/mailloop-packages-test.lock").unwrap();
    lock.lock().unwrap();
    for p in PACKAGES {
        match installed(p) {
            Some(v) if v.contains(TEST_VERSION) => {
                dpkg(&["--purge", p]);
            }
            Some(v) => panic!(
                "{p} {v} is installed on this machine, not by this test: refusing to replace it"
            ),
            None => {}
        }
    }

    // Build: cargo-deb over the debug binaries already built.
    let work = tempfile::tempdir().unwrap();
    let target = work.path().join("target");
    std::fs::create_dir_all(target.join("release")).unwrap();
    for b in BINARIES {
        let from = bin(b);
        let to = target.join("release").join(b);
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).unwrap();
        }
    }
    let v1 = format!("0.0.1{TEST_VERSION}1");
    let v2 = format!("0.0.1{TEST_VERSION}2");
    let coordinator_v1 = cargo_deb("mailloop-coordinator", &v1, &target, work.path());
    let agent_v1 = cargo_deb("mailloop-agent", &v1, &target, work.path());
    // The next version also changes the packaged config: dpkg must keep
    // the operator's edit and put the new one beside it.
    let upstream_change = "# changed by the next version of the package\n";
    let coordinator_v2 = repack(&coordinator_v1, &v2, work.path(), |tree| {
        let conf = tree.join("etc/mailloop/coordinator.toml");
        let text = std::fs::read_to_string(&conf).unwrap();
        std::fs::write(&conf, format!("{text}{upstream_change}")).unwrap();
    });
    let agent_v2 = repack(&agent_v1, &v2, work.path(), |_| {});

    // Install.
    let mut purge = Purge { put: Vec::new() };
    dpkg(&[
        "-i",
        coordinator_v1.to_str().unwrap(),
        agent_v1.to_str().unwrap(),
    ]);
    for p in PACKAGES {
        assert_eq!(installed(p).as_deref(), Some(v1.as_str()), "{p}");
    }
    for b in BINARIES {
        let path = format!("/usr/bin/{b}");
        assert_eq!(mode_owner(&path), (0o755, 0, 0), "{path}");
        let out = must(Command::new(&path).arg("--version"));
        assert!(out.contains(b), "{path} --version: {out}");
    }
    assert_eq!(mode_owner("/etc/mailloop"), (0o755, 0, 0), "/etc/mailloop");
    let conf = "/etc/mailloop/coordinator.toml";
    assert_eq!(
        mode_owner(conf),
        (0o644, 0, 0),
        "{conf}: readable by the service's dynamic user, no secret in it"
    );
    let (_, conffiles) =
        run(Command::new("dpkg-query").args(["-W", "-f", "${Conffiles}", "mailloop-coordinator"]));
    assert!(
        conffiles.contains(conf),
        "{conf} is a conffile: {conffiles}"
    );
    let token_path = "/etc/mailloop/admin.token";
    assert_eq!(mode_owner(token_path), (0o600, 0, 0), "{token_path}");
    let token = read(token_path);
    assert!(
        token.trim().len() == 64 && token.trim().chars().all(|c| c.is_ascii_hexdigit()),
        "the admin token made at install: 32 random bytes in hex"
    );
    for unit in UNITS {
        let path = format!("/usr/lib/systemd/system/{unit}");
        assert_eq!(mode_owner(&path), (0o644, 0, 0), "{path}");
        assert_eq!(
            read(&path),
            read(repo().join("deploy/systemd").join(unit).to_str().unwrap()),
            "{path} is deploy/systemd's"
        );
    }

    // The units and the package agree: a DynamicUser per service, no
    // system user, and the state directories made by systemd at start
    // (owned by the dynamic user), never by the package.
    for (unit, state) in [
        (UNITS[0], "mailloop-coordinator"),
        (UNITS[1], "mailloop-agent"),
    ] {
        let text = read(&format!("/usr/lib/systemd/system/{unit}"));
        assert!(text.lines().any(|l| l == "DynamicUser=yes"), "{unit}");
        assert!(
            text.lines().any(|l| l == format!("StateDirectory={state}")),
            "{unit}"
        );
        assert!(
            !text.lines().any(|l| l.starts_with("User=")),
            "{unit}: no fixed user"
        );
        assert!(
            !Path::new("/var/lib").join(state).exists(),
            "/var/lib/{state} is systemd's to make"
        );
    }
    let (has_user, _) = run(Command::new("getent").args(["passwd", "mailloop"]));
    assert!(
        !has_user,
        "no mailloop system user: the units run as a DynamicUser"
    );

    // The installed units as systemd sees them.
    let (ok, said) = systemd_analyze(&["verify", "--man=no", UNITS[0], UNITS[1]]);
    assert!(
        ok && said.trim().is_empty(),
        "systemd-analyze verify of the installed units:\n{said}"
    );
    for unit in UNITS {
        let (_, text) = systemd_analyze(&[
            "security",
            "--offline=true",
            "--no-pager",
            &format!("/usr/lib/systemd/system/{unit}"),
        ]);
        let score: f64 = text
            .lines()
            .find_map(|l| {
                l.split("Overall exposure level for ")
                    .nth(1)?
                    .split(": ")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no exposure level for {unit}:\n{text}"));
        println!("systemd-analyze security {unit} (installed): {score}");
        assert!(score <= MAX_EXPOSURE, "{unit}: {score}\n{text}");
    }

    // The shipped config is valid as it stands, given the token the
    // service gets as a credential.
    let shipped = work.path().join("coordinator.toml");
    std::fs::write(
        &shipped,
        read(conf).replace(
            "/run/credentials/mailloop-coordinator.service/admin.token",
            token_path,
        ),
    )
    .unwrap();
    must(
        Command::new("/usr/bin/mailloop-coordinator")
            .args(["check-config", "--config"])
            .arg(&shipped),
    );

    // The installed programs work together as the README's Deploy section
    // uses them: the installed coordinator on the shipped config (its own
    // ports and data directory here, so nothing else is disturbed, and one
    // check of the real mail stack in two regions), `mailloopctl
    // --token-file /etc/mailloop/admin.token agents add` once per region,
    // the one command each prints run with the installed agent, and both
    // installed agents running: a verdict with both regions delivered.
    let stack = Stack::get();
    let check = Check::new("pkg-deploy");
    let regions = [("pkg-1", "pkg-a"), ("pkg-2", "pkg-b")];
    let serving = work.path().join("serving.toml");
    std::fs::write(
        &serving,
        format!(
            "{}\n{}",
            read(shipped.to_str().unwrap())
                .replace("127.0.0.1:7443", "127.0.0.1:0")
                .replace("127.0.0.1:7480", "127.0.0.1:0")
                .replace(
                    "/var/lib/mailloop-coordinator",
                    work.path().join("data").to_str().unwrap(),
                )
                // The check's 10 s interval is shorter than production allows.
                .replace("[server]\n", "[server]\ntest_mode = true\n"),
            check_toml(&check, "10s", &regions.map(|(_, r)| r)),
        ),
    )
    .unwrap();
    let mut coordinator = Command::new("/usr/bin/mailloop-coordinator")
        .args(["serve", "--config"])
        .arg(&serving)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let said = coordinator.stdout.take().unwrap();
    let mut coordinator = Proc::new(coordinator);
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(said),
        &mut line,
    )
    .unwrap();
    let http = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http="))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("the installed coordinator did not say where it serves: {line:?}"));
    let ctl = |args: &[&str]| {
        run(Command::new("/usr/bin/mailloopctl")
            .args(["--url", &format!("http://{http}"), "--token-file", token_path])
            .args(args))
    };
    let mut agents = Vec::new();
    for (name, region) in regions {
        let added = ctl(&["agents", "add", name, "--region", region]);
        assert!(added.0, "mailloopctl agents add with the admin token made at install:\n{}", added.1);
        let join = added
            .1
            .lines()
            .find_map(|l| l.strip_prefix("mailloop-agent enroll '")?.strip_suffix('\''))
            .unwrap_or_else(|| panic!("agents add printed no one command:\n{}", added.1));
        let vm = work.path().join(name);
        let (ok, said) = run(Command::new("/usr/bin/mailloop-agent")
            .args(["enroll", join, "--config"])
            .arg(vm.join("agent.toml"))
            .arg("--spool")
            .arg(vm.join("spool.db")));
        assert!(ok && said.contains(&format!("enrolled as agent {name} in region {region}")), "{said}");
        // The VM's own settings beside what enroll wrote: the stack's resolver.
        let config = vm.join("agent.toml");
        std::fs::write(
            &config,
            format!("{}\n[dns]\nnameservers = [\"{}:53\"]\n", read(config.to_str().unwrap()), stack.var("MAILSTACK_DNS")),
        )
        .unwrap();
        let log = std::fs::File::create(vm.join("agent.log")).unwrap();
        agents.push(Proc::new(
            Command::new("/usr/bin/mailloop-agent")
                .args(["run", "--config"])
                .arg(&config)
                .env(SMTP_PASS_ENV, stack.var("MAILSTACK_SMTP_PASS"))
                .env(IMAP_PASS_ENV, stack.var("MAILSTACK_IMAP_PASS"))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        ));
    }
    let verdict = wait_until(DEADLINE, "a verdict of the check with both enrolled regions delivered", || {
        let (ok, out) = ctl(&["-o", "json", "status"]);
        let body: serde_json::Value = serde_json::from_str(ok.then_some(out)?.trim()).ok()?;
        let c = body["checks"].as_array()?.iter().find(|c| c["check"] == check.name.as_str())?.clone();
        let delivered = regions.iter().all(|(name, region)| {
            c["regions"]
                .as_array()
                .is_some_and(|rs| rs.iter().any(|r| r["region"] == *region && r["agent"] == *name && r["state"] == "ok"))
        });
        delivered.then_some(c)
    });
    assert_eq!(verdict["verdict"], "up", "{verdict}");
    drop(agents);
    coordinator.kill();

    // The operator edits the config, enroll writes the agent's, the
    // operator adds a certificate of theirs.
    let edit = "# edited by the operator\n";
    std::fs::write(conf, format!("{}{edit}", read(conf))).unwrap();
    let edited = read(conf);
    let agent_conf = "/etc/mailloop/agent.toml";
    purge.put.push(agent_conf);
    std::fs::write(agent_conf, "# written by mailloop-agent enroll\n").unwrap();
    std::fs::set_permissions(agent_conf, std::fs::Permissions::from_mode(0o600)).unwrap();
    let operator_file = "/etc/mailloop/coordinator.pem";
    purge.put.push(operator_file);
    std::fs::write(operator_file, "the operator's certificate\n").unwrap();

    // Reinstalled: all kept.
    dpkg(&[
        "-i",
        coordinator_v1.to_str().unwrap(),
        agent_v1.to_str().unwrap(),
    ]);
    assert_eq!(read(conf), edited, "a reinstall kept the edited conffile");
    assert_eq!(read(token_path), token, "a reinstall kept the admin token");
    // Upgraded to a version whose packaged config changed too: the edit is
    // kept, the new packaged one lands beside it.
    dpkg(&[
        "-i",
        coordinator_v2.to_str().unwrap(),
        agent_v2.to_str().unwrap(),
    ]);
    for p in PACKAGES {
        assert_eq!(installed(p).as_deref(), Some(v2.as_str()), "{p}");
    }
    assert_eq!(read(conf), edited, "the upgrade kept the edited conffile");
    let dist = read("/etc/mailloop/coordinator.toml.dpkg-dist");
    assert!(
        dist.ends_with(upstream_change) && !dist.contains(edit),
        "{dist}"
    );
    assert_eq!(read(token_path), token, "the upgrade kept the admin token");
    assert_eq!(
        read(agent_conf),
        "# written by mailloop-agent enroll\n",
        "the upgrade kept enroll's config"
    );

    // Removed: the programs go, the config stays.
    dpkg(&["-r", "mailloop-agent"]);
    assert!(!Path::new("/usr/bin/mailloop-agent").exists());
    assert!(
        status("mailloop-agent").contains("config-files"),
        "{}",
        status("mailloop-agent")
    );
    assert!(
        Path::new(agent_conf).exists(),
        "remove keeps what enroll wrote"
    );

    // Purged: nothing of theirs is left; the operator's own file stays.
    dpkg(&["--purge", "mailloop-agent", "mailloop-coordinator"]);
    for p in PACKAGES {
        let s = status(p);
        assert!(
            installed(p).is_none() && !s.contains("config-files"),
            "{p}: {s}"
        );
    }
    let mut left: Vec<String> = Vec::new();
    for b in BINARIES {
        left.push(format!("/usr/bin/{b}"));
    }
    for unit in UNITS {
        left.push(format!("/usr/lib/systemd/system/{unit}"));
        left.push(format!("/etc/systemd/system/{unit}"));
        left.push(format!(
            "/etc/systemd/system/multi-user.target.wants/{unit}"
        ));
    }
    for f in [
        "coordinator.toml",
        "coordinator.toml.dpkg-dist",
        "admin.token",
        "agent.toml",
    ] {
        left.push(format!("/etc/mailloop/{f}"));
    }
    for d in ["mailloop-coordinator", "mailloop-agent"] {
        left.push(format!("/var/lib/{d}"));
        left.push(format!("/var/lib/private/{d}"));
        left.push(format!("/usr/share/doc/{d}"));
    }
    let left: Vec<&String> = left
        .iter()
        .filter(|p| std::fs::symlink_metadata(p).is_ok())
        .collect();
    assert!(left.is_empty(), "left after purge: {left:?}");
    let helper = Path::new("/var/lib/systemd/deb-systemd-helper-enabled");
    let states: Vec<String> = std::fs::read_dir(helper)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains("mailloop"))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        states.is_empty(),
        "deb-systemd-helper state left: {states:?}"
    );
    assert_eq!(
        read(operator_file),
        "the operator's certificate\n",
        "purge leaves the operator's own files"
    );
    drop(purge);
}

/// Whether this process runs as root (`id -u`; no libc binding needed).
fn is_root() -> bool {
    run(Command::new("id").arg("-u")).1.trim() == "0"
}
