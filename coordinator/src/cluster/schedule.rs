//! Scheduling: which agent runs which check, and when.
//!
//! Pure functions over plain data, so every rule is a one-line test:
//! - **Rounds.** Round `k` of a check starts at unix-epoch millisecond
//!   `k * interval_ms + phase_ms`, in every region at once, so regions can
//!   be compared round by round. The phase is a stable hash of the check id
//!   modulo the interval: different checks spread across the interval, and
//!   the same check keeps its phase across coordinator restarts.
//! - **Placement.** In each of a check's regions exactly one connected agent
//!   runs it, chosen by rendezvous (highest-random-weight) hashing of
//!   (check, agent). The choice is deterministic, and when an agent leaves
//!   only its own checks move, each to the next-highest agent.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A stable 64-bit hash (FNV-1a over the parts, separated, then a
/// SplitMix64 finalizer for avalanche). Stable across builds and restarts,
/// unlike `std`'s randomly keyed hasher.
pub fn stable_hash(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0xff)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Where in the interval a check's rounds start.
pub fn phase_ms(check_id: &str, interval_ms: u64) -> u64 {
    stable_hash(&[check_id]) % interval_ms.max(1)
}

/// The round in progress at `now_ms` (the last one that started).
pub fn round_at(now_ms: u64, interval_ms: u64, phase_ms: u64) -> u64 {
    now_ms.saturating_sub(phase_ms) / interval_ms.max(1)
}

/// When round `k` starts (saturating: a round number from a confused
/// agent must not overflow).
pub fn round_start_ms(round: u64, interval_ms: u64, phase_ms: u64) -> u64 {
    round.saturating_mul(interval_ms).saturating_add(phase_ms)
}

/// Where a reported round sits against the coordinator's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoundFit {
    /// Its start is within the window of now: judged as usual.
    InWindow,
    /// It starts more than the window after now (a clock ahead, or a bug).
    Early { by_ms: i64 },
    /// It started more than the window before now (a clock behind, or a
    /// report replayed long after its round).
    Late { by_ms: i64 },
}

impl RoundFit {
    /// `early`, `late`, or None in the window: what storage keeps.
    pub fn label(self) -> Option<&'static str> {
        match self {
            RoundFit::InWindow => None,
            RoundFit::Early { .. } => Some("early"),
            RoundFit::Late { .. } => Some("late"),
        }
    }
}

/// Whether round `round` starts within `window_ms` of `now_ms` (either way).
/// Ingest uses one interval plus the probe's budget as the window: a
/// report is sent at most that long after its round started.
pub fn round_fit(
    round: u64,
    interval_ms: u64,
    phase_ms: u64,
    window_ms: u64,
    now_ms: i64,
) -> RoundFit {
    let start = round_start_ms(round, interval_ms, phase_ms).min(i64::MAX as u64) as i64;
    let window = window_ms.min(i64::MAX as u64) as i64;
    let offset = start.saturating_sub(now_ms);
    if offset > window {
        RoundFit::Early { by_ms: offset }
    } else if -offset > window {
        RoundFit::Late { by_ms: -offset }
    } else {
        RoundFit::InWindow
    }
}

/// The agent that runs `check_id` among `candidates` (rendezvous hashing;
/// ties, vanishingly rare, go to the smaller name).
pub fn pick_agent<'a>(
    check_id: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|a| (stable_hash(&[check_id, a]), a))
        .max_by(|(ha, a), (hb, b)| ha.cmp(hb).then_with(|| b.cmp(a)))
        .map(|(_, a)| a)
}

/// One check as handed to one agent (the wire form is made at the gRPC edge).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub check_id: String,
    pub revision: u64,
    /// The probe's `[[check]]` table as JSON, passwords as references.
    pub check_json: Arc<str>,
    pub interval_ms: u64,
    pub phase_ms: u64,
}

/// A check as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct Schedulable {
    pub assignment: Arc<Assignment>,
    pub regions: Vec<String>,
}

/// Every agent's assignments at one moment.
#[derive(Debug, Default)]
pub struct AssignmentMap {
    /// Increases with every recomputation.
    pub epoch: u64,
    by_agent: HashMap<String, BTreeMap<String, Arc<Assignment>>>,
}

impl AssignmentMap {
    /// The checks `agent` should run now (empty if none).
    pub fn for_agent(&self, agent: &str) -> Option<&BTreeMap<String, Arc<Assignment>>> {
        self.by_agent.get(agent)
    }
}

/// Places every check in each of its regions on one connected agent.
/// `connected` lists the connected agents of each region.
pub fn assign(
    epoch: u64,
    checks: &[Schedulable],
    connected: &BTreeMap<String, Vec<String>>,
) -> AssignmentMap {
    let mut by_agent: HashMap<String, BTreeMap<String, Arc<Assignment>>> = HashMap::new();
    for agents in connected.values() {
        for a in agents {
            by_agent.entry(a.clone()).or_default();
        }
    }
    for check in checks {
        for region in &check.regions {
            let Some(agents) = connected.get(region) else {
                continue;
            };
            if let Some(agent) = pick_agent(
                &check.assignment.check_id,
                agents.iter().map(String::as_str),
            ) {
                by_agent
                    .entry(agent.to_string())
                    .or_default()
                    .insert(check.assignment.check_id.clone(), check.assignment.clone());
            }
        }
    }
    AssignmentMap { epoch, by_agent }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(id: &str, regions: &[&str]) -> Schedulable {
        Schedulable {
            assignment: Arc::new(Assignment {
                check_id: id.into(),
                revision: 1,
                check_json: Arc::from("{}"),
                interval_ms: 60_000,
                phase_ms: phase_ms(id, 60_000),
            }),
            regions: regions.iter().map(|r| r.to_string()).collect(),
        }
    }

    fn connected(list: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        list.iter()
            .map(|(r, a)| (r.to_string(), a.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    fn owners(map: &AssignmentMap, check: &str, agents: &[&str]) -> Vec<String> {
        agents
            .iter()
            .filter(|a| map.for_agent(a).is_some_and(|m| m.contains_key(check)))
            .map(|a| a.to_string())
            .collect()
    }

    #[test]
    fn hashes_are_stable_across_builds() {
        // Changing these would move every check's phase and owner on upgrade.
        assert_eq!(stable_hash(&["corp"]), stable_hash(&["corp"]));
        assert_ne!(stable_hash(&["ab", "c"]), stable_hash(&["a", "bc"]));
        assert_eq!(phase_ms("corp", 300_000), stable_hash(&["corp"]) % 300_000);
    }

    #[test]
    fn rounds_start_at_k_interval_plus_phase() {
        assert_eq!(round_start_ms(10, 60_000, 1_234), 601_234);
        assert_eq!(round_at(601_234, 60_000, 1_234), 10);
        assert_eq!(round_at(601_233, 60_000, 1_234), 9);
    }

    #[test]
    fn a_round_fits_within_one_window_either_side_of_the_clock() {
        // 60 s rounds, phase 5 s, window 80 s: round 10 starts at 605 s.
        let fit = |now_s: i64| round_fit(10, 60_000, 5_000, 80_000, now_s * 1000);
        assert_eq!(fit(605), RoundFit::InWindow);
        assert_eq!(
            fit(685),
            RoundFit::InWindow,
            "a whole window late is still in"
        );
        assert_eq!(fit(686), RoundFit::Late { by_ms: 81_000 });
        assert_eq!(
            fit(525),
            RoundFit::InWindow,
            "a whole window early is still in"
        );
        assert_eq!(fit(524), RoundFit::Early { by_ms: 81_000 });
        assert_eq!(
            round_fit(u64::MAX / 2, 60_000, 0, 80_000, 0).label(),
            Some("early")
        );
        assert_eq!(RoundFit::InWindow.label(), None);
    }

    #[test]
    fn phases_spread_across_the_interval() {
        let phases: Vec<u64> = (0..100)
            .map(|i| phase_ms(&format!("check-{i}"), 300_000) / 30_000)
            .collect();
        // All ten 30-second slots of a 5-minute interval get some checks.
        for slot in 0..10 {
            assert!(phases.contains(&slot), "slot {slot} empty: {phases:?}");
        }
    }

    #[test]
    fn one_agent_per_region_runs_each_check() {
        let c = connected(&[("eu", &["eu-1", "eu-2", "eu-3"]), ("us", &["us-1"])]);
        let map = assign(1, &[check("corp", &["eu", "us"])], &c);
        assert_eq!(owners(&map, "corp", &["eu-1", "eu-2", "eu-3"]).len(), 1);
        assert_eq!(owners(&map, "corp", &["us-1"]), ["us-1"]);
    }

    #[test]
    fn a_check_moves_only_when_its_agent_leaves() {
        let checks: Vec<_> = (0..50).map(|i| check(&format!("c{i}"), &["eu"])).collect();
        let all = ["eu-1", "eu-2", "eu-3"];
        let before = assign(1, &checks, &connected(&[("eu", &all)]));
        let after = assign(2, &checks, &connected(&[("eu", &["eu-1", "eu-3"])]));
        for c in &checks {
            let id = &c.assignment.check_id;
            let was = owners(&before, id, &all);
            let now = owners(&after, id, &all);
            if was == ["eu-2"] {
                assert_eq!(now.len(), 1, "{id} must move to a remaining agent");
            } else {
                assert_eq!(was, now, "{id} must stay where it was");
            }
        }
        // Every agent gets some share of 50 checks.
        for a in all {
            assert!(!before.for_agent(a).unwrap().is_empty(), "{a} got nothing");
        }
    }

    #[test]
    fn no_agent_in_a_region_means_nobody_runs_it_there() {
        let map = assign(
            1,
            &[check("corp", &["ap"])],
            &connected(&[("eu", &["eu-1"])]),
        );
        assert!(map.for_agent("eu-1").unwrap().is_empty());
    }
}
