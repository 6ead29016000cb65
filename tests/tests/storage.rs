//! The storage conformance suite: every case runs on both backends, SQLite
//! in a temporary directory and PostgreSQL in a database of its own on the
//! throwaway server of `mailloop_tests::postgres` (started once for this
//! binary). Each case is written once (`async fn case(db: &Db)`); `both!`
//! makes a `sqlite` and a `postgres` test of it.

use mailloop_coordinator::judge::{
    Incident, IncidentChange, IncidentKind, IncidentState, Severity, Verdict, VerdictKind,
};
use mailloop_coordinator::storage::{
    AlertAttempt, AlertAttemptQuery, AggregateQuery, AggregateSpanQuery, AuditEntry, AuditQuery, IncidentQuery, IncidentSpanQuery, Inserted, PgSettings, ReportRow, ResultQuery, Storage,
    StorageError, StorageSettings, StoredToken, RTT_BUCKETS_MS, VerdictCount, VerdictCountQuery, DayCountQuery, JoinToken, JoinUse,
};
use mailloop_tests::postgres::Postgres;
use serde_json::json;

/// Where one case keeps its data; `open` can be called again to reopen it.
enum Db {
    Sqlite(tempfile::TempDir),
    Postgres(String),
}

impl Db {
    async fn open(&self) -> Storage {
        match self {
            Db::Sqlite(dir) => Storage::open(dir.path()).unwrap(),
            Db::Postgres(url) => Storage::connect(&StorageSettings::Postgres(PgSettings::new(url.clone())))
                .await
                .unwrap(),
        }
    }
    /// Takes the schema back to before the status page's day counts (the
    /// table dropped, the version before it), as a database of the previous
    /// release: the next `open` migrates it again, backfill included.
    fn rewind_to_before_day_counts(&self) {
        match self {
            Db::Sqlite(dir) => {
                let conn = rusqlite::Connection::open(dir.path().join("coordinator.db")).unwrap();
                conn.execute_batch(&format!("{REWIND_TABLES} PRAGMA user_version = 8;")).unwrap();
            }
            Db::Postgres(url) => {
                let db = url.rsplit('/').next().unwrap().split('?').next().unwrap();
                Postgres::get().psql(db, &format!("{REWIND_TABLES} DELETE FROM mailloop_schema WHERE version >= 8;"));
            }
        }
    }
}

/// The tables of SQLite migrations 9.. and PostgreSQL 8.., and the hourly
/// aggregates' delivery histogram (PostgreSQL 11; SQLite adds it when it
/// opens a file without it), dropped by [`Db::rewind_to_before_day_counts`].
const REWIND_TABLES: &str = "DROP TABLE verdict_days; DROP TABLE console_sessions; DROP TABLE alert_attempts;
    ALTER TABLE report_hours DROP COLUMN delivery_buckets;";

macro_rules! both {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$case(&super::Db::Sqlite(tempfile::tempdir().unwrap())).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let url = super::Postgres::get().database(stringify!($case));
                super::$case(&super::Db::Postgres(url)).await;
            }
        }
    )*};
}

both! {
    a_replayed_report_is_stored_once,
    many_reports_in_flight_are_batched_and_each_answered,
    results_page_newest_first_and_filter,
    a_page_ends_at_its_byte_budget_and_the_cursor_takes_the_rest,
    pruning_removes_old_reports_only,
    everything_acked_survives_a_reopen,
    two_handles_on_one_database_store_a_replay_once,
    a_round_opens_one_incident_and_an_ack_is_idempotent,
    a_report_counts_once_in_its_hour,
    aggregates_of_several_checks_since_an_hour,
    audit_and_tokens_round_trip,
    verdicts_are_counted_per_check_bucket_and_kind,
    day_counts_equal_a_count_over_verdicts_after_stores_backfill_and_pruning,
    a_public_check_keeps_its_display_name,
    a_join_token_is_granted_once_and_never_after_it_expires,
    incidents_are_found_by_the_span_they_were_active_in_and_take_public_notes,
    incidents_page_by_id_both_ways_with_their_filters,
    the_alert_delivery_log_pages_filters_and_prunes,
}

fn report(id: &str, check: &str, region: &str, round: u64, started: i64) -> ReportRow {
    ReportRow {
        probe_id: id.into(),
        check_id: check.into(),
        revision: 1,
        region: region.into(),
        agent: format!("{region}-1"),
        round,
        started_at_ms: started,
        outcome: "ok".into(),
        rtt_ms: Some(12.5),
        delivery_ms: Some(3.0),
        failure_step: None,
        failure_class: None,
        report_json: json!({"probe_id": id}).to_string(),
        received_at_ms: started + 100,
        request_id: None,
        out_of_window: None,
    }
}

async fn a_replayed_report_is_stored_once(db: &Db) {
    let s = db.open().await;
    assert_eq!(
        s.insert_report(report("p1", "c", "eu", 1, 1000))
            .await
            .unwrap(),
        Inserted::New
    );
    assert_eq!(
        s.insert_report(report("p1", "c", "eu", 1, 1000))
            .await
            .unwrap(),
        Inserted::Duplicate
    );
    assert_eq!(s.count_reports().await.unwrap(), 1);
}

async fn many_reports_in_flight_are_batched_and_each_answered(db: &Db) {
    let s = db.open().await;
    let mut pending = Vec::new();
    for i in 0..3000 {
        pending.push(
            s.submit_report(report(&format!("p{i}"), "c", "eu", i, i as i64))
                .await
                .unwrap(),
        );
    }
    for p in pending {
        assert_eq!(p.await.unwrap().unwrap(), Inserted::New);
    }
    assert_eq!(s.count_reports().await.unwrap(), 3000);
}

async fn results_page_newest_first_and_filter(db: &Db) {
    let s = db.open().await;
    for i in 0..5 {
        s.insert_report(report(&format!("eu{i}"), "c", "eu", i, 1000 * i as i64))
            .await
            .unwrap();
        s.insert_report(report(&format!("us{i}"), "c", "us", i, 1000 * i as i64 + 1))
            .await
            .unwrap();
    }
    let q = ResultQuery {
        check_id: Some("c".into()),
        region: Some("eu".into()),
        limit: 2,
        ..Default::default()
    };
    let p1 = s.query_results(q.clone()).await.unwrap();
    assert_eq!(
        p1.rows
            .iter()
            .map(|r| r.probe_id.as_str())
            .collect::<Vec<_>>(),
        ["eu4", "eu3"]
    );
    let p2 = s
        .query_results(ResultQuery {
            after: p1.next,
            ..q.clone()
        })
        .await
        .unwrap();
    assert_eq!(
        p2.rows
            .iter()
            .map(|r| r.probe_id.as_str())
            .collect::<Vec<_>>(),
        ["eu2", "eu1"]
    );
    let since = s
        .query_results(ResultQuery {
            since_ms: Some(3000),
            region: None,
            ..q
        })
        .await
        .unwrap();
    assert_eq!(
        since
            .rows
            .iter()
            .map(|r| r.probe_id.as_str())
            .collect::<Vec<_>>(),
        ["us4", "eu4"]
    );
    let (round, rows) = s.latest_round("c".into()).await.unwrap().unwrap();
    assert_eq!((round, rows.len()), (4, 2));
}

async fn a_page_ends_at_its_byte_budget_and_the_cursor_takes_the_rest(db: &Db) {
    let s = db.open().await;
    for i in 0..10u64 {
        let mut r = report(&format!("r{i}"), "c", "eu", i, 1000 * i as i64);
        r.report_json = format!(r#"{{"pad":"{}"}}"#, "x".repeat(1000));
        s.insert_report(r).await.unwrap();
    }
    let q = ResultQuery {
        limit: 1000,
        max_bytes: Some(2500),
        ..Default::default()
    };
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = s
            .query_results(ResultQuery {
                after: after.clone(),
                ..q.clone()
            })
            .await
            .unwrap();
        // Rows are added until the page passes 2,500 bytes: 3 of ~1 KB.
        assert!(page.rows.len() <= 3, "{} rows", page.rows.len());
        seen.extend(page.rows.iter().map(|r| r.probe_id.clone()));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let expected: Vec<String> = (0..10).rev().map(|i| format!("r{i}")).collect();
    assert_eq!(seen, expected, "every row exactly once, newest first");
}

async fn pruning_removes_old_reports_only(db: &Db) {
    let s = db.open().await;
    s.insert_report(report("old", "c", "eu", 1, 0))
        .await
        .unwrap();
    s.insert_report(report("new", "c", "eu", 2, 10_000))
        .await
        .unwrap();
    assert_eq!(s.prune(5_000).await.unwrap(), 1);
    assert_eq!(s.count_reports().await.unwrap(), 1);
}

async fn everything_acked_survives_a_reopen(db: &Db) {
    {
        let s = db.open().await;
        s.insert_report(report("p1", "c", "eu", 1, 1))
            .await
            .unwrap();
        s.close().await;
        assert!(matches!(
            s.insert_report(report("p2", "c", "eu", 1, 1)).await,
            Err(StorageError::Closed)
        ));
    }
    let s = db.open().await;
    assert_eq!(s.count_reports().await.unwrap(), 1);
}

/// Two coordinators on one database (on SQLite: two handles on one file)
/// receiving the same report at once store it once, and say so.
async fn two_handles_on_one_database_store_a_replay_once(db: &Db) {
    let (a, b) = (db.open().await, db.open().await);
    let mut answers = Vec::new();
    for i in 0..200 {
        let r = report(&format!("p{i}"), "c", "eu", i, i as i64);
        answers.push(a.submit_report(r.clone()).await.unwrap());
        answers.push(b.submit_report(r).await.unwrap());
    }
    let mut new = 0;
    for x in answers {
        if x.await.unwrap().unwrap() == Inserted::New {
            new += 1;
        }
    }
    assert_eq!(new, 200, "each report is new exactly once");
    assert_eq!(a.count_reports().await.unwrap(), 200);
    a.close().await;
    b.close().await;
}

fn verdict(round: u64, kind: VerdictKind) -> Verdict {
    Verdict {
        check_id: "corp".into(),
        round,
        round_start_ms: round as i64 * 1000,
        decided_at_ms: round as i64 * 1000 + 500,
        verdict: kind,
        quorum: 1,
        regions: Vec::new(),
        note: String::new(),
    }
}

fn outage(round: u64) -> IncidentChange {
    IncidentChange::Open(Incident {
        id: 0,
        check_id: "corp".into(),
        kind: IncidentKind::Outage,
        severity: Severity::Critical,
        state: IncidentState::Open,
        key: String::new(),
        regions: vec!["eu".into()],
        step: None,
        class: None,
        opened_at_ms: round as i64 * 1000,
        first_round: round,
        last_round: round,
        acknowledged_at_ms: None,
        acknowledged_by: None,
        resolved_at_ms: None,
        summary: "down".into(),
        timeline: Vec::new(),
    })
}

async fn a_round_opens_one_incident_and_an_ack_is_idempotent(db: &Db) {
    let s = db.open().await;
    let first = s.store_round(verdict(1, VerdictKind::Down), vec![outage(1)]).await.unwrap();
    assert!(first.stored);
    assert_eq!(first.events.len(), 1);
    let again = s.store_round(verdict(1, VerdictKind::Down), vec![outage(1)]).await.unwrap();
    assert!(!again.stored, "a decided round stays decided");
    // The judge lost track and opens it again: still one incident, a new line.
    s.store_round(verdict(2, VerdictKind::Down), vec![outage(2)]).await.unwrap();
    let all = s.list_incidents(IncidentQuery { limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].last_round, 2);
    let id = all[0].id;
    let acked = s.acknowledge(id, Some("alice".into()), 5).await.unwrap();
    assert!(matches!(acked, mailloop_coordinator::storage::AckOutcome::Acknowledged(_)));
    let twice = s.acknowledge(id, Some("bob".into()), 6).await.unwrap();
    assert!(matches!(twice, mailloop_coordinator::storage::AckOutcome::AlreadyAcknowledged(_)));
    let one = s.incident(id).await.unwrap().unwrap();
    assert_eq!(one.timeline.iter().filter(|e| e.event == "acknowledged").count(), 1);
    let (latest, active) = s.status_snapshot(vec!["corp".into(), "other".into()]).await.unwrap();
    assert_eq!(latest["corp"].round, 2);
    assert_eq!(active.len(), 1);
    let gone = s.resolve_incidents_of("corp".into(), 9, "check deleted".into()).await.unwrap();
    assert_eq!(gone.len(), 1);
    assert!(s.checks_with_active_incidents().await.unwrap().is_empty());
    assert_eq!(s.recent_verdicts("corp".into(), 5).await.unwrap().len(), 2);
    s.close().await;
}

fn resolve(round: u64) -> IncidentChange {
    IncidentChange::Resolve {
        kind: IncidentKind::Outage,
        key: String::new(),
        entry: mailloop_coordinator::judge::TimelineEntry {
            at_ms: round as i64 * 1000,
            round: Some(round),
            event: "resolved".into(),
            verdict: Some(VerdictKind::Up),
            note: String::new(),
        },
    }
}

/// Five incidents (opened at odd rounds, resolved at even ones but the
/// last): pages of two walk them newest first with `before_id`, and back
/// with `after_id` (oldest first, nearest the cursor first); the state
/// filter holds on every page.
async fn incidents_page_by_id_both_ways_with_their_filters(db: &Db) {
    let s = db.open().await;
    for k in 0..5u64 {
        s.store_round(verdict(2 * k + 1, VerdictKind::Down), vec![outage(2 * k + 1)]).await.unwrap();
        if k < 4 {
            s.store_round(verdict(2 * k + 2, VerdictKind::Up), vec![resolve(2 * k + 2)]).await.unwrap();
        }
    }
    let ids = |v: Vec<Incident>| v.into_iter().map(|i| i.id).collect::<Vec<_>>();
    let all = ids(s.list_incidents(IncidentQuery { limit: 10, ..Default::default() }).await.unwrap());
    assert_eq!(all.len(), 5);
    assert!(all.windows(2).all(|w| w[0] > w[1]), "newest first: {all:?}");
    let page = |before_id, after_id, states: Vec<IncidentState>| {
        let s = &s;
        async move { ids(s.list_incidents(IncidentQuery { limit: 2, before_id, after_id, states, ..Default::default() }).await.unwrap()) }
    };
    assert_eq!(page(None, None, vec![]).await, all[..2]);
    assert_eq!(page(Some(all[1]), None, vec![]).await, all[2..4]);
    assert_eq!(page(Some(all[3]), None, vec![]).await, all[4..]);
    assert_eq!(page(None, Some(all[4]), vec![]).await, [all[3], all[2]], "back: oldest first from the cursor");
    assert_eq!(page(None, Some(all[1]), vec![]).await, [all[0]]);
    let resolved = vec![IncidentState::Resolved];
    assert_eq!(page(None, None, resolved.clone()).await, all[1..3], "the open one is left out");
    assert_eq!(page(Some(all[2]), None, resolved).await, all[3..5]);
    s.close().await;
}

fn attempt(at_ms: i64, channel: &str, incident_id: u64, attempt: u32, result: &str) -> AlertAttempt {
    AlertAttempt {
        seq: 0,
        at_ms,
        channel: channel.into(),
        channel_type: "webhook".into(),
        incident_id,
        check_id: "corp".into(),
        event: "opened".into(),
        attempt,
        of: 4,
        result: result.into(),
        class: (result != "delivered").then(|| "http_status".into()),
        code: (result != "delivered").then_some(503),
        detail: (result != "delivered").then(|| "HTTP 503: busy".into()),
    }
}

/// Every attempt is kept as written; pages newest first by `seq` both
/// ways, by channel and incident; old attempts are pruned; a reopen keeps them.
async fn the_alert_delivery_log_pages_filters_and_prunes(db: &Db) {
    let s = db.open().await;
    let mut written = Vec::new();
    for k in 0..6u32 {
        let (channel, result) = if k % 2 == 0 { ("pager", "retry") } else { ("tickets", "delivered") };
        let a = attempt(1000 * (k as i64 + 1), channel, 7 + u64::from(k / 4), k + 1, result);
        let seq = s.record_alert_attempt(a.clone()).await.unwrap();
        written.push(AlertAttempt { seq, ..a });
    }
    s.close().await;
    let s = db.open().await;
    let q = |q: AlertAttemptQuery| {
        let s = &s;
        async move { s.alert_attempts(q).await.unwrap() }
    };
    let newest = q(AlertAttemptQuery { limit: 10, ..Default::default() }).await;
    let mut expected = written.clone();
    expected.reverse();
    assert_eq!(newest, expected, "every attempt as written, newest first");
    let first = q(AlertAttemptQuery { limit: 4, ..Default::default() }).await;
    let second = q(AlertAttemptQuery { limit: 4, before_seq: Some(first[3].seq), ..Default::default() }).await;
    assert_eq!(second, expected[4..]);
    let back = q(AlertAttemptQuery { limit: 2, after_seq: Some(second[0].seq), ..Default::default() }).await;
    assert_eq!(back, [expected[3].clone(), expected[2].clone()], "back: oldest first from the cursor");
    let pager = q(AlertAttemptQuery { limit: 10, channel: Some("pager".into()), ..Default::default() }).await;
    assert_eq!(pager.iter().map(|a| a.attempt).collect::<Vec<_>>(), [5, 3, 1]);
    assert!(pager.iter().all(|a| a.class.as_deref() == Some("http_status") && a.code == Some(503)));
    let eight = q(AlertAttemptQuery { limit: 10, incident_id: Some(8), ..Default::default() }).await;
    assert_eq!(eight.iter().map(|a| a.attempt).collect::<Vec<_>>(), [6, 5]);
    assert_eq!(s.prune_alert_attempts(2500).await.unwrap(), 2);
    assert_eq!(q(AlertAttemptQuery { limit: 10, ..Default::default() }).await, expected[..4]);
    s.close().await;
}

const DAY_IDS: [&str; 2] = ["corp", "other"];

fn sorted_counts(mut c: Vec<VerdictCount>) -> Vec<VerdictCount> {
    c.sort_by(|a, b| (&a.check_id, a.bucket_start_ms, a.verdict.as_str()).cmp(&(&b.check_id, b.bucket_start_ms, b.verdict.as_str())));
    c
}

/// Rounds per check, UTC day and kind, counted over the verdicts.
async fn counted_days(s: &Storage, since_ms: i64) -> Vec<VerdictCount> {
    let q = VerdictCountQuery { check_ids: DAY_IDS.map(String::from).to_vec(), since_ms, bucket_ms: 86_400_000 };
    sorted_counts(s.verdict_counts(q).await.unwrap())
}

/// The same from the day counts kept as verdicts are stored.
async fn kept_days(s: &Storage, since_ms: i64) -> Vec<VerdictCount> {
    let q = DayCountQuery { check_ids: DAY_IDS.map(String::from).to_vec(), since_ms };
    sorted_counts(s.verdict_day_counts(q).await.unwrap())
}

/// The status page's day counts (`verdict_days`, kept by `store_round`)
/// are what counting the verdicts themselves per UTC day gives: as stored
/// (a replayed round counted once), when a database of the previous schema
/// is migrated (the backfill), and after retention pruned whole days.
async fn day_counts_equal_a_count_over_verdicts_after_stores_backfill_and_pruning(db: &Db) {
    const DAY: i64 = 86_400_000;
    let kinds = [VerdictKind::Up, VerdictKind::Degraded, VerdictKind::Deferred, VerdictKind::Transit, VerdictKind::Down, VerdictKind::Unknown];
    let s = db.open().await;
    // Two checks, a round every 5 hours for 6 days, every kind.
    for round in 0..29u64 {
        for (check, shift) in [("corp", 0), ("other", 1)] {
            let mut v = verdict(round, kinds[(round as usize * 7 + shift) % kinds.len()]);
            v.check_id = check.into();
            v.round_start_ms = round as i64 * 5 * 3_600_000;
            v.decided_at_ms = v.round_start_ms + 500;
            assert!(s.store_round(v.clone(), Vec::new()).await.unwrap().stored);
            if round % 5 == 0 {
                assert!(!s.store_round(v, Vec::new()).await.unwrap().stored, "a replay is stored once");
            }
        }
    }
    let truth = counted_days(&s, 0).await;
    assert_eq!(truth.iter().map(|c| c.rounds).sum::<u64>(), 58);
    assert!(truth.iter().any(|c| c.bucket_start_ms == 5 * DAY), "six days");
    assert_eq!(kept_days(&s, 0).await, truth, "kept as stored");
    assert_eq!(kept_days(&s, 2 * DAY + 7).await, counted_days(&s, 2 * DAY).await, "from the day holding since");
    s.close().await;

    // A database of the previous release: the migration counts what is there.
    db.rewind_to_before_day_counts();
    let s = db.open().await;
    assert_eq!(kept_days(&s, 0).await, truth, "backfilled");
    // ...and the hourly aggregates have their delivery histogram again.
    s.insert_report(report("p-upgraded", "c-upgraded", "eu", 1, 1_000)).await.unwrap();
    let hours = s.aggregates(AggregateQuery { check_id: "c-upgraded".into(), ..Default::default() }).await.unwrap();
    assert_eq!(hours[0].delivery_buckets.iter().sum::<u64>(), 1, "{hours:?}");
    // Retention: verdicts decided before day 2, and the days that ended by then.
    s.prune_verdicts(2 * DAY).await.unwrap();
    let left = counted_days(&s, 0).await;
    assert!(left.iter().all(|c| c.bucket_start_ms >= 2 * DAY) && left.len() < truth.len(), "{left:?}");
    assert_eq!(kept_days(&s, 0).await, left, "pruned with the verdicts");
    s.close().await;
}

async fn verdicts_are_counted_per_check_bucket_and_kind(db: &Db) {
    let s = db.open().await;
    // Rounds start every second (`verdict`); buckets of 10 s.
    for (round, kind) in [(3, VerdictKind::Up), (5, VerdictKind::Up), (7, VerdictKind::Down), (12, VerdictKind::Transit), (25, VerdictKind::Unknown)] {
        s.store_round(verdict(round, kind), Vec::new()).await.unwrap();
    }
    let mut other = verdict(4, VerdictKind::Down);
    other.check_id = "other".into();
    s.store_round(other, Vec::new()).await.unwrap();
    let count = |check: &str, bucket: i64, kind: VerdictKind, rounds: u64| VerdictCount {
        check_id: check.into(),
        bucket_start_ms: bucket,
        verdict: kind,
        rounds,
    };
    let mut got = s
        .verdict_counts(VerdictCountQuery { check_ids: vec!["corp".into()], since_ms: 4_000, bucket_ms: 10_000 })
        .await
        .unwrap();
    got.sort_by_key(|c| (c.bucket_start_ms, c.verdict.as_str()));
    // Round 3 starts before `since`; "other" is not asked for.
    assert_eq!(
        got,
        vec![
            count("corp", 0, VerdictKind::Down, 1),
            count("corp", 0, VerdictKind::Up, 1),
            count("corp", 10_000, VerdictKind::Transit, 1),
            count("corp", 20_000, VerdictKind::Unknown, 1),
        ]
    );
    let both = s
        .verdict_counts(VerdictCountQuery { check_ids: vec!["corp".into(), "other".into()], since_ms: 0, bucket_ms: 86_400_000 })
        .await
        .unwrap();
    assert_eq!(both.iter().map(|c| c.rounds).sum::<u64>(), 6);
    assert!(s.verdict_counts(VerdictCountQuery { check_ids: vec![], since_ms: 0, bucket_ms: 1 }).await.unwrap().is_empty());
    s.close().await;
}

async fn a_public_check_keeps_its_display_name(db: &Db) {
    use mailloop_coordinator::config::{CheckRules, check_spec};
    use mailloop_coordinator::storage::{Source, StoredCheck};
    let s = db.open().await;
    let mut table = json!({
        "name": "webmail", "from": "a@example.test", "to": "b@example.test", "interval": "5m",
        "regions": ["eu"], "public": true, "display_name": "Webmail <beta>",
        "smtp": {"host": "127.0.0.1", "security": "none"},
        "imap": {"host": "127.0.0.1", "security": "none", "username": "b@example.test", "password_env": "P"},
    });
    let rules = CheckRules { allow_inline_passwords: false, min_interval: std::time::Duration::from_secs(30) };
    let spec = check_spec("check", &table, rules).unwrap();
    assert_eq!(spec.public.as_ref().unwrap().display_name, "Webmail <beta>");
    assert!(spec.table.get("public").is_none(), "agents never get it");
    s.put_check(StoredCheck { spec: spec.clone(), revision: 1, source: Source::Api, deleted: false, updated_at_ms: 1 })
        .await
        .unwrap();
    let loaded = s.load_checks().await.unwrap();
    assert_eq!(loaded[0].spec, spec);
    table["public"] = json!(false);
    let private = check_spec("check", &table, rules).unwrap();
    assert_eq!(private.public, None);
    s.close().await;
}

async fn a_report_counts_once_in_its_hour(db: &Db) {
    let s = db.open().await;
    let mut slow = report("p-slow", "c", "eu", 2, 60_000);
    slow.rtt_ms = Some(700.0);
    slow.delivery_ms = Some(4_000.0);
    slow.outcome = "degraded".into();
    for r in [report("p1", "c", "eu", 1, 1_000), slow.clone(), slow] {
        s.insert_report(r).await.unwrap();
    }
    let hours = s.aggregates(AggregateQuery { check_id: "c".into(), ..Default::default() }).await.unwrap();
    assert_eq!(hours.len(), 1);
    let h = &hours[0];
    assert_eq!((h.ok, h.degraded, h.failed), (1, 1, 0), "the replay was not counted");
    assert_eq!(h.rtt.count, 2);
    assert_eq!((h.rtt.min_ms, h.rtt.max_ms), (Some(12.5), Some(700.0)));
    assert_eq!(h.rtt_buckets.iter().sum::<u64>(), 2);
    // Delivery times have their own histogram (3 ms and 4 s).
    let bucket = |le: f64| RTT_BUCKETS_MS.iter().position(|&b| b == le).unwrap();
    let in_bucket = |h: &mailloop_coordinator::storage::HourAggregate, le: f64| h.delivery_buckets[bucket(le)];
    assert_eq!((in_bucket(h, 25.0), in_bucket(h, 5_000.0), h.delivery_buckets.iter().sum::<u64>()), (1, 1, 2));
    // A later report of the same hour adds to the stored histogram.
    s.insert_report(report("p-late", "c", "eu", 3, 120_000)).await.unwrap();
    let hours = s.aggregates(AggregateQuery { check_id: "c".into(), ..Default::default() }).await.unwrap();
    assert_eq!((in_bucket(&hours[0], 25.0), hours[0].delivery_buckets.iter().sum::<u64>()), (2, 3));
    assert!(hours[0].delivery_quantile(0.95).unwrap() > 1_000.0, "{:?}", hours[0]);
    assert_eq!(s.prune_aggregates(10 * 3_600_000).await.unwrap(), 1);
    s.close().await;
}

/// The status page's read: several checks' hours since an hour, ordered
/// by check, region and hour; other checks and older hours left out.
async fn aggregates_of_several_checks_since_an_hour(db: &Db) {
    let s = db.open().await;
    const H: i64 = 3_600_000;
    for (n, (check, region, hour)) in
        [("a", "us", 3), ("a", "eu", 3), ("a", "eu", 2), ("a", "eu", 1), ("b", "eu", 2), ("c", "eu", 3)].into_iter().enumerate()
    {
        s.insert_report(report(&format!("p{n}"), check, region, n as u64 + 1, hour * H + 10)).await.unwrap();
    }
    let hours = s
        .aggregates_of(AggregateSpanQuery { check_ids: vec!["a".into(), "b".into()], since_ms: 2 * H + 5 })
        .await
        .unwrap();
    let got: Vec<(&str, &str, i64)> = hours.iter().map(|h| (h.check_id.as_str(), h.region.as_str(), h.hour_ms / H)).collect();
    assert_eq!(got, [("a", "eu", 2), ("a", "eu", 3), ("a", "us", 3), ("b", "eu", 2)]);
    assert!(hours.iter().all(|h| h.rtt.count == 1 && h.rtt_quantile(0.5) == Some(12.5)), "{hours:?}");
    assert!(s.aggregates_of(AggregateSpanQuery { check_ids: vec![], since_ms: 0 }).await.unwrap().is_empty());
    s.close().await;
}

async fn audit_and_tokens_round_trip(db: &Db) {
    let s = db.open().await;
    for i in 0..5 {
        let e = AuditEntry {
            seq: 0,
            at_ms: i,
            actor: "admin".into(),
            role: "admin".into(),
            source: Some("127.0.0.1".into()),
            action: "created".into(),
            object: "check".into(),
            object_id: format!("c{i}"),
            detail: None,
        };
        s.append_audit(e).await.unwrap();
    }
    let page = s.query_audit(AuditQuery { limit: 3, ..Default::default() }).await.unwrap();
    assert_eq!(page.entries.iter().map(|e| e.object_id.as_str()).collect::<Vec<_>>(), ["c4", "c3", "c2"]);
    let rest = s.query_audit(AuditQuery { limit: 3, before_seq: page.next, ..Default::default() }).await.unwrap();
    assert_eq!(rest.entries.len(), 2);
    assert_eq!(rest.next, None);
    assert_eq!(s.prune_audit(2).await.unwrap(), 2);
    let t = StoredToken {
        name: "grafana".into(),
        role: "read".into(),
        token_sha256: "ab".repeat(32),
        created_at_ms: 1,
        created_by: "admin".into(),
        revoked_at_ms: None,
    };
    s.put_api_token(t.clone()).await.unwrap();
    s.put_api_token(StoredToken { revoked_at_ms: Some(2), ..t.clone() }).await.unwrap();
    assert_eq!(s.load_api_tokens().await.unwrap(), [StoredToken { revoked_at_ms: Some(2), ..t }]);
    s.close().await;
}

async fn a_join_token_is_granted_once_and_never_after_it_expires(db: &Db) {
    let s = db.open().await;
    let join = |hash: &str, expires_at_ms| JoinToken {
        token_sha256: hash.into(),
        agent: "eu-1".into(),
        agent_token_sha256: "cd".repeat(32),
        created_at_ms: 1_000,
        expires_at_ms,
    };
    s.put_join_token(join("aa", 5_000)).await.unwrap();
    s.put_join_token(join("bb", 5_000)).await.unwrap();
    assert_eq!(s.use_join_token("zz".into(), 2_000).await.unwrap(), JoinUse::Unknown);
    // Expiry is exclusive: at expires_at the token is already expired.
    assert_eq!(s.use_join_token("bb".into(), 5_000).await.unwrap(), JoinUse::Expired { agent: "eu-1".into(), at_ms: 5_000 });
    assert_eq!(
        s.use_join_token("aa".into(), 2_000).await.unwrap(),
        JoinUse::Granted { agent: "eu-1".into(), agent_token_sha256: "cd".repeat(32) }
    );
    assert_eq!(s.use_join_token("aa".into(), 3_000).await.unwrap(), JoinUse::Used { agent: "eu-1".into(), at_ms: 2_000 });
    // Still used after a reopen, and still "used" (not "expired") after expiry.
    s.close().await;
    let s = db.open().await;
    assert_eq!(s.use_join_token("aa".into(), 9_000).await.unwrap(), JoinUse::Used { agent: "eu-1".into(), at_ms: 2_000 });
    s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refuses_a_newer_schema_and_migrates_once() {
    let pg = Postgres::get();
    let url = pg.database("newer_schema");
    let settings = StorageSettings::Postgres(PgSettings::new(url.clone()));
    // Two replicas starting together: the advisory lock lets one migrate.
    let (a, b) = tokio::join!(Storage::connect(&settings), Storage::connect(&settings));
    let (a, b) = (a.unwrap(), b.unwrap());
    // One row per migration, each applied once although two replicas ran.
    let migrations = a.schema_version().to_string();
    a.close().await;
    b.close().await;
    let db = url.rsplit('/').next().unwrap().split('?').next().unwrap().to_string();
    assert_eq!(pg.psql(&db, "SELECT COUNT(*) FROM mailloop_schema"), migrations);
    pg.psql(&db, "INSERT INTO mailloop_schema (version, what) VALUES (999, 'from the future')");
    match Storage::connect(&settings).await {
        Err(StorageError::NewerSchema { found: 999, .. }) => {}
        Err(e) => panic!("expected a refusal of schema 999, got {e}"),
        Ok(_) => panic!("a newer schema was accepted"),
    }
}

/// Leadership: SQLite's one coordinator always leads; on PostgreSQL, of
/// two replicas campaigning on one database exactly one leads, and when its
/// campaign stops (its dedicated connection closes, as when the process
/// dies) the other takes over. Waits on the roles, never on a clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_leads_and_another_takes_over_when_it_stops() {
    use mailloop_coordinator::storage::ReplicaRole::{Follower, Leader};
    use tokio::sync::{oneshot, watch};
    const WITHIN: std::time::Duration = std::time::Duration::from_secs(120);

    let dir = tempfile::tempdir().unwrap();
    let sqlite = Storage::open(dir.path()).unwrap();
    let (_keep, stop) = oneshot::channel::<()>();
    let role = sqlite.campaign(async move {
        let _ = stop.await;
    });
    assert_eq!(*role.borrow(), Leader, "SQLite: one coordinator, always the leader");
    sqlite.close().await;

    let url = Postgres::get().database("leadership");
    let settings = StorageSettings::Postgres(PgSettings::new(url));
    let (a, b) = (Storage::connect(&settings).await.unwrap(), Storage::connect(&settings).await.unwrap());
    let (stop_a, stop_a_rx) = oneshot::channel::<()>();
    let (_stop_b, stop_b_rx) = oneshot::channel::<()>();
    let mut role_a = a.campaign(async move {
        let _ = stop_a_rx.await;
    });
    let mut role_b = b.campaign(async move {
        let _ = stop_b_rx.await;
    });
    let settled = |a: &watch::Receiver<_>, b: &watch::Receiver<_>| {
        let (a, b) = (*a.borrow(), *b.borrow());
        matches!((a, b), (Leader, Follower) | (Follower, Leader))
    };
    tokio::time::timeout(WITHIN, async {
        while !settled(&role_a, &role_b) {
            tokio::select! {
                _ = role_a.changed() => {}
                _ = role_b.changed() => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no single leader: a {:?}, b {:?}", *role_a.borrow(), *role_b.borrow()));
    // The leader steps down (its connection closes); the follower takes over.
    let (mut leader, mut follower, stop) = if *role_a.borrow() == Leader {
        (role_a, role_b, Some(stop_a))
    } else {
        (role_b, role_a, None)
    };
    match stop {
        Some(stop) => drop(stop),
        None => drop(_stop_b),
    }
    tokio::time::timeout(WITHIN, follower.wait_for(|r| *r == Leader))
        .await
        .expect("the follower took over within the deadline")
        .unwrap();
    assert_ne!(*leader.borrow_and_update(), Leader, "the stopped replica no longer leads");
    a.close().await;
    b.close().await;
}

/// `mailloop-coordinator migrate` on a `[storage] url` config: the schema
/// is created, the password given through `password_env` is used and never
/// printed, and a bad key of `[storage]` is a config error (exit 3).
#[test]
fn the_migrate_command_prepares_a_postgres_database() {
    let pg = Postgres::get();
    let url = pg.database("migrate_command");
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("admin.token");
    std::fs::write(&token, "the-admin-token-0123456789").unwrap();
    let config = dir.path().join("coordinator.toml");
    let write = |extra: &str| {
        std::fs::write(
            &config,
            format!(
                "[server]\ndata_dir = {:?}\nadmin_token_file = {:?}\n\n[storage]\nurl = {url:?}\npassword_env = \"PGPASS_TEST\"\n{extra}",
                dir.path().join("data"),
                token
            ),
        )
        .unwrap()
    };
    let run = || {
        std::process::Command::new(mailloop_tests::cluster::bin("mailloop-coordinator"))
            .args(["migrate", "--config"])
            .arg(&config)
            .env("PGPASS_TEST", "s3cret-never-shown")
            .output()
            .unwrap()
    };
    write("");
    let out = run();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    // 2: join tokens of agent enrollment; 3: agent presence; 4: the alert
    // outbox; 5, 6: token rotation; 7: the status page's verdict index;
    // 8: its day counts; 9: console sessions; 10: the alert delivery log;
    // 11: the hourly aggregates' delivery histogram.
    assert!(stdout.contains("schema version 11"), "{stdout}");
    assert!(!stdout.contains("s3cret") && !stderr.contains("s3cret"), "{stdout}{stderr}");
    let db = url.rsplit('/').next().unwrap().split('?').next().unwrap();
    assert_eq!(pg.psql(db, "SELECT MAX(version) FROM mailloop_schema"), "11");
    write("pool_size = 0\ncolour = \"blue\"\n");
    let out = run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("storage.pool_size") && stderr.contains("storage.colour"), "{stderr}");
}

/// An incident opened at round 10 (10 s) and resolved at 20 s, and one
/// opened at 30 s still open: which spans find which, and a public note.
async fn incidents_are_found_by_the_span_they_were_active_in_and_take_public_notes(db: &Db) {
    use mailloop_coordinator::judge::TimelineEntry;
    let s = db.open().await;
    s.store_round(verdict(10, VerdictKind::Down), vec![outage(10)]).await.unwrap();
    let resolve = IncidentChange::Resolve {
        kind: IncidentKind::Outage,
        key: String::new(),
        entry: TimelineEntry { at_ms: 20_000, round: Some(20), event: "resolved".into(), verdict: Some(VerdictKind::Up), note: String::new() },
    };
    s.store_round(verdict(20, VerdictKind::Up), vec![resolve]).await.unwrap();
    s.store_round(verdict(30, VerdictKind::Down), vec![outage(30)]).await.unwrap();
    let span = |since_ms: i64, until_ms: i64, check: &str| {
        let s = &s;
        let check = check.to_string();
        async move {
            s.incidents_in_span(IncidentSpanQuery { check_ids: vec![check], since_ms, until_ms, timelines: false })
                .await
                .unwrap()
                .iter()
                .map(|i| i.opened_at_ms)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(span(0, 100_000, "corp").await, [10_000, 30_000], "oldest first");
    assert_eq!(span(0, 10_000, "corp").await, Vec::<i64>::new(), "opened at the span's end: not in it");
    assert_eq!(span(15_000, 16_000, "corp").await, [10_000], "active through the span");
    assert_eq!(span(20_001, 25_000, "corp").await, Vec::<i64>::new(), "resolved before the span");
    assert_eq!(span(500_000, 600_000, "corp").await, [30_000], "still open");
    assert_eq!(span(0, 100_000, "other").await, Vec::<i64>::new());

    let open = s.incidents_in_span(IncidentSpanQuery { check_ids: vec!["corp".into()], since_ms: 30_000, until_ms: 40_000, timelines: true })
        .await
        .unwrap();
    let id = open[0].id;
    assert!(!open[0].timeline.is_empty(), "timelines read when asked");
    let noted = s.add_incident_note(id, "We <b>know</b>.".into(), 31_000).await.unwrap().unwrap();
    let last = noted.timeline.last().unwrap();
    assert_eq!((last.event.as_str(), last.note.as_str(), last.at_ms), ("public_note", "We <b>know</b>.", 31_000));
    assert_eq!(s.incident(id).await.unwrap().unwrap().timeline.len(), noted.timeline.len(), "stored");
    assert!(s.add_incident_note(id + 1000, "nobody".into(), 1).await.unwrap().is_none());
    // Several at once (the status page's open incidents and feed), each
    // with its own timeline, in the order asked, unknown ids left out.
    let first = span_ids(&s).await[0];
    let both = s.incidents_by_id(vec![id, id + 1000, first]).await.unwrap();
    assert_eq!(both.iter().map(|i| i.id).collect::<Vec<_>>(), [id, first]);
    for i in &both {
        assert_eq!(i.timeline, s.incident(i.id).await.unwrap().unwrap().timeline, "incident {}", i.id);
    }
    assert_eq!(both[1].timeline.last().unwrap().event, "resolved");
    assert!(both[0].timeline.iter().any(|e| e.event == "public_note"));
    assert!(s.incidents_by_id(Vec::new()).await.unwrap().is_empty());
    s.close().await;
}

/// The ids of every incident of "corp", oldest opened first.
async fn span_ids(s: &Storage) -> Vec<u64> {
    s.incidents_in_span(IncidentSpanQuery { check_ids: vec!["corp".into()], since_ms: 0, until_ms: i64::MAX, timelines: false })
        .await
        .unwrap()
        .iter()
        .map(|i| i.id)
        .collect()
}

/// `mailloop-coordinator migrate-data`: a SQLite installation with history
/// (reports, their hourly aggregates, verdicts), agents, a check, a
/// resolved incident and an open, acknowledged one with a public note, the
/// audit log and tokens moves into PostgreSQL. Ground truth: the rows of
/// every table counted on both sides, and what the coordinator reads back
/// (incidents with their timelines, verdicts, aggregates) equal. A second
/// run is refused (the target is not empty) unless --replace. After the
/// switch, the open incident is still open and closes through the path the
/// judge uses, and new incidents and events take fresh ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_data_moves_a_sqlite_installation_into_postgres() {
    use mailloop_coordinator::judge::{IncidentState, TimelineEntry};
    use mailloop_coordinator::storage::{Source, StoredAgent, VerdictQuery};
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(dir.path()).unwrap();
    for i in 0..600u64 {
        let region = ["eu", "us", "ap"][(i % 3) as usize];
        let mut r = report(&format!("p{i}"), if i % 2 == 0 { "corp" } else { "other" }, region, i / 3, i as i64 * 20_000);
        if i % 7 == 0 {
            r.outcome = "failed".into();
            r.rtt_ms = None;
            r.failure_step = Some("smtp".into());
        }
        s.insert_report(r).await.unwrap();
    }
    {
        use mailloop_coordinator::config::{CheckRules, check_spec};
        use mailloop_coordinator::storage::StoredCheck;
        let table = json!({
            "name": "corp", "from": "a@example.test", "to": "b@example.test", "interval": "5m",
            "regions": ["eu", "us", "ap"], "public": true, "display_name": "Corp mail",
            "smtp": {"host": "127.0.0.1", "security": "none"},
            "imap": {"host": "127.0.0.1", "security": "none", "username": "b@example.test", "password_env": "P"},
        });
        let rules = CheckRules { allow_inline_passwords: false, min_interval: std::time::Duration::from_secs(30) };
        let spec = check_spec("check", &table, rules).unwrap();
        s.put_check(StoredCheck { spec, revision: 3, source: Source::Api, deleted: false, updated_at_ms: 1 }).await.unwrap();
    }
    for (name, region) in [("eu-1", "eu"), ("us-1", "us"), ("ap-1", "ap")] {
        s.put_agent(StoredAgent {
            name: name.into(),
            region: region.into(),
            token_sha256: "ef".repeat(32),
            source: Source::Api,
            revoked: name == "ap-1",
            version: Some("1.2.3".into()),
            last_seen_ms: Some(77),
            connected: true,
            created_at_ms: 5,
            previous_token_sha256: (name == "us-1").then(|| "01".repeat(32)),
            previous_token_until_ms: (name == "us-1").then_some(99),
            token_in_use: name == "eu-1",
        })
        .await
        .unwrap();
    }
    // Incident 1: opened at round 1, resolved at 2. Incident 2: opened at 3, still open.
    s.store_round(verdict(1, VerdictKind::Down), vec![outage(1)]).await.unwrap();
    let resolve = |round: u64| IncidentChange::Resolve {
        kind: IncidentKind::Outage,
        key: String::new(),
        entry: TimelineEntry { at_ms: round as i64 * 1000, round: Some(round), event: "resolved".into(), verdict: Some(VerdictKind::Up), note: String::new() },
    };
    s.store_round(verdict(2, VerdictKind::Up), vec![resolve(2)]).await.unwrap();
    s.store_round(verdict(3, VerdictKind::Down), vec![outage(3)]).await.unwrap();
    let open = s.checks_with_active_incidents().await.unwrap();
    assert_eq!(open, ["corp"]);
    let open_id = s.active_incidents("corp".into()).await.unwrap()[0].id;
    s.add_incident_note(open_id, "We are on it.".into(), 3_500).await.unwrap().unwrap();
    s.acknowledge(open_id, Some("alice".into()), 3_600).await.unwrap();
    for i in 0..4 {
        s.append_audit(AuditEntry {
            seq: 0,
            at_ms: i,
            actor: "admin".into(),
            role: "admin".into(),
            source: None,
            action: "created".into(),
            object: "check".into(),
            object_id: format!("c{i}"),
            detail: Some("{}".into()),
        })
        .await
        .unwrap();
    }
    for k in 1..=3 {
        s.record_alert_attempt(attempt(k * 100, "pager", open_id, k as u32, if k < 3 { "retry" } else { "delivered" })).await.unwrap();
    }
    let before_attempts = s.alert_attempts(AlertAttemptQuery { limit: 10, ..Default::default() }).await.unwrap();
    s.put_api_token(StoredToken { name: "grafana".into(), role: "read".into(), token_sha256: "ab".repeat(32), created_at_ms: 1, created_by: "admin".into(), revoked_at_ms: None })
        .await
        .unwrap();
    s.put_join_token(JoinToken { token_sha256: "aa".into(), agent: "eu-2".into(), agent_token_sha256: "cd".repeat(32), created_at_ms: 1, expires_at_ms: i64::MAX })
        .await
        .unwrap();
    let all_incidents = IncidentQuery { limit: 100, ..Default::default() };
    let mut before_incidents = Vec::new();
    for i in s.list_incidents(all_incidents.clone()).await.unwrap() {
        before_incidents.push(s.incident(i.id).await.unwrap().unwrap());
    }
    let all_verdicts = VerdictQuery { limit: 100, ..Default::default() };
    let before_verdicts = s.query_verdicts(all_verdicts.clone()).await.unwrap().verdicts;
    let hours = AggregateQuery { check_id: "corp".into(), ..Default::default() };
    let before_hours = s.aggregates(hours.clone()).await.unwrap();
    let before_agents = s.load_agents().await.unwrap();
    let before_checks = s.load_checks().await.unwrap();
    assert!(!before_hours.is_empty() && before_verdicts.len() == 3 && before_incidents.len() == 2);
    s.close().await;
    drop(s);

    // What SQLite holds, table by table.
    let tables = ["checks", "agents", "reports", "verdicts", "verdict_days", "report_hours", "incidents", "incident_events", "audit_log", "alert_attempts", "api_tokens", "join_tokens"];
    let sqlite = rusqlite::Connection::open(dir.path().join("coordinator.db")).unwrap();
    let source: Vec<(String, u64)> = tables
        .iter()
        .map(|t| (t.to_string(), sqlite.query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| r.get::<_, i64>(0)).unwrap() as u64))
        .collect();
    drop(sqlite);
    assert_eq!(source.iter().find(|(t, _)| t == "reports").unwrap().1, 600);

    let pg = Postgres::get();
    let url = pg.database("migrate_data");
    let db = url.rsplit('/').next().unwrap().split('?').next().unwrap().to_string();
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(mailloop_tests::cluster::bin("mailloop-coordinator"))
            .arg("migrate-data")
            .arg(format!("--from=sqlite:{}", dir.path().display()))
            .arg(format!("--to={url}"))
            .args(extra)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let check_counts = |stdout: &str| {
        for (table, n) in &source {
            let printed = stdout
                .lines()
                .find_map(|l| {
                    let mut w = l.split_whitespace();
                    (w.next() == Some(table.as_str())).then(|| w.next().unwrap().parse::<u64>().unwrap())
                })
                .unwrap_or_else(|| panic!("no count for {table}: {stdout}"));
            assert_eq!(printed, *n, "{table} printed");
            let stored: u64 = pg.psql(&db, &format!("SELECT COUNT(*) FROM {table}")).parse().unwrap();
            assert_eq!(stored, *n, "{table} rows in PostgreSQL");
        }
    };
    let (code, stdout, stderr) = run(&[]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    check_counts(&stdout);
    println!("{stdout}");

    // Again: refused, nothing changed; --replace: the same rows, once.
    let (code, stdout, stderr) = run(&[]);
    assert_ne!(code, Some(0), "{stdout}{stderr}");
    assert!(stderr.contains("not empty") && stderr.contains("--replace"), "{stderr}");
    let (code, stdout, stderr) = run(&["--replace"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    check_counts(&stdout);
    // A source that is not there is refused, not created empty.
    let (code, _, stderr) = {
        let out = std::process::Command::new(mailloop_tests::cluster::bin("mailloop-coordinator"))
            .args(["migrate-data", "--from=sqlite:/nonexistent/dir", &format!("--to={url}"), "--replace"])
            .output()
            .unwrap();
        (out.status.code(), (), String::from_utf8_lossy(&out.stderr).to_string())
    };
    assert_ne!(code, Some(0));
    assert!(stderr.contains("no SQLite database"), "{stderr}");

    // The coordinator on PostgreSQL reads what it read on SQLite.
    let s = Storage::connect(&StorageSettings::Postgres(PgSettings::new(url.clone()))).await.unwrap();
    let mut after_incidents = Vec::new();
    for i in s.list_incidents(all_incidents.clone()).await.unwrap() {
        after_incidents.push(s.incident(i.id).await.unwrap().unwrap());
    }
    assert_eq!(after_incidents, before_incidents);
    assert_eq!(s.query_verdicts(all_verdicts).await.unwrap().verdicts, before_verdicts);
    assert_eq!(s.aggregates(hours).await.unwrap(), before_hours);
    let after_agents = s.load_agents().await.unwrap();
    assert_eq!(after_agents.len(), before_agents.len());
    for (a, b) in after_agents.iter().zip(&before_agents) {
        assert_eq!(StoredAgent { connected: false, ..b.clone() }, *a, "agents as they were, none connected yet");
    }
    assert_eq!(s.load_checks().await.unwrap(), before_checks);
    assert_eq!(s.alert_attempts(AlertAttemptQuery { limit: 10, ..Default::default() }).await.unwrap(), before_attempts);
    let next = s.record_alert_attempt(attempt(400, "pager", open_id, 1, "delivered")).await.unwrap();
    assert!(next > before_attempts[0].seq, "the delivery log's sequence continued");
    assert_eq!(s.count_reports().await.unwrap(), 600);
    assert_eq!(s.insert_report(report("p5", "other", "ap", 1, 100_000)).await.unwrap(), Inserted::Duplicate, "a replay of a moved report is still a replay");

    // The open incident is still open and closes as the judge closes it.
    let open = s.active_incidents("corp".into()).await.unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!((open[0].id, open[0].state), (open_id, IncidentState::Acknowledged));
    assert!(open[0].timeline.iter().any(|e| e.event == "public_note" && e.note == "We are on it."));
    let closed = s.store_round(verdict(4, VerdictKind::Up), vec![resolve(4)]).await.unwrap();
    assert!(closed.stored);
    let done = s.incident(open_id).await.unwrap().unwrap();
    assert_eq!(done.state, IncidentState::Resolved);
    assert_eq!(done.timeline.len(), open[0].timeline.len() + 1);
    assert!(s.checks_with_active_incidents().await.unwrap().is_empty());
    // A new incident after the switch: a fresh id (the sequence continued).
    s.store_round(verdict(5, VerdictKind::Down), vec![outage(5)]).await.unwrap();
    let new = s.active_incidents("corp".into()).await.unwrap();
    assert_eq!(new.len(), 1);
    assert!(new[0].id > open_id, "{} after {open_id}", new[0].id);
    s.close().await;
}
