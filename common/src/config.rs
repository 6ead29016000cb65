//! The `[[check]]` schema and its validation.
//!
//! A config file is read whole (TOML through the `config` crate, with
//! `MAILLOOP_...` environment overrides), then validated whole: every bad key
//! is collected with its path (`check[0].smtp.port`) and reported at once,
//! before anything connects or binds. Nothing downstream ever sees an
//! unvalidated value.
//!
//! Passwords come from `password`, `password_env` or `password_file`; they
//! are resolved here, at load time, so a missing variable is a config error
//! and not a failed probe at 3 a.m.

use crate::{Secret, StepName};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod oauth2;
mod table;
pub use oauth2::{Grant, HttpsUrl, OAuth2Config, Provider, parse_https_url};
pub use table::{IssueList, Table};

/// Transport security of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// Plain TCP, upgraded with STARTTLS (refused if the server does not offer it).
    Starttls,
    /// TLS from the first byte (465, 993).
    Tls,
    /// No TLS at all (an inbound MX on 25, a test server).
    None,
}

impl Security {
    fn parse(s: &str) -> Option<Security> {
        match s {
            "starttls" => Some(Security::Starttls),
            "tls" => Some(Security::Tls),
            "none" => Some(Security::None),
            _ => None,
        }
    }
}

/// A user name and how it proves itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub login: Login,
}

/// What goes with the user name: a resolved password, or the settings to
/// fetch an OAuth2 bearer token (XOAUTH2 / OAUTHBEARER).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    Password(Secret),
    OAuth2(Box<OAuth2Config>),
}

impl Credentials {
    /// The password, when this login uses one.
    pub fn password(&self) -> Option<&Secret> {
        match &self.login {
            Login::Password(p) => Some(p),
            Login::OAuth2(_) => None,
        }
    }

    /// The token settings, when this login uses OAuth2.
    pub fn oauth2(&self) -> Option<&OAuth2Config> {
        match &self.login {
            Login::OAuth2(o) => Some(o),
            Login::Password(_) => None,
        }
    }
}

/// How to reach and trust one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub security: Security,
    /// Name to verify the certificate against (default: `host`).
    pub server_name: Option<String>,
    /// Extra trust root(s), PEM, on top of the system store. A certificate
    /// byte-identical to one in this file is trusted as it is (a self-signed
    /// server certificate), its name and validity period still checked.
    pub ca_file: Option<PathBuf>,
    /// SHA-256 pins of the server's certificate or of its public key
    /// (SubjectPublicKeyInfo). When set, the leaf certificate must match
    /// one, instead of chaining to a trusted CA; name and validity period
    /// are still checked.
    pub pin_sha256: Vec<[u8; 32]>,
    pub credentials: Option<Credentials>,
    /// `security = "none"` with credentials to a host that is not loopback
    /// was allowed explicitly (the report then carries a warning).
    pub allow_plaintext_auth: bool,
}

impl Endpoint {
    /// The name the certificate must carry.
    pub fn tls_name(&self) -> &str {
        self.server_name.as_deref().unwrap_or(&self.host)
    }

    /// The warning a report carries when this endpoint sends a password in
    /// clear text to a host that is not loopback (only possible with
    /// `allow_plaintext_auth = true`). `side` is `smtp` or `imap`.
    pub fn plaintext_auth_warning(&self, side: &str) -> Option<String> {
        // No user name: reports are read by people who must not learn logins.
        let plaintext = self.credentials.is_some() && self.security == Security::None && !is_loopback_host(&self.host);
        plaintext.then(|| {
            format!(
                "{side}: the login goes to {}:{} in clear text (security = \"none\", allow_plaintext_auth = true)",
                self.host, self.port
            )
        })
    }
}

/// A host that never leaves the machine: `localhost`, 127.0.0.0/8, `::1`
/// (brackets allowed). Names are not resolved.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_end_matches('.');
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Reads one `pin_sha256` entry: the SHA-256 of a DER certificate or of its
/// SubjectPublicKeyInfo, as 64 hex digits (colons allowed, as `openssl x509
/// -fingerprint -sha256` prints them) or as base64 (44 characters, as
/// `curl --pinnedpubkey` takes them, with or without its `sha256//` prefix).
pub fn parse_pin_sha256(text: &str) -> Result<[u8; 32], String> {
    use base64::Engine;
    let t = text.trim();
    let t = t.strip_prefix("sha256//").unwrap_or(t);
    let hex: String = t.chars().filter(|c| *c != ':').collect();
    let bytes = if hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        (0..32).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex digits")).collect()
    } else {
        base64::engine::general_purpose::STANDARD.decode(t).map_err(|_| {
            format!("{text:?} is neither 64 hex digits nor base64 of a SHA-256 hash")
        })?
    };
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format!("{text:?} decodes to {} bytes, a SHA-256 hash has 32", bytes.len()))
}

/// How the receiver notices the probe's arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitMode {
    /// IMAP IDLE (RFC 2177); falls back to polling if the server lacks it.
    Idle,
    /// `UID SEARCH` every `poll_interval`.
    Poll,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpConfig {
    pub endpoint: Endpoint,
    /// EHLO name; default: the machine's host name.
    pub helo: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImapConfig {
    pub endpoint: Endpoint,
    pub mailbox: String,
    pub wait: WaitMode,
    pub poll_interval: Duration,
    /// For this long after the send, poll with NOOP every few milliseconds
    /// before settling into IDLE or `poll_interval` (zero: never).
    pub fast_window: Duration,
    /// Folders where a probe filed as spam may land, watched besides
    /// `mailbox` (`junk`): `None` finds them (RFC 6154 `\Junk`, then the
    /// usual names); an empty list watches none.
    pub junk: Option<Vec<String>>,
}

/// What the probe's body says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProbeBody {
    /// A plain text note.
    #[default]
    Normal,
    /// The note plus the GTUBE test string every spam filter flags: checks
    /// that the filter and the junk-folder detection work.
    Gtube,
}

/// What a threshold applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ThresholdKey {
    Step(StepName),
    Rtt,
    Delivery,
}

impl fmt::Display for ThresholdKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ThresholdKey::Step(s) => f.write_str(s.as_str()),
            ThresholdKey::Rtt => f.write_str("rtt"),
            ThresholdKey::Delivery => f.write_str("delivery"),
        }
    }
}

/// One round trip to monitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckConfig {
    pub name: String,
    pub from: String,
    pub to: String,
    /// The whole round trip, connect to found.
    pub deadline: Duration,
    /// Default timeout of every step.
    pub step_timeout: Duration,
    /// Per-step overrides of `step_timeout`.
    pub timeouts: BTreeMap<StepName, Duration>,
    /// Above these the outcome is `degraded`.
    pub thresholds: BTreeMap<ThresholdKey, Duration>,
    /// Probes of this check older than this are swept from the mailbox.
    pub sweep_older_than: Duration,
    /// First wait before retrying a deferred (4xx) submission; later waits double.
    pub greylist_retry: Duration,
    /// How long deferrals are retried before the probe counts as failed
    /// (zero: never retry).
    pub greylist_grace: Duration,
    /// A server certificate with fewer days left makes the outcome `degraded`.
    pub cert_min_days: u32,
    /// Only `Authentication-Results` written by this authserv-id are
    /// believed (None: all, with a warning; a sender can forge them).
    pub trusted_authserv_id: Option<String>,
    /// Verify the received probe's DKIM signature independently.
    pub verify_dkim: bool,
    pub expect: Expect,
    pub spf: SpfCheck,
    /// `probe_body`: `"normal"` or `"gtube"`.
    pub probe_body: ProbeBody,
    /// `[check.blocklists]`: DNSBL and DBL lookups of the sending path (off
    /// when absent).
    pub blocklists: Option<Blocklists>,
    pub smtp: SmtpConfig,
    pub imap: ImapConfig,
}

impl CheckConfig {
    /// The timeout of one step.
    pub fn timeout(&self, step: StepName) -> Duration {
        self.timeouts.get(&step).copied().unwrap_or(self.step_timeout)
    }
}

/// A validated probe config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeConfig {
    pub checks: Vec<CheckConfig>,
    pub dns: DnsConfig,
}

/// Where DNS questions go (SPF walk, independent DKIM verification).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DnsConfig {
    /// `ip:port` of each name server; empty means the system's resolv.conf.
    pub nameservers: Vec<std::net::SocketAddr>,
}

/// Verdicts the receiver must reach, from `[check.expect]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Expect {
    /// Expected `spf=`, `dkim=`, `dmarc=` results (each "pass" unless set
    /// otherwise once the table exists).
    pub spf: Option<String>,
    pub dkim: Option<String>,
    pub dmarc: Option<String>,
    /// Minimum DKIM alignment with the From domain.
    pub alignment: Option<AlignmentLevel>,
}

/// The alignment an expectation asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlignmentLevel {
    Strict,
    Relaxed,
}

/// The SPF lookup-budget walk of `[check.spf]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpfCheck {
    pub enabled: bool,
    /// Domain whose record is walked; default the domain of `from`.
    pub domain: String,
}

/// Default `blocklists.interval`: at most one lookup per zone and name this often.
pub const DEFAULT_BLOCKLIST_INTERVAL: Duration = Duration::from_secs(15 * 60);

/// `[check.blocklists]`: where the sending path's address and domain are looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocklists {
    /// DNSBL zones for addresses (`zen.spamhaus.org`).
    pub dnsbl: Vec<String>,
    /// Domain blocklist zones (`dbl.spamhaus.org`).
    pub dbl: Vec<String>,
    /// Addresses to look up; empty: the address that entered the receiver,
    /// from the delivered probe's `Received:` headers.
    pub addresses: Vec<std::net::IpAddr>,
    /// Domains to look up in `dbl`; default the domain of `from`.
    pub domains: Vec<String>,
    /// A zone is asked about one name at most once per this interval (or
    /// the answer's TTL, if longer).
    pub interval: Duration,
}

/// One bad key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Where: `check[0].smtp.port`.
    pub path: String,
    pub message: String,
}

/// Everything wrong with a config, reported together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {message}")]
    Unreadable { path: String, message: String },
    #[error("{} in {path}:\n{}", plural(issues.len()), list(issues))]
    Invalid { path: String, issues: Vec<ConfigIssue> },
}

fn plural(n: usize) -> String {
    if n == 1 { "1 config error".into() } else { format!("{n} config errors") }
}

fn list(issues: &[ConfigIssue]) -> String {
    issues
        .iter()
        .map(|i| format!("  {}: {}", i.path, i.message))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Default whole-probe deadline.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(120);
/// Default per-step timeout.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Default age after which leftover probes are swept.
pub const DEFAULT_SWEEP_AGE: Duration = Duration::from_secs(3600);
/// Default minimum days a server certificate must have left.
pub const DEFAULT_CERT_MIN_DAYS: u32 = 14;
/// Default first wait before retrying a deferred submission.
pub const DEFAULT_GREYLIST_RETRY: Duration = Duration::from_secs(60);
/// Default window in which deferrals are retried.
pub const DEFAULT_GREYLIST_GRACE: Duration = Duration::from_secs(15 * 60);
/// Default window of fast NOOP polling after the send.
pub const DEFAULT_FAST_WINDOW: Duration = Duration::from_secs(2);
/// Default polling interval when IDLE is unavailable or off.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

impl ProbeConfig {
    /// Reads `path` (TOML) with `MAILLOOP_...` environment overrides and
    /// validates it whole.
    pub fn load(path: &Path) -> Result<ProbeConfig, ConfigError> {
        let shown = path.display().to_string();
        let (raw, overrides) = read_raw(path).map_err(|message| ConfigError::Unreadable {
            path: shown.clone(),
            message,
        })?;
        let validated = Self::from_value(&raw, &|name| std::env::var(name).ok());
        overrides.finish(validated).map_err(|issues| ConfigError::Invalid { path: shown, issues })
    }

    /// Validates an already-parsed config tree. `env` looks up environment
    /// variables for `password_env` (a parameter, so tests need not touch the
    /// process environment).
    pub fn from_value(
        raw: &Value,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ProbeConfig, Vec<ConfigIssue>> {
        let mut v = Validator { issues: Vec::new(), env, secrets: Secrets::Resolve };
        let checks = v.checks(raw);
        let dns = v.dns(raw);
        if v.issues.is_empty() {
            Ok(ProbeConfig { checks, dns: dns.unwrap_or_default() })
        } else {
            Err(v.issues)
        }
    }
}

/// Validates one `[[check]]` table on its own (a check that arrives from the
/// coordinator, or one the coordinator is given). `path` prefixes every
/// issue (`check[2]`, `api`).
pub fn check_from_value(
    path: &str,
    value: &Value,
    env: &dyn Fn(&str) -> Option<String>,
    secrets: Secrets,
) -> Result<CheckConfig, Vec<ConfigIssue>> {
    let mut v = Validator { issues: Vec::new(), env, secrets };
    let check = v.check(path, value);
    match check {
        Some(c) if v.issues.is_empty() => Ok(c),
        _ if v.issues.is_empty() => Err(vec![ConfigIssue { path: path.to_string(), message: "expected a table".into() }]),
        _ => Err(v.issues),
    }
}

/// Parses TOML plus environment overrides into a plain tree.
///
/// Environment: `MAILLOOP_<KEY>` with `__` between nested keys overrides
/// top-level tables (reserved for agent settings); per-check overrides go by
/// check name: `MAILLOOP_CHECK__<name>__<section>__<key>`, e.g.
/// `MAILLOOP_CHECK__corp__SMTP__PORT=2525`.
fn read_raw(path: &Path) -> Result<(Value, EnvOverrides), String> {
    if !path.exists() {
        return Err("no such file".into());
    }
    let built = config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml))
        .build()
        .map_err(|e| e.to_string())?;
    let mut value: Value = built.try_deserialize().map_err(|e| e.to_string())?;
    let overrides = apply_env_overrides(&mut value, std::env::vars());
    Ok((value, overrides))
}

/// What environment overrides did to a config tree: the config path each
/// variable set, so an issue at that path can name the variable behind it
/// (the file does not hold the bad value), and the variables that could
/// not be applied at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvOverrides {
    /// (config path as issues spell it, e.g. `check[0].smtp.port`, variable).
    pub applied: Vec<(String, String)>,
    /// Variables that address nothing: an unknown check, an empty key.
    pub issues: Vec<ConfigIssue>,
}

impl EnvOverrides {
    /// Adds "(from environment variable X)" to every issue at or under a
    /// path a variable set.
    pub fn explain(&self, mut issues: Vec<ConfigIssue>) -> Vec<ConfigIssue> {
        for issue in &mut issues {
            let var = self.applied.iter().find(|(path, _)| {
                issue.path == *path || issue.path.strip_prefix(path.as_str()).is_some_and(|rest| rest.starts_with('.'))
            });
            if let Some((_, var)) = var {
                issue.message.push_str(&format!(" (from environment variable {var})"));
            }
        }
        issues
    }

    /// A validation result with the variables named: every issue of the
    /// tree explained, plus the variables that addressed nothing (an error
    /// even when the tree itself is fine: a mistyped override must not be
    /// silently ignored).
    pub fn finish<T>(&self, validated: Result<T, Vec<ConfigIssue>>) -> Result<T, Vec<ConfigIssue>> {
        match validated {
            Ok(v) if self.issues.is_empty() => Ok(v),
            Ok(_) => Err(self.issues.clone()),
            Err(issues) => {
                let mut all = self.explain(issues);
                all.extend(self.issues.iter().cloned());
                Err(all)
            }
        }
    }
}

/// Applies `MAILLOOP_CHECK__<name>__<key path>` overrides to matching
/// checks; a variable naming no check is an issue (path: the variable).
pub fn apply_env_overrides(value: &mut Value, vars: impl Iterator<Item = (String, String)>) -> EnvOverrides {
    let mut out = EnvOverrides::default();
    let mut vars: Vec<(String, String)> = vars.filter(|(k, _)| k.starts_with("MAILLOOP_CHECK__")).collect();
    vars.sort();
    for (key, val) in vars {
        let rest = &key["MAILLOOP_CHECK__".len()..];
        let mut parts = rest.split("__");
        let check_name = parts.next().unwrap_or_default();
        let path: Vec<String> = parts.map(|p| p.to_ascii_lowercase()).collect();
        if check_name.is_empty() || path.is_empty() || path.iter().any(String::is_empty) {
            out.issues.push(ConfigIssue {
                path: key.clone(),
                message: "environment override names no check key: write MAILLOOP_CHECK__<check name>__<section>__<key>, e.g. MAILLOOP_CHECK__corp__SMTP__PORT=2525".into(),
            });
            continue;
        }
        let checks = value.get_mut("check").and_then(Value::as_array_mut).map(|c| c.as_mut_slice()).unwrap_or_default();
        let mut names = Vec::new();
        let mut matched = false;
        for (i, check) in checks.iter_mut().enumerate() {
            let name = check.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
            if name.eq_ignore_ascii_case(check_name) {
                set_path(check, &path, scalar(&val));
                out.applied.push((format!("check[{i}].{}", path.join(".")), key.clone()));
                matched = true;
            }
            names.push(name);
        }
        if !matched {
            let known = if names.is_empty() { "none defined".to_string() } else { names.join(", ") };
            out.issues.push(ConfigIssue {
                path: key.clone(),
                message: format!("environment override for check {check_name:?}, but no check has that name (checks: {known})"),
            });
        }
    }
    out
}

/// Applies `MAILLOOP_<SECTION>__<key path>` overrides to the top-level table
/// `section` (`"agent"`: `MAILLOOP_AGENT__REGION=eu-west` sets
/// `agent.region`), creating the table if the file has none. Key names are
/// lowercased; values are read as a whole number, `true`/`false`, or else a
/// string, then validated like the file's. For settings that differ per host
/// (a container's region, a token variable) without editing the file.
///
/// The returned [`EnvOverrides`] ties each set path to its variable, so a
/// typo in a variable's key (`MAILLOOP_AGENT__REGOIN`) is reported as
/// `agent.regoin: unknown key (from environment variable MAILLOOP_AGENT__REGOIN)`.
pub fn apply_section_env_overrides(value: &mut Value, section: &str, vars: impl Iterator<Item = (String, String)>) -> EnvOverrides {
    let prefix = format!("MAILLOOP_{}__", section.to_ascii_uppercase());
    let mut out = EnvOverrides::default();
    let mut vars: Vec<(String, String)> = vars.filter(|(k, _)| k.starts_with(&prefix)).collect();
    vars.sort();
    for (key, val) in vars {
        let rest = &key[prefix.len()..];
        let mut path = vec![section.to_string()];
        path.extend(rest.split("__").map(|p| p.to_ascii_lowercase()));
        if path.iter().any(String::is_empty) {
            out.issues.push(ConfigIssue {
                path: key.clone(),
                message: format!("environment override names no key: write {prefix}<KEY>, e.g. {prefix}REGION"),
            });
            continue;
        }
        set_path(value, &path, scalar(&val));
        out.applied.push((path.join("."), key.clone()));
    }
    out
}

fn set_path(node: &mut Value, path: &[String], new: Value) {
    let Some((last, parents)) = path.split_last() else { return };
    let mut cur = node;
    for p in parents {
        if !cur.get(p).is_some_and(Value::is_object) {
            if let Some(obj) = cur.as_object_mut() {
                obj.insert(p.clone(), Value::Object(Map::new()));
            }
        }
        cur = cur.get_mut(p).expect("just inserted");
    }
    if let Some(obj) = cur.as_object_mut() {
        obj.insert(last.clone(), new);
    }
}

fn scalar(s: &str) -> Value {
    if let Ok(n) = s.parse::<i64>() {
        return Value::from(n);
    }
    match s {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => Value::String(s.to_string()),
    }
}

/// `[[checks]]`, `[[Check]]`, `[[chek]]`: a mistyped `[[check]]` (one
/// edit away, case aside).
fn is_check_typo(key: &str) -> bool {
    edit_distance(&key.to_ascii_lowercase(), "check") <= 1
}

/// Levenshtein distance of two short strings.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1).min(row[j] + 1).min(diag + usize::from(ca != *cb));
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

struct Validator<'e> {
    issues: Vec<ConfigIssue>,
    env: &'e dyn Fn(&str) -> Option<String>,
    secrets: Secrets,
}

/// How passwords are treated while validating a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrets {
    /// Resolve `password_env` / `password_file` now (the agent, the one-shot probe).
    Resolve,
    /// Keep references unresolved (the coordinator: the secret lives in the
    /// agent's region). Resolved passwords are empty placeholders; an inline
    /// `password` is refused unless `allow_inline` is set.
    ReferencesOnly { allow_inline: bool },
}

impl Validator<'_> {
    fn issue(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.issues.push(ConfigIssue { path: path.into(), message: message.into() });
    }

    fn checks(&mut self, raw: &Value) -> Vec<CheckConfig> {
        let Some(root) = raw.as_object() else {
            self.issue("(root)", "expected a table");
            return Vec::new();
        };
        let mut misspelt_check = false;
        for key in root.keys() {
            if key != "check" && key != "dns" {
                if is_check_typo(key) {
                    misspelt_check = true;
                    self.issue(key.clone(), "unknown key: the table is spelt [[check]] (one per round trip to monitor)");
                } else if key == "agent" {
                    self.issue(key.clone(), "unknown key: [agent] belongs in agent.toml, read by `mailloop-agent run`; a probe config holds [[check]] tables and [dns]");
                } else {
                    self.issue(key.clone(), "unknown key (expected [[check]] tables and [dns])");
                }
            }
        }
        let list = match root.get("check") {
            // The misspelt table said it all: no second error about the same mistake.
            None if misspelt_check => return Vec::new(),
            None => {
                self.issue("check", "no [[check]] defined");
                return Vec::new();
            }
            Some(Value::Array(list)) => list,
            Some(Value::Object(_)) => {
                self.issue("check", "must be an array of tables: write [[check]], not [check]");
                return Vec::new();
            }
            Some(_) => {
                self.issue("check", "must be an array of tables ([[check]])");
                return Vec::new();
            }
        };
        let mut names = HashSet::new();
        let mut checks = Vec::new();
        for (i, item) in list.iter().enumerate() {
            let path = format!("check[{i}]");
            if let Some(name) = item.get("name").and_then(Value::as_str) {
                if !names.insert(name) {
                    self.issue(format!("{path}.name"), format!("duplicate check name {name:?}"));
                }
            }
            if let Some(c) = self.check(&path, item) {
                checks.push(c);
            }
        }
        checks
    }

    fn check(&mut self, path: &str, item: &Value) -> Option<CheckConfig> {
        let mut t = Table::optional(&mut self.issues, path, Some(item))?;
        let name = t.required_string(&mut self.issues, "name");
        if let Some(n) = &name {
            if n.is_empty() || !n.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                self.issue(format!("{path}.name"), "use letters, digits, '-', '_' or '.' (it goes into a mail header and metrics labels)");
            }
        }
        let from = t.required_string(&mut self.issues, "from").filter(|a| self.address(path, "from", a));
        let to = t.required_string(&mut self.issues, "to").filter(|a| self.address(path, "to", a));
        let deadline = t.duration(&mut self.issues, "deadline", DEFAULT_DEADLINE);
        let step_timeout = t.duration(&mut self.issues, "step_timeout", DEFAULT_STEP_TIMEOUT);
        let sweep_older_than = t.duration(&mut self.issues, "sweep_older_than", DEFAULT_SWEEP_AGE);
        let greylist_retry = t.duration(&mut self.issues, "greylist_retry", DEFAULT_GREYLIST_RETRY);
        let greylist_grace = t.duration_or_zero(&mut self.issues, "greylist_grace", DEFAULT_GREYLIST_GRACE);
        let cert_min_days = t.number(&mut self.issues, "cert_min_days", DEFAULT_CERT_MIN_DAYS.into(), 0..=3650).map(|n| n as u32);
        let trusted_authserv_id = t.string(&mut self.issues, "trusted_authserv_id");
        let verify_dkim = t.flag(&mut self.issues, "verify_dkim", true);
        let probe_body = match t.string(&mut self.issues, "probe_body") {
            Some(None) => Some(ProbeBody::Normal),
            Some(Some(b)) => match b.as_str() {
                "normal" => Some(ProbeBody::Normal),
                "gtube" => Some(ProbeBody::Gtube),
                _ => {
                    self.issue(t.path_of("probe_body"), format!("{b:?}: expected \"normal\" or \"gtube\""));
                    None
                }
            },
            None => None,
        };
        let expect = self.expect(&mut t);
        let spf = self.spf(&mut t, from.as_deref());
        let blocklists = self.blocklists(&mut t, from.as_deref());
        let smtp = t.sub(&mut self.issues, "smtp", true).and_then(|s| self.smtp(s));
        let imap = t.sub(&mut self.issues, "imap", true).and_then(|s| self.imap(s));
        let thresholds = self.thresholds(&mut t);
        let timeouts = self.timeouts(&mut t);
        t.finish(&mut self.issues);
        Some(CheckConfig {
            name: name?,
            from: from?,
            to: to?,
            deadline: deadline?,
            step_timeout: step_timeout?,
            timeouts: timeouts?,
            thresholds: thresholds?,
            sweep_older_than: sweep_older_than?,
            greylist_retry: greylist_retry?,
            greylist_grace: greylist_grace?,
            cert_min_days: cert_min_days?,
            trusted_authserv_id: trusted_authserv_id?,
            verify_dkim: verify_dkim?,
            expect: expect?,
            spf: spf?,
            probe_body: probe_body?,
            blocklists: blocklists?,
            smtp: smtp?,
            imap: imap?,
        })
    }

    fn address(&mut self, path: &str, key: &str, a: &str) -> bool {
        let ok = a.split_once('@').is_some_and(|(l, d)| {
            !l.is_empty() && !d.is_empty() && !a.contains(|c: char| c.is_whitespace() || c == '<' || c == '>')
        });
        if !ok {
            self.issue(format!("{path}.{key}"), format!("{a:?} is not a mail address (local@domain)"));
        }
        ok
    }

    fn smtp(&mut self, mut t: Table<'_>) -> Option<SmtpConfig> {
        let endpoint = self.endpoint(&mut t, Security::Starttls, |s| match s {
            Security::Starttls => 587,
            Security::Tls => 465,
            Security::None => 25,
        }, false, "smtp");
        let helo = t.string(&mut self.issues, "helo");
        t.finish(&mut self.issues);
        Some(SmtpConfig { endpoint: endpoint?, helo: helo? })
    }

    fn imap(&mut self, mut t: Table<'_>) -> Option<ImapConfig> {
        let endpoint = self.endpoint(&mut t, Security::Tls, |s| match s {
            Security::Tls => 993,
            Security::Starttls | Security::None => 143,
        }, true, "imap");
        let mailbox = t.string(&mut self.issues, "mailbox").map(|m| m.unwrap_or_else(|| "INBOX".into()));
        let wait = match t.string(&mut self.issues, "wait") {
            Some(None) => Some(WaitMode::Idle),
            Some(Some(w)) => match w.as_str() {
                "idle" => Some(WaitMode::Idle),
                "poll" => Some(WaitMode::Poll),
                _ => {
                    self.issue(t.path_of("wait"), format!("{w:?}: expected \"idle\" or \"poll\""));
                    None
                }
            },
            None => None,
        };
        let poll_interval = t.duration(&mut self.issues, "poll_interval", DEFAULT_POLL_INTERVAL);
        let fast_window = t.duration_or_zero(&mut self.issues, "fast_window", DEFAULT_FAST_WINDOW);
        let junk = self.junk(&mut t);
        t.finish(&mut self.issues);
        Some(ImapConfig {
            endpoint: endpoint?,
            mailbox: mailbox?,
            wait: wait?,
            poll_interval: poll_interval?,
            fast_window: fast_window?,
            junk: junk?,
        })
    }

    /// `junk`: absent (find the folder), a folder name, a list of them, or
    /// `false` / `[]` (watch no junk folder).
    fn junk(&mut self, t: &mut Table<'_>) -> Option<Option<Vec<String>>> {
        let items: Vec<&Value> = match t.get("junk") {
            None => return Some(None),
            Some(Value::Bool(false)) => return Some(Some(Vec::new())),
            Some(Value::Array(list)) => list.iter().collect(),
            Some(one @ Value::String(_)) => vec![one],
            Some(other) => {
                self.issue(t.path_of("junk"), format!("expected a folder name, a list of them, or false; found {other}"));
                return None;
            }
        };
        let mut folders = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match item.as_str() {
                Some(f) if !f.is_empty() && !f.contains(['\r', '\n', '"', '\\']) => folders.push(f.to_string()),
                _ => {
                    self.issue(format!("{}[{i}]", t.path_of("junk")), format!("{item}: expected a folder name without quotes, backslashes or line breaks"));
                    ok = false;
                }
            }
        }
        ok.then_some(Some(folders))
    }

    fn endpoint(
        &mut self,
        t: &mut Table<'_>,
        default_security: Security,
        default_port: fn(Security) -> u16,
        login_required: bool,
        side: &str,
    ) -> Option<Endpoint> {
        let host = t.required_string(&mut self.issues, "host");
        let security = match t.string(&mut self.issues, "security")? {
            None => Some(default_security),
            Some(s) => {
                let parsed = Security::parse(&s);
                if parsed.is_none() {
                    self.issue(t.path_of("security"), format!("{s:?}: expected \"starttls\", \"tls\" or \"none\""));
                }
                parsed
            }
        };
        let port = t.port(&mut self.issues, "port");
        let server_name = t.string(&mut self.issues, "server_name");
        let ca_file = t.string(&mut self.issues, "ca_file").map(|f| f.map(PathBuf::from));
        if let Some(Some(f)) = &ca_file {
            if let Err(e) = std::fs::File::open(f) {
                self.issue(t.path_of("ca_file"), format!("cannot read {}: {e}", f.display()));
            }
        }
        let pin_sha256 = self.pins(t);
        if t.get("tls").is_some() {
            self.issue(t.path_of("tls"), "no tls sub-table here: write pin_sha256, ca_file and server_name directly in this table");
        }
        let allow_plaintext_auth = t.flag(&mut self.issues, "allow_plaintext_auth", false);
        let username = t.string(&mut self.issues, "username");
        let password = self.password(t);
        let oauth2 = match t.sub(&mut self.issues, "oauth2", false) {
            Some(sub) => self.oauth2(sub, side).map(Some),
            None if t.is_non_table("oauth2") => None,
            None => Some(None),
        };
        let password = password?;
        if password.is_some() && t.get("oauth2").is_some() {
            self.issue(t.path_of("oauth2"), "set either a password or [oauth2], not both");
            return None;
        }
        let login = match (password, oauth2?) {
            (Some(p), _) => Some(Login::Password(p)),
            (None, Some(o)) => Some(Login::OAuth2(Box::new(o))),
            (None, None) => None,
        };
        let credentials = match (username?, login) {
            (Some(username), Some(login)) => Some(Credentials { username, login }),
            (None, None) if login_required => {
                self.issue(t.path_of("username"), "required: the mailbox login");
                None
            }
            (None, None) => None,
            (Some(_), None) => {
                self.issue(t.path_of("password"), "username is set but none of password, password_env, password_file, [oauth2] is");
                return None;
            }
            (None, Some(_)) => {
                self.issue(t.path_of("username"), "a password or [oauth2] is set but no username");
                return None;
            }
        };
        if login_required && credentials.is_none() {
            return None;
        }
        let security = security?;
        let host = host?;
        let allow_plaintext_auth = allow_plaintext_auth?;
        if security == Security::None && credentials.is_some() && !allow_plaintext_auth && !is_loopback_host(&host) {
            self.issue(
                t.path_of("security"),
                format!(
                    "\"none\" would send the password in clear text to {host}, which is not a loopback address: \
                     use \"starttls\" or \"tls\", or set allow_plaintext_auth = true if the network to it is trusted"
                ),
            );
            return None;
        }
        let pin_sha256 = pin_sha256?;
        if security == Security::None && !pin_sha256.is_empty() {
            self.issue(t.path_of("pin_sha256"), "set, but security = \"none\": there is no certificate to pin");
            return None;
        }
        Some(Endpoint {
            port: port?.unwrap_or_else(|| default_port(security)),
            host,
            security,
            server_name: server_name?,
            ca_file: ca_file?,
            pin_sha256,
            credentials,
            allow_plaintext_auth,
        })
    }

    /// `pin_sha256`: one pin or a list of them (see [`parse_pin_sha256`]).
    fn pins(&mut self, t: &mut Table<'_>) -> Option<Vec<[u8; 32]>> {
        let items: Vec<&Value> = match t.get("pin_sha256") {
            None => return Some(Vec::new()),
            Some(Value::Array(list)) if list.is_empty() => {
                self.issue(t.path_of("pin_sha256"), "an empty list pins nothing: list SHA-256 hashes, or remove the key");
                return None;
            }
            Some(Value::Array(list)) => list.iter().collect(),
            Some(one @ Value::String(_)) => vec![one],
            Some(other) => {
                self.issue(t.path_of("pin_sha256"), format!("expected a list of SHA-256 hashes (hex or base64), found {other}"));
                return None;
            }
        };
        let mut pins = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match item.as_str().ok_or_else(|| format!("expected a string, found {item}")).and_then(parse_pin_sha256) {
                Ok(p) => pins.push(p),
                Err(m) => {
                    self.issue(format!("{}[{i}]", t.path_of("pin_sha256")), m);
                    ok = false;
                }
            }
        }
        ok.then_some(pins)
    }

    /// `Some(None)`: no password given; `None`: given but bad (issue recorded).
    fn password(&mut self, t: &mut Table<'_>) -> Option<Option<Secret>> {
        let inline = t.string(&mut self.issues, "password")?;
        let env = t.string(&mut self.issues, "password_env")?;
        let file = t.string(&mut self.issues, "password_file")?;
        let given = [inline.is_some(), env.is_some(), file.is_some()].iter().filter(|b| **b).count();
        if given > 1 {
            self.issue(t.path_of("password"), "set only one of password, password_env, password_file");
            return None;
        }
        if let Some(p) = inline {
            if let Secrets::ReferencesOnly { allow_inline: false } = self.secrets {
                self.issue(
                    t.path_of("password"),
                    "an inline password would be stored and sent by the coordinator: use password_env or password_file (resolved by the agent), or allow inline passwords explicitly",
                );
                return None;
            }
            return Some(Some(Secret::new(p)));
        }
        if let (Secrets::ReferencesOnly { .. }, true) = (self.secrets, env.is_some() || file.is_some()) {
            return Some(Some(Secret::new("")));
        }
        if let Some(var) = env {
            return match (self.env)(&var) {
                Some(v) if !v.is_empty() => Some(Some(Secret::new(v))),
                _ => {
                    self.issue(t.path_of("password_env"), format!("environment variable {var} is not set"));
                    None
                }
            };
        }
        if let Some(file) = file {
            return match std::fs::read_to_string(&file) {
                Ok(v) => {
                    let v = v.trim_end_matches(['\r', '\n']);
                    if v.is_empty() {
                        self.issue(t.path_of("password_file"), format!("{file} is empty"));
                        None
                    } else {
                        Some(Some(Secret::new(v)))
                    }
                }
                Err(e) => {
                    self.issue(t.path_of("password_file"), format!("cannot read {file}: {e}"));
                    None
                }
            };
        }
        Some(None)
    }

    fn thresholds(&mut self, t: &mut Table<'_>) -> Option<BTreeMap<ThresholdKey, Duration>> {
        let Some(sub) = t.sub(&mut self.issues, "thresholds", false) else {
            return Some(BTreeMap::new()).filter(|_| !t.is_non_table("thresholds"));
        };
        let mut out = BTreeMap::new();
        let mut ok = true;
        for (key, value) in sub.entries() {
            let path = format!("{}.{key:?}", sub.path());
            let target = match key.as_str() {
                "rtt" => Some(ThresholdKey::Rtt),
                "delivery" => Some(ThresholdKey::Delivery),
                step => step.parse().ok().map(ThresholdKey::Step),
            };
            let Some(target) = target else {
                self.issue(path, "unknown threshold: use a step name (\"smtp.auth\"), \"rtt\" or \"delivery\"");
                ok = false;
                continue;
            };
            match duration_value(value) {
                Ok(d) => {
                    out.insert(target, d);
                }
                Err(m) => {
                    self.issue(path, m);
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    fn timeouts(&mut self, t: &mut Table<'_>) -> Option<BTreeMap<StepName, Duration>> {
        let Some(sub) = t.sub(&mut self.issues, "timeouts", false) else {
            return Some(BTreeMap::new()).filter(|_| !t.is_non_table("timeouts"));
        };
        let mut out = BTreeMap::new();
        let mut ok = true;
        for (key, value) in sub.entries() {
            let path = format!("{}.{key:?}", sub.path());
            match (key.parse::<StepName>(), duration_value(value)) {
                (Ok(step), Ok(d)) => {
                    out.insert(step, d);
                }
                (Err(_), _) => {
                    self.issue(path, "unknown step name");
                    ok = false;
                }
                (_, Err(m)) => {
                    self.issue(path, m);
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    fn dns(&mut self, raw: &Value) -> Option<DnsConfig> {
        let mut t = Table::optional(&mut self.issues, "dns", raw.get("dns"))?;
        let mut out = DnsConfig::default();
        match t.get("nameservers") {
            None => {}
            Some(Value::Array(list)) => {
                for (i, item) in list.iter().enumerate() {
                    let text = item.as_str().unwrap_or_default();
                    let parsed = text
                        .parse::<std::net::SocketAddr>()
                        .or_else(|_| text.parse::<std::net::IpAddr>().map(|ip| std::net::SocketAddr::new(ip, 53)));
                    match parsed {
                        Ok(a) => out.nameservers.push(a),
                        Err(_) => self.issue(format!("dns.nameservers[{i}]"), format!("{item} is not an address (\"127.0.0.53\" or \"127.0.0.53:53\")")),
                    }
                }
            }
            Some(other) => self.issue("dns.nameservers", format!("expected a list of addresses, found {other}")),
        }
        t.finish(&mut self.issues);
        Some(out)
    }

    fn expect(&mut self, t: &mut Table<'_>) -> Option<Expect> {
        let Some(mut sub) = t.sub(&mut self.issues, "expect", false) else {
            return (!t.is_non_table("expect")).then(Expect::default);
        };
        // Once the table exists, each verdict defaults to "pass"; "any" waives it.
        let mut verdict = |v: &mut Self, key: &'static str| -> Option<Option<String>> {
            const KNOWN: [&str; 9] = ["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror", "policy", "any"];
            match sub.string(&mut v.issues, key)? {
                None => Some(Some("pass".to_string())),
                Some(r) if r.eq_ignore_ascii_case("any") => Some(None),
                Some(r) if KNOWN.contains(&r.to_ascii_lowercase().as_str()) => Some(Some(r.to_ascii_lowercase())),
                Some(r) => {
                    v.issue(sub.path_of(key), format!("{r:?}: expected one of {}", KNOWN.join(", ")));
                    None
                }
            }
        };
        let spf = verdict(self, "spf");
        let dkim = verdict(self, "dkim");
        let dmarc = verdict(self, "dmarc");
        let alignment = match sub.string(&mut self.issues, "alignment") {
            None => None,
            Some(None) => Some(None),
            Some(Some(a)) => match a.as_str() {
                "strict" => Some(Some(AlignmentLevel::Strict)),
                "relaxed" => Some(Some(AlignmentLevel::Relaxed)),
                _ => {
                    self.issue(sub.path_of("alignment"), format!("{a:?}: expected \"strict\" or \"relaxed\""));
                    None
                }
            },
        };
        sub.finish(&mut self.issues);
        Some(Expect { spf: spf?, dkim: dkim?, dmarc: dmarc?, alignment: alignment? })
    }

    fn spf(&mut self, t: &mut Table<'_>, from: Option<&str>) -> Option<SpfCheck> {
        let from_domain = from.and_then(|f| f.rsplit_once('@')).map(|(_, d)| d.to_string()).unwrap_or_default();
        let Some(mut sub) = t.sub(&mut self.issues, "spf", false) else {
            return (!t.is_non_table("spf")).then_some(SpfCheck { enabled: true, domain: from_domain });
        };
        let enabled = sub.flag(&mut self.issues, "enabled", true);
        let domain = sub.string(&mut self.issues, "domain").map(|d| d.unwrap_or(from_domain));
        sub.finish(&mut self.issues);
        Some(SpfCheck { enabled: enabled?, domain: domain? })
    }

    fn blocklists(&mut self, t: &mut Table<'_>, from: Option<&str>) -> Option<Option<Blocklists>> {
        let from_domain = from.and_then(|f| f.rsplit_once('@')).map(|(_, d)| d.to_string()).unwrap_or_default();
        let Some(mut sub) = t.sub(&mut self.issues, "blocklists", false) else {
            return (!t.is_non_table("blocklists")).then_some(None);
        };
        let path = sub.path().to_string();
        fn words(
            issues: &mut Vec<ConfigIssue>,
            sub: &mut Table<'_>,
            key: &'static str,
            check: &dyn Fn(&str) -> bool,
            what: &str,
        ) -> Option<Vec<String>> {
            let path = sub.path_of(key);
            let items: Vec<Value> = match sub.get(key) {
                None => return Some(Vec::new()),
                Some(Value::Array(list)) => list.clone(),
                Some(other) => {
                    issues.push(ConfigIssue { path, message: format!("expected a list of {what}, found {other}") });
                    return None;
                }
            };
            let mut out = Vec::new();
            let mut ok = true;
            for (i, item) in items.iter().enumerate() {
                match item.as_str().map(str::trim) {
                    Some(w) if check(w) => out.push(w.trim_end_matches('.').to_ascii_lowercase()),
                    _ => {
                        issues.push(ConfigIssue { path: format!("{path}[{i}]"), message: format!("{item}: expected {what}") });
                        ok = false;
                    }
                }
            }
            ok.then_some(out)
        }
        let is_name = |w: &str| crate::reputation::query_name(crate::reputation::Subject::Domain, w, "zone").is_some() && w.contains('.');
        let is_ip = |w: &str| w.parse::<std::net::IpAddr>().is_ok();
        let dnsbl = words(&mut self.issues, &mut sub, "dnsbl", &is_name, "a DNS zone name (\"zen.spamhaus.org\")");
        let dbl = words(&mut self.issues, &mut sub, "dbl", &is_name, "a DNS zone name (\"dbl.spamhaus.org\")");
        let addresses = words(&mut self.issues, &mut sub, "addresses", &is_ip, "an IP address");
        let domains = words(&mut self.issues, &mut sub, "domains", &is_name, "a domain name");
        let interval = sub.duration(&mut self.issues, "interval", DEFAULT_BLOCKLIST_INTERVAL);
        sub.finish(&mut self.issues);
        let (dnsbl, dbl, addresses, mut domains, interval) = (dnsbl?, dbl?, addresses?, domains?, interval?);
        if dnsbl.is_empty() && dbl.is_empty() {
            self.issue(path, "names no zone: add dnsbl = [\"…\"] or dbl = [\"…\"], or remove the table");
            return None;
        }
        if domains.is_empty() && !from_domain.is_empty() {
            domains.push(from_domain.to_ascii_lowercase());
        }
        let addresses = addresses.iter().filter_map(|a| a.parse().ok()).collect();
        Some(Some(Blocklists { dnsbl, dbl, addresses, domains, interval }))
    }

}

/// Parses `"30s"`, `"2m"`, `"1h 30m"`, `"250ms"`; zero is refused.
pub fn duration_value(v: &Value) -> Result<Duration, String> {
    let Value::String(s) = v else {
        return Err(format!("expected a duration string like \"30s\", found {v}"));
    };
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be greater than zero".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{s:?} is not a duration ({e}); write e.g. \"500ms\", \"30s\", \"2m\"")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(name: &str) -> Option<String> {
        (name == "SMTP_PASS").then(|| "s3cret".to_string())
    }

    fn good() -> Value {
        json!({"check": [{
            "name": "corp", "from": "probe@sender.test", "to": "probe@receiver.test",
            "smtp": {"host": "127.0.0.1", "username": "probe@sender.test", "password_env": "SMTP_PASS"},
            "imap": {"host": "127.0.0.1", "username": "probe@receiver.test", "password": "x"},
            "thresholds": {"smtp.auth": "1s", "rtt": "30s"}
        }]})
    }

    fn issues(v: Value) -> Vec<String> {
        match ProbeConfig::from_value(&v, &env) {
            Ok(_) => vec![],
            Err(issues) => issues.into_iter().map(|i| format!("{}: {}", i.path, i.message)).collect(),
        }
    }

    #[test]
    fn a_good_config_gets_defaults() {
        let c = ProbeConfig::from_value(&good(), &env).unwrap();
        let check = &c.checks[0];
        assert_eq!(check.smtp.endpoint.port, 587);
        assert_eq!(check.smtp.endpoint.security, Security::Starttls);
        assert_eq!(check.imap.endpoint.port, 993);
        assert_eq!(check.imap.mailbox, "INBOX");
        assert_eq!(check.deadline, DEFAULT_DEADLINE);
        assert_eq!(check.smtp.endpoint.credentials.as_ref().unwrap().password().unwrap().expose(), "s3cret");
        assert_eq!(check.thresholds[&ThresholdKey::Step(StepName::SmtpAuth)], Duration::from_secs(1));
        assert_eq!(check.thresholds[&ThresholdKey::Rtt], Duration::from_secs(30));
    }

    #[test]
    fn every_bad_key_is_reported_at_once() {
        let mut v = good();
        let c = &mut v["check"][0];
        c["smtp"]["port"] = json!(70000);
        c["smtp"]["security"] = json!("ssl");
        c["smtp"]["password_env"] = json!("NOPE");
        c["imap"]["colour"] = json!("blue");
        c["deadline"] = json!("soon");
        c["thresholds"]["smtp.nope"] = json!("1s");
        let got = issues(v);
        let paths: Vec<&str> = got.iter().map(|s| s.split(':').next().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "check[0].deadline",
                "check[0].smtp.security",
                "check[0].smtp.port",
                "check[0].smtp.password_env",
                "check[0].imap.colour",
                "check[0].thresholds.\"smtp.nope\"",
            ],
            "{got:#?}"
        );
    }

    #[test]
    fn missing_pieces_are_named() {
        let got = issues(json!({"check": [{"name": "x"}], "extra": 1}));
        assert!(got.contains(&"extra: unknown key (expected [[check]] tables and [dns])".to_string()), "{got:#?}");
        assert!(got.contains(&"check[0].from: required".to_string()), "{got:#?}");
        assert!(got.contains(&"check[0].smtp: required table is missing".to_string()), "{got:#?}");
        assert!(got.contains(&"check[0].imap: required table is missing".to_string()), "{got:#?}");
    }

    #[test]
    fn duplicate_names_and_double_passwords() {
        let mut v = good();
        let second = v["check"][0].clone();
        v["check"].as_array_mut().unwrap().push(second);
        v["check"][1]["imap"]["password_env"] = json!("SMTP_PASS");
        let got = issues(v);
        assert!(got.iter().any(|s| s.starts_with("check[1].name: duplicate")), "{got:#?}");
        assert!(got.iter().any(|s| s.starts_with("check[1].imap.password: set only one")), "{got:#?}");
    }

    #[test]
    fn references_stay_unresolved_for_the_coordinator() {
        let mut v = good()["check"][0].clone();
        v["smtp"]["password_env"] = json!("ONLY_ON_THE_AGENT");
        v["imap"].as_object_mut().unwrap().remove("password");
        v["imap"]["password_file"] = json!("/only/on/the/agent");
        let refs = Secrets::ReferencesOnly { allow_inline: false };
        assert!(check_from_value("api", &v, &|_| None, refs).is_ok());
        // The agent resolves them, and says what is missing.
        let err = check_from_value("assignment", &v, &|_| None, Secrets::Resolve).unwrap_err();
        assert_eq!(err.iter().map(|i| i.path.as_str()).collect::<Vec<_>>(), ["assignment.smtp.password_env", "assignment.imap.password_file"]);
        // Inline passwords are refused by the coordinator unless allowed.
        let inline = good()["check"][0].clone();
        let err = check_from_value("check[0]", &inline, &env, refs).unwrap_err();
        assert_eq!(err[0].path, "check[0].imap.password");
        assert!(check_from_value("check[0]", &inline, &env, Secrets::ReferencesOnly { allow_inline: true }).is_ok());
    }

    #[test]
    fn a_clear_text_login_goes_only_to_loopback_unless_allowed() {
        let plain = |host: &str, allow: Option<bool>| {
            let mut v = good()["check"][0].clone();
            v["smtp"]["host"] = json!(host);
            v["smtp"]["security"] = json!("none");
            if let Some(a) = allow {
                v["smtp"]["allow_plaintext_auth"] = json!(a);
            }
            v
        };
        let err = check_from_value("check[0]", &plain("mail.example.com", None), &env, Secrets::Resolve).unwrap_err();
        assert_eq!(err.len(), 1, "{err:#?}");
        assert_eq!(err[0].path, "check[0].smtp.security");
        assert!(err[0].message.contains("clear text to mail.example.com") && err[0].message.contains("allow_plaintext_auth = true"), "{err:#?}");
        // The coordinator validates checks with the same code.
        let refs = Secrets::ReferencesOnly { allow_inline: true };
        assert_eq!(check_from_value("api", &plain("mail.example.com", Some(false)), &env, refs).unwrap_err()[0].path, "api.smtp.security");
        for host in ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LOCALHOST."] {
            let c = check_from_value("check[0]", &plain(host, None), &env, Secrets::Resolve).unwrap_or_else(|e| panic!("{host}: {e:#?}"));
            assert_eq!(c.smtp.endpoint.plaintext_auth_warning("smtp"), None, "{host}");
        }
        let allowed = check_from_value("check[0]", &plain("mail.example.com", Some(true)), &env, Secrets::Resolve).unwrap();
        assert_eq!(
            allowed.smtp.endpoint.plaintext_auth_warning("smtp").as_deref(),
            Some("smtp: the login goes to mail.example.com:25 in clear text (security = \"none\", allow_plaintext_auth = true)")
        );
        // Without a login there is nothing to protect.
        let mut no_login = plain("mx.example.com", None);
        no_login["smtp"].as_object_mut().unwrap().retain(|k, _| !k.starts_with("user") && !k.starts_with("pass"));
        assert!(check_from_value("check[0]", &no_login, &env, Secrets::Resolve).is_ok());
    }

    #[test]
    fn pins_read_as_hex_or_base64() {
        let hash: [u8; 32] = std::array::from_fn(|i| i as u8 * 7);
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        let colons: Vec<String> = hash.iter().map(|b| format!("{b:02X}")).collect();
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(hash);
        for text in [hex.clone(), colons.join(":"), b64.clone(), format!("sha256//{b64}")] {
            assert_eq!(parse_pin_sha256(&text), Ok(hash), "{text}");
        }
        assert!(parse_pin_sha256(&hex[..62]).unwrap_err().contains("neither 64 hex digits nor base64"));
        assert!(parse_pin_sha256("AAAA").unwrap_err().contains("decodes to 3 bytes"));

        let mut v = good()["check"][0].clone();
        v["imap"]["pin_sha256"] = json!([hex, "nope"]);
        v["smtp"]["pin_sha256"] = json!(b64);
        v["smtp"]["security"] = json!("tls");
        let err = check_from_value("check[0]", &v, &env, Secrets::Resolve).unwrap_err();
        assert_eq!(err.iter().map(|i| i.path.as_str()).collect::<Vec<_>>(), ["check[0].imap.pin_sha256[1]"]);
        v["imap"]["pin_sha256"] = json!([hex]);
        let c = check_from_value("check[0]", &v, &env, Secrets::Resolve).unwrap();
        assert_eq!((c.smtp.endpoint.pin_sha256.clone(), c.imap.endpoint.pin_sha256.clone()), (vec![hash], vec![hash]));
        // Nothing to pin without TLS; and no [check.smtp.tls] table.
        v["smtp"]["security"] = json!("none");
        v["imap"]["tls"] = json!({"pin_sha256": []});
        let err = check_from_value("check[0]", &v, &env, Secrets::Resolve).unwrap_err();
        let got: Vec<String> = err.iter().map(|i| format!("{}: {}", i.path, i.message)).collect();
        assert!(got.iter().any(|s| s.starts_with("check[0].smtp.pin_sha256: set, but security = \"none\"")), "{got:#?}");
        assert!(got.iter().any(|s| s.starts_with("check[0].imap.tls: no tls sub-table here")), "{got:#?}");
    }

    #[test]
    fn blocklists_default_off_and_every_bad_key_named() {
        let c = ProbeConfig::from_value(&good(), &env).unwrap();
        assert_eq!(c.checks[0].blocklists, None);
        let mut v = good();
        v["check"][0]["blocklists"] = json!({"dnsbl": ["zen.spamhaus.org."], "dbl": ["DBL.spamhaus.org"]});
        let b = ProbeConfig::from_value(&v, &env).unwrap().checks[0].blocklists.clone().unwrap();
        assert_eq!(b.dnsbl, ["zen.spamhaus.org"]);
        assert_eq!(b.dbl, ["dbl.spamhaus.org"]);
        assert_eq!(b.domains, ["sender.test"], "from's domain by default");
        assert_eq!((b.addresses.len(), b.interval), (0, DEFAULT_BLOCKLIST_INTERVAL));
        v["check"][0]["blocklists"] =
            json!({"dnsbl": ["zen", "ok.test"], "addresses": ["1.2.3.4", "nope"], "domains": "x.test", "interval": "0s", "dbll": []});
        let got = issues(v.clone());
        for want in [
            "check[0].blocklists.dnsbl[0]: ",
            "check[0].blocklists.addresses[1]: ",
            "check[0].blocklists.domains: ",
            "check[0].blocklists.interval: ",
            "check[0].blocklists.dbll: unknown key",
        ] {
            assert!(got.iter().any(|s| s.starts_with(want)), "{want} in {got:#?}");
        }
        v["check"][0]["blocklists"] = json!({"interval": "1m"});
        assert!(issues(v).iter().any(|s| s.starts_with("check[0].blocklists: names no zone")));
    }

    #[test]
    fn junk_folders_and_probe_body() {
        let c = ProbeConfig::from_value(&good(), &env).unwrap();
        assert_eq!((c.checks[0].imap.junk.clone(), c.checks[0].probe_body), (None, ProbeBody::Normal));
        for (junk, want) in [(json!("Spam"), vec!["Spam"]), (json!(["Junk", "[Gmail]/Spam"]), vec!["Junk", "[Gmail]/Spam"]), (json!(false), vec![])] {
            let mut v = good();
            v["check"][0]["imap"]["junk"] = junk;
            v["check"][0]["probe_body"] = json!("gtube");
            let c = ProbeConfig::from_value(&v, &env).unwrap();
            assert_eq!(c.checks[0].imap.junk, Some(want.iter().map(|s| s.to_string()).collect()));
            assert_eq!(c.checks[0].probe_body, ProbeBody::Gtube);
        }
        let mut v = good();
        v["check"][0]["imap"]["junk"] = json!(["Junk", "a\"b", 3]);
        v["check"][0]["probe_body"] = json!("spammy");
        let got = issues(v);
        assert!(got.iter().any(|s| s.starts_with("check[0].imap.junk[1]: ")), "{got:#?}");
        assert!(got.iter().any(|s| s.starts_with("check[0].imap.junk[2]: ")), "{got:#?}");
        assert!(got.contains(&"check[0].probe_body: \"spammy\": expected \"normal\" or \"gtube\"".to_string()), "{got:#?}");
        let mut v = good();
        v["check"][0]["imap"]["junk"] = json!(true);
        assert!(issues(v).iter().any(|s| s.starts_with("check[0].imap.junk: expected a folder name")));
    }

    #[test]
    fn env_overrides_address_checks_by_name() {
        let mut v = good();
        apply_env_overrides(
            &mut v,
            vec![("MAILLOOP_CHECK__corp__SMTP__PORT".to_string(), "2525".to_string())].into_iter(),
        );
        let c = ProbeConfig::from_value(&v, &env).unwrap();
        assert_eq!(c.checks[0].smtp.endpoint.port, 2525);
    }

    #[test]
    fn section_overrides_set_nested_keys_and_ignore_others() {
        let mut v = json!({"agent": {"region": "eu-west"}});
        let vars = [
            ("MAILLOOP_AGENT__REGION", "us-east"),
            ("MAILLOOP_AGENT__SPOOL_MAX_REPORTS", "5"),
            ("MAILLOOP_AGENT__TLS__VERIFY", "false"),
            ("MAILLOOP_AGENT__", "not applied"),
            ("MAILLOOP_CHECK__corp__SMTP__PORT", "2525"),
        ];
        let o = apply_section_env_overrides(&mut v, "agent", vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        assert_eq!(v, json!({"agent": {"region": "us-east", "spool_max_reports": 5, "tls": {"verify": false}}}));
        assert_eq!(o.applied.iter().find(|(p, _)| p == "agent.tls.verify").map(|(_, var)| var.as_str()), Some("MAILLOOP_AGENT__TLS__VERIFY"));
        assert_eq!(o.issues.len(), 1, "{o:#?}");
        assert_eq!(o.issues[0].path, "MAILLOOP_AGENT__");
    }

    #[test]
    fn an_override_names_its_variable_and_one_for_no_check_is_an_error() {
        let mut v = good();
        let vars = [("MAILLOOP_CHECK__corp__SMTP__PROT", "2525"), ("MAILLOOP_CHECK__crop__SMTP__PORT", "2525")];
        let o = apply_env_overrides(&mut v, vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let got: Vec<String> = o.finish(ProbeConfig::from_value(&v, &env)).unwrap_err().into_iter().map(|i| format!("{}: {}", i.path, i.message)).collect();
        assert_eq!(
            got,
            [
                "check[0].smtp.prot: unknown key (from environment variable MAILLOOP_CHECK__corp__SMTP__PROT)",
                "MAILLOOP_CHECK__crop__SMTP__PORT: environment override for check \"crop\", but no check has that name (checks: corp)",
            ]
        );
        // Alone, the override for no check still fails a config that is otherwise fine.
        let mut v = good();
        let o = apply_env_overrides(&mut v, vars[1..].iter().map(|(k, v)| (k.to_string(), v.to_string())));
        assert_eq!(o.finish(ProbeConfig::from_value(&v, &env)).unwrap_err().len(), 1);
    }

    #[test]
    fn a_misspelt_check_table_is_one_error_with_the_right_spelling() {
        for typo in ["checks", "Check", "chek"] {
            let mut v = good();
            let checks = v.as_object_mut().unwrap().remove("check").unwrap();
            v[typo] = checks;
            assert_eq!(issues(v), [format!("{typo}: unknown key: the table is spelt [[check]] (one per round trip to monitor)")]);
        }
        assert_eq!(issues(json!({"dns": {}})), ["check: no [[check]] defined"]);
        let agent_toml = issues(json!({"agent": {"region": "eu-west"}}));
        assert!(agent_toml[0].starts_with("agent: unknown key: [agent] belongs in agent.toml"), "{agent_toml:?}");
    }

    #[test]
    fn toml_file_with_dotted_threshold_keys_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            r#"
[[check]]
name = "corp"
from = "probe@sender.test"
to = "probe@receiver.test"
deadline = "1m"
[check.smtp]
host = "127.0.0.1"
port = 2587
security = "none"
[check.imap]
host = "127.0.0.1"
username = "probe@receiver.test"
password = "pw"
wait = "poll"
[check.thresholds]
"smtp.auth" = "1s"
rtt = "30s"
"#,
        )
        .unwrap();
        let c = ProbeConfig::load(&path).unwrap();
        let check = &c.checks[0];
        assert_eq!(check.smtp.endpoint.port, 2587);
        assert_eq!(check.smtp.endpoint.security, Security::None);
        assert!(check.smtp.endpoint.credentials.is_none());
        assert_eq!(check.imap.wait, WaitMode::Poll);
        assert_eq!(check.deadline, Duration::from_secs(60));
        assert_eq!(check.thresholds.len(), 2);
    }

    fn oauth2_check(smtp_oauth2: Value, imap_oauth2: Value) -> Value {
        json!({"check": [{
            "name": "m365", "from": "probe@contoso.com", "to": "probe@contoso.com",
            "smtp": {"host": "smtp.office365.com", "username": "probe@contoso.com", "oauth2": smtp_oauth2},
            "imap": {"host": "outlook.office365.com", "username": "probe@contoso.com", "oauth2": imap_oauth2},
        }]})
    }

    #[test]
    fn oauth2_presets_fill_endpoints_and_scopes() {
        let app = json!({"provider": "microsoft", "tenant": "contoso.onmicrosoft.com", "client_id": "app", "client_secret_env": "SMTP_PASS"});
        let delegated = json!({"provider": "microsoft", "tenant": "contoso.onmicrosoft.com", "client_id": "app", "refresh_token_file": "/var/lib/mailloop/m365.token"});
        let c = ProbeConfig::from_value(&oauth2_check(app, delegated), &env).unwrap();
        let smtp = c.checks[0].smtp.endpoint.credentials.as_ref().unwrap().oauth2().unwrap().clone();
        assert_eq!(smtp.token_url, "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token");
        assert_eq!(smtp.scope, "https://outlook.office365.com/.default");
        assert_eq!(smtp.grant, Grant::ClientCredentials);
        assert_eq!(smtp.client_secret.as_ref().unwrap().expose(), "s3cret");
        let imap = c.checks[0].imap.endpoint.credentials.as_ref().unwrap().oauth2().unwrap().clone();
        assert_eq!(imap.scope, "https://outlook.office.com/IMAP.AccessAsUser.All offline_access");
        assert_eq!(imap.grant, Grant::RefreshToken { file: "/var/lib/mailloop/m365.token".into() });
        assert_eq!(imap.device_authorization_url.as_deref(), Some("https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/devicecode"));
        assert!(imap.client_secret.is_none(), "a public client has no secret");

        let google = json!({"provider": "google", "client_id": "x.apps.googleusercontent.com", "client_secret_env": "SMTP_PASS", "refresh_token_file": "/t"});
        let c = ProbeConfig::from_value(&oauth2_check(google.clone(), google), &env).unwrap();
        let g = c.checks[0].imap.endpoint.credentials.as_ref().unwrap().oauth2().unwrap().clone();
        assert_eq!((g.token_url.as_str(), g.scope.as_str()), ("https://oauth2.googleapis.com/token", "https://mail.google.com/"));
    }

    #[test]
    fn every_bad_oauth2_key_is_named_at_once() {
        let smtp = json!({"provider": "microsoft", "client_id": "app", "client_secret": "inline", "grant": "password"});
        let imap = json!({"provider": "google", "client_id": "g", "token_url": "http://idp/token", "tenant": "t", "client_secret_env": "NOPE", "colour": 1});
        let got = issues(oauth2_check(smtp, imap));
        for expected in [
            "check[0].smtp.oauth2.client_secret: an inline client secret",
            "check[0].smtp.oauth2.grant: \"password\": expected",
            "check[0].smtp.oauth2.tenant: required with provider = \"microsoft\"",
            "check[0].imap.oauth2.colour: unknown key",
            "check[0].imap.oauth2.client_secret_env: environment variable NOPE is not set",
            "check[0].imap.oauth2.grant: Google has no client-credentials grant",
            "check[0].imap.oauth2.tenant: only with provider = \"microsoft\"",
            "check[0].imap.oauth2.token_url: \"http://idp/token\": only https://",
        ] {
            assert!(got.iter().any(|g| g.starts_with(expected)), "missing {expected:?} in {got:#?}");
        }
        let both = json!({"check": [{"name": "x", "from": "a@b", "to": "a@b",
            "smtp": {"host": "h", "username": "u", "password": "p", "oauth2": {"token_url": "https://idp/t", "scope": "s", "client_id": "c", "client_secret_env": "SMTP_PASS"}},
            "imap": {"host": "h", "username": "u", "oauth2": {"token_url": "https://idp/t", "client_id": "c", "grant": "refresh_token"}}}]});
        let got = issues(both);
        assert!(got.iter().any(|g| g.starts_with("check[0].smtp.oauth2: set either a password or [oauth2]")), "{got:#?}");
        assert!(got.iter().any(|g| g.starts_with("check[0].imap.oauth2.scope: required without a provider")), "{got:#?}");
        assert!(got.iter().any(|g| g.starts_with("check[0].imap.oauth2.refresh_token_file: required")), "{got:#?}");
    }

    #[test]
    fn oauth2_secrets_stay_references_for_the_coordinator() {
        let side = json!({"token_url": "https://idp.example/token", "scope": "mail", "client_id": "c", "client_secret_env": "ONLY_ON_THE_AGENT"});
        let v = oauth2_check(side.clone(), side);
        let check = check_from_value("assignment", &v["check"][0], &|_: &str| None, Secrets::ReferencesOnly { allow_inline: false }).unwrap();
        assert_eq!(check.imap.endpoint.credentials.unwrap().oauth2().unwrap().client_secret.as_ref().unwrap().expose(), "");
    }
}
