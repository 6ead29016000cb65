//! Spam verdicts a receiver wrote into the delivered probe: SpamAssassin
//! (`X-Spam-Status`, `X-Spam-Score`, `X-Spam-Flag`), rspamd
//! (`X-Spamd-Result`, `X-Rspamd-Score`, `X-Spam-Action`) and Microsoft
//! (`X-Forefront-Antispam-Report`, `X-MS-Exchange-Organization-SCL`).
//!
//! Pure and total: any input gives a [`SpamReport`] (unreadable parts are
//! left out), never a panic. The values are untrusted text from the Internet.
//!
//! **Which headers are believed.** A filter that adds its verdict also
//! removes or replaces earlier headers of the same name (spamass-milter,
//! rspamd's milter_headers, Exchange at the organisation boundary), so a
//! receiver-written verdict occurs once. A header name that occurs more than
//! once means someone upstream wrote one too and mailloop cannot tell which
//! is the receiver's: every occurrence is ignored and counted in `ignored`.
//! Callers additionally believe verdicts only when the probe carries
//! `Authentication-Results` from the check's `trusted_authserv_id` (it went
//! through the trusted receiver); otherwise the report says `trusted: false`.

use serde::{Deserialize, Serialize};

/// The header names this module reads, lower case.
pub const HEADERS: [&str; 8] = [
    "x-spam-status",
    "x-spam-score",
    "x-spam-flag",
    "x-spamd-result",
    "x-rspamd-score",
    "x-spam-action",
    "x-forefront-antispam-report",
    "x-ms-exchange-organization-scl",
];

/// How a junk placement's reason starts (`probe delivered to junk folder
/// "Junk" (SpamAssassin ...)`): the judge tells it from other reasons by it.
pub const JUNK_REASON: &str = "probe delivered to junk folder";

/// Most rule names kept per verdict.
const MAX_RULES: usize = 64;

/// The receiver's spam verdict on the probe.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SpamReport {
    /// `spamassassin`, `rspamd`, `microsoft`: each filter whose headers were read.
    pub filters: Vec<String>,
    /// The filter's yes/no (SpamAssassin `Yes`/`No`, `X-Spam-Flag`, rspamd
    /// `[True]`/`[False]`, Microsoft SCL ≥ 5 or SFV:SPM).
    pub is_spam: Option<bool>,
    /// Score and the filter's spam threshold (SpamAssassin `required=`, rspamd `/ 15.00`).
    pub score: Option<f64>,
    pub threshold: Option<f64>,
    /// rspamd's action (`no action`, `add header`, `reject`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Microsoft: spam confidence level (-1..9), filter verdict (SFV) and category (CAT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scl: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sfv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cat: Option<String>,
    /// Triggered rules (SpamAssassin `tests=`, rspamd symbols with their scores).
    pub rules: Vec<String>,
    /// False when no Authentication-Results of the trusted receiver vouches
    /// for the path (or none is configured): anyone could have written these.
    pub trusted: bool,
    /// Headers ignored because their name occurred more than once.
    pub ignored: usize,
}

/// Reads the verdict from the message's headers (name, value; top first;
/// other headers may be included and are skipped). `None` when no spam
/// header was found.
pub fn summarize(headers: &[(&str, &str)], trusted: bool) -> Option<SpamReport> {
    let mut r = SpamReport {
        trusted,
        ..SpamReport::default()
    };
    let mut found = false;
    for name in HEADERS {
        let values: Vec<&str> = headers
            .iter()
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
            .collect();
        match values.as_slice() {
            [] => continue,
            [one] => {
                found = true;
                apply(&mut r, name, &unfold(one));
            }
            many => {
                found = true;
                r.ignored += many.len();
            }
        }
    }
    found.then_some(r)
}

fn unfold(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn filter(r: &mut SpamReport, name: &str) {
    if !r.filters.iter().any(|f| f == name) {
        r.filters.push(name.to_string());
    }
}

fn number(s: &str) -> Option<f64> {
    let n: f64 = s.trim().parse().ok()?;
    n.is_finite().then_some(n)
}

fn add_rule(r: &mut SpamReport, rule: &str) {
    let rule = rule.trim();
    if !rule.is_empty()
        && r.rules.len() < MAX_RULES
        && rule.len() <= 200
        && !r.rules.iter().any(|x| x == rule)
    {
        r.rules.push(rule.to_string());
    }
}

fn apply(r: &mut SpamReport, name: &str, v: &str) {
    match name {
        "x-spam-status" => spamassassin_status(r, v),
        "x-spam-score" => {
            filter(r, "spamassassin");
            if r.score.is_none() {
                r.score = number(v);
            }
        }
        "x-spam-flag" => {
            filter(r, "spamassassin");
            match v.trim().to_ascii_uppercase().as_str() {
                "YES" => r.is_spam = Some(true),
                "NO" => r.is_spam = r.is_spam.or(Some(false)),
                _ => {}
            }
        }
        "x-spamd-result" => rspamd_result(r, v),
        "x-rspamd-score" => {
            filter(r, "rspamd");
            if r.score.is_none() {
                r.score = number(v);
            }
        }
        "x-spam-action" => {
            filter(r, "rspamd");
            let a = v.trim().to_ascii_lowercase();
            if !a.is_empty() && a.len() <= 40 {
                r.action = Some(a);
            }
        }
        "x-forefront-antispam-report" => forefront(r, v),
        "x-ms-exchange-organization-scl" => {
            filter(r, "microsoft");
            if let Ok(scl) = v.trim().parse::<i32>() {
                if (-1..=9).contains(&scl) {
                    r.scl = Some(scl);
                    r.is_spam = r.is_spam.or(Some(scl >= 5));
                }
            }
        }
        _ => {}
    }
}

/// `Yes, score=1003.3 required=5.0 tests=GTUBE,MISSING_DATE autolearn=no version=4.0.1`
/// (also `hits=` of SpamAssassin 2).
fn spamassassin_status(r: &mut SpamReport, v: &str) {
    filter(r, "spamassassin");
    let (word, rest) = v.split_once(',').unwrap_or((v, ""));
    match word.trim().to_ascii_lowercase().as_str() {
        "yes" => r.is_spam = Some(true),
        "no" => r.is_spam = Some(false),
        _ => {}
    }
    // tests= may be followed by more key=value pairs; rule names have no '='
    let mut in_tests = false;
    for tok in rest.split([' ', '\t']) {
        if let Some((k, val)) = tok.split_once('=') {
            in_tests = false;
            match k.to_ascii_lowercase().as_str() {
                "score" | "hits" => r.score = number(val),
                "required" => r.threshold = number(val),
                "tests" => {
                    in_tests = true;
                    val.split(',').for_each(|t| add_rule(r, t));
                }
                _ => {}
            }
        } else if in_tests {
            tok.split(',').for_each(|t| add_rule(r, t));
        }
    }
}

/// `default: True [16.20 / 15.00]; GTUBE(0.00)[]; R_SPF_ALLOW(-0.20)[+ip4:1.2.3.4]`
fn rspamd_result(r: &mut SpamReport, v: &str) {
    filter(r, "rspamd");
    let mut parts = v.split(';');
    if let Some(head) = parts.next() {
        let head = head.split_once(':').map_or(head, |(_, h)| h).trim();
        let (word, rest) = head.split_once(' ').unwrap_or((head, ""));
        match word.to_ascii_lowercase().as_str() {
            "true" => r.is_spam = Some(true),
            "false" => r.is_spam = Some(false),
            _ => {}
        }
        if let Some(inner) = rest
            .trim()
            .strip_prefix('[')
            .and_then(|x| x.split(']').next())
        {
            let (s, t) = inner.split_once('/').unwrap_or((inner, ""));
            r.score = number(s);
            r.threshold = number(t);
        }
    }
    for sym in parts {
        let sym = sym.trim();
        // SYMBOL(score)[options]: keep "SYMBOL(score)"
        let end = sym.find(')').map_or(sym.len(), |i| i + 1);
        let name = sym[..end].trim();
        if name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        {
            add_rule(r, name);
        }
    }
}

/// `CIP:1.2.3.4;CTRY:;LANG:en;SCL:1;SRV:;IPV:NLI;SFV:NSPM;H:...;CAT:NONE;SFS:(...);DIR:INB;`
fn forefront(r: &mut SpamReport, v: &str) {
    filter(r, "microsoft");
    for part in v.split(';') {
        let Some((k, val)) = part.split_once(':') else {
            continue;
        };
        let val = val.trim();
        match k.trim().to_ascii_uppercase().as_str() {
            "SCL" => {
                if let Ok(scl) = val.parse::<i32>() {
                    if (-1..=9).contains(&scl) {
                        r.scl = Some(scl);
                    }
                }
            }
            "SFV" if !val.is_empty() && val.len() <= 16 => r.sfv = Some(val.to_ascii_uppercase()),
            "CAT" if !val.is_empty() && val.len() <= 16 => r.cat = Some(val.to_ascii_uppercase()),
            _ => {}
        }
    }
    let by_sfv = match r.sfv.as_deref() {
        Some("SPM") => Some(true),
        Some("NSPM" | "SKA" | "SKN") => Some(false),
        _ => None,
    };
    r.is_spam = by_sfv.or(r.scl.map(|s| s >= 5)).or(r.is_spam);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzz/spam: a report must come back from JSON (the way it
    /// travels to the coordinator) exactly, long scores included.
    #[test]
    fn a_report_survives_json_exactly() {
        let r = SpamReport { score: Some(32.2), threshold: Some(1.2222222222222223e100), ..SpamReport::default() };
        let back: SpamReport = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    /// Header blocks as real receivers wrote them.
    const SPAMASSASSIN_GTUBE: &str = include_str!("../tests/fixtures/spam/spamassassin-gtube.eml");
    const SPAMASSASSIN_HAM: &str = include_str!("../tests/fixtures/spam/spamassassin-ham.eml");
    const RSPAMD: &str = include_str!("../tests/fixtures/spam/rspamd.eml");
    const MICROSOFT: &str = include_str!("../tests/fixtures/spam/microsoft365.eml");

    /// (name, value) of each header of a fixture's header block, folding
    /// kept; `# ` lines at the top say where the sample comes from.
    fn headers(raw: &str) -> Vec<(&str, &str)> {
        let head = raw.split("\n\n").next().unwrap_or("");
        let mut out: Vec<(&str, &str)> = Vec::new();
        let mut pos = 0;
        for line in head.split_inclusive('\n') {
            let at = pos;
            pos += line.len();
            if line.starts_with("# ") {
                continue;
            }
            if line.starts_with([' ', '\t']) {
                if let Some((_, v)) = out.last_mut() {
                    let begin = v.as_ptr() as usize - head.as_ptr() as usize;
                    *v = head[begin..pos].trim_end();
                }
            } else if let Some((n, _)) = line.split_once(':') {
                out.push((n, head[at + n.len() + 1..pos].trim()));
            }
        }
        out
    }

    #[test]
    fn spamassassin_gtube_from_the_test_stack() {
        let r = summarize(&headers(SPAMASSASSIN_GTUBE), true).unwrap();
        assert_eq!(r.filters, ["spamassassin"]);
        assert_eq!(r.is_spam, Some(true));
        assert_eq!(r.score, Some(999.0));
        assert_eq!(r.threshold, Some(5.0));
        assert_eq!(r.rules, ["ALL_TRUSTED", "GTUBE"]);
        assert!(r.trusted);
    }

    #[test]
    fn spamassassin_ham_with_folded_tests() {
        let r = summarize(&headers(SPAMASSASSIN_HAM), true).unwrap();
        assert_eq!(r.is_spam, Some(false));
        assert_eq!(r.score, Some(-0.1));
        assert_eq!(
            r.rules,
            [
                "DKIM_SIGNED",
                "DKIM_VALID",
                "DKIM_VALID_AU",
                "SPF_HELO_NONE",
                "SPF_PASS"
            ]
        );
    }

    #[test]
    fn rspamd_result_action_and_symbols() {
        let r = summarize(&headers(RSPAMD), true).unwrap();
        assert_eq!(r.filters, ["rspamd"]);
        assert_eq!(r.is_spam, Some(true));
        assert_eq!((r.score, r.threshold), (Some(16.2), Some(15.0)));
        assert_eq!(r.action.as_deref(), Some("add header"));
        assert!(
            r.rules.contains(&"GTUBE(0.00)".to_string()),
            "{:?}",
            r.rules
        );
        assert!(
            r.rules.contains(&"R_SPF_ALLOW(-0.20)".to_string()),
            "{:?}",
            r.rules
        );
    }

    #[test]
    fn microsoft_scl_sfv_cat() {
        let r = summarize(&headers(MICROSOFT), true).unwrap();
        assert_eq!(r.filters, ["microsoft"]);
        assert_eq!(r.scl, Some(1));
        assert_eq!(r.sfv.as_deref(), Some("NSPM"));
        assert_eq!(r.cat.as_deref(), Some("NONE"));
        assert_eq!(r.is_spam, Some(false));
    }

    #[test]
    fn a_header_written_twice_is_not_believed() {
        let h = [
            ("X-Spam-Status", "No, score=-5.0 required=5.0"),
            ("X-Spam-Status", "Yes, score=9.0 required=5.0"),
            ("X-Spam-Flag", "YES"),
        ];
        let r = summarize(&h, true).unwrap();
        assert_eq!(r.ignored, 2);
        assert_eq!(r.score, None);
        assert_eq!(r.is_spam, Some(true));
    }

    #[test]
    fn no_spam_headers_no_report_and_garbage_is_harmless() {
        assert_eq!(summarize(&[("Subject", "hi")], true), None);
        for v in [
            "",
            ",",
            "Yes,score=",
            "Yes, score=NaN required=inf tests=",
            "default: True [",
            "x;;;SCL:99;SFV:",
            "\u{0}\u{ffff}",
        ] {
            for name in HEADERS {
                let r = summarize(&[(name, v)], false).unwrap();
                assert!(r.score.is_none_or(f64::is_finite));
                assert!(!r.trusted);
            }
        }
    }
}
