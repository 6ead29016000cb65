//! The SRE console's login sessions: a browser cannot send a bearer
//! token, so `/console/login` exchanges one for a session cookie.
//!
//! The cookie holds 32 random bytes (base64url), never the token; only
//! their SHA-256 is kept here, in memory (a restart signs everyone out).
//! A session remembers the token's name and role, and is honoured only
//! while a token of that name and role is in force (checked by the gate
//! on every request), so revoking or rotating a token ends its sessions.
//! Each session has its own random CSRF token, which every form of the
//! console carries and every console write compares in constant time.

use super::Tokens;
use crate::config::tokens::Role;
use axum::extract::Request;
use base64::Engine;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use subtle::ConstantTimeEq;

/// The cookie's name (its path is `/console`).
pub const COOKIE: &str = "mailloop_console";
/// How long a session lasts after login.
pub const LIFETIME_MS: i64 = 12 * 3600 * 1000;
/// Most live sessions; past it the oldest is dropped.
const MAX_SESSIONS: usize = 10_000;

/// One signed-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    /// The token's name (who the audit log says acted).
    pub name: String,
    pub role: Role,
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

/// The live sessions, by the SHA-256 of their cookie value.
#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<[u8; 32], Session>>,
    /// Whether the admin listener speaks TLS: the cookie is then `Secure`.
    secure: AtomicBool,
}

fn random() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the OS random source works");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn key(cookie: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, cookie.as_bytes());
    d.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

impl Sessions {
    /// Marks the cookie `Secure` (set once at start when the listener has TLS).
    pub fn set_secure(&self, secure: bool) {
        self.secure.store(secure, Ordering::Relaxed);
    }

    /// A new session for the token `name` with `role`: its cookie value
    /// (to send once, in `Set-Cookie`) and the session.
    pub fn create(&self, name: String, role: Role, now_ms: i64) -> (String, Session) {
        let cookie = random();
        let session = Session {
            name,
            role,
            csrf: random(),
            expires_ms: now_ms + LIFETIME_MS,
        };
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|_, s| s.expires_ms > now_ms);
        if live.len() >= MAX_SESSIONS
            && let Some(oldest) = live
                .iter()
                .min_by_key(|(_, s)| s.expires_ms)
                .map(|(k, _)| *k)
        {
            live.remove(&oldest);
        }
        live.insert(key(&cookie), session.clone());
        (cookie, session)
    }

    /// The unexpired session of a cookie value.
    pub fn find(&self, cookie: &str, now_ms: i64) -> Option<Session> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.get(&key(cookie))
            .filter(|s| s.expires_ms > now_ms)
            .cloned()
    }

    /// Ends the session of a cookie value, if any.
    pub fn remove(&self, cookie: &str) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.remove(&key(cookie));
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

    #[test]
    fn a_session_is_found_by_its_cookie_until_it_expires_or_ends() {
        let s = Sessions::default();
        let (cookie, session) = s.create("admin".into(), Role::Admin, 1000);
        assert!(!cookie.contains("admin"));
        assert_eq!(s.find(&cookie, 2000).unwrap().name, "admin");
        assert!(s.find(&cookie, 1000 + LIFETIME_MS).is_none(), "expired");
        assert!(s.find("other", 2000).is_none());
        assert!(session.csrf_matches(&session.csrf));
        assert!(!session.csrf_matches(""));
        assert!(!session.csrf_matches(&cookie));
        s.remove(&cookie);
        assert!(s.find(&cookie, 2000).is_none(), "signed out");
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

/// The session of a console request's cookie, if it is live and its
/// token still in force (for `auth::gate`).
pub fn session_of(tokens: &Tokens, req: &Request) -> Option<Session> {
    if !is_console_path(req.uri().path()) {
        return None;
    }
    let cookie = cookie_value(req.headers())?;
    let s = tokens.sessions.find(cookie, crate::clock::now_ms())?;
    tokens
        .list()
        .iter()
        .any(|(name, role)| *name == s.name && *role == s.role)
        .then_some(s)
}
