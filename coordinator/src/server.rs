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

use crate::admin;
use crate::api::ApiState;
use crate::clock::now_ms;
use crate::cluster::control::{Control, EnrollSettings};
use crate::cluster::grpc::{AgentApi, AgentApiSettings};
use crate::cluster::hub::Hub;
use crate::config::status::StatusPageSettings;
use crate::config::{CoordinatorConfig, HttpLimits, ServerConfig, TlsMaterial};
use crate::shutdown::{self, Shutdown};
use crate::storage::{ReplicaRole, Storage, StorageError};
use mailloop_proto::pb::agent_service_server::AgentServiceServer;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

/// How often retention pruning runs.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

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
    #[error("[telemetry]: {0}")]
    Telemetry(String),
}

/// The bound listeners.
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: TcpListener,
    /// `metrics_listen`, when `/metrics` has its own address.
    pub metrics: Option<TcpListener>,
    /// `[status] listen`, when the public status page has its own address.
    pub status: Option<TcpListener>,
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

    /// Where `/metrics` is served (the admin listener unless `metrics_listen` is set).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics
            .as_ref()
            .unwrap_or(&self.http)
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Where the status page is served (the admin listener unless `[status] listen` is set).
    pub fn status_addr(&self) -> SocketAddr {
        self.status
            .as_ref()
            .unwrap_or(&self.http)
            .local_addr()
            .expect("a bound listener has an address")
    }
}

/// Binds the gRPC and admin listeners of `server`, and the status page's
/// own when `status` has one.
pub async fn bind(
    server: &ServerConfig,
    status: &StatusPageSettings,
) -> Result<Listeners, ServeError> {
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
    let metrics = bind_optional("metrics_listen", server.metrics.listen).await?;
    let status = bind_optional("status.listen", status.listen.filter(|_| status.enabled)).await?;
    Ok(Listeners {
        grpc,
        http,
        metrics,
        status,
    })
}

/// An opened coordinator, ready to serve.
pub struct Coordinator {
    config: CoordinatorConfig,
    storage: Arc<Storage>,
    hub: Arc<Hub>,
    control: Arc<Control>,
    /// The coordinator's own traces (off without a `[telemetry]` endpoint).
    traces: crate::telemetry::Traces,
}

impl Coordinator {
    /// Opens storage, loads what it holds, and applies the config's checks
    /// and agents; starts the trace exporter when one is configured.
    pub async fn open(config: CoordinatorConfig) -> Result<Coordinator, ServeError> {
        let traces = crate::telemetry::Traces::start(
            &config.telemetry,
            mailloop_common::telemetry::host_name(crate::telemetry::SERVICE),
        )
            .map_err(ServeError::Telemetry)?;
        let storage = Arc::new(Storage::connect(&config.storage).await?);
        storage.reset_connections().await?;
        let checks = storage.load_checks().await?;
        let agents = storage.load_agents().await?;
        let api_tokens = storage.load_api_tokens().await?;
        tracing::info!(db = %storage.describe(), checks = checks.iter().filter(|c| !c.deleted).count(), agents = agents.len(), "storage opened");
        let hub = Hub::new(checks, agents);
        let control = Arc::new(Control::new(
            hub.clone(),
            storage.clone(),
            config.server.check_rules(),
            &config.api_tokens(),
            api_tokens,
        ));
        let summary = control
            .apply_config(&config)
            .await
            .map_err(|e| ServeError::Apply(e.to_string()))?;
        tracing::info!(?summary, "config applied");
        Ok(Coordinator {
            config,
            storage,
            hub,
            control,
            traces,
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
            traces,
        } = self;
        let server = config.server.clone();
        let status_settings = config.status.clone();
        let (mut trigger, shutdown) = shutdown::channel();
        let ready = Arc::new(AtomicBool::new(false));
        // Leadership: work that must happen once among replicas (judging,
        // alerts, retention) runs only while this replica leads.
        let role = {
            let mut stop = shutdown.clone();
            storage.campaign(async move { stop.recv().await })
        };

        // The judge decides rounds and alerts; it stops at shutdown after
        // storing the round in hand, before the storage writer closes.
        let alerts = crate::alerts::Alerts::start_logged(
            config.alerts.clone(),
            shutdown.clone(),
            traces.clone(),
            crate::alerts::AttemptLog::to_storage(storage.clone()),
        );
        let metrics = if server.metrics.enabled {
            crate::metrics::Metrics::with_steps(hub.clone(), alerts.clone(), server.metrics.steps)
        } else {
            crate::metrics::Metrics::off()
        };
        let (judge, _judged) = crate::judge::run::start(
            hub.clone(),
            storage.clone(),
            alerts,
            config.judge.clone(),
            metrics.clone(),
            role.clone(),
            traces.clone(),
            shutdown.clone(),
        );
        // Changes made through other replicas sharing the database, and
        // the agents connected to them.
        tokio::spawn(control.clone().follow_storage(shutdown.clone()));
        if storage.shared() {
            let replica = crate::cluster::presence::replica_id();
            tracing::info!(replica = %replica, "replica id (agent presence is shared through the database)");
            tokio::spawn(crate::cluster::presence::run(hub.clone(), storage.clone(), replica, shutdown.clone()));
        }
        if let Some(mut runs) = storage.run_notices() {
            // On-demand runs ordered through another replica, for the agents here.
            let (hub, storage, mut stop) = (hub.clone(), storage.clone(), shutdown.clone());
            tokio::spawn(async move {
                loop {
                    let payload = tokio::select! {
                        p = runs.recv() => p,
                        _ = stop.recv() => return,
                    };
                    match payload {
                        Ok(crate::storage::RunNotice::Order(p)) => {
                            if let Some(run) = hub.on_demand().relay(&p) {
                                tracing::info!(check = %run.check_id, request = %run.request_id, "on-demand run ordered through another replica");
                            }
                        }
                        Ok(crate::storage::RunNotice::Again) => {
                            // A replica (maybe this one) listens again after
                            // a gap: the orders taken here that it may have missed.
                            let fresh = hub.on_demand().fresh_taken_here(crate::clock::now_ms());
                            for run in &fresh {
                                if let Err(e) = storage.announce_run(crate::cluster::ondemand::notice(run)).await {
                                    tracing::warn!(check = %run.check_id, request = %run.request_id, error = %e, "cannot announce an on-demand run again to the other replicas");
                                }
                            }
                            if !fresh.is_empty() {
                                tracing::info!(runs = fresh.len(), "a replica listens again: announced the recent on-demand runs taken here once more");
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(missed = n, "fell behind the on-demand runs of other replicas; missed some");
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            });
        }
        tokio::spawn(prune_loop(
            storage.clone(),
            role.clone(),
            server.retention,
            server.verdict_retention,
            server.aggregate_retention,
            shutdown.clone(),
        ));
        let grpc_addr = listeners.grpc_addr();
        let http_addr = listeners.http_addr();
        let metrics_addr = listeners.metrics_addr();
        let status_addr = listeners.status_addr();
        control.set_enrollment(enroll_settings(&server, grpc_addr));
        if let Some(path) = config_path {
            tokio::spawn(reload_loop(
                path,
                config,
                grpc_addr,
                control.clone(),
                judge.clone(),
                shutdown.clone(),
            ));
        }
        control.tokens().sessions.set_secure(server.tls.is_some());
        control.tokens().sessions.set_storage(storage.clone());
        let metrics_app = server
            .metrics
            .enabled
            .then(|| crate::metrics::router(metrics.clone(), server.metrics.token.as_ref()));
        let metrics_app = match (listeners.metrics, metrics_app) {
            (Some(l), Some(app)) => {
                tokio::spawn(serve_metrics(l, app, shutdown.clone()));
                None
            }
            (_, app) => app,
        };
        let status_page = status_settings.enabled.then(|| {
            crate::web::StatusPage::new(hub.clone(), storage.clone(), status_settings.clone(), metrics.clone())
        });
        let status_app = status_page.clone().map(crate::web::router);
        let status_app = match (listeners.status, status_app) {
            (Some(l), Some(app)) => {
                tokio::spawn(serve_public(
                    l,
                    bounded(app, server.http_limits),
                    shutdown.clone(),
                ));
                None
            }
            (_, app) => app,
        };
        let extra_app = match (metrics_app, status_app) {
            (Some(m), Some(s)) => Some(m.merge(s)),
            (m, s) => m.or(s),
        };
        let mut agent_api = agent_api(&server, hub.clone(), storage.clone(), shutdown.clone())
            .with_control(control.clone())
            .with_judge(judge.feed())
            .with_traces(traces.clone())
            .with_role(role.clone());
        if metrics.enabled() {
            // Off: the intake neither keeps each report for observing nor counts.
            agent_api = agent_api.with_metrics(metrics.clone());
        }
        let mut grpc = tokio::spawn(serve_grpc(
            listeners.grpc,
            &server,
            agent_api,
            shutdown.clone(),
        )?);
        let state = ApiState {
            hub: hub.clone(),
            storage: storage.clone(),
            control: control.clone(),
            ready: ready.clone(),
            role: role.clone(),
            judge: judge.clone(),
            traces: traces.clone(),
            status_page,
        };
        let mut http = tokio::spawn(serve_http(
            listeners.http,
            server.tls.clone(),
            server.http_limits,
            state,
            extra_app,
            shutdown.clone(),
        )?);
        ready.store(true, Ordering::SeqCst);
        // systemd (Type=notify): both listeners bound and served. A no-op
        // outside systemd (no NOTIFY_SOCKET).
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        tracing::info!(grpc = %grpc_addr, http = %http_addr, metrics = %metrics_addr, status = %status_addr, tls = server.tls.is_some(), mutual_tls = server.tls.as_ref().is_some_and(|t| t.client_ca_pem.is_some()), "coordinator serving");

        let mut failure = None;
        tokio::select! {
            _ = signal => tracing::info!("shutdown requested"),
            r = &mut grpc => failure = Some(flatten(r, "grpc")),
            r = &mut http => failure = Some(flatten(r, "http")),
        }
        ready.store(false, Ordering::SeqCst);
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
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
        // The last spans (the verdicts of the rounds in hand) go out.
        let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
        tracing::info!("coordinator stopped");
        match failure {
            Some(Err(e)) => Err(e),
            _ => Ok(()),
        }
    }
}

/// What join tokens carry: `public_urls`, or the bound gRPC address when
/// it is a specific one; the SHA-256 of the last certificate of `tls_cert`.
fn enroll_settings(server: &ServerConfig, grpc: SocketAddr) -> EnrollSettings {
    let scheme = if server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let urls = if !server.public_urls.is_empty() {
        server.public_urls.clone()
    } else if grpc.ip().is_unspecified() {
        Vec::new()
    } else {
        vec![format!("{scheme}://{grpc}")]
    };
    let sha256 = server.tls.as_ref().and_then(|t| {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        let last = CertificateDer::pem_slice_iter(&t.cert_pem)
            .filter_map(Result::ok)
            .last()?;
        Some(crate::config::hex(
            ring::digest::digest(&ring::digest::SHA256, &last).as_ref(),
        ))
    });
    EnrollSettings {
        urls,
        sha256,
        ttl: server.join_token_ttl,
    }
}

/// Binds an optional listener of its own (`what` names its config key in
/// the error); `None` when the config gives no address.
async fn bind_optional(
    what: &'static str,
    addr: Option<SocketAddr>,
) -> Result<Option<TcpListener>, ServeError> {
    let Some(addr) = addr else { return Ok(None) };
    TcpListener::bind(addr)
        .await
        .map(Some)
        .map_err(|source| ServeError::Bind { what, addr, source })
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

/// The agent API with the settings `[server]` hands to and applies on agents.
fn agent_api(
    server: &ServerConfig,
    hub: Arc<Hub>,
    storage: Arc<Storage>,
    shutdown: Shutdown,
) -> AgentApi {
    let settings = AgentApiSettings {
        heartbeat_seconds: server.heartbeat.as_secs().max(1) as u32,
        spool_max_reports: server.spool_max_reports,
        max_streams_per_agent: 4,
        min_agent_protocol: server.min_agent_protocol,
    };
    AgentApi::new(hub, storage, settings, shutdown)
}

fn serve_grpc(
    listener: TcpListener,
    server: &ServerConfig,
    api: AgentApi,
    shutdown: Shutdown,
) -> Result<impl Future<Output = Result<(), ServeError>> + use<>, ServeError> {
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
    limits: HttpLimits,
    state: ApiState,
    metrics: Option<axum::Router>,
    shutdown: Shutdown,
) -> Result<impl Future<Output = Result<(), ServeError>> + use<>, ServeError> {
    let app = bounded(
        admin::router(state).merge(metrics.unwrap_or_default()),
        limits,
    );
    let tls = tls.map(|t| http_tls(&t)).transpose()?;
    Ok(async move {
        accept_loop(listener, tls, app, limits, shutdown).await;
        Ok(())
    })
}

/// `/metrics` on its own plain-HTTP listener (`metrics_listen`), until shutdown.
async fn serve_metrics(listener: TcpListener, app: axum::Router, shutdown: Shutdown) {
    let mut stop = shutdown.clone();
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.recv().await })
        .await;
    drop(shutdown);
    if let Err(e) = result {
        tracing::error!(error = %e, "the metrics listener failed; /metrics is unavailable");
    }
}

/// The public status page on its own plain-HTTP listener (`[status]
/// listen`), with the admin listener's request bounds (body size,
/// timeouts), until shutdown.
async fn serve_public(listener: TcpListener, app: axum::Router, shutdown: Shutdown) {
    let mut stop = shutdown.clone();
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.recv().await })
        .await;
    drop(shutdown);
    if let Err(e) = result {
        tracing::error!(error = %e, "the status page listener failed; /status is unavailable");
    }
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

// ---------------------------------------------------------------------------
// The admin listener's bounds. Every connection is counted before anything
// is read from it (total and per client address; over either cap it gets a
// 503 and is closed); its TLS handshake and each request's headers must
// arrive within `header_timeout` (which also closes a kept-alive connection
// that sends no next request); a request must be answered within
// `request_timeout`; a connection that moves no byte for `idle_timeout` is
// closed (a client that stops reading its response); bodies are capped at
// `max_body_bytes` (413), headers at `MAX_HEADER_BYTES` (431). HTTP/1.1
// only, so one connection runs one request at a time.
// ---------------------------------------------------------------------------

/// Request line and headers of one request, at most (hyper checks it
/// between reads, so a header block arriving in one burst may pass it by
/// one read; the read buffer never grows past about twice this).
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Refused connections are logged at most this often (a flood is one line).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// The router with the request-level bounds around it.
fn bounded(app: axum::Router, limits: HttpLimits) -> axum::Router {
    app.layer(axum::extract::DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(limits, bound_request))
}

/// Refuses a declared oversized body before reading it, answers 503 when
/// the handler runs past `request_timeout`, and makes every 413 JSON (the
/// body extractor's own is plain text).
async fn bound_request(
    axum::extract::State(limits): axum::extract::State<HttpLimits>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    let too_large = || {
        let body = serde_json::json!({"error": format!(
            "the request body is larger than {} bytes (http_max_body_bytes)",
            limits.max_body_bytes
        )});
        (StatusCode::PAYLOAD_TOO_LARGE, axum::Json(body)).into_response()
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes as u64) {
        return too_large();
    }
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    match tokio::time::timeout(limits.request_timeout, next.run(req)).await {
        Ok(resp) if resp.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            let json = resp
                .headers()
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
            if json { resp } else { too_large() }
        }
        Ok(resp) => resp,
        Err(_) => {
            let limit = humantime::format_duration(limits.request_timeout);
            tracing::warn!(%method, path, %limit, "admin API request took longer than http_request_timeout; answered 503");
            let body = serde_json::json!({"error": format!(
                "the request was not answered within {limit} (http_request_timeout); try a narrower query"
            )});
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
        }
    }
}

/// Accepts admin API connections until shutdown; each runs in its own task.
async fn accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: axum::Router,
    limits: HttpLimits,
    mut shutdown: Shutdown,
) {
    let gate = Gate::new(limits);
    loop {
        let (tcp, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, mostly: wait rather than spin.
                    tracing::warn!(error = %e, "admin API accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.recv() => return,
        };
        let admitted = match gate.admit(peer.ip()) {
            Ok(a) => a,
            Err(cap) => {
                gate.log_refusal(peer, cap);
                refuse(tcp, tls.is_none(), cap);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(connection(
            tcp,
            peer,
            tls.clone(),
            app.clone(),
            limits,
            admitted,
            shutdown.clone(),
        ));
    }
}

/// Answers a connection over a cap: a 503 if it fits in the socket buffer
/// now (plain HTTP only), then close. Never waits on the client.
fn refuse(tcp: TcpStream, plain: bool, cap: &'static str) {
    // What the client already sent is read first: closing a socket with
    // unread data resets it, and the client would never see the answer.
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        match tcp.try_read(&mut sink) {
            Ok(n) if n > 0 => continue,
            _ => break,
        }
    }
    if plain {
        let body = format!(
            r#"{{"error":"too many open connections to the admin API ({cap}); close idle ones or try again"}}"#
        );
        let resp = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = tcp.try_write(resp.as_bytes());
    }
}

/// The connection caps: a semaphore for the total, a count per address.
struct Gate {
    total: Arc<tokio::sync::Semaphore>,
    per_client: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
    max_per_client: usize,
    last_refusal_log: std::sync::Mutex<Option<Instant>>,
    refused: AtomicUsize,
}

/// An admitted connection's place under both caps; given back on drop.
struct Admitted {
    _permit: tokio::sync::OwnedSemaphorePermit,
    per_client: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

impl Gate {
    fn new(limits: HttpLimits) -> Gate {
        Gate {
            total: Arc::new(tokio::sync::Semaphore::new(limits.max_connections)),
            per_client: Arc::default(),
            max_per_client: limits.max_connections_per_client,
            last_refusal_log: std::sync::Mutex::new(None),
            refused: AtomicUsize::new(0),
        }
    }

    /// A place for one more connection from `ip`, or the name of the cap it hits.
    fn admit(&self, ip: IpAddr) -> Result<Admitted, &'static str> {
        let permit = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| "http_max_connections")?;
        let mut open = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_default();
        if *n >= self.max_per_client {
            return Err("http_max_connections_per_client");
        }
        *n += 1;
        Ok(Admitted {
            _permit: permit,
            per_client: self.per_client.clone(),
            ip,
        })
    }

    fn log_refusal(&self, peer: SocketAddr, cap: &'static str) {
        let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self
            .last_refusal_log
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= REFUSAL_LOG_EVERY) {
            *last = Some(Instant::now());
            self.refused.store(0, Ordering::Relaxed);
            tracing::warn!(%peer, cap, refused, "admin API connection refused: too many open connections (raise [server] {cap} if this is expected)");
        }
    }
}

/// One admitted connection: TLS handshake (bounded), then HTTP/1.1 until
/// the client closes, a timeout fires, or shutdown.
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: axum::Router,
    limits: HttpLimits,
    admitted: Admitted,
    shutdown: Shutdown,
) {
    let activity = Activity::default();
    let io = Watched {
        inner: tcp,
        activity: activity.clone(),
    };
    match tls {
        None => serve_connection(io, peer, app, limits, activity, shutdown).await,
        Some(acceptor) => {
            let mut stop = shutdown.clone();
            let handshake = tokio::time::timeout(limits.header_timeout, acceptor.accept(io));
            tokio::select! {
                r = handshake => match r {
                    Ok(Ok(stream)) => {
                        serve_connection(stream, peer, app, limits, activity, shutdown).await
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "admin API TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "admin API TLS handshake timed out (http_header_timeout)"),
                },
                // A half-done handshake does not hold up shutdown.
                _ = stop.recv() => {}
            }
        }
    }
    drop(admitted);
}

async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    app: axum::Router,
    limits: HttpLimits,
    activity: Activity,
    mut shutdown: Shutdown,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let router = hyper_util::service::TowerToHyperService::new(app);
    // Handlers can ask for the client's address (`ConnectInfo<SocketAddr>`).
    let service =
        hyper::service::service_fn(move |mut req: axum::http::Request<hyper::body::Incoming>| {
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            hyper::service::Service::call(&router, req)
        });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEADER_BYTES)
        .keep_alive(true)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        let quiet = activity.quiet_for();
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "admin API connection closed");
                }
                return;
            }
            _ = shutdown.recv(), if !stopping => {
                // Finishes the request in hand, then closes.
                conn.as_mut().graceful_shutdown();
                stopping = true;
            }
            _ = tokio::time::sleep(limits.idle_timeout.saturating_sub(quiet)) => {
                if activity.quiet_for() >= limits.idle_timeout {
                    tracing::debug!(%peer, idle = %humantime::format_duration(limits.idle_timeout), "admin API connection closed: no byte either way for http_idle_timeout");
                    return;
                }
            }
        }
    }
}

/// When a connection last moved a byte.
#[derive(Clone)]
struct Activity {
    since: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            since: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Activity {
    fn touch(&self) {
        let now = self.since.elapsed().as_millis() as u64;
        self.last_ms.store(now, Ordering::Relaxed);
    }

    fn quiet_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.since.elapsed().saturating_sub(last)
    }
}

/// A stream that records every read or write that moved bytes.
struct Watched<T> {
    inner: T,
    activity: Activity,
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Watched<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Hourly (and once at start) until shutdown, on the leader only:
/// reports older than `retention`, verdicts older than `verdict_retention`,
/// hourly aggregates, audit entries and alert delivery attempts older than
/// `aggregate_retention`.
async fn prune_loop(
    storage: Arc<Storage>,
    role: tokio::sync::watch::Receiver<ReplicaRole>,
    retention: Duration,
    verdict_retention: Duration,
    aggregate_retention: Duration,
    mut shutdown: Shutdown,
) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.recv() => return,
        }
        if *role.borrow() != ReplicaRole::Leader {
            tracing::debug!("not the leader: retention is the leader's work");
            continue;
        }
        let cutoff = now_ms() - retention.as_millis() as i64;
        let verdict_cutoff = now_ms() - verdict_retention.as_millis() as i64;
        let aggregate_cutoff = now_ms() - aggregate_retention.as_millis() as i64;
        let pruned = [
            ("reports", storage.prune(cutoff).await, retention),
            // The status page counts its 90 days of uptime from verdicts.
            (
                "verdicts",
                storage.prune_verdicts(verdict_cutoff).await,
                verdict_retention,
            ),
            (
                "hourly aggregates",
                storage.prune_aggregates(aggregate_cutoff).await,
                aggregate_retention,
            ),
            // Who changed what is worth as long a memory as the graphs.
            (
                "audit entries",
                storage.prune_audit(aggregate_cutoff).await,
                aggregate_retention,
            ),
            // Who was paged, when, and what each try came to: as the audit.
            (
                "alert delivery attempts",
                storage.prune_alert_attempts(aggregate_cutoff).await,
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
/// agents, the admin token and `[[token]]`s, `[incidents]`/`[baselines]`
/// (the judge), `[[alert]]` channels, and what join tokens carry
/// (`public_urls`, `join_token_ttl`) follow; the rest of `[server]` waits
/// for a restart.
async fn reload_loop(
    path: PathBuf,
    mut current: CoordinatorConfig,
    grpc_addr: SocketAddr,
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
            || old.verdict_retention != fresh.verdict_retention
            || old.heartbeat != fresh.heartbeat
            || old.http_limits != fresh.http_limits
            || current.storage != new.storage
            || current.telemetry != new.telemetry
            || current.status != new.status
        {
            tracing::warn!(
                "listen addresses, data_dir, [storage], [telemetry], [status], TLS, limits, retention and heartbeat change only on restart; checks, agents, the admin token and [[token]]s, [incidents], [baselines], [[alert]], public_urls and join_token_ttl are applied now"
            );
        }
        // Join tokens made from now on carry the new URLs and lifetime; the
        // fingerprint stays the served certificate's (TLS follows a restart).
        if (&old.public_urls, old.join_token_ttl) != (&fresh.public_urls, fresh.join_token_ttl) {
            let served = control.enrollment().sha256;
            control.set_enrollment(crate::cluster::control::EnrollSettings {
                sha256: served,
                ..enroll_settings(fresh, grpc_addr)
            });
            tracing::info!(public_urls = ?fresh.public_urls, join_token_ttl = %humantime::format_duration(fresh.join_token_ttl), "join tokens: URLs and lifetime reloaded");
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
