//! `[incidents]` and `[baselines]` in `coordinator.toml`: the defaults every
//! check is judged by (a check may set its own `quorum`).
//!
//! Validated whole like the rest of the file: every bad key is pushed with
//! its path (`incidents.confirm_rounds`, `check[1].quorum`) and nothing
//! stops at the first one.

use super::model::{BaselineSettings, Policy, Quorum, Severity};
use mailloop_common::config::{ConfigIssue, duration_value};
use serde_json::{Map, Value};
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
                coverage_rounds: 3,
                coverage_severity: Severity::Warning,
                clock_skew_max: Duration::from_secs(30),
                clock_severity: Severity::Warning,
                placement_rounds: 2,
            },
            round_slack: Duration::from_secs(10),
        }
    }
}

impl JudgeSettings {
    /// The policy of one check: these defaults with the check's own quorum.
    pub fn policy_for(&self, quorum: Option<Quorum>) -> Policy {
        let mut p = self.policy.clone();
        if let Some(q) = quorum {
            p.quorum = q;
        }
        p
    }
}

impl JudgeSettings {
    /// What differs from `old`, one `key old -> new` per changed setting
    /// (`unchanged` if nothing does): the reload's log line.
    pub fn changes_from(&self, old: &JudgeSettings) -> String {
        let (o, n) = (&old.policy, &self.policy);
        let (ob, nb) = (&o.baselines, &n.baselines);
        let dur = |d: Duration| humantime::format_duration(d).to_string();
        let pairs = [
            (
                "incidents.quorum",
                quorum_value(o.quorum).to_string(),
                quorum_value(n.quorum).to_string(),
            ),
            (
                "incidents.confirm_rounds",
                o.confirm_rounds.to_string(),
                n.confirm_rounds.to_string(),
            ),
            (
                "incidents.transit_rounds",
                o.transit_rounds.to_string(),
                n.transit_rounds.to_string(),
            ),
            (
                "incidents.degraded_rounds",
                o.degraded_rounds.to_string(),
                n.degraded_rounds.to_string(),
            ),
            (
                "incidents.resolve_rounds",
                o.resolve_rounds.to_string(),
                n.resolve_rounds.to_string(),
            ),
            (
                "incidents.defer_grace",
                dur(o.defer_grace),
                dur(n.defer_grace),
            ),
            (
                "incidents.round_slack",
                dur(old.round_slack),
                dur(self.round_slack),
            ),
            (
                "incidents.coverage_rounds",
                o.coverage_rounds.to_string(),
                n.coverage_rounds.to_string(),
            ),
            (
                "incidents.coverage_severity",
                severity_name(o.coverage_severity).to_string(),
                severity_name(n.coverage_severity).to_string(),
            ),
            (
                "incidents.clock_skew",
                dur(o.clock_skew_max),
                dur(n.clock_skew_max),
            ),
            (
                "incidents.clock_severity",
                severity_name(o.clock_severity).to_string(),
                severity_name(n.clock_severity).to_string(),
            ),
            (
                "incidents.placement_rounds",
                o.placement_rounds.to_string(),
                n.placement_rounds.to_string(),
            ),
            (
                "baselines.window",
                ob.window.to_string(),
                nb.window.to_string(),
            ),
            (
                "baselines.min_samples",
                ob.min_samples.to_string(),
                nb.min_samples.to_string(),
            ),
            (
                "baselines.factor",
                ob.factor.to_string(),
                nb.factor.to_string(),
            ),
            (
                "baselines.floor",
                format!("{}ms", ob.floor_ms),
                format!("{}ms", nb.floor_ms),
            ),
        ];
        let changed: Vec<String> = pairs
            .into_iter()
            .filter(|(_, a, b)| a != b)
            .map(|(k, a, b)| format!("{k} {a} -> {b}"))
            .collect();
        if changed.is_empty() {
            "unchanged".into()
        } else {
            changed.join(", ")
        }
    }
}

/// Streak lengths (`confirm_rounds`, ...) outside this range are refused:
/// zero would open incidents before any evidence, more than 100 would never.
const ROUNDS: std::ops::RangeInclusive<u64> = 1..=100;

/// Validates `[incidents]` and `[baselines]` (either may be absent),
/// pushing every bad key onto `issues`.
pub fn parse(
    incidents: Option<&Value>,
    baselines: Option<&Value>,
    issues: &mut Vec<ConfigIssue>,
) -> JudgeSettings {
    let mut s = JudgeSettings::default();
    if let Some(mut t) = Keys::new("incidents", incidents, issues) {
        if let Some(raw) = t.take("quorum") {
            // The default for every check: no region count to check a count against yet.
            if let Some(q) = quorum("incidents.quorum", raw, None, issues) {
                s.policy.quorum = q;
            }
        }
        let p = &mut s.policy;
        t.rounds("confirm_rounds", &mut p.confirm_rounds, issues);
        t.rounds("transit_rounds", &mut p.transit_rounds, issues);
        t.rounds("degraded_rounds", &mut p.degraded_rounds, issues);
        t.rounds("resolve_rounds", &mut p.resolve_rounds, issues);
        t.duration("defer_grace", &mut p.defer_grace, Duration::ZERO, issues);
        t.duration("round_slack", &mut s.round_slack, Duration::ZERO, issues);
        let p = &mut s.policy;
        t.rounds("coverage_rounds", &mut p.coverage_rounds, issues);
        t.severity("coverage_severity", &mut p.coverage_severity, issues);
        t.duration(
            "clock_skew",
            &mut p.clock_skew_max,
            Duration::from_secs(1),
            issues,
        );
        t.severity("clock_severity", &mut p.clock_severity, issues);
        t.rounds("placement_rounds", &mut p.placement_rounds, issues);
        t.finish(issues);
    }
    if let Some(mut t) = Keys::new("baselines", baselines, issues) {
        let b = &mut s.policy.baselines;
        if let Some(n) = t.whole("window", 5..=10_000, issues) {
            b.window = n as usize;
        }
        if let Some(n) = t.whole("min_samples", 1..=10_000, issues) {
            b.min_samples = n as usize;
        }
        if let Some(raw) = t.take("factor") {
            match raw.as_f64() {
                Some(f) if f > 1.0 && f <= 100.0 => b.factor = f,
                _ => issues.push(issue(
                    "baselines.factor",
                    format!("{raw} is not a number above 1 (and at most 100), e.g. 3.0"),
                )),
            }
        }
        let mut floor = Duration::from_secs_f64(b.floor_ms / 1000.0);
        if t.duration("floor", &mut floor, Duration::ZERO, issues) {
            b.floor_ms = floor.as_secs_f64() * 1000.0;
        }
        t.finish(issues);
        if b.min_samples > b.window {
            issues.push(issue(
                "baselines.min_samples",
                format!(
                    "{} is more than window ({}): the learned threshold would never be used",
                    b.min_samples, b.window
                ),
            ));
        }
    }
    s
}

/// Reads a quorum: `"majority"`, a count of regions (`2`) or a fraction of
/// them (`0.5`). `regions`: how many regions the check runs in, when known,
/// so a count larger than that is refused (such a check could never be `down`).
pub fn quorum(
    path: &str,
    raw: &Value,
    regions: Option<usize>,
    issues: &mut Vec<ConfigIssue>,
) -> Option<Quorum> {
    let hint = "expected \"majority\", a count of regions (2) or a fraction of them (0.5)";
    let q = match raw {
        Value::String(s) if s == "majority" => Quorum::Majority,
        Value::Number(n) if n.is_u64() || n.is_i64() => match n.as_u64() {
            Some(c) if c >= 1 && c <= u32::MAX as u64 => Quorum::Count(c as u32),
            _ => {
                issues.push(issue(path, format!("{raw}: a count must be at least 1")));
                return None;
            }
        },
        Value::Number(n) => match n.as_f64() {
            Some(f) if f > 0.0 && f <= 1.0 => Quorum::Fraction(f),
            _ => {
                issues.push(issue(
                    path,
                    format!("{raw}: a fraction must be above 0 and at most 1"),
                ));
                return None;
            }
        },
        other => {
            issues.push(issue(path, format!("{other}: {hint}")));
            return None;
        }
    };
    if let (Quorum::Count(c), Some(n)) = (q, regions)
        && c as usize > n
    {
        issues.push(issue(
            path,
            format!("{c} is more than the check's {n} region(s): it could never be down"),
        ));
        return None;
    }
    Some(q)
}

/// A quorum as written in a config file or shown by the API.
pub fn quorum_value(q: Quorum) -> Value {
    match q {
        Quorum::Majority => Value::String("majority".into()),
        Quorum::Count(c) => Value::from(c),
        Quorum::Fraction(f) => Value::from(f),
    }
}

/// `critical`, `warning` or `info`.
pub fn severity_name(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "critical",
        Severity::Warning => "warning",
        Severity::Info => "info",
    }
}

fn issue(path: impl Into<String>, message: impl Into<String>) -> ConfigIssue {
    ConfigIssue {
        path: path.into(),
        message: message.into(),
    }
}

/// One table's keys; the ones never taken are unknown.
struct Keys<'a> {
    section: &'static str,
    map: &'a Map<String, Value>,
    taken: Vec<&'static str>,
}

impl<'a> Keys<'a> {
    fn new(
        section: &'static str,
        raw: Option<&'a Value>,
        issues: &mut Vec<ConfigIssue>,
    ) -> Option<Keys<'a>> {
        match raw? {
            Value::Object(map) => Some(Keys {
                section,
                map,
                taken: Vec::new(),
            }),
            other => {
                issues.push(issue(
                    section,
                    format!("expected a table ([{section}]), found {other}"),
                ));
                None
            }
        }
    }

    fn path(&self, key: &str) -> String {
        format!("{}.{key}", self.section)
    }

    fn take(&mut self, key: &'static str) -> Option<&'a Value> {
        self.taken.push(key);
        self.map.get(key)
    }

    fn whole(
        &mut self,
        key: &'static str,
        range: std::ops::RangeInclusive<u64>,
        issues: &mut Vec<ConfigIssue>,
    ) -> Option<u64> {
        let raw = self.take(key)?;
        match raw.as_u64() {
            Some(n) if range.contains(&n) => Some(n),
            _ => {
                issues.push(issue(
                    self.path(key),
                    format!(
                        "{raw} is not a whole number from {} to {}",
                        range.start(),
                        range.end()
                    ),
                ));
                None
            }
        }
    }

    fn rounds(&mut self, key: &'static str, into: &mut u32, issues: &mut Vec<ConfigIssue>) {
        if let Some(n) = self.whole(key, ROUNDS, issues) {
            *into = n as u32;
        }
    }

    fn severity(&mut self, key: &'static str, into: &mut Severity, issues: &mut Vec<ConfigIssue>) {
        let Some(raw) = self.take(key) else { return };
        match raw.as_str() {
            Some("critical") => *into = Severity::Critical,
            Some("warning") => *into = Severity::Warning,
            Some("info") => *into = Severity::Info,
            _ => issues.push(issue(
                self.path(key),
                format!("{raw}: expected \"critical\", \"warning\" or \"info\""),
            )),
        }
    }

    /// True if the key was present and good.
    fn duration(
        &mut self,
        key: &'static str,
        into: &mut Duration,
        min: Duration,
        issues: &mut Vec<ConfigIssue>,
    ) -> bool {
        let Some(raw) = self.take(key) else {
            return false;
        };
        match duration_value(raw) {
            Ok(d) if d >= min && d <= Duration::from_secs(86_400) => {
                *into = d;
                true
            }
            Ok(d) if d < min => {
                let min = humantime::format_duration(min);
                issues.push(issue(
                    self.path(key),
                    format!("{raw} is shorter than {min}"),
                ));
                false
            }
            Ok(_) => {
                issues.push(issue(self.path(key), format!("{raw} is longer than 24h")));
                false
            }
            Err(m) => {
                issues.push(issue(self.path(key), m));
                false
            }
        }
    }

    fn finish(self, issues: &mut Vec<ConfigIssue>) {
        for key in self.map.keys() {
            if !self.taken.contains(&key.as_str()) {
                issues.push(issue(self.path(key), "unknown key"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn paths(incidents: Value, baselines: Value) -> Vec<String> {
        let mut issues = Vec::new();
        parse(Some(&incidents), Some(&baselines), &mut issues);
        issues.into_iter().map(|i| i.path).collect()
    }

    #[test]
    fn absent_tables_give_the_defaults() {
        let mut issues = Vec::new();
        assert_eq!(parse(None, None, &mut issues), JudgeSettings::default());
        assert!(issues.is_empty());
    }

    #[test]
    fn every_key_is_read() {
        let mut issues = Vec::new();
        let s = parse(
            Some(
                &json!({"quorum": 0.5, "confirm_rounds": 3, "transit_rounds": 4, "degraded_rounds": 5,
                "resolve_rounds": 6, "defer_grace": "5m", "round_slack": "2s", "coverage_rounds": 4,
                "coverage_severity": "critical", "clock_skew": "1m", "clock_severity": "info"}),
            ),
            Some(&json!({"window": 50, "min_samples": 10, "factor": 2.5, "floor": "40ms"})),
            &mut issues,
        );
        assert!(issues.is_empty(), "{issues:?}");
        assert_eq!(s.policy.quorum, Quorum::Fraction(0.5));
        assert_eq!(
            (
                s.policy.confirm_rounds,
                s.policy.transit_rounds,
                s.policy.degraded_rounds,
                s.policy.resolve_rounds
            ),
            (3, 4, 5, 6)
        );
        assert_eq!(s.policy.defer_grace, Duration::from_secs(300));
        assert_eq!(s.round_slack, Duration::from_secs(2));
        assert_eq!(
            (s.policy.coverage_rounds, s.policy.coverage_severity),
            (4, Severity::Critical)
        );
        assert_eq!(
            (s.policy.clock_skew_max, s.policy.clock_severity),
            (Duration::from_secs(60), Severity::Info)
        );
        let b = &s.policy.baselines;
        assert_eq!(
            (b.window, b.min_samples, b.factor, b.floor_ms),
            (50, 10, 2.5, 40.0)
        );
    }

    #[test]
    fn every_bad_key_is_named_at_once() {
        assert_eq!(
            paths(
                json!({"quorum": "most", "confirm_rounds": 0, "resolve_rounds": 101, "defer_grace": "soon",
                    "coverage_severity": "loud", "clock_skew": "10ms", "colour": 1}),
                json!({"factor": 1.0, "window": 3, "floor": -1}),
            ),
            [
                "incidents.quorum",
                "incidents.confirm_rounds",
                "incidents.resolve_rounds",
                "incidents.defer_grace",
                "incidents.coverage_severity",
                "incidents.clock_skew",
                "incidents.colour",
                "baselines.window",
                "baselines.factor",
                "baselines.floor",
            ]
        );
    }

    #[test]
    fn changes_name_each_setting_that_moved() {
        let old = JudgeSettings::default();
        assert_eq!(old.changes_from(&old), "unchanged");
        let mut new = old.clone();
        new.policy.confirm_rounds = 1;
        new.policy.quorum = Quorum::Count(2);
        assert_eq!(
            new.changes_from(&old),
            "incidents.quorum \"majority\" -> 2, incidents.confirm_rounds 2 -> 1"
        );
    }

    #[test]
    fn quorum_forms() {
        let q = |v: Value, n| quorum("q", &v, n, &mut Vec::new());
        assert_eq!(q(json!("majority"), None), Some(Quorum::Majority));
        assert_eq!(q(json!(2), Some(3)), Some(Quorum::Count(2)));
        assert_eq!(q(json!(4), Some(3)), None, "more than the regions");
        assert_eq!(q(json!(0), None), None);
        assert_eq!(q(json!(1.0), None), Some(Quorum::Fraction(1.0)));
        assert_eq!(q(json!(0.0), None), None);
        assert_eq!(q(json!(1.5), None), None);
    }
}
