//! The SRE console's login sessions: a browser cannot send a bearer
//! token, so `/console/login` exchanges one for a session cookie.
//!
//! The cookie holds 32 random bytes (base64url), never the token. Sessions
//! are kept in storage (`console_sessions`), so a restart signs nobody out
//! and every replica of a PostgreSQL cluster honours every session; only
//! hashes are stored: the SHA-256 of the cookie value, and of the token it
//! was made with. A session is honoured only while that very token (same
//! digest and role) is in force (checked by the gate on every request), so
//! revoking or rotating a token ends its sessions, and a new token reusing
//! a revoked one's name does not revive them. Each session's CSRF token,
//! which every form of the console carries and every console write
//! compares in constant time, is derived from the cookie value (a hash of
//! it under its own label): the database never holds it.

use super::Tokens;
use crate::config::tokens::Role;
use axum::extract::Request;
use crate::storage::{ConsoleSession, Storage, StorageError};
use base64::Engine;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use subtle::ConstantTimeEq;

/// The cookie's name (its path is `/console`).
pub const COOKIE: &str = "mailloop_console";
/// How long a session lasts after login.
pub const LIFETIME_MS: i64 = 12 * 3600 * 1000;

/// One signed-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    /// The token's name (who the audit log says acted).
    pub name: String,
    pub role: Role,
    /// SHA-256 (hex) of the token signed in with.
    pub token_sha256: String,
    /// The value every form of this session must send back as `csrf`.
    pub csrf: String,
    pub expires_ms: i64,
}

impl Session {
    /// Whether `given` is this session's CSRF token (constant time).
    pub fn csrf_matches(&self, given: &str) -> bool {
        bool::from(self.csrf.as_bytes().ct_eq(given.as_bytes()))
    }
}

/// The sessions, in the coordinator's storage.
#[derive(Default)]
pub struct Sessions {
    /// Set once at start ([`Sessions::set_storage`]); before it, nobody
    /// can sign in.
    storage: OnceLock<Arc<Storage>>,
    /// Whether the admin listener speaks TLS: the cookie is then `Secure`.
    secure: AtomicBool,
}

fn random() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the OS random source works");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// The stored key of a cookie value: its SHA-256, hex.
fn key(cookie: &str) -> String {
    crate::config::names::token_sha256(cookie)
}

/// The CSRF token of a cookie value: a hash under its own label, so it is
/// neither the cookie nor what the database keeps.
fn csrf_of(cookie: &str) -> String {
    let mut c = ring::digest::Context::new(&ring::digest::SHA256);
    c.update(b"mailloop console csrf\0");
    c.update(cookie.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(c.finish().as_ref())
}

impl Sessions {
    /// Marks the cookie `Secure` (set once at start when the listener has TLS).
    pub fn set_secure(&self, secure: bool) {
        self.secure.store(secure, Ordering::Relaxed);
    }

    /// Where sessions are kept (set once at start).
    pub fn set_storage(&self, storage: Arc<Storage>) {
        let _ = self.storage.set(storage);
    }

    fn storage(&self) -> Result<&Arc<Storage>, StorageError> {
        self.storage.get().ok_or(StorageError::Closed)
    }

    /// A new session for the token `name` with `role` whose SHA-256 (hex)
    /// is `token_sha256`, stored before it is answered: its cookie value
    /// (to send once, in `Set-Cookie`) and the session.
    pub async fn create(
        &self,
        name: String,
        role: Role,
        token_sha256: String,
        now_ms: i64,
    ) -> Result<(String, Session), StorageError> {
        let cookie = random();
        let session = Session {
            name,
            role,
            token_sha256,
            csrf: csrf_of(&cookie),
            expires_ms: now_ms + LIFETIME_MS,
        };
        self.storage()?
            .put_console_session(ConsoleSession {
                id_sha256: key(&cookie),
                token_name: session.name.clone(),
                token_sha256: session.token_sha256.clone(),
                role: role.as_str().to_string(),
                created_at_ms: now_ms,
                expires_at_ms: session.expires_ms,
            })
            .await?;
        Ok((cookie, session))
    }

    /// The unexpired session of a cookie value (None too when storage
    /// cannot answer: the console then asks to sign in).
    pub async fn find(&self, cookie: &str, now_ms: i64) -> Option<Session> {
        let stored = match self.storage().ok()?.console_session(key(cookie), now_ms).await {
            Ok(s) => s?,
            Err(e) => {
                tracing::warn!(error = %e, "console session lookup failed");
                return None;
            }
        };
        Some(Session {
            name: stored.token_name,
            role: Role::parse(&stored.role)?,
            token_sha256: stored.token_sha256,
            csrf: csrf_of(cookie),
            expires_ms: stored.expires_at_ms,
        })
    }

    /// Ends the session of a cookie value, if any.
    pub async fn remove(&self, cookie: &str) {
        if let Ok(storage) = self.storage()
            && let Err(e) = storage.delete_console_session(key(cookie)).await
        {
            tracing::warn!(error = %e, "console sign-out: the session could not be deleted");
        }
    }

    /// The `Set-Cookie` value for a new session.
    pub fn set_cookie(&self, cookie: &str) -> String {
        format!(
            "{COOKIE}={cookie}; Path=/console; Max-Age={}; HttpOnly; SameSite=Strict{}",
            LIFETIME_MS / 1000,
            self.secure_attr()
        )
    }

    /// The `Set-Cookie` value that clears the cookie.
    pub fn clear_cookie(&self) -> String {
        format!(
            "{COOKIE}=; Path=/console; Max-Age=0; HttpOnly; SameSite=Strict{}",
            self.secure_attr()
        )
    }

    fn secure_attr(&self) -> &'static str {
        if self.secure.load(Ordering::Relaxed) {
            "; Secure"
        } else {
            ""
        }
    }
}

/// The console cookie's value in a request's `Cookie` headers.
pub fn cookie_value(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_session_is_found_by_its_cookie_until_it_expires_or_ends() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(Storage::open(dir.path()).unwrap());
        let s = Sessions::default();
        assert!(s.create("admin".into(), Role::Admin, "ab".repeat(32), 1000).await.is_err(), "no storage yet");
        s.set_storage(storage.clone());
        let (cookie, session) = s.create("admin".into(), Role::Admin, "ab".repeat(32), 1000).await.unwrap();
        assert!(!cookie.contains("admin"));
        let found = s.find(&cookie, 2000).await.unwrap();
        assert_eq!((found.name.as_str(), found.role, found.csrf.as_str()), ("admin", Role::Admin, session.csrf.as_str()));
        assert!(s.find(&cookie, 1000 + LIFETIME_MS).await.is_none(), "expired");
        assert!(s.find("other", 2000).await.is_none());
        // Another handle on the same storage (a restart, a replica) finds it.
        let again = Sessions::default();
        again.set_storage(storage.clone());
        assert_eq!(again.find(&cookie, 2000).await.unwrap().csrf, session.csrf);
        // The database holds neither the cookie nor the CSRF token.
        let stored = storage.console_session(key(&cookie), 2000).await.unwrap().unwrap();
        let row = format!("{stored:?}");
        assert!(!row.contains(&cookie) && !row.contains(&session.csrf), "{row}");
        assert!(session.csrf_matches(&session.csrf));
        assert!(!session.csrf_matches(""));
        assert!(!session.csrf_matches(&cookie));
        s.remove(&cookie).await;
        assert!(s.find(&cookie, 2000).await.is_none(), "signed out");
        assert!(!s.set_cookie("x").contains("Secure"));
        s.set_secure(true);
        assert!(
            s.set_cookie("x")
                .ends_with("HttpOnly; SameSite=Strict; Secure")
        );
    }

    #[test]
    fn the_cookie_is_read_among_others() {
        let mut h = axum::http::HeaderMap::new();
        h.insert(
            axum::http::header::COOKIE,
            "a=1; mailloop_console=abc; b=2".parse().unwrap(),
        );
        assert_eq!(cookie_value(&h), Some("abc"));
        h.insert(
            axum::http::header::COOKIE,
            "mailloop_console=".parse().unwrap(),
        );
        assert_eq!(cookie_value(&h), None);
    }
}

/// Whether `path` is the console's (the only place a session cookie
/// counts).
pub fn is_console_path(path: &str) -> bool {
    path == "/console" || path.starts_with("/console/")
}

/// The session of a console cookie, if it is live and the token it was
/// made with still in force (for `auth::gate`).
pub async fn session_of(tokens: &Tokens, cookie: &str) -> Option<Session> {
    let s = tokens.sessions.find(cookie, crate::clock::now_ms()).await?;
    tokens.in_force(&s.token_sha256, s.role).then_some(s)
}

/// The session cookie of a request to a console path (the only paths
/// that take it), owned: the request is not held across the lookup.
pub fn session_cookie(req: &Request) -> Option<String> {
    is_console_path(req.uri().path())
        .then(|| cookie_value(req.headers()).map(str::to_owned))
        .flatten()
}
