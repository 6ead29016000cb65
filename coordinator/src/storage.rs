//! Storage: every byte the coordinator keeps goes through [`Storage`].
//!
//! The embedded backend is SQLite (rusqlite, bundled, WAL). Its API is the
//! interface the rest of the coordinator sees — plain Rust types in, plain
//! Rust types out, no SQL or rusqlite type crosses it — so a server
//! database can later stand behind the same methods.
//!
//! Two paths, so reads never block ingest:
//! - **Writes** go to one dedicated writer thread over a bounded channel.
//!   It takes whatever is queued (up to [`MAX_BATCH`]), runs each job in its
//!   own savepoint inside one transaction, commits, and only then answers
//!   each sender through its oneshot: an `Ok` means the row is durable
//!   (`synchronous = FULL`). This is the ack-after-durable rule the agents'
//!   spools rely on.
//! - **Reads** run on a small pool of read-only connections through
//!   `spawn_blocking`; WAL lets them proceed while the writer commits.

use crate::config::CheckSpec;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Most jobs committed in one transaction.
pub const MAX_BATCH: usize = 1024;
/// Jobs waiting for the writer before senders are made to wait (backpressure).
const QUEUE: usize = 8192;
/// Read connections.
const READERS: usize = 4;
/// Rows deleted per retention transaction, so pruning never holds the writer long.
const PRUNE_CHUNK: usize = 5000;

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

    fn parse(s: &str) -> Source {
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

/// The coordinator's storage. Cheap to share behind an `Arc`.
pub struct Storage {
    writer: mpsc::Sender<Msg>,
    readers: Arc<Readers>,
    done: Mutex<Option<oneshot::Receiver<()>>>,
    path: PathBuf,
}

/// Database file name inside `data_dir`.
pub const DB_FILE: &str = "coordinator.db";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS checks (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    revision    INTEGER NOT NULL,
    check_json  TEXT NOT NULL,
    interval_ms INTEGER NOT NULL,
    regions     TEXT NOT NULL,
    source      TEXT NOT NULL,
    deleted     INTEGER NOT NULL DEFAULT 0,
    updated_at  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS agents (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    region       TEXT NOT NULL,
    token_sha256 TEXT NOT NULL,
    source       TEXT NOT NULL,
    revoked      INTEGER NOT NULL DEFAULT 0,
    version      TEXT,
    last_seen    INTEGER,
    connected    INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS reports (
    probe_id      TEXT PRIMARY KEY,
    check_id      TEXT NOT NULL,
    revision      INTEGER NOT NULL,
    region        TEXT NOT NULL,
    agent         TEXT NOT NULL,
    round         INTEGER NOT NULL,
    started_at    INTEGER NOT NULL,
    outcome       TEXT NOT NULL,
    rtt_ms        REAL,
    delivery_ms   REAL,
    failure_step  TEXT,
    failure_class TEXT,
    report_json   TEXT NOT NULL,
    received_at   INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS reports_by_check ON reports (check_id, started_at DESC, probe_id DESC);
CREATE INDEX IF NOT EXISTS reports_by_round ON reports (check_id, round DESC);
CREATE INDEX IF NOT EXISTS reports_by_age ON reports (received_at);
CREATE INDEX IF NOT EXISTS reports_by_time ON reports (started_at DESC, probe_id DESC);
";

impl Storage {
    /// Opens (creating if needed) `data_dir/coordinator.db` and starts the writer thread.
    pub fn open(data_dir: &Path) -> Result<Storage, StorageError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StorageError::CreateDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join(DB_FILE);
        let open_err = |source| StorageError::Open {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        // FULL: a commit is on disk before the writer answers (the ack rule).
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(open_err)?;
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        open_aggregates(&conn).map_err(open_err)?;
        conn.execute_batch(JUDGE_SCHEMA).map_err(open_err)?;
        migrate_request_ids(&conn).map_err(open_err)?;
        migrate(&conn).map_err(open_err)?;
        let mut readers = Vec::new();
        for _ in 0..READERS {
            let r = Connection::open_with_flags(
                &path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(open_err)?;
            r.busy_timeout(Duration::from_secs(5)).map_err(open_err)?;
            readers.push(Mutex::new(r));
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let (done_tx, done_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("storage-writer".into())
            .spawn(move || {
                writer_loop(conn, rx);
                let _ = done_tx.send(());
            })
            .expect("spawn the storage writer thread");
        Ok(Storage {
            writer: tx,
            readers: Arc::new(Readers {
                conns: readers,
                next: AtomicUsize::new(0),
            }),
            done: Mutex::new(Some(done_rx)),
            path,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lets the writer commit everything already queued, then stops it.
    /// Later writes fail with [`StorageError::Closed`].
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.writer.send(Msg::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
        let done = self.done.lock().expect("storage lock").take();
        if let Some(done) = done {
            let _ = done.await;
        }
    }

    /// Queues one report; the returned receiver answers after the commit.
    /// Awaiting this only waits for room in the queue, so a caller can keep
    /// many reports in flight and acknowledge each as its answer arrives.
    pub async fn submit_report(
        &self,
        row: ReportRow,
    ) -> Result<oneshot::Receiver<Result<Inserted, StorageError>>, StorageError> {
        self.submit(move |conn| {
            let n = conn.prepare_cached(
                "INSERT OR IGNORE INTO reports (probe_id, check_id, revision, region, agent, round, started_at, outcome,
                 rtt_ms, delivery_ms, failure_step, failure_class, report_json, received_at, request_id, out_of_window)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            )?
            .execute(params![
                row.probe_id,
                row.check_id,
                row.revision as i64,
                row.region,
                row.agent,
                row.round as i64,
                row.started_at_ms,
                row.outcome,
                row.rtt_ms,
                row.delivery_ms,
                row.failure_step,
                row.failure_class,
                row.report_json,
                row.received_at_ms,
                row.request_id,
                row.out_of_window
            ])?;
            if n == 1 {
                add_to_aggregate(conn, &row)?;
            }
            Ok(if n == 1 { Inserted::New } else { Inserted::Duplicate })
        })
        .await
    }

    /// Stores one report and waits until it is durable.
    pub async fn insert_report(&self, row: ReportRow) -> Result<Inserted, StorageError> {
        self.submit_report(row)
            .await?
            .await
            .map_err(|_| StorageError::Closed)?
    }

    /// Inserts or replaces a check.
    pub async fn put_check(&self, c: StoredCheck) -> Result<(), StorageError> {
        // The check's own quorum rides in the stored table (agents get
        // `spec.table`, which never has it); `load_checks` takes it out again.
        let mut stored_table = c.spec.table.clone();
        if let (Some(q), Some(obj)) = (c.spec.quorum, stored_table.as_object_mut()) {
            obj.insert("quorum".into(), crate::judge::config::quorum_value(q));
        }
        let table = serde_json::to_string(&stored_table).expect("a JSON value serializes");
        let regions = serde_json::to_string(&c.spec.regions).expect("strings serialize");
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO checks (id, name, revision, check_json, interval_ms, regions, source, deleted, updated_at)
                 VALUES (?1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (id) DO UPDATE SET revision = ?2, check_json = ?3, interval_ms = ?4, regions = ?5,
                   source = ?6, deleted = ?7, updated_at = ?8",
                params![
                    c.spec.name,
                    c.revision as i64,
                    table,
                    c.spec.interval.as_millis() as i64,
                    regions,
                    c.source.as_str(),
                    c.deleted,
                    c.updated_at_ms
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// Every check ever stored, deleted ones included.
    pub async fn load_checks(&self) -> Result<Vec<StoredCheck>, StorageError> {
        self.read(|conn| {
            let mut stmt = conn.prepare(
                "SELECT id, revision, check_json, interval_ms, regions, source, deleted, updated_at FROM checks ORDER BY id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, bool>(6)?,
                    r.get::<_, i64>(7)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (id, revision, json, interval_ms, regions, source, deleted, updated_at_ms) = row?;
                let mut table: serde_json::Value = serde_json::from_str(&json).map_err(|e| corrupt(format!("check {id}: {e}")))?;
                let quorum = table
                    .as_object_mut()
                    .and_then(|o| o.remove("quorum"))
                    .and_then(|raw| crate::judge::config::quorum("quorum", &raw, None, &mut Vec::new()));
                let regions = serde_json::from_str(&regions).map_err(|e| corrupt(format!("check {id} regions: {e}")))?;
                out.push(StoredCheck {
                    spec: CheckSpec { name: id, table, interval: Duration::from_millis(interval_ms as u64), regions, quorum },
                    revision: revision as u64,
                    source: Source::parse(&source),
                    deleted,
                    updated_at_ms,
                });
            }
            Ok(out)
        })
        .await
    }

    /// Inserts or replaces an agent (its name, region, token hash, source, revocation).
    pub async fn put_agent(&self, a: StoredAgent) -> Result<(), StorageError> {
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO agents (id, name, region, token_sha256, source, revoked, version, last_seen, connected, created_at)
                 VALUES (?1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (id) DO UPDATE SET region = ?2, token_sha256 = ?3, source = ?4, revoked = ?5",
                params![a.name, a.region, a.token_sha256, a.source.as_str(), a.revoked, a.version, a.last_seen_ms, a.connected, a.created_at_ms],
            )?;
            Ok(())
        })
        .await
    }

    /// Records that an agent was seen (and, when given, its version and connection state).
    pub async fn touch_agent(
        &self,
        name: String,
        at_ms: i64,
        version: Option<String>,
        connected: Option<bool>,
    ) -> Result<(), StorageError> {
        self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE agents SET last_seen = ?2, version = COALESCE(?3, version), connected = COALESCE(?4, connected) WHERE id = ?1",
            )?
            .execute(params![name, at_ms, version, connected])?;
            Ok(())
        })
        .await
    }

    /// At start nobody is connected yet.
    pub async fn reset_connections(&self) -> Result<(), StorageError> {
        self.write(|conn| {
            conn.execute("UPDATE agents SET connected = 0", [])?;
            Ok(())
        })
        .await
    }

    /// Every agent, revoked ones included.
    pub async fn load_agents(&self) -> Result<Vec<StoredAgent>, StorageError> {
        self.read(|conn| {
            let mut stmt = conn.prepare(
                "SELECT name, region, token_sha256, source, revoked, version, last_seen, connected, created_at FROM agents ORDER BY name",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(StoredAgent {
                    name: r.get(0)?,
                    region: r.get(1)?,
                    token_sha256: r.get(2)?,
                    source: Source::parse(&r.get::<_, String>(3)?),
                    revoked: r.get(4)?,
                    version: r.get(5)?,
                    last_seen_ms: r.get(6)?,
                    connected: r.get(7)?,
                    created_at_ms: r.get(8)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Results, newest first, filtered and paged.
    pub async fn query_results(&self, q: ResultQuery) -> Result<ResultPage, StorageError> {
        self.read(move |conn| {
            let limit = q.limit.clamp(1, 1000) as i64;
            let (after_ms, after_id) = q.after.clone().unzip();
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {REPORT_COLUMNS} FROM reports
                 WHERE (?1 IS NULL OR check_id = ?1) AND (?2 IS NULL OR region = ?2)
                   AND (?3 IS NULL OR started_at >= ?3) AND (?4 IS NULL OR started_at < ?4)
                   AND (?5 IS NULL OR started_at < ?5 OR (started_at = ?5 AND probe_id < ?6))
                 ORDER BY started_at DESC, probe_id DESC LIMIT ?7"
            ))?;
            let mut found = stmt.query(params![
                q.check_id,
                q.region,
                q.since_ms,
                q.until_ms,
                after_ms,
                after_id,
                limit + 1
            ])?;
            // Rows are read one at a time and the reading stops at the
            // first that does not fit, so a page of large reports never
            // holds more than its byte budget (plus one report).
            let (mut rows, mut bytes, mut more) = (Vec::new(), 0usize, false);
            while let Some(r) = found.next()? {
                let full =
                    rows.len() as i64 == limit || q.max_bytes.is_some_and(|max| bytes >= max);
                if full {
                    more = true;
                    break;
                }
                let row = report_row(r)?;
                bytes += row.report_json.len();
                rows.push(row);
            }
            let next = if more {
                rows.last().map(|r| (r.started_at_ms, r.probe_id.clone()))
            } else {
                None
            };
            Ok(ResultPage { rows, next })
        })
        .await
    }

    /// The highest round with any report of `check_id`, and its reports.
    pub async fn latest_round(
        &self,
        check_id: String,
    ) -> Result<Option<(u64, Vec<ReportRow>)>, StorageError> {
        self.read(move |conn| {
            let round: Option<i64> = conn
                .query_row("SELECT MAX(round) FROM reports WHERE check_id = ?1 AND round > 0 AND out_of_window IS NULL", [&check_id], |r| r.get(0))
                .optional()?
                .flatten();
            let Some(round) = round else { return Ok(None) };
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {REPORT_COLUMNS} FROM reports WHERE check_id = ?1 AND round = ?2 AND out_of_window IS NULL ORDER BY region, started_at"
            ))?;
            let rows = stmt.query_map(params![check_id, round], report_row)?.collect::<Result<Vec<_>, _>>()?;
            Ok(Some((round as u64, rows)))
        })
        .await
    }

    /// Number of stored reports (for tests and the readiness page).
    pub async fn count_reports(&self) -> Result<u64, StorageError> {
        self.read(|conn| {
            Ok(conn.query_row("SELECT COUNT(*) FROM reports", [], |r| r.get::<_, i64>(0))? as u64)
        })
        .await
    }

    /// Deletes reports received before `cutoff_ms`, in small transactions.
    /// Returns how many went.
    pub async fn prune(&self, cutoff_ms: i64) -> Result<usize, StorageError> {
        self.delete_in_chunks(
            "DELETE FROM reports WHERE probe_id IN (SELECT probe_id FROM reports WHERE received_at < ?1 LIMIT ?2)",
            cutoff_ms,
        )
        .await
    }

    /// Runs `sql` (a DELETE of at most `?2` rows older than `?1`) until it
    /// deletes fewer than a chunk: each chunk is its own transaction, so
    /// pruning never holds the writer long. Returns how many rows went.
    async fn delete_in_chunks(&self, sql: &'static str, cutoff_ms: i64) -> Result<usize, StorageError> {
        let mut total = 0;
        loop {
            let n = self.write(move |conn| Ok(conn.execute(sql, params![cutoff_ms, PRUNE_CHUNK as i64])?)).await?;
            total += n;
            if n < PRUNE_CHUNK {
                return Ok(total);
            }
        }
    }

    /// Runs `f` in the writer's next transaction and waits for the commit.
    async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StorageError> + Send + 'static,
    ) -> Result<R, StorageError> {
        self.submit(f)
            .await?
            .await
            .map_err(|_| StorageError::Closed)?
    }

    async fn submit<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StorageError> + Send + 'static,
    ) -> Result<oneshot::Receiver<Result<R, StorageError>>, StorageError> {
        let (tx, rx) = oneshot::channel();
        let job = Box::new(Typed {
            f: Some(f),
            result: None,
            reply: tx,
        });
        self.writer
            .send(Msg::Job(job))
            .await
            .map_err(|_| StorageError::Closed)?;
        Ok(rx)
    }

    async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StorageError> + Send + 'static,
    ) -> Result<R, StorageError> {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let i = readers.next.fetch_add(1, Ordering::Relaxed) % readers.conns.len();
            let conn = readers.conns[i].lock().unwrap_or_else(|e| e.into_inner());
            f(&conn)
        })
        .await
        .map_err(|e| StorageError::Commit(format!("read task failed: {e}")))?
    }
}

const REPORT_COLUMNS: &str =
    "probe_id, check_id, revision, region, agent, round, started_at, outcome, rtt_ms, delivery_ms,
    failure_step, failure_class, report_json, received_at, request_id, out_of_window";

fn report_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ReportRow> {
    Ok(ReportRow {
        probe_id: r.get(0)?,
        check_id: r.get(1)?,
        revision: r.get::<_, i64>(2)? as u64,
        region: r.get(3)?,
        agent: r.get(4)?,
        round: r.get::<_, i64>(5)? as u64,
        started_at_ms: r.get(6)?,
        outcome: r.get(7)?,
        rtt_ms: r.get(8)?,
        delivery_ms: r.get(9)?,
        failure_step: r.get(10)?,
        failure_class: r.get(11)?,
        report_json: r.get(12)?,
        received_at_ms: r.get(13)?,
        request_id: r.get(14)?,
        out_of_window: r.get(15)?,
    })
}

fn corrupt(message: String) -> StorageError {
    StorageError::Corrupt(message)
}

// ---------------------------------------------------------------------------
// On-demand runs: the request id of a report.
//
// `reports.request_id` came after the first schema, so it is added in place
// to an existing database: a nullable column (every earlier report is a
// scheduled round, which answers no request), plus a partial index that
// holds only the few on-demand rows. Kept in this one section so other
// tables can be added elsewhere in the file without touching it.
// ---------------------------------------------------------------------------

struct Readers {
    conns: Vec<Mutex<Connection>>,
    next: AtomicUsize,
}

enum Msg {
    Job(Box<dyn WriteJob>),
    Close(oneshot::Sender<()>),
}

/// One write: run inside the batch's transaction, answered after the commit.
trait WriteJob: Send {
    /// Runs the write; false if it failed (its savepoint is rolled back).
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the sender once the batch's fate is known.
    fn finish(self: Box<Self>, commit: Result<(), String>);
}

struct Typed<F, R> {
    f: Option<F>,
    result: Option<Result<R, StorageError>>,
    reply: oneshot::Sender<Result<R, StorageError>>,
}

impl<F, R> WriteJob for Typed<F, R>
where
    F: FnOnce(&Connection) -> Result<R, StorageError> + Send,
    R: Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let f = self.f.take().expect("a job runs once");
        let result = f(conn);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, commit: Result<(), String>) {
        let answer = match (commit, self.result) {
            (Err(e), _) => Err(StorageError::Commit(e)),
            (Ok(()), Some(r)) => r,
            (Ok(()), None) => Err(StorageError::Commit("the write did not run".into())),
        };
        let _ = self.reply.send(answer);
    }
}

fn writer_loop(mut conn: Connection, mut rx: mpsc::Receiver<Msg>) {
    let mut closing = None;
    while closing.is_none() {
        let Some(first) = rx.blocking_recv() else {
            break;
        };
        let mut batch = Vec::new();
        match first {
            Msg::Job(j) => batch.push(j),
            Msg::Close(tx) => closing = Some(tx),
        }
        while closing.is_none() && batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(Msg::Job(j)) => batch.push(j),
                Ok(Msg::Close(tx)) => closing = Some(tx),
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        let commit = run_batch(&mut conn, &mut batch);
        if let Err(e) = &commit {
            tracing::error!(error = %e, jobs = batch.len(), "storage commit failed; the batch is answered with the error");
        }
        for job in batch {
            job.finish(commit.clone());
        }
    }
    // Refuse whatever arrives after close; answer it so nobody waits forever.
    rx.close();
    while let Ok(msg) = rx.try_recv() {
        match msg {
            Msg::Job(j) => j.finish(Err("storage is closed".into())),
            Msg::Close(tx) => {
                let _ = tx.send(());
            }
        }
    }
    drop(conn);
    if let Some(tx) = closing {
        let _ = tx.send(());
    }
}

fn run_batch(conn: &mut Connection, batch: &mut [Box<dyn WriteJob>]) -> Result<(), String> {
    let mut tx = conn.transaction().map_err(|e| e.to_string())?;
    for job in batch.iter_mut() {
        let sp = tx.savepoint().map_err(|e| e.to_string())?;
        if job.run(&sp) {
            sp.commit().map_err(|e| e.to_string())?;
        }
        // A failed job's savepoint rolls back on drop; the rest of the batch stands.
    }
    tx.commit().map_err(|e| e.to_string())
}

/// Adds `reports.request_id` and its index if the database predates them.
fn migrate_request_ids(conn: &Connection) -> rusqlite::Result<()> {
    let present: i64 = conn.query_row(
        "SELECT COUNT(*) FROM pragma_table_info('reports') WHERE name = 'request_id'",
        [],
        |r| r.get(0),
    )?;
    if present == 0 {
        conn.execute_batch("ALTER TABLE reports ADD COLUMN request_id TEXT")?;
        // A fresh database takes the same path (the base schema predates the
        // column); only say so when there were reports to migrate.
        let had_reports: bool = conn.query_row("SELECT EXISTS (SELECT 1 FROM reports)", [], |r| r.get(0))?;
        if had_reports {
            tracing::info!("storage: added reports.request_id (on-demand runs) to an existing database");
        }
    }
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS reports_by_request ON reports (request_id) WHERE request_id IS NOT NULL",
    )
}

impl Storage {
    /// The reports of one on-demand run, by region.
    pub async fn results_of_request(
        &self,
        request_id: String,
    ) -> Result<Vec<ReportRow>, StorageError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {REPORT_COLUMNS} FROM reports WHERE request_id = ?1 ORDER BY region, received_at"
            ))?;
            let rows = stmt
                .query_map([request_id], report_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }
}

impl Storage {
    /// The newest on-demand run of a check that has a stored report (by
    /// the newest report's arrival), with all of that run's reports.
    pub async fn latest_run(
        &self,
        check_id: String,
    ) -> Result<Option<(String, Vec<ReportRow>)>, StorageError> {
        self.read(move |conn| {
            let request: Option<String> = conn
                .query_row(
                    "SELECT request_id FROM reports WHERE check_id = ?1 AND round = 0 AND request_id IS NOT NULL
                     ORDER BY received_at DESC, probe_id DESC LIMIT 1",
                    [&check_id],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(request) = request else { return Ok(None) };
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {REPORT_COLUMNS} FROM reports WHERE request_id = ?1 AND check_id = ?2 ORDER BY region, received_at"
            ))?;
            let rows = stmt.query_map(params![request, check_id], report_row)?.collect::<Result<Vec<_>, _>>()?;
            Ok(Some((request, rows)))
        })
        .await
    }
}

#[cfg(test)]
mod request_id_tests {
    use super::*;

    fn row(id: &str, request_id: Option<&str>) -> ReportRow {
        ReportRow {
            probe_id: id.into(),
            check_id: "corp".into(),
            revision: 1,
            region: "eu-west".into(),
            agent: "eu-1".into(),
            round: if request_id.is_some() { 0 } else { 7 },
            started_at_ms: 1_000,
            outcome: "ok".into(),
            rtt_ms: None,
            delivery_ms: None,
            failure_step: None,
            failure_class: None,
            report_json: "{}".into(),
            received_at_ms: 2_000,
            request_id: request_id.map(str::to_string),
            out_of_window: None,
        }
    }

    #[tokio::test]
    async fn a_database_from_before_request_ids_gains_the_column_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        {
            // The reports table as the first release created it.
            let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
            conn.execute_batch(
                "CREATE TABLE reports (probe_id TEXT PRIMARY KEY, check_id TEXT NOT NULL, revision INTEGER NOT NULL,
                 region TEXT NOT NULL, agent TEXT NOT NULL, round INTEGER NOT NULL, started_at INTEGER NOT NULL,
                 outcome TEXT NOT NULL, rtt_ms REAL, delivery_ms REAL, failure_step TEXT, failure_class TEXT,
                 report_json TEXT NOT NULL, received_at INTEGER NOT NULL);
                 INSERT INTO reports VALUES ('ml-old', 'corp', 1, 'eu-west', 'eu-1', 5, 1000, 'ok', NULL, NULL, NULL, NULL, '{}', 2000);",
            )
            .unwrap();
        }
        let s = Storage::open(dir.path()).unwrap();
        s.insert_report(row("ml-run", Some("run-1-abcd"))).await.unwrap();
        s.insert_report(row("ml-round", None)).await.unwrap();
        let found = s.results_of_request("run-1-abcd".into()).await.unwrap();
        assert_eq!(found, [row("ml-run", Some("run-1-abcd"))]);
        assert_eq!(s.count_reports().await.unwrap(), 3);
        let (round, rows) = s.latest_round("corp".into()).await.unwrap().unwrap();
        assert_eq!(round, 7, "an on-demand run (round 0) is not a round");
        assert_eq!(rows[0].request_id, None);
        s.close().await;
        // Opening again finds the column there and changes nothing.
        let s = Storage::open(dir.path()).unwrap();
        assert_eq!(s.results_of_request("run-1-abcd".into()).await.unwrap().len(), 1);
        s.close().await;
    }
}

// ---------------------------------------------------------------------------
// The judge's tables: round verdicts, incidents and their timelines.
//
// A round's verdict and everything it did to incidents are written in ONE
// transaction (`store_round`), so a crash never leaves an incident opened
// by a verdict that is not there, or a verdict whose incident is missing.
// "One open incident per check, kind and key" is the judge's rule and also
// a partial unique index here, so a bug upstream cannot create duplicates.
// ---------------------------------------------------------------------------

use crate::judge::{
    AlertEventKind, Incident, IncidentChange, IncidentKind, IncidentState, TimelineEntry, Verdict,
};

const JUDGE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS verdicts (
    check_id       TEXT NOT NULL,
    round          INTEGER NOT NULL,
    round_start_ms INTEGER NOT NULL,
    decided_at_ms  INTEGER NOT NULL,
    verdict        TEXT NOT NULL,
    evidence       TEXT NOT NULL,
    PRIMARY KEY (check_id, round)
);
CREATE INDEX IF NOT EXISTS verdicts_by_time ON verdicts (round_start_ms DESC, check_id DESC);
CREATE INDEX IF NOT EXISTS verdicts_by_age ON verdicts (decided_at_ms);
CREATE TABLE IF NOT EXISTS incidents (
    id            INTEGER PRIMARY KEY,
    check_id      TEXT NOT NULL,
    kind          TEXT NOT NULL,
    key           TEXT NOT NULL,
    severity      TEXT NOT NULL,
    state         TEXT NOT NULL,
    opened_at_ms  INTEGER NOT NULL,
    acked_at_ms   INTEGER,
    acked_by      TEXT,
    resolved_at_ms INTEGER,
    first_round   INTEGER NOT NULL,
    last_round    INTEGER NOT NULL,
    summary       TEXT NOT NULL,
    regions       TEXT NOT NULL,
    step          TEXT,
    class         TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS incidents_one_active
    ON incidents (check_id, kind, key) WHERE state != 'resolved';
CREATE INDEX IF NOT EXISTS incidents_by_check ON incidents (check_id, id DESC);
CREATE TABLE IF NOT EXISTS incident_events (
    seq         INTEGER PRIMARY KEY,
    incident_id INTEGER NOT NULL REFERENCES incidents (id),
    at_ms       INTEGER NOT NULL,
    round       INTEGER,
    event       TEXT NOT NULL,
    verdict     TEXT,
    note        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS incident_events_by_incident ON incident_events (incident_id, seq);
";

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

fn enum_str<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        other => format!("{other:?}"),
    }
}

fn enum_parse<T: serde::de::DeserializeOwned>(s: &str) -> rusqlite::Result<T> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

const INCIDENT_COLUMNS: &str =
    "id, check_id, kind, key, severity, state, opened_at_ms, acked_at_ms, acked_by,
    resolved_at_ms, first_round, last_round, summary, regions, step, class";

fn incident_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Incident> {
    let regions: String = r.get(13)?;
    Ok(Incident {
        id: r.get::<_, i64>(0)? as u64,
        check_id: r.get(1)?,
        kind: enum_parse(&r.get::<_, String>(2)?)?,
        key: r.get(3)?,
        severity: enum_parse(&r.get::<_, String>(4)?)?,
        state: enum_parse(&r.get::<_, String>(5)?)?,
        opened_at_ms: r.get(6)?,
        acknowledged_at_ms: r.get(7)?,
        acknowledged_by: r.get(8)?,
        resolved_at_ms: r.get(9)?,
        first_round: r.get::<_, i64>(10)? as u64,
        last_round: r.get::<_, i64>(11)? as u64,
        summary: r.get(12)?,
        regions: serde_json::from_str(&regions).unwrap_or_default(),
        step: r.get(14)?,
        class: r.get(15)?,
        timeline: Vec::new(),
    })
}

fn timeline(conn: &Connection, incident_id: u64) -> Result<Vec<TimelineEntry>, StorageError> {
    let mut stmt = conn.prepare_cached(
        "SELECT at_ms, round, event, verdict, note FROM incident_events WHERE incident_id = ?1 ORDER BY seq",
    )?;
    let rows = stmt.query_map([incident_id as i64], |r| {
        let verdict: Option<String> = r.get(3)?;
        Ok(TimelineEntry {
            at_ms: r.get(0)?,
            round: r.get::<_, Option<i64>>(1)?.map(|n| n as u64),
            event: r.get(2)?,
            verdict: verdict.map(|v| enum_parse(&v)).transpose()?,
            note: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

fn add_event(conn: &Connection, incident_id: u64, e: &TimelineEntry) -> Result<(), StorageError> {
    conn.prepare_cached(
        "INSERT INTO incident_events (incident_id, at_ms, round, event, verdict, note) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        incident_id as i64,
        e.at_ms,
        e.round.map(|r| r as i64),
        e.event,
        e.verdict.map(|v| v.as_str()),
        e.note
    ])?;
    Ok(())
}

/// The incident with this id, with its timeline.
fn incident_by_id(conn: &Connection, id: u64) -> Result<Option<Incident>, StorageError> {
    let found = conn
        .prepare_cached(&format!(
            "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = ?1"
        ))?
        .query_row([id as i64], incident_row)
        .optional()?;
    match found {
        None => Ok(None),
        Some(mut i) => {
            i.timeline = timeline(conn, i.id)?;
            Ok(Some(i))
        }
    }
}

/// The id of the open or acknowledged incident of (check, kind, key).
fn active_id(
    conn: &Connection,
    check_id: &str,
    kind: IncidentKind,
    key: &str,
) -> Result<Option<u64>, StorageError> {
    Ok(conn
        .prepare_cached(
            "SELECT id FROM incidents WHERE check_id = ?1 AND kind = ?2 AND key = ?3 AND state != 'resolved'",
        )?
        .query_row(params![check_id, kind.as_str(), key], |r| r.get::<_, i64>(0))
        .optional()?
        .map(|id| id as u64))
}

/// Applies one round's verdict and incident changes (inside the writer's transaction).
fn store_round_tx(
    conn: &Connection,
    v: &Verdict,
    changes: &[IncidentChange],
) -> Result<RoundStored, StorageError> {
    let evidence = serde_json::to_string(v).map_err(|e| StorageError::Commit(e.to_string()))?;
    let n = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO verdicts (check_id, round, round_start_ms, decided_at_ms, verdict, evidence)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            v.check_id,
            v.round as i64,
            v.round_start_ms,
            v.decided_at_ms,
            v.verdict.as_str(),
            evidence
        ])?;
    if n == 0 {
        // Decided before (a restart raced a late report): the first decision stands.
        return Ok(RoundStored {
            stored: false,
            events: Vec::new(),
        });
    }
    let mut events = Vec::new();
    for change in changes {
        match change {
            IncidentChange::Open(i) => {
                if let Some(id) = active_id(conn, &v.check_id, i.kind, &i.key)? {
                    // Already open (the judge lost track of it): one incident, a new line.
                    let entry = i.timeline.last().cloned().unwrap_or(TimelineEntry {
                        at_ms: v.decided_at_ms,
                        round: Some(v.round),
                        event: "round".into(),
                        verdict: Some(v.verdict),
                        note: i.summary.clone(),
                    });
                    add_event(conn, id, &entry)?;
                    conn.prepare_cached(
                        "UPDATE incidents SET last_round = MAX(last_round, ?2) WHERE id = ?1",
                    )?
                    .execute(params![id as i64, v.round as i64])?;
                    continue;
                }
                conn.prepare_cached(
                    "INSERT INTO incidents (check_id, kind, key, severity, state, opened_at_ms, acked_at_ms, acked_by,
                     resolved_at_ms, first_round, last_round, summary, regions, step, class)
                     VALUES (?1, ?2, ?3, ?4, 'open', ?5, NULL, NULL, NULL, ?6, ?7, ?8, ?9, ?10, ?11)",
                )?
                .execute(params![
                    v.check_id,
                    i.kind.as_str(),
                    i.key,
                    enum_str(&i.severity),
                    i.opened_at_ms,
                    i.first_round as i64,
                    i.last_round as i64,
                    i.summary,
                    serde_json::to_string(&i.regions).expect("strings serialize"),
                    i.step,
                    i.class
                ])?;
                let id = conn.last_insert_rowid() as u64;
                for e in &i.timeline {
                    add_event(conn, id, e)?;
                }
                if i.timeline.is_empty() {
                    add_event(
                        conn,
                        id,
                        &TimelineEntry {
                            at_ms: i.opened_at_ms,
                            round: Some(v.round),
                            event: "opened".into(),
                            verdict: Some(v.verdict),
                            note: i.summary.clone(),
                        },
                    )?;
                }
                if let Some(stored) = incident_by_id(conn, id)? {
                    events.push((AlertEventKind::Opened, stored));
                }
            }
            IncidentChange::Update {
                kind,
                key,
                entry,
                summary,
                regions,
                last_round,
            } => {
                let Some(id) = active_id(conn, &v.check_id, *kind, key)? else {
                    tracing::warn!(check = %v.check_id, kind = kind.as_str(), %key, "update of an incident that is not open; ignored");
                    continue;
                };
                add_event(conn, id, entry)?;
                conn.prepare_cached(
                    "UPDATE incidents SET last_round = MAX(last_round, ?2), summary = COALESCE(?3, summary),
                     regions = COALESCE(?4, regions) WHERE id = ?1",
                )?
                .execute(params![
                    id as i64,
                    *last_round as i64,
                    summary,
                    regions
                        .as_ref()
                        .map(|r| serde_json::to_string(r).expect("strings serialize"))
                ])?;
            }
            IncidentChange::Resolve { kind, key, entry } => {
                let Some(id) = active_id(conn, &v.check_id, *kind, key)? else {
                    tracing::warn!(check = %v.check_id, kind = kind.as_str(), %key, "resolve of an incident that is not open; ignored");
                    continue;
                };
                add_event(conn, id, entry)?;
                conn.prepare_cached(
                    "UPDATE incidents SET state = 'resolved', resolved_at_ms = ?2, last_round = MAX(last_round, ?3) WHERE id = ?1",
                )?
                .execute(params![id as i64, entry.at_ms, v.round as i64])?;
                if let Some(stored) = incident_by_id(conn, id)? {
                    events.push((AlertEventKind::Resolved, stored));
                }
            }
        }
    }
    Ok(RoundStored {
        stored: true,
        events,
    })
}

fn verdict_from(evidence: &str) -> Result<Verdict, StorageError> {
    serde_json::from_str(evidence).map_err(|e| corrupt(format!("verdict evidence: {e}")))
}

impl Storage {
    /// Stores a round's verdict and what it did to incidents in one
    /// transaction; answers after the commit. A round that already has a
    /// verdict is left as it was (`stored: false`).
    pub async fn store_round(
        &self,
        verdict: Verdict,
        changes: Vec<IncidentChange>,
    ) -> Result<RoundStored, StorageError> {
        self.write(move |conn| store_round_tx(conn, &verdict, &changes))
            .await
    }

    /// Verdicts, newest round first, filtered and paged.
    pub async fn query_verdicts(&self, q: VerdictQuery) -> Result<VerdictPage, StorageError> {
        self.read(move |conn| {
            let limit = q.limit.clamp(1, 1000) as i64;
            let (after_ms, after_check) = q.after.clone().unzip();
            let mut stmt = conn.prepare_cached(
                "SELECT round_start_ms, check_id, evidence FROM verdicts
                 WHERE (?1 IS NULL OR check_id = ?1)
                   AND (?2 IS NULL OR round_start_ms >= ?2) AND (?3 IS NULL OR round_start_ms < ?3)
                   AND (?4 IS NULL OR round_start_ms < ?4 OR (round_start_ms = ?4 AND check_id < ?5))
                 ORDER BY round_start_ms DESC, check_id DESC LIMIT ?6",
            )?;
            let rows = stmt
                .query_map(
                    params![q.check_id, q.since_ms, q.until_ms, after_ms, after_check, limit + 1],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)),
                )?
                .collect::<Result<Vec<_>, _>>()?;
            let more = rows.len() as i64 > limit;
            let mut verdicts = Vec::new();
            let mut next = None;
            for (ms, check, evidence) in rows.into_iter().take(limit as usize) {
                verdicts.push(verdict_from(&evidence)?);
                next = Some((ms, check));
            }
            Ok(VerdictPage {
                verdicts,
                next: if more { next } else { None },
            })
        })
        .await
    }

    /// The last `n` verdicts of a check, oldest first (what `restore` needs).
    pub async fn recent_verdicts(
        &self,
        check_id: String,
        n: u32,
    ) -> Result<Vec<Verdict>, StorageError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT evidence FROM verdicts WHERE check_id = ?1 ORDER BY round DESC LIMIT ?2",
            )?;
            let rows = stmt
                .query_map(params![check_id, n as i64], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            let mut out = rows
                .iter()
                .map(|e| verdict_from(e))
                .collect::<Result<Vec<_>, _>>()?;
            out.reverse();
            Ok(out)
        })
        .await
    }

    /// What `/status` shows, in two statements whatever the number of
    /// checks: the latest verdict of each of `check_ids` (absent: none yet)
    /// and every open or acknowledged incident, newest first, without
    /// timelines.
    pub async fn status_snapshot(
        &self,
        check_ids: Vec<String>,
    ) -> Result<(HashMap<String, Verdict>, Vec<Incident>), StorageError> {
        self.read(move |conn| {
            let ids = serde_json::to_string(&check_ids).expect("strings");
            // One index seek per check (verdicts' key is check_id, round).
            let mut stmt = conn.prepare_cached(
                "SELECT (SELECT evidence FROM verdicts WHERE check_id = ids.value ORDER BY round DESC LIMIT 1)
                 FROM json_each(?1) AS ids",
            )?;
            let mut latest = HashMap::new();
            for evidence in stmt.query_map([&ids], |r| r.get::<_, Option<String>>(0))? {
                if let Some(e) = evidence? {
                    let v = verdict_from(&e)?;
                    latest.insert(v.check_id.clone(), v);
                }
            }
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE state != 'resolved' ORDER BY id DESC"
            ))?;
            let active = stmt.query_map([], incident_row)?.collect::<Result<Vec<_>, _>>()?;
            Ok((latest, active))
        })
        .await
    }

    /// Incidents, newest first (without their timelines).
    pub async fn list_incidents(&self, q: IncidentQuery) -> Result<Vec<Incident>, StorageError> {
        self.read(move |conn| {
            let states: Vec<String> = q.states.iter().map(enum_str).collect();
            let states_json =
                (!states.is_empty()).then(|| serde_json::to_string(&states).expect("strings"));
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {INCIDENT_COLUMNS} FROM incidents
                 WHERE (?1 IS NULL OR state IN (SELECT value FROM json_each(?1)))
                   AND (?2 IS NULL OR kind = ?2) AND (?3 IS NULL OR check_id = ?3)
                 ORDER BY id DESC LIMIT ?4"
            ))?;
            let rows = stmt
                .query_map(
                    params![
                        states_json,
                        q.kind.map(|k| k.as_str()),
                        q.check_id,
                        q.limit.clamp(1, 1000) as i64
                    ],
                    incident_row,
                )?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    /// One incident with its timeline.
    pub async fn incident(&self, id: u64) -> Result<Option<Incident>, StorageError> {
        self.read(move |conn| incident_by_id(conn, id)).await
    }

    /// The incidents of a check still open or acknowledged, with timelines.
    pub async fn active_incidents(&self, check_id: String) -> Result<Vec<Incident>, StorageError> {
        self.read(move |conn| {
            let ids = conn
                .prepare_cached("SELECT id FROM incidents WHERE check_id = ?1 AND state != 'resolved' ORDER BY id")?
                .query_map([&check_id], |r| r.get::<_, i64>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            let mut out = Vec::new();
            for id in ids {
                if let Some(i) = incident_by_id(conn, id as u64)? {
                    out.push(i);
                }
            }
            Ok(out)
        })
        .await
    }

    /// Resolves every open or acknowledged incident of a check that is gone
    /// (deleted), in one transaction, each with a `resolved` timeline entry
    /// saying `note`. Returns them as stored, for the last alert.
    pub async fn resolve_incidents_of(
        &self,
        check_id: String,
        at_ms: i64,
        note: String,
    ) -> Result<Vec<Incident>, StorageError> {
        self.write(move |conn| {
            let ids = conn
                .prepare_cached("SELECT id FROM incidents WHERE check_id = ?1 AND state != 'resolved' ORDER BY id")?
                .query_map([&check_id], |r| r.get::<_, i64>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            let mut out = Vec::new();
            for id in ids {
                let entry = TimelineEntry { at_ms, round: None, event: "resolved".into(), verdict: None, note: note.clone() };
                add_event(conn, id as u64, &entry)?;
                conn.prepare_cached("UPDATE incidents SET state = 'resolved', resolved_at_ms = ?2 WHERE id = ?1")?
                    .execute(params![id, at_ms])?;
                if let Some(i) = incident_by_id(conn, id as u64)? {
                    out.push(i);
                }
            }
            Ok(out)
        })
        .await
    }

    /// The checks that have open or acknowledged incidents.
    pub async fn checks_with_active_incidents(&self) -> Result<Vec<String>, StorageError> {
        self.read(|conn| {
            let ids = conn
                .prepare_cached("SELECT DISTINCT check_id FROM incidents WHERE state != 'resolved' ORDER BY check_id")?
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ids)
        })
        .await
    }

    /// Acknowledges an open incident (idempotent; a resolved one is refused).
    pub async fn acknowledge(
        &self,
        id: u64,
        by: Option<String>,
        at_ms: i64,
    ) -> Result<AckOutcome, StorageError> {
        self.write(move |conn| {
            let Some(found) = incident_by_id(conn, id)? else {
                return Ok(AckOutcome::NotFound);
            };
            match found.state {
                IncidentState::Acknowledged => return Ok(AckOutcome::AlreadyAcknowledged(found)),
                IncidentState::Resolved => return Ok(AckOutcome::Resolved(found)),
                IncidentState::Open => {}
            }
            conn.prepare_cached(
                "UPDATE incidents SET state = 'acknowledged', acked_at_ms = ?2, acked_by = ?3 WHERE id = ?1 AND state = 'open'",
            )?
            .execute(params![id as i64, at_ms, by])?;
            let who = by.as_deref().unwrap_or("someone");
            add_event(
                conn,
                id,
                &TimelineEntry {
                    at_ms,
                    round: None,
                    event: "acknowledged".into(),
                    verdict: None,
                    note: format!("acknowledged by {who}"),
                },
            )?;
            let stored = incident_by_id(conn, id)?.ok_or_else(|| corrupt(format!("incident {id} vanished")))?;
            Ok(AckOutcome::Acknowledged(stored))
        })
        .await
    }

    /// The reports of one round of a check, in the order they were received.
    pub async fn round_reports(
        &self,
        check_id: String,
        round: u64,
    ) -> Result<Vec<ReportRow>, StorageError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {REPORT_COLUMNS} FROM reports WHERE check_id = ?1 AND round = ?2 AND out_of_window IS NULL ORDER BY received_at, probe_id"
            ))?;
            let rows = stmt.query_map(params![check_id, round as i64], report_row)?.collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    /// A region's latest delivered (not failed) reports of a check, oldest
    /// first: what warms the learned baselines after a restart.
    pub async fn recent_delivered(
        &self,
        check_id: String,
        region: String,
        limit: u32,
    ) -> Result<Vec<ReportRow>, StorageError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {REPORT_COLUMNS} FROM reports
                 WHERE check_id = ?1 AND region = ?2 AND outcome != 'failed' AND round > 0 AND out_of_window IS NULL
                 ORDER BY started_at DESC, probe_id DESC LIMIT ?3"
            ))?;
            let mut rows = stmt
                .query_map(params![check_id, region, limit as i64], report_row)?
                .collect::<Result<Vec<_>, _>>()?;
            rows.reverse();
            Ok(rows)
        })
        .await
    }

    /// Deletes verdicts decided before `cutoff_ms` (the same retention as reports).
    pub async fn prune_verdicts(&self, cutoff_ms: i64) -> Result<usize, StorageError> {
        self.delete_in_chunks(
            "DELETE FROM verdicts WHERE rowid IN (SELECT rowid FROM verdicts WHERE decided_at_ms < ?1 LIMIT ?2)",
            cutoff_ms,
        )
        .await
    }
}

#[cfg(test)]
mod judge_tests {
    use super::*;
    use crate::judge::{IncidentKind, Severity, VerdictKind};

    fn verdict(round: u64, kind: VerdictKind) -> Verdict {
        Verdict {
            check_id: "corp".into(),
            round,
            round_start_ms: round as i64 * 1000,
            decided_at_ms: round as i64 * 1000 + 500,
            verdict: kind,
            quorum: 2,
            regions: Vec::new(),
            note: format!("{} in round {round}", kind.as_str()),
        }
    }

    fn outage(round: u64) -> IncidentChange {
        IncidentChange::Open(Incident {
            id: 0,
            check_id: "corp".into(),
            kind: IncidentKind::Outage,
            severity: Severity::Critical,
            state: IncidentState::Open,
            key: String::new(),
            regions: vec!["eu-west".into(), "us-east".into()],
            step: Some("smtp.rcpt_to".into()),
            class: Some("permanent".into()),
            opened_at_ms: round as i64 * 1000 + 500,
            first_round: round,
            last_round: round,
            acknowledged_at_ms: None,
            acknowledged_by: None,
            resolved_at_ms: None,
            summary: "all regions fail at smtp.rcpt_to".into(),
            timeline: vec![TimelineEntry {
                at_ms: round as i64 * 1000 + 500,
                round: Some(round),
                event: "opened".into(),
                verdict: Some(VerdictKind::Down),
                note: "down".into(),
            }],
        })
    }

    #[tokio::test]
    async fn a_round_is_stored_once_with_its_incident_and_never_a_second_open_one() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        let first = s
            .store_round(verdict(1, VerdictKind::Down), vec![outage(1)])
            .await
            .unwrap();
        assert!(first.stored);
        let (event, opened) = &first.events[0];
        assert_eq!(
            (*event, opened.id, opened.timeline.len()),
            (AlertEventKind::Opened, 1, 1)
        );
        let again = s
            .store_round(verdict(1, VerdictKind::Up), vec![outage(1)])
            .await
            .unwrap();
        assert_eq!(
            again,
            RoundStored {
                stored: false,
                events: vec![]
            },
            "decided once"
        );
        // The judge asking to open it again (say it lost track) adds a line, not an incident.
        let dup = s
            .store_round(verdict(2, VerdictKind::Down), vec![outage(2)])
            .await
            .unwrap();
        assert!(dup.events.is_empty());
        let all = s
            .list_incidents(IncidentQuery {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].last_round, 2);
        // And SQL itself refuses a second active one.
        let sneaky = s
            .write(|conn| {
                conn.execute(
                    "INSERT INTO incidents (check_id, kind, key, severity, state, opened_at_ms, first_round, last_round, summary, regions)
                     VALUES ('corp', 'outage', '', 'critical', 'acknowledged', 0, 3, 3, '', '[]')",
                    [],
                )?;
                Ok(())
            })
            .await;
        assert!(sneaky.is_err(), "the partial unique index holds");
        let page = s
            .query_verdicts(VerdictQuery {
                check_id: Some("corp".into()),
                limit: 1,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(page.verdicts[0].round, 2, "newest first");
        assert_eq!(page.verdicts[0].verdict, VerdictKind::Down);
        let rest = s
            .query_verdicts(VerdictQuery {
                check_id: Some("corp".into()),
                limit: 1,
                after: page.next,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!((rest.verdicts[0].round, rest.next), (1, None));
    }

    #[tokio::test]
    async fn acknowledge_then_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        s.store_round(verdict(1, VerdictKind::Down), vec![outage(1)])
            .await
            .unwrap();
        assert_eq!(
            s.acknowledge(9, None, 5).await.unwrap(),
            AckOutcome::NotFound
        );
        let AckOutcome::Acknowledged(i) = s.acknowledge(1, Some("alice".into()), 5).await.unwrap()
        else {
            panic!("not acknowledged");
        };
        assert_eq!(
            (i.state, i.acknowledged_by.as_deref()),
            (IncidentState::Acknowledged, Some("alice"))
        );
        assert!(matches!(
            s.acknowledge(1, Some("bob".into()), 6).await.unwrap(),
            AckOutcome::AlreadyAcknowledged(_)
        ));
        let resolve = IncidentChange::Resolve {
            kind: IncidentKind::Outage,
            key: String::new(),
            entry: TimelineEntry {
                at_ms: 9000,
                round: Some(3),
                event: "resolved".into(),
                verdict: Some(VerdictKind::Up),
                note: "up again".into(),
            },
        };
        let done = s
            .store_round(verdict(3, VerdictKind::Up), vec![resolve])
            .await
            .unwrap();
        let (event, resolved) = &done.events[0];
        assert_eq!(
            (*event, resolved.state, resolved.resolved_at_ms),
            (
                AlertEventKind::Resolved,
                IncidentState::Resolved,
                Some(9000)
            )
        );
        let events: Vec<&str> = resolved.timeline.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(events, ["opened", "acknowledged", "resolved"]);
        assert!(matches!(
            s.acknowledge(1, None, 10).await.unwrap(),
            AckOutcome::Resolved(_)
        ));
        assert!(s.active_incidents("corp".into()).await.unwrap().is_empty());
        // A new outage may open now that the old one is resolved.
        let next = s
            .store_round(verdict(4, VerdictKind::Down), vec![outage(4)])
            .await
            .unwrap();
        assert_eq!(next.events[0].1.id, 2);
    }
}
// ───────────────────────── Hourly aggregates ─────────────────────────
//
// Raw reports are kept for `retention` (30 days by default); an SRE graphs
// a year. So every stored report is also folded into one row per check ×
// region × hour (by `started_at`), kept for `aggregate_retention`.
//
// The rollup is updated by the writer, in the same savepoint as the
// report's insert, and only when the insert was new — not by the pruner
// before it deletes. That way a replayed report is counted once, a report
// replayed hours late (an agent back from an outage) lands in its own
// hour, the aggregates exist from the first report on (the API never has
// to merge raw rows and rollups), and nothing has to re-read 30-day-old
// rows. The cost is one primary-key lookup and one upsert per report in a
// batch that is already open; `make bench` measures ingest with it on.

/// Upper bounds (ms) of the round-trip histogram's buckets; a last bucket
/// takes everything slower. Fixed, so hours can be merged into days.
pub const RTT_BUCKETS_MS: [f64; 11] = [
    25.0, 50.0, 100.0, 250.0, 500.0, 1_000.0, 2_500.0, 5_000.0, 10_000.0, 30_000.0, 60_000.0,
];

/// Length of one aggregate bucket.
pub const HOUR_MS: i64 = 3_600_000;

const AGGREGATE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS report_hours (
    check_id       TEXT NOT NULL,
    region         TEXT NOT NULL,
    hour           INTEGER NOT NULL,
    ok             INTEGER NOT NULL,
    degraded       INTEGER NOT NULL,
    failed         INTEGER NOT NULL,
    rtt_count      INTEGER NOT NULL,
    rtt_sum        REAL NOT NULL,
    rtt_min        REAL,
    rtt_max        REAL,
    rtt_buckets    TEXT NOT NULL,
    delivery_count INTEGER NOT NULL,
    delivery_sum   REAL NOT NULL,
    delivery_min   REAL,
    delivery_max   REAL,
    PRIMARY KEY (check_id, region, hour)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS report_hours_by_hour ON report_hours (hour);
";

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
    fn add(&mut self, ms: Option<f64>) {
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
}

impl HourAggregate {
    fn empty(check_id: &str, region: &str, hour_ms: i64) -> HourAggregate {
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
        }
    }

    /// Folds one report in.
    fn add(&mut self, outcome: &str, rtt_ms: Option<f64>, delivery_ms: Option<f64>) {
        match outcome {
            "ok" => self.ok += 1,
            "degraded" => self.degraded += 1,
            // `Outcome` has three values; anything else is not a success.
            _ => self.failed += 1,
        }
        if let Some(ms) = rtt_ms.filter(|m| m.is_finite()) {
            let i = RTT_BUCKETS_MS
                .iter()
                .position(|&le| ms <= le)
                .unwrap_or(RTT_BUCKETS_MS.len());
            self.rtt_buckets[i] += 1;
        }
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
        let (min, max) = (self.rtt.min_ms?, self.rtt.max_ms?);
        let total: u64 = self.rtt_buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut seen = 0u64;
        for (i, &n) in self.rtt_buckets.iter().enumerate() {
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
}

/// Which aggregates to read.
#[derive(Debug, Clone, Default)]
pub struct AggregateQuery {
    pub check_id: String,
    pub region: Option<String>,
    /// Hours starting at or after the hour containing this (epoch ms).
    pub since_ms: Option<i64>,
}

/// The start of the hour containing `ms`.
pub fn hour_of(ms: i64) -> i64 {
    ms.div_euclid(HOUR_MS) * HOUR_MS
}

const AGGREGATE_COLUMNS: &str =
    "check_id, region, hour, ok, degraded, failed, rtt_count, rtt_sum, rtt_min, rtt_max,
    rtt_buckets, delivery_count, delivery_sum, delivery_min, delivery_max";

fn aggregate_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<HourAggregate> {
    let text: String = r.get(10)?;
    let mut rtt_buckets = [0u64; RTT_BUCKETS_MS.len() + 1];
    for (slot, n) in rtt_buckets.iter_mut().zip(text.split(',')) {
        *slot = n.parse().unwrap_or(0);
    }
    Ok(HourAggregate {
        check_id: r.get(0)?,
        region: r.get(1)?,
        hour_ms: r.get(2)?,
        ok: r.get::<_, i64>(3)? as u64,
        degraded: r.get::<_, i64>(4)? as u64,
        failed: r.get::<_, i64>(5)? as u64,
        rtt: TimingStats {
            count: r.get::<_, i64>(6)? as u64,
            sum_ms: r.get(7)?,
            min_ms: r.get(8)?,
            max_ms: r.get(9)?,
        },
        rtt_buckets,
        delivery: TimingStats {
            count: r.get::<_, i64>(11)? as u64,
            sum_ms: r.get(12)?,
            min_ms: r.get(13)?,
            max_ms: r.get(14)?,
        },
    })
}

/// Folds a newly stored report into its hour. Runs on the writer, inside
/// the report's savepoint: the rollup and the row commit (or not) together.
fn add_to_aggregate(conn: &Connection, row: &ReportRow) -> Result<(), StorageError> {
    let hour = hour_of(row.started_at_ms);
    let mut agg = conn
        .prepare_cached(&format!(
            "SELECT {AGGREGATE_COLUMNS} FROM report_hours WHERE check_id = ?1 AND region = ?2 AND hour = ?3"
        ))?
        .query_row(params![row.check_id, row.region, hour], aggregate_row)
        .optional()?
        .unwrap_or_else(|| HourAggregate::empty(&row.check_id, &row.region, hour));
    agg.add(&row.outcome, row.rtt_ms, row.delivery_ms);
    Ok(write_aggregate(conn, &agg)?)
}

fn write_aggregate(conn: &Connection, a: &HourAggregate) -> rusqlite::Result<()> {
    let buckets = a
        .rtt_buckets
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    conn.prepare_cached(&format!(
        "INSERT OR REPLACE INTO report_hours ({AGGREGATE_COLUMNS})
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
    ))?
    .execute(params![
        a.check_id,
        a.region,
        a.hour_ms,
        a.ok as i64,
        a.degraded as i64,
        a.failed as i64,
        a.rtt.count as i64,
        a.rtt.sum_ms,
        a.rtt.min_ms,
        a.rtt.max_ms,
        buckets,
        a.delivery.count as i64,
        a.delivery.sum_ms,
        a.delivery.min_ms,
        a.delivery.max_ms
    ])?;
    Ok(())
}

/// Creates the aggregate table; when it is new on a database that already
/// holds reports (an upgrade), rolls those reports up once, so the first
/// month after an upgrade is not a hole in the year.
fn open_aggregates(conn: &Connection) -> rusqlite::Result<()> {
    let existed: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'report_hours'",
        [],
        |r| r.get(0),
    )?;
    conn.execute_batch(AGGREGATE_SCHEMA)?;
    if existed {
        return Ok(());
    }
    let mut hours: std::collections::HashMap<(String, String, i64), HourAggregate> =
        std::collections::HashMap::new();
    let mut stmt = conn.prepare(
        "SELECT check_id, region, started_at, outcome, rtt_ms, delivery_ms FROM reports",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let (check, region, started): (String, String, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
        let hour = hour_of(started);
        hours
            .entry((check.clone(), region.clone(), hour))
            .or_insert_with(|| HourAggregate::empty(&check, &region, hour))
            .add(&r.get::<_, String>(3)?, r.get(4)?, r.get(5)?);
    }
    drop(rows);
    drop(stmt);
    if hours.is_empty() {
        return Ok(());
    }
    let tx = conn.unchecked_transaction()?;
    for a in hours.values() {
        write_aggregate(&tx, a)?;
    }
    tx.commit()?;
    tracing::info!(
        hours = hours.len(),
        "rolled up the reports stored before aggregates existed"
    );
    Ok(())
}

impl Storage {
    /// Hourly aggregates of one check, oldest hour first (then by region).
    pub async fn aggregates(&self, q: AggregateQuery) -> Result<Vec<HourAggregate>, StorageError> {
        self.read(move |conn| {
            let since = q.since_ms.map(hour_of);
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {AGGREGATE_COLUMNS} FROM report_hours
                 WHERE check_id = ?1 AND (?2 IS NULL OR region = ?2) AND (?3 IS NULL OR hour >= ?3)
                 ORDER BY hour, region"
            ))?;
            let rows = stmt
                .query_map(params![q.check_id, q.region, since], aggregate_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    /// Deletes the aggregates of hours that ended before `cutoff_ms`, in
    /// small transactions. Returns how many went.
    pub async fn prune_aggregates(&self, cutoff_ms: i64) -> Result<usize, StorageError> {
        // An hour has ended before the cutoff when hour + HOUR_MS <= cutoff.
        self.delete_in_chunks(
            "DELETE FROM report_hours WHERE (check_id, region, hour) IN
             (SELECT check_id, region, hour FROM report_hours WHERE hour <= ?1 LIMIT ?2)",
            cutoff_ms - HOUR_MS,
        )
        .await
    }
}

// ─────────────────────── end of hourly aggregates ───────────────────────

// ────────────── Numbered migrations; the audit log; API tokens ──────────────
//
// Version 1 is everything above (tables created with IF NOT EXISTS, and
// the in-place `request_id` and aggregate upgrades), which every database
// has once opened. Later schema changes are numbered: each runs once, in
// order, in its own transaction, which also sets `PRAGMA user_version`, so
// a crash mid-migration leaves the database at the previous version. Append
// new ones; never edit one that has shipped.

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        2,
        "audit log",
        "CREATE TABLE audit_log (
        seq       INTEGER PRIMARY KEY,
        at_ms     INTEGER NOT NULL,
        actor     TEXT NOT NULL,
        role      TEXT NOT NULL,
        source    TEXT,
        action    TEXT NOT NULL,
        object    TEXT NOT NULL,
        object_id TEXT NOT NULL,
        detail    TEXT
    );
    CREATE INDEX audit_log_by_age ON audit_log (at_ms);",
    ),
    (
        3,
        "API tokens",
        "CREATE TABLE api_tokens (
        name         TEXT PRIMARY KEY,
        role         TEXT NOT NULL,
        token_sha256 TEXT NOT NULL,
        created_at   INTEGER NOT NULL,
        created_by   TEXT NOT NULL,
        revoked_at   INTEGER
    );",
    ),
    (
        4,
        "round sanity: reports of a round far from the coordinator's clock",
        "ALTER TABLE reports ADD COLUMN out_of_window TEXT;",
    ),
];

/// Applies the numbered migrations this database has not had yet.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let mut version = found.max(1);
    for (number, what, sql) in MIGRATIONS {
        if *number <= version {
            continue;
        }
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", number)?;
        tx.commit()?;
        tracing::debug!(migration = number, what, "storage: schema migrated");
        version = *number;
    }
    if found < version {
        conn.pragma_update(None, "user_version", version)?;
    }
    Ok(())
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

impl Storage {
    /// Appends one entry; answers once it is committed.
    pub async fn append_audit(&self, e: AuditEntry) -> Result<u64, StorageError> {
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO audit_log (at_ms, actor, role, source, action, object, object_id, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![e.at_ms, e.actor, e.role, e.source, e.action, e.object, e.object_id, e.detail])?;
            Ok(conn.last_insert_rowid() as u64)
        })
        .await
    }

    /// The audit log, newest first, filtered and paged.
    pub async fn query_audit(&self, q: AuditQuery) -> Result<AuditPage, StorageError> {
        self.read(move |conn| {
            let limit = q.limit.clamp(1, 1000) as i64;
            let mut stmt = conn.prepare_cached(
                "SELECT seq, at_ms, actor, role, source, action, object, object_id, detail FROM audit_log
                 WHERE (?1 IS NULL OR actor = ?1) AND (?2 IS NULL OR object = ?2) AND (?3 IS NULL OR object_id = ?3)
                   AND (?4 IS NULL OR at_ms >= ?4) AND (?5 IS NULL OR at_ms < ?5) AND (?6 IS NULL OR seq < ?6)
                 ORDER BY seq DESC LIMIT ?7",
            )?;
            let mut entries = stmt
                .query_map(
                    params![q.actor, q.object, q.object_id, q.since_ms, q.until_ms, q.before_seq.map(|s| s as i64), limit + 1],
                    |r| {
                        Ok(AuditEntry {
                            seq: r.get::<_, i64>(0)? as u64,
                            at_ms: r.get(1)?,
                            actor: r.get(2)?,
                            role: r.get(3)?,
                            source: r.get(4)?,
                            action: r.get(5)?,
                            object: r.get(6)?,
                            object_id: r.get(7)?,
                            detail: r.get(8)?,
                        })
                    },
                )?
                .collect::<Result<Vec<_>, _>>()?;
            let next = if entries.len() as i64 > limit {
                entries.truncate(limit as usize);
                entries.last().map(|e| e.seq)
            } else {
                None
            };
            Ok(AuditPage { entries, next })
        })
        .await
    }

    /// Deletes audit entries older than `cutoff_ms`; returns how many.
    pub async fn prune_audit(&self, cutoff_ms: i64) -> Result<usize, StorageError> {
        self.delete_in_chunks(
            "DELETE FROM audit_log WHERE seq IN (SELECT seq FROM audit_log WHERE at_ms < ?1 LIMIT ?2)",
            cutoff_ms,
        )
        .await
    }
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

impl Storage {
    /// Inserts or replaces (a revoked name reused) an API token.
    pub async fn put_api_token(&self, t: StoredToken) -> Result<(), StorageError> {
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO api_tokens (name, role, token_sha256, created_at, created_by, revoked_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (name) DO UPDATE SET role = ?2, token_sha256 = ?3, created_at = ?4, created_by = ?5, revoked_at = ?6",
                params![t.name, t.role, t.token_sha256, t.created_at_ms, t.created_by, t.revoked_at_ms],
            )?;
            Ok(())
        })
        .await
    }

    /// Every API token made through the API, revoked ones included.
    pub async fn load_api_tokens(&self) -> Result<Vec<StoredToken>, StorageError> {
        self.read(|conn| {
            let mut stmt = conn.prepare(
                "SELECT name, role, token_sha256, created_at, created_by, revoked_at FROM api_tokens ORDER BY name",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(StoredToken {
                    name: r.get(0)?,
                    role: r.get(1)?,
                    token_sha256: r.get(2)?,
                    created_at_ms: r.get(3)?,
                    created_by: r.get(4)?,
                    revoked_at_ms: r.get(5)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}

#[cfg(test)]
mod audit_tests {
    use super::*;

    fn entry(at_ms: i64, actor: &str, action: &str) -> AuditEntry {
        AuditEntry {
            seq: 0,
            at_ms,
            actor: actor.into(),
            role: "admin".into(),
            source: Some("127.0.0.1".into()),
            action: action.into(),
            object: "check".into(),
            object_id: "corp".into(),
            detail: None,
        }
    }

    #[tokio::test]
    async fn the_audit_log_pages_newest_first_filters_and_prunes() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        for (i, actor) in ["admin", "alice", "admin", "admin"].iter().enumerate() {
            s.append_audit(entry(1000 * (i as i64 + 1), actor, "changed"))
                .await
                .unwrap();
        }
        let page = |q: AuditQuery| {
            let s = &s;
            async move { s.query_audit(q).await.unwrap() }
        };
        let first = page(AuditQuery {
            limit: 2,
            ..Default::default()
        })
        .await;
        assert_eq!(
            first.entries.iter().map(|e| e.at_ms).collect::<Vec<_>>(),
            [4000, 3000]
        );
        let second = page(AuditQuery {
            limit: 2,
            before_seq: first.next,
            ..Default::default()
        })
        .await;
        assert_eq!(
            second.entries.iter().map(|e| e.at_ms).collect::<Vec<_>>(),
            [2000, 1000]
        );
        assert_eq!(second.next, None);
        let alice = page(AuditQuery {
            limit: 10,
            actor: Some("alice".into()),
            ..Default::default()
        })
        .await;
        assert_eq!(alice.entries.len(), 1);
        assert_eq!(alice.entries[0].source.as_deref(), Some("127.0.0.1"));
        assert_eq!(s.prune_audit(2500).await.unwrap(), 2);
        assert_eq!(
            page(AuditQuery {
                limit: 10,
                ..Default::default()
            })
            .await
            .entries
            .len(),
            2
        );
    }

    #[tokio::test]
    async fn a_version_1_database_gains_the_audit_log_once() {
        let dir = tempfile::tempdir().unwrap();
        {
            // What a database written before numbered migrations looks like.
            let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
        }
        for _ in 0..2 {
            let s = Storage::open(dir.path()).unwrap();
            s.append_audit(entry(1, "admin", "created")).await.unwrap();
            s.close().await;
        }
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.last().unwrap().0);
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM audit_log", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            n, 2,
            "reopening neither re-ran the migration nor lost an entry"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report(id: &str, check: &str, region: &str, round: u64, started: i64) -> ReportRow {
        ReportRow {
            probe_id: id.into(),
            check_id: check.into(),
            revision: 1,
            region: region.into(),
            agent: format!("{region}-1"),
            round,
            started_at_ms: started,
            outcome: "ok".into(),
            rtt_ms: Some(12.5),
            delivery_ms: Some(3.0),
            failure_step: None,
            failure_class: None,
            report_json: json!({"probe_id": id}).to_string(),
            received_at_ms: started + 100,
            request_id: None,
            out_of_window: None,
        }
    }

    #[tokio::test]
    async fn a_replayed_report_is_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        assert_eq!(
            s.insert_report(report("p1", "c", "eu", 1, 1000))
                .await
                .unwrap(),
            Inserted::New
        );
        assert_eq!(
            s.insert_report(report("p1", "c", "eu", 1, 1000))
                .await
                .unwrap(),
            Inserted::Duplicate
        );
        assert_eq!(s.count_reports().await.unwrap(), 1);
    }

    #[tokio::test]
    async fn many_reports_in_flight_are_batched_and_each_answered() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        let mut pending = Vec::new();
        for i in 0..3000 {
            pending.push(
                s.submit_report(report(&format!("p{i}"), "c", "eu", i, i as i64))
                    .await
                    .unwrap(),
            );
        }
        for p in pending {
            assert_eq!(p.await.unwrap().unwrap(), Inserted::New);
        }
        assert_eq!(s.count_reports().await.unwrap(), 3000);
    }

    #[tokio::test]
    async fn results_page_newest_first_and_filter() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        for i in 0..5 {
            s.insert_report(report(&format!("eu{i}"), "c", "eu", i, 1000 * i as i64))
                .await
                .unwrap();
            s.insert_report(report(&format!("us{i}"), "c", "us", i, 1000 * i as i64 + 1))
                .await
                .unwrap();
        }
        let q = ResultQuery {
            check_id: Some("c".into()),
            region: Some("eu".into()),
            limit: 2,
            ..Default::default()
        };
        let p1 = s.query_results(q.clone()).await.unwrap();
        assert_eq!(
            p1.rows
                .iter()
                .map(|r| r.probe_id.as_str())
                .collect::<Vec<_>>(),
            ["eu4", "eu3"]
        );
        let p2 = s
            .query_results(ResultQuery {
                after: p1.next,
                ..q.clone()
            })
            .await
            .unwrap();
        assert_eq!(
            p2.rows
                .iter()
                .map(|r| r.probe_id.as_str())
                .collect::<Vec<_>>(),
            ["eu2", "eu1"]
        );
        let since = s
            .query_results(ResultQuery {
                since_ms: Some(3000),
                region: None,
                ..q
            })
            .await
            .unwrap();
        assert_eq!(
            since
                .rows
                .iter()
                .map(|r| r.probe_id.as_str())
                .collect::<Vec<_>>(),
            ["us4", "eu4"]
        );
        let (round, rows) = s.latest_round("c".into()).await.unwrap().unwrap();
        assert_eq!((round, rows.len()), (4, 2));
    }

    #[tokio::test]
    async fn a_page_ends_at_its_byte_budget_and_the_cursor_takes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        for i in 0..10u64 {
            let mut r = report(&format!("r{i}"), "c", "eu", i, 1000 * i as i64);
            r.report_json = format!(r#"{{"pad":"{}"}}"#, "x".repeat(1000));
            s.insert_report(r).await.unwrap();
        }
        let q = ResultQuery {
            limit: 1000,
            max_bytes: Some(2500),
            ..Default::default()
        };
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = s
                .query_results(ResultQuery {
                    after: after.clone(),
                    ..q.clone()
                })
                .await
                .unwrap();
            // Rows are added until the page passes 2,500 bytes: 3 of ~1 KB.
            assert!(page.rows.len() <= 3, "{} rows", page.rows.len());
            seen.extend(page.rows.iter().map(|r| r.probe_id.clone()));
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        let expected: Vec<String> = (0..10).rev().map(|i| format!("r{i}")).collect();
        assert_eq!(seen, expected, "every row exactly once, newest first");
    }

    #[tokio::test]
    async fn pruning_removes_old_reports_only() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        s.insert_report(report("old", "c", "eu", 1, 0))
            .await
            .unwrap();
        s.insert_report(report("new", "c", "eu", 2, 10_000))
            .await
            .unwrap();
        assert_eq!(s.prune(5_000).await.unwrap(), 1);
        assert_eq!(s.count_reports().await.unwrap(), 1);
    }

    #[tokio::test]
    async fn everything_acked_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Storage::open(dir.path()).unwrap();
            s.insert_report(report("p1", "c", "eu", 1, 1))
                .await
                .unwrap();
            s.close().await;
            assert!(matches!(
                s.insert_report(report("p2", "c", "eu", 1, 1)).await,
                Err(StorageError::Closed)
            ));
        }
        let s = Storage::open(dir.path()).unwrap();
        assert_eq!(s.count_reports().await.unwrap(), 1);
    }
}
