//! The spool: the agent's local SQLite database (rusqlite, bundled, WAL).
//!
//! Three tables, one file:
//!
//! - `reports`: every report is written here *before* it is sent and
//!   deleted only when the coordinator acknowledges it (stored, or rejected
//!   with a reason). Oldest first by `seq`. At most `max` rows: past that the
//!   oldest are dropped, with one warning line naming them.
//! - `assignments`: the checks this agent was last given, so an agent
//!   restarted while the coordinator is down resumes its checks.
//! - `probe_log`: append-only, one row per probe run (probe id, check id,
//!   revision, round, outcome, start time in epoch ms), written in the same
//!   transaction as the report. It is the agent's own account of what it
//!   ran, to compare with what the coordinator stored. Rows older than
//!   [`PROBE_LOG_RETENTION`] are pruned.
//!
//! SQLite calls block, so every method runs on tokio's blocking pool; the
//! connection sits behind a `std::sync::Mutex` that is never held across an
//! `.await`.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};

use rusqlite::{Connection, OptionalExtension, params};

/// How long the probe log keeps a row.
pub const PROBE_LOG_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// The spool's own failures (disk full, corrupt file): ours, not a server's.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Sqlite { path: String, source: rusqlite::Error },
    #[error("spool {path}: the database was written by a newer mailloop-agent (schema {found}, this agent knows {SCHEMA_VERSION})")]
    NewerSchema { path: String, found: i64 },
    #[error("spool {path} is in use by another mailloop-agent (lock file {lock})")]
    InUse { path: String, lock: String },
    #[error("cannot create the spool directory {dir}: {source}")]
    CreateDir { dir: String, source: std::io::Error },
    #[error("spool lock file {lock}: {source}")]
    Lock { lock: String, source: std::io::Error },
    #[error("spool: a blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

const SCHEMA_VERSION: i64 = 1;

/// A report waiting for its acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpooledReport {
    pub probe_id: String,
    pub check_id: String,
    pub revision: u64,
    pub round: u64,
    /// The full `ProbeReport` as JSON (the `--output json` contract).
    pub report_json: String,
    /// The on-demand run (RunNow) this answers, with round 0; None for a
    /// scheduled round.
    pub request_id: Option<String>,
}

/// One check as assigned by the coordinator, as kept in the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignedCheck {
    pub check_id: String,
    pub revision: u64,
    /// The `[[check]]` table as JSON, passwords as references.
    pub check_json: String,
    pub interval_ms: u64,
    pub phase_ms: u64,
}

/// One row of the probe log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeRun {
    pub probe_id: String,
    pub check_id: String,
    pub revision: u64,
    pub round: u64,
    pub outcome: String,
    /// Unix epoch milliseconds.
    pub started_ms: i64,
}

/// The spool, cheap to clone (all clones share one connection).
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Mutex<Inner>>,
    /// `<spool>.lock`, locked for as long as the spool is open: two agents
    /// on one spool would run every check twice and send each other's reports.
    _lock: Arc<std::fs::File>,
    path: Arc<str>,
    /// Woken whenever a report is added (the sender waits on it).
    pushed: Arc<Notify>,
    /// Reports waiting, for the heartbeat and the shutdown flush.
    waiting: watch::Sender<u64>,
}

struct Inner {
    conn: Connection,
    /// Rows in `reports`, kept here so a push needs no COUNT(*).
    len: u64,
    max: u64,
}

impl Spool {
    /// Opens (creating if needed) the spool at `path`, and its directory
    /// (mode 0700: reports name servers, mailboxes and replies) as the
    /// coordinator creates its data_dir. Blocking: call at start-up, before
    /// the runtime is busy.
    pub fn open(path: &Path, max: u64) -> Result<Spool, SpoolError> {
        let shown: Arc<str> = path.display().to_string().into();
        create_dir(path)?;
        let lock = lock(path)?;
        let err = |source| SpoolError::Sqlite { path: shown.to_string(), source };
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
        // WAL: readers (a test, an operator with sqlite3) never block the
        // agent. FULL: a report the agent said it spooled survives a power cut.
        conn.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(err)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(err)?;
        if version > SCHEMA_VERSION {
            return Err(SpoolError::NewerSchema { path: shown.to_string(), found: version });
        }
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS reports (
                 seq         INTEGER PRIMARY KEY AUTOINCREMENT,
                 probe_id    TEXT    NOT NULL UNIQUE,
                 check_id    TEXT    NOT NULL,
                 revision    INTEGER NOT NULL,
                 round       INTEGER NOT NULL,
                 report_json TEXT    NOT NULL,
                 spooled_ms  INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS assignments (
                 check_id    TEXT    PRIMARY KEY,
                 revision    INTEGER NOT NULL,
                 check_json  TEXT    NOT NULL,
                 interval_ms INTEGER NOT NULL,
                 phase_ms    INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS probe_log (
                 seq         INTEGER PRIMARY KEY AUTOINCREMENT,
                 probe_id    TEXT    NOT NULL,
                 check_id    TEXT    NOT NULL,
                 revision    INTEGER NOT NULL,
                 round       INTEGER NOT NULL,
                 outcome     TEXT    NOT NULL,
                 started_ms  INTEGER NOT NULL
             );
             CREATE INDEX IF NOT EXISTS probe_log_started ON probe_log (started_ms);
             CREATE TABLE IF NOT EXISTS credential (
                 configured_sha256 TEXT    PRIMARY KEY,
                 token             TEXT    NOT NULL,
                 saved_ms          INTEGER NOT NULL
             );
             PRAGMA user_version = 1;",
        )
        .map_err(err)?;
        add_request_id(&conn).map_err(err)?;
        let len: i64 = conn.query_row("SELECT COUNT(*) FROM reports", [], |r| r.get(0)).map_err(err)?;
        let len = len as u64;
        let (waiting, _) = watch::channel(len);
        Ok(Spool {
            inner: Arc::new(Mutex::new(Inner { conn, len, max: max.max(1) })),
            _lock: Arc::new(lock),
            path: shown,
            pushed: Arc::new(Notify::new()),
            waiting,
        })
    }

    /// Runs `f` on the connection, on the blocking pool.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Inner) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, SpoolError> {
        let inner = self.inner.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock cannot leave SQLite half-written
            // (transactions roll back), so a poisoned lock is still usable.
            let mut guard = inner.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard).map_err(|source| SpoolError::Sqlite { path: path.to_string(), source })
        })
        .await?
    }

    /// Caps the spool at `max` reports from now on (the coordinator's
    /// setting, when it gives one).
    pub async fn set_max(&self, max: u64) -> Result<(), SpoolError> {
        self.with(move |i| {
            i.max = max.max(1);
            Ok(())
        })
        .await
    }

    /// Stores a report and logs its run, in one transaction. Past the cap
    /// the oldest reports are dropped and named in one warning. Returns the
    /// number of reports now waiting.
    pub async fn push(&self, report: SpooledReport, outcome: &str, started_ms: i64) -> Result<u64, SpoolError> {
        let outcome = outcome.to_string();
        let (len, dropped, max) = self
            .with(move |i| {
                let now = now_ms();
                let tx = i.conn.transaction()?;
                let inserted = tx.execute(
                    "INSERT OR IGNORE INTO reports (probe_id, check_id, revision, round, report_json, spooled_ms, request_id)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![report.probe_id, report.check_id, report.revision as i64, report.round as i64, report.report_json, now, report.request_id],
                )?;
                tx.execute(
                    "INSERT INTO probe_log (probe_id, check_id, revision, round, outcome, started_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![report.probe_id, report.check_id, report.revision as i64, report.round as i64, outcome, started_ms],
                )?;
                let mut len = i.len + inserted as u64;
                let mut dropped = Vec::new();
                if len > i.max {
                    let excess = (len - i.max) as i64;
                    let mut stmt = tx.prepare(
                        "DELETE FROM reports WHERE seq IN (SELECT seq FROM reports ORDER BY seq LIMIT ?1)
                         RETURNING probe_id, check_id, round",
                    )?;
                    dropped = stmt
                        .query_map([excess], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?)))?
                        .collect::<rusqlite::Result<Vec<_>>>()?;
                    drop(stmt);
                    len -= dropped.len() as u64;
                }
                tx.commit()?;
                i.len = len;
                Ok((len, dropped, i.max))
            })
            .await?;
        if let Some((probe_id, check_id, round)) = dropped.first() {
            let more = match dropped.len() {
                1 => String::new(),
                n => format!(" and {} more", n - 1),
            };
            tracing::warn!(
                dropped = dropped.len(),
                "spool full ({max} unacknowledged reports): dropped the oldest, probe {probe_id} (check {check_id}, round {round}){more}; raise spool_max_reports or bring the coordinator back"
            );
        }
        self.waiting.send_replace(len);
        self.pushed.notify_one();
        Ok(len)
    }

    /// Up to `limit` waiting reports with `seq > after`, oldest first.
    pub async fn after(&self, after: i64, limit: usize) -> Result<Vec<(i64, SpooledReport)>, SpoolError> {
        self.with(move |i| {
            let mut stmt = i.conn.prepare_cached(
                "SELECT seq, probe_id, check_id, revision, round, report_json, request_id FROM reports WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            stmt.query_map(params![after, limit as i64], |r| {
                Ok((
                    r.get(0)?,
                    SpooledReport {
                        probe_id: r.get(1)?,
                        check_id: r.get(2)?,
                        revision: r.get::<_, i64>(3)? as u64,
                        round: r.get::<_, i64>(4)? as u64,
                        report_json: r.get(5)?,
                        request_id: r.get(6)?,
                    },
                ))
            })?
            .collect()
        })
        .await
    }

    /// Deletes an acknowledged (or rejected) report. False if it was not
    /// there (dropped by the cap, or acknowledged twice).
    pub async fn remove(&self, probe_id: String) -> Result<bool, SpoolError> {
        let len = self
            .with(move |i| {
                let n = i.conn.execute("DELETE FROM reports WHERE probe_id = ?1", [probe_id])?;
                i.len = i.len.saturating_sub(n as u64);
                Ok((n > 0).then_some(i.len))
            })
            .await?;
        if let Some(len) = len {
            self.waiting.send_replace(len);
        }
        Ok(len.is_some())
    }

    /// Deletes acknowledged (or rejected) reports in one transaction, for
    /// every ack that arrived together, without waiting for the disk
    /// (`synchronous = NORMAL` for this commit: no fsync; the next report
    /// pushed, committed with FULL, syncs it along). Returns how many were
    /// there. A deletion lost to a power cut, or made later than the ack,
    /// is safe: a report still here after a crash is sent again, and the
    /// coordinator stores it once. A kill -9 loses nothing (the commit is
    /// in the OS's hands); only reports are never lost, so pushes keep FULL.
    pub async fn remove_many(&self, probe_ids: Vec<String>) -> Result<usize, SpoolError> {
        if probe_ids.is_empty() {
            return Ok(0);
        }
        let (removed, len) = self
            .with(move |i| {
                i.conn.pragma_update(None, "synchronous", "NORMAL")?;
                let deleted: rusqlite::Result<usize> = (|| {
                    let tx = i.conn.transaction()?;
                    let mut removed = 0;
                    {
                        let mut delete = tx.prepare_cached("DELETE FROM reports WHERE probe_id = ?1")?;
                        for id in &probe_ids {
                            removed += delete.execute([id])?;
                        }
                    }
                    tx.commit()?;
                    Ok(removed)
                })();
                // Back to FULL whatever happened: a push must reach the disk.
                i.conn.pragma_update(None, "synchronous", "FULL")?;
                let removed: usize = deleted?;
                i.len = i.len.saturating_sub(removed as u64);
                Ok((removed, i.len))
            })
            .await?;
        if removed > 0 {
            self.waiting.send_replace(len);
        }
        Ok(removed)
    }

    /// Reports waiting for an acknowledgement.
    pub fn waiting(&self) -> u64 {
        *self.waiting.borrow()
    }

    /// Follows [`Spool::waiting`].
    pub fn watch_waiting(&self) -> watch::Receiver<u64> {
        self.waiting.subscribe()
    }

    /// Completes after the next [`Spool::push`] (or at once if one happened
    /// since the last call: a push is never missed).
    pub async fn pushed(&self) {
        self.pushed.notified().await
    }

    /// Keeps the token the coordinator rotated to (`agents rotate`), as
    /// the successor of the configured token of SHA-256 `configured`: the
    /// configured file may be read-only (a systemd credential), the spool
    /// is the agent's own state. Only the newest is kept.
    pub async fn save_rotated_token(&self, configured: String, token: String) -> Result<(), SpoolError> {
        self.with(move |i| {
            let tx = i.conn.transaction()?;
            tx.execute("DELETE FROM credential", [])?;
            tx.execute(
                "INSERT INTO credential (configured_sha256, token, saved_ms) VALUES (?1, ?2, ?3)",
                params![configured, token, now_ms()],
            )?;
            tx.commit()
        })
        .await
    }

    /// The rotated token that succeeds the configured token of SHA-256
    /// `configured`, if any (one saved for another configured token, after
    /// a new enrollment, is ignored).
    pub async fn rotated_token(&self, configured: String) -> Result<Option<String>, SpoolError> {
        self.with(move |i| {
            i.conn
                .query_row("SELECT token FROM credential WHERE configured_sha256 = ?1", [configured], |r| r.get(0))
                .optional()
        })
        .await
    }

    /// Remembers an assignment (added or changed).
    pub async fn save_assignment(&self, a: AssignedCheck) -> Result<(), SpoolError> {
        self.with(move |i| {
            i.conn.execute(
                "INSERT INTO assignments (check_id, revision, check_json, interval_ms, phase_ms) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (check_id) DO UPDATE SET revision = ?2, check_json = ?3, interval_ms = ?4, phase_ms = ?5",
                params![a.check_id, a.revision as i64, a.check_json, a.interval_ms as i64, a.phase_ms as i64],
            )?;
            Ok(())
        })
        .await
    }

    /// Forgets an assignment.
    pub async fn remove_assignment(&self, check_id: String) -> Result<(), SpoolError> {
        self.with(move |i| i.conn.execute("DELETE FROM assignments WHERE check_id = ?1", [check_id]).map(drop)).await
    }

    /// The assignments last saved, by check id.
    pub async fn assignments(&self) -> Result<Vec<AssignedCheck>, SpoolError> {
        self.with(|i| {
            let mut stmt = i
                .conn
                .prepare("SELECT check_id, revision, check_json, interval_ms, phase_ms FROM assignments ORDER BY check_id")?;
            stmt.query_map([], |r| {
                Ok(AssignedCheck {
                    check_id: r.get(0)?,
                    revision: r.get::<_, i64>(1)? as u64,
                    check_json: r.get(2)?,
                    interval_ms: r.get::<_, i64>(3)? as u64,
                    phase_ms: r.get::<_, i64>(4)? as u64,
                })
            })?
            .collect()
        })
        .await
    }

    /// The probe log, oldest first.
    pub async fn probe_log(&self) -> Result<Vec<ProbeRun>, SpoolError> {
        self.with(|i| {
            let mut stmt = i
                .conn
                .prepare("SELECT probe_id, check_id, revision, round, outcome, started_ms FROM probe_log ORDER BY seq")?;
            stmt.query_map([], |r| {
                Ok(ProbeRun {
                    probe_id: r.get(0)?,
                    check_id: r.get(1)?,
                    revision: r.get::<_, i64>(2)? as u64,
                    round: r.get::<_, i64>(3)? as u64,
                    outcome: r.get(4)?,
                    started_ms: r.get(5)?,
                })
            })?
            .collect()
        })
        .await
    }

    /// Deletes probe-log rows older than [`PROBE_LOG_RETENTION`].
    pub async fn prune_probe_log(&self) -> Result<usize, SpoolError> {
        let cutoff = now_ms() - PROBE_LOG_RETENTION.as_millis() as i64;
        self.with(move |i| i.conn.execute("DELETE FROM probe_log WHERE started_ms < ?1", [cutoff])).await
    }

    /// The seq of a waiting report (tests).
    #[cfg(test)]
    async fn seq_of(&self, probe_id: &str) -> Option<i64> {
        use rusqlite::OptionalExtension;
        let id = probe_id.to_string();
        self.with(move |i| i.conn.query_row("SELECT seq FROM reports WHERE probe_id = ?1", [id], |r| r.get(0)).optional())
            .await
            .unwrap()
    }
}

/// Adds `reports.request_id` (on-demand runs) to a spool from before it.
/// A nullable column and no schema version bump: an older agent started on
/// this spool names its columns, so it still reads and writes it.
fn add_request_id(conn: &Connection) -> rusqlite::Result<()> {
    let present: i64 =
        conn.query_row("SELECT COUNT(*) FROM pragma_table_info('reports') WHERE name = 'request_id'", [], |r| r.get(0))?;
    if present == 0 {
        conn.execute_batch("ALTER TABLE reports ADD COLUMN request_id TEXT")?;
    }
    Ok(())
}

/// Creates and locks `<spool>.lock` (released when the process exits).
/// Creates the spool's directory (and missing parents) with mode 0700 when
/// it does not exist; an existing one is left as it is.
fn create_dir(spool: &Path) -> Result<(), SpoolError> {
    use std::os::unix::fs::DirBuilderExt;
    let Some(dir) = spool.parent().filter(|d| !d.as_os_str().is_empty()) else { return Ok(()) };
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| SpoolError::CreateDir { dir: dir.display().to_string(), source })?;
    tracing::info!("created the spool directory {} (mode 0700)", dir.display());
    Ok(())
}

fn lock(spool: &Path) -> Result<std::fs::File, SpoolError> {
    let mut name = spool.as_os_str().to_owned();
    name.push(".lock");
    let path = std::path::PathBuf::from(name);
    let shown = path.display().to_string();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| SpoolError::Lock { lock: shown.clone(), source })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(SpoolError::InUse { path: spool.display().to_string(), lock: shown }),
        Err(std::fs::TryLockError::Error(source)) => Err(SpoolError::Lock { lock: shown, source }),
    }
}

/// Unix epoch milliseconds, now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(n: u64) -> SpooledReport {
        SpooledReport {
            probe_id: format!("ml-{n}"),
            check_id: "corp".into(),
            revision: 1,
            round: n,
            report_json: "{}".into(),
            request_id: None,
        }
    }

    async fn spool(max: u64) -> (tempfile::TempDir, Spool) {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(&dir.path().join("spool.db"), max).unwrap();
        (dir, s)
    }

    async fn waiting_ids(s: &Spool) -> Vec<String> {
        s.after(0, 100).await.unwrap().into_iter().map(|(_, r)| r.probe_id).collect()
    }

    #[tokio::test]
    async fn reports_wait_oldest_first_until_removed() {
        let (_d, s) = spool(10).await;
        for n in 1..=3 {
            s.push(report(n), "failed", 0).await.unwrap();
        }
        assert_eq!(waiting_ids(&s).await, ["ml-1", "ml-2", "ml-3"]);
        assert!(s.remove("ml-2".into()).await.unwrap());
        assert!(!s.remove("ml-2".into()).await.unwrap(), "a second ack finds nothing");
        assert_eq!(waiting_ids(&s).await, ["ml-1", "ml-3"]);
        assert_eq!(s.waiting(), 2);
        let seq1 = s.seq_of("ml-1").await.unwrap();
        let after_first: Vec<_> = s.after(seq1, 10).await.unwrap().into_iter().map(|(_, r)| r.probe_id).collect();
        assert_eq!(after_first, ["ml-3"]);
    }

    #[tokio::test]
    async fn acked_reports_leave_in_one_batch_and_pushes_stay_durable() {
        let (_d, s) = spool(10).await;
        for n in 1..=4 {
            s.push(report(n), "ok", 0).await.unwrap();
        }
        let acked = vec!["ml-1".to_string(), "ml-3".to_string(), "ml-9".to_string()];
        assert_eq!(s.remove_many(acked).await.unwrap(), 2, "an unknown id is not counted");
        assert_eq!(waiting_ids(&s).await, ["ml-2", "ml-4"]);
        assert_eq!(s.waiting(), 2);
        let sync: i64 = s.with(|i| i.conn.pragma_query_value(None, "synchronous", |r| r.get(0))).await.unwrap();
        assert_eq!(sync, 2, "after a batch of deletions, pushes commit with synchronous = FULL again");
    }

    #[tokio::test]
    async fn the_cap_drops_the_oldest() {
        let (_d, s) = spool(2).await;
        for n in 1..=4 {
            s.push(report(n), "failed", 0).await.unwrap();
        }
        assert_eq!(waiting_ids(&s).await, ["ml-3", "ml-4"]);
        assert_eq!(s.waiting(), 2);
        let log: Vec<String> = s.probe_log().await.unwrap().into_iter().map(|r| r.probe_id).collect();
        assert_eq!(log, ["ml-1", "ml-2", "ml-3", "ml-4"], "the probe log keeps every run");
    }

    #[tokio::test]
    async fn everything_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.db");
        let a = AssignedCheck { check_id: "corp".into(), revision: 7, check_json: "{}".into(), interval_ms: 1000, phase_ms: 250 };
        {
            let s = Spool::open(&path, 10).unwrap();
            s.push(report(1), "ok", 0).await.unwrap();
            s.save_assignment(a.clone()).await.unwrap();
            s.save_assignment(AssignedCheck { check_id: "gone".into(), ..a.clone() }).await.unwrap();
            s.remove_assignment("gone".into()).await.unwrap();
        }
        let s = Spool::open(&path, 10).unwrap();
        assert_eq!(s.waiting(), 1);
        assert_eq!(waiting_ids(&s).await, ["ml-1"]);
        assert_eq!(s.assignments().await.unwrap(), [a]);
        s.push(report(2), "ok", 0).await.unwrap();
        assert!(s.seq_of("ml-2").await.unwrap() > 1, "sequence numbers are never reused");
    }

    #[tokio::test]
    async fn a_spool_from_before_on_demand_runs_gains_request_ids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE reports (seq INTEGER PRIMARY KEY AUTOINCREMENT, probe_id TEXT NOT NULL UNIQUE,
                 check_id TEXT NOT NULL, revision INTEGER NOT NULL, round INTEGER NOT NULL,
                 report_json TEXT NOT NULL, spooled_ms INTEGER NOT NULL);
                 INSERT INTO reports (probe_id, check_id, revision, round, report_json, spooled_ms)
                 VALUES ('ml-old', 'corp', 1, 9, '{}', 0);
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let s = Spool::open(&path, 10).unwrap();
        let run = SpooledReport { round: 0, request_id: Some("run-1-ab".into()), ..report(2) };
        s.push(run.clone(), "ok", 0).await.unwrap();
        let waiting: Vec<SpooledReport> = s.after(0, 10).await.unwrap().into_iter().map(|(_, r)| r).collect();
        assert_eq!(waiting[0].probe_id, "ml-old");
        assert_eq!(waiting[0].request_id, None);
        assert_eq!(waiting[1], run);
        drop(s);
        Spool::open(&path, 10).expect("a second open finds the column there");
    }

    #[tokio::test]
    async fn one_spool_one_agent() {
        let (dir, _s) = spool(10).await;
        match Spool::open(&dir.path().join("spool.db"), 10) {
            Err(SpoolError::InUse { .. }) => {}
            Err(e) => panic!("expected InUse, got {e}"),
            Ok(_) => panic!("a second open of a spool in use succeeded"),
        }
    }

    #[tokio::test]
    async fn old_probe_log_rows_are_pruned() {
        let (_d, s) = spool(10).await;
        let old = now_ms() - PROBE_LOG_RETENTION.as_millis() as i64 - 1000;
        s.push(report(1), "ok", old).await.unwrap();
        s.push(report(2), "ok", now_ms()).await.unwrap();
        assert_eq!(s.prune_probe_log().await.unwrap(), 1);
        assert_eq!(s.probe_log().await.unwrap().len(), 1);
    }
}
