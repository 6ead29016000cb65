//! Blocklist lookups of the sending path (`[check.blocklists]`): the
//! address that entered the receiver (or the configured ones) in each DNSBL
//! zone, the sending domain in each DBL zone, through the agent's resolver.
//!
//! Lists' terms limit how often they may be asked, so every answer is kept
//! in one cache per agent process, keyed by zone and name, for the longer
//! of the answer's TTL and the check's `interval`: a zone is asked about one
//! name at most once per interval whatever the round interval and however
//! many checks share it. Errors are kept for the interval too (a list that
//! refused us is not asked again at once). Decoding is
//! `mailloop_common::reputation`'s.

use crate::dns::{Answer, Dns};
use mailloop_common::config::Blocklists;
use mailloop_common::reputation::{Lookup, ReputationReport, Subject, decode, query_name};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{LazyLock, Mutex};
use std::time::Instant;

type Key = (String, Subject, String);
static CACHE: LazyLock<Mutex<HashMap<Key, (Instant, Lookup)>>> = LazyLock::new(Default::default);

/// Looks up (or recalls) every configured zone for the path's addresses
/// and domains. `entering`: the address of the hop that entered the
/// receiver, used when no addresses are configured.
pub async fn check(cfg: &Blocklists, dns: &Dns, entering: Option<IpAddr>) -> ReputationReport {
    let mut r = ReputationReport::default();
    let (addresses, source) = if cfg.addresses.is_empty() {
        (entering.into_iter().collect::<Vec<_>>(), "received")
    } else {
        (cfg.addresses.clone(), "config")
    };
    if !cfg.dnsbl.is_empty() {
        if addresses.is_empty() {
            r.notes.push("no address to look up: no Received header of the delivered probe names one; set blocklists.addresses".into());
        } else {
            r.address_source = Some(source.into());
        }
    }
    r.addresses = addresses.iter().map(IpAddr::to_string).collect();
    r.domains = cfg.domains.clone();
    let mut jobs: Vec<(String, Subject, String)> = Vec::new();
    for zone in &cfg.dnsbl {
        for a in &r.addresses {
            jobs.push((zone.clone(), Subject::Address, a.clone()));
        }
    }
    for zone in &cfg.dbl {
        for d in &cfg.domains {
            jobs.push((zone.clone(), Subject::Domain, d.clone()));
        }
    }
    for (zone, subject, name) in jobs {
        let key = (zone.clone(), subject, name.clone());
        let now = Instant::now();
        if let Ok(cache) = CACHE.lock()
            && let Some((until, l)) = cache.get(&key)
            && *until > now
        {
            let mut l = l.clone();
            l.cached = true;
            r.lookups.push(l);
            continue;
        }
        let (l, ttl_until) = lookup(dns, &zone, subject, &name).await;
        let until = ttl_until.map_or(now + cfg.interval, |t| t.max(now + cfg.interval));
        if let Ok(mut cache) = CACHE.lock() {
            cache.retain(|_, (u, _)| *u > now);
            cache.insert(key, (until, l.clone()));
        }
        r.lookups.push(l);
    }
    r
}

async fn lookup(dns: &Dns, zone: &str, subject: Subject, name: &str) -> (Lookup, Option<Instant>) {
    let mut l = Lookup {
        zone: zone.to_string(),
        subject,
        name: name.to_string(),
        listed: false,
        codes: Vec::new(),
        lists: Vec::new(),
        reason: None,
        error: None,
        cached: false,
    };
    let Some(q) = query_name(subject, name, zone) else {
        l.error = Some(format!("{name:?} cannot be looked up in {zone}"));
        return (l, None);
    };
    let (answer, until) = dns.a_records(&q).await;
    match answer {
        Answer::Void => {}
        Answer::Error(e) => l.error = Some(format!("{q}: {e}")),
        Answer::Records(codes) => {
            let d = decode(zone, &codes);
            l.codes = codes.iter().map(ToString::to_string).collect();
            l.listed = d.listed;
            l.lists = d.lists;
            l.error = d.error;
            if l.listed {
                l.reason = match dns.txt(&q).await {
                    Answer::Records(t) => Some(t.join(" ")),
                    _ => None,
                };
            }
        }
    }
    (l, until)
}
