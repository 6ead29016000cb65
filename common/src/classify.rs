//! Failure classes, decided in one place.
//!
//! Every failed probe carries exactly one [`FailureClass`]. Whether a failure
//! is worth retrying (greylisting) or must page someone now (a 5xx) follows
//! from the class alone, so the rules live here and nowhere else.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a probe failed. The serialized names are part of the JSON contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// A 4xx reply other than a rate limit: greylisting (450/451), 452 mailbox full.
    Deferred,
    /// 421, or a 4xx whose text or enhanced code says rate / too many.
    RateLimited,
    /// A 5xx reply.
    Permanent,
    /// Authentication refused (SMTP 530/534/535, IMAP NO/BAD to LOGIN).
    Auth,
    /// TLS handshake or certificate failure, STARTTLS refused or not offered.
    Tls,
    /// A step exceeded its timeout, or the probe its deadline.
    Timeout,
    /// Connection refused, unreachable, or reset before the greeting.
    Connect,
    /// The server broke the protocol: garbage, over-long lines, early close.
    Protocol,
    /// The send succeeded but the probe never reached the mailbox in time.
    NotDelivered,
}

impl FailureClass {
    /// Every class (for tables that must cover them all, like the judge's advice).
    pub const ALL: [FailureClass; 9] = [
        FailureClass::Deferred,
        FailureClass::RateLimited,
        FailureClass::Permanent,
        FailureClass::Auth,
        FailureClass::Tls,
        FailureClass::Timeout,
        FailureClass::Connect,
        FailureClass::Protocol,
        FailureClass::NotDelivered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Deferred => "deferred",
            FailureClass::RateLimited => "rate_limited",
            FailureClass::Permanent => "permanent",
            FailureClass::Auth => "auth",
            FailureClass::Tls => "tls",
            FailureClass::Timeout => "timeout",
            FailureClass::Connect => "connect",
            FailureClass::Protocol => "protocol",
            FailureClass::NotDelivered => "not_delivered",
        }
    }

    /// Transient classes are retried inside a grace window; the others are
    /// reported at once.
    pub fn is_transient(self) -> bool {
        matches!(self, FailureClass::Deferred | FailureClass::RateLimited)
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A three-digit SMTP reply code with the enhanced status code (RFC 3463)
/// and text that came with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpReplyCode {
    pub code: u16,
    pub enhanced: Option<String>,
    pub text: String,
}

impl SmtpReplyCode {
    /// Classifies a negative reply. `during_auth` marks replies to AUTH, where
    /// 530/534/535 (and 454 temporary auth failure is still `deferred`) mean
    /// the credentials were refused.
    pub fn classify(&self, during_auth: bool) -> FailureClass {
        let code = self.code;
        let enhanced = self.enhanced.as_deref().unwrap_or("");
        if matches!(code, 530 | 534 | 535) || (during_auth && code >= 500) {
            return FailureClass::Auth;
        }
        if enhanced == "5.7.8" || (enhanced == "5.7.0" && during_auth) {
            return FailureClass::Auth;
        }
        if (400..500).contains(&code) {
            if code == 421 || looks_rate_limited(enhanced, &self.text) {
                return FailureClass::RateLimited;
            }
            return FailureClass::Deferred;
        }
        if code >= 500 {
            return FailureClass::Permanent;
        }
        // A 1xx/2xx/3xx where another reply was expected.
        FailureClass::Protocol
    }
}

/// RFC 3463 has no single "rate limit" code; providers use 4.7.28 (Gmail),
/// 4.7.0 with "rate" text, 4.3.2 "too many", 4.7.1 "throttled".
fn looks_rate_limited(enhanced: &str, text: &str) -> bool {
    if enhanced == "4.7.28" {
        return true;
    }
    let text = text.to_ascii_lowercase();
    ["rate limit", "rate-limit", "ratelimit", "too many", "throttl", "try again later, slow down"]
        .iter()
        .any(|needle| text.contains(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_class_once_in_order() {
        // Exhaustive: a new class does not compile here until it is in ALL too.
        for (i, c) in FailureClass::ALL.iter().enumerate() {
            let position = match c {
                FailureClass::Deferred => 0,
                FailureClass::RateLimited => 1,
                FailureClass::Permanent => 2,
                FailureClass::Auth => 3,
                FailureClass::Tls => 4,
                FailureClass::Timeout => 5,
                FailureClass::Connect => 6,
                FailureClass::Protocol => 7,
                FailureClass::NotDelivered => 8,
            };
            assert_eq!(i, position, "{c:?}");
        }
    }

    fn class(code: u16, enhanced: &str, text: &str, auth: bool) -> FailureClass {
        SmtpReplyCode {
            code,
            enhanced: (!enhanced.is_empty()).then(|| enhanced.to_string()),
            text: text.to_string(),
        }
        .classify(auth)
    }

    #[test]
    fn greylisting_is_deferred() {
        assert_eq!(class(451, "4.2.0", "Greylisted", false), FailureClass::Deferred);
        assert_eq!(class(450, "4.2.0", "Greylisted", false), FailureClass::Deferred);
        assert_eq!(class(452, "4.2.2", "Mailbox full", false), FailureClass::Deferred);
    }

    #[test]
    fn rate_limits() {
        assert_eq!(class(421, "4.7.0", "closing", false), FailureClass::RateLimited);
        assert_eq!(class(450, "4.7.28", "unusual rate", false), FailureClass::RateLimited);
        assert_eq!(class(451, "4.7.1", "Too many messages", false), FailureClass::RateLimited);
    }

    #[test]
    fn permanent_and_auth() {
        assert_eq!(class(550, "5.1.1", "User unknown", false), FailureClass::Permanent);
        assert_eq!(class(554, "5.7.1", "rejected", false), FailureClass::Permanent);
        assert_eq!(class(535, "5.7.8", "authentication failed", true), FailureClass::Auth);
        assert_eq!(class(535, "5.7.8", "authentication failed", false), FailureClass::Auth);
        assert_eq!(class(504, "5.5.4", "mechanism not supported", true), FailureClass::Auth);
    }

    #[test]
    fn unexpected_positive_reply_is_protocol() {
        assert_eq!(class(250, "", "ok?", false), FailureClass::Protocol);
    }

    #[test]
    fn only_deferrals_are_transient() {
        assert!(FailureClass::Deferred.is_transient());
        assert!(FailureClass::RateLimited.is_transient());
        assert!(!FailureClass::Permanent.is_transient());
        assert!(!FailureClass::Auth.is_transient());
    }
}
