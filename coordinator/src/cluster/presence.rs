//! Presence: which agents are connected to which replica, exchanged
//! through the shared database so that every replica's hub sees every
//! live agent (PostgreSQL only; SQLite has one coordinator and nothing to
//! exchange, so this task is not started there).
//!
//! Every [`EVERY`], and at once when a session here opens or closes, the
//! replica publishes its connected agents (its heartbeat) and reads the
//! other replicas' rows refreshed within [`FRESH`]. A replica that dies
//! stops refreshing: its agents stop counting as connected after
//! [`FRESH`], by which time they have reconnected to another replica.

use crate::cluster::hub::Hub;
use crate::shutdown::Shutdown;
use crate::storage::Storage;
use std::sync::Arc;
use std::time::Duration;

/// How often a replica publishes its agents and reads the others'.
pub const EVERY: Duration = Duration::from_secs(1);
/// A replica's rows count this long after its last heartbeat.
pub const FRESH: Duration = Duration::from_secs(6);
/// The farewell at shutdown is given up after this.
const FAREWELL: Duration = Duration::from_secs(2);

/// This process's replica id: random, so a restarted replica is a new one
/// (its old rows age out).
pub fn replica_id() -> String {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).expect("the OS random source works");
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{hex}", std::process::id())
}

/// Exchanges presence until shutdown, then withdraws this replica's rows.
pub async fn run(hub: Arc<Hub>, storage: Arc<Storage>, replica: String, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = hub.local_changed() => {}
            _ = shutdown.recv() => break,
        }
        match exchange(&hub, &storage, &replica).await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("agent presence exchanged with the other replicas again");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = ?e, "cannot exchange agent presence with the other replicas; trying again every second");
            }
            Err(e) => tracing::debug!(error = %e, "still cannot exchange agent presence"),
        }
    }
    // Gone: the other replicas stop counting this one's agents at once
    // rather than after FRESH (they are reconnecting elsewhere).
    let _ = tokio::time::timeout(FAREWELL, storage.publish_presence(&replica, Vec::new())).await;
}

async fn exchange(
    hub: &Hub,
    storage: &Storage,
    replica: &str,
) -> Result<(), crate::storage::StorageError> {
    storage
        .publish_presence(replica, hub.local_presence(replica))
        .await?;
    let others = storage
        .presence(FRESH)
        .await?
        .into_iter()
        .filter(|p| p.replica != replica)
        .collect();
    hub.set_remote(others, crate::clock::now_ms());
    Ok(())
}
