//! Spam verdicts a receiver wrote into the delivered probe: SpamAssassin
//! (`X-Spam-Status`, `X-Spam-Score`, `X-Spam-Flag`), rspamd
//! (`X-Spamd-Result`, `X-Rspamd-Score`, `X-Spam-Action`, `X-Rspamd-Action`)
//! and Microsoft (`X-Forefront-Antispam-Report`,
//! `X-MS-Exchange-Organization-SCL`).
//!
//! **Whose `X-Spam-*` headers.** rspamd writes SpamAssassin's names too (its
//! milter_headers `x-spam-status` routine: `Yes, score=6.09`, no
//! `required=`; some setups add `X-Spam-Score`/`X-Spam-Flag`), so those three
//! names are credited to rspamd when the message carries an rspamd header
//! ([`MARKERS`], or one of rspamd's own verdict headers) and no
//! `X-Spam-Checker-Version: SpamAssassin ...`; otherwise to SpamAssassin.
//!
//! **Spam or not.** Each filter's yes/no counts, and the probe is spam when
//! any believed filter says so. rspamd's `default: True` means the action was
//! `reject` (and `False` only that it was not: an `add header` message says
//! `False` too), so `False` alone decides nothing; its action does (`no
//! action` and `greylist` are ham, every other action spam, as rspamd's own
//! `X-Spam-Status` routine decides).
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

/// The verdict header names this module reads, lower case.
pub const HEADERS: [&str; 9] = [
    "x-spam-status",
    "x-spam-score",
    "x-spam-flag",
    "x-spamd-result",
    "x-rspamd-score",
    "x-spam-action",
    "x-rspamd-action",
    "x-forefront-antispam-report",
    "x-ms-exchange-organization-scl",
];

/// Headers that carry no verdict but say which filter wrote the shared
/// `X-Spam-*` names (see the module docs); callers pass them along with
/// [`HEADERS`]. Alone they make no report.
pub const MARKERS: [&str; 4] = ["x-spam-checker-version", "x-rspamd-server", "x-rspamd-queue-id", "x-spamd-bar"];

/// rspamd's own verdict headers: their presence also marks rspamd.
const RSPAMD_VERDICTS: [&str; 4] = ["x-spamd-result", "x-rspamd-score", "x-spam-action", "x-rspamd-action"];

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
    /// The filters' yes/no, true when any says spam (SpamAssassin `Yes`/`No`,
    /// `X-Spam-Flag`; rspamd's action, or `default: True` = reject;
    /// Microsoft SFV, else SCL ≥ 5).
    pub is_spam: Option<bool>,
    /// Score and the filter's threshold: SpamAssassin `required=` (spam);
    /// rspamd `[score / threshold]`, its **reject** threshold.
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
    let once = |name: &str| {
        let mut vs = headers.iter().filter(|(n, _)| n.trim().eq_ignore_ascii_case(name)).map(|(_, v)| *v);
        match (vs.next(), vs.next()) {
            (Some(v), None) => Some(v),
            _ => None,
        }
    };
    let by_spamassassin = once("x-spam-checker-version").is_some_and(|v| {
        v.trim_start()
            .get(..12)
            .is_some_and(|w| w.eq_ignore_ascii_case("spamassassin"))
    });
    let by_rspamd = MARKERS
        .iter()
        .filter(|n| **n != "x-spam-checker-version")
        .chain(&RSPAMD_VERDICTS)
        .any(|n| headers.iter().any(|(h, _)| h.trim().eq_ignore_ascii_case(n)));
    let shared = if by_rspamd && !by_spamassassin { "rspamd" } else { "spamassassin" };
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
                apply(&mut r, name, &unfold(one), shared);
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

/// One filter's yes/no: spam wins over ham, whatever the order.
fn vote(r: &mut SpamReport, spam: bool) {
    r.is_spam = Some(spam || r.is_spam == Some(true));
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

/// `shared`: who wrote the SpamAssassin-named headers (see the module docs).
fn apply(r: &mut SpamReport, name: &str, v: &str, shared: &str) {
    match name {
        "x-spam-status" => spamassassin_status(r, v, shared),
        "x-spam-score" => {
            filter(r, shared);
            if r.score.is_none() {
                // `6.8` or MIMEDefang's `6.8 (******) RULE,RULE`
                r.score = v.split_whitespace().next().and_then(number);
            }
        }
        "x-spam-flag" => {
            filter(r, shared);
            match v.trim().to_ascii_uppercase().as_str() {
                "YES" => vote(r, true),
                "NO" => vote(r, false),
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
        "x-spam-action" | "x-rspamd-action" => {
            filter(r, "rspamd");
            let a = v.trim().to_ascii_lowercase();
            if !a.is_empty() && a.len() <= 40 && r.action.is_none() {
                vote(r, !matches!(a.as_str(), "no action" | "greylist"));
                r.action = Some(a);
            }
        }
        "x-forefront-antispam-report" => forefront(r, v),
        "x-ms-exchange-organization-scl" => {
            filter(r, "microsoft");
            if let Ok(scl) = v.trim().parse::<i32>()
                && (-1..=9).contains(&scl)
            {
                r.scl.get_or_insert(scl);
                vote(r, scl >= 5);
            }
        }
        _ => {}
    }
}

/// `Yes, score=1003.3 required=5.0 tests=GTUBE,MISSING_DATE autolearn=no version=4.0.1`
/// (also `hits=` of SpamAssassin 2; rspamd writes `Yes, score=6.09`).
fn spamassassin_status(r: &mut SpamReport, v: &str, by: &str) {
    filter(r, by);
    let (word, rest) = v.split_once(',').unwrap_or((v, ""));
    match word.trim().to_ascii_lowercase().as_str() {
        "yes" => vote(r, true),
        "no" => vote(r, false),
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

/// `default: False [16.20 / 15.00]; GTUBE(0.00)[]; R_SPF_ALLOW(-0.20)[+ip4:1.2.3.4]`;
/// rmilter-era rspamd wrote the symbols without `;` and options
/// (`default: False [-0.70 / 15.00] HFILTER_MID_NOT_FQDN(0.50) R_SPF_ALLOW(-1.10)`).
fn rspamd_result(r: &mut SpamReport, v: &str) {
    filter(r, "rspamd");
    let mut parts = v.split(';');
    if let Some(head) = parts.next() {
        let head = head.split_once(':').map_or(head, |(_, h)| h).trim();
        let (word, rest) = head.split_once(' ').unwrap_or((head, ""));
        // True only when the action was reject; False says no more than "not rejected".
        if word.eq_ignore_ascii_case("true") {
            vote(r, true);
        }
        let rest = rest.trim();
        if let Some(inner) = rest.strip_prefix('[').and_then(|x| x.split(']').next()) {
            let (s, t) = inner.split_once('/').unwrap_or((inner, ""));
            r.score = number(s);
            r.threshold = number(t);
        }
        let after = rest.split_once(']').map_or("", |(_, a)| a);
        after.split_whitespace().for_each(|sym| rspamd_symbol(r, sym));
    }
    parts.for_each(|sym| rspamd_symbol(r, sym));
}

/// `SYMBOL(score)[options]`: keeps `SYMBOL(score)`.
fn rspamd_symbol(r: &mut SpamReport, sym: &str) {
    let sym = sym.trim();
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

/// `CIP:1.2.3.4;CTRY:;LANG:en;SCL:1;SRV:;IPV:NLI;SFV:NSPM;H:...;CAT:NONE;SFS:(...);DIR:INB;`
fn forefront(r: &mut SpamReport, v: &str) {
    filter(r, "microsoft");
    let mut forefront_scl = None;
    for part in v.split(';') {
        let Some((k, val)) = part.split_once(':') else {
            continue;
        };
        let val = val.trim();
        match k.trim().to_ascii_uppercase().as_str() {
            "SCL" => {
                if let Ok(scl) = val.parse::<i32>()
                    && (-1..=9).contains(&scl)
                {
                    r.scl = Some(scl);
                    forefront_scl = Some(scl);
                }
            }
            "SFV" if !val.is_empty() && val.len() <= 16 => r.sfv = Some(val.to_ascii_uppercase()),
            "CAT" if !val.is_empty() && val.len() <= 16 => r.cat = Some(val.to_ascii_uppercase()),
            _ => {}
        }
    }
    // Microsoft Learn, "Anti-spam message headers": SPM marked by the
    // filter, SKS by a mail flow rule, SKB/BLK blocked senders; NSPM not
    // spam, SKA/SKN/SFE allowed or bypassed. Others (SKQ, SKI...) say
    // nothing here: the SCL decides.
    let by_sfv = match r.sfv.as_deref() {
        Some("SPM" | "SKS" | "SKB" | "BLK") => Some(true),
        Some("NSPM" | "SKA" | "SKN" | "SFE") => Some(false),
        _ => None,
    };
    if let Some(spam) = by_sfv.or(forefront_scl.map(|s| s >= 5)) {
        vote(r, spam);
    }
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

    /// rspamd's milter_headers writes SpamAssassin's X-Spam-Status (its
    /// `x-spam-status` routine); beside an rspamd header it is rspamd's.
    #[test]
    fn spamassassin_names_written_by_rspamd_are_rspamd_s() {
        let h = [("X-Spam-Status", "Yes, score=6.09"), ("X-Rspamd-Server", "rspamd2")];
        let r = summarize(&h, true).unwrap();
        assert_eq!(r.filters, ["rspamd"]);
        assert_eq!((r.is_spam, r.score, r.threshold), (Some(true), Some(6.09), None));
        // ...unless SpamAssassin says it wrote them
        let h = [
            ("X-Spam-Status", "No, score=0.1 required=5.0"),
            ("X-Spam-Checker-Version", "SpamAssassin 4.0.1 (2024-03-25) on mx"),
            ("X-Spamd-Result", "default: False [0.50 / 15.00]"),
        ];
        assert_eq!(summarize(&h, true).unwrap().filters, ["spamassassin", "rspamd"]);
    }

    /// `default: False` is written for every action but reject, so a message
    /// rspamd wants in junk (`add header`) says False: the action decides.
    #[test]
    fn rspamd_false_with_add_header_is_spam() {
        let h = [
            ("X-Spamd-Result", "default: False [7.10 / 15.00]; BAYES_SPAM(5.10)[99.99%]"),
            ("X-Rspamd-Action", "add header"),
        ];
        let r = summarize(&h, true).unwrap();
        assert_eq!((r.is_spam, r.action.as_deref()), (Some(true), Some("add header")));
        let only_false = summarize(&h[..1], true).unwrap();
        assert_eq!(only_false.is_spam, None, "False alone only says: not rejected");
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
