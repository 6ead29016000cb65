//! The spool replay (issue 15): an agent back from a long partition sends
//! what it spooled.
//!
//! A real coordinator and a real `mailloop-agent run` whose spool holds
//! `--replay-reports` reports of 21 steps (written into the spool while the
//! agent is stopped, as the agent writes them). The agent is started; the
//! replay is timed from its start until its spool is empty (every report
//! acknowledged, so committed by the coordinator). Figures: reports/s
//! beside the goal of 10,000/s, and the CPU time (utime + stime, from
//! /proc) of the agent and of the coordinator per 1,000 replayed reports:
//! the figures that still mean something on a loaded machine, where the
//! wall clock is shared with everyone else. The coordinator is then
//! stopped and its rows counted: stored must equal spooled.

use super::{Args, Coordinator, proc_stats, refusing_server, report_template, round3};
use mailloop_coordinator::storage::Storage;
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The goal.
pub const GOAL_REPLAY_PER_S: f64 = 10_000.0;
/// How long the replay may take before the bench gives up.
const PATIENCE: Duration = Duration::from_secs(600);

/// Writes `n` reports of check `check` (revision `revision`) into the
/// stopped agent's spool at `path`, oldest first, in one transaction.
fn fill_spool(path: &Path, check: &str, revision: u64, n: usize) -> anyhow::Result<()> {
    // The agent's own code creates the schema; then one bulk insert.
    drop(mailloop_agent::run::spool::Spool::open(path, n as u64 + 1)?);
    let mut db = rusqlite::Connection::open(path)?;
    let tx = db.transaction()?;
    {
        let template = report_template(check);
        let mut insert = tx.prepare(
            "INSERT INTO reports (probe_id, check_id, revision, round, report_json, spooled_ms, request_id)
             VALUES (?1, ?2, ?3, ?4, ?5, 0, NULL)",
        )?;
        for i in 0..n {
            let id = format!("replay-{i:07}");
            insert.execute(rusqlite::params![
                id,
                check,
                revision as i64,
                i as i64 + 1,
                template.replace("__ID__", &id)
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Reports still in the spool (read-only; the agent holds it).
fn spooled(path: &Path) -> anyhow::Result<u64> {
    let db = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    db.busy_timeout(Duration::from_secs(10))?;
    Ok(db.query_row("SELECT count(*) FROM reports", [], |r| r.get::<_, i64>(0))? as u64)
}

pub async fn replay_run(args: &Args) -> anyhow::Result<Value> {
    let n = args.replay_reports;
    let token = "loadgen-replay-token-0123456789";
    let mut coord = Coordinator::start(
        &args.coordinator_bin,
        &[("rp-1".into(), "rp".into(), token.into())],
        "",
        "",
    )?;
    let api = coord.api()?;
    // Hourly, failing at once on a local 554 port if it runs meanwhile.
    let port = refusing_server()?;
    let table = json!({
        "from": "probe@sender.test", "to": "probe@receiver.test", "interval": "1h",
        "regions": ["rp"], "deadline": "5s", "step_timeout": "2s", "greylist_grace": "0s",
        "smtp": {"host": "127.0.0.1", "port": port, "security": "none"},
        "imap": {"host": "127.0.0.1", "port": port, "security": "none",
                 "username": "probe@receiver.test", "password_env": "LOADGEN_IMAP_PASS"},
        "spf": {"enabled": false},
        "verify_dkim": false,
    });
    let put = api.put("/api/v1/checks/replay", &table).await?;
    anyhow::ensure!(put.is_success(), "creating the check: {}", put.error_text());
    let revision = put.body["check"]["revision"]
        .as_u64()
        .or_else(|| put.body["revision"].as_u64())
        .unwrap_or(1);

    let dir = coord.dir.join("agent");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("token"), token)?;
    let spool = dir.join("spool.db");
    std::fs::write(
        dir.join("agent.toml"),
        format!(
            "[agent]\nname = \"rp-1\"\nregion = \"rp\"\ncoordinator_url = \"http://{}\"\ntoken_file = {:?}\nspool = {:?}\nspool_max_reports = {}\n",
            coord.grpc,
            dir.join("token"),
            spool,
            n.max(1) * 2
        ),
    )?;
    fill_spool(&spool, "replay", revision, n)?;

    let coord_pid = coord.pid();
    let coord_before = proc_stats(coord_pid);
    let started = Instant::now();
    // The agent logs at its default level (info), as a deployed one does.
    let mut agent = Command::new(&args.agent_bin)
        .args(["run", "--config"])
        .arg(dir.join("agent.toml"))
        .env("LOADGEN_IMAP_PASS", "unused")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("agent.log"))?)
        .spawn()?;
    let agent_pid = agent.id();
    let result = async {
        let deadline = started + PATIENCE;
        let agent_stats = loop {
            // Taken before the count: CPU spent after the spool emptied is not counted.
            let stats = proc_stats(agent_pid);
            if spooled(&spool)? == 0 {
                break stats;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the spool did not empty within {PATIENCE:?}; agent log in {}",
                dir.display()
            );
            tokio::time::sleep(Duration::from_millis(10)).await; // polling the spool with a deadline
        };
        let wall = started.elapsed();
        let coord_after = proc_stats(coord_pid);
        Ok::<_, anyhow::Error>((wall, agent_stats, coord_after))
    }
    .await;
    let _ = Command::new("kill").args(["-TERM", &agent_pid.to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while agent.try_wait()?.is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await; // polling the child's exit with a deadline
    }
    let _ = agent.kill();
    let _ = agent.wait();
    let (wall, agent_stats, coord_after) = result?;
    let log_lines = std::fs::read_to_string(dir.join("agent.log")).map_or(0, |l| l.lines().count());
    coord.stop()?;
    let storage = Storage::open(&coord.dir.join("data"))?;
    let stored_rows = storage.count_reports().await?;
    storage.close().await;
    let per_1000 = |cpu_s: f64| round3(1e6 * cpu_s / n.max(1) as f64);
    Ok(json!({
        "reports": n,
        "stored_rows": stored_rows,
        "replay_s": round3(wall.as_secs_f64()),
        "reports_per_s": (n as f64 / wall.as_secs_f64()).round(),
        "agent_cpu_s": round3(agent_stats.cpu_s),
        "agent_cpu_ms_per_1000": per_1000(agent_stats.cpu_s),
        "agent_peak_rss_mib": round3(agent_stats.hwm_kib as f64 / 1024.0),
        "agent_log_lines": log_lines,
        "coordinator_cpu_ms_per_1000": per_1000(coord_after.cpu_s - coord_before.cpu_s),
        "loadavg": super::loadavg(),
    }))
}

pub fn print_replay(r: &Value) {
    let f = |v: &Value| v.as_f64().map_or("-".to_string(), super::format_num);
    println!(
        "\nSpool replay (a real mailloop-agent run replaying {} spooled reports of 21 steps to a real coordinator)",
        f(&r["reports"])
    );
    let line = |label: &str, value: String, goal: &str| println!("{label:<44} {value:>14}   {goal}");
    line(
        "reports replayed per second",
        f(&r["reports_per_s"]),
        &format!(">= {}", super::format_num(GOAL_REPLAY_PER_S)),
    );
    line(
        "reports spooled = rows stored",
        format!("{} = {}", r["reports"], r["stored_rows"]),
        "equal",
    );
    line("agent CPU per 1,000 replayed reports (ms)", f(&r["agent_cpu_ms_per_1000"]), "");
    line(
        "coordinator CPU per 1,000 replayed (ms)",
        f(&r["coordinator_cpu_ms_per_1000"]),
        "",
    );
    line("agent peak RSS during the replay (MiB)", f(&r["agent_peak_rss_mib"]), "");
    line("agent log lines", f(&r["agent_log_lines"]), "");
    println!("load average at the end: {}", r["loadavg"].as_str().unwrap_or("?"));
}
