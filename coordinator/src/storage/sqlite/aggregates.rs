// ───────────────────────── Hourly aggregates ─────────────────────────
//
// Raw reports are kept for `retention` (30 days by default); an SRE graphs
// a year. So every stored report is also folded into one row per check ×
// region × hour (by `started_at`), kept for `aggregate_retention`.
//
// The rollup is updated by the writer, in the same savepoint as the
// reports' inserts (summed in memory over the run of reports a batch
// holds, then read and written once per check × region × hour), and only
// when the insert was new — not by the pruner
// before it deletes. That way a replayed report is counted once, a report
// replayed hours late (an agent back from an outage) lands in its own
// hour, the aggregates exist from the first report on (the API never has
// to merge raw rows and rollups), and nothing has to re-read 30-day-old
// rows. The cost is one primary-key lookup and one upsert per check ×
// region × hour per batch, in a transaction that is already open; `make bench` measures ingest with it on.

use super::engine::Sqlite;
use super::super::model::{AggregateQuery, AggregateSpanQuery, HOUR_MS, HourAggregate, RTT_BUCKETS_MS, StorageError, TimingStats, hour_of};
use rusqlite::{Connection, OptionalExtension, params};

const AGGREGATE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS report_hours (
    check_id       TEXT NOT NULL,
    region         TEXT NOT NULL,
    hour           INTEGER NOT NULL,
    ok             INTEGER NOT NULL,
    degraded       INTEGER NOT NULL,
    failed         INTEGER NOT NULL,
    rtt_count      INTEGER NOT NULL,
    rtt_sum        REAL NOT NULL,
    rtt_min        REAL,
    rtt_max        REAL,
    rtt_buckets    TEXT NOT NULL,
    delivery_count INTEGER NOT NULL,
    delivery_sum   REAL NOT NULL,
    delivery_min   REAL,
    delivery_max   REAL,
    delivery_buckets TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (check_id, region, hour)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS report_hours_by_hour ON report_hours (hour);
";

pub(super) const AGGREGATE_COLUMNS: &str =
    "check_id, region, hour, ok, degraded, failed, rtt_count, rtt_sum, rtt_min, rtt_max,
    rtt_buckets, delivery_count, delivery_sum, delivery_min, delivery_max, delivery_buckets";

/// Bucket counts as stored: `3,0,1,…` (an empty text: none counted).
fn buckets_of(text: &str) -> [u64; RTT_BUCKETS_MS.len() + 1] {
    let mut buckets = [0u64; RTT_BUCKETS_MS.len() + 1];
    for (slot, n) in buckets.iter_mut().zip(text.split(',')) {
        *slot = n.parse().unwrap_or(0);
    }
    buckets
}

fn buckets_text(buckets: &[u64]) -> String {
    buckets.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

pub(super) fn aggregate_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<HourAggregate> {
    Ok(HourAggregate {
        check_id: r.get(0)?,
        region: r.get(1)?,
        hour_ms: r.get(2)?,
        ok: r.get::<_, i64>(3)? as u64,
        degraded: r.get::<_, i64>(4)? as u64,
        failed: r.get::<_, i64>(5)? as u64,
        rtt: TimingStats {
            count: r.get::<_, i64>(6)? as u64,
            sum_ms: r.get(7)?,
            min_ms: r.get(8)?,
            max_ms: r.get(9)?,
        },
        rtt_buckets: buckets_of(&r.get::<_, String>(10)?),
        delivery: TimingStats {
            count: r.get::<_, i64>(11)? as u64,
            sum_ms: r.get(12)?,
            min_ms: r.get(13)?,
            max_ms: r.get(14)?,
        },
        delivery_buckets: buckets_of(&r.get::<_, String>(15)?),
    })
}

/// The stored rollup of a check x region x hour, or an empty one. Runs on
/// the writer, inside the savepoint of the reports being folded in: the
/// rollup and the rows commit (or not) together.
pub(super) fn load_aggregate(conn: &Connection, check_id: &str, region: &str, hour: i64) -> Result<HourAggregate, StorageError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {AGGREGATE_COLUMNS} FROM report_hours WHERE check_id = ?1 AND region = ?2 AND hour = ?3"
        ))?
        .query_row(params![check_id, region, hour], aggregate_row)
        .optional()?
        .unwrap_or_else(|| HourAggregate::empty(check_id, region, hour)))
}

pub(super) fn write_aggregate(conn: &Connection, a: &HourAggregate) -> rusqlite::Result<()> {
    conn.prepare_cached(&format!(
        "INSERT OR REPLACE INTO report_hours ({AGGREGATE_COLUMNS})
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"
    ))?
    .execute(params![
        a.check_id,
        a.region,
        a.hour_ms,
        a.ok as i64,
        a.degraded as i64,
        a.failed as i64,
        a.rtt.count as i64,
        a.rtt.sum_ms,
        a.rtt.min_ms,
        a.rtt.max_ms,
        buckets_text(&a.rtt_buckets),
        a.delivery.count as i64,
        a.delivery.sum_ms,
        a.delivery.min_ms,
        a.delivery.max_ms,
        buckets_text(&a.delivery_buckets)
    ])?;
    Ok(())
}

/// Creates the aggregate table; when it is new on a database that already
/// holds reports (an upgrade), rolls those reports up once, so the first
/// month after an upgrade is not a hole in the year.
pub(super) fn open_aggregates(conn: &Connection) -> rusqlite::Result<()> {
    let existed: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'report_hours'",
        [],
        |r| r.get(0),
    )?;
    conn.execute_batch(AGGREGATE_SCHEMA)?;
    if existed {
        // Hours stored before delivery times had a histogram keep none
        // (the status page shows their mean).
        let has_delivery_buckets: bool = conn.query_row(
            "SELECT COUNT(*) > 0 FROM pragma_table_info('report_hours') WHERE name = 'delivery_buckets'",
            [],
            |r| r.get(0),
        )?;
        if !has_delivery_buckets {
            conn.execute_batch("ALTER TABLE report_hours ADD COLUMN delivery_buckets TEXT NOT NULL DEFAULT ''")?;
        }
        return Ok(());
    }
    let mut hours: std::collections::HashMap<(String, String, i64), HourAggregate> =
        std::collections::HashMap::new();
    let mut stmt = conn.prepare(
        "SELECT check_id, region, started_at, outcome, rtt_ms, delivery_ms FROM reports",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let (check, region, started): (String, String, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
        let hour = hour_of(started);
        hours
            .entry((check.clone(), region.clone(), hour))
            .or_insert_with(|| HourAggregate::empty(&check, &region, hour))
            .add(&r.get::<_, String>(3)?, r.get(4)?, r.get(5)?);
    }
    drop(rows);
    drop(stmt);
    if hours.is_empty() {
        return Ok(());
    }
    let tx = conn.unchecked_transaction()?;
    for a in hours.values() {
        write_aggregate(&tx, a)?;
    }
    tx.commit()?;
    tracing::info!(
        hours = hours.len(),
        "rolled up the reports stored before aggregates existed"
    );
    Ok(())
}

impl Sqlite {
    /// Hourly aggregates of one check, oldest hour first (then by region).
    pub async fn aggregates(&self, q: AggregateQuery) -> Result<Vec<HourAggregate>, StorageError> {
        self.read(move |conn| {
            let since = q.since_ms.map(hour_of);
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {AGGREGATE_COLUMNS} FROM report_hours
                 WHERE check_id = ?1 AND (?2 IS NULL OR region = ?2) AND (?3 IS NULL OR hour >= ?3)
                 ORDER BY hour, region"
            ))?;
            let rows = stmt
                .query_map(params![q.check_id, q.region, since], aggregate_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    /// Hourly aggregates of several checks since an hour, by check, region
    /// and hour.
    pub async fn aggregates_of(&self, q: AggregateSpanQuery) -> Result<Vec<HourAggregate>, StorageError> {
        self.read(move |conn| {
            let ids = serde_json::to_string(&q.check_ids).expect("strings");
            // Through the primary key (check, region, hour): each check's
            // regions are found one seek each (a loose index scan: the next
            // region after the last), then each (check, region) is one
            // range from `since`. The hour index instead read every check's
            // rows of the span (a check page of one check among 100: 84,000
            // entries, each looked up in the table, for 840 rows).
            let mut stmt = conn.prepare_cached(&format!(
                "WITH RECURSIVE regions (c, r) AS (
                     SELECT ids.value, (SELECT MIN(region) FROM report_hours WHERE check_id = ids.value)
                     FROM json_each(?1) AS ids
                     UNION ALL
                     SELECT c, (SELECT MIN(h.region) FROM report_hours h WHERE h.check_id = c AND h.region > r)
                     FROM regions WHERE r IS NOT NULL
                 )
                 SELECT {AGGREGATE_COLUMNS} FROM regions CROSS JOIN report_hours
                     ON check_id = c AND region = r AND hour >= ?2
                 ORDER BY check_id, region, hour"
            ))?;
            let rows = stmt
                .query_map(params![ids, hour_of(q.since_ms)], aggregate_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    /// Deletes the aggregates of hours that ended before `cutoff_ms`, in
    /// small transactions. Returns how many went.
    pub async fn prune_aggregates(&self, cutoff_ms: i64) -> Result<usize, StorageError> {
        // An hour has ended before the cutoff when hour + HOUR_MS <= cutoff.
        self.delete_in_chunks(
            "DELETE FROM report_hours WHERE (check_id, region, hour) IN
             (SELECT check_id, region, hour FROM report_hours WHERE hour <= ?1 LIMIT ?2)",
            cutoff_ms - HOUR_MS,
        )
        .await
    }
}
