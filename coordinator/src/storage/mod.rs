//! Storage: every byte the coordinator keeps goes through [`Storage`].
//!
//! The embedded backend is SQLite (rusqlite, bundled, WAL). Its API is the
//! interface the rest of the coordinator sees — plain Rust types in, plain
//! Rust types out, no SQL or rusqlite type crosses it — so a server
//! database can later stand behind the same methods.
//!
//! Two paths, so reads never block ingest:
//! - **Writes** go to one dedicated writer thread over a bounded channel.
//!   It takes whatever is queued (up to [`MAX_BATCH`]), runs each job in its
//!   own savepoint inside one transaction, commits, and only then answers
//!   each sender through its oneshot: an `Ok` means the row is durable
//!   (`synchronous = FULL`). This is the ack-after-durable rule the agents'
//!   spools rely on.
//! - **Reads** run on a small pool of read-only connections through
//!   `spawn_blocking`; WAL lets them proceed while the writer commits.
//!
//! One file per thing stored inside the backend's folder (`sqlite/`):
//! reports, checks, agents, verdicts, incidents, aggregates, the audit log,
//! API tokens, and the schema's migrations; the types they take and give
//! are in [`model`].

mod model;
mod sqlite;

pub use model::*;
pub use sqlite::{MAX_BATCH, Storage};
