//! The judge's part of the admin API: verdicts, incidents (and their
//! acknowledgement), learned baselines, a one-screen status, the alert
//! channels' health and their delivery log.
//!
//! Like the rest of the API: reads need a read or admin token, the one
//! write (`ack`) the admin token, and is audited (see `auth.rs`). Bodies
//! keep the model's `*_ms` fields and add RFC 3339 strings (`round_start`,
//! `opened_at`, ...) for people.

use super::state::{ApiError, ApiState, admin, audited, page_cursor, rfc3339, time_bound};
use crate::auth::{Access, Action, ApiRouter, IdFrom};
use crate::judge::{Incident, IncidentKind, IncidentState, Verdict, summary};
use crate::storage::{AckOutcome, AlertAttemptQuery, IncidentQuery, VerdictQuery};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;

/// Default and largest page of verdicts or incidents.
pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;

type ApiResult = Result<Response, ApiError>;

fn ok(body: Value) -> ApiResult {
    Ok((StatusCode::OK, axum::Json(body)).into_response())
}

/// The judge's routes and what each needs, merged into `api::routes`.
#[rustfmt::skip]
pub fn routes() -> ApiRouter<ApiState> {
    let ack = audited("incident", Action::FromChange, IdFrom::Path("id"));
    let note = audited("incident", Action::Fixed("noted"), IdFrom::Path("id"));
    ApiRouter::new()
        .route(Method::GET, "/api/v1/verdicts", Access::Read, verdicts)
        .route(Method::GET, "/api/v1/incidents", Access::Read, incidents)
        .route(Method::GET, "/api/v1/incidents/{id}", Access::Read, incident)
        .route(Method::POST, "/api/v1/incidents/{id}/ack", ack, acknowledge)
        .route(Method::POST, "/api/v1/incidents/{id}/notes", note, add_note)
        .route(Method::GET, "/api/v1/checks/{id}/baselines", Access::Read, baselines)
        .route(Method::GET, "/api/v1/status", Access::Read, status)
        .route(Method::GET, "/api/v1/alerts", Access::Read, alerts)
        .route(Method::GET, "/api/v1/alerts/attempts", Access::Read, alert_attempts)
}

/// A verdict as the API shows it: the stored evidence plus readable times.
pub fn verdict_json(v: &Verdict) -> Value {
    let mut body = serde_json::to_value(v).unwrap_or(Value::Null);
    body["round_start"] = json!(rfc3339(v.round_start_ms));
    body["decided_at"] = json!(rfc3339(v.decided_at_ms));
    body
}

/// An incident as the API shows it.
pub fn incident_json(i: &Incident) -> Value {
    let mut body = serde_json::to_value(i).unwrap_or(Value::Null);
    body["opened_at"] = json!(rfc3339(i.opened_at_ms));
    body["acknowledged_at"] = json!(i.acknowledged_at_ms.map(rfc3339));
    body["resolved_at"] = json!(i.resolved_at_ms.map(rfc3339));
    if let Some(entries) = body["timeline"].as_array_mut() {
        for (e, t) in entries.iter_mut().zip(&i.timeline) {
            e["at"] = json!(rfc3339(t.at_ms));
        }
    }
    body
}

#[derive(Debug, Deserialize, Default)]
struct VerdictParams {
    check: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<u32>,
    after: Option<String>,
}

async fn verdicts(State(state): State<ApiState>, Query(p): Query<VerdictParams>) -> ApiResult {
    let q = VerdictQuery {
        after: page_cursor("after", p.after.as_deref())?,
        since_ms: time_bound("since", p.since.as_deref())?,
        until_ms: time_bound("until", p.until.as_deref())?,
        check_id: p.check,
        limit: p.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT),
    };
    let page = state.storage.query_verdicts(q).await?;
    let verdicts: Vec<Value> = page.verdicts.iter().map(verdict_json).collect();
    let next = page.next.map(|(ms, check)| format!("{ms}:{check}"));
    ok(json!({"verdicts": verdicts, "next": next}))
}

#[derive(Debug, Deserialize, Default)]
struct IncidentParams {
    /// `open`, `acknowledged`, `resolved`, or `active` (open or acknowledged).
    state: Option<String>,
    kind: Option<String>,
    check: Option<String>,
    limit: Option<u32>,
}

fn parse_enum<T: serde::de::DeserializeOwned>(
    name: &str,
    v: &str,
    allowed: &str,
) -> Result<T, ApiError> {
    serde_json::from_value(Value::String(v.to_string()))
        .map_err(|_| ApiError::BadRequest(format!("{name}={v:?}: expected one of {allowed}")))
}

async fn incidents(State(state): State<ApiState>, Query(p): Query<IncidentParams>) -> ApiResult {
    let states = match p.state.as_deref() {
        None => Vec::new(),
        Some("active") => vec![IncidentState::Open, IncidentState::Acknowledged],
        Some(s) => vec![parse_enum::<IncidentState>(
            "state",
            s,
            "open, acknowledged, resolved, active",
        )?],
    };
    let kind = p
        .kind
        .as_deref()
        .map(|k| {
            parse_enum::<IncidentKind>(
                "kind",
                k,
                "outage, regional, performance, authentication, certificate, coverage, clock, placement, reputation",
            )
        })
        .transpose()?;
    let list = state
        .storage
        .list_incidents(IncidentQuery {
            states,
            kind,
            check_id: p.check,
            limit: p.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT),
            ..Default::default()
        })
        .await?;
    let mut shown: Vec<Value> = list.iter().map(incident_json).collect();
    for i in &mut shown {
        // Lists stay small: the timeline is in GET /api/v1/incidents/{id}.
        if let Some(obj) = i.as_object_mut() {
            obj.remove("timeline");
        }
    }
    ok(json!({"incidents": shown}))
}

fn incident_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::NotFound(format!("no incident {raw:?} (ids are numbers)")))
}

async fn incident(State(state): State<ApiState>, Path(id): Path<String>) -> ApiResult {
    let id = incident_id(&id)?;
    match state.storage.incident(id).await? {
        Some(i) => ok(incident_json(&i)),
        None => Err(ApiError::NotFound(format!("no incident {id}"))),
    }
}

/// `POST /api/v1/incidents/{id}/ack`, body optional: `{"by": "alice"}`.
/// 200 with the incident (also when it was already acknowledged: acks are
/// idempotent), 404 unknown, 409 already resolved.
async fn acknowledge(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    admin(&state, &headers)?;
    let id = incident_id(&id)?;
    let by = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("the body is not JSON: {e}")))?;
        match v.get("by") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= 200 => {
                Some(s.trim().to_string())
            }
            Some(other) => {
                return Err(ApiError::BadRequest(format!(
                    "by: expected a name (1 to 200 characters), found {other}"
                )));
            }
        }
    };
    match state.judge.acknowledge(id, by).await? {
        AckOutcome::Acknowledged(i) => {
            let mut body = incident_json(&i);
            body["change"] = json!("acknowledged");
            ok(body)
        }
        AckOutcome::AlreadyAcknowledged(i) => {
            let mut body = incident_json(&i);
            body["change"] = json!("unchanged");
            ok(body)
        }
        AckOutcome::Resolved(i) => Err(ApiError::Conflict(format!(
            "incident {} is resolved (since {}); there is nothing to acknowledge",
            i.id,
            i.resolved_at_ms.map(rfc3339).unwrap_or_default()
        ))),
        AckOutcome::NotFound => Err(ApiError::NotFound(format!("no incident {id}"))),
    }
}

/// Longest public note, in characters.
pub const MAX_NOTE_CHARS: usize = 2000;

/// `POST /api/v1/incidents/{id}/notes`, body `{"text": "..."}`: a note for
/// the public (shown on the status page under the incident, as text).
/// 201 with the incident, 404 unknown, 400 empty or too long.
async fn add_note(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    admin(&state, &headers)?;
    let id = incident_id(&id)?;
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not JSON: {e}")))?;
    let text = match v.get("text") {
        Some(Value::String(s)) if !s.trim().is_empty() && s.chars().count() <= MAX_NOTE_CHARS => {
            s.trim().to_string()
        }
        other => {
            return Err(ApiError::BadRequest(format!(
                "text: expected the note (1 to {MAX_NOTE_CHARS} characters), found {}",
                other.map(Value::to_string).unwrap_or_else(|| "nothing".into())
            )));
        }
    };
    match state
        .storage
        .add_incident_note(id, text, crate::clock::now_ms())
        .await?
    {
        Some(i) => {
            if let Some(page) = &state.status_page {
                page.invalidate();
            }
            Ok((StatusCode::CREATED, axum::Json(incident_json(&i))).into_response())
        }
        None => Err(ApiError::NotFound(format!("no incident {id}"))),
    }
}

async fn baselines(State(state): State<ApiState>, Path(id): Path<String>) -> ApiResult {
    state
        .hub
        .check(&id)
        .ok_or_else(|| ApiError::NotFound(format!("no check {id:?}")))?;
    // A check the judge has not picked up yet (created a moment ago) has none.
    let views = state.judge.baselines(&id).unwrap_or_default();
    ok(json!({"check": id, "baselines": views}))
}

/// A region's `detail` in `/status`: the evidence's own why, and, when no
/// agent of the region is connected now, that first (the verdict may be
/// from before the agent went away).
fn live_detail(state: &ApiState, region: &str, evidence: Option<&str>) -> Option<String> {
    let agents = state.hub.region_agents(region);
    if agents.iter().any(|a| a.connected) {
        return evidence.map(str::to_string);
    }
    let now = format!(
        "no agent connected in {region} now ({})",
        summary::agents_text(region, &agents)
    );
    Some(match evidence {
        Some(e) => format!("{now}; last round: {e}"),
        None => now,
    })
}

/// Every live check's latest verdict, per region, and its active incidents.
/// Two queries whatever the number of checks (`Storage::status_snapshot`).
async fn status(State(state): State<ApiState>) -> ApiResult {
    let live = state.hub.checks();
    let ids = live.iter().map(|c| c.spec.name.clone()).collect();
    let (latest, active) = state.storage.status_snapshot(ids).await?;
    let mut by_check: HashMap<&str, Vec<Value>> = HashMap::new();
    for i in &active {
        by_check.entry(i.check_id.as_str()).or_default().push(
            json!({"id": i.id, "kind": i.kind, "severity": i.severity, "state": i.state, "summary": i.summary}),
        );
    }
    let mut checks = Vec::new();
    for c in live.iter() {
        let id = c.spec.name.clone();
        let incidents = by_check.remove(id.as_str()).unwrap_or_default();
        let entry = match latest.get(&id) {
            Some(v) => json!({
                "check": id,
                "verdict": v.verdict,
                "round": v.round,
                "round_start": rfc3339(v.round_start_ms),
                "decided_at": rfc3339(v.decided_at_ms),
                "note": v.note,
                "regions": v.regions.iter().map(|r| json!({
                    "region": r.region, "state": r.state, "step": r.step, "class": r.class,
                    "code": r.code, "text": r.text,
                    "detail": live_detail(&state, &r.region, r.detail.as_deref()),
                    "agent": r.agent,
                    "clock_skew_ms": r.clock_skew_ms,
                })).collect::<Vec<_>>(),
                "incidents": incidents,
            }),
            None => json!({
                "check": id,
                "verdict": null,
                "round": null,
                "round_start": null,
                "decided_at": null,
                "note": "no round decided yet",
                "regions": c.spec.regions.iter().map(|r| json!({
                    "region": r, "state": null, "step": null, "class": null, "code": null, "text": null,
                    "detail": live_detail(&state, r, Some("no round decided yet")),
                    "agent": null,
                    "clock_skew_ms": null,
                })).collect::<Vec<_>>(),
                "incidents": incidents,
            }),
        };
        checks.push(entry);
    }
    ok(json!({"checks": checks}))
}

async fn alerts(State(state): State<ApiState>) -> ApiResult {
    ok(state.judge.alerts().status())
}

#[derive(Debug, Deserialize)]
struct AttemptParams {
    channel: Option<String>,
    incident: Option<u64>,
    /// The previous page's `next`: attempts older than it.
    before: Option<u64>,
    limit: Option<u32>,
}

/// `GET /api/v1/alerts/attempts`: the delivery log, every attempt newest
/// first. `delivery_error` (it may quote a receiver's answer; the channel's
/// secrets are already scrubbed from it) is hidden from the read role like
/// `last_error`.
async fn alert_attempts(
    State(state): State<ApiState>,
    Query(p): Query<AttemptParams>,
) -> ApiResult {
    let limit = p.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let mut rows = state
        .storage
        .alert_attempts(AlertAttemptQuery {
            channel: p.channel,
            incident_id: p.incident,
            before_seq: p.before,
            after_seq: None,
            limit: limit + 1,
        })
        .await?;
    let next = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|a| a.seq)
    } else {
        None
    };
    let attempts: Vec<Value> = rows
        .iter()
        .map(|a| {
            json!({
                "seq": a.seq,
                "at_ms": a.at_ms,
                "at": rfc3339(a.at_ms),
                "channel": a.channel,
                "type": a.channel_type,
                "incident_id": a.incident_id,
                "check_id": a.check_id,
                "event": a.event,
                "attempt": a.attempt,
                "of": a.of,
                "result": a.result,
                "class": a.class,
                "code": a.code,
                "delivery_error": a.detail,
            })
        })
        .collect();
    ok(json!({"attempts": attempts, "next": next}))
}
