//! Reading one TOML table of a config file, the way every mailloop config is
//! validated: the probe's `[[check]]`, the agent's `agent.toml` and the
//! coordinator's `coordinator.toml` all use it, so a key is read, refused and
//! reported with the same words everywhere.
//!
//! A [`Table`] remembers which keys were asked for, so whatever is left over
//! can be reported as `unknown key` by [`Table::finish`]. Every getter records
//! a [`ConfigIssue`] with the key's full path (`check[0].smtp.port`) when the
//! value is bad and returns `None`; the caller keeps going, so one pass
//! collects every bad key of a file. The getters' return values follow one
//! convention:
//!
//! - `Option<T>` for keys with a default: `Some(value or default)`, or `None`
//!   when the value was present but bad (issue recorded);
//! - `Option<Option<T>>` for optional keys without a default: `Some(None)`
//!   when absent, `None` when present but bad.
//!
//! The config tree is a `serde_json::Value` (TOML and environment overrides
//! are merged into one before validation).

use super::{ConfigIssue, duration_value};
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::ops::RangeInclusive;
use std::time::Duration;

/// Somewhere issues are collected: `issues.issue("server.data_dir", "required")`.
pub trait IssueList {
    /// Records one bad key.
    fn issue(&mut self, path: impl Into<String>, message: impl Into<String>);
}

impl IssueList for Vec<ConfigIssue> {
    fn issue(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.push(ConfigIssue { path: path.into(), message: message.into() });
    }
}

/// A table being read: the keys never asked for are reported as unknown by
/// [`Table::finish`].
#[derive(Debug)]
pub struct Table<'a> {
    path: String,
    /// None: the table is absent and reads as empty.
    map: Option<&'a Map<String, Value>>,
    used: HashSet<&'static str>,
}

impl<'a> Table<'a> {
    /// A table at `path` (`"agent"`, `"check[0].smtp"`; empty for the root).
    pub fn new(path: impl Into<String>, map: &'a Map<String, Value>) -> Table<'a> {
        Table { path: path.into(), map: Some(map), used: HashSet::new() }
    }

    /// A table that is not in the file: every key reads as absent.
    pub fn empty(path: impl Into<String>) -> Table<'a> {
        Table { path: path.into(), map: None, used: HashSet::new() }
    }

    /// The table at `path` if `value` is one. Absent: `None`, silently (the
    /// caller decides whether that is an issue); present but not a table:
    /// `None` with the issue "expected a table".
    pub fn optional(issues: &mut Vec<ConfigIssue>, path: &str, value: Option<&'a Value>) -> Option<Table<'a>> {
        match value {
            Some(Value::Object(map)) => Some(Table::new(path, map)),
            Some(_) => {
                issues.issue(path, "expected a table");
                None
            }
            None => None,
        }
    }

    /// Like [`Table::optional`], but an absent table reads as an empty one.
    pub fn or_empty(issues: &mut Vec<ConfigIssue>, path: &str, value: Option<&'a Value>) -> Option<Table<'a>> {
        match value {
            None => Some(Table::empty(path)),
            _ => Table::optional(issues, path, value),
        }
    }

    /// Where this table is (`check[0].smtp`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The full path of one of its keys (`check[0].smtp.port`).
    pub fn path_of(&self, key: &str) -> String {
        if self.path.is_empty() { key.to_string() } else { format!("{}.{key}", self.path) }
    }

    /// Every key and value as written, for tables whose keys are data
    /// (`[check.thresholds]`); reading them this way does not mark them used.
    pub fn entries(&self) -> impl Iterator<Item = (&'a String, &'a Value)> + use<'a> {
        self.map.into_iter().flatten()
    }

    /// True if `key` is present but not a table (a sub-table written wrong,
    /// already reported by [`Table::sub`]).
    pub fn is_non_table(&self, key: &str) -> bool {
        self.map.and_then(|m| m.get(key)).is_some_and(|v| !v.is_object())
    }

    /// The raw value of `key`, which is now known.
    pub fn get(&mut self, key: &'static str) -> Option<&'a Value> {
        self.used.insert(key);
        self.map.and_then(|m| m.get(key))
    }

    /// Reports every key nobody asked for as `unknown key`; false if any was.
    pub fn finish(self, issues: &mut Vec<ConfigIssue>) -> bool {
        let mut ok = true;
        for key in self.map.into_iter().flat_map(|m| m.keys()) {
            if !self.used.contains(key.as_str()) {
                issues.issue(self.path_of(key), "unknown key");
                ok = false;
            }
        }
        ok
    }

    /// The sub-table `key`; `required`: its absence is an issue
    /// ("required table is missing").
    pub fn sub(&mut self, issues: &mut Vec<ConfigIssue>, key: &'static str, required: bool) -> Option<Table<'a>> {
        let value = self.get(key);
        if value.is_none() && required {
            issues.issue(self.path_of(key), "required table is missing");
        }
        Table::optional(issues, &self.path_of(key), value)
    }

    /// A non-empty string; `Some(None)` when absent.
    pub fn string(&mut self, issues: &mut Vec<ConfigIssue>, key: &'static str) -> Option<Option<String>> {
        match self.get(key) {
            None => Some(None),
            Some(Value::String(s)) if s.trim().is_empty() => {
                issues.issue(self.path_of(key), "must not be empty");
                None
            }
            Some(Value::String(s)) => Some(Some(s.clone())),
            Some(other) => {
                issues.issue(self.path_of(key), format!("expected a string, found {other}"));
                None
            }
        }
    }

    /// A non-empty string that must be there (absent: "required").
    pub fn required_string(&mut self, issues: &mut Vec<ConfigIssue>, key: &'static str) -> Option<String> {
        match self.string(issues, key)? {
            Some(s) => Some(s),
            None => {
                issues.issue(self.path_of(key), "required");
                None
            }
        }
    }

    /// `true` or `false`.
    pub fn flag(&mut self, issues: &mut Vec<ConfigIssue>, key: &'static str, default: bool) -> Option<bool> {
        match self.get(key) {
            None => Some(default),
            Some(Value::Bool(b)) => Some(*b),
            Some(other) => {
                issues.issue(self.path_of(key), format!("expected true or false, found {other}"));
                None
            }
        }
    }

    /// A whole number within `range`.
    pub fn number(
        &mut self,
        issues: &mut Vec<ConfigIssue>,
        key: &'static str,
        default: u64,
        range: RangeInclusive<u64>,
    ) -> Option<u64> {
        match self.get(key) {
            None => Some(default),
            Some(Value::Number(n)) if n.as_u64().is_some_and(|n| range.contains(&n)) => n.as_u64(),
            Some(other) => {
                let (min, max) = (range.start(), range.end());
                issues.issue(self.path_of(key), format!("{other} is not a whole number from {min} to {max}"));
                None
            }
        }
    }

    /// A TCP port, 1 to 65535, as a number or a numeric string (environment
    /// overrides arrive as strings); `Some(None)` when absent.
    pub fn port(&mut self, issues: &mut Vec<ConfigIssue>, key: &'static str) -> Option<Option<u16>> {
        let raw = match self.get(key) {
            None => return Some(None),
            Some(raw) => raw,
        };
        let n = match raw {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.parse::<i64>().ok(),
            _ => None,
        };
        match n {
            Some(n) if (1..=65535).contains(&n) => Some(Some(n as u16)),
            _ => {
                issues.issue(self.path_of(key), format!("{raw} is not a port (1-65535)"));
                None
            }
        }
    }

    /// A duration greater than zero ([`duration_value`]).
    pub fn duration(&mut self, issues: &mut Vec<ConfigIssue>, key: &'static str, default: Duration) -> Option<Duration> {
        self.duration_at_least(issues, key, default, Duration::ZERO)
    }

    /// A duration of at least `min` ("... is shorter than {min}").
    pub fn duration_at_least(
        &mut self,
        issues: &mut Vec<ConfigIssue>,
        key: &'static str,
        default: Duration,
        min: Duration,
    ) -> Option<Duration> {
        match self.get(key) {
            None => Some(default),
            Some(raw) => match duration_value(raw) {
                Ok(d) if d < min => {
                    issues.issue(self.path_of(key), format!("{raw} is shorter than {}", humantime::format_duration(min)));
                    None
                }
                Ok(d) => Some(d),
                Err(m) => {
                    issues.issue(self.path_of(key), m);
                    None
                }
            },
        }
    }

    /// A duration where `"0s"` is allowed and means "off".
    pub fn duration_or_zero(
        &mut self,
        issues: &mut Vec<ConfigIssue>,
        key: &'static str,
        default: Duration,
    ) -> Option<Duration> {
        match self.get(key) {
            Some(Value::String(s)) if humantime::parse_duration(s).is_ok_and(|d| d.is_zero()) => Some(Duration::ZERO),
            _ => self.duration(issues, key, default),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn messages(issues: &[ConfigIssue]) -> Vec<String> {
        issues.iter().map(|i| format!("{}: {}", i.path, i.message)).collect()
    }

    #[test]
    fn every_getter_names_the_full_path_and_leftovers_are_unknown() {
        let v = json!({"s": " ", "f": 1, "n": 7, "p": "0", "d": "0s", "z": "0s", "extra": true});
        let mut issues = Vec::new();
        let mut t = Table::optional(&mut issues, "a.b", Some(&v)).unwrap();
        assert_eq!(t.string(&mut issues, "s"), None);
        assert_eq!(t.flag(&mut issues, "f", false), None);
        assert_eq!(t.number(&mut issues, "n", 1, 1..=5), None);
        assert_eq!(t.port(&mut issues, "p"), None);
        assert_eq!(t.duration(&mut issues, "d", Duration::from_secs(1)), None);
        assert_eq!(t.duration_or_zero(&mut issues, "z", Duration::from_secs(1)), Some(Duration::ZERO));
        assert_eq!(t.required_string(&mut issues, "missing"), None);
        assert!(!t.finish(&mut issues));
        assert_eq!(
            messages(&issues),
            [
                "a.b.s: must not be empty",
                "a.b.f: expected true or false, found 1",
                "a.b.n: 7 is not a whole number from 1 to 5",
                "a.b.p: \"0\" is not a port (1-65535)",
                "a.b.d: must be greater than zero",
                "a.b.missing: required",
                "a.b.extra: unknown key",
            ]
        );
    }

    #[test]
    fn absent_keys_give_defaults_and_absent_tables_read_empty() {
        let mut issues = Vec::new();
        let mut t = Table::or_empty(&mut issues, "server", None).unwrap();
        assert_eq!(t.flag(&mut issues, "f", true), Some(true));
        assert_eq!(t.string(&mut issues, "s"), Some(None));
        assert_eq!(t.duration_at_least(&mut issues, "d", Duration::from_secs(9), Duration::from_secs(1)), Some(Duration::from_secs(9)));
        assert!(t.sub(&mut issues, "smtp", false).is_none());
        assert!(t.finish(&mut issues));
        assert!(issues.is_empty(), "{issues:?}");
        assert!(Table::optional(&mut issues, "x", Some(&json!(3))).is_none());
        assert_eq!(messages(&issues), ["x: expected a table"]);
    }
}
