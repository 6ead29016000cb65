//! The audit log on PostgreSQL: who changed what, from where, when.

use super::super::model::{AuditEntry, AuditPage, AuditQuery, StorageError};
use super::Postgres;

impl Postgres {
    /// Appends one entry; answers once it is committed.
    pub async fn append_audit(&self, e: AuditEntry) -> Result<u64, StorageError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "INSERT INTO audit_log (at_ms, actor, role, source, action, object, object_id, detail)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING seq",
                &[&e.at_ms, &e.actor, &e.role, &e.source, &e.action, &e.object, &e.object_id, &e.detail],
            )
            .await?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    /// The audit log, newest first, filtered and paged.
    pub async fn query_audit(&self, q: AuditQuery) -> Result<AuditPage, StorageError> {
        let client = self.client().await?;
        let limit = q.limit.clamp(1, 1000) as i64;
        let rows = client
            .query(
                "SELECT seq, at_ms, actor, role, source, action, object, object_id, detail FROM audit_log
                 WHERE ($1::text IS NULL OR actor = $1) AND ($2::text IS NULL OR object = $2) AND ($3::text IS NULL OR object_id = $3)
                   AND ($4::int8 IS NULL OR at_ms >= $4) AND ($5::int8 IS NULL OR at_ms < $5) AND ($6::int8 IS NULL OR seq < $6)
                 ORDER BY seq DESC LIMIT $7",
                &[
                    &q.actor,
                    &q.object,
                    &q.object_id,
                    &q.since_ms,
                    &q.until_ms,
                    &q.before_seq.map(|s| s as i64),
                    &(limit + 1),
                ],
            )
            .await?;
        let mut entries: Vec<AuditEntry> = rows
            .iter()
            .map(|r| AuditEntry {
                seq: r.get::<_, i64>(0) as u64,
                at_ms: r.get(1),
                actor: r.get(2),
                role: r.get(3),
                source: r.get(4),
                action: r.get(5),
                object: r.get(6),
                object_id: r.get(7),
                detail: r.get(8),
            })
            .collect();
        let next = if entries.len() as i64 > limit {
            entries.truncate(limit as usize);
            entries.last().map(|e| e.seq)
        } else {
            None
        };
        Ok(AuditPage { entries, next })
    }

    /// Deletes audit entries older than `cutoff_ms`; returns how many.
    pub async fn prune_audit(&self, cutoff_ms: i64) -> Result<usize, StorageError> {
        self.delete_in_chunks(
            "DELETE FROM audit_log WHERE seq IN (SELECT seq FROM audit_log WHERE at_ms < $1 LIMIT $2)",
            cutoff_ms,
        )
        .await
    }
}
