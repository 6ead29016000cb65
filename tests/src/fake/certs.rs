//! A throwaway certificate authority and the server certificates TLS faults
//! need: one that is right, one for another name, one that has expired and
//! one that expires in five days. And [`SelfSigned`]: a certificate that is
//! its own issuer, made as users make them (`openssl req -x509`, which marks
//! it `CA:TRUE`).
//!
//! Everything is generated fresh (rcgen, ECDSA P-256) into a temporary
//! directory that lives as long as the [`TestPki`]; a check trusts the CA
//! through `ca_file` ([`TestPki::ca_file`]). The PEM text and files are
//! public so tests of certificate reporting can reuse them.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;
use time::{Duration, OffsetDateTime};

/// The names a good certificate carries: what a check on loopback connects to.
pub const LOOPBACK_NAMES: [&str; 2] = ["127.0.0.1", "localhost"];

/// A test CA and server certificates signed by it.
pub struct TestPki {
    dir: tempfile::TempDir,
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// Valid now, for 127.0.0.1 and localhost.
    pub valid: Identity,
    /// Valid now, but only for `other.invalid`.
    pub wrong_name: Identity,
    /// For the right names, but expired a year ago.
    pub expired: Identity,
    /// For the right names, valid, with five days left.
    pub expires_in_5_days: Identity,
    /// A client certificate (extended key usage clientAuth), valid now:
    /// an agent's, for a coordinator whose `client_ca` is this CA.
    pub client: Identity,
}

/// One server certificate with its key, as PEM text and as files.
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub not_after: SystemTime,
    cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl TestPki {
    /// Generates the CA and every certificate into a fresh temporary directory.
    pub fn new() -> TestPki {
        let dir = tempfile::Builder::new().prefix("mailloop-pki").tempdir().expect("temp dir for test certificates");
        let now = OffsetDateTime::now_utc();

        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.distinguished_name.push(DnType::CommonName, "mailloop fault-injection CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        ca.not_before = now - Duration::days(3650);
        ca.not_after = now + Duration::days(3650);
        let ca_key = KeyPair::generate().expect("CA key");
        let ca_pem = ca.self_signed(&ca_key).expect("self-signed CA").pem();
        std::fs::write(dir.path().join("ca.pem"), &ca_pem).expect("write ca.pem");
        let issuer = Issuer::new(ca, ca_key);

        let leaf = |file: &str, names: &[&str], not_before: OffsetDateTime, not_after: OffsetDateTime| {
            Identity::issue(dir.path(), file, names, not_before, not_after, &issuer)
        };
        let valid = leaf("valid", &LOOPBACK_NAMES, now - Duration::days(1), now + Duration::days(365));
        let wrong_name = leaf("wrong-name", &["other.invalid"], now - Duration::days(1), now + Duration::days(365));
        let expired = leaf("expired", &LOOPBACK_NAMES, now - Duration::days(730), now - Duration::days(365));
        let expires_in_5_days =
            leaf("expires-in-5-days", &LOOPBACK_NAMES, now - Duration::days(85), now + Duration::days(5));
        let mut client_params = CertificateParams::new(vec!["agent.invalid".to_string()]).expect("client params");
        client_params.distinguished_name.push(DnType::CommonName, "mailloop test agent");
        client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        client_params.not_before = now - Duration::days(1);
        client_params.not_after = now + Duration::days(365);
        let client = Identity::from_params(dir.path(), "client", client_params, &issuer);
        TestPki { dir, ca_pem, valid, wrong_name, expired, expires_in_5_days, client }
    }

    /// The CA certificate as a PEM file, for a check's `ca_file`.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
}

impl Default for TestPki {
    fn default() -> Self {
        TestPki::new()
    }
}

impl Identity {
    fn issue(
        dir: &Path,
        file: &str,
        names: &[&str],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
        issuer: &Issuer<'_, KeyPair>,
    ) -> Identity {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, names[0].clone());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = not_before;
        params.not_after = not_after;
        Identity::from_params(dir, file, params, issuer)
    }

    /// A certificate from `params`, signed by `issuer`, written as `dir/file.{pem,key}`.
    fn from_params(dir: &Path, file: &str, params: CertificateParams, issuer: &Issuer<'_, KeyPair>) -> Identity {
        let not_after = params.not_after;
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, issuer).expect("leaf signed by the test CA");
        let id = Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_file: dir.join(format!("{file}.pem")),
            key_file: dir.join(format!("{file}.key")),
            not_after: not_after.into(),
            cert_der: cert.der().clone(),
            key_der: key.serialize_der(),
        };
        std::fs::write(&id.cert_file, &id.cert_pem).expect("write certificate");
        std::fs::write(&id.key_file, &id.key_pem).expect("write key");
        id
    }

    /// A rustls server config presenting this certificate (ring provider).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()));
        let config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_single_cert(vec![self.cert_der.clone()], key)
            .expect("certificate and key match");
        Arc::new(config)
    }
}

/// A self-signed server certificate and its key, as files in a temporary
/// directory that lives as long as this value.
pub struct SelfSigned {
    _dir: tempfile::TempDir,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl SelfSigned {
    /// What a user types: `openssl req -x509 -newkey ec ... -subj /CN=<first
    /// name> -addext subjectAltName=...`, valid for 30 days. OpenSSL's
    /// default configuration marks the result `CA:TRUE`.
    pub fn openssl(names: &[&str]) -> SelfSigned {
        let dir = tempfile::Builder::new().prefix("mailloop-selfsigned").tempdir().expect("temp dir");
        let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let san = names
            .iter()
            .map(|n| if n.parse::<std::net::IpAddr>().is_ok() { format!("IP:{n}") } else { format!("DNS:{n}") })
            .collect::<Vec<_>>()
            .join(",");
        let out = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "30"])
            .arg("-keyout")
            .arg(&key_file)
            .arg("-out")
            .arg(&cert_file)
            .args(["-subj", &format!("/CN={}", names[0]), "-addext", &format!("subjectAltName={san}")])
            .output()
            .expect("openssl is missing: apt-get install openssl");
        assert!(out.status.success(), "openssl req -x509 failed: {}", String::from_utf8_lossy(&out.stderr));
        SelfSigned { _dir: dir, cert_file, key_file }
    }

    /// A self-signed `CA:TRUE` certificate (as `openssl req -x509` makes
    /// them) valid from `not_before` to `not_after`: for dates openssl 3.0
    /// cannot write, such as an expiry in the past.
    pub fn ca_true_valid(names: &[&str], not_before: OffsetDateTime, not_after: OffsetDateTime) -> SelfSigned {
        let dir = tempfile::Builder::new().prefix("mailloop-selfsigned").tempdir().expect("temp dir");
        let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("params");
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed certificate");
        std::fs::write(&cert_file, cert.pem()).expect("write certificate");
        std::fs::write(&key_file, key.serialize_pem()).expect("write key");
        SelfSigned { _dir: dir, cert_file, key_file }
    }

    /// The certificate, DER.
    pub fn der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(&self.cert_file).expect("certificate PEM")
    }

    /// A server that presents this certificate but signs the handshake with
    /// `impostor`'s key: what someone who copied the (public) certificate
    /// can do without its private key.
    pub fn server_config_signing_with(&self, impostor: &SelfSigned) -> Arc<ServerConfig> {
        #[derive(Debug)]
        struct Always(Arc<rustls::sign::CertifiedKey>);
        impl rustls::server::ResolvesServerCert for Always {
            fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
                Some(self.0.clone())
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::from_pem_file(&impostor.key_file).expect("key PEM");
        let signer = provider.key_provider.load_private_key(key).expect("a usable key");
        let certified = rustls::sign::CertifiedKey::new(vec![self.der()], signer);
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Always(Arc::new(certified))));
        Arc::new(config)
    }

    /// A rustls server config presenting this certificate (ring provider).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        let key = PrivateKeyDer::from_pem_file(&self.key_file).expect("key PEM");
        let config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_single_cert(vec![self.der()], key)
            .expect("certificate and key match");
        Arc::new(config)
    }
}
