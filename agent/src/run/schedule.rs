//! The scheduler: one task per assigned check, running it round by round.
//!
//! Round `k` of a check starts at unix-epoch millisecond
//! `k * interval_ms + phase_ms`, the same moment in every region, plus a
//! small per-run jitter (at most 1/20 of the interval, at most 1 s) so
//! checks that share a phase do not fire in the same millisecond. A task
//! never overlaps itself: a probe that runs past its interval makes the
//! task skip to the next round still ahead.
//!
//! The scheduler does not care whether the coordinator is reachable: it
//! runs from the assignments it holds (kept in the spool, so they survive a
//! restart) and hands every report to the spool.
//!
//! Shutdown goes through the [`ProbeGate`]: once it is closed no probe
//! starts, and the caller waits for the probes in flight to drain.
//!
//! Two things besides the rounds:
//! - [`Scheduler::run_now`]: an on-demand run (the coordinator's RunNow)
//!   runs a held check once, at once, in a task of its own, so the check's
//!   round task and its round numbers are untouched. Its report carries
//!   round 0 (no scheduled round) and the request id.
//! - [`Scheduler::suspend`]: when the coordinator refuses the agent's token
//!   the agent stops probing but keeps its assignments (and the spool), so
//!   [`Scheduler::resume_probing`] can start them again if the token is
//!   accepted again.

use super::spool::{AssignedCheck, Spool, SpooledReport, now_ms};
use crate::probe::Prober;
use crate::telemetry::Telemetry;
use mailloop_common::config::{DnsConfig, Secrets, check_from_value};
use mailloop_common::{Outcome, ProbeReport};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// Where an assignment came from (only the coordinator's are saved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Coordinator,
    /// Loaded from the spool at start-up.
    Spool,
}

/// Holds the assignments and runs a task for each valid one.
pub struct Scheduler {
    held: BTreeMap<String, Held>,
    spool: Spool,
    dns: DnsConfig,
    gate: ProbeGate,
    /// The agent's `connect_to` rules, handed to every prober.
    pub connect_to: crate::transport::ConnectTo,
    /// Where finished probes go as traces (none: export off).
    pub telemetry: Option<Arc<Telemetry>>,
    /// True while the coordinator refuses this agent: nothing runs.
    suspended: bool,
}

struct Held {
    assignment: AssignedCheck,
    /// None: the assignment is invalid here (it never runs).
    prober: Option<Arc<Prober>>,
    /// Dropping it stops the check's task (after a probe in flight ends).
    /// None: not running (invalid here, or suspended).
    running: Option<oneshot::Sender<()>>,
}

impl Scheduler {
    pub fn new(spool: Spool, dns: DnsConfig, gate: ProbeGate) -> Scheduler {
        Scheduler { held: BTreeMap::new(), spool, dns, gate, connect_to: Default::default(), telemetry: None, suspended: false }
    }

    /// Starts the assignments saved in the spool (the last ones the
    /// coordinator gave). Returns how many there were.
    pub async fn resume(&mut self) -> Result<usize, super::spool::SpoolError> {
        let saved = self.spool.assignments().await?;
        let n = saved.len();
        if n > 0 {
            tracing::info!("resuming {n} assignment(s) from the spool until the coordinator says otherwise");
        }
        for a in saved {
            self.upsert(a, Origin::Spool).await;
        }
        Ok(n)
    }

    /// Check ids and revisions held (valid or not), for `WatchRequest.known`.
    pub fn known(&self) -> Vec<(String, u64)> {
        self.held.iter().map(|(id, h)| (id.clone(), h.assignment.revision)).collect()
    }

    /// How many checks are running.
    pub fn running(&self) -> usize {
        self.held.values().filter(|h| h.running.is_some()).count()
    }

    /// Adds or changes an assignment. A check that does not validate here
    /// (say the password variable is missing in this region) is logged
    /// with every issue and held without running.
    pub async fn upsert(&mut self, a: AssignedCheck, origin: Origin) {
        let id = a.check_id.clone();
        match self.held.get(&id) {
            Some(h) if h.assignment == a => {
                tracing::debug!("assignment unchanged: check {id} revision {}", a.revision);
                return;
            }
            Some(h) => tracing::info!(
                "assignment changed: check {id} revision {} -> {}, every {}, phase {}",
                h.assignment.revision,
                a.revision,
                ms(a.interval_ms),
                ms(a.phase_ms)
            ),
            None if origin == Origin::Spool => tracing::info!(
                "assignment resumed: check {id} revision {}, every {}, phase {}",
                a.revision,
                ms(a.interval_ms),
                ms(a.phase_ms)
            ),
            None => tracing::info!(
                "assignment added: check {id} revision {}, every {}, phase {}",
                a.revision,
                ms(a.interval_ms),
                ms(a.phase_ms)
            ),
        }
        if origin == Origin::Coordinator
            && let Err(e) = self.spool.save_assignment(a.clone()).await
        {
            tracing::error!("cannot save assignment {id} in the spool (it will not survive a restart): {e}");
        }
        // The old revision's task stops before the new one starts.
        self.held.remove(&id);
        let prober = self.build(&a).await;
        let running = match &prober {
            Some(p) if !self.suspended => self.spawn(&a, p.clone()),
            _ => None,
        };
        self.held.insert(id, Held { assignment: a, prober, running });
    }

    /// Runs a held check once, now, outside its rounds (an on-demand run):
    /// its report has round 0 and `request_id`, and its trace is a child of
    /// `traceparent` (the caller's W3C trace context) when given. Returns
    /// false (and says why in the log) when it cannot run.
    pub fn run_now(&self, check_id: &str, request_id: &str, traceparent: Option<&str>) -> bool {
        let Some(held) = self.held.get(check_id) else {
            tracing::warn!("on-demand run {request_id} of check {check_id} not run: this agent does not hold the check");
            return false;
        };
        let Some(prober) = held.prober.clone() else {
            tracing::warn!("on-demand run {request_id} of check {check_id} not run: the check is invalid here (see its assignment's errors)");
            return false;
        };
        if self.suspended {
            tracing::warn!("on-demand run {request_id} of check {check_id} not run: probing is suspended");
            return false;
        }
        let Some(in_flight) = self.gate.enter() else {
            tracing::info!("on-demand run {request_id} of check {check_id} not run: shutting down");
            return false;
        };
        tracing::info!("on-demand run {request_id} of check {check_id}: starting now");
        let (assignment, spool, request_id) = (held.assignment.clone(), self.spool.clone(), request_id.to_string());
        let telemetry = self.telemetry.clone();
        let traceparent = traceparent.map(str::to_string);
        tokio::spawn(async move {
            let started_ms = now_ms();
            let mut report = Box::pin(prober.run()).await;
            trace(telemetry.as_deref(), &prober, &mut report, traceparent.as_deref());
            spool_report(&spool, &assignment, 0, Some(request_id), &report, started_ms).await;
            drop(in_flight);
        });
        true
    }

    /// Stops every check's task (a probe in flight finishes and is
    /// spooled) but keeps the assignments. Returns how many checks were running.
    pub fn suspend(&mut self) -> usize {
        self.suspended = true;
        self.held.values_mut().filter_map(|h| h.running.take()).count()
    }

    /// Whether [`Scheduler::suspend`] is in force.
    pub fn is_suspended(&self) -> bool {
        self.suspended
    }

    /// Starts the held checks again after [`Scheduler::suspend`]; returns
    /// how many. Does nothing when not suspended.
    pub fn resume_probing(&mut self) -> usize {
        if !std::mem::take(&mut self.suspended) {
            return 0;
        }
        let mut n = 0;
        let ids: Vec<String> = self.held.keys().cloned().collect();
        for id in ids {
            let h = &self.held[&id];
            let Some(p) = h.prober.clone() else { continue };
            let running = self.spawn(&h.assignment, p);
            n += usize::from(running.is_some());
            self.held.get_mut(&id).expect("held").running = running;
        }
        n
    }

    /// Removes an assignment: its task starts no further probe.
    pub async fn remove(&mut self, check_id: &str) {
        match self.held.remove(check_id) {
            Some(h) => tracing::info!("assignment removed: check {check_id} (was revision {})", h.assignment.revision),
            None => tracing::debug!("assignment removed: check {check_id}, which this agent did not hold"),
        }
        if let Err(e) = self.spool.remove_assignment(check_id.to_string()).await {
            tracing::error!("cannot remove assignment {check_id} from the spool (it may come back after a restart): {e}");
        }
    }

    /// Validates the check and builds its prober; None if it is unusable.
    async fn build(&self, a: &AssignedCheck) -> Option<Arc<Prober>> {
        let id = a.check_id.clone();
        let skipped = |why: String| {
            tracing::error!("assignment {id} (revision {}) skipped: {why}", a.revision);
            None
        };
        if a.interval_ms == 0 {
            return skipped("interval_ms is 0".into());
        }
        let json: serde_json::Value = match serde_json::from_str(&a.check_json) {
            Ok(v) => v,
            Err(e) => return skipped(format!("check_json is not JSON: {e}")),
        };
        let (dns, connect_to) = (self.dns.clone(), self.connect_to.clone());
        let path = format!("assignment {id}");
        // Validation reads password and CA files; the prober loads trust roots.
        let built = tokio::task::spawn_blocking(move || {
            let check = check_from_value(&path, &json, &|k| std::env::var(k).ok(), Secrets::Resolve).map_err(|issues| {
                let n = issues.len();
                let list: Vec<String> = issues.into_iter().map(|i| format!("{}: {}", i.path, i.message)).collect();
                format!("{n} config error{}: {}", if n == 1 { "" } else { "s" }, list.join("; "))
            })?;
            Prober::new(check, &dns).map(|p| p.with_connect_to(connect_to))
        })
        .await;
        match built {
            Ok(Ok(p)) => Some(Arc::new(p)),
            Ok(Err(why)) => skipped(why),
            Err(e) => skipped(format!("validation failed: {e}")),
        }
    }

    /// Spawns the check's round task; None once shutdown has begun.
    fn spawn(&self, a: &AssignedCheck, prober: Arc<Prober>) -> Option<oneshot::Sender<()>> {
        if self.gate.is_closed() {
            return None;
        }
        let (stop, stopped) = oneshot::channel();
        let task = CheckTask {
            assignment: a.clone(),
            prober,
            spool: self.spool.clone(),
            gate: self.gate.clone(),
            telemetry: self.telemetry.clone(),
        };
        tokio::spawn(task.run(stopped));
        Some(stop)
    }
}

/// Formats milliseconds for logs ("1s", "5m", "250ms").
fn ms(v: u64) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_millis(v))
}

/// One check's rounds.
struct CheckTask {
    assignment: AssignedCheck,
    prober: Arc<Prober>,
    spool: Spool,
    gate: ProbeGate,
    telemetry: Option<Arc<Telemetry>>,
}

impl CheckTask {
    async fn run(self, mut stopped: oneshot::Receiver<()>) {
        let a = &self.assignment;
        let rounds = Rounds::new(a.interval_ms, a.phase_ms);
        let mut round = rounds.first_at_or_after(now_ms());
        loop {
            let start = rounds.jittered_start_ms(round);
            let wait = Duration::from_millis((start - now_ms()).max(0) as u64);
            tokio::select! {
                _ = &mut stopped => return,
                _ = self.gate.closed() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let Some(in_flight) = self.gate.enter() else { return };
            let started_ms = now_ms();
            // Boxed: a probe's state is ~40 KiB, and an idle task should not
            // carry it between rounds (1,000 checks would hold 40 MiB).
            let mut report = Box::pin(self.prober.run()).await;
            trace(self.telemetry.as_deref(), &self.prober, &mut report, None);
            spool_report(&self.spool, a, round, None, &report, started_ms).await;
            drop(in_flight);
            let next = rounds.first_at_or_after(now_ms()).max(round + 1);
            if next > round + 1 {
                tracing::warn!(
                    "check {}: round {round} ran past its interval; skipping to round {next} ({} round(s) not run)",
                    a.check_id,
                    next - round - 1
                );
            }
            round = next;
        }
    }
}

/// Queues the probe's trace for export (never waits) and notes its ids in
/// the report, so the coordinator can link its verdict to it. An on-demand
/// run's probe span is a child of the caller's `traceparent`.
fn trace(telemetry: Option<&Telemetry>, prober: &Prober, report: &mut ProbeReport, traceparent: Option<&str>) {
    if let Some(t) = telemetry {
        let ids = t.record_in(report, prober.check(), traceparent);
        report.trace_id = Some(ids.trace_id);
        report.span_id = Some(ids.span_id);
    }
}

/// Hands a finished probe's report to the spool and logs its verdict.
/// Round 0 with a `request_id` is an on-demand run.
async fn spool_report(spool: &Spool, a: &AssignedCheck, round: u64, request_id: Option<String>, report: &ProbeReport, started_ms: i64) {
    let report_json = match serde_json::to_value(report) {
        Ok(v) => fit(v, MAX_REPORT_BYTES),
        Err(e) => {
            tracing::error!("probe {}: cannot encode the report: {e}", report.probe_id);
            return;
        }
    };
    let report_json = match report_json {
        Fit::Whole(j) => j,
        Fit::Trimmed { json, was } => {
            tracing::error!(
                "probe {}: the report is {was} bytes, more than a coordinator accepts ({MAX_REPORT_BYTES}); long texts in it were cut to {TRIMMED_TEXT} bytes",
                report.probe_id
            );
            json
        }
    };
    let spooled = SpooledReport {
        probe_id: report.probe_id.clone(),
        check_id: a.check_id.clone(),
        revision: a.revision,
        round,
        report_json,
        request_id: request_id.clone(),
    };
    let verdict = match (&report.outcome, &report.failure) {
        (Outcome::Failed, Some(f)) => format!("failed at {} ({})", f.step, f.class),
        (outcome, _) => outcome.as_str().to_string(),
    };
    let run = match &request_id {
        Some(id) => format!("on-demand run {id}"),
        None => format!("round {round}"),
    };
    match spool.push(spooled, report.outcome.as_str(), started_ms).await {
        Ok(waiting) => tracing::info!(
            "probe {} of check {} {run}: {verdict}; spooled ({waiting} waiting)",
            report.probe_id,
            a.check_id
        ),
        Err(e) => tracing::error!("probe {} of check {} {run}: {verdict}; NOT spooled: {e}", report.probe_id, a.check_id),
    }
}

/// The largest report sent as is: the coordinator's default message limit
/// (1 MiB) less room for the rest of the message. A larger one would fail
/// its stream on every replay and hold up the whole spool behind it.
pub const MAX_REPORT_BYTES: usize = 1024 * 1024 - 4096;
/// What a text in an oversized report is cut to.
const TRIMMED_TEXT: usize = 1024;

/// A report's JSON, cut down if it had to be.
#[derive(Debug)]
enum Fit {
    Whole(String),
    Trimmed { json: String, was: usize },
}

/// Serializes `report`; past `limit` bytes, every string longer than
/// [`TRIMMED_TEXT`] is cut (header texts, server replies: the bulk of a
/// large report), so the structure and every number survive.
fn fit(mut report: serde_json::Value, limit: usize) -> Fit {
    let json = report.to_string();
    if json.len() <= limit {
        return Fit::Whole(json);
    }
    fn cut(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::String(s) if s.len() > TRIMMED_TEXT => {
                let mut end = TRIMMED_TEXT;
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                s.truncate(end);
                s.push_str("…[cut]");
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(cut),
            serde_json::Value::Object(map) => map.values_mut().for_each(cut),
            _ => {}
        }
    }
    cut(&mut report);
    Fit::Trimmed { json: report.to_string(), was: json.len() }
}

/// The round arithmetic of one check: round k starts at
/// `k * interval_ms + phase_ms` (unix epoch milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rounds {
    interval_ms: u64,
    phase_ms: u64,
}

impl Rounds {
    /// `interval_ms` must not be 0; a phase past the interval wraps.
    pub fn new(interval_ms: u64, phase_ms: u64) -> Rounds {
        let interval_ms = interval_ms.max(1);
        Rounds { interval_ms, phase_ms: phase_ms % interval_ms }
    }

    pub fn start_ms(&self, round: u64) -> i64 {
        (round.saturating_mul(self.interval_ms).saturating_add(self.phase_ms)) as i64
    }

    /// The first round that starts at or after `now_ms`.
    pub fn first_at_or_after(&self, now_ms: i64) -> u64 {
        let since_phase = (now_ms.max(0) as u64).saturating_sub(self.phase_ms);
        since_phase.div_ceil(self.interval_ms)
    }

    /// The most a run may start after its round's moment.
    pub fn max_jitter_ms(&self) -> u64 {
        (self.interval_ms / 20).min(1000)
    }

    /// When round `round` actually starts: its moment plus a uniformly
    /// random jitter of up to [`Rounds::max_jitter_ms`], so checks of the
    /// same interval do not all fire in the same millisecond.
    pub fn jittered_start_ms(&self, round: u64) -> i64 {
        self.start_ms(round) + random_below(self.max_jitter_ms() + 1) as i64
    }
}

/// A uniformly random number in `0..n` (0 when n is 0).
pub fn random_below(n: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    let mut b = [0u8; 8];
    // getrandom only fails where the OS has no entropy source at all.
    getrandom::fill(&mut b).expect("the OS random source is available");
    u64::from_le_bytes(b) % n
}

/// Lets probes start until shutdown, and counts those in flight.
#[derive(Clone)]
pub struct ProbeGate(Arc<watch::Sender<GateState>>);

#[derive(Debug, Clone, Copy, Default)]
struct GateState {
    closed: bool,
    in_flight: usize,
}

/// A probe in flight; dropping it counts the probe as done.
pub struct InFlight(ProbeGate);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.0.send_modify(|s| s.in_flight -= 1);
    }
}

impl Default for ProbeGate {
    fn default() -> Self {
        ProbeGate(Arc::new(watch::Sender::new(GateState::default())))
    }
}

impl ProbeGate {
    /// Admits one probe, unless the gate is closed.
    pub fn enter(&self) -> Option<InFlight> {
        let admitted = self.0.send_if_modified(|s| {
            if s.closed {
                return false;
            }
            s.in_flight += 1;
            true
        });
        admitted.then(|| InFlight(self.clone()))
    }

    /// Starts no probe from now on; returns how many are in flight.
    pub fn close(&self) -> usize {
        let mut n = 0;
        self.0.send_modify(|s| {
            s.closed = true;
            n = s.in_flight;
        });
        n
    }

    pub fn is_closed(&self) -> bool {
        self.0.borrow().closed
    }

    pub fn in_flight(&self) -> usize {
        self.0.borrow().in_flight
    }

    /// Completes once the gate is closed.
    pub async fn closed(&self) {
        let mut rx = self.0.subscribe();
        // The sender lives in self, so wait_for cannot fail.
        let _ = rx.wait_for(|s| s.closed).await;
    }

    /// Completes once no probe is in flight.
    pub async fn drained(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|s| s.in_flight == 0).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_k_starts_at_k_intervals_plus_phase() {
        let r = Rounds::new(60_000, 15_000);
        assert_eq!(r.start_ms(0), 15_000);
        assert_eq!(r.start_ms(3), 195_000);
    }

    #[test]
    fn the_first_round_is_the_next_one_not_yet_started() {
        let r = Rounds::new(60_000, 15_000);
        assert_eq!(r.first_at_or_after(0), 0);
        assert_eq!(r.first_at_or_after(15_000), 0, "exactly on the moment: this round");
        assert_eq!(r.first_at_or_after(15_001), 1);
        assert_eq!(r.first_at_or_after(75_000), 1);
        assert_eq!(r.first_at_or_after(1_700_000_000_123), (1_700_000_000_123u64 - 15_000).div_ceil(60_000));
    }

    #[test]
    fn a_phase_past_the_interval_wraps() {
        assert_eq!(Rounds::new(1000, 2500), Rounds::new(1000, 500));
    }

    #[test]
    fn jitter_is_a_twentieth_of_the_interval_at_most_a_second() {
        assert_eq!(Rounds::new(1000, 0).max_jitter_ms(), 50);
        assert_eq!(Rounds::new(300_000, 0).max_jitter_ms(), 1000);
    }

    /// Every run starts inside its round's jitter window, and the starts
    /// spread over the whole window (no constant offset, no clumping): a
    /// missing or broken jitter fails one of the two. The bucket floor is
    /// half the expected count, more than 7 standard deviations away.
    #[test]
    fn runs_start_within_the_jitter_window_and_spread_over_it() {
        let r = Rounds::new(60_000, 15_000);
        let max = r.max_jitter_ms() as i64;
        assert_eq!(max, 1000);
        let draws = 2000;
        let mut buckets = [0u32; 10];
        for _ in 0..draws {
            let offset = r.jittered_start_ms(7) - r.start_ms(7);
            assert!((0..=max).contains(&offset), "offset {offset} outside 0..={max}");
            buckets[(offset.min(max - 1) * 10 / max) as usize] += 1;
        }
        let floor = draws / buckets.len() as u32 / 2;
        assert!(buckets.iter().all(|&b| b >= floor), "uneven jitter: {buckets:?}");
    }

    /// `random_below(n)` stays in `0..n` and reaches every value of it.
    #[test]
    fn random_below_covers_exactly_its_range() {
        assert_eq!(random_below(0), 0);
        assert_eq!(random_below(1), 0);
        let mut seen = [false; 51];
        for _ in 0..5000 {
            let v = random_below(51);
            assert!(v < 51, "{v} out of 0..51");
            seen[v as usize] = true;
        }
        let missing: Vec<usize> = (0..51).filter(|&i| !seen[i]).collect();
        assert!(missing.is_empty(), "never drawn in 5000 tries: {missing:?}");
    }

    #[test]
    fn an_oversized_report_keeps_its_shape_and_loses_long_texts() {
        let small = serde_json::json!({"probe_id": "ml-1", "steps": [{"detail": "ok"}]});
        let whole = small.to_string();
        assert!(matches!(fit(small, 1000), Fit::Whole(j) if j == whole));
        let big = serde_json::json!({"probe_id": "ml-1", "rtt_ms": 12.5, "auth": {"raw": ["é".repeat(5000)]}});
        let Fit::Trimmed { json, was } = fit(big, 4000) else { panic!("not trimmed") };
        assert!(was > 10_000 && json.len() < 2000, "{was} -> {}", json.len());
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!((v["probe_id"].as_str(), v["rtt_ms"].as_f64()), (Some("ml-1"), Some(12.5)));
        assert!(v["auth"]["raw"][0].as_str().unwrap().ends_with("…[cut]"));
    }

    #[tokio::test]
    async fn a_closed_gate_admits_nothing_and_drains() {
        let gate = ProbeGate::default();
        let a = gate.enter().unwrap();
        let b = gate.enter().unwrap();
        assert_eq!(gate.close(), 2);
        assert!(gate.enter().is_none());
        drop(a);
        assert_eq!(gate.in_flight(), 1);
        drop(b);
        tokio::time::timeout(Duration::from_secs(1), gate.drained()).await.unwrap();
        tokio::time::timeout(Duration::from_secs(1), gate.closed()).await.unwrap();
    }

    #[tokio::test]
    async fn run_now_reports_round_zero_and_leaves_the_rounds_and_suspend_keeps_the_assignments() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("spool.db"), 10).unwrap();
        // Nothing listens on port 9: the probe fails at once (a report all the same).
        let check = serde_json::json!({
            "name": "x", "from": "a@example.test", "to": "b@example.test", "verify_dkim": false, "spf": {"enabled": false},
            "smtp": {"host": "127.0.0.1", "port": 9, "security": "none"},
            "imap": {"host": "127.0.0.1", "port": 9, "security": "none", "username": "u", "password": "p"}
        });
        // Hourly, with the round an hour away: no scheduled probe during the test.
        let interval_ms = 3_600_000;
        let phase_ms = ((now_ms() as u64) + interval_ms / 2) % interval_ms;
        let a = AssignedCheck { check_id: "x".into(), revision: 3, check_json: check.to_string(), interval_ms, phase_ms };
        let mut s = Scheduler::new(spool.clone(), DnsConfig::default(), ProbeGate::default());
        s.upsert(a, Origin::Coordinator).await;
        assert_eq!(s.running(), 1);

        assert!(!s.run_now("nope", "run-1", None), "a check it does not hold is not run");
        assert!(s.run_now("x", "run-2", None));
        let mut waiting = spool.watch_waiting();
        tokio::time::timeout(Duration::from_secs(10), waiting.wait_for(|n| *n == 1)).await.unwrap().unwrap();
        let (_, r) = spool.after(0, 10).await.unwrap().pop().unwrap();
        assert_eq!((r.check_id.as_str(), r.revision, r.round, r.request_id.as_deref()), ("x", 3, 0, Some("run-2")));
        assert_eq!(s.running(), 1, "the round task is still there");

        assert_eq!(s.suspend(), 1);
        assert!(s.is_suspended() && s.running() == 0);
        assert_eq!(s.known(), [("x".to_string(), 3)], "suspended, the assignment is kept");
        assert!(!s.run_now("x", "run-3", None), "no on-demand run while suspended");
        assert_eq!(s.resume_probing(), 1);
        assert_eq!(s.running(), 1);
        assert_eq!(s.resume_probing(), 0, "resuming twice starts nothing more");
    }

    #[tokio::test]
    async fn an_idle_check_task_does_not_carry_a_probe() {
        // 1,000 idle checks must fit in a small agent: the probe's own
        // state (tens of KiB) is allocated only while it runs.
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("spool.db"), 10).unwrap();
        let check = serde_json::json!({
            "name": "x", "from": "a@example.test", "to": "b@example.test", "verify_dkim": false, "spf": {"enabled": false},
            "smtp": {"host": "127.0.0.1", "port": 9, "security": "none"},
            "imap": {"host": "127.0.0.1", "port": 9, "security": "none", "username": "u", "password": "p"}
        });
        let check = check_from_value("x", &check, &|_| None, Secrets::Resolve).unwrap();
        let prober = Arc::new(Prober::new(check, &DnsConfig::default()).unwrap());
        let assignment = AssignedCheck { check_id: "x".into(), revision: 1, check_json: "{}".into(), interval_ms: 1000, phase_ms: 0 };
        let task = CheckTask { assignment, prober, spool, gate: ProbeGate::default(), telemetry: None };
        let (_stop, stopped) = oneshot::channel();
        let size = std::mem::size_of_val(&task.run(stopped));
        assert!(size < 4096, "an idle check task holds {size} bytes");
    }
}
