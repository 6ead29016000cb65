//! An agent registers, watches its assignments, and follows every change
//! within a second; checks move between the agents of a region.

mod support;
use mailloop_coordinator::cluster::schedule::pick_agent;
use std::time::Duration;
use support::*;

#[tokio::test]
async fn register_returns_the_agent_id_and_settings() {
    let c = Coordinator::start("", "");
    let mut eu1 = c.agent("eu-1").await;
    let r = register(&mut eu1, "eu-1").await;
    assert_eq!(r.agent_id, "eu-1");
    assert_eq!(r.heartbeat_seconds, 2);
    // The fleet agents spread their reconnects over: every declared agent.
    assert_eq!(r.fleet_size as usize, AGENTS.len());
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
    let mut got = [watch.next().await.upserted(), watch.next().await.upserted()];
    got.sort_by(|x, y| x.check_id.cmp(&y.check_id));
    drop(watch);

    // It still holds a; it holds an old revision of b and a check that is gone.
    let known = [("a", got[0].revision), ("b", got[1].revision - 1), ("gone", 1)];
    let mut again = Watch::open(&mut eu1, &known).await;
    let mut changes = [again.next().await, again.next().await];
    changes.sort_by_key(|c| format!("{c:?}"));
    assert_eq!(changes, [Change::Remove("gone".into()), Change::Upsert(got[1].clone())]);
    again.quiet(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn each_region_runs_a_check_once_and_it_moves_when_its_agent_leaves() {
    let c = Coordinator::start("", &check_toml("corp", &["eu-west"], "1m"));
    // Rendezvous hashing decides, deterministically, who of the two runs it.
    let winner = pick_agent("corp", ["eu-1", "eu-2"]).unwrap();
    let loser = if winner == "eu-1" { "eu-2" } else { "eu-1" };
    let (mut l, mut w) = (c.agent(loser).await, c.agent(winner).await);

    // The loser connects first and, alone in the region, gets the check.
    let mut lw = Watch::open(&mut l, &[]).await;
    assert_eq!(lw.next().await.upserted().check_id, "corp");
    // The winner connects: the check moves to it, and only it runs it.
    let mut ww = Watch::open(&mut w, &[]).await;
    assert_eq!(ww.next().await.upserted().check_id, "corp");
    assert_eq!(lw.next().await, Change::Remove("corp".into()));
    let check = expect_ok(c.api().get("/api/v1/checks/corp").await);
    assert_eq!(check["assigned"]["eu-west"], winner);

    // The winner disconnects: the check comes back to the other agent promptly.
    drop(ww);
    assert_eq!(lw.next().await.upserted().check_id, "corp");
    let check = expect_ok(c.api().get("/api/v1/checks/corp").await);
    assert_eq!(check["assigned"]["eu-west"], loser);
}

#[tokio::test]
async fn agents_list_shows_connection_region_and_version() {
    let c = Coordinator::start("", &check_toml("corp", &["us-east"], "1m"));
    let mut us1 = c.agent("us-1").await;
    register(&mut us1, "us-1").await;
    let mut watch = Watch::open(&mut us1, &[]).await;
    // Its first assignment proves the session is in place.
    watch.next().await;
    let agents = expect_ok(c.api().get("/api/v1/agents").await);
    let us = agents["agents"].as_array().unwrap().iter().find(|a| a["name"] == "us-1").unwrap().clone();
    assert_eq!(us["region"], "us-east");
    assert_eq!(us["version"], "test");
    assert!(us["last_seen"].is_string());
    assert_eq!(us["connected"], true);
    assert_eq!(us["assigned_checks"], 1);
    let eu = agents["agents"].as_array().unwrap().iter().find(|a| a["name"] == "eu-1").unwrap().clone();
    assert_eq!(eu["connected"], false);
}
