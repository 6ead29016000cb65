//! SMTP reply parsing (RFC 5321 §4.2, RFC 3463 enhanced codes).
//!
//! Pure functions over bytes, so the parser can be fuzzed and tested without
//! a socket. A reply is one or more lines `ddd-text` ... `ddd text`.

use mailloop_common::SmtpReplyCode;

/// Longest reply line we accept. RFC 5321 says 512; real servers exceed it a
/// little, hostile ones a lot.
pub const MAX_LINE: usize = 8 * 1024;
/// Most lines in one reply (an EHLO lists a few dozen).
pub const MAX_LINES: usize = 256;

/// A complete reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Text of each line, without the code and separator.
    pub lines: Vec<String>,
}

/// One parsed line.
#[derive(Debug, PartialEq, Eq)]
pub struct ReplyLine {
    pub code: u16,
    /// `true` for `ddd-` (more lines follow).
    pub more: bool,
    pub text: String,
}

/// Why a reply line is not SMTP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("malformed reply line {0:?}")]
    Malformed(String),
    #[error("reply code changed inside a multi-line reply ({0} then {1})")]
    CodeChanged(u16, u16),
    #[error("reply has more than {MAX_LINES} lines")]
    TooManyLines,
}

/// Parses one line (without CRLF). Invalid UTF-8 is replaced, not refused:
/// the code is what matters and the text is for humans.
pub fn parse_line(raw: &[u8]) -> Result<ReplyLine, ReplyError> {
    let shown = || String::from_utf8_lossy(&raw[..raw.len().min(80)]).into_owned();
    if raw.len() < 3 || !raw[..3].iter().all(u8::is_ascii_digit) {
        return Err(ReplyError::Malformed(shown()));
    }
    let code = (raw[0] - b'0') as u16 * 100 + (raw[1] - b'0') as u16 * 10 + (raw[2] - b'0') as u16;
    if !(200..=599).contains(&code) && !(100..200).contains(&code) {
        return Err(ReplyError::Malformed(shown()));
    }
    let (more, text) = match raw.get(3) {
        None => (false, &raw[3..]),
        Some(b' ') => (false, &raw[4..]),
        Some(b'-') => (true, &raw[4..]),
        Some(_) => return Err(ReplyError::Malformed(shown())),
    };
    Ok(ReplyLine { code, more, text: String::from_utf8_lossy(text).into_owned() })
}

/// Assembles lines into replies; feed it lines until it returns `Some`.
#[derive(Debug, Default)]
pub struct ReplyBuilder {
    code: Option<u16>,
    lines: Vec<String>,
}

impl ReplyBuilder {
    pub fn push(&mut self, raw: &[u8]) -> Result<Option<Reply>, ReplyError> {
        let line = parse_line(raw)?;
        if let Some(code) = self.code {
            if code != line.code {
                return Err(ReplyError::CodeChanged(code, line.code));
            }
        }
        if self.lines.len() >= MAX_LINES {
            return Err(ReplyError::TooManyLines);
        }
        self.code = Some(line.code);
        self.lines.push(line.text);
        if line.more {
            return Ok(None);
        }
        let reply = Reply { code: line.code, lines: std::mem::take(&mut self.lines) };
        self.code = None;
        Ok(Some(reply))
    }
}

impl Reply {
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// All lines joined with a space.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }

    /// The enhanced status code (`5.1.1`) at the start of the first line, if
    /// it agrees with the reply code's class.
    pub fn enhanced(&self) -> Option<String> {
        let first = self.lines.first()?.split_whitespace().next()?;
        let mut parts = first.split('.');
        let class = parts.next()?;
        let subject = parts.next()?;
        let detail = parts.next()?;
        let num = |s: &str, max: usize| !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit());
        let ok = parts.next().is_none()
            && matches!(class, "2" | "4" | "5")
            && class.as_bytes()[0] - b'0' == (self.code / 100) as u8
            && num(subject, 3)
            && num(detail, 3);
        ok.then(|| first.to_string())
    }

    /// The text without a leading enhanced code.
    pub fn message(&self) -> String {
        let text = self.text();
        match self.enhanced() {
            Some(e) => text.strip_prefix(&e).unwrap_or(&text).trim_start().to_string(),
            None => text,
        }
    }

    pub fn code(&self) -> SmtpReplyCode {
        SmtpReplyCode { code: self.code, enhanced: self.enhanced(), text: self.message() }
    }

    /// EHLO keywords (upper-cased), from every line but the greeting line.
    pub fn ehlo_keywords(&self) -> Vec<String> {
        self.lines.iter().skip(1).map(|l| l.trim().to_ascii_uppercase()).collect()
    }

    /// The queue id named in a reply to end-of-data, for the common formats:
    /// Postfix/Exim/Sendmail "queued as X", "id=X", Exchange "[InternalId=X]".
    pub fn queue_id(&self) -> Option<String> {
        let text = self.text();
        let after = |marker: &str| {
            let lower = text.to_ascii_lowercase();
            let i = lower.find(marker)? + marker.len();
            let id: String = text[i..]
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || "-_.@".contains(*c))
                .collect();
            (!id.is_empty()).then_some(id)
        };
        after("queued as").or_else(|| after("internalid=")).or_else(|| after(" id="))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(lines: &[&str]) -> Reply {
        let mut b = ReplyBuilder::default();
        for (i, l) in lines.iter().enumerate() {
            let r = b.push(l.as_bytes()).unwrap();
            if i + 1 == lines.len() {
                return r.expect("last line completes the reply");
            }
            assert!(r.is_none());
        }
        unreachable!()
    }

    #[test]
    fn multi_line_ehlo() {
        let r = reply(&["250-mx.receiver.test", "250-PIPELINING", "250-STARTTLS", "250 AUTH PLAIN LOGIN"]);
        assert_eq!(r.code, 250);
        assert_eq!(r.ehlo_keywords(), ["PIPELINING", "STARTTLS", "AUTH PLAIN LOGIN"]);
    }

    #[test]
    fn enhanced_codes() {
        let r = reply(&["550 5.1.1 <x@receiver.test>: Recipient address rejected: User unknown"]);
        assert_eq!(r.enhanced().as_deref(), Some("5.1.1"));
        assert_eq!(r.message(), "<x@receiver.test>: Recipient address rejected: User unknown");
        // A class that disagrees with the code is not an enhanced code.
        assert_eq!(reply(&["550 4.1.1 odd"]).enhanced(), None);
        assert_eq!(reply(&["250 ok"]).enhanced(), None);
    }

    #[test]
    fn queue_ids() {
        assert_eq!(reply(&["250 2.0.0 Ok: queued as 7FE1BD40B8"]).queue_id().as_deref(), Some("7FE1BD40B8"));
        assert_eq!(reply(&["250 OK id=1rXyZ1-000Abc-2A"]).queue_id().as_deref(), Some("1rXyZ1-000Abc-2A"));
        assert_eq!(
            reply(&["250 2.6.0 <a@b> [InternalId=1234, Hostname=X] Queued mail for delivery"]).queue_id().as_deref(),
            Some("1234")
        );
        assert_eq!(reply(&["250 2.0.0 OK"]).queue_id(), None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [&b""[..], b"2", b"abc hello", b"250x", b"999 nope", b"\xff\xfe\xfd"] {
            assert!(parse_line(bad).is_err(), "{bad:?}");
        }
        let mut b = ReplyBuilder::default();
        b.push(b"250-first").unwrap();
        assert_eq!(b.push(b"550 second"), Err(ReplyError::CodeChanged(250, 550)));
    }

    #[test]
    fn invalid_utf8_text_is_kept_lossily() {
        let r = parse_line(b"554 5.7.1 \xff\xfe rejected").unwrap();
        assert_eq!(r.code, 554);
        assert!(r.text.contains("rejected"));
    }
}
