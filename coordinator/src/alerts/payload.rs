//! What each channel type sends, built from an [`AlertEvent`]: pure
//! functions, no I/O, so every payload is tested without a network.

use crate::judge::model::{AlertEvent, AlertEventKind, Incident, Severity};
use serde_json::{Value, json};

/// PagerDuty caps `payload.summary` at 1024 characters.
const PAGERDUTY_SUMMARY_MAX: usize = 1024;

/// Milliseconds since the epoch as RFC 3339 UTC (`2026-11-28T01:02:03.456Z`).
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn severity_str(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "critical",
        Severity::Warning => "warning",
        Severity::Info => "info",
    }
}

/// `OUTAGE opened`: the kind in capitals, then the event.
pub fn headline(event: &AlertEvent) -> String {
    format!(
        "{} {}",
        event.incident.kind.as_str().to_ascii_uppercase(),
        event.event.as_str()
    )
}

/// The generic webhook body: `{"version":1,"event","at","incident"}`.
pub fn webhook(event: &AlertEvent) -> Value {
    json!({
        "version": 1,
        "event": event.event.as_str(),
        "at": rfc3339(event.at_ms),
        "incident": event.incident,
    })
}

/// A Slack-compatible incoming-webhook body: one `text` line (what shows
/// in notifications) and a section block with regions and step.
pub fn slack(event: &AlertEvent) -> Value {
    let i = &event.incident;
    let text = format!(
        "[{}] check {}: {}",
        headline(event),
        i.check_id,
        one_line(&i.summary)
    );
    let mut fields = vec![
        json!({"type": "mrkdwn", "text": format!("*Severity*\n{}", severity_str(i.severity))}),
        json!({"type": "mrkdwn", "text": format!("*Incident*\n#{}", i.id)}),
    ];
    if !i.regions.is_empty() {
        fields.push(
            json!({"type": "mrkdwn", "text": format!("*Regions*\n{}", i.regions.join(", "))}),
        );
    }
    if let Some(step) = &i.step {
        let class = i
            .class
            .as_deref()
            .map(|c| format!(" ({c})"))
            .unwrap_or_default();
        fields.push(json!({"type": "mrkdwn", "text": format!("*Step*\n{step}{class}")}));
    }
    json!({
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "section", "fields": fields},
        ],
    })
}

/// `mailloop-<check>-<kind>-<incident id>`: one PagerDuty alert per incident,
/// so acknowledge and resolve reach the alert that trigger opened.
pub fn pagerduty_dedup_key(i: &Incident) -> String {
    format!("mailloop-{}-{}-{}", i.check_id, i.kind.as_str(), i.id)
}

/// A PagerDuty Events API v2 body. The payload goes with every action:
/// PagerDuty requires it on `trigger` and ignores it otherwise.
pub fn pagerduty(event: &AlertEvent, routing_key: &str) -> Value {
    let i = &event.incident;
    let action = match event.event {
        AlertEventKind::Opened => "trigger",
        AlertEventKind::Acknowledged => "acknowledge",
        AlertEventKind::Resolved => "resolve",
    };
    let mut payload = json!({
        "summary": truncate(&format!("[{}] {}: {}", headline(event), i.check_id, one_line(&i.summary)), PAGERDUTY_SUMMARY_MAX),
        "source": i.check_id,
        "severity": severity_str(i.severity),
        "timestamp": rfc3339(event.at_ms),
        "custom_details": i,
    });
    if let Some(step) = &i.step {
        payload["component"] = json!(step);
    }
    if !i.regions.is_empty() {
        payload["group"] = json!(i.regions.join(","));
    }
    if let Some(class) = &i.class {
        payload["class"] = json!(class);
    }
    json!({
        "routing_key": routing_key,
        "event_action": action,
        "dedup_key": pagerduty_dedup_key(i),
        "payload": payload,
    })
}

/// `[mailloop] OUTAGE opened: corp`.
pub fn email_subject(event: &AlertEvent) -> String {
    format!(
        "[mailloop] {}: {}",
        headline(event),
        event.incident.check_id
    )
}

/// The plain-text email body: summary first (what a phone preview shows),
/// then the facts and the timeline.
pub fn email_body(event: &AlertEvent) -> String {
    let i = &event.incident;
    let mut out = format!(
        "{} for check {} ({}).\n\n{}\n\n",
        headline(event),
        i.check_id,
        severity_str(i.severity),
        i.summary.trim()
    );
    let mut fact = |k: &str, v: &str| out.push_str(&format!("{k:<10} {v}\n"));
    fact(
        "Incident:",
        &format!("#{} ({:?})", i.id, i.state).to_lowercase(),
    );
    fact("Kind:", i.kind.as_str());
    fact("Severity:", severity_str(i.severity));
    if !i.regions.is_empty() {
        fact("Regions:", &i.regions.join(", "));
    }
    if let Some(step) = &i.step {
        fact("Step:", step);
    }
    if let Some(class) = &i.class {
        fact("Class:", class);
    }
    fact("Opened:", &rfc3339(i.opened_at_ms));
    if let Some(at) = i.acknowledged_at_ms {
        let by = i
            .acknowledged_by
            .as_deref()
            .map(|b| format!(" by {b}"))
            .unwrap_or_default();
        fact("Acked:", &format!("{}{by}", rfc3339(at)));
    }
    if let Some(at) = i.resolved_at_ms {
        fact("Resolved:", &rfc3339(at));
    }
    if !i.timeline.is_empty() {
        out.push_str("\nTimeline:\n");
        for e in &i.timeline {
            let round = e.round.map(|r| format!(" round {r}")).unwrap_or_default();
            let verdict = e
                .verdict
                .map(|v| format!(" {}", v.as_str()))
                .unwrap_or_default();
            out.push_str(&format!(
                "  {} {}{round}{verdict}: {}\n",
                rfc3339(e.at_ms),
                e.event,
                one_line(&e.note)
            ));
        }
    }
    out.push_str(&format!(
        "\n-- \nmailloop. Acknowledge with: mailloopctl incidents ack {}\n",
        i.id
    ));
    out
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// At most `max` characters, ending in `…` when cut.
fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_counts_characters_not_bytes() {
        let s = "é".repeat(2000);
        let t = truncate(&s, PAGERDUTY_SUMMARY_MAX);
        assert_eq!(t.chars().count(), PAGERDUTY_SUMMARY_MAX);
        assert!(t.ends_with('…'));
        assert_eq!(truncate("short", 10), "short");
    }

    #[test]
    fn rfc3339_is_utc_with_millis() {
        assert_eq!(rfc3339(1_764_291_723_456), "2025-11-28T01:02:03.456Z");
    }
}
