//! Test harness: a real `mailloop-coordinator` process on 127.0.0.1 with
//! ports picked by binding port 0, a tonic client acting as an agent, and
//! the admin API client. One helper per concern, so each test reads like
//! the spec.
#![allow(dead_code)]

use mailloop_coordinator::client::{ApiResponse, Client};
use mailloop_proto::pb;
use mailloop_proto::pb::agent_service_client::AgentServiceClient;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";
/// A `[[token]]` with the read role, named `grafana`.
pub const READ_TOKEN: &str = "read-token-for-tests-0123456789";
/// Config-declared agents: name, region, token.
pub const AGENTS: [(&str, &str, &str); 3] = [
    ("eu-1", "eu-west", "token-eu-1-0123456789abcdef"),
    ("eu-2", "eu-west", "token-eu-2-0123456789abcdef"),
    ("us-1", "us-east", "token-us-1-0123456789abcdef"),
];
/// How long the tests wait for something that happens at once on an idle
/// machine (an ack, an assignment change, a log line): generous, so a loaded
/// machine slows a test down instead of failing it. How fast these things
/// are is measured by `make bench`, not here.
pub const DEADLINE: Duration = Duration::from_secs(60);

pub fn token(agent: &str) -> &'static str {
    AGENTS
        .iter()
        .find(|(n, _, _)| *n == agent)
        .map(|(_, _, t)| *t)
        .expect("a declared agent")
}

/// A `[[check]]` table (as the API takes it).
pub fn check_table(name: &str, regions: &[&str], interval: &str) -> Value {
    json!({
        "name": name,
        "from": "probe@sender.test",
        "to": "probe@receiver.test",
        "interval": interval,
        "regions": regions,
        "smtp": {"host": "127.0.0.1", "port": 2525, "security": "none"},
        "imap": {"host": "127.0.0.1", "security": "none", "username": "probe@receiver.test", "password_env": "IMAP_PASS"},
    })
}

/// The same check in TOML, for config files.
pub fn check_toml(name: &str, regions: &[&str], interval: &str) -> String {
    let regions = regions
        .iter()
        .map(|r| format!("{r:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
[[check]]
name = "{name}"
from = "probe@sender.test"
to = "probe@receiver.test"
interval = "{interval}"
regions = [{regions}]
[check.smtp]
host = "127.0.0.1"
port = 2525
security = "none"
[check.imap]
host = "127.0.0.1"
security = "none"
username = "probe@receiver.test"
password_env = "IMAP_PASS"
"#
    )
}

/// A probe report as `mailloop-agent probe --output json` writes it.
pub fn report_json(probe_id: &str, check: &str) -> String {
    json!({
        "probe_id": probe_id,
        "check": check,
        "started_at": "2026-11-27T23:17:08.596634Z",
        "outcome": "ok",
        "rtt_ms": 35.2,
        "delivery_ms": 20.3,
        "steps": [
            {"name": "smtp.connect", "ms": 0.5, "ok": true, "detail": "127.0.0.1:2525", "start_ms": 0.0},
            {"name": "smtp.banner", "ms": 1.6, "ok": true, "code": 220, "start_ms": 0.5}
        ],
        "failure": null,
        "message_id": format!("<{probe_id}@sender.test>"),
        "queue_id": "93118BC5C0",
    })
    .to_string()
}

pub fn result(probe_id: &str, check: &str, round: u64) -> pb::ProbeResult {
    pb::ProbeResult {
        probe_id: probe_id.into(),
        check_id: check.into(),
        revision: 1,
        round,
        report_json: report_json(probe_id, check),
        request_id: String::new(),
    }
}

/// A coordinator process and its files.
pub struct Coordinator {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    /// Where the public status page is (the admin listener unless `[status] listen`).
    pub status: SocketAddr,
}

pub type Agent = AgentServiceClient<InterceptedService<Channel, Bearer>>;

#[derive(Clone)]
pub struct Bearer(Option<String>);

impl Bearer {
    pub fn token(t: &str) -> Bearer {
        Bearer(Some(t.to_string()))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut().insert(
                "authorization",
                format!("Bearer {t}").parse().expect("ascii"),
            );
        }
        Ok(req)
    }
}

impl Coordinator {
    /// Starts a coordinator with the declared agents and `extra` appended
    /// to the config (checks, mostly). `server_extra` goes into `[server]`.
    pub fn start(server_extra: &str, extra: &str) -> Coordinator {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("admin.token"), ADMIN_TOKEN).unwrap();
        let mut agents = String::new();
        for (name, region, token) in AGENTS {
            let file = dir.path().join(format!("{name}.token"));
            std::fs::write(&file, token).unwrap();
            agents.push_str(&format!(
                "\n[[agent]]\nname = \"{name}\"\nregion = \"{region}\"\ntoken_file = {:?}\n",
                file
            ));
        }
        let read_token = dir.path().join("grafana.token");
        std::fs::write(&read_token, READ_TOKEN).unwrap();
        agents.push_str(&format!("\n[[token]]\nname = \"grafana\"\nrole = \"read\"\ntoken_file = {read_token:?}\n"));
        let config = format!(
            "[server]\ngrpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\ndata_dir = {:?}\nadmin_token_file = {:?}\ntest_mode = true\nheartbeat = \"2s\"\nshutdown_grace = \"5s\"\n{server_extra}\n{agents}\n{extra}",
            dir.path().join("data"),
            dir.path().join("admin.token"),
        );
        std::fs::write(dir.path().join("coordinator.toml"), config).unwrap();
        let mut c = Coordinator {
            dir,
            child: None,
            grpc: "0.0.0.0:0".parse().unwrap(),
            http: "0.0.0.0:0".parse().unwrap(),
            status: "0.0.0.0:0".parse().unwrap(),
        };
        c.launch();
        c
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("coordinator.toml")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("coordinator.log")
    }

    /// (Re)starts the process on the same config and data_dir.
    pub fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_mailloop-coordinator"))
            .args(["serve", "--config"])
            .arg(self.config_path())
            .env("MAILLOOP_LOG", "debug,h2=info,tower=info,hyper=info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("coordinator did not start:\n{}", self.log()));
        let addr = |key: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        };
        self.grpc = addr("grpc=");
        self.http = addr("http=");
        self.status = addr("status=");
        self.child = Some(child);
    }

    /// The running process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The process's resident set size now and at its peak, in bytes
    /// (`VmRSS`, `VmHWM` from /proc).
    pub fn rss(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kib = |key: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no {key} in /proc status"))
        };
        (kib("VmRSS:") * 1024, kib("VmHWM:") * 1024)
    }

    /// The coordinator's log so far (stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `kill -9`: no shutdown code runs.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit; its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let mut child = self.child.take().expect("running");
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if std::time::Instant::now() > deadline {
                child.kill().unwrap();
                panic!(
                    "coordinator did not exit within {within:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn api(&self) -> Client {
        Client::new(
            &format!("http://{}", self.http),
            Some(ADMIN_TOKEN.into()),
            None,
        )
        .unwrap()
    }

    pub fn api_without_token(&self) -> Client {
        Client::new(&format!("http://{}", self.http), None, None).unwrap()
    }

    /// The admin API as the holder of `token` (a read token, an agent's, ...).
    pub fn api_as(&self, token: &str) -> Client {
        Client::new(&format!("http://{}", self.http), Some(token.into()), None).unwrap()
    }

    /// An agent's gRPC client carrying `token` (None: no authorization metadata).
    pub async fn agent_with(&self, token: Option<&str>) -> Agent {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap();
        AgentServiceClient::with_interceptor(channel, Bearer(token.map(str::to_string)))
    }

    /// A declared agent's client.
    pub async fn agent(&self, name: &str) -> Agent {
        self.agent_with(Some(token(name))).await
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- coordinator log ----\n{}", self.log());
        }
    }
}

/// Registers `name` in its declared region.
pub async fn register(agent: &mut Agent, name: &str) -> pb::RegisterResponse {
    let region = AGENTS.iter().find(|(n, _, _)| *n == name).unwrap().1;
    agent
        .register(pb::RegisterRequest {
            name: name.into(),
            region: region.into(),
            version: "test".into(),
            ..Default::default()
        })
        .await
        .expect("register")
        .into_inner()
}

/// An open assignment stream.
pub struct Watch(pub tonic::Streaming<pb::AssignmentChange>);

impl Watch {
    pub async fn open(agent: &mut Agent, known: &[(&str, u64)]) -> Watch {
        let known = known
            .iter()
            .map(|(id, rev)| pb::KnownCheck {
                check_id: id.to_string(),
                revision: *rev,
            })
            .collect();
        Watch(
            agent
                .watch_assignments(pb::WatchRequest {
                    agent_id: String::new(),
                    known,
                })
                .await
                .expect("watch")
                .into_inner(),
        )
    }

    /// The next change, which must arrive before [`DEADLINE`].
    pub async fn next(&mut self) -> Change {
        let msg = tokio::time::timeout(DEADLINE, self.0.message())
            .await
            .expect("an assignment change within the deadline")
            .expect("the stream is healthy")
            .expect("the stream is open");
        match msg.change.expect("a change") {
            pb::assignment_change::Change::Upsert(a) => Change::Upsert(a),
            pb::assignment_change::Change::Remove(id) => Change::Remove(id),
            pb::assignment_change::Change::RunNow(r) => Change::RunNow(r),
            pb::assignment_change::Change::Credential(c) => Change::Credential(c),
        }
    }

    /// Asserts nothing arrives for a short while.
    pub async fn quiet(&mut self, for_: Duration) {
        if let Ok(m) = tokio::time::timeout(for_, self.0.message()).await {
            panic!("expected no change, got {m:?}");
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Upsert(pb::Assignment),
    Remove(String),
    /// An on-demand run (tests in ondemand.rs).
    RunNow(pb::RunNow),
    /// A rotated token.
    Credential(pb::Credential),
}

impl Change {
    pub fn upserted(self) -> pb::Assignment {
        match self {
            Change::Upsert(a) => a,
            other => panic!("expected an upsert, got {other:?}"),
        }
    }
}

/// A report stream: send results, read acks.
pub struct Reports {
    pub tx: tokio::sync::mpsc::Sender<pb::ProbeResult>,
    pub acks: tonic::Streaming<pb::ResultAck>,
}

impl Reports {
    pub async fn open(agent: &mut Agent) -> Reports {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let acks = agent
            .report_results(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("report stream")
            .into_inner();
        Reports { tx, acks }
    }

    /// Sends one result and returns its ack.
    pub async fn send(&mut self, r: pb::ProbeResult) -> pb::ResultAck {
        self.tx.send(r).await.unwrap();
        self.ack().await
    }

    pub async fn ack(&mut self) -> pb::ResultAck {
        tokio::time::timeout(DEADLINE, self.acks.message())
            .await
            .expect("an ack within the deadline")
            .expect("the stream is healthy")
            .expect("the stream is open")
    }
}

/// Results the API shows for `check`.
pub async fn results(api: &Client, check: &str) -> Vec<Value> {
    let r = api
        .get(&format!("/api/v1/checks/{check}/results"))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    r.body["results"].as_array().unwrap().clone()
}

pub fn expect_ok(r: Result<ApiResponse, mailloop_coordinator::client::ClientError>) -> Value {
    let r = r.expect("the API answers");
    assert!(r.is_success(), "{}", r.error_text());
    r.body
}

pub fn data_dir(c: &Coordinator) -> PathBuf {
    c.dir.path().join("data")
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}
