//! `mailloop-agent run`: the long-running agent.
//!
//! ```text
//!  agent.toml ─▶ AgentConfig::load (validate whole; exit 3)
//!                  │
//!   spool.db ◀──── Spool ◀──────────── Scheduler (a task per check: round k at
//!  (reports,        │  ▲                 k*interval+phase, Prober::run, push)
//!   assignments,    │  │ upsert/remove          ▲
//!   probe_log)      ▼  │                        │ assignments (also resumed from the spool)
//!                Connection ── Register, WatchAssignments, ReportResults, Heartbeat ──▶ coordinator
//! ```
//!
//! - [`config`] reads `agent.toml`.
//! - [`spool`] is the SQLite spool (reports until acknowledged,
//!   assignments, the probe log).
//! - [`schedule`] holds the per-check tasks, the round arithmetic, and the
//!   gate that stops new probes at shutdown.
//! - [`client`] runs the gRPC sessions, reconnects and replays.
//! - [`metrics`] serves `/metrics` on `metrics_listen` (spool, acks, probes in flight).
//!
//! **Invariant:** a report is in the spool before it is sent, and leaves it
//! only when the coordinator acknowledges it (stored or rejected) or the
//! spool cap drops it (logged). Probing never waits for the coordinator.

pub mod client;
pub mod config;
pub mod enroll;
pub mod metrics;
pub mod schedule;
pub mod spool;

use crate::telemetry::{Identity, Telemetry};
use config::AgentConfig;
use schedule::{ProbeGate, Scheduler};
use spool::{Spool, SpoolError};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How long a stopping agent tries to hand its spool to the coordinator
/// after the in-flight probes are done.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// How often old probe-log rows are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// What keeps the agent from starting (exit 3).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot open the spool: {0}")]
    Spool(#[from] SpoolError),
    #[error("coordinator connection settings: {0}")]
    Coordinator(String),
    #[error("cannot listen on {addr} (metrics_listen): {source}")]
    MetricsListen { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("trace export: {0}")]
    Telemetry(String),
}

/// Runs the agent until `shutdown` completes, then stops gracefully: no
/// new probes, in-flight ones get `shutdown_grace` to finish (their reports
/// are spooled), the spool gets [`FLUSH_TIMEOUT`] to reach the coordinator.
/// Whatever is not acknowledged stays in the spool for the next start.
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    let targets = client::endpoints(&config.coordinator).map_err(RunError::Coordinator)?;
    let spool = {
        let (path, max) = (config.spool.clone(), config.spool_max_reports);
        tokio::task::spawn_blocking(move || Spool::open(&path, max)).await.map_err(SpoolError::from)??
    };
    tracing::info!(
        "mailloop-agent {} starting as {} in region {}; spool {} ({} report(s) waiting)",
        env!("CARGO_PKG_VERSION"),
        config.name,
        config.region,
        config.spool.display(),
        spool.waiting()
    );

    let who = Identity { instance: config.name.clone(), region: Some(config.region.clone()) };
    let telemetry = Telemetry::start(&config.telemetry, &who).map_err(RunError::Telemetry)?.map(Arc::new);

    let gate = ProbeGate::default();
    let mut scheduler = Scheduler::new(spool.clone(), config.dns.clone(), gate.clone());
    scheduler.connect_to = config.connect_to.clone();
    scheduler.telemetry = telemetry.clone();
    scheduler.resume().await?;

    let (connected_tx, connected) = watch::channel(false);
    let who = client::Identification {
        name: config.name.clone(),
        region: config.region.clone(),
        spool_max_reports: config.spool_max_reports,
    };
    let mut connection = client::Connection::new(who, &config.coordinator, targets, spool.clone(), connected_tx)
        .map_err(RunError::Coordinator)?;
    if connection.use_rotated_token().await? {
        tracing::info!("using the token the coordinator rotated this agent to (kept in the spool) instead of the configured one");
    }
    let (metrics_stop, metrics_task) = match config.metrics_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| RunError::MetricsListen { addr, source })?;
            tracing::info!("serving /metrics on http://{}/metrics", listener.local_addr().unwrap_or(addr));
            let m = metrics::AgentMetrics::new(metrics::Sources {
                spool: spool.clone(),
                spool_max_reports: config.spool_max_reports,
                gate: gate.clone(),
                connected: connected.clone(),
                unacked: connection.unacked.clone(),
                region: config.region.clone(),
            });
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            (Some(tx), Some(tokio::spawn(metrics::serve(listener, m, async move { let _ = rx.await; }))))
        }
        None => (None, None),
    };
    let (stop_tx, stop) = watch::channel(false);
    let client_task = tokio::spawn(connection.run(scheduler, stop));
    let pruner = tokio::spawn(prune_probe_log(spool.clone()));
    // systemd (Type=notify): config valid, spool open, /metrics bound,
    // probing under way. A no-op outside systemd (no NOTIFY_SOCKET).
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);

    shutdown.await;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);

    let in_flight = gate.close();
    let grace = humantime::format_duration(config.shutdown_grace);
    tracing::info!("shutting down: no new probes; waiting up to {grace} for {in_flight} probe(s) in flight");
    if tokio::time::timeout(config.shutdown_grace, gate.drained()).await.is_err() {
        tracing::warn!(
            "{} probe(s) still running after shutdown_grace ({grace}): abandoned without a report",
            gate.in_flight()
        );
    }
    flush(&spool, &connected).await;
    stop_tx.send_replace(true);
    pruner.abort();
    drop(metrics_stop);
    if let Some(t) = metrics_task {
        let _ = tokio::time::timeout(Duration::from_secs(1), t).await;
    }
    if tokio::time::timeout(Duration::from_secs(1), client_task).await.is_err() {
        tracing::debug!("the coordinator session did not end within 1 s; dropped");
    }
    if let Some(t) = telemetry {
        // Ships the last probes' traces (bounded by EXPORT_TIMEOUT).
        let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;
    }
    tracing::info!("stopped; {} report(s) left in the spool", spool.waiting());
    Ok(())
}

/// Gives the coordinator a short chance to acknowledge what is spooled.
async fn flush(spool: &Spool, connected: &watch::Receiver<bool>) {
    let waiting = spool.waiting();
    if waiting == 0 {
        return;
    }
    if !*connected.borrow() {
        tracing::info!("not connected to the coordinator: {waiting} report(s) stay in the spool for the next start");
        return;
    }
    tracing::info!("sending {waiting} spooled report(s) to the coordinator (up to {}s)", FLUSH_TIMEOUT.as_secs());
    let mut rx = spool.watch_waiting();
    match tokio::time::timeout(FLUSH_TIMEOUT, rx.wait_for(|n| *n == 0)).await {
        Ok(_) => tracing::info!("spool flushed: every report acknowledged"),
        Err(_) => tracing::info!("{} report(s) stay in the spool for the next start", spool.waiting()),
    }
}

async fn prune_probe_log(spool: Spool) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    loop {
        tick.tick().await;
        match spool.prune_probe_log().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!("pruned {n} probe-log row(s) older than {}", humantime::format_duration(spool::PROBE_LOG_RETENTION)),
            Err(e) => tracing::warn!("cannot prune the probe log: {e}"),
        }
    }
}
