//! Probe reports: exactly-once ingest (the probe id is the key), result
//! pages, rounds, on-demand runs, retention.

use super::aggregates::{load_aggregate, write_aggregate};
use super::engine::{Msg, Sqlite};
use super::super::model::{HourAggregate, Inserted, ReportRow, ResultPage, ResultQuery, StorageError, hour_of};
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use tokio::sync::oneshot;

/// Stores a run of reports on the writer, inside the caller's savepoint:
/// one prepared INSERT each (a replayed probe id is ignored: `Duplicate`),
/// and the new ones folded into their hourly rollups in memory, each
/// rollup read once and written once for the whole run. Either all of it
/// stands or the caller rolls the savepoint back.
pub(super) fn store_reports(conn: &Connection, rows: &[ReportRow]) -> Result<Vec<Inserted>, StorageError> {
    let mut insert = conn.prepare_cached(
        "INSERT OR IGNORE INTO reports (probe_id, check_id, revision, region, agent, round, started_at, outcome,
         rtt_ms, delivery_ms, failure_step, failure_class, report_json, received_at, request_id, out_of_window)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
    )?;
    let mut hours: HashMap<(&str, &str, i64), HourAggregate> = HashMap::new();
    let mut stored = Vec::with_capacity(rows.len());
    for row in rows {
        let n = insert.execute(params![
            row.probe_id,
            row.check_id,
            row.revision as i64,
            row.region,
            row.agent,
            row.round as i64,
            row.started_at_ms,
            row.outcome,
            row.rtt_ms,
            row.delivery_ms,
            row.failure_step,
            row.failure_class,
            row.report_json,
            row.received_at_ms,
            row.request_id,
            row.out_of_window
        ])?;
        if n == 0 {
            stored.push(Inserted::Duplicate);
            continue;
        }
        stored.push(Inserted::New);
        let hour = hour_of(row.started_at_ms);
        let agg = match hours.entry((&row.check_id, &row.region, hour)) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(load_aggregate(conn, &row.check_id, &row.region, hour)?),
        };
        agg.add(&row.outcome, row.rtt_ms, row.delivery_ms);
    }
    drop(insert);
    for agg in hours.values() {
        write_aggregate(conn, agg)?;
    }
    Ok(stored)
}

impl Sqlite {
    /// Queues one report; the returned receiver answers after the commit.
    /// Awaiting this only waits for room in the queue, so a caller can keep
    /// many reports in flight and acknowledge each as its answer arrives.
    pub async fn submit_report(
        &self,
        row: ReportRow,
    ) -> Result<oneshot::Receiver<Result<Inserted, StorageError>>, StorageError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(Msg::Report(row, tx))
            .await
            .map_err(|_| StorageError::Closed)?;
        Ok(rx)
    }

    /// Stores one report and waits until it is durable.
    pub async fn insert_report(&self, row: ReportRow) -> Result<Inserted, StorageError> {
        self.submit_report(row)
            .await?
            .await
            .map_err(|_| StorageError::Closed)?
    }

    /// Results, newest first, filtered and paged.
    pub async fn query_results(&self, q: ResultQuery) -> Result<ResultPage, StorageError> {
        self.read(move |conn| {
            let limit = q.limit.clamp(1, 1000) as i64;
            let (after_ms, after_id) = q.after.clone().unzip();
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {REPORT_COLUMNS} FROM reports
                 WHERE (?1 IS NULL OR check_id = ?1) AND (?2 IS NULL OR region = ?2)
                   AND (?3 IS NULL OR started_at >= ?3) AND (?4 IS NULL OR started_at < ?4)
                   AND (?5 IS NULL OR started_at < ?5 OR (started_at = ?5 AND probe_id < ?6))
                 ORDER BY started_at DESC, probe_id DESC LIMIT ?7"
            ))?;
            let mut found = stmt.query(params![
                q.check_id,
                q.region,
                q.since_ms,
                q.until_ms,
                after_ms,
                after_id,
                limit + 1
            ])?;
            // Rows are read one at a time and the reading stops at the
            // first that does not fit, so a page of large reports never
            // holds more than its byte budget (plus one report).
            let (mut rows, mut bytes, mut more) = (Vec::new(), 0usize, false);
            while let Some(r) = found.next()? {
                let full =
                    rows.len() as i64 == limit || q.max_bytes.is_some_and(|max| bytes >= max);
                if full {
                    more = true;
                    break;
                }
                let row = report_row(r)?;
                bytes += row.report_json.len();
                rows.push(row);
            }
            let next = if more {
                rows.last().map(|r| (r.started_at_ms, r.probe_id.clone()))
            } else {
                None
            };
            Ok(ResultPage { rows, next })
        })
        .await
    }

    /// The highest round with any report of `check_id`, and its reports.
    pub async fn latest_round(
        &self,
        check_id: String,
    ) -> Result<Option<(u64, Vec<ReportRow>)>, StorageError> {
        self.read(move |conn| {
            let round: Option<i64> = conn
                .query_row("SELECT MAX(round) FROM reports WHERE check_id = ?1 AND round > 0 AND out_of_window IS NULL", [&check_id], |r| r.get(0))
                .optional()?
                .flatten();
            let Some(round) = round else { return Ok(None) };
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {REPORT_COLUMNS} FROM reports WHERE check_id = ?1 AND round = ?2 AND out_of_window IS NULL ORDER BY region, started_at"
            ))?;
            let rows = stmt.query_map(params![check_id, round], report_row)?.collect::<Result<Vec<_>, _>>()?;
            Ok(Some((round as u64, rows)))
        })
        .await
    }

    /// Number of stored reports (for tests and the readiness page).
    pub async fn count_reports(&self) -> Result<u64, StorageError> {
        self.read(|conn| {
            Ok(conn.query_row("SELECT COUNT(*) FROM reports", [], |r| r.get::<_, i64>(0))? as u64)
        })
        .await
    }

    /// Deletes reports received before `cutoff_ms`, in small transactions.
    /// Returns how many went.
    pub async fn prune(&self, cutoff_ms: i64) -> Result<usize, StorageError> {
        self.delete_in_chunks(
            "DELETE FROM reports WHERE probe_id IN (SELECT probe_id FROM reports WHERE received_at < ?1 LIMIT ?2)",
            cutoff_ms,
        )
        .await
    }


    /// The reports of one round of a check, in the order they were received.
    pub async fn round_reports(
        &self,
        check_id: String,
        round: u64,
    ) -> Result<Vec<ReportRow>, StorageError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {REPORT_COLUMNS} FROM reports WHERE check_id = ?1 AND round = ?2 AND out_of_window IS NULL ORDER BY received_at, probe_id"
            ))?;
            let rows = stmt.query_map(params![check_id, round as i64], report_row)?.collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    /// A region's latest delivered (not failed) reports of a check, oldest
    /// first: what warms the learned baselines after a restart.
    pub async fn recent_delivered(
        &self,
        check_id: String,
        region: String,
        limit: u32,
    ) -> Result<Vec<ReportRow>, StorageError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {REPORT_COLUMNS} FROM reports
                 WHERE check_id = ?1 AND region = ?2 AND outcome != 'failed' AND round > 0 AND out_of_window IS NULL
                 ORDER BY started_at DESC, probe_id DESC LIMIT ?3"
            ))?;
            let mut rows = stmt
                .query_map(params![check_id, region, limit as i64], report_row)?
                .collect::<Result<Vec<_>, _>>()?;
            rows.reverse();
            Ok(rows)
        })
        .await
    }
}

pub(super) const REPORT_COLUMNS: &str =
    "probe_id, check_id, revision, region, agent, round, started_at, outcome, rtt_ms, delivery_ms,
    failure_step, failure_class, report_json, received_at, request_id, out_of_window";

pub(super) fn report_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ReportRow> {
    Ok(ReportRow {
        probe_id: r.get(0)?,
        check_id: r.get(1)?,
        revision: r.get::<_, i64>(2)? as u64,
        region: r.get(3)?,
        agent: r.get(4)?,
        round: r.get::<_, i64>(5)? as u64,
        started_at_ms: r.get(6)?,
        outcome: r.get(7)?,
        rtt_ms: r.get(8)?,
        delivery_ms: r.get(9)?,
        failure_step: r.get(10)?,
        failure_class: r.get(11)?,
        report_json: r.get(12)?,
        received_at_ms: r.get(13)?,
        request_id: r.get(14)?,
        out_of_window: r.get(15)?,
    })
}

// ---------------------------------------------------------------------------
// On-demand runs: the request id of a report.
//
// `reports.request_id` came after the first schema, so it is added in place
// to an existing database: a nullable column (every earlier report is a
// scheduled round, which answers no request), plus a partial index that
// holds only the few on-demand rows. Kept in this one section so other
// tables can be added elsewhere in the file without touching it.
// ---------------------------------------------------------------------------

impl Sqlite {
    /// The reports of one on-demand run, by region.
    pub async fn results_of_request(
        &self,
        request_id: String,
    ) -> Result<Vec<ReportRow>, StorageError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {REPORT_COLUMNS} FROM reports WHERE request_id = ?1 ORDER BY region, received_at"
            ))?;
            let rows = stmt
                .query_map([request_id], report_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    /// The newest on-demand run of a check that has a stored report (by
    /// the newest report's arrival), with all of that run's reports.
    pub async fn latest_run(
        &self,
        check_id: String,
    ) -> Result<Option<(String, Vec<ReportRow>)>, StorageError> {
        self.read(move |conn| {
            let request: Option<String> = conn
                .query_row(
                    "SELECT request_id FROM reports WHERE check_id = ?1 AND round = 0 AND request_id IS NOT NULL
                     ORDER BY received_at DESC, probe_id DESC LIMIT 1",
                    [&check_id],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(request) = request else { return Ok(None) };
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {REPORT_COLUMNS} FROM reports WHERE request_id = ?1 AND check_id = ?2 ORDER BY region, received_at"
            ))?;
            let rows = stmt.query_map(params![request, check_id], report_row)?.collect::<Result<Vec<_>, _>>()?;
            Ok(Some((request, rows)))
        })
        .await
    }
}

#[cfg(test)]
mod request_id_tests {
    use super::*;
    use crate::storage::DB_FILE;
    use rusqlite::Connection;

    fn row(id: &str, request_id: Option<&str>) -> ReportRow {
        ReportRow {
            probe_id: id.into(),
            check_id: "corp".into(),
            revision: 1,
            region: "eu-west".into(),
            agent: "eu-1".into(),
            round: if request_id.is_some() { 0 } else { 7 },
            started_at_ms: 1_000,
            outcome: "ok".into(),
            rtt_ms: None,
            delivery_ms: None,
            failure_step: None,
            failure_class: None,
            report_json: "{}".into(),
            received_at_ms: 2_000,
            request_id: request_id.map(str::to_string),
            out_of_window: None,
        }
    }

    #[tokio::test]
    async fn a_database_from_before_request_ids_gains_the_column_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        {
            // The reports table as the first release created it.
            let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
            conn.execute_batch(
                "CREATE TABLE reports (probe_id TEXT PRIMARY KEY, check_id TEXT NOT NULL, revision INTEGER NOT NULL,
                 region TEXT NOT NULL, agent TEXT NOT NULL, round INTEGER NOT NULL, started_at INTEGER NOT NULL,
                 outcome TEXT NOT NULL, rtt_ms REAL, delivery_ms REAL, failure_step TEXT, failure_class TEXT,
                 report_json TEXT NOT NULL, received_at INTEGER NOT NULL);
                 INSERT INTO reports VALUES ('ml-old', 'corp', 1, 'eu-west', 'eu-1', 5, 1000, 'ok', NULL, NULL, NULL, NULL, '{}', 2000);",
            )
            .unwrap();
        }
        let s = Sqlite::open(dir.path()).unwrap();
        s.insert_report(row("ml-run", Some("run-1-abcd"))).await.unwrap();
        s.insert_report(row("ml-round", None)).await.unwrap();
        let found = s.results_of_request("run-1-abcd".into()).await.unwrap();
        assert_eq!(found, [row("ml-run", Some("run-1-abcd"))]);
        assert_eq!(s.count_reports().await.unwrap(), 3);
        let (round, rows) = s.latest_round("corp".into()).await.unwrap().unwrap();
        assert_eq!(round, 7, "an on-demand run (round 0) is not a round");
        assert_eq!(rows[0].request_id, None);
        s.close().await;
        // Opening again finds the column there and changes nothing.
        let s = Sqlite::open(dir.path()).unwrap();
        assert_eq!(s.results_of_request("run-1-abcd".into()).await.unwrap().len(), 1);
        s.close().await;
    }
}

#[cfg(test)]
mod batch_tests {
    use super::*;
    use crate::storage::AggregateQuery;

    fn row(id: &str, region: &str, started_at_ms: i64) -> ReportRow {
        ReportRow {
            probe_id: id.into(),
            check_id: "corp".into(),
            revision: 1,
            region: region.into(),
            agent: format!("{region}-1"),
            round: 7,
            started_at_ms,
            outcome: "ok".into(),
            rtt_ms: Some(30.0),
            delivery_ms: Some(20.0),
            failure_step: None,
            failure_class: None,
            report_json: "{}".into(),
            received_at_ms: started_at_ms + 1,
            request_id: None,
            out_of_window: None,
        }
    }

    /// Reports queued while the writer is held commit in one batch (two
    /// runs of reports with another write between them): a probe
    /// id twice in it is stored once, a report whose insert fails fails
    /// alone (the run is redone report by report), and each hour's rollup
    /// counts exactly the reports stored, added to what it held before.
    #[tokio::test]
    async fn a_run_of_reports_is_stored_once_each_with_its_rollups_and_a_failure_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let s = Sqlite::open(dir.path()).unwrap();
        let hour = 3_600_000 * 500_000;
        // One report before, so the run adds to a stored rollup.
        assert_eq!(s.insert_report(row("before", "eu", hour + 5)).await.unwrap(), Inserted::New);
        s.write(|conn| {
            conn.execute_batch(
                "CREATE TEMP TRIGGER poison BEFORE INSERT ON reports WHEN NEW.probe_id = 'poison'
                 BEGIN SELECT RAISE(ABORT, 'poisoned'); END;",
            )?;
            Ok(())
        })
        .await
        .unwrap();
        // Hold the writer so everything below lands in the same batch.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let blocker = s
            .submit(move |_| {
                held.recv().ok();
                Ok(())
            })
            .await
            .unwrap();
        let ids = [("a", "eu"), ("b", "us"), ("poison", "eu"), ("a", "eu"), ("c", "eu"), ("before", "eu")];
        let mut answers = Vec::new();
        let mut between = None;
        for (i, (id, region)) in ids.into_iter().enumerate() {
            if i == 3 {
                // Another write between two runs of reports of the batch.
                between = Some(s.submit(|_| Ok(())).await.unwrap());
            }
            answers.push(s.submit_report(row(id, region, hour + 10)).await.unwrap());
        }
        release.send(()).unwrap();
        blocker.await.unwrap().unwrap();
        between.unwrap().await.unwrap().unwrap();
        let mut got = Vec::new();
        for a in answers {
            got.push(a.await.unwrap().map_err(|e| e.to_string()));
        }
        assert_eq!(got[0], Ok(Inserted::New));
        assert_eq!(got[1], Ok(Inserted::New));
        assert!(got[2].as_ref().is_err_and(|e| e.contains("poisoned")), "{:?}", got[2]);
        assert_eq!(got[3], Ok(Inserted::Duplicate), "the same probe id later in the run");
        assert_eq!(got[4], Ok(Inserted::New));
        assert_eq!(got[5], Ok(Inserted::Duplicate), "a probe id stored by an earlier batch");
        assert_eq!(s.count_reports().await.unwrap(), 4);
        let hours = s
            .aggregates(AggregateQuery { check_id: "corp".into(), region: None, since_ms: None })
            .await
            .unwrap();
        let ok: Vec<(String, u64)> = hours.iter().map(|h| (h.region.clone(), h.ok)).collect();
        assert_eq!(ok, [("eu".to_string(), 3), ("us".to_string(), 1)]);
        assert_eq!(hours[0].rtt.count, 3);
        s.close().await;
    }
}
