//! A real cluster for reliability tests: a `mailloop-coordinator serve`
//! process and `mailloop-agent run` processes, all in one tempdir, talking
//! over loopback; the admin API read with a tiny HTTP/1.1 client; the
//! agents' own probe-id log read straight from their spool databases.
//!
//! Every process is killed when its guard drops. Nothing here sleeps to
//! synchronise: [`wait_until`] polls a condition against a deadline.

use crate::backend::Backend;
use crate::{Check, Stack};
use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ADMIN_TOKEN: &str = "admin-token-for-distributed-tests-0123";
/// Environment variables the agents resolve the check's passwords from.
pub const SMTP_PASS_ENV: &str = "MAILLOOP_TEST_SMTP_PASS";
pub const IMAP_PASS_ENV: &str = "MAILLOOP_TEST_IMAP_PASS";
/// The two regions every test cluster has, one agent each.
pub const AGENTS: [(&str, &str); 2] = [("eu-1", "eu-west"), ("us-1", "us-east")];

/// A workspace binary, built by `cargo build --workspace --bins` beside the
/// test binary (target/<profile>/deps/<test> → target/<profile>/<name>).
/// Starts `mailloop-agent run --config CONFIG` with the stack's passwords in
/// the environment the test checks name, its stderr appended to `log` at
/// `level` (protocol crates kept at info).
pub fn spawn_agent_run(config: &Path, log: &Path, level: &str) -> Child {
    let s = Stack::get();
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    Command::new(bin("mailloop-agent"))
        .args(["run", "--config"])
        .arg(config)
        .env("MAILLOOP_LOG", format!("{level},h2=info,tower=info,hyper=info,rustls=info"))
        .env(SMTP_PASS_ENV, s.var("MAILSTACK_SMTP_PASS"))
        .env(IMAP_PASS_ENV, s.var("MAILSTACK_IMAP_PASS"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(Path::parent).unwrap().join(name);
    assert!(bin.exists(), "{} is missing: run `cargo build --workspace --bins` first (make test does)", bin.display());
    bin
}

/// Polls `f` every 100 ms until it returns `Some`, or panics after `within`
/// naming `what` (and the last value seen, via `f`'s own message).
///
/// `within` is stretched by [`crate::patience`]; the panic message says how
/// the mail stack is doing, so a dead fixture is not mistaken for a bug.
pub fn wait_until<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let within = crate::patience(within);
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for {what}\n{}", crate::stack_health());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The check's `[[check]]` table for the coordinator: the harness's probe
/// config with `interval` and `regions`, passwords as `password_env`
/// references, and without the probe's `[dns]` (the agents have their own).
pub fn check_toml(check: &Check, interval: &str, regions: &[&str]) -> String {
    let s = Stack::get();
    let mut c = check.clone();
    let regions = regions.iter().map(|r| format!("{r:?}")).collect::<Vec<_>>().join(", ");
    c.check_extra.push(format!("interval = {interval:?}"));
    c.check_extra.push(format!("regions = [{regions}]"));
    let toml = c.toml();
    let toml = toml.split("[dns]").next().unwrap().to_string();
    let smtp = format!("password = {:?}\n", s.var("MAILSTACK_SMTP_PASS"));
    let imap = format!("password = {:?}\n", check.imap_pass);
    assert!(toml.contains(&smtp) && toml.contains(&imap), "{toml}");
    toml.replacen(&smtp, &format!("password_env = {SMTP_PASS_ENV:?}\n"), 1)
        .replacen(&imap, &format!("password_env = {IMAP_PASS_ENV:?}\n"), 1)
}

/// A child process, killed (SIGKILL) and reaped on drop.
pub struct Proc {
    child: Option<Child>,
}

impl Proc {
    /// Guards a child the caller spawned (killed and reaped on drop).
    pub fn new(child: Child) -> Proc {
        Proc { child: Some(child) }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill").args([&format!("-{sig}"), &self.pid().to_string()]).status().unwrap();
        assert!(status.success(), "kill -{sig} failed");
    }

    /// `kill -9` and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the process to exit by itself; its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let child = self.child.as_mut().expect("running");
        let status = wait_until(within, "the process to exit", || child.try_wait().unwrap());
        self.child = None;
        status.code()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The coordinator process and its config.
pub struct Coordinator {
    pub dir: PathBuf,
    pub proc: Option<Proc>,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    /// Where `/metrics` is served (`http` unless `metrics_listen` is set).
    pub metrics: SocketAddr,
    checks: String,
    /// The `[[agent]]`s its config declares: (name, region).
    agents: Vec<(String, String)>,
    /// Its `[storage] url` (None: SQLite in `data_dir`).
    storage: Option<String>,
}

impl Coordinator {
    /// Starts a coordinator on a config the caller wrote whole (other
    /// agents, `[incidents]`, `[[alert]]`...): `dir/coordinator.toml`, with
    /// `127.0.0.1:0` listen addresses; reads the real ones from its stdout.
    pub fn start_with_config(dir: &Path, config: &str) -> Coordinator {
        let mut c = Coordinator {
            dir: dir.to_path_buf(),
            proc: None,
            grpc: "0.0.0.0:0".parse().unwrap(),
            http: "0.0.0.0:0".parse().unwrap(),
            metrics: "0.0.0.0:0".parse().unwrap(),
            checks: String::new(),
            agents: AGENTS.iter().map(|(n, r)| (n.to_string(), r.to_string())).collect(),
            storage: None,
        };
        std::fs::write(c.config_path(), config).unwrap();
        c.launch();
        c
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("coordinator.toml")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("coordinator.log")
    }

    fn write_config(&self, grpc: &str, http: &str) {
        let mut agents = String::new();
        for (name, region) in &self.agents {
            let file = self.dir.join(format!("{name}.token"));
            agents.push_str(&format!("\n[[agent]]\nname = \"{name}\"\nregion = \"{region}\"\ntoken_file = {file:?}\n"));
        }
        let storage = match &self.storage {
            Some(url) => format!("\n[storage]\nurl = {url:?}\n"),
            None => String::new(),
        };
        let config = format!(
            "[server]\ngrpc_listen = {grpc:?}\nhttp_listen = {http:?}\ndata_dir = {:?}\nadmin_token_file = {:?}\n\
             test_mode = true\nheartbeat = \"2s\"\nshutdown_grace = \"5s\"\n{storage}{agents}\n{}",
            self.dir.join("data"),
            self.dir.join("admin.token"),
            self.checks,
        );
        std::fs::write(self.config_path(), config).unwrap();
    }

    /// Starts the process on the config as written; reads its addresses.
    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).unwrap();
        let mut child = Command::new(bin("mailloop-coordinator"))
            .args(["serve", "--config"])
            .arg(self.config_path())
            .env("MAILLOOP_LOG", "debug,h2=info,tower=info,hyper=info,tokio_postgres=info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let proc = Proc { child: Some(child) };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(crate::patience(Duration::from_secs(30)))
            .unwrap_or_else(|_| panic!("the coordinator did not start:\n{}", std::fs::read_to_string(self.log_path()).unwrap_or_default()));
        let addr = |key: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        };
        self.grpc = addr("grpc=");
        self.http = addr("http=");
        self.metrics = addr("metrics=");
        self.proc = Some(proc);
    }

    /// Starts again on the same data_dir and the same ports as the first run.
    pub fn restart(&mut self) {
        assert!(self.proc.is_none(), "still running");
        self.write_config(&self.grpc.to_string(), &self.http.to_string());
        let (grpc, http) = (self.grpc, self.http);
        self.launch();
        assert_eq!((self.grpc, self.http), (grpc, http), "restarted on other ports");
    }

    /// Starts again on the config file the caller wrote whole
    /// ([`Coordinator::start_with_config`]), on the ports of the first run
    /// (its `127.0.0.1:0` listen addresses are replaced by them).
    pub fn restart_as_written(&mut self) {
        assert!(self.proc.is_none(), "still running");
        let config = std::fs::read_to_string(self.config_path()).unwrap();
        let config = config
            .replace("grpc_listen = \"127.0.0.1:0\"", &format!("grpc_listen = \"{}\"", self.grpc))
            .replace("http_listen = \"127.0.0.1:0\"", &format!("http_listen = \"{}\"", self.http));
        std::fs::write(self.config_path(), config).unwrap();
        let (grpc, http) = (self.grpc, self.http);
        self.launch();
        assert_eq!((self.grpc, self.http), (grpc, http), "restarted on other ports");
    }

    /// `kill -9`: no shutdown code runs.
    pub fn kill9(&mut self) {
        self.proc.take().expect("running").kill();
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(&mut self) {
        let mut p = self.proc.take().expect("running");
        p.signal("TERM");
        assert_eq!(p.wait_exit(Duration::from_secs(15)), Some(0), "the coordinator did not stop cleanly");
    }

    /// GET `path` on the admin API: (status, JSON body).
    pub fn get(&self, path: &str) -> (u16, Value) {
        http_get(self.http, path).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// GET that must answer 200.
    pub fn get_ok(&self, path: &str) -> Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// Every stored result of `check` (paging through the API), newest first.
    pub fn results(&self, check: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/api/v1/results?check={check}&limit=1000");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let body = self.get_ok(&path);
            out.extend(body["results"].as_array().expect("results").iter().cloned());
            match body["next"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return out,
            }
        }
    }

    /// Runs `mailloopctl` against this coordinator: (exit code, stdout, stderr).
    pub fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(bin("mailloopctl"))
            .args(["--url", &format!("http://{}", self.http)])
            .args(args)
            .env("MAILLOOP_TOKEN", ADMIN_TOKEN)
            .output()
            .unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// One `mailloop-agent run` process.
pub struct Agent {
    pub name: String,
    pub region: String,
    pub proc: Option<Proc>,
    dir: PathBuf,
    /// Appended to the agent's config (a `[telemetry]` table).
    extra: String,
}

impl Agent {
    pub fn spool_path(&self) -> PathBuf {
        self.dir.join(format!("{}.spool.db", self.name))
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.name))
    }

    /// Starts the process (again, after a kill: same config, same spool).
    pub fn launch(&mut self, coordinator: SocketAddr) {
        assert!(self.proc.is_none(), "agent {} is still running", self.name);
        let s = Stack::get();
        let config = self.dir.join(format!("{}.toml", self.name));
        std::fs::write(
            &config,
            format!(
                "[agent]\nname = {:?}\nregion = {:?}\ncoordinator_url = \"http://{coordinator}\"\ntoken_file = {:?}\n\
                 spool = {:?}\nshutdown_grace = \"5s\"\nmetrics_listen = \"127.0.0.1:0\"\n[dns]\nnameservers = [\"{}:53\"]\n{}",
                self.name,
                self.region,
                self.dir.join(format!("{}.token", self.name)),
                self.spool_path(),
                s.var("MAILSTACK_DNS"),
                self.extra,
            ),
        )
        .unwrap();
        let child = spawn_agent_run(&config, &self.log_path(), "debug");
        self.proc = Some(Proc { child: Some(child) });
    }

    /// Where this run of the agent serves `/metrics` (every test agent
    /// has `metrics_listen = "127.0.0.1:0"`; the address is in its log).
    pub fn metrics_addr(&self) -> SocketAddr {
        wait_until(Duration::from_secs(30), &format!("agent {} to serve /metrics", self.name), || {
            let log = self.log();
            let line = log.lines().rev().find(|l| l.contains("serving /metrics on http://"))?;
            line.split("http://").nth(1)?.split('/').next()?.parse().ok()
        })
    }

    /// The agent's own account of what it ran (the spool's `probe_log`), oldest first.
    pub fn probe_log(&self) -> Vec<ProbeRun> {
        self.query("SELECT probe_id, check_id, revision, round, started_ms FROM probe_log ORDER BY seq", |r| {
            Ok(ProbeRun { probe_id: r.get(0)?, check: r.get(1)?, revision: r.get::<_, i64>(2)? as u64, round: r.get::<_, i64>(3)? as u64, started_ms: r.get(4)?, agent: self.name.clone() })
        })
    }

    /// `kill -9` and reap: no shutdown code runs.
    pub fn kill9(&mut self) {
        self.proc.take().expect("running").kill();
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.proc.as_mut().and_then(|p| p.child.as_mut()).is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Reports spooled and not yet acknowledged.
    pub fn spooled(&self) -> usize {
        self.query("SELECT count(*) FROM reports", |r| r.get::<_, i64>(0)).first().copied().unwrap_or(0) as usize
    }

    fn query<T>(&self, sql: &str, f: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>) -> Vec<T> {
        let path = self.spool_path();
        if !path.exists() {
            return Vec::new();
        }
        let conn = rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        let mut stmt = match conn.prepare(sql) {
            Ok(s) => s,
            // The agent has not created its tables yet.
            Err(e) if e.to_string().contains("no such table") => return Vec::new(),
            Err(e) => panic!("{}: {e}", path.display()),
        };
        stmt.query_map([], f).unwrap().map(Result::unwrap).collect()
    }
}

/// One row of an agent's probe log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeRun {
    pub probe_id: String,
    pub check: String,
    pub revision: u64,
    pub round: u64,
    pub started_ms: i64,
    pub agent: String,
}

/// A coordinator and one agent per region, in one tempdir.
pub struct Cluster {
    // Declared first: processes die before their files are removed.
    pub agents: Vec<Agent>,
    pub coordinator: Coordinator,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts the coordinator with `checks` (`[[check]]` tables, may be
    /// empty) in its config, then the agents, and waits until both agents
    /// are connected.
    pub fn start(checks: &str) -> Cluster {
        Cluster::start_with_agents(checks, &AGENTS)
    }

    /// Like [`Cluster::start`], with these agents (name, region) declared
    /// in the coordinator's config and started (e.g. two in one region).
    pub fn start_with_agents(checks: &str, declared: &[(&str, &str)]) -> Cluster {
        Cluster::start_configured(checks, declared, "")
    }

    /// Like [`Cluster::start_with_agents`]; `checks` may hold other
    /// top-level tables of the coordinator's config too (`[telemetry]`),
    /// and `agent_extra` is appended to every agent's config.
    pub fn start_configured(checks: &str, declared: &[(&str, &str)], agent_extra: &str) -> Cluster {
        Cluster::start_configured_on(Backend::Sqlite, checks, declared, agent_extra)
    }

    /// [`Cluster::start`] with the coordinator on `backend`.
    pub fn start_on(backend: Backend, checks: &str) -> Cluster {
        Cluster::start_configured_on(backend, checks, &AGENTS, "")
    }

    /// [`Cluster::start_with_agents`] with the coordinator on `backend`.
    pub fn start_with_agents_on(backend: Backend, checks: &str, declared: &[(&str, &str)]) -> Cluster {
        Cluster::start_configured_on(backend, checks, declared, "")
    }

    /// [`Cluster::start_configured`] with the coordinator on `backend`
    /// (on PostgreSQL, a database of its own).
    pub fn start_configured_on(backend: Backend, checks: &str, declared: &[(&str, &str)], agent_extra: &str) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("admin.token"), ADMIN_TOKEN).unwrap();
        for (name, _) in declared {
            std::fs::write(dir.path().join(format!("{name}.token")), format!("token-{name}-for-distributed-tests")).unwrap();
        }
        let mut coordinator = Coordinator {
            dir: dir.path().to_path_buf(),
            proc: None,
            grpc: "0.0.0.0:0".parse().unwrap(),
            http: "0.0.0.0:0".parse().unwrap(),
            metrics: "0.0.0.0:0".parse().unwrap(),
            checks: checks.to_string(),
            agents: declared.iter().map(|(n, r)| (n.to_string(), r.to_string())).collect(),
            storage: backend.storage_url("cluster"),
        };
        coordinator.write_config("127.0.0.1:0", "127.0.0.1:0");
        coordinator.launch();
        let mut agents = Vec::new();
        for (name, region) in declared {
            let mut a = Agent {
                name: name.to_string(),
                region: region.to_string(),
                proc: None,
                dir: dir.path().to_path_buf(),
                extra: agent_extra.to_string(),
            };
            a.launch(coordinator.grpc);
            agents.push(a);
        }
        let c = Cluster { agents, coordinator, dir };
        c.wait_connected();
        c
    }

    /// Starts one more agent with `token` (say one `mailloopctl agents
    /// add` issued) and waits until it is connected; its index in `agents`.
    pub fn launch_agent(&mut self, name: &str, region: &str, token: &str) -> usize {
        std::fs::write(self.dir.path().join(format!("{name}.token")), token).unwrap();
        let mut a = Agent { name: name.into(), region: region.into(), proc: None, dir: self.dir.path().to_path_buf(), extra: String::new() };
        a.launch(self.coordinator.grpc);
        self.agents.push(a);
        self.wait_connected();
        self.agents.len() - 1
    }

    /// Waits until every running agent has an open assignment stream.
    pub fn wait_connected(&self) {
        let running: Vec<&str> = self.agents.iter().filter(|a| a.proc.is_some()).map(|a| a.name.as_str()).collect();
        wait_until(Duration::from_secs(30), &format!("agents {running:?} connected"), || {
            let body = self.coordinator.get_ok("/api/v1/agents");
            let agents = body["agents"].as_array()?.clone();
            running
                .iter()
                .all(|n| agents.iter().any(|a| a["name"] == *n && a["connected"] == true))
                .then_some(())
        });
    }

    /// Every agent's probe log, for `check`.
    pub fn probe_log(&self, check: &str) -> Vec<ProbeRun> {
        self.agents.iter().flat_map(Agent::probe_log).filter(|r| r.check == check).collect()
    }

    /// Stored results of `check` by (region, round).
    pub fn rounds(&self, check: &str) -> HashMap<(String, u64), Vec<Value>> {
        let mut m: HashMap<(String, u64), Vec<Value>> = HashMap::new();
        for r in self.coordinator.results(check) {
            m.entry((r["region"].as_str().unwrap().to_string(), r["round"].as_u64().unwrap())).or_default().push(r);
        }
        m
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for a in &mut self.agents {
            a.proc.take();
        }
        self.coordinator.proc.take();
        if std::thread::panicking() {
            let tail = |p: PathBuf| {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(60)..].join("\n")
            };
            eprintln!("---- coordinator log (tail) ----\n{}", tail(self.coordinator.log_path()));
            for a in &self.agents {
                eprintln!("---- agent {} log (tail) ----\n{}", a.name, tail(a.log_path()));
            }
        }
    }
}

/// A minimal HTTP/1.1 GET (one request per connection, with the admin
/// token: every API read needs a token) returning the status and the JSON body.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, Value), String> {
    http_get_as(addr, path, ADMIN_TOKEN)
}

/// [`http_get`] with another bearer token.
pub fn http_get_as(addr: SocketAddr, path: &str, token: &str) -> Result<(u16, Value), String> {
    get(addr, path, token, Duration::from_secs(10))
}

/// [`http_get`] that waits up to `within` (stretched by [`crate::patience`])
/// for the answer: for a request that may be slow but must be answered.
pub fn http_get_within(addr: SocketAddr, path: &str, within: Duration) -> Result<(u16, Value), String> {
    get(addr, path, ADMIN_TOKEN, crate::patience(within))
}

fn get(addr: SocketAddr, path: &str, token: &str, within: Duration) -> Result<(u16, Value), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(within)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: application/json\r\nAuthorization: Bearer {token}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no end of headers")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut body = raw[split + 4..].to_vec();
    let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| format!("bad status line: {head}"))?;
    if head.lines().any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.to_ascii_lowercase().contains("chunked")) {
        body = dechunk(&body)?;
    }
    let json = if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&body)))? };
    Ok((status, json))
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n").ok_or("bad chunk")?;
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..nl]).split(';').next().unwrap().trim(), 16).map_err(|e| e.to_string())?;
        b = &b[nl + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}
