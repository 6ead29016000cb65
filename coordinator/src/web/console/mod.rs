//! The SRE console: `/console`, the place for the details the public
//! status page hides — every check × region now with its last failure, a
//! round's probes as waterfalls beside their learned baselines and the
//! diagnosis, incidents with their evidence and an Acknowledge button,
//! agents, and the alert channels' delivery log.
//!
//! Its routes are admin routes (declared in [`routes`], merged with the
//! API's by `crate::admin`, so the route table lists them and `auth::gate`
//! enforces them): pages need a `read` or `admin` token, acknowledging an `admin`
//! token and is audited. A browser signs in at `/console/login` with a
//! token and gets a session cookie (`auth::session`); a bearer header works
//! too (scripts, tests). A form posted with the cookie must carry the
//! session's CSRF token (403 otherwise); `SameSite=Strict` is the second
//! line. Like the rest of the API, nothing here shows a password, a
//! password reference or a token; alert delivery errors (which may quote
//! a webhook's answer) only to the admin role.
//!
//! HTML from maud templates ([`pages`]), no JavaScript, one inline
//! stylesheet allowed by its hash; the waterfall is inline SVG drawn on
//! the server with a table beside it for screen readers.

pub mod pages;
pub mod paging;

use crate::api::state::{ApiError, ApiState, audited};
use crate::auth::{Access, Action, ApiRouter, Caller, Changed, IdFrom, Role};
use crate::judge::{Incident, IncidentKind, IncidentState, RegionEvidence, RegionState, Verdict};
use crate::storage::{AckOutcome, AlertAttempt, AlertAttemptQuery, IncidentQuery};
use paging::{Links, Page, Paging};
use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use mailloop_common::report::ProbeReport;
use crate::auth::session::{self, Session};
use std::collections::HashMap;
use std::sync::LazyLock;

/// How many past verdicts of a check the overview searches for each
/// region's last failure.
const FAILURE_LOOKBACK: u32 = 200;

/// Active incidents listed on the overview (newest first); the rest are
/// one link away (`/console/incidents?state=active`).
const ACTIVE_SHOWN: usize = 20;

/// A query string's fields.
type Fields = Query<HashMap<String, String>>;

/// A filter field, trimmed (empty when absent).
fn field(q: &HashMap<String, String>, name: &str) -> String {
    q.get(name).map(|v| v.trim().to_string()).unwrap_or_default()
}

/// A list page's rows with its links and what it was filtered by, for a
/// template.
pub struct Listed<T> {
    pub rows: Vec<T>,
    pub links: Links,
    /// The filters in force, as (field, value) (empty values unset).
    pub filters: Vec<(&'static str, String)>,
    /// The page size, kept by the filter form when it is not the default.
    pub size: usize,
}

impl<T> Listed<T> {
    fn new(page: Page<T>, paging: &Paging, path: &str, filters: Vec<(&'static str, String)>) -> Listed<T> {
        let links = Links::of(&page, paging, path, &filters);
        Listed {
            rows: page.rows,
            links,
            filters,
            size: paging.size,
        }
    }

    /// A filter's value ("" when unset).
    pub fn filter(&self, name: &str) -> &str {
        self.filters
            .iter()
            .find(|(k, _)| *k == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// The console's routes and what each needs (merged with the API's by
/// `crate::admin`).
#[rustfmt::skip]
pub fn routes() -> ApiRouter<ApiState> {
    use Access::{Public, Read};
    // Audited only when it changed something (a second click is not an act).
    let ack = audited("incident", Action::FromChange, IdFrom::Path("id"));
    ApiRouter::new()
        .route(Method::GET, "/console/login", Public, login_form)
        .route(Method::POST, "/console/login", Public, login)
        .route(Method::POST, "/console/logout", Public, logout)
        .route(Method::GET, "/console", Read, overview)
        .route(Method::GET, "/console/checks/{id}/rounds/{round}", Read, round)
        .route(Method::GET, "/console/incidents", Read, incidents)
        .route(Method::GET, "/console/incidents/{id}", Read, incident)
        .route(Method::POST, "/console/incidents/{id}/ack", ack, acknowledge)
        .route(Method::GET, "/console/agents", Read, agents)
        .route(Method::GET, "/console/alerts", Read, alerts)
}

/// What a console page without a session gets instead of the API's JSON:
/// 401 and the sign-in form (a layer over the admin router: the gate
/// refuses, this turns the refusal into a page for a browser).
pub async fn sign_in_first(req: Request, next: axum::middleware::Next) -> Response {
    let page = session::is_console_path(req.uri().path()) && req.uri().path() != "/console/login";
    let resp = next.run(req).await;
    if page && resp.status() == StatusCode::UNAUTHORIZED {
        return html(
            StatusCode::UNAUTHORIZED,
            pages::login(Some("Sign in with an API token to see the console.")),
        );
    }
    resp
}

/// The stylesheet's Content-Security-Policy: no script at all, the one
/// inline stylesheet by its hash, forms only to this origin, no framing.
static CSP: LazyLock<HeaderValue> = LazyLock::new(|| {
    let digest = ring::digest::digest(&ring::digest::SHA256, pages::CSS.as_bytes());
    let hash = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
    HeaderValue::from_str(&format!(
        "default-src 'none'; style-src 'sha256-{hash}'; img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ))
    .expect("ascii")
});

/// A console page with its security headers; never cached (it is private
/// and current).
fn html(status: StatusCode, markup: maud::Markup) -> Response {
    let mut resp = (status, markup.into_string()).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CONTENT_SECURITY_POLICY, CSP.clone());
    resp
}

type PageResult = Result<Response, ApiError>;

/// Who is looking, for the page header and the forms.
pub struct Viewer {
    pub name: String,
    pub role: Role,
    /// The session's CSRF token; None with a bearer header (no form needs one then).
    pub csrf: Option<String>,
}

fn viewer(caller: &Caller, session: Option<&Session>) -> Viewer {
    let (name, role) = match &caller.principal {
        crate::auth::Principal::Token { name, role } => (name.clone(), *role),
        _ => (String::new(), Role::Read),
    };
    Viewer {
        name,
        role,
        csrf: session.map(|s| s.csrf.clone()),
    }
}

/// A form body's fields (`application/x-www-form-urlencoded`).
fn form(body: &Bytes) -> HashMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

async fn login_form() -> Response {
    html(StatusCode::OK, pages::login(None))
}

/// `POST /console/login`, form `token=...`: a session cookie and a
/// redirect to the overview, or the form again (400 empty, 401 unknown).
async fn login(State(state): State<ApiState>, body: Bytes) -> Response {
    let fields = form(&body);
    let token = fields.get("token").map(|t| t.trim()).unwrap_or("");
    if token.is_empty() {
        return html(
            StatusCode::BAD_REQUEST,
            pages::login(Some("Enter an API token.")),
        );
    }
    let tokens = state.control.tokens();
    let Some((name, role)) = tokens.find(token) else {
        tracing::warn!("console sign-in refused: unknown token");
        return html(
            StatusCode::UNAUTHORIZED,
            pages::login(Some("That token is unknown or revoked.")),
        );
    };
    tracing::info!(token = %name, role = role.as_str(), "console sign-in");
    let digest = crate::config::names::token_sha256(token);
    let (cookie, _) = match tokens.sessions.create(name, role, digest, crate::clock::now_ms()).await {
        Ok(made) => made,
        Err(e) => {
            tracing::error!(error = %e, "console sign-in: the session could not be stored");
            return html(
                StatusCode::SERVICE_UNAVAILABLE,
                pages::login(Some("Signing in is not possible right now (storage unavailable); try again.")),
            );
        }
    };
    let set = tokens.sessions.set_cookie(&cookie);
    let mut resp = (StatusCode::SEE_OTHER, [(header::LOCATION, "/console")]).into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&set).expect("ascii"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `POST /console/logout`: ends the cookie's session (with its CSRF token).
async fn logout(State(state): State<ApiState>, headers: HeaderMap, body: Bytes) -> Response {
    let tokens = state.control.tokens();
    if let Some(cookie) = session::cookie_value(&headers) {
        let now = crate::clock::now_ms();
        let csrf = form(&body).remove("csrf").unwrap_or_default();
        match tokens.sessions.find(cookie, now).await {
            Some(s) if !s.csrf_matches(&csrf) => {
                return html(
                    StatusCode::FORBIDDEN,
                    pages::forbidden("The form's CSRF token is missing or wrong."),
                );
            }
            _ => tokens.sessions.remove(cookie).await,
        }
    }
    let mut resp = html(StatusCode::OK, pages::login(Some("Signed out.")));
    let clear = tokens.sessions.clear_cookie();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&clear).expect("ascii"),
    );
    resp
}

/// One region of one check on the overview.
pub struct RegionRow {
    pub region: String,
    pub now: Option<RegionEvidence>,
    /// The newest verdict (of the last [`FAILURE_LOOKBACK`]) in which this
    /// region failed or was deferred: its round, round start and evidence.
    pub last_failure: Option<(u64, i64, RegionEvidence)>,
}

/// One check on the overview.
pub struct CheckRow {
    pub name: String,
    pub latest: Option<Verdict>,
    pub regions: Vec<RegionRow>,
}

/// A region's failure for the overview's "last failure": a failed or
/// deferred probe (a slow one is `degraded`, shown as "now", not here).
fn failing(e: &RegionEvidence) -> bool {
    matches!(e.state, RegionState::Failed | RegionState::Deferred)
}

/// `GET /console`: a page of checks (by name, `?q=` a part of the name)
/// with every region's state now and last failure, and the newest active
/// incidents.
async fn overview(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    session: Option<Extension<Session>>,
    Query(q): Fields,
) -> PageResult {
    let paging = Paging::from_query(&q);
    let name_part = field(&q, "q");
    let mut live = state.hub.checks();
    live.retain(|c| c.spec.name.contains(name_part.as_str()));
    live.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    let page = paging.slice(live, |c| c.spec.name.clone());
    let ids: Vec<String> = page.rows.iter().map(|c| c.spec.name.clone()).collect();
    let (mut latest, active) = state.storage.status_snapshot(ids).await?;
    let mut rows = Vec::new();
    for c in &page.rows {
        let name = c.spec.name.clone();
        let recent = state
            .storage
            .recent_verdicts(name.clone(), FAILURE_LOOKBACK)
            .await?;
        let v = latest.remove(&name);
        let mut regions: Vec<String> = c.spec.regions.clone();
        regions.sort();
        let rows_of = regions
            .into_iter()
            .map(|region| {
                let now = v
                    .as_ref()
                    .and_then(|v| v.regions.iter().find(|r| r.region == region).cloned());
                let last_failure = recent.iter().rev().find_map(|v| {
                    v.regions
                        .iter()
                        .find(|r| r.region == region && failing(r))
                        .map(|r| (v.round, v.round_start_ms, r.clone()))
                });
                RegionRow {
                    region,
                    now,
                    last_failure,
                }
            })
            .collect();
        rows.push(CheckRow {
            name,
            latest: v,
            regions: rows_of,
        });
    }
    let mut active = active;
    active.sort_by_key(|i| std::cmp::Reverse(i.opened_at_ms));
    let active_total = active.len();
    active.truncate(ACTIVE_SHOWN);
    let viewer = viewer(&caller, session.as_deref());
    let listed = Listed::new(
        Page {
            rows,
            prev: page.prev,
            next: page.next,
        },
        &paging,
        "/console",
        vec![("q", name_part)],
    );
    Ok(html(
        StatusCode::OK,
        pages::overview(&viewer, &listed, &active, active_total),
    ))
}

/// `GET /console/incidents`: every incident, newest first, a page at a
/// time, filtered by `state` (`active`, `open`, `acknowledged`,
/// `resolved`), `kind` and `check` (its exact name).
async fn incidents(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    session: Option<Extension<Session>>,
    Query(q): Fields,
) -> PageResult {
    let paging = Paging::from_query(&q);
    let state_filter = field(&q, "state");
    let states = match state_filter.as_str() {
        "active" => vec![IncidentState::Open, IncidentState::Acknowledged],
        "open" => vec![IncidentState::Open],
        "acknowledged" => vec![IncidentState::Acknowledged],
        "resolved" => vec![IncidentState::Resolved],
        _ => Vec::new(),
    };
    let kind_filter = field(&q, "kind");
    let kind = IncidentKind::ALL
        .into_iter()
        .find(|k| k.as_str() == kind_filter);
    let check = field(&q, "check");
    let (before_id, after_id) = paging.numeric_bounds();
    let rows = state
        .storage
        .list_incidents(IncidentQuery {
            states,
            kind,
            check_id: (!check.is_empty()).then(|| check.clone()),
            limit: paging.fetch() as u32,
            before_id,
            after_id,
        })
        .await?;
    let page = paging.settle(rows, |i: &Incident| i.id.to_string());
    let listed = Listed::new(
        page,
        &paging,
        "/console/incidents",
        vec![
            ("state", if states_known(&state_filter) { state_filter } else { String::new() }),
            ("kind", kind.map(|k| k.as_str().to_string()).unwrap_or_default()),
            ("check", check),
        ],
    );
    let viewer = viewer(&caller, session.as_deref());
    Ok(html(StatusCode::OK, pages::incidents(&viewer, &listed)))
}

/// The `state` filter's words.
fn states_known(s: &str) -> bool {
    matches!(s, "active" | "open" | "acknowledged" | "resolved")
}

/// One region's probe in a round: the stored report, parsed.
pub struct ProbeView {
    pub region: String,
    pub agent: String,
    pub report: Option<ProbeReport>,
}

async fn round(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    session: Option<Extension<Session>>,
    Path((id, round)): Path<(String, String)>,
) -> PageResult {
    let Ok(round) = round.parse::<u64>() else {
        return Err(ApiError::NotFound(format!(
            "no round {round:?} (rounds are numbers)"
        )));
    };
    if state.hub.check(&id).is_none() {
        return Err(ApiError::NotFound(format!("no check {id:?}")));
    }
    let rows = state.storage.round_reports(id.clone(), round).await?;
    let mut probes: Vec<ProbeView> = rows
        .into_iter()
        .map(|r| ProbeView {
            report: serde_json::from_str(&r.report_json).ok(),
            region: r.region,
            agent: r.agent,
        })
        .collect();
    probes.sort_by(|a, b| a.region.cmp(&b.region).then(a.agent.cmp(&b.agent)));
    let baselines = state.judge.baselines(&id).unwrap_or_default();
    let viewer = viewer(&caller, session.as_deref());
    Ok(html(
        StatusCode::OK,
        pages::round(
            &viewer,
            &id,
            round,
            &probes,
            &baselines,
            crate::clock::now_ms(),
        ),
    ))
}

fn incident_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::NotFound(format!("no incident {raw:?} (ids are numbers)")))
}

/// The incident's page: the incident, its last round's evidence per
/// region, and (for the admin, while open) the Acknowledge form.
async fn incident_page(
    state: &ApiState,
    viewer: &Viewer,
    id: u64,
    notice: Option<&str>,
) -> PageResult {
    let Some(i) = state.storage.incident(id).await? else {
        return Err(ApiError::NotFound(format!("no incident {id}")));
    };
    let recent = state
        .storage
        .recent_verdicts(i.check_id.clone(), FAILURE_LOOKBACK)
        .await?;
    let evidence = recent
        .iter()
        .rev()
        .find(|v| v.round == i.last_round)
        .or_else(|| recent.last())
        .cloned();
    Ok(html(
        StatusCode::OK,
        pages::incident(viewer, &i, evidence.as_ref(), notice),
    ))
}

async fn incident(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    session: Option<Extension<Session>>,
    Path(id): Path<String>,
) -> PageResult {
    let id = incident_id(&id)?;
    incident_page(&state, &viewer(&caller, session.as_deref()), id, None).await
}

/// `POST /console/incidents/{id}/ack`: with the session cookie, the form's
/// `csrf` must be the session's (403 otherwise, nothing changes). 200 with
/// the incident's page (the audit log records answers that succeeded).
async fn acknowledge(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    session: Option<Extension<Session>>,
    Path(id): Path<String>,
    body: Bytes,
) -> PageResult {
    if let Some(s) = session.as_deref() {
        let given = form(&body).remove("csrf").unwrap_or_default();
        if !s.csrf_matches(&given) {
            tracing::warn!(caller = %caller.principal.name(), "console acknowledge refused: missing or wrong CSRF token");
            return Ok(html(
                StatusCode::FORBIDDEN,
                pages::forbidden(
                    "The form's CSRF token is missing or wrong; reload the incident and try again.",
                ),
            ));
        }
    }
    let id = incident_id(&id)?;
    let viewer = viewer(&caller, session.as_deref());
    let (notice, changed) = match state
        .judge
        .acknowledge(id, Some(viewer.name.clone()))
        .await?
    {
        AckOutcome::Acknowledged(_) => ("Acknowledged.", true),
        AckOutcome::AlreadyAcknowledged(_) => ("It was already acknowledged.", false),
        AckOutcome::Resolved(_) => {
            return Err(ApiError::Conflict(format!(
                "incident {id} is resolved; there is nothing to acknowledge"
            )));
        }
        AckOutcome::NotFound => return Err(ApiError::NotFound(format!("no incident {id}"))),
    };
    let mut page = incident_page(&state, &viewer, id, Some(notice)).await?;
    if changed {
        page.extensions_mut().insert(Changed("acknowledged"));
    }
    Ok(page)
}

/// An agent's place in the agents list (by region, then name): `,` sorts
/// before every character a name may hold, so the keys' order is the
/// list's.
fn agent_key(a: &crate::cluster::hub::AgentView) -> String {
    format!("{},{}", a.stored.region, a.stored.name)
}

/// `GET /console/agents`: agents by region and name, a page at a time,
/// `?region=` one region's.
async fn agents(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    session: Option<Extension<Session>>,
    Query(q): Fields,
) -> PageResult {
    let paging = Paging::from_query(&q);
    let region = field(&q, "region");
    let mut agents = state.hub.agents();
    let mut regions: Vec<String> = agents.iter().map(|a| a.stored.region.clone()).collect();
    regions.sort();
    regions.dedup();
    if !region.is_empty() {
        agents.retain(|a| a.stored.region == region);
    }
    agents.sort_by_key(agent_key);
    let page = paging.slice(agents, agent_key);
    let listed = Listed::new(page, &paging, "/console/agents", vec![("region", region)]);
    let viewer = viewer(&caller, session.as_deref());
    Ok(html(
        StatusCode::OK,
        pages::agents(&viewer, &listed, &regions, crate::clock::now_ms()),
    ))
}

/// `GET /console/alerts`: the channels' counters, and the delivery log:
/// every attempt, newest first, a page at a time, `?channel=` and
/// `?incident=` to narrow it.
async fn alerts(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    session: Option<Extension<Session>>,
    Query(q): Fields,
) -> PageResult {
    let paging = Paging::from_query(&q);
    let status = state.judge.alerts().status();
    let channel = field(&q, "channel");
    let incident = field(&q, "incident");
    let incident_id = incident.trim_start_matches('#').parse::<u64>().ok();
    let (before_seq, after_seq) = paging.numeric_bounds();
    let rows = state
        .storage
        .alert_attempts(AlertAttemptQuery {
            channel: (!channel.is_empty()).then(|| channel.clone()),
            incident_id,
            before_seq,
            after_seq,
            limit: paging.fetch() as u32,
        })
        .await?;
    let page = paging.settle(rows, |a: &AlertAttempt| a.seq.to_string());
    let listed = Listed::new(
        page,
        &paging,
        "/console/alerts",
        vec![
            ("channel", channel),
            ("incident", incident_id.map(|i| i.to_string()).unwrap_or_default()),
        ],
    );
    let viewer = viewer(&caller, session.as_deref());
    Ok(html(
        StatusCode::OK,
        pages::alerts(&viewer, &status, &listed),
    ))
}

/// Whether an incident can still be acknowledged.
pub fn acknowledgeable(state: IncidentState) -> bool {
    state == IncidentState::Open
}
