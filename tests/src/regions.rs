//! Three regions whose network paths the test controls: the harness of the
//! cross-region verdict tests (issue 5).
//!
//! Every region's agent reaches the one real mail stack through its own
//! in-process TCP [`Proxy`] per mail port, wired in with the agent's
//! `connect_to`, so a test can cut, blackhole or restore one region's path
//! (transit trouble) or all of them (what an outage looks like to agents)
//! without touching the stack. Alert channels point at local
//! [`WebhookReceiver`]s that record every POST with its arrival time.
//!
//! The processes are the real binaries (one `mailloop-coordinator serve`,
//! one `mailloop-agent run` per region), guarded by [`crate::cluster::Proc`].
//! Proxies and receivers run on the harness's own tokio runtime, so tests
//! stay plain `#[test]` functions that poll with
//! [`crate::cluster::wait_until`]; never call the blocking methods here from
//! inside a tokio runtime.

use crate::Stack;
use crate::cluster::{ADMIN_TOKEN, Coordinator, IMAP_PASS_ENV, Proc};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::{Handle, Runtime};
use tokio::sync::watch;

/// The three regions of every test cluster here, one agent each.
pub const REGIONS: [&str; 3] = ["r1", "r2", "r3"];

/// What a proxy does with the path it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathMode {
    /// Forwards both ways.
    Open,
    /// Refuses: the listening socket is closed (new connections get
    /// `ECONNREFUSED`, an agent's `*.connect` step fails at once) and every
    /// existing connection is closed.
    Cut,
    /// Accepts and never answers (a silent drop: the agent's step times out);
    /// existing connections are closed.
    Blackhole,
    /// A black hole for existing connections too: they stay open and
    /// nothing is forwarded either way (a peer gone silent mid-session);
    /// new ones are accepted and never answered. They close when the mode
    /// changes again.
    Stall,
}

/// A TCP forwarder on 127.0.0.1 (port 0 on first start, the same port
/// after a cut), to one target.
pub struct Proxy {
    addr: SocketAddr,
    target: SocketAddr,
    control: watch::Sender<PathMode>,
    /// The mode the proxy task has finished applying.
    applied: watch::Receiver<PathMode>,
    accepted: Arc<AtomicUsize>,
    /// The local address new connections to the target come from (None:
    /// the kernel's choice, 127.0.0.1), so a region can have a sending
    /// address of its own.
    source: Arc<Mutex<Option<std::net::IpAddr>>>,
    handle: Handle,
}

impl Proxy {
    /// Binds 127.0.0.1:0 and forwards to `target`.
    pub fn start(handle: &Handle, target: SocketAddr) -> Proxy {
        let listener = handle.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind a proxy port");
        let addr = listener.local_addr().unwrap();
        let (control, control_rx) = watch::channel(PathMode::Open);
        let (applied_tx, applied) = watch::channel(PathMode::Open);
        let accepted = Arc::new(AtomicUsize::new(0));
        let source = Arc::new(Mutex::new(None));
        handle.spawn(serve(Some(listener), addr, target, control_rx, applied_tx, accepted.clone(), source.clone()));
        Proxy { addr, target, control, applied, accepted, source, handle: handle.clone() }
    }

    /// Connections from now on come from `source` (a 127.0.0.0/8 address),
    /// or from the kernel's choice again with None.
    pub fn set_source(&self, source: Option<std::net::IpAddr>) {
        *self.source.lock().unwrap() = source;
    }

    /// Where agents connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Connections accepted so far (while open or blackholed).
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn cut(&self) {
        self.set(PathMode::Cut);
    }

    pub fn blackhole(&self) {
        self.set(PathMode::Blackhole);
    }

    pub fn restore(&self) {
        self.set(PathMode::Open);
    }

    /// Switches mode and returns once the proxy task has applied it (after
    /// `cut()` returns, no new connection gets through).
    pub fn set(&self, mode: PathMode) {
        self.control.send_replace(mode);
        let mut applied = self.applied.clone();
        self.handle
            .block_on(async { tokio::time::timeout(Duration::from_secs(10), applied.wait_for(|m| *m == mode)).await })
            .unwrap_or_else(|_| panic!("proxy {} did not switch to {mode:?} within 10 s", self.addr))
            .expect("proxy task ended");
    }
}

async fn serve(
    mut listener: Option<TcpListener>,
    addr: SocketAddr,
    target: SocketAddr,
    mut control: watch::Receiver<PathMode>,
    applied: watch::Sender<PathMode>,
    accepted: Arc<AtomicUsize>,
    source: Arc<Mutex<Option<std::net::IpAddr>>>,
) {
    loop {
        let mode = *control.borrow_and_update();
        if mode == PathMode::Cut {
            listener = None;
        } else if listener.is_none() {
            listener = Some(rebind(addr).await);
        }
        applied.send_replace(mode);
        loop {
            tokio::select! {
                changed = control.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    break;
                }
                conn = async { listener.as_ref().expect("guarded").accept().await }, if listener.is_some() => {
                    let Ok((client, _)) = conn else { continue };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let from = *source.lock().unwrap();
                    tokio::spawn(carry(client, mode, control.clone(), target, from));
                }
            }
        }
    }
}

/// The same port again after a cut (SO_REUSEADDR is set by tokio's bind on
/// Unix, so TIME_WAIT leftovers do not block it). Another process taking
/// the port in between is possible in theory; then the test fails loudly.
async fn rebind(addr: SocketAddr) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) if Instant::now() < deadline => {
                eprintln!("proxy {addr}: rebind failed ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("proxy {addr}: cannot listen again: {e}"),
        }
    }
}

/// One accepted connection, in the mode it was accepted in; closed as soon
/// as the mode changes.
async fn carry(
    mut client: TcpStream,
    mode: PathMode,
    mut control: watch::Receiver<PathMode>,
    target: SocketAddr,
    source: Option<std::net::IpAddr>,
) {
    match mode {
        PathMode::Open => {
            let connected = match source {
                None => TcpStream::connect(target).await,
                Some(ip) => async {
                    let socket = tokio::net::TcpSocket::new_v4()?;
                    socket.bind(SocketAddr::new(ip, 0))?;
                    socket.connect(target).await
                }
                .await,
            };
            let Ok(mut server) = connected else { return };
            let _ = server.set_nodelay(true);
            let _ = client.set_nodelay(true);
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                _ = control.wait_for(|m| *m != PathMode::Open) => {}
            }
            // Stalled: both ends stay open, silent, until the next change.
            if *control.borrow() == PathMode::Stall {
                let _ = control.wait_for(|m| *m != PathMode::Stall).await;
            }
        }
        PathMode::Blackhole | PathMode::Stall => {
            let _ = control.wait_for(|m| *m != mode).await;
        }
        PathMode::Cut => {}
    }
}

/// A UDP relay in front of the stack's DNS server for the agents, which a
/// test can silence: queries are then read and never answered, as when the
/// stack (dnsmasq with it) is stopped.
pub struct DnsRelay {
    addr: SocketAddr,
    open: Arc<std::sync::atomic::AtomicBool>,
}

impl DnsRelay {
    pub fn start(handle: &Handle, upstream: SocketAddr) -> DnsRelay {
        let socket =
            Arc::new(handle.block_on(tokio::net::UdpSocket::bind("127.0.0.1:0")).expect("bind a DNS relay port"));
        let addr = socket.local_addr().unwrap();
        let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let relaying = open.clone();
        handle.spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok((n, client)) = socket.recv_from(&mut buf).await {
                if !relaying.load(Ordering::SeqCst) {
                    continue;
                }
                let (query, socket) = (buf[..n].to_vec(), socket.clone());
                tokio::spawn(async move {
                    let Ok(up) = tokio::net::UdpSocket::bind("127.0.0.1:0").await else { return };
                    if up.send_to(&query, upstream).await.is_err() {
                        return;
                    }
                    let mut answer = [0u8; 4096];
                    if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), up.recv(&mut answer)).await {
                        let _ = socket.send_to(&answer[..n], client).await;
                    }
                });
            }
        });
        DnsRelay { addr, open }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// From now on no query is answered.
    pub fn silence(&self) {
        self.open.store(false, Ordering::SeqCst);
    }

    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

/// One POST as a receiver saw it.
#[derive(Debug, Clone)]
pub struct Hit {
    pub at: Instant,
    pub path: String,
    /// The body as JSON (`Value::String` with the raw text if it is not JSON).
    pub body: Value,
    /// Answered 200 (false: refused with 503, see [`WebhookReceiver::refuse`]).
    pub accepted: bool,
}

/// A local HTTP endpoint that answers every request `200 {}` (or `503`
/// while told to refuse) and records each POST with its arrival time.
pub struct WebhookReceiver {
    addr: SocketAddr,
    hits: Arc<Mutex<Vec<Hit>>>,
    refusing: Arc<std::sync::atomic::AtomicBool>,
}

impl WebhookReceiver {
    pub fn start(handle: &Handle) -> WebhookReceiver {
        let listener = handle.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind a webhook port");
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(Mutex::new(Vec::new()));
        let recorded = hits.clone();
        let refusing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let refuse = refusing.clone();
        handle.spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(answer(conn, recorded.clone(), refuse.clone()));
            }
        });
        WebhookReceiver { addr, hits, refusing }
    }

    /// Answers every POST `503` (a retryable failure) while `on`; still records it.
    pub fn refuse(&self, on: bool) {
        self.refusing.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// The POSTs answered 200, oldest first.
    pub fn delivered(&self) -> Vec<Hit> {
        self.hits().into_iter().filter(|h| h.accepted).collect()
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every POST so far, oldest first.
    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }
}

/// Serves one connection, request after request (keep-alive).
async fn answer(mut conn: TcpStream, hits: Arc<Mutex<Vec<Hit>>>, refusing: Arc<std::sync::atomic::AtomicBool>) {
    const MAX: usize = 1 << 20;
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX || !read_more(&mut conn, &mut buf).await {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.lines();
        let request = lines.next().unwrap_or_default().to_string();
        let header = |name: &str| {
            head.lines().skip(1).find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_ascii_lowercase())
            })
        };
        let (body, consumed) = if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                if let Some((b, n)) = dechunk(&buf[head_end..]) {
                    break (b, head_end + n);
                }
                if buf.len() > MAX || !read_more(&mut conn, &mut buf).await {
                    return;
                }
            }
        } else {
            let len: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            while buf.len() < head_end + len {
                if buf.len() > MAX || !read_more(&mut conn, &mut buf).await {
                    return;
                }
            }
            (buf[head_end..head_end + len].to_vec(), head_end + len)
        };
        buf.drain(..consumed);
        let mut parts = request.split_whitespace();
        let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default().to_string());
        let refuse = refusing.load(std::sync::atomic::Ordering::SeqCst);
        if method == "POST" {
            let body =
                serde_json::from_slice(&body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()));
            hits.lock().unwrap().push(Hit { at: Instant::now(), path: path.clone(), body, accepted: !refuse });
        }
        // Refusing, it quotes the path it was asked for, as careless
        // receivers do: a webhook's token in the path must not reach the
        // coordinator's delivery log, API or logs through such an answer.
        let reply = if refuse {
            let body = json!({"error": format!("hook {path} is paused")}).to_string();
            format!(
                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
        } else {
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}".to_string()
        };
        if conn.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn read_more(conn: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match conn.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// A complete chunked body and the bytes it took (trailers not supported),
/// or None if more bytes are needed.
fn dechunk(all: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut out = Vec::new();
    let mut b = all;
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..nl]).split(';').next()?.trim(), 16).ok()?;
        b = &b[nl + 2..];
        if size == 0 {
            // The empty line that ends the (trailer-less) body.
            if b.len() < 2 {
                return None;
            }
            return Some((out, all.len() - b.len() + 2));
        }
        if b.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// One region: its agent and the proxies its `connect_to` points at.
pub struct Region {
    pub name: String,
    pub agent_name: String,
    /// One per mail port of the check (submission or grey MX, IMAPS...).
    pub proxies: Vec<Proxy>,
    pub log: PathBuf,
}

impl Region {
    /// Cuts every path of this region.
    pub fn cut(&self) {
        self.proxies.iter().for_each(Proxy::cut);
    }

    pub fn blackhole(&self) {
        self.proxies.iter().for_each(Proxy::blackhole);
    }

    pub fn restore(&self) {
        self.proxies.iter().for_each(Proxy::restore);
    }

    /// Connections this region's agent opened through its proxies.
    pub fn accepted(&self) -> usize {
        self.proxies.iter().map(Proxy::accepted).sum()
    }
}

/// How the cluster is set up; [`Settings::new`] gives the tests' defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The check's round interval (test_mode allows 1 s).
    pub interval: String,
    /// The body of `[incidents]`.
    pub incidents: Vec<String>,
    /// The body of `[baselines]`, if any.
    pub baselines: Vec<String>,
    /// Extra lines for the check's `[[check]]` table (e.g. `quorum = 2`).
    pub check_extra: Vec<String>,
    /// The agents' `[dns]` nameserver (`ip:port`); default: the stack's.
    pub agent_dns: Option<String>,
    /// `[storage] url` of every coordinator (None: SQLite in the tempdir).
    pub storage_url: Option<String>,
    /// Coordinator processes sharing `storage_url` (1 without one). The
    /// agents get every replica's address in `coordinator_urls`, the first
    /// replica first.
    pub replicas: usize,
    /// The replica (0: the first started) listed first in the agents'
    /// `coordinator_urls`, so the one they connect to; the rest follow in order.
    pub agents_on: usize,
    /// Spread the agents over the replicas: region `i`'s agent lists
    /// replica `(agents_on + i) % replicas` first (so with two replicas,
    /// r1 and r3 on one, r2 on the other).
    pub spread: bool,
    /// `[storage] url` of one replica instead of `storage_url` (replica
    /// index, URL): e.g. through a [`Proxy`] the test cuts.
    pub replica_storage_url: Option<(usize, String)>,
    /// The path of the `tickets` channel's URL on its receiver (a test
    /// can put a token in it, as Slack's and many webhook URLs carry one).
    pub tickets_path: String,
}

impl Settings {
    /// A 2 s interval and the documented `[incidents]` defaults. A round is
    /// decided as soon as every region reported, so the 10 s `round_slack`
    /// only matters for a missing report; a shorter one turned rounds
    /// `unknown` when the shared 2 cores were busy and reports came late.
    pub fn new() -> Settings {
        Settings {
            interval: "2s".into(),
            incidents: vec![
                "confirm_rounds = 2".into(),
                "transit_rounds = 3".into(),
                "degraded_rounds = 3".into(),
                "resolve_rounds = 2".into(),
                "defer_grace = \"15m\"".into(),
                "round_slack = \"10s\"".into(),
                "quorum = \"majority\"".into(),
            ],
            baselines: Vec::new(),
            check_extra: Vec::new(),
            agent_dns: None,
            storage_url: None,
            replicas: 1,
            agents_on: 0,
            spread: false,
            replica_storage_url: None,
            tickets_path: "/tickets".into(),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings::new()
    }
}

/// A coordinator, one agent per region of [`REGIONS`] each behind its own
/// proxies, and three alert receivers: `pager` (outages), `tickets`
/// (regional, performance, authentication, certificate, placement,
/// reputation) and `watch`
/// (coverage and clock: the monitor's own blindness).
pub struct RegionCluster {
    // Field order is drop order: agents and coordinator die before the
    // proxies, receivers and runtime they talk to, and before the files.
    pub agents: Vec<Proc>,
    /// The replica the API helpers read through (the first one started,
    /// until [`RegionCluster::kill9_coordinator`] kills it).
    pub coordinator: Coordinator,
    /// The other replicas (`Settings::replicas`), in start order.
    pub others: Vec<Coordinator>,
    pub regions: Vec<Region>,
    pub pager: WebhookReceiver,
    pub tickets: WebhookReceiver,
    pub watch: WebhookReceiver,
    /// The agents' DNS server (unless `Settings::agent_dns` names another).
    pub dns: DnsRelay,
    pub check_id: String,
    pub started: Instant,
    runtime: Runtime,
    pub dir: tempfile::TempDir,
}

impl RegionCluster {
    /// Starts everything for one check (the harness's [`crate::Check`]),
    /// proxies for its SMTP and IMAP ports, and waits until the three agents
    /// are connected.
    pub fn start(check: &crate::Check, settings: &Settings) -> RegionCluster {
        let s = Stack::get();
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let handle = runtime.handle().clone();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("admin.token"), ADMIN_TOKEN).unwrap();
        let pager = WebhookReceiver::start(&handle);
        let tickets = WebhookReceiver::start(&handle);
        let watch = WebhookReceiver::start(&handle);
        let dns =
            DnsRelay::start(&handle, format!("{}:53", s.var("MAILSTACK_DNS")).parse().expect("MAILSTACK_DNS is an IP"));

        let host = s.var("MAILSTACK_HOST");
        let ports = [check.smtp_port, check.imap_port];
        let mut regions = Vec::new();
        let mut agent_tables = String::new();
        for r in REGIONS {
            let agent_name = format!("agent-{r}");
            let proxies: Vec<Proxy> = ports
                .iter()
                .map(|p| Proxy::start(&handle, format!("{host}:{p}").parse().expect("MAILSTACK_HOST is an IP")))
                .collect();
            let token = dir.path().join(format!("{agent_name}.token"));
            std::fs::write(&token, format!("token-{agent_name}-for-region-tests")).unwrap();
            agent_tables
                .push_str(&format!("\n[[agent]]\nname = {agent_name:?}\nregion = {r:?}\ntoken_file = {token:?}\n"));
            regions.push(Region {
                name: r.into(),
                log: dir.path().join(format!("{agent_name}.log")),
                agent_name,
                proxies,
            });
        }

        let mut c = check.clone();
        c.check_extra.extend(settings.check_extra.iter().cloned());
        let check_table = check_table(&c, &settings.interval);
        let tickets_kinds = r#"["regional", "performance", "authentication", "certificate", "placement", "reputation"]"#;
        let baselines = if settings.baselines.is_empty() {
            String::new()
        } else {
            format!("[baselines]\n{}\n", settings.baselines.join("\n"))
        };
        let storage = match &settings.storage_url {
            Some(url) => format!("[storage]\nurl = {url:?}\n\n"),
            None => String::new(),
        };
        assert!(settings.replicas == 1 || settings.storage_url.is_some(), "replicas share a PostgreSQL storage_url");
        let config = format!(
            "[server]\ngrpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\ndata_dir = {data:?}\nadmin_token_file = {admin:?}\n\
             test_mode = true\nheartbeat = \"2s\"\nshutdown_grace = \"5s\"\n\n{storage}\
             [incidents]\n{incidents}\n\n{baselines}\
             [[alert]]\nname = \"pager\"\ntype = \"webhook\"\nurl = {pager:?}\nkinds = [\"outage\"]\nmin_severity = \"info\"\n\
             events = [\"opened\", \"acknowledged\", \"resolved\"]\nretries = 3\ntimeout = \"5s\"\n\n\
             [[alert]]\nname = \"tickets\"\ntype = \"webhook\"\nurl = {tickets:?}\nkinds = {tickets_kinds}\nmin_severity = \"info\"\n\
             events = [\"opened\", \"acknowledged\", \"resolved\"]\nretries = 3\ntimeout = \"5s\"\n\n\
             [[alert]]\nname = \"watch\"\ntype = \"webhook\"\nurl = {watch:?}\nkinds = [\"coverage\", \"clock\"]\n\
             min_severity = \"info\"\nretries = 3\ntimeout = \"5s\"\n\
             {agent_tables}\n{check_table}",
            data = dir.path().join("data"),
            admin = dir.path().join("admin.token"),
            incidents = settings.incidents.join("\n"),
            pager = pager.url("/pager"),
            tickets = tickets.url(&settings.tickets_path),
            watch = watch.url("/watch"),
        );
        let config_of = |i: usize| match (&settings.replica_storage_url, &settings.storage_url) {
            (Some((j, own)), Some(shared)) if *j == i => {
                config.replace(&format!("url = {shared:?}"), &format!("url = {own:?}"))
            }
            _ => config.clone(),
        };
        let coordinator = Coordinator::start_with_config(dir.path(), &config_of(0));
        let others: Vec<Coordinator> = (1..settings.replicas)
            .map(|i| {
                let own = dir.path().join(format!("replica{i}"));
                std::fs::create_dir_all(&own).unwrap();
                Coordinator::start_with_config(&own, &config_of(i))
            })
            .collect();
        let all_urls: Vec<String> =
            std::iter::once(&coordinator).chain(&others).map(|c| format!("\"http://{}\"", c.grpc)).collect();
        let coordinator_line = |i: usize| {
            let mut urls = all_urls.clone();
            let first = (settings.agents_on + if settings.spread { i } else { 0 }) % urls.len();
            urls.rotate_left(first);
            if urls.len() == 1 {
                format!("coordinator_url = {}", urls[0])
            } else {
                format!("coordinator_urls = [{}]", urls.join(", "))
            }
        };

        let mut agents = Vec::new();
        for (i, region) in regions.iter().enumerate() {
            let connect_to: Vec<String> = ports
                .iter()
                .zip(&region.proxies)
                .map(|(port, proxy)| format!("\"{host}:{port}={}\"", proxy.addr()))
                .collect();
            let config_path = dir.path().join(format!("{}.toml", region.agent_name));
            std::fs::write(
                &config_path,
                format!(
                    "[agent]\nname = {:?}\nregion = {:?}\n{}\ntoken_file = {:?}\n\
                     spool = {:?}\nshutdown_grace = \"5s\"\nconnect_to = [{}]\n[dns]\nnameservers = [\"{}\"]\n",
                    region.agent_name,
                    region.name,
                    coordinator_line(i),
                    dir.path().join(format!("{}.token", region.agent_name)),
                    dir.path().join(format!("{}.spool.db", region.agent_name)),
                    connect_to.join(", "),
                    settings.agent_dns.clone().unwrap_or_else(|| dns.addr().to_string()),
                ),
            )
            .unwrap();
            agents.push(spawn_agent(dir.path(), region));
        }
        let cluster = RegionCluster {
            agents,
            coordinator,
            others,
            regions,
            pager,
            tickets,
            watch,
            dns,
            check_id: check.name.clone(),
            started: Instant::now(),
            runtime,
            dir,
        };
        let agents_on = if settings.agents_on == 0 { &cluster.coordinator } else { &cluster.others[settings.agents_on - 1] };
        crate::cluster::wait_until(Duration::from_secs(30), "three agents connected", || {
            let body = agents_on.get_ok("/api/v1/agents");
            let n = body["agents"].as_array()?.iter().filter(|a| a["connected"] == true).count();
            (n == REGIONS.len()).then_some(())
        });
        cluster
    }

    pub fn region(&self, name: &str) -> &Region {
        self.regions.iter().find(|r| r.name == name).unwrap_or_else(|| panic!("no region {name}"))
    }

    /// Cuts every region's path: what a stopped mail stack looks like to agents.
    pub fn cut_all(&self) {
        self.regions.iter().for_each(Region::cut);
    }

    pub fn restore_all(&self) {
        self.regions.iter().for_each(Region::restore);
    }

    pub fn handle(&self) -> &Handle {
        self.runtime.handle()
    }

    /// The check's verdicts, newest first (`GET /api/v1/verdicts`); empty
    /// while the endpoint does not answer 200 (not landed, or no verdict yet).
    pub fn verdicts(&self) -> Vec<Value> {
        match self.coordinator.get(&format!("/api/v1/verdicts?check={}&limit=200", self.check_id)) {
            (200, body) => body["verdicts"].as_array().cloned().unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// The check's incidents matching `query` (e.g. `state=active&kind=outage`).
    pub fn incidents(&self, query: &str) -> Vec<Value> {
        let sep = if query.is_empty() { "" } else { "&" };
        match self.coordinator.get(&format!("/api/v1/incidents?check={}{sep}{query}", self.check_id)) {
            (200, body) => body["incidents"].as_array().cloned().unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// Every incident of the check, whatever its state.
    pub fn all_incidents(&self) -> Vec<Value> {
        self.incidents("")
    }

    /// Rounds with at least one stored result in every region: the agents
    /// are probing through their paths.
    pub fn rounds_reported_by_all(&self) -> usize {
        let mut by_round: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
        for r in self.coordinator.results(&self.check_id) {
            *by_round.entry(r["round"].as_u64().unwrap_or(0)).or_default() += 1;
        }
        by_round.values().filter(|n| **n >= REGIONS.len()).count()
    }

    /// Logs of the coordinator and agents, tail of each, for a failing test.
    pub fn dump_logs(&self) {
        let tail = |p: PathBuf| {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        eprintln!("---- coordinator log (tail) ----\n{}", tail(self.coordinator.log_path()));
        for o in &self.others {
            eprintln!("---- coordinator {} log (tail) ----\n{}", o.dir.display(), tail(o.log_path()));
        }
        for r in &self.regions {
            eprintln!("---- agent {} log (tail) ----\n{}", r.agent_name, tail(r.log.clone()));
        }
    }
}

impl Drop for RegionCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
            // Whole logs kept for whoever routes the failure.
            let keep = std::env::temp_dir().join(format!("mailloop-regions-{}-{}", self.check_id, std::process::id()));
            if std::fs::create_dir_all(&keep).is_ok() {
                for f in std::fs::read_dir(self.dir.path()).into_iter().flatten().flatten() {
                    if f.path().extension().is_some_and(|e| e == "log") {
                        let _ = std::fs::copy(f.path(), keep.join(f.file_name()));
                    }
                }
                // Replicas other than the first keep their logs in a directory of their own.
                for o in std::iter::once(&self.coordinator).chain(&self.others).filter(|o| o.dir != self.dir.path()) {
                    let name = o.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    let _ = std::fs::copy(o.log_path(), keep.join(format!("coordinator-{name}.log")));
                }
                eprintln!("---- full logs kept in {} ----", keep.display());
            }
        }
        self.agents.clear();
        self.coordinator.proc.take();
        for o in &mut self.others {
            o.proc.take();
        }
    }
}

/// Starts `region`'s agent (`mailloop-agent run`) with the config file
/// [`RegionCluster::start`] wrote for it in `dir`, its log appended to.
fn spawn_agent(dir: &std::path::Path, region: &Region) -> Proc {
    let config = dir.join(format!("{}.toml", region.agent_name));
    Proc::new(crate::cluster::spawn_agent_run(&config, &region.log, "info"))
}

impl RegionCluster {
    fn agent_index(&self, region: &str) -> usize {
        self.regions.iter().position(|r| r.name == region).unwrap_or_else(|| panic!("no region {region}"))
    }

    /// Kills `region`'s agent (SIGKILL: a crash, nothing said to the coordinator).
    pub fn kill_agent(&mut self, region: &str) {
        let i = self.agent_index(region);
        self.agents[i].kill();
    }

    /// `kill -9` of replica `i` (0: `coordinator`, then `others` in order);
    /// a surviving replica becomes `coordinator`, so the API helpers read
    /// through it from now on.
    pub fn kill9_coordinator(&mut self, i: usize) {
        if i > 0 {
            std::mem::swap(&mut self.coordinator, &mut self.others[i - 1]);
        }
        self.coordinator.kill9();
        let survivor = self.others.iter().position(|o| o.proc.is_some()).expect("a surviving replica");
        std::mem::swap(&mut self.coordinator, &mut self.others[survivor]);
    }

    /// Every probe of the check the agents ran: (probe id, region, round,
    /// start in epoch ms), from their spools' own log (`probe_log`).
    pub fn probe_log(&self) -> Vec<(String, String, u64, i64)> {
        let mut out = Vec::new();
        for r in &self.regions {
            let path = self.dir.path().join(format!("{}.spool.db", r.agent_name));
            if !path.exists() {
                continue;
            }
            let conn = rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
            conn.busy_timeout(Duration::from_secs(5)).unwrap();
            let mut stmt = conn.prepare("SELECT probe_id, round, started_ms FROM probe_log WHERE check_id = ?1 ORDER BY seq").unwrap();
            let rows = stmt
                .query_map([&self.check_id], |row| Ok((row.get::<_, String>(0)?, r.name.clone(), row.get::<_, i64>(1)? as u64, row.get::<_, i64>(2)?)))
                .unwrap();
            out.extend(rows.map(Result::unwrap));
        }
        out
    }

    /// Starts `region`'s agent again, with the same config and spool.
    pub fn restart_agent(&mut self, region: &str) {
        let i = self.agent_index(region);
        self.agents[i].kill();
        self.agents[i] = spawn_agent(self.dir.path(), &self.regions[i]);
    }
}

/// The check's `[[check]]` table for the coordinator. [`crate::cluster::check_toml`]
/// when the check logs in to submit; a check without SMTP AUTH (the
/// greylisting MX) only has its IMAP password turned into a reference.
fn check_table(check: &crate::Check, interval: &str) -> String {
    if check.smtp_login.is_some() {
        return crate::cluster::check_toml(check, interval, &REGIONS);
    }
    let mut c = check.clone();
    let regions = REGIONS.iter().map(|r| format!("{r:?}")).collect::<Vec<_>>().join(", ");
    c.check_extra.push(format!("interval = {interval:?}"));
    c.check_extra.push(format!("regions = [{regions}]"));
    let toml = c.toml();
    let toml = toml.split("[dns]").next().unwrap();
    let imap = format!("password = {:?}\n", check.imap_pass);
    assert!(toml.contains(&imap), "{toml}");
    toml.replacen(&imap, &format!("password_env = {IMAP_PASS_ENV:?}\n"), 1)
}

/// Short summaries of verdicts for assertion messages:
/// `round 123 transit [r1 failed smtp.connect connect, r2 ok, r3 ok]`.
pub fn describe(verdicts: &[Value]) -> String {
    verdicts
        .iter()
        .map(|v| {
            let regions: Vec<String> = v["regions"]
                .as_array()
                .map(|rs| {
                    rs.iter()
                        .map(|r| {
                            let mut s = format!(
                                "{} {}",
                                r["region"].as_str().unwrap_or("?"),
                                r["state"].as_str().unwrap_or("?")
                            );
                            for k in ["step", "class"] {
                                if let Some(x) = r[k].as_str() {
                                    s.push(' ');
                                    s.push_str(x);
                                }
                            }
                            s
                        })
                        .collect()
                })
                .unwrap_or_default();
            format!("round {} {} [{}]", v["round"], v["verdict"].as_str().unwrap_or("?"), regions.join(", "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Like [`crate::cluster::wait_until`], but None at the deadline, so the
/// caller can say what it saw.
pub fn poll<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + crate::patience(within);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Wall-clock now in epoch milliseconds (rounds are numbered by it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

impl RegionCluster {
    /// The verdicts of rounds that started at or after `since_ms`, oldest first.
    pub fn verdicts_since(&self, since_ms: i64) -> Vec<Value> {
        let mut v: Vec<Value> =
            self.verdicts().into_iter().filter(|v| v["round_start_ms"].as_i64().unwrap_or(0) >= since_ms).collect();
        v.reverse();
        v
    }
}

/// The outage scenario, shared by the proxy-cut variant (`tests/verdicts.rs`)
/// and the real stop of the stack (`tests/outage.rs`): after `stop`, every
/// region fails, the rounds are `down`, an outage incident opens within
/// `confirm_rounds` (2) rounds and the pager receives it with a summary
/// naming the step and the regions; after `restore` the outage resolves and
/// the pager receives `resolved`. Returns the time from `stop` to the
/// outage webhook's arrival.
pub fn expect_outage_paged_and_resolved(c: &RegionCluster, stop: impl FnOnce(), restore: impl FnOnce()) -> Duration {
    expect_outage_paged_and_resolved_with(c, stop, || {}, restore)
}

/// [`expect_outage_paged_and_resolved`], running `during` once the outage
/// is paged and before `restore` (outside the timings it prints).
pub fn expect_outage_paged_and_resolved_with(
    c: &RegionCluster,
    stop: impl FnOnce(),
    during: impl FnOnce(),
    restore: impl FnOnce(),
) -> Duration {
    const CONFIRM_ROUNDS: usize = 2;
    let stop_ms = now_ms();
    let stopped = Instant::now();
    stop();
    let page = poll(Duration::from_secs(90), || {
        c.pager.hits().into_iter().find(|h| h.body["event"] == "opened" && h.body["incident"]["kind"] == "outage")
    })
    .unwrap_or_else(|| {
        panic!(
            "no outage webhook on the pager 90 s after the stop; verdicts from 10 s before it:\n{}\nincidents: {:#?}",
            describe(&c.verdicts_since(stop_ms - 10_000)),
            c.all_incidents()
        )
    });
    let to_page = page.at.duration_since(stopped);
    let incident = &page.body["incident"];
    // From a little before the stop: a round that started just before it
    // can run into the dying stack and be the first down round.
    let since = c.verdicts_since(stop_ms - 10_000);
    eprintln!("verdicts from 10 s before the stop:\n{}", describe(&since));
    assert_eq!(page.body["version"], 1, "{}", page.body);
    assert!(page.body["at"].as_str().is_some_and(|a| a.contains('T')), "RFC 3339 `at`: {}", page.body);
    assert_eq!(incident["check_id"].as_str(), Some(c.check_id.as_str()), "{incident}");
    assert_eq!(incident["severity"], "critical", "{incident}");
    assert_eq!(incident["regions"], serde_json::json!(REGIONS), "every region fails: {incident}");

    // Down rounds up to the one that opened the outage: confirm_rounds, no more.
    let opened_round = incident["timeline"]
        .as_array()
        .and_then(|t| t.iter().find(|e| e["event"] == "opened"))
        .and_then(|e| e["round"].as_u64())
        .or_else(|| incident["last_round"].as_u64())
        .unwrap_or_else(|| panic!("the outage names no round: {incident}"));
    // The streak of down rounds that ends at the opening round.
    let upto: Vec<&Value> = since.iter().filter(|v| v["round"].as_u64().unwrap_or(u64::MAX) <= opened_round).collect();
    let streak = upto.iter().rev().take_while(|v| v["verdict"] == "down").count();
    let down_rounds: Vec<&Value> = upto[upto.len() - streak..].to_vec();
    assert!(
        (1..=CONFIRM_ROUNDS).contains(&down_rounds.len()),
        "the outage opened after {} down round(s) in a row, confirm_rounds is {CONFIRM_ROUNDS}:\n{}",
        down_rounds.len(),
        describe(&since)
    );
    // The round that opened it: every region failed (the first down round
    // may be one in flight at the stop, down by quorum with a region still ok).
    let opening = down_rounds[down_rounds.len() - 1];
    for r in opening["regions"].as_array().unwrap() {
        assert_eq!(r["state"], "failed", "{opening}");
    }
    let step = incident["step"].as_str().unwrap_or_else(|| panic!("the outage names no step: {incident}"));
    let summary = incident["summary"].as_str().unwrap_or_default();
    assert!(summary.contains(step), "the summary names the step {step}: {summary:?}");
    assert!(
        REGIONS.iter().all(|r| summary.contains(r)) || summary.contains("all 3 regions"),
        "the summary names the regions: {summary:?}"
    );
    let id = incident["id"].clone();
    let shown = c.coordinator.get_ok(&format!("/api/v1/incidents/{id}"));
    let shown = if shown.get("incident").is_some() { shown["incident"].clone() } else { shown };
    assert_eq!(shown["kind"], "outage", "{shown}");
    assert!(c.tickets.hits().iter().all(|h| h.body["incident"]["kind"] != "outage"), "outages go to the pager only");
    eprintln!("outage summary: {summary}");
    during();

    let restored = Instant::now();
    restore();
    let resolved = crate::cluster::wait_until(Duration::from_secs(120), "the resolved outage on the pager", || {
        c.pager.hits().into_iter().find(|h| h.body["event"] == "resolved" && h.body["incident"]["id"] == id)
    });
    let outages: Vec<Value> = c.all_incidents().into_iter().filter(|i| i["kind"] == "outage").collect();
    assert_eq!(outages.len(), 1, "one outage, no duplicates: {outages:#?}");
    assert_eq!(outages[0]["state"], "resolved", "{:#?}", outages[0]);
    let opened_pages = c.pager.hits().iter().filter(|h| h.body["event"] == "opened").count();
    assert_eq!(opened_pages, 1, "paged once: {:#?}", c.pager.hits());
    eprintln!(
        "FIGURE outage: stop -> outage webhook {:.2} s ({} down round(s) to open); restore -> resolved webhook {:.2} s",
        to_page.as_secs_f64(),
        down_rounds.len(),
        resolved.at.duration_since(restored).as_secs_f64()
    );
    to_page
}
