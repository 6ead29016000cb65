//! DMARC identifier alignment (RFC 7489 §3.1).
//!
//! DMARC passes only when the domain SPF or DKIM vouched for is *aligned*
//! with the `From:` domain: the same name (strict), or the same
//! organizational domain (relaxed). A probe reports which, so a user sees
//! "DKIM passed for `mail.sender.test`, relaxed-aligned with `sender.test`"
//! rather than a bare pass.
//!
//! The organizational domain comes from the Public Suffix List, compiled
//! into the binary by the `psl` crate (no file or network at run time).
//! Names the list does not know fall under its implicit `*` rule: `.test`
//! is not a listed suffix, so `mail.sender.test` belongs to `sender.test`.

use serde::{Deserialize, Serialize};

/// How an authenticated domain relates to the `From:` domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Alignment {
    /// The same name, ignoring case and a trailing dot.
    Strict,
    /// Different names with the same organizational domain.
    Relaxed,
    /// Unrelated, or one of the names is empty or not a domain name.
    None,
}

/// The alignment of `domain` (SPF's or DKIM's) with `from_domain`.
///
/// ```
/// use mailloop_common::alignment::{alignment, Alignment};
/// assert_eq!(alignment("Sender.Test.", "sender.test"), Alignment::Strict);
/// assert_eq!(alignment("mail.sender.test", "sender.test"), Alignment::Relaxed);
/// assert_eq!(alignment("other.test", "sender.test"), Alignment::None);
/// ```
///
/// A name that is not a valid domain name (`.example.com`, an empty label,
/// a character a host name cannot hold) is never aligned, not even with
/// itself: a malformed identifier must not turn a broken or hostile
/// signature into a pass.
pub fn alignment(domain: &str, from_domain: &str) -> Alignment {
    if !is_domain_name(domain) || !is_domain_name(from_domain) {
        return Alignment::None;
    }
    let (a, b) = (normalize(domain), normalize(from_domain));
    if a.is_empty() || b.is_empty() {
        Alignment::None
    } else if a == b {
        Alignment::Strict
    } else if organizational_domain(&a) == organizational_domain(&b) {
        Alignment::Relaxed
    } else {
        Alignment::None
    }
}

/// The organizational domain of `d`: its public suffix plus one label
/// (`mail.example.co.uk` → `example.co.uk`), lowercased and without a
/// trailing dot. A name that is itself a public suffix, or has one label,
/// is its own organizational domain.
pub fn organizational_domain(d: &str) -> String {
    let d = normalize(d);
    // Whitespace or control characters inside: not a host name, so no
    // suffix applies (and trimming the list's answer would change it).
    if d.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return d;
    }
    // The compiled list matches lowercase names only.
    match psl::domain_str(&d) {
        Some(org) => org.to_string(),
        None => d,
    }
}

/// Whether `d` is a domain name as DKIM's `d=`, SPF and `From:` use it
/// (RFC 5321 `Domain`, RFC 6376 `domain-name`), surrounding whitespace and
/// one trailing dot allowed: dot-separated labels of 1 to 63 letters,
/// digits and inner hyphens (a U-label's letters may be non-ASCII), at most
/// 253 characters in all.
pub fn is_domain_name(d: &str) -> bool {
    let d = d.trim();
    let d = d.strip_suffix('.').unwrap_or(d);
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c == '-' || c.is_ascii_alphanumeric() || (!c.is_ascii() && c.is_alphanumeric()))
        })
}

/// Lowercase, without surrounding whitespace and trailing dots (in any
/// mix, so normalizing twice changes nothing).
fn normalize(d: &str) -> String {
    d.trim_start().trim_end_matches(|c: char| c == '.' || c.is_whitespace()).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::Alignment::*;
    use super::*;

    #[track_caller]
    fn check(domain: &str, from: &str, expect: Alignment) {
        assert_eq!(alignment(domain, from), expect, "{domain} vs {from}");
        assert_eq!(alignment(from, domain), expect, "{from} vs {domain} (symmetric)");
    }

    #[test]
    fn strict_ignores_case_and_trailing_dot() {
        check("sender.test", "sender.test", Strict);
        check("Sender.TEST.", "sender.test", Strict);
        check(" example.com ", "EXAMPLE.com", Strict);
    }

    #[test]
    fn relaxed_shares_the_organizational_domain() {
        check("mail.sender.test", "sender.test", Relaxed);
        check("a.b.sender.test", "mail.sender.test", Relaxed);
        check("bounce.example.com", "example.com", Relaxed);
        check("mail.example.co.uk", "example.co.uk", Relaxed);
        check("x.y.example.co.uk", "news.example.co.uk", Relaxed);
    }

    #[test]
    fn none_across_organizations_and_public_suffixes() {
        check("other.test", "sender.test", None);
        check("example.co.uk", "other.co.uk", None);
        // Sharing only a public suffix is not alignment.
        check("example.co.uk", "co.uk", None);
        check("sender.test", "", None);
        check("", "", None);
        check("evil-sender.test", "sender.test", None);
    }

    #[test]
    fn malformed_names_never_align() {
        // Issue 16: a leading dot was relaxed-aligned with the bare name.
        check(".example.com", "example.com", None);
        check(".example.com", "mail.example.com", None);
        check(".example.com", ".example.com", None);
        check("example..com", "example.com", None);
        check("example.com..", "example.com", None);
        check("exa mple.com", "example.com", None);
        check("ex_ample.com", "mail.ex_ample.com", None);
        check("-example.com", "example.com", None);
        check("example-.com", "example.com", None);
        check("exa\u{0}mple.com", "example.com", None);
        check(".", ".", None);
        check(&format!("{}.com", "a".repeat(64)), "com", None);
        // Still fine: one trailing dot, surrounding space, IDN U-labels.
        check("bücher.example.", "bücher.example", Strict);
        check("xn--bcher-kva.example", "mail.xn--bcher-kva.example", Relaxed);
    }

    #[test]
    fn organizational_domains() {
        assert_eq!(organizational_domain("mail.sender.test"), "sender.test");
        assert_eq!(organizational_domain("Mail.Example.CO.UK."), "example.co.uk");
        assert_eq!(organizational_domain("www.example.com"), "example.com");
        assert_eq!(organizational_domain("co.uk"), "co.uk");
        assert_eq!(organizational_domain("localhost"), "localhost");
        // Found by fuzzing: a control character inside made the answer
        // trim to a different name on a second lookup.
        assert_eq!(organizational_domain("a.\x0bco.uk"), "a.\x0bco.uk");
        assert_eq!(organizational_domain("sender.test\x01\t. "), "sender.test\x01");
    }

    #[test]
    fn serializes_lowercase() {
        assert_eq!(serde_json::to_string(&[Strict, Relaxed, None]).unwrap(), r#"["strict","relaxed","none"]"#);
    }
}
