//! Blocklists: the sending path's address in DNSBL zones (`zen.spamhaus.org`
//! style: the address's octets reversed under the zone) and the sending
//! domain in domain blocklists (DBL style: the domain under the zone).
//!
//! Pure: the query names, the decoding of the answer codes (which list, or
//! an error code that is *not* a listing), and the address of the hop that
//! entered the receiver, read from `Received:` headers (untrusted text, so
//! never a panic: at worst no address). The agent does the lookups
//! (`agent/src/reputation.rs`) through its own resolver.

use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr};

/// What a lookup was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Subject {
    /// An IP address in a DNSBL zone.
    Address,
    /// A domain in a domain blocklist (DBL) zone.
    Domain,
}

/// One lookup of one address or domain in one zone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lookup {
    pub zone: String,
    pub subject: Subject,
    /// The address or domain looked up.
    pub name: String,
    /// True when the zone answered with a listing code.
    pub listed: bool,
    /// The A records the zone answered (empty: not listed).
    pub codes: Vec<String>,
    /// What the codes mean (`SBL`, `XBL`, `spam domain`, ...; `listed` for an
    /// unknown zone's 127.0.0.x).
    pub lists: Vec<String>,
    /// The zone's TXT reason, when listed.
    pub reason: Option<String>,
    /// The lookup could not be answered, or the zone answered with an error
    /// code (a refused resolver, a rate limit): *not* a listing.
    pub error: Option<String>,
    /// Answered from the agent's cache (looked up at most once per zone
    /// and name per interval and TTL), not asked again this round.
    #[serde(default)]
    pub cached: bool,
}

/// The blocklist section of a report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReputationReport {
    /// The addresses looked up, and where they came from (`received` or `config`).
    pub addresses: Vec<String>,
    pub address_source: Option<String>,
    /// The domains looked up.
    pub domains: Vec<String>,
    pub lookups: Vec<Lookup>,
    /// Why an expected lookup did not happen (no address found in the hops).
    #[serde(default)]
    pub notes: Vec<String>,
}

impl ReputationReport {
    /// The lookups that found a listing.
    pub fn listed(&self) -> impl Iterator<Item = &Lookup> {
        self.lookups.iter().filter(|l| l.listed)
    }
}

/// The name to look up: `2.0.0.127.zen.spamhaus.org`, the IPv6 nibbles
/// reversed, or `example.com.dbl.spamhaus.org`.
pub fn query_name(subject: Subject, name: &str, zone: &str) -> Option<String> {
    let zone = zone.trim_end_matches('.');
    match subject {
        Subject::Address => match name.parse::<IpAddr>().ok()? {
            IpAddr::V4(a) => {
                let o = a.octets();
                Some(format!("{}.{}.{}.{}.{zone}", o[3], o[2], o[1], o[0]))
            }
            IpAddr::V6(a) => {
                let hex: String = a.octets().iter().map(|b| format!("{b:02x}")).collect();
                let nibbles: Vec<String> = hex.chars().rev().map(String::from).collect();
                Some(format!("{}.{zone}", nibbles.join(".")))
            }
        },
        Subject::Domain => {
            let d = name.trim_end_matches('.').to_ascii_lowercase();
            let valid = !d.is_empty()
                && d.len() <= 253
                && d.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                });
            valid.then(|| format!("{d}.{zone}"))
        }
    }
}

/// What a zone's answer codes say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub listed: bool,
    pub lists: Vec<String>,
    pub error: Option<String>,
}

/// Decodes the A records a zone answered. Spamhaus's documented return
/// codes are named (ZEN: SBL, SBL CSS, XBL, PBL; DBL: spam, phish, malware,
/// botnet C&C, abused-legit); `127.255.255.x` is Spamhaus's error range
/// (typo in the zone, query through a public resolver, too many queries)
/// and any answer outside 127.0.0.0/8 is not a blocklist answer at all
/// (a wildcarding resolver): both are errors, never listings. Any other
/// 127.x answer of any zone is a listing.
pub fn decode(zone: &str, codes: &[Ipv4Addr]) -> Decoded {
    let zone = zone.trim_end_matches('.').to_ascii_lowercase();
    let spamhaus = zone.ends_with("spamhaus.org") || zone.ends_with("dq.spamhaus.net");
    let mut d = Decoded {
        listed: false,
        lists: Vec::new(),
        error: None,
    };
    let mut errors = Vec::new();
    for c in codes {
        let o = c.octets();
        if o[0] != 127 {
            errors.push(format!("{c} is not a blocklist answer (a resolver that rewrites NXDOMAIN?)"));
            continue;
        }
        if o[1] == 255 && o[2] == 255 {
            errors.push(match o[3] {
                252 => format!("{c}: the zone name is wrong"),
                254 => format!("{c}: the list refuses queries through a public resolver"),
                255 => format!("{c}: too many queries (rate limited)"),
                _ => format!("{c}: an error code of the list"),
            });
            continue;
        }
        let name = if spamhaus { spamhaus_code(o) } else { None };
        let name = name.map_or_else(|| "listed".to_string(), str::to_string);
        d.listed = true;
        if !d.lists.contains(&name) {
            d.lists.push(name);
        }
    }
    if !errors.is_empty() {
        d.error = Some(errors.join("; "));
    }
    d
}

fn spamhaus_code(o: [u8; 4]) -> Option<&'static str> {
    Some(match (o[2], o[3]) {
        (0, 2) => "SBL",
        (0, 3) => "SBL CSS",
        (0, 4..=7) => "XBL",
        (0, 9) => "SBL DROP",
        (0, 10 | 11) => "PBL",
        (1, 2) => "DBL spam domain",
        (1, 4) => "DBL phish domain",
        (1, 5) => "DBL malware domain",
        (1, 6) => "DBL botnet C&C domain",
        (1, 102..=106) => "DBL abused legit domain",
        _ => return None,
    })
}

/// The address of the hop that entered the receiver: the topmost
/// `Received:` header (values newest first) whose `from` clause carries an
/// address literal (`from mail.example (mail.example [192.0.2.1])`). None
/// when no header carries one.
pub fn entering_address(received: &[&str]) -> Option<IpAddr> {
    received.iter().find_map(|v| from_address(v))
}

/// The bracketed address inside a `Received:` value's `from` clause (up to
/// `by`), IPv6 written `[IPv6:…]` or bare.
fn from_address(value: &str) -> Option<IpAddr> {
    let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
    let value = value.as_str();
    let lower = value.to_ascii_lowercase();
    let start = lower.find("from ")?;
    if start > 0 && !lower[..start].trim().is_empty() {
        return None;
    }
    let end = lower[start..]
        .find(" by ")
        .map_or(lower.len(), |i| start + i);
    let clause = &value[start..end];
    let mut rest = clause;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let Some(close) = after.find(']') else { break };
        let inner = &after[..close];
        let inner = inner
            .strip_prefix("IPv6:")
            .or_else(|| inner.strip_prefix("ipv6:"))
            .unwrap_or(inner);
        if let Ok(ip) = inner.parse::<IpAddr>() {
            return Some(ip);
        }
        rest = &after[close + 1..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_names() {
        let q = |s, n, z| query_name(s, n, z);
        assert_eq!(q(Subject::Address, "192.0.2.1", "zen.spamhaus.org").as_deref(), Some("1.2.0.192.zen.spamhaus.org"));
        assert_eq!(q(Subject::Address, "127.0.0.1", "dnsbl.test.").as_deref(), Some("1.0.0.127.dnsbl.test"));
        assert_eq!(
            q(Subject::Address, "2001:db8::1", "z.test").as_deref(),
            Some("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.z.test")
        );
        assert_eq!(q(Subject::Address, "not-an-ip", "z.test"), None);
        assert_eq!(q(Subject::Domain, "Sender.Test.", "dbl.test").as_deref(), Some("sender.test.dbl.test"));
        assert_eq!(q(Subject::Domain, "a..b", "dbl.test"), None);
        assert_eq!(q(Subject::Domain, "evil.test\0x", "dbl.test"), None);
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn decoding() {
        let d = decode("zen.spamhaus.org", &[ip("127.0.0.2"), ip("127.0.0.4"), ip("127.0.0.11")]);
        assert!(d.listed);
        assert_eq!(d.lists, ["SBL", "XBL", "PBL"]);
        let d = decode("dbl.spamhaus.org", &[ip("127.0.1.2")]);
        assert_eq!((d.listed, d.lists.as_slice()), (true, &["DBL spam domain".to_string()][..]));
        let d = decode("zen.spamhaus.org", &[ip("127.255.255.254")]);
        assert!(!d.listed && d.error.as_deref().unwrap().contains("public resolver"), "{d:?}");
        let d = decode("dnsbl.test", &[ip("127.0.0.2")]);
        assert_eq!((d.listed, d.lists.as_slice()), (true, &["listed".to_string()][..]));
        let d = decode("dnsbl.test", &[ip("198.51.100.7")]);
        assert!(!d.listed && d.error.is_some());
        assert_eq!(decode("dnsbl.test", &[]), Decoded { listed: false, lists: vec![], error: None });
    }

    #[test]
    fn the_entering_hop() {
        let hops = [
            "from mx.receiver.test by mx.receiver.test (Dovecot) with LMTP id x; Wed, 2 Dec 2026 10:00:00 +0000",
            "from mail.sender.test (localhost [127.0.0.1]) (using TLSv1.3) by mx.receiver.test (Postfix) with ESMTPS id 1; Wed, 2 Dec 2026 10:00:00 +0000",
            "from [127.0.0.9] (localhost [127.0.0.9]) by mail.sender.test (Postfix) with ESMTPSA id 2; Wed, 2 Dec 2026 10:00:00 +0000",
        ];
        assert_eq!(entering_address(&hops), Some("127.0.0.1".parse().unwrap()));
        let folded = ["from mail.sender.test (localhost [127.0.0.3])\r\n\tby mx.receiver.test"];
        assert_eq!(entering_address(&folded), Some("127.0.0.3".parse().unwrap()));
        let gmail = ["from mail-sor-f41.google.com (mail-sor-f41.google.com. [209.85.220.41]) by mx.google.com with SMTPS id y; Tue, 1 Dec 2026 10:00:00 -0800"];
        assert_eq!(entering_address(&gmail), Some("209.85.220.41".parse().unwrap()));
        let v6 = ["from h (h [IPv6:2001:db8::5]) by mx with ESMTP"];
        assert_eq!(entering_address(&v6), Some("2001:db8::5".parse().unwrap()));
        // an address after `by` is the receiver's, not the sender's
        assert_eq!(entering_address(&["from h by mx [192.0.2.9] with ESMTP"]), None);
        assert_eq!(entering_address(&["by mx with LMTP", "[[[", "from [", "from (x [1.2.3.999])"]), None);
    }
}
