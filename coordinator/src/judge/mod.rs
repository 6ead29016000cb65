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

pub mod config;
pub mod model;

pub use model::*;

use serde_json::Value;

/// Judges one check, round after round. Pure state: the caller owns the
/// clock (`now_ms`) and storage.
#[derive(Debug)]
pub struct CheckJudge {
    check_id: String,
    regions: Vec<String>,
    policy: Policy,
}

impl CheckJudge {
    /// A judge for a check (`table`: its probe table, for static thresholds).
    pub fn new(check_id: &str, regions: &[String], policy: Policy, table: &Value) -> CheckJudge {
        let _ = table;
        CheckJudge {
            check_id: check_id.to_string(),
            regions: regions.to_vec(),
            policy,
        }
    }

    /// The check changed (regions, thresholds, quorum): keep what was learned.
    pub fn reconfigure(&mut self, regions: &[String], policy: Policy, table: &Value) {
        let _ = table;
        self.regions = regions.to_vec();
        self.policy = policy;
    }

    /// Warm the baselines with a stored report (start-up), oldest first.
    pub fn learn(&mut self, report: &RegionReport) {
        let _ = report;
    }

    /// After a restart: the check's recent verdicts (oldest first) and its
    /// incidents still open or acknowledged, so streaks and dedup carry on.
    pub fn restore(&mut self, recent: &[Verdict], open: &[Incident]) {
        let _ = (recent, open);
    }

    /// Judges one round. `reports`: at most one per region (the caller
    /// keeps the first stored). Returns the verdict and what it did to
    /// incidents; also learns from the round's delivered reports.
    pub fn judge(
        &mut self,
        round: u64,
        round_start_ms: i64,
        reports: &[RegionReport],
        now_ms: i64,
    ) -> (Verdict, Vec<IncidentChange>) {
        let _ = reports;
        let verdict = Verdict {
            check_id: self.check_id.clone(),
            round,
            round_start_ms,
            decided_at_ms: now_ms,
            verdict: VerdictKind::Unknown,
            quorum: 1,
            regions: Vec::new(),
            note: "not judged yet".into(),
        };
        (verdict, Vec::new())
    }

    /// Every learned baseline of this check, sorted by region and step.
    pub fn baselines(&self) -> Vec<BaselineView> {
        Vec::new()
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
