//! The judge at work in a real coordinator: fake agents in two regions
//! stream synthetic reports over the real gRPC API, rounds are decided
//! (when every region reported, or at the deadline), verdicts and incidents
//! survive a restart, and the API shows and acknowledges them.

mod support;
use mailloop_coordinator::client::Client;
use mailloop_coordinator::config::CoordinatorConfig;
use mailloop_coordinator::cluster::schedule;
use mailloop_proto::pb;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::*;

const CHECK: &str = "corp";
const INTERVAL_MS: u64 = 1000;
/// How long a verdict or incident may take to show up here.
const SOON: Duration = Duration::from_secs(15);

/// A coordinator judging `corp` (1 s rounds, eu-west and us-east) with
/// these `[incidents]` lines.
fn judged(incidents: &str) -> Coordinator {
    Coordinator::start(
        "",
        &format!(
            "{}\n[incidents]\n{incidents}\n",
            check_toml(CHECK, &["eu-west", "us-east"], "1s")
        ),
    )
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The round of `corp` running now, and when it started (epoch ms).
fn round_now() -> (u64, i64) {
    let phase = schedule::phase_ms(CHECK, INTERVAL_MS);
    let k = schedule::round_at(now_ms(), INTERVAL_MS, phase);
    (k, schedule::round_start_ms(k, INTERVAL_MS, phase) as i64)
}

/// A report that failed at RCPT TO with a 550 in `round`.
fn failed(probe_id: &str, round: u64) -> pb::ProbeResult {
    let report = json!({
        "probe_id": probe_id,
        "check": CHECK,
        "started_at": "2026-11-27T23:17:08.596634Z",
        "outcome": "failed",
        "rtt_ms": null,
        "delivery_ms": null,
        "steps": [
            {"name": "smtp.connect", "ms": 0.5, "ok": true, "start_ms": 0.0},
            {"name": "smtp.rcpt_to", "ms": 0.6, "ok": false, "code": 550, "detail": "User unknown", "start_ms": 0.5}
        ],
        "failure": {"step": "smtp.rcpt_to", "class": "permanent", "code": 550, "enhanced": "5.1.1", "message": "550 5.1.1 User unknown"},
        "message_id": format!("<{probe_id}@sender.test>"),
        "queue_id": null,
    });
    pb::ProbeResult {
        probe_id: probe_id.into(),
        check_id: CHECK.into(),
        revision: 1,
        round,
        report_json: report.to_string(),
        ..Default::default()
    }
}

/// A delivered report in `round`.
fn delivered(probe_id: &str, round: u64) -> pb::ProbeResult {
    result(probe_id, CHECK, round)
}

/// Streams `reports` as agent `name` and checks each was stored.
async fn send_as(c: &Coordinator, name: &str, reports: Vec<pb::ProbeResult>) {
    let mut agent = c.agent(name).await;
    let mut stream = Reports::open(&mut agent).await;
    for r in reports {
        let ack = stream.send(r).await;
        assert!(ack.stored, "{name}: {ack:?}");
    }
}

/// Polls until `found` returns something, or fails after `within`.
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

async fn verdicts(api: &Client, query: &str) -> Value {
    expect_ok(api.get(&format!("/api/v1/verdicts?{query}")).await)
}

/// The verdict of `round`, once there is one.
async fn verdict_of(api: &Client, round: u64) -> Value {
    eventually(SOON, &format!("a verdict for round {round}"), async || {
        let page = verdicts(api, &format!("check={CHECK}&limit=50")).await;
        page["verdicts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["round"] == round)
            .cloned()
    })
    .await
}

fn region<'a>(verdict: &'a Value, name: &str) -> &'a Value {
    verdict["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["region"] == name)
        .unwrap_or_else(|| panic!("no {name} in {verdict}"))
}

async fn incidents(api: &Client, query: &str) -> Vec<Value> {
    expect_ok(api.get(&format!("/api/v1/incidents?{query}")).await)["incidents"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn a_round_is_decided_as_soon_as_every_region_reported() {
    // A long slack: a verdict before it can only come from completeness.
    let c = judged("round_slack = \"20s\"");
    let (k, start) = round_now();
    send_as(&c, "eu-1", vec![delivered("eu-a", k)]).await;
    send_as(&c, "us-1", vec![delivered("us-a", k)]).await;
    let v = verdict_of(&c.api(), k).await;
    let decided = v["decided_at_ms"].as_i64().unwrap();
    assert!(
        decided < start + 20_000,
        "decided at +{} ms, i.e. at the deadline, not on completeness",
        decided - start
    );
    assert_eq!(v["verdict"], "up", "{v}");
    assert_eq!(region(&v, "eu-west")["state"], "ok");
    assert_eq!(region(&v, "us-east")["probe_id"], "us-a");
    assert_eq!(v["round_start_ms"], start);
    assert!(v["round_start"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn a_round_with_a_missing_region_is_decided_at_its_deadline() {
    let c = judged("round_slack = \"1s\"");
    let (k, start) = round_now();
    send_as(&c, "eu-1", vec![delivered("eu-a", k)]).await;
    let v = verdict_of(&c.api(), k).await;
    let decided = v["decided_at_ms"].as_i64().unwrap();
    // min(interval 1 s, probe budget) + round_slack 1 s.
    assert!(
        decided >= start + 2_000,
        "decided at +{} ms, before the deadline",
        decided - start
    );
    assert_eq!(region(&v, "us-east")["state"], "missing");
    assert_eq!(region(&v, "eu-west")["state"], "ok");
    assert_eq!(
        v["verdict"], "unknown",
        "one of two regions cannot decide: {v}"
    );
}

#[tokio::test]
async fn verdicts_and_an_open_incident_survive_a_restart_and_acks_are_idempotent() {
    let mut c = judged("round_slack = \"1s\"\nconfirm_rounds = 1");
    let (k, _) = round_now();
    send_as(&c, "eu-1", vec![failed("eu-a", k)]).await;
    send_as(&c, "us-1", vec![failed("us-a", k)]).await;
    let v = verdict_of(&c.api(), k).await;
    assert_eq!(v["verdict"], "down", "{v}");
    let opened = eventually(SOON, "an outage incident", async || {
        incidents(&c.api(), &format!("check={CHECK}&kind=outage&state=active"))
            .await
            .first()
            .cloned()
    })
    .await;
    let id = opened["id"].as_u64().unwrap();
    assert_eq!(opened["state"], "open");
    assert!(!opened["summary"].as_str().unwrap().is_empty(), "{opened}");

    c.kill();
    c.launch();
    let before = verdict_of(&c.api(), k).await;
    assert_eq!(before, v, "the verdict is stored as it was decided");

    // Still down after the restart: the same incident, not a second one.
    let (k2, _) = round_now();
    send_as(&c, "eu-1", vec![failed("eu-b", k2)]).await;
    send_as(&c, "us-1", vec![failed("us-b", k2)]).await;
    assert_eq!(verdict_of(&c.api(), k2).await["verdict"], "down");
    let outages = incidents(&c.api(), &format!("check={CHECK}&kind=outage")).await;
    assert_eq!(
        outages
            .iter()
            .map(|i| i["id"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [id],
        "one outage across the restart: {outages:?}"
    );

    // Acknowledge: admin only, then idempotent.
    let path = format!("/api/v1/incidents/{id}/ack");
    let refused = c.api_without_token().post(&path, &json!({})).await.unwrap();
    assert_eq!(refused.status, 401, "{refused:?}");
    let acked = expect_ok(c.api().post(&path, &json!({"by": "alice"})).await);
    assert_eq!(
        (&acked["state"], &acked["acknowledged_by"], &acked["change"]),
        (
            &json!("acknowledged"),
            &json!("alice"),
            &json!("acknowledged")
        )
    );
    let again = expect_ok(c.api().post(&path, &json!({"by": "bob"})).await);
    assert_eq!(again["change"], "unchanged");
    assert_eq!(again["acknowledged_by"], "alice", "the first ack stands");
    let shown = expect_ok(c.api().get(&format!("/api/v1/incidents/{id}")).await);
    let events: Vec<&str> = shown["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events.iter().filter(|e| **e == "acknowledged").count(),
        1,
        "{events:?}"
    );
    assert_eq!(
        incidents(&c.api(), "state=acknowledged").await.len(),
        1,
        "filtered by state"
    );
    assert!(incidents(&c.api(), "state=open").await.is_empty());
    let missing = c
        .api()
        .post("/api/v1/incidents/999999/ack", &json!({}))
        .await
        .unwrap();
    assert_eq!(missing.status, 404);
    let bad = c
        .api()
        .get("/api/v1/incidents?state=sleeping")
        .await
        .unwrap();
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn status_baselines_paging_and_round_zero() {
    let c = judged("round_slack = \"500ms\"");
    // An on-demand run's reports (round 0) are stored but never judged.
    send_as(&c, "eu-1", vec![delivered("eu-0", 0)]).await;
    send_as(&c, "us-1", vec![delivered("us-0", 0)]).await;
    let (k, _) = round_now();
    send_as(&c, "eu-1", vec![delivered("eu-a", k)]).await;
    send_as(&c, "us-1", vec![delivered("us-a", k)]).await;
    let v = verdict_of(&c.api(), k).await;
    assert_eq!(v["verdict"], "up");

    // Rounds nobody reported are decided too (unknown): wait for three more.
    let api = c.api();
    let all = eventually(SOON, "four verdicts", async || {
        let page = verdicts(&api, &format!("check={CHECK}&limit=100")).await;
        let list = page["verdicts"].as_array().unwrap().clone();
        (list.len() >= 4).then_some(list)
    })
    .await;
    assert!(
        all.iter().all(|v| v["round"] != 0),
        "round 0 is never judged"
    );
    let starts: Vec<i64> = all
        .iter()
        .map(|v| v["round_start_ms"].as_i64().unwrap())
        .collect();
    assert!(
        starts.windows(2).all(|w| w[0] > w[1]),
        "newest first: {starts:?}"
    );

    let first = verdicts(&api, &format!("check={CHECK}&limit=2")).await;
    assert_eq!(first["verdicts"].as_array().unwrap().len(), 2);
    let cursor = first["next"].as_str().expect("a next page").to_string();
    let second = verdicts(&api, &format!("check={CHECK}&limit=2&after={cursor}")).await;
    let last_of_first = first["verdicts"][1]["round"].as_u64().unwrap();
    let first_of_second = second["verdicts"][0]["round"].as_u64().unwrap();
    assert!(
        first_of_second < last_of_first,
        "page 2 continues below page 1"
    );

    let status = expect_ok(api.get("/api/v1/status").await);
    let corp = &status["checks"][0];
    assert_eq!(corp["check"], CHECK);
    assert!(corp["round"].as_u64().unwrap() >= k);
    assert_eq!(
        corp["regions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["region"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["eu-west", "us-east"]
    );
    // The fake agents never hold an assignment stream open: the only
    // incidents are the monitor's own blindness (coverage), never an outage.
    assert!(
        corp["incidents"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["kind"] == "coverage"),
        "{corp}"
    );

    let b = expect_ok(api.get(&format!("/api/v1/checks/{CHECK}/baselines")).await);
    assert_eq!(b["check"], CHECK);
    assert!(b["baselines"].is_array(), "{b}");
    let unknown = api.get("/api/v1/checks/nope/baselines").await.unwrap();
    assert_eq!(unknown.status, 404);
    let alerts = expect_ok(api.get("/api/v1/alerts").await);
    assert!(alerts["channels"].is_array(), "{alerts}");
}

fn config_issues(extra: Value) -> Vec<String> {
    let mut v = json!({
        "server": {"data_dir": "/tmp/mailloop-judge-test-nonexistent", "admin_token_env": "ADMIN"},
        "check": [{
            "name": "corp", "from": "probe@sender.test", "to": "probe@receiver.test",
            "interval": "1m", "regions": ["eu-west", "us-east"],
            "smtp": {"host": "127.0.0.1", "username": "probe@sender.test", "password_env": "SMTP_PASS"},
            "imap": {"host": "127.0.0.1", "username": "probe@receiver.test", "password_env": "IMAP_PASS"}
        }]
    });
    for (k, val) in extra.as_object().unwrap() {
        if k == "quorum" {
            v["check"][0]["quorum"] = val.clone();
        } else {
            v[k] = val.clone();
        }
    }
    let env = |n: &str| (n == "ADMIN").then(|| "an-admin-token-long-enough".to_string());
    match CoordinatorConfig::from_value(&v, &env) {
        Ok(_) => Vec::new(),
        Err(issues) => issues.into_iter().map(|i| i.path).collect(),
    }
}

#[test]
fn judge_config_errors_name_every_bad_key_at_once() {
    assert_eq!(
        config_issues(json!({
            "quorum": 3,
            "incidents": {"quorum": "most", "confirm_rounds": 0, "transit_rounds": 101,
                          "round_slack": "soon", "page_me": true},
            "baselines": {"window": 2, "factor": 1.0, "floor": "fast", "decay": 0.5},
        })),
        [
            "check[0].quorum",
            "incidents.quorum",
            "incidents.confirm_rounds",
            "incidents.transit_rounds",
            "incidents.round_slack",
            "incidents.page_me",
            "baselines.window",
            "baselines.factor",
            "baselines.floor",
            "baselines.decay",
        ]
    );
}

#[test]
fn good_judge_config_is_accepted() {
    assert!(
        config_issues(json!({
            "quorum": 2,
            "incidents": {"quorum": 0.5, "confirm_rounds": 2, "transit_rounds": 3, "degraded_rounds": 3,
                          "resolve_rounds": 2, "defer_grace": "15m", "round_slack": "10s"},
            "baselines": {"window": 100, "min_samples": 20, "factor": 3.0, "floor": "25ms"},
        }))
        .is_empty()
    );
    assert!(config_issues(json!({"quorum": "majority"})).is_empty());
    assert_eq!(config_issues(json!({"quorum": 0.0})), ["check[0].quorum"]);
}

/// Runs `mailloopctl` against `c` with the admin token; (exit code, stdout).
fn ctl(c: &Coordinator, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mailloopctl"))
        .args(["--url", &format!("http://{}", c.http)])
        .args(args)
        .env("MAILLOOP_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test]
async fn mailloopctl_shows_status_and_lists_shows_and_acks_incidents() {
    let c = judged("round_slack = \"1s\"\nconfirm_rounds = 1");
    let (k, _) = round_now();
    send_as(&c, "eu-1", vec![failed("eu-a", k)]).await;
    send_as(&c, "us-1", vec![failed("us-a", k)]).await;
    let opened = eventually(SOON, "an outage incident", async || {
        incidents(&c.api(), "state=active").await.first().cloned()
    })
    .await;
    let id = opened["id"].to_string();
    // What the on-call reads at 3 a.m.: the change, and the incident with its summary.
    let opened_line = eventually(DEADLINE, "an 'incident opened' log line", async || {
        c.log()
            .lines()
            .find(|l| l.contains("incident opened"))
            .map(str::to_string)
    })
    .await;
    let log = c.log();
    assert!(
        opened_line.contains("WARN") && opened_line.contains("smtp.rcpt_to"),
        "{opened_line}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("verdict changed") && l.contains("verdict=down")),
        "{log}"
    );

    let (code, status) = ctl(&c, &["status"]);
    assert_eq!(code, 0, "{status}");
    assert!(
        status.contains("VERDICT") && status.contains(CHECK),
        "{status}"
    );
    assert!(status.contains(&format!("#{id} outage (open)")), "{status}");
    // Under the table: the judge's note and the incident's summary, as in the JSON.
    assert!(status.contains(&format!("\n{CHECK}: down: ")), "{status}");
    let summary = opened["summary"].as_str().unwrap();
    assert!(status.contains(&format!("\n{CHECK}: #{id} outage (open): {summary}")), "{status}");

    let (code, list) = ctl(&c, &["incidents", "list", "--state", "active"]);
    assert_eq!(code, 0, "{list}");
    assert!(list.lines().nth(1).unwrap().starts_with(&id), "{list}");

    let (code, shown) = ctl(&c, &["incidents", "show", &id]);
    assert_eq!(code, 0, "{shown}");
    assert!(
        shown.contains("CRITICAL outage (open)") && shown.contains("opened"),
        "{shown}"
    );

    let (code, acked) = ctl(&c, &["incidents", "ack", &id, "--by", "carol"]);
    assert_eq!(
        (code, acked.trim()),
        (0, format!("incident {id} acknowledged").as_str())
    );
    let (code, again) = ctl(&c, &["incidents", "ack", &id]);
    assert_eq!(code, 0);
    assert!(again.contains("already acknowledged by carol"), "{again}");
    let (code, json) = ctl(
        &c,
        &[
            "--output",
            "json",
            "incidents",
            "list",
            "--state",
            "acknowledged",
        ],
    );
    assert_eq!(code, 0);
    let parsed: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed[0]["acknowledged_by"], "carol");

    let (code, refused) = ctl(&c, &["incidents", "ack", "999999"]);
    assert_eq!(code, 4, "the coordinator refused: {refused}");
}

#[test]
fn a_default_quorum_count_must_fit_every_check_without_its_own() {
    assert_eq!(
        config_issues(json!({"incidents": {"quorum": 3}})),
        ["incidents.quorum"]
    );
    assert!(config_issues(json!({"incidents": {"quorum": 3}, "quorum": 2})).is_empty());
}

#[tokio::test]
async fn an_outage_resolves_after_resolve_rounds_good_rounds() {
    let c = judged("round_slack = \"1s\"\nconfirm_rounds = 1\nresolve_rounds = 2");
    // Reports may arrive ahead of their round: they wait until it starts,
    // so these three rounds are consecutive whatever the test's pace.
    let (k, _) = round_now();
    let (k, k1, k2) = (k + 1, k + 2, k + 3);
    send_as(
        &c,
        "eu-1",
        vec![
            failed("eu-a", k),
            delivered("eu-b", k1),
            delivered("eu-c", k2),
        ],
    )
    .await;
    send_as(
        &c,
        "us-1",
        vec![
            failed("us-a", k),
            delivered("us-b", k1),
            delivered("us-c", k2),
        ],
    )
    .await;
    assert_eq!(verdict_of(&c.api(), k).await["verdict"], "down");
    assert_eq!(verdict_of(&c.api(), k1).await["verdict"], "up");
    assert_eq!(verdict_of(&c.api(), k2).await["verdict"], "up");
    let resolved = eventually(SOON, "the outage resolved", async || {
        incidents(&c.api(), "kind=outage&state=resolved")
            .await
            .first()
            .cloned()
    })
    .await;
    assert_eq!(resolved["first_round"], k);
    let shown = expect_ok(
        c.api()
            .get(&format!("/api/v1/incidents/{}", resolved["id"]))
            .await,
    );
    let last = shown["timeline"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        (&last["event"], &last["round"]),
        (&json!("resolved"), &json!(k2))
    );
    assert!(shown["resolved_at"].as_str().is_some());
    // Too late to acknowledge.
    let late = c
        .api()
        .post(
            &format!("/api/v1/incidents/{}/ack", resolved["id"]),
            &json!({}),
        )
        .await
        .unwrap();
    assert_eq!(late.status, 409, "{late:?}");
}

#[tokio::test]
async fn a_checks_own_quorum_is_used_kept_and_shown() {
    let mut c = Coordinator::start("", "[incidents]\nround_slack = \"1s\"\n");
    let mut shop = check_table("shop", &["eu-west", "us-east"], "1s");
    shop["quorum"] = json!(1);
    expect_ok(c.api().post("/api/v1/checks", &shop).await);
    let phase = schedule::phase_ms("shop", INTERVAL_MS);
    let k = schedule::round_at(now_ms(), INTERVAL_MS, phase) + 1;
    let mut bad = failed("eu-a", k);
    bad.check_id = "shop".into();
    bad.report_json = bad.report_json.replace("\"corp\"", "\"shop\"");
    send_as(&c, "eu-1", vec![bad]).await;
    send_as(&c, "us-1", vec![result("us-a", "shop", k)]).await;
    let v = eventually(SOON, "shop's verdict", async || {
        let page = verdicts(&c.api(), "check=shop&limit=50").await;
        page["verdicts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["round"] == k)
            .cloned()
    })
    .await;
    assert_eq!(
        (&v["verdict"], &v["quorum"]),
        (&json!("down"), &json!(1)),
        "one failing region is an outage with quorum 1: {v}"
    );
    c.kill();
    c.launch();
    let stored = expect_ok(c.api().get("/api/v1/checks/shop").await);
    assert_eq!(stored["check"]["quorum"], 1, "{stored}");
    let mut three = check_table("shop", &["eu-west", "us-east"], "1s");
    three["quorum"] = json!(3);
    let refused = c.api().put("/api/v1/checks/shop", &three).await.unwrap();
    assert_eq!(refused.status, 422, "{refused:?}");
    assert_eq!(refused.body["issues"][0]["path"], "body.quorum");
}
