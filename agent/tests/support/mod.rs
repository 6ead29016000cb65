//! Test support for `mailloop-agent run`: a fake coordinator, the agent
//! process, and checks whose probes fail fast without asking anyone.
//!
//! A fake coordinator is right here: the coordinator is not a mail server,
//! and what is under test is the agent's side of the agent API. The checks
//! point SMTP and IMAP at a closed loopback port (or a silent one), with
//! the DKIM check and the SPF walk off, so every probe is a quick `failed`
//! report and no DNS question is ever asked.

#![allow(dead_code)]

pub mod agent;
pub mod coordinator;

use mailloop_proto::pb;
use serde_json::{Value, json};

/// The token every fake expects and every agent sends (unless a test says otherwise).
pub const TOKEN: &str = "agent-token-7f3a";
/// The variable the test checks take their IMAP password from.
pub const PASSWORD_VAR: &str = "MAILLOOP_TEST_IMAP_PASS";

/// A loopback port nobody listens on.
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A `[[check]]` table (JSON) whose probe connects to `port` on loopback,
/// plain text, with no DNS: no DKIM check, no SPF walk.
pub fn check_json(name: &str, port: u16) -> Value {
    json!({
        "name": name,
        "from": "probe@sender.test",
        "to": "probe@receiver.test",
        "deadline": "20s",
        "step_timeout": "2s",
        "verify_dkim": false,
        "spf": {"enabled": false},
        "smtp": {"host": "127.0.0.1", "port": port, "security": "none"},
        "imap": {"host": "127.0.0.1", "port": port, "security": "none",
                 "username": "probe@receiver.test", "password_env": PASSWORD_VAR}
    })
}

/// An assignment of `check` every `interval_ms`, revision 1, phase 0.
pub fn assignment(check: &Value, interval_ms: u64) -> pb::Assignment {
    pb::Assignment {
        check_id: check["name"].as_str().unwrap().to_string(),
        revision: 1,
        check_json: check.to_string(),
        interval_ms,
        phase_ms: 0,
    }
}

/// A failing check on a closed port, every second.
pub fn failing_check(name: &str) -> pb::Assignment {
    assignment(&check_json(name, closed_port()), 1000)
}

/// A test PKI: a CA, a server certificate for 127.0.0.1, a client certificate.
pub struct Pki {
    pub ca_pem: String,
    pub server_cert: String,
    pub server_key: String,
    pub client_cert: String,
    pub client_key: String,
}

impl Pki {
    pub fn new() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "mailloop agent test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf = |names: Vec<String>| {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(names).unwrap().signed_by(&key, &ca).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(vec!["127.0.0.1".into()]);
        let (client_cert, client_key) = leaf(vec!["test-agent".into()]);
        Pki { ca_pem: ca.pem(), server_cert, server_key, client_cert, client_key }
    }
}

/// The report inside a result, as JSON.
pub fn report(r: &pb::ProbeResult) -> Value {
    serde_json::from_str(&r.report_json).expect("report_json is JSON")
}

/// Unix epoch milliseconds of an RFC 3339 time.
pub fn epoch_ms(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339).expect("an RFC 3339 time").timestamp_millis()
}
