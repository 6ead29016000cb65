//! Timing and recording of steps.
//!
//! Every protocol step runs through [`Recorder::run`]: it is timed, bounded by
//! its own timeout and by the probe's deadline, and recorded as a
//! [`StepReport`] whether it succeeds or not. A failed step becomes a
//! [`Failure`] (data), which the probe sequence returns to stop there.

use crate::transport::TransportError;
use crate::transport::TlsInfo;
use mailloop_common::{Failure, FailureClass, SmtpReplyCode, StepName, StepReport, TlsCert};
use rustls_pki_types::CertificateDer;
use std::future::Future;
use std::time::{Duration, Instant};

/// What a successful step reports besides its duration.
#[derive(Debug, Default)]
pub struct Done<T> {
    pub value: T,
    pub code: Option<u16>,
    pub detail: Option<String>,
}

impl<T> Done<T> {
    pub fn new(value: T) -> Self {
        Done { value, code: None, detail: None }
    }
    pub fn code(mut self, code: u16) -> Self {
        self.code = Some(code);
        self
    }
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

/// Why a step failed, before it is tied to a step name.
#[derive(Debug, Clone, PartialEq)]
pub struct StepError {
    pub class: FailureClass,
    pub code: Option<u16>,
    pub enhanced: Option<String>,
    pub message: String,
    /// The library's own words when `message` rephrases them (TLS refusals).
    pub raw: Option<String>,
}

impl StepError {
    pub fn new(class: FailureClass, message: impl Into<String>) -> Self {
        StepError { class, code: None, enhanced: None, message: message.into(), raw: None }
    }

    /// The same error with the reply (or HTTP status) code that came with it.
    pub fn with_code(mut self, code: u16) -> Self {
        self.code = Some(code);
        self
    }

    /// A negative SMTP reply, classified in one place (`SmtpReplyCode::classify`).
    pub fn smtp(reply: &SmtpReplyCode, during_auth: bool) -> Self {
        StepError {
            class: reply.classify(during_auth),
            code: Some(reply.code),
            enhanced: reply.enhanced.clone(),
            message: reply.text.clone(),
            raw: None,
        }
    }

    /// A transport failure. `before_greeting` marks the steps where a closed
    /// or reset connection means "could not connect" rather than "broke the
    /// protocol".
    pub fn transport(e: TransportError, before_greeting: bool) -> Self {
        let class = match &e {
            TransportError::Tls(_) | TransportError::TlsRefused { .. } | TransportError::BytesBeforeTls(_) => FailureClass::Tls,
            TransportError::LineTooLong(_) => FailureClass::Protocol,
            TransportError::Closed | TransportError::Io(_) if before_greeting => FailureClass::Connect,
            TransportError::Closed | TransportError::Io(_) => FailureClass::Protocol,
        };
        let raw = match &e {
            TransportError::TlsRefused { raw, .. } => Some(raw.clone()),
            _ => None,
        };
        StepError { raw, ..StepError::new(class, e.to_string()) }
    }
}

/// Collects the steps of one half (SMTP or IMAP) of a probe.
pub struct Recorder {
    origin: Instant,
    deadline: Instant,
    pub steps: Vec<StepReport>,
    /// Certificates seen in this half's TLS handshakes.
    pub tls: Vec<TlsCert>,
}

impl Recorder {
    /// `origin` is the probe's start; `deadline` its hard end.
    pub fn new(origin: Instant, deadline: Instant) -> Self {
        Recorder { origin, deadline, steps: Vec::new(), tls: Vec::new() }
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Runs one step with `timeout` (cut short by the probe deadline) and records it.
    pub async fn run<T, F>(&mut self, name: StepName, timeout: Duration, fut: F) -> Result<T, Failure>
    where
        F: Future<Output = Result<Done<T>, StepError>>,
    {
        let start = Instant::now();
        let budget = timeout.min(self.deadline.saturating_duration_since(start));
        let result = match tokio::time::timeout(budget, fut).await {
            Ok(r) => r,
            Err(_) if budget < timeout => Err(StepError::new(
                FailureClass::Timeout,
                format!("probe deadline reached during {name} (after {})", fmt_duration(budget)),
            )),
            Err(_) => Err(StepError::new(
                FailureClass::Timeout,
                format!("no answer within {} (step timeout)", fmt_duration(timeout)),
            )),
        };
        let end = Instant::now();
        self.record_span(name, start, end, &result);
        match result {
            Ok(done) => Ok(done.value),
            Err(e) => Err(Failure { step: name, class: e.class, code: e.code, enhanced: e.enhanced, message: e.message, raw: e.raw }),
        }
    }

    /// Records the certificate of a TLS handshake (`info` is `None` when the
    /// handshake failed).
    pub fn cert(&mut self, protocol: &str, endpoint: &str, der: Option<CertificateDer<'static>>, info: Option<&TlsInfo>) {
        let Some(der) = der else { return };
        let described = crate::tls::describe(
            &der,
            protocol,
            endpoint,
            info.map(|i| i.version.clone()),
            info.map(|i| i.cipher.clone()),
            chrono::Utc::now(),
        );
        match described {
            Some(c) => self.tls.push(c),
            None => tracing::warn!(%endpoint, "server certificate does not parse as X.509"),
        }
    }

    /// Records a step whose timing was measured by the caller.
    pub fn record_span<T>(&mut self, name: StepName, start: Instant, end: Instant, result: &Result<Done<T>, StepError>) {
        let (ok, code, detail) = match result {
            Ok(d) => (true, d.code, d.detail.clone()),
            Err(e) => (false, e.code, Some(e.message.clone())),
        };
        self.steps.push(StepReport {
            name,
            ms: ms(end - start),
            ok,
            code,
            detail,
            start_ms: ms(start.saturating_duration_since(self.origin)),
        });
        match result {
            Ok(_) => tracing::debug!(step = %name, ms = ms(end - start), "step ok"),
            Err(e) => tracing::info!(step = %name, class = %e.class, code = ?e.code, message = %e.message, "step failed"),
        }
    }
}

/// Milliseconds, fractional, rounded to microseconds.
pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

pub fn fmt_duration(d: Duration) -> String {
    humantime_like(d)
}

fn humantime_like(d: Duration) -> String {
    if d.as_millis() < 1000 {
        format!("{}ms", d.as_millis())
    } else if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}
