//! What the public status page says, decided from stored verdicts: a
//! check's state in words, uptime per window, one cell per day. Pure: no
//! I/O, no clock (`now_ms` comes in), so every rule is a one-line test.
//!
//! How verdicts count toward uptime:
//! - `up`, `degraded` and `deferred` (a 4xx inside its grace window) are
//!   up: mail was delivered, or will be within the grace window.
//! - `transit` is up too: a region could not reach the service, which is
//!   a network problem of that region, not downtime of the service. It
//!   still colours its day as "regional delays".
//! - `down` is down.
//! - `unknown` (the monitor saw nothing) is neither: it is left out of the
//!   count, and a window or day with only `unknown` rounds reads "No data",
//!   never 100 %.

use crate::judge::{RegionState, Verdict, VerdictKind};

/// One day or hour in ms.
pub const DAY_MS: i64 = 86_400_000;
pub const HOUR_MS: i64 = 3_600_000;
/// Cells in the uptime bar.
pub const BAR_DAYS: usize = 90;

/// A public check's current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicState {
    Operational,
    Degraded,
    /// `transit`: the regions that could not deliver, by name.
    Regional(Vec<String>),
    Outage,
    NoData,
}

impl PublicState {
    /// From the check's latest verdict (None: no round decided yet).
    pub fn of(latest: Option<&Verdict>) -> PublicState {
        let Some(v) = latest else {
            return PublicState::NoData;
        };
        match v.verdict {
            VerdictKind::Up => PublicState::Operational,
            VerdictKind::Degraded | VerdictKind::Deferred => PublicState::Degraded,
            VerdictKind::Transit => PublicState::Regional(
                v.regions
                    .iter()
                    .filter(|r| matches!(r.state, RegionState::Failed | RegionState::Missing))
                    .map(|r| r.region.clone())
                    .collect(),
            ),
            VerdictKind::Down => PublicState::Outage,
            VerdictKind::Unknown => PublicState::NoData,
        }
    }

    /// What a visitor reads.
    pub fn words(&self) -> String {
        match self {
            PublicState::Operational => "Operational".into(),
            PublicState::Degraded => "Degraded performance".into(),
            PublicState::Regional(r) if r.is_empty() => "Regional delivery delays".into(),
            PublicState::Regional(r) => format!("Regional delivery delays ({})", r.join(", ")),
            PublicState::Outage => "Outage".into(),
            PublicState::NoData => "No data".into(),
        }
    }

    /// The CSS class and badge colour family.
    pub fn class(&self) -> &'static str {
        match self {
            PublicState::Operational => "up",
            PublicState::Degraded => "degraded",
            PublicState::Regional(_) => "regional",
            PublicState::Outage => "down",
            PublicState::NoData => "nodata",
        }
    }

    /// Statuspage's component status. There is no "unknown" there; no data
    /// is reported as `degraded_performance` (the mildest state that is
    /// not a claim that all is well) with "No data" as its description.
    pub fn component_status(&self) -> &'static str {
        match self {
            PublicState::Operational => "operational",
            PublicState::Degraded | PublicState::NoData => "degraded_performance",
            PublicState::Regional(_) => "partial_outage",
            PublicState::Outage => "major_outage",
        }
    }

    /// How bad it is, for the page's overall line (0: fine).
    fn rank(&self) -> u8 {
        match self {
            PublicState::Operational => 0,
            PublicState::NoData => 1,
            PublicState::Degraded => 2,
            PublicState::Regional(_) => 3,
            PublicState::Outage => 4,
        }
    }
}

/// The page's one-line summary: Statuspage's `status.indicator` and
/// `status.description` from the worst public check.
pub fn overall(states: &[PublicState]) -> (&'static str, &'static str) {
    match states.iter().map(PublicState::rank).max() {
        None => ("none", "No public checks"),
        Some(0) => ("none", "All Systems Operational"),
        Some(1) | Some(2) => ("minor", "Minor Service Disruption"),
        Some(3) => ("major", "Partial System Outage"),
        Some(_) => ("critical", "Major System Outage"),
    }
}

/// Rounds per verdict in some span of time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub up: u64,
    pub degraded: u64,
    pub deferred: u64,
    pub transit: u64,
    pub down: u64,
    pub unknown: u64,
}

impl Tally {
    pub fn add(&mut self, kind: VerdictKind, rounds: u64) {
        let slot = match kind {
            VerdictKind::Up => &mut self.up,
            VerdictKind::Degraded => &mut self.degraded,
            VerdictKind::Deferred => &mut self.deferred,
            VerdictKind::Transit => &mut self.transit,
            VerdictKind::Down => &mut self.down,
            VerdictKind::Unknown => &mut self.unknown,
        };
        *slot += rounds;
    }

    pub fn merge(&mut self, other: &Tally) {
        self.up += other.up;
        self.degraded += other.degraded;
        self.deferred += other.deferred;
        self.transit += other.transit;
        self.down += other.down;
        self.unknown += other.unknown;
    }

    /// Rounds that say something about the service (all but `unknown`).
    pub fn known(&self) -> u64 {
        self.up + self.degraded + self.deferred + self.transit + self.down
    }

    /// Uptime in percent of the known rounds; None: no data.
    pub fn uptime(&self) -> Option<f64> {
        let known = self.known();
        (known > 0).then(|| (known - self.down) as f64 * 100.0 / known as f64)
    }

    /// The day cell's colour: the worst verdict of the span.
    pub fn worst(&self) -> Cell {
        if self.down > 0 {
            Cell::Down
        } else if self.transit > 0 {
            Cell::Regional
        } else if self.degraded + self.deferred > 0 {
            Cell::Degraded
        } else if self.up > 0 {
            Cell::Up
        } else {
            Cell::NoData
        }
    }
}

/// One cell of the uptime bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell {
    Up,
    Degraded,
    Regional,
    Down,
    NoData,
}

impl Cell {
    pub fn class(self) -> &'static str {
        match self {
            Cell::Up => "up",
            Cell::Degraded => "degraded",
            Cell::Regional => "regional",
            Cell::Down => "down",
            Cell::NoData => "nodata",
        }
    }

    /// The day cell's class (short: a page has thousands of cells).
    pub fn short(self) -> &'static str {
        match self {
            Cell::Up => "u",
            Cell::Degraded => "g",
            Cell::Regional => "r",
            Cell::Down => "x",
            Cell::NoData => "n",
        }
    }

    pub fn words(self) -> &'static str {
        match self {
            Cell::Up => "operational",
            Cell::Degraded => "degraded performance",
            Cell::Regional => "regional delivery delays",
            Cell::Down => "outage",
            Cell::NoData => "no data",
        }
    }
}

/// `99.95 %`, cut (never rounded up: 99.999 is not 100.00) to two
/// decimals; `No data` for None.
pub fn fmt_uptime(p: Option<f64>) -> String {
    match p {
        None => "No data".into(),
        Some(p) => format!("{:.2} %", (p * 100.0).floor() / 100.0),
    }
}

/// The uptime windows shown, with their labels.
pub const WINDOWS: [(&str, Window); 4] = [
    ("Uptime 24 h", Window::Hours(24)),
    ("7 days", Window::Days(7)),
    ("30 days", Window::Days(30)),
    ("90 days", Window::Days(90)),
];

/// A window ending now: the last `n` whole-or-current UTC hours or days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Hours(u32),
    Days(u32),
}

impl Window {
    /// The start of the oldest bucket in the window.
    pub fn since_ms(self, now_ms: i64) -> i64 {
        match self {
            Window::Hours(n) => now_ms.div_euclid(HOUR_MS) * HOUR_MS - (n as i64 - 1) * HOUR_MS,
            Window::Days(n) => now_ms.div_euclid(DAY_MS) * DAY_MS - (n as i64 - 1) * DAY_MS,
        }
    }
}

/// One check's counts: per hour (the last 24) and per UTC day (the last 90).
#[derive(Debug, Clone, Default)]
pub struct History {
    /// (bucket start ms, tally), any order.
    pub hours: Vec<(i64, Tally)>,
    pub days: Vec<(i64, Tally)>,
}

impl History {
    /// The tally of `window` ending at `now_ms`.
    pub fn window(&self, window: Window, now_ms: i64) -> Tally {
        let since = window.since_ms(now_ms);
        let buckets = match window {
            Window::Hours(_) => &self.hours,
            Window::Days(_) => &self.days,
        };
        let mut t = Tally::default();
        for (start, tally) in buckets {
            if *start >= since && *start <= now_ms {
                t.merge(tally);
            }
        }
        t
    }

    /// [`BAR_DAYS`] cells, oldest first: (day start ms, tally).
    pub fn bar(&self, now_ms: i64) -> Vec<(i64, Tally)> {
        let first = Window::Days(BAR_DAYS as u32).since_ms(now_ms);
        (0..BAR_DAYS as i64)
            .map(|i| {
                let day = first + i * DAY_MS;
                let mut t = Tally::default();
                for (_, tally) in self.days.iter().filter(|(s, _)| *s == day) {
                    t.merge(tally);
                }
                (day, t)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::RegionEvidence;

    fn tally(counts: &[(VerdictKind, u64)]) -> Tally {
        let mut t = Tally::default();
        for (k, n) in counts {
            t.add(*k, *n);
        }
        t
    }

    fn uptime(counts: &[(VerdictKind, u64)]) -> String {
        fmt_uptime(tally(counts).uptime())
    }

    #[test]
    fn transit_is_not_downtime_and_unknown_is_no_data() {
        use VerdictKind::*;
        assert_eq!(uptime(&[(Up, 3), (Down, 1)]), "75.00 %");
        assert_eq!(uptime(&[(Up, 3), (Transit, 1)]), "100.00 %");
        assert_eq!(
            uptime(&[(Up, 1), (Degraded, 1), (Deferred, 1), (Down, 1)]),
            "75.00 %"
        );
        assert_eq!(uptime(&[(Up, 3), (Down, 1), (Unknown, 4)]), "75.00 %");
        assert_eq!(uptime(&[(Unknown, 4)]), "No data");
        assert_eq!(uptime(&[]), "No data");
        // Cut, never rounded up to a perfect score.
        assert_eq!(uptime(&[(Up, 99_999), (Down, 1)]), "99.99 %");
    }

    #[test]
    fn a_day_takes_its_worst_colour() {
        use VerdictKind::*;
        assert_eq!(
            tally(&[(Up, 5), (Down, 1), (Transit, 1)]).worst(),
            Cell::Down
        );
        assert_eq!(
            tally(&[(Up, 5), (Transit, 1), (Degraded, 1)]).worst(),
            Cell::Regional
        );
        assert_eq!(tally(&[(Up, 5), (Deferred, 1)]).worst(), Cell::Degraded);
        assert_eq!(tally(&[(Up, 5), (Unknown, 9)]).worst(), Cell::Up);
        assert_eq!(tally(&[(Unknown, 9)]).worst(), Cell::NoData);
    }

    fn verdict(kind: VerdictKind, regions: &[(&str, RegionState)]) -> Verdict {
        Verdict {
            check_id: "c".into(),
            round: 1,
            round_start_ms: 0,
            decided_at_ms: 0,
            verdict: kind,
            quorum: 1,
            regions: regions
                .iter()
                .map(|(r, s)| {
                    let mut e: RegionEvidence = serde_json::from_value(serde_json::json!({
                        "region": r, "state": s, "probe_id": null, "agent": null, "outcome": null,
                        "step": null, "class": null, "code": null, "enhanced": null, "text": null,
                        "slow": [], "reasons": [], "rtt_ms": null,
                    }))
                    .unwrap();
                    e.state = *s;
                    e
                })
                .collect(),
            note: String::new(),
        }
    }

    #[test]
    fn states_in_words() {
        use RegionState::*;
        let words = |v: Option<Verdict>| PublicState::of(v.as_ref()).words();
        assert_eq!(words(None), "No data");
        assert_eq!(words(Some(verdict(VerdictKind::Up, &[]))), "Operational");
        assert_eq!(
            words(Some(verdict(VerdictKind::Degraded, &[]))),
            "Degraded performance"
        );
        assert_eq!(
            words(Some(verdict(VerdictKind::Deferred, &[]))),
            "Degraded performance"
        );
        assert_eq!(
            words(Some(verdict(
                VerdictKind::Transit,
                &[("eu-west", Failed), ("us-east", Ok)]
            ))),
            "Regional delivery delays (eu-west)"
        );
        assert_eq!(words(Some(verdict(VerdictKind::Down, &[]))), "Outage");
        assert_eq!(words(Some(verdict(VerdictKind::Unknown, &[]))), "No data");
    }

    #[test]
    fn windows_and_bar() {
        let now = 100 * DAY_MS + 5 * HOUR_MS;
        let mut h = History::default();
        h.days
            .push((now - now % DAY_MS, tally(&[(VerdictKind::Down, 1)])));
        h.days.push((
            now - now % DAY_MS - 10 * DAY_MS,
            tally(&[(VerdictKind::Up, 3)]),
        ));
        h.days.push((
            now - now % DAY_MS - 95 * DAY_MS,
            tally(&[(VerdictKind::Down, 7)]),
        ));
        assert_eq!(h.window(Window::Days(7), now).down, 1);
        assert_eq!(h.window(Window::Days(30), now).known(), 4);
        assert_eq!(h.window(Window::Days(90), now).down, 1);
        let bar = h.bar(now);
        assert_eq!(bar.len(), BAR_DAYS);
        assert_eq!(bar.last().unwrap().1.worst(), Cell::Down);
        assert_eq!(bar[BAR_DAYS - 11].1.worst(), Cell::Up);
        assert_eq!(bar[0].1.worst(), Cell::NoData);
        assert_eq!(
            overall(&[PublicState::Operational, PublicState::Outage]).0,
            "critical"
        );
        assert_eq!(
            overall(&[PublicState::Operational]).1,
            "All Systems Operational"
        );
    }
}
