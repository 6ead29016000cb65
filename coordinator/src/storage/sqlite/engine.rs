//! The SQLite engine: one writer thread that batches jobs into a
//! transaction and answers each after the commit, and a small pool of
//! read-only connections for queries (WAL lets them run while it writes).

use super::super::model::{Inserted, ReportRow, StorageError};
use rusqlite::{Connection, params};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// Most jobs committed in one transaction.
pub const MAX_BATCH: usize = 1024;
/// Jobs waiting for the writer before senders are made to wait (backpressure).
pub(super) const QUEUE: usize = 8192;
/// The writer's page cache, in KiB (`PRAGMA cache_size` takes a negative
/// number for KiB; SQLite's default is 2 MiB): a full batch of 21-step
/// reports and the index pages it touches, about 5 MiB, fit without
/// spilling mid-transaction.
pub(super) const WRITER_CACHE_KIB: i64 = -16 * 1024;
/// Read connections.
pub(super) const READERS: usize = 4;
/// Rows deleted per retention transaction, so pruning never holds the writer long.
pub(super) const PRUNE_CHUNK: usize = 5000;

/// The SQLite backend: a writer thread and a pool of read connections.
pub struct Sqlite {
    pub(super) writer: mpsc::Sender<Msg>,
    pub(super) readers: Arc<Readers>,
    pub(super) done: Mutex<Option<oneshot::Receiver<()>>>,
    pub(super) path: PathBuf,
}

impl Sqlite {
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

    /// Runs `sql` (a DELETE of at most `?2` rows older than `?1`) until it
    /// deletes fewer than a chunk: each chunk is its own transaction, so
    /// pruning never holds the writer long. Returns how many rows went.
    pub(super) async fn delete_in_chunks(&self, sql: &'static str, cutoff_ms: i64) -> Result<usize, StorageError> {
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
    pub(super) async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StorageError> + Send + 'static,
    ) -> Result<R, StorageError> {
        self.submit(f)
            .await?
            .await
            .map_err(|_| StorageError::Closed)?
    }

    pub(super) async fn submit<R: Send + 'static>(
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

    pub(super) async fn read<R: Send + 'static>(
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

pub(super) fn corrupt(message: String) -> StorageError {
    StorageError::Corrupt(message)
}

pub(super) struct Readers {
    pub(super) conns: Vec<Mutex<Connection>>,
    pub(super) next: AtomicUsize,
}

// Reports are most of the traffic: kept inline (a Box would be one more
// allocation per report) in the queue's slots.
#[allow(clippy::large_enum_variant)]
pub(super) enum Msg {
    Job(Box<dyn WriteJob>),
    /// A probe report: the hot path, handled natively (no boxed closure),
    /// so a run of reports shares one savepoint and one hourly-rollup
    /// write per check x region x hour (see [`super::reports::store_reports`]).
    Report(ReportRow, ReportReply),
    Close(oneshot::Sender<()>),
}

pub(super) type ReportReply = oneshot::Sender<Result<Inserted, StorageError>>;

/// One queued write of a batch, in arrival order.
enum Item {
    Job(Box<dyn WriteJob>),
    /// Consecutive reports, stored together.
    Reports(Vec<ReportRow>, Vec<ReportReply>),
}

impl Item {
    fn push(batch: &mut Vec<Item>, msg: Msg, closing: &mut Option<oneshot::Sender<()>>) {
        match msg {
            Msg::Job(j) => batch.push(Item::Job(j)),
            Msg::Report(row, reply) => match batch.last_mut() {
                Some(Item::Reports(rows, replies)) => {
                    rows.push(row);
                    replies.push(reply);
                }
                _ => batch.push(Item::Reports(vec![row], vec![reply])),
            },
            Msg::Close(tx) => *closing = Some(tx),
        }
    }
}

/// One write: run inside the batch's transaction, answered after the commit.
pub(super) trait WriteJob: Send {
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

pub(super) fn writer_loop(mut conn: Connection, mut rx: mpsc::Receiver<Msg>) {
    let mut closing = None;
    while closing.is_none() {
        let Some(first) = rx.blocking_recv() else {
            break;
        };
        let mut batch = Vec::new();
        let mut jobs = 1;
        Item::push(&mut batch, first, &mut closing);
        while closing.is_none() && jobs < MAX_BATCH {
            match rx.try_recv() {
                Ok(msg) => Item::push(&mut batch, msg, &mut closing),
                Err(_) => break,
            }
            jobs += 1;
        }
        if batch.is_empty() {
            continue;
        }
        let mut answers = Vec::new();
        let commit = run_batch(&mut conn, &mut batch, &mut answers);
        if let Err(e) = &commit {
            tracing::error!(error = %e, jobs, "storage commit failed; the batch is answered with the error");
        }
        // One result per report of the batch that ran, in order.
        let mut answers = answers.into_iter();
        for item in batch {
            match item {
                Item::Job(job) => job.finish(commit.clone()),
                Item::Reports(_, replies) => {
                    for reply in replies {
                        let _ = reply.send(match (&commit, answers.next()) {
                            (Err(e), _) => Err(StorageError::Commit(e.clone())),
                            (Ok(()), Some(answer)) => answer,
                            (Ok(()), None) => Err(StorageError::Commit("the write did not run".into())),
                        });
                    }
                }
            }
        }
    }
    // Refuse whatever arrives after close; answer it so nobody waits forever.
    rx.close();
    while let Ok(msg) = rx.try_recv() {
        match msg {
            Msg::Job(j) => j.finish(Err("storage is closed".into())),
            Msg::Report(_, reply) => {
                let _ = reply.send(Err(StorageError::Closed));
            }
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

/// One transaction for the whole batch. Each job runs in its own
/// savepoint; a run of consecutive reports shares one (the hot path: one
/// savepoint, not three statements per report). The savepoint statements
/// are prepared once per connection (cached). Report results go to
/// `answers` in order, to be sent once the commit's fate is known.
fn run_batch(
    conn: &mut Connection,
    batch: &mut [Item],
    answers: &mut Vec<Result<Inserted, StorageError>>,
) -> Result<(), String> {
    let tx = conn.transaction().map_err(|e| e.to_string())?;
    let step = |sql: &str| -> Result<(), String> {
        tx.prepare_cached(sql)
            .and_then(|mut s| s.execute([]))
            .map(drop)
            .map_err(|e| e.to_string())
    };
    for item in batch.iter_mut() {
        match item {
            Item::Job(job) => {
                step("SAVEPOINT job")?;
                if !job.run(&tx) {
                    // A failed job's writes go; the rest of the batch stands.
                    step("ROLLBACK TO job")?;
                }
                step("RELEASE job")?;
            }
            Item::Reports(rows, _) => {
                step("SAVEPOINT job")?;
                match super::reports::store_reports(&tx, rows) {
                    Ok(stored) => answers.extend(stored.into_iter().map(Ok)),
                    Err(_) => {
                        // Something in the run failed (rare: a full disk, a
                        // corrupt page): undo the run and store each report
                        // in its own savepoint, so only the failing ones fail.
                        step("ROLLBACK TO job")?;
                        for row in rows.iter() {
                            step("SAVEPOINT one")?;
                            let one = super::reports::store_reports(&tx, std::slice::from_ref(row));
                            if one.is_err() {
                                step("ROLLBACK TO one")?;
                            }
                            step("RELEASE one")?;
                            answers.push(one.map(|mut v| v.pop().expect("one report, one answer")));
                        }
                    }
                }
                step("RELEASE job")?;
            }
        }
    }
    tx.commit().map_err(|e| e.to_string())
}
