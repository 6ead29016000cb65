//! Incidents: streaks of round verdicts open, update and resolve them.
//!
//! Everything here is driven by [`Verdict`]s alone (their evidence carries
//! failures, slow steps, authentication results and certificates), so
//! [`IncidentBook::restore`] can rebuild every streak after a restart by
//! replaying the stored verdicts.
//!
//! At most one incident is open per check × kind × key:
//! - **outage** (critical, key empty): `down` for `confirm_rounds` rounds in
//!   a row, or one `down` round in which every region reported and every
//!   region failed with class `permanent` or `auth` (a 550 does not fix
//!   itself). `unknown` rounds neither extend nor break a streak of `down`,
//!   nor count toward resolving; every other verdict counts as not down.
//!   Resolved after `resolve_rounds` not-down rounds in a row.
//! - **regional** (warning, key = the region): the same region failing in a
//!   `transit` round `transit_rounds` rounds in a row. A round where that
//!   region delivers (or is deferred) ends the streak; a `down` or `unknown`
//!   round where it fails neither extends nor ends it (that is outage
//!   territory, or undecidable). One incident per region, so two regions
//!   with their own path trouble get one each. Resolved once the region has
//!   not failed for `resolve_rounds` rounds it reported in. An open regional
//!   incident stays open when an outage opens (separate kinds).
//! - **performance** (warning, key empty): `degraded` for `degraded_rounds`
//!   rounds in a row (`unknown` rounds skipped); resolved after
//!   `resolve_rounds` rounds of any other verdict.
//! - **authentication** (warning, key empty): opens after one round in which
//!   a region's SPF, DKIM or DMARC result that passed in its last known-good
//!   delivered report no longer passes, or an alignment got weaker than
//!   known-good (strict → relaxed, strict or relaxed → none). The
//!   known-good values of a region advance only with reports that do not
//!   drift, so a result that stays broken keeps the incident open; it is
//!   resolved after `resolve_rounds` rounds with authentication results and
//!   no drift.
//! - **certificate** (info, key = endpoint|subject|not_after): a
//!   certificate with fewer than `cert_min_days` days left, opened once per
//!   certificate: never again for the same key in the same judge's
//!   lifetime, even after it was resolved (a restart forgets resolved keys
//!   older than the replayed verdicts). Resolved when the same endpoint
//!   presents a different certificate with enough days left.
//!
//! - **coverage** (`coverage_severity`, warning by default; key = the
//!   region): the monitor is blind in a region. Opens in the first round in
//!   which the region is `missing` and has no connected agent, or after
//!   `coverage_rounds` `missing` rounds in a row whatever its agents do.
//!   Only rounds in which the coordinator knew the region's agents count
//!   (`agents_connected` set): one decided for a time it was down neither
//!   counts nor ends a streak, so a coordinator restart opens nothing.
//!   The summary names the region, its agents and when each was last seen
//!   or disconnected. Resolved by the first round the region reports again.
//!   Independent of the verdict: `unknown` is never counted as up, and a
//!   round that is `up` without a region still leaves that region blind.
//! - **placement** and **reputation**: see `incident/placement.rs`.
//! - **clock** (`clock_severity`, warning by default; key = the region):
//!   the agent that reported for a region has a clock off by more than
//!   `clock_skew` (measured by the coordinator from the timestamp the agent
//!   sends with Register and Heartbeat, kept in the evidence). Resolved by
//!   a round whose reporting agent's clock is within the bound.
//!
//! Timelines stay short: an incident opens with the rounds of its opening
//! streak, then gains an entry only for a round that changes what is seen
//! (another verdict, other failing regions or steps) or counts toward
//! resolving it, and never more than [`TIMELINE_CAP`] entries in all (the
//! resolve entry always comes).

use super::model::{
    AuthSnapshot, CertSeen, Incident, IncidentChange, IncidentKind, IncidentState, Policy,
    RegionEvidence, RegionState, Severity, TimelineEntry, Verdict, VerdictKind,
};
use super::summary::{self, Drift};
use super::verdict::is_hard;
use mailloop_common::alignment::Alignment;
use std::collections::{BTreeMap, BTreeSet};

mod placement;

/// Most timeline entries an incident gets from the judge.
pub const TIMELINE_CAP: usize = 32;

/// One region's streaks for regional incidents.
#[derive(Debug, Clone, Default)]
struct RegionStreak {
    /// `transit` rounds in a row in which this region failed.
    transit: u32,
    since_ms: i64,
    good_before_ms: Option<i64>,
    entries: Vec<TimelineEntry>,
    /// Reported rounds in a row in which this region did not fail.
    fine: u32,
    last_good_ms: Option<i64>,
    sig: String,
}

/// A streak of one verdict kind (`down`, `degraded`) and what opens it.
#[derive(Debug, Clone, Default)]
struct Streak {
    rounds: u32,
    since_ms: i64,
    good_before_ms: Option<i64>,
    entries: Vec<TimelineEntry>,
    /// Rounds in a row of another verdict (toward resolving).
    other: u32,
    sig: String,
}

/// The incident rules' state for one check.
#[derive(Debug, Clone, Default)]
pub struct IncidentBook {
    check_id: String,
    open: BTreeMap<(IncidentKind, String), Incident>,
    down: Streak,
    degraded: Streak,
    regions: BTreeMap<String, RegionStreak>,
    /// Start of the last round in which every reporting region delivered.
    last_good_ms: Option<i64>,
    auth_good: BTreeMap<String, AuthSnapshot>,
    auth_clean: u32,
    auth_sig: String,
    certs_seen: BTreeSet<String>,
    /// Per region: `missing` rounds in a row, and what the last one said of
    /// the agents (connected count), to update the summary when it changes.
    blind: BTreeMap<String, (u32, Option<u32>)>,
    /// Streaks of the placement and reputation rules.
    placement: placement::PlacementState,
}

fn entry(v: &Verdict, event: &str, note: String) -> TimelineEntry {
    TimelineEntry {
        at_ms: v.round_start_ms,
        round: Some(v.round),
        event: event.to_string(),
        verdict: Some(v.verdict),
        note,
    }
}

impl IncidentBook {
    pub fn new(check_id: &str) -> IncidentBook {
        IncidentBook {
            check_id: check_id.to_string(),
            ..Default::default()
        }
    }

    /// The incidents this judge believes open, by kind and key.
    pub fn open_incidents(&self) -> impl Iterator<Item = &Incident> {
        self.open.values()
    }

    /// Rebuilds streaks by replaying `recent` (oldest first); the incidents
    /// open in storage are the truth about what is open afterwards.
    pub fn restore(
        &mut self,
        recent: &[Verdict],
        open: &[Incident],
        policy: &Policy,
        cert_min_days: u32,
    ) {
        let truth: BTreeMap<(IncidentKind, String), Incident> = open
            .iter()
            .filter(|i| i.state != IncidentState::Resolved && i.check_id == self.check_id)
            .map(|i| ((i.kind, i.key.clone()), i.clone()))
            .collect();
        *self = IncidentBook::new(&self.check_id);
        self.open = truth.clone();
        for v in recent {
            let _ = self.on_round(v, policy, cert_min_days);
        }
        self.open = truth;
        for (kind, key) in self.open.keys() {
            if *kind == IncidentKind::Certificate {
                self.certs_seen.insert(key.clone());
            }
        }
    }

    /// Applies one round's verdict; returns what it did to incidents.
    pub fn on_round(
        &mut self,
        v: &Verdict,
        policy: &Policy,
        cert_min_days: u32,
    ) -> Vec<IncidentChange> {
        let mut changes = Vec::new();
        self.outage(v, policy, &mut changes);
        self.regional(v, policy, &mut changes);
        self.performance(v, policy, &mut changes);
        self.authentication(v, policy, &mut changes);
        self.certificates(v, cert_min_days, &mut changes);
        self.coverage(v, policy, &mut changes);
        self.clock(v, policy, &mut changes);
        self.placement(v, policy, &mut changes);
        self.reputation(v, policy, &mut changes);
        if matches!(v.verdict, VerdictKind::Up | VerdictKind::Degraded) {
            self.last_good_ms = Some(v.round_start_ms);
        }
        changes
    }

    fn is_open(&self, kind: IncidentKind, key: &str) -> bool {
        self.open.contains_key(&(kind, key.to_string()))
    }

    #[allow(clippy::too_many_arguments)]
    fn open(
        &mut self,
        changes: &mut Vec<IncidentChange>,
        v: &Verdict,
        kind: IncidentKind,
        key: String,
        severity: Severity,
        regions: Vec<String>,
        step: Option<String>,
        class: Option<String>,
        summary: String,
        mut timeline: Vec<TimelineEntry>,
    ) {
        // The opening round is the last entry of its streak, or a new one.
        match timeline.last_mut() {
            Some(last) if last.round == Some(v.round) => last.event = "opened".into(),
            _ => timeline.push(entry(v, "opened", v.note.clone())),
        }
        timeline.truncate(TIMELINE_CAP);
        let incident = Incident {
            id: 0,
            check_id: self.check_id.clone(),
            kind,
            severity,
            state: IncidentState::Open,
            key: key.clone(),
            regions,
            step,
            class,
            opened_at_ms: v.decided_at_ms,
            first_round: timeline.first().and_then(|e| e.round).unwrap_or(v.round),
            last_round: v.round,
            acknowledged_at_ms: None,
            acknowledged_by: None,
            resolved_at_ms: None,
            summary,
            timeline,
        };
        self.open.insert((kind, key), incident.clone());
        changes.push(IncidentChange::Open(incident));
    }

    /// Adds a timeline entry to an open incident (dropped past the cap).
    fn update(
        &mut self,
        changes: &mut Vec<IncidentChange>,
        kind: IncidentKind,
        key: &str,
        e: TimelineEntry,
        summary: Option<String>,
        regions: Option<Vec<String>>,
    ) {
        let Some(inc) = self.open.get_mut(&(kind, key.to_string())) else {
            return;
        };
        if inc.timeline.len() >= TIMELINE_CAP {
            return;
        }
        let last_round = e.round.unwrap_or(inc.last_round).max(inc.last_round);
        inc.timeline.push(e.clone());
        inc.last_round = last_round;
        if let Some(s) = &summary {
            inc.summary = s.clone();
        }
        if let Some(r) = &regions {
            inc.regions = r.clone();
        }
        changes.push(IncidentChange::Update {
            kind,
            key: key.to_string(),
            entry: e,
            summary,
            regions,
            last_round,
        });
    }

    fn resolve(
        &mut self,
        changes: &mut Vec<IncidentChange>,
        kind: IncidentKind,
        key: &str,
        e: TimelineEntry,
    ) {
        if self.open.remove(&(kind, key.to_string())).is_some() {
            changes.push(IncidentChange::Resolve {
                kind,
                key: key.to_string(),
                entry: e,
            });
        }
    }

    fn outage(&mut self, v: &Verdict, policy: &Policy, changes: &mut Vec<IncidentChange>) {
        let kind = IncidentKind::Outage;
        match v.verdict {
            VerdictKind::Unknown => {}
            VerdictKind::Down => {
                let s = &mut self.down;
                if s.rounds == 0 {
                    s.since_ms = v.round_start_ms;
                    s.good_before_ms = self.last_good_ms;
                    s.entries.clear();
                }
                s.rounds += 1;
                s.other = 0;
                if s.entries.len() < policy.confirm_rounds.max(1) as usize {
                    s.entries.push(entry(v, "round", v.note.clone()));
                }
                let failed: Vec<&RegionEvidence> = v
                    .regions
                    .iter()
                    .filter(|e| e.state == RegionState::Failed)
                    .collect();
                let names: Vec<String> = failed.iter().map(|e| e.region.clone()).collect();
                let sig = failed
                    .iter()
                    .map(|e| format!("{}@{}", e.region, e.step.as_deref().unwrap_or("")))
                    .collect::<Vec<_>>()
                    .join(",");
                let summary =
                    summary::outage(v.regions.len(), &failed, s.since_ms, s.good_before_ms);
                let changed = sig != s.sig;
                s.sig = sig;
                let hard = !v.regions.is_empty()
                    && v.regions
                        .iter()
                        .all(|e| e.state == RegionState::Failed && is_hard(e.class.as_deref()));
                let confirmed = s.rounds >= policy.confirm_rounds.max(1) || hard;
                if self.is_open(kind, "") {
                    if changed {
                        let e = entry(v, "round", v.note.clone());
                        self.update(changes, kind, "", e, Some(summary), Some(names));
                    }
                } else if confirmed {
                    let first = failed.first();
                    let (step, class) = (
                        first.and_then(|e| e.step.clone()),
                        first.and_then(|e| e.class.clone()),
                    );
                    let timeline = self.down.entries.clone();
                    self.open(
                        changes,
                        v,
                        kind,
                        String::new(),
                        Severity::Critical,
                        names,
                        step,
                        class,
                        summary,
                        timeline,
                    );
                }
            }
            _ => {
                let s = &mut self.down;
                s.rounds = 0;
                s.other += 1;
                s.sig = v.verdict.as_str().to_string();
                let other = s.other;
                if self.is_open(kind, "") {
                    let need = policy.resolve_rounds.max(1);
                    if other >= need {
                        let note = format!("resolved after {other} rounds not down; {}", v.note);
                        self.resolve(changes, kind, "", entry(v, "resolved", note));
                    } else {
                        let note = format!("not down ({other} of {need} to resolve); {}", v.note);
                        self.update(changes, kind, "", entry(v, "round", note), None, None);
                    }
                }
            }
        }
    }

    fn regional(&mut self, v: &Verdict, policy: &Policy, changes: &mut Vec<IncidentChange>) {
        let kind = IncidentKind::Regional;
        let delivering = v
            .regions
            .iter()
            .filter(|e| {
                matches!(
                    e.state,
                    RegionState::Ok | RegionState::Degraded | RegionState::Deferred
                )
            })
            .count();
        for e in &v.regions {
            let key = e.region.clone();
            let open = self.is_open(kind, &key);
            let rs = self.regions.entry(key.clone()).or_default();
            match e.state {
                RegionState::Missing => {}
                RegionState::Failed => {
                    rs.fine = 0;
                    let sig = format!(
                        "failed@{}:{}",
                        e.step.as_deref().unwrap_or(""),
                        e.class.as_deref().unwrap_or("")
                    );
                    let changed = sig != rs.sig;
                    rs.sig = sig;
                    if v.verdict == VerdictKind::Transit {
                        if rs.transit == 0 {
                            rs.since_ms = v.round_start_ms;
                            rs.good_before_ms = rs.last_good_ms;
                            rs.entries.clear();
                        }
                        rs.transit += 1;
                        if rs.entries.len() < policy.transit_rounds.max(1) as usize {
                            rs.entries.push(entry(v, "round", v.note.clone()));
                        }
                    }
                    let summary = summary::regional(e, delivering, rs.since_ms, rs.good_before_ms);
                    if open {
                        if changed {
                            let note = format!("{} still fails; {}", e.region, v.note);
                            self.update(
                                changes,
                                kind,
                                &key,
                                entry(v, "round", note),
                                Some(summary),
                                None,
                            );
                        }
                    } else if v.verdict == VerdictKind::Transit
                        && rs.transit >= policy.transit_rounds.max(1)
                    {
                        let timeline = rs.entries.clone();
                        let (step, class) = (e.step.clone(), e.class.clone());
                        self.open(
                            changes,
                            v,
                            kind,
                            key.clone(),
                            Severity::Warning,
                            vec![key],
                            step,
                            class,
                            summary,
                            timeline,
                        );
                    }
                }
                RegionState::Ok | RegionState::Degraded | RegionState::Deferred => {
                    rs.transit = 0;
                    rs.fine += 1;
                    rs.sig = "fine".into();
                    if e.state != RegionState::Deferred {
                        rs.last_good_ms = Some(v.round_start_ms);
                    }
                    let fine = rs.fine;
                    if open {
                        let need = policy.resolve_rounds.max(1);
                        if fine >= need {
                            let note =
                                format!("{} delivered for {fine} rounds; resolved", e.region);
                            self.resolve(changes, kind, &key, entry(v, "resolved", note));
                        } else {
                            let note =
                                format!("{} delivers ({fine} of {need} to resolve)", e.region);
                            self.update(changes, kind, &key, entry(v, "round", note), None, None);
                        }
                    }
                }
            }
        }
    }

    fn performance(&mut self, v: &Verdict, policy: &Policy, changes: &mut Vec<IncidentChange>) {
        let kind = IncidentKind::Performance;
        // A round degraded only because probes landed in junk is the
        // placement rule's, not a performance problem.
        let verdict = match v.verdict {
            VerdictKind::Degraded
                if v.regions
                    .iter()
                    .filter(|e| e.state == RegionState::Degraded)
                    .all(placement::junk_only) =>
            {
                VerdictKind::Up
            }
            other => other,
        };
        match verdict {
            VerdictKind::Unknown => {}
            VerdictKind::Degraded => {
                let s = &mut self.degraded;
                if s.rounds == 0 {
                    s.since_ms = v.round_start_ms;
                    s.entries.clear();
                }
                s.rounds += 1;
                s.other = 0;
                if s.entries.len() < policy.degraded_rounds.max(1) as usize {
                    s.entries.push(entry(v, "round", v.note.clone()));
                }
                let degraded: Vec<&RegionEvidence> = v
                    .regions
                    .iter()
                    .filter(|e| e.state == RegionState::Degraded && !placement::junk_only(e))
                    .collect();
                let names: Vec<String> = degraded.iter().map(|e| e.region.clone()).collect();
                let sig = degraded
                    .iter()
                    .map(|e| {
                        let steps: Vec<&str> = e.slow.iter().map(|s| s.step.as_str()).collect();
                        format!("{}:{}", e.region, steps.join("+"))
                    })
                    .collect::<Vec<_>>()
                    .join(",");
                let changed = sig != s.sig;
                s.sig = sig;
                let summary = summary::performance(&degraded, s.since_ms);
                let (rounds, timeline) = (s.rounds, s.entries.clone());
                if self.is_open(kind, "") {
                    if changed {
                        self.update(
                            changes,
                            kind,
                            "",
                            entry(v, "round", v.note.clone()),
                            Some(summary),
                            Some(names),
                        );
                    }
                } else if rounds >= policy.degraded_rounds.max(1) {
                    let step = degraded
                        .iter()
                        .flat_map(|e| e.slow.first())
                        .next()
                        .map(|s| s.step.clone());
                    self.open(
                        changes,
                        v,
                        kind,
                        String::new(),
                        Severity::Warning,
                        names,
                        step,
                        None,
                        summary,
                        timeline,
                    );
                }
            }
            _ => {
                let s = &mut self.degraded;
                s.rounds = 0;
                s.other += 1;
                s.sig = v.verdict.as_str().to_string();
                let other = s.other;
                if self.is_open(kind, "") {
                    let need = policy.resolve_rounds.max(1);
                    if other >= need {
                        let note =
                            format!("resolved after {other} rounds not degraded; {}", v.note);
                        self.resolve(changes, kind, "", entry(v, "resolved", note));
                    } else {
                        let note =
                            format!("not degraded ({other} of {need} to resolve); {}", v.note);
                        self.update(changes, kind, "", entry(v, "round", note), None, None);
                    }
                }
            }
        }
    }

    fn authentication(&mut self, v: &Verdict, policy: &Policy, changes: &mut Vec<IncidentChange>) {
        let kind = IncidentKind::Authentication;
        let mut drifts = Vec::new();
        let mut seen_any = false;
        for e in &v.regions {
            let Some(now) = &e.auth else { continue };
            seen_any = true;
            if let Some(good) = self.auth_good.get(&e.region) {
                let d = drift(&e.region, good, now);
                if !d.is_empty() {
                    drifts.extend(d);
                    continue;
                }
            }
            self.auth_good.insert(e.region.clone(), now.clone());
        }
        if !drifts.is_empty() {
            self.auth_clean = 0;
            let sig = drifts
                .iter()
                .map(|d| format!("{}:{}:{}", d.region, d.what, d.to))
                .collect::<Vec<_>>()
                .join(",");
            let changed = sig != self.auth_sig;
            self.auth_sig = sig;
            let mut regions: Vec<String> = drifts.iter().map(|d| d.region.clone()).collect();
            regions.dedup();
            let note: Vec<String> = drifts
                .iter()
                .map(|d| format!("{} {} {} → {}", d.region, d.what, d.from, d.to))
                .collect();
            let note = format!("authentication drift: {}", note.join("; "));
            if self.is_open(kind, "") {
                if changed {
                    let since = self.open[&(kind, String::new())]
                        .timeline
                        .first()
                        .map_or(v.round_start_ms, |e| e.at_ms);
                    let summary = summary::authentication(&drifts, since);
                    self.update(
                        changes,
                        kind,
                        "",
                        entry(v, "round", note),
                        Some(summary),
                        Some(regions),
                    );
                }
            } else {
                let summary = summary::authentication(&drifts, v.round_start_ms);
                let step = Some(drifts[0].what.clone());
                let timeline = vec![entry(v, "opened", note)];
                self.open(
                    changes,
                    v,
                    kind,
                    String::new(),
                    Severity::Warning,
                    regions,
                    step,
                    None,
                    summary,
                    timeline,
                );
            }
        } else if seen_any {
            self.auth_clean += 1;
            self.auth_sig.clear();
            let clean = self.auth_clean;
            if self.is_open(kind, "") {
                let need = policy.resolve_rounds.max(1);
                if clean >= need {
                    let note =
                        format!("authentication results back to known-good for {clean} rounds");
                    self.resolve(changes, kind, "", entry(v, "resolved", note));
                } else {
                    let note = format!("no drift ({clean} of {need} to resolve)");
                    self.update(changes, kind, "", entry(v, "round", note), None, None);
                }
            }
        }
    }

    fn certificates(&mut self, v: &Verdict, min_days: u32, changes: &mut Vec<IncidentChange>) {
        let kind = IncidentKind::Certificate;
        let mut seen: BTreeMap<String, (&CertSeen, Vec<String>)> = BTreeMap::new();
        for e in &v.regions {
            for c in &e.certs {
                let (_, regions) = seen.entry(c.key()).or_insert((c, Vec::new()));
                if !regions.contains(&e.region) {
                    regions.push(e.region.clone());
                }
            }
        }
        let open_keys: Vec<String> = self
            .open
            .keys()
            .filter(|(k, _)| *k == kind)
            .map(|(_, key)| key.clone())
            .collect();
        for key in open_keys {
            let endpoint = key.split('|').next().unwrap_or("");
            let renewed = seen.values().find(|(c, _)| {
                c.endpoint == endpoint && c.key() != key && c.days_left >= i64::from(min_days)
            });
            if let Some((c, _)) = renewed {
                let note = format!(
                    "{} now presents {} valid until {} ({} days left)",
                    c.endpoint, c.subject, c.not_after, c.days_left
                );
                self.resolve(changes, kind, &key, entry(v, "resolved", note));
            }
        }
        for (key, (c, regions)) in seen {
            if c.days_left >= i64::from(min_days)
                || self.certs_seen.contains(&key)
                || self.is_open(kind, &key)
            {
                continue;
            }
            self.certs_seen.insert(key.clone());
            let summary = summary::certificate(c, min_days, &regions);
            let note = format!(
                "{} certificate of {} has {} days left",
                c.protocol, c.endpoint, c.days_left
            );
            let timeline = vec![entry(v, "opened", note)];
            let step = Some(format!("{}.tls", c.protocol));
            self.open(
                changes,
                v,
                kind,
                key,
                Severity::Info,
                regions,
                step,
                Some("tls".into()),
                summary,
                timeline,
            );
        }
    }
}

impl IncidentBook {
    /// Resolves `kind` incidents of regions the check no longer has.
    fn drop_removed_regions(
        &mut self,
        kind: IncidentKind,
        v: &Verdict,
        changes: &mut Vec<IncidentChange>,
    ) {
        let gone: Vec<String> = self
            .open
            .keys()
            .filter(|(k, key)| *k == kind && !v.regions.iter().any(|e| e.region == *key))
            .map(|(_, key)| key.clone())
            .collect();
        for key in gone {
            let note = format!("{key} is no longer one of the check's regions");
            self.resolve(changes, kind, &key, entry(v, "resolved", note));
        }
    }

    fn coverage(&mut self, v: &Verdict, policy: &Policy, changes: &mut Vec<IncidentChange>) {
        let kind = IncidentKind::Coverage;
        self.drop_removed_regions(kind, v, changes);
        for e in &v.regions {
            let key = e.region.clone();
            let open = self.is_open(kind, &key);
            if e.state != RegionState::Missing {
                self.blind.remove(&key);
                if open {
                    let by = e.agent.as_deref().unwrap_or("an agent");
                    let note = format!("{key} reports again ({by}, round {})", v.round);
                    self.resolve(changes, kind, &key, entry(v, "resolved", note));
                }
                continue;
            }
            if e.agents_connected.is_none() {
                // A round the coordinator could not watch (decided for a time
                // it was down, or before its agents could reconnect): it
                // neither counts toward coverage nor ends the streak.
                continue;
            }
            let (rounds, was) = self.blind.get(&key).copied().unwrap_or((0, None));
            let rounds = rounds + 1;
            self.blind.insert(key.clone(), (rounds, e.agents_connected));
            let detail = e
                .detail
                .clone()
                .unwrap_or_else(|| format!("no report from {key}"));
            let summary = summary::coverage(&key, &detail, rounds, e.agents_connected);
            if open {
                if was != e.agents_connected {
                    let note = format!("still blind: {detail}");
                    self.update(
                        changes,
                        kind,
                        &key,
                        entry(v, "round", note),
                        Some(summary),
                        None,
                    );
                }
            } else if e.agents_connected == Some(0) || rounds >= policy.coverage_rounds.max(1) {
                let timeline = vec![entry(v, "opened", detail)];
                self.open(
                    changes,
                    v,
                    kind,
                    key.clone(),
                    policy.coverage_severity,
                    vec![key],
                    None,
                    None,
                    summary,
                    timeline,
                );
            }
        }
    }

    fn clock(&mut self, v: &Verdict, policy: &Policy, changes: &mut Vec<IncidentChange>) {
        let kind = IncidentKind::Clock;
        self.drop_removed_regions(kind, v, changes);
        let max = i64::try_from(policy.clock_skew_max.as_millis()).unwrap_or(i64::MAX);
        for e in &v.regions {
            let (Some(skew), Some(agent)) = (e.clock_skew_ms, e.agent.as_deref()) else {
                continue;
            };
            let key = e.region.clone();
            let open = self.is_open(kind, &key);
            let summary = summary::clock(&key, agent, skew, policy.clock_skew_max);
            if skew.abs() > max {
                let note = format!("agent {agent} clock off by {skew} ms");
                if !open {
                    let timeline = vec![entry(v, "opened", note)];
                    self.open(
                        changes,
                        v,
                        kind,
                        key.clone(),
                        policy.clock_severity,
                        vec![key],
                        None,
                        None,
                        summary,
                        timeline,
                    );
                }
            } else if open {
                let note = format!("agent {agent} clock within the bound ({skew} ms)");
                self.resolve(changes, kind, &key, entry(v, "resolved", note));
            }
        }
    }
}

/// How strong an alignment is, to tell a weaker one.
fn rank(a: Alignment) -> u8 {
    match a {
        Alignment::Strict => 2,
        Alignment::Relaxed => 1,
        Alignment::None => 0,
    }
}

fn alignment_name(a: Alignment) -> &'static str {
    match a {
        Alignment::Strict => "strict",
        Alignment::Relaxed => "relaxed",
        Alignment::None => "none",
    }
}

/// True for `pass` (also `pass (...)` with a comment).
fn passes(result: Option<&str>) -> bool {
    result
        .and_then(|r| r.split_whitespace().next())
        .is_some_and(|w| w.eq_ignore_ascii_case("pass"))
}

/// What got worse from `good` to `now` in one region.
fn drift(region: &str, good: &AuthSnapshot, now: &AuthSnapshot) -> Vec<Drift> {
    let mut out = Vec::new();
    for (what, g, n) in [
        ("spf", &good.spf, &now.spf),
        ("dkim", &good.dkim, &now.dkim),
        ("dmarc", &good.dmarc, &now.dmarc),
    ] {
        if passes(g.as_deref()) && !passes(n.as_deref()) {
            out.push(Drift {
                region: region.to_string(),
                what: what.to_string(),
                from: "pass".into(),
                to: n.clone().unwrap_or_else(|| "none".into()),
            });
        }
    }
    for (what, g, n) in [
        ("dkim alignment", good.dkim_alignment, now.dkim_alignment),
        ("spf alignment", good.spf_alignment, now.spf_alignment),
    ] {
        if rank(n) < rank(g) {
            out.push(Drift {
                region: region.to_string(),
                what: what.to_string(),
                from: alignment_name(g).into(),
                to: alignment_name(n).into(),
            });
        }
    }
    out
}
