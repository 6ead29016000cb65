//! The alert outbox on PostgreSQL: one row per incident transition
//! (incident, event), written in the transaction that stored the
//! transition, marked delivered when the alert went out. A new leader
//! sends the rows left undelivered, so a transition is paged once even
//! when the leader dies between storing it and sending it.

use super::super::model::StorageError;
use super::Postgres;
use crate::judge::{AlertEventKind, Incident};

/// Records the alert `event` of `incident` owes (a replay of the same
/// transition is one row).
pub(super) async fn record(
    tx: &deadpool_postgres::Transaction<'_>,
    event: AlertEventKind,
    incident: &Incident,
    now_ms: i64,
) -> Result<(), StorageError> {
    let at_ms = match event {
        AlertEventKind::Resolved => incident.resolved_at_ms.unwrap_or(now_ms),
        AlertEventKind::Acknowledged => incident.acknowledged_at_ms.unwrap_or(now_ms),
        AlertEventKind::Opened => incident.opened_at_ms,
    };
    let json = serde_json::to_string(incident).map_err(|e| StorageError::Commit(e.to_string()))?;
    tx.execute(
        "INSERT INTO alert_outbox (incident_id, event, at_ms, incident_json, created_at)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (incident_id, event) DO NOTHING",
        &[
            &(incident.id as i64),
            &event.as_str(),
            &at_ms,
            &json,
            &now_ms,
        ],
    )
    .await?;
    Ok(())
}

fn parse_event(s: &str) -> Option<AlertEventKind> {
    match s {
        "opened" => Some(AlertEventKind::Opened),
        "acknowledged" => Some(AlertEventKind::Acknowledged),
        "resolved" => Some(AlertEventKind::Resolved),
        _ => None,
    }
}

impl Postgres {
    /// Marks a transition's alert delivered.
    pub async fn alert_delivered(
        &self,
        incident_id: u64,
        event: AlertEventKind,
    ) -> Result<(), StorageError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE alert_outbox SET delivered_at = $3 WHERE incident_id = $1 AND event = $2 AND delivered_at IS NULL",
                &[&(incident_id as i64), &event.as_str(), &crate::clock::now_ms()],
            )
            .await?;
        Ok(())
    }

    /// The alerts recorded and never marked delivered, oldest first.
    pub async fn undelivered_alerts(
        &self,
    ) -> Result<Vec<(AlertEventKind, i64, Incident)>, StorageError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT event, at_ms, incident_json FROM alert_outbox
                 WHERE delivered_at IS NULL ORDER BY created_at, incident_id",
                &[],
            )
            .await?;
        let mut out = Vec::new();
        for r in rows {
            let Some(event) = parse_event(r.get(0)) else {
                continue;
            };
            let incident: Incident = serde_json::from_str(r.get(2))
                .map_err(|e| StorageError::Corrupt(format!("alert outbox incident: {e}")))?;
            out.push((event, r.get(1), incident));
        }
        Ok(out)
    }
}
