//! `mailloop-coordinator migrate-data`: moves a SQLite installation into a
//! PostgreSQL database, history and all: checks, agents (tokens and
//! rotation state), reports, verdicts and their day counts, hourly aggregates, incidents with
//! their timelines (open ones stay open, with their notes), the audit log,
//! the alert delivery log, API and join tokens.
//!
//! One PostgreSQL transaction: the copy commits whole or not at all, so a
//! run that fails (or is killed) leaves the target as it was and is simply
//! run again. The SQLite side is read in one read transaction (a snapshot,
//! even if a coordinator is still writing). A target that holds any row is
//! refused unless `replace` (then its tables are emptied in the same
//! transaction). Rows are counted on both sides before the commit; a
//! mismatch rolls back.
//!
//! Alert state: an incident's state moves as it is. SQLite keeps no alert
//! outbox (one process), so every transition already made counts as
//! delivered: switching backends pages nobody again. Agent presence is not
//! copied (the replicas publish it as agents connect).

use super::model::{StorageError, DB_FILE};
use super::postgres::Postgres;
use super::settings::PgSettings;
use super::sqlite::Sqlite;
use rusqlite::types::Value;
use std::path::{Path, PathBuf};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

/// How a column is written into PostgreSQL.
#[derive(Clone, Copy)]
enum Col {
    Int,
    Bool,
    Float,
    Text,
    /// SQLite's comma-separated counts, PostgreSQL's BIGINT[].
    IntList,
}

use Col::{Bool, Float, Int, IntList, Text};

struct Table {
    name: &'static str,
    columns: &'static [(&'static str, Col)],
    /// The BIGSERIAL column whose sequence must continue after the copied ids.
    serial: Option<&'static str>,
}

/// Every table copied, parents before children (incident events name their incident).
const TABLES: &[Table] = &[
    Table {
        name: "checks",
        columns: &[
            ("id", Text),
            ("name", Text),
            ("revision", Int),
            ("check_json", Text),
            ("interval_ms", Int),
            ("regions", Text),
            ("source", Text),
            ("deleted", Bool),
            ("updated_at", Int),
        ],
        serial: None,
    },
    Table {
        name: "agents",
        columns: &[
            ("id", Text),
            ("name", Text),
            ("region", Text),
            ("token_sha256", Text),
            ("source", Text),
            ("revoked", Bool),
            ("version", Text),
            ("last_seen", Int),
            ("connected", Bool),
            ("created_at", Int),
            ("previous_token_sha256", Text),
            ("previous_token_until", Int),
            ("token_in_use", Bool),
        ],
        serial: None,
    },
    Table {
        name: "reports",
        columns: &[
            ("probe_id", Text),
            ("check_id", Text),
            ("revision", Int),
            ("region", Text),
            ("agent", Text),
            ("round", Int),
            ("started_at", Int),
            ("outcome", Text),
            ("rtt_ms", Float),
            ("delivery_ms", Float),
            ("failure_step", Text),
            ("failure_class", Text),
            ("report_json", Text),
            ("received_at", Int),
            ("request_id", Text),
            ("out_of_window", Text),
        ],
        serial: None,
    },
    Table {
        name: "verdicts",
        columns: &[
            ("check_id", Text),
            ("round", Int),
            ("round_start_ms", Int),
            ("decided_at_ms", Int),
            ("verdict", Text),
            ("evidence", Text),
        ],
        serial: None,
    },
    Table {
        name: "verdict_days",
        columns: &[
            ("check_id", Text),
            ("day_ms", Int),
            ("up", Int),
            ("degraded", Int),
            ("deferred", Int),
            ("transit", Int),
            ("down", Int),
            ("unknown", Int),
        ],
        serial: None,
    },
    Table {
        name: "report_hours",
        columns: &[
            ("check_id", Text),
            ("region", Text),
            ("hour", Int),
            ("ok", Int),
            ("degraded", Int),
            ("failed", Int),
            ("rtt_count", Int),
            ("rtt_sum", Float),
            ("rtt_min", Float),
            ("rtt_max", Float),
            ("rtt_buckets", IntList),
            ("delivery_count", Int),
            ("delivery_sum", Float),
            ("delivery_min", Float),
            ("delivery_max", Float),
            ("delivery_buckets", IntList),
        ],
        serial: None,
    },
    Table {
        name: "incidents",
        columns: &[
            ("id", Int),
            ("check_id", Text),
            ("kind", Text),
            ("key", Text),
            ("severity", Text),
            ("state", Text),
            ("opened_at_ms", Int),
            ("acked_at_ms", Int),
            ("acked_by", Text),
            ("resolved_at_ms", Int),
            ("first_round", Int),
            ("last_round", Int),
            ("summary", Text),
            ("regions", Text),
            ("step", Text),
            ("class", Text),
        ],
        serial: Some("id"),
    },
    Table {
        name: "incident_events",
        columns: &[
            ("seq", Int),
            ("incident_id", Int),
            ("at_ms", Int),
            ("round", Int),
            ("event", Text),
            ("verdict", Text),
            ("note", Text),
        ],
        serial: Some("seq"),
    },
    Table {
        name: "audit_log",
        columns: &[
            ("seq", Int),
            ("at_ms", Int),
            ("actor", Text),
            ("role", Text),
            ("source", Text),
            ("action", Text),
            ("object", Text),
            ("object_id", Text),
            ("detail", Text),
        ],
        serial: Some("seq"),
    },
    Table {
        name: "alert_attempts",
        columns: &[
            ("seq", Int),
            ("at_ms", Int),
            ("channel", Text),
            ("channel_type", Text),
            ("incident_id", Int),
            ("check_id", Text),
            ("event", Text),
            ("attempt", Int),
            ("attempts", Int),
            ("result", Text),
            ("class", Text),
            ("code", Int),
            ("detail", Text),
        ],
        serial: Some("seq"),
    },
    Table {
        name: "api_tokens",
        columns: &[
            ("name", Text),
            ("role", Text),
            ("token_sha256", Text),
            ("created_at", Int),
            ("created_by", Text),
            ("revoked_at", Int),
        ],
        serial: None,
    },
    Table {
        name: "join_tokens",
        columns: &[
            ("token_sha256", Text),
            ("agent", Text),
            ("agent_token_sha256", Text),
            ("created_at", Int),
            ("expires_at", Int),
            ("used_at", Int),
        ],
        serial: None,
    },
];

/// Tables of the target emptied by `replace` besides [`TABLES`]: state that
/// belongs to the installation being replaced.
/// Console sessions are not moved: their users sign in again.
const ALSO_EMPTIED: &[&str] = &["agent_presence", "alert_outbox", "console_sessions"];

/// What was moved: (table, rows), in copy order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transferred {
    pub source: PathBuf,
    pub target: String,
    pub tables: Vec<(&'static str, u64)>,
}

/// The SQLite file a `sqlite:PATH` names: the file itself, or
/// `PATH/coordinator.db` when PATH is the data directory. It must exist:
/// a typo must not migrate an empty new database.
pub fn sqlite_file(path: &Path) -> Result<PathBuf, StorageError> {
    let file = if path.is_dir() {
        path.join(DB_FILE)
    } else {
        path.to_path_buf()
    };
    if !file.is_file() {
        return Err(StorageError::Refused(format!(
            "{}: no SQLite database there (give the data directory or its {DB_FILE})",
            file.display()
        )));
    }
    Ok(file)
}

/// Copies the SQLite database `from` (a file, see [`sqlite_file`]) into
/// the PostgreSQL database `to` in one transaction, after bringing both
/// schemas up to date.
pub async fn sqlite_to_postgres(
    from: &Path,
    to: &PgSettings,
    replace: bool,
) -> Result<Transferred, StorageError> {
    let file = sqlite_file(from)?;
    // Opening migrates an older file to this build's schema (what starting
    // the coordinator on it would do) and refuses a newer one.
    let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    if file.file_name().and_then(|n| n.to_str()) == Some(DB_FILE) {
        let db = Sqlite::open(&dir)?;
        db.close().await;
    }
    let source =
        rusqlite::Connection::open_with_flags(&file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| StorageError::Open {
                path: file.clone(),
                source: e,
            })?;
    source.busy_timeout(std::time::Duration::from_secs(30))?;
    let found: i64 = source.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found != super::sqlite::schema_version() {
        return Err(StorageError::Refused(format!(
            "{}: SQLite schema version {found}, this build copies version {} (start this coordinator on it once)",
            file.display(),
            super::sqlite::schema_version()
        )));
    }
    // One snapshot of the source for counting and copying.
    source.execute_batch("BEGIN")?;

    let target = Postgres::connect(to).await?;
    let result = copy(&source, &target, replace).await;
    target.close().await;
    let _ = source.execute_batch("COMMIT");
    Ok(Transferred {
        source: file,
        target: to.describe(),
        tables: result?,
    })
}

async fn copy(
    source: &rusqlite::Connection,
    target: &Postgres,
    replace: bool,
) -> Result<Vec<(&'static str, u64)>, StorageError> {
    let mut client = target.client_for_import().await?;
    let tx = client.transaction().await?;
    // Two imports into one database at once would both see it empty.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&IMPORT_LOCK])
        .await?;
    let mut nonempty = Vec::new();
    for t in TABLES
        .iter()
        .map(|t| t.name)
        .chain(ALSO_EMPTIED.iter().copied())
    {
        let n: i64 = tx
            .query_one(&format!("SELECT COUNT(*) FROM {t}"), &[])
            .await?
            .get(0);
        if n > 0 {
            nonempty.push(format!("{t}: {n}"));
        }
    }
    if !nonempty.is_empty() {
        if !replace {
            return Err(StorageError::Refused(format!(
                "the target database is not empty ({}); give --replace to empty it first (in the same transaction)",
                nonempty.join(", ")
            )));
        }
        let all: Vec<&str> = TABLES
            .iter()
            .map(|t| t.name)
            .chain(ALSO_EMPTIED.iter().copied())
            .collect();
        tx.batch_execute(&format!("TRUNCATE {} RESTART IDENTITY", all.join(", ")))
            .await?;
    }

    let mut counts = Vec::new();
    for table in TABLES {
        let names: Vec<&str> = table.columns.iter().map(|c| c.0).collect();
        let order = table
            .serial
            .map(|c| format!(" ORDER BY {c}"))
            .unwrap_or_default();
        let expected: i64 =
            source.query_row(&format!("SELECT COUNT(*) FROM {}", table.name), [], |r| {
                r.get(0)
            })?;
        let types: Vec<Type> = table
            .columns
            .iter()
            .map(|(_, c)| match c {
                Int => Type::INT8,
                Bool => Type::BOOL,
                Float => Type::FLOAT8,
                Text => Type::TEXT,
                IntList => Type::INT8_ARRAY,
            })
            .collect();
        let sink = tx
            .copy_in(&format!(
                "COPY {} ({}) FROM STDIN BINARY",
                table.name,
                names.join(", ")
            ))
            .await?;
        let writer = BinaryCopyInWriter::new(sink, &types);
        let mut writer = std::pin::pin!(writer);
        let mut stmt = source.prepare(&format!(
            "SELECT {} FROM {}{order}",
            names.join(", "),
            table.name
        ))?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let mut values: Vec<Box<dyn ToSql + Sync + Send>> =
                Vec::with_capacity(table.columns.len());
            for (i, (name, col)) in table.columns.iter().enumerate() {
                values.push(
                    convert(row.get::<_, Value>(i)?, *col).map_err(|e| {
                        StorageError::Corrupt(format!("{}.{name}: {e}", table.name))
                    })?,
                );
            }
            let refs: Vec<&(dyn ToSql + Sync)> = values
                .iter()
                .map(|v| v.as_ref() as &(dyn ToSql + Sync))
                .collect();
            writer.as_mut().write(&refs).await?;
        }
        let written = writer.finish().await?;
        let stored: i64 = tx
            .query_one(&format!("SELECT COUNT(*) FROM {}", table.name), &[])
            .await?
            .get(0);
        if written as i64 != expected || stored != expected {
            return Err(StorageError::Refused(format!(
                "{}: {expected} rows in SQLite, {written} copied, {stored} in PostgreSQL",
                table.name
            )));
        }
        if let Some(col) = table.serial {
            // New incidents, events and audit entries continue after the copied ids.
            tx.execute(
                &format!(
                    "SELECT setval(pg_get_serial_sequence('{0}', '{col}'), COALESCE(MAX({col}), 1), MAX({col}) IS NOT NULL) FROM {0}",
                    table.name
                ),
                &[],
            )
            .await?;
        }
        counts.push((table.name, expected as u64));
    }
    // Nobody is connected until agents connect to a replica.
    tx.execute("UPDATE agents SET connected = FALSE", &[])
        .await?;
    tx.commit().await?;
    Ok(counts)
}

/// The advisory lock key of an import (distinct from the migrations' and the leader's).
const IMPORT_LOCK: i64 = 0x6d61_696c_696d_7074;

fn convert(v: Value, col: Col) -> Result<Box<dyn ToSql + Sync + Send>, String> {
    Ok(match (col, v) {
        (Int, Value::Null) => Box::new(None::<i64>),
        (Int, Value::Integer(i)) => Box::new(i),
        (Bool, Value::Null) => Box::new(None::<bool>),
        (Bool, Value::Integer(i)) => Box::new(i != 0),
        (Float, Value::Null) => Box::new(None::<f64>),
        (Float, Value::Real(f)) => Box::new(f),
        (Float, Value::Integer(i)) => Box::new(i as f64),
        (Text, Value::Null) => Box::new(None::<String>),
        (Text, Value::Text(s)) => Box::new(s),
        (Text, Value::Integer(i)) => Box::new(i.to_string()),
        (Text, Value::Real(f)) => Box::new(f.to_string()),
        (IntList, Value::Text(s)) => Box::new(
            s.split(',')
                .filter(|p| !p.is_empty())
                .map(|p| p.trim().parse::<i64>().map_err(|e| format!("{p:?}: {e}")))
                .collect::<Result<Vec<i64>, String>>()?,
        ),
        (_, other) => return Err(format!("unexpected value {other:?}")),
    })
}
