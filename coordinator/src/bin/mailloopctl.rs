//! `mailloopctl`: the SRE's CLI over the coordinator's admin API.
//!
//! Exit codes: 0 done, 1 the coordinator refused or failed the request,
//! 3 a local problem (bad arguments, unreadable file, unreachable coordinator).

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use mailloop_coordinator::client::{ApiResponse, Client};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "mailloopctl",
    version,
    about = "Manage a mailloop coordinator: checks, agents, results, incidents, status"
)]
struct Cli {
    /// The coordinator's admin API.
    #[arg(
        long,
        env = "MAILLOOP_URL",
        default_value = "http://127.0.0.1:7480",
        global = true
    )]
    url: String,
    /// Admin bearer token (needed for changes).
    #[arg(long, env = "MAILLOOP_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
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
    /// Agents: list, add, revoke.
    #[command(subcommand)]
    Agents(AgentsCmd),
    /// Recent results of a check, newest first.
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
    /// The latest round of a check in every region, with each region's steps.
    Latest { check: String },
    /// Run a check now in every region and print each region's steps as its
    /// report arrives. Exits 0 if every region delivered, 1 if any was
    /// degraded, 2 if any failed, timed out or has no agent, 3 if the run
    /// could not be asked for.
    Probe {
        check: String,
        /// How long to wait for the regions' reports.
        #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Incidents the judge opened: list, show (summary and timeline), ack.
    #[command(subcommand)]
    Incidents(IncidentsCmd),
    /// Every check's current verdict, region by region, and its active
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
    /// Print a check as a `[[check]]` table (re-appliable with `apply`).
    Show {
        id: String,
    },
    /// Create or update every `[[check]]` of a TOML file (with interval and regions).
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    Delete {
        id: String,
    },
}

#[derive(Subcommand)]
enum AgentsCmd {
    List,
    /// Create an agent and print its token (shown only this once).
    Add {
        name: String,
        #[arg(long)]
        region: String,
    },
    /// Revoke an agent's token; its checks move to the region's other agents.
    Revoke {
        name: String,
    },
}

/// The coordinator answered, but not with success.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<ProbeVerdict>().is_some() => {
            ExitCode::from(e.downcast_ref::<ProbeVerdict>().map_or(3, |v| v.0))
        }
        Err(e) => match e.downcast_ref::<Refused>() {
            Some(r) => {
                eprintln!("mailloopctl: {}", r.0);
                ExitCode::from(1)
            }
            None => {
                eprintln!("mailloopctl: {e:#}");
                ExitCode::from(3)
            }
        },
    }
}

fn success(r: ApiResponse) -> Result<Value, Refused> {
    if r.is_success() {
        Ok(r.body)
    } else {
        Err(Refused(r.error_text()))
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let api = Client::new(&cli.url, cli.token.clone(), cli.ca_file.as_deref())?;
    let out = cli.output;
    match cli.command {
        Command::Checks(ChecksCmd::List) => {
            let body = success(api.get("/api/v1/checks").await?)?;
            let checks = body["checks"].as_array().cloned().unwrap_or_default();
            if out == Output::Json {
                return print_json(&Value::Array(checks));
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
        Command::Checks(ChecksCmd::Show { id }) => {
            let body = success(api.get(&format!("/api/v1/checks/{}", seg(&id))).await?)?;
            if out == Output::Json {
                return print_json(&body);
            }
            println!(
                "# revision {}, {} (updated {})",
                text(&body["revision"]),
                text(&body["source"]),
                text(&body["updated_at"])
            );
            let doc = json!({"check": [body["check"].clone()]});
            let toml_value: toml::Value =
                serde_json::from_value(doc).context("the check is not representable as TOML")?;
            print!(
                "{}",
                toml::to_string_pretty(&toml_value).context("rendering TOML")?
            );
        }
        Command::Checks(ChecksCmd::Apply { file }) => {
            let text_ = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let doc = mailloop_coordinator::config::parse_toml(&text_)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let Some(checks) = doc.get("check").and_then(Value::as_array) else {
                bail!("{}: no [[check]] tables", file.display());
            };
            let mut failed = Vec::new();
            for (i, check) in checks.iter().enumerate() {
                let Some(name) = check.get("name").and_then(Value::as_str) else {
                    failed.push(format!("check[{i}].name: required"));
                    continue;
                };
                let r = api
                    .put(&format!("/api/v1/checks/{}", seg(name)), check)
                    .await?;
                if r.is_success() {
                    println!(
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
            if !failed.is_empty() {
                return Err(Refused(format!(
                    "{} of {} checks refused:\n{}",
                    failed.len(),
                    checks.len(),
                    failed.join("\n")
                ))
                .into());
            }
        }
        Command::Checks(ChecksCmd::Delete { id }) => {
            let body = success(api.delete(&format!("/api/v1/checks/{}", seg(&id))).await?)?;
            println!("{id}: deleted (revision {})", text(&body["revision"]));
        }
        Command::Agents(AgentsCmd::List) => {
            let body = success(api.get("/api/v1/agents").await?)?;
            let agents = body["agents"].as_array().cloned().unwrap_or_default();
            if out == Output::Json {
                return print_json(&Value::Array(agents));
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
                        text(&a["last_seen"]),
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
                    "SOURCE",
                ],
                rows,
            );
        }
        Command::Agents(AgentsCmd::Add { name, region }) => {
            let body = success(
                api.post("/api/v1/agents", &json!({"name": name, "region": region}))
                    .await?,
            )?;
            if out == Output::Json {
                return print_json(&body);
            }
            println!(
                "agent {name} added in region {region}. Its token (shown only now; put it in the agent's token_file):"
            );
            println!("{}", text(&body["token"]));
        }
        Command::Agents(AgentsCmd::Revoke { name }) => {
            success(
                api.post(&format!("/api/v1/agents/{}/revoke", seg(&name)), &json!({}))
                    .await?,
            )?;
            println!("{name}: revoked");
        }
        Command::Results {
            check,
            region,
            since,
            limit,
        } => {
            let mut path = format!(
                "/api/v1/checks/{}/results?since={}&limit={limit}",
                seg(&check),
                seg(&since)
            );
            if let Some(r) = &region {
                path.push_str(&format!("&region={}", seg(r)));
            }
            let body = success(api.get(&path).await?)?;
            let results = body["results"].as_array().cloned().unwrap_or_default();
            if out == Output::Json {
                // One result per line, like `mailloop-agent probe --output json`.
                for r in &results {
                    println!("{r}");
                }
                return Ok(());
            }
            if results.is_empty() {
                println!(
                    "no results for {check} since {since}{}",
                    region.map(|r| format!(" in {r}")).unwrap_or_default()
                );
                return Ok(());
            }
            let rows = results
                .iter()
                .map(|r| {
                    let failure = match r["failure"].as_object() {
                        Some(f) => format!("{} ({})", text(&f["step"]), text(&f["class"])),
                        None => String::new(),
                    };
                    vec![
                        text(&r["started_at"]),
                        text(&r["region"]),
                        text(&r["agent"]),
                        text(&r["round"]),
                        text(&r["outcome"]),
                        ms(&r["rtt_ms"]),
                        ms(&r["delivery_ms"]),
                        failure,
                    ]
                })
                .collect();
            table(
                &[
                    "STARTED", "REGION", "AGENT", "ROUND", "OUTCOME", "RTT", "DELIVERY", "FAILURE",
                ],
                rows,
            );
        }
        Command::Incidents(cmd) => incidents(&api, cmd, out).await?,
        Command::Status => status(&api, out).await?,
        Command::Tokens(cmd) => tokens(&api, cmd, out).await?,
        Command::Audit {
            actor,
            object,
            limit,
        } => audit(&api, actor, object, limit, out).await?,
        Command::Probe { check, timeout } => {
            let code = probe(&api, &check, timeout, out).await;
            if code != 0 {
                return Err(ProbeVerdict(code).into());
            }
        }
        Command::Latest { check } => {
            let body = success(
                api.get(&format!("/api/v1/checks/{}/latest", seg(&check)))
                    .await?,
            )?;
            if out == Output::Json {
                return print_json(&body);
            }
            if body["round"].is_null() {
                println!("{check}: no results yet");
                return Ok(());
            }
            println!(
                "check {check}  round {}  started {}",
                text(&body["round"]),
                text(&body["round_started_at"])
            );
            for region in body["regions"].as_array().into_iter().flatten() {
                let r = &region["result"];
                if r.is_null() {
                    println!("\n{}: no report for this round", text(&region["region"]));
                    continue;
                }
                print_region_report(&text(&region["region"]), r);
            }
        }
    }
    Ok(())
}

fn print_json(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
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
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

// ---------------------------------------------------------------------------
// `mailloopctl probe CHECK`: an on-demand run in every region.
// ---------------------------------------------------------------------------

/// The exit code of `probe` (Nagios convention, like `mailloop-agent probe`).
#[derive(Debug)]
struct ProbeVerdict(u8);

impl std::fmt::Display for ProbeVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "probe verdict {}", self.0)
    }
}

impl std::error::Error for ProbeVerdict {}

/// How often `probe` asks for the run's reports.
const PROBE_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// Orders the run, then prints each region's report as it is stored.
/// Returns the exit code: 0 every region ok, 1 some degraded, 2 some
/// failed, timed out or without an agent, 3 the run could not be ordered.
async fn probe(api: &Client, check: &str, timeout: std::time::Duration, out: Output) -> u8 {
    let ordered = match api
        .post(&format!("/api/v1/checks/{}/run", seg(check)), &json!({}))
        .await
    {
        Ok(r) if r.is_success() => r.body,
        Ok(r) => {
            eprintln!(
                "mailloopctl: the coordinator refused the run: {}",
                r.error_text()
            );
            return 3;
        }
        Err(e) => {
            eprintln!("mailloopctl: {e}");
            return 3;
        }
    };
    let request_id = text(&ordered["request_id"]);
    let regions: Vec<(String, Option<String>)> = ordered["regions"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(r, a)| (r.clone(), a.as_str().map(str::to_string)))
        .collect();
    let table_out = out == Output::Table;
    if table_out {
        println!("check {check}  on-demand run {request_id}");
        for (region, agent) in &regions {
            match agent {
                Some(a) => println!("  {region}: asked {a}"),
                None => {
                    println!("  {region}: NO AGENT connected in this region; it will not run there")
                }
            }
        }
    }
    let waiting_for: Vec<&str> = regions
        .iter()
        .filter(|(_, a)| a.is_some())
        .map(|(r, _)| r.as_str())
        .collect();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut arrived: std::collections::BTreeMap<String, Value> = Default::default();
    while arrived.len() < waiting_for.len() && tokio::time::Instant::now() < deadline {
        match api.get(&format!("/api/v1/runs/{}", seg(&request_id))).await {
            Ok(r) if r.is_success() => {
                for result in r.body["results"].as_array().into_iter().flatten() {
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
            Ok(r) => eprintln!("mailloopctl: reading the run's reports: {}", r.error_text()),
            Err(e) => eprintln!("mailloopctl: reading the run's reports: {e}"),
        }
        if arrived.len() < waiting_for.len() {
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
            "degraded" => 1,
            _ => 2,
        });
        if table_out && agent.is_some() && !arrived.contains_key(region) {
            println!(
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
        println!(
            "\nresult: {}  {}",
            ["OK", "DEGRADED", "FAILED"][code as usize],
            summary.join(" ")
        );
    } else {
        let body = json!({
            "request_id": request_id,
            "check": check,
            "regions": ordered["regions"],
            "verdicts": verdicts,
            "results": arrived.values().collect::<Vec<_>>(),
        });
        println!("{body}");
    }
    code
}

/// One region's report (of a round, or an on-demand run): its outcome line and steps.
fn print_region_report(region: &str, r: &Value) {
    println!(
        "\n{region}: {} by {}  probe {}  rtt {}  delivery {}",
        text(&r["outcome"]).to_uppercase(),
        text(&r["agent"]),
        text(&r["probe_id"]),
        ms(&r["rtt_ms"]),
        ms(&r["delivery_ms"])
    );
    let steps = r["report"]["steps"].as_array().cloned().unwrap_or_default();
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
    if let Some(f) = r["report"]["failure"].as_object() {
        println!(
            "  failed at {} ({}): {}",
            text(&f["step"]),
            text(&f["class"]),
            text(&f["message"])
        );
    }
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
        /// outage, regional, performance, authentication or certificate.
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
}

/// `2026-11-28T01:57:20.123Z` → `2026-11-28 01:57:20Z` (a table cell).
fn when(v: &Value) -> String {
    let t = text(v);
    match (t.get(..10), t.get(11..19)) {
        (Some(d), Some(h)) if t.len() >= 19 => format!("{d} {h}Z"),
        _ => t,
    }
}

async fn incidents(api: &Client, cmd: IncidentsCmd, out: Output) -> anyhow::Result<()> {
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
            let body = success(api.get(&path).await?)?;
            let list = body["incidents"].as_array().cloned().unwrap_or_default();
            if out == Output::Json {
                return print_json(&Value::Array(list));
            }
            if list.is_empty() {
                println!("no incidents");
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
                    ]
                })
                .collect();
            table(
                &[
                    "ID", "CHECK", "KIND", "SEVERITY", "STATE", "OPENED", "REGIONS", "STEP",
                ],
                rows,
            );
        }
        IncidentsCmd::Show { id } => {
            let i = success(api.get(&format!("/api/v1/incidents/{id}")).await?)?;
            if out == Output::Json {
                return print_json(&i);
            }
            print_incident(&i);
        }
        IncidentsCmd::Ack { id, by } => {
            let body = match &by {
                Some(name) => json!({"by": name}),
                None => json!({}),
            };
            let i = success(
                api.post(&format!("/api/v1/incidents/{id}/ack"), &body)
                    .await?,
            )?;
            if out == Output::Json {
                return print_json(&i);
            }
            if i["change"] == "unchanged" {
                println!(
                    "incident {id} was already acknowledged by {} at {}",
                    text(&i["acknowledged_by"]),
                    when(&i["acknowledged_at"])
                );
            } else {
                println!("incident {id} acknowledged");
            }
        }
    }
    Ok(())
}

fn print_incident(i: &Value) {
    println!(
        "incident {}  {} {} ({})  check {}  {}",
        text(&i["id"]),
        text(&i["severity"]).to_uppercase(),
        text(&i["kind"]),
        text(&i["state"]),
        text(&i["check_id"]),
        text(&i["key"]),
    );
    println!(
        "opened {} (round {})",
        when(&i["opened_at"]),
        text(&i["first_round"])
    );
    if !i["acknowledged_at"].is_null() {
        println!(
            "acknowledged {} by {}",
            when(&i["acknowledged_at"]),
            text(&i["acknowledged_by"])
        );
    }
    if !i["resolved_at"].is_null() {
        println!(
            "resolved {} (last round {})",
            when(&i["resolved_at"]),
            text(&i["last_round"])
        );
    }
    println!("\n{}\n", text(&i["summary"]));
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
                        text(&e["note"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(&["AT", "ROUND", "EVENT", "VERDICT", "NOTE"], rows);
}

async fn status(api: &Client, out: Output) -> anyhow::Result<()> {
    let body = success(api.get("/api/v1/status").await?)?;
    if out == Output::Json {
        return print_json(&body);
    }
    let checks = body["checks"].as_array().cloned().unwrap_or_default();
    if checks.is_empty() {
        println!("no checks");
        return Ok(());
    }
    let mut rows = Vec::new();
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
        // One line per region; the check's own columns only on the first.
        for (n, r) in c["regions"].as_array().into_iter().flatten().enumerate() {
            let detail = match (r["step"].as_str(), r["code"].as_u64()) {
                (Some(step), Some(code)) => format!("{step} {code} {}", text(&r["class"])),
                (Some(step), None) => format!("{step} {}", text(&r["class"])),
                _ => String::new(),
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
    Ok(())
}

async fn tokens(api: &Client, cmd: TokensCmd, out: Output) -> anyhow::Result<()> {
    match cmd {
        TokensCmd::List => {
            let body = success(api.get("/api/v1/tokens").await?)?;
            let tokens = body["tokens"].as_array().cloned().unwrap_or_default();
            if out == Output::Json {
                return print_json(&Value::Array(tokens));
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
            let answer = api
                .post("/api/v1/tokens", &json!({"name": name, "role": role}))
                .await;
            let body = match answer
                .map_err(anyhow::Error::from)
                .and_then(|r| Ok(success(r)?))
            {
                Ok(b) => b,
                Err(e) => {
                    let _ = std::fs::remove_file(&path);
                    return Err(e);
                }
            };
            use std::io::Write;
            writeln!(f, "{}", text(&body["token"]))
                .and_then(|()| f.sync_all())
                .with_context(|| {
                    format!(
                        "writing the token to {} (revoke it: mailloopctl tokens revoke {name})",
                        path.display()
                    )
                })?;
            if out == Output::Json {
                return print_json(&json!({"name": name, "role": role, "file": path}));
            }
            println!(
                "token {name} ({role}) written to {} (mode 0600); the coordinator keeps only its SHA-256",
                path.display()
            );
        }
        TokensCmd::Revoke { name } => {
            success(
                api.delete(&format!("/api/v1/tokens/{}", seg(&name)))
                    .await?,
            )?;
            println!("{name}: revoked");
        }
    }
    Ok(())
}

/// A new file only its owner can read or write.
fn new_private_file(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| {
            format!(
                "cannot create {} for the token (an existing file is never overwritten)",
                path.display()
            )
        })
}

async fn audit(
    api: &Client,
    actor: Option<String>,
    object: Option<String>,
    limit: u32,
    out: Output,
) -> anyhow::Result<()> {
    let mut path = format!("/api/v1/audit?limit={limit}");
    for (key, value) in [("actor", &actor), ("object", &object)] {
        if let Some(v) = value {
            path.push_str(&format!("&{key}={}", seg(v)));
        }
    }
    let body = success(api.get(&path).await?)?;
    let entries = body["entries"].as_array().cloned().unwrap_or_default();
    if out == Output::Json {
        return print_json(&Value::Array(entries));
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
