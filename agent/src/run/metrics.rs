//! Prometheus metrics of the long-running agent, served at `/metrics` on
//! `[agent] metrics_listen` (off unless set).
//!
//! The agent exposes its own health: spool depth, reports waiting for an
//! acknowledgement, probes in flight, whether it is connected. Per-check
//! step, round-trip and outcome series are the coordinator's: it sees every
//! region's reports, so one scrape there has them all (see README).
//!
//! One registry per agent, built by [`super::run`] and read at scrape time
//! from the spool, the probe gate and the session's counters; nothing here
//! holds a check id, a probe id or a reply text.

use super::schedule::ProbeGate;
use super::spool::Spool;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::watch;

/// The agent's registry.
#[derive(Debug)]
pub struct AgentMetrics {
    registry: Registry,
}

/// What the agent's metrics are read from at scrape time.
pub struct Sources {
    pub spool: Spool,
    pub spool_max_reports: u64,
    pub gate: ProbeGate,
    pub connected: watch::Receiver<bool>,
    /// Reports sent on the current session and not yet acknowledged (set by the client).
    pub unacked: Arc<AtomicU64>,
    pub region: String,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sources")
    }
}

impl AgentMetrics {
    pub fn new(sources: Sources) -> Arc<AgentMetrics> {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(sources));
        Arc::new(AgentMetrics { registry })
    }

    /// A registry on a spool at `path` with nothing running: what the
    /// families are, for the README's generated list.
    pub fn for_listing(path: &std::path::Path) -> Arc<AgentMetrics> {
        let spool = Spool::open(path, 1).expect("a spool in a fresh directory");
        AgentMetrics::new(Sources {
            spool,
            spool_max_reports: 1,
            gate: ProbeGate::default(),
            connected: watch::channel(false).1,
            unacked: Arc::default(),
            region: "listing".into(),
        })
    }

    /// The exposition: OpenMetrics when `accept` asks for it, the classic
    /// text format otherwise (this agent has no counters, so the two differ
    /// only by the `# EOF` line). Returns the content type too.
    pub fn render_for(&self, accept: Option<&str>) -> (&'static str, String) {
        let mut out = String::with_capacity(2048);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
            (
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                out,
            )
        } else {
            let classic: String = out
                .lines()
                .filter(|l| *l != "# EOF" && !l.starts_with("# UNIT "))
                .flat_map(|l| [l, "\n"])
                .collect();
            ("text/plain; version=0.0.4; charset=utf-8", classic)
        }
    }
}

impl Collector for Sources {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let region = [("region", self.region.as_str())];
        let gauges: [(&str, &str, i64); 5] = [
            (
                "mailloop_agent_spool_reports",
                "Reports in the spool: not yet acknowledged by the coordinator (sent or not).",
                self.spool.waiting() as i64,
            ),
            (
                "mailloop_agent_spool_capacity_reports",
                "spool_max_reports: beyond it the oldest reports are dropped.",
                self.spool_max_reports as i64,
            ),
            (
                "mailloop_agent_reports_unacked",
                "Reports sent on the current session and waiting for their acknowledgement.",
                self.unacked.load(Ordering::Relaxed) as i64,
            ),
            (
                "mailloop_agent_probes_in_flight",
                "Probes running now.",
                self.gate.in_flight() as i64,
            ),
            (
                "mailloop_agent_connected",
                "1 while a session with the coordinator is registered, 0 otherwise.",
                i64::from(*self.connected.borrow()),
            ),
        ];
        for (name, help, value) in gauges {
            let mut family = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(value).encode(family.encode_family(&region)?)?;
        }
        Ok(())
    }
}

/// `GET /metrics` on `listener` until `stop` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<AgentMetrics>,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    use axum::http::{HeaderMap, header};
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move |headers: HeaderMap| {
            let metrics = metrics.clone();
            async move {
                let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
                let (content_type, body) = metrics.render_for(accept);
                ([(header::CONTENT_TYPE, content_type)], body)
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!("the metrics listener failed; /metrics is unavailable: {e}");
    }
}
