//! `mailloop-agent`: the command-line entry point.

use clap::{Parser, Subcommand};
use mailloop_agent::output::{self, Format};
use mailloop_agent::probe::Prober;
use mailloop_agent::telemetry::{Identity, Telemetry, TelemetryConfig};
use mailloop_agent::run::config::AgentConfig;
use mailloop_agent::transport::{ConnectRule, ConnectTo};
use mailloop_common::config::{ConfigError, ConfigIssue, ProbeConfig};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// Exit code for a config or internal error (Nagios UNKNOWN).
const EXIT_CONFIG: u8 = 3;

#[derive(Parser)]
#[command(
    name = "mailloop-agent",
    version,
    about = "End-to-end email delivery probe: sends a tagged message over SMTP, finds it over IMAP, times every protocol step.",
    after_help = "Exit codes (every output mode): 0 ok, 1 degraded, 2 failed, 3 config or internal error.\n\
                  Logs go to stderr. Default level: warn for probe and check-config (the table is the output), \
                  info for run (connections, assignments, one line per probe). MAILLOOP_LOG overrides it, \
                  e.g. MAILLOOP_LOG=debug or MAILLOOP_LOG=warn."
)]
struct Cli {
    /// Log lines as text (default; coloured on a terminal) or as one JSON
    /// object per line (journald, Loki).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true, env = "MAILLOOP_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run one full round trip for each selected check and print the result.
    Probe {
        /// Config file (TOML) with one or more [[check]] tables.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// Run only this check (repeatable); default: every check.
        #[arg(long = "check", value_name = "NAME")]
        checks: Vec<String>,
        /// How to print results.
        #[arg(long, short, value_enum, default_value_t = Format::Table)]
        output: Format,
        /// Open the TCP connection to a check's HOST:PORT at another address
        /// instead (like curl's --connect-to; repeatable). TLS server name,
        /// SNI and the reported endpoint stay the check's.
        #[arg(long = "connect-to", value_name = "HOST:PORT=HOST:PORT")]
        connect_to: Vec<ConnectRule>,
    },
    /// Validate a config file and print every problem; nothing is contacted.
    /// A probe config ([[check]] tables) is loaded as `probe` loads it,
    /// trust roots (ca_file) included; an agent.toml ([agent]) as `run`
    /// loads it, its ca_file, client_cert and client_key included.
    CheckConfig {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Run as a long-lived agent: take assignments from the coordinator,
    /// probe each check on its round schedule, spool and stream every report.
    /// Stops gracefully on SIGTERM or SIGINT (exit 0).
    Run {
        /// Agent config file (TOML: [agent], [dns]). Any [agent] key can be
        /// set from the environment instead, winning over the file:
        /// MAILLOOP_AGENT__<KEY>, e.g. MAILLOOP_AGENT__REGION=eu-west.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Join a coordinator with the one-line command `mailloopctl agents add`
    /// printed: exchanges the single-use join token for this agent's token
    /// (pinning the coordinator's certificate by the fingerprint the token
    /// carries), then writes the agent config (mode 0600), the token file
    /// beside it (<config>.token, 0600) and the pinned certificate
    /// (<config>.coordinator.pem). Nothing existing is overwritten.
    /// Credentials of probed mailboxes are never sent: the checks name them
    /// (password_env, password_file) and this machine provides them.
    Enroll {
        /// The join token, `mlj1.…`.
        token: String,
        /// Where to write the agent config.
        #[arg(long, short, value_name = "FILE", default_value = "/etc/mailloop/agent.toml")]
        config: PathBuf,
        /// The agent's spool (default: /var/lib/mailloop-agent/spool.db).
        #[arg(long, value_name = "FILE")]
        spool: Option<PathBuf>,
        /// A mailbox credential the checks name (`password_env = "NAME"`),
        /// kept on this machine only: NAME=@FILE (read from FILE) or
        /// NAME=env:VAR (from this shell's environment). Written to
        /// <config>.env (mode 0600), which the packaged unit loads
        /// (EnvironmentFile=); never sent to the coordinator. Repeatable.
        #[arg(long = "secret", value_name = "NAME=@FILE|NAME=env:VAR")]
        secrets: Vec<String>,
        /// Then enable and start the packaged systemd unit
        /// (systemctl enable --now mailloop-agent.service). Needs systemd
        /// and the default --config, which the unit reads; both are checked
        /// before the join token is used.
        #[arg(long)]
        start: bool,
        /// For a coordinator with client_ca (mutual TLS): this agent's
        /// certificate (PEM, chain first), used to enroll and written into
        /// the agent config as client_cert. Needs --client-key.
        #[arg(long, value_name = "FILE", requires = "client_key")]
        client_cert: Option<PathBuf>,
        /// The private key of --client-cert (PEM); written as client_key.
        #[arg(long, value_name = "FILE", requires = "client_cert")]
        client_key: Option<PathBuf>,
    },
    /// OAuth2 mailboxes (Microsoft 365, Gmail).
    Oauth2 {
        #[command(subcommand)]
        command: Oauth2Command,
    },
}

#[derive(Subcommand)]
enum Oauth2Command {
    /// Sign in once for a check whose [check.imap.oauth2] / [check.smtp.oauth2]
    /// uses a refresh token (delegated access): prints a URL and a code to
    /// enter there (device-code flow), waits, and stores the refresh token in
    /// the side's refresh_token_file with mode 0600. The agent renews it from
    /// then on. Both sides are signed in at once when they share the file.
    Login {
        /// Probe config file (TOML) holding the check.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// The check to sign in for.
        #[arg(long = "check", value_name = "NAME")]
        check: String,
        /// Which side's [oauth2] to use when both have one with different
        /// refresh_token_file values (default: imap, then smtp).
        #[arg(long, value_parser = ["imap", "smtp"])]
        side: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A long-running agent says what it connects to and what it runs: one
    // line per probe from the scheduler, not one per step from the engine.
    // A one-shot command prints its result; its log says only what is wrong.
    let default_level = if matches!(cli.command, Command::Run { .. }) {
        "info,mailloop_agent::steps=warn,mailloop_agent::probe=warn"
    } else {
        "warn"
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MAILLOOP_LOG").unwrap_or_else(|_| default_level.into()),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().flatten_event(true).init(),
        LogFormat::Text => logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
    }

    match cli.command {
        Command::CheckConfig { config } => check_config(&config),
        Command::Probe { config, checks, output, connect_to } => probe(config, checks, output, ConnectTo::new(connect_to)),
        Command::Run { config } => run(config),
        Command::Enroll { token, config, spool, secrets, start, client_cert, client_key } => {
            enroll(&token, config, spool, &secrets, start, client_cert.zip(client_key))
        }
        Command::Oauth2 { command: Oauth2Command::Login { config, check, side } } => oauth2_login(&config, &check, side.as_deref()),
    }
}

fn check_config(config: &Path) -> ExitCode {
    let checked = if AgentConfig::is_agent_file(config) {
        AgentConfig::load(config).map(|c| format!("agent {} in region {} ok", c.name, c.region))
    } else {
        load_probers(config).map(|p| format!("{} check(s) ok", p.len()))
    };
    match checked {
        Ok(summary) => {
            println!("{}: {summary}", config.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// The probe config validated whole, then every check's prober built (its
/// trust roots loaded): each problem named with its path, all at once.
fn load_probers(config: &Path) -> Result<Vec<Prober>, ConfigError> {
    let cfg = ProbeConfig::load(config)?;
    let mut probers = Vec::new();
    let mut issues = Vec::new();
    for (i, check) in cfg.checks.into_iter().enumerate() {
        match Prober::build(check, &cfg.dns) {
            Ok(p) => probers.push(p),
            Err(bad) => issues.extend(bad.into_iter().map(|b| ConfigIssue { path: format!("check[{i}].{}", b.path), ..b })),
        }
    }
    if issues.is_empty() { Ok(probers) } else { Err(ConfigError::Invalid { path: config.display().to_string(), issues }) }
}

fn run(config: PathBuf) -> ExitCode {
    let cfg = match AgentConfig::load(&config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match runtime.block_on(mailloop_agent::run::run(cfg, shutdown_signal(&runtime))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mailloop-agent: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn enroll(
    token: &str,
    config: PathBuf,
    spool: Option<PathBuf>,
    secrets: &[String],
    start: bool,
    client: Option<(PathBuf, PathBuf)>,
) -> ExitCode {
    use mailloop_agent::run::enroll::{ClientCert, Paths, SystemdStart, enroll, local_secrets, write_env_file};
    // Everything that can be refused is refused before the join token is
    // used (it works once).
    let mut problems = Vec::new();
    let secrets = local_secrets(secrets, |v| std::env::var(v).ok()).unwrap_or_else(|e| {
        problems.extend(e);
        Vec::new()
    });
    let starter = if start {
        SystemdStart::from_env(&config).map_err(|e| problems.push(e)).ok()
    } else {
        None
    };
    let client = client.and_then(|(cert, key)| ClientCert::load(&cert, &key).map_err(|e| problems.push(e)).ok());
    let env_path = config.with_extension("env");
    if !secrets.is_empty() && env_path.exists() {
        problems.push(format!("{} exists: this machine looks enrolled already", env_path.display()));
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("mailloop-agent enroll: {p}");
        }
        eprintln!("mailloop-agent enroll: nothing done; the join token is unused");
        return ExitCode::from(EXIT_CONFIG);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match runtime.block_on(enroll(token, Paths::new(config, spool), client)) {
        Ok(e) => {
            println!(
                "enrolled as agent {} in region {} with the coordinator at {}; wrote {} and {}.",
                e.name,
                e.region,
                e.url,
                e.paths.config.display(),
                e.paths.token.display(),
            );
            if !secrets.is_empty() {
                if let Err(err) = write_env_file(&env_path, &secrets) {
                    eprintln!("mailloop-agent enroll: enrolled, but {}: {err}; write it yourself (NAME=value lines, mode 0600)", env_path.display());
                    return ExitCode::from(EXIT_CONFIG);
                }
                let names: Vec<&str> = secrets.iter().map(|(n, _)| n.as_str()).collect();
                println!(
                    "wrote {} (mode 0600; kept on this machine): {}. Outside systemd: set -a; . {}; set +a; before mailloop-agent run",
                    env_path.display(),
                    names.join(", "),
                    env_path.display()
                );
            }
            match starter {
                Some(s) => match s.start() {
                    Ok(cmd) => println!("started: {cmd}"),
                    Err(err) => {
                        eprintln!("mailloop-agent enroll: enrolled, but the service did not start: {err}");
                        return ExitCode::from(EXIT_CONFIG);
                    }
                },
                None => println!(
                    "Start it: mailloop-agent run --config {}   (or: systemctl enable --now mailloop-agent)",
                    e.paths.config.display()
                ),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mailloop-agent enroll: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// Completes on SIGTERM or SIGINT. The handlers are installed now, not
/// when the future is first polled: a SIGTERM that arrives while the agent
/// is still starting must stop it gracefully, not kill it.
fn shutdown_signal(runtime: &tokio::runtime::Runtime) -> impl Future<Output = ()> + use<> {
    use tokio::signal::unix::{SignalKind, signal};
    let _in = runtime.enter();
    let signals = signal(SignalKind::terminate()).and_then(|term| Ok((term, signal(SignalKind::interrupt())?)));
    async move {
        match signals {
            Ok((mut term, mut int)) => tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            },
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM or SIGINT ({e}): stop this agent with SIGKILL");
                std::future::pending::<()>().await
            }
        }
    }
}

fn unknown(format: Format, message: &str) -> ExitCode {
    if format == Format::Nagios {
        println!("UNKNOWN - {}", message.lines().collect::<Vec<_>>().join("; ").replace('|', "/"));
    }
    eprintln!("{message}");
    ExitCode::from(EXIT_CONFIG)
}

fn probe(config: PathBuf, names: Vec<String>, format: Format, connect_to: ConnectTo) -> ExitCode {
    let all = match load_probers(&config) {
        Ok(p) => p,
        Err(e) => return unknown(format, &e.to_string()),
    };
    let missing: Vec<&String> = names.iter().filter(|n| !all.iter().any(|p| &p.check().name == *n)).collect();
    if !missing.is_empty() {
        let known: Vec<&str> = all.iter().map(|p| p.check().name.as_str()).collect();
        return unknown(format, &format!("no check named {missing:?} in {} (checks: {})", config.display(), known.join(", ")));
    }
    // Traces: the standard OTEL_* variables only (a probe config has no [telemetry]).
    let telemetry = match TelemetryConfig::from_env(&|name| std::env::var(name).ok()) {
        Ok(t) => t,
        Err(issues) => {
            let list: Vec<String> = issues.iter().map(|i| format!("{}: {}", i.path, i.message)).collect();
            return unknown(format, &format!("bad trace export settings: {}", list.join("; ")));
        }
    };
    let probers: Vec<Prober> = all
        .into_iter()
        .filter(|p| names.is_empty() || names.contains(&p.check().name))
        .map(|p| p.with_connect_to(connect_to.clone()))
        .collect();
    tracing::debug!(checks = probers.len(), "config loaded");

    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return unknown(format, &format!("cannot start the async runtime: {e}")),
    };
    // The exporter lends this runtime: no thread or runtime of its own.
    let who = Identity { instance: mailloop_common::telemetry::host_name("mailloop-agent"), region: None };
    let telemetry = match runtime.block_on(async { Telemetry::start_one_shot(&telemetry, &who) }) {
        Ok(t) => t.map(Arc::new),
        Err(e) => return unknown(format, &e),
    };
    // Checks run concurrently; results print in config order.
    let reports = runtime.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for (i, p) in probers.into_iter().enumerate() {
            let telemetry = telemetry.clone();
            set.spawn(async move {
                let mut report = p.run().await;
                if let Some(t) = telemetry {
                    let ids = t.record(&report, p.check());
                    report.trace_id = Some(ids.trace_id);
                    report.span_id = Some(ids.span_id);
                }
                (i, report)
            });
        }
        let mut out = Vec::new();
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok(r) => out.push(r),
                Err(e) => tracing::error!("probe task failed: {e}"),
            }
        }
        if let Some(t) = &telemetry {
            // Ships the traces in one request before exiting (bounded by EXPORT_TIMEOUT).
            t.export_held().await;
        }
        out.sort_by_key(|(i, _)| *i);
        out.into_iter().map(|(_, r)| r).collect::<Vec<_>>()
    });
    if let Some(t) = telemetry {
        t.shutdown();
    }
    print!("{}", output::render(format, &reports));
    ExitCode::from(output::exit_code(&reports) as u8)
}

fn oauth2_login(config: &Path, name: &str, side: Option<&str>) -> ExitCode {
    use mailloop_common::config::Grant;
    let cfg = match ProbeConfig::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let Some(check) = cfg.checks.iter().find(|c| c.name == name) else {
        let known: Vec<&str> = cfg.checks.iter().map(|c| c.name.as_str()).collect();
        eprintln!("no check named {name:?} in {} (checks: {})", config.display(), known.join(", "));
        return ExitCode::from(EXIT_CONFIG);
    };
    let oauth = |e: &mailloop_common::config::Endpoint| e.credentials.as_ref().and_then(|c| c.oauth2()).cloned();
    let (imap, smtp) = (oauth(&check.imap.endpoint), oauth(&check.smtp.endpoint));
    let delegated = |o: &Option<mailloop_common::config::OAuth2Config>| o.clone().filter(|o| matches!(o.grant, Grant::RefreshToken { .. }));
    let chosen = match side {
        Some("smtp") => delegated(&smtp),
        Some(_) => delegated(&imap),
        None => delegated(&imap).or_else(|| delegated(&smtp)),
    };
    let Some(chosen) = chosen else {
        eprintln!("check {name} has no [oauth2] with a refresh token{}: nothing to sign in for", side.map(|s| format!(" on its {s} side")).unwrap_or_default());
        return ExitCode::from(EXIT_CONFIG);
    };
    // Both sides share the refresh token file: one sign-in covering both scopes.
    let mut scopes: Vec<&str> = chosen.scope.split_whitespace().collect();
    for other in [&imap, &smtp].into_iter().flatten() {
        if other.grant == chosen.grant && other.token_url == chosen.token_url && other.client_id == chosen.client_id {
            for s in other.scope.split_whitespace() {
                if !scopes.contains(&s) {
                    scopes.push(s);
                }
            }
        }
    }
    let scope = scopes.join(" ");
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let mut out = std::io::stdout();
    match runtime.block_on(mailloop_agent::oauth2::login::device_login(&chosen, &scope, &mut out)) {
        Ok(done) => {
            println!("{done}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mailloop-agent oauth2 login: {e}");
            ExitCode::from(2)
        }
    }
}

