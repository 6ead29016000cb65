//! Who may call what on the admin API, and the record of what they changed.
//!
//! Every request is authenticated once, by [`gate`] (a layer over the whole
//! router): its bearer token becomes a [`Principal`] — an API token with a
//! name and a [`Role`], an agent, an unknown token, or nobody. Every route is
//! declared through [`ApiRouter`] with its [`Access`], which
//! [`authorize`] enforces just before the handler; there is no way to add a
//! route without one, and [`gate`] turns the answer of a route that somehow
//! skipped [`authorize`] into a 500 (default deny). [`ApiRouter::table`] is
//! the list the route-table test walks.
//!
//! Roles:
//! - `admin`: everything. Sees password *references* (`password_env`,
//!   `password_file` names) so a check can be re-applied; never a password.
//! - `read`: every `GET` except the audit log. Sees what was measured and
//!   decided — checks with hosts, addresses and usernames, results with
//!   server replies and headers, certificate subjects, verdicts, incidents,
//!   agents, alert counters — but no credential and nothing a third party
//!   might echo one in: passwords, password references and alert delivery
//!   errors (`last_error`, which can quote a webhook's answer) are
//!   `"<redacted>"`.
//! - agents: their tokens work only on the gRPC agent API (403 here).
//! - nobody (no token): only [`Access::Public`] routes (`/healthz`,
//!   `/readyz`); a public page would be one more `Public` route that shows
//!   only what a check marks public.
//!
//! On `/console` paths only, the SRE console's session cookie (see
//! `web/console/session.rs`) stands for the token it was exchanged for,
//! while that token is in force.
//!
//! Tokens are kept as SHA-256 digests and compared in constant time
//! (`subtle`); the token itself never reaches a log or a response.
//!
//! Every successful admin write ([`Access::Write`]) is appended to the audit
//! log (`Storage::append_audit`) before the answer goes out: who (token
//! name), from where (source IP), what (`created`, `changed`, `deleted`,
//! `acknowledged`, `revoked`, `run`), on which object, when.

pub mod session;

use crate::cluster::hub::{AuthError, Hub};
pub use crate::config::tokens::{Role, TokenDecl};
use crate::storage::{AuditEntry, Storage};
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::handler::Handler;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodFilter;
use serde_json::{Value, json};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use subtle::ConstantTimeEq;

/// What a hidden value is replaced with in an answer.
pub const REDACTED: &str = "<redacted>";

/// Keys whose values a `read` token never sees, at any depth of an answer.
const READ_HIDDEN_KEYS: [&str; 9] = [
    "password",
    "password_env",
    "password_file",
    // A check's [oauth2] references, hidden like the password ones.
    "client_secret_env",
    "client_secret_file",
    "refresh_token_file",
    "token",
    "last_error",
    // An alert delivery attempt's error (`GET /api/v1/alerts/attempts`).
    "delivery_error",
];

/// A `read` answer larger than this is refused rather than passed unscrubbed
/// (result pages are bounded well below it). The scrub is a second line of
/// defence behind the handlers, which already leave secrets out, and it
/// parses only answers that mention one of [`READ_HIDDEN_KEYS`].
const SCRUB_MAX_BYTES: usize = 64 * 1024 * 1024;

struct TokenEntry {
    name: String,
    role: Role,
    digest: [u8; 32],
}

/// The API tokens in force; replaced whole on a config reload.
#[derive(Default)]
pub struct Tokens {
    entries: RwLock<Vec<TokenEntry>>,
    /// The SRE console's login sessions (each honoured while its token is).
    pub sessions: session::Sessions,
}

impl Tokens {
    pub fn new(decls: &[TokenDecl]) -> Tokens {
        let t = Tokens::default();
        t.replace(decls);
        t
    }

    /// Makes `decls` the tokens in force (a declaration whose digest is not
    /// 64 hex digits is skipped; the config reader refuses those).
    pub fn replace(&self, decls: &[TokenDecl]) {
        let entries = decls
            .iter()
            .filter_map(|d| {
                Some(TokenEntry {
                    name: d.name.clone(),
                    role: d.role,
                    digest: digest_from_hex(&d.sha256)?,
                })
            })
            .collect();
        *self.entries.write().unwrap_or_else(|e| e.into_inner()) = entries;
    }

    /// The name and role of `bearer`, if it is an API token. Every entry is
    /// compared, in constant time, whether or not an earlier one matched.
    pub fn find(&self, bearer: &str) -> Option<(String, Role)> {
        let given = ring::digest::digest(&ring::digest::SHA256, bearer.as_bytes());
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        let mut found = None;
        for e in entries.iter() {
            if bool::from(e.digest.ct_eq(given.as_ref())) {
                found = Some((e.name.clone(), e.role));
            }
        }
        found
    }

    /// Whether the token whose SHA-256 is `sha256_hex` is in force with
    /// `role` (a console session's test: the very token it was made with).
    pub fn in_force(&self, sha256_hex: &str, role: Role) -> bool {
        let Some(digest) = digest_from_hex(sha256_hex) else {
            return false;
        };
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries.iter().any(|e| e.role == role && bool::from(e.digest.ct_eq(&digest)))
    }

    /// Names and roles in force (never the digests).
    pub fn list(&self) -> Vec<(String, Role)> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries.iter().map(|e| (e.name.clone(), e.role)).collect()
    }
}

fn digest_from_hex(h: &str) -> Option<[u8; 32]> {
    if h.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// No `Authorization: Bearer` header.
    Anonymous,
    /// A token nobody was given (or a revoked agent's).
    Unknown,
    /// An agent's token: good for gRPC only.
    Agent(String),
    /// An API token.
    Token { name: String, role: Role },
}

impl Principal {
    pub fn role(&self) -> Option<Role> {
        match self {
            Principal::Token { role, .. } => Some(*role),
            _ => None,
        }
    }

    /// How logs and the audit log name the caller.
    pub fn name(&self) -> String {
        match self {
            Principal::Anonymous => "(no token)".into(),
            Principal::Unknown => "(unknown token)".into(),
            Principal::Agent(n) => format!("agent {n}"),
            Principal::Token { name, .. } => name.clone(),
        }
    }
}

/// The caller of one request, put in its extensions by [`gate`].
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    /// The peer's IP (absent only when the server was started without
    /// connection info, e.g. in a unit test).
    pub source: Option<IpAddr>,
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without a token.
    Public,
    /// A `read` or `admin` token.
    Read,
    /// An `admin` token; reads nothing else may see (the audit log).
    Admin,
    /// An `admin` token; a change, recorded in the audit log.
    Write(Audit),
}

impl Access {
    /// `public`, `read`, `admin` (writes too): the name the route table shows.
    pub fn role_name(self) -> &'static str {
        match self {
            Access::Public => "public",
            Access::Read => "read",
            Access::Admin | Access::Write(_) => "admin",
        }
    }
}

/// How a write is recorded in the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Audit {
    /// `check`, `agent`, `incident`, `token`.
    pub object: &'static str,
    pub action: Action,
    /// Where the object's id is found.
    pub id: IdFrom,
}

/// The verb of an audit entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Always this verb.
    Fixed(&'static str),
    /// From the answer's `change`: `created`, `updated` (recorded as
    /// `changed`), `acknowledged`; `unchanged` is not recorded. An answer
    /// that is not JSON (a console page) says it with a [`Changed`]
    /// extension instead.
    FromChange,
}

/// Response extension of a handler whose answer is not JSON: what it
/// changed, for [`Action::FromChange`] (absent: nothing changed, nothing
/// is audited).
#[derive(Debug, Clone, Copy)]
pub struct Changed(pub &'static str);

/// Where an audited object's id comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdFrom {
    /// A path parameter (`id` in `/api/v1/checks/{id}`).
    Path(&'static str),
    /// A JSON pointer into the answer (`/agent/name`).
    Body(&'static str),
}

/// One route of the admin API: method, path pattern and what it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
}

/// A router whose every route carries its [`Access`], and the list of them.
pub struct ApiRouter<S> {
    router: Router<S>,
    table: Vec<RouteSpec>,
}

impl<S: Clone + Send + Sync + 'static> Default for ApiRouter<S> {
    fn default() -> Self {
        ApiRouter {
            router: Router::new(),
            table: Vec::new(),
        }
    }
}

impl<S: Clone + Send + Sync + 'static> ApiRouter<S> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `method path` served by `handler`, guarded by `access`.
    pub fn route<H, T>(
        mut self,
        method: Method,
        path: &'static str,
        access: Access,
        handler: H,
    ) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone()).expect("a standard HTTP method");
        let guarded = axum::routing::on(filter, handler).route_layer(axum::middleware::from_fn(
            move |req: Request, next: Next| authorize(access, req, next),
        ));
        self.router = self.router.route(path, guarded);
        self.table.push(RouteSpec {
            method,
            path,
            access,
        });
        self
    }

    /// Adds every route of `other`.
    pub fn merge(mut self, other: ApiRouter<S>) -> Self {
        self.router = self.router.merge(other.router);
        self.table.extend(other.table);
        self
    }

    /// Every route declared so far.
    pub fn table(&self) -> &[RouteSpec] {
        &self.table
    }

    pub fn into_router(self) -> Router<S> {
        self.router
    }
}

/// What [`gate`] needs: the API tokens, the agents (to tell an agent's token
/// from an unknown one) and the audit log.
#[derive(Clone)]
pub struct Gate {
    pub tokens: Arc<Tokens>,
    pub hub: Arc<Hub>,
    pub storage: Arc<Storage>,
}

/// The storage the audit log goes to, in each request's extensions.
#[derive(Clone)]
struct AuditLog(Arc<Storage>);

/// Marks an answer that went through [`authorize`].
#[derive(Clone, Copy)]
struct PolicyApplied;

/// The token of `Authorization: Bearer <token>`.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

impl Gate {
    /// Who `headers` say the caller is.
    pub fn principal(&self, headers: &HeaderMap) -> Principal {
        let Some(token) = bearer(headers) else {
            return Principal::Anonymous;
        };
        if let Some((name, role)) = self.tokens.find(token) {
            return Principal::Token { name, role };
        }
        match self.hub.authenticate(Some(token)) {
            Ok(agent) => Principal::Agent(agent.name),
            Err(AuthError::Revoked(_) | AuthError::Rotated(_) | AuthError::Unknown | AuthError::Missing) => {
                Principal::Unknown
            }
        }
    }
}

/// The layer over the whole router: authenticates the caller, and refuses
/// (500) the answer of any matched route that did not go through
/// [`authorize`] — a route without an access policy serves nobody.
pub async fn gate(State(gate): State<Gate>, mut req: Request, next: Next) -> Response {
    let mut principal = gate.principal(req.headers());
    // The SRE console (`/console`, and nothing else) also takes its
    // session cookie, honoured while its token is in force.
    let cookie = (principal == Principal::Anonymous)
        .then(|| session::session_cookie(&req))
        .flatten();
    if let Some(cookie) = cookie
        && let Some(s) = session::session_of(&gate.tokens, &cookie).await
    {
        principal = Principal::Token { name: s.name.clone(), role: s.role };
        req.extensions_mut().insert(s);
    }
    let caller = Caller {
        principal,
        source: req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip()),
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let method = req.method().clone();
    req.extensions_mut().insert(caller);
    req.extensions_mut().insert(AuditLog(gate.storage.clone()));
    let resp = next.run(req).await;
    match route {
        Some(route)
            if resp.extensions().get::<PolicyApplied>().is_none()
                && resp.status() != StatusCode::METHOD_NOT_ALLOWED =>
        {
            tracing::error!(%method, %route, "admin API route without an access policy; refused");
            refusal(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{method} {route} has no access policy (a bug): refused for everyone"),
            )
        }
        _ => resp,
    }
}

/// Enforces `access` for one route, scrubs `read` answers, and records
/// successful writes in the audit log.
async fn authorize(access: Access, req: Request, next: Next) -> Response {
    let caller = req.extensions().get::<Caller>().cloned().unwrap_or(Caller {
        principal: Principal::Anonymous,
        source: None,
    });
    let mut resp = match refuse(access, &caller.principal) {
        Some((status, why)) => {
            let source = caller.source.map(|ip| ip.to_string()).unwrap_or_default();
            tracing::warn!(method = %req.method(), path = %req.uri().path(), caller = %caller.principal.name(), %source, "admin API request refused: {why}");
            refusal(status, why)
        }
        None => match access {
            Access::Write(audit) => write(audit, &caller, req, next).await,
            _ if caller.principal.role() == Some(Role::Read) => {
                scrub_for_read(next.run(req).await).await
            }
            _ => next.run(req).await,
        },
    };
    resp.extensions_mut().insert(PolicyApplied);
    resp
}

/// Why `principal` may not use a route needing `access` (status, message).
fn refuse(access: Access, principal: &Principal) -> Option<(StatusCode, String)> {
    let needs = match access {
        Access::Public => return None,
        Access::Read => "a read or admin token",
        Access::Admin | Access::Write(_) => "an admin token",
    };
    match principal {
        Principal::Anonymous => Some((
            StatusCode::UNAUTHORIZED,
            format!("this needs {needs}: Authorization: Bearer <token>"),
        )),
        Principal::Unknown => Some((
            StatusCode::UNAUTHORIZED,
            format!("the token is unknown or revoked; this needs {needs}"),
        )),
        Principal::Agent(name) => Some((
            StatusCode::FORBIDDEN,
            format!(
                "this is agent {name:?}'s token, which works only on the gRPC agent API; this needs {needs}"
            ),
        )),
        Principal::Token {
            role: Role::Admin, ..
        } => None,
        Principal::Token {
            role: Role::Read, ..
        } if access == Access::Read => None,
        Principal::Token {
            name,
            role: Role::Read,
        } => Some((
            StatusCode::FORBIDDEN,
            format!("token {name:?} has the read role; this needs {needs}"),
        )),
    }
}

fn refusal(status: StatusCode, message: String) -> Response {
    let mut resp = (status, axum::Json(json!({"error": message}))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

/// Runs an admin write and, when it succeeded, appends it to the audit log
/// before answering.
async fn write(audit: Audit, caller: &Caller, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let path_id = match audit.id {
        IdFrom::Path(name) => RawPathParams::from_request_parts(&mut parts, &())
            .await
            .ok()
            .and_then(|p| {
                p.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }),
        IdFrom::Body(_) => None,
    };
    let storage = parts.extensions.get::<AuditLog>().cloned();
    let resp = next.run(Request::from_parts(parts, body)).await;
    if !resp.status().is_success() {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "reading an admin write's answer for the audit log failed");
            return refusal(StatusCode::INTERNAL_SERVER_ERROR, "answer lost".into());
        }
    };
    let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let marked = parts.extensions.get::<Changed>().map(|c| c.0);
    let action = match audit.action {
        Action::Fixed(verb) => Some(verb),
        Action::FromChange if marked.is_some() => marked,
        Action::FromChange => match answer.get("change").and_then(Value::as_str) {
            Some("created") => Some("created"),
            Some("updated") => Some("changed"),
            Some("acknowledged") => Some("acknowledged"),
            _ => None,
        },
    };
    let object_id = match audit.id {
        IdFrom::Path(_) => path_id,
        IdFrom::Body(pointer) => answer
            .pointer(pointer)
            .and_then(Value::as_str)
            .map(str::to_string),
    };
    if let (Some(action), Some(storage)) = (action, storage) {
        let detail = ["revision", "request_id"]
            .iter()
            .filter_map(|k| {
                answer
                    .get(*k)
                    .filter(|v| !v.is_null())
                    .map(|v| format!("{k} {}", plain(v)))
            })
            .collect::<Vec<_>>()
            .join(", ");
        let entry = AuditEntry {
            seq: 0,
            at_ms: crate::clock::now_ms(),
            actor: caller.principal.name(),
            role: caller.principal.role().map_or("", Role::as_str).to_string(),
            source: caller.source.map(|ip| ip.to_string()),
            action: action.to_string(),
            object: audit.object.to_string(),
            object_id: object_id.unwrap_or_default(),
            detail: (!detail.is_empty()).then_some(detail),
        };
        tracing::info!(actor = %entry.actor, source = entry.source.as_deref().unwrap_or(""), action = %entry.action, object = %entry.object, id = %entry.object_id, "audit");
        if let Err(e) = storage.0.append_audit(entry).await {
            // The change itself is committed; say loudly that its record is not.
            tracing::error!(error = %e, "the change was made but its audit entry could not be stored");
        }
    }
    Response::from_parts(parts, Body::from(bytes))
}

fn plain(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

/// A `read` caller's answer with [`READ_HIDDEN_KEYS`] redacted.
async fn scrub_for_read(resp: Response) -> Response {
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = match axum::body::to_bytes(body, SCRUB_MAX_BYTES).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "reading an answer to scrub it failed");
            return refusal(StatusCode::INTERNAL_SERVER_ERROR, "answer too large".into());
        }
    };
    let mentions = |key: &str| {
        let needle = format!("\"{key}\"");
        bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
    };
    if !READ_HIDDEN_KEYS.iter().any(|k| mentions(k)) {
        return Response::from_parts(parts, Body::from(bytes));
    }
    let Ok(mut value) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    redact_keys(&mut value, &READ_HIDDEN_KEYS);
    let out = serde_json::to_vec(&value).expect("JSON serializes");
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(out))
}

/// Replaces the value of every `keys` entry (at any depth) that is set
/// (not null) with [`REDACTED`].
pub fn redact_keys(v: &mut Value, keys: &[&str]) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                if keys.contains(&k.as_str()) && !child.is_null() {
                    *child = Value::String(REDACTED.into());
                } else {
                    redact_keys(child, keys);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|c| redact_keys(c, keys)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl(name: &str, role: Role, token: &str) -> TokenDecl {
        TokenDecl {
            name: name.into(),
            role,
            sha256: crate::config::names::token_sha256(token),
        }
    }

    #[test]
    fn a_token_is_found_by_its_digest_and_nothing_else_is() {
        let tokens = Tokens::new(&[
            decl("admin", Role::Admin, "the-admin-token-0123456789"),
            decl("grafana", Role::Read, "the-grafana-token-0123456789"),
        ]);
        assert_eq!(
            tokens.find("the-grafana-token-0123456789"),
            Some(("grafana".into(), Role::Read))
        );
        assert_eq!(
            tokens.find("the-admin-token-0123456789"),
            Some(("admin".into(), Role::Admin))
        );
        for wrong in [
            "",
            "the-grafana-token-012345678",
            "the-grafana-token-0123456789 ",
            "THE-ADMIN-TOKEN-0123456789",
        ] {
            assert_eq!(tokens.find(wrong), None, "{wrong:?}");
        }
        // A reload replaces every token: the old one stops working at once.
        tokens.replace(&[decl(
            "grafana",
            Role::Read,
            "a-new-grafana-token-0123456789",
        )]);
        assert_eq!(tokens.find("the-grafana-token-0123456789"), None);
        assert_eq!(tokens.find("the-admin-token-0123456789"), None);
        assert_eq!(tokens.list(), [("grafana".to_string(), Role::Read)]);
    }

    #[test]
    fn roles_are_refused_with_the_right_status() {
        let read = Principal::Token {
            name: "grafana".into(),
            role: Role::Read,
        };
        let admin = Principal::Token {
            name: "admin".into(),
            role: Role::Admin,
        };
        let agent = Principal::Agent("eu-1".into());
        let write = Access::Write(Audit {
            object: "check",
            action: Action::Fixed("deleted"),
            id: IdFrom::Path("id"),
        });
        let status = |a, p: &Principal| refuse(a, p).map(|(s, _)| s.as_u16());
        assert_eq!(status(Access::Public, &Principal::Anonymous), None);
        assert_eq!(status(Access::Read, &Principal::Anonymous), Some(401));
        assert_eq!(status(Access::Read, &Principal::Unknown), Some(401));
        assert_eq!(status(Access::Read, &agent), Some(403));
        assert_eq!(status(Access::Read, &read), None);
        assert_eq!(status(Access::Admin, &read), Some(403));
        assert_eq!(status(write, &read), Some(403));
        assert_eq!(status(write, &agent), Some(403));
        assert_eq!(status(write, &admin), None);
        assert_eq!(status(Access::Admin, &admin), None);
    }

    /// A router with one declared route and one added behind the table's
    /// back, served on 127.0.0.1:0 with the gate over both.
    #[tokio::test]
    async fn a_route_that_skipped_the_policy_serves_nobody() {
        let dir = tempfile::tempdir().unwrap();
        let gate = Gate {
            tokens: Arc::new(Tokens::new(&[decl(
                "admin",
                Role::Admin,
                "the-admin-token-0123456789",
            )])),
            hub: Hub::new(vec![], vec![]),
            storage: Arc::new(Storage::open(dir.path()).unwrap()),
        };
        let declared =
            ApiRouter::<()>::new().route(Method::GET, "/declared", Access::Read, || async { "ok" });
        assert_eq!(declared.table().len(), 1);
        let app = declared
            .into_router()
            .route("/sneaked-in", axum::routing::get(|| async { "secret" }))
            .layer(axum::middleware::from_fn_with_state(gate, super::gate));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let admin =
            crate::client::Client::new(&url, Some("the-admin-token-0123456789".into()), None)
                .unwrap();
        assert_eq!(admin.get("/declared").await.unwrap().status, 200);
        let sneaked = admin.get("/sneaked-in").await.unwrap();
        assert_eq!(sneaked.status, 500, "{sneaked:?}");
        assert!(
            sneaked.error_text().contains("no access policy"),
            "{}",
            sneaked.error_text()
        );
        let anonymous = crate::client::Client::new(&url, None, None).unwrap();
        assert_eq!(anonymous.get("/declared").await.unwrap().status, 401);
        assert_eq!(anonymous.get("/sneaked-in").await.unwrap().status, 500);
        assert_eq!(
            anonymous.get("/nowhere").await.unwrap().status,
            404,
            "unmatched paths are not policed"
        );
    }

    #[test]
    fn redaction_reaches_every_depth_and_leaves_nulls() {
        let mut v = json!({"check": {"smtp": {"password_env": "X", "username": "u"}, "imap": {"password": "p", "password_file": null}},
            "channels": [{"last_error": "HTTP 500: key=abc", "failed": 2}]});
        redact_keys(&mut v, &READ_HIDDEN_KEYS);
        assert_eq!(
            v,
            json!({"check": {"smtp": {"password_env": REDACTED, "username": "u"}, "imap": {"password": REDACTED, "password_file": null}},
            "channels": [{"last_error": REDACTED, "failed": 2}]})
        );
    }
}
