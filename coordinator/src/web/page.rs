//! The HTML page and the SVG badges, as maud templates: checked by the
//! compiler, and every `(value)` spliced in is HTML-escaped (display
//! names are the operator's free text). The only unescaped text is the
//! stylesheet below, a constant.

use super::model::{BAR_DAYS, fmt_uptime};
use super::view::{CheckView, PageData, fmt_date, fmt_datetime};
use maud::{DOCTYPE, Markup, PreEscaped, html};

/// The page's whole stylesheet, inline (no external request), allowed by
/// its hash in the Content-Security-Policy. Text is always in the body
/// colour; state colours are on dots, borders and bar cells, each with
/// the state in words beside or inside it. A day cell's text is hidden
/// but read by screen readers, and shown as a tooltip on hover (no
/// `title` attribute: the text would be sent twice for 90 cells a check).
pub const CSS: &str = "\
:root{color-scheme:light dark;--bg:#fff;--fg:#1f2328;--muted:#59636e;--line:#d1d9e0;--card:#f6f8fa;\
--up:#1a7f37;--degraded:#9a6700;--regional:#bc4c00;--down:#cf222e;--nodata:#818b98}\
@media (prefers-color-scheme:dark){:root{--bg:#0d1117;--fg:#f0f6fc;--muted:#9198a1;--line:#3d444d;--card:#151b23;\
--up:#3fb950;--degraded:#d29922;--regional:#db6d28;--down:#f85149;--nodata:#656c76}}\
*{box-sizing:border-box}\
body{margin:0;background:var(--bg);color:var(--fg);font:16px/1.5 system-ui,-apple-system,'Segoe UI',sans-serif}\
header,main,footer{max-width:52rem;margin:0 auto;padding:1rem}\
h1{font-size:1.6rem;margin:.5rem 0}h2{font-size:1.2rem;margin:1.5rem 0 .5rem}h3{font-size:1.05rem;margin:0}\
.overall{border-left:.4rem solid var(--nodata);background:var(--card);padding:.75rem 1rem;font-weight:600;margin:0}\
.overall.none{border-color:var(--up)}.overall.minor{border-color:var(--degraded)}\
.overall.major{border-color:var(--regional)}.overall.critical{border-color:var(--down)}\
.incident{border:1px solid var(--line);border-left:.4rem solid var(--down);border-radius:.3rem;padding:.75rem 1rem;margin:.5rem 0;list-style:none}\
.incidents{padding:0;margin:0}.incident p{margin:.25rem 0}.muted{color:var(--muted)}\
.check{border:1px solid var(--line);border-radius:.3rem;padding:.75rem 1rem;margin:.75rem 0}\
.head{display:flex;flex-wrap:wrap;justify-content:space-between;gap:.5rem;align-items:baseline}\
.state{margin:0;font-weight:600}.dot{display:inline-block;width:.7rem;height:.7rem;border-radius:50%;margin-right:.4rem;background:var(--nodata)}\
.dot.up,.day.up{background:var(--up)}.dot.degraded,.day.degraded{background:var(--degraded)}\
.dot.regional,.day.regional{background:var(--regional)}.dot.down,.day.down{background:var(--down)}\
.bar{display:flex;gap:1px;padding:0;margin:.75rem 0 .25rem;height:2rem;list-style:none}\
.day{flex:1;background:var(--nodata);border-radius:1px;min-width:1px;position:relative}.day:hover{outline:2px solid var(--fg)}\
.day span{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}\
.day:hover span{clip:auto;width:auto;height:auto;overflow:visible;bottom:2.3rem;left:50%;transform:translateX(-50%);z-index:1;\
background:var(--fg);color:var(--bg);padding:.2rem .5rem;border-radius:.2rem;font-size:.85rem;opacity:1}\
.axis{display:flex;justify-content:space-between;font-size:.85rem;margin:0}\
.uptime{display:flex;flex-wrap:wrap;gap:.25rem 1.5rem;margin:.5rem 0 0}.uptime div{display:flex;gap:.4rem}\
.uptime dt{color:var(--muted)}.uptime dd{margin:0;font-variant-numeric:tabular-nums}\
a{color:inherit}footer{font-size:.9rem}\
@media (max-width:30rem){.bar{height:1.5rem}}";

/// The status page.
pub fn page(d: &PageData) -> Markup {
    let (indicator, description) = d.overall();
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (d.title) }
                link rel="alternate" type="application/json" href={ (d.path) ".json" };
                style { (PreEscaped(CSS)) }
            }
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
                                    li class="incident" id={ "incident-" (i.id) } {
                                        h3 { (i.display_name) ": " (i.headline) }
                                        p { (i.body) }
                                        p class="muted" {
                                            @if i.status == "identified" { "Identified" } @else { "Investigating" }
                                            " · opened " (fmt_datetime(i.opened_ms))
                                        }
                                    }
                                }
                            }
                        }
                    }
                    section aria-labelledby="checks-heading" {
                        h2 id="checks-heading" { "Services" }
                        @if d.checks.is_empty() {
                            p { "No service is listed on this page yet." }
                        }
                        @for (n, c) in d.checks.iter().enumerate() {
                            (check(n, c))
                        }
                    }
                }
                footer {
                    p class="muted" {
                        "Uptime is the share of monitoring rounds in which mail was delivered. "
                        "Delays confined to one region are shown but do not count as downtime; "
                        "rounds in which the monitor itself saw nothing count as no data, never as up. "
                        "Times are UTC. Updated " (fmt_datetime(d.now_ms)) "."
                    }
                    p { a href={ (d.path) ".json" } { "Machine-readable status (JSON)" } }
                }
            }
        }
    }
}

fn check(n: usize, c: &CheckView) -> Markup {
    let heading = format!("check-{n}");
    html! {
        article class="check" aria-labelledby=(heading) {
            div class="head" {
                h3 id=(heading) { (c.display_name) }
                p class="state" { span class={ "dot " (c.state.class()) } aria-hidden="true" {} (c.state.words()) }
            }
            ol class="bar" aria-label={ "Daily history of " (c.display_name) ", last " (BAR_DAYS) " days, oldest first" } {
                @for (day, tally) in &c.bar {
                    @let cell = tally.worst();
                    @let text = match tally.uptime() {
                        Some(_) => format!("{}: {} uptime, {}", fmt_date(*day), fmt_uptime(tally.uptime()), cell.words()),
                        None => format!("{}: no data", fmt_date(*day)),
                    };
                    li class={ "day " (cell.class()) } { span { (text) } }
                }
            }
            p class="axis muted" aria-hidden="true" { span { (BAR_DAYS) " days ago" } span { "Today" } }
            dl class="uptime" {
                @for (label, pct) in &c.uptimes {
                    div { dt { "Uptime " (label) } dd { (fmt_uptime(*pct)) } }
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
