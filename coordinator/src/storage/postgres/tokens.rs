//! API tokens made through the API, on PostgreSQL (only their SHA-256).

use super::super::model::{StorageError, StoredToken};
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
}
