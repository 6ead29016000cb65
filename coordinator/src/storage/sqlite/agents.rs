//! Agents: name, region, token hash, revocation, last seen.

use super::engine::Sqlite;
use super::super::model::{Source, StorageError, StoredAgent};
use rusqlite::params;

impl Sqlite {
    /// Inserts or replaces an agent (its name, region, token hash, source, revocation).
    pub async fn put_agent(&self, a: StoredAgent) -> Result<(), StorageError> {
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO agents (id, name, region, token_sha256, source, revoked, version, last_seen, connected, created_at)
                 VALUES (?1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (id) DO UPDATE SET region = ?2, token_sha256 = ?3, source = ?4, revoked = ?5",
                params![a.name, a.region, a.token_sha256, a.source.as_str(), a.revoked, a.version, a.last_seen_ms, a.connected, a.created_at_ms],
            )?;
            Ok(())
        })
        .await
    }

    /// Records that an agent was seen (and, when given, its version and connection state).
    pub async fn touch_agent(
        &self,
        name: String,
        at_ms: i64,
        version: Option<String>,
        connected: Option<bool>,
    ) -> Result<(), StorageError> {
        self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE agents SET last_seen = ?2, version = COALESCE(?3, version), connected = COALESCE(?4, connected) WHERE id = ?1",
            )?
            .execute(params![name, at_ms, version, connected])?;
            Ok(())
        })
        .await
    }

    /// At start nobody is connected yet.
    pub async fn reset_connections(&self) -> Result<(), StorageError> {
        self.write(|conn| {
            conn.execute("UPDATE agents SET connected = 0", [])?;
            Ok(())
        })
        .await
    }

    /// Every agent, revoked ones included.
    pub async fn load_agents(&self) -> Result<Vec<StoredAgent>, StorageError> {
        self.read(|conn| {
            let mut stmt = conn.prepare(
                "SELECT name, region, token_sha256, source, revoked, version, last_seen, connected, created_at FROM agents ORDER BY name",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(StoredAgent {
                    name: r.get(0)?,
                    region: r.get(1)?,
                    token_sha256: r.get(2)?,
                    source: Source::parse(&r.get::<_, String>(3)?),
                    revoked: r.get(4)?,
                    version: r.get(5)?,
                    last_seen_ms: r.get(6)?,
                    connected: r.get(7)?,
                    created_at_ms: r.get(8)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}
