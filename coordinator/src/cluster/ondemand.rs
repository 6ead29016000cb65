//! On-demand runs: "run this check now, in every region" (`POST
//! /api/v1/checks/{id}/run`, `mailloopctl probe CHECK`).
//!
//! The API asks the hub (`Hub`) which agent runs the check in
//! each of its regions and places a [`RunOrder`] here. Every open
//! `WatchAssignments` stream follows the orders ([`OnDemand::subscribe`])
//! and turns an order naming its agent into a `RunNow` change, sent after
//! the check's own upsert. The agent runs the check once, beside its round
//! schedule, and reports it with `round = 0` and the order's request id;
//! the report is stored like any other, with the request id beside it
//! (`reports.request_id`), and found with `GET /api/v1/runs/{request_id}`.
//!
//! Several replicas (PostgreSQL): the replica that takes the order also
//! announces it through the database ([`notice`], `NOTIFY mailloop_runs`),
//! and every other replica places it for its own streams ([`OnDemand::relay`]),
//! so an agent connected to another replica runs it too. A replica knows
//! an order it placed by its request id and does not place it twice.
//! Orders are stored nowhere, so a replica that was not listening when one
//! was announced (its listening connection lost, the database briefly
//! away) asks, once it listens again, for the [`FRESH`] orders to be
//! announced once more ([`OnDemand::fresh_taken_here`]); the replica that
//! took the order also re-announces one it could not announce at first.
//!
//! Orders are fire-and-forget: nothing here waits for the reports. A region
//! whose agent vanishes before running it simply never reports; the caller
//! (mailloopctl) has a deadline. Recent orders are remembered in memory
//! ([`RECENT`]) only to answer "which regions were asked, and to whom".

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// Orders remembered for `GET /api/v1/runs/{request_id}`.
pub const RECENT: usize = 1000;
/// Orders a slow stream may fall behind before it misses some (logged).
const BACKLOG: usize = 256;
/// How long an order is worth announcing again to a replica that may have
/// missed it: `mailloopctl probe` waits two minutes by default.
pub const FRESH: std::time::Duration = std::time::Duration::from_secs(120);

/// One on-demand run, as sent to the watch streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOrder {
    pub request_id: String,
    pub check_id: String,
    /// The agents that should run it: one per region that has one.
    pub agents: Vec<String>,
    /// The W3C `traceparent` the agents' probe spans become children of.
    pub traceparent: Option<String>,
}

/// What an on-demand run was asked of, for the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunStarted {
    pub request_id: String,
    pub check_id: String,
    /// Region → the agent asked to run it (None: no agent connected there).
    pub regions: BTreeMap<String, Option<String>>,
    pub requested_at_ms: i64,
    /// The trace the run is part of (32 hex digits), when the caller sent
    /// a `traceparent` or the coordinator traces.
    pub trace_id: Option<String>,
    /// The W3C `traceparent` the agents were given (relayed to other replicas).
    pub traceparent: Option<String>,
    /// Taken by this replica's API (not relayed from another replica).
    pub taken_here: bool,
}

/// An order as announced to the other replicas.
#[derive(serde::Serialize, serde::Deserialize)]
struct Notice {
    request_id: String,
    check_id: String,
    regions: BTreeMap<String, Option<String>>,
    traceparent: Option<String>,
}

/// The announcement of `run` for the other replicas (JSON; PostgreSQL
/// carries up to 8,000 bytes, far more than one agent name per region).
pub fn notice(run: &RunStarted) -> String {
    serde_json::to_string(&Notice {
        request_id: run.request_id.clone(),
        check_id: run.check_id.clone(),
        regions: run.regions.clone(),
        traceparent: run.traceparent.clone(),
    })
    .expect("a notice serializes")
}

/// The orders in flight and the recent ones.
pub struct OnDemand {
    orders: broadcast::Sender<Arc<RunOrder>>,
    recent: Mutex<VecDeque<RunStarted>>,
}

impl Default for OnDemand {
    fn default() -> Self {
        OnDemand {
            orders: broadcast::channel(BACKLOG).0,
            recent: Mutex::new(VecDeque::new()),
        }
    }
}

impl OnDemand {
    /// Orders a run of `check_id` from the agents in `regions` (as
    /// `Hub::owners` answered) and returns it
    /// with a fresh request id.
    pub fn order(&self, check_id: &str, regions: BTreeMap<String, Option<String>>) -> RunStarted {
        self.order_as(new_request_id(), check_id, regions, None)
    }

    /// [`OnDemand::order`] with the request id chosen by the caller and the
    /// W3C `traceparent` the agents' probe spans join.
    pub fn order_as(
        &self,
        request_id: String,
        check_id: &str,
        regions: BTreeMap<String, Option<String>>,
        traceparent: Option<String>,
    ) -> RunStarted {
        self.place(request_id, check_id, regions, traceparent, true)
    }

    fn place(
        &self,
        request_id: String,
        check_id: &str,
        regions: BTreeMap<String, Option<String>>,
        traceparent: Option<String>,
        taken_here: bool,
    ) -> RunStarted {
        let started = RunStarted {
            request_id,
            check_id: check_id.to_string(),
            regions,
            requested_at_ms: crate::clock::now_ms(),
            trace_id: traceparent
                .as_deref()
                .and_then(|t| t.split('-').nth(1))
                .map(str::to_string),
            traceparent: traceparent.clone(),
            taken_here,
        };
        let agents: Vec<String> = started.regions.values().flatten().cloned().collect();
        if !agents.is_empty() {
            // No receiver (no agent connected at all) is not an error: the
            // regions already say None.
            let _ = self.orders.send(Arc::new(RunOrder {
                request_id: started.request_id.clone(),
                check_id: started.check_id.clone(),
                agents,
                traceparent,
            }));
        }
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(started.clone());
        started
    }

    /// Places an order another replica announced ([`notice`]) for the
    /// streams here; None when it is unreadable or already placed here
    /// (this replica's own announcement comes back to it too).
    pub fn relay(&self, payload: &str) -> Option<RunStarted> {
        let n: Notice = match serde_json::from_str(payload) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable on-demand run announced by another replica");
                return None;
            }
        };
        if self.find(&n.request_id).is_some() {
            return None;
        }
        Some(self.place(n.request_id, &n.check_id, n.regions, n.traceparent, false))
    }

    /// The orders this replica took whose runs may still be awaited (at
    /// most [`FRESH`] old at `now_ms`), oldest first: what it announces
    /// again when another replica has just started listening.
    pub fn fresh_taken_here(&self, now_ms: i64) -> Vec<RunStarted> {
        let since = now_ms - FRESH.as_millis() as i64;
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent
            .iter()
            .filter(|r| r.taken_here && r.requested_at_ms >= since)
            .cloned()
            .collect()
    }

    /// Follows the orders placed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<RunOrder>> {
        self.orders.subscribe()
    }

    /// A recent order by its request id.
    pub fn find(&self, request_id: &str) -> Option<RunStarted> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent
            .iter()
            .rev()
            .find(|r| r.request_id == request_id)
            .cloned()
    }
}

/// `run-<unix ms>-<8 random hex>`: sortable, unique, safe in a URL.
pub fn new_request_id() -> String {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).expect("the OS random source works");
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("run-{}-{hex}", crate::clock::now_ms())
}

/// Longest request id an agent may echo back.
pub const MAX_REQUEST_ID: usize = 100;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_reaches_subscribers_and_is_remembered() {
        let od = OnDemand::default();
        let mut rx = od.subscribe();
        let regions: BTreeMap<String, Option<String>> = [
            ("eu-west".to_string(), Some("eu-1".to_string())),
            ("us-east".to_string(), None),
        ]
        .into();
        let started = od.order("corp", regions.clone());
        assert!(started.request_id.starts_with("run-"));
        assert_eq!(started.regions, regions);
        let order = rx.try_recv().expect("an order");
        assert_eq!(order.agents, ["eu-1"]);
        assert_eq!(order.request_id, started.request_id);
        assert_eq!(od.find(&started.request_id), Some(started));
        assert_eq!(od.find("run-0-00000000"), None);
    }

    #[test]
    fn no_agent_anywhere_orders_nothing() {
        let od = OnDemand::default();
        let mut rx = od.subscribe();
        od.order("corp", [("eu-west".to_string(), None)].into());
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_relayed_order_reaches_subscribers_once() {
        let (here, there) = (OnDemand::default(), OnDemand::default());
        let mut rx = there.subscribe();
        let started = here.order_as("run-1-aa".into(), "corp", [("eu".to_string(), Some("eu-1".to_string()))].into(), Some("00-ab-cd-01".into()));
        let payload = notice(&started);
        assert!(here.relay(&payload).is_none(), "its own order is not placed twice");
        let relayed = there.relay(&payload).expect("placed on the other replica");
        assert_eq!((relayed.request_id.as_str(), relayed.traceparent.as_deref()), ("run-1-aa", Some("00-ab-cd-01")));
        assert_eq!(rx.try_recv().expect("an order").agents, ["eu-1"]);
        assert!(there.relay(&payload).is_none());
        assert!(rx.try_recv().is_err());
        assert!(there.relay("not json").is_none());
    }

    #[test]
    fn only_fresh_orders_taken_here_are_announced_again() {
        let (here, there) = (OnDemand::default(), OnDemand::default());
        let eu = || -> BTreeMap<String, Option<String>> { [("eu".to_string(), Some("eu-1".to_string()))].into() };
        let taken = here.order_as("run-1-aa".into(), "corp", eu(), None);
        let relayed = here.relay(&notice(&there.order_as("run-2-bb".into(), "shop", eu(), None))).expect("placed here");
        assert!(taken.taken_here && !relayed.taken_here);
        let now = taken.requested_at_ms;
        let again: Vec<String> = here.fresh_taken_here(now).into_iter().map(|r| r.request_id).collect();
        assert_eq!(again, ["run-1-aa"], "the relayed order is announced by the replica that took it");
        let later = now + FRESH.as_millis() as i64 + 1;
        assert!(here.fresh_taken_here(later).is_empty(), "an order older than FRESH is not announced again");
        // Announced again, it is placed where it was missed, and only there.
        let missed = OnDemand::default();
        let mut rx = missed.subscribe();
        assert!(missed.relay(&notice(&here.fresh_taken_here(now)[0])).is_some());
        assert_eq!(rx.try_recv().expect("an order").request_id, "run-1-aa");
        assert!(there.relay(&notice(&taken)).is_some() && there.relay(&notice(&taken)).is_none());
    }

    #[test]
    fn request_ids_differ() {
        assert_ne!(new_request_id(), new_request_id());
    }
}
