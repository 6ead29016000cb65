//! `Received:` header parsing (RFC 5321 §4.4) and per-hop delays.
//!
//! Every server that relays a message prepends a `Received:` header naming
//! where it came from, who took it, how (protocol, TLS) and when. Read
//! bottom up they are the message's route; the differences between their
//! dates say where the time of a slow delivery went.
//!
//! The RFC grammar (`from ... by ... with ... id ... for ...; date`) is
//! followed loosely, because every MTA decorates it its own way: Postfix's
//! `(using TLSv1.3 with cipher ...)` comment, Exim's `(TLS1.3) tls CIPHER`,
//! Sendmail's and Gmail's `(version=... cipher=...)`, Exchange's
//! `with Microsoft SMTP Server (version=TLS1_2, cipher=...)`, Courier's
//! `(TLS: TLS1.3,128bits,CIPHER)`, OpenSMTPD's `(TLSv1.3:CIPHER:256:NO)`,
//! IronPort's `with ESMTP/TLS/CIPHER`, qmail's `with CIPHER encrypted SMTP`,
//! Dovecot LMTP's bare `from host by host with LMTP`, Exchange's and
//! MailEnable's `from ([192.0.2.1]) by ...` (a clause with only a comment:
//! a keyword is never a clause's value) and SendGrid's date without its
//! `;`. Nothing here fails: a clause that is not there is `None`.

use crate::auth_results::take_comment;
use chrono::{DateTime, FixedOffset, NaiveDate, SecondsFormat, SubsecRound, TimeZone, Utc};
use serde::{Deserialize, Serialize};

/// One `Received:` header: one hop of the message's route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hop {
    /// The sending host as the receiver named it (`from` clause), e.g.
    /// `mail.sender.test` or `[192.0.2.1]`.
    pub from: Option<String>,
    /// The receiving host (`by` clause).
    pub by: Option<String>,
    /// The protocol (`ESMTPS`, `LMTP`, `Microsoft SMTP Server`, ...).
    pub with: Option<String>,
    /// The receiver's queue or message id.
    pub id: Option<String>,
    /// Protocol version and cipher, e.g. `TLSv1.3 TLS_AES_256_GCM_SHA384`,
    /// when the header describes the TLS session.
    pub tls: Option<String>,
    /// When the receiver took the message (the date after the last `;`).
    pub at: Option<DateTime<FixedOffset>>,
}

/// One hop in travel order with the time it added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HopDelay {
    pub from: Option<String>,
    pub by: Option<String>,
    pub with: Option<String>,
    pub tls: Option<String>,
    /// The hop's date, RFC 3339 with the offset the header used (`Z` for +00:00).
    pub at: Option<String>,
    /// This hop's date minus the previous hop's (the first hop's minus the
    /// send time). `None` when it cannot be known honestly; `note` says why.
    pub delay_ms: Option<i64>,
    /// Why `delay_ms` is missing: `"no date"`, `"previous hop has no date"`,
    /// `"clock skew: -N ms"`.
    pub note: Option<String>,
}

/// Parses one `Received:` header value. Never fails: whatever cannot be
/// read is `None`.
pub fn parse(value: &str) -> Hop {
    let tokens = lex(value);
    let last_semi = tokens.iter().enumerate().rev().find_map(|(k, t)| match t {
        Tok::Semi(at) => Some((k, *at)),
        _ => None,
    });
    let (clauses, at) = match last_semi {
        Some((k, at)) => (&tokens[..k], parse_date(&value[at + 1..])),
        None => match unseparated_date(value, &tokens) {
            Some((k, at)) => (&tokens[..k], Some(at)),
            None => (&tokens[..], None),
        },
    };

    let mut hop = Hop { at, ..Hop::default() };
    let mut tls = Tls::default();
    // The clause whose value comes next, and whether `with` may still grow
    // (`with Microsoft SMTP Server` is three words).
    let mut expecting: Option<Clause> = None;
    let mut with_open = false;
    // The address literal of a `from` clause that has only a comment
    // (`from ([192.0.2.1]) by ...`, as Exchange and MailEnable write it).
    let mut from_literal: Option<String> = None;
    for tok in clauses {
        match tok {
            Tok::Comment(c) => {
                if expecting == Some(Clause::From) {
                    from_literal = from_literal.or_else(|| address_literal(c));
                }
                tls.read_comment(c);
                with_open = false;
            }
            Tok::Semi(_) => {
                expecting = None;
                with_open = false;
            }
            Tok::Word(w, _) => {
                // A keyword where a value was expected: that clause has no
                // value (only a comment), and this word opens the next one.
                if expecting.is_some() && Clause::of(w).is_some_and(Clause::is_keyword) {
                    expecting = None;
                }
                if let Some(clause) = expecting.take() {
                    let slot = match clause {
                        Clause::From => &mut hop.from,
                        Clause::By => &mut hop.by,
                        Clause::With => {
                            with_open = hop.with.is_none();
                            &mut hop.with
                        }
                        Clause::Id => &mut hop.id,
                        Clause::Tls => {
                            tls.cipher.get_or_insert_with(|| w.clone());
                            continue;
                        }
                        Clause::Other => continue,
                    };
                    slot.get_or_insert_with(|| w.clone());
                    continue;
                }
                match Clause::of(w) {
                    Some(c) => {
                        expecting = Some(c);
                        with_open = false;
                    }
                    None if with_open => {
                        if let Some(with) = hop.with.as_mut() {
                            with.push(' ');
                            with.push_str(w);
                        }
                    }
                    None => {}
                }
            }
        }
    }
    if hop.from.is_none() {
        hop.from = from_literal;
    }
    // `with ESMTP/TLS/AES256-SHA`: the protocol, then the session's cipher.
    if let Some(with) = hop.with.as_mut()
        && let Some((proto, cipher)) = split_with_tls(with)
    {
        tls.version.get_or_insert_with(|| "TLS".to_string());
        if !cipher.is_empty() {
            tls.cipher.get_or_insert(cipher);
        }
        *with = proto;
    }
    // qmail's TLS patch and MessageLabs: `with AES256-SHA encrypted SMTP`
    // (the cipher, then the protocol), or `with encrypted SMTP`.
    if let Some(with) = hop.with.as_mut() {
        let words: Vec<&str> = with.split_whitespace().collect();
        if let Some(p) = words.iter().position(|w| w.eq_ignore_ascii_case("encrypted")) {
            tls.version.get_or_insert_with(|| "TLS".to_string());
            if p > 0 {
                tls.cipher.get_or_insert_with(|| words[..p].join(" "));
            }
            if p + 1 < words.len() {
                *with = words[p + 1..].join(" ");
            }
        }
    }
    // RFC 3848 (and Zoho's SMTPS): the protocol name alone says the
    // session used TLS, even where nothing names the version.
    const TLS_PROTOCOLS: [&str; 7] = ["ESMTPS", "ESMTPSA", "UTF8SMTPS", "UTF8SMTPSA", "LMTPS", "LMTPSA", "SMTPS"];
    if tls.version.is_none()
        && tls.cipher.is_none()
        && hop.with.as_deref().is_some_and(|w| TLS_PROTOCOLS.iter().any(|p| p.eq_ignore_ascii_case(w)))
    {
        tls.version = Some("TLS".to_string());
    }
    hop.tls = tls.describe();
    hop
}

/// A date that ends the header without the `;` before it, as SendGrid
/// writes it (`... id QpQFtE6k Wed, 08 Jan 2020 21:07:49.090 +0000 (UTC)`,
/// or Go's `2022-03-29 16:52:45.972975691 +0000 UTC m=+18037950.38`):
/// the first word that can open a date (a day name, a day of the month
/// before a month name, an ISO date) from which the rest reads as one.
/// Returns the index of that word's token and the date.
fn unseparated_date(value: &str, tokens: &[Tok]) -> Option<(usize, DateTime<FixedOffset>)> {
    const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let words: Vec<(usize, &str, usize)> = tokens
        .iter()
        .enumerate()
        .filter_map(|(k, t)| match t {
            Tok::Word(w, at) => Some((k, w.as_str(), *at)),
            _ => None,
        })
        .collect();
    words.iter().enumerate().find_map(|(n, &(k, w, at))| {
        let bare = w.trim_end_matches(',').to_ascii_lowercase();
        let opens = DAYS.contains(&bare.as_str())
            || (bare.len() <= 2
                && bare.bytes().all(|b| b.is_ascii_digit())
                && words.get(n + 1).is_some_and(|(_, m, _)| month_of(m).is_some()))
            || iso_date(w).is_some();
        // A value after a keyword (`id Wed`) is that clause's, not a date.
        let after_keyword = n > 0 && Clause::of(words[n - 1].1).is_some();
        if !opens || after_keyword {
            return None;
        }
        parse_date(&value[at..]).map(|d| (k, d))
    })
}

/// `YYYY-MM-DD`.
fn iso_date(w: &str) -> Option<(i32, u32, u32)> {
    let mut parts = w.split('-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    let digits = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_digit());
    (parts.next().is_none() && digits(y, 4) && digits(m, 2) && digits(d, 2))
        .then(|| Some((y.parse().ok()?, m.parse().ok()?, d.parse().ok()?)))?
}

/// `[192.0.2.1]`, `[IPv6:2001:db8::1]`, `[10.225.209.19:33672]` (with
/// the client's port) or a bare `130.215.36.186` at the start of a comment.
fn address_literal(comment: &str) -> Option<String> {
    let w = comment.split_whitespace().next()?;
    if w.starts_with('[') && w.ends_with(']') && w.len() > 2 {
        return Some(w.to_string());
    }
    w.parse::<std::net::IpAddr>().is_ok().then(|| w.to_string())
}

/// `ESMTP/TLS/AES256-SHA` → (`ESMTP`, `AES256-SHA`).
fn split_with_tls(with: &str) -> Option<(String, String)> {
    let mut parts = with.splitn(3, '/');
    let proto = parts.next()?;
    let tls = parts.next()?;
    (!proto.is_empty() && (tls.eq_ignore_ascii_case("TLS") || tls.eq_ignore_ascii_case("SSL")))
        .then(|| (proto.to_string(), parts.next().unwrap_or("").to_string()))
}

/// Hops in travel order (oldest first) with the delay each added.
///
/// `received_top_first` are the message's `Received:` values as they appear
/// (the newest on top). The first hop is measured from `sent_at` when given.
///
/// `Received:` dates have a resolution of one second, so every delay is
/// good to about ±1 s: a 0 ms delay means "under a second", and `sent_at` is
/// truncated to the second to compare like with like. Nothing is invented:
/// a hop without a readable date, or after one, has no delay, and a
/// negative delay (a receiver's clock behind the previous one) is reported
/// as clock skew in `note`, not as a number.
pub fn hop_delays(received_top_first: &[&str], sent_at: Option<DateTime<Utc>>) -> Vec<HopDelay> {
    // Previous time to measure against; `Err(note)` when there is none.
    let mut prev: Result<DateTime<Utc>, Option<&str>> = sent_at.map(|t| t.trunc_subsecs(0)).ok_or(None);
    let mut out = Vec::with_capacity(received_top_first.len());
    for value in received_top_first.iter().rev() {
        let hop = parse(value);
        let (delay_ms, note) = match (hop.at, prev) {
            (None, _) => (None, Some("no date".to_string())),
            (Some(_), Err(note)) => (None, note.map(str::to_string)),
            (Some(at), Ok(p)) => {
                let ms = (at.with_timezone(&Utc) - p).num_milliseconds();
                if ms < 0 { (None, Some(format!("clock skew: {ms} ms"))) } else { (Some(ms), None) }
            }
        };
        prev = hop.at.map(|t| t.with_timezone(&Utc)).ok_or(Some("previous hop has no date"));
        out.push(HopDelay {
            from: hop.from,
            by: hop.by,
            with: hop.with,
            tls: hop.tls,
            at: hop.at.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true)),
            delay_ms,
            note,
        });
    }
    out
}

/// Parses an RFC 5322 date-time, obsolete forms included: optional day
/// name, one- or two-digit day, two- and three-digit years, missing
/// seconds, zone names (`GMT`, `UT`, `EST`, `PDT`, military letters) and
/// comments such as a trailing `(UTC)`. A date without a zone is `None`:
/// its instant is unknown.
pub fn parse_date(s: &str) -> Option<DateTime<FixedOffset>> {
    let mut words = Vec::new();
    let mut i = 0;
    let mut word_start = None;
    let bytes = s.as_bytes();
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'(' || b == b')' || b == b',' || b.is_ascii_whitespace() {
            if let Some(st) = word_start.take() {
                words.push(&s[st..i]);
            }
            i = if b == b'(' { take_comment(s, i).1 } else { i + 1 };
        } else {
            word_start.get_or_insert(i);
            i += 1;
        }
    }
    if let Some(st) = word_start {
        words.push(&s[st..]);
    }

    let (mut day, mut month, mut year, mut time, mut zone) = (None, None, None, None, None);
    for w in words {
        if w.contains(':') && time.is_none() {
            time = parse_time(w);
        } else if let Some((y, m, d)) = iso_date(w).filter(|_| year.is_none() && month.is_none() && day.is_none()) {
            (year, month, day) = (Some(y), Some(m), Some(d));
        } else if let Some(m) = month_of(w) {
            month = month.or(Some(m));
        } else if w.bytes().all(|b| b.is_ascii_digit()) {
            if day.is_none() && w.len() <= 2 {
                day = w.parse::<u32>().ok();
            } else if year.is_none() && w.len() <= 4 {
                year = w.parse::<i32>().ok().map(|y| match w.len() {
                    // RFC 5322 §4.3: two digits are 1950–2049, three are 1900+.
                    1 | 2 if y < 50 => 2000 + y,
                    1..=3 => 1900 + y,
                    _ => y,
                });
            }
        } else if zone.is_none() && time.is_some() {
            // The zone follows the time (a day name comes before it).
            zone = zone_of(w);
        }
    }
    let date = NaiveDate::from_ymd_opt(year?, month?, day?)?;
    let (h, m, sec) = time?;
    // A leap second (:60) is kept as chrono's leap-second representation.
    let naive = if sec == 60 { date.and_hms_milli_opt(h, m, 59, 1_000)? } else { date.and_hms_opt(h, m, sec)? };
    zone?.from_local_datetime(&naive).single()
}

/// `hh:mm`, `hh:mm:ss`, or with fractional seconds (`07:53:55.516`, as
/// SendGrid writes them); the fraction is dropped, since every other hop's
/// date is to the second and mixing resolutions would invent clock skew.
fn parse_time(w: &str) -> Option<(u32, u32, u32)> {
    let mut parts = w.split(':');
    let num = |p: Option<&str>| -> Option<u32> {
        let p = p?;
        (!p.is_empty() && p.len() <= 2 && p.bytes().all(|b| b.is_ascii_digit())).then(|| p.parse().ok())?
    };
    let h = num(parts.next())?;
    let m = num(parts.next())?;
    let s = match parts.next() {
        None => 0,
        Some(sec) => {
            let (whole, frac) = sec.split_once('.').unwrap_or((sec, "0"));
            if frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            num(Some(whole))?
        }
    };
    (parts.next().is_none() && h < 24 && m < 60 && s <= 60).then_some((h, m, s))
}

fn month_of(w: &str) -> Option<u32> {
    const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
    if w.len() < 3 || !w.is_ascii() {
        return None;
    }
    let lower = w.to_ascii_lowercase();
    MONTHS.iter().position(|m| lower.starts_with(m)).map(|i| i as u32 + 1).filter(|_| {
        // "Mar" or "March", not "Marvin".
        let full = [
            "january",
            "february",
            "march",
            "april",
            "may",
            "june",
            "july",
            "august",
            "september",
            "october",
            "november",
            "december",
        ];
        lower.len() == 3 || full.iter().any(|f| f.starts_with(&lower))
    })
}

fn zone_of(w: &str) -> Option<FixedOffset> {
    let hours = |h: i32| FixedOffset::east_opt(h * 3600);
    if let Some(digits) = w.strip_prefix('+').map(|d| (1, d)).or_else(|| w.strip_prefix('-').map(|d| (-1, d))) {
        let (sign, d) = digits;
        let d = d.replace(':', "");
        if d.len() != 4 || !d.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let hh: i32 = d[..2].parse().ok()?;
        let mm: i32 = d[2..].parse().ok()?;
        if mm >= 60 {
            return None;
        }
        return FixedOffset::east_opt(sign * (hh * 3600 + mm * 60));
    }
    match w.to_ascii_uppercase().as_str() {
        "UT" | "UTC" | "GMT" | "Z" => hours(0),
        "EDT" => hours(-4),
        "EST" | "CDT" => hours(-5),
        "CST" | "MDT" => hours(-6),
        "MST" | "PDT" => hours(-7),
        "PST" => hours(-8),
        // RFC 5322 §4.3: military zones were defined backwards, and any
        // other alphabetic zone whose meaning is not known is -0000 (an
        // instant in UTC, local offset unknown). `J` is no zone at all.
        "J" => None,
        z if !z.is_empty() && z.len() <= 5 && z.bytes().all(|b| b.is_ascii_alphabetic()) => hours(0),
        _ => None,
    }
}

/// The clauses of a `Received:` stamp; each keyword is followed by its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clause {
    From,
    By,
    With,
    Id,
    /// Exim's `tls CIPHER` after `with esmtps (TLS1.3)`.
    Tls,
    /// `via` and `for`: read past, not kept.
    Other,
}

impl Clause {
    fn of(word: &str) -> Option<Clause> {
        Some(match word.to_ascii_lowercase().as_str() {
            "from" => Clause::From,
            "by" => Clause::By,
            "with" => Clause::With,
            "id" => Clause::Id,
            "tls" => Clause::Tls,
            "via" | "for" => Clause::Other,
            _ => return None,
        })
    }

    /// A word that always opens a clause of RFC 5321's `Stamp` and so can
    /// never be a clause's value. (`tls` is Exim's own and may be a value.)
    fn is_keyword(self) -> bool {
        self != Clause::Tls
    }
}

/// What the comments say about TLS.
#[derive(Debug, Default)]
struct Tls {
    version: Option<String>,
    cipher: Option<String>,
}

impl Tls {
    fn read_comment(&mut self, c: &str) {
        let words: Vec<&str> = c.split(|ch: char| ch.is_whitespace() || ch == ',').filter(|w| !w.is_empty()).collect();
        // Postfix: "using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) ..."
        if words.first().is_some_and(|w| w.eq_ignore_ascii_case("using")) {
            if let Some(v) = words.get(1) {
                self.version.get_or_insert_with(|| tls_version(v));
            }
            if let Some(k) = words.iter().position(|w| w.eq_ignore_ascii_case("cipher"))
                && let Some(cipher) = words.get(k + 1)
            {
                self.cipher.get_or_insert_with(|| cipher.to_string());
            }
            return;
        }
        // Sendmail, Gmail, Exchange: "version=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384 bits=256".
        let value = |key: &str| {
            words.iter().find_map(|w| {
                let (k, v) = w.split_once('=')?;
                (k.eq_ignore_ascii_case(key) && !v.is_empty()).then_some(v)
            })
        };
        let version = value("version").filter(|v| looks_like_tls(v));
        let cipher = value("cipher");
        if version.is_some() || cipher.is_some() {
            if let Some(v) = version {
                self.version.get_or_insert_with(|| tls_version(v));
            }
            if let Some(c) = cipher {
                self.cipher.get_or_insert_with(|| c.to_string());
            }
            return;
        }
        // qpsmtpd and qmail: "with (ECDHE-RSA-AES256-GCM-SHA384 encrypted) SMTP".
        if let [cipher, enc] = words.as_slice()
            && enc.eq_ignore_ascii_case("encrypted")
        {
            self.version.get_or_insert_with(|| "TLS".to_string());
            self.cipher.get_or_insert_with(|| cipher.to_string());
            return;
        }
        // Courier: "... TLS: TLS1.3, 128bits, ECDHE_RSA_AES_128_GCM_SHA256".
        if let Some(k) = words.iter().position(|w| w.eq_ignore_ascii_case("TLS:")) {
            let mut rest = words[k + 1..].iter().filter(|w| !is_bits(w));
            if let Some(v) = rest.next() {
                self.version.get_or_insert_with(|| tls_version(v));
            }
            if let Some(c) = rest.next() {
                self.cipher.get_or_insert_with(|| c.to_string());
            }
            return;
        }
        // Exim: "(TLS1.3)" or the older "(TLS1.2:ECDHE_RSA_AES_256_GCM_SHA384:256)";
        // older still "(Cipher TLSv1:DES-CBC3-SHA:168)" and "(tls_cipher ...)".
        let words = match words.as_slice() {
            [label, rest @ ..] if label.eq_ignore_ascii_case("cipher") || label.eq_ignore_ascii_case("tls_cipher") => {
                if let [only] = rest
                    && !only.contains(':')
                    && !looks_like_tls(only)
                {
                    // `(tls_cipher AES256-SHA)`: the cipher alone.
                    self.cipher.get_or_insert_with(|| only.to_string());
                    self.version.get_or_insert_with(|| "TLS".to_string());
                    return;
                }
                rest
            }
            all => all,
        };
        if let [only] = words {
            let mut parts = only.split(':');
            if let Some(v) = parts.next().filter(|v| looks_like_tls(v)) {
                self.version.get_or_insert_with(|| tls_version(v));
                if let Some(c) = parts.next().filter(|c| !c.is_empty()) {
                    self.cipher.get_or_insert_with(|| c.to_string());
                }
            }
        }
    }

    fn describe(self) -> Option<String> {
        match (self.version, self.cipher) {
            (Some(v), Some(c)) => Some(format!("{v} {c}")),
            (Some(v), None) => Some(v),
            (None, Some(c)) => Some(c),
            (None, None) => None,
        }
    }
}

/// `128bits`, `256-bits`: Courier's key size, not the cipher.
fn is_bits(w: &str) -> bool {
    let lower = w.to_ascii_lowercase();
    lower.strip_suffix("bits").is_some_and(|n| n.trim_end_matches('-').bytes().all(|b| b.is_ascii_digit()))
}

fn looks_like_tls(v: &str) -> bool {
    let upper = v.to_ascii_uppercase();
    (upper.starts_with("TLS") || upper.starts_with("SSL")) && upper.len() > 3
}

/// `TLS1_3`, `TLS1.3`, `tlsv1.3`, `TLS-1.3` → `TLSv1.3`; `TLSv1`, `TLS1`
/// → `TLSv1.0`; OpenSSL's old `TLSv1/SSLv3` (the protocol family of a
/// cipher, as OpenSSL before 1.0.1 named it) → `TLSv1.0`; anything else as
/// written.
fn tls_version(v: &str) -> String {
    if v.eq_ignore_ascii_case("TLSv1/SSLv3") {
        return "TLSv1.0".to_string();
    }
    match v.get(..3) {
        Some(p) if p.eq_ignore_ascii_case("tls") => {
            let rest = &v[3..];
            let rest = rest.strip_prefix(['v', 'V', '-', '_']).unwrap_or(rest);
            if rest.is_empty()
                || !rest.as_bytes()[0].is_ascii_digit()
                || !rest.bytes().all(|b| b.is_ascii_digit() || b == b'.' || b == b'_')
            {
                return v.to_string();
            }
            let rest = rest.replace('_', ".");
            if rest.contains('.') { format!("TLSv{rest}") } else { format!("TLSv{rest}.0") }
        }
        _ => v.to_string(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// A word and its byte offset.
    Word(String, usize),
    Comment(String),
    /// A `;` outside comments, with its byte offset.
    Semi(usize),
}

fn lex(value: &str) -> Vec<Tok> {
    let mut tokens = Vec::new();
    let bytes = value.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b if b.is_ascii_whitespace() || b == b')' => i += 1,
            b';' => {
                tokens.push(Tok::Semi(i));
                i += 1;
            }
            b'(' => {
                let (text, next) = take_comment(value, i);
                tokens.push(Tok::Comment(text));
                i = next;
            }
            _ => {
                let end = value[i..]
                    .find(|c: char| c.is_ascii_whitespace() || "();".contains(c))
                    .map_or(value.len(), |n| i + n);
                tokens.push(Tok::Word(value[i..end].to_string(), i));
                i = end;
            }
        }
    }
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[track_caller]
    fn date(s: &str, expect: Option<&str>) {
        assert_eq!(parse_date(s).map(|d| d.to_rfc3339()).as_deref(), expect, "{s:?}");
    }

    #[test]
    fn dates_current_and_obsolete() {
        date("Fri, 27 Nov 2026 22:56:51 +0000", Some("2026-11-27T22:56:51+00:00"));
        date("Fri, 27 Nov 2026 22:56:51 +0000 (UTC)", Some("2026-11-27T22:56:51+00:00"));
        date("Tue, 10 Sep 2024 04:23:45 -0700 (PDT)", Some("2024-09-10T04:23:45-07:00"));
        date("27 Nov 2026 22:56:51 -0000", Some("2026-11-27T22:56:51+00:00"));
        date(" 1 Jan 26 00:00 GMT", Some("2026-01-01T00:00:00+00:00"));
        date("Sat, 1 January 99 12:00:00 EST", Some("1999-01-01T12:00:00-05:00"));
        date("Fri,27 Nov 2026 22:56:51 +0530", Some("2026-11-27T22:56:51+05:30"));
        date("Fri, 27 Nov 2026 22:56:51 Z", Some("2026-11-27T22:56:51+00:00"));
    }

    #[test]
    fn dates_that_are_not_dates() {
        date("", None);
        date("Fri, 27 Nov 2026 22:56:51", None); // no zone: instant unknown
        date("Fri, 31 Feb 2026 22:56:51 +0000", None);
        date("Fri, 27 Nov 2026 24:00:00 +0000", None);
        date("Fri, 27 Nov 2026 22:56:51 +9999", None);
        date("Fri, 27 Marvin 2026 22:56:51 +0000", None);
        date("yesterday", None);
    }

    #[test]
    fn postfix_with_tls() {
        let h = parse(
            "from mail.sender.test (localhost [127.0.0.1])\n\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))\n\
             \tby mx.receiver.test (Postfix) with ESMTPS id F0489DA042\n\tfor <probe@receiver.test>; Fri, 27 Nov 2026 22:56:51 +0000 (UTC)",
        );
        assert_eq!(h.from.as_deref(), Some("mail.sender.test"));
        assert_eq!(h.by.as_deref(), Some("mx.receiver.test"));
        assert_eq!(h.with.as_deref(), Some("ESMTPS"));
        assert_eq!(h.id.as_deref(), Some("F0489DA042"));
        assert_eq!(h.tls.as_deref(), Some("TLSv1.3 TLS_AES_256_GCM_SHA384"));
        assert_eq!(h.at.unwrap().to_rfc3339(), "2026-11-27T22:56:51+00:00");
    }

    #[test]
    fn exchange_multiword_with_and_exim_tls() {
        let h = parse(
            "from A.outlook.com (2603:10a6::1) by B.outlook.com (2603:10a6::2) with Microsoft SMTP Server \
             (version=TLS1_2, cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384) id 15.20.7849.10; Fri, 27 Nov 2026 22:56:51 +0000",
        );
        assert_eq!(h.with.as_deref(), Some("Microsoft SMTP Server"));
        assert_eq!(h.tls.as_deref(), Some("TLSv1.2 TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"));
        assert_eq!(h.id.as_deref(), Some("15.20.7849.10"));
        let h = parse(
            "from [192.0.2.1] (helo=mail.example.com) by mx.example.org with esmtps (TLS1.3) tls TLS_AES_256_GCM_SHA384 (Exim 4.96) id 1rXyZ1-000Abc-2A; Fri, 27 Nov 2026 22:56:51 +0000",
        );
        assert_eq!((h.from.as_deref(), h.with.as_deref()), (Some("[192.0.2.1]"), Some("esmtps")));
        assert_eq!(h.tls.as_deref(), Some("TLSv1.3 TLS_AES_256_GCM_SHA384"));
    }

    #[test]
    fn dates_with_fractions_and_unknown_zones() {
        // SendGrid writes milliseconds; the fraction is dropped (hops are to the second).
        date("Mon, 06 Jan 2025 07:53:55.516 +0000 (UTC)", Some("2025-01-06T07:53:55+00:00"));
        date("Mon, 06 Jan 2025 07:53:55.5 -0500", Some("2025-01-06T07:53:55-05:00"));
        date("Mon, 06 Jan 2025 07:53:55. +0000", None);
        date("Mon, 06 Jan 2025 07:53:55.5x +0000", None);
        // RFC 5322 §4.3: an unknown alphabetic zone is -0000, not "no date".
        date("Mon, 06 Jan 2025 07:53:55 CEST", Some("2025-01-06T07:53:55+00:00"));
        date("Mon, 06 Jan 2025 07:53:55 XYZ (whatever)", Some("2025-01-06T07:53:55+00:00"));
        date("Mon, 06 Jan 2025 07:53:55 J", None);
        date("Mon, 06 Jan 2025 07:53:55 +05:30", Some("2025-01-06T07:53:55+05:30"));
        // A day name is not a zone.
        date("Mon, 06 Jan 2025 07:53:55", None);
    }

    #[test]
    fn date_without_its_semicolon() {
        // SendGrid's ismtpd and filterdrecv (Go's time format) leave the `;` out.
        let h = parse(
            "from bionic.localdomain (unknown [98.128.173.80])\n        by ismtpd0005p1lon1.sendgrid.net (SG) with ESMTP id QpQFtE6kTYGCgtswu4iudQ\n        Wed, 08 Jan 2020 21:07:49.090 +0000 (UTC)",
        );
        assert_eq!(h.id.as_deref(), Some("QpQFtE6kTYGCgtswu4iudQ"));
        assert_eq!(h.at.unwrap().to_rfc3339(), "2020-01-08T21:07:49+00:00");
        let h = parse(
            "by filterdrecv-p3mdw1-56c97568b5-bbmbb with SMTP id filterdrecv-p3mdw1-56c97568b5-bbmbb-18-5E1644A5-10\n        2020-01-08 21:07:49.289120385 +0000 UTC m=+1974277.925691392",
        );
        assert_eq!((h.by.as_deref(), h.with.as_deref()), (Some("filterdrecv-p3mdw1-56c97568b5-bbmbb"), Some("SMTP")));
        assert_eq!(h.at.unwrap().to_rfc3339(), "2020-01-08T21:07:49+00:00");
        // No date anywhere: none invented; an id that looks like a day stays the id.
        assert_eq!(parse("from a by b with SMTP id Wed").id.as_deref(), Some("Wed"));
        assert_eq!(parse("from a by b with SMTP id Wed").at, None);
    }

    #[test]
    fn from_with_only_a_comment() {
        // Exchange and MailEnable: issue 16 read `from = "by"` and lost the rest.
        let h = parse("from ([192.0.2.1]) by mail.example.com with MailEnable ESMTP; Mon, 06 Jan 2025 07:53:55 +0000");
        assert_eq!(h.from.as_deref(), Some("[192.0.2.1]"));
        assert_eq!(h.by.as_deref(), Some("mail.example.com"));
        assert_eq!(h.with.as_deref(), Some("MailEnable ESMTP"));
        let h = parse("from (unknown) by mx.example.org with SMTP id 42; Mon, 06 Jan 2025 07:53:55 +0000");
        assert_eq!(
            (h.from, h.by.as_deref(), h.with.as_deref(), h.id.as_deref()),
            (None, Some("mx.example.org"), Some("SMTP"), Some("42"))
        );
        // A clause with no value at all does not swallow the next keyword either.
        let h = parse("from by mx.example.org with id 7; Mon, 06 Jan 2025 07:53:55 +0000");
        assert_eq!((h.from, h.by.as_deref(), h.with, h.id.as_deref()), (None, Some("mx.example.org"), None, Some("7")));
    }

    #[track_caller]
    fn tls_of(value: &str, expect: &str) {
        assert_eq!(parse(value).tls.as_deref(), Some(expect), "{value:?}");
    }

    #[test]
    fn tls_in_every_mtas_words() {
        tls_of(
            "from a.example (a.example [192.0.2.1]) (TLS: TLS1.3, 128bits, ECDHE_RSA_AES_128_GCM_SHA256) by b.example with ESMTPS; Mon, 06 Jan 2025 07:53:55 +0000",
            "TLSv1.3 ECDHE_RSA_AES_128_GCM_SHA256",
        );
        let h = parse(
            "from a.example by b.example with ESMTP/TLS/DHE-RSA-AES256-SHA id 1; Mon, 06 Jan 2025 07:53:55 +0000",
        );
        assert_eq!((h.with.as_deref(), h.tls.as_deref()), (Some("ESMTP"), Some("TLS DHE-RSA-AES256-SHA")));
        tls_of(
            "from a.example ([192.0.2.1]) by b.example with esmtp (Cipher TLSv1:DES-CBC3-SHA:168) (Exim 4.50) id 1A; Mon, 06 Jan 2025 07:53:55 +0000",
            "TLSv1.0 DES-CBC3-SHA",
        );
        tls_of(
            "from a.example by b.example with esmtps (tls_cipher TLSv1.2:ECDHE-RSA-AES256-GCM-SHA384:256) (Exim 4.80) id 1A; Mon, 06 Jan 2025 07:53:55 +0000",
            "TLSv1.2 ECDHE-RSA-AES256-GCM-SHA384",
        );
        tls_of(
            "from a.example by b.example with esmtp (tls_cipher AES256-SHA) id 1A; Mon, 06 Jan 2025 07:53:55 +0000",
            "TLS AES256-SHA",
        );
        let h = parse("from a.example by b.example with encrypted SMTP; Mon, 06 Jan 2025 07:53:55 +0000");
        assert_eq!((h.with.as_deref(), h.tls.as_deref()), (Some("SMTP"), Some("TLS")));
        let h = parse(
            "from unknown (HELO a.example) (192.0.2.1)\n  by b.example with ECDHE-RSA-AES256-GCM-SHA384\n encrypted SMTP; 13 Aug 2019 15:15:23 -0000",
        );
        assert_eq!((h.with.as_deref(), h.tls.as_deref()), (Some("SMTP"), Some("TLS ECDHE-RSA-AES256-GCM-SHA384")));
        let h = parse(
            "from a (HELO a) (10.0.0.7)\n by b (qpsmtpd/0.94) with (ECDHE-RSA-AES256-GCM-SHA384 encrypted) SMTP; Wed, 09 May 2018 03:56:38 -0400",
        );
        assert_eq!((h.with.as_deref(), h.tls.as_deref()), (Some("SMTP"), Some("TLS ECDHE-RSA-AES256-GCM-SHA384")));
        tls_of(
            "from a by b (version=TLS-1.0 cipher=AES128-SHA bits=128) with ESMTPS; Mon, 06 Jan 2025 07:53:55 +0000",
            "TLSv1.0 AES128-SHA",
        );
        tls_of(
            "from a by b (version=TLSv1/SSLv3 cipher=DHE-RSA-AES256-SHA bits=256 verify=NOT) with ESMTP; Mon, 06 Jan 2025 07:53:55 +0000",
            "TLSv1.0 DHE-RSA-AES256-SHA",
        );
        // RFC 3848's protocol names say TLS without a version.
        tls_of("from a by b with ESMTPSA id 1; Mon, 06 Jan 2025 07:53:55 +0000", "TLS");
        tls_of("by mx.zohomail.com with SMTPS id 1; Mon, 06 Jan 2025 07:53:55 +0000", "TLS");
        assert_eq!(parse("from a by b with ESMTPA id 1; Mon, 06 Jan 2025 07:53:55 +0000").tls, None);
        // No TLS words: no TLS.
        assert_eq!(parse("from a (Cipher) by b with SMTP; Mon, 06 Jan 2025 07:53:55 +0000").tls, None);
        assert_eq!(parse("from a by b with ESMTP/TLSX; Mon, 06 Jan 2025 07:53:55 +0000").tls, None);
    }

    #[test]
    fn nothing_to_read_is_all_none() {
        assert_eq!(parse(""), Hop::default());
        assert_eq!(parse(";;;((("), Hop::default());
    }

    #[test]
    fn delays_in_travel_order() {
        let top = "from b by c with LMTP; Fri, 27 Nov 2026 22:56:53 +0000";
        let mid = "from a by b with ESMTPS; Fri, 27 Nov 2026 23:56:52 +0100";
        let bottom = "from x by a with ESMTPSA; Fri, 27 Nov 2026 22:56:51 +0000";
        let d = hop_delays(&[top, mid, bottom], Some(utc("2026-11-27T22:56:50.900Z")));
        let got: Vec<_> = d.iter().map(|h| (h.by.as_deref().unwrap(), h.delay_ms, h.note.as_deref())).collect();
        assert_eq!(got, [("a", Some(1000), None), ("b", Some(1000), None), ("c", Some(1000), None)]);
        assert_eq!(d[1].at.as_deref(), Some("2026-11-27T23:56:52+01:00"));
        assert_eq!(d[0].at.as_deref(), Some("2026-11-27T22:56:51Z"));
    }

    #[test]
    fn no_invented_numbers() {
        let skewed = "from b by c; Fri, 27 Nov 2026 22:56:49 +0000";
        let undated = "from a by b with SMTP id X";
        let first = "from x by a; Fri, 27 Nov 2026 22:56:51 +0000";
        let d = hop_delays(&[skewed, undated, first], None);
        let got: Vec<_> = d.iter().map(|h| (h.delay_ms, h.note.as_deref())).collect();
        assert_eq!(got, [(None, None), (None, Some("no date")), (None, Some("previous hop has no date"))]);
        let d = hop_delays(&[skewed, first], None);
        assert_eq!((d[1].delay_ms, d[1].note.as_deref()), (None, Some("clock skew: -2000 ms")));
    }
}
