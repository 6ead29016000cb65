//! The audit log: who changed what, from where, when.

use super::engine::Sqlite;
use super::super::model::{AuditEntry, AuditPage, AuditQuery, StorageError};
use rusqlite::params;

impl Sqlite {
    /// Appends one entry; answers once it is committed.
    pub async fn append_audit(&self, e: AuditEntry) -> Result<u64, StorageError> {
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO audit_log (at_ms, actor, role, source, action, object, object_id, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![e.at_ms, e.actor, e.role, e.source, e.action, e.object, e.object_id, e.detail])?;
            Ok(conn.last_insert_rowid() as u64)
        })
        .await
    }

    /// The audit log, newest first, filtered and paged.
    pub async fn query_audit(&self, q: AuditQuery) -> Result<AuditPage, StorageError> {
        self.read(move |conn| {
            let limit = q.limit.clamp(1, 1000) as i64;
            let mut stmt = conn.prepare_cached(
                "SELECT seq, at_ms, actor, role, source, action, object, object_id, detail FROM audit_log
                 WHERE (?1 IS NULL OR actor = ?1) AND (?2 IS NULL OR object = ?2) AND (?3 IS NULL OR object_id = ?3)
                   AND (?4 IS NULL OR at_ms >= ?4) AND (?5 IS NULL OR at_ms < ?5) AND (?6 IS NULL OR seq < ?6)
                 ORDER BY seq DESC LIMIT ?7",
            )?;
            let mut entries = stmt
                .query_map(
                    params![q.actor, q.object, q.object_id, q.since_ms, q.until_ms, q.before_seq.map(|s| s as i64), limit + 1],
                    |r| {
                        Ok(AuditEntry {
                            seq: r.get::<_, i64>(0)? as u64,
                            at_ms: r.get(1)?,
                            actor: r.get(2)?,
                            role: r.get(3)?,
                            source: r.get(4)?,
                            action: r.get(5)?,
                            object: r.get(6)?,
                            object_id: r.get(7)?,
                            detail: r.get(8)?,
                        })
                    },
                )?
                .collect::<Result<Vec<_>, _>>()?;
            let next = if entries.len() as i64 > limit {
                entries.truncate(limit as usize);
                entries.last().map(|e| e.seq)
            } else {
                None
            };
            Ok(AuditPage { entries, next })
        })
        .await
    }

    /// Deletes audit entries older than `cutoff_ms`; returns how many.
    pub async fn prune_audit(&self, cutoff_ms: i64) -> Result<usize, StorageError> {
        self.delete_in_chunks(
            "DELETE FROM audit_log WHERE seq IN (SELECT seq FROM audit_log WHERE at_ms < ?1 LIMIT ?2)",
            cutoff_ms,
        )
        .await
    }
}

#[cfg(test)]
mod audit_tests {
    use super::*;
    use super::super::migrations::{MIGRATIONS, SCHEMA};
    use crate::storage::DB_FILE;
    use rusqlite::Connection;

    fn entry(at_ms: i64, actor: &str, action: &str) -> AuditEntry {
        AuditEntry {
            seq: 0,
            at_ms,
            actor: actor.into(),
            role: "admin".into(),
            source: Some("127.0.0.1".into()),
            action: action.into(),
            object: "check".into(),
            object_id: "corp".into(),
            detail: None,
        }
    }

    #[tokio::test]
    async fn the_audit_log_pages_newest_first_filters_and_prunes() {
        let dir = tempfile::tempdir().unwrap();
        let s = Sqlite::open(dir.path()).unwrap();
        for (i, actor) in ["admin", "alice", "admin", "admin"].iter().enumerate() {
            s.append_audit(entry(1000 * (i as i64 + 1), actor, "changed"))
                .await
                .unwrap();
        }
        let page = |q: AuditQuery| {
            let s = &s;
            async move { s.query_audit(q).await.unwrap() }
        };
        let first = page(AuditQuery {
            limit: 2,
            ..Default::default()
        })
        .await;
        assert_eq!(
            first.entries.iter().map(|e| e.at_ms).collect::<Vec<_>>(),
            [4000, 3000]
        );
        let second = page(AuditQuery {
            limit: 2,
            before_seq: first.next,
            ..Default::default()
        })
        .await;
        assert_eq!(
            second.entries.iter().map(|e| e.at_ms).collect::<Vec<_>>(),
            [2000, 1000]
        );
        assert_eq!(second.next, None);
        let alice = page(AuditQuery {
            limit: 10,
            actor: Some("alice".into()),
            ..Default::default()
        })
        .await;
        assert_eq!(alice.entries.len(), 1);
        assert_eq!(alice.entries[0].source.as_deref(), Some("127.0.0.1"));
        assert_eq!(s.prune_audit(2500).await.unwrap(), 2);
        assert_eq!(
            page(AuditQuery {
                limit: 10,
                ..Default::default()
            })
            .await
            .entries
            .len(),
            2
        );
    }

    #[tokio::test]
    async fn a_version_1_database_gains_the_audit_log_once() {
        let dir = tempfile::tempdir().unwrap();
        {
            // What a database written before numbered migrations looks like.
            let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
        }
        for _ in 0..2 {
            let s = Sqlite::open(dir.path()).unwrap();
            s.append_audit(entry(1, "admin", "created")).await.unwrap();
            s.close().await;
        }
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.last().unwrap().0);
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM audit_log", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            n, 2,
            "reopening neither re-ran the migration nor lost an entry"
        );
    }
}
