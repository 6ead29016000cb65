//! The embedded backend: SQLite (rusqlite, bundled) in WAL, one writer
//! thread ([`engine`]), one file per thing stored, and the schema with its
//! numbered migrations ([`migrations`]).

mod agents;
mod aggregates;
mod alert_log;
mod audit;
mod checkpoint;
mod checks;
mod engine;
mod incidents;
mod migrations;
mod reports;
mod tokens;
mod verdicts;

pub use engine::{MAX_BATCH, Sqlite};
pub use migrations::schema_version;

use super::model::{DB_FILE, StorageError};
use engine::{QUEUE, READERS, Readers, WRITER_CACHE_KIB, writer_loop};
use rusqlite::{Connection, OpenFlags};
use std::path::Path;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

impl Sqlite {
    /// Opens (creating if needed) `data_dir/coordinator.db` and starts the writer thread.
    pub fn open(data_dir: &Path) -> Result<Sqlite, StorageError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StorageError::CreateDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join(DB_FILE);
        let open_err = |source| StorageError::Open {
            path: path.clone(),
            source,
        };
        let mut conn = Connection::open(&path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        // FULL: a commit is on disk before the writer answers (the ack rule).
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(open_err)?;
        // Room for a whole batch's pages (up to MAX_BATCH reports and their
        // index pages): a smaller cache spills dirty pages to the WAL in
        // the middle of the transaction and reads them back.
        conn.pragma_update(None, "cache_size", WRITER_CACHE_KIB)
            .map_err(open_err)?;
        // A database written by a newer coordinator is refused, not written into.
        let found = migrations::found_version(&conn).map_err(open_err)?;
        if found > schema_version() {
            return Err(StorageError::NewerSchema { found, known: schema_version() });
        }
        migrations::apply(&conn).map_err(open_err)?;
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
        // Checkpoints run on a thread of their own (see `checkpoint`), not
        // at the end of the writer's commits, where they held every ack.
        let checkpointer = Connection::open(&path).map_err(open_err)?;
        checkpointer.pragma_update(None, "synchronous", "FULL").map_err(open_err)?;
        checkpointer.busy_timeout(Duration::from_secs(5)).map_err(open_err)?;
        let (wake, wakes) = std::sync::mpsc::sync_channel(1);
        checkpoint::install(&mut conn, wake.clone()).map_err(open_err)?;
        let checkpoints = std::thread::Builder::new()
            .name("storage-checkpoint".into())
            .spawn(move || checkpoint::run(checkpointer, wakes))
            .expect("spawn the storage checkpoint thread");
        let (tx, rx) = mpsc::channel(QUEUE);
        let (done_tx, done_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("storage-writer".into())
            .spawn(move || {
                writer_loop(conn, rx);
                // The writer is gone: no more WAL to copy after this one.
                let _ = wake.send(checkpoint::Wake::Stop);
                let _ = checkpoints.join();
                let _ = done_tx.send(());
            })
            .expect("spawn the storage writer thread");
        Ok(Sqlite {
            writer: tx,
            readers: Arc::new(Readers {
                conns: readers,
                next: AtomicUsize::new(0),
            }),
            done: Mutex::new(Some(done_rx)),
            path,
        })
    }

}
