//! The console's pages as maud templates: every `(value)` is
//! HTML-escaped (check names, server replies and headers are untrusted
//! text); the only unescaped text is [`CSS`], a constant. The waterfall
//! is inline SVG computed here, with the same numbers in a table.

use super::paging::Links;
use super::{CheckRow, Listed, ProbeView, Viewer, acknowledgeable};
use crate::storage::AlertAttempt;
use crate::auth::Role;
use crate::cluster::hub::AgentView;
use crate::judge::{BaselineView, Incident, IncidentKind, RegionEvidence, Verdict};
use mailloop_common::report::{ProbeReport, StepReport};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde_json::Value;

/// The console's whole stylesheet, inline and allowed by its hash. Text
/// stays in the body colour; state colours are on borders and bars, with
/// the state in words beside them. Light and dark schemes.
pub const CSS: &str = "\
:root{color-scheme:light dark;--bg:#fff;--fg:#1f2328;--muted:#59636e;--line:#d1d9e0;--card:#f6f8fa;\
--up:#1a7f37;--warn:#9a6700;--down:#cf222e;--smtp:#0969da;--imap:#8250df;--band:#9a670040}\
@media (prefers-color-scheme:dark){:root{--bg:#0d1117;--fg:#f0f6fc;--muted:#9198a1;--line:#3d444d;--card:#151b23;\
--up:#3fb950;--warn:#d29922;--down:#f85149;--smtp:#4493f8;--imap:#ab7df8;--band:#d2992250}}\
*{box-sizing:border-box}\
body{margin:0;background:var(--bg);color:var(--fg);font:15px/1.5 system-ui,-apple-system,'Segoe UI',sans-serif}\
header,main{max-width:72rem;margin:0 auto;padding:.75rem 1rem}\
header{display:flex;flex-wrap:wrap;gap:1rem;align-items:center;border-bottom:1px solid var(--line)}\
header nav ul{display:flex;gap:1rem;list-style:none;margin:0;padding:0}\
header form{margin-left:auto}\
a{color:var(--smtp)}a:focus-visible,button:focus-visible,input:focus-visible{outline:3px solid var(--smtp);outline-offset:2px}\
h1{font-size:1.4rem;margin:.5rem 0}h2{font-size:1.15rem;margin:1.25rem 0 .5rem}h3{font-size:1rem;margin:1rem 0 .25rem}\
table{border-collapse:collapse;width:100%;margin:.5rem 0}th,td{text-align:left;vertical-align:top;padding:.3rem .5rem;border-bottom:1px solid var(--line)}\
th{font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}\
.state{font-weight:600;border-left:.3rem solid var(--line);padding-left:.4rem}\
.s-ok,.s-up,.s-resolved{border-color:var(--up)}.s-degraded,.s-deferred,.s-transit,.s-acknowledged{border-color:var(--warn)}\
.s-failed,.s-down,.s-missing,.s-open{border-color:var(--down)}\
.muted{color:var(--muted)}.reply{font-family:ui-monospace,monospace;font-size:.9em;word-break:break-word}\
.card{background:var(--card);border:1px solid var(--line);border-radius:.3rem;padding:.75rem 1rem;margin:.75rem 0}\
.notice{border-left:.3rem solid var(--up)}.error{border-left:.3rem solid var(--down)}\
button{font:inherit;padding:.35rem .9rem;border-radius:.3rem;border:1px solid var(--fg);background:var(--bg);color:var(--fg);cursor:pointer}\
button.primary{background:var(--smtp);border-color:var(--smtp);color:#fff}\
@media (prefers-color-scheme:dark){button.primary{background:#1f6feb;border-color:#1f6feb}}\
label{display:block;font-weight:600;margin:.5rem 0 .25rem}input[type=password]{font:inherit;padding:.35rem;width:100%;max-width:28rem;\
border:1px solid var(--muted);border-radius:.3rem;background:var(--bg);color:var(--fg)}\
svg.waterfall{width:100%;height:auto;max-width:60rem;display:block}\
svg text{fill:var(--fg);font:12px system-ui,sans-serif}svg .axis{stroke:var(--line)}\
svg .smtp{fill:var(--smtp)}svg .imap{fill:var(--imap)}svg .other{fill:var(--muted)}svg .slow{fill:var(--down)}\
svg .band{fill:var(--band)}svg .median{stroke:var(--warn);stroke-width:2}\
pre{white-space:pre-wrap;word-break:break-word;font-size:.85em}\
form.filters{display:flex;flex-wrap:wrap;gap:.5rem 1rem;align-items:flex-end;margin:.5rem 0}form.filters label{margin:0 0 .2rem}\
input[type=search],select{font:inherit;padding:.3rem;border:1px solid var(--muted);border-radius:.3rem;background:var(--bg);color:var(--fg)}\
nav.pager ul{display:flex;flex-wrap:wrap;gap:1.25rem;list-style:none;margin:.75rem 0;padding:0}\
.sr-only{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}";

/// The `snake_case` name of a serialised enum (`open`, `failed`, ...).
fn word<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

fn fmt_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%d %H:%M:%S UTC")
        .to_string()
}

fn fmt_ms(ms: f64) -> String {
    if ms >= 10_000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else {
        format!("{ms:.0} ms")
    }
}

fn fmt_ago(now_ms: i64, ms: i64) -> String {
    let s = (now_ms - ms).max(0) / 1000;
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        _ => format!("{} h ago", s / 3600),
    }
}

fn layout(viewer: Option<&Viewer>, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (title) " · mailloop console" }
                style { (PreEscaped(CSS)) }
            }
            body {
                header {
                    strong { "mailloop console" }
                    @if let Some(v) = viewer {
                        nav aria-label="Console" {
                            ul {
                                li { a href="/console" { "Overview" } }
                                li { a href="/console/incidents" { "Incidents" } }
                                li { a href="/console/agents" { "Agents" } }
                                li { a href="/console/alerts" { "Alerts" } }
                            }
                        }
                        form method="post" action="/console/logout" {
                            @if let Some(csrf) = &v.csrf {
                                input type="hidden" name="csrf" value=(csrf);
                            }
                            span.muted { (v.name) " (" (v.role.as_str()) ") " }
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// The sign-in form, with a message when there is one.
pub fn login(message: Option<&str>) -> Markup {
    layout(
        None,
        "Sign in",
        html! {
            h1 { "Sign in" }
            @if let Some(m) = message {
                p.card.error role="status" { (m) }
            }
            form method="post" action="/console/login" {
                label for="token" { "API token (admin or read)" }
                input #token type="password" name="token" autocomplete="off" required;
                p { button.primary type="submit" { "Sign in" } }
            }
            p.muted { "The token is exchanged for a session cookie; it is not stored in the browser." }
        },
    )
}

/// A refused form (403).
pub fn forbidden(why: &str) -> Markup {
    layout(
        None,
        "Refused",
        html! {
            h1 { "Refused" }
            p.card.error { (why) }
            p { a href="/console" { "Back to the console" } }
        },
    )
}

fn state_cell(state: &str) -> Markup {
    html! { span class={ "state s-" (state) } { (state) } }
}

fn failure_text(e: &RegionEvidence) -> Markup {
    html! {
        @if let Some(step) = &e.step { code { (step) } " " }
        @if let Some(class) = &e.class { (class) " " }
        @if let Some(code) = e.code { "· " (code) " " }
        @if let Some(en) = &e.enhanced { (en) " " }
        @if let Some(text) = &e.text { br; span.reply { (text) } }
        @for s in &e.slow { br; "slow " code { (s.step) } " " (fmt_ms(s.ms)) " > " (fmt_ms(s.threshold_ms)) }
        @for r in &e.reasons { br; (r) }
    }
}

fn round_link(check: &str, round: u64) -> String {
    format!("/console/checks/{check}/rounds/{round}")
}

/// Links to a list's neighbouring pages (plain links: no JavaScript,
/// reachable with Tab), or nothing when the list fits on one page.
fn pager(label: &str, links: &Links, prev_word: &str, next_word: &str) -> Markup {
    html! {
        @if links.prev.is_some() || links.next.is_some() || links.first.is_some() {
            nav.pager aria-label=(label) {
                ul {
                    @if let Some(h) = &links.first { li { a href=(h) { "First page" } } }
                    @if let Some(h) = &links.prev { li { a href=(h) rel="prev" { "← " (prev_word) } } }
                    @if let Some(h) = &links.next { li { a href=(h) rel="next" { (next_word) " →" } } }
                }
            }
        }
    }
}

/// A filter form's hidden page size, when it is not the default (a
/// filter starts again from the first page, with the same size).
fn keep_size(size: usize) -> Markup {
    html! {
        @if size != super::paging::DEFAULT_SIZE { input type="hidden" name="n" value=(size); }
    }
}

/// The line under an empty page: nothing matched, or a cursor past the end.
fn nothing_here<T>(listed: &Listed<T>, what: &str) -> Markup {
    html! {
        @if listed.rows.is_empty() {
            p { "No " (what) " here." }
        }
    }
}

/// Every check × region now, with each region's last failure: a page of
/// checks by name.
pub fn overview(
    viewer: &Viewer,
    checks: &Listed<CheckRow>,
    active: &[Incident],
    active_total: usize,
) -> Markup {
    layout(
        Some(viewer),
        "Overview",
        html! {
            h1 { "Overview" }
            h2 { "Active incidents" }
            @if active.is_empty() {
                p { "None." }
            } @else {
                @if active_total > active.len() {
                    p { "The newest " (active.len()) " of " (active_total) ": "
                        a href="/console/incidents?state=active" { "all active incidents" } "." }
                }
                ul {
                    @for i in active {
                        li {
                            a href={ "/console/incidents/" (i.id) } { "#" (i.id) " " (i.check_id) " — " (word(&i.kind)) }
                            " (" (word(&i.state)) ", " (word(&i.severity)) ", since " (fmt_time(i.opened_at_ms)) ")"
                        }
                    }
                }
            }
            h2 { "Checks by region" }
            form.filters method="get" action="/console" role="search" aria-label="Checks" {
                div { label for="f-q" { "Check name contains" } input #f-q type="search" name="q" value=(checks.filter("q")); }
                (keep_size(checks.size))
                button type="submit" { "Filter" }
            }
            (nothing_here(checks, "checks"))
            table {
                caption.sr-only { "Every check and region: the latest verdict and the last failure" }
                thead { tr {
                    th scope="col" { "Check" } th scope="col" { "Verdict" } th scope="col" { "Region" }
                    th scope="col" { "Now" } th scope="col" { "Last round" } th scope="col" { "Last failure" }
                } }
                tbody {
                    @for c in &checks.rows {
                        @for (k, r) in c.regions.iter().enumerate() {
                            tr {
                                @if k == 0 {
                                    th scope="row" rowspan=(c.regions.len()) { (c.name) }
                                    td rowspan=(c.regions.len()) {
                                        @match &c.latest {
                                            Some(v) => { (state_cell(v.verdict.as_str())) br; span.muted { (v.note) } }
                                            None => span.muted { "no round decided yet" },
                                        }
                                    }
                                }
                                td { (r.region) }
                                td {
                                    @match &r.now {
                                        Some(e) => {
                                            (state_cell(&word(&e.state)))
                                            @if let Some(rtt) = e.rtt_ms { " " span.muted { (fmt_ms(rtt)) } }
                                        }
                                        None => span.muted { "—" },
                                    }
                                }
                                td {
                                    @if let Some(v) = &c.latest {
                                        a href=(round_link(&c.name, v.round)) { "round " (v.round) }
                                        br; span.muted { (fmt_time(v.round_start_ms)) }
                                    } @else { span.muted { "—" } }
                                }
                                td {
                                    @match &r.last_failure {
                                        Some((round, at, e)) => {
                                            a href=(round_link(&c.name, *round)) { "round " (round) }
                                            " " span.muted { (fmt_time(*at)) } br;
                                            (state_cell(&word(&e.state))) " " (failure_text(e))
                                        }
                                        None => span.muted { "none recently" },
                                    }
                                }
                            }
                        }
                    }
                }
            }
            (pager("Pages of checks", &checks.links, "Previous checks", "Next checks"))
        },
    )
}

/// Every incident, newest first, a page at a time, with its filters.
pub fn incidents(viewer: &Viewer, listed: &Listed<Incident>) -> Markup {
    let state = listed.filter("state");
    let kind = listed.filter("kind");
    layout(
        Some(viewer),
        "Incidents",
        html! {
            h1 { "Incidents" }
            form.filters method="get" action="/console/incidents" role="search" aria-label="Incidents" {
                div {
                    label for="f-state" { "State" }
                    select #f-state name="state" {
                        @for (value, words) in [("", "any"), ("active", "active (open or acknowledged)"), ("open", "open"), ("acknowledged", "acknowledged"), ("resolved", "resolved")] {
                            option value=(value) selected[state == value] { (words) }
                        }
                    }
                }
                div {
                    label for="f-kind" { "Kind" }
                    select #f-kind name="kind" {
                        option value="" selected[kind.is_empty()] { "any" }
                        @for k in IncidentKind::ALL {
                            option value=(k.as_str()) selected[kind == k.as_str()] { (k.as_str()) }
                        }
                    }
                }
                div { label for="f-check" { "Check" } input #f-check type="search" name="check" value=(listed.filter("check")); }
                (keep_size(listed.size))
                button type="submit" { "Filter" }
            }
            (nothing_here(listed, "incidents"))
            @if !listed.rows.is_empty() {
                table {
                    caption.sr-only { "Incidents, newest first" }
                    thead { tr {
                        th scope="col" { "Incident" } th scope="col" { "Check" } th scope="col" { "Kind" } th scope="col" { "State" }
                        th scope="col" { "Severity" } th scope="col" { "Opened" } th scope="col" { "Resolved" }
                    } }
                    tbody {
                        @for i in &listed.rows {
                            tr {
                                th scope="row" { a href={ "/console/incidents/" (i.id) } { "#" (i.id) } }
                                td { (i.check_id) }
                                td { (word(&i.kind)) }
                                td { (state_cell(&word(&i.state))) }
                                td { (word(&i.severity)) }
                                td { (fmt_time(i.opened_at_ms)) }
                                td { @match i.resolved_at_ms { Some(at) => (fmt_time(at)), None => span.muted { "—" } } }
                            }
                        }
                    }
                }
            }
            (pager("Pages of incidents", &listed.links, "Newer", "Older"))
        },
    )
}

/// Which lane a step runs in.
fn lane(step: &StepReport) -> &'static str {
    let name = step.name.as_str();
    if name.starts_with("smtp.") {
        "smtp"
    } else if name.starts_with("imap.") {
        "imap"
    } else {
        "other"
    }
}

const LANES: [(&str, &str); 3] = [("smtp", "SMTP"), ("imap", "IMAP"), ("other", "Other")];

/// A step's learned band: (low, median, high) in ms of duration.
fn band(baselines: &[BaselineView], region: &str, step: &str) -> Option<(f64, f64, f64)> {
    let b = baselines
        .iter()
        .find(|b| b.region == region && b.step == step)?;
    let median = b.median_ms?;
    let mad = b.mad_ms.unwrap_or(0.0);
    let high = b
        .threshold_ms
        .or(b.static_threshold_ms)
        .unwrap_or(median + 3.0 * mad)
        .max(median);
    Some(((median - mad).max(0.0), median, high))
}

/// A tick spacing giving a handful of ticks over `span` ms.
fn tick_step(span: f64) -> f64 {
    let raw = span / 6.0;
    let pow = 10f64.powf(raw.max(1.0).log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * pow)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * pow)
}

/// The waterfall of one report (SVG elements are closed explicitly, `{}`:
/// in HTML, a `<rect>` without its end tag would swallow what follows): a row per step on one time axis, grouped
/// by lane (SMTP and IMAP run concurrently), each with its baseline band.
pub fn waterfall(report: &ProbeReport, region: &str, baselines: &[BaselineView]) -> Markup {
    const W: f64 = 760.0;
    const LEFT: f64 = 170.0;
    const RIGHT: f64 = 48.0;
    const ROW: f64 = 22.0;
    const TOP: f64 = 24.0;
    let mut rows: Vec<(&str, &StepReport)> = Vec::new();
    for (key, _) in LANES {
        rows.extend(
            report
                .steps
                .iter()
                .filter(|s| lane(s) == key)
                .map(|s| (key, s)),
        );
    }
    let lanes_used = LANES
        .iter()
        .filter(|(k, _)| rows.iter().any(|r| r.0 == *k))
        .count();
    let end = rows
        .iter()
        .map(|(_, s)| {
            let b = band(baselines, region, s.name.as_str()).map_or(0.0, |b| b.2);
            s.start_ms + s.ms.max(b)
        })
        .fold(1.0, f64::max);
    let scale = (W - LEFT - RIGHT) / end;
    let height = TOP + (rows.len() + lanes_used) as f64 * ROW + 10.0;
    let tick = tick_step(end);
    let ticks: Vec<f64> = (0..)
        .map(|k| k as f64 * tick)
        .take_while(|t| *t <= end)
        .collect();
    let mut y = TOP;
    let mut drawn = Vec::new();
    for (key, label) in LANES {
        let lane_rows: Vec<&StepReport> = rows.iter().filter(|r| r.0 == key).map(|r| r.1).collect();
        if lane_rows.is_empty() {
            continue;
        }
        drawn.push(html! {
            text x="4" y=(format!("{:.1}", y + 15.0)) font-weight="bold" { (label) " lane" }
        });
        y += ROW;
        for s in lane_rows {
            let name = s.name.as_str();
            let b = band(baselines, region, name);
            let slow = b.is_some_and(|(_, _, high)| s.ms > high) || !s.ok;
            let x = LEFT + s.start_ms * scale;
            let w = (s.ms * scale).max(1.5);
            drawn.push(html! {
                g {
                    title { (name) ": starts at " (fmt_ms(s.start_ms)) ", takes " (fmt_ms(s.ms))
                        @if let Some((lo, med, hi)) = b { "; baseline " (fmt_ms(lo)) "–" (fmt_ms(hi)) ", median " (fmt_ms(med)) } }
                    text x="14" y=(format!("{:.1}", y + 15.0)) { (name) }
                    @if let Some((lo, med, hi)) = b {
                        rect.band x=(format!("{:.1}", x + lo * scale)) y=(format!("{:.1}", y + 2.0))
                            width=(format!("{:.1}", ((hi - lo) * scale).max(1.0))) height=(format!("{:.1}", ROW - 4.0)) {}
                        line.median x1=(format!("{:.1}", x + med * scale)) x2=(format!("{:.1}", x + med * scale))
                            y1=(format!("{:.1}", y + 1.0)) y2=(format!("{:.1}", y + ROW - 1.0)) {}
                    }
                    rect class=(if slow { "slow" } else { key }) data-step=(name) data-lane=(key)
                        x=(format!("{x:.1}")) y=(format!("{:.1}", y + 6.0)) width=(format!("{w:.1}")) height=(format!("{:.1}", ROW - 12.0)) {}
                }
            });
            y += ROW;
        }
    }
    let label = format!(
        "Waterfall of probe {} in {region}: {} steps over {}",
        report.probe_id,
        rows.len(),
        fmt_ms(end)
    );
    html! {
        svg.waterfall xmlns="http://www.w3.org/2000/svg" role="img" aria-label=(label)
            viewBox=(format!("0 0 {W} {height:.0}")) {
            @for t in &ticks {
                line.axis x1=(format!("{:.1}", LEFT + t * scale)) x2=(format!("{:.1}", LEFT + t * scale)) y1="16" y2=(format!("{height:.0}")) {}
                text x=(format!("{:.1}", LEFT + t * scale + 2.0)) y="12" { (fmt_ms(*t)) }
            }
            @for d in drawn { (d) }
        }
    }
}

fn steps_table(report: &ProbeReport, region: &str, baselines: &[BaselineView]) -> Markup {
    html! {
        table {
            caption.sr-only { "Steps of probe " (report.probe_id) " with their baselines" }
            thead { tr {
                th scope="col" { "Lane" } th scope="col" { "Step" } th scope="col" { "Start" } th scope="col" { "Duration" }
                th scope="col" { "Baseline median" } th scope="col" { "Threshold" } th scope="col" { "Reply" }
            } }
            tbody {
                @for s in &report.steps {
                    @let b = baselines.iter().find(|b| b.region == region && b.step == s.name.as_str());
                    tr {
                        td { (lane(s)) }
                        th scope="row" { code { (s.name.as_str()) } @if !s.ok { " (failed)" } }
                        td.num { (fmt_ms(s.start_ms)) }
                        td.num { (fmt_ms(s.ms)) }
                        td.num { @if let Some(m) = b.and_then(|b| b.median_ms) { (fmt_ms(m)) } @else { "—" } }
                        td.num { @if let Some(t) = b.and_then(|b| b.threshold_ms.or(b.static_threshold_ms)) { (fmt_ms(t)) } @else { "—" } }
                        td.reply { @if let Some(c) = s.code { (c) " " } @if let Some(d) = &s.detail { (d) } }
                    }
                }
            }
        }
    }
}

fn diagnosis(report: &ProbeReport) -> Markup {
    html! {
        @if let Some(f) = &report.failure {
            div.card.error {
                strong { "Failure at " code { (f.step.as_str()) } ": " (f.class.as_str()) }
                @if let Some(c) = f.code { " · " (c) } @if let Some(e) = &f.enhanced { " " (e) }
                p.reply { (f.message) }
            }
        }
        @if !report.reasons.is_empty() {
            ul { @for r in &report.reasons { li { (r) } } }
        }
        h4 { "Authentication" }
        @match &report.auth {
            Some(a) => {
                table {
                    tbody {
                        tr { th scope="row" { "SPF" } td { (a.spf.as_deref().unwrap_or("—")) " " span.muted { (a.spf_domain.as_deref().unwrap_or("")) } } }
                        tr { th scope="row" { "DKIM" } td { (a.dkim.as_deref().unwrap_or("—")) " " span.muted { (a.dkim_domain.as_deref().unwrap_or("")) } } }
                        tr { th scope="row" { "DMARC" } td { (a.dmarc.as_deref().unwrap_or("—")) } }
                        tr { th scope="row" { "Alignment" } td { "DKIM " (word(&a.alignment.dkim)) ", SPF " (word(&a.alignment.spf)) " with From " (a.from_domain.as_deref().unwrap_or("—")) } }
                        tr { th scope="row" { "Own DKIM check" } td { (a.own_dkim.as_deref().unwrap_or("off")) } }
                    }
                }
                @if let Some(w) = &a.warning { p { (w) } }
                @for raw in &a.raw { pre { "Authentication-Results: " (raw) } }
            }
            None => p.muted { "Not fetched: no authentication results." },
        }
        h4 { "Received hops" }
        @if report.hops.is_empty() {
            p.muted { "No hops recorded." }
        } @else {
            table {
                thead { tr { th scope="col" { "From" } th scope="col" { "By" } th scope="col" { "With" } th scope="col" { "At" } th scope="col" { "Delay" } } }
                tbody {
                    @for h in &report.hops {
                        tr {
                            td { (h.from.as_deref().unwrap_or("—")) }
                            td { (h.by.as_deref().unwrap_or("—")) }
                            td { (h.with.as_deref().unwrap_or("")) @if let Some(t) = &h.tls { br; span.muted { (t) } } }
                            td { (h.at.as_deref().unwrap_or("—")) }
                            td.num { @match (h.delay_ms, &h.note) { (Some(d), _) => (fmt_ms(d as f64)), (None, Some(n)) => (n), _ => "—" } }
                        }
                    }
                }
            }
        }
        h4 { "TLS certificates" }
        @if report.tls.is_empty() {
            p.muted { "No TLS handshake." }
        } @else {
            table {
                thead { tr { th scope="col" { "Protocol" } th scope="col" { "Endpoint" } th scope="col" { "Subject" } th scope="col" { "Issuer" } th scope="col" { "Expires" } th scope="col" { "Days left" } } }
                tbody {
                    @for c in &report.tls {
                        tr {
                            td { (c.protocol) @if let Some(v) = &c.version { br; span.muted { (v) } } }
                            td { (c.endpoint) }
                            td { (c.subject) }
                            td { (c.issuer) }
                            td { (c.not_after) }
                            td.num { (c.days_left) }
                        }
                    }
                }
            }
        }
    }
}

/// A round's probes, one section per region: waterfall, table, diagnosis.
pub fn round(
    viewer: &Viewer,
    check: &str,
    round: u64,
    probes: &[ProbeView],
    baselines: &[BaselineView],
    _now_ms: i64,
) -> Markup {
    layout(
        Some(viewer),
        &format!("{check} round {round}"),
        html! {
            h1 { (check) ", round " (round) }
            p.muted { "Bars: each step from its recorded start for its duration (SMTP and IMAP run at the same time). Shaded band: the step's learned baseline (median ± MAD up to its threshold), the line its median; a red bar failed or passed its threshold." }
            @if probes.is_empty() { p { "No report of this round is stored." } }
            @for p in probes {
                section aria-labelledby={ "probe-" (p.region) } {
                    h2 #{ "probe-" (p.region) } { (p.region) " " span.muted { "(agent " (p.agent) ")" } }
                    @match &p.report {
                        Some(r) => {
                            p { "Outcome " (state_cell(r.outcome.as_str()))
                                @if let Some(rtt) = r.rtt_ms { " · round trip " (fmt_ms(rtt)) }
                                @if let Some(d) = r.delivery_ms { " · delivery " (fmt_ms(d)) }
                                " · probe " code { (r.probe_id) } }
                            (waterfall(r, &p.region, baselines))
                            details { summary { "Steps as a table" } (steps_table(r, &p.region, baselines)) }
                            h3 { "Diagnosis" }
                            (diagnosis(r))
                        }
                        None => p { "The stored report could not be read." },
                    }
                }
            }
        },
    )
}

/// An incident with its evidence per region and the Acknowledge form.
pub fn incident(
    viewer: &Viewer,
    i: &Incident,
    evidence: Option<&Verdict>,
    notice: Option<&str>,
) -> Markup {
    layout(
        Some(viewer),
        &format!("Incident {}", i.id),
        html! {
            h1 { "Incident #" (i.id) ": " (i.check_id) " — " (word(&i.kind)) }
            @if let Some(n) = notice { p.card.notice role="status" { (n) } }
            p { (state_cell(&word(&i.state))) " " (word(&i.severity)) " · opened " (fmt_time(i.opened_at_ms))
                " · rounds " (i.first_round) "–" (i.last_round)
                @if let Some(at) = i.acknowledged_at_ms { " · acknowledged " (fmt_time(at)) @if let Some(by) = &i.acknowledged_by { " by " (by) } }
                @if let Some(at) = i.resolved_at_ms { " · resolved " (fmt_time(at)) } }
            p.card { (i.summary) }
            @if acknowledgeable(i.state) {
                @if viewer.role == Role::Admin {
                    form method="post" action={ "/console/incidents/" (i.id) "/ack" } {
                        @if let Some(csrf) = &viewer.csrf { input type="hidden" name="csrf" value=(csrf); }
                        button.primary type="submit" { "Acknowledge" }
                    }
                } @else {
                    p.muted { "Your token has the read role: only an admin token can acknowledge." }
                }
            }
            h2 { "Evidence per region" }
            @match evidence {
                Some(v) => {
                    p { a href=(round_link(&i.check_id, v.round)) { "Round " (v.round) " waterfalls" } " · verdict " (state_cell(v.verdict.as_str())) " · " (v.note) }
                    table {
                        thead { tr { th scope="col" { "Region" } th scope="col" { "State" } th scope="col" { "Agent" } th scope="col" { "Step, class, reply" } } }
                        tbody {
                            @for r in &v.regions {
                                tr {
                                    th scope="row" { (r.region) }
                                    td { (state_cell(&word(&r.state))) }
                                    td { (r.agent.as_deref().unwrap_or("—")) }
                                    td { (failure_text(r)) }
                                }
                            }
                        }
                    }
                }
                None => p.muted { "No verdict stored for its rounds." },
            }
            h2 { "Timeline" }
            ol {
                @for t in &i.timeline {
                    li { (fmt_time(t.at_ms)) " " strong { (t.event) } @if let Some(r) = t.round { " round " (r) } " — " (t.note) }
                }
            }
        },
    )
}

/// Every agent: region, version, last seen, spool depth (a page of them,
/// by region and name).
pub fn agents(viewer: &Viewer, agents: &Listed<AgentView>, regions: &[String], now_ms: i64) -> Markup {
    let region = agents.filter("region");
    layout(
        Some(viewer),
        "Agents",
        html! {
            h1 { "Agents" }
            form.filters method="get" action="/console/agents" role="search" aria-label="Agents" {
                div {
                    label for="f-region" { "Region" }
                    select #f-region name="region" {
                        option value="" selected[region.is_empty()] { "any" }
                        @for r in regions { option value=(r) selected[region == r.as_str()] { (r) } }
                    }
                }
                (keep_size(agents.size))
                button type="submit" { "Filter" }
            }
            (nothing_here(agents, "agents"))
            table {
                thead { tr {
                    th scope="col" { "Agent" } th scope="col" { "Region" } th scope="col" { "Connected" } th scope="col" { "Version" }
                    th scope="col" { "Last seen" } th scope="col" { "Spooled reports" } th scope="col" { "Checks" } th scope="col" { "Clock skew" }
                } }
                tbody {
                    @for a in &agents.rows {
                        tr {
                            th scope="row" { (a.stored.name) @if a.stored.revoked { " (revoked)" } }
                            td { (a.stored.region) }
                            td { (state_cell(if a.connected { "up" } else { "down" })) }
                            td { (a.stored.version.as_deref().unwrap_or("—")) }
                            td { @match a.stored.last_seen_ms { Some(ms) => { (fmt_time(ms)) br; span.muted { (fmt_ago(now_ms, ms)) } } None => "never" } }
                            td.num { @match a.spooled { Some(n) => (n), None => "unknown" } }
                            td.num { (a.assigned) }
                            td.num { @match a.clock_skew_ms { Some(s) => { (s) " ms" } None => "—" } }
                        }
                    }
                }
            }
            (pager("Pages of agents", &agents.links, "Previous agents", "Next agents"))
        },
    )
}

/// An attempt's result in words, with the colour of its state.
fn attempt_result(a: &AlertAttempt) -> Markup {
    let (class, words) = match a.result.as_str() {
        "delivered" => ("up", "delivered"),
        "retry" => ("deferred", "failed, retried"),
        "exhausted" => ("failed", "failed, retries exhausted"),
        "permanent" => ("failed", "failed, not retried"),
        other => ("missing", other),
    };
    html! { span class={ "state s-" (class) } { (words) } }
}

/// The alert channels' delivery counters and the delivery log: every
/// attempt, newest first, a page at a time.
pub fn alerts(viewer: &Viewer, status: &Value, log: &Listed<AlertAttempt>) -> Markup {
    let channels = status["channels"].as_array().cloned().unwrap_or_default();
    let text = |v: &Value| {
        v.as_str().map(str::to_string).unwrap_or_else(|| {
            if v.is_null() {
                "—".into()
            } else {
                v.to_string()
            }
        })
    };
    let admin = viewer.role == Role::Admin;
    let channel = log.filter("channel");
    html! {
        (layout(Some(viewer), "Alerts", html! {
            h1 { "Alert delivery" }
            @if channels.is_empty() { p { "No alert channel is configured." } } @else {
                table {
                    caption.sr-only { "Alert channels and their delivery counters" }
                    thead { tr {
                        th scope="col" { "Channel" } th scope="col" { "Type" } th scope="col" { "Delivered" } th scope="col" { "Failed" }
                        th scope="col" { "Dropped" } th scope="col" { "Pending" } th scope="col" { "Last delivered" } th scope="col" { "Last error" }
                    } }
                    tbody {
                        @for c in &channels {
                            tr {
                                th scope="row" { (text(&c["name"])) }
                                td { (text(&c["type"])) }
                                td.num { (text(&c["delivered"])) } td.num { (text(&c["failed"])) }
                                td.num { (text(&c["dropped"])) } td.num { (text(&c["pending"])) }
                                td { (text(&c["last_ok_at"])) }
                                td.reply {
                                    @if admin { (text(&c["last_error"])) " " span.muted { (text(&c["last_error_at"])) } }
                                    @else { span.muted { "shown to the admin role only" } }
                                }
                            }
                        }
                    }
                }
            }
            h2 #log { "Delivery log" }
            p.muted { "Every attempt to deliver an incident's alert, each retry included, newest first: the failure's class and the receiver's HTTP status or SMTP reply code."
                @if !admin { " Error texts are shown to the admin role only." } }
            form.filters method="get" action="/console/alerts" role="search" aria-label="Delivery log" {
                div {
                    label for="f-channel" { "Channel" }
                    select #f-channel name="channel" {
                        option value="" selected[channel.is_empty()] { "any" }
                        @for c in &channels {
                            @let name = text(&c["name"]);
                            option value=(name) selected[channel == name] { (name) }
                        }
                    }
                }
                div { label for="f-incident" { "Incident number" } input #f-incident type="search" inputmode="numeric" name="incident" value=(log.filter("incident")); }
                (keep_size(log.size))
                button type="submit" { "Filter" }
            }
            (nothing_here(log, "delivery attempts"))
            @if !log.rows.is_empty() {
                table {
                    caption.sr-only { "Alert delivery attempts, newest first" }
                    thead { tr {
                        th scope="col" { "Time" } th scope="col" { "Channel" } th scope="col" { "Incident" } th scope="col" { "Event" }
                        th scope="col" { "Attempt" } th scope="col" { "Result" } th scope="col" { "Class" } th scope="col" { "Code" }
                        @if admin { th scope="col" { "Error" } }
                    } }
                    tbody {
                        @for a in &log.rows {
                            tr data-attempt=(a.attempt) data-result=(a.result) {
                                td { (fmt_time(a.at_ms)) }
                                th scope="row" { (a.channel) " " span.muted { "(" (a.channel_type) ")" } }
                                td { a href={ "/console/incidents/" (a.incident_id) } { "#" (a.incident_id) } " " (a.check_id) }
                                td { (a.event) }
                                td.num { (a.attempt) " of " (a.of) }
                                td { (attempt_result(a)) }
                                td { @match &a.class { Some(c) => code { (c) }, None => span.muted { "—" } } }
                                td.num { @match a.code { Some(c) => (c), None => span.muted { "—" } } }
                                @if admin { td.reply { (a.detail.as_deref().unwrap_or("")) } }
                            }
                        }
                    }
                }
            }
            (pager("Pages of the delivery log", &log.links, "Newer", "Older"))
        }))
    }
}
