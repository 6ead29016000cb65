//! IMAP response reading and the little parsing mailloop needs (RFC 9051).
//!
//! A response is a line, possibly interrupted by literals (`{n}\r\n` then n
//! bytes). Literals are read with a hard cap, so a server announcing a
//! 4 GiB literal is refused rather than obeyed. Only the responses a probe
//! uses are interpreted: status (`OK`/`NO`/`BAD`/`BYE`), `CAPABILITY`,
//! `EXISTS`, `SEARCH`, response codes such as `[UIDNEXT n]`.

/// Longest line between literals.
pub const MAX_LINE: usize = 64 * 1024;

/// One response with its literals taken out.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Response {
    /// The line text; each literal appears as its `{n}` marker.
    pub text: String,
    pub literals: Vec<Vec<u8>>,
}

/// Status of a tagged or untagged status response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    No,
    Bad,
    Bye,
    PreAuth,
}

/// If `line` ends with a literal announcement `{n}` or `{n+}`, its length.
/// `Err` when the announcement is there but unreadable.
pub fn literal_len(line: &[u8]) -> Option<Result<u64, String>> {
    let body = line.strip_suffix(b"}")?;
    let open = body.iter().rposition(|b| *b == b'{')?;
    let digits = &body[open + 1..];
    let digits = digits.strip_suffix(b"+").unwrap_or(digits);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) || digits.len() > 19 {
        return Some(Err(format!("bad literal announcement {:?}", String::from_utf8_lossy(&body[open..]))));
    }
    Some(std::str::from_utf8(digits).unwrap().parse::<u64>().map_err(|e| e.to_string()))
}

impl Response {
    /// `"* ..."` untagged, `"+ ..."` continuation, else tagged.
    pub fn is_untagged(&self) -> bool {
        self.text.starts_with("* ")
    }

    pub fn is_continuation(&self) -> bool {
        self.text.starts_with('+')
    }

    /// The tag of a tagged response.
    pub fn tag(&self) -> Option<&str> {
        if self.is_untagged() || self.is_continuation() {
            return None;
        }
        self.text.split(' ').next()
    }

    /// Status and the rest, for `TAG OK ...` and `* OK ...` forms.
    pub fn status(&self) -> Option<(Status, &str)> {
        let mut it = self.text.splitn(3, ' ');
        let _tag = it.next()?;
        let word = it.next()?;
        let rest = it.next().unwrap_or("");
        let status = match word.to_ascii_uppercase().as_str() {
            "OK" => Status::Ok,
            "NO" => Status::No,
            "BAD" => Status::Bad,
            "BYE" => Status::Bye,
            "PREAUTH" => Status::PreAuth,
            _ => return None,
        };
        Some((status, rest))
    }

    /// The bracketed response code of a status response: `[UIDNEXT 42]` → `"UIDNEXT 42"`.
    pub fn code(&self) -> Option<&str> {
        let (_, rest) = self.status()?;
        let rest = rest.strip_prefix('[')?;
        Some(&rest[..rest.find(']')?])
    }

    /// `* n EXISTS` → n.
    pub fn exists(&self) -> Option<u32> {
        let mut it = self.text.split(' ');
        (it.next()? == "*").then_some(())?;
        let n = it.next()?.parse().ok()?;
        it.next()?.eq_ignore_ascii_case("EXISTS").then_some(n)
    }

    /// `* SEARCH 3 7` → [3, 7] (also an empty `* SEARCH`).
    pub fn search(&self) -> Option<Vec<u32>> {
        let rest = self.text.strip_prefix("* ")?;
        let (word, nums) = rest.split_once(' ').unwrap_or((rest, ""));
        if !word.eq_ignore_ascii_case("SEARCH") {
            return None;
        }
        // Ignore a trailing "(MODSEQ n)" from CONDSTORE servers.
        let nums = nums.split('(').next().unwrap_or("");
        Some(nums.split_whitespace().filter_map(|n| n.parse().ok()).collect())
    }

    /// `* LIST (\\HasNoChildren \\Junk) "." Junk` → (["\\HasNoChildren",
    /// "\\Junk"], "Junk"); a quoted name is unquoted. Names sent as
    /// literals are not handled (`None`).
    pub fn list(&self) -> Option<(Vec<String>, String)> {
        let rest = self.text.strip_prefix("* ")?;
        let (word, rest) = rest.split_once(' ')?;
        if !word.eq_ignore_ascii_case("LIST") {
            return None;
        }
        let rest = rest.strip_prefix('(')?;
        let (flags, rest) = rest.split_once(')')?;
        let rest = rest.strip_prefix(' ')?;
        // the hierarchy delimiter: "x" or NIL
        let rest = if let Some(r) = rest.strip_prefix("NIL ").or_else(|| rest.strip_prefix("nil ")) {
            r
        } else {
            let r = rest.strip_prefix('"')?;
            let r = r.strip_prefix('\\').unwrap_or(r);
            r.get(1..)?.strip_prefix("\" ")?
        };
        let name = unquote(rest)?;
        Some((flags.split_whitespace().map(str::to_string).collect(), name))
    }

    /// `* STATUS Junk (MESSAGES 3 UIDNEXT 9)` → the UIDNEXT value.
    pub fn status_uidnext(&self) -> Option<u32> {
        let rest = self.text.strip_prefix("* ")?;
        let (word, rest) = rest.split_once(' ')?;
        if !word.eq_ignore_ascii_case("STATUS") {
            return None;
        }
        let items = &rest[rest.rfind('(')? + 1..];
        let items = items.strip_suffix(')').unwrap_or(items);
        let mut it = items.split_whitespace();
        while let Some(k) = it.next() {
            let v = it.next()?;
            if k.eq_ignore_ascii_case("UIDNEXT") {
                return v.parse().ok();
            }
        }
        None
    }

    /// Capabilities from `* CAPABILITY ...` or a `[CAPABILITY ...]` code.
    pub fn capabilities(&self) -> Option<Vec<String>> {
        let list = if let Some(rest) = self.text.strip_prefix("* CAPABILITY ") {
            rest
        } else {
            self.code()?.strip_prefix("CAPABILITY ")?
        };
        Some(list.split_whitespace().map(|c| c.to_ascii_uppercase()).collect())
    }
}

/// A mailbox name as sent by the server: an atom, or a quoted string with
/// `\\"` and `\\\\` escapes (the whole rest of the line).
fn unquote(s: &str) -> Option<String> {
    let Some(inner) = s.strip_prefix('"') else {
        return (!s.is_empty() && !s.starts_with('{') && !s.contains(' ')).then(|| s.to_string());
    };
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return chars.as_str().is_empty().then_some(out),
            c => out.push(c),
        }
    }
    None
}

/// Quotes a string for a command, or `None` if it needs a literal
/// (CR, LF, NUL or non-ASCII).
pub fn quote(s: &str) -> Option<String> {
    if s.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0 || b >= 0x80) {
        return None;
    }
    Some(format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Response {
        Response { text: s.into(), literals: vec![] }
    }

    #[test]
    fn status_and_codes() {
        let t = r("a3 OK [READ-WRITE] Select completed (0.001 + 0.000 secs).");
        assert_eq!(t.tag(), Some("a3"));
        assert_eq!(t.status().unwrap().0, Status::Ok);
        assert_eq!(t.code(), Some("READ-WRITE"));
        assert_eq!(r("* OK [UIDNEXT 42] Predicted next UID").code(), Some("UIDNEXT 42"));
        assert_eq!(r("a1 NO [AUTHENTICATIONFAILED] Authentication failed.").status().unwrap().0, Status::No);
        assert_eq!(r("* BYE shutting down").status().unwrap().0, Status::Bye);
    }

    #[test]
    fn exists_search_capabilities() {
        assert_eq!(r("* 5 EXISTS").exists(), Some(5));
        assert_eq!(r("* 5 RECENT").exists(), None);
        assert_eq!(r("* SEARCH 3 7").search(), Some(vec![3, 7]));
        assert_eq!(r("* SEARCH").search(), Some(vec![]));
        assert_eq!(r("* SEARCH 4 (MODSEQ 9)").search(), Some(vec![4]));
        assert_eq!(r("* OK [CAPABILITY IMAP4rev1 IDLE UIDPLUS] ready").capabilities().unwrap(), ["IMAP4REV1", "IDLE", "UIDPLUS"]);
        assert_eq!(r("* CAPABILITY IMAP4rev1 IDLE").capabilities().unwrap(), ["IMAP4REV1", "IDLE"]);
    }

    #[test]
    fn literal_announcements() {
        assert_eq!(literal_len(b"* 1 FETCH (UID 5 BODY[] {512}"), Some(Ok(512)));
        assert_eq!(literal_len(b"a1 LOGIN {5+}"), Some(Ok(5)));
        assert_eq!(literal_len(b"* OK no literal"), None);
        assert_eq!(literal_len(b"* 1 FETCH (BODY[] {4294967296}"), Some(Ok(4_294_967_296)));
        assert!(matches!(literal_len(b"* x {12a}"), Some(Err(_))));
        assert!(matches!(literal_len(b"* x {99999999999999999999}"), Some(Err(_))));
    }

    #[test]
    fn list_and_status() {
        assert_eq!(r("* LIST (\\HasNoChildren \\Junk) \".\" Junk").list(), Some((vec!["\\HasNoChildren".into(), "\\Junk".into()], "Junk".into())));
        assert_eq!(r("* LIST () \"/\" \"Junk Email\"").list(), Some((vec![], "Junk Email".into())));
        assert_eq!(r("* LIST (\\Junk) \"/\" \"[Gmail]/Spam\"").list().unwrap().1, "[Gmail]/Spam");
        assert_eq!(r("* LIST (\\Noselect) NIL \"a\\\"b\"").list().unwrap().1, "a\"b");
        assert_eq!(r("* LIST () \"\\\\\" INBOX").list().unwrap().1, "INBOX");
        assert_eq!(r("* LIST () \".\" {5}").list(), None);
        assert_eq!(r("* LIST () \".\" \"open").list(), None);
        assert_eq!(r("* LSUB () \".\" Junk").list(), None);
        assert_eq!(r("* STATUS Junk (MESSAGES 3 UIDNEXT 9)").status_uidnext(), Some(9));
        assert_eq!(r("* STATUS \"Junk (old)\" (UIDNEXT 12)").status_uidnext(), Some(12));
        assert_eq!(r("* STATUS Junk (MESSAGES 3)").status_uidnext(), None);
        assert_eq!(r("* 3 EXISTS").status_uidnext(), None);
    }

    #[test]
    fn quoting() {
        assert_eq!(quote(r#"pa"ss\word"#).unwrap(), r#""pa\"ss\\word""#);
        assert_eq!(quote("naïve"), None);
    }
}
