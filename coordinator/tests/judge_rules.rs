//! The judge's rules (issue 5), one line per case where it can be.
//!
//! Region reports are written in a compact notation, one string per region
//! (regions are `r1`, `r2`, ... in that order):
//! - `ok`: delivered, every step at its usual time;
//! - `missing`: no report;
//! - `fail:STEP:CLASS` (optionally `:CODE:ENHANCED`): failed there;
//! - `defer:STEP`: a greylisting 451 at that step;
//! - `degraded`: the agent said degraded (a certificate reason);
//! - `slow:STEP:MS`: delivered, with that step (or `rtt`) taking MS.
//!
//! Everything is pure: rounds are numbered, their start times computed, no
//! clock and no sleeps.

use mailloop_common::alignment::Alignment;
use mailloop_common::{
    AlignmentReport, AuthReport, Failure, FailureClass, Outcome, ProbeReport, StepName, StepReport,
    TlsCert,
};
use mailloop_coordinator::judge::advice::advice;
use mailloop_coordinator::judge::*;
use serde_json::{Value, json};
use std::time::Duration;

/// 2026-11-27 13:55:00 UTC.
const START_MS: i64 = 1_795_787_700_000;
const MINUTE: i64 = 60_000;

fn policy(quorum: Quorum) -> Policy {
    Policy {
        quorum,
        confirm_rounds: 2,
        transit_rounds: 3,
        degraded_rounds: 3,
        resolve_rounds: 2,
        defer_grace: Duration::from_secs(5 * 60),
        cert_min_days: 14,
        baselines: BaselineSettings {
            window: 20,
            min_samples: 10,
            factor: 3.0,
            floor_ms: 25.0,
        },
        coverage_rounds: 3,
        coverage_severity: Severity::Warning,
        clock_skew_max: Duration::from_secs(30),
        clock_severity: Severity::Warning,
        placement_rounds: 2,
    }
}

/// The usual step times of a delivered probe (ms).
const USUAL: &[(StepName, f64)] = &[
    (StepName::SmtpConnect, 1.0),
    (StepName::SmtpBanner, 2.0),
    (StepName::SmtpEhlo, 1.0),
    (StepName::SmtpRcptTo, 1.0),
    (StepName::SmtpDataAck, 40.0),
    (StepName::ImapWait, 20.0),
];

fn base_report(outcome: Outcome) -> ProbeReport {
    ProbeReport {
        probe_id: "ml-test".into(),
        check: "corp".into(),
        started_at: "2026-11-27T13:55:00Z".into(),
        outcome,
        rtt_ms: Some(70.0),
        delivery_ms: Some(20.0),
        steps: USUAL
            .iter()
            .map(|&(name, ms)| StepReport {
                name,
                ms,
                ok: true,
                code: None,
                detail: None,
                start_ms: 0.0,
            })
            .collect(),
        failure: None,
        message_id: "<m@test>".into(),
        queue_id: None,
        reasons: Vec::new(),
        warnings: Vec::new(),
        attempts: Vec::new(),
        greylisted: false,
        greylist_ms: None,
        tls: Vec::new(),
        auth: None,
        hops: Vec::new(),
        spf: None,
        placement: None,
        placement_folder: None,
        spam: None,
        reputation: None,
        trace_id: None,
        span_id: None,
    }
}

fn class(s: &str) -> FailureClass {
    serde_json::from_value(json!(s)).unwrap_or_else(|_| panic!("no class {s}"))
}

/// One region's report from the notation (`None` for `missing`).
fn report(spec: &str) -> Option<ProbeReport> {
    let parts: Vec<&str> = spec.split(':').collect();
    match parts.as_slice() {
        ["missing"] => None,
        ["ok"] => Some(base_report(Outcome::Ok)),
        ["degraded"] => {
            let mut r = base_report(Outcome::Degraded);
            r.reasons.push("imap certificate expires in 9 days".into());
            Some(r)
        }
        ["slow", step, ms] => {
            let mut r = base_report(Outcome::Ok);
            let ms: f64 = ms.parse().unwrap();
            if *step == "rtt" {
                r.rtt_ms = Some(ms);
            } else {
                let name: StepName = step.parse().unwrap();
                r.steps
                    .iter_mut()
                    .find(|s| s.name == name)
                    .expect("a usual step")
                    .ms = ms;
            }
            Some(r)
        }
        ["defer", step] => Some(failed(
            step,
            FailureClass::Deferred,
            Some(451),
            Some("4.7.1"),
            "Greylisted",
        )),
        ["fail", step, c] => Some(failed(step, class(c), None, None, "failed")),
        ["fail", step, c, code, enh] => Some(failed(
            step,
            class(c),
            code.parse().ok(),
            Some(enh),
            "failed",
        )),
        _ => panic!("bad notation {spec:?}"),
    }
}

fn failed(
    step: &str,
    class: FailureClass,
    code: Option<u16>,
    enhanced: Option<&str>,
    text: &str,
) -> ProbeReport {
    let mut r = base_report(Outcome::Failed);
    r.rtt_ms = None;
    r.delivery_ms = None;
    r.failure = Some(Failure {
        step: step.parse().unwrap(),
        class,
        code,
        enhanced: enhanced.map(str::to_string),
        message: text.into(),
        raw: None,
    });
    r
}

fn region(i: usize) -> String {
    format!("r{}", i + 1)
}

fn with_regions(reports: Vec<Option<ProbeReport>>) -> Vec<RegionReport> {
    reports
        .into_iter()
        .enumerate()
        .filter_map(|(i, r)| {
            r.map(|report| RegionReport {
                region: region(i),
                agent: format!("agent-{}", i + 1),
                report,
            })
        })
        .collect()
}

/// A judge over several rounds.
struct Sim {
    judge: CheckJudge,
    round: u64,
    interval_ms: i64,
    verdicts: Vec<Verdict>,
    open: Vec<Incident>,
}

impl Sim {
    fn new(n: usize, policy: Policy) -> Sim {
        Sim::with_table(n, policy, &json!({}))
    }

    fn with_table(n: usize, policy: Policy, table: &Value) -> Sim {
        let regions: Vec<String> = (0..n).map(region).collect();
        Sim {
            judge: CheckJudge::new("corp", &regions, policy, table),
            round: 0,
            interval_ms: MINUTE,
            verdicts: Vec::new(),
            open: Vec::new(),
        }
    }

    fn start_ms(&self) -> i64 {
        START_MS + self.round as i64 * self.interval_ms
    }

    /// One round from the notation.
    fn round(&mut self, specs: &[&str]) -> (VerdictKind, Vec<IncidentChange>) {
        self.round_with(specs.iter().map(|s| report(s)).collect())
    }

    fn round_with(
        &mut self,
        reports: Vec<Option<ProbeReport>>,
    ) -> (VerdictKind, Vec<IncidentChange>) {
        let start = self.start_ms();
        let (v, changes) =
            self.judge
                .judge(self.round, start, &with_regions(reports), start + 30_000);
        self.round += 1;
        for c in &changes {
            match c {
                IncidentChange::Open(i) => self.open.push(i.clone()),
                IncidentChange::Resolve { kind, key, .. } => {
                    self.open.retain(|i| !(i.kind == *kind && &i.key == key))
                }
                IncidentChange::Update { .. } => {}
            }
        }
        let kind = v.verdict;
        self.verdicts.push(v);
        (kind, changes)
    }

    /// The same round `times` times; every incident change, in order.
    fn rounds(&mut self, times: usize, specs: &[&str]) -> Vec<IncidentChange> {
        (0..times).flat_map(|_| self.round(specs).1).collect()
    }

    fn last(&self) -> &Verdict {
        self.verdicts.last().unwrap()
    }
}

fn opened(changes: &[IncidentChange]) -> Vec<IncidentKind> {
    changes
        .iter()
        .filter_map(|c| {
            if let IncidentChange::Open(i) = c {
                Some(i.kind)
            } else {
                None
            }
        })
        .collect()
}

fn resolved(changes: &[IncidentChange]) -> Vec<IncidentKind> {
    changes
        .iter()
        .filter_map(|c| {
            if let IncidentChange::Resolve { kind, .. } = c {
                Some(*kind)
            } else {
                None
            }
        })
        .collect()
}

/// The verdict of a single round on a fresh judge.
fn verdict(specs: &[&str], quorum: Quorum) -> VerdictKind {
    Sim::new(specs.len(), policy(quorum)).round(specs).0
}

use IncidentKind::*;
use Quorum::*;
use VerdictKind::{Deferred as DeferredV, Degraded as DegradedV, Down, Transit, Unknown, Up};

const CONN: &str = "fail:smtp.connect:connect";

#[test]
fn quorum_edges() {
    assert_eq!(verdict(&[CONN], Majority), Down);
    assert_eq!(verdict(&["ok"], Majority), Up);
    assert_eq!(verdict(&["ok", CONN, CONN], Majority), Down);
    assert_eq!(verdict(&["ok", "ok", CONN], Majority), Transit);
    assert_eq!(verdict(&[CONN, CONN, CONN, "ok", "ok"], Majority), Down);
    assert_eq!(verdict(&[CONN, CONN, "ok", "ok", "ok"], Majority), Transit);
    assert_eq!(verdict(&["ok", CONN, "ok"], Count(1)), Down);
    assert_eq!(verdict(&[CONN, CONN, "ok"], Count(5)), Transit);
    assert_eq!(verdict(&[CONN, CONN, CONN], Count(5)), Down);
    assert_eq!(verdict(&[CONN, CONN, "ok", "ok"], Fraction(0.5)), Down);
    assert_eq!(verdict(&[CONN, "ok", "ok", "ok"], Fraction(0.5)), Transit);
    assert_eq!(verdict(&[CONN, "ok", "ok", "ok"], Fraction(0.01)), Down);
    assert_eq!(verdict(&[CONN, CONN, "missing"], Majority), Down);
}

#[test]
fn too_few_reports_are_unknown_never_up() {
    assert_eq!(verdict(&["ok", "missing", "missing"], Majority), Unknown);
    assert_eq!(verdict(&["missing"], Majority), Unknown);
    assert_eq!(verdict(&["ok", "missing"], Majority), Unknown);
    assert_eq!(verdict(&[CONN, "missing", "missing"], Majority), Unknown);
    assert_eq!(verdict(&["ok", "ok", "missing"], Majority), Up);
    let mut sim = Sim::new(3, policy(Majority));
    sim.round(&["ok", "missing", "missing"]);
    assert!(
        sim.last()
            .note
            .contains("missing: r2, r3 (agents offline?)"),
        "{}",
        sim.last().note
    );
    assert_eq!(
        sim.last()
            .regions
            .iter()
            .map(|e| e.region.as_str())
            .collect::<Vec<_>>(),
        ["r1", "r2", "r3"]
    );
}

#[test]
fn the_verdict_order_is_down_unknown_transit_deferred_degraded_up() {
    assert_eq!(
        verdict(&["ok", "defer:smtp.rcpt_to", "degraded"], Majority),
        DeferredV
    );
    assert_eq!(verdict(&["ok", "ok", "degraded"], Majority), DegradedV);
    assert_eq!(
        verdict(&[CONN, "defer:smtp.rcpt_to", "degraded"], Majority),
        Transit
    );
}

#[test]
fn a_deferral_then_delivery_is_deferred_then_up_without_incident() {
    let mut sim = Sim::new(2, policy(Majority));
    assert_eq!(
        sim.round(&["defer:smtp.rcpt_to", "ok"]),
        (DeferredV, vec![])
    );
    assert_eq!(
        sim.round(&["defer:smtp.rcpt_to", "defer:smtp.rcpt_to"]),
        (DeferredV, vec![])
    );
    assert_eq!(sim.round(&["ok", "ok"]), (Up, vec![]));
}

#[test]
fn a_deferral_streak_past_its_grace_is_a_failure() {
    // Grace 5 minutes, one round a minute: rounds 0..4 are inside it.
    let mut sim = Sim::new(1, policy(Majority));
    let kinds: Vec<VerdictKind> = (0..7)
        .map(|_| sim.round(&["defer:smtp.rcpt_to"]).0)
        .collect();
    assert_eq!(
        kinds,
        [
            DeferredV, DeferredV, DeferredV, DeferredV, DeferredV, Down, Down
        ]
    );
    assert_eq!(sim.last().regions[0].deferred_since_ms, Some(START_MS));
    // A delivered round ends the streak: the grace starts again.
    assert_eq!(sim.round(&["ok"]).0, Up);
    assert_eq!(sim.round(&["defer:smtp.rcpt_to"]).0, DeferredV);
}

#[test]
fn transit_then_down() {
    let mut sim = Sim::new(3, policy(Majority));
    assert_eq!(sim.round(&[CONN, "ok", "ok"]).0, Transit);
    assert!(
        sim.last().note.contains("r1 at smtp.connect (connect)"),
        "{}",
        sim.last().note
    );
    assert!(sim.last().note.contains("not an outage"));
    assert_eq!(sim.round(&[CONN, CONN, "ok"]).0, Down);
}

#[test]
fn flapping_never_confirms_an_outage() {
    let mut sim = Sim::new(3, policy(Majority));
    for _ in 0..5 {
        assert!(opened(&sim.round(&[CONN, CONN, CONN]).1).is_empty());
        assert!(opened(&sim.round(&["ok", "ok", "ok"]).1).is_empty());
    }
}

#[test]
fn an_outage_opens_after_confirm_rounds_once_and_resolves_after_resolve_rounds() {
    let mut sim = Sim::new(3, policy(Majority));
    assert_eq!(opened(&sim.round(&[CONN, CONN, "ok"]).1), []);
    let (_, changes) = sim.round(&[CONN, CONN, "ok"]);
    let [IncidentChange::Open(inc)] = changes.as_slice() else {
        panic!("{changes:?}")
    };
    assert_eq!(
        (inc.kind, inc.severity, inc.first_round, inc.last_round),
        (Outage, Severity::Critical, 0, 1)
    );
    assert_eq!(inc.regions, ["r1", "r2"]);
    assert_eq!(
        inc.timeline
            .iter()
            .map(|e| e.event.as_str())
            .collect::<Vec<_>>(),
        ["round", "opened"]
    );
    // Still down: no duplicate, and no timeline entry for a round that changes nothing.
    assert!(sim.rounds(5, &[CONN, CONN, "ok"]).is_empty());
    // One resolving round is an update; the second resolves.
    let (_, changes) = sim.round(&["ok", "ok", "ok"]);
    assert!(
        matches!(
            changes.as_slice(),
            [IncidentChange::Update {
                kind: Outage,
                last_round: 7,
                ..
            }]
        ),
        "{changes:?}"
    );
    assert_eq!(resolved(&sim.round(&["ok", "ok", "ok"]).1), [Outage]);
}

#[test]
fn a_long_outage_keeps_a_bounded_timeline() {
    let mut sim = Sim::new(3, policy(Majority));
    let mut changes = sim.rounds(2, &[CONN, CONN, "ok"]);
    // Every round changes which regions fail: each would be worth an entry.
    for _ in 0..100 {
        changes.extend(sim.round(&[CONN, CONN, CONN]).1);
        changes.extend(sim.round(&[CONN, CONN, "ok"]).1);
    }
    let opening = match &changes[0] {
        IncidentChange::Open(i) => i.timeline.len(),
        other => panic!("{other:?}"),
    };
    let updates = changes
        .iter()
        .filter(|c| matches!(c, IncidentChange::Update { .. }))
        .count();
    assert!(updates > 0);
    assert!(
        opening + updates <= mailloop_coordinator::judge::incident::TIMELINE_CAP,
        "{opening} + {updates}"
    );
    // The resolve entry still comes.
    assert_eq!(resolved(&sim.rounds(2, &["ok", "ok", "ok"])), [Outage]);
}

#[test]
fn a_permanent_failure_from_every_region_opens_an_outage_after_one_round() {
    let perm = "fail:smtp.rcpt_to:permanent:550:5.1.1";
    assert_eq!(
        opened(&Sim::new(3, policy(Majority)).round(&[perm, perm, perm]).1),
        [Outage]
    );
    assert_eq!(
        opened(
            &Sim::new(2, policy(Majority))
                .round(&["fail:smtp.auth:auth", perm])
                .1
        ),
        [Outage]
    );
    // Not when a region did not report, nor for a class that can fix itself.
    assert_eq!(
        opened(
            &Sim::new(3, policy(Majority))
                .round(&[perm, perm, "missing"])
                .1
        ),
        []
    );
    assert_eq!(
        opened(&Sim::new(3, policy(Majority)).round(&[perm, perm, CONN]).1),
        []
    );
}

#[test]
fn unknown_rounds_neither_break_a_down_streak_nor_resolve() {
    let mut sim = Sim::new(3, policy(Majority));
    sim.round(&[CONN, CONN, CONN]);
    assert_eq!(sim.round(&["missing", "missing", "missing"]).0, Unknown);
    assert_eq!(opened(&sim.round(&[CONN, CONN, CONN]).1), [Outage]);
    assert_eq!(resolved(&sim.round(&["ok", "ok", "ok"]).1), []);
    assert_eq!(resolved(&sim.round(&["ok", "missing", "missing"]).1), []);
    assert_eq!(resolved(&sim.round(&["ok", "ok", "ok"]).1), [Outage]);
}

#[test]
fn one_open_incident_per_kind() {
    let mut sim = Sim::new(3, policy(Majority));
    let changes = sim.rounds(10, &["fail:smtp.rcpt_to:permanent:550:5.1.1"; 3]);
    assert_eq!(opened(&changes), [Outage]);
    let changes = sim.rounds(10, &["degraded", "ok", "ok"]);
    assert_eq!(opened(&changes), [Performance]);
    assert_eq!(resolved(&changes), [Outage]);
}

#[test]
fn the_same_region_in_transit_opens_a_regional_incident_not_an_outage() {
    let mut sim = Sim::new(3, policy(Majority));
    let changes = sim.rounds(3, &[CONN, "ok", "ok"]);
    let opens: Vec<&Incident> = changes
        .iter()
        .filter_map(|c| {
            if let IncidentChange::Open(i) = c {
                Some(i)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(opens.len(), 1);
    assert_eq!(
        (opens[0].kind, opens[0].severity, opens[0].key.as_str()),
        (Regional, Severity::Warning, "r1")
    );
    assert!(opens[0].summary.contains("not an outage"));
    assert_eq!(opens[0].timeline.len(), 3);
    // The outage opens beside it; the regional incident stays open.
    let changes = sim.rounds(2, &[CONN, CONN, "ok"]);
    assert_eq!(
        (opened(&changes), resolved(&changes)),
        (vec![Outage], vec![])
    );
    // r1 delivers again for resolve_rounds rounds: both resolve.
    let changes = sim.rounds(2, &["ok", "ok", "ok"]);
    assert_eq!(resolved(&changes), [Outage, Regional]);
}

#[test]
fn a_failing_region_that_changes_every_round_opens_nothing() {
    let mut sim = Sim::new(3, policy(Majority));
    for _ in 0..4 {
        for specs in [[CONN, "ok", "ok"], ["ok", CONN, "ok"], ["ok", "ok", CONN]] {
            assert_eq!(sim.round(&specs), (Transit, vec![]));
        }
    }
}

#[test]
fn degraded_rounds_open_a_performance_incident() {
    let mut sim = Sim::new(2, policy(Majority));
    assert_eq!(opened(&sim.rounds(2, &["degraded", "ok"])), []);
    assert_eq!(opened(&sim.rounds(1, &["degraded", "ok"])), [Performance]);
    assert_eq!(resolved(&sim.rounds(2, &["ok", "ok"])), [Performance]);
}

/// Data-ack times around 40 ms, ±30%, from a fixed pseudo-random sequence.
fn jitter(seed: &mut u64) -> f64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let unit = (*seed >> 11) as f64 / (1u64 << 53) as f64;
    40.0 * (0.7 + 0.6 * unit)
}

#[test]
fn a_slow_step_is_caught_after_warm_up_but_ordinary_noise_is_not() {
    let mut sim = Sim::new(1, policy(Majority));
    // Before warm-up nothing is learned: a slow step passes.
    assert_eq!(sim.round(&["slow:smtp.data_ack:2400"]).0, Up);
    let mut seed = 7;
    for _ in 0..200 {
        let ms = jitter(&mut seed);
        let (kind, _) = sim.round(&[&format!("slow:smtp.data_ack:{ms:.1}")]);
        assert_eq!(kind, Up, "{ms} ms was judged slow: {}", sim.last().note);
    }
    assert_eq!(sim.round(&["slow:smtp.data_ack:2400"]).0, DegradedV);
    let slow = &sim.last().regions[0].slow;
    assert_eq!(slow.len(), 1);
    assert_eq!(
        (slow[0].step.as_str(), slow[0].source.as_str()),
        ("smtp.data_ack", "learned")
    );
    let base = slow[0].baseline_ms.unwrap();
    assert!(
        (35.0..45.0).contains(&base) && slow[0].threshold_ms >= 3.0 * base,
        "{slow:?}"
    );
}

#[test]
fn a_permanent_shift_is_absorbed_as_the_window_fills() {
    let mut sim = Sim::new(1, policy(Majority));
    sim.rounds(20, &["ok"]);
    assert_eq!(sim.round(&["slow:smtp.data_ack:400"]).0, DegradedV);
    // window 20: once half the window holds the new level, it is the baseline.
    let kinds: Vec<VerdictKind> = (0..12)
        .map(|_| sim.round(&["slow:smtp.data_ack:400"]).0)
        .collect();
    assert_eq!(kinds[..9], [DegradedV; 9]);
    assert_eq!(kinds[10..], [Up, Up]);
}

#[test]
fn static_thresholds_come_from_the_check_table() {
    let table = json!({"thresholds": {"smtp.data_ack": "1s", "rtt": "30s"}});
    let mut sim = Sim::with_table(1, policy(Majority), &table);
    assert_eq!(sim.round(&["slow:smtp.data_ack:1500"]).0, DegradedV);
    let slow = &sim.last().regions[0].slow[0];
    assert_eq!(
        (slow.source.as_str(), slow.threshold_ms, slow.baseline_ms),
        ("static", 1000.0, None)
    );
    let views = sim.judge.baselines();
    let ack = views.iter().find(|b| b.step == "smtp.data_ack").unwrap();
    assert_eq!(
        (
            ack.region.as_str(),
            ack.samples,
            ack.static_threshold_ms,
            ack.threshold_ms
        ),
        ("r1", 1, Some(1000.0), None)
    );
    assert_eq!(
        views
            .iter()
            .find(|b| b.step == "rtt")
            .unwrap()
            .static_threshold_ms,
        Some(30_000.0)
    );
}

fn with_auth(dkim: &str, dkim_alignment: Alignment) -> Option<ProbeReport> {
    let mut r = base_report(Outcome::Ok);
    r.auth = Some(AuthReport {
        spf: Some("pass".into()),
        dkim: Some(dkim.into()),
        dmarc: Some("pass".into()),
        dkim_domain: Some("sender.test".into()),
        spf_domain: Some("sender.test".into()),
        from_domain: Some("sender.test".into()),
        alignment: AlignmentReport {
            dkim: dkim_alignment,
            spf: Alignment::Strict,
        },
        authserv_id: Some("mx.receiver.test".into()),
        own_dkim: None,
        raw: Vec::new(),
        ignored: 0,
        warning: None,
    });
    Some(r)
}

#[test]
fn authentication_drift_opens_after_one_round_and_resolves_when_results_are_back() {
    let mut sim = Sim::new(2, policy(Majority));
    let good = || with_auth("pass", Alignment::Strict);
    assert!(sim.round_with(vec![good(), good()]).1.is_empty());
    let (_, changes) = sim.round_with(vec![with_auth("fail", Alignment::Strict), good()]);
    let [IncidentChange::Open(inc)] = changes.as_slice() else {
        panic!("{changes:?}")
    };
    assert_eq!(
        (inc.kind, inc.regions.as_slice()),
        (Authentication, &["r1".to_string()][..])
    );
    assert!(
        inc.summary.contains("r1 dkim pass → fail"),
        "{}",
        inc.summary
    );
    // Still failing: still open (no duplicate); back for resolve_rounds rounds: resolved.
    assert_eq!(
        opened(
            &sim.round_with(vec![with_auth("fail", Alignment::Strict), good()])
                .1
        ),
        []
    );
    assert_eq!(resolved(&sim.round_with(vec![good(), good()]).1), []);
    assert_eq!(
        resolved(&sim.round_with(vec![good(), good()]).1),
        [Authentication]
    );
    // Alignment strict -> relaxed is drift too.
    assert_eq!(
        opened(
            &sim.round_with(vec![good(), with_auth("pass", Alignment::Relaxed)])
                .1
        ),
        [Authentication]
    );
}

fn with_cert(subject: &str, not_after: &str, days_left: i64) -> Option<ProbeReport> {
    let mut r = base_report(Outcome::Ok);
    r.tls.push(TlsCert {
        protocol: "smtp".into(),
        endpoint: "smtp.sender.test:587".into(),
        subject: subject.into(),
        sans: Vec::new(),
        issuer: "CN=ca".into(),
        not_after: not_after.into(),
        days_left,
        version: None,
        cipher: None,
    });
    Some(r)
}

#[test]
fn a_certificate_warning_opens_once_per_certificate() {
    let mut sim = Sim::new(2, policy(Majority));
    let old = || with_cert("CN=smtp.sender.test", "2026-12-04T00:00:00Z", 7);
    let new = || with_cert("CN=smtp.sender.test", "2027-03-01T00:00:00Z", 90);
    let changes = sim.round_with(vec![old(), old()]).1;
    let [IncidentChange::Open(inc)] = changes.as_slice() else {
        panic!("{changes:?}")
    };
    assert_eq!((inc.kind, inc.severity), (Certificate, Severity::Info));
    assert_eq!(
        inc.key,
        "smtp.sender.test:587|CN=smtp.sender.test|2026-12-04T00:00:00Z"
    );
    assert_eq!(inc.regions, ["r1", "r2"]);
    assert!(
        inc.summary.contains("with 7 days left, fewer than 14"),
        "{}",
        inc.summary
    );
    assert!(sim.round_with(vec![old(), old()]).1.is_empty());
    assert_eq!(
        resolved(&sim.round_with(vec![new(), old()]).1),
        [Certificate]
    );
    // The same old certificate seen again (a stale server behind the name): not re-opened.
    assert!(sim.round_with(vec![old(), new()]).1.is_empty());
}

#[test]
fn restore_carries_streaks_and_open_incidents_across_a_restart() {
    let mut before = Sim::new(3, policy(Majority));
    before.round(&[CONN, CONN, "ok"]);
    before.round(&["defer:smtp.rcpt_to", "ok", "ok"]);
    before.round(&[CONN, CONN, "ok"]);
    // A new judge that learned nothing but the stored verdicts.
    let mut after = Sim::new(3, policy(Majority));
    after.round = before.round;
    after.judge.restore(&before.verdicts, &before.open);
    // The down streak carries on: this round confirms the outage.
    assert_eq!(opened(&after.round(&[CONN, CONN, "ok"]).1), [Outage]);
    let open = after.open.clone();

    // Restart again with the outage open: no re-open, and it resolves on schedule.
    let mut again = Sim::new(3, policy(Majority));
    again.round = after.round;
    let recent: Vec<Verdict> = before
        .verdicts
        .iter()
        .chain(&after.verdicts)
        .cloned()
        .collect();
    again.judge.restore(&recent, &open);
    assert_eq!(opened(&again.rounds(3, &[CONN, CONN, "ok"])), []);
    assert_eq!(resolved(&again.round(&["ok", "ok", "ok"]).1), []);
    assert_eq!(resolved(&again.round(&["ok", "ok", "ok"]).1), [Outage]);
}

#[test]
fn restore_carries_a_deferral_streak() {
    let mut before = Sim::new(1, policy(Majority));
    before.rounds(3, &["defer:smtp.rcpt_to"]);
    let mut after = Sim::new(1, policy(Majority));
    after.round = before.round;
    after.judge.restore(&before.verdicts, &[]);
    assert_eq!(after.round(&["defer:smtp.rcpt_to"]).0, DeferredV);
    assert_eq!(after.round(&["defer:smtp.rcpt_to"]).0, DeferredV);
    // Round 5 is five minutes after the streak began in round 0.
    assert_eq!(after.round(&["defer:smtp.rcpt_to"]).0, Down);
}

fn summary_of(changes: &[IncidentChange], kind: IncidentKind) -> String {
    changes
        .iter()
        .find_map(|c| match c {
            IncidentChange::Open(i) if i.kind == kind => Some(i.summary.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no {kind:?} opened in {changes:?}"))
}

#[test]
fn the_outage_summary_says_what_where_since_when_and_what_to_check() {
    let mut sim = Sim::new(3, policy(Majority));
    sim.interval_ms = 10 * MINUTE;
    sim.round(&["ok", "ok", "ok"]);
    let unknown_user = || {
        Some(failed(
            "smtp.rcpt_to",
            FailureClass::Permanent,
            Some(550),
            Some("5.1.1"),
            "User unknown",
        ))
    };
    let changes = sim
        .round_with(vec![unknown_user(), unknown_user(), unknown_user()])
        .1;
    assert_eq!(
        summary_of(&changes, Outage),
        "Since 14:05 UTC all 3 regions fail at smtp.rcpt_to with 550 5.1.1 'User unknown' (permanent). \
         Last good round 13:55 UTC. Likely cause: the probe mailbox was removed or the recipient domain's \
         routing changed. Check: the mailbox exists on the receiving side."
    );
}

#[test]
fn the_regional_summary_says_transit_not_an_outage() {
    let mut sim = Sim::new(3, policy(Majority));
    sim.interval_ms = 10 * MINUTE;
    sim.round(&["ok", "ok", "ok"]);
    let refused = || {
        Some(failed(
            "smtp.connect",
            FailureClass::Connect,
            None,
            None,
            "Connection refused (os error 111)",
        ))
    };
    let changes: Vec<IncidentChange> = (0..3)
        .flat_map(|_| {
            sim.round_with(vec![refused(), report("ok"), report("ok")])
                .1
        })
        .collect();
    assert_eq!(
        summary_of(&changes, Regional),
        "Transit trouble from r1, not an outage: since 14:05 UTC r1 fails at smtp.connect with \
         'Connection refused (os error 111)' (connect) while 2 other regions deliver. Last good round 13:55 UTC. \
         Likely cause, on the path from r1: the SMTP server refuses or does not answer connections \
         (service down, firewall, or wrong host/port). Check first the network path from r1, then: that the \
         SMTP server is running and listening on the configured port, and that the host name resolves to it."
    );
    assert_eq!(opened(&changes), [Regional]);
}

#[test]
fn the_performance_summary_names_step_region_and_baseline() {
    let mut sim = Sim::new(1, policy(Majority));
    sim.rounds(10, &["ok"]);
    let changes = sim.rounds(3, &["slow:smtp.data_ack:2400"]);
    assert_eq!(
        summary_of(&changes, Performance),
        "Since 14:05 UTC mail is delivered but degraded: smtp.data_ack took 2.4 s in r1, baseline 40 ms \
         (threshold 120 ms). Likely cause: the message is slow to be accepted: milters or content scanners \
         (DKIM signing, antivirus, spam) take longer. Check: the milters' and content scanners' latency and load."
    );
}

#[test]
fn advice_covers_every_step_and_class_and_tells_them_apart() {
    for &step in StepName::ALL {
        for class in FailureClass::ALL {
            let a = advice(step, class);
            assert!(
                !a.cause.trim().is_empty() && !a.check.trim().is_empty(),
                "{step} × {class}"
            );
            assert!(
                !a.cause.ends_with('.') && !a.check.ends_with('.'),
                "{step} × {class}: the summary adds the period"
            );
        }
    }
    let pairs = [
        advice(StepName::SmtpAuth, FailureClass::Auth),
        advice(StepName::ImapLogin, FailureClass::Auth),
        advice(StepName::SmtpRcptTo, FailureClass::Permanent),
        advice(StepName::SmtpConnect, FailureClass::Connect),
        advice(StepName::ImapWait, FailureClass::NotDelivered),
        advice(StepName::SmtpStarttls, FailureClass::Tls),
    ];
    for (i, a) in pairs.iter().enumerate() {
        for b in &pairs[i + 1..] {
            assert_ne!(a.cause, b.cause);
            assert_ne!(a.check, b.check);
        }
    }
    assert!(
        advice(StepName::SmtpAuth, FailureClass::Auth)
            .cause
            .contains("submission credentials")
    );
    assert!(
        advice(StepName::ImapLogin, FailureClass::Auth)
            .cause
            .contains("probe mailbox's login")
    );
}

// ---------------------------------------------------------------------------
// Coverage and clock (issue 17): the monitor's own blindness is an incident.
// Agents are written `name:up`, `name:down@MIN` (disconnected MIN minutes
// after START_MS) or `name:up:skew=MS`, one list per region.

fn agents_of(specs: &[&[&str]]) -> std::collections::BTreeMap<String, Vec<AgentSeen>> {
    specs
        .iter()
        .enumerate()
        .map(|(i, list)| {
            let seen = list
                .iter()
                .map(|spec| {
                    let parts: Vec<&str> = spec.split(':').collect();
                    let (connected, gone) = match parts[1] {
                        "up" => (true, None),
                        down => {
                            let min: i64 = down.trim_start_matches("down@").parse().unwrap();
                            (false, Some(START_MS + min * MINUTE))
                        }
                    };
                    let skew = parts
                        .get(2)
                        .map(|s| s.trim_start_matches("skew=").parse().unwrap());
                    AgentSeen {
                        name: parts[0].into(),
                        connected,
                        last_seen_ms: Some(gone.unwrap_or(START_MS)),
                        disconnected_at_ms: gone,
                        clock_skew_ms: skew,
                    }
                })
                .collect();
            (region(i), seen)
        })
        .collect()
}

impl Sim {
    /// One round from the notation, with the regions' agents as given.
    fn round_seen(
        &mut self,
        specs: &[&str],
        agents: &[&[&str]],
    ) -> (VerdictKind, Vec<IncidentChange>) {
        let start = self.start_ms();
        let reports = with_regions(specs.iter().map(|s| report(s)).collect());
        let (v, changes) = self.judge.judge_with(
            self.round,
            start,
            &reports,
            &agents_of(agents),
            start + 30_000,
        );
        self.round += 1;
        let kind = v.verdict;
        self.verdicts.push(v);
        (kind, changes)
    }
}

fn opened_incident(changes: &[IncidentChange], kind: IncidentKind) -> &Incident {
    changes
        .iter()
        .find_map(|c| match c {
            IncidentChange::Open(i) if i.kind == kind => Some(i),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no {kind:?} opened in {changes:?}"))
}

const R1_UP: &[&str] = &["agent-1:up"];
const R2_UP: &[&str] = &["agent-2:up"];

#[test]
fn a_region_without_a_live_agent_opens_coverage_at_once_and_its_report_resolves_it() {
    let mut sim = Sim::new(2, policy(Majority));
    let (v, changes) = sim.round_seen(&["ok", "ok"], &[R1_UP, R2_UP]);
    assert_eq!((v, opened(&changes)), (Up, vec![]));
    let (v, changes) = sim.round_seen(&["ok", "missing"], &[R1_UP, &["agent-2:down@1"]]);
    assert_eq!((v, opened(&changes)), (Unknown, vec![Coverage]));
    let i = opened_incident(&changes, Coverage);
    assert_eq!(
        (i.key.as_str(), i.regions.clone(), i.severity),
        ("r2", vec!["r2".to_string()], Severity::Warning)
    );
    assert!(i.summary.starts_with("The monitor is blind in r2: no report from r2 since 13:55 UTC (agent agent-2 disconnected 13:56 UTC); 1 round without a report."), "{}", i.summary);
    assert!(
        i.summary.contains("unknown never counts as up"),
        "{}",
        i.summary
    );
    // Still blind: no second incident.
    let (_, changes) = sim.round_seen(&["ok", "missing"], &[R1_UP, &["agent-2:down@1"]]);
    assert_eq!(opened(&changes), vec![]);
    let (v, changes) = sim.round_seen(&["ok", "ok"], &[R1_UP, R2_UP]);
    assert_eq!((v, resolved(&changes)), (Up, vec![Coverage]));
}

#[test]
fn a_silent_region_with_a_connected_agent_opens_coverage_after_coverage_rounds() {
    let mut sim = Sim::new(3, policy(Majority));
    let agents: &[&[&str]] = &[R1_UP, R2_UP, &["agent-3:up"]];
    assert_eq!(
        opened(&sim.round_seen(&["ok", "ok", "missing"], agents).1),
        vec![]
    );
    assert_eq!(
        opened(&sim.round_seen(&["ok", "ok", "missing"], agents).1),
        vec![]
    );
    let (v, changes) = sim.round_seen(&["ok", "ok", "missing"], agents);
    assert_eq!(
        (v, opened(&changes)),
        (Up, vec![Coverage]),
        "up without r3 still leaves r3 blind"
    );
    assert!(
        opened_incident(&changes, Coverage)
            .summary
            .contains("3 rounds in a row without a report")
    );
    assert!(
        opened_incident(&changes, Coverage)
            .summary
            .contains("agent agent-3 connected")
    );
}

#[test]
fn rounds_the_coordinator_could_not_watch_never_count_and_severity_is_configurable() {
    let mut p = policy(Majority);
    p.coverage_rounds = 2;
    p.coverage_severity = Severity::Critical;
    let mut sim = Sim::new(2, p);
    // Decided without knowing the agents (for a time the coordinator was down).
    assert_eq!(opened(&sim.rounds(5, &["ok", "missing"])), vec![]);
    let up: &[&[&str]] = &[R1_UP, R2_UP];
    assert_eq!(opened(&sim.round_seen(&["ok", "missing"], up).1), vec![]);
    let (_, changes) = sim.round_seen(&["ok", "missing"], up);
    assert_eq!(
        opened_incident(&changes, Coverage).severity,
        Severity::Critical
    );
    assert_eq!(
        resolved(&sim.round_seen(&["ok", "ok"], up).1),
        vec![Coverage]
    );
}

#[test]
fn every_region_that_is_not_ok_says_why() {
    let mut sim = Sim::new(4, policy(Count(4)));
    sim.round_seen(
        &[
            "ok",
            "missing",
            "fail:smtp.rcpt_to:permanent:550:5.1.1",
            "degraded",
        ],
        &[
            R1_UP,
            &["agent-2:down@2", "agent-9:down@1"],
            &["agent-3:up"],
            &["agent-4:up"],
        ],
    );
    let detail = |i: usize| sim.last().regions[i].detail.clone();
    assert_eq!(detail(0), None);
    assert_eq!(
        detail(1).unwrap(),
        "no report from r2 yet (agent agent-2 disconnected 13:57 UTC, agent agent-9 disconnected 13:56 UTC)"
    );
    assert_eq!(
        detail(2).unwrap(),
        "fails at smtp.rcpt_to with 550 5.1.1 'failed' (permanent)"
    );
    assert_eq!(detail(3).unwrap(), "imap certificate expires in 9 days");
    assert_eq!(sim.last().regions[1].agents_connected, Some(0));
    assert!(
        sim.last()
            .note
            .contains("missing: no report from r2 yet (agent agent-2 disconnected"),
        "{}",
        sim.last().note
    );
}

#[test]
fn a_drifting_agent_clock_opens_a_clock_incident_until_it_is_back_within_the_bound() {
    let mut sim = Sim::new(2, policy(Majority));
    let (_, changes) = sim.round_seen(&["ok", "ok"], &[&["agent-1:up:skew=29000"], R2_UP]);
    assert_eq!(opened(&changes), vec![], "29 s is inside the 30 s bound");
    let (_, changes) = sim.round_seen(&["ok", "ok"], &[&["agent-1:up:skew=-45000"], R2_UP]);
    let i = opened_incident(&changes, Clock);
    assert_eq!((i.key.as_str(), i.severity), ("r1", Severity::Warning));
    assert!(i.summary.starts_with("The clock of agent agent-1 (r1) is 45.0 s behind the coordinator's, more than the 30s allowed."), "{}", i.summary);
    assert_eq!(sim.last().regions[0].clock_skew_ms, Some(-45_000));
    assert_eq!(
        opened(
            &sim.round_seen(&["ok", "ok"], &[&["agent-1:up:skew=-46000"], R2_UP])
                .1
        ),
        vec![]
    );
    let (_, changes) = sim.round_seen(&["ok", "ok"], &[&["agent-1:up:skew=100"], R2_UP]);
    assert_eq!(resolved(&changes), vec![Clock]);
}

#[test]
fn coverage_streaks_and_open_incidents_survive_a_restart() {
    let mut sim = Sim::new(2, policy(Majority));
    let up: &[&[&str]] = &[R1_UP, R2_UP];
    sim.round_seen(&["ok", "ok"], up);
    sim.round_seen(&["ok", "missing"], up);
    sim.round_seen(&["ok", "missing"], up);
    // A restarted judge replays the stored verdicts: one more silent round opens it.
    let mut again = CheckJudge::new(
        "corp",
        &["r1".into(), "r2".into()],
        policy(Majority),
        &json!({}),
    );
    again.restore(&sim.verdicts, &[]);
    let start = sim.start_ms();
    let reports = with_regions(vec![report("ok"), None]);
    let (_, changes) = again.judge_with(sim.round, start, &reports, &agents_of(up), start + 30_000);
    assert_eq!(opened(&changes), vec![Coverage]);
    assert!(
        opened_incident(&changes, Coverage)
            .summary
            .contains("no report from r2 since 13:55 UTC")
    );
}

#[test]
fn a_region_removed_from_the_check_resolves_its_coverage_incident() {
    let mut sim = Sim::new(2, policy(Majority));
    let (_, changes) = sim.round_seen(&["ok", "missing"], &[R1_UP, &["agent-2:down@0"]]);
    assert_eq!(opened(&changes), vec![Coverage]);
    sim.judge
        .reconfigure(&["r1".into()], policy(Majority), &json!({}));
    let (_, changes) = sim.round_seen(&["ok"], &[R1_UP]);
    assert_eq!(resolved(&changes), vec![Coverage]);
}
