//! Agents on PostgreSQL: name, region, token hash, revocation, last seen.

use super::super::model::{JoinToken, JoinUse, Source, StorageError, StoredAgent};
use super::Postgres;

impl Postgres {
    /// Inserts or replaces an agent (its name, region, token hash, source, revocation).
    pub async fn put_agent(&self, a: StoredAgent) -> Result<(), StorageError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO agents (id, name, region, token_sha256, source, revoked, version, last_seen, connected, created_at, previous_token_sha256, previous_token_until, token_in_use)
                 VALUES ($1, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                 ON CONFLICT (id) DO UPDATE SET region = $2, token_sha256 = $3, source = $4, revoked = $5, previous_token_sha256 = $10, previous_token_until = $11, token_in_use = $12",
                &[
                    &a.name,
                    &a.region,
                    &a.token_sha256,
                    &a.source.as_str(),
                    &a.revoked,
                    &a.version,
                    &a.last_seen_ms,
                    &a.connected,
                    &a.created_at_ms,
                    &a.previous_token_sha256,
                    &a.previous_token_until_ms,
                    &a.token_in_use,
                ],
            )
            .await?;
        Self::announce(&client, "agents").await;
        Ok(())
    }

    /// Records that an agent was seen (and, when given, its version and connection state).
    pub async fn touch_agent(
        &self,
        name: String,
        at_ms: i64,
        version: Option<String>,
        connected: Option<bool>,
    ) -> Result<(), StorageError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE agents SET last_seen = $2, version = COALESCE($3, version), connected = COALESCE($4, connected) WHERE id = $1",
            )
            .await?;
        client
            .execute(&stmt, &[&name, &at_ms, &version, &connected])
            .await?;
        Ok(())
    }

    /// Records that the agent called with its current token `token_sha256`
    /// (nothing if the token changed meanwhile).
    pub async fn confirm_agent_token(&self, name: String, token_sha256: String) -> Result<(), StorageError> {
        let client = self.client().await?;
        let n = client
            .execute(
                "UPDATE agents SET token_in_use = TRUE WHERE id = $1 AND token_sha256 = $2 AND NOT token_in_use",
                &[&name, &token_sha256],
            )
            .await?;
        if n > 0 {
            Self::announce(&client, "agents").await;
        }
        Ok(())
    }

    /// Replaces a rotated agent's undelivered token `expected` by `new`
    /// (a fresh one made where the first was lost: a restart, another
    /// replica). False if the row changed meanwhile (another replica made
    /// one, a new rotation, a revocation): then nothing is written. The
    /// conditional UPDATE is atomic across coordinators.
    pub async fn replace_agent_token(&self, name: String, expected: String, new: String) -> Result<bool, StorageError> {
        let client = self.client().await?;
        let n = client
            .execute(
                "UPDATE agents SET token_sha256 = $3, token_in_use = FALSE
                 WHERE id = $1 AND token_sha256 = $2 AND NOT revoked AND previous_token_sha256 IS NOT NULL",
                &[&name, &expected, &new],
            )
            .await?;
        if n == 1 {
            Self::announce(&client, "agents").await;
        }
        Ok(n == 1)
    }

    /// At start nobody is connected yet.
    pub async fn reset_connections(&self) -> Result<(), StorageError> {
        let client = self.client().await?;
        client
            .execute("UPDATE agents SET connected = FALSE", &[])
            .await?;
        Ok(())
    }

    /// Every agent, revoked ones included.
    pub async fn load_agents(&self) -> Result<Vec<StoredAgent>, StorageError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT name, region, token_sha256, source, revoked, version, last_seen, connected, created_at, previous_token_sha256, previous_token_until, token_in_use FROM agents ORDER BY name",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| StoredAgent {
                name: r.get(0),
                region: r.get(1),
                token_sha256: r.get(2),
                source: Source::parse(r.get(3)),
                revoked: r.get(4),
                version: r.get(5),
                last_seen_ms: r.get(6),
                connected: r.get(7),
                created_at_ms: r.get(8),
                previous_token_sha256: r.get(9),
                previous_token_until_ms: r.get(10),
                token_in_use: r.get(11),
            })
            .collect())
    }
}

impl Postgres {
    /// Stores a new join token (its SHA-256).
    pub async fn put_join_token(&self, t: JoinToken) -> Result<(), StorageError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO join_tokens (token_sha256, agent, agent_token_sha256, created_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5)",
                &[&t.token_sha256, &t.agent, &t.agent_token_sha256, &t.created_at_ms, &t.expires_at_ms],
            )
            .await?;
        Ok(())
    }

    /// Marks a join token used if it is unused and unexpired at `at_ms`;
    /// says why not. The conditional UPDATE is atomic across coordinators.
    pub async fn use_join_token(
        &self,
        token_sha256: String,
        at_ms: i64,
    ) -> Result<JoinUse, StorageError> {
        let client = self.client().await?;
        if let Some(r) = client
            .query_opt(
                "UPDATE join_tokens SET used_at = $2
                 WHERE token_sha256 = $1 AND used_at IS NULL AND expires_at > $2
                 RETURNING agent, agent_token_sha256",
                &[&token_sha256, &at_ms],
            )
            .await?
        {
            return Ok(JoinUse::Granted {
                agent: r.get(0),
                agent_token_sha256: r.get(1),
            });
        }
        let row = client
            .query_opt(
                "SELECT agent, expires_at, used_at FROM join_tokens WHERE token_sha256 = $1",
                &[&token_sha256],
            )
            .await?;
        Ok(match row {
            None => JoinUse::Unknown,
            Some(r) => match r.get::<_, Option<i64>>(2) {
                Some(at_ms) => JoinUse::Used {
                    agent: r.get(0),
                    at_ms,
                },
                None => JoinUse::Expired {
                    agent: r.get(0),
                    at_ms: r.get(1),
                },
            },
        })
    }
}
