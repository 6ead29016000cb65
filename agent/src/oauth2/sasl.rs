//! The SASL messages that carry a bearer token: XOAUTH2 (Google's, also
//! Microsoft's) and OAUTHBEARER (RFC 7628). Pure functions, shared by the
//! SMTP `AUTH` and IMAP `AUTHENTICATE` exchanges.

use base64::Engine;

/// A token-carrying SASL mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// RFC 7628, the standard one; preferred when offered.
    OAuthBearer,
    /// The older, provider-specific one (the only one Microsoft 365 offers).
    XOAuth2,
}

impl Mechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::OAuthBearer => "OAUTHBEARER",
            Mechanism::XOAuth2 => "XOAUTH2",
        }
    }

    /// What the client answers to an error challenge so the server sends
    /// its final failure: OAUTHBEARER wants a single %x01 (RFC 7628 §3.2.3),
    /// XOAUTH2 an empty response. Already base64, as it goes on the wire.
    pub fn error_ack(self) -> &'static str {
        match self {
            Mechanism::OAuthBearer => "AQ==",
            Mechanism::XOAuth2 => "",
        }
    }
}

/// Picks the mechanism from what the server advertises (SMTP `AUTH`
/// keywords or IMAP `AUTH=` capabilities, compared case-insensitively).
pub fn choose(offered: &[String]) -> Option<Mechanism> {
    let has = |m: &str| offered.iter().any(|o| o.eq_ignore_ascii_case(m));
    if has("OAUTHBEARER") {
        Some(Mechanism::OAuthBearer)
    } else if has("XOAUTH2") {
        Some(Mechanism::XOAuth2)
    } else {
        None
    }
}

/// The client's first message, base64-encoded. `host` and `port` are the
/// server's, as OAUTHBEARER's GS2 header carries them.
pub fn initial_response(mech: Mechanism, user: &str, host: &str, port: u16, token: &str) -> String {
    let raw = match mech {
        Mechanism::XOAuth2 => format!("user={user}\x01auth=Bearer {token}\x01\x01"),
        Mechanism::OAuthBearer => {
            // RFC 5801 saslname: ',' and '=' are escaped.
            let name = user.replace('=', "=3D").replace(',', "=2C");
            format!("n,a={name},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01")
        }
    };
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// A server's error challenge (base64 of a JSON object such as
/// `{"status":"401","schemes":"bearer","scope":"mail"}`), in words for the
/// failure message. Not JSON: the decoded text, shortened; not base64: the
/// challenge as sent.
pub fn describe_challenge(challenge: &str) -> String {
    let challenge = challenge.trim();
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(challenge) else {
        return format!("challenge {:?}", shorten(challenge));
    };
    match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&bytes) {
        Ok(obj) => {
            // status first, as RFC 7628 §3.2.2 lists the fields; then the rest.
            let known = ["status", "schemes", "scope"];
            let ordered = known.iter().filter_map(|k| obj.get_key_value(*k)).chain(obj.iter().filter(|(k, _)| !known.contains(&k.as_str())));
            let parts: Vec<String> = ordered
                .take(8)
                .map(|(k, v)| format!("{}={}", shorten(k), shorten(&v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()))))
                .collect();
            format!("server's challenge: {}", parts.join(", "))
        }
        Err(_) => format!("server's challenge: {:?}", shorten(&String::from_utf8_lossy(&bytes))),
    }
}

fn shorten(s: &str) -> String {
    let clean: String = s.chars().filter(|c| !c.is_control()).collect();
    crate::text::truncate(&clean, 120)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(b64: &str) -> String {
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).unwrap()
    }

    #[test]
    fn oauthbearer_is_preferred_and_case_does_not_matter() {
        let offered = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(choose(&offered(&["PLAIN", "xoauth2", "OAuthBearer"])), Some(Mechanism::OAuthBearer));
        assert_eq!(choose(&offered(&["LOGIN", "XOAUTH2"])), Some(Mechanism::XOAuth2));
        assert_eq!(choose(&offered(&["PLAIN", "LOGIN"])), None);
    }

    #[test]
    fn initial_responses_follow_the_specs() {
        assert_eq!(
            decode(&initial_response(Mechanism::XOAuth2, "someone@example.com", "imap.example.com", 993, "ya29.vF9dft4")),
            "user=someone@example.com\x01auth=Bearer ya29.vF9dft4\x01\x01"
        );
        // RFC 7628 §4.1, with a user name that needs escaping.
        assert_eq!(
            decode(&initial_response(Mechanism::OAuthBearer, "a,b=c@example.com", "server.example.com", 143, "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==")),
            "n,a=a=2Cb=3Dc@example.com,\x01host=server.example.com\x01port=143\x01auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01"
        );
    }

    #[test]
    fn challenges_are_decoded_for_the_failure_message() {
        assert_eq!(
            describe_challenge("eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiYmVhcmVyIiwic2NvcGUiOiJtYWlsIn0="),
            "server's challenge: status=401, schemes=bearer, scope=mail"
        );
        assert_eq!(describe_challenge("bm90IGpzb24="), "server's challenge: \"not json\"");
        assert_eq!(describe_challenge("!!"), "challenge \"!!\"");
    }
}
