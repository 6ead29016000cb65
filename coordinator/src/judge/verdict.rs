//! One round's verdict: each region's state from its report, then the
//! check's verdict from the states.
//!
//! Region state, from that region's report:
//! - no report: `missing`;
//! - failed with class `deferred` or `rate_limited`: `deferred` while the
//!   region's current streak of deferrals started less than `defer_grace`
//!   ago (measured from the `round_start_ms` of the streak's first round;
//!   any other report ends the streak), `failed` after that;
//! - any other failure: `failed` (a `failed` report without a failure
//!   record, which the agent never sends, is `failed` too);
//! - delivered: `degraded` when the agent said so (its `reasons` are kept),
//!   when a step, `rtt` or `delivery` is over the check's static threshold,
//!   or a step or `rtt` is over its learned threshold (judged against the
//!   baseline as it was before this round); else `ok`.
//!
//! A step is reported once: as `static` when it exceeds the check's own
//! threshold, else as `learned` when it exceeds the learned one. Reports
//! from regions the check does not have are ignored.
//!
//! Verdict, with `quorum` the number of failing regions that make `down`
//! (never below 1, never above the number of regions, except that a check
//! without regions has quorum 1 and is always `unknown`):
//! `down` if failed ≥ quorum (even with others missing); else `unknown` if
//! fewer than quorum regions reported (never counted as up); else
//! `transit` if some regions failed; else `deferred`, `degraded`, `up`.

use super::baseline::Baselines;
use super::model::{
    AuthSnapshot, CertSeen, Policy, Quorum, RegionEvidence, RegionReport, RegionState, SlowStep,
    VerdictKind,
};
use super::summary::{fmt_ms, short_text};
use mailloop_common::{FailureClass, Outcome, ProbeReport};
use std::collections::BTreeMap;

/// Failing regions needed for `down` among `n` regions.
pub fn quorum(q: Quorum, n: usize) -> u32 {
    let n = n as u32;
    let want = match q {
        Quorum::Majority => n / 2 + 1,
        Quorum::Count(c) => c.min(n),
        Quorum::Fraction(f) => {
            let f = if f.is_finite() {
                f.clamp(0.0, 1.0)
            } else {
                1.0
            };
            ((f * n as f64).ceil() as u32).min(n)
        }
    };
    want.max(1)
}

/// What judging a region needs besides its report.
pub struct RegionContext<'a> {
    pub policy: &'a Policy,
    pub baselines: &'a Baselines,
    /// Static thresholds by wire name (`smtp.auth`, `rtt`, `delivery`), in ms.
    pub static_ms: &'a BTreeMap<String, f64>,
    /// Where this region's current streak of deferrals started, if it is in one.
    pub deferred_since_ms: Option<i64>,
    pub round_start_ms: i64,
}

/// One region's evidence (`report: None` is a missing region).
pub fn region_evidence(
    region: &str,
    report: Option<&RegionReport>,
    cx: &RegionContext<'_>,
) -> RegionEvidence {
    let Some(rr) = report else {
        return RegionEvidence {
            region: region.to_string(),
            state: RegionState::Missing,
            probe_id: None,
            agent: None,
            outcome: None,
            step: None,
            class: None,
            code: None,
            enhanced: None,
            text: None,
            slow: Vec::new(),
            reasons: Vec::new(),
            rtt_ms: None,
            deferred_since_ms: None,
            auth: None,
            certs: Vec::new(),
            detail: None,
            agents_connected: None,
            clock_skew_ms: None,
            placement: None,
            placement_folder: None,
            spam: None,
            reputation: None,
        };
    };
    let r = &rr.report;
    let mut ev = RegionEvidence {
        region: region.to_string(),
        state: RegionState::Ok,
        probe_id: Some(r.probe_id.clone()),
        agent: Some(rr.agent.clone()),
        outcome: Some(r.outcome.as_str().to_string()),
        step: r.failure.as_ref().map(|f| f.step.as_str().to_string()),
        class: r.failure.as_ref().map(|f| f.class.as_str().to_string()),
        code: r.failure.as_ref().and_then(|f| f.code),
        enhanced: r.failure.as_ref().and_then(|f| f.enhanced.clone()),
        text: r.failure.as_ref().map(|f| f.message.clone()),
        slow: Vec::new(),
        reasons: r.reasons.clone(),
        rtt_ms: r.rtt_ms,
        deferred_since_ms: None,
        auth: None,
        certs: certs_of(r),
        detail: None,
        agents_connected: None,
        clock_skew_ms: None,
        placement: r.placement.clone(),
        placement_folder: r.placement_folder.clone(),
        spam: r.spam.clone().map(|mut s| {
            s.rules.truncate(super::model::EVIDENCE_RULES);
            s
        }),
        reputation: r.reputation.clone(),
    };
    match (r.outcome, &r.failure) {
        (Outcome::Failed, Some(f)) if f.class.is_transient() => {
            let since = cx
                .deferred_since_ms
                .unwrap_or(cx.round_start_ms)
                .min(cx.round_start_ms);
            ev.deferred_since_ms = Some(since);
            let grace = i64::try_from(cx.policy.defer_grace.as_millis()).unwrap_or(i64::MAX);
            ev.state = if cx.round_start_ms - since < grace {
                RegionState::Deferred
            } else {
                RegionState::Failed
            };
        }
        (Outcome::Failed, _) => ev.state = RegionState::Failed,
        (Outcome::Ok | Outcome::Degraded, _) => {
            ev.slow = slow_steps(region, r, cx);
            ev.auth = auth_of(r);
            ev.state = if r.outcome == Outcome::Degraded || !ev.slow.is_empty() {
                RegionState::Degraded
            } else {
                RegionState::Ok
            };
        }
    }
    ev
}

/// Every timed step of a delivered report worth a baseline: its ok steps
/// by wire name, plus `rtt`.
pub fn timings(r: &ProbeReport) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = r
        .steps
        .iter()
        .filter(|s| s.ok)
        .map(|s| (s.name.as_str().to_string(), s.ms))
        .collect();
    if let Some(rtt) = r.rtt_ms {
        out.push(("rtt".to_string(), rtt));
    }
    out
}

fn slow_steps(region: &str, r: &ProbeReport, cx: &RegionContext<'_>) -> Vec<SlowStep> {
    let mut timed = timings(r);
    if let Some(d) = r.delivery_ms {
        // Only a static threshold applies to `delivery`: it is mostly the
        // receiver's queue, already inside `rtt`'s baseline.
        timed.push(("delivery".to_string(), d));
    }
    let mut slow = Vec::new();
    for (step, ms) in timed {
        if let Some(&limit) = cx.static_ms.get(&step)
            && ms > limit
        {
            slow.push(SlowStep {
                step,
                ms,
                threshold_ms: limit,
                baseline_ms: None,
                source: "static".into(),
            });
            continue;
        }
        if step == "delivery" {
            continue;
        }
        if let Some(stats) = cx.baselines.stats(&cx.policy.baselines, region, &step)
            && let Some(limit) = stats.threshold_ms
            && ms > limit
        {
            slow.push(SlowStep {
                step,
                ms,
                threshold_ms: limit,
                baseline_ms: Some(stats.median_ms),
                source: "learned".into(),
            });
        }
    }
    slow
}

fn auth_of(r: &ProbeReport) -> Option<AuthSnapshot> {
    let a = r.auth.as_ref()?;
    Some(AuthSnapshot {
        spf: a.spf.clone(),
        dkim: a.dkim.clone(),
        dmarc: a.dmarc.clone(),
        dkim_alignment: a.alignment.dkim,
        spf_alignment: a.alignment.spf,
    })
}

fn certs_of(r: &ProbeReport) -> Vec<CertSeen> {
    r.tls
        .iter()
        .map(|c| CertSeen {
            protocol: c.protocol.clone(),
            endpoint: c.endpoint.clone(),
            subject: c.subject.clone(),
            not_after: c.not_after.clone(),
            days_left: c.days_left,
        })
        .collect()
}

/// The verdict and its one-line note from every region's evidence (sorted).
pub fn decide(regions: &[RegionEvidence], quorum: u32, policy: &Policy) -> (VerdictKind, String) {
    let of = |s: RegionState| regions.iter().filter(move |e| e.state == s);
    let failed: Vec<&RegionEvidence> = of(RegionState::Failed).collect();
    let missing: Vec<&str> = of(RegionState::Missing)
        .map(|e| e.region.as_str())
        .collect();
    let reporting = regions.len() - missing.len();
    let n = regions.len();
    let details: Vec<&str> = of(RegionState::Missing)
        .filter(|e| e.agents_connected.is_some())
        .filter_map(|e| e.detail.as_deref())
        .collect();
    let missing_note = if missing.is_empty() {
        String::new()
    } else if details.len() == missing.len() {
        format!("; missing: {}", details.join("; "))
    } else {
        format!("; missing: {} (agents offline?)", missing.join(", "))
    };
    if failed.len() as u32 >= quorum && !failed.is_empty() {
        let note = format!(
            "down: {} of {n} regions fail ({}), quorum {quorum}{missing_note}",
            failed.len(),
            failures(&failed)
        );
        return (VerdictKind::Down, note);
    }
    if (reporting as u32) < quorum || n == 0 {
        let mut note =
            format!("unknown: only {reporting} of {n} regions reported, {quorum} needed to decide");
        if !failed.is_empty() {
            note.push_str(&format!("; failing: {}", failures(&failed)));
        }
        note.push_str(&missing_note);
        return (VerdictKind::Unknown, note);
    }
    if !failed.is_empty() {
        let note = format!(
            "transit: {} (fewer than the quorum of {quorum}; {} of {n} regions deliver), not an outage{missing_note}",
            failures(&failed),
            of(RegionState::Ok).count()
                + of(RegionState::Degraded).count()
                + of(RegionState::Deferred).count()
        );
        return (VerdictKind::Transit, note);
    }
    let deferred: Vec<&RegionEvidence> = of(RegionState::Deferred).collect();
    if !deferred.is_empty() {
        let grace = humantime::format_duration(policy.defer_grace);
        let note = format!(
            "deferred: {} (retried inside the {grace} grace window){missing_note}",
            failures(&deferred)
        );
        return (VerdictKind::Deferred, note);
    }
    let degraded: Vec<&RegionEvidence> = of(RegionState::Degraded).collect();
    if !degraded.is_empty() {
        let parts: Vec<String> = degraded
            .iter()
            .map(|e| format!("{}: {}", e.region, degraded_why(e)))
            .collect();
        return (
            VerdictKind::Degraded,
            format!("degraded: {}{missing_note}", parts.join("; ")),
        );
    }
    (
        VerdictKind::Up,
        format!("up: {reporting} of {n} regions delivered{missing_note}"),
    )
}

/// `eu-west at smtp.rcpt_to (permanent 550 5.1.1)` for each region.
fn failures(list: &[&RegionEvidence]) -> String {
    list.iter()
        .map(|e| {
            let mut s = format!(
                "{} at {}",
                e.region,
                e.step.as_deref().unwrap_or("an unknown step")
            );
            let mut detail = vec![e.class.clone().unwrap_or_else(|| "unclassified".into())];
            if let Some(c) = e.code {
                detail.push(c.to_string());
            }
            if let Some(x) = &e.enhanced {
                detail.push(x.clone());
            }
            s.push_str(&format!(" ({})", detail.join(" ")));
            s
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a delivered region is degraded, in a few words.
pub fn degraded_why(e: &RegionEvidence) -> String {
    let mut parts: Vec<String> = e
        .slow
        .iter()
        .map(|s| {
            format!(
                "{} {} over {} threshold {}",
                s.step,
                fmt_ms(s.ms),
                s.source,
                fmt_ms(s.threshold_ms)
            )
        })
        .collect();
    parts.extend(e.reasons.iter().map(|r| short_text(r, 80)));
    if parts.is_empty() {
        parts.push("reported degraded".into());
    }
    parts.join(", ")
}

/// True when a failure class can never fix itself (used for the one-round outage).
pub fn is_hard(class: Option<&str>) -> bool {
    matches!(class, Some(c) if c == FailureClass::Permanent.as_str() || c == FailureClass::Auth.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_edges() {
        assert_eq!(quorum(Quorum::Majority, 1), 1);
        assert_eq!(quorum(Quorum::Majority, 2), 2);
        assert_eq!(quorum(Quorum::Majority, 3), 2);
        assert_eq!(quorum(Quorum::Majority, 5), 3);
        assert_eq!(quorum(Quorum::Count(4), 3), 3);
        assert_eq!(quorum(Quorum::Count(0), 3), 1);
        assert_eq!(quorum(Quorum::Fraction(0.5), 5), 3);
        assert_eq!(quorum(Quorum::Fraction(0.01), 5), 1);
        assert_eq!(quorum(Quorum::Fraction(1.0), 4), 4);
        assert_eq!(quorum(Quorum::Majority, 0), 1);
    }
}
