//! The email channel: one alert, one SMTP submission through `lettre`
//! (tokio, rustls with ring): STARTTLS or implicit TLS, the AUTH mechanism
//! the server offers in EHLO (PLAIN or LOGIN with a password, XOAUTH2 with
//! an OAuth2 token), and a MIME message lettre builds (text/plain UTF-8,
//! RFC 2047 headers, a transfer encoding chosen for the body).
//!
//! This is not the probe, which keeps its own client to time every step:
//! here nothing is timed or diagnosed. An attempt is delivered, retry (4xx,
//! connection and TLS trouble, timeouts, garbled replies) or permanent (5xx,
//! or a server that cannot do what the channel needs: no STARTTLS, no AUTH
//! mechanism in common). Each error names the step it happened in
//! (`AUTH: 535 5.7.8 ...`) and never carries a credential.

use super::{Delivery, FailClass, Failed};
use super::config::EmailTarget;
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MessageBuilder, SinglePart};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{
    AsyncSmtpConnection, AsyncTokioStream, Certificate, CertificateStore, TlsParameters,
};
use lettre::transport::smtp::extension::ClientId;
use mailloop_common::config::Security;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A message ready to send: headers and body already rendered.
pub struct Message {
    pub subject: String,
    pub body: String,
    /// Unique per event (the retry of one event keeps it).
    pub message_id: String,
    pub date_ms: i64,
}

/// Sends through one submission server.
pub struct EmailSender {
    target: EmailTarget,
    /// Built once (the system roots plus `ca_file`); None for `security = "none"`.
    tls: Option<TlsParameters>,
}

/// Why one attempt did not deliver, already classified.
struct Failure {
    permanent: bool,
    /// For the delivery log: the kind of failure and the server's reply code.
    class: FailClass,
    code: Option<u16>,
    message: String,
    /// The connection must not be written to any more: lettre leaves it
    /// without a stream after a failed TLS upgrade, and a QUIT would panic.
    unusable: bool,
}

impl Failure {
    /// No connection to the server (resolution, connect).
    fn retry(message: impl Into<String>) -> Failure {
        Failure {
            permanent: false,
            class: FailClass::Connect,
            code: None,
            message: message.into(),
            unusable: false,
        }
    }

    /// Not sendable through this server as configured.
    fn permanent(message: impl Into<String>) -> Failure {
        Failure {
            permanent: true,
            class: FailClass::Refused,
            code: None,
            message: message.into(),
            unusable: false,
        }
    }

    /// A lettre error in step `step`: 5xx and client-side refusals are
    /// permanent, everything else (4xx, network, TLS, parse) is retried.
    fn smtp(step: &str, e: lettre::transport::smtp::Error) -> Failure {
        let message = match e.status() {
            // "535 5.7.8 Error: authentication failed", as the server said it.
            Some(code) => {
                let text = std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                let first = text.lines().next().unwrap_or("");
                format!("{step}: {code} {first}")
            }
            None => format!("{step}: {e}"),
        };
        let code = e.status().and_then(|c| c.to_string().parse::<u16>().ok());
        let class = if code.is_some() {
            FailClass::SmtpReply
        } else if e.is_timeout() {
            FailClass::Timeout
        } else if e.is_tls() {
            FailClass::Tls
        } else if e.is_client() {
            FailClass::Refused
        } else {
            FailClass::Protocol
        };
        Failure {
            permanent: e.is_permanent() || e.is_client(),
            class,
            code,
            message,
            unusable: false,
        }
    }
}

impl EmailSender {
    pub fn new(target: EmailTarget) -> Result<EmailSender, String> {
        let tls = match target.security {
            Security::None => None,
            _ => Some(tls_parameters(&target)?),
        };
        Ok(EmailSender { target, tls })
    }

    /// One attempt, bounded by `timeout` as a whole.
    pub async fn send(&self, message: &Message, timeout: Duration) -> Delivery {
        match tokio::time::timeout(timeout, self.exchange(message, timeout)).await {
            Ok(Ok(())) => Delivery::Delivered,
            Ok(Err(e)) => {
                let failed = Failed {
                    class: e.class,
                    code: e.code,
                    message: e.message,
                };
                if e.permanent {
                    Delivery::Permanent(failed)
                } else {
                    Delivery::Retry(failed)
                }
            }
            Err(_) => Delivery::Retry(Failed::new(
                FailClass::Timeout,
                format!("SMTP dialogue not done within {timeout:?}"),
            )),
        }
    }

    async fn exchange(&self, message: &Message, timeout: Duration) -> Result<(), Failure> {
        let t = &self.target;
        // Built first: a message lettre refuses is a config problem, not
        // worth a connection (and not worth a retry).
        let mail = build(t, message).map_err(Failure::permanent)?;
        let addr = format!("{}:{}", t.host, t.port);
        let host = t.host.trim_start_matches('[').trim_end_matches(']');
        let targets: Vec<SocketAddr> = tokio::net::lookup_host((host, t.port))
            .await
            .map_err(|e| Failure::retry(format!("resolve {addr}: {e}")))?
            .collect();
        let mut last = Failure::retry(format!("resolve {addr}: no address"));
        let mut conn = None;
        for target in targets {
            match self.connect(target, timeout).await {
                Ok(c) => {
                    conn = Some(c);
                    break;
                }
                Err(e) => {
                    last = e;
                    // A 5xx banner is an answer; trying the next address
                    // would only ask the same server again.
                    if last.permanent {
                        return Err(last);
                    }
                }
            }
        }
        let Some((mut conn, helo)) = conn else {
            return Err(last);
        };
        let result = self.transaction(&mut conn, &helo, &mail).await;
        match &result {
            // The message is accepted: a failed QUIT changes nothing.
            Ok(()) => {
                let _ = conn.quit().await;
            }
            Err(e) if !e.unusable => conn.abort().await,
            Err(_) => {}
        }
        result
    }

    /// Connects to one address and reads the banner and the EHLO reply;
    /// for implicit TLS after the handshake.
    async fn connect(
        &self,
        target: SocketAddr,
        timeout: Duration,
    ) -> Result<(AsyncSmtpConnection, ClientId), Failure> {
        if self.target.security == Security::Tls {
            // EHLO with our own address literal (always valid, no DNS):
            // the address the kernel picks towards the server, bound so
            // that it is the one used.
            let local = local_ip_towards(target);
            let helo = client_id(local);
            let step = format!("connect to {target} (implicit TLS)");
            return AsyncSmtpConnection::connect_tokio1(
                target,
                Some(timeout),
                &helo,
                self.tls.clone(),
                local,
            )
            .await
            .map(|c| (c, helo))
            .map_err(|e| Failure::smtp(&step, e));
        }
        let tcp = TcpStream::connect(target)
            .await
            .map_err(|e| Failure::retry(format!("connect to {target}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let helo = client_id(tcp.local_addr().ok().map(|a| a.ip()));
        AsyncSmtpConnection::connect_with_transport(Box::new(LineReads::new(tcp)), &helo)
            .await
            .map(|c| (c, helo))
            .map_err(|e| Failure::smtp(&format!("banner and EHLO of {target}"), e))
    }

    /// STARTTLS (when asked for), AUTH, MAIL/RCPT/DATA on a connection
    /// that has read the banner and sent EHLO.
    async fn transaction(
        &self,
        conn: &mut AsyncSmtpConnection,
        helo: &ClientId,
        mail: &lettre::Message,
    ) -> Result<(), Failure> {
        let t = &self.target;
        if t.security == Security::Starttls {
            if !conn.can_starttls() {
                return Err(Failure::permanent(format!(
                    "{}:{} does not offer STARTTLS",
                    t.host, t.port
                )));
            }
            let params = self.tls.clone().expect("TLS parameters for a TLS channel");
            conn.starttls(params, helo).await.map_err(|e| Failure {
                unusable: true,
                ..Failure::smtp("STARTTLS", e)
            })?;
        }
        if let Some(user) = &t.username {
            let (credentials, offered_by_us) = match (&t.password, &t.oauth2_token) {
                (_, Some(token)) => (
                    Credentials::new(user.clone(), token.expose().to_string()),
                    &[Mechanism::Xoauth2][..],
                ),
                (Some(pass), None) => (
                    Credentials::new(user.clone(), pass.expose().to_string()),
                    // PLAIN first: one round trip; LOGIN for relays that
                    // offer only that.
                    &[Mechanism::Plain, Mechanism::Login][..],
                ),
                (None, None) => unreachable!("config requires a password or a token"),
            };
            let Some(mechanism) = conn.server_info().get_auth_mechanism(offered_by_us) else {
                return Err(Failure::permanent(no_common_mechanism(
                    t,
                    conn,
                    offered_by_us,
                )));
            };
            conn.auth(&[mechanism], &credentials).await.map_err(|e| {
                if e.is_client() && mechanism == Mechanism::Xoauth2 {
                    // The server answered the token with a challenge: its
                    // way of saying no (an expired token, a wrong scope).
                    Failure::permanent("AUTH XOAUTH2: the server refused the token (expired, or not valid for this user or scope)")
                } else {
                    Failure::smtp(&format!("AUTH {mechanism}"), e)
                }
            })?;
        }
        conn.send(mail.envelope(), &mail.formatted())
            .await
            .map_err(|e| Failure::smtp("send (MAIL, RCPT, DATA)", e))?;
        Ok(())
    }
}

/// Why no AUTH can happen, naming what the server offers and what to set.
fn no_common_mechanism(t: &EmailTarget, conn: &AsyncSmtpConnection, ours: &[Mechanism]) -> String {
    let offered: Vec<String> = [Mechanism::Plain, Mechanism::Login, Mechanism::Xoauth2]
        .into_iter()
        .filter(|m| conn.server_info().supports_auth_mechanism(*m))
        .map(|m| m.to_string())
        .collect();
    let ours: Vec<String> = ours.iter().map(|m| m.to_string()).collect();
    let offered = if offered.is_empty() {
        "no AUTH mechanism mailloop knows (PLAIN, LOGIN, XOAUTH2)".to_string()
    } else {
        format!("only AUTH {}", offered.join(" "))
    };
    let hint = if t.oauth2_token.is_some() {
        "use a password instead of oauth2_token"
    } else {
        "this server needs oauth2_token (XOAUTH2) instead of a password"
    };
    let hint = if conn
        .server_info()
        .supports_auth_mechanism(Mechanism::Xoauth2)
        || t.oauth2_token.is_some()
    {
        hint
    } else {
        "check smtp_port and security (submission usually offers AUTH only after TLS)"
    };
    format!(
        "AUTH: {}:{} offers {offered}, the channel can use {}: {hint}",
        t.host,
        t.port,
        ours.join(" ")
    )
}

/// TLS for this channel: the system roots and the channel's `ca_file`
/// (lettre's own root bundle is not compiled in), server name = smtp_host.
fn tls_parameters(t: &EmailTarget) -> Result<TlsParameters, String> {
    let host = t.host.trim_start_matches('[').trim_end_matches(']');
    let mut builder =
        TlsParameters::builder(host.to_string()).certificate_store(CertificateStore::None);
    for der in super::tls::roots(t.ca_file.as_deref())? {
        let cert =
            Certificate::from_der(der.to_vec()).map_err(|e| format!("a trust anchor: {e}"))?;
        builder = builder.add_root_certificate(cert);
    }
    builder
        .build_rustls()
        .map_err(|e| format!("TLS settings for {host}: {e}"))
}

/// The local address the kernel would use to reach `target` (a UDP
/// `connect` sends nothing).
fn local_ip_towards(target: SocketAddr) -> Option<IpAddr> {
    let bind: SocketAddr = if target.is_ipv6() {
        "[::]:0".parse().ok()?
    } else {
        "0.0.0.0:0".parse().ok()?
    };
    let socket = std::net::UdpSocket::bind(bind).ok()?;
    socket.connect(target).ok()?;
    Some(socket.local_addr().ok()?.ip())
}

/// EHLO's argument: our address as a literal (`[192.0.2.1]`,
/// `[IPv6:2001:db8::1]`), or lettre's default when it is unknown.
fn client_id(local: Option<IpAddr>) -> ClientId {
    match local {
        Some(IpAddr::V4(ip)) => ClientId::Ipv4(ip),
        Some(IpAddr::V6(ip)) => ClientId::Ipv6(ip),
        None => ClientId::default(),
    }
}

/// The plaintext TCP stream under lettre, handing out at most one line per
/// read. lettre reads replies through a `BufReader` that it keeps across
/// STARTTLS; with this below it, nothing past the end of the `220` to
/// STARTTLS is ever in that buffer. Bytes a man in the middle appends to
/// the `220` stay here, reach rustls as the first "TLS" bytes and fail the
/// handshake, instead of being read as the server's replies once TLS is up
/// (response injection; RFC 3207 section 6). Short reads are fine for TLS.
#[derive(Debug)]
struct LineReads {
    inner: TcpStream,
    buf: Vec<u8>,
    pos: usize,
}

impl LineReads {
    fn new(inner: TcpStream) -> LineReads {
        LineReads {
            inner,
            buf: Vec::new(),
            pos: 0,
        }
    }
}

impl AsyncRead for LineReads {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.pos == this.buf.len() {
            let mut chunk = [0u8; 8192];
            let mut rb = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            this.buf.clear();
            this.buf.extend_from_slice(rb.filled());
            this.pos = 0;
            if this.buf.is_empty() {
                return Poll::Ready(Ok(()));
            }
        }
        let rest = &this.buf[this.pos..];
        let line = rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |i| i + 1);
        let n = line.min(out.remaining());
        out.put_slice(&rest[..n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for LineReads {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl AsyncTokioStream for LineReads {
    fn peer_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.peer_addr()
    }
}

/// The message as lettre renders it: From, To, Subject (an RFC 2047
/// encoded word when not ASCII), Date, Message-ID, MIME-Version,
/// `text/plain; charset=utf-8` with a transfer encoding that fits the body
/// (7bit, or quoted-printable/base64 for non-ASCII and long lines), and
/// `Auto-Submitted: auto-generated` (RFC 3834: no auto-replies to alerts).
fn build(t: &EmailTarget, m: &Message) -> Result<lettre::Message, String> {
    let from: Mailbox = t
        .from
        .parse()
        .map_err(|e| format!("from {:?}: {e}", t.from))?;
    let date = UNIX_EPOCH + Duration::from_millis(m.date_ms.max(0) as u64);
    // Control characters have no place in a header line.
    let subject: String = m
        .subject
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut b: MessageBuilder = lettre::Message::builder()
        .from(from)
        .subject(subject)
        .date(if m.date_ms > 0 {
            date
        } else {
            SystemTime::now()
        })
        .message_id(Some(m.message_id.clone()))
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("Auto-Submitted"),
            "auto-generated".to_string(),
        ));
    for to in &t.to {
        let mbox: Mailbox = to.parse().map_err(|e| format!("to {to:?}: {e}"))?;
        b = b.to(mbox);
    }
    // A single MIME part (MIME-Version: 1.0), text/plain; charset=utf-8.
    b.singlepart(SinglePart::plain(m.body.clone()))
        .map_err(|e| format!("building the message: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> EmailTarget {
        EmailTarget {
            host: "127.0.0.1".into(),
            port: 587,
            security: Security::Starttls,
            username: None,
            password: None,
            oauth2_token: None,
            from: "alerts@example.test".into(),
            to: vec!["a@example.test".into(), "b@example.test".into()],
            ca_file: None,
        }
    }

    fn render(m: &Message) -> String {
        String::from_utf8(build(&target(), m).unwrap().formatted()).unwrap()
    }

    fn message(subject: &str, body: &str) -> Message {
        Message {
            subject: subject.into(),
            body: body.into(),
            message_id: "<x@example.test>".into(),
            date_ms: 86_400_000,
        }
    }

    #[test]
    fn headers_are_the_alert_s_own() {
        let data = render(&message("[mailloop] OUTAGE opened: corp", "first\nlast"));
        for needle in [
            "From: alerts@example.test\r\n",
            "To: a@example.test, b@example.test\r\n",
            "Subject: [mailloop] OUTAGE opened: corp\r\n",
            "Message-ID: <x@example.test>\r\n",
            "Date: Fri, 02 Jan 1970 00:00:00 +0000\r\n",
            "MIME-Version: 1.0\r\n",
            "Content-Type: text/plain; charset=utf-8\r\n",
            "Content-Transfer-Encoding: 7bit\r\n",
            "Auto-Submitted: auto-generated\r\n",
            "\r\n\r\nfirst\r\nlast",
        ] {
            assert!(data.contains(needle), "{needle:?} missing in\n{data}");
        }
        assert!(
            !data.replace("\r\n", "").contains('\n'),
            "bare LF in {data:?}"
        );
    }

    #[test]
    fn non_ascii_subject_is_an_encoded_word_and_no_header_can_be_injected() {
        let data = render(&message(
            "[mailloop] OUTAGE opened: café\r\nBcc: x@evil.test",
            "b",
        ));
        let subject = data
            .split("\r\n")
            .skip_while(|l| !l.starts_with("Subject:"))
            .take_while(|l| l.starts_with("Subject:") || l.starts_with(' '))
            .collect::<Vec<_>>()
            .join("");
        assert!(subject.contains("=?utf-8?"), "{subject}");
        assert!(!data.contains("\r\nBcc:"), "{data}");
    }

    #[test]
    fn non_ascii_and_long_lines_get_a_transfer_encoding() {
        let long = "word ".repeat(400);
        let data = render(&message("s", &format!("Zürich\n{long}")));
        assert!(
            data.contains("Content-Transfer-Encoding: quoted-printable")
                || data.contains("Content-Transfer-Encoding: base64"),
            "{data}"
        );
        assert!(data.is_ascii(), "8-bit bytes sent: {data}");
        assert!(
            data.split("\r\n").all(|l| l.len() <= 998),
            "a line over SMTP's limit"
        );
    }
}
