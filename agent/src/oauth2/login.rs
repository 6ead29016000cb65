//! `mailloop-agent oauth2 login`: the device-code sign-in (RFC 8628) that
//! gives a delegated check its refresh token, once.
//!
//! The agent asks the provider for a code, prints where a person enters
//! it, polls the token endpoint at the interval the provider asks for, and
//! stores the refresh token in the check's `refresh_token_file` (mode 0600,
//! written atomically). No token is printed.

use super::{http, read_refresh_token, save_refresh_token};
use crate::tls::TlsClient;
use crate::transport::ConnectTo;
use mailloop_common::config::{Grant, OAuth2Config, parse_https_url};
use mailloop_common::Secret;
use std::io::Write;
use std::time::{Duration, Instant};

/// The RFC 8628 grant type.
const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// Bound on each HTTP exchange of the sign-in.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the sign-in for `cfg` asking for `scope`; instructions go to `out`.
/// Returns a sentence for the person at the terminal, or why it failed.
pub async fn device_login(cfg: &OAuth2Config, scope: &str, out: &mut dyn Write) -> Result<String, String> {
    let Grant::RefreshToken { file } = &cfg.grant else {
        return Err("this side uses the client-credentials grant: it needs no sign-in (the app's secret is enough)".into());
    };
    let Some(device_url) = &cfg.device_authorization_url else {
        return Err("no device_authorization_url: set it in [oauth2], or use provider = \"microsoft\" or \"google\"".into());
    };
    let device_url = parse_https_url(device_url)?;
    let token_url = parse_https_url(&cfg.token_url)?;
    let tls = TlsClient::new(cfg.ca_file.as_deref(), &[])?;
    let connect_to = ConnectTo::default();
    let with_client = |mut form: Vec<(&'static str, String)>| {
        form.push(("client_id", cfg.client_id.clone()));
        if let Some(s) = &cfg.client_secret {
            form.push(("client_secret", s.expose().to_string()));
        }
        form
    };
    let post = |url, form: Vec<(&'static str, String)>| {
        let tls = &tls;
        let connect_to = &connect_to;
        async move {
            let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
            match tokio::time::timeout(EXCHANGE_TIMEOUT, http::post_form(url, tls, connect_to, &pairs)).await {
                Ok(Ok(a)) => Ok(a),
                Ok(Err(e)) => Err(format!("{} ({})", e.message, e.class)),
                Err(_) => Err(format!("no answer within {}s", EXCHANGE_TIMEOUT.as_secs())),
            }
        }
    };

    let answer = post(&device_url, with_client(vec![("scope", scope.to_string())])).await?;
    let grant: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or_default();
    let field = |k: &str| grant.get(k).and_then(|v| v.as_str()).map(str::to_string);
    if answer.status != 200 {
        return Err(format!("the device authorization endpoint answered HTTP {}: {}", answer.status, oauth_error(&grant)));
    }
    let (Some(device_code), Some(user_code)) = (field("device_code"), field("user_code")) else {
        return Err("the device authorization answer has no device_code or user_code".into());
    };
    // Google says verification_url, RFC 8628 verification_uri.
    let uri = field("verification_uri").or_else(|| field("verification_url")).unwrap_or_else(|| "(no verification_uri given)".into());
    let number = |k: &str, default: u64| grant.get(k).and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok())).unwrap_or(default);
    let mut interval = Duration::from_secs(number("interval", 5).max(1));
    let expires = Instant::now() + Duration::from_secs(number("expires_in", 900));
    let _ = writeln!(out, "To sign in, open {uri} and enter the code {user_code}");
    let _ = writeln!(out, "Waiting for the sign-in (the code is valid for {} minutes)...", number("expires_in", 900) / 60);
    let _ = out.flush();

    loop {
        // The provider sets the pace (RFC 8628 §3.5): this wait is the protocol.
        tokio::time::sleep(interval).await;
        if Instant::now() >= expires {
            return Err("the code expired before the sign-in was completed: run the login again".into());
        }
        let form = with_client(vec![("grant_type", DEVICE_GRANT.to_string()), ("device_code", device_code.clone())]);
        let answer = post(&token_url, form).await?;
        let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or_default();
        if answer.status == 200 {
            let Some(refresh) = body.get("refresh_token").and_then(|v| v.as_str()).filter(|t| !t.is_empty()) else {
                return Err("signed in, but the provider issued no refresh token (Microsoft: add offline_access to scope)".into());
            };
            save_refresh_token(file, &Secret::new(refresh)).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
            read_refresh_token(file)?;
            return Ok(format!("Signed in. The refresh token is in {} (mode 0600); the agent renews it from there.", file.display()));
        }
        match body.get("error").and_then(|v| v.as_str()) {
            Some("authorization_pending") => {}
            Some("slow_down") => interval += Duration::from_secs(5),
            Some("access_denied") => return Err("the sign-in was declined".into()),
            Some("expired_token") => return Err("the code expired before the sign-in was completed: run the login again".into()),
            _ => return Err(format!("the token endpoint answered HTTP {}: {}", answer.status, oauth_error(&body))),
        }
    }
}

fn oauth_error(v: &serde_json::Value) -> String {
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("");
    match (s("error"), s("error_description")) {
        ("", _) => "no OAuth2 error in the answer".into(),
        (e, "") => e.to_string(),
        (e, d) => format!("{e}: {d}"),
    }
}
