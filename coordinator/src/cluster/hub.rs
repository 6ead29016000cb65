//! The hub: the coordinator's live state in memory.
//!
//! Checks (with their revisions), agents (with their token hashes, sessions,
//! versions and last-seen times) and who runs what ([`Placement`]). Storage
//! is the durable copy; the hub is what requests are answered from, so the
//! gRPC hot path (authenticate, is this report allowed?) never touches the
//! database.
//!
//! The state sits under a `std::sync::Mutex`: nothing awaits while holding
//! it. Every change that can move an assignment (a session opening or
//! closing, a check or agent changed) is applied to the map at once, under
//! that lock, by [`Placement`], which moves only the checks whose
//! rendezvous winner changed; then only the agents whose checks changed
//! are woken, each through its own `watch` channel that its
//! `WatchAssignments` streams follow. A join costs O(checks of its region)
//! and wakes the newcomer and the agents it took checks from, so a storm of
//! N joins is linear in N (it was N full recomputations, each waking all N
//! streams).
//!
//! Replicas sharing a PostgreSQL database also see each other's agents:
//! [`Hub::local_presence`] is what this replica publishes, and
//! [`Hub::set_remote`] installs what the others published (`presence.rs`
//! runs the exchange). An agent counts as connected when it has a session
//! here or on another replica, so the rendezvous over a region's live
//! agents, coverage and the agents API agree on every replica.

use crate::config::names::token_sha256;
use crate::cluster::ondemand::{OnDemand, RunStarted};
use crate::cluster::placement::Placement;
use crate::cluster::schedule::{self, Assignment};
use crate::storage::{Presence, StoredAgent, StoredCheck};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{Notify, watch};

/// A clock skew beyond this is logged when an agent's Register or Heartbeat
/// shows it (the judge's clock incidents use `[incidents].clock_skew`).
pub const CLOCK_WARN_MS: i64 = 5_000;

/// Who a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentIdentity {
    pub name: String,
    pub region: String,
}

/// Why a token was refused. The token itself never appears.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing `authorization: Bearer <token>` metadata")]
    Missing,
    #[error("unknown agent token")]
    Unknown,
    #[error("the token of agent {0} has been revoked")]
    Revoked(String),
    #[error("the token of agent {0} was rotated and its grace period has ended; the agent needs the new one (re-enroll it if it never got it)")]
    Rotated(String),
}

/// An agent as the admin API shows it.
#[derive(Debug, Clone)]
pub struct AgentView {
    pub stored: StoredAgent,
    pub connected: bool,
    pub sessions: usize,
    /// How many checks it runs now.
    pub assigned: usize,
    /// Reports waiting in its spool, as of its last heartbeat.
    pub spooled: Option<u64>,
    /// When its last session closed, if it is disconnected (since this start).
    pub disconnected_at_ms: Option<i64>,
    /// Its clock minus the coordinator's (ms), from its last Register or Heartbeat.
    pub clock_skew_ms: Option<i64>,
}

struct AgentState {
    stored: StoredAgent,
    sessions: usize,
    spooled: Option<u64>,
    /// When its last session closed (in memory: a restart forgets it).
    disconnected_at_ms: Option<i64>,
    /// Its clock minus ours (ms), from its last Register or Heartbeat.
    clock_skew_ms: Option<i64>,
    /// Bumped (to the hub's epoch) when its assignments, token or standing
    /// change: its assignment streams follow it.
    wake: watch::Sender<u64>,
}

impl AgentState {
    fn new(stored: StoredAgent) -> AgentState {
        AgentState {
            stored,
            sessions: 0,
            spooled: None,
            disconnected_at_ms: None,
            clock_skew_ms: None,
            wake: watch::channel(0).0,
        }
    }
}

#[derive(Default)]
struct Inner {
    /// Every check ever stored, deleted ones included (to judge late reports).
    checks: BTreeMap<String, StoredCheck>,
    agents: BTreeMap<String, AgentState>,
    /// Token SHA-256 → agent name (a rotated agent's previous token too,
    /// until its grace period ends).
    by_token: HashMap<String, String>,
    /// Rotated tokens not yet delivered: agent name → the new token, in
    /// memory only, handed to the agent's next assignment stream opened
    /// with its previous token (see [`Hub::follow`]).
    pending: HashMap<String, mailloop_common::Secret>,
    /// Highest revision handed out.
    revision: u64,
    epoch: u64,
    /// Agents connected to other replicas, by name (their sessions summed).
    remote: BTreeMap<String, Remote>,
    /// Who runs what now, kept up to date change by change.
    placement: Placement,
    /// Each check's regions (deleted ones included) as a set: the
    /// per-report region test must not scan a fleet-long list.
    check_regions: HashMap<String, HashSet<String>>,
}

/// An agent connected to other replicas, as they last published it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Remote {
    sessions: u32,
    last_seen_ms: Option<i64>,
    spooled: Option<u64>,
    clock_skew_ms: Option<i64>,
}

impl Inner {
    /// Connected here or to another replica.
    fn live(&self, a: &AgentState) -> bool {
        a.sessions > 0 || self.remote.contains_key(&a.stored.name)
    }

    /// Brings `name`'s place in the assignment map in line with its
    /// state (live and not revoked: placed in its region; otherwise not).
    fn settle(&mut self, name: &str, touched: &mut Vec<String>) {
        let target = self
            .agents
            .get(name)
            .filter(|a| self.live(a) && !a.stored.revoked)
            .map(|a| a.stored.region.clone());
        let current = self.placement.region_of(name).map(str::to_string);
        if target == current {
            return;
        }
        match target {
            Some(region) => self.placement.join(name, &region, touched),
            None => self.placement.leave(name, touched),
        }
    }

    /// Installs `c` and places it (a deleted check is taken off every agent).
    fn install_check(&mut self, c: StoredCheck, touched: &mut Vec<String>) {
        self.revision = self.revision.max(c.revision);
        let id = c.spec.name.clone();
        // Rebuilt only when the regions changed (a fleet-long list is not
        // copied on every edit of the check).
        let same = self
            .check_regions
            .get(&id)
            .is_some_and(|r| r.len() == c.spec.regions.len() && c.spec.regions.iter().all(|x| r.contains(x)));
        if !same {
            self.check_regions
                .insert(id.clone(), c.spec.regions.iter().cloned().collect());
        }
        if c.deleted {
            self.placement.put_check(&id, None, touched);
        } else {
            let interval_ms = c.spec.interval.as_millis() as u64;
            let assignment = Arc::new(Assignment {
                check_id: id.clone(),
                revision: c.revision,
                check_json: Arc::from(c.spec.table.to_string()),
                interval_ms,
                phase_ms: schedule::phase_ms(&id, interval_ms),
            });
            self.placement
                .put_check(&id, Some((assignment, &c.spec.regions)), touched);
        }
        self.checks.insert(id, c);
    }

    /// Wakes the streams of every agent in `touched` (once each).
    fn wake(&mut self, mut touched: Vec<String>) {
        if touched.is_empty() {
            return;
        }
        self.epoch += 1;
        touched.sort_unstable();
        touched.dedup();
        for name in touched {
            if let Some(a) = self.agents.get(&name) {
                a.wake.send_replace(self.epoch);
            }
        }
    }
}

/// The live state. Share it as `Arc<Hub>`.
pub struct Hub {
    inner: Mutex<Inner>,
    /// On-demand runs, followed by every assignment stream.
    on_demand: OnDemand,
    /// Fired when a session here opens or closes (the presence heartbeat
    /// publishes it without waiting for its next tick).
    local: Notify,
}

impl Hub {
    /// A hub holding what storage had at start.
    pub fn new(checks: Vec<StoredCheck>, agents: Vec<StoredAgent>) -> Arc<Hub> {
        let mut inner = Inner::default();
        let mut touched = Vec::new();
        for c in checks {
            inner.install_check(c, &mut touched);
        }
        for a in agents {
            inner
                .by_token
                .insert(a.token_sha256.clone(), a.name.clone());
            if let Some(previous) = &a.previous_token_sha256 {
                inner.by_token.insert(previous.clone(), a.name.clone());
            }
            inner.agents.insert(a.name.clone(), AgentState::new(a));
        }
        Arc::new(Hub {
            inner: Mutex::new(inner),
            on_demand: OnDemand::default(),
            local: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resolves when a session here opened or closed since the last call.
    pub async fn local_changed(&self) {
        self.local.notified().await
    }

    /// The agents with a session on this replica, for the presence heartbeat.
    pub fn local_presence(&self, replica: &str) -> Vec<Presence> {
        self.lock()
            .agents
            .values()
            .filter(|a| a.sessions > 0)
            .map(|a| Presence {
                agent: a.stored.name.clone(),
                replica: replica.to_string(),
                sessions: a.sessions.min(u32::MAX as usize) as u32,
                last_seen_ms: a.stored.last_seen_ms,
                spooled: a.spooled,
                clock_skew_ms: a.clock_skew_ms,
            })
            .collect()
    }

    /// Installs the agents connected to other replicas (`rows`: the
    /// others' fresh presence, this replica's own left out). An agent that
    /// is connected nowhere any more is disconnected as of `now_ms`. Marks
    /// the assignments dirty when the set of live agents changed.
    pub fn set_remote(&self, rows: Vec<Presence>, now_ms: i64) {
        let mut remote: BTreeMap<String, Remote> = BTreeMap::new();
        for p in rows {
            let r = remote.entry(p.agent).or_default();
            r.sessions += p.sessions;
            r.last_seen_ms = r.last_seen_ms.max(p.last_seen_ms);
            r.spooled = r.spooled.or(p.spooled);
            r.clock_skew_ms = r.clock_skew_ms.or(p.clock_skew_ms);
        }
        {
            let mut inner = self.lock();
            let old = std::mem::take(&mut inner.remote);
            let flipped: Vec<String> = old
                .keys()
                .filter(|k| !remote.contains_key(*k))
                .chain(remote.keys().filter(|k| !old.contains_key(*k)))
                .cloned()
                .collect();
            for (name, a) in inner.agents.iter_mut() {
                let was = old.contains_key(name);
                let is = remote.contains_key(name);
                if a.sessions == 0 && was && !is {
                    a.disconnected_at_ms = Some(now_ms);
                } else if is {
                    a.disconnected_at_ms = None;
                }
            }
            inner.remote = remote;
            let mut touched = Vec::new();
            for name in flipped {
                inner.settle(&name, &mut touched);
            }
            inner.wake(touched);
        }
    }

    /// Follows `agent`'s assignments: the value changes whenever its
    /// checks, token or standing change (read them with [`Hub::follow`]).
    pub fn watch_agent(&self, agent: &str) -> Option<watch::Receiver<u64>> {
        self.lock().agents.get(agent).map(|a| a.wake.subscribe())
    }

    /// Everything an assignment stream of `agent` (opened with the token
    /// of SHA-256 `used`) reads when it wakes, under one lock: its
    /// standing, its token's end, a rotated token to deliver, and what
    /// changed between `held` (brought up to date here) and what it runs
    /// now. A change of one check fanned out to 10,000 streams costs one
    /// lock and one map walk each, not five locks and a copy of every
    /// check the agent runs.
    pub fn follow(&self, agent: &AgentIdentity, used: &str, now_ms: i64, held: &mut HashMap<String, u64>) -> Followed {
        let inner = self.lock();
        let Some(a) = inner
            .agents
            .get(&agent.name)
            .filter(|a| !a.stored.revoked && a.stored.region == agent.region)
        else {
            return Followed { valid: false, ..Followed::default() };
        };
        let s = &a.stored;
        let until = (s.previous_token_sha256.as_deref() == Some(used))
            .then_some(s.previous_token_until_ms)
            .flatten();
        let (pending, to_remake) = if s.token_sha256 == used {
            // The common case: the stream's token is the newest one.
            (None, None)
        } else {
            // A rotated token not yet in use: deliver it if held here,
            // else (on the previous token, in its grace period) remake it.
            let pending = inner
                .pending
                .get(&agent.name)
                .filter(|t| token_sha256(t.expose()) == s.token_sha256)
                .cloned();
            let on_previous = s.previous_token_sha256.as_deref() == Some(used) && previous_valid(s, now_ms);
            let to_remake = (pending.is_none() && on_previous).then(|| s.token_sha256.clone());
            (pending, to_remake)
        };
        let (removed, upserts) = diff_held(held, inner.placement.for_agent(&agent.name));
        Followed { valid: true, until, pending, to_remake, removed, upserts }
    }

    /// The agent a bearer token belongs to.
    pub fn authenticate(&self, token: Option<&str>) -> Result<AgentIdentity, AuthError> {
        let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
        let hash = token_sha256(token);
        let mut inner = self.lock();
        let agent = inner
            .by_token
            .get(&hash)
            .and_then(|n| inner.agents.get(n))
            .ok_or(AuthError::Unknown)?;
        if agent.stored.revoked {
            return Err(AuthError::Revoked(agent.stored.name.clone()));
        }
        let current = hash == agent.stored.token_sha256;
        if !current && !previous_valid(&agent.stored, crate::clock::now_ms()) {
            return Err(AuthError::Rotated(agent.stored.name.clone()));
        }
        let who = AgentIdentity {
            name: agent.stored.name.clone(),
            region: agent.stored.region.clone(),
        };
        if current {
            // The agent holds its newest token: nothing left to deliver.
            inner.pending.remove(&who.name);
        }
        Ok(who)
    }

    /// Whether `agent` is still allowed in (not revoked, not removed).
    pub fn still_valid(&self, agent: &AgentIdentity) -> bool {
        self.lock()
            .agents
            .get(&agent.name)
            .is_some_and(|a| !a.stored.revoked && a.stored.region == agent.region)
    }

    /// Opens a session (a WatchAssignments stream): the agent counts as
    /// connected, and gets checks, until the returned guard is dropped.
    /// The assignment map includes it when this returns.
    pub fn connect(self: &Arc<Self>, agent: &AgentIdentity) -> Session {
        self.try_connect(agent, usize::MAX)
            .expect("no cap is reached at usize::MAX sessions")
    }

    /// [`Hub::connect`], unless the agent already has `max` sessions open:
    /// the count is checked and taken under one lock, so concurrent calls
    /// can never open more than `max`. None when the cap is reached.
    pub fn try_connect(
        self: &Arc<Self>,
        agent: &AgentIdentity,
        max: usize,
    ) -> Option<Session> {
        {
            let mut inner = self.lock();
            if let Some(a) = inner.agents.get_mut(&agent.name) {
                if a.sessions >= max {
                    return None;
                }
                a.sessions += 1;
                a.stored.connected = true;
                a.disconnected_at_ms = None;
            }
            let mut touched = Vec::new();
            inner.settle(&agent.name, &mut touched);
            inner.wake(touched);
        }
        self.local.notify_one();
        Some(Session {
            hub: self.clone(),
            agent: agent.name.clone(),
        })
    }

    /// Agents this coordinator knows (revoked ones too: an upper bound,
    /// read in O(1)), advertised at Register so agents spread their
    /// reconnects over a window that grows with the fleet.
    pub fn fleet_size(&self) -> u32 {
        self.lock().agents.len().min(u32::MAX as usize) as u32
    }

    /// Sessions the agent has open.
    pub fn sessions(&self, agent: &str) -> usize {
        self.lock().agents.get(agent).map_or(0, |a| a.sessions)
    }

    /// Records that the agent was seen (and its version, when it says).
    pub fn seen(&self, agent: &str, at_ms: i64, version: Option<&str>) {
        if let Some(a) = self.lock().agents.get_mut(agent) {
            a.stored.last_seen_ms = Some(at_ms);
            if let Some(v) = version {
                a.stored.version = Some(v.to_string());
            }
        }
    }

    /// Records the agent's clock skew from the time it says it sent a call
    /// (`sent_at_ms`, 0 when it does not say) and when it arrived; logs
    /// once when it crosses [`CLOCK_WARN_MS`] either way.
    pub fn clock(&self, agent: &AgentIdentity, sent_at_ms: i64, now_ms: i64) {
        if sent_at_ms == 0 {
            return;
        }
        let skew = sent_at_ms.saturating_sub(now_ms);
        let before = {
            let mut inner = self.lock();
            let Some(a) = inner.agents.get_mut(&agent.name) else {
                return;
            };
            a.clock_skew_ms.replace(skew)
        };
        let off = |s: Option<i64>| s.is_some_and(|s| s.abs() > CLOCK_WARN_MS);
        if off(Some(skew)) && !off(before) {
            tracing::warn!(agent = %agent.name, region = %agent.region, skew_ms = skew, "agent clock is {:.1} s {} the coordinator's; check time synchronisation on its host", skew.abs() as f64 / 1000.0, if skew > 0 { "ahead of" } else { "behind" });
        } else if off(before) && !off(Some(skew)) {
            tracing::info!(agent = %agent.name, region = %agent.region, skew_ms = skew, "agent clock agrees with the coordinator's again");
        }
    }

    /// The agents of `region` as the judge sees them, by name.
    pub fn region_agents(&self, region: &str) -> Vec<crate::judge::AgentSeen> {
        let inner = self.lock();
        inner
            .agents
            .values()
            .filter(|a| a.stored.region == region && !a.stored.revoked)
            .map(|a| {
                let remote = inner.remote.get(&a.stored.name);
                crate::judge::AgentSeen {
                    name: a.stored.name.clone(),
                    connected: inner.live(a),
                    last_seen_ms: a.stored.last_seen_ms.max(remote.and_then(|r| r.last_seen_ms)),
                    disconnected_at_ms: a.disconnected_at_ms,
                    clock_skew_ms: if a.sessions > 0 { a.clock_skew_ms } else { remote.and_then(|r| r.clock_skew_ms).or(a.clock_skew_ms) },
                }
            })
            .collect()
    }

    /// Records the spool size an agent's heartbeat reported.
    pub fn spooled(&self, agent: &str, spooled: u64) {
        if let Some(a) = self.lock().agents.get_mut(agent) {
            a.spooled = Some(spooled);
        }
    }

    /// Whether `agent` may report on `check_id`: the check exists (or
    /// existed: spooled reports of a deleted check are still history) and
    /// runs in the agent's region. Returns the error text otherwise.
    pub fn may_report(&self, agent: &AgentIdentity, check_id: &str) -> Result<(), String> {
        let inner = self.lock();
        let Some(check) = inner.checks.get(check_id) else {
            return Err(format!("unknown check {check_id:?}"));
        };
        let runs_here = inner
            .check_regions
            .get(check_id)
            .is_some_and(|r| r.contains(&agent.region));
        if !runs_here {
            return Err(format!(
                "check {check_id:?} does not run in region {:?} (it runs in {}); agent {} is not assigned to it",
                agent.region,
                check.spec.regions.join(", "),
                agent.name
            ));
        }
        Ok(())
    }

    /// The next revision number (every change of any check takes one).
    pub fn next_revision(&self) -> u64 {
        let mut inner = self.lock();
        inner.revision += 1;
        inner.revision
    }

    /// The newest revision handed out (the assignment revision).
    pub fn revision(&self) -> u64 {
        self.lock().revision
    }

    /// A live (not deleted) check.
    pub fn check(&self, id: &str) -> Option<StoredCheck> {
        self.lock().checks.get(id).filter(|c| !c.deleted).cloned()
    }

    /// A check, deleted or not.
    pub fn check_any(&self, id: &str) -> Option<StoredCheck> {
        self.lock().checks.get(id).cloned()
    }

    /// `f` of any check ever stored (deleted ones included), under the
    /// lock and without cloning it: what the per-report path uses, since a
    /// check of a large fleet holds a long region list.
    pub fn with_check<R>(&self, id: &str, f: impl FnOnce(&StoredCheck) -> R) -> Option<R> {
        self.lock().checks.get(id).map(f)
    }

    /// Live checks, by id.
    pub fn checks(&self) -> Vec<StoredCheck> {
        self.lock()
            .checks
            .values()
            .filter(|c| !c.deleted)
            .cloned()
            .collect()
    }

    /// Installs a stored check (new, changed, or deleted).
    pub fn put_check(&self, c: StoredCheck) {
        let mut inner = self.lock();
        let mut touched = Vec::new();
        inner.install_check(c, &mut touched);
        inner.wake(touched);
    }

    /// An agent by name.
    pub fn agent(&self, name: &str) -> Option<AgentView> {
        let inner = self.lock();
        inner
            .agents
            .get(name)
            .map(|a| view(a, inner.remote.get(name), &inner.placement))
    }

    /// Every agent, by name.
    pub fn agents(&self) -> Vec<AgentView> {
        let inner = self.lock();
        inner
            .agents
            .values()
            .map(|a| view(a, inner.remote.get(&a.stored.name), &inner.placement))
            .collect()
    }

    /// Which agent runs `check_id` now in each of `regions` (None: nobody connected there).
    pub fn owners(&self, check_id: &str, regions: &[String]) -> BTreeMap<String, Option<String>> {
        let inner = self.lock();
        regions
            .iter()
            .map(|region| {
                let owner = inner.placement.owner(check_id, region).map(str::to_string);
                (region.clone(), owner)
            })
            .collect()
    }

    /// Orders an on-demand run of a live check from the agent that runs it
    /// in each of its regions now; None if there is no such check.
    pub fn order_run(&self, check_id: &str) -> Option<RunStarted> {
        self.order_traced_run(check_id, |_| None)
    }

    /// [`Hub::order_run`] in a trace: `trace` gets the fresh request id and
    /// answers the W3C `traceparent` the agents' probe spans join.
    pub fn order_traced_run(
        &self,
        check_id: &str,
        trace: impl FnOnce(&str) -> Option<String>,
    ) -> Option<RunStarted> {
        let check = self.check(check_id)?;
        let owners = self.owners(check_id, &check.spec.regions);
        let request_id = crate::cluster::ondemand::new_request_id();
        let traceparent = trace(&request_id);
        Some(
            self.on_demand
                .order_as(request_id, check_id, owners, traceparent),
        )
    }

    /// The on-demand runs: for the assignment streams and the API.
    pub fn on_demand(&self) -> &OnDemand {
        &self.on_demand
    }

    /// A stream opened with the previous token of a rotated agent, in its
    /// grace period, while this replica does not hold the new token (only
    /// its hash is stored: the coordinator that made it restarted, or it is
    /// another replica): the hash of the undelivered token, which the
    /// caller replaces by a fresh one it can deliver. None otherwise.
    pub fn token_to_remake(&self, agent: &str, used: &str, now_ms: i64) -> Option<String> {
        let inner = self.lock();
        let a = inner.agents.get(agent)?;
        let s = &a.stored;
        let on_previous = s.previous_token_sha256.as_deref() == Some(used) && previous_valid(s, now_ms);
        let held_here = inner
            .pending
            .get(agent)
            .is_some_and(|t| token_sha256(t.expose()) == s.token_sha256);
        (on_previous && !s.revoked && !held_here && s.token_sha256 != used).then(|| s.token_sha256.clone())
    }

    /// Installs a rotated agent and keeps its new token for delivery over
    /// its assignment stream (which the map change this causes wakes).
    pub fn put_rotated(&self, a: StoredAgent, token: mailloop_common::Secret) {
        self.lock().pending.insert(a.name.clone(), token);
        self.put_agent(a);
    }

    /// The first call of `agent` with its current token (SHA-256 `used`)
    /// since that token was issued: marks it in use and answers true, so the
    /// caller stores that once. False for every later call.
    pub fn first_use(&self, agent: &str, used: &str) -> bool {
        let mut inner = self.lock();
        let Some(a) = inner.agents.get_mut(agent) else {
            return false;
        };
        if a.stored.token_sha256 != used || a.stored.token_in_use {
            return false;
        }
        a.stored.token_in_use = true;
        true
    }

    /// Whether some other agent already holds this token hash.
    pub fn token_taken(&self, hash: &str, by_other_than: &str) -> bool {
        self.lock()
            .by_token
            .get(hash)
            .is_some_and(|n| n != by_other_than)
    }

    /// Installs a stored agent (new, changed or revoked).
    pub fn put_agent(&self, a: StoredAgent) {
        {
            let mut inner = self.lock();
            if let Some(old) = inner.agents.get(&a.name) {
                let old_hashes: Vec<String> = std::iter::once(old.stored.token_sha256.clone())
                    .chain(old.stored.previous_token_sha256.clone())
                    .collect();
                for h in old_hashes {
                    inner.by_token.remove(&h);
                }
            }
            inner
                .by_token
                .insert(a.token_sha256.clone(), a.name.clone());
            if let Some(previous) = &a.previous_token_sha256 {
                inner.by_token.insert(previous.clone(), a.name.clone());
            }
            if a.previous_token_sha256.is_none() || a.revoked {
                inner.pending.remove(&a.name);
            }
            let sessions = inner.agents.get(&a.name).map_or(0, |s| s.sessions);
            let spooled = inner.agents.get(&a.name).and_then(|s| s.spooled);
            let disconnected_at_ms = inner.agents.get(&a.name).and_then(|s| s.disconnected_at_ms);
            let clock_skew_ms = inner.agents.get(&a.name).and_then(|s| s.clock_skew_ms);
            let wake = inner
                .agents
                .get(&a.name)
                .map_or_else(|| watch::channel(0).0, |s| s.wake.clone());
            let mut stored = a;
            if let Some(old) = inner.agents.get(&stored.name) {
                stored.last_seen_ms = stored.last_seen_ms.or(old.stored.last_seen_ms);
                stored.version = stored.version.clone().or(old.stored.version.clone());
            }
            stored.connected = sessions > 0;
            let stored_name = stored.name.clone();
            inner.agents.insert(
                stored.name.clone(),
                AgentState {
                    stored,
                    sessions,
                    spooled,
                    disconnected_at_ms,
                    clock_skew_ms,
                    wake,
                },
            );
            // Its streams wake even when no check moves: a revoked agent's
            // end, a rotated one's get the new token.
            let name = stored_name;
            let mut touched = vec![name.clone()];
            inner.settle(&name, &mut touched);
            inner.wake(touched);
        }
    }
}

/// Whether a rotated agent's previous token still works at `now_ms`.
fn previous_valid(a: &StoredAgent, now_ms: i64) -> bool {
    a.previous_token_sha256.is_some() && a.previous_token_until_ms.is_some_and(|until| now_ms < until)
}

/// What an assignment stream reads when it wakes ([`Hub::follow`]).
#[derive(Debug, Default)]
pub struct Followed {
    /// False: the agent was revoked or removed (or moved region).
    pub valid: bool,
    /// When the stream's token stops working (a rotated agent's previous
    /// token in its grace period).
    pub until: Option<i64>,
    /// A rotated token held here, to deliver on this stream.
    pub pending: Option<mailloop_common::Secret>,
    /// The hash of a rotated token this replica does not hold, for a
    /// stream on the previous token: see [`Hub::token_to_remake`].
    pub to_remake: Option<String>,
    /// Checks to remove, by id, sorted.
    pub removed: Vec<String>,
    /// Checks added or changed, by id.
    pub upserts: Vec<Arc<Assignment>>,
}

/// What turns `held` (check id → revision) into `want`, applied to
/// `held`: the ids to remove (sorted), then the assignments to send.
pub fn diff_held(
    held: &mut HashMap<String, u64>,
    want: Option<&BTreeMap<String, Arc<Assignment>>>,
) -> (Vec<String>, Vec<Arc<Assignment>>) {
    let mut gone: Vec<String> = held
        .keys()
        .filter(|id| !want.is_some_and(|w| w.contains_key(*id)))
        .cloned()
        .collect();
    gone.sort_unstable();
    for id in &gone {
        held.remove(id);
    }
    let mut upserts = Vec::new();
    for (id, a) in want.into_iter().flatten() {
        match held.get_mut(id) {
            Some(r) if *r == a.revision => {}
            Some(r) => {
                *r = a.revision;
                upserts.push(a.clone());
            }
            None => {
                held.insert(id.clone(), a.revision);
                upserts.push(a.clone());
            }
        }
    }
    (gone, upserts)
}

/// An agent as the API shows it: its sessions here and on other replicas.
fn view(a: &AgentState, remote: Option<&Remote>, map: &Placement) -> AgentView {
    let mut stored = a.stored.clone();
    let here = a.sessions > 0;
    if let Some(r) = remote {
        stored.last_seen_ms = stored.last_seen_ms.max(r.last_seen_ms);
    }
    stored.connected = here || remote.is_some();
    AgentView {
        stored,
        connected: here || remote.is_some(),
        sessions: a.sessions + remote.map_or(0, |r| r.sessions as usize),
        assigned: map.for_agent(&a.stored.name).map_or(0, |m| m.len()),
        spooled: if here { a.spooled } else { remote.and_then(|r| r.spooled).or(a.spooled) },
        disconnected_at_ms: a.disconnected_at_ms,
        clock_skew_ms: if here { a.clock_skew_ms } else { remote.and_then(|r| r.clock_skew_ms).or(a.clock_skew_ms) },
    }
}

/// An open session; dropping it disconnects the agent (if it was its last).
pub struct Session {
    hub: Arc<Hub>,
    agent: String,
}

impl Drop for Session {
    fn drop(&mut self) {
        {
            let mut inner = self.hub.lock();
            let elsewhere = inner.remote.contains_key(&self.agent);
            if let Some(a) = inner.agents.get_mut(&self.agent) {
                a.sessions = a.sessions.saturating_sub(1);
                a.stored.connected = a.sessions > 0;
                if a.sessions == 0 && !elsewhere {
                    a.disconnected_at_ms = Some(crate::clock::now_ms());
                }
            }
            let mut touched = Vec::new();
            inner.settle(&self.agent, &mut touched);
            inner.wake(touched);
        }
        self.hub.local.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CheckSpec;
    use crate::storage::Source;
    use std::time::Duration;

    fn check(name: &str, revision: u64, regions: &[&str]) -> StoredCheck {
        StoredCheck {
            spec: CheckSpec {
                name: name.into(),
                table: serde_json::json!({"from": name}),
                interval: Duration::from_secs(60),
                regions: regions.iter().map(|r| r.to_string()).collect(),
                quorum: None,
                public: None,
            },
            revision,
            source: Source::Api,
            deleted: false,
            updated_at_ms: 0,
        }
    }

    fn agent(name: &str, region: &str, token: &str) -> StoredAgent {
        StoredAgent {
            name: name.into(),
            region: region.into(),
            token_sha256: token_sha256(token),
            source: Source::Config,
            revoked: false,
            version: None,
            last_seen_ms: None,
            connected: false,
            created_at_ms: 0,
            previous_token_sha256: None,
            previous_token_until_ms: None,
            token_in_use: false,
        }
    }

    fn ids(f: &Followed) -> Vec<(String, u64)> {
        f.upserts.iter().map(|a| (a.check_id.clone(), a.revision)).collect()
    }

    /// One `follow` call tells a stream everything it needs, and only what
    /// changed since its last call: what a check change fanned out to
    /// every agent costs each stream.
    #[test]
    fn follow_answers_only_what_changed_since_the_last_call() {
        let hub = Hub::new(
            vec![check("c1", 1, &["r1", "r2"]), check("c2", 2, &["r1"])],
            vec![agent("a1", "r1", "tok-a1"), agent("b1", "r2", "tok-b1")],
        );
        let who = hub.authenticate(Some("tok-a1")).unwrap();
        let used = token_sha256("tok-a1");
        let _session = hub.connect(&who);
        let mut held = HashMap::new();
        let first = hub.follow(&who, &used, 0, &mut held);
        assert!(first.valid);
        assert_eq!((first.until, first.pending.is_some(), first.to_remake.clone()), (None, false, None));
        assert_eq!(ids(&first), [("c1".to_string(), 1), ("c2".to_string(), 2)]);
        assert!(first.removed.is_empty());
        // Nothing changed: nothing to send.
        let again = hub.follow(&who, &used, 0, &mut held);
        assert!(again.upserts.is_empty() && again.removed.is_empty());
        // One check changes (same regions), another is deleted.
        hub.put_check(check("c1", 3, &["r1", "r2"]));
        let mut gone = check("c2", 4, &["r1"]);
        gone.deleted = true;
        hub.put_check(gone);
        let changed = hub.follow(&who, &used, 0, &mut held);
        assert_eq!(ids(&changed), [("c1".to_string(), 3)]);
        assert_eq!(changed.removed, ["c2"]);
        assert_eq!(held, HashMap::from([("c1".to_string(), 3)]));
        // Revoked: the stream learns it from the same call.
        let mut revoked = agent("a1", "r1", "tok-a1");
        revoked.revoked = true;
        hub.put_agent(revoked);
        assert!(!hub.follow(&who, &used, 0, &mut held).valid);
    }

    /// A rotated agent's stream, still on its previous token, gets the new
    /// token from `follow` (held here) or is told to remake it (not held).
    #[test]
    fn follow_hands_a_rotated_token_to_a_stream_on_the_previous_one() {
        let hub = Hub::new(vec![check("c1", 1, &["r1"])], vec![agent("a1", "r1", "tok-old")]);
        let who = hub.authenticate(Some("tok-old")).unwrap();
        let used = token_sha256("tok-old");
        let _session = hub.connect(&who);
        let mut rotated = agent("a1", "r1", "tok-new");
        rotated.previous_token_sha256 = Some(used.clone());
        rotated.previous_token_until_ms = Some(10_000);
        hub.put_rotated(rotated.clone(), mailloop_common::Secret::new("tok-new".to_string()));
        let mut held = HashMap::new();
        let f = hub.follow(&who, &used, 5_000, &mut held);
        assert!(f.valid);
        assert_eq!(f.until, Some(10_000));
        assert_eq!(f.pending.as_ref().map(|t| t.expose().to_string()), Some("tok-new".to_string()));
        assert_eq!(f.to_remake, None);
        assert_eq!(ids(&f), [("c1".to_string(), 1)]);
        // The same rotation seen by a replica that does not hold the new
        // token: the stream is asked to remake it, until the grace ends.
        let elsewhere = Hub::new(vec![], vec![rotated]);
        let f = elsewhere.follow(&who, &used, 5_000, &mut HashMap::new());
        assert_eq!((f.pending.is_some(), f.to_remake), (false, Some(token_sha256("tok-new"))));
        let late = elsewhere.follow(&who, &used, 10_000, &mut HashMap::new());
        assert_eq!(late.to_remake, None);
        // A stream on the new token has nothing to deliver.
        let f = hub.follow(&who, &token_sha256("tok-new"), 5_000, &mut HashMap::new());
        assert_eq!((f.until, f.pending.is_some(), f.to_remake), (None, false, None));
    }
}
