//! The judge: turns each round's per-region reports into a [`Verdict`],
//! keeps learned baselines, and opens, updates and resolves incidents.
//!
//! Layers:
//! - [`model`]: the data (verdicts, evidence, incidents, alert events).
//! - `verdict.rs`, `baseline.rs`, `incident.rs`, `advice.rs`, `summary.rs`:
//!   the rules, pure and deterministic (no clock, no I/O), behind
//!   [`CheckJudge`].
//! - [`config`]: `[incidents]` and `[baselines]` in `coordinator.toml`.
//! - `run.rs`: the task that feeds stored reports in, decides rounds when
//!   every region has reported or the deadline passed, stores verdicts and
//!   incidents, and hands alert events to [`crate::alerts`].
//!
//! A round flows through [`CheckJudge::judge`] in this order: each region's
//! evidence (`verdict.rs`, against the baselines as they were before the
//! round), the verdict, then learning from the round's delivered reports
//! (`baseline.rs`), then incidents (`incident.rs`, driven by the verdict
//! alone so a restart can replay stored verdicts).

pub mod advice;
pub mod baseline;
pub mod config;
pub mod incident;
pub mod model;
pub mod run;
pub mod summary;
pub mod verdict;

pub use model::*;

use baseline::Baselines;
use incident::IncidentBook;
use serde_json::Value;
use std::collections::BTreeMap;

/// Judges one check, round after round. Pure state: the caller owns the
/// clock (`now_ms`) and storage.
#[derive(Debug)]
pub struct CheckJudge {
    check_id: String,
    regions: Vec<String>,
    policy: Policy,
    /// Static thresholds from the check's table, by wire name (`smtp.auth`,
    /// `rtt`, `delivery`), in milliseconds.
    static_ms: BTreeMap<String, f64>,
    /// The check's own `cert_min_days`, else the policy's.
    cert_min_days: u32,
    baselines: Baselines,
    /// Per region: `round_start_ms` of the first round of its current
    /// streak of deferrals (absent when it is not in one).
    deferred_since: BTreeMap<String, i64>,
    /// Per region: `round_start_ms` of the last round it reported.
    last_report_ms: BTreeMap<String, i64>,
    incidents: IncidentBook,
}

/// The check table's static thresholds (unparseable ones are skipped: the
/// config was validated before it reached the judge).
fn static_thresholds(table: &Value) -> BTreeMap<String, f64> {
    let Some(map) = table.get("thresholds").and_then(Value::as_object) else {
        return BTreeMap::new();
    };
    map.iter()
        .filter_map(|(k, v)| {
            let d = mailloop_common::config::duration_value(v).ok()?;
            Some((k.clone(), d.as_secs_f64() * 1000.0))
        })
        .collect()
}

fn cert_min_days(table: &Value, policy: &Policy) -> u32 {
    table
        .get("cert_min_days")
        .and_then(Value::as_u64)
        .and_then(|d| u32::try_from(d).ok())
        .unwrap_or(policy.cert_min_days)
}

fn sorted(regions: &[String]) -> Vec<String> {
    let mut r = regions.to_vec();
    r.sort();
    r.dedup();
    r
}

impl CheckJudge {
    /// A judge for a check (`table`: its probe table, for static thresholds).
    pub fn new(check_id: &str, regions: &[String], policy: Policy, table: &Value) -> CheckJudge {
        CheckJudge {
            check_id: check_id.to_string(),
            regions: sorted(regions),
            static_ms: static_thresholds(table),
            cert_min_days: cert_min_days(table, &policy),
            policy,
            baselines: Baselines::default(),
            deferred_since: BTreeMap::new(),
            last_report_ms: BTreeMap::new(),
            incidents: IncidentBook::new(check_id),
        }
    }

    /// The check changed (regions, thresholds, quorum): keep what was learned.
    pub fn reconfigure(&mut self, regions: &[String], policy: Policy, table: &Value) {
        self.regions = sorted(regions);
        self.static_ms = static_thresholds(table);
        self.cert_min_days = cert_min_days(table, &policy);
        self.policy = policy;
    }

    /// Warm the baselines with a stored report (start-up), oldest first.
    /// Only delivered reports teach, as in [`CheckJudge::judge`].
    pub fn learn(&mut self, report: &RegionReport) {
        if report.report.outcome == mailloop_common::Outcome::Failed {
            return;
        }
        for (step, ms) in verdict::timings(&report.report) {
            self.baselines
                .add(&self.policy.baselines, &report.region, &step, ms);
        }
    }

    /// After a restart: the check's recent verdicts (oldest first) and its
    /// incidents still open or acknowledged, so streaks and dedup carry on.
    /// Baselines are not in verdicts: warm them with [`CheckJudge::learn`].
    pub fn restore(&mut self, recent: &[Verdict], open: &[Incident]) {
        self.deferred_since.clear();
        for v in recent {
            for e in &v.regions {
                if e.state != RegionState::Missing {
                    self.last_report_ms
                        .insert(e.region.clone(), v.round_start_ms);
                }
                match (e.state, e.deferred_since_ms) {
                    (_, Some(since)) => {
                        self.deferred_since.insert(e.region.clone(), since);
                    }
                    (RegionState::Missing, None) => {}
                    (_, None) => {
                        self.deferred_since.remove(&e.region);
                    }
                }
            }
        }
        self.incidents
            .restore(recent, open, &self.policy, self.cert_min_days);
    }

    /// Judges one round without knowing the agents (see [`CheckJudge::judge_with`]).
    pub fn judge(
        &mut self,
        round: u64,
        round_start_ms: i64,
        reports: &[RegionReport],
        now_ms: i64,
    ) -> (Verdict, Vec<IncidentChange>) {
        self.judge_with(round, round_start_ms, reports, &BTreeMap::new(), now_ms)
    }

    /// Judges one round. `reports`: at most one per region (the caller
    /// keeps the first stored). `agents`: each region's agents as the
    /// coordinator sees them now (a region absent from it: not known), for
    /// coverage and clock incidents and the `detail` of a missing region.
    /// Returns the verdict and what it did to incidents; also learns from
    /// the round's delivered reports.
    pub fn judge_with(
        &mut self,
        round: u64,
        round_start_ms: i64,
        reports: &[RegionReport],
        agents: &BTreeMap<String, Vec<AgentSeen>>,
        now_ms: i64,
    ) -> (Verdict, Vec<IncidentChange>) {
        let quorum = verdict::quorum(self.policy.quorum, self.regions.len());
        let mut evidence = Vec::with_capacity(self.regions.len());
        for region in &self.regions {
            let report = reports.iter().find(|r| &r.region == region);
            let cx = verdict::RegionContext {
                policy: &self.policy,
                baselines: &self.baselines,
                static_ms: &self.static_ms,
                deferred_since_ms: self.deferred_since.get(region).copied(),
                round_start_ms,
            };
            let mut ev = verdict::region_evidence(region, report, &cx);
            let known = agents.get(region);
            ev.agents_connected = known.map(|a| a.iter().filter(|a| a.connected).count() as u32);
            ev.clock_skew_ms = report.and_then(|r| {
                known?
                    .iter()
                    .find(|a| a.name == r.agent)
                    .and_then(|a| a.clock_skew_ms)
            });
            ev.detail = match ev.state {
                RegionState::Missing => Some(summary::missing_detail(
                    region,
                    self.last_report_ms.get(region).copied(),
                    known.map(Vec::as_slice),
                )),
                RegionState::Failed => Some(format!("fails {}", summary::failure_text(&ev))),
                RegionState::Deferred => Some(format!(
                    "deferred {} (inside the grace window)",
                    summary::failure_text(&ev)
                )),
                RegionState::Degraded => Some(verdict::degraded_why(&ev)),
                RegionState::Ok => None,
            };
            if report.is_some() {
                self.last_report_ms.insert(region.clone(), round_start_ms);
            }
            match (ev.deferred_since_ms, ev.state) {
                (Some(since), _) => {
                    self.deferred_since.insert(region.clone(), since);
                }
                // No report: the streak neither grows nor ends.
                (None, RegionState::Missing) => {}
                (None, _) => {
                    self.deferred_since.remove(region);
                }
            }
            evidence.push(ev);
        }
        let (kind, note) = verdict::decide(&evidence, quorum, &self.policy);
        let verdict = Verdict {
            check_id: self.check_id.clone(),
            round,
            round_start_ms,
            decided_at_ms: now_ms,
            verdict: kind,
            quorum,
            regions: evidence,
            note,
        };
        for r in reports {
            // The first report of each of the check's regions, as judged.
            let first = reports
                .iter()
                .find(|x| x.region == r.region)
                .is_some_and(|x| std::ptr::eq(x, r));
            if first && self.regions.contains(&r.region) {
                self.learn(r);
            }
        }
        let changes = self
            .incidents
            .on_round(&verdict, &self.policy, self.cert_min_days);
        (verdict, changes)
    }

    /// Every learned baseline of this check, sorted by region and step.
    pub fn baselines(&self) -> Vec<BaselineView> {
        self.baselines.views(&self.policy.baselines, |step| {
            self.static_ms.get(step).copied()
        })
    }

    /// The incidents this judge believes open (the runtime's copy, with
    /// ids and acknowledgements, is the one to show).
    pub fn open_incidents(&self) -> Vec<Incident> {
        self.incidents.open_incidents().cloned().collect()
    }

    pub fn check_id(&self) -> &str {
        &self.check_id
    }

    pub fn regions(&self) -> &[String] {
        &self.regions
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }
}
