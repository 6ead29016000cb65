//! The SPF lookup budget (RFC 7208 §4.6.4).
//!
//! Receivers evaluating SPF may make at most 10 DNS-querying terms
//! (`include`, `a`, `mx`, `ptr`, `exists`, `redirect`), recursively, and at
//! most 2 of those may come back empty ("void"); past that the verdict is
//! `permerror` and DMARC loses its SPF leg. Records grow by accretion (one
//! more `include:` for the new newsletter vendor) until they tip over, so
//! mailloop walks the record and counts.

use crate::dns::{Answer, Dns};
use mailloop_common::SpfBudget;
use std::future::Future;
use std::pin::Pin;

/// RFC 7208's limit on DNS-querying terms.
pub const LOOKUP_LIMIT: u32 = 10;
/// RFC 7208's limit on void lookups.
pub const VOID_LIMIT: u32 = 2;
/// The walk stops counting here: far past any verdict, bounded work.
const WALK_CAP: u32 = 40;

/// Walks `domain`'s SPF record and counts its lookups.
pub async fn walk(dns: &Dns, domain: &str) -> SpfBudget {
    let mut w = Walk { dns, lookups: 0, void: 0, chain: Vec::new(), stack: Vec::new(), error: None };
    w.domain(domain.trim_end_matches('.').to_ascii_lowercase(), true).await;
    SpfBudget {
        domain: domain.to_string(),
        lookups: w.lookups,
        void_lookups: w.void,
        limit: LOOKUP_LIMIT,
        chain: w.chain,
        error: w.error,
    }
}

struct Walk<'a> {
    dns: &'a Dns,
    lookups: u32,
    void: u32,
    chain: Vec<String>,
    /// Domains on the current include path, for loop detection.
    stack: Vec<String>,
    error: Option<String>,
}

impl Walk<'_> {
    fn fail(&mut self, e: String) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    fn domain(&mut self, d: String, top: bool) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            if self.stack.contains(&d) {
                let path = [self.stack.as_slice(), &[d.clone()]].concat().join(" → ");
                self.fail(format!("include loop: {path}"));
                return;
            }
            if self.lookups > WALK_CAP {
                return;
            }
            self.chain.push(d.clone());
            let records = match self.dns.txt(&d).await {
                Answer::Records(r) => r,
                Answer::Void => {
                    if top {
                        self.fail(format!("{d} has no TXT record, so no SPF record (receivers answer spf=none)"));
                    } else {
                        self.void += 1;
                        self.fail(format!("{d} has no TXT record (an include of it is a permerror)"));
                    }
                    return;
                }
                Answer::Error(e) => {
                    self.fail(format!("DNS error reading {d}: {e}"));
                    return;
                }
            };
            let spf: Vec<&String> = records
                .iter()
                .filter(|r| {
                    let l = r.to_ascii_lowercase();
                    l == "v=spf1" || l.starts_with("v=spf1 ")
                })
                .collect();
            let record = match spf.as_slice() {
                [one] => (*one).clone(),
                [] => {
                    self.fail(format!("{d} has no SPF record"));
                    return;
                }
                _ => {
                    self.fail(format!("{d} has {} SPF records (a permerror)", spf.len()));
                    return;
                }
            };
            self.stack.push(d.clone());
            let mut redirect = None;
            let mut has_all = false;
            for term in record.split_whitespace().skip(1) {
                let term = term.trim_start_matches(['+', '-', '~', '?']);
                let lower = term.to_ascii_lowercase();
                let (name, arg) = match lower.find([':', '=', '/']) {
                    Some(i) => (&lower[..i], Some((&term[i..i + 1], &term[i + 1..]))),
                    None => (lower.as_str(), None),
                };
                let target = |arg: Option<(&str, &str)>| match arg {
                    Some((":", t)) | Some(("=", t)) => t.split('/').next().unwrap_or(t).to_ascii_lowercase(),
                    _ => d.clone(),
                };
                match name {
                    "include" => {
                        self.lookups += 1;
                        let t = target(arg);
                        if !t.contains('%') {
                            self.domain(t, false).await;
                        }
                    }
                    "a" | "exists" => {
                        self.lookups += 1;
                        let t = target(arg);
                        if !t.contains('%') {
                            self.count_void(self.dns.has_address(&t).await, &t);
                        }
                    }
                    "mx" => {
                        self.lookups += 1;
                        let t = target(arg);
                        if !t.contains('%') {
                            self.count_void(self.dns.mx(&t).await, &t);
                        }
                    }
                    "ptr" => self.lookups += 1,
                    "redirect" => redirect = Some(target(arg)),
                    "all" => has_all = true,
                    _ => {}
                }
            }
            // redirect= applies only when no "all" mechanism matched first.
            if let (Some(t), false) = (redirect, has_all) {
                self.lookups += 1;
                if !t.contains('%') {
                    self.domain(t, false).await;
                }
            }
            self.stack.pop();
        })
    }

    fn count_void<T>(&mut self, answer: Answer<T>, name: &str) {
        match answer {
            Answer::Records(_) => {}
            Answer::Void => self.void += 1,
            Answer::Error(e) => self.fail(format!("DNS error looking up {name}: {e}")),
        }
    }
}

/// What the budget means for the probe: `Err` (a failure message) past the
/// limits, `Ok(Some(reason))` near them, `Ok(None)` when fine.
pub fn verdict(b: &SpfBudget) -> Result<Option<String>, String> {
    if let Some(e) = b.error.as_deref().filter(|e| e.starts_with("include loop")) {
        return Err(format!("SPF record of {}: {e} (permerror)", b.domain));
    }
    if b.lookups > LOOKUP_LIMIT {
        return Err(format!(
            "SPF record of {} needs {} DNS lookups, over the limit of {LOOKUP_LIMIT}: receivers return permerror",
            b.domain, b.lookups
        ));
    }
    if b.void_lookups > VOID_LIMIT {
        return Err(format!(
            "SPF record of {} makes {} void lookups, over the limit of {VOID_LIMIT}: receivers return permerror",
            b.domain, b.void_lookups
        ));
    }
    if let Some(e) = &b.error {
        return Ok(Some(format!("SPF walk of {}: {e}", b.domain)));
    }
    if b.lookups + 1 >= LOOKUP_LIMIT {
        return Ok(Some(format!(
            "SPF record of {} needs {} of {LOOKUP_LIMIT} DNS lookups: one more include tips it into permerror",
            b.domain, b.lookups
        )));
    }
    Ok(None)
}
