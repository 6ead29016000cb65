//! Reading the delivered probe: authentication verdicts, alignment, an
//! independent DKIM check, and the hops its `Received:` headers describe.
//!
//! Parsing is `mailloop_common`'s (`auth_results`, `alignment`, `received`);
//! this module applies it to the fetched message and turns unmet
//! expectations into reasons for a `degraded` outcome.

use crate::dns::Dns;
use mail_auth::{AuthenticatedMessage, DkimResult};
use mailloop_common::alignment::{Alignment, alignment};
use mailloop_common::config::{AlignmentLevel, CheckConfig};
use mailloop_common::received::{HopDelay, hop_delays};
use mailloop_common::{AlignmentReport, AuthReport, auth_results};

/// What the fetched probe says about its journey.
pub struct Inspection {
    pub auth: AuthReport,
    pub hops: Vec<HopDelay>,
    /// The receiver's spam verdict, if it wrote one.
    pub spam: Option<mailloop_common::spam::SpamReport>,
    /// Unmet expectations and findings: each makes the outcome `degraded`.
    pub reasons: Vec<String>,
    /// The address of the hop that entered the receiver (for blocklists).
    pub entering: Option<std::net::IpAddr>,
}

/// True the first time this process sees a trust warning for `check` with
/// its current `trusted_authserv_id`: a missing setting is a configuration
/// fact, not news every round, so the log says it once (the report still
/// carries it every time).
fn first_warning(check: &CheckConfig) -> bool {
    use std::collections::HashSet;
    use std::sync::{LazyLock, Mutex};
    static WARNED: LazyLock<Mutex<HashSet<(String, Option<String>)>>> = LazyLock::new(Default::default);
    let key = (check.name.clone(), check.trusted_authserv_id.clone());
    WARNED.lock().map(|mut seen| seen.insert(key)).unwrap_or(true)
}

/// Every value of header `name` in the message's header block, top first,
/// as raw text (folding kept).
fn header_values<'a>(msg: &'a mail_parser::Message<'a>, name: &str) -> Vec<&'a str> {
    msg.headers()
        .iter()
        .filter(|h| h.name.as_str().eq_ignore_ascii_case(name))
        .filter_map(|h| std::str::from_utf8(msg.raw_message.get(h.offset_start as usize..h.offset_end as usize)?).ok())
        .map(str::trim)
        .collect()
}

pub async fn inspect(check: &CheckConfig, raw: &[u8], dns: Option<&Dns>, sent_at: chrono::DateTime<chrono::Utc>) -> Inspection {
    let parsed = mail_parser::MessageParser::default().parse(raw);
    let spam_headers: Vec<(&str, Vec<&str>)> = match &parsed {
        Some(msg) => {
            let names = mailloop_common::spam::HEADERS.iter().chain(&mailloop_common::spam::MARKERS);
            names.map(|n| (*n, header_values(msg, n))).collect()
        }
        None => Vec::new(),
    };
    let (ar_values, received, from_domain) = match &parsed {
        Some(msg) => (
            header_values(msg, "Authentication-Results"),
            header_values(msg, "Received"),
            msg.from()
                .and_then(|a| a.first())
                .and_then(|a| a.address())
                .and_then(|a| a.rsplit_once('@'))
                .map(|(_, d)| d.to_ascii_lowercase()),
        ),
        None => (Vec::new(), Vec::new(), None),
    };

    let summary = auth_results::summarize(&ar_values, check.trusted_authserv_id.as_deref());
    if let Some(w) = &summary.warning {
        if first_warning(check) {
            tracing::warn!(check = %check.name, "{w} (said once per check; every report carries it in auth.warning)");
        }
    }
    let from = from_domain.clone().unwrap_or_default();
    let align = |d: &Option<String>| d.as_deref().map(|d| alignment(d, &from)).unwrap_or(Alignment::None);
    let dkim_alignment = align(&summary.dkim_domain);
    let spf_alignment = align(&summary.spf_domain);

    let own_dkim = match (check.verify_dkim, dns) {
        (true, Some(dns)) => Some(verify_dkim(dns, raw, check.timeout(mailloop_common::StepName::ImapFetch)).await),
        _ => None,
    };

    let mut reasons = Vec::new();
    let expect = &check.expect;
    for (what, want, got) in [
        ("SPF", &expect.spf, &summary.spf),
        ("DKIM", &expect.dkim, &summary.dkim),
        ("DMARC", &expect.dmarc, &summary.dmarc),
    ] {
        if let Some(want) = want {
            let got_s = got.as_deref().unwrap_or("absent");
            if !got_s.eq_ignore_ascii_case(want) {
                reasons.push(format!("{what} {got_s}, expected {want}"));
            }
        }
    }
    if let Some(level) = expect.alignment {
        let ok = match level {
            AlignmentLevel::Strict => dkim_alignment == Alignment::Strict,
            AlignmentLevel::Relaxed => dkim_alignment != Alignment::None,
        };
        if !ok {
            let want = if level == AlignmentLevel::Strict { "strict" } else { "relaxed" };
            reasons.push(format!(
                "DKIM alignment {}, expected {want}: d={}, From {}",
                alignment_name(dkim_alignment),
                summary.dkim_domain.as_deref().unwrap_or("(none)"),
                if from.is_empty() { "(none)" } else { &from }
            ));
        }
    }
    if let (Some(own), Some(theirs)) = (&own_dkim, &summary.dkim) {
        let own_word = own.split_whitespace().next().unwrap_or("");
        if (own_word == "pass") != theirs.eq_ignore_ascii_case("pass") {
            reasons.push(format!("DKIM disagreement: the receiver says {theirs}, mailloop's own check says {own}"));
        }
    }

    let hops = hop_delays(&received, Some(sent_at));
    let entering = mailloop_common::reputation::entering_address(&received);
    // Verdicts are believed only when the trusted receiver's
    // Authentication-Results show the probe went through it.
    let trusted = check.trusted_authserv_id.is_some() && !summary.raw.is_empty();
    let spam_pairs: Vec<(&str, &str)> = spam_headers.iter().flat_map(|(n, vs)| vs.iter().map(move |v| (*n, *v))).collect();
    let spam = mailloop_common::spam::summarize(&spam_pairs, trusted);
    Inspection {
        spam,
        auth: AuthReport {
            spf: summary.spf,
            dkim: summary.dkim,
            dmarc: summary.dmarc,
            dkim_domain: summary.dkim_domain,
            spf_domain: summary.spf_domain,
            from_domain,
            alignment: AlignmentReport { dkim: dkim_alignment, spf: spf_alignment },
            authserv_id: summary.authserv_id,
            own_dkim,
            raw: summary.raw,
            ignored: summary.ignored,
            warning: summary.warning,
        },
        hops,
        reasons,
        entering,
    }
}

fn alignment_name(a: Alignment) -> &'static str {
    match a {
        Alignment::Strict => "strict",
        Alignment::Relaxed => "relaxed",
        Alignment::None => "none",
    }
}

/// mail-auth's verdict on the message's DKIM signatures: `pass` if any
/// passes, else the first result with its reason.
async fn verify_dkim(dns: &Dns, raw: &[u8], timeout: std::time::Duration) -> String {
    let Some(msg) = AuthenticatedMessage::parse(raw) else {
        return "permerror (message does not parse)".into();
    };
    let outputs = match tokio::time::timeout(timeout, dns.authenticator().verify_dkim(&msg)).await {
        Ok(o) => o,
        Err(_) => return format!("temperror (no DNS answer within {})", crate::steps::fmt_duration(timeout)),
    };
    if outputs.iter().any(|o| matches!(o.result(), DkimResult::Pass)) {
        return "pass".into();
    }
    match outputs.first().map(|o| o.result()) {
        None | Some(DkimResult::None) => "none".into(),
        Some(DkimResult::Pass) => "pass".into(),
        Some(DkimResult::Neutral(e)) => format!("neutral ({e})"),
        Some(DkimResult::Fail(e)) => format!("fail ({e})"),
        Some(DkimResult::PermError(e)) => format!("permerror ({e})"),
        Some(DkimResult::TempError(e)) => format!("temperror ({e})"),
    }
}
