//! Round-trip and delivery-time charts, drawn on the server as inline SVG
//! from the hourly aggregates (`storage::HourAggregate`): no script, no
//! chart library, nothing fetched. Colours come from the page's
//! stylesheet (classes `c0`..`c5`, each with a light and a dark value),
//! because the Content-Security-Policy allows no `style` attribute.
//!
//! What a point is: one hour of one region. The round trip's p50 and p95
//! are estimated from the hour's histogram (`HourAggregate::rtt_quantile`,
//! linear inside a bucket, clamped to the hour's real minimum and
//! maximum), and the delivery time's the same way from its own histogram
//! (`HourAggregate::delivery_quantile`). An hour stored before delivery
//! times had a histogram (before PostgreSQL schema 11; SQLite adds the
//! column when it opens the file) shows
//! its mean on the p50 line and no p95. An hour without a measurement is a
//! gap in the line, never a zero.
//!
//! Every chart is `role="img"` with a `<title>` and a `<desc>` that says
//! in words what the lines show, and the page puts a table of the same
//! figures beside it.

use crate::storage::{HOUR_MS, HourAggregate, TimingStats};
use maud::{Markup, html};
use std::collections::BTreeMap;

/// Distinct line colours (`c0`..): regions beyond them reuse colours; the
/// legend and the table still name each.
pub const COLOURS: usize = 6;

/// One hour of one region, as drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HourPoint {
    /// The hour's start (epoch ms).
    pub hour_ms: i64,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    /// The hour's delivery time, p50 and p95.
    pub delivery_p50: Option<f64>,
    pub delivery_p95: Option<f64>,
}

/// One region's hours, oldest first, and its totals over them.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionSeries {
    pub region: String,
    pub hours: Vec<HourPoint>,
    /// The window's hours merged (histograms added): its p50 and p95.
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    /// The window's delivery time, p50 and p95.
    pub delivery_p50: Option<f64>,
    pub delivery_p95: Option<f64>,
    /// Hours with at least one round trip measured.
    pub measured_hours: usize,
}

/// The hours of one check since `since_ms`, per region (sorted by name).
pub fn per_region(aggregates: &[&HourAggregate], since_ms: i64) -> Vec<RegionSeries> {
    let mut by_region: BTreeMap<&str, Vec<&HourAggregate>> = BTreeMap::new();
    for a in aggregates.iter().filter(|a| a.hour_ms >= since_ms - since_ms.rem_euclid(HOUR_MS)) {
        by_region.entry(a.region.as_str()).or_default().push(a);
    }
    by_region
        .into_iter()
        .map(|(region, mut hours)| {
            hours.sort_by_key(|a| a.hour_ms);
            let total = merge(hours.iter().copied());
            RegionSeries {
                region: region.to_string(),
                hours: hours.iter().map(|a| point(a)).collect(),
                p50: total.rtt_quantile(0.5),
                p95: total.rtt_quantile(0.95),
                delivery_p50: delivery_p50(&total),
                delivery_p95: total.delivery_quantile(0.95),
                measured_hours: hours.iter().filter(|a| a.rtt.count > 0).count(),
            }
        })
        .collect()
}

fn point(a: &HourAggregate) -> HourPoint {
    HourPoint {
        hour_ms: a.hour_ms,
        p50: a.rtt_quantile(0.5),
        p95: a.rtt_quantile(0.95),
        delivery_p50: delivery_p50(a),
        delivery_p95: a.delivery_quantile(0.95),
    }
}

/// The delivery time's p50, or an hour's mean when it was stored before
/// delivery times had a histogram.
fn delivery_p50(a: &HourAggregate) -> Option<f64> {
    a.delivery_quantile(0.5).or_else(|| a.delivery.avg_ms())
}

/// Several hours (or regions) as one: counts and histograms added.
fn merge<'a>(hours: impl Iterator<Item = &'a HourAggregate>) -> HourAggregate {
    let mut m = HourAggregate::empty("", "", 0);
    let both = |a: Option<f64>, b: Option<f64>, f: fn(f64, f64) -> f64| match (a, b) {
        (Some(x), Some(y)) => Some(f(x, y)),
        (x, y) => x.or(y),
    };
    let add = |into: &mut TimingStats, t: &TimingStats| {
        into.count += t.count;
        into.sum_ms += t.sum_ms;
        into.min_ms = both(into.min_ms, t.min_ms, f64::min);
        into.max_ms = both(into.max_ms, t.max_ms, f64::max);
    };
    for h in hours {
        m.hour_ms = h.hour_ms;
        m.ok += h.ok;
        m.degraded += h.degraded;
        m.failed += h.failed;
        add(&mut m.rtt, &h.rtt);
        add(&mut m.delivery, &h.delivery);
        for (into, n) in m.rtt_buckets.iter_mut().zip(h.rtt_buckets) {
            *into += n;
        }
        for (into, n) in m.delivery_buckets.iter_mut().zip(h.delivery_buckets) {
            *into += n;
        }
    }
    m
}

/// `38 ms`, `1.2 s`.
pub fn fmt_ms(ms: f64) -> String {
    if ms >= 10_000.0 {
        format!("{:.0} s", ms / 1000.0)
    } else if ms >= 1000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else {
        format!("{ms:.0} ms")
    }
}

/// The smallest 1, 2 or 5 times a power of ten at or above `v` (an
/// axis's top), at least 10 ms.
fn nice_ceiling(v: f64) -> f64 {
    let v = v.max(10.0);
    let mut step = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if step * m >= v {
            step *= m;
            break;
        }
    }
    step
}

/// One line of a chart: a region's p50, p95 or delivery time.
pub struct Line<'a> {
    /// Colour index (the region's place in the legend).
    pub colour: usize,
    pub dashed: bool,
    /// (hour start, value), oldest first.
    pub points: Vec<(i64, f64)>,
    /// `eu-west p95`: the line's own title.
    pub label: &'a str,
}

/// A chart's frame: the plot's size inside the viewBox.
const W: f64 = 640.0;
const H: f64 = 200.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 24.0;

/// The SVG `d` of `points` on the axes: one subpath per run of
/// consecutive hours (an hour without data breaks the line).
fn path(points: &[(i64, f64)], x: impl Fn(i64) -> f64, y: impl Fn(f64) -> f64) -> String {
    let mut d = String::new();
    let mut previous: Option<i64> = None;
    for &(t, v) in points {
        let joined = previous.is_some_and(|p| t - p <= HOUR_MS);
        d.push_str(&format!("{}{:.1} {:.1}", if joined { "L" } else { "M" }, x(t), y(v)));
        previous = Some(t);
    }
    d
}

/// A line chart over `[since_ms, until_ms)` with a labelled y axis from
/// zero and the window's start, middle and end on the x axis. `id` makes
/// the title's and description's ids unique on the page.
pub fn chart(id: &str, title: &str, desc: &str, since_ms: i64, until_ms: i64, lines: &[Line]) -> Markup {
    let top = nice_ceiling(
        lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.1))
            .fold(0.0, f64::max),
    );
    let span = (until_ms - since_ms).max(1) as f64;
    let x = |t: i64| LEFT + (t + HOUR_MS / 2 - since_ms) as f64 / span * (W - LEFT - RIGHT);
    let y = |v: f64| TOP + (1.0 - v / top) * (H - TOP - BOTTOM);
    let ticks = [0.0, top / 2.0, top];
    let times = [since_ms, since_ms + (until_ms - since_ms) / 2, until_ms];
    let when = |t: i64| {
        chrono::DateTime::from_timestamp_millis(t)
            .map(|d| {
                if until_ms - since_ms > 2 * 86_400_000 {
                    d.format("%-d %b").to_string()
                } else {
                    d.format("%H:%M").to_string()
                }
            })
            .unwrap_or_default()
    };
    html! {
        svg class="chart" viewBox={ "0 0 " (W) " " (H) } role="img"
            aria-labelledby={ (id) "-t " (id) "-d" } {
            title id={ (id) "-t" } { (title) }
            desc id={ (id) "-d" } { (desc) }
            g class="axis" {
                @for v in ticks {
                    path d={ "M" (LEFT) " " (format!("{:.1}", y(v))) "H" (W - RIGHT) } {}
                    text x=(LEFT - 4.0) y=(format!("{:.1}", y(v) + 4.0)) text-anchor="end" { (fmt_ms(v)) }
                }
                @for (n, t) in times.iter().enumerate() {
                    text x=(format!("{:.1}", LEFT + (t - since_ms) as f64 / span * (W - LEFT - RIGHT)))
                        y=(H - 6.0)
                        text-anchor=(match n { 0 => "start", 1 => "middle", _ => "end" }) { (when(*t)) }
                }
            }
            @for l in lines {
                path class={ "line c" (l.colour % COLOURS) } stroke-dasharray=[l.dashed.then_some("6 4")]
                    d=(path(&l.points, x, y)) {
                    title { (l.label) }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hour(region: &str, h: i64, rtts: &[f64], delivery: f64) -> HourAggregate {
        let mut a = HourAggregate::empty("c", region, h * HOUR_MS);
        for r in rtts {
            a.add("ok", Some(*r), Some(delivery));
        }
        a
    }

    #[test]
    fn regions_are_separate_and_totals_merge_their_hours() {
        let hours = [
            hour("eu", 10, &[20.0, 30.0], 10.0),
            hour("us", 10, &[200.0], 50.0),
            hour("eu", 11, &[40.0], 30.0),
        ];
        let refs: Vec<&HourAggregate> = hours.iter().collect();
        let s = per_region(&refs, 10 * HOUR_MS);
        assert_eq!(s.iter().map(|r| r.region.as_str()).collect::<Vec<_>>(), ["eu", "us"]);
        assert_eq!(s[0].hours.len(), 2);
        assert_eq!(s[0].measured_hours, 2);
        // eu's deliveries: 10, 10 and 30 ms (all in the first bucket, which
        // starts at the minimum): p50 and p95 inside the real range.
        let (p50, p95) = (s[0].delivery_p50.unwrap(), s[0].delivery_p95.unwrap());
        assert!((10.0..=30.0).contains(&p50) && p50 <= p95 && p95 <= 30.0, "{s:?}");
        assert_eq!(s[1].delivery_p95, Some(50.0), "one delivery: every quantile is it");
        assert!(s[0].p95.unwrap() <= 40.0 && s[0].p50.unwrap() >= 20.0, "{s:?}");
        // An hour before the window is not read.
        assert_eq!(per_region(&refs, 11 * HOUR_MS)[0].hours.len(), 1);
    }

    #[test]
    fn an_hour_without_a_delivery_histogram_shows_its_mean() {
        // As stored before the histogram: counts, sum, min and max only.
        let mut old = hour("eu", 10, &[20.0, 30.0], 40.0);
        old.delivery_buckets = [0; crate::storage::RTT_BUCKETS_MS.len() + 1];
        let refs = [&old];
        let s = per_region(&refs, 10 * HOUR_MS);
        assert_eq!((s[0].hours[0].delivery_p50, s[0].hours[0].delivery_p95), (Some(40.0), None));
    }

    #[test]
    fn a_missing_hour_breaks_the_line() {
        let d = path(&[(0, 1.0), (HOUR_MS, 2.0), (3 * HOUR_MS, 3.0)], |t| t as f64 / HOUR_MS as f64, |v| v);
        assert_eq!(d, "M0.0 1.0L1.0 2.0M3.0 3.0");
    }

    #[test]
    fn axes_end_on_round_numbers() {
        assert_eq!(nice_ceiling(3.0), 10.0);
        assert_eq!(nice_ceiling(38.0), 50.0);
        assert_eq!(nice_ceiling(120.0), 200.0);
        assert_eq!(nice_ceiling(1000.0), 1000.0);
        assert_eq!(fmt_ms(38.4), "38 ms");
        assert_eq!(fmt_ms(1234.0), "1.2 s");
    }
}
