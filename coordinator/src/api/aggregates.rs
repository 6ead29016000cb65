//! Hourly aggregates: the long memory of the coordinator.
//!
//! Raw probe reports are pruned after `[server] retention` (30 days by
//! default). What an SRE graphs over a year — how many rounds were ok,
//! degraded or failed, and how the round trip moved — is kept per check ×
//! region × hour for `aggregate_retention` (400 days by default). The
//! rollup itself is written by [`Storage`]'s writer as each report is
//! stored (see the "Hourly aggregates" section of `storage/sqlite/aggregates.rs` for why
//! there and not in the pruner); this module is its API route,
//! `GET /api/v1/checks/{id}/aggregates`. The server's retention loop prunes
//! them with the reports.

use super::state::{ApiError, ApiState, rfc3339};
use crate::clock::now_ms;
use crate::storage::{AggregateQuery, HOUR_MS, HourAggregate, RTT_BUCKETS_MS};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;

/// Without `since`, this much history is returned.
pub const DEFAULT_SINCE: Duration = Duration::from_secs(7 * 86_400);

/// Query parameters of `GET /api/v1/checks/{id}/aggregates`.
#[derive(Debug, Deserialize)]
pub struct AggregateParams {
    region: Option<String>,
    /// RFC 3339 or a duration back from now (`30d`); default 7 days.
    since: Option<String>,
}

/// `GET /api/v1/checks/{id}/aggregates?region=&since=`: one object per
/// hour and region, oldest first. Deleted checks keep their history.
pub async fn check_aggregates(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(p): Query<AggregateParams>,
) -> Result<Response, ApiError> {
    state
        .hub
        .check_any(&id)
        .ok_or_else(|| ApiError::NotFound(format!("no check {id:?}")))?;
    let since_ms = match p.since.as_deref() {
        Some(v) => super::state::time_param("since", v)?,
        None => now_ms() - DEFAULT_SINCE.as_millis() as i64,
    };
    let hours = state
        .storage
        .aggregates(AggregateQuery {
            check_id: id.clone(),
            region: p.region,
            since_ms: Some(since_ms),
        })
        .await?;
    let body = json!({
        "check": id,
        "since": rfc3339(crate::storage::hour_of(since_ms)),
        "bucket": "1h",
        "rtt_buckets_le_ms": RTT_BUCKETS_MS,
        "aggregates": hours.iter().map(aggregate_json).collect::<Vec<_>>(),
    });
    Ok((StatusCode::OK, axum::Json(body)).into_response())
}

/// One hour as the API shows it.
pub fn aggregate_json(a: &HourAggregate) -> Value {
    let round = |v: Option<f64>| v.map(|x| (x * 1000.0).round() / 1000.0);
    json!({
        "region": a.region,
        "hour": rfc3339(a.hour_ms),
        "hour_end": rfc3339(a.hour_ms + HOUR_MS),
        "reports": a.reports(),
        "ok": a.ok,
        "degraded": a.degraded,
        "failed": a.failed,
        "rtt_ms": {
            "count": a.rtt.count,
            "min": round(a.rtt.min_ms),
            "avg": round(a.rtt.avg_ms()),
            "max": round(a.rtt.max_ms),
            "p50": round(a.rtt_quantile(0.5)),
            "p95": round(a.rtt_quantile(0.95)),
            "buckets": a.rtt_buckets,
        },
        "delivery_ms": {
            "count": a.delivery.count,
            "min": round(a.delivery.min_ms),
            "avg": round(a.delivery.avg_ms()),
            "max": round(a.delivery.max_ms),
            "p50": round(a.delivery_quantile(0.5)),
            "p95": round(a.delivery_quantile(0.95)),
            "buckets": a.delivery_buckets,
        },
    })
}
