//! Control: every change to checks and agents, from the config file (at
//! start and on SIGHUP) or the admin API, goes through here.
//!
//! A change is validated, given a revision, written to storage and only
//! then installed in the hub (which pushes it to the agents). One async
//! lock serialises changes, so revisions are handed out in commit order.
//!
//! Replicas: coordinators sharing one PostgreSQL database each hold a hub
//! of their own. [`Control::follow_storage`] reads the stored checks,
//! agents and API tokens as soon as any replica commits a change to them
//! (PostgreSQL LISTEN/NOTIFY: `storage/postgres/changes.rs`), and every
//! [`FOLLOW_EVERY`] in case a notice was lost, and installs what another
//! replica changed (a check with a newer revision than this hub holds; an
//! agent whose region, token or revocation differs; API tokens made or
//! revoked), so the agents connected here, the judge when this replica
//! leads, and the admin API follow a change made through any replica. On
//! SQLite, with one coordinator, there is nothing to follow.
//!
//! Ownership: a check or agent declared in the config file is owned by the
//! file (`source = config`): a reload replaces or removes it, and the API
//! refuses to change it (it would silently come back on the next reload).

use crate::auth::{Role, TokenDecl, Tokens};
use crate::clock::now_ms;
use crate::cluster::hub::Hub;
use crate::config::{
    AgentDecl, CheckRules, CheckSpec, CoordinatorConfig, check_spec, hex, token_sha256,
};
use crate::storage::{
    JoinToken, JoinUse, Source, Storage, StorageError, StoredAgent, StoredCheck, StoredToken,
};
use mailloop_common::Secret;
use mailloop_common::config::ConfigIssue;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often a replica reads the checks, agents and tokens other replicas
/// may have changed without a notice reaching it (notices come at once).
pub const FOLLOW_EVERY: Duration = Duration::from_secs(5);

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{} invalid key(s)", .0.len())]
    Invalid(Vec<ConfigIssue>),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// What a put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    Updated,
    /// Identical to what was there: no new revision.
    Unchanged,
}

/// How a put treats an existing check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// `POST`: refuse if it exists.
    Create,
    /// `PUT`, `apply`, the config file: create or replace.
    Upsert,
}

/// What a config (re)load changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplySummary {
    pub checks_changed: usize,
    pub checks_removed: usize,
    pub agents_changed: usize,
    pub agents_revoked: usize,
}

/// The one way to change checks and agents.
pub struct Control {
    hub: Arc<Hub>,
    storage: Arc<Storage>,
    lock: tokio::sync::Mutex<()>,
    settings: Mutex<Settings>,
    /// The admin API's tokens (the admin token and `[[token]]`).
    tokens: Arc<Tokens>,
    /// What join tokens carry; set once the gRPC listener is bound.
    enrollment: Mutex<EnrollSettings>,
}

/// What a join token carries and how long it lasts (`[server]`
/// `public_urls`, `join_token_ttl`, and the certificate of `tls_cert`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnrollSettings {
    /// The coordinator's gRPC URLs as agents reach them; empty: none known
    /// (the listener is on an unspecified address and `public_urls` is unset).
    pub urls: Vec<String>,
    /// SHA-256 (hex) of the certificate agents pin: the last one of
    /// `tls_cert` (its CA when the file holds the chain); None without TLS.
    pub sha256: Option<String>,
    /// Default lifetime of a join token.
    pub ttl: std::time::Duration,
}

/// A join token issued by [`Control::add_agent_to_enroll`].
#[derive(Debug)]
pub struct Issued {
    /// `mlj1.…`, shown once.
    pub join_token: Secret,
    pub expires_at_ms: i64,
}

struct Settings {
    rules: CheckRules,
    /// The config file's tokens (the admin token and `[[token]]`).
    config_tokens: Vec<TokenDecl>,
    /// Tokens made through the API, revoked ones included.
    api_tokens: Vec<StoredToken>,
}

/// An API token as `GET /api/v1/tokens` shows it (never its digest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenView {
    pub name: String,
    pub role: Role,
    pub source: Source,
    pub created_at_ms: Option<i64>,
    pub created_by: Option<String>,
    pub revoked_at_ms: Option<i64>,
}

impl Control {
    pub fn new(
        hub: Arc<Hub>,
        storage: Arc<Storage>,
        rules: CheckRules,
        config_tokens: &[TokenDecl],
        api_tokens: Vec<StoredToken>,
    ) -> Control {
        let control = Control {
            hub,
            storage,
            lock: tokio::sync::Mutex::new(()),
            settings: Mutex::new(Settings {
                rules,
                config_tokens: config_tokens.to_vec(),
                api_tokens,
            }),
            tokens: Arc::new(Tokens::default()),
            enrollment: Mutex::new(EnrollSettings::default()),
        };
        control.refresh_tokens();
        control
    }

    /// Puts the config file's tokens and the API's live ones in force. A
    /// name the config file also declares is the file's (the API refuses to
    /// make one, but a later reload may add it).
    fn refresh_tokens(&self) {
        let s = self.settings();
        let mut all = s.config_tokens.clone();
        for t in s.api_tokens.iter().filter(|t| t.revoked_at_ms.is_none()) {
            if all.iter().any(|c| c.name == t.name) {
                tracing::warn!(token = %t.name, "an API-made token has the name of a config-file token; the file's is in force");
                continue;
            }
            match Role::parse(&t.role) {
                Some(role) => all.push(TokenDecl {
                    name: t.name.clone(),
                    role,
                    sha256: t.token_sha256.clone(),
                }),
                None => {
                    tracing::error!(token = %t.name, role = %t.role, "stored API token has an unknown role; ignored")
                }
            }
        }
        self.tokens.replace(&all);
    }

    /// Every API token: the config file's, then those made through the API.
    pub fn list_tokens(&self) -> Vec<TokenView> {
        let s = self.settings();
        let from_file = s.config_tokens.iter().map(|t| TokenView {
            name: t.name.clone(),
            role: t.role,
            source: Source::Config,
            created_at_ms: None,
            created_by: None,
            revoked_at_ms: None,
        });
        let from_api = s.api_tokens.iter().map(|t| TokenView {
            name: t.name.clone(),
            role: Role::parse(&t.role).unwrap_or(Role::Read),
            source: Source::Api,
            created_at_ms: Some(t.created_at_ms),
            created_by: Some(t.created_by.clone()),
            revoked_at_ms: t.revoked_at_ms,
        });
        from_file.chain(from_api).collect()
    }

    /// Makes an API token (shown once; only its SHA-256 is kept). `by` is
    /// the name of the token asking. A revoked token's name may be reused.
    pub async fn add_token(
        &self,
        name: &str,
        role: &str,
        by: &str,
    ) -> Result<(TokenView, Secret), ControlError> {
        let mut issues = Vec::new();
        if !crate::config::names::is_name(name) {
            issues.push(ConfigIssue {
                path: "name".into(),
                message: "use 1 to 64 letters, digits, '-', '_' or '.'".into(),
            });
        }
        let parsed = Role::parse(role);
        if parsed.is_none() {
            issues.push(ConfigIssue {
                path: "role".into(),
                message: format!("{role:?}: expected \"read\" or \"admin\""),
            });
        }
        let Some(role) = parsed.filter(|_| issues.is_empty()) else {
            return Err(ControlError::Invalid(issues));
        };
        let _serial = self.lock.lock().await;
        {
            let s = self.settings();
            if s.config_tokens.iter().any(|t| t.name == name) {
                return Err(owned_by_config("token", name));
            }
            if s.api_tokens
                .iter()
                .any(|t| t.name == name && t.revoked_at_ms.is_none())
            {
                return Err(ControlError::Conflict(format!(
                    "token {name:?} exists; revoke it first to make a new one"
                )));
            }
        }
        let secret = Secret::new(new_token("mla"));
        let stored = StoredToken {
            name: name.into(),
            role: role.as_str().into(),
            token_sha256: token_sha256(secret.expose()),
            created_at_ms: now_ms(),
            created_by: by.into(),
            revoked_at_ms: None,
        };
        self.storage.put_api_token(stored.clone()).await?;
        {
            let mut s = self.settings();
            s.api_tokens.retain(|t| t.name != name);
            s.api_tokens.push(stored);
        }
        self.refresh_tokens();
        tracing::info!(token = %name, role = role.as_str(), by = %by, "API token made; its value was returned once");
        let view = self
            .list_tokens()
            .into_iter()
            .find(|t| t.name == name && t.source == Source::Api);
        Ok((view.expect("just stored"), secret))
    }

    /// Revokes an API token made through the API: it stops working at once.
    pub async fn revoke_token(&self, name: &str) -> Result<TokenView, ControlError> {
        let _serial = self.lock.lock().await;
        let stored = {
            let s = self.settings();
            if s.config_tokens.iter().any(|t| t.name == name) {
                return Err(owned_by_config("token", name));
            }
            s.api_tokens.iter().find(|t| t.name == name).cloned()
        };
        let Some(mut stored) = stored else {
            return Err(ControlError::NotFound(format!("no token {name:?}")));
        };
        if stored.revoked_at_ms.is_none() {
            stored.revoked_at_ms = Some(now_ms());
            self.storage.put_api_token(stored.clone()).await?;
            let mut s = self.settings();
            s.api_tokens.retain(|t| t.name != name);
            s.api_tokens.push(stored);
        }
        self.refresh_tokens();
        tracing::warn!(token = %name, "API token revoked");
        let view = self
            .list_tokens()
            .into_iter()
            .find(|t| t.name == name && t.source == Source::Api);
        Ok(view.expect("just stored"))
    }

    /// The admin API's tokens in force.
    pub fn tokens(&self) -> Arc<Tokens> {
        self.tokens.clone()
    }

    fn settings(&self) -> std::sync::MutexGuard<'_, Settings> {
        self.settings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True if `bearer` is a token with the admin role (compared as
    /// SHA-256 digests in constant time).
    pub fn is_admin(&self, bearer: Option<&str>) -> bool {
        bearer
            .and_then(|b| self.tokens.find(b))
            .is_some_and(|(_, role)| role == Role::Admin)
    }

    /// Validates a check table given through the API.
    pub fn validate_check(&self, path: &str, table: &Value) -> Result<CheckSpec, ControlError> {
        let rules = self.settings().rules;
        check_spec(path, table, rules).map_err(ControlError::Invalid)
    }

    /// Creates or replaces a check. A change gets a new revision and reaches
    /// the agents through the hub; an identical put changes nothing.
    pub async fn put_check(
        &self,
        spec: CheckSpec,
        source: Source,
        mode: PutMode,
    ) -> Result<(StoredCheck, PutOutcome), ControlError> {
        let _serial = self.lock.lock().await;
        let existing = self.hub.check(&spec.name);
        if let Some(old) = &existing {
            if mode == PutMode::Create {
                return Err(ControlError::Conflict(format!(
                    "check {:?} exists (revision {}); update it with PUT",
                    spec.name, old.revision
                )));
            }
            if old.source == Source::Config && source == Source::Api {
                return Err(owned_by_config("check", &spec.name));
            }
            if old.spec == spec && old.source == source {
                return Ok((old.clone(), PutOutcome::Unchanged));
            }
            if old.source == Source::Api && source == Source::Config {
                tracing::warn!(check = %spec.name, "a check created through the API is now declared in the config file, which owns it from now on");
            }
        }
        let stored = StoredCheck {
            revision: self.hub.next_revision(),
            spec,
            source,
            deleted: false,
            updated_at_ms: now_ms(),
        };
        self.storage.put_check(stored.clone()).await?;
        self.hub.put_check(stored.clone());
        let outcome = if existing.is_some() {
            PutOutcome::Updated
        } else {
            PutOutcome::Created
        };
        tracing::info!(check = %stored.spec.name, revision = stored.revision, regions = %some_of(&stored.spec.regions),
            interval = %humantime::format_duration(stored.spec.interval), source = source.as_str(), outcome = ?outcome, "check stored");
        Ok((stored, outcome))
    }

    /// Deletes a check: agents drop it; its reports stay.
    /// Until shutdown, every [`FOLLOW_EVERY`]: installs the checks and
    /// agents another replica changed in the shared database.
    pub async fn follow_storage(self: Arc<Self>, mut shutdown: crate::shutdown::Shutdown) {
        if !self.storage.shared() {
            return;
        }
        let notices = {
            let mut stop = shutdown.clone();
            self.storage.listen_changes(async move { stop.recv().await })
        };
        let notice = || async {
            match &notices {
                Some(n) => n.notified().await,
                None => std::future::pending().await,
            }
        };
        let mut tick = tokio::time::interval(FOLLOW_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = notice() => {}
                _ = shutdown.recv() => return,
            }
            if let Err(e) = self.follow_once().await {
                tracing::debug!(error = %e, "cannot read the stored checks and agents; trying again");
            }
        }
    }

    /// One read of the stored checks and agents; installs what differs.
    /// Under the change lock, so a change made here in the meantime is not
    /// overwritten by the older row this read saw.
    async fn follow_once(&self) -> Result<(), StorageError> {
        let _serial = self.lock.lock().await;
        for c in self.storage.load_checks().await? {
            let newer = self.hub.check_any(&c.spec.name).is_none_or(|held| c.revision > held.revision);
            if newer {
                tracing::info!(check = %c.spec.name, revision = c.revision, deleted = c.deleted, "check changed through another replica; following it");
                self.hub.put_check(c);
            }
        }
        for a in self.storage.load_agents().await? {
            let differs = self.hub.agent(&a.name).is_none_or(|held| {
                let h = &held.stored;
                (&h.region, &h.token_sha256, h.revoked, h.source, &h.previous_token_sha256, h.previous_token_until_ms, h.token_in_use)
                    != (&a.region, &a.token_sha256, a.revoked, a.source, &a.previous_token_sha256, a.previous_token_until_ms, a.token_in_use)
            });
            if differs {
                tracing::info!(agent = %a.name, region = %a.region, revoked = a.revoked, "agent changed through another replica; following it");
                self.hub.put_agent(a);
            }
        }
        let mut stored = self.storage.load_api_tokens().await?;
        stored.sort_by(|a, b| a.name.cmp(&b.name));
        let differs = {
            let mut s = self.settings();
            let mut held = s.api_tokens.clone();
            held.sort_by(|a, b| a.name.cmp(&b.name));
            let differs = held != stored;
            if differs {
                s.api_tokens = stored;
            }
            differs
        };
        if differs {
            tracing::info!("API tokens changed through another replica; following them");
            self.refresh_tokens();
        }
        Ok(())
    }

    pub async fn delete_check(
        &self,
        id: &str,
        source: Source,
    ) -> Result<StoredCheck, ControlError> {
        let _serial = self.lock.lock().await;
        self.delete_check_locked(id, source).await
    }

    async fn delete_check_locked(
        &self,
        id: &str,
        source: Source,
    ) -> Result<StoredCheck, ControlError> {
        let Some(old) = self.hub.check(id) else {
            return Err(ControlError::NotFound(format!("no check {id:?}")));
        };
        if old.source == Source::Config && source == Source::Api {
            return Err(owned_by_config("check", id));
        }
        let stored = StoredCheck {
            revision: self.hub.next_revision(),
            deleted: true,
            updated_at_ms: now_ms(),
            ..old
        };
        self.storage.put_check(stored.clone()).await?;
        self.hub.put_check(stored.clone());
        tracing::info!(check = %id, revision = stored.revision, "check deleted");
        Ok(stored)
    }

    /// Sets what join tokens carry (once the listeners are bound).
    pub fn set_enrollment(&self, e: EnrollSettings) {
        *self.enrollment.lock().unwrap_or_else(|e| e.into_inner()) = e;
    }

    /// What join tokens carry now.
    pub fn enrollment(&self) -> EnrollSettings {
        self.enrollment
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Creates an agent through the API and returns a single-use join token
    /// for `mailloop-agent enroll` (valid for `ttl`, default `join_token_ttl`).
    /// The agent's own token is made at enrollment; until then nobody holds
    /// one (the stored hash is of a token that was never shown).
    pub async fn add_agent_to_enroll(
        &self,
        name: &str,
        region: &str,
        ttl: Option<std::time::Duration>,
    ) -> Result<(StoredAgent, Issued), ControlError> {
        let e = self.enrollment();
        if e.urls.is_empty() {
            return Err(ControlError::Conflict(
                "the coordinator does not know the URL agents reach it at (grpc_listen is an unspecified address): set server.public_urls, e.g. [\"https://coord.example:7443\"]".into(),
            ));
        }
        let ttl = ttl.unwrap_or(e.ttl);
        let (agent, _never_shown) = self.add_agent(name, region).await?;
        let secret = Secret::new(new_token("mlj"));
        let now = now_ms();
        let expires_at_ms = now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        self.storage
            .put_join_token(JoinToken {
                token_sha256: token_sha256(secret.expose()),
                agent: agent.name.clone(),
                agent_token_sha256: agent.token_sha256.clone(),
                created_at_ms: now,
                expires_at_ms,
            })
            .await?;
        let join_token = mailloop_common::join::JoinToken {
            urls: e.urls,
            sha256: e.sha256,
            secret,
        }
        .encode();
        tracing::info!(agent = %name, region = %region, ttl = %humantime::format_duration(ttl), "agent added; its join token was returned once");
        Ok((
            agent,
            Issued {
                join_token,
                expires_at_ms,
            },
        ))
    }

    /// Exchanges a join token's secret for the agent's long-lived token:
    /// once, before it expires, and only while the agent is the one the
    /// join token was made for (not revoked, not enrolled or re-added since).
    pub async fn enroll(&self, join_secret: &str) -> Result<(StoredAgent, Secret), ControlError> {
        let now = now_ms();
        let used = self
            .storage
            .use_join_token(token_sha256(join_secret), now)
            .await?;
        let when = |ms: i64| {
            chrono::DateTime::from_timestamp_millis(ms).map_or_else(
                || ms.to_string(),
                |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            )
        };
        let again = |agent: &str| {
            format!(
                "make a new one: mailloopctl agents revoke {agent}, then mailloopctl agents add {agent} --region ..."
            )
        };
        let (name, bound) = match used {
            JoinUse::Unknown => {
                return Err(ControlError::NotFound(
                    "this join token is unknown to the coordinator (mistyped, or made by another coordinator)".into(),
                ));
            }
            JoinUse::Used { agent, at_ms } => {
                return Err(ControlError::Conflict(format!(
                    "this join token was already used (at {}): a join token works once; {}",
                    when(at_ms),
                    again(&agent)
                )));
            }
            JoinUse::Expired { agent, at_ms } => {
                return Err(ControlError::Conflict(format!(
                    "this join token expired at {}; {}",
                    when(at_ms),
                    again(&agent)
                )));
            }
            JoinUse::Granted {
                agent,
                agent_token_sha256,
            } => (agent, agent_token_sha256),
        };
        let _serial = self.lock.lock().await;
        let current = self.hub.agent(&name);
        let Some(current) = current.filter(|a| !a.stored.revoked && a.stored.token_sha256 == bound)
        else {
            tracing::warn!(agent = %name, "a join token was presented for an agent revoked or re-issued since it was made");
            return Err(ControlError::Conflict(format!(
                "agent {name:?} was revoked or re-issued after this join token was made; {}",
                again(&name)
            )));
        };
        let token = Secret::new(new_token("mlt"));
        let agent = StoredAgent {
            token_sha256: token_sha256(token.expose()),
            previous_token_sha256: None,
            previous_token_until_ms: None,
            token_in_use: false,
            ..current.stored
        };
        self.storage.put_agent(agent.clone()).await?;
        self.hub.put_agent(agent.clone());
        tracing::info!(agent = %agent.name, region = %agent.region, "agent enrolled; its token was returned once");
        Ok((agent, token))
    }

    /// Creates an agent through the API and returns its token (shown once;
    /// only its SHA-256 is kept). A revoked agent's name may be reused.
    pub async fn add_agent(
        &self,
        name: &str,
        region: &str,
    ) -> Result<(StoredAgent, Secret), ControlError> {
        let mut issues = Vec::new();
        if !crate::config::names::is_name(name) {
            issues.push(ConfigIssue {
                path: "name".into(),
                message: "use 1 to 64 letters, digits, '-', '_' or '.'".into(),
            });
        }
        if !crate::config::names::is_name(region) {
            issues.push(ConfigIssue {
                path: "region".into(),
                message: "use 1 to 64 letters, digits, '-', '_' or '.'".into(),
            });
        }
        if !issues.is_empty() {
            return Err(ControlError::Invalid(issues));
        }
        let _serial = self.lock.lock().await;
        if let Some(old) = self.hub.agent(name) {
            if !old.stored.revoked {
                return Err(ControlError::Conflict(format!(
                    "agent {name:?} exists; revoke it first to issue a new token"
                )));
            }
            if old.stored.source == Source::Config {
                return Err(owned_by_config("agent", name));
            }
        }
        let token = Secret::new(new_token("mlt"));
        let agent = StoredAgent {
            name: name.into(),
            region: region.into(),
            token_sha256: token_sha256(token.expose()),
            source: Source::Api,
            revoked: false,
            version: None,
            last_seen_ms: None,
            connected: false,
            created_at_ms: now_ms(),
            previous_token_sha256: None,
            previous_token_until_ms: None,
            token_in_use: false,
        };
        self.storage.put_agent(agent.clone()).await?;
        self.hub.put_agent(agent.clone());
        tracing::info!(agent = %name, region = %region, "agent added; its token was returned once");
        Ok((agent, token))
    }

    /// Rotates an API agent's token: a new one is made and handed to the
    /// running agent over its assignment stream (the coordinator keeps it in
    /// memory only until the agent calls with it); the current one keeps
    /// working for `grace`, then stops. Rotating again before the agent
    /// took the new token keeps the token it still holds as the previous
    /// one, so a second rotation never locks it out early. Returns the
    /// agent and when the replaced token stops working.
    pub async fn rotate_agent(
        &self,
        name: &str,
        grace: std::time::Duration,
    ) -> Result<(StoredAgent, i64), ControlError> {
        let _serial = self.lock.lock().await;
        let Some(old) = self.hub.agent(name) else {
            return Err(ControlError::NotFound(format!("no agent {name:?}")));
        };
        if old.stored.source == Source::Config {
            return Err(owned_by_config("agent", name));
        }
        if old.stored.revoked {
            return Err(ControlError::Conflict(format!(
                "agent {name:?} is revoked: add it again (mailloopctl agents add) instead of rotating"
            )));
        }
        let now = now_ms();
        // Whether the agent has not called with its current token yet: it
        // still holds the previous one (stored, so a restart or another
        // replica knows it too).
        let still_on_previous = !old.stored.token_in_use
            && old.stored.previous_token_until_ms.is_some_and(|u| now < u);
        let previous = if still_on_previous {
            old.stored.previous_token_sha256.clone()
        } else {
            Some(old.stored.token_sha256.clone())
        };
        let until = now.saturating_add(i64::try_from(grace.as_millis()).unwrap_or(i64::MAX));
        let token = Secret::new(new_token("mlt"));
        let agent = StoredAgent {
            token_sha256: token_sha256(token.expose()),
            previous_token_sha256: previous,
            previous_token_until_ms: Some(until),
            token_in_use: false,
            ..old.stored
        };
        self.storage.put_agent(agent.clone()).await?;
        self.hub.put_rotated(agent.clone(), token);
        tracing::info!(agent = %name, region = %agent.region, grace = %humantime::format_duration(grace), "agent token rotated; the new one goes to the agent over its stream");
        Ok((agent, until))
    }

    /// Revokes an agent's token: its streams end and its checks move.
    pub async fn revoke_agent(
        &self,
        name: &str,
        source: Source,
    ) -> Result<StoredAgent, ControlError> {
        let _serial = self.lock.lock().await;
        let Some(old) = self.hub.agent(name) else {
            return Err(ControlError::NotFound(format!("no agent {name:?}")));
        };
        if old.stored.source == Source::Config && source == Source::Api {
            return Err(owned_by_config("agent", name));
        }
        let agent = StoredAgent {
            revoked: true,
            ..old.stored
        };
        self.storage.put_agent(agent.clone()).await?;
        self.hub.put_agent(agent.clone());
        tracing::warn!(agent = %name, region = %agent.region, "agent token revoked");
        Ok(agent)
    }

    /// Makes the config file's checks and agents the truth for everything
    /// it owns (at start and after a good SIGHUP reload).
    pub async fn apply_config(
        &self,
        cfg: &CoordinatorConfig,
    ) -> Result<ApplySummary, ControlError> {
        {
            let mut s = self.settings();
            s.rules = cfg.server.check_rules();
            s.config_tokens = cfg.api_tokens();
        }
        self.refresh_tokens();
        let mut summary = ApplySummary::default();
        for spec in &cfg.checks {
            let (_, outcome) = self
                .put_check(spec.clone(), Source::Config, PutMode::Upsert)
                .await?;
            if outcome != PutOutcome::Unchanged {
                summary.checks_changed += 1;
            }
        }
        let _serial = self.lock.lock().await;
        for old in self.hub.checks() {
            if old.source == Source::Config && !cfg.checks.iter().any(|c| c.name == old.spec.name) {
                self.delete_check_locked(&old.spec.name, Source::Config)
                    .await?;
                summary.checks_removed += 1;
            }
        }
        // Every changed agent's row is written at once (up to a chunk in
        // flight), so the writer commits them in shared transactions: a
        // config of 10,000 agents is a few commits, not 10,000 in a row.
        let changed: Vec<StoredAgent> = cfg.agents.iter().filter_map(|d| self.plan_agent(d)).collect();
        for chunk in changed.chunks(1024) {
            let mut writes = tokio::task::JoinSet::new();
            for agent in chunk {
                let (storage, agent) = (self.storage.clone(), agent.clone());
                writes.spawn(async move { storage.put_agent(agent).await });
            }
            while let Some(done) = writes.join_next().await {
                done.map_err(|e| ControlError::Storage(StorageError::Commit(format!("agent write task: {e}"))))??;
            }
            for agent in chunk {
                tracing::info!(agent = %agent.name, region = %agent.region, "agent declared in the config file");
                self.hub.put_agent(agent.clone());
                summary.agents_changed += 1;
            }
        }
        let declared: std::collections::HashSet<&str> = cfg.agents.iter().map(|a| a.name.as_str()).collect();
        for old in self.hub.agents() {
            let gone = !declared.contains(old.stored.name.as_str());
            if old.stored.source == Source::Config && !old.stored.revoked && gone {
                let agent = StoredAgent {
                    revoked: true,
                    ..old.stored
                };
                self.storage.put_agent(agent.clone()).await?;
                self.hub.put_agent(agent.clone());
                tracing::warn!(agent = %agent.name, "agent removed from the config file: its token is revoked");
                summary.agents_revoked += 1;
            }
        }
        Ok(summary)
    }

    /// The stored agent `decl` makes, None when nothing changes (or its
    /// token belongs to another agent, which is logged).
    fn plan_agent(&self, decl: &AgentDecl) -> Option<StoredAgent> {
        let old = self.hub.agent(&decl.name);
        if let Some(old) = &old {
            let same =
                old.stored.region == decl.region && old.stored.token_sha256 == decl.token_sha256;
            if same && old.stored.source == Source::Config && !old.stored.revoked {
                return None;
            }
        }
        if self.hub.token_taken(&decl.token_sha256, &decl.name) {
            tracing::error!(agent = %decl.name, "the token declared for this agent belongs to another agent; not applied");
            return None;
        }
        let agent = StoredAgent {
            name: decl.name.clone(),
            region: decl.region.clone(),
            token_sha256: decl.token_sha256.clone(),
            source: Source::Config,
            revoked: false,
            version: None,
            last_seen_ms: None,
            connected: false,
            created_at_ms: old.map_or_else(now_ms, |o| o.stored.created_at_ms),
            previous_token_sha256: None,
            previous_token_until_ms: None,
            token_in_use: false,
        };
        Some(agent)
    }
}

fn owned_by_config(what: &str, name: &str) -> ControlError {
    ControlError::Conflict(format!(
        "{what} {name:?} is declared in the coordinator's config file; change it there and reload (SIGHUP)"
    ))
}

/// A fresh token: 32 random bytes, hex, with a recognisable prefix
/// (`mlt` an agent's, `mla` an API token).
pub(crate) fn new_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    format!("{prefix}_{}", hex(&bytes))
}

/// The first few of a check's regions for a log line, and how many more
/// (a check may list 10,000: one line of each would be 100 KB).
fn some_of(regions: &[String]) -> String {
    const SHOWN: usize = 5;
    let first = regions.iter().take(SHOWN).map(String::as_str).collect::<Vec<_>>().join(", ");
    match regions.len() {
        n if n > SHOWN => format!("[{first}] and {} more", n - SHOWN),
        _ => format!("[{first}]"),
    }
}
