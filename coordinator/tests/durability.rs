//! Durability after a crash: whatever the coordinator acknowledged — a
//! report's ack to an agent, a 2xx to an API write — is there after
//! `kill -9` (no shutdown code runs) and a restart on the same data_dir,
//! and the database is intact.

mod support;
use mailloop_proto::pb;
use serde_json::json;
use std::collections::HashSet;
use std::time::Duration;
use support::*;

/// Every probe id the API holds for `check`, following the page cursors.
async fn all_results(api: &mailloop_coordinator::client::Client, check: &str) -> HashSet<String> {
    let mut all = HashSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => format!("/api/v1/results?check={check}&limit=1000"),
            Some(c) => format!("/api/v1/results?check={check}&limit=1000&cursor={c}"),
        };
        let page = expect_ok(api.get(&path).await);
        for r in page["results"].as_array().unwrap() {
            all.insert(r["probe_id"].as_str().unwrap().to_string());
        }
        match page["next"].as_str() {
            Some(n) => cursor = Some(n.to_string()),
            None => return all,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_acknowledged_write_survives_kill_9_between_the_ack_and_the_next_write() {
    let mut c = Coordinator::start("", &check_toml("corp", &["eu-west"], "1m"));
    let api = c.api();

    // API writes, each acknowledged by its 2xx.
    let created = expect_ok(api.post("/api/v1/checks", &check_table("shop", &["eu-west"], "30s")).await);
    let changed = expect_ok(api.put("/api/v1/checks/shop", &check_table("shop", &["eu-west"], "45s")).await);
    assert!(changed["revision"].as_u64() > created["revision"].as_u64());
    expect_ok(api.post("/api/v1/checks", &check_table("gone", &["eu-west"], "30s")).await);
    expect_ok(api.delete("/api/v1/checks/gone").await);
    let added = expect_ok(api.post("/api/v1/agents", &json!({"name": "eu-9", "region": "eu-west"})).await);
    let token = added["token"].as_str().unwrap().to_string();
    expect_ok(api.post("/api/v1/agents", &json!({"name": "eu-8", "region": "eu-west"})).await);
    expect_ok(api.post("/api/v1/agents/eu-8/revoke", &json!({})).await);

    // Reports stream without pause; the kill lands right after an ack,
    // with the next reports already on their way to the writer.
    let mut eu1 = c.agent("eu-1").await;
    let mut reports = Reports::open(&mut eu1).await;
    let sender = reports.tx.clone();
    tokio::spawn(async move {
        for i in 0..100_000 {
            if sender.send(result(&format!("ml-{i}"), "corp", i + 1)).await.is_err() {
                return;
            }
        }
    });
    let mut acked = Vec::new();
    while acked.len() < 250 {
        let ack = reports.ack().await;
        assert!(ack.stored, "{ack:?}");
        acked.push(ack.probe_id);
    }
    c.kill();
    // Acks already on the wire before the kill count too.
    while let Ok(Ok(Some(ack))) = tokio::time::timeout(Duration::from_secs(5), reports.acks.message()).await {
        if ack.stored {
            acked.push(ack.probe_id);
        }
    }

    // The file as the crash left it: SQLite recovers the WAL and finds no damage.
    {
        let db = rusqlite::Connection::open(data_dir(&c).join("coordinator.db")).unwrap();
        let check: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(check, "ok");
    }

    c.launch();
    let api = c.api();
    let stored = all_results(&api, "corp").await;
    let missing: Vec<_> = acked.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(missing.is_empty(), "{} of {} acknowledged reports lost: {:?}", missing.len(), acked.len(), &missing[..missing.len().min(5)]);
    println!("{} reports acknowledged before kill -9, {} stored after the restart", acked.len(), stored.len());

    let shop = expect_ok(api.get("/api/v1/checks/shop").await);
    assert_eq!((shop["revision"].clone(), shop["interval"].clone()), (changed["revision"].clone(), json!("45s")));
    assert_eq!(api.get("/api/v1/checks/gone").await.unwrap().status, 404, "the delete stands");
    let eu8 = expect_ok(api.get("/api/v1/agents/eu-8").await);
    assert_eq!(eu8["revoked"], true, "the revocation stands");
    // The agent added before the crash still gets in with its token.
    let mut eu9 = c.agent_with(Some(&token)).await;
    let r = eu9
        .register(pb::RegisterRequest { name: "eu-9".into(), region: "eu-west".into(), version: "test".into(), ..Default::default() })
        .await
        .expect("the added agent's token is still accepted")
        .into_inner();
    assert_eq!(r.agent_id, "eu-9");
}
