//! `mailloop-agent enroll TOKEN`: one command turns a fresh machine into an
//! agent of its coordinator.
//!
//! The join token (`mailloop_common::join`) names the coordinator's gRPC
//! URL(s) and the SHA-256 of a certificate in its TLS chain. The agent pins
//! that certificate on first contact: a TLS handshake that accepts the
//! coordinator only if one of the certificates it presents has that hash
//! and its chain verifies up to it (no trust on first use, no "insecure"
//! switch). The pinned certificate then becomes the only trust root of the
//! `Enroll` call, which exchanges the join token's secret for the agent's
//! long-lived token, and is written as the agent's `ca_file`. Then the
//! agent TOML (0600) and the token file (0600) are written; nothing is
//! overwritten.
//!
//! A coordinator without TLS issues tokens without a fingerprint; they are
//! accepted only for `http://` URLs on loopback, where nobody else listens.
//!
//! A coordinator with `client_ca` (mutual TLS) asks for a client
//! certificate in that first handshake: `--client-cert`/`--client-key`
//! ([`ClientCert`]) answer it and are written into the agent TOML; without
//! them the agent stops there with a sentence saying what to pass, and the
//! join token stays unused.

use crate::run::client::chain;
use mailloop_common::Secret;
use mailloop_common::join::JoinToken;
use mailloop_proto::pb;
use mailloop_proto::pb::agent_service_client::AgentServiceClient;
use rustls::DigitallySignedStruct;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// A connection attempt or call that takes longer has failed.
const TIMEOUT: Duration = Duration::from_secs(15);

/// Where `enroll` writes.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The agent TOML.
    pub config: PathBuf,
    /// The agent's token (`token_file`), beside it: `<config stem>.token`.
    pub token: PathBuf,
    /// The pinned coordinator certificate (`ca_file`): `<config stem>.coordinator.pem`.
    pub ca: PathBuf,
    /// `spool`, when given (else the agent's default).
    pub spool: Option<PathBuf>,
}

impl Paths {
    pub fn new(config: PathBuf, spool: Option<PathBuf>) -> Paths {
        Paths {
            token: config.with_extension("token"),
            ca: config.with_extension("coordinator.pem"),
            config,
            spool,
        }
    }
}

/// The agent's client certificate for a coordinator that requires one
/// (`client_ca`): read and checked before the join token is used.
#[derive(Clone)]
pub struct ClientCert {
    /// Absolute paths, as written into the agent TOML.
    pub cert: PathBuf,
    pub key: PathBuf,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    certified: Arc<rustls::sign::CertifiedKey>,
}

impl std::fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCert").field("cert", &self.cert).field("key", &self.key).finish_non_exhaustive()
    }
}

impl ClientCert {
    /// Reads the certificate chain and its key; says what is wrong with them.
    pub fn load(cert: &Path, key: &Path) -> Result<ClientCert, String> {
        use rustls_pki_types::PrivateKeyDer;
        use rustls_pki_types::pem::PemObject;
        let read = |p: &Path| std::fs::read(p).map_err(|e| format!("--client-cert/--client-key: cannot read {}: {e}", p.display()));
        let (cert_pem, key_pem) = (read(cert)?, read(key)?);
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("--client-cert {}: bad PEM: {e}", cert.display()))?;
        if chain.is_empty() {
            return Err(format!("--client-cert {}: no certificate in it", cert.display()));
        }
        let der = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| format!("--client-key {}: no usable private key (PKCS#8, RSA or EC PEM): {e}", key.display()))?;
        let signing = crate::tls::provider()
            .key_provider
            .load_private_key(der)
            .map_err(|e| format!("--client-key {}: {e}", key.display()))?;
        let certified = rustls::sign::CertifiedKey::new(chain, signing);
        certified
            .keys_match()
            .map_err(|e| format!("--client-key {} does not fit --client-cert {}: {e}", key.display(), cert.display()))?;
        let absolute = |p: &Path| std::fs::canonicalize(p).map_err(|e| format!("{}: {e}", p.display()));
        Ok(ClientCert {
            cert: absolute(cert)?,
            key: absolute(key)?,
            cert_pem,
            key_pem,
            certified: Arc::new(certified),
        })
    }
}

/// Answers the coordinator's request for a client certificate (with the
/// agent's, if it has one) and remembers that it was asked.
#[derive(Debug)]
struct AskedForClientCert {
    identity: Option<Arc<rustls::sign::CertifiedKey>>,
    asked: AtomicBool,
}

impl rustls::client::ResolvesClientCert for AskedForClientCert {
    fn resolve(&self, _issuers: &[&[u8]], _schemes: &[rustls::SignatureScheme]) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.asked.store(true, Ordering::SeqCst);
        self.identity.clone()
    }

    fn has_certs(&self) -> bool {
        // Always asked, so a request is seen even without a certificate.
        true
    }
}

/// What enrollment made.
#[derive(Debug)]
pub struct Enrolled {
    pub name: String,
    pub region: String,
    pub url: String,
    pub paths: Paths,
}

/// Why a URL did not enroll: the coordinator's refusal ends the attempt;
/// an unreachable URL lets the next one be tried.
enum Failed {
    Refused(String),
    Unreachable(String),
}

/// Enrolls with the first coordinator URL of `token` that answers, and
/// writes the agent's files. Errors are sentences for the operator.
pub async fn enroll(token: &str, paths: Paths, client: Option<ClientCert>) -> Result<Enrolled, String> {
    let join = JoinToken::decode(token)?;
    for p in [&paths.config, &paths.token, &paths.ca] {
        if p.exists() {
            return Err(format!(
                "{} exists: this machine looks enrolled already; move it away (or pass --config elsewhere) to enroll again",
                p.display()
            ));
        }
    }
    let mut unreachable = Vec::new();
    for url in &join.urls {
        match enroll_at(url, join.sha256.as_deref(), &join.secret, client.as_ref()).await {
            Ok((response, ca_pem)) => {
                write_files(&paths, url, &response, ca_pem.as_deref(), client.as_ref())?;
                return Ok(Enrolled {
                    name: response.agent_name,
                    region: response.region,
                    url: url.clone(),
                    paths,
                });
            }
            Err(Failed::Refused(why)) => return Err(why),
            Err(Failed::Unreachable(why)) => unreachable.push(why),
        }
    }
    Err(format!(
        "no coordinator URL of the join token answered: {}",
        unreachable.join("; ")
    ))
}

async fn enroll_at(
    url: &str,
    sha256: Option<&str>,
    secret: &Secret,
    client: Option<&ClientCert>,
) -> Result<(pb::EnrollResponse, Option<Vec<u8>>), Failed> {
    let uri: tonic::codegen::http::Uri = url
        .parse()
        .map_err(|_| Failed::Refused(format!("the join token's URL {url:?} does not parse")))?;
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_matches(['[', ']'])
        .to_string();
    let https = uri.scheme_str() == Some("https");
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| Failed::Refused(format!("{url}: {}", chain(&e))))?
        .connect_timeout(TIMEOUT)
        .timeout(TIMEOUT)
        .user_agent(format!("mailloop-agent/{}", env!("CARGO_PKG_VERSION")))
        .map_err(|e| Failed::Refused(chain(&e)))?;
    let (endpoint, ca_pem) = if https {
        let Some(sha256) = sha256 else {
            return Err(Failed::Refused(format!(
                "the join token names {url} but no certificate fingerprint to pin it by; make a new one with the coordinator's current mailloopctl"
            )));
        };
        let pinned = pin(&uri, &host, sha256, client).await?;
        let pem = pem_of(&pinned);
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&pem))
            .domain_name(host.clone());
        if let Some(c) = client {
            tls = tls.identity(tonic::transport::Identity::from_pem(&c.cert_pem, &c.key_pem));
        }
        let ep = endpoint
            .tls_config(tls)
            .map_err(|e| Failed::Refused(format!("TLS settings for {url}: {}", chain(&e))))?;
        (ep, Some(pem))
    } else {
        let loopback =
            host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if sha256.is_some() || !loopback {
            return Err(Failed::Refused(format!(
                "the join token names {url}, plain http off loopback (or with a fingerprint to pin): refusing to send it without TLS"
            )));
        }
        if client.is_some() {
            return Err(Failed::Refused(format!(
                "--client-cert is for a coordinator with TLS and client_ca, but the join token names {url} (plain http)"
            )));
        }
        (endpoint, None)
    };
    // A coordinator that refuses the client certificate ends the connection
    // after the handshake: say which certificate it may not trust.
    let refused_cert = |why: String| match client {
        Some(c) => format!("{why} (did the coordinator refuse the client certificate {}? it must be signed by its client_ca)", c.cert.display()),
        None => why,
    };
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| Failed::Unreachable(refused_cert(format!("{url}: {}", chain(&e)))))?;
    let mut client = AgentServiceClient::new(channel);
    let answer = client
        .enroll(pb::EnrollRequest {
            join_secret: secret.expose().to_string(),
            protocol_version: mailloop_proto::PROTOCOL_VERSION,
            version: env!("CARGO_PKG_VERSION").to_string(),
        })
        .await;
    match answer {
        Ok(r) => {
            let r = r.into_inner();
            if r.token.is_empty() || r.agent_name.is_empty() || r.region.is_empty() {
                return Err(Failed::Refused(format!(
                    "{url} answered Enroll without a name, region or token"
                )));
            }
            Ok((r, ca_pem))
        }
        Err(s) if s.code() == tonic::Code::Unavailable => {
            Err(Failed::Unreachable(refused_cert(format!("{url}: {}", s.message()))))
        }
        Err(s) if s.code() == tonic::Code::Unimplemented => Err(Failed::Refused(format!(
            "the coordinator at {url} does not enroll agents (it predates enrollment: upgrade it)"
        ))),
        Err(s) => Err(Failed::Refused(format!(
            "the coordinator at {url} refused the join token: {}",
            s.message()
        ))),
    }
}

/// One TLS handshake with the coordinator that succeeds only if a
/// certificate it presents has the pinned SHA-256 and its chain verifies up
/// to that certificate (or it is the server's own, with the right name and
/// dates). Returns the pinned certificate.
async fn pin(
    uri: &tonic::codegen::http::Uri,
    host: &str,
    sha256: &str,
    client: Option<&ClientCert>,
) -> Result<CertificateDer<'static>, Failed> {
    let port = uri.port_u16().unwrap_or(443);
    let url = uri.to_string();
    let tcp = tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect((host, port)))
        .await
        .map_err(|_| {
            Failed::Unreachable(format!(
                "{url}: no connection within {}s",
                TIMEOUT.as_secs()
            ))
        })?
        .map_err(|e| Failed::Unreachable(format!("{url}: {e}")))?;
    let asked = Arc::new(AskedForClientCert {
        identity: client.map(|c| c.certified.clone()),
        asked: AtomicBool::new(false),
    });
    let verifier = Arc::new(Pin {
        sha256: sha256.to_ascii_lowercase(),
        provider: crate::tls::provider(),
        outcome: Mutex::default(),
    });
    let config = rustls::ClientConfig::builder_with_provider(verifier.provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Failed::Refused(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_client_cert_resolver(asked.clone());
    let name = ServerName::try_from(host.to_string())
        .map_err(|_| Failed::Refused(format!("{url}: {host:?} is not a host name or address")))?;
    let handshake = tokio::time::timeout(
        TIMEOUT,
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await;
    let outcome = verifier
        .outcome
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let needs_client_cert = client.is_none() && asked.asked.load(Ordering::SeqCst);
    match (handshake, outcome) {
        (_, Some(Ok(_))) if needs_client_cert => Err(Failed::Refused(format!(
            "the coordinator at {url} requires a client certificate (its server.client_ca, mutual TLS): enroll with --client-cert FILE --client-key FILE, a certificate that CA issued for this agent; the join token is unused"
        ))),
        (Ok(Ok(_)), Some(Ok(cert))) => Ok(cert),
        (_, Some(Err(why))) => Err(Failed::Refused(format!(
            "the coordinator at {url} {why}: refusing to send the join token"
        ))),
        (Ok(Err(e)), _) => Err(Failed::Unreachable(format!("{url}: TLS handshake: {e}"))),
        (Err(_), _) => Err(Failed::Unreachable(format!(
            "{url}: no TLS handshake within {}s",
            TIMEOUT.as_secs()
        ))),
        (Ok(Ok(_)), None) => Err(Failed::Refused(format!(
            "{url}: the handshake finished without the certificate check"
        ))),
    }
}

/// The pinning verifier of [`pin`]; `outcome` says what it decided.
#[derive(Debug)]
struct Pin {
    sha256: String,
    provider: Arc<CryptoProvider>,
    outcome: Mutex<Option<Result<CertificateDer<'static>, String>>>,
}

fn sha256_hex(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Pin {
    fn decide(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<CertificateDer<'static>, String> {
        let presented: Vec<&CertificateDer<'_>> =
            std::iter::once(end_entity).chain(intermediates).collect();
        let Some(pinned) = presented
            .iter()
            .find(|c| sha256_hex(c.as_ref()) == self.sha256)
        else {
            let seen: Vec<String> = presented.iter().map(|c| sha256_hex(c.as_ref())).collect();
            return Err(format!(
                "presented no certificate with the join token's fingerprint (expected sha256 {}, it presented {})",
                self.sha256,
                seen.join(", ")
            ));
        };
        let pinned = (*pinned).clone().into_owned();
        if pinned.as_ref() == end_entity.as_ref() {
            crate::tls::name_and_validity(end_entity, server_name, now)
                .map_err(|e| format!("has the pinned certificate, but {e}"))?;
            return Ok(pinned);
        }
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pinned.clone()).map_err(|e| {
            format!("presented the pinned certificate, but it is not usable as a trust root: {e}")
        })?;
        let webpki =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| e.to_string())?;
        webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            .map_err(|e| {
                format!(
                    "presented the pinned certificate, but its own does not verify against it: {e}"
                )
            })?;
        Ok(pinned)
    }
}

impl ServerCertVerifier for Pin {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let decided = self.decide(end_entity, intermediates, server_name, ocsp, now);
        let ok = decided.is_ok();
        let why = decided.as_ref().err().cloned();
        *self.outcome.lock().unwrap_or_else(|e| e.into_inner()) = Some(decided);
        if ok {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(why.unwrap_or_default()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn pem_of(der: &CertificateDer<'_>) -> Vec<u8> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem.into_bytes()
}

/// A TOML basic string.
fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

fn write_files(
    paths: &Paths,
    url: &str,
    r: &pb::EnrollResponse,
    ca_pem: Option<&[u8]>,
    client: Option<&ClientCert>,
) -> Result<(), String> {
    if let Some(dir) = paths.config.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let lost = |p: &Path, e: std::io::Error| {
        format!(
            "enrolled as agent {} (region {}), but {} could not be written: {e}; on the coordinator, revoke it (mailloopctl agents revoke {}) and add it again",
            r.agent_name,
            r.region,
            p.display(),
            r.agent_name
        )
    };
    write_new(&paths.token, format!("{}\n", r.token).as_bytes(), 0o600)
        .map_err(|e| lost(&paths.token, e))?;
    let mut toml = format!(
        "# Written by `mailloop-agent enroll`. Run: mailloop-agent run --config {}\n[agent]\nname = {}\nregion = {}\ncoordinator_url = {}\ntoken_file = {}\n",
        paths.config.display(),
        quoted(&r.agent_name),
        quoted(&r.region),
        quoted(url),
        quoted(&paths.token.display().to_string()),
    );
    if let Some(pem) = ca_pem {
        write_new(&paths.ca, pem, 0o644).map_err(|e| lost(&paths.ca, e))?;
        toml.push_str(&format!(
            "# The coordinator certificate pinned at enrollment.\nca_file = {}\n",
            quoted(&paths.ca.display().to_string())
        ));
    }
    if let Some(c) = client {
        toml.push_str(&format!(
            "# Mutual TLS: the coordinator requires this client certificate.\nclient_cert = {}\nclient_key = {}\n",
            quoted(&c.cert.display().to_string()),
            quoted(&c.key.display().to_string())
        ));
    }
    if let Some(spool) = &paths.spool {
        toml.push_str(&format!(
            "spool = {}\n",
            quoted(&spool.display().to_string())
        ));
    }
    write_new(&paths.config, toml.as_bytes(), 0o600).map_err(|e| lost(&paths.config, e))
}

/// Creates `path` with `mode` (the certificate is public: 0644, so a
/// service's own user can read it; the rest 0600), refusing to replace anything.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// The unit `enroll --start` enables and starts.
pub const UNIT: &str = "mailloop-agent.service";
/// The config the packaged unit reads.
pub const UNIT_CONFIG: &str = "/etc/mailloop/agent.toml";

/// How `enroll --start` starts the service: `systemctl enable --now` of
/// the packaged unit. `MAILLOOP_SYSTEMCTL` names another program to run in
/// its place (tests, or a wrapper), which skips the check for a running
/// systemd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemdStart {
    pub program: String,
}

impl SystemdStart {
    /// Checks, before anything is written, that `--start` can work: the
    /// unit reads [`UNIT_CONFIG`], and systemd runs this machine.
    pub fn from_env(config: &Path) -> Result<SystemdStart, String> {
        if config != Path::new(UNIT_CONFIG) {
            return Err(format!(
                "--start starts the packaged unit, which reads {UNIT_CONFIG}, not {}: drop --config, or start the agent yourself (mailloop-agent run --config {})",
                config.display(),
                config.display()
            ));
        }
        if let Ok(program) = std::env::var("MAILLOOP_SYSTEMCTL") {
            return Ok(SystemdStart { program });
        }
        if !Path::new("/run/systemd/system").exists() {
            return Err(
                "--start needs systemd, which does not run this machine (no /run/systemd/system): enroll without --start and run mailloop-agent run --config /etc/mailloop/agent.toml under your supervisor".into(),
            );
        }
        Ok(SystemdStart { program: "systemctl".into() })
    }

    /// The arguments given to the program.
    pub fn args() -> [&'static str; 3] {
        ["enable", "--now", UNIT]
    }

    /// Runs it; the command line on success, why not otherwise.
    pub fn start(&self) -> Result<String, String> {
        let shown = format!("{} {}", self.program, Self::args().join(" "));
        let out = std::process::Command::new(&self.program)
            .args(Self::args())
            .output()
            .map_err(|e| format!("{shown}: {e}"))?;
        if out.status.success() {
            Ok(shown)
        } else {
            Err(format!(
                "{shown} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

/// Parses `--secret` values: `NAME=@FILE` or `NAME=env:VAR`, resolved here
/// (`env` looks a variable up). Every bad one is named at once; a value is
/// never taken from the command line itself (it would stay in the shell
/// history) and never appears in a message.
pub fn local_secrets(
    specs: &[String],
    env: impl Fn(&str) -> Option<String>,
) -> Result<Vec<(String, Secret)>, Vec<String>> {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for spec in specs {
        let Some((name, source)) = spec.split_once('=') else {
            bad.push(format!("--secret {spec:?}: use NAME=@FILE or NAME=env:VAR"));
            continue;
        };
        let name_ok = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !name_ok {
            bad.push(format!("--secret {name:?}: the name of an environment variable (letters, digits, _), as the checks' password_env names it"));
            continue;
        }
        let value = if let Some(file) = source.strip_prefix('@') {
            match std::fs::read_to_string(file) {
                Ok(v) => v.trim_end_matches(['\n', '\r']).to_string(),
                Err(e) => {
                    bad.push(format!("--secret {name}: cannot read {file}: {e}"));
                    continue;
                }
            }
        } else if let Some(var) = source.strip_prefix("env:") {
            match env(var) {
                Some(v) => v,
                None => {
                    bad.push(format!("--secret {name}: environment variable {var} is not set"));
                    continue;
                }
            }
        } else {
            bad.push(format!(
                "--secret {name}: give @FILE or env:VAR, not the value itself (it would stay in the shell history)"
            ));
            continue;
        };
        if value.is_empty() || value.contains(['\n', '\r', '\0', '\'', '\\']) {
            bad.push(format!(
                "--secret {name}: the value is empty or holds a line break, NUL, quote or backslash, which an environment file cannot carry as is"
            ));
            continue;
        }
        if out.iter().any(|(n, _): &(String, Secret)| n == name) {
            bad.push(format!("--secret {name}: given twice"));
            continue;
        }
        out.push((name.to_string(), Secret::new(value)));
    }
    if bad.is_empty() { Ok(out) } else { Err(bad) }
}

/// Writes `NAME='value'` lines (systemd `EnvironmentFile=` and POSIX shell
/// syntax alike) to a new file with mode 0600.
pub fn write_env_file(path: &Path, secrets: &[(String, Secret)]) -> std::io::Result<()> {
    let mut text = String::from("# Written by `mailloop-agent enroll --secret`: mailbox credentials the checks name, kept on this machine.\n");
    for (name, value) in secrets {
        text.push_str(&format!("{name}='{}'\n", value.expose()));
    }
    write_new(path, text.as_bytes(), 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(specs: &[&str]) -> Result<Vec<(String, String)>, Vec<String>> {
        let specs: Vec<String> = specs.iter().map(|s| s.to_string()).collect();
        local_secrets(&specs, |v| (v == "SET").then(|| "from-env".to_string()))
            .map(|v| v.into_iter().map(|(n, s)| (n, s.expose().to_string())).collect())
    }

    #[test]
    fn secrets_come_from_files_or_the_environment_never_the_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pass");
        std::fs::write(&f, "s3cret\n").unwrap();
        let ok = parse(&[&format!("IMAP_PASS=@{}", f.display()), "SMTP_PASS=env:SET"]).unwrap();
        assert_eq!(ok, [("IMAP_PASS".into(), "s3cret".into()), ("SMTP_PASS".into(), "from-env".into())]);
        let bad = parse(&["A=plain-value", "1X=@/x", "B=env:UNSET", "C=@/nonexistent/file", "novalue"]).unwrap_err();
        assert_eq!(bad.len(), 5, "every bad one at once: {bad:?}");
        assert!(bad[0].contains("not the value itself") && !bad[0].contains("plain-value"), "{}", bad[0]);
        assert!(bad[2].contains("UNSET is not set"));
    }

    #[test]
    fn start_needs_the_units_config() {
        let e = SystemdStart::from_env(Path::new("/tmp/agent.toml")).unwrap_err();
        assert!(e.contains("reads /etc/mailloop/agent.toml"), "{e}");
        assert_eq!(SystemdStart::args(), ["enable", "--now", "mailloop-agent.service"]);
    }

    #[test]
    fn start_runs_systemctl_enable_now_and_reports_its_failure() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (ok, fails, args) = (dir.path().join("ok"), dir.path().join("fails"), dir.path().join("args"));
        std::fs::write(&ok, format!("#!/bin/sh\necho \"$@\" > {}\n", args.display())).unwrap();
        std::fs::write(&fails, "#!/bin/sh\necho 'Unit mailloop-agent.service not found.' >&2\nexit 5\n").unwrap();
        for f in [&ok, &fails] {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let shown = SystemdStart { program: ok.display().to_string() }.start().unwrap();
        assert!(shown.ends_with(" enable --now mailloop-agent.service"), "{shown}");
        assert_eq!(std::fs::read_to_string(&args).unwrap(), "enable --now mailloop-agent.service\n");
        let e = SystemdStart { program: fails.display().to_string() }.start().unwrap_err();
        assert!(e.contains("Unit mailloop-agent.service not found."), "{e}");
    }
}
