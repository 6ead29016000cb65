//! The one table of likely causes and first checks, for every step × failure
//! class, for slow steps, and for authentication drift.
//!
//! Steps are grouped into families that fail for the same reasons (the two
//! TLS handshakes of a side, the mailbox commands after login); the class
//! says *how* it failed, the family *where*, and together they name a cause
//! an operator can act on. Summaries ([`super::summary`]) quote this text
//! verbatim, so it is written as one sentence each, without a final period.

use mailloop_common::{FailureClass, StepName};

/// A likely cause and the first thing to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advice {
    pub cause: String,
    pub check: String,
}

/// Steps that fail for the same reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    SmtpConnect,
    SmtpTls,
    SmtpGreeting,
    SmtpAuth,
    SmtpSender,
    SmtpRecipient,
    SmtpMessage,
    SmtpQuit,
    ImapConnect,
    ImapTls,
    ImapGreeting,
    ImapLogin,
    ImapMailbox,
    ImapWait,
    DnsSpf,
    Oauth2Token,
}

fn family(step: StepName) -> Family {
    use StepName::*;
    match step {
        SmtpConnect => Family::SmtpConnect,
        SmtpTls | SmtpStarttls => Family::SmtpTls,
        SmtpBanner | SmtpEhlo | SmtpEhloTls => Family::SmtpGreeting,
        SmtpAuth => Family::SmtpAuth,
        SmtpMailFrom => Family::SmtpSender,
        SmtpRcptTo => Family::SmtpRecipient,
        SmtpData | SmtpDataAck => Family::SmtpMessage,
        SmtpQuit => Family::SmtpQuit,
        ImapConnect => Family::ImapConnect,
        ImapTls | ImapStarttls => Family::ImapTls,
        ImapGreeting => Family::ImapGreeting,
        ImapLogin => Family::ImapLogin,
        ImapSelect | ImapSearch | ImapFetch | ImapCleanup | ImapLogout => Family::ImapMailbox,
        ImapWait => Family::ImapWait,
        DnsSpf => Family::DnsSpf,
        Oauth2Token => Family::Oauth2Token,
    }
}

/// Which server a family talks to, for the generic arms.
fn server(f: Family) -> &'static str {
    match f {
        Family::ImapConnect
        | Family::ImapTls
        | Family::ImapGreeting
        | Family::ImapLogin
        | Family::ImapMailbox
        | Family::ImapWait => "the IMAP server",
        Family::DnsSpf => "the DNS resolver",
        Family::Oauth2Token => "the identity provider's token endpoint",
        _ => "the SMTP server",
    }
}

fn a(cause: impl Into<String>, check: impl Into<String>) -> Advice {
    Advice {
        cause: cause.into(),
        check: check.into(),
    }
}

/// The likely cause of `class` at `step` and what to check first.
pub fn advice(step: StepName, class: FailureClass) -> Advice {
    use FailureClass as C;
    use Family as F;
    let f = family(step);
    let srv = server(f);
    let s = step.as_str();
    match (f, class) {
        // Connecting.
        (F::SmtpConnect | F::ImapConnect, C::Connect) => a(
            format!(
                "{srv} refuses or does not answer connections (service down, firewall, or wrong host/port)"
            ),
            format!(
                "that {srv} is running and listening on the configured port, and that the host name resolves to it"
            ),
        ),
        (F::SmtpConnect | F::ImapConnect, C::Timeout) => a(
            format!(
                "connections to {srv} hang: packets are dropped on the path or the host is overloaded"
            ),
            "the network path (traceroute, firewall drops) and the server's load and connection limits",
        ),
        (F::SmtpConnect | F::ImapConnect, _) => a(
            format!(
                "{srv} closes or rejects connections right after accept ({class} at {s}): a connection limit or a blocklist"
            ),
            format!(
                "{srv}'s connection limits and client blocklists (postscreen, fail2ban) for the probe's address"
            ),
        ),
        // TLS.
        (F::SmtpTls | F::ImapTls, C::Tls) => a(
            format!(
                "the TLS handshake with {srv} fails: an expired, self-signed or misnamed certificate, or STARTTLS is not offered"
            ),
            format!("{srv}'s certificate (expiry, names, chain) and that STARTTLS is advertised"),
        ),
        (F::SmtpTls | F::ImapTls, C::Timeout) => a(
            format!(
                "the TLS handshake with {srv} stalls: a middlebox that breaks TLS or an overloaded server"
            ),
            "for TLS-inspecting firewalls on the path and the server's CPU load",
        ),
        (F::SmtpTls | F::ImapTls, _) => a(
            format!("{srv} refuses to start TLS ({class} at {s})"),
            format!("{srv}'s TLS settings (protocol versions, ciphers, certificate files)"),
        ),
        // Greetings and EHLO.
        (F::SmtpGreeting, C::Permanent) => a(
            "the SMTP server rejects the client at the greeting or EHLO (a blocklisted address or a refused HELO name)",
            "the server's client restrictions and blocklists for the probe's address and HELO name",
        ),
        (F::SmtpGreeting, C::Deferred | C::RateLimited) => a(
            "the SMTP server turns the client away at the greeting (too many connections, or it is shutting down)",
            "the server's connection and rate limits and whether it is being restarted",
        ),
        (F::SmtpGreeting, C::Timeout) => a(
            "the SMTP server accepts the connection but does not greet in time (postscreen delay, overloaded or stuck smtpd)",
            "the server's process count and queue, and postscreen's greet wait",
        ),
        (F::SmtpGreeting, _) => a(
            format!(
                "the SMTP server's greeting or EHLO reply is broken ({class} at {s}): not an SMTP server, or a middlebox in between"
            ),
            "that the configured port reaches the SMTP service directly",
        ),
        (F::ImapGreeting, C::Timeout) => a(
            "the IMAP server accepts the connection but does not greet in time (overloaded or out of login processes)",
            "the IMAP server's process limits and load",
        ),
        (F::ImapGreeting, _) => a(
            format!(
                "the IMAP server's greeting is refused or malformed ({class} at {s}): a wrong port or a middlebox"
            ),
            "that the configured port reaches the IMAP service directly",
        ),
        // Credentials.
        (F::SmtpAuth, C::Auth) => a(
            "the SMTP server refuses the probe's submission credentials (password changed or expired, account locked)",
            "the submission account's password and lock state, and the SMTP password_env/password_file",
        ),
        (F::SmtpAuth, C::Deferred | C::RateLimited) => a(
            "the SMTP server temporarily cannot authenticate (the auth backend is down or throttling)",
            "the SASL backend (Dovecot auth, LDAP, database) the SMTP server authenticates against",
        ),
        (F::SmtpAuth, C::Permanent) => a(
            "the SMTP server rejects AUTH itself (the mechanism is not offered, or AUTH is disabled on this port)",
            "that AUTH PLAIN or LOGIN is advertised after STARTTLS on the submission port",
        ),
        (F::SmtpAuth, _) => a(
            format!(
                "the SMTP AUTH exchange fails ({class}): the authentication backend is slow or broken"
            ),
            "the SASL backend's logs and latency",
        ),
        (F::ImapLogin, C::Auth) => a(
            "the IMAP server refuses the probe mailbox's login (password changed, account disabled or deleted)",
            "the probe mailbox's account and password on the receiving side, and the IMAP password_env/password_file",
        ),
        (F::ImapLogin, C::Timeout) => a(
            "the IMAP login hangs: the IMAP server's authentication backend is slow or down",
            "the IMAP server's auth backend (passdb/userdb, LDAP, database) and its logs",
        ),
        (F::ImapLogin, _) => a(
            format!(
                "the IMAP login fails ({class}): the server refuses logins (maintenance mode, LOGIN disabled without TLS)"
            ),
            "the IMAP server's login settings and logs for the probe account",
        ),
        // The envelope.
        (F::SmtpSender, C::Permanent) => a(
            "the SMTP server rejects the sender address (not allowed for this account, or the sender domain is refused)",
            "that the probe's from address is allowed for the submission account (sender login maps)",
        ),
        (F::SmtpSender, C::Deferred | C::RateLimited) => a(
            "the SMTP server defers the sender (greylisting, a sender rate limit, or a DNS lookup of the sender domain failing)",
            "the sender rate limits and the sender domain's DNS",
        ),
        (F::SmtpSender, _) => a(
            format!(
                "MAIL FROM fails ({class}): the SMTP server's sender checks are slow or broken"
            ),
            "the server's sender restrictions and the policy services they call",
        ),
        (F::SmtpRecipient, C::Permanent) => a(
            "the probe mailbox was removed or the recipient domain's routing changed",
            "the mailbox exists on the receiving side",
        ),
        (F::SmtpRecipient, C::Deferred) => a(
            "the recipient is greylisted or its mailbox is temporarily unavailable (full, or the lookup backend is down)",
            "the greylisting policy and the recipient mailbox's quota",
        ),
        (F::SmtpRecipient, C::RateLimited) => a(
            "the SMTP server rate-limits recipients from this client",
            "the server's per-client recipient rate limits",
        ),
        (F::SmtpRecipient, C::Auth) => a(
            "relaying to the recipient needs authentication the probe did not give (relay access denied)",
            "that the check authenticates, or that the recipient domain is one the server accepts mail for",
        ),
        (F::SmtpRecipient, _) => a(
            format!(
                "RCPT TO fails ({class}): the recipient checks (policy service, SPF check, virtual map lookup) are slow or broken"
            ),
            "the recipient restrictions and the policy services they call",
        ),
        (F::SmtpMessage, C::Permanent) => a(
            "the SMTP server rejects the message content (a content filter, DMARC reject, size limit or spam verdict)",
            "the server's content filters (milters, spam scanner) and the log line for the probe's queue id",
        ),
        (F::SmtpMessage, C::Deferred | C::RateLimited) => a(
            "the SMTP server defers the message (a milter or content scanner is down, or the queue is full)",
            "the milters and content scanners and the free disk space of the mail queue",
        ),
        (F::SmtpMessage, C::Timeout) => a(
            "the end-of-data reply takes too long: a content scanner or milter (DKIM signing, antivirus) is slow",
            "the milters' and content scanners' latency and load",
        ),
        (F::SmtpMessage, _) => a(
            format!(
                "sending the message fails ({class} at {s}): a milter or the queue manager is broken"
            ),
            "the SMTP server's log for the probe's session",
        ),
        (F::SmtpQuit, _) => a(
            format!(
                "the session ends badly after the message was accepted ({class} at QUIT): harmless for delivery, but a sign of an unstable server or path"
            ),
            "the SMTP server's log for dropped sessions",
        ),
        // The receiving mailbox.
        (F::ImapMailbox, C::Timeout) => a(
            format!(
                "the mailbox command {s} hangs: the mail store is slow (storage latency, a huge mailbox, index rebuilds)"
            ),
            "the mail store's disk latency and the probe mailbox's size and index",
        ),
        (F::ImapMailbox, _) => a(
            format!(
                "the mailbox command {s} fails ({class}): the probe mailbox is missing, over quota, or its index is corrupt"
            ),
            "that the probe mailbox (folder) exists and is writable, and the IMAP server's log",
        ),
        (F::ImapWait, C::NotDelivered) => a(
            "the message was accepted but never reached the mailbox: it is stuck in a queue, filtered to another folder, or discarded as spam",
            "the sending and receiving mail queues for the probe's queue id, and spam or sieve filters on the mailbox",
        ),
        (F::ImapWait, C::Timeout) => a(
            "delivery to the mailbox takes longer than the deadline: a queue backlog or a slow delivery agent",
            "the receiving queue's length and the local delivery agent (LMTP) latency",
        ),
        (F::ImapWait, _) => a(
            format!(
                "waiting for the probe fails ({class}): the IMAP connection broke while idling"
            ),
            "the IMAP server's idle timeouts and the path's NAT/firewall idle timeouts",
        ),
        (F::DnsSpf, C::Timeout | C::Connect) => a(
            "the DNS resolver does not answer SPF lookups in time",
            "the configured [dns] nameservers and the sender domain's authoritative servers",
        ),
        (F::DnsSpf, _) => a(
            format!("the sender domain's SPF record is broken or over its lookup limit ({class})"),
            "the SPF record: syntax, include loops, and the 10-lookup limit",
        ),
        (F::Oauth2Token, C::Auth) => a(
            "the identity provider refuses to issue a token (client secret expired or revoked, consent withdrawn, refresh token revoked or expired)",
            "the app registration's secret and API permissions, and re-run `mailloop-agent oauth2 login` for a refresh token",
        ),
        (F::Oauth2Token, C::Connect | C::Timeout | C::Tls) => a(
            format!("{srv} cannot be reached in time ({class}): the provider is down or the agent's egress to it is blocked"),
            "the agent's outbound HTTPS to the token endpoint (proxy, firewall, DNS) and the provider's status page",
        ),
        (F::Oauth2Token, _) => a(
            format!("{srv} answers, but not with a token ({class}): an outage or a wrong token_url"),
            "the configured token_url and the provider's status page",
        ),
    }
}

/// Why a delivered step may be slow, and what to look at.
pub fn slow_advice(step: &str) -> Advice {
    let fam = step.parse::<StepName>().ok().map(family);
    match fam {
        Some(Family::SmtpConnect | Family::ImapConnect) => a(
            "connection setup is slow: network latency or packet loss on the path, or a slow DNS lookup",
            "the network path's latency and loss from that region",
        ),
        Some(Family::SmtpTls | Family::ImapTls) => a(
            "TLS handshakes are slow: a loaded server or a long certificate chain fetched over a slow path",
            "the server's CPU load and the certificate chain size",
        ),
        Some(Family::SmtpGreeting) => a(
            "the SMTP greeting is slow: postscreen or reverse-DNS lookups of the client take time",
            "postscreen's greet delay and the server's DNS resolver",
        ),
        Some(Family::ImapGreeting | Family::ImapLogin | Family::SmtpAuth) => a(
            "authentication is slow: the auth backend (LDAP, database) is loaded",
            "the authentication backend's latency",
        ),
        Some(Family::SmtpSender | Family::SmtpRecipient) => a(
            "envelope checks are slow: a policy service, greylisting daemon or DNS blocklist lookup is slow",
            "the policy services and DNS lookups the server runs on MAIL FROM and RCPT TO",
        ),
        Some(Family::SmtpMessage) => a(
            "the message is slow to be accepted: milters or content scanners (DKIM signing, antivirus, spam) take longer",
            "the milters' and content scanners' latency and load",
        ),
        Some(Family::ImapWait) => a(
            "delivery to the mailbox is slow: a queue backlog on the sending or receiving side, or a slow delivery agent",
            "the mail queues' length and the delivery agent (LMTP) latency",
        ),
        Some(Family::ImapMailbox | Family::SmtpQuit) => a(
            "mailbox operations are slow: the mail store's disk or index is slow",
            "the mail store's disk latency and the probe mailbox's size",
        ),
        Some(Family::Oauth2Token) => a(
            "fetching the OAuth2 token is slow: the identity provider answers slowly",
            "the provider's status page and the agent's path to the token endpoint",
        ),
        Some(Family::DnsSpf) => a(
            "SPF lookups are slow: the resolver or the sender domain's name servers answer slowly",
            "the configured resolver and the sender domain's authoritative servers",
        ),
        None => a(
            "the whole round trip is slower than usual: one of its steps or the delivery queue got slower",
            "the per-step baselines of the slow region to see which step moved",
        ),
    }
}

/// What a drifted authentication result (`spf`, `dkim`, `dmarc`,
/// `dkim alignment`, `spf alignment`) likely means.
pub fn auth_drift_advice(what: &str) -> Advice {
    match what {
        "spf" => a(
            "the probe is sent from an address the sender domain's SPF record does not list (a changed sending path or relay), or the record changed",
            "the sender domain's SPF record and the IP the probe is relayed from",
        ),
        "dkim" => a(
            "the DKIM signature no longer verifies: a rotated key not published in DNS, a signer that stopped, or a relay that alters the message",
            "the DKIM selector's public key in DNS and the signing milter",
        ),
        "dmarc" => a(
            "DMARC no longer passes because SPF and DKIM no longer pass aligned with the From domain",
            "which of SPF or DKIM stopped passing aligned, and the DMARC record",
        ),
        _ => a(
            "the authenticated domain moved from the From domain itself to another name of the organization (a changed signer or relay)",
            "the DKIM d= domain and the envelope sender the sending path uses",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pair_has_a_cause_and_a_check() {
        for &step in StepName::ALL {
            for class in FailureClass::ALL {
                let adv = advice(step, class);
                assert!(
                    adv.cause.len() > 20 && adv.check.len() > 10,
                    "{step} × {class}: {adv:?}"
                );
            }
        }
    }
}
