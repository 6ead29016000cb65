//! `[check.smtp.oauth2]` / `[check.imap.oauth2]`: how a check side gets an
//! OAuth2 bearer token for XOAUTH2 / OAUTHBEARER instead of a password.
//!
//! Two grants: **client credentials** (Microsoft 365 app-only access to a
//! mailbox: the app's own secret, nothing stored) and **refresh token**
//! (Google, and delegated Microsoft access: a token obtained once by
//! `mailloop-agent oauth2 login` and kept in `refresh_token_file`, which the
//! agent rewrites when the provider rotates it). `provider = "microsoft"` or
//! `"google"` fills the endpoints and scopes. The client secret is resolved
//! like a password (`client_secret_env` / `client_secret_file`; never
//! inline, so the coordinator only ever holds references); the refresh token
//! is read by the agent when it builds the check's prober, not here, so
//! `oauth2 login` can run before the file exists.

use super::{Secrets, Validator};
use crate::Secret;
use super::Table;
use std::path::PathBuf;

/// A provider whose endpoints and scopes mailloop knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Microsoft,
    Google,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Microsoft => "microsoft",
            Provider::Google => "google",
        }
    }
}

/// How the access token is obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// RFC 6749 §4.4: the client's own id and secret.
    ClientCredentials,
    /// RFC 6749 §6: a refresh token from this file (mode 0600, rewritten
    /// atomically when the provider sends a new one).
    RefreshToken { file: PathBuf },
}

/// One side's token settings, validated and with presets applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuth2Config {
    pub provider: Option<Provider>,
    /// `https://` URL of the token endpoint.
    pub token_url: String,
    /// `https://` URL of the device authorization endpoint (RFC 8628), for
    /// `mailloop-agent oauth2 login`.
    pub device_authorization_url: Option<String>,
    pub client_id: String,
    /// Resolved (agent) or an empty placeholder (coordinator); `None` for a
    /// public client (device-code logins without a secret).
    pub client_secret: Option<Secret>,
    /// Space-separated scopes asked for.
    pub scope: String,
    pub grant: Grant,
    /// Extra trust root(s) for the token endpoint, PEM, on top of the system store.
    pub ca_file: Option<PathBuf>,
}

/// An `https://host[:port]/path` URL, split for the agent's HTTP client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsUrl {
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

/// Splits an `https://` URL. Userinfo and fragments are refused (a
/// password in a URL would be logged wherever the URL is).
pub fn parse_https_url(url: &str) -> Result<HttpsUrl, String> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("{url:?}: only https:// URLs are accepted (the token endpoint receives a client secret or a refresh token)"))?;
    if url.contains('#') || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{url:?}: no fragments, spaces or control characters"));
    }
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.contains('@') {
        return Err(format!("{url:?}: no user or password in the URL"));
    }
    let path = if path.starts_with('?') { format!("/{path}") } else { path.to_string() };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| format!("{url:?}: unclosed '['"))?;
        (h.to_string(), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    let port = match port {
        None => 443,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(format!("{url:?}: {p:?} is not a port")),
        },
    };
    Ok(HttpsUrl { host, port, path })
}

impl Validator<'_> {
    /// `[check.<side>.oauth2]`; `side` is `smtp` or `imap` (the presets'
    /// delegated scopes differ).
    pub(super) fn oauth2(&mut self, mut t: Table<'_>, side: &str) -> Option<OAuth2Config> {
        let provider = match t.string(&mut self.issues, "provider")? {
            None => None,
            Some(p) => match p.as_str() {
                "microsoft" => Some(Provider::Microsoft),
                "google" => Some(Provider::Google),
                _ => {
                    self.issue(t.path_of("provider"), format!("{p:?}: expected \"microsoft\" or \"google\" (or leave it out and give token_url and scope)"));
                    return None;
                }
            },
        };
        let tenant = t.string(&mut self.issues, "tenant");
        let token_url = t.string(&mut self.issues, "token_url");
        let device_url = t.string(&mut self.issues, "device_authorization_url");
        let client_id = t.required_string(&mut self.issues, "client_id");
        let scope = t.string(&mut self.issues, "scope");
        let grant_name = t.string(&mut self.issues, "grant");
        let refresh_file = t.string(&mut self.issues, "refresh_token_file");
        let ca_file = t.string(&mut self.issues, "ca_file").map(|f| f.map(PathBuf::from));
        if let Some(Some(f)) = &ca_file {
            if let Err(e) = std::fs::File::open(f) {
                self.issue(t.path_of("ca_file"), format!("cannot read {}: {e}", f.display()));
            }
        }
        if t.get("client_secret").is_some() {
            self.issue(
                t.path_of("client_secret"),
                "an inline client secret would be stored and sent by the coordinator: use client_secret_env or client_secret_file",
            );
        }
        let client_secret = self.client_secret(&mut t);
        let path = t.path().to_string();
        t.finish(&mut self.issues);

        let tenant = tenant?;
        let refresh_file = refresh_file?;
        let grant_name = grant_name?;
        let grant = match grant_name.as_deref() {
            None if refresh_file.is_some() => Some("refresh_token"),
            None => Some("client_credentials"),
            Some(g @ ("client_credentials" | "refresh_token")) => Some(g),
            Some(other) => {
                self.issue(format!("{path}.grant"), format!("{other:?}: expected \"client_credentials\" or \"refresh_token\""));
                None
            }
        };
        let grant = match (grant, refresh_file) {
            (Some("refresh_token"), Some(file)) => Some(Grant::RefreshToken { file: PathBuf::from(file) }),
            (Some("refresh_token"), None) => {
                self.issue(
                    format!("{path}.refresh_token_file"),
                    "required by grant = \"refresh_token\": where `mailloop-agent oauth2 login` stores the refresh token",
                );
                None
            }
            (Some(_), Some(_)) => {
                self.issue(format!("{path}.refresh_token_file"), "set, but grant = \"client_credentials\" uses no refresh token");
                None
            }
            (Some(_), None) => Some(Grant::ClientCredentials),
            (None, _) => None,
        };
        if let (Some(Grant::ClientCredentials), Some(None)) = (&grant, &client_secret) {
            self.issue(format!("{path}.client_secret_env"), "the client-credentials grant needs the app's secret: set client_secret_env or client_secret_file");
        }
        if provider == Some(Provider::Google) && grant == Some(Grant::ClientCredentials) {
            self.issue(
                format!("{path}.grant"),
                "Google has no client-credentials grant for Gmail: use a refresh token (refresh_token_file, filled by `mailloop-agent oauth2 login`)",
            );
        }
        let tenant = match (provider, tenant) {
            (Some(Provider::Microsoft), Some(t)) if t.chars().all(|c| c.is_ascii_alphanumeric() || "-.".contains(c)) => Some(t),
            (Some(Provider::Microsoft), Some(t)) => {
                self.issue(format!("{path}.tenant"), format!("{t:?}: a tenant id (GUID) or domain (contoso.onmicrosoft.com)"));
                None
            }
            (Some(Provider::Microsoft), None) => {
                self.issue(format!("{path}.tenant"), "required with provider = \"microsoft\": the directory (tenant) id or domain of the app registration");
                None
            }
            (_, Some(_)) => {
                self.issue(format!("{path}.tenant"), "only with provider = \"microsoft\"");
                None
            }
            (_, None) => None,
        };
        let delegated = matches!(grant, Some(Grant::RefreshToken { .. }));
        let (preset_token, preset_device, preset_scope) = match (provider, &tenant) {
            (Some(Provider::Microsoft), Some(tenant)) => (
                Some(format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token")),
                Some(format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0/devicecode")),
                Some(match (delegated, side) {
                    (false, _) => "https://outlook.office365.com/.default".to_string(),
                    (true, "smtp") => "https://outlook.office.com/SMTP.Send offline_access".to_string(),
                    (true, _) => "https://outlook.office.com/IMAP.AccessAsUser.All offline_access".to_string(),
                }),
            ),
            (Some(Provider::Google), _) => (
                Some("https://oauth2.googleapis.com/token".to_string()),
                Some("https://oauth2.googleapis.com/device/code".to_string()),
                Some("https://mail.google.com/".to_string()),
            ),
            _ => (None, None, None),
        };
        let token_url = match token_url?.or(preset_token) {
            Some(u) => Some(u),
            None if provider.is_none() => {
                self.issue(format!("{path}.token_url"), "required without a provider (\"microsoft\" or \"google\" fill it)");
                None
            }
            None => None,
        };
        let mut ok = true;
        for (key, url) in [("token_url", token_url.as_deref()), ("device_authorization_url", device_url.clone().flatten().as_deref())] {
            if let Some(u) = url {
                if let Err(m) = parse_https_url(u) {
                    self.issue(format!("{path}.{key}"), m);
                    ok = false;
                }
            }
        }
        let scope = match scope?.or(preset_scope) {
            Some(s) => Some(s),
            None if provider.is_none() => {
                self.issue(format!("{path}.scope"), "required without a provider: the scope(s) the mail server wants in the token");
                None
            }
            None => None,
        };
        if !ok {
            return None;
        }
        Some(OAuth2Config {
            provider,
            token_url: token_url?,
            device_authorization_url: device_url?.or(preset_device),
            client_id: client_id?,
            client_secret: client_secret?,
            scope: scope?,
            grant: grant?,
            ca_file: ca_file?,
        })
    }

    /// `client_secret_env` / `client_secret_file`, resolved like a password.
    fn client_secret(&mut self, t: &mut Table<'_>) -> Option<Option<Secret>> {
        let env = t.string(&mut self.issues, "client_secret_env")?;
        let file = t.string(&mut self.issues, "client_secret_file")?;
        match (env, file) {
            (Some(_), Some(_)) => {
                self.issue(t.path_of("client_secret_env"), "set only one of client_secret_env, client_secret_file");
                None
            }
            (None, None) => Some(None),
            _ if matches!(self.secrets, Secrets::ReferencesOnly { .. }) => Some(Some(Secret::new(""))),
            (Some(var), None) => match (self.env)(&var) {
                Some(v) if !v.is_empty() => Some(Some(Secret::new(v))),
                _ => {
                    self.issue(t.path_of("client_secret_env"), format!("environment variable {var} is not set"));
                    None
                }
            },
            (None, Some(file)) => match std::fs::read_to_string(&file) {
                Ok(v) if !v.trim_end_matches(['\r', '\n']).is_empty() => Some(Some(Secret::new(v.trim_end_matches(['\r', '\n'])))),
                Ok(_) => {
                    self.issue(t.path_of("client_secret_file"), format!("{file} is empty"));
                    None
                }
                Err(e) => {
                    self.issue(t.path_of("client_secret_file"), format!("cannot read {file}: {e}"));
                    None
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_urls_split() {
        let u = parse_https_url("https://login.microsoftonline.com/contoso/oauth2/v2.0/token").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("login.microsoftonline.com", 443, "/contoso/oauth2/v2.0/token"));
        let u = parse_https_url("https://127.0.0.1:8443").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("127.0.0.1", 8443, "/"));
        let u = parse_https_url("https://[::1]:9/t?x=1").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("::1", 9, "/t?x=1"));
        for bad in ["http://idp/token", "https://user:pw@idp/token", "https:///x", "https://idp:0/", "https://idp/#f", "https://idp:99999/"] {
            assert!(parse_https_url(bad).is_err(), "{bad}");
        }
    }
}
