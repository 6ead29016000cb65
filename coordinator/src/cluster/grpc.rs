//! The agent API (`mailloop.v1.AgentService`), the gRPC edge.
//!
//! Wire types (`mailloop_proto::pb`) live here and nowhere else: requests
//! are authenticated and converted into hub and storage calls, and answers
//! converted back.
//!
//! **Invariant:** a `ResultAck { stored: true }` is sent only after the
//! report's transaction has committed. Reports of one stream are pipelined
//! (up to [`IN_FLIGHT`] waiting for their commit) and acknowledged in the
//! order they arrived. If storage fails, the stream ends with `Unavailable`
//! instead of a rejection, so the agent keeps the report in its spool.

use crate::clock::now_ms;
use crate::config::names::token_sha256;
use crate::cluster::hub::{AgentIdentity, Hub};
use crate::cluster::ondemand::{MAX_REQUEST_ID, RunOrder};
use crate::cluster::schedule::{self, Assignment, RoundFit};
use crate::shutdown::Shutdown;
use crate::storage::{Inserted, ReplicaRole, ReportRow, Storage, StorageError, StoredCheck};
use crate::telemetry::{IngestMark, IngestStream};
use mailloop_common::ProbeReport;
use mailloop_proto::pb;
use mailloop_proto::pb::agent_service_server::AgentService;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

/// Reports of one stream waiting for their commit before the reader pauses.
pub const IN_FLIGHT: usize = 1024;
/// Longest probe id accepted.
const MAX_PROBE_ID: usize = 200;

/// Settings handed to agents and limits applied to them.
#[derive(Debug, Clone)]
pub struct AgentApiSettings {
    pub heartbeat_seconds: u32,
    pub spool_max_reports: u32,
    /// Open WatchAssignments (and, separately, ReportResults) streams one agent may have.
    pub max_streams_per_agent: usize,
    /// Agents below this protocol are refused at Register (`min_agent_protocol`).
    pub min_agent_protocol: u32,
}

/// The `AgentService` implementation.
pub struct AgentApi {
    hub: Arc<Hub>,
    storage: Arc<Storage>,
    settings: AgentApiSettings,
    shutdown: Shutdown,
    report_streams: Arc<Mutex<HashMap<String, usize>>>,
    /// Open WatchAssignments streams per agent name: (stream id, the
    /// agent process's `mailloop-instance`, peer address).
    watchers: Watchers,
    /// Where newly stored reports go to be judged (None: no judge).
    judge: Option<crate::judge::run::JudgeFeed>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    /// The coordinator's traces (`report.ingest` batches, one span per call).
    traces: crate::telemetry::Traces,
    /// Enrollment (None: Enroll is refused).
    control: Option<Arc<crate::cluster::control::Control>>,
    /// This replica's role; while it is cut off from the database it takes
    /// no agent and no report, and ends the streams it has, so agents move
    /// to a replica that can store (None: always serving).
    role: Option<watch::Receiver<ReplicaRole>>,
}

/// What an agent is told by a replica cut off from its database.
const CUT_OFF: &str = "this coordinator replica is cut off from its database; the agent keeps its reports and tries the next coordinator";

/// Resolves once `role` says cut off (never, without a role).
async fn cut_off(role: Option<watch::Receiver<ReplicaRole>>) {
    match role {
        Some(mut role) => {
            let _ = role.wait_for(|r| *r == ReplicaRole::CutOff).await;
            // The sender is gone only at shutdown, which ends streams itself.
            if *role.borrow() != ReplicaRole::CutOff {
                std::future::pending::<()>().await
            }
        }
        None => std::future::pending().await,
    }
}

type Watchers = Arc<Mutex<HashMap<String, Vec<(u64, String, String)>>>>;

/// The header an agent process sends with a random id of its own, so a
/// second process with the same token is told apart from a reconnect.
const INSTANCE_HEADER: &str = "mailloop-instance";
/// The header of a WatchAssignments answer that carries a warning the agent logs.
const WARNING_HEADER: &str = "mailloop-warning";

/// Keeps a WatchAssignments stream in [`AgentApi::watchers`] while it runs.
struct WatchSlot {
    open: Watchers,
    agent: String,
    id: u64,
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = open.get_mut(&self.agent) {
            list.retain(|(id, _, _)| *id != self.id);
            if list.is_empty() {
                open.remove(&self.agent);
            }
        }
    }
}

impl AgentApi {
    /// Tells the judge about every newly stored report (after its commit,
    /// without ever waiting on the judge).
    pub fn with_judge(mut self, feed: crate::judge::run::JudgeFeed) -> AgentApi {
        self.judge = Some(feed);
        self
    }

    /// Counts reports received, rejected and stored, and observes new ones.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> AgentApi {
        self.metrics = Some(metrics);
        self
    }

    /// Traces every report from its arrival to its acknowledgement.
    pub fn with_traces(mut self, traces: crate::telemetry::Traces) -> AgentApi {
        self.traces = traces;
        self
    }

    /// Follows this replica's role: cut off from the database, it refuses
    /// agents and reports and ends its streams.
    pub fn with_role(mut self, role: watch::Receiver<ReplicaRole>) -> AgentApi {
        self.role = Some(role);
        self
    }

    fn is_cut_off(&self) -> bool {
        self.role.as_ref().is_some_and(|r| *r.borrow() == ReplicaRole::CutOff)
    }

    pub fn new(
        hub: Arc<Hub>,
        storage: Arc<Storage>,
        settings: AgentApiSettings,
        shutdown: Shutdown,
    ) -> AgentApi {
        AgentApi {
            hub,
            storage,
            settings,
            shutdown,
            report_streams: Arc::default(),
            watchers: Arc::default(),
            judge: None,
            metrics: None,
            traces: crate::telemetry::Traces::off(),
            control: None,
            role: None,
        }
    }

    /// Serves Enroll through `control` (join tokens).
    pub fn with_control(mut self, control: Arc<crate::cluster::control::Control>) -> AgentApi {
        self.control = Some(control);
        self
    }

    fn authenticate(
        &self,
        metadata: &MetadataMap,
        call: &'static str,
    ) -> Result<AgentIdentity, Status> {
        let token = bearer(metadata);
        let who = self.hub.authenticate(token).map_err(|e| {
            tracing::warn!(call, error = %e, "agent call refused");
            Status::unauthenticated(e.to_string())
        })?;
        // The first call with a newly issued token is stored, so a second
        // rotation anywhere, even after a restart, knows which token the
        // agent holds.
        let used = token.map(token_sha256).unwrap_or_default();
        if self.hub.first_use(&who.name, &used) {
            let storage = self.storage.clone();
            let name = who.name.clone();
            tokio::spawn(async move {
                if let Err(e) = storage.confirm_agent_token(name.clone(), used).await {
                    tracing::warn!(agent = %name, error = %e, "cannot store that the agent uses its new token; a rotation before the next restart may treat it as still on its previous one");
                }
            });
        }
        Ok(who)
    }

    /// Another process (another `mailloop-instance`) holding an open
    /// assignment stream under `agent`'s identity: logged with both peers,
    /// and returned as the warning for the newcomer's answer. Both would
    /// run the agent's checks and their reports would mix.
    fn second_process(
        &self,
        agent: &AgentIdentity,
        metadata: &MetadataMap,
        peer: &str,
    ) -> Option<String> {
        let instance = metadata.get(INSTANCE_HEADER)?.to_str().ok()?;
        let open = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        let others: Vec<&str> = open
            .get(&agent.name)?
            .iter()
            .filter(|(_, other, _)| !other.is_empty() && other != instance)
            .map(|(_, _, p)| p.as_str())
            .collect();
        if others.is_empty() {
            return None;
        }
        let others = others.join(", ");
        tracing::warn!(
            agent = %agent.name,
            region = %agent.region,
            connected_peer = %others,
            new_peer = %peer,
            "a second process uses the identity (token) of agent {}: one is connected from {others}, another calls from {peer}; both would run its checks — stop one, or give it its own [[agent]] and token",
            agent.name
        );
        Some(format!(
            "another process with this agent's identity ({}) is already connected from {others}; this one calls from {peer}. Both would run the same checks: stop one, or give each its own [[agent]] name and token",
            agent.name
        ))
    }

    fn same_agent(agent: &AgentIdentity, agent_id: &str, call: &'static str) -> Result<(), Status> {
        if agent_id.is_empty() || agent_id == agent.name {
            return Ok(());
        }
        tracing::warn!(call, agent = %agent.name, region = %agent.region, claimed = %agent_id, "agent id does not match its token");
        Err(Status::permission_denied(format!(
            "this token belongs to agent {:?}, not {agent_id:?}",
            agent.name
        )))
    }
}

/// The token of `authorization: Bearer <token>`.
fn bearer(metadata: &MetadataMap) -> Option<&str> {
    let value = metadata.get("authorization")?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let mut span = self.traces.rpc("Register");
        let result: Result<Response<pb::RegisterResponse>, Status> = async {
            let agent = self.authenticate(request.metadata(), "Register")?;
            if self.is_cut_off() {
                return Err(Status::unavailable(CUT_OFF));
            }
            crate::telemetry::rpc_agent(span.as_mut(), &agent.name, &agent.region);
            let r = request.into_inner();
            // Before anything else: an agent too old to be understood is told
            // so, instead of being half-served.
            if r.protocol_version < self.settings.min_agent_protocol {
                let speaks = match r.protocol_version {
                    0 => "this agent predates protocol versions (0)".to_string(),
                    n => format!("this agent speaks {n}"),
                };
                let version = if r.version.is_empty() {
                    "?"
                } else {
                    r.version.as_str()
                };
                tracing::warn!(agent = %agent.name, region = %agent.region, protocol = r.protocol_version, version, "agent refused: too old a protocol");
                return Err(Status::failed_precondition(format!(
                    "upgrade the agent: coordinator needs protocol ≥ {} ({speaks}; mailloop-agent {version})",
                    self.settings.min_agent_protocol
                )));
            }
            if r.region != agent.region {
                tracing::warn!(agent = %agent.name, region = %agent.region, claimed_region = %r.region, "agent registered with another region than its token's");
                return Err(Status::permission_denied(format!(
                    "this token is bound to region {:?}, not {:?}",
                    agent.region, r.region
                )));
            }
            if !r.name.is_empty() && r.name != agent.name {
                tracing::info!(agent = %agent.name, calls_itself = %r.name, "agent registered under another name than its token's; the token's name is used");
            }
            let now = now_ms();
            let version = (!r.version.is_empty()).then_some(r.version);
            self.hub.seen(&agent.name, now, version.as_deref());
            self.hub.clock(&agent, r.sent_at_ms, now);
            // The hub has it in memory already; the stored copy (last seen,
            // version) need not hold up the answer: a storm of registrations
            // then shares commits instead of each waiting for its own fsync.
            {
                let (storage, name, version) = (self.storage.clone(), agent.name.clone(), version.clone());
                tokio::spawn(async move {
                    if let Err(e) = storage.touch_agent(name.clone(), now, version, None).await {
                        tracing::error!(agent = %name, error = %e, "cannot record the agent's registration");
                    }
                });
            }
            tracing::info!(agent = %agent.name, region = %agent.region, version = version.as_deref().unwrap_or("?"), "agent registered");
            Ok(Response::new(pb::RegisterResponse {
                agent_id: agent.name,
                heartbeat_seconds: self.settings.heartbeat_seconds,
                spool_max_reports: self.settings.spool_max_reports,
                protocol_version: mailloop_proto::PROTOCOL_VERSION,
                fleet_size: self.hub.fleet_size(),
            }))
        }
        .await;
        crate::telemetry::end_rpc(span, &result);
        result
    }

    type WatchAssignmentsStream = ReceiverStream<Result<pb::AssignmentChange, Status>>;

    async fn watch_assignments(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchAssignmentsStream>, Status> {
        let mut span = self.traces.rpc("WatchAssignments");
        let result: Result<Response<Self::WatchAssignmentsStream>, Status> = async {
            let agent = self.authenticate(request.metadata(), "WatchAssignments")?;
            if self.is_cut_off() {
                return Err(Status::unavailable(CUT_OFF));
            }
            crate::telemetry::rpc_agent(span.as_mut(), &agent.name, &agent.region);
            let peer = peer_of(&request);
            let warning = self.second_process(&agent, request.metadata(), &peer);
            let instance = request
                .metadata()
                .get(INSTANCE_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let used = bearer(request.metadata()).map(token_sha256).unwrap_or_default();
            let req = request.into_inner();
            Self::same_agent(&agent, &req.agent_id, "WatchAssignments")?;
            // Subscribed before the session counts: once it is in the map the
            // API may pick this agent for an on-demand run, and that order must
            // not be missed.
            let orders = self.hub.on_demand().subscribe();
            // Checked and counted in one step, so concurrent calls cannot pass
            // the cap together.
            let Some(session) = self
                .hub
                .try_connect(&agent, self.settings.max_streams_per_agent)
            else {
                tracing::warn!(agent = %agent.name, region = %agent.region, "too many assignment streams from one agent");
                return Err(Status::resource_exhausted(format!(
                    "agent {} already has {} assignment streams open",
                    agent.name, self.settings.max_streams_per_agent
                )));
            };
            let held: HashMap<String, u64> = req
                .known
                .into_iter()
                .map(|k| (k.check_id, k.revision))
                .collect();
            let (tx, rx) = mpsc::channel(256);
            static NEXT_WATCH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
            let id = NEXT_WATCH.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.watchers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(agent.name.clone())
                .or_default()
                .push((id, instance, peer));
            let slot = WatchSlot {
                open: self.watchers.clone(),
                agent: agent.name.clone(),
                id,
            };
            let watch = Watch {
                _slot: slot,
                hub: self.hub.clone(),
                storage: self.storage.clone(),
                shutdown: self.shutdown.clone(),
                agent,
                held,
                tx,
                used,
                credential_sent: None,
                remade: false,
                role: self.role.clone(),
            };
            tokio::spawn(watch.run(session, orders));
            let mut response = Response::new(ReceiverStream::new(rx));
            warn_in(&mut response, warning);
            Ok(response)
        }
        .await;
        crate::telemetry::end_rpc(span, &result);
        result
    }

    type ReportResultsStream = ReceiverStream<Result<pb::ResultAck, Status>>;

    async fn report_results(
        &self,
        request: Request<Streaming<pb::ProbeResult>>,
    ) -> Result<Response<Self::ReportResultsStream>, Status> {
        let agent = self.authenticate(request.metadata(), "ReportResults")?;
        if self.is_cut_off() {
            return Err(Status::unavailable(CUT_OFF));
        }
        let slot = {
            let mut open = self
                .report_streams
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let n = open.entry(agent.name.clone()).or_default();
            if *n >= self.settings.max_streams_per_agent {
                tracing::warn!(agent = %agent.name, region = %agent.region, "too many report streams from one agent");
                return Err(Status::resource_exhausted(format!(
                    "agent {} already has {} report streams open",
                    agent.name, self.settings.max_streams_per_agent
                )));
            }
            *n += 1;
            Slot {
                open: self.report_streams.clone(),
                agent: agent.name.clone(),
            }
        };
        let inbound = request.into_inner();
        let (ack_tx, ack_rx) = mpsc::channel(256);
        let (pending_tx, pending_rx) = mpsc::channel(IN_FLIGHT);
        let reader = Reader {
            hub: self.hub.clone(),
            storage: self.storage.clone(),
            shutdown: self.shutdown.clone(),
            agent: agent.clone(),
            pending: pending_tx,
            judge: self.judge.clone(),
            metrics: self.metrics.clone(),
            traces: self.traces.ingest_stream(&agent.name, &agent.region),
            out_of_window: Default::default(),
            _slot: slot,
        };
        tracing::debug!(agent = %agent.name, region = %agent.region, "report stream opened");
        let traces = reader.traces.clone();
        tokio::spawn(reader.run(inbound));
        tokio::spawn(acknowledge(
            agent,
            self.metrics.clone(),
            traces,
            pending_rx,
            ack_tx,
            self.role.clone(),
            self.shutdown.clone(),
        ));
        Ok(Response::new(ReceiverStream::new(ack_rx)))
    }

    async fn enroll(
        &self,
        request: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let mut span = self.traces.rpc("Enroll");
        let result: Result<Response<pb::EnrollResponse>, Status> = async {
            use crate::cluster::control::ControlError;
            let peer = peer_of(&request);
            let Some(control) = &self.control else {
                return Err(Status::unimplemented(
                    "this coordinator does not enroll agents",
                ));
            };
            let r = request.into_inner();
            if r.join_secret.is_empty() || r.join_secret.len() > 200 {
                return Err(Status::invalid_argument("no join token secret"));
            }
            match control.enroll(&r.join_secret).await {
                Ok((agent, token)) => {
                    crate::telemetry::rpc_agent(span.as_mut(), &agent.name, &agent.region);
                    tracing::info!(agent = %agent.name, region = %agent.region, %peer, protocol = r.protocol_version, version = %r.version, "agent enrolled");
                    Ok(Response::new(pb::EnrollResponse {
                        agent_name: agent.name,
                        region: agent.region,
                        token: token.expose().to_string(),
                    }))
                }
                Err(ControlError::Storage(e)) => {
                    tracing::error!(error = %e, "enrollment: storage failed");
                    Err(Status::unavailable(format!(
                        "the coordinator cannot store the enrollment now: {e}"
                    )))
                }
                Err(e @ ControlError::NotFound(_)) => {
                    tracing::warn!(%peer, error = %e, "enrollment refused");
                    Err(Status::unauthenticated(e.to_string()))
                }
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "enrollment refused");
                    Err(Status::permission_denied(e.to_string()))
                }
            }
        }
        .await;
        crate::telemetry::end_rpc(span, &result);
        result
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let mut span = self.traces.rpc("Heartbeat");
        let result: Result<Response<pb::HeartbeatResponse>, Status> = async {
            let agent = self.authenticate(request.metadata(), "Heartbeat")?;
            crate::telemetry::rpc_agent(span.as_mut(), &agent.name, &agent.region);
            let r = request.into_inner();
            Self::same_agent(&agent, &r.agent_id, "Heartbeat")?;
            let now = now_ms();
            self.hub.seen(&agent.name, now, None);
            self.hub.clock(&agent, r.sent_at_ms, now);
            self.hub.spooled(&agent.name, r.spooled);
            if r.spooled > 0 {
                tracing::info!(agent = %agent.name, region = %agent.region, spooled = r.spooled, "agent has reports waiting in its spool");
            }
            if let Err(e) = self
                .storage
                .touch_agent(agent.name.clone(), now, None, None)
                .await
            {
                tracing::error!(agent = %agent.name, error = %e, "cannot record the agent's heartbeat");
            }
            Ok(Response::new(pb::HeartbeatResponse {}))
        }
        .await;
        crate::telemetry::end_rpc(span, &result);
        result
    }
}

/// The caller's address, for logs.
fn peer_of<T>(request: &Request<T>) -> String {
    request
        .remote_addr()
        .map_or_else(|| "an unknown address".to_string(), |a| a.to_string())
}

/// Puts `warning` (if any) into the answer's [`WARNING_HEADER`].
fn warn_in<T>(response: &mut Response<T>, warning: Option<String>) {
    let value = warning.and_then(|w| w.replace(['\r', '\n'], " ").parse().ok());
    if let Some(v) = value {
        response.metadata_mut().insert(WARNING_HEADER, v);
    }
}

/// One WatchAssignments stream: the agent is connected while it runs.
struct Watch {
    /// Removes the stream from the watchers when it ends.
    _slot: WatchSlot,
    hub: Arc<Hub>,
    storage: Arc<Storage>,
    shutdown: Shutdown,
    agent: AgentIdentity,
    /// What the agent holds now: check id → revision.
    held: HashMap<String, u64>,
    tx: mpsc::Sender<Result<pb::AssignmentChange, Status>>,
    /// SHA-256 of the token the stream was opened with.
    used: String,
    /// SHA-256 of the rotated token last sent on this stream.
    credential_sent: Option<String>,
    /// Whether this stream already remade a rotated token it found
    /// undeliverable here (at most once per stream, so two streams of one
    /// agent never keep replacing each other's).
    remade: bool,
    role: Option<watch::Receiver<ReplicaRole>>,
}

impl Watch {
    /// Runs the stream of the session `watch_assignments` opened (already
    /// in the assignment map; `orders` subscribed before it).
    async fn run(
        mut self,
        session: crate::cluster::hub::Session,
        mut orders: broadcast::Receiver<Arc<RunOrder>>,
    ) {
        let agent = self.agent.clone();
        let now = now_ms();
        self.hub.seen(&agent.name, now, None);
        let _ = self
            .storage
            .touch_agent(agent.name.clone(), now, None, Some(true))
            .await;
        tracing::info!(agent = %agent.name, region = %agent.region, known = self.held.len(), "agent connected");
        // The session is in the map already, so a reconnecting agent is
        // never first told to drop everything it holds.
        let reason = match self.hub.watch_agent(&agent.name) {
            Some(mut wake) => self.follow(&mut wake, &mut orders).await,
            None => "agent removed",
        };
        drop(session);
        let _ = self
            .storage
            .touch_agent(
                agent.name.clone(),
                now_ms(),
                None,
                Some(self.hub.sessions(&agent.name) > 0),
            )
            .await;
        tracing::info!(agent = %agent.name, region = %agent.region, reason, "agent disconnected; its checks move to other agents of its region");
    }

    /// The agent called with its previous token but the new one is not
    /// held here (made before a restart or by another replica; only its
    /// hash is stored): a fresh token replaces it, in one conditional
    /// write, and is delivered instead. None if nothing is to be remade or
    /// the row changed meanwhile (the change is followed as any other).
    async fn remake_token(&mut self) -> Option<mailloop_common::Secret> {
        let expected = self.hub.token_to_remake(&self.agent.name, &self.used, now_ms())?;
        self.remade = true;
        let token = mailloop_common::Secret::new(crate::cluster::control::new_token("mlt"));
        let hash = token_sha256(token.expose());
        match self
            .storage
            .replace_agent_token(self.agent.name.clone(), expected.clone(), hash.clone())
            .await
        {
            Ok(true) => {
                let mut stored = self.hub.agent(&self.agent.name)?.stored;
                if stored.token_sha256 != expected {
                    return None;
                }
                stored.token_sha256 = hash;
                stored.token_in_use = false;
                self.hub.put_rotated(stored, token.clone());
                tracing::info!(agent = %self.agent.name, region = %self.agent.region, "rotated token made again here (the one made at rotation is not held by this coordinator: restarted, or another replica)");
                Some(token)
            }
            Ok(false) => None,
            Err(e) => {
                tracing::warn!(agent = %self.agent.name, error = %e, "cannot store a remade rotated token; the agent keeps its previous one for now");
                None
            }
        }
    }

    async fn follow(
        &mut self,
        wake: &mut tokio::sync::watch::Receiver<u64>,
        orders: &mut broadcast::Receiver<Arc<RunOrder>>,
    ) -> &'static str {
        // On-demand runs for this agent, sent after the map's changes so the
        // agent always holds the check before it is asked to run it.
        let mut due: Vec<Arc<RunOrder>> = Vec::new();
        loop {
            // Marked seen before reading, so a change after the read wakes us.
            wake.borrow_and_update();
            // One lock: standing, token, and the changes since last time.
            let now = now_ms();
            let seen = self.hub.follow(&self.agent, &self.used, now, &mut self.held);
            if !seen.valid {
                let _ = self
                    .tx
                    .send(Err(Status::unauthenticated(format!(
                        "the token of agent {} has been revoked",
                        self.agent.name
                    ))))
                    .await;
                return "token revoked";
            }
            let until = seen.until;
            if until.is_some_and(|u| now >= u) {
                let _ = self
                    .tx
                    .send(Err(Status::unauthenticated(
                        crate::cluster::hub::AuthError::Rotated(self.agent.name.clone()).to_string(),
                    )))
                    .await;
                return "rotated token's grace period ended";
            }
            let mut pending = seen.pending;
            if pending.is_none() && seen.to_remake.is_some() && !self.remade {
                pending = self.remake_token().await;
            }
            if let Some(token) = pending {
                let hash = token_sha256(token.expose());
                if self.credential_sent.as_deref() != Some(hash.as_str()) {
                    let change = pb::AssignmentChange {
                        change: Some(pb::assignment_change::Change::Credential(pb::Credential {
                            token: token.expose().to_string(),
                            previous_valid_until_ms: until.unwrap_or_default(),
                        })),
                    };
                    if self.tx.send(Ok(change)).await.is_err() {
                        return "stream closed by the agent";
                    }
                    tracing::info!(agent = %self.agent.name, region = %self.agent.region, "rotated token sent to the agent");
                    self.credential_sent = Some(hash);
                }
            }
            // Wakes the loop when the previous token's grace period ends.
            let grace_end = async {
                match until {
                    Some(u) => {
                        let left = u.saturating_sub(now_ms()).max(0) as u64;
                        tokio::time::sleep(std::time::Duration::from_millis(left)).await
                    }
                    None => std::future::pending().await,
                }
            };
            for change in changes(seen.removed, &seen.upserts) {
                log_change(&self.agent, &change);
                if self.tx.send(Ok(change)).await.is_err() {
                    return "stream closed by the agent";
                }
            }
            for order in due.drain(..) {
                let Some(change) = run_now(&self.agent, &self.held, &order) else {
                    continue;
                };
                if self.tx.send(Ok(change)).await.is_err() {
                    return "stream closed by the agent";
                }
            }
            tokio::select! {
                r = wake.changed() => if r.is_err() { return "coordinator stopping" },
                o = orders.recv() => match o {
                    Ok(order) => if order.agents.contains(&self.agent.name) { due.push(order) },
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(agent = %self.agent.name, region = %self.agent.region, missed = n, "assignment stream fell behind the on-demand runs; it missed some");
                    }
                    Err(broadcast::error::RecvError::Closed) => return "coordinator stopping",
                },
                _ = self.tx.closed() => return "stream closed by the agent",
                _ = cut_off(self.role.clone()) => {
                    let _ = self.tx.send(Err(Status::unavailable(CUT_OFF))).await;
                    return "this replica is cut off from the database";
                }
                _ = grace_end => {}
                _ = self.shutdown.recv() => {
                    let _ = self.tx.send(Err(Status::unavailable("the coordinator is shutting down; reconnect"))).await;
                    return "shutting down";
                }
            }
        }
    }
}

/// The RunNow for `order`, if the agent holds the check (it may have moved
/// away between the order and now: then the region simply does not report).
fn run_now(
    agent: &AgentIdentity,
    held: &HashMap<String, u64>,
    order: &RunOrder,
) -> Option<pb::AssignmentChange> {
    if !held.contains_key(&order.check_id) {
        tracing::warn!(agent = %agent.name, region = %agent.region, check = %order.check_id, request = %order.request_id, "on-demand run not sent: the check moved away from this agent");
        return None;
    }
    tracing::info!(agent = %agent.name, region = %agent.region, check = %order.check_id, request = %order.request_id, "on-demand run sent");
    Some(pb::AssignmentChange {
        change: Some(pb::assignment_change::Change::RunNow(pb::RunNow {
            check_id: order.check_id.clone(),
            request_id: order.request_id.clone(),
            traceparent: order.traceparent.clone().unwrap_or_default(),
        })),
    })
}

fn log_change(agent: &AgentIdentity, change: &pb::AssignmentChange) {
    match &change.change {
        Some(pb::assignment_change::Change::Upsert(a)) => {
            tracing::debug!(agent = %agent.name, region = %agent.region, check = %a.check_id, revision = a.revision, "assignment sent");
        }
        Some(pb::assignment_change::Change::Remove(id)) => {
            tracing::debug!(agent = %agent.name, region = %agent.region, check = %id, "assignment removed");
        }
        Some(pb::assignment_change::Change::RunNow(_) | pb::assignment_change::Change::Credential(_)) | None => {}
    }
}

/// The changes that turn `held` into `want`, applied to `held`: removals
/// first, then additions and changed revisions.
pub fn diff(
    held: &mut HashMap<String, u64>,
    want: Option<&BTreeMap<String, Arc<Assignment>>>,
) -> Vec<pb::AssignmentChange> {
    let (removed, upserts) = crate::cluster::hub::diff_held(held, want);
    changes(removed, &upserts)
}

/// The wire form of removals (first) and upserts.
fn changes(removed: Vec<String>, upserts: &[Arc<Assignment>]) -> Vec<pb::AssignmentChange> {
    removed
        .into_iter()
        .map(|id| pb::AssignmentChange {
            change: Some(pb::assignment_change::Change::Remove(id)),
        })
        .chain(upserts.iter().map(|a| pb::AssignmentChange {
            change: Some(pb::assignment_change::Change::Upsert(to_wire(a))),
        }))
        .collect()
}

fn to_wire(a: &Assignment) -> pb::Assignment {
    pb::Assignment {
        check_id: a.check_id.clone(),
        revision: a.revision,
        check_json: a.check_json.to_string(),
        interval_ms: a.interval_ms,
        phase_ms: a.phase_ms,
    }
}

/// Frees a report-stream slot when the stream's reader ends.
struct Slot {
    open: Arc<Mutex<HashMap<String, usize>>>,
    agent: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.agent) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.agent);
            }
        }
    }
}

/// A report on its way to an ack.
enum Pending {
    /// Refused before storage: acknowledged at once with the reason.
    Rejected(pb::ResultAck),
    /// Waiting for its commit.
    Storing {
        probe_id: String,
        check_id: String,
        commit: oneshot::Receiver<Result<Inserted, StorageError>>,
        /// Offered to the judge once the commit says it is new.
        judge: Option<crate::judge::run::Offer>,
        /// Stored but kept out of judging: why (see [`RoundWindow`]).
        warning: String,
        /// Observed by the metrics once the commit says it is new (the
        /// report as parsed at intake: the JSON is parsed once per report).
        observe: Option<Arc<ProbeReport>>,
        /// Its part of a `report.ingest` span, added at the ack.
        span: Option<IngestMark>,
    },
    /// The stream must end with this status (after the acks before it).
    End(Status),
}

/// Reads one ReportResults stream and queues each report for storage.
struct Reader {
    hub: Arc<Hub>,
    storage: Arc<Storage>,
    shutdown: Shutdown,
    agent: AgentIdentity,
    pending: mpsc::Sender<Pending>,
    judge: Option<crate::judge::run::JudgeFeed>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    traces: IngestStream,
    /// Reports of this stream outside their round's window: the first is
    /// logged, the rest only counted (each ack still carries its warning),
    /// so an agent replaying a day of late reports does not write a log
    /// line per report.
    out_of_window: std::sync::atomic::AtomicU64,
    _slot: Slot,
}

impl Reader {
    async fn run(mut self, inbound: Streaming<pb::ProbeResult>) {
        self.read(inbound).await;
        let late = self.out_of_window.load(std::sync::atomic::Ordering::Relaxed);
        if late > 1 {
            tracing::warn!(agent = %self.agent.name, region = %self.agent.region, reports = late, "{late} reports of this stream were outside their round's window (the first is logged above): stored as early/late evidence, kept out of verdicts");
        }
    }

    async fn read(&mut self, mut inbound: Streaming<pb::ProbeResult>) {
        loop {
            let next = tokio::select! {
                m = inbound.message() => m,
                // Stop taking reports; those already taken are still acknowledged.
                _ = self.shutdown.recv() => {
                    let _ = self.pending.send(Pending::End(Status::unavailable("the coordinator is shutting down; unacknowledged reports will be taken after a reconnect"))).await;
                    return;
                }
            };
            let item = match next {
                Ok(Some(result)) => self.take(result).await,
                Ok(None) => return,
                Err(status) => {
                    let status = if status.code() == tonic::Code::OutOfRange {
                        Status::resource_exhausted(status.message().to_string())
                    } else {
                        status
                    };
                    tracing::warn!(agent = %self.agent.name, region = %self.agent.region, code = ?status.code(), error = %status.message(), "report stream broke");
                    Pending::End(status)
                }
            };
            let end = matches!(item, Pending::End(_));
            if self.pending.send(item).await.is_err() || end {
                return;
            }
        }
    }

    async fn take(&self, result: pb::ProbeResult) -> Pending {
        if !self.hub.still_valid(&self.agent) {
            return Pending::End(Status::unauthenticated(format!(
                "the token of agent {} has been revoked",
                self.agent.name
            )));
        }
        let probe_id = result.probe_id.clone();
        let check_id = result.check_id.clone();
        self.metrics
            .as_ref()
            .inspect(|m| m.received(&self.agent.region));
        let mut span = self.traces.mark();
        let (row, warning, report) = match self.row(result, span.as_mut()) {
            Ok(row) => row,
            Err(error) => {
                self.metrics
                    .as_ref()
                    .inspect(|m| m.rejected(&self.agent.region));
                tracing::warn!(agent = %self.agent.name, region = %self.agent.region, check = %check_id, probe = %probe_id, %error, "report rejected");
                self.traces.failed(span, &check_id, &probe_id, "rejected", &error);
                return Pending::Rejected(pb::ResultAck {
                    probe_id,
                    stored: false,
                    error,
                    warning: String::new(),
                    coordinator_time_ms: now_ms(),
                });
            }
        };
        // Parsed once; the metrics and the judge share it (no copy of the JSON).
        let report = Arc::new(report);
        let judge = self.judge.as_ref().and_then(|f| f.prepare(&row, &report));
        let observe = self.metrics.is_some().then_some(report);
        match self.storage.submit_report(row).await {
            Ok(commit) => Pending::Storing {
                probe_id,
                check_id,
                commit,
                judge,
                warning,
                observe,
                span,
            },
            Err(e) => {
                let error = format!("cannot store reports now: {e}");
                self.traces.failed(span, &check_id, &probe_id, "error", &error);
                Pending::End(Status::unavailable(error))
            }
        }
    }

    /// Checks one report and turns it into a row, or says why not. A row
    /// whose round is outside its schedule window is marked (and the
    /// returned warning says why) so it is kept out of judging.
    fn row(
        &self,
        r: pb::ProbeResult,
        span: Option<&mut IngestMark>,
    ) -> Result<(ReportRow, String, ProbeReport), String> {
        if r.probe_id.is_empty() || r.probe_id.len() > MAX_PROBE_ID {
            return Err(format!("probe_id must be 1 to {MAX_PROBE_ID} characters"));
        }
        if r.request_id.len() > MAX_REQUEST_ID {
            return Err(format!(
                "request_id must be at most {MAX_REQUEST_ID} characters"
            ));
        }
        self.hub.may_report(&self.agent, &r.check_id)?;
        let report: ProbeReport = serde_json::from_str(&r.report_json)
            .map_err(|e| format!("report_json is not a probe report: {e}"))?;
        if report.probe_id != r.probe_id {
            return Err(format!(
                "report_json is probe {:?}, not {:?}",
                report.probe_id, r.probe_id
            ));
        }
        if report.check != r.check_id {
            return Err(format!(
                "report_json is a report of check {:?}, not {:?}",
                report.check, r.check_id
            ));
        }
        IngestMark::read(span, r.round, &r.request_id, &report);
        let started_at_ms = chrono::DateTime::parse_from_rfc3339(&report.started_at)
            .map_err(|e| format!("started_at {:?} is not RFC 3339: {e}", report.started_at))?
            .timestamp_millis();
        let received_at_ms = now_ms();
        // Under the hub's lock, without cloning the check (its table and
        // region list are large in a big fleet): only the window's figures.
        let window = match r.round {
            0 => None,
            round => self
                .hub
                .with_check(&r.check_id, |check| RoundWindow::of(check, round, received_at_ms))
                .flatten(),
        };
        let (fit, warning) = window.map_or((RoundFit::InWindow, String::new()), |w| w.warning());
        if !warning.is_empty()
            && self.out_of_window.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0
        {
            tracing::warn!(agent = %self.agent.name, region = %self.agent.region, check = %r.check_id, round = r.round, probe = %r.probe_id, "{warning} (more such reports on this stream are counted, not logged each)");
        }
        let row = ReportRow {
            probe_id: r.probe_id,
            check_id: r.check_id,
            revision: r.revision,
            region: self.agent.region.clone(),
            agent: self.agent.name.clone(),
            round: r.round,
            started_at_ms,
            outcome: report.outcome.as_str().to_string(),
            rtt_ms: report.rtt_ms,
            delivery_ms: report.delivery_ms,
            failure_step: report.failure.as_ref().map(|f| f.step.as_str().to_string()),
            failure_class: report
                .failure
                .as_ref()
                .map(|f| f.class.as_str().to_string()),
            report_json: r.report_json,
            received_at_ms,
            request_id: (!r.request_id.is_empty()).then_some(r.request_id),
            out_of_window: fit.label().map(str::to_string),
        };
        Ok((row, warning, report))
    }
}

/// Round sanity at ingest: where `round` of a check falls against the
/// coordinator's clock, taken under the hub's lock (cheap: no strings);
/// `None` when it is in its window, which is nearly always.
struct RoundWindow {
    check: String,
    round: u64,
    fit: RoundFit,
    start_ms: i64,
    window: std::time::Duration,
}

impl RoundWindow {
    /// Whether `round` of `check` starts within one interval plus the
    /// probe's budget of `now`; None when it does.
    fn of(check: &StoredCheck, round: u64, now: i64) -> Option<RoundWindow> {
        let interval_ms = check.spec.interval.as_millis() as u64;
        let phase = schedule::phase_ms(&check.spec.name, interval_ms);
        let window = check.spec.interval + crate::judge::run::probe_budget(check);
        let fit = schedule::round_fit(round, interval_ms, phase, window.as_millis() as u64, now);
        if matches!(fit, RoundFit::InWindow) {
            return None;
        }
        let start_ms = schedule::round_start_ms(round, interval_ms, phase).min(i64::MAX as u64) as i64;
        Some(RoundWindow { check: check.spec.name.clone(), round, fit, start_ms, window })
    }

    /// The fit and the sentence the agent gets in its ack.
    fn warning(self) -> (RoundFit, String) {
        let RoundWindow { check, round, fit, start_ms: start, window } = self;
        let starts = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(start).map_or_else(
            || format!("{start} ms"),
            |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        );
        let window = humantime::format_duration(std::time::Duration::from_secs(window.as_secs()));
        let secs = |ms: i64| format!("{:.0} s", ms as f64 / 1000.0);
        let warning = match fit {
            RoundFit::InWindow => String::new(),
            RoundFit::Early { by_ms } => format!(
                "round {round} of check {check:?} starts at {starts}, {} after the coordinator's clock, outside its window of ±{window}: stored as early evidence, kept out of verdicts and /latest; is this agent's clock ahead?",
                secs(by_ms)
            ),
            RoundFit::Late { by_ms } => format!(
                "round {round} of check {check:?} started at {starts}, {} before the coordinator's clock, outside its window of ±{window}: stored as late evidence, kept out of verdicts and /latest (a report replayed long after its round, or this agent's clock is behind)",
                secs(by_ms)
            ),
        };
        (fit, warning)
    }
}

/// Sends each ack once its report is durable, in arrival order.
async fn acknowledge(
    agent: AgentIdentity,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    traces: IngestStream,
    mut pending: mpsc::Receiver<Pending>,
    acks: mpsc::Sender<Result<pb::ResultAck, Status>>,
    role: Option<watch::Receiver<ReplicaRole>>,
    _shutdown: Shutdown,
) {
    let (mut stored, mut duplicates) = (0u64, 0u64);
    while let Some(p) = pending.recv().await {
        let item = match p {
            Pending::Rejected(ack) => Ok(ack),
            Pending::Storing {
                probe_id,
                check_id,
                commit,
                judge,
                warning,
                observe,
                span,
            } => match tokio::select! {
                // A commit the database may never answer (cut off): the
                // stream ends unacknowledged, the agent keeps the report
                // and sends it elsewhere (stored once if it did commit).
                c = commit => c,
                _ = cut_off(role.clone()) => {
                    traces.failed(span, &check_id, &probe_id, "error", CUT_OFF);
                    let _ = acks.send(Err(Status::unavailable(CUT_OFF))).await;
                    break;
                }
            } {
                Ok(Ok(inserted)) => {
                    traces.acked(span, &probe_id, inserted == Inserted::Duplicate);
                    if let (Some(m), Some(report)) = (&metrics, &observe) {
                        m.stored_report(&agent.region, inserted == Inserted::New, report);
                    }
                    // Let go of the shared report before the judge takes it
                    // (then it takes it without a copy).
                    drop(observe);
                    if let (Inserted::New, Some(offer)) = (inserted, judge) {
                        offer.deliver();
                    }
                    if inserted == Inserted::Duplicate {
                        duplicates += 1;
                        tracing::debug!(agent = %agent.name, check = %check_id, probe = %probe_id, "replayed report was already stored");
                    } else {
                        stored += 1;
                    }
                    Ok(pb::ResultAck {
                        probe_id,
                        stored: true,
                        error: String::new(),
                        warning,
                        coordinator_time_ms: now_ms(),
                    })
                }
                Ok(Err(e)) => {
                    traces.failed(span, &check_id, &probe_id, "error", &e.to_string());
                    tracing::error!(agent = %agent.name, region = %agent.region, check = %check_id, probe = %probe_id, error = %e, "cannot store report; the agent keeps it and sends it again");
                    Err(Status::unavailable(format!(
                        "cannot store report {probe_id} now: {e}"
                    )))
                }
                Err(_) => {
                    traces.failed(span, &check_id, &probe_id, "error", "storage is closed (shutting down)");
                    Err(Status::unavailable("storage is closed (shutting down)"))
                }
            },
            Pending::End(status) => Err(status),
        };
        let end = item.is_err();
        if acks.send(item).await.is_err() {
            // The agent went away; what was committed stays committed, and
            // its spool replays the rest (replays are idempotent).
            break;
        }
        if end {
            break;
        }
    }
    tracing::debug!(agent = %agent.name, region = %agent.region, stored, duplicates, "report stream closed");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(id: &str, revision: u64) -> Arc<Assignment> {
        Arc::new(Assignment {
            check_id: id.into(),
            revision,
            check_json: Arc::from("{}"),
            interval_ms: 1000,
            phase_ms: 0,
        })
    }

    fn shown(changes: &[pb::AssignmentChange]) -> Vec<String> {
        changes
            .iter()
            .map(|c| match &c.change {
                Some(pb::assignment_change::Change::Upsert(a)) => {
                    format!("+{}@{}", a.check_id, a.revision)
                }
                Some(pb::assignment_change::Change::Remove(id)) => format!("-{id}"),
                Some(pb::assignment_change::Change::RunNow(r)) => format!("!{}", r.check_id),
                Some(pb::assignment_change::Change::Credential(_)) => "*credential".into(),
                None => "?".into(),
            })
            .collect()
    }

    #[test]
    fn diff_sends_only_what_the_agent_lacks() {
        let mut held: HashMap<String, u64> = [
            ("a".to_string(), 1),
            ("b".to_string(), 1),
            ("gone".to_string(), 3),
        ]
        .into();
        let want: BTreeMap<String, Arc<Assignment>> = [
            ("a".to_string(), assignment("a", 1)),
            ("b".to_string(), assignment("b", 2)),
            ("c".to_string(), assignment("c", 1)),
        ]
        .into();
        assert_eq!(
            shown(&diff(&mut held, Some(&want))),
            ["-gone", "+b@2", "+c@1"]
        );
        assert!(
            diff(&mut held, Some(&want)).is_empty(),
            "a second diff has nothing left to say"
        );
        assert_eq!(shown(&diff(&mut held, None)), ["-a", "-b", "-c"]);
    }

    #[test]
    fn an_agent_that_predates_a_change_kind_decodes_it_as_empty() {
        // What an agent built before RunNow sees: a oneof field number it
        // does not know. Renumber RunNow's field (3) to one nobody knows (9)
        // and decode with today's types: protobuf skips it, `change` is None,
        // and the agent's client logs and ignores an empty change.
        use prost::Message;
        let run = pb::AssignmentChange {
            change: Some(pb::assignment_change::Change::RunNow(pb::RunNow {
                check_id: "corp".into(),
                request_id: "run-1-ab".into(),
                traceparent: String::new(),
            })),
        };
        let mut bytes = run.encode_to_vec();
        assert_eq!(bytes[0], 3 << 3 | 2, "field 3, length-delimited");
        bytes[0] = 9 << 3 | 2;
        let seen = pb::AssignmentChange::decode(bytes.as_slice()).expect("still decodes");
        assert_eq!(seen.change, None);
        // And a report from an agent that predates request_id reads as "".
        let old_report = pb::ProbeResult {
            probe_id: "ml-1".into(),
            round: 4,
            ..Default::default()
        };
        let decoded = pb::ProbeResult::decode(old_report.encode_to_vec().as_slice()).unwrap();
        assert_eq!((decoded.round, decoded.request_id.as_str()), (4, ""));
    }

    #[test]
    fn bearer_tokens_are_read_from_metadata() {
        let mut m = MetadataMap::new();
        assert_eq!(bearer(&m), None);
        m.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&m), Some("abc"));
        m.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer(&m), None);
    }
}
