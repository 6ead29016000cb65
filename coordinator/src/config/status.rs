//! `[status]`: the public status page. On by default at `/status` on the
//! admin listener (only checks with `public = true` appear on it); `path`
//! moves it, `listen` gives it a plain-HTTP listener of its own (so the
//! admin API need not face the internet), `title` names the page,
//! `enabled = false` removes it.

use mailloop_common::config::{ConfigIssue, IssueList, Table};
use serde_json::Value;
use std::net::SocketAddr;

/// Where the page is served when `path` is not set.
pub const DEFAULT_PATH: &str = "/status";
/// The page's heading when `title` is not set.
pub const DEFAULT_TITLE: &str = "Mail delivery status";

/// `[status]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusPageSettings {
    pub enabled: bool,
    /// The HTML page; `{path}.json` is the Statuspage-style summary. Badges
    /// are always at `/badge/{check}.svg`.
    pub path: String,
    /// Its own listener; None: the admin listener.
    pub listen: Option<SocketAddr>,
    pub title: String,
}

impl Default for StatusPageSettings {
    fn default() -> Self {
        StatusPageSettings {
            enabled: true,
            path: DEFAULT_PATH.into(),
            listen: None,
            title: DEFAULT_TITLE.into(),
        }
    }
}

/// Reads `[status]` (absent: the defaults).
pub fn parse(v: &mut Vec<ConfigIssue>, raw: Option<&Value>) -> StatusPageSettings {
    let mut out = StatusPageSettings::default();
    let Some(mut t) = Table::optional(v, "status", raw) else {
        return out;
    };
    if let Some(enabled) = t.flag(v, "enabled", true) {
        out.enabled = enabled;
    }
    if let Some(Some(path)) = t.string(v, "path") {
        match check_path(&path) {
            Ok(()) => out.path = path,
            Err(why) => v.issue("status.path", format!("{path:?}: {why}")),
        }
    }
    if let Some(Some(listen)) = t.string(v, "listen") {
        match listen.parse() {
            Ok(a) => out.listen = Some(a),
            Err(_) => v.issue(
                "status.listen",
                format!("{listen:?} is not ip:port (e.g. \"127.0.0.1:7481\", \"[::]:80\")"),
            ),
        }
    }
    if let Some(Some(title)) = t.string(v, "title") {
        if title.chars().count() > 100 || title.chars().any(char::is_control) {
            v.issue("status.title", "at most 100 characters on one line");
        } else {
            out.title = title.trim().to_string();
        }
    }
    t.finish(v);
    out
}

/// A path of lowercase segments that no other route of the admin
/// listener uses.
fn check_path(path: &str) -> Result<(), &'static str> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err("must start with '/'");
    };
    if rest.is_empty() || rest.ends_with('/') || rest.contains("//") {
        return Err("must name a page, e.g. \"/status\" (no trailing '/')");
    }
    if !rest
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '/'))
    {
        return Err("only a-z, 0-9, '-', '_' and '/'");
    }
    let first = rest.split('/').next().unwrap_or("");
    if ["api", "metrics", "badge"].contains(&first) {
        return Err("/api, /metrics and /badge are taken");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(toml: &str) -> (StatusPageSettings, Vec<String>) {
        let raw = crate::config::parse_toml(toml).unwrap();
        let mut v = Vec::new();
        let s = parse(&mut v, raw.get("status"));
        (
            s,
            v.into_iter()
                .map(|i| format!("{}: {}", i.path, i.message))
                .collect(),
        )
    }

    #[test]
    fn defaults_and_every_bad_key_at_once() {
        assert_eq!(parsed("").0, StatusPageSettings::default());
        let (s, issues) = parsed(
            "[status]\npath = \"/health\"\nlisten = \"127.0.0.1:0\"\ntitle = \"Example Mail\"",
        );
        assert!(issues.is_empty(), "{issues:?}");
        assert_eq!(s.path, "/health");
        assert_eq!(s.listen, Some("127.0.0.1:0".parse().unwrap()));
        let (_, issues) = parsed("[status]\npath = \"/api/x\"\nlisten = \"nowhere\"\nextra = 1");
        assert_eq!(issues.len(), 3, "{issues:?}");
        assert!(issues.iter().any(|i| i.starts_with("status.path")));
        assert!(issues.iter().any(|i| i.starts_with("status.listen")));
        assert!(issues.iter().any(|i| i.starts_with("status.extra")));
        for bad in [
            "status", "/", "/Status", "/a/", "/metrics", "/badge/x", "/a b",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }
}
