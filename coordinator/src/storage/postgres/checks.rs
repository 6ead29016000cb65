//! Checks on PostgreSQL: their spec, revision and fate.

use super::super::model::{Source, StorageError, StoredCheck};
use super::Postgres;
use crate::config::CheckSpec;
use std::time::Duration;

impl Postgres {
    /// Inserts or replaces a check.
    pub async fn put_check(&self, c: StoredCheck) -> Result<(), StorageError> {
        // The check's own quorum rides in the stored table, as on SQLite.
        let mut stored_table = c.spec.table.clone();
        if let (Some(q), Some(obj)) = (c.spec.quorum, stored_table.as_object_mut()) {
            obj.insert("quorum".into(), crate::judge::config::quorum_value(q));
        }
        crate::config::PublicListing::insert_into(c.spec.public.as_ref(), &mut stored_table);
        let table = serde_json::to_string(&stored_table).expect("a JSON value serializes");
        let regions = serde_json::to_string(&c.spec.regions).expect("strings serialize");
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO checks (id, name, revision, check_json, interval_ms, regions, source, deleted, updated_at)
                 VALUES ($1, $1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (id) DO UPDATE SET revision = $2, check_json = $3, interval_ms = $4, regions = $5,
                   source = $6, deleted = $7, updated_at = $8",
                &[
                    &c.spec.name,
                    &(c.revision as i64),
                    &table,
                    &(c.spec.interval.as_millis() as i64),
                    &regions,
                    &c.source.as_str(),
                    &c.deleted,
                    &c.updated_at_ms,
                ],
            )
            .await?;
        Self::announce(&client, "checks").await;
        Ok(())
    }

    /// Every check ever stored, deleted ones included.
    pub async fn load_checks(&self) -> Result<Vec<StoredCheck>, StorageError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, revision, check_json, interval_ms, regions, source, deleted, updated_at FROM checks ORDER BY id",
                &[],
            )
            .await?;
        let mut out = Vec::new();
        for r in rows {
            let id: String = r.get(0);
            let json: String = r.get(2);
            let regions: String = r.get(4);
            let mut table: serde_json::Value =
                serde_json::from_str(&json).map_err(|e| StorageError::Corrupt(format!("check {id}: {e}")))?;
            let quorum = table
                .as_object_mut()
                .and_then(|o| o.remove("quorum"))
                .and_then(|raw| {
                    crate::judge::config::quorum("quorum", &raw, None, &mut Vec::new())
                });
            let public = table
                .as_object_mut()
                .and_then(|o| crate::config::PublicListing::take_from("check", o, &mut Vec::new()));
            let regions = serde_json::from_str(&regions)
                .map_err(|e| StorageError::Corrupt(format!("check {id} regions: {e}")))?;
            out.push(StoredCheck {
                spec: CheckSpec {
                    name: id,
                    table,
                    interval: Duration::from_millis(r.get::<_, i64>(3) as u64),
                    regions,
                    quorum,
                    public,
                },
                revision: r.get::<_, i64>(1) as u64,
                source: Source::parse(r.get(5)),
                deleted: r.get(6),
                updated_at_ms: r.get(7),
            });
        }
        Ok(out)
    }
}
