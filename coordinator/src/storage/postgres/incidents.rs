//! Incidents and their timelines on PostgreSQL.

use super::super::model::{AckOutcome, IncidentQuery, IncidentSpanQuery, StorageError};
use super::Postgres;
use crate::judge::{Incident, IncidentKind, IncidentState, TimelineEntry};
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

pub(super) fn enum_str<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        other => format!("{other:?}"),
    }
}

pub(super) fn enum_parse<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, StorageError> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|e| StorageError::Corrupt(format!("{s:?}: {e}")))
}

pub(super) const INCIDENT_COLUMNS: &str = "id, check_id, kind, key, severity, state, opened_at_ms, acked_at_ms, acked_by,
    resolved_at_ms, first_round, last_round, summary, regions, step, class";

pub(super) fn incident_row(r: &Row) -> Result<Incident, StorageError> {
    let regions: String = r.get(13);
    Ok(Incident {
        id: r.get::<_, i64>(0) as u64,
        check_id: r.get(1),
        kind: enum_parse(r.get(2))?,
        key: r.get(3),
        severity: enum_parse(r.get(4))?,
        state: enum_parse(r.get(5))?,
        opened_at_ms: r.get(6),
        acknowledged_at_ms: r.get(7),
        acknowledged_by: r.get(8),
        resolved_at_ms: r.get(9),
        first_round: r.get::<_, i64>(10) as u64,
        last_round: r.get::<_, i64>(11) as u64,
        summary: r.get(12),
        regions: serde_json::from_str(&regions).unwrap_or_default(),
        step: r.get(14),
        class: r.get(15),
        timeline: Vec::new(),
    })
}

async fn timeline(c: &impl GenericClient, incident_id: u64) -> Result<Vec<TimelineEntry>, StorageError> {
    let rows = c
        .query(
            "SELECT at_ms, round, event, verdict, note FROM incident_events WHERE incident_id = $1 ORDER BY seq",
            &[&(incident_id as i64)],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let verdict: Option<String> = r.get(3);
            Ok(TimelineEntry {
                at_ms: r.get(0),
                round: r.get::<_, Option<i64>>(1).map(|n| n as u64),
                event: r.get(2),
                verdict: verdict.map(|v| enum_parse(&v)).transpose()?,
                note: r.get(4),
            })
        })
        .collect()
}

pub(super) async fn add_event(c: &impl GenericClient, incident_id: u64, e: &TimelineEntry) -> Result<(), StorageError> {
    c.execute(
        "INSERT INTO incident_events (incident_id, at_ms, round, event, verdict, note) VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            &(incident_id as i64),
            &e.at_ms,
            &e.round.map(|r| r as i64),
            &e.event,
            &e.verdict.map(|v| v.as_str()),
            &e.note,
        ],
    )
    .await?;
    Ok(())
}

/// The incident with this id, with its timeline.
pub(super) async fn incident_by_id(c: &impl GenericClient, id: u64) -> Result<Option<Incident>, StorageError> {
    let found = c
        .query_opt(&format!("SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = $1"), &[&(id as i64)])
        .await?;
    match found {
        None => Ok(None),
        Some(r) => {
            let mut i = incident_row(&r)?;
            i.timeline = timeline(c, i.id).await?;
            Ok(Some(i))
        }
    }
}

/// The id of the open or acknowledged incident of (check, kind, key).
pub(super) async fn active_id(
    c: &impl GenericClient,
    check_id: &str,
    kind: IncidentKind,
    key: &str,
) -> Result<Option<u64>, StorageError> {
    Ok(c
        .query_opt(
            "SELECT id FROM incidents WHERE check_id = $1 AND kind = $2 AND key = $3 AND state != 'resolved'",
            &[&check_id, &kind.as_str(), &key],
        )
        .await?
        .map(|r| r.get::<_, i64>(0) as u64))
}

impl Postgres {
    /// Incidents, newest first (without their timelines).
    pub async fn list_incidents(&self, q: IncidentQuery) -> Result<Vec<Incident>, StorageError> {
        let order = if q.after_id.is_some() { "ASC" } else { "DESC" };
        let client = self.client().await?;
        let states: Vec<String> = q.states.iter().map(enum_str).collect();
        let states = (!states.is_empty()).then_some(states);
        let rows = client
            .query(
                &format!(
                    "SELECT {INCIDENT_COLUMNS} FROM incidents
                     WHERE ($1::text[] IS NULL OR state = ANY($1)) AND ($2::text IS NULL OR kind = $2)
                       AND ($3::text IS NULL OR check_id = $3)
                       AND ($5::int8 IS NULL OR id < $5) AND ($6::int8 IS NULL OR id > $6)
                     ORDER BY id {order} LIMIT $4"
                ),
                &[
                    &states,
                    &q.kind.map(|k| k.as_str()),
                    &q.check_id,
                    &(q.limit.clamp(1, 1000) as i64),
                    &q.before_id.map(|i| i as i64),
                    &q.after_id.map(|i| i as i64),
                ],
            )
            .await?;
        rows.iter().map(incident_row).collect()
    }

    /// One incident with its timeline.
    pub async fn incident(&self, id: u64) -> Result<Option<Incident>, StorageError> {
        let client = self.client().await?;
        incident_by_id(&client, id).await
    }

    /// The incidents of `ids` with their timelines, in the order of `ids`
    /// (unknown ids left out): two statements however many.
    pub async fn incidents_by_id(&self, ids: Vec<u64>) -> Result<Vec<Incident>, StorageError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let keys: Vec<i64> = ids.iter().map(|&id| id as i64).collect();
        let rows = client
            .query(&format!("SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = ANY($1)"), &[&keys])
            .await?;
        let mut found: std::collections::HashMap<u64, Incident> = std::collections::HashMap::new();
        for r in &rows {
            let i = incident_row(r)?;
            found.insert(i.id, i);
        }
        let events = client
            .query(
                "SELECT incident_id, at_ms, round, event, verdict, note FROM incident_events
                 WHERE incident_id = ANY($1) ORDER BY incident_id, seq",
                &[&keys],
            )
            .await?;
        for r in &events {
            let verdict: Option<String> = r.get(4);
            if let Some(i) = found.get_mut(&(r.get::<_, i64>(0) as u64)) {
                i.timeline.push(TimelineEntry {
                    at_ms: r.get(1),
                    round: r.get::<_, Option<i64>>(2).map(|n| n as u64),
                    event: r.get(3),
                    verdict: verdict.map(|v| enum_parse(&v)).transpose()?,
                    note: r.get(5),
                });
            }
        }
        Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
    }

    /// The incidents of a check still open or acknowledged, with timelines.
    pub async fn active_incidents(&self, check_id: String) -> Result<Vec<Incident>, StorageError> {
        let client = self.client().await?;
        let ids = client
            .query("SELECT id FROM incidents WHERE check_id = $1 AND state != 'resolved' ORDER BY id", &[&check_id])
            .await?;
        let mut out = Vec::new();
        for r in ids {
            if let Some(i) = incident_by_id(&client, r.get::<_, i64>(0) as u64).await? {
                out.push(i);
            }
        }
        Ok(out)
    }

    /// Resolves every open or acknowledged incident of a deleted check, in one transaction.
    pub async fn resolve_incidents_of(
        &self,
        check_id: String,
        at_ms: i64,
        note: String,
    ) -> Result<Vec<Incident>, StorageError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let ids = tx
            .query(
                "SELECT id FROM incidents WHERE check_id = $1 AND state != 'resolved' ORDER BY id FOR UPDATE",
                &[&check_id],
            )
            .await?;
        let mut out = Vec::new();
        for r in ids {
            let id: i64 = r.get(0);
            let entry = TimelineEntry { at_ms, round: None, event: "resolved".into(), verdict: None, note: note.clone() };
            add_event(&tx, id as u64, &entry).await?;
            tx.execute("UPDATE incidents SET state = 'resolved', resolved_at_ms = $2 WHERE id = $1", &[&id, &at_ms])
                .await?;
            if let Some(i) = incident_by_id(&tx, id as u64).await? {
                out.push(i);
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    /// The checks that have open or acknowledged incidents.
    pub async fn checks_with_active_incidents(&self) -> Result<Vec<String>, StorageError> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT DISTINCT check_id FROM incidents WHERE state != 'resolved' ORDER BY check_id", &[])
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Acknowledges an open incident (idempotent; a resolved one is refused).
    pub async fn acknowledge(&self, id: u64, by: Option<String>, at_ms: i64) -> Result<AckOutcome, StorageError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Locks the row so two replicas acknowledging at once add one line.
        tx.query_opt("SELECT id FROM incidents WHERE id = $1 FOR UPDATE", &[&(id as i64)]).await?;
        let Some(found) = incident_by_id(&tx, id).await? else {
            return Ok(AckOutcome::NotFound);
        };
        match found.state {
            IncidentState::Acknowledged => return Ok(AckOutcome::AlreadyAcknowledged(found)),
            IncidentState::Resolved => return Ok(AckOutcome::Resolved(found)),
            IncidentState::Open => {}
        }
        tx.execute(
            "UPDATE incidents SET state = 'acknowledged', acked_at_ms = $2, acked_by = $3 WHERE id = $1 AND state = 'open'",
            &[&(id as i64), &at_ms, &by],
        )
        .await?;
        let who = by.as_deref().unwrap_or("someone");
        add_event(
            &tx,
            id,
            &TimelineEntry {
                at_ms,
                round: None,
                event: "acknowledged".into(),
                verdict: None,
                note: format!("acknowledged by {who}"),
            },
        )
        .await?;
        let stored = incident_by_id(&tx, id)
            .await?
            .ok_or_else(|| StorageError::Corrupt(format!("incident {id} vanished")))?;
        tx.commit().await?;
        Ok(AckOutcome::Acknowledged(stored))
    }

    /// Incidents of some checks active at some time in a span, oldest first.
    pub async fn incidents_in_span(&self, q: IncidentSpanQuery) -> Result<Vec<Incident>, StorageError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {INCIDENT_COLUMNS} FROM incidents
                     WHERE check_id = ANY($1) AND opened_at_ms < $2 AND (resolved_at_ms IS NULL OR resolved_at_ms >= $3)
                     ORDER BY opened_at_ms, id"
                ),
                &[&q.check_ids, &q.until_ms, &q.since_ms],
            )
            .await?;
        let mut out = rows.iter().map(incident_row).collect::<Result<Vec<_>, _>>()?;
        if q.timelines {
            for i in &mut out {
                i.timeline = timeline(&client, i.id).await?;
            }
        }
        Ok(out)
    }

    /// Appends a public note to an incident's timeline.
    pub async fn add_incident_note(
        &self,
        id: u64,
        note: String,
        at_ms: i64,
    ) -> Result<Option<Incident>, StorageError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if tx.query_opt("SELECT id FROM incidents WHERE id = $1 FOR UPDATE", &[&(id as i64)]).await?.is_none() {
            return Ok(None);
        }
        add_event(&tx, id, &TimelineEntry { at_ms, round: None, event: crate::judge::PUBLIC_NOTE.into(), verdict: None, note })
            .await?;
        let stored = incident_by_id(&tx, id).await?;
        tx.commit().await?;
        Ok(stored)
    }
}
