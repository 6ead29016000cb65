//! The judge's data: what it reads (one region's report for one round), what
//! it decides (a [`Verdict`] with per-region evidence) and what it opens and
//! closes ([`Incident`]). Plain data, serialisable as the admin API shows it;
//! no I/O here.

use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One region's report for one round, as the judge reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionReport {
    pub region: String,
    pub agent: String,
    /// The full report as the agent sent it.
    pub report: mailloop_common::ProbeReport,
}

/// How one region did in one round, as far as the verdict is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegionState {
    /// Delivered, every step within its thresholds and expectations.
    Ok,
    /// Delivered, but a static or learned threshold, an authentication or a
    /// certificate expectation is not met.
    Degraded,
    /// A 4xx deferral (greylisting, rate limit) whose streak is still inside
    /// its grace window: not a failure yet.
    Deferred,
    /// Not delivered (including a deferral past its grace window).
    Failed,
    /// No report before the round's deadline.
    Missing,
}

/// Why a step was judged slow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlowStep {
    /// Wire name (`smtp.data_ack`), or `rtt` for the whole round trip.
    pub step: String,
    pub ms: f64,
    pub threshold_ms: f64,
    /// The learned median, when the threshold is a learned one.
    pub baseline_ms: Option<f64>,
    /// `static` (the check's own threshold) or `learned`.
    pub source: String,
}

/// One region's evidence in a verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionEvidence {
    pub region: String,
    pub state: RegionState,
    /// The report behind it (absent when `missing`).
    pub probe_id: Option<String>,
    pub agent: Option<String>,
    /// The report's own outcome (`ok`, `degraded`, `failed`).
    pub outcome: Option<String>,
    /// For a failure or deferral: the step, class, reply code and text.
    pub step: Option<String>,
    pub class: Option<String>,
    pub code: Option<u16>,
    pub enhanced: Option<String>,
    pub text: Option<String>,
    /// Steps over a static or learned threshold.
    pub slow: Vec<SlowStep>,
    /// Other reasons for `degraded` (unmet expectations, certificates).
    pub reasons: Vec<String>,
    pub rtt_ms: Option<f64>,
    /// For a deferral (`deferred`, or `failed` once past the grace window):
    /// the `round_start_ms` of the first round of this region's current
    /// streak of deferrals, so the grace window survives a restart.
    #[serde(default)]
    pub deferred_since_ms: Option<i64>,
    /// The delivered probe's authentication results, kept so drift (a
    /// `pass` that stopped passing) can be judged again after a restart.
    #[serde(default)]
    pub auth: Option<AuthSnapshot>,
    /// The server certificates the probe saw (for certificate warnings).
    #[serde(default)]
    pub certs: Vec<CertSeen>,
    /// Why the region is in its state, in one line a person reads: for
    /// `missing`, since when nothing came and what the region's agents were
    /// doing (`no report from us-east since 14:05 UTC (agent us-1
    /// disconnected 14:04 UTC)`); for a failure or deferral, the step, reply
    /// and class; for `degraded`, its reasons; null for `ok`.
    #[serde(default)]
    pub detail: Option<String>,
    /// Agents of the region connected when the round was decided (null:
    /// not known, e.g. a verdict from before this was recorded).
    #[serde(default)]
    pub agents_connected: Option<u32>,
    /// The reporting agent's clock minus the coordinator's, in ms, as last
    /// measured (null: not measured).
    #[serde(default)]
    pub clock_skew_ms: Option<i64>,
    /// Where the delivered probe was found: `inbox` or `junk` (null: not
    /// found, or an agent that does not report it).
    #[serde(default)]
    pub placement: Option<String>,
    /// The junk folder's name, for a `junk` placement.
    #[serde(default)]
    pub placement_folder: Option<String>,
    /// The receiver's spam verdict on the probe (at most
    /// [`EVIDENCE_RULES`] rule names kept), the placement incident's evidence.
    #[serde(default)]
    pub spam: Option<mailloop_common::spam::SpamReport>,
    /// The blocklist lookups of the sending path (null: none configured).
    #[serde(default)]
    pub reputation: Option<mailloop_common::reputation::ReputationReport>,
}

/// Most spam rule names a region's evidence keeps.
pub const EVIDENCE_RULES: usize = 10;

/// What the coordinator knows about one agent of a region when it decides
/// a round: the judge's window on the agents (it has no clock of its own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSeen {
    pub name: String,
    /// Has an open assignment stream now.
    pub connected: bool,
    /// Last Register, Heartbeat or stream start (epoch ms).
    pub last_seen_ms: Option<i64>,
    /// When its last session closed (epoch ms), if it is disconnected.
    pub disconnected_at_ms: Option<i64>,
    /// Its clock minus the coordinator's (ms), from the timestamp it sends
    /// with Register and Heartbeat; None for an agent that sends none.
    pub clock_skew_ms: Option<i64>,
}

/// The part of a delivered probe's [`mailloop_common::AuthReport`] that
/// authentication drift is judged on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthSnapshot {
    /// The receiver's verdicts as written (`pass`, `fail`, `softfail`, ...).
    pub spf: Option<String>,
    pub dkim: Option<String>,
    pub dmarc: Option<String>,
    pub dkim_alignment: mailloop_common::alignment::Alignment,
    pub spf_alignment: mailloop_common::alignment::Alignment,
}

/// One server certificate a probe saw, as the certificate rules need it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertSeen {
    /// `smtp` or `imap`.
    pub protocol: String,
    /// `host:port` as configured.
    pub endpoint: String,
    pub subject: String,
    /// RFC 3339.
    pub not_after: String,
    pub days_left: i64,
}

impl CertSeen {
    /// The certificate incident's key: endpoint, subject and expiry, so a
    /// renewed certificate on the same endpoint is a different one.
    pub fn key(&self) -> String {
        format!("{}|{}|{}", self.endpoint, self.subject, self.not_after)
    }
}

/// The round verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictKind {
    Up,
    Degraded,
    Deferred,
    Transit,
    Down,
    Unknown,
}

impl VerdictKind {
    pub fn as_str(self) -> &'static str {
        match self {
            VerdictKind::Up => "up",
            VerdictKind::Degraded => "degraded",
            VerdictKind::Deferred => "deferred",
            VerdictKind::Transit => "transit",
            VerdictKind::Down => "down",
            VerdictKind::Unknown => "unknown",
        }
    }
}

/// What the coordinator decided for one check and one round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub check_id: String,
    pub round: u64,
    pub round_start_ms: i64,
    pub decided_at_ms: i64,
    pub verdict: VerdictKind,
    /// Regions that must fail for `down`.
    pub quorum: u32,
    /// Every region of the check, sorted by name.
    pub regions: Vec<RegionEvidence>,
    /// One line a person reads: which regions, which step, why.
    pub note: String,
}

/// How many regions must fail for `down`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quorum {
    /// More than half of the check's regions (the default).
    Majority,
    /// At least this many regions.
    Count(u32),
    /// At least this fraction of the regions (0 < f <= 1), rounded up.
    Fraction(f64),
}

/// The rules a check is judged by (`[incidents]`, `[baselines]` and the
/// check's own `quorum`).
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub quorum: Quorum,
    /// `down` rounds in a row that open an outage.
    pub confirm_rounds: u32,
    /// `transit` rounds in a row, same region, that open a regional incident.
    pub transit_rounds: u32,
    /// `degraded` rounds in a row that open a performance incident.
    pub degraded_rounds: u32,
    /// Good rounds in a row that resolve an incident.
    pub resolve_rounds: u32,
    /// How long a streak of deferrals counts as `deferred` before it is a failure.
    pub defer_grace: Duration,
    /// A certificate with fewer days left opens a certificate warning.
    pub cert_min_days: u32,
    pub baselines: BaselineSettings,
    /// Coverage: rounds in a row a region has no report before a coverage
    /// incident opens (at once when the region has no connected agent).
    pub coverage_rounds: u32,
    pub coverage_severity: Severity,
    /// Clock: an agent whose clock is off by more than this opens a clock incident.
    pub clock_skew_max: Duration,
    pub clock_severity: Severity,
    /// Rounds in a row with a region's probe in a junk folder that open a
    /// placement incident.
    pub placement_rounds: u32,
}

/// Learned baselines: robust rolling median and MAD per check × region × step.
#[derive(Debug, Clone, PartialEq)]
pub struct BaselineSettings {
    /// Samples kept (the newest; older ones fall out, so a real shift is absorbed).
    pub window: usize,
    /// Samples needed before the learned threshold is used.
    pub min_samples: usize,
    /// A step is slow above `max(median * factor, median + 6 * MAD)`, and
    /// never below `median + floor_ms` (so 1 ms steps do not alarm on 3 ms).
    pub factor: f64,
    pub floor_ms: f64,
}

/// One step's learned baseline, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineView {
    pub region: String,
    /// Wire name, or `rtt`.
    pub step: String,
    pub samples: usize,
    pub median_ms: Option<f64>,
    pub mad_ms: Option<f64>,
    /// The learned threshold, once `samples >= min_samples`.
    pub threshold_ms: Option<f64>,
    /// The check's own static threshold for this step, if any.
    pub static_threshold_ms: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentKind {
    Outage,
    Regional,
    Performance,
    Authentication,
    Certificate,
    /// The monitor is blind in a region: no live agent, or no report for
    /// `coverage_rounds` rounds.
    Coverage,
    /// An agent's clock is off by more than `clock_skew`.
    Clock,
    /// The probe lands in a junk folder (in some regions or all).
    Placement,
    /// The sending path's address or domain is on a blocklist.
    Reputation,
}

impl IncidentKind {
    /// Every kind, in the order the API and docs list them.
    pub const ALL: [IncidentKind; 9] = [
        IncidentKind::Outage,
        IncidentKind::Regional,
        IncidentKind::Performance,
        IncidentKind::Authentication,
        IncidentKind::Certificate,
        IncidentKind::Coverage,
        IncidentKind::Clock,
        IncidentKind::Placement,
        IncidentKind::Reputation,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            IncidentKind::Outage => "outage",
            IncidentKind::Regional => "regional",
            IncidentKind::Performance => "performance",
            IncidentKind::Authentication => "authentication",
            IncidentKind::Certificate => "certificate",
            IncidentKind::Coverage => "coverage",
            IncidentKind::Clock => "clock",
            IncidentKind::Placement => "placement",
            IncidentKind::Reputation => "reputation",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Pages: mail is not delivered (outage).
    Critical,
    /// Someone should look today (authentication drift, performance, regional transit).
    Warning,
    /// Heads-up (certificate expiry ahead).
    Info,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentState {
    Open,
    Acknowledged,
    Resolved,
}

/// One line of an incident's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub at_ms: i64,
    pub round: Option<u64>,
    /// `opened`, `round` (a round that kept it open or counted toward
    /// resolving it), `acknowledged`, `resolved`, or [`PUBLIC_NOTE`].
    pub event: String,
    pub verdict: Option<VerdictKind>,
    pub note: String,
}

/// The timeline event of an operator's note for the public (the only
/// entry whose `note` the public status page shows).
pub const PUBLIC_NOTE: &str = "public_note";

/// An incident. Only one is open (or acknowledged) per check, kind and key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// Assigned by storage; 0 until stored.
    pub id: u64,
    pub check_id: String,
    pub kind: IncidentKind,
    pub severity: Severity,
    pub state: IncidentState,
    /// Tells incidents of one check and kind apart: empty for most kinds;
    /// the certificate's endpoint, subject and expiry for certificate warnings.
    pub key: String,
    pub regions: Vec<String>,
    pub step: Option<String>,
    pub class: Option<String>,
    pub opened_at_ms: i64,
    pub first_round: u64,
    pub last_round: u64,
    pub acknowledged_at_ms: Option<i64>,
    pub acknowledged_by: Option<String>,
    pub resolved_at_ms: Option<i64>,
    /// Deterministic text from the evidence: what, where, since when, how
    /// it differs from the baseline, likely cause, what to check first.
    pub summary: String,
    pub timeline: Vec<TimelineEntry>,
}

/// What judging a round did to incidents. Incidents are named by
/// (check, kind, key): at most one is open for each.
#[derive(Debug, Clone, PartialEq)]
pub enum IncidentChange {
    /// A new incident (id 0: storage assigns one).
    Open(Incident),
    /// An open incident gained a timeline entry (and maybe a new summary,
    /// regions, last_round).
    Update {
        kind: IncidentKind,
        key: String,
        entry: TimelineEntry,
        summary: Option<String>,
        regions: Option<Vec<String>>,
        last_round: u64,
    },
    /// An open incident is resolved.
    Resolve {
        kind: IncidentKind,
        key: String,
        entry: TimelineEntry,
    },
}

/// What alert channels are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertEventKind {
    Opened,
    Acknowledged,
    Resolved,
}

impl AlertEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertEventKind::Opened => "opened",
            AlertEventKind::Acknowledged => "acknowledged",
            AlertEventKind::Resolved => "resolved",
        }
    }
}

/// One notification: an incident (as stored, with its id) and what happened to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertEvent {
    pub event: AlertEventKind,
    pub at_ms: i64,
    pub incident: Incident,
    /// The W3C `traceparent` of the verdict span that raised it (when the
    /// coordinator traces): its delivery spans are children of it.
    #[serde(skip)]
    pub traceparent: Option<String>,
    /// Its delivery record, when the transition was stored with one
    /// (PostgreSQL): marked delivered once every channel it is routed to
    /// has settled it, so a new leader sends only what was not.
    #[serde(skip)]
    pub intent: Option<Intent>,
}

/// A transition's delivery record (PostgreSQL's `alert_outbox` row, written
/// in the transaction that stored the transition), settled by the alert
/// sender: `mark` runs once, when
/// every channel the event was routed to has settled it (delivered, or
/// given up after its retries). An event dropped undelivered (shutdown, a
/// full queue, a removed channel) or a process killed leaves the row
/// undelivered, and the next leader sends it.
#[derive(Clone)]
pub struct Intent(Arc<IntentInner>);

struct IntentInner {
    pending: std::sync::atomic::AtomicUsize,
    mark: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl Intent {
    pub fn new(mark: impl FnOnce() + Send + 'static) -> Intent {
        Intent(Arc::new(IntentInner {
            pending: std::sync::atomic::AtomicUsize::new(0),
            mark: Mutex::new(Some(Box::new(mark))),
        }))
    }

    /// Routed to `n` channels (0: settled at once).
    pub(crate) fn expect(&self, n: usize) {
        self.0.pending.store(n, std::sync::atomic::Ordering::SeqCst);
        if n == 0 {
            self.fire();
        }
    }

    /// One channel is done with it.
    pub(crate) fn settled(&self) {
        if self.0.pending.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            self.fire();
        }
    }

    fn fire(&self) {
        let mark = self.0.mark.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mark) = mark {
            mark();
        }
    }
}

impl std::fmt::Debug for Intent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Intent")
    }
}

impl PartialEq for Intent {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
