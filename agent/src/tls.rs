//! TLS trust and certificate capture.
//!
//! [`TlsClient`] holds the trust roots of one check (the system store plus
//! the config's `ca_file`) and builds, per handshake, a rustls config whose
//! verifier records the server's leaf certificate before judging it. So the
//! certificate is reported even when the handshake fails because it expired
//! or names another host: that is when an SRE most wants to see it.

use mailloop_common::TlsCert;
use rustls::DigitallySignedStruct;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::sync::{Arc, Mutex, OnceLock};
use tokio_rustls::TlsConnector;

/// Trust roots and crypto provider for one check's connections.
#[derive(Clone)]
pub struct TlsClient {
    /// A verifier over the config's `ca_file` roots, when there is one.
    extra: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

/// Where a handshake leaves the certificate it saw.
pub type CertSlot = Arc<Mutex<Option<CertificateDer<'static>>>>;

fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())).clone()
}

/// The system's trust store, loaded once per process and only when a
/// handshake needs it: parsing it is most of a one-shot probe's CPU time,
/// and a probe that trusts its own `ca_file` may never need it.
fn system_verifier() -> Result<Arc<WebPkiServerVerifier>, rustls::Error> {
    static SYSTEM: OnceLock<Result<Arc<WebPkiServerVerifier>, String>> = OnceLock::new();
    SYSTEM
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| format!("no usable system trust roots: {e}"))
        })
        .clone()
        .map_err(rustls::Error::General)
}

impl TlsClient {
    /// System roots plus the PEM certificates of `ca_file`.
    pub fn new(ca_file: Option<&std::path::Path>) -> Result<TlsClient, String> {
        let extra = match ca_file {
            None => None,
            Some(path) => {
                use rustls_pki_types::pem::PemObject;
                let mut roots = rustls::RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
                for cert in certs {
                    let cert = cert.map_err(|e| format!("bad PEM in ca_file {}: {e}", path.display()))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("unusable certificate in ca_file {}: {e}", path.display()))?;
                }
                if roots.is_empty() {
                    return Err(format!("ca_file {} holds no certificate", path.display()));
                }
                let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                    .build()
                    .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
                Some(verifier)
            }
        };
        Ok(TlsClient { extra, provider: provider() })
    }

    /// A connector for one handshake and the slot its certificate lands in.
    pub fn connector(&self) -> Result<(TlsConnector, CertSlot), String> {
        let slot = CertSlot::default();
        let verifier = Arc::new(Capture { extra: self.extra.clone(), provider: self.provider.clone(), slot: slot.clone() });
        let mut config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        // Every probe measures a full handshake, as a first-time client sees it.
        config.resumption = rustls::client::Resumption::disabled();
        Ok((TlsConnector::from(Arc::new(config)), slot))
    }
}

/// Records the leaf certificate, then lets webpki decide: against the
/// `ca_file` roots first, and against the system roots when those do not
/// know the issuer. A chain ends in one anchor, so this accepts exactly
/// what one store holding both would. Verification is never weakened.
#[derive(Debug)]
struct Capture {
    extra: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
    slot: CertSlot,
}

impl ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut slot) = self.slot.lock() {
            *slot = Some(end_entity.clone().into_owned());
        }
        if let Some(extra) = &self.extra {
            match extra.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
                Err(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)) => {}
                verdict => return verdict,
            }
        }
        system_verifier()?.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Describes a certificate for the report; `None` if it does not parse.
pub fn describe(
    der: &[u8],
    protocol: &str,
    endpoint: &str,
    version: Option<String>,
    cipher: Option<String>,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<TlsCert> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(d) => sans.push(d.to_string()),
                GeneralName::IPAddress(b) => sans.push(ip_string(b)),
                _ => {}
            }
        }
    }
    let not_after = cert.validity().not_after.timestamp();
    let not_after_dt = chrono::DateTime::from_timestamp(not_after, 0)?;
    let secs_left = not_after - now.timestamp();
    Some(TlsCert {
        protocol: protocol.to_string(),
        endpoint: endpoint.to_string(),
        subject: cert.subject().to_string(),
        sans,
        issuer: cert.issuer().to_string(),
        not_after: not_after_dt.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        days_left: secs_left.div_euclid(86_400),
        version,
        cipher,
    })
}

fn ip_string(b: &[u8]) -> String {
    match b.len() {
        4 => std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string(),
        16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(b);
            std::net::Ipv6Addr::from(a).to_string()
        }
        _ => format!("{b:02x?}"),
    }
}
