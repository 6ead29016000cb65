//! The coordinator's two storage backends as a test parameter: a test body
//! written once as `fn name(backend: Backend)` runs on SQLite (the
//! coordinator's `data_dir`, the embedded default) and on PostgreSQL (a
//! database of its own on this test binary's one throwaway server,
//! [`crate::postgres::Postgres`]), through [`on_both_backends!`].

use crate::postgres::Postgres;

/// Where a test's coordinator keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The coordinator's `[storage] url` for a test named `test`: none on
    /// SQLite, a fresh database of its own on PostgreSQL (the server is
    /// started on first use, once per test binary).
    pub fn storage_url(self, test: &str) -> Option<String> {
        match self {
            Backend::Sqlite => None,
            Backend::Postgres => Some(Postgres::get().database(test)),
        }
    }

    /// `name` made this backend's own (`name` on SQLite, `name-pg` on
    /// PostgreSQL), for a check's name and so its mailbox: the two runs of
    /// one test go on in parallel and must not read each other's mail.
    pub fn name(self, name: &str) -> String {
        match self {
            Backend::Sqlite => name.to_string(),
            Backend::Postgres => format!("{name}-pg"),
        }
    }
}

/// Runs each named test body (`fn NAME(backend: Backend)` in scope) on
/// both backends: `on_both_backends!(a, b);` makes the tests `a::sqlite`,
/// `a::postgres`, `b::sqlite`, `b::postgres` (so `cargo test a` runs both
/// of `a`, and `cargo test postgres` every PostgreSQL run).
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[test]
                fn sqlite() {
                    super::$name($crate::backend::Backend::Sqlite)
                }
                #[test]
                fn postgres() {
                    super::$name($crate::backend::Backend::Postgres)
                }
            }
        )+
    };
}
