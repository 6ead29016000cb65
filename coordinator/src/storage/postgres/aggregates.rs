//! Hourly aggregates on PostgreSQL. A batch's new reports are folded into
//! their hours as deltas added in SQL (`ON CONFLICT ... DO UPDATE SET ok =
//! ok + EXCLUDED.ok`), so replicas writing the same hour never lose each
//! other's counts.

use super::super::model::{AggregateQuery, AggregateSpanQuery, HOUR_MS, HourAggregate, RTT_BUCKETS_MS, StorageError, TimingStats, hour_of};
use super::Postgres;
use tokio_postgres::Row;

const AGGREGATE_COLUMNS: &str = "check_id, region, hour, ok, degraded, failed, rtt_count, rtt_sum, rtt_min, rtt_max,
    rtt_buckets, delivery_count, delivery_sum, delivery_min, delivery_max";

fn aggregate_row(r: &Row) -> HourAggregate {
    let stored: Vec<i64> = r.get(10);
    let mut rtt_buckets = [0u64; RTT_BUCKETS_MS.len() + 1];
    for (slot, n) in rtt_buckets.iter_mut().zip(stored) {
        *slot = n.max(0) as u64;
    }
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
        rtt_buckets,
        delivery: TimingStats {
            count: r.get::<_, i64>(11) as u64,
            sum_ms: r.get(12),
            min_ms: r.get(13),
            max_ms: r.get(14),
        },
    }
}

/// Adds one hour's delta (the batch's new reports) to the stored hour.
pub(super) async fn add_hour(
    tx: &deadpool_postgres::Transaction<'_>,
    a: &HourAggregate,
) -> Result<(), StorageError> {
    let stmt = tx
        .prepare_cached(&format!(
            "INSERT INTO report_hours AS h ({AGGREGATE_COLUMNS})
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
             ON CONFLICT (check_id, region, hour) DO UPDATE SET
               ok = h.ok + EXCLUDED.ok, degraded = h.degraded + EXCLUDED.degraded, failed = h.failed + EXCLUDED.failed,
               rtt_count = h.rtt_count + EXCLUDED.rtt_count, rtt_sum = h.rtt_sum + EXCLUDED.rtt_sum,
               rtt_min = LEAST(h.rtt_min, EXCLUDED.rtt_min), rtt_max = GREATEST(h.rtt_max, EXCLUDED.rtt_max),
               rtt_buckets = ARRAY(SELECT COALESCE(x, 0) + COALESCE(y, 0)
                                   FROM unnest(h.rtt_buckets, EXCLUDED.rtt_buckets) WITH ORDINALITY AS t(x, y, i) ORDER BY i),
               delivery_count = h.delivery_count + EXCLUDED.delivery_count,
               delivery_sum = h.delivery_sum + EXCLUDED.delivery_sum,
               delivery_min = LEAST(h.delivery_min, EXCLUDED.delivery_min),
               delivery_max = GREATEST(h.delivery_max, EXCLUDED.delivery_max)"
        ))
        .await?;
    write(tx, &stmt, a).await
}

async fn write(
    client: &impl deadpool_postgres::GenericClient,
    stmt: &tokio_postgres::Statement,
    a: &HourAggregate,
) -> Result<(), StorageError> {
    let buckets: Vec<i64> = a.rtt_buckets.iter().map(|&n| n as i64).collect();
    client
        .execute(
            stmt,
            &[
                &a.check_id,
                &a.region,
                &a.hour_ms,
                &(a.ok as i64),
                &(a.degraded as i64),
                &(a.failed as i64),
                &(a.rtt.count as i64),
                &a.rtt.sum_ms,
                &a.rtt.min_ms,
                &a.rtt.max_ms,
                &buckets,
                &(a.delivery.count as i64),
                &a.delivery.sum_ms,
                &a.delivery.min_ms,
                &a.delivery.max_ms,
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
