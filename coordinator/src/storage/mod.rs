//! Storage: every byte the coordinator keeps goes through [`Storage`].
//!
//! Two backends stand behind it: SQLite (`sqlite/`, the embedded default:
//! one file, one writer thread, WAL) and PostgreSQL (`postgres/`, for
//! several coordinator replicas sharing one database). Plain Rust types go
//! in and out ([`model`]); no SQL and no driver type crosses this door.
//! [`Storage`] is a struct over a private enum of the two, and every
//! operation is declared once below ([`storage_api!`]) and dispatched by a
//! `match`: an enum, not a trait object, because the operations are async
//! (a `dyn` trait would box every future) and there are exactly two
//! backends, both in this crate; the compiler then checks that each
//! operation exists on both, with one signature.
//!
//! The contract both keep: an acknowledgement means committed, a replayed
//! report (same probe id) is stored once, a round's verdict and its
//! incident changes commit together, and the schema is versioned, migrated
//! at start, and refused when newer than this build knows.
//!
//! One file per thing stored inside each backend's folder: reports,
//! checks, agents, verdicts, incidents, aggregates, the audit log, API
//! tokens, and the schema's migrations.

mod model;
mod postgres;
pub mod settings;
mod sqlite;
pub mod transfer;

pub use model::*;
pub use settings::{PgSettings, StorageSettings};

use crate::judge::{Incident, IncidentChange, Verdict};
use std::collections::HashMap;
use std::path::Path;
use tokio::sync::{oneshot, watch};

/// Most reports committed in one transaction (either backend).
pub const MAX_BATCH: usize = sqlite::MAX_BATCH;

/// The coordinator's storage. Cheap to share behind an `Arc`.
pub struct Storage(Backend);

enum Backend {
    Sqlite(sqlite::Sqlite),
    // Boxed: its connection settings make it several times SQLite's size.
    Postgres(Box<postgres::Postgres>),
}

impl Storage {
    /// Opens (creating if needed) `data_dir/coordinator.db`: the SQLite backend.
    pub fn open(data_dir: &Path) -> Result<Storage, StorageError> {
        Ok(Storage(Backend::Sqlite(sqlite::Sqlite::open(data_dir)?)))
    }

    /// Opens the configured backend, migrating its schema (or refusing a
    /// newer one).
    pub async fn connect(settings: &StorageSettings) -> Result<Storage, StorageError> {
        match settings {
            StorageSettings::Sqlite { data_dir } => Storage::open(data_dir),
            StorageSettings::Postgres(pg) => Ok(Storage(Backend::Postgres(Box::new(postgres::Postgres::connect(pg).await?)))),
        }
    }

    /// Where the data is, for logs: a file path or `postgres://user@host/db`
    /// (never a password).
    pub fn describe(&self) -> String {
        match &self.0 {
            Backend::Sqlite(db) => db.path().display().to_string(),
            Backend::Postgres(db) => db.describe(),
        }
    }

    /// The schema version this build writes, per backend (`migrate` prints it).
    pub fn schema_version(&self) -> i64 {
        match &self.0 {
            Backend::Sqlite(_) => sqlite::schema_version(),
            Backend::Postgres(_) => postgres::migrations::latest() as i64,
        }
    }

    /// Campaigns for the leadership of the replicas sharing this database
    /// until `stop` resolves; the receiver follows this replica's
    /// [`ReplicaRole`]. SQLite has one coordinator: it always leads.
    /// PostgreSQL: a session-level advisory lock on a dedicated connection
    /// (`postgres/leader.rs`); a follower asks again every few seconds and
    /// takes over when the leader's connection closes.
    pub fn campaign(&self, stop: impl Future<Output = ()> + Send + 'static) -> watch::Receiver<ReplicaRole> {
        match &self.0 {
            Backend::Sqlite(_) => {
                let (tx, rx) = watch::channel(ReplicaRole::Leader);
                tokio::spawn(async move {
                    stop.await;
                    drop(tx);
                });
                rx
            }
            Backend::Postgres(db) => db.campaign(stop),
        }
    }

    /// Follows changes of checks, agents and API tokens made by any
    /// replica until `stop` resolves: the `Notify` fires as each commits
    /// (PostgreSQL LISTEN/NOTIFY, on a dedicated connection). None on
    /// SQLite: one process, nobody else changes anything.
    pub fn listen_changes(&self, stop: impl Future<Output = ()> + Send + 'static) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        match &self.0 {
            Backend::Sqlite(_) => None,
            Backend::Postgres(db) => Some(db.listen_changes(stop)),
        }
    }

    /// Announces an on-demand run order (its JSON) to every replica
    /// (`NOTIFY mailloop_runs`, this one included). SQLite: nobody to tell.
    pub async fn announce_run(&self, payload: String) -> Result<(), StorageError> {
        match &self.0 {
            Backend::Sqlite(_) => Ok(()),
            Backend::Postgres(db) => db.announce_run(payload).await,
        }
    }

    /// The run orders announced by any replica, as they arrive (while
    /// [`Storage::listen_changes`] listens), and the requests of replicas
    /// that have just started listening to announce them again. None on
    /// SQLite.
    pub fn run_notices(&self) -> Option<tokio::sync::broadcast::Receiver<RunNotice>> {
        match &self.0 {
            Backend::Sqlite(_) => None,
            Backend::Postgres(db) => Some(db.run_notices()),
        }
    }

    /// Whether other coordinator replicas may share this storage
    /// (PostgreSQL); SQLite belongs to one process.
    pub fn shared(&self) -> bool {
        matches!(self.0, Backend::Postgres(_))
    }

    /// Publishes which agents are connected to replica `replica` now (its
    /// heartbeat: the rows it no longer lists go). SQLite: nothing to tell.
    pub async fn publish_presence(&self, replica: &str, live: Vec<Presence>) -> Result<(), StorageError> {
        match &self.0 {
            Backend::Sqlite(_) => Ok(()),
            Backend::Postgres(db) => db.publish_presence(replica, live).await,
        }
    }

    /// The agents every replica said were connected within `fresh` (by the
    /// database's clock, so replicas' clocks need not agree). SQLite: none
    /// but this process's own, which it knows already.
    pub async fn presence(&self, fresh: std::time::Duration) -> Result<Vec<Presence>, StorageError> {
        match &self.0 {
            Backend::Sqlite(_) => Ok(Vec::new()),
            Backend::Postgres(db) => db.presence(fresh).await,
        }
    }

    /// Marks a transition's alert delivered (every channel settled it).
    /// SQLite keeps no delivery record: one process, nobody to hand over to.
    pub async fn alert_delivered(&self, incident_id: u64, event: crate::judge::AlertEventKind) -> Result<(), StorageError> {
        match &self.0 {
            Backend::Sqlite(_) => Ok(()),
            Backend::Postgres(db) => db.alert_delivered(incident_id, event).await,
        }
    }

    /// The transitions whose alerts were recorded and never marked
    /// delivered (a leader died or stopped first), oldest first, as
    /// (event, its time, the incident as it was then).
    pub async fn undelivered_alerts(&self) -> Result<Vec<(crate::judge::AlertEventKind, i64, Incident)>, StorageError> {
        match &self.0 {
            Backend::Sqlite(_) => Ok(Vec::new()),
            Backend::Postgres(db) => db.undelivered_alerts().await,
        }
    }

    /// Lets the writers commit everything already queued, then stops them.
    /// Later writes fail with [`StorageError::Closed`].
    pub async fn close(&self) {
        match &self.0 {
            Backend::Sqlite(db) => db.close().await,
            Backend::Postgres(db) => db.close().await,
        }
    }
}

/// Declares each operation once: a method of [`Storage`] that runs the
/// backend's method of the same name and signature.
macro_rules! storage_api {
    ($( $(#[$doc:meta])* fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty; )*) => {
        impl Storage {
            $(
                $(#[$doc])*
                pub async fn $name(&self $(, $arg: $ty)*) -> Result<$ret, StorageError> {
                    match &self.0 {
                        Backend::Sqlite(db) => db.$name($($arg),*).await,
                        Backend::Postgres(db) => db.$name($($arg),*).await,
                    }
                }
            )*
        }
    };
}

storage_api! {
    // Reports.
    /// Queues one report; the returned receiver answers after the commit.
    /// Awaiting this only waits for room in the queue, so a caller can keep
    /// many reports in flight and acknowledge each as its answer arrives.
    fn submit_report(&self, row: ReportRow) -> oneshot::Receiver<Result<Inserted, StorageError>>;
    /// Stores one report and waits until it is durable (a replay: `Duplicate`).
    fn insert_report(&self, row: ReportRow) -> Inserted;
    /// Results, newest first, filtered and paged.
    fn query_results(&self, q: ResultQuery) -> ResultPage;
    /// The highest round with any report of `check_id`, and its reports.
    fn latest_round(&self, check_id: String) -> Option<(u64, Vec<ReportRow>)>;
    /// Number of stored reports.
    fn count_reports(&self) -> u64;
    /// Deletes reports received before `cutoff_ms`, in small transactions.
    fn prune(&self, cutoff_ms: i64) -> usize;
    /// The reports of one on-demand run, by region.
    fn results_of_request(&self, request_id: String) -> Vec<ReportRow>;
    /// The newest on-demand run of a check with a stored report, and its reports.
    fn latest_run(&self, check_id: String) -> Option<(String, Vec<ReportRow>)>;
    /// The reports of one round of a check, in the order they were received.
    fn round_reports(&self, check_id: String, round: u64) -> Vec<ReportRow>;
    /// A region's latest delivered reports of a check, oldest first.
    fn recent_delivered(&self, check_id: String, region: String, limit: u32) -> Vec<ReportRow>;

    // Checks and agents.
    /// Inserts or replaces a check.
    fn put_check(&self, c: StoredCheck) -> ();
    /// Every check ever stored, deleted ones included.
    fn load_checks(&self) -> Vec<StoredCheck>;
    /// Inserts or replaces an agent (its name, region, token hash, source, revocation).
    fn put_agent(&self, a: StoredAgent) -> ();
    /// Records that an agent was seen (and, when given, its version and connection state).
    fn touch_agent(&self, name: String, at_ms: i64, version: Option<String>, connected: Option<bool>) -> ();
    /// Records that the agent called with its current token `token_sha256`
    /// (nothing if the token changed meanwhile).
    fn confirm_agent_token(&self, name: String, token_sha256: String) -> ();
    /// Replaces a rotated agent's undelivered token `expected` by `new`, in
    /// one atomic step; false (nothing written) if the row changed meanwhile.
    fn replace_agent_token(&self, name: String, expected: String, new: String) -> bool;
    /// At start nobody is connected yet.
    fn reset_connections(&self) -> ();
    /// Every agent, revoked ones included.
    fn load_agents(&self) -> Vec<StoredAgent>;
    /// Stores a new join token (its SHA-256).
    fn put_join_token(&self, t: JoinToken) -> ();
    /// Marks a join token used if it is unused and unexpired at `at_ms`, in
    /// one atomic step (two concurrent enrollments: one wins); says why not.
    fn use_join_token(&self, token_sha256: String, at_ms: i64) -> JoinUse;

    // Verdicts and incidents.
    /// Stores a round's verdict and what it did to incidents in one
    /// transaction; a round that already has a verdict is left as it was.
    fn store_round(&self, verdict: Verdict, changes: Vec<IncidentChange>) -> RoundStored;
    /// Verdicts, newest round first, filtered and paged.
    fn query_verdicts(&self, q: VerdictQuery) -> VerdictPage;
    /// The last `n` verdicts of a check, oldest first.
    fn recent_verdicts(&self, check_id: String, n: u32) -> Vec<Verdict>;
    /// The latest verdict of each of `check_ids` and every active incident.
    fn status_snapshot(&self, check_ids: Vec<String>) -> (HashMap<String, Verdict>, Vec<Incident>);
    /// Rounds per verdict of each of `q.check_ids`, bucketed by round start
    /// (the public status page's uptime; one statement whatever the count).
    fn verdict_counts(&self, q: VerdictCountQuery) -> Vec<VerdictCount>;
    /// Rounds per verdict of each of `q.check_ids` per UTC day, from the
    /// day counts kept with the verdicts (`verdict_days`): what
    /// `verdict_counts` with day buckets answers, without counting rows.
    fn verdict_day_counts(&self, q: DayCountQuery) -> Vec<VerdictCount>;
    /// Deletes verdicts decided before `cutoff_ms` (and the day counts of
    /// days that ended by then).
    fn prune_verdicts(&self, cutoff_ms: i64) -> usize;
    /// Incidents, newest first (without their timelines); with
    /// `q.after_id`, the ones above it, oldest first (a page back).
    fn list_incidents(&self, q: IncidentQuery) -> Vec<Incident>;
    /// One incident with its timeline.
    fn incident(&self, id: u64) -> Option<Incident>;
    /// The incidents of `ids` with their timelines, in the order of `ids`
    /// (unknown ids left out): a fixed number of statements however many.
    fn incidents_by_id(&self, ids: Vec<u64>) -> Vec<Incident>;
    /// The incidents of a check still open or acknowledged, with timelines.
    fn active_incidents(&self, check_id: String) -> Vec<Incident>;
    /// Resolves every active incident of a deleted check, in one transaction.
    fn resolve_incidents_of(&self, check_id: String, at_ms: i64, note: String) -> Vec<Incident>;
    /// The checks that have open or acknowledged incidents.
    fn checks_with_active_incidents(&self) -> Vec<String>;
    /// Incidents of `q.check_ids` active at some time in the span, oldest
    /// opened first (ties by id).
    fn incidents_in_span(&self, q: IncidentSpanQuery) -> Vec<Incident>;
    /// Appends an operator's public note to an incident's timeline (event
    /// `public_note`, shown on the status page; who wrote it goes to the
    /// audit log); None: no such incident.
    fn add_incident_note(&self, id: u64, note: String, at_ms: i64) -> Option<Incident>;
    /// Acknowledges an open incident (idempotent; a resolved one is refused).
    fn acknowledge(&self, id: u64, by: Option<String>, at_ms: i64) -> AckOutcome;

    // Aggregates, audit, tokens.
    /// Hourly aggregates of one check, oldest hour first (then by region).
    fn aggregates(&self, q: AggregateQuery) -> Vec<HourAggregate>;
    /// Hourly aggregates of several checks since an hour, by check, region
    /// and hour.
    fn aggregates_of(&self, q: AggregateSpanQuery) -> Vec<HourAggregate>;
    /// Deletes the aggregates of hours that ended before `cutoff_ms`.
    fn prune_aggregates(&self, cutoff_ms: i64) -> usize;
    /// Appends one audit entry; answers once it is committed.
    fn append_audit(&self, e: AuditEntry) -> u64;
    /// The audit log, newest first, filtered and paged.
    fn query_audit(&self, q: AuditQuery) -> AuditPage;
    /// Deletes audit entries older than `cutoff_ms`.
    fn prune_audit(&self, cutoff_ms: i64) -> usize;
    /// Appends one alert delivery attempt to the delivery log; its `seq`.
    fn record_alert_attempt(&self, a: AlertAttempt) -> u64;
    /// At most `q.limit` delivery attempts, newest first (with
    /// `q.after_seq`, the ones above it, oldest first: a page back).
    fn alert_attempts(&self, q: AlertAttemptQuery) -> Vec<AlertAttempt>;
    /// Deletes delivery attempts older than `cutoff_ms`.
    fn prune_alert_attempts(&self, cutoff_ms: i64) -> usize;
    /// Inserts or replaces (a revoked name reused) an API token.
    fn put_api_token(&self, t: StoredToken) -> ();
    /// Every API token made through the API, revoked ones included.
    fn load_api_tokens(&self) -> Vec<StoredToken>;
    /// Stores a new console session (by the hashes only), dropping expired ones.
    fn put_console_session(&self, s: ConsoleSession) -> ();
    /// The console session whose cookie hashes to `id_sha256`, if unexpired.
    fn console_session(&self, id_sha256: String, now_ms: i64) -> Option<ConsoleSession>;
    /// Ends a console session (sign-out).
    fn delete_console_session(&self, id_sha256: String) -> ();
}
