//! `mailloopctl`: the SRE's CLI over the coordinator's admin API.
//!
//! Every table says why: a degraded report's reasons, a failure's step,
//! class and reply, the judge's note for a verdict that is not `up` — the
//! same content as `-o json`, never less. Fields a newer coordinator adds
//! (a region's `detail`) are shown when present.
//!
//! The token comes from `$MAILLOOP_TOKEN` or `--token-file`, never from the
//! command line, and never goes over plain HTTP to a host that is not
//! loopback. One exit-code table for every subcommand: see [`AFTER_HELP`].

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use mailloop_common::Secret;
use mailloop_coordinator::client::{ApiResponse, Client, ClientError};
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Exit codes, the same for every subcommand.
mod exit {
    /// `probe`: a region delivered, but degraded.
    pub const DEGRADED: u8 = 1;
    /// `probe`: a region failed, timed out or has no agent.
    pub const FAILED: u8 = 2;
    /// Bad arguments or local configuration (file, URL, token source).
    pub const USAGE: u8 = 3;
    /// The coordinator refused or failed the request.
    pub const REFUSED: u8 = 4;
    /// No token, or the coordinator refused the token or its role.
    pub const AUTH: u8 = 5;
    /// The coordinator could not be reached or is not the admin API.
    pub const UNREACHABLE: u8 = 6;
}

const AFTER_HELP: &str = "\
Token: from $MAILLOOP_TOKEN or --token-file FILE (which wins), never from the
command line (--token is refused: it would show in the process list). A token
is never sent over http:// to a host that is not loopback: use https://.

Exit codes (every subcommand):
  0  done; for `probe`, every region delivered
  1  `probe`: a region delivered but was degraded
  2  `probe`: a region failed, timed out or has no agent
  3  usage or local configuration: bad arguments, unreadable or invalid file,
     bad URL, --token given, a token that would go over http:// off loopback
  4  the coordinator refused or failed the request (the reason is printed)
  5  no token, or the coordinator refused the token (401) or its role (403)
  6  the coordinator could not be reached, or the URL is not its admin API
     (wrong port, TLS mismatch, timeout, answer over 64 MiB)
A closed stdout (`mailloopctl ... | head`) ends mailloopctl quietly with 0.";

#[derive(Parser)]
#[command(
    name = "mailloopctl",
    version,
    about = "Manage a mailloop coordinator: checks, agents, results, incidents, status",
    after_help = AFTER_HELP
)]
struct Cli {
    /// The coordinator's admin API (its http_listen, not the agents' grpc_listen).
    #[arg(
        long,
        env = "MAILLOOP_URL",
        default_value = "http://127.0.0.1:7480",
        global = true
    )]
    url: String,
    /// Read the admin token from FILE (its first line). Without it: $MAILLOOP_TOKEN.
    #[arg(long, value_name = "FILE", global = true)]
    token_file: Option<PathBuf>,
    /// Refused with a hint: a token on the command line is in the process list.
    #[arg(
        long,
        hide = true,
        global = true,
        num_args = 0..=1,
        allow_hyphen_values = true
    )]
    token: Option<Option<String>>,
    /// Extra CA certificate (PEM) to trust for an https:// URL.
    #[arg(long, env = "MAILLOOP_CA_FILE", global = true)]
    ca_file: Option<PathBuf>,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Checks: list, show, apply, delete.
    #[command(subcommand)]
    Checks(ChecksCmd),
    /// Agents: list, add, revoke, rotate.
    #[command(subcommand)]
    Agents(AgentsCmd),
    /// Recent results of a check, newest first, each with why it was not ok.
    Results {
        check: String,
        #[arg(long)]
        region: Option<String>,
        /// How far back: a duration ("1h", "30m") or an RFC 3339 time.
        #[arg(long, default_value = "1h")]
        since: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// The latest round of a check in every region, with each region's steps
    /// and why it was degraded or failed.
    Latest { check: String },
    /// Run a check now in every region and print each region's steps as its
    /// report arrives. Exits 0 if every region delivered, 1 if any was
    /// degraded, 2 if any failed, timed out or has no agent (3 to 6 as for
    /// every subcommand when the run could not be asked for).
    Probe {
        check: String,
        /// How long to wait for the regions' reports.
        #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Incidents the judge opened: list, show (summary and timeline), ack.
    #[command(subcommand)]
    Incidents(IncidentsCmd),
    /// Every check's current verdict, region by region, why, and its active
    /// incidents: one screen.
    Status,
    /// API tokens (admin): list, add (written to a new 0600 file), revoke.
    #[command(subcommand)]
    Tokens(TokensCmd),
    /// The audit log (admin): who changed what, from where, newest first.
    Audit {
        /// Only this token name's changes.
        #[arg(long)]
        actor: Option<String>,
        /// Only changes to check, agent, incident or token objects.
        #[arg(long)]
        object: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

#[derive(Subcommand)]
enum TokensCmd {
    /// Every API token: name, role, where it comes from (config or api).
    List,
    /// Make a token with a role and write it to a new file only you can
    /// read (0600); it is never printed, and the coordinator keeps only its
    /// SHA-256.
    Add {
        name: String,
        /// read: every read, no secrets (dashboards); admin: everything.
        #[arg(long, value_parser = ["read", "admin"])]
        role: String,
        /// The file to write (default NAME.token); an existing file is
        /// never overwritten.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Revoke a token made with `add`: it stops working at once.
    Revoke { name: String },
}

#[derive(Subcommand)]
enum ChecksCmd {
    List,
    /// Print a check as a file `checks apply -f` takes back unchanged
    /// (TOML `[[check]]`; with `-o json`, JSON).
    Show {
        id: String,
    },
    /// Create or update every check of a file (TOML or JSON).
    #[command(after_help = APPLY_HELP)]
    Apply {
        /// The file: `.toml` or `.json` (otherwise told apart by its content).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    Delete {
        id: String,
    },
}

const APPLY_HELP: &str = r#"File format: the checks of coordinator.toml, that is the probe's [[check]]
table plus `interval` and `regions`. Passwords only as password_env or
password_file (resolved by the agents).

TOML, one [[check]] per check:
  [[check]]
  name = "corp"
  interval = "1m"
  regions = ["eu-west", "us-east"]
  from = "probe@sender.example"
  to = "probe@receiver.example"
  [check.smtp]
  host = "smtp.sender.example"
  username = "probe@sender.example"
  password_env = "SMTP_PASS"
  [check.imap]
  host = "imap.receiver.example"
  username = "probe@receiver.example"
  password_env = "IMAP_PASS"

JSON, the same tables: {"check": [{"name": "corp", "interval": "1m",
  "regions": ["eu-west"], "smtp": {...}, "imap": {...}, ...}]}, a single
  check object, or an array of them.

`mailloopctl checks show ID` prints a check in this format (TOML; JSON with
-o json), ready to edit and apply again. A check that is unchanged keeps its
revision; one declared in coordinator.toml is refused (edit the file)."#;

#[derive(Subcommand)]
enum AgentsCmd {
    List,
    /// Create an agent and print the one command to run on its machine:
    /// `mailloop-agent enroll 'mlj1.…'` (a single-use join token that
    /// carries the coordinator's URL and certificate fingerprint). With
    /// --show-token or --write-token, the agent's token itself instead.
    Add {
        name: String,
        #[arg(long)]
        region: String,
        /// How long the join token stays valid (default: the coordinator's
        /// join_token_ttl, 1h).
        #[arg(long, value_name = "DURATION", conflicts_with_all = ["write_token", "show_token"])]
        ttl: Option<String>,
        /// Print the agent's token (shown only this once) instead of an
        /// enroll command, for an agent.toml written by hand.
        #[arg(long, conflicts_with = "write_token")]
        show_token: bool,
        /// Write the agent's token to FILE instead of an enroll command:
        /// created with mode 0600 (replacing FILE if it exists), ready as
        /// the agent's token_file.
        #[arg(long, value_name = "FILE")]
        write_token: Option<PathBuf>,
    },
    /// Revoke an agent's token; its checks move to the region's other agents.
    Revoke {
        name: String,
    },
    /// Give an agent a new token: the running agent gets it over its
    /// connection and keeps it in its spool; the current token keeps
    /// working for the grace period, then stops.
    Rotate {
        name: String,
        /// How long the current token keeps working.
        #[arg(long, value_name = "DURATION", default_value = "1h")]
        grace: String,
    },
}

/// Why mailloopctl stops: an exit code from [`exit`] and one message.
#[derive(Debug)]
struct Fail {
    code: u8,
    message: String,
}

impl Fail {
    fn new(code: u8, message: impl Into<String>) -> Fail {
        Fail {
            code,
            message: message.into(),
        }
    }

    fn usage(message: impl Into<String>) -> Fail {
        Fail::new(exit::USAGE, message)
    }

    fn refused(message: impl Into<String>) -> Fail {
        Fail::new(exit::REFUSED, message)
    }
}

// ---------------------------------------------------------------------------
// Output: a closed stdout ends the program quietly; stderr never panics.
// ---------------------------------------------------------------------------

/// `println!` that exits quietly when stdout is closed (`| head`).
macro_rules! out {
    () => { emit(String::from("\n")) };
    ($($arg:tt)*) => { emit(format!("{}\n", format_args!($($arg)*))) };
}

/// `eprintln!` that never panics (a closed stderr loses the message).
macro_rules! warn {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

fn emit(text: String) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            // The reader has what it wanted; nothing to say.
            std::process::exit(0);
        }
        warn!("mailloopctl: cannot write to stdout: {e}");
        std::process::exit(exit::USAGE.into());
    }
}

fn main() -> ExitCode {
    let matches = match Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e) => {
            // --help and --version go to stdout and are not errors.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { exit::USAGE } else { 0 });
        }
    };
    let url_source = match matches.value_source("url") {
        Some(ValueSource::CommandLine) => "--url",
        Some(ValueSource::EnvVariable) => "$MAILLOOP_URL",
        _ => "the default (set MAILLOOP_URL or --url)",
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(exit::USAGE);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli, url_source)) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            warn!("mailloopctl: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// Where the token came from, as messages name it.
struct Token {
    secret: Secret,
    source: String,
}

/// The token: `--token-file` if given, else `$MAILLOOP_TOKEN`; `--token` is refused.
fn token(cli: &Cli) -> Result<Option<Token>, Fail> {
    if cli.token.is_some() {
        return Err(Fail::usage(
            "--token is refused: a token on the command line is visible to every user in the process list (ps, /proc/PID/cmdline); set MAILLOOP_TOKEN or use --token-file FILE (mode 0600)",
        ));
    }
    if let Some(path) = &cli.token_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Fail::usage(format!("--token-file {}: {e}", path.display())))?;
        warn_if_others_read(path);
        let value = text.lines().next().unwrap_or("").trim().to_string();
        if value.is_empty() {
            return Err(Fail::usage(format!(
                "--token-file {}: the file is empty",
                path.display()
            )));
        }
        return Ok(Some(Token {
            secret: Secret::new(value),
            source: format!("--token-file {}", path.display()),
        }));
    }
    match std::env::var("MAILLOOP_TOKEN") {
        Ok(v) if !v.trim().is_empty() => Ok(Some(Token {
            secret: Secret::new(v.trim().to_string()),
            source: "$MAILLOOP_TOKEN".into(),
        })),
        Ok(_) | Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(Fail::usage(
            "$MAILLOOP_TOKEN is not valid UTF-8; a token is printable text",
        )),
    }
}

/// A token file others can read is a leak waiting to happen: say so (once,
/// on stderr) and go on.
fn warn_if_others_read(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            warn!(
                "mailloopctl: warning: --token-file {0} is readable by others (mode {mode:o}): chmod 600 {0}",
                path.display()
            );
        }
    }
}

/// The API client with what error messages need to say where things came from.
struct Ctl {
    api: Client,
    token_source: Option<String>,
    url_source: &'static str,
}

impl Ctl {
    /// A request's answer, whatever its status; a failure to get one (or a
    /// refused token) is a [`Fail`].
    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<ApiResponse, Fail> {
        let method = method.parse().expect("a valid method");
        let r = self
            .api
            .send(method, path, body)
            .await
            .map_err(|e| self.client_fail(e))?;
        match r.status {
            401 => Err(Fail::new(
                exit::AUTH,
                match &self.token_source {
                    None => format!(
                        "no token: set MAILLOOP_TOKEN or --token-file (the coordinator answered 401: {})",
                        api_error(&r)
                    ),
                    Some(src) => format!(
                        "the coordinator refused the token from {src} (401): {}",
                        api_error(&r)
                    ),
                },
            )),
            403 => Err(Fail::new(
                exit::AUTH,
                match &self.token_source {
                    None => format!(
                        "no token: set MAILLOOP_TOKEN or --token-file (the coordinator answered 403: {})",
                        api_error(&r)
                    ),
                    Some(src) => format!(
                        "the token from {src} may not do this (403): {}",
                        api_error(&r)
                    ),
                },
            )),
            // The admin API answers an unknown path in JSON; a page that is
            // not JSON comes from some other server.
            404 if r.body.is_string() => Err(Fail::new(
                exit::UNREACHABLE,
                format!(
                    "{path}: the server at the URL answered 404 with a body that is not JSON: is it mailloop's admin API (http_listen)? [URL from {}]",
                    self.url_source
                ),
            )),
            _ => Ok(r),
        }
    }

    /// The body of a successful answer; any other status is a [`Fail`].
    async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, Fail> {
        let r = self.send(method, path, body).await?;
        if r.is_success() {
            Ok(r.body)
        } else {
            Err(Fail::refused(r.error_text()))
        }
    }

    async fn get(&self, path: &str) -> Result<Value, Fail> {
        self.call("GET", path, None).await
    }

    fn client_fail(&self, e: ClientError) -> Fail {
        if e.is_local() {
            return Fail::usage(e.to_string());
        }
        let hint = match e {
            ClientError::Connect { .. } | ClientError::WrongPort(_) | ClientError::Tls { .. } => {
                format!(" [URL from {}]", self.url_source)
            }
            _ => String::new(),
        };
        Fail::new(exit::UNREACHABLE, format!("{e}{hint}"))
    }
}

/// The API's `error` text alone (without the status).
fn api_error(r: &ApiResponse) -> String {
    r.body
        .get("error")
        .and_then(Value::as_str)
        .map_or_else(|| text(&r.body), str::to_string)
}

async fn run(cli: Cli, url_source: &'static str) -> Result<u8, Fail> {
    let token = token(&cli)?;
    let token_source = token.as_ref().map(|t| t.source.clone());
    let label = token_source
        .as_ref()
        .map_or_else(String::new, |s| format!("the token from {s}"));
    let api = Client::with_token(
        &cli.url,
        token.map(|t| t.secret),
        &label,
        cli.ca_file.as_deref(),
    )
    .map_err(|e| Fail::usage(e.to_string()))?;
    let ctl = Ctl {
        api,
        token_source,
        url_source,
    };
    let out = cli.output;
    match cli.command {
        Command::Checks(cmd) => checks(&ctl, cmd, out).await?,
        Command::Agents(cmd) => agents(&ctl, cmd, out).await?,
        Command::Results {
            check,
            region,
            since,
            limit,
        } => results(&ctl, &check, region, &since, limit, out).await?,
        Command::Incidents(cmd) => incidents(&ctl, cmd, out).await?,
        Command::Status => status(&ctl, out).await?,
        Command::Probe { check, timeout } => return probe(&ctl, &check, timeout, out).await,
        Command::Latest { check } => latest(&ctl, &check, out).await?,
        Command::Tokens(cmd) => tokens(&ctl, cmd, out).await?,
        Command::Audit {
            actor,
            object,
            limit,
        } => audit(&ctl, actor, object, limit, out).await?,
    }
    Ok(0)
}

async fn checks(ctl: &Ctl, cmd: ChecksCmd, out: Output) -> Result<(), Fail> {
    match cmd {
        ChecksCmd::List => {
            let body = ctl.get("/api/v1/checks").await?;
            let checks = body["checks"].as_array().cloned().unwrap_or_default();
            if out == Output::Json {
                print_json(&Value::Array(checks));
                return Ok(());
            }
            let rows = checks
                .iter()
                .map(|c| {
                    let assigned = c["assigned"]
                        .as_object()
                        .map(|m| {
                            m.iter()
                                .map(|(r, a)| format!("{r}={}", a.as_str().unwrap_or("-")))
                                .collect::<Vec<_>>()
                                .join(" ")
                        })
                        .unwrap_or_default();
                    vec![
                        text(&c["id"]),
                        text(&c["revision"]),
                        text(&c["interval"]),
                        assigned,
                        text(&c["source"]),
                    ]
                })
                .collect();
            table(
                &["CHECK", "REV", "INTERVAL", "REGIONS (AGENT)", "SOURCE"],
                rows,
            );
        }
        ChecksCmd::Show { id } => {
            let body = ctl.get(&format!("/api/v1/checks/{}", seg(&id))).await?;
            if out == Output::Json {
                print_json(&body);
                return Ok(());
            }
            out!(
                "# revision {}, {} (updated {})",
                text(&body["revision"]),
                text(&body["source"]),
                text(&body["updated_at"])
            );
            let doc = json!({"check": [body["check"].clone()]});
            let rendered = serde_json::from_value::<toml::Value>(doc)
                .map_err(|e| e.to_string())
                .and_then(|v| toml::to_string_pretty(&v).map_err(|e| e.to_string()))
                .map_err(|e| {
                    Fail::refused(format!(
                        "the check is not representable as TOML ({e}); use -o json"
                    ))
                })?;
            emit(rendered);
        }
        ChecksCmd::Apply { file } => apply(ctl, &file).await?,
        ChecksCmd::Delete { id } => {
            let body = ctl
                .call("DELETE", &format!("/api/v1/checks/{}", seg(&id)), None)
                .await?;
            out!("{id}: deleted (revision {})", text(&body["revision"]));
        }
    }
    Ok(())
}

/// `checks apply -f FILE`: every check of a TOML or JSON file, one PUT each.
async fn apply(ctl: &Ctl, file: &Path) -> Result<(), Fail> {
    let content = std::fs::read_to_string(file)
        .map_err(|e| Fail::usage(format!("cannot read {}: {e}", file.display())))?;
    let checks = checks_of_file(file, &content)
        .map_err(|e| Fail::usage(format!("{}: {e}", file.display())))?;
    let mut failed = Vec::new();
    for (i, check) in checks.iter().enumerate() {
        let Some(name) = check.get("name").and_then(Value::as_str) else {
            failed.push(format!("check[{i}].name: required"));
            continue;
        };
        let r = ctl
            .send("PUT", &format!("/api/v1/checks/{}", seg(name)), Some(check))
            .await?;
        if r.is_success() {
            out!(
                "{name}: {} (revision {})",
                text(&r.body["change"]),
                text(&r.body["revision"])
            );
        } else {
            // The API says "body.smtp.port"; say where it is in the file.
            failed.push(
                r.error_text()
                    .replace("body.", &format!("check[{i}]."))
                    .replace("body:", &format!("check[{i}]:")),
            );
        }
    }
    if failed.is_empty() {
        return Ok(());
    }
    Err(Fail::refused(format!(
        "{} of {} checks refused:\n{}",
        failed.len(),
        checks.len(),
        failed.join("\n")
    )))
}

/// The check tables of a file: JSON when it is named `.json` or looks like
/// JSON (`{`, or `[` followed by `{` or `]`), TOML otherwise.
fn checks_of_file(file: &Path, content: &str) -> Result<Vec<Value>, String> {
    let ext = file
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let trimmed = content.trim_start();
    let looks_json = trimmed.starts_with('{')
        || trimmed
            .strip_prefix('[')
            .is_some_and(|rest| rest.trim_start().starts_with(['{', ']']));
    let is_json = match ext.as_deref() {
        Some("json") => true,
        Some("toml") => false,
        _ => looks_json,
    };
    if is_json {
        let doc: Value =
            serde_json::from_str(content).map_err(|e| format!("not valid JSON: {e}"))?;
        return checks_of_json(doc);
    }
    let doc = mailloop_coordinator::config::parse_toml(content)
        .map_err(|e| format!("not valid TOML: {e}"))?;
    match doc.get("check") {
        Some(Value::Array(list)) => Ok(list.clone()),
        _ => Err("no [[check]] tables (see `mailloopctl checks apply --help`)".into()),
    }
}

/// `{"check": [...]}`, `{"check": {...}}` (what `checks show -o json`
/// prints), one check object, or an array of either.
fn checks_of_json(doc: Value) -> Result<Vec<Value>, String> {
    let shape = "expected {\"check\": [{...}, ...]}, one check object, or an array of checks (see `mailloopctl checks apply --help`)";
    let one = |v: Value| -> Result<Value, String> {
        match v {
            Value::Object(ref m) if m.contains_key("name") => Ok(v),
            Value::Object(mut m) => match m.remove("check") {
                Some(c @ Value::Object(_)) => Ok(c),
                _ => Err(shape.to_string()),
            },
            _ => Err(shape.to_string()),
        }
    };
    match doc {
        Value::Object(mut m) if m.get("check").is_some_and(Value::is_array) => Ok(m
            .remove("check")
            .and_then(|c| c.as_array().cloned())
            .unwrap_or_default()),
        Value::Array(list) if list.is_empty() => Err("no checks in the file".into()),
        Value::Array(list) => list.into_iter().map(one).collect(),
        other => one(other).map(|c| vec![c]),
    }
}

async fn agents(ctl: &Ctl, cmd: AgentsCmd, out: Output) -> Result<(), Fail> {
    match cmd {
        AgentsCmd::List => {
            let body = ctl.get("/api/v1/agents").await?;
            let agents = body["agents"].as_array().cloned().unwrap_or_default();
            if out == Output::Json {
                print_json(&Value::Array(agents));
                return Ok(());
            }
            let rows = agents
                .iter()
                .map(|a| {
                    let state = if a["revoked"] == true {
                        "revoked".to_string()
                    } else if a["connected"] == true {
                        "connected".to_string()
                    } else {
                        "disconnected".to_string()
                    };
                    vec![
                        text(&a["name"]),
                        text(&a["region"]),
                        state,
                        text(&a["assigned_checks"]),
                        text(&a["spooled"]),
                        text(&a["version"]),
                        match a["disconnected_at"].as_str() {
                            Some(d) if a["connected"] != true => {
                                format!(
                                    "{} (disconnected {})",
                                    text(&a["last_seen"]),
                                    when(&json!(d))
                                )
                            }
                            _ => text(&a["last_seen"]),
                        },
                        a["clock_skew_ms"]
                            .as_f64()
                            .map(|ms| format!("{:+.1} s", ms / 1000.0))
                            .unwrap_or_default(),
                        text(&a["source"]),
                    ]
                })
                .collect();
            table(
                &[
                    "AGENT",
                    "REGION",
                    "STATE",
                    "CHECKS",
                    "SPOOLED",
                    "VERSION",
                    "LAST SEEN",
                    "CLOCK",
                    "SOURCE",
                ],
                rows,
            );
        }
        AgentsCmd::Add {
            name,
            region,
            ttl,
            show_token,
            write_token,
        } => {
            if !show_token && write_token.is_none() {
                let mut req = json!({"name": name, "region": region, "enroll": true});
                if let Some(ttl) = &ttl {
                    req["ttl"] = json!(ttl);
                }
                let body = ctl.call("POST", "/api/v1/agents", Some(&req)).await?;
                if out == Output::Json {
                    print_json(&body);
                } else {
                    let expires = body["join_expires_at_ms"]
                        .as_i64()
                        .and_then(chrono::DateTime::from_timestamp_millis)
                        .map_or_else(
                            || "?".to_string(),
                            |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                        );
                    warn!(
                        "agent {name} added in region {region}. On its machine, run this once before {expires} (it works once; keep it secret until then):"
                    );
                    out!("{}", text(&body["command"]));
                }
                return Ok(());
            }
            // The file is made before the agent, so a token is never issued
            // that cannot be kept.
            let pending = write_token.as_deref().map(TokenFile::create).transpose()?;
            let body = ctl
                .call(
                    "POST",
                    "/api/v1/agents",
                    Some(&json!({"name": name, "region": region})),
                )
                .await?;
            let token = text(&body["token"]);
            let Some(pending) = pending else {
                if out == Output::Json {
                    print_json(&body);
                } else {
                    out!(
                        "agent {name} added in region {region}. Its token (shown only now; put it in the agent's token_file):"
                    );
                    out!("{token}");
                }
                return Ok(());
            };
            let path = pending.commit(&token).map_err(|e| {
                Fail::usage(format!(
                    "agent {name} was added, but its token could not be written: {e}; revoke it (mailloopctl agents revoke {name}) and add it again"
                ))
            })?;
            if out == Output::Json {
                let mut shown = body.clone();
                if let Some(m) = shown.as_object_mut() {
                    m.remove("token");
                    m.insert("token_file".into(), json!(path.display().to_string()));
                }
                print_json(&shown);
            } else {
                out!(
                    "agent {name} added in region {region}; its token is in {} (mode 0600): the agent's token_file",
                    path.display()
                );
            }
        }
        AgentsCmd::Revoke { name } => {
            ctl.call(
                "POST",
                &format!("/api/v1/agents/{}/revoke", seg(&name)),
                Some(&json!({})),
            )
            .await?;
            out!("{name}: revoked");
        }
        AgentsCmd::Rotate { name, grace } => {
            let body = ctl
                .call(
                    "POST",
                    &format!("/api/v1/agents/{}/rotate", seg(&name)),
                    Some(&json!({"grace": grace})),
                )
                .await?;
            if out == Output::Json {
                print_json(&body);
            } else {
                let until = body["previous_token_valid_until"].as_str().unwrap_or("?");
                let how = if body["agent"]["connected"] == true {
                    "it is connected and gets the new one now"
                } else {
                    "it is not connected: it gets the new one when it connects (before then, or it must be enrolled again)"
                };
                out!("{name}: token rotated; the current one works until {until}; {how}");
            }
        }
    }
    Ok(())
}

/// A token file on its way: a mode-0600 temporary file beside the target,
/// renamed over it once the token is written (removed if never committed).
struct TokenFile {
    target: PathBuf,
    temp: PathBuf,
    file: Option<std::fs::File>,
}

impl TokenFile {
    fn create(target: &Path) -> Result<TokenFile, Fail> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = target.file_name().ok_or_else(|| {
            Fail::usage(format!(
                "--write-token {}: not a file name",
                target.display()
            ))
        })?;
        let temp = dir.join(format!(
            ".{}.{}.tmp",
            name.to_string_lossy(),
            std::process::id()
        ));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map_err(|e| Fail::usage(format!("--write-token {}: {e}", target.display())))?;
        Ok(TokenFile {
            target: target.to_path_buf(),
            temp,
            file: Some(file),
        })
    }

    fn commit(mut self, token: &str) -> std::io::Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let mut file = self.file.take().expect("not committed yet");
        file.write_all(format!("{token}\n").as_bytes())?;
        // The umask can only take bits away; make sure nothing else was given.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.sync_all()?;
        std::fs::rename(&self.temp, &self.target)?;
        Ok(self.target.clone())
    }
}

impl Drop for TokenFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.temp);
    }
}

async fn results(
    ctl: &Ctl,
    check: &str,
    region: Option<String>,
    since: &str,
    limit: u32,
    out: Output,
) -> Result<(), Fail> {
    let mut path = format!(
        "/api/v1/checks/{}/results?since={}&limit={limit}",
        seg(check),
        seg(since)
    );
    if let Some(r) = &region {
        path.push_str(&format!("&region={}", seg(r)));
    }
    let body = ctl.get(&path).await?;
    let results = body["results"].as_array().cloned().unwrap_or_default();
    if out == Output::Json {
        // One result per line, like `mailloop-agent probe --output json`.
        for r in &results {
            out!("{r}");
        }
        return Ok(());
    }
    if results.is_empty() {
        out!(
            "no results for {check} since {since}{}",
            region.map(|r| format!(" in {r}")).unwrap_or_default()
        );
        return Ok(());
    }
    let rows = results
        .iter()
        .map(|r| {
            vec![
                text(&r["started_at"]),
                text(&r["region"]),
                text(&r["agent"]),
                match r["out_of_window"].as_str() {
                    // Round sanity: stored as evidence, never judged.
                    Some(w) => format!("{} ({w})", text(&r["round"])),
                    None => text(&r["round"]),
                },
                text(&r["outcome"]),
                ms(&r["rtt_ms"]),
                ms(&r["delivery_ms"]),
                why(r),
            ]
        })
        .collect();
    table(
        &[
            "STARTED", "REGION", "AGENT", "ROUND", "OUTCOME", "RTT", "DELIVERY", "WHY",
        ],
        rows,
    );
    Ok(())
}

/// Why a stored result is not ok, in one line: the failure (step, class,
/// reply) or the degraded report's reasons. Empty for an ok result.
fn why(result: &Value) -> String {
    let report = &result["report"];
    if let Some(f) = report["failure"].as_object() {
        return failure_text(f);
    }
    if let Some(f) = result["failure"].as_object() {
        // A report the coordinator could not parse still has its columns.
        return format!("failed at {} ({})", text(&f["step"]), text(&f["class"]));
    }
    strings(&report["reasons"]).join("; ")
}

/// `failed at smtp.rcpt_to (permanent 550 5.1.1): <reply>`.
fn failure_text(f: &serde_json::Map<String, Value>) -> String {
    let get = |k: &str| f.get(k).map(text).unwrap_or_default();
    let mut class = get("class");
    for k in ["code", "enhanced"] {
        let v = get(k);
        if !v.is_empty() {
            class.push(' ');
            class.push_str(&v);
        }
    }
    format!(
        "failed at {} ({class}): {}",
        get("step"),
        one_line(&get("message"))
    )
}

/// The strings of a JSON array (empty when absent).
fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(text)
        .filter(|s| !s.is_empty())
        .collect()
}

/// A server reply or note on one line.
fn one_line(s: &str) -> String {
    s.split(['\r', '\n'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" / ")
}

async fn latest(ctl: &Ctl, check: &str, out: Output) -> Result<(), Fail> {
    let body = ctl
        .get(&format!("/api/v1/checks/{}/latest", seg(check)))
        .await?;
    if out == Output::Json {
        print_json(&body);
        return Ok(());
    }
    // Coordinators that keep on-demand runs apart give the newest one
    // beside the round (`on_demand`), and say which came last (`newest`).
    let run = body.get("on_demand").filter(|r| r.is_object());
    if body["round"].is_null() && run.is_none() {
        let detail = detail_of(&body)
            .map(|d| format!(" ({d})"))
            .unwrap_or_default();
        out!("{check}: no results yet{detail}");
        return Ok(());
    }
    if !body["round"].is_null() {
        let round = if body["round"] == 0 {
            "on-demand run".to_string()
        } else {
            format!("round {}", text(&body["round"]))
        };
        out!(
            "check {check}  {round}  started {}",
            text(&body["round_started_at"])
        );
        if let Some(d) = detail_of(&body) {
            out!("{d}");
        }
        print_regions(&body, "round");
    }
    if let Some(run) = run {
        let order = match body["newest"].as_str() {
            Some("on_demand") if !body["round"].is_null() => "  (newer than the round)",
            Some("round") => "  (older than the round)",
            _ => "",
        };
        if !body["round"].is_null() {
            out!();
        }
        out!(
            "check {check}  on-demand run {}  started {}{order}",
            text(&run["request_id"]),
            text(&run["started_at"])
        );
        print_regions(run, "run");
    }
    Ok(())
}

/// Each region of a round or run: its report, or why there is none.
fn print_regions(body: &Value, what: &str) {
    for region in body["regions"].as_array().into_iter().flatten() {
        let r = &region["result"];
        if r.is_null() {
            let detail = detail_of(region)
                .map(|d| format!(": {d}"))
                .unwrap_or_default();
            out!(
                "\n{}: no report for this {what}{detail}",
                text(&region["region"])
            );
            continue;
        }
        print_region_report(&text(&region["region"]), r);
    }
}

/// A `detail`, `reason` or `note` string the API gives for an object
/// (newer coordinators explain missing regions this way).
fn detail_of(v: &Value) -> Option<String> {
    ["detail", "reason", "note"]
        .iter()
        .filter_map(|k| v.get(*k).and_then(Value::as_str))
        .find(|s| !s.trim().is_empty())
        .map(one_line)
}

fn print_json(v: &Value) {
    out!(
        "{}",
        serde_json::to_string_pretty(v).expect("a JSON value serializes")
    );
}

/// A JSON scalar as plain text ("" for null).
fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn ms(v: &Value) -> String {
    v.as_f64().map(|m| format!("{m:.1} ms")).unwrap_or_default()
}

/// [`ms`], or `-` where there is no figure (a failed probe's round trip).
fn ms_or_dash(v: &Value) -> String {
    if v.is_number() { ms(v) } else { "-".into() }
}

/// Percent-encodes a path segment or query value.
fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Left-aligned columns, two spaces apart.
fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

// ---------------------------------------------------------------------------
// `mailloopctl probe CHECK`: an on-demand run in every region.
// ---------------------------------------------------------------------------

/// How often `probe` asks for the run's reports.
const PROBE_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// Orders the run, then prints each region's report as it is stored.
/// Returns the exit code: 0 every region ok, 1 some degraded, 2 some
/// failed, timed out or without an agent.
///
/// The run is one trace: a fresh W3C `traceparent` goes with the order, the
/// coordinator passes it on to the agents, and their probe spans are in
/// it; its trace id is printed so the whole run can be found in the
/// tracing backend (when the coordinator or the agents export traces).
async fn probe(
    ctl: &Ctl,
    check: &str,
    timeout: std::time::Duration,
    out: Output,
) -> Result<u8, Fail> {
    let traceparent = mailloop_common::telemetry::new_traceparent();
    let trace_id = traceparent.split('-').nth(1).unwrap_or_default().to_string();
    let traced = Ctl {
        api: ctl.api.clone().with_traceparent(traceparent),
        token_source: ctl.token_source.clone(),
        url_source: ctl.url_source,
    };
    let ordered = traced
        .call(
            "POST",
            &format!("/api/v1/checks/{}/run", seg(check)),
            Some(&json!({})),
        )
        .await
        .map_err(|f| Fail::new(f.code, format!("the run was not started: {}", f.message)))?;
    let request_id = text(&ordered["request_id"]);
    let regions: Vec<(String, Option<String>)> = ordered["regions"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(r, a)| (r.clone(), a.as_str().map(str::to_string)))
        .collect();
    let table_out = out == Output::Table;
    if table_out {
        out!("check {check}  on-demand run {request_id}");
        out!("  trace: {trace_id}");
        for (region, agent) in &regions {
            match agent {
                Some(a) => out!("  {region}: asked {a}"),
                None => {
                    out!("  {region}: NO AGENT connected in this region; it will not run there")
                }
            }
        }
    }
    let waiting_for = regions.iter().filter(|(_, a)| a.is_some()).count();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut arrived: std::collections::BTreeMap<String, Value> = Default::default();
    while arrived.len() < waiting_for && tokio::time::Instant::now() < deadline {
        match ctl.get(&format!("/api/v1/runs/{}", seg(&request_id))).await {
            Ok(body) => {
                for result in body["results"].as_array().into_iter().flatten() {
                    let region = text(&result["region"]);
                    if arrived.contains_key(&region) {
                        continue;
                    }
                    if table_out {
                        print_region_report(&region, result);
                    }
                    arrived.insert(region, result.clone());
                }
            }
            // A hiccup is not the end of the run: keep asking until the deadline.
            Err(f) => warn!("mailloopctl: reading the run's reports: {}", f.message),
        }
        if arrived.len() < waiting_for {
            tokio::time::sleep(PROBE_POLL).await;
        }
    }
    let mut code = 0u8;
    let mut verdicts = serde_json::Map::new();
    for (region, agent) in &regions {
        let verdict = match (agent, arrived.get(region)) {
            (None, _) => "no_agent".to_string(),
            (Some(_), None) => "timeout".to_string(),
            (Some(_), Some(r)) => text(&r["outcome"]),
        };
        code = code.max(match verdict.as_str() {
            "ok" => 0,
            "degraded" => exit::DEGRADED,
            _ => exit::FAILED,
        });
        if table_out && agent.is_some() && !arrived.contains_key(region) {
            out!(
                "\n{region}: NO REPORT within {} (agent {})",
                humantime::format_duration(timeout),
                agent.as_deref().unwrap_or("?")
            );
        }
        verdicts.insert(region.clone(), Value::String(verdict));
    }
    if table_out {
        let summary: Vec<String> = verdicts
            .iter()
            .map(|(r, v)| format!("{r}={}", text(v)))
            .collect();
        out!(
            "\nresult: {}  {}",
            ["OK", "DEGRADED", "FAILED"][code as usize],
            summary.join(" ")
        );
    } else {
        let body = json!({
            "request_id": request_id,
            "trace_id": trace_id,
            "check": check,
            "regions": ordered["regions"],
            "verdicts": verdicts,
            "results": arrived.values().collect::<Vec<_>>(),
        });
        out!("{body}");
    }
    Ok(code)
}

/// One region's report (of a round, or an on-demand run): its outcome
/// line, its steps, then why — the failure with its reply, every reason it
/// is degraded, and the diagnostics that qualify it (greylisting, an
/// authentication warning, an SPF walk that stopped).
fn print_region_report(region: &str, r: &Value) {
    let run = r["request_id"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(|id| format!("  (on-demand run {id})"))
        .unwrap_or_default();
    out!(
        "\n{region}: {} by {}  probe {}  rtt {}  delivery {}{run}",
        text(&r["outcome"]).to_uppercase(),
        text(&r["agent"]),
        text(&r["probe_id"]),
        ms_or_dash(&r["rtt_ms"]),
        ms_or_dash(&r["delivery_ms"])
    );
    let report = &r["report"];
    let steps = report["steps"].as_array().cloned().unwrap_or_default();
    let rows = steps
        .iter()
        .map(|s| {
            vec![
                format!("  {}", text(&s["name"])),
                ms(&s["ms"]),
                if s["ok"] == true {
                    "ok".into()
                } else {
                    "FAIL".into()
                },
                text(&s["code"]),
                text(&s["detail"]).chars().take(100).collect(),
            ]
        })
        .collect();
    table(&["  step", "time", "ok", "code", "detail"], rows);
    for line in report_why(r) {
        out!("  {line}");
    }
}

/// The lines under a report's steps that say why it is what it is.
fn report_why(r: &Value) -> Vec<String> {
    let report = &r["report"];
    let mut lines = Vec::new();
    match report["failure"].as_object() {
        Some(f) => {
            lines.push(failure_text(f));
            // The library's own words, when the message rephrases them.
            if let Some(raw) = f.get("raw").and_then(Value::as_str) {
                lines.push(format!("  raw: {}", one_line(raw)));
            }
        }
        None => {
            if let Some(f) = r["failure"].as_object() {
                lines.push(format!(
                    "failed at {} ({})",
                    text(&f["step"]),
                    text(&f["class"])
                ));
            }
        }
    }
    for reason in strings(&report["reasons"]) {
        lines.push(format!("degraded: {reason}"));
    }
    for warning in strings(&report["warnings"]) {
        lines.push(format!("warning: {}", one_line(&warning)));
    }
    if report["greylisted"] == true || report["greylist_ms"].is_number() {
        let attempts = report["attempts"].as_array().map_or(0, Vec::len);
        lines.push(format!(
            "greylist: {attempts} attempts, waited {}",
            ms(&report["greylist_ms"])
        ));
    }
    if let Some(w) = report["auth"]["warning"].as_str() {
        lines.push(format!("auth warning: {}", one_line(w)));
    }
    if let Some(e) = report["spf"]["error"].as_str() {
        lines.push(format!(
            "spf: {}: {}",
            text(&report["spf"]["domain"]),
            one_line(e)
        ));
    }
    lines
}

// ---------------------------------------------------------------------------
// The judge's commands: incidents and status.
// ---------------------------------------------------------------------------

#[derive(Subcommand)]
enum IncidentsCmd {
    /// Incidents, newest first.
    List {
        /// open, acknowledged, resolved, or active (open or acknowledged).
        #[arg(long)]
        state: Option<String>,
        /// outage, regional, performance, authentication, certificate, coverage, clock,
        /// placement or reputation.
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        check: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// One incident: its summary and the timeline of rounds that moved it.
    Show { id: u64 },
    /// Acknowledge an open incident (someone is on it); needs the admin token.
    /// Acknowledging twice changes nothing.
    Ack {
        id: u64,
        /// Who is on it (shown in the timeline and sent to the alert channels).
        #[arg(long)]
        by: Option<String>,
    },
    /// Add a note for the public to an incident: shown under it on the
    /// status page (as text) and in its feed; needs the admin token.
    Note { id: u64, text: String },
}

/// `2026-11-28T01:57:20.123Z` → `2026-11-28 01:57:20Z` (a table cell).
fn when(v: &Value) -> String {
    let t = text(v);
    match (t.get(..10), t.get(11..19)) {
        (Some(d), Some(h)) if t.len() >= 19 => format!("{d} {h}Z"),
        _ => t,
    }
}

async fn incidents(ctl: &Ctl, cmd: IncidentsCmd, out: Output) -> Result<(), Fail> {
    match cmd {
        IncidentsCmd::List {
            state,
            kind,
            check,
            limit,
        } => {
            let mut path = format!("/api/v1/incidents?limit={limit}");
            for (key, value) in [("state", &state), ("kind", &kind), ("check", &check)] {
                if let Some(v) = value {
                    path.push_str(&format!("&{key}={}", seg(v)));
                }
            }
            let body = ctl.get(&path).await?;
            let list = body["incidents"].as_array().cloned().unwrap_or_default();
            if out == Output::Json {
                print_json(&Value::Array(list));
                return Ok(());
            }
            if list.is_empty() {
                out!("no incidents");
                return Ok(());
            }
            let rows = list
                .iter()
                .map(|i| {
                    let regions = i["regions"]
                        .as_array()
                        .map(|r| r.iter().map(text).collect::<Vec<_>>().join(","))
                        .unwrap_or_default();
                    vec![
                        text(&i["id"]),
                        text(&i["check_id"]),
                        text(&i["kind"]),
                        text(&i["severity"]),
                        text(&i["state"]),
                        when(&i["opened_at"]),
                        regions,
                        text(&i["step"]),
                        one_line(&text(&i["summary"])),
                    ]
                })
                .collect();
            table(
                &[
                    "ID", "CHECK", "KIND", "SEVERITY", "STATE", "OPENED", "REGIONS", "STEP",
                    "SUMMARY",
                ],
                rows,
            );
        }
        IncidentsCmd::Show { id } => {
            let i = ctl.get(&format!("/api/v1/incidents/{id}")).await?;
            if out == Output::Json {
                print_json(&i);
                return Ok(());
            }
            print_incident(&i);
        }
        IncidentsCmd::Ack { id, by } => {
            let body = match &by {
                Some(name) => json!({"by": name}),
                None => json!({}),
            };
            let i = ctl
                .call("POST", &format!("/api/v1/incidents/{id}/ack"), Some(&body))
                .await?;
            if out == Output::Json {
                print_json(&i);
                return Ok(());
            }
            if i["change"] == "unchanged" {
                out!(
                    "incident {id} was already acknowledged by {} at {}",
                    text(&i["acknowledged_by"]),
                    when(&i["acknowledged_at"])
                );
            } else {
                out!("incident {id} acknowledged");
            }
        }
        IncidentsCmd::Note { id, text } => {
            let i = ctl
                .call(
                    "POST",
                    &format!("/api/v1/incidents/{id}/notes"),
                    Some(&json!({"text": text})),
                )
                .await?;
            if out == Output::Json {
                print_json(&i);
                return Ok(());
            }
            out!("note added to incident {id}");
        }
    }
    Ok(())
}

fn print_incident(i: &Value) {
    out!(
        "incident {}  {} {} ({})  check {}  {}",
        text(&i["id"]),
        text(&i["severity"]).to_uppercase(),
        text(&i["kind"]),
        text(&i["state"]),
        text(&i["check_id"]),
        text(&i["key"]),
    );
    out!(
        "opened {} (round {})",
        when(&i["opened_at"]),
        text(&i["first_round"])
    );
    if !i["acknowledged_at"].is_null() {
        out!(
            "acknowledged {} by {}",
            when(&i["acknowledged_at"]),
            text(&i["acknowledged_by"])
        );
    }
    if !i["resolved_at"].is_null() {
        out!(
            "resolved {} (last round {})",
            when(&i["resolved_at"]),
            text(&i["last_round"])
        );
    }
    out!("\n{}\n", text(&i["summary"]));
    let rows = i["timeline"]
        .as_array()
        .map(|t| {
            t.iter()
                .map(|e| {
                    vec![
                        when(&e["at"]),
                        text(&e["round"]),
                        text(&e["event"]),
                        text(&e["verdict"]),
                        one_line(&text(&e["note"])),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(&["AT", "ROUND", "EVENT", "VERDICT", "NOTE"], rows);
}

async fn status(ctl: &Ctl, out: Output) -> Result<(), Fail> {
    let body = ctl.get("/api/v1/status").await?;
    if out == Output::Json {
        print_json(&body);
        return Ok(());
    }
    let checks = body["checks"].as_array().cloned().unwrap_or_default();
    if checks.is_empty() {
        out!("no checks");
        return Ok(());
    }
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for c in &checks {
        let incidents = c["incidents"]
            .as_array()
            .map(|l| {
                l.iter()
                    .map(|i| {
                        format!(
                            "#{} {} ({})",
                            text(&i["id"]),
                            text(&i["kind"]),
                            text(&i["state"])
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        let verdict = if c["verdict"].is_null() {
            "-".to_string()
        } else {
            text(&c["verdict"]).to_uppercase()
        };
        // The judge's note says why for the whole check (which regions are
        // missing, which fail); an `up` check's note adds nothing.
        if c["verdict"] != "up"
            && let Some(note) = c["note"].as_str().filter(|n| !n.is_empty())
        {
            notes.push(format!("{}: {}", text(&c["check"]), one_line(note)));
        }
        for i in c["incidents"].as_array().into_iter().flatten() {
            if let Some(summary) = i["summary"].as_str().filter(|s| !s.is_empty()) {
                notes.push(format!(
                    "{}: #{} {} ({}): {}",
                    text(&c["check"]),
                    text(&i["id"]),
                    text(&i["kind"]),
                    text(&i["state"]),
                    one_line(summary)
                ));
            }
        }
        let evidence = evidence_for(ctl, c).await;
        // One line per region; the check's own columns only on the first.
        for (n, r) in c["regions"].as_array().into_iter().flatten().enumerate() {
            let detail = match evidence.iter().find(|e| e["region"] == r["region"]) {
                Some(e) if region_detail(r).is_empty() => region_detail(e),
                _ => region_detail(r),
            };
            let first = |cell: String| if n == 0 { cell } else { String::new() };
            let state = if r["state"].is_null() {
                "-".into()
            } else {
                text(&r["state"])
            };
            rows.push(vec![
                first(text(&c["check"])),
                first(verdict.clone()),
                first(text(&c["round"])),
                first(when(&c["round_start"])),
                text(&r["region"]),
                state,
                detail,
                first(incidents.clone()),
            ]);
        }
    }
    table(
        &[
            "CHECK",
            "VERDICT",
            "ROUND",
            "STARTED",
            "REGION",
            "STATE",
            "DETAIL",
            "INCIDENTS",
        ],
        rows,
    );
    if !notes.is_empty() {
        out!();
        for n in notes {
            out!("{n}");
        }
    }
    Ok(())
}

/// The verdict's full per-region evidence, when `/status` leaves a region
/// that is not ok without a why (a degraded region's reasons and slow
/// steps are in the verdict, not in `/status`, on older coordinators).
async fn evidence_for(ctl: &Ctl, c: &Value) -> Vec<Value> {
    let unexplained = c["regions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|r| !r["state"].is_null() && r["state"] != "ok" && region_detail(r).is_empty());
    if !unexplained {
        return Vec::new();
    }
    let path = format!("/api/v1/verdicts?check={}&limit=1", seg(&text(&c["check"])));
    let Ok(body) = ctl.get(&path).await else {
        return Vec::new();
    };
    body["verdicts"]
        .as_array()
        .and_then(|v| v.first())
        .filter(|v| v["round"] == c["round"])
        .and_then(|v| v["regions"].as_array().cloned())
        .unwrap_or_default()
}

/// Why one region of a verdict is in its state: the coordinator's own
/// `detail` when it gives one; else the failing step, reply code, class and
/// text; the reasons and slow steps of a degraded region; or what a missing
/// region lacks.
fn region_detail(r: &Value) -> String {
    if let Some(d) = r["detail"].as_str().filter(|d| !d.trim().is_empty()) {
        return one_line(d);
    }
    let mut parts = Vec::new();
    if let Some(step) = r["step"].as_str() {
        let mut s = step.to_string();
        for k in ["code", "enhanced", "class"] {
            let v = text(&r[k]);
            if !v.is_empty() {
                s.push(' ');
                s.push_str(&v);
            }
        }
        if let Some(t) = r["text"].as_str().filter(|t| !t.trim().is_empty()) {
            s.push_str(&format!(": {}", one_line(t)));
        }
        parts.push(s);
    }
    for slow in r["slow"].as_array().into_iter().flatten() {
        parts.push(format!(
            "{} {} over {} threshold {}",
            text(&slow["step"]),
            ms(&slow["ms"]),
            text(&slow["source"]),
            ms(&slow["threshold_ms"])
        ));
    }
    parts.extend(strings(&r["reasons"]));
    if parts.is_empty() && r["state"] == "missing" {
        parts.push("no report for this round".into());
    }
    parts.join("; ")
}

async fn tokens(ctl: &Ctl, cmd: TokensCmd, out: Output) -> Result<(), Fail> {
    match cmd {
        TokensCmd::List => {
            let body = ctl.get("/api/v1/tokens").await?;
            let tokens = body["tokens"].as_array().cloned().unwrap_or_default();
            if out == Output::Json {
                print_json(&Value::Array(tokens));
                return Ok(());
            }
            let rows = tokens
                .iter()
                .map(|t| {
                    let state = if t["revoked_at"].is_null() {
                        "active".to_string()
                    } else {
                        format!("revoked {}", text(&t["revoked_at"]))
                    };
                    vec![
                        text(&t["name"]),
                        text(&t["role"]),
                        text(&t["source"]),
                        state,
                        text(&t["created_by"]),
                        text(&t["created_at"]),
                    ]
                })
                .collect();
            table(
                &["TOKEN", "ROLE", "SOURCE", "STATE", "MADE BY", "MADE AT"],
                rows,
            );
        }
        TokensCmd::Add {
            name,
            role,
            out: file,
        } => {
            let path = file.unwrap_or_else(|| PathBuf::from(format!("{name}.token")));
            // The file first: a token the coordinator made but nobody could
            // keep would be lost (it is never shown again).
            let mut f = new_private_file(&path)?;
            let body = match ctl
                .call(
                    "POST",
                    "/api/v1/tokens",
                    Some(&json!({"name": name, "role": role})),
                )
                .await
            {
                Ok(b) => b,
                Err(e) => {
                    let _ = std::fs::remove_file(&path);
                    return Err(e);
                }
            };
            writeln!(f, "{}", text(&body["token"]))
                .and_then(|()| f.sync_all())
                .map_err(|e| {
                    Fail::usage(format!(
                        "writing the token to {}: {e} (revoke it: mailloopctl tokens revoke {name})",
                        path.display()
                    ))
                })?;
            if out == Output::Json {
                print_json(&json!({"name": name, "role": role, "file": path}));
                return Ok(());
            }
            out!(
                "token {name} ({role}) written to {} (mode 0600); the coordinator keeps only its SHA-256",
                path.display()
            );
        }
        TokensCmd::Revoke { name } => {
            ctl.call("DELETE", &format!("/api/v1/tokens/{}", seg(&name)), None)
                .await?;
            out!("{name}: revoked");
        }
    }
    Ok(())
}

/// A new file only its owner can read or write.
fn new_private_file(path: &Path) -> Result<std::fs::File, Fail> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            Fail::usage(format!(
                "cannot create {} for the token: {e} (an existing file is never overwritten)",
                path.display()
            ))
        })
}

async fn audit(
    ctl: &Ctl,
    actor: Option<String>,
    object: Option<String>,
    limit: u32,
    out: Output,
) -> Result<(), Fail> {
    let mut path = format!("/api/v1/audit?limit={limit}");
    for (key, value) in [("actor", &actor), ("object", &object)] {
        if let Some(v) = value {
            path.push_str(&format!("&{key}={}", seg(v)));
        }
    }
    let body = ctl.get(&path).await?;
    let entries = body["entries"].as_array().cloned().unwrap_or_default();
    if out == Output::Json {
        print_json(&Value::Array(entries));
        return Ok(());
    }
    let rows = entries
        .iter()
        .map(|e| {
            vec![
                text(&e["at"]),
                text(&e["actor"]),
                text(&e["source"]),
                text(&e["action"]),
                format!("{} {}", text(&e["object"]), text(&e["id"])),
                text(&e["detail"]),
            ]
        })
        .collect();
    table(&["AT", "WHO", "FROM", "ACTION", "OBJECT", "DETAIL"], rows);
    Ok(())
}
