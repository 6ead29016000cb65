//! The PostgreSQL schema as numbered migrations, applied at start under an
//! advisory lock so that replicas starting together do not race: the first
//! applies what is missing, the others wait on the lock and find nothing to
//! do. A database whose schema is newer than this coordinator knows is
//! refused (an older replica must not write into a newer layout).

use super::super::model::StorageError;
use deadpool_postgres::Pool;

/// The advisory lock key of migrations ("mailloop" read as bytes; any
/// constant works as long as every replica uses the same).
pub(super) const MIGRATION_LOCK: i64 = 0x6d61_696c_6c6f_6f70;

/// (version, what, SQL). Append; never edit one that has shipped.
const MIGRATIONS: &[(i32, &str, &str)] = &[(
    1,
    "checks, agents, reports, verdicts, incidents, hourly aggregates, audit log, API tokens",
    "CREATE TABLE checks (
        id          TEXT PRIMARY KEY,
        name        TEXT NOT NULL,
        revision    BIGINT NOT NULL,
        check_json  TEXT NOT NULL,
        interval_ms BIGINT NOT NULL,
        regions     TEXT NOT NULL,
        source      TEXT NOT NULL,
        deleted     BOOLEAN NOT NULL DEFAULT FALSE,
        updated_at  BIGINT NOT NULL
    );
    CREATE TABLE agents (
        id           TEXT PRIMARY KEY,
        name         TEXT NOT NULL,
        region       TEXT NOT NULL,
        token_sha256 TEXT NOT NULL,
        source       TEXT NOT NULL,
        revoked      BOOLEAN NOT NULL DEFAULT FALSE,
        version      TEXT,
        last_seen    BIGINT,
        connected    BOOLEAN NOT NULL DEFAULT FALSE,
        created_at   BIGINT NOT NULL
    );
    CREATE TABLE reports (
        probe_id      TEXT PRIMARY KEY,
        check_id      TEXT NOT NULL,
        revision      BIGINT NOT NULL,
        region        TEXT NOT NULL,
        agent         TEXT NOT NULL,
        round         BIGINT NOT NULL,
        started_at    BIGINT NOT NULL,
        outcome       TEXT NOT NULL,
        rtt_ms        DOUBLE PRECISION,
        delivery_ms   DOUBLE PRECISION,
        failure_step  TEXT,
        failure_class TEXT,
        report_json   TEXT NOT NULL,
        received_at   BIGINT NOT NULL,
        request_id    TEXT,
        out_of_window TEXT
    );
    CREATE INDEX reports_by_check ON reports (check_id, started_at DESC, probe_id DESC);
    CREATE INDEX reports_by_round ON reports (check_id, round DESC);
    CREATE INDEX reports_by_age ON reports (received_at);
    CREATE INDEX reports_by_time ON reports (started_at DESC, probe_id DESC);
    CREATE INDEX reports_by_request ON reports (request_id) WHERE request_id IS NOT NULL;
    CREATE TABLE verdicts (
        check_id       TEXT NOT NULL,
        round          BIGINT NOT NULL,
        round_start_ms BIGINT NOT NULL,
        decided_at_ms  BIGINT NOT NULL,
        verdict        TEXT NOT NULL,
        evidence       TEXT NOT NULL,
        PRIMARY KEY (check_id, round)
    );
    CREATE INDEX verdicts_by_time ON verdicts (round_start_ms DESC, check_id DESC);
    CREATE INDEX verdicts_by_age ON verdicts (decided_at_ms);
    CREATE TABLE incidents (
        id             BIGSERIAL PRIMARY KEY,
        check_id       TEXT NOT NULL,
        kind           TEXT NOT NULL,
        key            TEXT NOT NULL,
        severity       TEXT NOT NULL,
        state          TEXT NOT NULL,
        opened_at_ms   BIGINT NOT NULL,
        acked_at_ms    BIGINT,
        acked_by       TEXT,
        resolved_at_ms BIGINT,
        first_round    BIGINT NOT NULL,
        last_round     BIGINT NOT NULL,
        summary        TEXT NOT NULL,
        regions        TEXT NOT NULL,
        step           TEXT,
        class          TEXT
    );
    CREATE UNIQUE INDEX incidents_one_active ON incidents (check_id, kind, key) WHERE state != 'resolved';
    CREATE INDEX incidents_by_check ON incidents (check_id, id DESC);
    CREATE TABLE incident_events (
        seq         BIGSERIAL PRIMARY KEY,
        incident_id BIGINT NOT NULL REFERENCES incidents (id),
        at_ms       BIGINT NOT NULL,
        round       BIGINT,
        event       TEXT NOT NULL,
        verdict     TEXT,
        note        TEXT NOT NULL
    );
    CREATE INDEX incident_events_by_incident ON incident_events (incident_id, seq);
    CREATE TABLE report_hours (
        check_id       TEXT NOT NULL,
        region         TEXT NOT NULL,
        hour           BIGINT NOT NULL,
        ok             BIGINT NOT NULL,
        degraded       BIGINT NOT NULL,
        failed         BIGINT NOT NULL,
        rtt_count      BIGINT NOT NULL,
        rtt_sum        DOUBLE PRECISION NOT NULL,
        rtt_min        DOUBLE PRECISION,
        rtt_max        DOUBLE PRECISION,
        rtt_buckets    BIGINT[] NOT NULL,
        delivery_count BIGINT NOT NULL,
        delivery_sum   DOUBLE PRECISION NOT NULL,
        delivery_min   DOUBLE PRECISION,
        delivery_max   DOUBLE PRECISION,
        PRIMARY KEY (check_id, region, hour)
    );
    CREATE INDEX report_hours_by_hour ON report_hours (hour);
    CREATE TABLE audit_log (
        seq       BIGSERIAL PRIMARY KEY,
        at_ms     BIGINT NOT NULL,
        actor     TEXT NOT NULL,
        role      TEXT NOT NULL,
        source    TEXT,
        action    TEXT NOT NULL,
        object    TEXT NOT NULL,
        object_id TEXT NOT NULL,
        detail    TEXT
    );
    CREATE INDEX audit_log_by_age ON audit_log (at_ms);
    CREATE TABLE api_tokens (
        name         TEXT PRIMARY KEY,
        role         TEXT NOT NULL,
        token_sha256 TEXT NOT NULL,
        created_at   BIGINT NOT NULL,
        created_by   TEXT NOT NULL,
        revoked_at   BIGINT
    );",
),
(
    2,
    "join tokens (agent enrollment)",
    "CREATE TABLE join_tokens (
        token_sha256       TEXT PRIMARY KEY,
        agent              TEXT NOT NULL,
        agent_token_sha256 TEXT NOT NULL,
        created_at         BIGINT NOT NULL,
        expires_at         BIGINT NOT NULL,
        used_at            BIGINT
    );
    CREATE INDEX join_tokens_by_expiry ON join_tokens (expires_at);",
), (
    3,
    "agent presence: which replica each connected agent talks to, with heartbeats",
    "CREATE TABLE agent_presence (
        agent         TEXT NOT NULL,
        replica       TEXT NOT NULL,
        sessions      INTEGER NOT NULL,
        heartbeat_at  BIGINT NOT NULL,
        last_seen     BIGINT,
        spooled       BIGINT,
        clock_skew_ms BIGINT,
        PRIMARY KEY (agent, replica)
    );
    CREATE INDEX agent_presence_by_heartbeat ON agent_presence (heartbeat_at);",
), (
    4,
    "alert outbox: each incident transition's alert, recorded with it, until delivered",
    "CREATE TABLE alert_outbox (
        incident_id   BIGINT NOT NULL,
        event         TEXT NOT NULL,
        at_ms         BIGINT NOT NULL,
        incident_json TEXT NOT NULL,
        created_at    BIGINT NOT NULL,
        delivered_at  BIGINT,
        PRIMARY KEY (incident_id, event)
    );
    CREATE INDEX alert_outbox_undelivered ON alert_outbox (created_at) WHERE delivered_at IS NULL;",
), (
    5,
    "token rotation: the replaced agent token and the end of its grace period",
    "ALTER TABLE agents ADD COLUMN previous_token_sha256 TEXT;
    ALTER TABLE agents ADD COLUMN previous_token_until BIGINT;",
), (
    6,
    "token rotation: whether the agent has called with its current token",
    "ALTER TABLE agents ADD COLUMN token_in_use BOOLEAN NOT NULL DEFAULT FALSE;",
), (
    7,
    "status page: verdicts by check and round start, covering the day and hour counts",
    // Lets `verdict_counts` count from the index alone (an index-only scan)
    // instead of reading each verdict row with its evidence.
    "CREATE INDEX verdicts_by_check_time ON verdicts (check_id, round_start_ms, verdict);",
), (
    8,
    "status page: rounds per verdict kind, check and UTC day, kept as verdicts are stored",
    // As SQLite's migration 9: `store_round` adds each new verdict to its
    // day in the same transaction; the days already stored are counted once.
    "CREATE TABLE verdict_days (
        check_id TEXT NOT NULL,
        day_ms   BIGINT NOT NULL,
        up       BIGINT NOT NULL DEFAULT 0,
        degraded BIGINT NOT NULL DEFAULT 0,
        deferred BIGINT NOT NULL DEFAULT 0,
        transit  BIGINT NOT NULL DEFAULT 0,
        down     BIGINT NOT NULL DEFAULT 0,
        unknown  BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (check_id, day_ms)
    );
    INSERT INTO verdict_days (check_id, day_ms, up, degraded, deferred, transit, down, unknown)
        SELECT check_id, (round_start_ms / 86400000) * 86400000,
            COUNT(*) FILTER (WHERE verdict = 'up'), COUNT(*) FILTER (WHERE verdict = 'degraded'),
            COUNT(*) FILTER (WHERE verdict = 'deferred'), COUNT(*) FILTER (WHERE verdict = 'transit'),
            COUNT(*) FILTER (WHERE verdict = 'down'), COUNT(*) FILTER (WHERE verdict = 'unknown')
        FROM verdicts GROUP BY 1, 2;",
), (
    9,
    "console sessions: kept in the database (hashes only), shared by every replica",
    "CREATE TABLE console_sessions (
        id_sha256    TEXT PRIMARY KEY,
        token_name   TEXT NOT NULL,
        token_sha256 TEXT NOT NULL,
        role         TEXT NOT NULL,
        created_at   BIGINT NOT NULL,
        expires_at   BIGINT NOT NULL
    );
    CREATE INDEX console_sessions_by_expiry ON console_sessions (expires_at);",
), (
    10,
    "alert delivery log: every attempt to deliver an alert, with its result",
    "CREATE TABLE alert_attempts (
        seq          BIGSERIAL PRIMARY KEY,
        at_ms        BIGINT NOT NULL,
        channel      TEXT NOT NULL,
        channel_type TEXT NOT NULL,
        incident_id  BIGINT NOT NULL,
        check_id     TEXT NOT NULL,
        event        TEXT NOT NULL,
        attempt      BIGINT NOT NULL,
        attempts     BIGINT NOT NULL,
        result       TEXT NOT NULL,
        class        TEXT,
        code         BIGINT,
        detail       TEXT
    );
    CREATE INDEX alert_attempts_by_age ON alert_attempts (at_ms);
    CREATE INDEX alert_attempts_by_channel ON alert_attempts (channel, seq);
    CREATE INDEX alert_attempts_by_incident ON alert_attempts (incident_id, seq);",
), (
    11,
    "hourly aggregates: a histogram of delivery times (the status page's p50/p95)",
    "ALTER TABLE report_hours ADD COLUMN delivery_buckets BIGINT[] NOT NULL DEFAULT '{}';",
)];

/// The schema version this coordinator writes.
pub(crate) fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

/// Applies the migrations the database has not had yet, holding the
/// advisory lock on one connection throughout. Returns (found, now).
pub(super) async fn run(pool: &Pool) -> Result<(i32, i32), StorageError> {
    let mut client = pool.get().await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = apply(&mut client).await;
    // Unlocked either way; a dropped connection would release it too.
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    let found = result?;
    unlock?;
    Ok(found)
}

async fn apply(client: &mut deadpool_postgres::Object) -> Result<(i32, i32), StorageError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS mailloop_schema (
                version    INTEGER PRIMARY KEY,
                what       TEXT NOT NULL,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )",
        )
        .await?;
    let found: i32 = client
        .query_one("SELECT COALESCE(MAX(version), 0) FROM mailloop_schema", &[])
        .await?
        .get(0);
    if found > latest() {
        return Err(StorageError::NewerSchema {
            found: found as i64,
            known: latest() as i64,
        });
    }
    let mut version = found;
    for (number, what, sql) in MIGRATIONS {
        if *number <= version {
            continue;
        }
        let tx = client.transaction().await?;
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO mailloop_schema (version, what) VALUES ($1, $2)",
            &[number, what],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(
            migration = number,
            what,
            "storage: PostgreSQL schema migrated"
        );
        version = *number;
    }
    Ok((found, version))
}
