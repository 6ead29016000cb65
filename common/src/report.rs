//! The result of one probe: every step, its duration and reply, and a
//! classified outcome.
//!
//! A failed probe is data, not an `Err`: the mail server's misbehaviour is
//! what mailloop exists to report. The JSON form of [`ProbeReport`] is a
//! contract (`mailloop-agent probe --output json`); fields may be added,
//! never renamed. Every field is always present: an `Option` that does not
//! apply is `null`, never omitted, so a consumer can tell "not applicable"
//! from "this producer is too old to know the field".

use crate::alignment::Alignment;
use crate::received::HopDelay;
use crate::{FailureClass, StepName};
use serde::{Deserialize, Serialize};

/// What a probe amounted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Delivered, every step within its threshold.
    Ok,
    /// Delivered, but something is off: a threshold exceeded, cleanup failed.
    Degraded,
    /// Not delivered, or not verifiably so.
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Degraded => "degraded",
            Outcome::Failed => "failed",
        }
    }

    /// The process exit code for this outcome (Nagios convention).
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Ok => 0,
            Outcome::Degraded => 1,
            Outcome::Failed => 2,
        }
    }
}

/// One timed step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    pub name: StepName,
    /// Duration in milliseconds (fractional).
    pub ms: f64,
    pub ok: bool,
    /// SMTP reply code of the step's final reply, when there was one.
    #[serde(default)]
    pub code: Option<u16>,
    /// Human detail: the server's text, TLS version, the UID found...
    #[serde(default)]
    pub detail: Option<String>,
    /// When the step started, in milliseconds after the probe started.
    pub start_ms: f64,
}

/// Why a probe failed, at which step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub step: StepName,
    pub class: FailureClass,
    #[serde(default)]
    pub code: Option<u16>,
    /// Enhanced status code (RFC 3463), e.g. `5.1.1`.
    #[serde(default)]
    pub enhanced: Option<String>,
    /// What happened and what to do, in words (a TLS failure names the
    /// certificate's dates, names or issuer).
    pub message: String,
    /// The library's own words for the same failure (rustls/webpki for
    /// TLS), when `message` rephrases them; for bug reports and searches.
    #[serde(default)]
    pub raw: Option<String>,
}

/// The full result of one round trip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeReport {
    pub probe_id: String,
    pub check: String,
    /// RFC 3339, UTC, microseconds: with `rtt_ms` it gives the wall-clock
    /// moment the probe was found.
    pub started_at: String,
    pub outcome: Outcome,
    /// From the start of `smtp.connect` to the probe being found in the mailbox.
    pub rtt_ms: Option<f64>,
    /// From the end of `smtp.data_ack` to the probe being found.
    pub delivery_ms: Option<f64>,
    /// Every step in the order it started.
    pub steps: Vec<StepReport>,
    pub failure: Option<Failure>,
    pub message_id: String,
    /// The queue id the server named in its reply to end-of-data.
    pub queue_id: Option<String>,
    /// Why the outcome is `degraded` (empty otherwise).
    #[serde(default)]
    pub reasons: Vec<String>,
    /// Risks the check was configured to accept, such as a login sent in
    /// clear text (`allow_plaintext_auth`). They do not change the outcome.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Every submission attempt, oldest first; more than one when a
    /// deferral (greylisting, rate limit) was retried.
    #[serde(default)]
    pub attempts: Vec<Attempt>,
    /// True when an attempt was deferred and a retry delivered.
    #[serde(default)]
    pub greylisted: bool,
    /// Time spent waiting out deferrals: from the first attempt's start to
    /// the last attempt's start. Not part of `rtt_ms` or any step.
    #[serde(default)]
    pub greylist_ms: Option<f64>,
    /// The leaf certificate of every TLS handshake (successful or not).
    #[serde(default)]
    pub tls: Vec<TlsCert>,
    /// What the receiver concluded about SPF, DKIM and DMARC, and mailloop's
    /// own alignment and DKIM checks. Absent when the probe was not fetched.
    #[serde(default)]
    pub auth: Option<AuthReport>,
    /// Where the time went: the probe's `Received:` hops in travel order.
    #[serde(default)]
    pub hops: Vec<HopDelay>,
    /// The sender domain's SPF lookup budget.
    #[serde(default)]
    pub spf: Option<SpfBudget>,
    /// Where the probe was found: `inbox` (the check's `mailbox`) or `junk`
    /// (a junk folder: the outcome is `degraded`); absent when not found.
    #[serde(default)]
    pub placement: Option<String>,
    /// The folder of a `junk` placement, as the server names it.
    #[serde(default)]
    pub placement_folder: Option<String>,
    /// The receiver's spam verdict (X-Spam-*, X-Spamd-Result, Forefront);
    /// absent when the probe carried none or was not fetched.
    #[serde(default)]
    pub spam: Option<crate::spam::SpamReport>,
    /// Blocklist lookups of the sending path (`dnsbl`, `dbl`); absent when
    /// the check configures none.
    #[serde(default)]
    pub reputation: Option<crate::reputation::ReputationReport>,
    /// The OpenTelemetry trace of this probe (32 hex digits); null unless the
    /// agent exports traces. Stored with the report, so a verdict can point at it.
    #[serde(default)]
    pub trace_id: Option<String>,
    /// The trace's root span (`probe`), 16 hex digits.
    #[serde(default)]
    pub span_id: Option<String>,
}

/// Authentication verdicts of the delivered probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuthReport {
    /// The receiver's verdicts (from trusted `Authentication-Results`).
    pub spf: Option<String>,
    pub dkim: Option<String>,
    pub dmarc: Option<String>,
    /// DKIM `d=` of the passing (else first) signature.
    pub dkim_domain: Option<String>,
    /// Domain SPF authenticated (`smtp.mailfrom`, else `smtp.helo`).
    pub spf_domain: Option<String>,
    /// The `From:` domain of the probe as received.
    pub from_domain: Option<String>,
    /// Alignment with the From domain, computed by mailloop.
    pub alignment: AlignmentReport,
    pub authserv_id: Option<String>,
    /// mailloop's own DKIM verification of the received message: `pass`,
    /// `fail (...)`, `none`, `temperror (...)`; absent when switched off.
    pub own_dkim: Option<String>,
    /// The trusted header values, top first.
    pub raw: Vec<String>,
    /// Headers ignored because another authserv-id wrote them.
    pub ignored: usize,
    /// Why these verdicts deserve less trust, if they do.
    #[serde(default)]
    pub warning: Option<String>,
}

/// `strict`, `relaxed` or `none` for each authenticated domain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlignmentReport {
    pub dkim: Alignment,
    pub spf: Alignment,
}

/// The SPF record walk: RFC 7208 allows 10 DNS-querying terms and 2 void lookups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpfBudget {
    pub domain: String,
    /// DNS-querying mechanisms and modifiers (include, a, mx, ptr, exists, redirect), recursively.
    pub lookups: u32,
    /// Lookups that found nothing (NXDOMAIN or no records).
    pub void_lookups: u32,
    pub limit: u32,
    /// Every domain whose record was read, in walk order.
    pub chain: Vec<String>,
    /// Why the walk stopped early or the record is broken (loop, syntax, DNS error).
    #[serde(default)]
    pub error: Option<String>,
}

/// The server certificate seen in one TLS handshake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TlsCert {
    /// `smtp` or `imap`.
    pub protocol: String,
    /// `host:port` as configured.
    pub endpoint: String,
    pub subject: String,
    /// DNS names and IP addresses of the subjectAltName extension.
    pub sans: Vec<String>,
    pub issuer: String,
    /// RFC 3339.
    pub not_after: String,
    /// Whole days until `not_after` (negative once expired).
    pub days_left: i64,
    /// Negotiated protocol version and cipher suite; absent when the handshake failed.
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub cipher: Option<String>,
}

/// One submission attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// RFC 3339, UTC.
    pub started_at: String,
    /// Why it failed; null for the attempt that went through.
    pub failure: Option<Failure>,
}

impl ProbeReport {
    /// The step of that name, if it ran.
    pub fn step(&self, name: StepName) -> Option<&StepReport> {
        self.steps.iter().find(|s| s.name == name)
    }
}
