//! One round trip: the sequence of SMTP and IMAP steps and what they mean.
//!
//! The IMAP session is opened while the SMTP submission runs, so it is
//! already selected (and then idling) when the probe lands. The result is
//! always a [`ProbeReport`]; a mail server's failure is data in it.

use crate::imap;
use crate::message;
use crate::smtp;
use crate::steps::{Recorder, ms};
use crate::transport;
use mailloop_common::config::{CheckConfig, ThresholdKey};
use mailloop_common::{Failure, Outcome, ProbeReport, StepReport};
use std::time::{Duration, Instant};
use tokio_rustls::TlsConnector;

/// Runs probes for one check. Built once; TLS trust is loaded at construction.
pub struct Prober {
    check: CheckConfig,
    smtp_tls: TlsConnector,
    imap_tls: TlsConnector,
}

impl Prober {
    /// Fails if a `ca_file` cannot be used.
    pub fn new(check: CheckConfig) -> Result<Prober, String> {
        let smtp_tls = transport::tls_connector(check.smtp.endpoint.ca_file.as_deref())
            .map_err(|e| format!("check {}: smtp: {e}", check.name))?;
        let imap_tls = if check.imap.endpoint.ca_file == check.smtp.endpoint.ca_file {
            smtp_tls.clone()
        } else {
            transport::tls_connector(check.imap.endpoint.ca_file.as_deref())
                .map_err(|e| format!("check {}: imap: {e}", check.name))?
        };
        Ok(Prober { check, smtp_tls, imap_tls })
    }

    pub fn check(&self) -> &CheckConfig {
        &self.check
    }

    /// One full round trip.
    pub async fn run(&self) -> ProbeReport {
        let check = &self.check;
        let now = chrono::Utc::now();
        let origin = Instant::now();
        let deadline = origin + check.deadline;
        let probe_id = message::new_probe_id(now);
        let message_id = message::message_id(&probe_id, &check.from);
        let body = message::build(&check.name, &probe_id, &message_id, &check.from, &check.to, now);
        tracing::info!(check = %check.name, probe_id = %probe_id, "probe starting");

        let mut smtp_rec = Recorder::new(origin, deadline);
        let mut imap_rec = Recorder::new(origin, deadline);
        let (sent, opened) = tokio::join!(
            smtp::send(check, &self.smtp_tls, &body, &mut smtp_rec),
            imap::open(check, &self.imap_tls, &mut imap_rec),
        );

        let mut failure: Option<Failure> = None;
        let mut reasons = Vec::new();
        let mut rtt = None;
        let mut delivery = None;
        let mut queue_id = None;
        match (sent, opened) {
            (Err(f), session) => {
                failure = Some(f);
                if let Ok(s) = session {
                    let _ = imap::logout(check, s, &mut imap_rec).await;
                }
            }
            (Ok(sent), Err(f)) => {
                // The probe went out but cannot be looked for; the next
                // successful run sweeps it once it is old enough.
                queue_id = sent.queue_id;
                failure = Some(f);
            }
            (Ok(sent), Ok(mut s)) => {
                queue_id = sent.queue_id.clone();
                let found = imap::find(check, &mut s, &probe_id, &mut imap_rec).await;
                let uid = match found {
                    Ok(found) => {
                        rtt = Some(found.found_at - origin);
                        delivery = Some(found.found_at.saturating_duration_since(sent.acked_at));
                        if !contains(&found.raw, probe_id.as_bytes()) {
                            reasons.push(format!("message found by search does not carry probe id {probe_id}"));
                        }
                        Some(found.uid)
                    }
                    Err(f) => {
                        failure = Some(f);
                        None
                    }
                };
                if let Err(f) = imap::cleanup(check, &mut s, uid, &mut imap_rec).await {
                    if failure.is_none() {
                        reasons.push(format!("probe not deleted ({}): {}", f.class, f.message));
                    }
                }
                if let Err(f) = imap::logout(check, s, &mut imap_rec).await {
                    if failure.is_none() {
                        reasons.push(format!("imap.logout failed ({}): {}", f.class, f.message));
                    }
                }
            }
        }

        let mut steps: Vec<StepReport> = smtp_rec.steps;
        steps.extend(imap_rec.steps);
        steps.sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
        if failure.is_none() {
            if let Some(quit) = steps.iter().find(|s| s.name == mailloop_common::StepName::SmtpQuit && !s.ok) {
                reasons.push(format!("smtp.quit failed: {}", quit.detail.as_deref().unwrap_or("")));
            }
            reasons.extend(threshold_breaches(check, &steps, rtt, delivery));
        }
        let outcome = if failure.is_some() {
            Outcome::Failed
        } else if !reasons.is_empty() {
            Outcome::Degraded
        } else {
            Outcome::Ok
        };
        let report = ProbeReport {
            probe_id,
            check: check.name.clone(),
            started_at: now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            outcome,
            rtt_ms: rtt.map(ms),
            delivery_ms: delivery.map(ms),
            steps,
            failure,
            message_id,
            queue_id,
            reasons,
        };
        match &report.failure {
            None => tracing::info!(check = %check.name, probe_id = %report.probe_id, outcome = report.outcome.as_str(), rtt_ms = ?report.rtt_ms, "probe finished"),
            Some(f) => tracing::warn!(check = %check.name, probe_id = %report.probe_id, step = %f.step, class = %f.class, code = ?f.code, message = %f.message, "probe failed"),
        }
        report
    }
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
