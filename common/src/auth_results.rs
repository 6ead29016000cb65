//! `Authentication-Results` (RFC 8601) parsing, and the verdict a probe reports.
//!
//! A receiving server records what it checked (SPF, DKIM, DMARC, ARC, ...) in
//! an `Authentication-Results` header at the top of the message. The probe
//! reads it back from the mailbox to say whether the mail it sent would pass
//! a recipient's authentication checks.
//!
//! [`parse`] reads one header *value* (the part after the colon, folded or
//! not). It follows the RFC 8601 grammar but is liberal, because real
//! headers break it: Exchange Online writes no authserv-id, Fastmail and
//! Microsoft add dotless properties (`action=none`, `x-bits=2048`), some
//! servers forget a `;` between two results, comments hold `;` and nested
//! parentheses. It never panics, runs in time linear in the input and does
//! not recurse; only a value that says nothing usable is an error.
//!
//! [`summarize`] takes every such header of a message and keeps only those
//! written by a server we trust (matched by authserv-id), since anyone can
//! put an `Authentication-Results` header into the mail they send.

use serde::{Deserialize, Serialize};

/// One parsed `Authentication-Results` header value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthResults {
    /// Who did the checks (`mx.google.com`), as written. Empty when the header
    /// has none (Exchange Online writes its results without one).
    pub authserv_id: String,
    /// The authserv-id's version (`example.com 1;`), when given.
    pub version: Option<u32>,
    /// The instance `i=N` of an `ARC-Authentication-Results` value (RFC 8617);
    /// absent for a plain `Authentication-Results`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arc_instance: Option<u32>,
    /// Every method result, in header order.
    pub results: Vec<MethodResult>,
    /// `true` for the explicit `none` (no authentication was done).
    pub none: bool,
}

/// The result of one authentication method, e.g. `dkim=pass header.d=example.com`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MethodResult {
    /// The method, lowercased: `spf`, `dkim`, `dmarc`, `arc`, `iprev`,
    /// `auth`, `dkim-atps`, `bimi`, ... Unknown and experimental (`x-...`)
    /// methods are kept too.
    pub method: String,
    /// The method version (`dkim/1=pass`), when given.
    pub version: Option<u32>,
    /// The result, lowercased: `pass`, `fail`, `softfail`, `neutral`,
    /// `none`, `temperror`, `permerror`, `policy`, ...
    pub result: String,
    /// The `reason=` text, unquoted.
    pub reason: Option<String>,
    /// Properties in header order.
    pub properties: Vec<Property>,
    /// Comments that belong to this result, without their parentheses and
    /// with folding whitespace collapsed.
    pub comments: Vec<String>,
}

/// One property of a result, e.g. `header.d=example.com`.
///
/// Microsoft's and Fastmail's dotless extras (`action=none`,
/// `x-bits=2048`) have an empty `ptype`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Property {
    /// `smtp`, `header`, `body`, `policy` (or another, lowercased).
    pub ptype: String,
    /// `mailfrom`, `d`, `from`, ... (lowercased).
    pub name: String,
    /// The value as written (a quoted string is unquoted).
    pub value: String,
}

/// Why a header value could not be read at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty Authentication-Results value (nothing but whitespace and comments)")]
    Empty,
    #[error("Authentication-Results from {authserv_id:?} holds no method result and no `none`")]
    NoResults { authserv_id: String },
    #[error("neither an authserv-id nor a method result in Authentication-Results {start:?}")]
    Unrecognized { start: String },
}

impl MethodResult {
    /// The value of the first property named `key` (`"header.d"`,
    /// `"smtp.mailfrom"`, or a dotless `"action"`), case-insensitively.
    pub fn prop(&self, key: &str) -> Option<&str> {
        let (ptype, name) = key.split_once('.').unwrap_or(("", key));
        self.properties
            .iter()
            .find(|p| p.ptype.eq_ignore_ascii_case(ptype) && p.name.eq_ignore_ascii_case(name))
            .map(|p| p.value.as_str())
    }

    /// The signing or checked domain of this result, lowercased: `header.d`,
    /// else the domain of `header.i` (Gmail writes only `header.i=@example.com`).
    fn dkim_domain(&self) -> Option<String> {
        self.prop("header.d").and_then(domain_part).or_else(|| self.prop("header.i").and_then(domain_part))
    }
}

impl AuthResults {
    /// The results of one method (`"dkim"`), in header order.
    pub fn method<'a>(&'a self, method: &'a str) -> impl Iterator<Item = &'a MethodResult> + 'a {
        self.results.iter().filter(move |r| r.method.eq_ignore_ascii_case(method))
    }
}

/// Methods registered with IANA (plus Microsoft's `compauth`). A dotless
/// `key=value` with one of these names starts a new result even without the
/// `;` that should come before it; any other dotless key is a property.
const KNOWN_METHODS: &[&str] = &[
    "arc",
    "auth",
    "bimi",
    "compauth",
    "dkim",
    "dkim-adsp",
    "dkim-atps",
    "dmarc",
    "dnswl",
    "domainkeys",
    "iprev",
    "rrvs",
    "sender-id",
    "smime",
    "spf",
    "vbr",
];

/// Parses one `Authentication-Results` (or `ARC-Authentication-Results`)
/// header value.
///
/// ```
/// use mailloop_common::auth_results::parse;
/// let ar = parse("mx.receiver.test; spf=pass smtp.mailfrom=sender.test").unwrap();
/// assert_eq!(ar.authserv_id, "mx.receiver.test");
/// assert_eq!(ar.results[0].prop("smtp.mailfrom"), Some("sender.test"));
/// ```
pub fn parse(value: &str) -> Result<AuthResults, ParseError> {
    let tokens = lex(value);
    if tokens.iter().all(|t| matches!(t.kind, Kind::Comment(_))) {
        return Err(ParseError::Empty);
    }
    let mut segments = tokens.split(|t| t.kind == Kind::Semi).peekable();
    let mut out =
        AuthResults { authserv_id: String::new(), version: None, arc_instance: None, results: Vec::new(), none: false };

    // ARC-Authentication-Results starts with the instance: `i=1; authserv-id; ...`.
    if let Some(first) = segments.peek()
        && let [Kind::Word(i), Kind::Eq, Kind::Word(n)] = significant(first).as_slice()
        && i.eq_ignore_ascii_case("i")
        && n.bytes().all(|b| b.is_ascii_digit())
    {
        out.arc_instance = n.parse().ok();
        segments.next();
    }

    // The authserv-id and its optional version; whatever follows them in the
    // same segment is a result whose `;` is missing.
    if let Some(first) = segments.next() {
        let sig: Vec<usize> = (0..first.len()).filter(|&i| !matches!(first[i].kind, Kind::Comment(_))).collect();
        let id_then = |k: usize| sig.get(k).map(|&i| &first[i].kind);
        let id = match (id_then(0), id_then(1)) {
            (Some(Kind::Word(w)), next) if !matches!(next, Some(Kind::Eq | Kind::Slash)) => Some(w.clone()),
            (Some(Kind::Quoted(q)), _) => Some(q.clone()),
            _ => None,
        };
        let rest_from = match id {
            Some(id) => {
                out.authserv_id = id;
                let version = match id_then(1) {
                    Some(Kind::Word(v)) if v.bytes().all(|b| b.is_ascii_digit()) => v.parse().ok(),
                    _ => None,
                };
                out.version = version;
                let skip = if version.is_some() { 2 } else { 1 };
                sig.get(skip).copied().unwrap_or(first.len())
            }
            None => 0,
        };
        resinfo(&first[rest_from..], &mut out);
    }
    for segment in segments {
        resinfo(segment, &mut out);
    }

    if out.results.is_empty() && !out.none {
        if out.authserv_id.is_empty() {
            let start: String = value.trim().chars().take(60).collect();
            return Err(ParseError::Unrecognized { start });
        }
        return Err(ParseError::NoResults { authserv_id: out.authserv_id });
    }
    Ok(out)
}

/// What [`summarize`] concludes from a message's `Authentication-Results`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthSummary {
    /// The first SPF result of the trusted headers.
    pub spf: Option<String>,
    /// `pass` if any DKIM signature passed, else the first DKIM result.
    pub dkim: Option<String>,
    /// The first DMARC result.
    pub dmarc: Option<String>,
    /// The domain of the passing (else the first) DKIM result: `header.d`,
    /// or the domain of `header.i`.
    pub dkim_domain: Option<String>,
    /// The domain of SPF's `smtp.mailfrom`, or its `smtp.helo`.
    pub spf_domain: Option<String>,
    /// The authserv-id of the first header used.
    pub authserv_id: Option<String>,
    /// The header values used, top first.
    pub raw: Vec<String>,
    /// Headers dropped: written by another authserv-id, or unreadable.
    pub ignored: usize,
    /// Why the verdicts above deserve less trust, if they do.
    pub warning: Option<String>,
}

/// Picks the verdicts from every `Authentication-Results` value of a
/// message, top (most recent) first.
///
/// Only headers whose authserv-id equals `trusted_authserv_id`
/// (case-insensitively) are used; the others are counted in `ignored`,
/// because a sender can write any `Authentication-Results` it likes. With
/// `None` every readable header is used and `warning` says so.
pub fn summarize(headers: &[&str], trusted_authserv_id: Option<&str>) -> AuthSummary {
    let trusted = trusted_authserv_id.map(|t| t.trim().trim_end_matches('.'));
    let mut sum = AuthSummary::default();
    let mut used = Vec::new();
    for value in headers {
        match parse(value) {
            Ok(ar) if trusted.is_none_or(|t| ar.authserv_id.trim_end_matches('.').eq_ignore_ascii_case(t)) => {
                sum.raw.push((*value).to_string());
                used.push(ar);
            }
            _ => sum.ignored += 1,
        }
    }
    sum.authserv_id = used.iter().map(|ar| ar.authserv_id.clone()).find(|id| !id.is_empty());
    let all = || used.iter().flat_map(|ar| ar.results.iter());

    if let Some(spf) = all().find(|r| r.method == "spf") {
        sum.spf = Some(spf.result.clone());
        sum.spf_domain =
            spf.prop("smtp.mailfrom").and_then(domain_part).or_else(|| spf.prop("smtp.helo").and_then(domain_part));
    }
    let dkim = all().find(|r| r.method == "dkim" && r.result == "pass").or_else(|| all().find(|r| r.method == "dkim"));
    if let Some(dkim) = dkim {
        sum.dkim = Some(dkim.result.clone());
        sum.dkim_domain = dkim.dkim_domain();
    }
    sum.dmarc = all().find(|r| r.method == "dmarc").map(|r| r.result.clone());

    sum.warning = match trusted {
        None if !used.is_empty() => Some(format!(
            "no trusted authserv-id configured: accepted {} Authentication-Results header(s) from any server, and a sender can forge them",
            used.len()
        )),
        None => None,
        Some(t) if used.is_empty() && !headers.is_empty() => {
            Some(format!("none of the {} Authentication-Results header(s) was written by {t}", headers.len()))
        }
        Some(_) => None,
    };
    sum
}

/// The domain of `local@domain`, `@domain` or `domain`, lowercased,
/// without angle brackets or a trailing dot. Microsoft writes
/// `header.d=none` for "no signature": that is no domain.
fn domain_part(value: &str) -> Option<String> {
    let v = value.trim().trim_start_matches('<').trim_end_matches('>');
    let d = v.rsplit_once('@').map_or(v, |(_, d)| d).trim_end_matches('.');
    (!d.is_empty() && !d.eq_ignore_ascii_case("none")).then(|| d.to_ascii_lowercase())
}

/// Reads the results in one `;`-separated segment into `out`.
fn resinfo(tokens: &[Token], out: &mut AuthResults) {
    let sig = significant(tokens);
    if let [Kind::Word(w)] = sig.as_slice()
        && w.eq_ignore_ascii_case("none")
    {
        out.none = true;
        return;
    }
    let mut current: Option<MethodResult> = None;
    // Comments seen before the first result of the segment belong to it.
    let mut pending: Vec<String> = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let mut comments = Vec::new();
        let key = match &tokens[i].kind {
            Kind::Comment(c) => {
                match current.as_mut() {
                    Some(r) => r.comments.push(c.clone()),
                    None => pending.push(c.clone()),
                }
                i += 1;
                continue;
            }
            Kind::Word(_) => read_key(tokens, &mut i, &mut comments),
            // Stray `=`, `/` or quoted strings carry nothing we can use.
            _ => {
                i += 1;
                continue;
            }
        };
        let key = &key;
        // An optional method version: `dkim/1`.
        let mut version = None;
        if next_significant(tokens, &mut i, &mut comments) == Some(&Kind::Slash) {
            i += 1;
            if let Some(Kind::Word(v)) = next_significant(tokens, &mut i, &mut comments) {
                version = v.parse().ok();
                i += 1;
            }
        }
        if next_significant(tokens, &mut i, &mut comments) != Some(&Kind::Eq) {
            // A bare word: junk between results; keep its comments.
            pending.extend(comments);
            continue;
        }
        i += 1;
        let value = read_value(tokens, &mut i, &mut comments);
        let lower = key.to_ascii_lowercase();

        if let Some((ptype, name)) = lower.split_once('.') {
            if let Some(r) = current.as_mut() {
                r.properties.push(Property { ptype: ptype.to_string(), name: name.to_string(), value });
                r.comments.append(&mut comments);
            }
            // A property before any result has nothing to belong to.
            continue;
        }
        if let Some(r) = current.as_mut() {
            if lower == "reason" {
                r.reason.get_or_insert(value);
                r.comments.append(&mut comments);
                continue;
            }
            if !KNOWN_METHODS.contains(&lower.as_str()) {
                r.properties.push(Property { ptype: String::new(), name: lower, value });
                r.comments.append(&mut comments);
                continue;
            }
        }
        // A new result: the first of the segment, or one whose `;` is missing.
        if let Some(done) = current.take() {
            out.results.push(done);
        }
        if value.is_empty() {
            // `dkim=` with no result: nothing to report; its properties are dropped.
            pending.extend(comments);
            continue;
        }
        let mut all_comments = std::mem::take(&mut pending);
        all_comments.append(&mut comments);
        current = Some(MethodResult {
            method: lower,
            version,
            result: value.to_ascii_lowercase(),
            reason: None,
            properties: Vec::new(),
            comments: all_comments,
        });
    }
    if let Some(done) = current {
        out.results.push(done);
    }
}

/// Reads a method or property name at `i` (a word): `ptype CFWS "." CFWS
/// property` may have comments and whitespace around its dot (RFC 8601
/// §2.2; Appendix B writes `policy (A dot can go here) . (like that)
/// expired`), so words that meet at a dot are one name. Comments inside go
/// to `comments`.
fn read_key(tokens: &[Token], i: &mut usize, comments: &mut Vec<String>) -> String {
    let Some(Kind::Word(first)) = tokens.get(*i).map(|t| &t.kind) else {
        return String::new();
    };
    let mut key = first.clone();
    *i += 1;
    loop {
        let mut j = *i;
        let mut inner = Vec::new();
        match next_significant(tokens, &mut j, &mut inner) {
            Some(Kind::Word(w)) if key.ends_with('.') || w.starts_with('.') => {
                key.push_str(w);
                comments.append(&mut inner);
                *i = j + 1;
            }
            _ => return key,
        }
    }
}

/// Advances `i` past comments (collecting them) and returns the next token's kind.
fn next_significant<'a>(tokens: &'a [Token], i: &mut usize, comments: &mut Vec<String>) -> Option<&'a Kind> {
    while let Some(t) = tokens.get(*i) {
        match &t.kind {
            Kind::Comment(c) => {
                comments.push(c.clone());
                *i += 1;
            }
            k => return Some(k),
        }
    }
    None
}

/// Reads a value after `=`: a word or quoted string, then every token glued
/// to it without whitespace (so `header.b=ab/c+d==` stays whole). Empty if
/// no value follows.
fn read_value(tokens: &[Token], i: &mut usize, comments: &mut Vec<String>) -> String {
    let mut value = String::new();
    match next_significant(tokens, i, comments) {
        Some(Kind::Word(w) | Kind::Quoted(w)) => value.push_str(w),
        _ => return value,
    }
    *i += 1;
    while let Some(t) = tokens.get(*i) {
        if t.spaced {
            break;
        }
        match &t.kind {
            Kind::Word(w) | Kind::Quoted(w) => value.push_str(w),
            Kind::Eq => value.push('='),
            Kind::Slash => value.push('/'),
            Kind::Comment(_) | Kind::Semi => break,
        }
        *i += 1;
    }
    value
}

/// The token kinds of a segment without its comments.
fn significant(tokens: &[Token]) -> Vec<&Kind> {
    tokens.iter().map(|t| &t.kind).filter(|k| !matches!(k, Kind::Comment(_))).collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Word(String),
    Quoted(String),
    Comment(String),
    Semi,
    Eq,
    Slash,
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    /// Whitespace or a comment came before it (it is not glued to the
    /// previous token).
    spaced: bool,
}

/// Splits a header value into words, quoted strings, comments and the
/// separators `;`, `=` and `/`.
fn lex(value: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut spaced = true;
    let mut i = 0;
    let bytes = value.as_bytes();
    while i < bytes.len() {
        let (kind, next) = match bytes[i] {
            b if b.is_ascii_whitespace() => {
                spaced = true;
                i += 1;
                continue;
            }
            // An unbalanced `)` is junk; treat it as a separator.
            b')' => {
                spaced = true;
                i += 1;
                continue;
            }
            b'(' => {
                let (text, next) = take_comment(value, i);
                (Kind::Comment(text), next)
            }
            b'"' => {
                let (text, next) = take_quoted(value, i);
                (Kind::Quoted(text), next)
            }
            b';' => (Kind::Semi, i + 1),
            b'=' => (Kind::Eq, i + 1),
            b'/' => (Kind::Slash, i + 1),
            _ => {
                let end = value[i..]
                    .find(|c: char| c.is_ascii_whitespace() || "()\";=/".contains(c))
                    .map_or(value.len(), |n| i + n);
                (Kind::Word(value[i..end].to_string()), end)
            }
        };
        let is_comment = matches!(kind, Kind::Comment(_));
        tokens.push(Token { kind, spaced });
        // Nothing is glued to a comment.
        spaced = is_comment;
        i = next;
    }
    tokens
}

/// Reads the comment that opens at byte `open` (a `(`), nested comments and
/// quoted-pairs included, without recursion. Returns its text without the
/// outer parentheses, whitespace runs collapsed to one space, and the byte
/// index after it. An unterminated comment runs to the end.
pub(crate) fn take_comment(s: &str, open: usize) -> (String, usize) {
    let mut text = String::new();
    let mut depth = 0usize;
    let mut escaped = false;
    let mut in_space = false;
    for (at, c) in s[open..].char_indices() {
        let at = open + at;
        if escaped {
            escaped = false;
            text.push(c);
            in_space = false;
            continue;
        }
        match c {
            '\\' => {
                escaped = true;
                continue;
            }
            '(' => {
                depth += 1;
                if depth == 1 {
                    continue;
                }
            }
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return (text.trim_end().to_string(), at + 1);
                }
            }
            _ => {}
        }
        if c.is_whitespace() {
            if !in_space && !text.is_empty() {
                text.push(' ');
            }
            in_space = true;
        } else {
            text.push(c);
            in_space = false;
        }
    }
    (text.trim_end().to_string(), s.len())
}

/// Reads the quoted string that opens at byte `open` (a `"`), resolving
/// quoted-pairs and unfolding line breaks. Returns its content and the byte
/// index after it. An unterminated string runs to the end.
fn take_quoted(s: &str, open: usize) -> (String, usize) {
    let mut text = String::new();
    let mut escaped = false;
    for (at, c) in s[open + 1..].char_indices() {
        if escaped {
            escaped = false;
            text.push(c);
            continue;
        }
        match c {
            '\\' => escaped = true,
            '"' => return (text, open + 1 + at + 1),
            '\r' | '\n' => {}
            _ => text.push(c),
        }
    }
    (text, s.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `key=value` pairs of each result: `method=result` first, then
    /// `reason=...`, then every property, so a case reads like the header.
    fn shape(value: &str) -> Vec<String> {
        shape_of(&parse(value).unwrap_or_else(|e| panic!("{value:?}: {e}")))
    }

    fn shape_of(ar: &AuthResults) -> Vec<String> {
        ar.results
            .iter()
            .map(|r| {
                let mut s = format!("{}={}", r.method, r.result);
                if let Some(v) = r.version {
                    s = format!("{}/{v}={}", r.method, r.result);
                }
                if let Some(reason) = &r.reason {
                    s.push_str(&format!(" reason={reason:?}"));
                }
                for p in &r.properties {
                    let key = if p.ptype.is_empty() { p.name.clone() } else { format!("{}.{}", p.ptype, p.name) };
                    s.push_str(&format!(" {key}={}", p.value));
                }
                s
            })
            .collect()
    }

    #[test]
    fn one_result_with_properties() {
        assert_eq!(
            shape("mx.receiver.test; dkim=pass header.d=sender.test header.i=@sender.test header.b=IKHa5IfV"),
            ["dkim=pass header.d=sender.test header.i=@sender.test header.b=IKHa5IfV"]
        );
    }

    #[test]
    fn authserv_id_with_version_and_none() {
        let ar = parse("example.com 1; none").unwrap();
        assert_eq!((ar.authserv_id.as_str(), ar.version, ar.none), ("example.com", Some(1), true));
        assert!(ar.results.is_empty());
    }

    #[test]
    fn comments_anywhere_nested_and_escaped() {
        let ar = parse(
            "mx.example.com (a (nested) one); spf (before) = (after) pass (x \\) y; z) smtp.mailfrom=a@b.example",
        )
        .unwrap();
        let r = &ar.results[0];
        assert_eq!((r.method.as_str(), r.result.as_str()), ("spf", "pass"));
        assert_eq!(r.comments, ["before", "after", "x ) y; z"]);
        assert_eq!(r.prop("smtp.mailfrom"), Some("a@b.example"));
    }

    #[test]
    fn comments_around_the_dot_of_a_property() {
        // RFC 8601 Appendix B's comment-heavy example (issue 16: the
        // property lost its type).
        let ar = parse(
            "foo.example.net (foobar) 1 (baz);\n    dkim (Because I like it) / 1 (One yay) = (wait for it) fail\n      \
             policy (A dot can go here) . (like that) expired\n      (this surprised me) = (as I wasn't expecting it) 1362471462",
        )
        .unwrap();
        assert_eq!((ar.authserv_id.as_str(), ar.version), ("foo.example.net", Some(1)));
        assert_eq!(shape_of(&ar), ["dkim/1=fail policy.expired=1362471462"]);
        assert_eq!(ar.results[0].prop("policy.expired"), Some("1362471462"));
        assert!(ar.results[0].comments.iter().any(|c| c == "like that"), "{:?}", ar.results[0].comments);
        assert_eq!(shape("mx.example; spf=pass smtp . mailfrom=a@b.example"), ["spf=pass smtp.mailfrom=a@b.example"]);
        assert_eq!(shape("mx.example; spf=pass smtp. mailfrom=a@b.example"), ["spf=pass smtp.mailfrom=a@b.example"]);
        assert_eq!(shape("mx.example; spf=pass smtp .mailfrom=a@b.example"), ["spf=pass smtp.mailfrom=a@b.example"]);
    }

    #[test]
    fn quoted_reason_and_values() {
        assert_eq!(
            shape(r#"mx.example.com; dkim=fail reason="signature \"verification\" failed" header.d="example.com""#),
            [r#"dkim=fail reason="signature \"verification\" failed" header.d=example.com"#]
        );
    }

    #[test]
    fn method_version_and_glued_base64() {
        assert_eq!(shape("a.example; dkim/1=pass header.b=ab/c+d=="), ["dkim/1=pass header.b=ab/c+d=="]);
        let ar = parse("a.example; dkim=fail; spf=pass; DKIM=pass").unwrap();
        assert_eq!(ar.method("dkim").map(|r| r.result.as_str()).collect::<Vec<_>>(), ["fail", "pass"]);
    }

    #[test]
    fn missing_semicolon_between_known_methods() {
        assert_eq!(
            shape("mx.example.com; spf=pass smtp.mailfrom=example.com dkim=pass header.d=example.com"),
            ["spf=pass smtp.mailfrom=example.com", "dkim=pass header.d=example.com"]
        );
        assert_eq!(shape("mx.example.com spf=pass"), ["spf=pass"]);
    }

    #[test]
    fn dotless_extras_are_properties() {
        assert_eq!(
            shape(
                "spf=pass smtp.mailfrom=contoso.com;dmarc=pass action=none header.from=contoso.com;compauth=pass reason=100"
            ),
            [
                "spf=pass smtp.mailfrom=contoso.com",
                "dmarc=pass action=none header.from=contoso.com",
                "compauth=pass reason=\"100\""
            ]
        );
        assert_eq!(parse("spf=pass; dmarc=pass action=none").unwrap().results[1].prop("action"), Some("none"));
    }

    #[test]
    fn no_authserv_id_is_allowed_but_empty() {
        assert_eq!(parse("spf=pass smtp.mailfrom=contoso.com").unwrap().authserv_id, "");
    }

    #[test]
    fn arc_instance_is_skipped() {
        let ar = parse("i=1; mx.microsoft.com 1; spf=pass smtp.mailfrom=contoso.com; arc=none").unwrap();
        assert_eq!((ar.arc_instance, ar.authserv_id.as_str(), ar.version), (Some(1), "mx.microsoft.com", Some(1)));
        assert_eq!(ar.results.len(), 2);
    }

    #[test]
    fn errors_say_what_is_missing() {
        assert_eq!(parse(""), Err(ParseError::Empty));
        assert_eq!(parse("  (only a comment) "), Err(ParseError::Empty));
        assert_eq!(parse("mx.example.com;"), Err(ParseError::NoResults { authserv_id: "mx.example.com".into() }));
        assert_eq!(
            parse("mx.example.com; junk junk"),
            Err(ParseError::NoResults { authserv_id: "mx.example.com".into() })
        );
        assert!(matches!(parse("= ; ="), Err(ParseError::Unrecognized { .. })));
        assert!(parse("mx.example.com; dkim=").is_err());
    }

    #[test]
    fn unterminated_comment_and_quote_do_not_panic() {
        assert_eq!(shape("x; spf=pass (never closed"), ["spf=pass"]);
        assert_eq!(shape("x; dkim=fail reason=\"never closed"), ["dkim=fail reason=\"never closed\""]);
        assert_eq!(shape("x; spf=pass ) smtp.helo=h"), ["spf=pass smtp.helo=h"]);
    }

    #[test]
    fn deep_nesting_is_not_recursion() {
        let deep = format!("x; spf=pass {}{}", "(".repeat(100_000), ")".repeat(100_000));
        assert_eq!(parse(&deep).unwrap().results[0].comments.len(), 1);
    }

    #[test]
    fn summary_keeps_only_the_trusted_server() {
        let forged =
            "mx.receiver.test.evil; spf=pass smtp.mailfrom=sender.test; dkim=pass header.d=sender.test; dmarc=pass";
        let real = "MX.Receiver.Test; spf=fail smtp.mailfrom=probe@Sender.Test; dkim=fail header.d=x.test; dkim=pass header.i=@sender.test; dmarc=fail";
        let s = summarize(&[forged, real], Some("mx.receiver.test"));
        assert_eq!(
            (s.spf.as_deref(), s.dkim.as_deref(), s.dmarc.as_deref()),
            (Some("fail"), Some("pass"), Some("fail"))
        );
        assert_eq!((s.spf_domain.as_deref(), s.dkim_domain.as_deref()), (Some("sender.test"), Some("sender.test")));
        assert_eq!((s.ignored, s.raw.len(), s.authserv_id.as_deref()), (1, 1, Some("MX.Receiver.Test")));
        assert_eq!(s.warning, None);
    }

    #[test]
    fn summary_without_a_trusted_id_warns() {
        let s = summarize(&["a.example; spf=pass smtp.helo=Mail.Example"], None);
        assert_eq!((s.spf.as_deref(), s.spf_domain.as_deref()), (Some("pass"), Some("mail.example")));
        assert!(s.warning.unwrap().contains("forge"));
    }

    #[test]
    fn summary_says_when_nothing_was_trusted() {
        let s = summarize(&["other.example; spf=pass", "garbage"], Some("mx.receiver.test"));
        assert_eq!((s.spf, s.ignored), (None, 2));
        assert!(s.warning.unwrap().contains("mx.receiver.test"));
        assert_eq!(summarize(&[], Some("mx.receiver.test")), AuthSummary::default());
    }

    #[test]
    fn first_dkim_when_none_passed() {
        let s = summarize(&["m; dkim=fail header.d=A.example; dkim=neutral header.d=b.example"], Some("m"));
        assert_eq!((s.dkim.as_deref(), s.dkim_domain.as_deref()), (Some("fail"), Some("a.example")));
    }
}
