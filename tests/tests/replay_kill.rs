//! A spool replay interrupted by `kill -9`, on either side (issue 15).
//!
//! A real coordinator and a real `mailloop-agent run`; the agent's spool is
//! filled with thousands of reports while it is down (as after a long
//! partition), then it replays them. Mid-replay the agent is killed, then
//! (with a fresh backlog) the coordinator. The ground truth is the
//! coordinator's own database, read after everything drained: every
//! spooled report is stored, once, and in spool order (oldest first: the
//! stored rows' arrival times never go down along the spool's order).

use mailloop_tests::Check;
use mailloop_tests::cluster::{Cluster, check_toml, wait_until};
use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

/// Reports per backlog: enough that a replay lasts well beyond one poll.
const BACKLOG: usize = 20_000;
const DEADLINE: Duration = Duration::from_secs(180);

fn report_json(id: &str, check: &str) -> String {
    let steps: Vec<serde_json::Value> = (0..21)
        .map(|i| serde_json::json!({"name": "smtp.connect", "ms": 0.5 + i as f64, "ok": true, "start_ms": i as f64, "detail": "replayed"}))
        .collect();
    serde_json::json!({
        "probe_id": id,
        "check": check,
        "started_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "outcome": "ok",
        "rtt_ms": 35.2,
        "delivery_ms": 20.3,
        "steps": steps,
        "failure": null,
        "message_id": format!("<{id}@sender.test>"),
        "queue_id": "93118BC5C0",
    })
    .to_string()
}

/// Appends `ids` to the (stopped) agent's spool as the agent itself would
/// have spooled them, in one transaction.
fn fill_spool(spool: &Path, check: &str, ids: &[String]) {
    let mut db = rusqlite::Connection::open(spool).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    let tx = db.transaction().unwrap();
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO reports (probe_id, check_id, revision, round, report_json, spooled_ms, request_id)
                 VALUES (?1, ?2, 1, ?3, ?4, 0, NULL)",
            )
            .unwrap();
        for (i, id) in ids.iter().enumerate() {
            insert.execute(rusqlite::params![id, check, i as i64 + 1, report_json(id, check)]).unwrap();
        }
    }
    tx.commit().unwrap();
}

fn spooled_of(spool: &Path, prefix: &str) -> usize {
    let db = rusqlite::Connection::open_with_flags(spool, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    db.query_row("SELECT count(*) FROM reports WHERE probe_id LIKE ?1", [format!("{prefix}%")], |r| r.get::<_, i64>(0))
        .unwrap() as usize
}

/// The coordinator's stored rows whose id starts with `prefix`: (probe id, received_at).
fn stored(c: &Cluster, prefix: &str) -> Vec<(String, i64)> {
    let path = c.coordinator.dir.join("data").join("coordinator.db");
    if !path.exists() {
        return Vec::new();
    }
    let db = rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut stmt = db.prepare("SELECT probe_id, received_at FROM reports WHERE probe_id LIKE ?1").unwrap();
    stmt.query_map([format!("{prefix}%")], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
}

/// Every id of `ids` is stored exactly once, and their arrival times never
/// go down along the spool's order (oldest first).
fn assert_ground_truth(c: &Cluster, prefix: &str, ids: &[String]) {
    let rows = stored(c, prefix);
    let unique: HashSet<&str> = rows.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(unique.len(), rows.len(), "a report stored twice");
    let missing: Vec<&String> = ids.iter().filter(|id| !unique.contains(id.as_str())).collect();
    assert!(missing.is_empty(), "{} of {} spooled reports never stored, first {:?}", missing.len(), ids.len(), missing.first());
    assert_eq!(rows.len(), ids.len(), "stored reports that were never spooled");
    let at: std::collections::HashMap<&str, i64> = rows.iter().map(|(id, t)| (id.as_str(), *t)).collect();
    for pair in ids.windows(2) {
        let (a, b) = (at[pair[0].as_str()], at[pair[1].as_str()]);
        assert!(a <= b, "{} (spooled first) arrived at {a}, after {} at {b}: not oldest first", pair[0], pair[1]);
    }
}

fn backlog(prefix: &str) -> Vec<String> {
    (0..BACKLOG).map(|i| format!("{prefix}{i:06}")).collect()
}

#[test]
fn a_replay_killed_on_either_side_stores_every_report_once_oldest_first() {
    let check = Check::new("replay-kill9");
    let id = check.name.clone();
    let mut c = Cluster::start_with_agents(&check_toml(&check, "1h", &["eu-west"]), &[("eu-1", "eu-west")]);
    let spool = c.agents[0].spool_path();

    // 1. The agent dies mid-replay.
    c.agents[0].kill9();
    let first = backlog("agent-side-");
    fill_spool(&spool, &id, &first);
    c.agents[0].launch(c.coordinator.grpc);
    wait_until(DEADLINE, "a quarter of the backlog stored", || (stored(&c, "agent-side-").len() >= BACKLOG / 4).then_some(()));
    c.agents[0].kill9();
    let left = spooled_of(&spool, "agent-side-");
    assert!(left > 0, "the replay ended before the kill; raise BACKLOG so the kill lands mid-replay");
    println!("agent killed with {left} of {BACKLOG} reports still spooled");
    c.agents[0].launch(c.coordinator.grpc);
    wait_until(DEADLINE, "the agent-side backlog drained", || (spooled_of(&spool, "agent-side-") == 0).then_some(()));
    assert_ground_truth(&c, "agent-side-", &first);

    // 2. The coordinator dies mid-replay.
    c.agents[0].kill9();
    let second = backlog("coordinator-side-");
    fill_spool(&spool, &id, &second);
    c.agents[0].launch(c.coordinator.grpc);
    wait_until(DEADLINE, "a quarter of the second backlog stored", || {
        (stored(&c, "coordinator-side-").len() >= BACKLOG / 4).then_some(())
    });
    c.coordinator.kill9();
    let left = spooled_of(&spool, "coordinator-side-");
    assert!(left > 0, "the replay ended before the kill; raise BACKLOG so the kill lands mid-replay");
    println!("coordinator killed with {left} of {BACKLOG} reports still spooled");
    c.coordinator.restart();
    wait_until(DEADLINE, "the coordinator-side backlog drained", || (spooled_of(&spool, "coordinator-side-") == 0).then_some(()));
    assert_ground_truth(&c, "coordinator-side-", &second);
    assert_ground_truth(&c, "agent-side-", &first);
}
