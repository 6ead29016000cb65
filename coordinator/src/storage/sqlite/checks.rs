//! Checks: their spec, revision and fate (deleted ones stay).

use super::super::model::{Source, StorageError, StoredCheck};
use super::engine::{Sqlite, corrupt};
use crate::config::CheckSpec;
use rusqlite::params;
use std::time::Duration;

impl Sqlite {
    /// Inserts or replaces a check.
    pub async fn put_check(&self, c: StoredCheck) -> Result<(), StorageError> {
        // The check's own quorum rides in the stored table (agents get
        // `spec.table`, which never has it); `load_checks` takes it out again.
        let mut stored_table = c.spec.table.clone();
        if let (Some(q), Some(obj)) = (c.spec.quorum, stored_table.as_object_mut()) {
            obj.insert("quorum".into(), crate::judge::config::quorum_value(q));
        }
        crate::config::PublicListing::insert_into(c.spec.public.as_ref(), &mut stored_table);
        let table = serde_json::to_string(&stored_table).expect("a JSON value serializes");
        let regions = serde_json::to_string(&c.spec.regions).expect("strings serialize");
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO checks (id, name, revision, check_json, interval_ms, regions, source, deleted, updated_at)
                 VALUES (?1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (id) DO UPDATE SET revision = ?2, check_json = ?3, interval_ms = ?4, regions = ?5,
                   source = ?6, deleted = ?7, updated_at = ?8",
                params![
                    c.spec.name,
                    c.revision as i64,
                    table,
                    c.spec.interval.as_millis() as i64,
                    regions,
                    c.source.as_str(),
                    c.deleted,
                    c.updated_at_ms
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// Every check ever stored, deleted ones included.
    pub async fn load_checks(&self) -> Result<Vec<StoredCheck>, StorageError> {
        self.read(|conn| {
            let mut stmt = conn.prepare(
                "SELECT id, revision, check_json, interval_ms, regions, source, deleted, updated_at FROM checks ORDER BY id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, bool>(6)?,
                    r.get::<_, i64>(7)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (id, revision, json, interval_ms, regions, source, deleted, updated_at_ms) = row?;
                let mut table: serde_json::Value = serde_json::from_str(&json).map_err(|e| corrupt(format!("check {id}: {e}")))?;
                let quorum = table
                    .as_object_mut()
                    .and_then(|o| o.remove("quorum"))
                    .and_then(|raw| crate::judge::config::quorum("quorum", &raw, None, &mut Vec::new()));
                let public = table
                    .as_object_mut()
                    .and_then(|o| crate::config::PublicListing::take_from("check", o, &mut Vec::new()));
                let regions = serde_json::from_str(&regions).map_err(|e| corrupt(format!("check {id} regions: {e}")))?;
                out.push(StoredCheck {
                    spec: CheckSpec { name: id, table, interval: Duration::from_millis(interval_ms as u64), regions, quorum, public },
                    revision: revision as u64,
                    source: Source::parse(&source),
                    deleted,
                    updated_at_ms,
                });
            }
            Ok(out)
        })
        .await
    }
}
