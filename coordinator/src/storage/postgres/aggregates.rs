//! Hourly aggregates on PostgreSQL. A batch's new reports are folded into
//! their hours as deltas added in SQL (`ON CONFLICT ... DO UPDATE SET ok =
//! ok + EXCLUDED.ok`), so replicas writing the same hour never lose each
//! other's counts.

use super::super::model::{AggregateQuery, AggregateSpanQuery, HOUR_MS, HourAggregate, RTT_BUCKETS_MS, StorageError, TimingStats, hour_of};
use super::Postgres;
use tokio_postgres::Row;

const AGGREGATE_COLUMNS: &str = "check_id, region, hour, ok, degraded, failed, rtt_count, rtt_sum, rtt_min, rtt_max,
    rtt_buckets, delivery_count, delivery_sum, delivery_min, delivery_max, delivery_buckets";

/// Bucket counts as stored (an empty array: none counted).
fn buckets_of(stored: Vec<i64>) -> [u64; RTT_BUCKETS_MS.len() + 1] {
    let mut buckets = [0u64; RTT_BUCKETS_MS.len() + 1];
    for (slot, n) in buckets.iter_mut().zip(stored) {
        *slot = n.max(0) as u64;
    }
    buckets
}

/// An array literal (`{1,0,2}`) per hour.
fn literals(hours: &[&HourAggregate], f: fn(&HourAggregate) -> &[u64]) -> Vec<String> {
    hours
        .iter()
        .map(|a| format!("{{{}}}", f(a).iter().map(u64::to_string).collect::<Vec<_>>().join(",")))
        .collect()
}

fn aggregate_row(r: &Row) -> HourAggregate {
    HourAggregate {
        check_id: r.get(0),
        region: r.get(1),
        hour_ms: r.get(2),
        ok: r.get::<_, i64>(3) as u64,
        degraded: r.get::<_, i64>(4) as u64,
        failed: r.get::<_, i64>(5) as u64,
        rtt: TimingStats {
            count: r.get::<_, i64>(6) as u64,
            sum_ms: r.get(7),
            min_ms: r.get(8),
            max_ms: r.get(9),
        },
        rtt_buckets: buckets_of(r.get(10)),
        delivery: TimingStats {
            count: r.get::<_, i64>(11) as u64,
            sum_ms: r.get(12),
            min_ms: r.get(13),
            max_ms: r.get(14),
        },
        delivery_buckets: buckets_of(r.get(15)),
    }
}

/// Adds each hour's delta (the batch's new reports; one entry per
/// check, region and hour) to the stored hours, in one statement: a batch
/// from agents in many regions touches as many hours, and a statement (and
/// a round trip) each was most of a batch's time. The buckets travel as
/// array literals (`{1,0,2}`), one text per hour, as UNNEST flattens a
/// two-dimensional array.
pub(super) async fn add_hours(
    tx: &deadpool_postgres::Transaction<'_>,
    hours: &[&HourAggregate],
) -> Result<(), StorageError> {
    if hours.is_empty() {
        return Ok(());
    }
    let stmt = tx
        .prepare_cached(&format!(
            "INSERT INTO report_hours AS h ({AGGREGATE_COLUMNS})
             SELECT c, r, hr, o, d, f, rc, rs, rmin, rmax, rb::int8[], dc, ds, dmin, dmax, db::int8[]
             FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::int8[], $6::int8[], $7::int8[],
               $8::float8[], $9::float8[], $10::float8[], $11::text[], $12::int8[], $13::float8[], $14::float8[],
               $15::float8[], $16::text[]) AS t(c, r, hr, o, d, f, rc, rs, rmin, rmax, rb, dc, ds, dmin, dmax, db)
             ON CONFLICT (check_id, region, hour) DO UPDATE SET
               ok = h.ok + EXCLUDED.ok, degraded = h.degraded + EXCLUDED.degraded, failed = h.failed + EXCLUDED.failed,
               rtt_count = h.rtt_count + EXCLUDED.rtt_count, rtt_sum = h.rtt_sum + EXCLUDED.rtt_sum,
               rtt_min = LEAST(h.rtt_min, EXCLUDED.rtt_min), rtt_max = GREATEST(h.rtt_max, EXCLUDED.rtt_max),
               rtt_buckets = ARRAY(SELECT COALESCE(x, 0) + COALESCE(y, 0)
                                   FROM unnest(h.rtt_buckets, EXCLUDED.rtt_buckets) WITH ORDINALITY AS t(x, y, i) ORDER BY i),
               delivery_count = h.delivery_count + EXCLUDED.delivery_count,
               delivery_sum = h.delivery_sum + EXCLUDED.delivery_sum,
               delivery_min = LEAST(h.delivery_min, EXCLUDED.delivery_min),
               delivery_max = GREATEST(h.delivery_max, EXCLUDED.delivery_max),
               delivery_buckets = ARRAY(SELECT COALESCE(x, 0) + COALESCE(y, 0)
                                   FROM unnest(h.delivery_buckets, EXCLUDED.delivery_buckets) WITH ORDINALITY AS t(x, y, i) ORDER BY i)"
        ))
        .await?;
    let text = |f: fn(&HourAggregate) -> &String| hours.iter().map(|a| f(a)).collect::<Vec<_>>();
    let int = |f: fn(&HourAggregate) -> i64| hours.iter().map(|a| f(a)).collect::<Vec<_>>();
    let float = |f: fn(&HourAggregate) -> f64| hours.iter().map(|a| f(a)).collect::<Vec<_>>();
    let opt = |f: fn(&HourAggregate) -> Option<f64>| hours.iter().map(|a| f(a)).collect::<Vec<_>>();
    tx.execute(
        &stmt,
        &[
            &text(|a| &a.check_id),
            &text(|a| &a.region),
            &int(|a| a.hour_ms),
            &int(|a| a.ok as i64),
            &int(|a| a.degraded as i64),
            &int(|a| a.failed as i64),
            &int(|a| a.rtt.count as i64),
            &float(|a| a.rtt.sum_ms),
            &opt(|a| a.rtt.min_ms),
            &opt(|a| a.rtt.max_ms),
            &literals(hours, |a| &a.rtt_buckets),
            &int(|a| a.delivery.count as i64),
            &float(|a| a.delivery.sum_ms),
            &opt(|a| a.delivery.min_ms),
            &opt(|a| a.delivery.max_ms),
            &literals(hours, |a| &a.delivery_buckets),
        ],
    )
    .await?;
    Ok(())
}

impl Postgres {
    /// Hourly aggregates of one check, oldest hour first (then by region).
    pub async fn aggregates(&self, q: AggregateQuery) -> Result<Vec<HourAggregate>, StorageError> {
        let client = self.client().await?;
        let since = q.since_ms.map(hour_of);
        let rows = client
            .query(
                &format!(
                    "SELECT {AGGREGATE_COLUMNS} FROM report_hours
                     WHERE check_id = $1 AND ($2::text IS NULL OR region = $2) AND ($3::int8 IS NULL OR hour >= $3)
                     ORDER BY hour, region"
                ),
                &[&q.check_id, &q.region, &since],
            )
            .await?;
        Ok(rows.iter().map(aggregate_row).collect())
    }

    /// Hourly aggregates of several checks since an hour, by check, region
    /// and hour.
    pub async fn aggregates_of(&self, q: AggregateSpanQuery) -> Result<Vec<HourAggregate>, StorageError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {AGGREGATE_COLUMNS} FROM report_hours
                     WHERE check_id = ANY($1) AND hour >= $2
                     ORDER BY check_id, region, hour"
                ),
                &[&q.check_ids, &hour_of(q.since_ms)],
            )
            .await?;
        Ok(rows.iter().map(aggregate_row).collect())
    }

    /// Deletes the aggregates of hours that ended before `cutoff_ms`.
    pub async fn prune_aggregates(&self, cutoff_ms: i64) -> Result<usize, StorageError> {
        self.delete_in_chunks(
            "DELETE FROM report_hours WHERE (check_id, region, hour) IN
             (SELECT check_id, region, hour FROM report_hours WHERE hour <= $1 LIMIT $2)",
            cutoff_ms - HOUR_MS,
        )
        .await
    }
}
