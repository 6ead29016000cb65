//! Where the probe lands and whether the sender is listed: the
//! **placement** and **reputation** incidents.
//!
//! - **placement** (warning, key empty): a round in which at least one
//!   region's probe was found in a junk folder counts; `placement_rounds`
//!   such rounds in a row open the incident, naming the regions whose probe
//!   is in junk and, as evidence, each one's folder and spam verdict
//!   (filter, score over threshold, rules). When only some of the regions
//!   that reported are in junk the summary says it is those regions'
//!   sending path, not the message. A round in which no reporting region is
//!   in junk (and at least one was found in its inbox) counts toward
//!   resolving: `resolve_rounds` of them resolve it. Rounds in which no
//!   region's placement is known (all failed or missing) neither extend nor
//!   end a streak. Junk placement alone does not count toward a
//!   performance incident (see `performance` in `incident.rs`).
//! - **reputation** (warning, key empty): opens in the first round in which
//!   any region's blocklist lookups find a listing (address or domain),
//!   naming the listings and the regions that saw them; a changed set of
//!   listings updates the summary. Resolved after `resolve_rounds` rounds
//!   with lookups and no listing. Rounds without lookups (failed, missing,
//!   nothing configured) do not count.

use super::{IncidentBook, entry};
use crate::judge::model::{
    IncidentChange, IncidentKind, Policy, RegionEvidence, Severity, TimelineEntry, Verdict,
};
use crate::judge::summary::fmt_time;

/// The two rules' streaks.
#[derive(Debug, Clone, Default)]
pub(super) struct PlacementState {
    /// Rounds in a row with some region in junk.
    junk_rounds: u32,
    junk_since_ms: i64,
    junk_entries: Vec<TimelineEntry>,
    junk_sig: String,
    /// Rounds in a row with placements known and none in junk.
    inbox_rounds: u32,
    listing_sig: String,
    /// Rounds in a row with lookups and no listing.
    clean_rounds: u32,
}

/// True for a region degraded by its junk placement and nothing else.
pub(super) fn junk_only(e: &RegionEvidence) -> bool {
    e.placement.as_deref() == Some("junk")
        && e.slow.is_empty()
        && e
            .reasons
            .iter()
            .all(|r| r.starts_with(mailloop_common::spam::JUNK_REASON))
}

/// `Junk (SpamAssassin: spam, score 1000.0 over 5.0; rules GTUBE, ...)`.
pub fn junk_evidence(e: &RegionEvidence) -> String {
    let folder = e.placement_folder.as_deref().unwrap_or("a junk folder");
    let Some(s) = &e.spam else {
        return format!("{folder} (no spam verdict header)");
    };
    let mut parts = Vec::new();
    let filter = if s.filters.is_empty() {
        "filter".to_string()
    } else {
        s.filters.join("+")
    };
    let verdict = match s.is_spam {
        Some(true) => "spam",
        Some(false) => "not spam",
        None => "no yes/no",
    };
    parts.push(format!("{filter}: {verdict}"));
    match (s.score, s.threshold) {
        (Some(sc), Some(th)) => parts.push(format!("score {sc:.1} over {th:.1}")),
        (Some(sc), None) => parts.push(format!("score {sc:.1}")),
        _ => {}
    }
    if let Some(scl) = s.scl {
        parts.push(format!("SCL {scl}"));
    }
    if !s.rules.is_empty() {
        parts.push(format!("rules {}", s.rules.join(", ")));
    }
    if !s.trusted {
        parts.push("not vouched for by the trusted receiver".into());
    }
    format!("{folder} ({})", parts.join("; "))
}

/// The placement incident's summary.
pub fn placement_summary(junk: &[&RegionEvidence], inbox: &[&RegionEvidence], since_ms: i64) -> String {
    let names: Vec<&str> = junk.iter().map(|e| e.region.as_str()).collect();
    let evidence: Vec<String> = junk
        .iter()
        .map(|e| format!("{}: {}", e.region, junk_evidence(e)))
        .collect();
    let scope = if inbox.is_empty() {
        format!(
            "in every region that reported ({}): the receiver judges the message or the sending \
             domain, not one path; read the triggered rules first",
            names.join(", ")
        )
    } else {
        let good: Vec<&str> = inbox.iter().map(|e| e.region.as_str()).collect();
        format!(
            "only in {} while {} {} the inbox: that region's sending path is judged (its \
             submission server's address and reputation, relay, DKIM signer); compare the \
             triggered rules with an inbox region's",
            names.join(", "),
            good.join(", "),
            if good.len() == 1 { "reaches" } else { "reach" }
        )
    };
    format!(
        "Probe filed as spam since {}, {scope}. Evidence: {}.",
        fmt_time(since_ms),
        evidence.join("; ")
    )
}

/// `127.0.0.1 in dnsbl.test (listed, 127.0.0.2: "reason") seen by r1, r2`.
pub fn listing_text(zone: &str, name: &str, codes: &[String], lists: &[String], reason: Option<&str>) -> String {
    let mut s = format!("{name} listed in {zone} ({}", lists.join(", "));
    if !codes.is_empty() {
        s.push_str(&format!(", {}", codes.join(" ")));
    }
    if let Some(r) = reason {
        s.push_str(&format!(": {:?}", crate::judge::summary::short_text(r, 120)));
    }
    s.push(')');
    s
}

/// Every listing of a round, once per zone and name, with the regions that saw it.
fn listings(v: &Verdict) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for e in &v.regions {
        let Some(rep) = &e.reputation else { continue };
        for l in rep.listed() {
            let text = listing_text(&l.zone, &l.name, &l.codes, &l.lists, l.reason.as_deref());
            match out.iter_mut().find(|(t, _)| *t == text) {
                Some((_, regions)) if !regions.contains(&e.region) => regions.push(e.region.clone()),
                Some(_) => {}
                None => out.push((text, vec![e.region.clone()])),
            }
        }
    }
    out.sort();
    out
}

impl IncidentBook {
    pub(super) fn placement(&mut self, v: &Verdict, policy: &Policy, changes: &mut Vec<IncidentChange>) {
        let kind = IncidentKind::Placement;
        let junk: Vec<&RegionEvidence> = v
            .regions
            .iter()
            .filter(|e| e.placement.as_deref() == Some("junk"))
            .collect();
        let inbox: Vec<&RegionEvidence> = v
            .regions
            .iter()
            .filter(|e| e.placement.as_deref() == Some("inbox"))
            .collect();
        let open = self.is_open(kind, "");
        let st = &mut self.placement;
        if !junk.is_empty() {
            if st.junk_rounds == 0 {
                st.junk_since_ms = v.round_start_ms;
                st.junk_entries.clear();
            }
            st.junk_rounds += 1;
            st.inbox_rounds = 0;
            let names: Vec<String> = junk.iter().map(|e| e.region.clone()).collect();
            let note = format!(
                "in junk: {}",
                junk.iter()
                    .map(|e| format!("{} {}", e.region, junk_evidence(e)))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            if st.junk_entries.len() < policy.placement_rounds.max(1) as usize {
                st.junk_entries.push(entry(v, "round", note.clone()));
            }
            let sig = format!(
                "{}|{}",
                names.join(","),
                inbox.iter().map(|e| e.region.as_str()).collect::<Vec<_>>().join(",")
            );
            let changed = sig != st.junk_sig;
            st.junk_sig = sig;
            let summary = placement_summary(&junk, &inbox, st.junk_since_ms);
            let (rounds, timeline) = (st.junk_rounds, st.junk_entries.clone());
            if open {
                if changed {
                    self.update(changes, kind, "", entry(v, "round", note), Some(summary), Some(names));
                }
            } else if rounds >= policy.placement_rounds.max(1) {
                let step = Some("imap.wait".to_string());
                self.open(
                    changes,
                    v,
                    kind,
                    String::new(),
                    Severity::Warning,
                    names,
                    step,
                    None,
                    summary,
                    timeline,
                );
            }
        } else if !inbox.is_empty() {
            st.junk_rounds = 0;
            st.junk_sig.clear();
            st.inbox_rounds += 1;
            let n = st.inbox_rounds;
            if open {
                let need = policy.resolve_rounds.max(1);
                let regions: Vec<&str> = inbox.iter().map(|e| e.region.as_str()).collect();
                if n >= need {
                    let note = format!("back in the inbox for {n} rounds ({})", regions.join(", "));
                    self.resolve(changes, kind, "", entry(v, "resolved", note));
                } else {
                    let note = format!("in the inbox ({}; {n} of {need} to resolve)", regions.join(", "));
                    self.update(changes, kind, "", entry(v, "round", note), None, None);
                }
            }
        }
    }

    pub(super) fn reputation(&mut self, v: &Verdict, policy: &Policy, changes: &mut Vec<IncidentChange>) {
        let kind = IncidentKind::Reputation;
        let looked = v
            .regions
            .iter()
            .any(|e| e.reputation.as_ref().is_some_and(|r| !r.lookups.is_empty()));
        if !looked {
            return;
        }
        let found = listings(v);
        let open = self.is_open(kind, "");
        let st = &mut self.placement;
        if found.is_empty() {
            st.listing_sig.clear();
            st.clean_rounds += 1;
            let n = st.clean_rounds;
            if open {
                let need = policy.resolve_rounds.max(1);
                if n >= need {
                    let note = format!("no blocklist lists the sending path for {n} rounds");
                    self.resolve(changes, kind, "", entry(v, "resolved", note));
                } else {
                    let note = format!("not listed ({n} of {need} to resolve)");
                    self.update(changes, kind, "", entry(v, "round", note), None, None);
                }
            }
            return;
        }
        st.clean_rounds = 0;
        let texts: Vec<String> = found
            .iter()
            .map(|(t, regions)| format!("{t} seen by {}", regions.join(", ")))
            .collect();
        let sig = texts.join("; ");
        let changed = sig != st.listing_sig;
        st.listing_sig = sig.clone();
        let mut regions: Vec<String> = found.iter().flat_map(|(_, r)| r.iter().cloned()).collect();
        regions.sort();
        regions.dedup();
        let since = if open {
            self.open[&(kind, String::new())]
                .timeline
                .first()
                .map_or(v.round_start_ms, |e| e.at_ms)
        } else {
            v.round_start_ms
        };
        let summary = format!(
            "The sending path is on a blocklist since {}: {sig}. Receivers that consult these \
             lists file or refuse the mail; check the listing's reason, fix its cause, then \
             request delisting from the list.",
            fmt_time(since)
        );
        let note = format!("listed: {sig}");
        if open {
            if changed {
                self.update(changes, kind, "", entry(v, "round", note), Some(summary), Some(regions));
            }
        } else {
            let timeline = vec![entry(v, "opened", note)];
            self.open(
                changes,
                v,
                kind,
                String::new(),
                Severity::Warning,
                regions,
                None,
                None,
                summary,
                timeline,
            );
        }
    }
}
