//! A fake coordinator: the agent API on 127.0.0.1, scripted by the test.
//!
//! It runs on its own tokio runtime, so dropping it is a `kill -9`: the
//! listener and every stream vanish at once, and the agent sees a dead
//! coordinator, not a polite goodbye. [`FakeCoordinator::start_on`] brings
//! one back on the same port.
//!
//! Everything the agent sends is recorded in arrival order, with the
//! `authorization` header of each call; tests wait on the record with
//! [`FakeCoordinator::wait_for`] (a deadline, never a sleep).

use mailloop_proto::pb;
use pb::agent_service_server::{AgentService, AgentServiceServer};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

/// What the fake answers to a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acks {
    /// `stored: true` at once.
    Store,
    /// `stored: false` with this error.
    Reject(String),
    /// Never acknowledge (a coordinator that stalls).
    Never,
}

/// Everything the agent said, in arrival order.
#[derive(Debug, Default, Clone)]
pub struct Record {
    pub registers: Vec<pb::RegisterRequest>,
    pub watches: Vec<pb::WatchRequest>,
    pub reports: Vec<pb::ProbeResult>,
    pub heartbeats: Vec<pb::HeartbeatRequest>,
    /// (call, authorization header) of every call.
    pub auth: Vec<(&'static str, Option<String>)>,
}

impl Record {
    /// Probe ids received, in order.
    pub fn probe_ids(&self) -> Vec<String> {
        self.reports.iter().map(|r| r.probe_id.clone()).collect()
    }

    pub fn reports_of(&self, check_id: &str) -> usize {
        self.reports.iter().filter(|r| r.check_id == check_id).count()
    }
}

/// Settings of a fake.
#[derive(Debug, Clone)]
pub struct Script {
    /// Calls without `authorization: Bearer <token>` get Unauthenticated.
    pub token: String,
    pub heartbeat_seconds: u32,
    pub spool_max_reports: u32,
    pub acks: Acks,
    /// PEM (cert, key) of the server, and the CA that client certificates
    /// must chain to (mutual TLS) if any.
    pub tls: Option<(String, String, Option<String>)>,
    /// The fleet size advertised at Register (0: not said).
    pub fleet_size: u32,
}

impl Default for Script {
    fn default() -> Self {
        Script { token: super::TOKEN.into(), heartbeat_seconds: 1, spool_max_reports: 0, acks: Acks::Store, tls: None, fleet_size: 0 }
    }
}

struct State {
    script: Script,
    assignments: Mutex<BTreeMap<String, pb::Assignment>>,
    changes: broadcast::Sender<pb::AssignmentChange>,
    record: Mutex<Record>,
    /// Bumped on every recorded event.
    version: watch::Sender<u64>,
}

impl State {
    fn note(&self, f: impl FnOnce(&mut Record)) {
        f(&mut self.record.lock().unwrap());
        self.version.send_modify(|v| *v += 1);
    }

    fn check_auth<T>(&self, call: &'static str, req: &Request<T>) -> Result<(), Status> {
        let auth = req.metadata().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
        let ok = auth.as_deref() == Some(&format!("Bearer {}", self.script.token));
        self.note(|r| r.auth.push((call, auth)));
        if ok { Ok(()) } else { Err(Status::unauthenticated("unknown or missing agent token")) }
    }
}

pub struct FakeCoordinator {
    pub addr: SocketAddr,
    state: Arc<State>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FakeCoordinator {
    /// A fake on a free port.
    pub fn start(script: Script) -> FakeCoordinator {
        Self::start_on(0, script)
    }

    /// A fake on `port` (0: any free one).
    pub fn start_on(port: u16, script: Script) -> FakeCoordinator {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let std_listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind the fake coordinator");
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let state = Arc::new(State {
            script: script.clone(),
            assignments: Mutex::new(BTreeMap::new()),
            changes: broadcast::channel(64).0,
            record: Mutex::new(Record::default()),
            version: watch::Sender::new(0),
        });
        let service = AgentServiceServer::new(Service(state.clone()));
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
            let mut server = Server::builder();
            if let Some((cert, key, client_ca)) = &script.tls {
                let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
                if let Some(ca) = client_ca {
                    tls = tls.client_ca_root(Certificate::from_pem(ca));
                }
                server = server.tls_config(tls).unwrap();
            }
            server.add_service(service).serve_with_incoming(TcpIncoming::from(listener)).await.unwrap();
        });
        FakeCoordinator { addr, state, runtime: Some(runtime) }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Adds or changes an assignment; watching agents hear of it at once.
    pub fn assign(&self, a: pb::Assignment) {
        self.state.assignments.lock().unwrap().insert(a.check_id.clone(), a.clone());
        let _ = self.state.changes.send(pb::AssignmentChange { change: Some(pb::assignment_change::Change::Upsert(a)) });
    }

    /// Removes an assignment.
    pub fn unassign(&self, check_id: &str) {
        self.state.assignments.lock().unwrap().remove(check_id);
        let _ = self
            .state
            .changes
            .send(pb::AssignmentChange { change: Some(pb::assignment_change::Change::Remove(check_id.to_string())) });
    }

    /// A copy of the record so far.
    pub fn record(&self) -> Record {
        self.state.record.lock().unwrap().clone()
    }

    /// Waits (at most `within`) until `f` finds what it looks for in the record.
    pub async fn wait_for<T>(&self, what: &str, within: Duration, f: impl Fn(&Record) -> Option<T>) -> T {
        let mut version = self.state.version.subscribe();
        let waited = tokio::time::timeout(within, async {
            loop {
                if let Some(t) = f(&self.state.record.lock().unwrap()) {
                    return t;
                }
                version.changed().await.unwrap();
            }
        })
        .await;
        match waited {
            Ok(t) => t,
            Err(_) => panic!("fake coordinator: no {what} within {within:?}; record: {:#?}", self.record()),
        }
    }

    /// Waits until `n` reports have arrived; returns them all.
    pub async fn wait_reports(&self, n: usize, within: Duration) -> Vec<pb::ProbeResult> {
        self.wait_for(&format!("{n} report(s)"), within, |r| (r.reports.len() >= n).then(|| r.reports.clone())).await
    }
}

impl FakeCoordinator {
    /// Kills the fake (every connection drops at once, as with `kill -9`)
    /// and returns what it recorded; nothing is recorded after it returns.
    pub fn kill(mut self) -> Record {
        if let Some(rt) = self.runtime.take() {
            // A runtime cannot be shut down with a wait from async code.
            std::thread::spawn(move || rt.shutdown_timeout(Duration::from_secs(5))).join().unwrap();
        }
        self.record()
    }
}

impl Drop for FakeCoordinator {
    fn drop(&mut self) {
        // Like kill -9: every task and socket goes at once.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

struct Service(Arc<State>);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for Service {
    async fn register(&self, req: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        self.0.check_auth("Register", &req)?;
        let req = req.into_inner();
        self.0.note(|r| r.registers.push(req));
        Ok(Response::new(pb::RegisterResponse {
            agent_id: "agent-1".into(),
            heartbeat_seconds: self.0.script.heartbeat_seconds,
            spool_max_reports: self.0.script.spool_max_reports,
            protocol_version: mailloop_proto::PROTOCOL_VERSION,
            fleet_size: self.0.script.fleet_size,
        }))
    }

    type WatchAssignmentsStream = BoxStream<pb::AssignmentChange>;

    async fn watch_assignments(&self, req: Request<pb::WatchRequest>) -> Result<Response<Self::WatchAssignmentsStream>, Status> {
        use pb::assignment_change::Change;
        self.0.check_auth("WatchAssignments", &req)?;
        let req = req.into_inner();
        let known: BTreeMap<String, u64> = req.known.iter().map(|k| (k.check_id.clone(), k.revision)).collect();
        self.0.note(|r| r.watches.push(req));
        // Subscribe before reading the assignments: no change falls between.
        let later = self.0.changes.subscribe();
        let mut first = Vec::new();
        {
            let held = self.0.assignments.lock().unwrap();
            for (id, a) in held.iter() {
                if known.get(id) != Some(&a.revision) {
                    first.push(pb::AssignmentChange { change: Some(Change::Upsert(a.clone())) });
                }
            }
            for id in known.keys().filter(|id| !held.contains_key(*id)) {
                first.push(pb::AssignmentChange { change: Some(Change::Remove(id.clone())) });
            }
        }
        let later = tokio_stream::wrappers::BroadcastStream::new(later).filter_map(|c| c.ok());
        let stream = tokio_stream::iter(first).chain(later).map(Ok);
        Ok(Response::new(Box::pin(stream)))
    }

    type ReportResultsStream = BoxStream<pb::ResultAck>;

    async fn report_results(&self, req: Request<Streaming<pb::ProbeResult>>) -> Result<Response<Self::ReportResultsStream>, Status> {
        self.0.check_auth("ReportResults", &req)?;
        let mut inbound = req.into_inner();
        let (acks, acks_rx) = mpsc::channel(1024);
        let state = self.0.clone();
        tokio::spawn(async move {
            while let Some(Ok(result)) = inbound.next().await {
                let probe_id = result.probe_id.clone();
                state.note(|r| r.reports.push(result));
                let ack = match &state.script.acks {
                    Acks::Store => pb::ResultAck { probe_id, stored: true, error: String::new(), ..Default::default() },
                    Acks::Reject(why) => pb::ResultAck { probe_id, stored: false, error: why.clone(), ..Default::default() },
                    Acks::Never => continue,
                };
                if acks.send(Ok(ack)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(acks_rx))))
    }

    async fn heartbeat(&self, req: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatResponse>, Status> {
        self.0.check_auth("Heartbeat", &req)?;
        let req = req.into_inner();
        self.0.note(|r| r.heartbeats.push(req));
        Ok(Response::new(pb::HeartbeatResponse {}))
    }

    async fn enroll(&self, _req: Request<pb::EnrollRequest>) -> Result<Response<pb::EnrollResponse>, Status> {
        Err(Status::unimplemented("the scripted coordinator does not enroll agents"))
    }
}
