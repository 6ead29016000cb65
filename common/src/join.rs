//! The join token of agent enrollment: `mlj1.` and the base64url (no
//! padding) of a small JSON object.
//!
//! `mailloopctl agents add` prints it inside the one command to run on the
//! new machine (`mailloop-agent enroll 'mlj1.…'`). It carries everything
//! the agent needs to reach and trust its coordinator on first contact: the
//! coordinator's gRPC URL(s), the SHA-256 of the certificate (the CA, or
//! the server's own) the agent must find in the coordinator's TLS chain,
//! and the single-use secret it exchanges for its long-lived token. The
//! coordinator keeps only the secret's SHA-256.

use crate::Secret;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

/// The prefix of every join token (format version 1).
pub const PREFIX: &str = "mlj1.";

/// A decoded join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The coordinator's gRPC URLs, tried in order.
    pub urls: Vec<String>,
    /// Lowercase hex SHA-256 of a DER certificate in the coordinator's TLS
    /// chain; `None` only for a coordinator without TLS (http:// on loopback).
    pub sha256: Option<String>,
    /// Exchanged once for the agent's token.
    pub secret: Secret,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    u: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    f: Option<String>,
    s: String,
}

impl JoinToken {
    /// The printable token.
    pub fn encode(&self) -> Secret {
        let wire = Wire {
            u: self.urls.clone(),
            f: self.sha256.clone(),
            s: self.secret.expose().to_string(),
        };
        let json = serde_json::to_vec(&wire).expect("plain strings serialise");
        Secret::new(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json)))
    }

    /// Reads a token as printed (surrounding blanks and quotes tolerated);
    /// the error says what is wrong without echoing it.
    pub fn decode(text: &str) -> Result<JoinToken, String> {
        let text = text.trim().trim_matches(['\'', '"']);
        let Some(body) = text.strip_prefix(PREFIX) else {
            return Err(format!(
                "not a mailloop join token (it should start with {PREFIX}; copy the whole line `mailloopctl agents add` printed)"
            ));
        };
        let json = URL_SAFE_NO_PAD.decode(body).map_err(|_| {
            "the join token is damaged (not base64url): copy it again, whole".to_string()
        })?;
        let wire: Wire = serde_json::from_slice(&json).map_err(|_| {
            "the join token is damaged (its content does not parse): copy it again, whole"
                .to_string()
        })?;
        if wire.u.is_empty() || wire.s.is_empty() {
            return Err("the join token names no coordinator URL or carries no secret".into());
        }
        if let Some(f) = &wire.f
            && (f.len() != 64 || !f.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err("the join token's certificate fingerprint is not a SHA-256 in hex".into());
        }
        Ok(JoinToken {
            urls: wire.u,
            sha256: wire.f.map(|f| f.to_ascii_lowercase()),
            secret: Secret::new(wire.s),
        })
    }
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("urls", &self.urls)
            .field("sha256", &self.sha256)
            .field("secret", &self.secret)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_and_a_damaged_one_is_named() {
        let t = JoinToken {
            urls: vec!["https://127.0.0.1:7443".into()],
            sha256: Some("ab".repeat(32)),
            secret: Secret::new("mlj_0123"),
        };
        let text = t.encode();
        assert!(text.expose().starts_with(PREFIX));
        assert_eq!(
            JoinToken::decode(&format!(" '{}'\n", text.expose())).unwrap(),
            t
        );
        assert!(
            JoinToken::decode("mlt_abc")
                .unwrap_err()
                .contains("not a mailloop join token")
        );
        assert!(
            JoinToken::decode("mlj1.@@@")
                .unwrap_err()
                .contains("damaged")
        );
        assert!(!format!("{t:?}").contains("mlj_0123"));
    }
}
