//! `agent.toml`: who this agent is, where its coordinator is, where it spools.
//!
//! Read whole and validated whole, like the probe config: every bad key is
//! collected with its path (`agent.coordinator_url`) and reported at once,
//! before the spool is opened or the coordinator is contacted. Files named
//! here (token, CA, client certificate and key) are read during validation,
//! so an unreadable one is a config error (exit 3), not a failed connection
//! at 3 a.m.
//!
//! ```toml
//! [agent]
//! name = "eu-1"                                      # default: the host name
//! region = "eu-west"                                 # required
//! coordinator_url = "https://coord.example:7443"     # http:// only for loopback or with allow_plaintext
//! # or several replicas, tried in order; on a disconnect the agent fails
//! # over to the next (one of the two keys, not both):
//! # coordinator_urls = ["https://coord-a.example:7443", "https://coord-b.example:7443"]
//! allow_plaintext = false
//! token_file = "/etc/mailloop/agent.token"           # or token_env = "VAR", or token = "..."
//! ca_file = "/etc/mailloop/ca.pem"                   # extra trust root (system roots are always trusted)
//! client_cert = "/etc/mailloop/agent.pem"            # optional mutual TLS (with client_key)
//! client_key = "/etc/mailloop/agent.key"
//! spool = "/var/lib/mailloop-agent/spool.db"              # its directory is created (0700) if missing
//! spool_max_reports = 100000
//! shutdown_grace = "30s"
//! # Open the TCP connection to a check's "host:port" at another address
//! # (curl's --connect-to): NAT, an egress relay, or a test proxy per region.
//! # TLS server name, SNI and the reported endpoint stay the check's.
//! connect_to = ["smtp.example.com:587=10.0.0.5:587", "imap.example.com:993=10.0.0.5:993"]
//! metrics_listen = "127.0.0.1:9464"                  # optional: Prometheus /metrics (plain HTTP)
//!
//! [dns]
//! nameservers = ["127.0.0.53:53"]                    # passed to every check's prober
//!
//! [telemetry]                                        # OTLP traces of every probe; off without an endpoint
//! endpoint = "http://127.0.0.1:4317"                 # OTEL_EXPORTER_OTLP_ENDPOINT wins over it
//! protocol = "grpc"                                  # or "http/protobuf" (OTEL_EXPORTER_OTLP_PROTOCOL)
//! service_name = "mailloop-agent"                    # OTEL_SERVICE_NAME
//! headers = { "x-api-key" = "..." }                  # OTEL_EXPORTER_OTLP_HEADERS adds to these
//! resource_attributes = { "deployment.environment" = "prod" }   # OTEL_RESOURCE_ATTRIBUTES
//! ```
//!
//! Every `[agent]` key can be set from the environment instead, which wins
//! over the file: `MAILLOOP_AGENT__<KEY>`, e.g. `MAILLOOP_AGENT__REGION=eu-west`
//! or `MAILLOOP_AGENT__TOKEN_ENV=MY_TOKEN` (a whole number or `true`/`false`
//! is read as such; lists such as `connect_to` only from the file).

use crate::telemetry::TelemetryConfig;
use crate::transport::{ConnectRule, ConnectTo};
use mailloop_common::Secret;
use mailloop_common::config::{ConfigError, ConfigIssue, DnsConfig, Table, apply_section_env_overrides};
use serde_json::{Map, Value};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the spool lives unless `spool` says otherwise.
pub const DEFAULT_SPOOL: &str = "/var/lib/mailloop-agent/spool.db";
/// Unacknowledged reports kept before the oldest are dropped.
pub const DEFAULT_SPOOL_MAX_REPORTS: u64 = 100_000;
/// Upper bound of `spool_max_reports` (a report is a few KiB).
pub const MAX_SPOOL_MAX_REPORTS: u64 = 10_000_000;
/// How long in-flight probes may run on after SIGTERM.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// A validated `agent.toml`.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Stable name of this agent (its host name unless set).
    pub name: String,
    pub region: String,
    pub coordinator: CoordinatorConfig,
    pub spool: PathBuf,
    pub spool_max_reports: u64,
    pub shutdown_grace: Duration,
    /// Handed to every check's prober (SPF walk, own DKIM check).
    pub dns: DnsConfig,
    /// Per-agent connection overrides, handed to every check's prober.
    pub connect_to: ConnectTo,
    /// `/metrics` (plain HTTP) on this address; None: no metrics listener.
    pub metrics_listen: Option<SocketAddr>,
    /// `[telemetry]` with the `OTEL_*` environment applied.
    pub telemetry: TelemetryConfig,
}

/// How to reach and authenticate to the coordinator.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Where the coordinator replicas listen, in the order they are tried
    /// (`coordinator_urls`, or the one `coordinator_url`); never empty.
    pub urls: Vec<CoordinatorUrl>,
    /// True for `https://` (every URL has the same scheme).
    pub tls: bool,
    /// Sent as `authorization: Bearer <token>` on every call.
    pub token: Secret,
    /// PEM of `ca_file`: trusted on top of the system roots.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM certificate chain and key for mutual TLS.
    pub identity: Option<ClientIdentity>,
}

/// One coordinator replica's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordinatorUrl {
    /// `https://host:port` (or `http://` on loopback / with `allow_plaintext`).
    pub url: String,
    /// The host part of `url`: the TLS server name, and for logs.
    pub host: String,
}

/// A client certificate and its private key (PEM).
#[derive(Clone)]
pub struct ClientIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientIdentity { cert_pem: .., key_pem: <redacted> }")
    }
}

impl AgentConfig {
    /// Reads `path` (TOML), applies `MAILLOOP_AGENT__<KEY>` environment
    /// overrides, and validates it whole.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let shown = path.display().to_string();
        let unreadable = |message: String| ConfigError::Unreadable { path: shown.clone(), message };
        if !path.exists() {
            return Err(unreadable("no such file".into()));
        }
        let built = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .build()
            .map_err(|e| unreadable(e.to_string()))?;
        let mut raw: Value = built.try_deserialize().map_err(|e| unreadable(e.to_string()))?;
        let overrides = apply_section_env_overrides(&mut raw, "agent", std::env::vars());
        overrides
            .finish(Self::from_value(&raw, &|name| std::env::var(name).ok()))
            .map_err(|issues| ConfigError::Invalid { path: shown, issues })
    }

    /// Whether `path` reads as an agent.toml (it has an `[agent]` table)
    /// rather than a probe config; false when it does not parse (the
    /// probe loader then says why).
    pub fn is_agent_file(path: &Path) -> bool {
        let raw = config::Config::builder().add_source(config::File::from(path).format(config::FileFormat::Toml)).build();
        raw.ok().and_then(|c| c.try_deserialize::<Value>().ok()).is_some_and(|v| v.get("agent").is_some())
    }

    /// Validates an already-parsed tree. `env` looks up `token_env` (a
    /// parameter, so tests need not touch the process environment).
    pub fn from_value(raw: &Value, env: &dyn Fn(&str) -> Option<String>) -> Result<AgentConfig, Vec<ConfigIssue>> {
        let mut v = Validator { issues: Vec::new(), env };
        let config = v.root(raw);
        match config {
            Some(c) if v.issues.is_empty() => Ok(c),
            _ => Err(v.issues),
        }
    }
}

struct Validator<'e> {
    issues: Vec<ConfigIssue>,
    env: &'e dyn Fn(&str) -> Option<String>,
}

impl Validator<'_> {
    fn issue(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.issues.push(ConfigIssue { path: path.into(), message: message.into() });
    }

    fn root(&mut self, raw: &Value) -> Option<AgentConfig> {
        let Some(root) = raw.as_object() else {
            self.issue("(root)", "expected a table");
            return None;
        };
        for key in root.keys() {
            if key == "check" {
                self.issue(key.clone(), "unknown key: an agent takes its checks from the coordinator (put [[check]] in coordinator.toml; `mailloop-agent probe` reads a file of them)");
            } else if key != "agent" && key != "dns" && key != "telemetry" {
                self.issue(key.clone(), "unknown key (expected [agent], [dns] and [telemetry])");
            }
        }
        let agent = match root.get("agent") {
            Some(Value::Object(map)) => Some(map),
            Some(_) => {
                self.issue("agent", "expected a table: write [agent]");
                None
            }
            None => {
                self.issue("agent", "required table is missing ([agent] with at least region, coordinator_url and a token)");
                None
            }
        };
        let dns = self.dns(root.get("dns"));
        let telemetry = self.telemetry(root.get("telemetry"));
        let agent = self.agent(agent?);
        Some(AgentConfig { dns: dns?, telemetry: telemetry?, ..agent? })
    }

    fn agent(&mut self, map: &Map<String, Value>) -> Option<AgentConfig> {
        let mut t = Table::new("agent", map);
        let name = match t.string(&mut self.issues, "name") {
            Some(Some(n)) => self.label(&t, "name", n),
            Some(None) => Some(host_name()),
            None => None,
        };
        let region = match t.string(&mut self.issues, "region") {
            Some(Some(r)) => self.label(&t, "region", r),
            Some(None) => {
                self.issue("agent.region", "required: the region this agent probes from (e.g. \"eu-west\")");
                None
            }
            None => None,
        };
        let allow_plaintext = t.flag(&mut self.issues, "allow_plaintext", false);
        let urls = self.coordinator_urls(&mut t, allow_plaintext.unwrap_or(false));
        let tls = urls.as_ref().map(|(_, tls)| *tls);
        let token = self.token(&mut t);
        let ca_pem = self.pem_file(&mut t, "ca_file", "CERTIFICATE", tls);
        let identity = self.identity(&mut t, tls);
        let spool = self.spool(&mut t);
        let spool_max_reports = t.number(&mut self.issues, "spool_max_reports", DEFAULT_SPOOL_MAX_REPORTS, 1..=MAX_SPOOL_MAX_REPORTS);
        let shutdown_grace = t.duration_or_zero(&mut self.issues, "shutdown_grace", DEFAULT_SHUTDOWN_GRACE);
        let connect_to = self.connect_to(&mut t);
        let metrics_listen = self.metrics_listen(&mut t, allow_plaintext.unwrap_or(false));
        t.finish(&mut self.issues);
        let (urls, tls) = urls?;
        Some(AgentConfig {
            name: name?,
            region: region?,
            coordinator: CoordinatorConfig { urls, tls, token: token?, ca_pem: ca_pem?, identity: identity? },
            spool: spool?,
            spool_max_reports: spool_max_reports?,
            shutdown_grace: shutdown_grace?,
            dns: DnsConfig::default(),
            connect_to: connect_to?,
            metrics_listen: metrics_listen?,
            telemetry: TelemetryConfig::default(),
        })
    }

    /// `metrics_listen = "127.0.0.1:9464"`: plain HTTP, so off loopback only with `allow_plaintext`.
    fn metrics_listen(&mut self, t: &mut Table<'_>, allow_plaintext: bool) -> Option<Option<SocketAddr>> {
        let Some(text) = t.string(&mut self.issues, "metrics_listen")? else { return Some(None) };
        match text.parse::<SocketAddr>() {
            Ok(a) if !a.ip().is_loopback() && !allow_plaintext => {
                self.issue("agent.metrics_listen", format!("{a} is not a loopback address and /metrics is plain HTTP: set allow_plaintext = true to serve it there"));
                None
            }
            Ok(a) => Some(Some(a)),
            Err(_) => {
                self.issue("agent.metrics_listen", format!("{text:?} is not ip:port (e.g. \"127.0.0.1:9464\")"));
                None
            }
        }
    }

    /// `[telemetry]`, then the standard `OTEL_*` variables over it.
    fn telemetry(&mut self, value: Option<&Value>) -> Option<TelemetryConfig> {
        TelemetryConfig::parse(value, self.env, &mut self.issues)
    }

    /// `connect_to = ["host:port=host:port", ...]`: each rule checked, every
    /// bad one reported; a second rule for the same address is refused
    /// (only the first could ever apply).
    fn connect_to(&mut self, t: &mut Table<'_>) -> Option<ConnectTo> {
        let list = match t.get("connect_to") {
            None => return Some(ConnectTo::default()),
            Some(Value::Array(list)) => list,
            Some(other) => {
                self.issue("agent.connect_to", format!("expected a list of \"host:port=host:port\" strings, found {other}"));
                return None;
            }
        };
        let mut rules: Vec<ConnectRule> = Vec::new();
        let mut ok = true;
        for (i, item) in list.iter().enumerate() {
            let path = format!("agent.connect_to[{i}]");
            let parsed = match item {
                Value::String(s) => s.parse::<ConnectRule>(),
                other => Err(format!("expected a \"host:port=host:port\" string, found {other}")),
            };
            match parsed {
                Ok(r) if rules.iter().any(|seen| seen.from.port == r.from.port && seen.from.host.eq_ignore_ascii_case(&r.from.host)) => {
                    self.issue(path, format!("{} is already redirected by an earlier rule", r.from));
                    ok = false;
                }
                Ok(r) => rules.push(r),
                Err(m) => {
                    self.issue(path, m);
                    ok = false;
                }
            }
        }
        ok.then(|| ConnectTo::new(rules))
    }

    /// Names that go into logs, metrics labels and the coordinator's tables.
    fn label(&mut self, t: &Table<'_>, key: &str, value: String) -> Option<String> {
        if value.len() <= 128 && value.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            Some(value)
        } else {
            self.issue(t.path_of(key), format!("{value:?}: use up to 128 letters, digits, '-', '_' or '.'"));
            None
        }
    }

    /// `coordinator_url` or `coordinator_urls` (exactly one): every URL
    /// checked, and whether they are TLS (one scheme for all of them).
    fn coordinator_urls(&mut self, t: &mut Table<'_>, allow_plaintext: bool) -> Option<(Vec<CoordinatorUrl>, bool)> {
        let one = t.string(&mut self.issues, "coordinator_url");
        let list = t.get("coordinator_urls").cloned();
        let one = one?;
        let items: Vec<(String, Value)> = match (one, list) {
            (Some(_), Some(_)) => {
                self.issue("agent.coordinator_urls", "set only one of coordinator_url and coordinator_urls");
                return None;
            }
            (None, None) => {
                self.issue(
                    "agent.coordinator_url",
                    "required: where the coordinator listens, e.g. \"https://coord.example:7443\" (or coordinator_urls = [...] for several replicas)",
                );
                return None;
            }
            (Some(url), None) => vec![("agent.coordinator_url".to_string(), Value::String(url))],
            (None, Some(Value::Array(items))) if !items.is_empty() => {
                items.into_iter().enumerate().map(|(i, item)| (format!("agent.coordinator_urls[{i}]"), item)).collect()
            }
            (None, Some(other)) => {
                self.issue("agent.coordinator_urls", format!("expected a non-empty list of URLs, found {other}"));
                return None;
            }
        };
        let mut urls: Vec<CoordinatorUrl> = Vec::new();
        let mut schemes = Vec::new();
        let mut ok = true;
        for (path, item) in items {
            let parsed = match &item {
                Value::String(url) => self.coordinator_url(&path, url, allow_plaintext),
                other => {
                    self.issue(&path, format!("expected a URL string, found {other}"));
                    None
                }
            };
            match parsed {
                Some((u, _)) if urls.contains(&u) => {
                    self.issue(path, format!("{:?} is listed twice", u.url));
                    ok = false;
                }
                Some((u, tls)) => {
                    urls.push(u);
                    schemes.push(tls);
                }
                None => ok = false,
            }
        }
        if !ok {
            return None;
        }
        let tls = schemes[0];
        if schemes.iter().any(|s| *s != tls) {
            self.issue("agent.coordinator_urls", "mixes https:// and http://: give every replica the same scheme (the token and TLS settings are shared)");
            return None;
        }
        Some((urls, tls))
    }

    /// One URL (at `path`), its host, and whether it is TLS.
    fn coordinator_url(&mut self, path: &str, url: &str, allow_plaintext: bool) -> Option<(CoordinatorUrl, bool)> {
        let Ok(uri) = url.parse::<tonic::transport::Uri>() else {
            self.issue(path, format!("{url:?} is not a URL; write e.g. \"https://coord.example:7443\""));
            return None;
        };
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                self.issue(path, format!("{url:?}: use https:// (or http:// on loopback)"));
                return None;
            }
        };
        let Some(host) = uri.host().filter(|h| !h.is_empty()) else {
            self.issue(path, format!("{url:?} names no host"));
            return None;
        };
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            self.issue(path, format!("{url:?}: give only scheme, host and port (no path)"));
            return None;
        }
        if !tls && !allow_plaintext && !is_loopback(host) {
            self.issue(
                path,
                format!("{url:?}: plaintext http:// sends the agent token unencrypted; it is allowed only for loopback hosts or with allow_plaintext = true"),
            );
            return None;
        }
        let url = CoordinatorUrl { url: url.trim_end_matches('/').to_string(), host: host.trim_matches(['[', ']']).to_string() };
        Some((url, tls))
    }

    /// Exactly one of `token`, `token_file`, `token_env`.
    fn token(&mut self, t: &mut Table<'_>) -> Option<Secret> {
        let inline = t.string(&mut self.issues, "token");
        let file = t.string(&mut self.issues, "token_file");
        let env = t.string(&mut self.issues, "token_env");
        let (inline, file, env) = (inline?, file?, env?);
        let given = [inline.is_some(), file.is_some(), env.is_some()].iter().filter(|b| **b).count();
        let (key, value) = match (inline, file, env) {
            _ if given > 1 => {
                self.issue("agent.token", "set only one of token, token_file, token_env");
                return None;
            }
            (Some(v), _, _) => ("token", v),
            (_, Some(f), _) => match std::fs::read_to_string(&f) {
                Ok(v) => ("token_file", v.trim().to_string()),
                Err(e) => {
                    self.issue("agent.token_file", format!("cannot read {f}: {e}"));
                    return None;
                }
            },
            (_, _, Some(var)) => match (self.env)(&var) {
                Some(v) => ("token_env", v.trim().to_string()),
                None => {
                    self.issue("agent.token_env", format!("environment variable {var} is not set"));
                    return None;
                }
            },
            (None, None, None) => {
                self.issue("agent.token", "required: set token_file, token_env or token (the agent's coordinator token)");
                return None;
            }
        };
        if value.is_empty() {
            self.issue(format!("agent.{key}"), "the token is empty");
            None
        } else if !value.bytes().all(|b| b.is_ascii_graphic()) {
            self.issue(format!("agent.{key}"), "the token must be printable ASCII without spaces (it goes into an HTTP header)");
            None
        } else {
            Some(Secret::new(value))
        }
    }

    /// A PEM file holding at least one `label` block. `tls`: whether the URL
    /// is https (None when the URL is bad).
    fn pem_file(&mut self, t: &mut Table<'_>, key: &'static str, label: &str, tls: Option<bool>) -> Option<Option<Vec<u8>>> {
        let Some(file) = t.string(&mut self.issues, key)? else { return Some(None) };
        let path = format!("agent.{key}");
        if tls == Some(false) {
            self.issue(path, "set, but coordinator_url is http:// (no TLS)");
            return None;
        }
        let pem = match std::fs::read(&file) {
            Ok(pem) if contains_pem(&pem, label) => pem,
            Ok(pem) => {
                let found = if contains_pem(&pem, "PRIVATE KEY") {
                    " (it holds a private key)"
                } else if contains_pem(&pem, "CERTIFICATE") {
                    " (it holds a certificate)"
                } else {
                    ""
                };
                self.issue(path, format!("{file} holds no PEM {label}{found}"));
                return None;
            }
            Err(e) => {
                self.issue(path, format!("cannot read {file}: {e}"));
                return None;
            }
        };
        // The trust roots are loaded by the probe's own loader: a PEM block
        // that is not a usable certificate fails here, not at connect time.
        if key == "ca_file" {
            if let Err(e) = crate::tls::TlsClient::new(Some(Path::new(&file)), &[]) {
                self.issue(path, e);
                return None;
            }
        }
        Some(Some(pem))
    }

    fn identity(&mut self, t: &mut Table<'_>, tls: Option<bool>) -> Option<Option<ClientIdentity>> {
        let cert = self.pem_file(t, "client_cert", "CERTIFICATE", tls);
        let key = self.pem_file(t, "client_key", "PRIVATE KEY", tls);
        match (cert?, key?) {
            (Some(cert_pem), Some(key_pem)) => match check_identity(&cert_pem, &key_pem) {
                Ok(()) => Some(Some(ClientIdentity { cert_pem, key_pem })),
                Err((key, message)) => {
                    self.issue(format!("agent.{key}"), message);
                    None
                }
            },
            (None, None) => Some(None),
            (Some(_), None) => {
                self.issue("agent.client_key", "required with client_cert (mutual TLS needs both)");
                None
            }
            (None, Some(_)) => {
                self.issue("agent.client_cert", "required with client_key (mutual TLS needs both)");
                None
            }
        }
    }

    fn spool(&mut self, t: &mut Table<'_>) -> Option<PathBuf> {
        let path = PathBuf::from(t.string(&mut self.issues, "spool")?.unwrap_or_else(|| DEFAULT_SPOOL.to_string()));
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        // A missing directory is created at start (mode 0700); something
        // else in its place is a mistake to name now.
        match dir.ancestors().find(|a| a.exists()) {
            Some(a) if !a.is_dir() => {
                self.issue("agent.spool", format!("{} is not a directory, so the spool cannot live under it", a.display()));
                None
            }
            _ if path.is_dir() => {
                self.issue("agent.spool", format!("{} is a directory: name the database file in it, e.g. {}", path.display(), path.join("spool.db").display()));
                None
            }
            _ => Some(path),
        }
    }

    fn dns(&mut self, v: Option<&Value>) -> Option<DnsConfig> {
        let map = match v {
            None => return Some(DnsConfig::default()),
            Some(Value::Object(map)) => map,
            Some(_) => {
                self.issue("dns", "expected a table: write [dns]");
                return None;
            }
        };
        let mut t = Table::new("dns", map);
        let mut out = DnsConfig::default();
        let mut ok = true;
        match t.get("nameservers") {
            None => {}
            Some(Value::Array(list)) => {
                for (i, item) in list.iter().enumerate() {
                    let text = item.as_str().unwrap_or_default();
                    let parsed = text.parse::<SocketAddr>().or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)));
                    match parsed {
                        Ok(a) => out.nameservers.push(a),
                        Err(_) => {
                            self.issue(format!("dns.nameservers[{i}]"), format!("{item} is not an address (\"127.0.0.53\" or \"127.0.0.53:53\")"));
                            ok = false;
                        }
                    }
                }
            }
            Some(other) => {
                self.issue("dns.nameservers", format!("expected a list of addresses, found {other}"));
                ok = false;
            }
        }
        if !t.finish(&mut self.issues) {
            ok = false;
        }
        ok.then_some(out)
    }
}

/// Loopback: `localhost`, 127.0.0.0/8, `::1`.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_matches(['[', ']']);
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn contains_pem(pem: &[u8], label: &str) -> bool {
    let text = String::from_utf8_lossy(pem);
    // "PRIVATE KEY" also matches "RSA PRIVATE KEY" and "EC PRIVATE KEY".
    text.lines().any(|l| l.starts_with("-----BEGIN ") && l.ends_with(&format!("{label}-----")))
}

/// The client certificate and key as the TLS stack will use them: every
/// certificate is X.509, the key parses, and it is the certificate's key
/// (rustls checks the pair). `Err` names the key at fault.
fn check_identity(cert_pem: &[u8], key_pem: &[u8]) -> Result<(), (&'static str, String)> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ("client_cert", format!("bad PEM: {e}")))?;
    for (i, c) in certs.iter().enumerate() {
        if let Err(e) = x509_parser::parse_x509_certificate(c) {
            return Err(("client_cert", format!("certificate {} is not X.509: {e}", i + 1)));
        }
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| ("client_key", format!("no usable private key (PKCS#8, RSA or EC PEM): {e}")))?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ("client_key", e.to_string()))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_client_auth_cert(certs, key)
        .map_err(|e| ("client_key", format!("does not fit client_cert: {e}")))?;
    Ok(())
}

/// The machine's host name (the agent's default name).
fn host_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name = name.trim();
    if name.is_empty() { "mailloop-agent".to_string() } else { name.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(name: &str) -> Option<String> {
        (name == "AGENT_TOKEN").then(|| "t0ken".to_string())
    }

    fn load(v: Value) -> Result<AgentConfig, Vec<String>> {
        AgentConfig::from_value(&v, &env).map_err(|issues| issues.into_iter().map(|i| format!("{}: {}", i.path, i.message)).collect())
    }

    fn good() -> Value {
        json!({"agent": {"region": "eu-west", "coordinator_url": "https://coord.example:7443", "token_env": "AGENT_TOKEN", "spool": "/tmp/spool.db"}})
    }

    fn with(key: &str, value: Value) -> Value {
        let mut v = good();
        v["agent"][key] = value;
        v
    }

    fn issue_of(v: Value) -> String {
        let issues = load(v).expect_err("the config should be refused");
        assert_eq!(issues.len(), 1, "{issues:#?}");
        issues[0].clone()
    }

    #[test]
    fn a_minimal_config_gets_defaults() {
        let c = load(good()).unwrap();
        assert_eq!(c.region, "eu-west");
        assert!(!c.name.is_empty());
        assert_eq!(c.coordinator.urls, [CoordinatorUrl { url: "https://coord.example:7443".into(), host: "coord.example".into() }]);
        assert!(c.coordinator.tls);
        assert_eq!(c.coordinator.token.expose(), "t0ken");
        assert_eq!(c.spool_max_reports, DEFAULT_SPOOL_MAX_REPORTS);
        assert_eq!(c.shutdown_grace, DEFAULT_SHUTDOWN_GRACE);
        assert!(c.dns.nameservers.is_empty());
        assert!(!format!("{c:?}").contains("t0ken"), "the token never shows in Debug");
    }

    #[test]
    fn plaintext_is_for_loopback_or_when_allowed() {
        for url in ["http://127.0.0.1:7000", "http://127.9.8.7:7000", "http://localhost:7000", "http://[::1]:7000"] {
            assert!(load(with("coordinator_url", json!(url))).is_ok(), "{url}");
        }
        assert!(issue_of(with("coordinator_url", json!("http://coord.example:7000"))).starts_with("agent.coordinator_url: "));
        let mut allowed = with("coordinator_url", json!("http://coord.example:7000"));
        allowed["agent"]["allow_plaintext"] = json!(true);
        assert!(!load(allowed).unwrap().coordinator.tls);
    }

    #[test]
    fn several_coordinator_urls_in_order_and_exactly_one_of_the_two_keys() {
        let mut v = good();
        v["agent"].as_object_mut().unwrap().remove("coordinator_url");
        v["agent"]["coordinator_urls"] = json!(["https://a.example:7443", "https://b.example:7443/"]);
        let c = load(v.clone()).unwrap();
        let urls: Vec<(&str, &str)> = c.coordinator.urls.iter().map(|u| (u.url.as_str(), u.host.as_str())).collect();
        assert_eq!(urls, [("https://a.example:7443", "a.example"), ("https://b.example:7443", "b.example")]);
        assert!(c.coordinator.tls);

        let mut both = v.clone();
        both["agent"]["coordinator_url"] = json!("https://a.example:7443");
        assert_eq!(issue_of(both), "agent.coordinator_urls: set only one of coordinator_url and coordinator_urls");
        let mut neither = v.clone();
        neither["agent"].as_object_mut().unwrap().remove("coordinator_urls");
        assert!(issue_of(neither).starts_with("agent.coordinator_url: required"));
        let mut empty = v.clone();
        empty["agent"]["coordinator_urls"] = json!([]);
        assert!(issue_of(empty).starts_with("agent.coordinator_urls: expected a non-empty list"));
        let mut mixed = v.clone();
        mixed["agent"]["coordinator_urls"] = json!(["https://a.example:7443", "http://127.0.0.1:7000"]);
        assert!(issue_of(mixed).starts_with("agent.coordinator_urls: mixes https:// and http://"));

        // Every bad entry is named, each by its index.
        let mut bad = v;
        bad["agent"]["coordinator_urls"] = json!(["ftp://a", "https://b.example:1", 7, "https://b.example:1", "http://c.example:2"]);
        let issues = load(bad).unwrap_err();
        let paths: Vec<&str> = issues.iter().map(|s| s.split(':').next().unwrap()).collect();
        assert_eq!(paths, ["agent.coordinator_urls[0]", "agent.coordinator_urls[2]", "agent.coordinator_urls[3]", "agent.coordinator_urls[4]"], "{issues:#?}");
    }

    #[test]
    fn exactly_one_token_source() {
        let mut two = with("token", json!("abc"));
        two["agent"]["token_env"] = json!("AGENT_TOKEN");
        assert_eq!(issue_of(two), "agent.token: set only one of token, token_file, token_env");
        let mut none = good();
        none["agent"].as_object_mut().unwrap().remove("token_env");
        assert!(issue_of(none).starts_with("agent.token: required"));
        assert_eq!(issue_of(with("token_env", json!("NOPE"))), "agent.token_env: environment variable NOPE is not set");
        let mut spaced = with("token", json!("two words"));
        spaced["agent"].as_object_mut().unwrap().remove("token_env");
        assert!(issue_of(spaced).starts_with("agent.token: the token must be printable ASCII"));
    }

    #[test]
    fn every_bad_key_is_reported_at_once() {
        let v = json!({
            "agent": {
                "name": "eu 1", "coordinator_url": "ftp://coord", "token_file": "/nonexistent/token",
                "ca_file": "/nonexistent/ca.pem", "client_cert": "/nonexistent/cert.pem",
                "spool": "/proc/version/spool.db", "spool_max_reports": 0, "shutdown_grace": "soon", "colour": "blue"
            },
            "dns": {"nameservers": ["not-an-ip"]},
            "checks": []
        });
        let issues = load(v).unwrap_err();
        let paths: Vec<&str> = issues.iter().map(|s| s.split(':').next().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "checks",
                "dns.nameservers[0]",
                "agent.name",
                "agent.region",
                "agent.coordinator_url",
                "agent.token_file",
                "agent.ca_file",
                "agent.client_cert",
                "agent.spool",
                "agent.spool_max_reports",
                "agent.shutdown_grace",
                "agent.colour",
            ],
            "{issues:#?}"
        );
    }

    #[test]
    fn tls_files_need_https() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = rcgen::CertificateParams::new(vec!["test CA".to_string()]).unwrap().self_signed(&ca_key).unwrap();
        std::fs::write(&ca, ca_cert.pem()).unwrap();
        let mut v = with("ca_file", json!(ca));
        assert!(load(v.clone()).unwrap().coordinator.ca_pem.is_some());
        v["agent"]["coordinator_url"] = json!("http://127.0.0.1:7000");
        assert_eq!(issue_of(v), "agent.ca_file: set, but coordinator_url is http:// (no TLS)");
        let not_pem = dir.path().join("empty.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        assert!(issue_of(with("ca_file", json!(not_pem))).ends_with("holds no PEM CERTIFICATE"));
        assert_eq!(issue_of(with("client_cert", json!(ca))), "agent.client_key: required with client_cert (mutual TLS needs both)");
    }

    #[test]
    fn tls_material_is_parsed_as_the_connection_would_and_each_bad_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["agent".to_string()]).unwrap().self_signed(&key).unwrap();
        let other_key = rcgen::KeyPair::generate().unwrap();
        let (cert_pem, key_pem) = (write("agent.pem", &cert.pem()), write("agent.key", &key.serialize_pem()));
        let garbage = write("garbage.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");

        let mut good_pair = with("client_cert", json!(cert_pem));
        good_pair["agent"]["client_key"] = json!(key_pem);
        assert!(load(good_pair).unwrap().coordinator.identity.is_some());

        let key_as_ca = issue_of(with("ca_file", json!(key_pem)));
        assert!(key_as_ca.starts_with("agent.ca_file: ") && key_as_ca.contains("private key"), "{key_as_ca}");
        let garbage_ca = issue_of(with("ca_file", json!(garbage)));
        assert!(garbage_ca.starts_with("agent.ca_file: ") && garbage_ca.contains(&garbage.display().to_string()), "{garbage_ca}");

        let mut garbage_cert = with("client_cert", json!(garbage));
        garbage_cert["agent"]["client_key"] = json!(key_pem);
        assert!(issue_of(garbage_cert).starts_with("agent.client_cert: certificate 1 is not X.509"));
        let mut wrong_key = with("client_cert", json!(cert_pem));
        wrong_key["agent"]["client_key"] = json!(write("other.key", &other_key.serialize_pem()));
        assert!(issue_of(wrong_key).starts_with("agent.client_key: does not fit client_cert"));
    }

    #[test]
    fn connect_to_redirects_per_agent_and_every_bad_rule_is_named() {
        assert!(load(good()).unwrap().connect_to.is_empty());
        let c = load(with("connect_to", json!(["smtp.example:587=127.0.0.1:40001", "[::1]:993=127.0.0.1:40002"]))).unwrap();
        assert_eq!(c.connect_to.rules().len(), 2);
        assert_eq!(c.connect_to.target("smtp.example", 587).map(|t| t.to_string()), Some("127.0.0.1:40001".into()));
        let issues = load(with(
            "connect_to",
            json!(["smtp.example:587=127.0.0.1:1", "smtp.example:587", 5, "SMTP.example:587=127.0.0.1:2", "a:1=b:0"]),
        ))
        .unwrap_err();
        let paths: Vec<&str> = issues.iter().map(|s| s.split(':').next().unwrap()).collect();
        assert_eq!(paths, ["agent.connect_to[1]", "agent.connect_to[2]", "agent.connect_to[3]", "agent.connect_to[4]"], "{issues:#?}");
        assert!(issue_of(with("connect_to", json!("a:1=b:2"))).starts_with("agent.connect_to: expected a list"));
    }

    #[test]
    fn environment_overrides_win_over_the_file_and_are_validated_alike() {
        let mut v = good();
        let vars = [
            ("MAILLOOP_AGENT__REGION", "us-east"),
            ("MAILLOOP_AGENT__SPOOL_MAX_REPORTS", "500"),
            ("MAILLOOP_AGENT__SHUTDOWN_GRACE", "0s"),
            ("MAILLOOP_CHECK__corp__SMTP__PORT", "2525"),
        ];
        apply_section_env_overrides(&mut v, "agent", vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let c = load(v).unwrap();
        assert_eq!((c.region.as_str(), c.spool_max_reports, c.shutdown_grace), ("us-east", 500, Duration::ZERO));
        let mut bad = good();
        let vars = [("MAILLOOP_AGENT__ALLOW_PLAINTEXT", "yes"), ("MAILLOOP_AGENT__COLOUR", "blue")];
        let o = apply_section_env_overrides(&mut bad, "agent", vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let issues = o.finish(AgentConfig::from_value(&bad, &env)).unwrap_err();
        assert_eq!(
            issues.iter().map(|i| format!("{}: {}", i.path, i.message)).collect::<Vec<_>>(),
            [
                "agent.allow_plaintext: expected true or false, found \"yes\" (from environment variable MAILLOOP_AGENT__ALLOW_PLAINTEXT)",
                "agent.colour: unknown key (from environment variable MAILLOOP_AGENT__COLOUR)"
            ]
        );
    }

    #[test]
    fn zero_grace_is_allowed() {
        assert_eq!(load(with("shutdown_grace", json!("0s"))).unwrap().shutdown_grace, Duration::ZERO);
    }
}
