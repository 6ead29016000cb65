//! `coordinator.toml`: `[server]`, `[[agent]]` and `[[check]]`, validated whole.
//!
//! Like the probe's config, the file is read whole and every bad key is
//! collected with its path (`server.tls_key`, `agent[1].token_file`,
//! `check[0].smtp.port`) before anything is opened or bound. A `[[check]]`
//! is the probe's schema (validated by `mailloop_common::config`, with
//! passwords kept as references) plus the coordinator's own `interval` and
//! `regions`; [`check_spec`] is also what the admin API uses, so a check
//! given through the API obeys exactly the same rules as one in the file.

pub mod names;
pub mod status;
pub mod storage;
pub mod tokens;

use mailloop_common::Secret;
use mailloop_common::config::{
    ConfigError, ConfigIssue, IssueList, Secrets, Table, apply_env_overrides, check_from_value,
    duration_value,
};
pub use names::{hex, is_name, token_sha256};
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
pub use tokens::{Role, TokenDecl};

/// Default gRPC listen address (agents).
pub const DEFAULT_GRPC_LISTEN: &str = "127.0.0.1:7443";
/// Default admin HTTP listen address.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:7480";
/// Default check interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);
/// Recommended (and, outside `test_mode`, enforced) shortest interval.
pub const MIN_INTERVAL: Duration = Duration::from_secs(30);
/// Shortest interval with `test_mode = true`.
pub const MIN_TEST_INTERVAL: Duration = Duration::from_secs(1);
/// Longest interval.
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// Default report retention.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 86_400);
/// Shortest default retention of verdicts: the public status page's
/// 90-day uptime bar and figures are counted from them.
pub const DEFAULT_VERDICT_RETENTION: Duration = Duration::from_secs(90 * 86_400);
/// Default retention of the hourly aggregates: a year and a month, so a
/// year-over-year graph always has its first month.
pub const DEFAULT_AGGREGATE_RETENTION: Duration = Duration::from_secs(400 * 86_400);
/// Default heartbeat period handed to agents.
/// How long a join token of `agents add` lasts unless `join_token_ttl` says otherwise.
pub const DEFAULT_JOIN_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Longest join token lifetime (config or per request).
pub const MAX_JOIN_TOKEN_TTL: Duration = Duration::from_secs(7 * 86_400);
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);
/// Default largest gRPC message accepted (a report with its steps is a few KiB).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// Default HTTP/2 streams per agent connection.
pub const DEFAULT_MAX_STREAMS: u32 = 16;
/// Default largest admin API request body (a check definition is a few KiB).
pub const DEFAULT_HTTP_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Default cap on open admin API connections, all clients together.
pub const DEFAULT_HTTP_MAX_CONNECTIONS: usize = 256;
/// Default cap on open admin API connections from one client address.
pub const DEFAULT_HTTP_MAX_CONNECTIONS_PER_CLIENT: usize = 32;
/// Default time for a request's headers (and a TLS handshake) to arrive.
pub const DEFAULT_HTTP_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time from a request's headers to its response.
pub const DEFAULT_HTTP_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time an admin API connection may go without a byte either way.
pub const DEFAULT_HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default grace period at shutdown.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Tokens shorter than this are refused: they would be guessable.
pub const MIN_TOKEN_LEN: usize = 16;

/// A validated coordinator config.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    pub server: ServerConfig,
    /// Agents declared in the file (config as code).
    pub agents: Vec<AgentDecl>,
    /// `[[token]]`: named API tokens with a role (the `[server]` admin token
    /// is not among them; see [`CoordinatorConfig::api_tokens`]).
    pub tokens: Vec<TokenDecl>,
    /// Checks declared in the file (config as code).
    pub checks: Vec<CheckSpec>,
    /// `[incidents]` and `[baselines]`: how rounds are judged.
    pub judge: crate::judge::config::JudgeSettings,
    /// `[[alert]]`: where incident events go.
    pub alerts: Vec<crate::alerts::ChannelConfig>,
    /// `[storage]`: SQLite in `data_dir` (the default) or PostgreSQL.
    pub storage: crate::storage::settings::StorageSettings,
    /// `[telemetry]` with the standard `OTEL_*` variables over it: where
    /// the coordinator's own traces go (off without an endpoint).
    pub telemetry: mailloop_common::telemetry::TelemetryConfig,
    /// `[status]`: the public status page.
    pub status: status::StatusPageSettings,
}

/// `[server]`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub grpc_listen: SocketAddr,
    pub http_listen: SocketAddr,
    /// SQLite lives here (`coordinator.db`).
    pub data_dir: PathBuf,
    /// Bearer token for admin API writes.
    pub admin_token: Secret,
    /// Server certificate, key and optional client CA (mutual TLS).
    pub tls: Option<TlsMaterial>,
    /// Plaintext on a non-loopback address was explicitly allowed.
    pub allow_plaintext: bool,
    /// How long probe reports are kept.
    pub retention: Duration,
    /// How long the hourly aggregates are kept (at least `retention`).
    pub aggregate_retention: Duration,
    /// How long verdicts are kept (at least `retention`; by default 90
    /// days or `retention` if longer: the status page's 90-day history).
    pub verdict_retention: Duration,
    /// Accept inline `password` in checks (they are then stored and sent).
    pub allow_inline_passwords: bool,
    /// Allow check intervals down to 1 s (tests, demos).
    pub test_mode: bool,
    /// How often agents should call Heartbeat.
    pub heartbeat: Duration,
    /// Spool size handed to agents (0: the agent's default).
    pub spool_max_reports: u32,
    /// Largest gRPC message accepted from an agent.
    pub max_message_bytes: usize,
    /// HTTP/2 streams one agent connection may open at once.
    pub max_streams_per_connection: u32,
    /// How long shutdown may wait for in-flight work.
    pub shutdown_grace: Duration,
    /// What one admin API request and connection may cost.
    pub http_limits: HttpLimits,
    /// `/metrics`: on the admin listener, or on its own address; optional bearer token.
    pub metrics: MetricsEndpoint,
    /// The gRPC URLs agents reach this coordinator at, put in join tokens
    /// (empty: the bound grpc_listen address, when it is a specific one).
    pub public_urls: Vec<String>,
    /// How long a join token lasts unless `agents add --ttl` says otherwise.
    pub join_token_ttl: Duration,
    /// Agents speaking an older agent API protocol are refused at Register.
    pub min_agent_protocol: u32,
}

/// Whether and where `/metrics` is served (`metrics`, `metrics_listen`,
/// `metrics_token_file`).
#[derive(Debug, Clone)]
pub struct MetricsEndpoint {
    /// `metrics = false`: nothing is recorded and no `/metrics` is served
    /// (default true).
    pub enabled: bool,
    /// Its own plain-HTTP listener; None: `/metrics` on the admin listener.
    pub listen: Option<SocketAddr>,
    /// Scrapes must send `Authorization: Bearer <token>`; None: open, as scrapers expect.
    pub token: Option<Secret>,
    /// `metrics_steps`: the steps with a per check × region × step
    /// histogram (`"all"`, `"none"` or a list; default
    /// [`crate::metrics::DEFAULT_STEPS`]).
    pub steps: crate::metrics::StepSet,
}

impl Default for MetricsEndpoint {
    fn default() -> Self {
        MetricsEndpoint {
            enabled: true,
            listen: None,
            token: None,
            steps: crate::metrics::StepSet::default(),
        }
    }
}

/// The admin API listener's bounds (`[server] http_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Largest request body; larger ones get 413.
    pub max_body_bytes: usize,
    /// Open connections, all clients together; more are refused with 503.
    pub max_connections: usize,
    /// Open connections from one client address.
    pub max_connections_per_client: usize,
    /// A request's line and headers (and a TLS handshake, and the wait for
    /// the next request on a kept-alive connection) must arrive within this.
    pub header_timeout: Duration,
    /// From the headers to the response (reading the body, running the
    /// handler); over it: 503.
    pub request_timeout: Duration,
    /// A connection with no byte read or written for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_body_bytes: DEFAULT_HTTP_MAX_BODY_BYTES,
            max_connections: DEFAULT_HTTP_MAX_CONNECTIONS,
            max_connections_per_client: DEFAULT_HTTP_MAX_CONNECTIONS_PER_CLIENT,
            header_timeout: DEFAULT_HTTP_HEADER_TIMEOUT,
            request_timeout: DEFAULT_HTTP_REQUEST_TIMEOUT,
            idle_timeout: DEFAULT_HTTP_IDLE_TIMEOUT,
        }
    }
}

impl ServerConfig {
    /// The rules a check must follow under this server config.
    pub fn check_rules(&self) -> CheckRules {
        CheckRules {
            allow_inline_passwords: self.allow_inline_passwords,
            min_interval: if self.test_mode {
                MIN_TEST_INTERVAL
            } else {
                MIN_INTERVAL
            },
        }
    }
}

/// PEM material for the listeners. `Debug` never shows the key.
#[derive(Clone)]
pub struct TlsMaterial {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// When set, agents must present a certificate signed by this CA.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .field("client_ca", &self.client_ca_pem.is_some())
            .finish()
    }
}

/// One `[[agent]]`: a name, its region, and the SHA-256 of its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentDecl {
    pub name: String,
    pub region: String,
    /// Lowercase hex.
    pub token_sha256: String,
}

/// One check as the coordinator holds it: the probe's `[[check]]` table
/// (passwords as references only) plus its schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckSpec {
    /// The check's `name`, which is also its id.
    pub name: String,
    /// The probe table, without `interval` and `regions`: what agents get.
    pub table: Value,
    pub interval: Duration,
    /// Sorted, without duplicates.
    pub regions: Vec<String>,
    /// The check's own `quorum` (regions that must fail for `down`); None:
    /// `[incidents].quorum`. Not part of `table`: agents never see it.
    pub quorum: Option<crate::judge::Quorum>,
    /// `public = true` and `display_name`: shown on the public status page
    /// under that name. None: private (the default). Not part of `table`.
    pub public: Option<PublicListing>,
}

/// How a public check appears on the status page: its display name and
/// nothing else from its config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicListing {
    pub display_name: String,
}

/// Longest `display_name`, in characters.
pub const MAX_DISPLAY_NAME: usize = 100;

impl PublicListing {
    /// Writes `public` and `display_name` into a check table (as written).
    pub fn insert_into(listing: Option<&PublicListing>, table: &mut Value) {
        if let (Some(l), Some(obj)) = (listing, table.as_object_mut()) {
            obj.insert("public".into(), Value::Bool(true));
            obj.insert("display_name".into(), Value::String(l.display_name.clone()));
        }
    }

    /// Takes `public` and `display_name` out of a check table, validating
    /// them (issues under `path`); what is left is the probe's table.
    pub fn take_from(
        path: &str,
        table: &mut Map<String, Value>,
        v: &mut Vec<ConfigIssue>,
    ) -> Option<PublicListing> {
        let public = table.remove("public");
        let display_name = table.remove("display_name");
        let public = match public {
            None => false,
            Some(Value::Bool(b)) => b,
            Some(other) => {
                v.issue(
                    format!("{path}.public"),
                    format!("expected true or false, found {other}"),
                );
                false
            }
        };
        let name = match display_name {
            None => None,
            Some(Value::String(s)) if s.trim().is_empty() => {
                v.issue(format!("{path}.display_name"), "must not be empty");
                None
            }
            Some(Value::String(s))
                if s.chars().count() > MAX_DISPLAY_NAME || s.chars().any(char::is_control) =>
            {
                v.issue(
                    format!("{path}.display_name"),
                    format!("at most {MAX_DISPLAY_NAME} characters on one line"),
                );
                None
            }
            Some(Value::String(s)) => Some(s.trim().to_string()),
            Some(other) => {
                v.issue(
                    format!("{path}.display_name"),
                    format!("expected a string, found {other}"),
                );
                None
            }
        };
        if !public {
            return None;
        }
        match name {
            Some(display_name) => Some(PublicListing { display_name }),
            None => {
                if !v.iter().any(|i| i.path == format!("{path}.display_name")) {
                    v.issue(
                        format!("{path}.display_name"),
                        "required with public = true: the name visitors of the status page see (the check's own name, hosts and mailboxes are never shown)",
                    );
                }
                None
            }
        }
    }
}

impl CheckSpec {
    /// The table as written: the probe table plus `interval` and `regions`
    /// (what `mailloopctl checks show` prints and `apply` accepts).
    pub fn full_table(&self) -> Value {
        let mut t = self.table.clone();
        if let Some(obj) = t.as_object_mut() {
            obj.insert(
                "interval".into(),
                Value::String(humantime::format_duration(self.interval).to_string()),
            );
            obj.insert("regions".into(), Value::from(self.regions.clone()));
            if let Some(q) = self.quorum {
                obj.insert("quorum".into(), crate::judge::config::quorum_value(q));
            }
        }
        PublicListing::insert_into(self.public.as_ref(), &mut t);
        t
    }
}

/// What a check is checked against besides the probe schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckRules {
    pub allow_inline_passwords: bool,
    pub min_interval: Duration,
}

impl CoordinatorConfig {
    /// Reads `path` and validates it whole. `env` looks up environment
    /// variables (`admin_token_env`, and `MAILLOOP_CHECK__...` overrides
    /// come from the real environment).
    pub fn load(path: &Path) -> Result<CoordinatorConfig, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Unreadable {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        let mut raw = parse_toml(&text).map_err(|message| ConfigError::Unreadable {
            path: shown.clone(),
            message,
        })?;
        // A bad value set by a variable names the variable; a variable
        // naming no check is an error, not silently ignored.
        let overrides = apply_env_overrides(&mut raw, std::env::vars());
        overrides
            .finish(Self::from_value(&raw, &|name| std::env::var(name).ok()))
            .map_err(|issues| ConfigError::Invalid {
                path: shown,
                issues,
            })
    }

    /// Validates an already-parsed tree.
    pub fn from_value(
        raw: &Value,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<CoordinatorConfig, Vec<ConfigIssue>> {
        let mut v = Vec::new();
        let Some(root) = raw.as_object() else {
            return Err(vec![issue("(root)", "expected a table")]);
        };
        for key in root.keys() {
            if ![
                "server",
                "agent",
                "check",
                "incidents",
                "baselines",
                "alert",
                "token",
                "storage",
                "telemetry",
                "status",
            ]
            .contains(&key.as_str())
            {
                if key == "dns" {
                    // Agents resolve in their own region; the coordinator asks no DNS question.
                    v.issue(key.clone(), "unknown key: [dns] is an agent setting (each agent resolves in its region) — put it in agent.toml");
                } else {
                    v.issue(key.clone(), "unknown key (expected [server], [[agent]], [[token]], [[check]], [incidents], [baselines], [[alert]], [storage], [telemetry] and [status])");
                }
            }
        }
        let server = server(&mut v, root.get("server"), env);
        let agents = agents(&mut v, root.get("agent"));
        let tokens = api_tokens(&mut v, root.get("token"), server.as_ref(), &agents);
        let rules = match &server {
            Some(s) => s.check_rules(),
            // Keep validating the checks with the strictest reading, so their
            // own issues are reported together with the server's.
            None => CheckRules {
                allow_inline_passwords: false,
                min_interval: MIN_INTERVAL,
            },
        };
        let checks = checks(&mut v, root.get("check"), rules);
        let judge =
            crate::judge::config::parse(root.get("incidents"), root.get("baselines"), &mut v);
        // A default count of regions must fit every check that relies on it.
        if let crate::judge::Quorum::Count(n) = judge.policy.quorum {
            for c in checks.iter().filter(|c| c.quorum.is_none()) {
                if n as usize > c.regions.len() {
                    v.issue(
                        "incidents.quorum",
                        format!(
                            "{n} is more than the {} region(s) of check {:?}, which could never be down: give it its own quorum",
                            c.regions.len(),
                            c.name
                        ),
                    );
                }
            }
        }
        let alerts = crate::alerts::config::parse(root.get("alert"), env, &mut v);
        let storage = storage::parse(
            &mut v,
            root.get("storage"),
            env,
            server.as_ref().map(|s| s.data_dir.as_path()),
        );
        let telemetry =
            mailloop_common::telemetry::TelemetryConfig::parse(root.get("telemetry"), env, &mut v);
        let status = status::parse(&mut v, root.get("status"));
        if let (Some(listen), Some(s)) = (status.listen, &server)
            && listen.port() != 0
            && [s.http_listen, s.grpc_listen].contains(&listen)
        {
            v.issue(
                "status.listen",
                format!("{listen} is already the admin or gRPC listener"),
            );
        }
        match (server, storage, telemetry) {
            (Some(server), Some(storage), Some(telemetry)) if v.is_empty() => Ok(CoordinatorConfig {
                server,
                agents,
                tokens,
                checks,
                judge,
                alerts,
                storage,
                telemetry,
                status,
            }),
            _ => Err(v),
        }
    }
}

impl CoordinatorConfig {
    /// Every API token in force: the `[server]` admin token, named `admin`
    /// with the admin role, then the `[[token]]` entries.
    pub fn api_tokens(&self) -> Vec<TokenDecl> {
        let mut all = vec![TokenDecl {
            name: ADMIN_TOKEN_NAME.into(),
            role: Role::Admin,
            sha256: token_sha256(self.server.admin_token.expose()),
        }];
        all.extend(self.tokens.iter().cloned());
        all
    }
}

/// The name the `[server]` admin token goes by (in the audit log).
pub const ADMIN_TOKEN_NAME: &str = "admin";

/// `[[token]]`: `name`, `role` (`read` or `admin`), and `token_file` or
/// `token_sha256`. A token may not also be the admin token or an agent's.
fn api_tokens(
    v: &mut Vec<ConfigIssue>,
    raw: Option<&Value>,
    server: Option<&ServerConfig>,
    agents: &[AgentDecl],
) -> Vec<TokenDecl> {
    let admin = server.map(|s| token_sha256(s.admin_token.expose()));
    let mut out: Vec<TokenDecl> = Vec::new();
    for (i, item) in array(v, "token", raw).iter().enumerate() {
        let path = format!("token[{i}]");
        let Some(mut t) = Table::or_empty(v, &path, Some(item)) else {
            continue;
        };
        let name = named(v, &mut t, "name");
        let role = match t.string(v, "role") {
            Some(Some(r)) => match Role::parse(&r) {
                Some(role) => Some(role),
                None => {
                    v.issue(
                        format!("{path}.role"),
                        format!("{r:?}: expected \"read\" or \"admin\""),
                    );
                    None
                }
            },
            Some(None) => {
                v.issue(
                    format!("{path}.role"),
                    "required: \"read\" (every read, no secrets) or \"admin\"",
                );
                None
            }
            None => None,
        };
        let file = file(v, &mut t, "token_file");
        let hash = t.string(v, "token_sha256");
        t.finish(v);
        let sha256 = token_digest(v, &path, file, hash);
        let (Some(name), Some(role), Some(sha256)) = (name, role, sha256) else {
            continue;
        };
        if name == ADMIN_TOKEN_NAME {
            v.issue(
                format!("{path}.name"),
                "\"admin\" is the [server] admin token's name; choose another",
            );
        } else if out.iter().any(|d| d.name == name) {
            v.issue(
                format!("{path}.name"),
                format!("duplicate token name {name:?}"),
            );
        } else if admin.as_deref() == Some(sha256.as_str()) {
            v.issue(
                format!("{path}.token_file"),
                "this is the [server] admin token; give each token its own value",
            );
        } else if out.iter().any(|d| d.sha256 == sha256) {
            v.issue(
                format!("{path}.token_file"),
                "the same token is already given to another [[token]]",
            );
        } else if agents.iter().any(|a| a.token_sha256 == sha256) {
            v.issue(
                format!("{path}.token_file"),
                "this token belongs to an [[agent]]; an API token must be its own",
            );
        } else {
            out.push(TokenDecl { name, role, sha256 });
        }
    }
    out
}

/// TOML text to a JSON tree (the form every validator reads).
pub fn parse_toml(text: &str) -> Result<Value, String> {
    let value: toml::Value = toml::from_str(text).map_err(|e| e.to_string())?;
    serde_json::to_value(value).map_err(|e| e.to_string())
}

/// Validates one check table (from the file, or from the admin API).
/// `path` prefixes every issue: `check[2]`, `body`.
pub fn check_spec(
    path: &str,
    value: &Value,
    rules: CheckRules,
) -> Result<CheckSpec, Vec<ConfigIssue>> {
    let mut v = Vec::new();
    let Some(obj) = value.as_object() else {
        return Err(vec![issue(path, "expected a table")]);
    };
    let interval = match obj.get("interval") {
        None => Some(DEFAULT_INTERVAL),
        Some(raw) => match duration_value(raw) {
            Ok(d) if d < rules.min_interval || d > MAX_INTERVAL => {
                let floor = humantime::format_duration(rules.min_interval);
                let hint = if rules.min_interval > MIN_TEST_INTERVAL {
                    " (shorter only with [server] test_mode = true)"
                } else {
                    ""
                };
                v.issue(
                    format!("{path}.interval"),
                    format!("{raw} is outside {floor} to 1h{hint}"),
                );
                None
            }
            Ok(d) => Some(d),
            Err(m) => {
                v.issue(format!("{path}.interval"), m);
                None
            }
        },
    };
    let regions = match obj.get("regions") {
        None => {
            v.issue(
                format!("{path}.regions"),
                "required: the regions this check runs in, e.g. [\"eu-west\"]",
            );
            None
        }
        Some(Value::Array(list)) if list.is_empty() => {
            v.issue(format!("{path}.regions"), "must name at least one region");
            None
        }
        Some(Value::Array(list)) => {
            let mut out = Vec::new();
            // One lookup per region (a check may list 10,000).
            let mut seen: HashSet<&str> = HashSet::with_capacity(list.len());
            let mut ok = true;
            for (i, r) in list.iter().enumerate() {
                match r.as_str() {
                    Some(s) if is_name(s) => {
                        if !seen.insert(s) {
                            v.issue(
                                format!("{path}.regions[{i}]"),
                                format!("{s:?} is listed twice"),
                            );
                            ok = false;
                        }
                        out.push(s.to_string());
                    }
                    _ => {
                        v.issue(
                            format!("{path}.regions[{i}]"),
                            format!("{r} is not a region name (letters, digits, '-', '_', '.')"),
                        );
                        ok = false;
                    }
                }
            }
            out.sort();
            ok.then_some(out)
        }
        Some(other) => {
            v.issue(
                format!("{path}.regions"),
                format!("expected a list of region names, found {other}"),
            );
            None
        }
    };
    // `quorum` is the judge's, checked against the number of regions.
    let quorum = obj.get("quorum").map(|raw| {
        crate::judge::config::quorum(
            &format!("{path}.quorum"),
            raw,
            regions.as_ref().map(Vec::len),
            &mut v,
        )
    });
    let mut table: Map<String, Value> = obj.clone();
    table.remove("interval");
    table.remove("regions");
    table.remove("quorum");
    let public = PublicListing::take_from(path, &mut table, &mut v);
    let table = Value::Object(table);
    let secrets = Secrets::ReferencesOnly {
        allow_inline: rules.allow_inline_passwords,
    };
    // References are never resolved here: the agent resolves them in its region.
    let probe = check_from_value(path, &table, &|_| None, secrets);
    let name = match probe {
        Ok(c) => Some(c.name),
        Err(issues) => {
            v.extend(issues);
            None
        }
    };
    match (name, interval, regions) {
        (Some(name), Some(interval), Some(regions)) if v.is_empty() => Ok(CheckSpec {
            name,
            table,
            interval,
            regions,
            quorum: quorum.flatten(),
            public,
        }),
        _ => Err(v),
    }
}

fn issue(path: impl Into<String>, message: impl Into<String>) -> ConfigIssue {
    ConfigIssue {
        path: path.into(),
        message: message.into(),
    }
}

fn addr(
    v: &mut Vec<ConfigIssue>,
    t: &mut Table<'_>,
    key: &'static str,
    default: &str,
) -> Option<SocketAddr> {
    let text = t.string(v, key)?.unwrap_or_else(|| default.to_string());
    match text.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            v.issue(
                t.path_of(key),
                format!("{text:?} is not ip:port (e.g. \"127.0.0.1:7443\", \"[::]:7443\")"),
            );
            None
        }
    }
}

/// Reads a file named by `key`; `Some(None)` when the key is absent.
fn file(
    v: &mut Vec<ConfigIssue>,
    t: &mut Table<'_>,
    key: &'static str,
) -> Option<Option<(PathBuf, Vec<u8>)>> {
    let Some(path) = t.string(v, key)? else {
        return Some(None);
    };
    match std::fs::read(&path) {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => {
            v.issue(t.path_of(key), format!("{path} is empty"));
            None
        }
        Ok(bytes) => Some(Some((PathBuf::from(path), bytes))),
        Err(e) => {
            v.issue(t.path_of(key), format!("cannot read {path}: {e}"));
            None
        }
    }
}

fn server(
    v: &mut Vec<ConfigIssue>,
    raw: Option<&Value>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<ServerConfig> {
    if raw.is_none() {
        v.issue(
            "server",
            "required table is missing (at least data_dir and an admin token)",
        );
    }
    let mut t = Table::or_empty(v, "server", raw)?;
    let grpc_listen = addr(v, &mut t, "grpc_listen", DEFAULT_GRPC_LISTEN);
    let http_listen = addr(v, &mut t, "http_listen", DEFAULT_HTTP_LISTEN);
    let data_dir = match t.string(v, "data_dir") {
        Some(Some(d)) => {
            let p = PathBuf::from(d);
            if p.exists() && !p.is_dir() {
                v.issue(
                    "server.data_dir",
                    format!("{} exists and is not a directory", p.display()),
                );
                None
            } else {
                Some(p)
            }
        }
        Some(None) => {
            if raw.is_some() {
                v.issue("server.data_dir", "required: the directory SQLite lives in");
            }
            None
        }
        None => None,
    };
    let admin_token = admin_token(v, &mut t, env, raw.is_some());
    let tls = tls(v, &mut t);
    let allow_plaintext = t.flag(v, "allow_plaintext", false);
    let retention =
        t.duration_at_least(v, "retention", DEFAULT_RETENTION, Duration::from_secs(3600));
    let aggregate_retention = t.duration_at_least(
        v,
        "aggregate_retention",
        DEFAULT_AGGREGATE_RETENTION,
        Duration::from_secs(3600),
    );
    let verdict_retention_given = t.get("verdict_retention").is_some();
    let verdict_retention = t
        .duration_at_least(
            v,
            "verdict_retention",
            DEFAULT_VERDICT_RETENTION,
            Duration::from_secs(3600),
        )
        .map(|d| match retention {
            Some(r) if !verdict_retention_given => d.max(r),
            _ => d,
        });
    // A verdict is one small row per round; it outlives the reports it was
    // judged from, never the other way round.
    if let (Some(r), Some(d)) = (retention, verdict_retention)
        && d < r
    {
        v.issue(
            "server.verdict_retention",
            format!(
                "{} is shorter than retention ({}): verdicts must outlive the reports they were judged from",
                humantime::format_duration(d),
                humantime::format_duration(r)
            ),
        );
    }
    // Aggregates summarise reports: keeping them for less time than the
    // reports themselves would make the longer-lived record the shorter one.
    if let (Some(r), Some(a)) = (retention, aggregate_retention)
        && a < r
    {
        v.issue(
            "server.aggregate_retention",
            format!(
                "{} is shorter than retention ({}): aggregates must outlive the reports they summarise",
                humantime::format_duration(a),
                humantime::format_duration(r)
            ),
        );
    }
    let allow_inline_passwords = t.flag(v, "allow_inline_passwords", false);
    let test_mode = t.flag(v, "test_mode", false);
    let heartbeat = t.duration_at_least(v, "heartbeat", DEFAULT_HEARTBEAT, Duration::from_secs(1));
    let spool_max_reports = t.number(v, "spool_max_reports", 0, 0..=u32::MAX as u64);
    let max_message_bytes = t.number(
        v,
        "max_message_bytes",
        DEFAULT_MAX_MESSAGE_BYTES as u64,
        4096..=64 * 1024 * 1024,
    );
    let max_streams = t.number(
        v,
        "max_streams_per_connection",
        DEFAULT_MAX_STREAMS as u64,
        2..=1000,
    );
    let shutdown_grace = t.duration_at_least(
        v,
        "shutdown_grace",
        DEFAULT_SHUTDOWN_GRACE,
        Duration::from_millis(100),
    );
    let http_limits = http_limits(v, &mut t);
    let metrics = metrics_endpoint(v, &mut t);
    let public_urls = public_urls(v, &mut t, tls.as_ref().map(Option::is_some));
    let join_token_ttl = t
        .duration_at_least(
            v,
            "join_token_ttl",
            DEFAULT_JOIN_TOKEN_TTL,
            Duration::from_secs(1),
        )
        .filter(|d| {
            let ok = *d <= MAX_JOIN_TOKEN_TTL;
            if !ok {
                v.issue(
                    "server.join_token_ttl",
                    "at most 7d: a join token is for bringing a machine up now",
                );
            }
            ok
        });
    let min_agent_protocol = t.number(
        v,
        "min_agent_protocol",
        0,
        0..=mailloop_proto::PROTOCOL_VERSION as u64,
    );
    t.finish(v);
    // The metrics listener is plain HTTP even with TLS on the others.
    if let (Some(m), Some(false)) = (&metrics, allow_plaintext)
        && let Some(a) = m.listen.filter(|a| !a.ip().is_loopback())
    {
        v.issue("server.metrics_listen", format!("{a} is not a loopback address and the metrics listener is plain HTTP: set allow_plaintext = true to serve it there"));
    }
    // Plaintext only where nobody else can listen, unless explicitly allowed.
    if let (Some(None), Some(false)) = (&tls, allow_plaintext) {
        for (key, addr) in [("grpc_listen", grpc_listen), ("http_listen", http_listen)] {
            if let Some(a) = addr.filter(|a| !a.ip().is_loopback()) {
                v.issue(
                    format!("server.{key}"),
                    format!("{a} is not a loopback address and there is no TLS: set tls_cert and tls_key, or allow_plaintext = true"),
                );
            }
        }
    }
    Some(ServerConfig {
        grpc_listen: grpc_listen?,
        http_listen: http_listen?,
        data_dir: data_dir?,
        admin_token: admin_token?,
        tls: tls?,
        allow_plaintext: allow_plaintext?,
        retention: retention?,
        aggregate_retention: aggregate_retention?,
        verdict_retention: verdict_retention?,
        allow_inline_passwords: allow_inline_passwords?,
        test_mode: test_mode?,
        heartbeat: heartbeat?,
        spool_max_reports: spool_max_reports? as u32,
        max_message_bytes: max_message_bytes? as usize,
        max_streams_per_connection: max_streams? as u32,
        shutdown_grace: shutdown_grace?,
        http_limits: http_limits?,
        metrics: metrics?,
        public_urls: public_urls?,
        join_token_ttl: join_token_ttl?,
        min_agent_protocol: min_agent_protocol? as u32,
    })
}

/// The admin listener's `http_*` keys of `[server]`.
fn http_limits(v: &mut Vec<ConfigIssue>, t: &mut Table<'_>) -> Option<HttpLimits> {
    let d = HttpLimits::default();
    let max_body_bytes = t.number(
        v,
        "http_max_body_bytes",
        d.max_body_bytes as u64,
        1024..=64 * 1024 * 1024,
    );
    let max_connections = t.number(
        v,
        "http_max_connections",
        d.max_connections as u64,
        1..=65_536,
    );
    let per_client = t.number(
        v,
        "http_max_connections_per_client",
        d.max_connections_per_client as u64,
        1..=65_536,
    );
    let min = Duration::from_millis(100);
    let header_timeout = t.duration_at_least(v, "http_header_timeout", d.header_timeout, min);
    let request_timeout = t.duration_at_least(v, "http_request_timeout", d.request_timeout, min);
    let idle_timeout = t.duration_at_least(v, "http_idle_timeout", d.idle_timeout, min);
    if let (Some(per), Some(all)) = (per_client, max_connections)
        && per > all
    {
        v.issue(
            t.path_of("http_max_connections_per_client"),
            format!("{per} is more than http_max_connections ({all})"),
        );
    }
    // A handler still inside its request timeout reads and writes nothing:
    // the idle timer must not cut it off first.
    if let (Some(request), Some(idle)) = (request_timeout, idle_timeout)
        && idle <= request
    {
        v.issue(
            t.path_of("http_idle_timeout"),
            format!(
                "{} must be longer than http_request_timeout ({})",
                humantime::format_duration(idle),
                humantime::format_duration(request)
            ),
        );
    }
    Some(HttpLimits {
        max_body_bytes: max_body_bytes? as usize,
        max_connections: max_connections? as usize,
        max_connections_per_client: per_client? as usize,
        header_timeout: header_timeout?,
        request_timeout: request_timeout?,
        idle_timeout: idle_timeout?,
    })
}

/// `metrics_steps`: `"all"`, `"none"` or a list of step names; every
/// unknown name is reported.
fn metrics_steps(v: &mut Vec<ConfigIssue>, t: &mut Table<'_>) -> Option<Option<crate::metrics::StepSet>> {
    use crate::metrics::StepSet;
    const HOW: &str = "must be \"all\", \"none\" or a list of step names (smtp.connect, imap.login, ...)";
    let key = "server.metrics_steps";
    match t.get("metrics_steps") {
        None => Some(None),
        Some(Value::String(s)) if s == "all" => Some(Some(StepSet::all())),
        Some(Value::String(s)) if s == "none" => Some(Some(StepSet::none())),
        Some(Value::Array(list)) => {
            let mut steps = Vec::new();
            let mut ok = true;
            for (i, item) in list.iter().enumerate() {
                match item.as_str().map(str::parse::<mailloop_common::step::StepName>) {
                    Some(Ok(step)) => steps.push(step),
                    Some(Err(e)) => {
                        v.issue(format!("{key}[{i}]"), e.to_string());
                        ok = false;
                    }
                    None => {
                        v.issue(format!("{key}[{i}]"), "must be a step name");
                        ok = false;
                    }
                }
            }
            ok.then(|| Some(StepSet::of(&steps)))
        }
        Some(_) => {
            v.issue(key, HOW);
            None
        }
    }
}

/// `metrics`, `metrics_listen`, `metrics_token_file` and `metrics_steps`.
fn metrics_endpoint(v: &mut Vec<ConfigIssue>, t: &mut Table<'_>) -> Option<MetricsEndpoint> {
    let enabled = t.flag(v, "metrics", true);
    let steps = metrics_steps(v, t);
    let listen = match t.string(v, "metrics_listen") {
        Some(Some(_)) => Some(Some(addr(v, t, "metrics_listen", "")?)),
        Some(None) => Some(None),
        None => None,
    };
    let token = match file(v, t, "metrics_token_file")? {
        None => Some(None),
        Some((path, bytes)) => match String::from_utf8(bytes) {
            Ok(s) if s.trim().len() >= MIN_TOKEN_LEN => {
                Some(Some(Secret::new(s.trim().to_string())))
            }
            Ok(_) => {
                v.issue(
                    "server.metrics_token_file",
                    format!(
                        "the token in {} is shorter than {MIN_TOKEN_LEN} characters",
                        path.display()
                    ),
                );
                None
            }
            Err(_) => {
                v.issue(
                    "server.metrics_token_file",
                    format!("{} is not text", path.display()),
                );
                None
            }
        },
    };
    let (enabled, listen, token, steps) = (enabled?, listen?, token?, steps?);
    if !enabled {
        for (key, set) in [("metrics_listen", listen.is_some()), ("metrics_token_file", token.is_some()), ("metrics_steps", steps.is_some())] {
            if set {
                v.issue(format!("server.{key}"), "metrics = false: nothing is served; remove this key or the switch".to_string());
            }
        }
        if listen.is_some() || token.is_some() || steps.is_some() {
            return None;
        }
    }
    Some(MetricsEndpoint {
        enabled,
        listen,
        token,
        steps: steps.unwrap_or_default(),
    })
}

fn admin_token(
    v: &mut Vec<ConfigIssue>,
    t: &mut Table<'_>,
    env: &dyn Fn(&str) -> Option<String>,
    present: bool,
) -> Option<Secret> {
    let file = file(v, t, "admin_token_file");
    let var = t.string(v, "admin_token_env");
    let token = match (file?, var?) {
        (Some(_), Some(_)) => {
            v.issue(
                "server.admin_token_file",
                "set only one of admin_token_file and admin_token_env",
            );
            return None;
        }
        (Some((path, bytes)), None) => match String::from_utf8(bytes) {
            Ok(s) => (
                s.trim().to_string(),
                "server.admin_token_file",
                path.display().to_string(),
            ),
            Err(_) => {
                v.issue(
                    "server.admin_token_file",
                    format!("{} is not text", path.display()),
                );
                return None;
            }
        },
        (None, Some(name)) => match env(&name) {
            Some(s) if !s.trim().is_empty() => (
                s.trim().to_string(),
                "server.admin_token_env",
                format!("${name}"),
            ),
            _ => {
                v.issue(
                    "server.admin_token_env",
                    format!("environment variable {name} is not set"),
                );
                return None;
            }
        },
        (None, None) => {
            if present {
                v.issue("server.admin_token_file", "required: admin_token_file or admin_token_env (the bearer token for API writes)");
            }
            return None;
        }
    };
    let (token, key, source) = token;
    if token.len() < MIN_TOKEN_LEN {
        v.issue(
            key,
            format!("the token in {source} is shorter than {MIN_TOKEN_LEN} characters"),
        );
        return None;
    }
    Some(Secret::new(token))
}

/// `Some(None)`: no TLS configured; `None`: something is wrong (reported).
fn tls(v: &mut Vec<ConfigIssue>, t: &mut Table<'_>) -> Option<Option<TlsMaterial>> {
    let cert = file(v, t, "tls_cert");
    let key = file(v, t, "tls_key");
    let ca = file(v, t, "client_ca");
    let (cert, key, ca) = (cert?, key?, ca?);
    let mut ok = true;
    let mut pem_check =
        |v: &mut Vec<ConfigIssue>, name: &str, bytes: &[u8], what: &str, marker: &str| {
            if !String::from_utf8_lossy(bytes).contains(marker) {
                v.issue(
                    format!("server.{name}"),
                    format!("no {what} found (expected PEM with {marker})"),
                );
                ok = false;
            }
        };
    if let Some((_, b)) = &cert {
        pem_check(
            v,
            "tls_cert",
            b,
            "certificate",
            "-----BEGIN CERTIFICATE-----",
        );
    }
    if let Some((_, b)) = &key {
        pem_check(v, "tls_key", b, "private key", "PRIVATE KEY-----");
    }
    if let Some((_, b)) = &ca {
        pem_check(
            v,
            "client_ca",
            b,
            "CA certificate",
            "-----BEGIN CERTIFICATE-----",
        );
    }
    match (cert, key) {
        (Some((_, cert_pem)), Some((_, key_pem))) => ok.then_some(Some(TlsMaterial {
            cert_pem,
            key_pem,
            client_ca_pem: ca.map(|(_, b)| b),
        })),
        (None, None) => {
            if ca.is_some() {
                v.issue(
                    "server.client_ca",
                    "mutual TLS needs tls_cert and tls_key too",
                );
                return None;
            }
            Some(None)
        }
        (Some(_), None) => {
            v.issue("server.tls_key", "tls_cert is set but tls_key is not");
            None
        }
        (None, Some(_)) => {
            v.issue("server.tls_cert", "tls_key is set but tls_cert is not");
            None
        }
    }
}

/// `public_urls`: absolute http(s) URLs with a host; https:// when the
/// coordinator has TLS (`tls`: Some(true)), http:// when it has not.
fn public_urls(
    v: &mut Vec<ConfigIssue>,
    t: &mut Table<'_>,
    tls: Option<bool>,
) -> Option<Vec<String>> {
    let Some(raw) = t.get("public_urls") else {
        return Some(Vec::new());
    };
    let Some(list) = raw.as_array() else {
        v.issue(
            "server.public_urls",
            "must be an array of URLs, e.g. [\"https://coord.example:7443\"]",
        );
        return None;
    };
    let mut ok = true;
    let mut out = Vec::new();
    for (i, u) in list.iter().enumerate() {
        let path = format!("server.public_urls[{i}]");
        let Some(text) = u.as_str() else {
            v.issue(path, "must be a string");
            ok = false;
            continue;
        };
        let want = match tls {
            Some(true) => Some("https"),
            Some(false) => Some("http"),
            None => None,
        };
        match text.parse::<axum::http::Uri>() {
            Ok(uri)
                if uri.host().is_some() && matches!(uri.scheme_str(), Some("http" | "https")) =>
            {
                if let Some(want) = want
                    && uri.scheme_str() != Some(want)
                {
                    v.issue(
                        path,
                        format!(
                            "{text}: the gRPC listener speaks {want}:// (tls_cert {})",
                            if want == "https" {
                                "is set"
                            } else {
                                "is not set"
                            }
                        ),
                    );
                    ok = false;
                    continue;
                }
                out.push(text.trim_end_matches('/').to_string());
            }
            _ => {
                v.issue(
                    path,
                    format!("{text:?} is not an http:// or https:// URL with a host"),
                );
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

fn array<'a>(v: &mut Vec<ConfigIssue>, key: &str, raw: Option<&'a Value>) -> &'a [Value] {
    match raw {
        None => &[],
        Some(Value::Array(list)) => list,
        Some(Value::Object(_)) => {
            v.issue(
                key,
                format!("must be an array of tables: write [[{key}]], not [{key}]"),
            );
            &[]
        }
        Some(_) => {
            v.issue(key, format!("must be an array of tables ([[{key}]])"));
            &[]
        }
    }
}

fn agents(v: &mut Vec<ConfigIssue>, raw: Option<&Value>) -> Vec<AgentDecl> {
    let mut out: Vec<AgentDecl> = Vec::new();
    // Names and token digests already declared: one lookup per agent, not
    // a scan of the ones before it (10,000 declared agents).
    let mut names: HashSet<String> = HashSet::new();
    let mut digests: HashSet<String> = HashSet::new();
    for (i, item) in array(v, "agent", raw).iter().enumerate() {
        let path = format!("agent[{i}]");
        let Some(mut t) = Table::or_empty(v, &path, Some(item)) else {
            continue;
        };
        let name = named(v, &mut t, "name");
        let region = named(v, &mut t, "region");
        let file = file(v, &mut t, "token_file");
        let hash = t.string(v, "token_sha256");
        t.finish(v);
        let token_sha256 = token_digest(v, &path, file, hash);
        if let (Some(name), Some(region), Some(token_sha256)) = (name, region, token_sha256) {
            if names.contains(&name) {
                v.issue(
                    format!("{path}.name"),
                    format!("duplicate agent name {name:?}"),
                );
            } else if digests.contains(&token_sha256) {
                v.issue(
                    format!("{path}.token_sha256"),
                    "the same token is already given to another agent",
                );
            } else {
                names.insert(name.clone());
                digests.insert(token_sha256.clone());
                out.push(AgentDecl {
                    name,
                    region,
                    token_sha256,
                });
            }
        }
    }
    out
}

/// The SHA-256 (hex) of a token given as exactly one of `token_file` (read
/// now, at least [`MIN_TOKEN_LEN`] characters) and `token_sha256`.
fn token_digest(
    v: &mut Vec<ConfigIssue>,
    path: &str,
    file: Option<Option<(PathBuf, Vec<u8>)>>,
    hash: Option<Option<String>>,
) -> Option<String> {
    match (file, hash) {
        (Some(Some(_)), Some(Some(_))) => {
            v.issue(
                format!("{path}.token_file"),
                "set only one of token_file and token_sha256",
            );
            None
        }
        (Some(Some((p, bytes))), Some(None)) => {
            let token = String::from_utf8_lossy(&bytes).trim().to_string();
            if token.len() < MIN_TOKEN_LEN {
                v.issue(
                    format!("{path}.token_file"),
                    format!(
                        "the token in {} is shorter than {MIN_TOKEN_LEN} characters",
                        p.display()
                    ),
                );
                None
            } else {
                Some(token_sha256(&token))
            }
        }
        (Some(None), Some(Some(h))) => {
            let h = h.to_ascii_lowercase();
            if h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()) {
                Some(h)
            } else {
                v.issue(
                    format!("{path}.token_sha256"),
                    "expected 64 hex digits (sha256sum of the token)",
                );
                None
            }
        }
        (Some(None), Some(None)) => {
            v.issue(
                format!("{path}.token_file"),
                "required: token_file or token_sha256",
            );
            None
        }
        _ => None,
    }
}

fn named(v: &mut Vec<ConfigIssue>, t: &mut Table<'_>, key: &'static str) -> Option<String> {
    match t.string(v, key)? {
        Some(s) if is_name(&s) => Some(s),
        Some(s) => {
            v.issue(
                t.path_of(key),
                format!("{s:?}: use 1 to 64 letters, digits, '-', '_' or '.'"),
            );
            None
        }
        None => {
            v.issue(t.path_of(key), "required");
            None
        }
    }
}

fn checks(v: &mut Vec<ConfigIssue>, raw: Option<&Value>, rules: CheckRules) -> Vec<CheckSpec> {
    let mut out: Vec<CheckSpec> = Vec::new();
    let mut names: HashSet<String> = HashSet::new();
    for (i, item) in array(v, "check", raw).iter().enumerate() {
        let path = format!("check[{i}]");
        match check_spec(&path, item, rules) {
            Ok(spec) => {
                if !names.insert(spec.name.clone()) {
                    v.issue(
                        format!("{path}.name"),
                        format!("duplicate check name {:?}", spec.name),
                    );
                } else {
                    out.push(spec);
                }
            }
            Err(issues) => v.extend(issues),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(name: &str) -> Option<String> {
        (name == "ADMIN").then(|| "an-admin-token-long-enough".to_string())
    }

    fn good() -> Value {
        json!({
            "server": {"data_dir": "/tmp/mailloop-test-nonexistent", "admin_token_env": "ADMIN"},
            "agent": [{"name": "eu-1", "region": "eu-west", "token_sha256": "ab".repeat(32)}],
            "check": [{
                "name": "corp", "from": "probe@sender.test", "to": "probe@receiver.test",
                "interval": "1m", "regions": ["us-east", "eu-west"],
                "smtp": {"host": "127.0.0.1", "username": "probe@sender.test", "password_env": "SMTP_PASS"},
                "imap": {"host": "127.0.0.1", "username": "probe@receiver.test", "password_file": "/run/imap"}
            }]
        })
    }

    fn paths(v: Value) -> Vec<String> {
        match CoordinatorConfig::from_value(&v, &env) {
            Ok(_) => vec![],
            Err(issues) => issues.into_iter().map(|i| i.path).collect(),
        }
    }

    #[test]
    fn a_good_config_gets_defaults() {
        let c = CoordinatorConfig::from_value(&good(), &env).unwrap();
        assert_eq!(c.server.grpc_listen.to_string(), DEFAULT_GRPC_LISTEN);
        assert_eq!(c.server.retention, DEFAULT_RETENTION);
        assert_eq!(c.checks[0].interval, Duration::from_secs(60));
        assert_eq!(c.checks[0].regions, ["eu-west", "us-east"]);
        assert!(
            c.checks[0].table.get("interval").is_none(),
            "agents get the probe table only"
        );
        assert_eq!(c.agents[0].region, "eu-west");
        assert_eq!(format!("{:?}", c.server.admin_token), "<redacted>");
    }

    #[test]
    fn telemetry_is_off_by_default_and_the_environment_wins_over_the_table() {
        let c = CoordinatorConfig::from_value(&good(), &env).unwrap();
        assert!(c.telemetry.endpoint.is_none(), "no endpoint: no traces");

        let mut v = good();
        v["telemetry"] = json!({"endpoint": "http://127.0.0.1:4317", "service_name": "coord", "headers": {"x-key": "k3y"}});
        let c = CoordinatorConfig::from_value(&v, &env).unwrap();
        assert_eq!(c.telemetry.endpoint.as_deref(), Some("http://127.0.0.1:4317"));
        assert!(!format!("{c:?}").contains("k3y"), "header values are secrets");
        let with_env = |name: &str| match name {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://127.0.0.1:4318".to_string()),
            "OTEL_EXPORTER_OTLP_PROTOCOL" => Some("http/protobuf".to_string()),
            other => env(other),
        };
        let c = CoordinatorConfig::from_value(&v, &with_env).unwrap();
        assert_eq!(c.telemetry.endpoint.as_deref(), Some("http://127.0.0.1:4318"));

        v["telemetry"] = json!({"endpoint": "collector:4317", "protocol": "thrift", "colour": "red"});
        v["server"]["colour"] = json!("blue");
        let p = paths(v);
        for key in ["telemetry.endpoint", "telemetry.protocol", "telemetry.colour", "server.colour"] {
            assert!(p.iter().any(|x| x == key), "{key} not in {p:?}");
        }
    }

    #[test]
    fn every_bad_key_is_reported_at_once() {
        let mut v = good();
        v["server"]["grpc_listen"] = json!("nowhere");
        v["server"]["retention"] = json!("forever");
        v["server"]["colour"] = json!("blue");
        v["agent"][0]["token_sha256"] = json!("xyz");
        v["check"][0]["interval"] = json!("5s");
        v["check"][0]["regions"] = json!(["eu west"]);
        v["check"][0]["smtp"]["port"] = json!(70000);
        v["check"][0]["imap"]["password"] = json!("inline");
        assert_eq!(
            paths(v),
            [
                "server.grpc_listen",
                "server.retention",
                "server.colour",
                "agent[0].token_sha256",
                "check[0].interval",
                "check[0].regions[0]",
                "check[0].smtp.port",
                "check[0].imap.password",
            ]
        );
    }

    #[test]
    fn step_histograms_default_to_a_few_steps_and_bad_names_are_each_named() {
        use crate::metrics::StepSet;
        use mailloop_common::step::StepName;
        let c = CoordinatorConfig::from_value(&good(), &env).unwrap();
        assert_eq!(c.server.metrics.steps, StepSet::default());
        assert!(c.server.metrics.steps.contains(StepName::SmtpDataAck));
        assert!(!c.server.metrics.steps.contains(StepName::ImapFetch));
        let mut v = good();
        v["server"]["metrics_steps"] = json!("all");
        let c = CoordinatorConfig::from_value(&v, &env).unwrap();
        assert_eq!(c.server.metrics.steps, StepSet::all());
        v["server"]["metrics_steps"] = json!(["imap.fetch"]);
        let c = CoordinatorConfig::from_value(&v, &env).unwrap();
        assert_eq!(c.server.metrics.steps.steps().collect::<Vec<_>>(), [StepName::ImapFetch]);
        v["server"]["metrics_steps"] = json!(["smtp.nope", "imap.fetch", 3]);
        assert_eq!(paths(v.clone()), ["server.metrics_steps[0]", "server.metrics_steps[2]"]);
        v["server"]["metrics_steps"] = json!("some");
        assert_eq!(paths(v.clone()), ["server.metrics_steps"]);
        v["server"]["metrics_steps"] = json!("none");
        v["server"]["metrics"] = json!(false);
        assert_eq!(paths(v), ["server.metrics_steps"]);
    }

    #[test]
    fn metrics_are_on_by_default_and_off_means_no_listener_and_no_token() {
        let c = CoordinatorConfig::from_value(&good(), &env).unwrap();
        assert!(c.server.metrics.enabled);
        let mut v = good();
        v["server"]["metrics"] = json!(false);
        let c = CoordinatorConfig::from_value(&v, &env).unwrap();
        assert!(!c.server.metrics.enabled);
        v["server"]["metrics_listen"] = json!("127.0.0.1:0");
        v["server"]["metrics"] = json!(false);
        assert_eq!(paths(v.clone()), ["server.metrics_listen"]);
        v["server"]["metrics"] = json!("no");
        assert_eq!(paths(v), ["server.metrics"]);
    }

    #[test]
    fn admin_listener_limits_have_defaults_and_are_validated_together() {
        let c = CoordinatorConfig::from_value(&good(), &env).unwrap();
        assert_eq!(c.server.http_limits, HttpLimits::default());
        assert_eq!(c.server.http_limits.max_body_bytes, 1024 * 1024);

        let mut v = good();
        v["server"]["http_max_body_bytes"] = json!(65536);
        v["server"]["http_header_timeout"] = json!("2s");
        let c = CoordinatorConfig::from_value(&v, &env).unwrap();
        assert_eq!(c.server.http_limits.max_body_bytes, 65536);
        assert_eq!(c.server.http_limits.header_timeout, Duration::from_secs(2));

        let mut v = good();
        v["server"]["http_max_body_bytes"] = json!(10);
        v["server"]["http_max_connections"] = json!(8);
        v["server"]["http_max_connections_per_client"] = json!(9);
        v["server"]["http_header_timeout"] = json!("soon");
        v["server"]["http_request_timeout"] = json!("1m");
        v["server"]["http_idle_timeout"] = json!("30s");
        assert_eq!(
            paths(v),
            [
                "server.http_max_body_bytes",
                "server.http_header_timeout",
                "server.http_max_connections_per_client",
                "server.http_idle_timeout",
            ]
        );
    }

    #[test]
    fn plaintext_only_on_loopback_unless_allowed() {
        let mut v = good();
        v["server"]["grpc_listen"] = json!("0.0.0.0:7443");
        assert_eq!(paths(v.clone()), ["server.grpc_listen"]);
        v["server"]["allow_plaintext"] = json!(true);
        assert_eq!(paths(v), Vec::<String>::new());
    }

    #[test]
    fn short_intervals_only_in_test_mode() {
        let mut v = good();
        v["check"][0]["interval"] = json!("2s");
        assert_eq!(paths(v.clone()), ["check[0].interval"]);
        v["server"]["test_mode"] = json!(true);
        assert_eq!(paths(v), Vec::<String>::new());
    }

    #[test]
    fn missing_server_and_tokens_are_named() {
        let mut v = good();
        v.as_object_mut().unwrap().remove("server");
        v["agent"][0]
            .as_object_mut()
            .unwrap()
            .remove("token_sha256");
        v["check"][0].as_object_mut().unwrap().remove("regions");
        assert_eq!(
            paths(v),
            ["server", "agent[0].token_file", "check[0].regions"]
        );
    }

    #[test]
    fn duplicates_are_refused() {
        let mut v = good();
        let a = v["agent"][0].clone();
        let c = v["check"][0].clone();
        v["agent"].as_array_mut().unwrap().push(a);
        v["check"].as_array_mut().unwrap().push(c);
        assert_eq!(paths(v), ["agent[1].name", "check[1].name"]);
    }

    /// A fleet of 10,000 declared agents: every duplicate name and every
    /// reused token is named, with the same words as for two agents, and
    /// the rest are kept.
    #[test]
    fn duplicates_among_ten_thousand_agents_are_each_named() {
        let mut v = good();
        let mut agents: Vec<Value> = (0..10_000)
            .map(|i| json!({"name": format!("a-{i}"), "region": format!("r-{}", i % 50), "token_sha256": format!("{i:064x}")}))
            .collect();
        agents[4_000]["name"] = json!("a-17");
        agents[9_999]["token_sha256"] = json!(format!("{:064x}", 3));
        v["agent"] = Value::Array(agents);
        let issues = CoordinatorConfig::from_value(&v, &env).unwrap_err();
        let said: Vec<(String, String)> = issues.into_iter().map(|i| (i.path, i.message)).collect();
        assert_eq!(
            said,
            [
                ("agent[4000].name".to_string(), "duplicate agent name \"a-17\"".to_string()),
                ("agent[9999].token_sha256".to_string(), "the same token is already given to another agent".to_string()),
            ]
        );
        v["agent"][4_000]["name"] = json!("a-4000");
        v["agent"][9_999]["token_sha256"] = json!(format!("{:064x}", 9_999));
        assert_eq!(CoordinatorConfig::from_value(&v, &env).unwrap().agents.len(), 10_000);
    }

    /// A region listed twice is named at its second place, among 10,000.
    #[test]
    fn a_region_listed_twice_is_named() {
        let mut v = good();
        let mut regions: Vec<Value> = (0..10_000).map(|i| json!(format!("r-{i}"))).collect();
        regions[9_000] = json!("r-42");
        v["check"][0]["regions"] = Value::Array(regions);
        let issues = CoordinatorConfig::from_value(&v, &env).unwrap_err();
        let said: Vec<(String, String)> = issues.into_iter().map(|i| (i.path, i.message)).collect();
        assert_eq!(said, [("check[0].regions[9000]".to_string(), "\"r-42\" is listed twice".to_string())]);
    }

    #[test]
    fn full_table_round_trips() {
        let c = CoordinatorConfig::from_value(&good(), &env).unwrap();
        let rules = c.server.check_rules();
        let again = check_spec("body", &c.checks[0].full_table(), rules).unwrap();
        assert_eq!(again, c.checks[0]);
    }

    /// What config keeps of an agent token is its SHA-256 (lowercase hex,
    /// from `token_file` or given as `token_sha256` in any case), never the
    /// token; the hub then lets in exactly that token: not a wrong one, not
    /// one differing in case or by whitespace, and not the stored hash
    /// presented as if it were the token.
    #[test]
    fn agent_tokens_are_kept_only_as_their_hash_and_only_the_token_opens() {
        use crate::cluster::hub::{AuthError, Hub};
        use crate::storage::{Source, StoredAgent};
        let eu_token = "agent-eu-1-token-0123456789";
        let us_token = "agent-us-1-token-9876543210";
        // `sha256sum` of each token, computed outside this code.
        let eu_hash = "e93589f0f274320fadbdaeb1f0ec44ba0bcabba76d68ca49297535df2bdc93d6";
        let us_hash_upper = "9D414FF9DE82CE2DEBADC07C63BD1BBCD1D2C8C1B78B6B692E07C1D8F8AEC03A";
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("eu-1.token");
        std::fs::write(&token_file, format!("{eu_token}\n")).unwrap();
        let mut v = good();
        v["agent"] = json!([
            {"name": "eu-1", "region": "eu-west", "token_file": token_file.to_str().unwrap()},
            {"name": "us-1", "region": "us-east", "token_sha256": us_hash_upper},
        ]);
        let c = CoordinatorConfig::from_value(&v, &env).unwrap();
        assert_eq!(c.agents[0].token_sha256, eu_hash);
        assert_eq!(c.agents[1].token_sha256, us_hash_upper.to_ascii_lowercase());
        let debug = format!("{c:?}");
        assert!(
            !debug.contains(eu_token),
            "the token itself is kept: {debug}"
        );

        let stored = c
            .agents
            .iter()
            .map(|a| StoredAgent {
                name: a.name.clone(),
                region: a.region.clone(),
                token_sha256: a.token_sha256.clone(),
                source: Source::Config,
                revoked: false,
                version: None,
                last_seen_ms: None,
                connected: false,
                created_at_ms: 0,
                previous_token_sha256: None,
                previous_token_until_ms: None,
                token_in_use: false,
            })
            .collect();
        let hub = Hub::new(vec![], stored);
        let who = hub.authenticate(Some(eu_token)).unwrap();
        assert_eq!(
            (who.name.as_str(), who.region.as_str()),
            ("eu-1", "eu-west")
        );
        assert_eq!(hub.authenticate(Some(us_token)).unwrap().name, "us-1");
        for wrong in [
            "agent-eu-1-token-0123456788",
            "AGENT-EU-1-TOKEN-0123456789",
            "agent-eu-1-token-0123456789\n",
            eu_hash,
        ] {
            assert!(
                matches!(hub.authenticate(Some(wrong)), Err(AuthError::Unknown)),
                "{wrong:?} let in"
            );
        }
        assert!(matches!(hub.authenticate(None), Err(AuthError::Missing)));
        assert!(matches!(
            hub.authenticate(Some("")),
            Err(AuthError::Missing)
        ));
    }

    #[test]
    fn api_tokens_have_a_name_a_role_and_their_own_value() {
        let mut v = good();
        let grafana = "cd".repeat(32);
        v["token"] = json!([
            {"name": "grafana", "role": "read", "token_sha256": grafana},
            {"name": "ops", "role": "admin", "token_sha256": "ef".repeat(32)},
        ]);
        let c = CoordinatorConfig::from_value(&v, &env).unwrap();
        let all = c.api_tokens();
        assert_eq!(
            all.iter()
                .map(|t| (t.name.as_str(), t.role))
                .collect::<Vec<_>>(),
            [
                ("admin", Role::Admin),
                ("grafana", Role::Read),
                ("ops", Role::Admin)
            ]
        );
        assert_eq!(all[0].sha256, token_sha256("an-admin-token-long-enough"));

        // Every bad key at once.
        v["token"] = json!([
            {"name": "admin", "role": "read", "token_sha256": "01".repeat(32)},
            {"name": "grafana", "role": "viewer", "token_sha256": grafana, "colour": "blue"},
            {"name": "a", "role": "read"},
            {"name": "b", "role": "read", "token_sha256": "ab".repeat(32)},
            {"name": "c", "role": "read", "token_sha256": token_sha256("an-admin-token-long-enough")},
            {"name": "d", "token_sha256": "02".repeat(32)},
        ]);
        assert_eq!(
            paths(v),
            [
                "token[0].name",
                "token[1].role",
                "token[1].colour",
                "token[2].token_file",
                "token[3].token_file",
                "token[4].token_file",
                "token[5].role",
            ]
        );
    }

    #[test]
    fn a_token_file_is_kept_only_as_the_sha256sum_of_its_text() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("grafana.token");
        // As `head -c 24 /dev/urandom | base64 > file` leaves it: a newline at the end.
        std::fs::write(&file, "grafana-token-0123456789\n").unwrap();
        let mut v = good();
        v["token"] = json!([{"name": "grafana", "role": "read", "token_file": file}]);
        let c = CoordinatorConfig::from_value(&v, &env).unwrap();
        // `printf %s grafana-token-0123456789 | sha256sum`: what token_sha256 = takes too.
        let sum = "0baf21be76cc9f463e9d4a2eac315952da8c4c568916430b0813db17cb3be5aa";
        assert_eq!(c.tokens[0].sha256, sum);
        v["token"] =
            json!([{"name": "grafana", "role": "read", "token_sha256": sum.to_uppercase()}]);
        let by_sum = CoordinatorConfig::from_value(&v, &env).unwrap();
        assert_eq!(by_sum.tokens, c.tokens, "the same token either way");
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("grafana-token") && !shown.contains("an-admin-token"),
            "{shown}"
        );
    }
}
