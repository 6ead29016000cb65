//! Where the database is: SQLite in a directory (the embedded default), or
//! a PostgreSQL server (`[storage] url`). Plain data, checked here without
//! connecting, so a bad URL is a config error like any other.

use mailloop_common::Secret;
use std::path::PathBuf;
use std::time::Duration;

/// The backend and how to reach it.
#[derive(Debug, Clone, PartialEq)]
pub enum StorageSettings {
    /// `data_dir/coordinator.db`.
    Sqlite { data_dir: PathBuf },
    /// A PostgreSQL database shared by any number of replicas.
    Postgres(PgSettings),
}

/// A PostgreSQL connection: the URL (which may hold the password, so it is
/// a [`Secret`] and never logged), a password kept apart, the CA to trust.
#[derive(Debug, Clone, PartialEq)]
pub struct PgSettings {
    /// `postgres://user@host:port/db?sslmode=require` (libpq's URL form;
    /// `sslmode` is `disable`, `prefer` or `require`).
    pub url: Secret,
    /// The password, when it is not in the URL (`password_file`, `password_env`).
    pub password: Option<Secret>,
    /// PEM CA certificates to trust instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// Connections per replica.
    pub pool_size: usize,
}

/// Connections per replica unless `[storage] pool_size` says otherwise.
pub const DEFAULT_POOL_SIZE: usize = 16;

impl PgSettings {
    pub fn new(url: impl Into<String>) -> PgSettings {
        PgSettings {
            url: Secret::new(url),
            password: None,
            ca_file: None,
            pool_size: DEFAULT_POOL_SIZE,
        }
    }

    /// Whether `url` is a PostgreSQL URL this coordinator can use. The
    /// error never repeats the URL (it may hold a password).
    pub fn check_url(url: &str) -> Result<(), String> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err("expected postgres://user@host:port/database".into());
        }
        url.parse::<tokio_postgres::Config>().map(|_| ()).map_err(|e| e.to_string())
    }

    /// The driver's config, with the password from wherever it came.
    pub(crate) fn config(&self) -> Result<tokio_postgres::Config, String> {
        let mut c: tokio_postgres::Config = self
            .url
            .expose()
            .parse()
            .map_err(|e| format!("storage.url: {e}"))?;
        if let Some(p) = &self.password {
            c.password(p.expose());
        }
        if c.get_connect_timeout().is_none() {
            c.connect_timeout(Duration::from_secs(5));
        }
        // A peer that vanishes without closing (a host down, a firewall
        // dropping packets) ends the connection in bounded time instead of
        // the kernel's two hours of keepalive silence or fifteen minutes of
        // retransmits: an idle connection is probed after 10 s (3 probes,
        // 5 s apart), and data unacknowledged for 30 s fails it. Either is
        // a connection error the pool drops and the leadership session
        // reports as cut off. (A URL's own `keepalives_idle` or
        // `tcp_user_timeout` wins.)
        if c.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
            c.keepalives_idle(Duration::from_secs(10));
            c.keepalives_interval(Duration::from_secs(5));
            c.keepalives_retries(3);
        }
        if c.get_tcp_user_timeout().is_none() {
            c.tcp_user_timeout(Duration::from_secs(30));
        }
        if c.get_application_name().is_none() {
            c.application_name("mailloop-coordinator");
        }
        Ok(c)
    }

    /// `postgres://user@host:port/db` for logs and `/readyz`: no password,
    /// no other parameter.
    pub fn describe(&self) -> String {
        let Ok(c) = self.config() else {
            return "postgres://(unparsable URL)".into();
        };
        let hosts: Vec<String> = c
            .get_hosts()
            .iter()
            .zip(c.get_ports().iter().chain(std::iter::repeat(&5432)))
            .map(|(h, p)| match h {
                tokio_postgres::config::Host::Tcp(h) => format!("{h}:{p}"),
                tokio_postgres::config::Host::Unix(path) => format!("{}:{p}", path.display()),
            })
            .collect();
        format!(
            "postgres://{}@{}/{}",
            c.get_user().unwrap_or(""),
            hosts.join(","),
            c.get_dbname().unwrap_or("")
        )
    }
}
