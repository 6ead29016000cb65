//! Incidents and their timelines; acknowledgement; resolution of a deleted check's.

use super::engine::{Sqlite, corrupt};
use super::super::model::{AckOutcome, IncidentQuery, IncidentSpanQuery, StorageError};
use crate::judge::{Incident, IncidentKind, IncidentState, TimelineEntry};
use rusqlite::{Connection, OptionalExtension, params};

pub(super) fn enum_str<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        other => format!("{other:?}"),
    }
}

pub(super) fn enum_parse<T: serde::de::DeserializeOwned>(s: &str) -> rusqlite::Result<T> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

pub(super) const INCIDENT_COLUMNS: &str =
    "id, check_id, kind, key, severity, state, opened_at_ms, acked_at_ms, acked_by,
    resolved_at_ms, first_round, last_round, summary, regions, step, class";

pub(super) fn incident_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Incident> {
    let regions: String = r.get(13)?;
    Ok(Incident {
        id: r.get::<_, i64>(0)? as u64,
        check_id: r.get(1)?,
        kind: enum_parse(&r.get::<_, String>(2)?)?,
        key: r.get(3)?,
        severity: enum_parse(&r.get::<_, String>(4)?)?,
        state: enum_parse(&r.get::<_, String>(5)?)?,
        opened_at_ms: r.get(6)?,
        acknowledged_at_ms: r.get(7)?,
        acknowledged_by: r.get(8)?,
        resolved_at_ms: r.get(9)?,
        first_round: r.get::<_, i64>(10)? as u64,
        last_round: r.get::<_, i64>(11)? as u64,
        summary: r.get(12)?,
        regions: serde_json::from_str(&regions).unwrap_or_default(),
        step: r.get(14)?,
        class: r.get(15)?,
        timeline: Vec::new(),
    })
}

pub(super) fn timeline(conn: &Connection, incident_id: u64) -> Result<Vec<TimelineEntry>, StorageError> {
    let mut stmt = conn.prepare_cached(
        "SELECT at_ms, round, event, verdict, note FROM incident_events WHERE incident_id = ?1 ORDER BY seq",
    )?;
    let rows = stmt.query_map([incident_id as i64], |r| {
        let verdict: Option<String> = r.get(3)?;
        Ok(TimelineEntry {
            at_ms: r.get(0)?,
            round: r.get::<_, Option<i64>>(1)?.map(|n| n as u64),
            event: r.get(2)?,
            verdict: verdict.map(|v| enum_parse(&v)).transpose()?,
            note: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

pub(super) fn add_event(conn: &Connection, incident_id: u64, e: &TimelineEntry) -> Result<(), StorageError> {
    conn.prepare_cached(
        "INSERT INTO incident_events (incident_id, at_ms, round, event, verdict, note) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        incident_id as i64,
        e.at_ms,
        e.round.map(|r| r as i64),
        e.event,
        e.verdict.map(|v| v.as_str()),
        e.note
    ])?;
    Ok(())
}

/// The incident with this id, with its timeline.
pub(super) fn incident_by_id(conn: &Connection, id: u64) -> Result<Option<Incident>, StorageError> {
    let found = conn
        .prepare_cached(&format!(
            "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = ?1"
        ))?
        .query_row([id as i64], incident_row)
        .optional()?;
    match found {
        None => Ok(None),
        Some(mut i) => {
            i.timeline = timeline(conn, i.id)?;
            Ok(Some(i))
        }
    }
}

/// The id of the open or acknowledged incident of (check, kind, key).
pub(super) fn active_id(
    conn: &Connection,
    check_id: &str,
    kind: IncidentKind,
    key: &str,
) -> Result<Option<u64>, StorageError> {
    Ok(conn
        .prepare_cached(
            "SELECT id FROM incidents WHERE check_id = ?1 AND kind = ?2 AND key = ?3 AND state != 'resolved'",
        )?
        .query_row(params![check_id, kind.as_str(), key], |r| r.get::<_, i64>(0))
        .optional()?
        .map(|id| id as u64))
}

impl Sqlite {
    /// Incidents, newest first (without their timelines); with
    /// `after_id`, the ones above it, oldest first.
    pub async fn list_incidents(&self, q: IncidentQuery) -> Result<Vec<Incident>, StorageError> {
        let order = if q.after_id.is_some() { "ASC" } else { "DESC" };
        self.read(move |conn| {
            let states: Vec<String> = q.states.iter().map(enum_str).collect();
            let states_json =
                (!states.is_empty()).then(|| serde_json::to_string(&states).expect("strings"));
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {INCIDENT_COLUMNS} FROM incidents
                 WHERE (?1 IS NULL OR state IN (SELECT value FROM json_each(?1)))
                   AND (?2 IS NULL OR kind = ?2) AND (?3 IS NULL OR check_id = ?3)
                   AND (?5 IS NULL OR id < ?5) AND (?6 IS NULL OR id > ?6)
                 ORDER BY id {order} LIMIT ?4"
            ))?;
            let rows = stmt
                .query_map(
                    params![
                        states_json,
                        q.kind.map(|k| k.as_str()),
                        q.check_id,
                        q.limit.clamp(1, 1000) as i64,
                        q.before_id.map(|i| i as i64),
                        q.after_id.map(|i| i as i64),
                    ],
                    incident_row,
                )?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    /// One incident with its timeline.
    pub async fn incident(&self, id: u64) -> Result<Option<Incident>, StorageError> {
        self.read(move |conn| incident_by_id(conn, id)).await
    }

    /// The incidents of `ids` with their timelines, in the order of `ids`
    /// (unknown ids left out), on one reader connection.
    pub async fn incidents_by_id(&self, ids: Vec<u64>) -> Result<Vec<Incident>, StorageError> {
        self.read(move |conn| {
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(i) = incident_by_id(conn, id)? {
                    out.push(i);
                }
            }
            Ok(out)
        })
        .await
    }

    /// The incidents of a check still open or acknowledged, with timelines.
    pub async fn active_incidents(&self, check_id: String) -> Result<Vec<Incident>, StorageError> {
        self.read(move |conn| {
            let ids = conn
                .prepare_cached("SELECT id FROM incidents WHERE check_id = ?1 AND state != 'resolved' ORDER BY id")?
                .query_map([&check_id], |r| r.get::<_, i64>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            let mut out = Vec::new();
            for id in ids {
                if let Some(i) = incident_by_id(conn, id as u64)? {
                    out.push(i);
                }
            }
            Ok(out)
        })
        .await
    }

    /// Resolves every open or acknowledged incident of a check that is gone
    /// (deleted), in one transaction, each with a `resolved` timeline entry
    /// saying `note`. Returns them as stored, for the last alert.
    pub async fn resolve_incidents_of(
        &self,
        check_id: String,
        at_ms: i64,
        note: String,
    ) -> Result<Vec<Incident>, StorageError> {
        self.write(move |conn| {
            let ids = conn
                .prepare_cached("SELECT id FROM incidents WHERE check_id = ?1 AND state != 'resolved' ORDER BY id")?
                .query_map([&check_id], |r| r.get::<_, i64>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            let mut out = Vec::new();
            for id in ids {
                let entry = TimelineEntry { at_ms, round: None, event: "resolved".into(), verdict: None, note: note.clone() };
                add_event(conn, id as u64, &entry)?;
                conn.prepare_cached("UPDATE incidents SET state = 'resolved', resolved_at_ms = ?2 WHERE id = ?1")?
                    .execute(params![id, at_ms])?;
                if let Some(i) = incident_by_id(conn, id as u64)? {
                    out.push(i);
                }
            }
            Ok(out)
        })
        .await
    }

    /// The checks that have open or acknowledged incidents.
    pub async fn checks_with_active_incidents(&self) -> Result<Vec<String>, StorageError> {
        self.read(|conn| {
            let ids = conn
                .prepare_cached("SELECT DISTINCT check_id FROM incidents WHERE state != 'resolved' ORDER BY check_id")?
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ids)
        })
        .await
    }

    /// Acknowledges an open incident (idempotent; a resolved one is refused).
    pub async fn acknowledge(
        &self,
        id: u64,
        by: Option<String>,
        at_ms: i64,
    ) -> Result<AckOutcome, StorageError> {
        self.write(move |conn| {
            let Some(found) = incident_by_id(conn, id)? else {
                return Ok(AckOutcome::NotFound);
            };
            match found.state {
                IncidentState::Acknowledged => return Ok(AckOutcome::AlreadyAcknowledged(found)),
                IncidentState::Resolved => return Ok(AckOutcome::Resolved(found)),
                IncidentState::Open => {}
            }
            conn.prepare_cached(
                "UPDATE incidents SET state = 'acknowledged', acked_at_ms = ?2, acked_by = ?3 WHERE id = ?1 AND state = 'open'",
            )?
            .execute(params![id as i64, at_ms, by])?;
            let who = by.as_deref().unwrap_or("someone");
            add_event(
                conn,
                id,
                &TimelineEntry {
                    at_ms,
                    round: None,
                    event: "acknowledged".into(),
                    verdict: None,
                    note: format!("acknowledged by {who}"),
                },
            )?;
            let stored = incident_by_id(conn, id)?.ok_or_else(|| corrupt(format!("incident {id} vanished")))?;
            Ok(AckOutcome::Acknowledged(stored))
        })
        .await
    }

    /// Incidents of some checks active at some time in a span, oldest first.
    pub async fn incidents_in_span(&self, q: IncidentSpanQuery) -> Result<Vec<Incident>, StorageError> {
        self.read(move |conn| {
            let ids = serde_json::to_string(&q.check_ids).expect("strings");
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {INCIDENT_COLUMNS} FROM incidents
                 WHERE check_id IN (SELECT value FROM json_each(?1))
                   AND opened_at_ms < ?2 AND (resolved_at_ms IS NULL OR resolved_at_ms >= ?3)
                 ORDER BY opened_at_ms, id"
            ))?;
            let mut rows = stmt
                .query_map(params![ids, q.until_ms, q.since_ms], incident_row)?
                .collect::<Result<Vec<_>, _>>()?;
            if q.timelines {
                for i in &mut rows {
                    i.timeline = timeline(conn, i.id)?;
                }
            }
            Ok(rows)
        })
        .await
    }

    /// Appends a public note to an incident's timeline.
    pub async fn add_incident_note(
        &self,
        id: u64,
        note: String,
        at_ms: i64,
    ) -> Result<Option<Incident>, StorageError> {
        self.write(move |conn| {
            if incident_by_id(conn, id)?.is_none() {
                return Ok(None);
            }
            add_event(
                conn,
                id,
                &TimelineEntry { at_ms, round: None, event: crate::judge::PUBLIC_NOTE.into(), verdict: None, note },
            )?;
            incident_by_id(conn, id)
        })
        .await
    }
}
