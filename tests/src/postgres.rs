//! A throwaway PostgreSQL server for tests: the real server from the
//! Debian `postgresql` package, started once per test binary in a temporary
//! directory on a free loopback port, and stopped (its directory removed)
//! when the test binary exits, however it exits.
//!
//! `initdb` and `postgres` refuse to run as root, so when the tests run as
//! root the server runs as the `postgres` user the package creates. Each
//! test takes its own database ([`Postgres::database`]), so tests run in
//! parallel without seeing each other's rows. A missing package is a test
//! failure naming the install command, never a skip.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// What to run when PostgreSQL is missing.
const INSTALL_HINT: &str =
    "PostgreSQL 15 is not installed: run `make deps` (or `apt-get install postgresql`)";

/// The running server of this test binary.
pub struct Postgres {
    port: u16,
    bin: PathBuf,
    /// The cluster's data directory (for `pg_ctl` stop and start).
    data: PathBuf,
    /// The server's options, for a start after [`Postgres::stop_fast`].
    options: String,
    /// Whether it runs as the `postgres` user (the tests run as root).
    as_postgres: bool,
    /// Held open: the server's wrapper stops it when this closes (at exit).
    _stdin: Mutex<ChildStdin>,
    _child: Mutex<Child>,
    /// The server's last log lines, for failure messages.
    log: Arc<Mutex<Vec<String>>>,
    next: AtomicUsize,
}

impl Postgres {
    /// The server of this test binary, started on first use.
    pub fn get() -> &'static Postgres {
        static PG: OnceLock<Postgres> = OnceLock::new();
        PG.get_or_init(Postgres::start)
    }

    /// A server of the caller's own, for a test that stops and starts it
    /// ([`Postgres::stop_fast`], [`Postgres::start_again`]) without
    /// disturbing the tests sharing [`Postgres::get`]. Stopped, and its
    /// directory removed, when dropped (or when the test binary exits).
    pub fn dedicated() -> Postgres {
        Postgres::start()
    }

    fn start() -> Postgres {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("mailloop-pg-")
            .tempdir()
            .expect("a temporary directory")
            .keep();
        let data = dir.join("data");
        let user = server_user();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown the PostgreSQL directory");
        }
        let out = as_server_user(user.is_some(), &bin.join("initdb"))
            .args(["-D", path(&data), "-U", "mailloop", "-A", "trust", "-E", "UTF8", "--no-sync", "--no-instructions"])
            .output()
            .unwrap_or_else(|e| panic!("initdb: {e}; {INSTALL_HINT}"));
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let options = format!(
            "-p {port} -k {dir} -c listen_addresses=127.0.0.1 -c fsync=off \
             -c full_page_writes=off -c max_connections=400 -c shared_buffers=64MB",
            dir = path(&dir),
        );
        // The wrapper starts the server, waits for its stdin (our pipe) to
        // close, which happens when this process ends for any reason (or
        // the `Postgres` is dropped), then stops the server fast (whichever
        // postmaster runs on the directory by then: a test may have started
        // it again with `pg_ctl`) and removes the directory.
        let script = format!(
            "{postgres} -D {data} {options} & pid=$!; \
             read _; {pg_ctl} -D {data} stop -m fast >/dev/null 2>&1; wait $pid; rm -rf {dir}",
            postgres = path(&bin.join("postgres")),
            pg_ctl = path(&bin.join("pg_ctl")),
            data = path(&data),
            dir = path(&dir),
        );
        let mut child = as_server_user(user.is_some(), Path::new("/bin/sh"))
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start postgres: {e}; {INSTALL_HINT}"));
        let stdin = child.stdin.take().expect("piped stdin");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let keep = log.clone();
        std::thread::spawn(move || {
            let mut ready = Some(ready_tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("ready to accept connections") {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                }
                let mut log = keep.lock().unwrap();
                log.push(line);
                let n = log.len();
                if n > 200 {
                    log.drain(..n - 200);
                }
            }
            // The server's stderr closed: it is gone (or never started).
        });
        if ready_rx.recv().is_err() {
            panic!("PostgreSQL did not start:\n{}", log.lock().unwrap().join("\n"));
        }
        Postgres {
            port,
            bin,
            data,
            options,
            as_postgres: user.is_some(),
            _stdin: Mutex::new(stdin),
            _child: Mutex::new(child),
            log,
            next: AtomicUsize::new(0),
        }
    }

    /// `pg_ctl stop -m fast`: every session ends (clients see their
    /// connections closed), the server is down until [`Postgres::start_again`].
    pub fn stop_fast(&self) {
        self.pg_ctl(&["stop", "-m", "fast", "-w"]);
    }

    /// `pg_ctl start` on the same directory and port, after
    /// [`Postgres::stop_fast`]; returns once it accepts connections. Its
    /// log goes to `restart.log` beside the data directory.
    pub fn start_again(&self) {
        let log = self.data.parent().expect("the data directory's parent").join("restart.log");
        self.pg_ctl(&["start", "-w", "-t", "120", "-l", path(&log), "-o", &self.options]);
    }

    fn pg_ctl(&self, args: &[&str]) {
        let out = as_server_user(self.as_postgres, &self.bin.join("pg_ctl"))
            .args(["-D", path(&self.data)])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("pg_ctl: {e}; {INSTALL_HINT}"));
        assert!(
            out.status.success(),
            "pg_ctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A new, empty database of this test's own; returns its URL.
    pub fn database(&self, test: &str) -> String {
        let name = format!(
            "t{}_{}",
            self.next.fetch_add(1, Ordering::Relaxed),
            test.chars().filter(|c| c.is_ascii_alphanumeric()).take(40).collect::<String>().to_lowercase()
        );
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    /// The URL of database `name` (user `mailloop`, no password: trust on loopback).
    pub fn url(&self, name: &str) -> String {
        format!("postgres://mailloop@127.0.0.1:{}/{name}?sslmode=disable", self.port)
    }

    /// Runs one SQL command through `psql`; panics with its error.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "mailloop", "-d", db])
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .unwrap_or_else(|e| panic!("psql: {e}; {INSTALL_HINT}"));
        assert!(
            out.status.success(),
            "psql {sql:?}: {}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log.lock().unwrap().join("\n")
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// The directory of the newest installed PostgreSQL's programs.
fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("MAILLOOP_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .unwrap_or_else(|e| panic!("/usr/lib/postgresql: {e}; {INSTALL_HINT}"))
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).unwrap_or_else(|| panic!("no initdb under /usr/lib/postgresql; {INSTALL_HINT}"))
}

/// Root runs the server as `postgres` (uid, gid); anyone else as themselves.
fn server_user() -> Option<(u32, u32)> {
    let me = std::fs::metadata("/proc/self").expect("/proc/self").uid();
    if me != 0 {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id").args([flag, "postgres"]).output().expect("id");
        assert!(out.status.success(), "no `postgres` user to run the server as; {INSTALL_HINT}");
        String::from_utf8_lossy(&out.stdout).trim().parse().expect("a numeric id")
    };
    Some((id("-u"), id("-g")))
}

fn as_server_user(switch: bool, program: &Path) -> Command {
    if switch {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port").local_addr().unwrap().port()
}

