//! The TLS client config every channel uses: rustls with ring, the system
//! roots (loaded once, on the first channel that needs them) plus the
//! channel's own `ca_file`.

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// The system trust store, read once: parsing it costs tens of ms of CPU.
/// Only the certificates rustls takes as trust anchors are kept, so every
/// one can be handed on (lettre refuses a whole store for one bad root).
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        rustls_native_certs::load_native_certs()
            .certs
            .into_iter()
            .filter(|c| rustls::RootCertStore::empty().add(c.clone()).is_ok())
            .collect()
    })
}

/// The trust anchors of a channel: the system roots, then every
/// certificate of `ca_file` (one it cannot use is an error naming the file).
pub fn roots(ca_file: Option<&Path>) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut roots = system_roots().to_vec();
    if let Some(path) = ca_file {
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
            rustls::RootCertStore::empty()
                .add(cert.clone())
                .map_err(|e| format!("{}: {e}", path.display()))?;
            roots.push(cert);
        }
    }
    Ok(roots)
}

/// A connector trusting the system roots and `ca_file`.
pub fn connector(ca_file: Option<&Path>) -> Result<tokio_rustls::TlsConnector, String> {
    let mut roots_store = rustls::RootCertStore::empty();
    for cert in roots(ca_file)? {
        roots_store
            .add(cert)
            .map_err(|e| format!("a trust anchor: {e}"))?;
    }
    let roots = roots_store;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}
