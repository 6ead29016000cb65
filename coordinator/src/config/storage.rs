//! `[storage]`: where the coordinator keeps its data. Absent, SQLite in
//! `[server] data_dir`; with `url` (or `url_file`), a PostgreSQL database
//! that any number of coordinator replicas share. The password may sit in
//! the URL, in `password_file` or in `password_env`; it is kept as a secret
//! and never logged.

use crate::storage::settings::{DEFAULT_POOL_SIZE, PgSettings, StorageSettings};
use mailloop_common::Secret;
use mailloop_common::config::{ConfigIssue, IssueList, Table};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Reads `[storage]`; `data_dir` is the SQLite default's directory.
pub fn parse(
    v: &mut Vec<ConfigIssue>,
    raw: Option<&Value>,
    env: &dyn Fn(&str) -> Option<String>,
    data_dir: Option<&Path>,
) -> Option<StorageSettings> {
    let Some(mut t) = Table::optional(v, "storage", raw) else {
        return data_dir.map(|d| StorageSettings::Sqlite { data_dir: d.to_path_buf() });
    };
    let url = t.string(v, "url");
    let url_file = t.string(v, "url_file");
    let password_file = t.string(v, "password_file");
    let password_env = t.string(v, "password_env");
    let ca_file = t.string(v, "ca_file");
    let pool_size = t.number(v, "pool_size", DEFAULT_POOL_SIZE as u64, 1..=1000);
    t.finish(v);
    let url = match (url?, url_file?) {
        (Some(_), Some(_)) => {
            v.issue("storage.url", "give url or url_file, not both");
            return None;
        }
        (Some(u), None) => u,
        (None, Some(f)) => match std::fs::read_to_string(&f) {
            Ok(s) => s.trim().to_string(),
            Err(e) => {
                v.issue("storage.url_file", format!("{f}: {e}"));
                return None;
            }
        },
        (None, None) => {
            v.issue("storage.url", "required in [storage]: postgres://user@host:port/database");
            return None;
        }
    };
    if let Err(e) = PgSettings::check_url(&url) {
        // The URL itself is never repeated: it may hold a password.
        v.issue("storage.url", e);
        return None;
    }
    let password = match (password_file?, password_env?) {
        (Some(_), Some(_)) => {
            v.issue("storage.password_file", "give password_file or password_env, not both");
            return None;
        }
        (Some(f), None) => match std::fs::read_to_string(&f) {
            Ok(s) => Some(Secret::new(s.trim_end_matches(['\n', '\r']))),
            Err(e) => {
                v.issue("storage.password_file", format!("{f}: {e}"));
                return None;
            }
        },
        (None, Some(name)) => match env(&name) {
            Some(p) => Some(Secret::new(p)),
            None => {
                v.issue("storage.password_env", format!("the environment variable {name} is not set"));
                return None;
            }
        },
        (None, None) => None,
    };
    let ca_file = ca_file?.map(PathBuf::from);
    if let Some(ca) = &ca_file
        && !ca.is_file()
    {
        v.issue("storage.ca_file", format!("{} is not a readable file", ca.display()));
        return None;
    }
    Some(StorageSettings::Postgres(PgSettings {
        url: Secret::new(url),
        password,
        ca_file,
        pool_size: pool_size? as usize,
    }))
}
