//! The server backend: PostgreSQL through tokio-postgres, a deadpool pool,
//! TLS with rustls. Same operations as `sqlite/`, one file per thing
//! stored; the schema is numbered migrations run under an advisory lock.
//!
//! Ingest is batched like SQLite's writer: reports queue for a few writer
//! tasks, each takes what is queued (up to [`MAX_BATCH`]), inserts it in one
//! transaction (`ON CONFLICT (probe_id) DO NOTHING`, so a replayed report is
//! stored once even when two replicas receive it) together with the hourly
//! rollups, and answers each sender only after the commit.

mod agents;
mod aggregates;
mod alert_log;
mod audit;
mod changes;
mod checks;
mod incidents;
mod leader;
pub(crate) mod migrations;
mod outbox;
mod presence;
mod reports;
mod tokens;
mod verdicts;

use super::model::StorageError;
use super::settings::PgSettings;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::sync::Mutex;
use tokio::sync::mpsc;

/// Most reports committed in one transaction.
pub const MAX_BATCH: usize = 1024;
/// Reports waiting for a writer before senders are made to wait.
const QUEUE: usize = 8192;
/// Report writer tasks: batches commit concurrently, each on its own connection.
const WRITERS: usize = 2;
/// Rows deleted per retention transaction.
const PRUNE_CHUNK: i64 = 5000;

/// A pool of connections to one PostgreSQL database, and the report writers.
pub struct Postgres {
    pool: Pool,
    writer: Mutex<Option<mpsc::Sender<reports::Job>>>,
    writers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    describe: String,
    /// For connections of its own outside the pool (leadership).
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    /// On-demand run orders announced by any replica (`mailloop_runs`).
    runs: tokio::sync::broadcast::Sender<super::model::RunNotice>,
    /// When this replica last found itself cut off from the database:
    /// pooled connections opened before then are not handed out again.
    lost: Lost,
}

/// The moment the database was last lost (None: never).
type Lost = std::sync::Arc<Mutex<Option<std::time::Instant>>>;

impl From<deadpool_postgres::PoolError> for StorageError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => StorageError::Postgres(e),
            other => StorageError::Unavailable(other.to_string()),
        }
    }
}

impl Postgres {
    /// Connects, brings the schema up to date (or refuses a newer one) and
    /// starts the report writers.
    pub async fn connect(s: &PgSettings) -> Result<Postgres, StorageError> {
        let config = s.config().map_err(StorageError::Config)?;
        let tls = tls(s).map_err(StorageError::Config)?;
        let lost = Lost::default();
        let pool = pool(config.clone(), tls.clone(), s.pool_size, lost.clone())?;
        let (found, now) = migrations::run(&pool).await?;
        if found != now {
            tracing::info!(from = found, to = now, "storage: schema migrated");
        }
        let (tx, handles) = reports::start_writers(pool.clone(), WRITERS, QUEUE);
        Ok(Postgres {
            pool,
            writer: Mutex::new(Some(tx)),
            writers: Mutex::new(handles),
            describe: s.describe(),
            config,
            tls,
            runs: tokio::sync::broadcast::channel(256).0,
            lost,
        })
    }

    /// Where this is, for logs: `postgres://user@host:port/db`, never a password.
    pub fn describe(&self) -> String {
        self.describe.clone()
    }

    /// Lets the writers commit what is queued, then closes the pool.
    pub async fn close(&self) {
        drop(self.writer.lock().expect("writer lock").take());
        let handles = std::mem::take(&mut *self.writers.lock().expect("writers lock"));
        for h in handles {
            let _ = h.await;
        }
        self.pool.close();
    }

    /// A pooled connection for `storage/transfer.rs` (migrate-data).
    pub(in crate::storage) async fn client_for_import(&self) -> Result<deadpool_postgres::Object, StorageError> {
        self.client().await
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StorageError> {
        if self.pool.is_closed() {
            return Err(StorageError::Closed);
        }
        Ok(self.pool.get().await?)
    }

    /// Runs `sql` (a DELETE of at most `$2` rows older than `$1`) until it
    /// deletes fewer than a chunk. Returns how many rows went.
    async fn delete_in_chunks(&self, sql: &str, cutoff_ms: i64) -> Result<usize, StorageError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql).await?;
        let mut total = 0;
        loop {
            let n = client.execute(&stmt, &[&cutoff_ms, &PRUNE_CHUNK]).await?;
            total += n as usize;
            if (n as i64) < PRUNE_CHUNK {
                return Ok(total);
            }
        }
    }
}

/// How long a caller waits for a pooled connection, a new connection's
/// TCP connect plus startup and authentication, or a returned one's
/// check. Without these a database that stops answering without closing
/// (a black hole: packets dropped, or a proxy that goes silent) hangs a
/// caller for ever; with them it gets an error (`StorageError::Unavailable`)
/// in bounded time, like a refused connection. Generous: a loaded server
/// is slow, not gone.
pub(crate) const POOL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The pool (connections are opened lazily, on first use).
fn pool(
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    pool_size: usize,
    lost: Lost,
) -> Result<Pool, StorageError> {
    let manager = Manager::from_config(
        config,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(pool_size)
        .wait_timeout(Some(POOL_TIMEOUT))
        .create_timeout(Some(POOL_TIMEOUT))
        .recycle_timeout(Some(POOL_TIMEOUT))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        // A connection checked out when the database went silent may come
        // back to the pool later, looking open (fast recycling only asks
        // whether it is closed): one opened before the loss is dropped.
        .pre_recycle(deadpool_postgres::Hook::sync_fn(move |_, metrics| {
            match *lost.lock().unwrap_or_else(|e| e.into_inner()) {
                Some(at) if metrics.created <= at => Err(deadpool_postgres::HookError::message(
                    "opened before the database was lost",
                )),
                _ => Ok(()),
            }
        }))
        .build()
        .map_err(|e| StorageError::Config(e.to_string()))
}

/// rustls with ring: the system roots, or only the configured CA file's.
/// Used when the URL's `sslmode` asks for TLS (`prefer`, `require`).
fn tls(s: &PgSettings) -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
    let mut roots = rustls::RootCertStore::empty();
    match &s.ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| format!("storage.ca_file {}: {e}", path.display()))?;
            let mut n = 0;
            for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
                let cert: rustls_pki_types::CertificateDer<'static> =
                    cert.map_err(|e| format!("storage.ca_file {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("storage.ca_file {}: {e}", path.display()))?;
                n += 1;
            }
            if n == 0 {
                return Err(format!("storage.ca_file {}: no PEM certificate in it", path.display()));
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}
