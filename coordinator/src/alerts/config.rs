//! `[[alert]]` channels in `coordinator.toml`, validated whole.

use mailloop_common::config::ConfigIssue;
use serde_json::Value;

/// One validated `[[alert]]` channel.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelConfig {
    pub name: String,
}

/// Validates the `alert` array (absent: no channels), pushing every bad
/// key onto `issues` with its path (`alert[1].url`).
pub fn parse(
    raw: Option<&Value>,
    env: &dyn Fn(&str) -> Option<String>,
    issues: &mut Vec<ConfigIssue>,
) -> Vec<ChannelConfig> {
    let _ = (raw, env, issues);
    Vec::new()
}
