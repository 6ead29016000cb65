//! The SQLite schema: the version-1 tables (created if missing, with the
//! in-place `request_id` and aggregate upgrades) and the numbered migrations.

use super::aggregates::open_aggregates;
use rusqlite::Connection;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS checks (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    revision    INTEGER NOT NULL,
    check_json  TEXT NOT NULL,
    interval_ms INTEGER NOT NULL,
    regions     TEXT NOT NULL,
    source      TEXT NOT NULL,
    deleted     INTEGER NOT NULL DEFAULT 0,
    updated_at  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS agents (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    region       TEXT NOT NULL,
    token_sha256 TEXT NOT NULL,
    source       TEXT NOT NULL,
    revoked      INTEGER NOT NULL DEFAULT 0,
    version      TEXT,
    last_seen    INTEGER,
    connected    INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS reports (
    probe_id      TEXT PRIMARY KEY,
    check_id      TEXT NOT NULL,
    revision      INTEGER NOT NULL,
    region        TEXT NOT NULL,
    agent         TEXT NOT NULL,
    round         INTEGER NOT NULL,
    started_at    INTEGER NOT NULL,
    outcome       TEXT NOT NULL,
    rtt_ms        REAL,
    delivery_ms   REAL,
    failure_step  TEXT,
    failure_class TEXT,
    report_json   TEXT NOT NULL,
    received_at   INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS reports_by_check ON reports (check_id, started_at DESC, probe_id DESC);
CREATE INDEX IF NOT EXISTS reports_by_round ON reports (check_id, round DESC);
CREATE INDEX IF NOT EXISTS reports_by_age ON reports (received_at);
CREATE INDEX IF NOT EXISTS reports_by_time ON reports (started_at DESC, probe_id DESC);
";

pub(super) const JUDGE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS verdicts (
    check_id       TEXT NOT NULL,
    round          INTEGER NOT NULL,
    round_start_ms INTEGER NOT NULL,
    decided_at_ms  INTEGER NOT NULL,
    verdict        TEXT NOT NULL,
    evidence       TEXT NOT NULL,
    PRIMARY KEY (check_id, round)
);
CREATE INDEX IF NOT EXISTS verdicts_by_time ON verdicts (round_start_ms DESC, check_id DESC);
CREATE INDEX IF NOT EXISTS verdicts_by_age ON verdicts (decided_at_ms);
CREATE TABLE IF NOT EXISTS incidents (
    id            INTEGER PRIMARY KEY,
    check_id      TEXT NOT NULL,
    kind          TEXT NOT NULL,
    key           TEXT NOT NULL,
    severity      TEXT NOT NULL,
    state         TEXT NOT NULL,
    opened_at_ms  INTEGER NOT NULL,
    acked_at_ms   INTEGER,
    acked_by      TEXT,
    resolved_at_ms INTEGER,
    first_round   INTEGER NOT NULL,
    last_round    INTEGER NOT NULL,
    summary       TEXT NOT NULL,
    regions       TEXT NOT NULL,
    step          TEXT,
    class         TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS incidents_one_active
    ON incidents (check_id, kind, key) WHERE state != 'resolved';
CREATE INDEX IF NOT EXISTS incidents_by_check ON incidents (check_id, id DESC);
CREATE TABLE IF NOT EXISTS incident_events (
    seq         INTEGER PRIMARY KEY,
    incident_id INTEGER NOT NULL REFERENCES incidents (id),
    at_ms       INTEGER NOT NULL,
    round       INTEGER,
    event       TEXT NOT NULL,
    verdict     TEXT,
    note        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS incident_events_by_incident ON incident_events (incident_id, seq);
";

// ────────────── Numbered migrations; the audit log; API tokens ──────────────
//
// Version 1 is everything above (tables created with IF NOT EXISTS, and
// the in-place `request_id` and aggregate upgrades), which every database
// has once opened. Later schema changes are numbered: each runs once, in
// order, in its own transaction, which also sets `PRAGMA user_version`, so
// a crash mid-migration leaves the database at the previous version. Append
// new ones; never edit one that has shipped.

pub(super) const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        2,
        "audit log",
        "CREATE TABLE audit_log (
        seq       INTEGER PRIMARY KEY,
        at_ms     INTEGER NOT NULL,
        actor     TEXT NOT NULL,
        role      TEXT NOT NULL,
        source    TEXT,
        action    TEXT NOT NULL,
        object    TEXT NOT NULL,
        object_id TEXT NOT NULL,
        detail    TEXT
    );
    CREATE INDEX audit_log_by_age ON audit_log (at_ms);",
    ),
    (
        3,
        "API tokens",
        "CREATE TABLE api_tokens (
        name         TEXT PRIMARY KEY,
        role         TEXT NOT NULL,
        token_sha256 TEXT NOT NULL,
        created_at   INTEGER NOT NULL,
        created_by   TEXT NOT NULL,
        revoked_at   INTEGER
    );",
    ),
    (
        4,
        "round sanity: reports of a round far from the coordinator's clock",
        "ALTER TABLE reports ADD COLUMN out_of_window TEXT;",
    ),
    (
        5,
        "join tokens (agent enrollment)",
        "CREATE TABLE join_tokens (
        token_sha256       TEXT PRIMARY KEY,
        agent              TEXT NOT NULL,
        agent_token_sha256 TEXT NOT NULL,
        created_at         INTEGER NOT NULL,
        expires_at         INTEGER NOT NULL,
        used_at            INTEGER
    );
    CREATE INDEX join_tokens_by_expiry ON join_tokens (expires_at);",
    ),
    (
        6,
        "token rotation: the replaced agent token and the end of its grace period",
        "ALTER TABLE agents ADD COLUMN previous_token_sha256 TEXT;
    ALTER TABLE agents ADD COLUMN previous_token_until INTEGER;",
    ),
    (
        7,
        "token rotation: whether the agent has called with its current token",
        "ALTER TABLE agents ADD COLUMN token_in_use INTEGER NOT NULL DEFAULT 0;",
    ),
    (
        8,
        "status page: verdicts by check and round start, covering the day and hour counts",
        // Without it `verdict_counts` reads every verdict row of each check
        // through the primary key, evidence and all (90 days of 100 checks:
        // hundreds of MB per status page build).
        "CREATE INDEX verdicts_by_check_time ON verdicts (check_id, round_start_ms, verdict);",
    ),
    (
        9,
        "status page: rounds per verdict kind, check and UTC day, kept as verdicts are stored",
        // `store_round` adds each new verdict to its day in the same
        // transaction, so the 90-day bar and windows read 9,000 small rows
        // (100 checks) instead of counting every verdict; the days already
        // stored are counted once here.
        "CREATE TABLE verdict_days (
        check_id TEXT NOT NULL,
        day_ms   INTEGER NOT NULL,
        up       INTEGER NOT NULL DEFAULT 0,
        degraded INTEGER NOT NULL DEFAULT 0,
        deferred INTEGER NOT NULL DEFAULT 0,
        transit  INTEGER NOT NULL DEFAULT 0,
        down     INTEGER NOT NULL DEFAULT 0,
        unknown  INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (check_id, day_ms)
    ) WITHOUT ROWID;
    INSERT INTO verdict_days (check_id, day_ms, up, degraded, deferred, transit, down, unknown)
        SELECT check_id, (round_start_ms / 86400000) * 86400000,
            SUM(verdict = 'up'), SUM(verdict = 'degraded'), SUM(verdict = 'deferred'),
            SUM(verdict = 'transit'), SUM(verdict = 'down'), SUM(verdict = 'unknown')
        FROM verdicts GROUP BY 1, 2;",
    ),
    (
        10,
        "console sessions: kept in the database (hashes only), so a restart signs nobody out",
        "CREATE TABLE console_sessions (
        id_sha256    TEXT PRIMARY KEY,
        token_name   TEXT NOT NULL,
        token_sha256 TEXT NOT NULL,
        role         TEXT NOT NULL,
        created_at   INTEGER NOT NULL,
        expires_at   INTEGER NOT NULL
    );
    CREATE INDEX console_sessions_by_expiry ON console_sessions (expires_at);",
    ),
    (
        11,
        "alert delivery log: every attempt to deliver an alert, with its result",
        "CREATE TABLE alert_attempts (
        seq          INTEGER PRIMARY KEY,
        at_ms        INTEGER NOT NULL,
        channel      TEXT NOT NULL,
        channel_type TEXT NOT NULL,
        incident_id  INTEGER NOT NULL,
        check_id     TEXT NOT NULL,
        event        TEXT NOT NULL,
        attempt      INTEGER NOT NULL,
        attempts     INTEGER NOT NULL,
        result       TEXT NOT NULL,
        class        TEXT,
        code         INTEGER,
        detail       TEXT
    );
    CREATE INDEX alert_attempts_by_age ON alert_attempts (at_ms);
    CREATE INDEX alert_attempts_by_channel ON alert_attempts (channel, seq);
    CREATE INDEX alert_attempts_by_incident ON alert_attempts (incident_id, seq);",
    ),
];

/// Applies the numbered migrations this database has not had yet.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let mut version = found.max(1);
    for (number, what, sql) in MIGRATIONS {
        if *number <= version {
            continue;
        }
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", number)?;
        tx.commit()?;
        tracing::debug!(migration = number, what, "storage: schema migrated");
        version = *number;
    }
    if found < version {
        conn.pragma_update(None, "user_version", version)?;
    }
    Ok(())
}

/// Adds `reports.request_id` and its index if the database predates them.
fn migrate_request_ids(conn: &Connection) -> rusqlite::Result<()> {
    let present: i64 = conn.query_row(
        "SELECT COUNT(*) FROM pragma_table_info('reports') WHERE name = 'request_id'",
        [],
        |r| r.get(0),
    )?;
    if present == 0 {
        conn.execute_batch("ALTER TABLE reports ADD COLUMN request_id TEXT")?;
        // A fresh database takes the same path (the base schema predates the
        // column); only say so when there were reports to migrate.
        let had_reports: bool =
            conn.query_row("SELECT EXISTS (SELECT 1 FROM reports)", [], |r| r.get(0))?;
        if had_reports {
            tracing::info!(
                "storage: added reports.request_id (on-demand runs) to an existing database"
            );
        }
    }
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS reports_by_request ON reports (request_id) WHERE request_id IS NOT NULL",
    )
}

/// The schema version this build writes (`PRAGMA user_version`).
pub fn schema_version() -> i64 {
    MIGRATIONS.last().map_or(1, |m| m.0)
}

/// The version a database file says it has (0: new).
pub(super) fn found_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

/// Brings a freshly opened database's schema up to date.
pub(super) fn apply(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(SCHEMA)?;
    open_aggregates(conn)?;
    conn.execute_batch(JUDGE_SCHEMA)?;
    migrate_request_ids(conn)?;
    migrate(conn)
}
