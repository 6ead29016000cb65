//! Round verdicts on PostgreSQL: a round's verdict and what it did to
//! incidents are written in ONE transaction (`store_round`), as on SQLite.

use super::super::model::{
    DAY_COLUMNS, DayCountQuery, RoundStored, StorageError, VerdictCount, VerdictCountQuery, VerdictPage,
    VerdictQuery, day_column, day_of,
};
use super::Postgres;
use super::incidents::{INCIDENT_COLUMNS, active_id, add_event, enum_str, incident_by_id, incident_row};
use crate::judge::{AlertEventKind, Incident, IncidentChange, TimelineEntry, Verdict};
use std::collections::HashMap;

fn verdict_from(evidence: &str) -> Result<Verdict, StorageError> {
    serde_json::from_str(evidence).map_err(|e| StorageError::Corrupt(format!("verdict evidence: {e}")))
}

async fn store_round_tx(
    tx: &deadpool_postgres::Transaction<'_>,
    v: &Verdict,
    changes: &[IncidentChange],
) -> Result<RoundStored, StorageError> {
    let evidence = serde_json::to_string(v).map_err(|e| StorageError::Commit(e.to_string()))?;
    let n = tx
        .execute(
            "INSERT INTO verdicts (check_id, round, round_start_ms, decided_at_ms, verdict, evidence)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (check_id, round) DO NOTHING",
            &[&v.check_id, &(v.round as i64), &v.round_start_ms, &v.decided_at_ms, &v.verdict.as_str(), &evidence],
        )
        .await?;
    if n == 0 {
        // Decided before (a restart or another leader raced): the first decision stands.
        return Ok(RoundStored { stored: false, events: Vec::new() });
    }
    // The round counts in its UTC day (the status page's bar and windows).
    let column = day_column(v.verdict);
    tx.execute(
        &format!(
            "INSERT INTO verdict_days (check_id, day_ms, {column}) VALUES ($1, $2, 1)
             ON CONFLICT (check_id, day_ms) DO UPDATE SET {column} = verdict_days.{column} + 1"
        ),
        &[&v.check_id, &day_of(v.round_start_ms)],
    )
    .await?;
    let mut events = Vec::new();
    for change in changes {
        match change {
            IncidentChange::Open(i) => {
                if let Some(id) = active_id(tx, &v.check_id, i.kind, &i.key).await? {
                    let entry = i.timeline.last().cloned().unwrap_or(TimelineEntry {
                        at_ms: v.decided_at_ms,
                        round: Some(v.round),
                        event: "round".into(),
                        verdict: Some(v.verdict),
                        note: i.summary.clone(),
                    });
                    add_event(tx, id, &entry).await?;
                    tx.execute(
                        "UPDATE incidents SET last_round = GREATEST(last_round, $2) WHERE id = $1",
                        &[&(id as i64), &(v.round as i64)],
                    )
                    .await?;
                    continue;
                }
                let id: i64 = tx
                    .query_one(
                        "INSERT INTO incidents (check_id, kind, key, severity, state, opened_at_ms, acked_at_ms, acked_by,
                         resolved_at_ms, first_round, last_round, summary, regions, step, class)
                         VALUES ($1, $2, $3, $4, 'open', $5, NULL, NULL, NULL, $6, $7, $8, $9, $10, $11) RETURNING id",
                        &[
                            &v.check_id,
                            &i.kind.as_str(),
                            &i.key,
                            &enum_str(&i.severity),
                            &i.opened_at_ms,
                            &(i.first_round as i64),
                            &(i.last_round as i64),
                            &i.summary,
                            &serde_json::to_string(&i.regions).expect("strings serialize"),
                            &i.step,
                            &i.class,
                        ],
                    )
                    .await?
                    .get(0);
                let id = id as u64;
                for e in &i.timeline {
                    add_event(tx, id, e).await?;
                }
                if i.timeline.is_empty() {
                    let opened = TimelineEntry {
                        at_ms: i.opened_at_ms,
                        round: Some(v.round),
                        event: "opened".into(),
                        verdict: Some(v.verdict),
                        note: i.summary.clone(),
                    };
                    add_event(tx, id, &opened).await?;
                }
                if let Some(stored) = incident_by_id(tx, id).await? {
                    events.push((AlertEventKind::Opened, stored));
                }
            }
            IncidentChange::Update { kind, key, entry, summary, regions, last_round } => {
                let Some(id) = active_id(tx, &v.check_id, *kind, key).await? else {
                    tracing::warn!(check = %v.check_id, kind = kind.as_str(), %key, "update of an incident that is not open; ignored");
                    continue;
                };
                add_event(tx, id, entry).await?;
                let regions = regions.as_ref().map(|r| serde_json::to_string(r).expect("strings serialize"));
                tx.execute(
                    "UPDATE incidents SET last_round = GREATEST(last_round, $2), summary = COALESCE($3, summary),
                     regions = COALESCE($4, regions) WHERE id = $1",
                    &[&(id as i64), &(*last_round as i64), summary, &regions],
                )
                .await?;
            }
            IncidentChange::Resolve { kind, key, entry } => {
                let Some(id) = active_id(tx, &v.check_id, *kind, key).await? else {
                    tracing::warn!(check = %v.check_id, kind = kind.as_str(), %key, "resolve of an incident that is not open; ignored");
                    continue;
                };
                add_event(tx, id, entry).await?;
                tx.execute(
                    "UPDATE incidents SET state = 'resolved', resolved_at_ms = $2, last_round = GREATEST(last_round, $3) WHERE id = $1",
                    &[&(id as i64), &entry.at_ms, &(v.round as i64)],
                )
                .await?;
                if let Some(stored) = incident_by_id(tx, id).await? {
                    events.push((AlertEventKind::Resolved, stored));
                }
            }
        }
    }
    Ok(RoundStored { stored: true, events })
}

impl Postgres {
    /// Stores a round's verdict and what it did to incidents in one transaction.
    pub async fn store_round(&self, verdict: Verdict, changes: Vec<IncidentChange>) -> Result<RoundStored, StorageError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let stored = store_round_tx(&tx, &verdict, &changes).await?;
        // The alerts its transitions owe, in the same transaction: a leader
        // that dies before sending them leaves them to the next one.
        for (event, incident) in &stored.events {
            super::outbox::record(&tx, *event, incident, verdict.decided_at_ms).await?;
        }
        tx.commit().await?;
        Ok(stored)
    }

    /// Verdicts, newest round first, filtered and paged.
    pub async fn query_verdicts(&self, q: VerdictQuery) -> Result<VerdictPage, StorageError> {
        let client = self.client().await?;
        let limit = q.limit.clamp(1, 1000) as i64;
        let (after_ms, after_check) = q.after.clone().unzip();
        let rows = client
            .query(
                "SELECT round_start_ms, check_id, evidence FROM verdicts
                 WHERE ($1::text IS NULL OR check_id = $1)
                   AND ($2::int8 IS NULL OR round_start_ms >= $2) AND ($3::int8 IS NULL OR round_start_ms < $3)
                   AND ($4::int8 IS NULL OR round_start_ms < $4 OR (round_start_ms = $4 AND check_id < $5::text))
                 ORDER BY round_start_ms DESC, check_id DESC LIMIT $6",
                &[&q.check_id, &q.since_ms, &q.until_ms, &after_ms, &after_check, &(limit + 1)],
            )
            .await?;
        let more = rows.len() as i64 > limit;
        let mut verdicts = Vec::new();
        let mut next = None;
        for r in rows.iter().take(limit as usize) {
            verdicts.push(verdict_from(r.get(2))?);
            next = Some((r.get::<_, i64>(0), r.get::<_, String>(1)));
        }
        Ok(VerdictPage { verdicts, next: if more { next } else { None } })
    }

    /// The last `n` verdicts of a check, oldest first.
    pub async fn recent_verdicts(&self, check_id: String, n: u32) -> Result<Vec<Verdict>, StorageError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT evidence FROM verdicts WHERE check_id = $1 ORDER BY round DESC LIMIT $2",
                &[&check_id, &(n as i64)],
            )
            .await?;
        let mut out = rows.iter().map(|r| verdict_from(r.get(0))).collect::<Result<Vec<_>, _>>()?;
        out.reverse();
        Ok(out)
    }

    /// The latest verdict of each of `check_ids` and every active incident.
    pub async fn status_snapshot(
        &self,
        check_ids: Vec<String>,
    ) -> Result<(HashMap<String, Verdict>, Vec<Incident>), StorageError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT (SELECT evidence FROM verdicts WHERE check_id = ids.id ORDER BY round DESC LIMIT 1)
                 FROM unnest($1::text[]) AS ids (id)",
                &[&check_ids],
            )
            .await?;
        let mut latest = HashMap::new();
        for r in rows {
            if let Some(e) = r.get::<_, Option<String>>(0) {
                let v = verdict_from(&e)?;
                latest.insert(v.check_id.clone(), v);
            }
        }
        let rows = client
            .query(
                &format!("SELECT {INCIDENT_COLUMNS} FROM incidents WHERE state != 'resolved' ORDER BY id DESC"),
                &[],
            )
            .await?;
        let active = rows.iter().map(incident_row).collect::<Result<Vec<_>, _>>()?;
        Ok((latest, active))
    }

    /// Rounds per verdict, check and bucket of round start, from `since_ms`.
    pub async fn verdict_counts(
        &self,
        q: VerdictCountQuery,
    ) -> Result<Vec<VerdictCount>, StorageError> {
        if q.bucket_ms <= 0 {
            return Err(StorageError::Corrupt("bucket_ms must be positive".into()));
        }
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT check_id, (round_start_ms / $3) * $3 AS bucket, verdict, COUNT(*)
                 FROM verdicts
                 WHERE check_id = ANY($1::text[]) AND round_start_ms >= $2
                 GROUP BY check_id, bucket, verdict
                 ORDER BY check_id, bucket",
                &[&q.check_ids, &q.since_ms, &q.bucket_ms],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let verdict: &str = r.get(2);
                Ok(VerdictCount {
                    check_id: r.get(0),
                    bucket_start_ms: r.get(1),
                    verdict: serde_json::from_value(serde_json::Value::String(verdict.to_string()))
                        .map_err(|_| {
                            StorageError::Corrupt(format!(
                                "unknown verdict {verdict:?} in verdicts"
                            ))
                        })?,
                    rounds: r.get::<_, i64>(3).max(0) as u64,
                })
            })
            .collect()
    }

    /// Rounds per verdict, check and UTC day from `verdict_days`, for the
    /// days from the one holding `q.since_ms`.
    pub async fn verdict_day_counts(&self, q: DayCountQuery) -> Result<Vec<VerdictCount>, StorageError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT check_id, day_ms, up, degraded, deferred, transit, down, unknown FROM verdict_days
                 WHERE check_id = ANY($1::text[]) AND day_ms >= $2 ORDER BY check_id, day_ms",
                &[&q.check_ids, &day_of(q.since_ms)],
            )
            .await?;
        let mut out = Vec::new();
        for r in &rows {
            let (check_id, day): (String, i64) = (r.get(0), r.get(1));
            for (i, (kind, _)) in DAY_COLUMNS.iter().enumerate() {
                let rounds: i64 = r.get(2 + i);
                if rounds > 0 {
                    out.push(VerdictCount { check_id: check_id.clone(), bucket_start_ms: day, verdict: *kind, rounds: rounds as u64 });
                }
            }
        }
        Ok(out)
    }

    /// Deletes verdicts decided before `cutoff_ms`, and the day counts of
    /// days that ended by then.
    pub async fn prune_verdicts(&self, cutoff_ms: i64) -> Result<usize, StorageError> {
        let n = self
            .delete_in_chunks(
                "DELETE FROM verdicts WHERE (check_id, round) IN
                 (SELECT check_id, round FROM verdicts WHERE decided_at_ms < $1 LIMIT $2)",
                cutoff_ms,
            )
            .await?;
        self.delete_in_chunks(
            "DELETE FROM verdict_days WHERE (check_id, day_ms) IN
             (SELECT check_id, day_ms FROM verdict_days WHERE day_ms + 86400000 <= $1 LIMIT $2)",
            cutoff_ms,
        )
        .await?;
        Ok(n)
    }
}
