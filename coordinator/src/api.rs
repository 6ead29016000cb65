//! The admin HTTP API: JSON under `/api/v1`, plus `/healthz` and `/readyz`.
//!
//! Reads are open; every write needs `Authorization: Bearer <admin token>`.
//! Handlers only translate: validation and changes go through
//! [`Control`], state comes from the [`Hub`], history from [`Storage`].
//! Errors are JSON too: `{"error": "...", "issues": [{"path", "message"}]}`.

use crate::config::CheckSpec;
use crate::control::{Control, ControlError, PutMode, PutOutcome, now_ms};
use crate::hub::{AgentView, Hub};
use crate::schedule;
use crate::storage::{ReportRow, ResultQuery, Source, Storage, StoredCheck};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Default and largest page of results.
pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;
/// A results page stops adding reports once their JSON passes this many
/// bytes; `next` then continues where it stopped.
pub const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub hub: Arc<Hub>,
    pub storage: Arc<Storage>,
    pub control: Arc<Control>,
    /// False while starting and once shutdown has begun.
    pub ready: Arc<AtomicBool>,
    /// Verdicts, incidents, baselines (routes in `api_judge.rs`).
    pub judge: Arc<crate::judge::run::Judge>,
}

/// The admin API's routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/checks", get(list_checks).post(create_check))
        .route(
            "/api/v1/checks/{id}",
            get(get_check).put(put_check).delete(delete_check),
        )
        .route("/api/v1/checks/{id}/results", get(check_results))
        .route("/api/v1/checks/{id}/latest", get(latest_round))
        .route("/api/v1/checks/{id}/aggregates", get(crate::aggregates::check_aggregates))
        .route("/api/v1/checks/{id}/run", post(run_check))
        .route("/api/v1/runs/{request_id}", get(get_run))
        .route("/api/v1/results", get(results))
        .route("/api/v1/agents", get(list_agents).post(add_agent))
        .route("/api/v1/agents/{name}", get(get_agent).delete(revoke_agent))
        .route("/api/v1/agents/{name}/revoke", post(revoke_agent))
        .merge(crate::api_judge::routes())
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .with_state(state)
}

/// An API failure, rendered as JSON with the matching status.
#[derive(Debug)]
pub enum ApiError {
    Unauthorized,
    BadRequest(String),
    Invalid(Vec<mailloop_common::config::ConfigIssue>),
    NotFound(String),
    Conflict(String),
    NotImplemented(String),
    Internal(String),
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::Invalid(issues) => ApiError::Invalid(issues),
            ControlError::NotFound(m) => ApiError::NotFound(m),
            ControlError::Conflict(m) => ApiError::Conflict(m),
            ControlError::Storage(e) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<crate::storage::StorageError> for ApiError {
    fn from(e: crate::storage::StorageError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                json!({"error": "this needs the admin token: Authorization: Bearer <token>"}),
            ),
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, json!({"error": m})),
            ApiError::Invalid(issues) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({
                    "error": format!("{} invalid key(s)", issues.len()),
                    "issues": issues.iter().map(|i| json!({"path": i.path, "message": i.message})).collect::<Vec<_>>(),
                }),
            ),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, json!({"error": m})),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, json!({"error": m})),
            ApiError::NotImplemented(m) => (StatusCode::NOT_IMPLEMENTED, json!({"error": m})),
            ApiError::Internal(m) => {
                tracing::error!(error = %m, "admin API request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, json!({"error": m}))
            }
        };
        let mut resp = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

type ApiResult = Result<Response, ApiError>;

fn ok(status: StatusCode, body: Value) -> ApiResult {
    Ok((status, axum::Json(body)).into_response())
}

pub(crate) fn admin(state: &ApiState, headers: &HeaderMap) -> Result<(), ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    if state.control.is_admin(token) {
        Ok(())
    } else {
        tracing::warn!("admin API write refused: missing or wrong admin token");
        Err(ApiError::Unauthorized)
    }
}

fn json_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not JSON: {e}")))
}

/// RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

async fn healthz() -> ApiResult {
    ok(StatusCode::OK, json!({"status": "ok"}))
}

async fn readyz(State(state): State<ApiState>) -> ApiResult {
    if state.ready.load(Ordering::SeqCst) {
        ok(StatusCode::OK, json!({"status": "ready"}))
    } else {
        ok(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "not ready"}),
        )
    }
}

/// A check as the API shows it.
fn check_json(hub: &Hub, c: &StoredCheck) -> Value {
    let interval_ms = c.spec.interval.as_millis() as u64;
    let owners: BTreeMap<String, Option<String>> = hub.owners(&c.spec.name, &c.spec.regions);
    json!({
        "id": c.spec.name,
        "revision": c.revision,
        "source": c.source,
        "updated_at": rfc3339(c.updated_at_ms),
        "interval": humantime::format_duration(c.spec.interval).to_string(),
        "interval_ms": interval_ms,
        "phase_ms": schedule::phase_ms(&c.spec.name, interval_ms),
        "regions": c.spec.regions,
        "assigned": owners,
        "check": c.spec.full_table(),
    })
}

async fn list_checks(State(state): State<ApiState>) -> ApiResult {
    let checks: Vec<Value> = state
        .hub
        .checks()
        .iter()
        .map(|c| check_json(&state.hub, c))
        .collect();
    ok(StatusCode::OK, json!({"checks": checks}))
}

async fn get_check(State(state): State<ApiState>, Path(id): Path<String>) -> ApiResult {
    let c = state
        .hub
        .check(&id)
        .ok_or_else(|| ApiError::NotFound(format!("no check {id:?}")))?;
    ok(StatusCode::OK, check_json(&state.hub, &c))
}

async fn create_check(State(state): State<ApiState>, headers: HeaderMap, body: Bytes) -> ApiResult {
    admin(&state, &headers)?;
    let spec = state.control.validate_check("body", &json_body(&body)?)?;
    store_check(&state, spec, PutMode::Create).await
}

async fn put_check(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    admin(&state, &headers)?;
    let mut table = json_body(&body)?;
    match table.get("name") {
        None => {
            if let Some(obj) = table.as_object_mut() {
                obj.insert("name".into(), Value::String(id.clone()));
            }
        }
        Some(Value::String(n)) if *n == id => {}
        Some(other) => {
            return Err(ApiError::Invalid(vec![
                mailloop_common::config::ConfigIssue {
                    path: "body.name".into(),
                    message: format!("{other} differs from the check id {id:?} in the URL"),
                },
            ]));
        }
    }
    let spec = state.control.validate_check("body", &table)?;
    store_check(&state, spec, PutMode::Upsert).await
}

async fn store_check(state: &ApiState, spec: CheckSpec, mode: PutMode) -> ApiResult {
    let (stored, outcome) = state.control.put_check(spec, Source::Api, mode).await?;
    let mut body = check_json(&state.hub, &stored);
    body["change"] = json!(match outcome {
        PutOutcome::Created => "created",
        PutOutcome::Updated => "updated",
        PutOutcome::Unchanged => "unchanged",
    });
    let status = if outcome == PutOutcome::Created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    ok(status, body)
}

async fn delete_check(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    admin(&state, &headers)?;
    let c = state.control.delete_check(&id, Source::Api).await?;
    ok(
        StatusCode::OK,
        json!({"id": c.spec.name, "revision": c.revision, "deleted": true}),
    )
}

async fn run_check(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    admin(&state, &headers)?;
    let run = state
        .hub
        .order_run(&id)
        .ok_or_else(|| ApiError::NotFound(format!("no check {id:?}")))?;
    let asked: Vec<&str> = run.regions.values().flatten().map(String::as_str).collect();
    tracing::info!(check = %id, request = %run.request_id, agents = ?asked, "on-demand run ordered");
    ok(StatusCode::ACCEPTED, run_json(&run, None))
}

/// An on-demand run: who was asked, and (when known) the reports so far.
fn run_json(run: &crate::ondemand::RunStarted, results: Option<&[ReportRow]>) -> Value {
    let mut body = json!({
        "request_id": run.request_id,
        "check": run.check_id,
        "requested_at": rfc3339(run.requested_at_ms),
        "regions": run.regions,
    });
    if let Some(rows) = results {
        body["results"] = rows.iter().map(result_json).collect();
    }
    body
}

/// `GET /api/v1/runs/{request_id}`: the reports of an on-demand run as
/// they arrive. `regions` is known only while the coordinator remembers
/// the order (since its start, the last 1,000); the reports are stored.
async fn get_run(State(state): State<ApiState>, Path(request_id): Path<String>) -> ApiResult {
    let rows = state.storage.results_of_request(request_id.clone()).await?;
    match state.hub.on_demand().find(&request_id) {
        Some(run) => ok(StatusCode::OK, run_json(&run, Some(&rows))),
        None if !rows.is_empty() => ok(
            StatusCode::OK,
            json!({
                "request_id": request_id,
                "check": rows[0].check_id,
                "regions": null,
                "results": rows.iter().map(result_json).collect::<Vec<_>>(),
            }),
        ),
        None => Err(ApiError::NotFound(format!(
            "no on-demand run {request_id:?} (unknown, or from before a restart and without reports)"
        ))),
    }
}

/// Query parameters of the results endpoints.
#[derive(Debug, Deserialize, Default)]
struct ResultParams {
    check: Option<String>,
    region: Option<String>,
    /// RFC 3339, or a duration back from now ("1h").
    since: Option<String>,
    until: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

pub(crate) fn time_param(name: &str, v: &str) -> Result<i64, ApiError> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(v) {
        return Ok(t.timestamp_millis());
    }
    if let Ok(d) = humantime::parse_duration(v) {
        return Ok(now_ms() - d.as_millis() as i64);
    }
    Err(ApiError::BadRequest(format!(
        "{name}={v:?}: expected RFC 3339 (2026-01-31T12:00:00Z) or a duration back from now (1h)"
    )))
}

/// An optional `since`/`until` bound, read as [`time_param`] does.
pub(crate) fn time_bound(name: &str, v: Option<&str>) -> Result<Option<i64>, ApiError> {
    v.map(|v| time_param(name, v)).transpose()
}

/// A `ms:key` cursor handed out with a previous page (parameter `name`).
pub(crate) fn page_cursor(name: &str, c: Option<&str>) -> Result<Option<(i64, String)>, ApiError> {
    let Some(c) = c else { return Ok(None) };
    let parsed = c.split_once(':').and_then(|(ms, key)| Some((ms.parse::<i64>().ok()?, key.to_string())));
    parsed
        .map(Some)
        .ok_or_else(|| ApiError::BadRequest(format!("{name}={c:?} is not a cursor from a previous page")))
}

fn query(p: ResultParams) -> Result<ResultQuery, ApiError> {
    Ok(ResultQuery {
        after: page_cursor("cursor", p.cursor.as_deref())?,
        since_ms: time_bound("since", p.since.as_deref())?,
        until_ms: time_bound("until", p.until.as_deref())?,
        check_id: p.check,
        region: p.region,
        limit: p.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT),
        max_bytes: Some(MAX_PAGE_BYTES),
    })
}

/// A stored result as the API shows it.
fn result_json(r: &ReportRow) -> Value {
    let mut body = result_json_without_report(r);
    body["report"] = serde_json::from_str(&r.report_json).unwrap_or(Value::Null);
    body
}

/// [`result_json`] but the report itself (an object, never empty).
fn result_json_without_report(r: &ReportRow) -> Value {
    json!({
        "probe_id": r.probe_id,
        "check": r.check_id,
        "region": r.region,
        "agent": r.agent,
        "round": r.round,
        "revision": r.revision,
        "started_at": rfc3339(r.started_at_ms),
        "outcome": r.outcome,
        "rtt_ms": r.rtt_ms,
        "delivery_ms": r.delivery_ms,
        "failure": r.failure_step.as_ref().map(|s| json!({"step": s, "class": r.failure_class})),
        "received_at": rfc3339(r.received_at_ms),
        "request_id": r.request_id,
        "out_of_window": r.out_of_window,
    })
}

/// A page of results, written as text: each stored report is copied into
/// the answer as it is (checked to be JSON, never parsed into a tree).
async fn page(state: &ApiState, q: ResultQuery) -> ApiResult {
    let page = state.storage.query_results(q).await?;
    let size: usize = page.rows.iter().map(|r| r.report_json.len() + 512).sum();
    let mut body = String::with_capacity(size + 64);
    body.push_str(r#"{"results":["#);
    for (i, r) in page.rows.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        let mut envelope = result_json_without_report(r).to_string();
        envelope.pop(); // the closing brace
        body.push_str(&envelope);
        body.push_str(r#","report":"#);
        let valid = serde_json::from_str::<serde::de::IgnoredAny>(&r.report_json).is_ok();
        body.push_str(if valid { &r.report_json } else { "null" });
        body.push('}');
    }
    let next = page.next.map(|(ms, id)| format!("{ms}:{id}"));
    body.push_str(r#"],"next":"#);
    body.push_str(&Value::from(next).to_string());
    body.push('}');
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

async fn results(State(state): State<ApiState>, Query(p): Query<ResultParams>) -> ApiResult {
    let q = query(p)?;
    page(&state, q).await
}

async fn check_results(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(p): Query<ResultParams>,
) -> ApiResult {
    state
        .hub
        .check_any(&id)
        .ok_or_else(|| ApiError::NotFound(format!("no check {id:?}")))?;
    let q = query(ResultParams {
        check: Some(id),
        ..p
    })?;
    page(&state, q).await
}

async fn latest_round(State(state): State<ApiState>, Path(id): Path<String>) -> ApiResult {
    let check = state
        .hub
        .check_any(&id)
        .ok_or_else(|| ApiError::NotFound(format!("no check {id:?}")))?;
    let latest = state.storage.latest_round(id.clone()).await?;
    let run = state.storage.latest_run(id.clone()).await?;
    let mut regions: Vec<String> = check.spec.regions.clone();
    let extra = latest
        .iter()
        .flat_map(|(_, rows)| rows)
        .chain(run.iter().flat_map(|(_, rows)| rows));
    for r in extra {
        if !regions.contains(&r.region) {
            regions.push(r.region.clone());
        }
    }
    let per_region = |rows: &[ReportRow]| -> Vec<Value> {
        regions
            .iter()
            .map(|region| {
                let result = rows.iter().find(|r| r.region == *region).map(result_json);
                json!({"region": region, "result": result})
            })
            .collect()
    };
    let newest_at = |rows: &[ReportRow]| rows.iter().map(|r| r.received_at_ms).max();
    // The newest evidence: the latest round, or an on-demand run that arrived after it.
    let newest = match (&latest, &run) {
        (None, None) => None,
        (Some(_), None) => Some("round"),
        (None, Some(_)) => Some("on_demand"),
        (Some((_, rows)), Some((_, run_rows))) => Some(if newest_at(run_rows) > newest_at(rows) {
            "on_demand"
        } else {
            "round"
        }),
    };
    let on_demand = run.as_ref().map(|(request_id, rows)| {
        json!({
            "request_id": request_id,
            "round": 0,
            "started_at": rows.iter().map(|r| r.started_at_ms).min().map(rfc3339),
            "regions": per_region(rows),
        })
    });
    let Some((round, rows)) = latest else {
        return ok(
            StatusCode::OK,
            json!({"check": id, "round": null, "round_started_at": null, "regions": [], "on_demand": on_demand, "newest": newest}),
        );
    };
    let interval_ms = check.spec.interval.as_millis() as u64;
    let start = schedule::round_start_ms(round, interval_ms, schedule::phase_ms(&id, interval_ms));
    ok(
        StatusCode::OK,
        json!({"check": id, "round": round, "round_started_at": rfc3339(start as i64), "regions": per_region(&rows),
               "on_demand": on_demand, "newest": newest}),
    )
}

fn agent_json(a: &AgentView) -> Value {
    json!({
        "name": a.stored.name,
        "region": a.stored.region,
        "source": a.stored.source,
        "revoked": a.stored.revoked,
        "connected": a.connected,
        "sessions": a.sessions,
        "assigned_checks": a.assigned,
        "spooled": a.spooled,
        "version": a.stored.version,
        "last_seen": a.stored.last_seen_ms.map(rfc3339),
        "disconnected_at": a.disconnected_at_ms.map(rfc3339),
        "clock_skew_ms": a.clock_skew_ms,
        "created_at": rfc3339(a.stored.created_at_ms),
    })
}

async fn list_agents(State(state): State<ApiState>) -> ApiResult {
    let agents: Vec<Value> = state.hub.agents().iter().map(agent_json).collect();
    ok(StatusCode::OK, json!({"agents": agents}))
}

async fn get_agent(State(state): State<ApiState>, Path(name): Path<String>) -> ApiResult {
    let a = state
        .hub
        .agent(&name)
        .ok_or_else(|| ApiError::NotFound(format!("no agent {name:?}")))?;
    ok(StatusCode::OK, agent_json(&a))
}

#[derive(Deserialize)]
struct NewAgent {
    name: String,
    region: String,
}

async fn add_agent(State(state): State<ApiState>, headers: HeaderMap, body: Bytes) -> ApiResult {
    admin(&state, &headers)?;
    let req: NewAgent = serde_json::from_value(json_body(&body)?).map_err(|e| {
        ApiError::BadRequest(format!("expected {{\"name\": ..., \"region\": ...}}: {e}"))
    })?;
    let (agent, token) = state.control.add_agent(&req.name, &req.region).await?;
    let view = state
        .hub
        .agent(&agent.name)
        .ok_or_else(|| ApiError::Internal("agent vanished".into()))?;
    // The one and only time the token leaves the coordinator.
    ok(
        StatusCode::CREATED,
        json!({"agent": agent_json(&view), "token": token.expose()}),
    )
}

async fn revoke_agent(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    admin(&state, &headers)?;
    state.control.revoke_agent(&name, Source::Api).await?;
    let view = state
        .hub
        .agent(&name)
        .ok_or_else(|| ApiError::Internal("agent vanished".into()))?;
    ok(StatusCode::OK, agent_json(&view))
}
