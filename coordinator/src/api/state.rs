//! What every route of the admin API shares: the state handed to handlers,
//! the error type and its JSON rendering, and the parameter parsers.

use crate::auth::{self, Access, Action, Audit, IdFrom};
use crate::clock::now_ms;
use crate::cluster::control::{Control, ControlError};
use crate::cluster::hub::Hub;
use crate::storage::Storage;
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

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
    /// This replica's part among replicas (leader, follower, cut off from the database).
    pub role: tokio::sync::watch::Receiver<crate::storage::ReplicaRole>,
    /// Verdicts, incidents, baselines (routes in `api/judge.rs`).
    pub judge: Arc<crate::judge::run::Judge>,
    /// The coordinator's traces: an on-demand run's `run.order` span.
    pub traces: crate::telemetry::Traces,
    /// The public status page, told to rebuild when a public note is added.
    pub status_page: Option<Arc<crate::web::StatusPage>>,
}

/// How a write to a check, agent or incident is recorded in the audit log.
pub const fn audited(object: &'static str, action: Action, id: IdFrom) -> Access {
    Access::Write(Audit { object, action, id })
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

pub(crate) type ApiResult = Result<Response, ApiError>;

pub(crate) fn ok(status: StatusCode, body: Value) -> ApiResult {
    Ok((status, axum::Json(body)).into_response())
}

/// Refuses unless the request carries a token with the admin role (the
/// route table already enforces this; kept for handlers that check again).
pub(crate) fn admin(state: &ApiState, headers: &HeaderMap) -> Result<(), ApiError> {
    if state.control.is_admin(auth::bearer(headers)) {
        Ok(())
    } else {
        tracing::warn!("admin API write refused: missing or wrong admin token");
        Err(ApiError::Unauthorized)
    }
}

pub(crate) fn json_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not JSON: {e}")))
}

/// RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
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
    let parsed = c
        .split_once(':')
        .and_then(|(ms, key)| Some((ms.parse::<i64>().ok()?, key.to_string())));
    parsed.map(Some).ok_or_else(|| {
        ApiError::BadRequest(format!("{name}={c:?} is not a cursor from a previous page"))
    })
}
