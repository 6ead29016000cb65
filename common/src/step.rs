//! The protocol steps of a round trip and their wire names.
//!
//! A step name is the same string in JSON, tables, Nagios perfdata, config
//! thresholds and (later) metrics labels: `smtp.connect`, `imap.wait`, ...

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

macro_rules! steps {
    ($($variant:ident => $wire:literal, $doc:literal;)*) => {
        /// One timed step of a probe.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum StepName {
            $(#[doc = $doc] $variant,)*
        }

        impl StepName {
            /// Every step, in the order a full round trip runs them.
            pub const ALL: &'static [StepName] = &[$(StepName::$variant,)*];

            /// The wire name (`smtp.connect`).
            pub fn as_str(self) -> &'static str {
                match self { $(StepName::$variant => $wire,)* }
            }
        }

        impl FromStr for StepName {
            type Err = UnknownStep;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($wire => Ok(StepName::$variant),)*
                    other => Err(UnknownStep(other.to_string())),
                }
            }
        }
    };
}

steps! {
    Oauth2Token => "oauth2.token", "Fetching an OAuth2 access token from the identity provider (absent while a cached one is valid).";
    SmtpConnect => "smtp.connect", "TCP connect to the SMTP server.";
    SmtpTls => "smtp.tls", "Implicit TLS handshake (`security = \"tls\"`).";
    SmtpBanner => "smtp.banner", "Waiting for the 220 greeting.";
    SmtpEhlo => "smtp.ehlo", "EHLO before TLS (or the only EHLO).";
    SmtpStarttls => "smtp.starttls", "STARTTLS command plus the TLS handshake.";
    SmtpEhloTls => "smtp.ehlo_tls", "EHLO again inside TLS.";
    SmtpAuth => "smtp.auth", "SASL AUTH (PLAIN or LOGIN; XOAUTH2 or OAUTHBEARER with a token).";
    SmtpMailFrom => "smtp.mail_from", "MAIL FROM.";
    SmtpRcptTo => "smtp.rcpt_to", "RCPT TO.";
    SmtpData => "smtp.data", "DATA command to the 354 go-ahead.";
    SmtpDataAck => "smtp.data_ack", "Message body and end-of-data to the final reply.";
    SmtpQuit => "smtp.quit", "QUIT.";
    ImapConnect => "imap.connect", "TCP connect to the IMAP server.";
    ImapTls => "imap.tls", "Implicit TLS handshake.";
    ImapGreeting => "imap.greeting", "Waiting for the `* OK` greeting.";
    ImapStarttls => "imap.starttls", "STARTTLS command plus the TLS handshake.";
    ImapLogin => "imap.login", "LOGIN, or AUTHENTICATE XOAUTH2 / OAUTHBEARER with a token.";
    ImapSelect => "imap.select", "SELECT of the probe mailbox.";
    ImapWait => "imap.wait", "IDLE (or polling) until the probe arrives.";
    ImapSearch => "imap.search", "UID SEARCH that finds the probe by its header.";
    ImapFetch => "imap.fetch", "UID FETCH BODY.PEEK[] of the probe.";
    ImapCleanup => "imap.cleanup", "Deleting the probe and sweeping stale ones.";
    ImapLogout => "imap.logout", "LOGOUT.";
    DnsSpf => "dns.spf", "Walking the sender domain's SPF record and counting its DNS lookups.";
}

impl StepName {
    /// True for the SMTP half of the round trip.
    pub fn is_smtp(self) -> bool {
        self.as_str().starts_with("smtp.")
    }
}

/// A step name that mailloop does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown step {0:?}")]
pub struct UnknownStep(pub String);

impl fmt::Display for StepName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for StepName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for StepName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_round_trip() {
        for step in StepName::ALL {
            assert_eq!(step.as_str().parse::<StepName>().unwrap(), *step);
        }
        assert!("smtp.nope".parse::<StepName>().is_err());
    }
}
