//! Timed transport: bytes, TLS and bounded reads. No protocol knowledge.
//!
//! [`Conn`] owns a TCP or TLS stream and its own read buffer, so a protocol
//! session can read replies line by line with a hard cap on line length (a
//! hostile server cannot make us buffer without bound), and can hand the
//! plain stream to rustls for STARTTLS — refusing if the server already sent
//! bytes past the STARTTLS reply (the response-injection attack).

use rustls_pki_types::ServerName;
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

impl Conn {
    /// Opens a TCP connection (Nagle off: we send small commands and time them).
    pub async fn connect(host: &str, port: u16) -> Result<Conn, TransportError> {
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
        let result = self.handshake(&connector, name).await;
        self.peer_cert = slot.lock().ok().and_then(|mut s| s.take());
        result
    }

    async fn handshake(
        &mut self,
        connector: &tokio_rustls::TlsConnector,
        name: ServerName<'static>,
    ) -> Result<TlsInfo, TransportError> {
        let buffered = self.buf.len() - self.pos;
        if buffered > 0 {
            return Err(TransportError::BytesBeforeTls(buffered));
        }
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Gone) else {
            return Err(TransportError::Tls("TLS is already active".into()));
        };
        let tls = connector.connect(name, tcp).await.map_err(tls_error)?;
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
