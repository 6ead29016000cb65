//! What a large results page and a many-check `/status` cost (ignored by
//! default; a measurement, not a test):
//! `cargo test --release -p mailloop-coordinator --test page_cost -- --ignored --nocapture`.
//! Prints bytes, time and the coordinator's peak RSS; `COST_REPORTS`,
//! `COST_REPORT_KIB` and `COST_CHECKS` change the sizes.

mod support;
use mailloop_coordinator::judge::{Verdict, VerdictKind};
use mailloop_coordinator::storage::{ReportRow, Storage};
use std::time::Instant;
use support::*;

fn env(key: &str, default: usize) -> usize {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `curl` the URL: (status, bytes, seconds).
fn fetch(url: &str) -> (u16, u64, f64) {
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}", "-H", &format!("authorization: Bearer {ADMIN_TOKEN}"), url])
        .output()
        .expect("curl is installed (apt-get install curl)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut w = text.split_whitespace();
    let status = w.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let bytes = w.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let secs = w.next().and_then(|s| s.parse().ok()).unwrap_or(0.0);
    (status, bytes, secs)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn large_results_page_and_many_check_status() {
    let reports = env("COST_REPORTS", 300);
    let kib = env("COST_REPORT_KIB", 1024);
    let checks = env("COST_CHECKS", 500);
    let mut config = String::new();
    for i in 0..checks {
        config.push_str(&check_toml(&format!("c{i}"), &["eu-west"], "1h"));
    }
    let mut c = Coordinator::start("", &config);
    c.kill();
    {
        let storage = Storage::open(&data_dir(&c)).unwrap();
        let filler = "x".repeat(kib * 1024);
        for i in 0..reports {
            let mut report: serde_json::Value = serde_json::from_str(&report_json(&format!("big-{i}"), "c0")).unwrap();
            report["steps"][0]["detail"] = serde_json::Value::String(filler.clone());
            storage
                .insert_report(ReportRow {
                    probe_id: format!("big-{i}"),
                    check_id: "c0".into(),
                    revision: 1,
                    region: "eu-west".into(),
                    agent: "eu-1".into(),
                    round: i as u64 + 1,
                    started_at_ms: 1_700_000_000_000 + i as i64,
                    outcome: "ok".into(),
                    rtt_ms: Some(35.0),
                    delivery_ms: Some(20.0),
                    failure_step: None,
                    failure_class: None,
                    report_json: report.to_string(),
                    received_at_ms: 1_700_000_000_000 + i as i64,
                    request_id: None,
                    out_of_window: None,
                })
                .await
                .unwrap();
        }
        for i in 0..checks {
            for round in 1..=20u64 {
                let verdict = Verdict {
                    check_id: format!("c{i}"),
                    round,
                    round_start_ms: round as i64 * 3_600_000,
                    decided_at_ms: round as i64 * 3_600_000 + 500,
                    verdict: VerdictKind::Up,
                    quorum: 1,
                    regions: Vec::new(),
                    note: "up".into(),
                };
                storage.store_round(verdict, Vec::new()).await.unwrap();
            }
        }
        storage.close().await;
    }
    c.launch();
    let base = format!("http://{}/api/v1", c.http);
    let (_, rss_start) = c.rss();
    let started = Instant::now();
    let (status, bytes, secs) = fetch(&format!("{base}/results?limit=1000"));
    println!(
        "/results?limit=1000 over {reports} reports of {kib} KiB: HTTP {status}, {bytes} bytes in {secs:.3}s (wall {:.3}s); coordinator peak RSS {} MiB -> {} MiB",
        started.elapsed().as_secs_f64(),
        rss_start / 1_048_576,
        c.rss().1 / 1_048_576
    );
    let mut times = Vec::new();
    for _ in 0..5 {
        let (status, bytes, secs) = fetch(&format!("{base}/status"));
        assert_eq!(status, 200);
        times.push((secs, bytes));
    }
    times.sort_by(|a, b| a.0.total_cmp(&b.0));
    println!(
        "/status over {checks} checks with 20 verdicts each: {} bytes, median {:.3}s (min {:.3}s, max {:.3}s) over 5 requests",
        times[2].1, times[2].0, times[0].0, times[4].0
    );
}

/// The public status page with `COST_PUBLIC_CHECKS` public checks (100)
/// and one verdict per check per hour for 90 days: bytes, the first
/// request (a build) and cached requests.
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn public_status_page_cost() {
    let checks = env("COST_PUBLIC_CHECKS", 100);
    let mut config = String::new();
    for i in 0..checks {
        config.push_str(&check_toml(&format!("p{i}"), &["eu-west"], "1h").replacen(
            "interval = \"1h\"",
            &format!("interval = \"1h\"\npublic = true\ndisplay_name = \"Service {i}\""),
            1,
        ));
    }
    let mut c = Coordinator::start("", &config);
    c.kill();
    let now = mailloop_coordinator::clock::now_ms();
    let hours = 90 * 24;
    {
        let storage = std::sync::Arc::new(Storage::open(&data_dir(&c)).unwrap());
        let mut pending = tokio::task::JoinSet::new();
        for i in 0..checks {
            for h in 0..hours {
                // Far-ahead round numbers: the judge has nothing of its own to decide.
                let verdict = Verdict {
                    check_id: format!("p{i}"),
                    round: 1_000_000_000 + h as u64,
                    round_start_ms: now - (hours - h) as i64 * 3_600_000,
                    decided_at_ms: now - (hours - h) as i64 * 3_600_000 + 500,
                    verdict: if h % 97 == 0 {
                        VerdictKind::Down
                    } else {
                        VerdictKind::Up
                    },
                    quorum: 1,
                    regions: Vec::new(),
                    note: "up".into(),
                };
                let s = storage.clone();
                pending.spawn(async move { s.store_round(verdict, Vec::new()).await.unwrap() });
                if pending.len() == 256 {
                    while let Some(r) = pending.join_next().await {
                        r.unwrap();
                    }
                }
            }
        }
        while let Some(r) = pending.join_next().await {
            r.unwrap();
        }
        storage.close().await;
    }
    c.launch();
    let url = format!("http://{}/status", c.status);
    let (status, bytes, first) = fetch(&url);
    assert_eq!(status, 200);
    let mut times: Vec<f64> = (0..20).map(|_| fetch(&url).2).collect();
    times.sort_by(f64::total_cmp);
    let (_, json_bytes, _) = fetch(&format!("{url}.json"));
    println!(
        "/status with {checks} public checks x {hours} hourly verdicts: {bytes} bytes HTML, {json_bytes} bytes JSON; first request (build) {first:.3}s, cached median {:.4}s, max {:.4}s over 20 (curl, one at a time)",
        times[10], times[19]
    );
}
