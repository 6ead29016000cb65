//! Probe reports on PostgreSQL: batched exactly-once ingest, result pages,
//! rounds, on-demand runs, retention.

use super::super::model::{HourAggregate, Inserted, ReportRow, ResultPage, ResultQuery, StorageError, hour_of};
use super::{MAX_BATCH, Postgres, aggregates};
use deadpool_postgres::Pool;
use tokio_stream::StreamExt;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_postgres::Row;

/// One report waiting for a writer, and who to tell once it is committed.
pub(super) struct Job {
    row: ReportRow,
    reply: oneshot::Sender<Result<Inserted, StorageError>>,
}

/// Starts `n` writer tasks sharing one queue.
pub(super) fn start_writers(
    pool: Pool,
    n: usize,
    queue: usize,
) -> (mpsc::Sender<Job>, Vec<tokio::task::JoinHandle<()>>) {
    let (tx, rx) = mpsc::channel(queue);
    let rx = Arc::new(Mutex::new(rx));
    let handles = (0..n)
        .map(|_| {
            let (pool, rx) = (pool.clone(), rx.clone());
            tokio::spawn(async move { writer(pool, rx).await })
        })
        .collect();
    (tx, handles)
}

async fn writer(pool: Pool, rx: Arc<Mutex<mpsc::Receiver<Job>>>) {
    loop {
        let mut batch = Vec::new();
        {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else { return };
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
            }
        }
        // Sorted by probe id, so concurrent batches (here or on another
        // replica) take row locks in one order and cannot deadlock.
        batch.sort_by(|a, b| a.row.probe_id.cmp(&b.row.probe_id));
        match store_batch(&pool, &batch).await {
            Ok(new) => {
                let mut answered = HashSet::new();
                for job in batch {
                    // The first of two copies in one batch is the new one.
                    let fresh = new.contains(&job.row.probe_id) && answered.insert(job.row.probe_id.clone());
                    let _ = job.reply.send(Ok(if fresh { Inserted::New } else { Inserted::Duplicate }));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, jobs = batch.len(), "storage commit failed; the batch is answered with the error");
                let text = e.to_string();
                for job in batch {
                    let _ = job.reply.send(Err(StorageError::Commit(text.clone())));
                }
            }
        }
    }
}

const INSERT: &str = "INSERT INTO reports (probe_id, check_id, revision, region, agent, round, started_at, outcome,
     rtt_ms, delivery_ms, failure_step, failure_class, report_json, received_at, request_id, out_of_window)
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[], $6::int8[], $7::int8[],
       $8::text[], $9::float8[], $10::float8[], $11::text[], $12::text[], $13::text[], $14::int8[], $15::text[], $16::text[])
     ON CONFLICT (probe_id) DO NOTHING
     RETURNING probe_id";

/// Inserts a batch and folds the new rows into their hours, in one
/// transaction. Returns the probe ids that were new.
async fn store_batch(pool: &Pool, batch: &[Job]) -> Result<HashSet<String>, StorageError> {
    let rows: Vec<&ReportRow> = batch.iter().map(|j| &j.row).collect();
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let stmt = tx.prepare_cached(INSERT).await?;
    let col = |f: fn(&ReportRow) -> String| rows.iter().map(|r| f(r)).collect::<Vec<_>>();
    let opt = |f: fn(&ReportRow) -> Option<String>| rows.iter().map(|r| f(r)).collect::<Vec<_>>();
    let num = |f: fn(&ReportRow) -> i64| rows.iter().map(|r| f(r)).collect::<Vec<_>>();
    let float = |f: fn(&ReportRow) -> Option<f64>| rows.iter().map(|r| f(r)).collect::<Vec<_>>();
    let (ids, checks, revisions) = (col(|r| r.probe_id.clone()), col(|r| r.check_id.clone()), num(|r| r.revision as i64));
    let (regions, agents, rounds) = (col(|r| r.region.clone()), col(|r| r.agent.clone()), num(|r| r.round as i64));
    let (started, outcomes) = (num(|r| r.started_at_ms), col(|r| r.outcome.clone()));
    let (rtt, delivery) = (float(|r| r.rtt_ms), float(|r| r.delivery_ms));
    let (step, class) = (opt(|r| r.failure_step.clone()), opt(|r| r.failure_class.clone()));
    let (json, received) = (col(|r| r.report_json.clone()), num(|r| r.received_at_ms));
    let (request, window) = (opt(|r| r.request_id.clone()), opt(|r| r.out_of_window.clone()));
    let new: HashSet<String> = tx
        .query(
            &stmt,
            &[
                &ids, &checks, &revisions, &regions, &agents, &rounds, &started, &outcomes, &rtt, &delivery, &step,
                &class, &json, &received, &request, &window,
            ],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut hours: BTreeMap<(String, String, i64), HourAggregate> = BTreeMap::new();
    let mut seen = HashSet::new();
    for r in &rows {
        if new.contains(&r.probe_id) && seen.insert(&r.probe_id) {
            let hour = hour_of(r.started_at_ms);
            hours
                .entry((r.check_id.clone(), r.region.clone(), hour))
                .or_insert_with(|| HourAggregate::empty(&r.check_id, &r.region, hour))
                .add(&r.outcome, r.rtt_ms, r.delivery_ms);
        }
    }
    // In key order (the BTreeMap's), as the reports: one lock order everywhere.
    aggregates::add_hours(&tx, &hours.values().collect::<Vec<_>>()).await?;
    tx.commit().await?;
    Ok(new)
}

pub(super) const REPORT_COLUMNS: &str =
    "probe_id, check_id, revision, region, agent, round, started_at, outcome, rtt_ms, delivery_ms,
    failure_step, failure_class, report_json, received_at, request_id, out_of_window";

pub(super) fn report_row(r: &Row) -> ReportRow {
    ReportRow {
        probe_id: r.get(0),
        check_id: r.get(1),
        revision: r.get::<_, i64>(2) as u64,
        region: r.get(3),
        agent: r.get(4),
        round: r.get::<_, i64>(5) as u64,
        started_at_ms: r.get(6),
        outcome: r.get(7),
        rtt_ms: r.get(8),
        delivery_ms: r.get(9),
        failure_step: r.get(10),
        failure_class: r.get(11),
        report_json: r.get(12),
        received_at_ms: r.get(13),
        request_id: r.get(14),
        out_of_window: r.get(15),
    }
}

impl Postgres {
    /// Queues one report; the returned receiver answers after the commit.
    pub async fn submit_report(
        &self,
        row: ReportRow,
    ) -> Result<oneshot::Receiver<Result<Inserted, StorageError>>, StorageError> {
        let writer = self.writer.lock().expect("writer lock").clone();
        let Some(writer) = writer else {
            return Err(StorageError::Closed);
        };
        let (reply, rx) = oneshot::channel();
        writer.send(Job { row, reply }).await.map_err(|_| StorageError::Closed)?;
        Ok(rx)
    }

    /// Stores one report and waits until it is durable.
    pub async fn insert_report(&self, row: ReportRow) -> Result<Inserted, StorageError> {
        self.submit_report(row).await?.await.map_err(|_| StorageError::Closed)?
    }

    /// Results, newest first, filtered and paged.
    pub async fn query_results(&self, q: ResultQuery) -> Result<ResultPage, StorageError> {
        let client = self.client().await?;
        let limit = q.limit.clamp(1, 1000) as i64;
        let (after_ms, after_id) = q.after.clone().unzip();
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {REPORT_COLUMNS} FROM reports
                 WHERE ($1::text IS NULL OR check_id = $1) AND ($2::text IS NULL OR region = $2)
                   AND ($3::int8 IS NULL OR started_at >= $3) AND ($4::int8 IS NULL OR started_at < $4)
                   AND ($5::int8 IS NULL OR started_at < $5 OR (started_at = $5 AND probe_id < $6::text))
                 ORDER BY started_at DESC, probe_id DESC LIMIT $7"
            ))
            .await?;
        let limit1 = limit + 1;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] =
            [&q.check_id, &q.region, &q.since_ms, &q.until_ms, &after_ms, &after_id, &limit1];
        let found = client.query_raw(&stmt, params).await?;
        let mut found = std::pin::pin!(found);
        // Rows are read one at a time and the reading stops at the first
        // that does not fit (as on SQLite).
        let (mut rows, mut bytes, mut more) = (Vec::new(), 0usize, false);
        while let Some(r) = found.next().await {
            let r = r?;
            let full = rows.len() as i64 == limit || q.max_bytes.is_some_and(|max| bytes >= max);
            if full {
                more = true;
                break;
            }
            let row = report_row(&r);
            bytes += row.report_json.len();
            rows.push(row);
        }
        let next = if more { rows.last().map(|r| (r.started_at_ms, r.probe_id.clone())) } else { None };
        Ok(ResultPage { rows, next })
    }

    /// The highest round with any report of `check_id`, and its reports.
    pub async fn latest_round(&self, check_id: String) -> Result<Option<(u64, Vec<ReportRow>)>, StorageError> {
        let client = self.client().await?;
        let round: Option<i64> = client
            .query_one(
                "SELECT MAX(round) FROM reports WHERE check_id = $1 AND round > 0 AND out_of_window IS NULL",
                &[&check_id],
            )
            .await?
            .get(0);
        let Some(round) = round else { return Ok(None) };
        let rows = client
            .query(
                &format!("SELECT {REPORT_COLUMNS} FROM reports WHERE check_id = $1 AND round = $2 AND out_of_window IS NULL ORDER BY region, started_at"),
                &[&check_id, &round],
            )
            .await?;
        Ok(Some((round as u64, rows.iter().map(report_row).collect())))
    }

    /// Number of stored reports.
    pub async fn count_reports(&self) -> Result<u64, StorageError> {
        let client = self.client().await?;
        Ok(client.query_one("SELECT COUNT(*) FROM reports", &[]).await?.get::<_, i64>(0) as u64)
    }

    /// Deletes reports received before `cutoff_ms`, in small transactions.
    pub async fn prune(&self, cutoff_ms: i64) -> Result<usize, StorageError> {
        self.delete_in_chunks(
            "DELETE FROM reports WHERE probe_id IN (SELECT probe_id FROM reports WHERE received_at < $1 LIMIT $2)",
            cutoff_ms,
        )
        .await
    }

    /// The reports of one on-demand run, by region.
    pub async fn results_of_request(&self, request_id: String) -> Result<Vec<ReportRow>, StorageError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!("SELECT {REPORT_COLUMNS} FROM reports WHERE request_id = $1 ORDER BY region, received_at"),
                &[&request_id],
            )
            .await?;
        Ok(rows.iter().map(report_row).collect())
    }

    /// The newest on-demand run of a check that has a stored report, with its reports.
    pub async fn latest_run(&self, check_id: String) -> Result<Option<(String, Vec<ReportRow>)>, StorageError> {
        let client = self.client().await?;
        let request: Option<String> = client
            .query_opt(
                "SELECT request_id FROM reports WHERE check_id = $1 AND round = 0 AND request_id IS NOT NULL
                 ORDER BY received_at DESC, probe_id DESC LIMIT 1",
                &[&check_id],
            )
            .await?
            .map(|r| r.get(0));
        let Some(request) = request else { return Ok(None) };
        let rows = client
            .query(
                &format!("SELECT {REPORT_COLUMNS} FROM reports WHERE request_id = $1 AND check_id = $2 ORDER BY region, received_at"),
                &[&request, &check_id],
            )
            .await?;
        Ok(Some((request, rows.iter().map(report_row).collect())))
    }

    /// The reports of one round of a check, in the order they were received.
    pub async fn round_reports(&self, check_id: String, round: u64) -> Result<Vec<ReportRow>, StorageError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!("SELECT {REPORT_COLUMNS} FROM reports WHERE check_id = $1 AND round = $2 AND out_of_window IS NULL ORDER BY received_at, probe_id"),
                &[&check_id, &(round as i64)],
            )
            .await?;
        Ok(rows.iter().map(report_row).collect())
    }

    /// A region's latest delivered reports of a check, oldest first.
    pub async fn recent_delivered(
        &self,
        check_id: String,
        region: String,
        limit: u32,
    ) -> Result<Vec<ReportRow>, StorageError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {REPORT_COLUMNS} FROM reports
                     WHERE check_id = $1 AND region = $2 AND outcome != 'failed' AND round > 0 AND out_of_window IS NULL
                     ORDER BY started_at DESC, probe_id DESC LIMIT $3"
                ),
                &[&check_id, &region, &(limit as i64)],
            )
            .await?;
        let mut out: Vec<ReportRow> = rows.iter().map(report_row).collect();
        out.reverse();
        Ok(out)
    }
}
