//! The placement and reputation rules (issue 19), pure: one region list per
//! round in a compact notation, no clock.
//!
//! - `inbox`: delivered to the inbox, low spam score;
//! - `junk`: delivered to the junk folder `Junk`, SpamAssassin says spam
//!   (score 1000 over 5, rule GTUBE), so the agent said `degraded`;
//! - `listed` / `clean`: inbox, and the blocklist lookup of 127.0.0.1 in
//!   `dnsbl.test` found a listing / none;
//! - `fail`: not delivered; `missing`: no report.

use mailloop_common::reputation::{Lookup, ReputationReport, Subject};
use mailloop_common::spam::{JUNK_REASON, SpamReport};
use mailloop_common::{Outcome, ProbeReport, StepName, StepReport};
use mailloop_coordinator::judge::config::JudgeSettings;
use mailloop_coordinator::judge::*;
use serde_json::json;

const START_MS: i64 = 1_795_787_700_000;

fn report(spec: &str) -> Option<ProbeReport> {
    let mut r: ProbeReport = serde_json::from_value(json!({
        "probe_id": "ml-test", "check": "corp", "started_at": "2026-11-27T13:55:00Z",
        "outcome": "ok", "rtt_ms": 70.0, "delivery_ms": 20.0, "steps": [],
        "failure": null, "message_id": "<m@test>", "queue_id": null,
    }))
    .unwrap();
    r.steps.push(StepReport { name: StepName::ImapWait, ms: 20.0, ok: true, code: None, detail: None, start_ms: 0.0 });
    let spam = |is_spam: bool, score: f64, rules: &[&str]| SpamReport {
        filters: vec!["spamassassin".into()],
        is_spam: Some(is_spam),
        score: Some(score),
        threshold: Some(5.0),
        rules: rules.iter().map(|s| s.to_string()).collect(),
        trusted: true,
        ..SpamReport::default()
    };
    let lookup = |listed: bool| ReputationReport {
        addresses: vec!["127.0.0.1".into()],
        address_source: Some("received".into()),
        domains: vec![],
        lookups: vec![Lookup {
            zone: "dnsbl.test".into(),
            subject: Subject::Address,
            name: "127.0.0.1".into(),
            listed,
            codes: if listed { vec!["127.0.0.2".into()] } else { vec![] },
            lists: if listed { vec!["listed".into()] } else { vec![] },
            reason: listed.then(|| "test listing".into()),
            error: None,
            cached: false,
        }],
        notes: vec![],
    };
    match spec {
        "missing" => return None,
        "inbox" | "listed" | "clean" => {
            r.placement = Some("inbox".into());
            r.spam = Some(spam(false, 0.1, &["ALL_TRUSTED"]));
            if spec != "inbox" {
                r.reputation = Some(lookup(spec == "listed"));
            }
        }
        "junk" => {
            r.outcome = Outcome::Degraded;
            r.placement = Some("junk".into());
            r.placement_folder = Some("Junk".into());
            r.spam = Some(spam(true, 1000.0, &["GTUBE", "NO_RELAYS"]));
            r.reasons.push(format!("{JUNK_REASON} \"Junk\" (SpamAssassin: spam, score 1000.0 > 5.0, rules GTUBE)"));
        }
        "fail" => {
            r.outcome = Outcome::Failed;
            r.rtt_ms = None;
            r.failure = Some(serde_json::from_value(json!({
                "step": "imap.wait", "class": "not_delivered", "code": null, "enhanced": null,
                "message": "not found", "raw": null})).unwrap());
        }
        _ => panic!("bad notation {spec}"),
    }
    Some(r)
}

struct Sim {
    judge: CheckJudge,
    round: u64,
    open: Vec<Incident>,
    verdicts: Vec<VerdictKind>,
}

impl Sim {
    fn new(n: usize) -> Sim {
        let regions: Vec<String> = (1..=n).map(|i| format!("r{i}")).collect();
        let policy = JudgeSettings::default().policy; // placement_rounds 2, resolve_rounds 2
        Sim { judge: CheckJudge::new("corp", &regions, policy, &json!({})), round: 0, open: vec![], verdicts: vec![] }
    }

    fn round(&mut self, specs: &[&str]) -> Vec<IncidentChange> {
        let reports: Vec<RegionReport> = specs
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                report(s).map(|report| RegionReport { region: format!("r{}", i + 1), agent: format!("a{}", i + 1), report })
            })
            .collect();
        let start = START_MS + self.round as i64 * 60_000;
        let (v, changes) = self.judge.judge(self.round, start, &reports, start + 30_000);
        self.round += 1;
        self.verdicts.push(v.verdict);
        for c in &changes {
            match c {
                IncidentChange::Open(i) => self.open.push(i.clone()),
                IncidentChange::Resolve { kind, key, .. } => self.open.retain(|i| !(i.kind == *kind && &i.key == key)),
                IncidentChange::Update { kind, summary: Some(s), regions, .. } => {
                    let i = self.open.iter_mut().find(|i| i.kind == *kind).unwrap();
                    i.summary = s.clone();
                    if let Some(r) = regions {
                        i.regions = r.clone();
                    }
                }
                IncidentChange::Update { .. } => {}
            }
        }
        changes
    }

    fn kinds(&self) -> Vec<IncidentKind> {
        self.open.iter().map(|i| i.kind).collect()
    }

    fn get(&self, kind: IncidentKind) -> &Incident {
        self.open.iter().find(|i| i.kind == kind).unwrap_or_else(|| panic!("no open {kind:?}: {:?}", self.kinds()))
    }
}

#[test]
fn junk_everywhere_opens_a_placement_incident_after_placement_rounds_never_a_performance_one() {
    let mut s = Sim::new(3);
    s.round(&["junk", "junk", "junk"]);
    assert_eq!(s.kinds(), vec![], "one round is not enough (placement_rounds 2)");
    s.round(&["junk", "junk", "junk"]);
    assert_eq!(s.kinds(), vec![IncidentKind::Placement]);
    let i = s.get(IncidentKind::Placement);
    assert_eq!((i.severity, i.regions.clone()), (Severity::Warning, vec!["r1".into(), "r2".into(), "r3".into()]));
    assert_eq!(
        i.summary,
        "Probe filed as spam since 13:55 UTC, in every region that reported (r1, r2, r3): the receiver judges \
         the message or the sending domain, not one path; read the triggered rules first. Evidence: r1: Junk \
         (spamassassin: spam; score 1000.0 over 5.0; rules GTUBE, NO_RELAYS); r2: Junk (spamassassin: spam; \
         score 1000.0 over 5.0; rules GTUBE, NO_RELAYS); r3: Junk (spamassassin: spam; score 1000.0 over 5.0; \
         rules GTUBE, NO_RELAYS)."
    );
    assert_eq!(i.timeline.len(), 2, "{:#?}", i.timeline);
    for _ in 0..3 {
        s.round(&["junk", "junk", "junk"]);
    }
    assert_eq!(s.kinds(), vec![IncidentKind::Placement], "degraded by junk only is no performance incident");
    assert!(s.verdicts.iter().all(|v| *v == VerdictKind::Degraded), "{:?}", s.verdicts);
}

#[test]
fn one_regions_path_in_junk_is_named_as_that_regions_path() {
    let mut s = Sim::new(3);
    s.round(&["junk", "inbox", "inbox"]);
    s.round(&["junk", "inbox", "missing"]);
    let i = s.get(IncidentKind::Placement);
    assert_eq!(i.regions, vec!["r1".to_string()]);
    assert!(i.summary.contains("only in r1 while r2 reaches the inbox: that region's sending path"), "{}", i.summary);
    // r3 lands in junk too: the summary and regions follow
    s.round(&["junk", "inbox", "junk"]);
    let i = s.get(IncidentKind::Placement);
    assert_eq!(i.regions, vec!["r1".to_string(), "r3".to_string()]);
    assert!(i.summary.contains("only in r1, r3 while r2 reach"), "{}", i.summary);
}

#[test]
fn the_inbox_for_resolve_rounds_resolves_it_and_unknown_rounds_do_not_count() {
    let mut s = Sim::new(2);
    s.round(&["junk", "junk"]);
    s.round(&["junk", "junk"]);
    assert_eq!(s.kinds(), vec![IncidentKind::Placement]);
    s.round(&["inbox", "fail"]);
    s.round(&["missing", "fail"]);
    s.round(&["fail", "fail"]);
    assert!(s.kinds().contains(&IncidentKind::Placement), "no placement known: does not count");
    let changes = s.round(&["inbox", "inbox"]);
    assert!(
        changes.iter().any(|c| matches!(c, IncidentChange::Resolve { kind: IncidentKind::Placement, .. })),
        "{changes:#?}"
    );
}

#[test]
fn an_interrupted_streak_opens_nothing() {
    let mut s = Sim::new(1);
    for _ in 0..4 {
        s.round(&["junk"]);
        s.round(&["inbox"]);
    }
    assert_eq!(s.kinds(), vec![]);
}

#[test]
fn a_listing_opens_a_reputation_incident_at_once_and_clean_rounds_resolve_it() {
    let mut s = Sim::new(2);
    s.round(&["clean", "clean"]);
    assert_eq!(s.kinds(), vec![]);
    s.round(&["listed", "inbox"]);
    let i = s.get(IncidentKind::Reputation);
    assert_eq!(i.regions, vec!["r1".to_string()]);
    assert_eq!(
        i.summary,
        "The sending path is on a blocklist since 13:56 UTC: 127.0.0.1 listed in dnsbl.test (listed, \
         127.0.0.2: \"test listing\") seen by r1. Receivers that consult these lists file or refuse the \
         mail; check the listing's reason, fix its cause, then request delisting from the list."
    );
    s.round(&["listed", "listed"]);
    assert_eq!(s.get(IncidentKind::Reputation).regions, vec!["r1".to_string(), "r2".to_string()]);
    s.round(&["inbox", "missing"]);
    s.round(&["clean", "inbox"]);
    assert_eq!(s.kinds(), vec![IncidentKind::Reputation], "1 of 2 clean rounds; a round without lookups does not count");
    s.round(&["clean", "clean"]);
    assert_eq!(s.kinds(), vec![]);
}

#[test]
fn the_evidence_carries_placement_spam_and_listings_for_the_api() {
    let mut s = Sim::new(2);
    let reports = vec![
        RegionReport { region: "r1".into(), agent: "a1".into(), report: report("junk").unwrap() },
        RegionReport { region: "r2".into(), agent: "a2".into(), report: report("listed").unwrap() },
    ];
    let (v, _) = s.judge.judge(0, START_MS, &reports, START_MS + 1);
    let j = serde_json::to_value(&v).unwrap();
    assert_eq!(j["regions"][0]["placement"], "junk");
    assert_eq!(j["regions"][0]["placement_folder"], "Junk");
    assert_eq!(j["regions"][0]["spam"]["score"], 1000.0);
    assert_eq!(j["regions"][0]["spam"]["rules"], json!(["GTUBE", "NO_RELAYS"]));
    assert_eq!(j["regions"][1]["placement"], "inbox");
    assert_eq!(j["regions"][1]["reputation"]["lookups"][0]["listed"], true);
    // stored verdicts from before these fields still read
    let mut old = j.clone();
    for e in old["regions"].as_array_mut().unwrap() {
        for k in ["placement", "placement_folder", "spam", "reputation"] {
            e.as_object_mut().unwrap().remove(k);
        }
    }
    let back: Verdict = serde_json::from_value(old).unwrap();
    assert_eq!(back.regions[0].placement, None);
}
