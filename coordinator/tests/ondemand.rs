//! On-demand runs (`POST /api/v1/checks/{id}/run`): the order reaches the
//! agent that runs the check in each region as a `RunNow` on its
//! assignment stream, the run's report (round 0, with the request id) is
//! found under `GET /api/v1/runs/{request_id}`, and a region without an
//! agent is named as such.

mod support;
use mailloop_proto::pb;
use serde_json::{Value, json};
use std::time::Duration;
use support::*;

/// A connected agent (registered, watching) and its first assignments.
async fn connected(c: &Coordinator, name: &str) -> (Agent, Watch) {
    let mut agent = c.agent(name).await;
    register(&mut agent, name).await;
    let watch = Watch::open(&mut agent, &[]).await;
    (agent, watch)
}

/// Waits until the API says `agent` runs `check` in `region`.
async fn wait_assigned(
    api: &mailloop_coordinator::client::Client,
    check: &str,
    region: &str,
    agent: &str,
) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let body = expect_ok(api.get(&format!("/api/v1/checks/{check}")).await);
        if body["assigned"][region] == agent {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{check} not assigned to {agent}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn run_now(change: Change) -> pb::RunNow {
    match change {
        Change::RunNow(r) => r,
        other => panic!("expected a RunNow, got {other:?}"),
    }
}

#[tokio::test]
async fn the_regions_agent_gets_run_now_and_its_report_is_found_by_request_id() {
    let c = Coordinator::start("", &check_toml("corp", &["eu-west", "us-east"], "1m"));
    let api = c.api();
    let (mut eu1, mut watch) = connected(&c, "eu-1").await;
    assert_eq!(watch.next().await.upserted().check_id, "corp");
    wait_assigned(&api, "corp", "eu-west", "eu-1").await;

    let r = api
        .post("/api/v1/checks/corp/run", &json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.error_text());
    let request_id = r.body["request_id"]
        .as_str()
        .expect("a request id")
        .to_string();
    assert_eq!(r.body["check"], "corp");
    // us-east has no agent connected: named, with null.
    assert_eq!(
        r.body["regions"],
        json!({"eu-west": "eu-1", "us-east": null})
    );

    let order = run_now(watch.next().await);
    assert_eq!(
        (order.check_id.as_str(), order.request_id.as_str()),
        ("corp", request_id.as_str())
    );

    // Before any report: the run is known, with no results.
    let run = expect_ok(api.get(&format!("/api/v1/runs/{request_id}")).await);
    assert_eq!(run["results"], json!([]));
    assert_eq!(run["regions"]["us-east"], Value::Null);

    // The agent reports it as round 0 with the request id.
    let mut reports = Reports::open(&mut eu1).await;
    let mut result = result("ml-run-1", "corp", 0);
    result.request_id = request_id.clone();
    assert!(reports.send(result).await.stored);
    // And a scheduled round (the one running now), which is not part of the run.
    let check = expect_ok(api.get("/api/v1/checks/corp").await);
    let (interval, phase) = (check["interval_ms"].as_u64().unwrap(), check["phase_ms"].as_u64().unwrap());
    let now_ms = chrono::Utc::now().timestamp_millis() as u64;
    let k = mailloop_coordinator::cluster::schedule::round_at(now_ms, interval, phase);
    assert!(
        reports
            .send(support::result("ml-round-k", "corp", k))
            .await
            .stored
    );

    let run = expect_ok(api.get(&format!("/api/v1/runs/{request_id}")).await);
    let results = run["results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "{run}");
    assert_eq!(results[0]["probe_id"], "ml-run-1");
    assert_eq!(results[0]["round"], 0);
    assert_eq!(results[0]["region"], "eu-west");
    assert_eq!(results[0]["request_id"], request_id.as_str());
    // A run is not a round: /latest shows the scheduled round, and the run beside it.
    let latest = expect_ok(api.get("/api/v1/checks/corp/latest").await);
    assert_eq!(latest["round"], k, "{latest}");
    assert_eq!(latest["newest"], "round", "stored after the run: {latest}");
    assert_eq!(latest["on_demand"]["request_id"], request_id.as_str(), "{latest}");
}

#[tokio::test]
async fn only_the_agent_that_runs_the_check_is_asked() {
    let c = Coordinator::start("", &check_toml("shop", &["eu-west"], "1m"));
    let api = c.api();
    let (_eu1, mut w1) = connected(&c, "eu-1").await;
    let (_eu2, mut w2) = connected(&c, "eu-2").await;
    // Wait until both sessions are in the map, then see who holds "shop".
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let owner = loop {
        let agents = expect_ok(api.get("/api/v1/agents").await);
        let connected = agents["agents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["connected"] == true)
            .count();
        let check = expect_ok(api.get("/api/v1/checks/shop").await);
        if connected == 2
            && let Some(owner) = check["assigned"]["eu-west"].as_str()
        {
            break owner.to_string();
        }
        assert!(tokio::time::Instant::now() < deadline, "no owner: {check}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (owner_watch, other_watch) = if owner == "eu-1" {
        (&mut w1, &mut w2)
    } else {
        (&mut w2, &mut w1)
    };
    // The owner got the upsert; drain it (the other may have had it and lost it).
    assert_eq!(owner_watch.next().await.upserted().check_id, "shop");

    let r = expect_ok(api.post("/api/v1/checks/shop/run", &json!({})).await);
    assert_eq!(r["regions"], json!({"eu-west": owner}));
    let order = run_now(owner_watch.next().await);
    assert_eq!(order.request_id, r["request_id"].as_str().unwrap());
    // The other agent of the region gets no RunNow (upserts/removes from the
    // placement settling may still come; none may be a RunNow).
    let quiet_until = tokio::time::Instant::now() + Duration::from_millis(500);
    while let Ok(Ok(Some(m))) = tokio::time::timeout_at(quiet_until, other_watch.0.message()).await
    {
        assert!(
            !matches!(m.change, Some(pb::assignment_change::Change::RunNow(_))),
            "the agent that does not run the check was asked to: {m:?}"
        );
    }
}

#[tokio::test]
async fn a_check_with_no_agent_anywhere_is_ordered_and_says_so() {
    let c = Coordinator::start("", &check_toml("lonely", &["eu-west", "us-east"], "1m"));
    let r = expect_ok(c.api().post("/api/v1/checks/lonely/run", &json!({})).await);
    assert_eq!(r["regions"], json!({"eu-west": null, "us-east": null}));
    let run = expect_ok(
        c.api()
            .get(&format!(
                "/api/v1/runs/{}",
                r["request_id"].as_str().unwrap()
            ))
            .await,
    );
    assert_eq!(run["results"], json!([]));
}

#[tokio::test]
async fn unknown_checks_and_runs_are_404_and_ordering_needs_the_admin_token() {
    let c = Coordinator::start("", &check_toml("corp", &["eu-west"], "1m"));
    let r = c
        .api()
        .post("/api/v1/checks/nope/run", &json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, 404, "{}", r.error_text());
    let r = c
        .api_without_token()
        .post("/api/v1/checks/corp/run", &json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, 401, "{}", r.error_text());
    let r = c.api().get("/api/v1/runs/run-0-00000000").await.unwrap();
    assert_eq!(r.status, 404, "{}", r.error_text());
}
