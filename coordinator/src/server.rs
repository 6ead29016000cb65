//! Start-up, serving and shutdown: wires storage, hub, control, the gRPC
//! agent API and the admin HTTP API together.
//!
//! Order matters and is the point of this file:
//! 1. the config is validated whole (by the caller) — nothing is bound yet;
//! 2. [`Coordinator::open`] opens storage and applies the config;
//! 3. [`bind`] binds both listeners (port 0 works: the real ports are in
//!    [`Listeners`]);
//! 4. [`Coordinator::serve`] runs until the shutdown future resolves, then
//!    stops accepting, lets in-flight acks finish, closes streams, flushes
//!    the storage writer — all within `shutdown_grace`.

use crate::api::{self, ApiState};
use crate::config::{CoordinatorConfig, ServerConfig, TlsMaterial};
use crate::control::{Control, now_ms};
use crate::grpc::{AgentApi, AgentApiSettings};
use crate::hub::Hub;
use crate::shutdown::{self, Shutdown};
use crate::storage::{Storage, StorageError};
use mailloop_proto::pb::agent_service_server::AgentServiceServer;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// How often retention pruning runs.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// A TLS handshake on the admin API must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the coordinator could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("applying the config: {0}")]
    Apply(String),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("admin HTTP server: {0}")]
    Http(std::io::Error),
}

/// The two bound listeners.
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: TcpListener,
}

impl Listeners {
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http
            .local_addr()
            .expect("a bound listener has an address")
    }
}

/// Binds the gRPC and admin listeners of `server`.
pub async fn bind(server: &ServerConfig) -> Result<Listeners, ServeError> {
    let grpc = TcpListener::bind(server.grpc_listen)
        .await
        .map_err(|source| ServeError::Bind {
            what: "grpc_listen",
            addr: server.grpc_listen,
            source,
        })?;
    let http = TcpListener::bind(server.http_listen)
        .await
        .map_err(|source| ServeError::Bind {
            what: "http_listen",
            addr: server.http_listen,
            source,
        })?;
    Ok(Listeners { grpc, http })
}

/// An opened coordinator, ready to serve.
pub struct Coordinator {
    config: CoordinatorConfig,
    storage: Arc<Storage>,
    hub: Arc<Hub>,
    control: Arc<Control>,
}

impl Coordinator {
    /// Opens storage, loads what it holds, and applies the config's checks and agents.
    pub async fn open(config: CoordinatorConfig) -> Result<Coordinator, ServeError> {
        let storage = Arc::new(Storage::open(&config.server.data_dir)?);
        storage.reset_connections().await?;
        let checks = storage.load_checks().await?;
        let agents = storage.load_agents().await?;
        tracing::info!(db = %storage.path().display(), checks = checks.iter().filter(|c| !c.deleted).count(), agents = agents.len(), "storage opened");
        let hub = Hub::new(checks, agents);
        let control = Arc::new(Control::new(
            hub.clone(),
            storage.clone(),
            config.server.check_rules(),
            &config.server.admin_token,
        ));
        let summary = control
            .apply_config(&config)
            .await
            .map_err(|e| ServeError::Apply(e.to_string()))?;
        tracing::info!(?summary, "config applied");
        hub.recompute();
        Ok(Coordinator {
            config,
            storage,
            hub,
            control,
        })
    }

    /// Serves until `signal` resolves, then shuts down gracefully.
    /// `config_path`, when given, is re-read on SIGHUP.
    pub async fn serve(
        self,
        listeners: Listeners,
        config_path: Option<PathBuf>,
        signal: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let Coordinator {
            config,
            storage,
            hub,
            control,
        } = self;
        let server = config.server.clone();
        let (mut trigger, shutdown) = shutdown::channel();
        let ready = Arc::new(AtomicBool::new(false));

        // The judge decides rounds and alerts; it stops at shutdown after
        // storing the round in hand, before the storage writer closes.
        let alerts = crate::alerts::Alerts::start(config.alerts.clone(), shutdown.clone());
        let (judge, _judged) = crate::judge::run::start(
            hub.clone(),
            storage.clone(),
            alerts,
            config.judge.clone(),
            shutdown.clone(),
        );
        tokio::spawn(hub.clone().run_scheduler(shutdown.clone()));
        tokio::spawn(prune_loop(
            storage.clone(),
            server.retention,
            server.aggregate_retention,
            shutdown.clone(),
        ));
        if let Some(path) = config_path {
            tokio::spawn(reload_loop(
                path,
                config,
                control.clone(),
                judge.clone(),
                shutdown.clone(),
            ));
        }

        let grpc_addr = listeners.grpc_addr();
        let http_addr = listeners.http_addr();
        let mut grpc = tokio::spawn(serve_grpc(
            listeners.grpc,
            &server,
            hub.clone(),
            storage.clone(),
            judge.feed(),
            shutdown.clone(),
        )?);
        let state = ApiState {
            hub: hub.clone(),
            storage: storage.clone(),
            control: control.clone(),
            ready: ready.clone(),
            judge: judge.clone(),
        };
        let mut http = tokio::spawn(serve_http(
            listeners.http,
            server.tls.clone(),
            state,
            shutdown.clone(),
        )?);
        ready.store(true, Ordering::SeqCst);
        tracing::info!(grpc = %grpc_addr, http = %http_addr, tls = server.tls.is_some(), mutual_tls = server.tls.as_ref().is_some_and(|t| t.client_ca_pem.is_some()), "coordinator serving");

        let mut failure = None;
        tokio::select! {
            _ = signal => tracing::info!("shutdown requested"),
            r = &mut grpc => failure = Some(flatten(r, "grpc")),
            r = &mut http => failure = Some(flatten(r, "http")),
        }
        ready.store(false, Ordering::SeqCst);
        trigger.fire();
        drop(shutdown);
        let grace = server.shutdown_grace;
        let drained = tokio::time::timeout(grace, async {
            if failure.is_none() {
                let _ = tokio::join!(&mut grpc, &mut http);
            }
            trigger.wait().await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!(grace = %humantime::format_duration(grace), "grace period over with streams still open; closing them (their unacknowledged reports stay in the agents' spools)");
            grpc.abort();
            http.abort();
        }
        // Everything already handed to the writer is committed before exit.
        if tokio::time::timeout(grace, storage.close()).await.is_err() {
            tracing::error!("the storage writer did not finish within the grace period");
        }
        tracing::info!("coordinator stopped");
        match failure {
            Some(Err(e)) => Err(e),
            _ => Ok(()),
        }
    }
}

fn flatten(
    r: Result<Result<(), ServeError>, tokio::task::JoinError>,
    what: &str,
) -> Result<(), ServeError> {
    match r {
        Ok(r) => r,
        Err(e) => Err(ServeError::Http(std::io::Error::other(format!(
            "{what} server task: {e}"
        )))),
    }
}

fn serve_grpc(
    listener: TcpListener,
    server: &ServerConfig,
    hub: Arc<Hub>,
    storage: Arc<Storage>,
    judge: crate::judge::run::JudgeFeed,
    shutdown: Shutdown,
) -> Result<impl Future<Output = Result<(), ServeError>> + use<>, ServeError> {
    let settings = AgentApiSettings {
        heartbeat_seconds: server.heartbeat.as_secs().max(1) as u32,
        spool_max_reports: server.spool_max_reports,
        max_streams_per_agent: 4,
    };
    let api = AgentApi::new(hub, storage, settings, shutdown.clone()).with_judge(judge);
    let service = AgentServiceServer::new(api).max_decoding_message_size(server.max_message_bytes);
    let (reporter, health) = tonic_health::server::health_reporter();
    let mut builder = tonic::transport::Server::builder()
        // Dead connections (a vanished agent) are noticed and their checks move.
        .http2_keepalive_interval(Some(server.heartbeat))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(Some(server.max_streams_per_connection))
        .tcp_nodelay(true);
    if let Some(tls) = &server.tls {
        let mut cfg = tonic::transport::ServerTlsConfig::new().identity(
            tonic::transport::Identity::from_pem(&tls.cert_pem, &tls.key_pem),
        );
        if let Some(ca) = &tls.client_ca_pem {
            cfg = cfg.client_ca_root(tonic::transport::Certificate::from_pem(ca));
        }
        builder = builder
            .tls_config(cfg)
            .map_err(|e| ServeError::Tls(e.to_string()))?;
    }
    let router = builder.add_service(health).add_service(service);
    let stop = shutdown;
    Ok(async move {
        reporter.set_serving::<AgentServiceServer<AgentApi>>().await;
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let mut on_stop = stop.clone();
        let result = router
            .serve_with_incoming_shutdown(incoming, async move {
                on_stop.recv().await;
                reporter
                    .set_not_serving::<AgentServiceServer<AgentApi>>()
                    .await;
            })
            .await;
        drop(stop);
        result.map_err(ServeError::Grpc)
    })
}

fn serve_http(
    listener: TcpListener,
    tls: Option<TlsMaterial>,
    state: ApiState,
    shutdown: Shutdown,
) -> Result<impl Future<Output = Result<(), ServeError>> + use<>, ServeError> {
    let app = api::router(state);
    let tls = tls.map(|t| http_tls(&t)).transpose()?;
    Ok(async move {
        let mut stop = shutdown.clone();
        let stopped = async move { stop.recv().await };
        let result = match tls {
            None => {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stopped)
                    .await
            }
            Some(acceptor) => {
                let listener = TlsListener::new(listener, acceptor, shutdown.clone());
                axum::serve(listener, app)
                    .with_graceful_shutdown(stopped)
                    .await
            }
        };
        drop(shutdown);
        result.map_err(ServeError::Http)
    })
}

fn http_tls(t: &TlsMaterial) -> Result<tokio_rustls::TlsAcceptor, ServeError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(&t.cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServeError::Tls(format!("tls_cert: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(&t.key_pem)
        .map_err(|e| ServeError::Tls(format!("tls_key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServeError::Tls(e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// The admin API's TLS listener: handshakes run in their own tasks, so a
/// slow client cannot hold up the others.
struct TlsListener {
    ready: mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
}

impl TlsListener {
    fn new(
        listener: TcpListener,
        acceptor: tokio_rustls::TlsAcceptor,
        mut shutdown: Shutdown,
    ) -> TlsListener {
        let addr = listener.local_addr().expect("bound");
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = tx.closed() => return,
                    _ = shutdown.recv() => return,
                };
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin API accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "admin API TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "admin API TLS handshake timed out"),
                    }
                });
            }
        });
        TlsListener { ready, addr }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept task only ends at shutdown; wait for axum to notice.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

/// Hourly (and once at start) until shutdown: reports and the verdicts
/// judged from them older than `retention`, hourly aggregates older than
/// `aggregate_retention`.
async fn prune_loop(
    storage: Arc<Storage>,
    retention: Duration,
    aggregate_retention: Duration,
    mut shutdown: Shutdown,
) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.recv() => return,
        }
        let cutoff = now_ms() - retention.as_millis() as i64;
        let aggregate_cutoff = now_ms() - aggregate_retention.as_millis() as i64;
        let pruned = [
            ("reports", storage.prune(cutoff).await, retention),
            // Verdicts follow the reports they were judged from.
            ("verdicts", storage.prune_verdicts(cutoff).await, retention),
            (
                "hourly aggregates",
                storage.prune_aggregates(aggregate_cutoff).await,
                aggregate_retention,
            ),
        ];
        for (what, result, kept) in pruned {
            match result {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(deleted = n, retention = %humantime::format_duration(kept), "old {what} pruned")
                }
                Err(e) => tracing::error!(error = %e, "pruning old {what} failed"),
            }
        }
    }
}

/// On SIGHUP: re-read the config; apply it if it is valid as a whole,
/// otherwise log every bad key and keep running the old one. Checks,
/// agents, the admin token, `[incidents]`/`[baselines]` (the judge) and
/// `[[alert]]` channels follow; the rest of `[server]` waits for a restart.
async fn reload_loop(
    path: PathBuf,
    mut current: CoordinatorConfig,
    control: Arc<Control>,
    judge: Arc<crate::judge::run::Judge>,
    mut shutdown: Shutdown,
) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP; config reload is off");
            return;
        }
    };
    loop {
        tokio::select! {
            s = hup.recv() => if s.is_none() { return },
            _ = shutdown.recv() => return,
        }
        tracing::info!(config = %path.display(), "SIGHUP: reloading the config");
        let new = match CoordinatorConfig::load(&path) {
            Ok(c) => c,
            Err(mailloop_common::config::ConfigError::Invalid { issues, .. }) => {
                for i in &issues {
                    tracing::error!(key = %i.path, problem = %i.message, "config reload refused");
                }
                tracing::error!(errors = issues.len(), config = %path.display(), "config reload refused; the previous config stays in force");
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "config reload refused; the previous config stays in force");
                continue;
            }
        };
        let (old, fresh) = (&current.server, &new.server);
        if old.grpc_listen != fresh.grpc_listen
            || old.http_listen != fresh.http_listen
            || old.data_dir != fresh.data_dir
            || old.tls.is_some() != fresh.tls.is_some()
            || old.max_message_bytes != fresh.max_message_bytes
            || old.retention != fresh.retention
            || old.aggregate_retention != fresh.aggregate_retention
            || old.heartbeat != fresh.heartbeat
        {
            tracing::warn!(
                "listen addresses, data_dir, TLS, limits, retention and heartbeat change only on restart; checks, agents, the admin token, [incidents], [baselines] and [[alert]] are applied now"
            );
        }
        // The judge and the alert channels cannot fail to apply (the file
        // was validated whole): they follow even if a check below does not.
        let judge_changes = new.judge.changes_from(&current.judge);
        if new.judge != current.judge {
            judge.reconfigure(new.judge.clone()).await;
            current.judge = new.judge.clone();
        }
        let alerts_changes = if new.alerts != current.alerts {
            let summary = judge
                .alerts()
                .reload(new.alerts.clone(), shutdown.clone())
                .await;
            current.alerts = new.alerts.clone();
            summary.describe()
        } else {
            "unchanged".to_string()
        };
        tracing::info!(judge = %judge_changes, alerts = %alerts_changes, "judge and alert settings reloaded");
        match control.apply_config(&new).await {
            Ok(summary) => {
                tracing::info!(?summary, "config reloaded");
                current = new;
            }
            Err(e) => tracing::error!(error = %e, "applying the reloaded config failed part way"),
        }
    }
}
