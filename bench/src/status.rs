//! The public status page under load (issue 11's "Measured"): a real
//! coordinator holding `--status-checks` public checks in
//! `--status-regions` regions with `--status-days` days of stored verdicts
//! (`--status-rounds-per-day` rounds a day, every region's evidence in
//! each, three outage days with an incident per check) and the last 7 days
//! of hourly aggregates (one report per region and hour: what the check
//! pages chart). Written through `Storage` while the coordinator is
//! stopped, with round numbers far from the clock's so its judge decides
//! none of them.
//!
//! Measured on the page's own listener (`[status] listen`):
//! - **build**: a public note (the admin API) drops the cached page; the
//!   next GET builds it (storage reads, rendering, gzip and brotli) and is
//!   timed whole; `--status-builds` times, median and max. The same for a
//!   check's page.
//! - **served from cache**: `wrk` (Debian's package) with
//!   `--status-connections` connections for `--status-seconds`, once
//!   asking for brotli as browsers do and once for the plain page; its
//!   p50/p99 and requests/s, and beside them the coordinator's own time
//!   per cached answer under that same load (the difference of its
//!   `mailloop_status_page_served_seconds` histogram across the run). With
//!   500 connections open, wrk's latency is mostly queueing: by Little's
//!   law 500 / (requests/s) is the mean time a request spends waiting and
//!   being served, so a 1 ms client-side p99 at -c500 would take over
//!   500,000 requests/s; the server-side figure is the one the goal can
//!   be held to on 2 cores.
//! - **weight**: the page's bytes plain, gzip and br.

use super::{Args, Coordinator, percentile, round3};
use mailloop_coordinator::judge::{
    Incident, IncidentChange, IncidentKind, IncidentState, RegionEvidence, Severity, TimelineEntry, Verdict,
    VerdictKind,
};
use mailloop_coordinator::storage::{ReportRow, Storage};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const GOAL_BUILD_MS: f64 = 50.0;
pub const GOAL_CACHED_P99_MS: f64 = 1.0;
pub const GOAL_WEIGHT_KB: f64 = 150.0;
const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;

/// One GET with `accept_encoding`: (status, time to the last byte, body).
fn fetch(addr: SocketAddr, path: &str, accept_encoding: &str) -> anyhow::Result<(u16, Duration, Vec<u8>)> {
    let started = Instant::now();
    let mut s = std::net::TcpStream::connect(addr)?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept-Encoding: {accept_encoding}\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let took = started.elapsed();
    let at = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("{path}: no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..at]).to_string();
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((status, took, raw[at + 4..].to_vec()))
}

fn evidence(region: &str) -> RegionEvidence {
    serde_json::from_value(json!({
        "region": region, "state": "ok", "probe_id": "p", "agent": "a", "outcome": "ok",
        "step": null, "class": null, "code": null, "enhanced": null, "text": null,
        "slow": [], "reasons": [], "rtt_ms": 40.0, "detail": null,
    }))
    .expect("evidence shape")
}

fn outage(check: &str, regions: &[String], opened_ms: i64, round: u64) -> IncidentChange {
    IncidentChange::Open(Incident {
        id: 0,
        check_id: check.into(),
        kind: IncidentKind::Outage,
        severity: Severity::Critical,
        state: IncidentState::Open,
        key: String::new(),
        regions: regions.to_vec(),
        step: Some("smtp.connect".into()),
        class: Some("transit".into()),
        opened_at_ms: opened_ms,
        first_round: round,
        last_round: round,
        acknowledged_at_ms: None,
        acknowledged_by: None,
        resolved_at_ms: None,
        summary: "bench outage".into(),
        timeline: Vec::new(),
    })
}

/// Writes the history of check `n` (see the module's doc).
async fn seed_check(storage: Arc<Storage>, n: usize, regions: Vec<String>, days: i64, per_day: i64) -> anyhow::Result<u64> {
    let check = format!("pub-{n:03}");
    let now = mailloop_coordinator::clock::now_ms();
    let today = now - now.rem_euclid(DAY_MS);
    let good: Vec<RegionEvidence> = regions.iter().map(|r| evidence(r)).collect();
    let mut round = 1_000_000_000 + n as u64 * 1_000_000;
    let mut stored = 0u64;
    let step = DAY_MS / per_day;
    for day in 0..days {
        let bad_day = (day + n as i64) % 30 == 7;
        let slow_day = (day + n as i64) % 30 == 19;
        for k in 0..per_day {
            let start = today - (days - 1 - day) * DAY_MS + k * step;
            if start > now {
                break;
            }
            round += 1;
            // An outage in the day's second round, resolved in its third.
            let (kind, changes) = match (bad_day, k) {
                (true, 1) => (VerdictKind::Down, vec![outage(&check, &regions, start, round)]),
                (true, 2) => (
                    VerdictKind::Up,
                    vec![IncidentChange::Resolve {
                        kind: IncidentKind::Outage,
                        key: String::new(),
                        entry: TimelineEntry {
                            at_ms: start + 1000,
                            round: Some(round),
                            event: "resolved".into(),
                            verdict: Some(VerdictKind::Up),
                            note: String::new(),
                        },
                    }],
                ),
                _ if slow_day && k % 3 == 0 => (VerdictKind::Degraded, Vec::new()),
                _ => (VerdictKind::Up, Vec::new()),
            };
            let v = Verdict {
                check_id: check.clone(),
                round,
                round_start_ms: start,
                decided_at_ms: start + 1000,
                verdict: kind,
                quorum: 3,
                regions: good.clone(),
                note: String::new(),
            };
            storage.store_round(v, changes).await?;
            stored += 1;
        }
    }
    // The last 7 days of hourly aggregates: one report per region and hour.
    let this_hour = now - now.rem_euclid(HOUR_MS);
    let mut pending = Vec::new();
    for h in 0..7 * 24i64 {
        for (r, region) in regions.iter().enumerate() {
            let at = this_hour - h * HOUR_MS;
            let id = format!("{check}-{region}-{h}");
            pending.push(
                storage
                    .submit_report(ReportRow {
                        probe_id: id.clone(),
                        check_id: check.clone(),
                        revision: 1,
                        region: region.clone(),
                        agent: format!("a-{r}"),
                        round: 2_000_000_000 + h as u64,
                        started_at_ms: at,
                        outcome: "ok".into(),
                        rtt_ms: Some(30.0 + 20.0 * r as f64 + (h % 24) as f64),
                        delivery_ms: Some(10.0 + 5.0 * r as f64),
                        failure_step: None,
                        failure_class: None,
                        report_json: json!({"probe_id": id, "check": check, "outcome": "ok"}).to_string(),
                        received_at_ms: at,
                        request_id: None,
                        out_of_window: Some("late".into()),
                    })
                    .await?,
            );
        }
    }
    for p in pending {
        p.await??;
    }
    Ok(stored)
}

/// `wrk`'s latency percentile `pct` ("99%") in ms, and requests/s.
fn parse_wrk(out: &str, pct: &str) -> Option<f64> {
    let line = out.lines().find(|l| l.trim_start().starts_with(pct))?;
    let v = line.split_whitespace().nth(1)?;
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic())?);
    let x: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => x / 1000.0,
        "ms" => x,
        "s" => x * 1000.0,
        "m" => x * 60_000.0,
        _ => return None,
    })
}

/// The cumulative buckets (upper bound in seconds, count) of the
/// coordinator's `mailloop_status_page_served_seconds`, from `/metrics`.
fn served_buckets(admin: SocketAddr) -> anyhow::Result<Vec<(f64, f64)>> {
    let (_, text) = super::scrape_once(admin, "text/plain")?;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("mailloop_status_page_served_seconds_bucket{")) {
        let le = line.split("le=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or_default();
        let bound = if le == "+Inf" { f64::INFINITY } else { le.parse()? };
        let count: f64 = line.rsplit(' ').next().unwrap_or_default().parse()?;
        out.push((bound, count));
    }
    anyhow::ensure!(!out.is_empty(), "no mailloop_status_page_served_seconds in /metrics");
    Ok(out)
}

/// Quantile `q` in ms of the answers observed between two readings of the
/// histogram, interpolated inside its bucket as Prometheus'
/// `histogram_quantile` does (so: within that bucket's bounds), and the
/// number of answers.
fn served_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> (Option<f64>, f64) {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, n)| (*le, n - before.iter().find(|(b, _)| b == le).map_or(0.0, |(_, m)| *m)))
        .collect();
    let total = delta.last().map_or(0.0, |(_, n)| *n);
    if total <= 0.0 {
        return (None, 0.0);
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for (le, n) in &delta {
        if *n >= rank {
            if le.is_infinite() {
                return (Some(lower.0 * 1000.0), total);
            }
            let inside = if n - lower.1 > 0.0 { (rank - lower.1) / (n - lower.1) } else { 1.0 };
            return (Some((lower.0 + (le - lower.0) * inside) * 1000.0), total);
        }
        lower = (*le, *n);
    }
    (None, total)
}

fn wrk(addr: SocketAddr, connections: usize, seconds: u64, accept_encoding: Option<&str>) -> anyhow::Result<Value> {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t2", &format!("-c{connections}"), &format!("-d{seconds}s"), "--latency", "--timeout", "10s"]);
    if let Some(e) = accept_encoding {
        cmd.args(["-H", &format!("Accept-Encoding: {e}")]);
    }
    let out = cmd
        .arg(format!("http://{addr}/status"))
        .output()
        .map_err(|e| anyhow::anyhow!("wrk: {e} (apt-get install wrk; make bench installs it)"))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    anyhow::ensure!(out.status.success(), "wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok());
    let errors = text.lines().find(|l| l.contains("Non-2xx") || l.contains("Socket errors")).map(str::trim);
    Ok(json!({
        "accept_encoding": accept_encoding.unwrap_or("(none)"),
        "connections": connections,
        "seconds": seconds,
        "p50_ms": parse_wrk(&text, "50%"),
        "p99_ms": parse_wrk(&text, "99%"),
        "requests_per_s": rps,
        "errors": errors,
    }))
}

pub async fn status_run(args: &Args) -> anyhow::Result<Value> {
    let (checks, regions_n) = (args.status_checks, args.status_regions.max(1));
    let regions: Vec<String> = (0..regions_n).map(|i| format!("region-{i}")).collect();
    let agents: Vec<(String, String, String)> = regions
        .iter()
        .enumerate()
        .map(|(i, r)| (format!("s-{i}"), r.clone(), format!("loadgen-status-token-{i}-0123456789")))
        .collect();
    let extra = "\n[status]\nlisten = \"127.0.0.1:0\"\n";
    let mut coord = Coordinator::start(&args.coordinator_bin, &agents, "", extra)?;
    let api = coord.api()?;
    for i in 0..checks {
        let body = json!({
            "from": "probe@sender.test", "to": "probe@receiver.test", "interval": "1h",
            "regions": regions, "step_timeout": "30s", "public": true,
            "display_name": format!("Mail service number {i}"),
            "smtp": {"host": "127.0.0.1", "port": 2525, "security": "none"},
            "imap": {"host": "127.0.0.1", "security": "none", "username": "probe@receiver.test", "password_env": "IMAP_PASS"},
            "spf": {"enabled": false},
        });
        let r = api.put(&format!("/api/v1/checks/pub-{i:03}"), &body).await?;
        anyhow::ensure!(r.is_success(), "check pub-{i:03}: {}", r.error_text());
    }
    coord.stop()?;
    let seeding = Instant::now();
    let storage = Arc::new(Storage::open(&coord.dir.join("data"))?);
    let mut tasks = Vec::new();
    for n in 0..checks {
        let (storage, regions) = (storage.clone(), regions.clone());
        let (days, per_day) = (args.status_days as i64, args.status_rounds_per_day.max(3) as i64);
        tasks.push(tokio::spawn(seed_check(storage, n, regions, days, per_day)));
    }
    let mut verdicts = 0;
    for t in tasks {
        verdicts += t.await??;
    }
    Arc::into_inner(storage).expect("tasks done").close().await;
    let seeded_s = seeding.elapsed().as_secs_f64();
    eprintln!("loadgen: status page: {verdicts} verdicts and 7 days of aggregates stored in {seeded_s:.1} s");
    coord.restart(&args.coordinator_bin)?;
    let status = coord.status.ok_or_else(|| anyhow::anyhow!("no status= in the listening line"))?;
    let api = coord.api()?;

    // Weight, from the first (cold) build.
    let (code, first_ms, plain) = fetch(status, "/status", "identity")?;
    anyhow::ensure!(code == 200, "/status answered {code}");
    let (_, _, gzip) = fetch(status, "/status", "gzip")?;
    let (_, _, br) = fetch(status, "/status", "br")?;
    anyhow::ensure!(gzip.len() < plain.len() && br.len() < gzip.len(), "compressed bodies are smaller");
    let html = String::from_utf8_lossy(&plain);
    anyhow::ensure!(
        html.matches("<article class=\"check\"").count() == checks,
        "every public check is on the page"
    );
    // An incident whose notes drop the cache.
    let incidents = api.get("/api/v1/incidents?check=pub-000").await?;
    let id = incidents.body["incidents"][0]["id"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("no incident of pub-000: {}", incidents.body))?;
    let mut builds = Vec::new();
    let mut cached = Vec::new();
    for k in 0..args.status_builds {
        let r = api
            .post(&format!("/api/v1/incidents/{id}/notes"), &json!({"text": format!("bench note {k}")}))
            .await?;
        anyhow::ensure!(r.is_success(), "note: {}", r.error_text());
        let (code, took, body) = fetch(status, "/status", "br")?;
        anyhow::ensure!(code == 200 && !body.is_empty(), "/status answered {code}");
        builds.push(took.as_secs_f64() * 1000.0);
        let (_, took, _) = fetch(status, "/status", "br")?;
        cached.push(took.as_secs_f64() * 1000.0);
    }
    builds.sort_by(f64::total_cmp);
    cached.sort_by(f64::total_cmp);
    // A check's page: built on its first visit after a note, like the page.
    let mut check_builds = Vec::new();
    let mut check_bytes = 0;
    for k in 0..args.status_builds {
        let r = api
            .post(&format!("/api/v1/incidents/{id}/notes"), &json!({"text": format!("bench check note {k}")}))
            .await?;
        anyhow::ensure!(r.is_success(), "note: {}", r.error_text());
        let (code, took, body) = fetch(status, "/status/check/pub-001", "identity")?;
        anyhow::ensure!(code == 200, "check page answered {code}");
        check_bytes = body.len();
        check_builds.push(took.as_secs_f64() * 1000.0);
    }
    check_builds.sort_by(f64::total_cmp);

    // Served from cache under load.
    let mut load = Vec::new();
    for encoding in [Some("br, gzip"), None] {
        // Warm: the snapshot is fresh for the round (1 h checks: 60 s).
        fetch(status, "/status", encoding.unwrap_or("identity"))?;
        let before = served_buckets(coord.http)?;
        let mut w = wrk(status, args.status_connections, args.status_seconds, encoding)?;
        let after = served_buckets(coord.http)?;
        let (p99, answers) = served_quantile(&before, &after, 0.99);
        let (p50, _) = served_quantile(&before, &after, 0.5);
        w["server_p99_ms"] = json!(p99.map(round3));
        w["server_p50_ms"] = json!(p50.map(round3));
        w["server_answers"] = json!(answers);
        eprintln!("loadgen: wrk {w}");
        load.push(w);
    }
    coord.stop()?;
    Ok(json!({
        "checks": checks,
        "regions": regions_n,
        "days": args.status_days,
        "verdicts": verdicts,
        "seeded_s": round3(seeded_s),
        "first_build_ms": round3(first_ms.as_secs_f64() * 1000.0),
        "build_ms": {"n": builds.len(), "p50": round3(percentile(&builds, 0.5)), "max": round3(percentile(&builds, 1.0))},
        "cached_single_ms": {"p50": round3(percentile(&cached, 0.5)), "max": round3(percentile(&cached, 1.0))},
        "check_page_build_ms": {"p50": round3(percentile(&check_builds, 0.5)), "max": round3(percentile(&check_builds, 1.0))},
        "check_page_bytes": check_bytes,
        "bytes": {"plain": plain.len(), "gzip": gzip.len(), "br": br.len()},
        "wrk": load,
    }))
}

pub fn print_status(s: &Value) {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let kb = |v: &Value| f(v) / 1024.0;
    println!();
    println!(
        "Public status page: {} public checks x {} regions, {} days of verdicts ({} stored), 7 days of hourly aggregates",
        s["checks"], s["regions"], s["days"], s["verdicts"]
    );
    println!("{:<58} {:>12} {:>10}", "", "measured", "goal");
    println!(
        "{:<58} {:>9.1} ms {:>7} ms",
        format!("page build, after a note dropped the cache (p50 of {})", s["build_ms"]["n"]),
        f(&s["build_ms"]["p50"]),
        GOAL_BUILD_MS
    );
    println!(
        "{:<58} {:>9.1} ms {:>10}",
        "page build, max (storage reads + render + gzip + br)",
        f(&s["build_ms"]["max"]),
        ""
    );
    println!("{:<58} {:>9.1} ms {:>10}", "check page build (24 h + 7 d charts), p50", f(&s["check_page_build_ms"]["p50"]), "");
    for w in s["wrk"].as_array().into_iter().flatten() {
        println!(
            "{:<58} {:>9.3} ms {:>7} ms",
            format!("served from cache, p99, wrk -c{} ({})", w["connections"], w["accept_encoding"].as_str().unwrap_or("")),
            f(&w["p99_ms"]),
            GOAL_CACHED_P99_MS
        );
        println!(
            "{:<58} {:>9.3} ms {:>10}",
            "  p50 / requests per second",
            f(&w["p50_ms"]),
            format!("{:.0}/s", f(&w["requests_per_s"]))
        );
        println!(
            "{:<58} {:>9.3} ms {:>7} ms",
            "  server's own time per cached answer, p99 (same load)",
            f(&w["server_p99_ms"]),
            GOAL_CACHED_P99_MS
        );
        println!(
            "{:<58} {:>9.3} ms {:>10}",
            "  server's own time, p50 (histogram, interpolated)",
            f(&w["server_p50_ms"]),
            format!("{} answers", w["server_answers"])
        );
        // Little's law: connections in the system = throughput x time in it.
        let (c, rps) = (f(&w["connections"]), f(&w["requests_per_s"]));
        println!(
            "  Little's law: {c:.0} open connections / {rps:.0} req/s = {:.1} ms per request on average at the client;\n  \
             a client-side p99 of {GOAL_CACHED_P99_MS} ms at -c{c:.0} needs over {:.0} req/s (queueing, not the handler)",
            c / rps * 1000.0,
            c / (GOAL_CACHED_P99_MS / 1000.0)
        );
        if let Some(e) = w["errors"].as_str() {
            println!("  wrk: {e}");
        }
    }
    println!("{:<58} {:>9.1} KB {:>7} KB", "page weight, uncompressed", kb(&s["bytes"]["plain"]), GOAL_WEIGHT_KB);
    println!("{:<58} {:>9.1} KB {:>10}", "page weight, gzip (level 6)", kb(&s["bytes"]["gzip"]), "");
    println!("{:<58} {:>9.1} KB {:>10}", "page weight, br (quality 5)", kb(&s["bytes"]["br"]), "");
    println!("{:<58} {:>9.1} KB {:>10}", "a check's page, uncompressed", kb(&s["check_page_bytes"]), "");
}
