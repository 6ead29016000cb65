//! One round trip: the sequence of SMTP and IMAP steps and what they mean.
//!
//! The IMAP session is opened while the SMTP submission runs, so it is
//! already selected (and then idling) when the probe lands. The result is
//! always a [`ProbeReport`]; a mail server's failure is data in it.

use crate::imap;
use crate::message;
use crate::smtp;
use crate::steps::{Recorder, ms};
use mailloop_common::config::{CheckConfig, ThresholdKey};
use mailloop_common::{Attempt, Failure, Outcome, ProbeReport, StepName, StepReport, TlsCert};
use std::time::{Duration, Instant};
use crate::dns::Dns;
use crate::inspect;
use crate::spf;
use crate::tls::TlsClient;
use crate::transport::ConnectTo;
use mailloop_common::config::{ConfigIssue, DnsConfig};
use mailloop_common::{FailureClass, Secret, SpfBudget};
use crate::oauth2::{self, Clock, TokenSource};
use std::sync::Arc;

/// Where one side's bearer token comes from.
struct SideToken {
    source: Arc<TokenSource>,
    scope: String,
}

/// Runs probes for one check. Built once; TLS trust is loaded at construction.
pub struct Prober {
    check: CheckConfig,
    smtp_tls: TlsClient,
    imap_tls: TlsClient,
    /// For the SPF walk and the independent DKIM check (None: both off).
    dns: Option<Arc<Dns>>,
    /// The agent's `connect_to` rules: where the TCP connections really go.
    connect_to: ConnectTo,
    /// OAuth2 token sources of the sides that log in with a token (one
    /// shared source when both name the same client).
    smtp_token: Option<SideToken>,
    imap_token: Option<SideToken>,
    /// "Now" for token expiry (tests move it).
    clock: Clock,
}

impl Prober {
    /// Fails if a `ca_file` cannot be used or the resolver cannot be built;
    /// the message names the check and every bad key.
    pub fn new(check: CheckConfig, dns: &DnsConfig) -> Result<Prober, String> {
        let name = check.name.clone();
        Prober::build(check, dns).map_err(|issues| {
            let list: Vec<String> = issues.iter().map(|i| format!("{}: {}", i.path, i.message)).collect();
            format!("check {name}: {}", list.join("; "))
        })
    }

    /// [`Prober::new`] with every problem as a [`ConfigIssue`] whose path
    /// is relative to the check (`smtp.ca_file`, `dns`). What `check-config`
    /// runs too, so a `ca_file` holding a key or garbage is found before
    /// any probe, by the very code the probe would load it with.
    pub fn build(check: CheckConfig, dns: &DnsConfig) -> Result<Prober, Vec<ConfigIssue>> {
        let mut issues = Vec::new();
        let (smtp, imap) = (&check.smtp.endpoint, &check.imap.endpoint);
        let mut trust = |key: &str, e: &mailloop_common::config::Endpoint| {
            TlsClient::new(e.ca_file.as_deref(), &e.pin_sha256)
                .map_err(|message| issues.push(ConfigIssue { path: key.to_string(), message }))
                .ok()
        };
        let smtp_tls = trust("smtp.ca_file", smtp);
        let imap_tls = if (&imap.ca_file, &imap.pin_sha256) == (&smtp.ca_file, &smtp.pin_sha256) {
            smtp_tls.clone()
        } else {
            trust("imap.ca_file", imap)
        };
        for warning in [smtp.plaintext_auth_warning("smtp"), imap.plaintext_auth_warning("imap")].into_iter().flatten() {
            tracing::warn!(check = %check.name, "{warning}");
        }
        let mut sources: Vec<Arc<TokenSource>> = Vec::new();
        let mut token_for = |side: &str, e: &mailloop_common::config::Endpoint| -> Option<SideToken> {
            let cfg = e.credentials.as_ref()?.oauth2()?;
            let source = match sources.iter().find(|s| s.serves(cfg)) {
                Some(s) => s.clone(),
                None => match TokenSource::new(cfg) {
                    Ok(s) => {
                        let s = Arc::new(s);
                        sources.push(s.clone());
                        s
                    }
                    Err((key, message)) => {
                        issues.push(ConfigIssue { path: format!("{side}.oauth2.{key}"), message });
                        return None;
                    }
                },
            };
            Some(SideToken { source, scope: cfg.scope.clone() })
        };
        let smtp_token = token_for("smtp", smtp);
        let imap_token = token_for("imap", imap);
        let dns = if check.verify_dkim || check.spf.enabled || check.blocklists.is_some() {
            match Dns::new(dns) {
                Ok(d) => Some(Arc::new(d)),
                Err(e) => {
                    issues.push(ConfigIssue { path: "dns".into(), message: e.to_string() });
                    None
                }
            }
        } else {
            None
        };
        match (smtp_tls, imap_tls) {
            (Some(smtp_tls), Some(imap_tls)) if issues.is_empty() => {
                Ok(Prober { check, smtp_tls, imap_tls, dns, connect_to: ConnectTo::default(), smtp_token, imap_token, clock: oauth2::system_clock() })
            }
            _ => Err(issues),
        }
    }

    /// Sends this check's SMTP and IMAP connections where the agent's
    /// `connect_to` rules say; names, SNI and reported endpoints stay the check's.
    pub fn with_connect_to(mut self, connect_to: ConnectTo) -> Prober {
        self.connect_to = connect_to;
        self
    }

    /// Uses `clock` for token expiry instead of the real one (tests that
    /// expire a token without waiting an hour).
    pub fn with_token_clock(mut self, clock: Clock) -> Prober {
        self.clock = clock;
        self
    }

    pub fn check(&self) -> &CheckConfig {
        &self.check
    }

    /// One full round trip, retrying deferred submissions within the
    /// check's greylist grace window.
    pub async fn run(&self) -> ProbeReport {
        let check = &self.check;
        let first_now = chrono::Utc::now();
        let first_start = Instant::now();
        let probe_id = message::new_probe_id(first_now);
        let message_id = message::message_id(&probe_id, &check.from);
        let body = message::build(&check.name, &probe_id, &message_id, &check.from, &check.to, first_now, check.probe_body);
        tracing::info!(check = %check.name, probe_id = %probe_id, "probe starting");

        let grace_end = first_start + check.greylist_grace;
        let mut wait = check.greylist_retry;
        let mut attempts = Vec::new();
        let (attempt_start, mut result) = loop {
            let started_at = rfc3339(chrono::Utc::now());
            let attempt_start = Instant::now();
            let result = self.attempt(&probe_id, &body, attempt_start).await;
            attempts.push(Attempt { started_at, failure: result.failure.clone() });
            let retry = result.failure.as_ref().is_some_and(is_retryable);
            if retry && Instant::now() + wait <= grace_end {
                let f = result.failure.as_ref().expect("retryable implies a failure");
                tracing::info!(
                    check = %check.name, probe_id = %probe_id, step = %f.step, class = %f.class, code = ?f.code,
                    "submission deferred ({}), retrying in {}", f.message, humantime::format_duration(wait)
                );
                tokio::time::sleep(wait).await;
                wait *= 2;
                continue;
            }
            break (attempt_start, result);
        };

        let retried = attempts.len() > 1;
        if let Some(f) = &mut result.failure {
            if retried && f.class.is_transient() {
                f.message = format!(
                    "{} (still deferred after {} attempts over {})",
                    f.message,
                    attempts.len(),
                    humantime::format_duration(Duration::from_secs(first_start.elapsed().as_secs()))
                );
            }
        }
        let outcome = if result.failure.is_some() {
            Outcome::Failed
        } else if !result.reasons.is_empty() {
            Outcome::Degraded
        } else {
            Outcome::Ok
        };
        let report = ProbeReport {
            probe_id,
            check: check.name.clone(),
            started_at: rfc3339(first_now),
            outcome,
            rtt_ms: result.rtt.map(ms),
            delivery_ms: result.delivery.map(ms),
            steps: result.steps,
            failure: result.failure,
            message_id,
            queue_id: result.queue_id,
            reasons: result.reasons,
            warnings: [check.smtp.endpoint.plaintext_auth_warning("smtp"), check.imap.endpoint.plaintext_auth_warning("imap")]
                .into_iter()
                .flatten()
                .collect(),
            greylisted: retried && outcome != Outcome::Failed,
            greylist_ms: retried.then(|| ms(attempt_start - first_start)),
            attempts,
            tls: result.tls,
            auth: result.auth,
            hops: result.hops,
            spf: result.spf,
            placement: result.placement,
            placement_folder: result.placement_folder,
            spam: result.spam,
            reputation: result.reputation,
            trace_id: None,
            span_id: None,
        };
        match &report.failure {
            None => tracing::info!(check = %check.name, probe_id = %report.probe_id, outcome = report.outcome.as_str(), rtt_ms = ?report.rtt_ms, "probe finished"),
            Some(f) => tracing::warn!(check = %check.name, probe_id = %report.probe_id, step = %f.step, class = %f.class, code = ?f.code, message = %f.message, "probe failed"),
        }
        report
    }

    /// The `dns.spf` step, when enabled. A walk that could not read a
    /// record (no SPF record, a DNS error, a loop) is a failed step whose
    /// detail says why, never "ok, 0 lookups"; the step's timeout is
    /// returned as `Err` so the probe can give it as a reason.
    async fn spf_walk(&self, rec: &mut Recorder) -> Option<Result<SpfBudget, Failure>> {
        let (Some(dns), true) = (&self.dns, self.check.spf.enabled) else { return None };
        let domain = &self.check.spf.domain;
        let walked = rec
            .run(StepName::DnsSpf, self.check.timeout(StepName::DnsSpf), async {
                let b = spf::walk(dns, domain).await;
                let detail = format!("{}: {} lookups, {} void", b.domain, b.lookups, b.void_lookups);
                Ok(crate::steps::Done::new(b).detail(detail))
            })
            .await;
        if let Ok(b) = &walked {
            if let Some(e) = &b.error {
                if let Some(step) = rec.steps.iter_mut().rev().find(|s| s.name == StepName::DnsSpf) {
                    step.ok = false;
                    step.detail = Some(format!("{e} ({} lookups, {} void counted before that)", b.lookups, b.void_lookups));
                }
            }
        }
        Some(walked)
    }

    /// The bearer tokens of the sides that use OAuth2: cached ones while
    /// they are good, else fetched in one `oauth2.token` step (one request
    /// per client and scope, in turn, so a rotated refresh token is used by
    /// the next request).
    async fn tokens(&self, rec: &mut Recorder) -> Result<(Option<Secret>, Option<Secret>), Failure> {
        let now = (self.clock)();
        let cached = |t: &Option<SideToken>| t.as_ref().map(|t| t.source.cached(&t.scope, now));
        let (smtp, imap) = (cached(&self.smtp_token), cached(&self.imap_token));
        if !matches!(smtp, Some(None)) && !matches!(imap, Some(None)) {
            return Ok((smtp.flatten(), imap.flatten()));
        }
        let step = StepName::Oauth2Token;
        let sides = [("smtp", &self.smtp_token, smtp), ("imap", &self.imap_token, imap)];
        let connect_to = &self.connect_to;
        let clock = &self.clock;
        rec.run(step, self.check.timeout(step), async move {
            let mut got: Vec<Option<Secret>> = Vec::new();
            let mut details = Vec::new();
            let mut code = None;
            for (i, (side, token, cached)) in sides.iter().enumerate() {
                let (Some(t), Some(None)) = (token, cached) else {
                    got.push(cached.clone().flatten());
                    continue;
                };
                // The other side asked for the same client and scope already.
                if let (1, Some(first), Some(Some(tok))) = (i, &self.smtp_token, got.first()) {
                    if Arc::ptr_eq(&first.source, &t.source) && first.scope == t.scope {
                        got.push(Some(tok.clone()));
                        continue;
                    }
                }
                let done = t.source.fetch(&t.scope, connect_to, clock()).await.map_err(|mut e| {
                    e.message = format!("{side}: {}", e.message);
                    e
                })?;
                details.push(format!("{side}: {}", done.detail.unwrap_or_default()));
                code = done.code;
                got.push(Some(done.value));
            }
            let mut done = crate::steps::Done::new((got[0].clone(), got[1].clone())).detail(details.join("; "));
            done.code = code;
            Ok(done)
        })
        .await
    }

    /// One attempt: submit and, if that worked, find the probe.
    async fn attempt(&self, probe_id: &str, body: &[u8], origin: Instant) -> AttemptResult {
        let check = &self.check;
        let deadline = origin + check.deadline;
        let wall_origin = chrono::Utc::now();
        let mut smtp_rec = Recorder::new(origin, deadline);
        let mut imap_rec = Recorder::new(origin, deadline);
        let mut dns_rec = Recorder::new(origin, deadline);
        let mut token_rec = Recorder::new(origin, deadline);
        // Tokens first: without them neither side can log in. A fetch is a
        // step of its own (the provider's time is not the mail server's),
        // and the round trip is timed from after it.
        let (smtp_token, imap_token) = match self.tokens(&mut token_rec).await {
            Ok(t) => t,
            Err(f) => {
                return AttemptResult { steps: token_rec.steps, failure: Some(f), ..AttemptResult::default() };
            }
        };
        let (origin, wall_origin) = if token_rec.steps.is_empty() { (origin, wall_origin) } else { (Instant::now(), chrono::Utc::now()) };
        // The SPF walk runs beside the delivery but is not waited for once
        // submission failed: the round is failed already, and a dead DNS
        // server would otherwise hold the failure back for the walk's timeout.
        let submission_failed = tokio::sync::Notify::new();
        let (sent, opened, spf_budget) = tokio::join!(
            async {
                let sent = smtp::send(check, &self.smtp_tls, &self.connect_to, body, smtp_token.as_ref(), &mut smtp_rec).await;
                if sent.is_err() {
                    submission_failed.notify_one();
                }
                sent
            },
            imap::open(check, &self.imap_tls, &self.connect_to, imap_token.as_ref(), &mut imap_rec),
            async {
                tokio::select! {
                    budget = self.spf_walk(&mut dns_rec) => budget,
                    _ = submission_failed.notified() => None,
                }
            },
        );

        // A token the server refused is not used again: the next round fetches one.
        for (side, failure) in [(&self.smtp_token, sent.as_ref().err()), (&self.imap_token, opened.as_ref().err())] {
            if let (Some(t), Some(f)) = (side, failure) {
                if f.class == FailureClass::Auth && matches!(f.step, StepName::SmtpAuth | StepName::ImapLogin) {
                    t.source.invalidate(&t.scope);
                }
            }
        }
        let mut r = AttemptResult::default();
        let mut entering = None;
        let spf_budget = match spf_budget {
            Some(Err(f)) => {
                r.reasons.push(format!("SPF walk of {} did not finish ({}): {}", check.spf.domain, f.class, f.message));
                None
            }
            Some(Ok(b)) => Some(b),
            None => None,
        };
        let spf_failure = match &spf_budget {
            Some(b) => match spf::verdict(b) {
                Ok(Some(reason)) => {
                    r.reasons.push(reason);
                    None
                }
                Ok(None) => None,
                Err(message) => Some(Failure { step: StepName::DnsSpf, class: FailureClass::Permanent, code: None, enhanced: None, message, raw: None }),
            },
            None => None,
        };
        r.spf = spf_budget;
        match (sent, opened) {
            (Err(f), session) => {
                r.failure = Some(f);
                if let Ok(s) = session {
                    let _ = imap::logout(check, s, &mut imap_rec).await;
                }
            }
            (Ok(sent), Err(f)) => {
                // The probe went out but cannot be looked for; the next
                // successful run sweeps it once it is old enough.
                r.queue_id = sent.queue_id;
                r.failure = Some(f);
            }
            (Ok(sent), Ok(mut s)) => {
                r.queue_id = sent.queue_id.clone();
                // Junk folders that could not be watched: a reason when the
                // check named them, a log line when they were guessed.
                for p in std::mem::take(&mut s.junk_problems) {
                    if check.imap.junk.is_some() {
                        r.reasons.push(p);
                    } else {
                        tracing::warn!(check = %check.name, "{p}");
                    }
                }
                let found = imap::find(check, &mut s, probe_id, &mut imap_rec).await;
                let uid = match found {
                    Ok(found) => {
                        r.rtt = Some(found.found_at - origin);
                        r.delivery = Some(found.found_at.saturating_duration_since(sent.acked_at));
                        if !contains(&found.raw, probe_id.as_bytes()) {
                            r.reasons.push(format!("message found by search does not carry probe id {probe_id}"));
                        }
                        let sent_wall = wall_origin + (sent.acked_at - origin);
                        let seen = inspect::inspect(check, &found.raw, self.dns.as_deref(), sent_wall).await;
                        r.reasons.extend(seen.reasons);
                        r.auth = Some(seen.auth);
                        r.hops = seen.hops;
                        r.placement = Some(if found.junk_folder.is_some() { "junk" } else { "inbox" }.to_string());
                        if let Some(folder) = &found.junk_folder {
                            r.reasons.push(format!("{} {folder:?}{}", mailloop_common::spam::JUNK_REASON, spam_evidence(seen.spam.as_ref())));
                        }
                        r.placement_folder = found.junk_folder;
                        r.spam = seen.spam;
                        entering = seen.entering;
                        Some(found.uid)
                    }
                    Err(f) => {
                        r.failure = Some(f);
                        None
                    }
                };
                // After a timeout or a protocol error the session is out of
                // step with the server: nothing more can be said on it.
                let broken = r.failure.as_ref().is_some_and(|f| matches!(f.class, FailureClass::Timeout | FailureClass::Protocol));
                if !broken {
                    if let Err(f) = imap::cleanup(check, &mut s, uid, &mut imap_rec).await {
                        if r.failure.is_none() {
                            r.reasons.push(format!("probe not deleted ({}): {}", f.class, f.message));
                        }
                    }
                    if let Err(f) = imap::logout(check, s, &mut imap_rec).await {
                        if r.failure.is_none() {
                            r.reasons.push(format!("imap.logout failed ({}): {}", f.class, f.message));
                        }
                    }
                }
            }
        }

        // Blocklists last: the probe is already timed and cleaned up, and a
        // slow list delays nothing that is measured.
        if let (Some(cfg), Some(dns)) = (&check.blocklists, &self.dns) {
            r.reputation = Some(crate::reputation::check(cfg, dns, entering).await);
        }
        r.steps = token_rec.steps;
        r.steps.extend(smtp_rec.steps);
        r.steps.extend(imap_rec.steps);
        r.steps.extend(dns_rec.steps);
        r.tls = smtp_rec.tls;
        r.tls.extend(imap_rec.tls);
        r.steps.sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
        // A delivery failure says more than the SPF budget; report it first.
        if r.failure.is_none() {
            r.failure = spf_failure;
        }
        if r.failure.is_none() {
            if let Some(quit) = r.steps.iter().find(|s| s.name == StepName::SmtpQuit && !s.ok) {
                r.reasons.push(format!("smtp.quit failed: {}", quit.detail.as_deref().unwrap_or("")));
            }
            let breaches = threshold_breaches(check, &r.steps, r.rtt, r.delivery);
            r.reasons.extend(breaches);
            for c in &r.tls {
                if c.days_left < i64::from(check.cert_min_days) {
                    r.reasons.push(format!(
                        "{} certificate of {} expires in {} days ({}), below cert_min_days {}",
                        c.protocol, c.endpoint, c.days_left, c.not_after, check.cert_min_days
                    ));
                }
            }
        }
        r
    }
}

/// What one attempt produced.
#[derive(Default)]
struct AttemptResult {
    steps: Vec<StepReport>,
    failure: Option<Failure>,
    reasons: Vec<String>,
    rtt: Option<Duration>,
    delivery: Option<Duration>,
    queue_id: Option<String>,
    tls: Vec<TlsCert>,
    auth: Option<mailloop_common::AuthReport>,
    hops: Vec<mailloop_common::received::HopDelay>,
    spf: Option<SpfBudget>,
    placement: Option<String>,
    placement_folder: Option<String>,
    spam: Option<mailloop_common::spam::SpamReport>,
    reputation: Option<mailloop_common::reputation::ReputationReport>,
}

/// The steps whose 4xx replies are retried: the transaction, not the
/// session set-up (a 421 banner or a refused AUTH is reported at once).
const RETRY_STEPS: [StepName; 4] = [StepName::SmtpMailFrom, StepName::SmtpRcptTo, StepName::SmtpData, StepName::SmtpDataAck];

fn is_retryable(f: &Failure) -> bool {
    f.class.is_transient() && RETRY_STEPS.contains(&f.step)
}

/// The spam verdict in words, for a junk placement's reason.
fn spam_evidence(spam: Option<&mailloop_common::spam::SpamReport>) -> String {
    let Some(v) = spam else { return " (no spam verdict header)".into() };
    let mut parts = Vec::new();
    if let Some(score) = v.score {
        parts.push(match v.threshold {
            Some(t) => format!("score {score} / {t}"),
            None => format!("score {score}"),
        });
    }
    if let Some(scl) = v.scl {
        parts.push(format!("SCL {scl}"));
    }
    if let Some(a) = &v.action {
        parts.push(format!("action {a}"));
    }
    if !v.rules.is_empty() {
        let shown: Vec<&str> = v.rules.iter().take(8).map(String::as_str).collect();
        parts.push(format!("rules {}", shown.join(",")));
    }
    if !v.trusted {
        parts.push("unverified: no trusted Authentication-Results".into());
    }
    format!(" ({}: {})", v.filters.join("+"), parts.join(", "))
}

fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every configured threshold the probe went over, as human reasons.
fn threshold_breaches(check: &CheckConfig, steps: &[StepReport], rtt: Option<Duration>, delivery: Option<Duration>) -> Vec<String> {
    let mut out = Vec::new();
    for (key, limit) in &check.thresholds {
        let took = match key {
            ThresholdKey::Step(name) => steps.iter().filter(|s| s.name == *name).map(|s| s.ms).reduce(f64::max),
            ThresholdKey::Rtt => rtt.map(ms),
            ThresholdKey::Delivery => delivery.map(ms),
        };
        if let Some(took) = took {
            if took > ms(*limit) {
                out.push(format!("{key} took {took:.1} ms, threshold {}", humantime::format_duration(*limit)));
            }
        }
    }
    out
}
