//! API token roles and token declarations as configured (`[[token]]`).

/// What an API token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Admin,
    /// Every read except the audit log; no secrets.
    Read,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Read => "read",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "read" => Some(Role::Read),
            _ => None,
        }
    }
}

/// One API token as configured: a name (what the audit log shows), a role
/// and the SHA-256 of the token (lowercase hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenDecl {
    pub name: String,
    pub role: Role,
    pub sha256: String,
}
