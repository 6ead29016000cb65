//! Agents: name, region, token hash, revocation, last seen.

use super::super::model::{JoinToken, JoinUse, Source, StorageError, StoredAgent};
use super::engine::Sqlite;
use rusqlite::{OptionalExtension, params};

impl Sqlite {
    /// Inserts or replaces an agent (its name, region, token hash, source, revocation).
    pub async fn put_agent(&self, a: StoredAgent) -> Result<(), StorageError> {
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO agents (id, name, region, token_sha256, source, revoked, version, last_seen, connected, created_at, previous_token_sha256, previous_token_until, token_in_use)
                 VALUES (?1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                 ON CONFLICT (id) DO UPDATE SET region = ?2, token_sha256 = ?3, source = ?4, revoked = ?5, previous_token_sha256 = ?10, previous_token_until = ?11, token_in_use = ?12",
                params![a.name, a.region, a.token_sha256, a.source.as_str(), a.revoked, a.version, a.last_seen_ms, a.connected, a.created_at_ms, a.previous_token_sha256, a.previous_token_until_ms, a.token_in_use],
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

    /// Records that the agent called with its current token `token_sha256`
    /// (nothing if the token changed meanwhile).
    pub async fn confirm_agent_token(&self, name: String, token_sha256: String) -> Result<(), StorageError> {
        self.write(move |conn| {
            conn.execute(
                "UPDATE agents SET token_in_use = 1 WHERE id = ?1 AND token_sha256 = ?2",
                params![name, token_sha256],
            )?;
            Ok(())
        })
        .await
    }

    /// Replaces a rotated agent's undelivered token `expected` by `new`
    /// (a fresh one made where the first was lost: a restart, another
    /// replica). False if the row changed meanwhile (another replica made
    /// one, a new rotation, a revocation): then nothing is written.
    pub async fn replace_agent_token(&self, name: String, expected: String, new: String) -> Result<bool, StorageError> {
        self.write(move |conn| {
            let n = conn.execute(
                "UPDATE agents SET token_sha256 = ?3, token_in_use = 0
                 WHERE id = ?1 AND token_sha256 = ?2 AND NOT revoked AND previous_token_sha256 IS NOT NULL",
                params![name, expected, new],
            )?;
            Ok(n == 1)
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
                "SELECT name, region, token_sha256, source, revoked, version, last_seen, connected, created_at, previous_token_sha256, previous_token_until, token_in_use FROM agents ORDER BY name",
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
                    previous_token_sha256: r.get(9)?,
                    previous_token_until_ms: r.get(10)?,
                    token_in_use: r.get(11)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}

impl Sqlite {
    /// Stores a new join token (its SHA-256).
    pub async fn put_join_token(&self, t: JoinToken) -> Result<(), StorageError> {
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO join_tokens (token_sha256, agent, agent_token_sha256, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![t.token_sha256, t.agent, t.agent_token_sha256, t.created_at_ms, t.expires_at_ms],
            )?;
            Ok(())
        })
        .await
    }

    /// Marks a join token used if it is unused and unexpired at `at_ms`;
    /// says why not. The one writer thread makes this atomic.
    pub async fn use_join_token(
        &self,
        token_sha256: String,
        at_ms: i64,
    ) -> Result<JoinUse, StorageError> {
        self.write(move |conn| {
            let row = conn
                .query_row(
                    "SELECT agent, agent_token_sha256, expires_at, used_at FROM join_tokens WHERE token_sha256 = ?1",
                    params![token_sha256],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, Option<i64>>(3)?)),
                )
                .optional()?;
            let Some((agent, agent_token_sha256, expires_at, used_at)) = row else {
                return Ok(JoinUse::Unknown);
            };
            if let Some(at_ms) = used_at {
                return Ok(JoinUse::Used { agent, at_ms });
            }
            if expires_at <= at_ms {
                return Ok(JoinUse::Expired { agent, at_ms: expires_at });
            }
            conn.execute("UPDATE join_tokens SET used_at = ?2 WHERE token_sha256 = ?1", params![token_sha256, at_ms])?;
            Ok(JoinUse::Granted { agent, agent_token_sha256 })
        })
        .await
    }
}
