//! What the public renderings are made of: public checks and incidents
//! with every internal detail already left out. Built by `mod.rs` from
//! storage, read by `page.rs`, `json.rs` and the badges; nothing here can
//! reach a host, user, mailbox or reply text because none is copied in.

use super::chart::RegionSeries;
use super::model::{Cell, DAY_MS, History, PublicState, Tally, WINDOWS};
use crate::judge::{Incident, IncidentKind, IncidentState, PUBLIC_NOTE, Severity};

/// The whole page's data at one moment.
pub struct PageData {
    pub title: String,
    /// The HTML page's path (`/status`); the JSON is at `{path}.json`.
    pub path: String,
    pub now_ms: i64,
    pub checks: Vec<CheckView>,
    pub incidents: Vec<IncidentView>,
}

impl PageData {
    /// Statuspage's `status.indicator` and its description.
    pub fn overall(&self) -> (&'static str, &'static str) {
        let states: Vec<PublicState> = self.checks.iter().map(|c| c.state.clone()).collect();
        super::model::overall(&states)
    }
}

/// One month of incident history.
pub struct HistoryData {
    pub title: String,
    pub path: String,
    pub now_ms: i64,
    /// `November 2026`.
    pub month_name: String,
    /// `2026-10`: the month before.
    pub previous: String,
    /// The month after, unless this is the current one.
    pub next: Option<String>,
    /// Newest opened first.
    pub incidents: Vec<IncidentView>,
}

/// One public check: its check name (the badge's and the JSON's id), its
/// display name, state and history.
pub struct CheckView {
    pub id: String,
    pub display_name: String,
    pub state: PublicState,
    /// When the latest verdict was decided (epoch ms).
    pub updated_ms: Option<i64>,
    /// Per window of [`WINDOWS`]: its label and uptime (None: no data).
    pub uptimes: Vec<(&'static str, Option<f64>)>,
    /// [`super::model::BAR_DAYS`] days, oldest first, as runs of days
    /// that read the same.
    pub bar: Vec<DayRun>,
}

/// A public check's own page: its round trip and delivery times per
/// region over 24 hours and 7 days.
pub struct CheckPageData {
    pub title: String,
    pub path: String,
    pub now_ms: i64,
    pub id: String,
    pub display_name: String,
    pub state: PublicState,
    /// (heading, window start, the regions' series), shortest first.
    pub windows: Vec<TimesWindow>,
}

/// One window of a check's page.
pub struct TimesWindow {
    /// `Last 24 hours`.
    pub heading: &'static str,
    /// `24h`: part of the ids on the page.
    pub key: &'static str,
    pub since_ms: i64,
    pub regions: Vec<RegionSeries>,
}

/// Consecutive days of the uptime bar that read alike: the same colour
/// and uptime, and no incident. Each is drawn as one cell per day, but
/// the page carries its text once, which keeps a page of a hundred
/// checks light; a day with an incident is always a run of its own.
#[derive(Debug, Clone, PartialEq)]
pub struct DayRun {
    /// The first day's start (epoch ms, UTC midnight).
    pub first_ms: i64,
    pub days: u32,
    pub cell: Cell,
    pub uptime: Option<f64>,
    /// The day's incidents of this check (id, opened), oldest first.
    pub incidents: Vec<(u64, i64)>,
}

impl DayRun {
    /// The last day's start.
    pub fn last_ms(&self) -> i64 {
        self.first_ms + (self.days as i64 - 1) * DAY_MS
    }
}

/// An incident's span, for the days it touches: (id, opened, resolved).
pub type IncidentSpan = (u64, i64, Option<i64>);

/// Groups `days` (oldest first) into runs; `incidents` mark their days.
pub fn day_runs(days: &[(i64, Tally)], incidents: &[IncidentSpan], now_ms: i64) -> Vec<DayRun> {
    let mut runs: Vec<DayRun> = Vec::new();
    for (start, tally) in days {
        let end = start + DAY_MS;
        let mut on_day: Vec<(u64, i64)> = incidents
            .iter()
            .filter(|(_, opened, resolved)| *opened < end && resolved.unwrap_or(now_ms) >= *start)
            .map(|(id, opened, _)| (*id, *opened))
            .collect();
        on_day.sort_by_key(|(id, opened)| (*opened, *id));
        let (cell, uptime) = (tally.worst(), tally.uptime());
        match runs.last_mut() {
            Some(r) if on_day.is_empty() && r.incidents.is_empty() && r.cell == cell && r.uptime == uptime => {
                r.days += 1
            }
            _ => runs.push(DayRun { first_ms: *start, days: 1, cell, uptime, incidents: on_day }),
        }
    }
    runs
}

impl CheckView {
    pub fn new(
        id: String,
        display_name: String,
        state: PublicState,
        updated_ms: Option<i64>,
        history: &History,
        incidents: &[IncidentSpan],
        now_ms: i64,
    ) -> CheckView {
        CheckView {
            id,
            display_name,
            state,
            updated_ms,
            uptimes: WINDOWS
                .iter()
                .map(|(label, w)| (*label, history.window(*w, now_ms).uptime()))
                .collect(),
            bar: day_runs(&history.bar(now_ms), incidents, now_ms),
        }
    }
}

/// Whether incidents of this kind are about the service (shown on the
/// public page), not about the monitor itself (coverage, agent clocks).
pub fn is_public_kind(k: IncidentKind) -> bool {
    !matches!(k, IncidentKind::Coverage | IncidentKind::Clock)
}

/// An open or acknowledged incident of a public check, in public words.
pub struct IncidentView {
    pub id: u64,
    pub check_id: String,
    pub display_name: String,
    /// `Outage`, `Delivery delays in eu-west`, ...
    pub headline: String,
    /// One sentence: what and since when (UTC).
    pub body: String,
    /// Statuspage `impact`: `critical`, `major`, `minor`, `none`.
    pub impact: &'static str,
    /// Statuspage `status`: `investigating` (open), `identified`
    /// (acknowledged), `resolved`.
    pub status: &'static str,
    pub opened_ms: i64,
    pub updated_ms: i64,
    pub resolved_ms: Option<i64>,
    /// What the public reads of its history, oldest first.
    pub timeline: Vec<PublicEntry>,
}

/// One line of an incident's public timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct PublicEntry {
    pub at_ms: i64,
    /// `Investigating`, `Identified`, `Update`, `Resolved`.
    pub label: &'static str,
    /// Our words, or an operator's public note (untrusted text: escaped
    /// by the templates).
    pub text: String,
}

impl IncidentView {
    /// The public form of `i`, or None for kinds that are about the monitor
    /// itself (coverage, agent clocks), not about the service.
    ///
    /// The judge's own summary is not shown: it quotes reply texts and
    /// names the step, the cause and what to check, which are for the
    /// operator. The public text is made only of the kind, the region
    /// names and the time it began.
    pub fn of(i: &Incident, display_name: &str) -> Option<IncidentView> {
        let regions = if i.regions.is_empty() {
            String::new()
        } else {
            i.regions.join(", ")
        };
        let (headline, what) = match i.kind {
            IncidentKind::Outage => (
                "Outage".to_string(),
                "Mail is not being delivered".to_string(),
            ),
            IncidentKind::Regional if !regions.is_empty() => (
                format!("Delivery delays in {regions}"),
                format!("Mail sent from {regions} is delayed or not delivered"),
            ),
            IncidentKind::Regional => (
                "Regional delivery delays".into(),
                "Mail from some regions is delayed".into(),
            ),
            IncidentKind::Performance => (
                "Degraded performance".into(),
                "Mail is delivered more slowly than usual".into(),
            ),
            IncidentKind::Authentication => (
                "Email authentication problem".into(),
                "Messages no longer pass an email authentication check (SPF, DKIM or DMARC)".into(),
            ),
            IncidentKind::Certificate => (
                "TLS certificate expiring".into(),
                "A server certificate of the service expires soon".into(),
            ),
            IncidentKind::Placement => (
                "Mail filed as junk".into(),
                "Delivered mail lands in a junk folder".into(),
            ),
            IncidentKind::Reputation => (
                "Sender on a blocklist".into(),
                "The sending path is listed on a public blocklist".into(),
            ),
            IncidentKind::Coverage | IncidentKind::Clock => return None,
        };
        let body = format!("{what} since {}.", fmt_datetime(i.opened_at_ms));
        // The judge's own entries (rounds, its notes) quote replies and
        // hosts: only the moments and the operators' public notes are read.
        let mut timeline = vec![PublicEntry {
            at_ms: i.opened_at_ms,
            label: "Investigating",
            text: body.clone(),
        }];
        if let Some(at) = i.acknowledged_at_ms {
            timeline.push(PublicEntry {
                at_ms: at,
                label: "Identified",
                text: "The operators are working on it.".into(),
            });
        }
        for e in i.timeline.iter().filter(|e| e.event == PUBLIC_NOTE) {
            timeline.push(PublicEntry {
                at_ms: e.at_ms,
                label: "Update",
                text: e.note.clone(),
            });
        }
        if let Some(at) = i.resolved_at_ms {
            timeline.push(PublicEntry {
                at_ms: at,
                label: "Resolved",
                text: "This incident has been resolved.".into(),
            });
        }
        timeline.sort_by_key(|e| e.at_ms);
        Some(IncidentView {
            id: i.id,
            check_id: i.check_id.clone(),
            display_name: display_name.to_string(),
            headline,
            body,
            impact: match (i.kind, i.severity) {
                (IncidentKind::Outage, _) | (_, Severity::Critical) => "critical",
                (IncidentKind::Regional, _) => "major",
                (_, Severity::Warning) => "minor",
                (_, Severity::Info) => "none",
            },
            status: match i.state {
                IncidentState::Acknowledged => "identified",
                IncidentState::Resolved => "resolved",
                IncidentState::Open => "investigating",
            },
            opened_ms: i.opened_at_ms,
            updated_ms: timeline.last().map_or(i.opened_at_ms, |e| e.at_ms),
            resolved_ms: i.resolved_at_ms,
            timeline,
        })
    }
}

/// `2026-12-03 14:05 UTC`.
pub fn fmt_datetime(ms: i64) -> String {
    match chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms) {
        Some(t) => t.format("%Y-%m-%d %H:%M UTC").to_string(),
        None => "an unknown time".into(),
    }
}

/// `2026-12`: the history page of the month of `ms`.
pub fn fmt_month(ms: i64) -> String {
    match chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms) {
        Some(t) => t.format("%Y-%m").to_string(),
        None => "?".into(),
    }
}

/// `November 2026`.
pub fn fmt_month_name(ms: i64) -> String {
    match chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms) {
        Some(t) => t.format("%B %Y").to_string(),
        None => "?".into(),
    }
}

/// `3 Dec` (a day of the uptime bar; its label says the years).
pub fn fmt_day(ms: i64) -> String {
    match chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms) {
        Some(t) => t.format("%-d %b").to_string(),
        None => "?".into(),
    }
}

/// `3–9 Dec`, or `25 Nov – 2 Dec` across months.
pub fn fmt_day_span(first_ms: i64, last_ms: i64) -> String {
    let (a, b) = (fmt_day(first_ms), fmt_day(last_ms));
    match (a.split_once(' '), b.split_once(' ')) {
        (Some((d, m)), Some((_, m2))) if m == m2 => format!("{d}–{b}"),
        _ => format!("{a} – {b}"),
    }
}

/// `2026-12-03`.
pub fn fmt_date(ms: i64) -> String {
    match chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms) {
        Some(t) => t.format("%Y-%m-%d").to_string(),
        None => "?".into(),
    }
}

/// RFC 3339 with milliseconds, UTC (what Statuspage writes).
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
