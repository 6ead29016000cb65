//! The alert delivery log on PostgreSQL: every attempt to deliver an
//! incident's alert event through a channel, with its result.

use super::super::model::{AlertAttempt, AlertAttemptQuery, StorageError};
use super::Postgres;

impl Postgres {
    /// Appends one delivery attempt; answers once it is committed.
    pub async fn record_alert_attempt(&self, a: AlertAttempt) -> Result<u64, StorageError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "INSERT INTO alert_attempts (at_ms, channel, channel_type, incident_id, check_id, event,
                     attempt, attempts, result, class, code, detail)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING seq",
                &[
                    &a.at_ms,
                    &a.channel,
                    &a.channel_type,
                    &(a.incident_id as i64),
                    &a.check_id,
                    &a.event,
                    &i64::from(a.attempt),
                    &i64::from(a.of),
                    &a.result,
                    &a.class,
                    &a.code.map(i64::from),
                    &a.detail,
                ],
            )
            .await?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    /// At most `q.limit` attempts, newest first (with `after_seq`: the
    /// ones above it, oldest first).
    pub async fn alert_attempts(
        &self,
        q: AlertAttemptQuery,
    ) -> Result<Vec<AlertAttempt>, StorageError> {
        let order = if q.after_seq.is_some() { "ASC" } else { "DESC" };
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT seq, at_ms, channel, channel_type, incident_id, check_id, event, attempt, attempts,
                            result, class, code, detail
                     FROM alert_attempts
                     WHERE ($1::text IS NULL OR channel = $1) AND ($2::int8 IS NULL OR incident_id = $2)
                       AND ($3::int8 IS NULL OR seq < $3) AND ($4::int8 IS NULL OR seq > $4)
                     ORDER BY seq {order} LIMIT $5"
                ),
                &[
                    &q.channel,
                    &q.incident_id.map(|i| i as i64),
                    &q.before_seq.map(|s| s as i64),
                    &q.after_seq.map(|s| s as i64),
                    &(q.limit.clamp(1, 1000) as i64),
                ],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| AlertAttempt {
                seq: r.get::<_, i64>(0) as u64,
                at_ms: r.get(1),
                channel: r.get(2),
                channel_type: r.get(3),
                incident_id: r.get::<_, i64>(4) as u64,
                check_id: r.get(5),
                event: r.get(6),
                attempt: r.get::<_, i64>(7) as u32,
                of: r.get::<_, i64>(8) as u32,
                result: r.get(9),
                class: r.get(10),
                code: r.get::<_, Option<i64>>(11).map(|c| c as u16),
                detail: r.get(12),
            })
            .collect())
    }

    /// Deletes attempts older than `cutoff_ms`; returns how many.
    pub async fn prune_alert_attempts(&self, cutoff_ms: i64) -> Result<usize, StorageError> {
        self.delete_in_chunks(
            "DELETE FROM alert_attempts WHERE seq IN (SELECT seq FROM alert_attempts WHERE at_ms < $1 LIMIT $2)",
            cutoff_ms,
        )
        .await
    }
}
