//! The assignment map, kept up to date one change at a time.
//!
//! [`schedule::assign`] computes the whole map from scratch: every check in
//! every region against every connected agent of that region. Doing that on
//! each join makes a connect storm quadratic (N joins × a map of N agents),
//! and publishing the whole map wakes every agent's stream on every join.
//! [`Placement`] holds the same map and applies one change at a time,
//! touching only what the rendezvous rule says can move:
//!
//! - an agent **joins** region R: for each check of R, its weight for the
//!   newcomer is compared with the current owner's (kept beside it); only
//!   the checks the newcomer wins move, and only their old owners and the
//!   newcomer are touched. O(checks of R).
//! - an agent **leaves** R: only its own checks move, each to the highest
//!   remaining agent of R. O(its checks × agents of R).
//! - a check **changes**: its owner in a region it already had stays (the
//!   owner depends on the agents only); new regions get a rendezvous pick,
//!   dropped regions lose it. O(its regions), plus agents of new regions.
//!
//! Each operation returns the agents whose assignments changed, so the hub
//! wakes only their streams. The result is always what
//! [`schedule::assign`] would compute for the same checks and agents (a
//! unit test below replays random changes against it).

use crate::cluster::schedule::{self, Assignment};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// Where a check stands in one region: its owner and the owner's weight.
#[derive(Debug, Clone)]
struct Owner {
    agent: String,
    weight: u64,
}

#[derive(Debug, Default)]
struct Region {
    /// Live agents (connected somewhere, not revoked).
    agents: BTreeSet<String>,
    /// Live checks that run in this region, with their owner (None: no
    /// live agent here).
    checks: HashMap<String, Option<Owner>>,
}

#[derive(Debug)]
struct Placed {
    assignment: Arc<Assignment>,
    regions: BTreeSet<String>,
}

/// Every live agent's checks, maintained incrementally.
#[derive(Debug, Default)]
pub struct Placement {
    regions: HashMap<String, Region>,
    checks: HashMap<String, Placed>,
    /// Live agent → its region.
    live: HashMap<String, String>,
    by_agent: HashMap<String, BTreeMap<String, Arc<Assignment>>>,
}

/// Whether `a` (with weight `wa`) beats `b` (weight `wb`) for a check:
/// the higher weight, ties to the smaller name, as [`schedule::pick_agent`].
fn beats(wa: u64, a: &str, wb: u64, b: &str) -> bool {
    (wa, std::cmp::Reverse(a)) > (wb, std::cmp::Reverse(b))
}

fn weight(check: &str, agent: &str) -> u64 {
    schedule::stable_hash(&[check, agent])
}

/// The rendezvous winner for `check` among `agents`.
fn pick(check: &str, agents: &BTreeSet<String>) -> Option<Owner> {
    schedule::pick_agent(check, agents.iter().map(String::as_str)).map(|a| Owner {
        agent: a.to_string(),
        weight: weight(check, a),
    })
}

impl Placement {
    /// The checks `agent` runs now (None: not a live agent).
    pub fn for_agent(&self, agent: &str) -> Option<&BTreeMap<String, Arc<Assignment>>> {
        self.by_agent.get(agent)
    }

    /// The agent that runs `check` in `region` now.
    pub fn owner(&self, check: &str, region: &str) -> Option<&str> {
        self.regions
            .get(region)?
            .checks
            .get(check)?
            .as_ref()
            .map(|o| o.agent.as_str())
    }

    /// Whether `agent` is live (and where).
    pub fn region_of(&self, agent: &str) -> Option<&str> {
        self.live.get(agent).map(String::as_str)
    }

    /// `agent` becomes live in `region` (or moves there). Pushes every
    /// agent whose checks changed onto `touched`.
    pub fn join(&mut self, agent: &str, region: &str, touched: &mut Vec<String>) {
        match self.live.get(agent) {
            Some(r) if r == region => return,
            Some(_) => self.leave(agent, touched),
            None => {}
        }
        self.live.insert(agent.to_string(), region.to_string());
        touched.push(agent.to_string());
        let r = self.regions.entry(region.to_string()).or_default();
        r.agents.insert(agent.to_string());
        let mut taken = Vec::new();
        for (check, owner) in r.checks.iter_mut() {
            let w = weight(check, agent);
            if owner
                .as_ref()
                .is_some_and(|o| !beats(w, agent, o.weight, &o.agent))
            {
                continue;
            }
            let new = Owner {
                agent: agent.to_string(),
                weight: w,
            };
            if let Some(old) = owner.replace(new) {
                if let Some(theirs) = self.by_agent.get_mut(&old.agent) {
                    theirs.remove(check);
                }
                touched.push(old.agent);
            }
            taken.push(check.clone());
        }
        let mine = self.by_agent.entry(agent.to_string()).or_default();
        for check in taken {
            if let Some(placed) = self.checks.get(&check) {
                mine.insert(check, placed.assignment.clone());
            }
        }
    }

    /// `agent` is no longer live: its checks move to the next-highest
    /// agent of its region.
    pub fn leave(&mut self, agent: &str, touched: &mut Vec<String>) {
        let Some(region) = self.live.remove(agent) else {
            return;
        };
        let held = self.by_agent.remove(agent).unwrap_or_default();
        touched.push(agent.to_string());
        let Some(r) = self.regions.get_mut(&region) else {
            return;
        };
        r.agents.remove(agent);
        for check in held.keys() {
            let Some(slot) = r.checks.get_mut(check) else {
                continue;
            };
            *slot = pick(check, &r.agents);
            if let (Some(o), Some(placed)) = (slot.as_ref(), self.checks.get(check)) {
                self.by_agent
                    .entry(o.agent.clone())
                    .or_default()
                    .insert(check.clone(), placed.assignment.clone());
                touched.push(o.agent.clone());
            }
        }
        if r.agents.is_empty() && r.checks.is_empty() {
            self.regions.remove(&region);
        }
    }

    /// Installs check `id` (None: deleted): placed in each of its regions,
    /// removed from the regions it left.
    pub fn put_check(
        &mut self,
        id: &str,
        check: Option<(Arc<Assignment>, &[String])>,
        touched: &mut Vec<String>,
    ) {
        let mut old = self.checks.remove(id);
        // A change that keeps the check's regions (the usual edit) keeps
        // their set: a check of a 10,000-region fleet is not copied
        // region by region on every change.
        let same_regions = match (&check, &old) {
            (Some((_, regions)), Some(o)) => o.regions.iter().eq(regions.iter()),
            _ => false,
        };
        let wanted: BTreeSet<String> = match (&check, old.as_mut()) {
            (_, Some(o)) if same_regions => std::mem::take(&mut o.regions),
            (Some((_, regions)), _) => regions.iter().cloned().collect(),
            (None, _) => BTreeSet::new(),
        };
        // Regions the check left.
        if let Some(old) = old.as_ref().filter(|_| !same_regions) {
            for region in old.regions.difference(&wanted) {
                let Some(r) = self.regions.get_mut(region) else {
                    continue;
                };
                if let Some(Some(o)) = r.checks.remove(id) {
                    if let Some(theirs) = self.by_agent.get_mut(&o.agent) {
                        theirs.remove(id);
                    }
                    touched.push(o.agent);
                }
                if r.agents.is_empty() && r.checks.is_empty() {
                    self.regions.remove(region);
                }
            }
        }
        let Some((assignment, _)) = check else {
            return;
        };
        for region in &wanted {
            // Looked up before anything is allocated: on a change, the
            // region, its entry for the check and the owner's entry exist.
            if !self.regions.contains_key(region) {
                self.regions.insert(region.clone(), Region::default());
            }
            let Some(r) = self.regions.get_mut(region) else {
                continue;
            };
            if !r.checks.contains_key(id) {
                let first = pick(id, &r.agents);
                r.checks.insert(id.to_string(), first);
            }
            let Some(Some(o)) = r.checks.get(id) else {
                continue;
            };
            if !self.by_agent.contains_key(&o.agent) {
                self.by_agent.insert(o.agent.clone(), BTreeMap::new());
            }
            let Some(theirs) = self.by_agent.get_mut(&o.agent) else {
                continue;
            };
            match theirs.get_mut(id) {
                Some(held) if Arc::ptr_eq(held, &assignment) || **held == *assignment => {}
                Some(held) => {
                    *held = assignment.clone();
                    touched.push(o.agent.clone());
                }
                None => {
                    theirs.insert(id.to_string(), assignment.clone());
                    touched.push(o.agent.clone());
                }
            }
        }
        self.checks.insert(
            id.to_string(),
            Placed {
                assignment,
                regions: wanted,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::schedule::{Schedulable, assign};

    fn assignment(id: &str, revision: u64) -> Arc<Assignment> {
        Arc::new(Assignment {
            check_id: id.into(),
            revision,
            check_json: Arc::from("{}"),
            interval_ms: 60_000,
            phase_ms: schedule::phase_ms(id, 60_000),
        })
    }

    /// The map of `p` equals the full recomputation over the same state.
    fn agrees(p: &Placement, checks: &BTreeMap<String, (u64, Vec<String>)>) {
        let all: Vec<Schedulable> = checks
            .iter()
            .map(|(id, (rev, regions))| Schedulable {
                assignment: assignment(id, *rev),
                regions: regions.clone(),
            })
            .collect();
        let mut connected: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (a, r) in &p.live {
            connected.entry(r.clone()).or_default().push(a.clone());
        }
        let full = assign(0, &all, &connected);
        for a in p.live.keys() {
            let want: BTreeMap<&String, u64> = full
                .for_agent(a)
                .map(|m| m.iter().map(|(k, v)| (k, v.revision)).collect())
                .unwrap_or_default();
            let got: BTreeMap<&String, u64> = p
                .for_agent(a)
                .map(|m| m.iter().map(|(k, v)| (k, v.revision)).collect())
                .unwrap_or_default();
            assert_eq!(got, want, "agent {a}");
        }
        for a in p.by_agent.keys() {
            assert!(p.live.contains_key(a), "{a} holds checks but is not live");
        }
    }

    /// A small deterministic generator (no dependency for one test).
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    #[test]
    fn random_changes_match_the_full_recomputation() {
        let regions = ["eu", "us", "ap"];
        let mut rng = Rng(7);
        let mut p = Placement::default();
        let mut checks: BTreeMap<String, (u64, Vec<String>)> = BTreeMap::new();
        let mut rev = 0;
        for step in 0..3_000 {
            let mut touched = Vec::new();
            match rng.below(4) {
                0 => {
                    let a = format!("a{}", rng.below(12));
                    let r = regions[rng.below(3) as usize];
                    p.join(&a, r, &mut touched);
                }
                1 => {
                    let a = format!("a{}", rng.below(12));
                    p.leave(&a, &mut touched);
                }
                2 => {
                    let id = format!("c{}", rng.below(20));
                    rev += 1;
                    let rs: Vec<String> = regions
                        .iter()
                        .filter(|_| rng.below(2) == 0)
                        .map(|r| r.to_string())
                        .collect();
                    p.put_check(&id, Some((assignment(&id, rev), &rs)), &mut touched);
                    checks.insert(id, (rev, rs));
                }
                _ => {
                    let id = format!("c{}", rng.below(20));
                    p.put_check(&id, None, &mut touched);
                    checks.remove(&id);
                }
            }
            if step % 7 == 0 {
                agrees(&p, &checks);
            }
        }
        agrees(&p, &checks);
    }

    #[test]
    fn a_join_touches_only_the_newcomer_and_the_owners_it_takes_from() {
        let mut p = Placement::default();
        let mut t = Vec::new();
        // One check per region, as the load generator sets it up: joins
        // in other regions touch nobody else.
        let regions: Vec<String> = (0..100).map(|i| format!("r{i}")).collect();
        p.put_check("bench", Some((assignment("bench", 1), &regions)), &mut t);
        for i in 0..100 {
            let mut touched = Vec::new();
            p.join(&format!("a{i}"), &format!("r{i}"), &mut touched);
            assert_eq!(touched, [format!("a{i}")]);
            assert!(p.for_agent(&format!("a{i}")).unwrap().contains_key("bench"));
        }
        // A second agent in r0 takes the check only if it outweighs a0.
        let mut touched = Vec::new();
        p.join("b0", "r0", &mut touched);
        let b_wins = beats(weight("bench", "b0"), "b0", weight("bench", "a0"), "a0");
        assert_eq!(touched.len(), if b_wins { 2 } else { 1 });
        assert_eq!(p.owner("bench", "r0"), Some(if b_wins { "b0" } else { "a0" }));
    }

    #[test]
    fn a_changed_check_touches_its_owners_only_when_it_differs() {
        let mut p = Placement::default();
        let mut t = Vec::new();
        p.join("a", "eu", &mut t);
        p.join("b", "us", &mut t);
        let eu = vec!["eu".to_string()];
        let mut touched = Vec::new();
        p.put_check("c", Some((assignment("c", 1), &eu)), &mut touched);
        assert_eq!(touched, ["a"]);
        let mut touched = Vec::new();
        p.put_check("c", Some((assignment("c", 1), &eu)), &mut touched);
        assert!(touched.is_empty(), "the same check again moves nothing");
        let us = vec!["us".to_string()];
        let mut touched = Vec::new();
        p.put_check("c", Some((assignment("c", 2), &us)), &mut touched);
        touched.sort();
        assert_eq!(touched, ["a", "b"]);
        assert!(p.for_agent("a").unwrap().is_empty());
        assert_eq!(p.owner("c", "us"), Some("b"));
    }
}
