//! Agent presence on PostgreSQL: which agents are connected to which
//! replica, refreshed by each replica's heartbeat. Times are the
//! database's clock (`clock_timestamp()`), so a replica whose clock is off
//! neither keeps its agents alive forever nor drops them early.

use super::super::model::{Presence, StorageError};
use super::Postgres;

/// Rows of a replica silent this long are removed by any replica's heartbeat.
const FORGET_MS: i64 = 3_600_000;

/// The database's clock, in epoch milliseconds.
const DB_NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

impl Postgres {
    /// Replaces `replica`'s rows with `live`, in one transaction, and
    /// forgets replicas silent for an hour.
    pub async fn publish_presence(
        &self,
        replica: &str,
        live: Vec<Presence>,
    ) -> Result<(), StorageError> {
        let mut client = self.client().await?;
        let names: Vec<&str> = live.iter().map(|p| p.agent.as_str()).collect();
        let sessions: Vec<i32> = live.iter().map(|p| p.sessions as i32).collect();
        let seen: Vec<Option<i64>> = live.iter().map(|p| p.last_seen_ms).collect();
        let spooled: Vec<Option<i64>> = live
            .iter()
            .map(|p| p.spooled.map(|n| n.min(i64::MAX as u64) as i64))
            .collect();
        let skew: Vec<Option<i64>> = live.iter().map(|p| p.clock_skew_ms).collect();
        let tx = client.transaction().await?;
        tx.execute(
            "DELETE FROM agent_presence WHERE replica = $1::text AND NOT (agent = ANY($2::text[]))",
            &[&replica, &names],
        )
        .await?;
        tx.execute(
            &format!(
                "INSERT INTO agent_presence (agent, replica, sessions, heartbeat_at, last_seen, spooled, clock_skew_ms)
                 SELECT a, $1::text, s, {DB_NOW_MS}, l, sp, c
                 FROM UNNEST($2::text[], $3::int[], $4::bigint[], $5::bigint[], $6::bigint[]) AS t(a, s, l, sp, c)
                 ON CONFLICT (agent, replica) DO UPDATE SET sessions = EXCLUDED.sessions,
                     heartbeat_at = EXCLUDED.heartbeat_at, last_seen = EXCLUDED.last_seen,
                     spooled = EXCLUDED.spooled, clock_skew_ms = EXCLUDED.clock_skew_ms"
            ),
            &[&replica, &names, &sessions, &seen, &spooled, &skew],
        )
        .await?;
        tx.execute(
            &format!("DELETE FROM agent_presence WHERE heartbeat_at < {DB_NOW_MS} - $1::bigint"),
            &[&FORGET_MS],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every replica's rows refreshed within `fresh`.
    pub async fn presence(
        &self,
        fresh: std::time::Duration,
    ) -> Result<Vec<Presence>, StorageError> {
        let client = self.client().await?;
        let fresh_ms = fresh.as_millis() as i64;
        let rows = client
            .query(
                &format!(
                    "SELECT agent, replica, sessions, last_seen, spooled, clock_skew_ms
                     FROM agent_presence WHERE heartbeat_at >= {DB_NOW_MS} - $1::bigint ORDER BY agent, replica"
                ),
                &[&fresh_ms],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Presence {
                agent: r.get(0),
                replica: r.get(1),
                sessions: r.get::<_, i32>(2).max(0) as u32,
                last_seen_ms: r.get(3),
                spooled: r.get::<_, Option<i64>>(4).map(|n| n.max(0) as u64),
                clock_skew_ms: r.get(5),
            })
            .collect())
    }
}
