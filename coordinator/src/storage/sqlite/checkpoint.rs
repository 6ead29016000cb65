//! WAL checkpoints off the writer's path.
//!
//! SQLite's automatic checkpoint runs inside the commit that crossed its
//! threshold (1,000 pages), on the writer thread: while it copied the log
//! into the database every report behind it waited, and under a steady
//! ingest that was about a quarter of the writer's time. Here the writer's
//! WAL hook only wakes a thread of its own, which checkpoints (PASSIVE: it
//! never blocks the writer) on a connection of its own while the writer
//! goes on committing.
//!
//! A checkpoint running beside a writer that keeps committing never ends
//! with the whole log copied, so the log could not start over and would
//! grow without bound. The writer therefore checkpoints itself, between
//! two commits, once the log passes [`FORCE_PAGES`]: by then the thread has
//! copied nearly all of it, the rest is little, and the next write starts
//! the log over. Acks are unaffected: a checkpoint copies what is already
//! committed and durable in the log.

use rusqlite::Connection;
use rusqlite::hooks::Wal;
use std::ffi::c_int;
use std::sync::mpsc::{Receiver, SyncSender};

/// The log grows by this many pages (4 KiB each) between two wakes of the
/// checkpoint thread.
pub(super) const WAKE_PAGES: c_int = 4096;
/// Past this many pages in the log the writer checkpoints itself (see the
/// module's doc): 64 MiB of log at most, about a second of full ingest.
pub(super) const FORCE_PAGES: c_int = 16 * 1024;

/// What the checkpoint thread is told.
pub(super) enum Wake {
    /// The log has grown: copy it into the database.
    Checkpoint,
    /// The writer has stopped.
    Stop,
}

/// Installs the WAL hook on the writer's connection (it replaces SQLite's
/// automatic checkpoint, which is itself a WAL hook).
pub(super) fn install(conn: &mut Connection, wake: SyncSender<Wake>) -> rusqlite::Result<()> {
    let mut woken = 0;
    conn.wal_hook(Some(move |wal: &mut Wal, pages: c_int| {
        if pages >= FORCE_PAGES {
            // Busy when the thread's checkpoint is still running: the next
            // commit tries again. Never an error from the hook: the commit
            // has happened, and an error here would be reported as its own.
            if let Err(e) = wal.checkpoint() {
                tracing::debug!(error = %e, pages, "storage: the writer's checkpoint did not run; the next commit tries again");
            }
        } else if pages / WAKE_PAGES > woken {
            // Full: a wake is already waiting.
            let _ = wake.try_send(Wake::Checkpoint);
        }
        // Back to 0 once the log has started over.
        woken = pages / WAKE_PAGES;
        Ok(())
    }))
}

/// The checkpoint thread: one PASSIVE checkpoint per wake, until the
/// writer stops (SQLite checkpoints what is left when the last connection
/// closes).
pub(super) fn run(conn: Connection, wakes: Receiver<Wake>) {
    while let Ok(Wake::Checkpoint) = wakes.recv() {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "storage: WAL checkpoint failed; the next one tries again");
        }
    }
}
