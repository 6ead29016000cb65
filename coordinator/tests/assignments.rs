//! An agent registers, watches its assignments, and follows every change
//! within a second; checks move between the agents of a region.

mod support;
use std::time::Duration;
use support::*;

#[tokio::test]
async fn register_returns_the_agent_id_and_settings() {
    let c = Coordinator::start("", "");
    let mut eu1 = c.agent("eu-1").await;
    let r = register(&mut eu1, "eu-1").await;
    assert_eq!(r.agent_id, "eu-1");
    assert_eq!(r.heartbeat_seconds, 2);
}

#[tokio::test]
async fn config_checks_arrive_then_every_api_change_follows() {
    let c = Coordinator::start("", &check_toml("corp", &["eu-west", "us-east"], "1m"));
    let api = c.api();
    let mut eu1 = c.agent("eu-1").await;
    register(&mut eu1, "eu-1").await;
    let mut watch = Watch::open(&mut eu1, &[]).await;

    let first = watch.next().await.upserted();
    assert_eq!(first.check_id, "corp");
    assert_eq!(first.interval_ms, 60_000);
    assert!(first.phase_ms < 60_000);
    let table: serde_json::Value = serde_json::from_str(&first.check_json).unwrap();
    assert_eq!(table["imap"]["password_env"], "IMAP_PASS", "passwords travel as references");
    assert!(table.get("interval").is_none() && table.get("regions").is_none(), "agents get the probe schema");

    // A new check through the API.
    let created = expect_ok(api.post("/api/v1/checks", &check_table("shop", &["eu-west"], "30s")).await);
    let shop = watch.next().await.upserted();
    assert_eq!((shop.check_id.as_str(), shop.revision), ("shop", created["revision"].as_u64().unwrap()));

    // A change gets a higher revision and arrives.
    let mut changed = check_table("shop", &["eu-west"], "45s");
    changed["deadline"] = serde_json::json!("1m");
    let updated = expect_ok(api.put("/api/v1/checks/shop", &changed).await);
    assert_eq!(updated["change"], "updated");
    let shop2 = watch.next().await.upserted();
    assert!(shop2.revision > shop.revision);
    assert_eq!(shop2.interval_ms, 45_000);

    // The same table again changes nothing.
    assert_eq!(expect_ok(api.put("/api/v1/checks/shop", &changed).await)["change"], "unchanged");

    // A check moved out of the region is removed; a deleted one too.
    expect_ok(api.put("/api/v1/checks/shop", &check_table("shop", &["us-east"], "45s")).await);
    assert_eq!(watch.next().await, Change::Remove("shop".into()));
    let config_owned = api.delete("/api/v1/checks/corp").await.unwrap();
    assert_eq!(config_owned.status, 409, "the config file owns corp: {:?}", config_owned.body);
    watch.quiet(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_reconnecting_agent_gets_only_what_changed() {
    let c = Coordinator::start("", &format!("{}{}", check_toml("a", &["eu-west"], "1m"), check_toml("b", &["eu-west"], "1m")));
    let mut eu1 = c.agent("eu-1").await;
    let mut watch = Watch::open(&mut eu1, &[]).await;
    let mut got = vec![watch.next().await.upserted(), watch.next().await.upserted()];
    got.sort_by(|x, y| x.check_id.cmp(&y.check_id));
    drop(watch);

    // It still holds a; it holds an old revision of b and a check that is gone.
    let known = [("a", got[0].revision), ("b", got[1].revision - 1), ("gone", 1)];
    let mut again = Watch::open(&mut eu1, &known).await;
    let mut changes = vec![again.next().await, again.next().await];
    changes.sort_by_key(|c| format!("{c:?}"));
    assert_eq!(changes, [Change::Remove("gone".into()), Change::Upsert(got[1].clone())]);
    again.quiet(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn each_region_runs_a_check_once_and_it_moves_when_its_agent_leaves() {
    let c = Coordinator::start("", &check_toml("corp", &["eu-west"], "1m"));
    let (mut eu1, mut eu2) = (c.agent("eu-1").await, c.agent("eu-2").await);
    let mut w1 = Watch::open(&mut eu1, &[]).await;
    // Wait until eu-1 holds it (it is the only agent so far).
    assert_eq!(w1.next().await.upserted().check_id, "corp");
    let w2 = Watch::open(&mut eu2, &[]).await;

    let owner = || async {
        let check = expect_ok(c.api().get("/api/v1/checks/corp").await);
        check["assigned"]["eu-west"].as_str().map(str::to_string)
    };
    // Rendezvous hashing decides; exactly one of the two runs it.
    let (mut stays, mut leaves, mut leaver_name) = (w2, w1, "eu-1");
    let mut first = None;
    for _ in 0..50 {
        if let Some(o) = owner().await {
            first = Some(o);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if first.as_deref() == Some("eu-2") {
        // eu-2 won the hash: eu-1 is told to drop it, then eu-2 leaves.
        assert_eq!(leaves.next().await, Change::Remove("corp".into()));
        assert_eq!(stays.next().await.upserted().check_id, "corp");
        std::mem::swap(&mut stays, &mut leaves);
        leaver_name = "eu-2";
    } else {
        stays.quiet(Duration::from_millis(300)).await;
    }
    // The owner disconnects: the other agent gets the check promptly.
    drop(leaves);
    let moved = stays.next().await.upserted();
    assert_eq!(moved.check_id, "corp");
    let now = owner().await;
    assert_ne!(now.as_deref(), Some(leaver_name));
}

#[tokio::test]
async fn agents_list_shows_connection_region_and_version() {
    let c = Coordinator::start("", "");
    let mut us1 = c.agent("us-1").await;
    register(&mut us1, "us-1").await;
    let _watch = Watch::open(&mut us1, &[]).await;
    let mut connected = false;
    for _ in 0..50 {
        let agents = expect_ok(c.api().get("/api/v1/agents").await);
        let us = agents["agents"].as_array().unwrap().iter().find(|a| a["name"] == "us-1").unwrap().clone();
        assert_eq!(us["region"], "us-east");
        assert_eq!(us["version"], "test");
        assert!(us["last_seen"].is_string());
        if us["connected"] == true {
            connected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(connected);
}
