//! `mailloop-coordinator`: `serve` runs the coordinator; `check-config`
//! validates a config file and exits.
//!
//! Exit codes: 0 clean stop, 3 config or internal error (like the agent).

use clap::{Parser, Subcommand};
use mailloop_common::config::ConfigError;
use mailloop_coordinator::config::CoordinatorConfig;
use mailloop_coordinator::server::{self, Coordinator};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "mailloop-coordinator",
    version,
    about = "Assigns mail round-trip checks to agents and stores their reports"
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
    /// Run the coordinator (gRPC for agents, HTTP admin API). SIGHUP reloads
    /// the config; SIGINT/SIGTERM stop gracefully.
    Serve {
        #[arg(short, long, env = "MAILLOOP_COORDINATOR_CONFIG")]
        config: PathBuf,
    },
    /// Bring the database's schema up to date and exit (serve does this at
    /// start too; replicas starting together take turns on a lock). Refuses
    /// a database newer than this build.
    Migrate {
        #[arg(short, long, env = "MAILLOOP_COORDINATOR_CONFIG")]
        config: PathBuf,
    },
    /// Copy an installation's SQLite database (history, agents, incidents
    /// with their timelines, audit log, tokens) into PostgreSQL, in one
    /// transaction, and print the rows per table. Refuses a target that
    /// holds any row unless --replace. Stop the SQLite coordinator first.
    MigrateData {
        /// `sqlite:PATH`: the data directory or its coordinator.db.
        #[arg(long)]
        from: String,
        /// `postgres://user@host:port/db?sslmode=...` (a password here is
        /// visible to `ps`; prefer --password-file).
        #[arg(long, env = "MAILLOOP_MIGRATE_TO")]
        to: String,
        /// The PostgreSQL password, read from this file.
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// PEM CA certificates to trust for the PostgreSQL TLS connection.
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Empty the target's tables first (in the same transaction).
        #[arg(long)]
        replace: bool,
    },
    /// Validate a config file, report every bad key, and exit (0 valid, 3 not).
    CheckConfig {
        #[arg(short, long)]
        config: PathBuf,
    },
}

const EXIT_CONFIG: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MAILLOOP_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().flatten_event(true).init(),
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    match cli.command {
        Command::CheckConfig { config } => match load(&config) {
            Some(c) => {
                println!(
                    "{}: ok ({} checks, {} agents)",
                    config.display(),
                    c.checks.len(),
                    c.agents.len()
                );
                ExitCode::SUCCESS
            }
            None => ExitCode::from(EXIT_CONFIG),
        },
        Command::Migrate { config } => {
            let Some(cfg) = load(&config) else {
                return ExitCode::from(EXIT_CONFIG);
            };
            let runtime = tokio::runtime::Runtime::new().expect("start the tokio runtime");
            match runtime.block_on(mailloop_coordinator::storage::Storage::connect(&cfg.storage)) {
                Ok(storage) => {
                    println!("{}: schema version {}", storage.describe(), storage.schema_version());
                    runtime.block_on(storage.close());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("mailloop-coordinator migrate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::MigrateData { from, to, password_file, ca_file, replace } => migrate_data(&from, &to, password_file, ca_file, replace),
        Command::Serve { config } => {
            // Validate everything before any port is bound or file created.
            let Some(cfg) = load(&config) else {
                return ExitCode::from(EXIT_CONFIG);
            };
            let runtime = tokio::runtime::Runtime::new().expect("start the tokio runtime");
            match runtime.block_on(serve(cfg, config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("mailloop-coordinator: {e:#}");
                    ExitCode::from(EXIT_CONFIG)
                }
            }
        }
    }
}

fn migrate_data(from: &str, to: &str, password_file: Option<PathBuf>, ca_file: Option<PathBuf>, replace: bool) -> ExitCode {
    use mailloop_coordinator::storage::{PgSettings, transfer};
    let Some(path) = from.strip_prefix("sqlite:") else {
        eprintln!("mailloop-coordinator migrate-data: --from must be sqlite:PATH");
        return ExitCode::from(EXIT_CONFIG);
    };
    // The error never repeats the URL: it may hold a password.
    if let Err(e) = PgSettings::check_url(to) {
        eprintln!("mailloop-coordinator migrate-data: --to: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let mut pg = PgSettings::new(to);
    if let Some(file) = password_file {
        match std::fs::read_to_string(&file) {
            Ok(p) => pg.password = Some(mailloop_common::Secret::new(p.trim_end_matches(['\r', '\n']))),
            Err(e) => {
                eprintln!("mailloop-coordinator migrate-data: --password-file {}: {e}", file.display());
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    }
    pg.ca_file = ca_file;
    pg.pool_size = 2;
    let runtime = tokio::runtime::Runtime::new().expect("start the tokio runtime");
    match runtime.block_on(transfer::sqlite_to_postgres(Path::new(path), &pg, replace)) {
        Ok(done) => {
            println!("copied {} into {}:", done.source.display(), done.target);
            for (table, rows) in &done.tables {
                println!("  {table:<16} {rows}");
            }
            println!("committed; point [storage] url at the database and start the coordinators");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mailloop-coordinator migrate-data: {e}; nothing was committed");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &Path) -> Option<CoordinatorConfig> {
    match CoordinatorConfig::load(path) {
        Ok(c) => Some(c),
        Err(e @ (ConfigError::Invalid { .. } | ConfigError::Unreadable { .. })) => {
            eprintln!("{e}");
            None
        }
    }
}

async fn serve(cfg: CoordinatorConfig, path: PathBuf) -> anyhow::Result<()> {
    let coordinator = Coordinator::open(cfg.clone()).await?;
    let listeners = server::bind(&cfg.server, &cfg.status).await?;
    // One line on stdout with the real addresses (port 0 in tests and demos).
    println!(
        "mailloop-coordinator listening grpc={} http={} metrics={} status={}",
        listeners.grpc_addr(),
        listeners.http_addr(),
        listeners.metrics_addr(),
        listeners.status_addr()
    );
    coordinator
        .serve(listeners, Some(path), stop_signal()?)
        .await?;
    Ok(())
}

/// Completes on SIGTERM or SIGINT. The handlers are installed now, before
/// the coordinator says READY=1 (systemd may send SIGTERM right after it),
/// not when the future is first polled.
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}
