//! Leadership among replicas sharing one PostgreSQL: a session-level
//! advisory lock held on a dedicated connection (not a pooled one: a pool
//! hands connections around and recycles them, and the lock belongs to
//! the session that took it).
//!
//! A replica that takes the lock leads until its connection ends: then
//! PostgreSQL releases the lock, and a follower, which asks for it again
//! every [`RETRY`], takes over. The leader pings its connection every
//! [`PING`]; a ping that fails or takes longer than [`PING_TIMEOUT`] means
//! it is cut off from the database, and it gives up leadership at once
//! (it drops the connection). A partitioned leader's session can linger
//! in PostgreSQL, lock held, until the server notices the dead socket
//! (hours, with default keepalives): a follower ends the lock holder's
//! session once it has been idle for [`SILENT_LEADER`] (a live leader
//! pings every [`PING`]), and takes the lock. A round decided twice in
//! such a window keeps its first verdict (`store_round` is idempotent
//! per round).

use super::super::model::{ReplicaRole, StorageError};
use super::Postgres;
use super::migrations::MIGRATION_LOCK;
use std::time::Duration;
use tokio::sync::watch;

/// The advisory lock key of leadership (next to the migrations' key).
const LEADER_LOCK: i64 = MIGRATION_LOCK + 1;
/// How often a follower (or a cut-off replica) asks again.
pub(crate) const RETRY: Duration = Duration::from_secs(2);
/// How often the leader checks that its connection is alive.
pub(super) const PING: Duration = Duration::from_secs(2);
/// A ping or lock query that takes longer has failed.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// A leader's session idle this long (no ping for three ping timeouts)
/// is silent: its replica has given the lead up, and the session is ended.
const SILENT_LEADER: Duration = Duration::from_secs(15);
/// Ends the session holding the leadership lock in this database when it
/// has been idle longer than `$2` seconds; returns the ended pids.
const END_SILENT_LEADER: &str = "WITH silent AS MATERIALIZED ( \
       SELECT a.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
        WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
          AND l.classid = ($1::bigint >> 32)::oid AND l.objid = ($1::bigint & 4294967295)::oid \
          AND a.pid <> pg_backend_pid() AND a.state = 'idle' \
          AND a.state_change < now() - make_interval(secs => $2::float8)) \
     SELECT pid FROM silent WHERE pg_terminate_backend(pid)";

impl Postgres {
    /// Campaigns for leadership until `stop` resolves; the receiver follows
    /// this replica's role. Stopping closes the dedicated connection, which
    /// releases the lock at once (a graceful stop hands over quickly).
    pub fn campaign(
        &self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> watch::Receiver<ReplicaRole> {
        let (tx, rx) = watch::channel(ReplicaRole::Follower);
        let (config, tls, pool, lost) =
            (self.config.clone(), self.tls.clone(), self.pool.clone(), self.lost.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = stop => {}
                _ = campaign(config, tls, pool, lost, &tx) => {}
            }
            tx.send_replace(ReplicaRole::Follower);
        });
        rx
    }
}

async fn campaign(
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    pool: deadpool_postgres::Pool,
    lost: super::Lost,
    role: &watch::Sender<ReplicaRole>,
) {
    loop {
        let Err(e) = session(&config, &tls, role).await;
        let was = role.send_replace(ReplicaRole::CutOff);
        if was != ReplicaRole::CutOff {
            // The idle pooled connections are likely as dead as this one,
            // but a silent one (a black hole) would still be handed out
            // and hang its caller: drop them, so callers open new ones,
            // which fail within the pool's timeouts until the database
            // answers again. Those checked out now are dropped when they
            // come back (the pool's recycle hook).
            *lost.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now());
            let dropped = pool.retain(|_, _| false).removed.len();
            tracing::debug!(dropped, "idle pooled connections dropped");
        }
        match was {
            ReplicaRole::Leader => {
                tracing::error!(error = %e, "cut off from the database: leadership given up (judging, alerts and retention stop here until the database answers)")
            }
            ReplicaRole::Follower => tracing::warn!(error = %e, "cut off from the database"),
            ReplicaRole::CutOff => tracing::debug!(error = %e, "still cut off from the database"),
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// One dedicated connection: asks for the lock until it gets it, then
/// holds it while pings succeed. Ends only with the error that ended it.
async fn session(
    config: &tokio_postgres::Config,
    tls: &tokio_postgres_rustls::MakeRustlsConnect,
    role: &watch::Sender<ReplicaRole>,
) -> Result<std::convert::Infallible, StorageError> {
    let (client, connection) = connect(config, tls).await?;
    // The connection's I/O runs beside; it ends when `client` is dropped.
    let io = tokio::spawn(connection);
    let _stop_io = AbortOnDrop(io);
    loop {
        let got: bool = timed(client.query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK]))
            .await?
            .get(0);
        if got {
            role.send_replace(ReplicaRole::Leader);
            tracing::info!(
                "this replica is the leader: it judges rounds, opens incidents, sends alerts and prunes"
            );
            loop {
                tokio::time::sleep(PING).await;
                timed(client.simple_query("SELECT 1")).await?;
            }
        }
        // The holder may be a leader that went silent without closing
        // (a partition, a black hole): its session then lingers in
        // PostgreSQL, lock and all, until the server's own keepalive
        // gives up (two hours by default). A live leader's session
        // changes state with every ping; one idle for [`SILENT_LEADER`]
        // belongs to a replica that has already given the lead up (its
        // ping timed out), so it is ended, and the lock is free.
        let ended = timed(client.query(END_SILENT_LEADER, &[&LEADER_LOCK, &SILENT_LEADER.as_secs_f64()])).await?;
        for row in &ended {
            let pid: i32 = row.get(0);
            tracing::warn!(pid, "ended the session of a leader silent for {}s; asking for the lead again", SILENT_LEADER.as_secs());
        }
        if role.send_replace(ReplicaRole::Follower) != ReplicaRole::Follower {
            tracing::info!(
                "this replica is a follower: another replica holds the leadership (asking again every {}s)",
                RETRY.as_secs()
            );
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// A dedicated connection (outside the pool), given up after
/// [`super::POOL_TIMEOUT`]: the driver's `connect_timeout` bounds only the
/// TCP connect, and a server that accepts and then says nothing would hang
/// the startup for ever.
pub(super) async fn connect(
    config: &tokio_postgres::Config,
    tls: &tokio_postgres_rustls::MakeRustlsConnect,
) -> Result<
    (
        tokio_postgres::Client,
        tokio_postgres::Connection<
            tokio_postgres::Socket,
            <tokio_postgres_rustls::MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<
                tokio_postgres::Socket,
            >>::Stream,
        >,
    ),
    StorageError,
> {
    match tokio::time::timeout(super::POOL_TIMEOUT, config.connect(tls.clone())).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(StorageError::Unavailable(format!(
            "no connection to the database within {}s",
            super::POOL_TIMEOUT.as_secs()
        ))),
    }
}

/// `f`, failed when it takes longer than [`PING_TIMEOUT`].
pub(super) async fn timed<T>(
    f: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, StorageError> {
    match tokio::time::timeout(PING_TIMEOUT, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(StorageError::Unavailable(format!(
            "the database did not answer within {}s",
            PING_TIMEOUT.as_secs()
        ))),
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
