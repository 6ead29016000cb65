//! `mailloop-loadgen`: the coordinator load test and agent footprint of
//! `make bench` (issue 4's "Benchmark").
//!
//! Everything runs as real processes on loopback: a release
//! `mailloop-coordinator serve` in a temporary data dir (ports picked by
//! binding port 0, read from its listening line), N simulated agents that
//! speak the real gRPC API (one HTTP/2 connection each), and, for the
//! footprint, a real `mailloop-agent run`. Per N it measures:
//!
//! - **ingest**: every agent streams synthetic reports of 21 steps with a
//!   few in flight; reports/s stored and ack latency. At the end the
//!   coordinator is stopped and the rows counted through `Storage`: acked
//!   must equal stored.
//! - **propagation**: agent i is alone in region i and holds a
//!   `WatchAssignments` stream; one check lists all N regions, so it is
//!   assigned to every agent. The check is changed through the admin API
//!   (`PUT`), and the time from the call's return to each agent's receipt
//!   of the upsert is recorded.
//! - the coordinator's CPU time (utime + stime) and peak RSS (VmHWM, reset
//!   per phase through `clear_refs`) in each phase.
//!
//! The scrape (issue 10): a coordinator with `--metrics-checks` checks in
//! `--metrics-regions` regions, each check × region with reports of 21
//! steps ingested; `/metrics` is then scraped as Prometheus does
//! (OpenMetrics) and as curl does (classic text): time, size, series.
//!
//! Observability overhead (issue 10): `--traces-agents` simulated agents
//! stream the same load with the coordinator's metrics and traces both off
//! (`[server] metrics = false`, no `[telemetry]`), traces only, and both on
//! (metrics, and a `[telemetry]` table sending traces to an in-process
//! OTLP/gRPC receiver: the `opentelemetry-proto` tonic server, decoding
//! and counting the spans and links that arrive), `--overhead-rounds`
//! times each, in a rotating order. Every report carries a trace and span
//! id in all three, as an exporting agent's do. Median reports/s of both
//! on over off (the goal is at least 95 %), and beside it the
//! coordinator's CPU per 1,000 reports (robust to a loaded machine).
//!
//! The public status page (issue 11): see `status.rs`. The spool replay
//! (issue 15, a real agent replaying `--replay-reports` spooled reports):
//! see `replay.rs`.
//!
//! The footprint: one agent holding 1,000 checks whose SMTP and IMAP
//! servers are a local port that answers `554` and hangs up, so the probe
//! engine runs for real and fails at once. Idle (hourly checks) and busy
//! (every check every 10 s) RSS and CPU.

mod replay;
mod status;

use clap::Parser;
use mailloop_coordinator::client::Client;
use mailloop_coordinator::config::token_sha256;
use mailloop_coordinator::storage::{PgSettings, Storage, StorageSettings};
use mailloop_proto::pb;
use mailloop_proto::pb::agent_service_client::AgentServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

const ADMIN_TOKEN: &str = "loadgen-admin-token-0123456789";
/// The goals, printed beside the figures.
const GOAL_REPORTS_PER_S: f64 = 20_000.0;
const GOAL_ACK_P99_MS: f64 = 250.0;
const GOAL_IDLE_KIB_PER_AGENT: f64 = 100.0;
/// The connect storm's goal: (agents, seconds), issue 15.
const GOAL_CONNECT_S: [(usize, f64); 2] = [(1_000, 5.0), (10_000, 30.0)];
/// How long the loadgen waits for every agent to hold a revision.
const CONNECT_PATIENCE: Duration = Duration::from_secs(300);
const PROPAGATION_PATIENCE: Duration = Duration::from_secs(60);
const GOAL_PROPAGATION_P99_MS: f64 = 1_000.0;
const GOAL_IDLE_AGENT_RSS_MB: f64 = 30.0;

/// Coordinator load test and agent footprint for `make bench`.
///
/// Starts a real `mailloop-coordinator serve` (temporary data dir, loopback,
/// port 0) per agent count, drives it as N simulated agents over gRPC, and
/// prints a table with the figures and the goals of issue 4. Nothing here
/// touches a mail server; the machine should be otherwise idle.
#[derive(Parser, Debug)]
#[command(name = "mailloop-loadgen", version)]
struct Args {
    /// The coordinator binary to start.
    #[arg(long, default_value = "target/release/mailloop-coordinator")]
    coordinator_bin: PathBuf,
    /// The agent binary for the footprint measurement.
    #[arg(long, default_value = "target/release/mailloop-agent")]
    agent_bin: PathBuf,
    /// Simulated agent counts, one coordinator run each (0: none).
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    agents: Vec<usize>,
    /// Reports streamed per run (spread over the agents).
    #[arg(long, default_value_t = 100_000)]
    reports: usize,
    /// The load runs with `[server] metrics = false`: run with and without
    /// to see the metrics' recording cost in CPU per 1,000 reports.
    #[arg(long)]
    load_metrics_off: bool,
    /// Reports each simulated agent keeps in flight.
    #[arg(long, default_value_t = 8)]
    in_flight: usize,
    /// Check changes whose propagation is timed per run.
    #[arg(long, default_value_t = 20)]
    changes: usize,
    /// Checks the footprint agent holds (0: skip the footprint).
    #[arg(long, default_value_t = 1000)]
    footprint_checks: usize,
    /// Seconds each footprint window lasts (idle, then busy).
    #[arg(long, default_value_t = 15)]
    footprint_seconds: u64,
    /// Checks of the /metrics scrape measurement (0: skip it).
    #[arg(long, default_value_t = 1000)]
    metrics_checks: usize,
    /// Regions (one simulated agent each) of the /metrics scrape measurement.
    #[arg(long, default_value_t = 5)]
    metrics_regions: usize,
    /// Only the /metrics scrape measurement (no load runs, no footprint).
    #[arg(long)]
    metrics_only: bool,
    /// Share of the check × regions that report between two scrapes of the
    /// steady-flow part of the /metrics measurement (0.25: checks every
    /// 60 s scraped every 15 s; 0: skip that part).
    #[arg(long, default_value_t = 0.25)]
    metrics_changed_share: f64,
    /// Scrapes per format of the /metrics measurement, idle and steady.
    #[arg(long, default_value_t = 20)]
    metrics_scrapes: usize,
    /// Writes the last body of each format (idle) to this directory, to
    /// compare two builds' expositions.
    #[arg(long)]
    metrics_dump: Option<PathBuf>,
    /// Public checks of the status page measurement (0: skip it).
    #[arg(long, default_value_t = 100)]
    status_checks: usize,
    /// Regions of every public check (each round's evidence names them all).
    #[arg(long, default_value_t = 5)]
    status_regions: usize,
    /// Days of stored verdicts.
    #[arg(long, default_value_t = 90)]
    status_days: usize,
    /// Verdicts a day per check (24: an hourly check).
    #[arg(long, default_value_t = 24)]
    status_rounds_per_day: usize,
    /// Page builds timed (each after a public note dropped the cache).
    #[arg(long, default_value_t = 20)]
    status_builds: usize,
    /// wrk's concurrent connections to the cached page.
    #[arg(long, default_value_t = 500)]
    status_connections: usize,
    /// wrk's duration per run, seconds.
    #[arg(long, default_value_t = 10)]
    status_seconds: u64,
    /// Only the status page measurement.
    #[arg(long)]
    status_only: bool,
    /// Simulated agents of the metrics-and-tracing overhead comparison (0: skip it).
    #[arg(long, default_value_t = 100)]
    traces_agents: usize,
    /// Runs of each side (both off, both on) of that comparison.
    #[arg(long, default_value_t = 3)]
    overhead_rounds: usize,
    /// Only serve as an OTLP trace receiver (gRPC and HTTP/protobuf, every
    /// request decoded with the `opentelemetry-proto` types) for
    /// scripts/bench_traces.py: prints `grpc=URL http=URL` and serves until
    /// stdin closes, then prints what it received as JSON.
    #[arg(long)]
    otlp_sink: bool,
    /// Smaller runs (20,000 reports, 10,000 on PostgreSQL, 10 changes, 3 s
    /// windows, 200 footprint and /metrics checks, one round of 10,000
    /// reports for the traces comparison): the loadgen's part of `make
    /// bench BENCH=quick`.
    #[arg(long)]
    quick: bool,
    /// Reports of the tracing-overhead comparison (each of its two runs).
    #[arg(long, default_value_t = 100_000)]
    traces_reports: usize,
    /// Also write every figure as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Reports in the agent's spool for the spool replay measurement (0: skip it).
    #[arg(long, default_value_t = 50_000)]
    replay_reports: usize,
    /// Only the spool replay measurement.
    #[arg(long)]
    replay_only: bool,
    /// Only the connect storm, idle RSS and propagation of the load runs
    /// (no ingest, overhead comparison, PostgreSQL, footprint, replay,
    /// status page or /metrics): issue 15's fleet figures, e.g.
    /// `--storm-only --agents 10000`.
    #[arg(long)]
    storm_only: bool,
    /// A PostgreSQL server's maintenance database
    /// (`postgres://user@127.0.0.1:PORT/postgres?sslmode=disable`): the
    /// ingest run is repeated on PostgreSQL (a fresh database per run) for
    /// the first agent count, and the failover is measured there.
    #[arg(long)]
    postgres_url: Option<String>,
    /// Leader kills (`kill -9`) of the failover measurement, two replicas
    /// on PostgreSQL (0: skip it; needs --postgres-url).
    #[arg(long, default_value_t = 10)]
    failovers: usize,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut args = Args::parse();
    if args.quick {
        args.reports = args.reports.min(20_000);
        args.traces_reports = args.traces_reports.min(10_000);
        args.overhead_rounds = args.overhead_rounds.min(1);
        args.changes = args.changes.min(10);
        args.footprint_seconds = args.footprint_seconds.min(3);
        args.footprint_checks = args.footprint_checks.min(200);
        args.metrics_checks = args.metrics_checks.min(200);
        args.metrics_scrapes = args.metrics_scrapes.min(10);
        args.status_rounds_per_day = args.status_rounds_per_day.min(4);
        args.status_builds = args.status_builds.min(5);
        args.status_seconds = args.status_seconds.min(3);
        args.replay_reports = args.replay_reports.min(10_000);
    }
    if args.storm_only {
        args.reports = 0;
        args.traces_agents = 0;
        args.footprint_checks = 0;
        args.metrics_checks = 0;
        args.status_checks = 0;
        args.replay_reports = 0;
        args.postgres_url = None;
    }
    if args.status_only {
        args.metrics_only = true;
        args.metrics_checks = 0;
    }
    // Each simulated agent holds one connection (one fd here, one in the
    // coordinator, which inherits this limit).
    let most = args.agents.iter().copied().max().unwrap_or(0);
    if let Err(e) = raise_fd_limit(most as u64 + 512) {
        eprintln!("mailloop-loadgen: {e}");
        return std::process::ExitCode::FAILURE;
    }
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mailloop-loadgen: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Raises this process's open-file soft limit to its hard limit (children,
/// the coordinator among them, inherit it); fails, naming the fix, when
/// even the hard limit is below `needed`.
fn raise_fd_limit(needed: u64) -> anyhow::Result<()> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let hard = limit.maximum;
    if hard.is_some_and(|h| h < needed) {
        anyhow::bail!(
            "{needed} open files are needed (one connection per simulated agent, on each side) but the hard limit is {}: raise it (ulimit -Hn as root, LimitNOFILE= for a service, nofile in /etc/security/limits.conf)",
            hard.unwrap_or_default()
        );
    }
    if limit.current.is_some_and(|c| c < needed) {
        setrlimit(
            Resource::Nofile,
            rustix::process::Rlimit {
                current: hard,
                maximum: hard,
            },
        )
        .map_err(|e| anyhow::anyhow!("raising the open-file limit to {hard:?}: {e}"))?;
    }
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.otlp_sink {
        return otlp_sink().await;
    }
    let needed = if args.metrics_only {
        vec![&args.coordinator_bin]
    } else {
        vec![&args.coordinator_bin, &args.agent_bin]
    };
    for bin in needed {
        anyhow::ensure!(
            bin.is_file(),
            "{} not found (cargo build --release)",
            bin.display()
        );
    }
    if args.replay_only {
        let r = replay_part(&args).await?;
        if let Some(path) = &args.json {
            std::fs::write(path, serde_json::to_string_pretty(&json!({"replay": r, "loadavg": loadavg()}))?)?;
        }
        return Ok(());
    }
    let mut runs = Vec::new();
    for &n in args.agents.iter().filter(|&&n| n > 0 && !args.metrics_only) {
        eprintln!("loadgen: {n} simulated agents ...");
        let r = load_run(&args, n, args.reports, None, None, !args.load_metrics_off).await?;
        eprintln!("loadgen: {}", serde_json::to_string(&r)?);
        runs.push(r);
    }
    let traces = if args.traces_agents > 0 && !args.metrics_only {
        // Both off, traces only, both on, `--overhead-rounds` times (the
        // order rotates each round); the medians are compared.
        let n = args.traces_agents;
        let sink = Sink::start().await?;
        let mut runs: [Vec<Value>; 3] = Default::default();
        let variants = [("off", false, false), ("traces", true, false), ("both", true, true)];
        for round in 0..args.overhead_rounds.max(1) {
            for k in 0..variants.len() {
                let v = (round + k) % variants.len();
                let (name, traced, metrics) = variants[v];
                eprintln!("loadgen: {n} simulated agents, metrics {}, traces {} ...", on_off(metrics), if traced { format!("exported to {}", sink.url) } else { "off".into() });
                let links_before = sink.links.load(Ordering::Relaxed);
                let mut r = load_run(&args, n, args.traces_reports, traced.then_some(sink.url.as_str()), None, metrics).await?;
                r["variant"] = json!(name);
                r["links_received"] = json!(sink.links.load(Ordering::Relaxed) - links_before);
                eprintln!("loadgen: {}", serde_json::to_string(&r)?);
                runs[v].push(r);
            }
        }
        let median = |runs: &[Value], key: &str| {
            let mut v: Vec<f64> = runs.iter().map(|r| f(&r[key])).collect();
            v.sort_by(f64::total_cmp);
            let m = v.len() / 2;
            if v.len() % 2 == 1 { v[m] } else { (v[m - 1] + v[m]) / 2.0 }
        };
        let [offs, traced, ons] = runs;
        let (off, on, tr) = (median(&offs, "reports_per_s"), median(&ons, "reports_per_s"), median(&traced, "reports_per_s"));
        let cpu = |r: &[Value]| median(r, "cpu_ms_per_1000_reports");
        let t = json!({
            "agents": n,
            "rounds": offs.len(),
            "off_reports_per_s": off,
            "traces_reports_per_s": tr,
            "on_reports_per_s": on,
            "ratio": round3(on / off),
            "traces_ratio": round3(tr / off),
            "off_cpu_ms_per_1000": cpu(&offs),
            "traces_cpu_ms_per_1000": cpu(&traced),
            "on_cpu_ms_per_1000": cpu(&ons),
            "cpu_ratio": round3(cpu(&offs) / cpu(&ons)),
            "spans_received": sink.spans.load(Ordering::Relaxed),
            "links_received": sink.links.load(Ordering::Relaxed),
            "off": offs,
            "traces": traced,
            "on": ons,
        });
        print_traces(&t);
        anyhow::ensure!(
            [&t["off"], &t["traces"], &t["on"]].iter().flat_map(|v| v.as_array().unwrap()).all(|r| r["acked"] == r["stored_rows"]),
            "overhead runs: reports acked and rows stored differ (see above)"
        );
        Some(t)
    } else {
        None
    };
    let mut pg_runs = Vec::new();
    let mut failover = None;
    if let (Some(base), false) = (&args.postgres_url, args.metrics_only) {
        if let Some(&n) = args.agents.first() {
            // One replica, then two on one database (the agents split
            // between them), a fresh database each.
            for replicas in [1, 2] {
                eprintln!("loadgen: {n} simulated agents, PostgreSQL storage, {replicas} coordinator replica(s) ...");
                let url = fresh_database(base, "load").await?;
                // Quick mode: half the reports (a smoke run's figure).
                let reports = if args.quick { args.reports.min(10_000) } else { args.reports };
                let r = load_run(&args, n, reports, None, Some((&url, replicas)), true).await?;
                eprintln!("loadgen: {}", serde_json::to_string(&r)?);
                pg_runs.push(r);
            }
        }
        if args.failovers > 0 {
            eprintln!("loadgen: failover, two replicas on PostgreSQL, {} leader kills ...", args.failovers);
            let url = fresh_database(base, "failover").await?;
            let f = failover_run(&args, &url).await?;
            eprintln!("loadgen: {}", serde_json::to_string(&f)?);
            failover = Some(f);
        }
    }
    let footprint = if args.footprint_checks > 0 && !args.metrics_only {
        eprintln!(
            "loadgen: agent footprint with {} checks ...",
            args.footprint_checks
        );
        let f = footprint(&args).await?;
        eprintln!("loadgen: {}", serde_json::to_string(&f)?);
        Some(f)
    } else {
        None
    };
    if !args.metrics_only {
        print_table(&runs, footprint.as_ref());
    }
    let replayed = if args.replay_reports > 0 && !args.metrics_only {
        Some(replay_part(&args).await?)
    } else {
        None
    };
    if !pg_runs.is_empty() || failover.is_some() {
        print_postgres(runs.first(), &pg_runs, failover.as_ref());
    }
    let status_page = if args.status_checks > 0 && (args.status_only || !args.metrics_only) {
        eprintln!(
            "loadgen: the status page with {} public checks x {} regions x {} days ...",
            args.status_checks, args.status_regions, args.status_days
        );
        let s = status::status_run(&args).await?;
        eprintln!("loadgen: {}", serde_json::to_string(&s)?);
        status::print_status(&s);
        Some(s)
    } else {
        None
    };
    let scrape = if args.metrics_checks > 0 {
        eprintln!(
            "loadgen: /metrics with {} checks x {} regions ...",
            args.metrics_checks, args.metrics_regions
        );
        let s = metrics_run(&args).await?;
        eprintln!("loadgen: {}", serde_json::to_string(&s)?);
        print_scrape(&s);
        Some(s)
    } else {
        None
    };
    if let Some(path) = &args.json {
        let all =
            json!({"load": runs, "postgres_load": pg_runs, "failover": failover, "footprint": footprint, "metrics": scrape, "traces": traces, "status_page": status_page, "replay": replayed, "loadavg": loadavg()});
        std::fs::write(path, serde_json::to_string_pretty(&all)?)?;
    }
    let acked_equals_stored = runs.iter().chain(&pg_runs).all(|r| r["acked"] == r["stored_rows"]);
    anyhow::ensure!(
        acked_equals_stored,
        "reports acked and rows stored differ (see above)"
    );
    Ok(())
}

/// The spool replay: measured, printed, and stored = spooled checked.
async fn replay_part(args: &Args) -> anyhow::Result<Value> {
    eprintln!("loadgen: spool replay of {} reports ...", args.replay_reports);
    let r = replay::replay_run(args).await?;
    eprintln!("loadgen: {}", serde_json::to_string(&r)?);
    replay::print_replay(&r);
    anyhow::ensure!(
        r["stored_rows"] == r["reports"],
        "replay: reports spooled and rows stored differ (see above)"
    );
    Ok(r)
}

// ───────────────────────────── processes ─────────────────────────────

/// A coordinator process in its own temporary directory.
struct Coordinator {
    dir: PathBuf,
    child: Option<Child>,
    grpc: SocketAddr,
    http: SocketAddr,
    /// `[status] listen`'s address, when it has one.
    status: Option<SocketAddr>,
}

impl Coordinator {
    /// Starts `bin` with `agents` declared as (name, region, token),
    /// `server_extra` (more `[server]` keys) and `extra` (more top-level
    /// tables) in its config.
    fn start(
        bin: &Path,
        agents: &[(String, String, String)],
        server_extra: &str,
        extra: &str,
    ) -> anyhow::Result<Coordinator> {
        let dir = std::env::temp_dir().join(format!(
            "mailloop-loadgen-{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_micros()
        ));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("admin.token"), ADMIN_TOKEN)?;
        let mut config = format!(
            "[server]\ngrpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n\
             admin_token_file = {:?}\ntest_mode = true\nshutdown_grace = \"10s\"\nmax_streams_per_connection = 16\n",
            dir.join("data"),
            dir.join("admin.token"),
        );
        config.push_str(server_extra);
        for (name, region, token) in agents {
            config.push_str(&format!(
                "\n[[agent]]\nname = \"{name}\"\nregion = \"{region}\"\ntoken_sha256 = \"{}\"\n",
                token_sha256(token)
            ));
        }
        config.push_str(extra);
        std::fs::write(dir.join("coordinator.toml"), config)?;
        let mut c = Coordinator {
            grpc: "0.0.0.0:0".parse()?,
            http: "0.0.0.0:0".parse()?,
            status: None,
            dir,
            child: None,
        };
        c.restart(bin)?;
        Ok(c)
    }

    /// Starts the process (again) on its config and data dir.
    fn restart(&mut self, bin: &Path) -> anyhow::Result<()> {
        let dir = self.dir.clone();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("coordinator.log"))?;
        let mut child = Command::new(bin)
            .args(["serve", "--config"])
            .arg(dir.join("coordinator.toml"))
            .env("MAILLOOP_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx.recv_timeout(Duration::from_secs(60)).map_err(|_| {
            // The directory goes when the run ends: say what the log said.
            let log = std::fs::read_to_string(dir.join("coordinator.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            anyhow::anyhow!(
                "the coordinator did not print its listening line within 60 s; the end of its log:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        })?;
        let addr = |key: &str| -> anyhow::Result<SocketAddr> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| anyhow::anyhow!("no {key} in {line:?}"))
        };
        self.grpc = addr("grpc=")?;
        self.http = addr("http=")?;
        // `status=` is the admin listener's address unless it has its own.
        self.status = addr("status=").ok();
        self.child = Some(child);
        Ok(())
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn api(&self) -> anyhow::Result<Client> {
        Ok(Client::new(
            &format!("http://{}", self.http),
            Some(ADMIN_TOKEN.into()),
            None,
        )?)
    }

    /// SIGTERM and wait (the coordinator commits what it acknowledged).
    fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()?;
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    child.kill()?;
                    anyhow::bail!("the coordinator did not stop within 30 s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// CPU time (utime + stime) and memory of a process, from /proc.
#[derive(Debug, Clone, Copy)]
struct ProcStats {
    cpu_s: f64,
    rss_kib: u64,
    hwm_kib: u64,
}

fn proc_stats(pid: u32) -> ProcStats {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rfind(')').map(|i| &stat[i + 2..]).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    ProcStats {
        cpu_s: (ticks(11) + ticks(12)) as f64 / clock_ticks(),
        rss_kib: kib("VmRSS:"),
        hwm_kib: kib("VmHWM:"),
    }
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Resets VmHWM to the current RSS, so each phase gets its own peak.
fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// A phase's cost: CPU seconds and peak RSS since `start`.
fn phase(pid: u32, start: ProcStats, wall: Duration) -> Value {
    let end = proc_stats(pid);
    let cpu = end.cpu_s - start.cpu_s;
    json!({
        "cpu_s": round3(cpu),
        "cpu_pct": round3(100.0 * cpu / wall.as_secs_f64().max(1e-9)),
        "peak_rss_mib": round3(end.hwm_kib as f64 / 1024.0),
        "rss_mib": round3(end.rss_kib as f64 / 1024.0),
    })
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}

// ───────────────────────────── simulated agents ─────────────────────────────

type AgentClient = AgentServiceClient<InterceptedService<Channel, Bearer>>;

#[derive(Clone)]
struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

async fn connect(grpc: SocketAddr, token: &str) -> anyhow::Result<AgentClient> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))?
        .connect()
        .await?;
    Ok(AgentServiceClient::with_interceptor(
        channel,
        Bearer(format!("Bearer {token}").parse()?),
    ))
}

/// The step names of a full round trip, as the probe writes them.
const STEPS: [&str; 21] = [
    "smtp.connect",
    "imap.connect",
    "imap.tls",
    "smtp.banner",
    "imap.greeting",
    "smtp.ehlo",
    "smtp.starttls",
    "imap.login",
    "smtp.ehlo_tls",
    "smtp.auth",
    "smtp.mail_from",
    "smtp.rcpt_to",
    "smtp.data",
    "smtp.data_ack",
    "imap.select",
    "smtp.quit",
    "imap.wait",
    "imap.search",
    "imap.fetch",
    "imap.cleanup",
    "imap.logout",
];

/// A synthetic report with every step; `__ID__` is the probe id.
fn report_template(check: &str) -> String {
    let steps: Vec<Value> = STEPS
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({"name": s, "ms": 0.5 + i as f64 * 0.3, "ok": true, "start_ms": i as f64 * 1.7,
                   "code": if s.starts_with("smtp.") { Some(250) } else { None },
                   "detail": format!("synthetic {s} detail text of a realistic length")})
        })
        .collect();
    json!({
        "probe_id": "__ID__",
        "check": check,
        "started_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "outcome": "ok",
        "rtt_ms": 35.2,
        "delivery_ms": 20.3,
        "steps": steps,
        "failure": null,
        "message_id": "<__ID__@sender.test>",
        "queue_id": "93118BC5C0",
        // As an exporting agent sends them (the coordinator links to them).
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "span_id": "00f067aa0ba902b7",
    })
    .to_string()
}

/// The round of `check` (of `interval`) in progress now, by the
/// coordinator's schedule.
fn current_round(check: &str, interval: Duration) -> u64 {
    use mailloop_coordinator::cluster::schedule;
    let interval_ms = interval.as_millis() as u64;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64;
    schedule::round_at(now, interval_ms, schedule::phase_ms(check, interval_ms))
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// A revision seen by one agent's watch stream, and when.
struct Seen {
    agent: usize,
    revision: u64,
    at: Instant,
}

/// One load run with `n` simulated agents, each alone in its region,
/// sending `reports` reports in all; `traces_to`: the coordinator exports
/// its traces to this OTLP/gRPC endpoint; `postgres`: its storage URL and
/// how many coordinator replicas share it (agent i talks to replica i mod
/// replicas; CPU figures are the replicas' sum) (SQLite, one coordinator,
/// when absent); `metrics`: false runs it with `[server] metrics = false`.
async fn load_run(
    args: &Args,
    n: usize,
    reports: usize,
    traces_to: Option<&str>,
    postgres: Option<(&str, usize)>,
    metrics: bool,
) -> anyhow::Result<Value> {
    let agents: Vec<(String, String, String)> = (0..n)
        .map(|i| {
            (
                format!("sim-{i:04}"),
                format!("r-{i:04}"),
                format!("loadgen-token-{i:04}-0123456789abcdef"),
            )
        })
        .collect();
    let mut telemetry = traces_to
        .map(|url| format!("\n[telemetry]\nendpoint = \"{url}\"\n"))
        .unwrap_or_default();
    if let Some((url, _)) = postgres {
        telemetry.push_str(&format!("\n[storage]\nurl = {url:?}\n"));
    }
    let server_extra = if metrics { "" } else { "metrics = false\n" };
    let mut coord = Coordinator::start(&args.coordinator_bin, &agents, server_extra, &telemetry)?;
    // More replicas on the same database (PostgreSQL only).
    let mut others = Vec::new();
    for _ in 1..postgres.map_or(1, |(_, r)| r.max(1)) {
        others.push(Coordinator::start(&args.coordinator_bin, &agents, server_extra, &telemetry)?);
    }
    let replicas = 1 + others.len();
    let grpcs: Vec<SocketAddr> = std::iter::once(coord.grpc).chain(others.iter().map(|c| c.grpc)).collect();
    let pids: Vec<u32> = std::iter::once(coord.pid()).chain(others.iter().map(Coordinator::pid)).collect();
    let cpu = |pids: &[u32]| pids.iter().map(|&p| proc_stats(p).cpu_s).sum::<f64>();

    let pid = coord.pid();
    let api = coord.api()?;

    // One check in every agent's region, created before any agent
    // connects: "connected" below means registered, watching and assigned.
    let regions: Vec<&str> = agents.iter().map(|a| a.1.as_str()).collect();
    let mut table = json!({
        "from": "probe@sender.test", "to": "probe@receiver.test", "interval": "1h",
        "regions": regions, "step_timeout": "30s",
        "smtp": {"host": "127.0.0.1", "port": 2525, "security": "none"},
        "imap": {"host": "127.0.0.1", "security": "none", "username": "probe@receiver.test", "password_env": "IMAP_PASS"},
        "spf": {"enabled": false},
    });
    let put = api.put("/api/v1/checks/bench", &table).await?;
    anyhow::ensure!(put.is_success(), "creating the check: {}", put.error_text());
    let revision = put.body["check"]["revision"]
        .as_u64()
        .or_else(|| put.body["revision"].as_u64())
        .unwrap_or(0);

    // Connect storm: every agent at once (its own HTTP/2 connection,
    // Register, WatchAssignments), timed until each holds the check.
    reset_peak(pid);
    let before_connect = proc_stats(pid);
    let connect_started = Instant::now();
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<Seen>();
    let retried = Arc::new(AtomicU64::new(0));
    let mut joins = Vec::with_capacity(n);
    for (i, (name, region, token)) in agents.iter().cloned().enumerate() {
        let tx = seen_tx.clone();
        let grpc = grpcs[i % replicas];
        let retried = retried.clone();
        joins.push(tokio::spawn(async move {
            // As a real agent does: a connection the kernel resets (the
            // listen queue overflows when 10,000 connect in one instant)
            // is tried again after a short random pause; retries are counted.
            let mut attempt = 0u64;
            let (c, mut watch) = loop {
                let tried = async {
                    let mut c = connect(grpc, &token).await?;
                    c.register(pb::RegisterRequest {
                        name: name.clone(),
                        region: region.clone(),
                        version: "loadgen".into(),
                        ..Default::default()
                    })
                    .await?;
                    let watch = c
                        .watch_assignments(pb::WatchRequest::default())
                        .await?
                        .into_inner();
                    Ok::<_, anyhow::Error>((c, watch))
                }
                .await;
                match tried {
                    Ok(ok) => break ok,
                    Err(e) if attempt >= 20 => return Err(e),
                    Err(_) => {
                        attempt += 1;
                        retried.fetch_add(1, Ordering::Relaxed);
                        let pause = 50 + (i as u64 * 7919 + attempt * 104_729) % 450;
                        tokio::time::sleep(Duration::from_millis(pause)).await; // a retry's backoff, as an agent's
                    }
                }
            };
            tokio::spawn(async move {
                while let Ok(Some(change)) = watch.message().await {
                    if let Some(pb::assignment_change::Change::Upsert(a)) = change.change {
                        let _ = tx.send(Seen {
                            agent: i,
                            revision: a.revision,
                            at: Instant::now(),
                        });
                    }
                }
            });
            Ok::<_, anyhow::Error>(c)
        }));
    }
    let mut clients = Vec::with_capacity(n);
    for j in joins {
        clients.push(j.await??);
    }
    wait_all(&mut seen_rx, n, revision, connect_started, CONNECT_PATIENCE).await?;
    let connect_s = connect_started.elapsed().as_secs_f64();
    let connect_cost = phase(pid, before_connect, connect_started.elapsed());
    // Idle: what each connected agent holds once the storm's transient
    // buffers are gone (a settling pause, not a synchronisation).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = proc_stats(pid);
    let idle_kib_per_agent =
        idle.rss_kib.saturating_sub(before_connect.rss_kib) as f64 / n as f64;

    // Ingest (none with --storm-only: the same figures stay null).
    let (clients, latencies, acked, ingest_wall, ingest_cost, ingest_cpu_s) = if reports == 0 {
        (clients, Vec::new(), 0, Duration::ZERO, Value::Null, 0.0)
    } else {
        let per_agent = reports.div_ceil(n).max(1);
        let template = Arc::new(report_template("bench"));
        // Every report is of the check's current round, as a live agent's is:
        // in its schedule window, so the judge takes it (and decides the round
        // once every region reported) and the figure includes the judge's work.
        let round = current_round("bench", Duration::from_secs(3600));
        let acked = Arc::new(AtomicU64::new(0));
        reset_peak(pid);
        let before = proc_stats(pid);
        let cpu_before = cpu(&pids);
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(n);
        for (i, mut c) in clients.into_iter().enumerate() {
            let template = template.clone();
            let acked = acked.clone();
            let window = args.in_flight;
            tasks.push(tokio::spawn(async move {
                let (tx, rx) = mpsc::channel::<pb::ProbeResult>(window);
                let mut acks = c
                    .report_results(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await?
                    .into_inner();
                let slots = Arc::new(Semaphore::new(window));
                let sent: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Arc::default();
                let sender = {
                    let (slots, sent) = (slots.clone(), sent.clone());
                    tokio::spawn(async move {
                        for k in 0..per_agent {
                            let permit = slots.acquire().await.expect("open");
                            permit.forget();
                            let id = format!("lg-{i}-{k}");
                            let report_json = template.replace("__ID__", &id);
                            sent.lock().unwrap().insert(id.clone(), Instant::now());
                            let r = pb::ProbeResult {
                                probe_id: id,
                                check_id: "bench".into(),
                                revision: 1,
                                round,
                                report_json,
                                ..Default::default()
                            };
                            if tx.send(r).await.is_err() {
                                return;
                            }
                        }
                    })
                };
                let mut latencies = Vec::with_capacity(per_agent);
                for _ in 0..per_agent {
                    let ack = tokio::time::timeout(Duration::from_secs(60), acks.message())
                        .await
                        .map_err(|_| anyhow::anyhow!("no ack within 60 s"))??
                        .ok_or_else(|| anyhow::anyhow!("the report stream closed"))?;
                    anyhow::ensure!(ack.stored, "report not stored: {}", ack.error);
                    let t = sent.lock().unwrap().remove(&ack.probe_id);
                    if let Some(t) = t {
                        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                    }
                    acked.fetch_add(1, Ordering::Relaxed);
                    slots.add_permits(1);
                }
                sender.await?;
                Ok::<_, anyhow::Error>((c, latencies))
            }));
        }
        let mut latencies = Vec::new();
        let mut clients = Vec::with_capacity(n);
        for t in tasks {
            let (c, l) = t.await??;
            latencies.extend(l);
            clients.push(c);
        }
        let ingest_wall = started.elapsed();
        let ingest_cost = phase(pid, before, ingest_wall);
        let ingest_cpu_s = cpu(&pids) - cpu_before;
        latencies.sort_by(f64::total_cmp);
        let acked = acked.load(Ordering::Relaxed);
        (clients, latencies, acked, ingest_wall, ingest_cost, ingest_cpu_s)
    };

    // Propagation: change the check, time each agent's receipt of it.
    reset_peak(pid);
    let before = proc_stats(pid);
    let started = Instant::now();
    let mut after_return = Vec::new();
    let mut after_call = Vec::new();
    for k in 0..args.changes {
        table["step_timeout"] = json!(format!("{}s", 31 + k));
        let call = Instant::now();
        let put = api.put("/api/v1/checks/bench", &table).await?;
        let returned = Instant::now();
        anyhow::ensure!(put.is_success(), "changing the check: {}", put.error_text());
        let revision = put.body["check"]["revision"]
            .as_u64()
            .or_else(|| put.body["revision"].as_u64())
            .unwrap_or(0);
        for at in wait_all(&mut seen_rx, n, revision, call, PROPAGATION_PATIENCE).await? {
            after_return.push(at.saturating_duration_since(returned).as_secs_f64() * 1000.0);
            after_call.push(at.duration_since(call).as_secs_f64() * 1000.0);
        }
    }
    let propagation_cost = phase(pid, before, started.elapsed());
    let propagation_cpu_s = proc_stats(pid).cpu_s - before.cpu_s;
    after_return.sort_by(f64::total_cmp);
    after_call.sort_by(f64::total_cmp);
    drop(clients);

    // Acked must equal stored: stop the coordinators and count the rows.
    coord.stop()?;
    for c in &mut others {
        c.stop()?;
    }
    let storage = match postgres {
        None => Storage::open(&coord.dir.join("data"))?,
        Some((url, _)) => Storage::connect(&StorageSettings::Postgres(PgSettings::new(url))).await?,
    };
    let stored_rows = storage.count_reports().await?;
    storage.close().await;

    Ok(json!({
        "agents": n,
        "connect_s": round3(connect_s),
        "connect_retries": retried.load(Ordering::Relaxed),
        "reports_per_agent": if reports == 0 { 0 } else { reports.div_ceil(n).max(1) },
        "in_flight_per_agent": args.in_flight,
        "acked": acked,
        "stored_rows": stored_rows,
        "ingest_s": round3(ingest_wall.as_secs_f64()),
        "reports_per_s": (acked as f64 / ingest_wall.as_secs_f64()).round(),
        "replicas": replicas,
        "cpu_ms_per_1000_reports": if acked == 0 { Value::Null } else { json!(round3(1e6 * ingest_cpu_s / acked as f64)) },
        "connect": connect_cost,
        "idle_rss_mib": round3(idle.rss_kib as f64 / 1024.0),
        "idle_kib_per_agent": round3(idle_kib_per_agent),
        "ack_ms": {"p50": round3(percentile(&latencies, 0.5)), "p99": round3(percentile(&latencies, 0.99))},
        "ingest": ingest_cost,
        "changes": args.changes,
        "propagation_ms": {
            "p50": round3(percentile(&after_return, 0.5)),
            "p99": round3(percentile(&after_return, 0.99)),
            "max": round3(after_return.last().copied().unwrap_or(f64::NAN)),
            "p99_from_call": round3(percentile(&after_call, 0.99)),
        },
        "propagation": propagation_cost,
        // The coordinator's CPU per check change (all its threads, from
        // /proc): the fan-out's cost, robust to a loaded machine.
        "cpu_ms_per_change": round3(1000.0 * propagation_cpu_s / args.changes.max(1) as f64),
        "traces": traces_to.is_some(),
        "metrics": metrics,
        "loadavg": loadavg(),
    }))
}

/// Waits until each of `n` agents has seen `revision` (or later); the
/// moments they did. Samples older than `since` are stale and skipped.
async fn wait_all(
    rx: &mut mpsc::UnboundedReceiver<Seen>,
    n: usize,
    revision: u64,
    since: Instant,
    within: Duration,
) -> anyhow::Result<Vec<Instant>> {
    let mut got: HashMap<usize, Instant> = HashMap::with_capacity(n);
    let deadline = tokio::time::Instant::now() + within;
    while got.len() < n {
        let seen = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "only {} of {n} agents saw revision {revision} within {within:?}",
                    got.len()
                )
            })?
            .ok_or_else(|| anyhow::anyhow!("every watch stream ended"))?;
        if seen.revision >= revision && seen.at >= since {
            got.entry(seen.agent).or_insert(seen.at);
        }
    }
    Ok(got.into_values().collect())
}

// ───────────────────────────── agent footprint ─────────────────────────────

/// A local port that answers every connection with `554` and hangs up: the
/// probe's SMTP banner and IMAP greeting fail at once.
fn refusing_server() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().map_while(Result::ok) {
            let _ = conn.write_all(b"554 5.3.2 mailloop-loadgen: no service here\r\n");
        }
    });
    Ok(port)
}

async fn footprint(args: &Args) -> anyhow::Result<Value> {
    let n = args.footprint_checks;
    let token = "loadgen-footprint-token-0123456789";
    let mut coord = Coordinator::start(
        &args.coordinator_bin,
        &[("fp-1".into(), "fp".into(), token.into())],
        "",
        "",
    )?;
    let api = coord.api()?;
    let port = refusing_server()?;
    let table = |i: usize, interval: &str| {
        json!({
            "name": format!("fp-{i:04}"),
            "from": "probe@sender.test", "to": "probe@receiver.test", "interval": interval,
            "regions": ["fp"], "deadline": "5s", "step_timeout": "2s", "greylist_grace": "0s",
            "smtp": {"host": "127.0.0.1", "port": port, "security": "none"},
            "imap": {"host": "127.0.0.1", "port": port, "security": "none",
                     "username": "probe@receiver.test", "password_env": "LOADGEN_IMAP_PASS"},
            "spf": {"enabled": false},
            "verify_dkim": false,
        })
    };
    put_checks(&api, n, |i| table(i, "1h")).await?;

    let dir = coord.dir.join("agent");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("token"), token)?;
    std::fs::write(
        dir.join("agent.toml"),
        format!(
            "[agent]\nname = \"fp-1\"\nregion = \"fp\"\ncoordinator_url = \"http://{}\"\ntoken_file = {:?}\nspool = {:?}\n",
            coord.grpc,
            dir.join("token"),
            dir.join("spool.db")
        ),
    )?;
    let started = Instant::now();
    let mut agent = Command::new(&args.agent_bin)
        .args(["run", "--config"])
        .arg(dir.join("agent.toml"))
        .env("LOADGEN_IMAP_PASS", "unused")
        .env("MAILLOOP_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("agent.log"))?)
        .spawn()?;
    let agent_pid = agent.id();
    let result = async {
        // Ready when the coordinator says all n checks are assigned to it
        // and the agent's spool records them (its last known assignments).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let a = api.get("/api/v1/agents/fp-1").await?;
            if a.body["agent"]["connected"] == true || a.body["connected"] == true {
                let assigned = a.body["agent"]["assigned_checks"]
                    .as_u64()
                    .or_else(|| a.body["assigned_checks"].as_u64());
                if assigned == Some(n as u64) {
                    break;
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the agent did not get its {n} checks within 60 s: {}",
                std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await; // polling the API with a deadline
        }
        let assigned_s = started.elapsed().as_secs_f64();
        // A moment for the agent to take in the stream it was sent.
        tokio::time::sleep(Duration::from_secs(2)).await; // settling before a measurement window
        let window = Duration::from_secs(args.footprint_seconds);
        let before = proc_stats(agent_pid);
        tokio::time::sleep(window).await; // the measurement window itself
        let idle = proc_stats(agent_pid);
        let idle_cpu_pct = 100.0 * (idle.cpu_s - before.cpu_s) / window.as_secs_f64();

        // Busy: every check every 10 s, phases spread by the coordinator.
        let stored_before = count_results(&api, "fp").await?;
        put_checks(&api, n, |i| table(i, "10s")).await?;
        tokio::time::sleep(Duration::from_secs(10)).await; // one full interval, so every check has started its new rounds
        let before = proc_stats(agent_pid);
        let busy_from = chrono::Utc::now();
        tokio::time::sleep(window).await; // the measurement window itself
        let busy = proc_stats(agent_pid);
        let busy_cpu_pct = 100.0 * (busy.cpu_s - before.cpu_s) / window.as_secs_f64();
        let probes = count_since(&api, busy_from, window).await?;
        let sample = api.get("/api/v1/results?region=fp&limit=1").await?;
        let failure = &sample.body["results"][0]["failure"];
        Ok::<_, anyhow::Error>(json!({
            "checks": n,
            "assigned_s": round3(assigned_s),
            "idle": {"rss_mib": round3(idle.rss_kib as f64 / 1024.0), "peak_rss_mib": round3(idle.hwm_kib as f64 / 1024.0), "cpu_pct": round3(idle_cpu_pct)},
            "busy": {"rss_mib": round3(busy.rss_kib as f64 / 1024.0), "peak_rss_mib": round3(busy.hwm_kib as f64 / 1024.0), "cpu_pct": round3(busy_cpu_pct),
                     "probes_per_s": round3(probes as f64 / window.as_secs_f64()),
                     "sample_failure": format!("{} ({})", failure["step"].as_str().unwrap_or("?"), failure["class"].as_str().unwrap_or("?"))},
            "stored_before_busy": stored_before,
            "window_s": window.as_secs(),
        }))
    }
    .await;
    let _ = Command::new("kill")
        .args(["-TERM", &agent_pid.to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while agent.try_wait()?.is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await; // polling the child's exit with a deadline
    }
    let _ = agent.kill();
    let _ = agent.wait();
    coord.stop()?;
    result
}

/// PUTs `n` checks, 16 at a time.
async fn put_checks(api: &Client, n: usize, table: impl Fn(usize) -> Value) -> anyhow::Result<()> {
    let slots = Arc::new(Semaphore::new(16));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let api = api.clone();
        let body = table(i);
        let permit = slots.clone().acquire_owned().await?;
        tasks.push(tokio::spawn(async move {
            let r = api.put(&format!("/api/v1/checks/fp-{i:04}"), &body).await;
            drop(permit);
            let r = r?;
            anyhow::ensure!(r.is_success(), "check fp-{i:04}: {}", r.error_text());
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Results of `region` stored in the last hour (paged).
async fn count_results(api: &Client, region: &str) -> anyhow::Result<u64> {
    count_pages(
        api,
        &format!("/api/v1/results?region={region}&since=1h&limit=1000"),
    )
    .await
}

/// Results that started in the `window` from `from`.
async fn count_since(
    api: &Client,
    from: chrono::DateTime<chrono::Utc>,
    window: Duration,
) -> anyhow::Result<u64> {
    let until = from + chrono::Duration::from_std(window)?;
    let fmt =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    count_pages(
        api,
        &format!(
            "/api/v1/results?region=fp&since={}&until={}&limit=1000",
            fmt(from),
            fmt(until)
        ),
    )
    .await
}

async fn count_pages(api: &Client, first: &str) -> anyhow::Result<u64> {
    let mut total = 0;
    let mut path = first.to_string();
    loop {
        let r = api.get(&path).await?;
        anyhow::ensure!(r.is_success(), "{path}: {}", r.error_text());
        total += r.body["results"].as_array().map_or(0, Vec::len) as u64;
        match r.body["next"].as_str() {
            Some(next) => path = format!("{first}&cursor={next}"),
            None => return Ok(total),
        }
    }
}

// ───────────────────────────── the table ─────────────────────────────

fn print_table(runs: &[Value], footprint: Option<&Value>) {
    let mut out = String::new();
    let f = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format_num(x));
    out.push_str("\nCoordinator load (mailloop-loadgen: real coordinator process, simulated agents over gRPC)\n");
    // One column per run (100, 1,000, 10,000 agents, traces off/on ...).
    let line = |label: &str, cells: &[String], goal: &str| {
        let cells: String = cells.iter().map(|c| format!(" {c:>14}")).collect();
        format!("{label:<44}{cells}   {goal}\n")
    };
    let blank: Vec<String> = runs.iter().map(|_| String::new()).collect();
    out.push_str(&line("figure", &blank, "goal (issues 4, 15)"));
    let header: Vec<String> = runs
        .iter()
        .map(|r| format!("{} agents", r["agents"]))
        .collect();
    out.push_str(&line("", &header, ""));
    let row = |out: &mut String, label: &str, get: &dyn Fn(&Value) -> String, goal: &str| {
        let cells: Vec<String> = runs.iter().map(get).collect();
        out.push_str(&line(label, &cells, goal));
    };
    row(
        &mut out,
        "reports stored per second",
        &|r| f(&r["reports_per_s"]),
        &format!(">= {}", format_num(GOAL_REPORTS_PER_S)),
    );
    row(
        &mut out,
        "reports acked = rows stored",
        &|r| format!("{} = {}", r["acked"], r["stored_rows"]),
        "equal",
    );
    row(
        &mut out,
        "ack latency p50 / p99 (ms)",
        &|r| format!("{} / {}", f(&r["ack_ms"]["p50"]), f(&r["ack_ms"]["p99"])),
        &format!("p99 <= {} at 1,000 x 8 in flight", format_num(GOAL_ACK_P99_MS)),
    );
    row(
        &mut out,
        "coordinator CPU per 1,000 reports (ms)",
        &|r| f(&r["cpu_ms_per_1000_reports"]),
        "",
    );
    row(
        &mut out,
        "connect storm: all connected + assigned (s)",
        &|r| f(&r["connect_s"]),
        &GOAL_CONNECT_S
            .iter()
            .map(|(n, s)| format!("<= {s} s at {}", format_num(*n as f64)))
            .collect::<Vec<_>>()
            .join(", "),
    );
    row(
        &mut out,
        "coordinator RSS per idle agent (KiB)",
        &|r| f(&r["idle_kib_per_agent"]),
        &format!("<= {}", format_num(GOAL_IDLE_KIB_PER_AGENT)),
    );
    row(
        &mut out,
        "coordinator CPU, connect storm (s)",
        &|r| f(&r["connect"]["cpu_s"]),
        "",
    );

    row(
        &mut out,
        "check change reaches every agent p50 (ms)",
        &|r| f(&r["propagation_ms"]["p50"]),
        "",
    );
    row(
        &mut out,
        "check change reaches every agent p99 (ms)",
        &|r| f(&r["propagation_ms"]["p99"]),
        "",
    );
    row(
        &mut out,
        "  p99 from the PUT's start (ms)",
        &|r| f(&r["propagation_ms"]["p99_from_call"]),
        &format!("< {} at 10,000 agents", format_num(GOAL_PROPAGATION_P99_MS)),
    );
    row(
        &mut out,
        "coordinator CPU, ingest (s / % of a core)",
        &|r| {
            format!(
                "{} / {}%",
                f(&r["ingest"]["cpu_s"]),
                f(&r["ingest"]["cpu_pct"])
            )
        },
        "",
    );
    row(
        &mut out,
        "coordinator peak RSS, ingest (MiB)",
        &|r| f(&r["ingest"]["peak_rss_mib"]),
        "",
    );
    row(
        &mut out,
        "coordinator CPU per check change (ms)",
        &|r| f(&r["cpu_ms_per_change"]),
        "",
    );
    row(
        &mut out,
        "coordinator CPU, propagation (s)",
        &|r| f(&r["propagation"]["cpu_s"]),
        "",
    );
    row(
        &mut out,
        "coordinator peak RSS, propagation (MiB)",
        &|r| f(&r["propagation"]["peak_rss_mib"]),
        "",
    );
    if let Some(fp) = footprint {
        out.push_str(&format!(
            "\nAgent footprint (mailloop-agent run, {} checks, probes fail at once on a local 554 port)\n",
            fp["checks"]
        ));
        out.push_str(&format!(
            "{:<44} {:>14}   {}\n",
            "idle agent RSS (MiB)",
            f(&fp["idle"]["rss_mib"]),
            format!("< {} MB", GOAL_IDLE_AGENT_RSS_MB)
        ));
        out.push_str(&format!(
            "{:<44} {:>14}\n",
            "idle agent CPU (% of a core)",
            f(&fp["idle"]["cpu_pct"])
        ));
        out.push_str(&format!(
            "{:<44} {:>14}\n",
            format!(
                "busy agent RSS (MiB), {} probes/s",
                f(&fp["busy"]["probes_per_s"])
            ),
            f(&fp["busy"]["rss_mib"])
        ));
        out.push_str(&format!(
            "{:<44} {:>14}\n",
            "busy agent CPU (% of a core)",
            f(&fp["busy"]["cpu_pct"])
        ));
    }
    out.push_str(&format!("load average at the end: {}\n", loadavg()));
    print!("{out}");
}

fn format_num(x: f64) -> String {
    if x.is_nan() {
        return "-".into();
    }
    if x.abs() >= 1000.0 {
        let s = format!("{:.0}", x);
        let (sign, digits) = s.split_at(if s.starts_with('-') { 1 } else { 0 });
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        format!("{sign}{out}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

// ───────────────────────────── traces ─────────────────────────────

/// An OTLP/gRPC trace receiver (the official `opentelemetry-proto` tonic
/// service) that counts the spans and span links it decodes and keeps
/// nothing.
struct Sink {
    url: String,
    spans: Arc<AtomicU64>,
    links: Arc<AtomicU64>,
}

#[derive(Clone)]
struct Counting(Arc<AtomicU64>, Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for Counting {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        let spans = || request.resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans);
        self.0.fetch_add(spans().count() as u64, Ordering::Relaxed);
        self.1.fetch_add(spans().map(|s| s.links.len() as u64).sum(), Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Sink {
    async fn start() -> anyhow::Result<Sink> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let spans = Arc::new(AtomicU64::new(0));
        let links = Arc::new(AtomicU64::new(0));
        let service = TraceServiceServer::new(Counting(spans.clone(), links.clone()));
        tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        Ok(Sink { url, spans, links })
    }
}

/// `--otlp-sink`: OTLP/gRPC and OTLP/HTTP receivers on loopback until
/// stdin closes; then the requests, spans and headers seen, as JSON.
async fn otlp_sink() -> anyhow::Result<()> {
    use prost::Message;
    let grpc = Sink::start().await?;
    let http_spans = Arc::new(AtomicU64::new(0));
    let http_requests = Arc::new(AtomicU64::new(0));
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post({
            let (spans, requests) = (http_spans.clone(), http_requests.clone());
            move |body: axum::body::Bytes| async move {
                let response = ExportTraceServiceResponse { partial_success: None }.encode_to_vec();
                match ExportTraceServiceRequest::decode(body) {
                    Ok(req) => {
                        let n: usize =
                            req.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
                        spans.fetch_add(n as u64, Ordering::Relaxed);
                        requests.fetch_add(1, Ordering::Relaxed);
                        (axum::http::StatusCode::OK, [("content-type", "application/x-protobuf")], response)
                    }
                    Err(_) => (axum::http::StatusCode::BAD_REQUEST, [("content-type", "text/plain")], Vec::new()),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let http_url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    println!("grpc={} http={http_url}", grpc.url);
    std::io::stdout().flush()?;
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    })
    .await?;
    println!(
        "{}",
        json!({
            "grpc_spans": grpc.spans.load(Ordering::Relaxed),
            "http_spans": http_spans.load(Ordering::Relaxed),
            "http_requests": http_requests.load(Ordering::Relaxed),
        })
    );
    Ok(())
}

fn print_traces(t: &Value) {
    println!(
        "\nCoordinator ingest with metrics and traces off / traces only / both on ({} simulated agents, median of {} runs each, rotating order)\n",
        t["agents"], t["rounds"]
    );
    println!("                  reports/s   coordinator CPU per 1,000 reports");
    for (label, k) in [("both off", "off"), ("traces only", "traces"), ("both on", "on")] {
        let cpu = f(&t[format!("{k}_cpu_ms_per_1000")]);
        let off = f(&t["off_cpu_ms_per_1000"]);
        println!(
            "  {label:<12} {:>10}   {cpu:>7.1} ms ({:+.1} %)",
            format_num(f(&t[format!("{k}_reports_per_s")])),
            (cpu / off - 1.0) * 100.0
        );
    }
    println!("  ({} spans, {} links to probes received)", t["spans_received"], t["links_received"]);
    println!(
        "  both on / off   {:>7.1} %   goal >= 95 %  {}   (by CPU per report: {:.1} %)",
        f(&t["ratio"]) * 100.0,
        if f(&t["ratio"]) >= 0.95 { "met" } else { "NOT met" },
        f(&t["cpu_ratio"]) * 100.0
    );
}

fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

// ───────────────────────────── /metrics ─────────────────────────────

/// GET `/metrics` on `addr` with `accept`: (whole response time, body).
fn scrape_once(addr: SocketAddr, accept: &str) -> anyhow::Result<(Duration, String)> {
    use std::io::Read;
    let started = Instant::now();
    let mut s = std::net::TcpStream::connect(addr)?;
    write!(
        s,
        "GET /metrics HTTP/1.0\r\nHost: {addr}\r\nAccept: {accept}\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let took = started.elapsed();
    let raw = String::from_utf8(raw)?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no end of headers"))?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "/metrics: {head}"
    );
    Ok((took, body.to_string()))
}

/// One simulated agent's open report stream (the /metrics measurement).
struct Feed {
    token: String,
    tx: mpsc::Sender<pb::ProbeResult>,
    acks: tonic::Streaming<pb::ResultAck>,
    /// The last round reported.
    round: u64,
}

impl Feed {
    async fn open(grpc: SocketAddr, name: String, region: String, token: String) -> anyhow::Result<Feed> {
        let mut c = connect(grpc, &token).await?;
        c.register(pb::RegisterRequest {
            name,
            region,
            version: "loadgen".into(),
            ..Default::default()
        })
        .await?;
        let (tx, rx) = mpsc::channel::<pb::ProbeResult>(64);
        let acks = c
            .report_results(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Feed { token, tx, acks, round: 0 })
    }

    /// Reports the next round of each of `checks` and waits until every
    /// report is stored.
    async fn round(mut self, checks: Vec<usize>) -> anyhow::Result<Feed> {
        self.round += 1;
        let (round, total, tx, token) = (self.round, checks.len(), self.tx.clone(), self.token.clone());
        let sender = tokio::spawn(async move {
            for i in checks {
                let check = format!("mc-{i:04}");
                let id = format!("lgm-{token}-{i}-{round}");
                let r = pb::ProbeResult {
                    probe_id: id.clone(),
                    check_id: check.clone(),
                    revision: 1,
                    round,
                    report_json: report_template(&check).replace("__ID__", &id),
                    ..Default::default()
                };
                if tx.send(r).await.is_err() {
                    return;
                }
            }
        });
        for _ in 0..total {
            let ack = tokio::time::timeout(Duration::from_secs(60), self.acks.message())
                .await
                .map_err(|_| anyhow::anyhow!("no ack within 60 s"))??
                .ok_or_else(|| anyhow::anyhow!("the report stream closed"))?;
            anyhow::ensure!(ack.stored, "report not stored: {}", ack.error);
        }
        sender.await?;
        Ok(self)
    }
}

/// Every feed reports a round of `checks`, all at once.
async fn feed_round(feeds: Vec<Feed>, checks: &[usize]) -> anyhow::Result<Vec<Feed>> {
    let tasks: Vec<_> = feeds
        .into_iter()
        .map(|f| tokio::spawn(f.round(checks.to_vec())))
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await??);
    }
    Ok(out)
}

/// The Accept headers of a Prometheus scrape (OpenMetrics) and of curl
/// (the classic text).
const SCRAPE_FORMATS: [(&str, &str); 2] = [
    (
        "openmetrics",
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    ),
    ("classic", "text/plain"),
];

/// /metrics of a coordinator holding `metrics_checks` checks in
/// `metrics_regions` regions, each check × region with stored reports:
/// scraped idle (nothing recorded between two scrapes), then with a steady
/// flow (a share of the check × regions reports before each scrape).
async fn metrics_run(args: &Args) -> anyhow::Result<Value> {
    let (checks, regions) = (args.metrics_checks, args.metrics_regions.max(1));
    let agents: Vec<(String, String, String)> = (0..regions)
        .map(|i| {
            (
                format!("m-{i}"),
                format!("region-{i}"),
                format!("loadgen-metrics-token-{i}-0123456789"),
            )
        })
        .collect();
    let mut coord = Coordinator::start(&args.coordinator_bin, &agents, "", "")?;
    let pid = coord.pid();
    let api = coord.api()?;
    let names: Vec<&str> = agents.iter().map(|a| a.1.as_str()).collect();
    let slots = Arc::new(Semaphore::new(16));
    let mut tasks = Vec::with_capacity(checks);
    for i in 0..checks {
        let (api, slots) = (api.clone(), slots.clone());
        let body = json!({
            "from": "probe@sender.test", "to": "probe@receiver.test", "interval": "1h",
            "regions": names, "step_timeout": "30s",
            "smtp": {"host": "127.0.0.1", "port": 2525, "security": "none"},
            "imap": {"host": "127.0.0.1", "security": "none", "username": "probe@receiver.test", "password_env": "IMAP_PASS"},
            "spf": {"enabled": false},
        });
        tasks.push(tokio::spawn(async move {
            let _permit = slots.acquire_owned().await?;
            let r = api.put(&format!("/api/v1/checks/mc-{i:04}"), &body).await?;
            anyhow::ensure!(r.is_success(), "check mc-{i:04}: {}", r.error_text());
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    // Every region reports every check twice (two rounds).
    let rounds = 2u64;
    let mut feeds = Vec::new();
    for (name, region, token) in agents.clone() {
        feeds.push(Feed::open(coord.grpc, name, region, token).await?);
    }
    let all: Vec<usize> = (0..checks).collect();
    for _ in 0..rounds {
        feeds = feed_round(feeds, &all).await?;
    }
    let addr = coord.http;
    let runs = args.metrics_scrapes.max(1);
    // Idle: back to back, the first one (which encodes everything) left out
    // of the times but not of the CPU.
    let before = proc_stats(pid);
    let started = Instant::now();
    let mut figures = serde_json::Map::new();
    for (label, accept) in SCRAPE_FORMATS {
        let accept = accept.to_string();
        let (times, body) = tokio::task::spawn_blocking(move || {
            let mut times = Vec::new();
            let mut body = String::new();
            for _ in 0..=runs {
                let (t, b) = scrape_once(addr, &accept)?;
                times.push(t.as_secs_f64() * 1000.0);
                body = b;
            }
            times.remove(0); // the first one warms up
            times.sort_by(f64::total_cmp);
            Ok::<_, anyhow::Error>((times, body))
        })
        .await??;
        if let Some(dir) = &args.metrics_dump {
            std::fs::create_dir_all(dir)?;
            std::fs::write(dir.join(format!("{label}.txt")), &body)?;
        }
        let series = body
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .count();
        let step_series = body
            .lines()
            .filter(|l| l.starts_with("mailloop_step_duration_seconds_count{"))
            .count();
        figures.insert(
            label.into(),
            json!({
                "scrape_ms": {"p50": round3(percentile(&times, 0.5)), "p99": round3(percentile(&times, 0.99)), "max": round3(times.last().copied().unwrap_or(f64::NAN))},
                "bytes": body.len(),
                // What the body would weigh gzipped (default level), as a
                // scraper sending Accept-Encoding: gzip could get it.
                "gzip_bytes": gzip_len(body.as_bytes()),
                "series": series,
                "step_histograms": step_series,
            }),
        );
    }
    let cost = phase(pid, before, started.elapsed());
    // Steady: before each scrape, a share of the check × regions report
    // (a window of checks sliding over them, in every region); the CPU is
    // counted over the scrapes alone.
    let per_batch = ((checks as f64 * args.metrics_changed_share).ceil() as usize).min(checks);
    let mut steady = serde_json::Map::new();
    let mut steady_cpu_s = 0.0;
    let mut next = 0;
    if per_batch > 0 {
        for (label, accept) in SCRAPE_FORMATS {
            let mut times = Vec::new();
            for _ in 0..runs {
                let window: Vec<usize> = (0..per_batch).map(|j| (next + j) % checks).collect();
                next = (next + per_batch) % checks;
                feeds = feed_round(feeds, &window).await?;
                let accept = accept.to_string();
                let before = proc_stats(pid);
                let took = tokio::task::spawn_blocking(move || scrape_once(addr, &accept).map(|(t, _)| t)).await??;
                steady_cpu_s += proc_stats(pid).cpu_s - before.cpu_s;
                times.push(took.as_secs_f64() * 1000.0);
            }
            times.sort_by(f64::total_cmp);
            steady.insert(
                label.into(),
                json!({"scrape_ms": {"p50": round3(percentile(&times, 0.5)), "p99": round3(percentile(&times, 0.99)), "max": round3(times.last().copied().unwrap_or(f64::NAN))}}),
            );
        }
    }
    coord.stop()?;
    Ok(json!({
        "checks": checks,
        "regions": regions,
        "reports": checks as u64 * regions as u64 * rounds,
        "scrapes_per_format": runs,
        "formats": figures,
        // CPU time is robust to a loaded machine where wall time is not.
        "coordinator_cpu_ms_per_scrape": round3(cost["cpu_s"].as_f64().unwrap_or(f64::NAN) * 1000.0 / (2.0 * (runs as f64 + 1.0))),
        "coordinator_during_scrapes": cost,
        "steady": {
            "changed_check_regions_per_scrape": per_batch * regions,
            "formats": steady,
            "coordinator_cpu_ms_per_scrape": if per_batch > 0 { round3(steady_cpu_s * 1000.0 / (2.0 * runs as f64)) } else { f64::NAN },
        },
        "loadavg": loadavg(),
    }))
}

/// The size of `body` gzipped (what a scraper sending `Accept-Encoding:
/// gzip` would get if the coordinator compressed).
fn gzip_len(body: &[u8]) -> u64 {
    use std::io::Write;
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = z.write_all(body);
    z.finish().map_or(0, |out| out.len() as u64)
}

fn print_scrape(s: &Value) {
    let mut out = format!(
        "\n/metrics scrape (real coordinator, default metrics_steps, {} checks x {} regions, each with reports of 21 steps; {} scrapes per format)\n",
        s["checks"], s["regions"], s["scrapes_per_format"]
    );
    out.push_str(&format!(
        "{:<22} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>16}   goal (issue 10)\n",
        "format", "p50 ms", "p99 ms", "max ms", "MB", "gzip MB", "series", "step histograms"
    ));
    for label in ["openmetrics", "classic"] {
        let f = &s["formats"][label];
        out.push_str(&format!(
            "{:<22} {:>9} {:>9} {:>9} {:>9.1} {:>10.1} {:>10} {:>16}   < 100 ms, series count reported\n",
            format!("idle {label}"),
            f["scrape_ms"]["p50"],
            f["scrape_ms"]["p99"],
            f["scrape_ms"]["max"],
            f["bytes"].as_f64().unwrap_or(0.0) / 1e6,
            f["gzip_bytes"].as_f64().unwrap_or(0.0) / 1e6,
            f["series"],
            f["step_histograms"],
        ));
    }
    let steady = &s["steady"];
    for label in ["openmetrics", "classic"] {
        let f = &steady["formats"][label];
        if f.is_null() {
            continue;
        }
        out.push_str(&format!(
            "{:<22} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>16}   < 100 ms\n",
            format!("steady {label}"),
            f["scrape_ms"]["p50"],
            f["scrape_ms"]["p99"],
            f["scrape_ms"]["max"],
            "", "", "", ""
        ));
    }
    out.push_str(&format!(
        "coordinator CPU per scrape, idle (the first one encodes every series, the others reuse them): {} ms; during the scrapes: {}\n",
        s["coordinator_cpu_ms_per_scrape"], s["coordinator_during_scrapes"]
    ));
    if !steady["formats"].as_object().is_none_or(|f| f.is_empty()) {
        out.push_str(&format!(
            "coordinator CPU per scrape, steady ({} check x regions reported before each scrape): {} ms\n",
            steady["changed_check_regions_per_scrape"], steady["coordinator_cpu_ms_per_scrape"]
        ));
    }
    out.push_str(&format!("machine load: {}\n", s["loadavg"]));
    print!("{out}");
}

// ───────────────────────────── PostgreSQL ─────────────────────────────

/// Creates database `mailloop_bench_<what>_<pid>_<µs>` on the server of
/// `base` (its maintenance database) and returns its URL.
async fn fresh_database(base: &str, what: &str) -> anyhow::Result<String> {
    let name = format!("mailloop_bench_{what}_{}_{}", std::process::id(), chrono::Utc::now().timestamp_micros());
    let (client, connection) = tokio_postgres::connect(base, tokio_postgres::NoTls).await?;
    let io = tokio::spawn(connection);
    client.batch_execute(&format!("CREATE DATABASE {name}")).await?;
    drop(client);
    let _ = io.await;
    let (head, tail) = base.split_once('?').map_or((base, None), |(h, t)| (h, Some(t)));
    let root = head.rsplit_once('/').map_or(head, |(r, _)| r);
    Ok(match tail {
        Some(t) => format!("{root}/{name}?{t}"),
        None => format!("{root}/{name}"),
    })
}

/// `/readyz`'s role, None while it does not answer.
async fn role(api: &Client) -> Option<String> {
    let r = api.get("/readyz").await.ok()?;
    r.body["role"].as_str().map(str::to_string)
}

/// Newest `decided_at_ms` in the verdicts table (0 when none).
async fn newest_verdict_ms(db: &tokio_postgres::Client) -> anyhow::Result<i64> {
    let row = db.query_one("SELECT COALESCE(MAX(decided_at_ms), 0)::int8 FROM verdicts", &[]).await?;
    Ok(row.get(0))
}

/// Two replicas on `url` judging a check with a 1 s interval (its one
/// region's agent never connects, so every round is decided at its
/// deadline, 1 s after it starts, with `round_slack = "100ms"`);
/// `--failovers` times: `kill -9` of the leader, then the time until the
/// other says `leader` on `/readyz` (polled every 20 ms) and until the
/// first verdict the new leader stored (a verdict decided after the kill:
/// the old leader is dead by then, so it is the new one's); a fresh
/// replica replaces the dead one before the next kill.
async fn failover_run(args: &Args, url: &str) -> anyhow::Result<Value> {
    let storage = format!("\n[storage]\nurl = {url:?}\n\n[incidents]\nround_slack = \"100ms\"\n");
    let agents = [("fo-agent".to_string(), "r-fo".to_string(), "loadgen-failover-token-0123456789abcdef".to_string())];
    let mut replicas = vec![
        Coordinator::start(&args.coordinator_bin, &agents, "", &storage)?,
        Coordinator::start(&args.coordinator_bin, &agents, "", &storage)?,
    ];
    let table = json!({
        "from": "probe@sender.test", "to": "probe@receiver.test", "interval": "1s",
        "regions": ["r-fo"], "step_timeout": "30s",
        "smtp": {"host": "127.0.0.1", "port": 2525, "security": "none"},
        "imap": {"host": "127.0.0.1", "security": "none", "username": "probe@receiver.test", "password_env": "IMAP_PASS"},
        "spf": {"enabled": false},
    });
    let put = replicas[0].api()?.put("/api/v1/checks/failover", &table).await?;
    anyhow::ensure!(put.is_success(), "creating the failover check: {}", put.error_text());
    let (db, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let _io = tokio::spawn(connection);
    let (mut takeovers, mut verdicts) = (Vec::new(), Vec::new());
    for _ in 0..args.failovers {
        // One leader that is judging, and one ready follower, before each kill.
        let deadline = Instant::now() + Duration::from_secs(60);
        let leader = loop {
            let mut roles = Vec::new();
            for r in &replicas {
                roles.push(role(&r.api()?).await);
            }
            let judging = newest_verdict_ms(&db).await? > chrono::Utc::now().timestamp_millis() - 3000;
            match (roles[0].as_deref(), roles[1].as_deref(), judging) {
                (Some("leader"), Some("follower"), true) => break 0,
                (Some("follower"), Some("leader"), true) => break 1,
                _ if Instant::now() > deadline => {
                    anyhow::bail!("no judging leader and follower within 60 s: {roles:?}, judging {judging}")
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let mut dead = replicas.remove(leader);
        let survivor = replicas[0].api()?;
        let killed = Instant::now();
        if let Some(mut child) = dead.child.take() {
            child.kill()?;
            child.wait()?;
        }
        // Every verdict decided from here on is the survivor's.
        let killed_ms = chrono::Utc::now().timestamp_millis();
        let (mut took_over, mut judged) = (None, None);
        while took_over.is_none() || judged.is_none() {
            if took_over.is_none() && role(&survivor).await.as_deref() == Some("leader") {
                took_over = Some(killed.elapsed().as_secs_f64());
            }
            if judged.is_none() && newest_verdict_ms(&db).await? > killed_ms {
                judged = Some(killed.elapsed().as_secs_f64());
            }
            anyhow::ensure!(
                killed.elapsed() < Duration::from_secs(120),
                "within 120 s of the kill: takeover {took_over:?}, first new verdict {judged:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (took_over, judged) = (took_over.unwrap_or_default(), judged.unwrap_or_default());
        eprintln!("loadgen: takeover {took_over:.2} s, first verdict of the new leader {judged:.2} s");
        takeovers.push(took_over);
        verdicts.push(judged);
        drop(dead);
        replicas.push(Coordinator::start(&args.coordinator_bin, &agents, "", &storage)?);
    }
    let stats = |v: &[f64]| {
        let mut sorted = v.to_vec();
        sorted.sort_by(f64::total_cmp);
        let m = sorted.len() / 2;
        let median = match sorted.len() {
            0 => 0.0,
            n if n % 2 == 1 => sorted[m],
            _ => (sorted[m - 1] + sorted[m]) / 2.0,
        };
        (round3(median), round3(sorted.last().copied().unwrap_or(0.0)))
    };
    let ((median, max), (v_median, v_max)) = (stats(&takeovers), stats(&verdicts));
    Ok(json!({
        "kills": takeovers.len(),
        "takeover_s": takeovers.iter().map(|t| round3(*t)).collect::<Vec<_>>(),
        "median_s": median,
        "max_s": max,
        "first_verdict_s": verdicts.iter().map(|t| round3(*t)).collect::<Vec<_>>(),
        "verdict_median_s": v_median,
        "verdict_max_s": v_max,
    }))
}

fn print_postgres(sqlite: Option<&Value>, pg: &[Value], failover: Option<&Value>) {
    let (one, two) = (pg.first(), pg.get(1));
    let num = |v: Option<&Value>, get: &dyn Fn(&Value) -> &Value| {
        v.and_then(|v| get(v).as_f64()).map_or("-".to_string(), format_num)
    };
    let row = |label: String, get: &dyn Fn(&Value) -> &Value, goal: &str| {
        println!(
            "{label:<44} {:>12} {:>12} {:>12}   {goal}",
            num(sqlite, get),
            num(one, get),
            num(two, get)
        );
    };
    println!("\nPostgreSQL (issue 13)");
    println!("{:<44} {:>12} {:>12} {:>12}   goal", "figure", "SQLite", "PG 1 replica", "PG 2 replicas");
    if let Some(p) = one {
        row(
            format!("reports stored per second ({} agents)", p["agents"]),
            &|v| &v["reports_per_s"],
            ">= 8,000/s, one replica",
        );
        row("ack latency p50 (ms)".into(), &|v| &v["ack_ms"]["p50"], "");
        row("ack latency p99 (ms)".into(), &|v| &v["ack_ms"]["p99"], "");
        row(
            "coordinator CPU ms per 1,000 reports".into(),
            &|v| &v["cpu_ms_per_1000_reports"],
            "(sum of replicas; robust to load)",
        );
        let equal = |v: Option<&Value>| v.map_or("-".to_string(), |v| format!("{}", v["acked"] == v["stored_rows"]));
        println!(
            "{:<44} {:>12} {:>12} {:>12}   equal",
            "acked = stored rows",
            equal(sqlite),
            equal(one),
            equal(two)
        );
    }
    if let Some(fo) = failover {
        println!(
            "{:<44} {:>12} {:>12} {:>12}   <= 10 s",
            format!("leader kill -9 -> takeover, s (x{})", fo["kills"]),
            "",
            format!("median {}", fo["median_s"]),
            format!("max {}", fo["max_s"])
        );
        println!(
            "{:<44} {:>12} {:>12} {:>12}   <= 10 s",
            format!("leader kill -9 -> first new verdict, s (x{})", fo["kills"]),
            "",
            format!("median {}", fo["verdict_median_s"]),
            format!("max {}", fo["verdict_max_s"])
        );
    }
}
