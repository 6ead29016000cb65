//! Property tests of the header parsers (issue 16): a header built from the
//! grammar reads back as built; comments before or after it change nothing;
//! a name that is not a domain name never aligns.

use chrono::{DateTime, FixedOffset, TimeZone};
use mailloop_common::alignment::{Alignment, alignment, is_domain_name};
use mailloop_common::auth_results::{self, AuthResults};
use mailloop_common::received;
use proptest::prelude::*;

/// A host name of two to four labels (one label could be a keyword: a
/// host named `by` is not something a Received stamp can carry).
fn domain() -> impl Strategy<Value = String> {
    prop::collection::vec("[a-z][a-z0-9-]{0,8}[a-z0-9]", 2..=4).prop_map(|labels| labels.join("."))
}

fn date() -> impl Strategy<Value = DateTime<FixedOffset>> {
    // 1970..2099, offsets -12:00..+14:00 in quarter hours.
    (0i64..4_102_444_800, -48i32..=56).prop_map(|(secs, quarters)| {
        let tz = FixedOffset::east_opt(quarters * 900).unwrap();
        tz.timestamp_opt(secs, 0).unwrap()
    })
}

/// Comment text that says nothing about TLS, an address or a date: what a
/// comment around a parsed value may hold without being a value itself.
fn comment() -> impl Strategy<Value = String> {
    "[a-z0-9 ,;:=@./-]{0,24}".prop_filter("no TLS words", |c| {
        let l = c.to_ascii_lowercase();
        !["tls", "ssl", "cipher", "version", "using", "encrypted"].iter().any(|w| l.contains(w))
    })
}

fn comments() -> impl Strategy<Value = String> {
    prop::collection::vec(comment(), 0..3).prop_map(|cs| cs.iter().map(|c| format!("({c}) ")).collect())
}

const PROTOCOLS: &[&str] = &["SMTP", "ESMTP", "ESMTPS", "ESMTPSA", "LMTP", "ESMTPA"];

#[derive(Debug, Clone)]
struct Stamp {
    from: String,
    ip: [u8; 4],
    by: String,
    with: &'static str,
    id: String,
    tls: Option<(&'static str, &'static str)>,
    at: DateTime<FixedOffset>,
}

fn stamp() -> impl Strategy<Value = Stamp> {
    let tls = prop::option::of((
        prop::sample::select(&["TLSv1.2", "TLSv1.3"][..]),
        prop::sample::select(&["TLS_AES_256_GCM_SHA384", "ECDHE-RSA-AES128-GCM-SHA256"][..]),
    ));
    (domain(), any::<[u8; 4]>(), domain(), prop::sample::select(PROTOCOLS), "[A-F0-9]{5,12}", tls, date())
        .prop_map(|(from, ip, by, with, id, tls, at)| Stamp { from, ip, by, with, id, tls, at })
}

impl Stamp {
    /// Postfix's shape: `from H (H [ip]) (using V with cipher C ...) by B with P id I for <..>; date`.
    fn render(&self) -> String {
        let [a, b, c, d] = self.ip;
        let tls = self
            .tls
            .map_or(String::new(), |(v, cipher)| format!("\n\t(using {v} with cipher {cipher} (256/256 bits))"));
        format!(
            "from {f} ({f} [{a}.{b}.{c}.{d}]){tls}\n\tby {by} (Postfix) with {with} id {id}\n\tfor <probe@{by}>; {date}",
            f = self.from,
            by = self.by,
            with = self.with,
            id = self.id,
            date = self.at.to_rfc2822(),
        )
    }
}

#[derive(Debug, Clone)]
struct Result1 {
    method: &'static str,
    result: &'static str,
    ptype: &'static str,
    name: &'static str,
    value: String,
}

fn result1() -> impl Strategy<Value = Result1> {
    let shape = prop::sample::select(
        &[
            ("spf", "smtp", "mailfrom"),
            ("dkim", "header", "d"),
            ("dmarc", "header", "from"),
            ("iprev", "policy", "iprev"),
        ][..],
    );
    let result = prop::sample::select(&["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"][..]);
    (shape, result, domain()).prop_map(|((method, ptype, name), result, value)| Result1 {
        method,
        result,
        ptype,
        name,
        value,
    })
}

/// The parsed values without their comments.
fn values(ar: &AuthResults) -> (String, Vec<(String, String, Vec<(String, String, String)>)>) {
    let rs = ar
        .results
        .iter()
        .map(|r| {
            let props = r.properties.iter().map(|p| (p.ptype.clone(), p.name.clone(), p.value.clone())).collect();
            (r.method.clone(), r.result.clone(), props)
        })
        .collect();
    (ar.authserv_id.clone(), rs)
}

proptest! {
    #[test]
    fn received_round_trips(s in stamp()) {
        let hop = received::parse(&s.render());
        prop_assert_eq!(hop.from.as_deref(), Some(s.from.as_str()));
        prop_assert_eq!(hop.by.as_deref(), Some(s.by.as_str()));
        prop_assert_eq!(hop.with.as_deref(), Some(s.with));
        prop_assert_eq!(hop.id.as_deref(), Some(s.id.as_str()));
        // Without a TLS comment, RFC 3848's ESMTPS/ESMTPSA still say TLS.
        let implied = ["ESMTPS", "ESMTPSA"].contains(&s.with).then(|| "TLS".to_string());
        prop_assert_eq!(hop.tls, s.tls.map(|(v, c)| format!("{v} {c}")).or(implied));
        prop_assert_eq!(hop.at, Some(s.at));
    }

    #[test]
    fn received_comment_prefix_and_suffix_change_nothing(s in stamp(), before in comments(), after in comments()) {
        let plain = s.render();
        let decorated = format!("{before}{plain} {after}");
        prop_assert_eq!(received::parse(&decorated), received::parse(&plain));
    }

    #[test]
    fn a_clause_with_only_a_comment_never_takes_the_next_keyword(s in stamp(), c in comment()) {
        // `from (...) by B with P id I; date`: the sender is unknown, the rest is kept.
        // (A comment opening with an address — `(:: )`, `(10.0.0.1)` — names the
        // sender, as Exchange's `from ([192.0.2.1])` does: another property.)
        prop_assume!(c.split_whitespace().next().is_none_or(|w| w.parse::<std::net::IpAddr>().is_err()));
        let value = format!("from ({c}) by {} with {} id {}; {}", s.by, s.with, s.id, s.at.to_rfc2822());
        let hop = received::parse(&value);
        prop_assert_eq!(hop.from, None);
        prop_assert_eq!(hop.by.as_deref(), Some(s.by.as_str()));
        prop_assert_eq!(hop.with.as_deref(), Some(s.with));
        prop_assert_eq!(hop.id.as_deref(), Some(s.id.as_str()));
        prop_assert_eq!(hop.at, Some(s.at));
    }

    #[test]
    fn dates_round_trip_with_fractions_and_comments(at in date(), frac in "[0-9]{1,9}", c in comment()) {
        let rfc = at.to_rfc2822();
        prop_assert_eq!(received::parse_date(&rfc), Some(at));
        // `... 07:53:55.516 +0000 (comment)`: the fraction is dropped.
        let (head, zone) = rfc.rsplit_once(' ').unwrap();
        let with_frac = format!("({c}) {head}.{frac} {zone} ({c})");
        prop_assert_eq!(received::parse_date(&with_frac), Some(at));
    }

    #[test]
    fn auth_results_round_trip(id in domain(), rs in prop::collection::vec(result1(), 1..5)) {
        let text = format!(
            "{id};\n\t{}",
            rs.iter().map(|r| format!("{}={} {}.{}={}", r.method, r.result, r.ptype, r.name, r.value)).collect::<Vec<_>>().join(";\n\t")
        );
        let ar = auth_results::parse(&text).unwrap();
        let expect: Vec<_> = rs
            .iter()
            .map(|r| (r.method.to_string(), r.result.to_string(), vec![(r.ptype.to_string(), r.name.to_string(), r.value.clone())]))
            .collect();
        prop_assert_eq!(values(&ar), (id, expect));
    }

    #[test]
    fn auth_results_comments_anywhere_change_no_value(
        id in domain(),
        rs in prop::collection::vec(result1(), 1..4),
        cs in prop::collection::vec(comment(), 7),
    ) {
        let plain = format!(
            "{id}; {}",
            rs.iter().map(|r| format!("{}={} {}.{}={}", r.method, r.result, r.ptype, r.name, r.value)).collect::<Vec<_>>().join("; ")
        );
        // Comments before and after the whole value, and as CFWS around
        // every `=` and a property's `.` (RFC 8601 §2.2).
        let c = |k: usize| format!(" ({}) ", cs[k]);
        let decorated = format!(
            "{}{id}{};{}{}",
            c(0),
            c(1),
            rs.iter()
                .map(|r| format!("{}{}={}{} {}{}.{}{}{}={}{}", r.method, c(2), c(3), r.result, r.ptype, c(4), c(5), r.name, c(6), c(2), r.value))
                .collect::<Vec<_>>()
                .join(";"),
            c(0),
        );
        let a = auth_results::parse(&plain).unwrap();
        let b = auth_results::parse(&decorated).unwrap();
        prop_assert_eq!(values(&b), values(&a));
    }

    #[test]
    fn a_name_that_is_not_a_domain_never_aligns(d in domain(), other in domain(), how in 0usize..7, junk in "[ _/@!*\\x00\\t]") {
        let bad = match how {
            0 => format!(".{d}"),
            1 => d.replacen('.', "..", 1),
            2 => format!("{d}.."),
            3 => d.replacen('.', &format!("{junk}."), 1),
            4 => format!("-{d}"),
            5 => format!("{}.{d}", "a".repeat(64)),
            _ => String::new(),
        };
        prop_assert!(!is_domain_name(&bad), "{bad:?}");
        for with in [&d, &other, &format!("mail.{d}"), &bad] {
            prop_assert_eq!(alignment(&bad, with), Alignment::None, "{:?} vs {:?}", bad, with);
            prop_assert_eq!(alignment(with, &bad), Alignment::None, "{:?} vs {:?}", with, bad);
        }
        // The well-formed name it was made from still aligns with itself.
        prop_assert_eq!(alignment(&d, &d), Alignment::Strict);
    }

    #[test]
    fn arbitrary_strings_align_only_when_both_are_domains(a in "\\PC{0,20}", b in "\\PC{0,20}") {
        if !is_domain_name(&a) || !is_domain_name(&b) {
            prop_assert_eq!(alignment(&a, &b), Alignment::None);
        }
    }
}
