//! The coordinator's judgement of its own blindness (issue 17) and round
//! sanity (issue 14), against a real coordinator process: fake agents speak
//! the real gRPC API, alerts go to a webhook receiver started here.
//!
//! - a region without a live agent opens a `coverage` incident that names
//!   it and its agents; `/status` says why; deleting the check resolves it
//!   ("check deleted") and sends a last alert;
//! - a report whose round is far from the coordinator's clock is stored as
//!   early or late evidence, its ack says why, and it moves neither
//!   `/latest` nor a verdict;
//! - `/latest` carries the newest on-demand run (round 0), marked as such.

mod support;
use axum::extract::State;
use mailloop_coordinator::client::Client;
use mailloop_coordinator::cluster::schedule;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

/// How long an incident, verdict or alert may take to show up here.
const SOON: Duration = Duration::from_secs(30);

/// A webhook receiver: every POSTed JSON body, in arrival order.
struct Hook {
    url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Hook {
    async fn start() -> Hook {
        let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
        let app = axum::Router::new()
            .route(
                "/hook",
                axum::routing::post(
                    async |State(b): State<Arc<Mutex<Vec<Value>>>>,
                           axum::Json(v): axum::Json<Value>| {
                        b.lock().unwrap().push(v);
                        "ok"
                    },
                ),
            )
            .with_state(bodies.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Hook { url, bodies }
    }

    /// The first alert with this event for an incident of this kind.
    fn find(&self, event: &str, kind: &str) -> Option<Value> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .find(|b| b["event"] == event && b["incident"]["kind"] == kind)
            .cloned()
    }
}

/// Polls until `found` returns something, or fails after `within` saying `what`.
async fn eventually<T>(
    within: Duration,
    what: &str,
    mut found: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(t) = found().await {
            return t;
        }
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn incidents(api: &Client, query: &str) -> Vec<Value> {
    expect_ok(api.get(&format!("/api/v1/incidents?{query}")).await)["incidents"]
        .as_array()
        .unwrap()
        .clone()
}

fn alert_config(url: &str) -> String {
    format!(
        "[incidents]\nround_slack = \"1s\"\n\n[[alert]]\nname = \"hook\"\ntype = \"webhook\"\nurl = {url:?}\n\
         kinds = [\"coverage\"]\nretries = 1\ntimeout = \"5s\"\n"
    )
}

#[tokio::test]
async fn a_region_without_a_live_agent_opens_coverage_and_deleting_the_check_resolves_it_with_a_last_alert()
 {
    let hook = Hook::start().await;
    let c = Coordinator::start("", &alert_config(&hook.url));
    let api = c.api();
    // us-east has one declared agent, us-1: it connects, then goes away.
    {
        let mut us1 = c.agent("us-1").await;
        register(&mut us1, "us-1").await;
        let _watch = Watch::open(&mut us1, &[]).await;
        eventually(SOON, "us-1 connected", async || {
            (expect_ok(api.get("/api/v1/agents/us-1").await)["connected"] == true).then_some(())
        })
        .await;
    }
    eventually(SOON, "us-1 disconnected", async || {
        let a = expect_ok(api.get("/api/v1/agents/us-1").await);
        (a["connected"] == false && a["disconnected_at"].is_string()).then_some(())
    })
    .await;
    let created = api
        .post("/api/v1/checks", &check_table("blind", &["us-east"], "1s"))
        .await
        .unwrap();
    assert_eq!(created.status, 201, "{}", created.error_text());

    let opened = eventually(SOON, "a coverage incident for us-east", async || {
        incidents(&api, "check=blind&kind=coverage&state=open")
            .await
            .into_iter()
            .next()
    })
    .await;
    let summary = opened["summary"].as_str().unwrap();
    assert_eq!(opened["regions"], json!(["us-east"]), "{opened}");
    assert_eq!(
        opened["severity"], "warning",
        "the default coverage_severity: {opened}"
    );
    assert!(
        summary.contains("The monitor is blind in us-east"),
        "{summary}"
    );
    assert!(
        summary.contains("agent us-1 disconnected "),
        "names the region's agent: {summary}"
    );

    // The alert names the region and the agent.
    let alert = eventually(SOON, "the coverage alert", async || {
        hook.find("opened", "coverage")
    })
    .await;
    assert_eq!(alert["incident"]["check_id"], "blind");
    assert!(
        alert["incident"]["summary"]
            .as_str()
            .unwrap()
            .contains("us-1"),
        "{alert}"
    );

    // /status and the verdict say why the region is unknown.
    let status = expect_ok(api.get("/api/v1/status").await);
    let check = status["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "blind")
        .unwrap()
        .clone();
    let region = &check["regions"][0];
    let detail = region["detail"]
        .as_str()
        .unwrap_or_else(|| panic!("a detail: {check}"));
    assert!(
        detail.starts_with("no agent connected in us-east now (agent us-1 disconnected "),
        "{detail}"
    );
    assert_eq!(check["verdict"], "unknown", "{check}");
    assert!(
        check["incidents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["kind"] == "coverage"),
        "{check}"
    );
    let verdicts = expect_ok(api.get("/api/v1/verdicts?check=blind&limit=1").await);
    let evidence = &verdicts["verdicts"][0]["regions"][0];
    assert_eq!(evidence["state"], "missing");
    assert_eq!(evidence["agents_connected"], 0);
    assert!(
        evidence["detail"]
            .as_str()
            .unwrap()
            .starts_with("no report from us-east yet (agent us-1"),
        "{evidence}"
    );

    // Deleting the check resolves its open incidents and tells the channels.
    let deleted = api.delete("/api/v1/checks/blind").await.unwrap();
    assert_eq!(deleted.status, 200, "{}", deleted.error_text());
    let id = opened["id"].as_u64().unwrap();
    let resolved = eventually(SOON, "the incident resolved", async || {
        let i = expect_ok(api.get(&format!("/api/v1/incidents/{id}")).await);
        (i["state"] == "resolved").then_some(i)
    })
    .await;
    let last = resolved["timeline"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        (last["event"].as_str(), last["note"].as_str()),
        (Some("resolved"), Some("check deleted")),
        "{resolved}"
    );
    let alert = eventually(SOON, "the resolved alert", async || {
        hook.find("resolved", "coverage")
    })
    .await;
    assert_eq!(alert["incident"]["id"], id);
    assert_eq!(alert["incident"]["state"], "resolved");
    assert!(incidents(&api, "check=blind&state=active").await.is_empty());
}

const INTERVAL_MS: u64 = 1000;

fn round_now(check: &str) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    schedule::round_at(now, INTERVAL_MS, schedule::phase_ms(check, INTERVAL_MS))
}

#[tokio::test]
async fn a_round_far_from_the_coordinators_clock_is_stored_but_moves_neither_latest_nor_a_verdict()
{
    let c = Coordinator::start(
        "",
        &format!(
            "{}\n[incidents]\nround_slack = \"1s\"\n",
            check_toml("corp", &["eu-west"], "1s")
        ),
    );
    let api = c.api();
    let mut agent = c.agent("eu-1").await;
    register(&mut agent, "eu-1").await;
    let mut reports = Reports::open(&mut agent).await;

    let now = round_now("corp");
    let early = now + 1_000_000; // about 11 days ahead: a clock far ahead
    let ack = reports.send(result("ml-early", "corp", early)).await;
    assert!(ack.stored, "kept as evidence: {ack:?}");
    assert!(
        ack.warning
            .contains(&format!("round {early} of check \"corp\"")),
        "{}",
        ack.warning
    );
    assert!(
        ack.warning
            .contains("stored as early evidence, kept out of verdicts and /latest"),
        "{}",
        ack.warning
    );
    assert!(ack.coordinator_time_ms > 0, "{ack:?}");
    let ack = reports
        .send(result("ml-late", "corp", now - 1_000_000))
        .await;
    assert!(
        ack.stored && ack.warning.contains("stored as late evidence"),
        "{ack:?}"
    );
    let ack = reports.send(result("ml-now", "corp", now)).await;
    assert!(
        ack.stored && ack.warning.is_empty(),
        "a round in its window: {ack:?}"
    );

    let latest = expect_ok(api.get("/api/v1/checks/corp/latest").await);
    assert_eq!(latest["round"], now, "{latest}");
    assert_eq!(latest["newest"], "round", "{latest}");
    let listed = results(&api, "corp").await;
    let window = |id: &str| {
        listed
            .iter()
            .find(|r| r["probe_id"] == id)
            .map(|r| r["out_of_window"].clone())
    };
    assert_eq!(window("ml-early"), Some(json!("early")));
    assert_eq!(window("ml-late"), Some(json!("late")));
    assert_eq!(window("ml-now"), Some(Value::Null));

    // The round in its window is judged; neither far round ever is.
    eventually(SOON, "a verdict for the round in its window", async || {
        let v = expect_ok(api.get("/api/v1/verdicts?check=corp&limit=100").await);
        v["verdicts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["round"] == now && v["verdict"] == "up")
            .cloned()
    })
    .await;
    let v = expect_ok(api.get("/api/v1/verdicts?check=corp&limit=1000").await);
    let rounds: Vec<u64> = v["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["round"].as_u64().unwrap())
        .collect();
    assert!(
        rounds.iter().all(|&r| r != early && r != now - 1_000_000),
        "{rounds:?}"
    );
    assert!(
        c.log().contains("stored as early evidence"),
        "the coordinator logs it"
    );
}

#[tokio::test]
async fn latest_shows_the_newest_on_demand_run_marked_as_such() {
    let c = Coordinator::start(
        "",
        &format!(
            "{}\n[incidents]\nround_slack = \"1s\"\n",
            check_toml("corp", &["eu-west", "us-east"], "1s")
        ),
    );
    let api = c.api();
    let latest = expect_ok(api.get("/api/v1/checks/corp/latest").await);
    assert_eq!(
        (
            latest["round"].clone(),
            latest["on_demand"].clone(),
            latest["newest"].clone()
        ),
        (Value::Null, Value::Null, Value::Null),
        "{latest}"
    );

    let mut agent = c.agent("eu-1").await;
    register(&mut agent, "eu-1").await;
    let mut reports = Reports::open(&mut agent).await;
    let mut run = result("ml-run", "corp", 0);
    run.request_id = "run-1-test".into();
    assert!(reports.send(run).await.stored);

    // Only an on-demand run so far: no round, but the run is there.
    let latest = expect_ok(api.get("/api/v1/checks/corp/latest").await);
    assert_eq!(latest["round"], Value::Null, "{latest}");
    assert_eq!(latest["newest"], "on_demand", "{latest}");
    let od = &latest["on_demand"];
    assert_eq!(
        (od["request_id"].as_str(), od["round"].as_u64()),
        (Some("run-1-test"), Some(0)),
        "{latest}"
    );
    let eu = od["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["region"] == "eu-west")
        .unwrap();
    assert_eq!(eu["result"]["probe_id"], "ml-run", "{latest}");
    assert_eq!(eu["result"]["request_id"], "run-1-test", "{latest}");
    let us = od["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["region"] == "us-east")
        .unwrap();
    assert_eq!(us["result"], Value::Null, "{latest}");

    // A scheduled round stored after it is the newest; the run stays beside it.
    let now = round_now("corp");
    assert!(reports.send(result("ml-round", "corp", now)).await.stored);
    let latest = expect_ok(api.get("/api/v1/checks/corp/latest").await);
    assert_eq!(
        (latest["round"].as_u64(), latest["newest"].as_str()),
        (Some(now), Some("round")),
        "{latest}"
    );
    assert_eq!(latest["on_demand"]["request_id"], "run-1-test", "{latest}");
}

#[tokio::test]
async fn an_agent_clock_off_by_minutes_opens_a_clock_incident_and_agreeing_again_resolves_it() {
    let c = Coordinator::start(
        "",
        &format!(
            "{}\n[incidents]\nround_slack = \"1s\"\n",
            check_toml("corp", &["eu-west"], "1s")
        ),
    );
    let api = c.api();
    let mut agent = c.agent("eu-1").await;
    let epoch_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    // Its clock is two minutes ahead: Register says so.
    agent
        .register(mailloop_proto::pb::RegisterRequest {
            name: "eu-1".into(),
            region: "eu-west".into(),
            version: "test".into(),
            sent_at_ms: epoch_ms() + 120_000,
            ..Default::default()
        })
        .await
        .unwrap();
    // Connected: the judge knows its region's agents from the first round.
    let _watch = Watch::open(&mut agent, &[]).await;
    let agents = expect_ok(api.get("/api/v1/agents/eu-1").await);
    let skew = agents["clock_skew_ms"]
        .as_i64()
        .unwrap_or_else(|| panic!("{agents}"));
    assert!((110_000..=120_000).contains(&skew), "measured {skew} ms");
    assert!(
        c.log().contains("agent clock is"),
        "the coordinator logs it"
    );

    let mut reports = Reports::open(&mut agent).await;
    // A round that starts after the coordinator did (it watches those only).
    let started = round_now("corp");
    let k = eventually(SOON, "a round after the start", async || {
        let n = round_now("corp");
        (n > started).then_some(n)
    })
    .await;
    assert!(reports.send(result("ml-k", "corp", k)).await.stored);
    let opened = eventually(SOON, "a clock incident", async || {
        incidents(&api, "check=corp&kind=clock&state=open")
            .await
            .into_iter()
            .next()
    })
    .await;
    let summary = opened["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("The clock of agent eu-1 (eu-west) is 1"),
        "{summary}"
    );
    assert!(
        summary.contains("s ahead of the coordinator's, more than the 30s allowed"),
        "{summary}"
    );

    // Its clock is right again: the next Heartbeat says so, the next round resolves it.
    agent
        .heartbeat(mailloop_proto::pb::HeartbeatRequest {
            agent_id: "eu-1".into(),
            spooled: 0,
            sent_at_ms: epoch_ms(),
        })
        .await
        .unwrap();
    let next = eventually(SOON, "the next round", async || {
        let n = round_now("corp");
        (n > k).then_some(n)
    })
    .await;
    assert!(reports.send(result("ml-next", "corp", next)).await.stored);
    let id = opened["id"].as_u64().unwrap();
    eventually(SOON, "the clock incident resolved", async || {
        let i = expect_ok(api.get(&format!("/api/v1/incidents/{id}")).await);
        (i["state"] == "resolved").then_some(())
    })
    .await;
}
