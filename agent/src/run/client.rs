//! The coordinator client: one session at a time, reconnected forever.
//!
//! A session connects (TLS with the system roots plus `ca_file`, optional
//! client certificate), calls `Register`, then runs three things at once
//! until one of them fails:
//!
//! - `WatchAssignments`, sending the checks already held as `known`, and
//!   applying every change to the [`Scheduler`];
//! - `ReportResults`, sending the spool oldest first (a replay after a
//!   reconnect, then each new report as it is spooled) and deleting each
//!   report from the spool when its acknowledgement arrives;
//! - `Heartbeat`, at the interval the coordinator asked for.
//!
//! Every call carries `authorization: Bearer <token>`. Between sessions the
//! client waits a capped exponential backoff with jitter (0.5 s doubling to
//! 30 s, each wait drawn from its upper half); a session that stayed up for
//! 10 s resets it. On top of that, each wait gets a jitter spread over a
//! window proportional to the fleet the coordinator advertised at Register
//! ([`reconnect_spread`]: 3 ms per agent, at most 60 s), so when a
//! coordinator of 10,000 agents restarts they come back over 30 s instead
//! of in the same second. With several coordinator replicas (`coordinator_urls`)
//! each failed or ended session moves on to the next URL, round robin, so
//! an agent whose replica died is on another one after one backoff; the
//! spool is replayed to whichever answers (every replica shares one
//! database, which stores a replayed report once). The scheduler keeps probing all the while — except when
//! the coordinator refuses the token itself (`Unauthenticated`: revoked or
//! unknown). Then probing stops (reports of an agent nobody accepts would
//! pile up in the spool for nothing), the assignments and the spool are
//! kept, and registration is retried every [`REFUSED_RETRY`] in case the
//! token is accepted again (an agent put back in the coordinator's config);
//! a registration that succeeds starts probing again.

use super::config::{CoordinatorConfig, CoordinatorUrl};
use super::schedule::{Origin, Scheduler, random_below};
use super::spool::{AssignedCheck, Spool, SpoolError, SpooledReport};
use mailloop_proto::pb;
use pb::agent_service_client::AgentServiceClient;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};

/// First wait after a failed session.
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Longest wait between attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A session that stayed up this long resets the backoff; one that fails
/// sooner after registering (a coordinator that accepts and then drops
/// every agent) keeps backing off.
const STABLE_SESSION: Duration = Duration::from_secs(10);
/// Reports sent and not yet acknowledged, at most: the coordinator's own
/// per-stream window (`IN_FLIGHT`), so a replay fills its group commits.
const SEND_WINDOW: usize = 1024;
/// Heartbeat period when the coordinator gives none.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);
/// A connection attempt that takes longer has failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A unary call (Register, Heartbeat) that takes longer has failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Wait between registrations while the coordinator refuses the token.
pub const REFUSED_RETRY: Duration = Duration::from_secs(60);
/// Reconnect window per agent of the advertised fleet (a coordinator
/// accepts about a thousand agents a second on a small machine: three
/// times slower than that keeps a restart's reconnects well spread).
pub const SPREAD_PER_AGENT: Duration = Duration::from_millis(3);
/// Widest reconnect window, however large the fleet.
pub const SPREAD_MAX: Duration = Duration::from_secs(60);

/// The window over which an agent of a fleet of `fleet_size` agents
/// spreads its reconnects (0: the coordinator did not say; no spread).
pub fn reconnect_spread(fleet_size: u32) -> Duration {
    SPREAD_PER_AGENT.saturating_mul(fleet_size).min(SPREAD_MAX)
}

/// A wait drawn uniformly from `[0, spread]` (`draw(n)`: a number below n).
pub fn fleet_jitter(spread: Duration, draw: impl FnOnce(u64) -> u64) -> Duration {
    Duration::from_millis(draw(spread.as_millis() as u64 + 1))
}

/// Who this agent is, for `Register`.
#[derive(Debug, Clone)]
pub struct Identification {
    pub name: String,
    pub region: String,
    /// Spool cap when the coordinator gives none.
    pub spool_max_reports: u64,
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{0}")]
    Connect(String),
    #[error("{call} failed: {}", status_text(.status))]
    Call { call: &'static str, status: Status },
    #[error("{0}")]
    NotGrpc(String),
    #[error("{call} took longer than {}s", CALL_TIMEOUT.as_secs())]
    Timeout { call: &'static str },
    #[error("the coordinator ended the {0} stream")]
    Ended(&'static str),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// Not a failure: the coordinator rotated this agent's token; the
    /// session ends so the next one uses the new token.
    #[error("the coordinator rotated this agent's token")]
    Rotated(mailloop_common::Secret),
}

/// Header every call carries: a random id of this agent process, so the
/// coordinator can tell a reconnecting agent from a second process that
/// uses the same identity (token).
pub const INSTANCE_HEADER: &str = "mailloop-instance";
/// Header the coordinator puts on an answer (WatchAssignments) to tell the
/// agent something it must log (another process with its identity).
pub const WARNING_HEADER: &str = "mailloop-warning";

/// A failed call, with the cases an operator causes said in words: a
/// `coordinator_url` at the coordinator's HTTP API port answers JSON, not
/// gRPC (tonic's own words: "invalid compression flag: 123", `{` being 123).
fn call_error(call: &'static str, status: Status) -> SessionError {
    let json = status
        .metadata()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if json || status.message().contains("invalid compression flag: 123") {
        return SessionError::NotGrpc(http_api_port(call));
    }
    SessionError::Call { call, status }
}

fn http_api_port(call: &str) -> String {
    format!(
        "it answered {call} with HTTP/JSON, not gRPC: this is mailloop's HTTP API port (http_listen); agents connect to the gRPC port (grpc_listen) — fix coordinator_url"
    )
}

/// Whether `uri`'s host:port answers a plain HTTP/1.1 request with JSON,
/// as the coordinator's admin API does (it refuses the HTTP/2 that gRPC
/// speaks, so a gRPC call there fails without a word about why). One short
/// request, asked only after a call failed.
async fn http_api_at(uri: &tonic::transport::Uri) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(authority) = uri.authority() else { return false };
    let addr = format!("{}:{}", authority.host(), authority.port_u16().unwrap_or(80));
    let ask = async {
        let mut s = tokio::net::TcpStream::connect(&addr).await.ok()?;
        s.write_all(format!("GET / HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\nConnection: close\r\n\r\n").as_bytes()).await.ok()?;
        let mut head = vec![0u8; 1024];
        let n = s.read(&mut head).await.ok()?;
        Some(String::from_utf8_lossy(&head[..n]).to_ascii_lowercase())
    };
    match tokio::time::timeout(Duration::from_secs(2), ask).await {
        Ok(Some(head)) => head.starts_with("http/1.") && head.contains("content-type: application/json"),
        _ => false,
    }
}

/// An https:// URL at a port that answers the handshake in plaintext.
const NOT_TLS: &str = "the port does not speak TLS (it answered the TLS handshake in plaintext): coordinator_url says https://, so either use http:// (a coordinator without tls_cert/tls_key, on loopback) or give the coordinator a certificate";

/// Why a connection could not be made, in one sentence: a plaintext port
/// behind an https:// URL and a refused connection are named as such;
/// anything else is the error chain, each part once.
fn connect_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    // A record that is not TLS: the server answered the handshake in plaintext.
    let plaintext = |e: &(dyn std::error::Error + 'static)| {
        matches!(e.downcast_ref::<rustls::Error>(), Some(rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)))
    };
    while let Some(err) = cur {
        let io = err.downcast_ref::<std::io::Error>();
        if plaintext(err) || io.and_then(|io| io.get_ref()).is_some_and(|inner| plaintext(inner)) {
            return NOT_TLS.to_string();
        }
        if io.is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused) {
            return "connection refused: nothing listens there (is the coordinator running, and is this its grpc_listen port?)".to_string();
        }
        cur = err.source();
    }
    let text = chain(e);
    // tonic says "transport error" above the cause; the cause says it all.
    text.strip_prefix("transport error: ").map(str::to_string).unwrap_or(text)
}

impl SessionError {
    /// The coordinator does not accept this agent's token.
    fn is_auth(&self) -> bool {
        matches!(self, SessionError::Call { status, .. } if matches!(status.code(), Code::Unauthenticated | Code::PermissionDenied))
    }

    /// The coordinator does not know this token, or has revoked it (as
    /// opposed to PermissionDenied: a known token used for the wrong region).
    fn is_refused_token(&self) -> bool {
        matches!(self, SessionError::Call { status, .. } if status.code() == Code::Unauthenticated)
    }

    /// The coordinator needs a newer agent protocol ("upgrade the agent").
    fn is_too_old(&self) -> bool {
        matches!(self, SessionError::Call { call: "Register", status } if status.code() == Code::FailedPrecondition)
    }
}

fn status_text(s: &Status) -> String {
    let mut text = format!("{:?}", s.code());
    append(&mut text, s.message());
    let mut cur = std::error::Error::source(s);
    while let Some(e) = cur {
        append(&mut text, &e.to_string());
        cur = e.source();
    }
    text
}

/// An error and its sources, "a: b: c" (tonic's transport errors say
/// little at the top).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        append(&mut text, &s.to_string());
        cur = s.source();
    }
    text
}

/// Appends the ": "-separated parts of `more` that `text` does not
/// already say (error sources often repeat their parent's words).
fn append(text: &mut String, more: &str) {
    for part in more.split(": ").filter(|p| !p.is_empty()) {
        if !text.contains(part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(part);
        }
    }
}

/// One coordinator replica: its URL (for logs) and its endpoint.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub endpoint: Endpoint,
}

/// Builds the endpoint of every coordinator URL once, at start-up: bad TLS
/// material fails here.
pub fn endpoints(c: &CoordinatorConfig) -> Result<Vec<Target>, String> {
    c.urls.iter().map(|u| Ok(Target { url: u.url.clone(), endpoint: endpoint(c, u)? })).collect()
}

fn endpoint(c: &CoordinatorConfig, u: &CoordinatorUrl) -> Result<Endpoint, String> {
    let mut ep = Endpoint::from_shared(u.url.clone())
        .map_err(|e| format!("coordinator_url {}: {}", u.url, chain(&e)))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        // A coordinator host that vanishes without a FIN is noticed in ~30 s.
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .user_agent(format!("mailloop-agent/{}", env!("CARGO_PKG_VERSION")))
        .map_err(|e| chain(&e))?;
    if c.tls {
        let mut tls = ClientTlsConfig::new().with_native_roots().domain_name(u.host.clone());
        if let Some(ca) = &c.ca_pem {
            tls = tls.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some(id) = &c.identity {
            tls = tls.identity(Identity::from_pem(&id.cert_pem, &id.key_pem));
        }
        ep = ep.tls_config(tls).map_err(|e| format!("TLS settings for {}: {}", u.url, chain(&e)))?;
    }
    Ok(ep)
}

/// Puts `authorization: Bearer <token>` and this process's instance id
/// ([`INSTANCE_HEADER`]) on every call.
#[derive(Clone)]
struct Bearer(MetadataValue<Ascii>, MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        req.metadata_mut().insert(INSTANCE_HEADER, self.1.clone());
        Ok(req)
    }
}

/// `Bearer <token>`, marked sensitive (never logged by the HTTP stack).
fn bearer_value(token: &str) -> Result<MetadataValue<Ascii>, String> {
    let mut v: MetadataValue<Ascii> =
        format!("Bearer {token}").parse().map_err(|_| "the token cannot go into an HTTP header".to_string())?;
    v.set_sensitive(true);
    Ok(v)
}

fn sha256_hex(s: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, s.as_bytes()).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// This process's instance id: random, fixed for its lifetime.
fn instance_id() -> MetadataValue<Ascii> {
    use std::sync::OnceLock;
    static ID: OnceLock<String> = OnceLock::new();
    let id = ID.get_or_init(|| format!("{:016x}{:016x}", random_below(u64::MAX), random_below(u64::MAX)));
    id.parse().expect("hex is a valid header value")
}

/// Logs what the coordinator asked this agent to hear (a second process
/// with its identity), once per answer that carries it.
fn log_warning(call: &str, meta: &tonic::metadata::MetadataMap) {
    if let Some(w) = meta.get(WARNING_HEADER).and_then(|v| v.to_str().ok()) {
        tracing::warn!("the coordinator warns on {call}: {w}");
    }
}

type Client = AgentServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

/// Capped exponential backoff with jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: BACKOFF_MIN }
    }
}

impl Backoff {
    /// The next wait: the current step's upper half, at random; the step
    /// doubles up to [`BACKOFF_MAX`].
    pub fn next_wait(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        let half = step / 2;
        half + Duration::from_millis(random_below(half.as_millis() as u64 + 1))
    }

    pub fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

/// The client's side of the process: sessions until `stop` turns true.
pub struct Connection {
    pub who: Identification,
    /// The coordinator replicas, tried in order (never empty).
    pub targets: Vec<Target>,
    /// Index in `targets` of the replica the current or next session talks to.
    current: usize,
    pub token: MetadataValue<Ascii>,
    /// SHA-256 of the configured token (what a rotated one is saved as the
    /// successor of, in the spool).
    configured_sha256: String,
    pub spool: Spool,
    /// True while a session is registered.
    pub connected: watch::Sender<bool>,
    /// Reports sent and not yet acknowledged (the metrics read it).
    pub unacked: Arc<AtomicU64>,
    /// The fleet size the coordinator advertised at the last Register.
    fleet_size: std::sync::atomic::AtomicU32,
}

impl Connection {
    pub fn new(who: Identification, c: &CoordinatorConfig, targets: Vec<Target>, spool: Spool, connected: watch::Sender<bool>) -> Result<Connection, String> {
        if targets.is_empty() {
            return Err("no coordinator URL".to_string());
        }
        let token = bearer_value(c.token.expose())?;
        let configured_sha256 = sha256_hex(c.token.expose());
        Ok(Connection { who, targets, current: 0, token, configured_sha256, spool, connected, unacked: Arc::default(), fleet_size: Default::default() })
    }

    /// Uses the token the coordinator rotated to, if the spool holds one
    /// for the configured token (saved by an earlier run of this agent).
    pub async fn use_rotated_token(&mut self) -> Result<bool, SpoolError> {
        match self.spool.rotated_token(self.configured_sha256.clone()).await? {
            Some(t) => match bearer_value(&t) {
                Ok(v) => {
                    self.token = v;
                    Ok(true)
                }
                Err(_) => Ok(false),
            },
            None => Ok(false),
        }
    }

    /// Runs sessions, reconnecting with backoff, until `stop` turns true.
    pub async fn run(mut self, mut scheduler: Scheduler, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::default();
        loop {
            if *stop.borrow() {
                return;
            }
            let mut registered = false;
            let started = tokio::time::Instant::now();
            let result = tokio::select! {
                r = self.session(&mut scheduler, &mut registered) => r,
                _ = stop.wait_for(|s| *s) => return,
            };
            self.connected.send_replace(false);
            if registered && started.elapsed() >= STABLE_SESSION {
                backoff.reset();
            }
            let spread = reconnect_spread(self.fleet_size.load(std::sync::atomic::Ordering::Relaxed));
            let mut wait = backoff.next_wait() + fleet_jitter(spread, random_below);
            let err = match result {
                Ok(()) => return,
                Err(SessionError::Rotated(token)) => {
                    match bearer_value(token.expose()) {
                        Ok(v) => {
                            if let Err(e) = self.spool.save_rotated_token(self.configured_sha256.clone(), token.expose().to_string()).await {
                                tracing::error!("the coordinator rotated this agent's token, but the spool cannot keep it ({e}): this run uses it; after a restart the agent has only its configured token, which stops working when its grace period ends");
                            }
                            self.token = v;
                            tracing::info!("the coordinator rotated this agent's token: reconnecting with the new one (kept in the spool)");
                            // At once, and to the same replica.
                            continue;
                        }
                        Err(e) => SessionError::Connect(format!("the coordinator sent a rotated token that {e}")),
                    }
                }
                Err(e) => e,
            };
            if err.is_refused_token() || err.is_too_old() {
                wait = REFUSED_RETRY;
            }
            // Several replicas: the next session goes to the next one.
            let url = self.url().to_string();
            self.current = (self.current + 1) % self.targets.len();
            let retry = if self.targets.len() > 1 {
                format!("trying {} in {:.1} s", self.url(), wait.as_secs_f64())
            } else {
                format!("retrying in {:.1} s", wait.as_secs_f64())
            };
            if err.is_refused_token() {
                if scheduler.is_suspended() {
                    tracing::warn!("the coordinator at {} still refuses this agent's token: {err}; {retry}", url);
                } else {
                    let n = scheduler.suspend();
                    tracing::error!(
                        "token revoked or unknown: the coordinator at {} refused this agent's token ({err}); this agent stops probing its {n} check(s); {} report(s) stay in the spool; registration is retried every {}s in case the token is accepted again",
                        url,
                        self.spool.waiting(),
                        REFUSED_RETRY.as_secs()
                    );
                }
            } else if err.is_too_old() {
                tracing::error!("the coordinator at {} refused this agent's protocol (this agent speaks {}): {err}; {retry}", self.url(), mailloop_proto::PROTOCOL_VERSION);
            } else if err.is_auth() {
                tracing::error!("the coordinator at {} refused this agent: {err}; check the token and region; {retry}", url);
            } else if registered {
                tracing::warn!("disconnected from the coordinator at {}: {err}; {retry}", url);
            } else {
                tracing::warn!("cannot reach the coordinator at {}: {err}; {retry}", url);
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// The URL of the replica the current or next session talks to.
    fn url(&self) -> &str {
        &self.targets[self.current].url
    }

    async fn session(&self, scheduler: &mut Scheduler, registered: &mut bool) -> Result<(), SessionError> {
        let endpoint = &self.targets[self.current].endpoint;
        let channel = endpoint.connect().await.map_err(|e| SessionError::Connect(connect_error(&e)))?;
        let mut client: Client = AgentServiceClient::with_interceptor(channel, Bearer(self.token.clone(), instance_id()));
        let reg = timed(
            "Register",
            client.register(pb::RegisterRequest {
                name: self.who.name.clone(),
                region: self.who.region.clone(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                sent_at_ms: epoch_ms(),
                protocol_version: mailloop_proto::PROTOCOL_VERSION,
            }),
        )
        .await;
        let reg = match reg {
            Err(SessionError::Call { status, .. }) if !endpoint.uri().scheme_str().is_some_and(|s| s == "https") && http_api_at(endpoint.uri()).await => {
                tracing::debug!("Register failed with {}; the port answers HTTP/1.1 with JSON", status_text(&status));
                return Err(SessionError::NotGrpc(http_api_port("Register")));
            }
            other => other?,
        };
        *registered = true;
        let before = self.fleet_size.swap(reg.fleet_size, std::sync::atomic::Ordering::Relaxed);
        if before != reg.fleet_size {
            tracing::info!(
                "the coordinator has a fleet of {} agents: reconnects after a lost session are spread over {:.1} s",
                reg.fleet_size,
                reconnect_spread(reg.fleet_size).as_secs_f64()
            );
        }
        if scheduler.is_suspended() {
            let n = scheduler.resume_probing();
            tracing::warn!("the coordinator at {} accepts this agent's token again: probing its {n} check(s) again", self.url());
        }
        let max = match reg.spool_max_reports {
            0 => self.who.spool_max_reports,
            n => u64::from(n),
        };
        self.spool.set_max(max).await?;
        let heartbeat = match reg.heartbeat_seconds {
            0 => DEFAULT_HEARTBEAT,
            s => Duration::from_secs(u64::from(s)),
        };
        let known = scheduler
            .known()
            .into_iter()
            .map(|(check_id, revision)| pb::KnownCheck { check_id, revision })
            .collect();
        let changes = client
            .watch_assignments(pb::WatchRequest { agent_id: reg.agent_id.clone(), known })
            .await
            .map_err(|status| call_error("WatchAssignments", status))?;
        log_warning("WatchAssignments", changes.metadata());
        let changes = changes.into_inner();
        let (outgoing, outgoing_rx) = mpsc::channel(64);
        let acks = client
            .report_results(ReceiverStream::new(outgoing_rx))
            .await
            .map_err(|status| call_error("ReportResults", status))?
            .into_inner();
        self.connected.send_replace(true);
        tracing::info!(
            "connected to the coordinator at {} as {} (region {}, agent id {}); heartbeat every {}s; {} report(s) to send",
            self.url(),
            self.who.name,
            self.who.region,
            reg.agent_id,
            heartbeat.as_secs(),
            self.spool.waiting()
        );
        let ended = tokio::select! {
            r = follow_assignments(changes, scheduler) => r,
            r = send_reports(&self.spool, outgoing, acks, &self.unacked) => r,
            r = heartbeats(client.clone(), reg.agent_id.clone(), heartbeat, &self.spool) => r,
        };
        // What was sent and not acknowledged is in the spool, for the next session.
        self.unacked.store(0, std::sync::atomic::Ordering::Relaxed);
        ended
    }
}

/// A unary call under [`CALL_TIMEOUT`].
async fn timed<T>(
    call: &'static str,
    f: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, SessionError> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(Ok(r)) => {
            log_warning(call, r.metadata());
            Ok(r.into_inner())
        }
        Ok(Err(status)) => Err(call_error(call, status)),
        Err(_) => Err(SessionError::Timeout { call }),
    }
}

async fn follow_assignments(mut changes: tonic::Streaming<pb::AssignmentChange>, scheduler: &mut Scheduler) -> Result<(), SessionError> {
    use pb::assignment_change::Change;
    loop {
        let change = match changes.next().await {
            Some(Ok(c)) => c,
            Some(Err(status)) => return Err(SessionError::Call { call: "WatchAssignments", status }),
            None => return Err(SessionError::Ended("assignment")),
        };
        match change.change {
            Some(Change::Upsert(a)) => scheduler.upsert(assigned(a), Origin::Coordinator).await,
            Some(Change::Remove(check_id)) => scheduler.remove(&check_id).await,
            Some(Change::RunNow(r)) => {
                scheduler.run_now(&r.check_id, &r.request_id, Some(r.traceparent.as_str()).filter(|t| !t.is_empty()));
            }
            Some(Change::Credential(c)) if !c.token.is_empty() => return Err(SessionError::Rotated(mailloop_common::Secret::new(c.token))),
            Some(Change::Credential(_)) => tracing::warn!("the coordinator sent an empty rotated token; ignored"),
            // Also what a change from a newer coordinator that this agent
            // does not know decodes to (protobuf skips unknown fields).
            None => tracing::warn!("the coordinator sent an assignment change this agent does not understand (empty or newer); ignored"),
        }
    }
}

/// Wire to spool.
fn assigned(a: pb::Assignment) -> AssignedCheck {
    AssignedCheck {
        check_id: a.check_id,
        revision: a.revision,
        check_json: a.check_json,
        interval_ms: a.interval_ms,
        phase_ms: a.phase_ms,
    }
}

/// Spool to wire.
fn result(r: SpooledReport) -> pb::ProbeResult {
    pb::ProbeResult {
        probe_id: r.probe_id,
        check_id: r.check_id,
        revision: r.revision,
        round: r.round,
        report_json: r.report_json,
        request_id: r.request_id.unwrap_or_default(),
    }
}

/// Sends the spool oldest first, then each new report; deletes each
/// report when it is acknowledged. At most [`SEND_WINDOW`] wait for an
/// acknowledgement at a time.
///
/// A replay is paced by the coordinator's commits, not by the spool: the
/// acknowledged reports leave the spool in the background ([`Deleting`]),
/// one transaction (one fsync) for every ack that arrived while the
/// previous one was being written, so sending goes on while the disk
/// works. A report acknowledged but not yet deleted when the agent dies
/// is sent again by the next session; the coordinator stores it once.
async fn send_reports(
    spool: &Spool,
    outgoing: mpsc::Sender<pb::ProbeResult>,
    mut acks: tonic::Streaming<pb::ResultAck>,
    unacked_gauge: &AtomicU64,
) -> Result<(), SessionError> {
    let mut deleting = Deleting::default();
    let ended = send_loop(spool, outgoing, &mut acks, unacked_gauge, &mut deleting).await;
    // What was acknowledged leaves the spool before the next session reads it.
    let flushed = deleting.flush(spool).await;
    ended.and(flushed)
}

async fn send_loop(
    spool: &Spool,
    outgoing: mpsc::Sender<pb::ProbeResult>,
    acks: &mut tonic::Streaming<pb::ResultAck>,
    unacked_gauge: &AtomicU64,
    deleting: &mut Deleting,
) -> Result<(), SessionError> {
    // Highest spool seq handed to the stream in this session.
    let mut cursor = 0i64;
    let mut queue: VecDeque<SpooledReport> = VecDeque::new();
    let mut unacked: HashSet<String> = HashSet::new();
    loop {
        // Read ahead in large batches (a quarter of the window at least)
        // while the queue runs low, so a replay never waits for the spool
        // with nothing to send; with nothing queued, whatever fits.
        let free = SEND_WINDOW - (unacked.len() + queue.len()).min(SEND_WINDOW);
        if (queue.is_empty() && free > 0) || (queue.len() < SEND_WINDOW / 2 && free >= SEND_WINDOW / 4) {
            for (seq, r) in spool.after(cursor, free).await? {
                cursor = seq;
                queue.push_back(r);
            }
        }
        let room = unacked.len() < SEND_WINDOW;
        unacked_gauge.store(unacked.len() as u64, std::sync::atomic::Ordering::Relaxed);
        tokio::select! {
            ack = acks.next() => {
                // Every ack already here is taken with this one.
                let mut batch = vec![ack];
                while batch.len() < SEND_WINDOW && matches!(batch.last(), Some(Some(Ok(_)))) {
                    tokio::select! {
                        biased;
                        more = acks.next() => batch.push(more),
                        () = std::future::ready(()) => break,
                    }
                }
                for ack in batch {
                    match ack {
                        Some(Ok(a)) => {
                            if !unacked.remove(&a.probe_id) {
                                tracing::debug!("acknowledgement for probe {}, which was not waiting for one", a.probe_id);
                            }
                            deleting.acked.push(a);
                        }
                        Some(Err(status)) => return Err(SessionError::Call { call: "ReportResults", status }),
                        None => return Err(SessionError::Ended("report acknowledgement")),
                    }
                }
                deleting.start(spool);
            }
            done = deleting.done(), if deleting.busy() => {
                deleting.finished(done, spool)?;
                deleting.start(spool);
            }
            permit = outgoing.reserve(), if room && !queue.is_empty() => {
                // The stream's receiving half lives as long as the call.
                let Ok(permit) = permit else { return Err(SessionError::Ended("report")) };
                let r = queue.pop_front().expect("the branch runs only with a queued report");
                tracing::debug!("sending report {} (check {}, round {})", r.probe_id, r.check_id, r.round);
                unacked.insert(r.probe_id.clone());
                permit.send(result(r));
            }
            _ = spool.pushed(), if room && queue.is_empty() => {}
        }
    }
}

/// A deletion transaction on the blocking pool: how many reports it removed.
type Deletion = tokio::task::JoinHandle<Result<usize, SpoolError>>;

/// Acknowledged reports on their way out of the spool: at most one
/// transaction at a time; the acks that arrive meanwhile wait for the next.
#[derive(Default)]
struct Deleting {
    /// Acknowledged, not yet being deleted.
    acked: Vec<pb::ResultAck>,
    /// The transaction being written, and the acks it deletes.
    running: Option<(Deletion, Vec<pb::ResultAck>)>,
}

impl Deleting {
    fn busy(&self) -> bool {
        self.running.is_some()
    }

    /// Starts deleting what is acknowledged, unless a deletion runs.
    fn start(&mut self, spool: &Spool) {
        if self.running.is_some() || self.acked.is_empty() {
            return;
        }
        let acked = std::mem::take(&mut self.acked);
        let ids = acked.iter().map(|a| a.probe_id.clone()).collect();
        let spool = spool.clone();
        self.running = Some((tokio::spawn(async move { spool.remove_many(ids).await }), acked));
    }

    /// Completes when the running deletion does (pending forever if none).
    async fn done(&mut self) -> Result<Result<usize, SpoolError>, tokio::task::JoinError> {
        match &mut self.running {
            Some((handle, _)) => handle.await,
            None => std::future::pending().await,
        }
    }

    /// Logs the acks of a finished deletion.
    fn finished(&mut self, done: Result<Result<usize, SpoolError>, tokio::task::JoinError>, spool: &Spool) -> Result<(), SessionError> {
        let (_, acked) = self.running.take().expect("a deletion was running");
        done.map_err(SpoolError::from)??;
        log_acks(&acked, spool.waiting());
        Ok(())
    }

    /// Waits for the running deletion, then deletes the rest.
    async fn flush(&mut self, spool: &Spool) -> Result<(), SessionError> {
        if self.running.is_some() {
            let done = self.done().await;
            self.finished(done, spool)?;
        }
        self.start(spool);
        if self.running.is_some() {
            let done = self.done().await;
            self.finished(done, spool)?;
        }
        Ok(())
    }
}

/// The lines for a batch of acknowledgements (`waiting`: the spool after
/// their deletion): a single ack is named; a batch (a replay) is one line
/// with its size and first and last report, so a replay of 10,000 reports
/// a second does not write 10,000 lines. A report stored but kept out of
/// verdicts (its round outside the window of the coordinator's clock) and
/// a rejected report are always named (rejections one by one).
fn log_acks(acks: &[pb::ResultAck], waiting: u64) {
    let stored: Vec<&pb::ResultAck> = acks.iter().filter(|a| a.stored).collect();
    match stored.as_slice() {
        [] => {}
        [one] => tracing::info!("report {} acked: stored by the coordinator ({waiting} waiting)", one.probe_id),
        [first, .., last] => tracing::info!(
            "{} reports acked: stored by the coordinator, {} to {} ({waiting} waiting)",
            stored.len(),
            first.probe_id,
            last.probe_id
        ),
    }
    let late: Vec<&&pb::ResultAck> = stored.iter().filter(|a| !a.warning.is_empty()).collect();
    if let Some(ack) = late.first() {
        let skew = match ack.coordinator_time_ms {
            0 => "unknown".to_string(),
            t => format!("{:+.1} s", (epoch_ms() - t) as f64 / 1000.0),
        };
        let more = match late.len() {
            1 => String::new(),
            n => format!(" (and {} more reports of this batch)", n - 1),
        };
        tracing::warn!("report {} stored but not judged{more}: {}; this agent's clock minus the coordinator's: {skew}", ack.probe_id, ack.warning);
    }
    for ack in acks.iter().filter(|a| !a.stored) {
        let why = if ack.error.is_empty() { "no reason given" } else { ack.error.as_str() };
        tracing::warn!("report {} rejected by the coordinator: {why}; dropped from the spool", ack.probe_id);
    }
}

/// This host's clock, for the coordinator's skew measurement.
fn epoch_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

async fn heartbeats(mut client: Client, agent_id: String, every: Duration, spool: &Spool) -> Result<(), SessionError> {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let spooled = spool.waiting();
        timed("Heartbeat", client.heartbeat(pb::HeartbeatRequest { agent_id: agent_id.clone(), spooled, sent_at_ms: epoch_ms() })).await?;
        tracing::debug!("heartbeat sent ({spooled} report(s) spooled)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap_with_jitter_and_resets() {
        let mut b = Backoff::default();
        let steps: Vec<Duration> = (0..10).map(|_| b.next_wait()).collect();
        let caps = [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000];
        for (wait, cap) in steps.iter().zip(caps) {
            let cap = Duration::from_millis(cap);
            assert!(*wait >= cap / 2 && *wait <= cap, "{wait:?} not in the upper half of {cap:?}");
        }
        b.reset();
        assert!(b.next_wait() <= BACKOFF_MIN);
    }

    #[test]
    fn reconnect_jitter_grows_with_the_advertised_fleet_and_is_capped() {
        assert_eq!(reconnect_spread(0), Duration::ZERO, "an older coordinator: no spread");
        assert_eq!(reconnect_spread(100), Duration::from_millis(300));
        assert_eq!(reconnect_spread(10_000), Duration::from_secs(30));
        assert_eq!(reconnect_spread(1_000_000), SPREAD_MAX);
        assert_eq!(reconnect_spread(u32::MAX), SPREAD_MAX);
        // The draw covers the whole window, both ends included, and no more.
        let spread = reconnect_spread(10_000);
        assert_eq!(fleet_jitter(spread, |_| 0), Duration::ZERO);
        assert_eq!(fleet_jitter(spread, |n| n - 1), spread);
        assert_eq!(fleet_jitter(Duration::ZERO, |n| n - 1), Duration::ZERO);
        let (mut low, mut high) = (Duration::MAX, Duration::ZERO);
        for _ in 0..2_000 {
            let w = fleet_jitter(spread, random_below);
            assert!(w <= spread, "{w:?} beyond {spread:?}");
            low = low.min(w);
            high = high.max(w);
        }
        assert!(low < spread / 10 && high > spread * 9 / 10, "draws {low:?}..{high:?} do not cover the window");
    }

    #[test]
    fn error_chains_say_each_thing_once() {
        let mut text = "h2 protocol error: error reading a body from connection".to_string();
        append(&mut text, "error reading a body from connection: stream closed because of a broken pipe");
        assert_eq!(text, "h2 protocol error: error reading a body from connection: stream closed because of a broken pipe");
        let status = Status::unauthenticated("unknown or missing agent token");
        assert_eq!(status_text(&status), "Unauthenticated: unknown or missing agent token");
    }
}
