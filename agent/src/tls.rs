//! TLS trust, certificate capture, and failures explained in words.
//!
//! [`TlsClient`] holds the trust of one check side: the system store, the
//! config's `ca_file`, or its `pin_sha256` pins. Per handshake it builds a
//! rustls config whose verifier records the server's leaf certificate
//! before judging it, so the certificate is reported even when the
//! handshake fails because it expired or names another host: that is when
//! an SRE most wants to see it.
//!
//! Trust, in the order the verifier applies it:
//! - with pins, the leaf must match one (SHA-256 of the certificate or of
//!   its SubjectPublicKeyInfo); no CA is consulted;
//! - else webpki against the `ca_file` roots, then the system roots;
//! - a leaf byte-identical to a certificate in `ca_file` is trusted as it is
//!   when webpki refuses it only for being a CA (`openssl req -x509` makes
//!   self-signed certificates `CA:TRUE`) or for its unknown issuer, as
//!   OpenSSL does.
//!
//! Pinned and byte-identical certificates still have their name and their
//! validity period checked here, and the handshake signature is always
//! checked with the certificate's key.
//!
//! [`explain`] turns a refused handshake into a sentence that says what is
//! wrong and what to do; the rustls text is kept beside it as the raw reason.

use mailloop_common::TlsCert;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{CertificateError, DigitallySignedStruct, OtherError};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use tokio_rustls::TlsConnector;

/// Trust roots and crypto provider for one check side's connections.
#[derive(Clone)]
pub struct TlsClient {
    /// A verifier over the config's `ca_file` roots, when there is one.
    extra: Option<Arc<WebPkiServerVerifier>>,
    /// What the checks beside webpki need, shared by every handshake.
    trust: Arc<Trust>,
    provider: Arc<CryptoProvider>,
}

/// The `ca_file` certificates as given and the pins: what the
/// byte-identical and pinned paths compare against, and what the
/// explanations name.
#[derive(Debug, Default)]
struct Trust {
    ca_file: Option<PathBuf>,
    ca_certs: Vec<CertificateDer<'static>>,
    pins: Vec<[u8; 32]>,
}

/// Where a handshake leaves the certificate it saw.
pub type CertSlot = Arc<Mutex<Option<CertificateDer<'static>>>>;

pub(crate) fn provider() -> Arc<CryptoProvider> {
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
    /// System roots plus the PEM certificates of `ca_file`; with `pins`,
    /// only a leaf that matches one of them.
    pub fn new(ca_file: Option<&Path>, pins: &[[u8; 32]]) -> Result<TlsClient, String> {
        let mut trust = Trust { ca_file: ca_file.map(Path::to_path_buf), pins: pins.to_vec(), ..Trust::default() };
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
                        .add(cert.clone())
                        .map_err(|e| format!("unusable certificate in ca_file {}: {e}", path.display()))?;
                    trust.ca_certs.push(cert);
                }
                if roots.is_empty() {
                    let key = std::fs::read_to_string(path).is_ok_and(|t| t.contains("PRIVATE KEY-----"));
                    let hint = if key { " (it holds a private key: point ca_file at the CA's certificate)" } else { "" };
                    return Err(format!("ca_file {} holds no certificate{hint}", path.display()));
                }
                let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                    .build()
                    .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
                Some(verifier)
            }
        };
        Ok(TlsClient { extra, trust: Arc::new(trust), provider: provider() })
    }

    /// A connector for one handshake and the slot its certificate lands in.
    pub fn connector(&self) -> Result<(TlsConnector, CertSlot), String> {
        let slot = CertSlot::default();
        let verifier = Arc::new(Capture {
            extra: self.extra.clone(),
            trust: self.trust.clone(),
            provider: self.provider.clone(),
            slot: slot.clone(),
        });
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

    /// A refused handshake in words, with what to do ([`explain`]).
    pub fn explain(&self, error: &rustls::Error, cert: Option<&CertificateDer<'_>>, name: &ServerName<'_>) -> String {
        explain(error, cert, name, self.trust.ca_file.as_deref(), chrono::Utc::now())
    }
}

/// Records the leaf certificate, then decides as the module doc says.
/// webpki is asked first whenever there are no pins; the byte-identical
/// path only ever accepts what webpki refused for being a CA or having an
/// unknown issuer, and every other refusal stands.
#[derive(Debug)]
struct Capture {
    extra: Option<Arc<WebPkiServerVerifier>>,
    trust: Arc<Trust>,
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
        if !self.trust.pins.is_empty() {
            let (cert_hash, key_hash) = hashes(end_entity)?;
            if !self.trust.pins.iter().any(|p| *p == cert_hash || *p == key_hash) {
                return Err(other(PinMismatch { cert_hash, key_hash }));
            }
            return name_and_validity(end_entity, server_name, now);
        }
        if let Some(extra) = &self.extra {
            match extra.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
                Err(e) if trusted_as_is(&e) && self.trust.ca_certs.iter().any(|c| c.as_ref() == end_entity.as_ref()) => {
                    return name_and_validity(end_entity, server_name, now);
                }
                Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {}
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

/// The refusals a certificate given verbatim in `ca_file` overrides: it is
/// a CA (self-signed with `CA:TRUE`), or webpki found no issuer for it.
fn trusted_as_is(e: &rustls::Error) -> bool {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => true,
        rustls::Error::InvalidCertificate(CertificateError::Other(o)) => {
            matches!(o.0.downcast_ref::<webpki::Error>(), Some(webpki::Error::CaUsedAsEndEntity))
        }
        _ => false,
    }
}

/// What webpki checks besides the chain, for a leaf trusted without one:
/// the validity period, then the name (the order webpki reports them in).
pub(crate) fn name_and_validity(
    end_entity: &CertificateDer<'_>,
    server_name: &ServerName<'_>,
    now: UnixTime,
) -> Result<ServerCertVerified, rustls::Error> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(end_entity).map_err(|_| CertificateError::BadEncoding)?;
    let unix = |t: ASN1Time| UnixTime::since_unix_epoch(std::time::Duration::from_secs(t.timestamp().max(0) as u64));
    let (not_before, not_after) = (unix(cert.validity().not_before), unix(cert.validity().not_after));
    if now.as_secs() > not_after.as_secs() {
        return Err(CertificateError::ExpiredContext { time: now, not_after }.into());
    }
    if now.as_secs() < not_before.as_secs() {
        return Err(CertificateError::NotValidYetContext { time: now, not_before }.into());
    }
    let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
    rustls::client::verify_server_name(&parsed, server_name)?;
    Ok(ServerCertVerified::assertion())
}

/// SHA-256 of the certificate and of its SubjectPublicKeyInfo.
fn hashes(der: &CertificateDer<'_>) -> Result<([u8; 32], [u8; 32]), rustls::Error> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| CertificateError::BadEncoding)?;
    Ok((sha256(der), sha256(cert.public_key().raw)))
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    ring::digest::digest(&ring::digest::SHA256, bytes).as_ref().try_into().expect("SHA-256 is 32 bytes")
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// The leaf matched no `pin_sha256`; carries what it would have matched.
struct PinMismatch {
    cert_hash: [u8; 32],
    key_hash: [u8; 32],
}

/// rustls shows a custom error with `Debug` in its own text (the raw
/// reason): hashes, not byte lists.
impl std::fmt::Debug for PinMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PinMismatch(certificate sha256 {}, public key sha256//{})", hex(&self.cert_hash), b64(&self.key_hash))
    }
}

impl std::fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "certificate matches no pin_sha256: it has certificate sha256 {} and public key sha256//{}; \
             if the server's certificate or key changed on purpose, pin the new one",
            hex(&self.cert_hash),
            b64(&self.key_hash)
        )
    }
}

impl std::error::Error for PinMismatch {}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A refused TLS handshake as a sentence: what is wrong, with the
/// certificate's own dates, names or issuer, and what to do about it.
/// `cert` is the leaf the server presented, if it got that far; `ca_file`
/// the check's. Never a `Debug` dump: an error this does not know gets a
/// plain sentence around rustls's own words.
pub fn explain(
    error: &rustls::Error,
    cert: Option<&CertificateDer<'_>>,
    name: &ServerName<'_>,
    ca_file: Option<&Path>,
    now: chrono::DateTime<chrono::Utc>,
) -> String {
    use rustls::Error as E;
    let facts = cert.and_then(|c| Facts::of(c));
    let host = name.to_str();
    let cert_error = match error {
        E::InvalidCertificate(c) => c,
        E::NoCertificatesPresented => return "the server sent no certificate".into(),
        E::AlertReceived(alert) => {
            return format!(
                "the server refused the TLS handshake (alert {}): it may need a TLS version or cipher this client does not offer (TLS 1.2 and 1.3 with modern ciphers), or a client certificate",
                alert_name(*alert)
            );
        }
        // The details of these two are rustls enum names: they stay in `raw`.
        E::PeerIncompatible(_) => {
            return "the server's TLS offers nothing this client supports (it speaks TLS 1.2 and 1.3 with modern ciphers)".into();
        }
        E::InvalidMessage(_) | E::PeerMisbehaved(_) | E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. } => {
            return "the server broke the TLS protocol: is this port really TLS (security = \"tls\" on a STARTTLS port?)".into();
        }
        _ => return format!("TLS handshake failed: {error}"),
    };
    let subject = facts.as_ref().map(|f| f.subject.clone()).unwrap_or_else(|| "(unreadable)".into());
    use CertificateError as C;
    match cert_error {
        C::Expired | C::ExpiredContext { .. } => match &facts {
            Some(f) => format!(
                "certificate expired on {} ({}): the server needs a renewed certificate",
                f.not_after.format("%Y-%m-%d"),
                ago(now - f.not_after)
            ),
            None => "certificate has expired: the server needs a renewed certificate".into(),
        },
        C::NotValidYet | C::NotValidYetContext { .. } => match &facts {
            Some(f) => format!(
                "certificate is not valid before {} ({}): check this machine's clock, or the server installed it too early",
                f.not_before.format("%Y-%m-%d %H:%M UTC"),
                ago(f.not_before - now).replace(" ago", " from now")
            ),
            None => "certificate is not valid yet: check this machine's clock".into(),
        },
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            // The certificate's own names: webpki's list reads `DnsName("...")`.
            let names = match &facts {
                Some(f) if !f.names.is_empty() => f.names.join(", "),
                _ => format!("no DNS name or address (subject {subject})"),
            };
            format!(
                "certificate is for {names}, not {host}: connect by a name it carries or set server_name to one, or give the server a certificate for {host}"
            )
        }
        C::UnknownIssuer => match &facts {
            Some(f) if f.self_signed => self_signed(f, ca_file),
            Some(f) => format!(
                "unknown issuer {}: give its CA in ca_file (or pin the server's certificate with pin_sha256), or have the server send its intermediate certificates",
                f.issuer
            ),
            None => "unknown issuer: give the CA in ca_file (or pin the server's certificate with pin_sha256)".into(),
        },
        C::Revoked => format!("certificate {subject} was revoked by its CA: the server needs a new certificate"),
        C::UnknownRevocationStatus | C::ExpiredRevocationList | C::ExpiredRevocationListContext { .. } => {
            format!("the revocation status of certificate {subject} is unknown")
        }
        C::BadSignature => format!(
            "a signature does not verify: certificate {subject} is not signed by the issuer it names, or the server signed the handshake with a key that is not the certificate's (a damaged, forged or mismatched certificate)"
        ),
        #[allow(deprecated)]
        C::UnsupportedSignatureAlgorithm
        | C::UnsupportedSignatureAlgorithmContext { .. }
        | C::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => format!(
            "certificate {subject} is signed with an algorithm this client does not accept (it takes ECDSA P-256/P-384, Ed25519 and RSA with SHA-256 or stronger): the server needs a certificate signed with one of those"
        ),
        C::InvalidPurpose | C::InvalidPurposeContext { .. } => format!(
            "certificate {subject} is not for TLS servers (its extended key usage lacks serverAuth): the server needs a server certificate"
        ),
        C::BadEncoding => "the server's certificate is not valid X.509 (bad DER)".into(),
        C::UnhandledCriticalExtension => format!("certificate {subject} has a critical extension this client cannot process"),
        C::Other(o) => {
            if let Some(p) = o.0.downcast_ref::<PinMismatch>() {
                return p.to_string();
            }
            match o.0.downcast_ref::<webpki::Error>() {
                // `openssl req -x509` marks what it makes CA:TRUE.
                Some(webpki::Error::CaUsedAsEndEntity) => match &facts {
                    Some(f) if f.self_signed => self_signed(f, ca_file),
                    _ => format!(
                        "the server presents a CA certificate (CA:TRUE) as its own, {subject}: put this very certificate in ca_file to trust it as it is, or pin it with pin_sha256"
                    ),
                },
                Some(webpki::Error::UnsupportedCertVersion) => {
                    format!("certificate {subject} is an old X.509 version 1 certificate: give this very certificate as ca_file, or pin it with pin_sha256")
                }
                Some(webpki::Error::NameConstraintViolation) => {
                    format!("certificate {subject} names a host its CA is not allowed to certify (name constraints)")
                }
                Some(webpki::Error::PathLenConstraintViolated | webpki::Error::EndEntityUsedAsCa) => {
                    "the certificate chain is malformed: a certificate acts as a CA it is not allowed to be".into()
                }
                _ => format!("certificate {subject} refused: {o}"),
            }
        }
        _ => format!("certificate {subject} refused: {error}"),
    }
}

/// A self-signed leaf nobody vouched for: say how to trust exactly it.
fn self_signed(f: &Facts, ca_file: Option<&Path>) -> String {
    let pin = hex(&f.cert_hash);
    match ca_file {
        Some(path) => format!(
            "self-signed certificate not in ca_file {}: {}; add this very certificate to ca_file, or pin it with pin_sha256 = [\"{pin}\"]",
            path.display(),
            f.subject
        ),
        None => format!(
            "self-signed certificate {}: give this very certificate as ca_file, or pin it with pin_sha256 = [\"{pin}\"]",
            f.subject
        ),
    }
}

/// What an explanation quotes from the presented certificate.
struct Facts {
    subject: String,
    issuer: String,
    self_signed: bool,
    /// DNS names and addresses of subjectAltName, else the subject's CN.
    names: Vec<String>,
    not_before: chrono::DateTime<chrono::Utc>,
    not_after: chrono::DateTime<chrono::Utc>,
    cert_hash: [u8; 32],
}

impl Facts {
    fn of(der: &CertificateDer<'_>) -> Option<Facts> {
        use x509_parser::prelude::*;
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let mut names = sans(&cert);
        if names.is_empty() {
            names.extend(cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).map(str::to_string));
        }
        let at = |t: ASN1Time| chrono::DateTime::from_timestamp(t.timestamp(), 0);
        Some(Facts {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            self_signed: cert.subject().as_raw() == cert.issuer().as_raw(),
            names,
            not_before: at(cert.validity().not_before)?,
            not_after: at(cert.validity().not_after)?,
            cert_hash: sha256(der),
        })
    }
}

fn sans(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let mut out = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(d) => out.push(d.to_string()),
                GeneralName::IPAddress(b) => out.push(ip_string(b)),
                _ => {}
            }
        }
    }
    out
}

/// `12 days ago`, `1 day ago`, `3 hours ago`, `less than an hour ago`.
fn ago(d: chrono::TimeDelta) -> String {
    let plural = |n: i64, unit: &str| if n == 1 { format!("1 {unit} ago") } else { format!("{n} {unit}s ago") };
    match (d.num_days(), d.num_hours()) {
        (days, _) if days >= 1 => plural(days, "day"),
        (_, hours) if hours >= 1 => plural(hours, "hour"),
        _ => "less than an hour ago".into(),
    }
}

/// An alert's name as RFC 8446 spells it (`handshake_failure`).
fn alert_name(alert: rustls::AlertDescription) -> String {
    let camel = format!("{alert:?}");
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
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
    let sans = sans(&cert);
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

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

    const NOW: &str = "2026-06-15T12:00:00Z";

    fn now() -> chrono::DateTime<chrono::Utc> {
        NOW.parse().unwrap()
    }

    /// A self-signed certificate for `names`, valid between two dates.
    fn cert(names: &[&str], ca: bool, from: &str, to: &str) -> CertificateDer<'static> {
        let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name.push(DnType::CommonName, names[0]);
        if ca {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        let at = |d: &str| {
            let ymd: Vec<u16> = d[..10].split('-').map(|n| n.parse().unwrap()).collect();
            rcgen::date_time_ymd(ymd[0].into(), ymd[1] as u8, ymd[2] as u8)
        };
        p.not_before = at(from);
        p.not_after = at(to);
        p.self_signed(&KeyPair::generate().unwrap()).unwrap().der().clone()
    }

    fn leaf() -> CertificateDer<'static> {
        cert(&["mail.example.com", "*.example.com"], false, "2026-01-01T00:00:00Z", "2026-06-03T00:00:00Z")
    }

    fn explained(e: impl Into<rustls::Error>, cert: &CertificateDer<'_>, ca_file: Option<&str>) -> String {
        let name = ServerName::try_from("imap.example.org").unwrap();
        explain(&e.into(), Some(cert), &name, ca_file.map(Path::new), now())
    }

    #[test]
    fn certificate_refusals_read_as_sentences_with_what_to_do() {
        let c = leaf();
        let expired = CertificateError::ExpiredContext { time: UnixTime::now(), not_after: UnixTime::now() };
        assert_eq!(explained(expired, &c, None), "certificate expired on 2026-06-03 (12 days ago): the server needs a renewed certificate");
        assert_eq!(
            explained(CertificateError::NotValidForName, &c, None),
            "certificate is for mail.example.com, *.example.com, not imap.example.org: connect by a name it carries or set server_name to one, or give the server a certificate for imap.example.org"
        );
        let early = cert(&["imap.example.org"], false, "2026-06-18", "2027-01-01");
        let text = explained(CertificateError::NotValidYet, &early, None);
        assert!(text.starts_with("certificate is not valid before 2026-06-18 00:00 UTC (2 days from now): check this machine's clock"), "{text}");
        assert!(explained(CertificateError::Revoked, &c, None).starts_with("certificate CN=mail.example.com was revoked by its CA"));
        assert!(explained(CertificateError::BadSignature, &c, None).starts_with("a signature does not verify"));
        assert!(explained(CertificateError::InvalidPurpose, &c, None).contains("not for TLS servers"));
    }

    #[test]
    fn self_signed_and_unknown_issuers_say_how_to_trust_them() {
        let ca_true = cert(&["imap.example.org"], true, "2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z");
        let pin = hex(&sha256(&ca_true));
        let as_leaf = CertificateError::Other(OtherError(Arc::new(webpki::Error::CaUsedAsEndEntity)));
        assert_eq!(
            explained(as_leaf, &ca_true, Some("/etc/ca.pem")),
            format!("self-signed certificate not in ca_file /etc/ca.pem: CN=imap.example.org; add this very certificate to ca_file, or pin it with pin_sha256 = [\"{pin}\"]")
        );
        assert_eq!(
            explained(CertificateError::UnknownIssuer, &ca_true, None),
            format!("self-signed certificate CN=imap.example.org: give this very certificate as ca_file, or pin it with pin_sha256 = [\"{pin}\"]")
        );
        // Issued by someone else.
        let issuer_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name.push(DnType::CommonName, "Corp Root");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer = rcgen::Issuer::new(ca, issuer_key);
        let issued = CertificateParams::new(vec!["imap.example.org".to_string()])
            .unwrap()
            .signed_by(&KeyPair::generate().unwrap(), &issuer)
            .unwrap();
        assert!(
            explained(CertificateError::UnknownIssuer, issued.der(), None)
                .starts_with("unknown issuer CN=Corp Root: give its CA in ca_file (or pin the server's certificate with pin_sha256)")
        );
    }

    #[test]
    fn other_failures_are_words_too() {
        let c = leaf();
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure);
        assert!(explained(alert, &c, None).starts_with("the server refused the TLS handshake (alert handshake_failure)"));
        let mismatch = PinMismatch { cert_hash: [0xab; 32], key_hash: [0; 32] };
        let text = mismatch.to_string();
        assert_eq!(explained(other(mismatch), &c, None), text);
        assert!(text.contains(&"ab".repeat(32)) && text.contains("sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="), "{text}");
        let raw = other(PinMismatch { cert_hash: [0xab; 32], key_hash: [0; 32] }).to_string();
        assert!(raw.contains(&format!("PinMismatch(certificate sha256 {}, public key sha256//AAAA", "ab".repeat(32))), "{raw}");
    }

    #[test]
    fn a_leaf_trusted_as_is_still_has_its_dates_and_name_checked() {
        let c = leaf();
        let name = ServerName::try_from("mail.example.com").unwrap();
        let at = |s: &str| UnixTime::since_unix_epoch(std::time::Duration::from_secs(s.parse::<chrono::DateTime<chrono::Utc>>().unwrap().timestamp() as u64));
        assert!(name_and_validity(&c, &name, at("2026-03-01T00:00:00Z")).is_ok());
        let wild = ServerName::try_from("imap.example.com").unwrap();
        assert!(name_and_validity(&c, &wild, at("2026-03-01T00:00:00Z")).is_ok(), "the wildcard covers it");
        let err = |n: &ServerName<'_>, t| name_and_validity(&c, n, at(t)).unwrap_err();
        assert!(matches!(err(&name, "2026-07-01T00:00:00Z"), rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. })));
        assert!(matches!(err(&name, "2025-12-01T00:00:00Z"), rustls::Error::InvalidCertificate(CertificateError::NotValidYetContext { .. })));
        let other_name = ServerName::try_from("imap.example.org").unwrap();
        assert!(matches!(err(&other_name, "2026-03-01T00:00:00Z"), rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. })));
    }
}
