//! Timed transport: bytes, TLS and bounded reads. No protocol knowledge.
//!
//! [`Conn`] owns a TCP or TLS stream and its own read buffer, so a protocol
//! session can read replies line by line with a hard cap on line length (a
//! hostile server cannot make us buffer without bound), and can hand the
//! plain stream to rustls for STARTTLS — refusing if the server already sent
//! bytes past the STARTTLS reply (the response-injection attack).

use rustls_pki_types::ServerName;
use std::fmt;
use std::io;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use crate::tls::TlsClient;
use rustls_pki_types::CertificateDer;
use tokio_rustls::client::TlsStream;

/// How many bytes one read asks the socket for.
const READ_CHUNK: usize = 8 * 1024;

/// A transport failure, before any protocol meaning is given to it.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("connection closed by the server")]
    Closed,
    #[error("line longer than {0} bytes")]
    LineTooLong(usize),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    /// A handshake refused by rustls, explained (`message`, see
    /// [`crate::tls::explain`]) with rustls's own words kept in `raw`.
    #[error("{message}")]
    TlsRefused { message: String, raw: String },
    #[error("server sent {0} bytes before the TLS handshake (possible STARTTLS injection)")]
    BytesBeforeTls(usize),
}

/// Details of a completed TLS handshake, for step details and certificate checks.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    pub version: String,
    pub cipher: String,
}

impl std::fmt::Display for TlsInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.version, self.cipher)
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Transiently, while the stream is handed to the TLS handshake.
    Gone,
}

/// A connection with its own read buffer.
pub struct Conn {
    stream: Stream,
    buf: Vec<u8>,
    /// Start of unread data in `buf`.
    pos: usize,
    /// The server certificate of the last TLS handshake, even a failed one.
    pub peer_cert: Option<CertificateDer<'static>>,
}

/// One `connect_to` rule: a TCP connection a check opens to `from` goes to
/// `to` instead (like curl's `--connect-to`). Everything else — the TLS
/// server name, SNI, the endpoint reported in steps and certificates — stays
/// as the check says, so an agent behind NAT or an egress relay measures the
/// same server through its own path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRule {
    pub from: HostPort,
    pub to: HostPort,
}

/// A host (name or IP literal, IPv6 without brackets) and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') { write!(f, "[{}]:{}", self.host, self.port) } else { write!(f, "{}:{}", self.host, self.port) }
    }
}

impl std::str::FromStr for HostPort {
    type Err = String;

    /// `host:port`, `[v6]:port`.
    fn from_str(s: &str) -> Result<HostPort, String> {
        let s = s.trim();
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err(format!("{s:?} has no port (write host:port, or [v6]:port)"));
        };
        let host = match host.strip_prefix('[') {
            Some(inner) => inner.strip_suffix(']').ok_or_else(|| format!("{s:?}: unclosed '['"))?,
            None if host.contains(':') => return Err(format!("{s:?}: put an IPv6 address in brackets, [::1]:25")),
            None => host,
        };
        if host.is_empty() {
            return Err(format!("{s:?} has no host"));
        }
        let port = match port.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(format!("{s:?}: {port:?} is not a port from 1 to 65535")),
        };
        Ok(HostPort { host: host.to_string(), port })
    }
}

impl std::str::FromStr for ConnectRule {
    type Err = String;

    /// `FROM_HOST:FROM_PORT=TO_HOST:TO_PORT`.
    fn from_str(s: &str) -> Result<ConnectRule, String> {
        let Some((from, to)) = s.split_once('=') else {
            return Err(format!("{s:?}: write \"host:port=host:port\" (the check's address = where to connect instead)"));
        };
        Ok(ConnectRule { from: from.parse()?, to: to.parse()? })
    }
}

/// The `connect_to` rules of an agent, first match wins; empty: connect
/// where the check says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectTo {
    rules: Vec<ConnectRule>,
}

impl ConnectTo {
    pub fn new(rules: Vec<ConnectRule>) -> ConnectTo {
        ConnectTo { rules }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn rules(&self) -> &[ConnectRule] {
        &self.rules
    }

    /// Where a connection to `host:port` really goes, if a rule redirects it.
    /// Host names compare case-insensitively; brackets around IPv6 are ignored.
    pub fn target(&self, host: &str, port: u16) -> Option<&HostPort> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.rules.iter().find(|r| r.from.port == port && r.from.host.eq_ignore_ascii_case(host)).map(|r| &r.to)
    }

    /// The connect step's detail: the check's address, and the real one
    /// when a rule redirected it (`127.0.0.1:587 via 127.0.0.1:40001`).
    pub fn detail(&self, host: &str, port: u16) -> String {
        let named = HostPort { host: host.trim_start_matches('[').trim_end_matches(']').to_string(), port };
        match self.target(host, port) {
            Some(to) => format!("{named} via {to}"),
            None => named.to_string(),
        }
    }
}

impl Conn {
    /// Opens a TCP connection (Nagle off: we send small commands and time them).
    pub async fn connect(host: &str, port: u16) -> Result<Conn, TransportError> {
        Self::connect_via(host, port, &ConnectTo::default()).await
    }

    /// Like [`Conn::connect`], but a `connect_to` rule for `host:port`
    /// sends the TCP connection to its replacement address.
    pub async fn connect_via(host: &str, port: u16, connect_to: &ConnectTo) -> Result<Conn, TransportError> {
        let (host, port) = match connect_to.target(host, port) {
            Some(to) => (to.host.as_str(), to.port),
            None => (host, port),
        };
        let tcp = TcpStream::connect((host, port)).await?;
        tcp.set_nodelay(true)?;
        Ok(Conn { stream: Stream::Plain(tcp), buf: Vec::with_capacity(READ_CHUNK), pos: 0, peer_cert: None })
    }

    /// The local address, for an address-literal EHLO.
    pub fn local_ip(&self) -> Option<std::net::IpAddr> {
        match &self.stream {
            Stream::Plain(s) => s.local_addr().ok().map(|a| a.ip()),
            Stream::Tls(s) => s.get_ref().0.local_addr().ok().map(|a| a.ip()),
            Stream::Gone => None,
        }
    }

    /// Runs the TLS handshake over the current plain stream. The server's
    /// certificate is kept in `peer_cert` whether or not it was accepted.
    pub async fn start_tls(&mut self, tls: &TlsClient, name: ServerName<'static>) -> Result<TlsInfo, TransportError> {
        let (connector, slot) = tls.connector().map_err(TransportError::Tls)?;
        let result = self.handshake(&connector, name.clone()).await;
        self.peer_cert = slot.lock().ok().and_then(|mut s| s.take());
        // A refusal becomes a sentence about the certificate just seen.
        result.map_err(|e| match e {
            TransportError::Io(e) => match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
                Some(refused) => TransportError::TlsRefused {
                    message: tls.explain(refused, self.peer_cert.as_ref(), &name),
                    raw: refused.to_string(),
                },
                None => tls_error(e),
            },
            other => other,
        })
    }

    async fn handshake(
        &mut self,
        connector: &tokio_rustls::TlsConnector,
        name: ServerName<'static>,
    ) -> Result<TlsInfo, TransportError> {
        // The handshake's own failure comes back as `Io`, for `start_tls` to explain.
        let buffered = self.buf.len() - self.pos;
        if buffered > 0 {
            return Err(TransportError::BytesBeforeTls(buffered));
        }
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Gone) else {
            return Err(TransportError::Tls("TLS is already active".into()));
        };
        let tls = connector.connect(name, tcp).await?;
        let (_, session) = tls.get_ref();
        let info = TlsInfo {
            version: session
                .protocol_version()
                .map(|v| format!("{v:?}").replace("TLSv1_", "TLSv1."))
                .unwrap_or_default(),
            cipher: session
                .negotiated_cipher_suite()
                .map(|c| format!("{:?}", c.suite()))
                .unwrap_or_default(),
        };
        self.stream = Stream::Tls(Box::new(tls));
        Ok(info)
    }

    /// The TLS stream itself, for a protocol spoken by a library (the
    /// OAuth2 token request over hyper). `None` before TLS, or when bytes
    /// are already buffered (they would be lost).
    pub fn into_tls_stream(self) -> Option<TlsStream<TcpStream>> {
        match self.stream {
            Stream::Tls(s) if self.pos == self.buf.len() => Some(*s),
            _ => None,
        }
    }

    /// Reads one line, without its CRLF (or bare LF). Fails rather than
    /// buffering more than `max` bytes.
    pub async fn read_line(&mut self, max: usize) -> Result<Vec<u8>, TransportError> {
        let mut scanned = self.pos;
        loop {
            if let Some(i) = self.buf[scanned..].iter().position(|b| *b == b'\n') {
                let end = scanned + i;
                let mut line = self.buf[self.pos..end].to_vec();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.consume(end + 1);
                if line.len() > max {
                    return Err(TransportError::LineTooLong(max));
                }
                return Ok(line);
            }
            scanned = self.buf.len();
            if self.buf.len() - self.pos > max {
                return Err(TransportError::LineTooLong(max));
            }
            self.fill().await?;
        }
    }

    /// Reads exactly `n` bytes (an IMAP literal). The caller bounds `n`.
    pub async fn read_exact(&mut self, n: usize) -> Result<Vec<u8>, TransportError> {
        while self.buf.len() - self.pos < n {
            self.fill().await?;
        }
        let out = self.buf[self.pos..self.pos + n].to_vec();
        self.consume(self.pos + n);
        Ok(out)
    }

    /// Writes and flushes.
    pub async fn write_all(&mut self, data: &[u8]) -> Result<(), TransportError> {
        self.write_all_parts(&[data]).await
    }

    /// Writes several buffers as one write and one flush, so a command goes
    /// out as one TLS record and one TCP segment.
    pub async fn write_all_parts(&mut self, parts: &[&[u8]]) -> Result<(), TransportError> {
        let joined;
        let data: &[u8] = if parts.len() == 1 {
            parts[0]
        } else {
            joined = parts.concat();
            &joined
        };
        match &mut self.stream {
            Stream::Plain(s) => {
                s.write_all(data).await?;
                s.flush().await?;
            }
            Stream::Tls(s) => {
                s.write_all(data).await?;
                s.flush().await?;
            }
            Stream::Gone => return Err(TransportError::Closed),
        }
        Ok(())
    }

    /// Closes the write side politely (TLS close_notify); errors are ignored,
    /// the session is over either way.
    pub async fn shutdown(&mut self) {
        let _ = match &mut self.stream {
            Stream::Plain(s) => s.shutdown().await,
            Stream::Tls(s) => s.shutdown().await,
            Stream::Gone => Ok(()),
        };
    }

    /// Asks Linux to acknowledge the next segment at once instead of
    /// delaying the ACK up to 40 ms. A server that writes its reply in two
    /// pieces (TLS 1.3 session tickets, then the banner) with Nagle on
    /// otherwise waits for that delayed ACK, and a 1 ms step reads 41 ms.
    /// The kernel clears the flag by itself, so it is set before each read.
    fn quickack(&self) {
        #[cfg(target_os = "linux")]
        {
            let tcp = match &self.stream {
                Stream::Plain(s) => s,
                Stream::Tls(s) => s.get_ref().0,
                Stream::Gone => return,
            };
            let _ = socket2::SockRef::from(tcp).set_tcp_quickack(true);
        }
    }

    fn consume(&mut self, upto: usize) {
        self.pos = upto;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > READ_CHUNK * 4 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
    }

    /// Reads what the socket has into the buffer. Cancel-safe: nothing in
    /// `self` changes until the read has completed, so a read abandoned by a
    /// timeout (IDLE waiting for news) leaves the buffer intact.
    async fn fill(&mut self) -> Result<(), TransportError> {
        self.quickack();
        let mut chunk = [0u8; READ_CHUNK];
        let n = match &mut self.stream {
            Stream::Plain(s) => read_into(s, &mut chunk).await,
            Stream::Tls(s) => read_into(s.as_mut(), &mut chunk).await,
            Stream::Gone => Ok(0),
        }
        .map_err(io_or_tls)?;
        if n == 0 {
            return Err(TransportError::Closed);
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

async fn read_into<S: AsyncRead + Unpin>(s: &mut S, dst: &mut [u8]) -> io::Result<usize> {
    let mut rb = ReadBuf::new(dst);
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *s).poll_read(cx, &mut rb)).await?;
    Ok(rb.filled().len())
}

/// rustls reports handshake and certificate problems as `io::Error`s that
/// wrap a `rustls::Error`; surface them as TLS failures.
fn tls_error(e: io::Error) -> TransportError {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(tls) => TransportError::Tls(tls.to_string()),
        None if e.kind() == io::ErrorKind::UnexpectedEof => {
            TransportError::Tls("connection closed during the TLS handshake".into())
        }
        None => TransportError::Tls(e.to_string()),
    }
}

fn io_or_tls(e: io::Error) -> TransportError {
    if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
        tls_error(e)
    } else {
        TransportError::Io(e)
    }
}

#[allow(dead_code)]
fn _assert_traits() {
    fn is<T: AsyncRead + AsyncWrite + Unpin + Send>() {}
    is::<TcpStream>();
    is::<TlsStream<TcpStream>>();
}

/// The name to verify: an IP address literal or a DNS name.
pub fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(name.to_string()).map_err(|e| format!("{name:?} is not a valid TLS server name: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(list: &[&str]) -> ConnectTo {
        ConnectTo::new(list.iter().map(|r| r.parse().unwrap()).collect())
    }

    #[test]
    fn connect_to_rules_parse() {
        let r: ConnectRule = "smtp.example:587=127.0.0.1:40001".parse().unwrap();
        assert_eq!(r.from, HostPort { host: "smtp.example".into(), port: 587 });
        assert_eq!(r.to, HostPort { host: "127.0.0.1".into(), port: 40001 });
        let v6: ConnectRule = "[::1]:993=[::1]:1993".parse().unwrap();
        assert_eq!(v6.to.host, "::1");
        assert_eq!(v6.to.to_string(), "[::1]:1993");
        for bad in ["smtp.example:587", "smtp.example=1.2.3.4:5", ":587=1.2.3.4:5", "a:0=b:1", "a:1=b:99999", "::1:25=b:1", "[::1:25=b:1"] {
            assert!(bad.parse::<ConnectRule>().is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn the_first_matching_rule_redirects_and_others_pass() {
        let c = rules(&["SMTP.example:587=127.0.0.1:1", "smtp.example:587=127.0.0.1:2", "[::1]:993=127.0.0.1:3"]);
        assert_eq!(c.target("smtp.example", 587).map(|t| t.port), Some(1), "case-insensitive, first wins");
        assert_eq!(c.target("smtp.example", 465), None, "the port must match too");
        assert_eq!(c.target("::1", 993).map(|t| t.port), Some(3));
        assert_eq!(c.target("[::1]", 993).map(|t| t.port), Some(3));
        assert_eq!(c.detail("smtp.example", 587), "smtp.example:587 via 127.0.0.1:1");
        assert_eq!(c.detail("imap.example", 993), "imap.example:993");
    }

    #[tokio::test]
    async fn connect_via_uses_the_replacement_address() {
        let real = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let real_port = real.local_addr().unwrap().port();
        // A port nothing listens on: bind, note, close.
        let closed_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        assert!(Conn::connect("127.0.0.1", closed_port).await.is_err(), "nothing listens on the check's port");
        let via = rules(&[&format!("127.0.0.1:{closed_port}=127.0.0.1:{real_port}")]);
        let mut conn = Conn::connect_via("127.0.0.1", closed_port, &via).await.expect("redirected to the listener");
        let (mut server, _) = real.accept().await.unwrap();
        server.write_all(b"220 hello\r\n").await.unwrap();
        assert_eq!(conn.read_line(100).await.unwrap(), b"220 hello");
    }
}
