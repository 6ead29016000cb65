//! Hourly aggregates: kept longer than the raw reports, built as reports
//! are stored, served at `GET /api/v1/checks/{id}/aggregates`.

mod support;

use mailloop_coordinator::config::{CoordinatorConfig, DEFAULT_AGGREGATE_RETENTION};
use mailloop_coordinator::storage::{
    AggregateQuery, HOUR_MS, HourAggregate, ReportRow, Storage, hour_of,
};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;
use support::*;

/// A report of `check` with the given outcome and timings, started at `started_ms`.
fn report(
    probe_id: &str,
    check: &str,
    started_ms: i64,
    outcome: &str,
    rtt: Option<f64>,
    delivery: Option<f64>,
) -> String {
    let started = chrono::DateTime::from_timestamp_millis(started_ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let failure = (outcome == "failed").then(|| {
        json!({"step": "smtp.rcpt_to", "class": "permanent", "code": 550, "message": "no such user"})
    });
    json!({
        "probe_id": probe_id, "check": check, "started_at": started, "outcome": outcome,
        "rtt_ms": rtt, "delivery_ms": delivery, "steps": [], "failure": failure,
        "message_id": format!("<{probe_id}@sender.test>"), "queue_id": null,
    })
    .to_string()
}

fn row(probe_id: &str, started_ms: i64, received_ms: i64, rtt: f64) -> ReportRow {
    ReportRow {
        probe_id: probe_id.into(),
        check_id: "corp".into(),
        revision: 1,
        region: "eu-west".into(),
        agent: "eu-1".into(),
        round: 1,
        started_at_ms: started_ms,
        outcome: "ok".into(),
        rtt_ms: Some(rtt),
        delivery_ms: Some(rtt / 2.0),
        failure_step: None,
        failure_class: None,
        report_json: "{}".into(),
        received_at_ms: received_ms,
        request_id: None,
        out_of_window: None,
    }
}

async fn hours(s: &Storage) -> Vec<HourAggregate> {
    s.aggregates(AggregateQuery {
        check_id: "corp".into(),
        ..Default::default()
    })
    .await
    .unwrap()
}

/// What one hour of one region should say, computed from raw results.
#[derive(Debug, Default, PartialEq)]
struct Expected {
    ok: u64,
    degraded: u64,
    failed: u64,
    rtt: Vec<f64>,
    delivery: Vec<f64>,
}

#[tokio::test]
async fn rollups_match_the_raw_reports() {
    let c = Coordinator::start("", &check_toml("corp", &["eu-west", "us-east"], "1m"));
    let api = c.api();
    // Two hours back to back, two regions, every outcome, some reports without timings.
    let base = hour_of(chrono::Utc::now().timestamp_millis()) - 2 * HOUR_MS;
    let plan: [(&str, i64, &str, Option<f64>, Option<f64>); 8] = [
        ("eu-1", 60_000, "ok", Some(31.5), Some(20.0)),
        ("eu-1", 120_000, "ok", Some(48.0), Some(30.5)),
        ("eu-1", 180_000, "degraded", Some(1_800.0), Some(1_700.0)),
        ("eu-1", 240_000, "failed", None, None),
        ("eu-1", HOUR_MS + 5_000, "ok", Some(22.0), Some(11.0)),
        ("us-1", 60_000, "ok", Some(95.0), Some(60.0)),
        ("us-1", HOUR_MS - 1, "failed", Some(30_500.0), None),
        ("us-1", HOUR_MS, "ok", Some(70.0), Some(40.0)),
    ];
    for name in ["eu-1", "us-1"] {
        let mut agent = c.agent(name).await;
        register(&mut agent, name).await;
        let mut reports = Reports::open(&mut agent).await;
        for (i, (_, offset, outcome, rtt, delivery)) in
            plan.iter().enumerate().filter(|(_, p)| p.0 == name)
        {
            let id = format!("agg-{name}-{i}");
            let ack = reports
                .send(mailloop_proto::pb::ProbeResult {
                    probe_id: id.clone(),
                    check_id: "corp".into(),
                    revision: 1,
                    round: i as u64,
                    report_json: report(&id, "corp", base + offset, outcome, *rtt, *delivery),
                    ..Default::default()
                })
                .await;
            assert!(ack.stored, "{ack:?}");
        }
    }

    // The raw side, as the results API shows it.
    let mut expected: BTreeMap<(String, String), Expected> = BTreeMap::new();
    for r in results(&api, "corp").await {
        let started = chrono::DateTime::parse_from_rfc3339(r["started_at"].as_str().unwrap())
            .unwrap()
            .timestamp_millis();
        let hour = chrono::DateTime::from_timestamp_millis(hour_of(started))
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let e = expected
            .entry((r["region"].as_str().unwrap().to_string(), hour))
            .or_default();
        match r["outcome"].as_str().unwrap() {
            "ok" => e.ok += 1,
            "degraded" => e.degraded += 1,
            _ => e.failed += 1,
        }
        e.rtt.extend(r["rtt_ms"].as_f64());
        e.delivery.extend(r["delivery_ms"].as_f64());
    }
    assert_eq!(
        expected
            .values()
            .map(|e| e.ok + e.degraded + e.failed)
            .sum::<u64>(),
        8
    );

    let body = expect_ok(api.get("/api/v1/checks/corp/aggregates?since=1d").await);
    let got = body["aggregates"].as_array().unwrap();
    assert_eq!(
        got.len(),
        expected.len(),
        "one row per region and hour: {body:#}"
    );
    for a in got {
        let key = (
            a["region"].as_str().unwrap().to_string(),
            a["hour"].as_str().unwrap().to_string(),
        );
        let e = expected
            .get(&key)
            .unwrap_or_else(|| panic!("unexpected hour {key:?}: {body:#}"));
        assert_eq!(
            (
                a["ok"].as_u64(),
                a["degraded"].as_u64(),
                a["failed"].as_u64()
            ),
            (Some(e.ok), Some(e.degraded), Some(e.failed)),
            "{key:?}"
        );
        assert_eq!(a["reports"].as_u64(), Some(e.ok + e.degraded + e.failed));
        for (field, values) in [("rtt_ms", &e.rtt), ("delivery_ms", &e.delivery)] {
            let stats = &a[field];
            assert_eq!(
                stats["count"].as_u64(),
                Some(values.len() as u64),
                "{key:?} {field}"
            );
            let min = values.iter().copied().reduce(f64::min);
            let max = values.iter().copied().reduce(f64::max);
            let avg =
                (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64);
            assert_close(&stats["min"], min, &format!("{key:?} {field}.min"));
            assert_close(&stats["max"], max, &format!("{key:?} {field}.max"));
            assert_close(&stats["avg"], avg, &format!("{key:?} {field}.avg"));
        }
        for (field, values) in [("rtt_ms", &e.rtt), ("delivery_ms", &e.delivery)] {
            let buckets: u64 = a[field]["buckets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap())
                .sum();
            assert_eq!(
                buckets,
                values.len() as u64,
                "{key:?} {field}: every timed report is in one histogram bucket"
            );
        }
    }

    // Filters: one region; a `since` after the first hour.
    let us = expect_ok(
        api.get("/api/v1/checks/corp/aggregates?since=1d&region=us-east")
            .await,
    );
    let us = us["aggregates"].as_array().unwrap();
    assert_eq!(us.len(), 2);
    assert!(us.iter().all(|a| a["region"] == "us-east"));
    let since = chrono::DateTime::from_timestamp_millis(base + HOUR_MS)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let later = expect_ok(
        api.get(&format!("/api/v1/checks/corp/aggregates?since={since}"))
            .await,
    );
    assert_eq!(
        later["aggregates"].as_array().unwrap().len(),
        2,
        "{later:#}"
    );
    let missing = api.get("/api/v1/checks/nope/aggregates").await.unwrap();
    assert_eq!(missing.status, 404);
    let bad = api
        .get("/api/v1/checks/corp/aggregates?since=yesterday")
        .await
        .unwrap();
    assert_eq!(bad.status, 400);
}

fn assert_close(got: &Value, want: Option<f64>, what: &str) {
    match want {
        None => assert!(got.is_null(), "{what}: expected null, got {got}"),
        Some(w) => {
            let g = got
                .as_f64()
                .unwrap_or_else(|| panic!("{what}: expected {w}, got {got}"));
            assert!((g - w).abs() < 0.001, "{what}: expected {w}, got {g}");
        }
    }
}

#[tokio::test]
async fn a_replayed_report_is_counted_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(dir.path()).unwrap();
    s.insert_report(row("p1", 10 * HOUR_MS, 10 * HOUR_MS, 40.0))
        .await
        .unwrap();
    s.insert_report(row("p1", 10 * HOUR_MS, 11 * HOUR_MS, 40.0))
        .await
        .unwrap();
    let h = hours(&s).await;
    assert_eq!((h.len(), h[0].ok, h[0].rtt.count), (1, 1, 1));
}

#[tokio::test]
async fn pruning_raw_reports_leaves_the_aggregates() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(dir.path()).unwrap();
    for i in 0..6 {
        let t = 100 * HOUR_MS + i * HOUR_MS / 2;
        s.insert_report(row(&format!("p{i}"), t, t + 1_000, 10.0 * (i + 1) as f64))
            .await
            .unwrap();
    }
    let before = hours(&s).await;
    assert_eq!(before.len(), 3);
    assert_eq!(s.prune(200 * HOUR_MS).await.unwrap(), 6);
    assert_eq!(s.count_reports().await.unwrap(), 0);
    assert_eq!(
        hours(&s).await,
        before,
        "raw retention does not touch the aggregates"
    );
    assert_eq!(before[2].rtt.min_ms, Some(50.0));
    assert_eq!(before[2].rtt.max_ms, Some(60.0));
}

#[tokio::test]
async fn aggregates_older_than_their_retention_are_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(dir.path()).unwrap();
    for h in 0..5 {
        s.insert_report(row(
            &format!("p{h}"),
            h * HOUR_MS + 10,
            h * HOUR_MS + 20,
            25.0,
        ))
        .await
        .unwrap();
    }
    // The cutoff falls inside hour 3: hours 0..=2 ended before it, hour 3 did not.
    assert_eq!(s.prune_aggregates(3 * HOUR_MS + 1).await.unwrap(), 3);
    let left: Vec<i64> = hours(&s).await.iter().map(|a| a.hour_ms).collect();
    assert_eq!(left, [3 * HOUR_MS, 4 * HOUR_MS]);
    assert_eq!(
        s.count_reports().await.unwrap(),
        5,
        "aggregate retention does not touch reports"
    );
}

#[tokio::test]
async fn reports_stored_before_aggregates_existed_are_rolled_up_once() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Storage::open(dir.path()).unwrap();
        s.insert_report(row("p1", 5 * HOUR_MS, 5 * HOUR_MS, 30.0))
            .await
            .unwrap();
        s.insert_report(row("p2", 6 * HOUR_MS, 6 * HOUR_MS, 50.0))
            .await
            .unwrap();
        s.close().await;
    }
    // A database from before the rollup existed: reports, no aggregate table.
    let conn = rusqlite::Connection::open(dir.path().join("coordinator.db")).unwrap();
    conn.execute_batch("DROP TABLE report_hours").unwrap();
    drop(conn);
    let s = Storage::open(dir.path()).unwrap();
    let h = hours(&s).await;
    assert_eq!(
        h.iter().map(|a| (a.hour_ms, a.ok)).collect::<Vec<_>>(),
        [(5 * HOUR_MS, 1), (6 * HOUR_MS, 1)]
    );
    s.close().await;
    let s = Storage::open(dir.path()).unwrap();
    assert_eq!(hours(&s).await, h, "a second open does not roll up again");
}

#[test]
fn aggregate_retention_is_validated_with_retention() {
    let config = |server: Value| {
        let mut server = server;
        server["data_dir"] = json!("/tmp/mailloop-test-nonexistent");
        server["admin_token_env"] = json!("ADMIN");
        CoordinatorConfig::from_value(&json!({"server": server}), &|name| {
            (name == "ADMIN").then(|| "admin-token-0123456789".into())
        })
    };
    let issues = |server: Value| -> Vec<(String, String)> {
        config(server)
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|i| (i.path, i.message))
            .collect()
    };
    assert_eq!(
        config(json!({})).unwrap().server.aggregate_retention,
        DEFAULT_AGGREGATE_RETENTION
    );
    assert_eq!(
        DEFAULT_AGGREGATE_RETENTION,
        Duration::from_secs(400 * 86_400)
    );
    assert_eq!(
        config(json!({"aggregate_retention": "2y"}))
            .unwrap()
            .server
            .aggregate_retention,
        humantime::parse_duration("2y").unwrap()
    );
    // Every bad key at once, with its path.
    let bad = issues(json!({"aggregate_retention": "forever", "retention": "soon"}));
    assert_eq!(
        bad.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
        ["server.retention", "server.aggregate_retention"]
    );
    assert_eq!(
        issues(json!({"aggregate_retention": "10m"}))[0].0,
        "server.aggregate_retention"
    );
    let shorter = issues(json!({"retention": "90d", "aggregate_retention": "60d"}));
    assert_eq!(shorter.len(), 1);
    assert_eq!(shorter[0].0, "server.aggregate_retention");
    assert!(
        shorter[0].1.contains("shorter than retention"),
        "{shorter:?}"
    );
    assert!(issues(json!({"retention": "90d", "aggregate_retention": "90d"})).is_empty());
}

/// Verdicts feed the status page's 90-day uptime: kept 90 days unless the
/// reports are kept longer (then as long as them), never shorter.
#[test]
fn verdicts_are_kept_ninety_days_or_as_long_as_reports() {
    let config = |server: Value| {
        let mut server = server;
        server["data_dir"] = json!("/tmp/mailloop-test-nonexistent");
        server["admin_token_env"] = json!("ADMIN");
        CoordinatorConfig::from_value(&json!({"server": server}), &|name| {
            (name == "ADMIN").then(|| "admin-token-0123456789".into())
        })
    };
    let kept = |server: Value| config(server).unwrap().server.verdict_retention;
    let days = |n: u64| Duration::from_secs(n * 86_400);
    assert_eq!(kept(json!({})), days(90));
    assert_eq!(kept(json!({"retention": "7d"})), days(90));
    assert_eq!(kept(json!({"retention": "120d"})), days(120));
    assert_eq!(kept(json!({"verdict_retention": "1y"})), humantime::parse_duration("1y").unwrap());
    let issues: Vec<String> = config(json!({"retention": "60d", "verdict_retention": "30d", "colour": 1}))
        .err()
        .unwrap()
        .into_iter()
        .map(|i| format!("{}: {}", i.path, i.message))
        .collect();
    assert_eq!(issues.len(), 2, "{issues:?}");
    assert!(issues.iter().any(|i| i.starts_with("server.verdict_retention: ") && i.contains("shorter than retention")), "{issues:?}");
}
