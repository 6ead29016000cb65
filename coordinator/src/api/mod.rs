//! The admin HTTP API: JSON under `/api/v1`, plus `/healthz` and `/readyz`.
//!
//! Every route is declared in [`routes`] with what it needs (see [`auth`]):
//! `/healthz` and `/readyz` are public, reads need a `read` or `admin`
//! token, writes and the audit log an `admin` token; every write is
//! recorded in the audit log. Handlers only translate: validation and changes go through
//! [`Control`], state comes from the [`Hub`], history from [`Storage`].
//! Errors are JSON too: `{"error": "...", "issues": [{"path", "message"}]}`.

use crate::auth::{
    self, Access, Action, ApiRouter, Caller, IdFrom, REDACTED, Role,
};
use crate::cluster::control::{PutMode, PutOutcome};
use crate::cluster::hub::{AgentView, Hub};
use crate::cluster::schedule;
use crate::config::CheckSpec;
use crate::storage::{ReplicaRole, ReportRow, ResultQuery, Source, StoredCheck};
use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

pub mod aggregates;
pub mod judge;
pub mod state;

pub use state::{ApiError, ApiState, DEFAULT_LIMIT, MAX_LIMIT, MAX_PAGE_BYTES, audited, rfc3339};
use state::{ApiResult, json_body, ok, page_cursor, time_bound};

/// Every route of the admin API with what it needs (served and listed by
/// `crate::admin` with the console's).
#[rustfmt::skip]
pub fn routes() -> ApiRouter<ApiState> {
    use Access::{Admin, Public, Read};
    use Action::{Fixed, FromChange};
    use IdFrom::{Body, Path as InPath};
    let (get, post, put, delete) = (Method::GET, Method::POST, Method::PUT, Method::DELETE);
    ApiRouter::new()
        .route(get.clone(), "/healthz", Public, healthz)
        .route(get.clone(), "/readyz", Public, readyz)
        .route(get.clone(), "/api/v1/checks", Read, list_checks)
        .route(post.clone(), "/api/v1/checks", audited("check", Fixed("created"), Body("/id")), create_check)
        .route(get.clone(), "/api/v1/checks/{id}", Read, get_check)
        .route(put, "/api/v1/checks/{id}", audited("check", FromChange, InPath("id")), put_check)
        .route(delete.clone(), "/api/v1/checks/{id}", audited("check", Fixed("deleted"), InPath("id")), delete_check)
        .route(get.clone(), "/api/v1/checks/{id}/results", Read, check_results)
        .route(get.clone(), "/api/v1/checks/{id}/latest", Read, latest_round)
        .route(get.clone(), "/api/v1/checks/{id}/aggregates", Read, aggregates::check_aggregates)
        .route(post.clone(), "/api/v1/checks/{id}/run", audited("check", Fixed("run"), InPath("id")), run_check)
        .route(get.clone(), "/api/v1/runs/{request_id}", Read, get_run)
        .route(get.clone(), "/api/v1/results", Read, results)
        .route(get.clone(), "/api/v1/agents", Read, list_agents)
        .route(post.clone(), "/api/v1/agents", audited("agent", Fixed("created"), Body("/agent/name")), add_agent)
        .route(get.clone(), "/api/v1/agents/{name}", Read, get_agent)
        .route(delete.clone(), "/api/v1/agents/{name}", audited("agent", Fixed("revoked"), InPath("name")), revoke_agent)
        .route(post.clone(), "/api/v1/agents/{name}/revoke", audited("agent", Fixed("revoked"), InPath("name")), revoke_agent)
        .route(post.clone(), "/api/v1/agents/{name}/rotate", audited("agent", Fixed("rotated"), InPath("name")), rotate_agent)
        .route(get.clone(), "/api/v1/tokens", Admin, list_tokens)
        .route(post.clone(), "/api/v1/tokens", audited("token", Fixed("created"), Body("/name")), add_token)
        .route(delete.clone(), "/api/v1/tokens/{name}", audited("token", Fixed("revoked"), InPath("name")), revoke_token)
        .route(get, "/api/v1/audit", Admin, audit_log)
        .merge(judge::routes())
}

/// A span per request when the coordinator exports traces, around the
/// authentication gate too (a refused token is a 401 span); named by the
/// matched route template, never by the path's ids or the query.
pub async fn traced(
    State(traces): State<crate::telemetry::Traces>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if !traces.is_on() {
        return next.run(request).await;
    }
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_string();
    let span = traces.http(request.method().as_str(), &route);
    let response = next.run(request).await;
    crate::telemetry::end_http(span, response.status().as_u16());
    response
}

async fn healthz() -> ApiResult {
    ok(StatusCode::OK, json!({"status": "ok"}))
}

/// 200 while serving, with this replica's role (`leader` or `follower`);
/// 503 while starting, shutting down, or cut off from the database (a
/// load balancer then sends nobody here).
async fn readyz(State(state): State<ApiState>) -> ApiResult {
    let role = *state.role.borrow();
    if !state.ready.load(Ordering::SeqCst) {
        ok(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "not ready", "role": role.as_str()}),
        )
    } else if role == ReplicaRole::CutOff {
        ok(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "cut off from the database", "role": role.as_str()}),
        )
    } else {
        ok(StatusCode::OK, json!({"status": "ready", "role": role.as_str()}))
    }
}

/// Keys of a check table only the admin role sees.
const PASSWORD_REFERENCES: [&str; 5] = [
    "password_env",
    "password_file",
    "client_secret_env",
    "client_secret_file",
    "refresh_token_file",
];

/// A check as the API shows it to `role`. An inline password is never
/// shown (`"<redacted>"`, which a `PUT` takes to mean "keep the stored
/// one"); password references only to admins.
fn check_json(hub: &Hub, c: &StoredCheck, role: Option<Role>) -> Value {
    let mut table = c.spec.full_table();
    auth::redact_keys(&mut table, &["password"]);
    if role != Some(Role::Admin) {
        auth::redact_keys(&mut table, &PASSWORD_REFERENCES);
    }
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
        "check": table,
    })
}

async fn list_checks(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult {
    let role = caller.principal.role();
    let checks: Vec<Value> = state
        .hub
        .checks()
        .iter()
        .map(|c| check_json(&state.hub, c, role))
        .collect();
    ok(StatusCode::OK, json!({"checks": checks}))
}

async fn get_check(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult {
    let c = state
        .hub
        .check(&id)
        .ok_or_else(|| ApiError::NotFound(format!("no check {id:?}")))?;
    ok(
        StatusCode::OK,
        check_json(&state.hub, &c, caller.principal.role()),
    )
}

async fn create_check(State(state): State<ApiState>, body: Bytes) -> ApiResult {
    let mut table = json_body(&body)?;
    keep_stored_passwords(&mut table, None)?;
    let spec = state.control.validate_check("body", &table)?;
    store_check(&state, spec, PutMode::Create).await
}

/// A password given as `"<redacted>"` (what `GET` shows, so a shown check
/// can be applied again) stands for the one stored in `existing`'s same
/// section; without one it is refused rather than stored as a password.
fn keep_stored_passwords(table: &mut Value, existing: Option<&CheckSpec>) -> Result<(), ApiError> {
    let mut issues = Vec::new();
    let Some(sections) = table.as_object_mut() else {
        return Ok(());
    };
    for (section, body) in sections.iter_mut() {
        let Some(fields) = body.as_object_mut() else {
            continue;
        };
        if fields.get("password").and_then(Value::as_str) != Some(REDACTED) {
            continue;
        }
        let stored = existing.and_then(|c| c.table.get(section)?.get("password")?.as_str());
        match stored {
            Some(p) => {
                fields.insert("password".into(), Value::String(p.to_string()));
            }
            None => issues.push(mailloop_common::config::ConfigIssue {
                path: format!("body.{section}.password"),
                message: format!("{REDACTED:?} stands for the stored password, and there is none: give the password, or password_env / password_file"),
            }),
        }
    }
    if issues.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Invalid(issues))
    }
}

async fn put_check(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let mut table = json_body(&body)?;
    keep_stored_passwords(&mut table, state.hub.check(&id).as_ref().map(|c| &c.spec))?;
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
    // Only admins write, and they see password references.
    let mut body = check_json(&state.hub, &stored, Some(Role::Admin));
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

async fn delete_check(State(state): State<ApiState>, Path(id): Path<String>) -> ApiResult {
    let c = state.control.delete_check(&id, Source::Api).await?;
    ok(
        StatusCode::OK,
        json!({"id": c.spec.name, "revision": c.revision, "deleted": true}),
    )
}

/// `POST /api/v1/checks/{id}/run`: with a W3C `traceparent` header, the
/// run joins the caller's trace (the agents' probe spans are in it).
async fn run_check(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
) -> ApiResult {
    let caller = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let run = state
        .hub
        .order_traced_run(&id, |request_id| {
            state.traces.run_order(&id, request_id, caller.as_deref())
        })
        .ok_or_else(|| ApiError::NotFound(format!("no check {id:?}")))?;
    // Agents connected to other replicas get it from theirs.
    if state.storage.shared()
        && let Err(e) = state.storage.announce_run(crate::cluster::ondemand::notice(&run)).await
    {
        tracing::warn!(check = %id, request = %run.request_id, error = %e, "cannot announce the on-demand run to the other replicas; only agents connected here run it");
    }
    let asked: Vec<&str> = run.regions.values().flatten().map(String::as_str).collect();
    tracing::info!(check = %id, request = %run.request_id, agents = ?asked, "on-demand run ordered");
    ok(StatusCode::ACCEPTED, run_json(&run, None))
}

/// An on-demand run: who was asked, and (when known) the reports so far.
fn run_json(run: &crate::cluster::ondemand::RunStarted, results: Option<&[ReportRow]>) -> Value {
    let mut body = json!({
        "request_id": run.request_id,
        "check": run.check_id,
        "requested_at": rfc3339(run.requested_at_ms),
        "regions": run.regions,
    });
    if let Some(t) = &run.trace_id {
        body["trace_id"] = json!(t);
    }
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
#[serde(deny_unknown_fields)]
struct NewAgent {
    name: String,
    region: String,
    /// Answer with a join token for `mailloop-agent enroll` instead of the
    /// agent's token.
    #[serde(default)]
    enroll: bool,
    /// The join token's lifetime ("1h", "15m"; default `join_token_ttl`).
    #[serde(default)]
    ttl: Option<String>,
}

async fn add_agent(State(state): State<ApiState>, body: Bytes) -> ApiResult {
    let req: NewAgent = serde_json::from_value(json_body(&body)?).map_err(|e| {
        ApiError::BadRequest(format!("expected {{\"name\": ..., \"region\": ..., \"enroll\": true|false, \"ttl\": \"1h\"}}: {e}"))
    })?;
    if !req.enroll && req.ttl.is_some() {
        return Err(ApiError::BadRequest(
            "ttl is the join token's lifetime: set \"enroll\": true".into(),
        ));
    }
    if req.enroll {
        let ttl = req
            .ttl
            .as_deref()
            .map(|t| {
                humantime::parse_duration(t)
                    .ok()
                    .filter(|d| {
                        *d >= std::time::Duration::from_secs(1)
                            && *d <= crate::config::MAX_JOIN_TOKEN_TTL
                    })
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "ttl {t:?}: a duration from 1s to 7d, e.g. \"1h\""
                        ))
                    })
            })
            .transpose()?;
        let (agent, issued) = state
            .control
            .add_agent_to_enroll(&req.name, &req.region, ttl)
            .await?;
        let view = state
            .hub
            .agent(&agent.name)
            .ok_or_else(|| ApiError::Internal("agent vanished".into()))?;
        // The one and only time the join token leaves the coordinator.
        let join = issued.join_token.expose();
        return ok(
            StatusCode::CREATED,
            json!({
                "agent": agent_json(&view),
                "join_token": join,
                "join_expires_at_ms": issued.expires_at_ms,
                "command": format!("mailloop-agent enroll '{join}'"),
            }),
        );
    }
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

async fn revoke_agent(State(state): State<ApiState>, Path(name): Path<String>) -> ApiResult {
    state.control.revoke_agent(&name, Source::Api).await?;
    let view = state
        .hub
        .agent(&name)
        .ok_or_else(|| ApiError::Internal("agent vanished".into()))?;
    ok(StatusCode::OK, agent_json(&view))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Rotate {
    /// How long the current token keeps working ("1h" by default).
    #[serde(default)]
    grace: Option<String>,
}

/// Longest grace period of a rotated token.
const MAX_ROTATE_GRACE: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// `POST /api/v1/agents/{name}/rotate`: a new token for the agent, sent to
/// it over its assignment stream (never in this answer).
async fn rotate_agent(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult {
    let req: Rotate = if body.iter().all(u8::is_ascii_whitespace) {
        Rotate::default()
    } else {
        serde_json::from_value(json_body(&body)?)
            .map_err(|e| ApiError::BadRequest(format!("expected {{\"grace\": \"1h\"}}: {e}")))?
    };
    let grace = match req.grace.as_deref() {
        None => std::time::Duration::from_secs(3600),
        Some(g) => humantime::parse_duration(g)
            .ok()
            .filter(|d| *d <= MAX_ROTATE_GRACE)
            .ok_or_else(|| ApiError::BadRequest(format!("grace {g:?}: a duration up to 7d, e.g. \"1h\"")))?,
    };
    let (agent, until) = state.control.rotate_agent(&name, grace).await?;
    let view = state
        .hub
        .agent(&agent.name)
        .ok_or_else(|| ApiError::Internal("agent vanished".into()))?;
    ok(
        StatusCode::OK,
        json!({"agent": agent_json(&view), "previous_token_valid_until": rfc3339(until)}),
    )
}

/// Query parameters of `GET /api/v1/audit`.
#[derive(Debug, Deserialize, Default)]
struct AuditParams {
    /// A token name.
    actor: Option<String>,
    /// `check`, `agent`, `incident`, `token`.
    object: Option<String>,
    id: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<u32>,
    /// The previous page's `next`.
    after: Option<String>,
}

/// `GET /api/v1/audit` (admin): who changed what, newest first.
async fn audit_log(State(state): State<ApiState>, Query(p): Query<AuditParams>) -> ApiResult {
    let before_seq = p
        .after
        .as_deref()
        .map(|a| {
            a.parse::<u64>().map_err(|_| {
                ApiError::BadRequest(format!("after={a:?} is not a cursor from a previous page"))
            })
        })
        .transpose()?;
    let page = state
        .storage
        .query_audit(crate::storage::AuditQuery {
            actor: p.actor,
            object: p.object,
            object_id: p.id,
            since_ms: time_bound("since", p.since.as_deref())?,
            until_ms: time_bound("until", p.until.as_deref())?,
            before_seq,
            limit: p.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT),
        })
        .await?;
    let entries: Vec<Value> = page
        .entries
        .iter()
        .map(|e| {
            json!({
                "seq": e.seq,
                "at": rfc3339(e.at_ms),
                "at_ms": e.at_ms,
                "actor": e.actor,
                "role": e.role,
                "source": e.source,
                "action": e.action,
                "object": e.object,
                "id": e.object_id,
                "detail": e.detail,
            })
        })
        .collect();
    ok(
        StatusCode::OK,
        json!({"entries": entries, "next": page.next.map(|n| n.to_string())}),
    )
}

fn token_json(t: &crate::cluster::control::TokenView) -> Value {
    json!({
        "name": t.name,
        "role": t.role.as_str(),
        "source": t.source,
        "created_at": t.created_at_ms.map(rfc3339),
        "created_by": t.created_by,
        "revoked_at": t.revoked_at_ms.map(rfc3339),
    })
}

/// `GET /api/v1/tokens` (admin): names, roles and provenance; never a digest.
async fn list_tokens(State(state): State<ApiState>) -> ApiResult {
    let tokens: Vec<Value> = state.control.list_tokens().iter().map(token_json).collect();
    ok(StatusCode::OK, json!({"tokens": tokens}))
}

#[derive(Deserialize)]
struct NewToken {
    name: String,
    role: String,
}

/// `POST /api/v1/tokens` (admin), body `{"name", "role"}`: 201 with the
/// token, shown only here.
async fn add_token(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> ApiResult {
    let req: NewToken = serde_json::from_value(json_body(&body)?).map_err(|e| {
        ApiError::BadRequest(format!(
            "expected {{\"name\": ..., \"role\": \"read\" or \"admin\"}}: {e}"
        ))
    })?;
    let (view, token) = state
        .control
        .add_token(&req.name, &req.role, &caller.principal.name())
        .await?;
    let mut body = token_json(&view);
    // The one and only time the token leaves the coordinator.
    body["token"] = json!(token.expose());
    ok(StatusCode::CREATED, body)
}

/// `DELETE /api/v1/tokens/{name}` (admin): the token stops working at once.
async fn revoke_token(State(state): State<ApiState>, Path(name): Path<String>) -> ApiResult {
    let view = state.control.revoke_token(&name).await?;
    ok(StatusCode::OK, token_json(&view))
}
