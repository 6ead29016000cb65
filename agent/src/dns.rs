//! DNS for the diagnostics: the SPF walk and independent DKIM verification.
//!
//! One resolver per agent, built from `[dns] nameservers` (or the system's
//! resolv.conf when none are given). Answers are reduced to what the
//! diagnostics need: records, "void" (NXDOMAIN or no records, which RFC 7208
//! counts), or an error.

use mail_auth::MessageAuthenticator;
use mail_auth::hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::hickory_resolver::net::{DnsError, NetError};
use mail_auth::hickory_resolver::proto::rr::RData;
use mailloop_common::config::DnsConfig;
use std::time::Duration;

/// A DNS answer as the diagnostics see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<T> {
    Records(T),
    /// NXDOMAIN or an empty answer.
    Void,
    /// SERVFAIL, timeout, refused: the question could not be answered.
    Error(String),
}

/// The agent's resolver.
pub struct Dns {
    auth: MessageAuthenticator,
}

impl Dns {
    pub fn new(cfg: &DnsConfig) -> Result<Dns, String> {
        let mut opts = ResolverOpts::default();
        opts.timeout = Duration::from_secs(3);
        opts.attempts = 2;
        let auth = if cfg.nameservers.is_empty() {
            MessageAuthenticator::new_system_conf().map_err(|e| format!("cannot read the system resolver config: {e}"))?
        } else {
            let servers = cfg
                .nameservers
                .iter()
                .map(|addr| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = addr.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = addr.port();
                    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
                })
                .collect();
            MessageAuthenticator::new(ResolverConfig::from_parts(None, vec![], servers), opts)
                .map_err(|e| format!("cannot build the resolver: {e}"))?
        };
        Ok(Dns { auth })
    }

    /// For mail-auth's DKIM verification.
    pub fn authenticator(&self) -> &MessageAuthenticator {
        &self.auth
    }

    /// TXT records of `name`, each one's strings joined.
    pub async fn txt(&self, name: &str) -> Answer<Vec<String>> {
        match self.auth.resolver().txt_lookup(fqdn(name)).await {
            Ok(lookup) => {
                let records: Vec<String> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::TXT(txt) => Some(txt.txt_data.iter().map(|s| String::from_utf8_lossy(s)).collect::<String>()),
                        _ => None,
                    })
                    .collect();
                if records.is_empty() { Answer::Void } else { Answer::Records(records) }
            }
            Err(e) => classify(e),
        }
    }

    /// Whether `name` has an A or AAAA record.
    pub async fn has_address(&self, name: &str) -> Answer<()> {
        let v4 = self.auth.resolver().ipv4_lookup(fqdn(name)).await;
        match v4 {
            Ok(l) if !l.answers().is_empty() => return Answer::Records(()),
            Ok(_) => {}
            Err(e) => {
                if let Answer::Error(m) = classify::<()>(e) {
                    return Answer::Error(m);
                }
            }
        }
        match self.auth.resolver().ipv6_lookup(fqdn(name)).await {
            Ok(l) if !l.answers().is_empty() => Answer::Records(()),
            Ok(_) => Answer::Void,
            Err(e) => classify(e),
        }
    }

    /// IPv4 addresses of `name` (a blocklist's answer codes) and until when
    /// the answer may be kept (its TTL).
    pub async fn a_records(&self, name: &str) -> (Answer<Vec<std::net::Ipv4Addr>>, Option<std::time::Instant>) {
        match self.auth.resolver().ipv4_lookup(fqdn(name)).await {
            Ok(lookup) => {
                let addrs: Vec<std::net::Ipv4Addr> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::A(a) => Some(a.0),
                        _ => None,
                    })
                    .collect();
                let until = Some(lookup.valid_until());
                if addrs.is_empty() { (Answer::Void, until) } else { (Answer::Records(addrs), until) }
            }
            Err(e) => (classify(e), None),
        }
    }

    /// MX host names of `name`.
    pub async fn mx(&self, name: &str) -> Answer<Vec<String>> {
        match self.auth.resolver().mx_lookup(fqdn(name)).await {
            Ok(lookup) => {
                let hosts: Vec<String> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(mx) => Some(mx.exchange.to_string()),
                        _ => None,
                    })
                    .collect();
                if hosts.is_empty() { Answer::Void } else { Answer::Records(hosts) }
            }
            Err(e) => classify(e),
        }
    }
}

/// Absolute names skip the search list (and its extra queries).
fn fqdn(name: &str) -> String {
    if name.ends_with('.') { name.to_string() } else { format!("{name}.") }
}

fn classify<T>(e: NetError) -> Answer<T> {
    match &e {
        NetError::Dns(DnsError::NoRecordsFound(_)) => Answer::Void,
        _ => Answer::Error(e.to_string()),
    }
}
