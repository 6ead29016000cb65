//! The judge task: feeds stored reports to one [`CheckJudge`] per live
//! check, decides rounds, stores verdicts and incident changes, and hands
//! alert events to [`Alerts`].
//!
//! Inputs:
//! - a bounded feed from the gRPC edge ([`JudgeFeed::offer`]): a report that
//!   was just committed as new. Offering never waits; when the feed is full
//!   the report is dropped here and read back from storage when its round
//!   is decided, so the ack path is never slowed by judging.
//! - a ticker ([`TICK`]) that syncs the judges with the hub's checks and
//!   decides every round that is due.
//!
//! A round (check, k) is due once every region of the check has a report
//! for it or has already reported a later round (an agent runs a check's
//! rounds one after another, so it will not come back to k), or when its
//! deadline passed: `round_start + min(interval, probe
//! budget) + round_slack`, the probe budget being the check's `deadline`
//! plus its `greylist_grace`. Rounds are decided in order, each once;
//! a late report is stored (by the edge) but changes no verdict. Rounds
//! nobody reported are decided too (`unknown`), but only those after the
//! check's last stored verdict, or, for a check without one, those that
//! started after the judge first saw it; and never more than
//! [`BACKFILL_ROUNDS`] rounds before the newest round whose deadline has
//! passed, so a coordinator that was down for a day does not write a day of
//! `unknown` on start. (Counting back from the newest *due* round, not the
//! current one, matters: with a short interval and a long deadline several
//! rounds are in flight at once, and none of them may be skipped.) Round 0 is the
//! on-demand run's and is never judged.
//!
//! - settings ([`Judge::reconfigure`], a SIGHUP reload of `[incidents]` and
//!   `[baselines]`): applied between rounds, so every round decided after
//!   the call returns uses them; learned baselines and open incidents stay.
//!
//! Only the leader judges (`ReplicaRole`, from `Storage::campaign`): a
//! follower replica's task ticks but decides nothing and follows no check;
//! when it takes the lead it restores every check's judge from storage as
//! at a start, and rounds whose reports another replica ingested are read
//! back from storage at their deadline.
//!
//! On start each judge is restored from storage (recent verdicts and the
//! incidents still open, so a restart neither re-opens nor forgets them)
//! and its baselines warmed with the recent delivered reports.

use super::{
    AgentSeen, AlertEvent, AlertEventKind, BaselineView, CheckJudge, RegionReport, VerdictKind,
    config::JudgeSettings,
};
use crate::alerts::Alerts;
use crate::clock::now_ms;
use crate::cluster::hub::Hub;
use crate::cluster::schedule;
use crate::shutdown::Shutdown;
use crate::storage::{AckOutcome, ReplicaRole, ReportRow, Storage, StorageError, StoredCheck};
use mailloop_common::config::{DEFAULT_DEADLINE, DEFAULT_GREYLIST_GRACE};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Reports waiting for the judge before the edge starts dropping them.
pub const FEED_CAPACITY: usize = 4096;
/// How often due rounds are looked for.
pub const TICK: Duration = Duration::from_millis(300);
/// Rounds without a report are decided at most this many intervals back.
pub const BACKFILL_ROUNDS: u64 = 3;
/// See [`Live::floor`].
fn floor_round(now: i64, interval_ms: u64, phase_ms: u64, wait_ms: u64) -> u64 {
    let due_by = (now - wait_ms as i64).max(0) as u64;
    schedule::round_at(due_by, interval_ms, phase_ms)
        .saturating_sub(BACKFILL_ROUNDS)
        .max(1)
}

/// Verdicts handed to `restore` (enough for any streak: rounds are at most 100).
const RESTORE_VERDICTS: u32 = 200;
/// Reports for rounds this far ahead of the clock are ignored (a skewed agent).
const AHEAD_ROUNDS: u64 = 2;

/// A report just committed as new, on its way to the judge.
#[derive(Debug, Clone)]
pub struct NewReport {
    pub check_id: String,
    pub round: u64,
    pub region: String,
    pub agent: String,
    /// The report as parsed at intake (shared, not copied: the JSON is
    /// parsed once per report, and the judge reads no text).
    pub report: Arc<mailloop_common::ProbeReport>,
}

/// The gRPC edge's end of the feed. Cheap to clone; never blocks.
#[derive(Debug, Clone)]
pub struct JudgeFeed {
    tx: mpsc::Sender<NewReport>,
    dropped: Arc<AtomicU64>,
}

impl JudgeFeed {
    /// Hands a report to the judge if there is room; otherwise drops it
    /// (its round is then read back from storage at its deadline).
    pub fn offer(&self, report: NewReport) {
        if report.round == 0 {
            return; // an on-demand run: not part of any round's verdict
        }
        if let Err(mpsc::error::TrySendError::Full(r)) = self.tx.try_send(report) {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::debug!(check = %r.check_id, round = r.round, region = %r.region, dropped = n, "judge feed full; the round will be read from storage");
        }
    }
}

/// A new report ready to be offered once its commit is known to have
/// stored it (`Inserted::New`): replays of stored reports are never judged twice.
#[derive(Debug)]
pub struct Offer {
    feed: JudgeFeed,
    report: NewReport,
}

impl Offer {
    /// Offers the report (never blocks; see [`JudgeFeed::offer`]).
    pub fn deliver(self) {
        self.feed.offer(self.report);
    }
}

impl JudgeFeed {
    /// Prepares the offer of a report about to be stored (None for round 0,
    /// an on-demand run's, and for a round outside its schedule window,
    /// both of which the judge ignores); `report` is `row`'s JSON as parsed.
    pub fn prepare(&self, row: &ReportRow, report: &Arc<mailloop_common::ProbeReport>) -> Option<Offer> {
        (row.round != 0 && row.out_of_window.is_none()).then(|| Offer {
            feed: self.clone(),
            report: NewReport {
                check_id: row.check_id.clone(),
                round: row.round,
                region: row.region.clone(),
                agent: row.agent.clone(),
                report: report.clone(),
            },
        })
    }
}

/// The judge as the rest of the coordinator sees it: the feed, the
/// baselines it published, and acknowledgements (which alert).
pub struct Judge {
    feed: JudgeFeed,
    /// New settings for the task, each with the reply sent once they are in force.
    settings: mpsc::Sender<(JudgeSettings, tokio::sync::oneshot::Sender<()>)>,
    storage: Arc<Storage>,
    alerts: Arc<Alerts>,
    baselines: Mutex<HashMap<String, Vec<BaselineView>>>,
}

impl Judge {
    /// Where the gRPC edge offers new reports.
    pub fn feed(&self) -> JudgeFeed {
        self.feed.clone()
    }

    pub fn alerts(&self) -> &Alerts {
        &self.alerts
    }

    /// The learned baselines of a check the judge follows (None: it does not, yet).
    pub fn baselines(&self, check_id: &str) -> Option<Vec<BaselineView>> {
        self.lock().get(check_id).cloned()
    }

    /// Puts new `[incidents]`/`[baselines]` settings in force for every
    /// round decided after this returns: each followed check's judge gets
    /// the new policy (its own `quorum` still wins); what it learned and
    /// the incidents it has open are kept. Returns at once if the judge
    /// has stopped (shutdown).
    pub async fn reconfigure(&self, settings: JudgeSettings) {
        let (done, applied) = tokio::sync::oneshot::channel();
        if self.settings.send((settings, done)).await.is_ok() {
            let _ = applied.await;
        }
    }

    /// Reports dropped because the feed was full (their rounds were read from storage).
    pub fn dropped(&self) -> u64 {
        self.feed.dropped.load(Ordering::Relaxed)
    }

    /// Acknowledges an incident; alerts only the first time.
    pub async fn acknowledge(
        &self,
        id: u64,
        by: Option<String>,
    ) -> Result<AckOutcome, StorageError> {
        let at_ms = now_ms();
        let outcome = self.storage.acknowledge(id, by, at_ms).await?;
        if let AckOutcome::Acknowledged(incident) = &outcome {
            tracing::warn!(incident = incident.id, check = %incident.check_id, kind = %incident.kind.as_str(), by = %incident.acknowledged_by.as_deref().unwrap_or("-"), "incident acknowledged");
            self.alerts.notify(AlertEvent {
                event: AlertEventKind::Acknowledged,
                at_ms,
                incident: incident.clone(),
                traceparent: None,
                intent: None,
            });
        }
        Ok(outcome)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<BaselineView>>> {
        self.baselines.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, check_id: &str, views: Vec<BaselineView>) {
        self.lock().insert(check_id.to_string(), views);
    }

    fn forget(&self, check_id: &str) {
        self.lock().remove(check_id);
    }
}

/// Starts the judge task; it runs until `shutdown` and finishes the round
/// it is storing before it stops.
pub fn start(
    hub: Arc<Hub>,
    storage: Arc<Storage>,
    alerts: Arc<Alerts>,
    settings: JudgeSettings,
    metrics: Arc<crate::metrics::Metrics>,
    role: watch::Receiver<ReplicaRole>,
    traces: crate::telemetry::Traces,
    shutdown: Shutdown,
) -> (Arc<Judge>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(FEED_CAPACITY);
    let (settings_tx, settings_rx) = mpsc::channel(1);
    let judge = Arc::new(Judge {
        feed: JudgeFeed {
            tx,
            dropped: Arc::default(),
        },
        settings: settings_tx,
        storage: storage.clone(),
        alerts: alerts.clone(),
        baselines: Mutex::default(),
    });
    let task = Task {
        hub,
        storage,
        alerts,
        settings,
        shared: judge.clone(),
        checks: BTreeMap::new(),
        swept: false,
        redelivered: false,
        started_ms: now_ms(),
        metrics,
        role,
        leading: None,
        traces,
    };
    let handle = tokio::spawn(task.run(rx, settings_rx, shutdown));
    (judge, handle)
}

struct Task {
    hub: Arc<Hub>,
    storage: Arc<Storage>,
    alerts: Arc<Alerts>,
    settings: JudgeSettings,
    shared: Arc<Judge>,
    checks: BTreeMap<String, Live>,
    /// Whether incidents of checks deleted while the coordinator was down
    /// have been resolved (once, on the first sync).
    swept: bool,
    /// Whether the alerts a previous leader recorded and did not deliver
    /// have been sent (once per term as leader, before it judges).
    redelivered: bool,
    /// When this task started: what the hub knows of agents begins here.
    started_ms: i64,
    metrics: Arc<crate::metrics::Metrics>,
    /// This replica's role: only the leader judges.
    role: watch::Receiver<ReplicaRole>,
    /// Whether this task judged at the last tick (None before the first).
    leading: Option<bool>,
    /// A `verdict` span per decided round, when the coordinator traces.
    traces: crate::telemetry::Traces,
}

/// How long after a start agents not seen yet are given to reconnect
/// before "no connected agent" counts (their reconnect backoff is capped at 30 s).
pub const RECONNECT_GRACE: Duration = Duration::from_secs(45);

/// The regions' agents as the judge may use them for a round starting at
/// `start`: none for a round that started before the coordinator did (it
/// could not watch it), and, during [`RECONNECT_GRACE`] after the start,
/// none for a region whose agents have not connected since.
fn watched_agents(
    hub: &Hub,
    regions: &[String],
    start: i64,
    started_ms: i64,
    now: i64,
) -> BTreeMap<String, Vec<AgentSeen>> {
    if start < started_ms {
        return BTreeMap::new();
    }
    let settling = now < started_ms + RECONNECT_GRACE.as_millis() as i64;
    regions
        .iter()
        .map(|r| (r.clone(), hub.region_agents(r)))
        .filter(|(_, agents)| {
            !settling
                || agents
                    .iter()
                    .any(|a| a.connected || a.disconnected_at_ms.is_some())
        })
        .collect()
}

/// One live check's judge and its round bookkeeping.
struct Live {
    judge: CheckJudge,
    revision: u64,
    interval_ms: u64,
    phase_ms: u64,
    /// From a round's start to its deadline.
    wait_ms: u64,
    regions: Vec<String>,
    /// The same regions, looked up once per report (a check in a thousand
    /// regions gets a thousand reports per round).
    known: HashSet<String>,
    /// The next round to decide (every earlier one is decided or skipped).
    next_round: u64,
    /// Rounds starting before this are decided only if someone reported.
    quiet_before_ms: i64,
    last_verdict: Option<VerdictKind>,
    /// Reports per round not yet decided, first per region, by region.
    pending: BTreeMap<u64, HashMap<String, RegionReport>>,
    /// The newest round each region has reported. An agent runs a check's
    /// rounds one after another (never overlapping), so a region that
    /// reported a later round will not report an earlier one: that round
    /// need not wait for its deadline.
    newest: HashMap<String, u64>,
}

impl Live {
    fn round_start(&self, round: u64) -> i64 {
        schedule::round_start_ms(round, self.interval_ms, self.phase_ms) as i64
    }

    fn current_round(&self, now: i64) -> u64 {
        schedule::round_at(now.max(0) as u64, self.interval_ms, self.phase_ms)
    }

    /// The oldest round still worth deciding: [`BACKFILL_ROUNDS`] before the
    /// newest round whose deadline has passed. Rounds still inside their
    /// deadline are always above it.
    fn floor(&self, now: i64) -> u64 {
        floor_round(now, self.interval_ms, self.phase_ms, self.wait_ms)
    }

    /// Takes a region's report of `round` (its first one; cheap for the
    /// rest: no scan of the round's regions, no allocation).
    fn add(&mut self, round: u64, report: RegionReport) {
        if !self.known.contains(&report.region) {
            return;
        }
        match self.newest.get_mut(&report.region) {
            Some(newest) => *newest = (*newest).max(round),
            None => {
                self.newest.insert(report.region.clone(), round);
            }
        }
        let slot = self.pending.entry(round).or_default();
        if !slot.contains_key(&report.region) {
            slot.insert(report.region.clone(), report);
        }
    }

    /// Nothing more will come for `round`: every region reported it or has
    /// already reported a later round.
    fn settled(&self, round: u64) -> bool {
        let reported = self.pending.get(&round);
        self.regions.iter().all(|region| {
            reported.is_some_and(|r| r.contains_key(region))
                || self.newest.get(region).is_some_and(|&n| n > round)
        })
    }

    fn complete(&self, round: u64) -> bool {
        self.pending.get(&round).is_some_and(|reports| {
            self.regions
                .iter()
                .all(|region| reports.contains_key(region))
        })
    }
}

/// How long one probe of `check` may take: its `deadline` plus its
/// `greylist_grace`, the defaults where it sets none. Read from the two keys
/// alone (stored checks were validated), since ingest asks for every report.
pub fn probe_budget(check: &StoredCheck) -> Duration {
    let key = |name: &str, default: Duration| {
        check
            .spec
            .table
            .get(name)
            .and_then(|v| v.as_str())
            .and_then(|s| humantime::parse_duration(s).ok())
            .unwrap_or(default)
    };
    key("deadline", DEFAULT_DEADLINE) + key("greylist_grace", DEFAULT_GREYLIST_GRACE)
}

/// How long after its start a round of `check` is decided at the latest.
pub fn round_wait(check: &StoredCheck, settings: &JudgeSettings) -> Duration {
    check.spec.interval.min(probe_budget(check)) + settings.round_slack
}

fn region_report(row: &ReportRow) -> Option<RegionReport> {
    match serde_json::from_str(&row.report_json) {
        Ok(report) => Some(RegionReport {
            region: row.region.clone(),
            agent: row.agent.clone(),
            report,
        }),
        Err(e) => {
            tracing::warn!(probe = %row.probe_id, check = %row.check_id, error = %e, "stored report is not a probe report; the judge skips it");
            None
        }
    }
}

impl Task {
    async fn run(
        mut self,
        mut feed: mpsc::Receiver<NewReport>,
        mut settings: mpsc::Receiver<(JudgeSettings, tokio::sync::oneshot::Sender<()>)>,
        mut shutdown: Shutdown,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.recv() => break,
                Some(r) = feed.recv() => self.take(r),
                Some((new, applied)) = settings.recv() => {
                    self.apply_settings(new);
                    let _ = applied.send(());
                }
                _ = tick.tick() => if self.lead() {
                    if !self.redelivered {
                        self.redeliver().await;
                    }
                    self.sync().await;
                    self.decide_due().await;
                }
            }
        }
        tracing::debug!("judge stopped");
    }

    /// Whether this replica leads now. Taking over starts afresh: every
    /// check's judge is restored from storage (the verdicts and incidents
    /// the previous leader stored), and the agents' view starts now (they
    /// are moving over from the replica that died). Giving up drops the
    /// judges, so a follower holds no stale state.
    fn lead(&mut self) -> bool {
        let leader = *self.role.borrow() == ReplicaRole::Leader;
        match self.leading.replace(leader) {
            Some(was) if was == leader => {}
            None if leader => {}
            _ if leader => {
                tracing::info!("leader now: judging rounds here, restored from storage");
                self.started_ms = now_ms();
                self.swept = false;
                self.redelivered = false;
            }
            _ => {
                tracing::warn!(role = %self.role.borrow().as_str(), "not the leader: this replica does not judge (the leader judges every round, whichever replica stored its reports)");
                self.checks.clear();
            }
        }
        leader
    }

    /// The delivery record of a transition `store_round` recorded
    /// (PostgreSQL): marked delivered once every channel settled it.
    fn intent(&self, event: AlertEventKind, incident_id: u64) -> Option<crate::judge::model::Intent> {
        if !self.storage.shared() {
            return None;
        }
        let storage = self.storage.clone();
        Some(crate::judge::model::Intent::new(move || {
            tokio::spawn(async move {
                if let Err(e) = storage.alert_delivered(incident_id, event).await {
                    tracing::warn!(incident = incident_id, event = event.as_str(), error = %e, "cannot record the alert as delivered; the next leader may send it again");
                }
            });
        }))
    }

    /// Sends the alerts a previous leader recorded with their transitions
    /// and did not deliver (it died or was cut off first). Before this
    /// replica judges anything, so none of its own is among them.
    async fn redeliver(&mut self) {
        match self.storage.undelivered_alerts().await {
            Ok(owed) => {
                self.redelivered = true;
                for (event, at_ms, incident) in owed {
                    tracing::warn!(incident = incident.id, check = %incident.check_id, kind = %incident.kind.as_str(), event = event.as_str(), "alert recorded by a previous leader and not delivered: sending it");
                    let intent = self.intent(event, incident.id);
                    self.alerts.notify(AlertEvent {
                        event,
                        at_ms,
                        incident,
                        traceparent: None,
                        intent,
                    });
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the undelivered alerts; trying again"),
        }
    }

    fn take(&mut self, r: NewReport) {
        let Some(live) = self.checks.get_mut(&r.check_id) else {
            return; // not followed yet: read from storage when its round is due
        };
        let ahead = live.current_round(now_ms()) + AHEAD_ROUNDS;
        if r.round == 0 || r.round < live.next_round || r.round > ahead {
            return;
        }
        live.add(
            r.round,
            RegionReport {
                region: r.region,
                agent: r.agent,
                // The intake has let go of it by now (nearly always): no copy.
                report: Arc::unwrap_or_clone(r.report),
            },
        );
    }

    /// New settings for every followed check. A check whose hub revision
    /// moved since it was followed is left to [`Task::sync`], which
    /// reconfigures it with these settings on its next tick.
    fn apply_settings(&mut self, new: JudgeSettings) {
        self.settings = new;
        for (id, live) in self.checks.iter_mut() {
            let Some(c) = self.hub.check(id) else {
                continue;
            };
            if c.revision != live.revision {
                continue;
            }
            let policy = self.settings.policy_for(c.spec.quorum);
            live.judge
                .reconfigure(&c.spec.regions, policy, &c.spec.table);
            live.wait_ms = round_wait(&c, &self.settings).as_millis() as u64;
        }
    }

    /// Follows the hub: new checks get a (restored) judge, changed ones are
    /// reconfigured, deleted ones dropped.
    async fn sync(&mut self) {
        let live: Vec<StoredCheck> = self.hub.checks();
        let ids: Vec<&str> = live.iter().map(|c| c.spec.name.as_str()).collect();
        let gone: Vec<String> = self
            .checks
            .keys()
            .filter(|id| !ids.contains(&id.as_str()))
            .cloned()
            .collect();
        for id in gone {
            self.checks.remove(&id);
            self.shared.forget(&id);
            tracing::info!(check = %id, "check deleted; its judge is dropped (verdicts stay, open incidents are resolved)");
            self.resolve_deleted(&id).await;
        }
        if !self.swept {
            // Checks deleted while the coordinator was down.
            match self.storage.checks_with_active_incidents().await {
                Ok(with) => {
                    self.swept = true;
                    for id in with.iter().filter(|id| !ids.contains(&id.as_str())) {
                        self.resolve_deleted(id).await;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot list the checks with open incidents; retrying")
                }
            }
        }
        for c in live {
            match self.checks.get_mut(&c.spec.name) {
                Some(l) if l.revision == c.revision => {}
                Some(l) => {
                    let policy = self.settings.policy_for(c.spec.quorum);
                    l.judge.reconfigure(&c.spec.regions, policy, &c.spec.table);
                    l.revision = c.revision;
                    l.regions = c.spec.regions.clone();
                    l.known = c.spec.regions.iter().cloned().collect();
                    l.wait_ms = round_wait(&c, &self.settings).as_millis() as u64;
                    let interval_ms = c.spec.interval.as_millis() as u64;
                    if interval_ms != l.interval_ms {
                        // Round numbers mean other times now: start afresh from the next round.
                        l.interval_ms = interval_ms;
                        l.phase_ms = schedule::phase_ms(&c.spec.name, interval_ms);
                        l.pending.clear();
                        l.next_round = l.current_round(now_ms()) + 1;
                    }
                    tracing::info!(check = %c.spec.name, revision = c.revision, "check changed; judge reconfigured");
                }
                None => match self.follow(&c).await {
                    Ok(l) => {
                        self.shared.publish(&c.spec.name, l.judge.baselines());
                        self.checks.insert(c.spec.name.clone(), l);
                    }
                    Err(e) => {
                        tracing::error!(check = %c.spec.name, error = %e, "cannot restore the judge from storage; retrying")
                    }
                },
            }
        }
    }

    /// Resolves a deleted check's open incidents ("check deleted") and
    /// sends each channel its last alert.
    async fn resolve_deleted(&self, id: &str) {
        let at_ms = now_ms();
        match self
            .storage
            .resolve_incidents_of(id.to_string(), at_ms, "check deleted".into())
            .await
        {
            Ok(resolved) => {
                for incident in resolved {
                    tracing::warn!(incident = incident.id, check = %incident.check_id, kind = %incident.kind.as_str(), "incident resolved: check deleted");
                    self.alerts.notify(AlertEvent {
                        event: AlertEventKind::Resolved,
                        at_ms,
                        incident,
                        traceparent: None,
                        intent: None,
                    });
                }
            }
            Err(e) => {
                tracing::error!(check = %id, error = %e, "cannot resolve the deleted check's incidents")
            }
        }
    }

    /// A judge for a check, restored from storage.
    async fn follow(&self, c: &StoredCheck) -> Result<Live, StorageError> {
        let id = c.spec.name.clone();
        let policy = self.settings.policy_for(c.spec.quorum);
        let window = policy.baselines.window as u32;
        let mut judge = CheckJudge::new(&id, &c.spec.regions, policy, &c.spec.table);
        let recent = self
            .storage
            .recent_verdicts(id.clone(), RESTORE_VERDICTS)
            .await?;
        let open = self.storage.active_incidents(id.clone()).await?;
        judge.restore(&recent, &open);
        let interval_ms = c.spec.interval.as_millis() as u64;
        let phase_ms = schedule::phase_ms(&id, interval_ms);
        let now = now_ms();
        let current = schedule::round_at(now.max(0) as u64, interval_ms, phase_ms);
        let last = recent.last();
        let floor = floor_round(
            now,
            interval_ms,
            phase_ms,
            round_wait(c, &self.settings).as_millis() as u64,
        );
        let next_round = last.map_or(floor, |v| floor.max(v.round + 1));
        // Warm the baselines with what was judged before (later rounds are judged, and learned, now).
        for region in &c.spec.regions {
            let rows = self
                .storage
                .recent_delivered(id.clone(), region.clone(), window)
                .await?;
            for row in rows.iter().filter(|r| r.round < next_round) {
                if let Some(r) = region_report(row) {
                    judge.learn(&r);
                }
            }
        }
        let mut live = Live {
            judge,
            revision: c.revision,
            interval_ms,
            phase_ms,
            wait_ms: round_wait(c, &self.settings).as_millis() as u64,
            regions: c.spec.regions.clone(),
            known: c.spec.regions.iter().cloned().collect(),
            next_round,
            quiet_before_ms: if last.is_some() { i64::MIN } else { now },
            last_verdict: last.map(|v| v.verdict),
            pending: BTreeMap::new(),
            newest: HashMap::new(),
        };
        // Reports stored before the judge followed the check (before a restart, say).
        for round in next_round..=current {
            for row in self.storage.round_reports(id.clone(), round).await? {
                if let Some(r) = region_report(&row) {
                    live.add(round, r);
                }
            }
        }
        tracing::info!(check = %id, next_round, restored_verdicts = recent.len(), open_incidents = open.len(), "judge following check");
        Ok(live)
    }

    async fn decide_due(&mut self) {
        let ids: Vec<String> = self.checks.keys().cloned().collect();
        for id in ids {
            loop {
                let now = now_ms();
                let Some(live) = self.checks.get_mut(&id) else {
                    break;
                };
                let floor = live.floor(now);
                if live.next_round < floor {
                    // Judging fell behind (or the clock jumped): no backfill storm.
                    tracing::warn!(check = %id, skipped_from = live.next_round, skipped_to = floor - 1, "judge fell behind; these rounds get no verdict");
                    live.pending.retain(|k, _| *k >= floor);
                    live.next_round = floor;
                }
                let round = live.next_round;
                let start = live.round_start(round);
                if start > now {
                    break;
                }
                let complete = live.complete(round);
                if !complete && !live.settled(round) && now < start + live.wait_ms as i64 {
                    break;
                }
                let mut reports = live.pending.remove(&round).unwrap_or_default();
                if !complete {
                    // Reports the feed dropped, or that arrived before the judge followed the check.
                    match self.storage.round_reports(id.clone(), round).await {
                        Ok(rows) => {
                            let live = self.checks.get_mut(&id).expect("still followed");
                            for row in rows {
                                if live.known.contains(&row.region)
                                    && !reports.contains_key(&row.region)
                                    && let Some(r) = region_report(&row)
                                {
                                    reports.insert(row.region.clone(), r);
                                }
                            }
                        }
                        Err(e) => {
                            tracing::error!(check = %id, round, error = %e, "cannot read the round's reports; deciding on what arrived");
                        }
                    }
                }
                let live = self.checks.get_mut(&id).expect("still followed");
                live.next_round = round + 1;
                if reports.is_empty() && start < live.quiet_before_ms {
                    continue; // before the judge followed the check, and nobody reported
                }
                let mut reports: Vec<RegionReport> = reports.into_values().collect();
                reports.sort_by(|a, b| a.region.cmp(&b.region));
                self.decide(&id, round, start, reports).await;
            }
        }
    }

    async fn decide(&mut self, id: &str, round: u64, start: i64, reports: Vec<RegionReport>) {
        let timed = self.metrics.judge_round();
        // The verdict span is the round timer's measurement, linked to the
        // probe spans of the reports it judges.
        let mut span = self.traces.verdict(id, round, timed.started_at(), &reports);
        let traceparent = crate::telemetry::context_of(span.as_ref())
            .map(|cx| mailloop_common::telemetry::traceparent(&cx));
        let mut incidents = Vec::new();
        let now = now_ms();
        let live = self.checks.get_mut(id).expect("a followed check");
        let agents = watched_agents(&self.hub, &live.regions, start, self.started_ms, now);
        let (verdict, changes) = live.judge.judge_with(round, start, &reports, &agents, now);
        self.metrics.judged(&verdict, &live.judge.open_incidents());
        let kind = verdict.verdict;
        let previous = live.last_verdict.replace(kind);
        let baselines = live.judge.baselines();
        self.shared.publish(id, baselines);
        if previous != Some(kind) {
            tracing::info!(check = %id, round, verdict = %kind.as_str(), was = %previous.map_or("-", |v| v.as_str()), note = %verdict.note, "verdict changed");
        } else {
            tracing::debug!(check = %id, round, verdict = %kind.as_str(), "round decided");
        }
        crate::telemetry::verdict_decided(span.as_mut(), &verdict);
        match self.storage.store_round(verdict, changes).await {
            Ok(stored) => {
                for (event, incident) in stored.events {
                    if span.is_some() {
                        incidents.push((
                            event.as_str().to_string(),
                            incident.id,
                            incident.kind.as_str().to_string(),
                        ));
                    }
                    tracing::warn!(incident = incident.id, check = %incident.check_id, kind = %incident.kind.as_str(), severity = %format!("{:?}", incident.severity).to_lowercase(), summary = %incident.summary, "incident {}", event.as_str());
                    let at_ms = match event {
                        AlertEventKind::Resolved => incident.resolved_at_ms.unwrap_or(now),
                        _ => incident.opened_at_ms,
                    };
                    let intent = self.intent(event, incident.id);
                    self.alerts.notify(AlertEvent {
                        event,
                        at_ms,
                        incident,
                        traceparent: traceparent.clone(),
                        intent,
                    });
                }
            }
            Err(e) => {
                tracing::error!(check = %id, round, error = %e, "cannot store the round's verdict; it is lost, judging goes on")
            }
        }
        let (started_at, took) = timed.finish();
        crate::telemetry::end_verdict(span, started_at, took, &incidents);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CheckSpec;
    use crate::storage::Source;

    fn report(round: u64) -> NewReport {
        NewReport {
            check_id: "corp".into(),
            round,
            region: "eu-west".into(),
            agent: "eu-1".into(),
            report: Arc::new(
                serde_json::from_str(
                    r#"{"probe_id": "p", "check": "corp", "started_at": "2026-01-01T00:00:00Z", "outcome": "ok",
                        "rtt_ms": null, "delivery_ms": null, "steps": [], "failure": null, "message_id": "m", "queue_id": null}"#,
                )
                .expect("a probe report"),
            ),
        }
    }

    #[test]
    fn the_feed_never_blocks_drops_when_full_and_skips_round_zero() {
        let (tx, mut rx) = mpsc::channel(1);
        let feed = JudgeFeed {
            tx,
            dropped: Arc::default(),
        };
        feed.offer(report(0));
        feed.offer(report(7));
        feed.offer(report(8)); // full: dropped, read from storage at the deadline
        assert_eq!(rx.try_recv().unwrap().round, 7);
        assert!(rx.try_recv().is_err());
        assert_eq!(feed.dropped.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn rounds_still_inside_their_deadline_are_never_below_the_floor() {
        // 2 s rounds, 12 s from a round's start to its deadline: six rounds in flight.
        let (interval, phase, wait) = (2_000u64, 500u64, 12_000u64);
        for now in (40_000i64..60_000).step_by(137) {
            let floor = floor_round(now, interval, phase, wait);
            let current = schedule::round_at(now as u64, interval, phase);
            assert!(floor >= 1);
            // Every round whose deadline has not passed is at or above the floor.
            let oldest_open = (1..=current)
                .find(|&k| schedule::round_start_ms(k, interval, phase) as i64 + wait as i64 > now)
                .unwrap();
            assert!(
                floor <= oldest_open,
                "now {now}: floor {floor} skips round {oldest_open}, still open"
            );
            // And the floor is no more than BACKFILL_ROUNDS behind the newest due round.
            assert!(
                oldest_open - floor <= BACKFILL_ROUNDS + 1,
                "now {now}: floor {floor}, oldest open {oldest_open}"
            );
        }
    }

    fn check(interval: Duration, table: serde_json::Value) -> StoredCheck {
        StoredCheck {
            spec: CheckSpec {
                name: "corp".into(),
                table,
                interval,
                regions: vec!["eu-west".into()],
                quorum: None,
                public: None,
            },
            revision: 1,
            source: Source::Api,
            deleted: false,
            updated_at_ms: 0,
        }
    }

    #[test]
    fn a_round_waits_for_the_shorter_of_interval_and_probe_budget_plus_slack() {
        let table = serde_json::json!({
            "name": "corp", "from": "probe@sender.test", "to": "probe@receiver.test",
            "deadline": "20s", "greylist_grace": "10s",
            "smtp": {"host": "127.0.0.1", "username": "probe@sender.test", "password_env": "P"},
            "imap": {"host": "127.0.0.1", "username": "probe@receiver.test", "password_env": "P"},
        });
        let settings = JudgeSettings::default(); // round_slack 10 s
        assert_eq!(
            round_wait(&check(Duration::from_secs(300), table.clone()), &settings),
            Duration::from_secs(20 + 10 + 10),
            "budget: deadline + greylist_grace"
        );
        assert_eq!(
            round_wait(&check(Duration::from_secs(5), table), &settings),
            Duration::from_secs(5 + 10),
            "an interval shorter than the budget"
        );
    }
}
