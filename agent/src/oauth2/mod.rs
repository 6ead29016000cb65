//! OAuth2 bearer tokens for mailboxes that take no password (Microsoft 365,
//! Gmail): getting them, keeping them, and the SASL messages that carry them.
//!
//! A [`TokenSource`] is one client at one token endpoint (a check side's
//! `[oauth2]`; both sides share one when they name the same client). It
//! caches an access token per scope in memory and hands it out until it is
//! close to expiry ([`refresh_margin`]); then the probe fetches a new one as
//! its own step, `oauth2.token` (absent from a report while the cached one
//! is good). With the refresh-token grant, the refresh token is read from
//! its file for every fetch, and a new one sent by the provider (rotation)
//! replaces the file atomically, mode 0600. Tokens are [`Secret`]s: never in
//! a log line, a step detail or a report.
//!
//! [`http`] speaks to the endpoint, [`sasl`] builds XOAUTH2 / OAUTHBEARER,
//! [`login`] is the one-time device-code sign-in of `mailloop-agent oauth2 login`.

pub mod http;
pub mod login;
pub mod sasl;

use crate::steps::{Done, StepError};
use crate::tls::TlsClient;
use crate::transport::ConnectTo;
use mailloop_common::config::{Grant, HttpsUrl, OAuth2Config, parse_https_url};
use mailloop_common::{FailureClass, Secret};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where "now" comes from; tests move it forward to expire a token.
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// The real clock.
pub fn system_clock() -> Clock {
    Arc::new(Instant::now)
}

/// How long before its expiry a token is replaced: half its lifetime, at
/// most five minutes, so a token never runs out in the middle of a probe.
pub fn refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 2).min(Duration::from_secs(300))
}

struct Cached {
    token: Secret,
    expires_at: Instant,
    lifetime: Duration,
}

/// A token answer, as far as the agent cares.
struct Issued {
    access_token: Secret,
    lifetime: Option<Duration>,
    refresh_token: Option<Secret>,
}

/// One OAuth2 client at one token endpoint, with its cached tokens.
pub struct TokenSource {
    cfg: OAuth2Config,
    url: HttpsUrl,
    tls: TlsClient,
    cache: Mutex<HashMap<String, Cached>>,
    /// A rotated refresh token that could not be written to its file; used
    /// instead of the file's (which the provider may have revoked).
    unsaved: Mutex<Option<Secret>>,
}

impl TokenSource {
    /// Loads the endpoint's trust and checks the refresh token file can be
    /// read. Errors are `(key, message)` with the key relative to `oauth2`.
    pub fn new(cfg: &OAuth2Config) -> Result<TokenSource, (&'static str, String)> {
        let url = parse_https_url(&cfg.token_url).map_err(|m| ("token_url", m))?;
        let tls = TlsClient::new(cfg.ca_file.as_deref(), &[]).map_err(|m| ("ca_file", m))?;
        if let Grant::RefreshToken { file } = &cfg.grant {
            read_refresh_token(file).map_err(|m| ("refresh_token_file", m))?;
        }
        Ok(TokenSource { cfg: cfg.clone(), url, tls, cache: Mutex::new(HashMap::new()), unsaved: Mutex::new(None) })
    }

    /// True when `other` is the same client at the same endpoint (scopes
    /// may differ): the two sides of a check then share one source.
    pub fn serves(&self, other: &OAuth2Config) -> bool {
        let c = &self.cfg;
        (&c.token_url, &c.client_id, &c.client_secret, &c.grant, &c.ca_file)
            == (&other.token_url, &other.client_id, &other.client_secret, &other.grant, &other.ca_file)
    }

    /// The cached token for `scope`, if it is good for a while yet.
    pub fn cached(&self, scope: &str, now: Instant) -> Option<Secret> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let c = cache.get(scope)?;
        (now + refresh_margin(c.lifetime) < c.expires_at).then(|| c.token.clone())
    }

    /// Forgets the token for `scope` (the mail server refused it): the next
    /// probe fetches a new one.
    pub fn invalidate(&self, scope: &str) {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).remove(scope);
    }

    /// Fetches a token for `scope`; `now` is when the request starts (the
    /// token's lifetime counts from there). The detail names the grant and
    /// the lifetime, never the token.
    pub async fn fetch(&self, scope: &str, connect_to: &ConnectTo, now: Instant) -> Result<Done<Secret>, StepError> {
        let cfg = &self.cfg;
        // Read, redeem and rewrite a refresh token file one at a time: two
        // checks (or two sources) sharing a file would otherwise both redeem
        // the same token, and a provider that rotates it revokes the loser's.
        let _turn = match &cfg.grant {
            Grant::ClientCredentials => None,
            Grant::RefreshToken { file } => Some(file_turn(file).lock_owned().await),
        };
        let refresh = match &cfg.grant {
            Grant::ClientCredentials => None,
            Grant::RefreshToken { file } => {
                let held = self.unsaved.lock().unwrap_or_else(|p| p.into_inner()).clone();
                Some(match held {
                    Some(t) => t,
                    None => read_refresh_token(file).map_err(|m| StepError::new(FailureClass::Auth, m))?,
                })
            }
        };
        let mut form: Vec<(&str, &str)> = vec![("client_id", &cfg.client_id), ("scope", scope)];
        match &refresh {
            None => form.push(("grant_type", "client_credentials")),
            Some(rt) => form.extend([("grant_type", "refresh_token"), ("refresh_token", rt.expose())]),
        }
        if let Some(secret) = &cfg.client_secret {
            form.push(("client_secret", secret.expose()));
        }
        let grant = if refresh.is_some() { "refresh_token" } else { "client_credentials" };
        let answer = http::post_form(&self.url, &self.tls, connect_to, &form).await?;
        let issued = parse_answer(answer.status, &answer.body, grant)?;

        let mut detail = format!("{grant} grant");
        match issued.lifetime {
            Some(l) => detail.push_str(&format!(", token valid {}s", l.as_secs())),
            None => detail.push_str(", no expires_in: fetched again next round"),
        }
        if let (Some(new), Some(old), Grant::RefreshToken { file }) = (&issued.refresh_token, &refresh, &cfg.grant) {
            if new != old {
                match save_refresh_token(file, new) {
                    Ok(()) => {
                        *self.unsaved.lock().unwrap_or_else(|p| p.into_inner()) = None;
                        detail.push_str(&format!(", refresh token rotated and saved to {}", file.display()));
                    }
                    Err(e) => {
                        tracing::error!(file = %file.display(), "the provider rotated the refresh token but it cannot be saved: {e}; it is kept in memory until this agent stops");
                        *self.unsaved.lock().unwrap_or_else(|p| p.into_inner()) = Some(new.clone());
                        detail.push_str(&format!(", refresh token rotated but NOT saved to {}: {e}", file.display()));
                    }
                }
            }
        }
        if let Some(lifetime) = issued.lifetime {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.insert(scope.to_string(), Cached { token: issued.access_token.clone(), expires_at: now + lifetime, lifetime });
        }
        Ok(Done::new(issued.access_token).code(answer.status).detail(detail))
    }
}

/// The lock that serialises every use of one refresh token file in this
/// process (one per path, kept for the life of the agent: a handful).
fn file_turn(file: &Path) -> Arc<tokio::sync::Mutex<()>> {
    static TURNS: std::sync::LazyLock<Mutex<HashMap<std::path::PathBuf, Arc<tokio::sync::Mutex<()>>>>> =
        std::sync::LazyLock::new(Default::default);
    let key = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    TURNS.lock().unwrap_or_else(|p| p.into_inner()).entry(key).or_default().clone()
}

/// Reads a refresh token file (trailing newline ignored).
pub fn read_refresh_token(file: &Path) -> Result<Secret, String> {
    match std::fs::read_to_string(file) {
        Ok(t) if !t.trim().is_empty() => Ok(Secret::new(t.trim())),
        Ok(_) => Err(format!("{} is empty: run `mailloop-agent oauth2 login` for this check", file.display())),
        Err(e) => Err(format!("cannot read {}: {e} (`mailloop-agent oauth2 login` creates it)", file.display())),
    }
}

/// Replaces `file` with `token` atomically: a new file (mode 0600, created
/// exclusively) in the same directory, synced, renamed over the old one,
/// and the directory synced. A reader sees the old token or the new one,
/// never a torn file, and a crash cannot lose both.
pub fn save_refresh_token(file: &Path, token: &Secret) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "token".into());
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(|e| std::io::Error::other(e.to_string()))?;
    let tmp = dir.join(format!(".{name}.{}.tmp", u64::from_le_bytes(nonce)));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(token.expose().as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, file)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// A token endpoint's answer: the token, or a classified failure. An
/// OAuth2 error (`invalid_client`, `invalid_grant`...) is `auth`, with the
/// provider's own code and description; 429 is `rate_limited`; anything
/// else that is not a token is `protocol`.
fn parse_answer(status: u16, body: &[u8], grant: &str) -> Result<Issued, StepError> {
    let json: Option<serde_json::Map<String, serde_json::Value>> = serde_json::from_slice(body).ok();
    let text = |key: &str| json.as_ref().and_then(|o| o.get(key)).and_then(|v| v.as_str()).map(clean);
    let fail = |class, message: String| Err(StepError { code: Some(status), ..StepError::new(class, message) });
    if status == 200 {
        let Some(token) = json.as_ref().and_then(|o| o.get("access_token")).and_then(|v| v.as_str()).filter(|t| !t.is_empty()) else {
            return fail(FailureClass::Protocol, "the token endpoint answered 200 without an access_token".into());
        };
        if let Some(kind) = text("token_type") {
            if !kind.eq_ignore_ascii_case("bearer") {
                return fail(FailureClass::Protocol, format!("the token endpoint issued a {kind:?} token, not a bearer token"));
            }
        }
        let lifetime = json.as_ref().and_then(|o| o.get("expires_in")).and_then(|v| match v {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        });
        let refresh_token = json.as_ref().and_then(|o| o.get("refresh_token")).and_then(|v| v.as_str()).filter(|t| !t.is_empty());
        return Ok(Issued {
            access_token: Secret::new(token),
            lifetime: lifetime.filter(|l| *l > 0).map(Duration::from_secs),
            refresh_token: refresh_token.map(Secret::new),
        });
    }
    let error = text("error");
    let described = match (&error, text("error_description")) {
        (Some(e), Some(d)) => format!("{e}: {d}"),
        (Some(e), None) => e.clone(),
        (None, _) => format!("{:?}", clean(&String::from_utf8_lossy(&body[..body.len().min(200)]))),
    };
    match (status, &error) {
        (429, _) => fail(FailureClass::RateLimited, format!("the token endpoint is rate limiting (HTTP 429): {described}")),
        (400..=499, Some(_)) => fail(FailureClass::Auth, format!("the token endpoint refused the {grant} grant (HTTP {status}): {described}")),
        _ => fail(FailureClass::Protocol, format!("the token endpoint answered HTTP {status}: {described}")),
    }
}

/// Provider text for a message: no control characters, bounded.
fn clean(s: &str) -> String {
    let s: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    crate::text::truncate(s.trim(), 300)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(status: u16, body: &str) -> StepError {
        match parse_answer(status, body.as_bytes(), "client_credentials") {
            Err(e) => e,
            Ok(_) => panic!("{body} should fail"),
        }
    }

    #[test]
    fn token_answers_are_read() {
        let ok = parse_answer(200, br#"{"access_token":"eyJ0","token_type":"Bearer","expires_in":"3599","refresh_token":"r2"}"#, "refresh_token").ok().unwrap();
        assert_eq!(ok.access_token.expose(), "eyJ0");
        assert_eq!(ok.lifetime, Some(Duration::from_secs(3599)));
        assert_eq!(ok.refresh_token.unwrap().expose(), "r2");
        let no_expiry = parse_answer(200, br#"{"access_token":"t","token_type":"bearer"}"#, "x").ok().unwrap();
        assert_eq!(no_expiry.lifetime, None);
    }

    #[test]
    fn provider_errors_are_classified_with_their_words() {
        let e = err(401, r#"{"error":"invalid_client","error_description":"AADSTS7000222: The provided client secret keys are expired."}"#);
        assert_eq!((e.class, e.code), (FailureClass::Auth, Some(401)));
        assert_eq!(e.message, "the token endpoint refused the client_credentials grant (HTTP 401): invalid_client: AADSTS7000222: The provided client secret keys are expired.");
        assert_eq!(err(400, r#"{"error":"invalid_grant"}"#).class, FailureClass::Auth);
        assert_eq!(err(429, r#"{"error":"slow_down"}"#).class, FailureClass::RateLimited);
        assert_eq!(err(503, "<html>down</html>").class, FailureClass::Protocol);
        assert_eq!(err(404, "not found").message, "the token endpoint answered HTTP 404: \"not found\"");
        assert_eq!(err(200, r#"{"token_type":"bearer"}"#).class, FailureClass::Protocol);
        assert_eq!(err(200, r#"{"access_token":"t","token_type":"mac"}"#).class, FailureClass::Protocol);
    }

    #[test]
    fn tokens_are_replaced_well_before_they_expire() {
        assert_eq!(refresh_margin(Duration::from_secs(3600)), Duration::from_secs(300));
        assert_eq!(refresh_margin(Duration::from_secs(60)), Duration::from_secs(30));
    }

    #[test]
    fn a_saved_refresh_token_replaces_the_file_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rt");
        std::fs::write(&file, "old\n").unwrap();
        save_refresh_token(&file, &Secret::new("new")).unwrap();
        assert_eq!(read_refresh_token(&file).unwrap().expose(), "new");
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left behind");
    }
}
