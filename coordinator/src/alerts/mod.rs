//! Alerts: incident events out to people, through the channels of
//! `[[alert]]` (generic JSON webhook, Slack-compatible webhook, PagerDuty
//! Events API v2, email over SMTP), routed by incident kind and severity.
//!
//! [`Alerts::notify`] never blocks and never fails: it puts the event on the
//! bounded queue of every channel whose routes match (dropping that queue's
//! oldest event, with a warning, when it is full) and returns. Each channel
//! has its own worker task, so a slow or dead channel delays only itself;
//! the worker sends its events in order (a PagerDuty `resolve` never
//! overtakes its `trigger`), retrying with exponential backoff and jitter.
//! A failing channel is logged and shown by [`Alerts::status`], and never
//! delays a verdict.
//!
//! A SIGHUP reload replaces the channels ([`Alerts::reload`]): a channel
//! whose config is unchanged keeps running untouched; one that changed
//! under the same name and type keeps its queue (the event being delivered
//! goes back to its front, so it may be sent twice but never lost or
//! reordered) and its status counters, and gets a new worker; a removed
//! channel, or one whose type changed, is stopped and its queued events are
//! dropped (logged with their count).
//!
//! Every attempt (each retry too) goes to the delivery log ([`AttemptLog`]:
//! the console's `/console/alerts`, stored) with its result, its failure
//! class and the receiver's HTTP status or SMTP reply code; error texts
//! there and in `status()` and the logs have the channel's secrets (its URL
//! and the URL's path, tokens, passwords) replaced by `[redacted]`, in case a
//! receiver quotes them back.
//!
//! Layers: [`config`] (validation), `payload.rs` (what is sent, pure),
//! `http.rs` and `email.rs` (one delivery attempt each), this file (queues,
//! workers, retries, status, shutdown, the delivery log).

pub mod config;
mod email;
mod http;
pub mod payload;
mod tls;

pub use config::{ChannelConfig, Target};

use crate::judge::model::AlertEvent;
use crate::shutdown::Shutdown;
use crate::storage::{AlertAttempt, Storage};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// What one delivery attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    /// Worth another attempt (5xx, 408, 429, 4xx SMTP, connect, TLS, timeout).
    Retry(Failed),
    /// Retry, and not before this (the receiver's `Retry-After`).
    RetryAfter(Failed, Duration),
    /// Asking again will not help (other 4xx, 5xx SMTP): logged, not retried.
    Permanent(Failed),
}

/// Why one attempt failed: its class, the receiver's answer code when it
/// gave one, and the error in words (never a credential or the URL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    pub class: FailClass,
    /// The HTTP status or SMTP reply code the receiver answered.
    pub code: Option<u16>,
    pub message: String,
}

impl Failed {
    pub fn new(class: FailClass, message: impl Into<String>) -> Failed {
        Failed {
            class,
            code: None,
            message: message.into(),
        }
    }

    /// The same, with the receiver's status or reply code.
    pub fn with_code(self, code: u16) -> Failed {
        Failed {
            code: Some(code),
            ..self
        }
    }
}

/// The kinds of failure the delivery log tells apart (a bounded set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailClass {
    /// The HTTP receiver answered with a non-2xx status.
    HttpStatus,
    /// The SMTP server answered with a 4xx or 5xx reply.
    SmtpReply,
    /// No connection (resolution, refused, unreachable).
    Connect,
    /// The TLS handshake or the server's certificate.
    Tls,
    /// No complete answer within the channel's `timeout`.
    Timeout,
    /// A broken or unexpected exchange (HTTP framing, SMTP replies unreadable).
    Protocol,
    /// Not sent: the server cannot do what the channel needs (no STARTTLS,
    /// no AUTH mechanism in common, a token refused) or the message was refused before sending.
    Refused,
}

impl FailClass {
    pub fn as_str(self) -> &'static str {
        match self {
            FailClass::HttpStatus => "http_status",
            FailClass::SmtpReply => "smtp_reply",
            FailClass::Connect => "connect",
            FailClass::Tls => "tls",
            FailClass::Timeout => "timeout",
            FailClass::Protocol => "protocol",
            FailClass::Refused => "refused",
        }
    }
}

/// Where every delivery attempt is recorded: a bounded queue into a task
/// that stores each one ([`AttemptLog::to_storage`]), so a slow or
/// unavailable database never holds a channel back (a full queue loses
/// the attempt's record, with a warning, never the alert).
#[derive(Debug, Clone, Default)]
pub struct AttemptLog(Option<tokio::sync::mpsc::Sender<AlertAttempt>>);

/// Attempts waiting to be stored before new ones are dropped from the log.
const LOG_QUEUE: usize = 1024;

impl AttemptLog {
    /// Records nothing (tests of the dispatcher alone).
    pub fn off() -> AttemptLog {
        AttemptLog(None)
    }

    /// Stores every attempt in `storage`, from a task of its own (inside a
    /// Tokio runtime) that ends when the last handle is dropped.
    pub fn to_storage(storage: Arc<Storage>) -> AttemptLog {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<AlertAttempt>(LOG_QUEUE);
        tokio::spawn(async move {
            while let Some(a) = rx.recv().await {
                if let Err(e) = storage.record_alert_attempt(a).await {
                    tracing::warn!(error = %e, "an alert delivery attempt could not be stored in the delivery log");
                }
            }
        });
        AttemptLog(Some(tx))
    }

    fn record(&self, a: AlertAttempt) {
        if let Some(tx) = &self.0
            && tx.try_send(a).is_err()
        {
            tracing::warn!("alert delivery log queue full: an attempt was not recorded");
        }
    }
}

/// The alert dispatcher. Cheap to share behind an `Arc`.
#[derive(Debug, Default)]
pub struct Alerts {
    /// Replaced whole by [`Alerts::reload`]; `notify` holds the lock only
    /// to queue, never across an await.
    channels: Mutex<Vec<Channel>>,
    /// An `alert.deliver` span per event and channel, when the coordinator traces.
    traces: crate::telemetry::Traces,
    /// Where each worker records its attempts.
    log: AttemptLog,
}

/// What [`Alerts::reload`] changed, by channel name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Same name and type, other settings: queue and counters kept.
    pub changed: Vec<String>,
    pub unchanged: usize,
    /// Queued events of removed (or retyped) channels, dropped.
    pub dropped_events: usize,
}

impl ReloadSummary {
    /// One line for the reload log: `added [a], changed [b]` or `unchanged`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (what, names) in [
            ("added", &self.added),
            ("removed", &self.removed),
            ("changed", &self.changed),
        ] {
            if !names.is_empty() {
                parts.push(format!("{what} [{}]", names.join(", ")));
            }
        }
        if self.dropped_events > 0 {
            parts.push(format!(
                "{} queued event(s) of removed channels dropped",
                self.dropped_events
            ));
        }
        if parts.is_empty() {
            "unchanged".into()
        } else {
            parts.join(", ")
        }
    }
}

/// A channel as the dispatcher sees it: its routes, queue and counters.
#[derive(Debug)]
struct Channel {
    config: ChannelConfig,
    queue: Arc<Queue>,
    stats: Arc<Mutex<Stats>>,
    /// Its worker (None: the channel could not start, or a test's `disabled`).
    worker: Option<tokio::task::JoinHandle<()>>,
}

/// A bounded FIFO the worker waits on.
#[derive(Debug)]
struct Queue {
    items: Mutex<VecDeque<AlertEvent>>,
    /// The event the worker is delivering, so a reload that replaces the
    /// worker can put it back at the front of the queue.
    current: Mutex<Option<AlertEvent>>,
    capacity: usize,
    ready: Notify,
}

/// One channel's health (`GET /api/v1/alerts`).
#[derive(Debug, Default, Clone)]
struct Stats {
    delivered: u64,
    /// Events given up on (permanent error, retries exhausted, dropped at shutdown).
    failed: u64,
    /// Oldest events dropped because the queue was full.
    dropped: u64,
    /// Being delivered right now (0 or 1).
    in_flight: u64,
    last_ok_at_ms: Option<i64>,
    last_error: Option<String>,
    last_error_at_ms: Option<i64>,
}

impl Alerts {
    /// No channels: every event is dropped (logged at debug).
    pub fn disabled() -> Alerts {
        Alerts::default()
    }

    /// Starts one worker per channel (inside a Tokio runtime). Each worker
    /// holds a clone of `shutdown`: when it fires, the worker keeps
    /// delivering its queue for the channel's `drain_grace`, then stops.
    pub fn start(channels: Vec<ChannelConfig>, shutdown: Shutdown) -> Arc<Alerts> {
        Alerts::start_traced(channels, shutdown, crate::telemetry::Traces::off())
    }

    /// [`Alerts::start`], tracing every delivery (an `alert.deliver` span
    /// per event and channel, child of the verdict that raised it).
    pub fn start_traced(
        channels: Vec<ChannelConfig>,
        shutdown: Shutdown,
        traces: crate::telemetry::Traces,
    ) -> Arc<Alerts> {
        Alerts::start_logged(channels, shutdown, traces, AttemptLog::off())
    }

    /// [`Alerts::start_traced`], recording every delivery attempt in `log`
    /// (the coordinator's delivery log).
    pub fn start_logged(
        channels: Vec<ChannelConfig>,
        shutdown: Shutdown,
        traces: crate::telemetry::Traces,
        log: AttemptLog,
    ) -> Arc<Alerts> {
        let out = channels
            .into_iter()
            .map(|config| {
                let queue = Arc::new(Queue::new(config.queue_capacity));
                open_channel(config, queue, Arc::default(), &shutdown, &traces, &log)
            })
            .collect();
        Arc::new(Alerts {
            channels: Mutex::new(out),
            traces,
            log,
        })
    }

    fn channels(&self) -> MutexGuard<'_, Vec<Channel>> {
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the channels with `configs` (a SIGHUP reload; see the
    /// module doc for what happens to each channel's queue). New workers
    /// hold a clone of `shutdown`, like those of [`Alerts::start`].
    pub async fn reload(&self, configs: Vec<ChannelConfig>, shutdown: Shutdown) -> ReloadSummary {
        let mut summary = ReloadSummary::default();
        // Channels whose worker must stop: removed ones, and changed ones
        // (with their successor, whose worker starts once the old one stopped).
        let mut retired = Vec::new();
        let mut replaced = Vec::new();
        {
            // Swapped at once, so `notify` never sees a half-built list and
            // events arriving from now on go to the new queues.
            let mut live = self.channels();
            let mut old = std::mem::take(&mut *live);
            for config in configs {
                let same = old.iter().position(|c| c.config.name == config.name);
                match same.map(|i| old.remove(i)) {
                    Some(ch) if ch.config == config => {
                        summary.unchanged += 1;
                        live.push(ch);
                    }
                    Some(ch) if ch.config.type_name() == config.type_name() => {
                        summary.changed.push(config.name.clone());
                        let queue = Arc::new(Queue::new(config.queue_capacity));
                        live.push(Channel {
                            config,
                            queue,
                            stats: ch.stats.clone(),
                            worker: None,
                        });
                        replaced.push(ch);
                    }
                    other => {
                        if let Some(ch) = other {
                            // Another type: its queued events were routed for the old one.
                            summary.removed.push(ch.config.name.clone());
                            retired.push(ch);
                        }
                        summary.added.push(config.name.clone());
                        let queue = Arc::new(Queue::new(config.queue_capacity));
                        live.push(open_channel(
                            config,
                            queue,
                            Arc::default(),
                            &shutdown,
                            &self.traces,
                            &self.log,
                        ));
                    }
                }
            }
            for ch in old {
                summary.removed.push(ch.config.name.clone());
                retired.push(ch);
            }
        }
        for ch in retired {
            summary.dropped_events += retire(ch).await;
        }
        for old in replaced {
            if let Some(w) = old.worker {
                w.abort();
                let _ = w.await;
            }
            let mut live = self.channels();
            let Some(ch) = live.iter_mut().find(|c| c.config.name == old.config.name) else {
                continue;
            };
            // Oldest first: the interrupted event, what was queued, then
            // what arrived since the swap.
            let mut items = ch.queue.items.lock().unwrap();
            let arrived = std::mem::take(&mut *items);
            items.extend(old.queue.current.lock().unwrap().take());
            items.extend(std::mem::take(&mut *old.queue.items.lock().unwrap()));
            items.extend(arrived);
            let over = items.len().saturating_sub(ch.queue.capacity);
            if over > 0 {
                items.drain(..over);
                ch.stats.lock().unwrap().dropped += over as u64;
                tracing::warn!(
                    channel = ch.config.name,
                    dropped = over,
                    capacity = ch.queue.capacity,
                    "alert queue smaller after the reload: dropped its oldest events"
                );
            }
            drop(items);
            ch.stats.lock().unwrap().in_flight = 0;
            let started = open_channel(
                ch.config.clone(),
                ch.queue.clone(),
                ch.stats.clone(),
                &shutdown,
                &self.traces,
                &self.log,
            );
            ch.worker = started.worker;
            ch.queue.ready.notify_one();
        }
        summary
    }

    /// Queues an event for every channel whose routes match it. Never
    /// blocks: a full queue loses its oldest event (logged).
    pub fn notify(&self, event: AlertEvent) {
        let mut routed = 0;
        let channels = self.channels();
        if let Some(intent) = &event.intent {
            intent.expect(channels.iter().filter(|ch| ch.config.routes(&event)).count());
        }
        for ch in channels.iter() {
            if !ch.config.routes(&event) {
                continue;
            }
            routed += 1;
            let dropped = {
                let mut items = ch.queue.items.lock().unwrap();
                let dropped = if items.len() >= ch.queue.capacity {
                    items.pop_front()
                } else {
                    None
                };
                items.push_back(event.clone());
                dropped
            };
            if let Some(old) = dropped {
                let total = {
                    let mut s = ch.stats.lock().unwrap();
                    s.dropped += 1;
                    s.dropped
                };
                // A flood would otherwise write one line per event: log the
                // 1st, 2nd, 4th, 8th... drop, each with the running total.
                if total.is_power_of_two() {
                    tracing::warn!(
                        channel = ch.config.name,
                        incident = old.incident.id,
                        event = old.event.as_str(),
                        capacity = ch.queue.capacity,
                        dropped_total = total,
                        "alert queue full: dropped its oldest event"
                    );
                }
            }
            ch.queue.ready.notify_one();
        }
        tracing::debug!(
            incident = event.incident.id,
            event = event.event.as_str(),
            channels = routed,
            "alert queued"
        );
    }

    /// Each channel's health, as `GET /api/v1/alerts` shows it.
    pub fn status(&self) -> Value {
        let channels: Vec<Value> = self
            .channels()
            .iter()
            .map(|ch| {
                let s = ch.stats.lock().unwrap().clone();
                let queued = ch.queue.items.lock().unwrap().len() as u64;
                json!({
                    "name": ch.config.name,
                    "type": ch.config.type_name(),
                    "delivered": s.delivered,
                    "failed": s.failed,
                    "dropped": s.dropped,
                    "pending": queued + s.in_flight,
                    "last_ok_at": s.last_ok_at_ms.map(payload::rfc3339),
                    "last_error": s.last_error,
                    "last_error_at": s.last_error_at_ms.map(payload::rfc3339),
                })
            })
            .collect();
        json!({ "channels": channels })
    }
}

impl Queue {
    fn new(capacity: usize) -> Queue {
        Queue {
            items: Mutex::new(VecDeque::new()),
            current: Mutex::new(None),
            capacity: capacity.max(1),
            ready: Notify::new(),
        }
    }
}

/// Starts a channel's worker on `queue`, counting into `stats`.
fn open_channel(
    config: ChannelConfig,
    queue: Arc<Queue>,
    stats: Arc<Mutex<Stats>>,
    shutdown: &Shutdown,
    traces: &crate::telemetry::Traces,
    log: &AttemptLog,
) -> Channel {
    let sender = match Sender::new(&config) {
        Ok(s) => Some(s),
        Err(e) => {
            // Only an unreadable CA file gets here (the config checked
            // it exists): keep the channel visible, failing.
            tracing::error!(
                channel = config.name,
                error = e,
                "alert channel cannot start"
            );
            let mut s = stats.lock().unwrap();
            s.last_error = Some(format!("cannot start: {e}"));
            s.last_error_at_ms = Some(now_ms());
            None
        }
    };
    let worker = sender.map(|sender| {
        let worker = Worker {
            endpoint: endpoint_of(&config),
            secrets: secrets_of(&config),
            log: log.clone(),
            config: config.clone(),
            queue: queue.clone(),
            stats: stats.clone(),
            sender,
            traces: traces.clone(),
        };
        tokio::spawn(worker.run(shutdown.clone()))
    });
    tracing::info!(
        channel = config.name,
        r#type = config.type_name(),
        "alert channel ready"
    );
    Channel {
        config,
        queue,
        stats,
        worker,
    }
}

/// Stops a removed channel's worker; how many events it had not delivered
/// (they are dropped, and logged).
async fn retire(ch: Channel) -> usize {
    if let Some(w) = ch.worker {
        w.abort();
        let _ = w.await;
    }
    let left = ch.queue.items.lock().unwrap().len()
        + usize::from(ch.queue.current.lock().unwrap().is_some());
    if left > 0 {
        tracing::warn!(
            channel = ch.config.name,
            dropped = left,
            "alert channel removed by a reload: its undelivered events are dropped"
        );
    }
    left
}

/// Where a channel delivers, safe to log.
fn endpoint_of(config: &ChannelConfig) -> String {
    match &config.target {
        Target::Webhook(h) | Target::Slack(h) | Target::PagerDuty { endpoint: h, .. } => {
            h.origin.clone()
        }
        Target::Email(e) => format!("smtp {}:{}", e.host, e.port),
    }
}

/// The strings of a channel's config that must never be shown: the URL,
/// its path and query, any path segment or query value long enough to be
/// a token, a user:password in it, the routing key, the SMTP password or
/// token. Longest first, so a longer one is replaced before its parts.
fn secrets_of(config: &ChannelConfig) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    match &config.target {
        Target::Webhook(h) | Target::Slack(h) | Target::PagerDuty { endpoint: h, .. } => {
            let url = h.url.expose();
            out.push(url.to_string());
            if let Ok(uri) = url.parse::<hyper::Uri>() {
                if let Some(pq) = uri.path_and_query().map(|p| p.as_str())
                    && pq.len() > 1
                {
                    out.push(pq.to_string());
                }
                out.extend(
                    uri.path()
                        .split('/')
                        .filter(|s| s.len() >= 8)
                        .map(str::to_string),
                );
                for pair in uri.query().unwrap_or("").split('&') {
                    let value = pair.split_once('=').map_or(pair, |(_, v)| v);
                    if value.len() >= 8 {
                        out.push(value.to_string());
                    }
                }
                if let Some((userinfo, _)) = uri.authority().and_then(|a| a.as_str().rsplit_once('@')) {
                    out.push(userinfo.to_string());
                }
            }
            if let Target::PagerDuty { routing_key, .. } = &config.target {
                out.push(routing_key.expose().to_string());
            }
        }
        Target::Email(e) => {
            out.extend(e.password.iter().map(|p| p.expose().to_string()));
            out.extend(e.oauth2_token.iter().map(|t| t.expose().to_string()));
        }
    }
    out.retain(|s| s.len() >= 4);
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out.dedup();
    out
}

/// `text` with each of `secrets` replaced by `[redacted]`.
pub fn scrub(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "[redacted]");
        }
    }
    out
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// How a channel delivers one event.
enum Sender {
    Http(http::HttpSender),
    Email(email::EmailSender),
}

impl Sender {
    fn new(config: &ChannelConfig) -> Result<Sender, String> {
        Ok(match &config.target {
            Target::Webhook(h) | Target::Slack(h) | Target::PagerDuty { endpoint: h, .. } => {
                Sender::Http(http::HttpSender::new(h.url.expose(), h.ca_file.as_deref())?)
            }
            Target::Email(e) => Sender::Email(email::EmailSender::new(e.clone())?),
        })
    }
}

/// Delivers one channel's queue, one event at a time.
struct Worker {
    config: ChannelConfig,
    /// `https://host:443` or `smtp host:port`: where, in logs (never the full URL).
    endpoint: String,
    /// What error texts must not show ([`secrets_of`]).
    secrets: Vec<String>,
    log: AttemptLog,
    queue: Arc<Queue>,
    stats: Arc<Mutex<Stats>>,
    sender: Sender,
    traces: crate::telemetry::Traces,
}

impl Worker {
    async fn run(self, mut shutdown: Shutdown) {
        // Set once shutdown begins: queued events are still tried until then.
        let mut drain_until: Option<Instant> = None;
        loop {
            let next = self.queue.items.lock().unwrap().pop_front();
            let Some(event) = next else {
                if drain_until.is_some() {
                    break;
                }
                tokio::select! {
                    _ = self.queue.ready.notified() => continue,
                    _ = shutdown.recv() => {
                        drain_until = Some(Instant::now() + self.config.drain_grace);
                        continue;
                    }
                }
            };
            *self.queue.current.lock().unwrap() = Some(event.clone());
            self.stats.lock().unwrap().in_flight = 1;
            let delivery = self.deliver(&event);
            tokio::pin!(delivery);
            let done = loop {
                match drain_until {
                    Some(deadline) => {
                        break tokio::time::timeout_at(deadline, &mut delivery)
                            .await
                            .is_ok();
                    }
                    None => tokio::select! {
                        _ = &mut delivery => break true,
                        _ = shutdown.recv() => {
                            drain_until = Some(Instant::now() + self.config.drain_grace);
                        }
                    },
                }
            };
            self.stats.lock().unwrap().in_flight = 0;
            self.queue.current.lock().unwrap().take();
            if let (true, Some(intent)) = (done, &event.intent) {
                intent.settled();
            }
            if !done {
                let left = 1 + std::mem::take(&mut *self.queue.items.lock().unwrap()).len();
                self.give_up_at_shutdown(&event, left);
                break;
            }
        }
        tracing::debug!(channel = self.config.name, "alert channel stopped");
    }

    /// Shutdown's grace ran out with events undelivered.
    fn give_up_at_shutdown(&self, event: &AlertEvent, left: usize) {
        let mut s = self.stats.lock().unwrap();
        s.failed += left as u64;
        s.last_error = Some(format!("shutdown: {left} event(s) not delivered in time"));
        s.last_error_at_ms = Some(now_ms());
        tracing::warn!(
            channel = self.config.name,
            incident = event.incident.id,
            event = event.event.as_str(),
            undelivered = left,
            "alert channel stopped at shutdown with events undelivered"
        );
    }

    /// Every attempt for one event: the first plus `retries`, waiting
    /// `backoff_base` doubling (capped, jittered) between them.
    async fn deliver(&self, event: &AlertEvent) {
        let c = &self.config;
        let attempts = c.retries + 1;
        // Built once so every retry of the event is the same message.
        let body = self.body(event);
        let parent = event
            .traceparent
            .as_deref()
            .and_then(mailloop_common::telemetry::parse_traceparent);
        let mut span = self.traces.alert(
            &c.name,
            c.type_name(),
            event.incident.id,
            event.event.as_str(),
            parent.as_ref(),
        );
        for attempt in 1..=attempts {
            let outcome = match (&self.sender, &body) {
                (Sender::Http(h), Body::Json(v)) => h.post(v, c.timeout).await,
                (Sender::Email(e), Body::Email(m)) => e.send(m, c.timeout).await,
                _ => unreachable!("a channel's body matches its sender"),
            };
            let (failed, permanent, not_before) = match outcome {
                Delivery::Delivered => {
                    self.record(event, attempt, attempts, "delivered", None, None);
                    let mut s = self.stats.lock().unwrap();
                    s.delivered += 1;
                    s.last_ok_at_ms = Some(now_ms());
                    drop(s);
                    tracing::info!(
                        channel = c.name,
                        incident = event.incident.id,
                        event = event.event.as_str(),
                        attempt,
                        "alert delivered"
                    );
                    crate::telemetry::end_alert(span, attempt, None);
                    return;
                }
                Delivery::Retry(e) => (e, false, None),
                Delivery::RetryAfter(e, after) => (e, false, Some(after)),
                Delivery::Permanent(e) => (e, true, None),
            };
            let error = scrub(&failed.message, &self.secrets);
            let result = match (permanent, attempt == attempts) {
                (true, _) => "permanent",
                (false, true) => "exhausted",
                (false, false) => "retry",
            };
            self.record(event, attempt, attempts, result, Some(&failed), Some(&error));
            crate::telemetry::alert_attempt_failed(span.as_mut(), attempt, &error);
            {
                let mut s = self.stats.lock().unwrap();
                s.last_error = Some(format!(
                    "{} #{}: {error}",
                    event.event.as_str(),
                    event.incident.id
                ));
                s.last_error_at_ms = Some(now_ms());
            }
            if permanent || attempt == attempts {
                self.stats.lock().unwrap().failed += 1;
                let why = if permanent {
                    "permanent error, not retried"
                } else {
                    "retries exhausted"
                };
                tracing::error!(
                    channel = c.name,
                    r#type = c.type_name(),
                    endpoint = self.endpoint,
                    incident = event.incident.id,
                    event = event.event.as_str(),
                    attempt,
                    error,
                    "alert NOT delivered: {why}"
                );
                crate::telemetry::end_alert(span, attempt, Some(&format!("{why}: {error}")));
                return;
            }
            let mut wait = backoff(c.backoff_base, c.backoff_cap, attempt);
            if let Some(after) = not_before {
                wait = wait.max(after.min(c.backoff_cap));
            }
            tracing::warn!(
                channel = c.name,
                r#type = c.type_name(),
                endpoint = self.endpoint,
                incident = event.incident.id,
                event = event.event.as_str(),
                attempt,
                of = attempts,
                error,
                retry_in_ms = wait.as_millis() as u64,
                "alert delivery failed; will retry"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// One attempt into the delivery log.
    fn record(
        &self,
        event: &AlertEvent,
        attempt: u32,
        of: u32,
        result: &str,
        failed: Option<&Failed>,
        error: Option<&str>,
    ) {
        self.log.record(AlertAttempt {
            seq: 0,
            at_ms: now_ms(),
            channel: self.config.name.clone(),
            channel_type: self.config.type_name().to_string(),
            incident_id: event.incident.id,
            check_id: event.incident.check_id.clone(),
            event: event.event.as_str().to_string(),
            attempt,
            of,
            result: result.to_string(),
            class: failed.map(|f| f.class.as_str().to_string()),
            code: failed.and_then(|f| f.code),
            detail: error.map(str::to_string),
        });
    }

    fn body(&self, event: &AlertEvent) -> Body {
        match &self.config.target {
            Target::Webhook(_) => Body::Json(payload::webhook(event)),
            Target::Slack(_) => Body::Json(payload::slack(event)),
            Target::PagerDuty { routing_key, .. } => {
                Body::Json(payload::pagerduty(event, routing_key.expose()))
            }
            Target::Email(e) => {
                let domain = e.from.rsplit_once('@').map_or("mailloop", |(_, d)| d);
                Body::Email(email::Message {
                    subject: payload::email_subject(event),
                    body: payload::email_body(event),
                    message_id: format!(
                        "<mailloop.{}.{}.{}.{:08x}@{domain}>",
                        event.incident.id,
                        event.event.as_str(),
                        event.at_ms,
                        random_u32()
                    ),
                    date_ms: event.at_ms,
                })
            }
        }
    }
}

enum Body {
    Json(Value),
    Email(email::Message),
}

/// The wait after failed attempt `attempt` (1-based): `base * 2^(attempt-1)`,
/// capped, then jittered into [75%, 100%] so channels that failed together
/// do not retry in lockstep.
pub fn backoff(base: Duration, cap: Duration, attempt: u32) -> Duration {
    let doubled = base.saturating_mul(1u32 << (attempt - 1).min(20));
    let wait = doubled.min(cap);
    let jitter = f64::from(random_u32()) / f64::from(u32::MAX) * 0.25;
    wait.mul_f64(1.0 - jitter)
}

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    u32::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(table: Value) -> Vec<String> {
        let env = |name: &str| (name == "SMTP_PASS").then(|| "pa55-w0rd-x".to_string());
        let mut issues = Vec::new();
        let parsed = config::parse(Some(&json!([table])), &env, &mut issues);
        assert!(issues.is_empty(), "{issues:?}");
        secrets_of(&parsed[0])
    }

    #[test]
    fn a_channel_s_secrets_are_scrubbed_from_error_texts_even_quoted_back() {
        let hook = secrets(json!({"name": "h", "type": "slack",
            "url": "https://hooks.example.net/services/T0000/B1111/XyZsecretTokenXyZ?key=querysecret1"}));
        for quoted in [
            "HTTP 404: no such hook /services/T0000/B1111/XyZsecretTokenXyZ?key=querysecret1",
            "HTTP 410: XyZsecretTokenXyZ is revoked",
            "HTTP 400: bad key querysecret1",
        ] {
            let clean = scrub(quoted, &hook);
            assert!(clean.contains("[redacted]"), "{clean}");
            assert!(!clean.contains("XyZsecretTokenXyZ") && !clean.contains("querysecret1"), "{clean}");
        }
        assert_eq!(scrub("connect to hooks.example.net:443: refused", &hook), "connect to hooks.example.net:443: refused");
        let pd = secrets(json!({"name": "p", "type": "pagerduty", "routing_key": "R0UTINGKEY0123456789abcdef0123456"}));
        assert!(!scrub("HTTP 400: invalid routing key R0UTINGKEY0123456789abcdef0123456", &pd).contains("R0UTING"));
        let mail = secrets(json!({"name": "m", "type": "email", "smtp_host": "127.0.0.1", "smtp_port": 587,
            "username": "u@example.net", "password_env": "SMTP_PASS", "from": "a@example.net", "to": ["b@example.net"]}));
        assert_eq!(scrub("AUTH PLAIN: 535 pa55-w0rd-x refused", &mail), "AUTH PLAIN: 535 [redacted] refused");
    }

    #[test]
    fn backoff_doubles_is_capped_and_jittered_downward_only() {
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(60);
        for (attempt, full) in [(1, 1), (2, 2), (3, 4), (6, 32), (7, 60), (40, 60)] {
            let w = backoff(base, cap, attempt);
            let full = Duration::from_secs(full);
            assert!(
                w <= full && w >= full.mul_f64(0.75),
                "attempt {attempt}: {w:?}"
            );
        }
    }
}
