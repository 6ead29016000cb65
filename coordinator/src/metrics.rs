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
use mailloop_common::step::StepName;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// Upper bounds (seconds) of the step, round-trip and delivery histograms:
/// 1 ms (a loopback step) to 60 s (a slow queue), log-spaced at about ×4–5
/// (eight bounds plus +Inf: 11 series per histogram, not 18 as with three
/// per decade). Every histogram is per check × region, so its bucket count
/// multiplies the whole exposition; `histogram_quantile` interpolates
/// inside a bucket, and an alert threshold is best put on a bound.
pub const BUCKETS: [f64; 8] = [0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10.0, 60.0];
/// Buckets of one histogram, the last one +Inf.
const NB: usize = BUCKETS.len() + 1;
/// How many steps mailloop knows.
pub const STEP_COUNT: usize = StepName::ALL.len();

/// The steps that get a per check × region × step histogram by default
/// (`[server] metrics_steps`): the connect, the TLS handshake, the
/// submission login, the server's acceptance of the message (filters,
/// queue) and the mailbox login — each a different thing that gets slow.
/// The whole round trip and the delivery wait have their own histograms.
/// Only steps a probe actually recorded get one (`smtp.tls` and
/// `smtp.starttls` exclude each other), so a check has at most five.
pub const DEFAULT_STEPS: [StepName; 6] = [
    StepName::SmtpConnect,
    StepName::SmtpTls,
    StepName::SmtpStarttls,
    StepName::SmtpAuth,
    StepName::SmtpDataAck,
    StepName::ImapLogin,
];

/// Which steps get a duration histogram per check × region × step
/// (`[server] metrics_steps`: `"all"`, `"none"` or a list of step names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepSet([bool; STEP_COUNT]);

impl StepSet {
    /// Every step.
    pub fn all() -> StepSet {
        StepSet([true; STEP_COUNT])
    }

    /// No step histogram at all (round trip and delivery stay).
    pub fn none() -> StepSet {
        StepSet([false; STEP_COUNT])
    }

    /// Just these steps.
    pub fn of(steps: &[StepName]) -> StepSet {
        let mut set = StepSet::none();
        for s in steps {
            set.0[*s as usize] = true;
        }
        set
    }

    /// True when `step` gets a histogram.
    pub fn contains(&self, step: StepName) -> bool {
        self.0[step as usize]
    }

    /// The steps in the set, in protocol order.
    pub fn steps(&self) -> impl Iterator<Item = StepName> + '_ {
        StepName::ALL.iter().copied().filter(|s| self.contains(*s))
    }
}

impl Default for StepSet {
    fn default() -> StepSet {
        StepSet::of(&DEFAULT_STEPS)
    }
}
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
pub struct Metrics {
    /// The families kept by `prometheus_client` itself (judge round,
    /// status page answers).
    registry: Registry,
    /// Read at scrape time: agents, revision, live checks.
    hub: Arc<Hub>,
    /// Read at scrape time: alert deliveries.
    alerts: Arc<Alerts>,
    /// Region → reports received, committed, rejected, replayed.
    ingest: Mutex<BTreeMap<String, [u64; 4]>>,
    judge_round: Histogram,
    /// The status page's own time per answer served from its snapshot.
    status_served: Histogram,
    checks: Mutex<BTreeMap<String, CheckSeries>>,
    /// Steps with a per check × region × step histogram.
    steps: StepSet,
    /// The per-check families' `# HELP` and `# TYPE` lines, both formats.
    headers: Headers,
    /// One scrape renders at a time: each installs the chunks it rendered
    /// for the next, which takes the rest from the cache.
    scrape: Mutex<()>,
    /// Chunks the last scrape rendered (the others came from the cache).
    last_rendered: AtomicUsize,
    /// Length of the last exposition: the next one's buffer is sized once.
    last_len: AtomicUsize,
    /// The last exposition's buffer, handed back once its response was
    /// written: the next scrape writes into memory already mapped (at
    /// 1,000 checks × 5 regions, faulting in 40 fresh MB costs more than
    /// the copy into them).
    spare: Arc<Mutex<String>>,
    /// `[server] metrics = false`: every observation returns at once and
    /// nothing is served (the ingest benchmark's "metrics off").
    enabled: bool,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("enabled", &self.enabled)
            .field("steps", &self.steps)
            .finish_non_exhaustive()
    }
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
    /// The registry with every family and the default step histograms;
    /// `hub` and `alerts` are read at scrape time.
    pub fn new(hub: Arc<Hub>, alerts: Arc<Alerts>) -> Arc<Metrics> {
        Metrics::with_steps(hub, alerts, StepSet::default())
    }

    /// [`Metrics::new`] with per-step histograms for `steps` only.
    pub fn with_steps(hub: Arc<Hub>, alerts: Arc<Alerts>, steps: StepSet) -> Arc<Metrics> {
        let mut registry = Registry::default();
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
            hub,
            alerts,
            ingest: Mutex::default(),
            judge_round,
            status_served,
            checks: Mutex::default(),
            steps,
            headers: Headers::new(),
            scrape: Mutex::new(()),
            last_rendered: AtomicUsize::new(0),
            last_len: AtomicUsize::new(64 * 1024),
            spare: Arc::default(),
            enabled: true,
        })
    }

    /// Metrics switched off (`[server] metrics = false`): an empty
    /// registry, and every observation returns before taking a lock.
    pub fn off() -> Arc<Metrics> {
        Arc::new(Metrics {
            registry: Registry::default(),
            hub: Hub::new(Vec::new(), Vec::new()),
            alerts: Arc::default(),
            ingest: Mutex::default(),
            judge_round: Histogram::new(ROUND_BUCKETS),
            status_served: Histogram::new(STATUS_SERVED_BUCKETS),
            checks: Mutex::default(),
            steps: StepSet::none(),
            headers: Headers::default(),
            scrape: Mutex::new(()),
            last_rendered: AtomicUsize::new(0),
            last_len: AtomicUsize::new(0),
            spare: Arc::default(),
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

    /// Observes one probe report of `region`. The hot path of the
    /// intake: no allocation once the check × region has its series, one
    /// lock, steps found by index.
    pub fn observe(&self, region: &str, r: &ProbeReport) {
        if !self.enabled {
            return;
        }
        let mut checks = self.lock();
        if !checks.contains_key(r.check.as_str()) {
            checks.insert(r.check.clone(), CheckSeries::default());
        }
        let Some(c) = checks.get_mut(r.check.as_str()) else {
            return;
        };
        if !c.regions.contains_key(region) {
            c.regions.insert(region.to_string(), Region::default());
        }
        let Some(Region { series: per, cache }) = c.regions.get_mut(region) else {
            return;
        };
        cache.dirty = true;
        for s in &r.steps {
            if self.steps.contains(s.name) {
                per.step(s.name).observe(s.ms / 1000.0);
            }
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
            // Parsed only when the endpoint shows a certificate not seen before.
            if c.certs.get(&t.endpoint).is_some_and(|(raw, _)| *raw == t.not_after) {
                continue;
            }
            if let Ok(at) = chrono::DateTime::parse_from_rfc3339(&t.not_after) {
                c.certs
                    .insert(t.endpoint.clone(), (t.not_after.clone(), at.timestamp()));
                c.cache.dirty = true;
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
        c.cache.dirty = true;
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
        self.render_as(true)
    }

    /// `render()` for a client with this `Accept` header: OpenMetrics when
    /// asked for, the classic text format otherwise. Returns the content type too.
    pub fn render_for(&self, accept: Option<&str>) -> (&'static str, String) {
        if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
            (OPENMETRICS, self.render_as(true))
        } else {
            (CLASSIC, self.render_as(false))
        }
    }

    /// The exposition in one buffer sized from the previous one. The
    /// registry's and the scrape-time families (ingest, agents, alert
    /// deliveries: a few dozen series) are encoded now; the per-check
    /// families, the bulk, are put together from one cached chunk per check
    /// and per check × region, of which only those recorded into since the
    /// last scrape are encoded again, without the lock the intake takes.
    /// Chunks hold sample lines only, the same in both formats: the classic
    /// text differs in the families' metadata lines alone (see [`classic`]).
    fn render_as(&self, openmetrics: bool) -> String {
        let _one = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        // In the classic format, only the families encoded now are
        // converted: a few dozen series.
        let format = |text: String| if openmetrics { text } else { classic(&text) };
        let mut small = String::new();
        prometheus_client::encoding::text::encode_registry(&mut small, &self.registry)
            .expect("writing to a String cannot fail");
        let want = self.last_len.load(Ordering::Relaxed);
        let mut out = std::mem::take(&mut *self.spare.lock().unwrap_or_else(|e| e.into_inner()));
        out.clear();
        out.reserve(want + want / 8);
        if self.enabled {
            // Hub state first (its lock is not held while ours is).
            let live = self.hub.checks();
            encode_collector(&mut small, self.live(&live));
            out.push_str(&format(small));
            let mut taken = self.take(&live);
            // Encoded without the lock: the intake goes on meanwhile.
            let mut scratch = String::new();
            let fresh_checks: Vec<Arc<Chunk>> = taken
                .stale_checks
                .iter()
                .map(|s| Arc::new(Chunk::of(s.clone(), &mut scratch)))
                .collect();
            let fresh_regions: Vec<Arc<Chunk>> = taken
                .stale_regions
                .iter()
                .map(|s| Arc::new(Chunk::of(s.clone(), &mut scratch)))
                .collect();
            self.install(&taken, &fresh_checks, &fresh_regions);
            self.last_rendered
                .store(fresh_checks.len() + fresh_regions.len(), Ordering::Relaxed);
            fill(&mut taken.checks, fresh_checks);
            fill(&mut taken.regions, fresh_regions);
            let mut incidents = String::new();
            encode_collector(&mut incidents, IncidentsOpen(taken.incidents));
            let headers = if openmetrics {
                &self.headers.openmetrics
            } else {
                &self.headers.classic
            };
            // The families in the order the README lists them.
            for (i, header) in headers.iter().enumerate() {
                if i == INCIDENTS_AT {
                    out.push_str(&format(std::mem::take(&mut incidents)));
                }
                out.push_str(header);
                if i < CHECK_FAMILIES.len() {
                    for c in taken.checks.iter().flatten() {
                        out.push_str(c.family(i));
                    }
                } else {
                    let i = i - CHECK_FAMILIES.len();
                    for r in taken.regions.iter().flatten() {
                        out.push_str(r.family(i));
                    }
                }
            }
        } else {
            out.push_str(&format(small));
        }
        if openmetrics {
            prometheus_client::encoding::text::encode_eof(&mut out)
                .expect("writing to a String cannot fail");
        }
        self.last_len.store(out.len(), Ordering::Relaxed);
        out
    }

    /// The scrape-time families: ingest counters, agents, revision, checks
    /// and alert deliveries.
    fn live(&self, live: &[crate::storage::StoredCheck]) -> Live {
        let ingest = self
            .ingest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut connected: BTreeMap<String, i64> = BTreeMap::new();
        for a in &self.hub.agents() {
            if a.stored.revoked {
                continue;
            }
            *connected.entry(a.stored.region.clone()).or_default() += i64::from(a.connected);
        }
        let status = self.alerts.status();
        let mut deliveries = Vec::new();
        for ch in status["channels"].as_array().into_iter().flatten() {
            let name = ch["name"].as_str().unwrap_or("?");
            for result in ["delivered", "failed", "dropped"] {
                let n = ch[result].as_u64().unwrap_or(0);
                deliveries.push((name.to_string(), result, n));
            }
        }
        Live {
            ingest,
            connected,
            revision: self.hub.revision(),
            checks: live.len(),
            deliveries,
        }
    }

    /// Under the lock: prunes what the hub no longer has (a deleted check's
    /// chunks go with its series), and takes every chunk in exposition
    /// order, a copy of the series to encode where it is stale.
    fn take(&self, live: &[crate::storage::StoredCheck]) -> Taken {
        let wanted: BTreeMap<&str, HashSet<&str>> = live
            .iter()
            .map(|c| {
                (
                    c.spec.name.as_str(),
                    c.spec.regions.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        let mut checks = self.lock();
        checks.retain(|id, c| {
            let Some(regions) = wanted.get(id.as_str()) else {
                return false;
            };
            c.regions.retain(|r, _| regions.contains(r.as_str()));
            let before = c.region_states.len();
            c.region_states.retain(|r, _| regions.contains(r.as_str()));
            if c.region_states.len() != before {
                c.cache.dirty = true;
            }
            true
        });
        // Every live check has its verdict state set, decided or not.
        for id in wanted.keys() {
            if !checks.contains_key(*id) {
                checks.insert(id.to_string(), CheckSeries::default());
            }
        }
        let mut taken = Taken {
            incidents: INCIDENT_KINDS.iter().map(|k| (*k, 0)).collect(),
            ..Taken::default()
        };
        for (id, c) in checks.iter_mut() {
            for (k, n) in &c.incidents {
                *taken.incidents.entry(k).or_default() += *n as i64;
            }
            taken.checks.push(if c.cache.stale() {
                c.cache.dirty = false;
                taken.stale_checks.push(Arc::new(CheckSnap::of(id, c)));
                None
            } else {
                c.cache.chunk.clone()
            });
            for (region, r) in c.regions.iter_mut() {
                taken.regions.push(if r.cache.stale() {
                    r.cache.dirty = false;
                    taken.stale_regions.push(Arc::new(RegionSnap {
                        check: id.clone(),
                        region: region.clone(),
                        series: r.series.clone(),
                    }));
                    None
                } else {
                    r.cache.chunk.clone()
                });
            }
        }
        taken
    }

    /// Keeps the chunks encoded for the stale series, for the next scrape.
    /// A series recorded into meanwhile stays stale.
    fn install(&self, taken: &Taken, checks: &[Arc<Chunk>], regions: &[Arc<Chunk>]) {
        let mut map = self.lock();
        for (s, chunk) in taken.stale_checks.iter().zip(checks) {
            if let Some(c) = map.get_mut(&s.id) {
                c.cache.chunk = Some(chunk.clone());
            }
        }
        for (s, chunk) in taken.stale_regions.iter().zip(regions) {
            if let Some(r) = map.get_mut(&s.check).and_then(|c| c.regions.get_mut(&s.region)) {
                r.cache.chunk = Some(chunk.clone());
            }
        }
    }

    /// [`Metrics::render_for`] as a response body whose buffer comes back
    /// to the next scrape once the body is dropped.
    pub fn body_for(&self, accept: Option<&str>) -> (&'static str, axum::body::Bytes) {
        let (content_type, text) = self.render_for(accept);
        let body = Recycled {
            text,
            spare: self.spare.clone(),
        };
        (content_type, axum::body::Bytes::from_owner(body))
    }

    /// Chunks the last scrape encoded (the others came from the cache).
    pub fn last_rendered(&self) -> usize {
        self.last_rendered.load(Ordering::Relaxed)
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
    match tokio::task::spawn_blocking(move || metrics.body_for(accept.as_deref())).await {
        Ok((content_type, body)) => ([(header::CONTENT_TYPE, content_type)], body).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("rendering metrics failed: {e}\n"),
        )
            .into_response(),
    }
}

/// An exposition being written out; its buffer goes back to
/// [`Metrics::spare`] when the response is done with it.
struct Recycled {
    text: String,
    spare: Arc<Mutex<String>>,
}

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        self.text.as_bytes()
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
        if self.text.capacity() > spare.capacity() {
            *spare = std::mem::take(&mut self.text);
        }
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

/// A histogram kept under the per-check lock (no lock of its own), its
/// buckets inline (no allocation of its own).
#[derive(Debug, Clone, Default)]
struct Hist {
    sum: f64,
    count: u64,
    /// Non-cumulative counts per bound of [`BUCKETS`], the last one +Inf.
    counts: [u64; NB],
}

impl Hist {
    fn observe(&mut self, v: f64) {
        self.sum += v;
        self.count += 1;
        let i = BUCKETS
            .iter()
            .position(|le| v <= *le)
            .unwrap_or(BUCKETS.len());
        self.counts[i] += 1;
    }

    /// (upper bound, non-cumulative count), the last at `f64::MAX` (+Inf),
    /// as `prometheus_client`'s encoder expects them.
    fn buckets(&self) -> [(f64, u64); NB] {
        let mut out = [(f64::MAX, 0); NB];
        for (i, o) in out.iter_mut().enumerate() {
            *o = (BUCKETS.get(i).copied().unwrap_or(f64::MAX), self.counts[i]);
        }
        out
    }
}

/// Everything kept for one check.
#[derive(Debug, Default)]
struct CheckSeries {
    regions: BTreeMap<String, Region>,
    /// TLS endpoint (`host:port`) → its certificate's notAfter as sent
    /// and in Unix seconds, last seen.
    certs: BTreeMap<String, (String, i64)>,
    verdict: Option<VerdictKind>,
    region_states: BTreeMap<String, RegionState>,
    /// Open incidents by kind.
    incidents: BTreeMap<&'static str, u64>,
    /// The check's own families ([`CHECK_FAMILIES`]) as last encoded.
    cache: Cache,
}

/// One check × region: its series and their families
/// ([`REGION_FAMILIES`]) as last encoded.
#[derive(Debug, Default)]
struct Region {
    series: RegionSeries,
    cache: Cache,
}

/// The chunk last encoded from some series, and whether they were
/// recorded into since (set by every recording, cleared when a scrape
/// takes a copy to encode).
#[derive(Debug, Default)]
struct Cache {
    chunk: Option<Arc<Chunk>>,
    dirty: bool,
}

impl Cache {
    fn stale(&self) -> bool {
        self.dirty || self.chunk.is_none()
    }
}

/// The sample lines of several families of one check (or check × region),
/// family after family, as `prometheus_client`'s encoder wrote them: the
/// same lines in OpenMetrics and in the classic format.
#[derive(Debug)]
struct Chunk {
    text: String,
    /// Where each family's lines end in `text` (inline: a scrape reads
    /// thousands of chunks).
    ends: [usize; MAX_FAMILIES],
}

/// Families in one chunk, at most.
const MAX_FAMILIES: usize = 5;
const _: () = assert!(CHECK_FAMILIES.len() <= MAX_FAMILIES && REGION_FAMILIES.len() <= MAX_FAMILIES);

impl Chunk {
    /// Encodes `families` (a collector of several families, with or
    /// without help) and keeps their sample lines; `scratch` is reused.
    fn of(families: impl Collector, scratch: &mut String) -> Chunk {
        scratch.clear();
        encode_collector(scratch, families);
        let mut text = String::with_capacity(scratch.len());
        let mut ends = [0; MAX_FAMILIES];
        for (end, samples) in ends.iter_mut().zip(family_samples(scratch)) {
            text.push_str(samples);
            *end = text.len();
        }
        Chunk { text, ends }
    }

    /// The sample lines of the `i`th family.
    fn family(&self, i: usize) -> &str {
        let from = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.text[from..self.ends[i]]
    }
}

/// The sample lines of each family of `exposition` (no `# EOF`), in order:
/// a family is its metadata lines (`# HELP`, `# TYPE`, `# UNIT`), then its
/// samples, none of which starts with `#`.
fn family_samples(exposition: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = exposition;
    while !rest.is_empty() {
        // The family's metadata: its # HELP line and the # lines after it.
        let mut at = 0;
        loop {
            at += rest[at..].find('\n').map_or(rest.len() - at, |i| i + 1);
            if !rest[at..].starts_with('#') || rest[at..].starts_with("# HELP ") {
                break;
            }
        }
        let end = if rest[at..].starts_with('#') {
            at
        } else {
            rest[at..].find("\n#").map_or(rest.len(), |i| at + i + 1)
        };
        out.push(&rest[at..end]);
        rest = &rest[end..];
    }
    out
}

/// Encodes `collector`'s families into `out`, as the registry would.
fn encode_collector(out: &mut String, collector: impl Collector) {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(collector));
    prometheus_client::encoding::text::encode_registry(out, &registry)
        .expect("writing to a String cannot fail");
}

/// Fills the stale places of `chunks` (`None`) with `fresh`, in order.
fn fill(chunks: &mut [Option<Arc<Chunk>>], fresh: Vec<Arc<Chunk>>) {
    let mut fresh = fresh.into_iter();
    for c in chunks.iter_mut().filter(|c| c.is_none()) {
        *c = fresh.next();
    }
}

/// What a scrape took under the lock.
#[derive(Debug, Default)]
struct Taken {
    /// Every live check's chunk in exposition order; `None` where stale.
    checks: Vec<Option<Arc<Chunk>>>,
    /// Every check × region's chunk in exposition order; `None` where stale.
    regions: Vec<Option<Arc<Chunk>>>,
    /// Copies of the stale series, in the same order.
    stale_checks: Vec<Arc<CheckSnap>>,
    stale_regions: Vec<Arc<RegionSnap>>,
    /// Open incidents over all checks, by kind.
    incidents: BTreeMap<&'static str, i64>,
}

/// (name, help, type) of a family.
type Family = (&'static str, &'static str, MetricType);

/// The families encoded per check, in exposition order.
const CHECK_FAMILIES: [Family; 4] = [
    (
        "mailloop_check_verdict",
        "The check's latest round verdict, as a state set: 1 for the current verdict, 0 for the others (unknown until its first round is decided).",
        MetricType::Gauge,
    ),
    (
        "mailloop_check_region_state",
        "Each region's state in the check's latest decided round, as a state set (1 for the current state).",
        MetricType::Gauge,
    ),
    (
        "mailloop_check_incidents_open",
        "Incidents open or acknowledged on the check, by kind (only kinds with one open).",
        MetricType::Gauge,
    ),
    (
        "mailloop_tls_certificate_expiry_timestamp_seconds",
        "When the certificate of the check's TLS endpoint (host:port) expires (notAfter, Unix time), as last seen by a probe; days left: (this - time()) / 86400.",
        MetricType::Gauge,
    ),
];

/// `mailloop_incidents_open` (over all checks) comes before this family of
/// [`CHECK_FAMILIES`].
const INCIDENTS_AT: usize = 2;

/// The families encoded per check × region, in exposition order (after
/// [`CHECK_FAMILIES`]).
const REGION_FAMILIES: [Family; 5] = [
    (
        "mailloop_probes",
        "Probe reports stored, by outcome (ok, degraded, failed) and failure class (none when it did not fail).",
        MetricType::Counter,
    ),
    (
        "mailloop_auth_results",
        "Authentication-Results verdicts of delivered probes, by method (spf, dkim, dmarc) and result (pass, fail, ..., missing).",
        MetricType::Counter,
    ),
    (
        "mailloop_step_duration_seconds",
        "Duration of each protocol step of the probes (smtp.connect ... imap.logout), by check, region and step.",
        MetricType::Histogram,
    ),
    (
        "mailloop_round_trip_seconds",
        "Round-trip time of delivered probes: submission start to the probe found over IMAP.",
        MetricType::Histogram,
    ),
    (
        "mailloop_delivery_seconds",
        "Delivery time of delivered probes: end of DATA accepted to the probe found over IMAP.",
        MetricType::Histogram,
    ),
];

/// The `# HELP` and `# TYPE` lines of [`CHECK_FAMILIES`] then
/// [`REGION_FAMILIES`], encoded once, in both formats.
#[derive(Debug, Default)]
struct Headers {
    openmetrics: Vec<String>,
    classic: Vec<String>,
}

impl Headers {
    fn new() -> Headers {
        let mut text = String::new();
        encode_collector(&mut text, Descriptors);
        let mut openmetrics: Vec<String> = Vec::new();
        for line in text.split_inclusive('\n') {
            match openmetrics.last_mut() {
                Some(h) if !line.starts_with("# HELP ") => h.push_str(line),
                _ => openmetrics.push(line.to_string()),
            }
        }
        let classic = openmetrics.iter().map(|h| classic(h)).collect();
        Headers {
            openmetrics,
            classic,
        }
    }
}

/// The per-check families' descriptors, without samples.
#[derive(Debug)]
struct Descriptors;

impl Collector for Descriptors {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, kind) in CHECK_FAMILIES.iter().chain(&REGION_FAMILIES) {
            enc.encode_descriptor(name, help, None, *kind)?;
        }
        Ok(())
    }
}

/// A copy of one check's own series, encoded outside the lock.
#[derive(Debug)]
struct CheckSnap {
    id: String,
    verdict: VerdictKind,
    region_states: Vec<(String, RegionState)>,
    incidents: Vec<(&'static str, u64)>,
    certs: Vec<(String, i64)>,
}

impl CheckSnap {
    fn of(id: &str, c: &CheckSeries) -> CheckSnap {
        CheckSnap {
            id: id.to_string(),
            // No verdict yet reads as unknown: every check has its state set.
            verdict: c.verdict.unwrap_or(VerdictKind::Unknown),
            region_states: c
                .region_states
                .iter()
                .map(|(r, s)| (r.clone(), *s))
                .collect(),
            incidents: c.incidents.iter().map(|(k, n)| (*k, *n)).collect(),
            certs: c.certs.iter().map(|(e, (_, at))| (e.clone(), *at)).collect(),
        }
    }
}

/// The families of [`CHECK_FAMILIES`] with this check's samples (no help:
/// the chunk keeps the samples only).
impl Collector for CheckSnap {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let id = self.id.as_str();
        let [verdict, region_state, incidents, certs] = CHECK_FAMILIES.map(|(name, ..)| name);
        gauge(
            &mut enc,
            verdict,
            "",
            VERDICTS.iter().map(|v| {
                (
                    [("check", id), ("verdict", verdict_str(*v))],
                    i64::from(*v == self.verdict),
                )
            }),
        )?;
        gauge(
            &mut enc,
            region_state,
            "",
            self.region_states.iter().flat_map(|(region, state)| {
                REGION_STATES.iter().map(move |(s, name)| {
                    (
                        [("check", id), ("region", region.as_str()), ("state", *name)],
                        i64::from(s == state),
                    )
                })
            }),
        )?;
        gauge(
            &mut enc,
            incidents,
            "",
            self.incidents
                .iter()
                .map(|(k, n)| ([("check", id), ("kind", *k)], *n as i64)),
        )?;
        gauge(
            &mut enc,
            certs,
            "",
            self.certs
                .iter()
                .map(|(e, at)| ([("check", id), ("endpoint", e.as_str())], *at)),
        )
    }
}

/// A copy of one check × region's series, encoded outside the lock.
#[derive(Debug)]
struct RegionSnap {
    check: String,
    region: String,
    series: RegionSeries,
}

/// The families of [`REGION_FAMILIES`] with this check × region's samples.
impl Collector for RegionSnap {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (id, region, r) = (self.check.as_str(), self.region.as_str(), &self.series);
        let [probes, auth, steps, rtt, delivery] = REGION_FAMILIES.map(|(name, ..)| name);
        counter(
            &mut enc,
            probes,
            "",
            r.probes.iter().map(|((outcome, class), n)| {
                (
                    [
                        ("check", id),
                        ("region", region),
                        ("outcome", *outcome),
                        ("class", *class),
                    ],
                    *n,
                )
            }),
        )?;
        counter(
            &mut enc,
            auth,
            "",
            r.auth.iter().map(|((method, result), n)| {
                (
                    [
                        ("check", id),
                        ("region", region),
                        ("method", *method),
                        ("result", *result),
                    ],
                    *n,
                )
            }),
        )?;
        histogram(
            &mut enc,
            steps,
            "",
            r.steps()
                .map(|(step, h)| ([("check", id), ("region", region), ("step", step.as_str())], h)),
        )?;
        histogram(
            &mut enc,
            rtt,
            "",
            (r.rtt.count > 0)
                .then_some(([("check", id), ("region", region)], &r.rtt))
                .into_iter(),
        )?;
        histogram(
            &mut enc,
            delivery,
            "",
            (r.delivery.count > 0)
                .then_some(([("check", id), ("region", region)], &r.delivery))
                .into_iter(),
        )
    }
}

/// One check × region.
#[derive(Debug, Clone)]
struct RegionSeries {
    /// A step's index in [`StepName::ALL`] → its histogram's place in
    /// `steps` (`NO_STEP`: not recorded).
    slot: [u8; STEP_COUNT],
    /// The histograms of the steps recorded, side by side.
    steps: Vec<(StepName, Hist)>,
    rtt: Hist,
    delivery: Hist,
    /// (outcome, failure class) → probes.
    probes: BTreeMap<(&'static str, &'static str), u64>,
    /// (method, result) → probes.
    auth: BTreeMap<(&'static str, &'static str), u64>,
}

const NO_STEP: u8 = u8::MAX;

impl Default for RegionSeries {
    fn default() -> RegionSeries {
        RegionSeries {
            slot: [NO_STEP; STEP_COUNT],
            steps: Vec::new(),
            rtt: Hist::default(),
            delivery: Hist::default(),
            probes: BTreeMap::new(),
            auth: BTreeMap::new(),
        }
    }
}

impl RegionSeries {
    /// The histogram of `step`, created at its first observation.
    fn step(&mut self, step: StepName) -> &mut Hist {
        let i = step as usize;
        if self.slot[i] == NO_STEP {
            self.slot[i] = self.steps.len() as u8;
            self.steps.push((step, Hist::default()));
        }
        &mut self.steps[usize::from(self.slot[i])].1
    }

    /// The recorded steps' histograms, in protocol order.
    fn steps(&self) -> impl Iterator<Item = (StepName, &Hist)> + '_ {
        self.slot
            .iter()
            .filter(|s| **s != NO_STEP)
            .map(|s| {
                let (name, h) = &self.steps[usize::from(*s)];
                (*name, h)
            })
    }
}

/// The families encoded at scrape time from what the hub, the alert
/// channels and the ingest counters hold then.
#[derive(Debug)]
struct Live {
    /// Region → reports received, committed, rejected, replayed.
    ingest: BTreeMap<String, [u64; 4]>,
    /// Region → agents connected (every region with a registered agent).
    connected: BTreeMap<String, i64>,
    revision: u64,
    checks: usize,
    /// (channel, result, events).
    deliveries: Vec<(String, &'static str, u64)>,
}

impl Collector for Live {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (i, (name, help)) in INGEST.iter().enumerate() {
            counter(
                &mut enc,
                name,
                help,
                self.ingest
                    .iter()
                    .map(|(r, c)| ([("region", r.as_str())], c[i])),
            )?;
        }
        gauge(
            &mut enc,
            "mailloop_agents_connected",
            "Agents with an open assignment stream, by region (every region with a registered agent).",
            self.connected.iter().map(|(r, n)| ([("region", r.as_str())], *n)),
        )?;
        gauge(
            &mut enc,
            "mailloop_assignment_revision",
            "The newest check revision (every change of any check takes one).",
            [([] as [(&str, &str); 0], self.revision as i64)].into_iter(),
        )?;
        gauge(
            &mut enc,
            "mailloop_checks",
            "Checks in force (not deleted).",
            [([] as [(&str, &str); 0], self.checks as i64)].into_iter(),
        )?;
        counter(
            &mut enc,
            "mailloop_alert_deliveries",
            "Alert events per channel: delivered, failed (after its retries, or permanently) or dropped (queue full).",
            self.deliveries
                .iter()
                .map(|(channel, result, n)| ([("channel", channel.as_str()), ("result", *result)], *n)),
        )
    }
}

/// `mailloop_incidents_open`: open incidents over all checks, by kind
/// (every kind of [`INCIDENT_KINDS`], and any other with one open).
#[derive(Debug)]
struct IncidentsOpen(BTreeMap<&'static str, i64>);

impl Collector for IncidentsOpen {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        gauge(
            &mut enc,
            "mailloop_incidents_open",
            "Incidents open or acknowledged (not resolved), by kind, over all checks.",
            self.0.iter().map(|(k, n)| ([("kind", *k)], *n)),
        )
    }
}

fn gauge<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl Iterator<Item = (L, i64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in series {
        ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl Iterator<Item = (L, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in series {
        ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Exemplars' label set (mailloop keeps none).
type NoLabels = [(&'static str, &'static str); 0];

fn histogram<'a, L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl Iterator<Item = (L, &'a Hist)>,
) -> Result<(), std::fmt::Error> {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, h) in series {
        family
            .encode_family(&labels)?
            .encode_histogram::<NoLabels>(h.sum, h.count, &h.buckets(), None)?;
    }
    Ok(())
}

/// The OpenMetrics text as the classic Prometheus text format (0.0.4):
/// counter families are named with their `_total` samples' name, and the
/// `# UNIT` and `# EOF` lines (OpenMetrics only) are left out. Every other
/// line is the encoder's, unchanged.
pub fn classic(openmetrics: &str) -> String {
    // Sample lines are copied in whole runs: only the metadata lines
    // between two families are looked at one by one.
    let mut out = String::with_capacity(openmetrics.len() + 4096);
    let mut rest = openmetrics;
    while !rest.is_empty() {
        let meta = if rest.starts_with('#') {
            0
        } else {
            rest.find("\n#").map_or(rest.len(), |i| i + 1)
        };
        out.push_str(&rest[..meta]);
        rest = &rest[meta..];
        // One family's metadata: # HELP, # TYPE, # UNIT (or the final # EOF).
        let mut end = 0;
        while rest[end..].starts_with('#') {
            end += rest[end..].find('\n').map_or(rest.len() - end, |i| i + 1);
        }
        // Several families in a row when some have no sample yet.
        let lines: Vec<&str> = rest[..end].lines().collect();
        rest = &rest[end..];
        for (i, line) in lines.iter().enumerate() {
            if *line == "# EOF" || line.starts_with("# UNIT ") {
                continue;
            }
            let meta = ["# HELP ", "# TYPE "]
                .into_iter()
                .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
            let name = meta.map_or("", |(_, rest)| rest.split(' ').next().unwrap_or(""));
            // A family's # TYPE line says counter; its # HELP line is just before.
            let type_line = match meta {
                Some(("# HELP ", _)) => lines.get(i + 1).copied().unwrap_or(""),
                _ => line,
            };
            let counter = type_line
                .strip_prefix("# TYPE ")
                .and_then(|t| t.strip_prefix(name))
                == Some(" counter");
            match meta {
                Some((prefix, rest)) if counter => {
                    out.push_str(prefix);
                    out.push_str(name);
                    out.push_str("_total");
                    out.push_str(&rest[name.len()..]);
                }
                _ => out.push_str(line),
            }
            out.push('\n');
        }
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
    fn classic_text_renames_only_the_counters_among_families_without_samples() {
        let om = "# HELP c_x X.\n# TYPE c_x counter\n# HELP g_y Y.\n# TYPE g_y gauge\ng_y 1\n# EOF\n";
        assert_eq!(
            classic(om),
            "# HELP c_x_total X.\n# TYPE c_x_total counter\n# HELP g_y Y.\n# TYPE g_y gauge\ng_y 1\n"
        );
    }

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

    fn report(check: &str) -> ProbeReport {
        let steps: Vec<serde_json::Value> = StepName::ALL
            .iter()
            .enumerate()
            .map(|(i, s)| serde_json::json!({"name": s.as_str(), "ms": 2.0, "ok": true, "start_ms": i as f64}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "probe_id": "p-1", "check": check, "started_at": "2026-01-01T00:00:00Z",
            "outcome": "ok", "rtt_ms": 35.2, "delivery_ms": 20.3, "steps": steps,
            "failure": null, "message_id": "<p-1@sender.test>",
        }))
        .unwrap()
    }

    fn recorded(m: &Metrics, check: &str, region: &str) -> Vec<(StepName, u64)> {
        m.lock()[check].regions[region]
            .series
            .steps()
            .map(|(s, h)| (s, h.count))
            .collect()
    }

    #[test]
    fn only_the_configured_steps_get_a_histogram() {
        let hub = Hub::new(Vec::new(), Vec::new());
        let alerts = Arc::new(Alerts::default());
        let m = Metrics::new(hub.clone(), alerts.clone());
        m.observe("eu", &report("c1"));
        m.observe("eu", &report("c1"));
        let want: Vec<(StepName, u64)> = DEFAULT_STEPS.iter().map(|s| (*s, 2)).collect();
        assert_eq!(recorded(&m, "c1", "eu"), want);
        // In protocol order whatever the arrival order; all when asked.
        let all = Metrics::with_steps(hub.clone(), alerts.clone(), StepSet::all());
        let mut r = report("c1");
        r.steps.reverse();
        all.observe("us", &r);
        let names: Vec<StepName> = recorded(&all, "c1", "us").into_iter().map(|(s, _)| s).collect();
        assert_eq!(names, StepName::ALL);
        let none = Metrics::with_steps(hub, alerts, StepSet::none());
        none.observe("us", &report("c1"));
        assert!(recorded(&none, "c1", "us").is_empty());
        assert_eq!(none.lock()["c1"].regions["us"].series.rtt.count, 1);
    }

    fn stored_check(name: &str, regions: &[&str], deleted: bool) -> crate::storage::StoredCheck {
        crate::storage::StoredCheck {
            spec: crate::config::CheckSpec {
                name: name.into(),
                table: serde_json::json!({}),
                interval: std::time::Duration::from_secs(60),
                regions: regions.iter().map(|r| r.to_string()).collect(),
                quorum: None,
                public: None,
            },
            revision: 1,
            source: crate::storage::Source::Api,
            deleted,
            updated_at_ms: 0,
        }
    }

    /// The value of the sample `series` (name and labels) in `text`.
    fn sample<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
    }

    fn probes(check: &str, region: &str) -> String {
        format!("mailloop_probes_total{{check=\"{check}\",region=\"{region}\",outcome=\"ok\",class=\"none\"}}")
    }

    fn verdict(check: &str, kind: &str, failed: &str) -> Verdict {
        serde_json::from_value(serde_json::json!({
            "check_id": check, "round": 1, "round_start_ms": 0, "decided_at_ms": 0,
            "verdict": kind, "quorum": 1, "note": "",
            "regions": [{"region": failed, "state": "failed", "slow": [], "reasons": []}],
        }))
        .unwrap()
    }

    #[test]
    fn a_scrape_encodes_again_only_what_changed_and_drops_a_deleted_check() {
        let hub = Hub::new(
            vec![
                stored_check("c1", &["eu", "us"], false),
                stored_check("c2", &["eu", "us"], false),
            ],
            Vec::new(),
        );
        let m = Metrics::new(hub.clone(), Arc::new(Alerts::default()));
        for (check, region) in [("c1", "eu"), ("c1", "us"), ("c2", "eu"), ("c2", "us")] {
            m.observe(region, &report(check));
        }
        let first = m.render();
        assert_eq!(sample(&first, &probes("c1", "eu")), Some("1"));
        assert_eq!(m.last_rendered(), 6, "two checks and four check x regions");
        // Nothing recorded: every chunk from the cache, the same exposition.
        assert_eq!(m.render(), first);
        assert_eq!(m.last_rendered(), 0);

        // A new report: its check x region alone is encoded again.
        m.observe("eu", &report("c1"));
        let second = m.render();
        assert_eq!(m.last_rendered(), 1);
        assert_eq!(sample(&second, &probes("c1", "eu")), Some("2"));
        assert_eq!(sample(&second, &probes("c1", "us")), Some("1"));
        let count = "mailloop_step_duration_seconds_count{check=\"c1\",region=\"eu\",step=\"smtp.connect\"}";
        assert_eq!(sample(&second, count), Some("2"));
        assert_eq!(sample(&second, "mailloop_round_trip_seconds_count{check=\"c1\",region=\"eu\"}"), Some("2"));
        // A verdict: the check's own chunk.
        m.judged(&verdict("c2", "down", "us"), &[]);
        let third = m.render();
        assert_eq!(m.last_rendered(), 1);
        assert_eq!(sample(&third, "mailloop_check_verdict{check=\"c2\",verdict=\"down\"}"), Some("1"));
        assert_eq!(sample(&third, "mailloop_check_verdict{check=\"c2\",verdict=\"unknown\"}"), Some("0"));
        assert_eq!(sample(&third, "mailloop_check_verdict{check=\"c1\",verdict=\"unknown\"}"), Some("1"));
        assert_eq!(sample(&third, "mailloop_check_region_state{check=\"c2\",region=\"us\",state=\"failed\"}"), Some("1"));

        // Deleted: its series are gone, from the exposition and the cache.
        hub.put_check(stored_check("c1", &["eu", "us"], true));
        let fourth = m.render();
        assert!(!fourth.contains("\"c1\""), "{fourth}");
        assert!(!m.lock().contains_key("c1"));
        assert_eq!(m.last_rendered(), 0);
        assert_eq!(sample(&fourth, &probes("c2", "eu")), Some("1"));
        // A region taken off a check: its check x region and its state go.
        hub.put_check(stored_check("c2", &["eu"], false));
        let fifth = m.render();
        assert!(!fifth.contains("region=\"us\""), "{fifth}");
        assert_eq!(m.last_rendered(), 1, "the check's own chunk lost a region state");
        assert_eq!(sample(&fifth, &probes("c2", "eu")), Some("1"));
    }

    #[test]
    fn the_classic_text_is_the_openmetrics_text_converted() {
        let hub = Hub::new(vec![stored_check("c1", &["eu", "us"], false)], Vec::new());
        let m = Metrics::new(hub, Arc::new(Alerts::default()));
        m.count("eu", RECEIVED);
        m.observe("eu", &report("c1"));
        m.judged(&verdict("c1", "degraded", "eu"), &[]);
        let om = m.render();
        assert!(om.ends_with("# EOF\n"));
        let (content_type, text) = m.render_for(Some("text/plain"));
        assert_eq!(content_type, CLASSIC);
        assert_eq!(text, classic(&om));
        assert!(text.contains("# TYPE mailloop_probes_total counter\n"));
        let (content_type, text) = m.render_for(Some(OPENMETRICS));
        assert_eq!((content_type, text), (OPENMETRICS, om));
    }

    #[test]
    fn histograms_count_into_the_first_bucket_that_holds_the_value() {
        let mut h = Hist::default();
        h.observe(0.0005);
        h.observe(0.001);
        h.observe(120.0);
        h.observe(f64::NAN);
        let b = h.buckets();
        assert_eq!(b[0], (0.001, 2), "<= 1 ms");
        assert_eq!(*b.last().unwrap(), (f64::MAX, 2), "+Inf");
        assert_eq!(h.count, 4);
    }
}
