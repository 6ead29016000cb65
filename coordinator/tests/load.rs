//! A quick ingest load check (ignored by default; run with
//! `cargo test --release -p mailloop-coordinator --test load -- --ignored --nocapture`).
//! N simulated agents stream synthetic reports; prints reports/s stored and
//! the p99 ack latency. A quick look while working on ingest; the full
//! benchmark (100 and 1,000 agents, change propagation, coordinator CPU and
//! RSS, agent footprint) is `target/release/mailloop-loadgen`, which `make
//! bench` runs.

mod support;
use std::time::{Duration, Instant};
use support::*;

#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn ingest_throughput() {
    let agents: usize = std::env::var("LOAD_AGENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let per_agent: usize = std::env::var("LOAD_REPORTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let c = Coordinator::start("", &check_toml("corp", &["load"], "1m"));
    let api = c.api();
    let mut tasks = Vec::new();
    let mut clients = Vec::new();
    for i in 0..agents {
        let body = expect_ok(
            api.post(
                "/api/v1/agents",
                &serde_json::json!({"name": format!("load-{i}"), "region": "load"}),
            )
            .await,
        );
        clients.push(c.agent_with(Some(body["token"].as_str().unwrap())).await);
    }
    let started = Instant::now();
    for (i, mut agent) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut reports = Reports::open(&mut agent).await;
            let sender = reports.tx.clone();
            let sent_at =
                std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
            let sent = sent_at.clone();
            tokio::spawn(async move {
                for k in 0..per_agent {
                    let id = format!("load-{i}-{k}");
                    sent.lock().unwrap().insert(id.clone(), Instant::now());
                    sender.send(result(&id, "corp", k as u64)).await.unwrap();
                }
            });
            let mut latencies = Vec::with_capacity(per_agent);
            for _ in 0..per_agent {
                let ack = tokio::time::timeout(Duration::from_secs(30), reports.acks.message())
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap();
                assert!(ack.stored, "{ack:?}");
                let t = sent_at.lock().unwrap().remove(&ack.probe_id).unwrap();
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    all.sort();
    let p = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    println!(
        "{agents} agents x {per_agent} reports: {} stored in {:.2}s = {:.0} reports/s; ack latency p50 {:?} p99 {:?}",
        all.len(),
        elapsed.as_secs_f64(),
        all.len() as f64 / elapsed.as_secs_f64(),
        p(0.5),
        p(0.99)
    );
}
