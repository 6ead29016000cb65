//! Names and token digests: the small vocabulary every layer checks
//! against (config, alert routes, the API, the agent hub).

/// Letters, digits, `-`, `_`, `.`; 1 to 64 characters (agent, region and check names).
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// SHA-256 of a token, lowercase hex: the only form a token is stored in.
pub fn token_sha256(token: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
