//! The plain Rust types that go in and out of [`Storage`](super::Storage):
//! rows, queries, pages and errors. No SQL and no backend type in here.

use crate::config::CheckSpec;
use crate::judge::{AlertEventKind, Incident, IncidentKind, IncidentState, Verdict};
use std::path::PathBuf;

/// What went wrong in storage (our failure, never the mail server's).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot open the database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot create {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("commit failed: {0}")]
    Commit(String),
    #[error("storage is closed (shutting down)")]
    Closed,
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("database: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("storage config: {0}")]
    Config(String),
    #[error(
        "the database schema is version {found}, newer than this coordinator knows ({known}): upgrade the coordinator"
    )]
    NewerSchema { found: i64, known: i64 },
    /// An operation declined with its reason (`migrate-data` into a
    /// non-empty database, a missing source file).
    #[error("{0}")]
    Refused(String),
}

/// Who owns a check or agent: the config file (replaced on reload) or the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Config,
    Api,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::Api => "api",
        }
    }

    pub(crate) fn parse(s: &str) -> Source {
        if s == "config" {
            Source::Config
        } else {
            Source::Api
        }
    }
}

/// A check as stored: its spec, revision and fate.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredCheck {
    pub spec: CheckSpec,
    /// Global, increasing with every change of any check.
    pub revision: u64,
    pub source: Source,
    /// Deleted checks stay, so late reports of theirs can still be judged.
    pub deleted: bool,
    pub updated_at_ms: i64,
}

/// An agent as stored. Only the token's SHA-256 is ever kept.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredAgent {
    pub name: String,
    pub region: String,
    pub token_sha256: String,
    pub source: Source,
    pub revoked: bool,
    pub version: Option<String>,
    pub last_seen_ms: Option<i64>,
    pub connected: bool,
    pub created_at_ms: i64,
    /// After `agents rotate`: the SHA-256 of the token it replaced, which
    /// keeps working until `previous_token_until_ms` (the grace period in
    /// which the running agent picks up the new one over its stream).
    pub previous_token_sha256: Option<String>,
    pub previous_token_until_ms: Option<i64>,
    /// Whether the agent has called with `token_sha256` since it was
    /// issued: a second rotation before that keeps the previous token (the
    /// one the agent still holds) instead of locking the agent out.
    pub token_in_use: bool,
}

/// One probe report row.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportRow {
    pub probe_id: String,
    pub check_id: String,
    pub revision: u64,
    pub region: String,
    pub agent: String,
    pub round: u64,
    pub started_at_ms: i64,
    pub outcome: String,
    pub rtt_ms: Option<f64>,
    pub delivery_ms: Option<f64>,
    pub failure_step: Option<String>,
    pub failure_class: Option<String>,
    /// The full `ProbeReport` JSON as the agent sent it.
    pub report_json: String,
    pub received_at_ms: i64,
    /// The on-demand run this report answers (round 0); None for scheduled rounds.
    pub request_id: Option<String>,
    /// `early` or `late` when the report's round was outside the check's
    /// schedule window of the coordinator's clock at ingest: kept as
    /// evidence, but it never moves `/latest`, a verdict or a baseline.
    pub out_of_window: Option<String>,
}

/// Whether an insert stored a new row or found the probe id already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    New,
    Duplicate,
}

/// A page of results, newest first.
#[derive(Debug, Clone, Default)]
pub struct ResultQuery {
    pub check_id: Option<String>,
    pub region: Option<String>,
    /// Inclusive lower bound on `started_at` (epoch ms).
    pub since_ms: Option<i64>,
    /// Exclusive upper bound on `started_at` (epoch ms).
    pub until_ms: Option<i64>,
    pub limit: u32,
    /// Continue after this (started_at_ms, probe_id), from a previous page.
    pub after: Option<(i64, String)>,
    /// Stop adding rows once their report JSON adds up to this many bytes
    /// (the page then ends early, with a cursor); None: rows only.
    pub max_bytes: Option<usize>,
}

/// Rows and where the next page starts.
#[derive(Debug, Clone)]
pub struct ResultPage {
    pub rows: Vec<ReportRow>,
    pub next: Option<(i64, String)>,
}

/// Database file name inside `data_dir`.
pub const DB_FILE: &str = "coordinator.db";

/// A page of verdicts, newest first.
#[derive(Debug, Clone, Default)]
pub struct VerdictQuery {
    pub check_id: Option<String>,
    /// Inclusive lower bound on the round's start (epoch ms).
    pub since_ms: Option<i64>,
    /// Exclusive upper bound on the round's start (epoch ms).
    pub until_ms: Option<i64>,
    pub limit: u32,
    /// Continue after this (round_start_ms, check_id), from a previous page.
    pub after: Option<(i64, String)>,
}

/// How many rounds of each verdict some checks had, per time bucket: what
/// the public status page's uptime figures and day bars are made of.
#[derive(Debug, Clone)]
pub struct VerdictCountQuery {
    pub check_ids: Vec<String>,
    /// Inclusive lower bound on the round's start (epoch ms).
    pub since_ms: i64,
    /// Bucket width in ms; buckets start at multiples of it since the epoch
    /// (86 400 000: UTC days).
    pub bucket_ms: i64,
}

/// Rounds per verdict kind of some checks per UTC day, read from the day
/// counts kept as verdicts are stored (`verdict_days`): the same numbers
/// as [`VerdictCountQuery`] with day buckets, without counting verdicts.
#[derive(Debug, Clone)]
pub struct DayCountQuery {
    pub check_ids: Vec<String>,
    /// Days from the one holding this instant (epoch ms).
    pub since_ms: i64,
}

/// One UTC day in ms: the bucket of `verdict_days`.
pub const DAY_MS: i64 = 86_400_000;

/// The start of the UTC day holding `ms` (as verdicts are bucketed: by
/// integer division, the same on both backends).
pub fn day_of(ms: i64) -> i64 {
    (ms / DAY_MS) * DAY_MS
}

/// `verdict_days`' count columns, one per verdict kind, in table order.
pub(crate) const DAY_COLUMNS: [(crate::judge::VerdictKind, &str); 6] = {
    use crate::judge::VerdictKind::*;
    [(Up, "up"), (Degraded, "degraded"), (Deferred, "deferred"), (Transit, "transit"), (Down, "down"), (Unknown, "unknown")]
};

/// The `verdict_days` column counting `kind` (a fixed name: safe in SQL text).
pub(crate) fn day_column(kind: crate::judge::VerdictKind) -> &'static str {
    DAY_COLUMNS.iter().find(|(k, _)| *k == kind).map(|(_, c)| *c).expect("every kind has a column")
}

/// Rounds of one check with one verdict in one bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerdictCount {
    pub check_id: String,
    /// The bucket's start (epoch ms, a multiple of the query's `bucket_ms`).
    pub bucket_start_ms: i64,
    pub verdict: crate::judge::VerdictKind,
    pub rounds: u64,
}

/// Verdicts and where the next page starts.
#[derive(Debug, Clone)]
pub struct VerdictPage {
    pub verdicts: Vec<Verdict>,
    pub next: Option<(i64, String)>,
}

/// Which incidents to list (newest first).
#[derive(Debug, Clone, Default)]
pub struct IncidentQuery {
    /// Any of these states (empty: all).
    pub states: Vec<IncidentState>,
    pub kind: Option<IncidentKind>,
    pub check_id: Option<String>,
    pub limit: u32,
    /// Only ids below this (the next, older page); newest first.
    pub before_id: Option<u64>,
    /// Only ids above this (the previous, newer page): these are answered
    /// oldest first, nearest the cursor first.
    pub after_id: Option<u64>,
}

/// Incidents of some checks that were active at some time in a span:
/// what the public page's day bar links to and its history pages list.
#[derive(Debug, Clone)]
pub struct IncidentSpanQuery {
    pub check_ids: Vec<String>,
    /// Opened before this (epoch ms, exclusive)...
    pub until_ms: i64,
    /// ...and not resolved before this (unresolved ones always count).
    pub since_ms: i64,
    /// Also read each one's timeline (one more statement per incident).
    pub timelines: bool,
}

/// What storing one round did.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundStored {
    /// False when the round already had a verdict (nothing was changed).
    pub stored: bool,
    /// Incidents opened or resolved by it, as stored (with ids and timeline).
    pub events: Vec<(AlertEventKind, Incident)>,
}

/// What an acknowledgement found.
#[derive(Debug, Clone, PartialEq)]
pub enum AckOutcome {
    /// It was open and is now acknowledged.
    Acknowledged(Incident),
    /// It was already acknowledged: nothing changed (acks are idempotent).
    AlreadyAcknowledged(Incident),
    /// It is resolved: too late to acknowledge.
    Resolved(Incident),
    NotFound,
}

/// Upper bounds (ms) of the round-trip and delivery-time histograms'
/// buckets; a last bucket takes everything slower. Fixed, so hours can be
/// merged into days.
pub const RTT_BUCKETS_MS: [f64; 11] = [
    25.0, 50.0, 100.0, 250.0, 500.0, 1_000.0, 2_500.0, 5_000.0, 10_000.0, 30_000.0, 60_000.0,
];

/// Length of one aggregate bucket.
pub const HOUR_MS: i64 = 3_600_000;

/// Minimum, sum and maximum of one timing over an hour (reports without it
/// are not counted).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TimingStats {
    pub count: u64,
    pub sum_ms: f64,
    pub min_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

impl TimingStats {
    pub(crate) fn add(&mut self, ms: Option<f64>) {
        let Some(ms) = ms.filter(|m| m.is_finite()) else {
            return;
        };
        self.count += 1;
        self.sum_ms += ms;
        self.min_ms = Some(self.min_ms.map_or(ms, |m| m.min(ms)));
        self.max_ms = Some(self.max_ms.map_or(ms, |m| m.max(ms)));
    }

    /// The mean, when anything was counted.
    pub fn avg_ms(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum_ms / self.count as f64)
    }
}

/// One check in one region over one hour.
#[derive(Debug, Clone, PartialEq)]
pub struct HourAggregate {
    pub check_id: String,
    pub region: String,
    /// Epoch ms of the hour's start (reports are placed by `started_at`).
    pub hour_ms: i64,
    pub ok: u64,
    pub degraded: u64,
    pub failed: u64,
    pub rtt: TimingStats,
    /// Counts per [`RTT_BUCKETS_MS`] bucket, plus one for slower.
    pub rtt_buckets: [u64; RTT_BUCKETS_MS.len() + 1],
    pub delivery: TimingStats,
    /// Delivery times per [`RTT_BUCKETS_MS`] bucket, plus one for slower
    /// (all zero in hours stored before the histogram existed).
    pub delivery_buckets: [u64; RTT_BUCKETS_MS.len() + 1],
}

impl HourAggregate {
    pub(crate) fn empty(check_id: &str, region: &str, hour_ms: i64) -> HourAggregate {
        HourAggregate {
            check_id: check_id.to_string(),
            region: region.to_string(),
            hour_ms,
            ok: 0,
            degraded: 0,
            failed: 0,
            rtt: TimingStats::default(),
            rtt_buckets: [0; RTT_BUCKETS_MS.len() + 1],
            delivery: TimingStats::default(),
            delivery_buckets: [0; RTT_BUCKETS_MS.len() + 1],
        }
    }

    /// Folds one report in.
    pub(crate) fn add(&mut self, outcome: &str, rtt_ms: Option<f64>, delivery_ms: Option<f64>) {
        match outcome {
            "ok" => self.ok += 1,
            "degraded" => self.degraded += 1,
            // `Outcome` has three values; anything else is not a success.
            _ => self.failed += 1,
        }
        count_in(&mut self.rtt_buckets, rtt_ms);
        count_in(&mut self.delivery_buckets, delivery_ms);
        self.rtt.add(rtt_ms);
        self.delivery.add(delivery_ms);
    }

    /// Reports counted in this hour.
    pub fn reports(&self) -> u64 {
        self.ok + self.degraded + self.failed
    }

    /// The `q` quantile (0..=1) of the round trip, estimated from the
    /// histogram the way Prometheus does (linear inside the bucket), and
    /// clamped to the hour's real minimum and maximum. `None` without data.
    pub fn rtt_quantile(&self, q: f64) -> Option<f64> {
        quantile(&self.rtt, &self.rtt_buckets, q)
    }

    /// The `q` quantile of the delivery time, as [`Self::rtt_quantile`];
    /// `None` also for an hour stored before delivery times had a histogram.
    pub fn delivery_quantile(&self, q: f64) -> Option<f64> {
        quantile(&self.delivery, &self.delivery_buckets, q)
    }
}

/// Counts `ms` in its [`RTT_BUCKETS_MS`] bucket.
fn count_in(buckets: &mut [u64; RTT_BUCKETS_MS.len() + 1], ms: Option<f64>) {
    if let Some(ms) = ms.filter(|m| m.is_finite()) {
        let i = RTT_BUCKETS_MS
            .iter()
            .position(|&le| ms <= le)
            .unwrap_or(RTT_BUCKETS_MS.len());
        buckets[i] += 1;
    }
}

/// The `q` quantile of a histogram over [`RTT_BUCKETS_MS`], linear inside
/// its bucket and clamped to the real minimum and maximum of `stats`.
fn quantile(stats: &TimingStats, buckets: &[u64], q: f64) -> Option<f64> {
    let (min, max) = (stats.min_ms?, stats.max_ms?);
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut seen = 0u64;
    for (i, &n) in buckets.iter().enumerate() {
        if n > 0 && (seen + n) as f64 >= rank {
            let lo = if i == 0 {
                min
            } else {
                RTT_BUCKETS_MS[i - 1].max(min)
            };
            let hi = RTT_BUCKETS_MS.get(i).copied().unwrap_or(max).min(max);
            let within = ((rank - seen as f64) / n as f64).clamp(0.0, 1.0);
            return Some((lo + (hi - lo) * within).clamp(min, max));
        }
        seen += n;
    }
    Some(max)
}

/// Which aggregates to read.
#[derive(Debug, Clone, Default)]
pub struct AggregateQuery {
    pub check_id: String,
    pub region: Option<String>,
    /// Hours starting at or after the hour containing this (epoch ms).
    pub since_ms: Option<i64>,
}

/// The hourly aggregates of several checks at once (the public status
/// page's charts: one statement whatever the count).
#[derive(Debug, Clone, Default)]
pub struct AggregateSpanQuery {
    pub check_ids: Vec<String>,
    /// Hours starting at or after the hour containing this (epoch ms).
    pub since_ms: i64,
}

/// The start of the hour containing `ms`.
pub fn hour_of(ms: i64) -> i64 {
    ms.div_euclid(HOUR_MS) * HOUR_MS
}

/// One entry of the audit log: who changed what, from where, when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Assigned on insert (0 before); also the paging cursor.
    pub seq: u64,
    pub at_ms: i64,
    /// The API token's name (`admin`, `grafana`, ...).
    pub actor: String,
    /// Its role.
    pub role: String,
    /// The caller's IP address.
    pub source: Option<String>,
    /// `created`, `changed`, `deleted`, `acknowledged`, `revoked`, `run`.
    pub action: String,
    /// `check`, `agent`, `incident`, `token`.
    pub object: String,
    pub object_id: String,
    /// `revision 3`, `request_id r-...`.
    pub detail: Option<String>,
}

/// A page of the audit log, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub actor: Option<String>,
    pub object: Option<String>,
    pub object_id: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Entries older than this `seq` (the previous page's `next`).
    pub before_seq: Option<u64>,
    pub limit: u32,
}

/// Entries and where the next page starts.
#[derive(Debug, Clone)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    pub next: Option<u64>,
}

/// One attempt to deliver an incident's alert event through a channel:
/// the console's alert delivery log (every try, not only the outcome).
/// Never a secret: no URL (a webhook's path carries its token), no
/// credential; `detail` has the channel's secrets scrubbed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertAttempt {
    /// Assigned on insert (0 before); also the paging cursor.
    pub seq: u64,
    /// When the attempt ended.
    pub at_ms: i64,
    pub channel: String,
    /// `webhook`, `slack`, `pagerduty`, `email`.
    pub channel_type: String,
    pub incident_id: u64,
    pub check_id: String,
    /// The alert event: `opened`, `acknowledged`, `resolved`, ...
    pub event: String,
    /// 1 for the first try.
    pub attempt: u32,
    /// How many tries the channel allows (`retries` + 1).
    pub of: u32,
    /// `delivered`; `retry` (failed, tried again later); `exhausted` (the
    /// last try failed); `permanent` (failed, not worth another try).
    pub result: String,
    /// Why it failed (None when delivered): `http_status`, `smtp_reply`,
    /// `connect`, `tls`, `timeout`, `protocol`, `refused`.
    pub class: Option<String>,
    /// The receiver's HTTP status or SMTP reply code, when it answered one.
    pub code: Option<u16>,
    /// The error in words (may quote the receiver's answer; secrets scrubbed).
    pub detail: Option<String>,
}

/// A page of the alert delivery log, newest first (or, with `after_seq`,
/// the page above the cursor, oldest first).
#[derive(Debug, Clone, Default)]
pub struct AlertAttemptQuery {
    pub channel: Option<String>,
    pub incident_id: Option<u64>,
    /// Attempts older than this `seq` (the next page).
    pub before_seq: Option<u64>,
    /// Attempts newer than this `seq` (the previous page), oldest first.
    pub after_seq: Option<u64>,
    pub limit: u32,
}

/// An API token made through the API (`POST /api/v1/tokens`). Only its
/// SHA-256 is kept; a revoked one stays as a record until its name is reused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    pub name: String,
    /// `read` or `admin`.
    pub role: String,
    pub token_sha256: String,
    pub created_at_ms: i64,
    /// The name of the token that made it.
    pub created_by: String,
    pub revoked_at_ms: Option<i64>,
}

/// One SRE console sign-in, kept in storage so it survives a restart and
/// is honoured by every replica. Only hashes are stored: the SHA-256 of
/// the cookie's value (never the value), and of the token it was made
/// with (the gate honours the session while that very token is in force).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSession {
    /// SHA-256 of the cookie value, hex.
    pub id_sha256: String,
    /// The token's name (who the audit log says acted).
    pub token_name: String,
    /// SHA-256 of the token signed in with, hex (as `api_tokens` keeps it).
    pub token_sha256: String,
    /// `read` or `admin`.
    pub role: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
}

/// This replica's part in the work that must happen once in a cluster
/// (judging rounds, opening incidents, sending alerts, retention), as
/// `/readyz` tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaRole {
    /// Does that work (SQLite: always; PostgreSQL: holds the leader lock).
    Leader,
    /// Another replica leads; this one serves agents and the API.
    Follower,
    /// Cannot reach the database: leads nothing.
    CutOff,
}

impl ReplicaRole {
    pub fn as_str(&self) -> &'static str {
        match self {
            ReplicaRole::Leader => "leader",
            ReplicaRole::Follower => "follower",
            ReplicaRole::CutOff => "cut_off",
        }
    }
}

/// A join token of `mailloopctl agents add`: single use, until `expires_at_ms`.
/// Only its SHA-256 is kept. It is bound to one incarnation of its agent
/// (`agent_token_sha256`, the agent's token hash when the join token was
/// made), so a join token outlives neither an enrollment nor a re-add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub token_sha256: String,
    pub agent: String,
    pub agent_token_sha256: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
}

/// What presenting a join token did (`use_join_token`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinUse {
    /// Never issued (or pruned).
    Unknown,
    /// Already used, at this time.
    Used { agent: String, at_ms: i64 },
    /// Expired at this time (never used).
    Expired { agent: String, at_ms: i64 },
    /// Valid: now marked used. The agent and the token hash it was bound to.
    Granted {
        agent: String,
        agent_token_sha256: String,
    },
}

/// An agent connected to one coordinator replica, as that replica last
/// said (PostgreSQL's `agent_presence`: every replica publishes its own
/// every second and reads the others', so the live agents of a region are
/// the same whichever replica an agent talks to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub agent: String,
    /// The replica's id (random per process).
    pub replica: String,
    /// Its open assignment streams on that replica.
    pub sessions: u32,
    pub last_seen_ms: Option<i64>,
    pub spooled: Option<u64>,
    pub clock_skew_ms: Option<i64>,
}

/// What arrives on the on-demand runs' channel shared by the replicas
/// (PostgreSQL's `mailloop_runs`; `cluster/ondemand.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunNotice {
    /// An order announced by a replica (this one included): its JSON.
    Order(String),
    /// A replica has just started listening and may have missed orders:
    /// announce the fresh ones again.
    Again,
}
