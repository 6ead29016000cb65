//! `[[alert]]` channels in `coordinator.toml`, validated whole.
//!
//! ```toml
//! [[alert]]
//! name = "oncall"                 # unique, required
//! type = "pagerduty"              # webhook | slack | pagerduty | email
//! kinds = ["outage"]              # default: every incident kind
//! min_severity = "critical"       # info | warning | critical; default info
//! events = ["opened", "acknowledged", "resolved"]   # default: all three
//! timeout = "10s"                 # per attempt
//! retries = 5                     # after the first; waits 1 s doubling to 60 s, jittered
//! routing_key_env = "PD_ROUTING_KEY"   # or routing_key / routing_key_file
//! # url = "https://events.pagerduty.com/v2/enqueue" (the default)
//!
//! [[alert]]
//! name = "tickets"
//! type = "webhook"                # or "slack": url is the incoming-webhook URL
//! kinds = ["regional", "performance"]
//! url = "https://hooks.example.net/mailloop"
//! ca_file = "/etc/mailloop/hooks-ca.pem"   # optional, on top of the system roots
//!
//! [[alert]]
//! name = "mail"
//! type = "email"
//! smtp_host = "smtp.example.net"
//! smtp_port = 587                 # default: 587 starttls, 465 tls, 25 none
//! security = "starttls"           # starttls | tls | none (none: loopback hosts only)
//! username = "alerts@example.net"
//! password_env = "ALERT_SMTP_PASS" # or password / password_file
//! # oauth2_token_env = "ALERT_SMTP_TOKEN" # instead of a password: AUTH XOAUTH2
//! from = "alerts@example.net"
//! to = ["oncall@example.net"]
//! ```
//!
//! Every bad key is pushed with its path (`alert[1].url`) and validation
//! carries on, so one run of `check-config` names them all. Secrets
//! (`routing_key*`, `password*`, `oauth2_token*`, and webhook URLs, which carry their token in
//! the path) are held as [`Secret`] and never appear in `Debug` or logs.

use crate::judge::model::{AlertEvent, AlertEventKind, IncidentKind, Severity};
use mailloop_common::Secret;
use mailloop_common::config::{ConfigIssue, Security, duration_value};
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Default per-attempt timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default retries after the first attempt.
pub const DEFAULT_RETRIES: u32 = 5;
/// First wait before a retry; it doubles on every further attempt.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest wait between two attempts.
pub const DEFAULT_BACKOFF_CAP: Duration = Duration::from_secs(60);
/// Events waiting per channel before the oldest is dropped.
pub const DEFAULT_QUEUE_CAPACITY: usize = 256;
/// How long a channel keeps delivering its queue after shutdown begins.
/// Shorter than the server's default `shutdown_grace` (10 s), so the
/// coordinator's own wait for its tasks is not spent on a dead channel.
pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(3);
/// PagerDuty's Events API v2 endpoint.
pub const PAGERDUTY_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// One validated `[[alert]]` channel.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelConfig {
    /// Unique among channels; shown in logs and `GET /api/v1/alerts`.
    pub name: String,
    pub target: Target,
    /// Incident kinds routed here (default: every kind).
    pub kinds: Vec<IncidentKind>,
    /// Incidents less severe than this are not sent.
    pub min_severity: Severity,
    /// Which lifecycle events are sent (default: all three).
    pub events: Vec<AlertEventKind>,
    /// Per attempt (connect, TLS, request, answer).
    pub timeout: Duration,
    /// Attempts after the first.
    pub retries: u32,
    /// First wait before a retry (1 s). Not a config key: tests shorten it
    /// instead of sleeping through real backoff.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub queue_capacity: usize,
    /// How long queued events are still tried after shutdown begins.
    pub drain_grace: Duration,
}

impl ChannelConfig {
    /// `webhook`, `slack`, `pagerduty` or `email`.
    pub fn type_name(&self) -> &'static str {
        match self.target {
            Target::Webhook(_) => "webhook",
            Target::Slack(_) => "slack",
            Target::PagerDuty { .. } => "pagerduty",
            Target::Email(_) => "email",
        }
    }

    /// Whether this channel wants the event (kind, severity and event routes).
    pub fn routes(&self, event: &AlertEvent) -> bool {
        self.kinds.contains(&event.incident.kind)
            && severity_rank(event.incident.severity) >= severity_rank(self.min_severity)
            && self.events.contains(&event.event)
    }
}

/// `info` < `warning` < `critical`.
pub fn severity_rank(s: Severity) -> u8 {
    match s {
        Severity::Info => 0,
        Severity::Warning => 1,
        Severity::Critical => 2,
    }
}

/// Where a channel delivers.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// Generic JSON POST.
    Webhook(HttpTarget),
    /// Slack-compatible incoming webhook.
    Slack(HttpTarget),
    /// PagerDuty Events API v2.
    PagerDuty {
        endpoint: HttpTarget,
        routing_key: Secret,
    },
    Email(EmailTarget),
}

/// An HTTP(S) endpoint. The full URL is a secret (Slack and many webhook
/// URLs carry their token in the path); logs show only [`HttpTarget::origin`].
#[derive(Clone, PartialEq)]
pub struct HttpTarget {
    pub url: Secret,
    /// `https://hooks.slack.com:443`: safe to log.
    pub origin: String,
    /// Extra trust root(s) on top of the system store.
    pub ca_file: Option<PathBuf>,
}

impl fmt::Debug for HttpTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpTarget")
            .field("origin", &self.origin)
            .field("url", &"<redacted>")
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// SMTP submission settings of an email channel.
#[derive(Debug, Clone, PartialEq)]
pub struct EmailTarget {
    pub host: String,
    pub port: u16,
    pub security: Security,
    /// Without it AUTH is skipped.
    pub username: Option<String>,
    /// AUTH PLAIN or LOGIN, whichever the server offers.
    pub password: Option<Secret>,
    /// An OAuth2 bearer token instead of a password: AUTH XOAUTH2.
    pub oauth2_token: Option<Secret>,
    pub from: String,
    pub to: Vec<String>,
    pub ca_file: Option<PathBuf>,
}

const COMMON_KEYS: &[&str] = &[
    "name",
    "type",
    "kinds",
    "min_severity",
    "events",
    "timeout",
    "retries",
];
const HTTP_KEYS: &[&str] = &["url", "ca_file"];
const PAGERDUTY_KEYS: &[&str] = &[
    "url",
    "ca_file",
    "routing_key",
    "routing_key_env",
    "routing_key_file",
];
const EMAIL_KEYS: &[&str] = &[
    "smtp_host",
    "smtp_port",
    "security",
    "username",
    "password",
    "password_env",
    "password_file",
    "oauth2_token",
    "oauth2_token_env",
    "oauth2_token_file",
    "from",
    "to",
    "ca_file",
];

/// Validates the `alert` array (absent: no channels), pushing every bad
/// key onto `issues` with its path (`alert[1].url`).
pub fn parse(
    raw: Option<&Value>,
    env: &dyn Fn(&str) -> Option<String>,
    issues: &mut Vec<ConfigIssue>,
) -> Vec<ChannelConfig> {
    let list = match raw {
        None => return Vec::new(),
        Some(Value::Array(list)) => list,
        Some(Value::Object(_)) => {
            push(
                issues,
                "alert",
                "must be an array of tables: write [[alert]], not [alert]",
            );
            return Vec::new();
        }
        Some(_) => {
            push(issues, "alert", "must be an array of tables ([[alert]])");
            return Vec::new();
        }
    };
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let mut t = Reader {
            path: format!("alert[{i}]"),
            issues,
            env,
        };
        let Some(map) = item.as_object() else {
            let path = t.path.clone();
            t.push(path, "expected a table");
            continue;
        };
        // Duplicates are found among every named table, valid or not.
        // (the rest of a duplicate's table is still checked).
        let duplicate = match map.get("name").and_then(Value::as_str) {
            Some(name) if !names.insert(name.to_string()) => {
                let path = format!("{}.name", t.path);
                t.push(path, format!("{name:?} is used by an earlier [[alert]]"));
                true
            }
            _ => false,
        };
        if let Some(ch) = t.channel(map)
            && !duplicate
        {
            out.push(ch);
        }
    }
    out
}

fn push(issues: &mut Vec<ConfigIssue>, path: impl Into<String>, message: impl Into<String>) {
    issues.push(ConfigIssue {
        path: path.into(),
        message: message.into(),
    });
}

/// Reads one `[[alert]]` table, collecting issues as it goes.
struct Reader<'a> {
    path: String,
    issues: &'a mut Vec<ConfigIssue>,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Reader<'_> {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        push(self.issues, path, message);
    }

    fn key(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }

    fn channel(&mut self, map: &Map<String, Value>) -> Option<ChannelConfig> {
        let name = self.name(map);
        let kind = match map.get("type") {
            None => {
                self.push(
                    self.key("type"),
                    "required: webhook, slack, pagerduty or email",
                );
                None
            }
            Some(Value::String(s))
                if ["webhook", "slack", "pagerduty", "email"].contains(&s.as_str()) =>
            {
                Some(s.clone())
            }
            Some(other) => {
                self.push(
                    self.key("type"),
                    format!("{other} is not a channel type (webhook, slack, pagerduty, email)"),
                );
                None
            }
        };
        // Unknown keys: against the type's own keys when the type is known,
        // otherwise against every key any channel type accepts.
        let allowed: Vec<&str> = match kind.as_deref() {
            Some("webhook") | Some("slack") => [COMMON_KEYS, HTTP_KEYS].concat(),
            Some("pagerduty") => [COMMON_KEYS, PAGERDUTY_KEYS].concat(),
            Some("email") => [COMMON_KEYS, EMAIL_KEYS].concat(),
            _ => [COMMON_KEYS, PAGERDUTY_KEYS, EMAIL_KEYS].concat(),
        };
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) {
                let what = kind.as_deref().unwrap_or("an alert");
                self.push(
                    self.key(key),
                    format!(
                        "unknown key for {what} channel (expected one of {})",
                        allowed.join(", ")
                    ),
                );
            }
        }
        let kinds = self.kinds(map);
        let min_severity = self.min_severity(map);
        let events = self.events(map);
        let timeout = match map.get("timeout") {
            None => Some(DEFAULT_TIMEOUT),
            Some(v) => match duration_value(v) {
                Ok(d) => Some(d),
                Err(m) => {
                    self.push(self.key("timeout"), m);
                    None
                }
            },
        };
        let retries = match map.get("retries") {
            None => Some(DEFAULT_RETRIES),
            Some(v) => match v.as_u64() {
                Some(n) if n <= 100 => Some(n as u32),
                _ => {
                    self.push(
                        self.key("retries"),
                        format!("{v} is not a retry count (0 to 100)"),
                    );
                    None
                }
            },
        };
        let target = match kind.as_deref() {
            Some("webhook") => self.http(map, None).map(Target::Webhook),
            Some("slack") => self.http(map, None).map(Target::Slack),
            Some("pagerduty") => {
                let endpoint = self.http(map, Some(PAGERDUTY_URL));
                let key = self.secret(map, "routing_key", true);
                match (endpoint, key) {
                    (Some(endpoint), Some(Some(routing_key))) => Some(Target::PagerDuty {
                        endpoint,
                        routing_key,
                    }),
                    _ => None,
                }
            }
            Some("email") => self.email(map).map(Target::Email),
            _ => None,
        };
        Some(ChannelConfig {
            name: name?,
            target: target?,
            kinds: kinds?,
            min_severity: min_severity?,
            events: events?,
            timeout: timeout?,
            retries: retries?,
            backoff_base: DEFAULT_BACKOFF_BASE,
            backoff_cap: DEFAULT_BACKOFF_CAP,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            drain_grace: DEFAULT_DRAIN_GRACE,
        })
    }

    fn name(&mut self, map: &Map<String, Value>) -> Option<String> {
        match map.get("name") {
            None => {
                self.push(self.key("name"), "required: a unique channel name");
                None
            }
            Some(Value::String(s)) if crate::config::names::is_name(s) => Some(s.clone()),
            Some(other) => {
                self.push(
                    self.key("name"),
                    format!("{other} is not a name (letters, digits, '-', '_', '.'; at most 64)"),
                );
                None
            }
        }
    }

    /// A list of words from a fixed set; `None` on any bad entry.
    fn word_list<T: Copy>(
        &mut self,
        map: &Map<String, Value>,
        key: &str,
        all: &[(&str, T)],
    ) -> Option<Vec<T>> {
        let Some(raw) = map.get(key) else {
            return Some(all.iter().map(|(_, t)| *t).collect());
        };
        let expected = all.iter().map(|(w, _)| *w).collect::<Vec<_>>().join(", ");
        let Value::Array(list) = raw else {
            self.push(
                self.key(key),
                format!("expected a list of {expected}; found {raw}"),
            );
            return None;
        };
        if list.is_empty() {
            self.push(
                self.key(key),
                format!("an empty list sends nothing; name at least one of {expected}, or leave the key out for all"),
            );
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in list.iter().enumerate() {
            match all.iter().find(|(w, _)| Some(*w) == item.as_str()) {
                Some((_, t)) => out.push(*t),
                None => {
                    self.push(
                        format!("{}.{key}[{i}]", self.path),
                        format!("{item} is not one of {expected}"),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    fn kinds(&mut self, map: &Map<String, Value>) -> Option<Vec<IncidentKind>> {
        self.word_list(
            map,
            "kinds",
            &[
                ("outage", IncidentKind::Outage),
                ("regional", IncidentKind::Regional),
                ("performance", IncidentKind::Performance),
                ("authentication", IncidentKind::Authentication),
                ("certificate", IncidentKind::Certificate),
                ("coverage", IncidentKind::Coverage),
                ("clock", IncidentKind::Clock),
                ("placement", IncidentKind::Placement),
                ("reputation", IncidentKind::Reputation),
            ],
        )
    }

    fn events(&mut self, map: &Map<String, Value>) -> Option<Vec<AlertEventKind>> {
        self.word_list(
            map,
            "events",
            &[
                ("opened", AlertEventKind::Opened),
                ("acknowledged", AlertEventKind::Acknowledged),
                ("resolved", AlertEventKind::Resolved),
            ],
        )
    }

    fn min_severity(&mut self, map: &Map<String, Value>) -> Option<Severity> {
        match map.get("min_severity") {
            None => Some(Severity::Info),
            Some(v) => match v.as_str() {
                Some("info") => Some(Severity::Info),
                Some("warning") => Some(Severity::Warning),
                Some("critical") => Some(Severity::Critical),
                _ => {
                    self.push(
                        self.key("min_severity"),
                        format!("{v} is not a severity (info, warning, critical)"),
                    );
                    None
                }
            },
        }
    }

    fn opt_str(&mut self, map: &Map<String, Value>, key: &str) -> Result<Option<String>, ()> {
        match map.get(key) {
            None => Ok(None),
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.clone())),
            Some(other) => {
                self.push(
                    self.key(key),
                    format!("expected a non-empty string, found {other}"),
                );
                Err(())
            }
        }
    }

    fn ca_file(&mut self, map: &Map<String, Value>) -> Result<Option<PathBuf>, ()> {
        let Some(path) = self.opt_str(map, "ca_file")? else {
            return Ok(None);
        };
        match std::fs::read(&path) {
            Ok(pem) if pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") => {
                Ok(Some(PathBuf::from(path)))
            }
            Ok(_) => {
                self.push(
                    self.key("ca_file"),
                    format!("{path} holds no PEM certificate"),
                );
                Err(())
            }
            Err(e) => {
                self.push(self.key("ca_file"), format!("cannot read {path}: {e}"));
                Err(())
            }
        }
    }

    /// `url` (or `default`) as an http(s) endpoint, plus `ca_file`.
    fn http(&mut self, map: &Map<String, Value>, default: Option<&str>) -> Option<HttpTarget> {
        let ca_file = self.ca_file(map);
        let url = match (self.opt_str(map, "url"), default) {
            (Ok(Some(url)), _) => Some(url),
            (Ok(None), Some(d)) => Some(d.to_string()),
            (Ok(None), None) => {
                self.push(
                    self.key("url"),
                    "required: the http:// or https:// URL to POST to",
                );
                None
            }
            (Err(()), _) => None,
        };
        let origin = match url.as_deref().map(origin_of) {
            Some(Ok(o)) => Some(o),
            Some(Err(m)) => {
                // The message names the problem, never the URL (it may hold a token).
                self.push(self.key("url"), m);
                None
            }
            None => None,
        };
        Some(HttpTarget {
            url: Secret::new(url?),
            origin: origin?,
            ca_file: ca_file.ok()?,
        })
    }

    /// `<key>`, `<key>_env` or `<key>_file`: at most one (exactly one when
    /// `required`). `Some(None)`: not given and not required.
    fn secret(
        &mut self,
        map: &Map<String, Value>,
        key: &str,
        required: bool,
    ) -> Option<Option<Secret>> {
        let env_key = format!("{key}_env");
        let file_key = format!("{key}_file");
        let inline = self.opt_str(map, key).ok()?;
        let env = self.opt_str(map, &env_key).ok()?;
        let file = self.opt_str(map, &file_key).ok()?;
        let given = [inline.is_some(), env.is_some(), file.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if given > 1 {
            self.push(
                self.key(key),
                format!("set only one of {key}, {env_key}, {file_key}"),
            );
            return None;
        }
        if let Some(v) = inline {
            return Some(Some(Secret::new(v)));
        }
        if let Some(var) = env {
            return match (self.env)(&var) {
                Some(v) if !v.trim().is_empty() => Some(Some(Secret::new(v.trim()))),
                _ => {
                    self.push(
                        self.key(&env_key),
                        format!("environment variable {var} is not set"),
                    );
                    None
                }
            };
        }
        if let Some(path) = file {
            return match std::fs::read_to_string(&path) {
                Ok(v) if !v.trim().is_empty() => Some(Some(Secret::new(v.trim()))),
                Ok(_) => {
                    self.push(self.key(&file_key), format!("{path} is empty"));
                    None
                }
                Err(e) => {
                    self.push(self.key(&file_key), format!("cannot read {path}: {e}"));
                    None
                }
            };
        }
        if required {
            self.push(
                self.key(key),
                format!("required: one of {key}, {env_key}, {file_key}"),
            );
            return None;
        }
        Some(None)
    }

    fn email(&mut self, map: &Map<String, Value>) -> Option<EmailTarget> {
        let ca_file = self.ca_file(map);
        let host = match self.opt_str(map, "smtp_host") {
            Ok(Some(h)) => Some(h),
            Ok(None) => {
                self.push(self.key("smtp_host"), "required: the submission server");
                None
            }
            Err(()) => None,
        };
        let security = match map.get("security") {
            None => Some(Security::Starttls),
            Some(v) => match v.as_str() {
                Some("starttls") => Some(Security::Starttls),
                Some("tls") => Some(Security::Tls),
                Some("none") => Some(Security::None),
                _ => {
                    self.push(
                        self.key("security"),
                        format!("{v} is not one of starttls, tls, none"),
                    );
                    None
                }
            },
        };
        if let (Some(Security::None), Some(h)) = (security, &host)
            && !is_loopback(h)
        {
            self.push(
                self.key("security"),
                format!("\"none\" sends the alert and any password in clear text: only allowed to a loopback host, not {h}"),
            );
        }
        let port = match map.get("smtp_port") {
            None => security.map(|s| match s {
                Security::Tls => 465,
                Security::Starttls => 587,
                Security::None => 25,
            }),
            Some(v) => match v.as_u64() {
                Some(p @ 1..=65535) => Some(p as u16),
                _ => {
                    self.push(
                        self.key("smtp_port"),
                        format!("{v} is not a port (1-65535)"),
                    );
                    None
                }
            },
        };
        let username = self.opt_str(map, "username");
        let password = self.secret(map, "password", false);
        let token = self.secret(map, "oauth2_token", false);
        // Keep going on a bad combination: `from` and `to` are still checked.
        let credentials = match (username, password, token) {
            (Ok(_), Some(Some(_)), Some(Some(_))) => {
                self.push(
                    self.key("oauth2_token"),
                    "set a password or an oauth2_token, not both",
                );
                None
            }
            (Ok(Some(_)), Some(None), Some(None)) => {
                self.push(
                    self.key("password"),
                    "username is set but none of password, password_env, password_file, oauth2_token, oauth2_token_env, oauth2_token_file is",
                );
                None
            }
            (Ok(None), Some(p), Some(t)) if p.is_some() || t.is_some() => {
                let what = if p.is_some() {
                    "a password"
                } else {
                    "an oauth2_token"
                };
                self.push(
                    self.key("username"),
                    format!("{what} is set but no username"),
                );
                None
            }
            (Ok(u), Some(p), Some(t)) => Some((u, p, t)),
            _ => None,
        };
        let from = match self.opt_str(map, "from") {
            Ok(Some(f)) if is_address(&f) => Some(f),
            Ok(Some(f)) => {
                self.push(self.key("from"), format!("{f:?} is not an email address"));
                None
            }
            Ok(None) => {
                self.push(self.key("from"), "required: the sender address");
                None
            }
            Err(()) => None,
        };
        let to = match map.get("to") {
            None => {
                self.push(self.key("to"), "required: a list of recipient addresses");
                None
            }
            Some(Value::Array(list)) if !list.is_empty() => {
                let mut out = Vec::new();
                for (i, a) in list.iter().enumerate() {
                    match a.as_str() {
                        Some(s) if is_address(s) => out.push(s.to_string()),
                        _ => self.push(
                            format!("{}.to[{i}]", self.path),
                            format!("{a} is not an email address"),
                        ),
                    }
                }
                (out.len() == list.len()).then_some(out)
            }
            Some(other) => {
                self.push(
                    self.key("to"),
                    format!("expected a non-empty list of addresses, found {other}"),
                );
                None
            }
        };
        Some(EmailTarget {
            host: host?,
            port: port?,
            security: security?,
            username: credentials.clone()?.0,
            password: credentials.clone()?.1,
            oauth2_token: credentials?.2,
            from: from?,
            to: to?,
            ca_file: ca_file.ok()?,
        })
    }
}

/// `scheme://host:port` of an http(s) URL, or why it is not one. The
/// message never repeats the URL: it may hold a token.
pub fn origin_of(url: &str) -> Result<String, String> {
    let uri: hyper::Uri = url.parse().map_err(|_| {
        "not a valid URL (expected http://host[:port]/path or https://...)".to_string()
    })?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err("the URL must start with http:// or https://".into()),
    };
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or("the URL has no host")?;
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    Ok(format!(
        "{}://{host}:{port}",
        if https { "https" } else { "http" }
    ))
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A bare `local@domain`: no spaces, angle brackets or line breaks (it goes
/// into SMTP commands and headers as is).
fn is_address(s: &str) -> bool {
    match s.rsplit_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_graphic() && !"<>()[]\\,;:\"".contains(c))
        }
        None => false,
    }
}
