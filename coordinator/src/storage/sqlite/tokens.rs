//! API tokens made through the API (only their SHA-256), and the console
//! sessions signed in with them (only hashes too).

use super::engine::Sqlite;
use super::super::model::{ConsoleSession, StorageError, StoredToken};
use rusqlite::params;

impl Sqlite {
    /// Inserts or replaces (a revoked name reused) an API token.
    pub async fn put_api_token(&self, t: StoredToken) -> Result<(), StorageError> {
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO api_tokens (name, role, token_sha256, created_at, created_by, revoked_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (name) DO UPDATE SET role = ?2, token_sha256 = ?3, created_at = ?4, created_by = ?5, revoked_at = ?6",
                params![t.name, t.role, t.token_sha256, t.created_at_ms, t.created_by, t.revoked_at_ms],
            )?;
            Ok(())
        })
        .await
    }

    /// Every API token made through the API, revoked ones included.
    pub async fn load_api_tokens(&self) -> Result<Vec<StoredToken>, StorageError> {
        self.read(|conn| {
            let mut stmt = conn.prepare(
                "SELECT name, role, token_sha256, created_at, created_by, revoked_at FROM api_tokens ORDER BY name",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(StoredToken {
                    name: r.get(0)?,
                    role: r.get(1)?,
                    token_sha256: r.get(2)?,
                    created_at_ms: r.get(3)?,
                    created_by: r.get(4)?,
                    revoked_at_ms: r.get(5)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Stores a new console session (and drops the expired ones).
    pub async fn put_console_session(&self, s: ConsoleSession) -> Result<(), StorageError> {
        self.write(move |conn| {
            conn.execute("DELETE FROM console_sessions WHERE expires_at <= ?1", params![s.created_at_ms])?;
            conn.execute(
                "INSERT INTO console_sessions (id_sha256, token_name, token_sha256, role, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![s.id_sha256, s.token_name, s.token_sha256, s.role, s.created_at_ms, s.expires_at_ms],
            )?;
            Ok(())
        })
        .await
    }

    /// The session whose cookie hashes to `id_sha256`, if unexpired at `now_ms`.
    pub async fn console_session(&self, id_sha256: String, now_ms: i64) -> Result<Option<ConsoleSession>, StorageError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id_sha256, token_name, token_sha256, role, created_at, expires_at FROM console_sessions
                 WHERE id_sha256 = ?1 AND expires_at > ?2",
            )?;
            let mut rows = stmt.query(params![id_sha256, now_ms])?;
            Ok(match rows.next()? {
                Some(r) => Some(ConsoleSession {
                    id_sha256: r.get(0)?,
                    token_name: r.get(1)?,
                    token_sha256: r.get(2)?,
                    role: r.get(3)?,
                    created_at_ms: r.get(4)?,
                    expires_at_ms: r.get(5)?,
                }),
                None => None,
            })
        })
        .await
    }

    /// Ends a console session (sign-out).
    pub async fn delete_console_session(&self, id_sha256: String) -> Result<(), StorageError> {
        self.write(move |conn| {
            conn.execute("DELETE FROM console_sessions WHERE id_sha256 = ?1", params![id_sha256])?;
            Ok(())
        })
        .await
    }
}
