//! Types every side of mailloop shares.
//!
//! The agent produces [`ProbeReport`]s, the coordinator (later) stores and
//! compares them, and every output format renders them. Keeping the model,
//! the step names and the failure classification here means the wire names
//! (`smtp.starttls`, `imap.wait`, `rate_limited`, ...) are spelled in exactly
//! one place.

pub mod alignment;
pub mod auth_results;
pub mod classify;
pub mod config;
pub mod join;
pub mod received;
pub mod report;
pub mod reputation;
pub mod secret;
pub mod spam;
pub mod step;
#[cfg(feature = "otlp")]
pub mod telemetry;

pub use classify::{FailureClass, SmtpReplyCode};
pub use report::{AlignmentReport, Attempt, AuthReport, Failure, Outcome, ProbeReport, SpfBudget, StepReport, TlsCert};
pub use secret::Secret;
pub use step::StepName;
