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
PRAGMA user_version = 1;
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
        migrate_request_ids(&conn).map_err(open_err)?;
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
                 rtt_ms, delivery_ms, failure_step, failure_class, report_json, received_at, request_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
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
                row.request_id
            ])?;
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
        let table = serde_json::to_string(&c.spec.table).expect("a JSON value serializes");
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
                let table = serde_json::from_str(&json).map_err(|e| corrupt(format!("check {id}: {e}")))?;
                let regions = serde_json::from_str(&regions).map_err(|e| corrupt(format!("check {id} regions: {e}")))?;
                out.push(StoredCheck {
                    spec: CheckSpec { name: id, table, interval: Duration::from_millis(interval_ms as u64), regions },
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
            let rows = stmt
                .query_map(
                    params![
                        q.check_id,
                        q.region,
                        q.since_ms,
                        q.until_ms,
                        after_ms,
                        after_id,
                        limit + 1
                    ],
                    report_row,
                )?
                .collect::<Result<Vec<_>, _>>()?;
            let mut rows = rows;
            let next = if rows.len() as i64 > limit {
                rows.truncate(limit as usize);
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
                .query_row("SELECT MAX(round) FROM reports WHERE check_id = ?1 AND round > 0", [&check_id], |r| r.get(0))
                .optional()?
                .flatten();
            let Some(round) = round else { return Ok(None) };
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {REPORT_COLUMNS} FROM reports WHERE check_id = ?1 AND round = ?2 ORDER BY region, started_at"
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
        let mut total = 0;
        loop {
            let n = self
                .write(move |conn| {
                    Ok(conn.execute(
                        "DELETE FROM reports WHERE probe_id IN (SELECT probe_id FROM reports WHERE received_at < ?1 LIMIT ?2)",
                        params![cutoff_ms, PRUNE_CHUNK as i64],
                    )?)
                })
                .await?;
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
    failure_step, failure_class, report_json, received_at, request_id";

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
