//! The probe's side of a fault test: a check config pointing at two fakes,
//! and [`Scenario`], which runs one probe against them and insists it ends
//! (no hang, no panic) with the dialogue as scripted.

use super::{FakeServer, Script, TestPki, Transcript, imap, smtp};
use mailloop_agent::probe::Prober;
use mailloop_common::config::{CheckConfig, ProbeConfig};
use mailloop_common::{ProbeReport, StepName};
use serde_json::{Value, json};
use std::time::Duration;

/// A check against fake servers on 127.0.0.1, built as the config tree a
/// TOML file would give and validated by the agent's own loader.
///
/// Defaults: no TLS on either side, no SMTP AUTH, `step_timeout = "2s"`,
/// `deadline = "10s"`, and `greylist_grace = "0s"` (one attempt: a fault
/// test asserts what the first attempt saw).
#[derive(Debug, Clone)]
pub struct FakeCheck {
    value: Value,
}

impl FakeCheck {
    pub fn new(smtp_port: u16, imap_port: u16) -> FakeCheck {
        FakeCheck {
            value: json!({
                "name": "fault",
                "from": "probe@sender.invalid",
                "to": "probe@receiver.invalid",
                "deadline": "10s",
                "step_timeout": "2s",
                "greylist_grace": "0s",
                // No DNS diagnostics: the fakes have no zone, and a test
                // must never ask the machine's resolver.
                "verify_dkim": false,
                "spf": { "enabled": false },
                "smtp": { "host": "127.0.0.1", "port": smtp_port, "security": "none" },
                "imap": {
                    "host": "127.0.0.1",
                    "port": imap_port,
                    "security": "none",
                    "username": "probe@receiver.invalid",
                    "password": "fake-password",
                },
            }),
        }
    }

    /// Sets a key of the `[[check]]` table itself (`deadline`, `greylist_retry`...).
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> FakeCheck {
        self.value[key] = value.into();
        self
    }

    /// Sets a key of `[check.smtp]`.
    pub fn smtp(mut self, key: &str, value: impl Into<Value>) -> FakeCheck {
        self.value["smtp"][key] = value.into();
        self
    }

    /// Sets a key of `[check.imap]`.
    pub fn imap(mut self, key: &str, value: impl Into<Value>) -> FakeCheck {
        self.value["imap"][key] = value.into();
        self
    }

    /// Overrides one step's timeout (`[check.timeouts]`).
    pub fn timeout(mut self, step: StepName, timeout: &str) -> FakeCheck {
        if !self.value["timeouts"].is_object() {
            self.value["timeouts"] = json!({});
        }
        self.value["timeouts"][step.as_str()] = timeout.into();
        self
    }

    /// Trusts the test CA on both sides.
    pub fn trust(self, pki: &TestPki) -> FakeCheck {
        let ca = pki.ca_file().display().to_string();
        self.smtp("ca_file", ca.clone()).imap("ca_file", ca)
    }

    /// The `[[check]]` table as a config tree.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// The validated config; panics with every issue if it is invalid.
    pub fn config(&self) -> CheckConfig {
        let tree = json!({ "check": [self.value.clone()] });
        match ProbeConfig::from_value(&tree, &|_| None) {
            Ok(config) => config.checks.into_iter().next().expect("one check"),
            Err(issues) => panic!("invalid fake check config: {issues:?}\n{:#}", self.value),
        }
    }
}

/// One probe against an SMTP fake and an IMAP fake.
pub struct Scenario {
    smtp: FakeServer,
    imap: FakeServer,
    check: FakeCheck,
    dns: mailloop_common::config::DnsConfig,
}

/// What a [`Scenario`] produced.
#[derive(Debug)]
pub struct Run {
    pub report: ProbeReport,
    pub smtp: Transcript,
    pub imap: Transcript,
}

impl Scenario {
    pub fn new(smtp: FakeServer, imap: FakeServer) -> Scenario {
        let check = FakeCheck::new(smtp.port(), imap.port());
        Scenario { smtp, imap, check, dns: Default::default() }
    }

    /// The SMTP server plays `script`; the IMAP server behaves ([`imap::mailbox`]).
    pub fn smtp_fault(script: impl Into<Script>) -> Scenario {
        Scenario::new(FakeServer::start(script), FakeServer::start(imap::mailbox()))
    }

    /// The IMAP server plays `script`; the SMTP server takes the probe ([`smtp::delivers`]).
    pub fn imap_fault(script: impl Into<Script>) -> Scenario {
        Scenario::new(FakeServer::start(smtp::delivers()), FakeServer::start(script))
    }

    /// Adjusts the check config.
    pub fn configure(mut self, f: impl FnOnce(FakeCheck) -> FakeCheck) -> Scenario {
        self.check = f(self.check);
        self
    }

    /// Name servers for the probe's DNS diagnostics (only with `verify_dkim`
    /// or `spf` switched on; never the machine's resolver).
    pub fn dns(mut self, nameservers: Vec<std::net::SocketAddr>) -> Scenario {
        self.dns = mailloop_common::config::DnsConfig { nameservers };
        self
    }

    /// Runs the probe. Fails the test if the agent panics, if the probe
    /// outlives its deadline plus a few step timeouts (a hang), or if the
    /// agent did not follow either script.
    pub async fn run(self) -> Run {
        let Scenario { smtp, imap, check, dns } = self;
        let config = check.config();
        let guard = hang_guard(&config);
        let prober = Prober::new(config, &dns).unwrap_or_else(|e| panic!("cannot build the prober: {e}"));
        let mut probe = tokio::spawn(async move { prober.run().await });
        let report = match tokio::time::timeout(guard, &mut probe).await {
            Ok(Ok(report)) => report,
            Ok(Err(e)) if e.is_panic() => panic!("the agent panicked: {}", panic_text(e.into_panic())),
            Ok(Err(e)) => panic!("the probe task failed: {e}"),
            Err(_) => {
                probe.abort();
                panic!("the probe hung: no report {guard:?} after it started");
            }
        };
        let smtp = smtp.stop().await;
        let imap = imap.stop().await;
        assert!(smtp.broken.is_empty(), "the SMTP dialogue went off script: {smtp:#?}\n{report:#?}");
        assert!(imap.broken.is_empty(), "the IMAP dialogue went off script: {imap:#?}\n{report:#?}");
        Run { report, smtp, imap }
    }
}

/// The longest a probe may take: every retry window, the deadline, and the
/// few steps that may run past it (the last search, cleanup, logout).
fn hang_guard(config: &CheckConfig) -> Duration {
    let longest = config.timeouts.values().copied().fold(config.step_timeout, Duration::max);
    config.greylist_grace + config.deadline + longest * 3 + Duration::from_secs(2)
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(not a string)".into())
}
