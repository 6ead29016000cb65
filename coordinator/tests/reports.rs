//! Reports: acknowledged only once stored, stored once however often they
//! are replayed, visible in the API, and still there after `kill -9`.

mod support;
use std::time::Duration;
use support::*;

#[tokio::test]
async fn a_report_is_acked_after_it_is_stored_and_visible_in_the_api() {
    let c = Coordinator::start("", &check_toml("corp", &["eu-west", "us-east"], "1m"));
    let mut eu1 = c.agent("eu-1").await;
    let mut reports = Reports::open(&mut eu1).await;
    // The round running now: one far from the coordinator's clock is never `latest`.
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let k = mailloop_coordinator::cluster::schedule::round_at(now_ms, 60_000, mailloop_coordinator::cluster::schedule::phase_ms("corp", 60_000));
    let ack = reports.send(result("ml-1", "corp", k)).await;
    assert_eq!((ack.probe_id.as_str(), ack.stored, ack.error.as_str()), ("ml-1", true, ""));

    let rows = results(&c.api(), "corp").await;
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!((r["probe_id"].as_str(), r["region"].as_str(), r["agent"].as_str()), (Some("ml-1"), Some("eu-west"), Some("eu-1")));
    assert_eq!(r["round"], k);
    assert_eq!(r["outcome"], "ok");
    assert_eq!(r["report"]["steps"][1]["code"], 220, "the full report, every step, is kept");

    let latest = expect_ok(c.api().get("/api/v1/checks/corp/latest").await);
    assert_eq!(latest["round"], k);
    let regions = latest["regions"].as_array().unwrap();
    assert_eq!(regions[0]["region"], "eu-west");
    assert_eq!(regions[0]["result"]["probe_id"], "ml-1");
    assert_eq!(regions[1]["region"], "us-east");
    assert!(regions[1]["result"].is_null(), "us-east has not reported the round");
}

#[tokio::test]
async fn a_replayed_report_is_stored_once() {
    let c = Coordinator::start("", &check_toml("corp", &["eu-west"], "1m"));
    let mut eu1 = c.agent("eu-1").await;
    let mut reports = Reports::open(&mut eu1).await;
    assert!(reports.send(result("ml-1", "corp", 1)).await.stored);
    // The agent did not see the ack (say) and replays on a new stream.
    drop(reports);
    let mut again = Reports::open(&mut eu1).await;
    let ack = again.send(result("ml-1", "corp", 1)).await;
    assert!(ack.stored, "a duplicate is acknowledged as stored: {ack:?}");
    assert_eq!(results(&c.api(), "corp").await.len(), 1);
}

#[tokio::test]
async fn many_reports_in_flight_are_each_acked_in_order() {
    let c = Coordinator::start("", &check_toml("corp", &["eu-west"], "1m"));
    let mut eu1 = c.agent("eu-1").await;
    let mut reports = Reports::open(&mut eu1).await;
    let sender = reports.tx.clone();
    tokio::spawn(async move {
        for i in 0..200 {
            sender.send(result(&format!("ml-{i}"), "corp", i)).await.unwrap();
        }
    });
    for i in 0..200 {
        let ack = reports.ack().await;
        assert_eq!((ack.probe_id, ack.stored), (format!("ml-{i}"), true));
    }
    let page = expect_ok(c.api().get("/api/v1/results?check=corp&limit=150").await);
    assert_eq!(page["results"].as_array().unwrap().len(), 150);
    let cursor = page["next"].as_str().unwrap().to_string();
    let rest = expect_ok(c.api().get(&format!("/api/v1/results?check=corp&limit=150&cursor={cursor}")).await);
    assert_eq!(rest["results"].as_array().unwrap().len(), 50);
    assert!(rest["next"].is_null());
}

#[tokio::test]
async fn an_acked_report_survives_kill_9_and_restart() {
    let mut c = Coordinator::start("", &check_toml("corp", &["eu-west"], "1m"));
    {
        let mut eu1 = c.agent("eu-1").await;
        let mut reports = Reports::open(&mut eu1).await;
        for i in 0..20 {
            assert!(reports.send(result(&format!("ml-{i}"), "corp", i)).await.stored);
        }
    }
    c.kill();
    c.launch();
    let rows = results(&c.api(), "corp").await;
    assert_eq!(rows.len(), 20, "every acknowledged report is still there");
    // And a replay after the restart is still idempotent.
    let mut eu1 = c.agent("eu-1").await;
    let mut reports = Reports::open(&mut eu1).await;
    assert!(reports.send(result("ml-3", "corp", 3)).await.stored);
    assert_eq!(results(&c.api(), "corp").await.len(), 20);
}

#[tokio::test]
async fn checks_created_through_the_api_survive_a_restart_with_their_revision() {
    let mut c = Coordinator::start("", "");
    let created = expect_ok(c.api().post("/api/v1/checks", &check_table("shop", &["eu-west"], "30s")).await);
    c.kill();
    c.launch();
    let shop = expect_ok(c.api().get("/api/v1/checks/shop").await);
    assert_eq!(shop["revision"], created["revision"]);
    let mut eu1 = c.agent("eu-1").await;
    let mut watch = Watch::open(&mut eu1, &[]).await;
    assert_eq!(watch.next().await.upserted().check_id, "shop");
}

#[tokio::test]
async fn sigterm_stops_gracefully_after_acking_what_was_taken() {
    let mut c = Coordinator::start("", &check_toml("corp", &["eu-west"], "1m"));
    let mut eu1 = c.agent("eu-1").await;
    let mut watch = Watch::open(&mut eu1, &[]).await;
    watch.next().await;
    let mut reports = Reports::open(&mut eu1).await;
    assert!(reports.send(result("ml-1", "corp", 1)).await.stored);
    c.signal("TERM");
    // The open streams end with Unavailable, telling the agent to reconnect.
    let end = tokio::time::timeout(DEADLINE, watch.0.message()).await.expect("the watch stream ends");
    assert_eq!(end.unwrap_err().code(), tonic::Code::Unavailable);
    assert_eq!(c.wait_exit(Duration::from_secs(10)), Some(0));
    let log = c.log();
    assert!(log.contains("coordinator stopped"), "{log}");
    assert!(!log.contains("grace period over"), "streams must close without waiting out the grace period:\n{log}");
    c.launch();
    assert_eq!(results(&c.api(), "corp").await.len(), 1);
}

/// Streams reports while the coordinator is stopped (`TERM`) or killed
/// (`KILL`); every report acknowledged before the end must be stored.
async fn acked_reports_are_stored_when_stopped_midstream(sig: &str) {
    let mut c = Coordinator::start("", &check_toml("corp", &["eu-west"], "1m"));
    let mut eu1 = c.agent("eu-1").await;
    let mut reports = Reports::open(&mut eu1).await;
    let sender = reports.tx.clone();
    tokio::spawn(async move {
        for i in 0..100_000 {
            if sender.send(result(&format!("ml-{i}"), "corp", i)).await.is_err() {
                return;
            }
        }
    });
    let mut acked = Vec::new();
    while acked.len() < 300 {
        acked.push(reports.ack().await.probe_id);
    }
    c.signal(sig);
    // Keep reading acks until the stream ends one way or another.
    while let Ok(Ok(Some(ack))) = tokio::time::timeout(Duration::from_secs(10), reports.acks.message()).await {
        assert!(ack.stored);
        acked.push(ack.probe_id);
    }
    c.wait_exit(Duration::from_secs(10));
    c.launch();
    let api = c.api();
    let mut all = std::collections::HashSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => "/api/v1/results?check=corp&limit=1000".to_string(),
            Some(c) => format!("/api/v1/results?check=corp&limit=1000&cursor={c}"),
        };
        let page = expect_ok(api.get(&path).await);
        for r in page["results"].as_array().unwrap() {
            all.insert(r["probe_id"].as_str().unwrap().to_string());
        }
        match page["next"].as_str() {
            Some(n) => cursor = Some(n.to_string()),
            None => break,
        }
    }
    let missing: Vec<_> = acked.iter().filter(|id| !all.contains(*id)).collect();
    assert!(missing.is_empty(), "{} acknowledged reports lost after {sig}: {:?}", missing.len(), &missing[..missing.len().min(5)]);
    assert!(all.len() >= acked.len());
}

#[tokio::test]
async fn every_acked_report_is_stored_after_sigterm_midstream() {
    acked_reports_are_stored_when_stopped_midstream("TERM").await;
}

#[tokio::test]
async fn every_acked_report_is_stored_after_kill_9_midstream() {
    acked_reports_are_stored_when_stopped_midstream("KILL").await;
}
