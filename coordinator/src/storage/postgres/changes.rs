//! Change notices between replicas: a write of a check, an agent or an API
//! token sends `NOTIFY mailloop_changes` (PostgreSQL delivers it when the
//! write commits), and every replica LISTENs on a dedicated connection and
//! reads the stored rows again at once. A replica that was disconnected
//! reads them once it is listening again (notices sent meanwhile are
//! lost, so each (re)connection counts as one).
//!
//! On-demand run orders travel on their own channel (`mailloop_runs`) and
//! live only in the memory of the replica that took them, so a replica
//! that was not listening when one was announced cannot read it again: on
//! every (re)connection it asks the others to announce their fresh orders
//! once more ([`RunNotice::Again`]), and places those it does not have yet.

use super::super::model::{RunNotice, StorageError};
use super::leader::{timed, PING, RETRY};
use super::Postgres;
use std::sync::Arc;
use tokio::sync::{mpsc, Notify};
use tokio_postgres::AsyncMessage;

/// The channel every replica listens on.
const CHANNEL: &str = "mailloop_changes";
/// On-demand run orders, the order's JSON as payload (`cluster/ondemand.rs`).
const RUNS: &str = "mailloop_runs";
/// The payload on [`RUNS`] of a replica that has just started listening.
const AGAIN: &str = "again";

impl Postgres {
    /// Tells every replica (this one included) that `what` changed. A
    /// notice that cannot be sent is logged, not an error: the change is
    /// committed, and the replicas' periodic read finds it.
    pub(super) async fn announce(client: &deadpool_postgres::Object, what: &str) {
        if let Err(e) = client
            .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &what])
            .await
        {
            tracing::debug!(error = %e, what, "cannot notify the other replicas of a change; they read it on their next tick");
        }
    }

    /// Announces an on-demand run order to every replica.
    pub async fn announce_run(&self, payload: String) -> Result<(), StorageError> {
        let client = self.client().await?;
        client.execute("SELECT pg_notify($1, $2)", &[&RUNS, &payload]).await?;
        Ok(())
    }

    /// The run orders announced, as the listening connection receives them.
    pub fn run_notices(&self) -> tokio::sync::broadcast::Receiver<RunNotice> {
        self.runs.subscribe()
    }

    /// Listens until `stop` resolves; the returned `Notify` fires on every
    /// notice and after every (re)connection.
    pub fn listen_changes(&self, stop: impl Future<Output = ()> + Send + 'static) -> Arc<Notify> {
        let changed = Arc::new(Notify::new());
        let (config, tls) = (self.config.clone(), self.tls.clone());
        let fire = changed.clone();
        let runs = self.runs.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop => {}
                _ = async {
                    loop {
                        let Err(e) = session(&config, &tls, &fire, &runs).await;
                        tracing::debug!(error = %e, "change notices: listening connection lost; reconnecting");
                        tokio::time::sleep(RETRY).await;
                    }
                } => {}
            }
        });
        changed
    }
}

async fn session(
    config: &tokio_postgres::Config,
    tls: &tokio_postgres_rustls::MakeRustlsConnect,
    changed: &Notify,
    runs: &tokio::sync::broadcast::Sender<RunNotice>,
) -> Result<std::convert::Infallible, StorageError> {
    // Named apart from the pool's connections in `pg_stat_activity`.
    let mut config = config.clone();
    let name = format!("{} (change notices)", config.get_application_name().unwrap_or("mailloop-coordinator"));
    config.application_name(&name);
    let (client, mut connection) = super::leader::connect(&config, tls).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let runs = runs.clone();
    // Polling the connection drives its I/O and yields the notices.
    let io = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) if n.channel() == RUNS => {
                    let notice = match n.payload() {
                        AGAIN => RunNotice::Again,
                        order => RunNotice::Order(order.to_string()),
                    };
                    // No receiver (no stream open here) is not an error.
                    let _ = runs.send(notice);
                }
                Some(Ok(AsyncMessage::Notification(_))) => {
                    if tx.send(()).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            }
        }
    });
    let result = async {
        client.batch_execute(&format!("LISTEN {CHANNEL}; LISTEN {RUNS}")).await?;
        // Whatever changed while not listening: read it now; and the run
        // orders announced meanwhile, which are stored nowhere: ask for them.
        changed.notify_one();
        client.execute("SELECT pg_notify($1, $2)", &[&RUNS, &AGAIN]).await?;
        // A connection that goes silent without closing (a black hole)
        // would hear no notice again and say nothing: a ping every
        // [`PING`] that fails or goes unanswered for the leader's ping
        // timeout ends the session, and the next one reads what was missed.
        let mut ping = tokio::time::interval(PING);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                notice = rx.recv() => {
                    if notice.is_none() {
                        return Err(StorageError::Unavailable(
                            "the change notices' connection closed".into(),
                        ));
                    }
                    changed.notify_one();
                }
                _ = ping.tick() => {
                    timed(client.simple_query("SELECT 1")).await?;
                }
            }
        }
    }
    .await;
    io.abort();
    result
}
