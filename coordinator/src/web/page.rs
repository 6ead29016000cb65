//! The HTML page and the SVG badges, as maud templates: checked by the
//! compiler, and every `(value)` spliced in is HTML-escaped (display
//! names are the operator's free text). The only unescaped text is the
//! stylesheet below, a constant.

use super::chart::{self, COLOURS, Line, fmt_ms};
use super::model::{BAR_DAYS, DAY_MS, HOUR_MS, fmt_uptime};
use super::view::{
    CheckPageData, CheckView, DayRun, HistoryData, IncidentView, PageData, fmt_date, fmt_datetime, fmt_day,
    fmt_day_span, fmt_month,
};
use maud::{DOCTYPE, Markup, PreEscaped, html};

/// The page's whole stylesheet, inline (no external request), allowed by
/// its hash in the Content-Security-Policy. Text is always in the body
/// colour; state colours are on dots, borders and bar cells, each with
/// the state in words beside or inside it.
///
/// The uptime bar is a grid of [`BAR_DAYS`] columns. A run of alike days
/// (see [`super::view::DayRun`]) is one element spanning its days (class
/// `sN`, only those the page uses are in its stylesheet); a 1 px stripe
/// in the page's background every column draws its days as separate
/// cells. A run's text is hidden but read by screen readers, and shown as
/// a tooltip on hover or when its incident link has the keyboard focus
/// (no `title` attribute: the text would be sent twice).
pub fn stylesheet(spans: impl IntoIterator<Item = u32>) -> String {
    let mut spans: Vec<u32> = spans.into_iter().filter(|n| *n > 1).collect();
    spans.sort_unstable();
    spans.dedup();
    let mut css = String::from(BASE_CSS);
    for n in spans {
        css.push_str(&format!(
            ".bar .s{n}{{grid-column:span {n};background-size:calc((100% + 1px)/{n}) 100%}}"
        ));
    }
    css
}

/// The stylesheet of a page with `d`'s bars.
pub fn stylesheet_of(d: &PageData) -> String {
    stylesheet(d.checks.iter().flat_map(|c| c.bar.iter().map(|r| r.days)))
}

const BASE_CSS: &str = "\
:root{color-scheme:light dark;--bg:#fff;--fg:#1f2328;--muted:#59636e;--line:#d1d9e0;--card:#f6f8fa;\
--up:#1a7f37;--degraded:#9a6700;--regional:#bc4c00;--down:#cf222e;--nodata:#818b98}\
@media (prefers-color-scheme:dark){:root{--bg:#0d1117;--fg:#f0f6fc;--muted:#9198a1;--line:#3d444d;--card:#151b23;\
--up:#3fb950;--degraded:#d29922;--regional:#db6d28;--down:#f85149;--nodata:#656c76}}\
*{box-sizing:border-box}\
body{margin:0;background:var(--bg);color:var(--fg);font:16px/1.5 system-ui,-apple-system,'Segoe UI',sans-serif}\
header,main,footer{max-width:52rem;margin:0 auto;padding:1rem}\
h1{font-size:1.6rem;margin:.5rem 0}h2{font-size:1.2rem;margin:1.5rem 0 .5rem}h3,.incident h2{font-size:1.05rem;margin:0}\
.overall{border-left:.4rem solid var(--nodata);background:var(--card);padding:.75rem 1rem;font-weight:600;margin:0}\
.overall.none{border-color:var(--up)}.overall.minor{border-color:var(--degraded)}\
.overall.major{border-color:var(--regional)}.overall.critical{border-color:var(--down)}\
.incident{border:1px solid var(--line);border-left:.4rem solid var(--down);border-radius:.3rem;padding:.75rem 1rem;margin:.5rem 0;list-style:none}\
.incident.resolved{border-left-color:var(--up)}\
.incidents{padding:0;margin:0}.incident p{margin:.25rem 0}.muted{color:var(--muted)}\
.timeline{margin:.25rem 0;padding-left:1.2rem}.note{white-space:pre-wrap}\
.check{border:1px solid var(--line);border-radius:.3rem;padding:.75rem 1rem;margin:.75rem 0}\
.head{display:flex;flex-wrap:wrap;justify-content:space-between;gap:.5rem;align-items:baseline}\
.state{margin:0;font-weight:600}.dot{display:inline-block;width:.7rem;height:.7rem;border-radius:50%;margin-right:.4rem;background:var(--nodata)}\
.dot.up,.bar .u{background-color:var(--up)}.dot.degraded,.bar .g{background-color:var(--degraded)}\
.dot.regional,.bar .r{background-color:var(--regional)}.dot.down,.bar .x{background-color:var(--down)}\
.bar{display:grid;grid-template-columns:repeat(90,1fr);gap:1px;padding:0;margin:.75rem 0 .25rem;height:2rem;list-style:none}\
.bar>li{background:linear-gradient(90deg,transparent calc(100% - 1px),var(--bg) 0) var(--nodata);\
background-size:calc(100% + 1px) 100%;border-radius:1px;position:relative}.bar>li:hover{outline:2px solid var(--fg)}\
.bar a{position:absolute;inset:0}.bar a:focus{outline:3px solid var(--fg);outline-offset:1px}\
.bar span{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}\
.bar>li:hover span,.bar>li:focus-within span{clip:auto;width:auto;height:auto;overflow:visible;bottom:2.3rem;left:50%;transform:translateX(-50%);z-index:1;\
background:var(--fg);color:var(--bg);padding:.2rem .5rem;border-radius:.2rem;font-size:.85rem}\
.uptime{display:grid;grid-template-rows:auto auto;grid-auto-flow:column;justify-content:start;gap:0 1.5rem;margin:.5rem 0 0}\
.uptime dt{color:var(--muted);font-size:.85rem}.uptime dd{margin:0;font-variant-numeric:tabular-nums}\
a{color:inherit}footer{font-size:.9rem}nav ul{display:flex;gap:1rem;list-style:none;padding:0}\
@media (max-width:30rem){.bar{height:1.5rem}}";

/// What a check's page adds: the lines' colours per region (light and
/// dark; each at least 3:1 against its background), axes, legend, table.
const CHART_CSS: &str = "\
:root{--c0:#0969da;--c1:#bf3989;--c2:#1a7f37;--c3:#953800;--c4:#8250df;--c5:#59636e}\
@media (prefers-color-scheme:dark){:root{--c0:#4493f8;--c1:#f778ba;--c2:#3fb950;--c3:#db6d28;--c4:#a371f7;--c5:#9198a1}}\
.vh{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0)}\
.chart{width:100%;height:auto;display:block}.axis path{stroke:var(--line)}.axis text{fill:var(--muted);font-size:12px}\
.line{fill:none;stroke-width:2}.c0{stroke:var(--c0)}.c1{stroke:var(--c1)}.c2{stroke:var(--c2)}.c3{stroke:var(--c3)}\
.c4{stroke:var(--c4)}.c5{stroke:var(--c5)}.legend{display:flex;flex-wrap:wrap;gap:.25rem 1rem;list-style:none;padding:0;margin:.25rem 0}\
.legend svg{width:1.5rem;height:.75rem;vertical-align:middle;margin-right:.3rem}\
table{border-collapse:collapse;margin:.5rem 0}th,td{padding:.2rem .6rem;text-align:left;border-bottom:1px solid var(--line)}\
td{font-variant-numeric:tabular-nums}";

/// The stylesheet of a check's page.
pub fn stylesheet_of_charts() -> String {
    let mut css = stylesheet([]);
    css.push_str(CHART_CSS);
    css
}

/// The `<head>` both pages share: the title, the alternates (JSON,
/// Atom) and the stylesheet.
fn head(title: &str, path: &str, css: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) }
            link rel="alternate" type="application/json" href={ (path) ".json" };
            link rel="alternate" type="application/atom+xml" title="Incidents" href={ (path) ".atom" };
            style { (PreEscaped(css)) }
        }
    }
}

fn footer(path: &str, now_ms: i64) -> Markup {
    html! {
        footer {
            p class="muted" {
                "Uptime is the share of monitoring rounds in which mail was delivered. "
                "Delays confined to one region are shown but do not count as downtime; "
                "rounds in which the monitor itself saw nothing count as no data, never as up. "
                "Times are UTC. Updated " (fmt_datetime(now_ms)) "."
            }
            nav aria-label="More" {
                ul {
                    li { a href={ (path) "/history/" (fmt_month(now_ms)) } { "Incident history" } }
                    li { a href={ (path) ".atom" } { "Incidents feed (Atom)" } }
                    li { a href={ (path) ".json" } { "Machine-readable status (JSON)" } }
                }
            }
        }
    }
}

/// One incident in public words: headline, what and since when, and its
/// public timeline (operators' notes are untrusted text: escaped).
/// `top`: under the page's h2 (h3); else a history page's (h2).
fn incident(i: &IncidentView, top: bool) -> Markup {
    let class = if i.resolved_ms.is_some() { "incident resolved" } else { "incident" };
    html! {
        li class=(class) id={ "i" (i.id) } {
            @if top {
                h3 { (i.display_name) ": " (i.headline) }
            } @else {
                h2 { (i.display_name) ": " (i.headline) }
            }
            p class="muted" {
                @match i.status {
                    "identified" => "Identified",
                    "resolved" => "Resolved",
                    _ => "Investigating",
                }
                " · opened " (fmt_datetime(i.opened_ms))
                @if let Some(at) = i.resolved_ms { " · resolved " (fmt_datetime(at)) }
            }
            ol class="timeline" aria-label="Updates, oldest first" {
                @for e in &i.timeline {
                    li {
                        strong { (e.label) } " · " (fmt_datetime(e.at_ms)) " — "
                        span class="note" { (e.text) }
                    }
                }
            }
        }
    }
}

/// The status page.
pub fn page(d: &PageData, css: &str) -> Markup {
    let (indicator, description) = d.overall();
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(&d.title, &d.path, css))
            body {
                header {
                    h1 { (d.title) }
                    p class={ "overall " (indicator) } role="status" { (description) }
                }
                main {
                    section aria-labelledby="incidents-heading" {
                        h2 id="incidents-heading" { "Current incidents" }
                        @if d.incidents.is_empty() {
                            p { "No open incidents." }
                        } @else {
                            ul class="incidents" {
                                @for i in &d.incidents {
                                    (incident(i, true))
                                }
                            }
                        }
                    }
                    section aria-labelledby="checks-heading" {
                        h2 id="checks-heading" { "Services" }
                        @if d.checks.is_empty() {
                            p { "No service is listed on this page yet." }
                        }
                        p id="bar-help" class="muted" {
                            "Each bar is the daily uptime of the last " (BAR_DAYS) " days ("
                            (fmt_date(d.now_ms - (BAR_DAYS as i64 - 1) * DAY_MS)) " to " (fmt_date(d.now_ms))
                            "), oldest first, one cell per day in the colour of its worst state; "
                            "hover over a day, or move the focus to a day with an incident, for its uptime."
                        }
                        @let base = page_base(&d.path);
                        @for (n, c) in d.checks.iter().enumerate() {
                            (check(&base, n, c))
                        }
                    }
                }
                (footer(&d.path, d.now_ms))
            }
        }
    }
}

/// One month's incident history: every incident of a public check active
/// at some time in the month, newest first, with links to the months
/// before and after.
pub fn history(d: &HistoryData, css: &str) -> Markup {
    let title = format!("{}: incidents of {}", d.title, d.month_name);
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(&title, &d.path, css))
            body {
                header {
                    h1 { (title) }
                    nav aria-label="Months" {
                        ul {
                            li { a href=(d.path) { "Current status" } }
                            li { a href={ (d.path) "/history/" (d.previous) } rel="prev" { "Earlier: " (d.previous) } }
                            @if let Some(next) = &d.next {
                                li { a href={ (d.path) "/history/" (next) } rel="next" { "Later: " (next) } }
                            }
                        }
                    }
                }
                main {
                    @if d.incidents.is_empty() {
                        p { "No incidents in " (d.month_name) "." }
                    } @else {
                        ul class="incidents" {
                            @for i in &d.incidents {
                                (incident(i, false))
                            }
                        }
                    }
                }
                (footer(&d.path, d.now_ms))
            }
        }
    }
}

/// One run of alike days: its text says the dates, the uptime and, for a
/// day with incidents, links to the first (the history page has all).
fn day_run(history: &str, r: &DayRun) -> Markup {
    let dates = if r.days == 1 {
        fmt_day(r.first_ms)
    } else {
        fmt_day_span(r.first_ms, r.last_ms())
    };
    let text = match r.uptime {
        Some(p) if p >= 100.0 => format!("{dates}: 100 %, {}", r.cell.words()),
        Some(_) => format!("{dates}: {}, {}", fmt_uptime(r.uptime), r.cell.words()),
        None => format!("{dates}: no data"),
    };
    let class = if r.days == 1 {
        r.cell.short().to_string()
    } else {
        format!("{} s{}", r.cell.short(), r.days)
    };
    html! {
        li class=(class) {
            @if let Some((id, opened)) = r.incidents.first() {
                a href={ (history) (fmt_month(*opened)) "#i" (id) } {
                    span {
                        (text) ", "
                        @if r.incidents.len() == 1 { "1 incident" } @else { (r.incidents.len()) " incidents" }
                    }
                }
            } @else {
                span { (text) }
            }
        }
    }
}

/// The pages under the page, relative to it (`status/` under `/status`):
/// every bar links to history pages, every check to its own page.
fn page_base(path: &str) -> String {
    format!("{}/", path.rsplit('/').next().unwrap_or_default())
}

fn check(base: &str, n: usize, c: &CheckView) -> Markup {
    let heading = format!("c{n}");
    let history = format!("{base}history/");
    html! {
        article class="check" aria-labelledby=(heading) {
            div class="head" {
                // The name links to the check's response times.
                h3 id=(heading) { a href={ (base) "check/" (c.id) } { (c.display_name) } }
                p class="state" { span class={ "dot " (c.state.class()) } {} (c.state.words()) }
            }
            ol class="bar" aria-labelledby={ (heading) " bar-help" } {
                @for run in &c.bar {
                    (day_run(&history, run))
                }
            }
            dl class="uptime" {
                @for (label, pct) in &c.uptimes {
                    dt { (label) } dd { (fmt_uptime(*pct)) }
                }
            }
        }
    }
}

/// A check's own page: for each window, the round trip's p50 and p95 and
/// the delivery time per region as charts, a legend, and the same
/// figures as a table.
pub fn check_times(d: &CheckPageData, css: &str) -> Markup {
    let title = format!("{}: {}", d.title, d.display_name);
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(&title, &d.path, css))
            body {
                header {
                    h1 { (d.display_name) }
                    p class="state" { span class={ "dot " (d.state.class()) } {} (d.state.words()) }
                    nav aria-label="Pages" {
                        ul {
                            li { a href=(d.path) { "Current status" } }
                            li { a href={ (d.path) "/history/" (fmt_month(d.now_ms)) } { "Incident history" } }
                        }
                    }
                }
                main {
                    p class="muted" {
                        "Round trip: from connecting to the mail server to finding the message in the mailbox. "
                        "In each hour, half of the round trips took at most the p50 (solid lines) and 95 % at most the p95 (dashed). "
                        "Delivery: from the server accepting the message to finding it, the hour's p50 and p95. "
                        "One point per hour and region; a gap is an hour without a measurement."
                    }
                    @for w in &d.windows {
                        (times_window(d, w))
                    }
                }
                (footer(&d.path, d.now_ms))
            }
        }
    }
}

fn times_window(d: &CheckPageData, w: &super::view::TimesWindow) -> Markup {
    let heading = format!("w{}", w.key);
    let until = d.now_ms - d.now_ms.rem_euclid(HOUR_MS) + HOUR_MS;
    let since = w.since_ms - w.since_ms.rem_euclid(HOUR_MS);
    let labels: Vec<(String, String, String, String)> = w
        .regions
        .iter()
        .map(|r| (format!("{} p50", r.region), format!("{} p95", r.region), format!("{} delivery p50", r.region), format!("{} delivery p95", r.region)))
        .collect();
    let mut rtt: Vec<Line> = Vec::new();
    let mut delivery: Vec<Line> = Vec::new();
    for (n, (r, l)) in w.regions.iter().zip(&labels).enumerate() {
        let series = |f: fn(&chart::HourPoint) -> Option<f64>| -> Vec<(i64, f64)> {
            r.hours.iter().filter_map(|h| Some((h.hour_ms, f(h)?))).collect()
        };
        rtt.push(Line { colour: n, dashed: false, points: series(|h| h.p50), label: &l.0 });
        rtt.push(Line { colour: n, dashed: true, points: series(|h| h.p95), label: &l.1 });
        delivery.push(Line { colour: n, dashed: false, points: series(|h| h.delivery_p50), label: &l.2 });
        delivery.push(Line { colour: n, dashed: true, points: series(|h| h.delivery_p95), label: &l.3 });
    }
    let words = |f: &dyn Fn(&chart::RegionSeries) -> String| -> String {
        if w.regions.is_empty() {
            return "No measurements in this window.".into();
        }
        w.regions.iter().map(|r| format!("{}: {}", r.region, f(r))).collect::<Vec<_>>().join("; ")
    };
    let or_none = |v: Option<f64>| v.map_or("no data".to_string(), fmt_ms);
    let rtt_desc = words(&|r| format!("p50 {}, p95 {}", or_none(r.p50), or_none(r.p95)));
    let delivery_desc = words(&|r| format!("p50 {}, p95 {}", or_none(r.delivery_p50), or_none(r.delivery_p95)));
    html! {
        section aria-labelledby=(heading) {
            h2 id=(heading) { (w.heading) }
            @if w.regions.is_empty() {
                p { "No measurements in this window." }
            } @else {
                ul class="legend" aria-label="Regions" {
                    @for (n, r) in w.regions.iter().enumerate() {
                        li {
                            svg viewBox="0 0 24 12" aria-hidden="true" {
                                path class={ "line c" (n % COLOURS) } d="M0 6H24" {}
                            }
                            (r.region)
                        }
                    }
                }
                h3 { "Round trip (p50 solid, p95 dashed)" }
                (chart::chart(&format!("{heading}r"), &format!("Round trip per region, {}", w.heading.to_lowercase()),
                    &rtt_desc, since, until, &rtt))
                h3 { "Delivery time (p50 solid, p95 dashed)" }
                (chart::chart(&format!("{heading}d"), &format!("Delivery time per region, {}", w.heading.to_lowercase()),
                    &delivery_desc, since, until, &delivery))
                table {
                    caption class="vh" { "The charts' figures, " (w.heading.to_lowercase()) }
                    thead { tr { th scope="col" { "Region" } th scope="col" { "Round trip p50" } th scope="col" { "p95" }
                        th scope="col" { "Delivery p50" } th scope="col" { "p95" } th scope="col" { "Hours measured" } } }
                    tbody {
                        @for r in &w.regions {
                            tr {
                                th scope="row" { (r.region) }
                                td { (or_none(r.p50)) } td { (or_none(r.p95)) } td { (or_none(r.delivery_p50)) } td { (or_none(r.delivery_p95)) }
                                td { (r.measured_hours) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A shields-style flat badge: the display name, then the state.
pub fn badge(label: &str, message: &str, colour: &str) -> Markup {
    // Verdana 11px averages about 7 px a character; shields measures
    // exactly, this is close enough for a README.
    let width = |s: &str| s.chars().count() as u32 * 7 + 12;
    let (lw, mw) = (width(label), width(message));
    let total = lw + mw;
    let alt = format!("{label}: {message}");
    html! {
        svg xmlns="http://www.w3.org/2000/svg" width=(total) height="20" role="img" aria-label=(alt) {
            title { (alt) }
            linearGradient id="s" x2="0" y2="100%" {
                stop offset="0" stop-color="#bbb" stop-opacity=".1" {}
                stop offset="1" stop-opacity=".1" {}
            }
            clipPath id="r" { rect width=(total) height="20" rx="3" fill="#fff" {} }
            g clip-path="url(#r)" {
                rect width=(lw) height="20" fill="#555" {}
                rect x=(lw) width=(mw) height="20" fill=(colour) {}
                rect width=(total) height="20" fill="url(#s)" {}
            }
            g fill="#fff" text-anchor="middle" font-family="Verdana,Geneva,DejaVu Sans,sans-serif" font-size="11" {
                text x=(lw / 2) y="14" { (label) }
                text x=(lw + mw / 2) y="14" { (message) }
            }
        }
    }
}
