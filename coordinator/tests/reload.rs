//! SIGHUP reloads of the judge's `[incidents]` and the `[[alert]]`
//! channels in a real coordinator: a new `confirm_rounds` decides the next
//! incident, a webhook added by a reload gets the next incident event, and
//! a bad `[[alert]]` keeps the old channels and names every bad key.
//! Every wait polls a condition (the log, the API, a receiver) with a deadline.

mod support;
use mailloop_coordinator::client::Client;
use mailloop_coordinator::cluster::schedule;
use mailloop_proto::pb;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const CHECK: &str = "corp";
const INTERVAL_MS: u64 = 1000;
const SOON: Duration = Duration::from_secs(15);
/// Logged once the judge and the alert channels run on the reloaded file.
const RELOADED: &str = "judge and alert settings reloaded";
const REFUSED: &str = "config reload refused; the previous config stays in force";

/// The config's text with `corp` (1 s rounds, two regions), `[incidents]`
/// and `alerts` (`[[alert]]` tables) after the harness's `[server]` and agents.
fn body(incidents: &str, alerts: &str) -> String {
    format!(
        "{}\n[incidents]\n# A long slack: rounds are decided because both regions reported.\nround_slack = \"30s\"\n{incidents}\n{alerts}\n",
        check_toml(CHECK, &["eu-west", "us-east"], "1s")
    )
}

/// Rewrites the part of the config after the agents and sends SIGHUP.
fn reload(c: &Coordinator, first: &str, next: &str) {
    let text = std::fs::read_to_string(c.config_path()).unwrap();
    assert!(
        text.contains(first),
        "the config holds what the test started with"
    );
    std::fs::write(c.config_path(), text.replace(first, next)).unwrap();
    c.signal("HUP");
}

fn webhook(name: &str, url: &str) -> String {
    format!("\n[[alert]]\nname = \"{name}\"\ntype = \"webhook\"\nurl = \"{url}\"\nretries = 0\n")
}

async fn eventually<T>(what: &str, mut found: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + SOON;
    loop {
        if let Some(t) = found().await {
            return t;
        }
        assert!(Instant::now() < deadline, "{what} within {SOON:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the log shows `line` `n` times in all.
async fn logged(c: &Coordinator, line: &str, n: usize) {
    eventually(&format!("{n} × {line:?} in the log"), async || {
        (c.log().matches(line).count() >= n).then_some(())
    })
    .await;
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The round after the one running now.
fn next_round() -> u64 {
    let phase = schedule::phase_ms(CHECK, INTERVAL_MS);
    schedule::round_at(now_ms(), INTERVAL_MS, phase) + 1
}

/// A report whose SMTP connect was refused: not a hard failure, so an
/// outage opens only after `confirm_rounds` such rounds.
fn failed(probe_id: &str, round: u64) -> pb::ProbeResult {
    let mut r = result(probe_id, CHECK, round);
    let mut report: Value = serde_json::from_str(&r.report_json).unwrap();
    report["outcome"] = json!("failed");
    report["rtt_ms"] = Value::Null;
    report["delivery_ms"] = Value::Null;
    report["steps"] = json!([
        {"name": "smtp.connect", "ms": 0.5, "ok": false, "detail": "connection refused", "start_ms": 0.0}
    ]);
    report["failure"] = json!({"step": "smtp.connect", "class": "connect", "code": null, "enhanced": null, "message": "connection refused"});
    r.report_json = report.to_string();
    r
}

/// Both regions fail `round`; returns its verdict once decided.
async fn both_fail(c: &Coordinator, round: u64) -> Value {
    for (agent, tag) in [("eu-1", "eu"), ("us-1", "us")] {
        let mut client = c.agent(agent).await;
        let mut stream = Reports::open(&mut client).await;
        let ack = stream.send(failed(&format!("{tag}-{round}"), round)).await;
        assert!(ack.stored, "{agent}: {ack:?}");
    }
    let api = c.api();
    eventually(&format!("a verdict for round {round}"), async || {
        let page = expect_ok(
            api.get(&format!("/api/v1/verdicts?check={CHECK}&limit=50"))
                .await,
        );
        page["verdicts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["round"] == round)
            .cloned()
    })
    .await
}

async fn outages(api: &Client) -> Vec<Value> {
    expect_ok(api.get("/api/v1/incidents?kind=outage").await)["incidents"]
        .as_array()
        .unwrap()
        .clone()
}

async fn channel_names(api: &Client) -> Vec<String> {
    let status = expect_ok(api.get("/api/v1/alerts").await);
    status["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

/// A webhook receiver on 127.0.0.1 answering 200: the bodies it got.
async fn receiver() -> (String, mpsc::UnboundedReceiver<Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap_or(0));
                        if buf.len() >= end + 4 + len {
                            let _ = tx.send(
                                serde_json::from_slice(&buf[end + 4..end + 4 + len])
                                    .unwrap_or(Value::Null),
                            );
                            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
                            return;
                        }
                    }
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (url, rx)
}

async fn next_post(rx: &mut mpsc::UnboundedReceiver<Value>) -> Value {
    tokio::time::timeout(SOON, rx.recv())
        .await
        .expect("a webhook POST within the deadline")
        .expect("receiver running")
}

#[tokio::test]
async fn a_reloaded_confirm_rounds_decides_the_next_incident() {
    let c = Coordinator::start("", &body("confirm_rounds = 3", ""));
    let api = c.api();
    let k = next_round();
    assert_eq!(both_fail(&c, k).await["verdict"], "down");
    assert!(
        outages(&api).await.is_empty(),
        "one down round of three needed opens nothing"
    );

    reload(&c, "confirm_rounds = 3", "confirm_rounds = 1");
    logged(&c, RELOADED, 1).await;
    assert!(
        c.log().contains("incidents.confirm_rounds 3 -> 1"),
        "{}",
        c.log()
    );

    // Two down rounds in a row: an outage with confirm_rounds 1, none with 3.
    assert_eq!(both_fail(&c, k + 1).await["verdict"], "down");
    let open = outages(&api).await;
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0]["state"], "open", "{open:?}");
}

#[tokio::test]
async fn a_webhook_added_by_a_reload_gets_the_next_incident() {
    let c = Coordinator::start("", &body("confirm_rounds = 1", "# no alerts yet"));
    assert!(channel_names(&c.api()).await.is_empty());
    let (url, mut posts) = receiver().await;

    reload(&c, "# no alerts yet", &webhook("tickets", &url));
    logged(&c, RELOADED, 1).await;
    assert!(c.log().contains("added [tickets]"), "{}", c.log());
    assert_eq!(channel_names(&c.api()).await, ["tickets"]);

    assert_eq!(both_fail(&c, next_round()).await["verdict"], "down");
    let post = next_post(&mut posts).await;
    assert_eq!(
        (&post["event"], &post["incident"]["kind"]),
        (&json!("opened"), &json!("outage")),
        "{post}"
    );
}

#[tokio::test]
async fn a_bad_alert_reload_keeps_the_old_channels_and_names_every_bad_key() {
    let (url, mut posts) = receiver().await;
    let hook = webhook("tickets", &url);
    let c = Coordinator::start("", &body("confirm_rounds = 1", &hook));
    assert_eq!(channel_names(&c.api()).await, ["tickets"]);

    let bad = format!(
        "{hook}\n[[alert]]\nname = \"tickets\"\ntype = \"pager\"\ntimeout = \"soon\"\ncolour = \"red\"\n"
    );
    reload(&c, &hook, &bad);
    logged(&c, REFUSED, 1).await;
    let log = c.log();
    for key in [
        "alert[1].name",
        "alert[1].type",
        "alert[1].timeout",
        "alert[1].colour",
    ] {
        assert!(log.contains(key), "{key} not logged:\n{log}");
    }
    assert!(
        !log.contains(RELOADED),
        "a refused file changes nothing:\n{log}"
    );

    // The old channel still delivers.
    assert_eq!(channel_names(&c.api()).await, ["tickets"]);
    assert_eq!(both_fail(&c, next_round()).await["verdict"], "down");
    assert_eq!(next_post(&mut posts).await["event"], "opened");
}
