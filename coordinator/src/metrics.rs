//! Prometheus metrics of the coordinator, served at `/metrics`.
//!
//! One [`Metrics`] (one `prometheus_client` registry) is built by the server
//! next to the hub and the judge and handed to whoever observes: the gRPC
//! edge (reports received, committed, rejected, replayed, and each new
//! report's steps), the judge (verdicts, open incidents, round latency).
//! What the hub and the alert channels already know (connected agents,
//! assignment revision, alert deliveries) is read at scrape time.
//!
//! **Invariant:** labels take bounded values only: check, region, step,
//! outcome, failure class, verdict, incident kind, channel, TLS endpoint
//! (`host:port` from the check's own config). Never a probe id, queue id,
//! reply text or token. Per-check series live in one map pruned at every
//! scrape to the hub's live checks and their regions, so a deleted check's
//! series disappear.
//!
//! The exposition is `prometheus_client`'s OpenMetrics text; a scraper
//! that does not ask for OpenMetrics (curl, `promtool check metrics`) gets
//! the same families in the classic text format (see [`classic`]).

use crate::alerts::Alerts;
use crate::cluster::hub::Hub;
use crate::judge::{Incident, RegionState, Verdict, VerdictKind};
use mailloop_common::ProbeReport;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// Upper bounds (seconds) of the step, round-trip and delivery histograms:
/// 1 ms (a loopback step) to 60 s (a slow queue), about three per decade.
pub const BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Judge round latency: from well under a millisecond to a slow disk.
const ROUND_BUCKETS: [f64; 10] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0,
];

/// A status page answer served from memory: microseconds, up to the page
/// build a visitor may wait for.
const STATUS_SERVED_BUCKETS: [f64; 12] = [
    0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.1, 1.0,
];

/// The OpenMetrics content type (what Prometheus asks for).
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic Prometheus text format.
pub const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every metric of one coordinator.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Region → reports received, committed, rejected, replayed.
    ingest: Arc<Mutex<BTreeMap<String, [u64; 4]>>>,
    judge_round: Histogram,
    /// The status page's own time per answer served from its snapshot.
    status_served: Histogram,
    checks: Arc<Mutex<BTreeMap<String, CheckSeries>>>,
    /// `[server] metrics = false`: every observation returns at once and
    /// nothing is served (the ingest benchmark's "metrics off").
    enabled: bool,
}

const RECEIVED: usize = 0;
const COMMITTED: usize = 1;
const REJECTED: usize = 2;
const REPLAYED: usize = 3;
/// (name, help) of the ingest counters, indexed as above.
const INGEST: [(&str, &str); 4] = [
    (
        "mailloop_reports_received",
        "Probe reports received from agents, by the agent's region.",
    ),
    (
        "mailloop_reports_committed",
        "Probe reports stored for the first time (committed, then acknowledged).",
    ),
    (
        "mailloop_reports_rejected",
        "Probe reports refused (malformed, unknown check, region not assigned); acknowledged with the reason.",
    ),
    (
        "mailloop_reports_replayed",
        "Probe reports an agent's spool sent again that were already stored (acknowledged, not stored twice).",
    ),
];

impl Metrics {
    /// The registry with every family; `hub` and `alerts` are read at scrape time.
    pub fn new(hub: Arc<Hub>, alerts: Arc<Alerts>) -> Arc<Metrics> {
        let mut registry = Registry::default();
        let ingest = Arc::new(Mutex::new(BTreeMap::new()));
        let checks = Arc::new(Mutex::new(BTreeMap::new()));
        registry.register_collector(Box::new(Live {
            hub,
            alerts,
            ingest: ingest.clone(),
            checks: checks.clone(),
        }));
        // The registry adds the final full stop to a registered metric's help.
        let judge_round = Histogram::new(ROUND_BUCKETS);
        registry.register(
            "mailloop_judge_round_duration_seconds",
            "Time to decide one check's round: judging, storing the verdict and incident changes, queueing alerts",
            judge_round.clone(),
        );
        let status_served = Histogram::new(STATUS_SERVED_BUCKETS);
        registry.register(
            "mailloop_status_page_served_seconds",
            "The status page's own time per answer from its cached snapshot (page, JSON, feed, badge), from the handler's start to the response built; excludes queueing and the socket write",
            status_served.clone(),
        );
        Arc::new(Metrics {
            registry,
            ingest,
            judge_round,
            status_served,
            checks,
            enabled: true,
        })
    }

    /// Metrics switched off (`[server] metrics = false`): an empty
    /// registry, and every observation returns before taking a lock.
    pub fn off() -> Arc<Metrics> {
        Arc::new(Metrics {
            registry: Registry::default(),
            ingest: Arc::default(),
            judge_round: Histogram::new(ROUND_BUCKETS),
            status_served: Histogram::new(STATUS_SERVED_BUCKETS),
            checks: Arc::default(),
            enabled: false,
        })
    }

    /// False when switched off by `[server] metrics = false`.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn count(&self, region: &str, which: usize) {
        if !self.enabled {
            return;
        }
        let mut ingest = self.ingest.lock().unwrap_or_else(|e| e.into_inner());
        match ingest.get_mut(region) {
            Some(c) => c[which] += 1,
            None => {
                let mut c = [0; 4];
                c[which] = 1;
                ingest.insert(region.to_string(), c);
            }
        }
    }

    /// A report arrived on a ReportResults stream.
    pub fn received(&self, region: &str) {
        self.count(region, RECEIVED);
    }

    /// A report was refused before storage.
    pub fn rejected(&self, region: &str) {
        self.count(region, REJECTED);
    }

    /// A report's commit came back: `new` is false for a replay of a stored
    /// report. A new report's steps, times, outcome, auth results and
    /// certificates are observed.
    pub fn stored(&self, region: &str, new: bool, report_json: &str) {
        if !self.enabled {
            return;
        }
        match serde_json::from_str::<ProbeReport>(report_json) {
            Ok(report) => self.stored_report(region, new, &report),
            // The JSON was validated before storage; this cannot happen.
            Err(_) => self.count(region, if new { COMMITTED } else { REPLAYED }),
        }
    }

    /// [`Metrics::stored`] with the report as the intake already parsed it
    /// (the ingest path parses each report's JSON once).
    pub fn stored_report(&self, region: &str, new: bool, report: &ProbeReport) {
        if !self.enabled {
            return;
        }
        if !new {
            self.count(region, REPLAYED);
            return;
        }
        self.count(region, COMMITTED);
        self.observe(region, report);
    }

    /// Observes one probe report of `region`.
    pub fn observe(&self, region: &str, r: &ProbeReport) {
        if !self.enabled {
            return;
        }
        let mut checks = self.lock();
        let c = checks.entry(r.check.clone()).or_default();
        let per = c.regions.entry(region.to_string()).or_default();
        for s in &r.steps {
            per.steps
                .entry(s.name.as_str())
                .or_insert_with(Hist::steps)
                .observe(s.ms / 1000.0);
        }
        if let Some(ms) = r.rtt_ms {
            per.rtt.observe(ms / 1000.0);
        }
        if let Some(ms) = r.delivery_ms {
            per.delivery.observe(ms / 1000.0);
        }
        let class = r.failure.as_ref().map_or("none", |f| f.class.as_str());
        *per.probes.entry((r.outcome.as_str(), class)).or_default() += 1;
        if let Some(a) = &r.auth {
            for (method, result) in [("spf", &a.spf), ("dkim", &a.dkim), ("dmarc", &a.dmarc)] {
                *per.auth
                    .entry((method, auth_result(result.as_deref())))
                    .or_default() += 1;
            }
        }
        for t in &r.tls {
            if let Ok(at) = chrono::DateTime::parse_from_rfc3339(&t.not_after) {
                c.certs.insert(t.endpoint.clone(), at.timestamp());
            }
        }
    }

    /// The judge decided a round: the check's verdict, each region's state,
    /// and the incidents it holds open now.
    pub fn judged(&self, v: &Verdict, open: &[Incident]) {
        if !self.enabled {
            return;
        }
        let mut checks = self.lock();
        let c = checks.entry(v.check_id.clone()).or_default();
        c.verdict = Some(v.verdict);
        c.region_states = v
            .regions
            .iter()
            .map(|e| (e.region.clone(), e.state))
            .collect();
        c.incidents.clear();
        for i in open {
            *c.incidents.entry(i.kind.as_str()).or_default() += 1;
        }
    }

    /// One status page answer served from the snapshot took `took`.
    pub fn status_served(&self, took: std::time::Duration) {
        if self.enabled {
            self.status_served.observe(took.as_secs_f64());
        }
    }

    /// Starts timing one judge round; observed when the guard drops.
    pub fn judge_round(&self) -> RoundTimer<'_> {
        RoundTimer {
            metrics: self,
            started: Instant::now(),
            started_at: std::time::SystemTime::now(),
            done: false,
        }
    }

    /// The whole exposition in OpenMetrics text (ends with `# EOF`).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(64 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// `render()` for a client with this `Accept` header: OpenMetrics when
    /// asked for, the classic text format otherwise. Returns the content type too.
    pub fn render_for(&self, accept: Option<&str>) -> (&'static str, String) {
        let text = self.render();
        if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
            (OPENMETRICS, text)
        } else {
            (CLASSIC, classic(&text))
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, CheckSeries>> {
        self.checks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `GET /metrics` for `metrics`, outside `/api/v1`. With `token`, a scrape
/// must send `Authorization: Bearer <token>` (compared as SHA-256 digests).
pub fn router(metrics: Arc<Metrics>, token: Option<&mailloop_common::Secret>) -> axum::Router {
    let state = Scrape {
        metrics,
        token_sha256: token.map(|t| crate::config::names::token_sha256(t.expose())),
    };
    axum::Router::new()
        .route("/metrics", axum::routing::get(scrape))
        .with_state(Arc::new(state))
}

struct Scrape {
    metrics: Arc<Metrics>,
    token_sha256: Option<String>,
}

async fn scrape(
    axum::extract::State(s): axum::extract::State<Arc<Scrape>>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    if let Some(want) = &s.token_sha256 {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| crate::config::names::token_sha256(t.trim()));
        if given.as_ref() != Some(want) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "/metrics needs the bearer token of metrics_token_file\n",
            )
                .into_response();
        }
    }
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    // Rendering 1,000s of series is CPU work: off the async workers.
    let metrics = s.metrics.clone();
    let accept = accept.map(str::to_string);
    match tokio::task::spawn_blocking(move || metrics.render_for(accept.as_deref())).await {
        Ok((content_type, body)) => ([(header::CONTENT_TYPE, content_type)], body).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("rendering metrics failed: {e}\n"),
        )
            .into_response(),
    }
}

/// Observes a judge round's duration when dropped.
pub struct RoundTimer<'a> {
    metrics: &'a Metrics,
    started: Instant,
    /// The same start on the wall clock, for the round's `verdict` span.
    started_at: std::time::SystemTime,
    done: bool,
}

impl RoundTimer<'_> {
    /// When the round's judging started (wall clock).
    pub fn started_at(&self) -> std::time::SystemTime {
        self.started_at
    }

    /// Observes the round's duration now and returns (start, duration):
    /// the `verdict` span records exactly this measurement.
    pub fn finish(mut self) -> (std::time::SystemTime, std::time::Duration) {
        let took = self.started.elapsed();
        if self.metrics.enabled {
            self.metrics.judge_round.observe(took.as_secs_f64());
        }
        self.done = true;
        (self.started_at, took)
    }
}

impl Drop for RoundTimer<'_> {
    fn drop(&mut self) {
        if !self.done && self.metrics.enabled {
            self.metrics
                .judge_round
                .observe(self.started.elapsed().as_secs_f64());
        }
    }
}

/// An `Authentication-Results` verdict as a bounded label value (RFC 8601's
/// results; anything else a server wrote is `other`).
fn auth_result(r: Option<&str>) -> &'static str {
    match r.map(str::to_ascii_lowercase).as_deref() {
        None => "missing",
        Some("pass") => "pass",
        Some("fail") => "fail",
        Some("softfail") => "softfail",
        Some("neutral") => "neutral",
        Some("none") => "none",
        Some("temperror") => "temperror",
        Some("permerror") => "permerror",
        Some("policy") => "policy",
        Some(_) => "other",
    }
}

fn verdict_str(v: VerdictKind) -> &'static str {
    v.as_str()
}

const VERDICTS: [VerdictKind; 6] = [
    VerdictKind::Up,
    VerdictKind::Degraded,
    VerdictKind::Deferred,
    VerdictKind::Transit,
    VerdictKind::Down,
    VerdictKind::Unknown,
];

const REGION_STATES: [(RegionState, &str); 5] = [
    (RegionState::Ok, "ok"),
    (RegionState::Degraded, "degraded"),
    (RegionState::Deferred, "deferred"),
    (RegionState::Failed, "failed"),
    (RegionState::Missing, "missing"),
];

const INCIDENT_KINDS: [&str; 5] = [
    "outage",
    "regional",
    "performance",
    "authentication",
    "certificate",
];

/// A histogram kept under the per-check lock (no lock of its own).
#[derive(Debug, Clone)]
struct Hist {
    sum: f64,
    count: u64,
    /// Non-cumulative counts per upper bound, the last at `f64::MAX` (+Inf),
    /// as `prometheus_client`'s encoder expects them.
    buckets: Vec<(f64, u64)>,
}

impl Hist {
    fn steps() -> Hist {
        Hist::new(&BUCKETS)
    }

    fn new(bounds: &[f64]) -> Hist {
        let mut buckets: Vec<(f64, u64)> = bounds.iter().map(|b| (*b, 0)).collect();
        buckets.push((f64::MAX, 0));
        Hist {
            sum: 0.0,
            count: 0,
            buckets,
        }
    }

    fn observe(&mut self, v: f64) {
        self.sum += v;
        self.count += 1;
        if let Some(b) = self.buckets.iter_mut().find(|(le, _)| v <= *le) {
            b.1 += 1;
        }
    }
}

impl Default for Hist {
    fn default() -> Hist {
        Hist::steps()
    }
}

/// Everything kept for one check.
#[derive(Debug, Default)]
struct CheckSeries {
    regions: BTreeMap<String, RegionSeries>,
    /// TLS endpoint (`host:port`) → its certificate's notAfter (Unix seconds), last seen.
    certs: BTreeMap<String, i64>,
    verdict: Option<VerdictKind>,
    region_states: BTreeMap<String, RegionState>,
    /// Open incidents by kind.
    incidents: BTreeMap<&'static str, u64>,
}

/// One check × region.
#[derive(Debug, Default)]
struct RegionSeries {
    steps: BTreeMap<&'static str, Hist>,
    rtt: Hist,
    delivery: Hist,
    /// (outcome, failure class) → probes.
    probes: BTreeMap<(&'static str, &'static str), u64>,
    /// (method, result) → probes.
    auth: BTreeMap<(&'static str, &'static str), u64>,
}

/// The families rendered from current state at scrape time.
struct Live {
    hub: Arc<Hub>,
    alerts: Arc<Alerts>,
    ingest: Arc<Mutex<BTreeMap<String, [u64; 4]>>>,
    checks: Arc<Mutex<BTreeMap<String, CheckSeries>>>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Live")
    }
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

impl Collector for Live {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let ingest = self
            .ingest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (i, (name, help)) in INGEST.iter().enumerate() {
            counter(
                &mut enc,
                name,
                help,
                ingest
                    .iter()
                    .map(|(r, c)| (vec![("region", r.as_str())], c[i])),
            )?;
        }
        // Hub state first (its lock is not held while ours is).
        let live_checks = self.hub.checks();
        let agents = self.hub.agents();
        let revision = self.hub.revision();
        let mut connected: BTreeMap<&str, i64> = BTreeMap::new();
        for a in &agents {
            if a.stored.revoked {
                continue;
            }
            *connected.entry(a.stored.region.as_str()).or_default() += i64::from(a.connected);
        }
        gauge(
            &mut enc,
            "mailloop_agents_connected",
            "Agents with an open assignment stream, by region (every region with a registered agent).",
            connected.iter().map(|(r, n)| (vec![("region", *r)], *n)),
        )?;
        gauge(
            &mut enc,
            "mailloop_assignment_revision",
            "The newest check revision (every change of any check takes one).",
            [(Vec::new(), revision as i64)].into_iter(),
        )?;
        gauge(
            &mut enc,
            "mailloop_checks",
            "Checks in force (not deleted).",
            [(Vec::new(), live_checks.len() as i64)].into_iter(),
        )?;

        // Alert channels: their own delivery counters.
        let status = self.alerts.status();
        let channels = status["channels"].as_array().cloned().unwrap_or_default();
        let mut deliveries: Vec<(Labels, u64)> = Vec::new();
        for ch in &channels {
            let name = ch["name"].as_str().unwrap_or("?");
            for result in ["delivered", "failed", "dropped"] {
                let n = ch[result].as_u64().unwrap_or(0);
                deliveries.push((vec![("channel", name), ("result", result)], n));
            }
        }
        counter(
            &mut enc,
            "mailloop_alert_deliveries",
            "Alert events per channel: delivered, failed (after its retries, or permanently) or dropped (queue full).",
            deliveries.iter().map(|(l, n)| (l.clone(), *n)),
        )?;

        // Per check: prune what the hub no longer has, then render.
        let wanted: BTreeMap<&str, HashSet<&str>> = live_checks
            .iter()
            .map(|c| {
                (
                    c.spec.name.as_str(),
                    c.spec.regions.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        let mut checks = self.checks.lock().unwrap_or_else(|e| e.into_inner());
        checks.retain(|id, c| {
            let Some(regions) = wanted.get(id.as_str()) else {
                return false;
            };
            c.regions.retain(|r, _| regions.contains(r.as_str()));
            c.region_states.retain(|r, _| regions.contains(r.as_str()));
            true
        });
        render_checks(&mut enc, &checks, &live_checks)
    }
}

fn render_checks(
    enc: &mut DescriptorEncoder,
    checks: &BTreeMap<String, CheckSeries>,
    live: &[crate::storage::StoredCheck],
) -> Result<(), std::fmt::Error> {
    let mut verdicts: Vec<(Labels, i64)> = Vec::new();
    for c in live {
        let id = c.spec.name.as_str();
        let current = checks.get(id).and_then(|s| s.verdict);
        // No verdict yet reads as unknown: every check has its state set.
        let current = current.unwrap_or(VerdictKind::Unknown);
        for v in VERDICTS {
            verdicts.push((
                vec![("check", id), ("verdict", verdict_str(v))],
                i64::from(v == current),
            ));
        }
    }
    gauge(
        enc,
        "mailloop_check_verdict",
        "The check's latest round verdict, as a state set: 1 for the current verdict, 0 for the others (unknown until its first round is decided).",
        verdicts.into_iter(),
    )?;
    gauge(
        enc,
        "mailloop_check_region_state",
        "Each region's state in the check's latest decided round, as a state set (1 for the current state).",
        checks.iter().flat_map(|(id, c)| {
            c.region_states.iter().flat_map(move |(region, state)| {
                REGION_STATES.iter().map(move |(s, name)| {
                    (
                        vec![
                            ("check", id.as_str()),
                            ("region", region.as_str()),
                            ("state", *name),
                        ],
                        i64::from(s == state),
                    )
                })
            })
        }),
    )?;
    let mut by_kind: BTreeMap<&str, i64> = INCIDENT_KINDS.iter().map(|k| (*k, 0)).collect();
    for c in checks.values() {
        for (k, n) in &c.incidents {
            *by_kind.entry(k).or_default() += *n as i64;
        }
    }
    gauge(
        enc,
        "mailloop_incidents_open",
        "Incidents open or acknowledged (not resolved), by kind, over all checks.",
        by_kind.iter().map(|(k, n)| (vec![("kind", *k)], *n)),
    )?;
    gauge(
        enc,
        "mailloop_check_incidents_open",
        "Incidents open or acknowledged on the check, by kind (only kinds with one open).",
        checks.iter().flat_map(|(id, c)| {
            c.incidents
                .iter()
                .map(move |(k, n)| (vec![("check", id.as_str()), ("kind", *k)], *n as i64))
        }),
    )?;
    gauge(
        enc,
        "mailloop_tls_certificate_expiry_timestamp_seconds",
        "When the certificate of the check's TLS endpoint (host:port) expires (notAfter, Unix time), as last seen by a probe; days left: (this - time()) / 86400.",
        checks.iter().flat_map(|(id, c)| {
            c.certs
                .iter()
                .map(move |(e, d)| (vec![("check", id.as_str()), ("endpoint", e.as_str())], *d))
        }),
    )?;
    counter(
        enc,
        "mailloop_probes",
        "Probe reports stored, by outcome (ok, degraded, failed) and failure class (none when it did not fail).",
        per_region(checks).flat_map(|(id, region, r)| {
            r.probes.iter().map(move |((outcome, class), n)| {
                (
                    vec![
                        ("check", id),
                        ("region", region),
                        ("outcome", *outcome),
                        ("class", *class),
                    ],
                    *n,
                )
            })
        }),
    )?;
    counter(
        enc,
        "mailloop_auth_results",
        "Authentication-Results verdicts of delivered probes, by method (spf, dkim, dmarc) and result (pass, fail, ..., missing).",
        per_region(checks).flat_map(|(id, region, r)| {
            r.auth.iter().map(move |((method, result), n)| {
                (
                    vec![
                        ("check", id),
                        ("region", region),
                        ("method", *method),
                        ("result", *result),
                    ],
                    *n,
                )
            })
        }),
    )?;
    histogram(
        enc,
        "mailloop_step_duration_seconds",
        "Duration of each protocol step of the probes (smtp.connect ... imap.logout), by check, region and step.",
        per_region(checks).flat_map(|(id, region, r)| {
            r.steps
                .iter()
                .map(move |(step, h)| (vec![("check", id), ("region", region), ("step", *step)], h))
        }),
    )?;
    histogram(
        enc,
        "mailloop_round_trip_seconds",
        "Round-trip time of delivered probes: submission start to the probe found over IMAP.",
        per_region(checks)
            .filter(|(_, _, r)| r.rtt.count > 0)
            .map(|(id, region, r)| (vec![("check", id), ("region", region)], &r.rtt)),
    )?;
    histogram(
        enc,
        "mailloop_delivery_seconds",
        "Delivery time of delivered probes: end of DATA accepted to the probe found over IMAP.",
        per_region(checks)
            .filter(|(_, _, r)| r.delivery.count > 0)
            .map(|(id, region, r)| (vec![("check", id), ("region", region)], &r.delivery)),
    )
}

fn per_region(
    checks: &BTreeMap<String, CheckSeries>,
) -> impl Iterator<Item = (&str, &str, &RegionSeries)> {
    checks.iter().flat_map(|(id, c)| {
        c.regions
            .iter()
            .map(move |(region, r)| (id.as_str(), region.as_str(), r))
    })
}

fn gauge<'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl Iterator<Item = (Labels<'a>, i64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in series {
        ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter<'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl Iterator<Item = (Labels<'a>, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in series {
        ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn histogram<'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl Iterator<Item = (Labels<'a>, &'a Hist)>,
) -> Result<(), std::fmt::Error> {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, h) in series {
        family
            .encode_family(&labels)?
            .encode_histogram::<Labels>(h.sum, h.count, &h.buckets, None)?;
    }
    Ok(())
}

/// The OpenMetrics text as the classic Prometheus text format (0.0.4):
/// counter families are named with their `_total` samples' name, and the
/// `# UNIT` and `# EOF` lines (OpenMetrics only) are left out. Every other
/// line is the encoder's, unchanged.
pub fn classic(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 64 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        if let Some((prefix, rest)) = meta {
            let name = rest.split(' ').next().unwrap_or("");
            if counters.contains(name) {
                out.push_str(prefix);
                out.push_str(name);
                out.push_str("_total");
                out.push_str(&rest[name.len()..]);
                out.push('\n');
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Names and help of every family, in registry order (the README's list).
pub fn families(exposition: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut help = String::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = rest.split_once(' ').map_or("", |(_, h)| h).to_string();
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, kind)) = rest.split_once(' ') {
                out.push((name.to_string(), kind.to_string(), help.clone()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_text_names_counters_by_their_samples() {
        let om = "# HELP a_things Things.\n# TYPE a_things counter\na_things_total{r=\"x\"} 1\n\
                  # HELP b_seconds B.\n# TYPE b_seconds histogram\n# UNIT b_seconds seconds\nb_seconds_sum 1.0\n# EOF\n";
        assert_eq!(
            classic(om),
            "# HELP a_things_total Things.\n# TYPE a_things_total counter\na_things_total{r=\"x\"} 1\n\
             # HELP b_seconds B.\n# TYPE b_seconds histogram\nb_seconds_sum 1.0\n"
        );
    }

    #[test]
    fn auth_results_are_a_bounded_set() {
        assert_eq!(auth_result(Some("PASS")), "pass");
        assert_eq!(auth_result(None), "missing");
        assert_eq!(auth_result(Some("pass; evil=\"x\"")), "other");
    }

    #[test]
    fn histograms_count_into_the_first_bucket_that_holds_the_value() {
        let mut h = Hist::steps();
        h.observe(0.0005);
        h.observe(0.001);
        h.observe(120.0);
        assert_eq!(h.buckets[0].1, 2, "<= 1 ms");
        assert_eq!(h.buckets.last().unwrap().1, 1, "+Inf");
        assert_eq!(h.count, 3);
    }
}
