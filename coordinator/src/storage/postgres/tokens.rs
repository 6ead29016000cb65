//! API tokens made through the API, on PostgreSQL (only their SHA-256),
//! and the console sessions signed in with them (only hashes too).

use super::super::model::{ConsoleSession, StorageError, StoredToken};
use super::Postgres;

impl Postgres {
    /// Inserts or replaces (a revoked name reused) an API token.
    pub async fn put_api_token(&self, t: StoredToken) -> Result<(), StorageError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO api_tokens (name, role, token_sha256, created_at, created_by, revoked_at)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (name) DO UPDATE SET role = $2, token_sha256 = $3, created_at = $4, created_by = $5, revoked_at = $6",
                &[&t.name, &t.role, &t.token_sha256, &t.created_at_ms, &t.created_by, &t.revoked_at_ms],
            )
            .await?;
        Self::announce(&client, "tokens").await;
        Ok(())
    }

    /// Every API token made through the API, revoked ones included.
    pub async fn load_api_tokens(&self) -> Result<Vec<StoredToken>, StorageError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT name, role, token_sha256, created_at, created_by, revoked_at FROM api_tokens ORDER BY name",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| StoredToken {
                name: r.get(0),
                role: r.get(1),
                token_sha256: r.get(2),
                created_at_ms: r.get(3),
                created_by: r.get(4),
                revoked_at_ms: r.get(5),
            })
            .collect())
    }

    /// Stores a new console session (and drops the expired ones).
    pub async fn put_console_session(&self, s: ConsoleSession) -> Result<(), StorageError> {
        let client = self.client().await?;
        client.execute("DELETE FROM console_sessions WHERE expires_at <= $1", &[&s.created_at_ms]).await?;
        client
            .execute(
                "INSERT INTO console_sessions (id_sha256, token_name, token_sha256, role, created_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[&s.id_sha256, &s.token_name, &s.token_sha256, &s.role, &s.created_at_ms, &s.expires_at_ms],
            )
            .await?;
        Ok(())
    }

    /// The session whose cookie hashes to `id_sha256`, if unexpired at `now_ms`.
    pub async fn console_session(&self, id_sha256: String, now_ms: i64) -> Result<Option<ConsoleSession>, StorageError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT id_sha256, token_name, token_sha256, role, created_at, expires_at FROM console_sessions
                 WHERE id_sha256 = $1 AND expires_at > $2",
                &[&id_sha256, &now_ms],
            )
            .await?;
        Ok(row.map(|r| ConsoleSession {
            id_sha256: r.get(0),
            token_name: r.get(1),
            token_sha256: r.get(2),
            role: r.get(3),
            created_at_ms: r.get(4),
            expires_at_ms: r.get(5),
        }))
    }

    /// Ends a console session (sign-out).
    pub async fn delete_console_session(&self, id_sha256: String) -> Result<(), StorageError> {
        let client = self.client().await?;
        client.execute("DELETE FROM console_sessions WHERE id_sha256 = $1", &[&id_sha256]).await?;
        Ok(())
    }
}
