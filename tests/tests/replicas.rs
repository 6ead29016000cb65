//! Several coordinator replicas on one real PostgreSQL (issue 13), with real
//! processes on the real mail stack: three regions' agents, each given every
//! replica in `coordinator_urls`, and two `mailloop-coordinator serve`
//! sharing one database of the throwaway server in `mailloop_tests::postgres`.
//!
//! - A check made through one replica reaches the agents connected to the
//!   other, and is judged.
//! - A replica killed with `kill -9`: its agents fail over to the other, and
//!   every probe they ran is stored exactly once (counted by probe id in the
//!   database itself, against the agents' own probe logs).
//! - The leader killed with `kill -9`: the other replica becomes leader
//!   (`/readyz`), verdicts continue, and the outage that was open across
//!   the failover is paged once when it opens and once when it resolves.
//!
//! Nothing sleeps to synchronise and nothing asserts a duration: every wait
//! polls a condition against a generous deadline. How fast a failover is
//! belongs to `make bench`.

use mailloop_tests::Check;
use mailloop_tests::cluster::{Coordinator, check_toml, http_get, http_get_as, http_get_within, wait_until};
use mailloop_tests::postgres::Postgres;
use mailloop_tests::regions::{PathMode, REGIONS, RegionCluster, Settings, describe, now_ms};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// Anything a loaded 2-core machine can only delay.
const DEADLINE: Duration = Duration::from_secs(120);

/// Two replicas on a database of their own.
fn two_replicas(test: &str) -> (Settings, String) {
    let url = Postgres::get().database(test);
    let db = url.rsplit('/').next().unwrap().split('?').next().unwrap().to_string();
    let mut s = Settings::new();
    s.storage_url = Some(url);
    s.replicas = 2;
    (s, db)
}

/// `/readyz`: (status, role), None while it does not answer.
fn readyz(c: &Coordinator) -> Option<(u16, String)> {
    let (status, body) = http_get(c.http, "/readyz").ok()?;
    Some((status, body["role"].as_str().unwrap_or_default().to_string()))
}

/// Stored rows per probe id of `check`, read from PostgreSQL itself.
fn stored_per_probe(db: &str, check: &str) -> HashMap<String, u64> {
    stored_per_probe_on(Postgres::get(), db, check)
}

/// [`stored_per_probe`] on another server than the binary's shared one.
fn stored_per_probe_on(pg: &Postgres, db: &str, check: &str) -> HashMap<String, u64> {
    let out = pg.psql(db, &format!("SELECT probe_id || ' ' || count(*) FROM reports WHERE check_id = '{check}' GROUP BY probe_id"));
    out.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (id, n) = l.rsplit_once(' ').unwrap();
            (id.to_string(), n.parse().unwrap())
        })
        .collect()
}

/// Rounds whose probes started at or after `since_ms` (the agents' own
/// clock, from their probe logs) and are stored from every region.
fn rounds_from_all_since(c: &RegionCluster, db: &str, since_ms: i64) -> usize {
    rounds_from_all_since_on(Postgres::get(), c, db, since_ms)
}

/// [`rounds_from_all_since`] on another server than the binary's shared one.
fn rounds_from_all_since_on(pg: &Postgres, c: &RegionCluster, db: &str, since_ms: i64) -> usize {
    let stored = stored_per_probe_on(pg, db, &c.check_id);
    let mut by_round: HashMap<u64, HashSet<String>> = HashMap::new();
    for (probe, region, round, started_ms) in c.probe_log() {
        if started_ms >= since_ms && stored.contains_key(&probe) {
            by_round.entry(round).or_default().insert(region);
        }
    }
    by_round.values().filter(|regions| regions.len() == REGIONS.len()).count()
}

#[test]
fn agents_fail_over_to_the_next_replica_and_no_report_is_lost_or_stored_twice() {
    let (mut settings, db) = two_replicas("failover");
    // The agents talk to the second replica; the first (which starts first,
    // so most often leads) judges reports another replica ingested.
    settings.agents_on = 1;
    let check = Check::new("replica-failover");
    let mut c = RegionCluster::start(&check, &settings);
    let id = c.check_id.clone();

    // Reports ingested by the second replica are read through the first: one database.
    wait_until(DEADLINE, "two rounds from every region, read through the first replica", || {
        let mut by_round: HashMap<u64, usize> = HashMap::new();
        for r in c.coordinator.results(&id) {
            *by_round.entry(r["round"].as_u64().unwrap_or(0)).or_default() += 1;
        }
        (by_round.values().filter(|n| **n >= REGIONS.len()).count() >= 2).then_some(())
    });

    // A check created through the first replica reaches the agents
    // connected to the second, and the leader (whichever it is) judges it.
    let added = Check::new("replica-added");
    let added_id = added.name.clone();
    let file = c.dir.path().join("added.toml");
    std::fs::write(&file, check_toml(&added, "2s", &REGIONS)).unwrap();
    let (code, out, err) = c.coordinator.ctl(&["checks", "apply", "-f", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    wait_until(DEADLINE, "every agent (on the second replica) assigned the check made through the first", || {
        let line = format!("assignment added: check {added_id} ");
        c.regions.iter().all(|r| std::fs::read_to_string(&r.log).unwrap_or_default().contains(&line)).then_some(())
    });
    wait_until(DEADLINE, "a verdict of the check made through the first replica", || {
        let (status, body) = c.coordinator.get(&format!("/api/v1/verdicts?check={added_id}"));
        (status == 200 && body["verdicts"].as_array().is_some_and(|v| !v.is_empty())).then_some(())
    });

    let first = c.coordinator.grpc;
    let killed_ms = now_ms();
    c.kill9_coordinator(1);

    // Every agent moves to the first replica...
    wait_until(DEADLINE, "every agent connected to the first replica", || {
        let line = format!("connected to the coordinator at http://{first}");
        c.regions.iter().all(|r| std::fs::read_to_string(&r.log).unwrap_or_default().contains(&line)).then_some(())
    });
    // ...and its reports go on being stored: three rounds probed after the kill, every region.
    wait_until(DEADLINE, "three rounds probed after the kill stored from every region", || {
        (rounds_from_all_since(&c, &db, killed_ms) >= 3).then_some(())
    });

    // None lost, none twice: every probe the agents ran (their own log) is in
    // the database once, and every stored probe is one an agent ran, once per
    // round and region.
    let (ran, _) = all_stored_once(&c, || stored_per_probe(&db, &id));
    assert!(!ran.is_empty());
    once_per_round(&c, stored_per_probe(&db, &id).keys());
    let (rows, distinct) = {
        let out = Postgres::get().psql(&db, &format!("SELECT count(*) || ' ' || count(DISTINCT probe_id) FROM reports WHERE check_id = '{id}'"));
        let (a, b) = out.split_once(' ').unwrap();
        (a.parse::<u64>().unwrap(), b.parse::<u64>().unwrap())
    };
    assert_eq!(rows, distinct);
    eprintln!("{} probes run, {rows} stored, 0 lost, 0 twice, across a kill -9 of the replica the agents talked to", ran.len());
}

#[test]
fn the_leader_dies_another_replica_leads_verdicts_go_on_and_each_transition_is_paged_once() {
    let (settings, _db) = two_replicas("leader");
    let check = Check::new("replica-leader");
    let mut c = RegionCluster::start(&check, &settings);

    // Exactly one leader, the other a follower; both ready.
    let leader = wait_until(DEADLINE, "one leader and one follower on /readyz", || {
        let roles = [readyz(&c.coordinator)?, readyz(&c.others[0])?];
        match (&roles[0], &roles[1]) {
            ((200, a), (200, b)) if a == "leader" && b == "follower" => Some(0),
            ((200, a), (200, b)) if a == "follower" && b == "leader" => Some(1),
            _ => None,
        }
    });
    // The stack is healthy before the cut: the outage below is the cut's.
    wait_until(DEADLINE, "an up verdict from the leader", || c.verdicts().iter().any(|v| v["verdict"] == "up").then_some(()));

    // An outage, opened and paged by the leader.
    c.cut_all();
    let opened = wait_until(DEADLINE, "the outage paged as opened", || {
        c.pager.hits().into_iter().find(|h| h.body["event"] == "opened" && h.body["incident"]["kind"] == "outage")
    });
    let incident = opened.body["incident"]["id"].clone();

    // kill -9 the leader mid-outage: the other replica takes over.
    let killed_ms = now_ms();
    let killed = std::time::Instant::now();
    c.kill9_coordinator(leader);
    wait_until(DEADLINE, "the surviving replica to lead", || {
        (readyz(&c.coordinator) == Some((200, "leader".to_string()))).then_some(())
    });
    let to_lead = killed.elapsed();

    // The new leader judges the outage on (down rounds that started after
    // the kill) without paging it again...
    wait_until(DEADLINE, "a down round after the kill, judged by the new leader", || {
        c.verdicts_since(killed_ms).iter().any(|v| v["verdict"] == "down").then_some(())
    });
    // Printed, never asserted: timing belongs to `make bench`.
    eprintln!(
        "leader {leader} killed: the other led after {:.1} s (seen on /readyz), judged its first round after {:.1} s",
        to_lead.as_secs_f64(),
        killed.elapsed().as_secs_f64()
    );
    // ...and the recovery resolves the same incident.
    c.restore_all();
    wait_until(Duration::from_secs(180), "the outage paged as resolved", || {
        c.pager.hits().into_iter().find(|h| h.body["event"] == "resolved" && h.body["incident"]["id"] == incident)
    });
    let after = c.verdicts_since(killed_ms);
    assert!(after.iter().any(|v| v["verdict"] == "down"), "down rounds judged after the kill:\n{}", describe(&after));
    assert!(after.iter().any(|v| v["verdict"] == "up"), "up rounds judged after the kill:\n{}", describe(&after));

    // Each transition paged once, across the failover; one outage, no duplicate.
    let pages: Vec<String> =
        c.pager.hits().iter().map(|h| format!("{} {}", h.body["event"].as_str().unwrap_or("?"), h.body["incident"]["id"])).collect();
    for event in ["opened", "resolved"] {
        let n = pages.iter().filter(|p| **p == format!("{event} {incident}")).count();
        assert_eq!(n, 1, "{event} paged {n} times: {pages:?}");
    }
    let outages: Vec<serde_json::Value> = c.all_incidents().into_iter().filter(|i| i["kind"] == "outage").collect();
    assert_eq!(outages.len(), 1, "one outage across the failover: {outages:#?}");
    assert_eq!(outages[0]["state"], "resolved");
    eprintln!("verdicts after the kill:\n{}", describe(&after));
}

/// Ground truth against the agents' own probe logs: waits until every
/// probe they ran is stored (`stored_now`: rows per probe id), and asserts
/// none is stored twice. Returns what ran and what is stored.
fn all_stored_once(
    c: &RegionCluster,
    stored_now: impl Fn() -> HashMap<String, u64>,
) -> (Vec<(String, String, u64, i64)>, HashMap<String, u64>) {
    let ran = c.probe_log();
    let stored = wait_until(DEADLINE, "every probe the agents ran stored", || {
        let stored = stored_now();
        ran.iter().all(|(probe, ..)| stored.contains_key(probe)).then_some(stored)
    });
    let twice: Vec<(&String, &u64)> = stored.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "probes stored more than once: {twice:?}");
    (ran, stored)
}

/// Every stored probe is one an agent ran, once per (region, round).
fn once_per_round<'a>(c: &RegionCluster, stored: impl Iterator<Item = &'a String>) {
    let ran: HashMap<String, (String, u64)> = c.probe_log().into_iter().map(|(p, region, round, _)| (p, (region, round))).collect();
    let mut slots = HashSet::new();
    for probe in stored {
        let (region, round) = ran.get(probe).unwrap_or_else(|| panic!("stored probe {probe} is in no agent's probe log"));
        assert!(slots.insert((region.clone(), *round)), "round {round} ran twice in {region}");
    }
}

/// Waits until each replica shows every agent connected and running the
/// check once (the rendezvous over a region's live agents, computed alike
/// on both), and the agents really are spread: r2's agent names the second
/// replica in its own log.
fn wait_spread(c: &RegionCluster) {
    let all_live: Vec<(String, bool, u64)> = REGIONS.iter().map(|r| (format!("agent-{r}"), true, 1)).collect();
    for replica in [&c.coordinator, &c.others[0]] {
        wait_until(DEADLINE, "every agent connected and assigned once, on each replica", || {
            (agents_seen(replica) == all_live).then_some(())
        });
    }
    let second = c.others[0].grpc;
    wait_until(DEADLINE, "r2's agent connected to the second replica", || {
        let line = format!("connected to the coordinator at http://{second}");
        std::fs::read_to_string(&c.region("r2").log).unwrap_or_default().contains(&line).then_some(())
    });
}

/// `(name, connected, assigned)` of every agent, as replica `c` shows them.
fn agents_seen(c: &Coordinator) -> Vec<(String, bool, u64)> {
    let (status, body) = c.get("/api/v1/agents");
    if status != 200 {
        return Vec::new();
    }
    let mut out: Vec<(String, bool, u64)> = body["agents"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|a| (a["name"].as_str().unwrap_or_default().to_string(), a["connected"] == true, a["assigned_checks"].as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[test]
fn agents_spread_over_replicas_are_live_and_assigned_alike_on_every_replica_and_the_judge_counts_them() {
    let (mut settings, _db) = two_replicas("spread");
    // r1 and r3 talk to the first replica, r2 to the second: whichever
    // leads judges a region whose agent is on the other replica.
    settings.spread = true;
    let check = Check::new("replica-spread");
    let mut c = RegionCluster::start(&check, &settings);

    wait_spread(&c);

    // The leader counts every region's agent as connected when it judges,
    // including the region whose agent talks to the other replica (before
    // agents were shared, that region was unwatched, then counted 0).
    let watched = wait_until(DEADLINE, "three verdicts with every region's connected agents counted", || {
        let v: Vec<serde_json::Value> = c
            .verdicts()
            .into_iter()
            .filter(|v| v["regions"].as_array().is_some_and(|rs| rs.len() == REGIONS.len() && rs.iter().all(|r| !r["agents_connected"].is_null())))
            .collect();
        (v.len() >= 3).then_some(v)
    });
    for v in &watched {
        for r in v["regions"].as_array().unwrap() {
            assert_eq!(r["agents_connected"], 1, "region {} of round {}: {v}", r["region"], v["round"]);
        }
    }
    assert!(c.incidents("kind=coverage").is_empty(), "no coverage incident: {:#?}", c.incidents("kind=coverage"));

    // r2's agent gone (killed on the second replica): both replicas see it
    // disconnected, and its check is nobody's in r2.
    c.kill_agent("r2");
    for replica in [&c.coordinator, &c.others[0]] {
        wait_until(DEADLINE, "r2's agent disconnected on each replica", || {
            agents_seen(replica).iter().any(|(n, connected, assigned)| n == "agent-r2" && !connected && *assigned == 0).then_some(())
        });
    }
}

#[test]
fn an_alert_the_dead_leader_had_not_delivered_is_sent_once_by_the_next_leader() {
    let (settings, db) = two_replicas("outbox");
    let check = Check::new("replica-outbox");
    let mut c = RegionCluster::start(&check, &settings);
    let leader = wait_until(DEADLINE, "one leader and one follower on /readyz", || {
        match (readyz(&c.coordinator)?, readyz(&c.others[0])?) {
            ((200, a), (200, b)) if a == "leader" && b == "follower" => Some(0),
            ((200, a), (200, b)) if a == "follower" && b == "leader" => Some(1),
            _ => None,
        }
    });
    wait_until(DEADLINE, "an up verdict from the leader", || c.verdicts().iter().any(|v| v["verdict"] == "up").then_some(()));

    // The pager refuses (503, worth a retry): the leader opens the outage,
    // records its alert with the transition, and is still retrying it...
    c.pager.refuse(true);
    c.cut_all();
    let refused = wait_until(DEADLINE, "the outage's opening offered to the pager (and refused)", || {
        c.pager.hits().into_iter().find(|h| h.body["event"] == "opened" && h.body["incident"]["kind"] == "outage")
    });
    let incident = refused.body["incident"]["id"].clone();
    // ...when it dies: kill -9, nothing sent after this.
    c.kill9_coordinator(leader);
    let owed = Postgres::get().psql(&db, &format!("SELECT count(*) FROM alert_outbox WHERE incident_id = {incident} AND event = 'opened' AND delivered_at IS NULL"));
    assert_eq!(owed, "1", "the opening's alert is recorded undelivered");
    c.pager.refuse(false);

    // The next leader sends what the dead one owed, once.
    wait_until(DEADLINE, "the surviving replica to lead", || {
        (readyz(&c.coordinator) == Some((200, "leader".to_string()))).then_some(())
    });
    wait_until(DEADLINE, "the outage's opening delivered by the new leader", || {
        c.pager.delivered().into_iter().find(|h| h.body["event"] == "opened" && h.body["incident"]["id"] == incident)
    });
    wait_until(DEADLINE, "the alert marked delivered", || {
        let n = Postgres::get().psql(&db, &format!("SELECT count(*) FROM alert_outbox WHERE incident_id = {incident} AND event = 'opened' AND delivered_at IS NOT NULL"));
        (n == "1").then_some(())
    });
    c.restore_all();
    wait_until(Duration::from_secs(180), "the outage paged as resolved", || {
        c.pager.delivered().into_iter().find(|h| h.body["event"] == "resolved" && h.body["incident"]["id"] == incident)
    });
    let delivered: Vec<String> = c
        .pager
        .delivered()
        .iter()
        .map(|h| format!("{} {}", h.body["event"].as_str().unwrap_or("?"), h.body["incident"]["id"]))
        .collect();
    for event in ["opened", "resolved"] {
        let n = delivered.iter().filter(|p| **p == format!("{event} {incident}")).count();
        assert_eq!(n, 1, "{event} delivered {n} times: {delivered:?}");
    }
    eprintln!(
        "pager: {} POST(s) refused before the kill, {} delivered after: {delivered:?}",
        c.pager.hits().iter().filter(|h| !h.accepted).count(),
        delivered.len()
    );
}

#[test]
fn an_api_token_made_or_revoked_through_one_replica_is_in_force_on_the_other() {
    let (settings, _db) = two_replicas("tokens");
    let check = Check::new("replica-tokens");
    let c = RegionCluster::start(&check, &settings);
    let (first, second) = (&c.coordinator, &c.others[0]);
    let file = c.dir.path().join("dashboard.token");
    let (code, out, err) = first.ctl(&["tokens", "add", "dashboard", "--role", "read", "--out", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let token = std::fs::read_to_string(&file).unwrap().trim().to_string();
    assert!(!token.is_empty());
    let status = |at: &Coordinator| http_get_as(at.http, "/api/v1/checks", &token).map(|(s, _)| s).ok();

    // Made through the first: the second accepts it (and lists it).
    wait_until(DEADLINE, "the token made through the first replica accepted by the second", || (status(second) == Some(200)).then_some(()));
    assert_eq!(status(first), Some(200));
    let listed = second.get_ok("/api/v1/tokens");
    assert!(listed["tokens"].as_array().unwrap().iter().any(|t| t["name"] == "dashboard"), "{listed}");

    // Revoked through the second: the first refuses it.
    let (code, out, err) = second.ctl(&["tokens", "revoke", "dashboard"]);
    assert_eq!(code, 0, "{out}{err}");
    wait_until(DEADLINE, "the token revoked through the second replica refused by the first", || (status(first) == Some(401)).then_some(()));
    assert_eq!(status(second), Some(401));
}

/// `agents rotate` through one replica while the agent is connected to the
/// other: only the token's hash is shared, so the agent's replica makes a
/// fresh token (a conditional write) when the rotation reaches it, and
/// delivers that over the stream; the old token then works on neither
/// replica after its grace, the new one on both.
#[test]
fn a_token_rotated_through_one_replica_reaches_the_agent_on_the_other() {
    let (settings, _db) = two_replicas("rotate");
    let check = Check::new("replica-rotate");
    let c = RegionCluster::start(&check, &settings);
    let (first, second) = (&c.coordinator, &c.others[0]);
    let vm = c.dir.path().join("rot-vm");

    // Added and enrolled through the first replica (the join token sends
    // the agent there), in a region of its own: its stream is what counts.
    let (code, out, err) = first.ctl(&["agents", "add", "rot-x", "--region", "rot-region"]);
    assert_eq!(code, 0, "{out}{err}");
    let join = out.trim().strip_prefix("mailloop-agent enroll '").and_then(|t| t.strip_suffix('\'')).unwrap_or_else(|| panic!("{out}"));
    let enrolled = std::process::Command::new(mailloop_tests::cluster::bin("mailloop-agent"))
        .args(["enroll", join, "--config"])
        .arg(vm.join("agent.toml"))
        .arg("--spool")
        .arg(vm.join("spool.db"))
        .output()
        .unwrap();
    assert!(enrolled.status.success(), "{}", String::from_utf8_lossy(&enrolled.stderr));
    let old = std::fs::read_to_string(vm.join("agent.token")).unwrap().trim().to_string();
    let log = vm.join("agent.log");
    let _agent = mailloop_tests::cluster::Proc::new(mailloop_tests::cluster::spawn_agent_run(&vm.join("agent.toml"), &log, "debug"));
    let connected = |at: &Coordinator| {
        let body = at.get_ok("/api/v1/agents");
        body["agents"].as_array().unwrap().iter().any(|a| a["name"] == "rot-x" && a["connected"] == true)
    };
    wait_until(DEADLINE, "rot-x connected (seen from both replicas)", || (connected(first) && connected(second)).then_some(()));

    // Rotated through the second replica, which holds the new token; the
    // agent's stream is on the first, which does not.
    let (code, out, err) = second.ctl(&["agents", "rotate", "rot-x", "--grace", "15s"]);
    assert_eq!(code, 0, "{out}{err}");
    wait_until(DEADLINE, "the agent to pick up a token over its stream to the first replica", || {
        std::fs::read_to_string(&log).ok()?.contains("reconnecting with the new one").then_some(())
    });
    let first_log = std::fs::read_to_string(first.log_path()).unwrap();
    assert!(first_log.contains("rotated token made again here"), "the first replica made the token it delivered");
    let new: String = rusqlite::Connection::open(vm.join("spool.db"))
        .unwrap()
        .query_row("SELECT token FROM credential", [], |r| r.get(0))
        .unwrap();
    assert!(new.starts_with("mlt_") && new != old);

    // An agent's token is 403 on the admin API, an unknown one 401.
    let answer = |at: &Coordinator, token: &str| http_get_as(at.http, "/api/v1/agents", token).map(|(s, _)| s).ok();
    wait_until(DEADLINE, "the new token known to both replicas", || {
        (answer(first, &new) == Some(403) && answer(second, &new) == Some(403)).then_some(())
    });
    wait_until(DEADLINE, "the old token refused by both replicas after its grace", || {
        (answer(first, &old) == Some(401) && answer(second, &old) == Some(401)).then_some(())
    });
    let dead_at = now_ms();
    wait_until(DEADLINE, "rot-x seen connected after the old token died", || {
        let body = first.get_ok("/api/v1/agents/rot-x");
        let seen = body["last_seen"].as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())?;
        (body["connected"] == true && seen.timestamp_millis() > dead_at).then_some(())
    });
    for at in [first, second] {
        let text = std::fs::read_to_string(at.log_path()).unwrap();
        assert!(!text.contains(&new) && !text.contains(&old), "no token in a replica's log");
    }
}

/// The leader cut off from the database (a TCP proxy between it and
/// PostgreSQL that the test closes: every connection dropped, new ones
/// refused). It says so on `/readyz` (503, `cut_off`), gives up leadership
/// (the other replica leads), ends its agents' streams and takes no
/// report, so the agents move to the other replica, whose stores go on:
/// every probe the agents ran is stored exactly once. When the database
/// comes back it is a ready follower again, and after the other replica
/// is killed it leads and stores on its own (its pool recovered).
#[test]
fn a_replica_cut_off_from_the_database_stops_acking_gives_up_leading_and_recovers() {
    cut_off_replica(PathMode::Cut);
}

/// The same, with a database that goes silent instead of refusing: the
/// proxy stops forwarding and closes nothing, so the replica's open
/// connections (its leadership session, its pool's) hang rather than
/// fail, and PostgreSQL keeps its leadership session (lock and all)
/// open. It still turns cut off, the other replica leads (it ends the
/// silent leader's idle session), API reads are answered (an error), and
/// it recovers once the path is back.
#[test]
fn a_replica_whose_database_goes_silent_is_cut_off_answers_and_recovers() {
    cut_off_replica(PathMode::Stall);
}

fn cut_off_replica(mode: PathMode) {
    let pg = Postgres::get();
    let url = pg.database(&format!("cutoff{mode:?}"));
    let db = url.rsplit('/').next().unwrap().split('?').next().unwrap().to_string();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let proxy = mailloop_tests::regions::Proxy::start(runtime.handle(), format!("127.0.0.1:{}", pg.port()).parse().unwrap());
    let mut settings = Settings::new();
    settings.storage_url = Some(url.clone());
    settings.replicas = 2;
    // The first replica (started first: it leads) reaches PostgreSQL through the proxy; the agents talk to it.
    settings.replica_storage_url = Some((0, format!("postgres://mailloop@{}/{db}?sslmode=disable", proxy.addr())));
    let check = Check::new(&format!("replica-cutoff-{}", format!("{mode:?}").to_lowercase()));
    let mut c = RegionCluster::start(&check, &settings);
    let id = c.check_id.clone();
    wait_until(DEADLINE, "the proxied replica leads, the other follows", || {
        (readyz(&c.coordinator)? == (200, "leader".into()) && readyz(&c.others[0])? == (200, "follower".into())).then_some(())
    });
    wait_until(DEADLINE, "two rounds stored from every region", || (rounds_from_all_since(&c, &db, 0) >= 2).then_some(()));

    let cut_ms = now_ms();
    let cut = std::time::Instant::now();
    proxy.set(mode);
    let body = wait_until(DEADLINE, "/readyz of the cut-off replica: 503, cut_off", || {
        let (status, body) = http_get(c.coordinator.http, "/readyz").ok()?;
        (status == 503 && body["role"] == "cut_off").then_some(body)
    });
    assert!(body["status"].as_str().unwrap_or_default().contains("database"), "a reason: {body}");
    // A read that needs the database is answered, with an error, however
    // the database went away (the client waits as long as a test would).
    let (status, answer) = http_get_within(c.coordinator.http, &format!("/api/v1/results?check={id}"), DEADLINE)
        .unwrap_or_else(|e| panic!("the cut-off replica left a read unanswered ({mode:?}): {e}"));
    assert!(status >= 500, "a read on the cut-off replica ({mode:?}): {status} {answer}");
    // Answered by the storage's own bound, not cut short by the API's
    // request timeout while the read still hangs behind it.
    assert!(
        !answer["error"].as_str().unwrap_or_default().contains("http_request_timeout"),
        "a read on the cut-off replica hung until the API gave up ({mode:?}): {answer}"
    );
    eprintln!("a read on the cut-off replica ({mode:?}): {status} {answer}");
    wait_until(DEADLINE, "the other replica leads", || (readyz(&c.others[0])? == (200, "leader".into())).then_some(()));
    let led = cut.elapsed();
    let second = c.others[0].grpc;
    wait_until(DEADLINE, "every agent moved to the other replica", || {
        let line = format!("connected to the coordinator at http://{second}");
        c.regions.iter().all(|r| std::fs::read_to_string(&r.log).unwrap_or_default().contains(&line)).then_some(())
    });
    wait_until(DEADLINE, "three rounds probed after the cut stored from every region", || {
        (rounds_from_all_since(&c, &db, cut_ms) >= 3).then_some(())
    });
    wait_until(DEADLINE, "verdicts of rounds after the cut (the new leader judges)", || {
        c.others[0].get_ok(&format!("/api/v1/verdicts?check={id}"))["verdicts"]
            .as_array()?
            .iter()
            .any(|v| v["round_start_ms"].as_i64().unwrap_or(0) >= cut_ms)
            .then_some(())
    });
    // Still cut off: still not ready.
    assert_eq!(readyz(&c.coordinator).map(|r| r.1), Some("cut_off".to_string()));
    eprintln!("cut off at {cut_ms}: the other replica led after {:.1} s (seen on /readyz)", led.as_secs_f64());

    // The database back: a ready follower.
    proxy.restore();
    wait_until(DEADLINE, "the recovered replica ready again, as a follower", || {
        (readyz(&c.coordinator)? == (200, "follower".into())).then_some(())
    });
    // The other replica killed: the recovered one leads and stores.
    let killed_ms = now_ms();
    c.kill9_coordinator(1);
    wait_until(DEADLINE, "the recovered replica leads", || (readyz(&c.coordinator)? == (200, "leader".into())).then_some(()));
    wait_until(DEADLINE, "three rounds probed after the kill stored from every region", || {
        (rounds_from_all_since(&c, &db, killed_ms) >= 3).then_some(())
    });

    // Ground truth: every probe the agents ran is stored, each once.
    let (ran, stored) = all_stored_once(&c, || stored_per_probe(&db, &id));
    eprintln!("{} probes run, {} stored, 0 lost, 0 twice, across a cut of the leader's database connection", ran.len(), stored.len());
    drop(c);
    drop(proxy);
}

/// `mailloopctl probe` through either replica runs in every region,
/// including the regions whose agents are connected to the other replica:
/// the order is announced through the database (`NOTIFY mailloop_runs`)
/// and the other replica sends it on its agents' streams. Each region's
/// report of the run is stored once, with the run's request id.
#[test]
fn an_on_demand_run_reaches_the_agents_connected_to_another_replica() {
    let (mut settings, db) = two_replicas("ondemand");
    // r1 and r3 talk to the first replica, r2 to the second.
    settings.spread = true;
    settings.interval = "30s".into();
    let check = Check::new("replica-ondemand");
    let c = RegionCluster::start(&check, &settings);
    let id = c.check_id.clone();
    wait_spread(&c);
    for (through, name) in [(&c.coordinator, "first"), (&c.others[0], "second")] {
        let (code, out, err) = through.ctl(&["probe", &id, "--timeout", "120s"]);
        assert_eq!(code, 0, "probe through the {name} replica:\n{out}{err}");
        for r in REGIONS {
            assert!(out.contains(&format!("{r}=ok")), "probe through the {name} replica: {r} not ok:\n{out}");
        }
        let request = out
            .split_whitespace()
            .find(|w| w.starts_with("run-"))
            .unwrap_or_else(|| panic!("no request id in:\n{out}"))
            .to_string();
        let per_region = Postgres::get().psql(&db, &format!("SELECT region || ' ' || count(*) FROM reports WHERE request_id = '{request}' GROUP BY region ORDER BY region"));
        let want: Vec<String> = REGIONS.iter().map(|r| format!("{r} 1")).collect();
        assert_eq!(per_region.lines().collect::<Vec<_>>(), want, "one report per region of run {request} (through the {name} replica)");
        eprintln!("probe through the {name} replica: {request} ran in {REGIONS:?}");
    }
}

/// An on-demand run announced while the other replica was not listening
/// (its change-notice connection ended by PostgreSQL and new connections to
/// the database refused for the while): announcements are stored nowhere,
/// so once it listens again it asks for the recent ones, and the replica
/// that took the run announces it once more. The agent connected to the
/// other replica runs it, and every region's report is stored once.
#[test]
fn an_on_demand_run_announced_while_a_replica_was_not_listening_still_reaches_its_agents() {
    let (mut settings, db) = two_replicas("ondemandgap");
    settings.spread = true;
    settings.interval = "30s".into();
    let check = Check::new("replica-ondemand-gap");
    let c = RegionCluster::start(&check, &settings);
    let id = c.check_id.clone();
    wait_spread(&c);
    let pg = Postgres::get();
    let listeners = format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' AND application_name LIKE '%(change notices)'");
    wait_until(DEADLINE, "both replicas listening for notices", || (pg.psql("postgres", &listeners).trim() == "2").then_some(()));
    // Nobody listens: new connections refused, the listening ones ended.
    pg.psql("postgres", &format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false"));
    pg.psql("postgres", &format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}' AND application_name LIKE '%(change notices)'"));
    wait_until(DEADLINE, "no replica listening for notices", || (pg.psql("postgres", &listeners).trim() == "0").then_some(()));
    let ordered = "on-demand run ordered";
    let (code, out, err) = std::thread::scope(|s| {
        let probe = s.spawn(|| c.coordinator.ctl(&["probe", &id, "--timeout", "120s"]));
        wait_until(DEADLINE, "the first replica took the run", || {
            std::fs::read_to_string(c.coordinator.log_path()).unwrap_or_default().contains(ordered).then_some(())
        });
        // The run is announced (or could not be) while nobody listened.
        pg.psql("postgres", &format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true"));
        probe.join().unwrap()
    });
    assert_eq!(code, 0, "probe announced while the other replica was not listening:\n{out}{err}");
    for r in REGIONS {
        assert!(out.contains(&format!("{r}=ok")), "{r} not ok:\n{out}");
    }
    let request = out.split_whitespace().find(|w| w.starts_with("run-")).unwrap_or_else(|| panic!("no request id in:\n{out}")).to_string();
    let per_region = pg.psql(&db, &format!("SELECT region || ' ' || count(*) FROM reports WHERE request_id = '{request}' GROUP BY region ORDER BY region"));
    let want: Vec<String> = REGIONS.iter().map(|r| format!("{r} 1")).collect();
    assert_eq!(per_region.lines().collect::<Vec<_>>(), want, "one report per region of run {request}");
    let second = std::fs::read_to_string(c.others[0].log_path()).unwrap_or_default();
    assert!(second.contains("on-demand run ordered through another replica"), "the second replica placed the run announced again");
}

/// Three replicas, the agents spread over them, and the leader killed with
/// `kill -9` twice while the agents report: each time another replica
/// leads (eventually; the measured takeover is printed, not asserted),
/// rounds probed after the kill are judged, and, counted in PostgreSQL
/// against the agents' own probe logs, every probe they ran is stored
/// exactly once and no (region, round) twice.
#[test]
fn three_replicas_lose_their_leader_twice_and_no_report_is_lost_or_stored_twice() {
    let (mut settings, db) = two_replicas("threeleaders");
    settings.replicas = 3;
    settings.spread = true;
    let check = Check::new("replica-three");
    let mut c = RegionCluster::start(&check, &settings);
    let id = c.check_id.clone();
    wait_until(DEADLINE, "two rounds stored from every region", || (rounds_from_all_since(&c, &db, 0) >= 2).then_some(()));
    let mut takeovers = Vec::new();
    for kill in 1..=2 {
        // Which live replica leads (0: c.coordinator, i: c.others[i - 1]).
        let leader = wait_until(DEADLINE, "exactly one leader among the live replicas", || {
            let all: Vec<&Coordinator> = std::iter::once(&c.coordinator).chain(&c.others).collect();
            let leaders: Vec<usize> = all
                .iter()
                .enumerate()
                .filter(|(_, r)| r.proc.is_some() && readyz(r) == Some((200, "leader".into())))
                .map(|(i, _)| i)
                .collect();
            (leaders.len() == 1).then(|| leaders[0])
        });
        let killed_ms = now_ms();
        let killed = std::time::Instant::now();
        c.kill9_coordinator(leader);
        wait_until(DEADLINE, "another replica leads", || {
            let all: Vec<&Coordinator> = std::iter::once(&c.coordinator).chain(&c.others).collect();
            all.iter().any(|r| r.proc.is_some() && readyz(r) == Some((200, "leader".into()))).then_some(())
        });
        let led = killed.elapsed();
        wait_until(DEADLINE, "a round probed after the kill judged by the new leader", || {
            c.verdicts_since(killed_ms).iter().any(|v| v["verdict"] == "up").then_some(())
        });
        let judged = killed.elapsed();
        wait_until(DEADLINE, "three rounds probed after the kill stored from every region", || {
            (rounds_from_all_since(&c, &db, killed_ms) >= 3).then_some(())
        });
        eprintln!("kill {kill} (replica {leader}): another led after {:.1} s, first up verdict after {:.1} s", led.as_secs_f64(), judged.as_secs_f64());
        takeovers.push(led);
    }
    let (ran, stored) = all_stored_once(&c, || stored_per_probe(&db, &id));
    once_per_round(&c, stored.keys());
    eprintln!(
        "{} probes run, {} stored, 0 lost, 0 twice, across {} leader kills (takeovers: {:?})",
        ran.len(),
        stored.len(),
        takeovers.len(),
        takeovers.iter().map(|d| format!("{:.1}s", d.as_secs_f64())).collect::<Vec<_>>()
    );
}

/// The database of a server of the test's own (`url` made by `pg.database`).
fn db_name(url: &str) -> String {
    url.rsplit('/').next().unwrap().split('?').next().unwrap().to_string()
}

/// Reports spooled and not yet acknowledged by `region`'s agent.
fn spooled(c: &RegionCluster, region: &str) -> i64 {
    let path = c.dir.path().join(format!("agent-{region}.spool.db"));
    let conn = rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.query_row("SELECT count(*) FROM reports", [], |r| r.get(0)).unwrap()
}

/// PostgreSQL itself restarted (`pg_ctl stop -m fast`, then `pg_ctl
/// start`) while the agents report to two replicas: both replicas say
/// they are cut off and take no report, the agents spool meanwhile, and
/// once the server is back the replicas reconnect (one leads again) and
/// the spools drain. Ground truth, the agents' own probe logs: every probe
/// they ran is stored, each exactly once. The server is the test's own,
/// so the other tests of this binary keep theirs.
#[test]
fn postgresql_restarted_under_load_replicas_reconnect_agents_spool_and_nothing_is_lost() {
    let pg = Postgres::dedicated();
    let url = pg.database("pgrestart");
    let db = db_name(&url);
    let mut settings = Settings::new();
    settings.storage_url = Some(url);
    settings.replicas = 2;
    settings.spread = true;
    let check = Check::new("replica-pgrestart");
    let c = RegionCluster::start(&check, &settings);
    let id = c.check_id.clone();
    let replicas = || [&c.coordinator, &c.others[0]];
    let roles = || -> Option<Vec<String>> { replicas().iter().map(|r| readyz(r).map(|(_, role)| role)).collect() };
    let led = |roles: &[String]| roles.iter().filter(|r| *r == "leader").count() == 1 && roles.iter().filter(|r| *r == "follower").count() == 1;
    wait_until(DEADLINE, "one leader and one follower", || roles().filter(|r| led(r)));
    wait_until(DEADLINE, "two rounds stored from every region", || (rounds_from_all_since_on(&pg, &c, &db, 0) >= 2).then_some(()));

    let stopped_ms = now_ms();
    pg.stop_fast();
    // Both replicas know: not ready, no leader (nobody judges or pages).
    for r in replicas() {
        wait_until(DEADLINE, "/readyz of each replica: 503, cut_off", || {
            let (status, body) = http_get(r.http, "/readyz").ok()?;
            (status == 503 && body["role"] == "cut_off").then_some(())
        });
    }
    // The agents go on probing and keep what they ran: two rounds each,
    // started after the stop, held in their spools.
    wait_until(DEADLINE, "two probes per region run while PostgreSQL is down, spooled", || {
        let log = c.probe_log();
        REGIONS
            .iter()
            .all(|r| log.iter().filter(|(_, region, _, started)| region == r && *started > stopped_ms).count() >= 2 && spooled(&c, r) >= 2)
            .then_some(())
    });
    let spooled_at_start: Vec<i64> = REGIONS.iter().map(|r| spooled(&c, r)).collect();

    pg.start_again();
    let started_ms = now_ms();
    wait_until(DEADLINE, "one leader and one follower again", || roles().filter(|r| led(r)));
    wait_until(DEADLINE, "three rounds probed after the restart stored from every region", || {
        (rounds_from_all_since_on(&pg, &c, &db, started_ms) >= 3).then_some(())
    });
    wait_until(DEADLINE, "the spools drained", || REGIONS.iter().all(|r| spooled(&c, r) <= 1).then_some(()));

    // Ground truth: every probe the agents ran is stored, each once, and
    // every stored probe is one an agent ran, once per (region, round).
    let (ran, stored) = all_stored_once(&c, || stored_per_probe_on(&pg, &db, &id));
    once_per_round(&c, stored.keys());
    let during = ran.iter().filter(|(_, _, _, t)| *t > stopped_ms && *t < started_ms).count();
    eprintln!(
        "{} probes run ({during} while PostgreSQL was down; spooled then {spooled_at_start:?}), {} stored, 0 lost, 0 twice, across a PostgreSQL restart",
        ran.len(),
        stored.len()
    );
}

/// Three replicas; the leader is killed with `kill -9` and, in the same
/// moment, every region's path to the mail server is cut: the outage
/// starts while nobody leads. The replica that takes over opens it and
/// pages it once (counted by the test's webhook receiver), and pages its
/// resolution once; no other outage is opened, no page repeated.
#[test]
fn an_outage_that_starts_during_the_failover_is_paged_once() {
    let (mut settings, _db) = two_replicas("failoutage");
    settings.replicas = 3;
    settings.spread = true;
    let check = Check::new("replica-failoutage");
    let mut c = RegionCluster::start(&check, &settings);
    let live_leaders = |c: &RegionCluster| -> Vec<usize> {
        std::iter::once(&c.coordinator)
            .chain(&c.others)
            .enumerate()
            .filter(|(_, r)| r.proc.is_some() && readyz(r) == Some((200, "leader".into())))
            .map(|(i, _)| i)
            .collect()
    };
    let leader = wait_until(DEADLINE, "exactly one leader among three replicas", || {
        let l = live_leaders(&c);
        (l.len() == 1).then(|| l[0])
    });
    wait_until(DEADLINE, "an up verdict from the leader", || c.verdicts().iter().any(|v| v["verdict"] == "up").then_some(()));
    assert!(c.pager.hits().is_empty(), "no page before the outage: {:?}", c.pager.hits());

    // The same window: the leader dies, then the mail server is unreachable.
    let killed = std::time::Instant::now();
    c.kill9_coordinator(leader);
    c.cut_all();
    let cut_ms = now_ms();
    wait_until(DEADLINE, "another replica leads", || (live_leaders(&c).len() == 1).then_some(()));
    let led = killed.elapsed();
    let opened = wait_until(DEADLINE, "the outage paged as opened", || {
        c.pager.delivered().into_iter().find(|h| h.body["event"] == "opened" && h.body["incident"]["kind"] == "outage")
    });
    let paged = killed.elapsed();
    let incident = opened.body["incident"]["id"].clone();
    c.restore_all();
    wait_until(Duration::from_secs(180), "the outage paged as resolved", || {
        c.pager.delivered().into_iter().find(|h| h.body["event"] == "resolved" && h.body["incident"]["id"] == incident)
    });
    // Judged on rounds that failed after the cut (not a leftover).
    let after = c.verdicts_since(cut_ms);
    assert!(after.iter().any(|v| v["verdict"] == "down"), "down rounds after the cut:\n{}", describe(&after));

    let pages: Vec<String> =
        c.pager.hits().iter().map(|h| format!("{} {}", h.body["event"].as_str().unwrap_or("?"), h.body["incident"]["id"])).collect();
    for event in ["opened", "resolved"] {
        let n = pages.iter().filter(|p| **p == format!("{event} {incident}")).count();
        assert_eq!(n, 1, "{event} paged {n} times: {pages:?}");
    }
    assert_eq!(pages.len(), 2, "no other page: {pages:?}");
    let outages: Vec<serde_json::Value> = c.all_incidents().into_iter().filter(|i| i["kind"] == "outage").collect();
    assert_eq!(outages.len(), 1, "one outage: {outages:#?}");
    eprintln!(
        "leader {leader} killed and the mail server cut together: another led after {:.1} s, the outage paged after {:.1} s, once; {pages:?}",
        led.as_secs_f64(),
        paged.as_secs_f64()
    );
}
