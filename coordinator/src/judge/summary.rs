//! Incident summaries: deterministic, specific text from the evidence.
//!
//! Every summary says what broke, where (which regions), since when (the
//! start of the first round of the streak, `HH:MM UTC`), the last good round
//! when it is known, how it differs from the baseline for performance, and
//! the likely cause and first check from [`super::advice`]. The same
//! evidence always gives the same text: no clock, no randomness, regions in
//! name order.

use super::advice::{Advice, advice, auth_drift_advice, slow_advice};
use super::model::{AgentSeen, CertSeen, RegionEvidence};
use mailloop_common::{FailureClass, StepName};

/// `14:05 UTC` for a moment in milliseconds since the epoch.
pub fn fmt_time(ms: i64) -> String {
    match chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms) {
        Some(t) => t.format("%H:%M UTC").to_string(),
        None => format!("{ms} ms"),
    }
}

/// `0.4 ms`, `40 ms`, `2.4 s`: what a person reads.
pub fn fmt_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else if ms >= 10.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

/// The first line of `s`, cut to `max` characters with an ellipsis.
pub fn short_text(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or("").trim();
    if line.chars().count() <= max {
        line.to_string()
    } else {
        let cut: String = line.chars().take(max.saturating_sub(1)).collect();
        format!("{}…", cut.trim_end())
    }
}

/// `Likely cause: …. Check: ….`
fn advice_text(adv: &Advice) -> String {
    format!("Likely cause: {}. Check: {}.", adv.cause, adv.check)
}

/// `a`, `a and b`, `a, b and c`.
fn and_list(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// How a failure reads: `at smtp.rcpt_to with 550 5.1.1 'User unknown' (permanent)`.
pub fn failure_text(e: &RegionEvidence) -> String {
    let step = e.step.as_deref().unwrap_or("an unknown step");
    let class = e.class.as_deref().unwrap_or("unclassified");
    let mut with = Vec::new();
    if let Some(c) = e.code {
        with.push(c.to_string());
    }
    if let Some(x) = &e.enhanced {
        with.push(x.clone());
    }
    if let Some(t) = &e.text {
        let t = strip_reply_prefix(t, e.code, e.enhanced.as_deref());
        if !t.is_empty() {
            with.push(format!("'{}'", short_text(t, 60)));
        }
    }
    if with.is_empty() {
        format!("at {step} ({class})")
    } else {
        format!("at {step} with {} ({class})", with.join(" "))
    }
}

/// The server text without a leading `550 5.1.1 ` that repeats the code.
fn strip_reply_prefix<'a>(text: &'a str, code: Option<u16>, enhanced: Option<&str>) -> &'a str {
    let mut t = text.trim();
    if let Some(c) = code {
        t = t
            .strip_prefix(&c.to_string())
            .map(|r| r.trim_start_matches(['-', ' ']))
            .unwrap_or(t);
    }
    if let Some(x) = enhanced {
        t = t.strip_prefix(x).map(str::trim_start).unwrap_or(t);
    }
    t
}

/// The advice for a region's failure (parsed back from its wire names).
fn failure_advice(e: &RegionEvidence) -> Option<Advice> {
    let step: StepName = e.step.as_deref()?.parse().ok()?;
    let class = class_from(e.class.as_deref()?)?;
    Some(advice(step, class))
}

fn class_from(s: &str) -> Option<FailureClass> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
}

/// Failing regions grouped by how they fail (same step, class, code),
/// biggest group first, ties in region order.
fn groups<'a>(failed: &[&'a RegionEvidence]) -> Vec<Vec<&'a RegionEvidence>> {
    let mut out: Vec<Vec<&RegionEvidence>> = Vec::new();
    for e in failed {
        let same = |g: &Vec<&RegionEvidence>| {
            let h = g[0];
            (
                h.step.as_deref(),
                h.class.as_deref(),
                h.code,
                h.enhanced.as_deref(),
            ) == (
                e.step.as_deref(),
                e.class.as_deref(),
                e.code,
                e.enhanced.as_deref(),
            )
        };
        match out.iter_mut().find(|g| same(g)) {
            Some(g) => g.push(e),
            None => out.push(vec![e]),
        }
    }
    out.sort_by_key(|g| std::cmp::Reverse(g.len()));
    out
}

fn last_good(last_good_ms: Option<i64>) -> String {
    match last_good_ms {
        Some(ms) => format!(" Last good round {}.", fmt_time(ms)),
        None => " No good round seen before it.".to_string(),
    }
}

/// The outage summary. `total`: the check's region count.
pub fn outage(
    total: usize,
    failed: &[&RegionEvidence],
    since_ms: i64,
    last_good_ms: Option<i64>,
) -> String {
    let groups = groups(failed);
    let Some(first) = groups.first() else {
        return format!(
            "Since {} the check is down.{}",
            fmt_time(since_ms),
            last_good(last_good_ms)
        );
    };
    let mut parts = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        let names: Vec<&str> = g.iter().map(|e| e.region.as_str()).collect();
        let who = if g.len() == total && total > 1 {
            format!("all {total} regions")
        } else if i == 0 {
            format!("{} ({} of {total} regions)", and_list(&names), g.len())
        } else {
            and_list(&names)
        };
        let verb = if g.len() == 1 { "fails" } else { "fail" };
        parts.push(format!("{who} {verb} {}", failure_text(g[0])));
    }
    let mut s = format!("Since {} {}.", fmt_time(since_ms), parts.join("; "));
    s.push_str(&last_good(last_good_ms));
    if let Some(adv) = failure_advice(first[0]) {
        s.push(' ');
        s.push_str(&advice_text(&adv));
    }
    s
}

/// The regional (transit) summary for one region.
pub fn regional(
    e: &RegionEvidence,
    others_delivering: usize,
    since_ms: i64,
    last_good_ms: Option<i64>,
) -> String {
    let r = &e.region;
    let mut s = format!(
        "Transit trouble from {r}, not an outage: since {} {r} fails {} while {others_delivering} other region{} deliver{}.",
        fmt_time(since_ms),
        failure_text(e),
        if others_delivering == 1 { "" } else { "s" },
        if others_delivering == 1 { "s" } else { "" },
    );
    s.push_str(&last_good(last_good_ms));
    if let Some(adv) = failure_advice(e) {
        s.push_str(&format!(
            " Likely cause, on the path from {r}: {}. Check first the network path from {r}, then: {}.",
            adv.cause, adv.check
        ));
    }
    s
}

/// The performance summary from the degraded regions' evidence.
pub fn performance(degraded: &[&RegionEvidence], since_ms: i64) -> String {
    let mut what = Vec::new();
    for e in degraded {
        for slow in &e.slow {
            what.push(match slow.baseline_ms {
                Some(base) => format!(
                    "{} took {} in {}, baseline {} (threshold {})",
                    slow.step,
                    fmt_ms(slow.ms),
                    e.region,
                    fmt_ms(base),
                    fmt_ms(slow.threshold_ms)
                ),
                None => format!(
                    "{} took {} in {}, over the static threshold {}",
                    slow.step,
                    fmt_ms(slow.ms),
                    e.region,
                    fmt_ms(slow.threshold_ms)
                ),
            });
        }
        if e.slow.is_empty() {
            let reasons: Vec<String> = e.reasons.iter().map(|r| short_text(r, 80)).collect();
            let reasons = if reasons.is_empty() {
                "reported degraded".to_string()
            } else {
                reasons.join(", ")
            };
            what.push(format!("{} is degraded: {reasons}", e.region));
        }
    }
    let mut s = format!(
        "Since {} mail is delivered but degraded: {}.",
        fmt_time(since_ms),
        what.join("; ")
    );
    let first_slow = degraded.iter().flat_map(|e| e.slow.first()).next();
    match first_slow {
        Some(slow) => {
            s.push(' ');
            s.push_str(&advice_text(&slow_advice(&slow.step)));
        }
        None => s.push_str(
            " Likely cause: an expectation the agent checks is not met (see the reasons). Check: what each reason names (a certificate, an SPF/DKIM/DMARC expectation, the probe cleanup).",
        ),
    }
    s
}

/// One drifted result: what (`dkim`, `spf alignment`), from, to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    pub region: String,
    pub what: String,
    pub from: String,
    pub to: String,
}

/// The authentication drift summary.
pub fn authentication(drifts: &[Drift], since_ms: i64) -> String {
    let changes: Vec<String> = drifts
        .iter()
        .map(|d| format!("{} {} {} → {}", d.region, d.what, d.from, d.to))
        .collect();
    let mut s = format!(
        "Since {} authentication results drifted from their last known-good values: {}. It can mean a breach or a changed sending path.",
        fmt_time(since_ms),
        changes.join("; ")
    );
    if let Some(d) = drifts.first() {
        s.push(' ');
        s.push_str(&advice_text(&auth_drift_advice(&d.what)));
    }
    s
}

/// The certificate warning.
pub fn certificate(cert: &CertSeen, min_days: u32, regions: &[String]) -> String {
    format!(
        "The {} certificate of {} ({}) expires {} with {} day{} left, fewer than {min_days}; seen from {}. Likely cause: its automatic renewal stopped or the renewed certificate was not deployed. Check: renew it and reload the {} server.",
        cert.protocol,
        cert.endpoint,
        cert.subject,
        cert.not_after,
        cert.days_left,
        if cert.days_left == 1 { "" } else { "s" },
        and_list(&regions.iter().map(String::as_str).collect::<Vec<_>>()),
        cert.protocol.to_uppercase(),
    )
}

/// What a region's agents were doing, one clause per agent:
/// `agent us-1 disconnected 14:04 UTC`, `agent us-2 connected, last seen 14:06 UTC`.
pub fn agents_text(region: &str, agents: &[AgentSeen]) -> String {
    if agents.is_empty() {
        return format!("no agent is registered in {region}");
    }
    let parts: Vec<String> = agents
        .iter()
        .map(|a| {
            let n = &a.name;
            match (a.connected, a.disconnected_at_ms, a.last_seen_ms) {
                (true, _, Some(seen)) => {
                    format!("agent {n} connected, last seen {}", fmt_time(seen))
                }
                (true, _, None) => format!("agent {n} connected"),
                (false, Some(gone), _) => format!("agent {n} disconnected {}", fmt_time(gone)),
                (false, None, Some(seen)) => {
                    format!("agent {n} not connected, last seen {}", fmt_time(seen))
                }
                (false, None, None) => format!("agent {n} never connected"),
            }
        })
        .collect();
    parts.join(", ")
}

/// Why a region has no report:
/// `no report from us-east since 14:05 UTC (agent us-1 disconnected 14:04 UTC)`.
/// `last_report_ms`: the start of the last round it reported;
/// `agents`: the region's agents, when the caller knows them.
pub fn missing_detail(
    region: &str,
    last_report_ms: Option<i64>,
    agents: Option<&[AgentSeen]>,
) -> String {
    let mut s = match last_report_ms {
        Some(ms) => format!("no report from {region} since {}", fmt_time(ms)),
        None => format!("no report from {region} yet"),
    };
    if let Some(agents) = agents {
        s.push_str(&format!(" ({})", agents_text(region, agents)));
    }
    s
}

/// The coverage summary: the monitor cannot see `region`.
pub fn coverage(region: &str, detail: &str, rounds: u32, connected: Option<u32>) -> String {
    let rounds = if rounds == 1 {
        "1 round".to_string()
    } else {
        format!("{rounds} rounds in a row")
    };
    let check = match connected {
        Some(0) => format!(
            "Likely cause: no agent of {region} is running or can reach the coordinator. Check: `mailloopctl agents list`, start or restart an agent of {region}, its logs and its token."
        ),
        _ => format!(
            "Likely cause: the agent of {region} is connected but its reports do not arrive or are refused for judging. Check: its logs (spool, report acks), its clock, and its connection to the gRPC port."
        ),
    };
    format!(
        "The monitor is blind in {region}: {detail}; {rounds} without a report. Mail from {region} is not being checked; unknown never counts as up. {check}"
    )
}

/// The clock summary for an agent whose clock is off.
pub fn clock(region: &str, agent: &str, skew_ms: i64, max: std::time::Duration) -> String {
    let way = if skew_ms > 0 { "ahead of" } else { "behind" };
    format!(
        "The clock of agent {agent} ({region}) is {} {way} the coordinator's, more than the {} allowed. Its rounds start at the wrong moments and its reports may be kept out of verdicts. Likely cause: time synchronisation stopped on its host. Check: NTP or chrony there (`timedatectl`, `chronyc tracking`).",
        fmt_ms(skew_ms.unsigned_abs() as f64),
        humantime::format_duration(max),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_times_read_well() {
        assert_eq!(fmt_ms(0.44), "0.4 ms");
        assert_eq!(fmt_ms(40.2), "40 ms");
        assert_eq!(fmt_ms(2400.0), "2.4 s");
        assert_eq!(fmt_time(0), "00:00 UTC");
        assert_eq!(short_text("abcdef", 4), "abc…");
        assert_eq!(
            strip_reply_prefix("550 5.1.1 User unknown", Some(550), Some("5.1.1")),
            "User unknown"
        );
        assert_eq!(and_list(&["a", "b", "c"]), "a, b and c");
    }
}
