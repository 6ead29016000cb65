//! A small client for the admin API (what `mailloopctl` and the tests use).
//!
//! HTTP/1.1 over hyper, one connection per request (an SRE's CLI makes a
//! handful), TLS through rustls with ring when the URL is `https://`:
//! the system's roots plus an optional extra CA file.
//!
//! Guard rails an operator relies on: a token never goes over plain HTTP
//! to a host that is not loopback (refused before connecting), answers are
//! read up to [`MAX_RESPONSE_BYTES`], and a URL that names the wrong kind
//! of port (the agents' gRPC port, plain HTTP under `https://`) is said so
//! instead of surfacing a parser's complaint.

use axum::http::{Method, Request, Uri, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use mailloop_common::Secret;
use serde_json::Value;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;

/// Connect and request timeouts.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The largest answer read: a bigger one is refused, not buffered.
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// How many bytes of an answer are kept to tell what kind of server sent it.
const SNIFF_BYTES: usize = 64;

/// Why a request did not get an answer. Each message is one sentence that
/// says what to fix; none repeats its cause (there is no error chain).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad coordinator URL {0:?}: expected http://host:port or https://host:port")]
    Url(String),
    /// Checked before any connection is made.
    #[error(
        "refusing to send {token_source} over plain http:// to {host}, which is not a loopback address: use https:// (the coordinator's tls_cert), or reach it over loopback (an SSH tunnel)"
    )]
    PlaintextToken { host: String, token_source: String },
    /// The `--ca-file` (MAILLOOP_CA_FILE) cannot be used.
    #[error("CA file: {0}")]
    CaFile(String),
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    /// The server at the URL is not an admin API speaking the URL's scheme.
    #[error("{0}")]
    WrongPort(String),
    #[error("TLS with {addr}: {reason}")]
    Tls { addr: String, reason: String },
    #[error("HTTP with {addr}: {reason}")]
    Http { addr: String, reason: String },
    #[error(
        "the answer to {method} {path} is larger than {}; ask for less (--limit, --since)",
        size(*limit)
    )]
    TooLarge {
        method: Method,
        path: String,
        limit: usize,
    },
    #[error("{method} {path}: no answer within {}s", TIMEOUT.as_secs())]
    Timeout { method: Method, path: String },
}

impl ClientError {
    /// True for a local mistake (the URL, where the token would go), false
    /// when the coordinator could not be reached or understood.
    pub fn is_local(&self) -> bool {
        matches!(
            self,
            ClientError::Url(_) | ClientError::PlaintextToken { .. } | ClientError::CaFile(_)
        )
    }
}

/// An answer: status and JSON body (`Value::String` if the body was not JSON).
#[derive(Debug, Clone)]
pub struct ApiResponse {
    pub status: u16,
    pub body: Value,
}

impl ApiResponse {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The `error` the API gave, with every `issues[]` entry on its own line.
    pub fn error_text(&self) -> String {
        let mut out = self
            .body
            .get("error")
            .and_then(Value::as_str)
            .map_or_else(|| self.body.to_string(), str::to_string);
        for i in self
            .body
            .get("issues")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let path = i.get("path").and_then(Value::as_str).unwrap_or("?");
            let message = i.get("message").and_then(Value::as_str).unwrap_or("?");
            out.push_str(&format!("\n  {path}: {message}"));
        }
        format!("{} ({})", out, self.status)
    }
}

/// The admin API at one URL.
#[derive(Clone)]
pub struct Client {
    host: String,
    port: u16,
    authority: String,
    prefix: String,
    token: Option<Secret>,
    tls: Option<tokio_rustls::TlsConnector>,
    limit: usize,
    /// A W3C `traceparent` sent with every request (`mailloopctl probe`).
    traceparent: Option<String>,
}

impl Client {
    /// `url`: `http://127.0.0.1:7480` or `https://coordinator.example:7480`.
    pub fn new(
        url: &str,
        token: Option<String>,
        ca_file: Option<&Path>,
    ) -> Result<Client, ClientError> {
        let token = token.filter(|t| !t.is_empty()).map(Secret::new);
        Client::with_token(url, token, "the token", ca_file)
    }

    /// Like [`Client::new`]; `token_source` names where the token came from
    /// (`the token from $MAILLOOP_TOKEN`) in the refusal to send it over
    /// plain HTTP to a host that is not loopback — decided here, before any
    /// connection is made.
    pub fn with_token(
        url: &str,
        token: Option<Secret>,
        token_source: &str,
        ca_file: Option<&Path>,
    ) -> Result<Client, ClientError> {
        let uri: Uri = url.parse().map_err(|_| ClientError::Url(url.into()))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(ClientError::Url(url.into())),
        };
        let host = uri
            .host()
            .ok_or_else(|| ClientError::Url(url.into()))?
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = uri
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_else(|| host.clone());
        if token.is_some() && !https && !is_loopback(&host) {
            return Err(ClientError::PlaintextToken {
                host: authority,
                token_source: token_source.to_string(),
            });
        }
        let prefix = uri.path().trim_end_matches('/').to_string();
        let tls = if https {
            Some(connector(ca_file)?)
        } else {
            None
        };
        Ok(Client {
            host,
            port,
            authority,
            prefix,
            token,
            tls,
            limit: MAX_RESPONSE_BYTES,
            traceparent: None,
        })
    }

    /// Reads answers up to `bytes` instead of [`MAX_RESPONSE_BYTES`].
    pub fn response_limit(mut self, bytes: usize) -> Client {
        self.limit = bytes;
        self
    }

    /// Sends `traceparent` (W3C trace context) with every request, so the
    /// coordinator's work for them joins the caller's trace.
    pub fn with_traceparent(mut self, traceparent: String) -> Client {
        self.traceparent = Some(traceparent);
        self
    }

    /// Whether requests carry a token.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    pub async fn get(&self, path: &str) -> Result<ApiResponse, ClientError> {
        self.send(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<ApiResponse, ClientError> {
        self.send(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<ApiResponse, ClientError> {
        self.send(Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<ApiResponse, ClientError> {
        self.send(Method::DELETE, path, None).await
    }

    /// One request on its own connection.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<ApiResponse, ClientError> {
        let timeout = ClientError::Timeout {
            method: method.clone(),
            path: path.to_string(),
        };
        tokio::time::timeout(TIMEOUT, self.exchange(method, path, body))
            .await
            .map_err(|_| timeout)?
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<ApiResponse, ClientError> {
        let host = self
            .host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let tcp = TcpStream::connect((host.as_str(), self.port))
            .await
            .map_err(|e| ClientError::Connect {
                addr: self.authority.clone(),
                reason: connect_reason(&e),
            })?;
        let _ = tcp.set_nodelay(true);
        let mut req = Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.prefix))
            .header(header::HOST, &self.authority)
            .header(header::ACCEPT, "application/json");
        if let Some(t) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {}", t.expose()));
        }
        if let Some(tp) = &self.traceparent {
            req = req.header("traceparent", tp);
        }
        let payload = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(v).expect("JSON serializes"))
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(payload))
            .map_err(|e| ClientError::Http {
                addr: self.authority.clone(),
                reason: e.to_string(),
            })?;
        // What the server sent first, below TLS and above it: when the
        // exchange fails, it tells a gRPC port from a plain-HTTP one.
        let (raw, raw_seen) = Sniff::new(tcp);
        let Some(tls) = &self.tls else {
            return request(raw, req, &method, path, self.limit)
                .await
                .map_err(|e| self.explain(e, &raw_seen, None));
        };
        let tls_error = |reason: String| ClientError::Tls {
            addr: self.authority.clone(),
            reason,
        };
        let name =
            rustls_pki_types::ServerName::try_from(host).map_err(|e| tls_error(e.to_string()))?;
        let stream = tls
            .connect(name, raw)
            .await
            .map_err(|e| self.explain(tls_error(tls_reason(&e)), &raw_seen, None))?;
        let (app, app_seen) = Sniff::new(stream);
        request(app, req, &method, path, self.limit)
            .await
            .map_err(|e| self.explain(e, &raw_seen, Some(&app_seen)))
    }

    /// Replaces a protocol error by what the first bytes say about the
    /// server at the URL (gRPC, plain HTTP under https://, TLS under
    /// http://, a mail server); other errors are kept.
    fn explain(&self, e: ClientError, raw: &Seen, app: Option<&Seen>) -> ClientError {
        if !matches!(e, ClientError::Tls { .. } | ClientError::Http { .. }) {
            return e;
        }
        let addr = &self.authority;
        let https = self.tls.is_some();
        let raw = raw.lock().map(|b| b.clone()).unwrap_or_default();
        let app = app.and_then(|a| a.lock().ok().map(|b| b.clone()));
        let kind = match &app {
            Some(bytes) if !bytes.is_empty() => Speaks::of(bytes),
            _ => Speaks::of(&raw),
        };
        let message = match (kind, https) {
            (Some(Speaks::Http2), _) => format!(
                "{addr} speaks HTTP/2 gRPC: that is the agents' port (grpc_listen); mailloopctl needs the admin API port (http_listen)"
            ),
            (Some(Speaks::Http1), true) => format!(
                "https:// to a server that answered in plain HTTP ({addr}): use http://{addr}, or enable tls_cert on the coordinator"
            ),
            (Some(Speaks::Tls), false) => format!(
                "http:// to a server that answered with TLS ({addr}): use https://{addr} (and --ca-file if its certificate is private)"
            ),
            (Some(Speaks::Mail(banner)), _) => format!(
                "{addr} is a mail server ({banner:?}), not the coordinator: mailloopctl needs the admin API port (http_listen)"
            ),
            _ => return e,
        };
        ClientError::WrongPort(message)
    }
}

/// `64 MiB`, `512 bytes`.
fn size(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

/// True for `localhost`, `*.localhost`, 127.0.0.0/8 and ::1 (never resolved:
/// a name that only resolves to loopback still counts as remote).
pub fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.to_canonical().is_loopback(),
        Err(_) => {
            let h = bare.trim_end_matches('.').to_ascii_lowercase();
            h == "localhost" || h.ends_with(".localhost")
        }
    }
}

fn connect_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => {
            "connection refused (is the coordinator running, and is this its http_listen?)".into()
        }
        TimedOut => "timed out (a firewall, or the wrong host?)".into(),
        _ => e.to_string(),
    }
}

/// rustls' error as a sentence that says what to do, without the
/// `io::Error` wrapper's repetition.
fn tls_reason(e: &std::io::Error) -> String {
    use rustls::CertificateError as C;
    let Some(inner) = e.get_ref() else {
        return e.to_string();
    };
    let Some(rustls::Error::InvalidCertificate(cert)) = inner.downcast_ref::<rustls::Error>()
    else {
        return inner.to_string();
    };
    match cert {
        C::UnknownIssuer | C::BadSignature => {
            "its certificate is not signed by a CA this machine trusts: give that CA with --ca-file (MAILLOOP_CA_FILE)".into()
        }
        C::NotValidForNameContext { expected, presented } => format!(
            "its certificate is issued for {}, not {}: use a name it covers in the URL",
            presented.join(", "),
            expected.to_str()
        ),
        C::NotValidForName => {
            "its certificate is not issued for the URL's host name: use a name it covers in the URL".into()
        }
        C::Expired | C::ExpiredContext { .. } => {
            "its certificate has expired: renew the coordinator's tls_cert".into()
        }
        _ => inner.to_string(),
    }
}

/// What kind of server the first bytes of an answer come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Speaks {
    /// An HTTP/2 frame (a gRPC server's SETTINGS or GOAWAY).
    Http2,
    Http1,
    /// A TLS record (handshake or alert).
    Tls,
    /// An SMTP, IMAP or POP3 greeting (its first line).
    Mail(String),
}

impl Speaks {
    fn of(b: &[u8]) -> Option<Speaks> {
        if b.starts_with(b"HTTP/1.") {
            return Some(Speaks::Http1);
        }
        if b.len() >= 2 && (0x14..=0x17).contains(&b[0]) && b[1] == 0x03 {
            return Some(Speaks::Tls);
        }
        // A frame header: 24-bit length, type, flags, stream id 0.
        if b.len() >= 9 && matches!(b[3], 0x04 | 0x07) && b[5..9] == [0, 0, 0, 0] {
            return Some(Speaks::Http2);
        }
        let line = String::from_utf8_lossy(b);
        let line = line.lines().next().unwrap_or("").trim();
        if line.starts_with("220") || line.starts_with("* OK") || line.starts_with("+OK") {
            return Some(Speaks::Mail(line.to_string()));
        }
        None
    }
}

type Seen = Arc<std::sync::Mutex<Vec<u8>>>;

/// A stream that keeps a copy of the first [`SNIFF_BYTES`] it reads.
struct Sniff<S> {
    inner: S,
    seen: Seen,
}

impl<S> Sniff<S> {
    fn new(inner: S) -> (Sniff<S>, Seen) {
        let seen: Seen = Default::default();
        (
            Sniff {
                inner,
                seen: seen.clone(),
            },
            seen,
        )
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Sniff<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r
            && let Ok(mut seen) = self.seen.lock()
            && seen.len() < SNIFF_BYTES
        {
            let new = &buf.filled()[before..];
            let room = SNIFF_BYTES - seen.len();
            seen.extend_from_slice(&new[..new.len().min(room)]);
        }
        r
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Sniff<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn request<S>(
    stream: S,
    req: Request<Full<Bytes>>,
    method: &Method,
    path: &str,
    limit: usize,
) -> Result<ApiResponse, ClientError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let addr = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("?")
        .to_string();
    let http = |e: hyper::Error| ClientError::Http {
        addr: addr.clone(),
        reason: e.to_string(),
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender.send_request(req).await.map_err(http)?;
    let status = resp.status().as_u16();
    let too_large = || ClientError::TooLarge {
        method: method.clone(),
        path: path.to_string(),
        limit,
    };
    let declared = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let bytes = Limited::new(resp.into_body(), limit)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<LengthLimitError>() {
                too_large()
            } else {
                ClientError::Http {
                    addr: addr.clone(),
                    reason: e.to_string(),
                }
            }
        })?
        .to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Ok(ApiResponse { status, body })
}

fn connector(ca_file: Option<&Path>) -> Result<tokio_rustls::TlsConnector, ClientError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| ClientError::CaFile(format!("cannot read {}: {e}", path.display())))?;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| ClientError::CaFile(format!("{}: {e}", path.display())))?;
            roots
                .add(cert)
                .map_err(|e| ClientError::CaFile(format!("{}: {e}", path.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::CaFile(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_decided_from_the_url_alone() {
        for host in [
            "127.0.0.1",
            "127.8.9.10",
            "[::1]",
            "::1",
            "localhost",
            "LOCALHOST.",
            "api.localhost",
            "[::ffff:127.0.0.1]",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in [
            "10.0.0.1",
            "0.0.0.0",
            "[::]",
            "192.0.2.1",
            "coordinator.example",
            "localhost.example.com",
            "127.0.0.1.nip.io",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
    }

    #[test]
    fn a_token_for_a_remote_plain_http_url_is_refused_before_connecting() {
        let remote = Client::with_token(
            "http://192.0.2.1:7480",
            Some(Secret::new("t")),
            "the token from $X",
            None,
        );
        assert!(matches!(remote, Err(ClientError::PlaintextToken { .. })));
        assert!(
            Client::with_token("http://192.0.2.1:7480", None, "", None).is_ok(),
            "no token, nothing to protect"
        );
        assert!(Client::with_token("http://[::1]:7480", Some(Secret::new("t")), "", None).is_ok());
    }

    /// A one-shot HTTP server on loopback that answers `head` then `body`.
    async fn answer(head: &'static str, body: Vec<u8>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(&body).await;
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn answers_over_the_limit_are_refused_not_buffered() {
        let chunk = |n: usize| format!("{n:x}\r\n{}\r\n", "x".repeat(n)).into_bytes();
        let mut chunked = chunk(600);
        chunked.extend(chunk(600));
        chunked.extend(b"0\r\n\r\n");
        let url = answer(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            chunked,
        )
        .await;
        let e = Client::new(&url, None, None)
            .unwrap()
            .response_limit(1000)
            .get("/api/v1/results")
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "the answer to GET /api/v1/results is larger than 1000 bytes; ask for less (--limit, --since)"
        );
        // A declared length over the limit is refused before the body is read.
        let url = answer(
            "HTTP/1.1 200 OK\r\ncontent-length: 70000000\r\n\r\n",
            Vec::new(),
        )
        .await;
        let e = Client::new(&url, None, None)
            .unwrap()
            .get("/x")
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "the answer to GET /x is larger than 64 MiB; ask for less (--limit, --since)"
        );
        // Under the limit: read whole.
        let url = answer(
            "HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n",
            b"{\"ok\":true}".to_vec(),
        )
        .await;
        assert_eq!(
            Client::new(&url, None, None)
                .unwrap()
                .response_limit(11)
                .get("/y")
                .await
                .unwrap()
                .body["ok"],
            true
        );
    }

    #[test]
    fn the_first_bytes_tell_what_answered() {
        // tonic's server preface: an empty SETTINGS frame, then more.
        assert_eq!(
            Speaks::of(&[0, 0, 0x12, 0x04, 0, 0, 0, 0, 0, 0, 3]),
            Some(Speaks::Http2)
        );
        assert_eq!(
            Speaks::of(&[0, 0, 8, 0x07, 0, 0, 0, 0, 0]),
            Some(Speaks::Http2)
        );
        assert_eq!(
            Speaks::of(b"HTTP/1.1 400 Bad Request\r\n"),
            Some(Speaks::Http1)
        );
        assert_eq!(
            Speaks::of(&[0x15, 0x03, 0x03, 0, 2, 2, 70]),
            Some(Speaks::Tls)
        );
        assert_eq!(
            Speaks::of(b"220 mx.example ESMTP\r\n"),
            Some(Speaks::Mail("220 mx.example ESMTP".into()))
        );
        assert_eq!(
            Speaks::of(b"* OK [CAPABILITY IMAP4rev1] ready\r\n"),
            Some(Speaks::Mail("* OK [CAPABILITY IMAP4rev1] ready".into()))
        );
        assert_eq!(Speaks::of(b""), None);
        assert_eq!(Speaks::of(b"{\"error\":1}"), None);
    }
}
